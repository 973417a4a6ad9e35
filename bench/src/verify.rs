//! otp_verify latency as a client sees it, wrong code and right code, for
//! comparing two builds of pg_otp side by side (bench/ledger.sh runs it
//! against 0.2.0 and the current version, alternately, on fresh clusters).
//!
//! Each round: otp_issue for a person, the dispatcher's claim (no report, so
//! that the same client works with every version's protocol), one wrong
//! otp_verify, then the right one. Prints one line:
//! `<label> wrong p50 p99 right p50 p99` in milliseconds.

use std::time::{Duration, Instant};

mod stats;

use anyhow::{Context, Result};
use clap::Parser;
use pg_otp_integration::{Client, NoTls};

const PEOPLE: i64 = 1_000;

#[derive(Parser)]
struct Args {
    /// Connection string of the benchmark database (pg_otp installed).
    #[arg(long)]
    database_url: String,
    /// What to call this build in the output.
    #[arg(long)]
    label: String,
    /// Measured rounds (after 200 for warm-up).
    #[arg(long, default_value_t = 2000)]
    calls: usize,
}

fn percentile(latencies: &mut [Duration], p: f64) -> f64 {
    latencies.sort();
    stats::percentile_ms(latencies, p)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut db = Client::connect(&args.database_url, NoTls).context("connecting")?;
    db.batch_execute(&format!(
        "CREATE TABLE staff (id text PRIMARY KEY, email text);
         INSERT INTO staff SELECT 'p' || n, 'p' || n || '@example.com' FROM generate_series(1, {PEOPLE}) n;
         SELECT otp_configure(agent => 'vb', source => 'staff', id_column => 'id', email_column => 'email',
                              max_codes => 1000000, resend_cooldown => '0', lockout_threshold => 100);"
    ))?;
    let issue = db.prepare("SELECT status FROM otp_issue('vb', $1::text, $2::text)")?;
    let claim = db.prepare("SELECT conversation, code FROM otp_outbox_claim(16)")?;
    let verify = db.prepare("SELECT status FROM otp_verify('vb', $1::text, $2::text)")?;
    let (mut wrong, mut right) = (Vec::new(), Vec::new());
    for round in 0..(200 + args.calls) {
        let conversation = format!("vb-{round}");
        let person = format!("p{}", round as i64 % PEOPLE + 1);
        let status: String = db.query_one(&issue, &[&conversation, &person])?.get(0);
        anyhow::ensure!(status == "code_sent", "otp_issue answered {status}");
        let code: String = db
            .query(&claim, &[])?
            .iter()
            .find(|row| row.get::<_, &str>(0) == conversation)
            .map(|row| row.get(1))
            .context("the message was claimed")?;
        let other = format!("{:06}", (code.parse::<u32>()? + 1) % 1_000_000);
        let started = Instant::now();
        let status: String = db.query_one(&verify, &[&conversation, &other])?.get(0);
        let wrong_took = started.elapsed();
        anyhow::ensure!(status == "incorrect", "a wrong code answered {status}");
        let started = Instant::now();
        let status: String = db.query_one(&verify, &[&conversation, &code])?.get(0);
        let right_took = started.elapsed();
        anyhow::ensure!(status == "verified", "the right code answered {status}");
        if round >= 200 {
            wrong.push(wrong_took);
            right.push(right_took);
        }
    }
    println!(
        "{} {:.3} {:.3} {:.3} {:.3}",
        args.label,
        percentile(&mut wrong, 0.5),
        percentile(&mut wrong, 0.99),
        percentile(&mut right, 0.5),
        percentile(&mut right, 0.99)
    );
    Ok(())
}
