//! A pg_conveyor worker in Rust, on the pg-conveyor-client crate (clients/rust): claims runs of
//! QUEUES and runs the demo handlers below.
//!
//!     worker QUEUES [--drain] [--batch N]
//!
//! Connects with the usual PG* variables. Settings (environment): CONVEYOR_BATCH (10),
//! CONVEYOR_LEASE (seconds, 30), CONVEYOR_POLL_SECONDS (5), CONVEYOR_GRACE (5), CONVEYOR_POOLED
//! (1 behind a transaction pooler: the worker polls). SIGINT/SIGTERM: no more claims; the run in
//! hand may finish within the grace, then it and the claimed runs not started are given back.
//! One line per finished run on stdout.

use std::time::{Duration as StdDuration, Instant, SystemTime, UNIX_EPOCH};

use pg_conveyor_client::{Duration, Finished, Job, JobError, Worker, WorkerConfig};
use serde_json::{json, Value};

/// Completes at once with a small result.
async fn ok(job: Job) -> Result<Value, JobError> {
    let mut echo = job.run.payload.clone();
    if let Some(fields) = echo.as_object_mut() {
        fields.remove("batch");
    }
    Ok(json!({"ok": true, "by": "rust", "echo": echo}))
}

/// Fails on attempt 1, succeeds on attempt 2: the task's retry policy (max_attempts 3, delay 1s)
/// brings it back.
async fn flaky(job: Job) -> Result<Value, JobError> {
    if job.run.attempt == 1 {
        return Err(JobError::fail_with("flaky: failing attempt 1 on purpose", json!({"attempt": 1}), true));
    }
    Ok(json!({"ok": true, "succeeded_on_attempt": job.run.attempt}))
}

/// Releases on attempts 1 and 2 (the thing it waits for is "not ready"), completes on attempt 3.
/// A release is not a failure: it spends no retry budget.
async fn wait(job: Job) -> Result<Value, JobError> {
    if job.run.attempt < 3 {
        return Err(JobError::release(Duration::from_secs(1), "not ready"));
    }
    Ok(json!({"ok": true, "ready_on_attempt": job.run.attempt}))
}

/// Works for payload.seconds (default 2.5), longer than a heartbeat period, extending its lease
/// with a heartbeat every CONVEYOR_HEARTBEAT_SECONDS. A heartbeat that answers true means an
/// operator cancelled the run: stop and say so.
async fn slow(mut job: Job) -> Result<Value, JobError> {
    let seconds = job.run.payload.get("seconds").and_then(Value::as_f64).unwrap_or(2.5);
    let every = env_number("CONVEYOR_HEARTBEAT_SECONDS", 1.0);
    let deadline = Instant::now() + StdDuration::from_secs_f64(seconds);
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        tokio::time::sleep(left.min(StdDuration::from_secs_f64(every))).await; // a slice of the real work
        if job.heartbeat(Some(Duration::from_secs(30))).await? {
            return Err(JobError::Cancelled);
        }
    }
    Ok(json!({"ok": true, "slept": seconds, "heartbeats": job.heartbeats}))
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// "HH:MM:SS" (UTC), for the report lines.
fn clock() -> String {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn report(f: &Finished) {
    let status = f.status.map_or("stale lease, not recorded".to_string(), |s| s.to_string());
    println!("{} run {} {} attempt {}: {:?} -> {status}", clock(), f.run.run_id, f.run.task, f.run.attempt, f.outcome);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut queues, mut drain, mut batch) = (None, false, env_number("CONVEYOR_BATCH", 10.0) as i32);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--drain" => drain = true,
            "--batch" => batch = it.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            q if queues.is_none() && !q.starts_with('-') => queues = Some(q.to_string()),
            _ => queues = None,
        }
    }
    let Some(queues) = queues else {
        eprintln!("usage: worker QUEUES [--drain] [--batch N]");
        std::process::exit(2);
    };
    let config = WorkerConfig {
        queues: queues.split(',').map(|q| q.trim().to_string()).collect(),
        batch,
        lease: Duration::from_millis((env_number("CONVEYOR_LEASE", 30.0) * 1000.0) as u64),
        poll: StdDuration::from_secs_f64(env_number("CONVEYOR_POLL_SECONDS", 5.0)),
        grace: StdDuration::from_secs_f64(env_number("CONVEYOR_GRACE", 5.0)),
        pooled: !matches!(std::env::var("CONVEYOR_POOLED").as_deref(), Err(_) | Ok("") | Ok("0")),
        ..WorkerConfig::default()
    };
    let worker = match Worker::new(config) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::exit(2);
        }
    };
    let worker = worker
        .task("rust.ok", ok)
        .task("rust.flaky", flaky)
        .task("rust.wait", wait)
        .task("rust.slow", slow)
        .on_finished(report);
    worker.stop_handle().stop_on_signals();
    eprintln!("{} claiming from {queues} (batch {batch})", clock());
    if let Err(e) = worker.run(drain).await {
        eprintln!("worker failed: {e}");
        std::process::exit(1);
    }
    eprintln!("{} stopped", clock());
}
