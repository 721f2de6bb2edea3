-- functions/options.sql: tasks, services, queues and defaults. Each option is defined once, in
-- src/config.rs (name, kinds that accept it, value type, built-in default; conveyor.options lists
-- them); validation is there too (_check_options): what is stored here has passed it whole, or
-- nothing is stored. The defaults view and the README's option table are checked against that
-- registry by pgrx-tests/sql/option_registry.sql and tests/integration/docs.rs.

create or replace view conveyor.defaults as
select
    coalesce(o.queue, 'default') as queue,
    coalesce(o.priority, 0::smallint) as priority,
    coalesce(o.max_attempts, 1) as max_attempts,
    coalesce(o.backoff, 'constant') as backoff,
    o.backoff_custom,
    coalesce(o.delay, interval '5 seconds') as delay,
    coalesce(o.max_delay, interval '5 minutes') as max_delay,
    o.max_delay as max_delay_given,
    coalesce(o.jitter, 'none') as jitter,
    o.timeout,
    coalesce(o.lease, interval '30 seconds') as lease,
    coalesce(o.max_lease, interval '1 hour') as max_lease,
    coalesce(o.log_max_size, 1048576) as log_max_size,
    coalesce(o.log_on_full, 'truncate') as log_on_full,
    coalesce(o.retention, interval '7 days') as retention,
    coalesce(o.restart_delay, interval '1 second') as restart_delay,
    coalesce(o.restart_backoff, 'exponential') as restart_backoff,
    coalesce(o.restart_max_delay, interval '60 seconds') as restart_max_delay,
    coalesce(o.bind_session, false) as bind_session
from (values (true)) as one(singleton)
left join conveyor._defaults o using (singleton);

comment on view conveyor.defaults is 'effective defaults: what a task that leaves an option off gets';

-- task_config: each task's effective options, its own where given, else the defaults (but
-- bind_session: the task's own, or null).
-- A custom backoff list is capped only by an explicitly given max_delay.
create or replace view conveyor.task_config as
select
    t.name, t.kind, t.queue, t.enabled, t.version,
    coalesce(t.priority, d.priority) as priority,
    coalesce(t.max_attempts, d.max_attempts) as max_attempts,
    coalesce(t.backoff, d.backoff) as backoff,
    case when t.backoff is not null then t.backoff_custom else d.backoff_custom end as backoff_custom,
    coalesce(t.delay, d.delay) as delay,
    case when coalesce(t.backoff, d.backoff) = 'custom'
         then coalesce(t.max_delay, d.max_delay_given)
         else coalesce(t.max_delay, d.max_delay) end as max_delay,
    coalesce(t.jitter, d.jitter) as jitter,
    coalesce(t.timeout, d.timeout) as timeout,
    coalesce(t.lease, d.lease) as lease,
    d.max_lease,
    coalesce(t.log_max_size, d.log_max_size) as log_max_size,
    coalesce(t.log_on_full, d.log_on_full) as log_on_full,
    t.schedule, t.timezone, t.on_overlap, t.catch_up, t.next_fire_at,
    t.parallelism, t.payload, t.replicas,
    coalesce(t.restart_delay, d.restart_delay) as restart_delay,
    coalesce(t.restart_backoff, d.restart_backoff) as restart_backoff,
    coalesce(t.restart_max_delay, d.restart_max_delay) as restart_max_delay,
    -- the task's own only; null: the option of the queue the run is claimed from, else the
    -- defaults' (claim_runs resolves it per run; a claim's bind_session argument wins)
    t.bind_session,
    -- deduplication on the idempotency key (_enqueue)
    coalesce(t.on_duplicate, 'return') as on_duplicate,
    t.unique_for, t.debounce, t.debounce_max,
    t.rate_limit_n, t.rate_limit_period,
    t.key_concurrency, t.key_rate_limit_n, t.key_rate_limit_period
from conveyor.tasks t
cross join conveyor.defaults d;

comment on view conveyor.task_config is 'each task''s effective configuration (its options over conveyor.defaults)';

-- options: every option, defined once in src/config.rs: the kinds that accept it (task, service,
-- queue, defaults), the value it takes, its built-in default and what it does.
create or replace view conveyor.options as
select o.name, o.kinds, o.type, o.default, o.meaning
from jsonb_to_recordset(conveyor._option_registry())
     as o(name text, kinds text[], type text, "default" text, meaning text);
