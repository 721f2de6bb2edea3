-- pg_conveyor_router 0.2.0: CREATE EXTENSION pg_conveyor_router runs this file.
-- Written by scripts/router-script.sh from sql/schema/types.sql, sql/schema/state_machine.sql,
-- sql/schema/tables.sql, sql/functions/rust.sql, sql/functions/errors.sql, sql/functions/roles.sql
-- and router/router.sql:
-- edit those, then run `scripts/router-script.sh`; `make lint` fails while this file is stale.
\echo Use "CREATE EXTENSION pg_conveyor_router" to load this file. \quit

-- ============================================================================================
-- the types the shards use, as they define them

-- schema/types.sql: the SQL types of pg_conveyor (ulid, duration) with their I/O, operators and
-- casts. Changed only by migrations (sql/migrations/).
--
-- conveyor.ulid has the storage of uuid and borrows uuid's comparison, hash and binary I/O
-- functions; only its text form (26 characters of Crockford base32) is ours. conveyor.duration
-- has the storage of interval, with binary casts both ways, so a duration parameter takes
-- '30s', '1m30s', '00:05:00' or an interval value alike.


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

create type conveyor.duration;

create function conveyor.duration_in(cstring) returns conveyor.duration
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_in_wrapper';

create function conveyor.duration_out(conveyor.duration) returns cstring
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_out_wrapper';

-- (0.2.0) binary input is held to the rule text input follows (0 to 100 years, no months)
create function conveyor.duration_recv(internal) returns conveyor.duration
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_recv_wrapper';

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

-- interval to duration checks what every duration must be (0 to 100 years); binary, it let an
-- interval argument bypass that rule
create function conveyor.duration_from_interval(interval) returns conveyor.duration
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'duration_from_interval_wrapper';
create cast (interval as conveyor.duration) with function conveyor.duration_from_interval(interval) as implicit;

-- clients that send durations as text parameters (most drivers) need no cast
create cast (text as conveyor.duration) with inout as implicit;

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

create type conveyor.attempt_outcome as enum (
    'succeeded', 'failed', 'timeout', 'crashed', 'log_overflow', 'released', 'stopped', 'interrupted'
);

create type conveyor.claimed_run as (
    run_id conveyor.ulid,
    lease_token uuid,
    task text,
    queue text,
    payload jsonb,
    attempt integer,          -- this attempt's number (attempts so far + 1: releases and returns count)
    failures integer,         -- failed attempts so far (what a retry policy in the handler wants)
    releases integer,         -- releases so far
    attempt_id conveyor.ulid,
    priority smallint,
    parent_run_id conveyor.ulid,
    lease_expires_at timestamptz,
    timeout_at timestamptz
);

create or replace function conveyor.ulid_partition(conveyor.ulid) returns integer
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_partition_wrapper';

create or replace function conveyor._ulid_or_null(text) returns conveyor.ulid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_ulid_or_null_wrapper';

create or replace view conveyor.error_codes (sqlstate, name, meaning) as
values
    ('CV001', 'stale_lease', 'stale lease: the token does not match the run''s current attempt (expired and reclaimed, or finished); nothing changed'),
    ('CV002', 'unknown_run', 'unknown run'),
    ('CV003', 'unknown_task', 'unknown task or service'),
    ('CV004', 'transition_not_allowed', 'a status change that conveyor.transitions does not allow'),
    ('CV005', 'retry_refused', 'retry_run refused (and why)'),
    ('CV006', 'already_finished', 'cancel_run on a run that is already finished'),
    ('CV007', 'unknown_queue', 'unknown queue (producers do not create queues: an operator does)'),
    ('CV008', 'queue_in_use', 'drop_queue of a queue that tasks use or that holds unfinished runs'),
    ('CV009', 'duplicate_run', 'enqueue with an idempotency key that matches a run of the task, under on_duplicate = reject (nothing written)'),
    ('CV010', 'invalid_configuration', 'invalid configuration (every problem listed, nothing applied)'),
    ('CV011', 'shard_unavailable', 'pg_conveyor_router: a shard did not answer (nothing changed there); also the warning of a view, count or claim that lacks a shard'),
    ('CV012', 'cluster_misconfigured', 'pg_conveyor_router: conveyor.shards is not a whole cluster (numbers 0 to N-1, N a power of two) or a shard''s conveyor.partition disagrees'),
    ('22023', 'invalid_parameter_value', 'invalid argument: payload not an object, priority out of 0-9, run_at and delay both, bad duration, bad queue name or topic, a claim under a rate limit outside READ COMMITTED'),
    ('22P02', 'invalid_text_representation', 'text that is not a ULID (or a lease token that is not a UUID)'),
    ('42501', 'insufficient_privilege', 'a role calls a function it is not granted (raised by PostgreSQL; see SECURITY.md)');

-- the shards' roles (sql/functions/roles.sql), granted the router's functions at the end

do $$
declare
    v_role text;
begin
    foreach v_role in array array['conveyor_admin', 'conveyor_producer', 'conveyor_worker', 'conveyor_reader'] loop
        if not exists (select from pg_catalog.pg_roles where rolname = v_role) then
            execute format('create role %I nologin', v_role);
        end if;
    end loop;
end
$$;

grant conveyor_producer, conveyor_worker, conveyor_reader to conveyor_admin;

-- ============================================================================================
-- router/router.sql

-- router/router.sql: pg_conveyor_router, the PL/Proxy router in front of pg_conveyor shards
-- (docs/scale-out.md). scripts/router-script.sh writes the install script from this file and
-- the shards' own type definitions (sql/schema/types.sql and friends), so both sides share one
-- definition of conveyor.ulid, conveyor.duration, the status enums and conveyor.claimed_run.
--
-- A shard is one database with pg_conveyor whose `conveyor.partition` is its number; the router
-- database holds no runs, only the cluster definition (conveyor.shards) and functions with the
-- signatures of pg_conveyor's that send each call to the shard it concerns:
--   by run id      the partition in the id (conveyor.ulid_partition): finish, heartbeat, cancel...
--   by enqueue     the queue's placement, else the concurrency key, else the idempotency key,
--                  else any shard (conveyor._enqueue_partition)
--   to all         claims visit the shards in turn from a random one until they have max;
--                  counts, views and metrics gather from every shard and say which is missing;
--                  configuration is applied to every shard.
-- Each remote call is its own transaction on the shard (PL/Proxy runs in autocommit there).

