-- runs.sql: the state changes of runs. Each public function finds its rows and makes its change
-- in one guarded statement; the transition trigger checks it against conveyor.transitions and
-- writes its events. Every attempt ends in conveyor._end_attempts, the one place that decides
-- what an outcome does to a run (status, counters, backoff) and writes the attempt row.

-- _sanitize: worker text made safe to store and show: control characters stripped (tab and
-- newline kept), at most 4000 characters.
-- (No SET clause on these two: they are inlined into the calling statement, which runs under
-- the caller's fixed search_path; a SET clause would make PostgreSQL parse and plan them anew on
-- every call.)
create function conveyor._sanitize(message text)
returns text
language sql
immutable
parallel safe
as $$
    select left(regexp_replace(message, E'[\\x01-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]', '', 'g'), 4000)
$$;

-- _failure: a failure record {code, message, meta}.
create function conveyor._failure(code text, message text, meta jsonb default null)
returns jsonb
language sql
stable
parallel safe
as $$
    select jsonb_build_object('code', code, 'message', coalesce(conveyor._sanitize(message), ''),
                              'meta', coalesce(meta, '{}'::jsonb))
$$;

-- _free_capacity: how many of `want` runs may be delivered now into a queue for a task, with
-- the bounded queue's and capped task's rows locked (queue first, then task) until commit.
create function conveyor._free_capacity(p_queue text, p_task text, p_want integer)
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

-- ---------------------------------------------------------------------------------------------
-- enqueue

