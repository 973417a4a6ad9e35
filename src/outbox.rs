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
use crate::redact;

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
/// How much of a provider text is scanned for codes (see `scrub`).
const MAX_SCANNED: usize = 16 * 1024;

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
/// A decoy's message (reveal_unknown => false, nobody to send it to, so an
/// empty destination) is queued like any other, so that an unknown identifier costs the same work
/// and shows the same delivery through otp_status; no dispatcher ever gets
/// it (see `claim_due`).
pub struct Outgoing<'a> {
    pub challenge_id: i64,
    pub agent: &'a str,
    pub conversation: &'a str,
    pub destination: &'a Destination,
    pub fallback: Option<&'a Destination>,
    pub code: &'a str,
    pub created_at: TimestampWithTimeZone,
    pub expires_at: TimestampWithTimeZone,
}

/// Queues the code of a new challenge for delivery and wakes the dispatchers.
pub fn enqueue(client: &mut SpiClient<'_>, keys: &Keys, message: &Outgoing<'_>) -> Result<()> {
    let sealed = keys.seal_code(message.challenge_id, message.code)?;
    prepared::update(
        client,
        "INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination,
                                 fallback_channel, fallback_destination, code_nonce, code_sealed,
                                 available_at, expires_at, created_at, key_id)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $12
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
            sealed.nonce.into(),
            sealed.ciphertext.into(),
            message.created_at.into(),
            message.expires_at.into(),
            keys.id.to_vec().into(),
            NOTIFY_CHANNEL.into(),
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
    advance_decoys(client, now)?;

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
                // cancelled
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
/// Decoys (empty destination) are not among them (see `advance_decoys`).
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
              WHERE o.state IN ('queued', 'sending') AND o.destination <> '' AND o.available_at <= $1
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
              WHERE o.state IN ('queued', 'sending') AND o.destination <> '' AND o.available_at <= $1
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

/// Decoys one claim moves on at most; more wait for the next claim.
const MAX_DECOYS_PER_CLAIM: i64 = 1000;

/// Moves decoys' messages through the life of a real one, without any
/// dispatcher seeing them: due ones become `sending` for as long as a
/// provider takes (a random 0.2 to 1 second), and at the next claim after
/// that `sent`, as a real message would on its report; they expire or are
/// cancelled like real ones. Decoys have their own index (outbox_decoys_due)
/// and a bounded share of each claim, so however many an application makes,
/// real messages are claimed as before.
fn advance_decoys(client: &mut SpiClient<'_>, now: TimestampWithTimeZone) -> Result<()> {
    let moved: Vec<(i64, String)> = prepared::update(
        client,
        "WITH due AS (
             SELECT o.id,
                    CASE WHEN o.expires_at <= $1 THEN 'expired'
                         WHEN (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id)
                              IS DISTINCT FROM 'pending' THEN 'cancelled'
                         WHEN o.state = 'sending' THEN 'sent'
                         ELSE 'sending' END AS next_state
               FROM otp.outbox o
              WHERE o.state IN ('queued', 'sending') AND o.destination = '' AND o.available_at <= $1
              ORDER BY o.available_at, o.id
              LIMIT $2
                FOR UPDATE SKIP LOCKED)
         UPDATE otp.outbox o
            SET state = due.next_state,
                attempt = CASE WHEN due.next_state = 'sending' THEN o.attempt + 1 ELSE o.attempt END,
                available_at = CASE WHEN due.next_state = 'sending'
                                    THEN $1 + pg_catalog.make_interval(secs => 0.2 + 0.8 * pg_catalog.random())
                                    ELSE o.available_at END,
                code_nonce = CASE WHEN due.next_state = 'sending' THEN o.code_nonce END,
                code_sealed = CASE WHEN due.next_state = 'sending' THEN o.code_sealed END,
                sent_at = CASE WHEN due.next_state = 'sent' THEN $1 ELSE o.sent_at END,
                finished_at = CASE WHEN due.next_state = 'sending' THEN NULL ELSE $1 END
           FROM due WHERE o.id = due.id
      RETURNING o.challenge_id, o.state",
        None,
        &[now.into(), MAX_DECOYS_PER_CLAIM.into()],
    )?
    .map(|row| Ok((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default())))
    .collect::<Result<_>>()?;
    let ended = |word: &str| -> Vec<i64> {
        moved
            .iter()
            .filter(|(_, state)| state == word)
            .map(|(challenge, _)| *challenge)
            .collect()
    };
    mark_delivery_expired(client, ended("expired"))?;
    mark_decoys_delivered(client, ended("sent"), now)
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

/// Mirrors on the challenges that their decoy message was "delivered", with
/// the audit event a real delivery records.
fn mark_decoys_delivered(
    client: &mut SpiClient<'_>,
    challenge_ids: Vec<i64>,
    now: TimestampWithTimeZone,
) -> Result<()> {
    if challenge_ids.is_empty() {
        return Ok(());
    }
    prepared::update(
        client,
        "WITH delivered AS (
             UPDATE otp.challenge SET delivery = 'sent' WHERE id = ANY ($1) AND delivery = 'queued'
          RETURNING agent, conversation, subject, channel, destination_hint)
         INSERT INTO otp.event (at, agent, conversation, subject, event, channel, destination_hint)
         SELECT $2, agent, conversation, subject, $3, channel, destination_hint FROM delivered",
        None,
        &[
            challenge_ids.into(),
            now.into(),
            Event::Delivered.as_str().into(),
        ],
    )?;
    Ok(())
}