-- the cluster definition: shard number (= its conveyor.partition = its PL/Proxy partition) and
-- how to reach it. Numbers run 0..N-1 with N a power of two; apply_cluster() writes them into
-- the PL/Proxy cluster (SQL/MED server conveyor_cluster).
create table conveyor.shards (
    partition integer primary key,
    connstr text not null,
    added_at timestamptz not null default now(),
    constraint shards_partition_range check (partition between 0 and 1023)
);
comment on table conveyor.shards is 'the cluster: one row per shard database (its conveyor.partition and connect string)';

-- the cluster in force: the number of shards apply_cluster last wrote into PL/Proxy. Routing
-- counts these, not the rows of conveyor.shards (a row listed while the numbering is not
-- whole changes nothing until the cluster is applied)
create table conveyor.applied_cluster (
    one boolean primary key default true check (one),
    shards integer not null,
    applied_at timestamptz not null default now()
);
comment on table conveyor.applied_cluster is 'the number of shards in force (written by apply_cluster); routing uses it';

-- queues pinned to one shard: router enqueues go there and router claims visit only it
create table conveyor.queue_placement (
    queue text primary key,
    partition integer not null references conveyor.shards on delete restrict
);
-- the queue of each task and service, as the router's apply_config last gave it: a router
-- enqueue that names only the task goes to that queue's placement
create table conveyor.task_queue (
    task text primary key,
    queue text not null
);
comment on table conveyor.task_queue is 'each task''s queue, as the router''s last apply_config gave it (for placing enqueues that name only the task)';

comment on table conveyor.queue_placement is 'queues pinned to one shard (router enqueues go there, router claims visit only it)';

-- ---- errors (the codes are listed in conveyor.error_codes, above)

create function conveyor._raise_shard_unavailable(p_partition integer, p_what text, p_error text)
returns void language plpgsql as $$
begin
    raise exception using errcode = 'CV011',
        message = format('shard %s is unavailable: %s', p_partition, p_error),
        detail = p_what,
        hint = 'the call changed nothing on that shard; retry once it is back (router calls are idempotent per shard, see docs/scale-out.md)';
end $$;

create function conveyor._raise_cluster(p_problem text)
returns void language plpgsql as $$
begin
    raise exception using errcode = 'CV012', message = 'cluster definition: ' || p_problem,
        hint = 'see conveyor.shards and docs/scale-out.md';
end $$;

create function conveyor._raise_invalid(p_message text)
returns void language plpgsql as $$
begin
    raise exception using errcode = '22023', message = p_message;
end $$;

-- _unreachable: whether an error a PL/Proxy call raised is the shard not answering (a
-- connection refused, lost or reset) rather than an error the shard raised. Remote errors keep
-- their SQLSTATE and say REMOTE ERROR; PL/Proxy's own connection failures are XX000.
-- A shard that refuses the login (the calling role has no login, password or pg_hba entry
-- there) answered: that is the caller's error, raised, not a shard down.
create function conveyor._unreachable(p_sqlstate text, p_message text)
returns boolean language sql immutable as $$
    select (p_sqlstate = 'XX000' and p_message like 'PL/Proxy function %' and p_message not like '%REMOTE ERROR%'
            or p_sqlstate like '08%' or p_sqlstate in ('57P01', '57P02', '57P03'))
        and p_message !~* 'authentication failed|role "[^"]*" does not exist|not permitted to log in|no pg_hba\.conf entry|permission denied|password is required|password supplied'
$$;

-- ---- the cluster

-- apply_cluster: write conveyor.shards into the PL/Proxy cluster and check that every shard
-- that is new or has a new connect string answers with the partition number it is listed under
-- (the others answered when they were applied: a move needs only the moved shard up). The
-- SQL/MED server is altered in place, so user mappings (a router role's shard user and
-- password) stay. One transaction: a shard that disagrees (or is down) leaves the previous
-- definition in force. Returns the number of shards.
create function conveyor.apply_cluster()
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_n integer;
    v_max integer;
    v_in_force text[];
    v_changes text;
    v_moved integer[];
    v_shard record;
    v_seen integer;
    v_state text;
    v_message text;
begin
    -- one apply at a time (two would write the same server options from the same old ones)
    perform pg_advisory_xact_lock(hashtext('conveyor_router.apply_cluster'));
    select count(*), max(partition) into v_n, v_max from conveyor.shards;
    if v_n = 0 then
        perform conveyor._raise_cluster('no shards: conveyor.add_shard(partition, connstr) first');
    end if;
    if v_max <> v_n - 1 or (v_n & (v_n - 1)) <> 0 then
        perform conveyor._raise_cluster(format('shards must be numbered 0 to N-1 with N a power of two (1, 2, 4, ...): have %s shards, highest %s',
                                               v_n, v_max));
    end if;
    perform conveyor._check_connstr(s.connstr) from conveyor.shards s;
    select srvoptions into v_in_force from pg_foreign_server where srvname = 'conveyor_cluster';
    if not found then
        select string_agg(format('p%s %L', partition, connstr), ', ' order by partition) into v_changes from conveyor.shards;
        execute format('create server conveyor_cluster foreign data wrapper plproxy options (connection_lifetime %L, %s)', '1800', v_changes);
        -- a router role without a mapping of its own reaches the shards as itself
        execute 'create user mapping for public server conveyor_cluster';
        execute 'grant usage on foreign server conveyor_cluster to conveyor_admin, conveyor_producer, conveyor_worker, conveyor_reader';
        v_moved := array(select s.partition from conveyor.shards s order by s.partition);
    else
        -- the partitions in force ('p0=host=...'), and those new, moved (a new connect string)
        -- or gone
        with in_force as (
            select substring(opt from '^p(\d+)=')::integer as partition, substring(opt from '^p\d+=(.*)$') as connstr
            from unnest(v_in_force) opt where opt ~ '^p\d+='
        ),
        moved as (
            select s.partition, s.connstr, o.partition is null as new
            from conveyor.shards s left join in_force o using (partition)
            where o.connstr is distinct from s.connstr
        )
        select (select string_agg(c.change, ', ') from (
                    select format('%s p%s %L', case when m.new then 'add' else 'set' end, m.partition, m.connstr) as change
                    from moved m
                    union all
                    select format('drop p%s', o.partition) from in_force o where o.partition > v_max) c),
               array(select m.partition from moved m order by m.partition)
        into v_changes, v_moved;
        if v_changes is not null then
            execute format('alter server conveyor_cluster options (%s)', v_changes);
        end if;
    end if;
    for v_shard in select unnest(v_moved) as partition loop
        begin
            v_seen := conveyor._shard_partition(v_shard.partition);
        exception when others then
            perform conveyor._raise_cluster(format('shard %s did not answer: %s', v_shard.partition, sqlerrm));
        end;
        if v_seen is distinct from v_shard.partition then
            perform conveyor._raise_cluster(format('shard listed as %s has conveyor.partition = %s: set it there (alter database ... set conveyor.partition = %s) or list it under its number',
                                                   v_shard.partition, v_seen, v_shard.partition));
        end if;
    end loop;
    insert into conveyor.applied_cluster as a (one, shards) values (true, v_n)
    on conflict on constraint applied_cluster_pkey do update set shards = excluded.shards, applied_at = now();
    -- the views follow shard 0's version; a move while shard 0 is down keeps the views it has
    begin
        perform conveyor._mirror_views();
    exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
        if not conveyor._unreachable(v_state, v_message) or to_regclass('conveyor.queue_stats') is null then
            raise;
        end if;
        raise warning 'conveyor router: shard 0 did not answer, the mirrored views are unchanged: %', v_message
            using errcode = 'CV011', hint = 'run conveyor.apply_cluster() again once it is back (after upgrading the shards, too)';
    end;
    return v_n;
