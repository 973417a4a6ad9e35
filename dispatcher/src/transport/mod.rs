//! Transports: a client per configured sender, and the choice of sender,
//! template and language for each message (see `routes`).

mod console;
mod email;
mod whatsapp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use otp_common::{language, Channel};
use tokio::sync::watch;

pub use email::Email;
pub use whatsapp::{retryable_code, WhatsApp};

use crate::message::{DeliveryError, Message, NotSent};
use crate::pace::{time_to_start, Deadlines, Late, Pace, Pacer, Pacers};
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

/// What every sender is built with, at start and on each reload.
#[derive(Clone)]
pub struct Settings {
    /// Print what no sender takes (--console).
    pub console: bool,
    /// One provider request's timeout.
    pub timeout: Duration,
    /// Deliveries in flight at once, and the lease they have to finish in:
    /// a sender's pace must give each its turn within the lease.
    pub concurrency: u16,
    pub lease: Duration,
    /// The senders' schedules, kept across reloads.
    pub pacers: Arc<Pacers>,
}

/// Checks that every sender's pace gives each delivery in flight its turn
/// within the time a send may start after its claim, and that senders
/// sharing a WhatsApp number pace alike (Meta limits the number). At start
/// (`Config`) and at each reload.
pub fn check_paces(
    routes: &Routes,
    concurrency: u16,
    lease: Duration,
    send_timeout: Duration,
) -> Result<()> {
    let window = time_to_start(lease, send_timeout);
    let senders = routes
        .whatsapp
        .iter()
        .map(|(name, config)| (format!("WhatsApp sender {name:?}"), config.pace))
        .chain(
            (routes.email.iter())
                .map(|(name, config)| (format!("email sender {name:?}"), config.pace)),
        );
    for (sender, pace) in senders {
        let wait = pace.longest_wait(concurrency);
        if wait >= window {
            bail!(
                "{sender}: {concurrency} sends in flight (--concurrency) can wait {:.1} s for \
                 their turn at this sender's rate plus one pair interval, and a send must start \
                 within {:.1} s of its claim (the lease less the send timeout, or half the \
                 lease): lower --concurrency or the pair interval, or raise the rate or \
                 --lease-seconds",
                wait.as_secs_f64(),
                window.as_secs_f64()
            );
        }
    }
    let mut numbers: BTreeMap<&str, (&str, Pace)> = BTreeMap::new();
    for (name, config) in &routes.whatsapp {
        if let Some((other, pace)) = numbers.insert(&config.phone_number_id, (name, config.pace)) {
            if pace != config.pace {
                bail!(
                    "WhatsApp senders {other:?} and {name:?} send from one phone number with \
                     different rate or pair_interval_seconds: Meta limits the number, not the name"
                );
            }
        }
    }
    Ok(())
}

impl Transports {
    pub fn new(routes: Routes, with: &Settings) -> Result<Self> {
        check_paces(&routes, with.concurrency, with.lease, with.timeout)?;
        let whatsapp = routes
            .whatsapp
            .iter()
            .map(|(name, config)| {
                // Meta's limits are the phone number's, whatever its name here.
                let key = format!("whatsapp {}", config.phone_number_id);
                let pacer = with.pacers.get(&key, config.pace);
                Ok((name.clone(), WhatsApp::new(config, with.timeout, pacer)?))
            })
            .collect::<Result<_>>()?;
        let email = routes
            .email
            .iter()
            .map(|(name, config)| {
                let key = format!("email {name}");
                let pacer = with.pacers.get(&key, config.pace);
                Ok((name.clone(), Email::new(config, with.timeout, pacer)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            routes,
            whatsapp,
            email,
            console: with.console.then_some(console::Console),
        })
    }

    /// Delivers one message through its agent's sender for its channel, in
    /// the sender's turn (see `pace`); the provider's reference on success.
    /// An agent without a sender for the channel fails for good
    /// (`no_sender`): the extension then falls back to the person's other
    /// channel, if any.
    pub async fn deliver(
        &self,
        message: &Message,
        deadlines: Deadlines,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<String, NotSent> {
        let Some(agent) = self.routes.agent(&message.agent) else {
            return Ok(self.console_or(
                message,
                "no_route",
                format!(
                    "agent {:?} is not in the dispatcher's configuration, which has no [default]",
                    message.agent
                ),
            )?);
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
                let sender = &self.whatsapp[&route.sender];
                let to = whatsapp::number(&message.destination)?;
                turn(
                    Channel::WhatsApp,
                    sender.pacer(),
                    Some(&to),
                    deadlines,
                    stop,
                )
                .await?;
                Ok(sender
                    .send(message, &to, &route.template, &route.languages[tag])
                    .await?)
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
                let sender = &self.email[&route.sender];
                // An address that cannot take mail fails before taking a turn.
                email::recipient(message)?;
                turn(Channel::Email, sender.pacer(), None, deadlines, stop).await?;
                // (composed after the wait: the text says how long the code has left)
                Ok(sender.send(sender.compose(message, &email)?).await?)
            }
            _ => Ok(self.console_or(
                message,
                "no_sender",
                format!(
                    "agent {:?} has no {} sender in the dispatcher's configuration",
                    message.agent, message.channel
                ),
            )?),
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

/// Waits for a sender's turn. A turn after the code's expiry ends the
/// message unsent; one after the lease (a long queue behind a sender, or
/// several codes to one number) is a retryable failure: the message is
/// offered again, rather than sent while another dispatcher may claim it.
async fn turn(
    channel: Channel,
    pacer: &Pacer,
    destination: Option<&str>,
    deadlines: Deadlines,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), NotSent> {
    match pacer.turn(destination, deadlines, stop).await {
        Ok(waited) => {
            if !waited.is_zero() {
                crate::metrics::paced(channel.as_str(), waited);
            }
            Ok(())
        }
        Err(Late::Expiry) => Err(NotSent::Expired),
        Err(Late::Lease) => Err(NotSent::Failed(DeliveryError::retryable(
            "paced",
            "the sender's turn for this message would come after its lease",
        ))),
        Err(Late::Stopping) => Err(NotSent::Failed(DeliveryError::retryable(
            "stopping",
            "the dispatcher stopped while this message waited for its sender's turn",
        ))),
    }
}
