//! pg_conveyor: a job queue inside PostgreSQL.
//!
//! Pure logic lives in Rust (durations, ULIDs, backoff curves, cron, config validation); every
//! state change lives in SQL (sql/), one transaction each. This file is the table of contents.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod admit;
mod backoff;
mod clock;
mod config;
mod cron;
mod duration;
mod error;
mod guc;
mod session;
mod text;
mod ulid;
mod version;
mod worker;

// The SQL, in install order; `requires` is what each file's objects need to exist first.
// sql/schema/ holds tables and types (changed only by migrations in sql/migrations/);
// sql/functions/ holds `create or replace` files that every upgrade script re-applies whole
// (scripts/upgrade-script.sh). Rust functions above are marked `sql = false` and declared in
// functions/rust.sql, so that their SQL types (conveyor.ulid rather than uuid) are ours to state.
extension_sql_file!("../sql/schema/types.sql", name = "schema_types", bootstrap);
extension_sql_file!("../sql/schema/state_machine.sql", name = "schema_state_machine", requires = ["schema_types"]);
extension_sql_file!("../sql/schema/tables.sql", name = "schema_tables", requires = ["schema_state_machine"]);
extension_sql_file!("../sql/functions/rust.sql", name = "rust", requires = ["schema_tables"]);
extension_sql_file!("../sql/functions/errors.sql", name = "errors", requires = ["schema_tables"]);
extension_sql_file!("../sql/functions/state_machine.sql", name = "state_machine", requires = ["rust", "errors"]);
extension_sql_file!("../sql/functions/options.sql", name = "options", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/enqueue.sql", name = "enqueue", requires = ["options"]);
extension_sql_file!("../sql/functions/claim.sql", name = "claim", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/finish.sql", name = "finish", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/running.sql", name = "running", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/operators.sql", name = "operators", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/tick_expire.sql", name = "tick_expire", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/tick_schedules.sql", name = "tick_schedules", requires = ["operators"]);
extension_sql_file!("../sql/functions/tick_services.sql", name = "tick_services", requires = ["operators"]);
extension_sql_file!("../sql/functions/tick_deliver.sql", name = "tick_deliver", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/tick_hint.sql", name = "tick_hint", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/tick_prune.sql", name = "tick_prune", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/tick_repair.sql", name = "tick_repair", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/tick_count.sql", name = "tick_count", requires = ["state_machine"]);
extension_sql_file!("../sql/functions/outbox.sql", name = "outbox", requires = ["state_machine"]);
extension_sql_file!(
    "../sql/functions/tick.sql",
    name = "tick",
    requires = [
        "tick_expire",
        "tick_schedules",
        "tick_services",
        "tick_repair",
        "tick_deliver",
        "tick_hint",
        "tick_prune",
        "tick_count",
        "outbox"
    ]
);
extension_sql_file!("../sql/functions/views.sql", name = "views", requires = ["options"]);
extension_sql_file!(
    "../sql/functions/roles.sql",
    name = "roles",
    requires = ["enqueue", "claim", "finish", "running", "tick", "views"],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    worker::register();
}

/// In-database tests of the Rust-backed SQL (behaviour of the SQL API is in pgrx-tests/).
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
