//! All cryptography of pg_otp, built only from well-reviewed crates.
//!
//! - Codes: uniform over 000000..=999999 from the operating system's CSPRNG
//!   (`rand`'s range sampling rejects instead of taking a modulo: no bias).
//! - Code hashes: HMAC-SHA256 under a key derived from `otp.secret_key`, over
//!   the challenge id, agent, conversation and code. Without the secret a table
//!   dump cannot be brute-forced (10^6 codes, but each guess needs the key), and
//!   a hash from one challenge is worthless for any other.
//! - Outbox: the code is sealed with XChaCha20-Poly1305 (random 192-bit nonce,
//!   associated data binds it to its challenge) so only holders of the secret
//!   can read it back; the row is erased once the message is final.
//! - Session tokens: 256 random bits, base64url; only SHA-256 of them is kept.
//! - Comparisons of secrets in constant time (`subtle`).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use pgrx::PgSqlErrorCode;
use rand::rngs::OsRng;
use rand::{Rng, TryRngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::errors::{OtpError, Result};

/// Number of digits in a code.
pub const CODE_DIGITS: usize = 6;
const CODE_SPACE: u32 = 1_000_000;

const HKDF_SALT: &[u8] = b"pg_otp key derivation v1";
const CODE_HASH_INFO: &[u8] = b"pg_otp code hash v1";
const OUTBOX_SEAL_INFO: &[u8] = b"pg_otp outbox seal v1";
const DESTINATION_KEY_INFO: &[u8] = b"pg_otp destination key v1";
const KEY_ID_INFO: &[u8] = b"pg_otp key id v1";
const OUTBOX_AAD_PREFIX: &[u8] = b"pg_otp outbox v1";

/// A plaintext code; wiped from memory when dropped.
pub type Code = Zeroizing<String>;

/// Keys derived from the server secret for one call; wiped when dropped.
pub struct Keys {
    /// Names these keys in stored rows, so that after a rotation each row is
    /// read with the keys it was written with. Derived, not secret.
    pub id: [u8; 8],
    code_hash: Zeroizing<[u8; 32]>,
    outbox_seal: Zeroizing<[u8; 32]>,
    destination: Zeroizing<[u8; 32]>,
}

/// The keys of `otp.secret_key` and, during a rotation, of
/// `otp.previous_secret_key`.
pub struct KeyRing {
    pub current: Keys,
    pub previous: Option<Keys>,
}

impl KeyRing {
    /// The keys a row was written with, if they are still configured.
    pub fn for_id(&self, id: &[u8]) -> Option<&Keys> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|keys| keys.id.as_slice() == id)
    }

    /// A decoy's key under every configured secret (see `Keys::decoy_key`).
    pub fn decoy_keys(&self, source: (u32, &str), identifier: &str) -> Vec<Vec<u8>> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .map(|keys| keys.decoy_key(source, identifier).to_vec())
            .collect()
    }

    /// A destination's key under every configured secret, so that send
    /// limits keep counting across a rotation.
    pub fn destination_keys(&self, channel: &str, address: &str) -> Vec<Vec<u8>> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .map(|keys| keys.destination_key(channel, address).to_vec())
            .collect()
    }
}

