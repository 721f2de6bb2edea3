//! pg_conveyor's benchmark driver. Connects with PGHOST/PGPORT/PGUSER/PGDATABASE to a database
//! it may reset, runs one workload, and prints one machine-readable line:
//!   RESULT system=pg_conveyor workload=... key=value ...
//! plus human-readable detail on stderr. `scripts/bench.sh` runs the workloads and the peers and
//! prints the table.
//!
//! Workloads:
//!   enqueue-single  N clients, one enqueue per transaction, for S seconds
//!   enqueue-batch   N clients, enqueue_many of B runs per transaction, for S seconds
//!   process         R no-op runs pre-enqueued, W workers claim batches of B and finish them
//!                   until the queue is empty (B = 1: complete_run each; B > 1: finish_runs);
//!                   with --combined 1, one finish_and_claim call per cycle (one commit) instead
//!                   (workload process_combined); --keys K spreads the runs over K concurrency
//!                   keys under a key_concurrency that never binds (process_key_limited), with
//!                   --key-limit 0 under none (process_keyed)
//!   process-mix     process with a realistic mix: a tenth of the runs fail once and a tenth
//!                   are released once (retried and due again at once, delivered by tick)
//!   latency         a LISTENing worker; enqueue commit -> claimed, p50/p99 over K samples
//!   claim-cost      mean claim+complete time with N runs waiting
//!   tick-cost       tick time with N scheduled runs of which D are due
//!   growth          R runs through W workers with a short retention: runs table size over time
//!   sustained       producers offer a fixed rate (runs/s) for S seconds while 8 workers process
//!                   them with finish_and_claim (batch 10); --hold 1: a session holds a REPEATABLE
//!                   READ snapshot all the while (a long report, a stuck transaction). Prints
//!                   throughput, enqueue -> start p50/p99 and the dead tuples of the queue tables
//!   routed          process over the shards of a sharded cluster (docs/scale-out.md): the
//!                   backlog split evenly over the shards (CONVEYOR_BENCH_SHARDS, connect strings
//!                   separated by `;`), W workers through the router (CONVEYOR_BENCH_ROUTER), or
//!                   on the one shard itself with --direct 1. Prints throughput and the CPU time
//!                   per run of the shards' servers and of the router's

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("--{name} takes a number")))
        .unwrap_or(default)
}

/// Where workers connect when it is not PGHOST/PGPORT/PGUSER/PGDATABASE (workload routed).
static TARGET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn connect() -> Client {
    let cfg = TARGET.get().cloned().unwrap_or_else(|| {
        format!(
            "host={} port={} user={} dbname={}",
            std::env::var("PGHOST").unwrap_or_else(|_| "/tmp".into()),
            std::env::var("PGPORT").unwrap_or_else(|_| "5432".into()),
            std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
            std::env::var("PGDATABASE").unwrap_or_else(|_| "bench".into()),
        )
    });
    connect_to(&cfg)
}

fn connect_to(cfg: &str) -> Client {
    Client::connect(cfg, NoTls).unwrap_or_else(|e| panic!("connect ({cfg}): {e}"))
}

/// A clean slate: the extension recreated, one no-op task in queue `bench`.
fn reset(client: &mut Client, extra: &str) {
    client
        .batch_execute(&format!(
            "drop extension if exists pg_conveyor cascade;
             create extension pg_conveyor;
             select conveyor.define_task('bench.noop', queue => 'bench');
             {extra}"
        ))
        .expect("reset");
}

fn enqueue_backlog(client: &mut Client, runs: u64, extra: &str) {
    let chunk = 20_000;
    let mut left = runs;
    while left > 0 {
        let n = left.min(chunk) as i32;
        client
            .execute(
                &format!("select count(*) from conveyor.enqueue_many('bench.noop', array(select '{{}}'::jsonb from generate_series(1, $1::int)){extra})"),
                &[&n],
            )
            .expect("enqueue backlog");
        left -= n as u64;
    }
    client.batch_execute("vacuum analyze conveyor.runs").unwrap();
}

/// The database's WAL position and commits when the workload began (`main`), for the WAL bytes
/// and commits a workload cost.
static BEGAN: std::sync::OnceLock<(i64, i64)> = std::sync::OnceLock::new();

