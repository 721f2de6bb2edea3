-- enqueue: delay and run_at, priority, queue override, idempotency keys, parent runs, the batch
-- form, and refusals that name the problem and write nothing.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('reports.build', queue => 'reports');

-- due now: queued at once; later: scheduled until tick delivers it
select conveyor.enqueue('reports.build') as now_id \gset
select conveyor.enqueue('reports.build', delay => '90s') as later_id \gset
select conveyor.enqueue('reports.build', run_at => '2030-01-02 00:00:00+00') as tomorrow_id \gset
select conveyor.enqueue('reports.build', delay => interval '2 minutes') as interval_id \gset
select id = :'now_id' as now, id = :'later_id' as later, status, run_at - conveyor._now() as due_in
from conveyor.runs where task = 'reports.build' order by run_at;

-- queue override (created on first use) and priority
-- a queue override names a queue an operator created; producers do not create queues (issue 13, finding 5)
select regress.try($$select conveyor.enqueue('reports.build', queue => 'urgent')$$);
select conveyor.set_queue('urgent');
select conveyor.enqueue('reports.build', queue => 'urgent', priority => 2) as urgent_id \gset
select queue, priority from conveyor.runs where id = :'urgent_id';
select name, concurrency, paused from conveyor.queues order by name;

-- an idempotency key returns the live run's id and writes nothing
select conveyor.enqueue('reports.build', '{"day": 1}', idempotency_key => 'day-1') as k1 \gset
select conveyor.enqueue('reports.build', '{"day": 1, "again": true}', idempotency_key => 'day-1') = :'k1' as same_run;
select count(*) from conveyor.runs where idempotency_key = 'day-1';
-- once that run is finished, the key is free again
select run_id, lease_token from conveyor.claim_runs('reports', 'w', 10) where run_id = :'k1' \gset
select conveyor.complete_run(:'run_id', :'lease_token');
select conveyor.enqueue('reports.build', idempotency_key => 'day-1') <> :'k1' as new_run;

-- a parent is a running run (its handler spawns the child); a finished or unknown one is
-- refused with the same answer (issue 13, finding 12)
select regress.try(format('select conveyor.enqueue(''reports.build'', parent_run_id => %L)', :'k1'));
select regress.try(format('select conveyor.enqueue(''reports.build'', parent_run_id => %L)', conveyor.ulid_generate()));
select conveyor.enqueue('reports.build') as p \gset
select run_id as p from conveyor.claim_runs('reports', 'w', 10) where run_id = :'p' \gset
select conveyor.enqueue('reports.build', parent_run_id => :'p') is not null as child_enqueued;

-- batch: one statement, ids in input order, keys honoured
select array_agg(id) as batch from conveyor.enqueue_many('reports.build',
    array['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[], idempotency_keys => array['b1', 'b2', 'b1']) id \gset
select (:'batch'::conveyor.ulid[])[1] = (:'batch'::conveyor.ulid[])[3] as duplicate_key_same_run,
       cardinality(:'batch'::conveyor.ulid[]) as ids;
select r.payload from unnest(:'batch'::conveyor.ulid[]) with ordinality as b(id, n)
join conveyor.runs r on r.id = b.id order by b.n;

-- refusals: each names the problem; nothing is written
select count(*) as runs_before from conveyor.runs \gset
select regress.try($$select conveyor.enqueue('no.such.task')$$);
select regress.try($$select conveyor.enqueue('reports.build', '[1, 2]')$$);
select regress.try($$select conveyor.enqueue('reports.build', '"text"')$$);
select regress.try($$select conveyor.enqueue('reports.build', null)$$);
select regress.try($$select conveyor.enqueue('reports.build', delay => '5 minits')$$);
select regress.try($$select conveyor.enqueue('reports.build', delay => '-5s')$$);
select regress.try($$select conveyor.enqueue('reports.build', delay => '1000 years')$$);
select regress.try($$select conveyor.enqueue('reports.build', delay => '5s', run_at => now())$$);
select regress.try($$select conveyor.enqueue('reports.build', priority => 10)$$);
select regress.try($$select conveyor.enqueue('reports.build', priority => -1)$$);
select regress.try($$select conveyor.enqueue('reports.build', queue => 'bad queue; drop table x')$$);
select regress.try($$select conveyor.enqueue_many('reports.build', array['{}', '3']::jsonb[])$$);
select regress.try($$select conveyor.enqueue_many('reports.build', array['{}']::jsonb[], idempotency_keys => array['a', 'b'])$$);
select count(*) = :runs_before as nothing_written from conveyor.runs;
rollback;
