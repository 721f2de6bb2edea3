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
