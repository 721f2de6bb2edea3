//! Behind PgBouncer in transaction mode (docs/poolers.md): a real PgBouncer with 3 server
//! connections in front of the test cluster, 8 workers and 4 producers through it. Producers
//! enqueue inside their own transactions beside a business write (committed or rolled back);
//! workers claim, heartbeat and complete; a worker LISTENs on a direct session connection, the
//! pattern for wakeups. Every statement is unnamed (`query_typed`): PgBouncer 1.18, Debian 12's,
//! cannot follow named prepared statements across server connections. Cron and services are
//! the background worker's, which is not behind the pooler: each firing runs once, each replica
//! lives once. Last, why bind_session is wrong here: the bound session is the pooler's server
//! connection, which outlives a worker and can end under a live one.

use crate::common::{connect, env, unique, wait_for, Pooler};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, Row};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One unnamed statement, every parameter text (cast in the SQL). Results must be of built-in
/// types too (cast conveyor.run_status and conveyor.ulid to text): for any other type the driver
/// looks the type up with a named prepared statement, which the pooler cannot follow.
fn call(c: &mut Client, sql: &str, params: &[&str]) -> Result<Vec<Row>, postgres::Error> {
    let typed: Vec<(&(dyn postgres::types::ToSql + Sync), Type)> =
        params.iter().map(|p| (p as &(dyn postgres::types::ToSql + Sync), Type::TEXT)).collect();
    c.query_typed(sql, &typed)
}

