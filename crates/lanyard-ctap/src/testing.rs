//! A small software CTAP 2.1 authenticator for tests of clients (feature `testing`): the PIN
//! state of a key — getInfo, ClientPIN (getRetries, getKeyAgreement, setPIN, changePIN,
//! getPinToken, getPinUvAuthTokenUsingPinWithPermissions), authenticatorConfig setMinPINLength
//! with forceChangePin, Reset — checked the way CTAP 2.1 says an authenticator checks them (MACs,
//! PIN hashes, the minimum length, forcePINChange, retries), on the authenticator side of
//! [`crate::pin_protocol`]. No credentials, no user presence. Lanyard's virtual card has the
//! real authenticator; this one lets the server's tests run a FIDO phase in process.

use crate::cbor::{self, MapRef, Value};
use crate::consts::{cmd, config_sub, pin_sub, status};
use crate::pin_protocol::{self, KeyPair, PinProtocol, SharedSecret, pin_hash};

/// The PIN state of one authenticator.
pub struct SoftKey {
    agreement: KeyPair,
    pin_hash: Option<[u8; 16]>,
    pin_len: usize,
    /// The minimum PIN length (4 from the factory; never lowered).
    pub min_len: u64,
    pub force_change: bool,
    pub retries: u8,
    token: Vec<u8>,
    token_permissions: u8,
    /// The PIN/UV auth protocols getInfo lists.
    pub protocols: Vec<u64>,
    /// Whether getInfo lists `setMinPINLength` (a CTAP 2.0 key does not).
    pub set_min_supported: bool,
    /// Every command byte received, in order.
    pub seen: Vec<u8>,
}

impl Default for SoftKey {
    fn default() -> Self {
        Self::new()
    }
}

fn ok(v: Value) -> Vec<u8> {
    [vec![status::OK], cbor::encode(&v)].concat()
}

