-- schema.sql: tables, indexes, the allowed transitions and the one trigger that enforces them.
--
-- Conventions of every function in sql/: PL/pgSQL (it keeps its plans; a SQL function that
-- cannot be inlined is parsed and planned again on every call), `set search_path = pg_catalog,
-- conveyor, pg_temp`, and `set plan_cache_mode = force_generic_plan` (the parameters are arrays
-- and ids, for which a custom plan is no better, and planning each call cost more than running
-- the statements: measured 0.18 ms -> 0.05 ms for _side_effects).
--
-- Hot tables (runs, attempts, events) have no foreign keys: the functions in runs.sql keep them
-- consistent and retention deletes a run with its attempts, events and logs together.

-- ---------------------------------------------------------------------------------------------
-- defaults

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
    constraint defaults_one_row check (singleton)
);
comment on table conveyor._defaults is
    'defaults an operator set (conveyor.set_defaults / apply_config); conveyor.defaults shows the effective ones';

create view conveyor.defaults as
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
    coalesce(o.restart_max_delay, interval '60 seconds') as restart_max_delay
from (values (true)) as one(singleton)
left join conveyor._defaults o using (singleton);
comment on view conveyor.defaults is 'effective defaults: what a task that leaves an option off gets';

-- ---------------------------------------------------------------------------------------------
-- queues and tasks

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
    constraint tasks_kind check (kind in ('task', 'service')),
    constraint tasks_service_has_replicas check ((kind = 'service') = (replicas is not null)),
    constraint tasks_active_not_negative check (active >= 0),
    constraint tasks_schedule_has_cursor check ((schedule is null) = (next_fire_at is null))
);

-- task_config: each task's effective options, its own where given, else the defaults.
-- A custom backoff list is capped only by an explicitly given max_delay.
create view conveyor.task_config as
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
    coalesce(t.restart_max_delay, d.restart_max_delay) as restart_max_delay
from conveyor.tasks t
cross join conveyor.defaults d;
comment on view conveyor.task_config is 'each task''s effective configuration (its options over conveyor.defaults)';

-- ---------------------------------------------------------------------------------------------
-- runs

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

-- claim: one index range per queue, in claim order; only claimable rows are in it
create index runs_claimable on conveyor.runs (queue, priority, run_at, id) where status = 'queued';
-- tick delivery: waiting runs by due time, per queue
create index runs_waiting_due on conveyor.runs (queue, run_at)
    where status in ('scheduled', 'retrying', 'released');
-- tick expiry: running runs by the earlier of lease expiry and timeout
create index runs_running_deadline on conveyor.runs ((least(lease_expires_at, timeout_at)))
    where status = 'running';
-- retention and recent-throughput dashboards
create index runs_finished on conveyor.runs (finished_at) where finished_at is not null;
-- one live run per idempotency key and task (race-free under concurrent enqueues)
create unique index runs_idempotency on conveyor.runs (task, idempotency_key)
    where idempotency_key is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped');
-- cron: exactly one run per task and firing
create unique index runs_cron_firing on conveyor.runs (task, fire_at) where fire_at is not null;
-- cron overlap: the firings of a task still in flight
create index runs_cron_in_flight on conveyor.runs (task)
    where fire_at is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped');
-- services: at most one live run per replica, and each replica's history
create unique index runs_service_replica_live on conveyor.runs (task, replica)
    where replica is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped');
create index runs_service_replica_history on conveyor.runs (task, replica, id) where replica is not null;
-- retry_run refuses runs that spawned children
create index runs_parent on conveyor.runs (parent_run_id) where parent_run_id is not null;

-- ---------------------------------------------------------------------------------------------
-- attempts, logs, events

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
create index attempt_logs_by_run on conveyor.attempt_logs (run_id, id);
comment on table conveyor.attempt_logs is 'log text appended by workers, one row per append';

create table conveyor.events (
    id bigint generated always as identity,
    run_id conveyor.ulid not null,
    at timestamptz not null,
    type conveyor.event_type not null,
    -- the attempt this event is about (started: the one starting; ended: the one that ended)
    attempt integer not null,
    data jsonb
) with (autovacuum_vacuum_insert_scale_factor = 0.05);
create index events_by_run on conveyor.events (run_id);
comment on table conveyor.events is 'append-only log of run transitions, written by the transition trigger';

-- ---------------------------------------------------------------------------------------------
-- outbox

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
create index outbox_unpublished on conveyor.outbox (deliver_at) where published_at is null;
create index outbox_unacked on conveyor.outbox (topic, deliver_at) where acked_at is null;
create index outbox_published on conveyor.outbox (published_at) where published_at is not null;
comment on table conveyor.outbox is 'messages written in the caller''s transaction, sent later at least once';

-- ---------------------------------------------------------------------------------------------
-- the state machine

create table conveyor.transitions (
    from_status conveyor.run_status,   -- null: the status a run may be inserted with
    to_status conveyor.run_status not null,
    event conveyor.event_type not null,
    constraint transitions_unique unique nulls not distinct (from_status, to_status)
);
comment on table conveyor.transitions is 'every allowed (from, to) status change of a run and the event it writes';

