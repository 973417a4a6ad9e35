//! WhatsApp status webhooks: what Meta says, later, about the messages it
//! accepted (`sent`, `delivered`, `read`, `failed` with an error code).
//!
//! - `GET /webhooks/whatsapp` answers Meta's verification handshake.
//! - `POST /webhooks/whatsapp` takes a signed JSON body of at most 1 MiB,
//!   read within 10 s: without an `X-Hub-Signature-256` header the body is
//!   not read at all, and the header must be the HMAC-SHA256 of the raw
//!   body under the app secret (checked in constant time) or nothing of it
//!   is parsed. HTTP/1.1 only, at most 256 connections at once, headers
//!   within 10 s, a connection for at most a minute. The
//!   statuses of one request are recorded in one transaction
//!   (otp_outbox_status), and the answer is 200 only once they are
//!   committed: on any database trouble Meta gets a 503 and sends them
//!   again later, which is harmless (the extension ignores repeats).
//!
//! A status names the message by Meta's id for it (the `wamid` the send
//! returned) and by `biz_opaque_callback_data`, which the dispatcher sets
//! to the outbox message id. The extension decides what a status means;
//! here only a failure's error code is turned into "worth another try or
//! not" (`transport::retryable_code`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use futures_util::future::try_join_all;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::config::{Secret, WebhookConfig};
use crate::metrics;
use crate::transport::retryable_code;

/// Where Meta is told to send the webhooks.
pub const PATH: &str = "/webhooks/whatsapp";
/// The largest body read; Meta's batches are far smaller.
const MAX_BODY: usize = 1024 * 1024;
/// Connections served at once; more wait in the listen queue, so that no
/// number of clients exhausts the file descriptors deliveries need.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers, and its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Unsigned requests are logged at most this often (anyone can send them).
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(60);
/// How long recording one request may take before Meta is told to retry.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

