//! Waking the dispatchers: `NOTIFY otp_outbox` once a message is due.
//!
//! PostgreSQL serialises the commits of transactions that sent a NOTIFY:
//! each takes one lock, the same for the whole cluster, before its commit
//! record and keeps it until the commit has been flushed. With a NOTIFY in
//! every otp_issue, codes are issued one fsync at a time however many
//! clients ask.
//!
//! So in `otp.purge_database`, where the library's background workers run,
//! a transaction that queued a message does not notify: when it commits it
//! sets a flag in shared memory and the latch of the "pg_otp wake" worker,
//! which sends one NOTIFY for everything committed since its last one,
//! without waiting for a flush (`synchronous_commit = off`: a wake-up needs
//! no durability). The NOTIFY follows the commit, so a dispatcher woken by
//! it sees the message. In any other database, or while the worker is not
//! running, the transaction notifies itself, as before. A wake lost when
//! the worker stops between the two is caught by the dispatchers' polling
//! (`--poll-interval-ms`), and a starting worker notifies once.
//!
//! PostgreSQL's notification queue is the cluster's, and any role that can
//! LISTEN can fill it: a listener that never reads holds every later
//! notification in it. Once it is full, every NOTIFY fails its transaction
//! (54000). So nobody here notifies once it is half full (where PostgreSQL
//! starts warning about it), and the dispatchers find the messages by
//! polling until it drains. The queue is looked at just before the commit,
//! not when the message was queued (an application may keep its
//! transaction open while the queue fills), and while holding PostgreSQL's
//! own lock on notifying commits, so that nobody else adds to the queue
//! between that look and the commit. The worker catches any ERROR of its
//! transaction (a lock timeout, say) and goes on.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::NOTIFY_CHANNEL;
use crate::errors::OtpError;
use crate::xact::{self, Mark};
use crate::{gucs, prepared};

const NAME: &CStr = c"pg_otp wake";

/// The share of PostgreSQL's notification queue from which nobody is woken.
const QUEUE_TOO_FULL: f64 = 0.5;

unsafe extern "C-unwind" {
    /// PostgreSQL's NOTIFY (commands/async.h, which pgrx does not bind):
    /// queued in the current transaction, sent when it commits. Called
    /// through pgrx's guard, as pgrx's own bindings are: an ERROR in it
    /// must not jump over Rust frames.
    fn Async_Notify(channel: *const c_char, payload: *const c_char);
}

/// In shared memory: which worker to wake, in which database, and whether
/// something committed since its last NOTIFY.
#[repr(C)]
struct Shared {
    /// The worker's latch; null while no worker runs.
    latch: AtomicPtr<pg_sys::Latch>,
    /// The database it notifies in.
    database: AtomicU32,
    /// Set by committing transactions, cleared by the worker.
    pending: AtomicBool,
}

// Set in the postmaster at start-up (again after a crash restart) and
// inherited by every process it starts.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// This backend's transaction queued a message for the worker to
    /// announce at commit. Like a NOTIFY, a wake asked for in a
    /// subtransaction that is rolled back is dropped.
    static AT_COMMIT: Mark = const { Mark::new() };
}

/// Registers the worker; from _PG_init, while the library is being
/// preloaded (`shmem` makes the shared state).
pub fn init() {
    BackgroundWorkerBuilder::new("pg_otp wake")
        .set_type("pg_otp wake")
        .set_function("pg_otp_wake_worker_main")
        .set_library("pg_otp")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The shared state's space, asked for while shared memory is sized.
pub fn request_space() {
    // SAFETY: called by the postmaster from the shared-memory request hook.
    unsafe { pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>()) };
}

