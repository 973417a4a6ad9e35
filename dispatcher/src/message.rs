//! A claimed message and what became of it.

use std::fmt;
use std::time::{Instant, SystemTime};

use otp_common::{mask, Channel};

/// A message claimed from the outbox. `Debug` shows the id, channel and a
/// masked destination only: the code and the full address never reach a log.
pub struct Message {
    pub id: i64,
    /// The agent whose person asked for the code: it chooses the sender.
    pub agent: String,
    pub channel: String,
    pub destination: String,
    pub code: String,
    pub expires_at: SystemTime,
    pub attempt: i32,
    /// The person's language (a BCP 47 tag) and time zone (an IANA name),
    /// when their record names them.
    pub language: Option<String>,
    pub time_zone: Option<String>,
    /// When this dispatcher claimed it, for the claim-to-send latency.
    pub claimed_at: Instant,
}

impl Message {
    /// `***78` for a phone number, `j***@example.com` for an email address:
    /// exactly the hint the extension gave the user (`otp_common::mask`).
    pub fn masked_destination(&self) -> String {
        match Channel::parse(&self.channel) {
            Some(channel) => mask(channel, &self.destination),
            None => "***".to_owned(),
        }
    }

    /// Removes the address and the code from text that may echo them
    /// (provider error texts, which are logged and stored): the address
    /// becomes its masked form (also a phone number's digits alone, and an
    /// email address in any case), the code `[code]`. The address goes
    /// first: a code can be part of a phone number's digits.
    pub fn scrub(&self, text: &str) -> String {
        let masked = self.masked_destination();
        let mut forms = vec![self.destination.trim().to_owned()];
        if Channel::parse(&self.channel) == Some(Channel::WhatsApp) {
            forms.push(
                self.destination
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect(),
            );
        }
        let mut text = text.to_owned();
        for form in forms.iter().filter(|form| form.len() >= 4) {
            text = replace_ignoring_ascii_case(&text, form, &masked);
        }
        if !self.code.is_empty() {
            text = text.replace(&self.code, "[code]");
        }
        text
    }
}

/// `text` with every occurrence of `pattern`, compared without regard to
/// ASCII case, replaced by `with`. (ASCII lower-casing keeps byte offsets.)
fn replace_ignoring_ascii_case(text: &str, pattern: &str, with: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (at, _) in lower.match_indices(&pattern) {
        out.push_str(&text[rest..at]);
        out.push_str(with);
        rest = at + pattern.len();
    }
    out.push_str(&text[rest..]);
    out
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("agent", &self.agent)
            .field("channel", &self.channel)
            .field("to", &self.masked_destination())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct DeliveryError {
    pub retryable: bool,
    /// A short, bounded label for metrics (e.g. `whatsapp_131026`, `http_503`, `timeout`).
    pub reason: String,
    pub detail: String,
}

impl DeliveryError {
    pub fn retryable(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            retryable: true,
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            retryable: false,
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// Why a message was not sent.
#[derive(Debug)]
pub enum NotSent {
    /// Sending failed, or could not be tried.
    Failed(DeliveryError),
    /// Its code would expire (within the safety margin) before the sender's
    /// turn for it came.
    Expired,
}

impl From<DeliveryError> for NotSent {
    fn from(err: DeliveryError) -> Self {
        NotSent::Failed(err)
    }
}

/// The result of handling one claimed message, to report to the database
/// with the attempt the claim returned (a report for an attempt whose lease
/// ran out is ignored by the database).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    pub attempt: i32,
    pub result: Delivered,
}

#[derive(Debug, Clone)]
pub enum Delivered {
    Sent {
        provider_ref: String,
    },
    Failed {
        error: String,
        retryable: bool,
    },
    /// Not sent: the code would expire within the safety margin.
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, destination: &str) -> Message {
        Message {
            id: 7,
            agent: "payroll".into(),
            channel: channel.into(),
            destination: destination.into(),
            code: "042042".into(),
            expires_at: SystemTime::now(),
            attempt: 1,
            language: None,
            time_zone: None,
            claimed_at: Instant::now(),
        }
    }

    #[test]
    fn debug_output_hides_code_and_address() {
        let printed = format!("{:?}", message("whatsapp", "+34 600 123 478"));
        assert!(
            printed.contains("***78") && !printed.contains("042042") && !printed.contains("600"),
            "{printed}"
        );
        let printed = format!("{:?}", message("email", "jane.doe@example.com"));
        assert!(
            printed.contains("j***@example.com") && !printed.contains("jane.doe"),
            "{printed}"
        );
    }

    #[test]
    fn scrub_removes_echoed_addresses() {
        // A provider error quoting the address reached the log and the
        // outbox (attack on issue 12, F7).
        let m = message("email", "victim.person@example.com");
        assert_eq!(
            m.scrub("550 5.1.1 <victim.person@example.com>: Recipient address rejected"),
            "550 5.1.1 <v***@example.com>: Recipient address rejected"
        );
        let m = message("whatsapp", "+34 600 123 478");
        assert_eq!(
            m.scrub("(#131026) 34600123478 is not a WhatsApp user; +34 600 123 478"),
            "(#131026) ***78 is not a WhatsApp user; ***78"
        );
    }

    #[test]
    fn scrub_removes_echoed_codes() {
        let m = message("whatsapp", "+1 555 0100");
        assert_eq!(
            m.scrub("bad param 042042 in body"),
            "bad param [code] in body"
        );
    }
}
