-- Malformed worker input never silently succeeds: it fails the attempt with code
-- configuration_invalid (not retried), and the message says what was wrong.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 5);

create function pg_temp.claim() returns table (run_id conveyor.ulid, lease_token uuid)
language sql as $$ select c.run_id, c.lease_token from conveyor.enqueue('t') e, conveyor.claim_run('default', 'w') c $$;

-- release without a delay, with a delay that is not one, with meta that is not an object
select run_id, lease_token from pg_temp.claim() \gset
select conveyor.release_run(:'run_id', :'lease_token', null);
select regress.attempts(:'run_id'), error ->> 'message' as message from conveyor.runs where id = :'run_id';
select run_id, lease_token from pg_temp.claim() \gset
select conveyor.release_run(:'run_id', :'lease_token', 'later');
select regress.attempts(:'run_id'), error ->> 'message' as message, error -> 'meta' as meta from conveyor.runs where id = :'run_id';
select run_id, lease_token from pg_temp.claim() \gset
select conveyor.release_run(:'run_id', :'lease_token', '30s', 'waiting', '"not an object"');
select regress.attempts(:'run_id'), error ->> 'message' as message from conveyor.runs where id = :'run_id';
-- interval text works as a delay
select run_id, lease_token from pg_temp.claim() \gset
select conveyor.release_run(:'run_id', :'lease_token', (interval '90 seconds')::text);
select conveyor._duration_text(last_delay) from conveyor.runs where id = :'run_id';

-- messages are sanitized (control characters stripped, tab and newline kept) and capped
select run_id, lease_token from pg_temp.claim() \gset
select conveyor.fail_run(:'run_id', :'lease_token', E'bad\x01\x07 thing\n\tat line 3' || repeat('x', 5000));
select left(error ->> 'message', 30) as message, length(error ->> 'message') as length
from conveyor.runs where id = :'run_id';

-- finish_runs: each malformed item fails its own attempt; stale items change nothing
select run_id as a, lease_token as ta from pg_temp.claim() \gset
select run_id as b, lease_token as tb from pg_temp.claim() \gset
select run_id as c, lease_token as tc from pg_temp.claim() \gset
select run_id as d, lease_token as td from pg_temp.claim() \gset
select run_id as e, lease_token as te from pg_temp.claim() \gset
select row_number() over () as item, status from conveyor.finish_runs(jsonb_build_array(
    jsonb_build_object('run_id', :'a', 'lease_token', :'ta', 'outcome', 'succeeded', 'result', '{"ok": 1}'::jsonb),
    jsonb_build_object('run_id', :'b', 'lease_token', :'tb', 'outcome', 'released'),
    jsonb_build_object('run_id', :'c', 'lease_token', :'tc', 'outcome', 'exploded'),
    jsonb_build_object('run_id', :'d', 'lease_token', gen_random_uuid(), 'outcome', 'succeeded'),
    jsonb_build_object('run_id', :'e', 'lease_token', :'te', 'outcome', 'failed', 'message', 'nope', 'retryable', 'yes'),
    jsonb_build_object('run_id', 'not-a-ulid', 'lease_token', :'te', 'outcome', 'succeeded')));
select regress.attempts(x.id) as attempts, r.status, r.error ->> 'message' as message
from unnest(array[:'a', :'b', :'c', :'d', :'e']::conveyor.ulid[]) with ordinality as x(id, n)
join conveyor.runs r on r.id = x.id order by x.n;
select regress.try($$select * from conveyor.finish_runs('{"run_id": 1}')$$);
select regress.try($$select * from conveyor.finish_runs('[1, 2]')$$);
rollback;
