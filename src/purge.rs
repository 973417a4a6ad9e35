//! Purge: old rows are deleted so that the hot tables stay small and
//! otp_issue / otp_verify cost the same after a million codes as after ten.
//!
//! `otp_purge()` does one pass; the background worker calls it every
//! `otp.purge_interval` seconds in `otp.purge_database` when pg_otp is in
//! shared_preload_libraries. Without the worker, schedule `otp_purge()`
//! with pg_cron.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::errors::{OtpError, Result};
use crate::prepared;
use crate::{audit, clock, delivery, gucs};

/// otp_purge()'s defaults, which the worker uses too.
pub const DEFAULT_RETENTION_DAYS: i32 = 7;
pub const DEFAULT_EVENT_RETENTION_DAYS: i32 = 90;

/// How many rows one pass deleted.
pub struct Purged {
    pub challenges: i64,
    pub messages: i64,
    pub sessions: i64,
    pub guards: i64,
    pub events: i64,
}

/// Deletes what ended more than `retention` ago (and audit events older than
/// `event_retention`). Challenges inside any agent's send window are kept,
/// since the send limits count them.
pub fn purge(
    client: &mut SpiClient<'_>,
    retention: Option<Interval>,
    event_retention: Option<Interval>,
) -> Result<Purged> {
    let retention = retention.ok_or_else(|| OtpError::null_argument("retention"))?;
    let event_retention =
        event_retention.ok_or_else(|| OtpError::null_argument("event_retention"))?;
    let now = clock::now();
    // In SQL, as the deletes count: an interval such as '1 mon -29 days' is
    // positive by PostgreSQL's comparison yet, in a 31-day month, reaches
    // into the future.
    let negative = prepared::select(
        client,
        "SELECT $1 - $2 > $1, $1 - $3 > $1",
        Some(1),
        &[now.into(), retention.into(), event_retention.into()],
    )?
    .first();
    for (argument, column) in [("retention", 1), ("event_retention", 2)] {
        if negative.get::<bool>(column)?.unwrap_or(true) {
            return Err(OtpError::invalid_argument(argument, "must not be negative"));
        }
    }
    fn deleted(
        client: &mut SpiClient<'_>,
        sql: &str,
        args: &[pgrx::datum::DatumWithOid<'_>],
    ) -> Result<i64> {
        Ok(prepared::update(client, sql, None, args)?.len() as i64)
    }
    let challenges = deleted(
        client,
        "DELETE FROM otp.challenge
          WHERE COALESCE(ended_at, expires_at) < $1 - $2
            AND created_at < $1 - (SELECT COALESCE(max(code_window), interval '0') FROM otp.agent)",
        &[now.into(), retention.into()],
    )?;
    let messages = delivery::purge(client, now, retention)?;
    let sessions = deleted(
        client,
        "DELETE FROM otp.session WHERE LEAST(expires_at, idle_expires_at, COALESCE(revoked_at, 'infinity')) < $1 - $2",
        &[now.into(), retention.into()],
    )?;
    let guards = deleted(
        client,
        "DELETE FROM otp.subject_guard WHERE consecutive_failures = 0 AND (locked_until IS NULL OR locked_until < $1)",
        &[now.into()],
    )?;
    // Last, so that a partition it empties stays locked only briefly.
    let events = audit::purge(client, event_retention)?;
    Ok(Purged {
        challenges,
        messages,
        sessions,
        guards,
        events,
    })
}

/// One pass of the worker: the purge itself and the delivery sweep, called
/// directly rather than by name through SQL, so that nothing planted in a
/// schema on the worker's search_path (an `otp_purge` overload in `public`,
/// say) can capture or break it. The statements name every schema and run under a pinned
/// search_path all the same.
fn purge_if_installed(client: &mut SpiClient<'_>) -> Result<()> {
    let installed = prepared::select(
        client,
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true) IS NOT NULL
            AND EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_otp')",
        Some(1),
        &[],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false);
    if !installed {
        // Not installed in this database (yet): nothing to purge.
        return Ok(());
    }
    // Messages that can no longer be delivered end even with no dispatcher
    // running (a dispatcher sweeps too, between claims, and moves decoys on).
    delivery::sweep(client, delivery::Decoys::OnlyEnd)?;
    // The purge last: the transaction ends right after an old week of the
    // audit trail is emptied, so that its lock is held no longer than that.
    purge(
        client,
        Some(Interval::from_days(DEFAULT_RETENTION_DAYS)),
        Some(Interval::from_days(DEFAULT_EVENT_RETENTION_DAYS)),
    )
    .map(drop)
}

/// Registers the purge worker (only while PostgreSQL preloads the library).
pub fn register_worker() {
    BackgroundWorkerBuilder::new("pg_otp purge")
        .set_type("pg_otp purge")
        .set_function("pg_otp_purge_worker_main")
        .set_library("pg_otp")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(60)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_otp_purge_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Some(database) = gucs::purge_database() else {
        // Nothing to do; exiting with 0 means it is not restarted.
        log!("pg_otp purge worker: otp.purge_database is not set; use otp_purge() from pg_cron instead");
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!(
        "pg_otp purge worker: purging database \"{database}\" every {} s",
        gucs::purge_interval().as_secs()
    );
    while BackgroundWorker::wait_latch(Some(gucs::purge_interval())) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload postgresql.conf.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        BackgroundWorker::transaction(|| {
            Spi::connect_mut(|client| {
                if let Err(err) = purge_if_installed(client) {
                    warning!("pg_otp purge worker: {}", err.message());
                }
            })
        });
    }
}
