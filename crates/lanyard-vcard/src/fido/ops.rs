//! makeCredential, getAssertion, getNextAssertion, credential management and authenticatorConfig.

use super::keys::{self, CredentialInfo};
use super::request::{self, Descriptor, PinUvAuth};
use super::state::{MAX_RESIDENT_CREDENTIALS, ResidentCredential};
use super::{Authenticator, Enumeration, PendingAssertions, Status};
use lanyard_ctap::cbor::{self, Value, int, int_map, text_map};
use lanyard_ctap::consts::{config_sub, cred_mgmt_sub, permission, status};
use p256::ecdsa::{DerSignature, SigningKey};
use sha2::{Digest, Sha256};
use signature::Signer;

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;
const FLAG_ED: u8 = 0x80;

fn err<T>(code: u8) -> Result<T, Status> {
    Err(Status(code))
}

fn rp_id_hash(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

/// The credential public key as a COSE_Key (EC2, ES256, P-256).
fn cose_public_key(key: &SigningKey) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    // An uncompressed point always has both coordinates.
    let x = point.x().map(|x| x.to_vec()).unwrap_or_default();
    let y = point.y().map(|y| y.to_vec()).unwrap_or_default();
    int_map([(1, int(2)), (3, int(-7)), (-1, int(1)), (-2, Value::Bytes(x)), (-3, Value::Bytes(y))])
}

fn sign(key: &SigningKey, auth_data: &[u8], client_data_hash: &[u8]) -> Result<Vec<u8>, Status> {
    let msg = [auth_data, client_data_hash].concat();
    let sig: DerSignature = key.try_sign(&msg).map_err(|_| Status(status::OTHER))?;
    Ok(sig.as_bytes().to_vec())
}

fn descriptor_value(id: &[u8]) -> Value {
    text_map([("id", Value::Bytes(id.to_vec())), ("type", Value::Text("public-key".into()))])
}

fn user_value(c: &ResidentCredential, identifying: bool) -> Value {
    let mut entries = vec![("id", Value::Bytes(c.user_id.clone()))];
    if identifying {
        if let Some(n) = &c.user_name {
            entries.push(("name", Value::Text(n.clone())));
        }
        if let Some(d) = &c.user_display_name {
            entries.push(("displayName", Value::Text(d.clone())));
        }
    }
    text_map(entries)
}

impl Authenticator {
    /// pinUvAuthParam handling shared by makeCredential and getAssertion: the zero-length
    /// "touch to select" probe, then the token check. Answers whether UV was established.
    fn mc_ga_auth(
        &mut self,
        auth: Option<&PinUvAuth>,
        client_data_hash: &[u8],
        needed: u8,
        rp_id: &str,
    ) -> Result<bool, Status> {
        let Some(auth) = auth else { return Ok(false) };
        if auth.param.is_empty() {
            return err(if self.state.pin.is_some() {
                status::PIN_AUTH_INVALID
            } else {
                status::PIN_NOT_SET
            });
        }
        if self.state.pin.is_none() {
            return err(status::PIN_NOT_SET);
        }
        self.verify_token(auth.protocol, client_data_hash, &auth.param, needed, Some(rp_id))?;
        Ok(true)
    }

    fn next_count(&mut self) -> u32 {
        self.state.sign_count = self.state.sign_count.wrapping_add(1);
        self.dirty = true;
        self.state.sign_count
    }

    fn resident(&self, id: &[u8]) -> Option<&ResidentCredential> {
        self.state.credentials.iter().find(|c| c.id == id)
    }

    /// A presented credential ID this card can use for `rp_hash`: its tag checks out and, for a
    /// discoverable credential, it has not been deleted.
    fn usable(&self, rp_hash: &[u8; 32], id: &[u8]) -> Option<(CredentialInfo, SigningKey)> {
        let (info, key) = keys::open_credential(&self.state.credential_secret, rp_hash, id)?;
        if info.resident && self.resident(id).is_none() {
            return None;
        }
        Some((info, key))
    }

