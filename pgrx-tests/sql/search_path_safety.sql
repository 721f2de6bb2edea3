-- The helpers inlined into the views run under the reader's search_path: an operator a reader
-- created in its own schema must not run when a superuser with that schema first in its
-- search_path reads the views (issue 13, finding 8). Every operator and function in them is
-- schema-qualified, so the evil ones below are never called (each would say so).
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('t', max_attempts => 1);
select conveyor.enqueue('t', run_at => '2030-01-01 00:10:00+00') is not null as waiting;
select conveyor.enqueue('t') is not null as queued;
select count(conveyor.fail_run(c.run_id, c.lease_token, 'boom')) as failed from conveyor.claim_run('default', 'w') c;

create schema evil;
create function evil.eq(a conveyor.attempt_outcome, b conveyor.attempt_outcome) returns boolean
language plpgsql as $$ begin raise notice 'evil = on outcomes ran'; return true; end $$;
create operator evil.= (leftarg = conveyor.attempt_outcome, rightarg = conveyor.attempt_outcome, function = evil.eq);
create function evil.eq(a conveyor.run_status, b conveyor.run_status) returns boolean
language plpgsql as $$ begin raise notice 'evil = on statuses ran'; return true; end $$;
create operator evil.= (leftarg = conveyor.run_status, rightarg = conveyor.run_status, function = evil.eq);
create function evil.left(t text, n integer) returns text
language plpgsql as $$ begin raise notice 'evil left ran'; return t; end $$;

set local search_path = evil, pg_catalog, conveyor, public;
select count(*) as recent_failures from conveyor.recent_failures;
select queue, scheduled, queued, failed, failures_5m from conveyor.queue_stats;
select task, failed, failures_1h from conveyor.task_stats;
select sum(failed) as failed_last_hour from conveyor.throughput;
select conveyor._is_failure('failed') as failed_is_failure, conveyor._is_failure('released') as released_is_failure;
select conveyor._live('succeeded') as succeeded_is_live, conveyor._waiting('retrying') as retrying_waits;
select conveyor._sanitize('plain') as sanitized, conveyor._failure('x', 'y') ->> 'code' as code;
rollback;
