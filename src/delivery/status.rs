//! Provider statuses: what a provider says, later, about a message it
//! accepted (WhatsApp's status webhooks, relayed by a dispatcher through
//! otp_outbox_status).
//!
//! Statuses arrive late, out of order and more than once (`delivered` after
//! `read`, `delivered` after `failed`, the same one twice). The message's
//! state only moves forward along `sent` < `delivered` < `read`; `failed`
//! counts only while the message is `sent` (or still being sent: the status
//! may beat the dispatcher's own report), and a message that failed stays
//! failed. A permanent failure while the code is still valid falls back to
//! the record's other channel with the same code, exactly as a failure the
//! provider reports at once (at most once per challenge).
//!
//! An agent that hides unknown identifiers (reveal_unknown = false) is
//! never shown `delivered` or `read`: a decoy has no device to be delivered
//! to, so they would tell real people from decoys. The outbox records them
//! all the same, for operators.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use super::report::{self, Failure, Message};
use super::{finish, MessageState};
use crate::audit::{self, Event};
use crate::clock;
use crate::config::Channel;
use crate::crypto::KeyRing;
use crate::errors::{OtpError, Result};
use crate::prepared;

/// A status a provider reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl Reported {
    pub const ALL: [Reported; 4] = [
        Reported::Sent,
        Reported::Delivered,
        Reported::Read,
        Reported::Failed,
    ];

    /// The message state it stands for (the same word).
    pub fn state(self) -> MessageState {
        match self {
            Reported::Sent => MessageState::Sent,
            Reported::Delivered => MessageState::Delivered,
            Reported::Read => MessageState::Read,
            Reported::Failed => MessageState::Failed,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Reported::ALL
            .into_iter()
            .find(|reported| reported.state().as_str() == text)
    }

    /// The audit event of a delivery that progressed to this status.
    fn event(self) -> Option<Event> {
        match self {
            Reported::Delivered => Some(Event::Received),
            Reported::Read => Some(Event::Read),
            Reported::Sent | Reported::Failed => None,
        }
    }
}

/// What a status did, as otp_outbox_status returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusOutcome {
    /// The message moved forward (or failed, with nothing more to do).
    Recorded,
    /// A permanent failure: the same code was queued on the other channel.
    FellBack,
    /// A retryable failure: the message was queued again.
    Retried,
    /// Nothing changed: a duplicate, a status older than what is known, or
    /// about a message that is no longer being delivered.
    Ignored,
    /// No message has this provider reference.
    Unknown,
}

impl StatusOutcome {
    #[cfg(test)]
    pub const ALL: [StatusOutcome; 5] = [
        StatusOutcome::Recorded,
        StatusOutcome::FellBack,
        StatusOutcome::Retried,
        StatusOutcome::Ignored,
        StatusOutcome::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusOutcome::Recorded => "recorded",
            StatusOutcome::FellBack => "fallback",
            StatusOutcome::Retried => "retried",
            StatusOutcome::Ignored => "ignored",
            StatusOutcome::Unknown => "unknown",
        }
    }
}

/// Records a provider's status for the message it calls `provider_ref`
/// (the reference a dispatcher reported with otp_outbox_sent).
/// `message_id`, when the provider echoes it (WhatsApp's
/// `biz_opaque_callback_data`), finds a message whose send was not reported
/// yet, and must agree with `provider_ref` otherwise. `at` is when the
/// provider says it happened (the audit event's time, never later than
/// now). `error` (blanked of the code, like every provider text) and
/// `retryable` describe a failure.
#[allow(clippy::too_many_arguments)]
pub fn status(
    client: &mut SpiClient<'_>,
    ring: &KeyRing,
    provider_ref: Option<&str>,
    message_id: Option<i64>,
    status: Option<&str>,
    at: Option<TimestampWithTimeZone>,
    error: Option<&str>,
    retryable: Option<bool>,
) -> Result<StatusOutcome> {
    let provider_ref = provider_ref.ok_or_else(|| OtpError::null_argument("provider_ref"))?;
    let status = status.ok_or_else(|| OtpError::null_argument("status"))?;
    let reported = Reported::parse(status).ok_or_else(|| {
        OtpError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "pg_otp: unknown delivery status \"{}\"",
                status.escape_debug()
            ),
        )
        .with_hint("A status is sent, delivered, read or failed.")
    })?;
    let at = at.ok_or_else(|| OtpError::null_argument("at"))?;
    let retryable = retryable.unwrap_or(false);

    let Some(message) = find(client, provider_ref, message_id)? else {
        return Ok(StatusOutcome::Unknown);
    };
    let now = clock::now();
    // The provider's time, within what is possible: not before the message
    // was created (no backdating the audit trail), not after now.
    let at = if at < message.created_at {
        message.created_at
    } else if at > now {
        now
    } else {
        at
    };

    if reported == Reported::Failed {
        if let Some(error) = error {
            report::note_error(client, ring, &message, error)?;
        }
        // A failure counts only for a message on its way or sent, not yet
        // confirmed: a late `failed` never undoes a delivery.
        if !matches!(message.state, MessageState::Sending | MessageState::Sent) {
            return Ok(StatusOutcome::Ignored);
        }
        return Ok(
            match report::fail(client, ring, &message, retryable, now)? {
                Failure::FellBack => StatusOutcome::FellBack,
                Failure::Retried => StatusOutcome::Retried,
                Failure::Failed | Failure::Expired => StatusOutcome::Recorded,
            },
        );
    }

    let target = reported.state();
    match message.state {
        // The provider's word beat the dispatcher's report of the send:
        // the send is recorded now, with the reference (the report, when it
        // comes, finds it done).
        MessageState::Sending if reported != Reported::Sent => {
            // Kept like every provider text: blanked of the code, cut.
            let provider_ref = report::scrub_reference(ring, &message, provider_ref);
            finish(
                client,
                message.id,
                message.challenge_id,
                MessageState::Sent,
                Some(&provider_ref),
                now,
                false,
                Some(Event::Delivered),
            )?;
        }
        current if current.progress().is_some() && current.progress() < target.progress() => {}
        _ => return Ok(StatusOutcome::Ignored),
    }
    let shown = !hides_unknown(client, message.id)?;
    advance(client, &message, target, shown)?;
    if let (true, Some(event)) = (shown, reported.event()) {
        audit::challenge_event(client, message.challenge_id, event, at)?;
    }
    Ok(StatusOutcome::Recorded)
}

