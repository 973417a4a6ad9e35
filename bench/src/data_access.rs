//! Data access through a session: what the row-level security policy on
//! otp_subject() costs, and session_use against session_touch.
//!
//! 1. A 1,000,000-row table of pay slips (100 per person), with the
//!    README's policy for the application's role, and an identical copy
//!    without a policy. The same query for one person's rows, measured side
//!    by side in the same transaction of the same role: on the guarded
//!    table, filtered by the policy alone (bound by session_use), and on the
//!    copy with the person as a literal parameter.
//! 2. With 1,000,000 sessions of history: session_touch and session_use on
//!    live sessions, interleaved, each in a transaction of its own (the
//!    commit not timed).
//!
//! Prints Markdown rows for BENCHMARKS.md. It measures; it does not judge.

use std::time::{Duration, Instant};

mod stats;

use anyhow::{ensure, Result};
use clap::Parser;
use pg_otp_integration::{connection_string, Client, NoTls};

const DB: &str = "pg_otp_data_access_bench";
const PEOPLE: i64 = 10_000;

#[derive(Parser)]
struct Args {
    /// Rows of the guarded table, and sessions of history.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Measured calls of each kind (after 200 for warm-up).
    #[arg(long, default_value_t = 3000)]
    calls: usize,
}

#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        stats::percentile_ms(&sorted, p)
    }
}

fn timed<T>(latencies: &mut Latencies, keep: bool, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = call();
    if keep {
        latencies.0.push(started.elapsed());
    }
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut owner = Client::connect(&connection_string(DB, "postgres"), NoTls)?;
    let per_person = args.rows / PEOPLE;
    owner.batch_execute(&format!(
        "CREATE TABLE staff (id text PRIMARY KEY, email text);
         INSERT INTO staff SELECT 'p' || n, 'p' || n || '@example.com' FROM generate_series(1, {PEOPLE}) n;
         SELECT otp_configure(agent => 'bench', source => 'staff', id_column => 'id', email_column => 'email',
                              require_otp => false, max_codes => 1000000, resend_cooldown => '0');
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_app') THEN CREATE ROLE bench_app LOGIN; END IF;
         END $$;
         GRANT otp_app TO bench_app;
         CREATE TABLE payslips (employee_no text NOT NULL, month int NOT NULL, net numeric NOT NULL);
         INSERT INTO payslips SELECT 'p' || (n % {PEOPLE} + 1), n / {PEOPLE}, n FROM generate_series(0, {} - 1) n;
         CREATE INDEX ON payslips (employee_no);
         ALTER TABLE payslips ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_payslips ON payslips FOR SELECT TO bench_app
             USING (employee_no = (SELECT otp_subject('bench')));
         GRANT SELECT ON payslips TO bench_app;
         CREATE TABLE payslips_plain AS SELECT * FROM payslips;
         CREATE INDEX ON payslips_plain (employee_no);
         GRANT SELECT ON payslips_plain TO bench_app;
         -- sessions of history: ended a day ago
         INSERT INTO otp.session (token_hash, agent, conversation, subject, idle_timeout, created_at,
                                  last_seen_at, idle_expires_at, expires_at)
         SELECT sha256(('old' || n)::bytea), 'bench', 'old-' || n, 'p' || (n % {PEOPLE} + 1), '30 minutes',
                now() - interval '2 days', now() - interval '2 days', now() - interval '2 days' + interval '30 minutes',
                now() - interval '1 day'
           FROM generate_series(1, {}) n;",
        args.rows, args.rows
    ))?;
    owner.batch_execute("VACUUM ANALYZE payslips, payslips_plain, otp.session")?;
    let mut app = Client::connect(&connection_string(DB, "bench_app"), NoTls)?;

    // Live sessions, one per measured round (require_otp is off: a session at once).
    let issue = app.prepare("SELECT session_token FROM otp_issue('bench', $1::text, $2::text)")?;
    let mut sessions = Vec::new();
    for i in 0..args.calls + 200 {
        let person = format!("p{}", i as i64 % PEOPLE + 1);
        let token: String = app
            .query_one(&issue, &[&format!("live-{i}"), &person])?
            .get(0);
        sessions.push((person, token));
    }

    let use_session = app.prepare("SELECT status FROM session_use($1::text)")?;
    let touch = app.prepare("SELECT status FROM session_touch($1::text)")?;
    let guarded = app.prepare("SELECT count(*), sum(net) FROM payslips")?;
    let literal =
        app.prepare("SELECT count(*), sum(net) FROM payslips_plain WHERE employee_no = $1::text")?;
    let (mut by_policy, mut by_literal) = (Latencies::default(), Latencies::default());
    let (mut used, mut touched) = (Latencies::default(), Latencies::default());
    for (i, (person, token)) in sessions.iter().enumerate() {
        let keep = i >= 200;
        // Each call in a transaction of its own, timed without the commit.
        let mut tx = app.transaction()?;
        let status: String = timed(&mut touched, keep, || tx.query_one(&touch, &[token]))?.get(0);
        ensure!(status == "active", "session_touch answered {status}");
        tx.commit()?;
        let mut tx = app.transaction()?;
        let status: String =
            timed(&mut used, keep, || tx.query_one(&use_session, &[token]))?.get(0);
        ensure!(status == "active", "session_use answered {status}");
        // Both in the bound transaction, in alternating order.
        for turn in [i % 2, 1 - i % 2] {
            let (statement, params, latencies): (
                _,
                &[&(dyn tokio_postgres::types::ToSql + Sync)],
                _,
            ) = if turn == 0 {
                (&guarded, &[], &mut by_policy)
            } else {
                (&literal, &[person], &mut by_literal)
            };
            let row = timed(latencies, keep, || tx.query_one(statement, params))?;
            ensure!(
                row.get::<_, i64>(0) == per_person,
                "{} rows instead of {per_person}",
                row.get::<_, i64>(0)
            );
        }
        tx.commit()?;
    }

    println!(
        "| one person's pay slips of {} rows | p50 | p99 |",
        args.rows
    );
    println!("|---|---|---|");
    for (what, latencies) in [
        ("policy on otp_subject(), bound by session_use", &by_policy),
        (
            "the person as a literal, on a copy without the policy",
            &by_literal,
        ),
    ] {
        println!(
            "| {what} | {:.3} ms | {:.3} ms |",
            latencies.percentile(0.5),
            latencies.percentile(0.99)
        );
    }
    println!(
        "| ratio policy / literal | {:.2} | {:.2} |",
        by_policy.percentile(0.5) / by_literal.percentile(0.5),
        by_policy.percentile(0.99) / by_literal.percentile(0.99)
    );
    println!();
    println!("| with {} sessions of history | p50 | p99 |", args.rows);
    println!("|---|---|---|");
    for (what, latencies) in [("session_touch", &touched), ("session_use", &used)] {
        println!(
            "| {what} | {:.3} ms | {:.3} ms |",
            latencies.percentile(0.5),
            latencies.percentile(0.99)
        );
    }
    Ok(())
}
