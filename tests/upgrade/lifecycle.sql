-- lifecycle.sql: a small lifecycle, run twice on the 0.1.0 schema: by step 3 with the 0.1.0
-- library (suffix "ref", the reference) and by step 4 with the new library (suffix "new").
-- Both runs use the same clock readings, so step 4 can demand that the new library writes
-- exactly the rows 0.1.0 wrote, ids aside. It covers define_task with options (the Rust
-- validator, and a refusal), enqueue with a delay, tick delivery, claim, complete, and a
-- retryable failure (exponential backoff).
-- Needs lib.sql and the psql variable suffix.
select set_config('upgrade_check.suffix', :'suffix', false) \g /dev/null
select pg_temp.at('2 minutes 30 seconds') \g /dev/null

do $$
declare
    v_suffix text := current_setting('upgrade_check.suffix');
    v_task text := 'upgrade.after.' || v_suffix;
    v_queue text := 'lifecycle_' || v_suffix;
begin
    perform pg_temp.expect('define_task with options',
        conveyor.define_task(v_task, queue => v_queue, max_attempts => 2, backoff => 'exponential',
                             delay => '10s', max_delay => '1m', jitter => 'none', timeout => '5m',
                             options => '{"lease": "5m", "log_on_full": "truncate", "payload": {"from": "task"}}'), 1);
    -- the validator refuses a bad option with CV010 and stores nothing
    begin
        perform conveyor.define_task('upgrade.refused', options => '{"backoff": "sometimes"}');
        raise exception 'upgrade check: define_task accepted backoff "sometimes"';
    exception when sqlstate 'CV010' then
        null;
    end;
    perform pg_temp.remember('lifecycle.' || v_suffix || '.ok',
        conveyor.enqueue(v_task, '{"case": "ok"}', delay => '10s')::text);
end
$$;

select pg_temp.at('2 minutes 45 seconds') \g /dev/null
select pg_temp.check(format('lifecycle (%s): tick delivers the run enqueued with a 10s delay', :'suffix'),
    (select delivered from conveyor.tick()) = 1);

do $$
declare
    v_suffix text := current_setting('upgrade_check.suffix');
    v_queue text := 'lifecycle_' || v_suffix;
    c conveyor.claimed_run := pg_temp.claim(v_queue, pg_temp.fact('lifecycle.' || v_suffix || '.ok')::conveyor.ulid, null);
    v_retry conveyor.ulid;
begin
    perform pg_temp.expect('attempt number at claim', c.attempt, 1);
    perform pg_temp.expect('lease_expires_at (task lease 5m)', c.lease_expires_at, conveyor._now() + interval '5 minutes');
    perform pg_temp.expect('timeout_at (task timeout 5m)', c.timeout_at, conveyor._now() + interval '5 minutes');
    perform conveyor.append_log(c.run_id, c.lease_token, 'lifecycle log line' || chr(10));
    perform pg_temp.expect('complete_run', conveyor.complete_run(c.run_id, c.lease_token, '{"done": 1}')::text, 'succeeded');

    v_retry := conveyor.enqueue('upgrade.after.' || v_suffix, '{"case": "retry"}');
    perform pg_temp.remember('lifecycle.' || v_suffix || '.retry', v_retry::text);
    c := pg_temp.claim(v_queue, v_retry, null);
    perform pg_temp.expect('fail_run', conveyor.fail_run(c.run_id, c.lease_token, 'flaky', '{"try": 1}')::text, 'retrying');
end
$$;

select pg_temp.check(format('lifecycle (%s): completed run succeeded with attempts=1, its result and log', :'suffix'),
    (select status = 'succeeded' and attempts = 1 and failures = 0 and result = '{"done": 1}' and log_size > 0
     from conveyor.runs where id = pg_temp.fact('lifecycle.' || :'suffix' || '.ok')::conveyor.ulid));
select pg_temp.check(format('lifecycle (%s): failed run retrying after 10s (exponential, retry 1), attempts=1 failures=1 retries=1', :'suffix'),
    (select status = 'retrying' and attempts = 1 and failures = 1 and retries = 1
            and run_at = conveyor._now() + interval '10 seconds' and error ->> 'code' = 'task_failed'
     from conveyor.runs where id = pg_temp.fact('lifecycle.' || :'suffix' || '.retry')::conveyor.ulid));
