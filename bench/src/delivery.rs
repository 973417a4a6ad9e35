//! Delivery benchmark: how fast a code reaches the provider.
//!
//! 1. Latency: codes issued one at a time; for each, the time from the
//!    moment `otp_issue` returned (its transaction committed) until the fake
//!    WhatsApp API received the request, and, for a person reachable by
//!    email only, until a real SMTP server (aiosmtpd, as in the dispatcher's
//!    tests) had the whole message. p50 / p99 / max over `--codes`, for the
//!    dispatcher and, side by side, for `--baseline-dispatcher` if given.
//! 2. Throughput: the outbox is filled with `--messages` codes while no
//!    dispatcher runs; then 1 (and then 2) dispatchers drain it. Rate is
//!    measured between the first and the last request the provider receives.
//!
//! Everything runs on this machine: the fake provider and the SMTP server on
//! 127.0.0.1, the dispatcher as a child process, PostgreSQL on a Unix socket.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::sync::Notify;
use tokio_postgres::{Client, NoTls};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const DB: &str = "pg_otp_bench";

#[derive(Parser)]
struct Args {
    /// The otp-dispatcher binary (a release build).
    #[arg(long)]
    dispatcher: String,
    /// Another otp-dispatcher binary whose latency is measured too, in the
    /// same run (say, a build of the previous release).
    #[arg(long)]
    baseline_dispatcher: Option<String>,
    /// Codes for the latency measurement.
    #[arg(long, default_value_t = 1000)]
    codes: usize,
    /// Messages for each throughput measurement.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
}

/// The fake provider: records when each message id arrived.
#[derive(Clone, Default)]
struct Arrivals {
    seen: Arc<Mutex<HashMap<i64, Instant>>>,
    changed: Arc<Notify>,
}

impl Respond for Arrivals {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let now = Instant::now();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        if let Some(id) = body["biz_opaque_callback_data"]
            .as_str()
            .and_then(|s| s.parse().ok())
        {
            self.seen.lock().unwrap().entry(id).or_insert(now);
            self.changed.notify_waiters();
        }
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "messages": [{ "id": "wamid.bench" }] }))
    }
}

impl Arrivals {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            let notified = self.changed.notified();
            if self.count() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!(
                    "only {} of {n} messages arrived within {limit:?}",
                    self.count()
                );
            }
        }
        Ok(())
    }
}

/// A fake WhatsApp API on 127.0.0.1 that records arrivals.
async fn fake_provider() -> (MockServer, Arrivals) {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .respond_with(arrivals.clone())
        .mount(&server)
        .await;
    (server, arrivals)
}

struct Dispatcher(Child);

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn start_dispatcher(binary: &str, url: &str, api: &str, smtp: Option<&str>) -> Result<Dispatcher> {
    let mut command = Command::new(binary);
    command
        .args(["--database-url", url, "--whatsapp-api-url", api])
        .args([
            "--whatsapp-phone-number-id",
            "1",
            "--whatsapp-token",
            "bench",
        ])
        .args(["--batch-size", "256", "--concurrency", "256"]);
    if let Some(smtp) = smtp {
        command.args(["--smtp-url", smtp, "--email-from", "bench@example.com"]);
    }
    let child = command
        .env("OTP_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting otp-dispatcher")?;
    Ok(Dispatcher(child))
}

