-- Retention: tick deletes finished runs older than the retention (defaults, 7 days unless
-- set) with their attempts, logs and events, oldest first, a bounded batch per tick; live runs
-- and recent ones stay. Published outbox messages go the same way.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_defaults('{"retention": "1d"}');
select conveyor.define_task('t');
select count(conveyor.enqueue('t')) from generate_series(1, 30);
select count(conveyor.append_log(c.run_id, c.lease_token, 'hello') || conveyor.complete_run(c.run_id, c.lease_token))
from conveyor.claim_runs('default', 'w', 25) c;
select conveyor.publish('topic', '{}') is not null;
select flushed from conveyor.tick();

create view pg_temp.census as
    select (select count(*) from conveyor.runs) as runs, (select count(*) from conveyor.attempts) as attempts,
           (select count(*) from conveyor.events) as events, (select count(*) from conveyor.attempt_logs) as logs,
           (select count(*) from conveyor.outbox) as outbox;
select * from pg_temp.census;

select regress.at('2030-01-01 23:59:59+00');
select pruned from conveyor.tick();
select regress.at('2030-01-02 00:00:01+00');
set local conveyor.tick_batch = 10;
select pruned from conveyor.tick();
select * from pg_temp.census;
select pruned from conveyor.tick();
select pruned from conveyor.tick();
select pruned from conveyor.tick();
select * from pg_temp.census;
select status, count(*) from conveyor.runs group by status;
rollback;
