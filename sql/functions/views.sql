-- functions/views.sql: what dashboards read. Every view is plain SQL over the run, attempt and event
-- tables; "recent" windows are measured from conveyor._now(). Retry pressure (failures that
-- were retried) is reported apart from releases (business waiting), never summed with them.

-- queue_stats: per queue, runs by status now, the lag of the oldest claimable run (workers
-- behind) and of the oldest due run not yet delivered (tick behind), and what finished,
-- retried and released in the last 5 minutes.
create or replace view conveyor.queue_stats as
with now as (select conveyor._now() as t),
counts as (
    select r.queue,
           count(*) filter (where r.status = 'scheduled') as scheduled,
           count(*) filter (where r.status = 'queued') as queued,
           count(*) filter (where r.status = 'running') as running,
           count(*) filter (where r.status = 'retrying') as retrying,
           count(*) filter (where r.status = 'released') as released,
           count(*) filter (where r.status = 'succeeded') as succeeded,
           count(*) filter (where r.status = 'failed') as failed,
           count(*) filter (where r.status = 'cancelled') as cancelled,
           count(*) filter (where r.status = 'skipped') as skipped,
           min(r.run_at) filter (where r.status = 'queued') as oldest_queued,
           min(r.run_at) filter (where conveyor._waiting(r.status)
                                   and r.run_at <= (select t from now)) as oldest_undelivered
    from conveyor.runs r
    group by r.queue
),
recent as (
    select a.queue,
           count(*) filter (where a.outcome = 'succeeded') as succeeded_5m,
           count(*) filter (where conveyor._is_failure(a.outcome)) as failures_5m,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is not null) as retries_5m,
           count(*) filter (where a.outcome = 'released') as releases_5m
    from conveyor.attempts a, now
    where a.finished_at > now.t - interval '5 minutes' and a.finished_at <= now.t
    group by a.queue
)
select q.name as queue, now.t as as_of, q.paused, q.concurrency,
       coalesce(c.scheduled, 0) as scheduled, coalesce(c.queued, 0) as queued, coalesce(c.running, 0) as running,
       coalesce(c.retrying, 0) as retrying, coalesce(c.released, 0) as released,
       coalesce(c.succeeded, 0) as succeeded, coalesce(c.failed, 0) as failed,
       coalesce(c.cancelled, 0) as cancelled, coalesce(c.skipped, 0) as skipped,
       -- clamped to what numeric(12, 3) holds (31 years): no row can make the view fail for everyone
       least(greatest(coalesce(extract(epoch from now.t - c.oldest_queued), 0), -999999999), 999999999)::numeric(12, 3)
           as lag_seconds,
       least(greatest(coalesce(extract(epoch from now.t - c.oldest_undelivered), 0), -999999999), 999999999)::numeric(12, 3)
           as delivery_lag_seconds,
       coalesce(r.succeeded_5m, 0) as succeeded_5m,
       (coalesce(r.succeeded_5m, 0) / 300.0)::numeric(12, 3) as throughput_per_s_5m,
       coalesce(r.failures_5m, 0) as failures_5m,
       coalesce(r.retries_5m, 0) as retries_5m,
       coalesce(r.releases_5m, 0) as releases_5m
from conveyor.queues q
cross join now
left join counts c on c.queue = q.name
left join recent r on r.queue = q.name;

comment on view conveyor.queue_stats is
    'per queue at as_of: runs by status, lag_seconds (oldest claimable run), delivery_lag_seconds (oldest due run tick has not delivered: grows if tick stops), and the last 5 minutes: succeeded, throughput, failures, retries (failure pressure) and releases (waiting)';

