-- functions/tick_count.sql: tick step `count`: counter deltas folded into their totals.

-- _fold_counters: move the rows of conveyor._counter_deltas (one per statement that created
-- runs or ended attempts, and per queue, task and counter) into conveyor._counters, in this
-- tick's source's rows (_tick_source). The delete and the additions commit together, so
-- conveyor.counters (totals + deltas) never counts a delta twice or loses one. Deltas another
-- tick is folding are skipped (SKIP LOCKED); a delta is a few dozen bytes, so one step folds up
-- to 50 times the tick batch. The totals rows are this source's: the worker's are written by
-- the worker alone; two ticks by hand at once add to the same rows in key order (no deadlock),
-- and one left open holds them, so that another by hand fails this step after lock_timeout
-- (tick() runs it in a subtransaction: its other steps go on). Returns the delta rows folded.
create or replace function conveyor._fold_counters(p_limit integer)
returns bigint
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_folded bigint;
begin
    with taken as (
        delete from conveyor._counter_deltas d
        where d.ctid = any (array(select l.ctid from conveyor._counter_deltas l
                                  limit p_limit * 50
                                  for update skip locked))
        returning d.queue, d.task, d.counter, d.n
    ),
    folded as (
        insert into conveyor._counters as c (queue, task, counter, source, n)
        select t.queue, t.task, t.counter, conveyor._tick_source(), sum(t.n)
        from taken t
        group by t.queue, t.task, t.counter
        order by t.queue, t.task, t.counter
        on conflict (queue, task, counter, source) do update set n = c.n + excluded.n
    )
    select count(*) into v_folded from taken;
    return v_folded;
end
$$;
