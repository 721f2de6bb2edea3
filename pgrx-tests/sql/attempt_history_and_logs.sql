-- Attempt history: each attempt a row (its own ULID, number, retry_of, worker, times, outcome,
-- error, delay) and its own log, kept after later attempts; log_max_size with truncate.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 3, delay => '5s', options => '{"log_max_size": "20B"}');
select conveyor.enqueue('t') as r \gset

select run_id, lease_token, attempt_id as a1 from conveyor.claim_run('default', 'worker-a') \gset
select conveyor.append_log(:'run_id', :'lease_token', 'connecting...');
select conveyor.append_log(:'run_id', :'lease_token', E'\nfailed: ECONNREFUSED');
select conveyor.append_log(:'run_id', :'lease_token', 'dropped');
select regress.at('2030-01-01 00:00:03+00');
select conveyor.fail_run(:'run_id', :'lease_token', 'ECONNREFUSED', '{"host": "smtp.example.com"}');

select regress.at('2030-01-01 00:00:08+00');
select delivered from conveyor.tick();
select run_id, lease_token, attempt_id as a2 from conveyor.claim_run('default', 'worker-b') \gset
select conveyor.append_log(:'run_id', :'lease_token', 'sent ✓');
select regress.at('2030-01-01 00:00:09+00');
select conveyor.complete_run(:'run_id', :'lease_token');

select a.attempt, a.id = :'a1' as first_id, a.id = :'a2' as second_id, a.retry_of = :'a1' as retries_first,
       a.worker, a.finished_at - a.started_at as took, a.outcome, a.error ->> 'code' as code,
       a.error -> 'meta' as meta, a.delay
from conveyor.attempts a where a.run_id = :'r' order by a.attempt;

-- each attempt's log, kept after the run succeeded; the first was cut at 20 bytes
select a.attempt, string_agg(l.chunk, '' order by l.id) as log, sum(octet_length(l.chunk)) as bytes
from conveyor.attempts a join conveyor.attempt_logs l on l.attempt_id = a.id
where a.run_id = :'r' group by a.attempt order by a.attempt;

-- the run's timeline: events and attempts in order
select kind, what, attempt from conveyor.run_history where run_id = :'r' order by at, kind desc, what;

-- appending to a finished attempt is refused
select regress.try(format('select conveyor.append_log(%L, %L, ''late'')', :'run_id', :'lease_token'));
rollback;