    pub(super) fn make_credential(&mut self, v: &Value) -> Result<Value, Status> {
        let req = request::make_credential(v)?;
        if req.pin_uv_auth.as_ref().is_some_and(|a| !a.param.is_empty() && a.protocol.is_none()) {
            return err(status::MISSING_PARAMETER);
        }
        if !req.es256 {
            return err(status::UNSUPPORTED_ALGORITHM);
        }
        if req.enterprise_attestation {
            return err(status::INVALID_PARAMETER);
        }
        let rk = req.options.rk.unwrap_or(false);
        if req.options.up == Some(false) {
            return err(status::INVALID_OPTION);
        }
        let uv = self.mc_ga_auth(
            req.pin_uv_auth.as_ref(),
            &req.client_data_hash,
            permission::MAKE_CREDENTIAL,
            &req.rp_id,
        )?;
        if !uv {
            // No built-in UV; with a PIN set, discoverable credentials need the PIN token.
            if req.options.uv == Some(true) {
                return err(status::INVALID_OPTION);
            }
            if self.state.pin.is_some() && rk {
                return err(status::PUAT_REQUIRED);
            }
        }
        let rp_hash = rp_id_hash(&req.rp_id);
        for d in req.exclude_list.iter().filter(|d| d.public_key) {
            if let Some((info, _)) = self.usable(&rp_hash, &d.id)
                && (info.cred_protect < 3 || uv)
            {
                return err(status::CREDENTIAL_EXCLUDED);
            }
        }
        if rk
            && self.state.credentials.len() >= MAX_RESIDENT_CREDENTIALS
            && !self.state.credentials.iter().any(|c| c.rp_id == req.rp_id && c.user_id == req.user.id)
        {
            return err(status::KEY_STORE_FULL);
        }
        let cred_protect = req.cred_protect.unwrap_or(1);
        let (id, key) = keys::new_credential(
            &self.state.credential_secret,
            &rp_hash,
            CredentialInfo { resident: rk, cred_protect },
        );
        if rk {
            // A new discoverable credential replaces the user's earlier one for this RP.
            self.state.credentials.retain(|c| !(c.rp_id == req.rp_id && c.user_id == req.user.id));
            let sequence = self.state.next_sequence;
            self.state.next_sequence += 1;
            self.state.credentials.push(ResidentCredential {
                id: id.clone(),
                rp_id: req.rp_id.clone(),
                rp_name: req.rp_name.clone(),
                user_id: req.user.id.clone(),
                user_name: req.user.name.clone(),
                user_display_name: req.user.display_name.clone(),
                cred_protect,
                sequence,
            });
        }
        let count = self.next_count();
        let mut flags = FLAG_UP | FLAG_AT;
        if uv {
            flags |= FLAG_UV;
        }
        if req.cred_protect.is_some() {
            flags |= FLAG_ED;
        }
        let mut auth_data = Vec::with_capacity(256);
        auth_data.extend_from_slice(&rp_hash);
        auth_data.push(flags);
        auth_data.extend_from_slice(&count.to_be_bytes());
        auth_data.extend_from_slice(&crate::attestation::FIDO_AAGUID);
        auth_data.extend_from_slice(&(id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&id);
        auth_data.extend_from_slice(&cbor::encode(&cose_public_key(&key)));
        if let Some(level) = req.cred_protect {
            auth_data.extend_from_slice(&cbor::encode(&text_map([("credProtect", int(i64::from(level)))])));
        }
        let sig = sign(&self.attestation_key, &auth_data, &req.client_data_hash)?;
        if uv {
            self.clear_token_permissions();
        }
        Ok(int_map([
            (1, Value::Text("packed".into())),
            (2, Value::Bytes(auth_data)),
            (
                3,
                text_map([
                    ("alg", int(-7)),
                    ("sig", Value::Bytes(sig)),
                    ("x5c", Value::Array(vec![Value::Bytes(self.state.attestation_cert.clone())])),
                ]),
            ),
        ]))
    }

    pub(super) fn get_assertion(&mut self, v: &Value) -> Result<Value, Status> {
        let req = request::get_assertion(v)?;
        if req.pin_uv_auth.as_ref().is_some_and(|a| !a.param.is_empty() && a.protocol.is_none()) {
            return err(status::MISSING_PARAMETER);
        }
        if req.options.rk.is_some() {
            return err(status::UNSUPPORTED_OPTION);
        }
        let uv = self.mc_ga_auth(
            req.pin_uv_auth.as_ref(),
            &req.client_data_hash,
            permission::GET_ASSERTION,
            &req.rp_id,
        )?;
        if !uv && req.options.uv == Some(true) {
            return err(status::INVALID_OPTION);
        }
        let up = req.options.up.unwrap_or(true);
        let rp_hash = rp_id_hash(&req.rp_id);
        let with_allow_list = !req.allow_list.is_empty();
        let ids: Vec<Vec<u8>> = if with_allow_list {
            let found =
                req.allow_list.iter().filter(|d: &&Descriptor| d.public_key).find(|d| {
                    self.usable(&rp_hash, &d.id).is_some_and(|(info, _)| info.cred_protect < 3 || uv)
                });
            found.map(|d| vec![d.id.clone()]).unwrap_or_default()
        } else {
            let mut creds: Vec<&ResidentCredential> = self
                .state
                .credentials
                .iter()
                .filter(|c| c.rp_id == req.rp_id && (c.cred_protect < 2 || uv))
                .collect();
            creds.sort_by_key(|c| std::cmp::Reverse(c.sequence));
            creds.into_iter().map(|c| c.id.clone()).collect()
        };
        let Some((first, rest)) = ids.split_first() else { return err(status::NO_CREDENTIALS) };
        let mut flags = if up { FLAG_UP } else { 0 };
        if uv {
            flags |= FLAG_UV;
        }
        let total = ids.len();
        let mut response = self.assertion(&rp_hash, &req.client_data_hash, flags, first, !with_allow_list)?;
        if !with_allow_list && let Value::Map(m) = &mut response {
            m.push((int(5), int(total as i64)));
        }
        if total > 1 {
            self.session.assertions = Some(PendingAssertions {
                rp_id_hash: rp_hash,
                client_data_hash: req.client_data_hash.clone(),
                flags,
                remaining: rest.to_vec(),
            });
        }
        if uv && up {
            self.clear_token_permissions();
        }
        Ok(response)
    }

    fn assertion(
        &mut self,
        rp_hash: &[u8; 32],
        client_data_hash: &[u8],
        flags: u8,
        id: &[u8],
        discovered: bool,
    ) -> Result<Value, Status> {
        let (_, key) = self.usable(rp_hash, id).ok_or(Status(status::NO_CREDENTIALS))?;
        let user = self.resident(id).map(|c| user_value(c, flags & FLAG_UV != 0 && discovered));
        let count = self.next_count();
        let mut auth_data = Vec::with_capacity(37);
        auth_data.extend_from_slice(rp_hash);
        auth_data.push(flags);
        auth_data.extend_from_slice(&count.to_be_bytes());
        let sig = sign(&key, &auth_data, client_data_hash)?;
        let mut entries =
            vec![(1, descriptor_value(id)), (2, Value::Bytes(auth_data)), (3, Value::Bytes(sig))];
        if let Some(u) = user {
            entries.push((4, u));
        }
        Ok(int_map(entries))
    }

    pub(super) fn get_next_assertion(&mut self) -> Result<Value, Status> {
        let Some(mut pending) = self.session.assertions.take() else { return err(status::NOT_ALLOWED) };
        if pending.remaining.is_empty() {
            return err(status::NOT_ALLOWED);
        }
        let id = pending.remaining.remove(0);
        let response =
            self.assertion(&pending.rp_id_hash, &pending.client_data_hash, pending.flags, &id, true)?;
        if !pending.remaining.is_empty() {
            self.session.assertions = Some(pending);
        }
        Ok(response)
    }

    pub(super) fn config(&mut self, v: &Value) -> Result<(), Status> {
        let req = request::sub_command(v)?;
        if self.state.pin.is_some() {
            let auth = req.pin_uv_auth.as_ref().ok_or(Status(status::PUAT_REQUIRED))?;
            // 32 × 0xff ‖ 0x0d ‖ subCommand ‖ subCommandParams (CTAP 2.1 §6.11).
            let sub = u8::try_from(req.sub_command).map_err(|_| Status(status::INVALID_SUBCOMMAND))?;
            let mut message = vec![0xFF; 32];
            message.push(0x0D);
            message.push(sub);
            if let Some(p) = &req.params {
                message.extend_from_slice(&cbor::encode(p));
            }
            self.verify_token(auth.protocol, &message, &auth.param, permission::AUTHENTICATOR_CONFIG, None)?;
        }
        match req.sub_command {
            config_sub::SET_MIN_PIN_LENGTH => {
                let p = request::set_min_pin_length(req.params.as_ref())?;
                if !p.rp_ids.is_empty() {
                    // maxRPIDsForSetMinPINLength is 0: the minPinLength extension is not offered.
                    return err(status::INVALID_PARAMETER);
                }
                let new_min = match p.new_min_pin_length {
                    None => self.state.min_pin_length,
                    Some(n) => u8::try_from(n)
                        .ok()
                        .filter(|n| *n <= 63)
                        .ok_or(Status(status::PIN_POLICY_VIOLATION))?,
                };
                if new_min < self.state.min_pin_length {
                    return err(status::PIN_POLICY_VIOLATION);
                }
                if p.force_change_pin && self.state.pin.is_none() {
                    return err(status::PIN_NOT_SET);
                }
                let too_short = self.state.pin.as_ref().is_some_and(|pin| pin.code_points < new_min);
                self.state.min_pin_length = new_min;
                if p.force_change_pin || too_short {
                    self.state.force_pin_change = true;
                    self.revoke_token();
                }
                self.dirty = true;
                Ok(())
            }
            config_sub::ENABLE_ENTERPRISE_ATTESTATION | config_sub::TOGGLE_ALWAYS_UV => {
                err(status::INVALID_SUBCOMMAND)
            }
            _ => err(status::INVALID_SUBCOMMAND),
        }
    }

    pub(super) fn credential_management(&mut self, v: &Value) -> Result<Option<Value>, Status> {
        let req = request::sub_command(v)?;
        let needs_auth = !matches!(
            req.sub_command,
            cred_mgmt_sub::ENUMERATE_RPS_GET_NEXT | cred_mgmt_sub::ENUMERATE_CREDENTIALS_GET_NEXT
        );
        if needs_auth {
            self.session.enumeration = None;
            if self.state.pin.is_none() {
                return err(status::PIN_NOT_SET);
            }
            let auth = req.pin_uv_auth.as_ref().ok_or(Status(status::PUAT_REQUIRED))?;
            let sub = u8::try_from(req.sub_command).map_err(|_| Status(status::INVALID_SUBCOMMAND))?;
            let mut message = vec![sub];
            if let Some(p) = &req.params {
                message.extend_from_slice(&cbor::encode(p));
            }
            self.verify_token(auth.protocol, &message, &auth.param, permission::CREDENTIAL_MANAGEMENT, None)?;
        }
        let params = request::cred_mgmt_params(req.params.as_ref())?;
        match req.sub_command {
            cred_mgmt_sub::GET_CREDS_METADATA => {
                self.require_unbound()?;
                let n = self.state.credentials.len();
                Ok(Some(int_map([
                    (1, int(n as i64)),
                    (2, int(MAX_RESIDENT_CREDENTIALS.saturating_sub(n) as i64)),
                ])))
            }
            cred_mgmt_sub::ENUMERATE_RPS_BEGIN => {
                self.require_unbound()?;
                let mut rps: Vec<String> = Vec::new();
                for c in &self.state.credentials {
                    if !rps.contains(&c.rp_id) {
                        rps.push(c.rp_id.clone());
                    }
                }
                let Some((first, rest)) = rps.split_first() else { return err(status::NO_CREDENTIALS) };
                let mut answer = self.rp_entry(first);
                if let Value::Map(m) = &mut answer {
                    m.push((int(5), int(rps.len() as i64)));
                }
                if !rest.is_empty() {
                    self.session.enumeration = Some(Enumeration::Rps(rest.to_vec()));
                }
                Ok(Some(answer))
            }
            cred_mgmt_sub::ENUMERATE_RPS_GET_NEXT => {
                let Some(Enumeration::Rps(mut rest)) = self.session.enumeration.take() else {
                    return err(status::NOT_ALLOWED);
                };
                if rest.is_empty() {
                    return err(status::NOT_ALLOWED);
                }
                let rp = rest.remove(0);
                if !rest.is_empty() {
                    self.session.enumeration = Some(Enumeration::Rps(rest));
                }
                Ok(Some(self.rp_entry(&rp)))
            }
            cred_mgmt_sub::ENUMERATE_CREDENTIALS_BEGIN => {
                let hash = params.rp_id_hash.ok_or(Status(status::MISSING_PARAMETER))?;
                let mut creds: Vec<&ResidentCredential> =
                    self.state.credentials.iter().filter(|c| rp_id_hash(&c.rp_id)[..] == hash[..]).collect();
                if let (Some(bound), Some(c)) = (self.token_rp_id(), creds.first())
                    && bound != c.rp_id
                {
                    return err(status::PIN_AUTH_INVALID);
                }
                creds.sort_by_key(|c| c.sequence);
                let ids: Vec<Vec<u8>> = creds.iter().map(|c| c.id.clone()).collect();
                let Some((first, rest)) = ids.split_first() else { return err(status::NO_CREDENTIALS) };
                let mut answer = self.credential_entry(first)?;
                if let Value::Map(m) = &mut answer {
                    m.push((int(9), int(ids.len() as i64)));
                }
                if !rest.is_empty() {
                    self.session.enumeration = Some(Enumeration::Credentials(rest.to_vec()));
                }
                Ok(Some(answer))
            }
            cred_mgmt_sub::ENUMERATE_CREDENTIALS_GET_NEXT => {
                let Some(Enumeration::Credentials(mut rest)) = self.session.enumeration.take() else {
                    return err(status::NOT_ALLOWED);
                };
                if rest.is_empty() {
                    return err(status::NOT_ALLOWED);
                }
                let id = rest.remove(0);
                if !rest.is_empty() {
                    self.session.enumeration = Some(Enumeration::Credentials(rest));
                }
                self.credential_entry(&id).map(Some)
            }
            cred_mgmt_sub::DELETE_CREDENTIAL => {
                let d = params.credential.ok_or(Status(status::MISSING_PARAMETER))?;
                let c = self.resident(&d.id).ok_or(Status(status::NO_CREDENTIALS))?;
                if self.token_rp_id().is_some_and(|bound| bound != c.rp_id) {
                    return err(status::PIN_AUTH_INVALID);
                }
                self.state.credentials.retain(|c| c.id != d.id);
                self.dirty = true;
                Ok(None)
            }
            cred_mgmt_sub::UPDATE_USER_INFORMATION => {
                let d = params.credential.ok_or(Status(status::MISSING_PARAMETER))?;
                let user = params.user.ok_or(Status(status::MISSING_PARAMETER))?;
                let bound = self.token_rp_id().map(str::to_owned);
                let c = self
                    .state
                    .credentials
                    .iter_mut()
                    .find(|c| c.id == d.id)
                    .ok_or(Status(status::NO_CREDENTIALS))?;
                if bound.is_some_and(|b| b != c.rp_id) {
                    return err(status::PIN_AUTH_INVALID);
                }
                if c.user_id != user.id {
                    return err(status::INVALID_PARAMETER);
                }
                c.user_name = user.name;
                c.user_display_name = user.display_name;
                self.dirty = true;
                Ok(None)
            }
            _ => err(status::INVALID_SUBCOMMAND),
        }
    }

    /// getCredsMetadata and enumerateRPs reveal every RP: a token bound to one RP may not.
    fn require_unbound(&self) -> Result<(), Status> {
        if self.token_rp_id().is_some() { err(status::PIN_AUTH_INVALID) } else { Ok(()) }
    }

    fn rp_entry(&self, rp_id: &str) -> Value {
        let name = self.state.credentials.iter().find(|c| c.rp_id == rp_id).and_then(|c| c.rp_name.clone());
        let mut rp = vec![("id", Value::Text(rp_id.to_owned()))];
        if let Some(n) = name {
            rp.push(("name", Value::Text(n)));
        }
        int_map([(3, text_map(rp)), (4, Value::Bytes(rp_id_hash(rp_id).to_vec()))])
    }

    fn credential_entry(&self, id: &[u8]) -> Result<Value, Status> {
        let c = self.resident(id).ok_or(Status(status::NO_CREDENTIALS))?;
        let (_, key) = self.usable(&rp_id_hash(&c.rp_id), id).ok_or(Status(status::OTHER))?;
        Ok(int_map([
            (6, user_value(c, true)),
            (7, descriptor_value(id)),
            (8, cose_public_key(&key)),
            (10, int(i64::from(c.cred_protect))),
        ]))
    }
}
