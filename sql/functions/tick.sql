-- functions/tick.sql: tick() and the steps the background worker runs one by one. Each step
-- touches at most `p_limit` rows, reads only rows that are due (partial indexes on due times),
-- locks what it changes with SKIP LOCKED or guarded updates so two ticks at once never double
-- anything, and returns a count. It runs no user code. The steps are in tick_*.sql.

-- _tick_source: `worker` in pg_conveyor's tick worker, `manual` anywhere else (a client's
-- session, pg_cron's jobs, another extension's background worker; src/session.rs). Each keeps its own rows of
-- conveyor._tick_stats and its own cursors, so that a tick by hand left in an open transaction
-- holds no row the worker must write.
create or replace function conveyor._tick_source()
returns text
language sql
stable
as $$ select case when conveyor._in_background_worker() then 'worker' else 'manual' end $$;

-- _tick_note: add to a step's counters in conveyor._tick_stats (and move deliver's cursor), in
-- this source's row (_tick_source). Only tick writes these rows, and never waits for one: the
-- rows exist from the start (end of this file), and one that another tick of the same source
-- holds (two ticks by hand at once, one left open) is skipped, its counts lost.
create or replace function conveyor._tick_note(
    p_step text,
    p_runs integer default 0,
    p_failures integer default 0,
    p_changed bigint default 0,
    p_skipped integer default 0,
    p_quarantined integer default 0,
    p_cursor text default null,
    p_error text default null
)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    update conveyor._tick_stats s set
        runs = s.runs + p_runs,
        failures = s.failures + p_failures,
        changed = s.changed + greatest(p_changed, 0),
        skipped = s.skipped + p_skipped,
        quarantined = s.quarantined + p_quarantined,
        cursor = coalesce(p_cursor, s.cursor),
        last_error = coalesce(p_error, s.last_error),
        last_run_at = coalesce(case when p_runs > 0 then conveyor._now() end, s.last_run_at)
    where (s.step, s.source) = (
        select l.step, l.source from conveyor._tick_stats l
        where l.step = p_step and l.source = conveyor._tick_source()
        for update skip locked);
end
$$;

