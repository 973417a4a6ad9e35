//! The attempt ledger: guesses that a rollback cannot erase.
//!
//! otp_verify runs in the caller's transaction, and so do the counters it
//! keeps in tables (`otp.challenge.attempts_used`, `otp.subject_guard`). A
//! caller who rolls back — ROLLBACK, a savepoint, a PL/pgSQL EXCEPTION
//! block, a statement that fails on purpose when the answer is wrong —
//! would take the attempt back together with the answer, and could guess
//! for ever. So every attempt is first counted here, in shared memory,
//! where no transaction reaches, and only then compared:
//!
//! - a challenge's attempts, and whether a right code has been used;
//! - a person's consecutive failures and lockout (per agent and subject).
//!
//! The tables remain the durable record: otp_verify writes the same values
//! to them in the caller's transaction. The ledger holds an entry only
//! while it may know more than the tables: from the guess until the
//! transaction that wrote those values commits (see `settle`). An entry
//! whose transaction rolled back stays, so the next guess finds it; the
//! tables catch up with the next verification that commits. In steady
//! state the ledger is nearly empty.
//!
//! Limits, stated in docs/security.md: the ledger is per server and in memory, so
//! a restart (or a failover) forgets guesses whose transactions rolled back,
//! never committed ones; it holds `otp.ledger_size` entries, and when it is
//! full of entries it cannot forget, verification fails closed (53400).
//! Every entry is counted against the login role of the session that made
//! it (across databases), which may hold at most a quarter of the ledger:
//! an application that fills the ledger on purpose shuts out itself, not
//! everyone. A person's
//! failures that no committed transaction recorded are forgotten once the
//! agent's lockout_duration has passed since the last of them, at the pace
//! at which committed failures would have ended in a lockout and expired.
//! A right code resets the person's failure count at once, even if its
//! transaction then rolls back: only someone who has the code can do that.

mod settle;
pub(crate) mod table;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use sha2::{Digest, Sha256};

use crate::errors::{OtpError, Result};
use table::Locked;

pub use settle::{
    subtransaction_aborted, subtransaction_committed, transaction_aborted, transaction_committed,
};

/// Which rows of the tables an entry stands for.
#[repr(u32)]
#[derive(Clone, Copy)]
enum Kind {
    Challenge = 1,
    Person = 2,
    /// A role, with the number of entries it made (see `table`).
    Holder = 3,
}

/// A role may hold at most 1/SHARES of the ledger.
const SHARES: i64 = 4;

/// An entry's key: fixed size and free of padding, since the shared table
/// compares keys as bytes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key {
    database: pg_sys::Oid,
    kind: u32,
    /// 0, except in `#[pg_test]` builds (see `scope`).
    scope: u64,
    id: [u8; 32],
}

/// What the ledger knows: for a challenge, attempts used, whether a right
/// code was used, and when the code expires (after which the entry is
/// worthless); for a person, failures in a row, the end of a lockout, and
/// when failures that never reached a lockout may be forgotten.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct State {
    pub count: i32,
    pub consumed: bool,
    /// Microseconds since 2000-01-01 (TimestampTz); 0 for none.
    pub until: i64,
    /// As `until`: a person's last failure plus the lockout duration.
    pub forget_at: i64,
}

impl Key {
    /// A challenge, by its id and the OID of otp.challenge: ids start over
    /// when the extension is dropped and created again, the OID does not
    /// come back (while the server runs), so a new challenge never inherits
    /// an old one's attempts.
    fn challenge(challenge_id: i64) -> Key {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&challenge_id.to_be_bytes());
        id[8..12].copy_from_slice(&challenge_table().to_u32().to_be_bytes());
        Key::new(Kind::Challenge, id)
    }

    fn person(agent: &str, subject: &str) -> Key {
        let mut digest = Sha256::new();
        for field in [agent.as_bytes(), subject.as_bytes()] {
            digest.update((field.len() as u64).to_be_bytes());
            digest.update(field);
        }
        Key::new(Kind::Person, digest.finalize().into())
    }

    /// The login role of this session, in every database: neither SET ROLE
    /// nor connecting to another database gives an application another
    /// share of the ledger (which is the server's).
    fn holder() -> Key {
        let mut id = [0u8; 32];
        // SAFETY: set at connection time, for the life of the session.
        let role = unsafe { pg_sys::GetSessionUserId() };
        id[..4].copy_from_slice(&role.to_u32().to_be_bytes());
        Key {
            database: pg_sys::InvalidOid,
            ..Key::new(Kind::Holder, id)
        }
    }

    fn new(kind: Kind, id: [u8; 32]) -> Key {
        Key {
            // SAFETY: set for the life of the backend before any SQL runs.
            database: unsafe { pg_sys::MyDatabaseId },
            kind: kind as u32,
            scope: scope(),
            id,
        }
    }
}

