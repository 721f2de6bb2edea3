//! The worker: claims runs of its queues and awaits the handler registered for each run's task.
//!
//! Every ending of a batch goes with the next claim in one `conveyor.finish_and_claim` call (one
//! transaction per cycle), unless the batch has been in hand for a third of the lease: then the
//! endings so far go at once (`conveyor.finish_runs`) and the next run's lease is extended before
//! it starts. A stale lease (SQLSTATE CV001) is logged, reported with `status: None`, and the
//! worker goes on. Every statement is unnamed (`query_typed`) and reads only built-in types, so
//! the worker runs through a transaction pooler (`pooled`) as well as directly.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Row};
use uuid::Uuid;

use crate::types::{Duration, RunStatus, Ulid};

/// SQLSTATE of a stale lease: the lease expired and someone else has the run, or it is over.
pub const STALE_LEASE: &str = "CV001";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// A connection config from the usual PG* variables (tokio-postgres does not read them). A
/// PGHOST that starts with `/` is a Unix socket directory.
pub fn config_from_env() -> Config {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut config = Config::new();
    let user = var("PGUSER").or_else(|| var("USER")).unwrap_or_else(|| "postgres".into());
    for host in var("PGHOST").unwrap_or_else(|| "localhost".into()).split(',') {
        config.host(host.trim());
    }
    config
        .port(var("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432))
        .dbname(var("PGDATABASE").unwrap_or_else(|| user.clone()))
        .user(&user);
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    config
}

/// Connect; the connection is driven by a task of its own, which forwards notifications (LISTEN)
/// to the returned channel. The channel closes when the connection ends.
pub async fn connect(config: &Config) -> Result<(Client, mpsc::UnboundedReceiver<String>), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.channel().to_string());
                }
                Ok(_) => {} // notices
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

// --- what a handler returns --------------------------------------------------------------------

/// How a handler says its attempt did not succeed.
#[derive(Debug)]
pub enum JobError {
    /// Not ready yet: the run waits `delay` and is claimed again. Not a failure.
    Release { delay: Duration, reason: Option<String>, meta: Option<Value> },
    /// A failed attempt: retried with the task's backoff while its budget lasts (if retryable).
    Fail { message: String, meta: Option<Value>, retryable: bool },
    /// `job.heartbeat()` said true: an operator cancelled the run (outcome stopped).
    Cancelled,
    /// The worker is stopping and the grace is over: the run goes back (queued, no failure).
    Interrupted,
    /// A database error while working (from `job.heartbeat()` or the handler's own queries);
    /// CV001 means the run is not ours any more.
    Db(tokio_postgres::Error),
}

impl JobError {
    pub fn release(delay: Duration, reason: &str) -> Self {
        JobError::Release { delay, reason: Some(reason.into()), meta: None }
    }
    pub fn fail(message: impl Into<String>) -> Self {
        JobError::Fail { message: message.into(), meta: None, retryable: true }
    }
    pub fn fail_with(message: impl Into<String>, meta: Value, retryable: bool) -> Self {
        JobError::Fail { message: message.into(), meta: Some(meta), retryable }
    }
}

impl From<tokio_postgres::Error> for JobError {
    fn from(e: tokio_postgres::Error) -> Self {
        JobError::Db(e)
    }
}

// --- records -----------------------------------------------------------------------------------

/// A run a claim gave this worker: the columns of `conveyor.claim_runs`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedRun {
    pub run_id: Ulid,
    pub lease_token: Uuid,
    pub task: String,
    pub queue: String,
    pub payload: Value,
    /// the attempt being made: 1 on the first
    pub attempt: i32,
    pub failures: i32,
    pub releases: i32,
    pub attempt_id: Ulid,
    pub priority: i16,
    pub parent_run_id: Option<Ulid>,
    pub lease_expires_at: SystemTime,
    pub timeout_at: Option<SystemTime>,
}

/// The columns of a claimed row, as built-in types (a pooler cannot look custom types up).
const CLAIMED: &str = "run_id::uuid, lease_token, task, queue, payload, attempt, failures, releases, \
                       attempt_id::uuid, priority, parent_run_id::uuid, lease_expires_at, timeout_at";

