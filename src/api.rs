//! The SQL interface of pg_otp: every function a caller can see, in one place.
//!
//! These are thin: they name the arguments and result columns (a contract that
//! applications depend on), open SPI, call the module that owns the concept and
//! turn its errors into PostgreSQL ERRORs. Arguments are `Option` so that a NULL
//! gets a clear error instead of a silently empty STRICT result.
//!
//! Every function that touches `otp.*` on behalf of an application runs as the
//! extension owner (SECURITY DEFINER) with `search_path` pinned to
//! `pg_catalog, pg_temp`; all queries inside name their schema.

// The result types stay spelled out in each signature: pgrx reads the column
// names from the `name!` tokens there, which a type alias would hide.
#![allow(clippy::type_complexity)]

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use crate::config::AgentSettings;
use crate::errors::OrRaise;
use crate::{audit, binding, challenge, config, delivery, gucs, limits, purge, session};

/// Creates or replaces an agent's "Authenticate conversation" settings.
/// Runs as otp_owner, the only writer of otp.agent; the caller must be a
/// superuser or a member of otp_admin, and have the rights of the owner of
/// the source (and of the agent's current source, when replacing it).
/// `app_role`, when given, names the role whose members alone may act for
/// the agent; `language_column` and `time_zone_column`, the source's
/// columns holding each person's language (a BCP 47 tag such as 'es-MX')
/// and time zone (an IANA name), which otp_outbox_claim passes to the
/// dispatcher.
#[pg_extern(name = "otp_configure", volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn otp_configure_with_locale(
    agent: Option<&str>,
    source: Option<pgrx::PgRelation>,
    id_column: Option<&str>,
    phone_column: default!(Option<&str>, "NULL"),
    email_column: default!(Option<&str>, "NULL"),
    require_otp: default!(Option<bool>, true),
    code_ttl: default!(Option<Interval>, "'5 minutes'"),
    max_attempts: default!(Option<i32>, 3),
    idle_timeout: default!(Option<Interval>, "'30 minutes'"),
    absolute_timeout: default!(Option<Interval>, "'24 hours'"),
    preferred_channel: default!(Option<&str>, "'whatsapp'"),
    max_codes: default!(Option<i32>, 5),
    code_window: default!(Option<Interval>, "'15 minutes'"),
    resend_cooldown: default!(Option<Interval>, "'30 seconds'"),
    lockout_threshold: default!(Option<i32>, 20),
    lockout_duration: default!(Option<Interval>, "'1 hour'"),
    reveal_unknown: default!(Option<bool>, true),
    app_role: default!(Option<&str>, "NULL"),
    language_column: default!(Option<&str>, "NULL"),
    time_zone_column: default!(Option<&str>, "NULL"),
) {
    let settings = AgentSettings {
        agent,
        source,
        id_column,
        phone_column,
        email_column,
        require_otp,
        code_ttl,
        max_attempts,
        idle_timeout,
        absolute_timeout,
        preferred_channel,
        max_codes,
        code_window,
        resend_cooldown,
        lockout_threshold,
        lockout_duration,
        reveal_unknown,
        app_role,
        language_column,
        time_zone_column,
    };
    Spi::connect_mut(|client| config::configure(client, settings)).or_raise()
}

/// otp_configure of pg_otp 0.3.0 (no language or time zone columns): its C entry point
/// stays for that schema until ALTER EXTENSION pg_otp UPDATE (see `schema`).
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn otp_configure_with_role(
    agent: Option<&str>,
    source: Option<pgrx::PgRelation>,
    id_column: Option<&str>,
    phone_column: Option<&str>,
    email_column: Option<&str>,
    require_otp: Option<bool>,
    code_ttl: Option<Interval>,
    max_attempts: Option<i32>,
    idle_timeout: Option<Interval>,
    absolute_timeout: Option<Interval>,
    preferred_channel: Option<&str>,
    max_codes: Option<i32>,
    code_window: Option<Interval>,
    resend_cooldown: Option<Interval>,
    lockout_threshold: Option<i32>,
    lockout_duration: Option<Interval>,
    reveal_unknown: Option<bool>,
    app_role: Option<&str>,
) {
    otp_configure_with_locale(
        agent,
        source,
        id_column,
        phone_column,
        email_column,
        require_otp,
        code_ttl,
        max_attempts,
        idle_timeout,
        absolute_timeout,
        preferred_channel,
        max_codes,
        code_window,
        resend_cooldown,
        lockout_threshold,
        lockout_duration,
        reveal_unknown,
        app_role,
        None,
        None,
    )
}

