//! Time, as pg_otp judges deadlines.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;

use crate::errors::Result;

/// The wall-clock time of this call. pg_otp judges deadlines by
/// clock_timestamp(), not now(): a code must not stay valid for the length of
/// a long transaction.
pub fn now(client: &SpiClient<'_>) -> Result<TimestampWithTimeZone> {
    Ok(client
        .select("SELECT pg_catalog.clock_timestamp()", Some(1), &[])?
        .first()
        .get_one::<TimestampWithTimeZone>()?
        .expect("clock_timestamp() is never NULL"))
}
