-- Counters Prometheus can rate (conveyor.counters, metrics()): runs enqueued, attempts ended by
-- outcome, retries, per queue and task. Each statement adds one delta row per queue, task and
-- counter it changed, whatever its number of runs; the tick step `count` folds the deltas into
-- totals; totals + deltas never change by folding, and pruning never lowers them.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_defaults('{"retention": "1d"}');
select conveyor.define_task('c.ok', queue => 'cq');
select conveyor.define_task('c.flaky', queue => 'cq', max_attempts => 2, delay => '1s');

-- one statement enqueuing 50 runs writes one delta row
select count(*) from conveyor.enqueue_many('c.ok', array_fill('{}'::jsonb, array[50]));
select queue, task, counter, n from conveyor._counter_deltas order by 1, 2, 3;
select count(conveyor.enqueue('c.flaky')) from generate_series(1, 4);

-- a batch of 50 successes: one delta row; fail the four flaky runs: 4 retries, then 4 failures
select count(*) from conveyor.finish_runs((
    select jsonb_agg(jsonb_build_object('run_id', c.run_id::text, 'lease_token', c.lease_token, 'outcome', 'succeeded'))
    from conveyor.claim_runs('cq', 'w', 50, tasks => array['c.ok']) c));
select count(conveyor.fail_run(c.run_id, c.lease_token, 'boom')) from conveyor.claim_runs('cq', 'w', 10) c;
select regress.at('2030-01-01 00:00:05+00');
select delivered from conveyor.tick();
select count(conveyor.release_run(c.run_id, c.lease_token, '1s')) from conveyor.claim_runs('cq', 'w', 2) c;
select count(conveyor.fail_run(c.run_id, c.lease_token, 'boom again')) from conveyor.claim_runs('cq', 'w', 2) c;
select count(*) as delta_rows from conveyor._counter_deltas;

create view pg_temp.derived as
    -- what the counters must say, from the rows themselves (before anything is pruned)
    select r.queue, r.task, 'enqueued' as counter, count(*) as value from conveyor.runs r group by 1, 2
    union all
    select a.queue, a.task, 'attempt.' || a.outcome, count(*) from conveyor.attempts a group by 1, 2, 3
    union all
    select a.queue, a.task, 'retried', count(*) from conveyor.attempts a
    where conveyor._is_failure(a.outcome) and a.delay is not null group by 1, 2;
select * from conveyor.counters order by 1, 2, 3;
select count(*) as mismatches from (
    (select * from pg_temp.derived except select * from conveyor.counters)
    union all
    (select * from conveyor.counters except select * from pg_temp.derived)) x;

-- folding moves every delta into the totals and changes no counter
create temp table before as select * from conveyor.counters;
select counted from conveyor.tick();
select count(*) as delta_rows_left from conveyor._counter_deltas;
select source, count(*) as total_rows from conveyor._counters group by source;
select count(*) as changed_by_folding from (
    (select * from before except select * from conveyor.counters)
    union all (select * from conveyor.counters except select * from before)) x;
-- a second fold adds to the same rows
select count(conveyor.enqueue('c.ok')) from generate_series(1, 3);
select counted from conveyor.tick();
select value from conveyor.counters where task = 'c.ok' and counter = 'enqueued';

-- pruning deletes the runs and their attempts; the counters stay
select regress.at('2030-01-03 00:00:00+00');
select count(*) as finished from conveyor.runs where finished_at is not null;
select pruned > 0 as pruned from conveyor.tick();
select count(*) as finished_left from conveyor.runs where finished_at is not null;
select * from conveyor.counters order by 1, 2, 3;

-- metrics() shows them as counters
select line from regexp_split_to_table(conveyor.metrics(), E'\n') as line
where line ~ '^(# TYPE )?conveyor_(runs_enqueued|attempts|retries|releases)_total' order by line;
rollback;
