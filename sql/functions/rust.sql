-- functions/rust.sql: the SQL declarations of the Rust functions in src/ (marked `sql = false`
-- there, so that their SQL types, e.g. conveyor.ulid rather than uuid, are ours to state).
-- Their C symbols keep their 0.1.0 behaviour: a database not yet updated runs 0.1.0's SQL
-- over the new library (docs/upgrading.md).

-- ulid_generate: a new ULID, increasing within a backend even inside one millisecond.
create or replace function conveyor.ulid_generate() returns conveyor.ulid
    volatile parallel safe language c as 'MODULE_PATHNAME', 'ulid_generate_wrapper';

comment on function conveyor.ulid_generate() is 'a new ULID (time-ordered; increasing within a session)';

-- ulid_partition: the logical partition (0-1023) a ULID was made in: the conveyor.partition of
-- the database that made it (docs/scale-out.md); a router sends calls about a run to its shard.
create or replace function conveyor.ulid_partition(conveyor.ulid) returns integer
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_partition_wrapper';

comment on function conveyor.ulid_partition(conveyor.ulid) is 'the logical partition (conveyor.partition of the database that made it) a ULID carries';

-- ulid_timestamp: the creation time encoded in a ULID.
create or replace function conveyor.ulid_timestamp(conveyor.ulid) returns timestamptz
    immutable strict parallel safe language c as 'MODULE_PATHNAME', 'ulid_timestamp_wrapper';

comment on function conveyor.ulid_timestamp(conveyor.ulid) is 'the millisecond timestamp a ULID carries';

-- _ulid_or_null: text to ULID, NULL when it is not one (batch input from JSON).
create or replace function conveyor._ulid_or_null(text) returns conveyor.ulid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_ulid_or_null_wrapper';

-- _uuid_or_null: text to uuid, NULL when it is not one (lease tokens from JSON).
create or replace function conveyor._uuid_or_null(text) returns uuid
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_uuid_or_null_wrapper';

-- _duration_or_null: text to interval, NULL when it is not a duration (worker input).
create or replace function conveyor._duration_or_null(text) returns interval
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_duration_or_null_wrapper';

-- _duration_text: an interval in duration notation (1m 30s), for events and views.
create or replace function conveyor._duration_text(interval) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_duration_text_wrapper';

-- time, policy arithmetic, schedules, config validation (pure Rust)

-- _now: the transaction time, or conveyor.test_clock when a superuser set it.
create or replace function conveyor._now() returns timestamptz
    stable parallel safe language c as 'MODULE_PATHNAME', '_now_wrapper';

comment on function conveyor._now() is
    'the current time for every conveyor comparison: now(), or the superuser-only setting conveyor.test_clock';

-- _backoff_delay: the delay before retry n under a policy (jitter applied).
create or replace function conveyor._backoff_delay(
    backoff text, base interval, max_delay interval, custom interval[], jitter text, n integer
) returns interval
    volatile parallel safe language c as 'MODULE_PATHNAME', '_backoff_delay_wrapper';

-- _cron_next: the next firing of a schedule strictly after a time (NULL: never again).
create or replace function conveyor._cron_next(expr text, tz text, after timestamptz) returns timestamptz
    immutable parallel safe language c as 'MODULE_PATHNAME', '_cron_next_wrapper';

-- _check_options: validate one entry's options: {"options": normalized} or {"problems": [...]}.
create or replace function conveyor._check_options(kind text, name text, options jsonb) returns jsonb
    immutable parallel safe language c as 'MODULE_PATHNAME', '_check_options_wrapper';

-- _check_name: NULL when a task/queue name is acceptable, else what is wrong with it.
create or replace function conveyor._check_name(kind text, name text) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_check_name_wrapper';

-- _clean / _clean_json: worker text (or every string of a JSON value) without control
-- characters but tab and newline, and without Unicode bidirectional controls (src/text.rs).
create or replace function conveyor._clean(text) returns text
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_clean_wrapper';
create or replace function conveyor._clean_json(jsonb) returns jsonb
    immutable strict parallel safe language c as 'MODULE_PATHNAME', '_clean_json_wrapper';

