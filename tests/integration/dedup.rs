//! Deduplication policies under concurrent producers of one key: every producer of a `return`
//! task gets the same run; exactly one producer of a `reject` task succeeds and the others get
//! CV009; a `replace` + `debounce` task keeps one run whose payload is one the producers sent
//! and whose start stays within the cap.

use crate::common::{connect_to, drop_db, fresh_db};
use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;

const PRODUCERS: usize = 8;
const ROUNDS: usize = 25;

/// Each of PRODUCERS threads enqueues `task` with key `k<round>` once per round, all at once
/// (a barrier per round), each in a transaction that also waits a moment before committing, so
/// that the key's conflicts overlap. Returns, per round, each producer's result: the run id or
/// the SQLSTATE.
fn race(db: &str, task: &'static str) -> Vec<Vec<Result<String, String>>> {
    let barrier = Arc::new(Barrier::new(PRODUCERS));
    let handles: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (db, barrier) = (db.to_string(), barrier.clone());
            thread::spawn(move || {
                let mut c = connect_to(&db);
                (0..ROUNDS)
                    .map(|round| {
                        barrier.wait();
                        let mut tx = c.transaction().unwrap();
                        let result = tx.query_one(
                            "select conveyor.enqueue($1, jsonb_build_object('producer', $2::int), idempotency_key => $3)::text",
                            &[&task, &(p as i32), &format!("k{round}")],
                        );
                        match result {
                            Ok(row) => {
                                tx.batch_execute("select pg_sleep(0.002)").unwrap();
                                tx.commit().unwrap();
                                Ok(row.get::<_, String>(0))
                            }
                            Err(e) => Err(e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string())),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let per_producer: Vec<Vec<_>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (0..ROUNDS).map(|r| per_producer.iter().map(|p| p[r].clone()).collect()).collect()
}

#[test]
fn concurrent_producers_of_one_key_get_one_run_under_every_policy() {
    let (db, mut admin) = fresh_db("it_dedup");
    admin
        .batch_execute(
            "select conveyor.define_task('dd.return', queue => 'dd');
             select conveyor.define_task('dd.reject', queue => 'dd', on_duplicate => 'reject');
             select conveyor.define_task('dd.replace', queue => 'dd', on_duplicate => 'replace',
                                         debounce => '1s', debounce_max => '3s');",
        )
        .unwrap();

    for (round, results) in race(&db, "dd.return").iter().enumerate() {
        let ids: HashSet<_> = results.iter().map(|r| r.clone().expect("return never refuses")).collect();
        assert_eq!(ids.len(), 1, "round {round}: every producer got the same run: {results:?}");
    }
    for (round, results) in race(&db, "dd.reject").iter().enumerate() {
        let won = results.iter().filter(|r| r.is_ok()).count();
        let refused = results.iter().filter(|r| r.as_ref().err().map(String::as_str) == Some("CV009")).count();
        assert_eq!((won, refused), (1, PRODUCERS - 1), "round {round}: {results:?}");
    }
    for (round, results) in race(&db, "dd.replace").iter().enumerate() {
        let ids: HashSet<_> = results.iter().map(|r| r.clone().expect("replace never refuses")).collect();
        assert_eq!(ids.len(), 1, "round {round}: one run: {results:?}");
    }
    let row = admin
        .query_one(
            "select count(*), count(distinct idempotency_key),
                    count(*) filter (where (payload ->> 'producer')::int between 0 and $1 - 1),
                    count(*) filter (where run_at <= created_at + interval '3 seconds'),
                    count(*) filter (where status = 'scheduled')
             from conveyor.runs where task = 'dd.replace'",
            &[&(PRODUCERS as i32)],
        )
        .unwrap();
    let (runs, keys, sent, capped, scheduled): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    println!(
        "dedup race: {PRODUCERS} producers x {ROUNDS} keys per policy; replace+debounce: {runs} runs for {keys} keys, \
         {scheduled} still debounced"
    );
    assert_eq!((runs, keys), (ROUNDS as i64, ROUNDS as i64), "one run per key");
    assert_eq!(sent, runs, "each payload is one a producer sent");
    assert_eq!(capped, runs, "no start past debounce_max");
    for task in ["dd.return", "dd.reject"] {
        let n: i64 = admin.query_one("select count(*) from conveyor.runs where task = $1", &[&task]).unwrap().get(0);
        assert_eq!(n, ROUNDS as i64, "{task}: one run per key");
    }
    drop(admin);
    drop_db(&db);
}
