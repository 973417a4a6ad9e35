//! What the pg_otp extension and otp-dispatcher must spell and do the same
//! way: the delivery channels, and how a destination is masked for people
//! (the agent's "the code went to ***78") and for logs, and the languages of
//! messages (`language`) and the time zones of their readers (`time_zone`).

/// Delivery channels. The SQL spelling is the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    WhatsApp,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::WhatsApp, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::WhatsApp => "whatsapp",
            Channel::Email => "email",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Channel::ALL
            .into_iter()
            .find(|channel| channel.as_str() == text)
    }

    /// Whether the provider tells later (a status webhook) if a message it
    /// accepted reached the device, or that it failed after all. Until
    /// then a message keeps its sealed code, for a late fallback.
    pub fn confirms_delivery(self) -> bool {
        matches!(self, Channel::WhatsApp)
    }

    /// Whether only the person's primary device receives a code: WhatsApp
    /// authentication templates do not reach WhatsApp Web or linked
    /// devices, so an agent should say "check WhatsApp on your phone".
    pub fn primary_device_only(self) -> bool {
        matches!(self, Channel::WhatsApp)
    }
}

/// A hint that tells where a code went without disclosing the address:
/// `***78` for a phone (its last two digits), `j***@example.com` for an
/// email (the first character of the local part and the domain, split at
/// the last `@`, as RFC 5321 puts the domain after it). Anything else is
/// `***`.
pub fn mask(channel: Channel, address: &str) -> String {
    match channel {
        Channel::WhatsApp => {
            let digits: Vec<char> = address.chars().filter(char::is_ascii_digit).collect();
            let tail: String = digits[digits.len().saturating_sub(2)..].iter().collect();
            format!("***{tail}")
        }
        Channel::Email => match address.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            _ => "***".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phone_and_email() {
        assert_eq!(mask(Channel::WhatsApp, "+34 600 123 478"), "***78");
        assert_eq!(mask(Channel::WhatsApp, "7"), "***7");
        assert_eq!(
            mask(Channel::Email, "jane.doe@example.com"),
            "j***@example.com"
        );
        assert_eq!(mask(Channel::Email, "ñu@example.com"), "ñ***@example.com");
        assert_eq!(
            mask(Channel::Email, "\"a@b\"@evil.example"),
            "\"***@evil.example"
        );
        assert_eq!(mask(Channel::Email, "broken"), "***");
        assert_eq!(mask(Channel::Email, "@example.com"), "***");
        assert_eq!(mask(Channel::Email, "jane@"), "***");
    }

    #[test]
    fn channels_round_trip() {
        for channel in Channel::ALL {
            assert_eq!(Channel::parse(channel.as_str()), Some(channel));
        }
        assert_eq!(Channel::parse("sms"), None);
    }
}

pub mod language;
pub mod time_zone;

#[cfg(feature = "client")]
pub mod pg_tls;
