-- Cron schedules: tick materializes each due firing exactly once (unique per task and firing),
-- only the latest missed firing after downtime unless catch_up, and on_overlap decides what
-- happens while an earlier firing is still in flight.
begin;
select regress.at('2030-01-01 00:00:30+00');
select conveyor.define_task('every_minute', queue => 'cron', schedule => '* * * * *', options => '{"payload": {"kind": "cron"}}');
select next_fire_at - conveyor._now() as first_in from conveyor.tasks where name = 'every_minute';
select fired from conveyor.tick();
select regress.at('2030-01-01 00:01:00+00');
select fired, delivered from conveyor.tick();
select fired from conveyor.tick();
select fire_at - '2030-01-01 00:00:00+00' as firing, status, payload from conveyor.runs where task = 'every_minute';
-- re-applying the same schedule keeps the cursor (no refire)
select conveyor.define_task('every_minute', queue => 'cron', schedule => '* * * * *', options => '{"payload": {"kind": "cron"}}');
select fired from conveyor.tick();

-- downtime of 10 minutes: only the latest missed firing runs
select regress.at('2030-01-01 00:11:30+00');
select fired from conveyor.tick();
select fire_at - '2030-01-01 00:00:00+00' as firing from conveyor.runs where task = 'every_minute' order by fire_at;
select next_fire_at - '2030-01-01 00:00:00+00' as next from conveyor.tasks where name = 'every_minute';

-- catch_up: every missed firing runs
select conveyor.define_task('catching_up', queue => 'cron2', schedule => '*/5 * * * *', options => '{"catch_up": true}');
select regress.at('2030-01-01 00:31:00+00');
select fired from conveyor.tick();
select string_agg(to_char(fire_at at time zone 'UTC', 'HH24:MI'), ' ' order by fire_at) from conveyor.runs where task = 'catching_up';

select conveyor.disable_task('every_minute'), conveyor.disable_task('catching_up');

-- the unique firing key: inserting a firing twice is impossible
select regress.try($$insert into conveyor.runs (id, task, queue, status, run_at, payload, created_at, task_version, fire_at)
                     select conveyor.ulid_generate(), task, queue, 'scheduled', run_at, payload, created_at, task_version, fire_at
                     from conveyor.runs where task = 'catching_up' limit 1$$);

-- on_overlap = skip: a firing while the previous one is in flight is recorded as skipped
select conveyor.define_task('skipper', queue => 'cron3', schedule => '*/10 * * * *', on_overlap => 'skip');
select regress.at('2030-01-01 01:00:00+00');
select fired from conveyor.tick();
select count(*) from conveyor.claim_runs('cron3', 'w', 10, lease => '30m');
select regress.at('2030-01-01 01:10:00+00');
select fired from conveyor.tick();
select to_char(fire_at at time zone 'UTC', 'HH24:MI') as firing, status, regress.events(id)
from conveyor.runs where task = 'skipper' order by fire_at;

-- on_overlap = terminate: the one in flight is cancelled (outcome stopped), the new one runs
select conveyor.define_task('terminator', queue => 'cron4', schedule => '*/10 * * * *', on_overlap => 'terminate');
select regress.at('2030-01-01 03:00:00+00');
select fired from conveyor.tick();
select run_id, lease_token from conveyor.claim_run('cron4', 'w', lease => '30m') \gset
select regress.at('2030-01-01 03:10:00+00');
select fired from conveyor.tick();
select to_char(fire_at at time zone 'UTC', 'HH24:MI') as firing, status, regress.attempts(id)
from conveyor.runs where task = 'terminator' order by fire_at;
select regress.try(format('select conveyor.complete_run(%L, %L)', :'run_id', :'lease_token'));
select conveyor.disable_task('skipper'), conveyor.disable_task('terminator');

-- time zones: 09:00 in New York
select conveyor.define_task('ny', queue => 'cron5', schedule => '0 9 * * *', timezone => 'America/New_York');
select next_fire_at at time zone 'UTC' as next_utc from conveyor.tasks where name = 'ny';
-- a disabled task does not fire
select regress.at('2030-01-01 05:00:00+00');
select count(*) from conveyor.runs where task = 'every_minute';
select fired from conveyor.tick();
select count(*) from conveyor.runs where task = 'every_minute';
select regress.try($$select conveyor.define_task('bad', schedule => '* * *')$$);
select regress.try($$select conveyor.define_task('bad', schedule => '* * * * *', timezone => 'Mars/Olympus')$$);
rollback;
