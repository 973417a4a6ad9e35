//! Authenticated conversation sessions.
//!
//! A session starts when a code is verified (or at once when the agent does not
//! require a code). It ends after `idle_timeout` without a touch, after
//! `absolute_timeout` in any case, when revoked, or when a touch finds that
//! the person's record changed: the person is gone from the source, or the
//! phone number or email the code went to is no longer on their record (a
//! new number is a new authenticator, NIST SP 800-63B §3.1.3.3). The bearer
//! token is handed out once; the table keeps only its SHA-256, and of the
//! address only a keyed fingerprint.
//!
//! `session_use` is a touch that also binds the rest of the transaction to
//! the session's person (see `binding`).

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use zeroize::Zeroizing;

use crate::audit::{self, Event};
use crate::config::{self, Agent, Channel};
use crate::crypto;
use crate::errors::{OtpError, Result};
use crate::record::{self, Fingerprint, Still};
use crate::{binding, clock, gucs, prepared, schema};

/// The statement that starts a session and records the event, with
/// `$columns` and `$values` added to the session's row.
macro_rules! start_session {
    ($columns:literal, $values:literal) => {
        concat!(
            "WITH started AS (
                 INSERT INTO otp.session (token_hash, agent, conversation, subject, challenge_id, idle_timeout,
                                          created_at, last_seen_at, idle_expires_at, expires_at",
            $columns,
            ")
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, LEAST($7 + $6, $7 + $8), $7 + $8",
            $values,
            ")
              RETURNING agent, conversation, subject)
             INSERT INTO otp.event (at, agent, conversation, subject, event)
             SELECT $7, agent, conversation, subject, $9 FROM started"
        )
    };
}

/// The session row a touch needs, with `$newer` for the columns of a newer
/// schema (or stand-ins).
macro_rules! find_session {
    ($newer:literal) => {
        concat!(
            "SELECT id, agent, conversation, subject, idle_expires_at, expires_at,
                    CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                         WHEN $2 >= expires_at THEN 'expired'
                         WHEN $2 >= idle_expires_at THEN 'idle_timeout' END,
                    ended_at IS NOT NULL OR revoked_at IS NOT NULL, ",
            $newer,
            " FROM otp.session WHERE token_hash = $1"
        )
    };
}

/// A person's active sessions, newest first (`$newer`: a condition of a
/// newer schema).
macro_rules! active_sessions {
    ($newer:literal) => {
        concat!(
            "SELECT conversation, created_at, last_seen_at, idle_expires_at, expires_at
               FROM otp.session
              WHERE agent = $1 AND subject = $2 AND revoked_at IS NULL
                AND $3 < expires_at AND $3 < idle_expires_at ",
            $newer,
            " ORDER BY created_at DESC, id DESC"
        )
    };
}

/// Revokes an agent's active sessions (`$whose`: which of them, from $4 on;
/// `$newer`: a condition of a newer schema) and records an event for each;
/// returns how many. $1 agent, $2 time, $3 the event word.
macro_rules! revoke_sessions {
    ($whose:literal, $newer:literal) => {
        concat!(
            "WITH revoked AS (
                 UPDATE otp.session SET revoked_at = $2
                  WHERE agent = $1 ",
            $whose,
            " AND revoked_at IS NULL
                    AND $2 < expires_at AND $2 < idle_expires_at ",
            $newer,
            " RETURNING agent, conversation, subject),
             recorded AS (
                 INSERT INTO otp.event (at, agent, conversation, subject, event)
                 SELECT $2, agent, conversation, subject, $3 FROM revoked)
             SELECT count(*)::integer FROM revoked"
        )
    };
}

/// Result words of session_touch and session_use. The spelling is the SQL
/// contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchStatus {
    Active,
    IdleTimeout,
    Expired,
    Revoked,
    RecordChanged,
    Unknown,
}

impl TouchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TouchStatus::Active => "active",
            TouchStatus::IdleTimeout => "idle_timeout",
            TouchStatus::Expired => "expired",
            TouchStatus::Revoked => "revoked",
            TouchStatus::RecordChanged => "record_changed",
            TouchStatus::Unknown => "unknown",
        }
    }
}

/// What session_touch reports.
pub struct Touch {
    pub status: TouchStatus,
    pub agent: Option<String>,
    pub conversation: Option<String>,
    pub subject: Option<String>,
    pub idle_expires_at: Option<TimestampWithTimeZone>,
    pub expires_at: Option<TimestampWithTimeZone>,
}