insert into conveyor.transitions (from_status, to_status, event) values
    (null,        'scheduled', 'run.enqueued'),
    (null,        'queued',    'run.enqueued'),
    (null,        'skipped',   'run.skipped'),
    ('scheduled', 'queued',    'run.delivery_requested'),
    ('retrying',  'queued',    'run.delivery_requested'),
    ('released',  'queued',    'run.delivery_requested'),
    ('queued',    'running',   'run.started'),
    ('running',   'succeeded', 'run.succeeded'),
    ('running',   'retrying',  'run.retry_scheduled'),
    ('running',   'failed',    'run.failed'),
    ('running',   'released',  'run.released'),
    ('running',   'queued',    'run.interrupted'),
    ('running',   'cancelled', 'run.cancelled'),
    ('scheduled', 'cancelled', 'run.cancelled'),
    ('queued',    'cancelled', 'run.cancelled'),
    ('retrying',  'cancelled', 'run.cancelled'),
    ('released',  'cancelled', 'run.cancelled'),
    ('failed',    'queued',    'run.retried'),
    ('cancelled', 'queued',    'run.retried'),
    ('succeeded', 'queued',    'run.retried'),
    -- retry_run into a bounded queue (or capped task) without room: waits for delivery
    ('failed',    'scheduled', 'run.retried'),
    ('cancelled', 'scheduled', 'run.retried'),
    ('succeeded', 'scheduled', 'run.retried');

-- One status change of a run, as the transition triggers hand it to _side_effects.
create type conveyor._transition as (
    run_id conveyor.ulid,
    from_status conveyor.run_status,
    to_status conveyor.run_status,
    queue text,
    task text
);

-- _event_data: the detail an event carries (most carry none). Stable like jsonb_build_object,
-- so the planner inlines it.
create function conveyor._event_data(event conveyor.event_type, worker text, error_code text, delay interval)
returns jsonb
language sql
stable
parallel safe
as $$
    select case event
        when 'run.started' then jsonb_build_object('worker', worker)
        when 'run.retry_scheduled' then jsonb_build_object('code', error_code, 'delay', conveyor._duration_text(delay))
        when 'run.failed' then jsonb_build_object('code', error_code)
        when 'run.released' then jsonb_build_object('delay', conveyor._duration_text(delay))
    end
$$;

-- _delivered: 1 while a run in this status is delivered (queued or running: what a bounded
-- queue's concurrency and a task's parallelism count), else 0, also for a new run's missing
-- from-status. Inlined by the planner.
create function conveyor._delivered(status conveyor.run_status)
returns integer
language sql
immutable
parallel safe
as $$ select coalesce((status in ('queued', 'running'))::int, 0) $$;

-- _side_effects: what some status changes entail beyond their event, in the same transaction:
-- the delivered counters of bounded queues and capped tasks (queue rows first, then task rows,
-- each in name order: the lock order of enqueue and tick, so concurrent batches cannot
-- deadlock), and for runs that became claimable, a wakeup on their queue's channel and a
-- delivery-outbox row where the queue asks for one.
create function conveyor._side_effects(changes conveyor._transition[])
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
begin
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
    set delivered = q.delivered + d.n
    from delta d
    where q.name = d.name and q.name in (select l.name from locked l);

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
    set active = t.active + d.n
    from delta d
    where t.name = d.name and t.name in (select l.name from locked l);

    -- a wakeup only for a queue that had nothing claimable before this change: workers of a
    -- queue with claimable runs are busy and claim again before they wait (NOTIFY takes a
    -- global lock through the commit, so a busy queue that notified on every enqueue would
    -- serialize its producers' commits; measured: 2,200-2,800 vs 3,700-3,800 enqueues/s)
    -- (the queue had nothing claimable if it now holds no more claimable runs than this change
    -- added: a count that stops after n + 1 index entries, whatever the backlog)
    perform pg_notify('conveyor.' || q.name, '')
    from (select c.queue, count(*) as n from unnest(changes) c where c.to_status = 'queued' group by c.queue) added
    join conveyor.queues q on q.name = added.queue
    where q.notify
      and (select count(*) from (select from conveyor.runs r
                                 where r.queue = added.queue and r.status = 'queued'
                                 limit added.n + 1) claimable) <= added.n;

    insert into conveyor.outbox (id, topic, payload, created_at, deliver_at)
    select conveyor.ulid_generate(), 'conveyor.delivery',
           jsonb_build_object('run_id', c.run_id::text, 'queue', c.queue, 'task', c.task), v_now, v_now
    from unnest(changes) c
    join conveyor.queues q on q.name = c.queue
    where c.to_status = 'queued' and q.delivery_outbox;
end
$$;

-- _runs_inserted / _runs_updated: the statement-level triggers that check every status change
-- of conveyor.runs, whoever made it, against conveyor.transitions, and write one event per
-- change in the same statement; CV004 for a change that is not allowed undoes the whole
-- statement. Updates that leave the status alone (heartbeats, counters) change nothing here.
create function conveyor._runs_inserted()
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
    )
    select min(format('run %s cannot go from (new) to %s', c.id, c.status)) filter (where c.event is null),
           bool_or(c.status = 'queued')
    into v_bad, v_side_effects
    from change c;
    if v_bad is not null then
        raise exception using errcode = 'CV004', message = v_bad,
            hint = 'runs are inserted as scheduled, queued or skipped (the rows of conveyor.transitions with no from_status)';
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
create function conveyor._runs_updated()
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
        raise exception using errcode = 'CV004', message = v_bad,
            hint = 'allowed changes are the rows of conveyor.transitions; change runs through the conveyor functions';
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

create trigger runs_transitions_on_insert
    after insert on conveyor.runs
    referencing new table as new_runs
    for each statement execute function conveyor._runs_inserted();

create trigger runs_transitions_on_update
    after update on conveyor.runs
    referencing old table as old_runs new table as new_runs
    for each statement execute function conveyor._runs_updated();

-- ---------------------------------------------------------------------------------------------
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
