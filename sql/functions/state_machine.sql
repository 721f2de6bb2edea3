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
