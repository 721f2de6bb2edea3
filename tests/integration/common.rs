//! Connections to the cluster `make test` starts (CONVEYOR_TEST_HOST/PORT/DB).

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the integration tests with `make test`"))
}

pub fn config(db: &str) -> String {
    format!("host={} port={} user=postgres dbname={db}", env("CONVEYOR_TEST_HOST"), env("CONVEYOR_TEST_PORT"))
}

/// A connection to the database the background worker serves.
pub fn connect() -> Client {
    connect_to(&env("CONVEYOR_TEST_DB"))
}

pub fn connect_to(db: &str) -> Client {
    Client::connect(&config(db), NoTls).unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process, for tasks and queues, so tests can share a database.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A new database with the extension (no background worker there: tests drive tick by hand
/// and move the clock without touching other tests' runs). Dropped by the caller or the run.
pub fn fresh_db(prefix: &str) -> (String, Client) {
    let name = unique(prefix).to_lowercase();
    let mut admin = connect_to("postgres");
    admin.batch_execute(&format!("create database {name}")).unwrap();
    let mut client = connect_to(&name);
    client.batch_execute("create extension pg_conveyor").unwrap();
    (name, client)
}