/// otp_configure of pg_otp 0.2.0 and before (no app_role): its C entry
/// point stays so that the older schema keeps working with this library
/// until ALTER EXTENSION pg_otp UPDATE (see `schema`).
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn otp_configure(
    agent: Option<&str>,
    source: Option<pgrx::PgRelation>,
    id_column: Option<&str>,
    phone_column: Option<&str>,
    email_column: Option<&str>,
    require_otp: Option<bool>,
    code_ttl: Option<Interval>,
    max_attempts: Option<i32>,
    idle_timeout: Option<Interval>,
    absolute_timeout: Option<Interval>,
    preferred_channel: Option<&str>,
    max_codes: Option<i32>,
    code_window: Option<Interval>,
    resend_cooldown: Option<Interval>,
    lockout_threshold: Option<i32>,
    lockout_duration: Option<Interval>,
    reveal_unknown: Option<bool>,
) {
    otp_configure_with_role(
        agent,
        source,
        id_column,
        phone_column,
        email_column,
        require_otp,
        code_ttl,
        max_attempts,
        idle_timeout,
        absolute_timeout,
        preferred_channel,
        max_codes,
        code_window,
        resend_cooldown,
        lockout_threshold,
        lockout_duration,
        reveal_unknown,
        None,
    )
}

/// Finds the person with `identifier` and sends them a code (or, when the
/// agent does not require one, starts a session at once).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_issue(
    agent: Option<&str>,
    conversation: Option<&str>,
    identifier: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(channel, Option<String>),
        name!(destination_hint, Option<String>),
        name!(expires_at, Option<TimestampWithTimeZone>),
        name!(session_token, Option<String>),
    ),
> {
    let issued =
        Spi::connect_mut(|client| challenge::issue(client, agent, conversation, identifier))
            .or_raise();
    TableIterator::once((
        issued.status.as_str().to_owned(),
        issued.channel.map(str::to_owned),
        issued.destination_hint,
        issued.expires_at,
        issued.session_token.map(|token| token.to_string()),
    ))
}

/// Checks a code typed in a conversation; on success starts a session.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_verify(
    agent: Option<&str>,
    conversation: Option<&str>,
    code: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(attempts_remaining, Option<i32>),
        name!(session_token, Option<String>),
        name!(subject, Option<String>),
    ),
> {
    let verified =
        Spi::connect_mut(|client| challenge::verify(client, agent, conversation, code)).or_raise();
    TableIterator::once((
        verified.status.as_str().to_owned(),
        verified.attempts_remaining,
        verified.session_token.map(|token| token.to_string()),
        verified.subject,
    ))
}

/// Where the conversation's latest code stands: its state, the channel it
/// actually went to (after a fallback, the other one), its delivery, and
/// whether only the person's primary device receives that channel.
#[pg_extern(name = "otp_status", volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_status_with_device(
    agent: Option<&str>,
    conversation: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(channel, Option<String>),
        name!(destination_hint, Option<String>),
        name!(delivery, Option<String>),
        name!(attempts_remaining, Option<i32>),
        name!(expires_at, Option<TimestampWithTimeZone>),
        name!(primary_device_only, Option<bool>),
    ),
> {
    let current = Spi::connect(|client| challenge::status(client, agent, conversation)).or_raise();
    let primary_device_only = current
        .channel
        .as_deref()
        .and_then(config::Channel::parse)
        .map(config::Channel::primary_device_only);
    TableIterator::once((
        current.status,
        current.channel,
        current.destination_hint,
        current.delivery,
        current.attempts_remaining,
        current.expires_at,
        primary_device_only,
    ))
}

