//! Challenges: one issued code and what became of it.
//!
//! otp_issue finds the person, supersedes the conversation's pending challenge,
//! stores an HMAC of a fresh code and queues the code for delivery. otp_verify
//! checks a submitted code under a row lock, so concurrent submissions are
//! serialised: attempts can never exceed max_attempts, and a code verifies once.
//!
//! Challenge states: `pending` → `verified` | `locked` (attempts used up) |
//! `expired` (code_ttl passed) | `superseded` (a newer code was issued).
//! A unique partial index allows one `pending` challenge per conversation.

use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::spi::SpiClient;
use zeroize::Zeroizing;

use crate::audit::{self, Event};
use crate::config::{self, Channel};
use crate::crypto::{self, Code, CODE_DIGITS};
use crate::errors::{OtpError, Result};
use crate::prepared;
use crate::record::{Fingerprint, Still};
use crate::{clock, delivery, gucs, ledger, limits, locks, record, schema, session, xact};

/// Result words of otp_issue. The spelling is the SQL contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueStatus {
    CodeSent,
    Authenticated,
    NotFound,
    NoChannel,
    RateLimited,
}

impl IssueStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueStatus::CodeSent => "code_sent",
            IssueStatus::Authenticated => "authenticated",
            IssueStatus::NotFound => "not_found",
            IssueStatus::NoChannel => "no_channel",
            IssueStatus::RateLimited => "rate_limited",
        }
    }
}

/// Result words of otp_verify. The spelling is the SQL contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyStatus {
    Verified,
    Incorrect,
    Locked,
    Expired,
    NoChallenge,
    InvalidFormat,
    RecordChanged,
}

impl VerifyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyStatus::Verified => "verified",
            VerifyStatus::Incorrect => "incorrect",
            VerifyStatus::Locked => "locked",
            VerifyStatus::Expired => "expired",
            VerifyStatus::NoChallenge => "no_challenge",
            VerifyStatus::InvalidFormat => "invalid_format",
            VerifyStatus::RecordChanged => "record_changed",
        }
    }
}

pub struct Issued {
    pub status: IssueStatus,
    pub channel: Option<&'static str>,
    pub destination_hint: Option<String>,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub session_token: Option<Zeroizing<String>>,
}

impl Issued {
    fn bare(status: IssueStatus) -> Self {
        Issued {
            status,
            channel: None,
            destination_hint: None,
            expires_at: None,
            session_token: None,
        }
    }
}

pub struct Verified {
    pub status: VerifyStatus,
    pub attempts_remaining: Option<i32>,
    pub session_token: Option<Zeroizing<String>>,
    pub subject: Option<String>,
}

impl Verified {
    fn bare(status: VerifyStatus) -> Self {
        Verified {
            status,
            attempts_remaining: None,
            session_token: None,
            subject: None,
        }
    }
}

