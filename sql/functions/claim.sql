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
    v_cap_tasks text[];
    v_task_caps integer[];
    v_full_tasks text[] := '{}';
    v_started_queues text[] := '{}';
    v_started_tasks text[] := '{}';
    v_round_queues text[];
    v_round_tasks text[];
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

    -- Rate limits: a queue without room is left out of this claim, a task without room is
    -- skipped (the runs of other tasks are taken: no head-of-line blocking), and the others cap
    -- what the claim takes of them; the starts are recorded below, before the commit
    if exists (select from conveyor._rate_limits) then
        select array_agg(a.name order by a.name) filter (where a.scope = 'queue' and a.allowed > 0),
               array_agg(a.allowed order by a.name) filter (where a.scope = 'queue' and a.allowed > 0),
               array_agg(a.name order by a.name) filter (where a.scope = 'queue' and a.allowed = 0),
               array_agg(a.name order by a.name) filter (where a.scope = 'task' and a.allowed > 0),
               array_agg(a.allowed order by a.name) filter (where a.scope = 'task' and a.allowed > 0),
               coalesce(array_agg(a.name order by a.name) filter (where a.scope = 'task' and a.allowed = 0), '{}'),
               count(*) > 0
        into v_cap_queues, v_queue_caps, v_full_queues, v_cap_tasks, v_task_caps, v_full_tasks, v_rated
        from conveyor._rate_allowance(v_open, claim_runs.tasks, v_now) a;
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
        if v_rated then
            -- under rate limits: the best candidates of each queue (but tasks without room),
            -- at most each limit's room of them, then the best of those, locked
            select array_agg(x.id) into v_ids from (
                select r.id from conveyor.runs r
                where r.id in (
                    select c.id from (
                        select c.id, c.priority, c.run_at,
                               row_number() over (partition by c.queue order by c.priority, c.run_at, c.id) as in_queue,
                               row_number() over (partition by c.task order by c.priority, c.run_at, c.id) as in_task,
                               c.queue, c.task
                        from unnest(v_open) as q(name)
                        cross join lateral (
                            select r2.id, r2.priority, r2.run_at, r2.queue, r2.task from conveyor.runs r2
                            where r2.status = 'queued' and r2.queue = q.name
                              and (claim_runs.tasks is null or r2.task = any(claim_runs.tasks))
                              and r2.task <> all(v_full_tasks)
                            order by r2.priority, r2.run_at, r2.id
                            limit v_want * 2
                        ) c
                    ) c
                    where c.in_queue <= coalesce(v_queue_caps[array_position(v_cap_queues, c.queue)], v_want)
                      and c.in_task <= coalesce(v_task_caps[array_position(v_cap_tasks, c.task)], v_want)
                    order by c.priority, c.run_at, c.id
                    limit v_want)
                  and r.status = 'queued'
                order by r.priority, r.run_at, r.id
                limit v_want
                for no key update skip locked
            ) x;
            exit when v_ids is null;
        elsif cardinality(v_open) > 1 then
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
                        limit v_want * 2
                    ) c
                    order by c.priority, c.run_at, c.id
                    limit v_want * 2)
                  and r.status = 'queued'
                order by r.priority, r.run_at, r.id
                limit v_want
                for no key update skip locked
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
                                          then v_started end
            from conveyor.task_config c
            where c.name = r.task
              and r.id = any(coalesce(v_ids, array(
                  -- one queue: pick and lock in index order, in this same statement (an array, so the
                  -- generic plan looks the rows up by primary key whatever max is)
                  select p.id from conveyor.runs p
                  where p.status = 'queued' and p.queue = v_open[1]
                    and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                  order by p.priority, p.run_at, p.id
                  limit v_want
                  for no key update skip locked)))
            returning r.id, r.lease_token, r.task, r.queue, r.payload, r.attempts + 1 as attempt, r.failures, r.releases,
                      r.attempt_id, r.priority, r.parent_run_id, r.lease_expires_at, r.timeout_at, r.run_at, c.enabled,
                      r.session_pid is not null as bound
        )
        select
            array_agg(row(c.id, c.lease_token, c.task, c.queue, c.payload, c.attempt, c.failures, c.releases,
                          c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at)::conveyor.claimed_run
                      order by c.priority, c.run_at, c.id) filter (where c.enabled),
            array_agg(row(c.id, c.lease_token, null, 'failed',
                          conveyor._failure('task_disabled', format('task "%s" is disabled', c.task)),
                          false, null, null, null)::conveyor._ending) filter (where not c.enabled),
            v_bound or coalesce(bool_or(c.bound and c.enabled), false),
            array_agg(c.queue), array_agg(c.task)
        into v_batch, v_disabled, v_bound, v_round_queues, v_round_tasks
        from claimed c;

        v_claimed := v_claimed || coalesce(v_batch, '{}');
        v_started_queues := v_started_queues || coalesce(v_round_queues, '{}');
        v_started_tasks := v_started_tasks || coalesce(v_round_tasks, '{}');
        exit when v_disabled is null;
        perform conveyor._end_attempts(v_disabled);
        -- under rate limits one round: its caps were counted for it alone
        exit when v_rated;
        v_want := claim_runs.max - cardinality(v_claimed);
        exit when v_want <= 0 or v_round >= 10;
    end loop;
    if v_rated and cardinality(v_started_queues) > 0 then
        -- this claim's starts, in the window of each limit it started runs under (the rows of
        -- those limits are this transaction's until it commits)
        insert into conveyor._rate_starts (scope, name, at, n)
        select 'queue', x.name, v_now, count(*) from unnest(v_started_queues) as x(name)
        where x.name = any(v_cap_queues) group by x.name
        union all
        select 'task', x.name, v_now, count(*) from unnest(v_started_tasks) as x(name)
        where x.name = any(v_cap_tasks) group by x.name;
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

