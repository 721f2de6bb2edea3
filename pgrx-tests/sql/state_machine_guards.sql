-- Only the transitions in conveyor.transitions happen, whoever issues the UPDATE; a finishing
-- call with a stale or wrong lease token changes nothing.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t');
select conveyor.enqueue('t') as run_id \gset

-- a direct UPDATE that skips the state machine is refused, and changes nothing
select regress.try(format('update conveyor.runs set status = ''succeeded'', finished_at = now() where id = %L', :'run_id'));
select regress.try(format('update conveyor.runs set status = ''retrying'' where id = %L', :'run_id'));
select status from conveyor.runs where id = :'run_id';
-- inserting a run that is already running is refused
select regress.try($$insert into conveyor.runs (id, task, queue, status, run_at, payload, created_at, task_version,
                     lease_token, lease_expires_at, attempt_id)
                   values (conveyor.ulid_generate(), 't', 'default', 'running', now(), '{}', now(), 1,
                           gen_random_uuid(), now(), conveyor.ulid_generate())$$);

select run_id, lease_token from conveyor.claim_run('default', 'w1') \gset
-- a wrong token: CV001, nothing changes
select regress.try(format('select conveyor.complete_run(%L, %L)', :'run_id', gen_random_uuid()));
select regress.try(format('select conveyor.heartbeat(%L, %L)', :'run_id', gen_random_uuid()));
select status, attempts from conveyor.runs where id = :'run_id';
-- an unknown run: CV002
select regress.try(format('select conveyor.complete_run(%L, %L)', conveyor.ulid_generate(), gen_random_uuid()));

select conveyor.complete_run(:'run_id', :'lease_token');
-- the same token again: the run is finished
select regress.try(format('select conveyor.complete_run(%L, %L)', :'run_id', :'lease_token'));
select regress.try(format('select conveyor.fail_run(%L, %L, ''late'')', :'run_id', :'lease_token'));
select regress.counts(:'run_id');
select count(*) as attempts_written from conveyor.attempts where run_id = :'run_id';

-- the transitions are data
select count(*) as allowed_transitions from conveyor.transitions;
rollback;
