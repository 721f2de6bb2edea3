//! pg-conveyor-client against a real cluster (the PG* variables; make test points them at its
//! own): producer transactions, typed values, every way a handler ends a run, cancellation,
//! graceful shutdown, stale leases, and PgBouncer in transaction mode (CONVEYOR_PGBOUNCER_PORT
//! and CONVEYOR_PGBOUNCER_HOST, else PGHOST; same database).

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use pg_conveyor_client::{
    config_from_env, connect, enqueue, enqueue_many, ClaimedRun, Duration, EnqueueOptions, Finished, JobError, Outcome,
    RunStatus, Ulid, Worker, WorkerConfig,
};
use serde_json::{json, Value};
use tokio_postgres::Client;

async fn db() -> Client {
    let (client, _) = connect(&config_from_env()).await.expect("connect with the PG* variables");
    // retries and releases come back through tick: tick from here unless a background worker does
    let row = client
        .query_one(
            "select count(*) from pg_stat_activity where backend_type = 'pg_conveyor' and datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    if row.get::<_, i64>(0) == 0 {
        let (ticker, _) = connect(&config_from_env()).await.unwrap();
        tokio::spawn(async move {
            while ticker.batch_execute("select from conveyor.tick()").await.is_ok() {
                tokio::time::sleep(StdDuration::from_millis(100)).await;
            }
        });
    }
    client
}

fn unique_queue() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("rs_{}_{nanos}_{n}", std::process::id())
}

async fn define(db: &Client, queue: &str, name: &str, extra: &str) -> String {
    let task = format!("{queue}.{name}");
    db.execute(&format!("select conveyor.define_task($1, queue => $2{extra})"), &[&task, &queue]).await.unwrap();
    task
}

async fn status(db: &Client, id: Ulid) -> RunStatus {
    // the typed values need no cast: conveyor.ulid in, conveyor.run_status out
    db.query_one("select status from conveyor.runs where id = $1", &[&id]).await.unwrap().get(0)
}

