//! The person behind an identifier: looked up in the agent's source relation,
//! with the channel their code goes to and the masked hint the agent may show.

use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use subtle::ConstantTimeEq;

use crate::config::{check_source, Agent, Channel};
use crate::crypto::KeyRing;
use crate::errors::{OtpError, Result};
use crate::{prepared, restricted};
use pgrx::pg_sys;

/// The record found for an identifier.
#[derive(Debug)]
pub struct Record {
    /// The identifier as stored in the id column (text form).
    pub subject: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    /// The person's language, when the agent has a language column and it
    /// holds a well-formed BCP 47 tag (normalized); anything else is None.
    pub language: Option<String>,
    /// The person's time zone, when the agent has a time zone column and it
    /// names a zone PostgreSQL knows; anything else is None.
    pub time_zone: Option<String>,
}

/// Where a code goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Destination {
    pub channel: Channel,
    pub address: String,
    pub hint: String,
}

/// The parts of a lookup in an agent's source, checked against the catalog.
/// Identifiers are quoted by PostgreSQL's own quote_identifier, so column
/// names never become SQL; values are always bound parameters.
struct Columns {
    /// The relation, schema-qualified and quoted.
    relation: String,
    /// The id column as text.
    id: String,
    /// The id, phone, email, language and time zone columns as text (NULL for
    /// a column the agent does not have), in the order of `Record`'s fields.
    fields: String,
}

/// Where and how an agent finds people: its source, columns and channel
/// preference (also before the agent is stored, in otp_configure).
pub struct Lookup<'a> {
    pub source: pg_sys::Oid,
    pub id_column: &'a str,
    pub phone_column: Option<&'a str>,
    pub email_column: Option<&'a str>,
    pub language_column: Option<&'a str>,
    pub time_zone_column: Option<&'a str>,
    pub preferred_channel: Channel,
}

impl<'a> Lookup<'a> {
    pub fn of(agent: &'a Agent) -> Lookup<'a> {
        Lookup {
            source: agent.source,
            id_column: &agent.id_column,
            phone_column: agent.phone_column.as_deref(),
            email_column: agent.email_column.as_deref(),
            language_column: agent.language_column.as_deref(),
            time_zone_column: agent.time_zone_column.as_deref(),
            preferred_channel: agent.preferred_channel,
        }
    }
}

impl Columns {
    fn of(lookup: &Lookup<'_>) -> Result<Columns> {
        let mut columns = vec![("id_column", lookup.id_column)];
        columns.extend(lookup.phone_column.map(|c| ("phone_column", c)));
        columns.extend(lookup.email_column.map(|c| ("email_column", c)));
        columns.extend(lookup.language_column.map(|c| ("language_column", c)));
        columns.extend(lookup.time_zone_column.map(|c| ("time_zone_column", c)));
        let relation = check_source(lookup.source, &columns)?;
        let as_text = |column: Option<&str>| match column {
            Some(c) => format!("{}::text", pgrx::spi::quote_identifier(c)),
            None => "NULL::text".to_owned(),
        };
        let id = as_text(Some(lookup.id_column));
        let fields = format!(
            "{id}, {phone}, {email}, {language}, {time_zone}",
            phone = as_text(lookup.phone_column),
            email = as_text(lookup.email_column),
            language = as_text(lookup.language_column),
            time_zone = as_text(lookup.time_zone_column),
        );
        Ok(Columns {
            relation,
            id,
            fields,
        })
    }
}

/// Finds the record whose id column equals `identifier` (compared as text).
/// More than one match is a configuration error: the id column must identify.
pub fn find(client: &SpiClient<'_>, agent: &Agent, identifier: &str) -> Result<Option<Record>> {
    let Columns {
        relation,
        id,
        fields,
    } = Columns::of(&Lookup::of(agent))?;
    // `col::text = $1` uses a plain index on text/varchar columns; other
    // types need an index on (col::text), as docs/sql.md explains.
    let query = format!("SELECT {fields} FROM {relation} WHERE {id} = $1 LIMIT 2");
    let mut found = records_as_owner(client, agent.source, &query, &[identifier.into()])?;
    if found.len() > 1 {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_CARDINALITY_VIOLATION,
            format!("pg_otp: more than one record in {relation} has this {}", agent.id_column),
        )
        .with_hint("The id column of an agent must be unique; add a unique index or choose another column."));
    }
    Ok(found.pop())
}

