//! The identity of this database session, for runs a claim binds to it (`bind_session`).
//!
//! A backend pid alone does not name a session: pids are reused, and a promoted standby or a
//! restarted server hands out the same numbers again. The pid with the backend's start time
//! does; it is what `pg_stat_activity` shows as `pid` and `backend_start`, so tick can tell that
//! a bound session is gone (sql/functions/tick_expire.sql, `_gone_sessions`).

use pgrx::prelude::*;

/// SQL: when this backend started (`pg_stat_activity.backend_start` of `pg_backend_pid()`),
/// read from the backend's own memory rather than the activity table.
// parallel restricted (sql/functions/rust.sql): in a parallel worker it would be the worker's
#[pg_extern(stable, sql = false)]
fn _session_started_at() -> TimestampWithTimeZone {
    // SAFETY: a TimestampTz PostgreSQL sets once when the backend starts (the value
    // pgstat_bestart copies into the activity table), read on the backend's only thread
    let started = unsafe { pg_sys::MyStartTimestamp };
    TimestampWithTimeZone::try_from(started)
        .unwrap_or_else(|_| pgrx::error!("this backend's start time {started} is not a timestamp"))
}

/// SQL: whether this backend is pg_conveyor's own tick worker (src/worker.rs), rather than a
/// client's session or another extension's background worker (pg_cron's, a parallel worker).
/// A client cannot make it true.
// parallel restricted (sql/functions/rust.sql): a parallel worker has its own entry
#[pg_extern(stable, sql = false)]
fn _in_background_worker() -> bool {
    // SAFETY: MyBgworkerEntry is null outside background workers, else it points to the entry
    // the postmaster filled in when it started this process (fixed-size C strings); read on the
    // process's only thread
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        if entry.is_null() {
            return false;
        }
        let library = std::ffi::CStr::from_ptr((*entry).bgw_library_name.as_ptr());
        let function = std::ffi::CStr::from_ptr((*entry).bgw_function_name.as_ptr());
        library.to_bytes() == b"pg_conveyor" && function.to_bytes() == b"conveyor_worker_main"
    }
}
