//! pg_conveyor for Rust: workers and producers for the job queue inside PostgreSQL, on
//! tokio-postgres.
//!
//! ```no_run
//! use pg_conveyor_client::{enqueue, Duration, EnqueueOptions, JobError, Worker, WorkerConfig};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = WorkerConfig { queues: vec!["emails".into()], ..WorkerConfig::default() };
//! let worker = Worker::new(config)?.task("emails.send", |mut job| async move {
//!     if job.heartbeat(None).await? {
//!         return Err(JobError::Cancelled);
//!     }
//!     if job.run.attempt == 1 {
//!         return Err(JobError::release(Duration::from_secs(30), "smtp warming up"));
//!     }
//!     Ok(json!({"sent": job.run.payload["to"]}))
//! });
//! worker.stop_handle().stop_on_signals();
//! worker.run(false).await?;
//! # Ok(()) }
//! ```
//!
//! Producers enqueue on their own client or transaction ([`enqueue`], [`enqueue_many`]). The
//! SQL types `conveyor.ulid`, `conveyor.duration` and `conveyor.run_status` are [`Ulid`],
//! [`Duration`] and [`RunStatus`], with `FromSql`/`ToSql`.

mod producer;
mod types;
mod worker;

pub use producer::{enqueue, enqueue_many, EnqueueOptions};
pub use types::{Duration, InvalidUlid, RunStatus, Ulid, MAX_DURATION};
pub use worker::{
    config_from_env, connect, sqlstate, BoxError, ClaimedRun, Finished, Job, JobError, Outcome, StopHandle, Worker,
    WorkerConfig, STALE_LEASE,
};
