//! History benchmark: does the cost of otp_issue and otp_verify stay flat as
//! history grows? And does a decoy (reveal_unknown => false, an identifier
//! nobody has) take as long as a real code?
//!
//! 1. On an empty database: `--calls` authentications one at a time (issue,
//!    the dispatcher's claim and report, verify); the latency of each
//!    otp_issue and each otp_verify call as the client sees it.
//! 2. The same after loading `--rows` historical challenges (ended two days
//!    ago, a hundred per person), with as many outbox rows, sessions and
//!    audit events (these spread over the year before), then ANALYZE.
//! 3. With reveal_unknown => false: otp_issue for known people and for
//!    unknown identifiers, interleaved.
//! 4. otp_purge deleting that history (it ended two days ago; retention one
//!    day, and 90 days for the audit trail: three quarters of its events go,
//!    most by emptying whole weeks) from a second connection, while
//!    authentications go on until it has finished: their latencies, and how
//!    long the purge took.
//!
//! Prints Markdown rows for BENCHMARKS.md. It measures; it does not judge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod stats;

use anyhow::{ensure, Result};
use clap::Parser;
use pg_otp_integration::{connection_string, Client, NoTls};

const DB: &str = "pg_otp_history_bench";
const PEOPLE: i64 = 10_000;

#[derive(Parser)]
struct Args {
    /// Historical challenges to load (and as many messages, sessions, events).
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Measured calls of each kind per phase (after 100 for warm-up).
    #[arg(long, default_value_t = 2000)]
    calls: usize,
}

/// Latencies of one kind of call.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn time<T>(&mut self, call: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = call();
        self.0.push(started.elapsed());
        result
    }

    fn percentile(&self, p: f64) -> String {
        let mut sorted = self.0.clone();
        sorted.sort();
        format!("{:.2} ms", stats::percentile_ms(&sorted, p))
    }
}

fn setup(db: &mut Client) -> Result<()> {
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS staff (id text PRIMARY KEY, phone text, email text);
         INSERT INTO staff SELECT 'p' || n, '+34 600 ' || lpad(n::text, 6, '0'), 'p' || n || '@example.com'
           FROM generate_series(1, {PEOPLE}) n ON CONFLICT DO NOTHING;
         -- limits out of the way: the benchmark measures the work, not refusals
         SELECT otp_configure(agent => 'hist', source => 'staff', id_column => 'id', phone_column => 'phone',
                              max_codes => 1000000, resend_cooldown => '0', lockout_threshold => 100);
         SELECT otp_configure(agent => 'hidden', source => 'staff', id_column => 'id', phone_column => 'phone',
                              max_codes => 1000000, resend_cooldown => '0', lockout_threshold => 100,
                              reveal_unknown => false);"
    ))?;
    Ok(())
}

fn load_history(db: &mut Client, rows: i64) -> Result<()> {
    db.batch_execute(&format!(
        "INSERT INTO otp.challenge (id, agent, conversation, subject, channel, destination_hint, destination_key,
                                    code_hash, key_id, state, max_attempts, created_at, expires_at, ended_at, delivery)
         SELECT nextval('otp.challenge_id_seq'), 'hist', 'old-' || n, 'p' || (n % {PEOPLE} + 1), 'whatsapp', '***00',
                sha256(n::text::bytea), sha256(('c' || n)::bytea), '\\x0000000000000000', 'verified', 3,
                now() - interval '2 days', now() - interval '2 days', now() - interval '2 days', 'sent'
           FROM generate_series(1, {rows}) n;
         INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination, state, available_at,
                                 expires_at, created_at, finished_at, key_id)
         SELECT id, agent, conversation, 'whatsapp', '+34 600 000 000', 'sent', created_at, expires_at, created_at,
                ended_at, '\\x0000000000000000'
           FROM otp.challenge WHERE conversation LIKE 'old-%';
         INSERT INTO otp.session (token_hash, agent, conversation, subject, challenge_id, idle_timeout, created_at,
                                  last_seen_at, idle_expires_at, expires_at)
         SELECT sha256(('s' || id)::bytea), agent, conversation, subject, id, '30 minutes', created_at, created_at,
                created_at + interval '30 minutes', created_at + interval '1 day'
           FROM otp.challenge WHERE conversation LIKE 'old-%';
         INSERT INTO otp.event (at, slot, agent, conversation, subject, event, channel, destination_hint)
         SELECT created_at - (id % 360) * interval '1 day', otp.event_slot(created_at - (id % 360) * interval '1 day'), agent, conversation, subject, 'issued', channel, destination_hint
           FROM otp.challenge WHERE conversation LIKE 'old-%';"
    ))?;
    // Its own statement: VACUUM cannot run inside the batch's transaction.
    db.batch_execute("VACUUM ANALYZE otp.challenge, otp.outbox, otp.session, otp.event")?;
    // The load's writes flushed now, not during the measurement after it.
    db.batch_execute("CHECKPOINT")?;
    Ok(())
}

