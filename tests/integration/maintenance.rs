//! The background worker and tick on a real cluster: delivery without anyone calling tick,
//! crash recovery of a killed worker process, cron across a restart, bounded queues under
//! concurrent claimers and ticks, concurrent ticks, wakeups, shutdown and standbys.

use crate::common::{connect, connect_to, drop_db, fresh_db, status_of, tick_workers, unique, wait_for, Cluster};
use postgres::fallible_iterator::FallibleIterator;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn the_background_worker_shows_in_pg_stat_activity() {
    let mut client = connect();
    let found = wait_for(10.0, "the tick worker", || {
        let row = client
            .query_opt(
                "select backend_type, application_name from pg_stat_activity
                 where backend_type = 'pg_conveyor' and datname = current_database()",
                &[],
            )
            .unwrap();
        row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
    });
    assert_eq!(found, ("pg_conveyor".to_string(), "pg_conveyor tick".to_string()));
}

#[test]
fn a_retrying_run_becomes_claimable_within_about_one_tick_interval_without_a_manual_tick() {
    let task = unique("it_redeliver");
    let mut client = connect();
    let interval_ms: i64 = client
        .query_one("select setting::bigint from pg_settings where name = 'conveyor.tick_interval'", &[])
        .unwrap()
        .get(0);
    client.execute("select conveyor.define_task($1, queue => $1, max_attempts => 2, delay => '1s')", &[&task]).unwrap();
    let id: String = client.query_one("select conveyor.enqueue($1)::text", &[&task]).unwrap().get(0);
    let row = client.query_one("select run_id::text, lease_token from conveyor.claim_run($1, 'w')", &[&task]).unwrap();
    let token: uuid::Uuid = row.get(1);
    client.execute("select conveyor.fail_run($1::text::conveyor.ulid, $2, 'transient')", &[&id, &token]).unwrap();
    let due: std::time::SystemTime =
        client.query_one("select run_at from conveyor.runs where id = $1::text::conveyor.ulid", &[&id]).unwrap().get(0);

    let claimed = wait_for(10.0, "the retry to be delivered", || {
        client.query_opt("select run_id::text from conveyor.claim_run($1, 'w')", &[&task]).unwrap()
    });
    let lag = std::time::SystemTime::now().duration_since(due).unwrap_or_default();
    println!("retry due -> claimed by polling: {:.0} ms (tick_interval {interval_ms} ms)", lag.as_secs_f64() * 1000.0);
    assert_eq!(claimed.get::<_, String>(0), id);
    assert!(lag < Duration::from_millis(interval_ms as u64 * 3 + 500), "claimable {lag:?} after it was due");
}

