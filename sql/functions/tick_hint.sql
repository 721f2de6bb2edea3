-- functions/tick_hint.sql: tick step `hint`: where claims start reading while an old snapshot
-- holds vacuum back (conveyor._claim_hints, sql/schema/tables.sql; docs/guarantees.md).

-- _old_snapshot_held: whether something keeps vacuum from removing this database's dead rows
-- while many transactions have run since (the dead entries a claim would walk come from
-- them): a session's snapshot or its own transaction (one idle in transaction after a write
-- holds vacuum back too), a prepared transaction, a standby's feedback or a replication slot,
-- 1,000 transactions old or more. Autovacuum's own snapshot holds nothing back.
create or replace function conveyor._old_snapshot_held()
returns boolean
language sql
stable
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select exists (select from pg_catalog.pg_stat_activity a
                   where (a.datname = current_database() or a.backend_type = 'walsender' and a.datname is null)
                     and a.pid <> pg_backend_pid() and a.backend_type <> 'autovacuum worker'
                     and greatest(age(a.backend_xmin), age(a.backend_xid)) >= 1000)
        or exists (select from pg_catalog.pg_prepared_xacts p
                   where p.database = current_database() and age(p.transaction) >= 1000)
        or exists (select from pg_catalog.pg_replication_slots s
                   where (s.database is null or s.database = current_database()) and age(s.xmin) >= 1000)
$$;

-- _publish_claim_hints: while an old snapshot is held, the open queues get a new hint each
-- tick (the 100 whose hints are oldest, when there are more). A hint is the lower of two keys,
-- both as committed now:
--   * the first claimable run's, found by one walk of runs_claimable from the queue's head (the
--     walk every claim would otherwise make); with none, priority 0, no turn, due 100 ms ago;
--   * priority 0, no turn, the earliest due time of the queue's waiting runs: tick delivers
--     them with that due time, whenever room or their time comes (a bounded queue's backlog).
-- So nothing claimable now is behind the hint, nor anything tick will deliver. A run queued
-- later behind it (a higher priority, an earlier due time, an unkeyed run where keyed ones
-- lead, a returned run, a producer's transaction that began before the walk) is found by the
-- next tick's walk, which starts at the head: it waits up to a tick interval more, and only
-- while the snapshot is held (as a retry due at once waits for tick's delivery). A queue whose
-- new hint is lower than its last one had such a run: its listeners are woken (the wakeup
-- its enqueue sent found nothing to claim). Without an old snapshot no hint is made and claims
-- read from the head, as always. Hints older than a minute, or made by a clock ahead of this
-- one, go (SKIP LOCKED: another tick's delete is not waited for).
create or replace function conveyor._publish_claim_hints(p_now timestamptz)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_n integer;
begin
    delete from conveyor._claim_hints h
    where h.ctid = any(array(
        select x.ctid from conveyor._claim_hints x
        where x.made_at < p_now - interval '1 minute' or x.made_at > p_now + interval '1 s'
        for update skip locked));
    if not conveyor._old_snapshot_held() then
        return 0;
    end if;
    with hint as (
        select q.name, q.notify, (k.key).priority, (k.key).fair_rank, (k.key).run_at, (k.key).id,
               -- (lower than the hint in force, the one claims read; none: the lowest key)
               k.key < (select row(c.*)::conveyor._claim_key from conveyor._claim_floor(q.name, p_now) c) as lower
        from (select q.name, q.notify
              from conveyor.queues q
              left join lateral (select h.made_at from conveyor._claim_hints h
                                 where h.queue = q.name and h.made_at <= p_now + interval '1 s'
                                 order by h.made_at desc limit 1) h on true
              where not q.paused
              order by h.made_at nulls first, q.name
              limit 100) q
        left join lateral (
            select r.priority, r.fair_rank, r.run_at, r.id from conveyor.runs r
            where r.status = 'queued' and r.queue = q.name
            order by r.priority, r.fair_rank, r.run_at, r.id
            limit 1) f on true
        left join lateral (
            select r.run_at from conveyor.runs r
            where r.queue = q.name and r.status in ('scheduled', 'retrying', 'released')
            order by r.run_at
            limit 1) w on true
        cross join lateral (
            select least(case when f.id is null
                              then row(0, 0, p_now - interval '100 ms', '00000000000000000000000000')::conveyor._claim_key
                              else row(f.priority, f.fair_rank, f.run_at, f.id)::conveyor._claim_key end,
                         row(0, 0, coalesce(w.run_at, 'infinity'), '00000000000000000000000000')::conveyor._claim_key) as key) k
    ),
    made as (
        insert into conveyor._claim_hints (queue, made_at, priority, fair_rank, run_at, id)
        select h.name, p_now, h.priority, h.fair_rank, h.run_at, h.id from hint h
        returning 1
    ),
    woken as (
        select pg_notify('conveyor.' || h.name, '') from hint h where h.lower and h.notify
    )
    select (select count(*) from made) + 0 * (select count(*) from woken) into v_n;
    return v_n;
end
$$;

-- _claim_floor: the key a claim of this queue starts reading at: the queue's newest hint of
-- the last 3 s, else the lowest key there is (the head of the queue). A hint made at a time
-- ahead of the claim's (a clock set back, a test clock) is not one of the last 3 s. A
-- set-returning SQL function, inlined into the claim's statement.
create or replace function conveyor._claim_floor(p_queue text, p_now timestamptz)
returns table (priority smallint, fair_rank bigint, run_at timestamptz, id conveyor.ulid)
language sql
stable
as $$
    select coalesce(h.priority, (-32768)::smallint), coalesce(h.fair_rank, (-9223372036854775808)::bigint),
           coalesce(h.run_at, '-infinity'::timestamptz), coalesce(h.id, '00000000000000000000000000'::conveyor.ulid)
    from (select) one
    left join lateral (
        select h.priority, h.fair_rank, h.run_at, h.id from conveyor._claim_hints h
        where h.queue = p_queue and h.made_at between p_now - interval '3 s' and p_now + interval '1 s'
        order by h.made_at desc
        limit 1) h on true
$$;
