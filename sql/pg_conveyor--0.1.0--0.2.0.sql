-- pg_conveyor 0.1.0 -> 0.2.0: ALTER EXTENSION pg_conveyor UPDATE runs this file.
-- Written by scripts/upgrade-script.sh from sql/migrations/0.1.0--0.2.0.sql and sql/functions/*.sql: edit those,
-- then run `make upgrade-script`; `make lint` and `make test` fail while this file is stale.
\echo Use "ALTER EXTENSION pg_conveyor UPDATE" to load this file. \quit

-- First, before any table is touched: wait for the background worker's tick step in progress,
-- and hold its next one until this update commits (src/version.rs, UPGRADE_LOCK); a step and
-- the update then never wait for each other's locks.
select pg_catalog.pg_advisory_xact_lock(1885823862, 1);

-- ============================================================================================
-- sql/migrations/0.1.0--0.2.0.sql

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

-- ============================================================================================
-- sql/functions/rust.sql

-- functions/rust.sql: the SQL declarations of the Rust functions in src/ (marked `sql = false`
-- there, so that their SQL types, e.g. conveyor.ulid rather than uuid, are ours to state).
-- Their C symbols keep their 0.1.0 behaviour: a database not yet updated runs 0.1.0's SQL
-- over the new library (docs/upgrading.md).

-- ulid_generate: a new ULID, increasing within a backend even inside one millisecond.
create or replace function conveyor.ulid_generate() returns conveyor.ulid
    volatile parallel safe language c as 'MODULE_PATHNAME', 'ulid_generate_wrapper';

comment on function conveyor.ulid_generate() is 'a new ULID (time-ordered; increasing within a session)';

-- ulid_partition: the logical partition (0-1023) a ULID was made in: the conveyor.partition of
-- the database that made it (docs/scale-out.md); a router sends calls about a run to its shard.
create or replace function conveyor.ulid_partition(conveyor.ulid) returns integer
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_partition_wrapper';

comment on function conveyor.ulid_partition(conveyor.ulid) is 'the logical partition (conveyor.partition of the database that made it) a ULID carries';

-- ulid_timestamp: the creation time encoded in a ULID.
create or replace function conveyor.ulid_timestamp(conveyor.ulid) returns timestamptz
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_timestamp_wrapper';

comment on function conveyor.ulid_timestamp(conveyor.ulid) is 'the millisecond timestamp a ULID carries';

-- _ulid_or_null: text to ULID, NULL when it is not one (batch input from JSON).
create or replace function conveyor._ulid_or_null(text) returns conveyor.ulid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_ulid_or_null_wrapper';

-- _uuid_or_null: text to uuid, NULL when it is not one (lease tokens from JSON).
create or replace function conveyor._uuid_or_null(text) returns uuid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_uuid_or_null_wrapper';

-- _duration_or_null: text to interval, NULL when it is not a duration (worker input).
create or replace function conveyor._duration_or_null(text) returns interval
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_duration_or_null_wrapper';

-- _duration_text: an interval in duration notation (1m 30s), for events and views.
create or replace function conveyor._duration_text(interval) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_duration_text_wrapper';

-- time, policy arithmetic, schedules, config validation (pure Rust)

-- _now: the transaction time, or conveyor.test_clock when a superuser set it.
create or replace function conveyor._now() returns timestamptz
    stable parallel safe language c as 'MODULE_PATHNAME', '_now_wrapper';

comment on function conveyor._now() is
    'the current time for every conveyor comparison: now(), or the superuser-only setting conveyor.test_clock';

-- _backoff_delay: the delay before retry n under a policy (jitter applied).
create or replace function conveyor._backoff_delay(
    backoff text, base interval, max_delay interval, custom interval[], jitter text, n integer
) returns interval
    volatile parallel safe language c as 'MODULE_PATHNAME', '_backoff_delay_wrapper';

-- _cron_next: the next firing of a schedule strictly after a time (NULL: never again).
create or replace function conveyor._cron_next(expr text, tz text, after timestamptz) returns timestamptz
    immutable parallel safe language c as 'MODULE_PATHNAME', '_cron_next_wrapper';

-- _check_options: validate one entry's options: {"options": normalized} or {"problems": [...]}.
create or replace function conveyor._check_options(kind text, name text, options jsonb) returns jsonb
    immutable parallel safe language c as 'MODULE_PATHNAME', '_check_options_wrapper';

-- _check_name: NULL when a task/queue name is acceptable, else what is wrong with it.
create or replace function conveyor._check_name(kind text, name text) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_check_name_wrapper';

-- _clean / _clean_json: worker text (or every string of a JSON value) without control
-- characters but tab and newline, and without Unicode bidirectional controls (src/text.rs).
create or replace function conveyor._clean(text) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_clean_wrapper';
create or replace function conveyor._clean_json(jsonb) returns jsonb
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_clean_json_wrapper';

-- _option_registry: every task, service, queue and defaults option (src/config.rs), as JSON.
create or replace function conveyor._option_registry() returns jsonb
    immutable parallel safe language c as 'MODULE_PATHNAME', '_option_registry_wrapper';

-- _library_version: the version of the loaded library (the schema's is pg_extension.extversion).
create or replace function conveyor._library_version() returns text
    immutable parallel safe language c as 'MODULE_PATHNAME', '_library_version_wrapper';

-- _session_started_at: this backend's start (pg_stat_activity.backend_start): with the pid, the
-- identity of a session that claims bound runs (src/session.rs).
create or replace function conveyor._session_started_at() returns timestamptz
    stable parallel restricted language c as 'MODULE_PATHNAME', '_session_started_at_wrapper';

-- _in_background_worker: true in pg_conveyor's tick worker, false in a client's session or any
-- other process (src/session.rs): tick keeps the two apart in conveyor._tick_stats.
create or replace function conveyor._in_background_worker() returns boolean
    stable parallel restricted language c as 'MODULE_PATHNAME', '_in_background_worker_wrapper';

-- The lock of a shard of a key limit, which _key_gates and _key_more take for the transaction
-- when no other transaction holds it (never waiting; src/admit.rs): the advisory lock ('pgck',
-- the hashtext of the shard's name, _key_ref(scope, name, key) || E'\x1f' || shard). Two shards
-- of one hash share a lock, so a claim of one may pass the other over while it runs, and never
-- admits more than a limit.

-- _key_gates: the keys under a key limit among a claim's candidates (queue, task and key as
-- parallel arrays) and the shard each takes (src/admit.rs): one whose candidates a shard's share
-- covers takes the first shard from its start (by key and session) whose lock it takes
-- (above); one with more candidates takes none here (claim_runs then takes the shards with room
-- it needs). With each key's number of candidates and start shard.
create or replace function conveyor._key_gates(
    queues text[], tasks text[], keys text[],
    limit_scopes text[], limit_names text[], limit_conc integer[], limit_rate integer[], limit_shards integer[],
    pid integer)
returns table (scope text, name text, key text, shard smallint, want integer, start smallint)
    volatile strict rows 50 language c as 'MODULE_PATHNAME', '_key_gates_wrapper';

-- _key_more: of the further shards of keys short of room (scope, name, key, shard, in the order
-- to try them, with each shard's room as committed and what its key still misses), those taken
-- (src/admit.rs): in turn, each whose lock it takes, until the rooms taken cover
-- what the key misses.
create or replace function conveyor._key_more(
    scopes text[], names text[], keys text[], shards smallint[], rooms bigint[], missing bigint[])
returns table (scope text, name text, key text, shard smallint)
    volatile strict language c as 'MODULE_PATHNAME', '_key_more_wrapper';

-- _key_rooms: the room of each key under each shard of a key limit a claim holds (src/admit.rs),
-- from the keys' running runs and starts of the rate window per shard as _key_room counts them.
create or replace function conveyor._key_rooms(
    gate_scopes text[], gate_names text[], gate_keys text[], gate_shards smallint[],
    limit_scopes text[], limit_names text[], limit_conc integer[], limit_rate integer[], limit_shards integer[],
    use_scopes text[], use_names text[], use_keys text[], use_shards smallint[], use_n bigint[],
    start_scopes text[], start_names text[], start_keys text[], start_shards smallint[], start_n bigint[],
    want integer)
returns integer[]
    immutable parallel safe language c as 'MODULE_PATHNAME', '_key_rooms_wrapper';

-- _key_pick: which of a claim's candidates start under key limits and task rate-limit caps
-- (src/admit.rs): the ids of those chosen in claim order, with the shard of the queue's and
-- the task's key limit each starts under. The candidates come as parallel arrays.
create or replace function conveyor._key_pick(
    ids uuid[], tasks text[], queues text[], keys text[], priorities smallint[], fair_ranks bigint[],
    run_ats timestamptz[], gate_scopes text[], gate_names text[], gate_keys text[], gate_shards smallint[],
    gate_rooms integer[], cap_tasks text[], task_caps integer[], want integer)
returns table (id conveyor.ulid, queue_shard smallint, task_shard smallint)
    immutable parallel safe rows 50 language c as 'MODULE_PATHNAME', '_key_pick_wrapper';

-- ============================================================================================
-- sql/functions/errors.sql

-- functions/errors.sql: every SQLSTATE pg_conveyor raises, defined once. conveyor.error_codes
-- lists them (the README's error table is checked against it by a test); each CV code and the
-- generic invalid-argument code has one raise helper here, and no other function writes an
-- errcode of its own (pgrx-tests/sql/error_codes.sql checks that). Rust raises 22023 (bad
-- duration or schedule) and 22P02 (bad ULID) from src/error.rs, which maps to these rows;
-- PostgreSQL itself raises 42501 for a role calling a function it is not granted.

create or replace view conveyor.error_codes (sqlstate, name, meaning) as
values
    ('CV001', 'stale_lease', 'stale lease: the token does not match the run''s current attempt (expired and reclaimed, or finished); nothing changed'),
    ('CV002', 'unknown_run', 'unknown run'),
    ('CV003', 'unknown_task', 'unknown task or service'),
    ('CV004', 'transition_not_allowed', 'a status change that conveyor.transitions does not allow'),
    ('CV005', 'retry_refused', 'retry_run refused (and why)'),
    ('CV006', 'already_finished', 'cancel_run on a run that is already finished'),
    ('CV007', 'unknown_queue', 'unknown queue (producers do not create queues: an operator does)'),
    ('CV008', 'queue_in_use', 'drop_queue of a queue that tasks use or that holds unfinished runs'),
    ('CV009', 'duplicate_run', 'enqueue with an idempotency key that matches a run of the task, under on_duplicate = reject (nothing written)'),
    ('CV010', 'invalid_configuration', 'invalid configuration (every problem listed, nothing applied)'),
    ('CV011', 'shard_unavailable', 'pg_conveyor_router: a shard did not answer (nothing changed there); also the warning of a view, count or claim that lacks a shard'),
    ('CV012', 'cluster_misconfigured', 'pg_conveyor_router: conveyor.shards is not a whole cluster (numbers 0 to N-1, N a power of two) or a shard''s conveyor.partition disagrees'),
    ('22023', 'invalid_parameter_value', 'invalid argument: payload not an object, priority out of 0-9, run_at and delay both, bad duration, bad queue name or topic, a claim under a rate limit outside READ COMMITTED'),
    ('22P02', 'invalid_text_representation', 'text that is not a ULID (or a lease token that is not a UUID)'),
    ('42501', 'insufficient_privilege', 'a role calls a function it is not granted (raised by PostgreSQL; see SECURITY.md)');
comment on view conveyor.error_codes is 'every SQLSTATE pg_conveyor raises, with its name and meaning';

-- _raise_stale: the documented error for a finishing call whose lease no longer holds.
create or replace function conveyor._raise_stale(p_run_id conveyor.ulid, p_token uuid)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_status conveyor.run_status;
begin
    select r.status into v_status from conveyor.runs r where r.id = p_run_id;
    if not found then
        perform conveyor._raise_unknown_run(p_run_id);
    end if;
    raise exception using
        errcode = 'CV001',
        message = format('stale lease for run %s: the run is %s', p_run_id,
                         case when v_status = 'running' then 'running under another lease' else v_status::text end),
        detail = 'the lease expired and the run was reclaimed, or the run was finished; nothing was changed',
        hint = 'stop working on this run; its current attempt belongs to someone else or is over';
end
$$;

-- _raise_unknown_run: CV002, a run id that names no run (p_what: run, parent run).
create or replace function conveyor._raise_unknown_run(p_run_id conveyor.ulid, p_what text default 'run')
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV002', message = format('unknown %s %s', p_what, p_run_id);
end
$$;

-- _raise_unknown_task: CV003, a name that is no task (or service).
create or replace function conveyor._raise_unknown_task(p_name text, p_kind text default 'task', p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_hint is null then
        raise exception using errcode = 'CV003', message = format('unknown %s "%s"', p_kind, p_name);
    end if;
    raise exception using errcode = 'CV003', message = format('unknown %s "%s"', p_kind, p_name), hint = p_hint;
end
$$;

-- _raise_transition_refused: CV004, a status change conveyor.transitions does not allow (raised by the transition triggers).
create or replace function conveyor._raise_transition_refused(p_message text, p_hint text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV004', message = p_message, hint = p_hint;
end
$$;

-- _raise_retry_refused: CV005, retry_run refused, with the reason.
create or replace function conveyor._raise_retry_refused(p_reason text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV005', message = p_reason;
end
$$;

-- _raise_already_finished: CV006, cancel_run on a finished run.
create or replace function conveyor._raise_already_finished(p_run_id conveyor.ulid, p_status conveyor.run_status)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV006', message = format('run %s is already %s', p_run_id, p_status), hint = 'only scheduled, queued, retrying, released or running runs can be cancelled';
end
$$;

-- _raise_unknown_queue: CV007, a name that is no queue.
create or replace function conveyor._raise_unknown_queue(p_name text, p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_hint is null then
        raise exception using errcode = 'CV007', message = format('unknown queue "%s"', p_name);
    end if;
    raise exception using errcode = 'CV007', message = format('unknown queue "%s"', p_name), hint = p_hint;
end
$$;

-- _raise_queue_in_use: CV008, drop_queue of a queue still in use, and why.
create or replace function conveyor._raise_queue_in_use(p_name text, p_why text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV008', message = format('queue "%s" is in use: %s', p_name, p_why),
        hint = 'move its tasks to another queue and let its runs finish (or cancel them) first';
end
$$;

-- _raise_duplicate: CV009, an enqueue whose idempotency key matches a run of a task whose
-- on_duplicate is reject (p_run_id null: the key comes twice in the same call).
create or replace function conveyor._raise_duplicate(p_task text, p_key text, p_run_id conveyor.ulid, p_status conveyor.run_status)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV009',
        message = case when p_run_id is null
            then format('duplicate run: idempotency key "%s" comes more than once in this call for task "%s"', p_key, p_task)
            else format('duplicate run: task "%s" already has run %s (%s) for idempotency key "%s"',
                        p_task, p_run_id, p_status, p_key) end,
        hint = 'the task''s on_duplicate is reject (return gives back the existing run; replace updates its payload)';
end
$$;

-- _raise_config: refuse a configuration, listing every problem.
create or replace function conveyor._raise_config(problems text[])
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    raise exception using
        errcode = 'CV010',
        message = case cardinality(problems)
            when 1 then 'invalid configuration: ' || problems[1]
            else format('invalid configuration: %s problems: %s', cardinality(problems), array_to_string(problems, '; '))
        end,
        detail = array_to_string(problems, E'\n'),
        hint = 'nothing was changed';
end
$$;

-- _raise_invalid: 22023 (invalid_parameter_value), a bad argument; the message names the value and what is accepted.
create or replace function conveyor._raise_invalid(p_message text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = '22023', message = p_message;
end
$$;

-- _check_time: the rule every timestamp a caller gives follows (run_at, deliver_at): finite, and
-- within 100 years of now either way (a due time of -infinity or 1969 broke the lag figures of
-- every dashboard; infinity was accepted and never delivered). 22023 quoting it otherwise.
create or replace function conveyor._check_time(p_name text, p_value timestamptz, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_value is not null
       and (not isfinite(p_value) or p_value > p_now + interval '100 years' or p_value < p_now - interval '100 years') then
        perform conveyor._raise_invalid(format('invalid %s %s: expected a time within 100 years of now', p_name, p_value));
    end if;
end
$$;

-- ============================================================================================
-- sql/functions/state_machine.sql

-- functions/state_machine.sql: the code of the state machine whose data is
-- sql/schema/state_machine.sql (docs/state-machine.md explains both):
--   * the named status sets and outcome rules, generated from run_statuses and attempt_outcomes;
--   * the transition triggers, which check every status change of conveyor.runs, whoever makes
--     it, against conveyor.transitions and write its event and side effects;
--   * _end_attempts, the one place that decides what an attempt's outcome does to its run.
-- Every other file asks these helpers instead of writing a status list of its own.
--
-- The small SQL helpers are inlined into the statements that use them, views included, and an
-- inlined body is resolved under the *caller's* search_path: so every operator and function in
-- them is schema-qualified (operator(pg_catalog.=), pg_catalog.left, ...), and a reader's own
-- operator or function earlier in a superuser's search_path is never picked up (issue 13,
-- finding 8; pgrx-tests/sql/search_path_safety.sql).
--
-- Conventions of every function in sql/functions/: `create or replace` (every upgrade script
-- re-applies these files whole); PL/pgSQL (it keeps its plans; a SQL function that cannot be
-- inlined is parsed and planned again on every call), `set search_path = pg_catalog, conveyor,
-- pg_temp`, and `set plan_cache_mode = force_generic_plan` (the parameters are arrays and ids,
-- for which a custom plan is no better, and planning each call cost more than running the
-- statements: measured 0.18 ms -> 0.05 ms for _side_effects). Small SQL helpers have no SET
-- clause, so that the planner inlines them into the calling statement.

-- The status-set and outcome helpers, written from the rows of run_statuses and
-- attempt_outcomes (each set is stated once, in those rows). Each is a one-expression SQL
-- function that the planner inlines, so `where conveyor._live(r.status)` is the same expression
-- as a partial index's `status not in (...)` and uses that index:
--   _finished(status)  terminal: succeeded, failed, cancelled, skipped (finished_at is set)
--   _live(status)      not finished: waiting, queued or running
--   _waiting(status)   waiting for its due time: tick delivers it (scheduled, retrying, released)
--   _delivered(status) 1 while counted by queue concurrency and task parallelism (queued,
--                      running), else 0, also for a new run's missing from-status
--   _is_delivered(status) the same as a boolean (matches index runs_delivered_by_task)
--   _is_failure(outcome)      counted against the retry budget and shown as failure pressure
--   _outcome_status(outcome)  the status an outcome leads to; null for failures, which lead to
--                             retrying or failed by the budget (_end_attempts)
do $generate$
declare
    v_finished text;
    v_waiting text;
    v_delivered text;
    v_failures text;
    v_leads_to text;
begin
    select string_agg(quote_literal(s.status::text), ', ' order by s.status) filter (where s.finished),
           string_agg(quote_literal(s.status::text), ', ' order by s.status) filter (where s.waiting),
           string_agg(quote_literal(s.status::text), ', ' order by s.status) filter (where s.delivered)
    into v_finished, v_waiting, v_delivered
    from conveyor.run_statuses s;
    select string_agg(quote_literal(o.outcome::text), ', ' order by o.outcome) filter (where o.failure),
           string_agg(format('when outcome operator(pg_catalog.=) %L::conveyor.attempt_outcome then %L::conveyor.run_status',
                             o.outcome, o.leads_to), ' ' order by o.outcome)
               filter (where o.leads_to is not null)
    into v_failures, v_leads_to
    from conveyor.attempt_outcomes o;

    execute format($f$
        create or replace function conveyor._finished(status conveyor.run_status) returns boolean
        language sql immutable parallel safe
        as $body$ select status operator(pg_catalog.=) any (array[%s]::conveyor.run_status[]) $body$ $f$, v_finished);
    execute format($f$
        create or replace function conveyor._live(status conveyor.run_status) returns boolean
        language sql immutable parallel safe
        as $body$ select status operator(pg_catalog.<>) all (array[%s]::conveyor.run_status[]) $body$ $f$, v_finished);
    execute format($f$
        create or replace function conveyor._waiting(status conveyor.run_status) returns boolean
        language sql immutable parallel safe
        as $body$ select status operator(pg_catalog.=) any (array[%s]::conveyor.run_status[]) $body$ $f$, v_waiting);
    execute format($f$
        create or replace function conveyor._delivered(status conveyor.run_status) returns integer
        language sql immutable parallel safe
        as $body$ select coalesce((status operator(pg_catalog.=) any (array[%s]::conveyor.run_status[]))::int, 0) $body$ $f$,
        v_delivered);
    execute format($f$
        create or replace function conveyor._is_delivered(status conveyor.run_status) returns boolean
        language sql immutable parallel safe
        as $body$ select status operator(pg_catalog.=) any (array[%s]::conveyor.run_status[]) $body$ $f$, v_delivered);
    execute format($f$
        create or replace function conveyor._is_failure(outcome conveyor.attempt_outcome) returns boolean
        language sql immutable parallel safe
        as $body$ select outcome operator(pg_catalog.=) any (array[%s]::conveyor.attempt_outcome[]) $body$ $f$, v_failures);
    execute format($f$
        create or replace function conveyor._outcome_status(outcome conveyor.attempt_outcome)
        returns conveyor.run_status
        language sql immutable parallel safe
        as $body$ select case %s end $body$ $f$, v_leads_to);
end
$generate$;
comment on function conveyor._finished is 'whether a run status is terminal (generated from conveyor.run_statuses)';
comment on function conveyor._live is 'whether a run status is not terminal (generated from conveyor.run_statuses)';
comment on function conveyor._waiting is 'whether a run status waits for tick delivery (generated from conveyor.run_statuses)';
comment on function conveyor._is_delivered is 'whether a run status counts against queue concurrency and task parallelism (generated from conveyor.run_statuses)';
comment on function conveyor._delivered is '1 while a run status counts against queue concurrency and task parallelism (generated from conveyor.run_statuses)';
comment on function conveyor._is_failure is 'whether an attempt outcome is a failure (generated from conveyor.attempt_outcomes)';
comment on function conveyor._outcome_status is 'the run status an attempt outcome leads to; null for failures (generated from conveyor.attempt_outcomes)';

-- _allowed: whether conveyor.transitions lets a run go from one status to another (operators ask
-- it, e.g. which runs retry_run may requeue, instead of listing statuses of their own).
create or replace function conveyor._allowed(from_status conveyor.run_status, to_status conveyor.run_status)
returns boolean
language sql
stable
parallel safe
as $$
    select exists (select from conveyor.transitions t
                   where t.from_status operator(pg_catalog.=) _allowed.from_status
                     and t.to_status operator(pg_catalog.=) _allowed.to_status)
$$;

-- _event_data: the detail an event carries (most carry none). Stable like jsonb_build_object,
-- so the planner inlines it.
create or replace function conveyor._event_data(event conveyor.event_type, worker text, error_code text, delay interval)
returns jsonb
language sql
stable
parallel safe
as $$
    select case
        when event operator(pg_catalog.=) 'run.started'::conveyor.event_type
            then pg_catalog.jsonb_build_object('worker', worker)
        when event operator(pg_catalog.=) 'run.retry_scheduled'::conveyor.event_type
            then pg_catalog.jsonb_build_object('code', error_code, 'delay', conveyor._duration_text(delay))
        when event operator(pg_catalog.=) 'run.failed'::conveyor.event_type
            then pg_catalog.jsonb_build_object('code', error_code)
        when event operator(pg_catalog.=) 'run.released'::conveyor.event_type
            then pg_catalog.jsonb_build_object('delay', conveyor._duration_text(delay))
    end
$$;

-- _sanitize: worker text made safe to store and show (conveyor._clean: control characters but
-- tab and newline, and bidi controls, removed), at most 4000 characters.
-- (No SET clause on these two: they are inlined into the calling statement, which runs under
-- the caller's fixed search_path; a SET clause would make PostgreSQL parse and plan them anew on
-- every call.)
create or replace function conveyor._sanitize(message text)
returns text
language sql
immutable
parallel safe
as $$
    select pg_catalog.left(conveyor._clean(message), 4000)
$$;

-- _failure: a failure record {code, message, meta}, the worker's text cleaned (meta's strings too).
create or replace function conveyor._failure(code text, message text, meta jsonb default null)
returns jsonb
language sql
stable
parallel safe
as $$
    select pg_catalog.jsonb_build_object('code', code, 'message', coalesce(conveyor._sanitize(message), ''),
                                         'meta', coalesce(conveyor._clean_json(meta), '{}'::jsonb))
$$;

-- _free_capacity: how many of `want` runs may be delivered now into a queue for a task, with
-- the bounded queue's and capped task's rows locked (queue first, then task) until commit.
create or replace function conveyor._free_capacity(p_queue text, p_task text, p_want integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_queue_free integer;
    v_task_free integer;
begin
    select q.concurrency - q.delivered into v_queue_free
    from conveyor.queues q
    where q.name = p_queue and q.concurrency is not null
    for no key update;
    select t.parallelism - t.active into v_task_free
    from conveyor.tasks t
    where t.name = p_task and t.parallelism is not null
    for no key update;
    return greatest(0, least(p_want, coalesce(v_queue_free, p_want), coalesce(v_task_free, p_want)));
end
$$;

-- _side_effects: what some status changes entail beyond their event, in the same transaction:
-- the delivered counters of bounded queues and capped tasks (queue rows first, then task rows,
-- each in name order: the lock order of enqueue and tick, so concurrent batches cannot
-- deadlock), and for runs that became claimable, a wakeup on their queue's channel and a
-- delivery-outbox row where the queue asks for one.
create or replace function conveyor._side_effects(changes conveyor._transition[])
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- (called from _runs_updated, whose enable_nestloop = off prices the wakeup's lateral index
-- read, a nested loop by nature, past jit_above_cost: compiling it took 2 s a statement)
set jit = off
as $$
declare
    v_now timestamptz := conveyor._now();
    v_needs record;
begin
    -- which of the steps below have anything to do, in one look at the changes' queues and
    -- tasks: a step skipped costs nothing, while each statement run costs its executor start
    -- even when it changes nothing (measured: an enqueue of one run 600 -> 440 us)
    select coalesce(bool_or(q.concurrency is not null), false) as bounded, coalesce(bool_or(q.notify), false) as notify,
           coalesce(bool_or(q.delivery_outbox), false) as outbox,
           exists (select from conveyor.tasks t
                   where t.name = any(array(select c.task from unnest(changes) c)) and t.parallelism is not null) as capped
    into v_needs
    from conveyor.queues q
    where q.name = any(array(select c.queue from unnest(changes) c));

    if v_needs.bounded then
        with delta as (
            select c.queue as name,
                   sum(conveyor._delivered(c.to_status) - conveyor._delivered(c.from_status)) as n
            from unnest(changes) c
            group by c.queue
        ),
        locked as (
            select q.name from conveyor.queues q
            where q.name in (select d.name from delta d where d.n <> 0) and q.concurrency is not null
            order by q.name
            for no key update
        )
        update conveyor.queues q
        -- never below 0: a counter that drifted (see _repair_counters) must not fail a worker's call
        set delivered = greatest(q.delivered + d.n, 0)
        from delta d
        where q.name = d.name and q.name in (select l.name from locked l);
    end if;

    if v_needs.capped then
        with delta as (
            select c.task as name,
                   sum(conveyor._delivered(c.to_status) - conveyor._delivered(c.from_status)) as n
            from unnest(changes) c
            group by c.task
        ),
        locked as (
            select t.name from conveyor.tasks t
            where t.name in (select d.name from delta d where d.n <> 0) and t.parallelism is not null
            order by t.name
            for no key update
        )
        update conveyor.tasks t
        set active = greatest(t.active + d.n, 0)
        from delta d
        where t.name = d.name and t.name in (select l.name from locked l);
    end if;

    -- a wakeup only for a queue that had nothing claimable before this change: workers of a
    -- queue with claimable runs are busy and claim again before they wait (NOTIFY takes a
    -- global lock through the commit, so a busy queue that notified on every enqueue would
    -- serialize its producers' commits; measured: 2,200-2,800 vs 3,700-3,800 enqueues/s)
    -- (the queue had nothing claimable if it now holds no more claimable runs than this change
    -- added: a count that stops after n + 1 claimable runs, whatever the backlog; from the
    -- queue's claim hint on, as claims read, under an old snapshot: tick_hint.sql. In claim
    -- order, so that it reads runs_claimable from there: without the order, a plan made while
    -- the table was small, or one that takes queued rows to be spread evenly, read the table
    -- from its start, through every finished run and every dead row an old snapshot keeps:
    -- 214 blocks an enqueue, growing, against 14)
    if v_needs.notify then
        perform pg_notify('conveyor.' || q.name, '')
        from (select c.queue, count(*) as n from unnest(changes) c where c.to_status = 'queued' group by c.queue) added
        join conveyor.queues q on q.name = added.queue
        where q.notify
          and (select count(*) from conveyor._claim_floor(added.queue, v_now) f
               cross join lateral (select from conveyor.runs r
                                   where r.queue = added.queue and r.status = 'queued'
                                     and (r.priority, r.fair_rank, r.run_at, r.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                                   order by r.priority, r.fair_rank, r.run_at, r.id
                                   limit added.n + 1) claimable) <= added.n;
    end if;

    if v_needs.outbox then
        insert into conveyor.outbox (id, topic, payload, created_at, deliver_at)
        select conveyor.ulid_generate(), 'conveyor.delivery',
               jsonb_build_object('run_id', c.run_id::text, 'queue', c.queue, 'task', c.task), v_now, v_now
        from unnest(changes) c
        join conveyor.queues q on q.name = c.queue
        where c.to_status = 'queued' and q.delivery_outbox;
    end if;
end
$$;

-- _runs_inserted / _runs_updated: the statement-level triggers that check every status change
-- of conveyor.runs, whoever made it, against conveyor.transitions, and write one event per
-- change in the same statement; CV004 for a change that is not allowed undoes the whole
-- statement. Updates that leave the status alone (heartbeats, counters) change nothing here.
create or replace function conveyor._runs_inserted()
returns trigger
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
    v_bad text;
    v_side_effects boolean;
begin
    with change as (
        select n.id, n.status, n.queue, n.task, n.attempts, t.event
        from new_runs n
        left join conveyor.transitions t on t.from_status is null and t.to_status = n.status
    ),
    logged as (
        insert into conveyor.events (run_id, at, type, attempt, data)
        select c.id, v_now, c.event, c.attempts, null
        from change c
        where c.event is not null
    ),
    counted as (
        -- conveyor.counters: one delta row per queue and task, whatever the number of runs
        insert into conveyor._counter_deltas (queue, task, counter, n)
        select c.queue, c.task, 'enqueued', count(*)
        from change c
        group by c.queue, c.task
    )
    select min(format('run %s cannot go from (new) to %s', c.id, c.status)) filter (where c.event is null),
           bool_or(c.status = 'queued')
    into v_bad, v_side_effects
    from change c;
    if v_bad is not null then
        perform conveyor._raise_transition_refused(v_bad,
            'runs are inserted as scheduled, queued or skipped (the rows of conveyor.transitions with no from_status)');
    end if;
    if v_side_effects then
        perform conveyor._side_effects(array(
            select row(n.id, null, n.status, n.queue, n.task)::conveyor._transition from new_runs n));
    end if;
    return null;
end
$$;

-- (_runs_updated joins the old and new transition tables. Its plans are generic, made for
-- whatever size the first statement had: a nested loop made for one row took 105 ms for
-- 1,000 and grows with the square. Without nested loops it hashes, at every size.)
create or replace function conveyor._runs_updated()
returns trigger
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
set enable_nestloop = off
as $$
declare
    v_now timestamptz := conveyor._now();
    v_bad text;
    v_side_effects boolean;
begin
    with change as (
        select n.id, o.status as from_status, n.status as to_status, n.queue, n.task, n.attempts, n.worker,
               n.error ->> 'code' as error_code, n.last_delay, t.event
        from old_runs o
        join new_runs n on n.id = o.id
        left join conveyor.transitions t on t.from_status = o.status and t.to_status = n.status
        where n.status <> o.status
    ),
    logged as (
        insert into conveyor.events (run_id, at, type, attempt, data)
        select c.id, v_now, c.event, c.attempts + (c.event = 'run.started')::int,
               conveyor._event_data(c.event, c.worker, c.error_code, c.last_delay)
        from change c
        where c.event is not null
    ),
    summary as (
        select min(format('run %s cannot go from %s to %s', c.id, c.from_status, c.to_status))
                   filter (where c.event is null) as bad,
               bool_or(c.to_status = 'queued') as wakes,
               -- queues and tasks whose delivered counter this changes (into or out of queued/running)
               array_agg(distinct c.queue) filter (where conveyor._delivered(c.from_status)
                                                         <> conveyor._delivered(c.to_status)) as queues,
               array_agg(distinct c.task) filter (where conveyor._delivered(c.from_status)
                                                        <> conveyor._delivered(c.to_status)) as tasks
        from change c
    )
    select s.bad,
           s.wakes
           or exists (select from conveyor.queues q where q.name = any(s.queues) and q.concurrency is not null)
           or exists (select from conveyor.tasks t where t.name = any(s.tasks) and t.parallelism is not null)
    into v_bad, v_side_effects
    from summary s;
    if v_bad is not null then
        perform conveyor._raise_transition_refused(v_bad,
            'allowed changes are the rows of conveyor.transitions; change runs through the conveyor functions');
    end if;
    if v_side_effects then
        perform conveyor._side_effects(array(
            select row(n.id, o.status, n.status, n.queue, n.task)::conveyor._transition
            from old_runs o join new_runs n on n.id = o.id
            where n.status <> o.status));
    end if;
    return null;
end
$$;

create or replace trigger runs_transitions_on_insert
    after insert on conveyor.runs
    referencing new table as new_runs
    for each statement execute function conveyor._runs_inserted();

create or replace trigger runs_transitions_on_update
    after update on conveyor.runs
    referencing old table as old_runs new table as new_runs
    for each statement execute function conveyor._runs_updated();

-- _end_attempts: end the current attempt of each given running run, in one statement. The
-- guard: the run is running and its lease token (worker) or attempt id (tick) still matches;
-- runs that fail it are left alone and not returned. Per outcome (docs/counters.md):
--   succeeded -> succeeded; released -> released (run_at = now + delay); interrupted -> queued;
--   stopped -> cancelled; failed/timeout/crashed/log_overflow -> retrying while retryable and
--   n = failures - failure_base (after this one) < max_attempts, with the backoff delay for
--   retry n, else failed. Any outcome but succeeded on a run with a cancel request is stopped.
-- Writes one attempt row per run, and its counter deltas (conveyor.counters). Returns (ord,
-- run_id, status, outcome, delay) per ended run, ord being the position in `endings` of the item
-- that ended it.
create or replace function conveyor._end_attempts(endings conveyor._ending[], all_succeeded boolean default false)
returns table (ord integer, run_id conveyor.ulid, status conveyor.run_status,
               outcome conveyor.attempt_outcome, delay interval)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
begin
    if all_succeeded then
        -- the common case, in a lean statement: every ending is a success (complete_run, or a
        -- finish_runs batch of successes). A success needs no policy: attempts+1, the result,
        -- finished; a cancel request does not change it (the work was done). Same guard, same
        -- attempt row as the general statement below.
        return query
        with input as (
            -- no de-duplication before the guard: an item that fails it (a forged token beside the
            -- real one) must not displace the one that holds; the UPDATE changes each run once
            select e.*, e.n::integer as ord
            from unnest(endings) with ordinality
                 as e(run_id, lease_token, attempt_id, outcome, error, retryable, result, release_delay, reason, n)
        ),
        updated as (
            update conveyor.runs r
            set status = 'succeeded',
                attempts = r.attempts + 1,
                result = i.result,
                -- never before the start: the claim may have committed after this transaction began
                finished_at = greatest(v_now, r.started_at),
                lease_token = null,
                lease_expires_at = null,
                timeout_at = null
            from input i
            where r.id = i.run_id
              and r.lease_token is not null
              and (i.lease_token is null or r.lease_token = i.lease_token)
              and (i.attempt_id is null or r.attempt_id = i.attempt_id)
              and (i.lease_token is not null or i.attempt_id is not null)
            returning i.ord, r.id, r.attempt_id, r.attempts, r.prev_attempt_id, r.task, r.queue, r.worker, r.started_at
        ),
        recorded as (
            insert into conveyor.attempts (id, run_id, attempt, retry_of, task, queue, worker, started_at,
                                           finished_at, outcome)
            select u.attempt_id, u.id, u.attempts, u.prev_attempt_id, u.task, u.queue, u.worker, u.started_at,
                   greatest(v_now, u.started_at), 'succeeded'
            from updated u
        ),
        counted as (
            -- conveyor.counters, as in the general statement below
            insert into conveyor._counter_deltas (queue, task, counter, n)
            select u.queue, u.task, 'attempt.succeeded', count(*)
            from updated u
            group by u.queue, u.task
        )
        select u.ord, u.id, 'succeeded'::conveyor.run_status, 'succeeded'::conveyor.attempt_outcome, null::interval
        from updated u order by u.ord;
        return;
    end if;

    return query
    with input as (
        -- a batch naming a run twice ends it once: the guard below keeps only items that hold the
        -- attempt, and the UPDATE changes each run once (an item that fails the guard, such as a
        -- forged token beside the real one, never displaces the one that holds)
        select e.*, e.n::integer as ord
        from unnest(endings) with ordinality
             as e(run_id, lease_token, attempt_id, outcome, error, retryable, result, release_delay, reason, n)
    ),
    locked as (
        -- lock in id order so concurrent batches (workers, tick) cannot deadlock
        select r.id, r.task, r.queue, r.failures, r.failure_base, r.attempts, r.cancel_requested_at,
               r.attempt_id as current_attempt, r.prev_attempt_id, r.worker, r.started_at,
               i.ord, i.outcome as asked, i.error, i.retryable, i.result, i.release_delay, i.reason
        from input i
        join conveyor.runs r on r.id = i.run_id
        -- a lease token is held exactly while running (runs_lease_iff_running); testing it rather
        -- than status keeps the planner on the primary key instead of scanning all running runs
        where r.lease_token is not null
          and (i.lease_token is null or r.lease_token = i.lease_token)
          and (i.attempt_id is null or r.attempt_id = i.attempt_id)
          and (i.lease_token is not null or i.attempt_id is not null)
        order by r.id
        for no key update of r
    ),
    decided as (
        select l.*, c.kind, c.max_attempts, c.backoff, c.delay as base, c.max_delay, c.backoff_custom, c.jitter,
               case when l.cancel_requested_at is not null and l.asked <> 'succeeded' then 'stopped'::conveyor.attempt_outcome
                    else l.asked end as final,
               l.failures + 1 - l.failure_base as n
        from locked l
        join conveyor.task_config c on c.name = l.task
    ),
    fate as (
        select d.*,
               conveyor._is_failure(d.final) as is_failure,
               case
                   when not conveyor._is_failure(d.final) then conveyor._outcome_status(d.final)
                   when coalesce(d.retryable, true) and d.kind = 'task' and d.n < d.max_attempts then 'retrying'
                   else 'failed'
               end::conveyor.run_status as new_status
        from decided d
    ),
    timed as (
        select f.*,
               case f.new_status
                   when 'retrying' then conveyor._backoff_delay(f.backoff, f.base, f.max_delay, f.backoff_custom, f.jitter, f.n)
                   when 'released' then f.release_delay
               end as wait,
               case
                   when f.final = 'stopped' then conveyor._failure('stopped', 'cancelled while running',
                                                                   case when f.error is not null then jsonb_build_object('error', f.error) end)
                   when f.is_failure then f.error
               end as failure
        from fate f
    ),
    updated as (
        update conveyor.runs r
        set status = t.new_status,
            attempts = r.attempts + 1,
            failures = r.failures + t.is_failure::integer,
            retries = r.retries + (t.new_status = 'retrying')::integer,
            releases = r.releases + (t.new_status = 'released')::integer,
            run_at = case when t.wait is not null then v_now + t.wait else r.run_at end,
            last_delay = coalesce(t.wait, r.last_delay),
            error = coalesce(t.failure, r.error),
            result = case when t.new_status = 'succeeded' then t.result else r.result end,
            finished_at = case when conveyor._finished(t.new_status) then greatest(v_now, r.started_at) end,
            lease_token = null,
            lease_expires_at = null,
            timeout_at = null
        from timed t
        where r.id = t.id
        returning t.*
    ),
    recorded as (
        insert into conveyor.attempts (id, run_id, attempt, retry_of, task, queue, worker, started_at,
                                       finished_at, outcome, error, reason, delay)
        select u.current_attempt, u.id, u.attempts + 1, u.prev_attempt_id, u.task, u.queue, u.worker,
               u.started_at, greatest(v_now, u.started_at), u.final, u.failure, u.reason, u.wait
        from updated u
    ),
    counted as (
        -- conveyor.counters: attempts by outcome and retries, one delta row per queue, task and
        -- counter this statement changed (never an update of a shared row)
        insert into conveyor._counter_deltas (queue, task, counter, n)
        select u.queue, u.task, c.counter, count(*)
        from updated u
        cross join lateral (values ('attempt.' || u.final),
                                   (case when u.new_status = 'retrying' then 'retried' end)) as c(counter)
        where c.counter is not null
        group by u.queue, u.task, c.counter
    )
    select u.ord, u.id, u.new_status, u.final, u.wait from updated u order by u.ord;
end
$$;

-- _end_one: end one attempt for a worker, raising the stale-lease error when the guard fails.
create or replace function conveyor._end_one(p_ending conveyor._ending, p_succeeded boolean default false)
returns conveyor.run_status
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_status conveyor.run_status;
begin
    select e.status into v_status from conveyor._end_attempts(array[p_ending], p_succeeded) e;
    if v_status is null then
        perform conveyor._raise_stale(p_ending.run_id, p_ending.lease_token);
    end if;
    return v_status;
end
$$;

-- ============================================================================================
-- sql/functions/options.sql

-- functions/options.sql: tasks, services, queues and defaults. Each option is defined once, in
-- src/config.rs (name, kinds that accept it, value type, built-in default; conveyor.options lists
-- them); validation is there too (_check_options): what is stored here has passed it whole, or
-- nothing is stored. The defaults view and the README's option table are checked against that
-- registry by pgrx-tests/sql/option_registry.sql and tests/integration/docs.rs.

create or replace view conveyor.defaults as
select
    coalesce(o.queue, 'default') as queue,
    coalesce(o.priority, 0::smallint) as priority,
    coalesce(o.max_attempts, 1) as max_attempts,
    coalesce(o.backoff, 'constant') as backoff,
    o.backoff_custom,
    coalesce(o.delay, interval '5 seconds') as delay,
    coalesce(o.max_delay, interval '5 minutes') as max_delay,
    o.max_delay as max_delay_given,
    coalesce(o.jitter, 'none') as jitter,
    o.timeout,
    coalesce(o.lease, interval '30 seconds') as lease,
    coalesce(o.max_lease, interval '1 hour') as max_lease,
    coalesce(o.log_max_size, 1048576) as log_max_size,
    coalesce(o.log_on_full, 'truncate') as log_on_full,
    coalesce(o.retention, interval '7 days') as retention,
    coalesce(o.restart_delay, interval '1 second') as restart_delay,
    coalesce(o.restart_backoff, 'exponential') as restart_backoff,
    coalesce(o.restart_max_delay, interval '60 seconds') as restart_max_delay,
    coalesce(o.bind_session, false) as bind_session
from (values (true)) as one(singleton)
left join conveyor._defaults o using (singleton);

comment on view conveyor.defaults is 'effective defaults: what a task that leaves an option off gets';

-- task_config: each task's effective options, its own where given, else the defaults (but
-- bind_session: the task's own, or null).
-- A custom backoff list is capped only by an explicitly given max_delay.
create or replace view conveyor.task_config as
select
    t.name, t.kind, t.queue, t.enabled, t.version,
    coalesce(t.priority, d.priority) as priority,
    coalesce(t.max_attempts, d.max_attempts) as max_attempts,
    coalesce(t.backoff, d.backoff) as backoff,
    case when t.backoff is not null then t.backoff_custom else d.backoff_custom end as backoff_custom,
    coalesce(t.delay, d.delay) as delay,
    case when coalesce(t.backoff, d.backoff) = 'custom'
         then coalesce(t.max_delay, d.max_delay_given)
         else coalesce(t.max_delay, d.max_delay) end as max_delay,
    coalesce(t.jitter, d.jitter) as jitter,
    coalesce(t.timeout, d.timeout) as timeout,
    coalesce(t.lease, d.lease) as lease,
    d.max_lease,
    coalesce(t.log_max_size, d.log_max_size) as log_max_size,
    coalesce(t.log_on_full, d.log_on_full) as log_on_full,
    t.schedule, t.timezone, t.on_overlap, t.catch_up, t.next_fire_at,
    t.parallelism, t.payload, t.replicas,
    coalesce(t.restart_delay, d.restart_delay) as restart_delay,
    coalesce(t.restart_backoff, d.restart_backoff) as restart_backoff,
    coalesce(t.restart_max_delay, d.restart_max_delay) as restart_max_delay,
    -- the task's own only; null: the option of the queue the run is claimed from, else the
    -- defaults' (claim_runs resolves it per run; a claim's bind_session argument wins)
    t.bind_session,
    -- deduplication on the idempotency key (_enqueue)
    coalesce(t.on_duplicate, 'return') as on_duplicate,
    t.unique_for, t.debounce, t.debounce_max,
    t.rate_limit_n, t.rate_limit_period,
    t.key_concurrency, t.key_rate_limit_n, t.key_rate_limit_period
from conveyor.tasks t
cross join conveyor.defaults d;

comment on view conveyor.task_config is 'each task''s effective configuration (its options over conveyor.defaults)';

-- options: every option, defined once in src/config.rs: the kinds that accept it (task, service,
-- queue, defaults), the value it takes, its built-in default and what it does.
create or replace view conveyor.options as
select o.name, o.kinds, o.type, o.default, o.meaning
from jsonb_to_recordset(conveyor._option_registry())
     as o(name text, kinds text[], type text, "default" text, meaning text);
comment on view conveyor.options is 'every task, service, queue and defaults option: kinds, value, built-in default, meaning';

-- _checked: the normalized options of one entry, or CV010 listing what is wrong with it.
create or replace function conveyor._checked(kind text, name text, options jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_result jsonb;
begin
    if name is null then
        perform conveyor._raise_config(array[format('a %s needs a name, got null', kind)]);
    end if;
    v_result := conveyor._check_options(kind, name, options);
    if v_result ? 'problems' then
        perform conveyor._raise_config(array(select jsonb_array_elements_text(v_result -> 'problems')));
    end if;
    return v_result -> 'options';
end
$$;

-- _check_effective: after a change, each task's effective policy must still hold together
-- (its own options over the defaults): max_delay at least delay for computed curves.
create or replace function conveyor._check_effective()
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problems text[];
begin
    select array_agg(format('task "%s": option "max_delay": must be at least delay (%s < %s)',
                            c.name, conveyor._duration_text(c.max_delay), conveyor._duration_text(c.delay))
                     order by c.name)
    into v_problems
    from conveyor.task_config c
    where c.kind = 'task' and c.backoff <> 'custom' and c.max_delay < c.delay;
    if v_problems is not null then
        perform conveyor._raise_config(v_problems);
    end if;
end
$$;

-- _set_rate_limit: the shards of a queue's or task's rate limit of N (null: none), each with
-- its share: up to 8 shards (fewer for N < 8), whose shares add up to N, so that as many claims
-- of the limit can go at once. Kept as they are when N is unchanged; a new N takes effect for the
-- windows after it (the old shards' starts are not counted against the new shares). Without a
-- key_rate_limit (p_key_n null) the starts of its keys go too.
create or replace function conveyor._set_rate_limit(p_scope text, p_name text, p_n integer, p_key_n integer)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_shards integer := least(8, p_n);
begin
    if p_key_n is null then
        delete from conveyor._rate_starts s where s.scope = p_scope || '_key' and s.name = p_name;
    end if;
    if p_n is not null and (select count(*) = v_shards and sum(l.quota) = p_n
                            from conveyor._rate_limits l where l.scope = p_scope and l.name = p_name) then
        return;
    end if;
    delete from conveyor._rate_limits l where l.scope = p_scope and l.name = p_name;
    delete from conveyor._rate_starts s where s.scope = p_scope and s.name = p_name;
    if p_n is not null then
        insert into conveyor._rate_limits (scope, name, shard, quota)
        select p_scope, p_name, i, p_n / v_shards + (i < p_n % v_shards)::integer
        from generate_series(0, v_shards - 1) as i;
    end if;
end
$$;

-- _ensure_queue: the queue row, created (unbounded, running) the first time a name is used.
create or replace function conveyor._ensure_queue(name text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problem text;
begin
    if exists (select from conveyor.queues q where q.name = _ensure_queue.name) then
        return;
    end if;
    v_problem := conveyor._check_name('queue', name);
    if v_problem is not null then
        perform conveyor._raise_invalid(v_problem);
    end if;
    insert into conveyor.queues (name) values (_ensure_queue.name) on conflict do nothing;
end
$$;

-- _define: create or replace a task or service from validated options. Re-defining replaces
-- the options whole (what is left off comes from the defaults) and bumps the version when
-- anything changed. Returns the version.
create or replace function conveyor._define(p_kind text, p_name text, p_options jsonb)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    o jsonb := conveyor._checked(p_kind, p_name, p_options);
    v_old conveyor.tasks;
    v_now timestamptz := conveyor._now();
    v_queue text;
    v_version integer;
    v_next timestamptz;
begin
    select * into v_old from conveyor.tasks t where t.name = p_name for update;
    if found and v_old.kind <> p_kind then
        perform conveyor._raise_config(array[format('%s "%s": already defined as a %s', p_kind, p_name, v_old.kind)]);
    end if;
    v_queue := coalesce(o ->> 'queue', (select d.queue from conveyor.defaults d));
    perform conveyor._ensure_queue(v_queue);
    o := o - 'queue';

    if o ? 'schedule' then
        -- keep the cursor when the schedule is unchanged, so re-applying config never refires
        if v_old.schedule is not distinct from o ->> 'schedule'
           and v_old.timezone is not distinct from o ->> 'timezone' then
            v_next := v_old.next_fire_at;
        else
            v_next := conveyor._cron_next(o ->> 'schedule', o ->> 'timezone', v_now);
        end if;
    end if;

    if v_old.name is null then
        v_version := 1;
    elsif v_old.options = o and v_old.queue = v_queue then
        v_version := v_old.version;
    else
        v_version := v_old.version + 1;
    end if;

    insert into conveyor.tasks as t (
        name, kind, queue, enabled, version, options, priority, max_attempts, backoff, backoff_custom,
        delay, max_delay, jitter, timeout, lease, log_max_size, log_on_full, schedule, timezone,
        on_overlap, catch_up, next_fire_at, parallelism, payload, replicas, restart_delay,
        restart_backoff, restart_max_delay, created_at, updated_at, bind_session,
        on_duplicate, unique_for, debounce, debounce_max, rate_limit_n, rate_limit_period,
        key_concurrency, key_rate_limit_n, key_rate_limit_period
    ) values (
        p_name, p_kind, v_queue, coalesce((o ->> 'enabled')::boolean, v_old.enabled, true), v_version, o,
        (o ->> 'priority')::smallint,
        (o ->> 'max_attempts')::integer,
        o ->> 'backoff',
        (select array_agg(e::interval) from jsonb_array_elements_text(o -> 'backoff_custom') e),
        (o ->> 'delay')::interval,
        (o ->> 'max_delay')::interval,
        o ->> 'jitter',
        (o ->> 'timeout')::interval,
        (o ->> 'lease')::interval,
        (o ->> 'log_max_size')::integer,
        o ->> 'log_on_full',
        o ->> 'schedule',
        o ->> 'timezone',
        coalesce(o ->> 'on_overlap', 'allow'),
        coalesce((o ->> 'catch_up')::boolean, false),
        v_next,
        (o ->> 'parallelism')::integer,
        coalesce(o -> 'payload', '{}'),
        case when p_kind = 'service' then coalesce((o ->> 'replicas')::integer, 1) end,
        (o ->> 'restart_delay')::interval,
        o ->> 'restart_backoff',
        (o ->> 'restart_max_delay')::interval,
        v_now, v_now,
        (o ->> 'bind_session')::boolean,
        o ->> 'on_duplicate',
        (o ->> 'unique_for')::interval,
        (o ->> 'debounce')::interval,
        (o ->> 'debounce_max')::interval,
        (o ->> 'rate_limit_n')::integer,
        (o ->> 'rate_limit_period')::interval,
        (o ->> 'key_concurrency')::integer,
        (o ->> 'key_rate_limit_n')::integer,
        (o ->> 'key_rate_limit_period')::interval
    )
    on conflict (name) do update set
        queue = excluded.queue, enabled = excluded.enabled, version = excluded.version,
        options = excluded.options, priority = excluded.priority, max_attempts = excluded.max_attempts,
        backoff = excluded.backoff, backoff_custom = excluded.backoff_custom, delay = excluded.delay,
        max_delay = excluded.max_delay, jitter = excluded.jitter, timeout = excluded.timeout,
        lease = excluded.lease, log_max_size = excluded.log_max_size, log_on_full = excluded.log_on_full,
        schedule = excluded.schedule, timezone = excluded.timezone, on_overlap = excluded.on_overlap,
        catch_up = excluded.catch_up, next_fire_at = excluded.next_fire_at,
        parallelism = excluded.parallelism, payload = excluded.payload, replicas = excluded.replicas,
        restart_delay = excluded.restart_delay, restart_backoff = excluded.restart_backoff,
        restart_max_delay = excluded.restart_max_delay, updated_at = excluded.updated_at,
        bind_session = excluded.bind_session,
        on_duplicate = excluded.on_duplicate, unique_for = excluded.unique_for,
        debounce = excluded.debounce, debounce_max = excluded.debounce_max,
        rate_limit_n = excluded.rate_limit_n, rate_limit_period = excluded.rate_limit_period,
        key_concurrency = excluded.key_concurrency, key_rate_limit_n = excluded.key_rate_limit_n,
        key_rate_limit_period = excluded.key_rate_limit_period,
        -- a cap that starts now starts from the runs delivered now
        active = case
            when excluded.parallelism is not null and t.parallelism is null then
                (select count(*) from conveyor.runs r
                  where r.task = excluded.name and conveyor._is_delivered(r.status))
            else t.active end;

    perform conveyor._set_rate_limit('task', p_name, (o ->> 'rate_limit_n')::integer, (o ->> 'key_rate_limit_n')::integer);
    perform conveyor._check_effective();
    return v_version;
end
$$;

-- define_task: create or replace a task. Named arguments for the common options; `options`
-- takes any option (the same shape as an entry of apply_config's "tasks"); a named argument
-- wins over the same key in `options`. Returns the task's version. Durations are text ('30s',
-- '00:05:00'), validated with the other options: a bad one is CV010 whichever way it came.
create or replace function conveyor.define_task(
    name text,
    queue text default null,
    max_attempts integer default null,
    retry_attempts integer default null,
    backoff text default null,
    delay text default null,
    max_delay text default null,
    jitter text default null,
    timeout text default null,
    priority integer default null,
    schedule text default null,
    timezone text default null,
    on_overlap text default null,
    parallelism integer default null,
    options jsonb default null,
    on_duplicate text default null,
    unique_for text default null,
    debounce text default null,
    debounce_max text default null,
    rate_limit text default null,
    key_concurrency integer default null,
    key_rate_limit text default null
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._define('task', name, coalesce(options, '{}') || jsonb_strip_nulls(jsonb_build_object(
        'queue', queue, 'max_attempts', max_attempts, 'retry_attempts', retry_attempts,
        'backoff', backoff, 'delay', delay, 'max_delay', max_delay, 'jitter', jitter,
        'timeout', timeout, 'priority', priority, 'schedule', schedule, 'timezone', timezone,
        'on_overlap', on_overlap, 'parallelism', parallelism, 'on_duplicate', on_duplicate,
        'unique_for', unique_for, 'debounce', debounce, 'debounce_max', debounce_max,
        'rate_limit', rate_limit, 'key_concurrency', key_concurrency, 'key_rate_limit', key_rate_limit)));
end
$$;

comment on function conveyor.define_task is
    'create or replace a task (re-defining replaces its options and bumps its version); returns the version';

-- define_service: create or replace a service: `replicas` runs kept alive by tick, restarted
-- with backoff when they end (for any reason but a manual stop).
create or replace function conveyor.define_service(
    name text,
    replicas integer default 1,
    queue text default null,
    restart_delay text default null,
    restart_backoff text default null,
    restart_max_delay text default null,
    payload jsonb default null,
    options jsonb default null
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._define('service', name, coalesce(options, '{}') || jsonb_strip_nulls(jsonb_build_object(
        'replicas', replicas, 'queue', queue, 'restart_delay', restart_delay,
        'restart_backoff', restart_backoff, 'restart_max_delay', restart_max_delay,
        'payload', payload)));
end
$$;

comment on function conveyor.define_service is
    'create or replace a service (always-on replicas restarted by tick); returns the version';

-- _set_enabled: enable or disable a task; a disabled task's outstanding runs fail with
-- task_disabled when claimed.
create or replace function conveyor._set_enabled(p_name text, p_enabled boolean)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    update conveyor.tasks t
    set enabled = p_enabled,
        updated_at = conveyor._now()
    where t.name = p_name;
    if not found then
        perform conveyor._raise_unknown_task(p_name);
    end if;
end
$$;

create or replace function conveyor.disable_task(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_enabled(name, false) $$;

comment on function conveyor.disable_task is
    'disable a task: its outstanding runs fail with code task_disabled when claimed (never retried)';

create or replace function conveyor.enable_task(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_enabled(name, true) $$;

comment on function conveyor.enable_task is 'enable a task again';

-- _set_queue: apply validated queue options (declarative: what is left off is reset).
-- Turning a queue bounded counts its delivered runs under the queue's lock.
create or replace function conveyor._set_queue(p_name text, p_options jsonb)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    o jsonb := conveyor._checked('queue', p_name, p_options);
begin
    perform conveyor._ensure_queue(p_name);
    perform from conveyor.queues q where q.name = p_name for update;
    update conveyor.queues q
    set concurrency = (o ->> 'concurrency')::integer,
        paused = coalesce((o ->> 'paused')::boolean, false),
        notify = coalesce((o ->> 'notify')::boolean, true),
        delivery_outbox = coalesce((o ->> 'delivery_outbox')::boolean, false),
        bind_session = (o ->> 'bind_session')::boolean,
        rate_limit_n = (o ->> 'rate_limit_n')::integer,
        rate_limit_period = (o ->> 'rate_limit_period')::interval,
        key_concurrency = (o ->> 'key_concurrency')::integer,
        key_rate_limit_n = (o ->> 'key_rate_limit_n')::integer,
        key_rate_limit_period = (o ->> 'key_rate_limit_period')::interval,
        delivered = case when o ? 'concurrency' then
            (select count(*) from conveyor.runs r where r.queue = p_name and conveyor._is_delivered(r.status))
            else 0 end
    where q.name = p_name;
    perform conveyor._set_rate_limit('queue', p_name, (o ->> 'rate_limit_n')::integer, (o ->> 'key_rate_limit_n')::integer);
end
$$;

-- set_queue: configure a queue (declarative: options left off return to their defaults).
create or replace function conveyor.set_queue(
    name text,
    concurrency integer default null,
    paused boolean default false,
    notify boolean default true,
    delivery_outbox boolean default false,
    bind_session boolean default null,
    rate_limit text default null,
    key_concurrency integer default null,
    key_rate_limit text default null
)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select conveyor._set_queue(name, jsonb_strip_nulls(jsonb_build_object(
        'rate_limit', rate_limit, 'key_concurrency', key_concurrency, 'key_rate_limit', key_rate_limit,
        'concurrency', concurrency, 'paused', paused, 'notify', notify, 'delivery_outbox', delivery_outbox,
        'bind_session', bind_session)))
$$;

comment on function conveyor.set_queue is
    'configure a queue: concurrency (null = unbounded), paused, notify (wakeups), delivery_outbox, bind_session (null: the defaults'')';

-- _set_paused: pause or resume a queue (CV007 for an unknown one).
create or replace function conveyor._set_paused(p_name text, p_paused boolean)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    update conveyor.queues q set paused = p_paused where q.name = p_name;
    if not found then
        perform conveyor._raise_unknown_queue(p_name);
    end if;
end
$$;

-- pause_queue / resume_queue: claims from a paused queue return nothing and tick delivers
-- nothing into it.
create or replace function conveyor.pause_queue(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_paused(name, true) $$;
comment on function conveyor.pause_queue is 'pause a queue: claims return nothing, tick delivers nothing into it';

create or replace function conveyor.resume_queue(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_paused(name, false) $$;
comment on function conveyor.resume_queue is 'resume a paused queue';

-- drop_queue: remove a queue that no task uses and that holds no unfinished run (its finished
-- runs stay, as history, until retention). CV007 for an unknown queue, CV008 for one in use.
create or replace function conveyor.drop_queue(name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_tasks text;
begin
    perform from conveyor.queues q where q.name = drop_queue.name for update;
    if not found then
        perform conveyor._raise_unknown_queue(drop_queue.name);
    end if;
    select string_agg(t.name, ', ' order by t.name) into v_tasks from conveyor.tasks t where t.queue = drop_queue.name;
    if v_tasks is not null then
        perform conveyor._raise_queue_in_use(drop_queue.name, format('tasks %s use it', v_tasks));
    end if;
    if drop_queue.name = (select d.queue from conveyor.defaults d) then
        perform conveyor._raise_queue_in_use(drop_queue.name, 'it is the default queue (conveyor.defaults)');
    end if;
    if exists (select from conveyor.runs r where r.queue = drop_queue.name and conveyor._live(r.status)) then
        perform conveyor._raise_queue_in_use(drop_queue.name, 'it holds unfinished runs');
    end if;
    -- its rate limit's shards and starts, and its keys' starts
    perform conveyor._set_rate_limit('queue', drop_queue.name, null, null);
    delete from conveyor.queues q where q.name = drop_queue.name;
end
$$;
comment on function conveyor.drop_queue is
    'remove a queue that no task uses and that holds no unfinished run (CV008 otherwise)';

-- _set_defaults: replace the operator's defaults with validated options.
create or replace function conveyor._set_defaults(p_options jsonb)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    o jsonb := conveyor._checked('defaults', '', p_options);
begin
    -- the normalized options are keyed by column name (src/config.rs): one row, column by name
    delete from conveyor._defaults;
    insert into conveyor._defaults
    select * from jsonb_populate_record(null::conveyor._defaults,
                                        o || jsonb_build_object('singleton', true, 'updated_at', conveyor._now()));
    if o ? 'queue' then
        perform conveyor._ensure_queue(o ->> 'queue');
    end if;
    perform conveyor._check_effective();
end
$$;

-- set_defaults: replace the defaults every task falls back on (declarative: options left off
-- return to their built-in values; see the view conveyor.defaults).
create or replace function conveyor.set_defaults(options jsonb)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_defaults(options) $$;

comment on function conveyor.set_defaults is
    'replace the defaults (max_attempts, backoff, delay, max_delay, jitter, timeout, lease, max_lease, retention, ...)';

-- apply_config: apply a whole configuration {defaults, queues, tasks, services} (the shape of a
-- supervisor's config file). Every entry is validated first; one bad entry and nothing is
-- applied, with every problem listed. Tasks and queues it does not name are left as they are.
-- check_config: every problem of a configuration ({defaults, queues, tasks, services}), none
-- when it is valid; changes nothing. apply_config refuses a configuration with any (CV010).
create or replace function conveyor.check_config(config jsonb)
returns text[]
language plpgsql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problems text[] := '{}';
    v_section text;
    v_entry record;
    v_result jsonb;
begin
    if config is null or jsonb_typeof(config) <> 'object' then
        return array['expected an object with sections defaults, queues, tasks, services'];
    end if;
    for v_section in select jsonb_object_keys(config) loop
        if v_section not in ('defaults', 'queues', 'tasks', 'services') then
            v_problems := v_problems || format('unknown section "%s": expected defaults, queues, tasks, services', v_section);
        elsif v_section <> 'defaults' and jsonb_typeof(config -> v_section) <> 'object' then
            v_problems := v_problems || format('section "%s": expected an object of name: options', v_section);
        end if;
    end loop;
    if cardinality(v_problems) > 0 then
        return v_problems;
    end if;
    if config ? 'defaults' then
        v_result := conveyor._check_options('defaults', '', config -> 'defaults');
        v_problems := v_problems || array(select jsonb_array_elements_text(v_result -> 'problems'));
    end if;
    for v_entry in
        select 'queue' as kind, e.key, e.value from jsonb_each(coalesce(config -> 'queues', '{}')) e
        union all
        select 'task', e.key, e.value from jsonb_each(coalesce(config -> 'tasks', '{}')) e
        union all
        select 'service', e.key, e.value from jsonb_each(coalesce(config -> 'services', '{}')) e
    loop
        v_result := conveyor._check_options(v_entry.kind, v_entry.key, v_entry.value);
        v_problems := v_problems || array(select jsonb_array_elements_text(v_result -> 'problems'));
    end loop;
    return v_problems;
end
$$;

comment on function conveyor.check_config is
    'every problem of a {defaults, queues, tasks, services} configuration (empty: valid); changes nothing';

create or replace function conveyor.apply_config(config jsonb)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problems text[] := conveyor.check_config(config);
begin
    -- validate everything before changing anything
    if cardinality(v_problems) > 0 then
        perform conveyor._raise_config(v_problems);
    end if;
    if config ? 'defaults' then
        perform conveyor._set_defaults(config -> 'defaults');
    end if;
    perform conveyor._set_queue(e.key, e.value) from jsonb_each(coalesce(config -> 'queues', '{}')) e;
    perform conveyor._define('task', e.key, e.value) from jsonb_each(coalesce(config -> 'tasks', '{}')) e;
    perform conveyor._define('service', e.key, e.value) from jsonb_each(coalesce(config -> 'services', '{}')) e;
    return jsonb_build_object(
        'defaults', config ? 'defaults',
        'queues', (select count(*) from jsonb_object_keys(coalesce(config -> 'queues', '{}'))),
        'tasks', (select count(*) from jsonb_object_keys(coalesce(config -> 'tasks', '{}'))),
        'services', (select count(*) from jsonb_object_keys(coalesce(config -> 'services', '{}'))));
end
$$;

comment on function conveyor.apply_config is
    'apply {defaults, queues, tasks, services} whole: all validated first; any problem and nothing changes (CV010 lists them all)';

-- ============================================================================================
-- sql/functions/enqueue.sql

-- functions/enqueue.sql: producers create runs, in the caller's transaction (README: Producers).

-- _enqueue: insert runs of one task (scheduled, or queued when due now with capacity free), one
-- statement for the whole batch. Returns each input's run id in input order. An idempotency key
-- that matches a live run of the task (or, with unique_for, one that finished less than
-- unique_for ago) writes no run: under the task's on_duplicate, the existing run's id comes back
-- (return), the whole call is refused with CV009 (reject), or a waiting existing run takes the
-- new payload, the last of the call for its key (replace). With debounce, a keyed run starts
-- debounce after the latest enqueue of its key (capped at debounce_max after its first) while it
-- is still scheduled. The existing run is changed by guarded updates: concurrent producers of
-- one key take turns on its row, and a run that started meanwhile is left alone. p_ckeys are
-- the runs' concurrency keys (one per payload, or null), for key limits and the keys' turns.
create or replace function conveyor._enqueue(
    p_task text, p_payloads jsonb[], p_run_at timestamptz, p_delay interval, p_priority integer,
    p_queue text, p_keys text[], p_parent conveyor.ulid, p_ckeys text[] default null
)
returns table (ord integer, id conveyor.ulid)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_task record;
    v_queue text;
    v_due timestamptz;
    v_n integer := coalesce(cardinality(p_payloads), 0);
    v_free integer := 0;
    v_bad integer;
    v_ids conveyor.ulid[];
    v_problem text;
    v_dup record;
    v_dup_n integer[];
    v_dup_run conveyor.ulid[];
    v_debounced timestamptz;
begin
    -- the task, and whether its queue exists and is bounded (or the task capped), in one look-up
    select c.*, q.name as queue_found, (q.concurrency is not null or c.parallelism is not null) as limited
    into v_task
    from conveyor.task_config c
    left join conveyor.queues q on q.name = coalesce(p_queue, c.queue)
    where c.name = p_task;
    if not found then
        perform conveyor._raise_unknown_task(p_task, 'task',
            'define it first: select conveyor.define_task(''' || coalesce(p_task, '') || ''')');
    end if;
    if v_task.kind = 'service' then
        perform conveyor._raise_invalid(format('task "%s" is a service: tick keeps its replicas running; it is not enqueued', p_task));
    end if;
    if p_run_at is not null and p_delay is not null then
        perform conveyor._raise_invalid('give run_at or delay, not both');
    end if;
    perform conveyor._check_time('run_at', p_run_at, v_now);
    if p_keys is not null and exists (select from unnest(p_keys) k where octet_length(k) > 512) then
        perform conveyor._raise_invalid('idempotency key too long: at most 512 bytes');
    end if;
    if p_priority is not null and p_priority not between 0 and 9 then
        perform conveyor._raise_invalid(format('invalid priority %s: expected 0 (first) to 9 (last)', p_priority));
    end if;
    if v_n = 1 then
        v_bad := case when p_payloads[1] is null or jsonb_typeof(p_payloads[1]) <> 'object' then 1 end;
    else
        select min(i.n) into v_bad
        from unnest(p_payloads) with ordinality as i(p, n)
        where i.p is null or jsonb_typeof(i.p) <> 'object';
    end if;
    if v_bad is not null then
        perform conveyor._raise_invalid(format('payload must be a JSON object, got %s%s',
                                               coalesce(jsonb_typeof(p_payloads[v_bad]), 'null'),
                                               case when v_n > 1 then format(' (payload %s of %s)', v_bad, v_n) else '' end));
    end if;
    if p_ckeys is not null and exists (select from unnest(p_ckeys) k where octet_length(k) > 512) then
        perform conveyor._raise_invalid('concurrency key too long: at most 512 bytes');
    end if;
    if p_ckeys is not null and cardinality(p_ckeys) <> v_n then
        perform conveyor._raise_invalid(format('%s concurrency keys for %s payloads: give one per payload (or null)', cardinality(p_ckeys), v_n));
    end if;
    if p_keys is not null and cardinality(p_keys) <> v_n then
        perform conveyor._raise_invalid(format('%s idempotency keys for %s payloads: give one per payload (or null)', cardinality(p_keys), v_n));
    end if;
    -- a child is spawned by its parent while the parent runs (its handler enqueues it): naming
    -- any other run is refused with one answer whether the id exists or not, so a producer can
    -- neither probe ids nor pin a finished run against retry_run by hanging a child on it
    if p_parent is not null
       and not exists (select from conveyor.runs r where r.id = p_parent and r.status = 'running') then
        perform conveyor._raise_unknown_run(p_parent, 'running parent run');
    end if;

    v_queue := coalesce(p_queue, v_task.queue);
    if v_task.queue_found is null then
        -- producers do not create queues (each queue costs every dashboard and metrics scrape):
        -- an operator does, with define_task, set_queue or apply_config
        v_problem := conveyor._check_name('queue', v_queue);
        if v_problem is not null then
            perform conveyor._raise_invalid(v_problem);
        end if;
        perform conveyor._raise_unknown_queue(v_queue,
            'queues are created by an operator: conveyor.set_queue(name), define_task(queue => ...) or apply_config');
    end if;
    v_due := coalesce(p_run_at, v_now + p_delay, v_now);
    if p_keys is not null and v_task.debounce is not null then
        -- a debounced key's run waits for the enqueues that may follow (a payload without a key
        -- is not debounced)
        v_debounced := greatest(v_due, v_now + v_task.debounce);  -- (debounce_max is at least debounce)
    end if;
    if v_due <= v_now then
        v_free := case when v_task.limited is not false then conveyor._free_capacity(v_queue, p_task, v_n) else v_n end;
    end if;

    with input as (
        select i.n::integer as n, i.p, i.k, i.ck, conveyor.ulid_generate() as new_id,
               -- unique_for: a run of this key that finished within the window stands for it
               case when i.k is not null and v_task.unique_for is not null then (
                   select f.id from conveyor.runs f
                   where f.task = p_task and f.idempotency_key = i.k and f.finished_at is not null
                     and f.finished_at > v_now - v_task.unique_for
                   order by f.finished_at desc
                   limit 1) end as recent
        from unnest(p_payloads, p_keys, p_ckeys) with ordinality as i(p, k, ck, n)
    ),
    inserted as (
        insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                   task_version, idempotency_key, parent_run_id, concurrency_key)
        select i.new_id, p_task, v_queue,
               case when i.n <= v_free and (i.k is null or v_debounced is null) then 'queued' else 'scheduled' end::conveyor.run_status,
               coalesce(p_priority, v_task.priority),
               case when i.k is not null and v_debounced is not null then v_debounced else v_due end,
               i.p, v_now, v_task.version, i.k, p_parent, i.ck
        from input i
        where i.recent is null
        order by i.n
        on conflict (task, idempotency_key)
            where idempotency_key is not null and conveyor._live(status)
            do nothing
        returning id
    )
    select array_agg(ins.id order by i.n)
    into v_ids
    from input i
    left join inserted ins on ins.id = i.new_id;

    if p_keys is null then
        return query select i.n::integer, i.id from unnest(v_ids) with ordinality as i(id, n);
        return;
    end if;
    if v_task.on_duplicate = 'reject' then
        -- a key twice in one call is a duplicate too: refused before anything is looked up
        select k into v_dup from unnest(p_keys) as k where k is not null group by k having count(*) > 1 limit 1;
        if found then
            perform conveyor._raise_duplicate(p_task, v_dup.k, null, null);
        end if;
    end if;
    if v_task.on_duplicate = 'return' and v_task.debounce is null and v_task.unique_for is null then
        -- keys that matched a live run: that run's id (a fresh statement sees runs committed since)
        return query
        select i.n::integer, coalesce(v_ids[i.n], (
            select r.id from conveyor.runs r
            where r.task = p_task and r.idempotency_key = i.k
              and conveyor._live(r.status)))
        from unnest(p_keys) with ordinality as i(k, n)
        order by 1;
        return;
    end if;

    -- a policy: the existing run of each key that wrote none (live, else the recent finished
    -- one). Not locked here: only the updates below lock, and only runs that wait (a worker
    -- finishing a running one never waits for a producer); the last input of the call for a
    -- key is the one that counts
    select array_agg(i.n order by i.n), array_agg(e.id order by i.n)
    into v_dup_n, v_dup_run
    from unnest(p_keys) with ordinality as i(k, n)
    cross join lateral (
        select r.id from conveyor.runs r
        where r.task = p_task and r.idempotency_key = i.k
          and (conveyor._live(r.status) or r.finished_at > v_now - v_task.unique_for)
        order by conveyor._live(r.status) desc, r.finished_at desc nulls first
        limit 1) e
    where v_ids[i.n] is null and i.k is not null;

    if v_dup_n is not null and v_task.on_duplicate = 'reject' then
        select r.id, r.status into v_dup from conveyor.runs r where r.id = v_dup_run[1];
        perform conveyor._raise_duplicate(p_task, p_keys[v_dup_n[1]], v_dup.id, v_dup.status);
    end if;
    if v_dup_n is not null and v_task.on_duplicate = 'replace' then
        -- latest wins, while the run waits (a running attempt keeps what it started with)
        update conveyor.runs r set payload = d.p
        from (select distinct on (x.run_id) x.run_id, p_payloads[x.n] as p
              from unnest(v_dup_n, v_dup_run) as x(n, run_id)
              order by x.run_id, x.n desc) d
        where r.id = d.run_id and r.status in ('scheduled', 'queued', 'retrying', 'released');
    end if;
    if v_dup_n is not null and v_task.debounce is not null then
        -- each enqueue of the key restarts the wait of its scheduled run, up to debounce_max
        -- after the run's first enqueue
        update conveyor.runs r
        -- (never earlier than it was: the cap only stops the pushing back)
        set run_at = greatest(r.run_at, least(v_now + v_task.debounce,
                                              coalesce(r.created_at + v_task.debounce_max, 'infinity')))
        where r.id = any(v_dup_run) and r.status = 'scheduled';
    end if;
    return query
    select i.n::integer, coalesce(v_ids[i.n], v_dup_run[array_position(v_dup_n, i.n)])
    from generate_series(1, v_n) as i(n)
    order by 1;
end
$$;

-- enqueue: create a run of a task, in the caller's transaction. Due now (the default) in an
-- unbounded queue it is queued (claimable at once; listeners on conveyor.<queue> are woken at
-- commit); later, or in a bounded queue without room, it is scheduled and tick delivers it.
create or replace function conveyor.enqueue(
    task text,
    payload jsonb default '{}',
    run_at timestamptz default null,
    delay conveyor.duration default null,
    priority integer default null,
    queue text default null,
    idempotency_key text default null,
    parent_run_id conveyor.ulid default null,
    key text default null
)
returns conveyor.ulid
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return (select e.id from conveyor._enqueue(task, array[payload], run_at, delay, priority, queue,
                                               case when idempotency_key is not null then array[idempotency_key] end,
                                               parent_run_id,
                                               case when enqueue.key is not null then array[enqueue.key] end) e);
end
$$;

comment on function conveyor.enqueue is
    'enqueue a run of a task (payload: a JSON object; run_at or delay; priority 0-9; queue override; idempotency_key; parent_run_id; key: its concurrency key); returns its id';

-- enqueue_many: enqueue many runs of one task in one statement; returns their ids in order.
create or replace function conveyor.enqueue_many(
    task text,
    payloads jsonb[],
    run_at timestamptz default null,
    delay conveyor.duration default null,
    priority integer default null,
    queue text default null,
    idempotency_keys text[] default null,
    parent_run_id conveyor.ulid default null,
    keys text[] default null
)
returns setof conveyor.ulid
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query
    select e.id from conveyor._enqueue(task, payloads, run_at, delay, priority, queue, idempotency_keys, parent_run_id, keys) e
    order by e.ord;
end
$$;

comment on function conveyor.enqueue_many is
    'enqueue many runs of one task in one statement (one payload each; idempotency_keys and keys aligned with payloads); returns their ids in order';

-- ============================================================================================
-- sql/functions/claim.sql

-- functions/claim.sql: workers take queued runs under a lease (README: Workers). The lease token
-- proves the attempt to every later call (fencing).

-- claim_runs: claim up to `max` queued runs (priority, then due time, then id) from one queue or
-- several (comma-separated), optionally only of some tasks: queued -> running under a new lease.
-- Rows are locked FOR NO KEY UPDATE SKIP LOCKED, so concurrent claimers never share a run.
-- Runs of a disabled task fail (task_disabled) here instead of being returned, and the claim
-- goes on to the runs behind them.
-- bind_session: bind the runs to this database session, so that tick ends their attempts as
-- crashed as soon as the session is gone instead of at lease expiry (null: each task's
-- bind_session option, else that of the queue the run is claimed from, else the defaults';
-- false built in). Only for workers
-- that claim, heartbeat and finish on one direct connection: behind a transaction pooler the
-- session is the pooler's server connection, not the worker's (docs/guarantees.md).
create or replace function conveyor.claim_runs(
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns setof conveyor.claimed_run
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- a claim takes a few milliseconds: compiling its plans (JIT, once a cost estimate passes
-- jit_above_cost on a big table) costs more than it can save
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_names text[] := array(select btrim(q) from unnest(string_to_array(claim_runs.queues, ',')) q where btrim(q) <> '');
    v_open text[];
    v_lease interval := claim_runs.lease;
    v_ids conveyor.ulid[];
    v_claimed conveyor.claimed_run[] := '{}';
    v_batch conveyor.claimed_run[];
    v_disabled conveyor._ending[];
    v_want integer := claim_runs.max;
    v_round integer := 0;
    -- shown on dashboards and terminals: no control or bidi characters (conveyor._clean)
    v_worker text := conveyor._clean(claim_runs.worker);
    -- this session, for runs bound to it (conveyor.sessions)
    v_pid integer := pg_backend_pid();
    v_started timestamptz := conveyor._session_started_at();
    v_bound boolean := false;
    -- the open queues whose bind_session (else the defaults') is on
    v_binding text[];
    -- rate limits (_rate_allowance): the limits with room and how much, those without
    v_rated boolean := false;
    v_cap_queues text[];
    v_queue_caps integer[];
    v_full_queues text[];
    -- the shards taken (scope, name, shard, room), for the starts recorded at the end
    v_room_scopes text[];
    v_room_names text[];
    v_room_shards smallint[];
    v_room_allowed integer[];
    v_cap_tasks text[];
    v_task_caps integer[];
    v_full_tasks text[] := '{}';
    v_started_queues text[] := '{}';
    v_started_tasks text[] := '{}';
    v_started_keys text[] := '{}';
    v_started_qshards smallint[] := '{}';
    v_started_tshards smallint[] := '{}';
    v_round_queues text[];
    v_round_tasks text[];
    v_round_keys text[];
    v_round_qshards smallint[];
    v_round_tshards smallint[];
    v_queue text;
    v_take integer;
    -- key limits (key_concurrency, key_rate_limit) of the open queues and of the tasks: scope
    -- (queue or task), name, limits
    v_keyed boolean := false;
    v_kl_scopes text[];
    v_kl_names text[];
    v_kl_conc integer[];
    v_kl_rate_n integer[];
    v_kl_rate_p interval[];
    v_kl_shards integer[];
    -- a second try at the shards of keys with too little room
    v_more_scopes text[];
    v_more_names text[];
    v_more_keys text[];
    v_more_shards smallint[];
    -- (the untried shards of keys short of room: scope, name, key, shard, what the key misses, room)
    v_try_scopes text[];
    v_try_names text[];
    v_try_keys text[];
    v_try_shards smallint[];
    v_try_missing bigint[];
    v_try_rooms integer[];
    -- this round's keys under a limit (scope, name, key), the shard of the limit taken for each
    -- (null: none free with room) and the runs each may still start under it
    v_gate_scopes text[];
    v_gate_names text[];
    v_gate_keys text[];
    v_gate_shards smallint[];
    v_gate_allowed integer[];
    -- (and the candidates each key has under each limit)
    v_gate_want integer[];
    -- (and the shard each key tries first: _key_gates)
    v_gate_start smallint[];
    -- the shards the runs chosen start under (aligned with v_ids)
    v_id_qshards smallint[];
    v_id_tshards smallint[];
    -- the keys of these rounds that may start no more runs (_key_ref), left out of later rounds
    v_full_keys text[] := '{}';
    v_since timestamptz;
    v_held boolean;
    -- the keys of this round's candidates
    v_keys text[];
    v_cand conveyor._candidate[];
    v_part conveyor._candidate[];
begin
    if v_worker is null or btrim(v_worker) = '' or length(v_worker) > 200 then
        perform conveyor._raise_invalid('worker must name the claiming worker (1 to 200 characters), e.g. host:pid');
    end if;
    if claim_runs.max is null or claim_runs.max not between 1 and 10000 then
        perform conveyor._raise_invalid(format('invalid max %s: expected 1 to 10000 runs per claim', coalesce(claim_runs.max::text, 'null')));
    end if;
    if v_lease is not null and v_lease <= interval '0' then
        perform conveyor._raise_invalid('lease must be longer than 0s');
    end if;
    select array_agg(q.name),
           coalesce(array_agg(q.name) filter (where coalesce(q.bind_session, (select d.bind_session from conveyor._defaults d))), '{}')
    into v_open, v_binding
    from conveyor.queues q where q.name = any(v_names) and not q.paused;
    if v_open is null then
        return;
    end if;

    -- Key limits: the open queues' and the tasks' key_concurrency and key_rate_limit
    select array_agg(l.scope), array_agg(l.name), array_agg(l.conc), array_agg(l.rate_n), array_agg(l.rate_p),
           array_agg(conveyor._key_shards(l.conc, l.rate_n))
    into v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards
    from (select 'queue' as scope, q.name, q.key_concurrency as conc, q.key_rate_limit_n as rate_n,
                 q.key_rate_limit_period as rate_p
          from conveyor.queues q
          where q.name = any(v_open) and (q.key_concurrency is not null or q.key_rate_limit_n is not null)
          union all
          select 'task', t.name, t.key_concurrency, t.key_rate_limit_n, t.key_rate_limit_period
          from conveyor.tasks t
          where (t.key_concurrency is not null or t.key_rate_limit_n is not null)
            -- (every one, as for rate limits: a run of one may become queued in these queues while
            -- this claim runs, and must not start uncounted)
            and (claim_runs.tasks is null or t.name = any(claim_runs.tasks))) l;
    v_keyed := v_kl_scopes is not null;

    -- Rate limits: a queue without room is left out of this claim, a task without room is
    -- skipped (the runs of other tasks are taken: no head-of-line blocking), and the others cap
    -- what the claim takes of them; the starts are recorded below, before the commit
    if exists (select from conveyor._rate_limits) then
        select array_agg(a.scope order by a.scope, a.name, a.shard), array_agg(a.name order by a.scope, a.name, a.shard),
               array_agg(a.shard order by a.scope, a.name, a.shard), array_agg(a.allowed order by a.scope, a.name, a.shard)
        into v_room_scopes, v_room_names, v_room_shards, v_room_allowed
        from conveyor._rate_allowance(v_open, claim_runs.tasks, claim_runs.max) a;
        -- per limit: the room of its shards
        select array_agg(a.name order by a.name) filter (where a.scope = 'queue' and a.allowed > 0),
               array_agg(a.allowed order by a.name) filter (where a.scope = 'queue' and a.allowed > 0),
               array_agg(a.name order by a.name) filter (where a.scope = 'queue' and a.allowed = 0),
               array_agg(a.name order by a.name) filter (where a.scope = 'task' and a.allowed > 0),
               array_agg(a.allowed order by a.name) filter (where a.scope = 'task' and a.allowed > 0)
        into v_cap_queues, v_queue_caps, v_full_queues, v_cap_tasks, v_task_caps
        from (select x.scope, x.name, sum(x.allowed)::integer as allowed
              from unnest(v_room_scopes, v_room_names, v_room_allowed) as x(scope, name, allowed)
              group by x.scope, x.name) a;
        -- every rate-limited task this claim has no room for is left out: those without room,
        -- and those whose runs were queued after _rate_allowance looked (so none starts uncounted)
        v_full_tasks := array(select t.name from conveyor.tasks t
                              where t.rate_limit_n is not null and t.name <> all(coalesce(v_cap_tasks, '{}')));
        v_rated := true;
        -- the runs start now, after the wait for the limits' rows: their started_at, leases and
        -- the starts recorded are this time, the time the window was counted at or later
        v_now := conveyor._clock_now();
        if v_full_queues is not null then
            v_open := array(select o from unnest(v_open) o where o <> all(v_full_queues));
            if cardinality(v_open) = 0 then
                return;
            end if;
        end if;
    end if;

    -- Runs of a disabled task fail (task_disabled) as they are claimed and do not count: while a
    -- round met some, claim again for what is still wanted (at most 10 rounds a call, each
    -- failing up to `max` of them, so a backlog of disabled runs drains and never hides the
    -- enabled runs behind it for long)
    loop
        v_round := v_round + 1;
        v_ids := null;
        if v_rated or v_keyed then
            -- under rate or key limits: the best runs of each queue (but those of tasks and keys
            -- without room), at most the queue's room of them, locked as they are found (SKIP
            -- LOCKED: concurrent claims take different runs; one statement per queue, the shape
            -- the claimable index answers in order), then at most each task's and each key's room
            -- of those, the best first. A run locked here and left over (a task's or key's room,
            -- several queues) stays queued, unseen by other claims until this one commits.
            v_cand := '{}';
            foreach v_queue in array v_open loop
                v_take := least(v_want, coalesce(v_queue_caps[array_position(v_cap_queues, v_queue)], v_want));
                -- (the planner takes "task <> all(an array)" to keep next to nothing and would sort
                -- the whole queue instead of reading it in index order: without tasks or keys to
                -- leave out the statement does not ask, with some it asks a function, which it
                -- does not estimate that way)
                if cardinality(v_full_tasks) = 0 and cardinality(v_full_keys) = 0 then
                    -- (from the queue's claim hint on, the index range's start: tick_hint.sql)
                    v_cand := v_cand || array(
                        select x.c from conveyor._claim_floor(v_queue, v_now) f
                        cross join lateral (
                            select row(p.id, p.task, p.priority, p.run_at, p.queue, p.concurrency_key, p.fair_rank)::conveyor._candidate as c,
                                   p.priority, p.fair_rank, p.run_at, p.id
                            from conveyor.runs p
                            where p.status = 'queued' and p.queue = v_queue
                              and (p.priority, p.fair_rank, p.run_at, p.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                              and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                            order by p.priority, p.fair_rank, p.run_at, p.id
                            limit v_take
                            for no key update skip locked) x
                        order by x.priority, x.fair_rank, x.run_at, x.id);
                else
                    -- keys at their limit (or tasks without room) to look past: by key, when the
                    -- queue's queued runs have few keys (the runs of the keys at their limit are
                    -- never read), else in claim order, past them
                    v_part := case when cardinality(v_full_keys) > 0 then
                        conveyor._candidates_by_key(v_queue, claim_runs.tasks, v_full_tasks, v_full_keys, v_take) end;
                    if v_part is null then
                        v_part := array(
                            select x.c from conveyor._claim_floor(v_queue, v_now) f
                            cross join lateral (
                                select row(p.id, p.task, p.priority, p.run_at, p.queue, p.concurrency_key, p.fair_rank)::conveyor._candidate as c,
                                       p.priority, p.fair_rank, p.run_at, p.id
                                from conveyor.runs p
                                where p.status = 'queued' and p.queue = v_queue
                                  and (p.priority, p.fair_rank, p.run_at, p.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                                  and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                                  and not conveyor._held_back(p.queue, p.task, p.concurrency_key, v_full_tasks, v_full_keys)
                                order by p.priority, p.fair_rank, p.run_at, p.id
                                limit v_take
                                for no key update skip locked) x
                            order by x.priority, x.fair_rank, x.run_at, x.id);
                    end if;
                    v_cand := v_cand || v_part;
                end if;
            end loop;
            -- (this round's gates only: none is left from an earlier round)
            v_gate_scopes := null;
            v_gate_names := null;
            v_gate_keys := null;
            v_gate_shards := null;
            v_gate_allowed := null;
            v_gate_want := null;
            v_gate_start := null;
            if v_keyed then
                -- each key under a limit among the candidates takes a shard of that limit for
                -- this transaction (_key_shards: up to 8, whose shares add up to the limit): an
                -- advisory lock per shard, tried and never waited for (_key_gates). A key that
                -- gets none is left for now. Claims of one shard take turns, so the next
                -- statement, which counts the shard's running runs and starts, sees every one
                -- committed before. (A key whose candidates one shard's full share covers tries
                -- its shards in turn from one that depends on the session and the key, so that
                -- concurrent claims of a key take different ones; a key with more candidates
                -- takes none there, and below as many of its shards with room as it needs.)
                select array_agg(g.scope), array_agg(g.name), array_agg(g.key), array_agg(g.shard),
                       array_agg(g.want), array_agg(g.start), array_agg(distinct g.key)
                into v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards, v_gate_want, v_gate_start, v_keys
                from (select array_agg(c.queue) as queues, array_agg(c.task) as tasks,
                             array_agg(c.concurrency_key) as keys
                      from unnest(v_cand) c) c
                cross join lateral conveyor._key_gates(c.queues, c.tasks, c.keys, v_kl_scopes, v_kl_names,
                                                       v_kl_conc, v_kl_rate_n, v_kl_shards, v_pid) g;
            end if;
            if v_gate_scopes is not null then
                if current_setting('transaction_isolation') <> 'read committed' then
                    perform conveyor._raise_invalid('a claim under a key limit needs READ COMMITTED (it must see every start committed before it)');
                end if;
                -- the room of each key under each shard it holds: the shard's share of the limit
                -- less the key's running runs (and starts of the rate window) under it, as
                -- committed now. Runs and starts under no shard of this limit (taken before it was
                -- set or changed) count against every shard.
                v_since := conveyor._clock_now();
                v_gate_allowed := conveyor._key_room(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards,
                    v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards, v_keys, v_since, v_want,
                    v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards);
                -- a key whose shards held have less room than it has candidates tries its other
                -- shards (the first ones depend on the session, not on where the room is), and so
                -- does a key with more candidates than a shard's share, which took none yet
                v_more_scopes := null;
                if exists (select from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_allowed, v_gate_want)
                                       as g(scope, name, key, allowed, want)
                           group by g.scope, g.name, g.key
                           having sum(g.allowed) < max(g.want)) then
                    -- the untried shards of those keys, in turn from each key's first, with what
                    -- the key still misses and each shard's room as committed (_key_room, which
                    -- counts the rate window's starts and what other shards borrowed too); those
                    -- with room taken while the missing room is not covered: a claim never takes
                    -- more of a key's shards than it can use, which would keep other claims of the
                    -- key waiting for a round, and one another claim holds is passed over for the
                    -- next (_key_more). Their room is counted again once they are held, below.
                    select array_agg(x.scope order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.name order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.key order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.shard order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.missing order by x.scope, x.name, x.key, x.ord)
                    into v_try_scopes, v_try_names, v_try_keys, v_try_shards, v_try_missing
                    from (select d.scope, d.name, d.key, sh.shard::smallint as shard, w.want - d.room as missing,
                                 (sh.shard - w.start + w.shards) % w.shards as ord
                          from (select g.scope, g.name, g.key, sum(g.allowed) as room, count(g.shard) as held,
                                       array_agg(g.shard) filter (where g.shard is not null) as tried
                                from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards, v_gate_allowed)
                                     as g(scope, name, key, shard, allowed)
                                group by g.scope, g.name, g.key) d
                          -- (_key_gates gave each key one gate: one row of w per key)
                          join (select g.scope, g.name, g.key, g.want, g.start, l.shards
                                from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_want, v_gate_start)
                                     as g(scope, name, key, want, start)
                                join unnest(v_kl_scopes, v_kl_names, v_kl_shards) as l(scope, name, shards)
                                  on (l.scope, l.name) = (g.scope, g.name)) w
                            on (w.scope, w.name, w.key) = (d.scope, d.name, d.key)
                          cross join lateral generate_series(0, w.shards - 1) as sh(shard)
                          where d.room < w.want and d.held < w.shards and sh.shard <> all(coalesce(d.tried, '{}'))) x;
                    if v_try_scopes is not null then
                        v_try_rooms := conveyor._key_room(v_try_scopes, v_try_names, v_try_keys, v_try_shards,
                            v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards,
                            array(select distinct k from unnest(v_try_keys) k), v_since, v_want,
                            v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards);
                        select array_agg(t.scope), array_agg(t.name), array_agg(t.key), array_agg(t.shard)
                        into v_more_scopes, v_more_names, v_more_keys, v_more_shards
                        from conveyor._key_more(v_try_scopes, v_try_names, v_try_keys, v_try_shards,
                                                v_try_rooms::bigint[], v_try_missing) t;
                    end if;
                end if;
                if v_more_scopes is not null then
                    v_gate_scopes := v_gate_scopes || v_more_scopes;
                    v_gate_names := v_gate_names || v_more_names;
                    v_gate_keys := v_gate_keys || v_more_keys;
                    v_gate_shards := v_gate_shards || v_more_shards;
                    v_gate_allowed := v_gate_allowed || conveyor._key_room(v_more_scopes, v_more_names, v_more_keys, v_more_shards,
                        v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards, v_keys, v_since, v_want,
                        v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards);
                end if;
                -- the runs start after that count: no attempt that ended before it was counted
                -- seems to overlap theirs
                v_now := conveyor._clock_now();
            end if;
            -- the best candidates within each task's room and each key's, and the shard each
            -- key's run starts under (src/admit.rs)
            select array_agg(p.id order by p.n), array_agg(p.queue_shard order by p.n),
                   array_agg(p.task_shard order by p.n)
            into v_ids, v_id_qshards, v_id_tshards
            from (select array_agg(c.id::uuid) as ids, array_agg(c.task) as tasks, array_agg(c.queue) as queues,
                         array_agg(c.concurrency_key) as keys, array_agg(c.priority) as priorities,
                         array_agg(c.fair_rank) as fair_ranks, array_agg(c.run_at) as run_ats
                  from unnest(v_cand) c) c
            cross join lateral conveyor._key_pick(c.ids, c.tasks, c.queues, c.keys, c.priorities, c.fair_ranks, c.run_ats,
                v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards, v_gate_allowed, v_cap_tasks, v_task_caps, v_want)
                with ordinality as p(id, queue_shard, task_shard, n)
            where c.ids is not null;
            -- candidates left over for a task's or key's room: another round may find others
            v_held := cardinality(v_cand) > coalesce(cardinality(v_ids), 0);
            exit when v_ids is null and not v_held;
            -- (none may fit this round: the update below then takes none, never the next in line)
            v_ids := coalesce(v_ids, '{}');
        elsif cardinality(v_open) > 1 then
            -- the best candidates of each queue, then the best of those, locked. Queues are
            -- merged by priority, then by each run's turn counted from its queue's first
            -- candidate's (turns are a queue's own), then by due time
            select array_agg(r.id) into v_ids from (
                select r.id from conveyor.runs r
                join (
                    select c.id, c.priority, c.fair_rank - min(c.fair_rank) over (partition by c.queue, c.priority) as turn, c.run_at
                    from unnest(v_open) as q(name)
                    cross join lateral conveyor._claim_floor(q.name, v_now) f
                    cross join lateral (
                        select r2.id, r2.queue, r2.priority, r2.fair_rank, r2.run_at from conveyor.runs r2
                        where r2.status = 'queued' and r2.queue = q.name
                          and (r2.priority, r2.fair_rank, r2.run_at, r2.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                          and (claim_runs.tasks is null or r2.task = any(claim_runs.tasks))
                        order by r2.priority, r2.fair_rank, r2.run_at, r2.id
                        limit v_want * 2
                    ) c
                    order by 2, 3, 4, 1
                    limit v_want * 2) c on c.id = r.id
                where r.status = 'queued'
                order by c.priority, c.turn, c.run_at, c.id
                limit v_want
                for no key update of r skip locked
            ) r;
            exit when v_ids is null;
        end if;

        with claimed as (
            update conveyor.runs r
            set status = 'running',
                prev_attempt_id = r.attempt_id,
                attempt_id = conveyor.ulid_generate(),
                lease_token = gen_random_uuid(),
                lease_expires_at = v_now + least(coalesce(v_lease, c.lease), c.max_lease),
                timeout_at = v_now + c.timeout,
                started_at = v_now,
                worker = v_worker,
                log_size = 0,
                -- bind_session: the claim's argument, else the task's, else the run's queue's (or the defaults')
                session_pid = case when coalesce(claim_runs.bind_session, c.bind_session, r.queue = any(v_binding))
                                   then v_pid end,
                session_started_at = case when coalesce(claim_runs.bind_session, c.bind_session, r.queue = any(v_binding))
                                          then v_started end,
                -- under key limits: the shard of each limit the run starts under (else none)
                queue_key_shard = case when v_gate_scopes is not null then v_id_qshards[array_position(v_ids, r.id)] end,
                task_key_shard = case when v_gate_scopes is not null then v_id_tshards[array_position(v_ids, r.id)] end
            from conveyor.task_config c
            where c.name = r.task
              and r.id = any(coalesce(v_ids, array(
                  -- one queue: pick and lock in index order, in this same statement (an array, so the
                  -- generic plan looks the rows up by primary key whatever max is)
                  -- (from the queue's claim hint on, the index range's start: tick_hint.sql)
                  select x.id from conveyor._claim_floor(v_open[1], v_now) f
                  cross join lateral (
                      select p.id from conveyor.runs p
                      where p.status = 'queued' and p.queue = v_open[1]
                        and (p.priority, p.fair_rank, p.run_at, p.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                        and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                      order by p.priority, p.fair_rank, p.run_at, p.id
                      limit v_want
                      for no key update skip locked) x)))
            returning r.id, r.lease_token, r.task, r.queue, r.payload, r.attempts + 1 as attempt, r.failures, r.releases,
                      r.attempt_id, r.priority, r.parent_run_id, r.lease_expires_at, r.timeout_at, r.run_at, c.enabled,
                      r.session_pid is not null as bound, r.fair_rank, r.concurrency_key, r.queue_key_shard, r.task_key_shard
        )
        select
            array_agg(row(c.id, c.lease_token, c.task, c.queue, c.payload, c.attempt, c.failures, c.releases,
                          c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at)::conveyor.claimed_run
                      order by c.priority, c.fair_rank, c.run_at, c.id) filter (where c.enabled),
            array_agg(row(c.id, c.lease_token, null, 'failed',
                          conveyor._failure('task_disabled', format('task "%s" is disabled', c.task)),
                          false, null, null, null)::conveyor._ending) filter (where not c.enabled),
            v_bound or coalesce(bool_or(c.bound and c.enabled), false),
            -- the runs that start work (a disabled task's run fails at once and is no start)
            array_agg(c.queue) filter (where c.enabled), array_agg(c.task) filter (where c.enabled),
            array_agg(c.concurrency_key) filter (where c.enabled),
            array_agg(c.queue_key_shard) filter (where c.enabled), array_agg(c.task_key_shard) filter (where c.enabled)
        into v_batch, v_disabled, v_bound, v_round_queues, v_round_tasks, v_round_keys, v_round_qshards, v_round_tshards
        from claimed c;

        v_claimed := v_claimed || coalesce(v_batch, '{}');
        v_started_queues := v_started_queues || coalesce(v_round_queues, '{}');
        v_started_tasks := v_started_tasks || coalesce(v_round_tasks, '{}');
        v_started_keys := v_started_keys || coalesce(v_round_keys, '{}');
        v_started_qshards := v_started_qshards || coalesce(v_round_qshards, '{}');
        v_started_tshards := v_started_tshards || coalesce(v_round_tshards, '{}');
        exit when v_disabled is null and not coalesce(v_held, false);
        if v_disabled is not null then
            perform conveyor._end_attempts(v_disabled);
        end if;
        if v_rated then
            -- what is left of each limit's room for the next round
            v_queue_caps := conveyor._room_left(v_cap_queues, v_queue_caps, v_round_queues);
            v_task_caps := conveyor._room_left(v_cap_tasks, v_task_caps, v_round_tasks);
            v_full_tasks := v_full_tasks || array(select v_cap_tasks[i] from generate_subscripts(v_cap_tasks, 1) as i
                                                  where v_task_caps[i] <= 0);
            v_open := array(select o from unnest(v_open) o
                            where coalesce(v_queue_caps[array_position(v_cap_queues, o)], 1) > 0);
            exit when cardinality(v_open) = 0;
        end if;
        v_want := claim_runs.max - cardinality(v_claimed);
        exit when v_want <= 0 or v_round >= 10;
        if v_gate_scopes is not null then
            -- (only for another round) the keys with no room left in the shards they hold (or
            -- none) sit out the next rounds, and so does every key at its limit now (as
            -- committed, and with this claim's runs): the next round looks past all of them at
            -- once, however many there are
            v_full_keys := v_full_keys || array(
                select conveyor._key_ref(g.scope, g.name, g.key)
                from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_allowed) as g(scope, name, key, allowed)
                group by g.scope, g.name, g.key
                having sum(g.allowed) <= (select count(*) from unnest(v_round_queues, v_round_tasks, v_round_keys) as x(queue, task, key)
                                          where x.key = g.key
                                            and case g.scope when 'queue' then x.queue = g.name else x.task = g.name end))
              || conveyor._keys_at_limit(v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p);
        end if;
    end loop;
    if v_rated and cardinality(v_started_queues) > 0 then
        -- this claim's starts, in the window of each limit it started runs under (the rows of
        -- those limits are this transaction's until it commits)
        -- each limit's runs started, spread over the shards taken, each up to its room
        with started as (
            select 'queue' as scope, x.name, count(*) as n from unnest(v_started_queues) as x(name) group by x.name
            union all
            select 'task', x.name, count(*) from unnest(v_started_tasks) as x(name) group by x.name
        ),
        shards as (
            select r.scope, r.name, r.shard, r.allowed,
                   coalesce(sum(r.allowed) over (partition by r.scope, r.name order by r.shard
                                                 rows between unbounded preceding and 1 preceding), 0) as before
            from unnest(v_room_scopes, v_room_names, v_room_shards, v_room_allowed) as r(scope, name, shard, allowed)
            where r.allowed > 0
        )
        insert into conveyor._rate_starts (scope, name, shard, at, n)
        select h.scope, h.name, h.shard, v_now, least(h.allowed, s.n - h.before)
        from shards h
        join started s on (s.scope, s.name) = (h.scope, h.name)
        where s.n > h.before;
    end if;
    if v_keyed and cardinality(v_started_keys) > 0 and cardinality(array_remove(v_kl_rate_n, null)) > 0 then
        -- this claim's starts under each key rate limit (the key's lock is this transaction's
        -- until it commits)
        insert into conveyor._rate_starts (scope, name, shard, at, n, key)
        select l.scope || '_key', l.name, case l.scope when 'queue' then x.qshard else x.tshard end, v_now, count(*), x.key
        from unnest(v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards)
             as x(queue, task, key, qshard, tshard)
        join unnest(v_kl_scopes, v_kl_names, v_kl_rate_n) as l(scope, name, rate_n)
          on l.name = case l.scope when 'queue' then x.queue else x.task end
        where x.key is not null and l.rate_n is not null
        group by 1, 2, 3, x.key;
    end if;
    if v_bound then
        -- the session's row, written once per session; only tick deletes it, once it is gone
        insert into conveyor.sessions (pid, started_at, worker, bound_at)
        values (v_pid, v_started, v_worker, v_now)
        on conflict do nothing;
    end if;
    return query select * from unnest(v_claimed);
end
$$;

comment on function conveyor.claim_runs is
    'claim up to max runs from a queue (or several, comma-separated) for a worker; each comes with a lease_token for heartbeat/complete/fail/release';

-- claim_run: claim_runs with max 1.
create or replace function conveyor.claim_run(
    queues text,
    worker text,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns setof conveyor.claimed_run
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query select * from conveyor.claim_runs(queues, worker, 1, lease, tasks, bind_session);
end
$$;

comment on function conveyor.claim_run is
    'claim one run (zero or one row) from a queue (or several, comma-separated)';

-- lease_granted: the lease a claim or heartbeat asking for this one gets (it never goes past
-- max_lease). For workers that time their own lease refreshes, without read access to the
-- defaults.
create or replace function conveyor.lease_granted(lease conveyor.duration)
returns interval
language sql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select least(lease_granted.lease::interval, d.max_lease) from conveyor.defaults d $$;

comment on function conveyor.lease_granted is 'the lease a claim or heartbeat asking for this one gets (capped by max_lease)';

-- pending: how many runs of these queues (comma-separated) are not finished yet: waiting,
-- queued or running. Lets a worker that drains its queues know when it is done, without
-- read access to the run tables.
create or replace function conveyor.pending(queues text)
returns bigint
language plpgsql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return (select count(*) from conveyor.runs r
            where r.queue = any(array(select btrim(q) from unnest(string_to_array(pending.queues, ',')) q))
              and conveyor._live(r.status));
end
$$;

comment on function conveyor.pending is 'runs of these queues (comma-separated) not finished yet: waiting, queued or running';

-- _room_left: each limit's room (p_room, of the limits p_names) less the runs of it in
-- p_started (a round of a claim under rate limits, for the next round).
create or replace function conveyor._room_left(p_names text[], p_room integer[], p_started text[])
returns integer[]
language sql
immutable
as $$
    select array(select p_room[i] - (select count(*) from unnest(coalesce(p_started, '{}')) s where s = p_names[i])::integer
                 from generate_subscripts(p_names, 1) as i order by i)
$$;

-- _rate_limits_of: the rate limits a claim from these queues (of these tasks, null: any) could
-- start runs under: the queues' own, and those of the rate-limited tasks with queued runs in them
-- (a task's limit counts its runs in every queue). A plain SQL function, inlined where it is used.
create or replace function conveyor._rate_limits_of(p_open text[], p_tasks text[])
returns table (scope text, name text, period interval)
language sql
stable
as $$
    select 'queue', q.name, q.rate_limit_period
    from conveyor.queues q
    where q.name = any(p_open) and q.rate_limit_n is not null
    union all
    select 'task', t.name, t.rate_limit_period
    from conveyor.tasks t
    where t.rate_limit_n is not null and (p_tasks is null or t.name = any(p_tasks))
      and exists (select from conveyor.runs r
                  where r.task = t.name and r.status = 'queued' and r.queue = any(p_open))
$$;

-- _rate_allowance: the rate limits a claim from these queues (of these tasks, null: any) starts
-- runs under, with how many runs it may still start under each now, per shard. A limit is
-- split into shards with a share each (_rate_limits); the claim takes shards of each limit for
-- this transaction (FOR NO KEY UPDATE: claims of one shard take turns): free ones with room, in
-- random order, until their room covers p_want, else it waits for one with room (2 s at most).
-- A shard's room is its share less its starts of the window that ends now (clock time), every one
-- committed before the row was ours.
-- A queue's limit counts the runs started from it, a task's its runs in any queue. Needs READ
-- COMMITTED: an older snapshot would miss the starts committed since (22023).
create or replace function conveyor._rate_allowance(p_open text[], p_tasks text[], p_want integer)
returns table (scope text, name text, shard smallint, allowed integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_timeout text := current_setting('lock_timeout');
    v_limit record;
    v_shard record;
    v_room integer;
    v_total integer;
    v_busy boolean;
    v_waited smallint;
begin
    for v_limit in
        select l.scope, l.name, l.period from conveyor._rate_limits_of(p_open, p_tasks) l order by l.scope, l.name
    loop
        if current_setting('transaction_isolation') <> 'read committed' then
            perform conveyor._raise_invalid('a claim under a rate limit needs READ COMMITTED (it must see every start committed before it)');
        end if;
        v_total := 0;
        v_busy := false;
        -- the shards in random order (claims spread over them), each tried without waiting
        for v_shard in
            select l.shard from conveyor._rate_limits l
            where l.scope = v_limit.scope and l.name = v_limit.name
            order by random()
        loop
            perform from conveyor._rate_limits l
            where (l.scope, l.name, l.shard) = (v_limit.scope, v_limit.name, v_shard.shard)
            for no key update skip locked;
            if not found then
                v_busy := true;
                continue;
            end if;
            v_room := conveyor._rate_room(v_limit.scope, v_limit.name, v_shard.shard, v_limit.period);
            if v_room > 0 then
                return query select v_limit.scope, v_limit.name, v_shard.shard, v_room;
                v_total := v_total + v_room;
                exit when v_total >= p_want;
            end if;
        end loop;
        continue when v_total > 0;
        if not v_busy then
            -- every shard is full
            return query select v_limit.scope, v_limit.name, null::smallint, 0;
            continue;
        end if;
        -- the free shards are full: wait for one that another claim holds (2 s at most)
        v_waited := null;
        -- (a caller's shorter lock_timeout stands)
        if v_timeout in ('0', '') or v_timeout::interval > interval '2s' then
            perform set_config('lock_timeout', '2s', true);
        end if;
        begin
            select l.shard into v_waited from conveyor._rate_limits l
            where l.scope = v_limit.scope and l.name = v_limit.name
              and conveyor._rate_room(l.scope, l.name, l.shard, v_limit.period) > 0
            order by random()
            limit 1
            for no key update;
        exception when lock_not_available or deadlock_detected then
            v_waited := null;
        end;
        perform set_config('lock_timeout', v_timeout, true);
        v_room := null;
        if v_waited is not null then
            v_room := conveyor._rate_room(v_limit.scope, v_limit.name, v_waited, v_limit.period);
        end if;
        return query select v_limit.scope, v_limit.name, v_waited, greatest(coalesce(v_room, 0), 0);
    end loop;
end
$$;

-- _rate_room: a shard's share less its starts of the window that ends now (clock time, after
-- the wait for its row: every start committed until then), read by a statement of its own.
-- (plpgsql, not sql: its plan is kept from call to call; a SQL function's is made anew each time)
create or replace function conveyor._rate_room(p_scope text, p_name text, p_shard smallint, p_period interval)
returns integer
language plpgsql
volatile
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    -- computed once: a volatile call in the condition would keep the index from bounding the scan
    v_since timestamptz := conveyor._clock_now() - p_period;
begin
    return (select l.quota - coalesce((select sum(s.n) from conveyor._rate_starts s
                                       where s.scope = p_scope and s.name = p_name and s.shard = p_shard
                                         and s.at > v_since), 0)::integer
            from conveyor._rate_limits l
            where (l.scope, l.name, l.shard) = (p_scope, p_name, p_shard));
end
$$;

-- _clock_now: the time now, not the transaction's: clock_timestamp(), or the test clock when one
-- is set (conveyor._now() then differs from the transaction time). Rate-limited claims start
-- their runs at it, after they waited for the limits' rows.
create or replace function conveyor._clock_now()
returns timestamptz
language sql
volatile
as $$ select case when conveyor._now() = transaction_timestamp() then clock_timestamp() else conveyor._now() end $$;

-- rate_limited_until: when a run of these queues (comma-separated) that a rate limit holds back
-- can start: the earliest time a shard of one of the limits with no room left now has room
-- again (the oldest starts of its window have left it). Null: no limit holds any of their runs
-- back now. For workers: sleep until then rather than claim in a loop.
create or replace function conveyor.rate_limited_until(queues text)
returns timestamptz
language sql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    with names as (
        select array(select btrim(q) from unnest(string_to_array(rate_limited_until.queues, ',')) q where btrim(q) <> '') as open
    ),
    limits as (
        select l.* from names, conveyor._rate_limits_of(names.open, null) l
    ),
    shards as (
        select l.scope, l.name, l.period, r.shard, r.quota
        from limits l join conveyor._rate_limits r on r.scope = l.scope and r.name = l.name
    ),
    -- each shard's starts of the window, newest first, with the runs started since each
    windows as (
        select h.scope, h.name, h.shard, h.quota, h.period, s.at,
               sum(s.n) over (partition by h.scope, h.name, h.shard order by s.at desc
                              rows between unbounded preceding and current row) as since
        from shards h
        join conveyor._rate_starts s on s.scope = h.scope and s.name = h.name and s.shard = h.shard
                                     and s.at > conveyor._now() - h.period
    ),
    -- a full shard has room once the start that filled it has left the window
    full_shards as (
        select distinct on (w.scope, w.name, w.shard) w.scope, w.name, w.at + w.period as free_at
        from windows w
        where w.since >= w.quota
        order by w.scope, w.name, w.shard, w.at desc
    )
    -- a limit holds runs back while every shard of it is full; it frees with its first shard
    select min(f.free_at)
    from (select f.scope, f.name, min(f.free_at) as free_at, count(*) as full_count
          from full_shards f group by f.scope, f.name) f
    join (select h.scope, h.name, count(*) as shard_count from shards h group by h.scope, h.name) c
      on (c.scope, c.name) = (f.scope, f.name)
    where f.full_count = c.shard_count
$$;

comment on function conveyor.rate_limited_until is
    'when a run of these queues that a rate limit holds back can start (null: none is held back now)';

-- _key_ref: one key under one key limit (scope queue or task, the queue's or task's name, the
-- key), as one text: the name of its lock and of its entry in claim_runs' list of full keys.
-- (Names of queues and tasks hold no control characters: the first two separators are theirs.)
create or replace function conveyor._key_ref(p_scope text, p_name text, p_key text)
returns text
language sql
immutable
as $$ select p_scope || E'\x1f' || p_name || E'\x1f' || p_key $$;

-- _key_shards: how many shards a key limit is split into (up to 8, none with a share of 0 of
-- its concurrency or its rate), so that as many claims of one key can go at once.
create or replace function conveyor._key_shards(p_conc integer, p_rate integer)
returns integer
language sql
immutable
as $$ select least(8, coalesce(p_conc, 8), coalesce(p_rate, 8)) $$;

-- _key_running: the running runs of these keys under each of these key limits (scope, name,
-- and its number of shards), a row each, with the shard of the limit it started under: -1 for
-- those under none of its shards (claimed before it was set or changed; they count against
-- every shard). One read of the keys' running runs (runs_running_by_key).
create or replace function conveyor._key_running(p_keys text[], p_scopes text[], p_names text[], p_shards integer[])
returns table (scope text, name text, key text, shard smallint)
language sql
stable
-- (no settings of its own: inlined where it is used, a claim under the claim's search_path)
as $$
    select l.scope, l.name, r.concurrency_key,
           case when x.s between 0 and l.shards - 1 then x.s else -1 end::smallint
    -- (key by key, each an index range: read as "= any(p_keys)" the planner, which seldom has
    -- statistics of running runs, scanned every running run and filtered them by key)
    from (select k.key as concurrency_key, x.queue, x.task, x.queue_key_shard, x.task_key_shard
          from unnest(p_keys) as k(key)
          cross join lateral (
              select r.queue, r.task, r.queue_key_shard, r.task_key_shard
              from conveyor.runs r
              where r.status = 'running' and r.concurrency_key = k.key
              offset 0) x
          offset 0) r
    join unnest(p_scopes, p_names, p_shards) as l(scope, name, shards)
      on l.name = case l.scope when 'queue' then r.queue else r.task end
    cross join lateral (select case l.scope when 'queue' then r.queue_key_shard else r.task_key_shard end as s) x
$$;

-- _key_room: the room of each key under each shard of a key limit a claim holds (p_g_*: scope,
-- name, key, shard; null shard: none held, room 0), as committed now: the shard's share less
-- the key's running runs under it (and its starts of the rate window, with the claim's own of
-- earlier rounds, p_st_*), less those under none of this split's shards, and less what other
-- shards hold over their share (a limit lowered: they borrowed it from the others). So the
-- shards together never let the key past its limit, whatever the split runs were started under.
create or replace function conveyor._key_room(
    p_g_scopes text[], p_g_names text[], p_g_keys text[], p_g_shards smallint[],
    p_scopes text[], p_names text[], p_conc integer[], p_rate_n integer[], p_rate_p interval[], p_shards integer[],
    p_keys text[], p_since timestamptz, p_want integer,
    p_st_queues text[], p_st_tasks text[], p_st_keys text[], p_st_qshards smallint[], p_st_tshards smallint[])
returns integer[]
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- (plpgsql, not sql: its plan is kept from call to call; a SQL function's is made anew each time)
as $$
begin
    return (
    with l as (
        select x.* from unnest(p_scopes, p_names, p_rate_n, p_rate_p, p_shards) as x(scope, name, rate_n, rate_p, shards)
    ),
    -- running runs per shard (-1: under none of the split's)
    -- (a row each: the sums are made in Rust)
    used as (
        select array_agg(u.scope) as scopes, array_agg(u.name) as names, array_agg(u.key) as keys,
               array_agg(u.shard) as shards, array_agg(1::bigint) as ns
        from conveyor._key_running(p_keys, p_scopes, p_names, p_shards) u
    ),
    -- starts of the rate window per shard (-1: none of the split's), this claim's earlier ones too
    started as (
        select array_agg(s.scope) as scopes, array_agg(s.name) as names, array_agg(s.key) as keys,
               array_agg(s.shard) as shards, array_agg(s.n) as ns
        from (select x.scope, x.name, x.key, case when x.shard between 0 and l.shards - 1 then x.shard else -1 end::smallint as shard,
                     sum(x.n)::bigint as n
              from (select l.scope, s.name, s.key, s.shard, s.n, s.at
                    from l
                    join conveyor._rate_starts s
                      on s.scope = l.scope || '_key' and s.name = l.name and s.key = any(p_keys) and s.at > p_since - l.rate_p
                    where l.rate_n is not null
                    union all
                    select case when t.shard_scope = 'queue' then 'queue' else 'task' end,
                           case when t.shard_scope = 'queue' then t.queue else t.task end, t.key, t.shard, 1, p_since
                    from unnest(p_st_queues, p_st_tasks, p_st_keys, p_st_qshards, p_st_tshards) as st(queue, task, key, qshard, tshard)
                    cross join lateral (values ('queue', st.queue, st.task, st.key, st.qshard), ('task', st.queue, st.task, st.key, st.tshard))
                         as t(shard_scope, queue, task, key, shard)
                    where t.key is not null and t.shard is not null) x
              join l on (l.scope, l.name) = (x.scope, x.name)
              where l.rate_n is not null and x.at > p_since - l.rate_p
              group by 1, 2, 3, 4) s
    )
    -- (the sums, in Rust: joined here, each gate met every count, in a time that grew with the
    -- square of the keys)
    select conveyor._key_rooms(p_g_scopes, p_g_names, p_g_keys, p_g_shards,
                               p_scopes, p_names, p_conc, p_rate_n, p_shards,
                               u.scopes, u.names, u.keys, u.shards, u.ns,
                               s.scopes, s.names, s.keys, s.shards, s.ns, p_want)
    from used u, started s);
end
$$;

-- _keys_at_limit: the keys (_key_ref) at these key limits now, as committed: as many runs
-- running as key_concurrency, or as many starts in the rate window as key_rate_limit. Read from
-- the running keyed runs (runs_running_by_key) and the starts of the windows, never from the
-- queued runs.
create or replace function conveyor._keys_at_limit(p_scopes text[], p_names text[], p_conc integer[],
                                                   p_rate_n integer[], p_rate_p interval[])
returns text[]
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return (select coalesce(array_agg(distinct x.ref), '{}') from (
        select conveyor._key_ref(l.scope, l.name, r.concurrency_key) as ref
        from unnest(p_scopes, p_names, p_conc) as l(scope, name, conc)
        join conveyor.runs r
          on r.status = 'running' and r.concurrency_key is not null
         and case l.scope when 'queue' then r.queue = l.name else r.task = l.name end
        where l.conc is not null
        group by l.scope, l.name, r.concurrency_key, l.conc
        having count(*) >= l.conc
        union all
        select conveyor._key_ref(l.scope, l.name, s.key)
        from unnest(p_scopes, p_names, p_rate_n, p_rate_p) as l(scope, name, rate_n, period)
        join conveyor._rate_starts s
          on s.scope = l.scope || '_key' and s.name = l.name and s.at > conveyor._clock_now() - l.period
        where l.rate_n is not null
        group by l.scope, l.name, s.key, l.rate_n
        having sum(s.n) >= l.rate_n) x);
end
$$;

-- _candidates_by_key: a later round of a claim under key limits, in one queue: the best queued
-- runs (up to p_take, locked SKIP LOCKED) but those of the keys and tasks it must leave out
-- (p_full_keys, _key_ref; p_full_tasks), read key by key (runs_queued_by_key) so that the runs of
-- a key at its limit are never read at all, and the runs without a key (turn 0, by priority).
-- Null when the queue's queued runs have more than 200 (priority, key) pairs: the claim then
-- reads the queue in claim order, past the keys left out.
create or replace function conveyor._candidates_by_key(p_queue text, p_tasks text[], p_full_tasks text[],
                                                       p_full_keys text[], p_take integer)
returns conveyor._candidate[]
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_priorities smallint[];
    v_keys text[];
    v_ids conveyor.ulid[];
begin
    -- the (priority, key) pairs of the queued keyed runs, skipping from one to the next in the index
    with recursive pair (priority, key, n) as (
        (select r.priority, r.concurrency_key, 1
         from conveyor.runs r
         where r.queue = p_queue and r.status = 'queued' and r.concurrency_key is not null
         order by r.priority, r.concurrency_key
         limit 1)
        union all
        select x.priority, x.key, p.n + 1
        from pair p
        cross join lateral (
            select r.priority, r.concurrency_key as key
            from conveyor.runs r
            where r.queue = p_queue and r.status = 'queued' and r.concurrency_key is not null
              and (r.priority, r.concurrency_key) > (p.priority, p.key)
            order by r.priority, r.concurrency_key
            limit 1) x
        where p.n <= 200
    )
    select array_agg(p.priority), array_agg(p.key) into v_priorities, v_keys from pair p;
    if cardinality(v_keys) > 200 then
        return null;
    end if;
    -- the candidates' ids first, then their locks by id: a row a concurrent claim changed is
    -- re-checked against "id = any(...)" alone, not by running the search again for it
    v_ids := array(
            -- each key's best runs, but the keys left out in this queue
            select x.id
            from unnest(v_priorities, v_keys) as k(priority, key)
            cross join lateral (
                select r.id from conveyor.runs r
                where r.queue = p_queue and r.status = 'queued' and r.priority = k.priority
                  and r.concurrency_key = k.key
                  and (p_tasks is null or r.task = any(p_tasks))
                  and not conveyor._held_back(r.queue, r.task, r.concurrency_key, p_full_tasks, p_full_keys)
                order by r.fair_rank
                limit p_take) x
            where conveyor._key_ref('queue', p_queue, k.key) <> all(p_full_keys)
            union all
            -- and the runs without a key (all at turn 0), priority by priority
            select y.id
            from generate_series(0, 9) as q(priority)
            cross join lateral (
                select r.id from conveyor.runs r
                where r.queue = p_queue and r.status = 'queued' and r.priority = q.priority and r.fair_rank = 0
                  and r.concurrency_key is null
                  and (p_tasks is null or r.task = any(p_tasks))
                  and r.task <> all(p_full_tasks)
                order by r.run_at, r.id
                limit p_take) y);
    return array(
        select row(c.id, c.task, c.priority, c.run_at, c.queue, c.concurrency_key, c.fair_rank)::conveyor._candidate
        from conveyor.runs c
        where c.id = any(v_ids) and c.status = 'queued'
        order by c.priority, c.fair_rank, c.run_at, c.id
        limit p_take
        for no key update skip locked);
end
$$;

-- _held_back: whether a claim's later round leaves this run out: its task has no room (p_tasks),
-- or its key has none under its queue's or its task's key limit (p_keys, _key_ref). A function,
-- not an inline condition: the planner must not guess its selectivity from the arrays.
create or replace function conveyor._held_back(p_queue text, p_task text, p_key text, p_tasks text[], p_keys text[])
returns boolean
language plpgsql
immutable
as $$
begin
    return p_task = any(p_tasks)
        or (p_key is not null and (conveyor._key_ref('queue', p_queue, p_key) = any(p_keys)
                                   or conveyor._key_ref('task', p_task, p_key) = any(p_keys)));
end
$$;

-- _fair_rank: a keyed run's turn as it becomes queued (enqueued due, delivered, given back):
-- after the last queued run of its key (in its queue and priority), and never before the turn
-- the queue is at: the latest turn of its running keyed runs, or its first queued run's if
-- later. So a key that was idle goes next (not before the keys being served: a key held back
-- at a low turn by its limit does not pull the clock back), and a flooded key takes one turn
-- in each round of the keys. Runs without a key keep 0 (the trigger does not fire for them).
-- Concurrent producers of one key may draw the same turn: ties go by due time.
create or replace function conveyor._fair_rank()
returns trigger
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    new.fair_rank := greatest(
        (select r.fair_rank + 1 from conveyor.runs r
         where r.queue = new.queue and r.priority = new.priority and r.concurrency_key = new.concurrency_key
           and r.status = 'queued'
         order by r.fair_rank desc
         limit 1),
        (select r.fair_rank from conveyor.runs r
         where r.queue = new.queue and r.priority = new.priority and r.status = 'queued'
         order by r.fair_rank, r.run_at, r.id
         limit 1),
        (select r.fair_rank from conveyor.runs r
         where r.queue = new.queue and r.priority = new.priority and r.status = 'running'
           and r.concurrency_key is not null and r.fair_rank > 0
         order by r.fair_rank desc
         limit 1),
        0);
    return new;
end
$$;

create or replace trigger runs_fair_rank_on_insert
    before insert on conveyor.runs
    for each row when (new.concurrency_key is not null and new.status = 'queued')
    execute function conveyor._fair_rank();

create or replace trigger runs_fair_rank_on_update
    before update of status on conveyor.runs
    for each row when (new.concurrency_key is not null and new.status = 'queued' and old.status <> 'queued')
    execute function conveyor._fair_rank();

-- ============================================================================================
-- sql/functions/finish.sql

-- functions/finish.sql: workers end attempts (README: Workers). Each call builds its endings and
-- hands them to conveyor._end_attempts (functions/state_machine.sql), which decides what an
-- outcome does to the run.

-- complete_run: running -> succeeded (also when a cancel was requested: the work was done).
create or replace function conveyor.complete_run(run_id conveyor.ulid, lease_token uuid, result jsonb default null)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._end_one(row(run_id, lease_token, null, 'succeeded', null, null, result, null, null), true);
end
$$;

comment on function conveyor.complete_run is
    'finish an attempt successfully (optional result); raises CV001 if the lease is stale';

-- fail_run: running -> retrying (retryable, budget left; run_at = now + backoff) or failed.
-- The failure is {code: task_failed, message, meta}. meta that is not a JSON object fails the
-- attempt with configuration_invalid (not retried) instead.
create or replace function conveyor.fail_run(
    run_id conveyor.ulid,
    lease_token uuid,
    message text,
    meta jsonb default null,
    retryable boolean default true
)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._end_one(
        case when meta is not null and jsonb_typeof(meta) <> 'object' then
            row(run_id, lease_token, null, 'failed',
                conveyor._failure('configuration_invalid',
                                  format('fail_run meta must be a JSON object, got %s', jsonb_typeof(meta)),
                                  jsonb_build_object('message', message, 'meta', meta)),
                false, null, null, null)::conveyor._ending
        else
            row(run_id, lease_token, null, 'failed', conveyor._failure('task_failed', message, meta),
                coalesce(retryable, true), null, null, null)::conveyor._ending
        end);
end
$$;

comment on function conveyor.fail_run is
    'fail an attempt: retried after the backoff delay while the budget lasts (retryable), else failed; returns the new status';

-- release_run: running -> released, due again after `delay` (business waiting: no failure is
-- counted, the retry budget is untouched). A delay that is missing or not a duration, or meta
-- that is not an object, fails the attempt with configuration_invalid instead.
create or replace function conveyor.release_run(
    run_id conveyor.ulid,
    lease_token uuid,
    delay text,
    reason text default null,
    meta jsonb default null
)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_delay interval := conveyor._duration_or_null(delay);
    v_problem text;
begin
    v_problem := case
        when v_delay is null then format('release_run needs a delay such as ''30s'', got %s',
                                         coalesce(quote_literal(delay), 'null'))
        when meta is not null and jsonb_typeof(meta) <> 'object' then
            format('release_run meta must be a JSON object, got %s', jsonb_typeof(meta))
    end;
    if v_problem is not null then
        return conveyor._end_one(row(run_id, lease_token, null, 'failed',
            conveyor._failure('configuration_invalid', v_problem,
                              jsonb_build_object('delay', delay, 'reason', reason, 'meta', meta)),
            false, null, null, null));
    end if;
    return conveyor._end_one(row(run_id, lease_token, null, 'released', null, null, null, v_delay,
        jsonb_strip_nulls(jsonb_build_object('reason', conveyor._sanitize(reason), 'meta', conveyor._clean_json(meta)))));
end
$$;

comment on function conveyor.release_run is
    'release an attempt: the run waits (delay, e.g. ''30s'') and is claimed again; not a failure, never spends the retry budget';

-- return_run: running -> queued (outcome interrupted): a worker shutting down gives the run
-- back unfinished; it is claimable again at once.
create or replace function conveyor.return_run(run_id conveyor.ulid, lease_token uuid)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._end_one(row(run_id, lease_token, null, 'interrupted', null, null, null, null, null));
end
$$;

comment on function conveyor.return_run is
    'give a run back unfinished (worker shutting down): it is queued again at once; no failure counted';

-- finish_runs: end many attempts in one call and one transaction. `items` is a JSON array of
-- {run_id, lease_token, outcome: succeeded|failed|released|returned, result, message, meta,
--  retryable, delay, reason}. Malformed items fail their attempt with configuration_invalid;
-- items whose lease is stale change nothing and come back with status null.
create or replace function conveyor.finish_runs(items jsonb)
returns table (run_id conveyor.ulid, status conveyor.run_status)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    if items is null or jsonb_typeof(items) <> 'array' then
        perform conveyor._raise_invalid(format('finish_runs takes a JSON array of items, got %s', coalesce(jsonb_typeof(items), 'null')));
    end if;
    if exists (select from jsonb_array_elements(items) e where jsonb_typeof(e) <> 'object') then
        perform conveyor._raise_invalid('finish_runs items must be JSON objects {run_id, lease_token, outcome, ...}');
    end if;

    return query
    with item as (
        select x.n, conveyor._ulid_or_null(x.run_id) as id, conveyor._uuid_or_null(x.lease_token) as token,
               x.outcome, nullif(x.result, 'null') as result, x.message, nullif(x.meta, 'null') as meta,
               x.retryable, x.delay, conveyor._duration_or_null(x.delay) as wait, x.reason
        from rows from (jsonb_to_recordset(items) as (run_id text, lease_token text, outcome text, result jsonb,
                        message text, meta jsonb, retryable jsonb, delay text, reason text))
             with ordinality as x(run_id, lease_token, outcome, result, message, meta, retryable, delay, reason, n)
    ),
    checked as (
        select i.*,
               case
                   when i.outcome is null or i.outcome not in ('succeeded', 'failed', 'released', 'returned') then
                       format('outcome must be succeeded, failed, released or returned, got %s', coalesce(i.outcome, 'nothing'))
                   when i.meta is not null and jsonb_typeof(i.meta) <> 'object' then
                       format('meta must be a JSON object, got %s', jsonb_typeof(i.meta))
                   when i.retryable is not null and jsonb_typeof(i.retryable) not in ('boolean', 'null') then
                       format('retryable must be true or false, got %s', i.retryable)
                   when i.outcome = 'released' and i.wait is null then
                       format('a release needs a delay such as "30s", got %s', coalesce(quote_literal(i.delay), 'nothing'))
               end as problem
        from item i
    ),
    ended as (
        -- every item, in item order: an ending's ord is its item's position, so a status is
        -- reported for the item that ended the attempt and null for any other (a stale or forged
        -- item naming the same run)
        select e.ord, e.status from conveyor._end_attempts(array(
            select case
                when c.problem is not null then
                    row(c.id, c.token, null, 'failed', conveyor._failure('configuration_invalid', c.problem,
                        jsonb_strip_nulls(jsonb_build_object('outcome', c.outcome, 'message', c.message, 'meta', c.meta,
                                                             'delay', c.delay, 'retryable', c.retryable))),
                        false, null, null, null)::conveyor._ending
                when c.outcome = 'succeeded' then
                    row(c.id, c.token, null, 'succeeded', null, null, c.result, null, null)::conveyor._ending
                when c.outcome = 'failed' then
                    row(c.id, c.token, null, 'failed', conveyor._failure('task_failed', c.message, c.meta),
                        case when jsonb_typeof(c.retryable) = 'boolean' then (c.retryable)::boolean else true end,
                        null, null, null)::conveyor._ending
                when c.outcome = 'released' then
                    row(c.id, c.token, null, 'released', null, null, null, c.wait,
                        jsonb_strip_nulls(jsonb_build_object('reason', conveyor._sanitize(c.reason), 'meta', conveyor._clean_json(c.meta))))::conveyor._ending
                else
                    row(c.id, c.token, null, 'interrupted', null, null, null, null, null)::conveyor._ending
            end
            from checked c
            order by c.n),
            (select bool_and(c.outcome = 'succeeded' and c.problem is null) from checked c)) e
    )
    select i.id, e.status
    from item i
    left join ended e on e.ord = i.n
    order by i.n;
end
$$;

comment on function conveyor.finish_runs is
    'end many attempts at once: items [{run_id, lease_token, outcome: succeeded|failed|released|returned, result, message, meta, retryable, delay, reason}]; status null = stale lease';

-- finish_and_claim: finish the runs in hand and claim the next ones, in one call and one
-- transaction, so a worker commits once per cycle instead of twice (a batch-1 worker pays one
-- commit per run). `items` is finish_runs' (null or [] finishes nothing); the rest is
-- claim_runs'. One row per item first (kind 'finished', status as finish_runs reports it: null
-- for a stale lease), then one per claimed run (kind 'claimed', with claim_runs' columns). A
-- malformed call (items not an array of objects, a bad max or worker) refuses the whole call:
-- nothing is finished and nothing claimed; a malformed item fails its run, as in finish_runs.
create or replace function conveyor.finish_and_claim(
    items jsonb,
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns table (
    kind text,
    run_id conveyor.ulid,
    status conveyor.run_status,
    lease_token uuid,
    task text,
    queue text,
    payload jsonb,
    attempt integer,
    failures integer,
    releases integer,
    attempt_id conveyor.ulid,
    priority smallint,
    parent_run_id conveyor.ulid,
    lease_expires_at timestamptz,
    timeout_at timestamptz
)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    if finish_and_claim.items is not null and finish_and_claim.items <> '[]'::jsonb then
        return query
        select 'finished'::text, f.run_id, f.status, null::uuid, null::text, null::text, null::jsonb, null::integer,
               null::integer, null::integer, null::conveyor.ulid, null::smallint, null::conveyor.ulid,
               null::timestamptz, null::timestamptz
        from conveyor.finish_runs(finish_and_claim.items) f;
    end if;
    return query
    select 'claimed'::text, c.run_id, 'running'::conveyor.run_status, c.lease_token, c.task, c.queue, c.payload,
           c.attempt, c.failures, c.releases, c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at
    from conveyor.claim_runs(finish_and_claim.queues, finish_and_claim.worker, finish_and_claim.max,
                             finish_and_claim.lease, finish_and_claim.tasks, finish_and_claim.bind_session) c;
end
$$;

comment on function conveyor.finish_and_claim is
    'finish the runs in hand (finish_runs items) and claim the next (claim_runs), in one transaction: rows of kind finished, then claimed';

-- ============================================================================================
-- sql/functions/running.sql

-- functions/running.sql: what a worker may do while an attempt runs: heartbeats (lease, cancel
-- requests) and logs.

-- heartbeat: extend a running run's lease by `extend` (default: the task's lease), never by
-- more than max_lease; returns true when cancellation was requested.
create or replace function conveyor.heartbeat(run_id conveyor.ulid, lease_token uuid, extend conveyor.duration default null)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_cancel boolean;
begin
    if extend is not null and extend::interval <= interval '0' then
        perform conveyor._raise_invalid('extend must be longer than 0s');
    end if;
    update conveyor.runs r
    set lease_expires_at = conveyor._now() + least(coalesce(heartbeat.extend::interval, c.lease), c.max_lease)
    from conveyor.task_config c
    where r.id = heartbeat.run_id and r.lease_token = heartbeat.lease_token  -- a token is held only while running
      and c.name = r.task
    returning r.cancel_requested_at is not null into v_cancel;
    if not found then
        perform conveyor._raise_stale(heartbeat.run_id, heartbeat.lease_token);
    end if;
    return v_cancel;
end
$$;

comment on function conveyor.heartbeat is
    'extend the lease of a running attempt (never beyond max_lease); returns true when cancellation was requested';

-- append_log: append text to the current attempt's log (one row per append). Past the task's
-- log_max_size: truncate (default) keeps what fits and drops the rest; kill_task ends the
-- attempt with outcome log_overflow (a retryable failure). Returns appended, truncated or killed.
create or replace function conveyor.append_log(run_id conveyor.ulid, lease_token uuid, text text)
returns text
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run record;
    v_now timestamptz := conveyor._now();
    -- what a dashboard or terminal shows: no control characters but tab and newline, no bidi
    -- controls (conveyor._clean)
    v_text text := conveyor._clean(append_log.text);
    v_len integer := octet_length(v_text);
    v_room integer;
    v_part text;
begin
    select r.log_size, r.attempt_id, c.log_max_size, c.log_on_full into v_run
    from conveyor.runs r
    join conveyor.task_config c on c.name = r.task
    where r.id = append_log.run_id and r.lease_token = append_log.lease_token  -- held only while running
    for no key update of r;
    if not found then
        perform conveyor._raise_stale(append_log.run_id, append_log.lease_token);
    end if;
    if v_text is null or v_len = 0 then
        return 'appended';
    end if;

    v_room := greatest(v_run.log_max_size - v_run.log_size, 0);
    if v_len <= v_room then
        v_part := v_text;
    else
        -- the longest prefix that fits in v_room bytes, whole characters only
        v_part := left(v_text, v_room);
        while octet_length(v_part) > v_room loop
            v_part := left(v_part, -greatest(1, (octet_length(v_part) - v_room) / 4));
        end loop;
    end if;
    if v_part <> '' then
        insert into conveyor.attempt_logs (run_id, attempt_id, at, chunk)
        values (append_log.run_id, v_run.attempt_id, v_now, v_part);
        update conveyor.runs r set log_size = r.log_size + octet_length(v_part) where r.id = append_log.run_id;
    end if;
    if v_len <= v_room then
        return 'appended';
    end if;
    if v_run.log_on_full = 'kill_task' then
        perform conveyor._end_one(row(append_log.run_id, append_log.lease_token, null, 'log_overflow',
            conveyor._failure('log_overflow',
                              format('log exceeded log_max_size of %s bytes', v_run.log_max_size)),
            true, null, null, null));
        return 'killed';
    end if;
    return 'truncated';
end
$$;

comment on function conveyor.append_log is
    'append text to the running attempt''s log; returns appended, truncated (log_max_size reached) or killed (log_on_full = kill_task)';

-- ============================================================================================
-- sql/functions/operators.sql

-- functions/operators.sql: cancel and retry, one run or in bulk (README: Operators). Which runs
-- qualify is asked of the state machine (conveyor._allowed, conveyor._live).

-- _cancel: cancel one locked run. Waiting or queued: cancelled at once. Running: the request is
-- recorded (event run.cancel_requested) and the worker's next finishing call decides.
create or replace function conveyor._cancel(p_run conveyor.runs)
returns text
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
begin
    if p_run.status <> 'running' and conveyor._allowed(p_run.status, 'cancelled') then
        update conveyor.runs r set status = 'cancelled', finished_at = greatest(v_now, r.started_at)
        where r.id = p_run.id;
        return 'cancelled';
    elsif p_run.status = 'running' then
        if p_run.cancel_requested_at is null then
            update conveyor.runs r set cancel_requested_at = v_now where r.id = p_run.id;
            insert into conveyor.events (run_id, at, type, attempt) values (p_run.id, v_now, 'run.cancel_requested', p_run.attempts + 1);
        end if;
        return 'cancel_requested';
    end if;
    return null;
end
$$;

-- cancel_run: cancel a run: at once if it is not running; if it is, request it (heartbeat
-- answers true; the worker's next finishing call ends it cancelled, unless it completes).
create or replace function conveyor.cancel_run(run_id conveyor.ulid)
returns text
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_result text;
begin
    select * into v_run from conveyor.runs r where r.id = cancel_run.run_id for no key update;
    if not found then
        perform conveyor._raise_unknown_run(cancel_run.run_id);
    end if;
    v_result := conveyor._cancel(v_run);
    if v_result is null then
        perform conveyor._raise_already_finished(cancel_run.run_id, v_run.status);
    end if;
    return v_result;
end
$$;

comment on function conveyor.cancel_run is
    'cancel a run: returns cancelled (it was waiting) or cancel_requested (it is running; the worker is told by heartbeat)';

create or replace function conveyor.cancel_runs(
    queue text default null,
    task text default null,
    status conveyor.run_status default null,
    max integer default 1000
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_count integer := 0;
begin
    for v_run in
        select * from conveyor.runs r
        where conveyor._live(r.status)
          and (cancel_runs.status is null or r.status = cancel_runs.status)
          and (cancel_runs.queue is null or r.queue = cancel_runs.queue)
          and (cancel_runs.task is null or r.task = cancel_runs.task)
        order by r.id
        limit greatest(cancel_runs.max, 0)
        for no key update skip locked
    loop
        if conveyor._cancel(v_run) is not null then
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end
$$;

comment on function conveyor.cancel_runs is
    'cancel up to max unfinished runs matching queue/task/status (running ones get a cancel request); returns how many';

-- _retry_refusal: why a run cannot be retried, or null.
create or replace function conveyor._retry_refusal(p_run conveyor.runs)
returns text
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return case
        when not conveyor._allowed(p_run.status, 'queued') or not conveyor._finished(p_run.status) then
            format('run %s is %s: only failed, cancelled, or succeeded runs without a result can be retried', p_run.id, p_run.status)
        when p_run.status = 'succeeded' and p_run.result is not null then
            format('run %s succeeded with a result: retrying would discard it', p_run.id)
        when exists (select from conveyor.runs c where c.parent_run_id = p_run.id) then
            format('run %s has child runs: retrying would discard what they were spawned from', p_run.id)
    end;
end
$$;

-- _retry: requeue one locked, retryable run with a fresh budget (failure_base = failures);
-- counters stay, old attempts stay in history; queued, or scheduled when its bounded queue or
-- capped task has no room (tick delivers it then).
create or replace function conveyor._retry(p_run conveyor.runs)
returns conveyor.run_status
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
    v_status conveyor.run_status;
begin
    v_status := case when conveyor._free_capacity(p_run.queue, p_run.task, 1) > 0 then 'queued' else 'scheduled' end;
    update conveyor.runs r
    set status = v_status,
        run_at = v_now,
        failure_base = r.failures,
        error = null,
        result = null,
        finished_at = null,
        cancel_requested_at = null,
        last_delay = null
    where r.id = p_run.id;
    return v_status;
end
$$;

-- retry_run: retry a failed or cancelled run (or a succeeded one without result and children)
-- under the task's latest config; refused with the reason otherwise (CV005).
create or replace function conveyor.retry_run(run_id conveyor.ulid)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_refusal text;
begin
    select * into v_run from conveyor.runs r where r.id = retry_run.run_id for no key update;
    if not found then
        perform conveyor._raise_unknown_run(retry_run.run_id);
    end if;
    v_refusal := conveyor._retry_refusal(v_run);
    if v_refusal is not null then
        perform conveyor._raise_retry_refused(v_refusal);
    end if;
    return conveyor._retry(v_run);
end
$$;

comment on function conveyor.retry_run is
    'retry a failed/cancelled run (or a succeeded one with no result and no children) with a fresh retry budget';

-- retry_runs / cancel_runs: the bulk forms for operators, by queue, task and status, at most
-- `max` runs (oldest first); runs that cannot be retried are skipped. Return how many changed.
create or replace function conveyor.retry_runs(
    queue text default null,
    task text default null,
    status conveyor.run_status default 'failed',
    since timestamptz default null,
    max integer default 1000
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_count integer := 0;
begin
    if not conveyor._allowed(retry_runs.status, 'queued') or not conveyor._finished(retry_runs.status) then
        perform conveyor._raise_invalid(format('retry_runs takes status failed, cancelled or succeeded, got %s', retry_runs.status));
    end if;
    for v_run in
        select * from conveyor.runs r
        where r.status = retry_runs.status
          and (retry_runs.queue is null or r.queue = retry_runs.queue)
          and (retry_runs.task is null or r.task = retry_runs.task)
          and (retry_runs.since is null or r.finished_at >= retry_runs.since)
        order by r.finished_at, r.id
        limit greatest(retry_runs.max, 0)
        for no key update skip locked
    loop
        if conveyor._retry_refusal(v_run) is null then
            perform conveyor._retry(v_run);
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end
$$;

comment on function conveyor.retry_runs is
    'retry up to max runs matching queue/task/status (default failed) finished since a time; returns how many';

-- ============================================================================================
-- sql/functions/tick_expire.sql

-- functions/tick_expire.sql: tick step `expire`: leases and timeouts that ran out, and runs
-- bound to a session that is gone.

-- _expiry: the ending tick gives a running run whose lease or timeout ran out, or whose bound
-- session is gone: outcome timeout when the timeout passed, else crashed (the worker is
-- presumed dead: no heartbeat, or its session ended).
create or replace function conveyor._expiry(p_run conveyor.runs, p_now timestamptz)
returns conveyor._ending
language sql
stable
as $$
    select row(p_run.id, null, p_run.attempt_id,
               case when p_run.timeout_at <= p_now then 'timeout' else 'crashed' end,
               case when p_run.timeout_at <= p_now
                    then conveyor._failure('timeout', format('attempt %s exceeded its timeout of %s',
                                           p_run.attempts + 1, conveyor._duration_text(p_run.timeout_at - p_run.started_at)))
                    when p_run.lease_expires_at <= p_now
                    then conveyor._failure('crashed', format('no heartbeat before the lease expired at %s: worker %s is presumed dead',
                                           to_char(p_run.lease_expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                           coalesce(p_run.worker, '?')))
                    else conveyor._failure('crashed', format('the session that claimed it (backend pid %s, started %s) ended: worker %s is presumed dead',
                                           p_run.session_pid,
                                           to_char(p_run.session_started_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                           coalesce(p_run.worker, '?')))
               end,
               true, null, null, null)::conveyor._ending
$$;

-- _gone_sessions: the bound sessions (conveyor.sessions) that are no longer connected: no
-- backend has the pid, or the backend with the pid started at another time (pids are reused;
-- after a crash restart or a failover every old session is gone). Where pg_stat_activity hides
-- a backend's start time (it shows it only to the session's own role, members of
-- pg_read_all_stats and superusers), a backend with the pid counts as the session: a live
-- session is never taken for a gone one, whoever calls tick.
create or replace function conveyor._gone_sessions()
returns setof conveyor.sessions
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    -- a fresh list of backends, read after the statement below took its snapshot: a session
    -- whose row that snapshot sees committed it while connected, so it is in the list unless it
    -- has ended since
    perform pg_stat_clear_snapshot();
    return query
    select s.* from conveyor.sessions s
    where not exists (select from pg_stat_get_activity(null) a
                      where a.pid = s.pid and (a.backend_start = s.started_at or a.backend_start is null));
end
$$;

-- _expire_leases: end attempts whose lease ran out or whose bound session is gone (outcome
-- crashed) or whose timeout passed (outcome timeout); both retry under the budget. A gone
-- session's row goes once none of its runs is running. A run with a cancel request ends
-- cancelled/stopped instead (an abandoned cancellation). One statement for the batch; if it
-- fails, the runs are ended one by one, and one that fails alone is set aside
-- (conveyor._quarantine) while the others are recovered. Runs a client holds are skipped.
create or replace function conveyor._expire_leases(p_now timestamptz, p_limit integer)
returns table (crashed integer, timed_out integer, stopped integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_outcomes conveyor.attempt_outcome[];
    v_run conveyor.runs;
    v_outcome conveyor.attempt_outcome;
    v_held text[] := '{}';
    v_gone conveyor.sessions[] := '{}';
begin
    -- sessions are few (one per worker connection that ever bound a claim): checked every tick.
    -- Only under READ COMMITTED: an older snapshot (a tick by hand in a REPEATABLE READ
    -- transaction) may not see a run claimed since, and would delete its session's row.
    if current_setting('transaction_isolation') = 'read committed' then
        v_gone := array(select s from conveyor._gone_sessions() s);
    end if;
    begin
        v_outcomes := array(
            select e.outcome
            from conveyor._end_attempts(array(
                select conveyor._expiry(r, p_now)
                from conveyor.runs r
                where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) <= p_now
                  and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
                order by least(r.lease_expires_at, r.timeout_at)
                limit p_limit
                for no key update skip locked) || array(
                select conveyor._expiry(r, p_now)
                from unnest(v_gone) g
                join conveyor.runs r on r.session_pid = g.pid and r.session_started_at = g.started_at
                where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) > p_now
                  and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
                limit p_limit
                for no key update of r skip locked)) e);
    exception when others then
        -- some run makes the batch fail: end them one at a time, setting aside the ones that fail
        v_outcomes := '{}';
        for v_run in
            (select * from conveyor.runs r
             where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) <= p_now
               and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
             order by least(r.lease_expires_at, r.timeout_at)
             limit p_limit)
            union all
            (select r.* from unnest(v_gone) g
             join conveyor.runs r on r.session_pid = g.pid and r.session_started_at = g.started_at
             where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) > p_now
               and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
             limit p_limit)
        loop
            if v_run.queue = any(v_held) then
                -- this queue's counter row is held by a client (see below): a later tick
                perform conveyor._tick_note('expire', p_skipped => 1);
                continue;
            end if;
            begin
                -- a run a client holds (a worker finishing it right now) is left for a later tick
                perform from conveyor.runs r where r.id = v_run.id for no key update skip locked;
                if not found then
                    perform conveyor._tick_note('expire', p_skipped => 1);
                    continue;
                end if;
                select e.outcome into v_outcome
                from conveyor._end_attempts(array[conveyor._expiry(v_run, p_now)]) e;
                v_outcomes := v_outcomes || v_outcome;
                delete from conveyor.quarantine q where q.step = 'expire' and q.run_id = v_run.id;
            exception
                when lock_not_available then
                    -- a client holds what this run's ending must lock (its bounded queue's or
                    -- capped task's counter row): a later tick, for this queue's other runs too
                    v_held := v_held || v_run.queue;
                    perform conveyor._tick_note('expire', p_skipped => 1);
                when others then
                    perform conveyor._quarantine('expire', v_run.id, sqlstate, sqlerrm, p_now);
            end;
        end loop;
    end;
    -- a gone session's row goes once none of its runs is running; SKIP LOCKED, as a tick by hand
    -- in an open transaction may be deleting it too
    delete from conveyor.sessions s
    where (s.pid, s.started_at) in (
        select d.pid, d.started_at from conveyor.sessions d
        join unnest(v_gone) g on d.pid = g.pid and d.started_at = g.started_at
        where not exists (select from conveyor.runs r
                          where r.session_pid = g.pid and r.session_started_at = g.started_at and r.status = 'running')
        for update of d skip locked);
    return query
    select count(*) filter (where o = 'crashed')::integer,
           count(*) filter (where o = 'timeout')::integer,
           count(*) filter (where o = 'stopped')::integer
    from unnest(v_outcomes) o;
end
$$;

-- ============================================================================================
-- sql/functions/tick_schedules.sql

-- functions/tick_schedules.sql: tick step `schedule`: cron firings become runs.

-- _firing_in_flight: whether an earlier firing of a cron task is still live (runs_cron_in_flight).
create or replace function conveyor._firing_in_flight(p_task text)
returns boolean
language sql
stable
as $$
    select exists (select from conveyor.runs r
                   where r.task = p_task and r.fire_at is not null and conveyor._live(r.status))
$$;

-- _fire_schedules_of: materialize due cron firings as runs (of one task, or all when p_only is null), exactly once per (task, firing):
-- the task row is locked SKIP LOCKED, the run has a unique firing key, and the cursor
-- next_fire_at moves by a guarded update. After downtime only the latest missed firing runs,
-- unless the task asks for catch_up. on_overlap decides when an earlier firing is in flight:
-- allow (default) runs both, skip records a skipped run, terminate cancels the earlier one. A
-- terminate whose earlier run a client holds locked (a worker finishing it), or whose ending needs
-- a counter row a client holds (a producer's open transaction in its bounded queue), leaves the
-- task for a later tick, cursor unmoved: the step never waits on a client longer than
-- lock_timeout, and never fails for it.
create or replace function conveyor._fire_schedules_of(p_now timestamptz, p_limit integer, p_only text)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_task record;
    v_fire timestamptz;
    v_firings timestamptz[];
    v_next timestamptz;
    v_in_flight boolean;
    v_run conveyor.runs;
    v_count integer := 0;
    v_held boolean;
    v_postponed timestamptz;
begin
    for v_task in
        select c.*
        from conveyor.tasks t
        join conveyor.task_config c on c.name = t.name
        where t.schedule is not null and t.enabled and t.next_fire_at <= p_now
          and (p_only is null or t.name = p_only)
        order by t.next_fire_at
        limit p_limit
        for no key update of t skip locked
    loop
        v_held := false;
        -- the firings to run: every one due (catch_up), or the latest due
        v_firings := '{}';
        v_fire := v_task.next_fire_at;
        while v_fire is not null and v_fire <= p_now loop
            if v_task.catch_up then
                exit when cardinality(v_firings) >= p_limit;
                v_firings := v_firings || v_fire;
            else
                v_firings := array[v_fire];
            end if;
            v_fire := conveyor._cron_next(v_task.schedule, v_task.timezone, v_fire);
        end loop;
        v_next := coalesce(v_fire, conveyor._cron_next(v_task.schedule, v_task.timezone, p_now));

        foreach v_fire in array v_firings loop
            v_in_flight := conveyor._firing_in_flight(v_task.name);
            if v_in_flight and v_task.on_overlap = 'skip' then
                insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                           task_version, fire_at, finished_at)
                values (conveyor.ulid_generate(), v_task.name, v_task.queue, 'skipped', v_task.priority, v_fire,
                        v_task.payload, p_now, v_task.version, v_fire, p_now)
                on conflict (task, fire_at) where fire_at is not null do nothing;
                continue;
            end if;
            if v_in_flight and v_task.on_overlap = 'terminate' then
                begin
                    for v_run in
                        select * from conveyor.runs r
                        where r.task = v_task.name and r.fire_at is not null
                          and conveyor._live(r.status)
                        for no key update skip locked
                    loop
                        if v_run.status = 'running' then
                            perform conveyor._end_attempts(array[row(v_run.id, null, v_run.attempt_id, 'stopped',
                                conveyor._failure('stopped', format('terminated by the next firing (%s)', v_fire)),
                                false, null, null, null)::conveyor._ending]);
                        else
                            perform conveyor._cancel(v_run);
                        end if;
                    end loop;
                exception when lock_not_available then
                    -- ending it must take a counter row (a bounded queue's, a capped task's) that a
                    -- client holds: undone, and the firing waits like below
                    null;
                end;
                -- an earlier firing still live: a client holds it (or a counter row its ending
                -- needs); this firing waits for a later tick
                v_held := conveyor._firing_in_flight(v_task.name);
                if v_held then
                    perform conveyor._tick_note('schedule', p_skipped => 1);
                    v_postponed := v_fire;
                    exit;
                end if;
            end if;
            insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                       task_version, fire_at)
            values (conveyor.ulid_generate(), v_task.name, v_task.queue, 'scheduled', v_task.priority, v_fire,
                    v_task.payload, p_now, v_task.version, v_fire)
            on conflict (task, fire_at) where fire_at is not null do nothing;
            v_count := v_count + 1;
        end loop;

        if v_held then
            -- the cursor stays at the postponed firing (past any fired before it, with catch_up)
            update conveyor.tasks t
            set next_fire_at = v_postponed
            where t.name = v_task.name and t.next_fire_at = v_task.next_fire_at and v_postponed > v_task.next_fire_at;
            continue;
        end if;
        update conveyor.tasks t
        set next_fire_at = v_next
        where t.name = v_task.name and t.next_fire_at = v_task.next_fire_at;
    end loop;
    return v_count;
end
$$;

-- _fire_schedules: the step. One pass over every due task; if it fails, the tasks are taken one
-- by one and one that fails on its own is skipped (a WARNING, counted as quarantined) while
-- the others go on; it is tried again next tick.
create or replace function conveyor._fire_schedules(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_name text;
    v_count integer := 0;
begin
    begin
        return conveyor._fire_schedules_of(p_now, p_limit, null);
    exception when others then
        for v_name in select t.name from conveyor.tasks t
                      where t.schedule is not null and t.enabled and t.next_fire_at <= p_now
                      order by t.next_fire_at limit p_limit loop
            begin
                v_count := v_count + conveyor._fire_schedules_of(p_now, p_limit, v_name);
            exception when others then
                raise warning 'pg_conveyor: tick step schedule skipped task %: % (SQLSTATE %)', v_name, sqlerrm, sqlstate;
                perform conveyor._tick_note('schedule', p_quarantined => 1);
            end;
        end loop;
    end;
    return v_count;
end
$$;

-- ============================================================================================
-- sql/functions/tick_services.sql

-- functions/tick_services.sql: tick step `restart` (services' replicas kept alive), and the
-- operator's start_service and stop_service.

-- _restart_services_of: keep each enabled service (one, or all when p_only is null)'s replicas alive. A replica with no live run
-- gets one: at once the first time, else after restart_delay with restart_backoff over its
-- consecutive quick restarts (a run that stayed up 60s resets the count). A replica whose last
-- run was stopped by hand (cancelled, or asked to cancel and then completed) stays down until
-- start_service. Replicas above `replicas` get a cancel request.
create or replace function conveyor._restart_services_of(p_now timestamptz, p_limit integer, p_only text)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_service record;
    v_replica integer;
    v_last conveyor.runs;
    v_restarts integer;
    v_count integer := 0;
    v_run conveyor.runs;
begin
    for v_service in
        select c.*
        from conveyor.tasks t
        join conveyor.task_config c on c.name = t.name
        where t.kind = 'service' and t.enabled
          and (p_only is null or t.name = p_only)
        order by t.name
        for no key update of t skip locked
    loop
        for v_replica in 1 .. v_service.replicas loop
            exit when v_count >= p_limit;
            continue when exists (
                select from conveyor.runs r
                where r.task = v_service.name and r.replica = v_replica
                  and conveyor._live(r.status));
            select * into v_last from conveyor.runs r
            where r.task = v_service.name and r.replica = v_replica
            order by r.id desc
            limit 1;
            continue when found and (v_last.status = 'cancelled' or v_last.cancel_requested_at is not null);
            v_restarts := case
                when v_last.id is null then 0
                when v_last.finished_at - coalesce(v_last.started_at, v_last.finished_at) >= interval '60 seconds' then 0
                else v_last.restarts + 1
            end;
            insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                       task_version, replica, restarts)
            values (conveyor.ulid_generate(), v_service.name, v_service.queue, 'scheduled', v_service.priority,
                    case when v_last.id is null then p_now
                         else greatest(p_now, v_last.finished_at + conveyor._backoff_delay(
                             v_service.restart_backoff, v_service.restart_delay, v_service.restart_max_delay,
                             null, 'none', v_restarts))
                    end,
                    v_service.payload, p_now, v_service.version, v_replica, v_restarts)
            on conflict do nothing;
            v_count := v_count + 1;
        end loop;
        -- scaled down: replicas above the count are asked to stop
        for v_run in
            select * from conveyor.runs r
            where r.task = v_service.name and r.replica > v_service.replicas
              and conveyor._live(r.status)
              and r.cancel_requested_at is null
            for no key update skip locked
        loop
            perform conveyor._cancel(v_run);
        end loop;
    end loop;
    return v_count;
end
$$;

-- _restart_services: the step. One pass over every due service; if it fails, the services are taken one
-- by one and one that fails on its own is skipped (a WARNING, counted as quarantined) while
-- the others go on; it is tried again next tick.
create or replace function conveyor._restart_services(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_name text;
    v_count integer := 0;
begin
    begin
        return conveyor._restart_services_of(p_now, p_limit, null);
    exception when others then
        for v_name in select t.name from conveyor.tasks t
                      where t.kind = 'service' and t.enabled order by t.name loop
            begin
                v_count := v_count + conveyor._restart_services_of(p_now, p_limit, v_name);
            exception when others then
                raise warning 'pg_conveyor: tick step restart skipped service %: % (SQLSTATE %)', v_name, sqlerrm, sqlstate;
                perform conveyor._tick_note('restart', p_quarantined => 1);
            end;
        end loop;
    end;
    return v_count;
end
$$;

-- start_service: start every replica of a service that has no live run now, including ones
-- stopped by hand. Returns how many were started.
create or replace function conveyor.start_service(name text)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_service conveyor.task_config;
    v_count integer;
begin
    select * into v_service from conveyor.task_config c where c.name = start_service.name and c.kind = 'service';
    if not found then
        perform conveyor._raise_unknown_task(start_service.name, 'service');
    end if;
    insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at, task_version, replica)
    select conveyor.ulid_generate(), v_service.name, v_service.queue, 'scheduled', v_service.priority, v_now,
           v_service.payload, v_now, v_service.version, n
    from generate_series(1, v_service.replicas) n
    on conflict do nothing;
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

comment on function conveyor.start_service is 'start the replicas of a service that are not running (also ones stopped by hand)';

-- stop_service: stop every replica of a service by hand (cancel_run on each live run); tick
-- does not restart them until start_service. Returns how many were asked to stop.
create or replace function conveyor.stop_service(name text)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_count integer := 0;
begin
    if not exists (select from conveyor.tasks t where t.name = stop_service.name and t.kind = 'service') then
        perform conveyor._raise_unknown_task(stop_service.name, 'service');
    end if;
    for v_run in
        select * from conveyor.runs r
        where r.task = stop_service.name and r.replica is not null
          and conveyor._live(r.status)
        order by r.replica
        for no key update
    loop
        perform conveyor._cancel(v_run);
        v_count := v_count + 1;
    end loop;
    return v_count;
end
$$;

comment on function conveyor.stop_service is 'stop every replica of a service by hand: tick does not restart them until start_service';

-- ============================================================================================
-- sql/functions/tick_deliver.sql

-- functions/tick_deliver.sql: tick step `deliver`: due waiting runs become queued.

-- _deliver_due: scheduled, retrying and released runs whose time has come -> queued (event
-- run.delivery_requested). Fair, bounded by the due rows, and never waiting on a client:
--   * candidates are the oldest due runs whatever their queue (index runs_due, 2 x p_limit),
--     plus the due runs of up to 100 queues whose turn it is (a cursor goes round the queues
--     from tick to tick), so a queue behind a flood elsewhere is reached within a few ticks;
--     the cost follows the due rows and that fixed turn, not the number of queues or tasks;
--   * they are delivered round-robin: every queue's first candidate, then every second, ...;
--   * a bounded queue's free room (and a capped task's) is reserved under its row lock, taken
--     SKIP LOCKED: a queue or task row a client holds (an open transaction that enqueued into
--     it) is left for a later tick and counted as skipped, and so is a run a client holds.
-- No more than `concurrency` runs are ever delivered, however many ticks and enqueues run at
-- once (the locked counters are the same as enqueue's). One statement delivers the batch; if
-- it fails, runs are delivered one by one and one that fails alone is set aside
-- (conveyor._quarantine) while the others go on.
create or replace function conveyor._deliver_due(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_cursor text;
    v_turn text[];
    v_ids conveyor.ulid[];
    v_bounded text[];
    v_queues text[];
    v_queue_free integer[];
    v_capped text[];
    v_tasks text[];
    v_task_free integer[];
    v_chosen conveyor.ulid[];
    v_done integer;
    v_one integer;
    v_id conveyor.ulid;
    v_skipped integer;
begin
    -- the queues whose turn it is: the next 100 after the cursor, wrapping round
    select s.cursor into v_cursor from conveyor._tick_stats s where s.step = 'deliver' and s.source = conveyor._tick_source();
    v_turn := array(select q.name from conveyor.queues q
                    where q.name > coalesce(v_cursor, '') and not q.paused order by q.name limit 100);
    if cardinality(v_turn) < 100 then
        v_turn := v_turn || array(select q.name from conveyor.queues q
                                  where q.name <= coalesce(v_cursor, '') and not q.paused
                                  order by q.name limit 100 - cardinality(v_turn));
    end if;
    perform conveyor._tick_note('deliver', p_cursor => v_turn[cardinality(v_turn)]);

    v_ids := array(
        select o.id from (
            -- only queues that can take runs now: a full bounded queue's backlog (or a paused
            -- queue's) must not fill the pool and starve the others
            select r.id from conveyor.runs r
            join conveyor.queues q on q.name = r.queue
            where conveyor._waiting(r.status) and r.run_at <= p_now
              and not q.paused and (q.concurrency is null or q.delivered < q.concurrency)
              and r.id not in (select s.run_id from conveyor._set_aside('deliver', p_now) s)
            order by r.run_at
            limit p_limit * 2
        ) o
        union
        select t.id from unnest(v_turn) as q(name)
        cross join lateral (
            select r.id from conveyor.runs r
            where r.queue = q.name and conveyor._waiting(r.status) and r.run_at <= p_now
            order by r.run_at
            limit greatest(1, p_limit / 100)
        ) t);
    if cardinality(v_ids) = 0 then
        return 0;
    end if;

    -- room in the bounded queues and capped tasks among them, reserved under row locks that no
    -- one else holds; the others are left for a later tick
    v_bounded := array(select distinct q.name from conveyor.queues q
                       join conveyor.runs r on r.queue = q.name
                       where r.id = any(v_ids) and q.concurrency is not null);
    select array_agg(l.name order by l.name), array_agg(l.free order by l.name) into v_queues, v_queue_free
    from (select q.name, greatest(q.concurrency - q.delivered, 0) as free
          from conveyor.queues q where q.name = any(v_bounded)
          order by q.name
          for no key update skip locked) l;
    v_capped := array(select distinct t.name from conveyor.tasks t
                      join conveyor.runs r on r.task = t.name
                      where r.id = any(v_ids) and t.parallelism is not null);
    select array_agg(l.name order by l.name), array_agg(l.free order by l.name) into v_tasks, v_task_free
    from (select t.name, greatest(t.parallelism - t.active, 0) as free
          from conveyor.tasks t where t.name = any(v_capped)
          order by t.name
          for no key update skip locked) l;
    v_skipped := cardinality(v_bounded) - coalesce(cardinality(v_queues), 0)
               + cardinality(v_capped) - coalesce(cardinality(v_tasks), 0);

    v_chosen := array(
        with candidate as (
            select r.id, r.queue, r.task, r.priority, r.run_at,
                   qf.free as queue_free, tf.free as task_free
            from conveyor.runs r
            join conveyor.queues q on q.name = r.queue and not q.paused
            left join unnest(v_queues, v_queue_free) as qf(name, free) on qf.name = r.queue
            left join unnest(v_tasks, v_task_free) as tf(name, free) on tf.name = r.task
            where r.id = any(v_ids) and conveyor._waiting(r.status) and r.run_at <= p_now
              and r.id not in (select s.run_id from conveyor._set_aside('deliver', p_now) s)
              -- a bounded queue or capped task whose row a client holds waits for a later tick
              and (qf.name is not null or r.queue <> all(v_bounded))
              and (tf.name is not null or r.task <> all(v_capped))
        ),
        ranked as (
            select c.*,
                   row_number() over (partition by c.queue order by c.priority, c.run_at, c.id) as nth_in_queue,
                   row_number() over (partition by c.task order by c.priority, c.run_at, c.id) as nth_in_task
            from candidate c
        )
        select k.id from ranked k
        where (k.queue_free is null or k.nth_in_queue <= k.queue_free)
          and (k.task_free is null or k.nth_in_task <= k.task_free)
        order by k.nth_in_queue, k.priority, k.run_at, k.id
        limit p_limit);

    begin
        with delivered as (
            update conveyor.runs r
            set status = 'queued'
            where r.id in (select p.id from conveyor.runs p
                           where p.id = any(v_chosen) and conveyor._waiting(p.status)
                           for no key update skip locked)
            returning r.id
        ),
        -- a run set aside earlier and delivered now is no longer set aside (only the runs this
        -- step delivered: another tick may be working on the ones it skipped)
        cleared as (
            delete from conveyor.quarantine q using delivered d where q.step = 'deliver' and q.run_id = d.id
        )
        select count(*) into v_done from delivered;
    exception when others then
        -- some run makes the batch fail: deliver them one at a time, setting aside the ones
        -- that fail on their own
        v_done := 0;
        foreach v_id in array v_chosen loop
            begin
                update conveyor.runs r
                set status = 'queued'
                where r.id in (select p.id from conveyor.runs p
                               where p.id = v_id and conveyor._waiting(p.status)
                               for no key update skip locked);
                get diagnostics v_one = row_count;
                v_done := v_done + v_one;
                if v_one > 0 then
                    delete from conveyor.quarantine q where q.step = 'deliver' and q.run_id = v_id;
                end if;
            exception
                when lock_not_available then
                    perform conveyor._tick_note('deliver', p_skipped => 1);
                when others then
                    perform conveyor._quarantine('deliver', v_id, sqlstate, sqlerrm, p_now);
            end;
        end loop;
    end;
    perform conveyor._tick_note('deliver', p_skipped => v_skipped + (cardinality(v_chosen) - v_done));
    return v_done;
end
$$;

-- ============================================================================================
-- sql/functions/tick_hint.sql

-- functions/tick_hint.sql: tick step `hint`: where claims start reading while an old snapshot
-- holds vacuum back (conveyor._claim_hints, sql/schema/tables.sql; docs/guarantees.md).

-- _old_snapshot_held: whether something keeps vacuum from removing this database's dead rows
-- while many transactions have run since (the dead entries a claim would walk come from
-- them): a session's snapshot or its own transaction (one idle in transaction after a write
-- holds vacuum back too), a prepared transaction, a standby's feedback or a replication slot,
-- 1,000 transactions old or more. Autovacuum's own snapshot holds nothing back.
create or replace function conveyor._old_snapshot_held()
returns boolean
language sql
stable
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select exists (select from pg_catalog.pg_stat_activity a
                   where (a.datname = current_database() or a.backend_type = 'walsender' and a.datname is null)
                     and a.pid <> pg_backend_pid() and a.backend_type <> 'autovacuum worker'
                     and greatest(age(a.backend_xmin), age(a.backend_xid)) >= 1000)
        or exists (select from pg_catalog.pg_prepared_xacts p
                   where p.database = current_database() and age(p.transaction) >= 1000)
        or exists (select from pg_catalog.pg_replication_slots s
                   where (s.database is null or s.database = current_database()) and age(s.xmin) >= 1000)
$$;

-- _publish_claim_hints: while an old snapshot is held, the open queues get a new hint each
-- tick (the 100 whose hints are oldest, when there are more). A hint is the lower of two keys,
-- both as committed now:
--   * the first claimable run's, found by one walk of runs_claimable from the queue's head (the
--     walk every claim would otherwise make); with none, priority 0, no turn, due 100 ms ago;
--   * priority 0, no turn, the earliest due time of the queue's waiting runs: tick delivers
--     them with that due time, whenever room or their time comes (a bounded queue's backlog).
-- So nothing claimable now is behind the hint, nor anything tick will deliver. A run queued
-- later behind it (a higher priority, an earlier due time, an unkeyed run where keyed ones
-- lead, a returned run, a producer's transaction that began before the walk) is found by the
-- next tick's walk, which starts at the head: it waits up to a tick interval more, and only
-- while the snapshot is held (as a retry due at once waits for tick's delivery). A queue whose
-- new hint is lower than its last one had such a run: its listeners are woken (the wakeup
-- its enqueue sent found nothing to claim). Without an old snapshot no hint is made and claims
-- read from the head, as always. Hints older than a minute, or made by a clock ahead of this
-- one, go (SKIP LOCKED: another tick's delete is not waited for).
create or replace function conveyor._publish_claim_hints(p_now timestamptz)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_n integer;
begin
    delete from conveyor._claim_hints h
    where h.ctid = any(array(
        select x.ctid from conveyor._claim_hints x
        where x.made_at < p_now - interval '1 minute' or x.made_at > p_now + interval '1 s'
        for update skip locked));
    if not conveyor._old_snapshot_held() then
        return 0;
    end if;
    with hint as (
        select q.name, q.notify, (k.key).priority, (k.key).fair_rank, (k.key).run_at, (k.key).id,
               -- (lower than the hint in force, the one claims read; none: the lowest key)
               k.key < (select row(c.*)::conveyor._claim_key from conveyor._claim_floor(q.name, p_now) c) as lower
        from (select q.name, q.notify
              from conveyor.queues q
              left join lateral (select h.made_at from conveyor._claim_hints h
                                 where h.queue = q.name and h.made_at <= p_now + interval '1 s'
                                 order by h.made_at desc limit 1) h on true
              where not q.paused
              order by h.made_at nulls first, q.name
              limit 100) q
        left join lateral (
            select r.priority, r.fair_rank, r.run_at, r.id from conveyor.runs r
            where r.status = 'queued' and r.queue = q.name
            order by r.priority, r.fair_rank, r.run_at, r.id
            limit 1) f on true
        left join lateral (
            select r.run_at from conveyor.runs r
            where r.queue = q.name and r.status in ('scheduled', 'retrying', 'released')
            order by r.run_at
            limit 1) w on true
        cross join lateral (
            select least(case when f.id is null
                              then row(0, 0, p_now - interval '100 ms', '00000000000000000000000000')::conveyor._claim_key
                              else row(f.priority, f.fair_rank, f.run_at, f.id)::conveyor._claim_key end,
                         row(0, 0, coalesce(w.run_at, 'infinity'), '00000000000000000000000000')::conveyor._claim_key) as key) k
    ),
    made as (
        insert into conveyor._claim_hints (queue, made_at, priority, fair_rank, run_at, id)
        select h.name, p_now, h.priority, h.fair_rank, h.run_at, h.id from hint h
        returning 1
    ),
    woken as (
        select pg_notify('conveyor.' || h.name, '') from hint h where h.lower and h.notify
    )
    select (select count(*) from made) + 0 * (select count(*) from woken) into v_n;
    return v_n;
end
$$;

-- _claim_floor: the key a claim of this queue starts reading at: the queue's newest hint of
-- the last 3 s, else the lowest key there is (the head of the queue). A hint made at a time
-- ahead of the claim's (a clock set back, a test clock) is not one of the last 3 s. A
-- set-returning SQL function, inlined into the claim's statement.
create or replace function conveyor._claim_floor(p_queue text, p_now timestamptz)
returns table (priority smallint, fair_rank bigint, run_at timestamptz, id conveyor.ulid)
language sql
stable
as $$
    select coalesce(h.priority, (-32768)::smallint), coalesce(h.fair_rank, (-9223372036854775808)::bigint),
           coalesce(h.run_at, '-infinity'::timestamptz), coalesce(h.id, '00000000000000000000000000'::conveyor.ulid)
    from (select) one
    left join lateral (
        select h.priority, h.fair_rank, h.run_at, h.id from conveyor._claim_hints h
        where h.queue = p_queue and h.made_at between p_now - interval '3 s' and p_now + interval '1 s'
        order by h.made_at desc
        limit 1) h on true
$$;

-- ============================================================================================
-- sql/functions/tick_prune.sql

-- functions/tick_prune.sql: tick step `prune`: retention.

-- _prune: delete finished runs older than the retention (conveyor.defaults), with their
-- attempts, logs and events, oldest first, at most p_limit runs; and outbox rows published
-- longer ago than the retention.
create or replace function conveyor._prune(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_cutoff timestamptz := p_now - (select d.retention from conveyor.defaults d);
    v_ids conveyor.ulid[];
begin
    select array_agg(r.id) into v_ids from (
        select r.id from conveyor.runs r
        where r.finished_at < v_cutoff
        order by r.finished_at
        limit p_limit
        for update skip locked
    ) r;
    delete from conveyor.outbox o
    where o.id in (select x.id from conveyor.outbox x where x.published_at < v_cutoff
                   order by x.published_at limit p_limit for update skip locked);
    -- rate-limit starts two windows (and 10 minutes) old: no claim counts them any more, even
    -- one whose transaction began a while ago (a removed limit's starts go at once); read by
    -- each limit's index range, never the whole table
    delete from conveyor._rate_starts s
    where s.ctid = any(array(
        select x.ctid
        from conveyor._rate_limits l
        left join conveyor.queues q on l.scope = 'queue' and q.name = l.name
        left join conveyor.tasks t on l.scope = 'task' and t.name = l.name
        cross join lateral (
            select x.ctid from conveyor._rate_starts x
            where x.scope = l.scope and x.name = l.name and x.shard = l.shard
              and x.at < p_now - coalesce(2 * coalesce(q.rate_limit_period, t.rate_limit_period) + interval '10 minutes',
                                          interval '0')
            order by x.at
            limit p_limit) x
        limit p_limit));
    -- and those of the key rate limits (a removed one's go with it: _set_rate_limit)
    delete from conveyor._rate_starts s
    where s.ctid = any(array(
        select x.ctid
        from (select 'queue_key' as scope, q.name, q.key_rate_limit_period as period
              from conveyor.queues q where q.key_rate_limit_n is not null
              union all
              select 'task_key', t.name, t.key_rate_limit_period
              from conveyor.tasks t where t.key_rate_limit_n is not null) l
        cross join generate_series(0, 7) as h(shard)
        cross join lateral (
            select x.ctid from conveyor._rate_starts x
            where x.scope = l.scope and x.name = l.name and x.shard = h.shard
              and x.at < p_now - (2 * l.period + interval '10 minutes')
            order by x.at
            limit p_limit) x
        limit p_limit));
    if v_ids is null then
        return 0;
    end if;
    delete from conveyor.attempts a where a.run_id = any(v_ids);
    delete from conveyor.attempt_logs l where l.run_id = any(v_ids);
    delete from conveyor.events e where e.run_id = any(v_ids);
    delete from conveyor.quarantine q where q.run_id = any(v_ids);
    delete from conveyor.runs r where r.id = any(v_ids);
    return cardinality(v_ids);
end
$$;

-- ============================================================================================
-- sql/functions/tick_repair.sql

-- functions/tick_repair.sql: tick step `repair`: the capacity counters checked against the runs.

-- _repair_counters: recount one bounded queue's delivered runs and one capped task's active
-- runs per tick, taking them in turn (a cursor in conveyor._tick_stats), and correct a counter
-- that drifted. The counters are kept by the transition trigger only while a cap is set, so a
-- transition made by a transaction that began before the cap did (an enqueue still
-- uncommitted when set_queue(concurrency => 1) counted) is never counted, and the counter is
-- off for good; recounted under the row's lock (taken SKIP LOCKED: a row a client holds waits
-- for another tick), the runs every committed transition left are the truth: any transaction
-- that changed the counter has committed once the lock is free. Each repair is logged and
-- counted (conveyor_tick_step_changed_total{step="repair"}).
create or replace function conveyor._repair_counters(p_now timestamptz)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_cursor text[];
    v_queue record;
    v_task record;
    v_true integer;
    v_repaired integer := 0;
begin
    select string_to_array(s.cursor, E'\x1f') into v_cursor
    from conveyor._tick_stats s where s.step = 'repair' and s.source = conveyor._tick_source();
    v_cursor := coalesce(v_cursor, array['', '']);

    select q.name, q.delivered into v_queue
    from conveyor.queues q
    where q.concurrency is not null and q.name > v_cursor[1]
    order by q.name
    limit 1
    for no key update skip locked;
    if not found then
        -- wrap round
        select q.name, q.delivered into v_queue
        from conveyor.queues q
        where q.concurrency is not null
        order by q.name
        limit 1
        for no key update skip locked;
    end if;
    if v_queue.name is not null then
        v_cursor[1] := v_queue.name;
        -- queued ones through runs_claimable, running ones through runs_running_deadline: the
        -- cost follows the delivered runs, not the table
        select (select count(*) from conveyor.runs r where r.queue = v_queue.name and r.status = 'queued')
             + (select count(*) from conveyor.runs r where r.status = 'running' and r.queue = v_queue.name)
        into v_true;
        if v_true <> v_queue.delivered then
            update conveyor.queues q set delivered = v_true where q.name = v_queue.name;
            raise warning 'pg_conveyor: repaired the delivered counter of queue "%": % -> % (runs queued or running)',
                v_queue.name, v_queue.delivered, v_true;
            v_repaired := v_repaired + 1;
        end if;
    end if;

    select t.name, t.active into v_task
    from conveyor.tasks t
    where t.parallelism is not null and t.name > v_cursor[2]
    order by t.name
    limit 1
    for no key update skip locked;
    if not found then
        select t.name, t.active into v_task
        from conveyor.tasks t
        where t.parallelism is not null
        order by t.name
        limit 1
        for no key update skip locked;
    end if;
    if v_task.name is not null then
        v_cursor[2] := v_task.name;
        select count(*) into v_true from conveyor.runs r
        where r.task = v_task.name and conveyor._is_delivered(r.status);  -- runs_delivered_by_task
        if v_true <> v_task.active then
            update conveyor.tasks t set active = v_true where t.name = v_task.name;
            raise warning 'pg_conveyor: repaired the active counter of task "%": % -> % (runs queued or running)',
                v_task.name, v_task.active, v_true;
            v_repaired := v_repaired + 1;
        end if;
    end if;
    perform conveyor._tick_note('repair', p_cursor => array_to_string(v_cursor, E'\x1f'));
    return v_repaired;
end
$$;

-- ============================================================================================
-- sql/functions/tick_count.sql

-- functions/tick_count.sql: tick step `count`: counter deltas folded into their totals.

-- _fold_counters: move the rows of conveyor._counter_deltas (one per statement that created
-- runs or ended attempts, and per queue, task and counter) into conveyor._counters, in this
-- tick's source's rows (_tick_source). The delete and the additions commit together, so
-- conveyor.counters (totals + deltas) never counts a delta twice or loses one. Deltas another
-- tick is folding are skipped (SKIP LOCKED); a delta is a few dozen bytes, so one step folds up
-- to 50 times the tick batch. The totals rows are this source's: the worker's are written by
-- the worker alone; two ticks by hand at once add to the same rows in key order (no deadlock),
-- and one left open holds them, so that another by hand fails this step after lock_timeout
-- (tick() runs it in a subtransaction: its other steps go on). Returns the delta rows folded.
create or replace function conveyor._fold_counters(p_limit integer)
returns bigint
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_folded bigint;
begin
    with taken as (
        delete from conveyor._counter_deltas d
        where d.ctid = any (array(select l.ctid from conveyor._counter_deltas l
                                  limit p_limit * 50
                                  for update skip locked))
        returning d.queue, d.task, d.counter, d.n
    ),
    folded as (
        insert into conveyor._counters as c (queue, task, counter, source, n)
        select t.queue, t.task, t.counter, conveyor._tick_source(), sum(t.n)
        from taken t
        group by t.queue, t.task, t.counter
        order by t.queue, t.task, t.counter
        on conflict (queue, task, counter, source) do update set n = c.n + excluded.n
    )
    select count(*) into v_folded from taken;
    return v_folded;
end
$$;

-- ============================================================================================
-- sql/functions/outbox.sql

-- functions/outbox.sql: durable messages written in the caller's transaction and sent later, at least
-- once: tick sends each due message with pg_notify on its topic's channel; a relay can also
-- claim messages in batches under a lease and acknowledge them once forwarded.

-- publish: write a message in the caller's transaction (rolled back with it). When deliver_at
-- comes, tick wakes the listeners of channel `topic` (an empty NOTIFY) and relays claim it.
create or replace function conveyor.publish(topic text, payload jsonb default '{}', deliver_at timestamptz default null)
returns conveyor.ulid
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_id conveyor.ulid := conveyor.ulid_generate();
begin
    if publish.topic is null or publish.topic !~ '^[A-Za-z0-9_.:/-]{1,63}$' then
        perform conveyor._raise_invalid(format('invalid topic %s: use 1 to 63 letters, digits or _.:/- (it names a NOTIFY channel)',
                                               coalesce(quote_literal(publish.topic), 'null')));
    end if;
    if publish.topic like 'conveyor.%' then
        perform conveyor._raise_invalid(format('topic %s is reserved: channels named conveyor.* are pg_conveyor''s own '
                                               '(queue wakeups, the delivery outbox)', quote_literal(publish.topic)));
    end if;
    perform conveyor._check_time('deliver_at', publish.deliver_at, v_now);
    if publish.payload is null then
        perform conveyor._raise_invalid('payload must be JSON, got null');
    end if;
    insert into conveyor.outbox (id, topic, payload, created_at, deliver_at)
    values (v_id, publish.topic, publish.payload, v_now, coalesce(publish.deliver_at, v_now));
    return v_id;
end
$$;

comment on function conveyor.publish is
    'write an outbox message in the caller''s transaction; tick NOTIFYs channel topic when deliver_at comes; relays claim/ack it';

-- _flush_outbox: mark due unpublished messages published and wake each topic's listeners with
-- an empty NOTIFY on the topic's channel (delivered at commit). Notifications carry no payload:
-- any login may LISTEN on any channel, and NOTIFY a forged one, so a channel is only a wakeup;
-- messages are read through outbox_claim, which only granted roles may call.
create or replace function conveyor._flush_outbox(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_count integer;
    v_topics text[];
begin
    with due as (
        select o.id from conveyor.outbox o
        where o.published_at is null and o.deliver_at <= p_now
        order by o.deliver_at, o.id
        limit p_limit
        for update skip locked
    ),
    sent as (
        update conveyor.outbox o set published_at = p_now
        from due where o.id = due.id
        returning o.id, o.topic, o.payload
    )
    select count(*), array_agg(distinct s.topic) into v_count, v_topics from sent s;
    perform pg_notify(t.topic, '') from unnest(v_topics) as t(topic);
    return v_count;
end
$$;

-- outbox_claim: a relay claims up to `max` due, unacknowledged messages (optionally of some
-- topics) under a lease; messages it does not acknowledge in time are claimable again.
create or replace function conveyor.outbox_claim(
    relay text,
    topics text[] default null,
    max integer default 100,
    lease conveyor.duration default '30s'
)
returns table (id conveyor.ulid, topic text, payload jsonb, deliver_at timestamptz, claim_token uuid, claims integer)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_token uuid := gen_random_uuid();
begin
    if outbox_claim.relay is null or btrim(outbox_claim.relay) = '' then
        perform conveyor._raise_invalid('relay must name the claiming relay');
    end if;
    if outbox_claim.max is null or outbox_claim.max not between 1 and 10000 then
        perform conveyor._raise_invalid(format('invalid max %s: expected 1 to 10000', outbox_claim.max));
    end if;
    return query
    with picked as (
        select o.id from conveyor.outbox o
        where o.acked_at is null and o.deliver_at <= v_now
          and (outbox_claim.topics is null or o.topic = any(outbox_claim.topics))
          and (o.claim_expires_at is null or o.claim_expires_at <= v_now)
        order by o.deliver_at, o.id
        limit outbox_claim.max
        for update skip locked
    )
    update conveyor.outbox o
    set claim_token = v_token, claimed_by = outbox_claim.relay,
        claim_expires_at = v_now + outbox_claim.lease::interval, claims = o.claims + 1
    from picked
    where o.id = picked.id
    returning o.id, o.topic, o.payload, o.deliver_at, o.claim_token, o.claims;
end
$$;

comment on function conveyor.outbox_claim is
    'relay: claim due unacknowledged outbox messages under a lease (at least once: unacked ones come back after it)';

-- outbox_ack: acknowledge claimed messages as forwarded; returns how many were acknowledged
-- (a message whose claim expired and was taken by another relay is not).
create or replace function conveyor.outbox_ack(ids conveyor.ulid[], claim_token uuid)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_count integer;
begin
    update conveyor.outbox o
    set acked_at = conveyor._now(), claim_expires_at = null
    where o.id = any(outbox_ack.ids) and o.claim_token = outbox_ack.claim_token and o.acked_at is null;
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

comment on function conveyor.outbox_ack is 'relay: acknowledge forwarded outbox messages of a claim';

-- ============================================================================================
-- sql/functions/tick.sql

-- functions/tick.sql: tick() and the steps the background worker runs one by one. Each step
-- touches at most `p_limit` rows, reads only rows that are due (partial indexes on due times),
-- locks what it changes with SKIP LOCKED or guarded updates so two ticks at once never double
-- anything, and returns a count. It runs no user code. The steps are in tick_*.sql.

-- _tick_source: `worker` in pg_conveyor's tick worker, `manual` anywhere else (a client's
-- session, pg_cron's jobs, another extension's background worker; src/session.rs). Each keeps its own rows of
-- conveyor._tick_stats and its own cursors, so that a tick by hand left in an open transaction
-- holds no row the worker must write.
create or replace function conveyor._tick_source()
returns text
language sql
stable
as $$ select case when conveyor._in_background_worker() then 'worker' else 'manual' end $$;

-- _tick_note: add to a step's counters in conveyor._tick_stats (and move deliver's cursor), in
-- this source's row (_tick_source). Only tick writes these rows, and never waits for one: the
-- rows exist from the start (end of this file), and one that another tick of the same source
-- holds (two ticks by hand at once, one left open) is skipped, its counts lost.
create or replace function conveyor._tick_note(
    p_step text,
    p_runs integer default 0,
    p_failures integer default 0,
    p_changed bigint default 0,
    p_skipped integer default 0,
    p_quarantined integer default 0,
    p_cursor text default null,
    p_error text default null
)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    update conveyor._tick_stats s set
        runs = s.runs + p_runs,
        failures = s.failures + p_failures,
        changed = s.changed + greatest(p_changed, 0),
        skipped = s.skipped + p_skipped,
        quarantined = s.quarantined + p_quarantined,
        cursor = coalesce(p_cursor, s.cursor),
        last_error = coalesce(p_error, s.last_error),
        last_run_at = coalesce(case when p_runs > 0 then conveyor._now() end, s.last_run_at)
    where (s.step, s.source) = (
        select l.step, l.source from conveyor._tick_stats l
        where l.step = p_step and l.source = conveyor._tick_source()
        for update skip locked);
end
$$;

-- _quarantine: set a run aside for a step that failed on it alone: the step leaves it until
-- retry_at (1 minute, doubling with each failure up to 1 hour) and goes on with the others;
-- event run.quarantined records it, metrics() counts it.
create or replace function conveyor._quarantine(p_step text, p_run_id conveyor.ulid, p_sqlstate text, p_message text,
                                                p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    -- another tick (one by hand, left open) may be setting this run aside too: then it is its to
    -- record, and this one does not wait for it
    if exists (select from conveyor.quarantine q where q.step = p_step and q.run_id = p_run_id)
       and not exists (select from conveyor.quarantine q where q.step = p_step and q.run_id = p_run_id
                       for update skip locked) then
        return;
    end if;
    insert into conveyor.quarantine as q (step, run_id, sqlstate, message, first_at, last_at, failures, retry_at)
    values (p_step, p_run_id, p_sqlstate, left(p_message, 1000), p_now, p_now, 1, p_now + interval '1 minute')
    on conflict (step, run_id) do update set
        sqlstate = excluded.sqlstate, message = excluded.message, last_at = excluded.last_at,
        failures = q.failures + 1,
        retry_at = excluded.last_at + least(interval '1 hour', interval '1 minute' * 2 ^ least(q.failures, 6));
    insert into conveyor.events (run_id, at, type, attempt, data)
    select r.id, p_now, 'run.quarantined', r.attempts + 1,
           jsonb_build_object('step', p_step, 'sqlstate', p_sqlstate, 'message', left(p_message, 1000))
    from conveyor.runs r where r.id = p_run_id;
    perform conveyor._tick_note(p_step, p_quarantined => 1);
    raise warning 'pg_conveyor: tick step % set run % aside: % (SQLSTATE %)', p_step, p_run_id, p_message, p_sqlstate;
end
$$;

-- _set_aside: the runs a step set aside that it is not yet time to try again. Used as
-- `r.id not in (select s.run_id from conveyor._set_aside(step, now) s)`: inlined, one hashed
-- look-up per row. (It replaced a boolean function per run, which PostgreSQL could not inline
-- because its body held a subquery: 13 µs a row, a tick delivering 1,000 runs took 41 ms.)
create or replace function conveyor._set_aside(p_step text, p_now timestamptz)
returns table (run_id conveyor.ulid)
language sql
stable
as $$
    select q.run_id from conveyor.quarantine q where q.step = p_step and q.retry_at > p_now
$$;

-- tick_steps: the steps of a tick, in order (the background worker runs each in its own
-- transaction): expire first to free capacity, then create runs, then check
-- the capacity counters, then deliver; last, fold the counters (conveyor.counters). The claim
-- hints (while an old snapshot is held) come first: that step takes no lock a client can hold
-- (it inserts, and deletes old hints SKIP LOCKED), so in tick()'s one transaction no lock a
-- later step takes is held while it walks the queues.
create or replace function conveyor.tick_steps()
returns text[]
language sql
immutable
as $$ select array['hint', 'expire', 'schedule', 'restart', 'repair', 'deliver', 'flush', 'prune', 'count'] $$;

comment on function conveyor.tick_steps is 'the steps of a tick, in the order tick runs them';

-- _run_step: one step, by name; returns how many rows it changed.
create or replace function conveyor._run_step(p_step text, p_limit integer)
returns bigint
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
begin
    return case p_step
        when 'expire' then (select e.crashed + e.timed_out + e.stopped from conveyor._expire_leases(v_now, p_limit) e)
        when 'schedule' then conveyor._fire_schedules(v_now, p_limit)
        when 'restart' then conveyor._restart_services(v_now, p_limit)
        when 'repair' then conveyor._repair_counters(v_now)
        when 'hint' then conveyor._publish_claim_hints(v_now)
        when 'deliver' then conveyor._deliver_due(v_now, p_limit)
        when 'flush' then conveyor._flush_outbox(v_now, p_limit)
        when 'prune' then conveyor._prune(v_now, p_limit)
        when 'count' then conveyor._fold_counters(p_limit)
    end;
end
$$;

-- tick_step: one step for the background worker, counted in conveyor._tick_stats. A row that
-- fails alone is set aside by the step (conveyor.quarantine) and the rest goes on; an error of
-- the whole step ends this step (reported as a WARNING, returning -1), not the worker.
create or replace function conveyor.tick_step(step text)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_changed bigint;
begin
    if step is null or not step = any(conveyor.tick_steps()) then
        perform conveyor._raise_invalid(format('unknown tick step "%s": expected one of %s', step, array_to_string(conveyor.tick_steps(), ', ')));
    end if;
    -- a backstop: the steps skip what clients hold (SKIP LOCKED), but a lock they must take
    -- (a bounded queue's counter, in the transition trigger) waits at most this long
    perform set_config('lock_timeout', '500ms', true);
    begin
        v_changed := conveyor._run_step(step, coalesce(current_setting('conveyor.tick_batch', true)::integer, 1000));
    exception when others then
        raise warning 'pg_conveyor: tick step % failed: % (SQLSTATE %)', step, sqlerrm, sqlstate;
        perform conveyor._tick_note(step, p_runs => 1, p_failures => 1, p_error => sqlstate || ': ' || left(sqlerrm, 500));
        return -1;
    end;
    perform conveyor._tick_note(step, p_runs => 1, p_changed => v_changed);
    return v_changed;
end
$$;

comment on function conveyor.tick_step is 'run one tick step by name (errors become a WARNING and -1)';

-- tick: one pass of maintenance, in the caller's transaction; returns what each step did.
-- Call it by hand, from pg_cron, or from any client where the background worker is not loaded.
create or replace function conveyor.tick(
    out hinted integer,
    out crashed integer,
    out timed_out integer,
    out stopped integer,
    out fired integer,
    out restarted integer,
    out repaired integer,
    out delivered integer,
    out flushed integer,
    out pruned integer,
    out counted bigint
)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- as in tick_step: the steps skip what others hold, and a lock they must take (a bounded queue's
-- counter) waits this long at most: then tick() fails, and holds nothing it took
set lock_timeout = '500ms'
as $$
declare
    v_now timestamptz := conveyor._now();
    v_limit integer := coalesce(current_setting('conveyor.tick_batch', true)::integer, 1000);
begin
    hinted := conveyor._publish_claim_hints(v_now);
    perform conveyor._tick_note('hint', p_runs => 1, p_changed => hinted);
    select e.crashed, e.timed_out, e.stopped into crashed, timed_out, stopped
    from conveyor._expire_leases(v_now, v_limit) e;
    perform conveyor._tick_note('expire', p_runs => 1, p_changed => crashed + timed_out + stopped);
    fired := conveyor._fire_schedules(v_now, v_limit);
    perform conveyor._tick_note('schedule', p_runs => 1, p_changed => fired);
    restarted := conveyor._restart_services(v_now, v_limit);
    perform conveyor._tick_note('restart', p_runs => 1, p_changed => restarted);
    repaired := conveyor._repair_counters(v_now);
    perform conveyor._tick_note('repair', p_runs => 1, p_changed => repaired);
    delivered := conveyor._deliver_due(v_now, v_limit);
    perform conveyor._tick_note('deliver', p_runs => 1, p_changed => delivered);
    flushed := conveyor._flush_outbox(v_now, v_limit);
    perform conveyor._tick_note('flush', p_runs => 1, p_changed => flushed);
    pruned := conveyor._prune(v_now, v_limit);
    perform conveyor._tick_note('prune', p_runs => 1, p_changed => pruned);
    begin
        -- a tick by hand left open holds the manual totals rows: this step then gives up after
        -- lock_timeout, alone, and the counters wait in their deltas for a later tick
        counted := conveyor._fold_counters(v_limit);
        perform conveyor._tick_note('count', p_runs => 1, p_changed => counted);
    exception when lock_not_available or deadlock_detected then
        counted := -1;
        perform conveyor._tick_note('count', p_runs => 1, p_failures => 1, p_error => sqlstate || ': ' || left(sqlerrm, 500));
    end;
end
$$;

comment on function conveyor.tick is
    'one pass of maintenance: hint claims while an old snapshot is held, expire leases and timeouts, fire schedules, restart services, repair capacity counters, deliver due runs, flush the outbox, prune, fold counter deltas; returns counts';

-- every step's counter rows, one per source, exist before the first tick: _tick_note only
-- updates them (SKIP LOCKED), so no tick waits on another's row
insert into conveyor._tick_stats (step, source)
select s.step, v.source
from unnest(conveyor.tick_steps()) as s(step)
cross join (values ('worker'), ('manual')) as v(source)
on conflict do nothing;

-- ============================================================================================
-- sql/functions/views.sql

-- functions/views.sql: what dashboards read. Every view is plain SQL over the run, attempt and event
-- tables; "recent" windows are measured from conveyor._now(). Retry pressure (failures that
-- were retried) is reported apart from releases (business waiting), never summed with them.

-- queue_stats: per queue, runs by status now, the lag of the oldest claimable run (workers
-- behind) and of the oldest due run not yet delivered (tick behind), and what finished,
-- retried and released in the last 5 minutes.
create or replace view conveyor.queue_stats as
with now as (select conveyor._now() as t),
counts as (
    select r.queue,
           count(*) filter (where r.status = 'scheduled') as scheduled,
           count(*) filter (where r.status = 'queued') as queued,
           count(*) filter (where r.status = 'running') as running,
           count(*) filter (where r.status = 'retrying') as retrying,
           count(*) filter (where r.status = 'released') as released,
           count(*) filter (where r.status = 'succeeded') as succeeded,
           count(*) filter (where r.status = 'failed') as failed,
           count(*) filter (where r.status = 'cancelled') as cancelled,
           count(*) filter (where r.status = 'skipped') as skipped,
           min(r.run_at) filter (where r.status = 'queued') as oldest_queued,
           min(r.run_at) filter (where conveyor._waiting(r.status)
                                   and r.run_at <= (select t from now)) as oldest_undelivered
    from conveyor.runs r
    group by r.queue
),
recent as (
    select a.queue,
           count(*) filter (where a.outcome = 'succeeded') as succeeded_5m,
           count(*) filter (where conveyor._is_failure(a.outcome)) as failures_5m,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is not null) as retries_5m,
           count(*) filter (where a.outcome = 'released') as releases_5m
    from conveyor.attempts a, now
    where a.finished_at > now.t - interval '5 minutes' and a.finished_at <= now.t
    group by a.queue
)
select q.name as queue, now.t as as_of, q.paused, q.concurrency,
       coalesce(c.scheduled, 0) as scheduled, coalesce(c.queued, 0) as queued, coalesce(c.running, 0) as running,
       coalesce(c.retrying, 0) as retrying, coalesce(c.released, 0) as released,
       coalesce(c.succeeded, 0) as succeeded, coalesce(c.failed, 0) as failed,
       coalesce(c.cancelled, 0) as cancelled, coalesce(c.skipped, 0) as skipped,
       -- clamped to what numeric(12, 3) holds (31 years): no row can make the view fail for everyone
       least(greatest(coalesce(extract(epoch from now.t - c.oldest_queued), 0), -999999999), 999999999)::numeric(12, 3)
           as lag_seconds,
       least(greatest(coalesce(extract(epoch from now.t - c.oldest_undelivered), 0), -999999999), 999999999)::numeric(12, 3)
           as delivery_lag_seconds,
       coalesce(r.succeeded_5m, 0) as succeeded_5m,
       (coalesce(r.succeeded_5m, 0) / 300.0)::numeric(12, 3) as throughput_per_s_5m,
       coalesce(r.failures_5m, 0) as failures_5m,
       coalesce(r.retries_5m, 0) as retries_5m,
       coalesce(r.releases_5m, 0) as releases_5m
from conveyor.queues q
cross join now
left join counts c on c.queue = q.name
left join recent r on r.queue = q.name;

comment on view conveyor.queue_stats is
    'per queue at as_of: runs by status, lag_seconds (oldest claimable run), delivery_lag_seconds (oldest due run tick has not delivered: grows if tick stops), and the last 5 minutes: succeeded, throughput, failures, retries (failure pressure) and releases (waiting)';

-- task_stats: per task, runs by status now (kept runs: retention), the retry and release
-- counters of those runs, and the attempts of the last hour: how many, failures, retries,
-- releases, mean duration of successful ones.
create or replace view conveyor.task_stats as
with now as (select conveyor._now() as t),
counts as (
    select r.task,
           count(*) filter (where r.status = 'scheduled') as scheduled,
           count(*) filter (where r.status = 'queued') as queued,
           count(*) filter (where r.status = 'running') as running,
           count(*) filter (where r.status = 'retrying') as retrying,
           count(*) filter (where r.status = 'released') as released,
           count(*) filter (where r.status = 'succeeded') as succeeded,
           count(*) filter (where r.status = 'failed') as failed,
           count(*) filter (where r.status = 'cancelled') as cancelled,
           sum(r.retries) as retries,
           sum(r.releases) as releases
    from conveyor.runs r
    group by r.task
),
recent as (
    select a.task,
           count(*) as attempts_1h,
           count(*) filter (where conveyor._is_failure(a.outcome)) as failures_1h,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is not null) as retries_1h,
           count(*) filter (where a.outcome = 'released') as releases_1h,
           avg(extract(epoch from a.finished_at - a.started_at)) filter (where a.outcome = 'succeeded') as mean_seconds
    from conveyor.attempts a, now
    where a.finished_at > now.t - interval '1 hour' and a.finished_at <= now.t
    group by a.task
)
select t.name as task, t.kind, t.queue, t.enabled, t.version,
       coalesce(c.scheduled, 0) as scheduled, coalesce(c.queued, 0) as queued, coalesce(c.running, 0) as running,
       coalesce(c.retrying, 0) as retrying, coalesce(c.released, 0) as released,
       coalesce(c.succeeded, 0) as succeeded, coalesce(c.failed, 0) as failed, coalesce(c.cancelled, 0) as cancelled,
       coalesce(c.retries, 0) as retries, coalesce(c.releases, 0) as releases,
       coalesce(r.attempts_1h, 0) as attempts_1h, coalesce(r.failures_1h, 0) as failures_1h,
       coalesce(r.retries_1h, 0) as retries_1h, coalesce(r.releases_1h, 0) as releases_1h,
       r.mean_seconds::numeric(12, 3) as mean_seconds_1h
from conveyor.tasks t
left join counts c on c.task = t.name
left join recent r on r.task = t.name;

comment on view conveyor.task_stats is
    'per task: runs by status, retries and releases of the runs kept, and the last hour of attempts (failures, retries, releases, mean duration)';

-- recent_failures: failed attempts of the last 24 hours, newest first, with their error.
create or replace view conveyor.recent_failures as
select a.finished_at, a.run_id, a.task, a.queue, a.attempt, a.outcome,
       a.error ->> 'code' as code, a.error ->> 'message' as message, a.error -> 'meta' as meta,
       a.worker, r.status as run_status, a.delay as retry_in, a.finished_at + a.delay as retry_at
from conveyor.attempts a
left join conveyor.runs r on r.id = a.run_id
where conveyor._is_failure(a.outcome)
  and a.finished_at > conveyor._now() - interval '24 hours'
order by a.finished_at desc;

comment on view conveyor.recent_failures is
    'failed, timed-out, crashed and log-overflow attempts of the last 24 hours, newest first (retry_at: when it was due again; null if not retried)';

-- throughput: per queue and minute, the last hour (every minute, zeros included): attempts
-- succeeded, retried (failed and retried), failed (for good) and released, for charts.
create or replace view conveyor.throughput as
with now as (select date_trunc('minute', conveyor._now()) as t),
minutes as (
    select q.name as queue, m.minute
    from conveyor.queues q
    cross join now
    cross join generate_series(now.t - interval '59 minutes', now.t, interval '1 minute') as m(minute)
),
counts as (
    select a.queue, date_trunc('minute', a.finished_at) as minute,
           count(*) filter (where a.outcome = 'succeeded') as succeeded,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is not null) as retried,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is null) as failed,
           count(*) filter (where a.outcome = 'released') as released
    from conveyor.attempts a, now
    where a.finished_at >= now.t - interval '59 minutes' and a.finished_at < now.t + interval '1 minute'
    group by 1, 2
)
select m.queue, m.minute,
       coalesce(c.succeeded, 0) as succeeded, coalesce(c.retried, 0) as retried,
       coalesce(c.failed, 0) as failed, coalesce(c.released, 0) as released
from minutes m
left join counts c on c.queue = m.queue and c.minute = m.minute
order by m.minute, m.queue;

comment on view conveyor.throughput is
    'per queue and minute of the last hour (all 60 minutes): attempts succeeded, retried, failed and released';

-- run_history: a run's attempts and events in time order, one row each (its timeline).
create or replace view conveyor.run_history as
select e.run_id, e.at, 'event' as kind, e.type::text as what, e.attempt, e.data as detail
from conveyor.events e
union all
select a.run_id, a.finished_at, 'attempt', a.outcome::text, a.attempt,
       jsonb_strip_nulls(jsonb_build_object('attempt_id', a.id::text, 'worker', a.worker,
                                            'started_at', a.started_at, 'error', a.error, 'reason', a.reason,
                                            'delay', conveyor._duration_text(a.delay)))
from conveyor.attempts a;

comment on view conveyor.run_history is 'each run''s events and ended attempts (filter by run_id, order by at)';

-- counters: monotonic totals per queue and task, which pruning never lowers (docs/counters.md
-- "Totals"): counter is `enqueued` (runs created), `attempt.<outcome>` (attempts ended so) or
-- `retried` (failures that led to a retry). The totals the tick step `count` folded plus the
-- deltas it has not folded yet: exact in every snapshot.
create or replace view conveyor.counters as
select c.queue, c.task, c.counter, sum(c.n)::bigint as value
from (select t.queue, t.task, t.counter, t.n from conveyor._counters t
      union all
      select d.queue, d.task, d.counter, d.n from conveyor._counter_deltas d) c
group by c.queue, c.task, c.counter;

comment on view conveyor.counters is 'monotonic totals per queue and task: enqueued, attempt.<outcome>, retried (never lowered by pruning)';

-- rate_limits: each rate limit (a queue's or a task's): its limit and period, the runs started
-- in the window now, the room left, its queued runs, and those of them the limit holds back
-- (all of them while there is no room). A task's limit counts its runs in every queue.
create or replace view conveyor.rate_limits as
select l.scope, l.name, l.n as "limit", l.period, w.started, w.room,
       q.queued,
       case when w.room = 0 then q.queued else 0 end as held_back
from (select 'queue' as scope, q.name, q.rate_limit_n as n, q.rate_limit_period as period
      from conveyor.queues q where q.rate_limit_n is not null
      union all
      select 'task', t.name, t.rate_limit_n, t.rate_limit_period
      from conveyor.tasks t where t.rate_limit_n is not null) l
cross join lateral (
    -- per shard: its share less its starts of the window
    select coalesce(sum(h.used), 0)::bigint as started, coalesce(sum(greatest(h.quota - h.used, 0)), 0)::bigint as room
    from (select r.quota, coalesce((select sum(s.n) from conveyor._rate_starts s
                                    where s.scope = r.scope and s.name = r.name and s.shard = r.shard
                                      and s.at > conveyor._now() - l.period), 0) as used
          from conveyor._rate_limits r where r.scope = l.scope and r.name = l.name) h) w
cross join lateral (
    select case l.scope
        when 'queue' then (select count(*) from conveyor.runs r where r.status = 'queued' and r.queue = l.name)
        else (select count(*) from conveyor.runs r where r.status = 'queued' and r.task = l.name)
    end as queued) q;

comment on view conveyor.rate_limits is 'each rate limit: limit, period, started in the window, room left, queued and held-back runs';

-- key_limits: each key limit (a queue's or a task's key_concurrency and key_rate_limit): the
-- keys with runs queued or running under it, how many of those keys are at the limit (all the
-- runs they may run are running, or their rate window is full), the runs running and queued,
-- and the queued runs the limit holds back (those of the keys at the limit).
create or replace view conveyor.key_limits as
select l.scope, l.name, l.conc as key_concurrency, l.rate_n as key_rate_limit, l.rate_p as key_rate_period,
       count(k.key) as keys,
       count(k.key) filter (where k.at_limit) as keys_at_limit,
       coalesce(sum(k.running), 0)::bigint as running,
       coalesce(sum(k.queued), 0)::bigint as queued,
       coalesce(sum(k.queued) filter (where k.at_limit), 0)::bigint as held_back
from (select 'queue' as scope, q.name, q.key_concurrency as conc, q.key_rate_limit_n as rate_n, q.key_rate_limit_period as rate_p
      from conveyor.queues q where q.key_concurrency is not null or q.key_rate_limit_n is not null
      union all
      select 'task', t.name, t.key_concurrency, t.key_rate_limit_n, t.key_rate_limit_period
      from conveyor.tasks t where t.key_concurrency is not null or t.key_rate_limit_n is not null) l
left join lateral (
    select c.key, c.running, c.queued,
           c.running >= l.conc
           or l.rate_n <= (select coalesce(sum(s.n), 0) from conveyor._rate_starts s
                           where s.scope = l.scope || '_key' and s.name = l.name and s.key = c.key
                             and s.at > conveyor._now() - l.rate_p) as at_limit
    from (select x.key, sum(x.running) as running, sum(x.queued) as queued
          -- each scope and status by its index (a branch whose scope is not the limit's is skipped)
          from (select r.concurrency_key as key, 0 as running, 1 as queued from conveyor.runs r
                where l.scope = 'queue' and r.queue = l.name and r.status = 'queued' and r.concurrency_key is not null
                union all
                select r.concurrency_key, 1, 0 from conveyor.runs r
                where l.scope = 'queue' and r.queue = l.name and r.status = 'running' and r.concurrency_key is not null
                union all
                select r.concurrency_key, (r.status = 'running')::int, (r.status = 'queued')::int from conveyor.runs r
                where l.scope = 'task' and r.task = l.name and r.status in ('queued', 'running')
                  and r.concurrency_key is not null) x
          group by x.key) c
) k on true
group by l.scope, l.name, l.conc, l.rate_n, l.rate_p;

comment on view conveyor.key_limits is 'each key limit: keys with runs, keys at the limit, running, queued and held-back runs';

-- _metric_label: a Prometheus label value, escaped.
create or replace function conveyor._metric_label(value text)
returns text
language sql
immutable
as $$
    select '"' operator(pg_catalog.||)
           pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(value, '\', '\\'), '"', '\"'), E'\n', '\n')
           operator(pg_catalog.||) '"'
$$;

-- metrics: the figures of queue_stats, tick's own counters (conveyor._tick_stats, monotonic) and
-- conveyor.counters in Prometheus text exposition format: each family's HELP
-- and TYPE lines, then its samples ordered by queue and label (a family stays in one block, as
-- the format requires).
create or replace function conveyor.metrics()
returns text
language sql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    with s as (select * from conveyor.queue_stats),
    family (ord, name, type, help) as (values
        (1, 'conveyor_runs', 'gauge', 'Runs by queue and status.'),
        (2, 'conveyor_queue_lag_seconds', 'gauge', 'Age of the oldest claimable run.'),
        (3, 'conveyor_queue_delivery_lag_seconds', 'gauge', 'Age of the oldest due run not yet delivered by tick.'),
        (4, 'conveyor_attempts_5m', 'gauge', 'Attempts ended in the last 5 minutes, by kind.'),
        (5, 'conveyor_queue_paused', 'gauge', 'Whether the queue is paused.'),
        (6, 'conveyor_tick_step_runs_total', 'counter', 'Calls of each tick step.'),
        (7, 'conveyor_tick_step_failures_total', 'counter', 'Calls of each tick step that failed whole.'),
        (8, 'conveyor_tick_step_changed_total', 'counter', 'Rows each tick step changed.'),
        (9, 'conveyor_tick_step_skipped_total', 'counter', 'Rows or queues a tick step left for a later tick because a client held their lock.'),
        (10, 'conveyor_tick_step_quarantined_total', 'counter', 'Runs a tick step set aside because they failed alone.'),
        (11, 'conveyor_quarantined_runs', 'gauge', 'Runs set aside by a tick step now (conveyor.quarantine).'),
        (12, 'conveyor_runs_enqueued_total', 'counter', 'Runs created (enqueued, scheduled or fired), by queue and task.'),
        (13, 'conveyor_attempts_total', 'counter', 'Attempts ended, by queue, task and outcome.'),
        (14, 'conveyor_retries_total', 'counter', 'Failed attempts that led to a retry, by queue and task.'),
        (15, 'conveyor_releases_total', 'counter', 'Attempts released (business waiting, not a failure), by queue and task: attempts_total with outcome released.'),
        (16, 'conveyor_rate_limit_room', 'gauge', 'Runs a rate limit lets start now (its limit less the starts of its window), by scope (queue or task) and name.'),
        (17, 'conveyor_rate_limit_held_back_runs', 'gauge', 'Queued runs a rate limit holds back now (all of its queued runs while it has no room).'),
        (18, 'conveyor_key_limit_keys_at_limit', 'gauge', 'Concurrency keys at a key limit now (key_concurrency or key_rate_limit), by scope (queue or task) and name.'),
        (19, 'conveyor_key_limit_held_back_runs', 'gauge', 'Queued runs a key limit holds back now (those of its keys at the limit).')
    ),
    -- conveyor.counters, read once
    counter as (select * from conveyor.counters),
    sample (family, labels, value) as (
        select 'conveyor_runs', format('queue=%s,status=%s', conveyor._metric_label(s.queue), conveyor._metric_label(st.status)),
               st.n::text
        from s cross join lateral (values
            ('scheduled', s.scheduled), ('queued', s.queued), ('running', s.running), ('retrying', s.retrying),
            ('released', s.released), ('succeeded', s.succeeded), ('failed', s.failed),
            ('cancelled', s.cancelled), ('skipped', s.skipped)) as st(status, n)
        union all
        select 'conveyor_queue_lag_seconds', 'queue=' || conveyor._metric_label(s.queue), s.lag_seconds::text from s
        union all
        select 'conveyor_queue_delivery_lag_seconds', 'queue=' || conveyor._metric_label(s.queue),
               s.delivery_lag_seconds::text from s
        union all
        select 'conveyor_attempts_5m', format('queue=%s,kind=%s', conveyor._metric_label(s.queue), conveyor._metric_label(k.kind)),
               k.n::text
        from s cross join lateral (values
            ('succeeded', s.succeeded_5m), ('failed', s.failures_5m), ('retried', s.retries_5m),
            ('released', s.releases_5m)) as k(kind, n)
        union all
        select 'conveyor_queue_paused', 'queue=' || conveyor._metric_label(s.queue), s.paused::int::text from s
        union all
        -- the worker's and the manual ticks' counters, summed (each monotonic, so the sum is)
        select f.name, 'step=' || conveyor._metric_label(t.step),
               (case f.name when 'conveyor_tick_step_runs_total' then t.runs
                            when 'conveyor_tick_step_failures_total' then t.failures
                            when 'conveyor_tick_step_changed_total' then t.changed
                            when 'conveyor_tick_step_skipped_total' then t.skipped
                            else t.quarantined end)::text
        from (select s.step, sum(s.runs) as runs, sum(s.failures) as failures, sum(s.changed) as changed,
                     sum(s.skipped) as skipped, sum(s.quarantined) as quarantined
              from conveyor._tick_stats s group by s.step) t
        cross join (values ('conveyor_tick_step_runs_total'), ('conveyor_tick_step_failures_total'),
                           ('conveyor_tick_step_changed_total'), ('conveyor_tick_step_skipped_total'),
                           ('conveyor_tick_step_quarantined_total')) as f(name)
        union all
        select 'conveyor_quarantined_runs', 'step=' || conveyor._metric_label(q.step),
               (count(*) filter (where q.retry_at > conveyor._now()))::text
        from conveyor.quarantine q
        group by q.step
        union all
        select case when c.counter = 'enqueued' then 'conveyor_runs_enqueued_total' else 'conveyor_retries_total' end,
               format('queue=%s,task=%s', conveyor._metric_label(c.queue), conveyor._metric_label(c.task)),
               c.value::text
        from counter c where c.counter in ('enqueued', 'retried')
        union all
        select 'conveyor_attempts_total',
               format('queue=%s,task=%s,outcome=%s', conveyor._metric_label(c.queue), conveyor._metric_label(c.task),
                      conveyor._metric_label(substr(c.counter, length('attempt.') + 1))),
               c.value::text
        from counter c where c.counter like 'attempt.%'
        union all
        select 'conveyor_releases_total',
               format('queue=%s,task=%s', conveyor._metric_label(c.queue), conveyor._metric_label(c.task)),
               c.value::text
        from counter c where c.counter = 'attempt.released'
        union all
        select f.name, format('scope=%s,name=%s', conveyor._metric_label(l.scope), conveyor._metric_label(l.name)),
               (case f.name when 'conveyor_rate_limit_room' then l.room else l.held_back end)::text
        from conveyor.rate_limits l
        cross join (values ('conveyor_rate_limit_room'), ('conveyor_rate_limit_held_back_runs')) as f(name)
        union all
        select f.name, format('scope=%s,name=%s', conveyor._metric_label(l.scope), conveyor._metric_label(l.name)),
               (case f.name when 'conveyor_key_limit_keys_at_limit' then l.keys_at_limit else l.held_back end)::text
        from conveyor.key_limits l
        cross join (values ('conveyor_key_limit_keys_at_limit'), ('conveyor_key_limit_held_back_runs')) as f(name)
    ),
    block as (
        select f.ord,
               format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
               || coalesce(E'\n' || string_agg(format('%s{%s} %s', x.family, x.labels, x.value),
                                                E'\n' order by x.labels) filter (where x.family is not null), '') as text
        from family f
        left join sample x on x.family = f.name
        group by f.ord, f.name, f.type, f.help
    )
    select string_agg(b.text, E'\n' order by b.ord) || E'\n' from block b
$$;

comment on function conveyor.metrics() is 'queue figures in Prometheus text exposition format (serve it from any HTTP endpoint)';

-- _dashboard_views: the views above that view_rows serves; pg_conveyor_router mirrors the same
-- list (it asks a shard for it), so a view added here reaches the router's mirror too.
create or replace function conveyor._dashboard_views()
returns text[]
language sql
immutable
as $$
    select array['queue_stats', 'task_stats', 'recent_failures', 'throughput', 'run_history',
                 'counters', 'rate_limits', 'key_limits']
$$;

-- view_rows: the rows of one of the views above as JSON, for pg_conveyor_router (router/router.sql),
-- which gathers them from every shard into views of the same names. Runs with the caller's
-- rights: whoever may read the view may read its rows this way, and no one else.
create or replace function conveyor.view_rows(view text)
returns setof jsonb
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if view is null or not (view = any (conveyor._dashboard_views())) then
        perform conveyor._raise_invalid(format('view_rows: no view %s: expected one of %s',
                                               coalesce(quote_literal(view), 'null'), array_to_string(conveyor._dashboard_views(), ', ')));
    end if;
    return query execute format('select to_jsonb(v) from conveyor.%I v', view);
end
$$;

comment on function conveyor.view_rows(text) is 'the rows of a dashboard view as JSON (what pg_conveyor_router gathers from each shard)';

-- ============================================================================================
-- sql/functions/roles.sql

-- functions/roles.sql: four roles, each granted only its job. Nobody but the owner writes the tables;
-- every state change goes through a SECURITY DEFINER function with a fixed search_path
-- (pg_catalog, conveyor, pg_temp), so objects in a caller's schemas are never picked up.
--
--   conveyor_producer  enqueue runs, publish outbox messages
--   conveyor_worker    claim runs and finish them under their lease
--   conveyor_reader    read runs, attempts, events and the dashboard views
--   conveyor_admin     configure tasks and queues, cancel and retry, tick; and all of the above

do $$
declare
    v_role text;
begin
    foreach v_role in array array['conveyor_admin', 'conveyor_producer', 'conveyor_worker', 'conveyor_reader'] loop
        if not exists (select from pg_catalog.pg_roles where rolname = v_role) then
            execute format('create role %I nologin', v_role);
        end if;
    end loop;
end
$$;

grant conveyor_producer, conveyor_worker, conveyor_reader to conveyor_admin;

revoke all on all tables in schema conveyor from public;

revoke all on all sequences in schema conveyor from public;

revoke execute on all functions in schema conveyor from public;

grant usage on schema conveyor to conveyor_admin, conveyor_producer, conveyor_worker, conveyor_reader;

-- the types' own functions (I/O, comparison) and harmless helpers stay usable by everyone
grant execute on function
    conveyor.ulid_in(cstring), conveyor.ulid_out(conveyor.ulid), conveyor.ulid_recv(internal),
    conveyor.ulid_send(conveyor.ulid), conveyor.ulid_eq(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_ne(conveyor.ulid, conveyor.ulid), conveyor.ulid_lt(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_le(conveyor.ulid, conveyor.ulid), conveyor.ulid_gt(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_ge(conveyor.ulid, conveyor.ulid), conveyor.ulid_cmp(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_hash(conveyor.ulid), conveyor.ulid_hash_extended(conveyor.ulid, bigint),
    conveyor.ulid_sortsupport(internal), conveyor.ulid_generate(), conveyor.ulid_timestamp(conveyor.ulid),
    conveyor.ulid_partition(conveyor.ulid),
    conveyor.duration_in(cstring), conveyor.duration_out(conveyor.duration),
    conveyor.duration_recv(internal), conveyor.duration_send(conveyor.duration), conveyor.duration_from_interval(interval),
    conveyor._duration_text(interval), conveyor._is_failure(conveyor.attempt_outcome), conveyor._now(),
    conveyor._option_registry(),
    conveyor._finished(conveyor.run_status), conveyor._live(conveyor.run_status), conveyor._waiting(conveyor.run_status),
    conveyor._delivered(conveyor.run_status), conveyor._is_delivered(conveyor.run_status), conveyor._outcome_status(conveyor.attempt_outcome),
    conveyor.tick_steps()
to public;

grant execute on function
    conveyor.enqueue(text, jsonb, timestamptz, conveyor.duration, integer, text, text, conveyor.ulid, text),
    conveyor.enqueue_many(text, jsonb[], timestamptz, conveyor.duration, integer, text, text[], conveyor.ulid, text[]),
    conveyor.publish(text, jsonb, timestamptz)
to conveyor_producer;

grant execute on function
    conveyor.claim_run(text, text, conveyor.duration, text[], boolean),
    conveyor.claim_runs(text, text, integer, conveyor.duration, text[], boolean),
    conveyor.pending(text),
    conveyor.rate_limited_until(text),
    conveyor.lease_granted(conveyor.duration),
    conveyor.complete_run(conveyor.ulid, uuid, jsonb),
    conveyor.fail_run(conveyor.ulid, uuid, text, jsonb, boolean),
    conveyor.release_run(conveyor.ulid, uuid, text, text, jsonb),
    conveyor.return_run(conveyor.ulid, uuid),
    conveyor.finish_runs(jsonb),
    conveyor.finish_and_claim(jsonb, text, text, integer, conveyor.duration, text[], boolean),
    conveyor.heartbeat(conveyor.ulid, uuid, conveyor.duration),
    conveyor.append_log(conveyor.ulid, uuid, text)
to conveyor_worker;

grant select on
    conveyor.runs, conveyor.attempts, conveyor.attempt_logs, conveyor.events, conveyor.tasks,
    conveyor.queues, conveyor.transitions, conveyor.defaults, conveyor.task_config, conveyor.outbox,
    conveyor.queue_stats, conveyor.task_stats, conveyor.recent_failures, conveyor.throughput, conveyor.run_history,
    conveyor.run_statuses, conveyor.attempt_outcomes, conveyor.error_codes, conveyor.options,
    conveyor.quarantine, conveyor._tick_stats, conveyor.sessions, conveyor.counters, conveyor.rate_limits,
    conveyor.key_limits
to conveyor_reader;

grant execute on function conveyor.metrics(), conveyor.view_rows(text), conveyor._dashboard_views() to conveyor_reader;

grant select on all tables in schema conveyor to conveyor_admin;

grant execute on function
    conveyor.define_task(text, text, integer, integer, text, text, text, text, text, integer, text, text, text,
                         integer, jsonb, text, text, text, text, text, integer, text),
    conveyor.define_service(text, integer, text, text, text, text, jsonb, jsonb),
    conveyor.disable_task(text), conveyor.enable_task(text),
    conveyor.set_queue(text, integer, boolean, boolean, boolean, boolean, text, integer, text),
    conveyor.pause_queue(text), conveyor.resume_queue(text), conveyor.drop_queue(text),
    conveyor.set_defaults(jsonb), conveyor.apply_config(jsonb), conveyor.check_config(jsonb),
    conveyor.cancel_run(conveyor.ulid), conveyor.cancel_runs(text, text, conveyor.run_status, integer),
    conveyor.retry_run(conveyor.ulid),
    conveyor.retry_runs(text, text, conveyor.run_status, timestamptz, integer),
    conveyor.tick(), conveyor.tick_step(text),
    conveyor.start_service(text), conveyor.stop_service(text),
    conveyor.outbox_claim(text, text[], integer, conveyor.duration), conveyor.outbox_ack(conveyor.ulid[], uuid)
to conveyor_admin;
