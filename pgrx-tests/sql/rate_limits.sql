-- Rate limits (option rate_limit, "N/period", on a queue or a task): at most N runs started in
-- any window of the period, whatever the number of claims. A claim takes what room is left (or
-- nothing) and the rest stay queued; rate_limited_until says when to look again; a task at its
-- limit never blocks the runs of other tasks; the view rate_limits and metrics() show them.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_queue('rq', rate_limit => '3/10s');
select conveyor.define_task('r.t', queue => 'rq');
select count(conveyor.enqueue('r.t')) from generate_series(1, 10);

-- 3 of the 10, then none until the window has room again
select count(*) as claimed from conveyor.claim_runs('rq', 'w', 10);
select count(*) as claimed from conveyor.claim_runs('rq', 'w', 10);
select conveyor.rate_limited_until('rq');
select scope, name, "limit", period, started, room, queued, held_back from conveyor.rate_limits;
select regress.at('2030-01-01 00:00:09.999+00');
select count(*) as claimed from conveyor.claim_runs('rq', 'w', 10);
select regress.at('2030-01-01 00:00:10+00');
select count(*) as claimed from conveyor.claim_runs('rq', 'w', 2);
select count(*) as claimed from conveyor.claim_runs('rq', 'w', 10);
select conveyor.rate_limited_until('rq') as until;

-- a task's limit: its runs wait, the other task's runs in the same queue are taken
select conveyor.define_task('r.a', queue => 'kq', rate_limit => '2/1m');
select conveyor.define_task('r.b', queue => 'kq');
select count(conveyor.enqueue('r.a', priority => 0)) from generate_series(1, 5);
select count(conveyor.enqueue('r.b', priority => 5)) from generate_series(1, 5);
select task, count(*) from conveyor.claim_runs('kq', 'w', 10) group by task order by task;
select task, count(*) from conveyor.claim_runs('kq', 'w', 10) group by task order by task;
select scope, name, started, room, queued, held_back from conveyor.rate_limits where scope = 'task';
select conveyor.rate_limited_until('kq') as until;
-- finish_and_claim obeys the same limits
select regress.at('2030-01-01 00:01:10.5+00');
select kind, count(*) from conveyor.finish_and_claim(null, 'kq', 'w', 10) group by kind;

-- a disabled task's runs fail as they are claimed and use no room: the runs behind them start
select conveyor.set_queue('dq', rate_limit => '2/1h');
select conveyor.define_task('r.off', queue => 'dq');
select conveyor.define_task('r.on', queue => 'dq');
select count(conveyor.enqueue('r.off', priority => 0)) from generate_series(1, 5);
select count(conveyor.enqueue('r.on', priority => 5)) from generate_series(1, 3);
select conveyor.disable_task('r.off');
select task, count(*) from conveyor.claim_runs('dq', 'w', 10) group by task;
select task, status, count(*) from conveyor.runs where queue = 'dq' group by task, status order by task, status;

-- metrics
select line from regexp_split_to_table(conveyor.metrics(), E'\n') as line
where line ~ '^conveyor_rate_limit' order by line;

-- a claim under a limit needs READ COMMITTED
savepoint rr;
select regress.try($$select count(*) from conveyor.claim_runs('rq', 'w', 1)$$) as under_read_committed;
rollback to savepoint rr;

-- bad values are refused with CV010, nothing stored
select regress.try($$select conveyor.set_queue('rq2', rate_limit => '0/1s')$$);
select regress.try($$select conveyor.set_queue('rq2', rate_limit => '10')$$);
select regress.try($$select conveyor.define_task('r.bad', rate_limit => '10/0s')$$);
select regress.try($$select conveyor.define_task('r.bad', rate_limit => '10/soon')$$);
select regress.try($$select conveyor.define_task('r.bad', options => '{"rate_limit": 10}')$$);
select count(*) from conveyor.queues where name = 'rq2';
select count(*) from conveyor.tasks where name = 'r.bad';

-- tick prunes the starts no claim counts any more (two periods and 10 minutes on)
select sum(n) as started from conveyor._rate_starts where scope = 'queue';
select regress.at('2030-01-01 00:11:00+00');
select pruned >= 0 from conveyor.tick();
select count(*) as starts_left from conveyor._rate_starts where scope = 'queue';
-- removing the limit frees the queue (its shards and starts go)
select conveyor.set_queue('rq');
select count(*) as claimed from conveyor.claim_runs('rq', 'w', 10);
select count(*) as shards from conveyor._rate_limits where scope = 'queue';
rollback;

-- in a REPEATABLE READ transaction, a claim under a limit is refused (22023)
begin isolation level repeatable read;
select conveyor.set_queue('rq3', rate_limit => '1/1s');
select conveyor.define_task('r.rr', queue => 'rq3');
select conveyor.enqueue('r.rr') is not null;
select regress.try($$select count(*) from conveyor.claim_runs('rq3', 'w', 1)$$);
rollback;