/// Starts authentication of a conversation for the person with `identifier`.
pub fn issue(
    client: &mut SpiClient<'_>,
    agent: Option<&str>,
    conversation: Option<&str>,
    identifier: Option<&str>,
) -> Result<Issued> {
    let agent_name = config::agent_name(agent)?;
    let conversation = config::conversation_id(conversation)?;
    let identifier = identifier
        .ok_or_else(|| OtpError::null_argument("identifier"))?
        .trim();
    let ring = gucs::keys()?;
    let keys = &ring.current;
    let agent = config::load(client, agent_name)?;
    config::check_caller(&agent)?;

    // One issue at a time per conversation: concurrent ones leave exactly
    // one pending challenge.
    locks::lock(
        locks::Scope::Conversation,
        &[agent.name.as_bytes(), conversation.as_bytes()],
    );
    let now = clock::now();
    // Unless refused for a limit, the user has started over: whatever this
    // call finds, an older code of the conversation must no longer work.
    let found = if identifier.is_empty() {
        None
    } else {
        record::find(client, &agent, identifier)?
    };
    if !agent.require_otp {
        // "Require OTP" off: a session at once, or not_found. (Hiding unknown
        // identifiers is impossible here: the session itself would tell.)
        supersede_pending(client, &agent.name, conversation, now)?;
        let Some(person) = found else {
            return Ok(Issued::bare(IssueStatus::NotFound));
        };
        let token = session::start(
            client,
            &agent,
            conversation,
            &person.subject,
            None,
            None,
            now,
        )?;
        return Ok(Issued {
            session_token: Some(token),
            ..Issued::bare(IssueStatus::Authenticated)
        });
    }
    let route = found
        .as_ref()
        .and_then(|person| record::route(person, agent.preferred_channel));
    if route.is_none() && agent.reveal_unknown {
        supersede_pending(client, &agent.name, conversation, now)?;
        let status = if found.is_some() {
            IssueStatus::NoChannel
        } else {
            IssueStatus::NotFound
        };
        return Ok(Issued::bare(status));
    }
    // Without a route (and reveal_unknown off) this is a decoy: it answers
    // exactly like a real code, limits included, but nothing is ever sent.
    let subject = match &found {
        Some(person) => person.subject.clone(),
        None => identifier.chars().take(256).collect(),
    };
    // A destination's key under the current secret, and under the previous
    // one during a rotation, so that limits keep counting across it.
    let (destination, fallback, destination_keys) = match route {
        Some(route) => {
            let keys =
                ring.destination_keys(route.primary.channel.as_str(), &route.primary.address);
            (route.primary, route.fallback, keys)
        }
        None => {
            let source = (agent.source.to_u32(), agent.id_column.as_str());
            let seed = keys.decoy_key(source, &subject);
            (
                record::decoy(&agent, &seed),
                None,
                ring.decoy_keys(source, &subject),
            )
        }
    };
    let decoy = destination.address.is_empty();
    let destination_key = &destination_keys[0];

    limits::lock_sender(&agent.name, &subject, destination_key);
    let now = clock::now(); // after waiting for the locks
    if let Some(next) = limits::next_allowed(client, &agent, &subject, &destination_keys, now)? {
        // Refused: no code is written, and an earlier code stays valid.
        audit::rate_limited(client, &agent.name, conversation, &subject, now)?;
        return Ok(Issued {
            expires_at: Some(next),
            ..Issued::bare(IssueStatus::RateLimited)
        });
    }
    supersede_pending(client, &agent.name, conversation, now)?;

    // update(), not select(): nextval() writes, and must not depend on an
    // earlier statement having made this SPI session read-write.
    let row = prepared::update(
        client,
        "SELECT pg_catalog.nextval('otp.challenge_id_seq'), $1 + $2",
        Some(1),
        &[now.into(), agent.code_ttl.into()],
    )?
    .first();
    let challenge_id: i64 = row.get(1)?.expect("nextval is never NULL");
    let expires_at: TimestampWithTimeZone =
        row.get(2)?.expect("timestamptz + interval is never NULL");

    let code = crypto::generate_code();
    let code_hash = keys.code_hash(challenge_id, &agent.name, conversation, &code);
    prepared::update(
        client,
        // The challenge and its audit event in one statement. (Its delivery
        // columns start at their defaults; the delivery module owns them.)
        "WITH issued AS (
             INSERT INTO otp.challenge (id, agent, conversation, subject, channel, destination_hint, destination_key,
                                        code_hash, max_attempts, created_at, expires_at, decoy, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
          RETURNING agent, conversation, subject, channel, destination_hint)
         INSERT INTO otp.event (at, agent, conversation, subject, event, channel, destination_hint)
         SELECT $10, agent, conversation, subject, $14, channel, destination_hint FROM issued",
        None,
        &[
            challenge_id.into(),
            agent.name.as_str().into(),
            conversation.into(),
            subject.as_str().into(),
            destination.channel.as_str().into(),
            destination.hint.as_str().into(),
            destination_key.to_vec().into(),
            code_hash.to_vec().into(),
            agent.max_attempts.into(),
            now.into(),
            expires_at.into(),
            decoy.into(),
            keys.id.to_vec().into(),
            Event::Issued.as_str().into(),
        ],
    )?;
    // A decoy's message has no person, so no language or time zone.
    let person = found.as_ref().filter(|_| !decoy);
    let message = delivery::Outgoing {
        challenge_id,
        agent: &agent.name,
        conversation,
        destination: &destination,
        fallback: fallback.as_ref(),
        code: &code,
        language: person.and_then(|person| person.language.as_deref()),
        time_zone: person.and_then(|person| person.time_zone.as_deref()),
        created_at: now,
        expires_at,
    };
    delivery::enqueue(client, keys, &message)?;

    Ok(Issued {
        status: IssueStatus::CodeSent,
        channel: Some(destination.channel.as_str()),
        destination_hint: Some(destination.hint),
        expires_at: Some(expires_at),
        session_token: None,
    })
}

