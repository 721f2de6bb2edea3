-- Tick keeps working whatever one row or one queue does (issue 13, findings 2 and 4):
-- a run whose ending fails is set aside and the others are recovered; delivery shares a
-- tick's batch among queues instead of walking them in name order.
begin;
select regress.at('2029-12-31 22:00:00+00');
set local conveyor.tick_batch = 1000;

-- a flood in queue 0first is due earlier than one run in zlast
select conveyor.define_task('flood', queue => '0first');
select conveyor.define_task('late', queue => 'zlast');
select count(conveyor.enqueue('flood', run_at => '2029-12-31 23:00:00+00')) from generate_series(1, 1500);
select conveyor.enqueue('late', run_at => '2029-12-31 23:30:00+00') as late \gset
select regress.at('2030-01-01 00:00:00+00');
select delivered from conveyor.tick();
select status as zlast_run from conveyor.runs where id = :'late';
select queue, count(*) as queued from conveyor.runs where status = 'queued' group by queue order by queue;
select conveyor.cancel_runs(queue => '0first', max => 5000) >= 0 as flood_cancelled;

-- one run whose ending fails (here: an attempt row for its attempt already exists, written
-- behind the functions' back, so recording the attempt fails), beside one that is fine
select conveyor.define_task('bad', queue => 'bounded', max_attempts => 3);
select conveyor.define_task('good', queue => 'plain');
select conveyor.enqueue('bad') as bad \gset
select conveyor.enqueue('good') as good \gset
select count(*) from conveyor.claim_runs('bounded', 'w', 1, lease => '10s');
select count(*) from conveyor.claim_runs('plain', 'w', 1, lease => '10s');
insert into conveyor.attempts (id, run_id, attempt, task, queue, started_at, finished_at, outcome)
select conveyor.ulid_generate(), r.id, 1, r.task, r.queue, r.started_at, r.started_at, 'failed'
from conveyor.runs r where r.id = :'bad';
select regress.at('2030-01-01 00:01:00+00');
-- (the WARNING each setting-aside logs names the run: kept out of this output)
set local client_min_messages = error;
select conveyor.tick_step('expire') as expired;
select regress.counts(:'good') as good_run, regress.counts(:'bad') as bad_run;
select step, sqlstate, failures, retry_at - first_at as retry_in from conveyor.quarantine where run_id = :'bad';
select regress.events(:'bad') as bad_events;
select step, runs, failures, quarantined from conveyor._tick_stats where step = 'expire' and source = 'manual';
-- while set aside it costs the step nothing; once repaired and due again it is recovered
select conveyor.tick_step('expire') as expired_again;
delete from conveyor.attempts where run_id = :'bad';
select regress.at('2030-01-01 00:02:01+00');
select conveyor.tick_step('expire') as expired_after_retry_at;
select regress.counts(:'bad') as bad_run;
rollback;

-- queues can be removed, once nothing uses them (issue 13, finding 5)
begin;
select conveyor.define_task('t', queue => 'old');
select conveyor.enqueue('t') as run_id \gset
select regress.try($$select conveyor.drop_queue('old')$$);
select conveyor.define_task('t', queue => 'new');
select regress.try($$select conveyor.drop_queue('old')$$);
select conveyor.cancel_run(:'run_id');
select regress.try($$select conveyor.drop_queue('old')$$);
select count(*) as old_queue_rows from conveyor.queues where name = 'old';
select regress.try($$select conveyor.drop_queue('old')$$);
select conveyor.set_queue('default');
select regress.try($$select conveyor.drop_queue('default')$$);
-- tick's counters, as metrics() shows them
select conveyor.tick_step('deliver') >= 0 as delivered;
select line from regexp_split_to_table(conveyor.metrics(), E'\n') line
where line like 'conveyor_tick_step_runs_total%' or line like '# TYPE conveyor_tick%' order by line;
rollback;

-- a capacity counter that drifted is repaired from the runs, one bounded queue and one capped
-- task per tick, visibly; meanwhile it never goes below 0 (issue 13, finding 1)
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_queue('b', concurrency => 5);
select conveyor.define_task('bt', queue => 'b', parallelism => 5);
select count(conveyor.enqueue('bt')) from generate_series(1, 3);
select delivered from conveyor.queues where name = 'b';
update conveyor.queues set delivered = 0 where name = 'b';
update conveyor.tasks set active = 7 where name = 'bt';
-- ending a run while the counter says 0 does not fail the worker
select count(conveyor.complete_run(c.run_id, c.lease_token)) as completed from conveyor.claim_runs('b', 'w', 1) c;
select delivered from conveyor.queues where name = 'b';
set local client_min_messages = error;
select repaired from conveyor.tick();
select q.delivered, t.active from conveyor.queues q, conveyor.tasks t where q.name = 'b' and t.name = 'bt';
select repaired from conveyor.tick();
select step, changed from conveyor._tick_stats where step = 'repair' and source = 'manual';
rollback;

-- delivery too: a run whose delivery fails on its own is set aside, the others are delivered
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('d', queue => 'dq');
select conveyor.enqueue('d', delay => '1m') as bad \gset
select conveyor.enqueue('d', delay => '1m') as good \gset
-- (a trigger written behind the functions' back refuses the bad run's delivery-outbox row)
select conveyor.set_queue('dq', delivery_outbox => true);
create function pg_temp.refuse_bad() returns trigger language plpgsql as $$
begin
    if new.payload ->> 'run_id' = current_setting('regress.bad') then
        raise exception 'refused for the test';
    end if;
    return new;
end $$;
select set_config('regress.bad', :'bad', true) is not null as noted;
create trigger refuse_bad before insert on conveyor.outbox for each row execute function pg_temp.refuse_bad();
select regress.at('2030-01-01 00:02:00+00');
set local client_min_messages = error;
select conveyor.tick_step('deliver') as delivered;
select regress.counts(:'good') as good_run, regress.counts(:'bad') as bad_run;
select step, sqlstate from conveyor.quarantine where run_id = :'bad';
rollback;

-- schedules and services too: one task that fails on its own does not stop the others
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('cron_bad', schedule => '* * * * *');
select conveyor.define_task('cron_good', schedule => '* * * * *');
select conveyor.define_service('svc_bad');
select conveyor.define_service('svc_good');
select fired, restarted from conveyor.tick();
-- corrupted behind the functions' back
update conveyor.tasks set schedule = 'not a schedule' where name = 'cron_bad';
update conveyor.tasks set restart_backoff = 'bogus' where name = 'svc_bad';
select count(conveyor.complete_run(c.run_id, c.lease_token)) as replicas_ended
from conveyor.claim_runs('default', 'w', 10) c where c.task like 'svc_%';
select regress.at('2030-01-01 00:01:30+00');
set local client_min_messages = error;
select conveyor.tick_step('schedule') as fired, conveyor.tick_step('restart') as restarted;
select task, count(*) from conveyor.runs where fire_at is not null group by task order by task;
select step, quarantined from conveyor._tick_stats where step in ('schedule', 'restart') and source = 'manual' order by step;
rollback;

-- a full bounded queue's backlog does not crowd the others out of a tick's candidates
begin;
select regress.at('2029-12-31 22:00:00+00');
set local conveyor.tick_batch = 1000;
select conveyor.set_queue('full', concurrency => 1);
select conveyor.define_task('backlog', queue => 'full');
select conveyor.define_task('other', queue => 'elsewhere');
select count(conveyor.enqueue('backlog', run_at => '2029-12-31 23:00:00+00')) from generate_series(1, 2500);
select count(conveyor.enqueue('other', run_at => '2029-12-31 23:30:00+00')) from generate_series(1, 50);
select regress.at('2030-01-01 00:00:00+00');
-- the first tick fills the bounded queue (and gives the others their turn); from then on the
-- full queue's backlog is not a candidate at all
select delivered from conveyor.tick();
select delivered from conveyor.tick();
select queue, count(*) from conveyor.runs where status = 'queued' group by queue order by queue;
rollback;
