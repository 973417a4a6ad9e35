//! WhatsApp Business Cloud API: an authentication template whose body
//! parameter and copy-code button carry the code.
//!
//! `POST {api_url}/{phone_number_id}/messages` with a bearer token.
//! `biz_opaque_callback_data` carries the outbox message id, so status
//! webhooks can be matched to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::config::{Secret, WhatsAppConfig};
use crate::message::{DeliveryError, Message};
use crate::pace::Pacer;

/// Cloud API error codes, from Meta's published list, and whether a
/// message that failed with one is worth another try on WhatsApp (true) or
/// should fall back to the other channel at once (false). The same codes
/// come in a send's error response and in a `failed` status webhook.
const ERROR_CODES: &[(i64, bool)] = &[
    (1, true),       // API unknown: temporary
    (2, true),       // API service: temporary downtime
    (4, true),       // API too many calls: app rate limit
    (17, true),      // API user too many calls
    (341, true),     // application limit reached
    (80007, true),   // WhatsApp Business account rate limit
    (130429, true),  // throughput rate limit hit
    (131000, true),  // something went wrong (unknown, often transient)
    (131016, true),  // service unavailable
    (131056, true),  // business/consumer pair rate limit: later works
    (131057, true),  // business account in maintenance mode
    (133004, true),  // server temporarily unavailable
    (100, false),    // invalid parameter
    (190, false),    // access token expired or invalid
    (368, false),    // temporarily blocked for policy violations
    (130472, false), // the user's number is part of an experiment
    (131026, false), // undeliverable: not on WhatsApp, old app, terms not accepted
    (131031, false), // business account locked
    (131042, false), // payment method issue on the business account
    (131047, false), // re-engagement: more than 24 hours since the user wrote
    (131048, false), // spam rate limit: this number is restricted for now
    (131049, false), // not delivered to keep the ecosystem healthy: retrying does not help
    (131050, false), // the user stopped marketing messages
    (131051, false), // unsupported message type
    (131053, false), // media upload error
    (132000, false), // template parameter count mismatch
    (132001, false), // template does not exist (name or language)
    (132012, false), // template parameter format mismatch
    (133010, false), // phone number not registered on the Cloud API
];

/// Whether a Cloud API error code is worth another try; None for a code
/// not in Meta's list as of this release.
pub fn retryable_code(code: i64) -> Option<bool> {
    ERROR_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, retryable)| *retryable)
}

/// One WhatsApp Business phone number.
pub struct WhatsApp {
    http: reqwest::Client,
    messages_url: String,
    token: Secret,
    pacer: Arc<Pacer>,
}

impl WhatsApp {
    pub fn new(config: &WhatsAppConfig, timeout: Duration, pacer: Arc<Pacer>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("otp-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            messages_url: format!("{}/{}/messages", config.api_url, config.phone_number_id),
            token: config.token.clone(),
            pacer,
        })
    }

    /// The request body for one message: `template` in `language` (the
    /// template's WhatsApp language code, as es_MX).
    pub fn request_body(message: &Message, to: &str, template: &str, language: &str) -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "biz_opaque_callback_data": message.id.to_string(),
            "template": {
                "name": template,
                "language": { "code": language },
                "components": [
                    { "type": "body", "parameters": [ { "type": "text", "text": message.code } ] },
                    {
                        "type": "button",
                        "sub_type": "url",
                        "index": "0",
                        "parameters": [ { "type": "text", "text": message.code } ]
                    }
                ]
            }
        })
    }

    /// This phone number's schedule (see `pace`).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// Sends one message to `to` (its destination as `number` gives it); the
    /// provider's message id on success.
    pub async fn send(
        &self,
        message: &Message,
        to: &str,
        template: &str,
        language: &str,
    ) -> Result<String, DeliveryError> {
        let response = self
            .http
            .post(&self.messages_url)
            .bearer_auth(self.token.expose())
            .json(&Self::request_body(message, to, template, language))
            .send()
            .await
            .map_err(|err| {
                let reason = if err.is_timeout() {
                    "timeout"
                } else {
                    "connect"
                };
                DeliveryError::retryable(
                    reason,
                    format!("WhatsApp request failed: {}", without_url(&err)),
                )
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            return parsed["messages"][0]["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| {
                    DeliveryError::retryable(
                        "bad_response",
                        "WhatsApp accepted the request without a message id",
                    )
                });
        }
        Err(classify(status, &body))
    }
}

/// Digits only, as the Cloud API wants them ("+34 600-123 478" → "34600123478").
pub fn whatsapp_number(destination: &str) -> Option<String> {
    let digits: String = destination.chars().filter(char::is_ascii_digit).collect();
    (8..=15).contains(&digits.len()).then_some(digits)
}

/// A message's destination as the Cloud API wants it, or why it cannot go.
pub fn number(destination: &str) -> Result<String, DeliveryError> {
    whatsapp_number(destination).ok_or_else(|| {
        DeliveryError::permanent(
            "invalid_number",
            "the destination is not a phone number with country code",
        )
    })
}

/// Maps a Graph API error to retryable or permanent.
pub fn classify(status: StatusCode, body: &str) -> DeliveryError {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = &parsed["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    match error["code"].as_i64() {
        Some(code) => {
            let detail = format!(
                "WhatsApp error {code} (HTTP {}): {message}",
                status.as_u16()
            );
            let reason = format!("whatsapp_{code}");
            if retryable_code(code).unwrap_or(false)
                || (status.is_server_error() && !(132000..133000).contains(&code))
            {
                DeliveryError::retryable(reason, detail)
            } else {
                DeliveryError::permanent(reason, detail)
            }
        }
        None => {
            let detail = format!("WhatsApp answered HTTP {}", status.as_u16());
            let reason = format!("http_{}", status.as_u16());
            if status.is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
            {
                DeliveryError::retryable(reason, detail)
            } else {
                DeliveryError::permanent(reason, detail)
            }
        }
    }
}

/// reqwest errors print the URL; the URL is harmless but the error source may
/// not be, so keep only the kind of failure.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<api>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_body(code: i64) -> String {
        json!({ "error": { "message": "x", "type": "OAuthException", "code": code, "fbtrace_id": "A" } }).to_string()
    }

    #[test]
    fn numbers_are_digits_with_country_code() {
        assert_eq!(
            whatsapp_number("+34 600-123 478").as_deref(),
            Some("34600123478")
        );
        assert_eq!(whatsapp_number("(555) 0100"), None);
        assert_eq!(whatsapp_number("jane@example.com"), None);
    }

    #[test]
    fn error_codes_map_to_retryable_or_permanent() {
        for code in [130429, 131056, 131057, 131000, 80007] {
            assert!(
                classify(StatusCode::BAD_REQUEST, &error_body(code)).retryable,
                "{code}"
            );
        }
        for code in [131026, 131047, 131048, 132000, 132001, 132012, 190, 100] {
            assert!(
                !classify(StatusCode::BAD_REQUEST, &error_body(code)).retryable,
                "{code}"
            );
        }
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &error_body(131026)).reason,
            "whatsapp_131026"
        );
        assert!(classify(StatusCode::SERVICE_UNAVAILABLE, "").retryable);
        assert!(classify(StatusCode::TOO_MANY_REQUESTS, "not json").retryable);
        assert!(!classify(StatusCode::UNAUTHORIZED, "").retryable);
        assert!(!classify(StatusCode::INTERNAL_SERVER_ERROR, &error_body(132001)).retryable);
    }
}
