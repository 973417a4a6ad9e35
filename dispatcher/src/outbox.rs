//! The dispatcher's side of the pg_otp outbox protocol, over one connection.
//!
//! The connection LISTENs on `otp_outbox`; a notification wakes the claim
//! loop at once. Results are reported in one transaction per batch, so that
//! a burst of deliveries costs one WAL flush rather than one per message.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use futures_util::future::try_join_all;
use futures_util::{stream, StreamExt};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client};
use tracing::{debug, warn};

use crate::config::Secret;
use crate::message::{Delivered, Message, Outcome};

pub const NOTIFY_CHANNEL: &str = "otp_outbox";

pub struct Outbox {
    client: Client,
    /// Statements naming the extension's schema.
    sql: Statements,
}

struct Statements {
    claim: String,
    sweep: String,
    sent: String,
    failed: String,
    expired: String,
}

impl Statements {
    /// Every call names the extension's schema and the type of every
    /// parameter: an untyped parameter lets PostgreSQL choose among
    /// overloads, and a role with CREATE on that schema could plant one
    /// (`otp_outbox_claim(text, interval)`) that the dispatcher would call.
    fn new(schema: &str) -> Self {
        Self {
            claim: format!(
                "SELECT message_id, agent, channel, destination, code, expires_at, attempt, language, time_zone
                   FROM {schema}.otp_outbox_claim($1::pg_catalog.int4,
                                                  pg_catalog.make_interval(secs => $2::pg_catalog.float8))"
            ),
            sweep: format!("SELECT finished, decoys FROM {schema}.otp_outbox_sweep()"),
            sent: format!(
                "SELECT {schema}.otp_outbox_sent($1::pg_catalog.int8, $2::pg_catalog.int4, $3::pg_catalog.text)"
            ),
            failed: format!(
                "SELECT {schema}.otp_outbox_failed($1::pg_catalog.int8, $2::pg_catalog.int4, $3::pg_catalog.text,
                                                   $4::pg_catalog.bool)"
            ),
            expired: format!(
                "SELECT {schema}.otp_outbox_expired($1::pg_catalog.int8, $2::pg_catalog.int4)"
            ),
        }
    }
}

impl Outbox {
    /// Connects, starts LISTENing, and signals `wake` on every notification.
    pub async fn connect(url: &Secret, schema: &str, wake: Arc<Notify>) -> Result<Self> {
        // The connection string may hold a password: never put it in an error.
        // TLS as the connection string's sslmode and sslrootcert say.
        let (client, mut connection) = otp_common::pg_tls::connect(url.expose())
            .await
            .context("connecting to PostgreSQL")?;
        tokio::spawn(async move {
            let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(AsyncMessage::Notice(notice)) => {
                        debug!(notice = %notice.message(), "server notice")
                    }
                    Ok(_) => {}
                    Err(err) => {
                        warn!(error = %err, "database connection lost");
                        break;
                    }
                }
            }
            // Wake the loop so that it notices the closed connection now.
            wake.notify_one();
        });
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .context("LISTEN otp_outbox")?;
        Ok(Self {
            client,
            sql: Statements::new(schema),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Claims up to `limit` due messages for `lease`.
    pub async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        let rows = self
            .client
            .query(&self.sql.claim, &[&(limit as i32), &lease.as_secs_f64()])
            .await
            .context("otp_outbox_claim")?;
        let claimed_at = Instant::now();
        Ok(rows
            .iter()
            .map(|row| Message {
                id: row.get(0),
                agent: row.get(1),
                channel: row.get(2),
                destination: row.get(3),
                code: row.get(4),
                expires_at: row.get::<_, SystemTime>(5),
                attempt: row.get(6),
                language: row.get(7),
                time_zone: row.get(8),
                claimed_at,
            })
            .collect())
    }

    /// Moves on what no claim hands out (expired and cancelled messages,
    /// decoys); returns how many real messages it finished and decoys it moved.
    pub async fn sweep(&self) -> Result<(i64, i64)> {
        let row = self
            .client
            .query_one(&self.sql.sweep, &[])
            .await
            .context("otp_outbox_sweep")?;
        Ok((row.get(0), row.get(1)))
    }

    /// Reports outcomes. All in one transaction; if that fails for a reason
    /// other than the connection, each is reported on its own so that one
    /// bad report cannot hold back the others. Returns the outcomes to
    /// report again later: those whose challenge an application's open
    /// transaction holds (55P03, lock_not_available).
    pub async fn report(&mut self, outcomes: &[Outcome]) -> Result<Vec<Outcome>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let batch = async {
            let transaction = self.client.transaction().await?;
            try_join_all(
                outcomes
                    .iter()
                    .map(|outcome| report_one(&transaction, &self.sql, outcome)),
            )
            .await?;
            transaction.commit().await
        };
        match batch.await {
            Ok(()) => Ok(Vec::new()),
            Err(err) if self.client.is_closed() => Err(err).context("reporting delivery results"),
            Err(err) => {
                if err.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    warn!(error = %err, "reporting a batch failed; reporting one by one");
                }
                let mut later = Vec::new();
                for outcome in outcomes {
                    match report_one(&self.client, &self.sql, outcome).await {
                        Ok(()) => {}
                        Err(err) if self.client.is_closed() => {
                            return Err(err).context("reporting delivery results")
                        }
                        Err(err) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                            debug!(
                                ?outcome,
                                "its challenge is held by a transaction; reporting later"
                            );
                            later.push(outcome.clone());
                        }
                        Err(err) => warn!(?outcome, error = %err, "the database refused a report"),
                    }
                }
                Ok(later)
            }
        }
    }
}

async fn report_one<C: tokio_postgres::GenericClient>(
    client: &C,
    sql: &Statements,
    outcome: &Outcome,
) -> Result<(), tokio_postgres::Error> {
    let Outcome {
        id,
        attempt,
        result,
    } = outcome;
    let applied: bool = match result {
        Delivered::Sent { provider_ref } => {
            client
                .query_one(&sql.sent, &[id, attempt, provider_ref])
                .await?
        }
        Delivered::Failed { error, retryable } => {
            client
                .query_one(&sql.failed, &[id, attempt, error, retryable])
                .await?
        }
        Delivered::Expired => client.query_one(&sql.expired, &[id, attempt]).await?,
    }
    .get(0);
    if !applied {
        // Our lease ran out and the message was claimed again: the database
        // keeps the newer attempt's outcome.
        warn!(
            message_id = id,
            attempt, "report ignored: the message was claimed again after our lease ran out"
        );
    }
    Ok(())
}
