-- functions/finish.sql: workers end attempts (README: Workers). Each call builds its endings and
-- hands them to conveyor._end_attempts (functions/state_machine.sql), which decides what an
-- outcome does to the run.

-- complete_run: running -> succeeded (also when a cancel was requested: the work was done).
create or replace function conveyor.complete_run(run_id conveyor.ulid, lease_token uuid, result jsonb default null)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._end_one(row(run_id, lease_token, null, 'succeeded', null, null, result, null, null), true);
end
$$;

comment on function conveyor.complete_run is
    'finish an attempt successfully (optional result); raises CV001 if the lease is stale';

-- fail_run: running -> retrying (retryable, budget left; run_at = now + backoff) or failed.
-- The failure is {code: task_failed, message, meta}. meta that is not a JSON object fails the
-- attempt with configuration_invalid (not retried) instead.
create or replace function conveyor.fail_run(
    run_id conveyor.ulid,
    lease_token uuid,
    message text,
    meta jsonb default null,
    retryable boolean default true
)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._end_one(
        case when meta is not null and jsonb_typeof(meta) <> 'object' then
            row(run_id, lease_token, null, 'failed',
                conveyor._failure('configuration_invalid',
                                  format('fail_run meta must be a JSON object, got %s', jsonb_typeof(meta)),
                                  jsonb_build_object('message', message, 'meta', meta)),
                false, null, null, null)::conveyor._ending
        else
            row(run_id, lease_token, null, 'failed', conveyor._failure('task_failed', message, meta),
                coalesce(retryable, true), null, null, null)::conveyor._ending
        end);
end
$$;

comment on function conveyor.fail_run is
    'fail an attempt: retried after the backoff delay while the budget lasts (retryable), else failed; returns the new status';

-- release_run: running -> released, due again after `delay` (business waiting: no failure is
-- counted, the retry budget is untouched). A delay that is missing or not a duration, or meta
-- that is not an object, fails the attempt with configuration_invalid instead.
create or replace function conveyor.release_run(
    run_id conveyor.ulid,
    lease_token uuid,
    delay text,
    reason text default null,
    meta jsonb default null
)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_delay interval := conveyor._duration_or_null(delay);
    v_problem text;
begin
    v_problem := case
        when v_delay is null then format('release_run needs a delay such as ''30s'', got %s',
                                         coalesce(quote_literal(delay), 'null'))
        when meta is not null and jsonb_typeof(meta) <> 'object' then
            format('release_run meta must be a JSON object, got %s', jsonb_typeof(meta))
    end;
    if v_problem is not null then
        return conveyor._end_one(row(run_id, lease_token, null, 'failed',
            conveyor._failure('configuration_invalid', v_problem,
                              jsonb_build_object('delay', delay, 'reason', reason, 'meta', meta)),
            false, null, null, null));
    end if;
    return conveyor._end_one(row(run_id, lease_token, null, 'released', null, null, null, v_delay,
        jsonb_strip_nulls(jsonb_build_object('reason', conveyor._sanitize(reason), 'meta', conveyor._clean_json(meta)))));
end
$$;

comment on function conveyor.release_run is
    'release an attempt: the run waits (delay, e.g. ''30s'') and is claimed again; not a failure, never spends the retry budget';

-- return_run: running -> queued (outcome interrupted): a worker shutting down gives the run
-- back unfinished; it is claimable again at once.
create or replace function conveyor.return_run(run_id conveyor.ulid, lease_token uuid)
returns conveyor.run_status
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._end_one(row(run_id, lease_token, null, 'interrupted', null, null, null, null, null));
end
$$;

comment on function conveyor.return_run is
    'give a run back unfinished (worker shutting down): it is queued again at once; no failure counted';

