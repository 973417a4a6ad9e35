//! The ends of transactions and subtransactions, for the state pg_otp keeps
//! in backend memory: the attempt ledger's expectations (`ledger`) and the
//! session binding (`binding`), and whether to wake the dispatchers
//! (`delivery::wake`, which also refuses PREPARE TRANSACTION). One pair of callbacks, registered in the
//! postmaster so that every backend has them; cheap when there is nothing
//! to do.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{binding, delivery, ledger};

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
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            ledger::subtransaction_committed(level, parent);
            binding::subtransaction_committed(level, parent);
            delivery::wake::subtransaction_committed(level, parent);
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
        XACT_EVENT_PRE_PREPARE => delivery::wake::before_prepare(),
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            ledger::transaction_committed();
            binding::transaction_ended();
            delivery::wake::transaction_committed();
        }
        // An aborted or prepared transaction: its writes are not (yet) in
        // the tables, so the ledger keeps its entries.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            ledger::transaction_aborted();
            binding::transaction_ended();
            delivery::wake::transaction_aborted();
        }
        _ => {}
    }
}