/// Claims every due message as a dispatcher would and reports them sent;
/// returns each message's conversation and code.
fn deliver_all(db: &mut Client) -> Result<Vec<(String, String)>> {
    let mut delivered = Vec::new();
    for row in db.query(
        "SELECT message_id, conversation, code, attempt FROM otp_outbox_claim(1000)",
        &[],
    )? {
        let (message_id, attempt): (i64, i32) = (row.get(0), row.get(3));
        db.execute(
            "SELECT otp_outbox_sent($1, $2, 'bench')",
            &[&message_id, &attempt],
        )?;
        delivered.push((row.get(1), row.get(2)));
    }
    Ok(delivered)
}

/// Delivers every due message; returns the code sent to `conversation`.
fn deliver(db: &mut Client, conversation: &str) -> Result<String> {
    deliver_all(db)?
        .into_iter()
        .rev()
        .find(|(to, _)| to == conversation)
        .map(|(_, code)| code)
        .ok_or_else(|| anyhow::anyhow!("no message for {conversation}"))
}

/// `calls` authentications one at a time (after 100 for warm-up), and more
/// until `until` is set; the latencies of issue and verify.
fn authentications(
    db: &mut Client,
    phase: &str,
    calls: usize,
    until: Option<&AtomicBool>,
) -> Result<(Latencies, Latencies)> {
    let (mut issue, mut verify) = (Latencies::default(), Latencies::default());
    for i in 0.. {
        if i >= calls + 100 && until.is_none_or(|done| done.load(Ordering::Acquire)) {
            break;
        }
        let conversation = format!("{phase}-{i}");
        let person = format!("p{}", i as i64 % PEOPLE + 1);
        let mut issue_now = Latencies::default();
        let status: String = issue_now
            .time(|| {
                db.query_one(
                    "SELECT status FROM otp_issue('hist', $1, $2)",
                    &[&conversation, &person],
                )
            })?
            .get(0);
        ensure!(status == "code_sent", "otp_issue answered {status}");
        let code = deliver(db, &conversation)?;
        let mut verify_now = Latencies::default();
        let status: String = verify_now
            .time(|| {
                db.query_one(
                    "SELECT status FROM otp_verify('hist', $1, $2)",
                    &[&conversation, &code],
                )
            })?
            .get(0);
        ensure!(status == "verified", "otp_verify answered {status}");
        if i >= 100 {
            issue.0.extend(issue_now.0);
            verify.0.extend(verify_now.0);
        }
    }
    Ok((issue, verify))
}