/// otp_status of pg_otp 0.2.0 (no primary_device_only): its C entry point
/// stays for the older schema until ALTER EXTENSION pg_otp UPDATE (see
/// `schema`).
#[pg_extern(sql = false)]
fn otp_status(
    agent: Option<&str>,
    conversation: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(channel, Option<String>),
        name!(destination_hint, Option<String>),
        name!(delivery, Option<String>),
        name!(attempts_remaining, Option<i32>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::new(
        otp_status_with_device(agent, conversation).map(|(a, b, c, d, e, f, _)| (a, b, c, d, e, f)),
    )
}

/// A person's recent events, newest first: codes requested, delivered,
/// verified, guessed wrong, refused, sessions started and ended. Never a code.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_events(
    agent: Option<&str>,
    subject: Option<&str>,
    since: default!(Option<Interval>, "'30 days'"),
    max_rows: default!(Option<i32>, 50),
) -> TableIterator<
    'static,
    (
        name!(at, TimestampWithTimeZone),
        name!(event, String),
        name!(conversation, Option<String>),
        name!(channel, Option<String>),
        name!(destination_hint, Option<String>),
    ),
> {
    let events = Spi::connect(|client| {
        let agent = config::load(client, config::agent_name(agent)?)?;
        config::check_caller(&agent)?;
        audit::recent(client, &agent.name, subject, since, max_rows)
    })
    .or_raise();
    TableIterator::new(
        events
            .into_iter()
            .map(|e| (e.at, e.event, e.conversation, e.channel, e.destination_hint)),
    )
}

/// Keeps a session alive (call it on every turn of the conversation), or says
/// why it is no longer active.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_touch(
    session_token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(agent, Option<String>),
        name!(conversation, Option<String>),
        name!(subject, Option<String>),
        name!(idle_expires_at, Option<TimestampWithTimeZone>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    let touch = Spi::connect_mut(|client| session::touch(client, session_token, false)).or_raise();
    TableIterator::once((
        touch.status.as_str().to_owned(),
        touch.agent,
        touch.conversation,
        touch.subject,
        touch.idle_expires_at,
        touch.expires_at,
    ))
}

/// session_touch, and when the session is active, the rest of the current
/// transaction acts for its person: otp_subject(agent) returns the subject
/// until the transaction ends (see `binding`). When it is not active, the
/// transaction acts for nobody of that agent.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_use(
    session_token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(agent, Option<String>),
        name!(conversation, Option<String>),
        name!(subject, Option<String>),
        name!(idle_expires_at, Option<TimestampWithTimeZone>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    let touch = Spi::connect_mut(|client| session::touch(client, session_token, true)).or_raise();
    TableIterator::once((
        touch.status.as_str().to_owned(),
        touch.agent,
        touch.conversation,
        touch.subject,
        touch.idle_expires_at,
        touch.expires_at,
    ))
}

/// The subject this transaction acts for with `agent` (session_use), NULL
/// when none. For row-level security policies:
/// `USING (employee_no = (SELECT otp_subject('payroll')))`. Stable within a
/// statement; parallel restricted, since the binding lives in the leader's
/// memory (a parallel plan evaluates it there once and hands the value on).
#[pg_extern(stable, parallel_restricted)]
fn otp_subject(agent: Option<&str>) -> Option<String> {
    agent.and_then(binding::subject)
}

/// A person's active sessions with an agent, newest first: never a token
/// or its hash.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_sessions(
    agent: Option<&str>,
    subject: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(conversation, String),
        name!(started_at, TimestampWithTimeZone),
        name!(last_used_at, TimestampWithTimeZone),
        name!(idle_expires_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
    ),
> {
    let sessions = Spi::connect(|client| {
        let agent = config::load(client, config::agent_name(agent)?)?;
        config::check_caller(&agent)?;
        session::list(client, &agent, subject)
    })
    .or_raise();
    TableIterator::new(sessions.into_iter().map(|s| {
        (
            s.conversation,
            s.started_at,
            s.last_used_at,
            s.idle_expires_at,
            s.expires_at,
        )
    }))
}

/// Ends every active session of a person with an agent (the employee left,
/// the phone was stolen); each ending is an audit event. Returns how many.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_revoke_all(agent: Option<&str>, subject: Option<&str>) -> i32 {
    Spi::connect_mut(|client| {
        let agent = config::load(client, config::agent_name(agent)?)?;
        config::check_caller(&agent)?;
        session::revoke_all(client, &agent, subject)
    })
    .or_raise()
}

