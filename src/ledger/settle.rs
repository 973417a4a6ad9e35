//! What the ledger may forget when a transaction commits.
//!
//! A guess leaves entries in the ledger and writes the same values to the
//! tables in the caller's transaction. Once that transaction commits, the
//! tables know what the ledger knew and the entries can go; if it rolls
//! back (or the savepoint around the guess does), they must stay. So each
//! backend keeps, per entry it touched, what its writes make the tables
//! hold, tagged with the subtransaction that wrote it; a subtransaction
//! that aborts takes its expectations along, and at commit every entry
//! still equal to what the tables now hold is removed.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::table::Locked;
use super::{Key, State};

/// What the tables hold once this transaction commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The challenge is no longer pending: its entry is of no more use.
    Ended,
    /// The row holds exactly this state.
    Holds(State),
}

thread_local! {
    /// Per entry, the expectations of the open (sub)transactions, oldest
    /// first, at most one per subtransaction level still open.
    static PENDING: RefCell<HashMap<Key, Vec<(pg_sys::SubTransactionId, Expect)>>> =
        RefCell::new(HashMap::new());
}

/// Records what this (sub)transaction's writes will make the tables hold.
pub fn expect(key: Key, expect: Expect) {
    // SAFETY: called inside a transaction.
    let level = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        let stack = pending.entry(key).or_default();
        match stack.last_mut() {
            Some((top, previous)) if *top == level => *previous = expect,
            _ => stack.push((level, expect)),
        }
    });
}

/// Registers the (sub)transaction callbacks; from _PG_init, in the
/// postmaster, so that every backend has them.
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
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        if pending.is_empty() {
            return;
        }
        match event {
            // The writes of `level` (and of what it contained) are undone:
            // so are the expectations; the entries keep what they know.
            pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
                for stack in pending.values_mut() {
                    while stack.last().is_some_and(|(top, _)| *top >= level) {
                        stack.pop();
                    }
                }
                pending.retain(|_, stack| !stack.is_empty());
            }
            // The writes of `level` now belong to its parent.
            pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
                for stack in pending.values_mut() {
                    if let Some((top, expect)) = stack.pop() {
                        if top < level {
                            stack.push((top, expect));
                            continue;
                        }
                        if stack.last().is_some_and(|(below, _)| *below == parent) {
                            stack.pop();
                        }
                        stack.push((parent, expect));
                    }
                }
            }
            _ => {}
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    let committed = match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => true,
        // An aborted or prepared transaction: its writes are not (yet) in
        // the tables, so the entries stay.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => false,
        _ => return,
    };
    let pending = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    if !committed || pending.is_empty() || !super::table::available() {
        return;
    }
    // After commit nothing may raise an ERROR: only shared-memory work here.
    let mut ledger = Locked::exclusive();
    for (key, stack) in pending {
        let Some(&(_, expect)) = stack.last() else {
            continue;
        };
        let forget = match (expect, ledger.get(&key)) {
            (_, None) => false,
            (Expect::Ended, Some(_)) => true,
            (Expect::Holds(state), Some(entry)) => entry.state == state,
        };
        if forget {
            ledger.remove(&key);
        }
    }
}