impl SoftKey {
    /// A factory-fresh key: no PIN, minimum length 4, protocols 2 and 1.
    pub fn new() -> Self {
        let mut token = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut token);
        Self {
            agreement: KeyPair::generate(),
            pin_hash: None,
            pin_len: 0,
            min_len: 4,
            force_change: false,
            retries: 8,
            token,
            token_permissions: 0,
            protocols: vec![2, 1],
            set_min_supported: true,
            seen: Vec::new(),
        }
    }

    /// A key someone already set `pin` on.
    pub fn with_pin(pin: &str) -> Self {
        let mut k = Self::new();
        k.pin_hash = Some(pin_hash(pin));
        k.pin_len = pin.chars().count();
        k
    }

    pub fn has_pin(&self) -> bool {
        self.pin_hash.is_some()
    }

    fn info(&self) -> Vec<u8> {
        let mut options =
            vec![("rk", Value::Bool(true)), ("clientPin", Value::Bool(self.pin_hash.is_some()))];
        if self.set_min_supported {
            options.push(("setMinPINLength", Value::Bool(true)));
        }
        ok(cbor::int_map([
            (1, Value::Array(vec![Value::Text("FIDO_2_0".into()), Value::Text("FIDO_2_1".into())])),
            (3, Value::Bytes(vec![0xAA; 16])),
            (4, cbor::text_map(options)),
            (6, Value::Array(self.protocols.iter().map(|p| Value::Integer((*p).into())).collect())),
            (0x0C, Value::Bool(self.force_change)),
            (0x0D, Value::Integer(self.min_len.into())),
        ]))
    }

    /// Answers one request (`command ‖ CBOR`) with `status ‖ CBOR`.
    pub fn handle(&mut self, request: &[u8]) -> Vec<u8> {
        let Some((&c, body)) = request.split_first() else { return vec![status::INVALID_LENGTH] };
        self.seen.push(c);
        let params = if body.is_empty() {
            cbor::int_map([])
        } else {
            match cbor::decode(body) {
                Ok(v) => v,
                Err(_) => return vec![status::INVALID_CBOR],
            }
        };
        let Ok(m) = MapRef::new(&params) else { return vec![status::CBOR_UNEXPECTED_TYPE] };
        let answer = match c {
            cmd::GET_INFO => Ok(self.info()),
            cmd::RESET => {
                let fresh = SoftKey {
                    protocols: self.protocols.clone(),
                    set_min_supported: self.set_min_supported,
                    seen: std::mem::take(&mut self.seen),
                    ..SoftKey::new()
                };
                *self = fresh;
                Ok(vec![status::OK])
            }
            cmd::CONFIG => self.config(&m),
            cmd::CLIENT_PIN => self.client_pin(&m),
            _ => Err(status::INVALID_COMMAND),
        };
        answer.unwrap_or_else(|s| vec![s])
    }

    /// Runs `batch` as Lanyard's agent does: in order, stopping after the first refusal.
    pub fn run(&mut self, batch: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for request in batch {
            let answer = self.handle(request);
            let refused = answer.first() != Some(&status::OK);
            out.push(answer);
            if refused {
                break;
            }
        }
        out
    }

    fn config(&mut self, m: &MapRef<'_>) -> Result<Vec<u8>, u8> {
        if m.uint(1) != Ok(Some(config_sub::SET_MIN_PIN_LENGTH)) {
            return Err(status::INVALID_SUBCOMMAND);
        }
        if !self.set_min_supported {
            return Err(status::INVALID_COMMAND);
        }
        let params = m.get(2).cloned().unwrap_or_else(|| cbor::int_map([]));
        if self.pin_hash.is_some() {
            let param = m.bytes(4).ok().flatten().ok_or(status::PUAT_REQUIRED)?;
            let p = m
                .uint(3)
                .ok()
                .flatten()
                .and_then(|n| PinProtocol::from_number(n).ok())
                .ok_or(status::MISSING_PARAMETER)?;
            let mut message = vec![0xFF; 32];
            message.extend_from_slice(&[cmd::CONFIG, config_sub::SET_MIN_PIN_LENGTH as u8]);
            message.extend_from_slice(&cbor::encode(&params));
            if !pin_protocol::verify(p, &self.token, &message, param) {
                return Err(status::PIN_AUTH_INVALID);
            }
            if self.token_permissions & 0x20 == 0 {
                return Err(status::UNAUTHORIZED_PERMISSION);
            }
        }
        let pm = MapRef::new(&params).map_err(|_| status::CBOR_UNEXPECTED_TYPE)?;
        if let Some(n) = pm.uint(1).map_err(|_| status::CBOR_UNEXPECTED_TYPE)? {
            if n < self.min_len || n > 63 {
                return Err(status::PIN_POLICY_VIOLATION);
            }
            self.min_len = n;
            if self.pin_hash.is_some() && (self.pin_len as u64) < n {
                self.force_change = true;
            }
        }
        if pm.get(3) == Some(&Value::Bool(true)) {
            if self.pin_hash.is_none() {
                return Err(status::PIN_NOT_SET);
            }
            self.force_change = true;
        }
        Ok(vec![status::OK])
    }

    fn new_pin(&self, m: &MapRef<'_>, shared: &SharedSecret, extra: &[u8]) -> Result<String, u8> {
        let enc = m.bytes(5).ok().flatten().ok_or(status::MISSING_PARAMETER)?;
        let param = m.bytes(4).ok().flatten().ok_or(status::MISSING_PARAMETER)?;
        if !shared.verify(&[enc, extra].concat(), param) {
            return Err(status::PIN_AUTH_INVALID);
        }
        let pin = shared.decrypt_pin(enc).map_err(|_| status::PIN_POLICY_VIOLATION)?;
        if (pin.chars().count() as u64) < self.min_len {
            return Err(status::PIN_POLICY_VIOLATION);
        }
        Ok(pin.to_string())
    }

    fn client_pin(&mut self, m: &MapRef<'_>) -> Result<Vec<u8>, u8> {
        let sub = m.uint(2).ok().flatten().ok_or(status::MISSING_PARAMETER)?;
        if sub == pin_sub::GET_KEY_AGREEMENT {
            return Ok(ok(cbor::int_map([(1, self.agreement.public_cose())])));
        }
        if sub == pin_sub::GET_RETRIES {
            return Ok(ok(cbor::int_map([(3, Value::Integer(self.retries.into()))])));
        }
        let p = m
            .uint(1)
            .ok()
            .flatten()
            .and_then(|n| PinProtocol::from_number(n).ok())
            .ok_or(status::MISSING_PARAMETER)?;
        let peer = m.get(3).ok_or(status::MISSING_PARAMETER)?;
        let shared = self.agreement.agree(p, peer).map_err(|_| status::INVALID_PARAMETER)?;
        match sub {
            pin_sub::SET_PIN => {
                if self.pin_hash.is_some() {
                    return Err(status::NOT_ALLOWED);
                }
                let pin = self.new_pin(m, &shared, &[])?;
                self.pin_hash = Some(pin_hash(&pin));
                self.pin_len = pin.chars().count();
                Ok(vec![status::OK])
            }
            pin_sub::CHANGE_PIN => {
                let hash_enc = m.bytes(6).ok().flatten().ok_or(status::MISSING_PARAMETER)?.to_vec();
                self.check_hash(&shared, &hash_enc)?;
                let pin = self.new_pin(m, &shared, &hash_enc)?;
                if Some(pin_hash(&pin)) == self.pin_hash {
                    return Err(status::PIN_POLICY_VIOLATION);
                }
                self.pin_hash = Some(pin_hash(&pin));
                self.pin_len = pin.chars().count();
                self.force_change = false;
                Ok(vec![status::OK])
            }
            pin_sub::GET_PIN_TOKEN | pin_sub::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS => {
                let hash_enc = m.bytes(6).ok().flatten().ok_or(status::MISSING_PARAMETER)?.to_vec();
                self.check_hash(&shared, &hash_enc)?;
                if self.force_change {
                    return Err(status::PIN_POLICY_VIOLATION);
                }
                let permissions = if sub == pin_sub::GET_PIN_TOKEN {
                    0x03
                } else {
                    m.uint(9)
                        .ok()
                        .flatten()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or(status::MISSING_PARAMETER)?
                };
                self.token_permissions = permissions;
                let enc = shared.encrypt(&self.token).map_err(|_| status::OTHER)?;
                Ok(ok(cbor::int_map([(2, Value::Bytes(enc))])))
            }
            _ => Err(status::INVALID_SUBCOMMAND),
        }
    }

    fn check_hash(&mut self, shared: &SharedSecret, enc: &[u8]) -> Result<(), u8> {
        let stored = self.pin_hash.ok_or(status::PIN_NOT_SET)?;
        if self.retries == 0 {
            return Err(status::PIN_BLOCKED);
        }
        let hash = shared.decrypt(enc).map_err(|_| status::PIN_AUTH_INVALID)?;
        if hash[..] != stored[..] {
            self.retries -= 1;
            self.agreement = KeyPair::generate();
            return Err(if self.retries == 0 { status::PIN_BLOCKED } else { status::PIN_INVALID });
        }
        self.retries = 8;
        Ok(())
    }

    /// What a client gets asking for a PIN token with `pin` (as python-fido2's
    /// `ClientPin.get_pin_token` does): `Ok` or the refusal's status.
    pub fn token_with(&mut self, pin: &str) -> Result<(), u8> {
        let answer = self.handle(&crate::client::get_key_agreement(PinProtocol::Two));
        let ka = crate::client::parse_key_agreement(&answer).map_err(|_| status::OTHER)?;
        let platform = KeyPair::generate();
        let shared = platform.agree(PinProtocol::Two, &ka).map_err(|_| status::OTHER)?;
        let request = crate::client::get_pin_token(&platform, &shared, pin).map_err(|_| status::OTHER)?;
        match self.handle(&request).first() {
            Some(&status::OK) => Ok(()),
            Some(s) => Err(*s),
            None => Err(status::OTHER),
        }
    }
}
