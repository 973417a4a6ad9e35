//! The audit trail: an append-only record of what happened to whom, so an
//! agent can tell a person "someone requested a code for your account at
//! 10:42", and an operator can investigate. It never holds a code or token.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;

use crate::errors::{OtpError, Result};
use crate::{prepared, schema};

/// Event words, as stored in otp.event and returned by otp_events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Issued,
    Delivered,
    DeliveryFailed,
    Verified,
    Incorrect,
    Locked,
    Expired,
    Superseded,
    RateLimited,
    SessionStarted,
    SessionExpired,
    SessionRevoked,
    /// The person left the source, or the address a code went to left their
    /// record: the pending code, or the session, ended.
    RecordChanged,
    /// The provider reports that the message reached the person's device
    /// (WhatsApp's `delivered`; `Delivered` above, older, means the provider
    /// accepted it).
    Received,
    /// The provider reports that the person opened the message.
    Read,
}

impl Event {
    #[cfg(any(test, feature = "pg_test"))]
    pub const ALL: [Event; 15] = [
        Event::Issued,
        Event::Delivered,
        Event::DeliveryFailed,
        Event::Verified,
        Event::Incorrect,
        Event::Locked,
        Event::Expired,
        Event::Superseded,
        Event::RateLimited,
        Event::SessionStarted,
        Event::SessionExpired,
        Event::SessionRevoked,
        Event::RecordChanged,
        Event::Received,
        Event::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Issued => "issued",
            Event::Delivered => "delivered",
            Event::DeliveryFailed => "delivery_failed",
            Event::Verified => "verified",
            Event::Incorrect => "incorrect",
            Event::Locked => "locked",
            Event::Expired => "expired",
            Event::Superseded => "superseded",
            Event::RateLimited => "rate_limited",
            Event::SessionStarted => "session_started",
            Event::SessionExpired => "session_expired",
            Event::SessionRevoked => "session_revoked",
            Event::RecordChanged => "record_changed",
            Event::Received => "received",
            Event::Read => "read",
        }
    }
}

/// Records an event about a challenge (its agent, conversation, person,
/// channel and masked destination as they are now).
pub fn challenge_event(
    client: &mut SpiClient<'_>,
    challenge_id: i64,
    event: Event,
    at: TimestampWithTimeZone,
) -> Result<()> {
    prepared::update(
        client,
        "INSERT INTO otp.event (at, agent, conversation, subject, event, channel, destination_hint)
         SELECT $3, agent, conversation, subject, $2, channel, destination_hint FROM otp.challenge WHERE id = $1",
        None,
        &[challenge_id.into(), event.as_str().into(), at.into()],
    )?;
    Ok(())
}

/// Records an event about a session.
pub fn session_event(
    client: &mut SpiClient<'_>,
    session_id: i64,
    event: Event,
    at: TimestampWithTimeZone,
) -> Result<()> {
    prepared::update(
        client,
        "INSERT INTO otp.event (at, agent, conversation, subject, event)
         SELECT $3, agent, conversation, subject, $2 FROM otp.session WHERE id = $1",
        None,
        &[session_id.into(), event.as_str().into(), at.into()],
    )?;
    Ok(())
}

/// Records that a code was refused for a limit (no challenge exists).
pub fn rate_limited(
    client: &mut SpiClient<'_>,
    agent: &str,
    conversation: &str,
    subject: &str,
    at: TimestampWithTimeZone,
) -> Result<()> {
    prepared::update(
        client,
        "INSERT INTO otp.event (at, agent, conversation, subject, event) VALUES ($1, $2, $3, $4, $5)",
        None,
        &[at.into(), agent.into(), conversation.into(), subject.into(), Event::RateLimited.as_str().into()],
    )?;
    Ok(())
}

/// The audit trail's partitions are weeks (see `otp.event` in
/// sql/schema.sql): 53 of them, used in turn.
const SLOTS: i64 = 53;
const WEEK_MICROS: i64 = 7 * 24 * 60 * 60 * 1_000_000;

