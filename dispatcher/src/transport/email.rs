//! Email over SMTP (lettre): multipart plain text and HTML. The subject does
//! not contain the code unless configured; the body says when the code
//! expires and what to do when you did not ask for one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::EmailConfig;
use crate::message::{DeliveryError, Message};

pub struct Email {
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    subject: String,
    code_in_subject: bool,
}

impl Email {
    pub fn new(config: &EmailConfig, timeout: Duration) -> Result<Self> {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(config.smtp_url.expose())
            .context("--smtp-url is not a valid smtp:// or smtps:// URL")?
            .timeout(Some(timeout))
            .build();
        Ok(Self {
            mailer,
            from: config
                .from
                .parse()
                .context("--email-from is not an address")?,
            subject: config.subject.clone(),
            code_in_subject: config.code_in_subject,
        })
    }

    pub fn compose(&self, message: &Message) -> Result<lettre::Message, DeliveryError> {
        let to: Mailbox = message.destination.parse().map_err(|_| {
            DeliveryError::permanent("invalid_address", "the destination is not an email address")
        })?;
        let minutes = minutes_left(message.expires_at);
        let at = utc_clock(message.expires_at);
        let plain = format!(
            "Your verification code is {code}.\n\n\
             It expires in {minutes} minute{s} (at {at} UTC) and works once.\n\n\
             If you did not ask for a code, ignore this message and tell us: \
             someone may be trying to use your details.\n",
            code = message.code,
            s = if minutes == 1 { "" } else { "s" },
        );
        let html = format!(
            "<p>Your verification code is</p>\
             <p style=\"font-size:28px;font-weight:bold;letter-spacing:4px\">{code}</p>\
             <p>It expires in {minutes} minute{s} (at {at} UTC) and works once.</p>\
             <p>If you did not ask for a code, ignore this message and tell us: \
             someone may be trying to use your details.</p>",
            code = message.code,
            s = if minutes == 1 { "" } else { "s" },
        );
        let subject = if self.code_in_subject {
            format!("{}: {}", self.subject, message.code)
        } else {
            self.subject.clone()
        };
        lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(plain, html))
            .map_err(|err| {
                DeliveryError::permanent("compose", format!("could not build the email: {err}"))
            })
    }

    /// Sends one message; the SMTP server's reply as the provider reference.
    pub async fn send(&self, message: &Message) -> Result<String, DeliveryError> {
        let email = self.compose(message)?;
        match self.mailer.send(email).await {
            Ok(response) => Ok(format!("smtp:{}", response.code())),
            Err(err) => Err(classify(&err)),
        }
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

/// "14:05" in UTC.
fn utc_clock(at: SystemTime) -> String {
    let seconds_of_day = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!(
        "{:02}:{:02}",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_clock_formats_hours_and_minutes() {
        assert_eq!(
            utc_clock(UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 14 * 3600 + 5 * 60 + 59)),
            "14:05"
        );
    }

    #[test]
    fn minutes_left_rounds_up() {
        assert_eq!(
            minutes_left(SystemTime::now() + Duration::from_secs(241)),
            5
        );
        assert_eq!(minutes_left(SystemTime::now() - Duration::from_secs(10)), 1);
    }
}