-- task_stats: per task, runs by status now (kept runs: retention), the retry and release
-- counters of those runs, and the attempts of the last hour: how many, failures, retries,
-- releases, mean duration of successful ones.
create or replace view conveyor.task_stats as
with now as (select conveyor._now() as t),
counts as (
    select r.task,
           count(*) filter (where r.status = 'scheduled') as scheduled,
           count(*) filter (where r.status = 'queued') as queued,
           count(*) filter (where r.status = 'running') as running,
           count(*) filter (where r.status = 'retrying') as retrying,
           count(*) filter (where r.status = 'released') as released,
           count(*) filter (where r.status = 'succeeded') as succeeded,
           count(*) filter (where r.status = 'failed') as failed,
           count(*) filter (where r.status = 'cancelled') as cancelled,
           sum(r.retries) as retries,
           sum(r.releases) as releases
    from conveyor.runs r
    group by r.task
),
recent as (
    select a.task,
           count(*) as attempts_1h,
           count(*) filter (where conveyor._is_failure(a.outcome)) as failures_1h,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is not null) as retries_1h,
           count(*) filter (where a.outcome = 'released') as releases_1h,
           avg(extract(epoch from a.finished_at - a.started_at)) filter (where a.outcome = 'succeeded') as mean_seconds
    from conveyor.attempts a, now
    where a.finished_at > now.t - interval '1 hour' and a.finished_at <= now.t
    group by a.task
)
select t.name as task, t.kind, t.queue, t.enabled, t.version,
       coalesce(c.scheduled, 0) as scheduled, coalesce(c.queued, 0) as queued, coalesce(c.running, 0) as running,
       coalesce(c.retrying, 0) as retrying, coalesce(c.released, 0) as released,
       coalesce(c.succeeded, 0) as succeeded, coalesce(c.failed, 0) as failed, coalesce(c.cancelled, 0) as cancelled,
       coalesce(c.retries, 0) as retries, coalesce(c.releases, 0) as releases,
       coalesce(r.attempts_1h, 0) as attempts_1h, coalesce(r.failures_1h, 0) as failures_1h,
       coalesce(r.retries_1h, 0) as retries_1h, coalesce(r.releases_1h, 0) as releases_1h,
       r.mean_seconds::numeric(12, 3) as mean_seconds_1h
from conveyor.tasks t
left join counts c on c.task = t.name
left join recent r on r.task = t.name;

comment on view conveyor.task_stats is
    'per task: runs by status, retries and releases of the runs kept, and the last hour of attempts (failures, retries, releases, mean duration)';

-- recent_failures: failed attempts of the last 24 hours, newest first, with their error.
create or replace view conveyor.recent_failures as
select a.finished_at, a.run_id, a.task, a.queue, a.attempt, a.outcome,
       a.error ->> 'code' as code, a.error ->> 'message' as message, a.error -> 'meta' as meta,
       a.worker, r.status as run_status, a.delay as retry_in, a.finished_at + a.delay as retry_at
from conveyor.attempts a
left join conveyor.runs r on r.id = a.run_id
where conveyor._is_failure(a.outcome)
  and a.finished_at > conveyor._now() - interval '24 hours'
order by a.finished_at desc;

comment on view conveyor.recent_failures is
    'failed, timed-out, crashed and log-overflow attempts of the last 24 hours, newest first (retry_at: when it was due again; null if not retried)';

-- throughput: per queue and minute, the last hour (every minute, zeros included): attempts
-- succeeded, retried (failed and retried), failed (for good) and released, for charts.
create or replace view conveyor.throughput as
with now as (select date_trunc('minute', conveyor._now()) as t),
minutes as (
    select q.name as queue, m.minute
    from conveyor.queues q
    cross join now
    cross join generate_series(now.t - interval '59 minutes', now.t, interval '1 minute') as m(minute)
),
counts as (
    select a.queue, date_trunc('minute', a.finished_at) as minute,
           count(*) filter (where a.outcome = 'succeeded') as succeeded,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is not null) as retried,
           count(*) filter (where conveyor._is_failure(a.outcome) and a.delay is null) as failed,
           count(*) filter (where a.outcome = 'released') as released
    from conveyor.attempts a, now
    where a.finished_at >= now.t - interval '59 minutes' and a.finished_at < now.t + interval '1 minute'
    group by 1, 2
)
select m.queue, m.minute,
       coalesce(c.succeeded, 0) as succeeded, coalesce(c.retried, 0) as retried,
       coalesce(c.failed, 0) as failed, coalesce(c.released, 0) as released
