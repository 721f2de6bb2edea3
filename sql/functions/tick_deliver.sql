-- functions/tick_deliver.sql: tick step `deliver`: due waiting runs become queued.

-- _deliver_due: scheduled, retrying and released runs whose time has come -> queued (event
-- run.delivery_requested), queue by queue, skipping paused queues. A bounded queue's free
-- capacity (and a capped task's) is reserved under its row lock first, so no more than
-- `concurrency` runs are ever delivered, however many ticks and enqueues run at once.
create or replace function conveyor._deliver_due(p_now timestamptz, p_limit integer)
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
              and conveyor._waiting(r.status)
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