/// Ends a session now. True when this call revoked it.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_revoke(session_token: Option<&str>) -> bool {
    Spi::connect_mut(|client| session::revoke(client, session_token)).or_raise()
}

/// Deletes what ended more than `retention` ago, and audit events older
/// than `event_retention`. The background worker calls it when
/// otp.purge_database is set; otherwise schedule it with pg_cron. Runs with
/// the caller's rights: call it as the extension owner.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn otp_purge(
    retention: default!(Option<Interval>, "'7 days'"),
    event_retention: default!(Option<Interval>, "'90 days'"),
) -> TableIterator<
    'static,
    (
        name!(challenges, i64),
        name!(messages, i64),
        name!(sessions, i64),
        name!(guards, i64),
        name!(events, i64),
    ),
> {
    let done =
        Spi::connect_mut(|client| purge::purge(client, retention, event_retention)).or_raise();
    TableIterator::once((
        done.challenges,
        done.messages,
        done.sessions,
        done.guards,
        done.events,
    ))
}

/// Ends a person's lockout and clears their failure count before
/// lockout_duration ends (an operator's decision, not an application's:
/// EXECUTE is granted to nobody; runs with the caller's rights). True when
/// there was a lockout or failures to clear.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn otp_unlock(agent: Option<&str>, subject: Option<&str>) -> bool {
    Spi::connect_mut(|client| {
        let agent = config::agent_name(agent)?;
        let subject = subject.ok_or_else(|| crate::errors::OtpError::null_argument("subject"))?;
        limits::unlock(client, agent, subject)
    })
    .or_raise()
}

/// Delivery protocol: claims due messages, with their codes, for `lease`;
/// `language` and `time_zone` are the person's (a BCP 47 tag, an IANA
/// name), when the agent has such columns and the record a valid value.
#[pg_extern(name = "otp_outbox_claim", volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_outbox_claim_with_locale(
    batch_size: default!(Option<i32>, 16),
    lease: default!(Option<Interval>, "'30 seconds'"),
) -> TableIterator<
    'static,
    (
        name!(message_id, i64),
        name!(agent, String),
        name!(conversation, String),
        name!(channel, String),
        name!(destination, String),
        name!(code, String),
        name!(expires_at, TimestampWithTimeZone),
        name!(attempt, i32),
        name!(language, Option<String>),
        name!(time_zone, Option<String>),
    ),
> {
    TableIterator::new(claim(batch_size, lease).into_iter().map(|m| {
        (
            m.message_id,
            m.agent,
            m.conversation,
            m.channel,
            m.destination,
            m.code.to_string(),
            m.expires_at,
            m.attempt,
            m.language,
            m.time_zone,
        )
    }))
}

/// otp_outbox_claim of pg_otp 0.3.0 and before (no language, time zone): its C entry
/// point stays for the older schema until ALTER EXTENSION pg_otp UPDATE
/// (see `schema`).
#[pg_extern(sql = false)]
fn otp_outbox_claim(
    batch_size: default!(Option<i32>, 16),
    lease: default!(Option<Interval>, "'30 seconds'"),
) -> TableIterator<
    'static,
    (
        name!(message_id, i64),
        name!(agent, String),
        name!(conversation, String),
        name!(channel, String),
        name!(destination, String),
        name!(code, String),
        name!(expires_at, TimestampWithTimeZone),
        name!(attempt, i32),
    ),
> {
    TableIterator::new(claim(batch_size, lease).into_iter().map(|m| {
        (
            m.message_id,
            m.agent,
            m.conversation,
            m.channel,
            m.destination,
            m.code.to_string(),
            m.expires_at,
            m.attempt,
        )
    }))
}

fn claim(batch_size: Option<i32>, lease: Option<Interval>) -> Vec<delivery::Claimed> {
    Spi::connect_mut(|client| {
        let keys = gucs::keys()?;
        delivery::claim(client, &keys, batch_size, lease)
    })
    .or_raise()
}

/// Delivery protocol: moves on messages no claim will hand out (codes that
/// expired while queued, challenges that ended while a lease ran out) and
/// decoys. A dispatcher calls it between claims; the purge worker too.
/// Returns how many real messages it finished and decoys it moved.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_outbox_sweep() -> TableIterator<'static, (name!(finished, i64), name!(decoys, i64))> {
    let swept =
        Spi::connect_mut(|client| delivery::sweep(client, delivery::Decoys::Advance)).or_raise();
    TableIterator::once((swept.finished, swept.decoys))
}

