-- functions/enqueue.sql: producers create runs, in the caller's transaction (README: Producers).

-- _enqueue: insert runs of one task (scheduled, or queued when due now with capacity free), one
-- statement for the whole batch. Returns each input's run id in input order. An idempotency key
-- that matches a live run of the task (or, with unique_for, one that finished less than
-- unique_for ago) writes no run: under the task's on_duplicate, the existing run's id comes back
-- (return), the whole call is refused with CV009 (reject), or a waiting existing run takes the
-- new payload, the last of the call for its key (replace). With debounce, a keyed run starts
-- debounce after the latest enqueue of its key (capped at debounce_max after its first) while it
-- is still scheduled. The existing run is changed by guarded updates: concurrent producers of
-- one key take turns on its row, and a run that started meanwhile is left alone. p_ckeys are
-- the runs' concurrency keys (one per payload, or null), for key limits and the keys' turns.
create or replace function conveyor._enqueue(
    p_task text, p_payloads jsonb[], p_run_at timestamptz, p_delay interval, p_priority integer,
    p_queue text, p_keys text[], p_parent conveyor.ulid, p_ckeys text[] default null
)
returns table (ord integer, id conveyor.ulid)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_task record;
    v_queue text;
    v_due timestamptz;
    v_n integer := coalesce(cardinality(p_payloads), 0);
    v_free integer := 0;
    v_bad integer;
    v_ids conveyor.ulid[];
    v_problem text;
    v_dup record;
    v_dup_n integer[];
    v_dup_run conveyor.ulid[];
    v_debounced timestamptz;
