-- schema/state_machine.sql: the state machine as data. What a run can be (run_status, and the
-- sets each status belongs to), how an attempt can end (attempt_outcome: whether it is a
-- failure, the status it leads to), the events, and every allowed status change. The code that
-- enforces and uses this data is sql/functions/state_machine.sql; docs/state-machine.md
-- explains it. Changed only by migrations (sql/migrations/).

-- The status of a run, in lifecycle order. Transitions are rows of conveyor.transitions.
create type conveyor.run_status as enum (
    'scheduled',  -- waiting for run_at or for queue capacity; enqueue, cron, service restart put it here; tick delivers it
    'queued',     -- claimable now; enqueue (due, capacity free), tick delivery, return_run and retry_run put it here; claim takes it
    'running',    -- claimed under a lease; complete/fail/release/return, lease expiry, timeout and cancel end it
    'succeeded',  -- terminal: complete_run; retry_run may requeue it if it has no result and no children
    'retrying',   -- waiting to retry after a retryable failure; tick delivers it at run_at
    'failed',     -- terminal: the retry budget is spent or the failure was not retryable; retry_run may requeue it
    'released',   -- waiting after release_run (business waiting, not a failure); tick delivers it at run_at
    'cancelled',  -- terminal: cancel_run, or a cancelled run's attempt ended; retry_run may requeue it
    'skipped'     -- terminal: a cron firing skipped because a run was still in flight (on_overlap = skip)
);

-- How one attempt ended. Not a run status: a timed-out attempt leaves the run retrying or failed.
create type conveyor.attempt_outcome as enum (
    'succeeded', 'failed', 'timeout', 'crashed', 'log_overflow', 'released', 'stopped', 'interrupted'
);

-- What the event log records (one row per status change, written by the transition trigger;
-- run.cancel_requested by cancel_run).
create type conveyor.event_type as enum (
    'run.enqueued', 'run.delivery_requested', 'run.started', 'run.succeeded', 'run.retry_scheduled',
    'run.failed', 'run.released', 'run.interrupted', 'run.cancel_requested', 'run.cancelled',
    'run.skipped', 'run.retried',
    -- a tick step failed on this run alone and set it aside (conveyor.quarantine)
    'run.quarantined'
);

-- run_statuses: each status with the named sets it belongs to. The helpers _finished, _waiting,
-- _delivered and _live (sql/functions/state_machine.sql) are generated from these rows, so a
-- status set is written down once, here.
create table conveyor.run_statuses (
    status conveyor.run_status primary key,
    -- terminal: finished_at is set; retention prunes it; only retry_run moves it again
    finished boolean not null,
    -- waiting for its due time (or for capacity): tick delivers it
    waiting boolean not null,
    -- counted by a bounded queue's concurrency and a capped task's parallelism
    delivered boolean not null,
    meaning text not null
);
comment on table conveyor.run_statuses is 'each run status and the sets it belongs to (finished, waiting, delivered)';

insert into conveyor.run_statuses (status, finished, waiting, delivered, meaning) values
    ('scheduled', false, true,  false, 'waiting for run_at or for queue capacity'),
    ('queued',    false, false, true,  'claimable now'),
    ('running',   false, false, true,  'claimed under a lease'),
    ('succeeded', true,  false, false, 'the work was done'),
    ('retrying',  false, true,  false, 'waiting to retry after a retryable failure'),
    ('failed',    true,  false, false, 'the retry budget is spent or the failure was not retryable'),
    ('released',  false, true,  false, 'waiting after release_run: business waiting, not a failure'),
    ('cancelled', true,  false, false, 'cancelled by an operator, or its attempt ended after a cancel request'),
    ('skipped',   true,  false, false, 'a cron firing skipped while an earlier one was in flight');

