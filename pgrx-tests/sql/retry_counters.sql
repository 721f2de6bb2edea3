-- Every row of the counters table in docs/counters.md: what each attempt outcome does to a run's
-- status and its attempts, failures, retries and releases counters.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('work', max_attempts => 2, delay => '10s');
select conveyor.set_queue('default');

-- succeeded: attempts+1
select conveyor.enqueue('work', '{"case": "succeeded"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.complete_run(:'run_id', :'lease_token');
select regress.counts(:'r'), regress.attempts(:'r');

-- retryable failure, budget left: retrying, attempts+1 failures+1 retries+1, due after the delay
select conveyor.enqueue('work', '{"case": "retry"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.fail_run(:'run_id', :'lease_token', 'smtp 421', '{"provider": "smtp"}');
select regress.counts(:'r'), regress.attempts(:'r'), run_at - conveyor._now() as due_in, last_delay,
       error ->> 'code' as code, error ->> 'message' as message, error -> 'meta' as meta
from conveyor.runs where id = :'r';
select regress.events(:'r');
-- retryable failure, budget spent (max_attempts 2): failed, attempts+1 failures+1
select regress.at('2030-01-01 00:00:10+00');
select conveyor.tick() is not null as ticked;
select run_id, lease_token, attempt from conveyor.claim_run('default', 'w') \gset
select :attempt as attempt_seen_by_worker;
select conveyor.fail_run(:'run_id', :'lease_token', 'smtp 421 again');
select regress.counts(:'r'), regress.attempts(:'r'), finished_at is not null as finished from conveyor.runs where id = :'r';
select regress.events(:'r');

-- non-retryable failure (fail_run retryable => false): failed at once
select regress.at('2030-01-01 00:01:00+00');
select conveyor.enqueue('work', '{"case": "not retryable"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.fail_run(:'run_id', :'lease_token', 'invalid address', retryable => false);
select regress.counts(:'r'), regress.attempts(:'r');

-- non-retryable: configuration_invalid (meta that is not an object)
select conveyor.enqueue('work', '{"case": "configuration_invalid"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.fail_run(:'run_id', :'lease_token', 'oops', '[1, 2]');
select regress.counts(:'r'), regress.attempts(:'r'), error ->> 'message' as message from conveyor.runs where id = :'r';

-- released: releases+1, attempts+1, no failure
select conveyor.enqueue('work', '{"case": "released"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.release_run(:'run_id', :'lease_token', '2m', 'report not ready');
select regress.counts(:'r'), regress.attempts(:'r'), run_at - conveyor._now() as due_in from conveyor.runs where id = :'r';
select reason, delay from conveyor.attempts where run_id = :'r';

-- interrupted (return_run): queued again at once, attempts+1 only
select conveyor.enqueue('work', '{"case": "interrupted"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.return_run(:'run_id', :'lease_token');
select regress.counts(:'r'), regress.attempts(:'r'), regress.events(:'r');
select run_id = :'r' as claimable_again, attempt, lease_token from conveyor.claim_run('default', 'w') \gset
select :'claimable_again' as claimable_again, :attempt as attempt, conveyor.complete_run(:'r', :'lease_token');

-- stopped (cancelled while running): cancelled, attempts+1, no failure
select conveyor.enqueue('work', '{"case": "stopped"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.cancel_run(:'r');
select conveyor.fail_run(:'run_id', :'lease_token', 'gave up after cancel');
select regress.counts(:'r'), regress.attempts(:'r'), error ->> 'code' as code from conveyor.runs where id = :'r';

-- timeout, crashed and log_overflow are retryable failures like failed
select conveyor.define_task('slow', max_attempts => 3, delay => '1s', timeout => '30s',
                            options => '{"log_max_size": 10, "log_on_full": "kill_task", "lease": "1m"}');
select conveyor.enqueue('slow') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select regress.at('2030-01-01 00:01:31+00');
select crashed, timed_out from conveyor.tick();
select regress.counts(:'r'), regress.attempts(:'r');
select regress.at('2030-01-01 00:01:32+00');
select delivered from conveyor.tick();
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.append_log(:'run_id', :'lease_token', 'this line is longer than ten bytes');
select regress.counts(:'r'), regress.attempts(:'r');

select conveyor.enqueue('work', '{"case": "crashed"}') as r \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select regress.at('2030-01-01 00:02:03+00');
select crashed, timed_out from conveyor.tick();
select regress.counts(:'r'), regress.attempts(:'r');
rollback;
