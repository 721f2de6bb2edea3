-- Concurrency keys (enqueue's key, enqueue_many's keys): key_concurrency caps the running runs
-- of one key (a queue's: its runs with the key; a task's: the task's runs with the key, in any
-- queue), key_rate_limit the starts of one key. A key at its limit is skipped: the claim takes
-- the runs of other keys behind it. The keys of a queue take turns (round-robin, fair_rank), so
-- a small key is not stuck behind a flooded one. Every ending frees the key's slot.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.set_queue('kc', key_concurrency => 2);
select conveyor.define_task('k.t', queue => 'kc', max_attempts => 3, delay => '0s');
-- a flooded key first, then a small one, then a run without a key
select count(*) from conveyor.enqueue_many('k.t', array_fill('{}'::jsonb, array[20]),
                                           keys => array_fill('big'::text, array[20]));
select count(*) from conveyor.enqueue_many('k.t', array['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[],
                                           keys => array['small', 'small', 'small']);
select conveyor.enqueue('k.t', '{}') is not null as unkeyed;

-- the keys' turns: each key's runs count up from the queue's turn; the unkeyed run keeps 0
select concurrency_key, min(fair_rank), max(fair_rank), count(*)
from conveyor.runs where queue = 'kc' group by concurrency_key order by concurrency_key nulls first;
-- in claim order the keys alternate
select string_agg(coalesce(concurrency_key, '-'), ' ' order by priority, fair_rank, run_at, id)
from (select * from conveyor.runs where queue = 'kc' order by priority, fair_rank, run_at, id limit 7) r;

-- a claim of 10 takes 2 of each key (the limit) and the unkeyed run: the big key at its limit
-- does not stop the claim from reaching the small key's third run... which is at its limit too
select coalesce(r.concurrency_key, '-') as key, count(*)
from conveyor.claim_runs('kc', 'w', 10) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;
-- nothing more while they run, and no run waits because of another key
select count(*) as claimed from conveyor.claim_runs('kc', 'w', 10);
select concurrency_key, count(*) filter (where status = 'running') as running,
       count(*) filter (where status = 'queued') as queued
from conveyor.runs where queue = 'kc' and concurrency_key is not null group by 1 order by 1;

-- every ending frees the key's slot: a success, a failure that retries, a release, a cancel
select conveyor.complete_run(r.id, r.lease_token)
from conveyor.runs r where r.queue = 'kc' and r.concurrency_key = 'big' and r.status = 'running'
order by r.id limit 1;
select coalesce(r.concurrency_key, '-') as key, count(*)
from conveyor.claim_runs('kc', 'w', 10) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;
select conveyor.fail_run(r.id, r.lease_token, 'boom')
from conveyor.runs r where r.queue = 'kc' and r.concurrency_key = 'big' and r.status = 'running'
order by r.id limit 1;
select conveyor.release_run(r.id, r.lease_token, '0s')
from conveyor.runs r where r.queue = 'kc' and r.concurrency_key = 'small' and r.status = 'running'
order by r.id limit 1;
-- (a cancel request ends the attempt as stopped when the worker gives up the run)
select conveyor.cancel_run(r.id), conveyor.fail_run(r.id, r.lease_token, 'stopping')
from conveyor.runs r where r.queue = 'kc' and r.concurrency_key = 'small' and r.status = 'running'
order by r.id limit 1;
select count(*) >= 0 from conveyor.tick();
select coalesce(r.concurrency_key, '-') as key, count(*)
from conveyor.claim_runs('kc', 'w', 10) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;
select concurrency_key, count(*) as running from conveyor.runs
where queue = 'kc' and status = 'running' group by 1 order by 1;
-- a lease that expires (crashed) frees the slot too
select regress.at('2030-01-01 00:01:00+00');
select count(*) >= 0 from conveyor.tick();
select count(*) as running from conveyor.runs where queue = 'kc' and status = 'running';
select coalesce(r.concurrency_key, '-') as key, count(*)
from conveyor.claim_runs('kc', 'w', 10) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;

-- a task's key_concurrency counts the task's runs with the key in every queue
select conveyor.define_task('k.acct', queue => 'ka', key_concurrency => 1);
select conveyor.set_queue('kb');
select conveyor.enqueue('k.acct', key => 'acct-1') is not null;
select conveyor.enqueue('k.acct', queue => 'kb', key => 'acct-1') is not null;
select conveyor.enqueue('k.acct', queue => 'kb', key => 'acct-2') is not null;
select r.queue, r.concurrency_key from conveyor.claim_runs('ka', 'w', 10) c join conveyor.runs r on r.id = c.run_id;
select r.queue, r.concurrency_key from conveyor.claim_runs('kb', 'w', 10) c join conveyor.runs r on r.id = c.run_id;

-- key_rate_limit: at most N starts of one key per window; other keys go on
select conveyor.set_queue('kr', key_rate_limit => '2/10s');
select conveyor.define_task('k.r', queue => 'kr');
select count(*) from conveyor.enqueue_many('k.r', array_fill('{}'::jsonb, array[6]),
                                           keys => array['a', 'a', 'a', 'a', 'b', 'b']);
select r.concurrency_key, count(*) from conveyor.claim_runs('kr', 'w', 10) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;
select count(*) as claimed from conveyor.claim_runs('kr', 'w', 10);
select regress.at('2030-01-01 00:01:10+00');
select r.concurrency_key, count(*) from conveyor.claim_runs('kr', 'w', 10) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;
select scope, name, key, sum(n) as n from conveyor._rate_starts where key is not null group by scope, name, key, at order by at, key;
-- the views and metrics show the keys held back
select scope, name, key_concurrency, key_rate_limit, keys_at_limit, held_back from conveyor.key_limits order by scope, name;
select line from regexp_split_to_table(conveyor.metrics(), E'\n') as line
where line ~ '^conveyor_key_limit' order by line;
-- tick prunes key starts two periods and 10 minutes old; removing the limit drops them
select regress.at('2030-01-01 00:12:00+00');
select count(*) >= 0 from conveyor.tick();
select count(*) as key_starts from conveyor._rate_starts where key is not null;
-- removing the limit drops its keys' starts
select count(*) from conveyor.enqueue_many('k.r', array_fill('{}'::jsonb, array[2]), keys => array['a', 'b']);
select count(*) > 0 as claimed from conveyor.claim_runs('kr', 'w', 10);
select count(*) > 0 as key_starts from conveyor._rate_starts where key is not null;
select conveyor.set_queue('kr');
select count(*) as key_starts from conveyor._rate_starts where key is not null;

-- a key's rate room counts this claim's own starts of earlier rounds: x1 starts 5, not more,
-- although x0 and x2 (at their limit) make the claim go round again
select conveyor.set_queue('kw', key_rate_limit => '5/1m');
select conveyor.define_task('k.w', queue => 'kw');
select count(*) from conveyor.enqueue_many('k.w', array_fill('{}'::jsonb, array[10]),
                                           keys => array['x0', 'x0', 'x0', 'x0', 'x0', 'x2', 'x2', 'x2', 'x2', 'x2']);
select count(*) from conveyor.claim_runs('kw', 'w', 10);
select count(*) from conveyor.enqueue_many('k.w', array_fill('{}'::jsonb, array[24]),
                                           keys => array(select 'x' || (i % 3) from generate_series(0, 23) i));
select r.concurrency_key, count(*) between 1 and 5 as within_limit
from conveyor.claim_runs('kw', 'w', 9) c join conveyor.runs r on r.id = c.run_id group by 1 order by 1;
select key, sum(n) <= 5 as within_limit from conveyor._rate_starts s
where s.scope = 'queue_key' and s.name = 'kw' group by 1 order by 1;

-- a key short of room takes the shards with room left in the rate window, passing those its
-- earlier starts used up: 4 shards of one start each, the first claim used the one this session
-- tries first, the next claim of 3 takes the other 3 (and the window is then full)
select conveyor.set_queue('kw2', key_rate_limit => '4/1m');
select conveyor.define_task('k.w2', queue => 'kw2');
select count(*) from conveyor.enqueue_many('k.w2', array_fill('{}'::jsonb, array[5]), keys => array_fill('x'::text, array[5]));
select count(*) from conveyor.claim_runs('kw2', 'w', 1);
select count(*) from conveyor.claim_runs('kw2', 'w', 3);
select count(*) from conveyor.claim_runs('kw2', 'w', 3);

-- a claim of one run looks past every key at its limit, however many: 12 keys each running
-- one run (key_concurrency 1) with another queued in front of a free key's run
select conveyor.set_queue('kl', key_concurrency => 1);
select conveyor.define_task('k.l', queue => 'kl');
select count(*) from conveyor.enqueue_many('k.l', array_fill('{}'::jsonb, array[12]),
                                           keys => array(select 'busy-' || i from generate_series(1, 12) i));
select count(*) from conveyor.claim_runs('kl', 'w', 12);
select count(*) from conveyor.enqueue_many('k.l', array_fill('{}'::jsonb, array[12]),
                                           keys => array(select 'busy-' || i from generate_series(1, 12) i));
select conveyor.enqueue('k.l', key => 'free') is not null;
select r.concurrency_key from conveyor.claim_run('kl', 'w') c join conveyor.runs r on r.id = c.run_id;

-- one worker claiming one run at a time reaches the whole limit: a key's first shard tried
-- (by session and key) is full after the first run, and the claim tries the others
select conveyor.set_queue('k1', key_concurrency => 4);
select conveyor.define_task('k.one', queue => 'k1');
select count(*) from conveyor.enqueue_many('k.one', array_fill('{}'::jsonb, array[8]), keys => array_fill('solo'::text, array[8]));
-- (a worker name per call: a function scan with the same arguments is not run again)
select count(*) as claimed from generate_series(1, 6) i cross join lateral conveyor.claim_run('k1', 'w' || i) c;
select count(*) as running from conveyor.runs where queue = 'k1' and status = 'running';

-- lowering a limit never lets more in: 16 running under 8 shards of 2, the limit lowered to 8
-- (8 shards of 1): with one shard still over its share, the others let nothing in
select conveyor.set_queue('k2', key_concurrency => 16);
select conveyor.define_task('k.two', queue => 'k2');
select count(*) from conveyor.enqueue_many('k.two', array_fill('{}'::jsonb, array[30]), keys => array_fill('big'::text, array[30]));
select count(*) as claimed from conveyor.claim_runs('k2', 'w', 20);
select conveyor.set_queue('k2', key_concurrency => 8);
select count(conveyor.complete_run(r.id, r.lease_token)) as completed
from (select distinct on (queue_key_shard) id, lease_token from conveyor.runs
      where queue = 'k2' and status = 'running' and queue_key_shard > 0 order by queue_key_shard, id) r;
select count(*) as running from conveyor.runs where queue = 'k2' and status = 'running';
select count(*) as claimed from conveyor.claim_runs('k2', 'w', 20);
select count(conveyor.complete_run(r.id, r.lease_token)) as completed
from conveyor.runs r where r.queue = 'k2' and r.status = 'running' and r.queue_key_shard > 0;
select count(*) as claimed from conveyor.claim_runs('k2', 'w', 20);
select count(*) <= 8 as within_limit from conveyor.runs where queue = 'k2' and status = 'running';

-- a claim from several queues merges them by each queue's own turns (counted from its first
-- candidate's), then due time: qa's next run (its queue's first turn, due first) goes first,
-- then qb's unkeyed runs (all at the first turn), then qa's later turns. (Comparing qa's raw
-- turns, 25 and on, with qb's 0 would take none of qa's.)
select conveyor.define_task('k.qa', queue => 'qa');
select conveyor.define_task('k.qb', queue => 'qb');
select count(*) from conveyor.enqueue_many('k.qa', array_fill('{}'::jsonb, array[30]), keys => array_fill('k'::text, array[30]));
select count(*) from conveyor.claim_runs('qa', 'w', 25);
select regress.at('2030-01-01 00:13:00+00');
select count(*) from conveyor.enqueue_many('k.qb', array_fill('{}'::jsonb, array[5]));
select string_agg(c.queue, ' ' order by c.queue) from conveyor.claim_runs('qa,qb', 'w', 5) c;
rollback;

-- a claim under a key limit needs READ COMMITTED (checked as it meets a keyed run)

begin isolation level repeatable read;
select conveyor.set_queue('kq3', key_concurrency => 1);
select conveyor.define_task('k.rr', queue => 'kq3');
select conveyor.enqueue('k.rr', key => 'x') is not null;
select regress.try($$select count(*) from conveyor.claim_runs('kq3', 'w', 1)$$);
rollback;

-- the lock of a key limit's shard (taken in Rust: _key_gates, _key_more) is the advisory lock
-- ('pgck', hashtext of the shard's _key_ref) that SQL names, for keys of any characters

begin;
select * from conveyor._key_more(array['queue', 'queue', 'queue'], array['kq', 'kq', 'kq'],
                                 array['tenant-42', 'ünï cödé ✓', ''], array[3, 3, 3]::smallint[],
                                 array[1, 1, 1]::bigint[], array[1, 1, 1]::bigint[]);
select k, exists (select from pg_locks l
                  where l.locktype = 'advisory' and l.pid = pg_backend_pid() and l.objsubid = 2
                    and l.classid = 1885823851
                    and l.objid = (hashtext(conveyor._key_ref('queue', 'kq', k) || E'\x1f' || 3) & 4294967295)::bigint::oid)
from unnest(array['tenant-42', 'ünï cödé ✓', '']) k;
select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid() and classid = 1885823851;
rollback;

-- bad values are refused with CV010 or 22023, nothing stored
begin;
select regress.try($$select conveyor.set_queue('kq2', key_concurrency => 0)$$);
select regress.try($$select conveyor.set_queue('kq2', key_concurrency => -1)$$);
select regress.try($$select conveyor.define_task('k.bad', key_rate_limit => '5')$$);
select regress.try($$select conveyor.define_task('k.bad', key_rate_limit => '0/1s')$$);
select regress.try($$select conveyor.define_task('k.bad', options => '{"key_concurrency": "two"}')$$);
select count(*) from conveyor.queues where name = 'kq2';
select count(*) from conveyor.tasks where name = 'k.bad';
select conveyor.define_task('k.ok');
select regress.try($$select conveyor.enqueue('k.ok', key => repeat('k', 513))$$);
select regress.try($$select conveyor.enqueue_many('k.ok', array['{}', '{}']::jsonb[], keys => array['a'])$$);
select count(*) from conveyor.runs where task = 'k.ok';
rollback;
