//! Test support: the otp-dispatcher binary as a child process, a real SMTP
//! server on loopback, and async access to the test database.
//!
//! Runs against the cluster `scripts/test.sh` starts (PG_OTP_TEST_HOST,
//! PG_OTP_TEST_PORT), in its own database so that messages other tests leave
//! queued are never delivered here.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

pub const DB: &str = "pg_otp_dispatch";
pub const WAIT: Duration = Duration::from_secs(30);

/// A unique scratch directory under /tmp.
pub fn scratch_dir(label: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "otp-dispatch-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn connect(user: &str) -> Client {
    let config = tokio::task::spawn_blocking({
        let user = user.to_owned();
        move || pg_otp_integration::connection_string(DB, &user)
    })
    .await
    .unwrap();
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

pub async fn dispatcher_url() -> String {
    tokio::task::spawn_blocking(|| {
        pg_otp_integration::connection_string(DB, pg_otp_integration::SENDER)
    })
    .await
    .unwrap()
}

/// The code carried by a WhatsApp request body.
pub fn code_in(body: &serde_json::Value) -> String {
    body["template"]["components"][0]["parameters"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The JSON bodies a fake Graph API (wiremock) received, oldest first.
pub async fn whatsapp_requests(server: &wiremock::MockServer) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// Empties the outbox, challenges and sessions; adds the people the tests use.
pub async fn reset(db: &Client) {
    db.batch_execute(
        "TRUNCATE otp.outbox, otp.challenge, otp.session;
         INSERT INTO people VALUES ('flaky', NULL, 'flaky@example.com'), ('nobody', NULL, 'nobody@example.com')
             ON CONFLICT DO NOTHING;",
    )
    .await
    .unwrap();
}

/// Issues a code for `person` in `conversation` of agent `agent`.
pub async fn issue_for(app: &Client, agent: &str, conversation: &str, person: &str) -> String {
    app.query_one(
        "SELECT status FROM otp_issue($1, $2, $3)",
        &[&agent, &conversation, &person],
    )
    .await
    .unwrap()
    .get(0)
}

pub async fn verify(app: &Client, conversation: &str, code: &str) -> String {
    app.query_one(
        "SELECT status FROM otp_verify('it', $1, $2)",
        &[&conversation, &code],
    )
    .await
    .unwrap()
    .get(0)
}

/// States of the conversation's messages, oldest first, e.g. ["sent"].
pub async fn message_states(db: &Client, conversation: &str) -> Vec<String> {
    db.query(
        "SELECT state FROM otp.outbox WHERE conversation = $1 ORDER BY id",
        &[&conversation],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Polls `check` every 25 ms until it yields a value; fails after `limit`.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "gave up waiting for {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every message of the conversation is in a final state.
pub async fn wait_until_final(db: &Client, conversation: &str) -> Vec<String> {
    wait_for(
        &format!("messages of {conversation} to finish"),
        WAIT,
        async || {
            let states = message_states(db, conversation).await;
            let done = !states.is_empty()
                && states
                    .iter()
                    .all(|s| !matches!(s.as_str(), "queued" | "sending"));
            done.then_some(states)
        },
    )
    .await
}

/// otp-dispatcher running as a child process; stdout and stderr go to files.
pub struct Dispatcher {
    child: Child,
    dir: PathBuf,
}

impl Dispatcher {
    pub async fn start(args: &[&str]) -> Self {
        let url = dispatcher_url().await;
        let mut with_url = vec!["--database-url", url.as_str()];
        with_url.extend_from_slice(args);
        Self::start_without_url(&with_url).await
    }

    /// Starts it with `args` only (which must say where the database is).
    pub async fn start_without_url(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Starts it with `args` only and these environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        // (the connection fixture must exist before the dispatcher connects)
        dispatcher_url().await;
        let dir = scratch_dir("dispatcher");
        let child = Command::new(env!("CARGO_BIN_EXE_otp-dispatcher"))
            .args(["--poll-interval-ms", "200"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("OTP_DATABASE_URL")
            .env("OTP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("starting otp-dispatcher");
        let dispatcher = Dispatcher { child, dir };
        wait_for("the dispatcher to connect", WAIT, async || {
            dispatcher
                .logs()
                .contains("listening on otp_outbox")
                .then_some(())
        })
        .await;
        dispatcher
    }

    /// Everything it logged (standard error).
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// What it printed on standard output (the console transport).
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGTERM, then waits for it to exit.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        wait_for("the dispatcher to exit", WAIT, async || {
            self.child.try_wait().unwrap()
        })
        .await
    }

    /// kill -9: no chance to finish or report anything.
    pub fn kill_hard(mut self) {
        self.signal("KILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real SMTP server on 127.0.0.1 (aiosmtpd, from Debian's python3-aiosmtpd).
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let dir = scratch_dir("smtp");
        let port = free_port();
        let mut child = Command::new("/usr/bin/python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_sink.py"))
            .args(["--port", &port.to_string(), "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the SMTP server (is python3-aiosmtpd installed?)");
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the SMTP server did not start");
        SmtpSink { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The raw messages received so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
