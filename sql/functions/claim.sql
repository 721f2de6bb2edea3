-- functions/claim.sql: workers take queued runs under a lease (README: Workers). The lease token
-- proves the attempt to every later call (fencing).

-- claim_runs: claim up to `max` queued runs (priority, then due time, then id) from one queue or
-- several (comma-separated), optionally only of some tasks: queued -> running under a new lease.
-- Rows are locked FOR NO KEY UPDATE SKIP LOCKED, so concurrent claimers never share a run.
-- Runs of a disabled task fail (task_disabled) here instead of being returned, and the claim
-- goes on to the runs behind them.
-- bind_session: bind the runs to this database session, so that tick ends their attempts as
-- crashed as soon as the session is gone instead of at lease expiry (null: each task's
-- bind_session option, else that of the queue the run is claimed from, else the defaults';
-- false built in). Only for workers
-- that claim, heartbeat and finish on one direct connection: behind a transaction pooler the
-- session is the pooler's server connection, not the worker's (docs/guarantees.md).
create or replace function conveyor.claim_runs(
    queues text,
    worker text,
    max integer default 10,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns setof conveyor.claimed_run
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- a claim takes a few milliseconds: compiling its plans (JIT, once a cost estimate passes
-- jit_above_cost on a big table) costs more than it can save
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := conveyor._now();
    v_names text[] := array(select btrim(q) from unnest(string_to_array(claim_runs.queues, ',')) q where btrim(q) <> '');
    v_open text[];
    v_lease interval := claim_runs.lease;
    v_ids conveyor.ulid[];
    v_claimed conveyor.claimed_run[] := '{}';
    v_batch conveyor.claimed_run[];
    v_disabled conveyor._ending[];
    v_want integer := claim_runs.max;
    v_round integer := 0;
    -- shown on dashboards and terminals: no control or bidi characters (conveyor._clean)
    v_worker text := conveyor._clean(claim_runs.worker);
    -- this session, for runs bound to it (conveyor.sessions)
    v_pid integer := pg_backend_pid();
    v_started timestamptz := conveyor._session_started_at();
    v_bound boolean := false;
    -- the open queues whose bind_session (else the defaults') is on
    v_binding text[];
    -- rate limits (_rate_allowance): the limits with room and how much, those without
    v_rated boolean := false;
    v_cap_queues text[];
    v_queue_caps integer[];
    v_full_queues text[];
    -- the shards taken (scope, name, shard, room), for the starts recorded at the end
    v_room_scopes text[];
    v_room_names text[];
    v_room_shards smallint[];
    v_room_allowed integer[];
    v_cap_tasks text[];
    v_task_caps integer[];
    v_full_tasks text[] := '{}';
    v_started_queues text[] := '{}';
    v_started_tasks text[] := '{}';
    v_started_keys text[] := '{}';
    v_started_qshards smallint[] := '{}';
    v_started_tshards smallint[] := '{}';
    v_round_queues text[];
    v_round_tasks text[];
    v_round_keys text[];
    v_round_qshards smallint[];
    v_round_tshards smallint[];
    v_queue text;
    v_take integer;
    -- key limits (key_concurrency, key_rate_limit) of the open queues and of the tasks: scope
    -- (queue or task), name, limits
    v_keyed boolean := false;
    v_kl_scopes text[];
    v_kl_names text[];
    v_kl_conc integer[];
    v_kl_rate_n integer[];
    v_kl_rate_p interval[];
    v_kl_shards integer[];
    -- a second try at the shards of keys with too little room
    v_more_scopes text[];
    v_more_names text[];
    v_more_keys text[];
    v_more_shards smallint[];
    -- (the untried shards of keys short of room: scope, name, key, shard, what the key misses, room)
    v_try_scopes text[];
    v_try_names text[];
    v_try_keys text[];
    v_try_shards smallint[];
    v_try_missing bigint[];
    v_try_rooms integer[];
    -- this round's keys under a limit (scope, name, key), the shard of the limit taken for each
    -- (null: none free with room) and the runs each may still start under it
    v_gate_scopes text[];
    v_gate_names text[];
    v_gate_keys text[];
    v_gate_shards smallint[];
    v_gate_allowed integer[];
    -- (and the candidates each key has under each limit)
    v_gate_want integer[];
    -- (and the shard each key tries first: _key_gates)
    v_gate_start smallint[];
    -- the shards the runs chosen start under (aligned with v_ids)
    v_id_qshards smallint[];
    v_id_tshards smallint[];
    -- the keys of these rounds that may start no more runs (_key_ref), left out of later rounds
    v_full_keys text[] := '{}';
    v_since timestamptz;
    v_held boolean;
    -- the keys of this round's candidates
    v_keys text[];
    v_cand conveyor._candidate[];
    v_part conveyor._candidate[];
begin
    if v_worker is null or btrim(v_worker) = '' or length(v_worker) > 200 then
        perform conveyor._raise_invalid('worker must name the claiming worker (1 to 200 characters), e.g. host:pid');
    end if;
    if claim_runs.max is null or claim_runs.max not between 1 and 10000 then
        perform conveyor._raise_invalid(format('invalid max %s: expected 1 to 10000 runs per claim', coalesce(claim_runs.max::text, 'null')));
    end if;
    if v_lease is not null and v_lease <= interval '0' then
        perform conveyor._raise_invalid('lease must be longer than 0s');
    end if;
    select array_agg(q.name),
           coalesce(array_agg(q.name) filter (where coalesce(q.bind_session, (select d.bind_session from conveyor._defaults d))), '{}')
    into v_open, v_binding
    from conveyor.queues q where q.name = any(v_names) and not q.paused;
    if v_open is null then
        return;
    end if;

    -- Key limits: the open queues' and the tasks' key_concurrency and key_rate_limit
    select array_agg(l.scope), array_agg(l.name), array_agg(l.conc), array_agg(l.rate_n), array_agg(l.rate_p),
           array_agg(conveyor._key_shards(l.conc, l.rate_n))
    into v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards
    from (select 'queue' as scope, q.name, q.key_concurrency as conc, q.key_rate_limit_n as rate_n,
                 q.key_rate_limit_period as rate_p
          from conveyor.queues q
          where q.name = any(v_open) and (q.key_concurrency is not null or q.key_rate_limit_n is not null)
          union all
          select 'task', t.name, t.key_concurrency, t.key_rate_limit_n, t.key_rate_limit_period
          from conveyor.tasks t
          where (t.key_concurrency is not null or t.key_rate_limit_n is not null)
            -- (every one, as for rate limits: a run of one may become queued in these queues while
            -- this claim runs, and must not start uncounted)
            and (claim_runs.tasks is null or t.name = any(claim_runs.tasks))) l;
    v_keyed := v_kl_scopes is not null;

    -- Rate limits: a queue without room is left out of this claim, a task without room is
    -- skipped (the runs of other tasks are taken: no head-of-line blocking), and the others cap
    -- what the claim takes of them; the starts are recorded below, before the commit
    if exists (select from conveyor._rate_limits) then
        select array_agg(a.scope order by a.scope, a.name, a.shard), array_agg(a.name order by a.scope, a.name, a.shard),
               array_agg(a.shard order by a.scope, a.name, a.shard), array_agg(a.allowed order by a.scope, a.name, a.shard)
        into v_room_scopes, v_room_names, v_room_shards, v_room_allowed
        from conveyor._rate_allowance(v_open, claim_runs.tasks, claim_runs.max) a;
        -- per limit: the room of its shards
        select array_agg(a.name order by a.name) filter (where a.scope = 'queue' and a.allowed > 0),
               array_agg(a.allowed order by a.name) filter (where a.scope = 'queue' and a.allowed > 0),
               array_agg(a.name order by a.name) filter (where a.scope = 'queue' and a.allowed = 0),
               array_agg(a.name order by a.name) filter (where a.scope = 'task' and a.allowed > 0),
               array_agg(a.allowed order by a.name) filter (where a.scope = 'task' and a.allowed > 0)
        into v_cap_queues, v_queue_caps, v_full_queues, v_cap_tasks, v_task_caps
        from (select x.scope, x.name, sum(x.allowed)::integer as allowed
              from unnest(v_room_scopes, v_room_names, v_room_allowed) as x(scope, name, allowed)
              group by x.scope, x.name) a;
        -- every rate-limited task this claim has no room for is left out: those without room,
        -- and those whose runs were queued after _rate_allowance looked (so none starts uncounted)
        v_full_tasks := array(select t.name from conveyor.tasks t
                              where t.rate_limit_n is not null and t.name <> all(coalesce(v_cap_tasks, '{}')));
        v_rated := true;
        -- the runs start now, after the wait for the limits' rows: their started_at, leases and
        -- the starts recorded are this time, the time the window was counted at or later
        v_now := conveyor._clock_now();
        if v_full_queues is not null then
            v_open := array(select o from unnest(v_open) o where o <> all(v_full_queues));
            if cardinality(v_open) = 0 then
                return;
            end if;
        end if;
    end if;

    -- Runs of a disabled task fail (task_disabled) as they are claimed and do not count: while a
    -- round met some, claim again for what is still wanted (at most 10 rounds a call, each
    -- failing up to `max` of them, so a backlog of disabled runs drains and never hides the
    -- enabled runs behind it for long)
    loop
        v_round := v_round + 1;
        v_ids := null;
        if v_rated or v_keyed then
            -- under rate or key limits: the best runs of each queue (but those of tasks and keys
            -- without room), at most the queue's room of them, locked as they are found (SKIP
            -- LOCKED: concurrent claims take different runs; one statement per queue, the shape
            -- the claimable index answers in order), then at most each task's and each key's room
            -- of those, the best first. A run locked here and left over (a task's or key's room,
            -- several queues) stays queued, unseen by other claims until this one commits.
            v_cand := '{}';
            foreach v_queue in array v_open loop
                v_take := least(v_want, coalesce(v_queue_caps[array_position(v_cap_queues, v_queue)], v_want));
                -- (the planner takes "task <> all(an array)" to keep next to nothing and would sort
                -- the whole queue instead of reading it in index order: without tasks or keys to
                -- leave out the statement does not ask, with some it asks a function, which it
                -- does not estimate that way)
                if cardinality(v_full_tasks) = 0 and cardinality(v_full_keys) = 0 then
                    -- (from the queue's claim hint on, the index range's start: tick_hint.sql)
                    v_cand := v_cand || array(
                        select x.c from conveyor._claim_floor(v_queue, v_now) f
                        cross join lateral (
                            select row(p.id, p.task, p.priority, p.run_at, p.queue, p.concurrency_key, p.fair_rank)::conveyor._candidate as c,
                                   p.priority, p.fair_rank, p.run_at, p.id
                            from conveyor.runs p
                            where p.status = 'queued' and p.queue = v_queue
                              and (p.priority, p.fair_rank, p.run_at, p.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                              and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                            order by p.priority, p.fair_rank, p.run_at, p.id
                            limit v_take
                            for no key update skip locked) x
                        order by x.priority, x.fair_rank, x.run_at, x.id);
                else
                    -- keys at their limit (or tasks without room) to look past: by key, when the
                    -- queue's queued runs have few keys (the runs of the keys at their limit are
                    -- never read), else in claim order, past them
                    v_part := case when cardinality(v_full_keys) > 0 then
                        conveyor._candidates_by_key(v_queue, claim_runs.tasks, v_full_tasks, v_full_keys, v_take) end;
                    if v_part is null then
                        v_part := array(
                            select x.c from conveyor._claim_floor(v_queue, v_now) f
                            cross join lateral (
                                select row(p.id, p.task, p.priority, p.run_at, p.queue, p.concurrency_key, p.fair_rank)::conveyor._candidate as c,
                                       p.priority, p.fair_rank, p.run_at, p.id
                                from conveyor.runs p
                                where p.status = 'queued' and p.queue = v_queue
                                  and (p.priority, p.fair_rank, p.run_at, p.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                                  and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                                  and not conveyor._held_back(p.queue, p.task, p.concurrency_key, v_full_tasks, v_full_keys)
                                order by p.priority, p.fair_rank, p.run_at, p.id
                                limit v_take
                                for no key update skip locked) x
                            order by x.priority, x.fair_rank, x.run_at, x.id);
                    end if;
                    v_cand := v_cand || v_part;
                end if;
            end loop;
            -- (this round's gates only: none is left from an earlier round)
            v_gate_scopes := null;
            v_gate_names := null;
            v_gate_keys := null;
            v_gate_shards := null;
            v_gate_allowed := null;
            v_gate_want := null;
            v_gate_start := null;
            if v_keyed then
                -- each key under a limit among the candidates takes a shard of that limit for
                -- this transaction (_key_shards: up to 8, whose shares add up to the limit): an
                -- advisory lock per shard, tried and never waited for (_key_gates). A key that
                -- gets none is left for now. Claims of one shard take turns, so the next
                -- statement, which counts the shard's running runs and starts, sees every one
                -- committed before. (A key whose candidates one shard's full share covers tries
                -- its shards in turn from one that depends on the session and the key, so that
                -- concurrent claims of a key take different ones; a key with more candidates
                -- takes none there, and below as many of its shards with room as it needs.)
                select array_agg(g.scope), array_agg(g.name), array_agg(g.key), array_agg(g.shard),
                       array_agg(g.want), array_agg(g.start), array_agg(distinct g.key)
                into v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards, v_gate_want, v_gate_start, v_keys
                from (select array_agg(c.queue) as queues, array_agg(c.task) as tasks,
                             array_agg(c.concurrency_key) as keys
                      from unnest(v_cand) c) c
                cross join lateral conveyor._key_gates(c.queues, c.tasks, c.keys, v_kl_scopes, v_kl_names,
                                                       v_kl_conc, v_kl_rate_n, v_kl_shards, v_pid) g;
            end if;
            if v_gate_scopes is not null then
                if current_setting('transaction_isolation') <> 'read committed' then
                    perform conveyor._raise_invalid('a claim under a key limit needs READ COMMITTED (it must see every start committed before it)');
                end if;
                -- the room of each key under each shard it holds: the shard's share of the limit
                -- less the key's running runs (and starts of the rate window) under it, as
                -- committed now. Runs and starts under no shard of this limit (taken before it was
                -- set or changed) count against every shard.
                v_since := conveyor._clock_now();
                v_gate_allowed := conveyor._key_room(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards,
                    v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards, v_keys, v_since, v_want,
                    v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards);
                -- a key whose shards held have less room than it has candidates tries its other
                -- shards (the first ones depend on the session, not on where the room is), and so
                -- does a key with more candidates than a shard's share, which took none yet
                v_more_scopes := null;
                if exists (select from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_allowed, v_gate_want)
                                       as g(scope, name, key, allowed, want)
                           group by g.scope, g.name, g.key
                           having sum(g.allowed) < max(g.want)) then
                    -- the untried shards of those keys, in turn from each key's first, with what
                    -- the key still misses and each shard's room as committed (_key_room, which
                    -- counts the rate window's starts and what other shards borrowed too); those
                    -- with room taken while the missing room is not covered: a claim never takes
                    -- more of a key's shards than it can use, which would keep other claims of the
                    -- key waiting for a round, and one another claim holds is passed over for the
                    -- next (_key_more). Their room is counted again once they are held, below.
                    select array_agg(x.scope order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.name order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.key order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.shard order by x.scope, x.name, x.key, x.ord),
                           array_agg(x.missing order by x.scope, x.name, x.key, x.ord)
                    into v_try_scopes, v_try_names, v_try_keys, v_try_shards, v_try_missing
                    from (select d.scope, d.name, d.key, sh.shard::smallint as shard, w.want - d.room as missing,
                                 (sh.shard - w.start + w.shards) % w.shards as ord
                          from (select g.scope, g.name, g.key, sum(g.allowed) as room, count(g.shard) as held,
                                       array_agg(g.shard) filter (where g.shard is not null) as tried
                                from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards, v_gate_allowed)
                                     as g(scope, name, key, shard, allowed)
                                group by g.scope, g.name, g.key) d
                          -- (_key_gates gave each key one gate: one row of w per key)
                          join (select g.scope, g.name, g.key, g.want, g.start, l.shards
                                from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_want, v_gate_start)
                                     as g(scope, name, key, want, start)
                                join unnest(v_kl_scopes, v_kl_names, v_kl_shards) as l(scope, name, shards)
                                  on (l.scope, l.name) = (g.scope, g.name)) w
                            on (w.scope, w.name, w.key) = (d.scope, d.name, d.key)
                          cross join lateral generate_series(0, w.shards - 1) as sh(shard)
                          where d.room < w.want and d.held < w.shards and sh.shard <> all(coalesce(d.tried, '{}'))) x;
                    if v_try_scopes is not null then
                        v_try_rooms := conveyor._key_room(v_try_scopes, v_try_names, v_try_keys, v_try_shards,
                            v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards,
                            array(select distinct k from unnest(v_try_keys) k), v_since, v_want,
                            v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards);
                        select array_agg(t.scope), array_agg(t.name), array_agg(t.key), array_agg(t.shard)
                        into v_more_scopes, v_more_names, v_more_keys, v_more_shards
                        from conveyor._key_more(v_try_scopes, v_try_names, v_try_keys, v_try_shards,
                                                v_try_rooms::bigint[], v_try_missing) t;
                    end if;
                end if;
                if v_more_scopes is not null then
                    v_gate_scopes := v_gate_scopes || v_more_scopes;
                    v_gate_names := v_gate_names || v_more_names;
                    v_gate_keys := v_gate_keys || v_more_keys;
                    v_gate_shards := v_gate_shards || v_more_shards;
                    v_gate_allowed := v_gate_allowed || conveyor._key_room(v_more_scopes, v_more_names, v_more_keys, v_more_shards,
                        v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p, v_kl_shards, v_keys, v_since, v_want,
                        v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards);
                end if;
                -- the runs start after that count: no attempt that ended before it was counted
                -- seems to overlap theirs
                v_now := conveyor._clock_now();
            end if;
            -- the best candidates within each task's room and each key's, and the shard each
            -- key's run starts under (src/admit.rs)
            select array_agg(p.id order by p.n), array_agg(p.queue_shard order by p.n),
                   array_agg(p.task_shard order by p.n)
            into v_ids, v_id_qshards, v_id_tshards
            from (select array_agg(c.id::uuid) as ids, array_agg(c.task) as tasks, array_agg(c.queue) as queues,
                         array_agg(c.concurrency_key) as keys, array_agg(c.priority) as priorities,
                         array_agg(c.fair_rank) as fair_ranks, array_agg(c.run_at) as run_ats
                  from unnest(v_cand) c) c
            cross join lateral conveyor._key_pick(c.ids, c.tasks, c.queues, c.keys, c.priorities, c.fair_ranks, c.run_ats,
                v_gate_scopes, v_gate_names, v_gate_keys, v_gate_shards, v_gate_allowed, v_cap_tasks, v_task_caps, v_want)
                with ordinality as p(id, queue_shard, task_shard, n)
            where c.ids is not null;
            -- candidates left over for a task's or key's room: another round may find others
            v_held := cardinality(v_cand) > coalesce(cardinality(v_ids), 0);
            exit when v_ids is null and not v_held;
            -- (none may fit this round: the update below then takes none, never the next in line)
            v_ids := coalesce(v_ids, '{}');
        elsif cardinality(v_open) > 1 then
            -- the best candidates of each queue, then the best of those, locked. Queues are
            -- merged by priority, then by each run's turn counted from its queue's first
            -- candidate's (turns are a queue's own), then by due time
            select array_agg(r.id) into v_ids from (
                select r.id from conveyor.runs r
                join (
                    select c.id, c.priority, c.fair_rank - min(c.fair_rank) over (partition by c.queue, c.priority) as turn, c.run_at
                    from unnest(v_open) as q(name)
                    cross join lateral conveyor._claim_floor(q.name, v_now) f
                    cross join lateral (
                        select r2.id, r2.queue, r2.priority, r2.fair_rank, r2.run_at from conveyor.runs r2
                        where r2.status = 'queued' and r2.queue = q.name
                          and (r2.priority, r2.fair_rank, r2.run_at, r2.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                          and (claim_runs.tasks is null or r2.task = any(claim_runs.tasks))
                        order by r2.priority, r2.fair_rank, r2.run_at, r2.id
                        limit v_want * 2
                    ) c
                    order by 2, 3, 4, 1
                    limit v_want * 2) c on c.id = r.id
                where r.status = 'queued'
                order by c.priority, c.turn, c.run_at, c.id
                limit v_want
                for no key update of r skip locked
            ) r;
            exit when v_ids is null;
        end if;

        with claimed as (
            update conveyor.runs r
            set status = 'running',
                prev_attempt_id = r.attempt_id,
                attempt_id = conveyor.ulid_generate(),
                lease_token = gen_random_uuid(),
                lease_expires_at = v_now + least(coalesce(v_lease, c.lease), c.max_lease),
                timeout_at = v_now + c.timeout,
                started_at = v_now,
                worker = v_worker,
                log_size = 0,
                -- bind_session: the claim's argument, else the task's, else the run's queue's (or the defaults')
                session_pid = case when coalesce(claim_runs.bind_session, c.bind_session, r.queue = any(v_binding))
                                   then v_pid end,
                session_started_at = case when coalesce(claim_runs.bind_session, c.bind_session, r.queue = any(v_binding))
                                          then v_started end,
                -- under key limits: the shard of each limit the run starts under (else none)
                queue_key_shard = case when v_gate_scopes is not null then v_id_qshards[array_position(v_ids, r.id)] end,
                task_key_shard = case when v_gate_scopes is not null then v_id_tshards[array_position(v_ids, r.id)] end
            from conveyor.task_config c
            where c.name = r.task
              and r.id = any(coalesce(v_ids, array(
                  -- one queue: pick and lock in index order, in this same statement (an array, so the
                  -- generic plan looks the rows up by primary key whatever max is)
                  -- (from the queue's claim hint on, the index range's start: tick_hint.sql)
                  select x.id from conveyor._claim_floor(v_open[1], v_now) f
                  cross join lateral (
                      select p.id from conveyor.runs p
                      where p.status = 'queued' and p.queue = v_open[1]
                        and (p.priority, p.fair_rank, p.run_at, p.id) >= (f.priority, f.fair_rank, f.run_at, f.id)
                        and (claim_runs.tasks is null or p.task = any(claim_runs.tasks))
                      order by p.priority, p.fair_rank, p.run_at, p.id
                      limit v_want
                      for no key update skip locked) x)))
            returning r.id, r.lease_token, r.task, r.queue, r.payload, r.attempts + 1 as attempt, r.failures, r.releases,
                      r.attempt_id, r.priority, r.parent_run_id, r.lease_expires_at, r.timeout_at, r.run_at, c.enabled,
                      r.session_pid is not null as bound, r.fair_rank, r.concurrency_key, r.queue_key_shard, r.task_key_shard
        )
        select
            array_agg(row(c.id, c.lease_token, c.task, c.queue, c.payload, c.attempt, c.failures, c.releases,
                          c.attempt_id, c.priority, c.parent_run_id, c.lease_expires_at, c.timeout_at)::conveyor.claimed_run
                      order by c.priority, c.fair_rank, c.run_at, c.id) filter (where c.enabled),
            array_agg(row(c.id, c.lease_token, null, 'failed',
                          conveyor._failure('task_disabled', format('task "%s" is disabled', c.task)),
                          false, null, null, null)::conveyor._ending) filter (where not c.enabled),
            v_bound or coalesce(bool_or(c.bound and c.enabled), false),
            -- the runs that start work (a disabled task's run fails at once and is no start)
            array_agg(c.queue) filter (where c.enabled), array_agg(c.task) filter (where c.enabled),
            array_agg(c.concurrency_key) filter (where c.enabled),
            array_agg(c.queue_key_shard) filter (where c.enabled), array_agg(c.task_key_shard) filter (where c.enabled)
        into v_batch, v_disabled, v_bound, v_round_queues, v_round_tasks, v_round_keys, v_round_qshards, v_round_tshards
        from claimed c;

        v_claimed := v_claimed || coalesce(v_batch, '{}');
        v_started_queues := v_started_queues || coalesce(v_round_queues, '{}');
        v_started_tasks := v_started_tasks || coalesce(v_round_tasks, '{}');
        v_started_keys := v_started_keys || coalesce(v_round_keys, '{}');
        v_started_qshards := v_started_qshards || coalesce(v_round_qshards, '{}');
        v_started_tshards := v_started_tshards || coalesce(v_round_tshards, '{}');
        exit when v_disabled is null and not coalesce(v_held, false);
        if v_disabled is not null then
            perform conveyor._end_attempts(v_disabled);
        end if;
        if v_rated then
            -- what is left of each limit's room for the next round
            v_queue_caps := conveyor._room_left(v_cap_queues, v_queue_caps, v_round_queues);
            v_task_caps := conveyor._room_left(v_cap_tasks, v_task_caps, v_round_tasks);
            v_full_tasks := v_full_tasks || array(select v_cap_tasks[i] from generate_subscripts(v_cap_tasks, 1) as i
                                                  where v_task_caps[i] <= 0);
            v_open := array(select o from unnest(v_open) o
                            where coalesce(v_queue_caps[array_position(v_cap_queues, o)], 1) > 0);
            exit when cardinality(v_open) = 0;
        end if;
        v_want := claim_runs.max - cardinality(v_claimed);
        exit when v_want <= 0 or v_round >= 10;
        if v_gate_scopes is not null then
            -- (only for another round) the keys with no room left in the shards they hold (or
            -- none) sit out the next rounds, and so does every key at its limit now (as
            -- committed, and with this claim's runs): the next round looks past all of them at
            -- once, however many there are
            v_full_keys := v_full_keys || array(
                select conveyor._key_ref(g.scope, g.name, g.key)
                from unnest(v_gate_scopes, v_gate_names, v_gate_keys, v_gate_allowed) as g(scope, name, key, allowed)
                group by g.scope, g.name, g.key
                having sum(g.allowed) <= (select count(*) from unnest(v_round_queues, v_round_tasks, v_round_keys) as x(queue, task, key)
                                          where x.key = g.key
                                            and case g.scope when 'queue' then x.queue = g.name else x.task = g.name end))
              || conveyor._keys_at_limit(v_kl_scopes, v_kl_names, v_kl_conc, v_kl_rate_n, v_kl_rate_p);
        end if;
    end loop;
    if v_rated and cardinality(v_started_queues) > 0 then
        -- this claim's starts, in the window of each limit it started runs under (the rows of
        -- those limits are this transaction's until it commits)
        -- each limit's runs started, spread over the shards taken, each up to its room
        with started as (
            select 'queue' as scope, x.name, count(*) as n from unnest(v_started_queues) as x(name) group by x.name
            union all
            select 'task', x.name, count(*) from unnest(v_started_tasks) as x(name) group by x.name
        ),
        shards as (
            select r.scope, r.name, r.shard, r.allowed,
                   coalesce(sum(r.allowed) over (partition by r.scope, r.name order by r.shard
                                                 rows between unbounded preceding and 1 preceding), 0) as before
            from unnest(v_room_scopes, v_room_names, v_room_shards, v_room_allowed) as r(scope, name, shard, allowed)
            where r.allowed > 0
        )
        insert into conveyor._rate_starts (scope, name, shard, at, n)
        select h.scope, h.name, h.shard, v_now, least(h.allowed, s.n - h.before)
        from shards h
        join started s on (s.scope, s.name) = (h.scope, h.name)
        where s.n > h.before;
    end if;
    if v_keyed and cardinality(v_started_keys) > 0 and cardinality(array_remove(v_kl_rate_n, null)) > 0 then
        -- this claim's starts under each key rate limit (the key's lock is this transaction's
        -- until it commits)
        insert into conveyor._rate_starts (scope, name, shard, at, n, key)
        select l.scope || '_key', l.name, case l.scope when 'queue' then x.qshard else x.tshard end, v_now, count(*), x.key
        from unnest(v_started_queues, v_started_tasks, v_started_keys, v_started_qshards, v_started_tshards)
             as x(queue, task, key, qshard, tshard)
        join unnest(v_kl_scopes, v_kl_names, v_kl_rate_n) as l(scope, name, rate_n)
          on l.name = case l.scope when 'queue' then x.queue else x.task end
        where x.key is not null and l.rate_n is not null
        group by 1, 2, 3, x.key;
    end if;
    if v_bound then
        -- the session's row, written once per session; only tick deletes it, once it is gone
        insert into conveyor.sessions (pid, started_at, worker, bound_at)
        values (v_pid, v_started, v_worker, v_now)
        on conflict do nothing;
    end if;
    return query select * from unnest(v_claimed);
end
$$;

comment on function conveyor.claim_runs is
    'claim up to max runs from a queue (or several, comma-separated) for a worker; each comes with a lease_token for heartbeat/complete/fail/release';

-- claim_run: claim_runs with max 1.
create or replace function conveyor.claim_run(
    queues text,
    worker text,
    lease conveyor.duration default null,
    tasks text[] default null,
    bind_session boolean default null
)
returns setof conveyor.claimed_run
language plpgsql
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return query select * from conveyor.claim_runs(queues, worker, 1, lease, tasks, bind_session);
end
$$;

comment on function conveyor.claim_run is
    'claim one run (zero or one row) from a queue (or several, comma-separated)';

-- lease_granted: the lease a claim or heartbeat asking for this one gets (it never goes past
-- max_lease). For workers that time their own lease refreshes, without read access to the
-- defaults.
create or replace function conveyor.lease_granted(lease conveyor.duration)
returns interval
language sql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$ select least(lease_granted.lease::interval, d.max_lease) from conveyor.defaults d $$;

comment on function conveyor.lease_granted is 'the lease a claim or heartbeat asking for this one gets (capped by max_lease)';

-- pending: how many runs of these queues (comma-separated) are not finished yet: waiting,
-- queued or running. Lets a worker that drains its queues know when it is done, without
-- read access to the run tables.
create or replace function conveyor.pending(queues text)
returns bigint
language plpgsql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return (select count(*) from conveyor.runs r
            where r.queue = any(array(select btrim(q) from unnest(string_to_array(pending.queues, ',')) q))
              and conveyor._live(r.status));
end
$$;

comment on function conveyor.pending is 'runs of these queues (comma-separated) not finished yet: waiting, queued or running';

-- _room_left: each limit's room (p_room, of the limits p_names) less the runs of it in
-- p_started (a round of a claim under rate limits, for the next round).
create or replace function conveyor._room_left(p_names text[], p_room integer[], p_started text[])
returns integer[]
language sql
immutable
as $$
    select array(select p_room[i] - (select count(*) from unnest(coalesce(p_started, '{}')) s where s = p_names[i])::integer
                 from generate_subscripts(p_names, 1) as i order by i)
$$;

-- _rate_limits_of: the rate limits a claim from these queues (of these tasks, null: any) could
-- start runs under: the queues' own, and those of the rate-limited tasks with queued runs in them
-- (a task's limit counts its runs in every queue). A plain SQL function, inlined where it is used.
create or replace function conveyor._rate_limits_of(p_open text[], p_tasks text[])
returns table (scope text, name text, period interval)
language sql
stable
as $$
    select 'queue', q.name, q.rate_limit_period
    from conveyor.queues q
    where q.name = any(p_open) and q.rate_limit_n is not null
    union all
    select 'task', t.name, t.rate_limit_period
    from conveyor.tasks t
    where t.rate_limit_n is not null and (p_tasks is null or t.name = any(p_tasks))
      and exists (select from conveyor.runs r
                  where r.task = t.name and r.status = 'queued' and r.queue = any(p_open))
$$;

-- _rate_allowance: the rate limits a claim from these queues (of these tasks, null: any) starts
-- runs under, with how many runs it may still start under each now, per shard. A limit is
-- split into shards with a share each (_rate_limits); the claim takes shards of each limit for
-- this transaction (FOR NO KEY UPDATE: claims of one shard take turns): free ones with room, in
-- random order, until their room covers p_want, else it waits for one with room (2 s at most).
-- A shard's room is its share less its starts of the window that ends now (clock time), every one
-- committed before the row was ours.
-- A queue's limit counts the runs started from it, a task's its runs in any queue. Needs READ
-- COMMITTED: an older snapshot would miss the starts committed since (22023).
create or replace function conveyor._rate_allowance(p_open text[], p_tasks text[], p_want integer)
returns table (scope text, name text, shard smallint, allowed integer)
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_timeout text := current_setting('lock_timeout');
    v_limit record;
    v_shard record;
    v_room integer;
    v_total integer;
    v_busy boolean;
    v_waited smallint;
begin
    for v_limit in
        select l.scope, l.name, l.period from conveyor._rate_limits_of(p_open, p_tasks) l order by l.scope, l.name
    loop
        if current_setting('transaction_isolation') <> 'read committed' then
            perform conveyor._raise_invalid('a claim under a rate limit needs READ COMMITTED (it must see every start committed before it)');
        end if;
        v_total := 0;
        v_busy := false;
        -- the shards in random order (claims spread over them), each tried without waiting
        for v_shard in
            select l.shard from conveyor._rate_limits l
            where l.scope = v_limit.scope and l.name = v_limit.name
            order by random()
        loop
            perform from conveyor._rate_limits l
            where (l.scope, l.name, l.shard) = (v_limit.scope, v_limit.name, v_shard.shard)
            for no key update skip locked;
            if not found then
                v_busy := true;
                continue;
            end if;
            v_room := conveyor._rate_room(v_limit.scope, v_limit.name, v_shard.shard, v_limit.period);
            if v_room > 0 then
                return query select v_limit.scope, v_limit.name, v_shard.shard, v_room;
                v_total := v_total + v_room;
                exit when v_total >= p_want;
            end if;
        end loop;
        continue when v_total > 0;
        if not v_busy then
            -- every shard is full
            return query select v_limit.scope, v_limit.name, null::smallint, 0;
            continue;
        end if;
        -- the free shards are full: wait for one that another claim holds (2 s at most)
        v_waited := null;
        -- (a caller's shorter lock_timeout stands)
        if v_timeout in ('0', '') or v_timeout::interval > interval '2s' then
            perform set_config('lock_timeout', '2s', true);
        end if;
        begin
            select l.shard into v_waited from conveyor._rate_limits l
            where l.scope = v_limit.scope and l.name = v_limit.name
              and conveyor._rate_room(l.scope, l.name, l.shard, v_limit.period) > 0
            order by random()
            limit 1
            for no key update;
        exception when lock_not_available or deadlock_detected then
            v_waited := null;
        end;
        perform set_config('lock_timeout', v_timeout, true);
        v_room := null;
        if v_waited is not null then
            v_room := conveyor._rate_room(v_limit.scope, v_limit.name, v_waited, v_limit.period);
        end if;
        return query select v_limit.scope, v_limit.name, v_waited, greatest(coalesce(v_room, 0), 0);
    end loop;
end
$$;

-- _rate_room: a shard's share less its starts of the window that ends now (clock time, after
-- the wait for its row: every start committed until then), read by a statement of its own.
-- (plpgsql, not sql: its plan is kept from call to call; a SQL function's is made anew each time)
create or replace function conveyor._rate_room(p_scope text, p_name text, p_shard smallint, p_period interval)
returns integer
language plpgsql
volatile
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    -- computed once: a volatile call in the condition would keep the index from bounding the scan
    v_since timestamptz := conveyor._clock_now() - p_period;
begin
    return (select l.quota - coalesce((select sum(s.n) from conveyor._rate_starts s
                                       where s.scope = p_scope and s.name = p_name and s.shard = p_shard
                                         and s.at > v_since), 0)::integer
            from conveyor._rate_limits l
            where (l.scope, l.name, l.shard) = (p_scope, p_name, p_shard));
end
$$;

-- _clock_now: the time now, not the transaction's: clock_timestamp(), or the test clock when one
-- is set (conveyor._now() then differs from the transaction time). Rate-limited claims start
-- their runs at it, after they waited for the limits' rows.
create or replace function conveyor._clock_now()
returns timestamptz
language sql
volatile
as $$ select case when conveyor._now() = transaction_timestamp() then clock_timestamp() else conveyor._now() end $$;

-- rate_limited_until: when a run of these queues (comma-separated) that a rate limit holds back
-- can start: the earliest time a shard of one of the limits with no room left now has room
-- again (the oldest starts of its window have left it). Null: no limit holds any of their runs
-- back now. For workers: sleep until then rather than claim in a loop.
create or replace function conveyor.rate_limited_until(queues text)
returns timestamptz
language sql
stable
security definer
set search_path = pg_catalog, conveyor, pg_temp
as $$
    with names as (
        select array(select btrim(q) from unnest(string_to_array(rate_limited_until.queues, ',')) q where btrim(q) <> '') as open
    ),
    limits as (
        select l.* from names, conveyor._rate_limits_of(names.open, null) l
    ),
    shards as (
        select l.scope, l.name, l.period, r.shard, r.quota
        from limits l join conveyor._rate_limits r on r.scope = l.scope and r.name = l.name
    ),
    -- each shard's starts of the window, newest first, with the runs started since each
    windows as (
        select h.scope, h.name, h.shard, h.quota, h.period, s.at,
               sum(s.n) over (partition by h.scope, h.name, h.shard order by s.at desc
                              rows between unbounded preceding and current row) as since
        from shards h
        join conveyor._rate_starts s on s.scope = h.scope and s.name = h.name and s.shard = h.shard
                                     and s.at > conveyor._now() - h.period
    ),
    -- a full shard has room once the start that filled it has left the window
    full_shards as (
        select distinct on (w.scope, w.name, w.shard) w.scope, w.name, w.at + w.period as free_at
        from windows w
        where w.since >= w.quota
        order by w.scope, w.name, w.shard, w.at desc
    )
    -- a limit holds runs back while every shard of it is full; it frees with its first shard
    select min(f.free_at)
    from (select f.scope, f.name, min(f.free_at) as free_at, count(*) as full_count
          from full_shards f group by f.scope, f.name) f
    join (select h.scope, h.name, count(*) as shard_count from shards h group by h.scope, h.name) c
      on (c.scope, c.name) = (f.scope, f.name)
    where f.full_count = c.shard_count
$$;

comment on function conveyor.rate_limited_until is
    'when a run of these queues that a rate limit holds back can start (null: none is held back now)';

-- _key_ref: one key under one key limit (scope queue or task, the queue's or task's name, the
-- key), as one text: the name of its lock and of its entry in claim_runs' list of full keys.
-- (Names of queues and tasks hold no control characters: the first two separators are theirs.)
create or replace function conveyor._key_ref(p_scope text, p_name text, p_key text)
returns text
language sql
immutable
as $$ select p_scope || E'\x1f' || p_name || E'\x1f' || p_key $$;

-- _key_shards: how many shards a key limit is split into (up to 8, none with a share of 0 of
-- its concurrency or its rate), so that as many claims of one key can go at once.
create or replace function conveyor._key_shards(p_conc integer, p_rate integer)
returns integer
language sql
immutable
as $$ select least(8, coalesce(p_conc, 8), coalesce(p_rate, 8)) $$;

-- _key_running: the running runs of these keys under each of these key limits (scope, name,
-- and its number of shards), a row each, with the shard of the limit it started under: -1 for
-- those under none of its shards (claimed before it was set or changed; they count against
-- every shard). One read of the keys' running runs (runs_running_by_key).
create or replace function conveyor._key_running(p_keys text[], p_scopes text[], p_names text[], p_shards integer[])
returns table (scope text, name text, key text, shard smallint)
language sql
stable
-- (no settings of its own: inlined where it is used, a claim under the claim's search_path)
as $$
    select l.scope, l.name, r.concurrency_key,
           case when x.s between 0 and l.shards - 1 then x.s else -1 end::smallint
    -- (key by key, each an index range: read as "= any(p_keys)" the planner, which seldom has
    -- statistics of running runs, scanned every running run and filtered them by key)
    from (select k.key as concurrency_key, x.queue, x.task, x.queue_key_shard, x.task_key_shard
          from unnest(p_keys) as k(key)
          cross join lateral (
              select r.queue, r.task, r.queue_key_shard, r.task_key_shard
              from conveyor.runs r
              where r.status = 'running' and r.concurrency_key = k.key
              offset 0) x
          offset 0) r
    join unnest(p_scopes, p_names, p_shards) as l(scope, name, shards)
      on l.name = case l.scope when 'queue' then r.queue else r.task end
    cross join lateral (select case l.scope when 'queue' then r.queue_key_shard else r.task_key_shard end as s) x
$$;

-- _key_room: the room of each key under each shard of a key limit a claim holds (p_g_*: scope,
-- name, key, shard; null shard: none held, room 0), as committed now: the shard's share less
-- the key's running runs under it (and its starts of the rate window, with the claim's own of
-- earlier rounds, p_st_*), less those under none of this split's shards, and less what other
-- shards hold over their share (a limit lowered: they borrowed it from the others). So the
-- shards together never let the key past its limit, whatever the split runs were started under.
create or replace function conveyor._key_room(
    p_g_scopes text[], p_g_names text[], p_g_keys text[], p_g_shards smallint[],
    p_scopes text[], p_names text[], p_conc integer[], p_rate_n integer[], p_rate_p interval[], p_shards integer[],
    p_keys text[], p_since timestamptz, p_want integer,
    p_st_queues text[], p_st_tasks text[], p_st_keys text[], p_st_qshards smallint[], p_st_tshards smallint[])
returns integer[]
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
-- (plpgsql, not sql: its plan is kept from call to call; a SQL function's is made anew each time)
as $$
begin
    return (
    with l as (
        select x.* from unnest(p_scopes, p_names, p_rate_n, p_rate_p, p_shards) as x(scope, name, rate_n, rate_p, shards)
    ),
    -- running runs per shard (-1: under none of the split's)
    -- (a row each: the sums are made in Rust)
    used as (
        select array_agg(u.scope) as scopes, array_agg(u.name) as names, array_agg(u.key) as keys,
               array_agg(u.shard) as shards, array_agg(1::bigint) as ns
        from conveyor._key_running(p_keys, p_scopes, p_names, p_shards) u
    ),
    -- starts of the rate window per shard (-1: none of the split's), this claim's earlier ones too
    started as (
        select array_agg(s.scope) as scopes, array_agg(s.name) as names, array_agg(s.key) as keys,
               array_agg(s.shard) as shards, array_agg(s.n) as ns
        from (select x.scope, x.name, x.key, case when x.shard between 0 and l.shards - 1 then x.shard else -1 end::smallint as shard,
                     sum(x.n)::bigint as n
              from (select l.scope, s.name, s.key, s.shard, s.n, s.at
                    from l
                    join conveyor._rate_starts s
                      on s.scope = l.scope || '_key' and s.name = l.name and s.key = any(p_keys) and s.at > p_since - l.rate_p
                    where l.rate_n is not null
                    union all
                    select case when t.shard_scope = 'queue' then 'queue' else 'task' end,
                           case when t.shard_scope = 'queue' then t.queue else t.task end, t.key, t.shard, 1, p_since
                    from unnest(p_st_queues, p_st_tasks, p_st_keys, p_st_qshards, p_st_tshards) as st(queue, task, key, qshard, tshard)
                    cross join lateral (values ('queue', st.queue, st.task, st.key, st.qshard), ('task', st.queue, st.task, st.key, st.tshard))
                         as t(shard_scope, queue, task, key, shard)
                    where t.key is not null and t.shard is not null) x
              join l on (l.scope, l.name) = (x.scope, x.name)
              where l.rate_n is not null and x.at > p_since - l.rate_p
              group by 1, 2, 3, 4) s
    )
    -- (the sums, in Rust: joined here, each gate met every count, in a time that grew with the
    -- square of the keys)
    select conveyor._key_rooms(p_g_scopes, p_g_names, p_g_keys, p_g_shards,
                               p_scopes, p_names, p_conc, p_rate_n, p_shards,
                               u.scopes, u.names, u.keys, u.shards, u.ns,
                               s.scopes, s.names, s.keys, s.shards, s.ns, p_want)
    from used u, started s);
end
$$;

-- _keys_at_limit: the keys (_key_ref) at these key limits now, as committed: as many runs
-- running as key_concurrency, or as many starts in the rate window as key_rate_limit. Read from
-- the running keyed runs (runs_running_by_key) and the starts of the windows, never from the
-- queued runs.
create or replace function conveyor._keys_at_limit(p_scopes text[], p_names text[], p_conc integer[],
                                                   p_rate_n integer[], p_rate_p interval[])
returns text[]
language plpgsql
stable
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    return (select coalesce(array_agg(distinct x.ref), '{}') from (
        select conveyor._key_ref(l.scope, l.name, r.concurrency_key) as ref
        from unnest(p_scopes, p_names, p_conc) as l(scope, name, conc)
        join conveyor.runs r
          on r.status = 'running' and r.concurrency_key is not null
         and case l.scope when 'queue' then r.queue = l.name else r.task = l.name end
        where l.conc is not null
        group by l.scope, l.name, r.concurrency_key, l.conc
        having count(*) >= l.conc
        union all
        select conveyor._key_ref(l.scope, l.name, s.key)
        from unnest(p_scopes, p_names, p_rate_n, p_rate_p) as l(scope, name, rate_n, period)
        join conveyor._rate_starts s
          on s.scope = l.scope || '_key' and s.name = l.name and s.at > conveyor._clock_now() - l.period
        where l.rate_n is not null
        group by l.scope, l.name, s.key, l.rate_n
        having sum(s.n) >= l.rate_n) x);
end
$$;

-- _candidates_by_key: a later round of a claim under key limits, in one queue: the best queued
-- runs (up to p_take, locked SKIP LOCKED) but those of the keys and tasks it must leave out
-- (p_full_keys, _key_ref; p_full_tasks), read key by key (runs_queued_by_key) so that the runs of
-- a key at its limit are never read at all, and the runs without a key (turn 0, by priority).
-- Null when the queue's queued runs have more than 200 (priority, key) pairs: the claim then
-- reads the queue in claim order, past the keys left out.
create or replace function conveyor._candidates_by_key(p_queue text, p_tasks text[], p_full_tasks text[],
                                                       p_full_keys text[], p_take integer)
returns conveyor._candidate[]
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_priorities smallint[];
    v_keys text[];
    v_ids conveyor.ulid[];
begin
    -- the (priority, key) pairs of the queued keyed runs, skipping from one to the next in the index
    with recursive pair (priority, key, n) as (
        (select r.priority, r.concurrency_key, 1
         from conveyor.runs r
         where r.queue = p_queue and r.status = 'queued' and r.concurrency_key is not null
         order by r.priority, r.concurrency_key
         limit 1)
        union all
        select x.priority, x.key, p.n + 1
        from pair p
        cross join lateral (
            select r.priority, r.concurrency_key as key
            from conveyor.runs r
            where r.queue = p_queue and r.status = 'queued' and r.concurrency_key is not null
              and (r.priority, r.concurrency_key) > (p.priority, p.key)
            order by r.priority, r.concurrency_key
            limit 1) x
        where p.n <= 200
    )
    select array_agg(p.priority), array_agg(p.key) into v_priorities, v_keys from pair p;
    if cardinality(v_keys) > 200 then
        return null;
    end if;
    -- the candidates' ids first, then their locks by id: a row a concurrent claim changed is
    -- re-checked against "id = any(...)" alone, not by running the search again for it
    v_ids := array(
            -- each key's best runs, but the keys left out in this queue
            select x.id
            from unnest(v_priorities, v_keys) as k(priority, key)
            cross join lateral (
                select r.id from conveyor.runs r
                where r.queue = p_queue and r.status = 'queued' and r.priority = k.priority
                  and r.concurrency_key = k.key
                  and (p_tasks is null or r.task = any(p_tasks))
                  and not conveyor._held_back(r.queue, r.task, r.concurrency_key, p_full_tasks, p_full_keys)
                order by r.fair_rank
                limit p_take) x
            where conveyor._key_ref('queue', p_queue, k.key) <> all(p_full_keys)
            union all
            -- and the runs without a key (all at turn 0), priority by priority
            select y.id
            from generate_series(0, 9) as q(priority)
            cross join lateral (
                select r.id from conveyor.runs r
                where r.queue = p_queue and r.status = 'queued' and r.priority = q.priority and r.fair_rank = 0
                  and r.concurrency_key is null
                  and (p_tasks is null or r.task = any(p_tasks))
                  and r.task <> all(p_full_tasks)
                order by r.run_at, r.id
                limit p_take) y);
    return array(
        select row(c.id, c.task, c.priority, c.run_at, c.queue, c.concurrency_key, c.fair_rank)::conveyor._candidate
        from conveyor.runs c
        where c.id = any(v_ids) and c.status = 'queued'
        order by c.priority, c.fair_rank, c.run_at, c.id
        limit p_take
        for no key update skip locked);
end
$$;

-- _held_back: whether a claim's later round leaves this run out: its task has no room (p_tasks),
-- or its key has none under its queue's or its task's key limit (p_keys, _key_ref). A function,
-- not an inline condition: the planner must not guess its selectivity from the arrays.
create or replace function conveyor._held_back(p_queue text, p_task text, p_key text, p_tasks text[], p_keys text[])
returns boolean
language plpgsql
immutable
as $$
begin
    return p_task = any(p_tasks)
        or (p_key is not null and (conveyor._key_ref('queue', p_queue, p_key) = any(p_keys)
                                   or conveyor._key_ref('task', p_task, p_key) = any(p_keys)));
end
$$;

-- _fair_rank: a keyed run's turn as it becomes queued (enqueued due, delivered, given back):
-- after the last queued run of its key (in its queue and priority), and never before the turn
-- the queue is at: the latest turn of its running keyed runs, or its first queued run's if
-- later. So a key that was idle goes next (not before the keys being served: a key held back
-- at a low turn by its limit does not pull the clock back), and a flooded key takes one turn
-- in each round of the keys. Runs without a key keep 0 (the trigger does not fire for them).
-- Concurrent producers of one key may draw the same turn: ties go by due time.
create or replace function conveyor._fair_rank()
returns trigger
language plpgsql
set search_path = pg_catalog, conveyor, pg_temp
set plan_cache_mode = force_generic_plan
as $$
begin
    new.fair_rank := greatest(
        (select r.fair_rank + 1 from conveyor.runs r
         where r.queue = new.queue and r.priority = new.priority and r.concurrency_key = new.concurrency_key
           and r.status = 'queued'
         order by r.fair_rank desc
         limit 1),
        (select r.fair_rank from conveyor.runs r
         where r.queue = new.queue and r.priority = new.priority and r.status = 'queued'
         order by r.fair_rank, r.run_at, r.id
         limit 1),
        (select r.fair_rank from conveyor.runs r
         where r.queue = new.queue and r.priority = new.priority and r.status = 'running'
           and r.concurrency_key is not null and r.fair_rank > 0
         order by r.fair_rank desc
         limit 1),
        0);
    return new;
end
$$;

create or replace trigger runs_fair_rank_on_insert
    before insert on conveyor.runs
    for each row when (new.concurrency_key is not null and new.status = 'queued')
    execute function conveyor._fair_rank();

create or replace trigger runs_fair_rank_on_update
    before update of status on conveyor.runs
    for each row when (new.concurrency_key is not null and new.status = 'queued' and old.status <> 'queued')
    execute function conveyor._fair_rank();
