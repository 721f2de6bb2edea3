-- Step 3: schema and library 0.1.0, background worker live. Write the data an upgrade must
-- carry over: runs in every status (one running under a lease whose token is kept), counters
-- of a bounded queue and a capped task, a cron task with a skipped firing, a service with two
-- live replicas, outbox rows (published, pending, relay-acked, relay-claimed), logs, attempts,
-- events and an operator's defaults.
--
-- Time: this session's clock is t0 + a few minutes (conveyor.test_clock). The worker ticks on
-- the real clock, long before t0, so it cannot deliver, expire or fire anything of this data
-- set behind the check's back; leases are 1h and waiting runs are due 30 minutes or a day
-- after t0, so nothing moves until step 7 moves the clock on purpose.
\ir lib.sql
select pg_temp.at('0') \g /dev/null

-- configuration: an operator's defaults, a bounded queue, tasks with retry policies, a cron
-- task that skips overlapping firings, a service with two replicas
do $$
begin
    perform conveyor.set_defaults('{"retention": "30d", "log_max_size": 65536}');
    perform conveyor.set_queue('bounded', concurrency => 5);
    perform conveyor.define_task('upgrade.plain', queue => 'work');
    perform conveyor.define_task('upgrade.once', queue => 'work', max_attempts => 1);
    perform conveyor.define_task('upgrade.retry', queue => 'work', max_attempts => 3,
                                 backoff => 'constant', delay => '30m', max_delay => '30m');
    perform conveyor.define_task('upgrade.capped', queue => 'bounded', parallelism => 3);
    perform conveyor.define_task('upgrade.cron', queue => 'cron', schedule => '* * * * *', on_overlap => 'skip',
                                 options => '{"payload": {"kind": "cron"}}');
    perform conveyor.define_task('upgrade.probe', queue => 'probe');
    -- service and its replicas in one transaction: the worker never sees it without them
    perform conveyor.define_service('upgrade.service', replicas => 2, queue => 'services');
    perform conveyor.start_service('upgrade.service');
end
$$;

-- succeeded: claimed, logged, completed with a result
do $$
declare
    v_run conveyor.ulid := conveyor.enqueue('upgrade.plain', '{"case": "succeeded"}');
    c conveyor.claimed_run := pg_temp.claim('work', v_run);
begin
    perform pg_temp.expect('append_log', conveyor.append_log(v_run, c.lease_token, 'succeeded run, attempt 1' || chr(10)), 'appended');
    perform pg_temp.expect('complete_run', conveyor.complete_run(v_run, c.lease_token, '{"ok": true}')::text, 'succeeded');
    perform pg_temp.remember('run.succeeded', v_run::text);
end
$$;

-- failed: no retry budget (max_attempts 1); the failure carries meta
do $$
declare
    v_run conveyor.ulid := conveyor.enqueue('upgrade.once', '{"case": "failed"}');
    c conveyor.claimed_run := pg_temp.claim('work', v_run);
begin
    perform conveyor.append_log(v_run, c.lease_token, 'failed run, attempt 1' || chr(10));
    perform pg_temp.expect('fail_run', conveyor.fail_run(v_run, c.lease_token, 'upstream said no', '{"status": 503}')::text, 'failed');
    perform pg_temp.remember('run.failed', v_run::text);
end
$$;

-- retrying: first attempt failed, budget left; due again 30 minutes after t0 (step 7 claims it)
do $$
declare
    v_run conveyor.ulid := conveyor.enqueue('upgrade.retry', '{"case": "retrying"}');
    c conveyor.claimed_run := pg_temp.claim('work', v_run);
begin
    perform pg_temp.expect('fail_run', conveyor.fail_run(v_run, c.lease_token, 'transient')::text, 'retrying');
    perform pg_temp.remember('run.retrying', v_run::text);
    perform pg_temp.remember('run.retrying.attempt1', c.attempt_id::text);
