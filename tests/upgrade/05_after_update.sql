-- Step 7: after ALTER EXTENSION pg_conveyor UPDATE, nothing of step 3 was lost and the
-- work in flight carries on under the new schema: the saved rows and counters are unchanged,
-- the running run completes with its 0.1.0 lease token, the retrying run is claimed again with
-- its attempt number continuing, the cron task fires exactly once per firing (the background
-- worker and two manual ticks racing for it), the service keeps one live run per replica, and
-- the runs and outbox rows waiting for tomorrow come due.
-- Needs lib.sql's variables and new_version.
\ir lib.sql
select pg_temp.load_facts() \g /dev/null
select pg_temp.at('3 minutes') \g /dev/null

select pg_temp.check(format('the schema is %s', :'new_version'),
    (select extversion from pg_extension where extname = 'pg_conveyor') = :'new_version');

-- nothing lost: every saved row and counter
\ir check_snapshot.sql

-- the running run completes with the lease token 0.1.0 gave it
select pg_temp.check('the running run completes with its 0.1.0 lease token',
    conveyor.complete_run(pg_temp.fact('run.running')::conveyor.ulid, pg_temp.fact('run.running.token')::uuid)::text = 'succeeded');
select pg_temp.check('its attempt row: attempt 1, succeeded, claimed at t0 by upgrade-check, with its 0.1.0 log chunk',
    (select a.attempt = 1 and a.outcome::text = 'succeeded' and a.started_at = pg_temp.t('0')
            and a.worker = 'upgrade-check'
            and exists (select from conveyor.attempt_logs l where l.run_id = a.run_id and l.attempt_id = a.id)
     from conveyor.attempts a where a.run_id = pg_temp.fact('run.running')::conveyor.ulid));

-- the bounded queue's and the capped task's counters move on from their 0.1.0 values
select pg_temp.check('the bounded running run completes with its 0.1.0 token',
    conveyor.complete_run(pg_temp.fact('run.bounded.running')::conveyor.ulid,
                          pg_temp.fact('run.bounded.running.token')::uuid)::text = 'succeeded');
select pg_temp.check('bounded queue delivered 2 -> 1, capped task active 2 -> 1',
    (select delivered from conveyor.queues where name = 'bounded') = 1
    and (select active from conveyor.tasks where name = 'upgrade.capped') = 1,
    format('delivered %s, active %s', (select delivered from conveyor.queues where name = 'bounded'),
           (select active from conveyor.tasks where name = 'upgrade.capped')));

-- an idempotency key of a live 0.1.0 run still deduplicates
select pg_temp.check('enqueue with the idempotency key of the queued 0.1.0 run returns that run',
    conveyor.enqueue('upgrade.plain', '{"case": "duplicate"}', idempotency_key => 'upgrade-check-queued')::text
    = pg_temp.fact('run.queued'));

-- cron, exactly once per firing: the first firing (t0+1m, queued since step 3) completes, then
-- the worker's clock moves to t0+3m30s (server configuration, reloaded) and it must fire the
-- t0+3m firing on its own; two manual ticks at the same time then find nothing to fire
do $$
declare
    c conveyor.claimed_run := pg_temp.claim('cron', pg_temp.fact('run.cron.first')::conveyor.ulid);
begin
    perform pg_temp.expect('complete_run', conveyor.complete_run(c.run_id, c.lease_token)::text, 'succeeded');
end
$$;
select pg_temp.t('3 minutes 30 seconds')::text as worker_clock \gset
alter system set conveyor.test_clock = :'worker_clock';
select pg_reload_conf() \g /dev/null
do $$
declare
    v_deadline timestamptz := clock_timestamp() + interval '15 seconds';
begin
    while clock_timestamp() < v_deadline loop
        exit when exists (select from conveyor.runs r where r.task = 'upgrade.cron'
                          and r.fire_at = current_setting('upgrade_check.t0')::timestamptz + interval '3 minutes');
        perform pg_sleep(0.1);
    end loop;
end
$$;
select pg_temp.check('the background worker fires the t0+3m firing by itself',
    exists (select from conveyor.runs r where r.task = 'upgrade.cron' and r.fire_at = pg_temp.t('3 minutes')));
select pg_temp.at('3 minutes 30 seconds') \g /dev/null
select pg_temp.check('a manual tick at the same time fires nothing more', (select fired from conveyor.tick()) = 0);
select pg_temp.check('a second manual tick fires nothing either', (select fired from conveyor.tick()) = 0);
select pg_temp.check('exactly one run for the t0+3m firing, and the cursor moved to t0+4m',
    (select count(*) from conveyor.runs r where r.task = 'upgrade.cron' and r.fire_at = pg_temp.t('3 minutes')) = 1
    and (select next_fire_at from conveyor.tasks where name = 'upgrade.cron') = pg_temp.t('4 minutes'),
    (select format('%s runs, next_fire_at %s', count(*), (select next_fire_at from conveyor.tasks where name = 'upgrade.cron'))
     from conveyor.runs r where r.task = 'upgrade.cron' and r.fire_at = pg_temp.t('3 minutes')));
