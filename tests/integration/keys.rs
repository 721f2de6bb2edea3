//! Concurrency keys under many claimers, ticks, failures, releases, cancels, lease expiries and
//! killed sessions: from the attempt rows (start and end) and the runs still running, no key ever
//! has more running runs than its limit, under a queue's and a task's key_concurrency, and no
//! window of a key_rate_limit's period holds more of a key's starts than the limit. The limits
//! did bind. And the keys take turns: a small key behind a flooded one starts within the first
//! claims.

use crate::common::{connect_to, drop_db, fresh_db, race_until, tickers};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The most runs of one key ever running at once under a limit's scope (`column` = queue or
/// task, `name`), swept from the attempts' [start, end) and the running runs' [start, now).
/// An attempt that ended at the instant another started does not overlap it.
fn most_running_of_a_key(c: &mut postgres::Client, column: &str, name: &str) -> i64 {
    c.query_one(
        &format!(
            "with spans as (
                 select r.concurrency_key as key, a.started_at as s, a.finished_at as f
                 from conveyor.attempts a join conveyor.runs r on r.id = a.run_id
                 where a.{column} = $1 and r.concurrency_key is not null
                 union all
                 select concurrency_key, started_at, 'infinity' from conveyor.runs
                 where {column} = $1 and status = 'running' and concurrency_key is not null
             ),
             edges as (
                 select key, s as t, 1 as d from spans union all select key, f, -1 from spans
             )
             select coalesce(max(n), 0) from (
                 select sum(d) over (partition by key order by t, d rows unbounded preceding) as n from edges) x"
        ),
        &[&name],
    )
    .unwrap()
    .get(0)
}

/// The most starts of one key in any window (t - period, t] of a queue.
fn most_starts_of_a_key_in_a_window(c: &mut postgres::Client, queue: &str, period: &str) -> i64 {
    c.query_one(
        "with starts as (
             select r.concurrency_key as key, a.started_at as at
             from conveyor.attempts a join conveyor.runs r on r.id = a.run_id where a.queue = $1
             union all
             select concurrency_key, started_at from conveyor.runs where queue = $1 and status = 'running'
         )
         select coalesce(max(n), 0) from (
             select count(*) over (partition by key order by at
                                   range between $2::text::interval - interval '1 microsecond' preceding and current row) as n
             from starts) w",
        &[&queue, &period],
    )
    .unwrap()
    .get(0)
}

