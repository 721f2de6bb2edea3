-- A disabled task's outstanding runs fail with code task_disabled when claimed (never retried),
-- whether they were waiting for a first attempt or for a retry; enabling it again lets new
-- runs through and failed ones can be retried.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 5, delay => '1s');
select conveyor.define_task('other');

select conveyor.enqueue('t', '{"n": 2}') as retried \gset
select count(conveyor.fail_run(c.run_id, c.lease_token, 'transient')) from conveyor.claim_run('default', 'w') c;
select regress.counts(:'retried');
select conveyor.enqueue('t', '{"n": 1}') as fresh \gset
select conveyor.enqueue('other') as unaffected \gset

select conveyor.disable_task('t');
select regress.at('2030-01-01 00:00:01+00');
select delivered from conveyor.tick();
-- the claim returns only the run of the enabled task; the others failed on the way
select c.task, conveyor.complete_run(c.run_id, c.lease_token) from conveyor.claim_runs('default', 'w', 10) c;
select regress.counts(:'fresh'), regress.attempts(:'fresh');
select regress.counts(:'retried'), regress.attempts(:'retried');
select error ->> 'message' as message from conveyor.runs where id = :'fresh';

-- enqueue still works while disabled (the producer's transaction does not break)
select conveyor.enqueue('t', '{"n": 3}') as later \gset
select count(*) from conveyor.claim_runs('default', 'w', 10);
select regress.counts(:'later');

-- enabled again: retry the casualties
select conveyor.enable_task('t');
select conveyor.retry_runs(task => 't');
select count(conveyor.complete_run(c.run_id, c.lease_token)) from conveyor.claim_runs('default', 'w', 10) c;
select status, count(*) from conveyor.runs where task = 't' group by status;
select regress.try($$select conveyor.disable_task('nope')$$);
rollback;