/// What the conversation's latest challenge is doing, for an agent that
/// wants to tell the user where the code went.
pub struct ChallengeStatus {
    pub status: String,
    pub channel: Option<String>,
    pub destination_hint: Option<String>,
    pub delivery: Option<String>,
    pub attempts_remaining: Option<i32>,
    pub expires_at: Option<TimestampWithTimeZone>,
}

/// The latest challenge of a conversation: `pending` (with attempts left),
/// `verified`, `locked`, `expired`, `superseded`, or `no_challenge`.
/// `delivery` says what became of the message: `queued`, `sent`, `failed`,
/// `expired` or `cancelled`; `channel` is the one actually in use.
pub fn status(
    client: &SpiClient<'_>,
    agent: Option<&str>,
    conversation: Option<&str>,
) -> Result<ChallengeStatus> {
    let agent_name = config::agent_name(agent)?;
    let conversation = config::conversation_id(conversation)?;
    let agent = config::load(client, agent_name)?;
    config::check_caller(&agent)?;
    let now = clock::now();
    let row = prepared::select(
        client,
        "SELECT CASE WHEN state = 'pending' AND expires_at <= $3 THEN 'expired' ELSE state END,
                channel, destination_hint, delivery,
                CASE WHEN state = 'pending' AND expires_at > $3 THEN max_attempts - attempts_used END,
                expires_at, id, max_attempts
           FROM otp.challenge
          WHERE agent = $1 AND conversation = $2
          ORDER BY id DESC
          LIMIT 1",
        Some(1),
        &[agent.name.as_str().into(), conversation.into(), now.into()],
    )?
        .first();
    if row.is_empty() {
        return Ok(ChallengeStatus {
            status: VerifyStatus::NoChallenge.as_str().to_owned(),
            channel: None,
            destination_hint: None,
            delivery: None,
            attempts_remaining: None,
            expires_at: None,
        });
    }
    let mut status: String = row.get(1)?.unwrap_or_default();
    let mut attempts_remaining: Option<i32> = row.get(5)?;
    // Guesses rolled back since are in the ledger, not in the row.
    if let (Some(remaining), Some(id), Some(max)) =
        (attempts_remaining, row.get::<i64>(7)?, row.get::<i32>(8)?)
    {
        if let Some(counted) = ledger::challenge(id) {
            if counted.consumed {
                status = VerifyStatus::Verified.as_str().to_owned();
                attempts_remaining = None;
            } else if counted.count >= max {
                status = VerifyStatus::Locked.as_str().to_owned();
                attempts_remaining = None;
            } else {
                attempts_remaining = Some(remaining.min(max - counted.count));
            }
        }
    }
    Ok(ChallengeStatus {
        status,
        channel: row.get(2)?,
        destination_hint: row.get(3)?,
        delivery: row.get(4)?,
        attempts_remaining,
        expires_at: row.get(6)?,
    })
}

