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

/// A subtransaction rolled back: the writes of `level` (and of what it
/// contained) are undone, and so are the expectations; the entries keep
/// what they know.
pub fn subtransaction_aborted(level: pg_sys::SubTransactionId) {
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        if pending.is_empty() {
            return;
        }
        for stack in pending.values_mut() {
            while stack.last().is_some_and(|(top, _)| *top >= level) {
                stack.pop();
            }
        }
        pending.retain(|_, stack| !stack.is_empty());
    });
}

/// A subtransaction committed: the writes of `level` now belong to its parent.
pub fn subtransaction_committed(level: pg_sys::SubTransactionId, parent: pg_sys::SubTransactionId) {
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
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
    });
}

/// The transaction rolled back (or was prepared): its writes are not in
/// the tables, so the entries stay.
pub fn transaction_aborted() {
    PENDING.with(|pending| pending.borrow_mut().clear());
}

/// The transaction committed: every entry still equal to what its writes
/// put in the tables is forgotten. Runs after commit, where nothing may
/// raise an ERROR: only shared-memory work.
pub fn transaction_committed() {
    let pending = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    if pending.is_empty() || !super::table::available() {
        return;
    }
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
