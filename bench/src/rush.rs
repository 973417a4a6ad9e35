//! The morning rush (issue 14): a shift starts, 5,000 people ask for a code
//! within a minute, and one WhatsApp Business number sends at Meta's
//! default 80 messages/s. The dispatcher runs with its default pacing.
//!
//! Three scenarios, each on an emptied outbox, with one dispatcher and a
//! fake Cloud API that records when each message arrives:
//! - `spread`: the requests spread evenly over 60 s (83/s, a little more
//!   than the number can send);
//! - `burst`: every request in the first 10 s;
//! - `burst, 60 s codes`: the same with codes that live 60 s (less the
//!   dispatcher's 15 s margin), to show that a code that cannot be sent in
//!   time is not sent late.
//!
//! For each: the time from the code's issue (its commit) to the provider
//! (p50, p90, p99, max), how many codes were sent and how many expired
//! unsent, the most messages the provider received in any one second, and
//! how many arrived after their code expired (must be 0). Prints Markdown.

mod fake;
mod stats;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fake::{connect, connection_string, fake_provider, Dispatcher};
use stats::percentile;

const DB: &str = "pg_otp_bench_rush";
/// Connections issuing codes, as an agent platform's workers would.
const ISSUERS: usize = 8;

#[derive(Parser)]
struct Args {
    /// This build's otp-dispatcher (release).
    #[arg(long)]
    dispatcher: String,
    /// People who ask for a code.
    #[arg(long, default_value_t = 5000)]
    people: usize,
}

struct Scenario {
    name: &'static str,
    /// The requests are spread evenly over this.
    within: Duration,
    code_ttl: &'static str,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "spread over 60 s",
        within: Duration::from_secs(60),
        code_ttl: "5 minutes",
    },
    Scenario {
        name: "all in the first 10 s",
        within: Duration::from_secs(10),
        code_ttl: "5 minutes",
    },
    Scenario {
        name: "all in the first 10 s, codes valid 60 s",
        within: Duration::from_secs(10),
        code_ttl: "60 seconds",
    },
];

/// The database: `people` people, each with a WhatsApp number of their own.
fn prepare(people: usize) -> Result<()> {
    pg_otp_integration::connection_string(DB, "postgres"); // roles, extension
    let mut db = pg_otp_integration::connect_to("postgres", DB);
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS staff;
         CREATE TABLE staff (id text PRIMARY KEY, phone text);
         INSERT INTO staff SELECT 'e' || n, '+52 55 ' || lpad(n::text, 8, '0')
           FROM generate_series(1, {people}) n;"
    ))?;
    Ok(())
}

struct Measured {
    /// Issue to provider, per message that arrived.
    latencies: Vec<Duration>,
    sent: usize,
    expired: usize,
    busiest_second: usize,
    after_expiry: usize,
    issued_in: Duration,
}