impl ClaimedRun {
    /// From a row whose columns from `first` on are [`CLAIMED`]'s.
    fn from_row(r: &Row, first: usize) -> ClaimedRun {
        ClaimedRun {
            run_id: r.get(first),
            lease_token: r.get(first + 1),
            task: r.get(first + 2),
            queue: r.get(first + 3),
            payload: r.get(first + 4),
            attempt: r.get(first + 5),
            failures: r.get(first + 6),
            releases: r.get(first + 7),
            attempt_id: r.get(first + 8),
            priority: r.get(first + 9),
            parent_run_id: r.get(first + 10),
            lease_expires_at: r.get(first + 11),
            timeout_at: r.get(first + 12),
        }
    }
}

/// What a handler did with a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Released,
    Cancelled,
    Returned,
    /// the lease went stale while the handler worked
    Stale,
}

/// How a run this worker had ended; `status` None: stale lease, nothing recorded.
#[derive(Clone, Debug)]
pub struct Finished {
    pub run: ClaimedRun,
    pub outcome: Outcome,
    pub status: Option<RunStatus>,
}

// --- stopping ----------------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct StopState {
    since: Option<Instant>,
    hurry: bool,
}

/// Stops a worker from anywhere: the first `stop()` ends claiming (the run in hand has the
/// grace to finish), the second ends the grace.
#[derive(Clone)]
pub struct StopHandle(Arc<watch::Sender<StopState>>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.send_modify(|s| {
            if s.since.is_none() {
                s.since = Some(Instant::now());
            } else {
                s.hurry = true;
            }
        });
    }

    /// Call `stop()` on each SIGINT and SIGTERM (a task of its own).
    pub fn stop_on_signals(&self) {
        let handle = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                handle.stop();
            }
        });
    }

    pub fn stopping(&self) -> bool {
        self.0.borrow().since.is_some()
    }
}

// --- one claimed run, as a handler sees it -----------------------------------------------------

struct Shared {
    client: Client,
    stop: StopHandle,
    grace: std::time::Duration,
    lease: Duration,
}

impl Shared {
    fn grace_over(&self) -> bool {
        let s = *self.stop.0.borrow();
        s.since.is_some_and(|since| s.hurry || since.elapsed() >= self.grace)
    }
}

/// A claimed run as a handler sees it: `job.run` and `heartbeat()`/`log()`.
pub struct Job {
    pub run: ClaimedRun,
    pub heartbeats: u32,
    shared: Arc<Shared>,
}

impl Job {
    /// Extend the lease (by `extend`, default the worker's lease); true when an operator asked to
    /// cancel the run (then return `Err(JobError::Cancelled)`). `Err(Interrupted)` once the
    /// worker is stopping and its grace is over; `Err(Db(e))` with CV001 when the lease is stale.
    pub async fn heartbeat(&mut self, extend: Option<Duration>) -> Result<bool, JobError> {
        if self.shared.grace_over() {
            return Err(JobError::Interrupted);
        }
        let extend = extend.unwrap_or(self.shared.lease);
        let params: [(&(dyn ToSql + Sync), Type); 3] =
            [(&self.run.run_id, Type::UUID), (&self.run.lease_token, Type::UUID), (&extend, Type::INTERVAL)];
        let rows =
            self.shared.client.query_typed("select conveyor.heartbeat($1::conveyor.ulid, $2, $3)", &params).await?;
        self.heartbeats += 1;
        Ok(rows[0].get(0))
    }

    /// Append to the attempt's log (`conveyor.attempt_logs`).
    pub async fn log(&self, text: &str) -> Result<(), JobError> {
        let params: [(&(dyn ToSql + Sync), Type); 3] =
            [(&self.run.run_id, Type::UUID), (&self.run.lease_token, Type::UUID), (&text, Type::TEXT)];
        self.shared.client.query_typed("select conveyor.append_log($1::conveyor.ulid, $2, $3)", &params).await?;
        Ok(())
    }
}

