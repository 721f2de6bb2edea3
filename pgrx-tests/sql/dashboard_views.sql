-- The dashboard views and metrics() on a known scenario, figures asserted exactly: retry
-- pressure is counted apart from releases.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_queue('emails', concurrency => 10);
select conveyor.define_task('emails.send', queue => 'emails', max_attempts => 3, delay => '1s');
select conveyor.define_task('reports.poll', queue => 'reports');

-- emails: 4 succeed at once, 2 fail once then succeed, 1 fails for good (3 attempts), 3 wait
select count(conveyor.enqueue('emails.send', jsonb_build_object('n', n))) from generate_series(1, 7) n;
create function pg_temp.work(p_queue text, p_n int, p_outcome text) returns int language sql as $$
    select count(case p_outcome
        when 'ok' then conveyor.complete_run(c.run_id, c.lease_token)::text
        when 'fail' then conveyor.fail_run(c.run_id, c.lease_token, 'smtp 421', '{"provider": "smtp"}')::text
        when 'release' then conveyor.release_run(c.run_id, c.lease_token, '1m', 'not ready')::text end)::int
    from conveyor.claim_runs(p_queue, 'w', p_n) c
$$;
select pg_temp.work('emails', 4, 'ok'), pg_temp.work('emails', 3, 'fail');
select regress.at('2030-01-01 00:00:10+00');
select delivered from conveyor.tick();
select pg_temp.work('emails', 2, 'ok'), pg_temp.work('emails', 1, 'fail');
select regress.at('2030-01-01 00:00:20+00');
select delivered from conveyor.tick();
select pg_temp.work('emails', 1, 'fail');
select count(conveyor.enqueue('emails.send', jsonb_build_object('n', n))) from generate_series(8, 10) n;

-- reports: 2 polls released twice each, then one succeeds
select count(conveyor.enqueue('reports.poll')) from generate_series(1, 2);
select pg_temp.work('reports', 2, 'release');
select regress.at('2030-01-01 00:01:20+00');
select delivered from conveyor.tick();
select pg_temp.work('reports', 2, 'release');
select regress.at('2030-01-01 00:02:20+00');
select delivered from conveyor.tick();
select pg_temp.work('reports', 1, 'ok');
select count(*) from conveyor.claim_runs('reports', 'w', 1);

select regress.at('2030-01-01 00:03:00+00');
select queue, as_of = conveyor._now() as as_of_now, paused, concurrency, scheduled, queued, running, retrying,
       released, succeeded, failed, lag_seconds, delivery_lag_seconds, succeeded_5m, throughput_per_s_5m,
       failures_5m, retries_5m, releases_5m
from conveyor.queue_stats order by queue;
select task, queue, scheduled, queued, running, retrying, released, succeeded, failed, retries, releases,
       attempts_1h, failures_1h, retries_1h, releases_1h, mean_seconds_1h
from conveyor.task_stats order by task;
select task, attempt, outcome, code, message, meta, run_status, retry_in, to_char(retry_at at time zone 'UTC', 'HH24:MI:SS') as retry_at
from conveyor.recent_failures order by finished_at, run_id;
-- every minute of the last hour for every queue; the minutes with attempts:
select count(*) as rows, count(*) filter (where succeeded + retried + failed + released > 0) as busy_minutes
from conveyor.throughput;
select queue, to_char(minute at time zone 'UTC', 'HH24:MI') as minute, succeeded, retried, failed, released
from conveyor.throughput where succeeded + retried + failed + released > 0 order by minute, queue;
-- tick stops: a due retry is not delivered, and delivery_lag_seconds shows it
select conveyor.enqueue('emails.send', '{"n": 99}', delay => '1m') is not null as enqueued;
select regress.at('2030-01-01 00:05:30+00');
select queue, lag_seconds, delivery_lag_seconds from conveyor.queue_stats where queue = 'emails';
select conveyor.metrics();
-- a queue whose name sorts after the others: each metric family still stands in one block
-- (Prometheus wants a family's HELP, TYPE and samples together)
select conveyor.set_queue('zulu');
select count(*) as blocks, count(distinct family) as families
from (select family, family is distinct from lag(family) over (order by n) as starts
      from (select n, case when line like '#%' then split_part(line, ' ', 3) else split_part(line, '{', 1) end as family
            from regexp_split_to_table(rtrim(conveyor.metrics(), E'\n'), E'\n') with ordinality as l(line, n)) l) b
where starts;
-- no queues at all: the families' headers, no samples
delete from conveyor.queues;
select conveyor.metrics();
rollback;
