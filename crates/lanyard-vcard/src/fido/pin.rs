//! authenticatorClientPIN (CTAP 2.1 §6.5) and the pinUvAuthToken.
//!
//! Retries work as on a YubiKey: eight in all; three wrong PINs in a row block PIN use until the
//! next power cycle (`PIN_AUTH_BLOCKED`); at zero the PIN is blocked for good (`PIN_BLOCKED`) and
//! only authenticatorReset recovers the application.

use super::request::{self, ClientPin};
use super::state::{PIN_RETRIES, PIN_TRIES_PER_POWER_UP, StoredPin};
use super::{Authenticator, Status, TokenState, random_token};
use lanyard_ctap::cbor::{Value, int, int_map};
use lanyard_ctap::consts::{permission, pin_sub, status};
use lanyard_ctap::pin_protocol::{self, PinProtocol, SharedSecret};

/// Permissions this card can grant: mc, ga, cm, acfg (no bio enrolment, no large blobs).
const SUPPORTED_PERMISSIONS: u8 = permission::MAKE_CREDENTIAL
    | permission::GET_ASSERTION
    | permission::CREDENTIAL_MANAGEMENT
    | permission::AUTHENTICATOR_CONFIG;

fn err<T>(code: u8) -> Result<T, Status> {
    Err(Status(code))
}

impl Authenticator {
    pub(super) fn client_pin(&mut self, v: &Value) -> Result<Option<Value>, Status> {
        let req = request::client_pin(v)?;
        match req.sub_command {
            pin_sub::GET_RETRIES => Ok(Some(int_map([
                (3, int(i64::from(self.state.pin_retries))),
                (4, Value::Bool(self.session.consecutive_pin_failures >= PIN_TRIES_PER_POWER_UP)),
            ]))),
            pin_sub::GET_KEY_AGREEMENT => {
                self.required_protocol(&req)?;
                Ok(Some(int_map([(1, self.session.key_agreement.public_cose())])))
            }
            pin_sub::SET_PIN => self.set_pin(&req).map(|()| None),
            pin_sub::CHANGE_PIN => self.change_pin(&req).map(|()| None),
            pin_sub::GET_PIN_TOKEN | pin_sub::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS => {
                self.get_token(&req).map(Some)
            }
            // No built-in user verification.
            pin_sub::GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS | pin_sub::GET_UV_RETRIES => {
                err(status::INVALID_SUBCOMMAND)
            }
            _ => err(status::INVALID_SUBCOMMAND),
        }
    }

    fn shared_secret(&self, req: &ClientPin) -> Result<SharedSecret, Status> {
        let protocol = self.required_protocol(req)?;
        let peer = req.key_agreement.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        self.session.key_agreement.agree(protocol, peer).map_err(|_| Status(status::INVALID_PARAMETER))
    }

    fn set_pin(&mut self, req: &ClientPin) -> Result<(), Status> {
        let new_pin_enc = req.new_pin_enc.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        let param = req.pin_uv_auth_param.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        let shared = self.shared_secret(req)?;
        if self.state.pin.is_some() {
            return err(status::NOT_ALLOWED);
        }
        if !shared.verify(new_pin_enc, param) {
            return err(status::PIN_AUTH_INVALID);
        }
        let (hash, code_points) = self.new_pin(&shared, new_pin_enc)?;
        self.state.pin = Some(StoredPin { hash, code_points });
        self.state.pin_retries = PIN_RETRIES;
        self.dirty = true;
        Ok(())
    }

    /// Decrypts and checks a new PIN: its hash and length in code points.
    fn new_pin(&self, shared: &SharedSecret, new_pin_enc: &[u8]) -> Result<(Vec<u8>, u8), Status> {
        let plain_len = match shared.protocol() {
            PinProtocol::One => new_pin_enc.len(),
            PinProtocol::Two => new_pin_enc.len().saturating_sub(16),
        };
        if plain_len != 64 {
            return err(status::INVALID_PARAMETER);
        }
        let pin = shared.decrypt_pin(new_pin_enc).map_err(|_| Status(status::PIN_POLICY_VIOLATION))?;
        let code_points = pin.chars().count();
        if code_points < usize::from(self.state.min_pin_length) {
            return err(status::PIN_POLICY_VIOLATION);
        }
        // At most 63 bytes, so at most 63 code points.
        let code_points = u8::try_from(code_points).map_err(|_| Status(status::PIN_POLICY_VIOLATION))?;
        Ok((pin_protocol::pin_hash(&pin).to_vec(), code_points))
    }

    /// Checks `pinHashEnc` against the stored PIN, counting the try (CTAP 2.1 §6.5.5.5 steps
    /// on pinRetries). A wrong PIN also replaces the key agreement key.
    fn check_pin_hash(&mut self, shared: &SharedSecret, pin_hash_enc: &[u8]) -> Result<(), Status> {
        let Some(stored) = self.state.pin.clone() else { return err(status::PIN_NOT_SET) };
        if self.state.pin_retries == 0 {
            return err(status::PIN_BLOCKED);
        }
        if self.session.consecutive_pin_failures >= PIN_TRIES_PER_POWER_UP {
            return err(status::PIN_AUTH_BLOCKED);
        }
        self.state.pin_retries -= 1;
        self.dirty = true;
        let presented = shared.decrypt(pin_hash_enc).ok();
        let matches = presented.as_ref().is_some_and(|p| {
            p.len() == stored.hash.len() && p.iter().zip(&stored.hash).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
        });
        if !matches {
            self.session.key_agreement = lanyard_ctap::pin_protocol::KeyPair::generate();
            self.session.consecutive_pin_failures += 1;
            if self.state.pin_retries == 0 {
                return err(status::PIN_BLOCKED);
            }
            if self.session.consecutive_pin_failures >= PIN_TRIES_PER_POWER_UP {
                return err(status::PIN_AUTH_BLOCKED);
            }
            return err(status::PIN_INVALID);
        }
        self.state.pin_retries = PIN_RETRIES;
        self.session.consecutive_pin_failures = 0;
        Ok(())
    }

