//! Prometheus metrics: what was sent, what failed and why, what was retried,
//! what expired unsent, and how long a claimed message took to reach the
//! provider.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

const LATENCY: &str = "otp_dispatcher_claim_to_send_seconds";
const WEBHOOK_LATENCY: &str = "otp_dispatcher_webhook_record_seconds";
const PACING: &str = "otp_dispatcher_paced_wait_seconds";

/// Serves /metrics on `listen`. Must run inside the Tokio runtime.
pub fn serve(listen: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            Matcher::Full(LATENCY.to_owned()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("configuring the metrics histogram")?
        .set_buckets_for_metric(
            Matcher::Full(PACING.to_owned()),
            &[0.0125, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0],
        )
        .context("configuring the metrics histogram")?
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_LATENCY.to_owned()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("configuring the metrics histogram")?
        .install()
        .with_context(|| format!("serving metrics on {listen}"))
}

pub fn sent(channel: &str, since_claim: Duration) {
    counter!("otp_dispatcher_sent_total", "channel" => channel.to_owned()).increment(1);
    histogram!(LATENCY, "channel" => channel.to_owned()).record(since_claim.as_secs_f64());
}

pub fn failed(channel: &str, reason: &str, retryable: bool) {
    counter!("otp_dispatcher_failed_total", "channel" => channel.to_owned(), "reason" => reason.to_owned()).increment(1);
    if retryable {
        counter!("otp_dispatcher_retried_total", "channel" => channel.to_owned()).increment(1);
    }
}

/// How long a delivery waited for its sender's turn (only those that waited).
pub fn paced(channel: &str, waited: Duration) {
    histogram!(PACING, "channel" => channel.to_owned()).record(waited.as_secs_f64());
}

pub fn expired_unsent(channel: &str) {
    counter!("otp_dispatcher_expired_unsent_total", "channel" => channel.to_owned()).increment(1);
}

pub fn connected(up: bool) {
    gauge!("otp_dispatcher_database_connected").set(if up { 1.0 } else { 0.0 });
}

/// A webhook request, by outcome: accepted, bad_signature, too_large,
/// too_slow, malformed, database_error, handshake, handshake_refused.
pub fn webhook_request(outcome: &'static str) {
    counter!("otp_dispatcher_webhook_requests_total", "outcome" => outcome).increment(1);
}

/// A provider status, by kind and by what the extension did with it
/// (recorded, fallback, retried, ignored, unknown); fallbacks also on their own.
pub fn webhook_status(status: &str, outcome: &str) {
    counter!("otp_dispatcher_webhook_statuses_total", "status" => status.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
    if outcome == "fallback" {
        counter!("otp_dispatcher_webhook_fallbacks_total").increment(1);
    }
}

/// From a webhook request's arrival to its statuses committed.
pub fn webhook_recorded(latency: Duration) {
    histogram!(WEBHOOK_LATENCY).record(latency.as_secs_f64());
}
