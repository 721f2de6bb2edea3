-- Per-attempt timeouts and leases: tick ends an attempt whose timeout passed (timeout) or whose
-- lease ran out without a heartbeat (crashed); both retry under the budget, a retry gets a fresh
-- timeout window, waiting never counts, and the slow worker's late call is refused.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('crunch', max_attempts => 3, delay => '10s', timeout => '1m');

select conveyor.enqueue('crunch') as r \gset
-- waiting time does not count: claimed 5 minutes after enqueue
select regress.at('2030-01-01 00:05:00+00');
select run_id, lease_token from conveyor.claim_run('default', 'slow-worker', lease => '10m') \gset
select timeout_at - started_at as window from conveyor.runs where id = :'r';
select regress.at('2030-01-01 00:05:59+00');
select crashed, timed_out from conveyor.tick();
select regress.at('2030-01-01 00:06:00+00');
select crashed, timed_out from conveyor.tick();
select regress.counts(:'r'), regress.attempts(:'r');
select error ->> 'message' as message from conveyor.runs where id = :'r';

-- the slow worker finishes late: refused, nothing changes
select regress.try(format('select conveyor.complete_run(%L, %L)', :'run_id', :'lease_token'));
select regress.counts(:'r');

-- the retry gets a fresh one-minute window
select regress.at('2030-01-01 00:06:10+00');
select delivered from conveyor.tick();
select run_id, lease_token from conveyor.claim_run('default', 'w2', lease => '10m') \gset
select timeout_at - conveyor._now() as window from conveyor.runs where id = :'r';

-- a lease that runs out without heartbeat: crashed; heartbeats keep it alive
select regress.at('2030-01-01 00:06:30+00');
select conveyor.heartbeat(:'run_id', :'lease_token', '20s');
select regress.at('2030-01-01 00:06:45+00');
select crashed, timed_out from conveyor.tick();
select regress.at('2030-01-01 00:06:51+00');
select crashed, timed_out from conveyor.tick();
select regress.counts(:'r'), regress.attempts(:'r');
select error ->> 'code' as code, error ->> 'message' as message from conveyor.runs where id = :'r';
select regress.try(format('select conveyor.heartbeat(%L, %L)', :'run_id', :'lease_token'));

-- reclaimed by someone else: the old token stays stale even though the run is running again
select regress.at('2030-01-01 00:07:01+00');
select delivered from conveyor.tick();
select run_id as run_id2, lease_token as lease_token2 from conveyor.claim_run('default', 'w3') \gset
select regress.try(format('select conveyor.complete_run(%L, %L)', :'run_id', :'lease_token'));
select conveyor.complete_run(:'run_id2', :'lease_token2');
select regress.counts(:'r'), regress.attempts(:'r');
select a.attempt, a.worker, a.retry_of is not distinct from lag(a.id) over (order by a.attempt) as chained
from conveyor.attempts a where a.run_id = :'r' order by a.attempt;
rollback;
