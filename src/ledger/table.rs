//! The ledger's storage: a PostgreSQL shared hash table (dynahash, as
//! pg_stat_statements uses) of fixed size, created at server start and
//! guarded by one LWLock. Everything unsafe about it is in this file.

use std::ffi::CStr;
use std::mem::size_of;
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering};

use pgrx::pg_sys;

use super::{Key, State};

const NAME: &CStr = c"pg_otp attempt ledger";

/// One entry: what the ledger knows of a challenge or a person, and the
/// holder it is counted against. A holder's own entry (whose `holder` is
/// its own key) counts, in `held`, the entries it holds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Entry {
    key: Key,
    pub state: State,
    holder: Key,
    held: i64,
}

// Where the table lives in shared memory, and its lock: set in the
// postmaster at start-up (again after a crash restart, which makes shared
// memory anew) and inherited by every backend it starts.
static TABLE: AtomicPtr<pg_sys::HTAB> = AtomicPtr::new(std::ptr::null_mut());
static LOCK: AtomicPtr<pg_sys::LWLock> = AtomicPtr::new(std::ptr::null_mut());
static CAPACITY: AtomicI64 = AtomicI64::new(0);

/// Sets the table's capacity (from _PG_init, while the library is being
/// preloaded); `shmem` asks for the space and attaches.
pub fn request(capacity: i64) {
    CAPACITY.store(capacity, Ordering::Relaxed);
}

/// The table's space and lock, asked for while shared memory is sized.
pub fn request_space() {
    let capacity = CAPACITY.load(Ordering::Relaxed);
    // SAFETY: called by the postmaster from the shared-memory request hook.
    unsafe {
        pg_sys::RequestAddinShmemSpace(pg_sys::hash_estimate_size(capacity, size_of::<Entry>()));
        pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), 1);
    }
}

/// Creates or finds the table; from the start-up hook, under
/// AddinShmemInitLock (again after a crash restart).
pub fn attach() {
    let mut info = pg_sys::HASHCTL {
        keysize: size_of::<Key>(),
        entrysize: size_of::<Entry>(),
        ..Default::default()
    };
    let capacity = CAPACITY.load(Ordering::Relaxed);
    // SAFETY: shared memory exists and the caller holds AddinShmemInitLock.
    unsafe {
        let table = pg_sys::ShmemInitHash(
            NAME.as_ptr(),
            capacity,
            capacity,
            &mut info,
            (pg_sys::HASH_ELEM | pg_sys::HASH_BLOBS) as i32,
        );
        TABLE.store(table, Ordering::Relaxed);
        LOCK.store(
            &raw mut (*pg_sys::GetNamedLWLockTranche(NAME.as_ptr())).lock,
            Ordering::Relaxed,
        );
    }
}

/// Whether the table exists (the library was preloaded).
pub fn available() -> bool {
    !TABLE.load(Ordering::Relaxed).is_null()
}

/// The table, locked for the life of this value. Nothing that can raise an
/// ERROR may run while it is held: the lock is released on drop (and by
/// PostgreSQL's LWLockReleaseAll should an ERROR happen anyway).
pub struct Locked {
    table: *mut pg_sys::HTAB,
    lock: *mut pg_sys::LWLock,
    capacity: i64,
}

impl Locked {
    pub fn exclusive() -> Self {
        Self::acquire(pg_sys::LWLockMode::LW_EXCLUSIVE)
    }

    pub fn shared() -> Self {
        Self::acquire(pg_sys::LWLockMode::LW_SHARED)
    }

    fn acquire(mode: pg_sys::LWLockMode::Type) -> Self {
        let (table, lock) = (TABLE.load(Ordering::Relaxed), LOCK.load(Ordering::Relaxed));
        assert!(
            !table.is_null(),
            "the pg_otp ledger is not in shared memory"
        );
        // SAFETY: a valid LWLock of our tranche, set with the table.
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        Locked {
            table,
            lock,
            capacity: CAPACITY.load(Ordering::Relaxed),
        }
    }

    pub fn get(&mut self, key: &Key) -> Option<&mut Entry> {
        // SAFETY: a key of the table's key size; the entry lives in shared
        // memory for as long as it is not removed, and we hold the lock.
        unsafe {
            let entry = pg_sys::hash_search(
                self.table,
                std::ptr::from_ref(key).cast(),
                pg_sys::HASHACTION::HASH_FIND,
                std::ptr::null_mut(),
            );
            entry.cast::<Entry>().as_mut()
        }
    }

