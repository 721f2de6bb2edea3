-- Retry delays follow the task's policy: exponential, linear, custom lists, caps and jitter;
-- the delay chosen for each retry is recorded on the run and on the attempt.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_queue('default');

-- fail a run over and over (claiming when due); print each chosen delay
create function pg_temp.fail_until_done(p_task text) returns text language plpgsql as $$
declare
    v_run conveyor.ulid := conveyor.enqueue(p_task);
    v_claim record;
    v_delays text[] := '{}';
    v_status conveyor.run_status;
    v_now timestamptz := '2030-01-01 00:00:00+00';
begin
    loop
        perform set_config('conveyor.test_clock', v_now::text, true);
        perform conveyor.tick();
        select * into v_claim from conveyor.claim_run('default', 'w');
        exit when v_claim.run_id is null;
        v_status := conveyor.fail_run(v_claim.run_id, v_claim.lease_token, 'again');
        exit when v_status = 'failed';
        select r.run_at into v_now from conveyor.runs r where r.id = v_run;
        v_delays := v_delays || (select conveyor._duration_text(r.last_delay) from conveyor.runs r where r.id = v_run);
    end loop;
    return array_to_string(v_delays, ', ') || ' -> ' || regress.counts(v_run);
end $$;

select conveyor.define_task('expo', max_attempts => 8, backoff => 'exponential', delay => '10s');
select pg_temp.fail_until_done('expo');
select conveyor.define_task('lin', max_attempts => 5, backoff => 'linear', delay => '10s');
select pg_temp.fail_until_done('lin');
select conveyor.define_task('const', retry_attempts => 2);
select pg_temp.fail_until_done('const');
select conveyor.define_task('custom', max_attempts => 6, backoff => '30s, 1m16s, 2m32s, 5m8s');
select pg_temp.fail_until_done('custom');
select conveyor.define_task('capped', max_attempts => 4, backoff => 'exponential', delay => '1m', max_delay => '90s');
select pg_temp.fail_until_done('capped');
-- a custom list is capped only by an explicitly given max_delay
select conveyor.define_task('custom_capped', max_attempts => 4, backoff => '30s, 10m', max_delay => '2m');
select pg_temp.fail_until_done('custom_capped');

-- the attempt rows record the same delays
select a.attempt, a.outcome, conveyor._duration_text(a.delay) as delay
from conveyor.attempts a where a.task = 'lin' order by a.attempt;

-- jitter: full draws from [0, d), equal from [d/2, d); recorded as chosen
select conveyor.define_task('jittered', max_attempts => 2, delay => '100s', jitter => 'equal');
select count(conveyor.enqueue('jittered')) from generate_series(1, 40);
select count(conveyor.fail_run(c.run_id, c.lease_token, 'x')) from conveyor.claim_runs('default', 'w', 100) c;
select min(last_delay) >= interval '50s' as at_least_half, max(last_delay) < interval '100s' as below_delay,
       count(distinct last_delay) > 1 as varied,
       bool_and(run_at = conveyor._now() + last_delay) as due_after_the_chosen_delay
from conveyor.runs where task = 'jittered';
select bool_and(a.delay = r.last_delay) as attempt_records_it
from conveyor.attempts a join conveyor.runs r on r.id = a.run_id where r.task = 'jittered';

-- defaults apply to tasks that leave an option off; a retried run uses the latest config
select conveyor.set_defaults('{"max_attempts": 3, "delay": "7s"}');
select conveyor.define_task('plain');
select max_attempts, conveyor._duration_text(delay) as delay, backoff from conveyor.task_config where name = 'plain';
select pg_temp.fail_until_done('plain');

-- a run retried after its task was redefined uses the latest policy (the payload stays)
select regress.at('2030-02-01 00:00:00+00');
select conveyor.define_task('evolving', queue => 'evolving', max_attempts => 3, delay => '7s');
select conveyor.enqueue('evolving', '{"n": 1}') as r \gset
select count(conveyor.fail_run(c.run_id, c.lease_token, 'x')) from conveyor.claim_run('evolving', 'w') c;
select conveyor.define_task('evolving', queue => 'evolving', max_attempts => 5, delay => '1m');
select regress.at('2030-02-01 00:00:07+00');
select conveyor.tick() is not null as ticked;
select count(conveyor.fail_run(c.run_id, c.lease_token, 'x')) from conveyor.claim_run('evolving', 'w') c;
select conveyor._duration_text(last_delay) as second_delay, payload, task_version, regress.counts(id)
from conveyor.runs where id = :'r';
rollback;
