//! Agent configuration: the "Authenticate conversation" settings of one agent.
//!
//! An administrator points an agent at a table or view of people (`source`),
//! names the column that identifies a person and the columns holding their
//! WhatsApp number and email. pg_otp validates all of it when it is written
//! and again whenever it is used, because tables change under configuration.

use std::ffi::{CStr, CString};

use pgrx::datum::{DatumWithOid, Interval};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgRelation;
use pgrx::PgSqlErrorCode;

use crate::errors::{OtpError, Result};
use crate::{challenge, clock, prepared, record, schema, session};

/// Limits on identifiers the application passes in (bytes).
pub const MAX_AGENT_LEN: usize = 128;
pub const MAX_CONVERSATION_LEN: usize = 512;

pub use otp_common::Channel;

/// One agent's settings, as stored in otp.agent.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub source: pg_sys::Oid,
    pub id_column: String,
    pub phone_column: Option<String>,
    pub email_column: Option<String>,
    pub require_otp: bool,
    pub code_ttl: Interval,
    pub max_attempts: i32,
    pub idle_timeout: Interval,
    pub absolute_timeout: Interval,
    pub preferred_channel: Channel,
    pub limits: Limits,
    /// Whether otp_issue may say `not_found` / `no_channel`; when false, a
    /// decoy challenge answers as if a code had been sent.
    pub reveal_unknown: bool,
    /// Only members of this role may act for the agent (None: any caller
    /// allowed to execute the functions, i.e. any member of otp_app).
    pub app_role: Option<pg_sys::Oid>,
    /// What decoys look like (reveal_unknown = false; see `record::decoy`).
    pub decoy_shapes: Vec<String>,
    /// The source's column holding the person's language (a BCP 47 tag),
    /// passed to the dispatcher with each message; and the one holding their
    /// time zone (an IANA name).
    pub language_column: Option<String>,
    pub time_zone_column: Option<String>,
}

/// Abuse resistance settings of an agent (see `limits`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most this many codes per person, and per destination, ...
    pub max_codes: i32,
    /// ... within this window,
    pub code_window: Interval,
    /// and at least this long between two codes.
    pub resend_cooldown: Interval,
    /// Failed verifications in a row (across codes) that lock the person out ...
    pub lockout_threshold: i32,
    /// ... for this long.
    pub lockout_duration: Interval,
}

/// Everything otp_configure was given, before validation.
pub struct AgentSettings<'a> {
    pub agent: Option<&'a str>,
    /// The relation, locked (AccessShareLock) for the rest of the transaction.
    pub source: Option<PgRelation>,
    pub id_column: Option<&'a str>,
    pub phone_column: Option<&'a str>,
    pub email_column: Option<&'a str>,
    pub require_otp: Option<bool>,
    pub code_ttl: Option<Interval>,
    pub max_attempts: Option<i32>,
    pub idle_timeout: Option<Interval>,
    pub absolute_timeout: Option<Interval>,
    pub preferred_channel: Option<&'a str>,
    pub max_codes: Option<i32>,
    pub code_window: Option<Interval>,
    pub resend_cooldown: Option<Interval>,
    pub lockout_threshold: Option<i32>,
    pub lockout_duration: Option<Interval>,
    pub reveal_unknown: Option<bool>,
    /// A role name, or None for no restriction.
    pub app_role: Option<&'a str>,
    pub language_column: Option<&'a str>,
    pub time_zone_column: Option<&'a str>,
}

/// Checks an agent name argument: present, non-empty, bounded.
pub fn agent_name(agent: Option<&str>) -> Result<&str> {
    let agent = agent.ok_or_else(|| OtpError::null_argument("agent"))?;
    if agent.is_empty() || agent.len() > MAX_AGENT_LEN {
        return Err(OtpError::invalid_argument(
            "agent",
            format!("must be 1 to {MAX_AGENT_LEN} bytes long"),
        ));
    }
    Ok(agent)
}

/// Checks a conversation id argument: present, non-empty, bounded.
pub fn conversation_id(conversation: Option<&str>) -> Result<&str> {
    let conversation = conversation.ok_or_else(|| OtpError::null_argument("conversation"))?;
    if conversation.is_empty() || conversation.len() > MAX_CONVERSATION_LEN {
        return Err(OtpError::invalid_argument(
            "conversation",
            format!("must be 1 to {MAX_CONVERSATION_LEN} bytes long"),
        ));
    }
    Ok(conversation)
}

