//! Which person the current transaction acts for, per agent.
//!
//! `session_use(token)` binds the rest of the transaction to an active
//! session's agent and subject; `otp_subject(agent)` reads the binding, and
//! row-level security policies call it, so that PostgreSQL itself returns
//! only the verified person's rows. The binding lives in this backend's
//! memory and nowhere else: no setting, no SQL statement, no connection
//! option can make or change it. It ends with the transaction (commit,
//! rollback or PREPARE TRANSACTION), and a binding made in a subtransaction
//! that rolls back is gone with it (see `xact`).
//!
//! Agents are separate namespaces: a session of one agent never answers for
//! another. A second session_use for the same agent replaces the binding;
//! one that finds the session no longer active removes it, and one whose
//! token is unknown (to this caller) removes every binding (fail closed).

use std::cell::RefCell;

use pgrx::pg_sys;

struct Bound {
    agent: String,
    /// None: session_use found the session over; nothing is bound.
    subject: Option<String>,
    /// The subtransaction that made the binding.
    level: pg_sys::SubTransactionId,
}

thread_local! {
    /// Bindings of the open transaction, oldest first.
    static BOUND: RefCell<Vec<Bound>> = const { RefCell::new(Vec::new()) };
}

/// Binds the rest of the transaction, for `agent`, to `subject` (None:
/// to nobody).
pub fn bind(agent: &str, subject: Option<&str>) {
    // SAFETY: called inside a transaction.
    let level = unsafe { pg_sys::GetCurrentSubTransactionId() };
    BOUND.with(|bound| {
        let mut bound = bound.borrow_mut();
        bound.retain(|b| !(b.agent == agent && b.level == level));
        bound.push(Bound {
            agent: agent.to_owned(),
            subject: subject.map(str::to_owned),
            level,
        });
    });
}

/// Binds the rest of the transaction to nobody, for every agent it was
/// bound for: session_use did not recognise a token, so it cannot know
/// which agent's binding the caller meant to replace (fail closed).
pub fn bind_nobody() {
    let agents: Vec<String> = BOUND.with(|bound| {
        let mut agents: Vec<String> = bound.borrow().iter().map(|b| b.agent.clone()).collect();
        agents.sort();
        agents.dedup();
        agents
    });
    for agent in agents {
        bind(&agent, None);
    }
}

/// The subject the transaction is bound to for `agent`, if any.
pub fn subject(agent: &str) -> Option<String> {
    BOUND.with(|bound| {
        bound
            .borrow()
            .iter()
            .rev()
            .find(|b| b.agent == agent)
            .and_then(|b| b.subject.clone())
    })
}

/// A subtransaction rolled back: so did the bindings it made.
pub fn subtransaction_aborted(level: pg_sys::SubTransactionId) {
    BOUND.with(|bound| bound.borrow_mut().retain(|b| b.level < level));
}

/// A subtransaction committed: its bindings now belong to its parent.
pub fn subtransaction_committed(level: pg_sys::SubTransactionId, parent: pg_sys::SubTransactionId) {
    BOUND.with(|bound| {
        let mut bound = bound.borrow_mut();
        if !bound.iter().any(|b| b.level >= level) {
            return;
        }
        for b in bound.iter_mut().filter(|b| b.level >= level) {
            b.level = parent;
        }
        // One binding per agent and level: the newest.
        let mut seen = Vec::new();
        for index in (0..bound.len()).rev() {
            let key = (bound[index].agent.clone(), bound[index].level);
            if seen.contains(&key) {
                bound.remove(index);
            } else {
                seen.push(key);
            }
        }
    });
}

/// The transaction ended: nothing is bound any more.
pub fn transaction_ended() {
    BOUND.with(|bound| bound.borrow_mut().clear());
}
