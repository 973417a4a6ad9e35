//! The outbox: messages carrying codes, handed to the delivery process.
//!
//! The database never makes network calls. otp_issue writes a message here and
//! sends `NOTIFY otp_outbox` in the same transaction; a dispatcher claims due
//! messages, delivers them, and reports each result.
//!
//! Message states: `queued` → `sending` (claimed, under a lease) → one of
//! `sent`, `failed` (permanent), `expired` (the code ran out before delivery),
//! `cancelled` (the challenge ended first). A retryable failure goes back to
//! `queued` with a backoff. A lease that runs out makes the message claimable
//! again, so a crashed dispatcher loses nothing. The sealed code is erased when
//! a message reaches a final state (a CHECK constraint enforces it).

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use crate::audit::{self, Event};
use crate::clock;
use crate::config::Channel;
use crate::crypto::{self, Code, KeyRing, Keys};
use crate::errors::{OtpError, Result};
use crate::prepared;
use crate::record::{self, Destination};

/// Channel a dispatcher listens on.
pub const NOTIFY_CHANNEL: &str = "otp_outbox";
pub const MAX_BATCH: i32 = 1000;
/// After this many delivery attempts a message fails for good.
pub const MAX_DELIVERY_ATTEMPTS: i32 = 10;
/// Retry backoff: 1 s doubling to at most 30 s, each with jitter.
const BACKOFF_BASE_SECS: f64 = 1.0;
const BACKOFF_CAP_SECS: f64 = 30.0;
/// Provider errors are kept for diagnosis, within reason.
const MAX_ERROR_LEN: usize = 1000;

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
}

/// A message to queue: the code of a new challenge and where it goes.
/// A decoy's message (reveal_unknown => false, nobody to send it to) is
/// written too, born `cancelled` without a code, so that an unknown
/// identifier costs the same work as a known one; no dispatcher claims it.
pub struct Outgoing<'a> {
    pub challenge_id: i64,
    pub agent: &'a str,
    pub conversation: &'a str,
    pub destination: &'a Destination,
    pub fallback: Option<&'a Destination>,
    pub code: &'a str,
    pub created_at: TimestampWithTimeZone,
    pub expires_at: TimestampWithTimeZone,
    pub decoy: bool,
}

/// Queues the code of a new challenge for delivery and wakes the dispatchers.
pub fn enqueue(client: &mut SpiClient<'_>, keys: &Keys, message: &Outgoing<'_>) -> Result<()> {
    // Sealed for decoys too: the same work, then thrown away.
    let sealed = keys.seal_code(message.challenge_id, message.code)?;
    let (state, sealed, finished_at) = if message.decoy {
        ("cancelled", None, Some(message.created_at))
    } else {
        ("queued", Some(sealed), None)
    };
    let (nonce, ciphertext) = sealed.map(|s| (s.nonce, s.ciphertext)).unzip();
    prepared::update(
        client,
        "INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination,
                                 fallback_channel, fallback_destination, code_nonce, code_sealed,
                                 available_at, expires_at, created_at, key_id, state, finished_at)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $12, $14, $15
           -- wakes the dispatchers when the transaction commits (one row, no
           -- extra round trip; a constant payload, so repeats fold into one)
           FROM pg_catalog.pg_notify($13, '') AS wake",
        None,
        &[
            message.challenge_id.into(),
            message.agent.into(),
            message.conversation.into(),
            message.destination.channel.as_str().into(),
            message.destination.address.as_str().into(),
            message.fallback.map(|f| f.channel.as_str()).into(),
            message.fallback.map(|f| f.address.as_str()).into(),
            nonce.into(),
            ciphertext.into(),
            message.created_at.into(),
            message.expires_at.into(),
            keys.id.to_vec().into(),
            NOTIFY_CHANNEL.into(),
            state.into(),
            finished_at.into(),
        ],
    )?;
    Ok(())
}

fn wake_dispatchers(client: &mut SpiClient<'_>) -> Result<()> {
    // A constant payload: PostgreSQL folds repeats within one transaction.
    prepared::update(
        client,
        "SELECT pg_catalog.pg_notify($1, '')",
        None,
        &[NOTIFY_CHANNEL.into()],
    )?;
    Ok(())
}

