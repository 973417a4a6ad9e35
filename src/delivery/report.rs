//! Reports from dispatchers: a message was sent, failed, or was not sent
//! because its code was about to expire. Each names the attempt it is
//! about; a report about an attempt that is no longer the message's (its
//! lease ran out and another dispatcher claimed it) is stale, and ignored.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use super::{finish, wake, MessageState};
use crate::audit::{self, Event};
use crate::clock;
use crate::config::Channel;
use crate::crypto::{self, KeyRing};
use crate::errors::{OtpError, Result};
use crate::prepared;
use crate::record;
use crate::redact;
use crate::schema;

/// After this many delivery attempts a message fails for good.
pub const MAX_DELIVERY_ATTEMPTS: i32 = 10;
/// Retry backoff: 1 s doubling to at most 30 s, each with jitter.
const BACKOFF_BASE_SECS: f64 = 1.0;
const BACKOFF_CAP_SECS: f64 = 30.0;
/// Provider errors are kept for diagnosis, within reason.
const MAX_ERROR_LEN: usize = 1000;
/// A provider's reference is indexed (outbox_by_provider_ref), and a B-tree
/// entry holds at most about 2,700 bytes: references are cut by bytes, far
/// below that and far above any real one (a WhatsApp message id is about 60).
const MAX_REFERENCE_BYTES: usize = 512;
/// How much of a provider text is scanned for codes (see `scrub`).
const MAX_SCANNED: usize = 16 * 1024;

/// The state of one message, locked for the caller's update, with what is
/// needed to recognise its code in a provider's text after the code itself
/// is gone (its challenge's keyed hash).
pub(super) struct Message {
    pub id: i64,
    pub challenge_id: i64,
    pub state: MessageState,
    pub channel: Channel,
    pub attempt: i32,
    pub has_fallback: bool,
    /// Still holds its sealed code (always while queued or sending; while
    /// sent, until the provider confirms delivery: see `MessageState`).
    pub holds_code: bool,
    /// The provider's reference, once a dispatcher reported the send.
    pub provider_ref: Option<String>,
    /// Its challenge is still waiting for the code.
    pub challenge_pending: bool,
    pub created_at: TimestampWithTimeZone,
    /// A decoy's message: no dispatcher ever had it, so no report applies.
    pub decoy: bool,
    /// The challenge's code hash, agent, conversation and key id, if the
    /// challenge still exists.
    code_hash: Option<(Vec<u8>, String, String, Vec<u8>)>,
}

impl Message {
    /// Ends the message as `state` (a final one other than `sent`), its code
    /// erased; mirrored on its challenge.
    fn end(
        &self,
        client: &mut SpiClient<'_>,
        state: MessageState,
        now: TimestampWithTimeZone,
    ) -> Result<()> {
        finish(
            client,
            self.id,
            self.challenge_id,
            state,
            None,
            now,
            false,
            None,
        )
    }
}

/// What `lock` reads of a message and its challenge (`o` and `c`), the
/// same whether or not the challenge still exists.
macro_rules! message_columns {
    () => {
        "SELECT o.challenge_id, o.state, o.attempt, o.fallback_channel IS NOT NULL,
                c.code_hash, c.agent, c.conversation, c.key_id, o.destination = '',
                o.channel, o.code_sealed IS NOT NULL, o.provider_ref, c.state = 'pending', o.created_at"
    };
}

fn lock_message(client: &mut SpiClient<'_>, message_id: Option<i64>) -> Result<Message> {
    let message_id = message_id.ok_or_else(|| OtpError::null_argument("message_id"))?;
    lock(client, message_id)?.ok_or_else(|| {
        OtpError::new(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("pg_otp: outbox message {message_id} does not exist"),
        )
    })
}