end $$;

-- _check_connstr: a connect string names where a shard is, not who connects: a router role
-- reaches the shards as itself, or as the user of its user mapping (docs/scale-out.md, Roles).
-- PL/Proxy uses a connect string holding "user=" anywhere as it is, for every role; a password
-- (or a service or password file that may hold one) would show in conveyor.shards and
-- cluster_status(). The string is never echoed.
create function conveyor._check_connstr(p_connstr text)
returns void
language plpgsql immutable
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if p_connstr is null or btrim(p_connstr) = '' then
        perform conveyor._raise_invalid('a shard needs a connect string (host=... port=... dbname=...)');
    end if;
    if p_connstr ~* '(user|password|service|passfile)\s*=' or p_connstr ~* '^postgres(ql)?://[^/?#]*@' then
        raise exception using errcode = '22023',
            message = 'a shard''s connect string must not name a user, password, service or password file',
            hint = 'router roles reach the shards as themselves; give a role another shard user or a password with create user mapping for ROLE server conveyor_cluster options (user ..., password ...)';
    end if;
end $$;

-- add_shard: list a shard (or move one: a new connect string for its number) and apply.
create function conveyor.add_shard(partition integer, connstr text)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if add_shard.partition is null or add_shard.partition not between 0 and 1023 then
        perform conveyor._raise_invalid(format('invalid shard number %s: expected 0 to 1023', add_shard.partition));
    end if;
    perform conveyor._check_connstr(add_shard.connstr);
    insert into conveyor.shards as s (partition, connstr) values (add_shard.partition, add_shard.connstr)
    on conflict on constraint shards_pkey do update set connstr = excluded.connstr;
    -- a cluster being listed one shard at a time is applied once its numbering is whole
    if (select count(*) = max(s.partition) + 1 and (count(*) & (count(*) - 1)) = 0 from conveyor.shards s) then
        return conveyor.apply_cluster();
    end if;
    raise warning 'conveyor router: shard % listed, not applied: conveyor.shards is not numbered 0 to N-1 with N a power of two', add_shard.partition
        using errcode = 'CV012', hint = 'the cluster in force is unchanged (conveyor.applied_cluster); list the missing shards, or delete the stray rows';
    return 0;
end $$;

-- place_queue: pin a queue to one shard (router enqueues and claims of it go there only), or
-- unpin it (partition null). Runs already elsewhere stay where they are.
create function conveyor.place_queue(queue text, partition integer)
returns void
language plpgsql security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    if place_queue.partition is null then
        delete from conveyor.queue_placement p where p.queue = place_queue.queue;
        return;
    end if;
    if place_queue.partition not between 0 and conveyor._shard_count() - 1 then
        perform conveyor._raise_invalid(format('no shard %s in the cluster (shards 0 to %s)', place_queue.partition, conveyor._shard_count() - 1));
    end if;
    insert into conveyor.queue_placement as p (queue, partition) values (place_queue.queue, place_queue.partition)
    on conflict on constraint queue_placement_pkey do update set partition = excluded.partition;
end $$;

-- ---- routing

create function conveyor._shard_count()
returns integer
language plpgsql stable security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_n integer := (select a.shards from conveyor.applied_cluster a);
begin
    if v_n is null then
        perform conveyor._raise_cluster('no cluster applied yet: conveyor.add_shard(partition, connstr) for shards 0 to N-1');
    end if;
    return v_n;
end $$;

-- _run_partition: the shard of a run, from its id; an id naming a partition this cluster does
-- not have is an unknown run (CV002), as it would be on a shard.
create function conveyor._run_partition(run_id conveyor.ulid)
returns integer
language plpgsql stable security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_p integer := conveyor.ulid_partition(run_id);
begin
    if v_p >= conveyor._shard_count() then
        raise exception using errcode = 'CV002', message = format('unknown run %s', run_id),
            detail = format('its id names partition %s; this cluster has shards 0 to %s', v_p, conveyor._shard_count() - 1);
    end if;
    return v_p;
end $$;

-- _enqueue_partition: where a router enqueue goes. A child goes to its parent's shard (it must
-- be enqueued where its parent runs); a placed queue to its shard; then the concurrency key
-- (a key's runs on one shard: key limits hold exactly), the idempotency key (a key's duplicates
-- meet on one shard), else any shard.
create function conveyor._enqueue_partition(p_queue text, p_task text, p_key text, p_idempotency_key text, p_parent conveyor.ulid)
returns integer
language sql stable security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select case
        when p_parent is not null then conveyor._run_partition(p_parent)
        else coalesce(
            (select p.partition from conveyor.queue_placement p
             where p.queue = coalesce(p_queue, (select t.queue from conveyor.task_queue t where t.task = p_task))),
            case when p_key is not null then hashtext('key:' || p_key) end,
            case when p_idempotency_key is not null then hashtext(p_task || ':' || p_idempotency_key) end,
            (random() * 1023)::integer) & (conveyor._shard_count() - 1)
    end
$$;

-- _claim_order: the shards a claim over these queues visits, from a random one: the shards of
-- the queues if every one is placed, else all.
create function conveyor._claim_order(p_queues text[])
returns integer[]
language sql volatile security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    with placed as (
        select array_agg(distinct p.partition) as parts,
               count(*) = cardinality(p_queues) as all_placed
        from conveyor.queue_placement p where p.queue = any (p_queues)
    ),
    parts as (
        select p.part, p.i, count(*) over () as n
        from unnest(case when (select all_placed from placed) then (select parts from placed)
                         else array(select generate_series(0, conveyor._shard_count() - 1)) end)
             with ordinality as p(part, i)
    ),
    start as (select random() as r)
    -- the list rotated to start at a random member: each shard leads equally often
    select array_agg(part order by (i - 1 + n - floor((select r from start) * n)::integer) % n)
    from parts
