-- tick delivers due scheduled, retrying and released runs (-> queued, run.delivery_requested),
-- never early, never into a paused queue, at most conveyor.tick_batch runs per step, and
-- returns what it did as counts.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', queue => 'q', max_attempts => 3, delay => '30s');
select conveyor.enqueue('t', delay => '1m') as scheduled \gset
select conveyor.enqueue('t') as retrying \gset
select conveyor.enqueue('t') as released \gset
select count(conveyor.fail_run(c.run_id, c.lease_token, 'x')) from conveyor.claim_run('q', 'w') c;
select count(conveyor.release_run(c.run_id, c.lease_token, '2m')) from conveyor.claim_run('q', 'w') c;
select status, run_at - conveyor._now() as due_in from conveyor.runs order by run_at;

select * from conveyor.tick();
select regress.at('2030-01-01 00:00:30+00');
select delivered from conveyor.tick();
select regress.at('2030-01-01 00:01:00+00');
select delivered from conveyor.tick();
-- paused: nothing delivered into it; resumed: delivered
select conveyor.pause_queue('q');
select regress.at('2030-01-01 00:02:00+00');
select delivered from conveyor.tick();
select conveyor.resume_queue('q');
select delivered from conveyor.tick();
select regress.events(:'released');
select count(*) as claimable from conveyor.runs where status = 'queued';

-- bounded per call: the rest is left for the next tick
select count(conveyor.enqueue('t', delay => '1s')) from generate_series(1, 25);
select regress.at('2030-01-01 00:03:00+00');
set local conveyor.tick_batch = 10;
select delivered from conveyor.tick();
select delivered from conveyor.tick();
select delivered from conveyor.tick();
select delivered from conveyor.tick();

-- the steps, and one step by name (as the background worker runs them)
select conveyor.tick_steps();
select conveyor.tick_step('deliver');
select regress.try($$select conveyor.tick_step('nap')$$);
rollback;