impl Touch {
    fn unknown() -> Self {
        Touch {
            status: TouchStatus::Unknown,
            agent: None,
            conversation: None,
            subject: None,
            idle_expires_at: None,
            expires_at: None,
        }
    }
}

/// Starts a session and returns its bearer token (shown to the caller once).
/// `fingerprint`: what the verified code was sent to, which the session then
/// depends on; None for a session started without a code.
pub fn start(
    client: &mut SpiClient<'_>,
    agent: &Agent,
    conversation: &str,
    subject: &str,
    challenge_id: Option<i64>,
    fingerprint: Option<&Fingerprint>,
    now: TimestampWithTimeZone,
) -> Result<Zeroizing<String>> {
    let (token, token_hash) = crypto::new_session_token()?;
    let mut args = vec![
        token_hash.to_vec().into(),
        agent.name.as_str().into(),
        conversation.into(),
        subject.into(),
        challenge_id.into(),
        agent.idle_timeout.into(),
        now.into(),
        agent.absolute_timeout.into(),
        Event::SessionStarted.as_str().into(),
    ];
    // The session and its audit event in one statement. Until ALTER
    // EXTENSION pg_otp UPDATE there is nowhere to keep the fingerprint.
    let sql = if schema::installed().records_and_roles {
        args.extend([
            fingerprint.map(|f| f.channel.as_str()).into(),
            fingerprint.map(|f| f.key.clone()).into(),
            fingerprint.map(|f| f.key_id.clone()).into(),
        ]);
        start_session!(", channel, destination_key, key_id", ", $10, $11, $12")
    } else {
        start_session!("", "")
    };
    prepared::update(client, sql, None, &args)?;
    Ok(token)
}

/// A session as a touch finds it.
struct Found {
    id: i64,
    agent: String,
    conversation: Option<String>,
    subject: String,
    idle_expires_at: TimestampWithTimeZone,
    expires_at: TimestampWithTimeZone,
    /// Why it is over already, if it is (revoked, record_changed, expired,
    /// idle_timeout), judged at `now`.
    over: Option<TouchStatus>,
    /// Whether the first touch after a timeout has been recorded.
    end_recorded: bool,
    fingerprint: Option<Fingerprint>,
}

impl Found {
    fn touch(self, status: TouchStatus) -> Touch {
        Touch {
            status,
            agent: Some(self.agent),
            conversation: self.conversation,
            subject: Some(self.subject),
            idle_expires_at: Some(self.idle_expires_at),
            expires_at: Some(self.expires_at),
        }
    }
}

/// The session behind a token, if any.
fn find(client: &SpiClient<'_>, token: &str, now: TimestampWithTimeZone) -> Result<Option<Found>> {
    let token_hash = crypto::session_token_hash(token).to_vec();
    // Until ALTER EXTENSION pg_otp UPDATE there is no fingerprint and no
    // record_changed_at (see `schema`).
    let sql = if schema::installed().records_and_roles {
        find_session!("record_changed_at IS NOT NULL, channel, destination_key, key_id")
    } else {
        find_session!("false, NULL::text, NULL::bytea, NULL::bytea")
    };
    let row = prepared::select(client, sql, Some(1), &[token_hash.into(), now.into()])?.first();
    if row.is_empty() {
        return Ok(None);
    }
    let over = match row.get::<String>(7)?.as_deref() {
        Some("revoked") => Some(TouchStatus::Revoked),
        _ if row.get::<bool>(9)?.unwrap_or(false) => Some(TouchStatus::RecordChanged),
        Some("expired") => Some(TouchStatus::Expired),
        Some("idle_timeout") => Some(TouchStatus::IdleTimeout),
        _ => None,
    };
    let fingerprint = match (
        row.get::<String>(10)?,
        row.get::<Vec<u8>>(11)?,
        row.get::<Vec<u8>>(12)?,
    ) {
        (Some(channel), Some(key), Some(key_id)) => {
            Channel::parse(&channel).map(|channel| Fingerprint {
                channel,
                key,
                key_id,
            })
        }
        _ => None,
    };
    Ok(Some(Found {
        id: row.get(1)?.expect("NOT NULL column"),
        agent: row.get(2)?.unwrap_or_default(),
        conversation: row.get(3)?,
        subject: row.get(4)?.unwrap_or_default(),
        idle_expires_at: row.get(5)?.expect("NOT NULL column"),
        expires_at: row.get(6)?.expect("NOT NULL column"),
        over,
        end_recorded: row.get::<bool>(8)?.unwrap_or(true),
        fingerprint,
    }))
}

