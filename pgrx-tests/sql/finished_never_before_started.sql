-- finished_at is never earlier than started_at, even when the finishing transaction began
-- before the claim committed (both would be transaction time) (issue 13, finding 14).
begin;
select conveyor.define_task('t');
select conveyor.enqueue('t') as run_id \gset
-- the claim happens "later" than the completion's transaction time
select regress.at('2030-01-01 00:00:10+00');
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select regress.at('2030-01-01 00:00:05+00');
select conveyor.complete_run(:'run_id', :'lease_token');
select r.finished_at >= r.started_at as run_ok, a.finished_at >= a.started_at as attempt_ok
from conveyor.runs r join conveyor.attempts a on a.run_id = r.id where r.id = :'run_id';
-- and for a failure, and for cancelling a waiting run
select conveyor.define_task('r', max_attempts => 5, delay => '1m');
select conveyor.enqueue('r') as run_id \gset
select regress.at('2030-01-01 00:00:10+00');
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select regress.at('2030-01-01 00:00:05+00');
select conveyor.fail_run(:'run_id', :'lease_token', 'x');
select conveyor.cancel_run(:'run_id');
select r.finished_at >= r.started_at as run_ok, bool_and(a.finished_at >= a.started_at) as attempts_ok
from conveyor.runs r join conveyor.attempts a on a.run_id = r.id where r.id = :'run_id' group by r.id;
rollback;
