//! Define the Rust demo tasks and enqueue COUNT runs of each into the queue `rust`.
//!
//!     producer [--count N] [--batch TAG]
//!
//! Connects with the usual PG* variables. Every payload carries {"batch": TAG, "n": i}, so one
//! batch's runs can be told from earlier ones (TAG defaults to the current time).

use pg_conveyor_client::{config_from_env, connect, enqueue_many, BoxError, EnqueueOptions};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let (mut count, mut batch) = (3, format!("rust-{}", std::time::UNIX_EPOCH.elapsed()?.as_secs()));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--count", Some(n)) => count = n.parse()?,
            ("--batch", Some(tag)) => batch = tag,
            _ => return Err("usage: producer [--count N] [--batch TAG]".into()),
        }
    }

    let (mut client, _notifications) = connect(config_from_env().application_name("rust producer")).await?;
    let tx = client.transaction().await?;
    // define_task is create-or-replace: running the producer again is harmless
    // one simple-protocol batch: no prepared statement, so this runs through a transaction pooler too
    tx.batch_execute(
        "select conveyor.define_task('rust.ok', queue => 'rust');
         select conveyor.define_task('rust.flaky', queue => 'rust', max_attempts => 3, delay => '1s');
         select conveyor.define_task('rust.wait', queue => 'rust');
         select conveyor.define_task('rust.slow', queue => 'rust');",
    )
    .await?;

    for task in ["rust.ok", "rust.flaky", "rust.wait", "rust.slow"] {
        let payloads: Vec<Value> = (1..=count)
            .map(|n| match task {
                "rust.slow" => json!({"batch": batch, "n": n, "seconds": 2.5}),
                _ => json!({"batch": batch, "n": n}),
            })
            .collect();
        // enqueue_many: one statement for the lot, in this transaction
        let ids = enqueue_many(&tx, task, &payloads, None, &EnqueueOptions::default()).await?;
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        println!("enqueued {} x {task}: {}", ids.len(), ids.join(", "));
    }
    tx.commit().await?; // the runs become claimable (and workers are woken) here
    Ok(())
}
