//! Pacing: how fast each sender may send.
//!
//! - A rate per sender (messages per second): WhatsApp Business phone
//!   numbers have a throughput limit (80 messages/s by default, Meta's
//!   figure); beyond it the Cloud API answers 130429 and the message would
//!   burn an attempt. Paced as a token bucket of one (GCRA): one send every
//!   1/rate seconds, never a burst.
//! - For WhatsApp, Meta's business-consumer pair limit: about one message
//!   to the same number every 6 seconds, with bursts allowed that borrow
//!   from later (131056 beyond it). Paced the same way per number, with a
//!   burst of `PAIR_BURST`, well inside Meta's 45: a person who asks for a
//!   code again at once gets it at once; only codes that come sooner than
//!   the burst and one per interval allow wait their turn.
//!
//! Each turn is reserved, in order, before the delivery waits for it (the
//! pair turn first; the rate's once the pair turn has come): a code that
//! would expire (or whose lease would run out) before its turn is not sent,
//! gives back what it reserved, and takes no turn from the messages behind
//! it. (A crate such as `governor`
//! answers "may I send now?" and leaves the waiting to retries, which
//! neither keeps the order nor says up front whether the turn comes in
//! time.)
//!
//! The schedules outlive a reload (`Pacers`), keyed by what the provider
//! limits (the phone number id; the sender's name for email), so a SIGHUP
//! neither resets a sender's schedule nor forgets who was just sent a code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio::time::Instant;

/// A sender's limits, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Messages per second; None: unpaced.
    pub rate: Option<u32>,
    /// The least time between two messages to the same destination; None:
    /// no pair limit.
    pub pair_interval: Option<Duration>,
}

impl Pace {
    /// A WhatsApp sender's limits: `rate` messages per second (default 80),
    /// `pair_interval_seconds` between two messages to the same number
    /// (default 6; 0: none).
    pub fn whatsapp(rate: Option<u32>, pair_interval_seconds: Option<u32>) -> Result<Pace> {
        let pair = pair_interval_seconds.unwrap_or(WHATSAPP_PAIR_INTERVAL_SECONDS);
        Ok(Pace {
            rate: Some(checked_rate(rate.unwrap_or(WHATSAPP_RATE))?),
            pair_interval: (pair > 0).then(|| Duration::from_secs(pair.into())),
        })
    }

    /// An SMTP sender's limit: `rate` messages per second, or none.
    pub fn email(rate: Option<u32>) -> Result<Pace> {
        Ok(Pace {
            rate: rate.map(checked_rate).transpose()?,
            pair_interval: None,
        })
    }

    /// The time between two sends at `rate`; None: unpaced.
    fn send_interval(&self) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(1.0 / f64::from(rate)))
    }

    /// How long a send waits for its turn when `in_flight` deliveries share
    /// the sender: every one ahead of it, plus one pair interval (several
    /// bursts to one number can wait longer: see `Late::Lease`).
    pub fn longest_wait(&self, in_flight: u16) -> Duration {
        let turns = self
            .send_interval()
            .map(|interval| interval * u32::from(in_flight))
            .unwrap_or_default();
        turns + self.pair_interval.unwrap_or_default()
    }
}

/// Meta's default throughput of a WhatsApp Business phone number.
pub const WHATSAPP_RATE: u32 = 80;
/// Meta's business-consumer pair limit: about one message every 6 seconds.
pub const WHATSAPP_PAIR_INTERVAL_SECONDS: u32 = 6;

fn checked_rate(rate: u32) -> Result<u32> {
    if rate == 0 {
        bail!("rate must be at least 1 message per second");
    }
    Ok(rate)
}

/// Messages to one number that may go at once before the pair interval
/// applies (Meta allows bursts of up to 45 that borrow from later).
pub const PAIR_BURST: u32 = 10;

/// How long after its claim a send may still start: the lease less the
/// send timeout, so that it ends within the lease; or half the lease when
/// the timeout is longer (a configuration that already lets a send outlast
/// its lease).
pub fn time_to_start(lease: Duration, send_timeout: Duration) -> Duration {
    lease - send_timeout.min(lease / 2)
}

/// Why a delivery was not given a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// Its code would expire (within the dispatcher's margin) first.
    Expiry,
    /// Its lease would run out first (another dispatcher could then claim it).
    Lease,
    /// The dispatcher is stopping: it waits for no turn.
    Stopping,
}

/// The latest moments a delivery may start sending.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub expiry: Instant,
    pub lease: Instant,
}

/// One sender's schedule.
pub struct Pacer {
    pace: Pace,
    /// Shared with the pacers this sender had before a reload.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// When the next send may start (GCRA's theoretical arrival time).
    next: Option<Instant>,
    /// Each destination's theoretical arrival time, for the pair limit: a
    /// message may go at `PAIR_BURST - 1` intervals before it.
    pair_next: HashMap<String, Instant>,
    /// `pair_next`'s size at which old entries are dropped next.
    prune_at: usize,
}

