//! Locks that serialise code issue, out of reach of SQL.
//!
//! otp_issue must not run twice at once for the same conversation, person
//! or destination, or parallel requests could leave two pending codes or
//! overshoot a send limit. 0.2.0 used advisory locks with keys anyone could
//! compute (`hashtext('pg_otp:subject:payroll')`), so any role could hold
//! them and stall code issue for a person. These are advisory locks too,
//! in a space no SQL function reaches: pg_advisory_lock and friends always
//! set the fourth field of the lock tag to 1 or 2, pg_otp uses its own
//! value. The key is a keyed hash under a random salt drawn when the server
//! starts, so that pg_locks, which every role can read, shows no value that
//! could be linked to a person or a conversation. Like advisory
//! transaction locks, they are released when the (sub)transaction ends.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use pgrx::pg_sys;
use rand::TryRngCore;
use sha2::Sha256;

/// The fourth field of pg_otp's lock tags (SQL's advisory locks use 1 and 2).
const LOCK_SPACE: u16 = 0x4f54; // "OT"

/// What is being serialised.
#[derive(Clone, Copy)]
pub enum Scope {
    Conversation,
    Person,
    Destination,
}

/// Drawn in the postmaster when pg_otp is preloaded, and so the same in
/// every backend of this server run.
static SALT: OnceLock<[u8; 32]> = OnceLock::new();

/// Draws the salt; from _PG_init, in the postmaster.
pub fn init() {
    SALT.get_or_init(|| {
        let mut salt = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut salt)
            .expect("the operating system's random number generator works");
        salt
    });
}

/// Takes the lock on `parts` in `scope` until the end of the current
/// (sub)transaction, waiting for it like any lock (lock_timeout applies,
/// deadlocks are detected).
pub fn lock(scope: Scope, parts: &[&[u8]]) {
    crate::xact::refuse_prepare();
    let salt = SALT
        .get()
        .expect("pg_otp is preloaded (checked before any lock)");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(&[scope as u8]);
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    let word = |at: usize| u32::from_be_bytes(digest[at..at + 4].try_into().expect("4 bytes"));
    let tag = pg_sys::LOCKTAG {
        // SAFETY: set for the life of the backend.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.into(),
        locktag_field2: word(0),
        locktag_field3: word(4),
        locktag_field4: LOCK_SPACE,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: a complete tag; a transaction-scoped lock (sessionLock =
    // false) that waits (dontWait = false): it returns only once granted,
    // and raises an ERROR on a deadlock or lock timeout.
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        );
    }
}