-- finish_runs: end many attempts in one call and one transaction. `items` is a JSON array of
-- {run_id, lease_token, outcome: succeeded|failed|released|returned, result, message, meta,
--  retryable, delay, reason}. Malformed items fail their attempt with configuration_invalid;
-- items whose lease is stale change nothing and come back with status null.
create or replace function conveyor.finish_runs(items jsonb)
returns table (run_id conveyor.ulid, status conveyor.run_status)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    if items is null or jsonb_typeof(items) <> 'array' then
        perform conveyor._raise_invalid(format('finish_runs takes a JSON array of items, got %s', coalesce(jsonb_typeof(items), 'null')));
    end if;
    if exists (select from jsonb_array_elements(items) e where jsonb_typeof(e) <> 'object') then
        perform conveyor._raise_invalid('finish_runs items must be JSON objects {run_id, lease_token, outcome, ...}');
    end if;

    return query
    with item as (
        select x.n, conveyor._ulid_or_null(x.run_id) as id, conveyor._uuid_or_null(x.lease_token) as token,
               x.outcome, nullif(x.result, 'null') as result, x.message, nullif(x.meta, 'null') as meta,
               x.retryable, x.delay, conveyor._duration_or_null(x.delay) as wait, x.reason
        from rows from (jsonb_to_recordset(items) as (run_id text, lease_token text, outcome text, result jsonb,
                        message text, meta jsonb, retryable jsonb, delay text, reason text))
             with ordinality as x(run_id, lease_token, outcome, result, message, meta, retryable, delay, reason, n)
    ),
    checked as (
        select i.*,
               case
                   when i.outcome is null or i.outcome not in ('succeeded', 'failed', 'released', 'returned') then
                       format('outcome must be succeeded, failed, released or returned, got %s', coalesce(i.outcome, 'nothing'))
                   when i.meta is not null and jsonb_typeof(i.meta) <> 'object' then
                       format('meta must be a JSON object, got %s', jsonb_typeof(i.meta))
                   when i.retryable is not null and jsonb_typeof(i.retryable) not in ('boolean', 'null') then
                       format('retryable must be true or false, got %s', i.retryable)
                   when i.outcome = 'released' and i.wait is null then
                       format('a release needs a delay such as "30s", got %s', coalesce(quote_literal(i.delay), 'nothing'))
               end as problem
        from item i
    ),
    ended as (
        -- every item, in item order: an ending's ord is its item's position, so a status is
        -- reported for the item that ended the attempt and null for any other (a stale or forged
        -- item naming the same run)
        select e.ord, e.status from conveyor._end_attempts(array(
            select case
                when c.problem is not null then
                    row(c.id, c.token, null, 'failed', conveyor._failure('configuration_invalid', c.problem,
                        jsonb_strip_nulls(jsonb_build_object('outcome', c.outcome, 'message', c.message, 'meta', c.meta,
                                                             'delay', c.delay, 'retryable', c.retryable))),
                        false, null, null, null)::conveyor._ending
                when c.outcome = 'succeeded' then
                    row(c.id, c.token, null, 'succeeded', null, null, c.result, null, null)::conveyor._ending
                when c.outcome = 'failed' then
                    row(c.id, c.token, null, 'failed', conveyor._failure('task_failed', c.message, c.meta),
                        case when jsonb_typeof(c.retryable) = 'boolean' then (c.retryable)::boolean else true end,
                        null, null, null)::conveyor._ending
                when c.outcome = 'released' then
                    row(c.id, c.token, null, 'released', null, null, null, c.wait,
                        jsonb_strip_nulls(jsonb_build_object('reason', conveyor._sanitize(c.reason), 'meta', conveyor._clean_json(c.meta))))::conveyor._ending
                else
                    row(c.id, c.token, null, 'interrupted', null, null, null, null, null)::conveyor._ending
            end
            from checked c
            order by c.n),
            (select bool_and(c.outcome = 'succeeded' and c.problem is null) from checked c)) e
    )
    select i.id, e.status
    from item i
    left join ended e on e.ord = i.n
    order by i.n;
end
$$;

comment on function conveyor.finish_runs is
    'end many attempts at once: items [{run_id, lease_token, outcome: succeeded|failed|released|returned, result, message, meta, retryable, delay, reason}]; status null = stale lease';

-- finish_and_claim: finish the runs in hand and claim the next ones, in one call and one
-- transaction, so a worker commits once per cycle instead of twice (a batch-1 worker pays one
-- commit per run). `items` is finish_runs' (null or [] finishes nothing); the rest is
-- claim_runs'. One row per item first (kind 'finished', status as finish_runs reports it: null
-- for a stale lease), then one per claimed run (kind 'claimed', with claim_runs' columns). A
-- malformed call (items not an array of objects, a bad max or worker) refuses the whole call:
-- nothing is finished and nothing claimed; a malformed item fails its run, as in finish_runs.
create or replace function conveyor.finish_and_claim(
    items jsonb,
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns table (
    kind text,
    run_id conveyor.ulid,
    status conveyor.run_status,
    lease_token uuid,
    task text,
    queue text,
    payload jsonb,
    attempt integer,
    failures integer,
    releases integer,
    attempt_id conveyor.ulid,
    priority smallint,
    parent_run_id conveyor.ulid,
    lease_expires_at timestamptz,
    timeout_at timestamptz
)
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    if finish_and_claim.items is not null and finish_and_claim.items <> '[]'::jsonb then
        return query
        select 'finished'::text, f.run_id, f.status, null::uuid, null::text, null::text, null::jsonb, null::integer,
               null::integer, null::integer, null::conveyor.ulid, null::smallint, null::conveyor.ulid,
               null::timestamptz, null::timestamptz
        from conveyor.finish_runs(finish_and_claim.items) f;
    end if;
    return query
    select 'claimed'::text, c.run_id, 'running'::conveyor.run_status, c.lease_token, c.task, c.queue, c.payload,
           c.attempt, c.failures, c.releases, c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at
    from conveyor.claim_runs(finish_and_claim.queues, finish_and_claim.worker, finish_and_claim.max,
                             finish_and_claim.lease, finish_and_claim.tasks, finish_and_claim.bind_session) c;
end
$$;

comment on function conveyor.finish_and_claim is
    'finish the runs in hand (finish_runs items) and claim the next (claim_runs), in one transaction: rows of kind finished, then claimed';