#[test]
fn workers_and_producers_behind_pgbouncer_in_transaction_mode_lose_nothing_and_double_nothing() {
    let pooler = Pooler::start("pooler", 3);
    let db = env("CONVEYOR_TEST_DB");
    let queue = unique("pooled");
    let (task, cron, service) = (format!("{queue}.job"), format!("{queue}.cron"), format!("{queue}.svc"));
    let orders = format!("{queue}_orders");
    let mut direct = connect();
    direct
        .batch_execute(&format!(
            "create table {orders} (id serial primary key, run_id text not null);
             select conveyor.define_task('{task}', queue => '{queue}', max_attempts => 5, delay => '0s');
             select conveyor.define_task('{cron}', queue => '{queue}_cron', schedule => '* * * * *');
             select conveyor.define_service('{service}', replicas => 2, queue => '{queue}_svc');"
        ))
        .unwrap();

    // LISTEN needs a session: a direct connection, beside the pooled ones that do the work
    let woken = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let (woken, stop, channel) = (woken.clone(), stop.clone(), format!("conveyor.{queue}"));
        let mut c = connect();
        c.batch_execute(&format!("listen \"{channel}\"")).unwrap();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut n = c.notifications();
                let mut it = n.timeout_iter(Duration::from_millis(200));
                while let Ok(Some(_)) = it.next() {
                    woken.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    let rolled_back = Arc::new(Mutex::new(Vec::<String>::new()));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (config, task, orders) = (pooler.config(&db), task.clone(), orders.clone());
            let (committed, rolled_back) = (committed.clone(), rolled_back.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&config, postgres::NoTls).unwrap();
                for i in 0..60 {
                    // the caller's transaction: the run and the business row commit or vanish together
                    let mut tx = c.transaction().unwrap();
                    let payload = format!("{{\"producer\": {p}, \"i\": {i}}}");
                    let id: String = call_tx(
                        &mut tx,
                        &format!(
                            "insert into {orders} (run_id) select conveyor.enqueue($1::text, $2::text::jsonb)::text returning run_id"
                        ),
                        &[&task, &payload],
                    )[0]
                    .get(0);
                    if i % 3 == 2 {
                        tx.rollback().unwrap();
                        rolled_back.lock().unwrap().push(id);
                    } else {
                        tx.commit().unwrap();
                        committed.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();

    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (config, queue, errors, done) = (pooler.config(&db), queue.clone(), errors.clone(), done.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&config, postgres::NoTls).unwrap();
                let name = format!("pooled-{w}");
                let mut completed = 0u32;
                while !done.load(Ordering::SeqCst) {
                    let rows = call(
                        &mut c,
                        "select run_id::text, lease_token::text from conveyor.claim_runs($1::text, $2::text, 5, '5s')",
                        &[&queue, &name],
                    )
                    .unwrap();
                    if rows.is_empty() {
                        thread::sleep(Duration::from_millis(20));
                    }
                    for row in rows {
                        let (id, token): (String, String) = (row.get(0), row.get(1));
                        let ok = call(&mut c, "select conveyor.heartbeat($1::text, $2::text::uuid)", &[&id, &token])
                            .and_then(|_| {
                                call(
                                    &mut c,
                                    "select conveyor.complete_run($1::text, $2::text::uuid)::text",
                                    &[&id, &token],
                                )
                            });
                        match ok {
                            Ok(_) => completed += 1,
                            Err(e) => {
                                eprintln!(
                                    "pooled worker {w}: {:?}",
                                    e.as_db_error().map(|d| (d.code().code().to_string(), d.message().to_string()))
                                );
                                errors.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
                completed
            })
        })
        .collect();

    for p in producers {
        p.join().unwrap();
    }
    wait_for(60.0, "the pooled workers to finish every committed run", || {
        let left: i64 = direct
            .query_one("select count(*) from conveyor.runs where queue = $1 and status <> 'succeeded'", &[&queue])
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    });
    done.store(true, Ordering::SeqCst);
    let completions: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();

    let committed = committed.lock().unwrap().clone();
    let rolled_back: HashSet<String> = rolled_back.lock().unwrap().iter().cloned().collect();
    let runs: HashSet<String> = direct
        .query("select id::text from conveyor.runs where queue = $1 and status = 'succeeded'", &[&queue])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let order_rows: i64 = direct.query_one(&format!("select count(*) from {orders}"), &[]).unwrap().get(0);
    let twice: i64 = direct
        .query_one(
            "select count(*) from (select run_id from conveyor.attempts where queue = $1 and outcome = 'succeeded'
                                   group by run_id having count(*) > 1) x",
            &[&queue],
        )
        .unwrap()
        .get(0);
    // cron and services: the background worker's, once each, whatever the pooled clients do
    let firings: (i64, i64) = wait_for(70.0, "a firing of the cron task", || {
        let row = direct
            .query_one("select count(*), count(distinct fire_at) from conveyor.runs where task = $1", &[&cron])
            .unwrap();
        let (n, distinct): (i64, i64) = (row.get(0), row.get(1));
        (n > 0).then_some((n, distinct))
    });
    let replicas: Vec<(i32, i64)> = direct
        .query(
            "select replica, count(*) from conveyor.runs where task = $1 and status not in ('succeeded', 'failed', 'cancelled')
              group by replica order by replica",
            &[&service],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    stop.store(true, Ordering::SeqCst);
    listener.join().unwrap();
    println!(
        "behind PgBouncer (transaction mode, 3 server connections; 8 workers, 4 producers): {} runs committed, {} \
         rolled back, {completions} completions, {} worker errors, succeeded twice {twice}; {} wakeups on the direct \
         LISTEN connection; cron: {} runs for {} firings; service replicas live: {replicas:?}",
        committed.len(),
        rolled_back.len(),
        errors.load(Ordering::SeqCst),
        woken.load(Ordering::SeqCst),
        firings.0,
        firings.1
    );
    assert_eq!(errors.load(Ordering::SeqCst), 0, "worker calls failed behind the pooler");
    assert!(committed.iter().all(|id| runs.contains(id)), "every committed enqueue succeeded");
    assert_eq!(runs.len(), committed.len(), "no run but the committed ones");
    assert!(rolled_back.iter().all(|id| !runs.contains(id)), "a rolled-back enqueue left no run");
    assert_eq!(order_rows, committed.len() as i64, "the business rows match the committed runs");
    assert_eq!(twice, 0, "runs succeeded twice");
    assert_eq!(completions as usize, committed.len(), "each committed run completed once");
    assert!(woken.load(Ordering::SeqCst) > 0, "the direct LISTEN connection was woken");
    assert_eq!(firings.0, firings.1, "each cron firing ran once");
    assert_eq!(replicas, vec![(1, 1), (2, 1)], "each service replica lives once");
    direct
        .batch_execute(&format!(
            "drop table {orders}; select conveyor.disable_task('{cron}'); select conveyor.stop_service('{service}');"
        ))
        .unwrap();
}

/// `call`, inside a transaction.
fn call_tx(tx: &mut postgres::Transaction<'_>, sql: &str, params: &[&str]) -> Vec<Row> {
    let typed: Vec<(&(dyn postgres::types::ToSql + Sync), Type)> =
        params.iter().map(|p| (p as &(dyn postgres::types::ToSql + Sync), Type::TEXT)).collect();
    tx.query_typed(sql, &typed).unwrap()
}

#[test]
fn behind_a_transaction_pooler_a_bound_run_follows_the_pooler_connection_not_the_worker() {
    // why bind_session is off by default (docs/guarantees.md): the session a claim binds to is
    // the pooler's server connection. When the pooler closes it (here RECONNECT; in production
    // server_idle_timeout or server_lifetime), tick rescues the run under a worker that is alive.
    let pooler = Pooler::start("pooler-bind", 1);
    let db = env("CONVEYOR_TEST_DB");
    let queue = unique("pooled_bind");
    let task = format!("{queue}.job");
    let mut direct = connect();
    direct
        .batch_execute(&format!(
            "select conveyor.define_task('{task}', queue => '{queue}', max_attempts => 3);
             select conveyor.enqueue('{task}');"
        ))
        .unwrap();
    let mut worker = pooler.connect(&db);
    let row = call(
        &mut worker,
        "select run_id::text, lease_token::text, pg_backend_pid() from conveyor.claim_runs($1::text, 'pooled', 1, '10m', bind_session => true)",
        &[&queue],
    )
    .unwrap()
    .remove(0);
    let (id, token, server_pid): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    let bound: i32 = direct
        .query_one("select session_pid from conveyor.runs where id = $1::text::conveyor.ulid", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(bound, server_pid, "the run is bound to the pooler's server connection");

    // the worker is alive and idle; the pooler drops its server connection
    let mut admin = Client::connect(&pooler.config("pgbouncer"), postgres::NoTls).unwrap();
    admin.simple_query(&format!("RECONNECT {db}")).unwrap();
    let _ = call(&mut worker, "select 1", &[]); // the next transaction is served by a new connection
    wait_for(10.0, "the run bound to the closed server connection to be rescued", || {
        let status: String = direct
            .query_one("select status::text from conveyor.runs where id = $1::text::conveyor.ulid", &[&id])
            .unwrap()
            .get(0);
        (status != "running").then_some(())
    });
    let late = call(&mut worker, "select conveyor.complete_run($1::text, $2::text::uuid)::text", &[&id, &token]);
    let code = late.err().and_then(|e| e.code().map(|c| c.code().to_string()));
    println!("behind PgBouncer, a bound run was rescued under a live worker: its complete_run got {code:?}");
    assert_eq!(code.as_deref(), Some("CV001"), "the live worker's completion is refused");
}
