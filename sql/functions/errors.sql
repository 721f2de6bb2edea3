-- functions/errors.sql: every SQLSTATE pg_conveyor raises, defined once. conveyor.error_codes
-- lists them (the README's error table is checked against it by a test); each CV code and the
-- generic invalid-argument code has one raise helper here, and no other function writes an
-- errcode of its own (pgrx-tests/sql/error_codes.sql checks that). Rust raises 22023 (bad
-- duration or schedule) and 22P02 (bad ULID) from src/error.rs, which maps to these rows;
-- PostgreSQL itself raises 42501 for a role calling a function it is not granted.

create or replace view conveyor.error_codes (sqlstate, name, meaning) as
values
    ('CV001', 'stale_lease', 'stale lease: the token does not match the run''s current attempt (expired and reclaimed, or finished); nothing changed'),
    ('CV002', 'unknown_run', 'unknown run'),
    ('CV003', 'unknown_task', 'unknown task or service'),
    ('CV004', 'transition_not_allowed', 'a status change that conveyor.transitions does not allow'),
    ('CV005', 'retry_refused', 'retry_run refused (and why)'),
    ('CV006', 'already_finished', 'cancel_run on a run that is already finished'),
    ('CV007', 'unknown_queue', 'unknown queue (producers do not create queues: an operator does)'),
    ('CV008', 'queue_in_use', 'drop_queue of a queue that tasks use or that holds unfinished runs'),
    ('CV009', 'duplicate_run', 'enqueue with an idempotency key that matches a run of the task, under on_duplicate = reject (nothing written)'),
    ('CV010', 'invalid_configuration', 'invalid configuration (every problem listed, nothing applied)'),
    ('CV011', 'shard_unavailable', 'pg_conveyor_router: a shard did not answer (nothing changed there); also the warning of a view, count or claim that lacks a shard'),
    ('CV012', 'cluster_misconfigured', 'pg_conveyor_router: conveyor.shards is not a whole cluster (numbers 0 to N-1, N a power of two) or a shard''s conveyor.partition disagrees'),
    ('22023', 'invalid_parameter_value', 'invalid argument: payload not an object, priority out of 0-9, run_at and delay both, bad duration, bad queue name or topic, a claim under a rate limit outside READ COMMITTED'),
    ('22P02', 'invalid_text_representation', 'text that is not a ULID (or a lease token that is not a UUID)'),
    ('42501', 'insufficient_privilege', 'a role calls a function it is not granted (raised by PostgreSQL; see SECURITY.md)');
comment on view conveyor.error_codes is 'every SQLSTATE pg_conveyor raises, with its name and meaning';

-- _raise_stale: the documented error for a finishing call whose lease no longer holds.
create or replace function conveyor._raise_stale(p_run_id conveyor.ulid, p_token uuid)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_status conveyor.run_status;
begin
    select r.status into v_status from conveyor.runs r where r.id = p_run_id;
    if not found then
        perform conveyor._raise_unknown_run(p_run_id);
    end if;
    raise exception using
        errcode = 'CV001',
        message = format('stale lease for run %s: the run is %s', p_run_id,
                         case when v_status = 'running' then 'running under another lease' else v_status::text end),
        detail = 'the lease expired and the run was reclaimed, or the run was finished; nothing was changed',
        hint = 'stop working on this run; its current attempt belongs to someone else or is over';
end
$$;

-- _raise_unknown_run: CV002, a run id that names no run (p_what: run, parent run).
create or replace function conveyor._raise_unknown_run(p_run_id conveyor.ulid, p_what text default 'run')
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV002', message = format('unknown %s %s', p_what, p_run_id);
end
$$;

-- _raise_unknown_task: CV003, a name that is no task (or service).
create or replace function conveyor._raise_unknown_task(p_name text, p_kind text default 'task', p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_hint is null then
        raise exception using errcode = 'CV003', message = format('unknown %s "%s"', p_kind, p_name);
    end if;
    raise exception using errcode = 'CV003', message = format('unknown %s "%s"', p_kind, p_name), hint = p_hint;
end
$$;

-- _raise_transition_refused: CV004, a status change conveyor.transitions does not allow (raised by the transition triggers).
create or replace function conveyor._raise_transition_refused(p_message text, p_hint text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV004', message = p_message, hint = p_hint;
end
$$;

-- _raise_retry_refused: CV005, retry_run refused, with the reason.
create or replace function conveyor._raise_retry_refused(p_reason text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV005', message = p_reason;
end
$$;

-- _raise_already_finished: CV006, cancel_run on a finished run.
create or replace function conveyor._raise_already_finished(p_run_id conveyor.ulid, p_status conveyor.run_status)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV006', message = format('run %s is already %s', p_run_id, p_status), hint = 'only scheduled, queued, retrying, released or running runs can be cancelled';
end
$$;

-- _raise_unknown_queue: CV007, a name that is no queue.
create or replace function conveyor._raise_unknown_queue(p_name text, p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_hint is null then
        raise exception using errcode = 'CV007', message = format('unknown queue "%s"', p_name);
    end if;
    raise exception using errcode = 'CV007', message = format('unknown queue "%s"', p_name), hint = p_hint;
end
$$;

-- _raise_queue_in_use: CV008, drop_queue of a queue still in use, and why.
create or replace function conveyor._raise_queue_in_use(p_name text, p_why text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV008', message = format('queue "%s" is in use: %s', p_name, p_why),
        hint = 'move its tasks to another queue and let its runs finish (or cancel them) first';
end
$$;

-- _raise_duplicate: CV009, an enqueue whose idempotency key matches a run of a task whose
-- on_duplicate is reject (p_run_id null: the key comes twice in the same call).
create or replace function conveyor._raise_duplicate(p_task text, p_key text, p_run_id conveyor.ulid, p_status conveyor.run_status)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = 'CV009',
        message = case when p_run_id is null
            then format('duplicate run: idempotency key "%s" comes more than once in this call for task "%s"', p_key, p_task)
            else format('duplicate run: task "%s" already has run %s (%s) for idempotency key "%s"',
                        p_task, p_run_id, p_status, p_key) end,
        hint = 'the task''s on_duplicate is reject (return gives back the existing run; replace updates its payload)';
end
$$;

-- _raise_config: refuse a configuration, listing every problem.
create or replace function conveyor._raise_config(problems text[])
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    raise exception using
        errcode = 'CV010',
        message = case cardinality(problems)
            when 1 then 'invalid configuration: ' || problems[1]
            else format('invalid configuration: %s problems: %s', cardinality(problems), array_to_string(problems, '; '))
        end,
        detail = array_to_string(problems, E'\n'),
        hint = 'nothing was changed';
end
$$;

-- _raise_invalid: 22023 (invalid_parameter_value), a bad argument; the message names the value and what is accepted.
create or replace function conveyor._raise_invalid(p_message text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    raise exception using errcode = '22023', message = p_message;
end
$$;

-- _check_time: the rule every timestamp a caller gives follows (run_at, deliver_at): finite, and
-- within 100 years of now either way (a due time of -infinity or 1969 broke the lag figures of
-- every dashboard; infinity was accepted and never delivered). 22023 quoting it otherwise.
create or replace function conveyor._check_time(p_name text, p_value timestamptz, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_value is not null
       and (not isfinite(p_value) or p_value > p_now + interval '100 years' or p_value < p_now - interval '100 years') then
        perform conveyor._raise_invalid(format('invalid %s %s: expected a time within 100 years of now', p_name, p_value));
    end if;
end
$$;
