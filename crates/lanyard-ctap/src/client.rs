//! A sans-IO CTAP 2.1 client: request builders that return `command byte ‖ canonical CBOR`, and
//! parsers for the authenticator's answers (`status byte ‖ CBOR`). Nothing here talks to a
//! device; the caller carries the bytes (the agent over PC/SC or USB HID, the server through the
//! agent link).
//!
//! The PIN commands run PIN/UV auth protocol one or two through [`crate::pin_protocol`]: the
//! caller fetches the authenticator's key agreement key ([`get_key_agreement`],
//! [`parse_key_agreement`]), makes a [`KeyPair`], agrees a [`SharedSecret`] with it, and passes
//! both to [`set_pin`], [`change_pin`] or [`get_pin_token_with_permissions`]. The PIN token comes
//! back encrypted; [`parse_pin_token`] decrypts it.
//!
//! Every parser checks the status byte first and names it ([`consts::status::name`]) when it is
//! not `CTAP2_OK`, so a refusal reads `authenticatorClientPIN (setPIN): CTAP2_ERR_PIN_POLICY_VIOLATION
//! (0x37)`.

use std::collections::BTreeMap;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::cbor::{self, CborError, FieldError, MapRef, Value};
use crate::consts::{cmd, config_sub, permission, pin_sub, status};
use crate::pin_protocol::{KeyPair, PinProtocol, PinProtocolError, SharedSecret};