    fn change_pin(&mut self, req: &ClientPin) -> Result<(), Status> {
        let new_pin_enc = req.new_pin_enc.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        let pin_hash_enc = req.pin_hash_enc.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        let param = req.pin_uv_auth_param.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        let shared = self.shared_secret(req)?;
        let Some(current) = self.state.pin.clone() else { return err(status::PIN_NOT_SET) };
        if self.state.pin_retries == 0 {
            return err(status::PIN_BLOCKED);
        }
        if self.session.consecutive_pin_failures >= PIN_TRIES_PER_POWER_UP {
            return err(status::PIN_AUTH_BLOCKED);
        }
        if !shared.verify(&[new_pin_enc.as_slice(), pin_hash_enc].concat(), param) {
            return err(status::PIN_AUTH_INVALID);
        }
        self.check_pin_hash(&shared, pin_hash_enc)?;
        let (hash, code_points) = self.new_pin(&shared, new_pin_enc)?;
        if self.state.force_pin_change && hash == current.hash {
            return err(status::PIN_POLICY_VIOLATION);
        }
        self.state.pin = Some(StoredPin { hash, code_points });
        self.state.force_pin_change = false;
        self.revoke_token();
        self.dirty = true;
        Ok(())
    }

    fn get_token(&mut self, req: &ClientPin) -> Result<Value, Status> {
        let pin_hash_enc = req.pin_hash_enc.as_ref().ok_or(Status(status::MISSING_PARAMETER))?;
        let with_permissions = req.sub_command == pin_sub::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS;
        let permissions = if with_permissions {
            let p = req.permissions.ok_or(Status(status::MISSING_PARAMETER))?;
            let p = u8::try_from(p).map_err(|_| Status(status::UNAUTHORIZED_PERMISSION))?;
            if p == 0 {
                return err(status::INVALID_PARAMETER);
            }
            if p & !SUPPORTED_PERMISSIONS != 0 {
                return err(status::UNAUTHORIZED_PERMISSION);
            }
            p
        } else {
            if req.permissions.is_some() || req.rp_id.is_some() {
                return err(status::INVALID_PARAMETER);
            }
            // getPinToken's token may make credentials and get assertions (CTAP 2.1 §6.5.5.7.1).
            permission::MAKE_CREDENTIAL | permission::GET_ASSERTION
        };
        let shared = self.shared_secret(req)?;
        self.check_pin_hash(&shared, pin_hash_enc)?;
        if self.state.force_pin_change {
            return err(status::PIN_POLICY_VIOLATION);
        }
        self.session.token = random_token();
        self.session.token_state =
            Some(TokenState { permissions, rp_id: req.rp_id.clone(), protocol: shared.protocol() });
        let enc = shared.encrypt(&self.session.token[..]).map_err(|_| Status(status::OTHER))?;
        Ok(int_map([(2, Value::Bytes(enc))]))
    }

    /// Invalidates the current pinUvAuthToken (a new PIN, a forced change, a Reset).
    pub(super) fn revoke_token(&mut self) {
        self.session.token = random_token();
        self.session.token_state = None;
    }

    /// Checks a pinUvAuthParam over `message` against the current token and that the token has
    /// `needed` permission; binds the token to `rp_id` if it is not bound yet.
    pub(super) fn verify_token(
        &mut self,
        protocol: Option<PinProtocol>,
        message: &[u8],
        param: &[u8],
        needed: u8,
        rp_id: Option<&str>,
    ) -> Result<(), Status> {
        let protocol = protocol.ok_or(Status(status::MISSING_PARAMETER))?;
        let Some(token) = self.session.token_state.clone() else { return err(status::PIN_AUTH_INVALID) };
        if token.protocol != protocol
            || !pin_protocol::verify(protocol, &self.session.token[..], message, param)
        {
            return err(status::PIN_AUTH_INVALID);
        }
        if token.permissions & needed != needed {
            return err(status::PIN_AUTH_INVALID);
        }
        if let Some(rp) = rp_id {
            match &token.rp_id {
                Some(bound) if bound != rp => return err(status::PIN_AUTH_INVALID),
                Some(_) => {}
                None => {
                    if let Some(t) = self.session.token_state.as_mut() {
                        t.rp_id = Some(rp.to_owned());
                    }
                }
            }
        }
        Ok(())
    }

    /// The RP a token is bound to, if any.
    pub(super) fn token_rp_id(&self) -> Option<&str> {
        self.session.token_state.as_ref().and_then(|t| t.rp_id.as_deref())
    }

    /// After a makeCredential or getAssertion with user presence, the token keeps no mc/ga/cm/
    /// acfg permissions (CTAP 2.1: clearPinUvAuthTokenPermissionsExceptLbw).
    pub(super) fn clear_token_permissions(&mut self) {
        if let Some(t) = self.session.token_state.as_mut() {
            t.permissions &= permission::LARGE_BLOB_WRITE;
        }
    }
}

impl Authenticator {
    /// The request's PIN/UV auth protocol, which must be one the options offer.
    fn required_protocol(&self, req: &ClientPin) -> Result<PinProtocol, Status> {
        let protocol = req.protocol.ok_or(Status(status::MISSING_PARAMETER))?;
        if !self.state.options.offers(protocol) {
            return err(status::INVALID_PARAMETER);
        }
        Ok(protocol)
    }
}
