//! The claim loop.
//!
//! - Claims only as many messages as it has free concurrency slots, so
//!   nothing it holds a lease on waits for a slot. A delivery may wait for
//!   its sender's turn (`pace`), holding its slot; on shutdown it gives the
//!   turn up and reports a retryable failure, so there are no unstarted
//!   claims to hand back.
//! - Sends concurrently; never holds a database transaction across a send.
//! - Reports results in batches; results that could not be reported (the
//!   database went away) are kept and reported after reconnecting, before
//!   anything new is claimed, so a restart neither loses nor repeats a send.
//! - Wakes on NOTIFY otp_outbox, and polls as a safety net because
//!   notifications sent while disconnected are lost.
//! - Sweeps (otp_outbox_sweep) at most every `SWEEP_EVERY` when it wakes,
//!   in the same round trip as the claim: expired and cancelled messages
//!   end there, and decoys move on, so a claim only hands out deliverable
//!   messages.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::message::{Delivered, DeliveryError, Message, NotSent, Outcome};
use crate::metrics;
use crate::outbox::Outbox;
use crate::pace::Deadlines;
use crate::transport::Transports;

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How often, at most, the loop sweeps.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// How soon a report whose challenge a transaction holds is tried again.
const HELD_RETRY: Duration = Duration::from_millis(200);

/// Runs until `shutdown` resolves, then finishes the sends in flight,
/// reports them and returns. Each claimed message is sent with the
/// transports current when it was claimed (`transports` changes on reload).
pub async fn run(
    config: Config,
    transports: watch::Receiver<Arc<Transports>>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let concurrency = usize::from(config.concurrency);
    let slots = Arc::new(Semaphore::new(concurrency));
    let wake = Arc::new(Notify::new());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let mut unreported: Vec<Outcome> = Vec::new();
    // Reports the database could not take yet: an application's open
    // transaction holds their challenge. Retried on their own schedule,
    // so that they hold up nothing else.
    let mut held: Vec<Outcome> = Vec::new();
    let mut held_retry = Instant::now();
    let mut outbox: Option<Outbox> = None;
    let mut reconnect_delay = RECONNECT_FIRST;
    let limits = Limits {
        expiry_margin: config.expiry_margin,
        lease: config.lease,
        send_timeout: config.send_timeout,
    };
    let mut stopping = false;
    // Tells deliveries waiting for a sender's turn to give it up.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut last_sweep: Option<Instant> = None;
    tokio::pin!(shutdown);

    loop {
        while let Ok(outcome) = done_rx.try_recv() {
            unreported.push(outcome);
        }
        let in_flight = concurrency - slots.available_permits();
        if stopping && in_flight == 0 && unreported.is_empty() {
            if !held.is_empty() {
                warn!(
                    held = held.len(),
                    "stopping with reports whose challenge a transaction still holds; \
                     their messages are offered again when the lease ends"
                );
            }
            info!("all deliveries finished and reported; stopping");
            return Ok(());
        }

        // (Re)connect, with backoff and jitter.
        if outbox.as_ref().is_none_or(Outbox::is_closed) {
            outbox = None;
            match Outbox::connect(&config.database_url, &config.schema, wake.clone()).await {
                Ok(connected) => {
                    info!("connected to PostgreSQL and listening on otp_outbox");
                    metrics::connected(true);
                    outbox = Some(connected);
                    reconnect_delay = RECONNECT_FIRST;
                }
                Err(err) => {
                    metrics::connected(false);
                    warn!(error = %format!("{err:#}"), retry_in_ms = reconnect_delay.as_millis() as u64, "cannot reach PostgreSQL");
                    let pause = reconnect_delay.mul_f64(rand::rng().random_range(0.5..1.0));
                    reconnect_delay = (reconnect_delay * 2).min(RECONNECT_MAX);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown, if !stopping => {
                            stopping = true;
                            let _ = stop_tx.send(true);
                        }
                    }
                    continue;
                }
            }
        }
        let db = outbox.as_mut().expect("connected above");

        if !held.is_empty() && Instant::now() >= held_retry {
            unreported.append(&mut held);
        }
        if !unreported.is_empty() {
            match db.report(&unreported).await {
                Ok(later) => {
                    unreported.clear();
                    if !later.is_empty() {
                        held = later;
                        held_retry = Instant::now() + HELD_RETRY;
                    }
                }
                Err(err) => {
                    warn!(error = %format!("{err:#}"), pending = unreported.len(), "could not report results; will retry");
                    continue;
                }
            }
        }

        let room = slots
            .available_permits()
            .min(usize::from(config.batch_size));
        let mut full_batch = false;
        let sweep_now = !stopping && last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
        let claim_now = !stopping && room > 0;
        // Both go out on the same connection without waiting for each
        // other (the sweep first): one round trip.
        let (swept, claimed) = tokio::join!(
            async {
                if sweep_now {
                    Some(db.sweep().await)
                } else {
                    None
                }
            },
            async {
                if claim_now {
                    Some(db.claim(room, config.lease).await)
                } else {
                    None
                }
            },
        );
        if let Some(swept) = swept {
            last_sweep = Some(Instant::now());
            match swept {
                Ok((finished, decoys)) => debug!(finished, decoys, "swept the outbox"),
                Err(err) => warn!(error = %format!("{err:#}"), "sweeping the outbox failed"),
            }
        }
        if let Some(claimed) = claimed {
            match claimed {
                Ok(messages) => {
                    full_batch = messages.len() == room;
                    let transports = transports.borrow().clone();
                    for message in messages {
                        let slot = slots
                            .clone()
                            .try_acquire_owned()
                            .expect("claimed no more than the free slots");
                        tokio::spawn(deliver(
                            message,
                            transports.clone(),
                            limits,
                            done_tx.clone(),
                            stop_rx.clone(),
                            slot,
                        ));
                    }
                }
                Err(err) => {
                    warn!(error = %format!("{err:#}"), "claiming failed");
                    if !db.is_closed() {
                        // Not a connection problem (e.g. a missing grant): do not spin.
                        tokio::time::sleep(config.poll_interval).await;
                    }
                    continue;
                }
            }
        }
        if full_batch {
            continue; // more may be waiting
        }

        tokio::select! {
            () = wake.notified() => {}
            Some(outcome) = done_rx.recv() => unreported.push(outcome),
            () = tokio::time::sleep(config.poll_interval) => {}
            () = tokio::time::sleep_until(held_retry.into()), if !held.is_empty() => {}
            () = &mut shutdown, if !stopping => {
                info!(in_flight, "shutting down: finishing deliveries in flight");
                stopping = true;
                let _ = stop_tx.send(true);
            }
        }
    }
}

