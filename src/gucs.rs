//! Every configuration parameter of pg_otp, and the one place that reads them.
//!
//! `otp.secret_key` is the root of all keys: code hashes and the sealed codes in
//! the outbox are derived from it (see `crypto`). It is
//! - PGC_SIGHUP: set only in postgresql.conf or with ALTER SYSTEM, then reloaded;
//! - GUC_SUPERUSER_ONLY: SHOW, current_setting() and pg_settings hide it from
//!   everyone but superusers and members of pg_read_all_settings.
//!
//! The hiding only works in backends where this library defined the parameter.
//! In a backend that has not loaded pg_otp, PostgreSQL keeps a line from
//! postgresql.conf as a *placeholder* that any user can SHOW. That is why pg_otp
//! must be in `shared_preload_libraries`, and why the functions refuse to run
//! (fail closed) when it is not.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PgSqlErrorCode};

use crate::crypto::{KeyRing, Keys};
use crate::errors::{OtpError, Result};

/// The server secret: at least 32 random bytes, written as hex or base64.
pub static SECRET_KEY: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// The secret before the current one, kept during a rotation so that codes
/// and messages written under it stay usable.
pub static PREVIOUS_SECRET_KEY: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// Database the purge worker works in; unset: no worker (use pg_cron).
pub static PURGE_DATABASE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// Seconds between two purge passes of the worker.
pub static PURGE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(600);

/// Entries of the attempt ledger (see `ledger`): challenges and people with
/// guesses not yet committed. Each takes about 100 bytes of shared memory.
pub static LEDGER_SIZE: GucSetting<i32> = GucSetting::<i32>::new(40_000);

