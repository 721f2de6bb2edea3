-- sql/migrations/0.1.0--0.2.0.sql: the schema changes from 0.1.0 to 0.2.0, hand-written, each
-- with why. scripts/upgrade-script.sh appends every file of sql/functions/ (re-applied whole) to
-- make sql/pg_conveyor--0.1.0--0.2.0.sql; `make upgrade-check` proves the result equals a fresh
-- 0.2.0 install. Keep each change here identical to its sql/schema/ counterpart.

-- The state machine's data (sql/schema/state_machine.sql): each status set and each outcome's
-- rule becomes a row, written once; the helpers _finished, _live, _waiting, _delivered,
-- _is_failure and _outcome_status are generated from these rows (sql/functions/state_machine.sql).
-- run_statuses: each status with the named sets it belongs to. The helpers _finished, _waiting,
-- _delivered and _live (sql/functions/state_machine.sql) are generated from these rows, so a
-- status set is written down once, here.
create table conveyor.run_statuses (
    status conveyor.run_status primary key,
    -- terminal: finished_at is set; retention prunes it; only retry_run moves it again
    finished boolean not null,
    -- waiting for its due time (or for capacity): tick delivers it
    waiting boolean not null,
    -- counted by a bounded queue's concurrency and a capped task's parallelism
    delivered boolean not null,
    meaning text not null
);
comment on table conveyor.run_statuses is 'each run status and the sets it belongs to (finished, waiting, delivered)';

insert into conveyor.run_statuses (status, finished, waiting, delivered, meaning) values
    ('scheduled', false, true,  false, 'waiting for run_at or for queue capacity'),
    ('queued',    false, false, true,  'claimable now'),
    ('running',   false, false, true,  'claimed under a lease'),
    ('succeeded', true,  false, false, 'the work was done'),
    ('retrying',  false, true,  false, 'waiting to retry after a retryable failure'),
    ('failed',    true,  false, false, 'the retry budget is spent or the failure was not retryable'),
    ('released',  false, true,  false, 'waiting after release_run: business waiting, not a failure'),
    ('cancelled', true,  false, false, 'cancelled by an operator, or its attempt ended after a cancel request'),
    ('skipped',   true,  false, false, 'a cron firing skipped while an earlier one was in flight');

-- attempt_outcomes: how an attempt can end, whether that is a failure (counted against the
-- retry budget, shown as failure pressure) and the status it leads to. A failure leads to
-- retrying while the budget lasts and the failure is retryable, else to failed (leads_to is
-- null for them: _end_attempts decides by the budget). _is_failure and _outcome_status are
-- generated from these rows.
create table conveyor.attempt_outcomes (
    outcome conveyor.attempt_outcome primary key,
    failure boolean not null,
    leads_to conveyor.run_status,
    meaning text not null,
    constraint attempt_outcomes_failures_follow_the_budget check (failure = (leads_to is null))
);
comment on table conveyor.attempt_outcomes is 'each attempt outcome: whether it is a failure and the run status it leads to';

insert into conveyor.attempt_outcomes (outcome, failure, leads_to, meaning) values
    ('succeeded',    false, 'succeeded', 'complete_run'),
    ('failed',       true,  null,        'fail_run, or malformed worker input (configuration_invalid)'),
    ('timeout',      true,  null,        'the attempt ran past the task''s timeout (tick)'),
    ('crashed',      true,  null,        'the lease expired without a heartbeat, or the session bound to the run ended: the worker is presumed dead (tick)'),
    ('log_overflow', true,  null,        'the log outgrew log_max_size with log_on_full = kill_task'),
    ('released',     false, 'released',  'release_run: business waiting'),
    ('stopped',      false, 'cancelled', 'the attempt ended after a cancel request'),
    ('interrupted',  false, 'queued',    'return_run: the worker gave the run back unfinished');

-- define_task and define_service take durations as text, validated with the other options by
-- _check_options: define_task(delay => 'x') used to fail with 22023 in the duration type's input
-- while options => '{"delay": "x"}' failed with CV010; both are CV010 now. A changed signature
-- is dropped by its exact old signature; sql/functions/options.sql creates the new one and
-- sql/functions/roles.sql grants it again.
drop function conveyor.define_task(text, text, integer, integer, text, conveyor.duration, conveyor.duration, text,
                                   conveyor.duration, integer, text, text, text, integer, jsonb);
drop function conveyor.define_service(text, integer, text, conveyor.duration, text, conveyor.duration, jsonb, jsonb);

