//! Harness for the integration tests: connections to the throwaway cluster
//! that `scripts/test.sh` starts, a fixture agent, and helpers to run many
//! real connections at the same moment.
//!
//! The cluster is found through `PG_OTP_TEST_HOST` (its socket directory) and
//! `PG_OTP_TEST_PORT`; tests that read the server log or WAL also need
//! `PG_OTP_TEST_LOG` and `PG_OTP_TEST_PGDATA`. Without them the tests fail
//! rather than pass vacuously.

use postgres::fallible_iterator::FallibleIterator;
use std::collections::HashSet;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

pub const DATABASE: &str = "pg_otp_it";
/// Role of the chat application: EXECUTE on the conversation functions only.
pub const APP: &str = "it_app";
/// Role of the delivery process: EXECUTE on the outbox protocol only.
pub const SENDER: &str = "it_sender";
/// The fixture agent: people(id, phone, email), 3 attempts.
pub const AGENT: &str = "it";

pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run these tests through scripts/test.sh"))
}

/// A new connection to `dbname` as `user`, without preparing the fixture:
/// for tests that make databases of their own.
pub fn connect_to(user: &str, dbname: &str) -> Client {
    let config = format!(
        "host={} port={} user={user} dbname={dbname} application_name=pg_otp_it",
        env("PG_OTP_TEST_HOST"),
        env("PG_OTP_TEST_PORT")
    );
    Client::connect(&config, NoTls).unwrap_or_else(|err| panic!("connect as {user}: {err}"))
}

/// A new connection to the test database as `user`, after the fixture exists.
pub fn connect(user: &str) -> Client {
    connect_in(DATABASE, user)
}

pub fn superuser() -> Client {
    connect("postgres")
}

/// A new connection to `database` as `user`, after its fixture exists.
pub fn connect_in(database: &str, user: &str) -> Client {
    fixture(database);
    connect_to(user, database)
}

/// A new, empty database `name`, connected as the superuser (dropped first
/// if a previous run left it).
pub fn fresh_database(name: &str) -> Client {
    let mut admin = connect_to("postgres", "postgres");
    // (separate statements: neither may run in a transaction block)
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    connect_to("postgres", name)
}

/// The connection string of `database` for `user`, for other programs.
pub fn connection_string(database: &str, user: &str) -> String {
    fixture(database);
    format!(
        "host={} port={} user={user} dbname={database}",
        env("PG_OTP_TEST_HOST"),
        env("PG_OTP_TEST_PORT")
    )
}

static PREPARED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Creates the database, the extension, two roles and the agent, once per
/// database and test binary (idempotent across binaries).
fn fixture(database: &str) {
    let mut prepared = PREPARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !prepared
        .get_or_insert_with(HashSet::new)
        .insert(database.to_owned())
    {
        return;
    }
    {
        let mut admin = connect_to("postgres", "postgres");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .unwrap()
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {database}"))
                .unwrap();
        }
        let mut db = connect_to("postgres", database);
        db.batch_execute(&format!(
            r#"
            CREATE EXTENSION IF NOT EXISTS pg_otp;
            DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP}') THEN CREATE ROLE {APP} LOGIN; END IF;
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SENDER}') THEN CREATE ROLE {SENDER} LOGIN; END IF;
            END $$;
            GRANT otp_app TO {APP};
            GRANT otp_dispatcher TO {SENDER};
            CREATE TABLE IF NOT EXISTS people (id text PRIMARY KEY, phone text, email text);
            -- no runs of six digits in the fixture: the plaintext scan looks for codes
            INSERT INTO people VALUES ('p1', '+34 600 12 34 78', 'p.one@example.com'),
                                      ('p2', NULL, 'p.two@example.com')
                ON CONFLICT DO NOTHING;
            -- limits out of the way: these tests issue many codes for one person
            SELECT otp_configure(agent => '{AGENT}', source => 'people', id_column => 'id',
                                 phone_column => 'phone', email_column => 'email',
                                 max_codes => 1000000, resend_cooldown => '0', lockout_threshold => 100);
            "#
        ))
        .unwrap();
    }
}

/// A new person, reachable by email only, that no other test knows.
pub fn new_person(db: &mut Client, label: &str) -> String {
    let id = conversation(label);
    db.execute(
        "INSERT INTO people VALUES ($1, NULL, $1 || '@example.com')",
        &[&id],
    )
    .unwrap();
    id
}

/// A conversation id no other test uses.
pub fn conversation(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{nanos}")
}

/// Issues a code for person `p1` in `conversation`, as the application.
pub fn issue(app: &mut Client, conversation: &str) -> String {
    try_issue(app, conversation).unwrap()
}

/// `issue`, for a test that expects it may fail.
pub fn try_issue(app: &mut Client, conversation: &str) -> Result<String, postgres::Error> {
    app.query_one(
        "SELECT status FROM otp_issue($1, $2, 'p1')",
        &[&AGENT, &conversation],
    )
    .map(|row| row.get(0))
}

/// Claims every due message as the dispatcher and returns the code queued
/// for `conversation` (the others stay leased, as a real dispatcher's would).
pub fn claim_code(sender: &mut Client, conversation: &str) -> String {
    let rows = sender
        .query(
            "SELECT conversation, code FROM otp_outbox_claim(batch_size => 1000)",
            &[],
        )
        .unwrap();
    rows.iter()
        .filter(|row| row.get::<_, &str>(0) == conversation)
        .map(|row| row.get::<_, String>(1))
        .last()
        .unwrap_or_else(|| panic!("no message for {conversation}"))
}

/// A 6-digit code that is not `code`.
pub fn other_code(code: &str, offset: u32) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1 + offset % 999_999) % 1_000_000)
}

