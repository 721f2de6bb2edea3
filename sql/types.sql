-- types.sql: the SQL types of pg_conveyor and the declarations of its Rust functions.
--
-- conveyor.ulid has the storage of uuid and borrows uuid's comparison, hash and binary I/O
-- functions; only its text form (26 characters of Crockford base32) is ours. conveyor.duration
-- has the storage of interval, with binary casts both ways, so a duration parameter takes
-- '30s', '1m30s', '00:05:00' or an interval value alike.

-- ---------------------------------------------------------------------------------------------
-- ulid

create type conveyor.ulid;

create function conveyor.ulid_in(cstring) returns conveyor.ulid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_in_wrapper';
create function conveyor.ulid_out(conveyor.ulid) returns cstring
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_out_wrapper';
create function conveyor.ulid_recv(internal) returns conveyor.ulid
    immutable strict parallel safe language internal as 'uuid_recv';
create function conveyor.ulid_send(conveyor.ulid) returns bytea
    immutable strict parallel safe language internal as 'uuid_send';

create type conveyor.ulid (
    input = conveyor.ulid_in,
    output = conveyor.ulid_out,
    receive = conveyor.ulid_recv,
    send = conveyor.ulid_send,
    like = pg_catalog.uuid
);
comment on type conveyor.ulid is
    'time-ordered 128-bit id (48-bit milliseconds + 80 random bits), shown as 26 characters of Crockford base32';

create function conveyor.ulid_eq(conveyor.ulid, conveyor.ulid) returns boolean
    immutable strict parallel safe leakproof language internal as 'uuid_eq';
create function conveyor.ulid_ne(conveyor.ulid, conveyor.ulid) returns boolean
    immutable strict parallel safe leakproof language internal as 'uuid_ne';
create function conveyor.ulid_lt(conveyor.ulid, conveyor.ulid) returns boolean
    immutable strict parallel safe leakproof language internal as 'uuid_lt';
create function conveyor.ulid_le(conveyor.ulid, conveyor.ulid) returns boolean
    immutable strict parallel safe leakproof language internal as 'uuid_le';
create function conveyor.ulid_gt(conveyor.ulid, conveyor.ulid) returns boolean
    immutable strict parallel safe leakproof language internal as 'uuid_gt';
create function conveyor.ulid_ge(conveyor.ulid, conveyor.ulid) returns boolean
    immutable strict parallel safe leakproof language internal as 'uuid_ge';
create function conveyor.ulid_cmp(conveyor.ulid, conveyor.ulid) returns integer
    immutable strict parallel safe leakproof language internal as 'uuid_cmp';
create function conveyor.ulid_hash(conveyor.ulid) returns integer
    immutable strict parallel safe leakproof language internal as 'uuid_hash';
create function conveyor.ulid_hash_extended(conveyor.ulid, bigint) returns bigint
    immutable strict parallel safe leakproof language internal as 'uuid_hash_extended';
create function conveyor.ulid_sortsupport(internal) returns void
    immutable strict parallel safe language internal as 'uuid_sortsupport';

-- The comparison operators live in pg_catalog, which every session searches first, so that
-- `where id = '01H...'` works whatever the caller's search_path (operators are found by search
-- path; a caller without conveyor on it would otherwise get "operator does not exist").
create operator pg_catalog.= (
    leftarg = conveyor.ulid, rightarg = conveyor.ulid, function = conveyor.ulid_eq,
    commutator = operator(pg_catalog.=), negator = operator(pg_catalog.<>),
    restrict = eqsel, join = eqjoinsel, hashes, merges
);
create operator pg_catalog.<> (
    leftarg = conveyor.ulid, rightarg = conveyor.ulid, function = conveyor.ulid_ne,
    commutator = operator(pg_catalog.<>), negator = operator(pg_catalog.=),
    restrict = neqsel, join = neqjoinsel
);
create operator pg_catalog.< (
    leftarg = conveyor.ulid, rightarg = conveyor.ulid, function = conveyor.ulid_lt,
    commutator = operator(pg_catalog.>), negator = operator(pg_catalog.>=),
    restrict = scalarltsel, join = scalarltjoinsel
);
create operator pg_catalog.<= (
    leftarg = conveyor.ulid, rightarg = conveyor.ulid, function = conveyor.ulid_le,
    commutator = operator(pg_catalog.>=), negator = operator(pg_catalog.>),
    restrict = scalarlesel, join = scalarlejoinsel
);
create operator pg_catalog.> (
    leftarg = conveyor.ulid, rightarg = conveyor.ulid, function = conveyor.ulid_gt,
    commutator = operator(pg_catalog.<), negator = operator(pg_catalog.<=),
    restrict = scalargtsel, join = scalargtjoinsel
);
create operator pg_catalog.>= (
    leftarg = conveyor.ulid, rightarg = conveyor.ulid, function = conveyor.ulid_ge,
    commutator = operator(pg_catalog.<=), negator = operator(pg_catalog.<),
    restrict = scalargesel, join = scalargejoinsel
);

create operator class conveyor.ulid_ops default for type conveyor.ulid using btree as
    operator 1 pg_catalog.<,
    operator 2 pg_catalog.<=,
    operator 3 pg_catalog.=,
    operator 4 pg_catalog.>=,
    operator 5 pg_catalog.>,
    function 1 conveyor.ulid_cmp(conveyor.ulid, conveyor.ulid),
    function 2 conveyor.ulid_sortsupport(internal);

