//! The ends of transactions and subtransactions, for the state pg_otp keeps
//! in backend memory: the attempt ledger's expectations (`ledger`) and the
//! session binding (`binding`), whether to wake the dispatchers
//! (`delivery::wake`), and whether the transaction may be prepared
//! (`refuse_prepare`). One pair of callbacks, registered in the
//! postmaster so that every backend has them; cheap when there is nothing
//! to do.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::OtpError;
use crate::{binding, delivery, ledger};

/// Something a transaction asked for that holds until it ends: set in a
/// (sub)transaction, kept when that commits into its parent, dropped when
/// it is rolled back, as PostgreSQL treats the locks and NOTIFYs of
/// subtransactions. Holds the outermost subtransaction that set it, or 0
/// (InvalidSubTransactionId) for none.
pub struct Mark(Cell<pg_sys::SubTransactionId>);

impl Mark {
    pub const fn new() -> Self {
        Self(Cell::new(0))
    }

    /// Sets the mark in the current (sub)transaction.
    pub fn set(&self) {
        // SAFETY: inside a transaction, as every SQL function is.
        let current = unsafe { pg_sys::GetCurrentSubTransactionId() };
        let set = self.0.get();
        if set == 0 || current < set {
            self.0.set(current);
        }
    }

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        self.0.get() != 0
    }

    /// Whether it was set; clears it (the transaction ended).
    pub fn take(&self) -> bool {
        self.0.replace(0) != 0
    }

    /// A subtransaction (and those inside it: their ids are higher) was
    /// rolled back.
    pub fn subtransaction_aborted(&self, subtransaction: pg_sys::SubTransactionId) {
        if self.0.get() >= subtransaction {
            self.0.set(0);
        }
    }

    /// A subtransaction committed into its parent.
    pub fn subtransaction_committed(
        &self,
        subtransaction: pg_sys::SubTransactionId,
        parent: pg_sys::SubTransactionId,
    ) {
        if self.0.get() >= subtransaction {
            self.0.set(parent);
        }
    }
}

thread_local! {
    /// This transaction took locks of pg_otp's (on a person, a
    /// conversation, a destination, a challenge or a guard row) or queued
    /// a code.
    static UNPREPARABLE: Mark = const { Mark::new() };
}

/// The current transaction must not be prepared (PREPARE TRANSACTION): it
/// holds locks that would stall every code or verification of a person, a
/// conversation or a destination for as long as the prepared transaction
/// lived, across disconnects, until someone ended it. PostgreSQL refuses to
/// prepare a transaction that sent a NOTIFY for the same kind of reason.
pub fn refuse_prepare() {
    UNPREPARABLE.with(Mark::set);
}

/// Registers the callbacks; from _PG_init, while preloading.
pub fn register_callbacks() {
    // SAFETY: plain registrations, once, before any backend exists.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_end), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    level: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            ledger::subtransaction_aborted(level);
            binding::subtransaction_aborted(level);
            delivery::wake::subtransaction_aborted(level);
            UNPREPARABLE.with(|mark| mark.subtransaction_aborted(level));
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            ledger::subtransaction_committed(level, parent);
            binding::subtransaction_committed(level, parent);
            delivery::wake::subtransaction_committed(level, parent);
            UNPREPARABLE.with(|mark| mark.subtransaction_committed(level, parent));
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    // After commit or abort nothing may raise an ERROR: both only touch
    // backend and shared memory. Before PREPARE one may.
    match event {
        XACT_EVENT_PRE_PREPARE if UNPREPARABLE.with(Mark::take) => {
            OtpError::new(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "pg_otp: cannot PREPARE a transaction that issued or verified a code",
            )
            .with_detail(
                "It holds pg_otp's locks on a person, a conversation or a destination, \
                 which a prepared transaction would keep until it is committed or rolled back.",
            )
            .raise();
        }
        // Before the commit, after the last deferred trigger: an ERROR
        // here still rolls the transaction back.
        XACT_EVENT_PRE_COMMIT => delivery::wake::transaction_committing(),
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            ledger::transaction_committed();
            binding::transaction_ended();
            delivery::wake::transaction_committed();
            UNPREPARABLE.with(Mark::take);
        }
        // An aborted or prepared transaction: its writes are not (yet) in
        // the tables, so the ledger keeps its entries.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            ledger::transaction_aborted();
            binding::transaction_ended();
            delivery::wake::transaction_aborted();
            UNPREPARABLE.with(Mark::take);
        }
        _ => {}
    }
}