/// Opens `n` connections as `user`, then runs `work` on all of them at the
/// same moment (a barrier releases the threads together) and returns what
/// each returned, in connection order.
pub fn all_at_once<T: Send>(
    n: usize,
    user: &str,
    work: impl Fn(&mut Client, usize) -> T + Sync,
) -> Vec<T> {
    let clients: Vec<Client> = (0..n).map(|_| connect(user)).collect();
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                let barrier = &barrier;
                let work = &work;
                scope.spawn(move || {
                    barrier.wait();
                    work(&mut client, i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect()
    })
}

/// How many of `statuses` equal `word`.
pub fn count(statuses: &[String], word: &str) -> usize {
    statuses.iter().filter(|s| s.as_str() == word).count()
}

/// Runs pg_ctl (as postgres) on the test cluster, e.g. `["-m", "fast", "restart"]`.
/// Waits for the action to complete.
pub fn pg_ctl(action: &[&str]) {
    let (pgdata, log) = (env("PG_OTP_TEST_PGDATA"), env("PG_OTP_TEST_LOG"));
    let status = std::process::Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            pg_bin().join("pg_ctl").to_str().unwrap(),
            "-D",
            &pgdata,
            "-l",
            &log,
            "-w",
        ])
        .args(action)
        // pgrx would put backtraces into client-visible error details
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running pg_ctl");
    assert!(status.success(), "pg_ctl {action:?} failed");
}

/// Polls `condition` every 20 ms until it holds; fails after `limit`.
/// For waiting on something asynchronous (a config reload), never for timing.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "gave up waiting for {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the PostgreSQL server binaries are (initdb, pg_ctl): as
/// scripts/postgres.sh says (PG_OTP_TEST_BINDIR), else Debian's 15.
pub fn pg_bin() -> std::path::PathBuf {
    std::env::var_os("PG_OTP_TEST_BINDIR")
        .map(Into::into)
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
}

/// The `otp.secret_key` line for a test's own cluster (`Cluster::start`).
pub const CLUSTER_SECRET: &str =
    "otp.secret_key = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'";

/// A cluster of a test's own, for settings the shared cluster must not have
/// (no preloaded library, a variable in the postmaster's environment).
/// Runs as postgres with its socket in its directory under /tmp and no TCP;
/// stopped and removed when dropped.
pub struct Cluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl Cluster {
    /// initdb, `conf` appended to postgresql.conf, started with `env` added
    /// to the postmaster's environment (and RUST_BACKTRACE removed unless
    /// `env` sets it).
    pub fn start(name: &str, port: u16, conf: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = std::path::PathBuf::from(format!("/tmp/pg_otp-it-{name}"));
        let cluster = Cluster { dir, port };
        cluster.stop();
        let _ = std::fs::remove_dir_all(&cluster.dir);
        std::fs::create_dir_all(&cluster.dir).unwrap();
        run_as_postgres(
            std::process::Command::new("chown").args(["postgres:", cluster.dir.to_str().unwrap()]),
            false,
        );
        let data = cluster.dir.join("data");
        run_as_postgres(
            std::process::Command::new(pg_bin().join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            true,
        );
        let mut lines = vec![
            format!("port = {port}"),
            "listen_addresses = ''".to_owned(),
            format!("unix_socket_directories = '{}'", cluster.dir.display()),
        ];
        lines.extend(conf.iter().map(|line| (*line).to_owned()));
        let config = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("\n# --- test cluster ---\n");
        text.push_str(&lines.join("\n"));
        text.push('\n');
        std::fs::write(&config, text).unwrap();
        let mut start = std::process::Command::new(pg_bin().join("pg_ctl"));
        start
            .args(["-w", "-t", "60", "-l"])
            .arg(cluster.dir.join("server.log"))
            .arg("-D")
            .arg(&data)
            .arg("start")
            .env_remove("RUST_BACKTRACE");
        for (name, value) in env {
            start.env(name, value);
        }
        run_as_postgres(&mut start, true);
        cluster
    }

    pub fn connect(&self, user: &str, dbname: &str) -> Client {
        let config = format!(
            "host={} port={} user={user} dbname={dbname} application_name=pg_otp_it",
            self.dir.display(),
            self.port
        );
        Client::connect(&config, NoTls).unwrap_or_else(|err| panic!("connect as {user}: {err}"))
    }

    /// Its directory (the data directory is `data` inside).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            run_as_postgres(
                std::process::Command::new(pg_bin().join("pg_ctl"))
                    .args(["-m", "immediate", "-w", "-D"])
                    .arg(&data)
                    .arg("stop"),
                true,
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` as the postgres user (PostgreSQL refuses root), or as is
/// when `as_postgres` is false; panics when it fails.
fn run_as_postgres(command: &mut std::process::Command, as_postgres: bool) {
    let status = if as_postgres {
        let mut wrapped = std::process::Command::new("runuser");
        wrapped
            .args(["-u", "postgres", "--"])
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(name, value),
                None => wrapped.env_remove(name),
            };
        }
        wrapped.stdout(std::process::Stdio::null()).status()
    } else {
        command.stdout(std::process::Stdio::null()).status()
    }
    .expect("running a PostgreSQL program");
    assert!(status.success(), "{command:?} failed");
}

/// The first notification `listener` receives, within 30 s.
pub fn next_notification(listener: &mut Client) -> postgres::Notification {
    listener
        .notifications()
        .timeout_iter(Duration::from_secs(30))
        .next()
        .expect("reading notifications")
        .expect("a notification within 30 s")
}

/// The backend process id of `client`'s connection.
pub fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}
