//! pg_otp: one-time-code verification and authenticated conversation sessions,
//! enforced inside PostgreSQL.
//!
//! Layout, one module per concept:
//! - `api`       — the SQL functions applications and dispatchers call
//! - `audit`     — the append-only event trail
//! - `config`    — agent settings ("Authenticate conversation") and their validation
//! - `record`    — finding the person behind an identifier; channel choice and masking
//! - `challenge` — issuing and verifying codes
//! - `limits`    — send limits and lockout (abuse resistance)
//! - `session`   — authenticated conversation sessions
//! - `outbox`    — messages for the delivery process and its claim/report protocol
//! - `purge`     — deleting old rows (function and background worker)
//! - `crypto`    — code generation, keyed hashes, sealing, tokens
//! - `prepared`  — SQL statements prepared once per backend
//! - `gucs`      — configuration parameters (the server secret)
//! - `clock`     — how deadlines are judged
//! - `errors`    — ERRORs with SQLSTATEs
//!
//! Storage is in `sql/schema.sql`; privileges in `sql/privileges.sql`.

use pgrx::prelude::*;

mod api;
mod audit;
mod challenge;
mod clock;
mod config;
mod crypto;
mod errors;
mod gucs;
mod limits;
mod outbox;
mod prepared;
mod purge;
mod record;
mod session;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

/// The test cluster's otp.previous_secret_key: it runs as a server does
/// during a key rotation. A fixed test value; never use it anywhere else.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) const TEST_PREVIOUS_SECRET: &str =
    "70726576696f75732d746573742d7365637265742d6e6f742d666f722d70726f64";

/// Required by `cargo pgrx test`: settings of the throwaway test cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_otp'",
            // A fixed test secret; never use it anywhere else.
            "otp.secret_key = '6f74702d746573742d7365637265742d6e6f742d666f722d70726f64756374696f6e'",
            // A leak of a few bytes, once per test run.
            Box::leak(
                format!("otp.previous_secret_key = '{}'", crate::TEST_PREVIOUS_SECRET)
                    .into_boxed_str(),
            ),
        ]
    }
}