    /// The entry for `key`, made with `initial` and counted against
    /// `holder` if there was none; None when the table is full.
    pub fn get_or_insert(&mut self, key: &Key, initial: State, holder: &Key) -> Option<&mut Entry> {
        if self.get(key).is_none() {
            let holder_missing = i64::from(self.get(holder).is_none());
            if self.len() + 1 + holder_missing > self.capacity {
                return None;
            }
            let counter = self.enter(holder)?;
            if counter.0 {
                counter.1.holder = *holder;
                counter.1.held = 0;
                counter.1.state = State::default();
            }
            counter.1.held += 1;
            let (new, entry) = self.enter(key)?;
            if new {
                entry.state = initial;
                entry.holder = *holder;
                entry.held = 0;
            }
        }
        self.get(key)
    }

    /// The entry for `key`, created (uninitialised but for its key) when
    /// missing: (created, entry).
    fn enter(&mut self, key: &Key) -> Option<(bool, &mut Entry)> {
        let mut found = false;
        // SAFETY: as in `get`; HASH_ENTER_NULL returns NULL instead of
        // raising an ERROR when out of memory.
        let entry = unsafe {
            pg_sys::hash_search(
                self.table,
                std::ptr::from_ref(key).cast(),
                pg_sys::HASHACTION::HASH_ENTER_NULL,
                &mut found,
            )
            .cast::<Entry>()
            .as_mut()?
        };
        Some((!found, entry))
    }

    /// How many entries are counted against `holder`.
    pub fn held_by(&mut self, holder: &Key) -> i64 {
        self.get(holder).map_or(0, |entry| entry.held)
    }

    /// Removes the entry for `key`, and its holder's entry once it holds
    /// nothing more.
    pub fn remove(&mut self, key: &Key) {
        let Some(holder) = self.get(key).map(|entry| entry.holder) else {
            return;
        };
        self.delete(key);
        if holder == *key {
            return;
        }
        if let Some(counter) = self.get(&holder) {
            counter.held -= 1;
            if counter.held <= 0 {
                self.delete(&holder);
            }
        }
    }

    fn delete(&mut self, key: &Key) {
        // SAFETY: as in `get`.
        unsafe {
            pg_sys::hash_search(
                self.table,
                std::ptr::from_ref(key).cast(),
                pg_sys::HASHACTION::HASH_REMOVE,
                std::ptr::null_mut(),
            );
        }
    }

    pub fn len(&self) -> i64 {
        // SAFETY: a valid table.
        unsafe { pg_sys::hash_get_num_entries(self.table) }
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Removes every entry (holders' own excepted) for which `forget` is
    /// true, then the holders left holding nothing.
    pub fn remove_where(&mut self, mut forget: impl FnMut(&Key, &State) -> bool) {
        self.scan_removing(|table, entry| {
            if entry.holder == entry.key || !forget(&entry.key, &entry.state) {
                return false;
            }
            // Changing a field of another entry does not disturb the scan;
            // removing it would, so emptied holders go in a second pass.
            if let Some(counter) = table.get(&entry.holder) {
                counter.held -= 1;
            }
            true
        });
        self.scan_removing(|_, entry| entry.holder == entry.key && entry.held <= 0);
    }

    /// One sequential scan that removes each entry for which `doomed` is
    /// true (dynahash allows removing the element a scan has just returned).
    fn scan_removing(&mut self, mut doomed: impl FnMut(&mut Self, &Entry) -> bool) {
        // SAFETY: a sequential scan of a valid table under our lock, run to
        // its end (which releases it); entries are copied before removal.
        unsafe {
            let mut scan = std::mem::MaybeUninit::<pg_sys::HASH_SEQ_STATUS>::uninit();
            pg_sys::hash_seq_init(scan.as_mut_ptr(), self.table);
            loop {
                let entry = pg_sys::hash_seq_search(scan.as_mut_ptr()).cast::<Entry>();
                let Some(entry) = entry.as_ref().copied() else {
                    break;
                };
                if doomed(self, &entry) {
                    self.delete(&entry.key);
                }
            }
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: acquired in `acquire`.
        unsafe { pg_sys::LWLockRelease(self.lock) };
    }
}