/// Creates or finds the shared state; from the start-up hook, under
/// AddinShmemInitLock. A new segment (at start, or after a crash restart)
/// starts with no worker and nothing pending.
pub fn attach() {
    let mut found = false;
    // SAFETY: shared memory exists and the caller holds AddinShmemInitLock;
    // a struct not found is written before anyone can read it.
    unsafe {
        let shared =
            pg_sys::ShmemInitStruct(NAME.as_ptr(), std::mem::size_of::<Shared>(), &mut found)
                .cast::<Shared>();
        if !found {
            shared.write(Shared {
                latch: AtomicPtr::new(std::ptr::null_mut()),
                database: AtomicU32::new(0),
                pending: AtomicBool::new(false),
            });
        }
        SHARED.store(shared, Ordering::Relaxed);
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: once set, the struct lives as long as the server's shared memory.
    unsafe { SHARED.load(Ordering::Relaxed).as_ref() }
}

/// Wakes the dispatchers once this transaction commits: through the worker
/// if it runs in this database then, else by notifying from this
/// transaction (`transaction_committing`).
pub fn at_commit() {
    // Wherever the NOTIFY comes from: PostgreSQL would refuse it anyway.
    xact::refuse_prepare();
    AT_COMMIT.with(Mark::set);
}

/// Whether a "pg_otp wake" worker runs in this backend's database.
fn served_here() -> bool {
    // SAFETY: set for the life of the backend.
    let here = u32::from(unsafe { pg_sys::MyDatabaseId });
    shared().is_some_and(|shared| {
        !shared.latch.load(Ordering::Acquire).is_null()
            && shared.database.load(Ordering::Acquire) == here
    })
}

/// NOTIFY otp_outbox in the current transaction, unless PostgreSQL's
/// notification queue is too full; whether it did.
fn notify_unless_queue_full() -> bool {
    let too_full = || {
        // SAFETY: in a transaction; the function takes no arguments.
        let usage =
            unsafe { pgrx::direct_function_call::<f64>(pg_sys::pg_notification_queue_usage, &[]) };
        usage.is_none_or(|usage| usage >= QUEUE_TOO_FULL)
    };
    if too_full() {
        return false;
    }
    // PostgreSQL serialises the commits of notifying transactions with one
    // lock, taken (PreCommit_Notify, async.c, 13 to 18) before it looks
    // whether the queue has room, and held until the commit ends; others
    // may fill the queue while this transaction waits for it. Taken here,
    // before the second look, only this transaction's own notifications
    // can reach the queue until it has committed, so that look is the one
    // that counts. (PostgreSQL takes it again without waiting.) As
    // PostgreSQL does, the transaction gets its id before the lock, not
    // under it.
    let lock = || {
        (
            pg_sys::DatabaseRelationId,
            pg_sys::InvalidOid,
            0,
            pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
        )
    };
    // SAFETY: in a transaction; a lock tag of PostgreSQL's own.
    unsafe {
        pg_sys::GetCurrentTransactionId();
        let (class, object, sub, mode) = lock();
        pg_sys::LockSharedObject(class, object, sub, mode);
    }
    if too_full() {
        // Sending nothing, this commit need not wait for other notifiers.
        // SAFETY: the lock just taken; PostgreSQL takes it again should
        // the transaction have notified by itself.
        unsafe {
            let (class, object, sub, mode) = lock();
            pg_sys::UnlockSharedObject(class, object, sub, mode);
        }
        return false;
    }
    // SAFETY: in a transaction, with two NUL-terminated strings within
    // PostgreSQL's limits. A constant payload: PostgreSQL folds repeats
    // within one transaction.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| Async_Notify(NOTIFY_CHANNEL.as_ptr(), c"".as_ptr()))
    };
    true
}

/// From the transaction callback, just before the commit (after the last
/// deferred trigger, before PostgreSQL queues the transaction's
/// notifications): a transaction that queued a message, in a database no
/// worker serves now, notifies itself.
pub fn transaction_committing() {
    if !AT_COMMIT.with(Mark::is_set) || served_here() {
        return;
    }
    AT_COMMIT.with(Mark::take);
    notify_unless_queue_full();
}

/// From the subtransaction callback: a subtransaction was rolled back.
pub fn subtransaction_aborted(subtransaction: pg_sys::SubTransactionId) {
    AT_COMMIT.with(|mark| mark.subtransaction_aborted(subtransaction));
}

/// From the subtransaction callback: a subtransaction committed into its parent.
pub fn subtransaction_committed(
    subtransaction: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    AT_COMMIT.with(|mark| mark.subtransaction_committed(subtransaction, parent));
}

