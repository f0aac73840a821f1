use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::ids::{DeviceId, EnrollmentCodeId, UserId};
use crate::secrets::{SecretsError, TokenHash, generate_token};

/// What an enrollment code lets a phone do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnrollmentPurpose {
    /// Install a configuration profile that enrols a mobile device certificate (DESIGN §2 D).
    MobileProfile,
    /// Enrol a derived PIV credential (DESIGN §2 C); `sponsor` is the card that proved possession,
    /// absent when the policy needs no sponsor.
    DerivedPiv { sponsor: Option<DeviceId> },
}

/// A one-time, short-lived code shown as a QR code or URL. Only its hash is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentCode {
    pub id: EnrollmentCodeId,
    pub user: UserId,
    pub purpose: EnrollmentPurpose,
    pub code_hash: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
}

/// Why a presented enrollment code was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EnrollmentError {
    #[error("the enrollment code does not match")]
    WrongCode,
    #[error("the enrollment code expired at {0}")]
    Expired(OffsetDateTime),
    #[error("the enrollment code was already used at {0}")]
    AlreadyUsed(OffsetDateTime),
}

impl EnrollmentCode {
    /// A fresh code valid for `ttl` from `at`. Returns the record to store and the code to show
    /// the user once (it cannot be recovered from the record).
    pub fn issue(
        user: UserId,
        purpose: EnrollmentPurpose,
        ttl: Duration,
        at: OffsetDateTime,
    ) -> Result<(Self, SecretString), SecretsError> {
        let (code, code_hash) = generate_token(20)?;
        let record = Self {
            id: EnrollmentCodeId::new(),
            user,
            purpose,
            code_hash,
            created_at: at,
            expires_at: at + ttl,
            used_at: None,
        };
        Ok((record, code))
    }

    /// Uses the code up. Fails (changing nothing) if `presented` is not this code, or the code has
    /// expired or was used before.
    pub fn redeem(&mut self, presented: &str, at: OffsetDateTime) -> Result<(), EnrollmentError> {
        if !self.code_hash.matches(presented) {
            return Err(EnrollmentError::WrongCode);
        }
        if let Some(used) = self.used_at {
            return Err(EnrollmentError::AlreadyUsed(used));
        }
        if at >= self.expires_at {
            return Err(EnrollmentError::Expired(self.expires_at));
        }
        self.used_at = Some(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    #[test]
    fn codes_are_one_time_and_expire() {
        let t0 = datetime!(2025-03-01 10:00 UTC);
        let (mut code, secret) =
            EnrollmentCode::issue(UserId::new(), EnrollmentPurpose::MobileProfile, Duration::minutes(10), t0)
                .unwrap();
        assert_eq!(secret.expose_secret().len(), 40);
        let before = code.clone();
        assert_eq!(code.redeem("not-it", t0), Err(EnrollmentError::WrongCode));
        assert_eq!(
            code.redeem(secret.expose_secret(), t0 + Duration::minutes(10)),
            Err(EnrollmentError::Expired(code.expires_at))
        );
        assert_eq!(code, before);
        code.redeem(secret.expose_secret(), t0 + Duration::minutes(9)).unwrap();
        assert_eq!(
            code.redeem(secret.expose_secret(), t0 + Duration::minutes(9)),
            Err(EnrollmentError::AlreadyUsed(t0 + Duration::minutes(9)))
        );
    }
}