// --- the worker --------------------------------------------------------------------------------

/// A worker's settings; `Default` is one queue `default`, batches of 10, a 30 s lease.
#[derive(Clone)]
pub struct WorkerConfig {
    /// where to connect (see [`config_from_env`])
    pub connection: Config,
    pub queues: Vec<String>,
    pub batch: i32,
    pub lease: Duration,
    /// when idle and no notification comes
    pub poll: std::time::Duration,
    /// how long the run in hand may go on after the first stop
    pub grace: std::time::Duration,
    /// through a transaction pooler: no LISTEN on `connection`
    pub pooled: bool,
    /// with `pooled`: a direct session connection used only for LISTEN (else the worker polls)
    pub listen: Option<Config>,
    pub name: String,
    pub bind_session: Option<bool>,
    pub tasks: Option<Vec<String>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        WorkerConfig {
            connection: config_from_env(),
            queues: vec!["default".into()],
            batch: 10,
            lease: Duration::from_secs(30),
            poll: std::time::Duration::from_secs(5),
            grace: std::time::Duration::from_secs(5),
            pooled: false,
            listen: None,
            name: format!("rust:{}:{}", host.trim(), std::process::id()),
            bind_session: None,
            tasks: None,
        }
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, JobError>> + Send>>;
type Handler = Arc<dyn Fn(Job) -> HandlerFuture + Send + Sync>;
type Callback = Arc<dyn Fn(&Finished) + Send + Sync>;

/// An ending not sent yet: the run, its finish_runs item, and what the handler did.
type Pending = (ClaimedRun, Value, Outcome);

pub struct Worker {
    config: WorkerConfig,
    handlers: HashMap<String, Handler>,
    on_finished: Option<Callback>,
    stop: StopHandle,
}

impl Worker {
    /// Refuses settings the server would refuse later: no queue, a batch below 1.
    pub fn new(config: WorkerConfig) -> Result<Worker, String> {
        if config.queues.iter().all(|q| q.trim().is_empty()) {
            return Err("a worker needs at least one queue".into());
        }
        if config.batch < 1 {
            return Err(format!("batch must be at least 1, got {}", config.batch));
        }
        let (tx, _) = watch::channel(StopState::default());
        Ok(Worker { config, handlers: HashMap::new(), on_finished: None, stop: StopHandle(Arc::new(tx)) })
    }

    /// Register the handler of task `name`: an async function of the [`Job`] returning the run's
    /// result (`Ok(json)`) or a [`JobError`].
    pub fn task<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
    {
        self.handlers.insert(name.to_string(), Arc::new(move |job| Box::pin(handler(job))));
        self
    }

