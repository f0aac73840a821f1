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
    /// What the application offers (everything by default); images from before this field
    /// offer everything.
    #[serde(default)]
    pub options: FidoOptions,
}

/// What the FIDO application offers, chosen when the card is made (`NewCard::fido`) and kept in
/// the image. The default is everything the authenticator can do; less imitates keys that have
/// less, so a client's handling of them can be tested against this authenticator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FidoOptions {
    /// The PIN/UV auth protocols offered, in order of preference (getInfo `pinUvAuthProtocols`):
    /// 2 then 1 by default. authenticatorClientPIN naming another answers
    /// CTAP1_ERR_INVALID_PARAMETER, so no token of another protocol exists. One or both of 1
    /// and 2, each at most once.
    pub pin_protocols: Vec<u8>,
    /// authenticatorConfig with setMinPINLength (getInfo options `authnrCfg` and
    /// `setMinPINLength`): on by default. Off, neither option is listed and the command answers
    /// CTAP1_ERR_INVALID_COMMAND, as on a CTAP 2.0 key (or a 2.1 key without it): the minimum PIN
    /// length cannot be raised nor a PIN change forced.
    pub config: bool,
}

impl Default for FidoOptions {
    fn default() -> Self {
        Self { pin_protocols: vec![2, 1], config: true }
    }
}

impl FidoOptions {
    /// Whether the options describe an authenticator this one can be.
    pub fn is_valid(&self) -> bool {
        matches!(self.pin_protocols.as_slice(), [1] | [2] | [1, 2] | [2, 1])
    }

    /// Whether `protocol` is offered.
    pub fn offers(&self, protocol: lanyard_ctap::pin_protocol::PinProtocol) -> bool {
        self.pin_protocols.iter().any(|n| u64::from(*n) == protocol.number())
    }
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
            options: FidoOptions::default(),
        }
    }

    /// A factory-fresh FIDO application that offers what `options` says.
    pub fn with_options(attestation_key: Vec<u8>, attestation_cert: Vec<u8>, options: FidoOptions) -> Self {
        Self { options, ..Self::new(attestation_key, attestation_cert) }
    }

    /// authenticatorReset: everything but the attestation and the options goes back to the
    /// factory state.
    pub fn reset(&mut self) {
        *self = Self::with_options(
            std::mem::take(&mut self.attestation_key),
            std::mem::take(&mut self.attestation_cert),
            std::mem::take(&mut self.options),
        );
    }
}

fn fresh_secret() -> Vec<u8> {
    let mut s = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
    s
}
