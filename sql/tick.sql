-- tick.sql: maintenance. tick() runs each step once; each step touches at most `p_limit` rows,
-- reads only rows that are due (partial indexes on due times), locks what it changes with
-- SKIP LOCKED or guarded updates so two ticks at once never double anything, and returns
-- a count. It runs no user code.

-- _expire_leases: end attempts whose lease ran out (outcome crashed: the worker is presumed
-- dead) or whose timeout passed (outcome timeout); both retry under the budget. A run with a
-- cancel request ends cancelled/stopped instead (an abandoned cancellation).
create function conveyor._expire_leases(p_now timestamptz, p_limit integer)
returns table (crashed integer, timed_out integer, stopped integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    return query
    with ended as (
        select e.outcome
        from conveyor._end_attempts(array(
            select row(r.id, null, r.attempt_id,
                       case when r.timeout_at <= p_now then 'timeout' else 'crashed' end,
                       case when r.timeout_at <= p_now
                            then conveyor._failure('timeout', format('attempt %s exceeded its timeout of %s',
                                                   r.attempts + 1, conveyor._duration_text(r.timeout_at - r.started_at)))
                            else conveyor._failure('crashed', format('no heartbeat before the lease expired at %s: worker %s is presumed dead',
                                                   to_char(r.lease_expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                                   coalesce(r.worker, '?')))
                       end,
                       true, null, null, null)::conveyor._ending
            from conveyor.runs r
            where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) <= p_now
            order by least(r.lease_expires_at, r.timeout_at)
            limit p_limit
            for no key update skip locked)) e
    )
    select count(*) filter (where ended.outcome = 'crashed')::integer,
           count(*) filter (where ended.outcome = 'timeout')::integer,
           count(*) filter (where ended.outcome = 'stopped')::integer
    from ended;
end
$$;

-- _deliver_due: scheduled, retrying and released runs whose time has come -> queued (event
-- run.delivery_requested), queue by queue, skipping paused queues. A bounded queue's free
-- capacity (and a capped task's) is reserved under its row lock first, so no more than
-- `concurrency` runs are ever delivered, however many ticks and enqueues run at once.
create function conveyor._deliver_due(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_queue record;
    v_free integer;
    v_done integer;
    v_total integer := 0;
begin
    for v_queue in
        select q.name, q.concurrency from conveyor.queues q where not q.paused order by q.name
    loop
        exit when v_total >= p_limit;
        v_free := null;
        if v_queue.concurrency is not null then
            select q.concurrency - q.delivered into v_free
            from conveyor.queues q where q.name = v_queue.name
            for no key update;
            continue when v_free <= 0;
        end if;

        with candidate as (
            select r.id, r.task, r.priority, r.run_at
            from conveyor.runs r
            where r.queue = v_queue.name
              and r.status in ('scheduled', 'retrying', 'released')
              and r.run_at <= p_now
            order by r.run_at
            limit p_limit - v_total
            for no key update skip locked
        ),
        cap as (
            select t.name, t.parallelism - t.active as free
            from conveyor.tasks t
            where t.name in (select c.task from candidate c) and t.parallelism is not null
            order by t.name
            for no key update
        ),
        chosen as (
            select c.id
            from (select c.*, row_number() over (partition by c.task order by c.priority, c.run_at, c.id) as nth
                  from candidate c) c
            left join cap on cap.name = c.task
            where cap.name is null or c.nth <= cap.free
            order by c.priority, c.run_at, c.id
            limit coalesce(v_free, p_limit)
        )
        update conveyor.runs r
        set status = 'queued'
        from chosen
        where r.id = chosen.id;
        get diagnostics v_done = row_count;
        v_total := v_total + v_done;
    end loop;
    return v_total;
end
$$;

-- _fire_schedules: materialize due cron firings as runs, exactly once per (task, firing):
-- the task row is locked SKIP LOCKED, the run has a unique firing key, and the cursor
-- next_fire_at moves by a guarded update. After downtime only the latest missed firing runs,
-- unless the task asks for catch_up. on_overlap decides when an earlier firing is in flight:
-- allow (default) runs both, skip records a skipped run, terminate cancels the earlier one.
create function conveyor._fire_schedules(p_now timestamptz, p_limit integer)
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
begin
    for v_task in
        select c.*
        from conveyor.tasks t
        join conveyor.task_config c on c.name = t.name
        where t.schedule is not null and t.enabled and t.next_fire_at <= p_now
        order by t.next_fire_at
        limit p_limit
        for no key update of t skip locked
    loop
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
            v_in_flight := exists (
                select from conveyor.runs r
                where r.task = v_task.name and r.fire_at is not null
                  and r.status not in ('succeeded', 'failed', 'cancelled', 'skipped'));
            if v_in_flight and v_task.on_overlap = 'skip' then
                insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                           task_version, fire_at, finished_at)
                values (conveyor.ulid_generate(), v_task.name, v_task.queue, 'skipped', v_task.priority, v_fire,
                        v_task.payload, p_now, v_task.version, v_fire, p_now)
                on conflict (task, fire_at) where fire_at is not null do nothing;
                continue;
            end if;
            if v_in_flight and v_task.on_overlap = 'terminate' then
                for v_run in
                    select * from conveyor.runs r
                    where r.task = v_task.name and r.fire_at is not null
                      and r.status not in ('succeeded', 'failed', 'cancelled', 'skipped')
                    for no key update
                loop
                    if v_run.status = 'running' then
                        perform conveyor._end_attempts(array[row(v_run.id, null, v_run.attempt_id, 'stopped',
                            conveyor._failure('stopped', format('terminated by the next firing (%s)', v_fire)),
                            false, null, null, null)::conveyor._ending]);
                    else
                        perform conveyor._cancel(v_run);
                    end if;
                end loop;
            end if;
            insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                       task_version, fire_at)
            values (conveyor.ulid_generate(), v_task.name, v_task.queue, 'scheduled', v_task.priority, v_fire,
                    v_task.payload, p_now, v_task.version, v_fire)
            on conflict (task, fire_at) where fire_at is not null do nothing;
            v_count := v_count + 1;
        end loop;

        update conveyor.tasks t
        set next_fire_at = v_next
        where t.name = v_task.name and t.next_fire_at = v_task.next_fire_at;
    end loop;
    return v_count;
end
$$;

-- _restart_services: keep each enabled service's replicas alive. A replica with no live run
-- gets one: at once the first time, else after restart_delay with restart_backoff over its
-- consecutive quick restarts (a run that stayed up 60s resets the count). A replica whose last
-- run was stopped by hand (cancelled, or asked to cancel and then completed) stays down until
-- start_service. Replicas above `replicas` get a cancel request.
create function conveyor._restart_services(p_now timestamptz, p_limit integer)
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
        order by t.name
        for no key update of t skip locked
    loop
        for v_replica in 1 .. v_service.replicas loop
            exit when v_count >= p_limit;
            continue when exists (
                select from conveyor.runs r
                where r.task = v_service.name and r.replica = v_replica
                  and r.status not in ('succeeded', 'failed', 'cancelled', 'skipped'));
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
              and r.status not in ('succeeded', 'failed', 'cancelled', 'skipped')
              and r.cancel_requested_at is null
            for no key update skip locked
        loop
            perform conveyor._cancel(v_run);
        end loop;
    end loop;
    return v_count;
end
$$;

-- start_service: start every replica of a service that has no live run now, including ones
-- stopped by hand. Returns how many were started.
create function conveyor.start_service(name text)
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
        raise exception using errcode = 'CV003', message = format('unknown service "%s"', start_service.name);
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
create function conveyor.stop_service(name text)
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
        raise exception using errcode = 'CV003', message = format('unknown service "%s"', stop_service.name);
    end if;
    for v_run in
        select * from conveyor.runs r
        where r.task = stop_service.name and r.replica is not null
          and r.status not in ('succeeded', 'failed', 'cancelled', 'skipped')
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

-- _prune: delete finished runs older than the retention (conveyor.defaults), with their
-- attempts, logs and events, oldest first, at most p_limit runs; and outbox rows published
-- longer ago than the retention.
create function conveyor._prune(p_now timestamptz, p_limit integer)
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
    if v_ids is null then
        return 0;
    end if;
    delete from conveyor.attempts a where a.run_id = any(v_ids);
    delete from conveyor.attempt_logs l where l.run_id = any(v_ids);
    delete from conveyor.events e where e.run_id = any(v_ids);
    delete from conveyor.runs r where r.id = any(v_ids);
    return cardinality(v_ids);
end
$$;

-- tick_steps: the steps of a tick, in order (the background worker runs each in its own
-- transaction): expire first to free capacity, then create runs, then deliver them.
create function conveyor.tick_steps()
returns text[]
language sql
immutable
as $$ select array['expire', 'schedule', 'restart', 'deliver', 'flush', 'prune'] $$;
comment on function conveyor.tick_steps is 'the steps of a tick, in the order tick runs them';

-- _run_step: one step, by name; returns how many rows it changed.
create function conveyor._run_step(p_step text, p_limit integer)
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
        when 'deliver' then conveyor._deliver_due(v_now, p_limit)
        when 'flush' then conveyor._flush_outbox(v_now, p_limit)
        when 'prune' then conveyor._prune(v_now, p_limit)
    end;
end
$$;

-- tick_step: one step for the background worker: an error ends this step (reported as a
-- WARNING, returning -1), not the worker.
create function conveyor.tick_step(step text)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    if not step = any(conveyor.tick_steps()) then
        raise exception using errcode = '22023',
            message = format('unknown tick step "%s": expected one of %s', step, array_to_string(conveyor.tick_steps(), ', '));
    end if;
    begin
        return conveyor._run_step(step, coalesce(current_setting('conveyor.tick_batch', true)::integer, 1000));
    exception when others then
        raise warning 'pg_conveyor: tick step % failed: % (SQLSTATE %)', step, sqlerrm, sqlstate;
        return -1;
    end;
end
$$;
comment on function conveyor.tick_step is 'run one tick step by name (errors become a WARNING and -1)';

-- tick: one pass of maintenance, in the caller's transaction; returns what each step did.
-- Call it by hand, from pg_cron, or from any client where the background worker is not loaded.
create function conveyor.tick(
    out crashed integer,
    out timed_out integer,
    out stopped integer,
    out fired integer,
    out restarted integer,
    out delivered integer,
    out flushed integer,
    out pruned integer
)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
    v_limit integer := coalesce(current_setting('conveyor.tick_batch', true)::integer, 1000);
begin
    select e.crashed, e.timed_out, e.stopped into crashed, timed_out, stopped
    from conveyor._expire_leases(v_now, v_limit) e;
    fired := conveyor._fire_schedules(v_now, v_limit);
    restarted := conveyor._restart_services(v_now, v_limit);
    delivered := conveyor._deliver_due(v_now, v_limit);
    flushed := conveyor._flush_outbox(v_now, v_limit);
    pruned := conveyor._prune(v_now, v_limit);
end
$$;
comment on function conveyor.tick is
    'one pass of maintenance: expire leases and timeouts, fire schedules, restart services, deliver due runs, flush the outbox, prune; returns counts';