/// Runs `query` (selecting `Columns::fields`) on the source as its owner:
/// the relation's own code (a view's functions, a cast) runs with its
/// owner's rights, never pg_otp's (see `restricted`).
fn records_as_owner(
    client: &SpiClient<'_>,
    source: pg_sys::Oid,
    query: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<Vec<Record>> {
    let owner = restricted::owner(source)?;
    restricted::as_owner(owner, || -> Result<Vec<Record>> {
        prepared::select(client, query, None, args)?
            .map(|row| {
                Ok(Record {
                    subject: row.get(1)?.unwrap_or_default(),
                    phone: row.get(2)?,
                    email: row.get(3)?,
                    language: row
                        .get::<String>(4)?
                        .as_deref()
                        .and_then(otp_common::language::normalize),
                    time_zone: row.get::<String>(5)?.and_then(known_time_zone),
                })
            })
            .collect()
    })
}

/// `name` (trimmed) when it is a time zone name PostgreSQL's time zone
/// database knows and accepts (not a leap-second zone).
fn known_time_zone(name: String) -> Option<String> {
    let name = name.trim();
    if !otp_common::time_zone::well_formed(name) {
        return None;
    }
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; pg_tzset returns NULL for an unknown
    // zone and caches what it loads for the life of the backend.
    let known = unsafe {
        let tz = pg_sys::pg_tzset(cname.as_ptr());
        !tz.is_null() && pg_sys::pg_tz_acceptable(tz)
    };
    known.then(|| name.to_owned())
}

/// Where a code goes first, and where it goes if that channel fails for good.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub primary: Destination,
    pub fallback: Option<Destination>,
}

/// The preferred channel when the record has it, else the other one; the
/// channel not chosen, when the record has it too, is the fallback.
pub fn route(record: &Record, preferred: Channel) -> Option<Route> {
    let usable = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let destination = |channel: Channel, address: String| Destination {
        channel,
        hint: mask(channel, &address),
        address,
    };
    let phone = usable(&record.phone).map(|address| destination(Channel::WhatsApp, address));
    let email = usable(&record.email).map(|address| destination(Channel::Email, address));
    let (first, second) = match preferred {
        Channel::WhatsApp => (phone, email),
        Channel::Email => (email, phone),
    };
    match (first, second) {
        (Some(primary), fallback) => Some(Route { primary, fallback }),
        (None, Some(primary)) => Some(Route {
            primary,
            fallback: None,
        }),
        (None, None) => None,
    }
}

/// How many sampled records decoys are modelled on, and how many records
/// the sample is drawn from.
const DECOY_SHAPES: usize = 64;
const DECOY_SAMPLE: i64 = 10_000;

/// What decoys of an agent look like (reveal_unknown = false): the channel
/// real people's codes go to, with an email's domain ("whatsapp",
/// "email:example.com"), for up to DECOY_SHAPES records of the source,
/// chosen among the first DECOY_SAMPLE it returns by the order of a hash of
/// their identifiers (so that the same source gives the same shapes).
/// Taken at otp_configure, as the source's owner.
pub fn decoy_shapes(client: &SpiClient<'_>, lookup: &Lookup<'_>) -> Result<Vec<String>> {
    use sha2::{Digest, Sha256};
    let Columns {
        relation, fields, ..
    } = Columns::of(lookup)?;
    let query = format!("SELECT {fields} FROM {relation} LIMIT {DECOY_SAMPLE}");
    let records = records_as_owner(client, lookup.source, &query, &[])?;
    let mut ranked: Vec<([u8; 32], String)> = records
        .iter()
        .filter_map(|record| {
            let primary = route(record, lookup.preferred_channel)?.primary;
            let shape = match primary.channel {
                Channel::WhatsApp => primary.channel.as_str().to_owned(),
                Channel::Email => {
                    let domain = primary.address.rsplit_once('@').map_or("", |(_, d)| d);
                    format!("{}:{domain}", primary.channel.as_str())
                }
            };
            Some((Sha256::digest(record.subject.as_bytes()).into(), shape))
        })
        .collect();
    ranked.sort();
    ranked.truncate(DECOY_SHAPES);
    Ok(ranked.into_iter().map(|(_, shape)| shape).collect())
}