/// From the transaction callback, after a commit: hands the wake to the
/// worker. Never raises an ERROR.
pub fn transaction_committed() {
    if !AT_COMMIT.with(Mark::take) {
        return;
    }
    let Some(shared) = shared() else { return };
    shared.pending.store(true, Ordering::Release);
    let latch = shared.latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: a PGPROC's latch, in shared memory for the server's life;
        // should the worker have exited meanwhile, another process sees a
        // spurious wake-up, which every latch user tolerates.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// From the transaction callback, after an abort: nothing to announce.
pub fn transaction_aborted() {
    AT_COMMIT.with(Mark::take);
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_worker(_code: i32, _arg: pg_sys::Datum) {
    if let Some(shared) = shared() {
        shared.latch.store(std::ptr::null_mut(), Ordering::Release);
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_otp_wake_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let (Some(database), Some(shared)) = (gucs::purge_database(), shared()) else {
        // Each transaction notifies itself; exiting with 0 means no restart.
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // SAFETY: this process's own PGPROC and database, set for its life; the
    // latch is withdrawn before the process leaves shared memory, whether it
    // stops or fails.
    unsafe {
        pg_sys::before_shmem_exit(Some(forget_worker), pg_sys::Datum::null());
        shared
            .database
            .store(u32::from(pg_sys::MyDatabaseId), Ordering::Release);
        shared
            .latch
            .store(&raw mut (*pg_sys::MyProc).procLatch, Ordering::Release);
    }
    log!("pg_otp wake worker: waking dispatchers in database \"{database}\"");
    // Whatever committed while no worker ran.
    shared.pending.store(false, Ordering::Release);
    let mut told = Told::default();
    told.after(notify());
    while BackgroundWorker::wait_latch(None) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload postgresql.conf.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // The latch was reset before this read: a commit setting the flag
        // from now on sets the latch again.
        if shared.pending.swap(false, Ordering::AcqRel) {
            told.after(notify());
        }
    }
}

/// How often the worker may tell the server log that it stopped waking
/// dispatchers: whoever can fill the queue can empty it again, as often as
/// they like.
const TELL_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// What the worker has told the server log about wake-ups it did not send:
/// a WARNING when a run of them begins, a LOG when it ends, and no more
/// than one run's pair a minute (the runs in between are counted in the
/// next WARNING).
#[derive(Default)]
struct Told {
    /// In a run of wake-ups not sent; whether its start was told.
    in_run: Option<bool>,
    /// When a run's start was last told.
    last: Option<Instant>,
    /// Runs since then that were not told.
    untold: u64,
}

impl Told {
    fn after(&mut self, outcome: std::result::Result<bool, String>) {
        let why = match outcome {
            Ok(true) => {
                if self.in_run.take() == Some(true) {
                    log!("pg_otp wake worker: waking dispatchers again");
                }
                return;
            }
            _ if self.in_run.is_some() => return,
            Ok(false) => "PostgreSQL's notification queue is half full or more".to_owned(),
            Err(message) => format!("the NOTIFY failed: {message}"),
        };
        let due = self
            .last
            .is_none_or(|last| last.elapsed() >= TELL_AT_MOST_EVERY);
        self.in_run = Some(due);
        if !due {
            self.untold += 1;
            return;
        }
        let untold = std::mem::take(&mut self.untold);
        warning!(
            "pg_otp wake worker: not waking dispatchers, who find new messages by polling meanwhile: {why}{}",
            if untold > 0 {
                format!(" ({untold} more such runs since the last message)")
            } else {
                String::new()
            }
        );
        self.last = Some(Instant::now());
    }
}

/// One NOTIFY, unless the queue is too full, in a transaction of its own
/// that does not wait for its commit record to be flushed: whether it
/// notified, or why it failed. An ERROR (a lock timeout while waiting for
/// the lock on notifying commits, say) rolls the transaction back and the
/// worker goes on.
fn notify() -> std::result::Result<bool, String> {
    PgTryBuilder::new(|| {
        BackgroundWorker::transaction(|| {
            Spi::connect_mut(|client| {
                prepared::update(
                    client,
                    "SELECT pg_catalog.set_config('synchronous_commit', 'off', true)",
                    None,
                    &[],
                )?;
                Ok(notify_unless_queue_full())
            })
        })
        .map_err(|err: OtpError| err.message().to_owned())
    })
    .catch_others(|caught| {
        // What PostgreSQL's own background processes do after an ERROR
        // (pgrx has already copied and flushed the error); it leaves
        // TopMemoryContext current.
        // SAFETY: outside any PG_TRY of ours, in the worker's main loop.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        Err(match caught {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report) => report.message().to_owned(),
            pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
        })
    })
    .execute()
}
