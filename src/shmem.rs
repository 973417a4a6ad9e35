//! The library's one pair of shared-memory hooks. Each part of pg_otp that
//! keeps state in shared memory (the attempt ledger's table, the wake
//! worker's flags) says here how much it needs and attaches to it once it
//! exists; the hooks chain to those of other libraries.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{delivery, ledger};

static mut PREVIOUS_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREVIOUS_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Installs the hooks; from _PG_init, while the library is being preloaded,
/// after the parts have read their settings.
pub fn init() {
    // SAFETY: _PG_init runs once, in the postmaster, before any other
    // process exists; the previous hooks are chained.
    unsafe {
        PREVIOUS_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_request);
        PREVIOUS_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_request() {
    // SAFETY: called by the postmaster while shared memory is being sized.
    unsafe {
        if let Some(previous) = PREVIOUS_REQUEST_HOOK {
            previous();
        }
    }
    ledger::table::request_space();
    delivery::wake::request_space();
}

#[pg_guard]
unsafe extern "C-unwind" fn on_startup() {
    // SAFETY: called by the postmaster once shared memory exists (again
    // after a crash restart, which makes it anew); the parts attach under
    // AddinShmemInitLock, as every add-in does.
    unsafe {
        if let Some(previous) = PREVIOUS_STARTUP_HOOK {
            previous();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        ledger::table::attach();
        delivery::wake::attach();
        pg_sys::LWLockRelease(init_lock);
    }
}