async fn outcomes(db: &Client, id: Ulid) -> Vec<String> {
    db.query("select outcome::text from conveyor.attempts where run_id = $1 order by attempt", &[&id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn config(queue: &str) -> WorkerConfig {
    WorkerConfig {
        queues: vec![queue.into()],
        lease: Duration::from_secs(10),
        poll: StdDuration::from_millis(200),
        ..WorkerConfig::default()
    }
}

async fn drain(worker: &Worker) {
    let stop = worker.stop_handle();
    match tokio::time::timeout(StdDuration::from_secs(60), worker.run(true)).await {
        Ok(result) => result.unwrap(),
        Err(_) => {
            stop.stop();
            stop.stop();
            panic!("the worker did not drain within 60s");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_commits_and_rolls_back_with_the_callers_transaction_and_the_types_need_no_casts() {
    let db = db().await;
    let queue = unique_queue();
    let task = define(&db, &queue, "t", "").await;
    let (mut app, _) = connect(&config_from_env()).await.unwrap();
    let tx = app.transaction().await.unwrap();
    let kept = enqueue(&tx, &task, &json!({"n": 1}), None, &EnqueueOptions::default()).await.unwrap();
    let seen: i64 = db.query_one("select count(*) from conveyor.runs where id = $1", &[&kept]).await.unwrap().get(0);
    assert_eq!(seen, 0, "visible to others before the commit");
    tx.commit().await.unwrap();
    assert_eq!(status(&db, kept).await, RunStatus::Queued);

    let tx = app.transaction().await.unwrap();
    let gone = enqueue(&tx, &task, &json!({}), None, &EnqueueOptions::default()).await.unwrap();
    tx.rollback().await.unwrap();
    let seen: i64 = db.query_one("select count(*) from conveyor.runs where id = $1", &[&gone]).await.unwrap().get(0);
    assert_eq!(seen, 0);

    let ids = enqueue_many(&app, &task, &[json!({"n": [1, 2]}), json!({"n": 3})], None, &EnqueueOptions::default())
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let payload: Value =
        db.query_one("select payload from conveyor.runs where id = $1", &[&ids[0]]).await.unwrap().get(0);
    assert_eq!(payload, json!({"n": [1, 2]}));
    // a ulid's text is the server's text
    let text: String = db.query_one("select $1::conveyor.ulid::text", &[&ids[1]]).await.unwrap().get(0);
    assert_eq!(text, ids[1].to_string());
    assert_eq!(text.parse::<Ulid>().unwrap(), ids[1]);
    // durations both ways
    let later = EnqueueOptions { delay: Some(Duration::from_secs(3600)), ..Default::default() };
    let scheduled = enqueue(&app, &task, &json!({}), Some("k-1"), &later).await.unwrap();
    assert_eq!(status(&db, scheduled).await, RunStatus::Scheduled);
    assert_eq!(enqueue(&app, &task, &json!({}), Some("k-1"), &later).await.unwrap(), scheduled);
    // a concurrency key, given to every run of the call
    let tenant = EnqueueOptions { key: Some("tenant-1".into()), ..Default::default() };
    let keyed = enqueue_many(&app, &task, &[json!({}), json!({})], None, &tenant).await.unwrap();
    let keys: Vec<Option<String>> = db
        .query("select concurrency_key from conveyor.runs where id = any($1) order by id", &[&keyed])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, vec![Some("tenant-1".to_string()); 2]);
    let d: Duration = db.query_one("select '1m30s'::conveyor.duration", &[]).await.unwrap().get(0);
    assert_eq!(d, Duration::from_secs(90));
    let back: String = db.query_one("select $1::conveyor.duration::text", &[&d]).await.unwrap().get(0);
    assert_eq!(back, "1m 30s");
    app.batch_execute("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_way_a_handler_ends_a_run() {
    let db = db().await;
    let queue = unique_queue();
    let ok = define(&db, &queue, "ok", "").await;
    let flaky = define(&db, &queue, "flaky", ", max_attempts => 3, delay => '100ms'").await;
    let wait = define(&db, &queue, "wait", "").await;
    let broken = define(&db, &queue, "broken", ", max_attempts => 1").await;
    let slow = define(&db, &queue, "slow", "").await;
    let finished: Arc<Mutex<Vec<Finished>>> = Arc::default();
    let seen = finished.clone();
    let worker = Worker::new(WorkerConfig { batch: 4, ..config(&queue) })
        .unwrap()
        .task(&ok, |job| async move { Ok(json!({"echo": job.run.payload["n"]})) })
        .task(&flaky, |job| async move {
            if job.run.attempt == 1 {
                return Err(JobError::fail_with("first attempt fails", json!({"attempt": 1}), true));
            }
            Ok(json!({"attempt": job.run.attempt, "failures": job.run.failures}))
        })
        .task(&wait, |job| async move {
            if job.run.attempt < 3 {
                return Err(JobError::release(Duration::from_millis(100), "not ready"));
            }
            Ok(json!({"releases": job.run.releases}))
        })
        .task(&broken, |_job| async move { Err(JobError::fail_with("a bug", json!({"exception": "Bug"}), false)) })
        .task(&slow, |mut job| async move {
            for _ in 0..3 {
                tokio::time::sleep(StdDuration::from_millis(200)).await;
                assert!(!job.heartbeat(Some(Duration::from_secs(10))).await?);
            }
            job.log("three heartbeats").await?;
            Ok(json!({"heartbeats": job.heartbeats}))
        })
        .on_finished(move |f| seen.lock().unwrap().push(f.clone()));
    let mut runs = Vec::new();
    for (i, t) in [&ok, &flaky, &wait, &broken, &slow].into_iter().enumerate() {
        runs.push(enqueue(&db, t, &json!({"n": i}), None, &EnqueueOptions::default()).await.unwrap());
    }
    drain(&worker).await;
    let result = |id: Ulid| {
        let db = &db;
        async move {
            db.query_one("select result from conveyor.runs where id = $1", &[&id]).await.unwrap().get::<_, Value>(0)
        }
    };
    assert_eq!(result(runs[0]).await, json!({"echo": 0}));
    assert_eq!(outcomes(&db, runs[1]).await, ["failed", "succeeded"]);
    assert_eq!(result(runs[1]).await, json!({"attempt": 2, "failures": 1}));
    assert_eq!(outcomes(&db, runs[2]).await, ["released", "released", "succeeded"]);
    assert_eq!(status(&db, runs[3]).await, RunStatus::Failed);
    assert_eq!(result(runs[4]).await, json!({"heartbeats": 3}));
    let logged: String = db
        .query_one("select string_agg(chunk, '') from conveyor.attempt_logs where run_id = $1", &[&runs[4]])
        .await
        .unwrap()
        .get(0);
    assert!(logged.contains("three heartbeats"));
    let finished = finished.lock().unwrap();
    let has = |task: &str, outcome: Outcome, status: RunStatus| {
        finished.iter().any(|f| f.run.task == task && f.outcome == outcome && f.status == Some(status))
    };
    assert!(has(&flaky, Outcome::Failed, RunStatus::Retrying));
    assert!(has(&wait, Outcome::Released, RunStatus::Released));
    assert!(has(&broken, Outcome::Failed, RunStatus::Failed));
    assert!(has(&ok, Outcome::Succeeded, RunStatus::Succeeded));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_stops_at_its_next_heartbeat() {
    let db = db().await;
    let queue = unique_queue();
    let task = define(&db, &queue, "long", "").await;
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let worker = Worker::new(config(&queue)).unwrap().task(&task, move |mut job| {
        let started_tx = started_tx.clone();
        async move {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            for _ in 0..600 {
                tokio::time::sleep(StdDuration::from_millis(50)).await;
                if job.heartbeat(None).await? {
                    return Err(JobError::Cancelled);
                }
            }
            Ok(json!({"finished": "without seeing the cancel"}))
        }
    });
    let id = enqueue(&db, &task, &json!({}), None, &EnqueueOptions::default()).await.unwrap();
    let (canceller, _) = connect(&config_from_env()).await.unwrap();
    let cancel = tokio::spawn(async move {
        started.await.unwrap();
        canceller.execute("select conveyor.cancel_run($1)", &[&id]).await.unwrap();
    });
    drain(&worker).await;
    cancel.await.unwrap();
    assert_eq!(status(&db, id).await, RunStatus::Cancelled);
    assert_eq!(outcomes(&db, id).await, ["stopped"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_gives_the_run_in_hand_and_the_unstarted_ones_back() {
    let db = db().await;
    let queue = unique_queue();
    let task = define(&db, &queue, "held", "").await;
    let interrupted = Arc::new(Mutex::new(0));
    let count = interrupted.clone();
    let worker =
        Worker::new(WorkerConfig { batch: 5, grace: StdDuration::from_millis(300), ..config(&queue) }).unwrap();
    let stop = worker.stop_handle();
    let worker = worker.task(&task, move |mut job| {
        let (stop, count) = (stop.clone(), count.clone());
        async move {
            stop.stop(); // as SIGTERM would
            loop {
                tokio::time::sleep(StdDuration::from_millis(50)).await;
                if let Err(e) = job.heartbeat(None).await {
                    if matches!(e, JobError::Interrupted) {
                        *count.lock().unwrap() += 1;
                    }
                    return Err(e);
                }
            }
        }
    });
    let ids = enqueue_many(&db, &task, &vec![json!({}); 5], None, &EnqueueOptions::default()).await.unwrap();
    tokio::time::timeout(StdDuration::from_secs(30), worker.run(false)).await.expect("the worker stopped").unwrap();
    assert_eq!(*interrupted.lock().unwrap(), 1, "only the first run started");
    for id in &ids {
        assert_eq!(status(&db, *id).await, RunStatus::Queued);
        assert_eq!(outcomes(&db, *id).await, ["interrupted"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_lease_is_reported_and_the_worker_goes_on() {
    let db = db().await;
    let queue = unique_queue();
    let task = define(&db, &queue, "late", ", max_attempts => 3, delay => '100ms'").await;
    type Seen = Vec<(Outcome, Option<RunStatus>)>;
    let finished: Arc<Mutex<Seen>> = Arc::default();
    let seen = finished.clone();
    let worker = Worker::new(WorkerConfig { lease: Duration::from_secs(1), ..config(&queue) })
        .unwrap()
        .task(&task, |job| async move {
            if job.run.attempt == 1 {
                // no heartbeat past the lease: tick ends the attempt as crashed, the run retries
                let (watcher, _) = connect(&config_from_env()).await.unwrap();
                for _ in 0..200 {
                    let row = watcher
                        .query_one("select attempts from conveyor.runs where id = $1", &[&job.run.run_id])
                        .await
                        .unwrap();
                    if row.get::<_, i32>(0) > 0 {
                        break;
                    }
                    tokio::time::sleep(StdDuration::from_millis(100)).await;
                }
            }
            Ok(json!({"attempt": job.run.attempt}))
        })
        .on_finished(move |f| seen.lock().unwrap().push((f.outcome, f.status)));
    let id = enqueue(&db, &task, &json!({}), None, &EnqueueOptions::default()).await.unwrap();
    drain(&worker).await;
    assert_eq!(outcomes(&db, id).await, ["crashed", "succeeded"]);
    assert_eq!(
        *finished.lock().unwrap(),
        [(Outcome::Succeeded, None), (Outcome::Succeeded, Some(RunStatus::Succeeded))]
    );
}

#[test]
fn bad_settings_are_refused_before_anything_runs() {
    assert!(Worker::new(WorkerConfig { queues: vec![" ".into()], ..WorkerConfig::default() }).is_err());
    assert!(Worker::new(WorkerConfig { batch: 0, ..WorkerConfig::default() }).is_err());
    assert!(Duration::new(std::time::Duration::from_secs(101 * 365 * 86_400)).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn through_pgbouncer_in_transaction_mode_polling_and_listening_on_a_direct_session() {
    let Ok(port) = std::env::var("CONVEYOR_PGBOUNCER_PORT") else {
        eprintln!("CONVEYOR_PGBOUNCER_PORT is not set: skipped");
        return;
    };
    let db = db().await;
    let mut pooled = tokio_postgres::Config::new();
    let host = std::env::var("CONVEYOR_PGBOUNCER_HOST").or_else(|_| std::env::var("PGHOST")).unwrap();
    pooled.host(&host).port(port.parse().unwrap()).user(std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()));
    pooled.dbname(std::env::var("PGDATABASE").unwrap());
    for listen in [false, true] {
        let queue = unique_queue();
        let task = define(&db, &queue, "pooled", ", max_attempts => 2, delay => '100ms'").await;
        let worker = Worker::new(WorkerConfig {
            connection: pooled.clone(),
            batch: 3,
            pooled: true,
            listen: listen.then(config_from_env),
            poll: StdDuration::from_millis(300),
            ..config(&queue)
        })
        .unwrap()
        .task(&task, |mut job| async move {
            if job.run.attempt == 1 && job.run.payload["n"].as_i64().unwrap() % 2 == 1 {
                return Err(JobError::fail("odd ones fail once"));
            }
            job.heartbeat(None).await?;
            Ok(json!({"n": job.run.payload["n"]}))
        });
        // a producer through the pooler, in its own transaction (every statement unnamed)
        let (mut producer, _) = connect(&pooled).await.unwrap();
        let tx = producer.transaction().await.unwrap();
        let payloads: Vec<Value> = (0..12).map(|n| json!({"n": n})).collect();
        let ids = enqueue_many(&tx, &task, &payloads, None, &EnqueueOptions::default()).await.unwrap();
        tx.commit().await.unwrap();
        drain(&worker).await;
        let done: i64 = db
            .query_one("select count(*) from conveyor.runs where queue = $1 and status = 'succeeded'", &[&queue])
            .await
            .unwrap()
            .get(0);
        assert_eq!(done, 12, "listen {listen}");
        assert_eq!(outcomes(&db, ids[1]).await, ["failed", "succeeded"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_run_has_typed_fields() {
    let db = db().await;
    let queue = unique_queue();
    let task = define(&db, &queue, "typed", "").await;
    let seen: Arc<Mutex<Vec<ClaimedRun>>> = Arc::default();
    let keep = seen.clone();
    let worker = Worker::new(config(&queue)).unwrap().task(&task, move |job| {
        keep.lock().unwrap().push(job.run.clone());
        async move {
            if job.run.payload.get("p").is_some() {
                // a running parent enqueues its child
                let (client, _) = connect(&config_from_env()).await?;
                let child =
                    EnqueueOptions { parent_run_id: Some(job.run.run_id), priority: Some(7), ..Default::default() };
                enqueue(&client, &job.run.task, &json!({"c": 1}), None, &child).await?;
            }
            Ok(Value::Null)
        }
    });
    let parent = enqueue(&db, &task, &json!({"p": 1}), None, &EnqueueOptions::default()).await.unwrap();
    drain(&worker).await;
    let seen = seen.lock().unwrap();
    let run = seen.iter().find(|r| r.parent_run_id.is_some()).expect("the child was claimed");
    assert_eq!(run.parent_run_id, Some(parent));
    assert_eq!((run.priority, run.attempt, run.queue.as_str()), (7, 1, queue.as_str()));
    assert_eq!(run.payload, json!({"c": 1}));
    assert!(run.lease_expires_at > std::time::SystemTime::now() - StdDuration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_of_a_batch_keeps_its_leases_while_a_long_handler_heartbeats() {
    let db = db().await;
    let queue = unique_queue();
    let task = define(&db, &queue, "batch", "").await;
    let worker = Worker::new(WorkerConfig { batch: 3, lease: Duration::from_secs(2), ..config(&queue) }).unwrap().task(
        &task,
        |mut job| async move {
            if job.run.payload["n"] == 0 {
                for _ in 0..10 {
                    tokio::time::sleep(StdDuration::from_millis(500)).await;
                    job.heartbeat(None).await?;
                }
            }
            Ok(json!({"n": job.run.payload["n"]}))
        },
    );
    let payloads: Vec<Value> = (0..3).map(|n| json!({"n": n})).collect();
    let ids = enqueue_many(&db, &task, &payloads, None, &EnqueueOptions::default()).await.unwrap();
    drain(&worker).await;
    for id in ids {
        assert_eq!(outcomes(&db, id).await, ["succeeded"], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_fails_its_attempt_not_the_worker() {
    let db = db().await;
    let queue = unique_queue();
    let bad = define(&db, &queue, "bad", "").await;
    let good = define(&db, &queue, "good", "").await;
    let worker = Worker::new(WorkerConfig { batch: 2, ..config(&queue) })
        .unwrap()
        .task(&bad, |_job| async move {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            Ok(Value::Null)
        })
        .task(&good, |_job| async move { Ok(json!({"ok": true})) });
    let b = enqueue(&db, &bad, &json!({}), None, &EnqueueOptions::default()).await.unwrap();
    let g = enqueue(&db, &good, &json!({}), None, &EnqueueOptions::default()).await.unwrap();
    drain(&worker).await;
    assert_eq!(status(&db, b).await, RunStatus::Failed);
    assert_eq!(status(&db, g).await, RunStatus::Succeeded);
    let message: String =
        db.query_one("select error ->> 'message' from conveyor.runs where id = $1", &[&b]).await.unwrap().get(0);
    assert!(message.contains("the handler panicked"), "{message}");
}
