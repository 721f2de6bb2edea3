-- functions/roles.sql: four roles, each granted only its job. Nobody but the owner writes the tables;
-- every state change goes through a SECURITY DEFINER function with a fixed search_path
-- (pg_catalog, conveyor, pg_temp), so objects in a caller's schemas are never picked up.
--
--   conveyor_producer  enqueue runs, publish outbox messages
--   conveyor_worker    claim runs and finish them under their lease
--   conveyor_reader    read runs, attempts, events and the dashboard views
--   conveyor_admin     configure tasks and queues, cancel and retry, tick; and all of the above

do $$
declare
    v_role text;
begin
    foreach v_role in array array['conveyor_admin', 'conveyor_producer', 'conveyor_worker', 'conveyor_reader'] loop
        if not exists (select from pg_catalog.pg_roles where rolname = v_role) then
            execute format('create role %I nologin', v_role);
        end if;
    end loop;
end
$$;

grant conveyor_producer, conveyor_worker, conveyor_reader to conveyor_admin;

revoke all on all tables in schema conveyor from public;

revoke all on all sequences in schema conveyor from public;

revoke execute on all functions in schema conveyor from public;

grant usage on schema conveyor to conveyor_admin, conveyor_producer, conveyor_worker, conveyor_reader;

-- the types' own functions (I/O, comparison) and harmless helpers stay usable by everyone
grant execute on function
    conveyor.ulid_in(cstring), conveyor.ulid_out(conveyor.ulid), conveyor.ulid_recv(internal),
    conveyor.ulid_send(conveyor.ulid), conveyor.ulid_eq(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_ne(conveyor.ulid, conveyor.ulid), conveyor.ulid_lt(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_le(conveyor.ulid, conveyor.ulid), conveyor.ulid_gt(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_ge(conveyor.ulid, conveyor.ulid), conveyor.ulid_cmp(conveyor.ulid, conveyor.ulid),
    conveyor.ulid_hash(conveyor.ulid), conveyor.ulid_hash_extended(conveyor.ulid, bigint),
    conveyor.ulid_sortsupport(internal), conveyor.ulid_generate(), conveyor.ulid_timestamp(conveyor.ulid),
    conveyor.ulid_partition(conveyor.ulid),
    conveyor.duration_in(cstring), conveyor.duration_out(conveyor.duration),
    conveyor.duration_recv(internal), conveyor.duration_send(conveyor.duration), conveyor.duration_from_interval(interval),
    conveyor._duration_text(interval), conveyor._is_failure(conveyor.attempt_outcome), conveyor._now(),
    conveyor._option_registry(),
    conveyor._finished(conveyor.run_status), conveyor._live(conveyor.run_status), conveyor._waiting(conveyor.run_status),
    conveyor._delivered(conveyor.run_status), conveyor._is_delivered(conveyor.run_status), conveyor._outcome_status(conveyor.attempt_outcome),
    conveyor.tick_steps()
to public;

grant execute on function
    conveyor.enqueue(text, jsonb, timestamptz, conveyor.duration, integer, text, text, conveyor.ulid, text),
    conveyor.enqueue_many(text, jsonb[], timestamptz, conveyor.duration, integer, text, text[], conveyor.ulid, text[]),
    conveyor.publish(text, jsonb, timestamptz)
to conveyor_producer;

grant execute on function
    conveyor.claim_run(text, text, conveyor.duration, text[], boolean),
    conveyor.claim_runs(text, text, integer, conveyor.duration, text[], boolean),
    conveyor.pending(text),
    conveyor.rate_limited_until(text),
    conveyor.lease_granted(conveyor.duration),
    conveyor.complete_run(conveyor.ulid, uuid, jsonb),
    conveyor.fail_run(conveyor.ulid, uuid, text, jsonb, boolean),
    conveyor.release_run(conveyor.ulid, uuid, text, text, jsonb),
    conveyor.return_run(conveyor.ulid, uuid),
    conveyor.finish_runs(jsonb),
    conveyor.finish_and_claim(jsonb, text, text, integer, conveyor.duration, text[], boolean),
    conveyor.heartbeat(conveyor.ulid, uuid, conveyor.duration),
    conveyor.append_log(conveyor.ulid, uuid, text)
to conveyor_worker;

grant select on
    conveyor.runs, conveyor.attempts, conveyor.attempt_logs, conveyor.events, conveyor.tasks,
    conveyor.queues, conveyor.transitions, conveyor.defaults, conveyor.task_config, conveyor.outbox,
    conveyor.queue_stats, conveyor.task_stats, conveyor.recent_failures, conveyor.throughput, conveyor.run_history,
    conveyor.run_statuses, conveyor.attempt_outcomes, conveyor.error_codes, conveyor.options,
    conveyor.quarantine, conveyor._tick_stats, conveyor.sessions, conveyor.counters, conveyor.rate_limits,
    conveyor.key_limits
to conveyor_reader;

grant execute on function conveyor.metrics(), conveyor.view_rows(text), conveyor._dashboard_views() to conveyor_reader;

grant select on all tables in schema conveyor to conveyor_admin;

grant execute on function
    conveyor.define_task(text, text, integer, integer, text, text, text, text, text, integer, text, text, text,
                         integer, jsonb, text, text, text, text, text, integer, text),
    conveyor.define_service(text, integer, text, text, text, text, jsonb, jsonb),
    conveyor.disable_task(text), conveyor.enable_task(text),
    conveyor.set_queue(text, integer, boolean, boolean, boolean, boolean, text, integer, text),
    conveyor.pause_queue(text), conveyor.resume_queue(text), conveyor.drop_queue(text),
    conveyor.set_defaults(jsonb), conveyor.apply_config(jsonb), conveyor.check_config(jsonb),
    conveyor.cancel_run(conveyor.ulid), conveyor.cancel_runs(text, text, conveyor.run_status, integer),
    conveyor.retry_run(conveyor.ulid),
    conveyor.retry_runs(text, text, conveyor.run_status, timestamptz, integer),
    conveyor.tick(), conveyor.tick_step(text),
    conveyor.start_service(text), conveyor.stop_service(text),
    conveyor.outbox_claim(text, text[], integer, conveyor.duration), conveyor.outbox_ack(conveyor.ulid[], uuid)
to conveyor_admin;