-- _quarantine: set a run aside for a step that failed on it alone: the step leaves it until
-- retry_at (1 minute, doubling with each failure up to 1 hour) and goes on with the others;
-- event run.quarantined records it, metrics() counts it.
create or replace function conveyor._quarantine(p_step text, p_run_id conveyor.ulid, p_sqlstate text, p_message text,
                                                p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    -- another tick (one by hand, left open) may be setting this run aside too: then it is its to
    -- record, and this one does not wait for it
    if exists (select from conveyor.quarantine q where q.step = p_step and q.run_id = p_run_id)
       and not exists (select from conveyor.quarantine q where q.step = p_step and q.run_id = p_run_id
                       for update skip locked) then
        return;
    end if;
    insert into conveyor.quarantine as q (step, run_id, sqlstate, message, first_at, last_at, failures, retry_at)
    values (p_step, p_run_id, p_sqlstate, left(p_message, 1000), p_now, p_now, 1, p_now + interval '1 minute')
    on conflict (step, run_id) do update set
        sqlstate = excluded.sqlstate, message = excluded.message, last_at = excluded.last_at,
        failures = q.failures + 1,
        retry_at = excluded.last_at + least(interval '1 hour', interval '1 minute' * 2 ^ least(q.failures, 6));
    insert into conveyor.events (run_id, at, type, attempt, data)
    select r.id, p_now, 'run.quarantined', r.attempts + 1,
           jsonb_build_object('step', p_step, 'sqlstate', p_sqlstate, 'message', left(p_message, 1000))
    from conveyor.runs r where r.id = p_run_id;
    perform conveyor._tick_note(p_step, p_quarantined => 1);
    raise warning 'pg_conveyor: tick step % set run % aside: % (SQLSTATE %)', p_step, p_run_id, p_message, p_sqlstate;
end
$$;

-- _set_aside: the runs a step set aside that it is not yet time to try again. Used as
-- `r.id not in (select s.run_id from conveyor._set_aside(step, now) s)`: inlined, one hashed
-- look-up per row. (It replaced a boolean function per run, which PostgreSQL could not inline
-- because its body held a subquery: 13 µs a row, a tick delivering 1,000 runs took 41 ms.)
create or replace function conveyor._set_aside(p_step text, p_now timestamptz)
returns table (run_id conveyor.ulid)
language sql
stable
as $$
    select q.run_id from conveyor.quarantine q where q.step = p_step and q.retry_at > p_now
$$;

-- tick_steps: the steps of a tick, in order (the background worker runs each in its own
-- transaction): expire first to free capacity, then create runs, then check
-- the capacity counters, then deliver; last, fold the counters (conveyor.counters). The claim
-- hints (while an old snapshot is held) come first: that step takes no lock a client can hold
-- (it inserts, and deletes old hints SKIP LOCKED), so in tick()'s one transaction no lock a
-- later step takes is held while it walks the queues.
create or replace function conveyor.tick_steps()
returns text[]
language sql
immutable
as $$ select array['hint', 'expire', 'schedule', 'restart', 'repair', 'deliver', 'flush', 'prune', 'count'] $$;

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
        when 'repair' then conveyor._repair_counters(v_now)
        when 'hint' then conveyor._publish_claim_hints(v_now)
        when 'deliver' then conveyor._deliver_due(v_now, p_limit)
        when 'flush' then conveyor._flush_outbox(v_now, p_limit)
        when 'prune' then conveyor._prune(v_now, p_limit)
        when 'count' then conveyor._fold_counters(p_limit)
    end;
end
$$;

-- tick_step: one step for the background worker, counted in conveyor._tick_stats. A row that
-- fails alone is set aside by the step (conveyor.quarantine) and the rest goes on; an error of
-- the whole step ends this step (reported as a WARNING, returning -1), not the worker.
create or replace function conveyor.tick_step(step text)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_changed bigint;
begin
    if step is null or not step = any(conveyor.tick_steps()) then
        perform conveyor._raise_invalid(format('unknown tick step "%s": expected one of %s', step, array_to_string(conveyor.tick_steps(), ', ')));
    end if;
    -- a backstop: the steps skip what clients hold (SKIP LOCKED), but a lock they must take
    -- (a bounded queue's counter, in the transition trigger) waits at most this long
    perform set_config('lock_timeout', '500ms', true);
    begin
        v_changed := conveyor._run_step(step, coalesce(current_setting('conveyor.tick_batch', true)::integer, 1000));
    exception when others then
        raise warning 'pg_conveyor: tick step % failed: % (SQLSTATE %)', step, sqlerrm, sqlstate;
        perform conveyor._tick_note(step, p_runs => 1, p_failures => 1, p_error => sqlstate || ': ' || left(sqlerrm, 500));
        return -1;
    end;
    perform conveyor._tick_note(step, p_runs => 1, p_changed => v_changed);
    return v_changed;
end
$$;

comment on function conveyor.tick_step is 'run one tick step by name (errors become a WARNING and -1)';

-- tick: one pass of maintenance, in the caller's transaction; returns what each step did.
-- Call it by hand, from pg_cron, or from any client where the background worker is not loaded.
create or replace function conveyor.tick(
    out hinted integer,
    out crashed integer,
    out timed_out integer,
    out stopped integer,
    out fired integer,
    out restarted integer,
    out repaired integer,
    out delivered integer,
    out flushed integer,
    out pruned integer,
    out counted bigint
)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- as in tick_step: the steps skip what others hold, and a lock they must take (a bounded queue's
-- counter) waits this long at most: then tick() fails, and holds nothing it took
set lock_timeout = '500ms'
as $$
declare
    v_now timestamptz := conveyor._now();
    v_limit integer := coalesce(current_setting('conveyor.tick_batch', true)::integer, 1000);
begin
    hinted := conveyor._publish_claim_hints(v_now);
    perform conveyor._tick_note('hint', p_runs => 1, p_changed => hinted);
    select e.crashed, e.timed_out, e.stopped into crashed, timed_out, stopped
    from conveyor._expire_leases(v_now, v_limit) e;
    perform conveyor._tick_note('expire', p_runs => 1, p_changed => crashed + timed_out + stopped);
    fired := conveyor._fire_schedules(v_now, v_limit);
    perform conveyor._tick_note('schedule', p_runs => 1, p_changed => fired);
    restarted := conveyor._restart_services(v_now, v_limit);
    perform conveyor._tick_note('restart', p_runs => 1, p_changed => restarted);
    repaired := conveyor._repair_counters(v_now);
    perform conveyor._tick_note('repair', p_runs => 1, p_changed => repaired);
    delivered := conveyor._deliver_due(v_now, v_limit);
    perform conveyor._tick_note('deliver', p_runs => 1, p_changed => delivered);
    flushed := conveyor._flush_outbox(v_now, v_limit);
    perform conveyor._tick_note('flush', p_runs => 1, p_changed => flushed);
    pruned := conveyor._prune(v_now, v_limit);
    perform conveyor._tick_note('prune', p_runs => 1, p_changed => pruned);
    begin
        -- a tick by hand left open holds the manual totals rows: this step then gives up after
        -- lock_timeout, alone, and the counters wait in their deltas for a later tick
        counted := conveyor._fold_counters(v_limit);
        perform conveyor._tick_note('count', p_runs => 1, p_changed => counted);
    exception when lock_not_available or deadlock_detected then
        counted := -1;
        perform conveyor._tick_note('count', p_runs => 1, p_failures => 1, p_error => sqlstate || ': ' || left(sqlerrm, 500));
    end;
end
$$;

comment on function conveyor.tick is
    'one pass of maintenance: hint claims while an old snapshot is held, expire leases and timeouts, fire schedules, restart services, repair capacity counters, deliver due runs, flush the outbox, prune, fold counter deltas; returns counts';

-- every step's counter rows, one per source, exist before the first tick: _tick_note only
-- updates them (SKIP LOCKED), so no tick waits on another's row
insert into conveyor._tick_stats (step, source)
select s.step, v.source
from unnest(conveyor.tick_steps()) as s(step)
cross join (values ('worker'), ('manual')) as v(source)
on conflict do nothing;
