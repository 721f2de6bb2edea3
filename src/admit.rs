//! Which of a claim's candidates start, under key limits and task rate limits.
//!
//! A claim under limits (sql/functions/claim.sql) first locks its candidates: the best queued
//! runs of each queue it serves. It then takes the shards of the key limits those runs fall
//! under and counts each shard's room (`_key_room`). What is left is a choice without any
//! database state, made here: the best candidates in claim order that fit every task's room and
//! every key's room, and for each key's run the shard it starts under.
//!
//! Claim order is (priority, turn, run_at, id), a run's turn being its fair_rank less the first
//! candidate's of its queue and priority: queues are merged by turns counted from their own
//! heads, since a queue's turns are its own. A key's runs start under the shards it holds in
//! shard order: its nth run (by priority, fair_rank, run_at, id, within the limit's queue or
//! task) starts under the shard whose rooms, added up in shard order, first reach n.

use pgrx::prelude::*;
use std::collections::HashMap;

/// A run a claim has locked and may start.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub id: [u8; 16],
    pub task: &'a str,
    pub queue: &'a str,
    pub key: Option<&'a str>,
    pub priority: i16,
    pub fair_rank: i64,
    pub run_at: i64,
}

/// Which key limit a gate is a shard of: the run's queue's or its task's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Queue,
    Task,
}

impl Scope {
    /// The scope as SQL names it (scope_of reads it back).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Queue => "queue",
            Scope::Task => "task",
        }
    }
}

/// A shard of a key limit a claim holds for one key, with the runs the key may still start
/// under it (a key under the limit that holds no shard has one gate with `shard: None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gate<'a> {
    pub scope: Scope,
    pub name: &'a str,
    pub key: &'a str,
    pub shard: Option<i16>,
    pub room: i32,
}

/// A key limit (its scope and name) and a key under it.
type GateOf<'a> = (Scope, &'a str, &'a str);

/// A candidate chosen: its index in the candidates, and the shard of the queue's key limit
/// and of the task's it starts under (None: the run is under no such limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub queue_shard: Option<i16>,
    pub task_shard: Option<i16>,
}

/// The candidates that start, in claim order: at most `want`, within each task's cap
/// (`task_caps`: a task's rate-limit room; a task without one is capped by `want`) and each
/// key's room under the shards it holds.
pub fn pick(candidates: &[Candidate], gates: &[Gate], task_caps: &HashMap<&str, i32>, want: usize) -> Vec<Pick> {
    let n = candidates.len();
    // within a task (or a queue's or task's key): priority, fair_rank, run_at, id
    let in_line = |a: &Candidate, b: &Candidate| {
        (a.priority, a.fair_rank, a.run_at, a.id).cmp(&(b.priority, b.fair_rank, b.run_at, b.id))
    };
    let mut by_line: Vec<usize> = (0..n).collect();
    by_line.sort_by(|&a, &b| in_line(&candidates[a], &candidates[b]));
    // each candidate's place (from 1) among its task's, its queue and key's, its task and key's
    let mut in_task = vec![0usize; n];
    let mut in_queue_key = vec![0usize; n];
    let mut in_task_key = vec![0usize; n];
    let mut seen_task: HashMap<&str, usize> = HashMap::new();
    let mut seen_queue_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut seen_task_key: HashMap<(&str, &str), usize> = HashMap::new();
    for &i in &by_line {
        let c = &candidates[i];
        in_task[i] = bump(seen_task.entry(c.task).or_default());
        if let Some(key) = c.key {
            in_queue_key[i] = bump(seen_queue_key.entry((c.queue, key)).or_default());
            in_task_key[i] = bump(seen_task_key.entry((c.task, key)).or_default());
        }
    }
    // each queue and priority's first fair_rank, from which its turns count
    let mut first: HashMap<(&str, i16), i64> = HashMap::new();
    for c in candidates {
        let f = first.entry((c.queue, c.priority)).or_insert(c.fair_rank);
        *f = (*f).min(c.fair_rank);
    }
    let turn = |c: &Candidate| c.fair_rank - first[&(c.queue, c.priority)];
    // each key's shards under each limit, in shard order (no shard: room 0, last)
    let mut shards: HashMap<GateOf, Vec<(Option<i16>, i32)>> = HashMap::new();
    for g in gates {
        shards.entry((g.scope, g.name, g.key)).or_default().push((g.shard, g.room));
    }
    for list in shards.values_mut() {
        list.sort_by_key(|&(shard, _)| (shard.is_none(), shard));
    }
    // the shard a key's nth run starts under; None for a key under no limit of this scope,
    // Some(None) for one under a limit without room for it
    let shard_of = |scope: Scope, name: &str, key: Option<&str>, nth: usize| -> Option<Option<i16>> {
        let list = shards.get(&(scope, name, key?))?;
        let mut before = 0usize;
        for &(shard, room) in list {
            let room = room.max(0) as usize;
            if nth > before && nth <= before + room {
                return Some(shard);
            }
            before += room;
        }
        Some(None)
    };
    let mut chosen: Vec<Pick> = Vec::new();
    for i in 0..n {
        let c = &candidates[i];
        let cap = task_caps.get(c.task).map_or(want, |&cap| cap.max(0) as usize);
        if in_task[i] > cap {
            continue;
        }
        let queue_shard = shard_of(Scope::Queue, c.queue, c.key, in_queue_key[i]);
        let task_shard = shard_of(Scope::Task, c.task, c.key, in_task_key[i]);
        if matches!(queue_shard, Some(None)) || matches!(task_shard, Some(None)) {
            continue;
        }
        chosen.push(Pick { index: i, queue_shard: queue_shard.flatten(), task_shard: task_shard.flatten() });
    }
    chosen.sort_by(|a, b| {
        let (x, y) = (&candidates[a.index], &candidates[b.index]);
        (x.priority, turn(x), x.run_at, x.id).cmp(&(y.priority, turn(y), y.run_at, y.id))
    });
    chosen.truncate(want);
    chosen
}