/// otp_issue with reveal_unknown => false for known people and unknown
/// identifiers, interleaved; both must answer code_sent.
fn decoys(db: &mut Client, calls: usize) -> Result<(Latencies, Latencies)> {
    let (mut known, mut unknown) = (Latencies::default(), Latencies::default());
    for i in 0..calls + 100 {
        for (identifier, latencies) in [
            (format!("p{}", i as i64 % PEOPLE + 1), &mut known),
            (format!("nobody-{i}"), &mut unknown),
        ] {
            let conversation = format!("decoy-{identifier}-{i}");
            let mut now = Latencies::default();
            let status: String = now
                .time(|| {
                    db.query_one(
                        "SELECT status FROM otp_issue('hidden', $1, $2)",
                        &[&conversation, &identifier],
                    )
                })?
                .get(0);
            ensure!(status == "code_sent", "otp_issue answered {status}");
            if i >= 100 {
                latencies.0.extend(now.0);
            }
        }
        // A dispatcher keeps the queue short, as it would in production.
        if i % 50 == 0 {
            deliver_all(db)?;
        }
    }
    Ok((known, unknown))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut db = Client::connect(&connection_string(DB, "postgres"), NoTls)?;
    setup(&mut db)?;

    println!("| history | otp_issue p50 | otp_issue p99 | otp_verify p50 | otp_verify p99 |");
    println!("|---|---|---|---|---|");
    let (issue, verify) = authentications(&mut db, "empty", args.calls, None)?;
    println!(
        "| empty | {} | {} | {} | {} |",
        issue.percentile(0.5),
        issue.percentile(0.99),
        verify.percentile(0.5),
        verify.percentile(0.99)
    );
    let loading = Instant::now();
    load_history(&mut db, args.rows)?;
    eprintln!(
        "loaded {} historical challenges in {:.0?}",
        args.rows,
        loading.elapsed()
    );
    let (issue, verify) = authentications(&mut db, "history", args.calls, None)?;
    println!(
        "| {} challenges, messages, sessions, events | {} | {} | {} | {} |",
        args.rows,
        issue.percentile(0.5),
        issue.percentile(0.99),
        verify.percentile(0.5),
        verify.percentile(0.99)
    );

    println!();
    println!("| reveal_unknown => false, otp_issue for | p50 | p99 |");
    println!("|---|---|---|");
    let (known, unknown) = decoys(&mut db, args.calls)?;
    println!(
        "| a known person (a code is sent) | {} | {} |",
        known.percentile(0.5),
        known.percentile(0.99)
    );
    println!(
        "| an unknown identifier (decoy, nothing sent) | {} | {} |",
        unknown.percentile(0.5),
        unknown.percentile(0.99)
    );

    // The history purged while authentications go on.
    println!();
    println!("| while otp_purge deletes the history | otp_issue p50 | otp_issue p99 | otp_verify p50 | otp_verify p99 |");
    println!("|---|---|---|---|---|");
    let done = Arc::new(AtomicBool::new(false));
    let purge = std::thread::spawn({
        let done = done.clone();
        move || -> Result<(Duration, Vec<i64>)> {
            let mut owner = Client::connect(&connection_string(DB, "postgres"), NoTls)?;
            let started = Instant::now();
            let row = owner.query_one(
                "SELECT challenges, messages, sessions, guards, events
                   FROM otp_purge(retention => '1 day', event_retention => '90 days')",
                &[],
            );
            done.store(true, Ordering::Release);
            let row = row?;
            Ok((started.elapsed(), (0..5).map(|i| row.get(i)).collect()))
        }
    });
    let (issue, verify) = authentications(&mut db, "purging", args.calls, Some(&done))?;
    let (took, deleted) = purge.join().expect("the purge thread")?;
    println!(
        "| {} rows (challenges, messages, sessions, guards, events: {deleted:?}) in {took:.0?}, {} authentications meanwhile | {} | {} | {} | {} |",
        deleted.iter().sum::<i64>(),
        issue.0.len(),
        issue.percentile(0.5),
        issue.percentile(0.99),
        verify.percentile(0.5),
        verify.percentile(0.99)
    );
    Ok(())
}
