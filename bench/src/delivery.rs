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
//! 3. Webhooks, with one dispatcher serving them: signed `delivered`
//!    statuses for `--codes` sent messages, one per request, POST → 200
//!    (committed) p50 / p99; the same number in requests of 20 statuses
//!    from 8 clients at once, statuses recorded per second; and the late
//!    fallback: a signed `failed` (131026) for a message WhatsApp accepted,
//!    until the real SMTP server has the email with the same code.
//!
//! Everything runs on this machine: the fake provider and the SMTP server on
//! 127.0.0.1, the dispatcher as a child process, PostgreSQL on a Unix socket.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio_postgres::Client;

mod fake;
mod stats;

use fake::{fake_provider, Arrivals, Dispatcher};
use stats::percentile;

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
    /// Only the webhook measurements.
    #[arg(long)]
    webhooks_only: bool,
}

fn start_dispatcher(binary: &str, url: &str, api: &str, smtp: Option<&str>) -> Result<Dispatcher> {
    start_dispatcher_with(binary, url, api, smtp, &[])
}

fn start_dispatcher_with(
    binary: &str,
    url: &str,
    api: &str,
    smtp: Option<&str>,
    extra: &[&str],
) -> Result<Dispatcher> {
    let mut command = Command::new(binary);
    command.args(extra).args(fake::unpaced(binary));
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
    // (the integration fixture's roles and extension, made on first use)
    let config =
        tokio::task::spawn_blocking(move || pg_otp_integration::connection_string(DB, &user))
            .await?;
    fake::connect(config).await
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Prints a Markdown row: `what`, then p50, p99 and max of `latencies`.
fn latency_row(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "| {what} | p50 {} | p99 {} | max {} |",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
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
    for (channel, latencies) in [("WhatsApp", whatsapp), ("email", email)] {
        let what = format!(
            "latency, commit → {channel} provider, {} codes, {label}",
            latencies.len()
        );
        latency_row(&what, latencies);
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
    let rate = Arrivals::rate(&[&arrivals]);
    println!(
        "| throughput, {dispatchers} dispatcher(s), {total} messages | {rate:.0} messages/s at the provider | \
         all reported sent {:.2} s after start | |",
        sent_all.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    // reqwest's rustls comes without a default provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let url = tokio::task::spawn_blocking(|| {
        pg_otp_integration::connection_string(DB, pg_otp_integration::SENDER)
    })
    .await?;
    let db = connect("postgres").await?;
    let app = connect(pg_otp_integration::APP).await?;
    println!("| measurement | result | | |");
    println!("|---|---|---|---|");
    if !args.webhooks_only {
        if let Some(baseline) = &args.baseline_dispatcher {
            latency(&args, ("baseline", baseline), &url, &db, &app).await?;
        }
        latency(&args, ("this build", &args.dispatcher), &url, &db, &app).await?;
        throughput(&args, &url, &db, 1).await?;
        throughput(&args, &url, &db, 2).await?;
    }
    webhooks(&args, &url, &db, &app).await?;
    Ok(())
}

const APP_SECRET: &str = "bench-app-secret";

/// A signed WhatsApp status webhook request: the body and its signature.
fn signed_statuses(statuses: &[(String, i64, &str)]) -> (Vec<u8>, String) {
    use hmac::{Hmac, Mac};
    let now = since_epoch().as_secs().to_string();
    let statuses: Vec<serde_json::Value> = statuses
        .iter()
        .map(|(wamid, id, status)| {
            let mut object = serde_json::json!({
                "id": wamid, "status": status, "timestamp": now,
                "recipient_id": "34600123478", "biz_opaque_callback_data": id.to_string()
            });
            if *status == "failed" {
                object["errors"] =
                    serde_json::json!([{ "code": 131026, "title": "Message undeliverable." }]);
            }
            object
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550000000", "phone_number_id": "1" },
            "statuses": statuses
        }}]}]
    }))
    .unwrap();
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    (
        body,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
    )
}