fn not_negative(name: &str, value: Option<Interval>) -> Result<Interval> {
    let value = value.ok_or_else(|| OtpError::null_argument(name))?;
    if value.as_micros() < 0 {
        return Err(OtpError::invalid_argument(name, "must not be negative"));
    }
    Ok(value)
}

fn within(name: &str, value: Option<i32>, range: std::ops::RangeInclusive<i32>) -> Result<i32> {
    let value = value.ok_or_else(|| OtpError::null_argument(name))?;
    if !range.contains(&value) {
        return Err(OtpError::invalid_argument(
            name,
            format!("must be between {} and {}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

fn positive(name: &str, value: Option<Interval>) -> Result<Interval> {
    let value = value.ok_or_else(|| OtpError::null_argument(name))?;
    if value.as_micros() <= 0 {
        return Err(OtpError::invalid_argument(
            name,
            "must be a positive interval",
        ));
    }
    Ok(value)
}

/// Optional column arguments: NULL and '' both mean "no such channel".
fn optional_column(value: Option<&str>) -> Option<&str> {
    value.filter(|c| !c.is_empty())
}

/// The upsert of an agent's row, with `$column` and `$value` added to the
/// insert (an optional column of a newer schema).
macro_rules! agent_upsert {
    ($column:literal, $value:literal) => {
        concat!(
            "INSERT INTO otp.agent AS a (name, source, id_column, phone_column, email_column, require_otp, code_ttl,
                                     max_attempts, idle_timeout, absolute_timeout, preferred_channel,
                                     max_codes, code_window, resend_cooldown, lockout_threshold,
                                     lockout_duration, reveal_unknown, created_at, updated_at",
            $column,
            ")
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp()",
            $value,
            ")
         ON CONFLICT (name) DO UPDATE SET
             source = EXCLUDED.source, id_column = EXCLUDED.id_column, phone_column = EXCLUDED.phone_column,
             email_column = EXCLUDED.email_column, require_otp = EXCLUDED.require_otp, code_ttl = EXCLUDED.code_ttl,
             max_attempts = EXCLUDED.max_attempts, idle_timeout = EXCLUDED.idle_timeout,
             absolute_timeout = EXCLUDED.absolute_timeout, preferred_channel = EXCLUDED.preferred_channel,
             max_codes = EXCLUDED.max_codes, code_window = EXCLUDED.code_window,
             resend_cooldown = EXCLUDED.resend_cooldown, lockout_threshold = EXCLUDED.lockout_threshold,
             lockout_duration = EXCLUDED.lockout_duration, reveal_unknown = EXCLUDED.reveal_unknown,
             updated_at = EXCLUDED.updated_at"
        )
    };
}

/// An agent's row, with `$app_role` for the app_role column.
macro_rules! agent_select {
    ($app_role:literal) => {
        concat!(
            "SELECT source::oid, id_column, phone_column, email_column, require_otp, code_ttl, max_attempts,
                    idle_timeout, absolute_timeout, preferred_channel,
                    max_codes, code_window, resend_cooldown, lockout_threshold, lockout_duration,
                    reveal_unknown, ",
            $app_role,
            " FROM otp.agent WHERE name = $1"
        )
    };
}

/// Validates and stores an agent's settings (create or replace).
pub fn configure(client: &mut SpiClient<'_>, settings: AgentSettings<'_>) -> Result<()> {
    let name = agent_name(settings.agent)?;
    let source = settings
        .source
        .ok_or_else(|| OtpError::null_argument("source"))?;
    let id_column = settings
        .id_column
        .filter(|c| !c.is_empty())
        .ok_or_else(|| OtpError::null_argument("id_column"))?;
    let phone_column = optional_column(settings.phone_column);
    let email_column = optional_column(settings.email_column);
    let language_column = optional_column(settings.language_column);
    let time_zone_column = optional_column(settings.time_zone_column);
    if phone_column.is_none() && email_column.is_none() {
        return Err(OtpError::invalid_argument(
            "phone_column",
            "at least one of phone_column and email_column is required",
        )
        .with_hint("Name the column holding the WhatsApp number, the email address, or both."));
    }
    let require_otp = settings
        .require_otp
        .ok_or_else(|| OtpError::null_argument("require_otp"))?;
    let code_ttl = positive("code_ttl", settings.code_ttl)?;
    let idle_timeout = positive("idle_timeout", settings.idle_timeout)?;
    let absolute_timeout = positive("absolute_timeout", settings.absolute_timeout)?;
    if idle_timeout.as_micros() > absolute_timeout.as_micros() {
        return Err(OtpError::invalid_argument(
            "idle_timeout",
            "must not be longer than absolute_timeout",
        ));
    }
    let max_attempts = within("max_attempts", settings.max_attempts, 1..=10)?;
    let limits = Limits {
        max_codes: within("max_codes", settings.max_codes, 1..=1_000_000)?,
        code_window: positive("code_window", settings.code_window)?,
        resend_cooldown: not_negative("resend_cooldown", settings.resend_cooldown)?,
        // NIST SP 800-63B 5.2.2: no more than 100 consecutive failed attempts.
        lockout_threshold: within("lockout_threshold", settings.lockout_threshold, 1..=100)?,
        lockout_duration: positive("lockout_duration", settings.lockout_duration)?,
    };
    let reveal_unknown = settings
        .reveal_unknown
        .ok_or_else(|| OtpError::null_argument("reveal_unknown"))?;
    let preferred = settings
        .preferred_channel
        .ok_or_else(|| OtpError::null_argument("preferred_channel"))?;
    let preferred = Channel::parse(preferred).ok_or_else(|| {
        OtpError::invalid_argument("preferred_channel", "must be 'whatsapp' or 'email'")
    })?;

    let mut columns = vec![("id_column", id_column)];
    columns.extend(phone_column.map(|c| ("phone_column", c)));
    columns.extend(email_column.map(|c| ("email_column", c)));
    columns.extend(language_column.map(|c| ("language_column", c)));
    columns.extend(time_zone_column.map(|c| ("time_zone_column", c)));
    // The role calling otp_configure (which runs as otp_owner).
    // SAFETY: set for the life of the session.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    check_may_configure(client, caller)?;
    check_source(source.oid(), &columns)?;
    check_owns_source(client, caller, source.oid())?;
    check_may_read(client, caller, source.oid(), &columns)?;
    // Replacing an agent takes the same rights over the source it had (so
    // that nobody can point another's agent at a table of their own), and
    // ends what was verified against the old source (see below).
    let previous = find(client, name)?;
    if let Some(previous) = &previous {
        if relation_exists(previous.source) {
            check_owns_source(client, caller, previous.source)?;
        }
    }
    if !reveal_unknown {
        check_exact_identifiers(client, source.oid(), id_column)?;
    }
    let app_role = settings.app_role.map(role_oid).transpose()?;
    let installed = schema::installed();
    if app_role.is_some() && !installed.records_and_roles {
        return Err(not_updated("app_role"));
    }
    if language_column.is_some() && !installed.locales {
        return Err(not_updated("language_column"));
    }
    if time_zone_column.is_some() && !installed.locales {
        return Err(not_updated("time_zone_column"));
    }

    // Until ALTER EXTENSION pg_otp UPDATE, the table lacks the columns of
    // the newer schemas (see `schema`); asking for them was refused above.
    let newer = installed.records_and_roles;
    let insert = if installed.locales {
        concat!(
            agent_upsert!(
                ", app_role, decoy_shapes, language_column, time_zone_column",
                ", $18, $19, $20, $21"
            ),
            ", app_role = EXCLUDED.app_role, decoy_shapes = EXCLUDED.decoy_shapes,
               language_column = EXCLUDED.language_column, time_zone_column = EXCLUDED.time_zone_column"
        )
    } else if newer {
        concat!(
            agent_upsert!(", app_role, decoy_shapes", ", $18, $19"),
            ", app_role = EXCLUDED.app_role, decoy_shapes = EXCLUDED.decoy_shapes"
        )
    } else {
        agent_upsert!("", "")
    };
    let decoy_shapes = if newer && !reveal_unknown {
        Some(record::decoy_shapes(
            client,
            &record::Lookup {
                source: source.oid(),
                id_column,
                phone_column,
                email_column,
                language_column,
                time_zone_column,
                preferred_channel: preferred,
            },
        )?)
    } else {
        None
    };
    let mut args: Vec<DatumWithOid<'_>> = vec![
        name.into(),
        source.oid().into(),
        id_column.into(),
        phone_column.into(),
        email_column.into(),
        require_otp.into(),
        code_ttl.into(),
        max_attempts.into(),
        idle_timeout.into(),
        absolute_timeout.into(),
        preferred.as_str().into(),
        limits.max_codes.into(),
        limits.code_window.into(),
        limits.resend_cooldown.into(),
        limits.lockout_threshold.into(),
        limits.lockout_duration.into(),
        reveal_unknown.into(),
    ];
    if newer {
        args.push(app_role.into());
        args.push(decoy_shapes.into());
    }
    if installed.locales {
        args.push(language_column.into());
        args.push(time_zone_column.into());
    }
    prepared::update(client, insert, None, &args)?;

    // Sessions and codes of the old source name people of that source: under
    // another source (or id column) the same identifier may be someone else.
    if let Some(previous) = previous {
        if previous.source != source.oid() || previous.id_column != id_column {
            let now = clock::now();
            session::revoke_agent(client, name, now)?;
            challenge::end_agent(client, name, now)?;
        }
    }
    Ok(())
}

/// Whether a relation with this OID exists.
fn relation_exists(relation: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by OID; 0 when there is none.
    unsafe { pg_sys::get_rel_relkind(relation) != 0 }
}

/// The OID of a role named in otp_configure (42704 when there is none).
fn role_oid(name: &str) -> Result<pg_sys::Oid> {
    let Ok(cname) = CString::new(name) else {
        return Err(OtpError::invalid_argument(
            "app_role",
            "contains a NUL byte",
        ));
    };
    // SAFETY: a NUL-terminated name; missing_ok returns InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(cname.as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("pg_otp: role \"{name}\" does not exist"),
        ));
    }
    Ok(oid)
}

/// A feature of a newer schema asked for before the update ran.
pub fn not_updated(what: &str) -> OtpError {
    OtpError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("pg_otp: {what} needs the current version of pg_otp's schema in this database"),
    )
    .with_hint("Run ALTER EXTENSION pg_otp UPDATE;")
}

