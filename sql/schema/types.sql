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
