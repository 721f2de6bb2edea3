-- A bounded queue delivers at most `concurrency` runs (queued + running) at once: enqueue
-- delivers at once only while there is room, tick fills the room as runs finish, retry_run
-- waits for room. A task's `parallelism` caps its own runs the same way.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_queue('narrow', concurrency => 2);
select conveyor.define_task('t', queue => 'narrow', max_attempts => 2, delay => '1s');
create view pg_temp.census as
    select string_agg(status || '=' || n, ' ' order by status) as runs,
           (select delivered from conveyor.queues where name = 'narrow') as delivered_counter
    from (select status, count(*) as n from conveyor.runs where queue = 'narrow' group by status) s;

select count(conveyor.enqueue('t')) from generate_series(1, 5);
select * from pg_temp.census;

-- claimed runs still count: no room, nothing delivered
select count(*) as claimed from conveyor.claim_runs('narrow', 'w', 10);
select delivered from conveyor.tick();
-- one finishes: one slot, which tick fills
select count(conveyor.complete_run(r.id, r.lease_token))
from (select id, lease_token from conveyor.runs where status = 'running' order by id limit 1) r;
select * from pg_temp.census;
select delivered from conveyor.tick();
select * from pg_temp.census;

-- a manual retry waits for room too: scheduled (due now) until tick has room
select count(conveyor.fail_run(r.id, r.lease_token, 'x', retryable => false))
from (select id, lease_token from conveyor.runs where status = 'running') r;
select delivered from conveyor.tick();
select count(*) as claimed from conveyor.claim_runs('narrow', 'w', 10);
select id as failed_run from conveyor.runs where status = 'failed' \gset
select conveyor.retry_run(:'failed_run');
select * from pg_temp.census;

-- the counter always equals the runs delivered
select q.delivered = (select count(*) from conveyor.runs r where r.queue = q.name and r.status in ('queued', 'running'))
       as counter_matches
from conveyor.queues q where q.name = 'narrow';

-- widening the queue takes effect at the next tick
select conveyor.set_queue('narrow', concurrency => 10);
select delivered from conveyor.tick();
select * from pg_temp.census;

-- parallelism caps one task's delivered runs, whatever room its queue has
select conveyor.define_task('p', queue => 'wide', parallelism => 2);
select count(conveyor.enqueue('p')) from generate_series(1, 4);
select status, count(*) from conveyor.runs where task = 'p' group by status order by status;
select count(conveyor.complete_run(c.run_id, c.lease_token)) from conveyor.claim_runs('wide', 'w', 10) c;
select active from conveyor.tasks where name = 'p';
select delivered from conveyor.tick();
select status, count(*) from conveyor.runs where task = 'p' group by status order by status;
select active from conveyor.tasks where name = 'p';
rollback;