/// Extends an active session's idle deadline (never past its absolute one),
/// or says why the session is not active. With `bind`, the rest of the
/// transaction is bound to the session's person when it is active, and to
/// nobody (for its agent) when it is not.
pub fn touch(client: &mut SpiClient<'_>, token: Option<&str>, bind: bool) -> Result<Touch> {
    let token = token.ok_or_else(|| OtpError::null_argument("session_token"))?;
    let now = clock::now();
    let unknown = || {
        if bind {
            binding::bind_nobody();
        }
        Ok(Touch::unknown())
    };
    let Some(found) = find(client, token, now)? else {
        return unknown();
    };
    // A session of an agent this caller may not act for, or of an agent
    // removed since, is none of its business.
    let agent = match config::load(client, &found.agent) {
        Ok(agent) if config::may_act_for(&agent) => agent,
        _ => return unknown(),
    };
    let status = match found.over {
        Some(over) => {
            if matches!(over, TouchStatus::Expired | TouchStatus::IdleTimeout)
                && !found.end_recorded
            {
                // The first touch after a timeout records it, once.
                end(client, found.id, None, Event::SessionExpired, now)?;
            }
            over
        }
        None => match still_valid(client, &agent, &found)? {
            Still::Same(renewed) => {
                // During a key rotation, a touch moves the session's
                // fingerprint to the current secret.
                let row = match renewed {
                    None => prepared::update(
                        client,
                        "UPDATE otp.session
                            SET last_seen_at = $2, idle_expires_at = LEAST($2 + idle_timeout, expires_at)
                          WHERE id = $1
                      RETURNING idle_expires_at",
                        None,
                        &[found.id.into(), now.into()],
                    )?,
                    Some(renewed) => prepared::update(
                        client,
                        "UPDATE otp.session
                            SET last_seen_at = $2, idle_expires_at = LEAST($2 + idle_timeout, expires_at),
                                destination_key = $3, key_id = $4
                          WHERE id = $1
                      RETURNING idle_expires_at",
                        None,
                        &[found.id.into(), now.into(), renewed.key.into(), renewed.key_id.into()],
                    )?,
                }
                .first();
                let idle_expires_at: TimestampWithTimeZone =
                    row.get_one()?.expect("NOT NULL column");
                if bind {
                    binding::bind(&agent.name, Some(&found.subject));
                }
                return Ok(Touch {
                    idle_expires_at: Some(idle_expires_at),
                    ..found.touch(TouchStatus::Active)
                });
            }
            Still::Changed => {
                end(
                    client,
                    found.id,
                    Some("record_changed_at"),
                    Event::RecordChanged,
                    now,
                )?;
                TouchStatus::RecordChanged
            }
            // The secret its fingerprint was made under is gone: as for a
            // code of such a secret, the session has expired.
            Still::Unverifiable => {
                end(
                    client,
                    found.id,
                    Some("expires_at"),
                    Event::SessionExpired,
                    now,
                )?;
                TouchStatus::Expired
            }
        },
    };
    if bind {
        binding::bind(&agent.name, None);
    }
    Ok(found.touch(status))
}

/// Whether an active session's person is still who it was started for
/// (checked once the schema has fingerprints; see `schema`). A session
/// started by a code needs the secret to check its fingerprint: without a
/// usable one this fails closed (55000), like every function that does.
fn still_valid(client: &SpiClient<'_>, agent: &Agent, found: &Found) -> Result<Still> {
    if !schema::installed().records_and_roles {
        return Ok(Still::Same(None));
    }
    let ring = match &found.fingerprint {
        Some(_) => Some(gucs::keys()?),
        None => None,
    };
    let fingerprint = found.fingerprint.as_ref().zip(ring.as_ref());
    record::still(client, agent, &found.subject, fingerprint)
}