/// A sealed code as stored in otp.outbox.
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Keys {
    pub fn derive(secret: &[u8]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret);
        let mut code_hash = Zeroizing::new([0u8; 32]);
        let mut outbox_seal = Zeroizing::new([0u8; 32]);
        let mut destination = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 8160: expand cannot fail.
        hkdf.expand(CODE_HASH_INFO, code_hash.as_mut())
            .expect("32-byte HKDF output");
        hkdf.expand(OUTBOX_SEAL_INFO, outbox_seal.as_mut())
            .expect("32-byte HKDF output");
        hkdf.expand(DESTINATION_KEY_INFO, destination.as_mut())
            .expect("32-byte HKDF output");
        let mut id = [0u8; 8];
        hkdf.expand(KEY_ID_INFO, &mut id)
            .expect("8-byte HKDF output");
        Self {
            id,
            code_hash,
            outbox_seal,
            destination,
        }
    }

    /// The keyed hash stored for a challenge's code.
    pub fn code_hash(
        &self,
        challenge_id: i64,
        agent: &str,
        conversation: &str,
        code: &str,
    ) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.code_hash.as_ref())
            .expect("HMAC takes any key length");
        mac.update(&challenge_id.to_be_bytes());
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        for field in [agent.as_bytes(), conversation.as_bytes(), code.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    /// A keyed hash that identifies a destination (channel and address) for
    /// per-destination send limits, without keeping the address twice.
    pub fn destination_key(&self, channel: &str, address: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.destination.as_ref())
            .expect("HMAC takes any key length");
        let canonical: String = match otp_common::Channel::parse(channel) {
            // "+34 600-123 478" and "34600123478" are the same phone
            Some(otp_common::Channel::WhatsApp) => {
                address.chars().filter(char::is_ascii_digit).collect()
            }
            _ => address.trim().to_lowercase(),
        };
        mac.update(channel.as_bytes());
        mac.update(b":");
        mac.update(canonical.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The destination key of a decoy (an identifier hidden with
    /// reveal_unknown => false): scoped to where the identifier was looked
    /// up (`source`, the relation's OID and id column) and to the identifier
    /// exactly as it was compared. Agents on the same source share it, as
    /// they share a real person's destination limits; another spelling, or
    /// another source, does not (either would tell an unknown identifier
    /// from a real one).
    pub fn decoy_key(&self, source: (u32, &str), identifier: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.destination.as_ref())
            .expect("HMAC takes any key length");
        mac.update(b"decoy:");
        mac.update(&source.0.to_be_bytes());
        for field in [source.1.as_bytes(), identifier.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    /// Does `code` match the stored hash? Constant time in the hash bytes.
    pub fn code_matches(
        &self,
        stored: &[u8],
        challenge_id: i64,
        agent: &str,
        conversation: &str,
        code: &str,
    ) -> bool {
        let computed = self.code_hash(challenge_id, agent, conversation, code);
        bool::from(computed.as_slice().ct_eq(stored))
    }

    pub fn seal_code(&self, challenge_id: i64, code: &str) -> Result<Sealed> {
        let mut nonce = [0u8; 24];
        fill_random(&mut nonce)?;
        let aad = outbox_aad(challenge_id);
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: code.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| internal("sealing a code failed"))?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open_code(&self, challenge_id: i64, nonce: &[u8], ciphertext: &[u8]) -> Result<Code> {
        if nonce.len() != 24 {
            return Err(unopenable(challenge_id));
        }
        let aad = outbox_aad(challenge_id);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| unopenable(challenge_id))?,
        );
        let code = String::from_utf8(plain.to_vec()).map_err(|_| unopenable(challenge_id))?;
        Ok(Zeroizing::new(code))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(self.outbox_seal.as_ref()).expect("32-byte key")
    }
}

fn outbox_aad(challenge_id: i64) -> Vec<u8> {
    let mut aad = OUTBOX_AAD_PREFIX.to_vec();
    aad.extend_from_slice(&challenge_id.to_be_bytes());
    aad
}

fn unopenable(challenge_id: i64) -> OtpError {
    OtpError::new(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!("pg_otp: the sealed code of challenge {challenge_id} cannot be opened with the current otp.secret_key"),
    )
    .with_hint("Was otp.secret_key changed while codes were in flight?")
}

fn internal(what: &str) -> OtpError {
    OtpError::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("pg_otp: {what}"),
    )
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    OsRng.try_fill_bytes(buf).map_err(|err| {
        internal(&format!(
            "the operating system's random number generator failed: {err}"
        ))
    })
}

/// A fresh, uniformly random 6-digit code.
pub fn generate_code() -> Code {
    // UnwrapErr panics only if getrandom(2) fails; pgrx turns that into an ERROR.
    let n = OsRng.unwrap_err().random_range(0..CODE_SPACE);
    Zeroizing::new(format!("{n:0width$}", width = CODE_DIGITS))
}

/// A new session token and the hash to store for it.
pub fn new_session_token() -> Result<(Zeroizing<String>, [u8; 32])> {
    use base64::Engine as _;
    let mut raw = Zeroizing::new([0u8; 32]);
    fill_random(raw.as_mut())?;
    let token =
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()));
    let hash = session_token_hash(&token);
    Ok((token, hash))
}

