//! A pg_conveyor worker in Rust: claims runs of QUEUES and runs the demo handlers below.
//!
//!     worker QUEUES [--drain] [--batch N]
//!
//! Connects with the usual PG* variables. See `src/lib.rs` for what the worker does.

use std::time::{Duration, Instant};

use pg_conveyor_example::{Handlers, Job, JobError, Worker};
use serde_json::{json, Value};

/// Dispatch by task name to a handler function.
struct Demo;

impl Handlers for Demo {
    async fn handle(&self, job: &mut Job<'_>) -> Result<Value, JobError> {
        match job.task.as_str() {
            "rust.ok" => ok(job).await,
            "rust.flaky" => flaky(job).await,
            "rust.wait" => wait(job).await,
            "rust.slow" => slow(job).await,
            other => Err(JobError::fail_with(
                format!("no handler for task {other} in this worker"),
                json!({}),
                false,
            )),
        }
    }
}

/// Completes at once with a small result.
async fn ok(job: &mut Job<'_>) -> Result<Value, JobError> {
    let mut echo = job.payload.clone();
    if let Some(fields) = echo.as_object_mut() {
        fields.remove("batch");
    }
    Ok(json!({"ok": true, "by": "rust", "echo": echo}))
}

/// Fails on attempt 1, succeeds on attempt 2: the task's retry policy (max_attempts 3, delay 1s)
/// brings it back.
async fn flaky(job: &mut Job<'_>) -> Result<Value, JobError> {
    if job.attempt == 1 {
        return Err(JobError::fail_with(
            "flaky: failing attempt 1 on purpose",
            json!({"attempt": job.attempt}),
            true,
        ));
    }
    Ok(json!({"ok": true, "succeeded_on_attempt": job.attempt}))
}

/// Releases on attempts 1 and 2 (the thing it waits for is "not ready"), completes on attempt 3.
/// A release is not a failure: it spends no retry budget.
async fn wait(job: &mut Job<'_>) -> Result<Value, JobError> {
    if job.attempt < 3 {
        return Err(JobError::release("1s", "not ready"));
    }
    Ok(json!({"ok": true, "ready_on_attempt": job.attempt}))
}

/// Works for payload.seconds (default 2.5), longer than a heartbeat period, extending its lease
/// with a heartbeat every CONVEYOR_HEARTBEAT_SECONDS. A heartbeat that answers true means an
/// operator cancelled the run: stop and say so.
async fn slow(job: &mut Job<'_>) -> Result<Value, JobError> {
    let seconds = job
        .payload
        .get("seconds")
        .and_then(Value::as_f64)
        .unwrap_or(2.5);
    let every: f64 = std::env::var("CONVEYOR_HEARTBEAT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        tokio::time::sleep(left.min(Duration::from_secs_f64(every))).await; // a slice of the real work
        if job.heartbeat("30s").await? {
            return Err(JobError::Cancelled);
        }
    }
    Ok(json!({"ok": true, "slept": seconds, "heartbeats": job.heartbeats}))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut queues = None;
    let (mut drain, mut batch) = (false, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--drain" => drain = true,
            "--batch" => batch = it.next().and_then(|n| n.parse().ok()),
            q if queues.is_none() && !q.starts_with('-') => queues = Some(q.to_string()),
            _ => queues = None,
        }
    }
    let Some(queues) = queues else {
        eprintln!("usage: worker QUEUES [--drain] [--batch N]");
        std::process::exit(2);
    };
    let result = async {
        let mut worker = Worker::connect(&queues, drain).await?;
        if let Some(n) = batch {
            worker.batch = n;
        }
        worker.run(&Demo).await
    }
    .await;
    if let Err(e) = result {
        eprintln!("worker failed: {e}");
        std::process::exit(1);
    }
}