/// A plausible destination for someone the agent must not reveal as unknown
/// (reveal_unknown = false): one of the agent's decoy shapes (real people's
/// channels and email domains, in their proportions), chosen by `seed` (a
/// keyed hash of the identifier), so the same identifier always gets the
/// same one and nothing about it depends on the records near it. The rest
/// of the hint comes from `seed` too. Nothing is ever sent to it.
pub fn decoy(agent: &Agent, seed: &[u8; 32]) -> Destination {
    let pick = u32::from_be_bytes([seed[4], seed[5], seed[6], seed[7]]) as usize;
    let shape = agent
        .decoy_shapes
        .get(pick % agent.decoy_shapes.len().max(1))
        .map(|shape| shape.split_once(':').unwrap_or((shape.as_str(), "")))
        .and_then(|(channel, domain)| Some((Channel::parse(channel)?, domain)));
    // No shapes (an empty source, or an agent configured before they
    // existed): the channel the agent would pick for someone with both.
    let (channel, domain) = shape.unwrap_or(match (&agent.phone_column, &agent.email_column) {
        (Some(_), Some(_)) => (agent.preferred_channel, ""),
        (Some(_), None) => (Channel::WhatsApp, ""),
        _ => (Channel::Email, ""),
    });
    let hint = match channel {
        Channel::WhatsApp => {
            let digits = u16::from_be_bytes([seed[0], seed[1]]) % 100;
            format!("***{digits:02}")
        }
        Channel::Email => {
            let letter = char::from(b'a' + seed[2] % 26);
            let domain = if domain.is_empty() {
                "example.com"
            } else {
                domain
            };
            format!("{letter}***@{domain}")
        }
    };
    Destination {
        channel,
        address: String::new(),
        hint,
    }
}

pub use otp_common::mask;

/// What a code, and the session a code starts, is tied to: the channel the
/// code went through and a keyed fingerprint of the address
/// (`crypto::Keys::destination_key`), made under the secret `key_id` names.
/// No second copy of the address is kept.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub channel: Channel,
    pub key: Vec<u8>,
    pub key_id: Vec<u8>,
}

/// Whether a person's record is still what a code or session relied on.
#[derive(Debug, PartialEq, Eq)]
pub enum Still {
    /// The person is in the source and, where a fingerprint was given, the
    /// address it was made from is still on their record. When that
    /// fingerprint was made under an older secret, the same address's
    /// fingerprint under the current one, to keep instead (a key rotation).
    Same(Option<Fingerprint>),
    /// The person is gone from the source, or the address is not on their
    /// record any more (a changed phone number is a new authenticator).
    Changed,
    /// The fingerprint was made under a secret no longer configured: it can
    /// no longer be checked.
    Unverifiable,
}

/// Looks the person up again (as the source's owner, through the same path
/// as `find`) and compares their record with what was relied on: the
/// fingerprint, if any, with the keys of the secrets configured.
pub fn still(
    client: &SpiClient<'_>,
    agent: &Agent,
    subject: &str,
    fingerprint: Option<(&Fingerprint, &KeyRing)>,
) -> Result<Still> {
    let Some(person) = find(client, agent, subject)? else {
        return Ok(Still::Changed);
    };
    let Some((fingerprint, ring)) = fingerprint else {
        return Ok(Still::Same(None));
    };
    let Some(keys) = ring.for_id(&fingerprint.key_id) else {
        return Ok(Still::Unverifiable);
    };
    let address = match fingerprint.channel {
        Channel::WhatsApp => person.phone,
        Channel::Email => person.email,
    };
    let Some(address) = address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .filter(|address| {
            let key = keys.destination_key(fingerprint.channel.as_str(), address);
            bool::from(key.as_slice().ct_eq(&fingerprint.key))
        })
    else {
        return Ok(Still::Changed);
    };
    let renewed = (keys.id != ring.current.id).then(|| Fingerprint {
        channel: fingerprint.channel,
        key: ring
            .current
            .destination_key(fingerprint.channel.as_str(), address)
            .to_vec(),
        key_id: ring.current.id.to_vec(),
    });
    Ok(Still::Same(renewed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phone: Option<&str>, email: Option<&str>) -> Record {
        Record {
            subject: "4721".into(),
            phone: phone.map(Into::into),
            email: email.map(Into::into),
            language: None,
            time_zone: None,
        }
    }

    #[test]
    fn prefers_configured_channel_then_falls_back() {
        let both = record(Some("+34600123478"), Some("jane@example.com"));
        let whatsapp_first = route(&both, Channel::WhatsApp).unwrap();
        assert_eq!(whatsapp_first.primary.channel, Channel::WhatsApp);
        let fallback = whatsapp_first.fallback.unwrap();
        assert_eq!(
            (fallback.channel, fallback.hint.as_str()),
            (Channel::Email, "j***@example.com")
        );
        let email_first = route(&both, Channel::Email).unwrap();
        assert_eq!(email_first.primary.channel, Channel::Email);
        assert_eq!(
            email_first.fallback.map(|f| f.channel),
            Some(Channel::WhatsApp)
        );

        let email_only = route(
            &record(Some("   "), Some(" jane@example.com ")),
            Channel::WhatsApp,
        )
        .unwrap();
        assert_eq!(
            (
                email_only.primary.channel,
                email_only.primary.address.as_str()
            ),
            (Channel::Email, "jane@example.com")
        );
        assert_eq!(email_only.fallback, None);
        assert_eq!(route(&record(None, Some("")), Channel::Email), None);
    }
}
