-- Rescue on backend death (bind_session): a claim may bind its runs to the claiming session,
-- and tick ends the attempts of a bound session that is gone as crashed, without waiting for
-- the lease. Here: which claims bind (the claim's argument, then the task's option, the queue's,
-- the defaults', the queue being the one the run is claimed from), the session's identity, a pid that now belongs to a backend that started at
-- another time (pid reuse), a pid no backend has, and bad values. Real client deaths (SIGKILL,
-- pg_terminate_backend) are in tests/integration/rescue.rs.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_task('bs_plain', queue => 'bs');
select conveyor.define_task('bs_task', queue => 'bs', options => '{"bind_session": true}');
select name, bind_session from conveyor.task_config where name like 'bs_%' order by name;
-- probe: enqueue a run of the task into queue bsq (not the tasks' own queue), claim it, and say
-- whether the claim bound it; then fail it for good, so the probes
-- leave nothing running
select conveyor.set_queue('bsq');
create function pg_temp.bound(p_task text, p_bind boolean default null) returns boolean
language plpgsql as $$
declare
    v_id conveyor.ulid := conveyor.enqueue(p_task, queue => 'bsq');
    v_token uuid;
    v_bound boolean;
begin
    select c.lease_token into v_token from conveyor.claim_runs('bsq', 'probe', 1, bind_session => p_bind) c;
    select r.session_pid is not null into v_bound from conveyor.runs r where r.id = v_id and r.status = 'running';
    perform conveyor.fail_run(v_id, v_token, 'probe', retryable => false);
    return v_bound;
end
$$;
select pg_temp.bound('bs_plain') as plain, pg_temp.bound('bs_task') as task;
-- the option of the queue the run is claimed from, under the task's own
select conveyor.set_queue('bsq', bind_session => true);
select pg_temp.bound('bs_plain') as plain, pg_temp.bound('bs_task') as task;
select conveyor.define_task('bs_task', queue => 'bs', options => '{"bind_session": false}');
select pg_temp.bound('bs_plain') as plain, pg_temp.bound('bs_task') as task;
select conveyor.define_task('bs_task', queue => 'bs', options => '{"bind_session": true}');
select conveyor.set_queue('bsq');
-- the tasks' own queue does not count: the run is claimed from bsq
select conveyor.set_queue('bs', bind_session => true);
select pg_temp.bound('bs_plain') as plain;
select conveyor.set_queue('bs');
-- the defaults', under both
select conveyor.set_defaults('{"bind_session": true}');
select bind_session from conveyor.defaults;
select pg_temp.bound('bs_plain') as plain, pg_temp.bound('bs_task') as task;
-- a claim's argument wins over all
select pg_temp.bound('bs_plain', false) as plain, pg_temp.bound('bs_task', false) as task;
select conveyor.set_queue('bsq', bind_session => false);
select pg_temp.bound('bs_plain') as plain, pg_temp.bound('bs_plain', true) as plain_bound;
select conveyor.set_queue('bsq');
select conveyor.set_defaults('{}');
select bind_session from conveyor.defaults;
select * from conveyor.options where name = 'bind_session';

-- bad values: CV010, nothing changed
select regress.try($$select conveyor.define_task('bs_task', options => '{"bind_session": "yes"}')$$);
select regress.try($$select conveyor.apply_config('{"queues": {"bs": {"bind_session": 1}}}')$$);
select regress.try($$select conveyor.set_defaults('{"bind_session": null, "bind": true}')$$);
select name, bind_session from conveyor.task_config where name like 'bs_%' order by name;

-- which claims bind: the task's option, unless the claim says otherwise
select conveyor.enqueue('bs_plain') as p1 \gset
select conveyor.enqueue('bs_task') as t1 \gset
select conveyor.enqueue('bs_task') as t2 \gset
select conveyor.enqueue('bs_task') as t3 \gset
select count(*) from conveyor.claim_runs('bs', 'w1', 1, tasks => array['bs_plain']);
select count(*) from conveyor.claim_runs('bs', 'w2', 1, tasks => array['bs_task']);
select count(*) from conveyor.claim_runs('bs', 'w3', 1, tasks => array['bs_task'], bind_session => false);
select count(*) from conveyor.claim_run('bs', 'w4', tasks => array['bs_plain', 'bs_task'], bind_session => true);
select r.id = :'p1' as p1, r.id = :'t1' as t1, r.id = :'t2' as t2, r.id = :'t3' as t3, r.worker,
       r.session_pid = pg_backend_pid() as bound_here
from conveyor.runs r where r.queue = 'bs' order by r.worker;
-- the session: this backend's pid and start, as pg_stat_activity shows them; one row however
-- many claims it made
select s.pid = pg_backend_pid() as pid, s.started_at = a.backend_start as started, s.worker
from conveyor.sessions s join pg_stat_activity a on a.pid = s.pid
where s.pid = pg_backend_pid();

-- a live session's runs stay running, tick after tick
select regress.at('2030-01-01 00:00:10+00');
select crashed, timed_out from conveyor.tick();
select count(*) as running from conveyor.runs where queue = 'bs' and status = 'running';

-- the pid now belongs to a backend that started at another time: the session is gone
insert into conveyor.sessions (pid, started_at, worker, bound_at)
select pid, started_at - interval '1 hour', 'older', bound_at from conveyor.sessions where pid = pg_backend_pid();
update conveyor.runs set session_started_at = session_started_at - interval '1 hour' where id = :'t1';
select crashed, timed_out from conveyor.tick();
select regress.counts(:'t1'), regress.attempts(:'t1');
select regexp_replace(regress.mask(error ->> 'message'), 'pid [0-9]+', 'pid <pid>') as message from conveyor.runs where id = :'t1';
-- and its row goes with its last running run; this session's own row stays
select count(*) filter (where started_at < a.backend_start) as gone, count(*) filter (where started_at = a.backend_start) as live
from conveyor.sessions s join pg_stat_activity a on a.pid = s.pid where s.pid = pg_backend_pid();

-- no backend has the pid at all (2147483647 is above any pid Linux hands out)
insert into conveyor.sessions (pid, started_at, worker, bound_at)
select 2147483647, started_at, 'gone', bound_at from conveyor.sessions where pid = pg_backend_pid();
update conveyor.runs set session_pid = 2147483647 where id = :'t3';
select crashed, timed_out from conveyor.tick();
select regress.counts(:'t3'), regress.attempts(:'t3');
select count(*) as rows_left from conveyor.sessions where pid = 2147483647;

-- unbound runs still wait for their lease (30s default)
select regress.counts(:'p1'), regress.counts(:'t2');
select regress.at('2030-01-01 00:00:31+00');
select crashed, timed_out from conveyor.tick();
select regress.counts(:'p1'), regress.counts(:'t2');
select regress.mask(error ->> 'message') as message from conveyor.runs where id = :'t2';
rollback;
