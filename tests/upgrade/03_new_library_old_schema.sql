-- Step 4: the new library is installed and loaded (server restarted), the schema is still
-- 0.1.0: the state of every installation between a package upgrade and ALTER EXTENSION UPDATE.
-- The 0.1.0 SQL calls the new library's C functions (ULIDs, durations, the clock, the option
-- validator, backoff, cron), so the lifecycle of lifecycle.sql must still work, must write
-- exactly the rows it wrote with the 0.1.0 library in step 3, and step 3's data must be
-- untouched.
\ir lib.sql
select pg_temp.load_facts() \g /dev/null

select pg_temp.check('the schema is still 0.1.0',
    (select extversion from pg_extension where extname = 'pg_conveyor') = '0.1.0');

\set suffix new
\ir lifecycle.sql

-- the rows of both lifecycle runs, ids and names aside, keyed by what they are
create temp view lifecycle_rows as
select split_part(r.task, '.', 3) as side, 'runs' as what, r.payload ->> 'case' as item, 0::bigint as seq,
       to_jsonb(r) - array['id', 'attempt_id', 'prev_attempt_id', 'lease_token', 'task', 'queue'] as data
from conveyor.runs r where r.task like 'upgrade.after.%'
union all
select split_part(r.task, '.', 3), 'events', r.payload ->> 'case', row_number() over (partition by e.run_id order by e.id),
       to_jsonb(e) - array['id', 'run_id']
from conveyor.events e join conveyor.runs r on r.id = e.run_id where r.task like 'upgrade.after.%'
union all
select split_part(a.task, '.', 3), 'attempts', r.payload ->> 'case', a.attempt,
       to_jsonb(a) - array['id', 'run_id', 'retry_of', 'task', 'queue']
from conveyor.attempts a join conveyor.runs r on r.id = a.run_id where a.task like 'upgrade.after.%'
union all
select split_part(r.task, '.', 3), 'attempt_logs', r.payload ->> 'case', row_number() over (partition by l.run_id order by l.id),
       to_jsonb(l) - array['id', 'run_id', 'attempt_id']
from conveyor.attempt_logs l join conveyor.runs r on r.id = l.run_id where r.task like 'upgrade.after.%'
union all
select split_part(t.name, '.', 3), 'tasks', 'task', 0, to_jsonb(t) - array['name', 'queue']
from conveyor.tasks t where t.name like 'upgrade.after.%';

create temp table lifecycle_diff as
select coalesce(o.what, n.what) as what, coalesce(o.item, n.item) as item, coalesce(o.seq, n.seq) as seq,
       o.data as with_0_1_0, n.data as with_new
from (select * from pg_temp.lifecycle_rows where side = 'ref') o
full join (select * from pg_temp.lifecycle_rows where side = 'new') n using (what, item, seq)
where o.data is distinct from n.data;

select pg_temp.check(format('the new library wrote the rows the 0.1.0 library wrote (%s rows: runs, events, attempts, logs, task)',
                            (select count(*) from pg_temp.lifecycle_rows where side = 'new')),
    not exists (select from pg_temp.lifecycle_diff),
    (select string_agg(format('%s %s #%s: 0.1.0 wrote %s, new wrote %s', what, item, seq,
                              coalesce(with_0_1_0::text, 'nothing'), coalesce(with_new::text, 'nothing')), '; ')
     from (select * from pg_temp.lifecycle_diff order by what, item, seq limit 5) x));

select pg_temp.check('new ids are ULIDs of the real time (the new library''s ulid_generate)',
    (select bool_and(length(id::text) = 26 and abs(extract(epoch from conveyor.ulid_timestamp(id) - clock_timestamp())) < 600)
     from conveyor.runs where task = 'upgrade.after.new'));

-- nothing else was written: step 3's rows are untouched, and every new event or attempt
-- belongs to the lifecycle above or to a worker probe run (scripts/upgrade-check.sh)
\ir check_snapshot.sql
select pg_temp.check('no new events or attempts beyond the lifecycle and the worker probes',
    not exists (
        select from conveyor.events e join conveyor.runs r on r.id = e.run_id
        where r.task not in ('upgrade.after.new', 'upgrade.probe')
          and not exists (select from pg_temp.saved s where s.tbl = 'events' and s.key = e.id::text))
    and not exists (
        select from conveyor.attempts a
        where a.task not in ('upgrade.after.new', 'upgrade.probe')
          and not exists (select from pg_temp.saved s where s.tbl = 'attempts' and s.key = a.run_id::text || '/' || a.attempt)));

select pg_temp.save_facts() \g /dev/null
select pg_temp.finish('step 4 (new library on the 0.1.0 schema)');
