//! Authenticated conversation sessions.
//!
//! A session starts when a code is verified (or at once when the agent does not
//! require a code). It ends after `idle_timeout` without a touch, after
//! `absolute_timeout` in any case, or when revoked. The bearer token is handed
//! out once; the table keeps only its SHA-256.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use zeroize::Zeroizing;

use crate::audit::{self, Event};
use crate::clock;
use crate::config::Agent;
use crate::crypto;
use crate::errors::{OtpError, Result};
use crate::prepared;

/// Result words of session_touch. The spelling is the SQL contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchStatus {
    Active,
    IdleTimeout,
    Expired,
    Revoked,
    Unknown,
}

impl TouchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TouchStatus::Active => "active",
            TouchStatus::IdleTimeout => "idle_timeout",
            TouchStatus::Expired => "expired",
            TouchStatus::Revoked => "revoked",
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
pub fn start(
    client: &mut SpiClient<'_>,
    agent: &Agent,
    conversation: &str,
    subject: &str,
    challenge_id: Option<i64>,
    now: TimestampWithTimeZone,
) -> Result<Zeroizing<String>> {
    let (token, token_hash) = crypto::new_session_token()?;
    // The session and its audit event in one statement.
    prepared::update(
        client,
        "WITH started AS (
             INSERT INTO otp.session (token_hash, agent, conversation, subject, challenge_id, idle_timeout,
                                      created_at, last_seen_at, idle_expires_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, LEAST($7 + $6, $7 + $8), $7 + $8)
          RETURNING agent, conversation, subject)
         INSERT INTO otp.event (at, agent, conversation, subject, event)
         SELECT $7, agent, conversation, subject, $9 FROM started",
        None,
        &[
            token_hash.to_vec().into(),
            agent.name.as_str().into(),
            conversation.into(),
            subject.into(),
            challenge_id.into(),
            agent.idle_timeout.into(),
            now.into(),
            agent.absolute_timeout.into(),
            Event::SessionStarted.as_str().into(),
        ],
    )?;
    Ok(token)
}

/// Extends an active session's idle deadline (never past its absolute one),
/// or says why the session is not active.
pub fn touch(client: &mut SpiClient<'_>, token: Option<&str>) -> Result<Touch> {
    let token = token.ok_or_else(|| OtpError::null_argument("session_token"))?;
    let token_hash = crypto::session_token_hash(token).to_vec();
    let now = clock::now();
    // The common case, an active session, is one statement.
    let active = prepared::update(
        client,
        "UPDATE otp.session
            SET last_seen_at = $2, idle_expires_at = LEAST($2 + idle_timeout, expires_at)
          WHERE token_hash = $1 AND revoked_at IS NULL AND $2 < expires_at AND $2 < idle_expires_at
      RETURNING agent, conversation, subject, idle_expires_at, expires_at",
        None,
        &[token_hash.clone().into(), now.into()],
    )?
    .first();
    if !active.is_empty() {
        return Ok(Touch {
            status: TouchStatus::Active,
            agent: active.get(1)?,
            conversation: active.get(2)?,
            subject: active.get(3)?,
            idle_expires_at: active.get(4)?,
            expires_at: active.get(5)?,
        });
    }
    let ended = prepared::select(
        client,
        "SELECT agent, conversation, subject, idle_expires_at, expires_at,
                    CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                         WHEN $2 >= expires_at THEN 'expired'
                         ELSE 'idle_timeout' END,
                    id, revoked_at IS NULL AND ended_at IS NULL
               FROM otp.session WHERE token_hash = $1",
        Some(1),
        &[token_hash.into(), now.into()],
    )?
    .first();
    if ended.is_empty() {
        return Ok(Touch::unknown());
    }
    if ended.get::<bool>(8)?.unwrap_or(false) {
        // The first touch after a timeout records it, once.
        let session_id: i64 = ended.get(7)?.expect("NOT NULL column");
        prepared::update(
            client,
            "UPDATE otp.session SET ended_at = $2 WHERE id = $1",
            None,
            &[session_id.into(), now.into()],
        )?;
        audit::session_event(client, session_id, Event::SessionExpired, now)?;
    }
    let status = match ended.get::<String>(6)?.as_deref() {
        Some("revoked") => TouchStatus::Revoked,
        Some("expired") => TouchStatus::Expired,
        _ => TouchStatus::IdleTimeout,
    };
    Ok(Touch {
        status,
        agent: ended.get(1)?,
        conversation: ended.get(2)?,
        subject: ended.get(3)?,
        idle_expires_at: ended.get(4)?,
        expires_at: ended.get(5)?,
    })
}

/// Revokes a session. True when this call revoked it; false when the token is
/// unknown or the session was revoked before.
pub fn revoke(client: &mut SpiClient<'_>, token: Option<&str>) -> Result<bool> {
    let token = token.ok_or_else(|| OtpError::null_argument("session_token"))?;
    let now = clock::now();
    let revoked = prepared::update(
        client,
        "UPDATE otp.session SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL RETURNING id",
        None,
        &[crypto::session_token_hash(token).to_vec().into(), now.into()],
    )?;
    let Some(row) = revoked.into_iter().next() else {
        return Ok(false);
    };
    let session_id: i64 = row.get(1)?.expect("RETURNING id");
    audit::session_event(client, session_id, Event::SessionRevoked, now)?;
    Ok(true)
}
