//! Passkeys: WebAuthn credentials of a user's security key, registered for portal sign-in, and the
//! one-time challenges of the two WebAuthn ceremonies. The WebAuthn checks themselves live in
//! `lanyard-webauthn`; this is the data the domain keeps.
//!
//! A passkey belongs to a user *and* to one of their devices (the security key it lives on), and
//! is usable only while both its own state is Active and the device's current state is Active:
//! suspending or revoking the device disables the passkey at once, resuming it restores it,
//! because sign-in reads the device's state, not a copy.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ids::{DeviceId, PasskeyId, UserId};
use crate::macros::{serde_hex, string_enum};
use crate::secrets::{SecretsError, TokenHash, random_fill};

/// How long a registration or sign-in challenge may be answered after it was issued.
pub const WEBAUTHN_CHALLENGE_TTL: Duration = Duration::minutes(5);

string_enum! {
    /// A passkey registration's own state. Whether it can be used also depends on its device.
    pub enum PasskeyState ("passkey state") {
        /// Registered; usable while its device is Active.
        Active = "active",
        /// Removed by its holder or an operator; never usable again (the record stays for the
        /// audit trail).
        Removed = "removed",
    }
}

string_enum! {
    /// What a WebAuthn challenge was issued for.
    pub enum ChallengePurpose ("challenge purpose") {
        /// Registering a passkey for a device (`navigator.credentials.create`).
        Registration = "registration",
        /// Signing in with a passkey (`navigator.credentials.get`).
        SignIn = "sign_in",
    }
}

/// A registered passkey.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Passkey {
    pub id: PasskeyId,
    /// The WebAuthn credential id (hex in JSON), unique across the installation.
    #[serde(with = "serde_hex")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub credential_id: Vec<u8>,
    pub user: UserId,
    /// The security key the passkey lives on.
    pub device: DeviceId,
    /// The relying party id (the portal's host name) it was registered for.
    pub rp_id: String,
    /// The credential's public key as a COSE_Key (hex in JSON).
    #[serde(with = "serde_hex")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub public_key: Vec<u8>,
    /// The signature counter last seen.
    pub sign_count: u32,
    /// The authenticator model's AAGUID as the key reported it (hex; all zero when withheld).
    #[serde(with = "serde_hex")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub aaguid: [u8; 16],
    /// `none`, `packed-self` or `packed-x5c`: which attestation came with the registration.
    pub attestation: String,
    pub state: PasskeyState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub removed_at: Option<OffsetDateTime>,
}

/// A one-time WebAuthn challenge. Only its hash is stored, with the hash of the browser session
/// it is bound to (the portal session for a registration, a short-lived sign-in cookie for a
/// sign-in); it is redeemed once, by the ceremony it was issued for, before it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebAuthnChallenge {
    pub challenge_hash: TokenHash,
    pub purpose: ChallengePurpose,
    pub binding: TokenHash,
    /// The user a registration challenge was issued to (none for sign-in).
    pub user: Option<UserId>,
    /// The device a registration challenge is for (none for sign-in).
    pub device: Option<DeviceId>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

impl WebAuthnChallenge {
    /// A fresh random challenge of [`CHALLENGE_LEN`] bytes for `purpose`, bound to the browser
    /// session `binding`, valid for [`WEBAUTHN_CHALLENGE_TTL`] from `at`. Returns the record to
    /// store and the challenge to send.
    pub fn issue(
        purpose: ChallengePurpose,
        binding: TokenHash,
        user: Option<UserId>,
        device: Option<DeviceId>,
        at: OffsetDateTime,
    ) -> Result<(Self, [u8; CHALLENGE_LEN]), SecretsError> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        random_fill(&mut challenge)?;
        let record = Self {
            challenge_hash: Self::hash_of(&challenge),
            purpose,
            binding,
            user,
            device,
            created_at: at,
            expires_at: at + WEBAUTHN_CHALLENGE_TTL,
            used_at: None,
        };
        Ok((record, challenge))
    }

    /// The stored form of a challenge (the raw bytes, as decoded from `clientDataJSON`).
    pub fn hash_of(challenge: &[u8]) -> TokenHash {
        TokenHash::of(&hex::encode(challenge))
    }
}

/// Bytes in a WebAuthn challenge (the spec asks for at least 16).
pub const CHALLENGE_LEN: usize = 32;
