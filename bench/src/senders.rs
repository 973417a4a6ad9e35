//! Per-agent senders benchmark: messages/s through WhatsApp with two
//! senders and per-agent templates and languages (a configuration file),
//! against 0.2.0's single sender, in the same run.
//!
//! Four set-ups, on one cluster with this build's library, each draining
//! the same number of queued codes with one dispatcher:
//! - `0.2.0`: the 0.2.0 dispatcher (`--baseline-dispatcher`, a build of tag
//!   v0.2.0) on a database whose schema is 0.2.0, one sender (flags);
//! - `0.3.0`: likewise with 0.3.0 (`--previous-dispatcher`), the release
//!   before per-agent senders, so that their own cost shows apart from
//!   what 0.3.0 changed;
//! - `flags`: this dispatcher, one sender (flags), on the current schema;
//! - `two senders`: this dispatcher with `--config`: two WhatsApp senders
//!   (two fake Graph APIs with their own phone number ids), two agents with
//!   their own templates and language maps, half the codes each, for people
//!   whose records name es-MX, en or nothing.
//!
//! The set-ups alternate for `--rounds` rounds; rate is measured between
//! the first and the last request the providers receive. Prints Markdown.

mod fake;

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fake::{connect, connection_string, fake_provider, Arrivals, Dispatcher};
use wiremock::MockServer;

const CURRENT_DB: &str = "pg_otp_bench_senders";
const DB_020: &str = "pg_otp_bench_senders_020";
const DB_030: &str = "pg_otp_bench_senders_030";

#[derive(Parser)]
struct Args {
    /// This build's otp-dispatcher (release).
    #[arg(long)]
    dispatcher: String,
    /// otp-dispatcher 0.2.0 (release).
    #[arg(long)]
    baseline_dispatcher: String,
    /// otp-dispatcher 0.3.0 (release).
    #[arg(long)]
    previous_dispatcher: String,
    /// Codes drained per measurement.
    #[arg(long, default_value_t = 6000)]
    messages: usize,
    /// Rounds of the three set-ups, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn start(binary: &str, url: &str, args: &[String]) -> Result<Dispatcher> {
    let child = Command::new(binary)
        .args([
            "--database-url",
            url,
            "--batch-size",
            "256",
            "--concurrency",
            "256",
        ])
        .args(args)
        .env("OTP_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting otp-dispatcher")?;
    Ok(Dispatcher(child))
}

/// The two databases: the current schema with two agents over a table with
/// a language column, and the 0.2.0 schema with one agent.
fn prepare() -> Result<()> {
    // the roles (it_app, it_sender) and the current database
    pg_otp_integration::connection_string(CURRENT_DB, "postgres");
    let mut current = pg_otp_integration::connect_to("postgres", CURRENT_DB);
    current.batch_execute(
        "CREATE TABLE IF NOT EXISTS staff (id text PRIMARY KEY, phone text, lang text);
         INSERT INTO staff VALUES ('es', '+52 55 1000 0001', 'es-MX'), ('en', '+52 55 1000 0002', 'en'),
                                  ('none', '+52 55 1000 0003', NULL)
             ON CONFLICT DO NOTHING;
         SELECT otp_configure(agent => a, source => 'staff', id_column => 'id', phone_column => 'phone',
                              language_column => 'lang', max_codes => 1000000, resend_cooldown => '0')
           FROM unnest(ARRAY['payroll', 'clients']) a;",
    )?;
    for (database, version) in [(DB_020, "0.2.0"), (DB_030, "0.3.0")] {
        let mut old = pg_otp_integration::fresh_database(database);
        old.batch_execute(&format!(
            "CREATE EXTENSION pg_otp VERSION '{version}';
             CREATE TABLE staff (id text PRIMARY KEY, phone text);
             INSERT INTO staff VALUES ('es', '+52 55 1000 0001'), ('en', '+52 55 1000 0002'),
                                      ('none', '+52 55 1000 0003');
             SELECT otp_configure(agent => a, source => 'staff', id_column => 'id', phone_column => 'phone',
                                  max_codes => 1000000, resend_cooldown => '0')
               FROM unnest(ARRAY['payroll', 'clients']) a;"
        ))?;
    }
    Ok(())
}