/// Whether the role this session acts as (current_user outside any
/// SECURITY DEFINER function: the login role, or the one SET ROLE chose)
/// may act for `agent`: a member of its app_role, when it has one.
pub fn may_act_for(agent: &Agent) -> bool {
    match agent.app_role {
        None => true,
        // SAFETY: plain catalog lookups.
        Some(role) => unsafe { pg_sys::is_member_of_role(pg_sys::GetOuterUserId(), role) },
    }
}

/// Refuses (42501) a caller who may not act for `agent`.
pub fn check_caller(agent: &Agent) -> Result<()> {
    if may_act_for(agent) {
        return Ok(());
    }
    Err(OtpError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("pg_otp: this role may not act for agent \"{}\"", agent.name),
    )
    .with_hint("The agent's app_role (otp_configure) names the role whose members may act for it."))
}

/// Who may configure agents: a superuser, or a member of otp_admin.
/// otp_configure runs as otp_owner; nobody else writes otp.agent.
fn check_may_configure(client: &SpiClient<'_>, caller: pg_sys::Oid) -> Result<()> {
    let allowed = prepared::select(
        client,
        "SELECT r.rolsuper
                OR EXISTS (SELECT FROM pg_catalog.pg_roles a
                            WHERE a.rolname = 'otp_admin' AND pg_catalog.pg_has_role(r.oid, a.oid, 'USAGE'))
           FROM pg_catalog.pg_roles r WHERE r.oid = $1",
        Some(1),
        &[caller.into()],
    )?
    .first();
    let allowed = !allowed.is_empty() && allowed.get_one::<bool>()?.unwrap_or(false);
    if !allowed {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "pg_otp: only a superuser or a member of otp_admin may configure agents",
        )
        .with_hint("GRANT otp_admin TO the role that configures agents."));
    }
    Ok(())
}

