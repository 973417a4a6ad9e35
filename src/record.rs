//! The person behind an identifier: looked up in the agent's source relation,
//! with the channel their code goes to and the masked hint the agent may show.

use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;

use subtle::ConstantTimeEq;

use crate::config::{check_source, Agent, Channel};
use crate::crypto::KeyRing;
use crate::errors::{OtpError, Result};
use crate::{prepared, restricted};

/// The record found for an identifier.
#[derive(Debug)]
pub struct Record {
    /// The identifier as stored in the id column (text form).
    pub subject: String,
    pub phone: Option<String>,
    pub email: Option<String>,
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
    /// The id, phone and email columns as text (NULL for a channel the agent
    /// does not have), in the order of `Record`'s fields.
    fields: String,
}

impl Columns {
    fn of(agent: &Agent) -> Result<Columns> {
        let mut columns = vec![("id_column", agent.id_column.as_str())];
        columns.extend(agent.phone_column.as_deref().map(|c| ("phone_column", c)));
        columns.extend(agent.email_column.as_deref().map(|c| ("email_column", c)));
        let relation = check_source(agent.source, &columns)?;
        let as_text = |column: Option<&str>| match column {
            Some(c) => format!("{}::text", pgrx::spi::quote_identifier(c)),
            None => "NULL::text".to_owned(),
        };
        let id = as_text(Some(&agent.id_column));
        let fields = format!(
            "{id}, {phone}, {email}",
            phone = as_text(agent.phone_column.as_deref()),
            email = as_text(agent.email_column.as_deref()),
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
    } = Columns::of(agent)?;
    // `col::text = $1` uses a plain index on text/varchar columns; other
    // types need an index on (col::text), as the README explains.
    let query = format!("SELECT {fields} FROM {relation} WHERE {id} = $1 LIMIT 2");
    // The relation's own code (a view's functions, a cast) runs with its
    // owner's rights, never pg_otp's (see `restricted`).
    let owner = restricted::owner(agent.source)?;
    let mut found = restricted::as_owner(owner, || -> Result<Vec<Record>> {
        prepared::select(client, query.as_str(), None, &[identifier.into()])?
            .map(|row| {
                Ok(Record {
                    subject: row.get(1)?.unwrap_or_default(),
                    phone: row.get(2)?,
                    email: row.get(3)?,
                })
            })
            .collect()
    })?;
    if found.len() > 1 {
        return Err(OtpError::new(
            PgSqlErrorCode::ERRCODE_CARDINALITY_VIOLATION,
            format!("pg_otp: more than one record in {relation} has this {}", agent.id_column),
        )
        .with_hint("The id column of an agent must be unique; add a unique index or choose another column."));
    }
    Ok(found.pop())
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

/// A plausible destination for someone the agent must not reveal as unknown
/// (reveal_unknown = false). Its channel, and an email's domain, are those
/// of the record whose identifier follows `identifier` in the id column's
/// order (wrapping around): a record as good as drawn at random, so decoys
/// get WhatsApp or email, and domains, in the proportions real people do,
/// and the same identifier always gets the same one. The rest of the hint
/// comes from `seed` (a keyed hash of the identifier). Nothing is ever sent
/// to it.
pub fn decoy(
    client: &SpiClient<'_>,
    agent: &Agent,
    identifier: &str,
    seed: &[u8; 32],
) -> Result<Destination> {
    let neighbour = neighbour(client, agent, identifier)?;
    let channel = neighbour
        .as_ref()
        .and_then(|record| route(record, agent.preferred_channel))
        .map(|route| route.primary)
        .map_or_else(
            // An empty source, or a neighbour without any address: the
            // channel the agent would pick for someone who has both.
            || match (&agent.phone_column, &agent.email_column) {
                (Some(_), Some(_)) => (agent.preferred_channel, None),
                (Some(_), None) => (Channel::WhatsApp, None),
                _ => (Channel::Email, None),
            },
            |primary| (primary.channel, Some(primary.address)),
        );
    let hint = match channel {
        (Channel::WhatsApp, _) => {
            let digits = u16::from_be_bytes([seed[0], seed[1]]) % 100;
            format!("***{digits:02}")
        }
        (Channel::Email, address) => {
            let letter = char::from(b'a' + seed[2] % 26);
            let domain = address
                .as_deref()
                .and_then(|a| a.rsplit_once('@'))
                .map(|(_, domain)| domain.to_owned())
                .filter(|domain| !domain.is_empty())
                .unwrap_or_else(|| "example.com".to_owned());
            format!("{letter}***@{domain}")
        }
    };
    Ok(Destination {
        channel: channel.0,
        address: String::new(),
        hint,
    })
}

/// The record whose identifier comes next after `identifier` in the id
/// column's order (the first one when none does): two index probes.
fn neighbour(client: &SpiClient<'_>, agent: &Agent, identifier: &str) -> Result<Option<Record>> {
    let Columns {
        relation,
        id,
        fields,
    } = Columns::of(agent)?;
    let query = format!(
        "(SELECT {fields} FROM {relation} WHERE {id} > $1 ORDER BY {id} LIMIT 1)
         UNION ALL
         (SELECT {fields} FROM {relation} ORDER BY {id} LIMIT 1)
         LIMIT 1"
    );
    let owner = restricted::owner(agent.source)?;
    restricted::as_owner(owner, || -> Result<Option<Record>> {
        let rows = prepared::select(client, query.as_str(), Some(1), &[identifier.into()])?;
        let row = rows.first();
        if row.is_empty() {
            return Ok(None);
        }
        Ok(Some(Record {
            subject: row.get(1)?.unwrap_or_default(),
            phone: row.get(2)?,
            email: row.get(3)?,
        }))
    })
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
