//! Errors a caller sees as `ERROR` with a SQLSTATE.
//!
//! pg_otp separates two kinds of outcome. Things the *end user* did (typed a
//! wrong code, waited too long) are data: a status word in the result row, so
//! the agent can branch on it. Things the *calling program or administrator*
//! did wrong (NULL arguments, an unknown agent, a missing secret) are errors
//! built here, each with a SQLSTATE, a sentence and, where useful, a hint.
//! No error message ever contains a code, a token or the secret.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub type Result<T> = std::result::Result<T, OtpError>;

#[derive(Debug)]
pub struct OtpError {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl OtpError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The sentence of the error, for logs.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 22004: a required argument was NULL.
    pub fn null_argument(name: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("pg_otp: argument \"{name}\" must not be NULL"),
        )
    }

    /// 22023: an argument has a value the function cannot accept.
    pub fn invalid_argument(name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("pg_otp: invalid value for argument \"{name}\": {why}"),
        )
    }

    /// 42704: the named agent was never configured.
    pub fn unknown_agent(agent: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("pg_otp: agent \"{agent}\" is not configured"),
        )
        .with_hint(
            "Configure it first with otp_configure(agent => ..., source => ..., id_column => ...).",
        )
    }

    /// 55000: the library was not loaded through shared_preload_libraries.
    pub fn not_preloaded() -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_otp: the pg_otp library must be loaded through shared_preload_libraries",
        )
        .with_detail(
            "Without it, otp.secret_key is visible to every user in sessions that have not loaded pg_otp, \
             and guesses could not be counted where no rollback reaches.",
        )
        .with_hint(
            "Add pg_otp to shared_preload_libraries in postgresql.conf (or ALTER SYSTEM SET \
             shared_preload_libraries = 'pg_otp'), restart PostgreSQL, then run this again.",
        )
    }

    /// Raise as a PostgreSQL ERROR; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "pg_otp");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR-level reports do not return")
    }
}

impl From<pgrx::spi::Error> for OtpError {
    // SPI errors here mean a query pg_otp wrote itself is wrong: a bug, not a caller error.
    fn from(err: pgrx::spi::Error) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("pg_otp: internal query failed: {err}"),
        )
    }
}

/// Unwraps a result at the SQL boundary, raising the error as a PostgreSQL ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|err| err.raise())
    }
}
