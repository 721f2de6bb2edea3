//! Errors raised from Rust, each with its SQLSTATE.
//!
//! The pure modules (duration, cron, config, ulid) return these; the SQL-facing wrappers raise
//! them. Errors raised from SQL use the `CV...` codes documented in the README; the ones here
//! are input-validation errors and use the standard codes clients already know.

use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgLogLevel;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(clippy::enum_variant_names, reason = "named as their messages begin: \"invalid duration ...\"")]
pub enum Error {
    /// A duration string that is neither humantime (`30s`, `1m30s`) nor an interval text.
    InvalidDuration { input: String, reason: String },
    /// A ULID text that is not 26 Crockford base32 characters.
    InvalidUlid { input: String },
    /// A cron expression croner rejects, or an unknown time zone.
    InvalidSchedule { input: String, reason: String },
}

impl Error {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            Error::InvalidDuration { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            Error::InvalidUlid { .. } => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            Error::InvalidSchedule { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            Error::InvalidDuration { .. } => {
                "use a humantime duration such as 30s, 5m, 1h30m, 2d, or an interval such as 00:05:00"
            }
            Error::InvalidUlid { .. } => "a ULID is 26 characters of Crockford base32, e.g. 01ARZ3NDEKTSV4RRFFQ69G5FAV",
            Error::InvalidSchedule { .. } => {
                "use 5 cron fields (minute hour day-of-month month day-of-week), e.g. */5 * * * *, and an IANA time zone such as Europe/Paris"
            }
        }
    }

    /// Raise this error as a PostgreSQL ERROR. Never returns.
    pub fn raise(self) -> ! {
        let report = ErrorReport::new(self.sqlstate(), self.to_string(), "pg_conveyor").set_hint(self.hint());
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidDuration { input, reason } => {
                write!(f, "invalid duration \"{input}\": {reason}")
            }
            Error::InvalidUlid { input } => write!(f, "invalid ulid \"{input}\""),
            Error::InvalidSchedule { input, reason } => {
                write!(f, "invalid schedule \"{input}\": {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}