begin
    -- the task, and whether its queue exists and is bounded (or the task capped), in one look-up
    select c.*, q.name as queue_found, (q.concurrency is not null or c.parallelism is not null) as limited
    into v_task
    from conveyor.task_config c
    left join conveyor.queues q on q.name = coalesce(p_queue, c.queue)
    where c.name = p_task;
    if not found then
        perform conveyor._raise_unknown_task(p_task, 'task',
            'define it first: select conveyor.define_task(''' || coalesce(p_task, '') || ''')');
    end if;
    if v_task.kind = 'service' then
        perform conveyor._raise_invalid(format('task "%s" is a service: tick keeps its replicas running; it is not enqueued', p_task));
    end if;
    if p_run_at is not null and p_delay is not null then
        perform conveyor._raise_invalid('give run_at or delay, not both');
    end if;
    perform conveyor._check_time('run_at', p_run_at, v_now);
    if p_keys is not null and exists (select from unnest(p_keys) k where octet_length(k) > 512) then
        perform conveyor._raise_invalid('idempotency key too long: at most 512 bytes');
    end if;
    if p_priority is not null and p_priority not between 0 and 9 then
        perform conveyor._raise_invalid(format('invalid priority %s: expected 0 (first) to 9 (last)', p_priority));
    end if;
    if v_n = 1 then
        v_bad := case when p_payloads[1] is null or jsonb_typeof(p_payloads[1]) <> 'object' then 1 end;
    else
        select min(i.n) into v_bad
        from unnest(p_payloads) with ordinality as i(p, n)
        where i.p is null or jsonb_typeof(i.p) <> 'object';
    end if;
    if v_bad is not null then
        perform conveyor._raise_invalid(format('payload must be a JSON object, got %s%s',
                                               coalesce(jsonb_typeof(p_payloads[v_bad]), 'null'),
                                               case when v_n > 1 then format(' (payload %s of %s)', v_bad, v_n) else '' end));
    end if;
    if p_ckeys is not null and exists (select from unnest(p_ckeys) k where octet_length(k) > 512) then
        perform conveyor._raise_invalid('concurrency key too long: at most 512 bytes');
    end if;
    if p_ckeys is not null and cardinality(p_ckeys) <> v_n then
        perform conveyor._raise_invalid(format('%s concurrency keys for %s payloads: give one per payload (or null)', cardinality(p_ckeys), v_n));
    end if;
    if p_keys is not null and cardinality(p_keys) <> v_n then
        perform conveyor._raise_invalid(format('%s idempotency keys for %s payloads: give one per payload (or null)', cardinality(p_keys), v_n));
    end if;
    -- a child is spawned by its parent while the parent runs (its handler enqueues it): naming
    -- any other run is refused with one answer whether the id exists or not, so a producer can
    -- neither probe ids nor pin a finished run against retry_run by hanging a child on it
    if p_parent is not null
       and not exists (select from conveyor.runs r where r.id = p_parent and r.status = 'running') then
        perform conveyor._raise_unknown_run(p_parent, 'running parent run');
    end if;

    v_queue := coalesce(p_queue, v_task.queue);
    if v_task.queue_found is null then
        -- producers do not create queues (each queue costs every dashboard and metrics scrape):
        -- an operator does, with define_task, set_queue or apply_config
        v_problem := conveyor._check_name('queue', v_queue);
        if v_problem is not null then
            perform conveyor._raise_invalid(v_problem);
        end if;
        perform conveyor._raise_unknown_queue(v_queue,
            'queues are created by an operator: conveyor.set_queue(name), define_task(queue => ...) or apply_config');
    end if;
    v_due := coalesce(p_run_at, v_now + p_delay, v_now);
    if p_keys is not null and v_task.debounce is not null then
        -- a debounced key's run waits for the enqueues that may follow (a payload without a key
        -- is not debounced)
        v_debounced := greatest(v_due, v_now + v_task.debounce);  -- (debounce_max is at least debounce)
    end if;
    if v_due <= v_now then
        v_free := case when v_task.limited is not false then conveyor._free_capacity(v_queue, p_task, v_n) else v_n end;
    end if;

    with input as (
        select i.n::integer as n, i.p, i.k, i.ck, conveyor.ulid_generate() as new_id,
               -- unique_for: a run of this key that finished within the window stands for it
               case when i.k is not null and v_task.unique_for is not null then (
                   select f.id from conveyor.runs f
                   where f.task = p_task and f.idempotency_key = i.k and f.finished_at is not null
                     and f.finished_at > v_now - v_task.unique_for
                   order by f.finished_at desc
                   limit 1) end as recent
        from unnest(p_payloads, p_keys, p_ckeys) with ordinality as i(p, k, ck, n)
    ),
    inserted as (
        insert into conveyor.runs (id, task, queue, status, priority, run_at, payload, created_at,
                                   task_version, idempotency_key, parent_run_id, concurrency_key)
        select i.new_id, p_task, v_queue,
               case when i.n <= v_free and (i.k is null or v_debounced is null) then 'queued' else 'scheduled' end::conveyor.run_status,
               coalesce(p_priority, v_task.priority),
               case when i.k is not null and v_debounced is not null then v_debounced else v_due end,
               i.p, v_now, v_task.version, i.k, p_parent, i.ck
        from input i
        where i.recent is null
        order by i.n
        on conflict (task, idempotency_key)
            where idempotency_key is not null and conveyor._live(status)
            do nothing
        returning id
    )
    select array_agg(ins.id order by i.n)
    into v_ids
    from input i
    left join inserted ins on ins.id = i.new_id;

    if p_keys is null then
        return query select i.n::integer, i.id from unnest(v_ids) with ordinality as i(id, n);
        return;
    end if;
    if v_task.on_duplicate = 'reject' then
        -- a key twice in one call is a duplicate too: refused before anything is looked up
        select k into v_dup from unnest(p_keys) as k where k is not null group by k having count(*) > 1 limit 1;
        if found then
            perform conveyor._raise_duplicate(p_task, v_dup.k, null, null);
        end if;
    end if;
    if v_task.on_duplicate = 'return' and v_task.debounce is null and v_task.unique_for is null then
        -- keys that matched a live run: that run's id (a fresh statement sees runs committed since)
        return query
        select i.n::integer, coalesce(v_ids[i.n], (
            select r.id from conveyor.runs r
            where r.task = p_task and r.idempotency_key = i.k
              and conveyor._live(r.status)))
        from unnest(p_keys) with ordinality as i(k, n)
        order by 1;
        return;
    end if;

    -- a policy: the existing run of each key that wrote none (live, else the recent finished
    -- one). Not locked here: only the updates below lock, and only runs that wait (a worker
    -- finishing a running one never waits for a producer); the last input of the call for a
    -- key is the one that counts
    select array_agg(i.n order by i.n), array_agg(e.id order by i.n)
    into v_dup_n, v_dup_run
    from unnest(p_keys) with ordinality as i(k, n)
    cross join lateral (
        select r.id from conveyor.runs r
        where r.task = p_task and r.idempotency_key = i.k
          and (conveyor._live(r.status) or r.finished_at > v_now - v_task.unique_for)
        order by conveyor._live(r.status) desc, r.finished_at desc nulls first
        limit 1) e
    where v_ids[i.n] is null and i.k is not null;

    if v_dup_n is not null and v_task.on_duplicate = 'reject' then
        select r.id, r.status into v_dup from conveyor.runs r where r.id = v_dup_run[1];
        perform conveyor._raise_duplicate(p_task, p_keys[v_dup_n[1]], v_dup.id, v_dup.status);
    end if;
    if v_dup_n is not null and v_task.on_duplicate = 'replace' then
        -- latest wins, while the run waits (a running attempt keeps what it started with)
        update conveyor.runs r set payload = d.p
        from (select distinct on (x.run_id) x.run_id, p_payloads[x.n] as p
              from unnest(v_dup_n, v_dup_run) as x(n, run_id)
              order by x.run_id, x.n desc) d
        where r.id = d.run_id and r.status in ('scheduled', 'queued', 'retrying', 'released');
    end if;
    if v_dup_n is not null and v_task.debounce is not null then
        -- each enqueue of the key restarts the wait of its scheduled run, up to debounce_max
        -- after the run's first enqueue
        update conveyor.runs r
        -- (never earlier than it was: the cap only stops the pushing back)
        set run_at = greatest(r.run_at, least(v_now + v_task.debounce,
                                              coalesce(r.created_at + v_task.debounce_max, 'infinity')))
        where r.id = any(v_dup_run) and r.status = 'scheduled';
    end if;
    return query
    select i.n::integer, coalesce(v_ids[i.n], v_dup_run[array_position(v_dup_n, i.n)])
    from generate_series(1, v_n) as i(n)
    order by 1;
end
$$;

-- enqueue: create a run of a task, in the caller's transaction. Due now (the default) in an
-- unbounded queue it is queued (claimable at once; listeners on conveyor.<queue> are woken at
-- commit); later, or in a bounded queue without room, it is scheduled and tick delivers it.
create or replace function conveyor.enqueue(
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
returns conveyor.ulid
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return (select e.id from conveyor._enqueue(task, array[payload], run_at, delay, priority, queue,
                                               case when idempotency_key is not null then array[idempotency_key] end,
                                               parent_run_id,
                                               case when enqueue.key is not null then array[enqueue.key] end) e);
end
$$;

comment on function conveyor.enqueue is
    'enqueue a run of a task (payload: a JSON object; run_at or delay; priority 0-9; queue override; idempotency_key; parent_run_id; key: its concurrency key); returns its id';

-- enqueue_many: enqueue many runs of one task in one statement; returns their ids in order.
create or replace function conveyor.enqueue_many(
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
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query
    select e.id from conveyor._enqueue(task, payloads, run_at, delay, priority, queue, idempotency_keys, parent_run_id, keys) e
    order by e.ord;
end
$$;

comment on function conveyor.enqueue_many is
    'enqueue many runs of one task in one statement (one payload each; idempotency_keys and keys aligned with payloads); returns their ids in order';