$$;

-- ---- calls on one shard (PL/Proxy): the partition number picks the shard

create function conveyor._shard_partition(partition integer)
returns integer language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select current_setting('conveyor.partition')::integer;
$$;

create function conveyor._claim_on(partition integer, queues text, worker text, max integer, lease conveyor.duration, tasks text[])
returns setof conveyor.claimed_run language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select * from conveyor.claim_runs(queues, worker, max, lease, tasks, false);
$$;

create function conveyor._finish_on(partition integer, items jsonb)
returns table (run_id conveyor.ulid, status conveyor.run_status) language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select * from conveyor.finish_runs(items);
$$;

-- _rows_on: the rows of one of the shard's views, as JSON (conveyor.view_rows there)
create function conveyor._rows_on(partition integer, view text)
returns setof jsonb language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select * from conveyor.view_rows(view);
$$;

create function conveyor._metrics_on(partition integer)
returns text language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.metrics();
$$;

create function conveyor._apply_config_on(partition integer, config jsonb)
returns jsonb language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.apply_config(config);
$$;

create function conveyor._pause_on(partition integer, name text)
returns void language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.pause_queue(name);
$$;

create function conveyor._resume_on(partition integer, name text)
returns void language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.resume_queue(name);
$$;

create function conveyor._cancel_runs_on(partition integer, queue text, task text, status conveyor.run_status, max integer)
returns integer language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.cancel_runs(queue, task, status, max);
$$;

create function conveyor._retry_runs_on(partition integer, queue text, task text, status conveyor.run_status, since timestamptz, max integer)
returns integer language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.retry_runs(queue, task, status, since, max);
$$;

create function conveyor._pending_on(partition integer, queues text)
returns bigint language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.pending(queues);
$$;

create function conveyor._rate_limited_until_on(partition integer, queues text)
returns timestamptz language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.rate_limited_until(queues);
$$;

-- _view_names_on: the shard's dashboard views (the ones its view_rows serves)
create function conveyor._view_names_on(partition integer)
returns setof text language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select unnest(conveyor._dashboard_views());
$$;

-- _view_columns_on: the columns of one of the shard's views (name, type), for the router's
-- mirror of it (conveyor._mirror_views)
create function conveyor._view_columns_on(partition integer, view text)
returns table (name text, type text) language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select a.attname::text as name, format_type(a.atttypid, a.atttypmod) as type
    from pg_catalog.pg_attribute a
    where a.attrelid = ('conveyor.' || quote_ident(view))::regclass and a.attnum > 0 and not a.attisdropped
    order by a.attnum;
$$;

-- ---- every shard in turn

