//! A pg_conveyor worker in Rust (tokio-postgres): the machinery. `src/bin/worker.rs` is its
//! command line and its demo handlers; the database is its only dependency.
//!
//! The worker LISTENs on "conveyor.<queue>" for each queue, claims runs in batches with
//! `conveyor.finish_and_claim` and awaits the [`Handlers`] for each run:
//!
//! | the handler returns | the worker calls |
//! |---|---|
//! | `Ok(result)` | nothing yet: the successes go with the next claim, in one `conveyor.finish_and_claim` call (one transaction per cycle) |
//! | `Err(JobError::release("1s", "why"))` | `conveyor.release_run`: look again later, not a failure |
//! | `Err(JobError::fail("why"))` (or `fail_with`) | `conveyor.fail_run`: retried with the task's backoff while its budget lasts |
//! | `Err(JobError::Cancelled)` (after `job.heartbeat()` said true) | `conveyor.fail_run`, recorded by the server as outcome stopped, run cancelled |
//!
//! A stale lease (SQLSTATE CV001: the lease expired and someone else has the run, or it is
//! over) is logged and the worker moves on.
//!
//! SIGINT/SIGTERM: no more claims; the run in hand may finish within CONVEYOR_GRACE seconds
//! (default 5; a second signal ends the grace at once), after which its next `job.heartbeat()`
//! returns `Err(JobError::Interrupted)` and the run is given back; the claimed runs not yet
//! started are given back too, all in one `conveyor.finish_runs` call (outcome `returned`).
//! Then the connection is closed and `run` returns.
//!
//! Drain mode: return once none of the queues' runs is scheduled, queued, running, retrying or
//! released.
//!
//! Types: `conveyor.ulid` and the `conveyor.run_status` enum are not types tokio-postgres knows,
//! so ids go in as `$1::text` (the server casts text to ulid implicitly) and come out as
//! `run_id::text`; statuses come out as `status::text`. Lease tokens are plain `uuid`
//! (`uuid::Uuid`), payloads and results `jsonb` (`serde_json::Value`).
//!
//! Settings (environment): CONVEYOR_BATCH (10), CONVEYOR_LEASE ("30s"),
//! CONVEYOR_POLL_SECONDS (5), CONVEYOR_GRACE (5), CONVEYOR_HEARTBEAT_SECONDS (1, used by the
//! handlers).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Notification};
use uuid::Uuid;

pub const STALE_LEASE: &str = "CV001";
/// A claimed run that waited this long behind others in its batch gets its lease extended first.
const REFRESH_AFTER: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

// --- connecting --------------------------------------------------------------------------------

/// A connection config from the usual PG* variables (tokio-postgres does not read them itself).
/// A PGHOST that starts with `/` is a Unix socket directory.
pub fn config_from_env(application_name: &str) -> Config {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut config = Config::new();
    let user = var("PGUSER")
        .or_else(|| var("USER"))
        .unwrap_or_else(|| "postgres".into());
    for host in var("PGHOST")
        .unwrap_or_else(|| "localhost".into())
        .split(',')
    {
        config.host(host.trim());
    }
    config
        .port(var("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432))
        .dbname(var("PGDATABASE").unwrap_or_else(|| user.clone()))
        .user(&user)
        .application_name(application_name);
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    config
}

/// Connect; the connection is driven by a task of its own, which forwards notifications
/// (LISTEN) to the returned channel. The channel closes when the connection ends.
pub async fn connect(
    application_name: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), BoxError> {
    let (client, mut connection) = config_from_env(application_name).connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {} // notices
                Err(e) => {
                    eprintln!("connection error: {e}");
                    break;
                }
            }
        }
    });
    Ok((client, rx))
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// "HH:MM:SS" (UTC), for log lines.
pub fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// --- shutdown ----------------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct StopState {
    since: Option<Instant>, // the first SIGINT/SIGTERM
    hurry: bool,            // a second one: no more grace
}