const PRUNE_FIRST: usize = 1024;

impl Pacer {
    /// A pacer with a schedule of its own (senders get theirs from `Pacers`).
    #[cfg(test)]
    fn new(pace: Pace) -> Self {
        Self {
            pace,
            state: Arc::default(),
        }
    }

    /// Waits for this message's turn: first the pair limit, then the rate;
    /// how long it waited (zero when its turn was now). When a turn would
    /// come after a deadline, or the dispatcher stops while it waits,
    /// nothing is sent and the pair turn it had is given back.
    pub async fn turn(
        &self,
        destination: Option<&str>,
        deadlines: Deadlines,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Duration, Late> {
        let asked = Instant::now();
        let pair = self.pair_turn(destination, asked, deadlines)?;
        let waited = async {
            sleep_until(pair, stop).await?;
            let now = Instant::now();
            let at = self.rate_turn(now, deadlines)?;
            sleep_until(at, stop).await?;
            // A timer fires late on a busy machine: the deadlines still hold.
            deadlines.check(Instant::now())?;
            Ok(pair > asked || at > now)
        }
        .await;
        match waited {
            Ok(true) => Ok(asked.elapsed()),
            Ok(false) => Ok(Duration::ZERO),
            Err(late) => {
                self.give_back_pair_turn(destination);
                Err(late)
            }
        }
    }

    /// Undoes the last pair turn taken for `destination`.
    fn give_back_pair_turn(&self, destination: Option<&str>) {
        let Some((interval, to)) = self.pace.pair_interval.zip(destination) else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = state.pair_next.get_mut(to) {
            *next = next.checked_sub(interval).unwrap_or(*next);
        }
    }

    /// The earliest moment at or after `now` at which the pair limit lets a
    /// message go to `destination` (None: no pair limit applies), reserved
    /// for it; or the deadline it would miss, reserving nothing.
    fn pair_turn(
        &self,
        destination: Option<&str>,
        now: Instant,
        deadlines: Deadlines,
    ) -> Result<Instant, Late> {
        let Some((interval, to)) = self.pace.pair_interval.zip(destination) else {
            return Ok(now);
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = state.pair_next.get(to).map_or(now, |next| (*next).max(now));
        let burst = interval * (PAIR_BURST - 1);
        let at = next.checked_sub(burst).map_or(now, |at| at.max(now));
        deadlines.check(at)?;
        state.pair_next.insert(to.to_owned(), next + interval);
        if state.pair_next.len() >= state.prune_at.max(PRUNE_FIRST) {
            // A destination whose schedule is back to idle is like a new one.
            state.pair_next.retain(|_, next| *next > now);
            state.prune_at = state.pair_next.len() * 2;
        }
        Ok(at)
    }

    /// The sender's next free moment at or after `now`, reserved; or the
    /// deadline it would miss, reserving nothing. Taken once the pair limit
    /// allows the send, so that a message waiting for its pair interval
    /// holds no place in the sender's schedule.
    fn rate_turn(&self, now: Instant, deadlines: Deadlines) -> Result<Instant, Late> {
        let Some(interval) = self.pace.send_interval() else {
            return Ok(now);
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let at = state.next.map_or(now, |next| next.max(now));
        deadlines.check(at)?;
        state.next = Some(at + interval);
        Ok(at)
    }
}

/// Sleeps until `at`, unless the dispatcher stops first.
async fn sleep_until(at: Instant, stop: &mut watch::Receiver<bool>) -> Result<(), Late> {
    if at <= Instant::now() {
        return Ok(());
    }
    tokio::select! {
        () = tokio::time::sleep_until(at) => Ok(()),
        _ = stop.wait_for(|stopping| *stopping) => Err(Late::Stopping),
    }
}

impl Deadlines {
    fn check(&self, at: Instant) -> Result<(), Late> {
        if at > self.expiry {
            Err(Late::Expiry)
        } else if at > self.lease {
            Err(Late::Lease)
        } else {
            Ok(())
        }
    }
}

/// Every sender's schedule, across reloads.
#[derive(Default)]
pub struct Pacers {
    by_key: Mutex<HashMap<String, Arc<Mutex<State>>>>,
}

impl Pacers {
    /// A pacer at `pace` for the sender known to its provider as `key`, on
    /// the schedule it had before a reload, whatever its limits were then:
    /// a raised rate does not forget who was just sent a burst.
    pub fn get(&self, key: &str, pace: Pace) -> Arc<Pacer> {
        let mut by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let state = by_key.entry(key.to_owned()).or_default().clone();
        Arc::new(Pacer { pace, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far(now: Instant) -> Deadlines {
        Deadlines {
            expiry: now + Duration::from_secs(300),
            lease: now + Duration::from_secs(20),
        }
    }

    const WHATSAPP: Pace = Pace {
        rate: Some(WHATSAPP_RATE),
        pair_interval: Some(Duration::from_secs(6)),
    };

    #[test]
    fn whatsapp_defaults_to_metas_limits() {
        assert_eq!(Pace::whatsapp(None, None).unwrap(), WHATSAPP);
        let no_pair = Pace::whatsapp(Some(250), Some(0)).unwrap();
        assert_eq!((no_pair.rate, no_pair.pair_interval), (Some(250), None));
        assert!(Pace::whatsapp(Some(0), None).is_err());
        let unpaced = Pace {
            rate: None,
            pair_interval: None,
        };
        assert_eq!(Pace::email(None).unwrap(), unpaced);
        assert!(Pace::email(Some(0)).is_err());
    }

    #[test]
    fn turns_are_one_interval_apart_in_order() {
        let pacer = Pacer::new(WHATSAPP);
        let now = Instant::now();
        let turns: Vec<Instant> = (0..160)
            .map(|_| pacer.rate_turn(now, far(now)).unwrap())
            .collect();
        assert_eq!(turns[0], now, "an idle sender sends at once");
        for pair in turns.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_micros(12_500));
        }
        // 160 messages at 80/s: the last starts 159 intervals after the first.
        assert_eq!(turns[159] - now, Duration::from_micros(12_500 * 159));
    }

    #[test]
    fn an_idle_sender_does_not_bank_turns() {
        let pacer = Pacer::new(WHATSAPP);
        let start = Instant::now();
        pacer.rate_turn(start, far(start)).unwrap();
        let later = start + Duration::from_secs(10);
        let first = pacer.rate_turn(later, far(later)).unwrap();
        let second = pacer.rate_turn(later, far(later)).unwrap();
        assert_eq!(first, later);
        assert_eq!(second - later, Duration::from_micros(12_500));
    }

    #[test]
    fn the_same_number_waits_for_the_pair_interval_after_a_burst() {
        let pacer = Pacer::new(WHATSAPP);
        let now = Instant::now();
        let mut turns = Vec::new();
        for _ in 0..PAIR_BURST + 2 {
            turns.push(
                pacer
                    .pair_turn(Some("+34600123478"), now, far(now))
                    .unwrap(),
            );
        }
        assert!(turns[..PAIR_BURST as usize].iter().all(|at| *at == now));
        assert_eq!(turns[PAIR_BURST as usize] - now, Duration::from_secs(6));
        assert_eq!(
            turns[PAIR_BURST as usize + 1] - now,
            Duration::from_secs(12)
        );
        // Another number is not held up.
        assert_eq!(
            pacer.pair_turn(Some("+34600999999"), now, far(now)),
            Ok(now)
        );
        // Waiting for the pair interval takes no place in the rate's schedule.
        assert_eq!(pacer.rate_turn(now, far(now)), Ok(now));
        // A burst is paid back: 72 s on, one number has its burst again.
        let later = now + Duration::from_secs(72);
        for _ in 0..PAIR_BURST {
            assert_eq!(
                pacer.pair_turn(Some("+34600123478"), later, far(later)),
                Ok(later)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_waits_for_the_pair_interval_then_for_the_rate() {
        let pacer = Pacer::new(WHATSAPP);
        let start = Instant::now();
        let (_stop_tx, mut stop) = watch::channel(false);
        let first = pacer
            .turn(Some("+34600123478"), far(start), &mut stop)
            .await;
        assert_eq!(first, Ok(Duration::ZERO), "an idle sender does not wait");
        for _ in 1..PAIR_BURST {
            pacer
                .turn(Some("+34600123478"), far(start), &mut stop)
                .await
                .unwrap();
        }
        // Ten sends, one rate interval apart (the timer wakes on whole milliseconds).
        let burst = Duration::from_micros(12_500) * (PAIR_BURST - 1);
        let waited = Instant::now() - start;
        assert!(
            waited >= burst && waited < burst + Duration::from_millis(1),
            "{waited:?}"
        );
        let before = Instant::now();
        let waited = pacer
            .turn(Some("+34600123478"), far(start), &mut stop)
            .await
            .unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(6));
        assert_eq!(waited, Instant::now() - before);
    }

    #[test]
    fn a_turn_after_a_deadline_is_refused_and_takes_nothing() {
        let pacer = Pacer::new(Pace {
            rate: Some(1),
            pair_interval: Some(Duration::from_secs(6)),
        });
        let now = Instant::now();
        for _ in 0..PAIR_BURST {
            pacer.pair_turn(Some("a"), now, far(now)).unwrap();
        }
        pacer.rate_turn(now, far(now)).unwrap();
        let soon = Deadlines {
            expiry: now + Duration::from_millis(500),
            lease: now + Duration::from_secs(20),
        };
        assert_eq!(pacer.rate_turn(now, soon), Err(Late::Expiry));
        assert_eq!(pacer.pair_turn(Some("a"), now, soon), Err(Late::Expiry));
        let short_lease = Deadlines {
            expiry: now + Duration::from_secs(300),
            lease: now + Duration::from_millis(500),
        };
        assert_eq!(pacer.rate_turn(now, short_lease), Err(Late::Lease));
        // No refusal moved a schedule.
        assert_eq!(
            pacer.rate_turn(now, far(now)),
            Ok(now + Duration::from_secs(1))
        );
        assert_eq!(
            pacer.pair_turn(Some("a"), now, far(now)),
            Ok(now + Duration::from_secs(6))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_turn_gives_its_pair_turn_back() {
        let pacer = Pacer::new(Pace {
            rate: Some(1),
            pair_interval: Some(Duration::from_secs(6)),
        });
        let (_stop_tx, mut stop) = watch::channel(false);
        let now = Instant::now();
        pacer.rate_turn(now, far(now)).unwrap();
        // "b" has its pair turn now, but the rate's turn is 1 s away.
        let soon = Deadlines {
            expiry: now + Duration::from_millis(500),
            lease: now + Duration::from_secs(20),
        };
        assert_eq!(
            pacer.turn(Some("b"), soon, &mut stop).await,
            Err(Late::Expiry)
        );
        // "b" still has its whole burst.
        for _ in 0..PAIR_BURST {
            assert_eq!(pacer.pair_turn(Some("b"), now, far(now)), Ok(now));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_dispatcher_waits_for_no_turn() {
        let pacer = Arc::new(Pacer::new(Pace {
            rate: Some(1),
            pair_interval: None,
        }));
        let (stop_tx, mut stop) = watch::channel(false);
        let now = Instant::now();
        pacer.turn(None, far(now), &mut stop).await.unwrap();
        let waiting = tokio::spawn({
            let (pacer, mut stop) = (pacer.clone(), stop.clone());
            async move { pacer.turn(None, far(now), &mut stop).await }
        });
        tokio::task::yield_now().await;
        stop_tx.send(true).unwrap();
        assert_eq!(waiting.await.unwrap(), Err(Late::Stopping));
        assert!(
            Instant::now() - now < Duration::from_secs(1),
            "it did not wait for its turn"
        );
    }

    #[test]
    fn unpaced_senders_send_at_once() {
        let pacer = Pacer::new(Pace {
            rate: None,
            pair_interval: None,
        });
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(pacer.pair_turn(Some("same"), now, far(now)), Ok(now));
            assert_eq!(pacer.rate_turn(now, far(now)), Ok(now));
        }
    }

    #[test]
    fn old_destinations_are_forgotten() {
        let pacer = Pacer::new(WHATSAPP);
        let start = Instant::now();
        for n in 1..PRUNE_FIRST {
            pacer
                .pair_turn(Some(&n.to_string()), start, far(start))
                .unwrap();
        }
        let later = start + Duration::from_secs(7);
        pacer.pair_turn(Some("new"), later, far(later)).unwrap();
        let kept = pacer.state.lock().unwrap().pair_next.len();
        assert_eq!(kept, 1, "destinations back to idle are dropped");
    }

    #[test]
    fn longest_wait_counts_every_send_ahead_and_one_pair_interval() {
        assert_eq!(
            WHATSAPP.longest_wait(64),
            Duration::from_millis(800) + Duration::from_secs(6)
        );
    }

    #[test]
    fn a_reload_keeps_a_senders_schedule_even_when_its_limits_change() {
        let pacers = Pacers::default();
        let now = Instant::now();
        let before = pacers.get("whatsapp 104857600", WHATSAPP);
        for _ in 0..PAIR_BURST {
            before
                .pair_turn(Some("+34600123478"), now, far(now))
                .unwrap();
        }
        before.rate_turn(now, far(now)).unwrap();
        let faster = Pace {
            rate: Some(200),
            ..WHATSAPP
        };
        let after = pacers.get("whatsapp 104857600", faster);
        // The burst is still spent, and the rate's next turn still taken.
        assert_eq!(
            after.pair_turn(Some("+34600123478"), now, far(now)),
            Ok(now + Duration::from_secs(6))
        );
        assert_eq!(
            after.rate_turn(now, far(now)),
            Ok(now + Duration::from_micros(12_500))
        );
        // Another sender has its own.
        let other = pacers.get("whatsapp 999", WHATSAPP);
        assert_eq!(other.rate_turn(now, far(now)), Ok(now));
    }
}
