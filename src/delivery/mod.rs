//! Delivery: messages carrying codes, handed to the delivery process.
//!
//! This module alone writes `otp.outbox`, and the columns of a challenge
//! that say where its code went and what became of it (`delivery`, and on a
//! fallback `channel`, `destination_hint`, `destination_key`). Other
//! modules call it: challenge.rs queues a new code (`enqueue`) and stops
//! delivery when a challenge ends (`stop`); purge.rs removes old messages
//! (`purge`).
//!
//! The database never makes network calls. otp_issue queues a message and
//! wakes the dispatchers (`NOTIFY otp_outbox`, see `wake`) once its
//! transaction commits; a dispatcher claims
//! due messages (`claim`), delivers them, and reports each result
//! (`report`). Messages that can no longer be delivered (their code expired
//! or their challenge ended while queued) and decoys are moved on by the
//! sweep (`sweep`), which the dispatcher runs between claims and the purge
//! worker runs too, so that a claim returns only deliverable messages. The
//! states are in `state`. The sealed code is erased when a message reaches
//! a final state (a CHECK constraint enforces it).

mod claim;
mod report;
mod state;
mod status;
mod sweep;
pub mod wake;

use std::ffi::CStr;

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::spi::SpiClient;

use crate::audit::Event;
use crate::crypto::Keys;
use crate::errors::Result;
use crate::prepared;
use crate::record::Destination;

pub use claim::{claim, Claimed};
pub use report::{current_attempt, expired, failed, sent};
pub use state::MessageState;
pub use status::status;
pub use sweep::{sweep, Decoys};

/// Channel a dispatcher listens on.
pub const NOTIFY_CHANNEL: &CStr = c"otp_outbox";

/// A message to queue: the code of a new challenge and where it goes.
/// A decoy's message (reveal_unknown => false, nobody to send it to, so an
/// empty destination) is queued like any other, so that an unknown
/// identifier costs the same work and shows the same delivery through
/// otp_status; no dispatcher ever gets it (see `sweep`).
pub struct Outgoing<'a> {
    pub challenge_id: i64,
    pub agent: &'a str,
    pub conversation: &'a str,
    pub destination: &'a Destination,
    pub fallback: Option<&'a Destination>,
    pub code: &'a str,
    /// The person's language (a normalized BCP 47 tag) and time zone (an
    /// IANA name), for the dispatcher.
    pub language: Option<&'a str>,
    pub time_zone: Option<&'a str>,
    pub created_at: TimestampWithTimeZone,
    pub expires_at: TimestampWithTimeZone,
}

/// The insert of a new message, with `$column` and `$value` added (a column
/// of a newer schema).
macro_rules! enqueue_sql {
    ($column:literal, $value:literal) => {
        concat!(
            "INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination,
                                     fallback_channel, fallback_destination, code_nonce, code_sealed,
                                     available_at, expires_at, created_at, key_id",
            $column,
            ")
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $12",
            $value
        )
    };
}

/// Queues the code of a new challenge for delivery and wakes the dispatchers.
/// (The challenge's delivery mirror starts as `queued`, its column default.)
pub fn enqueue(client: &mut SpiClient<'_>, keys: &Keys, message: &Outgoing<'_>) -> Result<()> {
    let sealed = keys.seal_code(message.challenge_id, message.code)?;
    // Until ALTER EXTENSION pg_otp UPDATE there are no locale columns.
    let with_locale = crate::schema::installed().locales;
    let insert = if with_locale {
        enqueue_sql!(", language, time_zone", ", $13, $14")
    } else {
        enqueue_sql!("", "")
    };
    let mut args: Vec<pgrx::datum::DatumWithOid<'_>> = vec![
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
    ];
    if with_locale {
        args.push(message.language.into());
        args.push(message.time_zone.into());
    }
    prepared::update(client, insert, None, &args)?;
    wake::at_commit();
    Ok(())
}

/// Why delivery of a challenge's code stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The right code was typed: evidently it arrived. A message already on
    /// its way is left for its dispatcher to report; the mirror stays.
    Verified,
    /// The code expired: its unfinished messages end as `expired`.
    Expired,
    /// The challenge ended otherwise (superseded, locked, record changed):
    /// its unfinished messages end as `cancelled`.
    Ended,
}

/// Stops delivery of the codes of challenges that just ended, and mirrors
/// it on them. One statement; a lookup by challenge through
/// outbox_by_challenge (unfinished messages are found by `finished_at IS
/// NULL`, which never turns it into a scan of the queue).
pub fn stop(
    client: &mut SpiClient<'_>,
    challenge_ids: &[i64],
    why: Stop,
    now: TimestampWithTimeZone,
) -> Result<()> {
    if challenge_ids.is_empty() {
        return Ok(());
    }
    let end = match why {
        Stop::Expired => MessageState::Expired,
        Stop::Verified | Stop::Ended => MessageState::Cancelled,
    };
    prepared::update(
        client,
        "WITH stopped AS (
             UPDATE otp.outbox o SET state = $2, code_nonce = NULL, code_sealed = NULL, finished_at = $3
              WHERE o.challenge_id = ANY ($1) AND o.finished_at IS NULL AND (o.state = $5 OR NOT $4)),
         -- a sent message kept its code for a late fallback: no more
         erased AS (
             UPDATE otp.outbox o SET code_nonce = NULL, code_sealed = NULL
              WHERE o.challenge_id = ANY ($1) AND o.state = $6 AND o.code_sealed IS NOT NULL)
         UPDATE otp.challenge SET delivery = $2
          WHERE id = ANY ($1) AND delivery = $5 AND NOT $4",
        None,
        &[
            challenge_ids.to_vec().into(),
            end.as_str().into(),
            now.into(),
            (why == Stop::Verified).into(),
            MessageState::Queued.as_str().into(),
            MessageState::Sent.as_str().into(),
        ],
    )?;
    Ok(())
}

