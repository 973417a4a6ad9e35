//! The latency of each call of one authentication at 16 clients (or
//! --clients): pg_otp's five functions against the same five calls of the
//! do-it-yourself PL/pgSQL contract (bench/pgbench/diy_setup.sql), on the
//! database bench/pgbench/run.sh prepared. pgbench reports a transaction
//! script's latency, not each statement's percentiles; this client times
//! every call. The set-ups alternate round by round; p50 and p99 over all
//! rounds. Prints a Markdown table.

mod stats;

use anyhow::{Context, Result};
use clap::Parser;
use stats::percentile_ms;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

#[derive(Parser)]
struct Args {
    /// libpq connection string of the prepared database
    #[arg(long)]
    database: String,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// seconds per set-up and round
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// One contract's five calls, in the order of an authentication.
struct Setup {
    name: &'static str,
    issue: &'static str,
    claim: &'static str,
    sent: &'static str,
    verify: &'static str,
    touch: &'static str,
}

static SETUPS: [Setup; 2] = [
    Setup {
        name: "pg_otp",
        issue: "SELECT status FROM otp_issue('bench', $1, $2)",
        claim: "SELECT message_id, attempt, conversation, code FROM otp_outbox_claim(1)",
        sent: "SELECT otp_outbox_sent($1, $2, 'bench')",
        verify: "SELECT session_token FROM otp_verify('bench', $1, $2)",
        touch: "SELECT status FROM session_touch($1)",
    },
    Setup {
        name: "PL/pgSQL + pgcrypto",
        issue: "SELECT status FROM diy.issue('bench', $1, $2)",
        claim: "SELECT message_id, attempt, conversation, code FROM diy.claim(1)",
        sent: "SELECT diy.sent($1, $2, 'bench')",
        verify: "SELECT session_token FROM diy.verify('bench', $1, $2)",
        touch: "SELECT status FROM diy.touch($1)",
    },
];

const CALLS: [&str; 5] = ["issue", "claim", "sent", "verify", "touch"];

/// Latencies of each call, in CALLS' order.
type Latencies = [Vec<Duration>; 5];

async fn timed<T>(latencies: &mut Vec<Duration>, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let result = call.await;
    latencies.push(started.elapsed());
    result
}

/// One client: authentications until `until`, each call timed.
async fn client(
    database: String,
    setup: &'static Setup,
    seed: u64,
    until: Instant,
) -> Result<Latencies> {
    let (db, connection) = tokio_postgres::connect(&database, NoTls).await?;
    tokio::spawn(connection);
    let db: Client = db;
    let issue = db.prepare(setup.issue).await?;
    let claim = db.prepare(setup.claim).await?;
    let sent = db.prepare(setup.sent).await?;
    let verify = db.prepare(setup.verify).await?;
    let touch = db.prepare(setup.touch).await?;
    let mut latencies: Latencies = Default::default();
    let mut state = seed.max(1);
    let mut n = 0u64;
    while Instant::now() < until {
        // xorshift: which of the 10,000 people asks (bench/pgbench/setup.sql)
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let person = format!("p{}", state % 10_000 + 1);
        let conversation = format!("calls-{seed}-{n}");
        n += 1;
        let [issued, claimed, reported, verified, touched] = &mut latencies;
        timed(issued, db.query_one(&issue, &[&conversation, &person])).await?;
        // Under concurrency the claim may take another client's message, or
        // none (as a dispatcher's would); the code claimed is verified.
        let rows = timed(claimed, db.query(&claim, &[])).await?;
        let Some(row) = rows.first() else { continue };
        let (message_id, attempt): (i64, i32) = (row.get(0), row.get(1));
        let (claimed_conversation, code): (String, String) = (row.get(2), row.get(3));
        timed(reported, db.query_one(&sent, &[&message_id, &attempt])).await?;
        let token: Option<String> = timed(
            verified,
            db.query_one(&verify, &[&claimed_conversation, &code]),
        )
        .await?
        .get(0);
        let token = token.context("a claimed code did not verify")?;
        timed(touched, db.query_one(&touch, &[&token])).await?;
    }
    Ok(latencies)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut all: Vec<Latencies> = SETUPS.iter().map(|_| Default::default()).collect();
    for _round in 0..args.rounds {
        for (i, setup) in SETUPS.iter().enumerate() {
            let until = Instant::now() + Duration::from_secs(args.seconds);
            let clients: Vec<_> = (0..args.clients)
                .map(|c| {
                    tokio::spawn(client(
                        args.database.clone(),
                        setup,
                        (c as u64 + 1) * 7919 + i as u64,
                        until,
                    ))
                })
                .collect();
            for handle in clients {
                let latencies = handle.await??;
                for (pooled, more) in all[i].iter_mut().zip(latencies) {
                    pooled.extend(more);
                }
            }
        }
    }
    println!(
        "| call ({} clients, {} × {} s) | {} p50 | p99 | {} p50 | p99 |",
        args.clients, args.rounds, args.seconds, SETUPS[0].name, SETUPS[1].name
    );
    println!("|---|---|---|---|---|");
    for (call, name) in CALLS.iter().enumerate() {
        let mut row = format!("| {name} |");
        for latencies in &mut all {
            let sorted = &mut latencies[call];
            sorted.sort();
            row += &format!(
                " {:.2} ms | {:.2} ms |",
                percentile_ms(sorted, 0.50),
                percentile_ms(sorted, 0.99)
            );
        }
        println!("{row}");
    }
    Ok(())
}