/// The configuring role must have the rights of the source's owner (be a
/// member of it, or a superuser). Lookups run as that owner (see
/// `restricted`), past the row-level security and column grants that bind
/// everyone else; only someone who could read the whole relation anyway may
/// point an agent at it.
fn check_owns_source(
    client: &SpiClient<'_>,
    caller: pg_sys::Oid,
    source: pg_sys::Oid,
) -> Result<()> {
    // pg_has_role(…, 'USAGE') is PostgreSQL's ownership rule: the privileges
    // of the owning role, by membership or as a superuser.
    let owns = prepared::select(
        client,
        "SELECT pg_catalog.pg_has_role($2, c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1",
        Some(1),
        &[source.into(), caller.into()],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false);
    if owns {
        return Ok(());
    }
    Err(OtpError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "pg_otp: only the owner of the source relation (or a member of the owning role) may configure an agent on it",
    )
    .with_detail(
        "pg_otp looks people up as the source's owner, so row-level security and column privileges \
         that bind other roles do not apply to those lookups.",
    )
    .with_hint("Configure the agent as the owner of the relation, or as a member of its owning role."))
}

/// The configuring role must itself be able to read every configured column
/// of the source, since pg_otp reads them on its behalf (and hands phone
/// numbers and addresses to the dispatcher).
fn check_may_read(
    client: &SpiClient<'_>,
    caller: pg_sys::Oid,
    source: pg_sys::Oid,
    columns: &[(&str, &str)],
) -> Result<()> {
    for (argument, column) in columns {
        let readable = prepared::select(
            client,
            "SELECT pg_catalog.has_column_privilege($3, $1, $2, 'SELECT')",
            Some(1),
            &[source.into(), (*column).into(), caller.into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
        if !readable {
            return Err(OtpError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("pg_otp: you may not read column \"{column}\" ({argument}) of the source"),
            )
            .with_detail(
                "pg_otp reads the configured columns on behalf of whoever configures the agent.",
            )
            .with_hint("Configure the agent as a role that may SELECT those columns."));
        }
    }
    Ok(())
}

/// Hiding unknown identifiers (reveal_unknown => false) needs an id column
/// that compares exactly. Under a nondeterministic collation "e-77" finds
/// the person stored as "E-77", so both spellings share that person's send
/// limits, while two spellings of an unknown identifier would not: a way to
/// tell the two apart.
fn check_exact_identifiers(
    client: &SpiClient<'_>,
    source: pg_sys::Oid,
    id_column: &str,
) -> Result<()> {
    let inexact = prepared::select(
        client,
        "SELECT NOT co.collisdeterministic
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
          WHERE a.attrelid = $1 AND a.attname = $2",
        Some(1),
        &[source.into(), id_column.into()],
    )?
    .first();
    let inexact = if inexact.is_empty() {
        false
    } else {
        inexact.get_one::<bool>()?.unwrap_or(false)
    };
    if inexact {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "pg_otp: reveal_unknown => false needs an id column with a deterministic collation; \
                 \"{id_column}\" has a nondeterministic one"
            ),
        )
        .with_detail(
            "Under a nondeterministic collation, spellings of a real identifier share its limits while \
             spellings of an unknown one would not, which tells the two apart.",
        )
        .with_hint("Configure a view that exposes the identifier normalised (lower(), say) with a deterministic collation."));
    }
    Ok(())
}

