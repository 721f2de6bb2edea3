-- Services: tick keeps `replicas` runs alive, one per replica; a replica whose run ends is
-- restarted after restart_delay with exponential backoff (capped at 60s), reset after 60s up;
-- a manual stop (cancel_run) is not restarted; scaling down asks the extra replicas to stop.
begin;
select regress.at('2030-01-01 00:00:00+00');
select conveyor.define_service('mailer', replicas => 2, queue => 'svc', payload => '{"smtp": "localhost"}');

create view pg_temp.replicas as
    select replica, status, restarts, to_char(run_at at time zone 'UTC', 'MI:SS') as due
    from conveyor.runs where task = 'mailer' and status not in ('succeeded', 'failed', 'cancelled') order by replica;

select restarted, delivered from conveyor.tick();
select * from pg_temp.replicas;
select restarted from conveyor.tick();
select c.payload, c.task from conveyor.claim_runs('svc', 'w', 10, lease => '10m') c;

-- replica 1 crashes quickly, again and again: restarted after 1s, 2s, 4s, ...
create function pg_temp.crash_replica_1(p_at text) returns text language plpgsql as $$
declare v record;
begin
    perform set_config('conveyor.test_clock', p_at, true);
    select r.id, r.lease_token into v from conveyor.runs r
    where r.task = 'mailer' and r.replica = 1 and r.status = 'running';
    perform conveyor.fail_run(v.id, v.lease_token, 'connection lost');
    perform conveyor.tick();
    return (select format('replica 1 restart %s due %s after the crash', r.restarts,
                          conveyor._duration_text(r.run_at - p_at::timestamptz))
            from conveyor.runs r where r.task = 'mailer' and r.replica = 1 and r.status = 'scheduled');
end $$;
create function pg_temp.start_due(p_at text) returns int language sql as $$
    select set_config('conveyor.test_clock', p_at, true);
    select count(*)::int from conveyor.tick() t, conveyor.claim_runs('svc', 'w', 10, lease => '10m') c;
$$;
select pg_temp.crash_replica_1('2030-01-01 00:00:05+00');
select pg_temp.start_due('2030-01-01 00:00:06+00');
select pg_temp.crash_replica_1('2030-01-01 00:00:07+00');
select pg_temp.start_due('2030-01-01 00:00:09+00');
select pg_temp.crash_replica_1('2030-01-01 00:00:10+00');
select pg_temp.start_due('2030-01-01 00:00:14+00');
-- it stays up for 2 minutes, then ends: the backoff starts over
select pg_temp.crash_replica_1('2030-01-01 00:02:14+00');
select * from pg_temp.replicas;
-- the failed runs are history: one run per restart
select count(*) as replica_1_runs from conveyor.runs where task = 'mailer' and replica = 1;

-- a manual stop is not restarted
select id as r2 from conveyor.runs where task = 'mailer' and replica = 2 and status = 'running' \gset
select conveyor.cancel_run(:'r2');
select id, lease_token from conveyor.runs where id = :'r2' \gset
select conveyor.complete_run(:'id', :'lease_token') as finished_anyway;
select conveyor.cancel_run(r.id) from conveyor.runs r where r.task = 'mailer' and r.replica = 1 and r.status in ('scheduled', 'queued');
select regress.at('2030-01-01 00:10:00+00');
select restarted from conveyor.tick();
select * from pg_temp.replicas;
-- start_service brings stopped replicas back; stop_service stops them all
select conveyor.start_service('mailer');
select * from pg_temp.replicas;
select conveyor.stop_service('mailer');
select restarted from conveyor.tick();
select * from pg_temp.replicas;
select conveyor.start_service('mailer');

-- scaling up starts the new replica; scaling down asks the extra ones to stop
select conveyor.define_service('mailer', replicas => 3, queue => 'svc', payload => '{"smtp": "localhost"}');
select restarted from conveyor.tick();
select * from pg_temp.replicas;
select count(*) from conveyor.claim_runs('svc', 'w', 10, lease => '10m');
select conveyor.define_service('mailer', replicas => 2, queue => 'svc', payload => '{"smtp": "localhost"}');
select restarted from conveyor.tick();
select replica, status, cancel_requested_at is not null as asked_to_stop from conveyor.runs
where task = 'mailer' and status = 'running' order by replica;

-- services are not enqueued, and refuse retry options
select regress.try($$select conveyor.enqueue('mailer')$$);
select regress.try($$select conveyor.define_service('mailer2', options => '{"max_attempts": 3}')$$);
select regress.try($$select conveyor.define_service('mailer2', replicas => 0)$$);
rollback;