-- attempt_outcomes: how an attempt can end, whether that is a failure (counted against the
-- retry budget, shown as failure pressure) and the status it leads to. A failure leads to
-- retrying while the budget lasts and the failure is retryable, else to failed (leads_to is
-- null for them: _end_attempts decides by the budget). _is_failure and _outcome_status are
-- generated from these rows.
create table conveyor.attempt_outcomes (
    outcome conveyor.attempt_outcome primary key,
    failure boolean not null,
    leads_to conveyor.run_status,
    meaning text not null,
    constraint attempt_outcomes_failures_follow_the_budget check (failure = (leads_to is null))
);
comment on table conveyor.attempt_outcomes is 'each attempt outcome: whether it is a failure and the run status it leads to';

insert into conveyor.attempt_outcomes (outcome, failure, leads_to, meaning) values
    ('succeeded',    false, 'succeeded', 'complete_run'),
    ('failed',       true,  null,        'fail_run, or malformed worker input (configuration_invalid)'),
    ('timeout',      true,  null,        'the attempt ran past the task''s timeout (tick)'),
    ('crashed',      true,  null,        'the lease expired without a heartbeat, or the session bound to the run ended: the worker is presumed dead (tick)'),
    ('log_overflow', true,  null,        'the log outgrew log_max_size with log_on_full = kill_task'),
    ('released',     false, 'released',  'release_run: business waiting'),
    ('stopped',      false, 'cancelled', 'the attempt ended after a cancel request'),
    ('interrupted',  false, 'queued',    'return_run: the worker gave the run back unfinished');

-- transitions: every allowed (from, to) status change and the event it writes; the transition
-- trigger refuses every other change, whoever makes it (CV004).
create table conveyor.transitions (
    from_status conveyor.run_status,   -- null: the status a run may be inserted with
    to_status conveyor.run_status not null,
    event conveyor.event_type not null,
    constraint transitions_unique unique nulls not distinct (from_status, to_status)
);
comment on table conveyor.transitions is 'every allowed (from, to) status change of a run and the event it writes';

insert into conveyor.transitions (from_status, to_status, event) values
    (null,        'scheduled', 'run.enqueued'),
    (null,        'queued',    'run.enqueued'),
    (null,        'skipped',   'run.skipped'),
    ('scheduled', 'queued',    'run.delivery_requested'),
    ('retrying',  'queued',    'run.delivery_requested'),
    ('released',  'queued',    'run.delivery_requested'),
    ('queued',    'running',   'run.started'),
    ('running',   'succeeded', 'run.succeeded'),
    ('running',   'retrying',  'run.retry_scheduled'),
    ('running',   'failed',    'run.failed'),
    ('running',   'released',  'run.released'),
    ('running',   'queued',    'run.interrupted'),
    ('running',   'cancelled', 'run.cancelled'),
    ('scheduled', 'cancelled', 'run.cancelled'),
    ('queued',    'cancelled', 'run.cancelled'),
    ('retrying',  'cancelled', 'run.cancelled'),
    ('released',  'cancelled', 'run.cancelled'),
    ('failed',    'queued',    'run.retried'),
    ('cancelled', 'queued',    'run.retried'),
    ('succeeded', 'queued',    'run.retried'),
    -- retry_run into a bounded queue (or capped task) without room: waits for delivery
    ('failed',    'scheduled', 'run.retried'),
    ('cancelled', 'scheduled', 'run.retried'),
    ('succeeded', 'scheduled', 'run.retried');

-- One status change of a run, as the transition triggers hand it to _side_effects.
create type conveyor._transition as (
    run_id conveyor.ulid,
    from_status conveyor.run_status,
    to_status conveyor.run_status,
    queue text,
    task text
);

-- How one attempt ends, as _end_attempts takes it. Workers prove the attempt with their
-- lease_token; tick proves it with the attempt_id it found expired.
create type conveyor._ending as (
    run_id conveyor.ulid,
    lease_token uuid,
    attempt_id conveyor.ulid,
    outcome conveyor.attempt_outcome,
    error jsonb,
    retryable boolean,
    result jsonb,
    release_delay interval,
    reason jsonb
);
