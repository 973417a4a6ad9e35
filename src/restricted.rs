//! Running SQL that others control with their rights, and nothing more.
//!
//! Finding a person means querying the agent's source relation, and a
//! relation can run its owner's code: a function in a view, a cast of the
//! id column, a policy, a foreign table's handler. pg_otp's functions run
//! as the role that owns pg_otp (SECURITY DEFINER), so that code would run
//! with pg_otp's rights; in 0.2.0, those of the superuser who installed it.
//! Instead, the lookup runs as the relation's owner, in a
//! security-restricted operation, exactly as PostgreSQL runs ANALYZE,
//! CREATE INDEX and REFRESH MATERIALIZED VIEW on a user's table: the
//! owner's code can do what the owner can, cannot SET ROLE or create
//! temporary objects, and any setting it changes is undone afterwards.
//!
//! On an ERROR inside, the (sub)transaction's abort restores the user and
//! settings, as it does for PostgreSQL's own callers.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::errors::{OtpError, Result};

/// The owner of a relation.
pub fn owner(relation: pg_sys::Oid) -> Result<pg_sys::Oid> {
    // SAFETY: a syscache lookup by OID; the tuple is released before return.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relation),
        );
        if tuple.is_null() {
            return Err(OtpError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "pg_otp: the source relation (OID {}) no longer exists",
                    relation.to_u32()
                ),
            ));
        }
        let class = pgrx::pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>();
        let owner = (*class).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Ok(owner)
    }
}

const SAFE_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// Runs `work` as `owner` in a security-restricted operation, with
/// search_path pinned, undoing every setting `work` changes.
pub fn as_owner<T>(owner: pg_sys::Oid, work: impl FnOnce() -> T) -> T {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: the same calls, in the same order, as PostgreSQL's own
    // RefreshMatViewByOid and do_analyze_rel.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest_level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            SAFE_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        nest_level
    };
    let result = work();
    // SAFETY: undoes the above, settings first.
    unsafe {
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    }
    result
}