/// Ends a session now: `column` (revoked_at, record_changed_at, or
/// expires_at to move its absolute deadline) set to `now`, or only the end
/// recorded; and the audit event, once.
fn end(
    client: &mut SpiClient<'_>,
    session_id: i64,
    column: Option<&str>,
    event: Event,
    now: TimestampWithTimeZone,
) -> Result<()> {
    let sql = match column {
        None => "UPDATE otp.session SET ended_at = $2 WHERE id = $1",
        Some("record_changed_at") => {
            "UPDATE otp.session SET record_changed_at = $2, ended_at = $2 WHERE id = $1"
        }
        Some("expires_at") => {
            "UPDATE otp.session SET expires_at = $2, idle_expires_at = LEAST(idle_expires_at, $2), ended_at = $2
              WHERE id = $1"
        }
        Some(other) => unreachable!("no session column {other}"),
    };
    prepared::update(client, sql, None, &[session_id.into(), now.into()])?;
    audit::session_event(client, session_id, event, now)?;
    Ok(())
}

/// Revokes a session. True when this call revoked it; false when the token is
/// unknown (or belongs to an agent the caller may not act for) or the
/// session was revoked before.
pub fn revoke(client: &mut SpiClient<'_>, token: Option<&str>) -> Result<bool> {
    let token = token.ok_or_else(|| OtpError::null_argument("session_token"))?;
    let now = clock::now();
    let Some(found) = find(client, token, now)? else {
        return Ok(false);
    };
    match config::load(client, &found.agent) {
        Ok(agent) if config::may_act_for(&agent) => {}
        _ => return Ok(false),
    }
    let revoked = prepared::update(
        client,
        "UPDATE otp.session SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        None,
        &[found.id.into(), now.into()],
    )?;
    if revoked.is_empty() {
        return Ok(false);
    }
    audit::session_event(client, found.id, Event::SessionRevoked, now)?;
    Ok(true)
}

/// One of a person's active sessions, as otp_sessions lists it: never a
/// token or its hash.
pub struct Listed {
    pub conversation: String,
    pub started_at: TimestampWithTimeZone,
    pub last_used_at: TimestampWithTimeZone,
    pub idle_expires_at: TimestampWithTimeZone,
    pub expires_at: TimestampWithTimeZone,
}

/// A person's active sessions with an agent, newest first.
pub fn list(client: &SpiClient<'_>, agent: &Agent, subject: Option<&str>) -> Result<Vec<Listed>> {
    let subject = subject.ok_or_else(|| OtpError::null_argument("subject"))?;
    let now = clock::now();
    let sql = if schema::installed().records_and_roles {
        active_sessions!("AND record_changed_at IS NULL")
    } else {
        active_sessions!("")
    };
    prepared::select(
        client,
        sql,
        None,
        &[agent.name.as_str().into(), subject.into(), now.into()],
    )?
    .map(|row| {
        Ok(Listed {
            conversation: row.get(1)?.unwrap_or_default(),
            started_at: row.get(2)?.expect("NOT NULL column"),
            last_used_at: row.get(3)?.expect("NOT NULL column"),
            idle_expires_at: row.get(4)?.expect("NOT NULL column"),
            expires_at: row.get(5)?.expect("NOT NULL column"),
        })
    })
    .collect()
}

/// Ends every active session of a person with an agent (the employee left,
/// the phone was stolen), each with its audit event. Returns how many.
pub fn revoke_all(client: &mut SpiClient<'_>, agent: &Agent, subject: Option<&str>) -> Result<i32> {
    let subject = subject.ok_or_else(|| OtpError::null_argument("subject"))?;
    let now = clock::now();
    let sql = if schema::installed().records_and_roles {
        revoke_sessions!("AND subject = $4", "AND record_changed_at IS NULL")
    } else {
        revoke_sessions!("AND subject = $4", "")
    };
    let revoked = prepared::update(
        client,
        sql,
        None,
        &[
            agent.name.as_str().into(),
            now.into(),
            Event::SessionRevoked.as_str().into(),
            subject.into(),
        ],
    )?;
    Ok(revoked.first().get_one::<i32>()?.unwrap_or(0))
}

/// Ends every active session of an agent, each with its audit event: its
/// source changed (otp_configure), so who its sessions stand for may have.
pub fn revoke_agent(
    client: &mut SpiClient<'_>,
    agent: &str,
    now: TimestampWithTimeZone,
) -> Result<i32> {
    let sql = if schema::installed().records_and_roles {
        revoke_sessions!("", "AND record_changed_at IS NULL")
    } else {
        revoke_sessions!("", "")
    };
    let revoked = prepared::update(
        client,
        sql,
        None,
        &[
            agent.into(),
            now.into(),
            Event::SessionRevoked.as_str().into(),
        ],
    )?;
    Ok(revoked.first().get_one::<i32>()?.unwrap_or(0))
}