/// The state of one message, locked for the caller's update, with what is
/// needed to recognise its code in a provider's text after the code itself
/// is gone (its challenge's keyed hash).
struct Message {
    id: i64,
    challenge_id: i64,
    state: String,
    attempt: i32,
    has_fallback: bool,
    /// A decoy's message: no dispatcher ever had it, so no report applies.
    decoy: bool,
    /// The challenge's code hash, agent, conversation and key id, if the
    /// challenge still exists.
    code_hash: Option<(Vec<u8>, String, String, Vec<u8>)>,
}

fn lock_message(client: &mut SpiClient<'_>, message_id: Option<i64>) -> Result<Message> {
    let message_id = message_id.ok_or_else(|| OtpError::null_argument("message_id"))?;
    // update(), not select(): a locking read needs a read-write SPI call.
    let row = prepared::update(
        client,
        "SELECT o.challenge_id, o.state, o.attempt, o.fallback_channel IS NOT NULL,
                c.code_hash, c.agent, c.conversation, c.key_id, o.destination = ''
           FROM otp.outbox o LEFT JOIN otp.challenge c ON c.id = o.challenge_id
          WHERE o.id = $1
            FOR UPDATE OF o",
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
    let code_hash = match (row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?) {
        (Some(hash), Some(agent), Some(conversation), Some(key_id)) => {
            Some((hash, agent, conversation, key_id))
        }
        _ => None,
    };
    Ok(Message {
        id: message_id,
        challenge_id: row.get(1)?.unwrap_or_default(),
        state: row.get(2)?.unwrap_or_default(),
        attempt: row.get(3)?.unwrap_or_default(),
        has_fallback: row.get(4)?.unwrap_or(false),
        decoy: row.get(9)?.unwrap_or(false),
        code_hash,
    })
}

/// The attempt a message is at, for the reports of pg_otp 0.2.0, which did
/// not name it (see api.rs); None for an unknown message.
pub fn current_attempt(client: &SpiClient<'_>, message_id: Option<i64>) -> Result<Option<i32>> {
    let message_id = message_id.ok_or_else(|| OtpError::null_argument("message_id"))?;
    let row = prepared::select(
        client,
        "SELECT attempt FROM otp.outbox WHERE id = $1",
        Some(1),
        &[message_id.into()],
    )?
    .first();
    if row.is_empty() {
        return Ok(None);
    }
    Ok(row.get_one::<i32>()?)
}

/// Whether a report for `attempt` concerns the message as it is now. A
/// dispatcher whose lease ran out may report after another one claimed the
/// message again (a higher attempt): its report is stale and is ignored
/// (the functions then return false). A report on a message never claimed
/// is a mistake of the caller.
fn current(message: &Message, attempt: Option<i32>) -> Result<bool> {
    let attempt = attempt.ok_or_else(|| OtpError::null_argument("attempt"))?;
    if message.attempt == 0 {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("pg_otp: outbox message {} was never claimed", message.id),
        )
        .with_hint("Report results only for messages returned by otp_outbox_claim, with the attempt it returned."));
    }
    // A report for an attempt whose outcome is already recorded (the
    // message went back to the queue) is stale too.
    Ok(attempt == message.attempt && message.state != "queued" && !message.decoy)
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