// --- what a handler returns --------------------------------------------------------------------

/// How a handler says its attempt did not succeed.
#[derive(Debug)]
pub enum JobError {
    /// Not ready yet: the run waits `delay` (e.g. "1s") and is claimed again. Not a failure.
    Release {
        delay: String,
        reason: Option<String>,
    },
    /// A failed attempt: retried with the task's backoff while its budget lasts (if retryable).
    Fail {
        message: String,
        meta: Option<Value>,
        retryable: bool,
    },
    /// `job.heartbeat()` said true: an operator cancelled the run.
    Cancelled,
    /// The worker is shutting down and the grace period is over: the run goes back.
    Interrupted,
    /// A database error while working (from `job.heartbeat()` or the handler's own queries).
    Db(tokio_postgres::Error),
}

impl JobError {
    pub fn release(delay: &str, reason: &str) -> Self {
        JobError::Release {
            delay: delay.into(),
            reason: Some(reason.into()),
        }
    }
    pub fn fail(message: impl Into<String>) -> Self {
        JobError::Fail {
            message: message.into(),
            meta: None,
            retryable: true,
        }
    }
    pub fn fail_with(message: impl Into<String>, meta: Value, retryable: bool) -> Self {
        JobError::Fail {
            message: message.into(),
            meta: Some(meta),
            retryable,
        }
    }
}

impl From<tokio_postgres::Error> for JobError {
    fn from(e: tokio_postgres::Error) -> Self {
        JobError::Db(e)
    }
}

/// The handlers of a worker: dispatch on `job.task`.
#[allow(async_fn_in_trait)]
pub trait Handlers {
    async fn handle(&self, job: &mut Job<'_>) -> Result<Value, JobError>;
}

// --- one claimed run, as a handler sees it -----------------------------------------------------

pub struct Job<'w> {
    pub run_id: String,
    pub lease_token: Uuid,
    pub task: String,
    pub payload: Value,
    pub attempt: i32,
    pub heartbeats: u32,
    worker: &'w Worker,
}

impl Job<'_> {
    /// Extend the lease by `extend` (e.g. "30s"); true when cancellation was requested.
    /// `Err(Interrupted)` when the worker is shutting down and the grace period is over.
    pub async fn heartbeat(&mut self, extend: &str) -> Result<bool, JobError> {
        if self.worker.grace_over() {
            return Err(JobError::Interrupted);
        }
        let row = self
            .worker
            .client
            .query_one(
                "select conveyor.heartbeat($1::text, $2, $3::text)",
                &[&self.run_id, &self.lease_token, &extend],
            )
            .await?;
        self.heartbeats += 1;
        Ok(row.get(0))
    }
}

// --- the worker --------------------------------------------------------------------------------

/// A success not sent yet: run_id, lease_token, task, attempt, result.
type Success = (String, Uuid, String, i32, Value);

pub struct Worker {
    pub name: String,
    pub queue_names: Vec<String>,
    pub batch: i32,
    pub lease: String,
    pub drain: bool,
    poll: Duration,
    grace: Duration,
    client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
    stop: watch::Sender<StopState>,
    /// successes not sent yet (run_id, lease_token, task, attempt, result)
    pending: std::cell::RefCell<Vec<Success>>,
}

