-- Runs of a disabled task at a queue's head fail as they are claimed, and the claim goes on to
-- the enabled runs behind them instead of returning nothing (issue 13, finding 13).
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('off');
select conveyor.define_task('on');
select count(conveyor.enqueue('off', priority => 0)) from generate_series(1, 25);
select count(conveyor.enqueue('on', priority => 5)) from generate_series(1, 11);
select conveyor.disable_task('off');
select conveyor.pending('default') as pending;
select count(*) as claimed, count(*) filter (where task = 'on') as enabled
from conveyor.claim_runs('default', 'w', 10);
select status, count(*) from conveyor.runs where task = 'off' group by status order by status;
select count(*) as claimed from conveyor.claim_runs('default', 'w', 10);
select conveyor.pending('default') as pending;
rollback;
