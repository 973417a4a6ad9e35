//! Time, as pg_otp judges deadlines.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;

/// The wall-clock time of this call: what clock_timestamp() returns, read
/// without a query. pg_otp judges deadlines by it, not by now(): a code must
/// not stay valid for the length of a long transaction.
pub fn now() -> TimestampWithTimeZone {
    // SAFETY: GetCurrentTimestamp only reads the system clock.
    let micros = unsafe { pg_sys::GetCurrentTimestamp() };
    TimestampWithTimeZone::try_from(micros).expect("the system clock is a finite timestamp")
}