end
$$;

-- released: business waiting for a day (not a failure)
do $$
declare
    v_run conveyor.ulid := conveyor.enqueue('upgrade.plain', '{"case": "released"}');
    c conveyor.claimed_run := pg_temp.claim('work', v_run);
begin
    perform pg_temp.expect('release_run', conveyor.release_run(v_run, c.lease_token, '1d', 'waiting for upstream')::text, 'released');
    perform pg_temp.remember('run.released', v_run::text);
end
$$;

-- cancelled: scheduled for tomorrow, cancelled before it ran
do $$
declare
    v_run conveyor.ulid := conveyor.enqueue('upgrade.plain', '{"case": "cancelled"}', delay => '1d');
begin
    perform pg_temp.expect('cancel_run', conveyor.cancel_run(v_run), 'cancelled');
    perform pg_temp.remember('run.cancelled', v_run::text);
end
$$;

-- running: claimed under a 1h lease, heartbeat, a log chunk; step 7 completes it with this token
do $$
declare
    v_run conveyor.ulid := conveyor.enqueue('upgrade.plain', '{"case": "running"}', priority => 2);
    c conveyor.claimed_run := pg_temp.claim('work', v_run);
begin
    perform pg_temp.expect('heartbeat', conveyor.heartbeat(v_run, c.lease_token, '1h'), false);
    perform conveyor.append_log(v_run, c.lease_token, 'running run, still working' || chr(10));
    perform pg_temp.remember('run.running', v_run::text);
    perform pg_temp.remember('run.running.token', c.lease_token::text);
end
$$;

-- queued (with an idempotency key: step 7 enqueues the same key again) and scheduled (a child)
do $$
declare
    v_queued conveyor.ulid := conveyor.enqueue('upgrade.plain', '{"case": "queued"}', priority => 3,
                                               idempotency_key => 'upgrade-check-queued');
    v_scheduled conveyor.ulid := conveyor.enqueue('upgrade.plain', '{"case": "scheduled"}', delay => '1d',
                                                  parent_run_id => pg_temp.fact('run.succeeded')::conveyor.ulid);
begin
    perform pg_temp.remember('run.queued', v_queued::text);
    perform pg_temp.remember('run.scheduled', v_scheduled::text);
end
$$;

-- bounded queue and capped task: one running, one queued, so queues.delivered = tasks.active = 2
do $$
declare
    v_running conveyor.ulid := conveyor.enqueue('upgrade.capped', '{"case": "bounded running"}');
    c conveyor.claimed_run := pg_temp.claim('bounded', v_running);
    v_queued conveyor.ulid := conveyor.enqueue('upgrade.capped', '{"case": "bounded queued"}');
begin
    perform pg_temp.remember('run.bounded.running', v_running::text);
    perform pg_temp.remember('run.bounded.running.token', c.lease_token::text);
    perform pg_temp.remember('run.bounded.queued', v_queued::text);
end
$$;

-- outbox: published by tick (due now), pending (due tomorrow), acked by a relay, claimed by a
-- relay and not acked
do $$
declare
    v_acked conveyor.ulid;
    v_claim uuid;
begin
    perform pg_temp.remember('outbox.published', conveyor.publish('upgrade.events', '{"m": 1}')::text);
    perform pg_temp.remember('outbox.pending', conveyor.publish('upgrade.events', '{"m": 2}',
                                                                conveyor._now() + interval '1 day')::text);
    v_acked := conveyor.publish('upgrade.relay', '{"m": 3}');
    select o.claim_token into v_claim from conveyor.outbox_claim('relay-1', array['upgrade.relay'], 1, '1h') o;
    perform pg_temp.expect('outbox_ack', conveyor.outbox_ack(array[v_acked], v_claim), 1);
    perform pg_temp.remember('outbox.acked', v_acked::text);
    perform pg_temp.remember('outbox.claimed', conveyor.publish('upgrade.relay', '{"m": 4}')::text);
    perform conveyor.outbox_claim('relay-1', array['upgrade.relay'], 1, '1h');
