//! Integration tests: a real cluster, real connections, several clients at once.
//! Run by `make test`, which starts the cluster and sets CONVEYOR_TEST_HOST/PORT/DB.

mod bad_input;
mod common;
mod dedup;
mod docs;
mod failover;
mod faults;
mod hostile;
mod keys;
mod lifecycle;
mod maintenance;
mod model;
mod pooler;
mod rate;
mod rescue;
mod router;
mod security;
