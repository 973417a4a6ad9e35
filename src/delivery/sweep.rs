//! The sweep: what moves messages on when no dispatcher will.
//!
//! Kept apart from the claim (as River keeps its job rescuer apart from its
//! fetch), so that a claim hands out only messages that can be delivered:
//!
//! - messages whose code expired while they waited end as `expired`, and
//!   the challenge's delivery says so;
//! - messages whose challenge ended while a lease ran out end as
//!   `cancelled` (ending a challenge stops its queued messages itself);
//! - `sent` messages that kept their sealed code for a late fallback (see
//!   `MessageState::may_hold_code`) lose it once the code expired;
//! - decoys' messages live the life of a real one without any dispatcher
//!   seeing them: `sending` for as long as a provider takes (a random 0.2
//!   to 1 second), then `sent` with its audit event, or `expired` /
//!   `cancelled` like a real one. They have their own index
//!   (outbox_decoys_due), so however many an application makes, the claim
//!   of real messages is not slowed.
//!
//! The dispatcher calls it (otp_outbox_sweep) between claims, the purge
//! worker on every pass. The worker only ends decoys, never delivers them:
//! with no dispatcher running, a real message is never sent, so neither is
//! a decoy's. Each call does a bounded amount of work.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;

use std::sync::LazyLock;

use super::{mirror, state, MessageState};
use crate::clock;
use crate::errors::Result;
use crate::prepared;

/// Messages one sweep finishes, and decoys it moves on, at most; more wait
/// for the next sweep.
const MAX_PER_SWEEP: i64 = 1000;

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Real messages that ended as expired or cancelled.
    pub finished: i64,
    /// Decoys' messages moved on (to sending, sent, expired or cancelled).
    pub decoys: i64,
}

/// What a sweep does with decoys that could still be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoys {
    /// Move them on as a dispatcher would move a real message (a
    /// dispatcher's sweep).
    Advance,
    /// Leave them queued, as real messages stay with no dispatcher (the
    /// purge worker's sweep); only end them when their code expired or
    /// their challenge ended.
    OnlyEnd,
}

/// One sweep (see the module comment).
pub fn sweep(client: &mut SpiClient<'_>, decoys: Decoys) -> Result<Swept> {
    let now = clock::now();
    let finished = finish_undeliverable(client, now)?;
    if crate::schema::installed().records_and_roles {
        erase_expired_codes(client, now)?;
    }
    let decoys = advance_decoys(client, now, decoys == Decoys::Advance)?;
    Ok(Swept { finished, decoys })
}

/// Ends real messages that can no longer be delivered (outbox_due's order).
static FINISH_UNDELIVERABLE: LazyLock<String> = LazyLock::new(|| {
    state::sql(
        "WITH undeliverable AS (
             SELECT o.id, CASE WHEN o.expires_at <= $1 THEN {expired} ELSE {cancelled} END AS final_state
               FROM otp.outbox o
              WHERE o.state IN ({queued}, {sending}) AND o.destination <> '' AND o.available_at <= $1
                AND (o.expires_at <= $1
                     OR (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id)
                        IS DISTINCT FROM 'pending')
              ORDER BY o.available_at, o.id
              LIMIT $2
                FOR UPDATE SKIP LOCKED)
         UPDATE otp.outbox o
            SET state = undeliverable.final_state, code_nonce = NULL, code_sealed = NULL, finished_at = $1
           FROM undeliverable WHERE o.id = undeliverable.id
      RETURNING o.challenge_id, o.state",
    )
});

/// Erases the codes that `sent` messages kept for a late fallback, once
/// expired (through outbox_held_codes).
static ERASE_EXPIRED_CODES: LazyLock<String> = LazyLock::new(|| {
    state::sql(
        "UPDATE otp.outbox SET code_nonce = NULL, code_sealed = NULL
          WHERE id IN (SELECT id FROM otp.outbox
                        WHERE state = {sent} AND code_sealed IS NOT NULL AND expires_at <= $1
                        ORDER BY expires_at
                        LIMIT $2
                          FOR UPDATE SKIP LOCKED)",
    )
});

