use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{CredentialId, DeviceId};
use crate::lifecycle::{CredentialState, RevocationReason};
use crate::macros::{serde_hex, string_enum};

string_enum! {
    /// Key algorithms a policy can choose (DESIGN §6).
    pub enum KeyAlgorithm ("key algorithm") {
        P256 = "p-256",
        P384 = "p-384",
        Rsa2048 = "rsa-2048",
        Rsa3072 = "rsa-3072",
    }
}

impl KeyAlgorithm {
    /// Whether this is an RSA algorithm.
    pub const fn is_rsa(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072)
    }
}

string_enum! {
    /// Where a certificate lives: a PIV key slot, or a mobile credential.
    pub enum CertSlot ("certificate slot") {
        /// 9A, PIV Authentication.
        PivAuthentication = "9a",
        /// 9C, Digital Signature.
        DigitalSignature = "9c",
        /// 9D, Key Management.
        KeyManagement = "9d",
        /// 9E, Card Authentication.
        CardAuthentication = "9e",
        /// Derived PIV Authentication (NIST SP 800-157) on a mobile.
        DerivedPivAuthentication = "derived_piv",
        /// A mobile device certificate from configuration-profile enrolment.
        MobileDevice = "mobile",
    }
}

impl CertSlot {
    /// The PIV key reference, for card slots.
    pub const fn piv_key_reference(self) -> Option<u8> {
        match self {
            CertSlot::PivAuthentication => Some(0x9A),
            CertSlot::DigitalSignature => Some(0x9C),
            CertSlot::KeyManagement => Some(0x9D),
            CertSlot::CardAuthentication => Some(0x9E),
            CertSlot::DerivedPivAuthentication | CertSlot::MobileDevice => None,
        }
    }

    /// Whether the slot belongs to a mobile rather than a card.
    pub const fn is_mobile(self) -> bool {
        self.piv_key_reference().is_none()
    }
}

/// What the credential is. Certificates only for now; passkeys and OTP seeds come later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CredentialKind {
    Certificate {
        slot: CertSlot,
        /// The CA profile it was issued under.
        profile: String,
        /// The certificate serial number, lowercase hex without leading zero octets.
        serial_hex: String,
        #[serde(with = "time::serde::rfc3339")]
        not_before: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        not_after: OffsetDateTime,
        #[serde(with = "serde_hex")]
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = "hex"))]
        certificate_der: Vec<u8>,
        /// The device's key attestation (YubiKey slot F9 chain leaf), when it had one.
        #[serde(with = "serde_hex::option")]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "hex"))]
        attestation_der: Option<Vec<u8>>,
    },
}

/// A credential held by a device. `state`, `held_from`, `revocation_reason` and `revoked_at`
/// change only through [`crate::lifecycle::apply_credential`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credential {
    pub id: CredentialId,
    pub device: DeviceId,
    pub kind: CredentialKind,
    pub state: CredentialState,
    /// While OnHold: the state Release returns to.
    pub held_from: Option<CredentialState>,
    pub revocation_reason: Option<RevocationReason>,
    /// When the credential stopped being valid: set on hold or revocation (kept when a held
    /// credential is then revoked), cleared on release. This is the CRL entry's revocation date.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Credential {
    /// A new Pending credential on `device`.
    pub fn new(device: DeviceId, kind: CredentialKind, at: OffsetDateTime) -> Self {
        Self {
            id: CredentialId::new(),
            device,
            kind,
            state: CredentialState::Pending,
            held_from: None,
            revocation_reason: None,
            revoked_at: None,
            created_at: at,
            updated_at: at,
        }
    }

    /// The certificate serial, for certificate credentials.
    pub fn serial_hex(&self) -> &str {
        match &self.kind {
            CredentialKind::Certificate { serial_hex, .. } => serial_hex,
        }
    }
}
