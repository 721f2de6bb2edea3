-- Deduplication policies on the idempotency key (task options on_duplicate, unique_for,
-- debounce, debounce_max): return the existing run (the default), reject with CV009 and write
-- nothing, or replace a waiting run's payload (latest wins); keep deduplicating for unique_for
-- after the run finished; debounce a keyed run's start while enqueues keep coming, capped.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('d.return', queue => 'dq');
select conveyor.define_task('d.reject', queue => 'dq', on_duplicate => 'reject');
select conveyor.define_task('d.replace', queue => 'dq', on_duplicate => 'replace');
select conveyor.define_task('d.window', queue => 'dq', unique_for => '10m');
select conveyor.define_task('d.debounce', queue => 'dq', debounce => '5s', debounce_max => '12s',
                            on_duplicate => 'replace');
select name, on_duplicate, unique_for, debounce, debounce_max from conveyor.task_config
where name like 'd.%' order by name;

-- return (the default): the same run, its payload unchanged
select conveyor.enqueue('d.return', '{"v": 1}', idempotency_key => 'k') = conveyor.enqueue('d.return', '{"v": 2}', idempotency_key => 'k') as same_run;
select payload from conveyor.runs where task = 'd.return';

-- reject: CV009 names the run and the key, and the whole call writes nothing
select conveyor.enqueue('d.reject', '{"v": 1}', idempotency_key => 'k') is not null as first;
select regress.try($$select conveyor.enqueue('d.reject', '{"v": 2}', idempotency_key => 'k')$$) as refused;
create temp table census as select count(*) as runs from conveyor.runs;
select regress.try($$select count(*) from conveyor.enqueue_many('d.reject', array['{"v": 3}', '{"v": 4}']::jsonb[],
                                                             idempotency_keys => array['fresh', 'k'])$$) ~ '^CV009' as batch_refused;
select (select count(*) from conveyor.runs) = (select runs from census) as nothing_written;
-- a new key twice in one call is a duplicate too
select regress.try($$select count(*) from conveyor.enqueue_many('d.reject', array['{}', '{}']::jsonb[],
                                                             idempotency_keys => array['twice', 'twice'])$$);
select count(*) from conveyor.runs where task = 'd.reject' and idempotency_key = 'fresh';

-- replace: a waiting run takes the latest payload; within one call the last one of a key wins
select conveyor.enqueue('d.replace', '{"v": 1}', idempotency_key => 'k') is not null;
select count(*) from conveyor.enqueue_many('d.replace', array['{"v": 2}', '{"v": 3}', '{"v": 9}']::jsonb[],
                                           idempotency_keys => array['k', 'k', 'other']);
select idempotency_key, payload, status from conveyor.runs where task = 'd.replace' order by idempotency_key;
-- a running run keeps the payload its attempt started with
select count(*) from conveyor.claim_runs('dq', 'w', 10, tasks => array['d.replace']);
select conveyor.enqueue('d.replace', '{"v": 4}', idempotency_key => 'k') = (select id from conveyor.runs where task = 'd.replace' and idempotency_key = 'k') as same_run;
select payload, status from conveyor.runs where task = 'd.replace' and idempotency_key = 'k';

-- unique_for: after the run finished, its key still deduplicates for 10 minutes
select conveyor.enqueue('d.window', '{}', idempotency_key => 'w') is not null;
select count(conveyor.complete_run(c.run_id, c.lease_token)) from conveyor.claim_runs('dq', 'w', 10, tasks => array['d.window']) c;
select regress.at('2030-01-01 00:09:00+00');
select conveyor.enqueue('d.window', '{}', idempotency_key => 'w') = (select id from conveyor.runs where task = 'd.window') as same_finished_run;
select count(*) from conveyor.runs where task = 'd.window';
select regress.at('2030-01-01 00:10:01+00');
select conveyor.enqueue('d.window', '{}', idempotency_key => 'w') is not null;
select count(*) as runs_after_the_window from conveyor.runs where task = 'd.window';
select status, count(*) from conveyor.runs where task = 'd.window' group by status order by status;
-- a task without unique_for makes a new run as soon as the old one finished
select count(conveyor.complete_run(c.run_id, c.lease_token)) from conveyor.claim_runs('dq', 'w', 10, tasks => array['d.return']) c;
select conveyor.enqueue('d.return', '{}', idempotency_key => 'k') is not null;
select status, count(*) from conveyor.runs where task = 'd.return' group by status order by status;

-- debounce: the first enqueue waits 5s; each later one restarts the wait; never past 12s after
-- the first; the latest payload (replace)
select regress.at('2030-01-01 01:00:00+00');
select conveyor.enqueue('d.debounce', '{"n": 1}', idempotency_key => 'b') is not null;
select status, run_at from conveyor.runs where task = 'd.debounce';
select regress.at('2030-01-01 01:00:04+00');
select conveyor.enqueue('d.debounce', '{"n": 2}', idempotency_key => 'b') is not null;
select status, run_at, payload from conveyor.runs where task = 'd.debounce';
select regress.at('2030-01-01 01:00:08+00');
select conveyor.enqueue('d.debounce', '{"n": 3}', idempotency_key => 'b') is not null;
select status, run_at, payload from conveyor.runs where task = 'd.debounce';
select delivered from conveyor.tick();
select regress.at('2030-01-01 01:00:12+00');
select delivered from conveyor.tick();
select status, payload, (select count(*) from conveyor.runs where task = 'd.debounce') as runs
from conveyor.runs where task = 'd.debounce';
-- queued already: no more pushing back; the enqueue returns it (and, under replace, it takes the payload)
select conveyor.enqueue('d.debounce', '{"n": 4}', idempotency_key => 'b') = (select id from conveyor.runs where task = 'd.debounce') as same_run;
select status, run_at, payload from conveyor.runs where task = 'd.debounce';

-- debounce never brings a run forward: one asked for in an hour stays there
select conveyor.enqueue('d.debounce', '{}', run_at => '2030-01-01 02:00:12+00', idempotency_key => 'later') is not null;
select conveyor.enqueue('d.debounce', '{}', idempotency_key => 'later') is not null;
select run_at from conveyor.runs where task = 'd.debounce' and idempotency_key = 'later';
-- a payload without a key in a keyed call is not debounced
select count(*) from conveyor.enqueue_many('d.debounce', array['{"k": 1}', '{"k": 0}']::jsonb[],
                                           idempotency_keys => array['keyed', null]);
select idempotency_key, status, run_at from conveyor.runs
where task = 'd.debounce' and payload ? 'k' order by idempotency_key nulls last;

-- bad values are refused with CV010, nothing stored
select regress.try($$select conveyor.define_task('d.bad', on_duplicate => 'merge')$$);
select regress.try($$select conveyor.define_task('d.bad', unique_for => '0s')$$);
select regress.try($$select conveyor.define_task('d.bad', unique_for => 'soon')$$);
select regress.try($$select conveyor.define_task('d.bad', debounce => '10s', debounce_max => '5s')$$);
select regress.try($$select conveyor.define_task('d.bad', debounce_max => '5s')$$);
select regress.try($$select conveyor.define_task('d.bad', debounce => '-1s')$$);
select regress.try($$select conveyor.define_service('d.svc', options => '{"on_duplicate": "reject"}')$$);
select count(*) from conveyor.tasks where name like 'd.bad%' or name = 'd.svc';
rollback;
