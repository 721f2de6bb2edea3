//! Rate limits under many claimers, ticks, failures, releases and lease expiries: from the
//! attempt rows (and the runs still running), no window of a limit's period holds more starts
//! than the limit; the limits did bind; a task at its limit never held back another task's
//! runs in the same queue.

use crate::common::{connect_to, drop_db, fresh_db, race_for, tickers};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The most starts in any window (t - period, t] of a scope, counted from the attempts (each
/// ended attempt's start) and the running runs (their current attempt's start).
fn most_starts_in_a_window(c: &mut postgres::Client, column: &str, name: &str, period: &str) -> i64 {
    c.query_one(
        &format!(
            "with starts as (
                 select started_at as at from conveyor.attempts where {column} = $1
                 union all
                 select started_at from conveyor.runs where {column} = $1 and status = 'running'
             )
             select coalesce(max(n), 0) from (
                 select count(*) over (order by at range between $2::text::interval - interval '1 microsecond' preceding
                                                             and current row) as n
                 from starts) w"
        ),
        &[&name, &period],
    )
    .unwrap()
    .get(0)
}

#[test]
fn no_window_holds_more_starts_than_the_limit_under_racing_claims_and_ticks() {
    let (db, mut admin) = fresh_db("it_rate");
    admin
        .batch_execute(
            "select conveyor.set_queue('rl', rate_limit => '20/1s');
             select conveyor.define_task('rl.job', queue => 'rl', max_attempts => 3, delay => '100ms');
             select conveyor.define_task('rt.a', queue => 'rt', rate_limit => '15/2s');
             select conveyor.define_task('rt.b', queue => 'rt');
             select count(*) from conveyor.enqueue_many('rl.job', array_fill('{}'::jsonb, array[2000]));
             select count(*) from conveyor.enqueue_many('rt.a', array_fill('{}'::jsonb, array[500]), priority => 0);
             select count(*) from conveyor.enqueue_many('rt.b', array_fill('{}'::jsonb, array[200]), priority => 5);",
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let claimed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for w in 0..8u64 {
        let (db, stop, claimed) = (db.clone(), stop.clone(), claimed.clone());
        handles.push(thread::spawn(move || {
            let mut c = connect_to(&db);
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let queue = if i % 2 == 0 { "rl" } else { "rt" };
                let max = (i % 7 + 1) as i32;
                let rows = c
                    .query(
                        "select run_id::text, lease_token from conveyor.claim_runs($1, $2, $3, '1s')",
                        &[&queue, &format!("w{w}"), &max],
                    )
                    .unwrap();
                claimed.fetch_add(rows.len() as u64, Ordering::SeqCst);
                for (k, r) in rows.iter().enumerate() {
                    let (id, token): (String, uuid::Uuid) = (r.get(0), r.get(1));
                    // most complete; some fail (retried), some release, some are abandoned (the
                    // lease expires: tick ends them crashed)
                    let call = match (i as usize + k) % 10 {
                        0 => "select conveyor.fail_run($1::text, $2, 'flaky')::text",
                        1 => "select conveyor.release_run($1::text, $2, '50ms')::text",
                        2 => continue,
                        _ => "select conveyor.complete_run($1::text, $2)::text",
                    };
                    let _ = c.execute(call, &[&id, &token]);
                }
                if rows.is_empty() {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }));
    }
    handles.extend(tickers(&db, &stop, 2));
    race_for(Duration::from_secs(6), &stop, handles);
    let queue_most = most_starts_in_a_window(&mut admin, "queue", "rl", "1s");
    let task_most = most_starts_in_a_window(&mut admin, "task", "rt.a", "2s");
    let b_started: i64 = admin
        .query_one(
            "select count(distinct run_id) from (select run_id from conveyor.attempts where task = 'rt.b'
              union all select id from conveyor.runs where task = 'rt.b' and status = 'running') s",
            &[],
        )
        .unwrap()
        .get(0);
    let crashed: i64 =
        admin.query_one("select count(*) from conveyor.attempts where outcome = 'crashed'", &[]).unwrap().get(0);
    println!(
        "rate limits: {} runs claimed; most starts in a window: queue rl {queue_most} (limit 20/1s), task rt.a \
         {task_most} (limit 15/2s); rt.b runs started {b_started} of 200; {crashed} attempts crashed by lease expiry",
        claimed.load(Ordering::SeqCst)
    );
    assert!(queue_most <= 20, "queue rl: {queue_most} starts in one window of 1s");
    assert!(task_most <= 15, "task rt.a: {task_most} starts in one window of 2s");
    assert_eq!(queue_most, 20, "the queue's limit bound (the test did real work)");
    assert_eq!(task_most, 15, "the task's limit bound");
    assert_eq!(b_started, 200, "rt.b was never held back by rt.a's limit");
    assert!(crashed > 0, "leases expired during the race");
    drop(admin);
    drop_db(&db);
}

#[test]
fn a_claim_left_open_under_a_limit_holds_others_back_2_s_at_most_and_only_under_that_limit() {
    let (db, mut admin) = fresh_db("it_rate_open");
    admin
        .batch_execute(
            // N = 1: one shard, so the open claim holds all of the limit
            "select conveyor.set_queue('lq', rate_limit => '1/1s');
             select conveyor.define_task('lq.job', queue => 'lq');
             select conveyor.define_task('fq.job', queue => 'fq');
             select count(*) from conveyor.enqueue_many('lq.job', array_fill('{}'::jsonb, array[5]));
             select count(*) from conveyor.enqueue_many('fq.job', array_fill('{}'::jsonb, array[5]));",
        )
        .unwrap();
    let mut open = connect_to(&db);
    open.batch_execute("begin; select count(*) from conveyor.claim_runs('lq', 'open', 1);").unwrap();
    // a second later the window has room again, but the open claim holds the only shard
    thread::sleep(Duration::from_millis(1100));
    let mut other = connect_to(&db);
    let started = std::time::Instant::now();
    let rows = other.query("select queue from conveyor.claim_runs('lq,fq', 'other', 10)", &[]).unwrap();
    let waited = started.elapsed();
    let queues: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    println!("beside a claim left open under a limit: waited {waited:?}, claimed {queues:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?} for the held limit");
    assert!(queues.iter().all(|q| q == "fq"), "nothing under the held limit: {queues:?}");
    assert_eq!(queues.len(), 5, "the unlimited queue was claimed");
    open.batch_execute("commit").unwrap();
    // once it commits, the limit is free again
    let n = other.query("select 1 from conveyor.claim_runs('lq', 'other', 10)", &[]).unwrap().len();
    assert_eq!(n, 1, "one start a second");
    drop((open, other, admin));
    drop_db(&db);
}