/// Smallest secret accepted, in bytes (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Defines the parameters. Those read only at server start exist only when
/// the library is preloaded: PostgreSQL refuses (FATAL) to define them later.
pub fn init(preloading: bool) {
    PRELOADED.store(preloading, Ordering::Relaxed);

    GucRegistry::define_string_guc(
        c"otp.secret_key",
        c"Server secret from which pg_otp derives its code-hashing and outbox-sealing keys.",
        c"At least 32 random bytes as hex or base64, e.g. the output of `openssl rand -hex 32`. \
          Set it in postgresql.conf or with ALTER SYSTEM, never per session.",
        &SECRET_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"otp.previous_secret_key",
        c"The secret before otp.secret_key, during a key rotation.",
        c"Codes and messages written under it stay usable until they expire. Same format and \
          protection as otp.secret_key; clear it once the rotation is over (after code_ttl).",
        &PREVIOUS_SECRET_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"otp.purge_interval",
        c"Seconds between two purge passes of the pg_otp background worker.",
        c"",
        &PURGE_INTERVAL,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    if preloading {
        GucRegistry::define_string_guc(
            c"otp.purge_database",
            c"Database served by the pg_otp background workers: they purge old rows and wake dispatchers there.",
            c"Unset: no worker runs; schedule SELECT otp_purge() with pg_cron instead, and each otp_issue \
              notifies the dispatchers itself. Needs a restart.",
            &PURGE_DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"otp.ledger_size",
            c"Entries of the pg_otp attempt ledger, which counts guesses no rollback can take back.",
            c"Challenges and people whose guesses are not yet committed. When it is full of entries it \
              cannot forget, verification fails (SQLSTATE 53400). Needs a restart.",
            &LEDGER_SIZE,
            100,
            10_000_000,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    // Refuse SET otp.typo = ... and drop placeholders for names we do not define.
    // SAFETY: a plain C call with a static NUL-terminated string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"otp".as_ptr()) };
}

/// Entries the attempt ledger is sized for.
pub fn ledger_size() -> i64 {
    i64::from(LEDGER_SIZE.get())
}

/// The names of the parameters that hold secrets.
const SECRET_NAMES: [&CStr; 2] = [c"otp.secret_key", c"otp.previous_secret_key"];

/// The untranslated text of the line PostgreSQL's postmaster logs for every
/// parameter a configuration reload changes.
const PARAMETER_CHANGED: &CStr = c"parameter \"%s\" changed to \"%s\"";

/// The log hook that was installed before ours; ours passes every line on.
static mut NEXT_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

/// On a reload the postmaster logs each changed parameter with its new value
/// ("parameter "otp.secret_key" changed to "…""), whatever its flags say, so
/// a key rotation would write both secrets into the server log. This hook,
/// installed in the postmaster (the library is preloaded), keeps those lines
/// but drops the value: the log says that a secret changed, never to what.
pub fn hide_secret_values_in_the_server_log() {
    // SAFETY: _PG_init runs once, in the postmaster, before any other process
    // exists; chaining to the previous hook keeps other extensions' hooks.
    unsafe {
        NEXT_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hide_secret_values);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn hide_secret_values(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the report being emitted; its strings are
    // NUL-terminated or NULL, and a replacement message must live in
    // ErrorContext like the original.
    unsafe {
        if let Some(report) = edata.as_mut() {
            if let Some(name) = changed_secret(report) {
                let hidden = format!(
                    "parameter \"{}\" changed (pg_otp does not log its value)",
                    name.to_string_lossy()
                );
                let hidden = std::ffi::CString::new(hidden).expect("no NUL in a parameter name");
                report.message = pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, hidden.as_ptr());
            }
        }
        if let Some(next) = NEXT_EMIT_LOG_HOOK {
            next(edata);
        }
    }
}

/// The secret parameter a "parameter changed" report is about, if any. The
/// message itself may be translated; its untranslated id and the parameter
/// name in it are not.
unsafe fn changed_secret(report: &pg_sys::ErrorData) -> Option<&'static CStr> {
    if report.message_id.is_null() || report.message.is_null() {
        return None;
    }
    // SAFETY: both checked non-NULL above, NUL-terminated by PostgreSQL.
    let (id, message) = unsafe {
        (
            CStr::from_ptr(report.message_id),
            CStr::from_ptr(report.message),
        )
    };
    if id != PARAMETER_CHANGED {
        return None;
    }
    let message = message.to_bytes();
    SECRET_NAMES.into_iter().find(|name| {
        let name = name.to_bytes();
        message.windows(name.len()).any(|window| window == name)
    })
}

/// The keys for this call, or an error saying exactly how to fix the setup.
/// Every function that touches codes calls this first, so a server without a
/// usable secret fails closed.
pub fn keys() -> Result<KeyRing> {
    require_preloaded()?;
    let current = secret_setting(&SECRET_KEY, "otp.secret_key")?
        .ok_or_else(|| unusable("otp.secret_key", "is not set"))?;
    let previous = secret_setting(&PREVIOUS_SECRET_KEY, "otp.previous_secret_key")?;
    Ok(KeyRing { current, previous })
}

/// The keys of a secret parameter, None when it is unset or empty.
fn secret_setting(
    setting: &GucSetting<Option<std::ffi::CString>>,
    name: &str,
) -> Result<Option<Keys>> {
    let value = setting.get();
    let raw = value.as_deref().map(CStr::to_bytes).unwrap_or_default();
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let secret = parse_secret(raw).map_err(|why| unusable(name, why))?;
    Ok(Some(Keys::derive(&secret)))
}

fn unusable(name: &str, why: &str) -> OtpError {
    OtpError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("pg_otp: {name} {why}")).with_hint(
        format!(
            "Set at least 32 random bytes as hex, e.g. ALTER SYSTEM SET {name} = '<output of openssl rand -hex 32>'; \
             then SELECT pg_reload_conf();"
        ),
    )
}

pub fn purge_database() -> Option<String> {
    PURGE_DATABASE
        .get()
        .and_then(|db| db.into_string().ok())
        .filter(|db| !db.is_empty())
}

pub fn purge_interval() -> std::time::Duration {
    std::time::Duration::from_secs(PURGE_INTERVAL.get().max(1) as u64)
}

fn require_preloaded() -> Result<()> {
    if PRELOADED.load(Ordering::Relaxed) {
        return Ok(());
    }
    Err(OtpError::not_preloaded())
}

/// Decodes the secret: hex when every character is a hex digit, base64 otherwise.
fn parse_secret(raw: &[u8]) -> std::result::Result<zeroize::Zeroizing<Vec<u8>>, &'static str> {
    use base64::Engine as _;
    let text = std::str::from_utf8(raw)
        .map_err(|_| "is not valid text")?
        .trim();
    if text.is_empty() {
        return Err("is not set");
    }
    let decoded = if text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| "has an odd number of hex digits")?
    } else {
        let unpadded = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(unpadded)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpadded))
            .map_err(|_| "is neither hex nor base64")?
    };
    let decoded = zeroize::Zeroizing::new(decoded);
    if decoded.len() < MIN_SECRET_BYTES {
        return Err("is too short: it must hold at least 32 bytes (64 hex digits)");
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::{changed_secret, parse_secret, PARAMETER_CHANGED};

    /// A report as PostgreSQL builds it; the rest stays zeroed.
    fn report(id: &CStr, message: &CStr) -> pgrx::pg_sys::ErrorData {
        // SAFETY: ErrorData is a plain C struct; NULL and zero are valid.
        let mut report: pgrx::pg_sys::ErrorData = unsafe { std::mem::zeroed() };
        report.message_id = id.as_ptr();
        report.message = message.as_ptr().cast_mut();
        report
    }

    #[test]
    fn reports_of_a_changed_secret_are_recognised_even_translated() {
        let cases: [(&CStr, Option<&CStr>); 5] = [
            (
                c"parameter \"otp.secret_key\" changed to \"00ff\"",
                Some(c"otp.secret_key"),
            ),
            (
                c"parameter \"otp.previous_secret_key\" changed to \"00ff\"",
                Some(c"otp.previous_secret_key"),
            ),
            (
                c"Parameter \u{201e}otp.secret_key\u{201c} ge\u{e4}ndert auf \u{201e}00ff\u{201c}",
                Some(c"otp.secret_key"),
            ),
            (c"parameter \"otp.purge_interval\" changed to \"5\"", None),
            (
                c"parameter \"work_mem\" changed to \"otp.secret_key\"",
                Some(c"otp.secret_key"),
            ),
        ];
        for (message, expected) in cases {
            // SAFETY: the report's strings outlive the call.
            let found = unsafe { changed_secret(&report(PARAMETER_CHANGED, message)) };
            assert_eq!(found, expected, "{message:?}");
        }
        // Other reports are left alone, even when they name a secret.
        let other = report(
            c"invalid value for parameter \"%s\": \"%s\"",
            c"otp.secret_key",
        );
        // SAFETY: as above.
        assert_eq!(unsafe { changed_secret(&other) }, None);
    }

    #[test]
    fn accepts_hex_and_base64_of_32_bytes() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert_eq!(parse_secret(hex.as_bytes()).unwrap().len(), 32);
        let b64 = "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=";
        assert_eq!(
            parse_secret(b64.as_bytes()).unwrap().as_slice(),
            hex::decode(hex).unwrap().as_slice()
        );
        let b64url = "ABEiM0RVZneImaq7zN3u_wARIjNEVWZ3iJmqu8zd7v8";
        assert_eq!(parse_secret(b64url.as_bytes()).unwrap().len(), 32);
    }

    #[test]
    fn rejects_missing_short_and_garbled_secrets() {
        assert_eq!(parse_secret(b"").unwrap_err(), "is not set");
        assert_eq!(parse_secret(b"   ").unwrap_err(), "is not set");
        assert!(parse_secret(b"00112233")
            .unwrap_err()
            .starts_with("is too short"));
        assert!(parse_secret(b"not a key!").is_err());
        assert!(parse_secret(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeef".as_bytes()
        )
        .is_err());
    }
}
