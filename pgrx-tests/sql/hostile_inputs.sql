-- Durations, timestamps and worker text, however a hostile or careless client sends them
-- (issue 13, findings 6, 10 and 11): one rule for every duration (0 to 100 years) and every
-- timestamp (finite, within 100 years of now), a documented SQLSTATE for each refusal, and
-- worker text stored without control or bidi characters.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 3);

-- negative durations, in every spelling and every way in
select regress.try($$select conveyor.enqueue('t', delay => '@ -1 hour')$$);
select regress.try($$select conveyor.enqueue('t', delay => '1 sec -2 sec')$$);
select regress.try($$select conveyor.enqueue('t', delay => '0 days -2000000000:00:00')$$);
select regress.try($$select conveyor.enqueue('t', delay => interval '-5 minutes')$$);
select regress.try($$select conveyor.enqueue('t', delay => interval '200 years')$$);
select regress.try($$select conveyor.enqueue('t', delay => interval '1 month -30 days')$$);
select regress.try($$select conveyor.define_task('t2', delay => '@ -1 hour')$$);
select regress.try($$select conveyor.set_defaults('{"lease": "1 sec -2 sec"}')$$);
select regress.try($$select conveyor.apply_config('{"tasks": {"t3": {"timeout": "-00:00:05"}}}')$$);
-- PostgreSQL's own output for 23:30:00 is read as 23:30:00
select conveyor.define_task('t4', delay => '1 day -00:30:00', max_delay => '2 days') as version;
select delay from conveyor.task_config where name = 't4';

-- timestamps
select regress.try($$select conveyor.enqueue('t', run_at => '-infinity')$$);
select regress.try($$select conveyor.enqueue('t', run_at => 'infinity')$$);
select regress.try($$select conveyor.enqueue('t', run_at => '1900-01-01')$$);
select regress.try($$select conveyor.enqueue('t', run_at => '2200-01-01')$$);
select regress.try($$select conveyor.publish('orders', '{}', deliver_at => 'infinity')$$);
-- a due time long past (but within the rule) does not break the dashboards
select conveyor.enqueue('t', run_at => '1969-01-01') is not null as enqueued;
select queue, lag_seconds > 0 as lagging from conveyor.queue_stats where queue = 'default';
select count(*) > 0 as metrics_lines from regexp_split_to_table(conveyor.metrics(), E'\n');

-- errors that used to escape the documented list
select regress.try($$select conveyor.define_task(null)$$);
select regress.try($$select conveyor.define_task('c', schedule => '0 0 30 2 *')$$);
select regress.try(format('select conveyor.enqueue(''t'', idempotency_key => %L)', repeat('k', 4000)));

-- a release with a negative delay ends the attempt as configuration_invalid, not with 22008
select conveyor.enqueue('t') as run_id \gset
select run_id, lease_token from conveyor.claim_run('default', 'w') \gset
select conveyor.release_run(:'run_id', :'lease_token', '-1000000 years') as released;
select error ->> 'code' as code from conveyor.runs where id = :'run_id';

-- worker text: CR, bidi overrides, ESC and BEL do not survive, wherever they come in
select conveyor.retry_run(:'run_id');
select run_id, lease_token from conveyor.claim_run('default', E'host\x1b[2J\x07:1') \gset
select worker from conveyor.runs where id = :'run_id';
select conveyor.append_log(:'run_id', :'lease_token', E'step 1\r\x1b[31mred\x07\n');
select chunk from conveyor.attempt_logs where run_id = :'run_id';
select conveyor.fail_run(:'run_id', :'lease_token', E'bad\rthing \u202Efdp.exe',
                         jsonb_build_object(E'k\x07', E'v\x1b', 'list', jsonb_build_array(E'\u202Ex')));
select error ->> 'message' as message, error -> 'meta' as meta from conveyor.runs where id = :'run_id';
rollback;
