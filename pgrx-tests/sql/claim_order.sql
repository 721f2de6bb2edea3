-- Claims take priority first (0 before 9), then due time, then id; several queues at once;
-- a task filter; nothing from paused or unknown queues; batches never return a run twice.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('a', queue => 'q1');
select conveyor.define_task('b', queue => 'q2');

select count(conveyor.enqueue('a', p, priority => prio)) as enqueued
from (values ('{"n": 1}'::jsonb, 5), ('{"n": 2}', 0)) v(p, prio);
select regress.at('2030-01-01 00:00:01+00');
select count(conveyor.enqueue(t, p, priority => prio)) as enqueued
from (values ('a', '{"n": 3}'::jsonb, 0), ('b', '{"n": 4}', 1), ('b', '{"n": 5}', 9)) v(t, p, prio);

-- one queue, in order
select payload ->> 'n' as n, attempt, priority from conveyor.claim_runs('q1', 'w', 2);
-- two queues: the best of both, in order
select payload ->> 'n' as n, queue from conveyor.claim_runs('q1, q2', 'w', 10);
select count(*) as left_queued from conveyor.runs where status = 'queued';

-- a task filter
select count(conveyor.enqueue(t, p)) as enqueued from (values ('a', '{"n": 6}'::jsonb), ('b', '{"n": 7}')) v(t, p);
select payload ->> 'n' as n from conveyor.claim_runs('q1,q2', 'w', 10, tasks => array['b']);

-- paused and unknown queues give nothing
select conveyor.pause_queue('q1');
select count(*) from conveyor.claim_runs('q1', 'w', 10);
select count(*) from conveyor.claim_runs('nope', 'w', 10);
select conveyor.resume_queue('q1');
select payload ->> 'n' as n from conveyor.claim_runs('q1', 'w', 10);

-- bad claims name the problem
select regress.try($$select * from conveyor.claim_runs('q1', '', 10)$$);
select regress.try($$select * from conveyor.claim_runs('q1', 'w', 0)$$);
select regress.try($$select * from conveyor.claim_runs('q1', 'w', 10, lease => 'forever')$$);
select regress.try($$select conveyor.pause_queue('nope')$$);
rollback;
