//! The parts the delivery benchmarks share: a fake WhatsApp Cloud API that
//! records when each message arrived, the dispatcher as a child process,
//! and connections to the benchmark's cluster.
// (each benchmark uses part of it)
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::Notify;
use tokio_postgres::{Client, NoTls};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The fake provider: records when each message id arrived.
#[derive(Clone, Default)]
pub struct Arrivals {
    pub seen: Arc<Mutex<HashMap<i64, Instant>>>,
    pub changed: Arc<Notify>,
}

impl Respond for Arrivals {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let now = Instant::now();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        if let Some(id) = body["biz_opaque_callback_data"]
            .as_str()
            .and_then(|s| s.parse().ok())
        {
            self.seen.lock().unwrap().entry(id).or_insert(now);
            self.changed.notify_waiters();
        }
        // A wamid of its own per message, as Meta gives: webhooks name it.
        let wamid = format!(
            "wamid.bench{}",
            body["biz_opaque_callback_data"].as_str().unwrap_or("")
        );
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "messages": [{ "id": wamid }] }))
    }
}

impl Arrivals {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            let notified = self.changed.notified();
            if self.count() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!(
                    "only {} of {n} messages arrived within {limit:?}",
                    self.count()
                );
            }
        }
        Ok(())
    }
}

/// A fake WhatsApp API on 127.0.0.1 that records arrivals.
pub async fn fake_provider() -> (MockServer, Arrivals) {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .respond_with(arrivals.clone())
        .mount(&server)
        .await;
    (server, arrivals)
}

/// The connection string of `database` for `user` on the cluster the
/// script started (PG_OTP_TEST_HOST, PG_OTP_TEST_PORT).
pub fn connection_string(database: &str, user: &str) -> String {
    format!(
        "host={} port={} user={user} dbname={database}",
        std::env::var("PG_OTP_TEST_HOST").unwrap(),
        std::env::var("PG_OTP_TEST_PORT").unwrap()
    )
}

pub async fn connect(config: String) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Flags that take pacing out of the way for a dispatcher that paces (this
/// build; earlier releases send as fast as they can). These benchmarks
/// measure what a message costs, not Meta's limits: the rush benchmark
/// measures pacing.
pub fn unpaced(binary: &str) -> Vec<String> {
    let help = Command::new(binary).arg("--help").output();
    let paces =
        help.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--whatsapp-rate"));
    if !paces {
        return Vec::new();
    }
    [
        "--whatsapp-rate",
        "1000000",
        "--whatsapp-pair-interval-seconds",
        "0",
    ]
    .map(String::from)
    .to_vec()
}

pub struct Dispatcher(pub Child);

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

impl Arrivals {
    /// Messages per second between the first and the last arrival at any of
    /// `providers`.
    pub fn rate(providers: &[&Arrivals]) -> f64 {
        let times: Vec<Instant> = providers
            .iter()
            .flat_map(|p| p.seen.lock().unwrap().values().copied().collect::<Vec<_>>())
            .collect();
        let first = times.iter().min().copied().unwrap_or_else(Instant::now);
        let last = times.iter().max().copied().unwrap_or(first);
        (times.len().saturating_sub(1)) as f64 / last.duration_since(first).as_secs_f64()
    }
}
