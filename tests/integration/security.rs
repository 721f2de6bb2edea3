//! Roles and search_path: each role can do its job and nothing else; no role writes the tables
//! directly; objects planted earlier in a caller's search_path are never picked up by the
//! SECURITY DEFINER functions; only a superuser can move the test clock.

use crate::common::{connect_to, drop_db, fresh_db, unique};
use postgres::{Client, NoTls};

fn login(db: &str, role: &str) -> Client {
    let cfg = format!(
        "host={} port={} user={role} dbname={db}",
        crate::common::env("CONVEYOR_TEST_HOST"),
        crate::common::env("CONVEYOR_TEST_PORT")
    );
    Client::connect(&cfg, NoTls).unwrap_or_else(|e| panic!("login as {role}: {e}"))
}

/// Ok, or the SQLSTATE the statement failed with.
fn attempt(client: &mut Client, sql: &str) -> Result<(), String> {
    client.batch_execute(sql).map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string()))
}

fn denied(r: Result<(), String>) -> bool {
    r == Err("42501".to_string())
}

#[test]
fn each_role_can_do_its_job_and_not_the_others() {
    let (db, mut admin) = fresh_db("it_roles");
    let suffix = unique("r").to_lowercase();
    let (producer, worker, reader, operator) =
        (format!("p_{suffix}"), format!("w_{suffix}"), format!("rd_{suffix}"), format!("a_{suffix}"));
    admin
        .batch_execute(&format!(
            "create role {producer} login in role conveyor_producer;
             create role {worker} login in role conveyor_worker;
             create role {reader} login in role conveyor_reader;
             create role {operator} login in role conveyor_admin;
             select conveyor.define_task('t', queue => 'q');"
        ))
        .unwrap();

    let mut p = login(&db, &producer);
    assert_eq!(attempt(&mut p, "select conveyor.enqueue('t', '{\"n\": 1}')"), Ok(()));
    assert_eq!(attempt(&mut p, "select conveyor.publish('topic', '{}')"), Ok(()));
    assert!(denied(attempt(&mut p, "select * from conveyor.claim_runs('q', 'p', 1)")), "a producer cannot claim");
    assert!(denied(attempt(&mut p, "select * from conveyor.runs")), "a producer cannot read runs");
    assert!(denied(attempt(&mut p, "update conveyor.runs set priority = 1")));
    assert!(denied(attempt(&mut p, "select conveyor.define_task('t2')")));
    assert!(denied(attempt(&mut p, "select conveyor.tick()")));

    let mut w = login(&db, &worker);
    let row = w.query_one("select run_id::text, lease_token from conveyor.claim_run('q', 'w')", &[]).unwrap();
    let (id, token): (String, uuid::Uuid) = (row.get(0), row.get(1));
    assert!(w.execute("select conveyor.heartbeat($1::text, $2)", &[&id, &token]).is_ok());
    assert!(w.execute("select conveyor.append_log($1::text, $2, 'working')", &[&id, &token]).is_ok());
    assert!(
        denied(attempt(&mut w, &format!("update conveyor.runs set status = 'succeeded' where id = '{id}'"))),
        "a worker cannot update runs directly"
    );
    assert!(denied(attempt(&mut w, "delete from conveyor.runs")));
    assert!(denied(attempt(&mut w, "insert into conveyor.events (run_id, at, type, attempt) values ('01ARZ3NDEKTSV4RRFFQ69G5FAV', now(), 'run.started', 1)")));
    assert!(denied(attempt(&mut w, "select conveyor.enqueue('t')")), "a worker cannot enqueue");
    assert!(denied(attempt(&mut w, &format!("select conveyor.cancel_run('{id}')"))));
    assert!(w.execute("select conveyor.complete_run($1::text, $2)", &[&id, &token]).is_ok());

    let mut r = login(&db, &reader);
    assert_eq!(attempt(&mut r, "select * from conveyor.queue_stats"), Ok(()));
    assert_eq!(attempt(&mut r, "select * from conveyor.task_stats; select * from conveyor.recent_failures; select * from conveyor.throughput; select * from conveyor.run_history"), Ok(()));
    assert_eq!(attempt(&mut r, "select count(*) from conveyor.runs"), Ok(()));
    let metrics: String = r.query_one("select conveyor.metrics()", &[]).unwrap().get(0);
    assert!(metrics.contains("conveyor_runs{queue=\"q\",status=\"succeeded\"} 1"), "{metrics}");
    assert!(denied(attempt(&mut r, "select conveyor.enqueue('t')")), "a reader cannot enqueue");
    assert!(denied(attempt(&mut r, "select * from conveyor.claim_runs('q', 'r', 1)")));
    assert!(denied(attempt(&mut r, "update conveyor.tasks set enabled = false")));

    let mut a = login(&db, &operator);
    assert_eq!(attempt(&mut a, "select conveyor.define_task('t3', max_attempts => 2)"), Ok(()));
    assert_eq!(attempt(&mut a, "select conveyor.tick(); select conveyor.set_queue('q', concurrency => 5)"), Ok(()));
    assert_eq!(attempt(&mut a, "select conveyor.enqueue('t3')"), Ok(()), "admin includes producer");
    assert!(
        denied(attempt(&mut a, "insert into conveyor.tasks (name, queue) values ('sneaky', 'q')")),
        "not even the admin writes tables"
    );
    assert!(denied(attempt(&mut a, "update conveyor.runs set status = 'cancelled'")));

    // the clock that decides leases is not anyone's to move
    let err = attempt(&mut w, "set conveyor.test_clock = '2000-01-01 00:00:00+00'");
    assert_eq!(err, Err("42501".to_string()), "a worker must not backdate a lease");

    drop((p, w, r, a, admin));
    let mut su = connect_to("postgres");
    su.execute(&format!("drop database {db} with (force)"), &[]).unwrap();
    for role in [producer, worker, reader, operator] {
        su.execute(&format!("drop role {role}"), &[]).unwrap();
    }
    println!("roles: producer, worker, reader and admin each allowed their job and refused the rest");
}

