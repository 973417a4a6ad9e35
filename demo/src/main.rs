//! otp-demo: the payroll agent of the example conversation, in a terminal.
//!
//! It calls pg_otp exactly as a chat application would (otp_issue,
//! otp_verify, session_touch, session_use, session_revoke, as a member of
//! otp_app), and reads pay stubs through a row-level security policy that
//! shows it only the verified person's row. The
//! code travels the real way: the outbox, then otp-dispatcher with the
//! console transport, which writes it to the "phone" file this demo shows.
//!
//! `--script FILE` plays the user's side from a file: `{code}` stands for
//! the code the phone received, `{wrong}` for a wrong one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_postgres::Client;

#[derive(Parser)]
#[command(name = "otp-demo")]
struct Args {
    /// Connection string of a role in otp_app that may read hr.employees
    /// (through its row-level security policy: see tests/pg_regress/sql/setup.sql);
    /// sslmode and sslrootcert as in libpq (see docs/dispatcher.md, TLS to PostgreSQL).
    #[arg(long)]
    database_url: String,
    /// The file otp-dispatcher --console writes deliveries to (the phone).
    #[arg(long)]
    phone: PathBuf,
    /// Play the user's lines from this file instead of the keyboard.
    #[arg(long)]
    script: Option<PathBuf>,
    /// The agent configured with otp_configure.
    #[arg(long, default_value = "payroll")]
    agent: String,
    /// The schema pg_otp was installed in (a plain lower-case identifier).
    #[arg(long, default_value = "public")]
    schema: String,
}

/// The calls, as the README's "Calling pg_otp safely" says: schema-qualified,
/// every argument typed, so no overload planted elsewhere can capture them.
struct Calls {
    issue: String,
    verify: String,
    touch: String,
    use_session: String,
    revoke: String,
}

impl Calls {
    fn new(schema: &str) -> Result<Self> {
        let plain = !schema.is_empty()
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        anyhow::ensure!(
            plain,
            "--schema {schema:?} must be a plain lower-case identifier"
        );
        Ok(Calls {
            issue: format!(
                "SELECT status, channel, destination_hint, pg_catalog.to_char(expires_at, 'HH24:MI')
                   FROM \"{schema}\".otp_issue($1::text, $2::text, $3::text)"
            ),
            verify: format!(
                "SELECT status, attempts_remaining, session_token, subject
                   FROM \"{schema}\".otp_verify($1::text, $2::text, $3::text)"
            ),
            touch: format!("SELECT status FROM \"{schema}\".session_touch($1::text)"),
            use_session: format!("SELECT status FROM \"{schema}\".session_use($1::text)"),
            revoke: format!("SELECT \"{schema}\".session_revoke($1::text)"),
        })
    }
}

enum Step {
    Greeting,
    AskIdentifier,
    AwaitCode,
    Authenticated { token: String, subject: String },
}

struct Agent {
    db: Client,
    calls: Calls,
    agent: String,
    conversation: String,
    phone: PathBuf,
    last_code: Option<String>,
}

fn say(text: &str) {
    println!("Agent: {text}");
}

impl Agent {
    /// Handles one line from the user; returns the next step, None to end.
    async fn hear(&mut self, step: Step, line: &str) -> Result<Option<Step>> {
        Ok(Some(match step {
            Step::Greeting => {
                say("Sure. To protect your data I first need to know who you are. What is your employee number?");
                Step::AskIdentifier
            }
            Step::AskIdentifier => self.identify(line.trim()).await?,
            Step::AwaitCode => self.check_code(line).await?,
            Step::Authenticated { token, subject } => {
                let row = self.db.query_one(&self.calls.touch, &[&token]).await?;
                let status: String = row.get(0);
                if status != "active" {
                    say("For your security I closed our session after a while without messages. Send your employee number to start again.");
                    return Ok(Some(Step::AskIdentifier));
                }
                if ["bye", "exit", "quit", "thanks"]
                    .iter()
                    .any(|w| line.to_lowercase().contains(w))
                {
                    self.db.query_one(&self.calls.revoke, &[&token]).await?;
                    say("You're welcome. I closed the session. Goodbye!");
                    return Ok(None);
                }
                if !self.pay_stub(&token, "Anything else?").await? {
                    say("For your security I closed our session. Send your employee number to start again.");
                    return Ok(Some(Step::AskIdentifier));
                }
                Step::Authenticated { token, subject }
            }
        }))
    }

