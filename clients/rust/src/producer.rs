//! Enqueue runs on the caller's client or transaction: the run exists if and only if the
//! caller's transaction commits.

use std::time::SystemTime;

use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use crate::types::{Duration, Ulid};

/// The options of `conveyor.enqueue` besides the task and payload; `Default` leaves each to the
/// task's definition.
#[derive(Clone, Debug, Default)]
pub struct EnqueueOptions {
    pub run_at: Option<SystemTime>,
    pub delay: Option<Duration>,
    pub priority: Option<i32>,
    pub queue: Option<String>,
    pub parent_run_id: Option<Ulid>,
    /// The run's concurrency key (a tenant, an account): key_concurrency and key_rate_limit
    /// count per key, and the keys of a queue take turns. `enqueue_many` gives it to every run.
    pub key: Option<String>,
}

const ENQUEUE: &str = "select conveyor.enqueue($1, $2, run_at => $3, delay => $4, priority => $5, queue => $6,
                       idempotency_key => $7, parent_run_id => $8::conveyor.ulid, key => $9)::uuid";
const ENQUEUE_MANY: &str = "select e.id::uuid from conveyor.enqueue_many($1, $2, run_at => $3, delay => $4,
                            priority => $5, queue => $6, idempotency_keys => $7,
                            parent_run_id => $8::conveyor.ulid,
                            keys => array_fill($9::text, array[cardinality($2::jsonb[])])) as e(id)";

/// Enqueue one run of `task` on `client` (a `Client` or a `Transaction`: nothing is committed
/// here). With an idempotency key, enqueueing again returns the same run. Statements are
/// unnamed (`query_typed`), so this works through a transaction pooler too.
pub async fn enqueue(
    client: &impl GenericClient,
    task: &str,
    payload: &Value,
    idempotency_key: Option<&str>,
    options: &EnqueueOptions,
) -> Result<Ulid, tokio_postgres::Error> {
    let o = options;
    let params: [(&(dyn ToSql + Sync), Type); 9] = [
        (&task, Type::TEXT),
        (payload, Type::JSONB),
        (&o.run_at, Type::TIMESTAMPTZ),
        (&o.delay, Type::INTERVAL),
        (&o.priority, Type::INT4),
        (&o.queue, Type::TEXT),
        (&idempotency_key, Type::TEXT),
        (&o.parent_run_id, Type::UUID),
        (&o.key, Type::TEXT),
    ];
    Ok(client.query_typed(ENQUEUE, &params).await?[0].get(0))
}

/// Enqueue one run per payload in one statement; the ids in payload order.
pub async fn enqueue_many(
    client: &impl GenericClient,
    task: &str,
    payloads: &[Value],
    idempotency_keys: Option<&[String]>,
    options: &EnqueueOptions,
) -> Result<Vec<Ulid>, tokio_postgres::Error> {
    let o = options;
    let params: [(&(dyn ToSql + Sync), Type); 9] = [
        (&task, Type::TEXT),
        (&payloads, Type::JSONB_ARRAY),
        (&o.run_at, Type::TIMESTAMPTZ),
        (&o.delay, Type::INTERVAL),
        (&o.priority, Type::INT4),
        (&o.queue, Type::TEXT),
        (&idempotency_keys, Type::TEXT_ARRAY),
        (&o.parent_run_id, Type::UUID),
        (&o.key, Type::TEXT),
    ];
    Ok(client.query_typed(ENQUEUE_MANY, &params).await?.iter().map(|r| r.get(0)).collect())
}