#[test]
fn objects_planted_earlier_in_the_search_path_are_never_picked_up() {
    let (db, mut client) = fresh_db("it_path");
    client
        .batch_execute(
            "create schema evil;
             create table evil.hijacks (what text);
             create table evil.runs (id text);
             -- look-alikes of functions the conveyor functions call unqualified
             create function evil.jsonb_typeof(jsonb) returns text language sql
                 as $$ insert into evil.hijacks values ('jsonb_typeof'); select 'object' $$;
             create function evil.gen_random_uuid() returns uuid language sql
                 as $$ insert into evil.hijacks values ('gen_random_uuid'); select '00000000-0000-0000-0000-000000000000'::uuid $$;
             create function evil.btrim(text) returns text language sql
                 as $$ insert into evil.hijacks values ('btrim'); select 'q' $$;
             create function evil.text_eq_always(text, text) returns boolean language sql
                 as $$ insert into evil.hijacks values ('='); select true $$;
             create operator evil.= (leftarg = text, rightarg = text, function = evil.text_eq_always);
             set search_path = evil, public;
             select conveyor.define_task('t', queue => 'q');
             select conveyor.enqueue('t', '{\"n\": 1}');",
        )
        .unwrap();
    // a non-object payload is still refused (jsonb_typeof was not hijacked)
    let err = client.batch_execute("select conveyor.enqueue('t', '[1]')").unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");
    let row = client.query_one("select lease_token::text, queue from conveyor.claim_runs('q', 'w', 1)", &[]).unwrap();
    assert_ne!(row.get::<_, String>(0), "00000000-0000-0000-0000-000000000000");
    assert_eq!(row.get::<_, String>(1), "q");
    client.batch_execute("select conveyor.tick(); select * from conveyor.queue_stats;").unwrap();
    let hijacks: i64 = client.query_one("select count(*) from evil.hijacks", &[]).unwrap().get(0);
    let fake_runs: i64 = client.query_one("select count(*) from evil.runs", &[]).unwrap().get(0);
    assert_eq!((hijacks, fake_runs), (0, 0), "an object in the caller's search_path was used");
    drop(client);
    drop_db(&db);
}