/// The message a status is about, locked; None when there is none. The
/// echoed message id is asked first (a provider may reuse a reference),
/// then the newest message with the reference; only messages of channels
/// whose provider sends statuses, and never a decoy's.
fn find(
    client: &mut SpiClient<'_>,
    provider_ref: &str,
    message_id: Option<i64>,
) -> Result<Option<Message>> {
    let confirming: Vec<&str> = Channel::ALL
        .into_iter()
        .filter(|channel| channel.confirms_delivery())
        .map(Channel::as_str)
        .collect();
    let found = prepared::select(
        client,
        "SELECT id FROM otp.outbox
          WHERE destination <> '' AND channel = ANY ($3)
            AND (id = $2 AND (provider_ref IS NULL OR provider_ref = $1)
                 OR provider_ref = $1)
          ORDER BY id = $2 DESC, id DESC
          LIMIT 1",
        Some(1),
        &[provider_ref.into(), message_id.into(), confirming.into()],
    )?;
    if found.is_empty() {
        return Ok(None);
    }
    let Some(id) = found.first().get_one::<i64>()? else {
        return Ok(None);
    };
    let Some(message) = report::lock(client, id)? else {
        return Ok(None);
    };
    // Checked again under the lock: the reference may have been reported
    // meanwhile.
    let agrees = message
        .provider_ref
        .as_deref()
        .is_none_or(|r| r == provider_ref)
        && !message.decoy
        && message.attempt > 0;
    Ok(agrees.then_some(message))
}

/// Whether the message's agent hides unknown identifiers (see the module
/// comment).
fn hides_unknown(client: &SpiClient<'_>, message_id: i64) -> Result<bool> {
    let hides = prepared::select(
        client,
        "SELECT NOT a.reveal_unknown FROM otp.outbox o JOIN otp.agent a ON a.name = o.agent WHERE o.id = $1",
        Some(1),
        &[message_id.into()],
    )?;
    Ok(!hides.is_empty() && hides.first().get_one::<bool>()?.unwrap_or(true))
}

/// Moves a delivered message forward (`delivered`, `read`), erases the code
/// it kept for a late fallback, and, when `shown`, mirrors it on the
/// challenge if this is the challenge's latest message (a fallback's
/// statuses are the ones that count after a fallback).
fn advance(
    client: &mut SpiClient<'_>,
    message: &Message,
    target: MessageState,
    shown: bool,
) -> Result<()> {
    prepared::update(
        client,
        "WITH advanced AS (
             UPDATE otp.outbox SET state = $2, code_nonce = NULL, code_sealed = NULL
              WHERE id = $1)
         UPDATE otp.challenge c SET delivery = $2
          WHERE c.id = $3 AND $4
            AND NOT EXISTS (SELECT FROM otp.outbox later WHERE later.challenge_id = $3 AND later.id > $1)",
        None,
        &[
            message.id.into(),
            target.as_str().into(),
            message.challenge_id.into(),
            shown.into(),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_message_states_and_outcomes_have_words() {
        for reported in Reported::ALL {
            assert_eq!(Reported::parse(reported.state().as_str()), Some(reported));
        }
        assert_eq!(Reported::parse("queued"), None);
        let words: std::collections::HashSet<_> =
            StatusOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(words.len(), StatusOutcome::ALL.len());
    }
}