/// What otp.session stores for a token. SHA-256 without a key is enough here:
/// tokens carry 256 bits of entropy, so the hash cannot be inverted by search.
pub fn session_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Random jitter in [0, 1), for retry backoff.
pub fn jitter() -> f64 {
    OsRng.unwrap_err().random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&[7u8; 32])
    }

    #[test]
    fn codes_are_six_ascii_digits_and_vary() {
        let codes: std::collections::HashSet<String> =
            (0..200).map(|_| generate_code().to_string()).collect();
        assert!(codes
            .iter()
            .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())));
        // 200 draws from 10^6 values: a repeat-heavy set means a broken generator.
        assert!(
            codes.len() > 190,
            "only {} distinct codes in 200",
            codes.len()
        );
    }

    #[test]
    fn code_hash_binds_challenge_agent_conversation_and_code() {
        let k = keys();
        let h = k.code_hash(1, "payroll", "conv-1", "123456");
        assert!(k.code_matches(&h, 1, "payroll", "conv-1", "123456"));
        assert!(!k.code_matches(&h, 2, "payroll", "conv-1", "123456"));
        assert!(!k.code_matches(&h, 1, "payrol", "lconv-1", "123456"));
        assert!(!k.code_matches(&h, 1, "payroll", "conv-2", "123456"));
        assert!(!k.code_matches(&h, 1, "payroll", "conv-1", "123457"));
        assert!(!k.code_matches(&h[..31], 1, "payroll", "conv-1", "123456"));
        let other = Keys::derive(&[8u8; 32]);
        assert!(!other.code_matches(&h, 1, "payroll", "conv-1", "123456"));
    }

    #[test]
    fn sealed_codes_open_only_for_their_challenge_and_key() {
        let k = keys();
        let sealed = k.seal_code(42, "004711").unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"004711"));
        assert_eq!(
            k.open_code(42, &sealed.nonce, &sealed.ciphertext)
                .unwrap()
                .as_str(),
            "004711"
        );
        assert!(k.open_code(43, &sealed.nonce, &sealed.ciphertext).is_err());
        assert!(Keys::derive(&[8u8; 32])
            .open_code(42, &sealed.nonce, &sealed.ciphertext)
            .is_err());
        let mut tampered = sealed.ciphertext.clone();
        tampered[0] ^= 1;
        assert!(k.open_code(42, &sealed.nonce, &tampered).is_err());
        assert!(k
            .open_code(42, &sealed.nonce[..12], &sealed.ciphertext)
            .is_err());
    }

    #[test]
    fn a_key_ring_finds_keys_by_id() {
        let ring = KeyRing {
            current: Keys::derive(&[1u8; 32]),
            previous: Some(Keys::derive(&[2u8; 32])),
        };
        assert_ne!(ring.current.id, ring.previous.as_ref().unwrap().id);
        let old_id = Keys::derive(&[2u8; 32]).id;
        assert!(std::ptr::eq(
            ring.for_id(&old_id).unwrap(),
            ring.previous.as_ref().unwrap()
        ));
        assert!(ring.for_id(&Keys::derive(&[3u8; 32]).id).is_none());
        assert_eq!(ring.destination_keys("email", "a@example.com").len(), 2);
    }

    #[test]
    fn decoy_keys_depend_on_source_and_exact_identifier() {
        let k = keys();
        let base = k.decoy_key((16384, "id"), "E-99");
        assert_ne!(base, k.decoy_key((16384, "id"), "e-99"));
        assert_ne!(base, k.decoy_key((16385, "id"), "E-99"));
        assert_ne!(base, k.decoy_key((16384, "idE"), "-99"));
        assert_ne!(base, k.decoy_key((16384, "no"), "E-99"));
        assert_eq!(base, k.decoy_key((16384, "id"), "E-99"));
    }

    #[test]
    fn session_tokens_are_256_bit_base64url() {
        let (token, hash) = new_session_token().unwrap();
        assert_eq!(token.len(), 43);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(hash, session_token_hash(&token));
        let (other, _) = new_session_token().unwrap();
        assert_ne!(*token, *other);
    }
}
