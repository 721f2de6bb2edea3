//! Time is one function: `conveyor._now()`.
//!
//! Every comparison with the current time in sql/ goes through it. It returns the transaction
//! time, unless the superuser-only setting `conveyor.test_clock` holds a timestamp. Being a C
//! function, calling it loads the library, so the setting is always a real (privileged) GUC and
//! never a placeholder that an unprivileged session could have set.

use crate::guc::TEST_CLOCK;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::str::FromStr;

thread_local! {
    /// The last test clock text parsed, and its value: parsing once per change, not per call.
    static PARSED: RefCell<Option<(String, TimestampWithTimeZone)>> = const { RefCell::new(None) };
}

#[pg_extern(stable, parallel_safe, sql = false)]
fn _now() -> TimestampWithTimeZone {
    let Some(setting) = TEST_CLOCK.get() else { return pgrx::datetime::now() };
    let text = setting.to_string_lossy();
    if text.trim().is_empty() {
        return pgrx::datetime::now();
    }
    if let Some(ts) = PARSED.with(|p| p.borrow().as_ref().filter(|(t, _)| *t == text).map(|(_, ts)| *ts)) {
        return ts;
    }
    let ts = TimestampWithTimeZone::from_str(&text).unwrap_or_else(|_| {
        pgrx::error!("invalid conveyor.test_clock \"{text}\": expected a timestamp with time zone")
    });
    PARSED.with(|p| *p.borrow_mut() = Some((text.into_owned(), ts)));
    ts
}
