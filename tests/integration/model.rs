//! Model check: random sequences of enqueue / claim / complete / fail / release / return /
//! heartbeat / cancel / retry / tick / time advance run against the extension and against a
//! small Rust model of the state machine (docs/state-machine.md, docs/counters.md); after every step each run's status,
//! counters, due time and event log must agree. Time is the superuser-only test clock, so a
//! case takes milliseconds. proptest shrinks a failing sequence to a minimal one.

use crate::common::{drop_db, fresh_db};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::RefCell;

const LEASE: i64 = 30;
const RETRY_DELAY: i64 = 10;

#[derive(Debug, Clone)]
enum Op {
    Enqueue { retrying_task: bool, delay: i64 },
    Claim { n: i64 },
    Complete { pick: usize },
    Fail { pick: usize, retryable: bool },
    Release { pick: usize, delay: i64 },
    Return { pick: usize },
    Heartbeat { pick: usize },
    Cancel { pick: usize },
    Retry { pick: usize },
    StaleComplete { pick: usize },
    Tick,
    Advance { secs: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), prop_oneof![Just(0i64), 1i64..40]).prop_map(|(r, d)| Op::Enqueue { retrying_task: r, delay: d }),
        3 => (1i64..4).prop_map(|n| Op::Claim { n }),
        2 => any::<usize>().prop_map(|pick| Op::Complete { pick }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, retryable)| Op::Fail { pick, retryable }),
        1 => (any::<usize>(), 0i64..30).prop_map(|(pick, delay)| Op::Release { pick, delay }),
        1 => any::<usize>().prop_map(|pick| Op::Return { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Heartbeat { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        1 => any::<usize>().prop_map(|pick| Op::StaleComplete { pick }),
        2 => Just(Op::Tick),
        2 => (1i64..45).prop_map(|secs| Op::Advance { secs }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Retrying,
    Failed,
    Released,
    Cancelled,
}

impl S {
    fn name(self) -> &'static str {
        match self {
            S::Scheduled => "scheduled",
            S::Queued => "queued",
            S::Running => "running",
            S::Succeeded => "succeeded",
            S::Retrying => "retrying",
            S::Failed => "failed",
            S::Released => "released",
            S::Cancelled => "cancelled",
        }
    }
    fn waiting(self) -> bool {
        matches!(self, S::Scheduled | S::Retrying | S::Released)
    }
}

#[derive(Debug, Clone)]
struct Run {
    id: String,
    max_attempts: i32,
    status: S,
    attempts: i32,
    failures: i32,
    retries: i32,
    releases: i32,
    failure_base: i32,
    run_at: i64,
    lease_until: i64,
    token: Option<uuid::Uuid>,
    cancel_requested: bool,
    events: Vec<&'static str>,
}

#[derive(Default)]
struct Model {
    now: i64,
    runs: Vec<Run>,
}

enum Fin {
    Succeeded,
    Failure { retryable: bool },
    Released { delay: i64 },
    Interrupted,
}

impl Model {
    /// What ending the running run `i`'s attempt does (the counters table).
    fn end(&mut self, i: usize, fin: Fin) -> S {
        let now = self.now;
        let r = &mut self.runs[i];
        r.attempts += 1;
        r.token = None;
        let stopped = r.cancel_requested && !matches!(fin, Fin::Succeeded);
        let (status, event) = if stopped {
            (S::Cancelled, "run.cancelled")
        } else {
            match fin {
                Fin::Succeeded => (S::Succeeded, "run.succeeded"),
                Fin::Interrupted => (S::Queued, "run.interrupted"),
                Fin::Released { delay } => {
                    r.releases += 1;
                    r.run_at = now + delay;
                    (S::Released, "run.released")
                }
                Fin::Failure { retryable } => {
                    r.failures += 1;
                    if retryable && r.failures - r.failure_base < r.max_attempts {
                        r.retries += 1;
                        r.run_at = now + RETRY_DELAY;
                        (S::Retrying, "run.retry_scheduled")
                    } else {
                        (S::Failed, "run.failed")
                    }
                }
            }
        };
        r.status = status;
        r.events.push(event);
        status
    }

    fn running(&self) -> Vec<usize> {
        (0..self.runs.len()).filter(|&i| self.runs[i].status == S::Running).collect()
    }
}

fn pick(list: &[usize], p: usize) -> Option<usize> {
    (!list.is_empty()).then(|| list[p % list.len()])
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("{e}"))
}

fn set_clock(tx: &mut postgres::Transaction, now: i64) {
    tx.execute("select set_config('conveyor.test_clock', ('2030-01-01 00:00:00+00'::timestamptz + $1 * interval '1 second')::text, true)", &[&(now as f64)])
        .unwrap();
}

/// Compare every run in the database with the model.
fn check(tx: &mut postgres::Transaction, model: &Model, step: usize, op: &Op) -> Result<(), TestCaseError> {
    for r in &model.runs {
        let row = tx
            .query_one(
                "select status::text, attempts, failures, retries, releases, failure_base,
                        extract(epoch from run_at - '2030-01-01 00:00:00+00')::bigint,
                        cancel_requested_at is not null,
                        (select coalesce(array_agg(e.type::text order by e.id), '{}') from conveyor.events e where e.run_id = r.id)
                 from conveyor.runs r where r.id = $1::text::conveyor.ulid",
                &[&r.id],
            )
            .unwrap();
        let got: (String, i32, i32, i32, i32, i32, i64, bool, Vec<String>) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
            row.get(7),
            row.get(8),
        );
        let want_events: Vec<String> = r.events.iter().map(|e| e.to_string()).collect();
        let want = (
            r.status.name().to_string(),
            r.attempts,
            r.failures,
            r.retries,
            r.releases,
            r.failure_base,
            r.run_at,
            r.cancel_requested,
            want_events,
        );
        prop_assert_eq!(got, want, "run {} after step {} ({:?})", r.id, step, op);
    }
    Ok(())
}

