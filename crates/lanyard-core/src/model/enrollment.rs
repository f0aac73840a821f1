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
    /// When the code was redeemed (the phone started enrolling); a code is redeemed once.
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
    /// The portal session that created the code: signing out (or the session expiring) ends the
    /// code too. `None` for codes made outside a portal session (API tokens, operators).
    pub session: Option<TokenHash>,
    /// The mobile created when the code was redeemed.
    pub device: Option<DeviceId>,
    /// When the enrolment completed (a certificate was issued to the mobile).
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

/// Which kind of enrolment a code is presented for, so a profile code cannot enrol a derived
/// credential and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentKind {
    MobileProfile,
    DerivedPiv,
}

impl EnrollmentKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EnrollmentKind::MobileProfile => "mobile profile",
            EnrollmentKind::DerivedPiv => "derived PIV credential",
        }
    }
}

impl EnrollmentPurpose {
    /// The kind of enrolment this purpose is for.
    pub const fn kind(&self) -> EnrollmentKind {
        match self {
            EnrollmentPurpose::MobileProfile => EnrollmentKind::MobileProfile,
            EnrollmentPurpose::DerivedPiv { .. } => EnrollmentKind::DerivedPiv,
        }
    }
}

/// Why a presented enrollment code was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EnrollmentError {
    #[error("the enrollment code is not known (mistyped, or removed after it expired)")]
    WrongCode,
    #[error("the enrollment code expired at {0}")]
    Expired(OffsetDateTime),
    #[error("the enrollment code was already used at {0}")]
    AlreadyUsed(OffsetDateTime),
    #[error("the enrollment code is for a {expected}, not a {presented}")]
    WrongKind { expected: &'static str, presented: &'static str },
    #[error("the enrollment code has not been redeemed, or its enrolment already completed")]
    NotInProgress,
    #[error("the portal session that created the enrollment code has ended; start again in the portal")]
    SessionEnded,
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
            session: None,
            device: None,
            completed_at: None,
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

    /// Checks that `presented` is this code, redeemed and not yet completed, and not expired: the
    /// second step of an app enrolment presents the code again.
    pub fn check_in_progress(&self, presented: &str, at: OffsetDateTime) -> Result<(), EnrollmentError> {
        if !self.code_hash.matches(presented) {
            return Err(EnrollmentError::WrongCode);
        }
        if at >= self.expires_at {
            return Err(EnrollmentError::Expired(self.expires_at));
        }
        if self.used_at.is_none() || self.completed_at.is_some() || self.device.is_none() {
            return Err(EnrollmentError::NotInProgress);
        }
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