/// Records a successful delivery. False when the report was stale.
pub fn sent(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    message_id: Option<i64>,
    attempt: Option<i32>,
    provider_ref: Option<&str>,
) -> Result<bool> {
    let message = lock_message(client, message_id)?;
    if !current(&message, attempt)? {
        return Ok(false);
    }
    let now = clock::now();
    let provider_ref = provider_ref.map(|r| scrub(ring, &message, r));
    match message.state.as_str() {
        // One update of the message: final state, code erased, provider reference.
        "sending" => finish(
            client,
            message.id,
            message.challenge_id,
            "sent",
            provider_ref.as_deref(),
            now,
        )?,
        // Repeating a report (say, after a lost commit acknowledgement) is harmless.
        "sent" => return Ok(true),
        // The challenge ended while the message was on its way; it still arrived.
        "cancelled" | "expired" => {
            prepared::update(
                client,
                "UPDATE otp.outbox SET sent_at = $2, provider_ref = $3 WHERE id = $1",
                None,
                &[message.id.into(), now.into(), provider_ref.into()],
            )?;
            prepared::update(
                client,
                "UPDATE otp.challenge SET delivery = 'sent' WHERE id = $1",
                None,
                &[message.challenge_id.into()],
            )?;
        }
        // A permanent failure reported for this attempt already.
        _ => return Ok(false),
    }
    audit::challenge_event(client, message.challenge_id, Event::Delivered, now)?;
    Ok(true)
}