async fn connect(user: &str) -> Result<Client> {
    let user = user.to_owned();
    let config =
        tokio::task::spawn_blocking(move || pg_otp_integration::connection_string(DB, &user))
            .await?;
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A real SMTP server (the dispatcher tests' aiosmtpd sink) that announces
/// each message's arrival; the announcements, as times since the epoch.
struct SmtpSink {
    child: tokio::process::Child,
    port: u16,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<Duration>,
}

impl SmtpSink {
    async fn start() -> Result<SmtpSink> {
        use tokio::io::AsyncBufReadExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("pg_otp-bench-smtp-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../dispatcher/tests/smtp_sink.py"
            ))
            .args(["--port", &port.to_string(), "--announce", "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the SMTP server (is python3-aiosmtpd installed?)")?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        if lines.next_line().await?.as_deref() != Some("ready") {
            bail!("the SMTP server did not start");
        }
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(nanos) = line.strip_prefix("accepted ").and_then(|n| n.parse().ok()) {
                    let _ = tx.send(Duration::from_nanos(nanos));
                }
            }
        });
        Ok(SmtpSink {
            child,
            port,
            arrivals,
        })
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Latency from commit to provider, WhatsApp (person p1) and email (p2,
/// who has no phone), with one `binary` running.
async fn latency(
    args: &Args,
    (label, binary): (&str, &str),
    url: &str,
    db: &Client,
    app: &Client,
) -> Result<()> {
    db.batch_execute("TRUNCATE otp.outbox, otp.challenge, otp.session")
        .await?;
    let (server, arrivals) = fake_provider().await;
    let mut sink = SmtpSink::start().await?;
    let _dispatcher = start_dispatcher(binary, url, &server.uri(), Some(&sink.url()))?;
    tokio::time::sleep(Duration::from_millis(500)).await; // let it connect and LISTEN

    let issue = app
        .prepare("SELECT status FROM otp_issue('it', $1, $2)")
        .await?;
    let message_of = db
        .prepare("SELECT id FROM otp.outbox WHERE conversation = $1")
        .await?;
    let mut whatsapp = Vec::with_capacity(args.codes);
    let mut email = Vec::with_capacity(args.codes);
    for n in 0..(args.codes + 50) {
        // WhatsApp: the fake API records when each message id arrived.
        let conversation = format!("latency-{n}");
        app.query_one(&issue, &[&conversation, &"p1"]).await?;
        let committed = Instant::now();
        let id: i64 = db.query_one(&message_of, &[&conversation]).await?.get(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            let notified = arrivals.changed.notified();
            if let Some(at) = arrivals.seen.lock().unwrap().get(&id).copied() {
                break at;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!("message {id} never arrived");
            }
        };
        // Email: one at a time, so the next announcement is this message's.
        let conversation = format!("latency-email-{n}");
        app.query_one(&issue, &[&conversation, &"p2"]).await?;
        let committed_at = since_epoch();
        let accepted = tokio::time::timeout(Duration::from_secs(10), sink.arrivals.recv())
            .await
            .context("an email never arrived")?
            .context("the SMTP server stopped")?;
        if n >= 50 {
            // the first 50 warm up connections and caches
            whatsapp.push(arrived.saturating_duration_since(committed));
            email.push(accepted.saturating_sub(committed_at));
        }
    }
    for (channel, mut latencies) in [("WhatsApp", whatsapp), ("email", email)] {
        latencies.sort();
        println!(
            "| latency, commit → {channel} provider, {} codes, {label} | p50 {} | p99 {} | max {} |",
            latencies.len(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap())
        );
    }
    Ok(())
}

async fn throughput(args: &Args, url: &str, db: &Client, dispatchers: usize) -> Result<()> {
    db.batch_execute("TRUNCATE otp.outbox, otp.challenge, otp.session")
        .await?;
    // Fill the outbox from 4 connections while no dispatcher runs.
    let per_connection = args.messages / 4;
    let mut fills = Vec::new();
    for c in 0..4 {
        fills.push(tokio::spawn(async move {
            let app = connect(pg_otp_integration::APP).await?;
            let issue = app
                .prepare("SELECT status FROM otp_issue('it', $1, 'p1')")
                .await?;
            for n in 0..per_connection {
                app.query_one(&issue, &[&format!("burst-{dispatchers}-{c}-{n}")])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for fill in fills {
        fill.await??;
    }
    let total = per_connection * 4;

    let (server, arrivals) = fake_provider().await;
    let started = Instant::now();
    let running: Vec<Dispatcher> = (0..dispatchers)
        .map(|_| start_dispatcher(&args.dispatcher, url, &server.uri(), None))
        .collect::<Result<_>>()?;
    arrivals.wait_for(total, Duration::from_secs(300)).await?;
    let sent_all = loop {
        let sent: i64 = db
            .query_one("SELECT count(*) FROM otp.outbox WHERE state = 'sent'", &[])
            .await?
            .get(0);
        if sent as usize == total {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(running);
    let times: Vec<Instant> = arrivals.seen.lock().unwrap().values().copied().collect();
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    let rate = (total - 1) as f64 / last.duration_since(first).as_secs_f64();
    println!(
        "| throughput, {dispatchers} dispatcher(s), {total} messages | {rate:.0} messages/s at the provider | \
         all reported sent {:.2} s after start | |",
        sent_all.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = tokio::task::spawn_blocking(|| {
        pg_otp_integration::connection_string(DB, pg_otp_integration::SENDER)
    })
    .await?;
    let db = connect("postgres").await?;
    let app = connect(pg_otp_integration::APP).await?;
    println!("| measurement | result | | |");
    println!("|---|---|---|---|");
    if let Some(baseline) = &args.baseline_dispatcher {
        latency(&args, ("baseline", baseline), &url, &db, &app).await?;
    }
    latency(&args, ("this build", &args.dispatcher), &url, &db, &app).await?;
    throughput(&args, &url, &db, 1).await?;
    throughput(&args, &url, &db, 2).await?;
    Ok(())
}
