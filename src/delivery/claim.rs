//! The claim: due, deliverable messages handed to a dispatcher under a lease.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::spi::SpiClient;

use std::sync::LazyLock;

use super::{finish, state, MessageState};
use crate::clock;
use crate::crypto::{Code, KeyRing};
use crate::errors::{OtpError, Result};
use crate::prepared;

pub const MAX_BATCH: i32 = 1000;

/// The claim's statement (see `claim`), returning the person's language
/// and time zone (`locale`: the columns, or NULLs before ALTER EXTENSION
/// pg_otp UPDATE).
fn claim_sql(locale: &str) -> String {
    state::sql(
        "WITH due AS (
             SELECT o.id
               FROM otp.outbox o
              WHERE o.state IN ({queued}, {sending}) AND o.destination <> '' AND o.available_at <= $1
                AND o.expires_at > $1
                AND (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id) = 'pending'
              ORDER BY o.available_at, o.id
              LIMIT $2
                FOR UPDATE SKIP LOCKED)
         UPDATE otp.outbox o
            SET state = {sending}, attempt = o.attempt + 1, available_at = $1 + $3
           FROM due WHERE o.id = due.id
      RETURNING o.id, o.challenge_id, o.agent, o.conversation, o.channel, o.destination,
                o.code_nonce, o.code_sealed, o.expires_at, o.attempt, o.key_id, {locale}",
    )
    .replace("{locale}", locale)
}
static CLAIM: LazyLock<String> = LazyLock::new(|| claim_sql("o.language, o.time_zone"));
static CLAIM_BEFORE_0_4: LazyLock<String> = LazyLock::new(|| claim_sql("NULL::text, NULL::text"));

/// A claimed message, as otp_outbox_claim returns it.
pub struct Claimed {
    pub message_id: i64,
    pub agent: String,
    pub conversation: String,
    pub channel: String,
    pub destination: String,
    pub code: Code,
    pub expires_at: TimestampWithTimeZone,
    pub attempt: i32,
    /// The person's language (a BCP 47 tag) and time zone (an IANA name),
    /// when the agent knows them.
    pub language: Option<String>,
    pub time_zone: Option<String>,
}

/// Claims up to `batch_size` due messages that can still be delivered (their
/// code has not expired, their challenge is still pending; decoys never)
/// for `lease`: each moves to `sending`, or back to it when an earlier lease
/// ran out, with its attempt counted. Messages that can no longer be
/// delivered are left to the sweep and take no places in the batch.
pub fn claim(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    batch_size: Option<i32>,
    lease: Option<Interval>,
) -> Result<Vec<Claimed>> {
    let batch_size = batch_size.ok_or_else(|| OtpError::null_argument("batch_size"))?;
    if !(1..=MAX_BATCH).contains(&batch_size) {
        return Err(OtpError::invalid_argument(
            "batch_size",
            format!("must be between 1 and {MAX_BATCH}"),
        ));
    }
    let lease = lease.ok_or_else(|| OtpError::null_argument("lease"))?;
    if lease.as_micros() <= 0 {
        return Err(OtpError::invalid_argument(
            "lease",
            "must be a positive interval",
        ));
    }
    let now = clock::now();
    let mut claimed = Vec::with_capacity(batch_size as usize);
    let mut unopenable = Vec::new();
    // The scan follows the outbox_due index in its order and stops at
    // `batch_size`; each message's challenge is looked up by its key; SKIP
    // LOCKED: dispatchers never wait on, or deadlock with, each other.
    let statement = if crate::schema::installed().locales {
        &CLAIM
    } else {
        &CLAIM_BEFORE_0_4
    };
    let rows = prepared::update(
        client,
        statement,
        None,
        &[now.into(), i64::from(batch_size).into(), lease.into()],
    )?;
    for row in rows {
        let message_id: i64 = row.get(1)?.unwrap_or_default();
        let challenge_id: i64 = row.get(2)?.unwrap_or_default();
        let nonce: Vec<u8> = row.get(7)?.unwrap_or_default();
        let sealed: Vec<u8> = row.get(8)?.unwrap_or_default();
        let key_id: Vec<u8> = row.get(11)?.unwrap_or_default();
        // A code sealed under a secret no longer configured cannot be
        // delivered; it must not block the rest of the batch either.
        let opened = ring
            .for_id(&key_id)
            .map(|keys| keys.open_code(challenge_id, &nonce, &sealed));
        let Some(Ok(code)) = opened else {
            unopenable.push((message_id, challenge_id));
            continue;
        };
        claimed.push(Claimed {
            message_id,
            agent: row.get(3)?.unwrap_or_default(),
            conversation: row.get(4)?.unwrap_or_default(),
            channel: row.get(5)?.unwrap_or_default(),
            destination: row.get(6)?.unwrap_or_default(),
            code,
            expires_at: row.get(9)?.expect("NOT NULL column"),
            attempt: row.get(10)?.unwrap_or_default(),
            language: row.get(12)?,
            time_zone: row.get(13)?,
        });
    }
    for (message_id, challenge_id) in unopenable {
        pgrx::warning!("pg_otp: outbox message {message_id} was sealed under a secret no longer configured; marked failed");
        prepared::update(
            client,
            "UPDATE otp.outbox SET last_error = 'sealed under a secret no longer configured' WHERE id = $1",
            None,
            &[message_id.into()],
        )?;
        finish(
            client,
            message_id,
            challenge_id,
            MessageState::Failed,
            None,
            now,
            false,
            None,
        )?;
    }
    claimed.sort_by_key(|m| m.message_id);
    Ok(claimed)
}
