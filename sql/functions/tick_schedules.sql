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