/// Why an answer could not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("{command}: the authenticator sent an empty answer (no status byte)")]
    Empty { command: &'static str },
    #[error("{command}: {name} (0x{code:02X})")]
    Status { command: &'static str, code: u8, name: &'static str },
    #[error("{command}: the answer is not CTAP CBOR: {error}")]
    Cbor { command: &'static str, error: CborError },
    #[error("{command}: {error}")]
    Field { command: &'static str, error: FieldError },
    #[error("{command}: {reason}")]
    Malformed { command: &'static str, reason: String },
    #[error("{command}: {error}")]
    PinProtocol { command: &'static str, error: PinProtocolError },
}

impl ClientError {
    /// The CTAP status code when the authenticator refused the command.
    pub fn status(&self) -> Option<u8> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The names the errors use for each command.
pub mod names {
    pub const GET_INFO: &str = "authenticatorGetInfo";
    pub const GET_RETRIES: &str = "authenticatorClientPIN (getPINRetries)";
    pub const GET_KEY_AGREEMENT: &str = "authenticatorClientPIN (getKeyAgreement)";
    pub const SET_PIN: &str = "authenticatorClientPIN (setPIN)";
    pub const CHANGE_PIN: &str = "authenticatorClientPIN (changePIN)";
    pub const GET_PIN_TOKEN: &str = "authenticatorClientPIN (getPinToken)";
    pub const GET_TOKEN_WITH_PERMISSIONS: &str =
        "authenticatorClientPIN (getPinUvAuthTokenUsingPinWithPermissions)";
    pub const SET_MIN_PIN_LENGTH: &str = "authenticatorConfig (setMinPINLength)";
    pub const RESET: &str = "authenticatorReset";
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `command ‖ CBOR(params)`.
fn request(command: u8, params: &Value) -> Vec<u8> {
    let mut out = vec![command];
    out.extend_from_slice(&cbor::encode(params));
    out
}

/// authenticatorClientPIN parameter keys (CTAP 2.1 §6.5.5.1).
mod pin_key {
    pub const PROTOCOL: i64 = 0x01;
    pub const SUB_COMMAND: i64 = 0x02;
    pub const KEY_AGREEMENT: i64 = 0x03;
    pub const PIN_UV_AUTH_PARAM: i64 = 0x04;
    pub const NEW_PIN_ENC: i64 = 0x05;
    pub const PIN_HASH_ENC: i64 = 0x06;
    pub const PERMISSIONS: i64 = 0x09;
    pub const RP_ID: i64 = 0x0A;
}

fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

/// authenticatorGetInfo.
pub fn get_info() -> Vec<u8> {
    vec![cmd::GET_INFO]
}

/// authenticatorReset. Erases every credential and the PIN; real authenticators accept it only
/// shortly after power-up and with a touch.
pub fn reset() -> Vec<u8> {
    vec![cmd::RESET]
}

/// getPINRetries.
pub fn get_retries(protocol: PinProtocol) -> Vec<u8> {
    request(
        cmd::CLIENT_PIN,
        &cbor::int_map([
            (pin_key::PROTOCOL, uint(protocol.number())),
            (pin_key::SUB_COMMAND, uint(pin_sub::GET_RETRIES)),
        ]),
    )
}

/// getKeyAgreement.
pub fn get_key_agreement(protocol: PinProtocol) -> Vec<u8> {
    request(
        cmd::CLIENT_PIN,
        &cbor::int_map([
            (pin_key::PROTOCOL, uint(protocol.number())),
            (pin_key::SUB_COMMAND, uint(pin_sub::GET_KEY_AGREEMENT)),
        ]),
    )
}

/// setPIN: for an authenticator without a PIN. `platform` is the key pair `shared` was agreed
/// with (its public half goes along as `keyAgreement`).
pub fn set_pin(
    platform: &KeyPair,
    shared: &SharedSecret,
    new_pin: &str,
) -> Result<Vec<u8>, PinProtocolError> {
    let new_pin_enc = shared.encrypt_pin(new_pin)?;
    let param = shared.authenticate(&new_pin_enc);
    Ok(request(
        cmd::CLIENT_PIN,
        &cbor::int_map([
            (pin_key::PROTOCOL, uint(shared.protocol().number())),
            (pin_key::SUB_COMMAND, uint(pin_sub::SET_PIN)),
            (pin_key::KEY_AGREEMENT, platform.public_cose()),
            (pin_key::PIN_UV_AUTH_PARAM, Value::Bytes(param)),
            (pin_key::NEW_PIN_ENC, Value::Bytes(new_pin_enc)),
        ]),
    ))
}

/// changePIN from `current` to `new_pin`.
pub fn change_pin(
    platform: &KeyPair,
    shared: &SharedSecret,
    current: &str,
    new_pin: &str,
) -> Result<Vec<u8>, PinProtocolError> {
    let new_pin_enc = shared.encrypt_pin(new_pin)?;
    let pin_hash_enc = shared.encrypt_pin_hash(current)?;
    let param = shared.authenticate(&[new_pin_enc.as_slice(), &pin_hash_enc].concat());
    Ok(request(
        cmd::CLIENT_PIN,
        &cbor::int_map([
            (pin_key::PROTOCOL, uint(shared.protocol().number())),
            (pin_key::SUB_COMMAND, uint(pin_sub::CHANGE_PIN)),
            (pin_key::KEY_AGREEMENT, platform.public_cose()),
            (pin_key::PIN_UV_AUTH_PARAM, Value::Bytes(param)),
            (pin_key::NEW_PIN_ENC, Value::Bytes(new_pin_enc)),
            (pin_key::PIN_HASH_ENC, Value::Bytes(pin_hash_enc)),
        ]),
    ))
}

/// getPinToken (CTAP 2.0's way; CTAP 2.1 authenticators give it the `mc` and `ga` permissions).
pub fn get_pin_token(
    platform: &KeyPair,
    shared: &SharedSecret,
    pin: &str,
) -> Result<Vec<u8>, PinProtocolError> {
    let pin_hash_enc = shared.encrypt_pin_hash(pin)?;
    Ok(request(
        cmd::CLIENT_PIN,
        &cbor::int_map([
            (pin_key::PROTOCOL, uint(shared.protocol().number())),
            (pin_key::SUB_COMMAND, uint(pin_sub::GET_PIN_TOKEN)),
            (pin_key::KEY_AGREEMENT, platform.public_cose()),
            (pin_key::PIN_HASH_ENC, Value::Bytes(pin_hash_enc)),
        ]),
    ))
}

/// getPinUvAuthTokenUsingPinWithPermissions: a token limited to `permissions`
/// ([`permission`] bits) and, for `mc`/`ga`, to `rp_id`.
pub fn get_pin_token_with_permissions(
    platform: &KeyPair,
    shared: &SharedSecret,
    pin: &str,
    permissions: u8,
    rp_id: Option<&str>,
) -> Result<Vec<u8>, PinProtocolError> {
    let pin_hash_enc = shared.encrypt_pin_hash(pin)?;
    let mut entries = vec![
        (pin_key::PROTOCOL, uint(shared.protocol().number())),
        (pin_key::SUB_COMMAND, uint(pin_sub::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS)),
        (pin_key::KEY_AGREEMENT, platform.public_cose()),
        (pin_key::PIN_HASH_ENC, Value::Bytes(pin_hash_enc)),
        (pin_key::PERMISSIONS, uint(u64::from(permissions))),
    ];
    if let Some(rp) = rp_id {
        entries.push((pin_key::RP_ID, Value::Text(rp.to_owned())));
    }
    Ok(request(cmd::CLIENT_PIN, &cbor::int_map(entries)))
}

/// authenticatorConfig parameter keys (CTAP 2.1 §6.11).
mod config_key {
    pub const SUB_COMMAND: i64 = 0x01;
    pub const SUB_COMMAND_PARAMS: i64 = 0x02;
    pub const PROTOCOL: i64 = 0x03;
    pub const PIN_UV_AUTH_PARAM: i64 = 0x04;
    /// setMinPINLength's own parameters.
    pub const NEW_MIN_PIN_LENGTH: i64 = 0x01;
    pub const FORCE_CHANGE_PIN: i64 = 0x03;
}

/// A PIN token with the `acfg` permission, and the protocol it was obtained with.
pub struct ConfigAuth<'a> {
    pub protocol: PinProtocol,
    pub token: &'a [u8],
}

/// authenticatorConfig setMinPINLength: raises the minimum PIN length to `min_length` (when
/// given) and, with `force_change`, makes the authenticator refuse PIN tokens until the PIN is
/// changed. `auth` is required once a PIN is set; without a PIN the command goes unauthenticated.
/// The parameter is `authenticate(token, 32×FF ‖ 0D ‖ subCommand ‖ CBOR(subCommandParams))`.
pub fn set_min_pin_length(
    min_length: Option<u8>,
    force_change: bool,
    auth: Option<ConfigAuth<'_>>,
) -> Vec<u8> {
    let mut params = Vec::new();
    if let Some(n) = min_length {
        params.push((config_key::NEW_MIN_PIN_LENGTH, uint(u64::from(n))));
    }
    if force_change {
        params.push((config_key::FORCE_CHANGE_PIN, Value::Bool(true)));
    }
    let params = cbor::int_map(params);
    let mut entries = vec![(config_key::SUB_COMMAND, uint(config_sub::SET_MIN_PIN_LENGTH))];
    if let Some(auth) = auth {
        let mut message = vec![0xFF; 32];
        message.push(cmd::CONFIG);
        // setMinPINLength is 0x03: one byte.
        message.push(config_sub::SET_MIN_PIN_LENGTH as u8);
        message.extend_from_slice(&cbor::encode(&params));
        let param = crate::pin_protocol::authenticate(auth.protocol, auth.token, &message);
        entries.push((config_key::PROTOCOL, uint(auth.protocol.number())));
        entries.push((config_key::PIN_UV_AUTH_PARAM, Value::Bytes(param)));
    }
    entries.push((config_key::SUB_COMMAND_PARAMS, params));
    request(cmd::CONFIG, &cbor::int_map(entries))
}

/// The `acfg` permission, for [`get_pin_token_with_permissions`] before [`set_min_pin_length`].
pub const PERMISSION_CONFIG: u8 = permission::AUTHENTICATOR_CONFIG;

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Checks the status byte and returns the CBOR that follows (possibly empty).
pub fn check_status<'r>(command: &'static str, response: &'r [u8]) -> Result<&'r [u8], ClientError> {
    let (&code, rest) = response.split_first().ok_or(ClientError::Empty { command })?;
    if code != status::OK {
        return Err(ClientError::Status { command, code, name: status::name(code) });
    }
    Ok(rest)
}

/// The CBOR map of a successful answer.
fn answer_map(command: &'static str, response: &[u8]) -> Result<Value, ClientError> {
    let body = check_status(command, response)?;
    let value = cbor::decode(body).map_err(|error| ClientError::Cbor { command, error })?;
    if !matches!(value, Value::Map(_)) {
        return Err(ClientError::Field { command, error: FieldError::NotAMap });
    }
    Ok(value)
}

/// An answer that carries nothing but `CTAP2_OK` (setPIN, changePIN, authenticatorConfig,
/// authenticatorReset). An empty map is accepted too; anything else is an error.
pub fn parse_empty(command: &'static str, response: &[u8]) -> Result<(), ClientError> {
    let body = check_status(command, response)?;
    if body.is_empty() {
        return Ok(());
    }
    match cbor::decode(body).map_err(|error| ClientError::Cbor { command, error })? {
        Value::Map(m) if m.is_empty() => Ok(()),
        _ => Err(ClientError::Malformed {
            command,
            reason: format!("{} unexpected byte(s) after the status", body.len()),
        }),
    }
}

/// What authenticatorGetInfo says (CTAP 2.1 §6.4); members Lanyard does not use are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    pub versions: Vec<String>,
    pub extensions: Vec<String>,
    pub aaguid: [u8; 16],
    pub options: BTreeMap<String, bool>,
    pub max_msg_size: Option<u64>,
    /// In the authenticator's order of preference.
    pub pin_uv_auth_protocols: Vec<u64>,
    pub force_pin_change: bool,
    /// The current minimum PIN length (4 when the authenticator does not say).
    pub min_pin_length: u64,
    pub firmware_version: Option<u64>,
}

/// Whether the authenticator has a PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    /// `clientPin` absent: no PIN support.
    Unsupported,
    /// `clientPin: false`.
    NotSet,
    /// `clientPin: true`.
    Set,
}

impl Info {
    pub fn option(&self, name: &str) -> Option<bool> {
        self.options.get(name).copied()
    }

    pub fn pin_state(&self) -> PinState {
        match self.option("clientPin") {
            None => PinState::Unsupported,
            Some(false) => PinState::NotSet,
            Some(true) => PinState::Set,
        }
    }

    /// Whether the authenticator speaks CTAP 2.1 (`FIDO_2_1`, or the pre-release name).
    pub fn is_ctap21(&self) -> bool {
        self.versions.iter().any(|v| v == "FIDO_2_1" || v == "FIDO_2_1_PRE")
    }

    /// Whether authenticatorConfig setMinPINLength (and so forceChangePin) is available.
    pub fn can_set_min_pin_length(&self) -> bool {
        self.option("setMinPINLength") == Some(true)
    }

    /// The PIN/UV auth protocol to use: the first of the authenticator's list that this client
    /// knows; protocol one when the authenticator lists none (CTAP 2.0).
    pub fn pin_protocol(&self) -> Option<PinProtocol> {
        if self.pin_uv_auth_protocols.is_empty() {
            return Some(PinProtocol::One);
        }
        self.pin_uv_auth_protocols.iter().find_map(|n| PinProtocol::from_number(*n).ok())
    }
}

fn text_list(m: &MapRef<'_>, key: i64, command: &'static str) -> Result<Vec<String>, ClientError> {
    let field = |error| ClientError::Field { command, error };
    match m.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().map(|v| cbor::as_text(v, key).map(str::to_owned).map_err(field)).collect()
        }
        Some(_) => Err(field(FieldError::WrongType(key.to_string(), "array"))),
    }
}

/// Parses an authenticatorGetInfo answer.
pub fn parse_get_info(response: &[u8]) -> Result<Info, ClientError> {
    let command = names::GET_INFO;
    let field = |error| ClientError::Field { command, error };
    let value = answer_map(command, response)?;
    let m = MapRef::new(&value).map_err(field)?;
    let versions = text_list(&m, 0x01, command)?;
    if versions.is_empty() {
        return Err(field(FieldError::Missing("1 (versions)".into())));
    }
    let extensions = text_list(&m, 0x02, command)?;
    let aaguid_bytes =
        m.bytes(0x03).map_err(field)?.ok_or_else(|| field(FieldError::Missing("3 (aaguid)".into())))?;
    let aaguid: [u8; 16] = aaguid_bytes.try_into().map_err(|_| ClientError::Malformed {
        command,
        reason: format!("the AAGUID has {} bytes, not 16", aaguid_bytes.len()),
    })?;
    let mut options = BTreeMap::new();
    if let Some(opts) = m.map(0x04).map_err(field)? {
        for (k, v) in opts.entries() {
            let (Value::Text(name), Value::Bool(b)) = (k, v) else {
                return Err(field(FieldError::WrongType(
                    "4 (options)".into(),
                    "text keys with boolean values",
                )));
            };
            options.insert(name.clone(), *b);
        }
    }
    let protocols = match m.get(0x06) {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            items.iter().map(|v| cbor::as_uint(v, 6)).collect::<Result<_, _>>().map_err(field)?
        }
        Some(_) => return Err(field(FieldError::WrongType("6".into(), "array"))),
    };
    let force_pin_change = match m.get(0x0C) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field(FieldError::WrongType("12 (forcePINChange)".into(), "boolean"))),
    };
    let min_pin_length = m.uint(0x0D).map_err(field)?.unwrap_or(4);
    if !(4..=63).contains(&min_pin_length) {
        return Err(ClientError::Malformed {
            command,
            reason: format!("minPINLength {min_pin_length} is outside 4 to 63"),
        });
    }
    Ok(Info {
        versions,
        extensions,
        aaguid,
        options,
        max_msg_size: m.uint(0x05).map_err(field)?,
        pin_uv_auth_protocols: protocols,
        force_pin_change,
        min_pin_length,
        firmware_version: m.uint(0x0E).map_err(field)?,
    })
}

