-- functions/tick_hint.sql: tick step `hint`: where claims start reading while an old snapshot
-- holds vacuum back (conveyor._claim_hints, sql/schema/tables.sql; docs/guarantees.md).

-- _old_snapshot_held: whether something keeps vacuum from removing this database's dead rows
-- for longer than a claim should pay for: a session's snapshot (a transaction, a long query)
-- or a prepared transaction older than 2 s, or a standby's feedback or a replication slot
-- 10,000 transactions behind. Autovacuum's own snapshot holds nothing back. Real time, not
-- conveyor._now(): a snapshot ages in real time.
create or replace function conveyor._old_snapshot_held()
returns boolean
language sql
stable
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select exists (select from pg_catalog.pg_stat_activity a
                   where a.datname = current_database() and a.backend_xmin is not null
                     and a.pid <> pg_backend_pid() and a.backend_type <> 'autovacuum worker'
                     and coalesce(a.xact_start, a.query_start) < clock_timestamp() - interval '2 s')
        or exists (select from pg_catalog.pg_prepared_xacts p
                   where p.database = current_database() and p.prepared < clock_timestamp() - interval '2 s')
        or exists (select from pg_catalog.pg_stat_activity a
                   where a.backend_type = 'walsender' and age(a.backend_xmin) > 10000)
        or exists (select from pg_catalog.pg_replication_slots s
                   where (s.database is null or s.database = current_database()) and age(s.xmin) > 10000)
$$;

-- _publish_claim_hints: while an old snapshot is held, the open queues get a new hint each
-- tick (the 100 whose hints are oldest, when there are more). A hint is the lower of two keys,
-- both as committed now:
--   * the first claimable run's, found by one walk of runs_claimable from the queue's head (the
--     walk every claim would otherwise make); with none, priority 0, no turn, due 100 ms ago;
--   * priority 0, no turn, the earliest due time of the queue's waiting runs: tick delivers
--     them with that due time, whenever room or their time comes (a bounded queue's backlog).
-- So nothing claimable now is behind the hint, nor anything tick will deliver. A run queued
-- later behind it (a higher priority, an earlier due time, a producer's transaction that
-- began before the walk) is found by the next tick's walk, which starts at the head: it waits
-- up to a tick interval more, and only while the snapshot is held (as a retry due at once
-- waits for tick's delivery). Without an old snapshot no hint is made and claims read from
-- the head, as always. Hints older than a minute go.
create or replace function conveyor._publish_claim_hints(p_now timestamptz)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_n integer;
begin
    delete from conveyor._claim_hints h where h.made_at < p_now - interval '1 minute';
    if not conveyor._old_snapshot_held() then
        return 0;
    end if;
    insert into conveyor._claim_hints (queue, made_at, priority, fair_rank, run_at, id)
    select q.name, p_now, (k.key).priority, (k.key).fair_rank, (k.key).run_at, (k.key).id
    from (select q.name from conveyor.queues q
          left join lateral (select h.made_at from conveyor._claim_hints h
                             where h.queue = q.name order by h.made_at desc limit 1) h on true
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
                     row(0, 0, coalesce(w.run_at, 'infinity'), '00000000000000000000000000')::conveyor._claim_key) as key) k;
    get diagnostics v_n = row_count;
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