comment on view conveyor.options is 'every task, service, queue and defaults option: kinds, value, built-in default, meaning';

-- _checked: the normalized options of one entry, or CV010 listing what is wrong with it.
create or replace function conveyor._checked(kind text, name text, options jsonb)
returns jsonb
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_result jsonb;
begin
    if name is null then
        perform conveyor._raise_config(array[format('a %s needs a name, got null', kind)]);
    end if;
    v_result := conveyor._check_options(kind, name, options);
    if v_result ? 'problems' then
        perform conveyor._raise_config(array(select jsonb_array_elements_text(v_result -> 'problems')));
    end if;
    return v_result -> 'options';
end
$$;

-- _check_effective: after a change, each task's effective policy must still hold together
-- (its own options over the defaults): max_delay at least delay for computed curves.
create or replace function conveyor._check_effective()
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problems text[];
begin
    select array_agg(format('task "%s": option "max_delay": must be at least delay (%s < %s)',
                            c.name, conveyor._duration_text(c.max_delay), conveyor._duration_text(c.delay))
                     order by c.name)
    into v_problems
    from conveyor.task_config c
    where c.kind = 'task' and c.backoff <> 'custom' and c.max_delay < c.delay;
    if v_problems is not null then
        perform conveyor._raise_config(v_problems);
    end if;
end
$$;

