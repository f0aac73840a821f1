//! What the FIDO application remembers across power cycles, saved in the card image.

use serde::{Deserialize, Serialize};

/// PIN tries a new PIN starts with (a YubiKey's eight).
pub const PIN_RETRIES: u8 = 8;
/// Wrong PINs in a row after which the card wants a power cycle (CTAP2_ERR_PIN_AUTH_BLOCKED).
pub const PIN_TRIES_PER_POWER_UP: u8 = 3;
/// The minimum PIN length of a new or reset authenticator (CTAP 2.1: 4 code points).
pub const DEFAULT_MIN_PIN_LENGTH: u8 = 4;
/// How many discoverable credentials the card keeps.
pub const MAX_RESIDENT_CREDENTIALS: usize = 100;

/// The FIDO application's persistent state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FidoState {
    /// The card's FIDO attestation key (PKCS#8, P-256).
    #[serde(with = "hex")]
    pub attestation_key: Vec<u8>,
    /// Its certificate (DER), issued by the installation's FIDO attestation root.
    #[serde(with = "hex")]
    pub attestation_cert: Vec<u8>,
    /// The secret credential IDs and credential keys derive from (32 bytes); Reset replaces it,
    /// which makes every earlier credential unusable.
    #[serde(with = "hex")]
    pub credential_secret: Vec<u8>,
    pub pin: Option<StoredPin>,
    pub pin_retries: u8,
    pub min_pin_length: u8,
    pub force_pin_change: bool,
    /// The signature counter, shared by all credentials.
    pub sign_count: u32,
    /// Discoverable (resident) credentials, oldest first.
    pub credentials: Vec<ResidentCredential>,
    /// Creation sequence of the next discoverable credential (orders getAssertion's answers).
    pub next_sequence: u64,
}

/// The PIN as CTAP stores it: LEFT(SHA-256(PIN), 16), and its length in code points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredPin {
    #[serde(with = "hex")]
    pub hash: Vec<u8>,
    pub code_points: u8,
}

/// A discoverable credential. Its private key derives from the credential ID (see `keys`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResidentCredential {
    #[serde(with = "hex")]
    pub id: Vec<u8>,
    pub rp_id: String,
    pub rp_name: Option<String>,
    #[serde(with = "hex")]
    pub user_id: Vec<u8>,
    pub user_name: Option<String>,
    pub user_display_name: Option<String>,
    /// credProtect level (1–3).
    pub cred_protect: u8,
    pub sequence: u64,
}

impl FidoState {
    /// A factory-fresh FIDO application with the given attestation key and certificate.
    pub fn new(attestation_key: Vec<u8>, attestation_cert: Vec<u8>) -> Self {
        Self {
            attestation_key,
            attestation_cert,
            credential_secret: fresh_secret(),
            pin: None,
            pin_retries: PIN_RETRIES,
            min_pin_length: DEFAULT_MIN_PIN_LENGTH,
            force_pin_change: false,
            sign_count: 0,
            credentials: Vec::new(),
            next_sequence: 0,
        }
    }

    /// authenticatorReset: everything but the attestation goes back to the factory state.
    pub fn reset(&mut self) {
        *self =
            Self::new(std::mem::take(&mut self.attestation_key), std::mem::take(&mut self.attestation_cert));
    }
}

fn fresh_secret() -> Vec<u8> {
    let mut s = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
    s
}
