//! Workstation agents paired with a user (DESIGN §4): the one-time pairing code the portal shows,
//! and the agent record with its long-lived, revocable credential. Only hashes are stored.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::{ValidationError, check_text};
use crate::ids::{AgentId, PairingCodeId, UserId};
use crate::secrets::{SecretsError, TokenHash, generate_token, random_fill};

/// How long a pairing code may be redeemed after it was issued.
pub const PAIRING_CODE_TTL: Duration = Duration::minutes(2);

/// Crockford's base 32: digits and capitals without I, L, O and U, so nothing a person reads off
/// a screen is ambiguous. Input is read leniently ([`PairingCode::normalize`]).
pub const PAIRING_CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters in a pairing code (shown as two groups of five, `ABCDE-FGHJK`).
///
/// Ten characters of 32 symbols carry 50 bits. A code is good for one redemption within
/// [`PAIRING_CODE_TTL`] (two minutes), and it is redeemed on an unauthenticated endpoint, so
/// what it must resist is online guessing during those two minutes: even at 10 000 guesses a
/// second for the whole two minutes (each guess is a database write unit of work, far beyond what
/// one server answers while doing anything else) and with 1 000 codes live at once, the chance
/// that any guess hits is 1.2 × 10⁶ × 10³ / 2⁵⁰ ≈ 1 in 900 000. Eight characters (40 bits) would
/// make that about 1 in 900, too close for a credential that lasts. The hash kept is a fast
/// SHA-256 ([`TokenHash`]): 50 bits could be searched offline by someone holding the database,
/// but only within the same two minutes, and such a person holds far more than a pairing code.
pub const PAIRING_CODE_LEN: usize = 10;

/// How precisely an agent's `last_seen_at` is kept: authentication writes it at most this often.
pub const AGENT_SEEN_RESOLUTION: Duration = Duration::minutes(1);

/// A one-time code that pairs a workstation agent with the user who asked for it. Only the hash
/// of its normalized form is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCode {
    pub id: PairingCodeId,
    pub user: UserId,
    pub code_hash: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
}

impl PairingCode {
    /// A fresh code for `user`, valid for [`PAIRING_CODE_TTL`] from `at`. Returns the record to
    /// store and the code to show once, as `ABCDE-FGHJK`.
    pub fn issue(user: UserId, at: OffsetDateTime) -> Result<(Self, SecretString), SecretsError> {
        let mut raw = Zeroizing::new([0u8; PAIRING_CODE_LEN]);
        random_fill(raw.as_mut_slice())?;
        // 32 divides 256: the low five bits of a uniform byte are uniform.
        let code: Zeroizing<String> = Zeroizing::new(
            raw.iter().map(|b| char::from(PAIRING_CODE_ALPHABET[usize::from(b & 31)])).collect(),
        );
        let shown = Zeroizing::new(format!("{}-{}", &code[..5], &code[5..]));
        let record = Self {
            id: PairingCodeId::new(),
            user,
            code_hash: TokenHash::of(&code),
            created_at: at,
            expires_at: at + PAIRING_CODE_TTL,
            used_at: None,
        };
        Ok((record, SecretString::from(shown.as_str())))
    }

