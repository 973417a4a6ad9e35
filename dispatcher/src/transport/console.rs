//! Prints deliveries, codes included, as JSON lines on standard output. For
//! development and demos only: docs/dispatcher.md says so, and the dispatcher warns
//! at start-up when it is on.

use std::io::Write;
use std::time::UNIX_EPOCH;

use serde_json::json;

use crate::message::{DeliveryError, Message};

pub struct Console;

impl Console {
    pub fn send(&self, message: &Message) -> Result<String, DeliveryError> {
        let line = json!({
            "message_id": message.id,
            "channel": message.channel,
            "to": message.destination,
            "code": message.code,
            "expires_at_unix": message.expires_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|err| {
                DeliveryError::retryable(
                    "stdout",
                    format!("writing to standard output failed: {err}"),
                )
            })?;
        Ok(format!("console:{}", message.id))
    }
}
