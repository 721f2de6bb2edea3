-- functions/tick_deliver.sql: tick step `deliver`: due waiting runs become queued.

-- _deliver_due: scheduled, retrying and released runs whose time has come -> queued (event
-- run.delivery_requested). Fair, bounded by the due rows, and never waiting on a client:
--   * candidates are the oldest due runs whatever their queue (index runs_due, 2 x p_limit),
--     plus the due runs of up to 100 queues whose turn it is (a cursor goes round the queues
--     from tick to tick), so a queue behind a flood elsewhere is reached within a few ticks;
--     the cost follows the due rows and that fixed turn, not the number of queues or tasks;
--   * they are delivered round-robin: every queue's first candidate, then every second, ...;
--   * a bounded queue's free room (and a capped task's) is reserved under its row lock, taken
--     SKIP LOCKED: a queue or task row a client holds (an open transaction that enqueued into
--     it) is left for a later tick and counted as skipped, and so is a run a client holds.
-- No more than `concurrency` runs are ever delivered, however many ticks and enqueues run at
-- once (the locked counters are the same as enqueue's). One statement delivers the batch; if
-- it fails, runs are delivered one by one and one that fails alone is set aside
-- (conveyor._quarantine) while the others go on.
create or replace function conveyor._deliver_due(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_cursor text;
    v_turn text[];
    v_ids conveyor.ulid[];
    v_bounded text[];
    v_queues text[];
    v_queue_free integer[];
    v_capped text[];
    v_tasks text[];
    v_task_free integer[];
    v_chosen conveyor.ulid[];
    v_done integer;
    v_one integer;
    v_id conveyor.ulid;
    v_skipped integer;
begin
    -- the queues whose turn it is: the next 100 after the cursor, wrapping round
    select s.cursor into v_cursor from conveyor._tick_stats s where s.step = 'deliver' and s.source = conveyor._tick_source();
    v_turn := array(select q.name from conveyor.queues q
                    where q.name > coalesce(v_cursor, '') and not q.paused order by q.name limit 100);
    if cardinality(v_turn) < 100 then
        v_turn := v_turn || array(select q.name from conveyor.queues q
                                  where q.name <= coalesce(v_cursor, '') and not q.paused
                                  order by q.name limit 100 - cardinality(v_turn));
    end if;
    perform conveyor._tick_note('deliver', p_cursor => v_turn[cardinality(v_turn)]);

    v_ids := array(
        select o.id from (
            -- only queues that can take runs now: a full bounded queue's backlog (or a paused
            -- queue's) must not fill the pool and starve the others
            select r.id from conveyor.runs r
            join conveyor.queues q on q.name = r.queue
            where conveyor._waiting(r.status) and r.run_at <= p_now
              and not q.paused and (q.concurrency is null or q.delivered < q.concurrency)
              and r.id not in (select s.run_id from conveyor._set_aside('deliver', p_now) s)
            order by r.run_at
            limit p_limit * 2
        ) o
        union
        select t.id from unnest(v_turn) as q(name)
        cross join lateral (
            select r.id from conveyor.runs r
            where r.queue = q.name and conveyor._waiting(r.status) and r.run_at <= p_now
            order by r.run_at
            limit greatest(1, p_limit / 100)
        ) t);
    if cardinality(v_ids) = 0 then
        return 0;
    end if;

    -- room in the bounded queues and capped tasks among them, reserved under row locks that no
    -- one else holds; the others are left for a later tick
    v_bounded := array(select distinct q.name from conveyor.queues q
                       join conveyor.runs r on r.queue = q.name
                       where r.id = any(v_ids) and q.concurrency is not null);
    select array_agg(l.name order by l.name), array_agg(l.free order by l.name) into v_queues, v_queue_free
    from (select q.name, greatest(q.concurrency - q.delivered, 0) as free
          from conveyor.queues q where q.name = any(v_bounded)
          order by q.name
          for no key update skip locked) l;
    v_capped := array(select distinct t.name from conveyor.tasks t
                      join conveyor.runs r on r.task = t.name
                      where r.id = any(v_ids) and t.parallelism is not null);
    select array_agg(l.name order by l.name), array_agg(l.free order by l.name) into v_tasks, v_task_free
    from (select t.name, greatest(t.parallelism - t.active, 0) as free
          from conveyor.tasks t where t.name = any(v_capped)
          order by t.name
          for no key update skip locked) l;
    v_skipped := cardinality(v_bounded) - coalesce(cardinality(v_queues), 0)
               + cardinality(v_capped) - coalesce(cardinality(v_tasks), 0);

    v_chosen := array(
        with candidate as (
            select r.id, r.queue, r.task, r.priority, r.run_at,
                   qf.free as queue_free, tf.free as task_free
            from conveyor.runs r
            join conveyor.queues q on q.name = r.queue and not q.paused
            left join unnest(v_queues, v_queue_free) as qf(name, free) on qf.name = r.queue
            left join unnest(v_tasks, v_task_free) as tf(name, free) on tf.name = r.task
            where r.id = any(v_ids) and conveyor._waiting(r.status) and r.run_at <= p_now
              and r.id not in (select s.run_id from conveyor._set_aside('deliver', p_now) s)
              -- a bounded queue or capped task whose row a client holds waits for a later tick
              and (qf.name is not null or r.queue <> all(v_bounded))
              and (tf.name is not null or r.task <> all(v_capped))
        ),
        ranked as (
            select c.*,
                   row_number() over (partition by c.queue order by c.priority, c.run_at, c.id) as nth_in_queue,
                   row_number() over (partition by c.task order by c.priority, c.run_at, c.id) as nth_in_task
            from candidate c
        )
        select k.id from ranked k
        where (k.queue_free is null or k.nth_in_queue <= k.queue_free)
          and (k.task_free is null or k.nth_in_task <= k.task_free)
        order by k.nth_in_queue, k.priority, k.run_at, k.id
        limit p_limit);

    begin
        with delivered as (
            update conveyor.runs r
            set status = 'queued'
            where r.id in (select p.id from conveyor.runs p
                           where p.id = any(v_chosen) and conveyor._waiting(p.status)
                           for no key update skip locked)
            returning r.id
        ),
        -- a run set aside earlier and delivered now is no longer set aside (only the runs this
        -- step delivered: another tick may be working on the ones it skipped)
        cleared as (
            delete from conveyor.quarantine q using delivered d where q.step = 'deliver' and q.run_id = d.id
        )
        select count(*) into v_done from delivered;
    exception when others then
        -- some run makes the batch fail: deliver them one at a time, setting aside the ones
        -- that fail on their own
        v_done := 0;
        foreach v_id in array v_chosen loop
            begin
                update conveyor.runs r
                set status = 'queued'
                where r.id in (select p.id from conveyor.runs p
                               where p.id = v_id and conveyor._waiting(p.status)
                               for no key update skip locked);
                get diagnostics v_one = row_count;
                v_done := v_done + v_one;
                if v_one > 0 then
                    delete from conveyor.quarantine q where q.step = 'deliver' and q.run_id = v_id;
                end if;
            exception
                when lock_not_available then
                    perform conveyor._tick_note('deliver', p_skipped => 1);
                when others then
                    perform conveyor._quarantine('deliver', v_id, sqlstate, sqlerrm, p_now);
            end;
        end loop;
    end;
    perform conveyor._tick_note('deliver', p_skipped => v_skipped + (cardinality(v_chosen) - v_done));
    return v_done;
end
$$;