async fn run(args: &Args, scenario: &Scenario) -> Result<Measured> {
    let db = connect(connection_string(DB, "postgres")).await?;
    db.batch_execute(&format!(
        "TRUNCATE otp.outbox, otp.challenge, otp.session;
         SELECT otp_configure(agent => 'rush', source => 'staff', id_column => 'id',
                              phone_column => 'phone', code_ttl => '{}',
                              max_codes => 1000000, resend_cooldown => '0');",
        scenario.code_ttl
    ))
    .await?;
    let (server, arrivals) = fake_provider().await;
    let url = connection_string(DB, pg_otp_integration::SENDER);
    let _dispatcher = Dispatcher(
        Command::new(&args.dispatcher)
            .args(["--database-url", &url])
            .args(["--whatsapp-api-url", &format!("{}/v21.0", server.uri())])
            .args([
                "--whatsapp-phone-number-id",
                "1",
                "--whatsapp-token",
                "bench",
            ])
            .env("OTP_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting otp-dispatcher")?,
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // connected and listening

    // Person n asks at start + n * within / people, from ISSUERS connections.
    let start = Instant::now();
    let step = scenario.within.as_secs_f64() / args.people as f64;
    let mut issuers = Vec::new();
    for worker in 0..ISSUERS {
        let people = args.people;
        issuers.push(tokio::spawn(async move {
            let app = connect(connection_string(DB, pg_otp_integration::APP)).await?;
            let issue = app
                .prepare("SELECT status FROM otp_issue('rush', $1, $2)")
                .await?;
            let mut issued = HashMap::new();
            for n in (worker..people).step_by(ISSUERS) {
                let at = start + Duration::from_secs_f64(step * n as f64);
                tokio::time::sleep_until(at.into()).await;
                let person = format!("e{}", n + 1);
                let status: String = app.query_one(&issue, &[&person, &person]).await?.get(0);
                if status != "code_sent" {
                    bail!("otp_issue answered {status}");
                }
                issued.insert(person, Instant::now());
            }
            anyhow::Ok(issued)
        }));
    }
    let mut issued_at: HashMap<String, Instant> = HashMap::new();
    for issuer in issuers {
        issued_at.extend(issuer.await??);
    }
    let issued_in = start.elapsed();

    // Every message ends sent or expired.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM otp.outbox WHERE state IN ('queued', 'sending')",
                &[],
            )
            .await?
            .get(0);
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{open} messages still open after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let rows = db
        .query(
            "SELECT id, conversation, state, expires_at FROM otp.outbox",
            &[],
        )
        .await?;
    let arrived_at = arrivals.seen.lock().unwrap().clone();
    let (mut latencies, mut sent, mut expired, mut after_expiry) = (Vec::new(), 0, 0, 0);
    // Arrivals are instants; expiry is wall-clock time: one reading of both.
    let (now_instant, now_system) = (Instant::now(), SystemTime::now());
    for row in &rows {
        let id: i64 = row.get(0);
        let conversation: String = row.get(1);
        let state: String = row.get(2);
        let expires_at: SystemTime = row.get(3);
        match state.as_str() {
            "sent" => sent += 1,
            "expired" => expired += 1,
            other => bail!("message {id} ended {other}"),
        }
        if let Some(at) = arrived_at.get(&id) {
            latencies.push(at.saturating_duration_since(issued_at[&conversation]));
            let arrived_system = now_system - now_instant.duration_since(*at);
            if arrived_system > expires_at {
                after_expiry += 1;
            }
        }
    }
    if latencies.len() != sent {
        bail!("{sent} messages sent, {} arrived", latencies.len());
    }
    latencies.sort();
    let mut times: Vec<Instant> = arrived_at.values().copied().collect();
    times.sort();
    let busiest_second = times
        .iter()
        .enumerate()
        .map(|(i, t)| times[i..].partition_point(|u| *u < *t + Duration::from_secs(1)))
        .max()
        .unwrap_or(0);
    Ok(Measured {
        latencies,
        sent,
        expired,
        busiest_second,
        after_expiry,
        issued_in,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    tokio::task::spawn_blocking({
        let people = args.people;
        move || prepare(people)
    })
    .await??;
    println!(
        "| requests ({} people) | issued in | issue → provider p50 | p90 | p99 | max | sent | expired unsent | most in one second | sent after expiry |",
        args.people
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for scenario in &SCENARIOS {
        let m = run(&args, scenario).await?;
        let (p50, p90, p99, max) = if m.latencies.is_empty() {
            (
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
            )
        } else {
            (
                percentile(&m.latencies, 0.50),
                percentile(&m.latencies, 0.90),
                percentile(&m.latencies, 0.99),
                *m.latencies.last().unwrap(),
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.name,
            secs(m.issued_in),
            secs(p50),
            secs(p90),
            secs(p99),
            secs(max),
            m.sent,
            m.expired,
            m.busiest_second,
            m.after_expiry
        );
    }
    Ok(())
}
