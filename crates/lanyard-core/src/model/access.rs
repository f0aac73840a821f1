use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::check_text;
use crate::ids::{ApiTokenId, UserId};
use crate::secrets::{SecretsError, TokenHash, generate_token};

/// A long-lived token for scripts and the admin CLI. Acts as its user; audit events name the
/// token. Only the hash is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: ApiTokenId,
    pub user: UserId,
    /// What the token is for, 1–64 characters.
    pub name: String,
    pub token_hash: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiToken {
    /// A new token; the secret is returned once and not kept.
    pub fn issue(
        user: UserId,
        name: impl Into<String>,
        expires_at: Option<OffsetDateTime>,
        at: OffsetDateTime,
    ) -> Result<(Self, SecretString), crate::DomainError> {
        let name = name.into();
        check_text("token name", &name, 64)?;
        let (secret, token_hash) = generate_token(32)?;
        let token = Self {
            id: ApiTokenId::new(),
            user,
            name,
            token_hash,
            created_at: at,
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        Ok((token, secret))
    }

    /// Whether the token authenticates at `at`.
    pub fn is_valid(&self, at: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| at < e)
    }
}

/// A portal login session. Keyed by the hash of the cookie value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token_hash: TokenHash,
    pub user: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
}

impl Session {
    /// A new session for `user` lasting `ttl`; the cookie value is returned once.
    pub fn start(
        user: UserId,
        ttl: Duration,
        at: OffsetDateTime,
    ) -> Result<(Self, SecretString), SecretsError> {
        let (secret, token_hash) = generate_token(32)?;
        Ok((Self { token_hash, user, created_at: at, expires_at: at + ttl, last_seen_at: at }, secret))
    }

    /// Whether the session is still good at `at`.
    pub fn is_valid(&self, at: OffsetDateTime) -> bool {
        at < self.expires_at
    }

    /// The CSRF token of the session whose cookie value is `secret`: HMAC-SHA-256 keyed with the
    /// cookie value, as hex. Derived rather than stored, so sessions need no extra column; the
    /// cookie value carries 256 bits, so nobody without the cookie can compute the token, and
    /// the token (which a page may show to scripts) does not reveal the cookie.
    pub fn csrf_token(secret: &str) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        hex::encode(aws_lc_rs::hmac::sign(&key, b"lanyard csrf v1").as_ref())
    }

    /// Whether `presented` is the CSRF token of the session with cookie value `secret`
    /// (compared in constant time).
    pub fn csrf_matches(secret: &str, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            Self::csrf_token(secret).as_bytes(),
            presented.as_bytes(),
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let a = Session::csrf_token("a".repeat(64).as_str());
        let b = Session::csrf_token("b".repeat(64).as_str());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(Session::csrf_matches(&"a".repeat(64), &a));
        assert!(!Session::csrf_matches(&"a".repeat(64), &b));
        assert!(!Session::csrf_matches(&"a".repeat(64), ""));
    }
}