/// Records a failed delivery. A retryable failure is retried after a jittered
/// backoff, unless that would be after the code expires; a permanent one ends
/// the message and marks the challenge's delivery as failed. False when the
/// report was stale.
pub fn failed(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    message_id: Option<i64>,
    attempt: Option<i32>,
    error: Option<&str>,
    retryable: Option<bool>,
) -> Result<bool> {
    let retryable = retryable.ok_or_else(|| OtpError::null_argument("retryable"))?;
    let message = lock_message(client, message_id)?;
    if !current(&message, attempt)? {
        return Ok(false);
    }
    let now = clock::now();
    let error = scrub(ring, &message, error.unwrap_or(""));
    prepared::update(
        client,
        "UPDATE otp.outbox SET last_error = $2 WHERE id = $1",
        None,
        &[message.id.into(), error.as_str().into()],
    )?;
    if message.state != "sending" {
        // A late report on a finished message is kept as diagnosis only.
        return Ok(true);
    }
    if !retryable || message.attempt >= MAX_DELIVERY_ATTEMPTS {
        audit::challenge_event(client, message.challenge_id, Event::DeliveryFailed, now)?;
        // Copy the sealed code before finish() erases it from this message.
        let fallback = if message.has_fallback {
            queue_fallback(client, message.id, now)?
        } else {
            None
        };
        finish(
            client,
            message.id,
            message.challenge_id,
            "failed",
            None,
            now,
        )?;
        if let Some((channel, destination)) = fallback {
            let hint = Channel::parse(&channel)
                .map(|c| record::mask(c, &destination))
                .unwrap_or_default();
            // The code now goes to the fallback address: the challenge's
            // destination key follows it (send limits, and the check that
            // the address is still on the record when the code is typed).
            let key = message
                .code_hash
                .as_ref()
                .and_then(|(_, _, _, key_id)| ring.for_id(key_id))
                .map(|keys| keys.destination_key(&channel, &destination).to_vec());
            prepared::update(
                client,
                "UPDATE otp.challenge SET channel = $2, destination_hint = $3, delivery = 'queued',
                        destination_key = COALESCE($4, destination_key)
                  WHERE id = $1",
                None,
                &[
                    message.challenge_id.into(),
                    channel.as_str().into(),
                    hint.as_str().into(),
                    key.into(),
                ],
            )?;
            wake_dispatchers(client)?;
        }
        return Ok(true);
    }
    let delay = backoff_seconds(message.attempt);
    let requeued = prepared::update(
        client,
        "UPDATE otp.outbox SET state = 'queued', available_at = $2 + pg_catalog.make_interval(secs => $3)
          WHERE id = $1 AND $2 + pg_catalog.make_interval(secs => $3) < expires_at",
        None,
        &[message.id.into(), now.into(), delay.into()],
    )?;
    if requeued.is_empty() {
        // No retry can arrive before the code expires: never deliver late.
        finish(
            client,
            message.id,
            message.challenge_id,
            "expired",
            None,
            now,
        )?;
    }
    Ok(true)
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
/// False when the report was stale.
pub fn expired(
    client: &mut SpiClient<'_>,
    message_id: Option<i64>,
    attempt: Option<i32>,
) -> Result<bool> {
    let message = lock_message(client, message_id)?;
    if !current(&message, attempt)? {
        return Ok(false);
    }
    if message.state == "sending" {
        let now = clock::now();
        finish(
            client,
            message.id,
            message.challenge_id,
            "expired",
            None,
            now,
        )?;
    }
    Ok(true)
}

/// Seconds to wait before retry number `attempt`: exponential, capped, with
/// jitter so that a burst of failures does not retry in lockstep.
pub fn backoff_seconds(attempt: i32) -> f64 {
    let exponent = attempt.clamp(1, 16) - 1;
    let base = (BACKOFF_BASE_SECS * f64::from(1u32 << exponent)).min(BACKOFF_CAP_SECS);
    base * (0.5 + 0.5 * crypto::jitter())
}

/// A provider's text (an error, a message reference) cut to a sane length,
/// with the message's code blanked out in case the provider echoed it. The
/// code is recognised by its challenge's keyed hash, so this works whatever
/// the message's state, also after its sealed code was erased; if even that
/// cannot be checked (the challenge or its secret is gone), every run of
/// six digits is blanked.
fn scrub(ring: &KeyRing, message: &Message, text: &str) -> String {
    // Blank first, then cut: a cut through a code would keep part of it.
    // The scan costs a keyed hash per window of digits; what lies beyond
    // MAX_SCANNED bytes (far past MAX_ERROR_LEN characters) is never kept.
    let text = prefix_bytes(text, MAX_SCANNED);
    let hashed = message
        .code_hash
        .as_ref()
        .and_then(|(hash, agent, conversation, key_id)| {
            ring.for_id(key_id)
                .map(|keys| (keys, hash, agent, conversation))
        });
    let blanked = match hashed {
        Some((keys, hash, agent, conversation)) => redact::codes(text, |candidate| {
            keys.code_matches(hash, message.challenge_id, agent, conversation, candidate)
        }),
        None => redact::codes(text, |_| true),
    };
    truncate(&blanked, MAX_ERROR_LEN)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn prefix_bytes(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
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
