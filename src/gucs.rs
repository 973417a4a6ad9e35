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

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgSqlErrorCode};

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

/// Smallest secret accepted, in bytes (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

static PRELOADED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: read once in _PG_init, in the process that is loading the library.
    let preloading = unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress };
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
    GucRegistry::define_string_guc(
        c"otp.purge_database",
        c"Database in which the pg_otp background worker purges old rows.",
        c"Unset: no worker runs; schedule SELECT otp_purge() with pg_cron instead. Needs a restart.",
        &PURGE_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
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
        crate::purge::register_worker();
    }
    // Refuse SET otp.typo = ... and drop placeholders for names we do not define.
    // SAFETY: a plain C call with a static NUL-terminated string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"otp".as_ptr()) };
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
    Err(OtpError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "pg_otp: the pg_otp library must be loaded through shared_preload_libraries",
    )
    .with_detail("Without it, otp.secret_key is visible to every user in sessions that have not loaded pg_otp.")
    .with_hint("Add pg_otp to shared_preload_libraries in postgresql.conf and restart PostgreSQL."))
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
    use super::parse_secret;

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
