//! Every GUC of pg_conveyor: one static each, one `init()`.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::CString;

/// How often the background worker ticks, in milliseconds (`conveyor.tick_interval = '1s'`).
pub static TICK_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Whether the background worker ticks at all (it stays connected and idle when off).
pub static WORKER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// The database(s) the background worker serves, comma-separated; read at server start.
pub static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Rows each tick step may touch per call, so one tick stays short.
pub static TICK_BATCH: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// The logical partition put into every id this database makes (src/ulid.rs): a shard's number
/// in a sharded cluster (docs/scale-out.md); 0 on a server of its own.
pub static PARTITION: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Superuser-only: when set, `conveyor._now()` returns this time instead of the transaction's.
pub static TEST_CLOCK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_int_guc(
        c"conveyor.tick_interval",
        c"How often the pg_conveyor background worker calls tick.",
        c"Each tick runs its steps (deliver, expire, schedules, outbox, prune), each in its own transaction.",
        &TICK_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"conveyor.worker_enabled",
        c"Whether the pg_conveyor background worker ticks.",
        c"Off: the worker stays idle; tick can still be called by hand or from pg_cron.",
        &WORKER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"conveyor.tick_batch",
        c"Rows each tick step handles per call.",
        c"Bounds the work of one tick; what is left is handled by the next tick.",
        &TICK_BATCH,
        1,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"conveyor.partition",
        c"The logical partition (0-1023) this database's run ids carry.",
        c"Set per shard database (ALTER DATABASE ... SET) so a router finds a run's shard from its id; 0 on a server of its own.",
        &PARTITION,
        0,
        crate::ulid::PARTITIONS as i32 - 1,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"conveyor.test_clock",
        c"Test-only: the time conveyor._now() returns (superuser only).",
        c"Empty means the real transaction time. Tests move time with it instead of sleeping.",
        &TEST_CLOCK,
        GucContext::Suset,
        GucFlags::default(),
    );
    // a PGC_POSTMASTER variable can only be defined while shared_preload_libraries is loaded
    // SAFETY: a plain bool PostgreSQL sets around loading the preload libraries; read on the
    // process's only thread, during _PG_init
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"conveyor.database",
            c"Database(s) the pg_conveyor background worker serves, comma-separated.",
            c"One worker per database is started at server start; each ticks only once the extension exists there.",
            &DATABASES,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
}

/// The logical partition of the ids this database makes.
pub fn partition() -> u16 {
    PARTITION.get().clamp(0, crate::ulid::PARTITIONS as i32 - 1) as u16
}

/// The databases named by `conveyor.database`, trimmed, without empties.
pub fn databases() -> Vec<String> {
    DATABASES
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
        .split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect()
}
