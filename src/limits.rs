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
//! per destination (`locks`), so parallel requests cannot overshoot.
//! Failures and lockouts are counted first in the `ledger`, which no
//! rollback reaches, and recorded here in otp.subject_guard.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;

use crate::config::Agent;
use crate::errors::Result;
use crate::{ledger, locks, prepared};

/// Serialises code issues for this person and this destination until the
/// transaction ends. Call after the conversation lock, before `next_allowed`.
pub fn lock_sender(agent: &str, subject: &str, destination_key: &[u8]) {
    locks::lock(
        locks::Scope::Person,
        &[agent.as_bytes(), subject.as_bytes()],
    );
    locks::lock(locks::Scope::Destination, &[destination_key]);
}

/// When the next code may be sent to this person at this destination (known
/// by one key per configured secret), or None when one may be sent now. A
/// lockout counts whether the tables or only the ledger know of it.
pub fn next_allowed(
    client: &mut SpiClient<'_>,
    agent: &Agent,
    subject: &str,
    destination_keys: &[Vec<u8>],
    now: TimestampWithTimeZone,
) -> Result<Option<TimestampWithTimeZone>> {
    let limits = agent.limits;
    // The max_codes-th newest code in the window leaves it at created_at + window;
    // only then is there room for another. Run as a read-write statement:
    // it takes a fresh snapshot, so it sees the codes committed by whoever
    // held the locks of `lock_sender` before us.
    let from_tables = prepared::update(
        client,
        "WITH subject_codes AS (
             SELECT created_at FROM otp.challenge
              WHERE agent = $1 AND subject = $2 AND created_at > $4 - $5),
         destination_codes AS (
             SELECT created_at FROM otp.challenge
              WHERE destination_key = ANY (ARRAY[$3, $8]) AND created_at > $4 - $5)
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
        .get_one::<TimestampWithTimeZone>()?;
    let from_ledger = ledger::locked_until(&agent.name, subject)
        .filter(|until| *until > i64::from(now))
        .map(TimestampWithTimeZone::try_from)
        .transpose()
        .expect("the ledger holds timestamps it was given");
    Ok([from_tables, from_ledger]
        .into_iter()
        .flatten()
        .max_by_key(|until| i64::from(*until)))
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
    // The row is usually there (from an earlier verification): lock it. An
    // upsert would write a new version of it at every verification.
    let mut row = prepared::update(
        client,
        "SELECT locked_until, consecutive_failures FROM otp.subject_guard
          WHERE agent = $1 AND subject = $2
            FOR UPDATE",
        Some(1),
        &[agent.name.as_str().into(), subject.into()],
    )?
    .first();
    if row.is_empty() {
        // The person's first verification (or the purge removed the row):
        // the upsert settles a race with another first one.
        row = prepared::update(
            client,
            "INSERT INTO otp.subject_guard AS g (agent, subject) VALUES ($1, $2)
             ON CONFLICT (agent, subject) DO UPDATE SET consecutive_failures = g.consecutive_failures
             RETURNING locked_until, consecutive_failures",
            None,
            &[agent.name.as_str().into(), subject.into()],
        )?
        .first();
    }
    Ok(Guard {
        locked_until: row.get(1)?,
        failures: row.get(2)?.unwrap_or(0),
    })
}

/// Writes a person's failure record as a verification left it (see
/// `ledger::guess`), when it differs from what `lock_guard` found.
pub fn save_guard(
    client: &mut SpiClient<'_>,
    agent: &Agent,
    subject: &str,
    found: &Guard,
    failures: i32,
    locked_until: Option<i64>,
) -> Result<()> {
    let found_until = found.locked_until.map(i64::from);
    if found.failures == failures && found_until == locked_until {
        return Ok(());
    }
    let locked_until = locked_until
        .map(TimestampWithTimeZone::try_from)
        .transpose()
        .expect("the ledger holds timestamps it was given");
    prepared::update(
        client,
        "UPDATE otp.subject_guard SET consecutive_failures = $3, locked_until = $4
          WHERE agent = $1 AND subject = $2",
        None,
        &[
            agent.name.as_str().into(),
            subject.into(),
            failures.into(),
            locked_until.into(),
        ],
    )?;
    Ok(())
}

/// Ends a person's lockout and clears their failure count (otp_unlock), in
/// the table and in the ledger. True when there was something to clear.
pub fn unlock(client: &mut SpiClient<'_>, agent: &str, subject: &str) -> Result<bool> {
    // The table first: if the caller may not write it, the ledger is
    // left as it is.
    let cleared = !prepared::update(
        client,
        "UPDATE otp.subject_guard SET consecutive_failures = 0, locked_until = NULL
          WHERE agent = $1 AND subject = $2 AND (consecutive_failures > 0 OR locked_until IS NOT NULL)
      RETURNING 1",
        None,
        &[agent.into(), subject.into()],
    )?
    .is_empty();
    let in_ledger = ledger::forget_person(agent, subject);
    Ok(cleared || in_ledger)
}