    /// The canonical form of a code as a person typed it: hyphens and spaces dropped, letters
    /// upper-cased, `O` read as `0` and `I`/`L` as `1`. Fails (naming the field `code`) when what
    /// remains is not [`PAIRING_CODE_LEN`] characters of [`PAIRING_CODE_ALPHABET`]; the message
    /// says nothing about which codes exist.
    pub fn normalize(presented: &str) -> Result<Zeroizing<String>, ValidationError> {
        let mut out = Zeroizing::new(String::with_capacity(PAIRING_CODE_LEN));
        for c in presented.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !PAIRING_CODE_ALPHABET.contains(&(c as u8)) {
                return Err(ValidationError::new(
                    "code",
                    format!(
                        "must be {PAIRING_CODE_LEN} letters and digits as shown (e.g. ABCDE-FGHJK); {c:?} is not one of them"
                    ),
                ));
            }
            out.push(c);
        }
        if out.len() != PAIRING_CODE_LEN {
            return Err(ValidationError::new(
                "code",
                format!(
                    "must be {PAIRING_CODE_LEN} letters and digits as shown (e.g. ABCDE-FGHJK), got {}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// The hash a presented code is looked up by.
    pub fn hash_of(presented: &str) -> Result<TokenHash, ValidationError> {
        Self::normalize(presented).map(|code| TokenHash::of(&code))
    }
}

/// A workstation agent paired with a user. It authenticates with a long-lived credential of
/// which only the hash is kept; revoking the agent ends it for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub user: UserId,
    /// The workstation's host name as the agent reported it when pairing (1–253 characters).
    pub host_name: String,
    pub credential_hash: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the credential last authenticated (to [`AGENT_SEEN_RESOLUTION`]); `None` until the
    /// agent first used it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Agent {
    /// Checks a host name as an agent reports it: non-empty, trimmed, at most 253 characters
    /// (the DNS limit), no control characters.
    pub fn check_host_name(host_name: &str) -> Result<(), ValidationError> {
        check_text("host_name", host_name, 253)
    }

    /// A new agent for `user`; the credential is returned once and not kept.
    pub fn pair(
        user: UserId,
        host_name: &str,
        at: OffsetDateTime,
    ) -> Result<(Self, SecretString), crate::DomainError> {
        Self::check_host_name(host_name)?;
        let (secret, credential_hash) = generate_token(32)?;
        let agent = Self {
            id: AgentId::new(),
            user,
            host_name: host_name.to_owned(),
            credential_hash,
            created_at: at,
            last_seen_at: None,
            revoked_at: None,
        };
        Ok((agent, secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    #[test]
    fn codes_are_short_unambiguous_and_hashed_in_normal_form() {
        let t0 = datetime!(2025-03-01 10:00 UTC);
        let (code, secret) = PairingCode::issue(UserId::new(), t0).unwrap();
        let shown = secret.expose_secret();
        assert_eq!(shown.len(), PAIRING_CODE_LEN + 1, "{shown}");
        assert_eq!(&shown[5..6], "-");
        assert!(shown.bytes().filter(|b| *b != b'-').all(|b| PAIRING_CODE_ALPHABET.contains(&b)), "{shown}");
        assert_eq!(code.expires_at, t0 + Duration::minutes(2));
        assert_ne!(code.code_hash, TokenHash::of(shown), "the hash is of the normal form");
        let typed =
            format!(" {} ", shown.to_lowercase().replace('-', " ").replace('0', "o").replace('1', "l"));
        assert_eq!(PairingCode::hash_of(&typed).unwrap(), code.code_hash);
        let (_, other) = PairingCode::issue(UserId::new(), t0).unwrap();
        assert_ne!(other.expose_secret(), shown);
    }

    #[test]
    fn malformed_codes_are_validation_errors_naming_the_field() {
        for bad in ["", "ABCDE-FGHJ", "ABCDE-FGHJKM", "ABCDE-FGHJU", "ÄBCDE-FGHJK"] {
            let err = PairingCode::normalize(bad).unwrap_err();
            assert_eq!(err.field, "code", "{bad:?}");
        }
    }

    #[test]
    fn agents_get_a_fresh_credential_and_a_checked_host_name() {
        let t0 = datetime!(2025-03-01 10:00 UTC);
        let (agent, secret) = Agent::pair(UserId::new(), "ws-0042.example.org", t0).unwrap();
        assert!(agent.credential_hash.matches(secret.expose_secret()));
        assert_eq!(secret.expose_secret().len(), 64);
        assert_eq!(agent.last_seen_at, None);
        for bad in ["", " ws", "ws\n", &"a".repeat(254)] {
            assert!(Agent::pair(UserId::new(), bad, t0).is_err(), "{bad:?}");
        }
    }
}
