//! The worker: claims runs of its queues and awaits the handler registered for each run's task.
//!
//! A batch's runs are worked one at a time: the ending of its last run goes with the next claim
//! in one `conveyor.finish_and_claim` call (one transaction per cycle), earlier endings are sent
//! before the next run starts, and the runs not started yet have their leases extended by the
//! running handler's heartbeats. Each handler runs as a task of its own, so a panic fails its
//! attempt, not the worker. A stale lease (SQLSTATE CV001) is logged, reported with
//! `status: None`, and the worker goes on. Every statement is unnamed (`query_typed`) and reads only built-in types, so
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
    /// the lease the server grants for `lease` (max_lease caps it): what refreshes are timed by
    granted: std::time::Duration,
    /// the claimed runs not started yet (the rest of the batch), with when each lease began,
    /// and what became of those extended from a heartbeat (cancelled: an ending; stale: None)
    held: std::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    runs: Vec<(ClaimedRun, Instant)>,
    dropped: Vec<(ClaimedRun, Option<Value>)>,
}

impl Shared {
    fn grace_over(&self) -> bool {
        let s = *self.stop.0.borrow();
        s.since.is_some_and(|since| s.hurry || since.elapsed() >= self.grace)
    }

    /// The held runs whose lease began a third of a lease ago (or more).
    fn due(&self) -> Vec<ClaimedRun> {
        let third = self.granted / 3;
        let held = self.held.lock().unwrap();
        held.runs.iter().filter(|(_, at)| at.elapsed() > third).map(|(r, _)| r.clone()).collect()
    }