fn bump(n: &mut usize) -> usize {
    *n += 1;
    *n
}

/// SQL: conveyor._key_pick, the choice above over a claim's candidates (parallel arrays) and
/// the gates it holds: the chosen candidates' ids in claim order, with the shards they start
/// under.
#[allow(clippy::too_many_arguments, reason = "SQL passes a claim's candidates as parallel arrays")]
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _key_pick(
    ids: Array<pgrx::Uuid>,
    tasks: Array<&str>,
    queues: Array<&str>,
    keys: Array<&str>,
    priorities: Array<i16>,
    fair_ranks: Array<i64>,
    run_ats: Array<TimestampWithTimeZone>,
    gate_scopes: Option<Array<&str>>,
    gate_names: Option<Array<&str>>,
    gate_keys: Option<Array<&str>>,
    gate_shards: Option<Array<i16>>,
    gate_rooms: Option<Array<i32>>,
    cap_tasks: Option<Array<&str>>,
    task_caps: Option<Array<i32>>,
    want: i32,
) -> TableIterator<'static, (name!(id, pgrx::Uuid), name!(queue_shard, Option<i16>), name!(task_shard, Option<i16>))> {
    let absent = || -> ! { panic!("a claim's candidate has a null field") };
    // arrays that do not line up would drop gates (a key would start under no limit): refuse
    let n = ids.len();
    let lens = [tasks.len(), queues.len(), keys.len(), priorities.len(), fair_ranks.len(), run_ats.len()];
    assert!(lens.iter().all(|&l| l == n), "a claim's candidate arrays differ in length");
    // (null reads as empty)
    let len = |a: Option<usize>| a.unwrap_or(0);
    let gate_lens = [
        len(gate_scopes.as_ref().map(|a| a.len())),
        len(gate_names.as_ref().map(|a| a.len())),
        len(gate_keys.as_ref().map(|a| a.len())),
        len(gate_shards.as_ref().map(|a| a.len())),
        len(gate_rooms.as_ref().map(|a| a.len())),
    ];
    assert!(gate_lens.iter().all(|&l| l == gate_lens[0]), "a claim's key gate arrays differ in length");
    assert_eq!(
        len(cap_tasks.as_ref().map(|a| a.len())),
        len(task_caps.as_ref().map(|a| a.len())),
        "a claim's task caps differ in length"
    );
    let candidates: Vec<Candidate> = ids
        .iter()
        .zip(tasks.iter())
        .zip(queues.iter())
        .zip(keys.iter())
        .zip(priorities.iter())
        .zip(fair_ranks.iter())
        .zip(run_ats.iter())
        .map(|((((((id, task), queue), key), priority), fair_rank), run_at)| Candidate {
            id: *id.unwrap_or_else(|| absent()).as_bytes(),
            task: task.unwrap_or_else(|| absent()),
            queue: queue.unwrap_or_else(|| absent()),
            key,
            priority: priority.unwrap_or_else(|| absent()),
            fair_rank: fair_rank.unwrap_or_else(|| absent()),
            run_at: run_at.unwrap_or_else(|| absent()).into(),
        })
        .collect();
    let gates: Vec<Gate> = match (&gate_scopes, &gate_names, &gate_keys, &gate_shards, &gate_rooms) {
        (Some(scopes), Some(names), Some(keys), Some(shards), Some(rooms)) => scopes
            .iter()
            .zip(names.iter())
            .zip(keys.iter())
            .zip(shards.iter())
            .zip(rooms.iter())
            .map(|((((scope, name), key), shard), room)| Gate {
                scope: scope_of(scope),
                name: name.unwrap_or_else(|| absent()),
                key: key.unwrap_or_else(|| absent()),
                shard,
                room: room.unwrap_or(0),
            })
            .collect(),
        _ => Vec::new(),
    };
    let caps: HashMap<&str, i32> = match (&cap_tasks, &task_caps) {
        (Some(names), Some(caps)) => {
            names.iter().zip(caps.iter()).filter_map(|(name, cap)| Some((name?, cap?))).collect()
        }
        _ => HashMap::new(),
    };
    let picks = pick(&candidates, &gates, &caps, want.max(0) as usize);
    let rows: Vec<_> = picks
        .into_iter()
        .map(|p| (pgrx::Uuid::from_bytes(candidates[p.index].id), p.queue_shard, p.task_shard))
        .collect();
    TableIterator::new(rows)
}

