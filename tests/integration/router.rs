//! Scale-out through pg_conveyor_router (docs/scale-out.md): two shard clusters and a router
//! cluster on this machine, PL/Proxy between them. The core lifecycle runs through the router;
//! workers claiming from a queue with runs on both shards get each run exactly once; an enqueue
//! on a shard is part of the app's transaction there; one shard stopped and restarted under
//! load loses no run (every producer retries with an idempotency key until acknowledged); and a
//! partition moves to a new server through a promoted standby under load.

use crate::common::{reconnected, wait_for, Cluster, Pooler};
use postgres::Client;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Two shards (partitions 0 and 1, one database `app` each, ticked by their own background
/// worker) and a router database in front of them.
struct Sharded {
    shards: Vec<Cluster>,
    router: Cluster,
    /// PgBouncers the router reaches shards through (Sharded::start_pooled)
    _poolers: Vec<Pooler>,
}

impl Sharded {
    fn start(name: &str) -> Sharded {
        Sharded::start_pooled(name, 0)
    }

    /// With `query_timeout` > 0, the router reaches each shard through a PgBouncer whose
    /// query_timeout is that many seconds (docs/scale-out.md: a shard that hangs).
    fn start_pooled(name: &str, query_timeout: u32) -> Sharded {
        let shards: Vec<Cluster> = (0..2)
            .map(|p| {
                let partition = format!("conveyor.partition = {p}");
                let shard = Cluster::start(
                    &format!("{name}-shard{p}"),
                    &["conveyor.database = 'app'", "conveyor.tick_interval = '100ms'", &partition],
                );
                shard.connect("postgres").batch_execute("create database app").unwrap();
                shard.connect("app").batch_execute("create extension pg_conveyor").unwrap();
                shard
            })
            .collect();
        let poolers: Vec<Pooler> = if query_timeout > 0 {
            shards
                .iter()
                .enumerate()
                .map(|(p, s)| {
                    Pooler::start_for(&format!("{name}-pool{p}"), &s.dir, &s.port.to_string(), 4, query_timeout)
                })
                .collect()
        } else {
            Vec::new()
        };
        let router = Cluster::start(&format!("{name}-router"), &[]);
        router.connect("postgres").batch_execute("create database router").unwrap();
        let mut r = router.connect("router");
        r.batch_execute("create extension pg_conveyor_router cascade").unwrap();
        for (p, shard) in shards.iter().enumerate() {
            let connstr = match poolers.get(p) {
                Some(b) => where_is(&b.dir, b.port, "app"),
                None => where_is(&shard.dir, shard.port, "app"),
            };
            r.execute("select conveyor.add_shard($1, $2)", &[&(p as i32), &connstr]).unwrap();
        }
        Sharded { shards, router, _poolers: poolers }
    }

    fn router(&self) -> Client {
        self.router.connect("router")
    }

    /// The router database as `user`.
    fn router_as(&self, user: &str) -> Client {
        let config = format!("host={} port={} user={user} dbname=router", self.router.dir, self.router.port);
        Client::connect(&config, postgres::NoTls).unwrap_or_else(|e| panic!("connect to the router as {user}: {e}"))
    }

    /// Where shard `p` is, as the router lists it (no user: router roles connect as themselves).
    fn shard_connstr(&self, p: usize) -> String {
        where_is(&self.shards[p].dir, self.shards[p].port, "app")
    }

    fn shard(&self, p: usize) -> Client {
        self.shards[p].connect("app")
    }

    /// Runs on each shard by status, read on the shards themselves.
    fn counts(&self, task: &str) -> HashMap<(usize, String), i64> {
        let mut out = HashMap::new();
        for p in 0..self.shards.len() {
            for row in self
                .shard(p)
                .query("select status::text, count(*) from conveyor.runs where task = $1 group by 1", &[&task])
                .unwrap()
            {
                out.insert((p, row.get::<_, String>(0)), row.get::<_, i64>(1));
            }
        }
        out
    }
}

/// rt_mapped on the router (its user mapping was made by the owner).
fn mapped_before(cluster: &Sharded) -> Client {
    cluster.router_as("rt_mapped")
}

/// A shard's connect string for conveyor.add_shard: where it is (the server, its database
/// `db`), not who connects.
fn where_is(dir: &str, port: u16, db: &str) -> String {
    format!("host={dir} port={port} dbname={db}")
}

fn code(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[test]
fn the_lifecycle_runs_through_the_router() {
    let cluster = Sharded::start("rt-life");
    let mut r = cluster.router();
    r.query_one(
        "select conveyor.apply_config('{\"queues\": {\"work\": {}}, \"tasks\": {\"job\": {\"queue\": \"work\", \"max_attempts\": 2, \"delay\": \"0s\"}}}')",
        &[],
    )
    .unwrap();
    // the configuration reached both shards
    for p in 0..2 {
        let n: i64 =
            cluster.shard(p).query_one("select count(*) from conveyor.tasks where name = 'job'", &[]).unwrap().get(0);
        assert_eq!(n, 1, "task defined on shard {p}");
    }

    // enqueues routed by concurrency key land on both shards, each id naming its shard
    let mut ids = Vec::new();
    for k in 0..20 {
        let row = r
            .query_one(
                "select id::text, conveyor.ulid_partition(id) from conveyor.enqueue('job', '{}', key => $1) id",
                &[&format!("tenant-{k}")],
            )
            .unwrap();
        ids.push((row.get::<_, String>(0), row.get::<_, i32>(1)));
    }
    let parts: HashSet<i32> = ids.iter().map(|(_, p)| *p).collect();
    assert_eq!(parts, HashSet::from([0, 1]), "keys spread over both shards");
    for (id, p) in &ids {
        let n: i64 = cluster
            .shard(*p as usize)
            .query_one("select count(*) from conveyor.runs where id = $1::text::conveyor.ulid", &[id])
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "run {id} is on the shard its id names ({p})");
    }
    // the same key goes to the same shard (key limits hold exactly)
    let again: i32 = r
        .query_one("select conveyor.ulid_partition(conveyor.enqueue('job', '{}', key => 'tenant-0'))", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, ids[0].1);

    // a claim gathers from both shards; finishing calls go to each run's shard
    let claimed = r
        .query("select run_id::text, lease_token, conveyor.ulid_partition(run_id) from conveyor.claim_runs('work', 'rt', 50)", &[])
        .unwrap();
    assert_eq!(claimed.len(), 21, "every queued run, from both shards");
    let token = |i: usize| -> (String, uuid::Uuid) { (claimed[i].get(0), claimed[i].get(1)) };
    let (a, ta) = token(0);
    let (b, tb) = token(1);
    let (c, tc) = token(2);
    let (d, td) = token(3);
    assert!(r.query_one("select conveyor.heartbeat($1::text, $2, '1m')", &[&a, &ta]).is_ok());
    let s: String =
        r.query_one("select conveyor.complete_run($1::text, $2, '{\"ok\": 1}')::text", &[&a, &ta]).unwrap().get(0);
    assert_eq!(s, "succeeded");
    let s: String = r.query_one("select conveyor.fail_run($1::text, $2, 'boom')::text", &[&b, &tb]).unwrap().get(0);
    assert_eq!(s, "retrying");
    let s: String =
        r.query_one("select conveyor.release_run($1::text, $2, '1h', 'waiting')::text", &[&c, &tc]).unwrap().get(0);
    assert_eq!(s, "released");
    let s: String = r.query_one("select conveyor.cancel_run($1::text)", &[&d]).unwrap().get(0);
    assert_eq!(s, "cancel_requested");
    // a run asked to stop that ends other than in success ends cancelled
    let s: String = r.query_one("select conveyor.fail_run($1::text, $2, 'stopped')::text", &[&d, &td]).unwrap().get(0);
    assert_eq!(s, "cancelled");
    let s: String = r.query_one("select conveyor.retry_run($1::text)::text", &[&d]).unwrap().get(0);
    assert_eq!(s, "queued");

    // the shards' errors keep their SQLSTATE through the router
    let e = r.query_one("select conveyor.complete_run($1::text, $2)", &[&a, &ta]).unwrap_err();
    assert_eq!(code(&e), "CV001", "stale lease: {e}");
    let e = r.query_one("select conveyor.cancel_run('01ARZ3NDEKTSV4RRFFQ69G5FAV')", &[]).unwrap_err();
    assert_eq!(code(&e), "CV002", "unknown run (its id names a partition the cluster lacks): {e}");
    let e = r.query_one("select conveyor.enqueue('nope')", &[]).unwrap_err();
    assert_eq!(code(&e), "CV003", "unknown task: {e}");
    let e = r.query("select * from conveyor.claim_runs('work', 'rt', 1, bind_session => true)", &[]).unwrap_err();
    assert_eq!(code(&e), "22023", "bind_session refused: {e}");

    // the rest finish in one finish_runs call spanning both shards, answered in the items' order
    let items: Vec<serde_json::Value> = (4..claimed.len())
        .map(|i| {
            let (id, t) = token(i);
            serde_json::json!({"run_id": id, "lease_token": t.to_string(), "outcome": "succeeded"})
        })
        .collect();
    let rows = r
        .query(
            "select run_id::text, status::text from conveyor.finish_runs($1::text::jsonb)",
            &[&serde_json::Value::Array(items.clone()).to_string()],
        )
        .unwrap();
    let got: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let want: Vec<String> = items.iter().map(|i| i["run_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, want);
    let statuses: Vec<Option<String>> = rows.iter().map(|row| row.get(1)).collect();
    assert!(statuses.iter().all(|s| s.as_deref() == Some("succeeded")), "{statuses:?}");

    // the same stale item twice: one row per item, as a shard answers (status null: stale)
    let twice = serde_json::Value::Array(vec![items[0].clone(), items[0].clone()]).to_string();
    let rows =
        r.query("select run_id::text, status::text from conveyor.finish_runs($1::text::jsonb)", &[&twice]).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|row| row.get::<_, Option<String>>(1).is_none()));

    // claims start at a random shard: each leads about as often
    let leads: i64 = r
        .query_one(
            "select count(*) filter (where (conveyor._claim_order(array['work']))[1] = 1) from generate_series(1, 400)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!((120..=280).contains(&leads), "shard 1 led {leads} of 400 claims");

    // views and metrics gather both shards' rows, each with its partition
    let rows = r
        .query("select partition, succeeded from conveyor.queue_stats where queue = 'work' order by partition", &[])
        .unwrap();
    let per_shard: Vec<(i32, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(per_shard.len(), 2);
    assert_eq!(per_shard.iter().map(|(_, n)| n).sum::<i64>(), 18);
    let metrics: String = r.query_one("select conveyor.metrics()", &[]).unwrap().get(0);
    assert_eq!(metrics.matches("# TYPE conveyor_runs gauge").count(), 1, "one family header");
    assert!(metrics.contains("conveyor_runs{partition=\"0\",queue=\"work\",status=\"succeeded\"}"), "{metrics}");
    assert!(metrics.contains("conveyor_runs{partition=\"1\",queue=\"work\",status=\"succeeded\"}"), "{metrics}");
    assert!(metrics.contains("conveyor_router_shard_up{partition=\"1\"} 1"), "{metrics}");

    // a shard listed under a number that is not its conveyor.partition is refused, the old
    // definition stays
    let e = r.query_one("select conveyor.add_shard(1, $1)", &[&cluster.shard_connstr(0)]).unwrap_err();
    assert_eq!(code(&e), "CV012", "{e}");
    let up: i64 = r.query_one("select count(*) from conveyor.cluster_status() where up", &[]).unwrap().get(0);
    assert_eq!(up, 2);
    // a stray third shard is listed, not applied: routing keeps to the cluster in force
    let n: i32 = r.query_one("select conveyor.add_shard(2, $1)", &[&cluster.shard_connstr(0)]).unwrap().get(0);
    assert_eq!(n, 0);
    let shards: i64 = r.query_one("select count(*) from conveyor.cluster_status()", &[]).unwrap().get(0);
    assert_eq!(shards, 2, "gathering calls visit each applied shard once");
    let waiting: i64 = r.query_one("select conveyor.pending('work')", &[]).unwrap().get(0);
    let on_shards: i64 = (0..2)
        .map(|p| cluster.shard(p).query_one("select conveyor.pending('work')", &[]).unwrap().get::<_, i64>(0))
        .sum();
    assert_eq!(waiting, on_shards, "pending counts each shard once");
    let p: i32 = r
        .query_one("select conveyor.ulid_partition(conveyor.enqueue('job', '{}', key => 'tenant-0'))", &[])
        .unwrap()
        .get(0);
    assert_eq!(p, ids[0].1, "the key still maps to its shard");

    // enqueue_many sends each run where a single enqueue of it goes: by its key, split over
    // both shards (one transaction per shard: every run needs an idempotency key), answered in
    // the payloads' order; the same batch again returns the same runs
    let keys: Vec<String> = (0..20).map(|k| format!("tenant-{k}")).collect();
    let idem: Vec<String> = (0..20).map(|k| format!("batch-{k}")).collect();
    let batch = "select id::text, conveyor.ulid_partition(id)
                 from conveyor.enqueue_many('job', array_fill('{}'::jsonb, array[20]), keys => $1, idempotency_keys => $2) id";
    let rows = r.query(batch, &[&keys, &idem]).unwrap();
    let got: Vec<i32> = rows.iter().map(|row| row.get(1)).collect();
    let want: Vec<i32> = ids.iter().map(|(_, p)| *p).collect();
    assert_eq!(got, want, "each run on its key's shard, in the payloads' order");
    let again: Vec<String> = r.query(batch, &[&keys, &idem]).unwrap().iter().map(|row| row.get(0)).collect();
    let first: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(again, first, "the same batch again returns the same runs");
    let e = r
        .query("select conveyor.enqueue_many('job', array_fill('{}'::jsonb, array[20]), keys => $1)", &[&keys])
        .unwrap_err();
    assert_eq!(code(&e), "22023", "a batch split over shards without idempotency keys: {e}");
    // keys of one shard need none: one transaction there
    let one_shard: Vec<String> =
        ids.iter().enumerate().filter(|(_, (_, p))| *p == 0).map(|(k, _)| keys[k].clone()).collect();
    let n = one_shard.len() as i32;
    let parts: Vec<i32> = r
        .query(
            "select conveyor.ulid_partition(id) from conveyor.enqueue_many('job', array_fill('{}'::jsonb, array[$2::int]), keys => $1) id",
            &[&one_shard, &n],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(parts, vec![0; one_shard.len()]);
}

#[test]
fn schedules_and_services_fire_on_their_home_shard_only() {
    let cluster = Sharded::start("rt-cron");
    let mut r = cluster.router();
    r.execute("select conveyor.place_queue('reports', 1)", &[]).unwrap();
    r.query_one(
        r#"select conveyor.apply_config('{"queues": {"reports": {}},
             "tasks": {"report": {"queue": "reports", "schedule": "0 3 1 1 *", "on_overlap": "skip"},
                       "digest": {"schedule": "30 3 1 1 *"}},
             "services": {"watch": {}}}')"#,
        &[],
    )
    .unwrap();
    // every shard knows every task; the schedule and the service live on the home shard only
    // (the shard its queue is placed on, else shard 0)
    let defined = |p: usize| -> Vec<(String, bool)> {
        cluster
            .shard(p)
            .query("select name, schedule is not null from conveyor.tasks order by name", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    };
    let s = |n: &str, sched: bool| (n.to_string(), sched);
    assert_eq!(defined(0), vec![s("digest", true), s("report", false), s("watch", false)]);
    assert_eq!(defined(1), vec![s("digest", false), s("report", true)]);

    // (yearly schedules: the shards' own workers, ticking in real time, never fire one while
    // the test runs) a year and a day on, a tick on each shard fires each schedule once in the
    // cluster
    let mut fired = HashMap::new();
    for p in 0..2 {
        let mut c = cluster.shard(p);
        let later: String = c.query_one("select (now() + interval '1 year 1 day')::text", &[]).unwrap().get(0);
        c.batch_execute(&format!("set conveyor.test_clock = '{later}'; select conveyor.tick();")).unwrap();
        for row in c
            .query("select task, count(*) from conveyor.runs where task in ('report', 'digest') group by task", &[])
            .unwrap()
        {
            fired.insert((p, row.get::<_, String>(0)), row.get::<_, i64>(1));
        }
    }
    assert!(
        fired.contains_key(&(1, "report".to_string())) && fired.contains_key(&(0, "digest".to_string())),
        "{fired:?}"
    );
    assert_eq!(fired.len(), 2, "no schedule fired away from its home shard: {fired:?}");
    // once each, as on one server (after downtime only the latest missed firing runs)
    assert_eq!(fired[&(1, "report".to_string())], 1, "report fired once in the cluster: {fired:?}");
    assert_eq!(fired[&(0, "digest".to_string())], 1, "digest fired once in the cluster: {fired:?}");
    // the service's replica runs on shard 0 (its worker ticks it), none on shard 1
    wait_for(10.0, "the service's replica on shard 0", || {
        let n: i64 =
            cluster.shard(0).query_one("select count(*) from conveyor.runs where task = 'watch'", &[]).unwrap().get(0);
        (n > 0).then_some(())
    });
    let n: i64 =
        cluster.shard(1).query_one("select count(*) from conveyor.runs where task = 'watch'", &[]).unwrap().get(0);
    assert_eq!(n, 0);

    // a bad configuration is refused with the shards' CV010 and applied nowhere, even where the
    // problem is in a part only another shard would get
    let e = r
        .query_one(r#"select conveyor.apply_config('{"tasks": {"fresh": {}, "report": {"queue": "reports", "schedule": "61 * * * *"}}}')"#, &[])
        .unwrap_err();
    assert_eq!(code(&e), "CV010", "{e}");
    for p in 0..2 {
        let n: i64 =
            cluster.shard(p).query_one("select count(*) from conveyor.tasks where name = 'fresh'", &[]).unwrap().get(0);
        assert_eq!(n, 0, "nothing applied on shard {p}");
    }
}

#[test]
fn a_run_on_either_shard_is_claimed_exactly_once() {
    let cluster = Sharded::start("rt-once");
    let mut r = cluster.router();
    r.query_one(
        "select conveyor.apply_config('{\"queues\": {\"once\": {}}, \"tasks\": {\"once\": {\"queue\": \"once\", \"delay\": \"0s\"}}}')",
        &[],
    )
    .unwrap();
    const RUNS: usize = 400;
    // half enqueued through the router (spread by key), half on the shards directly
    for n in 0..RUNS / 2 {
        r.query_one(
            "select conveyor.enqueue('once', jsonb_build_object('n', $1::int), key => $2)",
            &[&(n as i32), &format!("k{n}")],
        )
        .unwrap();
    }
    for p in 0..2 {
        cluster
            .shard(p)
            .query_one(
                "select count(*) from conveyor.enqueue_many('once', array(select jsonb_build_object('n', g) from generate_series(1, $1) g))",
                &[&((RUNS / 4) as i32)],
            )
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let config = cluster.router.config("router");
            let seen = seen.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&config, postgres::NoTls).unwrap();
                let mut empty = 0;
                while empty < 20 {
                    let rows = c
                        .query(
                            "select run_id::text, lease_token from conveyor.claim_runs('once', $1, 7, '1m')",
                            &[&format!("w{w}")],
                        )
                        .unwrap();
                    if rows.is_empty() {
                        empty += 1;
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    empty = 0;
                    let items: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|row| {
                            let (id, t): (String, uuid::Uuid) = (row.get(0), row.get(1));
                            serde_json::json!({"run_id": id, "lease_token": t.to_string(), "outcome": "succeeded"})
                        })
                        .collect();
                    c.query(
                        "select * from conveyor.finish_runs($1::text::jsonb)",
                        &[&serde_json::Value::Array(items).to_string()],
                    )
                    .unwrap();
                    seen.lock().unwrap().extend(rows.iter().map(|row| row.get::<_, String>(0)));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), RUNS, "claims handed out {} runs for {RUNS}", seen.len());
    assert_eq!(unique.len(), RUNS, "a run was handed out twice");
    let counts = cluster.counts("once");
    let succeeded: i64 = counts.iter().filter(|((_, s), _)| s == "succeeded").map(|(_, n)| n).sum();
    assert_eq!(succeeded, RUNS as i64, "{counts:?}");
    assert!(
        counts.get(&(0, "succeeded".into())).copied().unwrap_or(0) > 0
            && counts.get(&(1, "succeeded".into())).copied().unwrap_or(0) > 0
    );
    for p in 0..2 {
        let extra: i64 = cluster
            .shard(p)
            .query_one("select count(*) from conveyor.runs r where r.task = 'once' and (select count(*) from conveyor.attempts a where a.run_id = r.id) <> 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(extra, 0, "every run on shard {p} had exactly one attempt");
    }
}

#[test]
fn an_enqueue_on_a_shard_is_part_of_the_apps_transaction() {
    let cluster = Sharded::start("rt-tx");
    let mut r = cluster.router();
    r.query_one(
        "select conveyor.apply_config('{\"queues\": {\"mail\": {}}, \"tasks\": {\"mail\": {\"queue\": \"mail\"}}}')",
        &[],
    )
    .unwrap();
    // the app's database is shard 1: its write and its enqueue commit or roll back together
    let mut app = cluster.shard(1);
    app.batch_execute("create table orders (id int primary key)").unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute("insert into orders values (1)", &[]).unwrap();
    tx.query_one("select conveyor.enqueue('mail', '{\"order\": 1}')", &[]).unwrap();
    tx.rollback().unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute("insert into orders values (2)", &[]).unwrap();
    let id: String = tx.query_one("select conveyor.enqueue('mail', '{\"order\": 2}')::text", &[]).unwrap().get(0);
    tx.commit().unwrap();
    let runs: i64 = app.query_one("select count(*) from conveyor.runs where task = 'mail'", &[]).unwrap().get(0);
    assert_eq!(runs, 1, "the rolled-back enqueue left nothing");
    let orders: i64 = app.query_one("select count(*) from orders", &[]).unwrap().get(0);
    assert_eq!(orders, 1);
    // and a worker on the router finds it, and finishes it on its shard
    let row = r.query_one("select run_id::text, lease_token, conveyor.ulid_partition(run_id) from conveyor.claim_runs('mail', 'rt', 10)", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), id);
    assert_eq!(row.get::<_, i32>(2), 1);
    let t: uuid::Uuid = row.get(1);
    let s: String = r.query_one("select conveyor.complete_run($1::text, $2)::text", &[&id, &t]).unwrap().get(0);
    assert_eq!(s, "succeeded");
}

#[test]
fn a_shard_stopped_and_restarted_under_load_loses_no_run() {
    let cluster = Sharded::start("rt-restart");
    let mut r = cluster.router();
    r.query_one(
        "select conveyor.apply_config('{\"queues\": {\"load\": {}, \"idle\": {}}, \"tasks\": {\"load\": {\"queue\": \"load\", \"delay\": \"0s\", \"max_attempts\": 50}}}')",
        &[],
    )
    .unwrap();
    let load = Load::start(&cluster.router.config("router"), "load", 2, 3, "2s");
    // three router sessions with connections to both shards, idle until after the restart:
    // their first call then meets a connection to shard 1 that its restart closed
    let config = cluster.router.config("router");
    let mut stale_enqueue = Client::connect(&config, postgres::NoTls).unwrap();
    let (mut stale_claim, stale_claim_notices) = with_notices(&config);
    let (mut stale_view, stale_view_notices) = with_notices(&config);
    for c in [&mut stale_enqueue, &mut stale_claim, &mut stale_view] {
        let up: i64 = c.query_one("select count(*) from conveyor.cluster_status() where up", &[]).unwrap().get(0);
        assert_eq!(up, 2, "both shards answer before the stop");
    }
    thread::sleep(Duration::from_secs(2));
    let before = load.acked();
    let out = cluster.shards[1].pg_ctl(&["stop", "-m", "fast"]);
    assert!(out.status.success(), "stop shard 1: {}", String::from_utf8_lossy(&out.stderr));
    let down_at = Instant::now();
    // while shard 1 is down, shard 0 keeps taking enqueues and claims through the router
    let (during_start, completed_start) = (load.acked(), load.completed());
    thread::sleep(Duration::from_secs(2));
    let during = load.acked() - during_start;
    let completed_during = load.completed() - completed_start;
    let status = r.query("select partition, up from conveyor.cluster_status() order by partition", &[]).unwrap();
    let up: Vec<bool> = status.iter().map(|row| row.get(1)).collect();
    assert_eq!(up, vec![true, false], "cluster_status sees shard 1 down");
    // what the router gives while shard 1 is down, and how it says that shard 1 is missing
    let (mut watch, watch_notices) = with_notices(&config);
    let stats = watch.query("select partition from conveyor.queue_stats where queue = 'load'", &[]).unwrap();
    assert_eq!(stats.len(), 1, "queue_stats returns shard 0's rows while shard 1 is down");
    // (a queue without runs: the claim asks every shard, none fills it first)
    let claimed = watch.query("select run_id::text from conveyor.claim_runs('idle', 'watch', 5)", &[]).unwrap();
    assert!(claimed.is_empty(), "no runs in queue idle");
    let metrics: String = watch.query_one("select conveyor.metrics()", &[]).unwrap().get(0);
    assert!(
        metrics.contains("conveyor_router_shard_up{partition=\"1\"} 0"),
        "metrics say shard 1 is missing: {metrics}"
    );
    assert!(metrics.contains("conveyor_router_shard_up{partition=\"0\"} 1"), "metrics say shard 0 answers: {metrics}");
    let warned = watch_notices.lock().unwrap().clone();
    assert!(
        warned.iter().any(|(code, m)| code == "CV011" && m.contains("queue_stats lacks shard(s) 1")),
        "queue_stats warns that shard 1 is missing: {warned:?}"
    );
    assert!(
        warned.iter().any(|(code, m)| code == "CV011" && m.contains("claim skipped shard 1")),
        "the claim warns that it skipped shard 1: {warned:?}"
    );
    let out = cluster.shards[1].pg_ctl(&["start"]);
    assert!(out.status.success(), "start shard 1: {}", String::from_utf8_lossy(&out.stderr));
    let downtime = down_at.elapsed().as_secs_f64();
    // the first enqueue routed to shard 1 after its restart: how long after the stop it succeeds
    let key = key_on(&mut r, "load", 1, "after-restart");
    let recovered = wait_for(30.0, "an enqueue on shard 1 after its restart", || {
        let mut c = Client::connect(&config, postgres::NoTls).ok()?;
        c.query_one("select conveyor.enqueue('load', '{}', idempotency_key => $1)", &[&key]).ok()?;
        Some(down_at.elapsed().as_secs_f64())
    });
    load.acknowledge(key);
    // the first call of each stale session neither fails nor leaves shard 1 out: PL/Proxy drops
    // an idle connection the shard closed before it uses it. An enqueue routed to shard 1 is a
    // single-run call, which the router does not retry; the claim (of a queue without runs, so
    // it asks both shards) and the view read would be retried once (for a connection that
    // breaks during a call), but say so in a warning when that fails too
    let stale_key = key_on(&mut r, "load", 1, "stale");
    stale_enqueue
        .query_one("select conveyor.enqueue('load', '{}', idempotency_key => $1)", &[&stale_key])
        .expect("an enqueue to shard 1 on a stale connection");
    load.acknowledge(stale_key);
    let claimed = stale_claim
        .query("select run_id::text from conveyor.claim_runs('idle', 'stale', 5)", &[])
        .expect("a claim on a stale connection to shard 1");
    assert!(claimed.is_empty(), "no runs in queue idle");
    let partitions: HashSet<i32> = stale_view
        .query("select partition from conveyor.queue_stats where queue = 'load'", &[])
        .expect("queue_stats on a stale connection to shard 1")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(partitions, HashSet::from([0, 1]), "queue_stats on a stale connection has both shards' rows");
    for (what, notices) in [("claim", &stale_claim_notices), ("queue_stats", &stale_view_notices)] {
        let warned = notices.lock().unwrap().clone();
        assert!(
            warned.iter().all(|(code, _)| code != "CV011"),
            "the {what} on a stale connection left out no shard: {warned:?}"
        );
    }
    thread::sleep(Duration::from_secs(2));
    let report = load.finish(|| runs_by_key(&mut [cluster.shard(0), cluster.shard(1)], "load"));
    println!(
        "router restart: {} runs acknowledged ({before} before the stop, {during} and {completed_during} completions in 2 s with shard 1 down), \
         shard 1 down {downtime:.1} s, first enqueue on it {recovered:.1} s after the stop; {}",
        report.acked,
        report.summary()
    );
    assert!(during > 0 && completed_during > 0, "shard 0 kept working while shard 1 was down");
    report.assert_every_run_once_and_done();
}

/// The notices and warnings a server sent a connection: SQLSTATE and message of each.
type Notices = Arc<Mutex<Vec<(String, String)>>>;

/// A connection to `config` that keeps the notices and warnings the server sends.
fn with_notices(config: &str) -> (Client, Notices) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let kept = notices.clone();
    let client = config
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| kept.lock().unwrap().push((n.code().code().to_string(), n.message().to_string())))
        .connect(postgres::NoTls)
        .unwrap();
    (client, notices)
}

/// An idempotency key (`prefix-n`) whose router enqueue into `queue` (task of the same name)
/// goes to shard `partition`.
fn key_on(r: &mut Client, queue: &str, partition: i32, prefix: &str) -> String {
    r.query_one(
        "select k from generate_series(1, 1000) g, lateral (select $3 || '-' || g as k) x
         where conveyor._enqueue_partition($1, $1, null, k, null) = $2 limit 1",
        &[&queue, &partition, &prefix],
    )
    .unwrap()
    .get(0)
}

/// Load through the router: producers that enqueue into one queue with idempotency keys (a key
/// not acknowledged, its shard down, is put aside and retried until the router acknowledges it:
/// autocommit on the shard, and the key makes a retry of an enqueue that did commit return the
/// same run) and workers that claim and complete its runs, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers_stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    produce_errors: Arc<AtomicUsize>,
    claim_errors: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    producers: Vec<thread::JoinHandle<()>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// `producers` and `workers` threads on the router at `config`, for queue `queue` (whose task
    /// has its name); the workers' claims take `lease`.
    fn start(config: &str, queue: &'static str, producers: usize, workers: usize, lease: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers_stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
        let (produce_errors, claim_errors, completed) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let producers = (0..producers)
            .map(|p| {
                let (config, stop, acked, errors) =
                    (config.to_string(), stop.clone(), acked.clone(), produce_errors.clone());
                thread::spawn(move || {
                    let mut client: Option<Client> = None;
                    let mut pending: Vec<String> = Vec::new();
                    let mut n = 0;
                    for turn in 0.. {
                        let stopping = stop.load(Ordering::SeqCst);
                        let key = if !pending.is_empty() && (stopping || turn % 5 == 0) {
                            pending.remove(0)
                        } else if !stopping {
                            n += 1;
                            format!("{queue}-p{p}-{n}")
                        } else {
                            break;
                        };
                        let Some(c) = reconnected(&mut client, &config) else {
                            pending.push(key);
                            continue;
                        };
                        match c.query_one("select conveyor.enqueue($1, '{}', idempotency_key => $2)", &[&queue, &key]) {
                            Ok(_) => {
                                acked.lock().unwrap().insert(key);
                            }
                            Err(e) => {
                                errors.fetch_add(1, Ordering::SeqCst);
                                pending.push(key);
                                if e.code().is_none() {
                                    client = None;
                                }
                                thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                })
            })
            .collect();
        let workers = (0..workers)
            .map(|w| {
                let (config, stop, errors, completed) =
                    (config.to_string(), workers_stop.clone(), claim_errors.clone(), completed.clone());
                thread::spawn(move || {
                    let mut client: Option<Client> = None;
                    while !stop.load(Ordering::SeqCst) {
                        let Some(c) = reconnected(&mut client, &config) else { continue };
                        let rows = match c.query(
                            "select run_id::text, lease_token from conveyor.claim_runs($1, $2, 5, $3::text::interval)",
                            &[&queue, &format!("w{w}"), &lease],
                        ) {
                            Ok(rows) => rows,
                            Err(e) => {
                                errors.fetch_add(1, Ordering::SeqCst);
                                if e.code().is_none() {
                                    client = None;
                                }
                                thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        };
                        if rows.is_empty() {
                            thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        for row in rows {
                            let (id, t): (String, uuid::Uuid) = (row.get(0), row.get(1));
                            // a completion lost with its shard: the lease runs out and the run comes back
                            if c.query_one("select conveyor.complete_run($1::text, $2)", &[&id, &t]).is_ok() {
                                completed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, workers_stop, acked, produce_errors, claim_errors, completed, producers, workers }
    }

    /// Count `key` as acknowledged (an enqueue the test made itself): finish checks its run too.
    fn acknowledge(&self, key: String) {
        self.acked.lock().unwrap().insert(key);
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    /// Stop the producers once every key they hold is acknowledged, and the workers once
    /// `runs_by_key` (every run of the queue on the shards, by idempotency key: their statuses)
    /// shows every acknowledged run succeeded (a claim whose answer was lost with a shard comes
    /// back when its lease runs out). What happened to the runs: LoadReport.
    fn finish(mut self, mut runs_by_key: impl FnMut() -> HashMap<String, Vec<String>>) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.producers.drain(..) {
            t.join().unwrap();
        }
        let acked = self.acked();
        wait_for(60.0, "every run to succeed", || {
            let done = runs_by_key().values().flatten().filter(|s| *s == "succeeded").count();
            (done >= acked).then_some(())
        });
        self.workers_stop.store(true, Ordering::SeqCst);
        for t in self.workers.drain(..) {
            t.join().unwrap();
        }
        let keys = runs_by_key();
        let acked = self.acked.lock().unwrap();
        let lost = acked.iter().filter(|k| !keys.contains_key(*k)).cloned().collect();
        let twice = keys.iter().filter(|(_, v)| v.len() > 1).map(|(k, v)| (k.clone(), v.clone())).collect();
        let unfinished = keys
            .iter()
            .filter(|(_, v)| v.iter().any(|s| s != "succeeded"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        LoadReport {
            acked: acked.len(),
            produce_errors: self.produce_errors.load(Ordering::SeqCst),
            claim_errors: self.claim_errors.load(Ordering::SeqCst),
            lost,
            twice,
            unfinished,
        }
    }
}

/// What a Load did: acknowledged enqueues, errors its clients saw, and the acknowledged keys
/// without a run, with two runs, and with a run that did not succeed.
struct LoadReport {
    acked: usize,
    produce_errors: usize,
    claim_errors: usize,
    lost: Vec<String>,
    twice: Vec<(String, Vec<String>)>,
    unfinished: Vec<(String, Vec<String>)>,
}

impl LoadReport {
    fn summary(&self) -> String {
        format!(
            "errors seen: {} enqueue, {} claim; runs lost: {}, duplicated: {}, unfinished: {}",
            self.produce_errors,
            self.claim_errors,
            self.lost.len(),
            self.twice.len(),
            self.unfinished.len()
        )
    }

    fn assert_every_run_once_and_done(&self) {
        assert!(self.lost.is_empty(), "acknowledged enqueues without a run: {:?}", self.lost);
        assert!(self.twice.is_empty(), "keys with two runs: {:?}", self.twice);
        assert!(
            self.unfinished.is_empty(),
            "runs not finished: {:?}",
            &self.unfinished[..self.unfinished.len().min(5)]
        );
    }
}

/// The runs of task `task` in these shard databases, by idempotency key: their statuses.
fn runs_by_key(shards: &mut [Client], task: &str) -> HashMap<String, Vec<String>> {
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for c in shards {
        for row in c.query("select idempotency_key, status::text from conveyor.runs where task = $1", &[&task]).unwrap()
        {
            keys.entry(row.get(0)).or_default().push(row.get(1));
        }
    }
    keys
}

/// docs/scale-out.md, "Adding a server": partition 1 moves, under load through the router, from
/// the old server (shard databases shard0 and shard1) to a new one made from a streaming standby
/// of it, by the steps the document gives. Only partition 1 is down, from the cut-over to the
/// router's switch; a lease held across the move stays good; the new server's worker ticks the
/// moved database (a run due after the move is delivered there); no run is lost or done twice.
#[test]
fn a_partition_moves_to_a_new_server_through_a_promoted_standby() {
    let old =
        Cluster::start("rt-move-old", &["conveyor.database = 'shard0,shard1'", "conveyor.tick_interval = '100ms'"]);
    let mut old_admin = old.connect("postgres");
    for k in 0..2 {
        old_admin.batch_execute(&format!("create database shard{k}")).unwrap();
        old_admin.batch_execute(&format!("alter database shard{k} set conveyor.partition = {k}")).unwrap();
        old.connect(&format!("shard{k}")).batch_execute("create extension pg_conveyor").unwrap();
    }
    // (the workers read their database's partition when they connect)
    let out = old.pg_ctl(&["restart", "-m", "fast"]);
    assert!(out.status.success(), "restart the old server: {}", String::from_utf8_lossy(&out.stderr));
    let mut old_admin = old.connect("postgres");
    let router = Cluster::start("rt-move-router", &[]);
    router.connect("postgres").batch_execute("create database router").unwrap();
    let mut r = router.connect("router");
    r.batch_execute("create extension pg_conveyor_router cascade").unwrap();
    for k in 0..2i32 {
        r.execute("select conveyor.add_shard($1, $2)", &[&k, &where_is(&old.dir, old.port, &format!("shard{k}"))])
            .unwrap();
    }
    r.query_one(
        r#"select conveyor.apply_config('{"queues": {"load": {}, "held": {}, "later": {}},
             "tasks": {"load": {"queue": "load", "delay": "0s", "max_attempts": 50},
                       "held": {"queue": "held"}, "later": {"queue": "later"}}}')"#,
        &[],
    )
    .unwrap();
    // before the move, on partition 1: a run claimed with a long lease (finished after the move)
    let held_key = key_on(&mut r, "held", 1, "held");
    r.query_one("select conveyor.enqueue('held', '{}', idempotency_key => $1)", &[&held_key]).unwrap();
    let held = r
        .query_one("select run_id::text, lease_token from conveyor.claim_runs('held', 'holder', 1, '5min')", &[])
        .unwrap();
    let (held_id, held_token): (String, uuid::Uuid) = (held.get(0), held.get(1));
    let load = Load::start(&router.config("router"), "load", 2, 3, "3s");
    thread::sleep(Duration::from_secs(2));

    // 1. a streaming standby of the old server on the "new machine", set to tick only the
    // database that moves once it is promoted
    let new = Cluster::standby_of(&old, "rt-move-new", &["conveyor.database = 'shard1'"]);
    wait_for(30.0, "the standby to stream", || {
        let n: i64 = old_admin
            .query_one("select count(*) from pg_stat_replication where state = 'streaming'", &[])
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    });
    let before = load.acked();
    // and a run due 3 s from now, still waiting when partition 1 moves: delivered by whichever
    // server ticks partition 1 then
    let later_key = key_on(&mut r, "later", 1, "later");
    let later_id: String = r
        .query_one("select conveyor.enqueue('later', '{}', delay => '3s', idempotency_key => $1)::text", &[&later_key])
        .unwrap()
        .get(0);
    let waiting: String = old
        .connect("shard1")
        .query_one("select status::text from conveyor.runs where id = $1::text::conveyor.ulid", &[&later_id])
        .unwrap()
        .get(0);
    assert_eq!(waiting, "scheduled", "the delayed run waits on the old server at the cut-over");

    // 2. cut over partition 1: no new sessions in shard1 on the old server, and none left there
    // (pg_terminate_backend only signals: wait until they are gone)
    let cut_at = Instant::now();
    old_admin.batch_execute("alter database shard1 allow_connections false").unwrap();
    old_admin
        .query("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'shard1' and pid <> pg_backend_pid()", &[])
        .unwrap();
    wait_for(30.0, "the old server's sessions in shard1 to end", || {
        let n: i64 =
            old_admin.query_one("select count(*) from pg_stat_activity where datname = 'shard1'", &[]).unwrap().get(0);
        (n == 0).then_some(())
    });
    // while it moves, partition 0 keeps working through the router
    let (during_start, completed_start) = (load.acked(), load.completed());

    // 3. the standby replays everything the old server wrote, then is promoted; the moved
    // database accepts connections again there (its allow_connections false came with the WAL)
    let lsn: String = old_admin.query_one("select pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let mut new_admin = new.connect("postgres");
    wait_for(30.0, "the standby to replay the old server's last WAL", || {
        let caught_up: bool =
            new_admin.query_one("select pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap().get(0);
        caught_up.then_some(())
    });
    let out = new.pg_ctl(&["promote"]);
    assert!(out.status.success(), "promote the standby: {}", String::from_utf8_lossy(&out.stderr));
    let mut new_admin = new.connect("postgres");
    new_admin
        .batch_execute("alter database shard1 allow_connections true; alter database shard0 allow_connections false")
        .unwrap();

    // 4. the router sends partition 1 to the new server
    r.execute("select conveyor.add_shard(1, $1)", &[&where_is(&new.dir, new.port, "shard1")]).unwrap();
    let downtime = cut_at.elapsed().as_secs_f64();
    let during = load.acked() - during_start;
    let completed_during = load.completed() - completed_start;
    let status = r.query("select partition, up from conveyor.cluster_status() order by partition", &[]).unwrap();
    let up: Vec<bool> = status.iter().map(|row| row.get(1)).collect();
    assert_eq!(up, vec![true, true], "both partitions answer after the switch");

    // the new server's workers tick the moved database only, never the copy left behind
    let mut ticked = Vec::new();
    wait_for(30.0, "the new server's worker in shard1", || {
        ticked = new_admin
            .query("select datname::text from pg_stat_activity where backend_type = 'pg_conveyor' order by 1", &[])
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>();
        (!ticked.is_empty()).then_some(())
    });
    assert_eq!(ticked, vec!["shard1".to_string()], "the new server ticks shard1 and nothing else");

    // the lease taken on the old server is good on the new one
    let finished: String =
        r.query_one("select conveyor.complete_run($1::text, $2)::text", &[&held_id, &held_token]).unwrap().get(0);
    assert_eq!(finished, "succeeded", "the run claimed before the move completes after it");
    // the new server's worker ticks shard1: the run due after the move becomes claimable there
    let mut moved = new.connect("shard1");
    let later_started = wait_for(30.0, "the run due after the move to be delivered on the new server", || {
        let rows =
            r.query("select run_id::text, lease_token from conveyor.claim_runs('later', 'after', 1)", &[]).unwrap();
        rows.first().map(|row| (row.get::<_, String>(0), row.get::<_, uuid::Uuid>(1)))
    });
    assert_eq!(later_started.0, later_id, "the delayed run, from partition 1");
    r.query_one("select conveyor.complete_run($1::text, $2)", &[&later_started.0, &later_started.1]).unwrap();
    // ids made on the new server carry partition 1
    let partition: i32 =
        moved.query_one("select conveyor.ulid_partition(conveyor.enqueue('later', '{}'))", &[]).unwrap().get(0);
    assert_eq!(partition, 1, "the moved database still makes ids of partition 1");

    thread::sleep(Duration::from_secs(2));
    let report = load.finish(|| runs_by_key(&mut [old.connect("shard0"), new.connect("shard1")], "load"));
    // 5. the copies left behind go: shard1 on the old server, shard0 on the new one
    old_admin.batch_execute("drop database shard1 with (force)").unwrap();
    new_admin.batch_execute("drop database shard0 with (force)").unwrap();
    let up: Vec<bool> = r
        .query("select up from conveyor.cluster_status() order by partition", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(up, vec![true, true], "both partitions answer once the old copies are dropped");
    println!(
        "partition move: {} runs acknowledged ({before} before the cut-over), partition 1 down {downtime:.1} s \
         (cut-over to the router's switch), {during} enqueues and {completed_during} completions meanwhile; {}",
        report.acked,
        report.summary()
    );
    assert!(during > 0 && completed_during > 0, "partition 0 kept working while partition 1 moved");
    report.assert_every_run_once_and_done();
}

/// SIGSTOP or SIGCONT to a cluster's postmaster and every process it started (as root, or as
/// the postgres user that runs them).
fn signal_cluster(cluster: &Cluster, signal: &str) {
    let pid_file = std::fs::read_to_string(format!("{}/data/postmaster.pid", cluster.dir)).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_string();
    let mut pids = vec![postmaster.clone()];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            let after = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().nth(1).unwrap_or("").to_string());
            if after.as_deref() == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().to_string());
            }
        }
    }
    let status = crate::common::as_postgres("/bin/kill").arg(format!("-{signal}")).args(&pids).status().unwrap();
    assert!(status.success(), "kill -{signal} {pids:?}");
}

/// A hung shard in the test: resumed when dropped, so that its cluster can be stopped.
struct Stopped<'a>(&'a Cluster);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        signal_cluster(self.0, "CONT");
    }
}

#[test]
fn a_hung_shard_behind_a_pooler_with_query_timeout_is_skipped() {
    // PL/Proxy has no timeout that fires on a shard that stops answering (SIGSTOP): its
    // connect_timeout is not a server option, libpq's connect_timeout is not enforced on its
    // asynchronous connects, and query_timeout does not fire. A PgBouncer between router and
    // shard with query_timeout does: the call fails, the claim skips the shard.
    let cluster = Sharded::start_pooled("rt-hang", 2);
    let mut r = cluster.router();
    r.batch_execute("set statement_timeout = '60s'").unwrap(); // a regression fails, not hangs
                                                               // (attempts to spare: a lease nobody received expires as a failed attempt)
    r.query_one(r#"select conveyor.apply_config('{"tasks": {"job": {"max_attempts": 5, "delay": "0s"}}}')"#, &[])
        .unwrap();
    for p in 0..2 {
        cluster.shard(p).batch_execute("select conveyor.enqueue('job') from generate_series(1, 5)").unwrap();
    }
    let one: i64 = r.query_one("select count(*) from conveyor.claim_runs('default', 'w', 1)", &[]).unwrap().get(0);
    assert_eq!(one, 1, "the router reaches the shards through their poolers");

    let hung = Stopped(&cluster.shards[1]);
    signal_cluster(hung.0, "STOP");
    let started = Instant::now();
    // (a short lease: the claim PgBouncer gave up on reaches the shard when it resumes and
    // commits there, leasing runs nobody received; they come back when the lease expires)
    let rows = r
        .query(
            "select conveyor.ulid_partition(run_id) from conveyor.claim_runs('default', 'w', 20, lease => '3s')",
            &[],
        )
        .unwrap();
    let waited = started.elapsed();
    let parts: HashSet<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(parts, HashSet::from([0]), "shard 0's runs, shard 1 skipped");
    assert!(rows.len() >= 4, "shard 0's runs: {}", rows.len());
    eprintln!("claim with shard 1 hung: {} runs from shard 0 in {:.1}s", rows.len(), waited.as_secs_f64());
    let down: Vec<i32> = r
        .query("select partition from conveyor.cluster_status() where not up", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(down, vec![1], "cluster_status names the hung shard");
    // configuration reaches shard 0 and says shard 1 did not get it; shard 0's queues go on
    r.execute("select conveyor.place_queue('zero', 0)", &[]).unwrap();
    let e = r
        .query_one(
            r#"select conveyor.apply_config('{"queues": {"zero": {}}, "tasks": {"zjob": {"queue": "zero"}}}')"#,
            &[],
        )
        .unwrap_err();
    assert_eq!(code(&e), "CV011", "{e}");
    // (queue named: the router learns a task's queue only from an apply_config that succeeds)
    let p: i32 =
        r.query_one("select conveyor.ulid_partition(conveyor.enqueue('zjob', queue => 'zero'))", &[]).unwrap().get(0);
    assert_eq!(p, 0, "an enqueue to shard 0 while shard 1 hangs");
    drop(hung);
    // back: its runs are claimed again (the pooler reconnects)
    let got = wait_for(60.0, "shard 1's runs once it answers again", || {
        let rows =
            r.query("select conveyor.ulid_partition(run_id) from conveyor.claim_runs('default', 'w', 20)", &[]).ok()?;
        rows.iter().any(|row| row.get::<_, i32>(0) == 1).then_some(rows.len())
    });
    assert!(got >= 1);
}

/// Router roles (docs/scale-out.md, Roles): each of the four roles does its job through the
/// router and nothing else, refused on the router (42501) before any shard is asked; a router
/// role reaches the shards as itself, so the shard checks its rights again, or as the shard
/// user of its user mapping; the router grants each function as the shard grants it; and the
/// cluster is the router owner's. A shard moved while another is down keeps the mappings.
#[test]
fn router_roles_do_their_job_and_reach_the_shards_as_themselves() {
    let cluster = Sharded::start("rt-roles");
    let users = [
        ("rt_producer", "conveyor_producer"),
        ("rt_worker", "conveyor_worker"),
        ("rt_reader", "conveyor_reader"),
        ("rt_admin", "conveyor_admin"),
    ];
    let mut everywhere = String::from("create role rt_nobody login;");
    for (user, role) in users {
        everywhere.push_str(&format!("create role {user} login in role {role};"));
    }
    cluster.router().batch_execute(&everywhere).unwrap();
    for p in 0..2 {
        let mut s = cluster.shard(p);
        s.batch_execute(&everywhere).unwrap();
        // on the shards: a worker for mapped router roles, and rt_sneaky with no rights at all
        s.batch_execute("create role shard_worker login in role conveyor_worker; create role rt_sneaky login").unwrap();
    }
    // on the router: rt_sneaky is a worker (the shards say otherwise), rt_mapped is a worker
    // that reaches the shards as shard_worker (it does not exist there)
    cluster
        .router()
        .batch_execute(
            "create role rt_sneaky login in role conveyor_worker;
             create role rt_mapped login in role conveyor_worker;
             create user mapping for rt_mapped server conveyor_cluster options (user 'shard_worker')",
        )
        .unwrap();

    let mut admin = cluster.router_as("rt_admin");
    admin
        .query_one(
            "select conveyor.apply_config('{\"queues\": {\"work\": {}}, \"tasks\": {\"job\": {\"queue\": \"work\", \"delay\": \"0s\"}}}')",
            &[],
        )
        .unwrap();
    let refused = |c: &mut Client, sql: &str, who: &str| {
        let e = c.batch_execute(sql).unwrap_err();
        assert_eq!(code(&e), "42501", "{who}: {sql}: {e}");
    };

    let mut producer = cluster.router_as("rt_producer");
    let mut parts = HashSet::new();
    for k in 0..8 {
        let p: i32 = producer
            .query_one("select conveyor.ulid_partition(conveyor.enqueue('job', '{}', key => $1))", &[&format!("t{k}")])
            .unwrap()
            .get(0);
        parts.insert(p);
    }
    assert_eq!(parts, HashSet::from([0, 1]), "the producer's runs are on both shards");
    for sql in [
        "select conveyor.claim_runs('work', 'p', 10)",
        "select conveyor.cancel_runs('work')",
        "select * from conveyor.queue_stats",
        "select conveyor._claim_on(0, 'work', 'p', 10, null, null)",
    ] {
        refused(&mut producer, sql, "producer");
    }

    let mut worker = cluster.router_as("rt_worker");
    // all 8: the claim visits both shards
    let claimed =
        worker.query("select run_id::text, lease_token from conveyor.claim_runs('work', 'w', 10)", &[]).unwrap();
    assert_eq!(claimed.len(), 8);
    let (id, token): (String, uuid::Uuid) = (claimed[0].get(0), claimed[0].get(1));
    let s: String =
        worker.query_one("select conveyor.complete_run($1::text, $2)::text", &[&id, &token]).unwrap().get(0);
    assert_eq!(s, "succeeded");
    for sql in [
        "select conveyor.enqueue('job')",
        "select conveyor.apply_config('{}')",
        "select conveyor.metrics()",
        "select * from conveyor.queue_stats",
        "select conveyor._apply_config_on(0, '{}')",
        "select conveyor.place_queue('work', 1)",
    ] {
        refused(&mut worker, sql, "worker");
    }
    // the shards saw rt_worker itself (PL/Proxy connects as the calling role)
    for p in 0..2 {
        let n: i64 = cluster
            .shard(p)
            .query_one("select count(*) from pg_stat_activity where usename = 'rt_worker' and datname = 'app'", &[])
            .unwrap()
            .get(0);
        assert!(n >= 1, "shard {p} has the router's connection as rt_worker");
    }

    // a router worker the shards do not grant is refused by the shard
    let mut sneaky = cluster.router_as("rt_sneaky");
    let e = sneaky.query("select * from conveyor.claim_runs('work', 's', 10)", &[]).unwrap_err();
    assert_eq!(code(&e), "42501", "the shard refuses rt_sneaky: {e}");
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains("REMOTE ERROR"), "refused by the shard, not the router: {message}");
    // nor may a role pick the shard user it connects as (USAGE on the server would allow its own
    // user mapping)
    refused(
        &mut sneaky,
        "create user mapping for current_user server conveyor_cluster options (user 'postgres')",
        "sneaky",
    );
    refused(
        &mut mapped_before(&cluster),
        "alter user mapping for current_user server conveyor_cluster options (set user 'postgres')",
        "mapped",
    );
    // a mapped role works as its shard user
    for _ in 0..2 {
        producer.query_one("select conveyor.enqueue('job')", &[]).unwrap();
    }
    let mut mapped = cluster.router_as("rt_mapped");
    let n = mapped.query("select * from conveyor.claim_runs('work', 'm', 1)", &[]).unwrap().len();
    assert_eq!(n, 1);

    let mut reader = cluster.router_as("rt_reader");
    let queued: i64 = reader
        .query_one("select coalesce(sum(queued), 0)::bigint from conveyor.queue_stats where queue = 'work'", &[])
        .unwrap()
        .get(0);
    assert_eq!(queued, 1, "10 enqueued, 9 claimed");
    let metrics: String = reader.query_one("select conveyor.metrics()", &[]).unwrap().get(0);
    assert!(metrics.contains("conveyor_router_shard_up{partition=\"1\"} 1"), "{metrics}");
    let up: i64 = reader.query_one("select count(*) from conveyor.cluster_status() where up", &[]).unwrap().get(0);
    assert_eq!(up, 2);
    for sql in ["select conveyor.claim_runs('work', 'r', 1)", "select conveyor.enqueue('job')"] {
        refused(&mut reader, sql, "reader");
    }

    let mut nobody = cluster.router_as("rt_nobody");
    for sql in [
        "select conveyor.enqueue('job')",
        "select conveyor.claim_runs('work', 'n', 1)",
        "select * from conveyor.queue_stats",
        "select conveyor.metrics()",
        "select * from conveyor.shards",
    ] {
        refused(&mut nobody, sql, "nobody");
    }

    // the cluster is the owner's: admins cancel and place queues, they do not add shards
    let n: i32 = admin.query_one("select conveyor.cancel_runs('work')", &[]).unwrap().get(0);
    assert_eq!(n, 9, "1 queued and 8 running (one of the 10 succeeded)");
    admin.batch_execute("select conveyor.place_queue('work', 1)").unwrap();
    refused(&mut admin, &format!("select conveyor.add_shard(1, '{}')", cluster.shard_connstr(1)), "admin");
    refused(&mut admin, "select conveyor.apply_cluster()", "admin");

    // the router grants each function of the shards' API as the shards do
    let mut r = cluster.router();
    let roles = ["conveyor_producer", "conveyor_worker", "conveyor_reader", "conveyor_admin", "rt_nobody"];
    let grants = r
        .query(
            "select p.oid::regprocedure::text, r, has_function_privilege(r, p.oid, 'execute')
             from pg_proc p cross join unnest($1::text[]) r
             where p.pronamespace = 'conveyor'::regnamespace and p.proname !~ '^_' and p.prokind = 'f'",
            &[&&roles[..]],
        )
        .unwrap();
    let mut shard = cluster.shard(0);
    let mut compared = 0;
    for g in &grants {
        let (sig, role, on_router): (String, String, bool) = (g.get(0), g.get(1), g.get(2));
        let on_shard: Option<bool> = shard
            .query_one(
                "select has_function_privilege($2, to_regprocedure($1), 'execute') where to_regprocedure($1) is not null",
                &[&sig, &role],
            )
            .ok()
            .map(|row| row.get(0));
        if let Some(on_shard) = on_shard {
            assert_eq!(on_router, on_shard, "{role} on {sig}: router {on_router}, shard {on_shard}");
            compared += 1;
        }
    }
    assert!(compared >= 25 * roles.len(), "compared {compared} grants");

    // connect strings name no user or password: each role connects as itself
    for bad in [
        format!("{} user=postgres", cluster.shard_connstr(1)),
        format!("{} password=secret", cluster.shard_connstr(1)),
        format!("{} password='a secret'", cluster.shard_connstr(1)),
        "postgresql://postgres:secret@localhost/app".to_string(),
        "postgresql:///app?host=/tmp&user=postgres&password=secret".to_string(),
        "dbname='app'user=postgres".to_string(),
        format!("{} service=secret", cluster.shard_connstr(1)),
    ] {
        let e = r.query_one("select conveyor.add_shard(1, $1)", &[&bad]).unwrap_err();
        assert_eq!(code(&e), "22023", "{bad}: {e}");
        let db = e.as_db_error().unwrap();
        let said = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
        assert!(!said.contains("secret"), "the connect string is not echoed: {said}");
    }

    // a move of shard 1 while shard 0 is down: only the moved shard must answer, and the user
    // mappings stay (the SQL/MED server is altered, not recreated)
    let out = cluster.shards[0].pg_ctl(&["stop", "-m", "fast"]);
    assert!(out.status.success(), "stop shard 0: {}", String::from_utf8_lossy(&out.stderr));
    let moved = format!("{} application_name=moved", cluster.shard_connstr(1));
    let n: i32 = r.query_one("select conveyor.add_shard(1, $1)", &[&moved]).unwrap().get(0);
    assert_eq!(n, 2);
    let out = cluster.shards[0].pg_ctl(&["start"]);
    assert!(out.status.success(), "start shard 0: {}", String::from_utf8_lossy(&out.stderr));
    let mappings: i64 = r
        .query_one(
            "select count(*) from pg_user_mappings where srvname = 'conveyor_cluster' and usename = 'rt_mapped'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mappings, 1, "the user mapping survived the move");
    producer.query_one("select conveyor.enqueue('job', '{}', queue => 'work')", &[]).unwrap();
    let mut mapped = cluster.router_as("rt_mapped");
    let got =
        mapped.query("select conveyor.ulid_partition(run_id) from conveyor.claim_runs('work', 'm', 1)", &[]).unwrap();
    assert_eq!(got.len(), 1, "the mapped role claims from the moved shard");
    assert_eq!(got[0].get::<_, i32>(0), 1);
    let app: i64 = cluster
        .shard(1)
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'shard_worker' and application_name = 'moved'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(app >= 1, "the router reached shard 1 by its new connect string, as shard_worker");
}
