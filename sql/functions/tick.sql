-- functions/tick.sql: tick() and the steps the background worker runs one by one. Each step
-- touches at most `p_limit` rows, reads only rows that are due (partial indexes on due times),
-- locks what it changes with SKIP LOCKED or guarded updates so two ticks at once never double
-- anything, and returns a count. It runs no user code. The steps are in tick_*.sql.

-- tick_steps: the steps of a tick, in order (the background worker runs each in its own
-- transaction): expire first to free capacity, then create runs, then deliver them.
create or replace function conveyor.tick_steps()
returns text[]
language sql
immutable
as $$ select array['expire', 'schedule', 'restart', 'deliver', 'flush', 'prune'] $$;

comment on function conveyor.tick_steps is 'the steps of a tick, in the order tick runs them';

-- _run_step: one step, by name; returns how many rows it changed.
create or replace function conveyor._run_step(p_step text, p_limit integer)
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
create or replace function conveyor.tick_step(step text)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    if not step = any(conveyor.tick_steps()) then
        perform conveyor._raise_invalid(format('unknown tick step "%s": expected one of %s', step, array_to_string(conveyor.tick_steps(), ', ')));
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
create or replace function conveyor.tick(
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