-- _set_rate_limit: the shards of a queue's or task's rate limit of N (null: none), each with
-- its share: up to 8 shards (fewer for N < 8), whose shares add up to N, so that as many claims
-- of the limit can go at once. Kept as they are when N is unchanged; a new N takes effect for the
-- windows after it (the old shards' starts are not counted against the new shares). Without a
-- key_rate_limit (p_key_n null) the starts of its keys go too.
create or replace function conveyor._set_rate_limit(p_scope text, p_name text, p_n integer, p_key_n integer)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
as $$
declare
    v_shards integer := least(8, p_n);
begin
    if p_key_n is null then
        delete from conveyor._rate_starts s where s.scope = p_scope || '_key' and s.name = p_name;
    end if;
    if p_n is not null and (select count(*) = v_shards and sum(l.quota) = p_n
                            from conveyor._rate_limits l where l.scope = p_scope and l.name = p_name) then
        return;
    end if;
    delete from conveyor._rate_limits l where l.scope = p_scope and l.name = p_name;
    delete from conveyor._rate_starts s where s.scope = p_scope and s.name = p_name;
    if p_n is not null then
        insert into conveyor._rate_limits (scope, name, shard, quota)
        select p_scope, p_name, i, p_n / v_shards + (i < p_n % v_shards)::integer
        from generate_series(0, v_shards - 1) as i;
    end if;
end
$$;

-- _ensure_queue: the queue row, created (unbounded, running) the first time a name is used.
create or replace function conveyor._ensure_queue(name text)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problem text;
begin
    if exists (select from conveyor.queues q where q.name = _ensure_queue.name) then
        return;
    end if;
    v_problem := conveyor._check_name('queue', name);
    if v_problem is not null then
        perform conveyor._raise_invalid(v_problem);
    end if;
    insert into conveyor.queues (name) values (_ensure_queue.name) on conflict do nothing;
end
$$;

-- _define: create or replace a task or service from validated options. Re-defining replaces
-- the options whole (what is left off comes from the defaults) and bumps the version when
-- anything changed. Returns the version.
create or replace function conveyor._define(p_kind text, p_name text, p_options jsonb)
returns integer
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    o jsonb := conveyor._checked(p_kind, p_name, p_options);
    v_old conveyor.tasks;
    v_now timestamptz := conveyor._now();
    v_queue text;
    v_version integer;
    v_next timestamptz;
begin
    select * into v_old from conveyor.tasks t where t.name = p_name for update;
    if found and v_old.kind <> p_kind then
        perform conveyor._raise_config(array[format('%s "%s": already defined as a %s', p_kind, p_name, v_old.kind)]);
    end if;
    v_queue := coalesce(o ->> 'queue', (select d.queue from conveyor.defaults d));
    perform conveyor._ensure_queue(v_queue);
    o := o - 'queue';

    if o ? 'schedule' then
        -- keep the cursor when the schedule is unchanged, so re-applying config never refires
        if v_old.schedule is not distinct from o ->> 'schedule'
           and v_old.timezone is not distinct from o ->> 'timezone' then
            v_next := v_old.next_fire_at;
        else
            v_next := conveyor._cron_next(o ->> 'schedule', o ->> 'timezone', v_now);
        end if;
    end if;

    if v_old.name is null then
        v_version := 1;
    elsif v_old.options = o and v_old.queue = v_queue then
        v_version := v_old.version;
    else
        v_version := v_old.version + 1;
    end if;

    insert into conveyor.tasks as t (
        name, kind, queue, enabled, version, options, priority, max_attempts, backoff, backoff_custom,
        delay, max_delay, jitter, timeout, lease, log_max_size, log_on_full, schedule, timezone,
        on_overlap, catch_up, next_fire_at, parallelism, payload, replicas, restart_delay,
        restart_backoff, restart_max_delay, created_at, updated_at, bind_session,
        on_duplicate, unique_for, debounce, debounce_max, rate_limit_n, rate_limit_period,
        key_concurrency, key_rate_limit_n, key_rate_limit_period
    ) values (
        p_name, p_kind, v_queue, coalesce((o ->> 'enabled')::boolean, v_old.enabled, true), v_version, o,
        (o ->> 'priority')::smallint,
        (o ->> 'max_attempts')::integer,
        o ->> 'backoff',
        (select array_agg(e::interval) from jsonb_array_elements_text(o -> 'backoff_custom') e),
        (o ->> 'delay')::interval,
        (o ->> 'max_delay')::interval,
        o ->> 'jitter',
        (o ->> 'timeout')::interval,
        (o ->> 'lease')::interval,
        (o ->> 'log_max_size')::integer,
        o ->> 'log_on_full',
        o ->> 'schedule',
        o ->> 'timezone',
        coalesce(o ->> 'on_overlap', 'allow'),
        coalesce((o ->> 'catch_up')::boolean, false),
        v_next,
        (o ->> 'parallelism')::integer,
        coalesce(o -> 'payload', '{}'),
        case when p_kind = 'service' then coalesce((o ->> 'replicas')::integer, 1) end,
        (o ->> 'restart_delay')::interval,
        o ->> 'restart_backoff',
        (o ->> 'restart_max_delay')::interval,
        v_now, v_now,
        (o ->> 'bind_session')::boolean,
        o ->> 'on_duplicate',
        (o ->> 'unique_for')::interval,
        (o ->> 'debounce')::interval,
        (o ->> 'debounce_max')::interval,
        (o ->> 'rate_limit_n')::integer,
        (o ->> 'rate_limit_period')::interval,
        (o ->> 'key_concurrency')::integer,
        (o ->> 'key_rate_limit_n')::integer,
        (o ->> 'key_rate_limit_period')::interval
    )
    on conflict (name) do update set
        queue = excluded.queue, enabled = excluded.enabled, version = excluded.version,
        options = excluded.options, priority = excluded.priority, max_attempts = excluded.max_attempts,
        backoff = excluded.backoff, backoff_custom = excluded.backoff_custom, delay = excluded.delay,
        max_delay = excluded.max_delay, jitter = excluded.jitter, timeout = excluded.timeout,
        lease = excluded.lease, log_max_size = excluded.log_max_size, log_on_full = excluded.log_on_full,
        schedule = excluded.schedule, timezone = excluded.timezone, on_overlap = excluded.on_overlap,
        catch_up = excluded.catch_up, next_fire_at = excluded.next_fire_at,
        parallelism = excluded.parallelism, payload = excluded.payload, replicas = excluded.replicas,
        restart_delay = excluded.restart_delay, restart_backoff = excluded.restart_backoff,
        restart_max_delay = excluded.restart_max_delay, updated_at = excluded.updated_at,
        bind_session = excluded.bind_session,
        on_duplicate = excluded.on_duplicate, unique_for = excluded.unique_for,
        debounce = excluded.debounce, debounce_max = excluded.debounce_max,
        rate_limit_n = excluded.rate_limit_n, rate_limit_period = excluded.rate_limit_period,
        key_concurrency = excluded.key_concurrency, key_rate_limit_n = excluded.key_rate_limit_n,
        key_rate_limit_period = excluded.key_rate_limit_period,
        -- a cap that starts now starts from the runs delivered now
        active = case
            when excluded.parallelism is not null and t.parallelism is null then
                (select count(*) from conveyor.runs r
                  where r.task = excluded.name and conveyor._is_delivered(r.status))
            else t.active end;

    perform conveyor._set_rate_limit('task', p_name, (o ->> 'rate_limit_n')::integer, (o ->> 'key_rate_limit_n')::integer);
    perform conveyor._check_effective();
    return v_version;
end
$$;

-- define_task: create or replace a task. Named arguments for the common options; `options`
-- takes any option (the same shape as an entry of apply_config's "tasks"); a named argument
-- wins over the same key in `options`. Returns the task's version. Durations are text ('30s',
-- '00:05:00'), validated with the other options: a bad one is CV010 whichever way it came.
create or replace function conveyor.define_task(
    name text,
    queue text default null,
    max_attempts integer default null,
    retry_attempts integer default null,
    backoff text default null,
    delay text default null,
    max_delay text default null,
    jitter text default null,
    timeout text default null,
    priority integer default null,
    schedule text default null,
    timezone text default null,
    on_overlap text default null,
    parallelism integer default null,
    options jsonb default null,
    on_duplicate text default null,
    unique_for text default null,
    debounce text default null,
    debounce_max text default null,
    rate_limit text default null,
    key_concurrency integer default null,
    key_rate_limit text default null
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._define('task', name, coalesce(options, '{}') || jsonb_strip_nulls(jsonb_build_object(
        'queue', queue, 'max_attempts', max_attempts, 'retry_attempts', retry_attempts,
        'backoff', backoff, 'delay', delay, 'max_delay', max_delay, 'jitter', jitter,
        'timeout', timeout, 'priority', priority, 'schedule', schedule, 'timezone', timezone,
        'on_overlap', on_overlap, 'parallelism', parallelism, 'on_duplicate', on_duplicate,
        'unique_for', unique_for, 'debounce', debounce, 'debounce_max', debounce_max,
        'rate_limit', rate_limit, 'key_concurrency', key_concurrency, 'key_rate_limit', key_rate_limit)));
end
$$;

comment on function conveyor.define_task is
    'create or replace a task (re-defining replaces its options and bumps its version); returns the version';

-- define_service: create or replace a service: `replicas` runs kept alive by tick, restarted
-- with backoff when they end (for any reason but a manual stop).
create or replace function conveyor.define_service(
    name text,
    replicas integer default 1,
    queue text default null,
    restart_delay text default null,
    restart_backoff text default null,
    restart_max_delay text default null,
    payload jsonb default null,
    options jsonb default null
)
returns integer
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return conveyor._define('service', name, coalesce(options, '{}') || jsonb_strip_nulls(jsonb_build_object(
        'replicas', replicas, 'queue', queue, 'restart_delay', restart_delay,
        'restart_backoff', restart_backoff, 'restart_max_delay', restart_max_delay,
        'payload', payload)));
end
$$;

comment on function conveyor.define_service is
    'create or replace a service (always-on replicas restarted by tick); returns the version';

-- _set_enabled: enable or disable a task; a disabled task's outstanding runs fail with
-- task_disabled when claimed.
create or replace function conveyor._set_enabled(p_name text, p_enabled boolean)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    update conveyor.tasks t
    set enabled = p_enabled,
        updated_at = conveyor._now()
    where t.name = p_name;
    if not found then
        perform conveyor._raise_unknown_task(p_name);
    end if;
end
$$;

create or replace function conveyor.disable_task(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_enabled(name, false) $$;

comment on function conveyor.disable_task is
    'disable a task: its outstanding runs fail with code task_disabled when claimed (never retried)';

create or replace function conveyor.enable_task(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_enabled(name, true) $$;

comment on function conveyor.enable_task is 'enable a task again';

-- _set_queue: apply validated queue options (declarative: what is left off is reset).
-- Turning a queue bounded counts its delivered runs under the queue's lock.
create or replace function conveyor._set_queue(p_name text, p_options jsonb)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    o jsonb := conveyor._checked('queue', p_name, p_options);
begin
    perform conveyor._ensure_queue(p_name);
    perform from conveyor.queues q where q.name = p_name for update;
    update conveyor.queues q
    set concurrency = (o ->> 'concurrency')::integer,
        paused = coalesce((o ->> 'paused')::boolean, false),
        notify = coalesce((o ->> 'notify')::boolean, true),
        delivery_outbox = coalesce((o ->> 'delivery_outbox')::boolean, false),
        bind_session = (o ->> 'bind_session')::boolean,
        rate_limit_n = (o ->> 'rate_limit_n')::integer,
        rate_limit_period = (o ->> 'rate_limit_period')::interval,
        key_concurrency = (o ->> 'key_concurrency')::integer,
        key_rate_limit_n = (o ->> 'key_rate_limit_n')::integer,
        key_rate_limit_period = (o ->> 'key_rate_limit_period')::interval,
        delivered = case when o ? 'concurrency' then
            (select count(*) from conveyor.runs r where r.queue = p_name and conveyor._is_delivered(r.status))
            else 0 end
    where q.name = p_name;
    perform conveyor._set_rate_limit('queue', p_name, (o ->> 'rate_limit_n')::integer, (o ->> 'key_rate_limit_n')::integer);
end
$$;

-- set_queue: configure a queue (declarative: options left off return to their defaults).
create or replace function conveyor.set_queue(
    name text,
    concurrency integer default null,
    paused boolean default false,
    notify boolean default true,
    delivery_outbox boolean default false,
    bind_session boolean default null,
    rate_limit text default null,
    key_concurrency integer default null,
    key_rate_limit text default null
)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    select conveyor._set_queue(name, jsonb_strip_nulls(jsonb_build_object(
        'rate_limit', rate_limit, 'key_concurrency', key_concurrency, 'key_rate_limit', key_rate_limit,
        'concurrency', concurrency, 'paused', paused, 'notify', notify, 'delivery_outbox', delivery_outbox,
        'bind_session', bind_session)))
$$;

comment on function conveyor.set_queue is
    'configure a queue: concurrency (null = unbounded), paused, notify (wakeups), delivery_outbox, bind_session (null: the defaults'')';

-- _set_paused: pause or resume a queue (CV007 for an unknown one).
create or replace function conveyor._set_paused(p_name text, p_paused boolean)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    update conveyor.queues q set paused = p_paused where q.name = p_name;
    if not found then
        perform conveyor._raise_unknown_queue(p_name);
    end if;
end
$$;

-- pause_queue / resume_queue: claims from a paused queue return nothing and tick delivers
-- nothing into it.
create or replace function conveyor.pause_queue(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_paused(name, true) $$;
comment on function conveyor.pause_queue is 'pause a queue: claims return nothing, tick delivers nothing into it';

create or replace function conveyor.resume_queue(name text)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_paused(name, false) $$;
comment on function conveyor.resume_queue is 'resume a paused queue';

-- drop_queue: remove a queue that no task uses and that holds no unfinished run (its finished
-- runs stay, as history, until retention). CV007 for an unknown queue, CV008 for one in use.
create or replace function conveyor.drop_queue(name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_tasks text;
begin
    perform from conveyor.queues q where q.name = drop_queue.name for update;
    if not found then
        perform conveyor._raise_unknown_queue(drop_queue.name);
    end if;
    select string_agg(t.name, ', ' order by t.name) into v_tasks from conveyor.tasks t where t.queue = drop_queue.name;
    if v_tasks is not null then
        perform conveyor._raise_queue_in_use(drop_queue.name, format('tasks %s use it', v_tasks));
    end if;
    if drop_queue.name = (select d.queue from conveyor.defaults d) then
        perform conveyor._raise_queue_in_use(drop_queue.name, 'it is the default queue (conveyor.defaults)');
    end if;
    if exists (select from conveyor.runs r where r.queue = drop_queue.name and conveyor._live(r.status)) then
        perform conveyor._raise_queue_in_use(drop_queue.name, 'it holds unfinished runs');
    end if;
    -- its rate limit's shards and starts, and its keys' starts
    perform conveyor._set_rate_limit('queue', drop_queue.name, null, null);
    delete from conveyor.queues q where q.name = drop_queue.name;
end
$$;
comment on function conveyor.drop_queue is
    'remove a queue that no task uses and that holds no unfinished run (CV008 otherwise)';

-- _set_defaults: replace the operator's defaults with validated options.
create or replace function conveyor._set_defaults(p_options jsonb)
returns void
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    o jsonb := conveyor._checked('defaults', '', p_options);
begin
    -- the normalized options are keyed by column name (src/config.rs): one row, column by name
    delete from conveyor._defaults;
    insert into conveyor._defaults
    select * from jsonb_populate_record(null::conveyor._defaults,
                                        o || jsonb_build_object('singleton', true, 'updated_at', conveyor._now()));
    if o ? 'queue' then
        perform conveyor._ensure_queue(o ->> 'queue');
    end if;
    perform conveyor._check_effective();
end
$$;

-- set_defaults: replace the defaults every task falls back on (declarative: options left off
-- return to their built-in values; see the view conveyor.defaults).
create or replace function conveyor.set_defaults(options jsonb)
returns void
language sql
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select conveyor._set_defaults(options) $$;

comment on function conveyor.set_defaults is
    'replace the defaults (max_attempts, backoff, delay, max_delay, jitter, timeout, lease, max_lease, retention, ...)';

-- apply_config: apply a whole configuration {defaults, queues, tasks, services} (the shape of a
-- supervisor's config file). Every entry is validated first; one bad entry and nothing is
-- applied, with every problem listed. Tasks and queues it does not name are left as they are.
-- check_config: every problem of a configuration ({defaults, queues, tasks, services}), none
-- when it is valid; changes nothing. apply_config refuses a configuration with any (CV010).
create or replace function conveyor.check_config(config jsonb)
returns text[]
language plpgsql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problems text[] := '{}';
    v_section text;
    v_entry record;
    v_result jsonb;
begin
    if config is null or jsonb_typeof(config) <> 'object' then
        return array['expected an object with sections defaults, queues, tasks, services'];
    end if;
    for v_section in select jsonb_object_keys(config) loop
        if v_section not in ('defaults', 'queues', 'tasks', 'services') then
            v_problems := v_problems || format('unknown section "%s": expected defaults, queues, tasks, services', v_section);
        elsif v_section <> 'defaults' and jsonb_typeof(config -> v_section) <> 'object' then
            v_problems := v_problems || format('section "%s": expected an object of name: options', v_section);
        end if;
    end loop;
    if cardinality(v_problems) > 0 then
        return v_problems;
    end if;
    if config ? 'defaults' then
        v_result := conveyor._check_options('defaults', '', config -> 'defaults');
        v_problems := v_problems || array(select jsonb_array_elements_text(v_result -> 'problems'));
    end if;
    for v_entry in
        select 'queue' as kind, e.key, e.value from jsonb_each(coalesce(config -> 'queues', '{}')) e
        union all
        select 'task', e.key, e.value from jsonb_each(coalesce(config -> 'tasks', '{}')) e
        union all
        select 'service', e.key, e.value from jsonb_each(coalesce(config -> 'services', '{}')) e
    loop
        v_result := conveyor._check_options(v_entry.kind, v_entry.key, v_entry.value);
        v_problems := v_problems || array(select jsonb_array_elements_text(v_result -> 'problems'));
    end loop;
    return v_problems;
end
$$;

comment on function conveyor.check_config is
    'every problem of a {defaults, queues, tasks, services} configuration (empty: valid); changes nothing';

create or replace function conveyor.apply_config(config jsonb)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_problems text[] := conveyor.check_config(config);
begin
    -- validate everything before changing anything
    if cardinality(v_problems) > 0 then
        perform conveyor._raise_config(v_problems);
    end if;
    if config ? 'defaults' then
        perform conveyor._set_defaults(config -> 'defaults');
    end if;
    perform conveyor._set_queue(e.key, e.value) from jsonb_each(coalesce(config -> 'queues', '{}')) e;
    perform conveyor._define('task', e.key, e.value) from jsonb_each(coalesce(config -> 'tasks', '{}')) e;
    perform conveyor._define('service', e.key, e.value) from jsonb_each(coalesce(config -> 'services', '{}')) e;
    return jsonb_build_object(
        'defaults', config ? 'defaults',
        'queues', (select count(*) from jsonb_object_keys(coalesce(config -> 'queues', '{}'))),
        'tasks', (select count(*) from jsonb_object_keys(coalesce(config -> 'tasks', '{}'))),
        'services', (select count(*) from jsonb_object_keys(coalesce(config -> 'services', '{}'))));
end
$$;

comment on function conveyor.apply_config is
    'apply {defaults, queues, tasks, services} whole: all validated first; any problem and nothing changes (CV010 lists them all)';
