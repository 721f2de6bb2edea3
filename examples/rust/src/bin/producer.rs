//! Define the Rust demo tasks and enqueue COUNT runs of each into the queue `rust`.
//!
//!     producer [--count N] [--batch TAG]
//!
//! Connects with the usual PG* variables. Every payload carries {"batch": TAG, "n": i}, so one
//! batch's runs can be told from earlier ones (TAG defaults to the current time).

use pg_conveyor_example::{connect, BoxError};
use serde_json::{json, Value};

const QUEUE: &str = "rust";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let (mut count, mut batch) = (
        3,
        format!("rust-{}", std::time::UNIX_EPOCH.elapsed()?.as_secs()),
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--count", Some(n)) => count = n.parse()?,
            ("--batch", Some(tag)) => batch = tag,
            _ => return Err("usage: producer [--count N] [--batch TAG]".into()),
        }
    }

    let (mut client, _notifications) = connect("rust producer").await?;
    let tx = client.transaction().await?;
    // define_task is create-or-replace: running the producer again is harmless
    tx.execute(
        "select conveyor.define_task('rust.ok', queue => $1)",
        &[&QUEUE],
    )
    .await?;
    tx.execute(
        "select conveyor.define_task('rust.flaky', queue => $1, max_attempts => 3, delay => '1s')",
        &[&QUEUE],
    )
    .await?;
    tx.execute(
        "select conveyor.define_task('rust.wait', queue => $1)",
        &[&QUEUE],
    )
    .await?;
    tx.execute(
        "select conveyor.define_task('rust.slow', queue => $1)",
        &[&QUEUE],
    )
    .await?;

    for task in ["rust.ok", "rust.flaky", "rust.wait", "rust.slow"] {
        let payloads: Vec<Value> = (1..=count)
            .map(|n| match task {
                "rust.slow" => json!({"batch": batch, "n": n, "seconds": 2.5}),
                _ => json!({"batch": batch, "n": n}),
            })
            .collect();
        // enqueue_many: one statement for the lot (a Vec<Value> is a jsonb[]); ids as text
        let ids: Vec<String> = tx
            .query(
                "select e.id::text from conveyor.enqueue_many($1, $2) as e(id)",
                &[&task, &payloads],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        println!("enqueued {} x {task}: {}", ids.len(), ids.join(", "));
    }
    tx.commit().await?; // the runs become claimable (and workers are woken) here
    Ok(())
}
