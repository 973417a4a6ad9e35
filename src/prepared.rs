//! Statements prepared once per backend and kept for its lifetime.
//!
//! Every statement pg_otp runs has fixed text and bound parameters. Run as
//! plain text, SPI parses, analyses and plans it on every call, which was
//! most of the cost of an authentication. Here each distinct text is prepared
//! on first use (`SPI_prepare` + `SPI_keepplan`) and reused; PostgreSQL's
//! plan cache then decides between custom and generic plans, and replans by
//! itself when a table the statement uses changes (ALTER, ANALYZE, an
//! extension update, DROP and CREATE EXTENSION).
//!
//! A plan is prepared for the parameter types of its first call. Passing
//! other types later would hand PostgreSQL datums of the wrong type, so every
//! call checks them, and a mismatch is an internal error, never a crash.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::PgSqlErrorCode;

use crate::errors::{OtpError, Result};

/// More distinct texts than this means statements built from changing input
/// (a source relation renamed many times, say): start over rather than grow.
const MAX_KEPT: usize = 256;

struct Kept {
    statement: OwnedPreparedStatement,
    types: Vec<pg_sys::Oid>,
}

thread_local! {
    // A backend is one thread; the map lives as long as the connection.
    static KEPT: RefCell<HashMap<Box<str>, Rc<Kept>>> = RefCell::new(HashMap::new());
}

/// Runs a read-only statement.
pub fn select<'conn>(
    client: &SpiClient<'conn>,
    sql: &str,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>> {
    let kept = kept(client, sql, args)?;
    Ok(client.select(&kept.statement, limit, args)?)
}

/// Runs a statement that writes or locks (it makes the SPI session
/// read-write, so it sees and takes a fresh snapshot).
pub fn update<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &str,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>> {
    let kept = kept(client, sql, args)?;
    Ok(client.update(&kept.statement, limit, args)?)
}

/// The kept plan for `sql`, prepared now if this backend has not seen it.
fn kept(client: &SpiClient<'_>, sql: &str, args: &[DatumWithOid<'_>]) -> Result<Rc<Kept>> {
    // The Rc is cloned out so that no borrow is held while PostgreSQL runs
    // the statement (which could, through a user's view, call pg_otp again).
    if let Some(kept) = KEPT.with(|map| map.borrow().get(sql).cloned()) {
        check_types(sql, &kept.types, args)?;
        return Ok(kept);
    }
    let types: Vec<pg_sys::Oid> = args.iter().map(DatumWithOid::oid).collect();
    let oids: Vec<PgOid> = types.iter().copied().map(PgOid::from).collect();
    let statement = client.prepare(sql, &oids)?.keep();
    let kept = Rc::new(Kept { statement, types });
    KEPT.with(|map| {
        let mut map = map.borrow_mut();
        if map.len() >= MAX_KEPT {
            map.clear();
        }
        map.insert(sql.into(), Rc::clone(&kept));
    });
    Ok(kept)
}

fn check_types(sql: &str, types: &[pg_sys::Oid], args: &[DatumWithOid<'_>]) -> Result<()> {
    let matches =
        types.len() == args.len() && types.iter().zip(args).all(|(oid, arg)| *oid == arg.oid());
    if matches {
        return Ok(());
    }
    Err(OtpError::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        "pg_otp: internal statement called with parameter types it was not prepared for",
    )
    .with_detail(sql.split_whitespace().collect::<Vec<_>>().join(" ")))
}
