-- The core lifecycle: define, enqueue, claim, heartbeat, complete; one event per transition.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('emails.send', queue => 'emails');

select conveyor.enqueue('emails.send', '{"to": "a@example.com"}') as run_id \gset
select status, queue, priority, payload, attempts from conveyor.runs where id = :'run_id';

-- claimed: running, under a lease of the default 30s; the worker sees attempt 1
select run_id = :'run_id' as same_run, task, payload, attempt, lease_expires_at - conveyor._now() as lease
from conveyor.claim_run('emails', 'worker-1') \gset c_
select :'c_same_run', :'c_attempt', :'c_lease';
select lease_token from conveyor.runs where id = :'run_id' \gset
select status, worker from conveyor.runs where id = :'run_id';

-- nothing else to claim
select count(*) from conveyor.claim_run('emails', 'worker-2');

-- heartbeat extends the lease; no cancel requested
select regress.at('2030-01-01 00:00:20+00');
select conveyor.heartbeat(:'run_id', :'lease_token', '1m');
select lease_expires_at - conveyor._now() as lease from conveyor.runs where id = :'run_id';
-- a heartbeat never extends beyond max_lease (1h by default)
select conveyor.heartbeat(:'run_id', :'lease_token', '5h');
select lease_expires_at - conveyor._now() as lease from conveyor.runs where id = :'run_id';

select conveyor.complete_run(:'run_id', :'lease_token', '{"sent": true}');
select regress.counts(:'run_id');
select result, finished_at = conveyor._now() as finished_now, lease_token is null as lease_cleared
from conveyor.runs where id = :'run_id';
select regress.events(:'run_id');
select regress.attempts(:'run_id');
select a.id = r.attempt_id as attempt_id_kept, a.retry_of is null as first, a.worker
from conveyor.attempts a join conveyor.runs r on r.id = a.run_id where a.run_id = :'run_id';
rollback;