-- _rate_allowance: the rate limits a claim from these queues (of these tasks, null: any) starts
-- runs under, each taken for this transaction (its _rate_limits row, FOR NO KEY UPDATE: claims
-- of one limit take turns), with how many runs it may still start now: the limit less the
-- starts of the window (p_now - period, p_now], every one committed before the row was ours.
-- A queue's limit counts the runs started from it, a task's its runs in any queue. A limit
-- another claim holds for more than 2 s (left open in a transaction) allows nothing now.
-- Needs READ COMMITTED: an older snapshot would miss the starts committed since (22023).
create or replace function conveyor._rate_allowance(p_open text[], p_tasks text[], p_now timestamptz)
returns table (scope text, name text, allowed integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_timeout text := current_setting('lock_timeout');
    v_scopes text[];
    v_names text[];
    v_ns integer[];
    v_periods interval[];
    v_locked integer;
begin
    select array_agg(l.scope order by l.scope, l.name), array_agg(l.name order by l.scope, l.name),
           array_agg(l.n order by l.scope, l.name), array_agg(l.period order by l.scope, l.name)
    into v_scopes, v_names, v_ns, v_periods
    from (
        select 'queue' as scope, q.name, q.rate_limit_n as n, q.rate_limit_period as period
        from conveyor.queues q
        where q.name = any(p_open) and q.rate_limit_n is not null
        union all
        -- a task's limit, if this claim could start one of its runs
        select 'task', t.name, t.rate_limit_n, t.rate_limit_period
        from conveyor.tasks t
        where t.rate_limit_n is not null and (p_tasks is null or t.name = any(p_tasks))
          and exists (select from conveyor.runs r
                      where r.task = t.name and r.status = 'queued' and r.queue = any(p_open))
    ) l;
    if v_scopes is null then
        return;
    end if;
    if current_setting('transaction_isolation') <> 'read committed' then
        perform conveyor._raise_invalid('a claim under a rate limit needs READ COMMITTED (it must see every start committed before it)');
    end if;
    perform set_config('lock_timeout', '2s', true);
    begin
        -- in (scope, name) order, so that claims of several limits cannot deadlock
        select count(*) into v_locked from (
            select from conveyor._rate_limits l
            join unnest(v_scopes, v_names) as x(scope, name) on (l.scope, l.name) = (x.scope, x.name)
            order by l.scope, l.name
            for no key update of l) x;
        if v_locked < cardinality(v_scopes) then
            -- a limit without its row (a restore without it): make it, then take them all
            insert into conveyor._rate_limits (scope, name)
            select x.scope, x.name from unnest(v_scopes, v_names) as x(scope, name)
            on conflict do nothing;
            perform from conveyor._rate_limits l
            join unnest(v_scopes, v_names) as x(scope, name) on (l.scope, l.name) = (x.scope, x.name)
            order by l.scope, l.name
            for no key update of l;
        end if;
    exception when lock_not_available then
        perform set_config('lock_timeout', v_timeout, true);
        return query select x.scope, x.name, 0 from unnest(v_scopes, v_names) as x(scope, name);
        return;
    end;
    perform set_config('lock_timeout', v_timeout, true);
    -- a fresh statement: every start committed before the rows were ours
    return query
    select x.scope, x.name,
           greatest(x.n - coalesce((select sum(s.n) from conveyor._rate_starts s
                                    where s.scope = x.scope and s.name = x.name
                                      and s.at > p_now - x.period), 0), 0)::integer
    from unnest(v_scopes, v_names, v_ns, v_periods) as x(scope, name, n, period);
end
$$;

-- rate_limited_until: when a run of these queues (comma-separated) that a rate limit holds back
-- can start: the earliest time one of the limits with no room left now has room again (the
-- oldest starts of its window have left it). Null: no limit holds any of their runs back now.
-- For workers: sleep until then rather than claim in a loop.
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
        select 'queue' as scope, q.name, q.rate_limit_n as n, q.rate_limit_period as period
        from conveyor.queues q, names
        where q.name = any(names.open) and q.rate_limit_n is not null
        union all
        select 'task', t.name, t.rate_limit_n, t.rate_limit_period
        from conveyor.tasks t, names
        where t.rate_limit_n is not null
          and exists (select from conveyor.runs r
                      where r.task = t.name and r.status = 'queued' and r.queue = any(names.open))
    ),
    -- each limit's starts of the window, newest first, with the runs started since each
    windows as (
        select l.scope, l.name, l.n, l.period, s.at,
               sum(s.n) over (partition by l.scope, l.name order by s.at desc
                              rows between unbounded preceding and current row) as since
        from limits l
        join conveyor._rate_starts s on s.scope = l.scope and s.name = l.name
                                     and s.at > conveyor._now() - l.period
    )
    -- a full limit has room once the start that filled it has left the window
    select min(w.at + w.period)
    from (select distinct on (w.scope, w.name) w.*
          from windows w
          where w.since >= w.n
          order by w.scope, w.name, w.at desc) w
$$;

comment on function conveyor.rate_limited_until is
    'when a run of these queues that a rate limit holds back can start (null: none is held back now)';
