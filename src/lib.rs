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
//! - `ledger`    — attempts counted in shared memory, where no rollback reaches
//! - `locks`     — locks that serialise code issue, out of reach of SQL
//! - `restricted`— running a source's SQL with its owner's rights only
//! - `session`   — authenticated conversation sessions
//! - `binding`   — the person a transaction acts for (session_use, otp_subject)
//! - `xact`      — transaction ends, for the ledger and the binding
//! - `schema`    — what the installed schema offers (upgrades)
//! - `delivery`  — the outbox: messages for the delivery process, its claim, reports and sweep
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
mod binding;
mod challenge;
mod clock;
mod config;
mod crypto;
mod delivery;
mod errors;
mod gucs;
mod ledger;
mod limits;
mod locks;
mod prepared;
mod purge;
mod record;
mod redact;
mod restricted;
mod schema;
mod session;
mod shmem;
mod xact;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    silence_rust_backtraces();
    // SAFETY: read once, in the process that is loading the library.
    let (preloading, creating_extension) = unsafe {
        (
            pg_sys::process_shared_preload_libraries_in_progress,
            pg_sys::creating_extension,
        )
    };
    if !preloading && creating_extension {
        // CREATE EXTENSION (or ALTER EXTENSION UPDATE) loaded the library in
        // a server that did not preload it: pg_otp could keep none of its
        // promises (hidden secret, attempt ledger). An ERROR, not the FATAL
        // PostgreSQL would raise later: the DBA keeps the connection.
        errors::OtpError::not_preloaded().raise();
    }
    gucs::init(preloading);
    if preloading {
        ledger::init(gucs::ledger_size());
        xact::register_callbacks();
        locks::init();
        purge::register_worker();
        delivery::wake::init();
        shmem::init();
        gucs::hide_secret_values_in_the_server_log();
    }
}

/// pgrx attaches a Rust backtrace to the DETAIL of every ERROR when
/// RUST_BACKTRACE (or RUST_LIB_BACKTRACE) is set in the server's
/// environment, and clients see it: internals nobody should rely on an
/// operator to keep out. The standard library decides once per library
/// whether to capture backtraces; decide it here, as "never", and leave the
/// environment as it was for everything else in the process.
fn silence_rust_backtraces() {
    const VARIABLE: &str = "RUST_LIB_BACKTRACE";
    let previous = std::env::var_os(VARIABLE);
    std::env::set_var(VARIABLE, "0");
    drop(std::backtrace::Backtrace::capture());
    match previous {
        Some(value) => std::env::set_var(VARIABLE, value),
        None => std::env::remove_var(VARIABLE),
    }
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