/// Locks a message for the caller's update; None when there is no such
/// message.
pub(super) fn lock(client: &mut SpiClient<'_>, message_id: i64) -> Result<Option<Message>> {
    crate::xact::refuse_prepare();
    // The challenge first, then the message: the order otp_verify takes
    // them in (it ends the challenge, then stops its messages). The other
    // order deadlocks with a verification, and PostgreSQL may abort the
    // verification and so burn a right code. PostgreSQL locks the rows of
    // a join in the order of its locking clauses. NOWAIT on the challenge:
    // one held by an application's open transaction makes this report fail
    // at once (55P03) for the dispatcher to repeat later, instead of
    // holding up every report and delivery behind it. update(), not
    // select(): a locking read needs a read-write SPI call.
    let mut row = prepared::update(
        client,
        concat!(
            message_columns!(),
            "
           FROM otp.outbox o JOIN otp.challenge c ON c.id = o.challenge_id
          WHERE o.id = $1
            FOR UPDATE OF c NOWAIT FOR UPDATE OF o"
        ),
        Some(1),
        &[message_id.into()],
    )?
    .first();
    if row.is_empty() {
        // No such message, or its challenge is gone (purged, or deleted
        // by hand): the message alone.
        row = prepared::update(
            client,
            concat!(
                message_columns!(),
                "
               FROM otp.outbox o LEFT JOIN otp.challenge c ON c.id = o.challenge_id
              WHERE o.id = $1
                FOR UPDATE OF o"
            ),
            Some(1),
            &[message_id.into()],
        )?
        .first();
    }
    if row.is_empty() {
        return Ok(None);
    }
    let code_hash = match (row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?) {
        (Some(hash), Some(agent), Some(conversation), Some(key_id)) => {
            Some((hash, agent, conversation, key_id))
        }
        _ => None,
    };
    Ok(Some(Message {
        id: message_id,
        challenge_id: row.get(1)?.unwrap_or_default(),
        state: row
            .get::<String>(2)?
            .as_deref()
            .and_then(MessageState::parse)
            .expect("a CHECK constraint allows only these words"),
        channel: row
            .get::<String>(10)?
            .as_deref()
            .and_then(Channel::parse)
            .expect("a CHECK constraint allows only these words"),
        attempt: row.get(3)?.unwrap_or_default(),
        has_fallback: row.get(4)?.unwrap_or(false),
        holds_code: row.get(11)?.unwrap_or(false),
        provider_ref: row.get(12)?,
        challenge_pending: row.get(13)?.unwrap_or(false),
        created_at: row.get(14)?.expect("NOT NULL column"),
        decoy: row.get(9)?.unwrap_or(false),
        code_hash,
    }))
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
    Ok(attempt == message.attempt && message.state != MessageState::Queued && !message.decoy)
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
    let provider_ref = provider_ref.map(|r| scrub_reference(ring, &message, r));
    match message.state {
        // One update of the message: final state, code erased, provider reference.
        // A channel whose provider confirms delivery later keeps the sealed
        // code until then, for a late fallback, while the code can still be
        // used (and from the 0.3.0 schema on, whose CHECK allows it: see
        // `schema`).
        MessageState::Sending => finish(
            client,
            message.id,
            message.challenge_id,
            MessageState::Sent,
            provider_ref.as_deref(),
            now,
            message.channel.confirms_delivery()
                && message.challenge_pending
                && schema::installed().records_and_roles,
            Some(Event::Delivered),
        )?,
        // Repeating a report (say, after a lost commit acknowledgement) is
        // harmless; the provider's status may even have come first.
        MessageState::Sent | MessageState::Delivered | MessageState::Read => return Ok(true),
        // The challenge ended while the message was on its way; it still arrived.
        MessageState::Cancelled | MessageState::Expired => {
            prepared::update(
                client,
                "WITH arrived AS (
                     UPDATE otp.outbox SET sent_at = $2, provider_ref = $3 WHERE id = $1)
                 UPDATE otp.challenge SET delivery = $5 WHERE id = $4",
                None,
                &[
                    message.id.into(),
                    now.into(),
                    provider_ref.into(),
                    message.challenge_id.into(),
                    MessageState::Sent.as_str().into(),
                ],
            )?;
            audit::challenge_event(client, message.challenge_id, Event::Delivered, now)?;
        }
        // A permanent failure reported for this attempt already.
        MessageState::Failed | MessageState::Queued => return Ok(false),
    }
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
    note_error(client, ring, &message, error.unwrap_or(""))?;
    if message.state != MessageState::Sending {
        // A late report on a finished message is kept as diagnosis only.
        return Ok(true);
    }
    fail(client, ring, &message, retryable, now)?;
    Ok(true)
}

/// Keeps a provider's error on the message, for diagnosis (blanked of the
/// code, cut to a sane length).
pub(super) fn note_error(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    message: &Message,
    error: &str,
) -> Result<()> {
    let error = scrub(ring, message, error);
    prepared::update(
        client,
        "UPDATE otp.outbox SET last_error = $2 WHERE id = $1",
        None,
        &[message.id.into(), error.as_str().into()],
    )?;
    Ok(())
}

/// What became of a message whose delivery failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// Queued again, after a backoff.
    Retried,
    /// Failed for good; the same code was queued on the other channel.
    FellBack,
    /// Failed for good.
    Failed,
    /// No retry could arrive before the code expires.
    Expired,
}

