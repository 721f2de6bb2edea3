//! Rescue on backend death (bind_session): a run bound to the session that claimed it is
//! claimable again as soon as tick sees that session gone, without waiting for its lease. The
//! workers here are real client processes (psql) that claim and then sit idle, as a worker does
//! while it works; the test SIGKILLs them, or ends their backend with pg_terminate_backend, and
//! measures how long the run took to be claimable again, against the lease-expiry path.

use crate::common::{connect, env, pg_bindir, unique, wait_for};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

/// A psql session that claimed one run of `queue` and now idles, its stdin kept open.
struct Holder {
    child: Child,
    _stdin: ChildStdin,
    pid: i32,
    run: String,
}

fn holder(queue: &str, lease: &str, bind: bool) -> Holder {
    let mut child = Command::new(format!("{}/psql", pg_bindir()))
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &env("CONVEYOR_TEST_HOST"), "-p", &env("CONVEYOR_TEST_PORT"), "-U", "postgres"])
        .args(["-d", &env("CONVEYOR_TEST_DB")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start psql");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        // always one line, so that a claim that found nothing fails the test instead of hanging it
        "select pg_backend_pid(); select coalesce((select run_id::text from conveyor.claim_runs('{queue}', 'psql-holder', 1, '{lease}', bind_session => {bind})), 'none');"
    )
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let run = lines.next().expect("a claimed run").unwrap().trim().to_string();
    assert_ne!(run, "none", "the holder claimed a run of {queue}");
    Holder { child, _stdin: stdin, pid, run }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Seconds from `since` until every run is claimable again (queued), each on its own.
fn until_claimable(runs: &[String], since: Instant) -> Vec<f64> {
    let mut client = connect();
    let mut left: Vec<&String> = runs.iter().collect();
    let mut took = Vec::new();
    wait_for(60.0, "the runs to be claimable again", || {
        left.retain(|id| {
            let status: String = client
                .query_one("select status::text from conveyor.runs where id = $1::text::conveyor.ulid", &[id])
                .unwrap()
                .get(0);
            if status == "queued" {
                took.push(since.elapsed().as_secs_f64());
                false
            } else {
                true
            }
        });
        left.is_empty().then_some(())
    });
    took
}

#[test]
fn a_run_bound_to_a_dead_session_is_claimable_again_without_waiting_for_its_lease() {
    let n = 5;
    let (bound_q, killed_q, lease_q) = (unique("rescue_bound"), unique("rescue_term"), unique("rescue_lease"));
    let mut client = connect();
    for (q, task) in [(&bound_q, "b"), (&killed_q, "t"), (&lease_q, "l")] {
        client
            .query(
                "select conveyor.define_task($1, queue => $2, max_attempts => 5, delay => '0s')",
                &[&format!("{q}_{task}"), q],
            )
            .unwrap();
        for _ in 0..n {
            client.query("select conveyor.enqueue($1)", &[&format!("{q}_{task}")]).unwrap();
        }
    }
    // the bound holders take 10-minute leases, the unbound ones 3 seconds
    let mut sigkilled: Vec<Holder> = (0..n).map(|_| holder(&bound_q, "10m", true)).collect();
    let terminated: Vec<Holder> = (0..n).map(|_| holder(&killed_q, "10m", true)).collect();
    let mut unbound: Vec<Holder> = (0..n).map(|_| holder(&lease_q, "3s", false)).collect();

    // live sessions are left alone, however many ticks pass (the worker ticks every 200 ms)
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let running: i64 = client
        .query_one(
            "select count(*) from conveyor.runs where queue = any($1) and status = 'running'",
            &[&vec![bound_q.clone(), killed_q.clone()]],
        )
        .unwrap()
        .get(0);
    assert_eq!(running, 2 * n as i64, "no live bound session is rescued");
    let sessions: i64 = client
        .query_one(
            "select count(*) from conveyor.sessions where pid = any($1)",
            &[&sigkilled.iter().chain(&terminated).map(|h| h.pid).collect::<Vec<i32>>()],
        )
        .unwrap()
        .get(0);
    assert_eq!(sessions, 2 * n as i64, "each bound session has its row");

    let start = Instant::now();
    for h in sigkilled.iter_mut().chain(unbound.iter_mut()) {
        h.child.kill().unwrap(); // SIGKILL: the client process dies, its socket closes
    }
    for h in &terminated {
        client.query("select pg_terminate_backend($1)", &[&h.pid]).unwrap();
    }
    let runs = |hs: &[Holder]| hs.iter().map(|h| h.run.clone()).collect::<Vec<_>>();
    let (k, t, l) = std::thread::scope(|s| {
        let k = s.spawn(|| until_claimable(&runs(&sigkilled), start));
        let t = s.spawn(|| until_claimable(&runs(&terminated), start));
        let l = s.spawn(|| until_claimable(&runs(&unbound), start));
        (k.join().unwrap(), t.join().unwrap(), l.join().unwrap())
    });
    println!(
        "rescue on backend death ({n} runs each, tick every 200 ms): claimable again after SIGKILL of the worker: \
         median {:.2}s (max {:.2}s); after pg_terminate_backend: median {:.2}s; unbound, by lease expiry (3s lease): \
         median {:.2}s",
        median(k.clone()),
        k.iter().cloned().fold(0.0, f64::max),
        median(t.clone()),
        median(l.clone())
    );

    // the bound runs ended because their session did, long before their 10-minute leases
    let wrong: Vec<String> = client
        .query(
            "select a.run_id::text || ' ' || a.outcome || ': ' || (a.error ->> 'message')
               from conveyor.attempts a
              where a.queue = any($1)
                and not (a.outcome = 'crashed' and a.error ->> 'message' like 'the session that claimed it (backend pid %')",
            &[&vec![bound_q.clone(), killed_q.clone()]],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(wrong.is_empty(), "bound runs not rescued as a gone session: {wrong:?}");
    let lease_ended: i64 = client
        .query_one(
            "select count(*) from conveyor.attempts
              where queue = $1 and outcome = 'crashed' and error ->> 'message' like 'no heartbeat before the lease expired%'",
            &[&lease_q],
        )
        .unwrap()
        .get(0);
    assert_eq!(lease_ended, n as i64, "unbound runs wait for their lease");
    // a gone session's row goes once its runs are ended
    wait_for(10.0, "the gone sessions' rows to be removed", || {
        let left: i64 = client
            .query_one(
                "select count(*) from conveyor.sessions where pid = any($1)",
                &[&sigkilled.iter().chain(&terminated).map(|h| h.pid).collect::<Vec<i32>>()],
            )
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    });
    for mut h in terminated {
        let _ = h.child.kill();
        let _ = h.child.wait();
    }
    for mut h in sigkilled.into_iter().chain(unbound) {
        let _ = h.child.wait();
    }
}
