-- Release is business waiting, not failure: a run released 10 times with max_attempts 1 still
-- gets its one failure attempt, and its counters say so.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('poll_report', max_attempts => 1);
select conveyor.enqueue('poll_report', '{"report": 42}') as r \gset

create function pg_temp.release_times(n int) returns void language plpgsql as $$
declare v record;
begin
    for i in 1 .. n loop
        perform set_config('conveyor.test_clock', ('2030-01-01 00:00:00+00'::timestamptz + i * interval '1 minute')::text, true);
        perform conveyor.tick();
        select * into v from conveyor.claim_run('default', 'w');
        perform conveyor.release_run(v.run_id, v.lease_token, '30s', 'report not ready', jsonb_build_object('poll', i));
    end loop;
end $$;
select pg_temp.release_times(10);
select regress.counts(:'r');

-- the one failure it is allowed
select regress.at('2030-01-01 00:11:00+00');
select delivered from conveyor.tick();
select run_id, lease_token, attempt from conveyor.claim_run('default', 'w') \gset
select :attempt as attempt;
select conveyor.fail_run(:'run_id', :'lease_token', 'report service down');
select regress.counts(:'r');
select count(*) filter (where outcome = 'released') as released_attempts,
       count(*) filter (where outcome = 'failed') as failed_attempts,
       max(reason ->> 'reason') as reason, max((reason -> 'meta' ->> 'poll')::int) as last_poll
from conveyor.attempts where run_id = :'r';
select type, count(*) from conveyor.events where run_id = :'r' group by type order by min(id);
rollback;