    /// Called with each ended run (or one that turned out stale).
    pub fn on_finished(mut self, f: impl Fn(&Finished) + Send + Sync + 'static) -> Self {
        self.on_finished = Some(Arc::new(f));
        self
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Claim and work until stopped; with `drain`, return once none of the queues' runs is
    /// waiting, running or due later. Gives back what it holds before it returns.
    pub async fn run(&self, drain: bool) -> Result<(), BoxError> {
        let mut config = self.config.connection.clone();
        config.application_name(&self.config.name);
        let (client, direct_notifications) = connect(&config).await?;
        let shared =
            Arc::new(Shared { client, stop: self.stop.clone(), grace: self.config.grace, lease: self.config.lease });
        let mut notifications = self.listen(&shared.client, direct_notifications).await?;
        let mut cycle = Cycle { worker: self, shared: &shared, pending: Vec::new() };
        let queues = self.config.queues.join(",");
        while !self.stop.stopping() {
            while notifications.try_recv().is_ok() {} // what woke us is seen by this claim
            let runs = cycle.finish_and_claim(&queues).await?;
            if !runs.is_empty() {
                cycle.process(runs, Instant::now()).await?;
                continue; // there may be more: claim again before waiting
            }
            if drain && cycle.nothing_left(&queues).await? {
                break;
            }
            let mut stop = self.stop.0.subscribe();
            if self.stop.stopping() {
                break;
            }
            tokio::select! {
                _ = notifications.recv() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
        cycle.flush().await?;
        Ok(())
    }

    /// LISTEN on each queue's channel: on the worker's own connection, or (pooled) on the
    /// `listen` connection if there is one; else nothing comes and the worker polls.
    async fn listen(
        &self,
        client: &Client,
        direct: mpsc::UnboundedReceiver<String>,
    ) -> Result<mpsc::UnboundedReceiver<String>, BoxError> {
        let statements: String = self
            .config
            .queues
            .iter()
            .map(|q| format!("listen \"{}\";", format!("conveyor.{}", q.trim()).replace('"', "\"\"")))
            .collect();
        if !self.config.pooled {
            client.batch_execute(&statements).await?;
            return Ok(direct);
        }
        let Some(listen) = &self.config.listen else { return Ok(direct) };
        let mut listen = listen.clone();
        listen.application_name(format!("{}:listen", self.config.name));
        let (listener, notifications) = connect(&listen).await?;
        listener.batch_execute(&statements).await?;
        // the listening client lives as long as the worker's run: a task holds it
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut changes = stop.0.subscribe();
            while !stop.stopping() && changes.changed().await.is_ok() {}
            drop(listener);
        });
        Ok(notifications)
    }
}

/// The state of one `run`: the connection and the endings not sent yet.
struct Cycle<'w> {
    worker: &'w Worker,
    shared: &'w Arc<Shared>,
    pending: Vec<Pending>,
}

impl Cycle<'_> {
    fn items(&mut self) -> (Option<Value>, Vec<(ClaimedRun, Outcome)>) {
        let pending = std::mem::take(&mut self.pending);
        let items: Vec<Value> = pending
            .iter()
            .map(|(run, item, _)| {
                let mut item = item.clone();
                item["run_id"] = json!(run.run_id.to_string());
                item["lease_token"] = json!(run.lease_token.to_string());
                item
            })
            .collect();
        let sent = pending.into_iter().map(|(run, _, outcome)| (run, outcome)).collect();
        ((!items.is_empty()).then_some(Value::Array(items)), sent)
    }

    fn report(&self, run: ClaimedRun, outcome: Outcome, status: Option<String>) {
        let status = status.and_then(|s| s.parse().ok());
        if status.is_none() {
            eprintln!("run {}: stale lease, moving on (its {outcome:?} was not recorded)", run.run_id);
        }
        if let Some(f) = &self.worker.on_finished {
            f(&Finished { run, outcome, status });
        }
    }