fn run_case(tx: &mut postgres::Transaction, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    set_clock(tx, 0);
    tx.batch_execute(
        "select conveyor.define_task('m.retrying', queue => 'm', max_attempts => 3, delay => '10s');
         select conveyor.define_task('m.once', queue => 'm', max_attempts => 1);",
    )
    .unwrap();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Enqueue { retrying_task, delay } => {
                let task = if retrying_task { "m.retrying" } else { "m.once" };
                let id: String = tx
                    .query_one("select conveyor.enqueue($1, delay => $2::text)::text", &[&task, &format!("{delay}s")])
                    .unwrap()
                    .get(0);
                m.runs.push(Run {
                    id,
                    max_attempts: if retrying_task { 3 } else { 1 },
                    status: if delay == 0 { S::Queued } else { S::Scheduled },
                    attempts: 0,
                    failures: 0,
                    retries: 0,
                    releases: 0,
                    failure_base: 0,
                    run_at: m.now + delay,
                    lease_until: 0,
                    token: None,
                    cancel_requested: false,
                    events: vec!["run.enqueued"],
                });
            }
            Op::Claim { n } => {
                let mut want: Vec<usize> = (0..m.runs.len()).filter(|&i| m.runs[i].status == S::Queued).collect();
                want.sort_by_key(|&i| (m.runs[i].run_at, i));
                want.truncate(n as usize);
                let rows = tx
                    .query(
                        "select run_id::text, lease_token, attempt from conveyor.claim_runs('m', 'model', $1::int)",
                        &[&(n as i32)],
                    )
                    .unwrap();
                let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                let want_ids: Vec<String> = want.iter().map(|&i| m.runs[i].id.clone()).collect();
                prop_assert_eq!(&got, &want_ids, "claim order at step {}", step);
                for (row, &i) in rows.iter().zip(&want) {
                    let r = &mut m.runs[i];
                    prop_assert_eq!(row.get::<_, i32>(2), r.attempts + 1, "attempt number shown to the worker");
                    r.status = S::Running;
                    r.token = Some(row.get(1));
                    r.lease_until = m.now + LEASE;
                    r.events.push("run.started");
                }
            }
            Op::Complete { pick: p }
            | Op::Fail { pick: p, .. }
            | Op::Release { pick: p, .. }
            | Op::Return { pick: p } => {
                let Some(i) = pick(&m.running(), p) else { continue };
                let (id, token) = (m.runs[i].id.clone(), m.runs[i].token.unwrap());
                let (sql, fin) = match *op {
                    Op::Complete { .. } => {
                        ("select conveyor.complete_run($1::text, $2)::text".to_string(), Fin::Succeeded)
                    }
                    Op::Fail { retryable, .. } => (
                        format!(
                            "select conveyor.fail_run($1::text, $2, 'model failure', retryable => {retryable})::text"
                        ),
                        Fin::Failure { retryable },
                    ),
                    Op::Release { delay, .. } => (
                        format!("select conveyor.release_run($1::text, $2, '{delay}s')::text"),
                        Fin::Released { delay },
                    ),
                    _ => ("select conveyor.return_run($1::text, $2)::text".to_string(), Fin::Interrupted),
                };
                let got: String = tx.query_one(sql.as_str(), &[&id, &token]).unwrap().get(0);
                let want = m.end(i, fin);
                prop_assert_eq!(got, want.name(), "status returned at step {}", step);
            }
            Op::Heartbeat { pick: p } => {
                let Some(i) = pick(&m.running(), p) else { continue };
                let r = &mut m.runs[i];
                let cancel: bool = tx
                    .query_one("select conveyor.heartbeat($1::text, $2)", &[&r.id, &r.token.unwrap()])
                    .unwrap()
                    .get(0);
                prop_assert_eq!(cancel, r.cancel_requested);
                r.lease_until = m.now + LEASE;
            }
            Op::Cancel { pick: p } | Op::Retry { pick: p } | Op::StaleComplete { pick: p } => {
                let all: Vec<usize> = (0..m.runs.len()).collect();
                let Some(i) = pick(&all, p) else { continue };
                let r = &mut m.runs[i];
                let sql = match op {
                    Op::Cancel { .. } => "select conveyor.cancel_run($1::text)::text",
                    Op::Retry { .. } => "select conveyor.retry_run($1::text)::text",
                    _ => "select conveyor.complete_run($1::text, gen_random_uuid())::text",
                };
                tx.batch_execute("savepoint op").unwrap();
                let got = tx.query_one(sql, &[&r.id]).map(|row| row.get::<_, String>(0)).map_err(|e| sqlstate(&e));
                if got.is_err() {
                    tx.batch_execute("rollback to savepoint op").unwrap();
                }
                let want: Result<String, String> = match op {
                    Op::Cancel { .. } if r.status.waiting() || r.status == S::Queued => {
                        r.status = S::Cancelled;
                        r.events.push("run.cancelled");
                        Ok("cancelled".into())
                    }
                    Op::Cancel { .. } if r.status == S::Running => {
                        if !r.cancel_requested {
                            r.cancel_requested = true;
                            r.events.push("run.cancel_requested");
                        }
                        Ok("cancel_requested".into())
                    }
                    Op::Cancel { .. } => Err("CV006".into()),
                    Op::Retry { .. } if matches!(r.status, S::Failed | S::Cancelled | S::Succeeded) => {
                        r.status = S::Queued;
                        r.failure_base = r.failures;
                        r.run_at = m.now;
                        r.cancel_requested = false;
                        r.events.push("run.retried");
                        Ok("queued".into())
                    }
                    Op::Retry { .. } => Err("CV005".into()),
                    _ => Err("CV001".into()),
                };
                prop_assert_eq!(got, want, "{:?} at step {}", op, step);
            }
            Op::Tick => {
                // expire: leases that ran out, oldest first (a cancel request makes it stopped)
                let mut expired: Vec<usize> =
                    m.running().into_iter().filter(|&i| m.runs[i].lease_until <= m.now).collect();
                expired.sort_by_key(|&i| (m.runs[i].lease_until, i));
                let (mut crashed, mut stopped) = (0, 0);
                for i in expired {
                    if m.runs[i].cancel_requested {
                        stopped += 1;
                    } else {
                        crashed += 1;
                    }
                    m.end(i, Fin::Failure { retryable: true });
                }
                let mut delivered = 0;
                for r in m.runs.iter_mut().filter(|r| r.status.waiting() && r.run_at <= m.now) {
                    r.status = S::Queued;
                    r.events.push("run.delivery_requested");
                    delivered += 1;
                }
                let row = tx.query_one("select crashed, stopped, delivered from conveyor.tick()", &[]).unwrap();
                let got: (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
                prop_assert_eq!(got, (crashed, stopped, delivered), "tick counts at step {}", step);
            }
            Op::Advance { secs } => {
                m.now += secs;
                set_clock(tx, m.now);
            }
        }
        check(tx, &m, step, op)?;
    }
    Ok(())
}

#[test]
fn random_operation_sequences_agree_with_the_state_machine_model() {
    let (db, client) = fresh_db("it_model");
    let client = RefCell::new(client);
    let cases: u32 = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
    let mut runner = TestRunner::new(Config { cases, max_shrink_iters: 500, ..Config::default() });
    let steps = std::cell::Cell::new(0usize);
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        let mut c = client.borrow_mut();
        let mut tx = c.transaction().unwrap();
        steps.set(steps.get() + ops.len());
        let outcome = run_case(&mut tx, &ops);
        tx.rollback().unwrap();
        outcome
    });
    println!("model check: {cases} random sequences, {} steps, each checked against the model", steps.get());
    drop(client);
    drop_db(&db);
    if let Err(e) = result {
        panic!("{e}");
    }
}
