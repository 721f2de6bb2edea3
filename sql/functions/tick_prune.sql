-- functions/tick_prune.sql: tick step `prune`: retention.

-- _prune: delete finished runs older than the retention (conveyor.defaults), with their
-- attempts, logs and events, oldest first, at most p_limit runs; and outbox rows published
-- longer ago than the retention.
create or replace function conveyor._prune(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_cutoff timestamptz := p_now - (select d.retention from conveyor.defaults d);
    v_ids conveyor.ulid[];
begin
    select array_agg(r.id) into v_ids from (
        select r.id from conveyor.runs r
        where r.finished_at < v_cutoff
        order by r.finished_at
        limit p_limit
        for update skip locked
    ) r;
    delete from conveyor.outbox o
    where o.id in (select x.id from conveyor.outbox x where x.published_at < v_cutoff
                   order by x.published_at limit p_limit for update skip locked);
    -- rate-limit starts two windows (and 10 minutes) old: no claim counts them any more, even
    -- one whose transaction began a while ago (a removed limit's starts go at once); read by
    -- each limit's index range, never the whole table
    delete from conveyor._rate_starts s
    where s.ctid = any(array(
        select x.ctid
        from conveyor._rate_limits l
        left join conveyor.queues q on l.scope = 'queue' and q.name = l.name
        left join conveyor.tasks t on l.scope = 'task' and t.name = l.name
        cross join lateral (
            select x.ctid from conveyor._rate_starts x
            where x.scope = l.scope and x.name = l.name and x.shard = l.shard
              and x.at < p_now - coalesce(2 * coalesce(q.rate_limit_period, t.rate_limit_period) + interval '10 minutes',
                                          interval '0')
            order by x.at
            limit p_limit) x
        limit p_limit));
    -- and those of the key rate limits (a removed one's go with it: _set_rate_limit)
    delete from conveyor._rate_starts s
    where s.ctid = any(array(
        select x.ctid
        from (select 'queue_key' as scope, q.name, q.key_rate_limit_period as period
              from conveyor.queues q where q.key_rate_limit_n is not null
              union all
              select 'task_key', t.name, t.key_rate_limit_period
              from conveyor.tasks t where t.key_rate_limit_n is not null) l
        cross join generate_series(0, 7) as h(shard)
        cross join lateral (
            select x.ctid from conveyor._rate_starts x
            where x.scope = l.scope and x.name = l.name and x.shard = h.shard
              and x.at < p_now - (2 * l.period + interval '10 minutes')
            order by x.at
            limit p_limit) x
        limit p_limit));
    if v_ids is null then
        return 0;
    end if;
    delete from conveyor.attempts a where a.run_id = any(v_ids);
    delete from conveyor.attempt_logs l where l.run_id = any(v_ids);
    delete from conveyor.events e where e.run_id = any(v_ids);
    delete from conveyor.quarantine q where q.run_id = any(v_ids);
    delete from conveyor.runs r where r.id = any(v_ids);
    return cardinality(v_ids);
end
$$;