    /// Send the pending endings and claim the next batch in one call (one transaction).
    async fn finish_and_claim(&mut self, queues: &str) -> Result<Vec<ClaimedRun>, tokio_postgres::Error> {
        let (items, sent) = self.items();
        let c = &self.worker.config;
        let params: [(&(dyn ToSql + Sync), Type); 7] = [
            (&items, Type::JSONB),
            (&queues, Type::TEXT),
            (&c.name, Type::TEXT),
            (&c.batch, Type::INT4),
            (&c.lease, Type::INTERVAL),
            (&c.tasks, Type::TEXT_ARRAY),
            (&c.bind_session, Type::BOOL),
        ];
        let sql =
            format!("select kind, status::text, {CLAIMED} from conveyor.finish_and_claim($1, $2, $3, $4, $5, $6, $7)");
        let rows = self.shared.client.query_typed(&sql, &params).await?;
        let (finished, claimed): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.get::<_, &str>(0) == "finished");
        for ((run, outcome), row) in sent.into_iter().zip(finished) {
            self.report(run, outcome, row.get(1));
        }
        Ok(claimed.into_iter().map(|r| ClaimedRun::from_row(r, 2)).collect())
    }

    /// Send the pending endings now (`conveyor.finish_runs`).
    async fn flush(&mut self) -> Result<(), tokio_postgres::Error> {
        let (Some(items), sent) = self.items() else { return Ok(()) };
        let rows = self
            .shared
            .client
            .query_typed("select status::text from conveyor.finish_runs($1)", &[(&items, Type::JSONB)])
            .await?;
        for ((run, outcome), row) in sent.into_iter().zip(&rows) {
            self.report(run, outcome, row.get(0));
        }
        Ok(())
    }

    async fn nothing_left(&self, queues: &str) -> Result<bool, tokio_postgres::Error> {
        let rows = self.shared.client.query_typed("select conveyor.pending($1)", &[(&queues, Type::TEXT)]).await?;
        Ok(rows[0].get::<_, i64>(0) == 0)
    }

    async fn process(&mut self, runs: Vec<ClaimedRun>, claimed_at: Instant) -> Result<(), tokio_postgres::Error> {
        let refresh_after = self.worker.config.lease.get() / 3;
        for run in runs {
            if self.worker.stop.stopping() {
                // claimed, not started: give it back for another worker
                self.pending.push((run, json!({"outcome": "returned"}), Outcome::Returned));
                continue;
            }
            if claimed_at.elapsed() > refresh_after {
                // held back behind others of the batch: send what ended, then extend this lease
                self.flush().await?;
                if !self.refresh(&run).await? {
                    continue;
                }
            }
            let ending = self.run_one(run).await;
            self.pending.push(ending);
        }
        Ok(())
    }

    /// Extend the lease of a run that waited behind others; false if it must not start.
    async fn refresh(&mut self, run: &ClaimedRun) -> Result<bool, tokio_postgres::Error> {
        let lease = self.worker.config.lease;
        let params: [(&(dyn ToSql + Sync), Type); 3] =
            [(&run.run_id, Type::UUID), (&run.lease_token, Type::UUID), (&lease, Type::INTERVAL)];
        let cancel: bool =
            match self.shared.client.query_typed("select conveyor.heartbeat($1::conveyor.ulid, $2, $3)", &params).await
            {
                Ok(rows) => rows[0].get(0),
                Err(e) if sqlstate(&e) == Some(STALE_LEASE) => {
                    self.report(run.clone(), Outcome::Stale, None);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
        if cancel {
            let item = json!({"outcome": "failed", "message": "stopped: cancelled before it started"});
            self.pending.push((run.clone(), item, Outcome::Cancelled));
        }
        Ok(!cancel)
    }

    /// Await the handler; the ending item for finish_runs and what the handler did.
    async fn run_one(&self, run: ClaimedRun) -> Pending {
        let Some(handler) = self.worker.handlers.get(&run.task).cloned() else {
            let message = format!("no handler for task {} in this worker", run.task);
            return (run, json!({"outcome": "failed", "message": message, "retryable": false}), Outcome::Failed);
        };
        let job = Job { run: run.clone(), heartbeats: 0, shared: self.shared.clone() };
        match handler(job).await {
            Ok(result) => (run, json!({"outcome": "succeeded", "result": result}), Outcome::Succeeded),
            Err(JobError::Release { delay, reason, meta }) => {
                let delay = format!("{}us", delay.get().as_micros());
                let item = json!({"outcome": "released", "delay": delay, "reason": reason, "meta": meta});
                (run, item, Outcome::Released)
            }
            Err(JobError::Fail { message, meta, retryable }) => {
                let item = json!({"outcome": "failed", "message": message, "meta": meta, "retryable": retryable});
                (run, item, Outcome::Failed)
            }
            Err(JobError::Cancelled) => {
                let item = json!({"outcome": "failed", "message": "stopped: cancelled while running"});
                (run, item, Outcome::Cancelled)
            }
            Err(JobError::Interrupted) => (run, json!({"outcome": "returned"}), Outcome::Returned),
            Err(JobError::Db(e)) if sqlstate(&e) == Some(STALE_LEASE) => {
                (run, json!({"outcome": "returned"}), Outcome::Stale)
            }
            Err(JobError::Db(e)) => {
                // the handler's own query failed: a failed attempt, not a dead worker
                let item = json!({"outcome": "failed", "message": format!("database error: {e}"),
                                  "meta": {"sqlstate": sqlstate(&e)}});
                (run, item, Outcome::Failed)
            }
        }
    }
}