from minutes m
left join counts c on c.queue = m.queue and c.minute = m.minute
order by m.minute, m.queue;

comment on view conveyor.throughput is
    'per queue and minute of the last hour (all 60 minutes): attempts succeeded, retried, failed and released';

-- run_history: a run's attempts and events in time order, one row each (its timeline).
create or replace view conveyor.run_history as
select e.run_id, e.at, 'event' as kind, e.type::text as what, e.attempt, e.data as detail
from conveyor.events e
union all
select a.run_id, a.finished_at, 'attempt', a.outcome::text, a.attempt,
       jsonb_strip_nulls(jsonb_build_object('attempt_id', a.id::text, 'worker', a.worker,
                                            'started_at', a.started_at, 'error', a.error, 'reason', a.reason,
                                            'delay', conveyor._duration_text(a.delay)))
from conveyor.attempts a;

comment on view conveyor.run_history is 'each run''s events and ended attempts (filter by run_id, order by at)';

-- counters: monotonic totals per queue and task, which pruning never lowers (docs/counters.md
-- "Totals"): counter is `enqueued` (runs created), `attempt.<outcome>` (attempts ended so) or
-- `retried` (failures that led to a retry). The totals the tick step `count` folded plus the
-- deltas it has not folded yet: exact in every snapshot.
create or replace view conveyor.counters as
select c.queue, c.task, c.counter, sum(c.n)::bigint as value
from (select t.queue, t.task, t.counter, t.n from conveyor._counters t
      union all
      select d.queue, d.task, d.counter, d.n from conveyor._counter_deltas d) c
group by c.queue, c.task, c.counter;

comment on view conveyor.counters is 'monotonic totals per queue and task: enqueued, attempt.<outcome>, retried (never lowered by pruning)';

-- rate_limits: each rate limit (a queue's or a task's): its limit and period, the runs started
-- in the window now, the room left, its queued runs, and those of them the limit holds back
-- (all of them while there is no room). A task's limit counts its runs in every queue.
create or replace view conveyor.rate_limits as
select l.scope, l.name, l.n as "limit", l.period, w.started, w.room,
       q.queued,
       case when w.room = 0 then q.queued else 0 end as held_back
from (select 'queue' as scope, q.name, q.rate_limit_n as n, q.rate_limit_period as period
      from conveyor.queues q where q.rate_limit_n is not null
      union all
      select 'task', t.name, t.rate_limit_n, t.rate_limit_period
      from conveyor.tasks t where t.rate_limit_n is not null) l
cross join lateral (
    -- per shard: its share less its starts of the window
    select coalesce(sum(h.used), 0)::bigint as started, coalesce(sum(greatest(h.quota - h.used, 0)), 0)::bigint as room
    from (select r.quota, coalesce((select sum(s.n) from conveyor._rate_starts s
                                    where s.scope = r.scope and s.name = r.name and s.shard = r.shard
                                      and s.at > conveyor._now() - l.period), 0) as used
          from conveyor._rate_limits r where r.scope = l.scope and r.name = l.name) h) w
cross join lateral (
    select case l.scope
        when 'queue' then (select count(*) from conveyor.runs r where r.status = 'queued' and r.queue = l.name)
        else (select count(*) from conveyor.runs r where r.status = 'queued' and r.task = l.name)
    end as queued) q;

comment on view conveyor.rate_limits is 'each rate limit: limit, period, started in the window, room left, queued and held-back runs';