-- Maintenance that no client can freeze (issue 13). runs_due: deliver walks the due runs by due
-- time, whatever their queue, so its cost follows the due rows, not the number of queues.
-- _tick_stats: tick's own counters and deliver's cursor, written only by tick. quarantine and
-- the event run.quarantined: a row that fails alone is set aside while the step goes on.
-- tick delivery: every due waiting run by due time, whatever its queue (the oldest first, so a
-- step's cost follows the due rows, not the number of queues)
create index runs_due on conveyor.runs (run_at) where status in ('scheduled', 'retrying', 'released');

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

alter type conveyor.event_type add value 'run.quarantined';

-- One rule for every duration (issue 13, finding 6): the cast from interval to
-- conveyor.duration was binary, so an interval argument (enqueue(delay => interval '...'))
-- bypassed the 0-to-100-years check that text input gets; it checks now.
drop cast (interval as conveyor.duration);
create function conveyor.duration_from_interval(interval) returns conveyor.duration
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_from_interval_wrapper';
create cast (interval as conveyor.duration) with function conveyor.duration_from_interval(interval) as implicit;

-- tick() reports the new step `repair` (capacity counters recounted from the runs, issue 13,
-- finding 1): a new OUT column changes its result type, so the old one is dropped first.
drop function conveyor.tick();

-- The repair step recounts a capped task's delivered runs; without an index that count read
-- the whole table (a seq scan of 300k kept runs: 11 ms every tick).
-- tick repair: a capped task's delivered runs (queued or running), counted without scanning
-- the table (a bounded queue's are counted through runs_claimable and runs_running_deadline)
-- (and, by task and queue, whether a rate-limited task has queued runs in the queues of a claim)
create index runs_delivered_by_task on conveyor.runs (task, status, queue) where status in ('queued', 'running');

-- Rescue on backend death (issue 16): a claim may bind its runs to the claiming session
-- (bind_session: a claim argument, else the task's, the queue's, the defaults' option; false
-- built in). The expire step ends the running attempts of a bound session that is gone as
-- crashed, without waiting for the lease. Columns are appended, as a fresh install has them.
alter table conveyor._defaults add column bind_session boolean;
alter table conveyor.queues add column bind_session boolean;
alter table conveyor.tasks add column bind_session boolean;
alter table conveyor.runs add column session_pid integer, add column session_started_at timestamptz;

-- tick expiry: the running runs bound to each session (conveyor.sessions)
create index runs_bound_session on conveyor.runs (session_pid, session_started_at)
    where status = 'running' and session_pid is not null;

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
-- restored elsewhere, the bound sessions are gone: the first tick rescues their runs
select pg_catalog.pg_extension_config_dump('conveyor.sessions', '');

-- claim_runs, claim_run and set_queue take a bind_session argument: the old signatures go
-- (sql/functions/ creates the new ones, roles.sql grants them).
drop function conveyor.claim_run(text, text, conveyor.duration, text[]);
drop function conveyor.claim_runs(text, text, integer, conveyor.duration, text[]);
drop function conveyor.set_queue(text, integer, boolean, boolean, boolean);

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
-- the counters go on from their totals after a restore
select pg_catalog.pg_extension_config_dump('conveyor._counter_deltas', '');
select pg_catalog.pg_extension_config_dump('conveyor._counters', '');

-- conveyor.duration's binary input was interval_recv, which let a binary driver send what text
-- input refuses (a negative duration, 1000 years, months); it is held to the same rule now.
create or replace function conveyor.duration_recv(internal) returns conveyor.duration
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_recv_wrapper';

-- Deduplication policies (issue 15): on an idempotency key that matches a live run, return it
-- (as before), reject (CV009) or replace its payload; unique_for keeps a finished run's key
-- deduplicating; debounce pushes a scheduled keyed run's start back, at most debounce_max.
alter table conveyor.tasks add column on_duplicate text, add column unique_for interval,
    add column debounce interval, add column debounce_max interval;
-- unique_for: the finished runs of a key, newest first (only keyed runs, once finished)
create index runs_finished_by_key on conveyor.runs (task, idempotency_key, finished_at)
    where idempotency_key is not null and finished_at is not null;

-- Rate limits per queue and per task (issue 15): at most N runs started in any window of the
-- period. Columns appended, as a fresh install has them.
alter table conveyor.queues add column rate_limit_n integer, add column rate_limit_period interval;
alter table conveyor.tasks add column rate_limit_n integer, add column rate_limit_period interval;
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

select pg_catalog.pg_extension_config_dump('conveyor._rate_limits', '');
-- a restore keeps the windows of the rate limits
select pg_catalog.pg_extension_config_dump('conveyor._rate_starts', '');


-- Concurrency keys and fairness (issue 15): enqueue's key names a run's concurrency key (a
-- tenant, an account); key_concurrency caps a key's running runs per queue or task and
-- key_rate_limit its starts. The keys of a queue take turns: fair_rank is each run's turn,
-- set as it becomes queued (_fair_rank, a row trigger only for keyed runs), and the claim
-- order puts it after priority. A run without a key keeps 0, so a queue without keys is claimed
-- in the order it was. Columns appended, as a fresh install has them.
alter table conveyor.runs add column concurrency_key text, add column fair_rank bigint not null default 0,
    add column queue_key_shard smallint, add column task_key_shard smallint;
alter table conveyor.queues add column key_concurrency integer, add column key_rate_limit_n integer,
    add column key_rate_limit_period interval;
alter table conveyor.tasks add column key_concurrency integer, add column key_rate_limit_n integer,
    add column key_rate_limit_period interval;
-- the claim order gains the turn: the index is rebuilt (it holds only queued runs)
drop index conveyor.runs_claimable;
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
-- enqueue and enqueue_many take key and keys: the old signatures are dropped (the new are
-- created by sql/functions/enqueue.sql and granted by sql/functions/roles.sql)
drop function conveyor.enqueue(text, jsonb, timestamptz, conveyor.duration, integer, text, text, conveyor.ulid);
drop function conveyor.enqueue_many(text, jsonb[], timestamptz, conveyor.duration, integer, text, text[], conveyor.ulid);
drop function conveyor._enqueue(text, jsonb[], timestamptz, interval, integer, text, text[], conveyor.ulid);

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