end
$$;

-- tick at t0: delivers the service replicas (queued) and flushes the due outbox rows
select pg_temp.check('tick at t0 delivers both service replicas', (select delivered from conveyor.tick()) = 2);
-- a service replica under a 1h lease; the other stays queued
do $$
declare
    c conveyor.claimed_run := pg_temp.claim('services', null);
begin
    perform pg_temp.remember('run.service.running', c.run_id::text);
    perform pg_temp.remember('run.service.running.token', c.lease_token::text);
end
$$;

-- cron: the 00:01 firing runs (queued, not claimed: still in flight), so the 00:02 firing is
-- recorded as skipped (on_overlap = skip)
select pg_temp.at('1 minute') \g /dev/null
select pg_temp.check('tick at t0+1m fires the first cron firing', (select fired from conveyor.tick()) = 1);
select pg_temp.at('2 minutes') \g /dev/null
select pg_temp.check('tick at t0+2m fires nothing (the firing is skipped)', (select fired from conveyor.tick()) = 0);
select pg_temp.check('the t0+2m firing is recorded as skipped',
    exists (select from conveyor.runs where task = 'upgrade.cron' and status = 'skipped' and fire_at = pg_temp.t('2 minutes')));
select pg_temp.remember('run.cron.first', (select id::text from conveyor.runs where task = 'upgrade.cron' and status = 'queued')) \g /dev/null
select pg_temp.remember('cron.next_fire_at', (select next_fire_at::text from conveyor.tasks where name = 'upgrade.cron')) \g /dev/null

-- what this step proves it wrote
select pg_temp.check('runs exist in every status',
    (select array_agg(distinct status::text order by status::text) from conveyor.runs)
    = (select array_agg(s::text order by s::text) from unnest(enum_range(null::conveyor.run_status)) s),
    (select string_agg(format('%s=%s', status, n), ' ' order by status) from (select status, count(*) n from conveyor.runs group by status) x));
select pg_temp.check('the bounded queue has 2 runs delivered', (select delivered from conveyor.queues where name = 'bounded') = 2);
select pg_temp.check('the capped task has 2 runs active', (select active from conveyor.tasks where name = 'upgrade.capped') = 2);
select pg_temp.check('the service has 2 live replicas, one run each',
    (select count(distinct replica) = 2 and count(*) = 2 from conveyor.runs
     where task = 'upgrade.service' and status not in ('succeeded', 'failed', 'cancelled', 'skipped')));
select pg_temp.check('the cron task has one firing queued and one skipped',
    (select count(*) filter (where status = 'queued') = 1 and count(*) filter (where status = 'skipped') = 1
     from conveyor.runs where task = 'upgrade.cron'));
select pg_temp.check('attempts were written (4 ended attempts)', (select count(*) from conveyor.attempts) = 4);
select pg_temp.check('logs were written (3 chunks)', (select count(*) from conveyor.attempt_logs) = 3);
select pg_temp.check('events were written', (select count(*) from conveyor.events) > 20,
                     (select count(*) || ' events' from conveyor.events));
select pg_temp.check('outbox: 3 published, 1 pending, 1 acked, 1 claimed and not acked',
    (select count(*) filter (where published_at is not null) = 3 and count(*) filter (where published_at is null) = 1
            and count(*) filter (where acked_at is not null) = 1
            and count(*) filter (where claim_token is not null and acked_at is null) = 1
     from conveyor.outbox));
select pg_temp.check('an operator''s defaults row exists', (select count(*) from conveyor._defaults) = 1);

-- the reference run of the lifecycle that step 4 repeats with the new library
\set suffix ref
\ir lifecycle.sql

select pg_temp.save_facts() \g /dev/null
select pg_temp.finish('step 3 (0.1.0 data set)');