/// Locks the messages of a challenge that `stop` may still change (not
/// finished, or holding their code); the challenge is locked already, so
/// the order is the one every path takes. otp_verify takes them before it
/// counts a guess: whatever holds a message (a dispatcher's claim or report
/// in an open transaction) is then waited for before the guess counts, and
/// a wait the application cuts short (a timeout, a cancel) cannot leave a
/// right code counted and its session never started.
pub fn lock_open(client: &mut SpiClient<'_>, challenge_id: i64) -> Result<()> {
    prepared::update(
        client,
        "SELECT FROM otp.outbox
          WHERE challenge_id = $1 AND (finished_at IS NULL OR code_sealed IS NOT NULL)
            FOR UPDATE",
        None,
        &[challenge_id.into()],
    )?;
    Ok(())
}

/// Deletes messages that reached a final state more than `retention`
/// before `now`; returns how many (otp_purge).
pub fn purge(
    client: &mut SpiClient<'_>,
    now: TimestampWithTimeZone,
    retention: Interval,
) -> Result<i64> {
    let open: Vec<&str> = MessageState::ALL
        .into_iter()
        .filter(|state| !state.is_final())
        .map(MessageState::as_str)
        .collect();
    let deleted = prepared::update(
        client,
        "DELETE FROM otp.outbox WHERE state <> ALL ($3) AND finished_at < $1 - $2",
        None,
        &[now.into(), retention.into(), open.into()],
    )?;
    Ok(deleted.len() as i64)
}

/// The update of `finish`, shared by its two statements: with and
/// without an audit event.
macro_rules! finish_message {
    () => {
        "WITH finished AS (
             UPDATE otp.outbox SET state = $2, finished_at = $3,
                    code_nonce = CASE WHEN $7 THEN code_nonce END,
                    code_sealed = CASE WHEN $7 THEN code_sealed END,
                    sent_at = CASE WHEN $6 THEN $3 ELSE sent_at END,
                    provider_ref = COALESCE($4, provider_ref)
              WHERE id = $1)"
    };
}

/// Moves a message to a final state, erases its code (unless `keep_code`,
/// which only a `sent` message may) and mirrors the outcome on its
/// challenge; records `event` about the challenge, if given, in the same
/// statement (one statement fewer on every delivery report).
#[allow(clippy::too_many_arguments)]
fn finish(
    client: &mut SpiClient<'_>,
    message_id: i64,
    challenge_id: i64,
    state: MessageState,
    provider_ref: Option<&str>,
    now: TimestampWithTimeZone,
    keep_code: bool,
    event: Option<Event>,
) -> Result<()> {
    debug_assert!(state.is_final());
    debug_assert!(!keep_code || state.may_hold_code());
    let succeeded = state.progress().is_some();
    let mut args = vec![
        message_id.into(),
        state.as_str().into(),
        now.into(),
        provider_ref.into(),
        challenge_id.into(),
        succeeded.into(),
        keep_code.into(),
    ];
    let sql = match event {
        None => concat!(
            finish_message!(),
            "
         UPDATE otp.challenge SET delivery = $2 WHERE id = $5"
        ),
        Some(event) => {
            args.push(event.as_str().into());
            // The event as audit::challenge_event writes it: the
            // challenge's columns as they are now.
            concat!(
                finish_message!(),
                ",
              mirrored AS (
             UPDATE otp.challenge SET delivery = $2 WHERE id = $5
          RETURNING agent, conversation, subject, channel, destination_hint)
         INSERT INTO otp.event (at, agent, conversation, subject, event, channel, destination_hint)
         SELECT $3, agent, conversation, subject, $8, channel, destination_hint FROM mirrored"
            )
        }
    };
    prepared::update(client, sql, None, &args)?;
    Ok(())
}

/// Mirrors on challenges that their message ended as `state` (expired
/// before delivery, or a decoy's simulated delivery), where the mirror
/// still says `queued`. A delivery records its audit event, as a real one
/// does on its report.
fn mirror(
    client: &mut SpiClient<'_>,
    challenge_ids: Vec<i64>,
    state: MessageState,
    now: TimestampWithTimeZone,
) -> Result<()> {
    if challenge_ids.is_empty() {
        return Ok(());
    }
    prepared::update(
        client,
        // SKIP LOCKED: a challenge an application's open transaction holds
        // keeps its old mirror rather than stall the sweep (and with it the
        // dispatcher's loop) until the application lets go.
        "WITH mirrored AS (
             UPDATE otp.challenge SET delivery = $2
              WHERE id IN (SELECT id FROM otp.challenge
                            WHERE id = ANY ($1) AND delivery = $3
                              FOR UPDATE SKIP LOCKED)
          RETURNING agent, conversation, subject, channel, destination_hint)
         INSERT INTO otp.event (at, agent, conversation, subject, event, channel, destination_hint)
         SELECT $4, agent, conversation, subject, $5, channel, destination_hint FROM mirrored
          WHERE $2 = $6",
        None,
        &[
            challenge_ids.into(),
            state.as_str().into(),
            MessageState::Queued.as_str().into(),
            now.into(),
            crate::audit::Event::Delivered.as_str().into(),
            MessageState::Sent.as_str().into(),
        ],
    )?;
    Ok(())
}
