//! Integration tests: a real cluster, real connections, several clients at once.
//! Run by `make test`, which starts the cluster and sets CONVEYOR_TEST_HOST/PORT/DB.

mod common;
mod lifecycle;
mod maintenance;
mod faults;
mod model;
mod bad_input;
mod security;
mod docs;