/// Delivery protocol: what the provider said later about a message it
/// accepted (a status webhook): `sent`, `delivered`, `read` or `failed`.
/// Returns what it did: `recorded`, `fallback`, `retried`, `ignored` or
/// `unknown` (see delivery/status.rs).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_outbox_status(
    provider_ref: Option<&str>,
    message_id: Option<i64>,
    status: Option<&str>,
    at: Option<TimestampWithTimeZone>,
    error: Option<&str>,
    retryable: Option<bool>,
) -> String {
    Spi::connect_mut(|client| {
        let keys = gucs::keys()?;
        delivery::status(
            client,
            &keys,
            provider_ref,
            message_id,
            status,
            at,
            error,
            retryable,
        )
    })
    .or_raise()
    .as_str()
    .to_owned()
}

/// Delivery protocol: the provider accepted the message. `attempt` is the
/// one otp_outbox_claim returned; false when the report was stale (the
/// lease ran out and the message was claimed again) and so ignored.
#[pg_extern(name = "otp_outbox_sent", volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn otp_outbox_sent_fenced(
    message_id: Option<i64>,
    attempt: Option<i32>,
    provider_ref: Option<&str>,
) -> bool {
    Spi::connect_mut(|client| {
        let keys = gucs::keys()?;
        delivery::sent(client, &keys, message_id, attempt, provider_ref)
    })
    .or_raise()
}

/// Delivery protocol: the dispatcher did not send the message because its
/// code expires too soon to be useful; it ends as `expired`. False when the
/// report was stale.
#[pg_extern(
    name = "otp_outbox_expired",
    volatile,
    parallel_unsafe,
    security_definer
)]
#[search_path(pg_catalog, pg_temp)]
fn otp_outbox_expired_fenced(message_id: Option<i64>, attempt: Option<i32>) -> bool {
    Spi::connect_mut(|client| delivery::expired(client, message_id, attempt)).or_raise()
}

/// Delivery protocol: the delivery failed; `retryable` asks for another try.
/// False when the report was stale.
#[pg_extern(
    name = "otp_outbox_failed",
    volatile,
    parallel_unsafe,
    security_definer
)]
#[search_path(pg_catalog, pg_temp)]
fn otp_outbox_failed_fenced(
    message_id: Option<i64>,
    attempt: Option<i32>,
    error: Option<&str>,
    retryable: Option<bool>,
) -> bool {
    Spi::connect_mut(|client| {
        let keys = gucs::keys()?;
        delivery::failed(client, &keys, message_id, attempt, error, retryable)
    })
    .or_raise()
}

// The reports of pg_otp 0.2.0 and before, without the attempt. Not part of
// the current SQL interface (`sql = false`): their C entry points stay so
// that a server restarted with this library still works with the 0.2.0
// schema until ALTER EXTENSION pg_otp UPDATE (see docs/operations.md, Upgrading). They
// report for the message's current attempt, unfenced, as 0.2.0 did.

#[pg_extern(sql = false)]
fn otp_outbox_sent(message_id: Option<i64>, provider_ref: Option<&str>) {
    Spi::connect_mut(|client| {
        let keys = gucs::keys()?;
        let attempt = delivery::current_attempt(client, message_id)?;
        delivery::sent(client, &keys, message_id, attempt, provider_ref).map(drop)
    })
    .or_raise()
}

#[pg_extern(sql = false)]
fn otp_outbox_expired(message_id: Option<i64>) {
    Spi::connect_mut(|client| {
        let attempt = delivery::current_attempt(client, message_id)?;
        delivery::expired(client, message_id, attempt).map(drop)
    })
    .or_raise()
}

#[pg_extern(sql = false)]
fn otp_outbox_failed(message_id: Option<i64>, error: Option<&str>, retryable: Option<bool>) {
    Spi::connect_mut(|client| {
        let keys = gucs::keys()?;
        let attempt = delivery::current_attempt(client, message_id)?;
        delivery::failed(client, &keys, message_id, attempt, error, retryable).map(drop)
    })
    .or_raise()
}
