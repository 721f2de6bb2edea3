//! Enqueue in the same transaction as the application's own write.
//!
//!     app [--batch TAG]
//!
//! An order is inserted into the app table rust_orders and a run of rust.ok is enqueued for it
//! in ONE transaction: commit, and both exist; roll back, and neither does. Exits 1 if that does
//! not hold. Connects with the usual PG* variables; run the producer first (it defines the task).

use pg_conveyor_client::{config_from_env, connect, enqueue, BoxError, EnqueueOptions};
use serde_json::json;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// The application's unit of work: the order row and its run commit or vanish together.
async fn place_order(client: &mut Client, reference: &str, batch: &str, fail: bool) -> Result<(), BoxError> {
    let tx = client.transaction().await?;
    let order_id: i64 = tx
        // unnamed statements (query_typed), so this runs through a transaction pooler too
        .query_typed(
            "insert into rust_orders (ref, item) values ($1, $2) returning id",
            &[(&reference, Type::TEXT), (&"book", Type::TEXT)],
        )
        .await?[0]
        .get(0);
    let payload = json!({"batch": batch, "order_ref": reference, "order_id": order_id});
    // on the same transaction: the run commits or rolls back with the order
    let run_id = enqueue(&tx, "rust.ok", &payload, None, &EnqueueOptions::default()).await?;
    println!("order {reference}: inserted order {order_id}, enqueued run {run_id}");
    if fail {
        // e.g. payment declined: the whole transaction is rolled back
        tx.rollback().await?; // (dropping `tx` without commit would roll back too)
        println!("order {reference}: rolled back");
        return Ok(());
    }
    tx.commit().await?;
    Ok(())
}

async fn count(client: &Client, reference: &str) -> Result<(i64, i64), BoxError> {
    let rows = client
        .query_typed(
            "select (select count(*) from rust_orders where ref = $1),
                    (select count(*) from conveyor.runs where task = 'rust.ok' and payload->>'order_ref' = $1)",
            &[(&reference, Type::TEXT)],
        )
        .await?;
    Ok((rows[0].get(0), rows[0].get(1)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let batch = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [flag, tag] if flag == "--batch" => tag.clone(),
        [] => format!("rust-{}", std::time::UNIX_EPOCH.elapsed()?.as_secs()),
        _ => return Err("usage: app [--batch TAG]".into()),
    };
    let (mut client, _notifications) = connect(config_from_env().application_name("rust app")).await?;
    client
        .batch_execute(
            "create table if not exists rust_orders (
                id bigserial primary key, ref text not null unique, item text not null,
                created_at timestamptz not null default now())",
        )
        .await?;
    let (committed, rolled_back) = (format!("{batch}-commit"), format!("{batch}-rollback"));
    place_order(&mut client, &committed, &batch, false).await?;
    place_order(&mut client, &rolled_back, &batch, true).await?;

    let mut ok = true;
    for (reference, want) in [(&committed, (1, 1)), (&rolled_back, (0, 0))] {
        let got = count(&client, reference).await?;
        let wrong = if got == want { String::new() } else { format!("  WRONG, want {want:?}") };
        println!("order {reference}: {} order row(s), {} run(s){wrong}", got.0, got.1);
        ok &= got == want;
    }
    std::process::exit(if ok { 0 } else { 1 });
}