/// Checks a code the user typed in a conversation.
pub fn verify(
    client: &mut SpiClient<'_>,
    agent: Option<&str>,
    conversation: Option<&str>,
    code: Option<&str>,
) -> Result<Verified> {
    let agent_name = config::agent_name(agent)?;
    let conversation = config::conversation_id(conversation)?;
    let submitted = code.ok_or_else(|| OtpError::null_argument("code"))?;
    let ring = gucs::keys()?;
    let agent = config::load(client, agent_name)?;
    config::check_caller(&agent)?;
    let Some(submitted) = normalize_code(submitted) else {
        // A typo is not a guess: it costs no attempt.
        return Ok(Verified::bare(VerifyStatus::InvalidFormat));
    };

    // FOR UPDATE serialises concurrent submissions: each one sees the
    // attempts and state its predecessors committed.
    xact::refuse_prepare();
    let row = prepared::update(
        client,
        "SELECT id, subject, code_hash, attempts_used, max_attempts, expires_at, key_id, decoy,
                channel, destination_key
               FROM otp.challenge
              WHERE agent = $1 AND conversation = $2 AND state = 'pending'
                FOR UPDATE",
        Some(1),
        &[agent.name.as_str().into(), conversation.into()],
    )?
    .first();
    if row.is_empty() {
        return Ok(Verified::bare(VerifyStatus::NoChallenge));
    }
    let challenge_id: i64 = row.get(1)?.expect("NOT NULL column");
    let subject: String = row.get(2)?.unwrap_or_default();
    let stored_hash: Vec<u8> = row.get(3)?.unwrap_or_default();
    let attempts_used: i32 = row.get(4)?.unwrap_or(0);
    let max_attempts: i32 = row.get(5)?.unwrap_or(agent.max_attempts);
    let expires_at: TimestampWithTimeZone = row.get(6)?.expect("NOT NULL column");
    let key_id: Vec<u8> = row.get(7)?.unwrap_or_default();
    let decoy: bool = row.get(8)?.unwrap_or(false);
    let fingerprint = Fingerprint {
        channel: Channel::parse(&row.get::<String>(9)?.unwrap_or_default())
            .unwrap_or(Channel::WhatsApp),
        key: row.get(10)?.unwrap_or_default(),
        key_id: key_id.clone(),
    };
    // Every row lock the verification needs once the guess counts, taken
    // before it counts (see delivery::lock_open).
    delivery::lock_open(client, challenge_id)?;
    // One guess at a time per person, across all their conversations.
    let guard = limits::lock_guard(client, &agent, &subject)?;
    let now = clock::now(); // after waiting for the locks

    // A code hashed under a secret that is no longer configured (rotated
    // twice since) can never be checked again: it has expired.
    let Some(keys) = ring.for_id(&key_id).filter(|_| now < expires_at) else {
        end_challenge(client, challenge_id, Ending::Expired, now)?;
        return Ok(Verified::bare(VerifyStatus::Expired));
    };
    // A code works only while the person is in the source and the address
    // it went to is still on their record: a code sent to an old number
    // must not authenticate the new one. No attempt is used. (A decoy has
    // no record; it never verifies anyway. Before ALTER EXTENSION UPDATE
    // there is no word for this: see `schema`.)
    if !decoy
        && schema::installed().records_and_roles
        && !matches!(
            record::still(client, &agent, &subject, Some((&fingerprint, &ring)))?,
            Still::Same(_)
        )
    {
        end_challenge(client, challenge_id, Ending::RecordChanged, now)?;
        return Ok(Verified::bare(VerifyStatus::RecordChanged));
    }

    // The guess is counted where no rollback reaches before it is compared
    // (see `ledger`); the tables get the same outcome below.
    let lockout_end = now + agent.limits.lockout_duration;
    let guess = ledger::guess(
        &ledger::Challenge {
            id: challenge_id,
            attempts_used,
            max_attempts,
            expires_at: expires_at.into(),
        },
        &ledger::Person {
            agent: &agent.name,
            subject: &subject,
            failures: guard.failures,
            locked_until: guard.locked_until.map(Into::into),
            lockout_threshold: agent.limits.lockout_threshold,
            lockout_end: lockout_end.into(),
        },
        now.into(),
        // A decoy's code was never sent to anyone: it never verifies, but
        // costs the same comparison.
        || {
            keys.code_matches(
                &stored_hash,
                challenge_id,
                &agent.name,
                conversation,
                &submitted,
            ) & !decoy
        },
    )?;
    limits::save_guard(
        client,
        &agent,
        &subject,
        &guard,
        guess.failures,
        guess.locked_until,
    )?;

    let locked = || Verified {
        attempts_remaining: Some(0),
        ..Verified::bare(VerifyStatus::Locked)
    };
    match guess.judgement {
        ledger::Judgement::Used => {
            // Verified in a transaction that rolled back: the code is used.
            end_challenge(client, challenge_id, Ending::Verified, now)?;
            Ok(Verified::bare(VerifyStatus::NoChallenge))
        }
        ledger::Judgement::LockedOut | ledger::Judgement::Exhausted => {
            end_challenge(client, challenge_id, Ending::Locked, now)?;
            Ok(locked())
        }
        ledger::Judgement::Right => {
            end_challenge(client, challenge_id, Ending::Verified, now)?;
            let token = session::start(
                client,
                &agent,
                conversation,
                &subject,
                Some(challenge_id),
                (!decoy).then_some(&fingerprint),
                now,
            )?;
            Ok(Verified {
                status: VerifyStatus::Verified,
                attempts_remaining: None,
                session_token: Some(token),
                subject: Some(subject),
            })
        }
        ledger::Judgement::Wrong {
            attempts_used,
            locked_out,
        } => {
            prepared::update(
                client,
                "UPDATE otp.challenge SET attempts_used = $2 WHERE id = $1",
                None,
                &[challenge_id.into(), attempts_used.into()],
            )?;
            audit::challenge_event(client, challenge_id, Event::Incorrect, now)?;
            if attempts_used < max_attempts && !locked_out {
                return Ok(Verified {
                    attempts_remaining: Some(max_attempts - attempts_used),
                    ..Verified::bare(VerifyStatus::Incorrect)
                });
            }
            end_challenge(client, challenge_id, Ending::Locked, now)?;
            Ok(locked())
        }
    }
}