alter system reset conveyor.test_clock;
select pg_reload_conf() \g /dev/null

-- the retrying run comes due (t0+30m), is delivered and claimed again: attempt 2
select pg_temp.at('31 minutes') \g /dev/null
select pg_temp.check('tick at t0+31m delivers', (select delivered from conveyor.tick()) >= 1);
select pg_temp.check('the retrying run is queued again',
    (select status::text = 'queued' from conveyor.runs where id = pg_temp.fact('run.retrying')::conveyor.ulid));
do $$
declare
    c conveyor.claimed_run := pg_temp.claim('work', pg_temp.fact('run.retrying')::conveyor.ulid, '1h', array['upgrade.retry']);
begin
    perform pg_temp.expect('attempt number of the retried run', c.attempt, 2);
    perform pg_temp.expect('failures so far', c.failures, 1);
    perform pg_temp.expect('complete_run', conveyor.complete_run(c.run_id, c.lease_token)::text, 'succeeded');
end
$$;
select pg_temp.check('the retried run: attempts=2 failures=1 retries=1; attempt 2 retries attempt 1',
    (select r.attempts = 2 and r.failures = 1 and r.retries = 1 and r.status::text = 'succeeded'
     from conveyor.runs r where r.id = pg_temp.fact('run.retrying')::conveyor.ulid)
    and (select a.retry_of::text = pg_temp.fact('run.retrying.attempt1') and a.outcome::text = 'succeeded'
         from conveyor.attempts a where a.run_id = pg_temp.fact('run.retrying')::conveyor.ulid and a.attempt = 2));

-- the service: still one live run per replica; a replica that ends is restarted, not doubled
select pg_temp.check('the service has its 2 replicas live, one run each',
    (select count(distinct replica) = 2 and count(*) = 2 from conveyor.runs
     where task = 'upgrade.service' and status::text not in ('succeeded', 'failed', 'cancelled', 'skipped')));
select pg_temp.check('the running replica completes with its 0.1.0 token',
    conveyor.complete_run(pg_temp.fact('run.service.running')::conveyor.ulid,
                          pg_temp.fact('run.service.running.token')::uuid)::text = 'succeeded');
-- (the worker may restart it first: the restart runs whenever a replica has no live run)
select pg_temp.at('32 minutes') \g /dev/null
select pg_temp.check('tick at t0+32m: ok', (select true from conveyor.tick()));
select pg_temp.check('the replica that ended was restarted once: a new live run, restarts counted from 0',
    (select count(*) = 1 and bool_and(r.id::text <> pg_temp.fact('run.service.running') and r.restarts = 0)
     from conveyor.runs r join conveyor.runs ended on ended.id = pg_temp.fact('run.service.running')::conveyor.ulid
     where r.task = 'upgrade.service' and r.replica = ended.replica
       and r.status::text not in ('succeeded', 'failed', 'cancelled', 'skipped')));
select pg_temp.check('still 2 replicas live, one run each',
    (select count(distinct replica) = 2 and count(*) = 2 from conveyor.runs
     where task = 'upgrade.service' and status::text not in ('succeeded', 'failed', 'cancelled', 'skipped')),
    (select string_agg(format('replica %s: %s', replica, status), ', ' order by replica, id) from conveyor.runs
     where task = 'upgrade.service' and status::text not in ('succeeded', 'failed', 'cancelled', 'skipped')));

-- tomorrow: the scheduled and released runs come due, the pending outbox row is published, and
-- the relay claim that was never acked expires and is claimed again (at least once)
select pg_temp.at('1 day 1 minute') \g /dev/null
select pg_temp.check('tick at t0+1d: ok', (select true from conveyor.tick()));
select pg_temp.check('the scheduled and the released 0.1.0 runs are delivered when due',
    (select count(*) from conveyor.runs where status::text = 'queued'
     and id in (pg_temp.fact('run.scheduled')::conveyor.ulid, pg_temp.fact('run.released')::conveyor.ulid)) = 2);
select pg_temp.check('the pending outbox row is published when due',
    (select published_at = conveyor._now() from conveyor.outbox where id = pg_temp.fact('outbox.pending')::conveyor.ulid));
select pg_temp.check('the relay-claimed, never acked outbox row is claimed again (claims = 2)',
    (select o.claims = 2 from conveyor.outbox_claim('relay-2', array['upgrade.relay'], 10, '1h') o
     where o.id = pg_temp.fact('outbox.claimed')::conveyor.ulid));

select pg_temp.finish(format('step 7 (after ALTER EXTENSION UPDATE to %s)', :'new_version'));
