-- functions/operators.sql: cancel and retry, one run or in bulk (README: Operators). Which runs
-- qualify is asked of the state machine (conveyor._allowed, conveyor._live).

-- _cancel: cancel one locked run. Waiting or queued: cancelled at once. Running: the request is
-- recorded (event run.cancel_requested) and the worker's next finishing call decides.
create or replace function conveyor._cancel(p_run conveyor.runs)
returns text
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
begin
    if p_run.status <> 'running' and conveyor._allowed(p_run.status, 'cancelled') then
        update conveyor.runs r set status = 'cancelled', finished_at = greatest(v_now, r.started_at)
        where r.id = p_run.id;
        return 'cancelled';
    elsif p_run.status = 'running' then
        if p_run.cancel_requested_at is null then
            update conveyor.runs r set cancel_requested_at = v_now where r.id = p_run.id;
            insert into conveyor.events (run_id, at, type, attempt) values (p_run.id, v_now, 'run.cancel_requested', p_run.attempts + 1);
        end if;
        return 'cancel_requested';
    end if;
    return null;
end
$$;

-- cancel_run: cancel a run: at once if it is not running; if it is, request it (heartbeat
-- answers true; the worker's next finishing call ends it cancelled, unless it completes).
create or replace function conveyor.cancel_run(run_id conveyor.ulid)
returns text
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_result text;
begin
    select * into v_run from conveyor.runs r where r.id = cancel_run.run_id for no key update;
    if not found then
        perform conveyor._raise_unknown_run(cancel_run.run_id);
    end if;
    v_result := conveyor._cancel(v_run);
    if v_result is null then
        perform conveyor._raise_already_finished(cancel_run.run_id, v_run.status);
    end if;
    return v_result;
end
$$;

comment on function conveyor.cancel_run is
    'cancel a run: returns cancelled (it was waiting) or cancel_requested (it is running; the worker is told by heartbeat)';

create or replace function conveyor.cancel_runs(
    queue text default null,
    task text default null,
    status conveyor.run_status default null,
    max integer default 1000
)
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
    for v_run in
        select * from conveyor.runs r
        where conveyor._live(r.status)
          and (cancel_runs.status is null or r.status = cancel_runs.status)
          and (cancel_runs.queue is null or r.queue = cancel_runs.queue)
          and (cancel_runs.task is null or r.task = cancel_runs.task)
        order by r.id
        limit greatest(cancel_runs.max, 0)
        for no key update skip locked
    loop
        if conveyor._cancel(v_run) is not null then
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end
$$;

comment on function conveyor.cancel_runs is
    'cancel up to max unfinished runs matching queue/task/status (running ones get a cancel request); returns how many';

-- _retry_refusal: why a run cannot be retried, or null.
create or replace function conveyor._retry_refusal(p_run conveyor.runs)
returns text
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return case
        when not conveyor._allowed(p_run.status, 'queued') or not conveyor._finished(p_run.status) then
            format('run %s is %s: only failed, cancelled, or succeeded runs without a result can be retried', p_run.id, p_run.status)
        when p_run.status = 'succeeded' and p_run.result is not null then
            format('run %s succeeded with a result: retrying would discard it', p_run.id)
        when exists (select from conveyor.runs c where c.parent_run_id = p_run.id) then
            format('run %s has child runs: retrying would discard what they were spawned from', p_run.id)
    end;
end
$$;

-- _retry: requeue one locked, retryable run with a fresh budget (failure_base = failures);
-- counters stay, old attempts stay in history; queued, or scheduled when its bounded queue or
-- capped task has no room (tick delivers it then).
create or replace function conveyor._retry(p_run conveyor.runs)
returns conveyor.run_status
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := conveyor._now();
    v_status conveyor.run_status;
begin
    v_status := case when conveyor._free_capacity(p_run.queue, p_run.task, 1) > 0 then 'queued' else 'scheduled' end;
    update conveyor.runs r
    set status = v_status,
        run_at = v_now,
        failure_base = r.failures,
        error = null,
        result = null,
        finished_at = null,
        cancel_requested_at = null,
        last_delay = null
    where r.id = p_run.id;
    return v_status;
end
$$;

-- retry_run: retry a failed or cancelled run (or a succeeded one without result and children)
-- under the task's latest config; refused with the reason otherwise (CV005).
create or replace function conveyor.retry_run(run_id conveyor.ulid)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run conveyor.runs;
    v_refusal text;
begin
    select * into v_run from conveyor.runs r where r.id = retry_run.run_id for no key update;
    if not found then
        perform conveyor._raise_unknown_run(retry_run.run_id);
    end if;
    v_refusal := conveyor._retry_refusal(v_run);
    if v_refusal is not null then
        perform conveyor._raise_retry_refused(v_refusal);
    end if;
    return conveyor._retry(v_run);
end
$$;

comment on function conveyor.retry_run is
    'retry a failed/cancelled run (or a succeeded one with no result and no children) with a fresh retry budget';

-- retry_runs / cancel_runs: the bulk forms for operators, by queue, task and status, at most
-- `max` runs (oldest first); runs that cannot be retried are skipped. Return how many changed.
create or replace function conveyor.retry_runs(
    queue text default null,
    task text default null,
    status conveyor.run_status default 'failed',
    since timestamptz default null,
    max integer default 1000
)
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
    if not conveyor._allowed(retry_runs.status, 'queued') or not conveyor._finished(retry_runs.status) then
        perform conveyor._raise_invalid(format('retry_runs takes status failed, cancelled or succeeded, got %s', retry_runs.status));
    end if;
    for v_run in
        select * from conveyor.runs r
        where r.status = retry_runs.status
          and (retry_runs.queue is null or r.queue = retry_runs.queue)
          and (retry_runs.task is null or r.task = retry_runs.task)
          and (retry_runs.since is null or r.finished_at >= retry_runs.since)
        order by r.finished_at, r.id
        limit greatest(retry_runs.max, 0)
        for no key update skip locked
    loop
        if conveyor._retry_refusal(v_run) is null then
            perform conveyor._retry(v_run);
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end
$$;

comment on function conveyor.retry_runs is
    'retry up to max runs matching queue/task/status (default failed) finished since a time; returns how many';
