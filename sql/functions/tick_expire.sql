-- functions/tick_expire.sql: tick step `expire`: leases and timeouts that ran out, and runs
-- bound to a session that is gone.

-- _expiry: the ending tick gives a running run whose lease or timeout ran out, or whose bound
-- session is gone: outcome timeout when the timeout passed, else crashed (the worker is
-- presumed dead: no heartbeat, or its session ended).
create or replace function conveyor._expiry(p_run conveyor.runs, p_now timestamptz)
returns conveyor._ending
language sql
stable
as $$
    select row(p_run.id, null, p_run.attempt_id,
               case when p_run.timeout_at <= p_now then 'timeout' else 'crashed' end,
               case when p_run.timeout_at <= p_now
                    then conveyor._failure('timeout', format('attempt %s exceeded its timeout of %s',
                                           p_run.attempts + 1, conveyor._duration_text(p_run.timeout_at - p_run.started_at)))
                    when p_run.lease_expires_at <= p_now
                    then conveyor._failure('crashed', format('no heartbeat before the lease expired at %s: worker %s is presumed dead',
                                           to_char(p_run.lease_expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                           coalesce(p_run.worker, '?')))
                    else conveyor._failure('crashed', format('the session that claimed it (backend pid %s, started %s) ended: worker %s is presumed dead',
                                           p_run.session_pid,
                                           to_char(p_run.session_started_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                           coalesce(p_run.worker, '?')))
               end,
               true, null, null, null)::conveyor._ending
$$;

-- _gone_sessions: the bound sessions (conveyor.sessions) that are no longer connected: no
-- backend has the pid, or the backend with the pid started at another time (pids are reused;
-- after a crash restart or a failover every old session is gone). Where pg_stat_activity hides
-- a backend's start time (it shows it only to the session's own role, members of
-- pg_read_all_stats and superusers), a backend with the pid counts as the session: a live
-- session is never taken for a gone one, whoever calls tick.
create or replace function conveyor._gone_sessions()
returns setof conveyor.sessions
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    -- a fresh list of backends, read after the statement below took its snapshot: a session
    -- whose row that snapshot sees committed it while connected, so it is in the list unless it
    -- has ended since
    perform pg_stat_clear_snapshot();
    return query
    select s.* from conveyor.sessions s
    where not exists (select from pg_stat_get_activity(null) a
                      where a.pid = s.pid and (a.backend_start = s.started_at or a.backend_start is null));
end
$$;

-- _expire_leases: end attempts whose lease ran out or whose bound session is gone (outcome
-- crashed) or whose timeout passed (outcome timeout); both retry under the budget. A gone
-- session's row goes once none of its runs is running. A run with a cancel request ends
-- cancelled/stopped instead (an abandoned cancellation). One statement for the batch; if it
-- fails, the runs are ended one by one, and one that fails alone is set aside
-- (conveyor._quarantine) while the others are recovered. Runs a client holds are skipped.
create or replace function conveyor._expire_leases(p_now timestamptz, p_limit integer)
returns table (crashed integer, timed_out integer, stopped integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_outcomes conveyor.attempt_outcome[];
    v_run conveyor.runs;
    v_outcome conveyor.attempt_outcome;
    v_held text[] := '{}';
    v_gone conveyor.sessions[] := '{}';
begin
    -- sessions are few (one per worker connection that ever bound a claim): checked every tick.
    -- Only under READ COMMITTED: an older snapshot (a tick by hand in a REPEATABLE READ
    -- transaction) may not see a run claimed since, and would delete its session's row.
    if current_setting('transaction_isolation') = 'read committed' then
        v_gone := array(select s from conveyor._gone_sessions() s);
    end if;
    begin
        v_outcomes := array(
            select e.outcome
            from conveyor._end_attempts(array(
                select conveyor._expiry(r, p_now)
                from conveyor.runs r
                where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) <= p_now
                  and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
                order by least(r.lease_expires_at, r.timeout_at)
                limit p_limit
                for no key update skip locked) || array(
                select conveyor._expiry(r, p_now)
                from unnest(v_gone) g
                join conveyor.runs r on r.session_pid = g.pid and r.session_started_at = g.started_at
                where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) > p_now
                  and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
                limit p_limit
                for no key update of r skip locked)) e);
    exception when others then
        -- some run makes the batch fail: end them one at a time, setting aside the ones that fail
        v_outcomes := '{}';
        for v_run in
            (select * from conveyor.runs r
             where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) <= p_now
               and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
             order by least(r.lease_expires_at, r.timeout_at)
             limit p_limit)
            union all
            (select r.* from unnest(v_gone) g
             join conveyor.runs r on r.session_pid = g.pid and r.session_started_at = g.started_at
             where r.status = 'running' and least(r.lease_expires_at, r.timeout_at) > p_now
               and r.id not in (select s.run_id from conveyor._set_aside('expire', p_now) s)
             limit p_limit)
        loop
            if v_run.queue = any(v_held) then
                -- this queue's counter row is held by a client (see below): a later tick
                perform conveyor._tick_note('expire', p_skipped => 1);
                continue;
            end if;
            begin
                -- a run a client holds (a worker finishing it right now) is left for a later tick
                perform from conveyor.runs r where r.id = v_run.id for no key update skip locked;
                if not found then
                    perform conveyor._tick_note('expire', p_skipped => 1);
                    continue;
                end if;
                select e.outcome into v_outcome
                from conveyor._end_attempts(array[conveyor._expiry(v_run, p_now)]) e;
                v_outcomes := v_outcomes || v_outcome;
                delete from conveyor.quarantine q where q.step = 'expire' and q.run_id = v_run.id;
            exception
                when lock_not_available then
                    -- a client holds what this run's ending must lock (its bounded queue's or
                    -- capped task's counter row): a later tick, for this queue's other runs too
                    v_held := v_held || v_run.queue;
                    perform conveyor._tick_note('expire', p_skipped => 1);
                when others then
                    perform conveyor._quarantine('expire', v_run.id, sqlstate, sqlerrm, p_now);
            end;
        end loop;
    end;
    -- a gone session's row goes once none of its runs is running; SKIP LOCKED, as a tick by hand
    -- in an open transaction may be deleting it too
    delete from conveyor.sessions s
    where (s.pid, s.started_at) in (
        select d.pid, d.started_at from conveyor.sessions d
        join unnest(v_gone) g on d.pid = g.pid and d.started_at = g.started_at
        where not exists (select from conveyor.runs r
                          where r.session_pid = g.pid and r.session_started_at = g.started_at and r.status = 'running')
        for update of d skip locked);
    return query
    select count(*) filter (where o = 'crashed')::integer,
           count(*) filter (where o = 'timeout')::integer,
           count(*) filter (where o = 'stopped')::integer
    from unnest(v_outcomes) o;
end
$$;