/// The OID of otp.challenge in this database (InvalidOid if there is none).
fn challenge_table() -> pg_sys::Oid {
    // SAFETY: syscache lookups by name; both return InvalidOid when missing.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"otp".as_ptr(), true);
        pg_sys::get_relname_relid(c"challenge".as_ptr(), schema)
    }
}

/// `#[pg_test]`s each run in one transaction that is rolled back, all in
/// one cluster; scoping their entries to the transaction keeps one test's
/// guesses from counting in the next. Production builds use one scope.
#[cfg(not(feature = "pg_test"))]
fn scope() -> u64 {
    0
}

#[cfg(feature = "pg_test")]
fn scope() -> u64 {
    // SAFETY: inside a transaction, as every caller is.
    u64::from(unsafe { pg_sys::GetTopTransactionId() }.into_inner())
}

/// The challenge being guessed, as its locked row says.
pub struct Challenge {
    pub id: i64,
    pub attempts_used: i32,
    pub max_attempts: i32,
    pub expires_at: i64,
}

/// The person whose code it is, as their locked failure record says, and
/// the agent's lockout rule.
pub struct Person<'a> {
    pub agent: &'a str,
    pub subject: &'a str,
    pub failures: i32,
    pub locked_until: Option<i64>,
    pub lockout_threshold: i32,
    /// When a lockout starting now would end (now + lockout_duration).
    pub lockout_end: i64,
}

/// What a guess came to, decided before any of it can be seen.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    /// A right code was already used here, by a verification whose
    /// transaction did not commit: the code counts as used.
    Used,
    /// The person is locked out; nothing was compared.
    LockedOut,
    /// The code has no attempts left; nothing was compared.
    Exhausted,
    /// Counted, then compared: right.
    Right,
    /// Counted, then compared: wrong. `attempts_used` of the code so far;
    /// `locked_out` when this failure reached the lockout threshold.
    Wrong {
        attempts_used: i32,
        locked_out: bool,
    },
}

/// A judgement and the person's failure record after it, which the caller
/// writes to otp.subject_guard.
pub struct Guess {
    pub judgement: Judgement,
    pub failures: i32,
    pub locked_until: Option<i64>,
}

/// Counts a guess at `challenge`, then runs `matches` (the constant-time
/// comparison) and records its outcome, all under the ledger's lock. The
/// caller then writes the same outcome to the tables; when its transaction
/// commits, the ledger forgets what the tables now hold.
pub fn guess(
    challenge: &Challenge,
    person: &Person<'_>,
    now: i64,
    matches: impl FnOnce() -> bool,
) -> Result<Guess> {
    let challenge_key = Key::challenge(challenge.id);
    let person_key = Key::person(person.agent, person.subject);
    let holder = Key::holder();
    let mut ledger = Locked::exclusive();
    // Both entries exist before anything is compared: a full ledger fails
    // closed here, not after an answer was computed.
    let durable_challenge = State {
        count: challenge.attempts_used,
        until: challenge.expires_at,
        ..State::default()
    };
    let durable_person = State {
        count: person.failures,
        until: person.locked_until.unwrap_or(0),
        ..State::default()
    };
    if let Err(refusal) = make_room(&mut ledger, &[challenge_key, person_key], &holder, now) {
        drop(ledger);
        return Err(refusal);
    }
    let mut c = ledger
        .get_or_insert(&challenge_key, durable_challenge, &holder)
        .map(|e| e.state)
        .expect("room was made");
    let mut p = ledger
        .get_or_insert(&person_key, durable_person, &holder)
        .map(|e| e.state)
        .expect("room was made");
    // Attempts only grow; a lockout only lengthens. The failure count of an
    // existing entry is the newer truth (a right code resets it at once).
    c.count = c.count.max(challenge.attempts_used);
    p.until = p.until.max(durable_person.until);

    let (judgement, challenge_ends) = if c.consumed {
        (Judgement::Used, true)
    } else if p.until > now {
        (Judgement::LockedOut, true)
    } else if c.count >= challenge.max_attempts {
        (Judgement::Exhausted, true)
    } else {
        c.count += 1;
        if matches() {
            c.consumed = true;
            p.count = 0;
            (Judgement::Right, true)
        } else {
            p.count += 1;
            p.forget_at = person.lockout_end;
            let locked_out = p.count >= person.lockout_threshold;
            if locked_out {
                p.until = person.lockout_end;
                p.count = 0;
            }
            let attempts_used = c.count;
            (
                Judgement::Wrong {
                    attempts_used,
                    locked_out,
                },
                locked_out || attempts_used >= challenge.max_attempts,
            )
        }
    };
    if let Some(entry) = ledger.get_or_insert(&challenge_key, c, &holder) {
        entry.state = c;
    }
    if let Some(entry) = ledger.get_or_insert(&person_key, p, &holder) {
        entry.state = p;
    }
    drop(ledger);

    // What this transaction's writes will make of the tables.
    settle::expect(
        challenge_key,
        if challenge_ends {
            settle::Expect::Ended
        } else {
            settle::Expect::Holds(c)
        },
    );
    settle::expect(person_key, settle::Expect::Holds(p));
    Ok(Guess {
        judgement,
        failures: p.count,
        locked_until: (p.until != 0).then_some(p.until),
    })
}