/// Handles a failure of `message` (being sent, or sent and holding its
/// code while its provider's confirmation is awaited). A retryable
/// failure is retried after a jittered backoff, unless that would be after
/// the code expires or the code is no longer held; a permanent one ends the
/// message, and queues the same code on the record's other channel when
/// there is one (at most once per challenge), or marks the challenge's
/// delivery as failed.
pub(super) fn fail(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    message: &Message,
    retryable: bool,
    now: TimestampWithTimeZone,
) -> Result<Failure> {
    if !retryable || message.attempt >= MAX_DELIVERY_ATTEMPTS || !message.holds_code {
        audit::challenge_event(client, message.challenge_id, Event::DeliveryFailed, now)?;
        // Copy the sealed code before finish() erases it from this message.
        let fallback = if message.has_fallback && message.holds_code {
            queue_fallback(client, message.id, now)?
        } else {
            None
        };
        message.end(client, MessageState::Failed, now)?;
        let Some((channel, destination)) = fallback else {
            return Ok(Failure::Failed);
        };
        let hint = record::mask(channel, &destination);
        // The code now goes to the fallback address: the challenge's
        // destination key follows it (send limits, and the check that
        // the address is still on the record when the code is typed).
        let key = message
            .code_hash
            .as_ref()
            .and_then(|(_, _, _, key_id)| ring.for_id(key_id))
            .map(|keys| {
                keys.destination_key(channel.as_str(), &destination)
                    .to_vec()
            });
        prepared::update(
            client,
            "UPDATE otp.challenge SET channel = $2, destination_hint = $3, delivery = $5,
                    destination_key = COALESCE($4, destination_key)
              WHERE id = $1",
            None,
            &[
                message.challenge_id.into(),
                channel.as_str().into(),
                hint.as_str().into(),
                key.into(),
                MessageState::Queued.as_str().into(),
            ],
        )?;
        wake::at_commit();
        return Ok(Failure::FellBack);
    }
    let delay = backoff_seconds(message.attempt);
    // Back in the queue; a message that had been sent shows as on its way
    // again.
    let requeued = prepared::update(
        client,
        "WITH requeued AS (
             UPDATE otp.outbox SET state = $4, available_at = $2 + pg_catalog.make_interval(secs => $3),
                    finished_at = NULL
              WHERE id = $1 AND $2 + pg_catalog.make_interval(secs => $3) < expires_at
          RETURNING challenge_id)
         UPDATE otp.challenge c SET delivery = $4 FROM requeued WHERE c.id = requeued.challenge_id
          RETURNING c.id",
        None,
        &[
            message.id.into(),
            now.into(),
            delay.into(),
            MessageState::Queued.as_str().into(),
        ],
    )?;
    if requeued.is_empty() {
        // No retry can arrive before the code expires: never deliver late.
        message.end(client, MessageState::Expired, now)?;
        return Ok(Failure::Expired);
    }
    if message.state != MessageState::Sending {
        wake::at_commit();
    }
    Ok(Failure::Retried)
}

/// Queues the same sealed code on the record's other channel, while the
/// challenge is still pending and its code still valid. Returns the channel
/// and address it was queued for.
fn queue_fallback(
    client: &mut SpiClient<'_>,
    message_id: i64,
    now: TimestampWithTimeZone,
) -> Result<Option<(Channel, String)>> {
    // The person's language and time zone go along (once the schema has
    // them, see `schema`).
    macro_rules! fallback_sql {
        ($column:literal, $value:literal) => {
            concat!(
                "INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination, code_nonce, code_sealed,
                                         available_at, expires_at, created_at, key_id", $column, ")
                 SELECT o.challenge_id, o.agent, o.conversation, o.fallback_channel, o.fallback_destination,
                        o.code_nonce, o.code_sealed, $2, o.expires_at, $2, o.key_id", $value, "
                   FROM otp.outbox o JOIN otp.challenge c ON c.id = o.challenge_id
                  WHERE o.id = $1 AND c.state = 'pending' AND o.expires_at > $2
                    -- at most one fallback per challenge
                    AND NOT EXISTS (SELECT FROM otp.outbox f WHERE f.challenge_id = o.challenge_id AND f.id <> o.id)
              RETURNING channel, destination"
            )
        };
    }
    let insert = if crate::schema::installed().locales {
        fallback_sql!(", language, time_zone", ", o.language, o.time_zone")
    } else {
        fallback_sql!("", "")
    };
    let queued = prepared::update(client, insert, None, &[message_id.into(), now.into()])?;
    let Some(row) = queued.into_iter().next() else {
        return Ok(None);
    };
    let channel = row
        .get::<String>(1)?
        .as_deref()
        .and_then(Channel::parse)
        .expect("a CHECK constraint allows only these words");
    Ok(Some((channel, row.get(2)?.unwrap_or_default())))
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
    if message.state == MessageState::Sending {
        let now = clock::now();
        message.end(client, MessageState::Expired, now)?;
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
pub(super) fn scrub(ring: &KeyRing, message: &Message, text: &str) -> String {
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

/// A provider's reference as it is kept: scrubbed like any provider text,
/// and cut to fit its index (1,000 characters can be 4,000 bytes: such a
/// reference failed the report at every retry, and the code went out again
/// each time).
pub(super) fn scrub_reference(ring: &KeyRing, message: &Message, reference: &str) -> String {
    prefix_bytes(&scrub(ring, message, reference), MAX_REFERENCE_BYTES).to_owned()
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