-- key_limits: each key limit (a queue's or a task's key_concurrency and key_rate_limit): the
-- keys with runs queued or running under it, how many of those keys are at the limit (all the
-- runs they may run are running, or their rate window is full), the runs running and queued,
-- and the queued runs the limit holds back (those of the keys at the limit).
create or replace view conveyor.key_limits as
select l.scope, l.name, l.conc as key_concurrency, l.rate_n as key_rate_limit, l.rate_p as key_rate_period,
       count(k.key) as keys,
       count(k.key) filter (where k.at_limit) as keys_at_limit,
       coalesce(sum(k.running), 0)::bigint as running,
       coalesce(sum(k.queued), 0)::bigint as queued,
       coalesce(sum(k.queued) filter (where k.at_limit), 0)::bigint as held_back
from (select 'queue' as scope, q.name, q.key_concurrency as conc, q.key_rate_limit_n as rate_n, q.key_rate_limit_period as rate_p
      from conveyor.queues q where q.key_concurrency is not null or q.key_rate_limit_n is not null
      union all
      select 'task', t.name, t.key_concurrency, t.key_rate_limit_n, t.key_rate_limit_period
      from conveyor.tasks t where t.key_concurrency is not null or t.key_rate_limit_n is not null) l
left join lateral (
    select c.key, c.running, c.queued,
           c.running >= l.conc
           or l.rate_n <= (select coalesce(sum(s.n), 0) from conveyor._rate_starts s
                           where s.scope = l.scope || '_key' and s.name = l.name and s.key = c.key
                             and s.at > conveyor._now() - l.rate_p) as at_limit
    from (select x.key, sum(x.running) as running, sum(x.queued) as queued
          -- each scope and status by its index (a branch whose scope is not the limit's is skipped)
          from (select r.concurrency_key as key, 0 as running, 1 as queued from conveyor.runs r
                where l.scope = 'queue' and r.queue = l.name and r.status = 'queued' and r.concurrency_key is not null
                union all
                select r.concurrency_key, 1, 0 from conveyor.runs r
                where l.scope = 'queue' and r.queue = l.name and r.status = 'running' and r.concurrency_key is not null
                union all
                select r.concurrency_key, (r.status = 'running')::int, (r.status = 'queued')::int from conveyor.runs r
                where l.scope = 'task' and r.task = l.name and r.status in ('queued', 'running')
                  and r.concurrency_key is not null) x
          group by x.key) c
) k on true
group by l.scope, l.name, l.conc, l.rate_n, l.rate_p;

comment on view conveyor.key_limits is 'each key limit: keys with runs, keys at the limit, running, queued and held-back runs';

-- _metric_label: a Prometheus label value, escaped.
create or replace function conveyor._metric_label(value text)
returns text
language sql
immutable
as $$
    select '"' operator(pg_catalog.||)
           pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(value, '\', '\\'), '"', '\"'), E'\n', '\n')
           operator(pg_catalog.||) '"'
$$;

-- metrics: the figures of queue_stats, tick's own counters (conveyor._tick_stats, monotonic) and
-- conveyor.counters in Prometheus text exposition format: each family's HELP
-- and TYPE lines, then its samples ordered by queue and label (a family stays in one block, as
-- the format requires).
create or replace function conveyor.metrics()
returns text
language sql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    with s as (select * from conveyor.queue_stats),
    family (ord, name, type, help) as (values
        (1, 'conveyor_runs', 'gauge', 'Runs by queue and status.'),
        (2, 'conveyor_queue_lag_seconds', 'gauge', 'Age of the oldest claimable run.'),
        (3, 'conveyor_queue_delivery_lag_seconds', 'gauge', 'Age of the oldest due run not yet delivered by tick.'),
        (4, 'conveyor_attempts_5m', 'gauge', 'Attempts ended in the last 5 minutes, by kind.'),
        (5, 'conveyor_queue_paused', 'gauge', 'Whether the queue is paused.'),
        (6, 'conveyor_tick_step_runs_total', 'counter', 'Calls of each tick step.'),
        (7, 'conveyor_tick_step_failures_total', 'counter', 'Calls of each tick step that failed whole.'),
        (8, 'conveyor_tick_step_changed_total', 'counter', 'Rows each tick step changed.'),
        (9, 'conveyor_tick_step_skipped_total', 'counter', 'Rows or queues a tick step left for a later tick because a client held their lock.'),
        (10, 'conveyor_tick_step_quarantined_total', 'counter', 'Runs a tick step set aside because they failed alone.'),
        (11, 'conveyor_quarantined_runs', 'gauge', 'Runs set aside by a tick step now (conveyor.quarantine).'),
        (12, 'conveyor_runs_enqueued_total', 'counter', 'Runs created (enqueued, scheduled or fired), by queue and task.'),
        (13, 'conveyor_attempts_total', 'counter', 'Attempts ended, by queue, task and outcome.'),
        (14, 'conveyor_retries_total', 'counter', 'Failed attempts that led to a retry, by queue and task.'),
        (15, 'conveyor_releases_total', 'counter', 'Attempts released (business waiting, not a failure), by queue and task: attempts_total with outcome released.'),
        (16, 'conveyor_rate_limit_room', 'gauge', 'Runs a rate limit lets start now (its limit less the starts of its window), by scope (queue or task) and name.'),
        (17, 'conveyor_rate_limit_held_back_runs', 'gauge', 'Queued runs a rate limit holds back now (all of its queued runs while it has no room).'),
        (18, 'conveyor_key_limit_keys_at_limit', 'gauge', 'Concurrency keys at a key limit now (key_concurrency or key_rate_limit), by scope (queue or task) and name.'),
        (19, 'conveyor_key_limit_held_back_runs', 'gauge', 'Queued runs a key limit holds back now (those of its keys at the limit).')
    ),
    -- conveyor.counters, read once
    counter as (select * from conveyor.counters),
    sample (family, labels, value) as (
        select 'conveyor_runs', format('queue=%s,status=%s', conveyor._metric_label(s.queue), conveyor._metric_label(st.status)),
               st.n::text
        from s cross join lateral (values
            ('scheduled', s.scheduled), ('queued', s.queued), ('running', s.running), ('retrying', s.retrying),
            ('released', s.released), ('succeeded', s.succeeded), ('failed', s.failed),
            ('cancelled', s.cancelled), ('skipped', s.skipped)) as st(status, n)
        union all
        select 'conveyor_queue_lag_seconds', 'queue=' || conveyor._metric_label(s.queue), s.lag_seconds::text from s
        union all
        select 'conveyor_queue_delivery_lag_seconds', 'queue=' || conveyor._metric_label(s.queue),
               s.delivery_lag_seconds::text from s
        union all
        select 'conveyor_attempts_5m', format('queue=%s,kind=%s', conveyor._metric_label(s.queue), conveyor._metric_label(k.kind)),
               k.n::text
        from s cross join lateral (values
            ('succeeded', s.succeeded_5m), ('failed', s.failures_5m), ('retried', s.retries_5m),
            ('released', s.releases_5m)) as k(kind, n)
        union all
        select 'conveyor_queue_paused', 'queue=' || conveyor._metric_label(s.queue), s.paused::int::text from s
        union all
        -- the worker's and the manual ticks' counters, summed (each monotonic, so the sum is)
        select f.name, 'step=' || conveyor._metric_label(t.step),
               (case f.name when 'conveyor_tick_step_runs_total' then t.runs
                            when 'conveyor_tick_step_failures_total' then t.failures
                            when 'conveyor_tick_step_changed_total' then t.changed
                            when 'conveyor_tick_step_skipped_total' then t.skipped
                            else t.quarantined end)::text
        from (select s.step, sum(s.runs) as runs, sum(s.failures) as failures, sum(s.changed) as changed,
                     sum(s.skipped) as skipped, sum(s.quarantined) as quarantined
              from conveyor._tick_stats s group by s.step) t
        cross join (values ('conveyor_tick_step_runs_total'), ('conveyor_tick_step_failures_total'),
                           ('conveyor_tick_step_changed_total'), ('conveyor_tick_step_skipped_total'),
                           ('conveyor_tick_step_quarantined_total')) as f(name)
        union all
        select 'conveyor_quarantined_runs', 'step=' || conveyor._metric_label(q.step),
               (count(*) filter (where q.retry_at > conveyor._now()))::text
        from conveyor.quarantine q
        group by q.step
        union all
        select case when c.counter = 'enqueued' then 'conveyor_runs_enqueued_total' else 'conveyor_retries_total' end,
               format('queue=%s,task=%s', conveyor._metric_label(c.queue), conveyor._metric_label(c.task)),
               c.value::text
        from counter c where c.counter in ('enqueued', 'retried')
        union all
        select 'conveyor_attempts_total',
               format('queue=%s,task=%s,outcome=%s', conveyor._metric_label(c.queue), conveyor._metric_label(c.task),
                      conveyor._metric_label(substr(c.counter, length('attempt.') + 1))),
               c.value::text
        from counter c where c.counter like 'attempt.%'
        union all
        select 'conveyor_releases_total',
               format('queue=%s,task=%s', conveyor._metric_label(c.queue), conveyor._metric_label(c.task)),
               c.value::text
        from counter c where c.counter = 'attempt.released'
        union all
        select f.name, format('scope=%s,name=%s', conveyor._metric_label(l.scope), conveyor._metric_label(l.name)),
               (case f.name when 'conveyor_rate_limit_room' then l.room else l.held_back end)::text
        from conveyor.rate_limits l
        cross join (values ('conveyor_rate_limit_room'), ('conveyor_rate_limit_held_back_runs')) as f(name)
        union all
        select f.name, format('scope=%s,name=%s', conveyor._metric_label(l.scope), conveyor._metric_label(l.name)),
               (case f.name when 'conveyor_key_limit_keys_at_limit' then l.keys_at_limit else l.held_back end)::text
        from conveyor.key_limits l
        cross join (values ('conveyor_key_limit_keys_at_limit'), ('conveyor_key_limit_held_back_runs')) as f(name)
    ),
    block as (
        select f.ord,
               format(E'# HELP %s %s\n# TYPE %s %s', f.name, f.help, f.name, f.type)
               || coalesce(E'\n' || string_agg(format('%s{%s} %s', x.family, x.labels, x.value),
                                                E'\n' order by x.labels) filter (where x.family is not null), '') as text
        from family f
        left join sample x on x.family = f.name
        group by f.ord, f.name, f.type, f.help
    )
    select string_agg(b.text, E'\n' order by b.ord) || E'\n' from block b
$$;

comment on function conveyor.metrics() is 'queue figures in Prometheus text exposition format (serve it from any HTTP endpoint)';

-- _dashboard_views: the views above that view_rows serves; pg_conveyor_router mirrors the same
-- list (it asks a shard for it), so a view added here reaches the router's mirror too.
create or replace function conveyor._dashboard_views()
returns text[]
language sql
immutable
as $$
    select array['queue_stats', 'task_stats', 'recent_failures', 'throughput', 'run_history',
                 'counters', 'rate_limits', 'key_limits']
$$;

-- view_rows: the rows of one of the views above as JSON, for pg_conveyor_router (router/router.sql),
-- which gathers them from every shard into views of the same names. Runs with the caller's
-- rights: whoever may read the view may read its rows this way, and no one else.
create or replace function conveyor.view_rows(view text)
returns setof jsonb
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if view is null or not (view = any (conveyor._dashboard_views())) then
        perform conveyor._raise_invalid(format('view_rows: no view %s: expected one of %s',
                                               coalesce(quote_literal(view), 'null'), array_to_string(conveyor._dashboard_views(), ', ')));
    end if;
    return query execute format('select to_jsonb(v) from conveyor.%I v', view);
end
$$;

comment on function conveyor.view_rows(text) is 'the rows of a dashboard view as JSON (what pg_conveyor_router gathers from each shard)';