/// The code as digits, or None when the input is not a 6-digit code.
/// Spaces and hyphens are ignored ("483 921", "483-921"); anything else,
/// including non-ASCII digits such as "٤٨٣٩٢١", makes it invalid.
pub fn normalize_code(input: &str) -> Option<Code> {
    const IGNORED_DASHES: [char; 6] = [
        '-', '\u{2010}', '\u{2011}', '\u{2012}', '\u{2013}', '\u{2212}',
    ];
    // Bound the work on hostile input before collecting anything.
    if input.len() > 64 {
        return None;
    }
    let digits: Code = Zeroizing::new(
        input
            .chars()
            .filter(|c| !c.is_whitespace() && !IGNORED_DASHES.contains(c))
            .collect(),
    );
    (digits.len() == CODE_DIGITS && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// One statement that moves pending challenges (those matching `$where`,
/// whose parameters are $4 onwards) to a final state and records the event;
/// it returns their ids, for `delivery::stop`. Parameters: $1 state, $2
/// time, $3 the event word.
macro_rules! end_pending {
    ($where:literal) => {
        concat!(
            "WITH ended AS (
                 UPDATE otp.challenge SET state = $1, ended_at = $2
                  WHERE ",
            $where,
            " AND state = 'pending'
              RETURNING id, agent, conversation, subject, channel, destination_hint),
             recorded AS (
                 INSERT INTO otp.event (at, agent, conversation, subject, event, channel, destination_hint)
                 SELECT $2, agent, conversation, subject, $3, channel, destination_hint FROM ended)
             SELECT id FROM ended"
        )
    };
}

/// Ends the conversation's pending challenge, if any: the user started over.
fn supersede_pending(
    client: &mut SpiClient<'_>,
    agent: &str,
    conversation: &str,
    now: TimestampWithTimeZone,
) -> Result<()> {
    end_where(
        client,
        end_pending!("agent = $4 AND conversation = $5"),
        Ending::Superseded,
        now,
        vec![agent.into(), conversation.into()],
    )
}

/// Runs an `end_pending!` statement for `ending`: the parameters every such
/// statement takes, then `selector`, the parameters of its WHERE clause.
/// Delivery of the ended challenges' codes stops in the same transaction.
fn end_where<'a>(
    client: &mut SpiClient<'_>,
    sql: &str,
    ending: Ending,
    now: TimestampWithTimeZone,
    selector: Vec<DatumWithOid<'a>>,
) -> Result<()> {
    let mut args: Vec<DatumWithOid<'a>> = vec![
        ending.state().into(),
        now.into(),
        ending.event().as_str().into(),
    ];
    args.extend(selector);
    let ended = prepared::update(client, sql, None, &args)?
        .map(|row| Ok(row.get::<i64>(1)?.unwrap_or_default()))
        .collect::<Result<Vec<i64>>>()?;
    delivery::stop(client, &ended, ending.stop(), now)
}

/// How a pending challenge ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Verified,
    Locked,
    Expired,
    Superseded,
    RecordChanged,
}

/// The words of otp.challenge.state: `pending`, then how it ended.
#[cfg(any(test, feature = "pg_test"))]
pub fn state_words() -> Vec<&'static str> {
    let ended = [
        Ending::Verified,
        Ending::Locked,
        Ending::Expired,
        Ending::Superseded,
        Ending::RecordChanged,
    ];
    std::iter::once("pending")
        .chain(ended.into_iter().map(Ending::state))
        .collect()
}

