-- schema/tables.sql: tables, indexes and composite types. Changed only by migrations
-- (sql/migrations/); the functions that use them are in sql/functions/.
--
-- Hot tables (runs, attempts, events) have no foreign keys: the functions in sql/functions/ keep them
-- consistent and retention deletes a run with its attempts, events and logs together.


-- _defaults: the options an operator set for every task (zero or one row). The view
-- conveyor.defaults fills in the built-in values for whatever is not set.
create table conveyor._defaults (
    singleton boolean primary key default true,
    queue text,
    priority smallint,
    max_attempts integer,
    backoff text,
    backoff_custom interval[],
    delay interval,
    max_delay interval,
    jitter text,
    timeout interval,
    lease interval,
    max_lease interval,
    log_max_size integer,
    log_on_full text,
    retention interval,
    restart_delay interval,
    restart_backoff text,
    restart_max_delay interval,
    updated_at timestamptz not null default now(),
    -- (0.2.0) claims bind runs to the claiming session unless the claim says otherwise
    bind_session boolean,
    constraint defaults_one_row check (singleton)
);

comment on table conveyor._defaults is
    'defaults an operator set (conveyor.set_defaults / apply_config); conveyor.defaults shows the effective ones';

create table conveyor.queues (
    name text primary key,
    paused boolean not null default false,
    -- bounded queue: at most this many runs delivered (queued or running) at once; null = unbounded
    concurrency integer,
    -- runs delivered now; kept (by the transition trigger) only while concurrency is set
    delivered integer not null default 0,
    -- send pg_notify('conveyor.<name>') when runs become claimable
    notify boolean not null default true,
    -- write an outbox row (topic conveyor.delivery) for each run that becomes claimable
    delivery_outbox boolean not null default false,
    created_at timestamptz not null default now(),
    -- (0.2.0) the bind_session default of this queue's claims (null: the defaults')
    bind_session boolean,
    -- (0.2.0) rate limit: at most rate_limit_n runs started in any window of rate_limit_period
    rate_limit_n integer,
    rate_limit_period interval,
    -- (0.2.0) per concurrency key: at most key_concurrency of its runs in this queue running at
    -- once, and at most key_rate_limit_n started in any window of key_rate_limit_period
    key_concurrency integer,
    key_rate_limit_n integer,
    key_rate_limit_period interval,
    constraint queues_concurrency_positive check (concurrency > 0),
    constraint queues_delivered_not_negative check (delivered >= 0)
);

create table conveyor.tasks (
    name text primary key,
    kind text not null default 'task',
    queue text not null,
    enabled boolean not null default true,
    version integer not null default 1,
    -- the normalized options as given; what is absent comes from conveyor.defaults
    options jsonb not null default '{}',
    priority smallint,
    max_attempts integer,
    backoff text,
    backoff_custom interval[],
    delay interval,
    max_delay interval,
    jitter text,
    timeout interval,
    lease interval,
    log_max_size integer,
    log_on_full text,
    -- cron
    schedule text,
    timezone text,
    on_overlap text not null default 'allow',
    catch_up boolean not null default false,
    next_fire_at timestamptz,
    -- at most this many runs of the task delivered (queued or running) at once; null = no cap
    parallelism integer,
    -- runs delivered now; kept (by the transition trigger) only while parallelism is set
    active integer not null default 0,
    -- payload of runs the queue creates itself (cron firings, service replicas)
    payload jsonb not null default '{}',
    -- services
    replicas integer,
    restart_delay interval,
    restart_backoff text,
    restart_max_delay interval,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    -- (0.2.0) the bind_session default of this task's claims (null: that of the queue a run is claimed from, then the defaults')
    bind_session boolean,
    -- (0.2.0) deduplication on the idempotency key (null: return the existing run), how long a
    -- finished run's key still deduplicates, and debounce (each keyed enqueue pushes a scheduled
    -- run's start back, at most debounce_max after its first)
    on_duplicate text,
    unique_for interval,
    debounce interval,
    debounce_max interval,
    -- (0.2.0) rate limit: at most rate_limit_n runs of the task started in any window of rate_limit_period
    rate_limit_n integer,
    rate_limit_period interval,
    -- (0.2.0) per concurrency key: at most key_concurrency of the task's runs with one key running
    -- at once (in any queue), and at most key_rate_limit_n started in any window of its period
    key_concurrency integer,
    key_rate_limit_n integer,
    key_rate_limit_period interval,
    constraint tasks_kind check (kind in ('task', 'service')),
    constraint tasks_service_has_replicas check ((kind = 'service') = (replicas is not null)),
    constraint tasks_active_not_negative check (active >= 0),
    constraint tasks_schedule_has_cursor check ((schedule is null) = (next_fire_at is null))
);