fn erase_expired_codes(client: &mut SpiClient<'_>, now: TimestampWithTimeZone) -> Result<()> {
    prepared::update(
        client,
        &ERASE_EXPIRED_CODES,
        None,
        &[now.into(), MAX_PER_SWEEP.into()],
    )?;
    Ok(())
}

/// Moves decoys' messages on (outbox_decoys_due's order).
static ADVANCE_DECOYS: LazyLock<String> = LazyLock::new(|| {
    state::sql(
        "WITH due AS (
             SELECT o.id,
                    CASE WHEN o.expires_at <= $1 THEN {expired}
                         WHEN (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id)
                              IS DISTINCT FROM 'pending' THEN {cancelled}
                         WHEN o.state = {sending} THEN {sent}
                         ELSE {sending} END AS next_state
               FROM otp.outbox o
              WHERE o.state IN ({queued}, {sending}) AND o.destination = '' AND o.available_at <= $1
                AND ($3 OR o.expires_at <= $1
                     OR (SELECT c.state FROM otp.challenge c WHERE c.id = o.challenge_id)
                        IS DISTINCT FROM 'pending')
              ORDER BY o.available_at, o.id
              LIMIT $2
                FOR UPDATE SKIP LOCKED)
         UPDATE otp.outbox o
            SET state = due.next_state,
                attempt = CASE WHEN due.next_state = {sending} THEN o.attempt + 1 ELSE o.attempt END,
                available_at = CASE WHEN due.next_state = {sending}
                                    THEN $1 + pg_catalog.make_interval(secs => 0.2 + 0.8 * pg_catalog.random())
                                    ELSE o.available_at END,
                code_nonce = CASE WHEN due.next_state = {sending} THEN o.code_nonce END,
                code_sealed = CASE WHEN due.next_state = {sending} THEN o.code_sealed END,
                sent_at = CASE WHEN due.next_state = {sent} THEN $1 ELSE o.sent_at END,
                finished_at = CASE WHEN due.next_state = {sending} THEN NULL ELSE $1 END
           FROM due WHERE o.id = due.id
      RETURNING o.challenge_id, o.state",
    )
});

/// Runs one of the statements above: the challenge and new state of each
/// message it moved.
fn moved(
    client: &mut SpiClient<'_>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<Vec<(i64, String)>> {
    prepared::update(client, sql, None, args)?
        .map(|row| {
            Ok((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
            ))
        })
        .collect()
}

fn finish_undeliverable(client: &mut SpiClient<'_>, now: TimestampWithTimeZone) -> Result<i64> {
    let ended = moved(
        client,
        &FINISH_UNDELIVERABLE,
        &[now.into(), MAX_PER_SWEEP.into()],
    )?;
    mirror(
        client,
        of_state(&ended, MessageState::Expired),
        MessageState::Expired,
        now,
    )?;
    Ok(ended.len() as i64)
}

fn advance_decoys(
    client: &mut SpiClient<'_>,
    now: TimestampWithTimeZone,
    advance: bool,
) -> Result<i64> {
    let decoys = moved(
        client,
        &ADVANCE_DECOYS,
        &[now.into(), MAX_PER_SWEEP.into(), advance.into()],
    )?;
    mirror(
        client,
        of_state(&decoys, MessageState::Expired),
        MessageState::Expired,
        now,
    )?;
    mirror(
        client,
        of_state(&decoys, MessageState::Sent),
        MessageState::Sent,
        now,
    )?;
    Ok(decoys.len() as i64)
}

/// The challenges of the messages that reached `state`.
fn of_state(messages: &[(i64, String)], state: MessageState) -> Vec<i64> {
    messages
        .iter()
        .filter(|(_, word)| word == state.as_str())
        .map(|(challenge, _)| *challenge)
        .collect()
}
