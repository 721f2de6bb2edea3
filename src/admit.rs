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
                scope: match scope {
                    Some("queue") => Scope::Queue,
                    Some("task") => Scope::Task,
                    other => panic!("unknown key limit scope {other:?}"),
                },
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
}