create table conveyor.runs (
    id conveyor.ulid primary key,
    task text not null,
    queue text not null,
    status conveyor.run_status not null,
    priority smallint not null default 0,
    -- due time while waiting (scheduled/retrying/released); kept as the claim order once queued
    run_at timestamptz not null,
    payload jsonb not null,
    created_at timestamptz not null,
    task_version integer not null,
    -- the current (or last) attempt
    attempt_id conveyor.ulid,
    prev_attempt_id conveyor.ulid,
    lease_token uuid,
    lease_expires_at timestamptz,
    timeout_at timestamptz,
    started_at timestamptz,
    worker text,
    cancel_requested_at timestamptz,
    finished_at timestamptz,
    -- counters: cumulative, never reset
    attempts integer not null default 0,
    failures integer not null default 0,
    retries integer not null default 0,
    releases integer not null default 0,
    -- failures counted before the current retry budget started (retry_run moves it)
    failure_base integer not null default 0,
    -- the delay chosen after the last attempt (retry backoff or release delay)
    last_delay interval,
    -- the last failure {code, message, meta}
    error jsonb,
    result jsonb,
    -- bytes of log captured for the current attempt
    log_size integer not null default 0,
    idempotency_key text,
    parent_run_id conveyor.ulid,
    -- cron: the firing this run materializes
    fire_at timestamptz,
    -- services: the replica this run is, and its consecutive quick restarts
    replica integer,
    restarts integer not null default 0,
    -- (0.2.0) the database session that claimed the current (or last) attempt, when the claim bound
    -- the run to it (bind_session): tick ends the attempt as crashed once that session is gone
    session_pid integer,
    session_started_at timestamptz,
    -- (0.2.0) the concurrency key (enqueue's key): key_concurrency and key_rate_limit count a
    -- key's runs, and the keys of a queue take turns in its claims
    concurrency_key text,
    -- (0.2.0) the run's turn among the keys of its queue and priority (round-robin), set as it
    -- becomes queued (_fair_rank); 0 for a run without a key
    fair_rank bigint not null default 0,
    -- (0.2.0) the shard of the queue's and of the task's key limit the current (or last) attempt
    -- started under (claim_runs): a shard's running runs count against its share
    queue_key_shard smallint,
    task_key_shard smallint,
    -- The two invariants of the state machine itself. (PostgreSQL 15 re-reads a table's CHECK
    -- expressions on every INSERT and UPDATE statement; seven checks here cost 8-18% of claim
    -- and finish throughput, so the others, on priority, payload, counters and cancel
    -- requests, are the functions' to keep and the tests' to prove: see
    -- model::random_operation_sequences_agree_with_the_state_machine_model and the race test.)
    constraint runs_finished_iff_terminal
        check ((status in ('succeeded', 'failed', 'cancelled', 'skipped')) = (finished_at is not null)),
    constraint runs_lease_iff_running
        check ((status = 'running') = (lease_token is not null and lease_expires_at is not null))
) with (
    -- a queue churns: vacuum early and without sleeping so dead versions are reused, not piled up
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

comment on table conveyor.runs is 'one row per run; status changes are checked against conveyor.transitions';

-- claim: one index range per queue, in claim order (priority, the keys' turns, due time); only
-- claimable rows are in it
create index runs_claimable on conveyor.runs (queue, priority, fair_rank, run_at, id) where status = 'queued';

-- (0.2.0) _fair_rank: a key's last turn among the queued runs of its queue and priority
create index runs_queued_by_key on conveyor.runs (queue, priority, concurrency_key, fair_rank)
    where status = 'queued' and concurrency_key is not null;

-- (0.2.0) claim under key limits: the running runs of a key, with the shards they started
-- under (an index-only read, which the planner prefers even before it has statistics)
create index runs_running_by_key on conveyor.runs (concurrency_key, queue, task) include (queue_key_shard, task_key_shard)
    where status = 'running' and concurrency_key is not null;

-- (0.2.0) _fair_rank: the turn a queue is serving (its running keyed runs' latest; turn 0 needs
-- no entry, and claims counting a key's running runs have runs_running_by_key to themselves)
create index runs_running_turn on conveyor.runs (queue, priority, fair_rank)
    where status = 'running' and concurrency_key is not null and fair_rank > 0;

-- tick delivery: waiting runs by due time, per queue
create index runs_waiting_due on conveyor.runs (queue, run_at)
    where status in ('scheduled', 'retrying', 'released');

-- tick expiry: running runs by the earlier of lease expiry and timeout
create index runs_running_deadline on conveyor.runs ((least(lease_expires_at, timeout_at)))
    where status = 'running';

-- tick delivery: every due waiting run by due time, whatever its queue (the oldest first, so a
-- step's cost follows the due rows, not the number of queues)
create index runs_due on conveyor.runs (run_at) where status in ('scheduled', 'retrying', 'released');
-- tick repair: a capped task's delivered runs (queued or running), counted without scanning
-- the table (a bounded queue's are counted through runs_claimable and runs_running_deadline)
-- (and, by task and queue, whether a rate-limited task has queued runs in the queues of a claim)
create index runs_delivered_by_task on conveyor.runs (task, status, queue) where status in ('queued', 'running');
-- retention and recent-throughput dashboards
create index runs_finished on conveyor.runs (finished_at) where finished_at is not null;

-- one live run per idempotency key and task (race-free under concurrent enqueues)
create unique index runs_idempotency on conveyor.runs (task, idempotency_key)
    where idempotency_key is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped');

-- (0.2.0) unique_for: the finished runs of a key, newest first (only keyed runs, once finished)
create index runs_finished_by_key on conveyor.runs (task, idempotency_key, finished_at)
    where idempotency_key is not null and finished_at is not null;

-- cron: exactly one run per task and firing
create unique index runs_cron_firing on conveyor.runs (task, fire_at) where fire_at is not null;

-- cron overlap: the firings of a task still in flight
create index runs_cron_in_flight on conveyor.runs (task)
    where fire_at is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped');

-- services: at most one live run per replica, and each replica's history
create unique index runs_service_replica_live on conveyor.runs (task, replica)
    where replica is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped');

create index runs_service_replica_history on conveyor.runs (task, replica, id) where replica is not null;

-- tick expiry: the running runs bound to each session (conveyor.sessions)
create index runs_bound_session on conveyor.runs (session_pid, session_started_at)
    where status = 'running' and session_pid is not null;

-- retry_run refuses runs that spawned children
create index runs_parent on conveyor.runs (parent_run_id) where parent_run_id is not null;

create table conveyor.attempts (
    id conveyor.ulid not null,
    run_id conveyor.ulid not null,
    attempt integer not null,
    retry_of conveyor.ulid,
    task text not null,
    queue text not null,
    worker text,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    outcome conveyor.attempt_outcome not null,
    -- failures: {code, message, meta}
    error jsonb,
    -- releases: {reason, meta}
    reason jsonb,
    -- the delay chosen after this attempt (retry backoff or release delay)
    delay interval,
    constraint attempts_one_row_per_attempt primary key (run_id, attempt)
) with (autovacuum_vacuum_insert_scale_factor = 0.05);

comment on table conveyor.attempts is 'one row per ended attempt, written once when it ends';
-- dashboards read recent attempts by finished_at; attempts arrive in finished_at order, so a BRIN
-- index answers those windows for almost no write cost (a btree would add one per attempt)
create index attempts_finished_brin on conveyor.attempts using brin (finished_at);

create table conveyor.attempt_logs (
    id bigint generated always as identity,
    run_id conveyor.ulid not null,
    attempt_id conveyor.ulid not null,
    at timestamptz not null,
    chunk text not null
);

comment on table conveyor.attempt_logs is 'log text appended by workers, one row per append';
create index attempt_logs_by_run on conveyor.attempt_logs (run_id, id);

create table conveyor.events (
    id bigint generated always as identity,
    run_id conveyor.ulid not null,
    at timestamptz not null,
    type conveyor.event_type not null,
    -- the attempt this event is about (started: the one starting; ended: the one that ended)
    attempt integer not null,
    data jsonb
) with (autovacuum_vacuum_insert_scale_factor = 0.05);

comment on table conveyor.events is 'append-only log of run transitions, written by the transition trigger';
create index events_by_run on conveyor.events (run_id);

create table conveyor.outbox (
    id conveyor.ulid primary key,
    topic text not null,
    payload jsonb not null,
    created_at timestamptz not null,
    deliver_at timestamptz not null,
    -- set when tick sent it with pg_notify
    published_at timestamptz,
    -- relay: claimed under a lease, acknowledged when forwarded
    claim_token uuid,
    claimed_by text,
    claim_expires_at timestamptz,
    claims integer not null default 0,
    acked_at timestamptz
);

comment on table conveyor.outbox is 'messages written in the caller''s transaction, sent later at least once';
create index outbox_unpublished on conveyor.outbox (deliver_at) where published_at is null;
create index outbox_unacked on conveyor.outbox (topic, deliver_at) where acked_at is null;
create index outbox_published on conveyor.outbox (published_at) where published_at is not null;

-- sessions: each database session that claimed runs bound to it (bind_session), by backend pid
-- and backend start (pids are reused; the pair is not). The expire step compares them with
-- pg_stat_activity and ends the running attempts of a session that is gone, then its row.
create table conveyor.sessions (
    pid integer not null,
    started_at timestamptz not null,
    -- the worker name of its first bound claim, and when that was
    worker text not null,
    bound_at timestamptz not null,
    constraint sessions_one_row_per_backend primary key (pid, started_at)
);
comment on table conveyor.sessions is 'sessions that claimed runs bound to them; tick rescues their runs when they end';

-- What claim_run(s) hand a worker.
create type conveyor.claimed_run as (
    run_id conveyor.ulid,
    lease_token uuid,
    task text,
    queue text,
    payload jsonb,
    attempt integer,          -- this attempt's number (attempts so far + 1: releases and returns count)
    failures integer,         -- failed attempts so far (what a retry policy in the handler wants)
    releases integer,         -- releases so far
    attempt_id conveyor.ulid,
    priority smallint,
    parent_run_id conveyor.ulid,
    lease_expires_at timestamptz,
    timeout_at timestamptz
);

-- tick's own record, written only by tick (no client can lock these rows): per step, how often
-- it ran, failed whole, changed rows, left rows or queues for later because a client held their
-- lock, and set rows aside that failed alone; `cursor` is where deliver's turn through the
-- queues stands. metrics() shows the counters (monotonic: Prometheus can rate them).
create table conveyor._tick_stats (
    step text not null,
    -- who ran it: the background worker (`worker`), or a client calling tick()/tick_step()
    -- (`manual`). Apart, so that a tick by hand in an open transaction never holds a row the
    -- worker's steps must write; metrics() sums them.
    source text not null,
    runs bigint not null default 0,
    failures bigint not null default 0,
    changed bigint not null default 0,
    skipped bigint not null default 0,
    quarantined bigint not null default 0,
    cursor text,
    last_error text,
    last_run_at timestamptz,
    constraint tick_stats_one_row_per_step_and_source primary key (step, source)
);
comment on table conveyor._tick_stats is 'per tick step: runs, failures, rows changed, skipped (locked by a client) and quarantined';

-- quarantine: rows a tick step could not handle on their own (an error that only that row
-- causes). The step goes on with the other rows and leaves a quarantined row alone until
-- retry_at (1 minute, doubling up to 1 hour); each quarantining writes an event run.quarantined.
create table conveyor.quarantine (
    step text not null,
    run_id conveyor.ulid not null,
    sqlstate text not null,
    message text not null,
    first_at timestamptz not null,
    last_at timestamptz not null,
    failures integer not null default 1,
    retry_at timestamptz not null,
    constraint quarantine_one_row_per_step_and_run primary key (step, run_id)
);
comment on table conveyor.quarantine is 'runs a tick step set aside after they failed alone, with the error, until retry_at';

-- Counters Prometheus can rate (issue 18): monotonic totals of runs enqueued, attempts ended by
-- outcome and retries, per queue and task, which pruning never lowers (conveyor.counters,
-- metrics()). A statement that creates runs or ends attempts inserts one row per (queue, task,
-- counter) it changed into _counter_deltas: an insert, never an update of a shared row, so no
-- producer or worker waits on another for a counter. The tick step `count` moves deltas into
-- _counters (delete ... returning, SKIP LOCKED), so deltas + totals is exact in every snapshot.
create table conveyor._counter_deltas (
    queue text not null,
    task text not null,
    -- enqueued, retried, or attempt.<outcome>
    counter text not null,
    n bigint not null
);
comment on table conveyor._counter_deltas is 'counter increments not yet folded into conveyor._counters by the tick step count';
-- no key of its own: the fold's deletes carry the whole row (a FOR ALL TABLES publication needs it)
alter table conveyor._counter_deltas replica identity full;

create table conveyor._counters (
    queue text not null,
    task text not null,
    counter text not null,
    -- who folded it (_tick_source): apart, so that a tick by hand left in an open transaction
    -- never holds a row the worker's fold must write; conveyor.counters sums them
    source text not null,
    n bigint not null,
    constraint counters_one_row_per_key primary key (queue, task, counter, source)
);
comment on table conveyor._counters is 'monotonic counter totals folded by the tick step count (read conveyor.counters)';

-- Rate limits (issue 15): a limit of N per period is split into shards (up to 8), each with its
-- share of N. A claim from a rate-limited queue, or of a rate-limited task, takes one shard's
-- row in _rate_limits (FOR NO KEY UPDATE, a free one if any: only claims lock these rows, and a
-- wait is bounded), counts that shard's starts of the window in _rate_starts, claims at most
-- what is left of its share and records its own starts there, all before it commits. Claims of
-- one shard take turns and each sees every start committed before it: each shard is an exact
-- sliding window, and the shares add up to N.
create table conveyor._rate_limits (
    scope text not null,
    name text not null,
    shard smallint not null,
    -- this shard's share of the limit
    quota integer not null,
    constraint rate_limits_scope check (scope in ('queue', 'task')),
    constraint rate_limits_quota_positive check (quota > 0),
    constraint rate_limits_one_row_per_shard primary key (scope, name, shard)
);
comment on table conveyor._rate_limits is 'the shards of each rate limit with their share of it, each locked by one claim at a time';

create table conveyor._rate_starts (
    scope text not null,
    name text not null,
    shard smallint not null,
    -- the claim's time (the runs' started_at) and how many runs it started
    at timestamptz not null,
    n integer not null,
    -- a key_rate_limit's key (scope queue_key or task_key; shard: the key limit's shard, whose
    -- lock in claim_runs stands for a shard's row)
    key text
);
comment on table conveyor._rate_starts is 'runs started per claim under a rate limit shard (kept two periods; tick prunes)';
create index rate_starts_window on conveyor._rate_starts (scope, name, shard, at);
create index rate_starts_key_window on conveyor._rate_starts (scope, name, key, at) where key is not null;
-- no key of its own: prune's deletes carry the whole row (a FOR ALL TABLES publication needs it)
alter table conveyor._rate_starts replica identity full;

-- (0.2.0) Claim hints. A snapshot held open (a long report, a transaction left idle) keeps
-- vacuum from removing the runs_claimable entries of the runs claimed since it began, and no
-- index scan may skip them: every claim would walk all of them from the head of its queue.
-- While one is 1,000 transactions old, each tick (step hint) publishes each queue's first claimable
-- key, found by one such walk, and claims start their index scan there. Insert
-- only (claims read the newest row of their queue, its older and dead rows lie behind it),
-- unlogged (a hint lost in a crash only costs a walk), pruned after a minute.
create unlogged table conveyor._claim_hints (
    queue text not null,
    made_at timestamptz not null,
    -- the key claims start at (runs_claimable's order after the queue)
    priority smallint not null,
    fair_rank bigint not null,
    run_at timestamptz not null,
    id conveyor.ulid not null
);
comment on table conveyor._claim_hints is 'where claims of each queue start reading while an old snapshot holds vacuum back (written by tick step hint)';
create index claim_hints_newest on conveyor._claim_hints (queue, made_at desc);
-- a run's place in its queue's claim order (runs_claimable's columns after the queue)
create type conveyor._claim_key as (priority smallint, fair_rank bigint, run_at timestamptz, id conveyor.ulid);

-- a run a claim under rate or key limits has locked and may take (claim_runs)
create type conveyor._candidate as (
    id conveyor.ulid,
    task text,
    priority smallint,
    run_at timestamptz,
    queue text,
    concurrency_key text,
    fair_rank bigint
);

-- pg_dump keeps the data of these tables (the extension's own rows are recreated by it)

select pg_catalog.pg_extension_config_dump('conveyor._defaults', '');

select pg_catalog.pg_extension_config_dump('conveyor.queues', '');

select pg_catalog.pg_extension_config_dump('conveyor.tasks', '');

select pg_catalog.pg_extension_config_dump('conveyor.runs', '');

select pg_catalog.pg_extension_config_dump('conveyor.attempts', '');

select pg_catalog.pg_extension_config_dump('conveyor.attempt_logs', '');

select pg_catalog.pg_extension_config_dump('conveyor.attempt_logs_id_seq', '');

select pg_catalog.pg_extension_config_dump('conveyor.events', '');

select pg_catalog.pg_extension_config_dump('conveyor.events_id_seq', '');

select pg_catalog.pg_extension_config_dump('conveyor.outbox', '');

-- (0.2.0) restored elsewhere, the bound sessions are gone: the first tick rescues their runs
select pg_catalog.pg_extension_config_dump('conveyor.sessions', '');

-- (0.2.0) the counters go on from their totals after a restore
select pg_catalog.pg_extension_config_dump('conveyor._counter_deltas', '');

select pg_catalog.pg_extension_config_dump('conveyor._counters', '');

select pg_catalog.pg_extension_config_dump('conveyor._rate_limits', '');

-- (0.2.0) a restore keeps the windows of the rate limits
select pg_catalog.pg_extension_config_dump('conveyor._rate_starts', '');