    async fn identify(&mut self, identifier: &str) -> Result<Step> {
        let before = std::fs::metadata(&self.phone).map(|m| m.len()).unwrap_or(0);
        let row = self
            .db
            .query_one(
                &self.calls.issue,
                &[&self.agent, &self.conversation, &identifier],
            )
            .await?;
        let (status, channel, hint, until): (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3));
        match status.as_str() {
            "code_sent" => {
                let hint = hint.unwrap_or_default();
                let place = if channel.as_deref() == Some("email") {
                    format!("your email address {hint}")
                } else {
                    format!(
                        "your WhatsApp number ending in {}",
                        hint.trim_start_matches('*')
                    )
                };
                say(&format!(
                    "I sent a 6-digit code to {place}. Please type it here."
                ));
                self.show_phone(before).await;
                Ok(Step::AwaitCode)
            }
            "not_found" => {
                say("I could not find that employee number. Please check it and send it again.");
                Ok(Step::AskIdentifier)
            }
            "no_channel" => {
                say("Your record has no phone number or email I could send a code to. Please contact HR.");
                Ok(Step::AskIdentifier)
            }
            "rate_limited" => {
                say(&format!(
                    "Too many codes were requested. Please try again after {} (UTC).",
                    until.unwrap_or_default()
                ));
                Ok(Step::AskIdentifier)
            }
            other => anyhow::bail!("unexpected status {other}"),
        }
    }

    async fn check_code(&mut self, typed: &str) -> Result<Step> {
        let row = self
            .db
            .query_one(
                &self.calls.verify,
                &[&self.agent, &self.conversation, &typed],
            )
            .await?;
        let status: String = row.get(0);
        Ok(match status.as_str() {
            "verified" => {
                let (token, subject): (String, String) = (row.get(2), row.get(3));
                self.pay_stub(&token, "Is there anything else I can help with?")
                    .await?;
                Step::Authenticated { token, subject }
            }
            "incorrect" => {
                let left: i32 = row.get(1);
                say(&format!(
                    "That code is not right. {left} attempt{} remaining.",
                    if left == 1 { "" } else { "s" }
                ));
                Step::AwaitCode
            }
            "invalid_format" => {
                say("Codes have 6 digits. Please type the code you received.");
                Step::AwaitCode
            }
            "locked" => {
                say("That was the last attempt, so I cancelled this verification. Send your employee number to start again.");
                Step::AskIdentifier
            }
            "expired" => {
                say("That code has expired. Send your employee number and I will send a new one.");
                Step::AskIdentifier
            }
            _ => {
                say(
                    "There is no code waiting for this conversation. What is your employee number?",
                );
                Step::AskIdentifier
            }
        })
    }

    /// Shows the pay stub of the session's person, in a transaction bound
    /// to the session (session_use): hr.employees has a row-level security
    /// policy on otp_subject('payroll'), so this role sees that person's row
    /// and no other, whatever the query asks. False when the session is over.
    async fn pay_stub(&mut self, token: &str, then: &str) -> Result<bool> {
        let transaction = self.db.transaction().await?;
        let status: String = transaction
            .query_one(&self.calls.use_session, &[&token])
            .await?
            .get(0);
        if status != "active" {
            transaction.rollback().await?;
            return Ok(false);
        }
        let rows = transaction
            .query(
                "SELECT full_name, pg_catalog.to_char(net_pay, 'FM999,999,990.00') FROM hr.employees",
                &[],
            )
            .await?;
        transaction.commit().await?;
        anyhow::ensure!(rows.len() == 1, "the policy showed {} rows", rows.len());
        let (name, pay): (String, String) = (rows[0].get(0), rows[0].get(1));
        say(&format!(
            "Thanks, {name}. Your latest pay stub: net pay {pay}. {then}"
        ));
        Ok(true)
    }

    /// Shows what the phone received since `before`: the dispatcher's
    /// console delivery, usually within milliseconds.
    async fn show_phone(&mut self, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let content = std::fs::read(&self.phone).unwrap_or_default();
            let fresh = String::from_utf8_lossy(&content[(before as usize).min(content.len())..])
                .to_string();
            if let Some(line) = fresh.lines().find(|l| l.trim_end().ends_with('}')) {
                let message: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let code = message["code"].as_str().unwrap_or_default().to_owned();
                println!(
                    "        [{} to {}: \"Your payroll code is {code}. It expires in 5 minutes.\"]",
                    if message["channel"] == "email" {
                        "Email"
                    } else {
                        "WhatsApp"
                    },
                    message["to"].as_str().unwrap_or_default()
                );
                self.last_code = Some(code);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("        [nothing arrived on the phone: is otp-dispatcher running?]");
    }

    /// A script line with `{code}` / `{wrong}` filled in.
    fn fill_in(&self, line: &str) -> String {
        let code = self.last_code.clone().unwrap_or_default();
        let wrong = code
            .parse::<u32>()
            .map(|n| format!("{:06}", (n + 1) % 1_000_000))
            .unwrap_or_default();
        line.replace("{code}", &code).replace("{wrong}", &wrong)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let calls = Calls::new(&args.schema)?;
    let (db, connection) = otp_common::pg_tls::connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    let conversation = format!("demo:{}", std::process::id());
    let mut agent = Agent {
        db,
        calls,
        agent: args.agent,
        conversation,
        phone: args.phone,
        last_code: None,
    };

    let mut lines: Box<dyn Iterator<Item = String>> = match &args.script {
        Some(path) => Box::new(
            std::fs::read_to_string(path)?
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .into_iter(),
        ),
        None => Box::new(std::iter::empty()),
    };
    let mut keyboard = BufReader::new(tokio::io::stdin()).lines();
    say("Hi! I am the payroll assistant. How can I help you today?");
    let mut step = Step::Greeting;
    loop {
        let line = if args.script.is_some() {
            let Some(line) = lines.next() else { break };
            let line = agent.fill_in(&line);
            println!("You:   {line}");
            line
        } else {
            use std::io::Write;
            print!("You:   ");
            std::io::stdout().flush()?;
            let Some(line) = keyboard.next_line().await? else {
                break;
            };
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        match agent.hear(step, &line).await? {
            Some(next) => step = next,
            None => break,
        }
    }
    Ok(())
}