create operator class conveyor.ulid_hash_ops default for type conveyor.ulid using hash as
    operator 1 pg_catalog.=,
    function 1 conveyor.ulid_hash(conveyor.ulid),
    function 2 conveyor.ulid_hash_extended(conveyor.ulid, bigint);

create cast (conveyor.ulid as uuid) without function as assignment;
create cast (uuid as conveyor.ulid) without function as assignment;
-- clients that send ids as text parameters (most drivers) need no cast
create cast (text as conveyor.ulid) with inout as implicit;

-- ulid_generate: a new ULID, increasing within a backend even inside one millisecond.
create function conveyor.ulid_generate() returns conveyor.ulid
    volatile parallel safe language c as 'MODULE_PATHNAME', 'ulid_generate_wrapper';
comment on function conveyor.ulid_generate() is 'a new ULID (time-ordered; increasing within a session)';

-- ulid_timestamp: the creation time encoded in a ULID.
create function conveyor.ulid_timestamp(conveyor.ulid) returns timestamptz
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_timestamp_wrapper';
comment on function conveyor.ulid_timestamp(conveyor.ulid) is 'the millisecond timestamp a ULID carries';

-- _ulid_or_null: text to ULID, NULL when it is not one (batch input from JSON).
create function conveyor._ulid_or_null(text) returns conveyor.ulid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_ulid_or_null_wrapper';

-- _uuid_or_null: text to uuid, NULL when it is not one (lease tokens from JSON).
create function conveyor._uuid_or_null(text) returns uuid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_uuid_or_null_wrapper';

-- ---------------------------------------------------------------------------------------------
-- duration

create type conveyor.duration;

create function conveyor.duration_in(cstring) returns conveyor.duration
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_in_wrapper';
create function conveyor.duration_out(conveyor.duration) returns cstring
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_out_wrapper';
create function conveyor.duration_recv(internal) returns conveyor.duration
    immutable strict parallel safe language internal as 'interval_recv';
create function conveyor.duration_send(conveyor.duration) returns bytea
    immutable strict parallel safe language internal as 'interval_send';

create type conveyor.duration (
    input = conveyor.duration_in,
    output = conveyor.duration_out,
    receive = conveyor.duration_recv,
    send = conveyor.duration_send,
    like = pg_catalog.interval
);
comment on type conveyor.duration is
    'a length of time written as humantime (30s, 1m30s, 2h, 1d) or interval text (00:05:00); casts to and from interval';

create cast (conveyor.duration as interval) without function as implicit;
create cast (interval as conveyor.duration) without function as implicit;
-- clients that send durations as text parameters (most drivers) need no cast
create cast (text as conveyor.duration) with inout as implicit;

-- _duration_or_null: text to interval, NULL when it is not a duration (worker input).
create function conveyor._duration_or_null(text) returns interval
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_duration_or_null_wrapper';

-- _duration_text: an interval in duration notation (1m 30s), for events and views.
create function conveyor._duration_text(interval) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_duration_text_wrapper';

-- ---------------------------------------------------------------------------------------------
-- time, policy arithmetic, schedules, config validation (pure Rust)

-- _now: the transaction time, or conveyor.test_clock when a superuser set it.
create function conveyor._now() returns timestamptz
    stable parallel safe language c as 'MODULE_PATHNAME', '_now_wrapper';
comment on function conveyor._now() is
    'the current time for every conveyor comparison: now(), or the superuser-only setting conveyor.test_clock';

-- _backoff_delay: the delay before retry n under a policy (jitter applied).
create function conveyor._backoff_delay(
    backoff text, base interval, max_delay interval, custom interval[], jitter text, n integer
) returns interval
    volatile parallel safe language c as 'MODULE_PATHNAME', '_backoff_delay_wrapper';

-- _cron_next: the next firing of a schedule strictly after a time (NULL: never again).
create function conveyor._cron_next(expr text, tz text, after timestamptz) returns timestamptz
    immutable parallel safe language c as 'MODULE_PATHNAME', '_cron_next_wrapper';

-- _check_options: validate one entry's options: {"options": normalized} or {"problems": [...]}.
create function conveyor._check_options(kind text, name text, options jsonb) returns jsonb
    immutable parallel safe language c as 'MODULE_PATHNAME', '_check_options_wrapper';

-- _check_name: NULL when a task/queue name is acceptable, else what is wrong with it.
create function conveyor._check_name(kind text, name text) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_check_name_wrapper';

-- ---------------------------------------------------------------------------------------------
-- enums

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

-- _is_failure: whether an attempt outcome is a failure (counted against the retry budget and
-- shown as failure pressure); releases, stops and interruptions are not. Inlined by the planner.
create function conveyor._is_failure(outcome conveyor.attempt_outcome)
returns boolean
language sql
immutable
parallel safe
as $$ select outcome in ('failed', 'timeout', 'crashed', 'log_overflow') $$;

create type conveyor.event_type as enum (
    'run.enqueued', 'run.delivery_requested', 'run.started', 'run.succeeded', 'run.retry_scheduled',
    'run.failed', 'run.released', 'run.interrupted', 'run.cancel_requested', 'run.cancelled',
    'run.skipped', 'run.retried'
);
