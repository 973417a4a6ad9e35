//! The audit trail: an append-only record of what happened to whom, so an
//! agent can tell a person "someone requested a code for your account at
//! 10:42", and an operator can investigate. It never holds a code or token.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;

use crate::errors::{OtpError, Result};
use crate::prepared;

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
