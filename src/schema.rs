//! Which version of pg_otp's schema this database has.
//!
//! A server restarted with a new pg_otp library runs it against every
//! database's installed schema until `ALTER EXTENSION pg_otp UPDATE` runs
//! there (docs/operations.md, Upgrading): pending codes, queued messages and sessions
//! must keep working meanwhile. So what a newer schema added is looked up
//! here, from the system caches (no query), and the code that needs it
//! falls back to the older behaviour until the update.

use std::ffi::CStr;

use pgrx::pg_sys;

/// What the installed schema offers.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    /// 0.3.0: sessions tied to the person's record (fingerprint columns,
    /// `record_changed` words), agents scoped to a role (`app_role`),
    /// delivery statuses (`delivered`, `read`; a `sent` message may keep
    /// its sealed code for a late fallback).
    pub records_and_roles: bool,
    /// 0.4.0: messages in the person's language and time zone
    /// (`otp.agent.language_column` and `time_zone_column`, the same columns
    /// of `otp.outbox`, returned by otp_outbox_claim).
    pub locales: bool,
    /// 0.4.0: the audit trail in weekly partitions (`otp.event.slot`),
    /// which the purge empties a week at a time.
    pub weekly_events: bool,
}

/// The schema of the current database.
pub fn installed() -> Schema {
    Schema {
        records_and_roles: has_column(c"session", c"record_changed_at"),
        locales: has_column(c"outbox", c"time_zone"),
        weekly_events: has_column(c"event", c"slot"),
    }
}

fn has_column(table: &CStr, column: &CStr) -> bool {
    // SAFETY: lsyscache lookups by name; each returns InvalidOid / 0 for
    // what does not exist.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"otp".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return false;
        }
        let relation = pg_sys::get_relname_relid(table.as_ptr(), namespace);
        relation != pg_sys::InvalidOid && pg_sys::get_attnum(relation, column.as_ptr()) > 0
    }
}