/// Claims up to `batch_size` due messages for `lease`. Messages whose code has
/// expired are finished as `expired` instead and never returned; messages
/// whose challenge ended while they were leased (verified, say) are finished
/// as `cancelled`.
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
    let mut swept = false;
    loop {
        let room = i64::from(batch_size) - (claimed.len() + unopenable.len()) as i64;
        let mut finished_some = false;
        let mut expired = Vec::new();
        for row in claim_due(client, now, room, lease)? {
            let message_id: i64 = row.get(1)?.unwrap_or_default();
            let challenge_id: i64 = row.get(2)?.unwrap_or_default();
            match row.get::<String>(3)?.as_deref() {
                Some("sending") => {}
                Some("expired") => {
                    finished_some = true;
                    expired.push(challenge_id);
                    continue;
                }
                _ => {
                    finished_some = true;
                    continue;
                }
            }
            let nonce: Vec<u8> = row.get(8)?.unwrap_or_default();
            let sealed: Vec<u8> = row.get(9)?.unwrap_or_default();
            let key_id: Vec<u8> = row.get(12)?.unwrap_or_default();
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
                agent: row.get(4)?.unwrap_or_default(),
                conversation: row.get(5)?.unwrap_or_default(),
                channel: row.get(6)?.unwrap_or_default(),
                destination: row.get(7)?.unwrap_or_default(),
                code,
                expires_at: row.get(10)?.expect("NOT NULL column"),
                attempt: row.get(11)?.unwrap_or_default(),
            });
        }
        mark_delivery_expired(client, expired)?;
        // Undeliverable messages took places in this batch: finish the rest
        // of them at once, then fill the places with deliverable ones.
        let full = (claimed.len() + unopenable.len()) as i64 >= i64::from(batch_size);
        if !finished_some || full || swept {
            break;
        }
        let expired = finish_undeliverable(client, now)?;
        mark_delivery_expired(client, expired)?;
        swept = true;
    }
    for (message_id, challenge_id) in unopenable {
        pgrx::warning!("pg_otp: outbox message {message_id} was sealed under a secret no longer configured; marked failed");
        prepared::update(
            client,
            "UPDATE otp.outbox SET last_error = 'sealed under a secret no longer configured' WHERE id = $1",
            None,
            &[message_id.into()],
        )?;
        finish(client, message_id, challenge_id, "failed", None, now)?;
    }
    claimed.sort_by_key(|m| m.message_id);
    Ok(claimed)
}

/// One pass of a claim, one statement: locks up to `limit` messages in the
/// order they became due (SKIP LOCKED: dispatchers never wait on, or
/// deadlock with, each other) and moves each to `sending` under a lease, or
/// finishes it when it can no longer be sent: `expired` (the code ran out
/// while queued) or `cancelled` (its challenge ended while a lease ran out).
/// The scan follows the outbox_due index in its order and stops at `limit`;
/// each message's challenge is looked up by its key.
fn claim_due<'conn>(
    client: &mut SpiClient<'conn>,
    now: TimestampWithTimeZone,
    limit: i64,
    lease: Interval,
) -> Result<pgrx::spi::SpiTupleTable<'conn>> {
    prepared::update(
        client,
        "WITH judged AS (
             SELECT o.id,
                    CASE WHEN o.expires_at <= $1 THEN 'expired'
                         WHEN (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id)
                              IS DISTINCT FROM 'pending' THEN 'cancelled'
                         ELSE 'sending' END AS next_state
               FROM otp.outbox o
              WHERE o.state IN ('queued', 'sending') AND o.available_at <= $1
              ORDER BY o.available_at, o.id
              LIMIT $2
                FOR UPDATE SKIP LOCKED)
         UPDATE otp.outbox o
            SET state = judged.next_state,
                attempt = CASE WHEN judged.next_state = 'sending' THEN o.attempt + 1 ELSE o.attempt END,
                available_at = CASE WHEN judged.next_state = 'sending' THEN $1 + $3 ELSE o.available_at END,
                code_nonce = CASE WHEN judged.next_state = 'sending' THEN o.code_nonce END,
                code_sealed = CASE WHEN judged.next_state = 'sending' THEN o.code_sealed END,
                finished_at = CASE WHEN judged.next_state = 'sending' THEN NULL ELSE $1 END
           FROM judged WHERE o.id = judged.id
      RETURNING o.id, o.challenge_id, o.state, o.agent, o.conversation, o.channel, o.destination,
                o.code_nonce, o.code_sealed, o.expires_at, o.attempt, o.key_id",
        None,
        &[now.into(), limit.into(), lease.into()],
    )
}

