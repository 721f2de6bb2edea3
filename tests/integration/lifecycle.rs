//! The core lifecycle over real connections, with concurrent claimers.

use crate::common::{connect, status_of, unique};
use std::collections::HashSet;
use std::thread;

/// Claim batches until the queue is empty, completing each run; returns the ids claimed.
fn drain(queue: &str, worker: &str, batch: i32) -> Vec<String> {
    let mut client = connect();
    let mut seen = Vec::new();
    loop {
        let rows = client
            .query("select run_id::text, lease_token from conveyor.claim_runs($1, $2, $3)", &[&queue, &worker, &batch])
            .unwrap();
        if rows.is_empty() {
            return seen;
        }
        for row in rows {
            let id: String = row.get(0);
            let token: uuid::Uuid = row.get(1);
            client.execute("select conveyor.complete_run($1::text::conveyor.ulid, $2)", &[&id, &token]).unwrap();
            seen.push(id);
        }
    }
}

#[test]
fn two_concurrent_claimers_claim_each_of_1000_runs_exactly_once() {
    let task = unique("it_claim");
    let mut client = connect();
    client.execute("select conveyor.define_task($1, queue => $1)", &[&task]).unwrap();
    client
        .execute(
            "select count(*) from conveyor.enqueue_many($1, array(select jsonb_build_object('n', n) from generate_series(1, 1000) n))",
            &[&task],
        )
        .unwrap();

    let handles: Vec<_> = [("a", 1), ("b", 7)]
        .into_iter()
        .map(|(name, batch)| {
            let queue = task.clone();
            thread::spawn(move || drain(&queue, name, batch))
        })
        .collect();
    let claimed: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let all: Vec<&String> = claimed.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    println!("claimer a: {} runs, claimer b: {} runs", claimed[0].len(), claimed[1].len());
    assert_eq!(all.len(), 1000, "every run claimed");
    assert_eq!(distinct.len(), 1000, "no run claimed twice");
    assert!(!claimed[0].is_empty() && !claimed[1].is_empty(), "both claimers got work");

    let row = client
        .query_one(
            "select count(*) filter (where status = 'succeeded'), count(*) filter (where attempts = 1),
                    (select count(*) from conveyor.attempts a where a.task = $1)
             from conveyor.runs where task = $1",
            &[&task],
        )
        .unwrap();
    let (succeeded, one_attempt, attempts): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((succeeded, one_attempt, attempts), (1000, 1000, 1000));
}

#[test]
fn a_stale_lease_token_is_rejected_with_cv001_and_changes_nothing() {
    let task = unique("it_stale");
    let mut client = connect();
    client.execute("select conveyor.define_task($1, queue => $1)", &[&task]).unwrap();
    client.execute("select conveyor.enqueue($1)", &[&task]).unwrap();
    let row = client.query_one("select run_id::text, lease_token from conveyor.claim_run($1, 'w')", &[&task]).unwrap();
    let id: String = row.get(0);
    let wrong = uuid::Uuid::new_v4();
    let err = client.execute("select conveyor.complete_run($1::text::conveyor.ulid, $2)", &[&id, &wrong]).unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "CV001");
    assert!(db.message().starts_with(&format!("stale lease for run {id}")), "{}", db.message());
    assert_eq!(status_of(&mut client, &id), "running");
}

#[test]
fn a_direct_update_of_status_is_rejected_whoever_issues_it() {
    let task = unique("it_direct");
    let mut client = connect();
    client.execute("select conveyor.define_task($1, queue => $1)", &[&task]).unwrap();
    client.execute("select conveyor.enqueue($1)", &[&task]).unwrap();
    let err = client
        .execute("update conveyor.runs set status = 'succeeded', finished_at = now() where task = $1", &[&task])
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "CV004");
    let status: String =
        client.query_one("select status::text from conveyor.runs where task = $1", &[&task]).unwrap().get(0);
    assert_eq!(status, "queued");
}