/// Deletes the events older than `retention`; how many.
///
/// A partition whose every row is older empties with one TRUNCATE, when its
/// lock can be had at once; the other old rows, and all of them when a
/// partition is busy (an otp_events reading it), are deleted row by row.
/// The TRUNCATE locks that partition alone until the transaction ends: rows
/// are written to the current week's partition, so the flow never waits
/// for it.
pub fn purge(
    client: &mut SpiClient<'_>,
    now: TimestampWithTimeZone,
    retention: Interval,
) -> Result<i64> {
    let mut purged = 0;
    // The slots of the weeks from the cutoff's to the next one stay: a row
    // may be written with a time after `now` (a clock read just after the
    // purge's), into the next week's slot. A retention as long as the ring
    // keeps every slot.
    // (Before ALTER EXTENSION UPDATE to 0.4.0 there are no weeks: see
    // `schema`.)
    if retention.as_micros() < i128::from(SLOTS * WEEK_MICROS) && schema::installed().weekly_events
    {
        let old = prepared::select(
            client,
            "SELECT pg_catalog.format('otp.event_%s', pg_catalog.lpad(slot::text, 2, '0'))::pg_catalog.regclass::pg_catalog.oid
               FROM pg_catalog.generate_series(0, 52) AS slot
              WHERE slot NOT IN (SELECT otp.event_slot(week)
                                   FROM pg_catalog.generate_series($1 - $2, $1 + interval '604800 seconds',
                                                                   interval '604800 seconds') AS week
                                 UNION ALL
                                 SELECT otp.event_slot($1 + interval '604800 seconds'))",
            None,
            &[now.into(), retention.into()],
        )?
        .map(|row| Ok(row.get::<pg_sys::Oid>(1)?.expect("a slot's partition")))
        .collect::<Result<Vec<_>>>()?;
        for partition in old {
            purged += empty_partition(client, partition)?;
        }
    }
    purged += prepared::update(
        client,
        "DELETE FROM otp.event WHERE at < $1 - $2",
        None,
        &[now.into(), retention.into()],
    )?
    .len() as i64;
    Ok(purged)
}

/// Truncates one partition if it has rows and its lock can be had without
/// waiting; how many rows it held (0 when it was left to the DELETE).
fn empty_partition(client: &mut SpiClient<'_>, partition: pg_sys::Oid) -> Result<i64> {
    // SAFETY: takes a lock (or not) on a relation by oid; it may not exist
    // any more, in which case the TRUNCATE below fails cleanly.
    let locked = unsafe {
        pg_sys::ConditionalLockRelationOid(
            partition,
            pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
        )
    };
    if !locked {
        return Ok(0);
    }
    let name = client
        .select(
            "SELECT $1::pg_catalog.regclass::text",
            Some(1),
            &[partition.into()],
        )?
        .first()
        .get_one::<String>()?
        .expect("a locked relation has a name");
    let rows = client
        .select(&format!("SELECT count(*) FROM {name}"), Some(1), &[])?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0);
    if rows > 0 {
        client.update(&format!("TRUNCATE {name}"), None, &[])?;
    }
    Ok(rows)
}

/// One row of otp_events.
pub struct Recorded {
    pub at: TimestampWithTimeZone,
    pub event: String,
    pub conversation: Option<String>,
    pub channel: Option<String>,
    pub destination_hint: Option<String>,
}

/// A person's recent events, newest first.
pub fn recent(
    client: &SpiClient<'_>,
    agent: &str,
    subject: Option<&str>,
    since: Option<pgrx::datum::Interval>,
    max_rows: Option<i32>,
) -> Result<Vec<Recorded>> {
    let subject = subject.ok_or_else(|| OtpError::null_argument("subject"))?;
    let since = since.ok_or_else(|| OtpError::null_argument("since"))?;
    let max_rows = max_rows.ok_or_else(|| OtpError::null_argument("max_rows"))?;
    if !(1..=1000).contains(&max_rows) {
        return Err(OtpError::invalid_argument(
            "max_rows",
            "must be between 1 and 1000",
        ));
    }
    let rows = prepared::select(
        client,
        "SELECT at, event, conversation, channel, destination_hint FROM otp.event
          WHERE agent = $1 AND subject = $2 AND at > pg_catalog.clock_timestamp() - $3
          ORDER BY at DESC, id DESC
          LIMIT $4",
        None,
        &[
            agent.into(),
            subject.into(),
            since.into(),
            i64::from(max_rows).into(),
        ],
    )?;
    rows.map(|row| {
        Ok(Recorded {
            at: row.get(1)?.expect("NOT NULL column"),
            event: row.get(2)?.unwrap_or_default(),
            conversation: row.get(3)?,
            channel: row.get(4)?,
            destination_hint: row.get(5)?,
        })
    })
    .collect()
}
