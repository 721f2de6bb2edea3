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
/// and move the clock without touching other tests' runs). The caller drops it with drop_db.
pub fn fresh_db(prefix: &str) -> (String, Client) {
    let name = unique(prefix).to_lowercase();
    let mut admin = connect_to("postgres");
    admin.batch_execute(&format!("create database {name}")).unwrap();
    let mut client = connect_to(&name);
    client.batch_execute("create extension pg_conveyor").unwrap();
    (name, client)
}

/// Drop a database made by fresh_db, whoever is still connected to it.
pub fn drop_db(db: &str) {
    connect_to("postgres").execute(&format!("drop database {db} with (force)"), &[]).unwrap();
}

/// A run's status, as text.
pub fn status_of(client: &mut Client, id: &str) -> String {
    client
        .query_one("select status::text from conveyor.runs where id = $1::text::conveyor.ulid", &[&id])
        .unwrap()
        .get(0)
}

/// How many tick workers the server behind this connection runs.
pub fn tick_workers(client: &mut Client) -> i64 {
    client.query_one("select count(*) from pg_stat_activity where backend_type = 'pg_conveyor'", &[]).unwrap().get(0)
}

/// The repository root (scripts/ live there).
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

/// A cluster of its own, for tests that restart or stop the server: created with
/// scripts/cluster.sh (run as the postgres user), stopped and removed when dropped.
pub struct Cluster {
    pub dir: String,
    pub port: u16,
}

impl Cluster {
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let (dir, port) = Cluster::place(name);
        let mut args = vec!["start".to_string(), dir.clone(), port.to_string()];
        args.extend(conf.iter().map(|s| s.to_string()));
        Cluster::script(&args);
        Cluster { dir, port }
    }

    /// A fresh directory and port for a cluster named `name`.
    fn place(name: &str) -> (String, u16) {
        let port = 54400 + NEXT_PORT.fetch_add(1, Ordering::SeqCst) as u16;
        let dir = format!("/tmp/pgc-{name}-{port}");
        let _ = std::fs::remove_dir_all(&dir);
        (dir, port)
    }

    /// A streaming standby of `primary`, started: a pg_basebackup of it (-R: it follows the
    /// primary), named `name` (cluster_name, which the primary's synchronous_standby_names
    /// and pg_stat_replication see as its application_name); `conf`: lines for its
    /// postgresql.conf after the primary's (later lines win).
    pub fn standby_of(primary: &Cluster, name: &str, conf: &[&str]) -> Cluster {
        let (dir, port) = Cluster::place(name);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = std::process::Command::new("chown").args(["postgres", &dir]).status().unwrap();
            assert!(status.success(), "chown postgres {dir}");
        }
        let data = format!("{dir}/data");
        let out = as_postgres(&format!("{}/pg_basebackup", pg_bindir()))
            .args(["-D", &data, "-h", &primary.dir, "-p", &primary.port.to_string(), "-U", "postgres"])
            .args(["-R", "-X", "stream", "-c", "fast"])
            .output()
            .expect("run pg_basebackup");
        assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
        // later lines win: the copy of the primary's postgresql.conf names the primary's port
        let conf = format!(
            "\nport = {port}\nunix_socket_directories = '{dir}'\ncluster_name = '{name}'\n{}\n",
            conf.join("\n")
        );
        let mut file = std::fs::OpenOptions::new().append(true).open(format!("{data}/postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        let standby = Cluster { dir, port };
        let out = standby.pg_ctl(&["start"]);
        assert!(out.status.success(), "start the standby: {}", String::from_utf8_lossy(&out.stderr));
        standby
    }

    fn script(args: &[String]) {
        let status = std::process::Command::new(repo().join("scripts/cluster.sh"))
            .args(args)
            .status()
            .expect("run scripts/cluster.sh");
        assert!(status.success(), "scripts/cluster.sh {args:?} failed");
    }

    pub fn config(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.dir, self.port)
    }

    pub fn connect(&self, db: &str) -> Client {
        Client::connect(&self.config(db), NoTls).unwrap_or_else(|e| panic!("connect to {db} on {}: {e}", self.dir))
    }

    /// pg_ctl as the cluster's owner, e.g. `["restart", "-m", "fast"]`.
    pub fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let data = format!("{}/data", self.dir);
        let log = format!("{}/server.log", self.dir);
        as_postgres(&format!("{}/pg_ctl", pg_bindir()))
            .args(["-D", &data, "-l", &log, "-w", "-t", "60"])
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/server.log", self.dir)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        Cluster::script(&["stop".to_string(), self.dir.clone()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours
    unsafe { libc_geteuid() == 0 }
}