    /// Extend a held run's lease; false when it is no longer held (cancelled: it ends stopped
    /// without starting; stale: someone else has it, or it is over).
    async fn extend(&self, run: &ClaimedRun) -> Result<bool, tokio_postgres::Error> {
        let params: [(&(dyn ToSql + Sync), Type); 3] =
            [(&run.run_id, Type::UUID), (&run.lease_token, Type::UUID), (&self.lease, Type::INTERVAL)];
        let outcome =
            match self.client.query_typed("select conveyor.heartbeat($1::conveyor.ulid, $2, $3)", &params).await {
                Ok(rows) if rows[0].get::<_, bool>(0) => {
                    Some(Some(json!({"outcome": "failed", "message": "stopped: cancelled before it started"})))
                }
                Ok(_) => None,
                Err(e) if sqlstate(&e) == Some(STALE_LEASE) => Some(None),
                Err(e) => return Err(e),
            };
        let mut held = self.held.lock().unwrap();
        let at = held.runs.iter().position(|(r, _)| r.run_id == run.run_id);
        match (outcome, at) {
            (None, Some(i)) => {
                held.runs[i].1 = Instant::now();
                Ok(true)
            }
            (Some(ending), Some(i)) => {
                held.runs.remove(i);
                held.dropped.push((run.clone(), ending));
                Ok(false)
            }
            (_, None) => Ok(false),
        }
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
        // the rest of the batch waits behind this handler: keep their leases too
        for run in self.shared.due() {
            self.shared.extend(&run).await?;
        }
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
    pub fn new(mut config: WorkerConfig) -> Result<Worker, String> {
        config.queues = config.queues.iter().map(|q| q.trim().to_string()).filter(|q| !q.is_empty()).collect();
        if config.queues.is_empty() {
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
        let rows = client
            .query_typed(
                "select extract(epoch from conveyor.lease_granted($1))::float8",
                &[(&self.config.lease, Type::INTERVAL)],
            )
            .await?;
        let granted = std::time::Duration::from_secs_f64(rows[0].get::<_, f64>(0).max(0.0));
        let shared = Arc::new(Shared {
            client,
            stop: self.stop.clone(),
            grace: self.config.grace,
            lease: self.config.lease,
            granted,
            held: Default::default(),
        });
        // the LISTEN connection (pooled), closed when run returns, whichever way
        let (_listener, mut notifications) = self.listen(&shared.client, direct_notifications).await?;
        let mut listening = true;
        let mut cycle = Cycle { worker: self, shared: &shared, pending: Vec::new() };
        let queues = self.config.queues.join(",");
        while !self.stop.stopping() {
            while notifications.try_recv().is_ok() {} // what woke us is seen by this claim
            let runs = cycle.finish_and_claim(&queues).await?;
            if !runs.is_empty() {
                cycle.process(runs).await?;
                continue; // there may be more: claim again before waiting
            }
            if drain && cycle.nothing_left(&queues).await? {
                break;
            }
            let mut stop = self.stop.0.subscribe();
            if self.stop.stopping() {
                break;
            }
            // the poll interval, or less when a rate limit holds runs back until sooner
            let rows = shared
                .client
                .query_typed(
                    "select greatest(extract(epoch from conveyor.rate_limited_until($1) - now()), 0)::float8",
                    &[(&queues, Type::TEXT)],
                )
                .await?;
            let idle = rows[0]
                .get::<_, Option<f64>>(0)
                .map_or(self.config.poll, |s| self.config.poll.min(std::time::Duration::from_secs_f64(s)));
            tokio::select! {
                n = notifications.recv(), if listening => {
                    if n.is_none() {
                        // the connection that listened is gone: poll from now on
                        eprintln!("{}: LISTEN connection lost: polling every {:?}", self.config.name, self.config.poll);
                        listening = false;
                    }
                }
                _ = stop.changed() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
        cycle.flush().await?;
        Ok(())
    }

    /// LISTEN on each queue's channel: on the worker's own connection, or (pooled) on the
    /// `listen` connection if there is one (returned, so that the caller holds it open); else
    /// nothing comes and the worker polls.
    async fn listen(
        &self,
        client: &Client,
        direct: mpsc::UnboundedReceiver<String>,
    ) -> Result<(Option<Client>, mpsc::UnboundedReceiver<String>), BoxError> {
        let statements: String = self
            .config
            .queues
            .iter()
            .map(|q| format!("listen \"{}\";", format!("conveyor.{q}").replace('"', "\"\"")))
            .collect();
        if !self.config.pooled {
            client.batch_execute(&statements).await?;
            return Ok((None, direct));
        }
        let Some(listen) = &self.config.listen else { return Ok((None, direct)) };
        let mut listen = listen.clone();
        listen.application_name(format!("{}:listen", self.config.name));
        let (listener, notifications) = connect(&listen).await?;
        listener.batch_execute(&statements).await?;
        Ok((Some(listener), notifications))
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

    /// Each run of a batch in turn. The ending of the batch's last run goes with the next claim;
    /// an earlier one is sent before the next run starts, so that no ending waits behind a
    /// handler that may outlast its lease. The runs not started yet get their leases extended
    /// whenever the running handler heartbeats, and before they start.
    async fn process(&mut self, runs: Vec<ClaimedRun>) -> Result<(), tokio_postgres::Error> {
        let now = Instant::now();
        self.shared.held.lock().unwrap().runs = runs.into_iter().map(|r| (r, now)).collect();
        loop {
            self.take_dropped();
            let Some(run) = self.shared.held.lock().unwrap().runs.first().map(|(r, _)| r.clone()) else { break };
            if self.worker.stop.stopping() {
                // claimed, not started: give it back for another worker
                self.shared.held.lock().unwrap().runs.remove(0);
                self.pending.push((run, json!({"outcome": "returned"}), Outcome::Returned));
                continue;
            }
            self.flush().await?;
            if self.shared.due().iter().any(|r| r.run_id == run.run_id) && !self.shared.extend(&run).await? {
                continue; // cancelled or stale: no longer held
            }
            self.shared.held.lock().unwrap().runs.retain(|(r, _)| r.run_id != run.run_id);
            let ending = self.run_one(run).await;
            self.pending.push(ending);
        }
        self.take_dropped();
        Ok(())
    }

    /// The held runs a heartbeat found cancelled (an ending to send) or stale (reported).
    fn take_dropped(&mut self) {
        let dropped = std::mem::take(&mut self.shared.held.lock().unwrap().dropped);
        for (run, ending) in dropped {
            match ending {
                Some(item) => self.pending.push((run, item, Outcome::Cancelled)),
                None => self.report(run, Outcome::Stale, None),
            }
        }
    }

    /// Await the handler; the ending item for finish_runs and what the handler did.
    async fn run_one(&self, run: ClaimedRun) -> Pending {
        let Some(handler) = self.worker.handlers.get(&run.task).cloned() else {
            let message = format!("no handler for task {} in this worker", run.task);
            return (run, json!({"outcome": "failed", "message": message, "retryable": false}), Outcome::Failed);
        };
        let job = Job { run: run.clone(), heartbeats: 0, shared: self.shared.clone() };
        // a task of its own: a panicking handler fails its attempt, not the worker
        let outcome = match tokio::spawn(handler(job)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let item = json!({"outcome": "failed", "message": format!("the handler panicked: {e}"),
                                  "meta": {"exception": "panic"}});
                return (run, item, Outcome::Failed);
            }
        };
        match outcome {
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