#[test]
fn no_key_runs_more_than_its_limit_under_racing_claims_ticks_and_crashes() {
    let (db, mut admin) = fresh_db("it_keys");
    admin
        .batch_execute(
            // kq: a queue limit of 3 per key, one key flooded; kt.b: a task limit of 2 per key
            // over two queues; kr: 5 starts per key and second
            "select conveyor.set_queue('kq', key_concurrency => 3);
             select conveyor.define_task('kq.job', queue => 'kq', max_attempts => 3, delay => '50ms');
             select conveyor.define_task('kt.b', queue => 'kq', key_concurrency => 2, max_attempts => 3, delay => '50ms');
             select conveyor.set_queue('kx');
             select conveyor.set_queue('kr', key_rate_limit => '5/1s');
             select conveyor.define_task('kr.job', queue => 'kr');
             select count(*) from conveyor.enqueue_many('kq.job', array_fill('{}'::jsonb, array[1500]),
                                                        keys => array_fill('flood'::text, array[1500]));
             select count(*) from conveyor.enqueue_many('kq.job', array_fill('{}'::jsonb, array[300]),
                                                        keys => array(select 'k' || (i % 6) from generate_series(1, 300) i));
             select count(*) from conveyor.enqueue_many('kt.b', array_fill('{}'::jsonb, array[300]),
                                                        keys => array(select 'b' || (i % 4) from generate_series(1, 300) i));
             select count(*) from conveyor.enqueue_many('kt.b', array_fill('{}'::jsonb, array[300]), queue => 'kx',
                                                        keys => array(select 'b' || (i % 4) from generate_series(1, 300) i));
             select count(*) from conveyor.enqueue_many('kr.job', array_fill('{}'::jsonb, array[400]),
                                                        keys => array(select 'r' || (i % 3) from generate_series(1, 400) i));",
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let claimed = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for w in 0..8u64 {
        let (db, stop, claimed, killed) = (db.clone(), stop.clone(), claimed.clone(), killed.clone());
        handles.push(thread::spawn(move || {
            let mut c = connect_to(&db);
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let queue = ["kq", "kx", "kq,kx", "kr"][(i % 4) as usize];
                let max = (i % 9 + 1) as i32;
                // worker 7 binds its runs to its session, and now and then drops it mid-run
                let bind = w == 7;
                let rows = c
                    .query(
                        "select run_id::text, lease_token from conveyor.claim_runs($1, $2, $3, '1s', bind_session => $4)",
                        &[&queue, &format!("w{w}"), &max, &bind],
                    )
                    .unwrap();
                claimed.fetch_add(rows.len() as u64, Ordering::SeqCst);
                if bind && !rows.is_empty() && i % 5 == 0 {
                    killed.fetch_add(1, Ordering::SeqCst);
                    c = connect_to(&db);
                    continue;
                }
                for (k, r) in rows.iter().enumerate() {
                    let (id, token): (String, uuid::Uuid) = (r.get(0), r.get(1));
                    let call = match (i as usize + k) % 12 {
                        0 => "select conveyor.fail_run($1::text, $2, 'flaky')::text",
                        1 => "select conveyor.release_run($1::text, $2, '30ms')::text",
                        2 => "select conveyor.cancel_run($1::text)::text",
                        3 => continue,
                        _ => "select conveyor.complete_run($1::text, $2)::text",
                    };
                    if call.contains("cancel_run") {
                        let _ = c.execute(call, &[&id]);
                    } else {
                        let _ = c.execute(call, &[&id, &token]);
                    }
                }
                if rows.is_empty() {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }));
    }
    handles.extend(tickers(&db, &stop, 2));
    // the other keys' 300 runs all start within seconds unless the flood blocks them; a slow
    // machine gets more time, never a looser bound
    let small_started_sql = "select count(distinct id) from conveyor.runs
         where task = 'kq.job' and concurrency_key <> 'flood' and attempts + (status = 'running')::int > 0";
    let watch = &mut connect_to(&db);
    race_until(Duration::from_secs(6), Duration::from_secs(60), &stop, handles, || {
        watch.query_one(small_started_sql, &[]).map(|r| r.get::<_, i64>(0) == 300).unwrap_or(false)
    });
    let queue_most = most_running_of_a_key(&mut admin, "queue", "kq");
    let task_most = most_running_of_a_key(&mut admin, "task", "kt.b");
    let rate_most = most_starts_of_a_key_in_a_window(&mut admin, "kr", "1s");
    let outcomes: String = admin
        .query_one(
            "select string_agg(outcome || ' ' || n, ', ' order by outcome)
             from (select outcome::text, count(*) as n from conveyor.attempts group by 1) o",
            &[],
        )
        .unwrap()
        .get(0);
    let small_started: i64 = admin.query_one(small_started_sql, &[]).unwrap().get(0);
    println!(
        "key limits: {} runs claimed, {} sessions killed mid-run; attempts: {outcomes}; most running of one key: \
         queue kq {queue_most} (limit 3), task kt.b {task_most} (limit 2); most starts of one key in a window of \
         kr: {rate_most} (limit 5/1s); kq runs of other keys started beside the flood: {small_started} of 300",
        claimed.load(Ordering::SeqCst),
        killed.load(Ordering::SeqCst)
    );
    assert!(queue_most <= 3, "queue kq: {queue_most} runs of one key at once");
    assert!(task_most <= 2, "task kt.b: {task_most} runs of one key at once");
    assert!(rate_most <= 5, "queue kr: {rate_most} starts of one key in one window of 1s");
    assert_eq!(queue_most, 3, "the queue's key limit bound (the test did real work)");
    assert_eq!(task_most, 2, "the task's key limit bound");
    assert_eq!(rate_most, 5, "the key rate limit bound");
    for outcome in ["crashed", "failed", "released", "stopped", "succeeded"] {
        assert!(outcomes.contains(outcome), "no attempt ended {outcome}: {outcomes}");
    }
    assert_eq!(small_started, 300, "the flood held the other keys back: {small_started} of 300 started in 60 s");
    drop(admin);
    drop_db(&db);
}

#[test]
fn a_small_key_starts_within_the_first_claims_behind_a_flooded_one() {
    let (db, mut c) = fresh_db("it_keys_fair");
    c.batch_execute(
        "select conveyor.define_task('fair.job', queue => 'fair');
         select count(*) from conveyor.enqueue_many('fair.job', array_fill('{}'::jsonb, array[10000]),
                                                    keys => array_fill('flood'::text, array[10000]));
         select count(*) from conveyor.enqueue_many('fair.job', array_fill('{}'::jsonb, array[10]),
                                                    keys => array_fill('small'::text, array[10]));",
    )
    .unwrap();
    let mut claims = 0;
    let mut small = 0;
    let started = std::time::Instant::now();
    while small < 10 && claims < 1000 {
        claims += 1;
        let rows = c
            .query(
                "select r.concurrency_key from conveyor.claim_runs('fair', 'w', 10) x join conveyor.runs r on r.id = x.run_id",
                &[],
            )
            .unwrap();
        small += rows.iter().filter(|r| r.get::<_, String>(0) == "small").count();
    }
    println!(
        "fairness: 10 runs of a small key enqueued behind 10,000 of a flooded one all started within {claims} \
         claims of 10 ({:?}); first in, first out would take 1,001",
        started.elapsed()
    );
    assert_eq!(small, 10);
    assert!(claims <= 2, "{claims} claims of 10 before the small key's 10 runs started");
    drop(c);
    drop_db(&db);
}