/// Undeliverable messages one claim finishes at most; more wait for the next.
const MAX_FINISHED_PER_CLAIM: i64 = 1000;

/// Finishes due messages that can no longer be sent (see `claim_due`), so
/// that they stop taking places in claims. Runs only when a claim met one.
/// Returns the challenges whose message expired.
fn finish_undeliverable(
    client: &mut SpiClient<'_>,
    now: TimestampWithTimeZone,
) -> Result<Vec<i64>> {
    prepared::update(
        client,
        "WITH undeliverable AS (
             SELECT o.id, CASE WHEN o.expires_at <= $1 THEN 'expired' ELSE 'cancelled' END AS final_state
               FROM otp.outbox o
              WHERE o.state IN ('queued', 'sending') AND o.available_at <= $1
                AND (o.expires_at <= $1
                     OR (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id)
                        IS DISTINCT FROM 'pending')
              ORDER BY o.available_at, o.id
              LIMIT $2
                FOR UPDATE SKIP LOCKED),
         finished AS (
             UPDATE otp.outbox o
                SET state = undeliverable.final_state, code_nonce = NULL, code_sealed = NULL, finished_at = $1
               FROM undeliverable WHERE o.id = undeliverable.id
          RETURNING o.challenge_id, o.state)
         SELECT challenge_id FROM finished WHERE state = 'expired'",
        None,
        &[now.into(), MAX_FINISHED_PER_CLAIM.into()],
    )?
    .map(|row| Ok(row.get::<i64>(1)?.unwrap_or_default()))
    .collect()
}

/// Mirrors on the challenges that their message expired before delivery.
fn mark_delivery_expired(client: &mut SpiClient<'_>, challenge_ids: Vec<i64>) -> Result<()> {
    if challenge_ids.is_empty() {
        return Ok(());
    }
    prepared::update(
        client,
        "UPDATE otp.challenge SET delivery = 'expired' WHERE id = ANY ($1) AND delivery = 'queued'",
        None,
        &[challenge_ids.into()],
    )?;
    Ok(())
}

/// The state of one message, locked for the caller's update.
struct Message {
    challenge_id: i64,
    state: String,
    attempt: i32,
    nonce: Option<Vec<u8>>,
    sealed: Option<Vec<u8>>,
    key_id: Vec<u8>,
    has_fallback: bool,
}

fn lock_message(client: &mut SpiClient<'_>, message_id: Option<i64>) -> Result<(i64, Message)> {
    let message_id = message_id.ok_or_else(|| OtpError::null_argument("message_id"))?;
    // update(), not select(): a locking read needs a read-write SPI call.
    let row = prepared::update(
        client,
        "SELECT challenge_id, state, attempt, code_nonce, code_sealed, fallback_channel IS NOT NULL, key_id
           FROM otp.outbox WHERE id = $1 FOR UPDATE",
        Some(1),
        &[message_id.into()],
    )?
        .first();
    if row.is_empty() {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("pg_otp: outbox message {message_id} does not exist"),
        ));
    }
    Ok((
        message_id,
        Message {
            challenge_id: row.get(1)?.unwrap_or_default(),
            state: row.get(2)?.unwrap_or_default(),
            attempt: row.get(3)?.unwrap_or_default(),
            nonce: row.get(4)?,
            sealed: row.get(5)?,
            has_fallback: row.get(6)?.unwrap_or(false),
            key_id: row.get(7)?.unwrap_or_default(),
        },
    ))
}

