//! The virtual card's FIDO2 application: a CTAP 2.1 authenticator.
//!
//! [`Authenticator::process`] is the whole protocol, independent of any transport: it takes a
//! CTAP request (`command byte ‖ CBOR`) and answers `status ‖ CBOR`. The ISO 7816 binding that
//! NFC readers use (`nfc`) carries it over the card's APDUs.
//!
//! - `state`: what is saved in the card image (PIN, retries, minimum length, discoverable
//!   credentials, counter, credential secret, attestation);
//! - `request`: the request parsers;
//! - `keys`: credential IDs (key handles bound to the RP ID hash) and credential keys;
//! - `pin`: authenticatorClientPIN and the pinUvAuthToken;
//! - `ops`: makeCredential, getAssertion, getNextAssertion, credential management, config.
//!
//! The card has no button: user presence is taken as given for every request that asks for it,
//! and the `up` flag says so. It has no built-in user verification: the `uv` flag is set only when
//! a request carried a valid pinUvAuthParam.

pub mod keys;
pub mod nfc;
mod ops;
mod pin;
pub mod request;
pub mod state;

use lanyard_ctap::cbor::{self, Value, int, int_map, text_map};
use lanyard_ctap::consts::{cmd, status};
use lanyard_ctap::pin_protocol::KeyPair;
use p256::ecdsa::SigningKey;
use state::{FidoState, MAX_RESIDENT_CREDENTIALS};
use zeroize::Zeroizing;

/// A CTAP status code other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8);

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:02X})", status::name(self.0), self.0)
    }
}

/// The largest request the card accepts (getInfo's maxMsgSize); command chaining carries it.
pub const MAX_MSG_SIZE: usize = 2048;

/// A pinUvAuthToken's state (CTAP 2.1 §6.5.2.1): permissions and the RP it is bound to.
#[derive(Debug, Clone)]
struct TokenState {
    permissions: u8,
    rp_id: Option<String>,
    protocol: lanyard_ctap::pin_protocol::PinProtocol,
}

/// What getNextAssertion continues.
struct PendingAssertions {
    rp_id_hash: [u8; 32],
    client_data_hash: Vec<u8>,
    flags: u8,
    /// Remaining credential IDs, most recent first.
    remaining: Vec<Vec<u8>>,
}

/// What an enumeration's "next" subcommand continues.
enum Enumeration {
    Rps(Vec<String>),
    Credentials(Vec<Vec<u8>>),
}

/// State that a power cycle clears.
struct Session {
    key_agreement: KeyPair,
    token: Zeroizing<[u8; 32]>,
    token_state: Option<TokenState>,
    /// Wrong PINs since power-up (three block PIN use until the next one).
    consecutive_pin_failures: u8,
    assertions: Option<PendingAssertions>,
    enumeration: Option<Enumeration>,
}

impl Session {
    fn new() -> Self {
        Self {
            key_agreement: KeyPair::generate(),
            token: random_token(),
            token_state: None,
            consecutive_pin_failures: 0,
            assertions: None,
            enumeration: None,
        }
    }
}

fn random_token() -> Zeroizing<[u8; 32]> {
    let mut t = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut t[..]);
    t
}

/// Why an authenticator could not be made from a saved state.
#[derive(Debug, thiserror::Error)]
pub enum FidoError {
    #[error("the FIDO attestation key is not a PKCS#8 P-256 key")]
    AttestationKey,
    #[error("the FIDO credential secret is not 32 bytes")]
    Secret,
    #[error("the FIDO options offer PIN/UV auth protocols {0:?}; one or both of 1 and 2 are needed")]
    Options(Vec<u8>),
}

/// The CTAP 2.1 authenticator.
pub struct Authenticator {
    state: FidoState,
    attestation_key: SigningKey,
    firmware: [u8; 3],
    session: Session,
    dirty: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator(<state>)")
    }
}

impl Authenticator {
    pub fn new(state: FidoState, firmware: [u8; 3]) -> Result<Self, FidoError> {
        use p256::pkcs8::DecodePrivateKey;
        let attestation_key =
            SigningKey::from_pkcs8_der(&state.attestation_key).map_err(|_| FidoError::AttestationKey)?;
        if state.credential_secret.len() != 32 {
            return Err(FidoError::Secret);
        }
        if !state.options.is_valid() {
            return Err(FidoError::Options(state.options.pin_protocols.clone()));
        }
        Ok(Self { state, attestation_key, firmware, session: Session::new(), dirty: false })
    }

    pub fn state(&self) -> &FidoState {
        &self.state
    }

    /// Whether the persistent state changed since the last call (and clears the mark).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// A power cycle: new key agreement key and token, PIN tries per power-up restored.
    pub fn power_cycle(&mut self) {
        self.session = Session::new();
    }