struct Webhook {
    verify_token: Secret,
    app_secret: Secret,
    database_url: Secret,
    /// The extension's otp_outbox_status, schema-qualified, every
    /// parameter typed (see outbox.rs).
    record_sql: String,
    /// One connection, opened on first use and again after it broke.
    db: Mutex<Option<tokio_postgres::Client>>,
    /// When requests without a valid signature were last logged, and how
    /// many came since.
    refusals: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Webhook {
    /// Counts a request refused for its signature, and logs the count at
    /// most once every REFUSALS_LOGGED_EVERY, so that nobody can fill the
    /// log (the metric counts each one).
    fn refused(&self) {
        metrics::webhook_request("bad_signature");
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals.1 += 1;
        if refusals
            .0
            .is_none_or(|at| at.elapsed() >= REFUSALS_LOGGED_EVERY)
        {
            warn!(
                refused = refusals.1,
                "refused webhook requests without a valid signature (X-Hub-Signature-256); \
                 logged at most once a minute"
            );
            *refusals = (Some(Instant::now()), 0);
        }
    }
}

/// Binds `config.listen` and serves the webhook until `shutdown` resolves.
/// Returns once bound, with the address (a port 0 gets a free one).
pub async fn serve(
    config: &WebhookConfig,
    database_url: Secret,
    schema: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr> {
    let state = Arc::new(Webhook {
        verify_token: config.verify_token.clone(),
        app_secret: config.app_secret.clone(),
        database_url,
        record_sql: format!(
            "SELECT {schema}.otp_outbox_status($1::pg_catalog.text, $2::pg_catalog.int8, $3::pg_catalog.text,
                                               pg_catalog.to_timestamp($4::pg_catalog.float8),
                                               $5::pg_catalog.text, $6::pg_catalog.bool)"
        ),
        db: Mutex::new(None),
        refusals: std::sync::Mutex::new((None, 0)),
    });
    let app = Router::new()
        .route(PATH, get(handshake).post(receive))
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening for webhooks on {}", config.listen))?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept(listener, app, shutdown));
    info!(listen = %bound, path = PATH, "serving WhatsApp status webhooks");
    Ok(bound)
}

/// Serves connections, HTTP/1.1 only, at most MAX_CONNECTIONS at once, each
/// with a time limit for its headers and for its whole life: the endpoint
/// is open to anyone who can reach it, and must not let slow or idle
/// clients take what deliveries need.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "accepting a webhook connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

#[derive(Deserialize)]
struct HandshakeQuery {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Meta's subscription check: echo `hub.challenge` when the token matches.
async fn handshake(
    State(hook): State<Arc<Webhook>>,
    Query(query): Query<HandshakeQuery>,
) -> (StatusCode, String) {
    // Constant time, like the signature: the token is a shared secret.
    let token_matches = query.verify_token.as_deref().is_some_and(|token| {
        bool::from(
            hook.verify_token
                .expose()
                .as_bytes()
                .ct_eq(token.as_bytes()),
        )
    });
    match (query.mode.as_deref(), token_matches, query.challenge) {
        (Some("subscribe"), true, Some(challenge)) => {
            metrics::webhook_request("handshake");
            (StatusCode::OK, challenge)
        }
        _ => {
            metrics::webhook_request("handshake_refused");
            (StatusCode::FORBIDDEN, String::new())
        }
    }
}

async fn receive(
    State(hook): State<Arc<Webhook>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> StatusCode {
    let received = Instant::now();
    // Nothing of an unsigned request is read: no memory for strangers.
    let Some(signature) = signature(&headers) else {
        hook.refused();
        return StatusCode::UNAUTHORIZED;
    };
    let body = match tokio::time::timeout(READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            metrics::webhook_request("too_large");
            return StatusCode::PAYLOAD_TOO_LARGE;
        }
        Err(_) => {
            metrics::webhook_request("too_slow");
            return StatusCode::REQUEST_TIMEOUT;
        }
    };
    if !signed_by(&hook.app_secret, &signature, &body) {
        hook.refused();
        return StatusCode::UNAUTHORIZED;
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if !json {
        metrics::webhook_request("malformed");
        warn!("refused a signed webhook request that is not application/json");
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let statuses = match serde_json::from_slice::<Notification>(&body) {
        Ok(notification) => notification.statuses(),
        Err(err) => {
            metrics::webhook_request("malformed");
            warn!(error = %err, "refused a webhook request whose body is not a WhatsApp notification");
            return StatusCode::BAD_REQUEST;
        }
    };
    match tokio::time::timeout(RECORD_TIMEOUT, hook.record(&statuses)).await {
        Ok(Ok(outcomes)) => {
            metrics::webhook_request("accepted");
            for (status, outcome) in statuses.iter().zip(&outcomes) {
                metrics::webhook_status(&status.status, outcome);
                debug!(message_id = ?status.message_id, status = %status.status, %outcome, "provider status");
            }
            metrics::webhook_recorded(received.elapsed());
            StatusCode::OK
        }
        Ok(Err(err)) => {
            metrics::webhook_request("database_error");
            warn!(error = %format!("{err:#}"), "could not record webhook statuses; Meta will send them again");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(_) => {
            metrics::webhook_request("database_error");
            warn!("recording webhook statuses timed out; Meta will send them again");
            // The connection may be stuck: start afresh next time.
            *hook.db.lock().await = None;
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The signature `X-Hub-Signature-256` carries (`sha256=` and 64 hex
/// digits), or None.
fn signature(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get("x-hub-signature-256")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("sha256="))
        .filter(|hex_digits| hex_digits.len() == 64)
        .and_then(|hex_digits| hex::decode(hex_digits).ok())
}

/// Whether `signature` is the HMAC-SHA256 of `body` under the app secret
/// (compared in constant time).
fn signed_by(app_secret: &Secret, signature: &[u8], body: &[u8]) -> bool {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(app_secret.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(signature).is_ok()
}

impl Webhook {
    /// Records statuses in one transaction; their outcomes, in order.
    async fn record(&self, statuses: &[Status]) -> Result<Vec<String>> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut db = self.db.lock().await;
        if db.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            let (client, connection) = otp_common::pg_tls::connect(self.database_url.expose())
                .await
                .context("connecting to PostgreSQL for webhooks")?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    warn!(error = %err, "webhook database connection lost");
                }
            });
            *db = Some(client);
        }
        let client = db.as_mut().expect("connected above");
        let result = async {
            let transaction = client.transaction().await?;
            // Sent together, answered in order (tokio-postgres pipelines
            // them): one round trip for the whole batch.
            let outcomes = try_join_all(
                statuses
                    .iter()
                    .map(|status| record_one(&transaction, &self.record_sql, status)),
            )
            .await?;
            transaction.commit().await?;
            Ok::<_, tokio_postgres::Error>(outcomes)
        }
        .await;
        match result {
            Ok(outcomes) => Ok(outcomes),
            Err(err) if client.is_closed() => {
                *db = None;
                Err(err).context("otp_outbox_status")
            }
            // One status the database cannot take now (its challenge held
            // by an open transaction, say) must not keep the others out:
            // each on its own; Meta repeats the request if any failed, and
            // repeats change nothing.
            Err(_) => {
                let mut outcomes = Vec::with_capacity(statuses.len());
                let mut failed = None;
                for status in statuses {
                    match record_one(&*client, &self.record_sql, status).await {
                        Ok(outcome) => outcomes.push(outcome),
                        Err(err) => failed = Some(err),
                    }
                    if client.is_closed() {
                        break;
                    }
                }
                if client.is_closed() {
                    *db = None;
                }
                match failed {
                    None => Ok(outcomes),
                    Some(err) => Err(err).context("otp_outbox_status"),
                }
            }
        }
    }
}

/// Records one status; what the extension did with it.
async fn record_one<C: tokio_postgres::GenericClient>(
    client: &C,
    sql: &str,
    status: &Status,
) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            sql,
            &[
                &status.provider_ref,
                &status.message_id,
                &status.status,
                &status.at,
                &status.error,
                &status.retryable,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// One status, as the extension takes it.
#[derive(Debug)]
struct Status {
    provider_ref: String,
    message_id: Option<i64>,
    status: String,
    /// Seconds since the epoch, when Meta says it happened.
    at: f64,
    error: Option<String>,
    retryable: bool,
}

/// The parts of Meta's webhook body that matter here
/// (`entry[].changes[].value.statuses[]`); everything else (incoming
/// messages, other fields) is ignored.
#[derive(Deserialize)]
struct Notification {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Deserialize, Default)]
struct ChangeValue {
    #[serde(default)]
    statuses: Vec<MetaStatus>,
}

#[derive(Deserialize)]
struct MetaStatus {
    id: String,
    status: String,
    /// Unix seconds, as a string.
    timestamp: Option<String>,
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<MetaError>,
}

#[derive(Deserialize)]
struct MetaError {
    code: i64,
    title: Option<String>,
    message: Option<String>,
}

/// The statuses the extension knows; others (say `deleted`) are skipped.
const KNOWN_STATUSES: [&str; 4] = ["sent", "delivered", "read", "failed"];

impl Notification {
    fn statuses(self) -> Vec<Status> {
        if self.object != "whatsapp_business_account" {
            return Vec::new();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.entry
            .into_iter()
            .flat_map(|entry| entry.changes)
            .filter(|change| change.field == "messages")
            .flat_map(|change| change.value.statuses)
            .filter(|status| KNOWN_STATUSES.contains(&status.status.as_str()))
            .map(|status| {
                let error = status.errors.first();
                Status {
                    message_id: status
                        .biz_opaque_callback_data
                        .as_deref()
                        .and_then(|data| data.parse().ok()),
                    at: status
                        .timestamp
                        .as_deref()
                        .and_then(|t| t.parse::<f64>().ok())
                        .unwrap_or(now),
                    error: error.map(|e| {
                        let text = e.message.as_deref().or(e.title.as_deref()).unwrap_or("");
                        format!("WhatsApp error {}: {text}", e.code)
                    }),
                    // Unknown codes fall back at once: for a one-time code,
                    // another channel now beats a retry that may not help.
                    retryable: error.and_then(|e| retryable_code(e.code)).unwrap_or(false),
                    provider_ref: status.id,
                    status: status.status,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn signed(secret: &str, body: &[u8]) -> HeaderMap {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let mut headers = HeaderMap::new();
        let value = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        headers.insert(
            "x-hub-signature-256",
            HeaderValue::from_str(&value).unwrap(),
        );
        headers
    }

    #[test]
    fn only_the_exact_signature_of_the_exact_body_passes() {
        let secret = Secret::from("app-secret".to_owned());
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let passes = |headers: &HeaderMap, body: &[u8]| {
            signature(headers).is_some_and(|sig| signed_by(&secret, &sig, body))
        };
        assert!(passes(&signed("app-secret", body), body));
        assert!(!passes(&signed("other-secret", body), body));
        assert!(!passes(&signed("app-secret", body), b"{}"));
        assert!(!passes(&HeaderMap::new(), body));
        let mut sha1 = HeaderMap::new();
        sha1.insert("x-hub-signature-256", HeaderValue::from_static("sha1=00"));
        assert!(!passes(&sha1, body));
    }

    #[test]
    fn statuses_are_read_from_meta_shapes() {
        let body = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "WABA", "changes": [{ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "15550000000", "phone_number_id": "PN" },
                "statuses": [
                    { "id": "wamid.A", "status": "delivered", "timestamp": "1764115200",
                      "recipient_id": "34600123478", "biz_opaque_callback_data": "42" },
                    { "id": "wamid.B", "status": "failed", "timestamp": "1764115201",
                      "recipient_id": "34600123478",
                      "errors": [{ "code": 131026, "title": "Message undeliverable",
                                   "message": "Message undeliverable",
                                   "error_data": { "details": "Message Undeliverable." } }] },
                    { "id": "wamid.C", "status": "failed", "timestamp": "1764115202",
                      "recipient_id": "34600123478", "errors": [{ "code": 130429, "title": "Rate limit hit" }] },
                    { "id": "wamid.D", "status": "deleted", "timestamp": "1764115203", "recipient_id": "1" }
                ]
            }}]}]
        });
        let statuses = serde_json::from_value::<Notification>(body)
            .unwrap()
            .statuses();
        assert_eq!(statuses.len(), 3);
        assert_eq!(
            (
                statuses[0].provider_ref.as_str(),
                statuses[0].message_id,
                statuses[0].at
            ),
            ("wamid.A", Some(42), 1_764_115_200.0)
        );
        assert_eq!(
            statuses[1].error.as_deref(),
            Some("WhatsApp error 131026: Message undeliverable")
        );
        assert!(!statuses[1].retryable);
        assert!(statuses[2].retryable);
    }
}
