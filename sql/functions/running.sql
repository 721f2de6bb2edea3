-- functions/running.sql: what a worker may do while an attempt runs: heartbeats (lease, cancel
-- requests) and logs.

-- heartbeat: extend a running run's lease by `extend` (default: the task's lease), never by
-- more than max_lease; returns true when cancellation was requested.
create or replace function conveyor.heartbeat(run_id conveyor.ulid, lease_token uuid, extend conveyor.duration default null)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_cancel boolean;
begin
    if extend is not null and extend::interval <= interval '0' then
        perform conveyor._raise_invalid('extend must be longer than 0s');
    end if;
    update conveyor.runs r
    set lease_expires_at = conveyor._now() + least(coalesce(heartbeat.extend::interval, c.lease), c.max_lease)
    from conveyor.task_config c
    where r.id = heartbeat.run_id and r.lease_token = heartbeat.lease_token  -- a token is held only while running
      and c.name = r.task
    returning r.cancel_requested_at is not null into v_cancel;
    if not found then
        perform conveyor._raise_stale(heartbeat.run_id, heartbeat.lease_token);
    end if;
    return v_cancel;
end
$$;

comment on function conveyor.heartbeat is
    'extend the lease of a running attempt (never beyond max_lease); returns true when cancellation was requested';

-- append_log: append text to the current attempt's log (one row per append). Past the task's
-- log_max_size: truncate (default) keeps what fits and drops the rest; kill_task ends the
-- attempt with outcome log_overflow (a retryable failure). Returns appended, truncated or killed.
create or replace function conveyor.append_log(run_id conveyor.ulid, lease_token uuid, text text)
returns text
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_run record;
    v_now timestamptz := conveyor._now();
    -- what a dashboard or terminal shows: no control characters but tab and newline, no bidi
    -- controls (conveyor._clean)
    v_text text := conveyor._clean(append_log.text);
    v_len integer := octet_length(v_text);
    v_room integer;
    v_part text;
begin
    select r.log_size, r.attempt_id, c.log_max_size, c.log_on_full into v_run
    from conveyor.runs r
    join conveyor.task_config c on c.name = r.task
    where r.id = append_log.run_id and r.lease_token = append_log.lease_token  -- held only while running
    for no key update of r;
    if not found then
        perform conveyor._raise_stale(append_log.run_id, append_log.lease_token);
    end if;
    if v_text is null or v_len = 0 then
        return 'appended';
    end if;

    v_room := greatest(v_run.log_max_size - v_run.log_size, 0);
    if v_len <= v_room then
        v_part := v_text;
    else
        -- the longest prefix that fits in v_room bytes, whole characters only
        v_part := left(v_text, v_room);
        while octet_length(v_part) > v_room loop
            v_part := left(v_part, -greatest(1, (octet_length(v_part) - v_room) / 4));
        end loop;
    end if;
    if v_part <> '' then
        insert into conveyor.attempt_logs (run_id, attempt_id, at, chunk)
        values (append_log.run_id, v_run.attempt_id, v_now, v_part);
        update conveyor.runs r set log_size = r.log_size + octet_length(v_part) where r.id = append_log.run_id;
    end if;
    if v_len <= v_room then
        return 'appended';
    end if;
    if v_run.log_on_full = 'kill_task' then
        perform conveyor._end_one(row(append_log.run_id, append_log.lease_token, null, 'log_overflow',
            conveyor._failure('log_overflow',
                              format('log exceeded log_max_size of %s bytes', v_run.log_max_size)),
            true, null, null, null));
        return 'killed';
    end if;
    return 'truncated';
end
$$;

comment on function conveyor.append_log is
    'append text to the running attempt''s log; returns appended, truncated (log_max_size reached) or killed (log_on_full = kill_task)';