-- _enqueue: insert runs of one task (scheduled, or queued when due now with capacity free), one
-- statement for the whole batch. Returns each input's run id in input order; an idempotency key
-- that matches a live run returns that run's id and writes nothing.
create function conveyor._enqueue(
    p_task text, p_payloads jsonb[], p_run_at timestamptz, p_delay interval, p_priority integer,
    p_queue text, p_keys text[], p_parent conveyor.ulid
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
begin
    -- the task, and whether its queue exists and is bounded (or the task capped), in one look-up
    select c.*, q.name as queue_found, (q.concurrency is not null or c.parallelism is not null) as limited
    into v_task
    from conveyor.task_config c
    left join conveyor.queues q on q.name = coalesce(p_queue, c.queue)
    where c.name = p_task;
    if not found then
        raise exception using errcode = 'CV003', message = format('unknown task "%s"', p_task),
            hint = 'define it first: select conveyor.define_task(''' || coalesce(p_task, '') || ''')';
    end if;
    if v_task.kind = 'service' then
        raise exception using errcode = '22023',
            message = format('task "%s" is a service: tick keeps its replicas running; it is not enqueued', p_task);
    end if;
    if p_run_at is not null and p_delay is not null then
        raise exception using errcode = '22023', message = 'give run_at or delay, not both';
    end if;
    if p_priority is not null and p_priority not between 0 and 9 then
        raise exception using errcode = '22023',
            message = format('invalid priority %s: expected 0 (first) to 9 (last)', p_priority);
    end if;
    if v_n = 1 then
        v_bad := case when p_payloads[1] is null or jsonb_typeof(p_payloads[1]) <> 'object' then 1 end;
    else
        select min(i.n) into v_bad
        from unnest(p_payloads) with ordinality as i(p, n)
        where i.p is null or jsonb_typeof(i.p) <> 'object';
    end if;
    if v_bad is not null then
        raise exception using errcode = '22023',
            message = format('payload must be a JSON object, got %s%s',
                             coalesce(jsonb_typeof(p_payloads[v_bad]), 'null'),
                             case when v_n > 1 then format(' (payload %s of %s)', v_bad, v_n) else '' end);
    end if;
    if p_keys is not null and cardinality(p_keys) <> v_n then
        raise exception using errcode = '22023',
            message = format('%s idempotency keys for %s payloads: give one per payload (or null)', cardinality(p_keys), v_n);
    end if;
    if p_parent is not null and not exists (select from conveyor.runs r where r.id = p_parent) then
        raise exception using errcode = 'CV002', message = format('unknown parent run %s', p_parent);
    end if;

    v_queue := coalesce(p_queue, v_task.queue);
    if v_task.queue_found is null then
        perform conveyor._ensure_queue(v_queue);
    end if;
    v_due := coalesce(p_run_at, v_now + p_delay, v_now);
    if v_due <= v_now then
        v_free := case when v_task.limited is not false then conveyor._free_capacity(v_queue, p_task, v_n) else v_n end;
    end if;

    with input as (
        select i.n::integer as n, i.p, i.k, conveyor.ulid_generate() as new_id
        from unnest(p_payloads, p_keys) with ordinality as i(p, k, n)
    ),
    inserted as (
        insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                   task_version, idempotency_key, parent_run_id)
        select i.new_id, p_task, v_queue,
               case when i.n <= v_free then 'queued' else 'scheduled' end::conveyor.run_status,
               coalesce(p_priority, v_task.priority), v_due, i.p, v_now, v_task.version, i.k, p_parent
        from input i
        order by i.n
        on conflict (task, idempotency_key)
            where idempotency_key is not null and status not in ('succeeded', 'failed', 'cancelled', 'skipped')
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
    -- keys that matched a live run: that run's id (a fresh statement sees runs committed since)
    return query
    select i.n::integer, coalesce(v_ids[i.n], (
        select r.id from conveyor.runs r
        where r.task = p_task and r.idempotency_key = i.k
          and r.status not in ('succeeded', 'failed', 'cancelled', 'skipped')))
    from unnest(p_keys) with ordinality as i(k, n)
    where v_ids[i.n] is null
    union all
    select i.n::integer, v_ids[i.n]
    from generate_subscripts(v_ids, 1) as i(n)
    where v_ids[i.n] is not null
    order by 1;
end
$$;

-- enqueue: create a run of a task, in the caller's transaction. Due now (the default) in an
-- unbounded queue it is queued (claimable at once; listeners on conveyor.<queue> are woken at
-- commit); later, or in a bounded queue without room, it is scheduled and tick delivers it.
create function conveyor.enqueue(
    task text,
    payload jsonb default '{}',
    run_at timestamptz default null,
    delay conveyor.duration default null,
    priority integer default null,
    queue text default null,
    idempotency_key text default null,
    parent_run_id conveyor.ulid default null
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
                                               parent_run_id) e);
end
$$;
comment on function conveyor.enqueue is
    'enqueue a run of a task (payload: a JSON object; run_at or delay; priority 0-9; queue override; idempotency_key; parent_run_id); returns its id';

-- enqueue_many: enqueue many runs of one task in one statement; returns their ids in order.
create function conveyor.enqueue_many(
    task text,
    payloads jsonb[],
    run_at timestamptz default null,
    delay conveyor.duration default null,
    priority integer default null,
    queue text default null,
    idempotency_keys text[] default null,
    parent_run_id conveyor.ulid default null
)
returns setof conveyor.ulid
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query
    select e.id from conveyor._enqueue(task, payloads, run_at, delay, priority, queue, idempotency_keys, parent_run_id) e
    order by e.ord;
end
$$;
comment on function conveyor.enqueue_many is
    'enqueue many runs of one task in one statement (one payload each; idempotency_keys aligned with payloads); returns their ids in order';

-- ---------------------------------------------------------------------------------------------
-- claim

-- How one attempt ends, as _end_attempts takes it. Workers prove the attempt with their
-- lease_token; tick proves it with the attempt_id it found expired.
create type conveyor._ending as (
    run_id conveyor.ulid,
    lease_token uuid,
    attempt_id conveyor.ulid,
    outcome conveyor.attempt_outcome,
    error jsonb,
    retryable boolean,
    result jsonb,
    release_delay interval,
    reason jsonb
);

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

-- claim_runs: claim up to `max` queued runs (priority, then due time, then id) from one queue or
-- several (comma-separated), optionally only of some tasks: queued -> running under a new lease.
-- Rows are locked FOR NO KEY UPDATE SKIP LOCKED, so concurrent claimers never share a run.
-- Runs of a disabled task fail (task_disabled) here instead of being returned.
create function conveyor.claim_runs(
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null
)
returns setof conveyor.claimed_run
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_names text[] := array(select btrim(q) from unnest(string_to_array(claim_runs.queues, ',')) q where btrim(q) <> '');
    v_open text[];
    v_lease interval := claim_runs.lease;
    v_ids conveyor.ulid[];
    v_claimed conveyor.claimed_run[];
    v_disabled conveyor._ending[];
begin
    if claim_runs.worker is null or btrim(claim_runs.worker) = '' or length(claim_runs.worker) > 200 then
        raise exception using errcode = '22023',
            message = 'worker must name the claiming worker (1 to 200 characters), e.g. host:pid';
    end if;
    if claim_runs.max is null or claim_runs.max not between 1 and 10000 then
        raise exception using errcode = '22023',
            message = format('invalid max %s: expected 1 to 10000 runs per claim', coalesce(claim_runs.max::text, 'null'));
    end if;
    if v_lease is not null and v_lease <= interval '0' then
        raise exception using errcode = '22023', message = 'lease must be longer than 0s';
    end if;
    select array_agg(q.name) into v_open from conveyor.queues q where q.name = any(v_names) and not q.paused;
    if v_open is null then
        return;
    end if;

    if cardinality(v_open) > 1 then
        -- the best candidates of each queue, then the best of those, locked
        select array_agg(r.id) into v_ids from (
            select r.id from conveyor.runs r
            where r.id in (
                select c.id
                from unnest(v_open) as q(name)
                cross join lateral (
                    select r2.id, r2.priority, r2.run_at from conveyor.runs r2
                    where r2.status = 'queued' and r2.queue = q.name
                      and (claim_runs.tasks is null or r2.task = any(claim_runs.tasks))
                    order by r2.priority, r2.run_at, r2.id
                    limit claim_runs.max * 2
                ) c
                order by c.priority, c.run_at, c.id
                limit claim_runs.max * 2)
              and r.status = 'queued'
            order by r.priority, r.run_at, r.id
            limit claim_runs.max
            for no key update skip locked
        ) r;
        if v_ids is null then
            return;
        end if;
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
            worker = claim_runs.worker,
            log_size = 0
        from conveyor.task_config c
        where c.name = r.task
          and r.id = any(coalesce(v_ids, array(
              -- one queue: pick and lock in index order, in this same statement (an array, so the
              -- generic plan looks the rows up by primary key whatever max is)
              select p.id from conveyor.runs p
              where p.status = 'queued' and p.queue = v_open[1]
                and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
              order by p.priority, p.run_at, p.id
              limit claim_runs.max
              for no key update skip locked)))
        returning r.id, r.lease_token, r.task, r.queue, r.payload, r.attempts + 1 as attempt, r.failures, r.releases,
                  r.attempt_id, r.priority, r.parent_run_id, r.lease_expires_at, r.timeout_at, r.run_at, c.enabled
    )
    select
        array_agg(row(c.id, c.lease_token, c.task, c.queue, c.payload, c.attempt, c.failures, c.releases,
                      c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at)::conveyor.claimed_run
                  order by c.priority, c.run_at, c.id) filter (where c.enabled),
        array_agg(row(c.id, c.lease_token, null, 'failed',
                      conveyor._failure('task_disabled', format('task "%s" is disabled', c.task)),
                      false, null, null, null)::conveyor._ending) filter (where not c.enabled)
    into v_claimed, v_disabled
    from claimed c;

    if v_disabled is not null then
        perform conveyor._end_attempts(v_disabled);
    end if;
    return query select * from unnest(v_claimed);
end
$$;
comment on function conveyor.claim_runs is
    'claim up to max runs from a queue (or several, comma-separated) for a worker; each comes with a lease_token for heartbeat/complete/fail/release';

-- claim_run: claim_runs with max 1.
create function conveyor.claim_run(
    queues text,
    worker text,
    lease conveyor.duration default null,
    tasks text[] default null
)
returns setof conveyor.claimed_run
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query select * from conveyor.claim_runs(queues, worker, 1, lease, tasks);
end
$$;
comment on function conveyor.claim_run is
    'claim one run (zero or one row) from a queue (or several, comma-separated)';

-- pending: how many runs of these queues (comma-separated) are not finished yet: waiting,
-- queued or running. Lets a worker that drains its queues know when it is done, without
-- read access to the run tables.
create function conveyor.pending(queues text)
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
              and r.status in ('scheduled', 'queued', 'running', 'retrying', 'released'));
end
$$;
comment on function conveyor.pending is 'runs of these queues (comma-separated) not finished yet: waiting, queued or running';

-- ---------------------------------------------------------------------------------------------
-- ending attempts

-- _end_attempts: end the current attempt of each given running run, in one statement. The
-- guard: the run is running and its lease token (worker) or attempt id (tick) still matches;
-- runs that fail it are left alone and not returned. Per outcome (DESIGN.md, counters table):
--   succeeded -> succeeded; released -> released (run_at = now + delay); interrupted -> queued;
--   stopped -> cancelled; failed/timeout/crashed/log_overflow -> retrying while retryable and
--   n = failures - failure_base (after this one) < max_attempts, with the backoff delay for
--   retry n, else failed. Any outcome but succeeded on a run with a cancel request is stopped.
-- Writes one attempt row per run. Returns (ord, run_id, status, outcome, delay) per ended run.
create function conveyor._end_attempts(endings conveyor._ending[], all_succeeded boolean default false)
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
            select distinct on (e.run_id) e.*, e.n::integer as ord
            from unnest(endings) with ordinality
                 as e(run_id, lease_token, attempt_id, outcome, error, retryable, result, release_delay, reason, n)
            order by e.run_id, e.n
        ),
        updated as (
            update conveyor.runs r
            set status = 'succeeded',
                attempts = r.attempts + 1,
                result = i.result,
                finished_at = v_now,
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
                   v_now, 'succeeded'
            from updated u
        )
        select u.ord, u.id, 'succeeded'::conveyor.run_status, 'succeeded'::conveyor.attempt_outcome, null::interval
        from updated u order by u.ord;
        return;
    end if;

    return query
    with input as (
        -- one ending per run: a batch naming a run twice ends it once
        select distinct on (e.run_id) e.*, e.n::integer as ord
        from unnest(endings) with ordinality
             as e(run_id, lease_token, attempt_id, outcome, error, retryable, result, release_delay, reason, n)
        order by e.run_id, e.n
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
                   when d.final = 'succeeded' then 'succeeded'
                   when d.final = 'released' then 'released'
                   when d.final = 'interrupted' then 'queued'
                   when d.final = 'stopped' then 'cancelled'
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
            finished_at = case when t.new_status in ('succeeded', 'failed', 'cancelled') then v_now end,
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
               u.started_at, v_now, u.final, u.failure, u.reason, u.wait
        from updated u
    )
    select u.ord, u.id, u.new_status, u.final, u.wait from updated u order by u.ord;
end
$$;

-- _raise_stale: the documented error for a finishing call whose lease no longer holds.
create function conveyor._raise_stale(p_run_id conveyor.ulid, p_token uuid)
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
        raise exception using errcode = 'CV002', message = format('unknown run %s', p_run_id);
    end if;
    raise exception using
        errcode = 'CV001',
        message = format('stale lease for run %s: the run is %s', p_run_id,
                         case when v_status = 'running' then 'running under another lease' else v_status::text end),
        detail = 'the lease expired and the run was reclaimed, or the run was finished; nothing was changed',
        hint = 'stop working on this run; its current attempt belongs to someone else or is over';
end
$$;

-- _end_one: end one attempt for a worker, raising the stale-lease error when the guard fails.
create function conveyor._end_one(p_ending conveyor._ending, p_succeeded boolean default false)
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

-- complete_run: running -> succeeded (also when a cancel was requested: the work was done).
create function conveyor.complete_run(run_id conveyor.ulid, lease_token uuid, result jsonb default null)
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
create function conveyor.fail_run(
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
create function conveyor.release_run(
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
        jsonb_strip_nulls(jsonb_build_object('reason', conveyor._sanitize(reason), 'meta', meta))));
end
$$;
comment on function conveyor.release_run is
    'release an attempt: the run waits (delay, e.g. ''30s'') and is claimed again; not a failure, never spends the retry budget';

-- return_run: running -> queued (outcome interrupted): a worker shutting down gives the run
-- back unfinished; it is claimable again at once.
create function conveyor.return_run(run_id conveyor.ulid, lease_token uuid)
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
create function conveyor.finish_runs(items jsonb)
returns table (run_id conveyor.ulid, status conveyor.run_status)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    if items is null or jsonb_typeof(items) <> 'array' then
        raise exception using errcode = '22023',
            message = format('finish_runs takes a JSON array of items, got %s', coalesce(jsonb_typeof(items), 'null'));
    end if;
    if exists (select from jsonb_array_elements(items) e where jsonb_typeof(e) <> 'object') then
        raise exception using errcode = '22023',
            message = 'finish_runs items must be JSON objects {run_id, lease_token, outcome, ...}';
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
        select e.run_id, e.status from conveyor._end_attempts(array(
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
                        jsonb_strip_nulls(jsonb_build_object('reason', conveyor._sanitize(c.reason), 'meta', c.meta)))::conveyor._ending
                else
                    row(c.id, c.token, null, 'interrupted', null, null, null, null, null)::conveyor._ending
            end
            from checked c
            where c.id is not null and c.token is not null),
            (select bool_and(c.outcome = 'succeeded' and c.problem is null) from checked c)) e
    )
    select i.id, e.status
    from item i
    left join ended e on e.run_id = i.id
    order by i.n;
end
$$;
comment on function conveyor.finish_runs is
    'end many attempts at once: items [{run_id, lease_token, outcome: succeeded|failed|released|returned, result, message, meta, retryable, delay, reason}]; status null = stale lease';

-- ---------------------------------------------------------------------------------------------
-- while running

-- heartbeat: extend a running run's lease by `extend` (default: the task's lease), never by
-- more than max_lease; returns true when cancellation was requested.
create function conveyor.heartbeat(run_id conveyor.ulid, lease_token uuid, extend conveyor.duration default null)
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
        raise exception using errcode = '22023', message = 'extend must be longer than 0s';
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
create function conveyor.append_log(run_id conveyor.ulid, lease_token uuid, text text)
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
    v_len integer := octet_length(append_log.text);
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
    if append_log.text is null or v_len = 0 then
        return 'appended';
    end if;

    v_room := greatest(v_run.log_max_size - v_run.log_size, 0);
    if v_len <= v_room then
        v_part := append_log.text;
    else
        -- the longest prefix that fits in v_room bytes, whole characters only
        v_part := left(append_log.text, v_room);
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

-- ---------------------------------------------------------------------------------------------
-- cancel and retry

-- _cancel: cancel one locked run. Waiting or queued: cancelled at once. Running: the request is
-- recorded (event run.cancel_requested) and the worker's next finishing call decides.
create function conveyor._cancel(p_run conveyor.runs)
returns text
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
begin
    if p_run.status in ('scheduled', 'queued', 'retrying', 'released') then
        update conveyor.runs r set status = 'cancelled', finished_at = v_now where r.id = p_run.id;
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
create function conveyor.cancel_run(run_id conveyor.ulid)
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
        raise exception using errcode = 'CV002', message = format('unknown run %s', cancel_run.run_id);
    end if;
    v_result := conveyor._cancel(v_run);
    if v_result is null then
        raise exception using errcode = 'CV006',
            message = format('run %s is already %s', cancel_run.run_id, v_run.status),
            hint = 'only scheduled, queued, retrying, released or running runs can be cancelled';
    end if;
    return v_result;
end
$$;
comment on function conveyor.cancel_run is
    'cancel a run: returns cancelled (it was waiting) or cancel_requested (it is running; the worker is told by heartbeat)';

-- _retry_refusal: why a run cannot be retried, or null.
create function conveyor._retry_refusal(p_run conveyor.runs)
returns text
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return case
        when p_run.status not in ('failed', 'cancelled', 'succeeded') then
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
create function conveyor._retry(p_run conveyor.runs)
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
create function conveyor.retry_run(run_id conveyor.ulid)
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
        raise exception using errcode = 'CV002', message = format('unknown run %s', retry_run.run_id);
    end if;
    v_refusal := conveyor._retry_refusal(v_run);
    if v_refusal is not null then
        raise exception using errcode = 'CV005', message = v_refusal;
    end if;
    return conveyor._retry(v_run);
end
$$;
comment on function conveyor.retry_run is
    'retry a failed/cancelled run (or a succeeded one with no result and no children) with a fresh retry budget';

-- retry_runs / cancel_runs: the bulk forms for operators, by queue, task and status, at most
-- `max` runs (oldest first); runs that cannot be retried are skipped. Return how many changed.
create function conveyor.retry_runs(
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
    if retry_runs.status not in ('failed', 'cancelled', 'succeeded') then
        raise exception using errcode = '22023',
            message = format('retry_runs takes status failed, cancelled or succeeded, got %s', retry_runs.status);
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

create function conveyor.cancel_runs(
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
        where r.status in ('scheduled', 'queued', 'retrying', 'released', 'running')
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