/// PostgreSQL's programs (pg_ctl, pg_basebackup, psql).
pub fn pg_bindir() -> String {
    let out = std::process::Command::new("/usr/bin/pg_config").arg("--bindir").output().expect("run pg_config");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A command run as the postgres user (PostgreSQL refuses to run as root), from /tmp.
pub fn as_postgres(program: &str) -> std::process::Command {
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("sudo");
        c.args(["-u", "postgres", program]);
        c
    } else {
        std::process::Command::new(program)
    };
    cmd.current_dir("/tmp");
    cmd
}

/// The connection, made anew if there is none; None (after a short pause) while the server
/// cannot be reached. Clients that survive a server crash drop theirs on any error.
pub fn reconnected<'a>(client: &'a mut Option<Client>, config: &str) -> Option<&'a mut Client> {
    if client.is_none() {
        match Client::connect(config, NoTls) {
            Ok(c) => *client = Some(c),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    client.as_mut()
}

/// Poll `f` every 20ms until it returns Some, for at most `secs` seconds.
pub fn wait_for<T>(secs: f64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed().as_secs_f64() < secs, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

static NEXT_POOLER_PORT: AtomicUsize = AtomicUsize::new(0);

/// A PgBouncer in transaction mode in front of the test cluster (scripts/pgbouncer.sh), with
/// `pool` server connections per database; stopped when dropped.
pub struct Pooler {
    pub dir: String,
    pub port: u16,
}

impl Pooler {
    pub fn start(name: &str, pool: u32) -> Pooler {
        Pooler::start_for(name, &env("CONVEYOR_TEST_HOST"), &env("CONVEYOR_TEST_PORT"), pool, 0)
    }

    /// A PgBouncer in front of the server at `host` (socket directory) and `server_port`;
    /// `query_timeout` seconds (0: none) bound each query, server connect and wait for a
    /// server connection.
    pub fn start_for(name: &str, host: &str, server_port: &str, pool: u32, query_timeout: u32) -> Pooler {
        let port = 6440 + NEXT_POOLER_PORT.fetch_add(1, Ordering::SeqCst) as u16;
        let dir = format!("/tmp/pgc-{name}-{port}");
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new(repo().join("scripts/pgbouncer.sh"))
            .args(["start", &dir, &port.to_string(), host, server_port, &pool.to_string(), &query_timeout.to_string()])
            .status()
            .expect("run scripts/pgbouncer.sh");
        assert!(status.success(), "scripts/pgbouncer.sh start failed");
        Pooler { dir, port }
    }

    pub fn config(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.dir, self.port)
    }

    pub fn connect(&self, db: &str) -> Client {
        Client::connect(&self.config(db), NoTls).unwrap_or_else(|e| panic!("connect to {db} through PgBouncer: {e}"))
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/pgbouncer.sh")).args(["stop", &self.dir]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` threads that call conveyor.tick() every 50 ms on their own connections until `stop`
/// (a race's maintenance beside its claimers).
pub fn tickers(
    db: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    n: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (db, stop) = (db.to_string(), stop.clone());
            std::thread::spawn(move || {
                let mut c = connect_to(&db);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = c.batch_execute("select conveyor.tick()");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
        })
        .collect()
}

/// Let a race run for `length`, then stop it and join every thread of it.
pub fn race_for(
    length: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
) {
    race_until(length, length, stop, handles, || true);
}

/// Let a race run for at least `least`, then on until `done()` says it did the work it is there
/// for, or `most` has passed; then stop it and join every thread of it. A slow machine (CI has
/// two cores shared by every test) runs the race longer instead of failing a bound on its work.
pub fn race_until(
    least: std::time::Duration,
    most: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
    handles: Vec<std::thread::JoinHandle<()>>,
    mut done: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    std::thread::sleep(least);
    while start.elapsed() < most && !done() {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
}
