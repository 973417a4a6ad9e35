//! Transports: a client per configured sender, and the choice of sender,
//! template and language for each message (see `routes`).

mod console;
mod email;
mod whatsapp;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use otp_common::{language, Channel};

pub use email::Email;
pub use whatsapp::{retryable_code, WhatsApp};

use crate::message::{DeliveryError, Message};
use crate::routes::Routes;

/// Every configured sender, ready to send, with the routes that choose
/// among them. Built at start and again on each reload; a delivery keeps
/// the one it started with, so a reload never changes a send under way.
pub struct Transports {
    routes: Routes,
    whatsapp: BTreeMap<String, WhatsApp>,
    email: BTreeMap<String, Email>,
    console: Option<console::Console>,
}

impl Transports {
    pub fn new(routes: Routes, console: bool, timeout: Duration) -> Result<Self> {
        let whatsapp = routes
            .whatsapp
            .iter()
            .map(|(name, config)| Ok((name.clone(), WhatsApp::new(config, timeout)?)))
            .collect::<Result<_>>()?;
        let email = routes
            .email
            .iter()
            .map(|(name, config)| Ok((name.clone(), Email::new(config, timeout)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            routes,
            whatsapp,
            email,
            console: console.then_some(console::Console),
        })
    }

    /// Delivers one message through its agent's sender for its channel; the
    /// provider's reference on success. An agent without a sender for the
    /// channel fails for good (`no_sender`): the extension then falls back
    /// to the person's other channel, if any.
    pub async fn deliver(&self, message: &Message) -> Result<String, DeliveryError> {
        let Some(agent) = self.routes.agent(&message.agent) else {
            return self.console_or(
                message,
                "no_route",
                format!(
                    "agent {:?} is not in the dispatcher's configuration, which has no [default]",
                    message.agent
                ),
            );
        };
        // The person's language first, then the agent's (which the routes
        // are checked to have texts and a template language for).
        let wanted: Vec<&str> = message
            .language
            .as_deref()
            .into_iter()
            .chain([agent.language.as_str()])
            .collect();
        match (
            Channel::parse(&message.channel),
            &agent.whatsapp,
            &agent.email,
        ) {
            (Some(Channel::WhatsApp), Some(route), _) => {
                let tags: Vec<&String> = route.languages.keys().collect();
                let tag = language::choose(&wanted, &tags).expect("checked when loaded");
                self.whatsapp[&route.sender]
                    .send(message, &route.template, &route.languages[tag])
                    .await
            }
            (Some(Channel::Email), _, Some(route)) => {
                let available = self.routes.texts.languages(&route.texts);
                let available = available.expect("checked when loaded");
                let email = email::Compose {
                    texts: &self.routes.texts,
                    route,
                    agent,
                    language: language::choose(&wanted, available).expect("checked when loaded"),
                };
                self.email[&route.sender].send(message, &email).await
            }
            _ => self.console_or(
                message,
                "no_sender",
                format!(
                    "agent {:?} has no {} sender in the dispatcher's configuration",
                    message.agent, message.channel
                ),
            ),
        }
    }

    /// The console, when on, takes what no sender would; else a permanent
    /// failure saying why.
    fn console_or(
        &self,
        message: &Message,
        reason: &str,
        detail: String,
    ) -> Result<String, DeliveryError> {
        match &self.console {
            Some(console) => console.send(message),
            None => Err(DeliveryError::permanent(reason, detail)),
        }
    }
}
