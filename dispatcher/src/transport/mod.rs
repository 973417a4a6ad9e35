//! Transports, one per delivery channel, and the routing between them.

mod console;
mod email;
mod whatsapp;

use anyhow::Result;
use otp_common::Channel;

pub use email::Email;
pub use whatsapp::{retryable_code, WhatsApp};

use crate::config::Config;
use crate::message::{DeliveryError, Message};

/// Every configured transport. A channel goes to its own transport; the
/// console, when enabled, takes channels that have none.
pub struct Transports {
    whatsapp: Option<WhatsApp>,
    email: Option<Email>,
    console: Option<console::Console>,
}

impl Transports {
    pub fn new(config: &Config) -> Result<Self> {
        Ok(Self {
            whatsapp: config
                .whatsapp
                .as_ref()
                .map(|c| WhatsApp::new(c, config.send_timeout))
                .transpose()?,
            email: config
                .email
                .as_ref()
                .map(|c| Email::new(c, config.send_timeout))
                .transpose()?,
            console: config.console.then_some(console::Console),
        })
    }

    /// Delivers one message; the provider's reference on success.
    pub async fn deliver(&self, message: &Message) -> Result<String, DeliveryError> {
        match (
            Channel::parse(&message.channel),
            &self.whatsapp,
            &self.email,
            &self.console,
        ) {
            (Some(Channel::WhatsApp), Some(whatsapp), _, _) => whatsapp.send(message).await,
            (Some(Channel::Email), _, Some(email), _) => email.send(message).await,
            (_, _, _, Some(console)) => console.send(message),
            _ => Err(DeliveryError::permanent(
                "no_transport",
                format!("no transport is configured for channel {}", message.channel),
            )),
        }
    }
}