async fn post_statuses(
    http: &reqwest::Client,
    url: &str,
    statuses: &[(String, i64, &str)],
) -> Result<()> {
    let (body, signature) = signed_statuses(statuses);
    let status = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await?
        .status();
    if !status.is_success() {
        bail!("the webhook answered {status}");
    }
    Ok(())
}

/// Issues `n` codes for `person` and waits until the provider took them
/// all; (wamid, message id) of each.
async fn sent_messages(
    app: &Client,
    db: &Client,
    label: &str,
    person: &str,
    n: usize,
) -> Result<Vec<(String, i64)>> {
    let issue = app
        .prepare("SELECT status FROM otp_issue('it', $1, $2)")
        .await?;
    for i in 0..n {
        app.query_one(&issue, &[&format!("{label}-{i}"), &person])
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = db
            .query(
                "SELECT provider_ref, id FROM otp.outbox WHERE conversation LIKE $1 || '-%' AND state = 'sent'",
                &[&label],
            )
            .await?;
        if rows.len() == n {
            return Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect());
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} {label} messages were sent", rows.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn webhooks(args: &Args, url: &str, db: &Client, app: &Client) -> Result<()> {
    db.batch_execute("TRUNCATE otp.outbox, otp.challenge, otp.session")
        .await?;
    let (server, _arrivals) = fake_provider().await;
    let mut sink = SmtpSink::start().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _dispatcher = start_dispatcher_with(
        &args.dispatcher,
        url,
        &server.uri(),
        Some(&sink.url()),
        &[
            "--webhook-listen",
            &listen,
            "--webhook-verify-token",
            "bench-verify-token",
            "--whatsapp-app-secret",
            APP_SECRET,
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await; // let it connect and listen
    let hook = format!("http://{listen}/webhooks/whatsapp");
    let http = reqwest::Client::new();

    // One status per request, one request at a time.
    let single = sent_messages(app, db, "hook-single", "p1", args.codes).await?;
    let mut latencies = Vec::with_capacity(single.len());
    for (wamid, id) in &single {
        let started = Instant::now();
        post_statuses(&http, &hook, &[(wamid.clone(), *id, "delivered")]).await?;
        latencies.push(started.elapsed());
    }
    let what = format!(
        "webhook, one `delivered` per request, {} requests",
        latencies.len()
    );
    latency_row(&what, latencies);

    // Ingest: 8 clients, 20 statuses per request.
    let batched = sent_messages(app, db, "hook-batch", "p1", args.codes).await?;
    let started = Instant::now();
    let mut clients = Vec::new();
    for part in batched.chunks(batched.len().div_ceil(8)) {
        let part: Vec<(String, i64)> = part.to_vec();
        let (http, hook) = (http.clone(), hook.clone());
        clients.push(tokio::spawn(async move {
            for chunk in part.chunks(20) {
                let statuses: Vec<(String, i64, &str)> = chunk
                    .iter()
                    .map(|(w, id)| (w.clone(), *id, "read"))
                    .collect();
                post_statuses(&http, &hook, &statuses).await?;
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "| webhook ingest, {} `read` statuses, 20 per request, 8 clients | {:.0} statuses/s recorded | | |",
        batched.len(),
        batched.len() as f64 / elapsed.as_secs_f64()
    );

    // Late failure → the same code by email.
    let mut fallbacks = Vec::new();
    for n in 0..(args.codes / 5).max(20) {
        let label = format!("hook-fallback-{n}");
        let (wamid, id) = sent_messages(app, db, &label, "p1", 1).await?.remove(0);
        let posted = since_epoch();
        post_statuses(&http, &hook, &[(wamid, id, "failed")]).await?;
        let accepted = tokio::time::timeout(Duration::from_secs(10), sink.arrivals.recv())
            .await
            .context("a fallback email never arrived")?
            .context("the SMTP server stopped")?;
        fallbacks.push(accepted.saturating_sub(posted));
    }
    let what = format!(
        "late fallback, `failed` webhook POSTed → email accepted by SMTP, {} codes",
        fallbacks.len()
    );
    latency_row(&what, fallbacks);
    Ok(())
}
