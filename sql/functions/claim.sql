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

    -- Runs of a disabled task fail (task_disabled) as they are claimed and do not count: while a
    -- round met some, claim again for what is still wanted (at most 10 rounds a call, each
    -- failing up to `max` of them, so a backlog of disabled runs drains and never hides the
    -- enabled runs behind it for long)
    loop
        v_round := v_round + 1;
        v_ids := null;
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
            v_bound or coalesce(bool_or(c.bound and c.enabled), false)
        into v_batch, v_disabled, v_bound
        from claimed c;

        v_claimed := v_claimed || coalesce(v_batch, '{}');
        exit when v_disabled is null;
        perform conveyor._end_attempts(v_disabled);
        v_want := claim_runs.max - cardinality(v_claimed);
        exit when v_want <= 0 or v_round >= 10;
    end loop;
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