-- _each: run a call on every shard (p_call: a query over $1, the shard's number), each shard's
-- rows as one JSON array. A shard that does not answer is tried once more (a connection that
-- broke during the call; PL/Proxy itself replaces an idle one the shard closed); still silent, it
-- gets a row with the error and no result. An error the shard raised is raised here.
create function conveyor._each(p_call text)
returns table (partition integer, result jsonb, error text)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_p integer;
    v_try integer;
    v_state text;
    v_message text;
begin
    for v_p in select generate_series(0, conveyor._shard_count() - 1) loop
        partition := v_p;
        result := null;
        error := null;
        for v_try in 1..2 loop
            begin
                execute 'select coalesce(jsonb_agg(to_jsonb(x)), ''[]'') from (' || p_call || ') x' into result using v_p;
                error := null;
                exit;
            exception when others then
                get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
                if not conveyor._unreachable(v_state, v_message) then
                    raise;
                end if;
                error := v_message;
            end;
        end loop;
        return next;
    end loop;
end $$;

-- _missing: warn about the shards a gathering call could not reach (the result lacks them)
create function conveyor._warn_missing(p_what text, p_missing integer[], p_errors text[])
returns void language plpgsql as $$
begin
    if cardinality(p_missing) > 0 then
        raise warning 'conveyor router: % lacks shard(s) %: unavailable', p_what, array_to_string(p_missing, ', ')
            using detail = array_to_string(p_errors, E'\n'), errcode = 'CV011';
    end if;
end $$;

-- ---- workers

-- claim_runs: up to max runs from the shards holding these queues, visited in turn from a
-- random one until max are in hand. Each shard's claim is its own transaction there: a shard
-- that does not answer is skipped (tried once more first); the leases of a claim whose answer
-- the caller never gets expire and the runs come back (docs/scale-out.md). bind_session cannot
-- hold through a router (the shard sees the router's connection, not the worker's): refused.
create function conveyor.claim_runs(
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns setof conveyor.claimed_run
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_names text[] := array(select btrim(q) from unnest(string_to_array(claim_runs.queues, ',')) q where btrim(q) <> '');
    v_p integer;
    v_got integer := 0;
    v_n integer;
    v_try integer;
    v_state text;
    v_message text;
begin
    if claim_runs.bind_session then
        perform conveyor._raise_invalid('bind_session cannot hold through the router: the shard sees the router''s connection, not yours; claim on the shard itself');
    end if;
    if claim_runs.max is null or claim_runs.max < 1 then
        -- the shards' own check, before any shard is asked (nothing claimed that nobody receives)
        return query select * from conveyor._claim_on(0, claim_runs.queues, claim_runs.worker, claim_runs.max, claim_runs.lease, claim_runs.tasks);
        return;
    end if;
    foreach v_p in array coalesce(conveyor._claim_order(v_names), '{}') loop
        for v_try in 1..2 loop
            begin
                return query select * from conveyor._claim_on(v_p, claim_runs.queues, claim_runs.worker, claim_runs.max - v_got,
                                                               claim_runs.lease, claim_runs.tasks);
                get diagnostics v_n = row_count;
                v_got := v_got + v_n;
                exit;
            exception when others then
                get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
                if not conveyor._unreachable(v_state, v_message) then
                    raise;
                end if;
                if v_try = 2 then
                    raise warning 'conveyor router: claim skipped shard %: %', v_p, v_message using errcode = 'CV011';
                end if;
            end;
        end loop;
        exit when v_got >= claim_runs.max;
    end loop;
end $$;

create function conveyor.claim_run(
    queues text,
    worker text,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns setof conveyor.claimed_run
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select * from conveyor.claim_runs(queues, worker, 1, lease, tasks, bind_session)
$$;

-- finish_runs: each item to the shard of its run (items whose run id is not a ULID to shard 0,
-- which refuses them as it would). One call per shard, each whole on its shard; a shard answers
-- one row per item in its items' order, so the rows come back in the items' order, duplicates
-- and bad ids included, as one shard would answer.
create function conveyor.finish_runs(items jsonb)
returns table (run_id conveyor.ulid, status conveyor.run_status)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
#variable_conflict use_column
declare
    v_group record;
    -- the shards' rows so far: each item's position, its run, its status (arrays, not a temporary
    -- table: a router finishing thousands of batches a second would churn the catalog)
    v_ns bigint[] := '{}';
    v_ids conveyor.ulid[] := '{}';
    v_statuses conveyor.run_status[] := '{}';
begin
    if items is null or jsonb_typeof(items) <> 'array' then
        -- the shard's own refusal, word for word
        return query select * from conveyor._finish_on(0, items);
        return;
    end if;
    for v_group in
        select coalesce(case when jsonb_typeof(e -> 'run_id') = 'string'
                             then conveyor.ulid_partition(conveyor._ulid_or_null(e ->> 'run_id')) end, 0)
                   & (conveyor._shard_count() - 1) as p,
               jsonb_agg(e order by n) as items,
               array_agg(n order by n) as positions
        from jsonb_array_elements(items) with ordinality as x(e, n)
        group by 1 order by 1
    loop
        select v_ns || coalesce(array_agg(v_group.positions[f.i] order by f.i), '{}'),
               v_ids || coalesce(array_agg(f.run_id order by f.i), '{}'),
               v_statuses || coalesce(array_agg(f.status order by f.i), '{}')
        into v_ns, v_ids, v_statuses
        from conveyor._finish_on(v_group.p, v_group.items) with ordinality as f(run_id, status, i);
    end loop;
    return query select f.run_id, f.status from unnest(v_ns, v_ids, v_statuses) as f(n, run_id, status) order by f.n;
end $$;

create function conveyor.finish_and_claim(
    items jsonb,
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns table (
    kind text,
    run_id conveyor.ulid,
    status conveyor.run_status,
    lease_token uuid,
    task text,
    queue text,
    payload jsonb,
    attempt integer,
    failures integer,
    releases integer,
    attempt_id conveyor.ulid,
    priority smallint,
    parent_run_id conveyor.ulid,
    lease_expires_at timestamptz,
    timeout_at timestamptz
)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
begin
    -- through a router the finishes and the claim are separate transactions on the shards
    if finish_and_claim.items is not null and finish_and_claim.items <> '[]'::jsonb then
        return query
        select 'finished'::text, f.run_id, f.status, null::uuid, null::text, null::text, null::jsonb, null::integer,
               null::integer, null::integer, null::conveyor.ulid, null::smallint, null::conveyor.ulid,
               null::timestamptz, null::timestamptz
        from conveyor.finish_runs(finish_and_claim.items) f;
    end if;
    return query
    select 'claimed'::text, c.run_id, 'running'::conveyor.run_status, c.lease_token, c.task, c.queue, c.payload,
           c.attempt, c.failures, c.releases, c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at
    from conveyor.claim_runs(finish_and_claim.queues, finish_and_claim.worker, finish_and_claim.max,
                             finish_and_claim.lease, finish_and_claim.tasks, finish_and_claim.bind_session) c;
end $$;

-- one run: to the shard its id names
create function conveyor.complete_run(run_id conveyor.ulid, lease_token uuid, result jsonb default null)
returns conveyor.run_status language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.fail_run(
    run_id conveyor.ulid,
    lease_token uuid,
    message text,
    meta jsonb default null,
    retryable boolean default true
)
returns conveyor.run_status language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.release_run(
    run_id conveyor.ulid,
    lease_token uuid,
    delay text,
    reason text default null,
    meta jsonb default null
)
returns conveyor.run_status language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.return_run(run_id conveyor.ulid, lease_token uuid)
returns conveyor.run_status language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.heartbeat(run_id conveyor.ulid, lease_token uuid, extend conveyor.duration default null)
returns boolean language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.append_log(run_id conveyor.ulid, lease_token uuid, text text)
returns text language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.lease_granted(lease conveyor.duration)
returns interval language plproxy as $$
    cluster 'conveyor_cluster'; run on 0;
$$;

-- ---- producers (autocommit on the shard: give an idempotency key, docs/scale-out.md)

create function conveyor.enqueue(
    task text,
    payload jsonb default '{}',
    run_at timestamptz default null,
    delay conveyor.duration default null,
    priority integer default null,
    queue text default null,
    idempotency_key text default null,
    parent_run_id conveyor.ulid default null,
    key text default null
)
returns conveyor.ulid language plproxy as $$
    cluster 'conveyor_cluster';
    run on conveyor._enqueue_partition(queue, task, key, idempotency_key, parent_run_id);
$$;

create function conveyor._enqueue_many_on(
    partition integer,
    task text,
    payloads jsonb[],
    run_at timestamptz,
    delay conveyor.duration,
    priority integer,
    queue text,
    idempotency_keys text[],
    parent_run_id conveyor.ulid,
    keys text[]
)
returns setof conveyor.ulid language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select * from conveyor.enqueue_many(task, payloads, run_at, delay, priority, queue, idempotency_keys, parent_run_id, keys);
$$;

-- enqueue_many: each run to the shard a single enqueue of it would go to (its queue's placement,
-- else its concurrency key, else its idempotency key), so that key limits and deduplication
-- hold as for single enqueues. Runs with no key go together to one shard. A batch on one shard
-- is one transaction there: all or none. A batch split over several shards is one transaction
-- per shard, so it needs an idempotency key per run (22023 without): if a shard fails after
-- others committed, the same batch sent again returns the runs already made. Ids come back in
-- the payloads' order.
create function conveyor.enqueue_many(
    task text,
    payloads jsonb[],
    run_at timestamptz default null,
    delay conveyor.duration default null,
    priority integer default null,
    queue text default null,
    idempotency_keys text[] default null,
    parent_run_id conveyor.ulid default null,
    keys text[] default null
)
returns setof conveyor.ulid
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_n integer := coalesce(cardinality(enqueue_many.payloads), 0);
    v_anywhere integer;
    v_parts integer[];
    v_shards integer;
    v_group record;
    v_done integer[] := '{}';
    v_state text;
    v_message text;
    -- the ids made so far and each one's position in the batch (arrays, not a temporary table)
    v_ns bigint[] := '{}';
    v_ids conveyor.ulid[] := '{}';
begin
    if v_n = 0 or enqueue_many.parent_run_id is not null
       or (enqueue_many.keys is null and enqueue_many.idempotency_keys is null)
       or (enqueue_many.keys is not null and cardinality(enqueue_many.keys) <> v_n)
       or (enqueue_many.idempotency_keys is not null and cardinality(enqueue_many.idempotency_keys) <> v_n) then
        -- the whole batch where its first run goes: no keys to route by (a child goes to its
        -- parent's shard), or arrays that do not line up (the shard refuses those, word for word)
        v_parts := array[conveyor._enqueue_partition(enqueue_many.queue, enqueue_many.task, enqueue_many.keys[1],
                                                     enqueue_many.idempotency_keys[1], enqueue_many.parent_run_id)];
    else
        -- each run where a single enqueue of it goes; the runs without a key to one shard together
        v_anywhere := conveyor._enqueue_partition(enqueue_many.queue, enqueue_many.task, null, null, null);
        v_parts := array(
            select case when enqueue_many.keys[i] is null and enqueue_many.idempotency_keys[i] is null then v_anywhere
                        else conveyor._enqueue_partition(enqueue_many.queue, enqueue_many.task, enqueue_many.keys[i],
                                                         enqueue_many.idempotency_keys[i], null) end
            from generate_series(1, v_n) as i order by i);
    end if;
    v_shards := (select count(distinct p) from unnest(v_parts) p);
    if v_shards = 1 then
        -- one shard, one transaction there: all or none
        return query select * from conveyor._enqueue_many_on(v_parts[1], enqueue_many.task, enqueue_many.payloads,
            enqueue_many.run_at, enqueue_many.delay, enqueue_many.priority, enqueue_many.queue,
            enqueue_many.idempotency_keys, enqueue_many.parent_run_id, enqueue_many.keys);
        return;
    end if;
    if enqueue_many.idempotency_keys is null or array_position(enqueue_many.idempotency_keys, null) is not null then
        perform conveyor._raise_invalid(format(
            'this batch''s keys send its runs to %s shards, one transaction each: give every run an idempotency key (a retry after a partial failure then returns the runs made), or send one batch per key',
            v_shards));
    end if;
    for v_group in
        select x.p, array_agg(x.i order by x.i) as positions
        from unnest(v_parts) with ordinality as x(p, i)
        group by x.p order by x.p
    loop
        begin
            select v_ns || coalesce(array_agg(v_group.positions[e.k::integer] order by e.k), '{}'),
                   v_ids || coalesce(array_agg(e.id order by e.k), '{}')
            into v_ns, v_ids
            from conveyor._enqueue_many_on(v_group.p, enqueue_many.task,
                     array(select enqueue_many.payloads[i] from unnest(v_group.positions) i),
                     enqueue_many.run_at, enqueue_many.delay, enqueue_many.priority, enqueue_many.queue,
                     array(select enqueue_many.idempotency_keys[i] from unnest(v_group.positions) i), null,
                     case when enqueue_many.keys is not null
                          then array(select enqueue_many.keys[i] from unnest(v_group.positions) i) end)
                 with ordinality as e(id, k);
        exception when others then
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
            if cardinality(v_done) = 0 then
                raise;
            end if;
            raise exception using errcode = v_state, message = v_message,
                detail = format('shards {%s} had already enqueued their runs of this batch (each shard''s part is its own transaction)',
                                array_to_string(v_done, ',')),
                hint = 'send the same batch again: its idempotency keys return the runs already made (with on_duplicate return, the default, while they are unfinished or within unique_for)';
        end;
        v_done := v_done || v_group.p;
    end loop;
    return query select e.id from unnest(v_ns, v_ids) as e(n, id) order by e.n;
end $$;

-- ---- operators

create function conveyor.cancel_run(run_id conveyor.ulid)
returns text language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

create function conveyor.retry_run(run_id conveyor.ulid)
returns conveyor.run_status language plproxy as $$
    cluster 'conveyor_cluster'; run on conveyor._run_partition(run_id);
$$;

-- _gather: a call's one value (column v) from every shard, as text, with a warning naming the
-- shards not reached (their values are missing)
create function conveyor._gather(p_what text, p_call text)
returns setof text
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_row record;
    v_missing integer[] := '{}';
    v_errors text[] := '{}';
begin
    for v_row in select * from conveyor._each(p_call) loop
        if v_row.error is not null then
            v_missing := v_missing || v_row.partition;
            v_errors := v_errors || v_row.error;
        else
            return next v_row.result -> 0 ->> 'v';
        end if;
    end loop;
    perform conveyor._warn_missing(p_what, v_missing, v_errors);
end $$;

-- cancel_runs / retry_runs: on every shard (max per shard); a shard not reached is named in a
-- warning and left as it was
create function conveyor.cancel_runs(
    queue text default null,
    task text default null,
    status conveyor.run_status default null,
    max integer default 1000
)
returns integer
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select coalesce(sum(v::integer), 0)::integer
    from conveyor._gather('cancel_runs', format('select conveyor._cancel_runs_on($1, %L, %L, %L, %L) as v', queue, task, status, max)) v
$$;

create function conveyor.retry_runs(
    queue text default null,
    task text default null,
    status conveyor.run_status default 'failed',
    since timestamptz default null,
    max integer default 1000
)
returns integer
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select coalesce(sum(v::integer), 0)::integer
    from conveyor._gather('retry_runs', format('select conveyor._retry_runs_on($1, %L, %L, %L, %L, %L) as v', queue, task, status, since, max)) v
$$;

create function conveyor.pending(queues text)
returns bigint
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select coalesce(sum(v::bigint), 0)::bigint
    from conveyor._gather('pending', format('select conveyor._pending_on($1, %L) as v', queues)) v
$$;

-- rate_limited_until: the soonest time any shard may start one of these queues' runs again
create function conveyor.rate_limited_until(queues text)
returns timestamptz
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select min(v::timestamptz)
    from conveyor._gather('rate_limited_until', format('select conveyor._rate_limited_until_on($1, %L) as v', queues)) v
$$;

-- _learn_task_queues: keep each task's and service's queue from a configuration (router
-- enqueues that name only the task go to that queue's placement)
create function conveyor._learn_task_queues(p_config jsonb)
returns void
language sql security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    insert into conveyor.task_queue as t (task, queue)
    select e.key, coalesce(e.value ->> 'queue', p_config -> 'defaults' ->> 'queue', 'default')
    from jsonb_each(coalesce(p_config -> 'tasks', '{}') || coalesce(p_config -> 'services', '{}')) e
    on conflict on constraint task_queue_pkey do update set queue = excluded.queue
$$;

-- _home_partition: the shard that keeps a task's schedule or a service's replicas, so that
-- cron and services fire once in the cluster: the shard its queue is placed on, else shard 0.
create function conveyor._home_partition(p_options jsonb, p_defaults jsonb)
returns integer
language sql stable security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select coalesce((select p.partition from conveyor.queue_placement p
                     where p.queue = coalesce(p_options ->> 'queue', p_defaults ->> 'queue', 'default')), 0)
$$;

-- _config_for: what apply_config gives one shard: everything, except that a task's schedule
-- (and its companions) stays on the task's home shard only, and a service goes to its home
-- shard only. The other shards know the task, so runs of it enqueued there are valid.
create function conveyor._config_for(p_config jsonb, p_partition integer)
returns jsonb
language sql stable
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select p_config
        || case when jsonb_typeof(p_config -> 'tasks') = 'object' then jsonb_build_object('tasks', (
               select coalesce(jsonb_object_agg(t.key,
                          case when jsonb_typeof(t.value) = 'object' and t.value ? 'schedule'
                                    and conveyor._home_partition(t.value, p_config -> 'defaults') <> p_partition
                               then t.value - array['schedule', 'timezone', 'on_overlap', 'catch_up']
                               else t.value end), '{}')
               from jsonb_each(p_config -> 'tasks') t))
           else '{}' end
        || case when jsonb_typeof(p_config -> 'services') = 'object' then jsonb_build_object('services', (
               select coalesce(jsonb_object_agg(v.key, v.value), '{}')
               from jsonb_each(p_config -> 'services') v
               where conveyor._home_partition(v.value, p_config -> 'defaults') = p_partition))
           else '{}' end
$$;

create function conveyor._check_config_on(partition integer, config jsonb)
returns text[] language plproxy as $$
    cluster 'conveyor_cluster'; run on partition;
    select conveyor.check_config(config);
$$;

-- apply_config: one configuration for the cluster. Shard 0 checks all of it first (a bad one
-- is refused with the shard's own CV010, word for word, and applied nowhere); then each shard
-- gets its part (conveyor._config_for: schedules and services on their home shard), in shard
-- order. A shard not reached raises CV011 naming the shards that did apply it: apply it again
-- once the shard is back (apply_config is idempotent). Returns shard 0's answer.
create function conveyor.apply_config(config jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_row record;
    v_done integer[] := '{}';
    v_first jsonb;
    v_problems text[];
    v_state text;
    v_message text;
begin
    begin
        v_problems := conveyor._check_config_on(0, config);
    exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
        if not conveyor._unreachable(v_state, v_message) then
            raise;
        end if;
        perform conveyor._raise_shard_unavailable(0, 'apply_config: shard 0 checks the configuration first; nothing was applied', v_message);
    end;
    if cardinality(v_problems) > 0 then
        return conveyor._apply_config_on(0, config); -- refuses it
    end if;
    perform conveyor._learn_task_queues(config);
    for v_row in select * from conveyor._each(format('select conveyor._apply_config_on($1, conveyor._config_for(%L, $1)) as r', config)) loop
        if v_row.error is not null then
            perform conveyor._raise_shard_unavailable(v_row.partition,
                format('apply_config reached shards {%s} before this one (and the shards after it were tried too: see conveyor.cluster_status)', array_to_string(v_done, ',')),
                v_row.error);
        end if;
        v_done := v_done || v_row.partition;
        v_first := coalesce(v_first, v_row.result -> 0 -> 'r');
    end loop;
    return v_first;
end $$;

-- _on_every_shard: a call on every shard; a shard not reached raises CV011 (the others did it)
create function conveyor._on_every_shard(p_call text, p_what text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_row record;
begin
    for v_row in select * from conveyor._each(p_call) loop
        if v_row.error is not null then
            perform conveyor._raise_shard_unavailable(v_row.partition, p_what, v_row.error);
        end if;
    end loop;
end $$;

create function conveyor.pause_queue(name text)
returns void
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select conveyor._on_every_shard(format('select conveyor._pause_on($1, %L)', name),
                                    'pause_queue: the other shards paused the queue; pause it again once this one is back')
$$;

create function conveyor.resume_queue(name text)
returns void
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select conveyor._on_every_shard(format('select conveyor._resume_on($1, %L)', name),
                                    'resume_queue: the other shards resumed the queue; resume it again once this one is back')
$$;

-- ---- dashboards

-- cluster_status: each shard, whether it answers, and the error when it does not
create function conveyor.cluster_status()
returns table (partition integer, connstr text, up boolean, error text)
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select e.partition, s.connstr, e.error is null, e.error
    from conveyor._each('select conveyor._shard_partition($1) as p') e
    join conveyor.shards s using (partition)
    order by e.partition
$$;

-- view_rows: the rows of a shard view from every shard, as JSON with the shard's number; the
-- shards not reached are named in a warning (their rows are missing)
create function conveyor.view_rows(view text)
returns table (partition integer, item jsonb)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_row record;
    v_missing integer[] := '{}';
    v_errors text[] := '{}';
begin
    for v_row in select * from conveyor._each(format('select r from conveyor._rows_on($1, %L) r', view_rows.view)) loop
        if v_row.error is not null then
            v_missing := v_missing || v_row.partition;
            v_errors := v_errors || v_row.error;
        else
            return query select v_row.partition, x.value -> 'r' from jsonb_array_elements(v_row.result) x;
        end if;
    end loop;
    perform conveyor._warn_missing(view_rows.view, v_missing, v_errors);
end $$;

-- _mirror_views: the shards' views on the router, with the same names and columns (read from
-- shard 0) and one more, partition: each row is one shard's. apply_cluster calls it, so the
-- router's views follow the shards' version.
create function conveyor._mirror_views()
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_view text;
    v_cols text;
    v_n integer := 0;
begin
    for v_view in select * from conveyor._view_names_on(0) loop
        select string_agg(format('%I %s', c.name, c.type), ', ') into v_cols from conveyor._view_columns_on(0, v_view) c;
        if to_regclass('conveyor.' || quote_ident(v_view)) is not null then
            execute format('drop view conveyor.%I', v_view);
        end if;
        execute format('create view conveyor.%I as select r.*, v.partition from conveyor.view_rows(%L) v, jsonb_to_record(v.item) as r(%s)',
                       v_view, v_view, v_cols);
        execute format('comment on view conveyor.%I is %L', v_view,
                       'the shards'' conveyor.' || v_view || ', one row per shard row (partition: the shard)');
        execute format('grant select on conveyor.%I to conveyor_reader', v_view);
        v_n := v_n + 1;
    end loop;
    return v_n;
end $$;

-- metrics: every shard's metrics() with a partition label on each sample, each family once
-- (its samples from all shards together, as the text format wants), and conveyor_router_shard_up
-- per shard: 0 for a shard that did not answer (its samples are missing)
create function conveyor.metrics()
returns text
language sql
set search_path = pg_catalog, conveyor, pg_temp
as $$
    with shard as (
        select * from conveyor._each('select conveyor._metrics_on($1) as m')
    ),
    line as (
        select s.partition, l.n, l.line, l.line like '# %' as meta,
               case when l.line like '# %' then split_part(l.line, ' ', 3)
                    else substring(l.line from '^[A-Za-z_:][A-Za-z0-9_:]*') end as family
        from shard s
        cross join lateral unnest(string_to_array(s.result -> 0 ->> 'm', E'\n')) with ordinality as l(line, n)
        where s.error is null and l.line <> ''
    ),
    family as (
        select l.family, min(l.n) as ord, min(l.partition) as first from line l group by l.family
    ),
    out as (
        select f.ord, case when l.meta then 0 else 1 end as part, l.partition, l.n,
               case when l.meta then l.line
                    when l.line ~ '^[^ {]+\{' then regexp_replace(l.line, '\{', format('{partition="%s",', l.partition))
                    else regexp_replace(l.line, '^([^ ]+) ', format('\1{partition="%s"} ', l.partition)) end as text
        from line l join family f using (family)
        where not l.meta or l.partition = f.first
        union all
        select 1e9::integer, 0, -1, 0, '# HELP conveyor_router_shard_up Whether the router reached the shard (0: its samples are missing).'
        union all
        select 1e9::integer, 0, -1, 1, '# TYPE conveyor_router_shard_up gauge'
        union all
        select 1e9::integer, 1, s.partition, 0, format('conveyor_router_shard_up{partition="%s"} %s', s.partition, case when s.error is null then 1 else 0 end)
        from shard s
    )
    select string_agg(o.text, E'\n' order by o.ord, o.part, o.partition, o.n) || E'\n' from out o
$$;

-- ---- user mappings of the cluster are the owner's: USAGE on the server (which every router
-- role needs, PL/Proxy checks it) would let a role create or alter its own mapping, and so
-- pick the shard user it connects as
create function conveyor._guard_user_mappings()
returns event_trigger
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_owner oid := (select s.srvowner from pg_catalog.pg_foreign_server s where s.srvname = 'conveyor_cluster');
begin
    if v_owner is null or pg_has_role(v_owner, 'MEMBER') then
        return;
    end if;
    if exists (select from pg_event_trigger_ddl_commands() c
               join pg_catalog.pg_user_mappings m on m.umid = c.objid
               where c.object_type = 'user mapping' and m.srvname = 'conveyor_cluster') then
        raise exception using errcode = '42501',
            message = 'only the owner of server conveyor_cluster (the router database''s owner) may create or alter its user mappings',
            hint = 'a user mapping decides which shard user a router role connects as';
    end if;
end $$;

create event trigger conveyor_guard_user_mappings on ddl_command_end
    when tag in ('CREATE USER MAPPING', 'ALTER USER MAPPING')
    execute function conveyor._guard_user_mappings();

-- ---- roles: the shards' four roles (created above, as sql/functions/roles.sql creates them),
-- each granted the router functions of its job, as on a shard. A router role reaches each shard
-- as itself (the same role names exist on every shard, granted there as here: the shard checks
-- again) or as the shard user of its user mapping. The cluster (apply_cluster, add_shard) is
-- the router database owner's: it decides which servers the router connects to.

revoke all on all tables in schema conveyor from public;

revoke execute on all functions in schema conveyor from public;

grant usage on schema conveyor to conveyor_admin, conveyor_producer, conveyor_worker, conveyor_reader;

-- the types' own functions, as on a shard
grant execute on function
    conveyor.ulid_in, conveyor.ulid_out, conveyor.ulid_recv, conveyor.ulid_send, conveyor.ulid_eq, conveyor.ulid_ne,
    conveyor.ulid_lt, conveyor.ulid_le, conveyor.ulid_gt, conveyor.ulid_ge, conveyor.ulid_cmp, conveyor.ulid_hash,
    conveyor.ulid_hash_extended, conveyor.ulid_sortsupport, conveyor.ulid_partition, conveyor._ulid_or_null,
    conveyor.duration_in, conveyor.duration_out, conveyor.duration_recv, conveyor.duration_send,
    conveyor.duration_from_interval
to public;

-- routing and gathering: each runs only what its caller may (invoker), or reads the router's
-- tables for the caller (security definer, no remote call; place_queue and
-- _learn_task_queues, granted to admins only, write them)
grant execute on function
    conveyor._raise_shard_unavailable, conveyor._raise_cluster, conveyor._raise_invalid, conveyor._unreachable,
    conveyor._shard_count, conveyor._run_partition, conveyor._each, conveyor._warn_missing, conveyor._gather
to conveyor_admin, conveyor_producer, conveyor_worker, conveyor_reader;

grant execute on function
    conveyor.enqueue, conveyor.enqueue_many, conveyor._enqueue_partition, conveyor._enqueue_many_on
to conveyor_producer;

grant execute on function
    conveyor.claim_run, conveyor.claim_runs, conveyor.pending, conveyor.rate_limited_until, conveyor.lease_granted,
    conveyor.complete_run, conveyor.fail_run, conveyor.release_run, conveyor.return_run, conveyor.finish_runs,
    conveyor.finish_and_claim, conveyor.heartbeat, conveyor.append_log,
    conveyor._claim_order, conveyor._claim_on, conveyor._finish_on, conveyor._pending_on, conveyor._rate_limited_until_on
to conveyor_worker;

grant select on conveyor.shards, conveyor.applied_cluster, conveyor.queue_placement, conveyor.task_queue, conveyor.error_codes
to conveyor_reader;

grant execute on function
    conveyor.metrics, conveyor.view_rows, conveyor.cluster_status,
    conveyor._metrics_on, conveyor._rows_on, conveyor._shard_partition
to conveyor_reader;

grant execute on function
    conveyor.apply_config, conveyor.pause_queue, conveyor.resume_queue, conveyor.place_queue,
    conveyor.cancel_run, conveyor.cancel_runs, conveyor.retry_run, conveyor.retry_runs,
    conveyor._apply_config_on, conveyor._check_config_on, conveyor._config_for, conveyor._home_partition,
    conveyor._learn_task_queues, conveyor._on_every_shard, conveyor._pause_on, conveyor._resume_on,
    conveyor._cancel_runs_on, conveyor._retry_runs_on
to conveyor_admin;
