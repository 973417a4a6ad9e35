//! Abuse resistance: send limits and lockout.
//!
//! Three attempts per code stop guessing one code, but not an attacker who
//! restarts the flow, floods a phone with codes or runs up the messaging
//! bill. So, per agent:
//! - at most `max_codes` codes per person, and per destination, within
//!   `code_window`, and at least `resend_cooldown` between two codes;
//! - `lockout_threshold` failed verifications in a row (across codes) lock
//!   the person out for `lockout_duration`; a success resets the count.
//!
//! Over a limit, otp_issue answers `rate_limited` with the time the next code
//! will be allowed, and writes nothing. Issues are serialised per person and
//! per destination (advisory locks), so parallel requests cannot overshoot.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;

use crate::config::Agent;
use crate::errors::Result;
use crate::prepared;

/// Serialises code issues for this person and this destination until the
/// transaction ends. Call after the conversation lock, before `next_allowed`.
pub fn lock_sender(
    client: &mut SpiClient<'_>,
    agent: &str,
    subject: &str,
    destination_key: &[u8],
) -> Result<()> {
    prepared::update(
        client,
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_otp:subject:' || $1), pg_catalog.hashtext($2)),
                pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_otp:destination'),
                                                 ('x' || pg_catalog.encode(pg_catalog.substr($3, 1, 4), 'hex'))::bit(32)::integer)",
        None,
        &[agent.into(), subject.into(), destination_key.to_vec().into()],
    )?;
    Ok(())
}

/// When the next code may be sent to this person at this destination (known
/// by one key per configured secret), or None when one may be sent now.
pub fn next_allowed(
    client: &SpiClient<'_>,
    agent: &Agent,
    subject: &str,
    destination_keys: &[Vec<u8>],
    now: TimestampWithTimeZone,
) -> Result<Option<TimestampWithTimeZone>> {
    let limits = agent.limits;
    // The max_codes-th newest code in the window leaves it at created_at + window;
    // only then is there room for another.
    Ok(prepared::select(
        client,
        "WITH subject_codes AS (
             SELECT created_at FROM otp.challenge
              WHERE agent = $1 AND subject = $2 AND created_at > $4 - $5),
         destination_codes AS (
             SELECT created_at FROM otp.challenge
              WHERE destination_key = $3 AND created_at > $4 - $5)
         SELECT GREATEST(
             (SELECT locked_until FROM otp.subject_guard
               WHERE agent = $1 AND subject = $2 AND locked_until > $4),
             (SELECT created_at + $5 FROM subject_codes ORDER BY created_at DESC OFFSET $6 - 1 LIMIT 1),
             (SELECT created_at + $5 FROM destination_codes ORDER BY created_at DESC OFFSET $6 - 1 LIMIT 1),
             (SELECT max(created_at) + $7 FROM (SELECT created_at FROM subject_codes
                                                UNION ALL SELECT created_at FROM destination_codes) recent
               HAVING max(created_at) + $7 > $4))",
        Some(1),
        &[
            agent.name.as_str().into(),
            subject.into(),
            destination_keys[0].clone().into(),
            now.into(),
            limits.code_window.into(),
            i64::from(limits.max_codes).into(),
            limits.resend_cooldown.into(),
            // under otp.previous_secret_key, during a rotation
            destination_keys.get(1).cloned().into(),
        ],
    )?
        .first()
        .get_one::<TimestampWithTimeZone>()?)
}

/// A person's failure record, as `lock_guard` found it.
pub struct Guard {
    /// Until when the person is locked out, if they ever were.
    pub locked_until: Option<TimestampWithTimeZone>,
    /// Failed verifications in a row so far.
    pub failures: i32,
}

/// Locks this person's failure record for the rest of the transaction (so
/// that guesses in different conversations are judged one at a time and the
/// threshold cannot be overshot) and returns it.
pub fn lock_guard(client: &mut SpiClient<'_>, agent: &Agent, subject: &str) -> Result<Guard> {
    let row = prepared::update(
        client,
        "INSERT INTO otp.subject_guard AS g (agent, subject) VALUES ($1, $2)
         ON CONFLICT (agent, subject) DO UPDATE SET consecutive_failures = g.consecutive_failures
         RETURNING locked_until, consecutive_failures",
        None,
        &[agent.name.as_str().into(), subject.into()],
    )?
    .first();
    Ok(Guard {
        locked_until: row.get(1)?,
        failures: row.get(2)?.unwrap_or(0),
    })
}

/// Counts a failed verification (after `lock_guard`). Returns true when it
/// locked the person out; the count then starts again for after the lockout.
pub fn record_failure(
    client: &mut SpiClient<'_>,
    agent: &Agent,
    subject: &str,
    now: TimestampWithTimeZone,
) -> Result<bool> {
    let locked_out = prepared::update(
        client,
        "UPDATE otp.subject_guard
            SET consecutive_failures = CASE WHEN consecutive_failures + 1 >= $3 THEN 0
                                            ELSE consecutive_failures + 1 END,
                locked_until = CASE WHEN consecutive_failures + 1 >= $3 THEN $4 + $5 ELSE locked_until END
          WHERE agent = $1 AND subject = $2
      RETURNING locked_until IS NOT NULL AND locked_until > $4",
        None,
        &[
            agent.name.as_str().into(),
            subject.into(),
            agent.limits.lockout_threshold.into(),
            now.into(),
            agent.limits.lockout_duration.into(),
        ],
    )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    Ok(locked_out)
}

/// A successful verification: the failure count starts again.
pub fn record_success(client: &mut SpiClient<'_>, agent: &Agent, subject: &str) -> Result<()> {
    prepared::update(
        client,
        "UPDATE otp.subject_guard SET consecutive_failures = 0
          WHERE agent = $1 AND subject = $2 AND consecutive_failures > 0",
        None,
        &[agent.name.as_str().into(), subject.into()],
    )?;
    Ok(())
}