/// Loads an agent, or fails with 42704 when it was never configured.
pub fn load(client: &SpiClient<'_>, name: &str) -> Result<Agent> {
    find(client, name)?.ok_or_else(|| OtpError::unknown_agent(name))
}

/// An agent's settings, if it was configured.
fn find(client: &SpiClient<'_>, name: &str) -> Result<Option<Agent>> {
    // Until ALTER EXTENSION pg_otp UPDATE, there is no app_role column.
    let installed = schema::installed();
    let query = if installed.locales {
        agent_select!("app_role::oid, decoy_shapes, language_column, time_zone_column")
    } else if installed.records_and_roles {
        agent_select!("app_role::oid, decoy_shapes, NULL::text, NULL::text")
    } else {
        agent_select!("NULL::oid, NULL::text[], NULL::text, NULL::text")
    };
    let row = prepared::select(client, query, Some(1), &[name.into()])?.first();
    if row.is_empty() {
        return Ok(None);
    }
    let preferred: String = row.get(10)?.unwrap_or_default();
    Ok(Some(Agent {
        name: name.to_owned(),
        source: row.get(1)?.unwrap_or(pg_sys::InvalidOid),
        id_column: row.get(2)?.unwrap_or_default(),
        phone_column: row.get(3)?,
        email_column: row.get(4)?,
        require_otp: row.get(5)?.unwrap_or(true),
        code_ttl: row.get(6)?.expect("NOT NULL column"),
        max_attempts: row.get(7)?.unwrap_or(3),
        idle_timeout: row.get(8)?.expect("NOT NULL column"),
        absolute_timeout: row.get(9)?.expect("NOT NULL column"),
        preferred_channel: Channel::parse(&preferred).unwrap_or(Channel::WhatsApp),
        limits: Limits {
            max_codes: row.get(11)?.unwrap_or(5),
            code_window: row.get(12)?.expect("NOT NULL column"),
            resend_cooldown: row.get(13)?.expect("NOT NULL column"),
            lockout_threshold: row.get(14)?.unwrap_or(20),
            lockout_duration: row.get(15)?.expect("NOT NULL column"),
        },
        reveal_unknown: row.get(16)?.unwrap_or(true),
        app_role: row.get(17)?,
        decoy_shapes: row.get(18)?.unwrap_or_default(),
        language_column: row.get(19)?,
        time_zone_column: row.get(20)?,
    }))
}

