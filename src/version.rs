//! Library and schema versions, which are out of step for a while in real life: a new library
//! is installed (the server restarted) before `ALTER EXTENSION pg_conveyor UPDATE` runs, and a
//! standby replays whatever schema its primary has.
//!
//! The background worker drives the schema only through `conveyor.tick_steps()` and
//! `conveyor.tick_step(text)`, which every schema version listed in [`DRIVABLE`] has; the C
//! functions that the SQL declares keep the behaviour of every listed version. A schema version
//! not listed (a newer one, or an unknown one) is left alone: the worker idles there.

use pgrx::prelude::*;

/// This library's version (Cargo.toml), which is the newest schema it installs.
pub const LIBRARY: &str = env!("CARGO_PKG_VERSION");

/// The advisory lock (two int4 keys: 'pgcv', 1) that keeps ALTER EXTENSION UPDATE and the
/// worker's tick steps apart. Each step's transaction takes it shared before it touches a
/// table; every upgrade script takes it exclusively as its first statement
/// (scripts/upgrade-script.sh), so the update waits for the step in progress and the next step
/// is skipped (the worker only tries the lock) until the update committed, holding nothing. Without it they deadlocked about one update in six
/// (the update's index build on runs against a step holding a view the update replaces).
pub const UPGRADE_LOCK: (i32, i32) = (0x7067_6376, 1);

/// Schema versions this library's background worker can tick.
pub const DRIVABLE: &[&str] = &["0.1.0", "0.2.0"];

/// What the worker does with a database whose schema is at `schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// the schema this library installs
    Current,
    /// an older schema whose tick steps this library still drives (until ALTER EXTENSION UPDATE)
    Older,
    /// a schema this library does not know: do nothing there
    Idle,
}

pub fn plan(schema: &str) -> Plan {
    if schema == LIBRARY {
        Plan::Current
    } else if DRIVABLE.contains(&schema) {
        Plan::Older
    } else {
        Plan::Idle
    }
}

/// The line the worker logs (once per version it meets) when the schema is not its own.
pub fn mismatch_message(db: &str, schema: &str) -> Option<String> {
    match plan(schema) {
        Plan::Current => None,
        Plan::Older => Some(format!(
            "pg_conveyor: database \"{db}\" has schema version {schema}, the library is {LIBRARY}: \
             ticking with the installed schema's steps until ALTER EXTENSION pg_conveyor UPDATE"
        )),
        Plan::Idle => Some(format!(
            "pg_conveyor: database \"{db}\" has schema version {schema}, the library is {LIBRARY}: \
             this library cannot drive that schema; the worker idles there until the versions match"
        )),
    }
}

/// SQL: the version of the loaded library.
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _library_version() -> &'static str {
    LIBRARY
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_current_and_older_known_schemas_are_ticked_and_unknown_ones_are_not() {
        assert_eq!(plan(LIBRARY), Plan::Current);
        assert_eq!(plan("0.1.0"), Plan::Older);
        assert_eq!(plan("9.9.9"), Plan::Idle);
        assert!(DRIVABLE.contains(&LIBRARY), "the library must drive its own schema");
        assert!(mismatch_message("db", LIBRARY).is_none());
        assert!(mismatch_message("db", "0.1.0").unwrap().contains("has schema version 0.1.0, the library is"));
    }
}
