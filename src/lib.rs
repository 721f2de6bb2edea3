//! pg_conveyor: a job queue inside PostgreSQL.
//!
//! Pure logic lives in Rust (durations, ULIDs, backoff curves, cron, config validation); every
//! state change lives in SQL (sql/), one transaction each. This file is the table of contents.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod backoff;
mod clock;
mod config;
mod cron;
mod duration;
mod error;
mod guc;
mod ulid;
mod worker;

// The SQL, in install order. types.sql declares the Rust functions above (they are marked
// `sql = false` so that the SQL types, e.g. conveyor.ulid rather than uuid, are ours to state).
extension_sql_file!("../sql/types.sql", name = "types", bootstrap);
extension_sql_file!("../sql/schema.sql", name = "schema", requires = ["types"]);
extension_sql_file!("../sql/config.sql", name = "config", requires = ["schema"]);
extension_sql_file!("../sql/runs.sql", name = "runs", requires = ["config"]);
extension_sql_file!("../sql/tick.sql", name = "tick", requires = ["runs"]);
extension_sql_file!("../sql/outbox.sql", name = "outbox", requires = ["tick"]);
extension_sql_file!("../sql/views.sql", name = "views", requires = ["outbox"]);
extension_sql_file!("../sql/roles.sql", name = "roles", requires = ["views"], finalize);

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