impl Ending {
    fn state(self) -> &'static str {
        match self {
            Ending::Verified => "verified",
            Ending::Locked => "locked",
            Ending::Expired => "expired",
            Ending::Superseded => "superseded",
            Ending::RecordChanged => "record_changed",
        }
    }

    /// What becomes of the code's message.
    fn stop(self) -> delivery::Stop {
        match self {
            Ending::Verified => delivery::Stop::Verified,
            Ending::Expired => delivery::Stop::Expired,
            Ending::Locked | Ending::Superseded | Ending::RecordChanged => delivery::Stop::Ended,
        }
    }

    fn event(self) -> Event {
        match self {
            Ending::Verified => Event::Verified,
            Ending::Locked => Event::Locked,
            Ending::Expired => Event::Expired,
            Ending::Superseded => Event::Superseded,
            Ending::RecordChanged => Event::RecordChanged,
        }
    }
}

/// Moves a pending challenge to a final state, stops delivery of its code
/// and records the event.
fn end_challenge(
    client: &mut SpiClient<'_>,
    challenge_id: i64,
    ending: Ending,
    now: TimestampWithTimeZone,
) -> Result<()> {
    end_where(
        client,
        end_pending!("id = $4"),
        ending,
        now,
        vec![challenge_id.into()],
    )
}

/// Ends every pending challenge of an agent as `record_changed`: its source
/// changed (otp_configure), so the person a code was sent for may not be
/// who the identifier now names.
pub fn end_agent(
    client: &mut SpiClient<'_>,
    agent: &str,
    now: TimestampWithTimeZone,
) -> Result<()> {
    end_where(
        client,
        end_pending!("agent = $4"),
        Ending::RecordChanged,
        now,
        vec![agent.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::normalize_code;

    #[test]
    fn accepts_six_digits_with_spaces_and_hyphens() {
        for input in [
            "483921",
            " 483 921 ",
            "483-921",
            "4-8-3-9-2-1",
            "483\u{a0}921",
            "483\u{2011}921",
            "\t483921\n",
        ] {
            assert_eq!(
                normalize_code(input).as_deref().map(String::as_str),
                Some("483921"),
                "{input:?}"
            );
        }
    }

    mod properties {
        use super::super::normalize_code;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever comes in, the answer is six ASCII digits or nothing,
            /// and never a panic.
            #[test]
            fn output_is_six_ascii_digits_or_nothing(input in any::<String>()) {
                if let Some(code) = normalize_code(&input) {
                    prop_assert_eq!(code.len(), 6);
                    prop_assert!(code.bytes().all(|b| b.is_ascii_digit()));
                }
            }

            /// A real code survives any spacing and hyphenation a phone adds.
            #[test]
            fn separators_are_ignored(code in "[0-9]{6}", seps in proptest::collection::vec("[ \t\u{a0}-]{0,2}", 7)) {
                let mut typed = seps[0].clone();
                for (digit, sep) in code.chars().zip(&seps[1..]) {
                    typed.push(digit);
                    typed.push_str(sep);
                }
                let normalized = normalize_code(&typed);
                prop_assert_eq!(normalized.as_deref().map(String::as_str), Some(code.as_str()));
            }

            /// Anything with a character other than digits, spaces and
            /// hyphens is refused (it costs no attempt).
            #[test]
            fn other_characters_are_refused(code in "[0-9]{6}", noise in "[^0-9\\s\u{2010}-\u{2013}\u{2212}-]", at in 0usize..7) {
                let mut typed = code.clone();
                typed.insert_str(typed.char_indices().nth(at).map_or(typed.len(), |(i, _)| i), &noise);
                prop_assert!(normalize_code(&typed).is_none(), "{:?}", typed);
            }
        }
    }

    #[test]
    fn rejects_everything_else() {
        for input in [
            "",
            "48392",
            "4839211",
            "48392a",
            "483.921",
            "٤٨٣٩٢١",
            "４８３９２１",
            "+48392",
            "483921 483921",
        ] {
            assert!(normalize_code(input).is_none(), "{input:?}");
        }
        assert!(normalize_code(&"1".repeat(10_000)).is_none());
        assert!(normalize_code(&format!("{}483921", " ".repeat(100))).is_none());
    }
}