/// A key limit a claim's candidates fall under: its concurrency and its rate (starts per
/// window), either absent, and the shards it is split into.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub conc: Option<i32>,
    pub rate: Option<i32>,
    pub shards: i32,
}

/// A shard's share of a limit of `n` split into `shards` (the first `n % shards` shards take
/// one more): the one definition, which the gates and the rooms use.
pub fn share(n: i32, shards: i32, shard: i16) -> i64 {
    (n / shards + i32::from((shard as i32) < n % shards)) as i64
}

/// What a key holds against one measure (running runs, or starts of the rate window) of a
/// limit: per shard of the split, and under none of them (shard -1: taken before the limit
/// was set or split otherwise).
#[derive(Default)]
struct Held {
    by_shard: HashMap<i16, i64>,
    nowhere: i64,
}

impl Held {
    fn add(&mut self, shard: i16, n: i64) {
        if shard < 0 {
            self.nowhere += n;
        } else {
            *self.by_shard.entry(shard).or_default() += n;
        }
    }

    /// The room under `shard` of a measure limited to `n`: its share, less what the key holds
    /// under it, under no shard, and over their shares under the other shards (a limit
    /// lowered: they borrowed it from this one). So the shards together never let the key past
    /// the limit, whatever the split its runs were started under.
    fn room(&self, n: i32, shards: i32, shard: i16) -> i64 {
        let here = self.by_shard.get(&shard).copied().unwrap_or(0);
        let borrowed: i64 = self
            .by_shard
            .iter()
            .filter(|&(&s, _)| s != shard)
            .map(|(&s, &held)| (held - share(n, shards, s)).max(0))
            .sum();
        share(n, shards, shard) - here - self.nowhere - borrowed
    }
}

/// The room of each gate (a key limit's scope, name, the key, and the shard the claim holds,
/// None: none, room 0): under each of the limit's measures the room of the shard (Held::room;
/// `want` for a measure the limit does not have), the least of them, and never below 0. `running` and `started`
/// are (scope, name, key, shard, n): the key's running runs and its starts of the rate window.
pub fn rooms(
    gates: &[(GateOf, Option<i16>)],
    limits: &HashMap<(Scope, &str), Limit>,
    running: &[(GateOf, i16, i64)],
    started: &[(GateOf, i16, i64)],
    want: i32,
) -> Vec<i32> {
    fn tally<'a>(rows: &[(GateOf<'a>, i16, i64)]) -> HashMap<GateOf<'a>, Held> {
        let mut held: HashMap<GateOf, Held> = HashMap::new();
        for &(of, shard, n) in rows {
            held.entry(of).or_default().add(shard, n);
        }
        held
    }
    let (running, started) = (tally(running), tally(started));
    let none = Held::default();
    gates
        .iter()
        .map(|&(of @ (scope, name, _), shard)| {
            let Some(shard) = shard else { return 0 };
            let limit = limits
                .get(&(scope, name))
                .unwrap_or_else(|| panic!("a key gate of {scope:?} {name:?} under no key limit"));
            let room = |n: Option<i32>, held: &HashMap<GateOf, Held>| match n {
                None => want as i64,
                Some(n) => held.get(&of).unwrap_or(&none).room(n, limit.shards, shard),
            };
            room(limit.conc, &running).min(room(limit.rate, &started)).clamp(0, i32::MAX as i64) as i32
        })
        .collect()
}

fn scope_of(scope: Option<&str>) -> Scope {
    match scope {
        Some("queue") => Scope::Queue,
        Some("task") => Scope::Task,
        other => panic!("unknown key limit scope {other:?}"),
    }
}

/// A claim's key limits (parallel arrays: scope, name, concurrency, rate, shards) by limit.
fn limits_of<'a>(
    scopes: &'a Array<&str>,
    names: &'a Array<&str>,
    conc: &Array<i32>,
    rate: &Array<i32>,
    shards: &Array<i32>,
) -> HashMap<(Scope, &'a str), Limit> {
    let l = scopes.len();
    assert!(
        [names.len(), conc.len(), rate.len(), shards.len()].iter().all(|&x| x == l),
        "a claim's key limit arrays differ in length"
    );
    scopes
        .iter()
        .zip(names.iter())
        .zip(conc.iter())
        .zip(rate.iter())
        .zip(shards.iter())
        .map(|((((scope, name), conc), rate), shards)| {
            let shards = shards.unwrap_or_else(|| panic!("a key limit has a null field"));
            assert!(shards > 0, "a key limit split into {shards} shards");
            (
                (scope_of(scope), name.unwrap_or_else(|| panic!("a key limit has a null field"))),
                Limit { conc, rate, shards },
            )
        })
        .collect()
}