/// The times a delivery keeps to.
#[derive(Clone, Copy)]
struct Limits {
    /// No code is sent that expires within this.
    expiry_margin: Duration,
    /// The claim's lease, and the most a send may take within it.
    lease: Duration,
    send_timeout: Duration,
}

impl Limits {
    /// The latest moments `message` may start sending: before its code
    /// expires (less the margin), and within its lease with time to send.
    fn deadlines(&self, message: &Message) -> Deadlines {
        let now = tokio::time::Instant::now();
        let code_left = message
            .expires_at
            .duration_since(SystemTime::now() + self.expiry_margin)
            .unwrap_or_default();
        Deadlines {
            expiry: now + code_left,
            lease: tokio::time::Instant::from_std(message.claimed_at)
                + crate::pace::time_to_start(self.lease, self.send_timeout),
        }
    }
}

/// Sends one message and hands its outcome to the loop.
async fn deliver(
    message: Message,
    transports: Arc<Transports>,
    limits: Limits,
    done: mpsc::UnboundedSender<Outcome>,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let channel = message.channel.clone();
    let result = if message.expires_at <= SystemTime::now() + limits.expiry_margin {
        metrics::expired_unsent(&channel);
        info!(message_id = message.id, %channel, to = %message.masked_destination(), "code expires within the margin; not sent");
        Delivered::Expired
    } else {
        // A panic in a transport (a bug, or a library's) must still end in
        // a report: unreported, the message would be claimed and panic
        // again until its code expired, and never fall back.
        let deadlines = limits.deadlines(&message);
        let sent = AssertUnwindSafe(transports.deliver(&message, deadlines, &mut stop))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(NotSent::Failed(DeliveryError::permanent(
                    "panic",
                    "the dispatcher failed while sending (see its log)",
                )))
            });
        match sent {
            Ok(provider_ref) => {
                metrics::sent(&channel, message.claimed_at.elapsed());
                info!(message_id = message.id, %channel, to = %message.masked_destination(), attempt = message.attempt, "delivered");
                Delivered::Sent { provider_ref }
            }
            Err(NotSent::Expired) => {
                metrics::expired_unsent(&channel);
                info!(message_id = message.id, %channel, to = %message.masked_destination(), "code would expire before the sender's turn; not sent");
                Delivered::Expired
            }
            Err(NotSent::Failed(err)) => {
                let detail = message.scrub(&err.detail);
                metrics::failed(&channel, &err.reason, err.retryable);
                warn!(
                    message_id = message.id,
                    %channel,
                    to = %message.masked_destination(),
                    attempt = message.attempt,
                    retryable = err.retryable,
                    reason = %err.reason,
                    error = %detail,
                    "delivery failed"
                );
                Delivered::Failed {
                    error: detail,
                    retryable: err.retryable,
                }
            }
        }
    };
    // The loop outlives every delivery task; a closed channel means it is gone.
    let _ = done.send(Outcome {
        id: message.id,
        attempt: message.attempt,
        result,
    });
}
