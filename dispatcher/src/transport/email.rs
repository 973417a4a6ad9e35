//! Email over SMTP (lettre): multipart plain text and HTML, written from the
//! agent's texts in the chosen language (`texts`), From the agent's display
//! name at the sender's address. The subject does not contain the code
//! unless configured.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::EmailConfig;
use crate::message::{DeliveryError, Message};
use crate::pace::Pacer;
use crate::routes::{Agent, EmailRoute};
use crate::texts::{Fill, Texts};

/// One SMTP account.
pub struct Email {
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    pacer: Arc<Pacer>,
}

/// What a message's email is written with: its agent's route and texts, in
/// the language chosen for it.
pub struct Compose<'a> {
    pub texts: &'a Texts,
    pub route: &'a EmailRoute,
    pub agent: &'a Agent,
    pub language: &'a str,
}

impl Email {
    pub fn new(config: &EmailConfig, timeout: Duration, pacer: Arc<Pacer>) -> Result<Self> {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(config.smtp_url.expose())
            .context("the SMTP URL is not a valid smtp:// or smtps:// URL")?
            .timeout(Some(timeout))
            .build();
        Ok(Self {
            mailer,
            from: config.from.clone(),
            pacer,
        })
    }

    /// This account's schedule (see `pace`).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    pub fn compose(
        &self,
        message: &Message,
        with: &Compose<'_>,
    ) -> Result<lettre::Message, DeliveryError> {
        let to = recipient(message)?;
        // The person's time zone when their record names one this build's
        // time zone database knows, else the agent's.
        let zone = message
            .time_zone
            .as_deref()
            .and_then(|name| jiff::tz::TimeZone::get(name).ok())
            .unwrap_or_else(|| with.agent.time_zone.clone());
        let local = jiff::Timestamp::try_from(message.expires_at)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned_datetime(zone);
        let expires_at = local.strftime("%H:%M").to_string();
        let time_zone = local.strftime("%Z").to_string();
        let rendered = with
            .texts
            .render(
                &with.route.texts,
                with.language,
                &Fill {
                    code: &message.code,
                    minutes: minutes_left(message.expires_at),
                    expires_at: &expires_at,
                    time_zone: &time_zone,
                    agent_name: &with.agent.display_name,
                },
            )
            .map_err(|err| {
                DeliveryError::permanent("template", format!("rendering the email failed: {err:#}"))
            })?;
        let subject = with.route.subject.clone().unwrap_or(rendered.subject);
        let subject = if with.route.code_in_subject {
            format!("{subject}: {}", message.code)
        } else {
            subject
        };
        // The agent's display name over the sender's address.
        let from = if with.agent.display_name.is_empty() {
            self.from.clone()
        } else {
            Mailbox::new(
                Some(with.agent.display_name.clone()),
                self.from.email.clone(),
            )
        };
        lettre::Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .header(ContentLanguage(with.language.to_owned()))
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|err| {
                DeliveryError::permanent("compose", format!("could not build the email: {err}"))
            })
    }

    /// Sends one composed message; the SMTP server's reply as the provider
    /// reference.
    pub async fn send(&self, email: lettre::Message) -> Result<String, DeliveryError> {
        match self.mailer.send(email).await {
            Ok(response) => Ok(format!("smtp:{}", response.code())),
            Err(err) => Err(classify(&err)),
        }
    }
}

/// The message's destination as a mailbox, or why mail cannot go there.
pub fn recipient(message: &Message) -> Result<Mailbox, DeliveryError> {
    message.destination.parse().map_err(|_| {
        DeliveryError::permanent("invalid_address", "the destination is not an email address")
    })
}

/// RFC 3282's Content-Language: the language the texts were chosen in
/// (screen readers and mail clients' translation offers use it).
#[derive(Clone)]
struct ContentLanguage(String);

impl lettre::message::header::Header for ContentLanguage {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Content-Language")
    }

    fn parse(text: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(text.to_owned()))
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// 4xx replies and connection trouble are worth another try; 5xx are not.
fn classify(err: &lettre::transport::smtp::Error) -> DeliveryError {
    let detail = format!("SMTP: {err}");
    match err.status() {
        Some(code) if err.is_permanent() => {
            DeliveryError::permanent(format!("smtp_{code}"), detail)
        }
        Some(code) => DeliveryError::retryable(format!("smtp_{code}"), detail),
        None if err.is_timeout() => DeliveryError::retryable("timeout", detail),
        None => DeliveryError::retryable("connect", detail),
    }
}

fn minutes_left(expires_at: SystemTime) -> u64 {
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    (left.as_millis().div_ceil(60_000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_left_rounds_up() {
        assert_eq!(
            minutes_left(SystemTime::now() + Duration::from_secs(241)),
            5
        );
        assert_eq!(minutes_left(SystemTime::now() - Duration::from_secs(10)), 1);
    }
}