fn not_claimed(message_id: i64, state: &str) -> OtpError {
    OtpError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("pg_otp: outbox message {message_id} is not claimed (state {state})"),
    )
    .with_hint("Report results only for messages returned by otp_outbox_claim.")
}

/// Moves a message to a final state, erases its code and mirrors the outcome
/// on the challenge.
fn finish(
    client: &mut SpiClient<'_>,
    message_id: i64,
    challenge_id: i64,
    state: &str,
    provider_ref: Option<&str>,
    now: TimestampWithTimeZone,
) -> Result<()> {
    prepared::update(
        client,
        "UPDATE otp.outbox SET state = $2, code_nonce = NULL, code_sealed = NULL, finished_at = $3,
                sent_at = CASE WHEN $2 = 'sent' THEN $3 ELSE sent_at END,
                provider_ref = COALESCE($4, provider_ref)
          WHERE id = $1",
        None,
        &[
            message_id.into(),
            state.into(),
            now.into(),
            provider_ref.into(),
        ],
    )?;
    prepared::update(
        client,
        "UPDATE otp.challenge SET delivery = $2 WHERE id = $1",
        None,
        &[challenge_id.into(), state.into()],
    )?;
    Ok(())
}

/// Records a successful delivery.
pub fn sent(
    client: &mut SpiClient<'_>,
    message_id: Option<i64>,
    provider_ref: Option<&str>,
) -> Result<()> {
    let (message_id, message) = lock_message(client, message_id)?;
    let now = clock::now();
    let provider_ref = provider_ref.map(|r| truncate(r, MAX_ERROR_LEN));
    match message.state.as_str() {
        // One update of the message: final state, code erased, provider reference.
        "sending" => finish(
            client,
            message_id,
            message.challenge_id,
            "sent",
            provider_ref.as_deref(),
            now,
        )?,
        // Repeating a report (say, after a lost commit acknowledgement) is harmless.
        "sent" => return Ok(()),
        // The challenge ended while the message was on its way; it still arrived.
        "cancelled" | "expired" => {
            prepared::update(
                client,
                "UPDATE otp.outbox SET sent_at = $2, provider_ref = $3 WHERE id = $1",
                None,
                &[message_id.into(), now.into(), provider_ref.into()],
            )?;
            prepared::update(
                client,
                "UPDATE otp.challenge SET delivery = 'sent' WHERE id = $1",
                None,
                &[message.challenge_id.into()],
            )?;
        }
        other => return Err(not_claimed(message_id, other)),
    }
    audit::challenge_event(client, message.challenge_id, Event::Delivered, now)?;
    Ok(())
}

/// Records a failed delivery. A retryable failure is retried after a jittered
/// backoff, unless that would be after the code expires; a permanent one ends
/// the message and marks the challenge's delivery as failed.
pub fn failed(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    message_id: Option<i64>,
    error: Option<&str>,
    retryable: Option<bool>,
) -> Result<()> {
    let retryable = retryable.ok_or_else(|| OtpError::null_argument("retryable"))?;
    let (message_id, message) = lock_message(client, message_id)?;
    let now = clock::now();
    let error = scrub(ring, &message, error.unwrap_or(""));
    prepared::update(
        client,
        "UPDATE otp.outbox SET last_error = $2 WHERE id = $1",
        None,
        &[message_id.into(), error.as_str().into()],
    )?;
    match message.state.as_str() {
        "sending" => {}
        // A late report on a finished message is kept as diagnosis only.
        "sent" | "failed" | "expired" | "cancelled" => return Ok(()),
        other => return Err(not_claimed(message_id, other)),
    }
    if !retryable || message.attempt >= MAX_DELIVERY_ATTEMPTS {
        audit::challenge_event(client, message.challenge_id, Event::DeliveryFailed, now)?;
        // Copy the sealed code before finish() erases it from this message.
        let fallback = if message.has_fallback {
            queue_fallback(client, message_id, now)?
        } else {
            None
        };
        finish(
            client,
            message_id,
            message.challenge_id,
            "failed",
            None,
            now,
        )?;
        if let Some((channel, destination)) = fallback {
            let hint = Channel::parse(&channel)
                .map(|c| record::mask(c, &destination))
                .unwrap_or_default();
            prepared::update(
                client,
                "UPDATE otp.challenge SET channel = $2, destination_hint = $3, delivery = 'queued' WHERE id = $1",
                None,
                &[message.challenge_id.into(), channel.as_str().into(), hint.as_str().into()],
            )?;
            wake_dispatchers(client)?;
        }
        return Ok(());
    }
    let delay = backoff_seconds(message.attempt);
    let requeued = prepared::update(
        client,
        "UPDATE otp.outbox SET state = 'queued', available_at = $2 + pg_catalog.make_interval(secs => $3)
          WHERE id = $1 AND $2 + pg_catalog.make_interval(secs => $3) < expires_at",
        None,
        &[message_id.into(), now.into(), delay.into()],
    )?;
    if requeued.is_empty() {
        // No retry can arrive before the code expires: never deliver late.
        finish(
            client,
            message_id,
            message.challenge_id,
            "expired",
            None,
            now,
        )?;
    }
    Ok(())
}