    /// Processes one CTAP request (`command byte ‖ CBOR parameters`) and returns the response
    /// (`status byte ‖ CBOR`). Never panics on any input.
    pub fn process(&mut self, request: &[u8]) -> Vec<u8> {
        let Some((&command, params)) = request.split_first() else {
            return vec![status::INVALID_LENGTH];
        };
        if request.len() > MAX_MSG_SIZE {
            return vec![status::REQUEST_TOO_LARGE];
        }
        // getNextAssertion and the enumerations' "next" continue only the command just before.
        if command != cmd::GET_NEXT_ASSERTION {
            self.session.assertions = None;
        }
        if command != cmd::CREDENTIAL_MANAGEMENT {
            self.session.enumeration = None;
        }
        let decoded = if params.is_empty() {
            None
        } else {
            match cbor::decode(params) {
                Ok(v) => Some(v),
                Err(_) => return vec![status::INVALID_CBOR],
            }
        };
        let result = match (command, decoded.as_ref()) {
            (cmd::GET_INFO, _) => Ok(Some(self.get_info())),
            // Not offered (`FidoOptions::config`): as an authenticator without the command.
            (cmd::CONFIG, _) if !self.state.options.config => Err(Status(status::INVALID_COMMAND)),
            (cmd::RESET, _) => self.reset().map(|()| None),
            (cmd::GET_NEXT_ASSERTION, _) => self.get_next_assertion().map(Some),
            (cmd::SELECTION, _) => Ok(None),
            (cmd::MAKE_CREDENTIAL, Some(v)) => self.make_credential(v).map(Some),
            (cmd::GET_ASSERTION, Some(v)) => self.get_assertion(v).map(Some),
            (cmd::CLIENT_PIN, Some(v)) => self.client_pin(v),
            (cmd::CREDENTIAL_MANAGEMENT, Some(v)) => self.credential_management(v),
            (cmd::CONFIG, Some(v)) => self.config(v).map(|()| None),
            (
                cmd::MAKE_CREDENTIAL
                | cmd::GET_ASSERTION
                | cmd::CLIENT_PIN
                | cmd::CREDENTIAL_MANAGEMENT
                | cmd::CONFIG,
                None,
            ) => Err(Status(status::MISSING_PARAMETER)),
            _ => Err(Status(status::INVALID_COMMAND)),
        };
        match result {
            Ok(None) => vec![status::OK],
            Ok(Some(v)) => {
                let mut out = vec![status::OK];
                out.extend_from_slice(&cbor::encode(&v));
                out
            }
            Err(Status(code)) => vec![code],
        }
    }

    fn get_info(&self) -> Value {
        let pin_set = self.state.pin.is_some();
        let v = self.firmware;
        let firmware = (u32::from(v[0]) << 16) | (u32::from(v[1]) << 8) | u32::from(v[2]);
        let remaining = MAX_RESIDENT_CREDENTIALS.saturating_sub(self.state.credentials.len());
        let options = &self.state.options;
        let mut flags = vec![
            ("rk", Value::Bool(true)),
            ("up", Value::Bool(true)),
            ("plat", Value::Bool(false)),
            ("clientPin", Value::Bool(pin_set)),
            ("credMgmt", Value::Bool(true)),
        ];
        if options.config {
            flags.extend([("authnrCfg", Value::Bool(true)), ("setMinPINLength", Value::Bool(true))]);
        }
        flags.extend([("pinUvAuthToken", Value::Bool(true)), ("makeCredUvNotRqd", Value::Bool(true))]);
        int_map([
            (0x01, Value::Array(vec![Value::Text("FIDO_2_0".into()), Value::Text("FIDO_2_1".into())])),
            (0x02, Value::Array(vec![Value::Text("credProtect".into())])),
            (0x03, Value::Bytes(crate::attestation::FIDO_AAGUID.to_vec())),
            (0x04, text_map(flags)),
            (0x05, int(MAX_MSG_SIZE as i64)),
            (0x06, Value::Array(options.pin_protocols.iter().map(|p| int(i64::from(*p))).collect())),
            (0x07, int(request::MAX_LIST as i64)),
            (0x08, int(keys::ID_LEN as i64)),
            (0x09, Value::Array(vec![Value::Text("nfc".into())])),
            (
                0x0A,
                Value::Array(vec![text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])]),
            ),
            (0x0C, Value::Bool(self.state.force_pin_change)),
            (0x0D, int(i64::from(self.state.min_pin_length))),
            (0x0E, int(i64::from(firmware))),
            (0x14, int(remaining as i64)),
        ])
    }

    /// authenticatorReset. Presence is taken as given (no button), and the card has no
    /// "within 10 s of power-up" window: whoever reaches the card image can reset it anyway.
    fn reset(&mut self) -> Result<(), Status> {
        self.state.reset();
        self.session = Session::new();
        self.dirty = true;
        Ok(())
    }
}