/// Makes sure `keys` have entries or there is room for them within the
/// ledger and within `holder`'s share of it, forgetting entries that know
/// nothing the tables do not or that have outlived their use: challenges
/// whose code has expired, people without a running lockout whose failures
/// are settled or older than the lockout duration.
fn make_room(ledger: &mut Locked, keys: &[Key], holder: &Key, now: i64) -> Result<()> {
    let missing = keys.iter().filter(|key| ledger.get(key).is_none()).count() as i64;
    if missing == 0 {
        return Ok(());
    }
    let share = ledger.capacity() / SHARES;
    let room = |ledger: &mut Locked| {
        let holder_missing = i64::from(ledger.get(holder).is_none());
        (
            ledger.len() + missing + holder_missing <= ledger.capacity(),
            ledger.held_by(holder) + missing <= share,
        )
    };
    if room(ledger) == (true, true) {
        return Ok(());
    }
    ledger.remove_where(|key, state| match key.kind {
        k if k == Kind::Challenge as u32 => state.until <= now,
        _ => state.until <= now && (state.count == 0 || state.forget_at <= now),
    });
    match room(ledger) {
        (true, true) => Ok(()),
        (_, false) => Err(full(
            "This role holds its share (a quarter) of the ledger: guesses it made whose transactions rolled back.",
        )),
        (false, true) => Err(full(
            "The ledger remembers guesses whose transactions rolled back; it is full of ones it cannot forget yet.",
        )),
    }
}

fn full(detail: &str) -> OtpError {
    OtpError::new(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        "pg_otp: the attempt ledger is full; no code can be checked until it has room",
    )
    .with_detail(detail)
    .with_hint(
        "Entries are forgotten when their code expires or after the agent's lockout_duration; \
         otp.ledger_size (postgresql.conf, needs a restart) sets its size.",
    )
}

/// What the ledger knows of a challenge beyond its row: attempts used
/// (including rolled-back ones) and whether a right code was used.
pub fn challenge(challenge_id: i64) -> Option<State> {
    if !table::available() {
        return None;
    }
    let key = Key::challenge(challenge_id);
    let mut ledger = Locked::shared();
    ledger.get(&key).map(|e| e.state)
}

/// The end of a lockout the ledger knows of, beyond the person's row.
pub fn locked_until(agent: &str, subject: &str) -> Option<i64> {
    if !table::available() {
        return None;
    }
    let key = Key::person(agent, subject);
    let mut ledger = Locked::shared();
    ledger
        .get(&key)
        .map(|e| e.state.until)
        .filter(|until| *until != 0)
}

/// Forgets a person's failures and lockout (otp_unlock). True when the
/// ledger held any.
pub fn forget_person(agent: &str, subject: &str) -> bool {
    if !table::available() {
        return false;
    }
    let key = Key::person(agent, subject);
    let mut ledger = Locked::exclusive();
    let held = ledger
        .get(&key)
        .is_some_and(|entry| entry.state.count > 0 || entry.state.until != 0);
    ledger.remove(&key);
    held
}

/// Sets up the ledger in shared memory; from _PG_init while preloading.
/// (Its per-transaction part runs from `xact`'s callbacks.)
pub fn init(size: i64) {
    table::request(size);
}