/// Checks that the relation exists, can hold people, and has the named
/// columns. Returns its schema-qualified, safely quoted name. Reads the
/// system caches directly: it runs on every otp_issue, and a query through
/// SPI would cost more than the lookup it guards.
pub fn check_source(source: pg_sys::Oid, columns: &[(&str, &str)]) -> Result<String> {
    // SAFETY: lsyscache lookups by OID and name; each returns 0 or NULL for
    // an object that does not exist, and pallocs its result in the current
    // memory context, which is reset after the call.
    let (relkind, qualified) = unsafe {
        let relkind = pg_sys::get_rel_relkind(source) as u8;
        let name = pg_sys::get_rel_name(source);
        let namespace = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(source));
        if relkind == 0 || name.is_null() || namespace.is_null() {
            return Err(OtpError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "pg_otp: the source relation (OID {}) no longer exists",
                    source.to_u32()
                ),
            )
            .with_hint(
                "Run otp_configure again with the table or view that now holds the records.",
            ));
        }
        let qualified = pg_sys::quote_qualified_identifier(namespace, name);
        (
            relkind,
            CStr::from_ptr(qualified).to_string_lossy().into_owned(),
        )
    };
    if is_system_namespace(source) {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("pg_otp: {qualified} is a system catalog, which is never a source of people"),
        ));
    }
    if !matches!(relkind, b'r' | b'v' | b'm' | b'p' | b'f') {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("pg_otp: {qualified} is not a table, view, materialized view or foreign table"),
        ));
    }
    let is_user_column = |column: &str| {
        let Ok(column) = CString::new(column) else {
            return false;
        };
        // SAFETY: a NUL-terminated name; dropped columns are not found.
        let attnum = unsafe { pg_sys::get_attnum(source, column.as_ptr()) };
        attnum > 0
    };
    if let Some((argument, column)) = columns.iter().find(|(_, column)| !is_user_column(column)) {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("pg_otp: column \"{column}\" ({argument}) does not exist in {qualified}"),
        )
        .with_hint(
            "Column names are case-sensitive. If the table changed, run otp_configure again.",
        ));
    }
    Ok(qualified)
}

/// Whether the relation lives in pg_catalog, information_schema or pg_toast.
fn is_system_namespace(relation: pg_sys::Oid) -> bool {
    // SAFETY: lsyscache lookups by OID, as in check_source.
    unsafe {
        let namespace = pg_sys::get_rel_namespace(relation);
        if namespace == pg_sys::PG_CATALOG_NAMESPACE.into()
            || namespace == pg_sys::PG_TOAST_NAMESPACE.into()
        {
            return true;
        }
        let name = pg_sys::get_namespace_name(namespace);
        !name.is_null() && CStr::from_ptr(name).to_bytes() == b"information_schema"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Argument checks never panic, and accept exactly the documented sizes.
        #[test]
        fn names_are_accepted_iff_within_bounds(text in any::<String>()) {
            prop_assert_eq!(agent_name(Some(&text)).is_ok(), (1..=MAX_AGENT_LEN).contains(&text.len()));
            prop_assert_eq!(conversation_id(Some(&text)).is_ok(), (1..=MAX_CONVERSATION_LEN).contains(&text.len()));
        }

        #[test]
        fn ranges_are_inclusive_and_nothing_else(value in any::<i32>()) {
            prop_assert_eq!(within("max_attempts", Some(value), 1..=10).is_ok(), (1..=10).contains(&value));
        }
    }

    #[test]
    fn nulls_are_refused() {
        assert!(agent_name(None).is_err());
        assert!(conversation_id(None).is_err());
        assert!(within("max_codes", None, 1..=5).is_err());
    }
}