/// A key under a key limit among a claim's candidates: how many candidates it has under the
/// limit, the shard it tries first (`start`, from the key and the session, so that concurrent
/// claims of one key start at different shards), and the shard taken (None: none yet).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyGate<'a> {
    pub of: GateOf<'a>,
    pub want: i32,
    pub start: i16,
    pub shard: Option<i16>,
}

/// The shard a key's claims of one session try first: (|hashtext(key)| + pid) mod shards.
pub fn start_shard(key_hash: i32, pid: i32, shards: i32) -> i16 {
    ((key_hash as i64).abs() + pid as i64).rem_euclid(shards as i64) as i16
}

/// The gates of a claim's candidates (queue, task, key): one per key under each key limit its
/// runs fall under, in the order the candidates first name them. A key whose candidates one
/// shard's share covers takes one shard: the first from its start, in turn, whose lock
/// `try_lock` takes (one another claim holds is passed over). A key with more candidates than a
/// shard's share takes none here: the claim then takes as many of its shards with room as
/// committed as its candidates need (claim_runs), which takes counting its running runs first.
pub fn key_gates<'a>(
    candidates: &[(&'a str, &'a str, Option<&'a str>)],
    limits: &HashMap<(Scope, &'a str), Limit>,
    key_hash: impl Fn(&str) -> i32,
    pid: i32,
    mut try_lock: impl FnMut(GateOf<'a>, i16) -> bool,
) -> Vec<KeyGate<'a>> {
    let mut order: Vec<GateOf> = Vec::new();
    let mut want: HashMap<GateOf, i32> = HashMap::new();
    for &(queue, task, key) in candidates {
        let Some(key) = key else { continue };
        for of in [(Scope::Queue, queue, key), (Scope::Task, task, key)] {
            if limits.contains_key(&(of.0, of.1)) {
                let n = want.entry(of).or_insert_with(|| {
                    order.push(of);
                    0
                });
                *n += 1;
            }
        }
    }
    order
        .into_iter()
        .map(|of| {
            let limit = limits[&(of.0, of.1)];
            let want = want[&of];
            let start = start_shard(key_hash(of.2), pid, limit.shards);
            // (shard 0 has the largest share)
            let share = |n: Option<i32>| n.map_or(want as i64, |n| share(n, limit.shards, 0));
            let shard = if share(limit.conc).min(share(limit.rate)) >= want as i64 {
                (0..limit.shards).map(|i| ((start as i32 + i) % limit.shards) as i16).find(|&shard| try_lock(of, shard))
            } else {
                None
            };
            KeyGate { of, want, start, shard }
        })
        .collect()
}

/// Of the further shards of keys short of room (the key, the shard, its room as committed and
/// what the key still misses, in the order to try them), those a claim takes: in turn, each
/// whose lock `try_lock` takes, until the rooms taken cover what the key misses. A shard another
/// claim holds is passed over for the next, so a key short of room takes what it needs when it
/// can, and never more shards than it can use.
pub fn more_shards<'a>(
    tries: &[(GateOf<'a>, i16, i64, i64)],
    mut try_lock: impl FnMut(GateOf<'a>, i16) -> bool,
) -> Vec<(GateOf<'a>, i16)> {
    let mut covered: HashMap<GateOf, i64> = HashMap::new();
    let mut taken = Vec::new();
    for &(of, shard, room, missing) in tries {
        let got = covered.entry(of).or_default();
        if *got < missing && room > 0 && try_lock(of, shard) {
            *got += room;
            taken.push((of, shard));
        }
    }
    taken
}

/// hashtext() of a text, as PostgreSQL computes it under a deterministic collation (the
/// database's default always is one): hash_any over its bytes.
fn hashtext(s: &str) -> i32 {
    unsafe extern "C-unwind" {
        // (src/common/hashfn.c; never raises an error)
        fn hash_bytes(k: *const u8, keylen: std::ffi::c_int) -> u32;
    }
    let len = std::ffi::c_int::try_from(s.len()).expect("a key limit's lock name over 2 GB");
    // SAFETY: the pointer and length are those of a live &str; hash_bytes only reads them
    (unsafe { hash_bytes(s.as_ptr(), len) }) as i32
}

/// Take the advisory lock of one shard of a key limit for this transaction if no other
/// transaction holds it (never waits): class 'pgck' (1885823851), and the hashtext of the
/// shard's name, conveyor._key_ref(scope, name, key) || E'\x1f' || shard. Two shards of one
/// hash share a lock, so a claim of one may pass the other over while it runs, and never
/// admits more than a limit.
fn try_shard_lock((scope, name, key): GateOf, shard: i16) -> bool {
    let lock = hashtext(&format!("{}\x1f{name}\x1f{key}\x1f{shard}", scope.as_str()));
    // SAFETY: a built-in of two int4 arguments, given two non-null int4 datums; it reads neither
    // flinfo nor the collation (a lock it cannot take returns false, it never waits)
    unsafe {
        pgrx::direct_function_call::<bool>(
            pg_sys::pg_try_advisory_xact_lock_int4,
            &[Some(pg_sys::Datum::from(1885823851_i32)), Some(pg_sys::Datum::from(lock))],
        )
    }
    .expect("pg_try_advisory_xact_lock returned null")
}

/// SQL: conveyor._key_more, more_shards above (parallel arrays), taking the shards' locks.
#[pg_extern(sql = false)]
fn _key_more(
    scopes: Array<&str>,
    names: Array<&str>,
    keys: Array<&str>,
    shards: Array<i16>,
    rooms: Array<i64>,
    missing: Array<i64>,
) -> TableIterator<'static, (name!(scope, String), name!(name, String), name!(key, String), name!(shard, i16))> {
    let absent = || -> ! { panic!("a key shard to try has a null field") };
    let n = scopes.len();
    assert!(
        [names.len(), keys.len(), shards.len(), rooms.len(), missing.len()].iter().all(|&l| l == n),
        "a claim's key shard arrays differ in length"
    );
    let tries: Vec<(GateOf, i16, i64, i64)> = scopes
        .iter()
        .zip(names.iter())
        .zip(keys.iter())
        .zip(shards.iter())
        .zip(rooms.iter())
        .zip(missing.iter())
        .map(|(((((scope, name), key), shard), room), missing)| {
            (
                (scope_of(scope), name.unwrap_or_else(|| absent()), key.unwrap_or_else(|| absent())),
                shard.unwrap_or_else(|| absent()),
                room.unwrap_or_else(|| absent()),
                missing.unwrap_or_else(|| absent()),
            )
        })
        .collect();
    let rows: Vec<_> = more_shards(&tries, try_shard_lock)
        .into_iter()
        .map(|((scope, name, key), shard)| (scope.as_str().to_owned(), name.to_owned(), key.to_owned(), shard))
        .collect();
    TableIterator::new(rows)
}

/// SQL: conveyor._key_gates, key_gates above over a claim's candidates (parallel arrays:
/// queue, task, key) and its key limits, taking the shards' locks.
#[allow(clippy::too_many_arguments, reason = "SQL passes candidates and limits as parallel arrays")]
#[pg_extern(sql = false)]
fn _key_gates(
    queues: Array<&str>,
    tasks: Array<&str>,
    keys: Array<&str>,
    limit_scopes: Array<&str>,
    limit_names: Array<&str>,
    limit_conc: Array<i32>,
    limit_rate: Array<i32>,
    limit_shards: Array<i32>,
    pid: i32,
) -> TableIterator<
    'static,
    (
        name!(scope, String),
        name!(name, String),
        name!(key, String),
        name!(shard, Option<i16>),
        name!(want, i32),
        name!(start, i16),
    ),
> {
    let absent = || -> ! { panic!("a claim's candidate has a null field") };
    let n = queues.len();
    assert!([tasks.len(), keys.len()].iter().all(|&l| l == n), "a claim's candidate arrays differ in length");
    let candidates: Vec<(&str, &str, Option<&str>)> = queues
        .iter()
        .zip(tasks.iter())
        .zip(keys.iter())
        .map(|((queue, task), key)| (queue.unwrap_or_else(|| absent()), task.unwrap_or_else(|| absent()), key))
        .collect();
    let limits = limits_of(&limit_scopes, &limit_names, &limit_conc, &limit_rate, &limit_shards);
    let rows: Vec<_> = key_gates(&candidates, &limits, hashtext, pid, try_shard_lock)
        .into_iter()
        .map(|g| (g.of.0.as_str().to_owned(), g.of.1.to_owned(), g.of.2.to_owned(), g.shard, g.want, g.start))
        .collect();
    TableIterator::new(rows)
}

/// SQL: conveyor._key_rooms, the rooms above (parallel arrays: the gates; the key limits; the
/// keys' running runs and starts per shard, as _key_room counts them).
#[allow(clippy::too_many_arguments, reason = "SQL passes gates, limits and counts as parallel arrays")]
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _key_rooms(
    gate_scopes: Array<&str>,
    gate_names: Array<&str>,
    gate_keys: Array<&str>,
    gate_shards: Array<i16>,
    limit_scopes: Array<&str>,
    limit_names: Array<&str>,
    limit_conc: Array<i32>,
    limit_rate: Array<i32>,
    limit_shards: Array<i32>,
    use_scopes: Option<Array<&str>>,
    use_names: Option<Array<&str>>,
    use_keys: Option<Array<&str>>,
    use_shards: Option<Array<i16>>,
    use_n: Option<Array<i64>>,
    start_scopes: Option<Array<&str>>,
    start_names: Option<Array<&str>>,
    start_keys: Option<Array<&str>>,
    start_shards: Option<Array<i16>>,
    start_n: Option<Array<i64>>,
    want: i32,
) -> Vec<i32> {
    let absent = || -> ! { panic!("a key room input has a null field") };
    let n = gate_scopes.len();
    assert!(
        [gate_names.len(), gate_keys.len(), gate_shards.len()].iter().all(|&l| l == n),
        "a claim's key gate arrays differ in length"
    );
    let gates: Vec<(GateOf, Option<i16>)> = gate_scopes
        .iter()
        .zip(gate_names.iter())
        .zip(gate_keys.iter())
        .zip(gate_shards.iter())
        .map(|(((scope, name), key), shard)| {
            ((scope_of(scope), name.unwrap_or_else(|| absent()), key.unwrap_or_else(|| absent())), shard)
        })
        .collect();
    let limits = limits_of(&limit_scopes, &limit_names, &limit_conc, &limit_rate, &limit_shards);
    fn counts<'b>(
        scopes: &'b Option<Array<'_, &str>>,
        names: &'b Option<Array<'_, &str>>,
        keys: &'b Option<Array<'_, &str>>,
        shards: &Option<Array<'_, i16>>,
        ns: &Option<Array<'_, i64>>,
    ) -> Vec<(GateOf<'b>, i16, i64)> {
        let absent = || -> ! { panic!("a key room input has a null field") };
        match (scopes, names, keys, shards, ns) {
            (Some(scopes), Some(names), Some(keys), Some(shards), Some(ns)) => {
                let m = scopes.len();
                assert!(
                    [names.len(), keys.len(), shards.len(), ns.len()].iter().all(|&x| x == m),
                    "a key count's arrays differ in length"
                );
                scopes
                    .iter()
                    .zip(names.iter())
                    .zip(keys.iter())
                    .zip(shards.iter())
                    .zip(ns.iter())
                    .map(|((((scope, name), key), shard), n)| {
                        (
                            (scope_of(scope), name.unwrap_or_else(|| absent()), key.unwrap_or_else(|| absent())),
                            shard.unwrap_or_else(|| absent()),
                            n.unwrap_or_else(|| absent()),
                        )
                    })
                    .collect()
            }
            (None, None, None, None, None) => Vec::new(),
            _ => panic!("a key count's arrays are partly null"),
        }
    }
    let running = counts(&use_scopes, &use_names, &use_keys, &use_shards, &use_n);
    let started = counts(&start_scopes, &start_names, &start_keys, &start_shards, &start_n);
    rooms(&gates, &limits, &running, &started, want)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn run<'a>(n: u8, queue: &'a str, task: &'a str, key: Option<&'a str>, fair_rank: i64) -> Candidate<'a> {
        let mut id = [0u8; 16];
        id[15] = n;
        Candidate { id, task, queue, key, priority: 0, fair_rank, run_at: n as i64 }
    }

    fn gate<'a>(scope: Scope, name: &'a str, key: &'a str, shard: Option<i16>, room: i32) -> Gate<'a> {
        Gate { scope, name, key, shard, room }
    }

    fn indexes(picks: &[Pick]) -> Vec<usize> {
        picks.iter().map(|p| p.index).collect()
    }

    #[test]
    fn runs_without_keys_or_caps_start_in_claim_order_up_to_want() {
        let c = vec![run(3, "q", "t", None, 0), run(1, "q", "t", None, 0), run(2, "q", "t", None, 0)];
        let picks = pick(&c, &[], &HashMap::new(), 2);
        assert_eq!(indexes(&picks), vec![1, 2]);
        assert!(picks.iter().all(|p| p.queue_shard.is_none() && p.task_shard.is_none()));
    }

    #[test]
    fn a_key_starts_only_within_the_room_of_its_shards_in_shard_order() {
        let c: Vec<_> = (1..=5).map(|n| run(n, "q", "t", Some("a"), n as i64)).collect();
        let g = vec![gate(Scope::Queue, "q", "a", Some(3), 2), gate(Scope::Queue, "q", "a", Some(1), 1)];
        let picks = pick(&c, &g, &HashMap::new(), 10);
        assert_eq!(indexes(&picks), vec![0, 1, 2]);
        let shards: Vec<_> = picks.iter().map(|p| p.queue_shard).collect();
        assert_eq!(shards, vec![Some(1), Some(3), Some(3)]);
    }

    #[test]
    fn a_key_under_a_limit_without_a_shard_starts_nothing_and_blocks_no_other_key() {
        let c = vec![run(1, "q", "t", Some("full"), 1), run(2, "q", "t", Some("free"), 1), run(3, "q", "t", None, 0)];
        let g = vec![gate(Scope::Queue, "q", "full", None, 0), gate(Scope::Queue, "q", "free", Some(0), 5)];
        let picks = pick(&c, &g, &HashMap::new(), 10);
        // the unkeyed run is at turn 0; the free key's next
        assert_eq!(indexes(&picks), vec![2, 1]);
    }

    #[test]
    fn a_key_under_a_limit_of_another_scope_only_is_not_held_by_this_one() {
        // a task limit on t for key a; the queue has no key limit: the queue shard stays None
        let c = vec![run(1, "q", "t", Some("a"), 1), run(2, "q", "t", Some("a"), 2)];
        let g = vec![gate(Scope::Task, "t", "a", Some(2), 1)];
        let picks = pick(&c, &g, &HashMap::new(), 10);
        assert_eq!(picks, vec![Pick { index: 0, queue_shard: None, task_shard: Some(2) }]);
    }

    #[test]
    fn a_task_cap_counts_the_tasks_candidates_in_line() {
        let c = vec![run(1, "q", "t", None, 0), run(2, "q", "u", None, 0), run(3, "q", "t", None, 0)];
        let caps = HashMap::from([("t", 1)]);
        assert_eq!(indexes(&pick(&c, &[], &caps, 10)), vec![0, 1]);
    }

    #[test]
    fn queues_merge_by_turns_counted_from_each_queues_first_candidate() {
        // queue a's runs are at ranks 100 and 101, b's at 5 and 6: turns 0, 1 in each
        let c = vec![
            run(1, "a", "t", Some("k"), 100),
            run(2, "a", "t", Some("k"), 101),
            run(3, "b", "t", Some("k"), 5),
            run(4, "b", "t", Some("k"), 6),
        ];
        assert_eq!(indexes(&pick(&c, &[], &HashMap::new(), 10)), vec![0, 2, 1, 3]);
    }

    #[test]
    fn the_nth_run_of_a_key_counts_within_the_limits_queue_not_across_queues() {
        // a queue limit on q1 of 1 for key k; the run of k in q2 is not under it
        let c = vec![run(1, "q1", "t", Some("k"), 0), run(2, "q1", "t", Some("k"), 1), run(3, "q2", "t", Some("k"), 0)];
        let g = vec![gate(Scope::Queue, "q1", "k", Some(0), 1)];
        let picks = pick(&c, &g, &HashMap::new(), 10);
        assert_eq!(indexes(&picks), vec![0, 2]);
    }

    fn limits(conc: Option<i32>, rate: Option<i32>, shards: i32) -> HashMap<(Scope, &'static str), Limit> {
        HashMap::from([((Scope::Queue, "q"), Limit { conc, rate, shards })])
    }

    const K: GateOf<'static> = (Scope::Queue, "q", "k");

    #[test]
    fn a_shard_has_its_share_of_the_limit_less_the_runs_under_it() {
        // 10 split in 4: shares 3, 3, 2, 2
        assert_eq!((0..4).map(|s| share(10, 4, s)).collect::<Vec<_>>(), vec![3, 3, 2, 2]);
        let l = limits(Some(10), None, 4);
        let gates = [(K, Some(0)), (K, Some(2)), (K, None)];
        assert_eq!(rooms(&gates, &l, &[], &[], 50), vec![3, 2, 0]);
        assert_eq!(rooms(&gates, &l, &[(K, 0, 2), (K, 2, 2)], &[], 50), vec![1, 0, 0]);
        // another key's runs take nothing from this one
        assert_eq!(rooms(&gates, &l, &[((Scope::Queue, "q", "other"), 0, 3)], &[], 50), vec![3, 2, 0]);
    }

    #[test]
    fn runs_under_no_shard_and_over_their_share_elsewhere_count_against_every_shard() {
        let l = limits(Some(10), None, 4);
        let gates = [(K, Some(0)), (K, Some(1))];
        // 2 started before the split: both shards lose them
        assert_eq!(rooms(&gates, &l, &[(K, -1, 2)], &[], 50), vec![1, 1]);
        // shard 3 holds 5 against a share of 2 (the limit was lowered): 3 borrowed from each other
        assert_eq!(rooms(&gates, &l, &[(K, 3, 5)], &[], 50), vec![0, 0]);
        assert_eq!(rooms(&[(K, Some(2))], &limits(Some(20), None, 4), &[(K, 3, 6), (K, 2, 1)], &[], 50), vec![3]);
    }

    #[test]
    fn the_least_room_of_concurrency_and_rate_wins_and_a_missing_measure_allows_want() {
        let gates = [(K, Some(0))];
        let both = limits(Some(8), Some(4), 2);
        assert_eq!(rooms(&gates, &both, &[(K, 0, 1)], &[(K, 0, 1)], 50), vec![1]);
        assert_eq!(rooms(&gates, &both, &[(K, 0, 4)], &[], 50), vec![0]);
        assert_eq!(rooms(&gates, &limits(None, Some(4), 2), &[(K, 0, 9)], &[], 7), vec![2]);
        assert_eq!(rooms(&gates, &limits(Some(4), None, 2), &[], &[(K, 0, 9)], 7), vec![2]);
    }

    #[test]
    #[should_panic(expected = "under no key limit")]
    fn a_gate_under_no_limit_is_refused() {
        rooms(&[((Scope::Task, "t", "k"), Some(0))], &limits(Some(1), None, 1), &[], &[], 1);
    }

    #[test]
    fn a_keys_start_shard_is_its_hash_made_positive_plus_the_session_mod_shards() {
        assert_eq!(start_shard(-5, 3, 4), 0);
        assert_eq!(start_shard(5, 3, 4), 0);
        assert_eq!(start_shard(6, 3, 4), 1);
        // (no overflow at the hash's extremes: the SQL computes it in bigint)
        assert_eq!(start_shard(i32::MIN, i32::MAX, 8), ((1i64 << 31) + i32::MAX as i64).rem_euclid(8) as i16);
    }

    #[test]
    fn gates_count_each_keys_candidates_under_each_limit_in_the_order_they_are_named() {
        let limits = limits(Some(8), None, 4);
        let mut both = limits.clone();
        both.insert((Scope::Task, "t"), Limit { conc: Some(8), rate: None, shards: 4 });
        let cands = [("q", "t", Some("b")), ("q", "t", None), ("q", "u", Some("a")), ("q", "t", Some("b"))];
        let mut tried = Vec::new();
        let gates = key_gates(
            &cands,
            &both,
            |_| 0,
            1,
            |of, shard| {
                tried.push((of, shard));
                true
            },
        );
        let summary: Vec<_> = gates.iter().map(|g| (g.of, g.want, g.start, g.shard)).collect();
        assert_eq!(
            summary,
            [
                ((Scope::Queue, "q", "b"), 2, 1, Some(1)),
                ((Scope::Task, "t", "b"), 2, 1, Some(1)),
                ((Scope::Queue, "q", "a"), 1, 1, Some(1)),
            ]
        );
        assert_eq!(tried.len(), 3);
        // (a limit of another queue does not gate these)
        let other: HashMap<_, _> = [((Scope::Queue, "p"), Limit { conc: Some(1), rate: None, shards: 1 })].into();
        assert!(key_gates(&cands, &other, |_| 0, 1, |_, _| true).is_empty());
    }

    #[test]
    fn a_key_one_share_covers_takes_the_first_free_shard_from_its_start_in_turn() {
        let limits = limits(Some(8), None, 4);
        let cands = [("q", "t", Some("k"))];
        let mut tried = Vec::new();
        // start (2 + 1) % 4 = 3; 3 and 0 held by other claims
        let gates = key_gates(
            &cands,
            &limits,
            |_| 2,
            1,
            |_, shard| {
                tried.push(shard);
                shard == 1
            },
        );
        assert_eq!(tried, [3, 0, 1]);
        assert_eq!(gates[0].shard, Some(1));
        // every shard held: the key takes none
        let gates = key_gates(&cands, &limits, |_| 2, 1, |_, _| false);
        assert_eq!(gates[0].shard, None);
    }

    #[test]
    fn a_key_with_more_candidates_than_a_shards_share_takes_no_shard_here() {
        // concurrency 8 over 4 shards: a share of 2; rate 8 over 4 shards likewise
        for limits in [limits(Some(8), None, 4), limits(None, Some(8), 4)] {
            let cands = [("q", "t", Some("k")); 3];
            let gates = key_gates(&cands, &limits, |_| 0, 0, |_, _| panic!("no lock is tried"));
            assert_eq!((gates[0].want, gates[0].shard), (3, None));
            let gates = key_gates(&cands[..2], &limits, |_| 0, 0, |_, _| true);
            assert_eq!((gates[0].want, gates[0].shard), (2, Some(0)));
        }
    }

    #[test]
    fn a_key_short_of_room_takes_further_shards_in_turn_until_covered_passing_held_ones() {
        let k = (Scope::Queue, "q", "k");
        let j = (Scope::Task, "t", "j");
        // k misses 3: shard 5 (room 2) is held by another claim, 6 (1) and 7 (2) are taken, 0 is
        // not needed; j misses 1 and takes its first shard
        let tries = [(k, 5, 2, 3), (k, 6, 1, 3), (k, 7, 2, 3), (k, 0, 2, 3), (j, 1, 1, 1), (j, 2, 1, 1)];
        let mut tried = Vec::new();
        let taken = more_shards(&tries, |of, shard| {
            tried.push((of.2, shard));
            shard != 5
        });
        assert_eq!(taken, [(k, 6), (k, 7), (j, 1)]);
        assert_eq!(tried, [("k", 5), ("k", 6), ("k", 7), ("j", 1)]);
        // a shard without room is never locked
        assert!(more_shards(&[(k, 1, 0, 3)], |_, _| panic!("no lock is tried")).is_empty());
    }
}