/// Queues the same sealed code on the record's other channel, while the
/// challenge is still pending and its code still valid. Returns the channel
/// and address it was queued for.
fn queue_fallback(
    client: &mut SpiClient<'_>,
    message_id: i64,
    now: TimestampWithTimeZone,
) -> Result<Option<(String, String)>> {
    let queued = prepared::update(
        client,
        "INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination, code_nonce, code_sealed,
                                 available_at, expires_at, created_at, key_id)
         SELECT o.challenge_id, o.agent, o.conversation, o.fallback_channel, o.fallback_destination,
                o.code_nonce, o.code_sealed, $2, o.expires_at, $2, o.key_id
           FROM otp.outbox o JOIN otp.challenge c ON c.id = o.challenge_id
          WHERE o.id = $1 AND c.state = 'pending' AND o.expires_at > $2
      RETURNING channel, destination",
        None,
        &[message_id.into(), now.into()],
    )?;
    match queued.into_iter().next() {
        Some(row) => Ok(Some((
            row.get(1)?.unwrap_or_default(),
            row.get(2)?.unwrap_or_default(),
        ))),
        None => Ok(None),
    }
}

/// Records that a dispatcher declined to send a claimed message because its
/// code expires too soon to be useful: the message ends as `expired`.
pub fn expired(client: &mut SpiClient<'_>, message_id: Option<i64>) -> Result<()> {
    let (message_id, message) = lock_message(client, message_id)?;
    let now = clock::now();
    match message.state.as_str() {
        "sending" => finish(
            client,
            message_id,
            message.challenge_id,
            "expired",
            None,
            now,
        ),
        "sent" | "failed" | "expired" | "cancelled" => Ok(()),
        other => Err(not_claimed(message_id, other)),
    }
}

/// Seconds to wait before retry number `attempt`: exponential, capped, with
/// jitter so that a burst of failures does not retry in lockstep.
pub fn backoff_seconds(attempt: i32) -> f64 {
    let exponent = attempt.clamp(1, 16) - 1;
    let base = (BACKOFF_BASE_SECS * f64::from(1u32 << exponent)).min(BACKOFF_CAP_SECS);
    base * (0.5 + 0.5 * crypto::jitter())
}

/// A provider's error text with the code blanked out, in case it echoed the
/// message back, and cut to a sane length.
fn scrub(ring: &KeyRing, message: &Message, error: &str) -> String {
    let mut error = truncate(error, MAX_ERROR_LEN);
    if let (Some(nonce), Some(sealed), Some(keys)) = (
        &message.nonce,
        &message.sealed,
        ring.for_id(&message.key_id),
    ) {
        if let Ok(code) = keys.open_code(message.challenge_id, nonce, sealed) {
            error = error.replace(code.as_str(), "[code]");
        }
    }
    error
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        for _ in 0..50 {
            let first = backoff_seconds(1);
            assert!((0.5..=1.0).contains(&first), "{first}");
            let third = backoff_seconds(3);
            assert!((2.0..=4.0).contains(&third), "{third}");
            let late = backoff_seconds(12);
            assert!((15.0..=30.0).contains(&late), "{late}");
        }
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("ñandú", 2), "ña");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
