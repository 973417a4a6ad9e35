//! The words of delivery, spelled once.
//!
//! A message in otp.outbox is in one `MessageState`; the challenge it
//! carries the code of mirrors the latest of its messages in
//! `otp.challenge.delivery` (a `MessageState` too, where `sending` shows as
//! `queued`: for the person, the code is still on its way). The spellings
//! are the SQL contract: otp_status returns them, and the named CHECK
//! constraints of sql/schema.sql allow exactly these (a test compares them).

/// Where a message is in its life: `queued` → `sending` (claimed, under a
/// lease) → `sent` (the provider accepted it) → `delivered` (the provider
/// says it reached the device) → `read`; or `failed` (for good), `expired`
/// (its code ran out first), `cancelled` (its challenge ended first). A
/// retryable failure goes back to `queued`; a lease that runs out makes a
/// `sending` message due again. `delivered` and `read` come from provider
/// status webhooks (WhatsApp), which arrive late, out of order and more
/// than once: a state only ever moves forward (`progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageState {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Expired,
    Cancelled,
}

impl MessageState {
    pub const ALL: [MessageState; 8] = [
        MessageState::Queued,
        MessageState::Sending,
        MessageState::Sent,
        MessageState::Delivered,
        MessageState::Read,
        MessageState::Failed,
        MessageState::Expired,
        MessageState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sending => "sending",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Read => "read",
            MessageState::Failed => "failed",
            MessageState::Expired => "expired",
            MessageState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        MessageState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// A final state: no dispatcher will claim the message again, and it
    /// has its `finished_at`. Only a provider's status may still move a
    /// `sent` message on (see `progress`); a late report may add a
    /// reference or an error.
    pub fn is_final(self) -> bool {
        !matches!(self, MessageState::Queued | MessageState::Sending)
    }

    /// Whether a message in this state may still hold its sealed code:
    /// while it waits or is being sent, and once `sent` through a channel
    /// whose provider confirms delivery later (until it does, the code
    /// expires or the challenge ends), so that a late failure can still
    /// fall back to the other channel with the same code.
    pub fn may_hold_code(self) -> bool {
        matches!(
            self,
            MessageState::Queued | MessageState::Sending | MessageState::Sent
        )
    }

    /// How far along a delivery that succeeded is, for statuses that come
    /// late and out of order: `sent` < `delivered` < `read`. None for the
    /// other states.
    pub fn progress(self) -> Option<u8> {
        match self {
            MessageState::Sent => Some(1),
            MessageState::Delivered => Some(2),
            MessageState::Read => Some(3),
            _ => None,
        }
    }

    /// What the challenge's delivery mirror shows for a message in this state.
    #[cfg(any(test, feature = "pg_test"))]
    pub fn as_delivery(self) -> MessageState {
        match self {
            MessageState::Sending => MessageState::Queued,
            other => other,
        }
    }

    /// The states the challenge's delivery mirror can show.
    #[cfg(any(test, feature = "pg_test"))]
    pub fn deliveries() -> impl Iterator<Item = MessageState> {
        MessageState::ALL
            .into_iter()
            .filter(|state| state.as_delivery() == *state)
    }
}

/// `template` with every `{word}` of a state (`{queued}`, `{sending}`, …)
/// replaced by the word as an SQL literal. Statements whose conditions must
/// match a partial index's predicate (the planner proves the match only
/// from constants, never from parameters of a generic plan) are written
/// this way, so that the words are still spelled only here.
pub fn sql(template: &str) -> String {
    MessageState::ALL
        .into_iter()
        .fold(template.to_owned(), |text, state| {
            text.replace(
                &format!("{{{}}}", state.as_str()),
                &format!("'{}'", state.as_str()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_only_two_states_are_open() {
        for state in MessageState::ALL {
            assert_eq!(MessageState::parse(state.as_str()), Some(state));
        }
        let open: Vec<_> = MessageState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(open, [MessageState::Queued, MessageState::Sending]);
        let mut forward: Vec<_> = MessageState::ALL
            .into_iter()
            .filter(|s| s.progress().is_some())
            .collect();
        forward.sort_by_key(|s| s.progress());
        assert_eq!(
            forward,
            [
                MessageState::Sent,
                MessageState::Delivered,
                MessageState::Read
            ]
        );
        assert!(forward.iter().all(|s| s.is_final()));
        assert!(!MessageState::deliveries().any(|s| s == MessageState::Sending));
    }

    #[test]
    fn sql_templates_get_literal_words() {
        assert_eq!(
            sql("state IN ({queued}, {sending}) AND x = '{sent}'"),
            "state IN ('queued', 'sending') AND x = ''sent''"
        );
    }
}