impl Worker {
    /// Connect (PG* variables) and install the SIGINT/SIGTERM handlers.
    pub async fn connect(queues: &str, drain: bool) -> Result<Worker, BoxError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = format!("rust:{}:{}", host.trim(), std::process::id());
        let (client, notifications) = connect(&name).await?;
        let (stop, _) = watch::channel(StopState::default());
        let signals = stop.clone();
        let log_name = name.clone();
        let grace = env_number("CONVEYOR_GRACE", 5.0);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let which = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                signals.send_modify(|s| {
                    if s.since.is_none() {
                        s.since = Some(Instant::now());
                        eprintln!(
                            "{} [{log_name}] {which}: stopping (grace {grace}s)",
                            clock()
                        );
                    } else {
                        s.hurry = true;
                        eprintln!("{} [{log_name}] {which} again: no more grace", clock());
                    }
                });
            }
        });
        Ok(Worker {
            name,
            queue_names: queues
                .split(',')
                .map(|q| q.trim().to_string())
                .filter(|q| !q.is_empty())
                .collect(),
            batch: env_number("CONVEYOR_BATCH", 10.0) as i32,
            lease: std::env::var("CONVEYOR_LEASE").unwrap_or_else(|_| "30s".into()),
            drain,
            poll: Duration::from_secs_f64(env_number("CONVEYOR_POLL_SECONDS", 5.0)),
            grace: Duration::from_secs_f64(grace),
            client,
            notifications,
            stop,
            pending: Default::default(),
        })
    }

    pub fn log(&self, message: &str) {
        eprintln!("{} [{}] {message}", clock(), self.name);
    }

    /// One line per finished run, on stdout.
    fn report(&self, run_id: &str, task: &str, attempt: i32, outcome: &str) {
        println!(
            "{} run {run_id} {task} attempt {attempt}: {outcome}",
            clock()
        );
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().since.is_some()
    }

    fn grace_over(&self) -> bool {
        let s = *self.stop.borrow();
        s.since
            .is_some_and(|since| s.hurry || since.elapsed() >= self.grace)
    }

    /// Claim and work until stopped (or drained); gives back what it holds, then returns.
    pub async fn run(mut self, handlers: &impl Handlers) -> Result<(), BoxError> {
        for q in &self.queue_names {
            // the channel name has a dot in it: it must be a quoted identifier
            let channel = format!("conveyor.{q}").replace('"', "\"\"");
            self.client
                .batch_execute(&format!("listen \"{channel}\""))
                .await?;
        }
        let queues = self.queue_names.join(",");
        self.log(&format!(
            "claiming from {queues} (batch {}, lease {})",
            self.batch, self.lease
        ));
        while !self.stopping() {
            while self.notifications.try_recv().is_ok() {} // what woke us is seen by this claim
            let rows = self.finish_and_claim(&queues).await?;
            if !rows.is_empty() {
                let claimed_at = Instant::now();
                let jobs = rows
                    .iter()
                    .map(|r| Job {
                        run_id: r.get(1),
                        lease_token: r.get(3),
                        task: r.get(4),
                        payload: r.get(5),
                        attempt: r.get(6),
                        heartbeats: 0,
                        worker: &self,
                    })
                    .collect();
                self.process(jobs, claimed_at, handlers).await?;
                continue; // there may be more: claim again before waiting
            }
            if self.drain && self.nothing_left().await? {
                self.log(&format!("drained: nothing left in {queues}"));
                break;
            }
            self.wait_for_wakeup().await;
        }
        self.flush().await?;
        drop(self.client); // closes the connection
        eprintln!("{} [{}] stopped", clock(), self.name);
        Ok(())
    }

    /// Until a notification on one of our channels, a signal, or the poll interval.
    async fn wait_for_wakeup(&mut self) {
        let mut stop = self.stop.subscribe();
        if self.stopping() {
            return;
        }
        tokio::select! {
            _ = self.notifications.recv() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(self.poll) => {}
        }
    }

    /// The pending successes as finish_runs items; empties the list.
    fn take_pending(&self) -> (Vec<Success>, Option<Value>) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let items: Vec<Value> = pending
            .iter()
            .map(|(id, token, _, _, result)| {
                json!({"run_id": id, "lease_token": token.to_string(), "outcome": "succeeded", "result": result})
            })
            .collect();
        let items = (!items.is_empty()).then_some(Value::Array(items));
        (pending, items)
    }

    fn report_success(&self, pending: &[Success], id: &str, status: Option<String>) {
        match (status, pending.iter().find(|p| p.0 == id)) {
            (Some(status), Some((_, _, task, attempt, _))) => {
                self.report(id, task, *attempt, &format!("succeeded -> {status}"))
            }
            _ => self.log(&format!(
                "run {id}: stale lease, moving on (its success was not recorded)"
            )),
        }
    }

    /// Complete the pending successes and claim the next batch in one call (one transaction);
    /// returns the claimed rows (kind, run_id, status, lease_token, task, payload, attempt).
    async fn finish_and_claim(
        &self,
        queues: &str,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let (pending, items) = self.take_pending();
        let rows = self
            .client
            .query(
                "select kind, run_id::text, status::text, lease_token, task, payload, attempt
                 from conveyor.finish_and_claim($1, $2::text, $3::text, $4::int, $5::text)",
                &[&items, &queues, &self.name, &self.batch, &self.lease],
            )
            .await?;
        let (finished, claimed): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|r| r.get::<_, &str>(0) == "finished");
        for r in finished {
            self.report_success(&pending, r.get(1), r.get(2));
        }
        Ok(claimed)
    }

    /// Complete the pending successes now, in one conveyor.finish_runs call.
    async fn flush(&self) -> Result<(), tokio_postgres::Error> {
        let (pending, items) = self.take_pending();
        let Some(items) = items else { return Ok(()) };
        let rows = self
            .client
            .query(
                "select run_id::text, status::text from conveyor.finish_runs($1)",
                &[&items],
            )
            .await?;
        for r in rows {
            self.report_success(&pending, r.get(0), r.get(1));
        }
        Ok(())
    }

    async fn nothing_left(&self) -> Result<bool, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(
                // conveyor.pending is granted to workers: no read access to the run tables needed
                "select conveyor.pending($1)",
                &[&self.queue_names.join(",")],
            )
            .await?;
        Ok(row.get::<_, i64>(0) == 0)
    }

    async fn process(
        &self,
        jobs: Vec<Job<'_>>,
        claimed_at: Instant,
        handlers: &impl Handlers,
    ) -> Result<(), tokio_postgres::Error> {
        let mut jobs = jobs.into_iter();
        while let Some(mut job) = jobs.next() {
            if self.stopping() {
                // claimed but not started: give these back for another worker, in one call
                let unstarted: Vec<Job> = std::iter::once(job).chain(jobs).collect();
                return self.give_back(&unstarted).await;
            }
            if !self.pending.borrow().is_empty() {
                // a success held back behind another run could outlive its lease (heartbeats
                // extend only the run they are for): only the batch's last success waits for the
                // next claim
                self.flush().await?;
            }
            if claimed_at.elapsed() < REFRESH_AFTER || self.refresh(&job).await? {
                self.run_one(&mut job, handlers).await?;
            }
        }
        Ok(())
    }

    /// Extend the lease of a run that waited behind others of its batch: its lease has been
    /// running since the claim. False when it must not be started (cancelled, or stale).
    async fn refresh(&self, job: &Job<'_>) -> Result<bool, tokio_postgres::Error> {
        let cancel: bool = match self
            .client
            .query_one(
                "select conveyor.heartbeat($1::text, $2, $3::text)",
                &[&job.run_id, &job.lease_token, &self.lease],
            )
            .await
        {
            Ok(row) => row.get(0),
            Err(e) if sqlstate(&e) == Some(STALE_LEASE) => {
                let why = e.as_db_error().map_or("", |d| d.message());
                self.log(&format!(
                    "run {}: stale lease before it started, moving on ({why})",
                    job.run_id
                ));
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if cancel {
            self.finish(
                job,
                "select conveyor.fail_run($1::text, $2, $3::text)::text",
                &[
                    &job.run_id,
                    &job.lease_token,
                    &"stopped: cancelled before it started",
                ],
                "cancelled",
            )
            .await?;
        }
        Ok(!cancel)
    }

    async fn run_one(
        &self,
        job: &mut Job<'_>,
        handlers: &impl Handlers,
    ) -> Result<(), tokio_postgres::Error> {
        let (id, token) = (job.run_id.clone(), job.lease_token);
        let finished = match handlers.handle(job).await {
            Ok(result) => {
                // sent with the next claim (finish_and_claim), or by the next flush
                self.pending.borrow_mut().push((
                    id.clone(),
                    token,
                    job.task.clone(),
                    job.attempt,
                    result,
                ));
                Ok(())
            }
            Err(JobError::Release { delay, reason }) => {
                let outcome = format!("released for {delay}");
                self.finish(
                    job,
                    "select conveyor.release_run($1::text, $2, $3::text, $4::text)::text",
                    &[&id, &token, &delay, &reason],
                    &outcome,
                )
                .await
            }
            Err(JobError::Fail {
                message,
                meta,
                retryable,
            }) => {
                let outcome = format!("failed: {message}");
                self.finish(
                    job,
                    "select conveyor.fail_run($1::text, $2, $3::text, $4, $5)::text",
                    &[&id, &token, &message, &meta, &retryable],
                    &outcome,
                )
                .await
            }
            Err(JobError::Cancelled) => {
                self.finish(
                    job,
                    "select conveyor.fail_run($1::text, $2, $3::text)::text",
                    &[&id, &token, &"stopped: cancelled while running"],
                    "cancelled",
                )
                .await
            }
            Err(JobError::Interrupted) => {
                self.finish(
                    job,
                    "select conveyor.return_run($1::text, $2)::text",
                    &[&id, &token],
                    "returned (shutting down)",
                )
                .await
            }
            Err(JobError::Db(e)) if sqlstate(&e) == Some(STALE_LEASE) => Err(e), // from job.heartbeat()
            Err(JobError::Db(e)) => {
                // the handler's own query failed: a failed attempt, not a dead worker
                let message = format!("database error: {e}");
                let meta = json!({"sqlstate": sqlstate(&e)});
                self.finish(
                    job,
                    "select conveyor.fail_run($1::text, $2, $3::text, $4)::text",
                    &[&id, &token, &message, &meta],
                    &format!("failed: {message}"),
                )
                .await
            }
        };
        match finished {
            Err(e) if sqlstate(&e) == Some(STALE_LEASE) => {
                self.log(&format!(
                    "run {id}: stale lease, moving on ({})",
                    e.as_db_error().map_or("", |d| d.message())
                ));
                Ok(())
            }
            other => other,
        }
    }

    /// One finishing call (complete/fail/release/return); it returns the run's new status.
    async fn finish(
        &self,
        job: &Job<'_>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        outcome: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let status: String = self.client.query_one(sql, params).await?.get(0);
        self.report(
            &job.run_id,
            &job.task,
            job.attempt,
            &format!("{outcome} -> {status}"),
        );
        Ok(())
    }

    /// Give runs back unfinished with one conveyor.finish_runs call (outcome "returned").
    async fn give_back(&self, jobs: &[Job<'_>]) -> Result<(), tokio_postgres::Error> {
        let items: Value = jobs
            .iter()
            .map(|j| json!({"run_id": j.run_id, "lease_token": j.lease_token.to_string(), "outcome": "returned"}))
            .collect();
        let rows = self
            .client
            .query(
                "select run_id::text, status::text from conveyor.finish_runs($1)",
                &[&items],
            )
            .await?;
        for (job, row) in jobs.iter().zip(rows) {
            match row.get::<_, Option<String>>(1) {
                Some(status) => self.report(
                    &job.run_id,
                    &job.task,
                    job.attempt,
                    &format!("returned (shutting down) -> {status}"),
                ),
                None => self.log(&format!("run {}: stale lease, moving on", job.run_id)),
            }
        }
        Ok(())
    }
}