/// Queues `n` codes from 4 connections, split between the two agents and
/// the three people, while no dispatcher runs.
async fn fill(database: &'static str, n: usize, round: usize) -> Result<()> {
    let db = connect(connection_string(database, "postgres")).await?;
    db.batch_execute("TRUNCATE otp.outbox, otp.challenge, otp.session")
        .await?;
    let mut fills = Vec::new();
    for c in 0..4 {
        fills.push(tokio::spawn(async move {
            let app = connect(connection_string(database, pg_otp_integration::APP)).await?;
            let issue = app
                .prepare("SELECT status FROM otp_issue($1, $2, $3)")
                .await?;
            for i in 0..n / 4 {
                let agent = if i % 2 == 0 { "payroll" } else { "clients" };
                let person = ["es", "en", "none"][i % 3];
                let status: String = app
                    .query_one(&issue, &[&agent, &format!("s-{round}-{c}-{i}"), &person])
                    .await?
                    .get(0);
                if status != "code_sent" {
                    bail!("otp_issue answered {status}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for fill in fills {
        fill.await??;
    }
    Ok(())
}

/// What one drain measured.
struct Drained {
    /// Messages/s at the providers.
    rate: f64,
    /// CPU time of the dispatcher process and of its database backends,
    /// from the start to the last report.
    dispatcher_cpu: Duration,
    backends_cpu: Duration,
}

/// CPU time (user and system) a process has used so far, from /proc
/// (`clock_ticks` per second).
fn cpu_time(pid: u32, clock_ticks: f64) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // the fields after the command name, which may hold spaces
    let after = stat
        .rfind(')')
        .map(|end| &stat[end + 2..])
        .context("reading /proc/PID/stat")?;
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime: fields 14 and 15 of proc(5)'s stat, the 12th and 13th here
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks))
}

fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// Drains the queue with one dispatcher.
async fn drain(
    binary: &str,
    database: &str,
    args: &[String],
    providers: &[&Arrivals],
    total: usize,
) -> Result<Drained> {
    let url = connection_string(database, pg_otp_integration::SENDER);
    let dispatcher = start(binary, &url, args)?;
    for provider in providers {
        provider
            .wait_for(total / providers.len(), Duration::from_secs(300))
            .await?;
    }
    let rate = Arrivals::rate(providers);
    // Every report made, then the CPU each side used.
    let db = connect(connection_string(database, "postgres")).await?;
    let started = std::time::Instant::now();
    loop {
        let sent: i64 = db
            .query_one("SELECT count(*) FROM otp.outbox WHERE state = 'sent'", &[])
            .await?
            .get(0);
        if sent as usize == total {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{sent} of {total} reported after a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backends: Vec<i32> = db
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&database, &pg_otp_integration::SENDER],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let ticks = clock_ticks()?;
    let mut backends_cpu = Duration::ZERO;
    for pid in backends {
        backends_cpu += cpu_time(pid as u32, ticks)?;
    }
    Ok(Drained {
        rate,
        dispatcher_cpu: cpu_time(dispatcher.0.id(), ticks)?,
        backends_cpu,
    })
}

fn flags(binary: &str, server: &MockServer) -> Vec<String> {
    let mut flags = [
        "--whatsapp-api-url",
        &format!("{}/v21.0", server.uri()),
        "--whatsapp-phone-number-id",
        "1",
        "--whatsapp-token",
        "bench",
    ]
    .map(String::from)
    .to_vec();
    flags.extend(fake::unpaced(binary));
    flags
}

fn config_file(
    dir: &std::path::Path,
    hr: &MockServer,
    clients: &MockServer,
) -> Result<Vec<String>> {
    let path = dir.join("senders.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[whatsapp.hr]
phone_number_id = "111"
token = "bench-hr"
api_url = "{hr}/v21.0"
rate = 1000000
pair_interval_seconds = 0
[whatsapp.clients]
phone_number_id = "222"
token = "bench-clients"
api_url = "{clients}/v21.0"
rate = 1000000
pair_interval_seconds = 0
[agents.payroll]
display_name = "Nómina"
language = "es-MX"
time_zone = "America/Mexico_City"
whatsapp = "hr"
whatsapp_template = "codigo_nomina"
whatsapp_languages = {{ es = "es_MX", en = "en_US" }}
[agents.clients]
language = "en"
whatsapp = "clients"
whatsapp_template = "client_code"
whatsapp_languages = {{ en = "en_US", es = "es" }}
"#,
            hr = hr.uri(),
            clients = clients.uri()
        ),
    )?;
    Ok(vec!["--config".into(), path.display().to_string()])
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    tokio::task::spawn_blocking(prepare).await??;
    let dir = std::env::temp_dir().join(format!("senders-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let total = args.messages / 4 * 4;
    let setups = [
        (
            "0.2.0, one sender",
            args.baseline_dispatcher.as_str(),
            DB_020,
            false,
        ),
        (
            "0.3.0, one sender",
            args.previous_dispatcher.as_str(),
            DB_030,
            false,
        ),
        (
            "this build, one sender (flags)",
            args.dispatcher.as_str(),
            CURRENT_DB,
            false,
        ),
        (
            "this build, two senders, per-agent templates (--config)",
            args.dispatcher.as_str(),
            CURRENT_DB,
            true,
        ),
    ];
    let mut rates = vec![Vec::new(); setups.len()];
    let mut dispatcher_cpu = vec![Vec::new(); setups.len()];
    let mut backends_cpu = vec![Vec::new(); setups.len()];
    let names: Vec<&str> = setups.iter().map(|s| s.0).collect();
    println!("| round | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(setups.len()));
    for round in 0..args.rounds {
        let mut row = Vec::new();
        for (i, (_, binary, database, two_senders)) in setups.iter().enumerate() {
            let (hr, hr_arrivals) = fake_provider().await;
            let (clients, clients_arrivals) = fake_provider().await;
            fill(database, total, round).await?;
            let drained = if *two_senders {
                let config = config_file(&dir, &hr, &clients)?;
                let drained = drain(
                    binary,
                    database,
                    &config,
                    &[&hr_arrivals, &clients_arrivals],
                    total,
                )
                .await?;
                let split = (hr_arrivals.count(), clients_arrivals.count());
                if split.0 != total / 2 || split.1 != total / 2 {
                    bail!("the two senders got {split:?} of {total}");
                }
                drained
            } else {
                drain(
                    binary,
                    database,
                    &flags(binary, &hr),
                    &[&hr_arrivals],
                    total,
                )
                .await?
            };
            row.push(format!("{:.0} messages/s", drained.rate));
            rates[i].push(drained.rate);
            // CPU per message, in microseconds
            let per_message = |cpu: Duration| cpu.as_secs_f64() * 1e6 / total as f64;
            dispatcher_cpu[i].push(per_message(drained.dispatcher_cpu));
            backends_cpu[i].push(per_message(drained.backends_cpu));
        }
        println!("| {} | {} |", round + 1, row.join(" | "));
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let cells: Vec<String> = medians
        .iter()
        .map(|m| format!("{m:.0} messages/s"))
        .collect();
    println!("| median | {} |", cells.join(" | "));
    println!();
    println!(
        "two senders / 0.2.0: {:.2}; / 0.3.0: {:.2}; / this build's one sender: {:.2} ({total} messages each)",
        medians[3] / medians[0],
        medians[3] / medians[1],
        medians[3] / medians[2]
    );
    println!();
    println!("CPU per message (median, µs): the dispatcher process, and its database connections' backends");
    println!();
    println!("| | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(setups.len()));
    for (what, values) in [
        ("dispatcher", &mut dispatcher_cpu),
        ("its backends", &mut backends_cpu),
    ] {
        let cells: Vec<String> = values
            .iter_mut()
            .map(|v| format!("{:.0}", median(v)))
            .collect();
        println!("| {what} | {} |", cells.join(" | "));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
