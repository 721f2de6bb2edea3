-- functions/tick_expire.sql: tick step `expire`: leases and timeouts that ran out.

-- _expire_leases: end attempts whose lease ran out (outcome crashed: the worker is presumed
-- dead) or whose timeout passed (outcome timeout); both retry under the budget. A run with a
-- cancel request ends cancelled/stopped instead (an abandoned cancellation).
create or replace function conveyor._expire_leases(p_now timestamptz, p_limit integer)
returns table (crashed integer, timed_out integer, stopped integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    return query
    with ended as (
        select e.outcome
        from conveyor._end_attempts(array(
            select row(r.id, null, r.attempt_id,
                       case when r.timeout_at <= p_now then 'timeout' else 'crashed' end,
                       case when r.timeout_at <= p_now
                            then conveyor._failure('timeout', format('attempt %s exceeded its timeout of %s',
                                                   r.attempts + 1, conveyor._duration_text(r.timeout_at - r.started_at)))
                            else conveyor._failure('crashed', format('no heartbeat before the lease expired at %s: worker %s is presumed dead',
                                                   to_char(r.lease_expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                                   coalesce(r.worker, '?')))
                       end,
                       true, null, null, null)::conveyor._ending
            from conveyor.runs r
            where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) <= p_now
            order by least(r.lease_expires_at, r.timeout_at)
            limit p_limit
            for no key update skip locked)) e
    )
    select count(*) filter (where ended.outcome = 'crashed')::integer,
           count(*) filter (where ended.outcome = 'timeout')::integer,
           count(*) filter (where ended.outcome = 'stopped')::integer
    from ended;
end
$$;