/// getPINRetries' answer: the tries left, and whether a power cycle is needed before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    pub retries: u64,
    pub power_cycle_needed: bool,
}

pub fn parse_retries(response: &[u8]) -> Result<Retries, ClientError> {
    let command = names::GET_RETRIES;
    let field = |error| ClientError::Field { command, error };
    let value = answer_map(command, response)?;
    let m = MapRef::new(&value).map_err(field)?;
    let retries =
        m.uint(0x03).map_err(field)?.ok_or_else(|| field(FieldError::Missing("3 (pinRetries)".into())))?;
    let power_cycle_needed = match m.get(0x04) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field(FieldError::WrongType("4 (powerCycleState)".into(), "boolean"))),
    };
    Ok(Retries { retries, power_cycle_needed })
}

/// getKeyAgreement's answer: the authenticator's COSE key, checked to be a P-256 point.
pub fn parse_key_agreement(response: &[u8]) -> Result<Value, ClientError> {
    let command = names::GET_KEY_AGREEMENT;
    let field = |error| ClientError::Field { command, error };
    let value = answer_map(command, response)?;
    let m = MapRef::new(&value).map_err(field)?;
    let key = m.require(0x01).map_err(field)?.clone();
    crate::pin_protocol::parse_cose_key(&key).map_err(|error| ClientError::PinProtocol { command, error })?;
    Ok(key)
}

/// The answer to getPinToken or getPinUvAuthTokenUsingPinWithPermissions: the token, decrypted
/// with the secret the request was made with. Protocol two tokens are 32 bytes; protocol one
/// tokens 16 or 32.
pub fn parse_pin_token(
    command: &'static str,
    shared: &SharedSecret,
    response: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let field = |error| ClientError::Field { command, error };
    let value = answer_map(command, response)?;
    let m = MapRef::new(&value).map_err(field)?;
    let enc = m
        .bytes(0x02)
        .map_err(field)?
        .ok_or_else(|| field(FieldError::Missing("2 (pinUvAuthToken)".into())))?;
    let token = shared.decrypt(enc).map_err(|error| ClientError::PinProtocol { command, error })?;
    let ok = match shared.protocol() {
        PinProtocol::One => matches!(token.len(), 16 | 32),
        PinProtocol::Two => token.len() == 32,
    };
    if !ok {
        return Err(ClientError::Malformed {
            command,
            reason: format!("a PIN token of {} bytes", token.len()),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