#[test]
fn a_worker_killed_mid_attempt_is_retried_after_its_lease_and_then_succeeds() {
    let task = unique("it_killed");
    let mut client = connect();
    client.execute("select conveyor.define_task($1, queue => $1, max_attempts => 3, delay => '0s')", &[&task]).unwrap();
    let id: String = client.query_one("select conveyor.enqueue($1)::text", &[&task]).unwrap().get(0);

    // a separate worker process: claims under a 1s lease, then "works" for a minute
    let host = crate::common::env("CONVEYOR_TEST_HOST");
    let port = crate::common::env("CONVEYOR_TEST_PORT");
    let db = crate::common::env("CONVEYOR_TEST_DB");
    let mut worker = Command::new("psql")
        .args(["-X", "-q", "-h", &host, "-p", &port, "-U", "postgres", "-d", &db])
        .args(["-c", &format!("select run_id from conveyor.claim_run('{task}', 'doomed-worker', lease => '1s')")])
        .args(["-c", "select pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start psql");
    wait_for(10.0, "the doomed worker's claim", || (status_of(&mut client, &id) == "running").then_some(()));
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();

    // the lease runs out, tick records the attempt as crashed and retries it
    let row = wait_for(15.0, "the run to be claimable again", || {
        client
            .query_opt("select run_id::text, lease_token, attempt from conveyor.claim_run($1, 'rescuer')", &[&task])
            .unwrap()
    });
    assert_eq!(row.get::<_, String>(0), id);
    assert_eq!(row.get::<_, i32>(2), 2, "the second attempt");
    let token: uuid::Uuid = row.get(1);
    client.execute("select conveyor.complete_run($1::text::conveyor.ulid, $2)", &[&id, &token]).unwrap();

    let history: Vec<(i32, String, String, Option<String>)> = client
        .query(
            "select attempt, outcome::text, worker, error ->> 'code' from conveyor.attempts
             where run_id = $1::text::conveyor.ulid order by attempt",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        history,
        vec![
            (1, "crashed".into(), "doomed-worker".into(), Some("crashed".into())),
            (2, "succeeded".into(), "rescuer".into(), None)
        ]
    );
    assert_eq!(status_of(&mut client, &id), "succeeded");
}

#[test]
fn a_bounded_queue_never_exceeds_its_concurrency_under_8_claimers_and_concurrent_ticks() {
    const LIMIT: i64 = 5;
    const RUNS: i64 = 400;
    let task = unique("it_bounded");
    let mut client = connect();
    client.execute("select conveyor.set_queue($1, concurrency => $2::int)", &[&task, &(LIMIT as i32)]).unwrap();
    client.execute("select conveyor.define_task($1, queue => $1)", &[&task]).unwrap();
    client
        .execute(
            "select count(*) from conveyor.enqueue_many($1, array(select '{}'::jsonb from generate_series(1, $2::int)))",
            &[&task, &(RUNS as i32)],
        )
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let samples = Arc::new(AtomicI64::new(0));
    let mut handles = Vec::new();
    // the monitor: one snapshot query sees queued + running at one instant
    {
        let (done, max_seen, samples, task) = (done.clone(), max_seen.clone(), samples.clone(), task.clone());
        handles.push(thread::spawn(move || {
            let mut c = connect();
            while !done.load(Ordering::SeqCst) {
                let n: i64 = c
                    .query_one(
                        "select count(*) from conveyor.runs where queue = $1 and status in ('queued', 'running')",
                        &[&task],
                    )
                    .unwrap()
                    .get(0);
                max_seen.fetch_max(n, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // extra tickers beside the background worker
    for _ in 0..3 {
        let done = done.clone();
        handles.push(thread::spawn(move || {
            let mut c = connect();
            while !done.load(Ordering::SeqCst) {
                c.execute("select conveyor.tick()", &[]).unwrap();
            }
        }));
    }
    let claimers: Vec<_> = (0..8)
        .map(|i| {
            let task = task.clone();
            thread::spawn(move || {
                let mut c = connect();
                let mut finished = 0;
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    let rows = c
                        .query(
                            "select run_id::text, lease_token from conveyor.claim_runs($1, $2, 3)",
                            &[&task, &format!("w{i}")],
                        )
                        .unwrap();
                    if rows.is_empty() {
                        let left: i64 = c
                            .query_one(
                                "select count(*) from conveyor.runs where queue = $1 and status <> 'succeeded'",
                                &[&task],
                            )
                            .unwrap()
                            .get(0);
                        if left == 0 {
                            break;
                        }
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    for row in rows {
                        let (id, token): (String, uuid::Uuid) = (row.get(0), row.get(1));
                        c.execute("select conveyor.complete_run($1::text::conveyor.ulid, $2)", &[&id, &token]).unwrap();
                        finished += 1;
                    }
                }
                finished
            })
        })
        .collect();
    let finished: i64 = claimers.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    println!(
        "bounded queue: {finished} runs by 8 claimers, max delivered seen {} (limit {LIMIT}) over {} samples",
        max_seen.load(Ordering::SeqCst),
        samples.load(Ordering::SeqCst)
    );
    assert_eq!(finished, RUNS);
    assert!(max_seen.load(Ordering::SeqCst) <= LIMIT, "saw more than {LIMIT} delivered at once");
    assert!(max_seen.load(Ordering::SeqCst) >= 2, "the queue was actually used in parallel");
    let delivered: i32 =
        client.query_one("select delivered from conveyor.queues where name = $1", &[&task]).unwrap().get(0);
    assert_eq!(delivered, 0, "the counter is back to zero");
}

#[test]
fn concurrent_ticks_never_double_anything() {
    let (db, mut client) = fresh_db("it_ticks");
    client
        .batch_execute(
            "set conveyor.test_clock = '2030-01-01 00:00:00+00';
             select conveyor.define_task('waiting', queue => 'q', max_attempts => 3, delay => '1s');
             select conveyor.define_task('cron', queue => 'q', schedule => '* * * * *', options => '{\"catch_up\": true}');
             select count(*) from conveyor.enqueue_many('waiting', array(select '{}'::jsonb from generate_series(1, 300)), delay => '10s');
             select count(*) from conveyor.enqueue_many('waiting', array(select '{}'::jsonb from generate_series(1, 100)));
             select count(*) from conveyor.claim_runs('q', 'w', 100, lease => '5s');
             select count(conveyor.publish('t', jsonb_build_object('n', n))) from generate_series(1, 100) n;",
        )
        .unwrap();
    // at 00:30 everything is due: 300 scheduled runs, 30 cron firings, 100 expired leases, 100 messages
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (barrier, db) = (barrier.clone(), db.clone());
            thread::spawn(move || {
                let mut c = connect_to(&db);
                c.batch_execute("set conveyor.test_clock = '2030-01-01 00:30:00+00'").unwrap();
                barrier.wait();
                let mut totals = [0i64; 4];
                for _ in 0..5 {
                    let r = c.query_one("select crashed, fired, delivered, flushed from conveyor.tick()", &[]).unwrap();
                    for (i, t) in totals.iter_mut().enumerate() {
                        *t += r.get::<_, i32>(i) as i64;
                    }
                }
                totals
            })
        })
        .collect();
    let totals = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold([0i64; 4], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]);
    println!(
        "6 concurrent tickers: crashed {}, fired {}, delivered {}, flushed {}",
        totals[0], totals[1], totals[2], totals[3]
    );
    assert_eq!(totals[0], 100, "each expired lease ended once");
    assert_eq!(totals[1], 30, "each cron firing materialized once");
    assert_eq!(totals[3], 100, "each message flushed once");
    let row = client
        .query_one(
            "select (select count(*) from conveyor.runs where task = 'cron'),
                    (select count(distinct fire_at) from conveyor.runs where task = 'cron'),
                    (select count(*) from conveyor.attempts where outcome = 'crashed'),
                    (select max(n) from (select count(*) n from conveyor.events where type = 'run.delivery_requested'
                                         group by run_id, attempt) x),
                    (select count(*) from conveyor.outbox where published_at is null)",
            &[],
        )
        .unwrap();
    let (cron_runs, firings, crashed, max_deliveries, unpublished): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!((cron_runs, firings, crashed, max_deliveries, unpublished), (30, 30, 100, 1, 0));
    // 300 scheduled + 30 cron runs delivered, each once (the crashed runs retry 1s later)
    assert_eq!(totals[2], 330);
    let retrying: i64 =
        client.query_one("select count(*) from conveyor.runs where status = 'retrying'", &[]).unwrap().get(0);
    assert_eq!(retrying, 100);
    drop(client);
    drop_db(&db);
}

#[test]
fn a_listening_worker_is_woken_when_a_queue_becomes_claimable_at_commit_and_not_by_a_rollback() {
    let task = unique("it_wake");
    let mut listener = connect();
    let mut producer = connect();
    producer.execute("select conveyor.define_task($1, queue => $1)", &[&task]).unwrap();
    listener.batch_execute(&format!("listen \"conveyor.{task}\"")).unwrap();

    let mut tx = producer.transaction().unwrap();
    tx.execute("select conveyor.enqueue($1)", &[&task]).unwrap();
    tx.rollback().unwrap();
    let quiet = listener.notifications().timeout_iter(Duration::from_millis(500)).next().unwrap();
    assert!(quiet.is_none(), "no wakeup for a rollback");

    let sent = Instant::now();
    producer.execute("select conveyor.enqueue($1)", &[&task]).unwrap();
    let note = listener.notifications().timeout_iter(Duration::from_secs(5)).next().unwrap().expect("a wakeup");
    println!("wakeup {:.2} ms after the enqueue call", sent.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(note.channel(), format!("conveyor.{task}"));

    // while the queue holds a claimable run its workers are busy: no wakeup (and no NOTIFY lock)
    producer.execute("select conveyor.enqueue($1)", &[&task]).unwrap();
    let quiet = listener.notifications().timeout_iter(Duration::from_millis(500)).next().unwrap();
    assert!(quiet.is_none(), "no wakeup while the queue is not empty");
    // once drained, the next run wakes a worker again
    let drained: i64 =
        producer.query_one("select count(*) from conveyor.claim_runs($1, 'w', 10)", &[&task]).unwrap().get(0);
    assert_eq!(drained, 2);
    producer.execute("select conveyor.enqueue($1)", &[&task]).unwrap();
    let again = listener.notifications().timeout_iter(Duration::from_secs(5)).next().unwrap();
    assert!(again.is_some(), "a wakeup for the run that made the queue claimable again");
}

#[test]
fn tick_wakes_outbox_listeners_once_due_and_the_relay_reads_the_message() {
    let topic = unique("it_topic");
    let mut listener = connect();
    let mut producer = connect();
    listener.batch_execute(&format!("listen \"{topic}\"")).unwrap();
    let id: String =
        producer.query_one("select conveyor.publish($1, '{\"order\": 7}')::text", &[&topic]).unwrap().get(0);
    // no one calls tick: the background worker flushes it
    let note = listener.notifications().timeout_iter(Duration::from_secs(10)).next().unwrap().expect("the message");
    // a wakeup only: channels have no permissions, so the message is read through the relay
    assert_eq!(note.payload(), "", "a notification carries no payload");
    let claimed: serde_json::Value = producer
        .query_one(
            "select payload from conveyor.outbox_claim('it-relay', array[$1], 10) where id::text = $2",
            &[&topic, &id],
        )
        .unwrap()
        .get(0);
    assert_eq!(claimed["order"], 7);
    let published: bool = producer
        .query_one("select published_at is not null from conveyor.outbox where id = $1::text::conveyor.ulid", &[&id])
        .unwrap()
        .get(0);
    assert!(published);
}

fn fired_minutes(client: &mut postgres::Client, task: &str) -> Vec<i32> {
    client
        .query(
            "select extract(minute from fire_at at time zone 'UTC')::int from conveyor.runs where task = $1 order by fire_at",
            &[&task],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn set_worker_clock(client: &mut postgres::Client, at: &str) {
    client.batch_execute(&format!("alter system set conveyor.test_clock = '{at}'")).unwrap();
    client.batch_execute("select pg_reload_conf()").unwrap();
}

#[test]
fn a_cron_task_fires_once_per_firing_across_a_restart_of_the_cluster() {
    // the worker's clock is the superuser-only conveyor.test_clock, moved by ALTER SYSTEM + reload
    let cluster = Cluster::start(
        "cron",
        &[
            "conveyor.database = 'app'",
            "conveyor.tick_interval = '100ms'",
            "conveyor.test_clock = '2030-01-01 00:00:30+00'",
        ],
    );
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("create database app").unwrap();
    let mut client = cluster.connect("app");
    client
        .batch_execute(
            "create extension pg_conveyor; select conveyor.define_task('minutely', schedule => '* * * * *');",
        )
        .unwrap();

    set_worker_clock(&mut client, "2030-01-01 00:01:00+00");
    wait_for(20.0, "the 00:01 firing", || (fired_minutes(&mut client, "minutely") == vec![1]).then_some(()));
    thread::sleep(Duration::from_millis(500)); // more ticks at the same time fire nothing more
    assert_eq!(fired_minutes(&mut client, "minutely"), vec![1]);

    drop(client);
    drop(admin);
    let out = cluster.pg_ctl(&["restart", "-m", "fast"]);
    assert!(out.status.success(), "restart: {}", String::from_utf8_lossy(&out.stderr));
    let mut client = cluster.connect("app");
    set_worker_clock(&mut client, "2030-01-01 00:02:00+00");
    wait_for(20.0, "the 00:02 firing after the restart", || {
        (fired_minutes(&mut client, "minutely") == vec![1, 2]).then_some(())
    });
    // three minutes of downtime: only the latest missed firing runs
    drop(client);
    let out = cluster.pg_ctl(&["stop", "-m", "fast"]);
    assert!(out.status.success());
    std::fs::write(
        format!("{}/data/postgresql.auto.conf", cluster.dir),
        "conveyor.test_clock = '2030-01-01 00:05:10+00'\n",
    )
    .ok();
    let out = cluster.pg_ctl(&["start"]);
    assert!(out.status.success(), "start: {}", String::from_utf8_lossy(&out.stderr));
    let mut client = cluster.connect("app");
    wait_for(20.0, "the 00:05 firing", || (fired_minutes(&mut client, "minutely") == vec![1, 2, 5]).then_some(()));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(fired_minutes(&mut client, "minutely"), vec![1, 2, 5]);
}

#[test]
fn sigterm_stops_the_worker_which_comes_back_and_the_cluster_shuts_down_cleanly() {
    let cluster = Cluster::start("sigterm", &["conveyor.database = 'postgres'", "conveyor.tick_interval = '100ms'"]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("create extension pg_conveyor").unwrap();
    let worker_pid = |c: &mut postgres::Client| -> Option<i32> {
        c.query_opt("select pid from pg_stat_activity where backend_type = 'pg_conveyor'", &[])
            .unwrap()
            .map(|r| r.get(0))
    };
    let first = wait_for(10.0, "the worker", || worker_pid(&mut client));
    let terminated: bool = client.query_one("select pg_terminate_backend($1)", &[&first]).unwrap().get(0);
    assert!(terminated);
    let second = wait_for(10.0, "the worker to come back", || worker_pid(&mut client).filter(|p| *p != first));
    assert_ne!(first, second);
    drop(client);

    let start = Instant::now();
    let out = cluster.pg_ctl(&["stop", "-m", "fast"]);
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    println!("fast shutdown with the worker running took {:.2}s", start.elapsed().as_secs_f64());
    assert!(start.elapsed() < Duration::from_secs(10));
    let log = cluster.log();
    assert!(log.contains("tick worker in database \"postgres\" stopping"), "{log}");
    assert!(log.contains("database system is shut down"), "{log}");
}

#[test]
fn the_worker_stays_idle_on_a_standby_until_it_is_promoted() {
    let primary = Cluster::start(
        "primary",
        &[
            "conveyor.database = 'postgres'",
            "conveyor.tick_interval = '100ms'",
            "wal_level = replica",
            "max_wal_senders = 4",
        ],
    );
    let mut client = primary.connect("postgres");
    client.batch_execute("create extension pg_conveyor; select conveyor.define_task('t', delay => '0s');").unwrap();
    client.batch_execute("select conveyor.enqueue('t', delay => '1s')").unwrap();

    // a streaming standby made with pg_basebackup -R
    let standby_dir = format!("{}-standby", primary.dir);
    let _ = std::fs::remove_dir_all(&standby_dir);
    std::fs::create_dir_all(&standby_dir).unwrap();
    let bin = String::from_utf8(Command::new("/usr/bin/pg_config").arg("--bindir").output().unwrap().stdout).unwrap();
    let status = Command::new("sudo").current_dir("/tmp").args(["chown", "postgres", &standby_dir]).status().unwrap();
    assert!(status.success());
    let status = Command::new("sudo")
        .current_dir("/tmp")
        .args(["-u", "postgres", &format!("{}/pg_basebackup", bin.trim())])
        .args(["-h", &primary.dir, "-p", &primary.port.to_string(), "-U", "postgres", "-D"])
        .arg(format!("{standby_dir}/data"))
        .args(["-R", "-X", "stream"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_basebackup");
    let standby_port = primary.port + 100;
    std::fs::OpenOptions::new()
        .append(true)
        .open(format!("{standby_dir}/data/postgresql.auto.conf"))
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "port = {standby_port}\nunix_socket_directories = '{standby_dir}'")
        })
        .unwrap();
    let standby = Cluster { dir: standby_dir.clone(), port: standby_port };
    let out = standby.pg_ctl(&["start"]);
    assert!(out.status.success(), "standby start: {}", String::from_utf8_lossy(&out.stderr));
    let mut replica = standby.connect("postgres");
    let in_recovery: bool = replica.query_one("select pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(tick_workers(&mut replica), 0, "no tick worker on a standby");

    drop(client);
    let out = primary.pg_ctl(&["stop", "-m", "fast"]);
    assert!(out.status.success());
    let promoted: bool = replica.query_one("select pg_promote()", &[]).unwrap().get(0);
    assert!(promoted);
    wait_for(20.0, "the worker after promotion", || (tick_workers(&mut replica) == 1).then_some(()));
    // and it ticks: the run enqueued on the primary is delivered on the promoted standby
    wait_for(20.0, "delivery on the promoted standby", || {
        let s: String = replica.query_one("select status::text from conveyor.runs", &[]).unwrap().get(0);
        (s == "queued").then_some(())
    });
}

/// Heap blocks of conveyor.runs and index blocks of runs_claimable that one claim of 1 from
/// queue hs reads (this transaction's own counts, pg_stat_get_xact_blocks_fetched; rolled back).
fn claim_blocks(c: &mut postgres::Client) -> i64 {
    let count = "select (pg_stat_get_xact_blocks_fetched('conveyor.runs'::regclass)
                      + pg_stat_get_xact_blocks_fetched('conveyor.runs_claimable'::regclass))::bigint";
    let mut t = c.transaction().unwrap();
    let before: i64 = t.query_one(count, &[]).unwrap().get(0);
    t.batch_execute("select conveyor.claim_runs('hs', 'w', 1)").unwrap();
    let after: i64 = t.query_one(count, &[]).unwrap().get(0);
    t.rollback().unwrap();
    after - before
}

/// The ids of up to 10 runs claimed from queue hs, in claim order.
fn claim_ten(c: &mut postgres::Client) -> Vec<String> {
    c.query("select run_id::text from conveyor.claim_runs('hs', 'w', 10)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A snapshot held open keeps vacuum from removing the claimable-index entries of every run
/// claimed since, and a claim would walk all of them from the head of its queue. While one is
/// older than 2 s, tick publishes each queue's first claimable key (conveyor._claim_hints) and
/// claims start there: a claim behind 6,000 such entries reads a few blocks, not hundreds. A
/// run queued ahead of the hint waits for the next tick's hint; once the snapshot ends, no hint
/// is made and claims read from the head again.
#[test]
fn under_an_old_snapshot_claims_start_at_the_queues_hint_and_miss_no_run() {
    let (db, mut c) = fresh_db("it_hint");
    c.batch_execute("select conveyor.define_task('hs.job', queue => 'hs')").unwrap();
    let mut holder = connect_to(&db);
    holder.batch_execute("begin isolation level repeatable read; select count(*) from conveyor.runs").unwrap();
    // 6,000 runs claimed and finished under the snapshot: their entries stay at the queue's head
    c.batch_execute(
        "select conveyor.enqueue_many('hs.job', array_fill('{}'::jsonb, array[6000]));
         select conveyor.finish_runs(jsonb_agg(jsonb_build_object('run_id', run_id, 'lease_token', lease_token, 'outcome', 'succeeded')))
         from conveyor.claim_runs('hs', 'w', 6000)",
    )
    .unwrap();
    let waiting: Vec<String> = c
        .query("select conveyor.enqueue('hs.job', jsonb_build_object('n', n))::text from generate_series(1, 5) n", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let hinted =
        |c: &mut postgres::Client| -> i32 { c.query_one("select hinted from conveyor.tick()", &[]).unwrap().get(0) };
    // not old yet (a handful of transactions since): no hint, and a claim walks the dead entries
    assert_eq!(hinted(&mut c), 0, "a snapshot only a few transactions old makes no hint");
    let from_head = claim_blocks(&mut c);
    for _ in 0..1000 {
        c.batch_execute("select pg_current_xact_id()").unwrap();
    }
    assert_eq!(hinted(&mut c), 1, "the held snapshot is 1,000 transactions old: queue hs gets a hint");
    let hint: String = c
        .query_one("select id::text from conveyor._claim_hints where queue = 'hs' order by made_at desc limit 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(hint, waiting[0], "the hint is the first claimable run");
    let from_hint = claim_blocks(&mut c);
    println!("a claim of 1 behind 6,000 dead entries read {from_head} blocks from the head, {from_hint} from the hint");
    // (6,000 entries point into about 150 heap pages, each read once as the walk goes)
    assert!(from_head > 100, "from the head the claim walks the dead entries: {from_head} blocks");
    assert!(from_hint * 4 < from_head, "from the hint it does not: {from_hint} blocks");

    // a run queued ahead of the hint (due an hour ago) waits for the next tick's hint
    let early: String = c
        .query_one("select conveyor.enqueue('hs.job', run_at => now() - interval '1 hour')::text", &[])
        .unwrap()
        .get(0);
    let got: Vec<String> = claim_ten(&mut c);
    assert_eq!(got, waiting, "the runs from the hint on, in claim order");
    assert_eq!(hinted(&mut c), 1);
    let got: Vec<String> = claim_ten(&mut c);
    assert_eq!(got, vec![early.clone()], "the next hint starts at the early run");
    assert_eq!(status_of(&mut c, &early), "running");

    // a listener is woken when a hint comes down to a run its enqueue's wakeup could not show
    let mut listener = connect_to(&db);
    listener.batch_execute("listen \"conveyor.hs\"").unwrap();
    let behind: String = c
        .query_one("select conveyor.enqueue('hs.job', run_at => now() - interval '2 hours')::text", &[])
        .unwrap()
        .get(0);
    while listener.notifications().timeout_iter(Duration::from_millis(200)).next().unwrap().is_some() {}
    assert_eq!(hinted(&mut c), 1);
    let woken = listener.notifications().timeout_iter(Duration::from_secs(5)).next().unwrap();
    assert!(woken.is_some(), "the hint step woke the queue's listeners");

    // the snapshot ends: no more hints, and once the last one is stale (3 s) a run queued behind
    // it is claimed at once
    holder.batch_execute("commit").unwrap();
    assert_eq!(hinted(&mut c), 0, "no old snapshot, no hint");
    thread::sleep(Duration::from_millis(3100));
    let late: String = c
        .query_one("select conveyor.enqueue('hs.job', run_at => now() - interval '3 hours')::text", &[])
        .unwrap()
        .get(0);
    let got: Vec<String> = claim_ten(&mut c);
    assert_eq!(got, vec![late, behind], "from the head again, in claim order");
    drop(listener);
    drop(holder);
    drop(c);
    drop_db(&db);
}
