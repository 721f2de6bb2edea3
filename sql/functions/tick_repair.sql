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
