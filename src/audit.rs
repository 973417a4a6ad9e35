//! The audit trail: an append-only record of what happened to whom, so an
//! agent can tell a person "someone requested a code for your account at
//! 10:42", and an operator can investigate. It never holds a code or token.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;

use crate::errors::{OtpError, Result};
use crate::{clock, prepared, schema};

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
/// A week whose every row is older empties with one TRUNCATE, when its
/// partition's lock can be had at once; the week the cutoff falls in, and
/// an old week that someone is reading, lose their old rows one by one.
/// Empty weeks are not locked at all. The TRUNCATE locks that partition
/// alone until the transaction ends: pg_otp writes to the current week's
/// and otp_events reads only the weeks it asks for, so neither waits for it.
pub fn purge(client: &mut SpiClient<'_>, retention: Interval) -> Result<i64> {
    // Read now, not when the purge began: its other deletes may have
    // waited for locks, and a stale clock would put this week among the old.
    let now = clock::now();
    // (Before ALTER EXTENSION UPDATE to 0.4.0 there are no weeks: see
    // `schema`. A retention as long as the ring keeps every week in use.)
    let reached = if retention.as_micros() < i128::from(SLOTS * WEEK_MICROS)
        && schema::installed().weekly_events
    {
        Some(weeks_back(client, now, retention)?)
    } else {
        None
    };
    // The weeks from the cutoff's to the next one hold rows newer than the
    // cutoff; every other week's rows are older. Unless the cutoff's slot
    // comes round again among them: then every slot may hold newer rows.
    let Some((cutoff, reached)) =
        reached.filter(|(_, reached)| !reached[1..].contains(&reached[0]))
    else {
        return Ok(prepared::update(
            client,
            "DELETE FROM otp.event WHERE at < $1 - $2",
            None,
            &[now.into(), retention.into()],
        )?
        .len() as i64);
    };
    let (rest, old): (Vec<i16>, Vec<i16>) =
        (0..SLOTS as i16).partition(|slot| reached.contains(slot));
    // Every other week's old rows, one by one: the cutoff's week, and rows
    // from a year ago and more in a week now in use again (a purge that did
    // not run, or a longer retention before). The BRIN index summarizes each
    // range as it fills (autosummarize), so the current week is not read.
    let mut purged = prepared::update(
        client,
        "DELETE FROM otp.event WHERE at < $1 AND slot = ANY ($2)",
        None,
        &[cutoff.into(), rest.into()],
    )?
    .len() as i64;
    for slot in old {
        purged += empty_week(client, slot, cutoff)?;
    }
    Ok(purged)
}

/// `now - back`, and the slots of the weeks from its week to the week
/// after `now`'s (a writer's clock may read just after ours), in the order
/// of the weeks. The callers bound `back`: the series has a row per week.
fn weeks_back(
    client: &SpiClient<'_>,
    now: TimestampWithTimeZone,
    back: Interval,
) -> Result<(TimestampWithTimeZone, Vec<i16>)> {
    let row = prepared::select(
        client,
        "SELECT $1 - $2,
                ARRAY(SELECT otp.event_slot(week)
                        FROM pg_catalog.generate_series($1 - $2, $1 + interval '604800 seconds',
                                                        interval '604800 seconds') AS week
                       ORDER BY week)
                || otp.event_slot($1 + interval '604800 seconds')",
        Some(1),
        &[now.into(), back.into()],
    )?
    .first();
    Ok((
        row.get(1)?.expect("a time"),
        row.get(2)?.expect("at least the next week"),
    ))
}

/// Empties one old week: with TRUNCATE when it holds nothing newer than the
/// cutoff and its lock can be had without waiting, row by row otherwise.
/// How many rows went.
fn empty_week(client: &mut SpiClient<'_>, slot: i16, cutoff: TimestampWithTimeZone) -> Result<i64> {
    // Our own names (sql/schema.sql), from a number.
    let name = format!("otp.event_{slot:02}");
    // Read under the readers' lock: an empty week takes no lock at all (no
    // WAL, nothing for a standby to replay), and nothing waits for this.
    // A row newer than the cutoff (a clock stepped back, a row written by
    // hand) keeps the week from TRUNCATE.
    let found = client
        .select(
            &format!("SELECT count(*), coalesce(max(at) >= $1, false) FROM {name}"),
            Some(1),
            &[cutoff.into()],
        )?
        .first();
    let rows: i64 = found.get(1)?.unwrap_or(0);
    let newer: bool = found.get(2)?.unwrap_or(false);
    if rows == 0 {
        return Ok(0);
    }
    if !newer {
        let partition = client
            .select(
                &format!("SELECT '{name}'::pg_catalog.regclass::pg_catalog.oid"),
                Some(1),
                &[],
            )?
            .first()
            .get_one::<pg_sys::Oid>()?
            .expect("the week's partition");
        // SAFETY: takes a lock (or not) on an existing relation by oid.
        let locked = unsafe {
            pg_sys::ConditionalLockRelationOid(
                partition,
                pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
            )
        };
        if locked {
            client.update(&format!("TRUNCATE {name}"), None, &[])?;
            return Ok(rows);
        }
    }
    Ok(client
        .update(
            &format!("DELETE FROM {name} WHERE at < $1"),
            None,
            &[cutoff.into()],
        )?
        .len() as i64)
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
    // Only the weeks `since` reaches, named as constants: a plan made for
    // them locks those partitions alone, so that an open transaction that
    // read a person's recent events does not keep the purge from emptying
    // old weeks. Planned at each call, hence not a kept statement. (Before
    // ALTER EXTENSION UPDATE to 0.4.0 there are no weeks: see `schema`.)
    let in_weeks = if since.as_micros() < i128::from((SLOTS - 2) * WEEK_MICROS)
        && schema::installed().weekly_events
    {
        let (_, weeks) = weeks_back(client, clock::now(), since)?;
        let weeks: Vec<String> = weeks.iter().map(i16::to_string).collect();
        format!("AND slot IN ({})", weeks.join(", "))
    } else {
        String::new()
    };
    let rows = client.select(
        &format!(
            "SELECT at, event, conversation, channel, destination_hint FROM otp.event
              WHERE agent = $1 AND subject = $2 AND at > pg_catalog.clock_timestamp() - $3 {in_weeks}
              ORDER BY at DESC, id DESC
              LIMIT $4"
        ),
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
