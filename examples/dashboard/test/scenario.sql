-- scenario.sql: a known state for the dashboard test, made with the public SQL API only.
-- Run by test.sh as psql -v sfx=<suffix>; every name carries the suffix, so the scenario
-- can run again in the same database (and beside other data) without changing its figures.
--
-- queue dash_emails_<sfx>
--   task dash.send_<sfx>   (3 attempts, constant 10m backoff): 7 enqueued; 5 claimed:
--                          2 completed, 2 failed (retrying in 10m), 1 left running (10m lease);
--                          of the 2 still queued, 1 cancelled
--   task dash.bounce_<sfx> (1 attempt): 1 enqueued, claimed, failed (budget spent: failed)
--   => queued 1, running 1, retrying 2, succeeded 2, failed 1, cancelled 1
--      last 5 min: succeeded 2, failures 3, retries 2, releases 0
-- queue dash_reports_<sfx>
--   task dash.build_<sfx>: 4 enqueued now and 1 in an hour (scheduled); 3 claimed:
--                          1 completed, 2 released for 30m ("report not ready")
--   => scheduled 1, queued 1, released 2, succeeded 1
--      last 5 min: succeeded 1, failures 0, retries 0, releases 2
\set ON_ERROR_STOP 1
\set QUIET 1
\set emails 'dash_emails_' :sfx
\set reports 'dash_reports_' :sfx
\set send 'dash.send_' :sfx
\set bounce 'dash.bounce_' :sfx
\set build 'dash.build_' :sfx

select conveyor.define_task(:'send', queue => :'emails', max_attempts => 3,
                            backoff => 'constant', delay => '10m', max_delay => '10m');
select conveyor.define_task(:'bounce', queue => :'emails', max_attempts => 1);
select conveyor.define_task(:'build', queue => :'reports', max_attempts => 1);

select count(*) from conveyor.enqueue_many(:'send', array(select jsonb_build_object('to', 'user' || i || '@example.com')
                                                          from generate_series(1, 7) i));
select conveyor.enqueue(:'bounce', '{"to": "nobody@example.invalid"}');
select count(*) from conveyor.enqueue_many(:'build', array(select jsonb_build_object('report', i)
                                                           from generate_series(1, 4) i));
select conveyor.enqueue(:'build', '{"report": "nightly"}', delay => '1h');

-- a worker on the emails queue: 5 sends under a 10 minute lease
create temp table claimed_send as
select row_number() over (order by run_id) as n, run_id, lease_token
from conveyor.claim_runs(:'emails', 'dash-worker-1', 5, '10m', array[:'send']);
select conveyor.complete_run(run_id, lease_token, '{"message_id": "<x@example.com>"}') from claimed_send where n <= 2;
select conveyor.fail_run(run_id, lease_token, 'SMTP 421 <try again later> & "soon"', '{"provider": "ses"}')
from claimed_send where n in (3, 4);
-- run 5 stays running; one of the two still queued is cancelled
select conveyor.cancel_run(id) from conveyor.runs
where queue = :'emails' and task = :'send' and status = 'queued' order by id limit 1;

create temp table claimed_bounce as
select run_id, lease_token from conveyor.claim_runs(:'emails', 'dash-worker-1', 1, '10m', array[:'bounce']);
select conveyor.fail_run(run_id, lease_token, 'mailbox does not exist') from claimed_bounce;

-- a worker on the reports queue: 3 builds, 1 done, 2 not ready yet
create temp table claimed_build as
select row_number() over (order by run_id) as n, run_id, lease_token
from conveyor.claim_runs(:'reports', 'dash-worker-2', 3, '10m');
select conveyor.complete_run(run_id, lease_token, '{"rows": 42}') from claimed_build where n = 1;
select conveyor.release_run(run_id, lease_token, '30m', 'report not ready') from claimed_build where n in (2, 3);

-- the scenario must have gone exactly as planned
select (select count(*) from claimed_send) = 5 and (select count(*) from claimed_bounce) = 1
       and (select count(*) from claimed_build) = 3 as claims_ok \gset
\if :claims_ok
\echo scenario ready: queues :emails and :reports
\else
\warn scenario: the claims did not return the expected runs (is another worker on these queues?)
\quit 3
\endif