fn wal_and_commits(c: &mut Client) -> (i64, i64) {
    let row = c
        .query_one(
            "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint,
                    (select xact_commit from pg_stat_database where datname = current_database())",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn result(workload: &str, fields: &[(&str, String)]) {
    let mut rest: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(&(wal0, commits0)) = BEGAN.get() {
        // other backends report their commits within a second: wait for them
        thread::sleep(Duration::from_millis(1100));
        let (wal, commits) = wal_and_commits(&mut connect());
        let (wal, commits) = (wal - wal0, commits - commits0);
        rest.push(format!("wal_bytes={wal} commits={commits}"));
        let runs = fields.iter().find(|(k, _)| *k == "runs").and_then(|(_, v)| v.parse::<f64>().ok());
        if let Some(runs) = runs.filter(|r| *r > 0.0) {
            rest.push(format!("wal_per_run={:.0} commits_per_run={:.2}", wal as f64 / runs, commits as f64 / runs));
        }
    }
    println!("RESULT system=pg_conveyor workload={workload} {}", rest.join(" "));
}

/// Run `clients` threads doing `one` in a loop for `seconds`; returns operations/s.
fn for_seconds(clients: u64, seconds: u64, one: impl Fn(&mut Client) -> u64 + Send + Sync + 'static) -> f64 {
    let one = Arc::new(one);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(clients as usize + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (one, done, stop, barrier) = (one.clone(), done.clone(), stop.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = connect();
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    done.fetch_add(one(&mut c), Ordering::Relaxed);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let ops = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for h in handles {
        h.join().unwrap();
    }
    ops as f64 / elapsed
}

fn enqueue_single(clients: u64, seconds: u64) {
    reset(&mut connect(), "");
    // one round trip and one transaction per call (parse, bind and execute together), as the
    // client packages and node-postgres or psycopg send it; a separate prepare would be a second
    // round trip and a second transaction
    let rate = for_seconds(clients, seconds, |c| {
        c.query_typed("select conveyor.enqueue('bench.noop', '{\"n\": 1}')", &[]).unwrap();
        1
    });
    eprintln!("enqueue single: {clients} clients, {rate:.0} runs/s");
    let runs = (rate * seconds as f64).round() as u64;
    result(
        "enqueue_single",
        &[("clients", clients.to_string()), ("per_second", format!("{rate:.0}")), ("runs", runs.to_string())],
    );
}

fn enqueue_batch(clients: u64, batch: u64, seconds: u64) {
    reset(&mut connect(), "");
    let b = batch as i32;
    let rate = for_seconds(clients, seconds, move |c| {
        c.query_typed(
            "select count(*) from conveyor.enqueue_many('bench.noop', array(select '{\"n\": 1}'::jsonb from generate_series(1, $1::int)))",
            &[(&b, postgres::types::Type::INT4)],
        )
        .unwrap();
        batch
    });
    eprintln!("enqueue batch: {clients} clients x {batch} per call, {rate:.0} runs/s");
    let runs = (rate * seconds as f64).round() as u64;
    result(
        "enqueue_batch",
        &[
            ("clients", clients.to_string()),
            ("batch", batch.to_string()),
            ("per_second", format!("{rate:.0}")),
            ("runs", runs.to_string()),
        ],
    );
}

/// After a claim that found nothing: true once the queue was empty twice in a row (SKIP LOCKED
/// can hide rows another worker holds, so an empty claim alone proves nothing), else a pause.
fn drained(c: &mut Client, pending: &postgres::Statement, empty: &mut u32) -> bool {
    let left: i64 = c.query_one(pending, &[]).unwrap().get(0);
    if left == 0 {
        *empty += 1;
        if *empty > 1 {
            return true;
        }
    }
    thread::sleep(Duration::from_millis(2));
    false
}

/// A finish_runs item: this claimed run succeeded.
fn success_item(id: &str, token: uuid::Uuid) -> serde_json::Value {
    serde_json::json!({"run_id": id, "lease_token": token.to_string(), "outcome": "succeeded"})
}

/// The realistic mix (workload process-mix): what a worker does with a claimed run. A tenth of the
/// runs (by a hash of the id) fail once and a tenth are released once (business waiting); the
/// rest, and those on their second attempt, succeed.
fn mix_item(id: &str, token: uuid::Uuid, failures: i32, releases: i32) -> serde_json::Value {
    let h = id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let lease = token.to_string();
    match h % 10 {
        0 if failures == 0 => {
            serde_json::json!({"run_id": id, "lease_token": lease, "outcome": "failed", "message": "mix: fails once"})
        }
        1 if releases == 0 => {
            serde_json::json!({"run_id": id, "lease_token": lease, "outcome": "released", "delay": "0s", "reason": "mix"})
        }
        _ => success_item(id, token),
    }
}

/// How the workers finish the runs they claim.
#[derive(Clone, Copy, PartialEq)]
enum Finish {
    /// claim, then complete_run (batch 1) or finish_runs: every run succeeds
    Apart,
    /// one finish_and_claim call per cycle: every run succeeds
    Combined,
    /// claim, then finish_runs with the outcomes of mix_item
    Mix,
}

/// One worker: claim batches until the queue stays empty; returns runs finished (succeeded).
fn work_until_empty(c: &mut Client, batch: u64, worker: &str) -> u64 {
    work_until_empty_as(c, batch, worker, Finish::Apart)
}

/// `finish_as`: Apart or Mix (Combined is work_until_empty_combined).
fn work_until_empty_as(c: &mut Client, batch: u64, worker: &str, finish_as: Finish) -> u64 {
    let mut finished = 0;
    let mut empty = 0u32;
    // prepared once, as a real worker does
    let claim = c
        .prepare("select run_id::text, lease_token, failures, releases from conveyor.claim_runs('bench', $1, $2::int)")
        .unwrap();
    let complete = c.prepare("select conveyor.complete_run($1::text, $2)").unwrap();
    let finish = c.prepare("select count(*) from conveyor.finish_runs($1)").unwrap();
    let pending = c.prepare("select conveyor.pending('bench')").unwrap();
    loop {
        let rows = c.query(&claim, &[&worker, &(batch as i32)]).unwrap();
        if rows.is_empty() {
            if drained(c, &pending, &mut empty) {
                return finished;
            }
            continue;
        }
        empty = 0;
        if finish_as == Finish::Mix {
            let items: Vec<serde_json::Value> =
                rows.iter().map(|r| mix_item(r.get(0), r.get(1), r.get(2), r.get(3))).collect();
            finished += items.iter().filter(|i| i["outcome"] == "succeeded").count() as u64;
            c.execute(&finish, &[&serde_json::Value::Array(items)]).unwrap();
            continue;
        }
        if batch == 1 {
            for r in &rows {
                let (id, token): (String, uuid::Uuid) = (r.get(0), r.get(1));
                c.execute(&complete, &[&id, &token]).unwrap();
            }
        } else {
            let items: Vec<serde_json::Value> = rows.iter().map(|r| success_item(r.get(0), r.get(1))).collect();
            c.execute(&finish, &[&serde_json::Value::Array(items)]).unwrap();
        }
        finished += rows.len() as u64;
    }
}

/// One worker on finish_and_claim: each call finishes the runs in hand and claims the next
/// batch, one transaction per cycle; returns runs finished.
fn work_until_empty_combined(c: &mut Client, batch: u64, worker: &str) -> u64 {
    let mut finished = 0;
    let mut empty = 0u32;
    let cycle = c
        .prepare(
            "select kind, run_id::text, lease_token, status::text from conveyor.finish_and_claim($1, 'bench', $2, $3::int)",
        )
        .unwrap();
    let pending = c.prepare("select conveyor.pending('bench')").unwrap();
    let mut in_hand: Option<serde_json::Value> = None;
    loop {
        let rows = c.query(&cycle, &[&in_hand, &worker, &(batch as i32)]).unwrap();
        let mut items = Vec::new();
        for r in &rows {
            let kind: &str = r.get(0);
            if kind == "finished" {
                let status: Option<String> = r.get(3);
                assert_eq!(status.as_deref(), Some("succeeded"), "a finish in the cycle held");
                finished += 1;
            } else {
                items.push(success_item(r.get(1), r.get(2)));
            }
        }
        if items.is_empty() {
            in_hand = None;
            if drained(c, &pending, &mut empty) {
                return finished;
            }
            continue;
        }
        empty = 0;
        in_hand = Some(serde_json::Value::Array(items));
    }
}

fn run_workers(workers: u64, batch: u64) -> (f64, u64) {
    run_workers_as(workers, batch, Finish::Apart)
}

fn run_workers_as(workers: u64, batch: u64, finish: Finish) -> (f64, u64) {
    let barrier = Arc::new(Barrier::new(workers as usize + 1));
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut c = connect();
                barrier.wait();
                if finish == Finish::Combined {
                    work_until_empty_combined(&mut c, batch, &format!("bench-{i}"))
                } else {
                    work_until_empty_as(&mut c, batch, &format!("bench-{i}"), finish)
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let finished: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (start.elapsed().as_secs_f64(), finished)
}

/// The realistic mix: `runs` runs, of which a tenth fail once (retried at once: max_attempts 3,
/// delay 0s) and a tenth are released once (due again at once), through W workers at batch B.
/// The retries and releases come back through tick's delivery (the background worker). Checks
/// that every run succeeded exactly once, after as many attempts as the mix asked for.
fn process_mix(runs: u64, workers: u64, batch: u64) {
    let mut client = connect();
    reset(
        &mut client,
        "select conveyor.define_task('bench.noop', queue => 'bench', max_attempts => 3, delay => '0s');",
    );
    enqueue_backlog(&mut client, runs, "");
    let (seconds, finished) = run_workers_as(workers, batch, Finish::Mix);
    let row = client
        .query_one(
            "select (select count(*) from conveyor.runs where status = 'succeeded'), (select count(*) from conveyor.runs),
                    count(*) filter (where outcome = 'succeeded'), count(*) filter (where outcome = 'failed'),
                    count(*) filter (where outcome = 'released'), count(*)
             from conveyor.attempts",
            &[],
        )
        .unwrap();
    let (succeeded, total, ok, failed, released, attempts): (i64, i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    assert_eq!(
        (succeeded as u64, total as u64, ok as u64, finished),
        (runs, runs, runs, runs),
        "every run succeeded once"
    );
    assert_eq!(attempts, ok + failed + released, "no attempt ended otherwise");
    let rate = runs as f64 / seconds;
    eprintln!(
        "process_mix: {runs} runs, {workers} workers, batch {batch}: {seconds:.2}s, {rate:.0} runs/s; attempts: \
         {failed} failed once ({:.1}%), {released} released once ({:.1}%), {ok} succeeded",
        100.0 * failed as f64 / runs as f64,
        100.0 * released as f64 / runs as f64
    );
    result(
        "process_mix",
        &[
            ("runs", runs.to_string()),
            ("workers", workers.to_string()),
            ("batch", batch.to_string()),
            ("seconds", format!("{seconds:.2}")),
            ("per_second", format!("{rate:.0}")),
            ("failed_once", failed.to_string()),
            ("released_once", released.to_string()),
            ("attempts", attempts.to_string()),
        ],
    );
}

/// `limits`: give the queue and the task rate limits that never bind (10^6 starts a second), to
/// measure what a claim under limits costs. `keys` > 0: spread the runs over that many
/// concurrency keys, under a key_concurrency on the queue that never binds (100,000 running per
/// key), to measure what a claim under key limits costs; with `key_limit` false the same keyed
/// runs under no limit (what the limit itself costs, apart from the keys' fair turns).
fn process(runs: u64, workers: u64, batch: u64, combined: bool, limits: bool, keys: u64, key_limit: bool) {
    let mut client = connect();
    reset(
        &mut client,
        if limits {
            "select conveyor.set_queue('bench', rate_limit => '1000000/1s');
             select conveyor.define_task('bench.noop', queue => 'bench', rate_limit => '1000000/1s');"
        } else if keys > 0 && key_limit {
            "select conveyor.set_queue('bench', key_concurrency => 100000);"
        } else {
            ""
        },
    );
    let spread = if keys > 0 {
        format!(", keys => array(select 'tenant-' || (i % {keys}) from generate_series(1, $1::int) i)")
    } else {
        String::new()
    };
    enqueue_backlog(&mut client, runs, &spread);
    let (seconds, finished) = run_workers_as(workers, batch, if combined { Finish::Combined } else { Finish::Apart });
    let row = client
        .query_one(
            "select count(*) filter (where status = 'succeeded'), count(*), (select count(*) from conveyor.attempts),
                    (select count(*) from conveyor.events)
             from conveyor.runs",
            &[],
        )
        .unwrap();
    let (succeeded, total, attempts, events): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((succeeded as u64, total as u64, attempts as u64), (runs, runs, runs), "every run succeeded once");
    assert_eq!(finished, runs);
    assert_eq!(events as u64, 3 * runs, "three events per run");
    let rate = runs as f64 / seconds;
    let workload = match (combined, limits, keys > 0) {
        (_, true, _) => "process_rate_limited",
        (_, false, true) if key_limit => "process_key_limited",
        (_, false, true) => "process_keyed",
        (true, false, false) => "process_combined",
        (false, false, false) => "process",
    };
    eprintln!("{workload}: {runs} runs, {workers} workers, batch {batch}: {seconds:.2}s, {rate:.0} runs/s, all {succeeded} verified succeeded");
    result(
        workload,
        &[
            ("runs", runs.to_string()),
            ("workers", workers.to_string()),
            ("batch", batch.to_string()),
            ("seconds", format!("{seconds:.2}")),
            ("per_second", format!("{rate:.0}")),
            ("verified", succeeded.to_string()),
        ],
    );
}

/// Fairness: a flooded key's `flood` runs are enqueued, then a small key's `small`, and
/// `workers` drain the queue in claims of `batch`. Prints when the small key's last run started
/// (seconds after the first start, and how many runs started before it) and the throughput.
/// `keys` 0 enqueues the same runs without keys (first in, first out), for comparison;
/// `limit` > 0 also puts key_concurrency on the queue (the flood runs at most that many at once).
fn fairness(flood: u64, small: u64, workers: u64, batch: u64, keys: bool, limit: u64) {
    let mut client = connect();
    reset(
        &mut client,
        &if limit > 0 {
            format!("select conveyor.set_queue('bench', key_concurrency => {limit});")
        } else {
            String::new()
        },
    );
    let key = |k: &str| if keys { format!(", keys => array_fill('{k}'::text, array[$1::int])") } else { String::new() };
    enqueue_backlog(&mut client, flood, &key("flood"));
    client
        .execute(
            &format!(
                "select count(*) from conveyor.enqueue_many('bench.noop', array(select jsonb_build_object('small', true)
                 from generate_series(1, $1::int)){})",
                key("small")
            ),
            &[&(small as i32)],
        )
        .unwrap();
    let (seconds, finished) = run_workers(workers, batch);
    assert_eq!(finished, flood + small);
    let row = client
        .query_one(
            "with a as (select a.started_at, r.payload ? 'small' as small
                        from conveyor.attempts a join conveyor.runs r on r.id = a.run_id),
                  last_small as (select max(started_at) as at from a where small)
             select extract(epoch from (select at from last_small) - (select min(started_at) from a))::float8,
                    (select count(*) from a where not small and started_at < (select at from last_small))",
            &[],
        )
        .unwrap();
    let (waited, before): (f64, i64) = (row.get(0), row.get(1));
    let rate = finished as f64 / seconds;
    let mode = if !keys {
        "fifo"
    } else if limit > 0 {
        "round_robin_limited"
    } else {
        "round_robin"
    };
    eprintln!(
        "fairness ({mode}): {small} runs of a small key behind {flood} of a flooded one, {workers} workers, batch {batch}: \
         the small key's last run started {waited:.3}s after the first start, after {before} flood runs; \
         {rate:.0} runs/s"
    );
    result(
        "fairness",
        &[
            ("mode", mode.to_string()),
            ("flood", flood.to_string()),
            ("small", small.to_string()),
            ("workers", workers.to_string()),
            ("batch", batch.to_string()),
            ("small_waited_s", format!("{waited:.3}")),
            ("flood_before", before.to_string()),
            ("per_second", format!("{rate:.0}")),
        ],
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn latency(samples: u64) {
    let mut client = connect();
    reset(&mut client, "");
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let ready = Arc::new(Barrier::new(2));
    let worker = {
        let (sent, lat, ready) = (sent.clone(), lat.clone(), ready.clone());
        thread::spawn(move || {
            let mut c = connect();
            c.batch_execute("listen \"conveyor.bench\"").unwrap();
            ready.wait();
            let mut got = 0;
            while got < samples {
                // a worker claims until the queue is empty, then waits for a wakeup (poll: 1s)
                let rows = c
                    .query("select run_id::text, lease_token from conveyor.claim_runs('bench', 'listener', 10)", &[])
                    .unwrap();
                let now = Instant::now();
                if rows.is_empty() {
                    let _ = c.notifications().timeout_iter(Duration::from_secs(1)).next();
                    continue;
                }
                for r in rows {
                    let (id, token): (String, uuid::Uuid) = (r.get(0), r.get(1));
                    let t0 = loop {
                        if let Some(t) = sent.lock().unwrap().remove(&id) {
                            break t;
                        }
                        thread::yield_now();
                    };
                    lat.lock().unwrap().push(now.duration_since(t0).as_secs_f64() * 1000.0);
                    c.execute("select conveyor.complete_run($1::text, $2)", &[&id, &token]).unwrap();
                    got += 1;
                }
            }
        })
    };
    ready.wait();
    let mut producer = connect();
    for _ in 0..samples {
        // the clock starts when the enqueue's commit returns to the producer
        let id: String = producer.query_one("select conveyor.enqueue('bench.noop')::text", &[]).unwrap().get(0);
        sent.lock().unwrap().insert(id, Instant::now());
        thread::sleep(Duration::from_millis(5));
    }
    worker.join().unwrap();
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
    eprintln!(
        "latency (enqueue commit -> claimed by a LISTENing worker): p50 {p50:.2} ms, p99 {p99:.2} ms over {samples}"
    );
    result(
        "latency",
        &[("samples", samples.to_string()), ("p50_ms", format!("{p50:.2}")), ("p99_ms", format!("{p99:.2}"))],
    );
}

fn claim_cost(waiting: u64, cycles: u64) {
    let mut client = connect();
    reset(&mut client, "");
    enqueue_backlog(&mut client, waiting, "");
    // each cycle takes one run off the backlog: never ask for more than there are
    let cycles = cycles.min(waiting);
    let start = Instant::now();
    for _ in 0..cycles {
        let row = client
            .query_one("select run_id::text, lease_token from conveyor.claim_runs('bench', 'one', 1)", &[])
            .unwrap();
        let (id, token): (String, uuid::Uuid) = (row.get(0), row.get(1));
        client.execute("select conveyor.complete_run($1::text, $2)", &[&id, &token]).unwrap();
    }
    let per = start.elapsed().as_secs_f64() * 1000.0 / cycles as f64;
    eprintln!("claim cost: {waiting} waiting: {per:.3} ms per claim+complete (mean of {cycles})");
    result("claim_cost", &[("waiting", waiting.to_string()), ("ms", format!("{per:.3}"))]);
}

/// What the monotonic counters (conveyor.counters) cost a run, on one connection: a batch-1
/// claim+complete cycle in full, then the counters' own share of it, the delta row its
/// completion inserts (the same statement, run inside one transaction so that no commit or round
/// trip is counted), and the tick step that folds the deltas.
fn counter_cost(cycles: u64) {
    let mut client = connect();
    reset(&mut client, "");
    enqueue_backlog(&mut client, cycles, "");
    let lsn = |c: &mut Client| -> i64 {
        c.query_one("select (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint", &[]).unwrap().get(0)
    };
    let (wal_start, start) = (lsn(&mut client), Instant::now());
    for _ in 0..cycles {
        client
            .execute(
                "select conveyor.complete_run(c.run_id, c.lease_token) from conveyor.claim_runs('bench', 'one', 1) c",
                &[],
            )
            .unwrap();
    }
    let cycle_us = start.elapsed().as_secs_f64() * 1e6 / cycles as f64;
    let cycle_wal = (lsn(&mut client) - wal_start) as f64 / cycles as f64;
    let deltas: i64 = client.query_one("select count(*) from conveyor._counter_deltas", &[]).unwrap().get(0);

    // the delta insert alone, as _end_attempts runs it (one ended run of one task), n times in
    // one transaction, rolled back
    client.batch_execute("begin").unwrap();
    let wal_start = lsn(&mut client);
    let start = Instant::now();
    client
        .batch_execute(&format!(
            "do $$ begin for i in 1..{cycles} loop
                 insert into conveyor._counter_deltas (queue, task, counter, n)
                 select u.queue, u.task, 'attempt.succeeded', count(*)
                 from (values ('bench', 'bench.noop')) as u(queue, task)
                 group by u.queue, u.task;
             end loop; end $$"
        ))
        .unwrap();
    let delta_us = start.elapsed().as_secs_f64() * 1e6 / cycles as f64;
    let delta_wal = (lsn(&mut client) - wal_start) as f64 / cycles as f64;
    client.batch_execute("rollback").unwrap();

    let start = Instant::now();
    let folded: i64 = client.query_one("select conveyor.tick_step('count')", &[]).unwrap().get(0);
    let fold_us = start.elapsed().as_secs_f64() * 1e6 / folded.max(1) as f64;
    assert_eq!(folded, deltas, "the fold took every delta");
    let share = 100.0 * delta_us / cycle_us;
    eprintln!(
        "counter cost: a claim+complete cycle {cycle_us:.0} us and {cycle_wal:.0} WAL bytes; its delta row {delta_us:.1} us \
         ({share:.1}%) and {delta_wal:.0} WAL bytes; folding {fold_us:.2} us per delta ({folded} deltas)"
    );
    result(
        "counter_cost",
        &[
            ("cycle_us", format!("{cycle_us:.0}")),
            ("cycle_wal_bytes", format!("{cycle_wal:.0}")),
            ("delta_us", format!("{delta_us:.1}")),
            ("delta_share_pct", format!("{share:.1}")),
            ("delta_wal_bytes", format!("{delta_wal:.0}")),
            ("fold_us_per_delta", format!("{fold_us:.2}")),
        ],
    );
}

fn tick_cost(scheduled: u64, due: u64) {
    let mut client = connect();
    reset(&mut client, "");
    client.batch_execute("set conveyor.tick_batch = 100000").unwrap();
    enqueue_backlog(&mut client, scheduled, ", delay => '30d'");
    let mut samples = Vec::new();
    for _ in 0..5 {
        client
            .execute(
                "select count(*) from conveyor.enqueue_many('bench.noop', array(select '{}'::jsonb from generate_series(1, $1::int)), delay => '1s')",
                &[&(due as i32)],
            )
            .unwrap();
        client.batch_execute("select pg_sleep(1.1)").unwrap();
        let start = Instant::now();
        let delivered: i32 = client.query_one("select delivered from conveyor.tick()", &[]).unwrap().get(0);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(delivered as u64, due, "tick delivered the due runs");
        client
            .batch_execute(
                "select count(*) from conveyor.cancel_runs(queue => 'bench', status => 'queued', max => 100000)",
            )
            .unwrap();
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ms = percentile(&samples, 0.5);
    eprintln!("tick cost: {scheduled} scheduled, {due} due: {ms:.1} ms per tick (median of 5)");
    result("tick_cost", &[("scheduled", scheduled.to_string()), ("due", due.to_string()), ("ms", format!("{ms:.1}"))]);
}

fn growth(runs: u64, workers: u64, batch: u64) {
    let mut client = connect();
    reset(&mut client, "select conveyor.set_defaults('{\"retention\": \"10s\"}');");
    let size = |c: &mut Client| -> (i64, i64) {
        let r = c.query_one("select pg_table_size('conveyor.runs'), pg_indexes_size('conveyor.runs')", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    // a producer keeps ~20k runs ahead of the workers; the background worker ticks and prunes
    let producer = {
        let (stop, produced) = (stop.clone(), produced.clone());
        thread::spawn(move || {
            let mut c = connect();
            while produced.load(Ordering::Relaxed) < runs && !stop.load(Ordering::Relaxed) {
                let backlog: i64 =
                    c.query_one("select count(*) from conveyor.runs where status = 'queued'", &[]).unwrap().get(0);
                if backlog < 20_000 {
                    c.execute("select count(*) from conveyor.enqueue_many('bench.noop', array(select '{}'::jsonb from generate_series(1, 5000)))", &[])
                        .unwrap();
                    produced.fetch_add(5000, Ordering::Relaxed);
                } else {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let (stop, produced) = (stop.clone(), produced.clone());
            thread::spawn(move || {
                let mut c = connect();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += work_until_empty(&mut c, batch, &format!("growth-{i}"));
                    if produced.load(Ordering::Relaxed) >= runs {
                        break;
                    }
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    let mut samples = Vec::new();
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_secs(5));
        let (t, i) = size(&mut client);
        let done = produced.load(Ordering::Relaxed);
        samples.push((done, t + i));
        eprintln!(
            "  {:>5.0}s: ~{done} runs enqueued, runs table {} MB + indexes {} MB",
            start.elapsed().as_secs_f64(),
            t >> 20,
            i >> 20
        );
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let finished: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let (t, i) = size(&mut client);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(t + i);
    let half: Vec<i64> = samples.iter().skip(samples.len() / 2).map(|s| s.1).collect();
    let late_max = half.iter().copied().max().unwrap_or(max);
    let first_half_max = samples.iter().take(samples.len() / 2).map(|s| s.1).max().unwrap_or(max);
    eprintln!(
        "growth: first half peak {} MB, second half peak {} MB (bounded if the second is not above the first)",
        first_half_max >> 20,
        late_max >> 20
    );
    eprintln!(
        "growth: {finished} runs processed; runs table + indexes peaked at {} MB, {} MB at the end",
        max >> 20,
        (t + i) >> 20
    );
    result(
        "growth",
        &[
            ("runs", finished.to_string()),
            ("peak_mb", (max >> 20).to_string()),
            ("first_half_peak_mb", (first_half_max >> 20).to_string()),
            ("second_half_peak_mb", (late_max >> 20).to_string()),
            ("end_table_mb", (t >> 20).to_string()),
            ("end_index_mb", (i >> 20).to_string()),
        ],
    );
}

fn size_after(runs: u64, workers: u64, batch: u64) {
    // runs kept (default retention 7 days): the size of 1M finished runs, and their dead space
    let mut client = connect();
    reset(&mut client, "");
    enqueue_backlog(&mut client, runs, "");
    let (seconds, _) = run_workers(workers, batch);
    thread::sleep(Duration::from_secs(5)); // let autovacuum catch up
    let r = client
        .query_one(
            "select pg_table_size('conveyor.runs'), pg_indexes_size('conveyor.runs'), n_live_tup, n_dead_tup,
                    pg_total_relation_size('conveyor.events'), pg_total_relation_size('conveyor.attempts')
             from pg_stat_user_tables where relid = 'conveyor.runs'::regclass",
            &[],
        )
        .unwrap();
    let (table, index, live, dead, events, attempts): (i64, i64, i64, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    eprintln!(
        "size: {runs} runs processed in {seconds:.1}s; runs table {} MB, indexes {} MB, live {live}, dead {dead}; events {} MB, attempts {} MB",
        table >> 20,
        index >> 20,
        events >> 20,
        attempts >> 20
    );
    result(
        "size",
        &[
            ("runs", runs.to_string()),
            ("table_mb", (table >> 20).to_string()),
            ("index_mb", (index >> 20).to_string()),
            ("live", live.to_string()),
            ("dead", dead.to_string()),
            ("events_mb", (events >> 20).to_string()),
            ("attempts_mb", (attempts >> 20).to_string()),
        ],
    );
}

fn epoch_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn sustained(rate: u64, seconds: u64, hold: bool) {
    let mut client = connect();
    reset(&mut client, "");
    let stop = Arc::new(AtomicBool::new(false));
    // the held snapshot: taken before the load starts, released after the figures are read
    let mut holder = connect();
    if hold {
        holder.batch_execute("begin isolation level repeatable read; select count(*) from conveyor.runs").unwrap();
    }
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut c = connect();
                let per_second = rate as f64 / 4.0;
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let due = start + Duration::from_secs_f64(n as f64 / per_second);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    c.execute(
                        "select conveyor.enqueue('bench.noop', jsonb_build_object('t', $1::bigint))",
                        &[&epoch_micros()],
                    )
                    .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, latencies, done) = (stop.clone(), latencies.clone(), done.clone());
            thread::spawn(move || {
                let mut c = connect();
                let cycle = c
                    .prepare(
                        "select kind, run_id::text, lease_token, (payload ->> 't')::bigint
                         from conveyor.finish_and_claim($1, 'bench', $2, 10)",
                    )
                    .unwrap();
                let name = format!("sustained-{i}");
                let mut in_hand: Option<serde_json::Value> = None;
                let mut mine = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let rows = c.query(&cycle, &[&in_hand, &name]).unwrap();
                    let now = epoch_micros();
                    let mut items = Vec::new();
                    for r in &rows {
                        if r.get::<_, &str>(0) == "finished" {
                            done.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if let Some(t) = r.get::<_, Option<i64>>(3) {
                            mine.push((now - t) as f64 / 1000.0);
                        }
                        items.push(success_item(r.get(1), r.get(2)));
                    }
                    in_hand = (!items.is_empty()).then_some(serde_json::Value::Array(items));
                    if in_hand.is_none() {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::SeqCst);
    let offered: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    for w in workers {
        w.join().unwrap();
    }
    let processed = done.load(Ordering::Relaxed);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // statistics are flushed about once a second
    thread::sleep(Duration::from_millis(1500));
    let dead: Vec<(String, i64, i64)> = client
        .query(
            "select relname::text, n_dead_tup, pg_total_relation_size(relid) / 1024 / 1024
               from pg_stat_user_tables where schemaname = 'conveyor' and relname in ('runs', 'attempts', 'events')
              order by relname",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if hold {
        holder.batch_execute("commit").unwrap();
    }
    let per_second = processed as f64 / seconds as f64;
    let (p50, p99) = if lat.is_empty() { (0.0, 0.0) } else { (percentile(&lat, 0.5), percentile(&lat, 0.99)) };
    let dead_of = |name: &str| dead.iter().find(|d| d.0 == name).map_or(0, |d| d.1);
    let mb_of = |name: &str| dead.iter().find(|d| d.0 == name).map_or(0, |d| d.2);
    eprintln!(
        "sustained ({}): offered {rate} runs/s for {seconds}s ({offered} enqueued), processed {per_second:.0} runs/s, \
         enqueue -> start p50 {p50:.1} ms, p99 {p99:.1} ms; dead tuples runs {} attempts {} events {}; runs table {} MB",
        if hold { "a REPEATABLE READ snapshot held" } else { "no snapshot held" },
        dead_of("runs"),
        dead_of("attempts"),
        dead_of("events"),
        mb_of("runs")
    );
    result(
        "sustained",
        &[
            ("hold", (hold as u8).to_string()),
            ("rate", rate.to_string()),
            ("seconds", seconds.to_string()),
            ("per_second", format!("{per_second:.0}")),
            ("p50_ms", format!("{p50:.1}")),
            ("p99_ms", format!("{p99:.1}")),
            ("dead_runs", dead_of("runs").to_string()),
            ("dead_events", dead_of("events").to_string()),
            ("runs_mb", mb_of("runs").to_string()),
        ],
    );
}

/// CPU seconds a server has used so far: its postmaster's own and its reaped children's
/// (backends that exited), plus the live children's (/proc, Linux; clock ticks of 10 ms).
fn server_cpu_seconds(c: &mut Client) -> f64 {
    let data: String = c.query_one("select setting from pg_settings where name = 'data_directory'", &[]).unwrap().get(0);
    let pid_file = std::fs::read_to_string(format!("{data}/postmaster.pid")).expect("read postmaster.pid");
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    // fields after the command (which may hold spaces): state ppid ... utime(14) stime cutime cstime
    let fields = |stat: &str| -> Vec<String> {
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    };
    let ticks = |f: &[String], from: usize, n: usize| -> f64 { f[from..from + n].iter().map(|v| v.parse::<f64>().unwrap()).sum() };
    let own = fields(&std::fs::read_to_string(format!("/proc/{postmaster}/stat")).unwrap());
    let mut total = ticks(&own, 11, 4); // utime stime cutime cstime (fields 14-17, 0-based 11 after the command)
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            let f = fields(&stat);
            if f.len() > 14 && f[1] == postmaster.to_string() {
                total += ticks(&f, 11, 2);
            }
        }
    }
    total / 100.0
}

/// The routed workload (see the top of this file). The backlog is enqueued on each shard
/// directly (the same split a router's random placement gives), then drained through the
/// router or, with `direct`, on the only shard.
fn routed(runs: u64, workers: u64, batch: u64, direct: bool) {
    let shards: Vec<String> = std::env::var("CONVEYOR_BENCH_SHARDS")
        .expect("CONVEYOR_BENCH_SHARDS: the shards' connect strings, separated by ;")
        .split(';')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let router = std::env::var("CONVEYOR_BENCH_ROUTER").ok();
    assert!(!direct || shards.len() == 1, "--direct 1 works on one shard");
    let target = if direct { shards[0].clone() } else { router.clone().expect("CONVEYOR_BENCH_ROUTER: the router's connect string") };
    let mut per_shard = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let mut c = connect_to(shard);
        reset(&mut c, "");
        let n = runs / shards.len() as u64 + u64::from((i as u64) < runs % shards.len() as u64);
        enqueue_backlog(&mut c, n, "");
        per_shard.push(c);
    }
    let mut router_client = (!direct).then(|| connect_to(&target));
    let shard_cpu = |cs: &mut Vec<Client>| -> f64 { cs.iter_mut().map(server_cpu_seconds).sum() };
    let cpu0 = (shard_cpu(&mut per_shard), router_client.as_mut().map(server_cpu_seconds).unwrap_or(0.0));
    TARGET.set(target).unwrap();
    let (seconds, finished) = run_workers(workers, batch);
    // the workers' backends have exited (and been reaped): their CPU is in the postmasters' now
    thread::sleep(Duration::from_millis(300));
    let cpu1 = (shard_cpu(&mut per_shard), router_client.as_mut().map(server_cpu_seconds).unwrap_or(0.0));
    let succeeded: i64 = per_shard
        .iter_mut()
        .map(|c| c.query_one("select count(*) from conveyor.runs where status = 'succeeded'", &[]).unwrap().get::<_, i64>(0))
        .sum();
    assert_eq!((succeeded as u64, finished), (runs, runs), "every run succeeded once");
    let rate = runs as f64 / seconds;
    let us = |cpu: f64| format!("{:.0}", cpu * 1e6 / runs as f64);
    let via = if direct { "direct" } else { "router" };
    eprintln!(
        "routed: {runs} runs on {} shard(s), {workers} workers via {via}, batch {batch}: {seconds:.2}s, {rate:.0} runs/s; CPU per run: shards {} us, router {} us",
        shards.len(),
        us(cpu1.0 - cpu0.0),
        us(cpu1.1 - cpu0.1)
    );
    result(
        "routed",
        &[
            ("via", via.to_string()),
            ("shards", shards.len().to_string()),
            ("runs", runs.to_string()),
            ("workers", workers.to_string()),
            ("batch", batch.to_string()),
            ("seconds", format!("{seconds:.2}")),
            ("per_second", format!("{rate:.0}")),
            ("shard_cpu_us_per_run", us(cpu1.0 - cpu0.0)),
            ("router_cpu_us_per_run", us(cpu1.1 - cpu0.1)),
            ("verified", succeeded.to_string()),
        ],
    );
}

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    // (the workload's own setup, a reset of the extension and the backlog, counts too: a workload
    // that reports runs divides by them; the report says which figures are per run)
    if workload != "routed" {
        let _ = BEGAN.set(wal_and_commits(&mut connect()));
    }
    match workload.as_str() {
        "enqueue-single" => enqueue_single(arg("clients", 8), arg("seconds", 10)),
        "enqueue-batch" => enqueue_batch(arg("clients", 8), arg("batch", 50), arg("seconds", 10)),
        "process" => process(
            arg("runs", 100_000),
            arg("workers", 8),
            arg("batch", 50),
            arg("combined", 0) == 1,
            arg("limits", 0) == 1,
            arg("keys", 0),
            arg("key-limit", 1) == 1,
        ),
        "process-mix" => process_mix(arg("runs", 100_000), arg("workers", 8), arg("batch", 50)),
        "fairness" => fairness(
            arg("flood", 10_000),
            arg("small", 10),
            arg("workers", 8),
            arg("batch", 10),
            arg("keys", 1) == 1,
            arg("limit", 0),
        ),
        "latency" => latency(arg("samples", 500)),
        "claim-cost" => claim_cost(arg("waiting", 10_000), arg("cycles", 2000)),
        "tick-cost" => tick_cost(arg("scheduled", 1_000_000), arg("due", 1000)),
        "counter-cost" => counter_cost(arg("cycles", 5000)),
        "growth" => growth(arg("runs", 3_000_000), arg("workers", 8), arg("batch", 50)),
        "size" => size_after(arg("runs", 1_000_000), arg("workers", 8), arg("batch", 50)),
        "sustained" => sustained(arg("rate", 2000), arg("seconds", 300), arg("hold", 0) == 1),
        "routed" => routed(arg("runs", 100_000), arg("workers", 8), arg("batch", 50), arg("direct", 0) == 1),
        other => {
            eprintln!("unknown workload {other:?}: enqueue-single, enqueue-batch, process, process-mix, fairness, latency, claim-cost, tick-cost, counter-cost, growth, size, sustained, routed");
            std::process::exit(2);
        }
    }
}
