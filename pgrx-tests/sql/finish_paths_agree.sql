-- complete_run takes the lean success path of conveyor._end_attempts; a finish_runs batch
-- that also holds a failure takes the general path. Both must write the same rows for a
-- success: the run, its attempt row and its events.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 3);
select conveyor.enqueue('t', '{"n": 1}') as fast \gset
select conveyor.enqueue('t', '{"n": 1}') as general \gset
select conveyor.enqueue('t', '{"n": 2}') as other \gset
create temp table claimed as select * from conveyor.claim_runs('default', 'w', 3);
select regress.at('2030-01-01 00:00:05+00');

select conveyor.complete_run(c.run_id, c.lease_token, '{"ok": true}') from claimed c where c.run_id = :'fast';
select f.status from conveyor.finish_runs((
    select jsonb_agg(case when c.run_id = :'general'
                          then jsonb_build_object('run_id', c.run_id, 'lease_token', c.lease_token,
                                                  'outcome', 'succeeded', 'result', '{"ok": true}'::jsonb)
                          else jsonb_build_object('run_id', c.run_id, 'lease_token', c.lease_token,
                                                  'outcome', 'failed', 'message', 'no') end order by c.run_id)
    from claimed c where c.run_id in (:'general', :'other'))) f
order by f.status;

-- the run rows, but for what differs by construction (ids, the lease and attempt ids)
select count(distinct to_jsonb(r) - array['id', 'attempt_id', 'prev_attempt_id', 'lease_token', 'created_at'])
           as distinct_run_rows,
       min(r.status::text) as status
from conveyor.runs r where r.id in (:'fast', :'general');
select count(distinct to_jsonb(a) - array['id', 'run_id']) as distinct_attempt_rows, count(*) as attempts
from conveyor.attempts a where a.run_id in (:'fast', :'general');
select count(distinct (select jsonb_agg(to_jsonb(e) - array['id', 'run_id'] order by e.id)
                       from conveyor.events e where e.run_id = r.id)) as distinct_event_logs
from conveyor.runs r where r.id in (:'fast', :'general');
select regress.events(:'fast') as events;
rollback;
