-- retry_run: a failed or cancelled run (or a succeeded one without result and children) is
-- queued again with a fresh retry budget under the task's latest config; counters are kept and
-- old attempts stay in history. Other runs are refused with the reason.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 2, delay => '1s');

create function pg_temp.fail_now(p_run conveyor.ulid) returns conveyor.run_status language sql as $$
    select conveyor.fail_run(c.run_id, c.lease_token, 'boom') from conveyor.claim_run('default', 'w') c where c.run_id = p_run
$$;

-- fail it for good: 2 attempts
select conveyor.enqueue('t', '{"n": 1}') as r \gset
select pg_temp.fail_now(:'r');
select regress.at('2030-01-01 00:00:01+00');
select delivered from conveyor.tick();
select pg_temp.fail_now(:'r');
select regress.counts(:'r'), failure_base from conveyor.runs where id = :'r';

-- retried: queued, fresh budget (2 more failed attempts allowed), counters kept, error cleared
select conveyor.retry_run(:'r');
select regress.counts(:'r'), failure_base, error is null as error_cleared, finished_at is null as unfinished
from conveyor.runs where id = :'r';
select pg_temp.fail_now(:'r');
select regress.at('2030-01-01 00:00:02+00');
select delivered from conveyor.tick();
select pg_temp.fail_now(:'r');
select regress.counts(:'r'), regress.attempts(:'r');
select regress.events(:'r');

-- the latest config applies: max_attempts raised to 3 before the next manual retry
select conveyor.define_task('t', max_attempts => 3, delay => '1s');
select conveyor.retry_run(:'r');
select pg_temp.fail_now(:'r'), pg_temp.fail_now(:'r') is null as not_claimable_before_the_delay;
select regress.counts(:'r');

-- cancelled runs and succeeded runs without a result can be retried
select conveyor.enqueue('t') as c \gset
select conveyor.cancel_run(:'c');
select conveyor.retry_run(:'c');
select count(conveyor.complete_run(x.run_id, x.lease_token)) from conveyor.claim_runs('default', 'w', 10) x where x.run_id = :'c';
select conveyor.retry_run(:'c');

-- refusals, with the reason
select conveyor.enqueue('t') as q \gset
select regress.try(format('select conveyor.retry_run(%L)', :'q'));
select run_id, lease_token from conveyor.claim_runs('default', 'w', 10) where run_id = :'q' \gset
select regress.try(format('select conveyor.retry_run(%L)', :'q'));
select conveyor.complete_run(:'run_id', :'lease_token', '{"answer": 42}');
select regress.try(format('select conveyor.retry_run(%L)', :'q'));
select conveyor.enqueue('t') as parent \gset
select run_id, lease_token from conveyor.claim_runs('default', 'w', 10) where run_id = :'parent' \gset
select conveyor.enqueue('t', parent_run_id => :'parent') is not null as child_enqueued;
select conveyor.complete_run(:'parent', :'lease_token');
select regress.try(format('select conveyor.retry_run(%L)', :'parent'));
select regress.try(format('select conveyor.retry_run(%L)', conveyor.ulid_generate()));

-- bulk: retry_runs after an outage, bounded, skipping runs that cannot be retried
select conveyor.cancel_runs(task => 't');
select count(conveyor.enqueue('t')) from generate_series(1, 4);
select count(conveyor.fail_run(x.run_id, x.lease_token, 'outage', retryable => false))
from conveyor.claim_runs('default', 'w', 10) x;
select conveyor.retry_runs(task => 't', max => 3) as retried;
select conveyor.retry_runs(task => 't') as retried_the_rest;
select regress.try($$select conveyor.retry_runs(status => 'running')$$);
rollback;