-- _option_registry: every task, service, queue and defaults option (src/config.rs), as JSON.
create or replace function conveyor._option_registry() returns jsonb
    immutable parallel safe language c as 'MODULE_PATHNAME', '_option_registry_wrapper';

-- _library_version: the version of the loaded library (the schema's is pg_extension.extversion).
create or replace function conveyor._library_version() returns text
    immutable parallel safe language c as 'MODULE_PATHNAME', '_library_version_wrapper';

-- _session_started_at: this backend's start (pg_stat_activity.backend_start): with the pid, the
-- identity of a session that claims bound runs (src/session.rs).
create or replace function conveyor._session_started_at() returns timestamptz
    stable parallel restricted language c as 'MODULE_PATHNAME', '_session_started_at_wrapper';

-- _in_background_worker: true in pg_conveyor's tick worker, false in a client's session or any
-- other process (src/session.rs): tick keeps the two apart in conveyor._tick_stats.
create or replace function conveyor._in_background_worker() returns boolean
    stable parallel restricted language c as 'MODULE_PATHNAME', '_in_background_worker_wrapper';

-- The lock of a shard of a key limit, which _key_gates and _key_more take for the transaction
-- when no other transaction holds it (never waiting; src/admit.rs): the advisory lock ('pgck',
-- the hashtext of the shard's name, _key_ref(scope, name, key) || E'\x1f' || shard). Two shards
-- of one hash share a lock, so a claim of one may pass the other over while it runs, and never
-- admits more than a limit.

-- _key_gates: the keys under a key limit among a claim's candidates (queue, task and key as
-- parallel arrays) and the shard each takes (src/admit.rs): one whose candidates a shard's share
-- covers takes the first shard from its start (by key and session) whose lock it takes
-- (above); one with more candidates takes none here (claim_runs then takes the shards with room
-- it needs). With each key's number of candidates and start shard.
create or replace function conveyor._key_gates(
    queues text[], tasks text[], keys text[],
    limit_scopes text[], limit_names text[], limit_conc integer[], limit_rate integer[], limit_shards integer[],
    pid integer)
returns table (scope text, name text, key text, shard smallint, want integer, start smallint)
    volatile strict rows 50 language c as 'MODULE_PATHNAME', '_key_gates_wrapper';

-- _key_more: of the further shards of keys short of room (scope, name, key, shard, in the order
-- to try them, with each shard's room as committed and what its key still misses), those taken
-- (src/admit.rs): in turn, each whose lock it takes, until the rooms taken cover
-- what the key misses.
create or replace function conveyor._key_more(
    scopes text[], names text[], keys text[], shards smallint[], rooms bigint[], missing bigint[])
returns table (scope text, name text, key text, shard smallint)
    volatile strict language c as 'MODULE_PATHNAME', '_key_more_wrapper';

-- _key_rooms: the room of each key under each shard of a key limit a claim holds (src/admit.rs),
-- from the keys' running runs and starts of the rate window per shard as _key_room counts them.
create or replace function conveyor._key_rooms(
    gate_scopes text[], gate_names text[], gate_keys text[], gate_shards smallint[],
    limit_scopes text[], limit_names text[], limit_conc integer[], limit_rate integer[], limit_shards integer[],
    use_scopes text[], use_names text[], use_keys text[], use_shards smallint[], use_n bigint[],
    start_scopes text[], start_names text[], start_keys text[], start_shards smallint[], start_n bigint[],
    want integer)
returns integer[]
    immutable parallel safe language c as 'MODULE_PATHNAME', '_key_rooms_wrapper';

-- _key_pick: which of a claim's candidates start under key limits and task rate-limit caps
-- (src/admit.rs): the ids of those chosen in claim order, with the shard of the queue's and
-- the task's key limit each starts under. The candidates come as parallel arrays.
create or replace function conveyor._key_pick(
    ids uuid[], tasks text[], queues text[], keys text[], priorities smallint[], fair_ranks bigint[],
    run_ats timestamptz[], gate_scopes text[], gate_names text[], gate_keys text[], gate_shards smallint[],
    gate_rooms integer[], cap_tasks text[], task_caps integer[], want integer)
returns table (id conveyor.ulid, queue_shard smallint, task_shard smallint)
    immutable parallel safe rows 50 language c as 'MODULE_PATHNAME', '_key_pick_wrapper';
