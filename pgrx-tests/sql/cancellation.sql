-- cancel_run: a waiting run is cancelled at once; a running one gets a request that heartbeat
-- reports, and the worker's next call decides (complete still succeeds; anything else ends it
-- cancelled with outcome stopped); tick finalizes a request the worker never answers.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 5);

-- waiting runs: cancelled at once, in any waiting status
select conveyor.enqueue('t') as queued_run \gset
select conveyor.enqueue('t', delay => '1h') as scheduled_run \gset
select conveyor.cancel_run(:'queued_run'), conveyor.cancel_run(:'scheduled_run');
select regress.counts(:'queued_run'), regress.events(:'queued_run'), regress.counts(:'scheduled_run');
select count(*) from conveyor.claim_run('default', 'w');

-- running, then completed: the work was done, so it succeeded
select conveyor.enqueue('t') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.heartbeat(:'run_id', :'lease_token') as cancel_requested;
select conveyor.cancel_run(:'r');
select conveyor.cancel_run(:'r') as asked_twice;
select conveyor.heartbeat(:'run_id', :'lease_token') as cancel_requested;
select conveyor.complete_run(:'run_id', :'lease_token');
select regress.counts(:'r'), regress.events(:'r'), regress.attempts(:'r');

-- running, then failed (or released, or returned): cancelled, outcome stopped, no retry
select conveyor.enqueue('t') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.cancel_run(:'r');
select conveyor.release_run(:'run_id', :'lease_token', '5m');
select regress.counts(:'r'), regress.events(:'r'), regress.attempts(:'r');
select error from conveyor.runs where id = :'r';

-- running, and the worker never calls back: tick finalizes it when the lease runs out
select conveyor.enqueue('t') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.cancel_run(:'r');
select regress.at('2030-01-01 00:00:31+00');
select crashed, stopped from conveyor.tick();
select regress.counts(:'r'), regress.attempts(:'r');

-- a finished run cannot be cancelled; an unknown one is unknown
select regress.try(format('select conveyor.cancel_run(%L)', :'r'));
select regress.try(format('select conveyor.cancel_run(%L)', conveyor.ulid_generate()));

-- bulk: cancel_runs by queue/task/status, bounded; running ones get a request
select count(conveyor.enqueue('t', delay => '1h')) from generate_series(1, 5);
select count(conveyor.enqueue('t')) from generate_series(1, 3);
select count(*) from conveyor.claim_runs('default', 'w', 2);
select conveyor.cancel_runs(task => 't', status => 'scheduled', max => 4) as cancelled_scheduled;
select conveyor.cancel_runs(task => 't') as cancelled_the_rest;
select status, count(*), count(cancel_requested_at) as requested from conveyor.runs group by status order by status;
rollback;
