-- A finish_runs batch that names one run twice ends it once, with the item that holds the
-- lease: a forged item beside the real one neither drops the real completion nor is reported
-- with its status (issue 13, finding 9).
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 3);
select conveyor.enqueue('t') as run_id \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset

-- the forged item comes first
select row_number() over () as item, f.status
from conveyor.finish_runs(jsonb_build_array(
    jsonb_build_object('run_id', :'run_id', 'lease_token', gen_random_uuid(), 'outcome', 'failed', 'message', 'forged'),
    jsonb_build_object('run_id', :'run_id', 'lease_token', :'lease_token', 'outcome', 'succeeded'))) f;
select regress.counts(:'run_id'), regress.attempts(:'run_id');

-- two real items for one run: ended once, one attempt row, one item reported
select conveyor.enqueue('t') as run_id \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select count(*) as items, count(f.status) as reported, min(f.status::text) as status
from conveyor.finish_runs(jsonb_build_array(
    jsonb_build_object('run_id', :'run_id', 'lease_token', :'lease_token', 'outcome', 'failed', 'message', 'first'),
    jsonb_build_object('run_id', :'run_id', 'lease_token', :'lease_token', 'outcome', 'failed', 'message', 'again'))) f;
select regress.counts(:'run_id'), regress.attempts(:'run_id');
rollback;
