//! The background worker: decides WHEN to tick, never HOW.
//!
//! One worker per database named by `conveyor.database`, registered only while
//! shared_preload_libraries is processed. Each loop waits on the latch for
//! `conveyor.tick_interval`, then runs each tick step (listed by `conveyor.tick_steps()`)
//! in its own transaction through SPI. `conveyor.tick_step()` catches a failing step's error
//! and reports it as a WARNING, so an error ends one step, not the worker. It exits on
//! SIGTERM between steps; the postmaster restarts it 1s after it crashed or was terminated
//! (but not during shutdown); it starts only once recovery has finished, so a standby has no
//! worker until it is promoted.

// an error ends one tick step, never the worker (STYLE.md): nothing here may panic
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "the worker loop must not panic")]

use crate::guc;
use crate::version::{self, UPGRADE_LOCK};
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::Duration;

const APPLICATION_NAME: &str = "pg_conveyor tick";

pub fn register() {
    // SAFETY: a plain bool PostgreSQL sets around loading the preload libraries; read on the
    // process's only thread, during _PG_init
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    for db in guc::databases() {
        BackgroundWorkerBuilder::new(&format!("pg_conveyor tick {db}"))
            .set_type("pg_conveyor")
            .set_library("pg_conveyor")
            .set_function("conveyor_worker_main")
            .set_extra(&db)
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
}

fn interval() -> Duration {
    Duration::from_millis(guc::TICK_INTERVAL_MS.get().max(10) as u64)
}

/// The schema version installed in this database, or None while the extension is not there
/// (it may be created later).
fn schema_version() -> Option<String> {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<String>("select extversion from pg_catalog.pg_extension where extname = 'pg_conveyor'")
            .ok()
            .flatten()
    })
}

/// The tick steps of the installed schema (whatever its version lists).
fn steps() -> Option<Vec<String>> {
    BackgroundWorker::transaction(|| Spi::get_one::<Vec<String>>("select conveyor.tick_steps()").ok().flatten())
}

/// SIGTERM seen, without consuming the flag `wait_latch` reads.
fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t that PostgreSQL's SIGTERM handler sets; a volatile read through a
    // raw pointer (no reference to a mutable static) on the worker's only thread, as C reads it
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

fn run_step(step: &str) -> i64 {
    BackgroundWorker::transaction(|| {
        // the steps are written for READ COMMITTED (each statement sees what committed before
        // it), whatever default_transaction_isolation says
        if Spi::run("set transaction isolation level read committed").is_err() {
            return 0;
        }
        // before touching any table: a step and ALTER EXTENSION UPDATE never hold locks the other
        // waits for (every upgrade script takes this lock exclusively first; see version.rs).
        // Tried, not waited for: advisory locks are anyone's to take, and a session holding this
        // one would otherwise stop every step; the step waits for a later round instead
        let lock =
            format!("select pg_catalog.pg_try_advisory_xact_lock_shared({}, {})", UPGRADE_LOCK.0, UPGRADE_LOCK.1);
        if Spi::get_one::<bool>(&lock).ok().flatten() != Some(true) {
            return 0;
        }
        Spi::get_one_with_args::<i64>("select conveyor.tick_step($1)", &[step.into()]).ok().flatten().unwrap_or(0)
    })
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn conveyor_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    BackgroundWorker::transaction(|| {
        let _ = Spi::run(&format!("set application_name = '{APPLICATION_NAME}'"));
    });
    log!("pg_conveyor: tick worker started in database \"{db}\"");
    let mut last_schema = String::new();

    while BackgroundWorker::wait_latch(Some(interval())) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, outside any transaction, as
            // PostgreSQL's own background processes reload the configuration after SIGHUP
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // SAFETY: RecoveryInProgress takes no arguments and reads shared memory, which this
        // worker was registered to attach to (enable_spi_access)
        if !guc::WORKER_ENABLED.get() || unsafe { pg_sys::RecoveryInProgress() } {
            continue;
        }
        let Some(schema) = schema_version() else { continue };
        if schema != last_schema {
            // log once per version met: an older schema is ticked with its own steps until
            // ALTER EXTENSION UPDATE; one this library does not know is left alone
            match version::mismatch_message(&db, &schema) {
                Some(message) => log!("{message}"),
                None if !last_schema.is_empty() => {
                    log!("pg_conveyor: database \"{db}\" schema is now version {schema}, the library's own")
                }
                None => {}
            }
            last_schema = schema.clone();
        }
        if version::plan(&schema) == version::Plan::Idle {
            continue;
        }
        let Some(steps) = steps() else { continue };
        for step in steps {
            if shutdown_requested() {
                break;
            }
            let changed = run_step(&step);
            if changed > 0 {
                debug1!("pg_conveyor: tick step {step} changed {changed} rows");
            }
        }
    }
    log!("pg_conveyor: tick worker in database \"{db}\" stopping");
    // exit 1, not 0: the postmaster restarts a worker that was terminated by hand (after the
    // restart time) and, during shutdown, restarts nothing anyway
    // SAFETY: the worker's main function ends its process here, outside any transaction,
    // the way a background worker exits; nothing after it runs
    unsafe { pg_sys::proc_exit(1) };
}
