//! Parsers for the CTAP requests the authenticator takes. Each turns the decoded CBOR map into a
//! typed request, or into the CTAP status the specification names for the defect: a missing
//! member is `MISSING_PARAMETER`, a member of the wrong CBOR type `CBOR_UNEXPECTED_TYPE`, a value
//! out of range `INVALID_PARAMETER`.

use super::Status;
use lanyard_ctap::cbor::{self, FieldError, MapRef, Value};
use lanyard_ctap::consts::status;
use lanyard_ctap::pin_protocol::PinProtocol;

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status(match e {
            FieldError::Missing(_) => status::MISSING_PARAMETER,
            FieldError::WrongType(..) | FieldError::NotAMap => status::CBOR_UNEXPECTED_TYPE,
            FieldError::OutOfRange(_) => status::INVALID_PARAMETER,
        })
    }
}

/// The longest user handle WebAuthn allows.
pub const MAX_USER_ID: usize = 64;
/// RP IDs longer than this are refused (a DNS name has at most 253 characters).
pub const MAX_TEXT: usize = 256;
/// The most descriptors an allow or exclude list may hold (getInfo's maxCredentialCountInList).
pub const MAX_LIST: usize = 16;

fn map(v: &Value) -> Result<MapRef<'_>, Status> {
    MapRef::new(v).map_err(|_| Status(status::CBOR_UNEXPECTED_TYPE))
}

fn text_member(m: &MapRef<'_>, key: &str) -> Result<Option<String>, Status> {
    match m.get_text(key) {
        None => Ok(None),
        Some(Value::Text(t)) if t.len() <= MAX_TEXT => Ok(Some(t.clone())),
        Some(Value::Text(_)) => Err(Status(status::INVALID_PARAMETER)),
        Some(_) => Err(Status(status::CBOR_UNEXPECTED_TYPE)),
    }
}

/// The longest name the card keeps: CTAP 2.1 lets an authenticator truncate rp.name,
/// user.name and user.displayName to 64 bytes, and this one does (at a character boundary).
pub const MAX_NAME: usize = 64;

fn name_member(m: &MapRef<'_>, key: &str) -> Result<Option<String>, Status> {
    match m.get_text(key) {
        None => Ok(None),
        Some(Value::Text(t)) => {
            let mut end = t.len().min(MAX_NAME);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            Ok(Some(t[..end].to_owned()))
        }
        Some(_) => Err(Status(status::CBOR_UNEXPECTED_TYPE)),
    }
}

fn protocol(m: &MapRef<'_>, key: i64) -> Result<Option<PinProtocol>, Status> {
    m.uint(key)?
        .map(|n| PinProtocol::from_number(n).map_err(|_| Status(status::INVALID_PARAMETER)))
        .transpose()
}

/// A PublicKeyCredentialDescriptor: only `public-key` descriptors name credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub id: Vec<u8>,
    pub public_key: bool,
}

fn descriptor(v: &Value) -> Result<Descriptor, Status> {
    let m = map(v)?;
    let kind = match m.get_text("type") {
        Some(Value::Text(t)) => t.as_str(),
        Some(_) => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
        None => return Err(Status(status::MISSING_PARAMETER)),
    };
    let id = match m.get_text("id") {
        Some(Value::Bytes(b)) => b.clone(),
        Some(_) => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
        None => return Err(Status(status::MISSING_PARAMETER)),
    };
    Ok(Descriptor { id, public_key: kind == "public-key" })
}

fn descriptor_list(v: Option<&Value>) -> Result<Vec<Descriptor>, Status> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_LIST => items.iter().map(descriptor).collect(),
        Some(Value::Array(_)) => Err(Status(status::LIMIT_EXCEEDED)),
        Some(_) => Err(Status(status::CBOR_UNEXPECTED_TYPE)),
    }
}

/// `up`, `uv` and `rk` of an options map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub rk: Option<bool>,
    pub up: Option<bool>,
    pub uv: Option<bool>,
}

fn options(v: Option<&Value>) -> Result<Options, Status> {
    let Some(v) = v else { return Ok(Options::default()) };
    let m = map(v)?;
    Ok(Options { rk: m.bool_text("rk")?, up: m.bool_text("up")?, uv: m.bool_text("uv")? })
}

/// The user entity of makeCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Vec<u8>,
    pub name: Option<String>,
    pub display_name: Option<String>,
}

pub fn user(v: &Value) -> Result<User, Status> {
    let m = map(v)?;
    let id = match m.get_text("id") {
        Some(Value::Bytes(b)) if b.len() <= MAX_USER_ID => b.clone(),
        Some(Value::Bytes(_)) => return Err(Status(status::INVALID_PARAMETER)),
        Some(_) => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
        None => return Err(Status(status::MISSING_PARAMETER)),
    };
    Ok(User { id, name: name_member(&m, "name")?, display_name: name_member(&m, "displayName")? })
}

/// pinUvAuthParam with its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinUvAuth {
    pub param: Vec<u8>,
    pub protocol: Option<PinProtocol>,
}

/// authenticatorMakeCredential (0x01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeCredential {
    pub client_data_hash: Vec<u8>,
    pub rp_id: String,
    pub rp_name: Option<String>,
    pub user: User,
    /// Whether ES256 (the only algorithm this card has) is among pubKeyCredParams.
    pub es256: bool,
    pub exclude_list: Vec<Descriptor>,
    /// The credProtect extension's level, when asked for.
    pub cred_protect: Option<u8>,
    pub options: Options,
    pub pin_uv_auth: Option<PinUvAuth>,
    pub enterprise_attestation: bool,
}

fn pin_uv_auth(m: &MapRef<'_>, param_key: i64, protocol_key: i64) -> Result<Option<PinUvAuth>, Status> {
    let proto = protocol(m, protocol_key)?;
    Ok(m.bytes(param_key)?.map(|p| PinUvAuth { param: p.to_vec(), protocol: proto }))
}

fn cred_protect(extensions: Option<&Value>) -> Result<Option<u8>, Status> {
    let Some(v) = extensions else { return Ok(None) };
    let m = map(v)?;
    match m.get_text("credProtect") {
        None => Ok(None),
        Some(v) => match cbor::as_uint(v, "credProtect")? {
            n @ 1..=3 => Ok(Some(n as u8)),
            _ => Err(Status(status::INVALID_PARAMETER)),
        },
    }
}

pub fn make_credential(v: &Value) -> Result<MakeCredential, Status> {
    let m = map(v)?;
    let client_data_hash = m.bytes(1)?.ok_or(Status(status::MISSING_PARAMETER))?.to_vec();
    let rp = map(m.require(2)?)?;
    let rp_id = text_member(&rp, "id")?.ok_or(Status(status::MISSING_PARAMETER))?;
    let user = user(m.require(3)?)?;
    let params = match m.require(4)? {
        Value::Array(items) => items,
        _ => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
    };
    let mut es256 = false;
    for p in params {
        let pm = map(p)?;
        let alg = pm.get_text("alg").ok_or(Status(status::MISSING_PARAMETER))?;
        let alg = cbor::as_int(alg, "alg")?;
        let kind = match pm.get_text("type") {
            Some(Value::Text(t)) => t.as_str(),
            Some(_) => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
            None => return Err(Status(status::MISSING_PARAMETER)),
        };
        es256 |= kind == "public-key" && alg == -7;
    }
    let enterprise_attestation = m.uint(10)?.is_some();
    Ok(MakeCredential {
        client_data_hash,
        rp_name: name_member(&rp, "name")?,
        rp_id,
        user,
        es256,
        exclude_list: descriptor_list(m.get(5))?,
        cred_protect: cred_protect(m.get(6))?,
        options: options(m.get(7))?,
        pin_uv_auth: pin_uv_auth(&m, 8, 9)?,
        enterprise_attestation,
    })
}

/// authenticatorGetAssertion (0x02).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetAssertion {
    pub rp_id: String,
    pub client_data_hash: Vec<u8>,
    pub allow_list: Vec<Descriptor>,
    pub options: Options,
    pub pin_uv_auth: Option<PinUvAuth>,
}

pub fn get_assertion(v: &Value) -> Result<GetAssertion, Status> {
    let m = map(v)?;
    let rp_id = m.text(1)?.ok_or(Status(status::MISSING_PARAMETER))?;
    if rp_id.len() > MAX_TEXT {
        return Err(Status(status::INVALID_PARAMETER));
    }
    if let Some(ext) = m.get(4) {
        map(ext)?;
    }
    Ok(GetAssertion {
        rp_id: rp_id.to_owned(),
        client_data_hash: m.bytes(2)?.ok_or(Status(status::MISSING_PARAMETER))?.to_vec(),
        allow_list: descriptor_list(m.get(3))?,
        options: options(m.get(5))?,
        pin_uv_auth: pin_uv_auth(&m, 6, 7)?,
    })
}

/// authenticatorClientPIN (0x06).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPin {
    pub protocol: Option<PinProtocol>,
    pub sub_command: u64,
    pub key_agreement: Option<Value>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub new_pin_enc: Option<Vec<u8>>,
    pub pin_hash_enc: Option<Vec<u8>>,
    pub permissions: Option<u64>,
    pub rp_id: Option<String>,
}

pub fn client_pin(v: &Value) -> Result<ClientPin, Status> {
    let m = map(v)?;
    let sub_command = m.uint(2)?.ok_or(Status(status::MISSING_PARAMETER))?;
    if let Some(k) = m.get(3) {
        map(k)?;
    }
    let rp_id = m.text(10)?.map(str::to_owned);
    if rp_id.as_ref().is_some_and(|r| r.len() > MAX_TEXT) {
        return Err(Status(status::INVALID_PARAMETER));
    }
    Ok(ClientPin {
        protocol: protocol(&m, 1)?,
        sub_command,
        key_agreement: m.get(3).cloned(),
        pin_uv_auth_param: m.bytes(4)?.map(<[u8]>::to_vec),
        new_pin_enc: m.bytes(5)?.map(<[u8]>::to_vec),
        pin_hash_enc: m.bytes(6)?.map(<[u8]>::to_vec),
        permissions: m.uint(9)?,
        rp_id,
    })
}

/// The shape both authenticatorConfig (0x0D) and authenticatorCredentialManagement (0x0A) share:
/// a subcommand, its parameters, and the PIN/UV auth over both.
#[derive(Debug, Clone, PartialEq)]
pub struct SubCommand {
    pub sub_command: u64,
    pub params: Option<Value>,
    pub pin_uv_auth: Option<PinUvAuth>,
}

/// Both put subCommand under 1, subCommandParams under 2, pinUvAuthProtocol under 3 and
/// pinUvAuthParam under 4.
pub fn sub_command(v: &Value) -> Result<SubCommand, Status> {
    let m = map(v)?;
    let sub_command = m.uint(1)?.ok_or(Status(status::MISSING_PARAMETER))?;
    let params = m.get(2).cloned();
    if let Some(p) = &params {
        map(p)?;
    }
    Ok(SubCommand { sub_command, params, pin_uv_auth: pin_uv_auth(&m, 4, 3)? })
}

/// setMinPINLength's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetMinPinLength {
    pub new_min_pin_length: Option<u64>,
    pub rp_ids: Vec<String>,
    pub force_change_pin: bool,
}

pub fn set_min_pin_length(params: Option<&Value>) -> Result<SetMinPinLength, Status> {
    let Some(v) = params else { return Ok(SetMinPinLength::default()) };
    let m = map(v)?;
    let rp_ids = match m.get(2) {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            items.iter().map(|i| cbor::as_text(i, 2).map(str::to_owned)).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
    };
    let force_change_pin = match m.get(3) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Status(status::CBOR_UNEXPECTED_TYPE)),
    };
    Ok(SetMinPinLength { new_min_pin_length: m.uint(1)?, rp_ids, force_change_pin })
}

/// Credential management's subCommandParams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredMgmtParams {
    pub rp_id_hash: Option<Vec<u8>>,
    pub credential: Option<Descriptor>,
    pub user: Option<User>,
}

pub fn cred_mgmt_params(params: Option<&Value>) -> Result<CredMgmtParams, Status> {
    let Some(v) = params else { return Ok(CredMgmtParams::default()) };
    let m = map(v)?;
    Ok(CredMgmtParams {
        rp_id_hash: m.bytes(1)?.map(<[u8]>::to_vec),
        credential: m.get(2).map(descriptor).transpose()?,
        user: m.get(3).map(user).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbor::{int, int_map, text_map};
    use proptest::prelude::*;

    fn es256() -> Value {
        text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])
    }

    #[test]
    fn make_credential_reads_every_member() {
        let req = int_map([
            (1, Value::Bytes(vec![1; 32])),
            (2, text_map([("id", Value::Text("example.com".into())), ("name", Value::Text("Ex".into()))])),
            (3, text_map([("id", Value::Bytes(vec![9; 8])), ("name", Value::Text("alice".into()))])),
            (
                4,
                Value::Array(vec![
                    text_map([("alg", int(-8)), ("type", Value::Text("public-key".into()))]),
                    es256(),
                ]),
            ),
            (
                5,
                Value::Array(vec![text_map([
                    ("id", Value::Bytes(vec![5; 3])),
                    ("type", Value::Text("public-key".into())),
                ])]),
            ),
            (6, text_map([("credProtect", int(2))])),
            (7, text_map([("rk", Value::Bool(true))])),
            (8, Value::Bytes(vec![2; 32])),
            (9, int(2)),
        ]);
        let mc = make_credential(&req).map_err(|s| s.0);
        let Ok(mc) = mc else { panic!("{mc:?}") };
        assert_eq!(mc.rp_id, "example.com");
        assert_eq!(mc.rp_name.as_deref(), Some("Ex"));
        assert_eq!(mc.user.name.as_deref(), Some("alice"));
        assert!(mc.es256);
        assert_eq!(mc.exclude_list, vec![Descriptor { id: vec![5; 3], public_key: true }]);
        assert_eq!(mc.cred_protect, Some(2));
        assert_eq!(mc.options.rk, Some(true));
        assert_eq!(mc.pin_uv_auth, Some(PinUvAuth { param: vec![2; 32], protocol: Some(PinProtocol::Two) }));
    }

    #[test]
    fn defects_get_the_specified_status() {
        let missing_rp = int_map([(1, Value::Bytes(vec![1; 32]))]);
        assert_eq!(make_credential(&missing_rp).err(), Some(Status(status::MISSING_PARAMETER)));
        let wrong_type = int_map([(1, Value::Text("x".into()))]);
        assert_eq!(make_credential(&wrong_type).err(), Some(Status(status::CBOR_UNEXPECTED_TYPE)));
        let long_names =
            text_map([("id", Value::Bytes(vec![0; 4])), ("displayName", Value::Text("ä".repeat(40)))]);
        let u = user(&long_names).map_err(|s| s.0);
        assert_eq!(
            u.map(|u| u.display_name),
            Ok(Some("ä".repeat(32))),
            "truncated to 64 bytes on a char boundary"
        );
        let long_user = text_map([("id", Value::Bytes(vec![0; 65]))]);
        assert_eq!(user(&long_user).err(), Some(Status(status::INVALID_PARAMETER)));
        let bad_protocol = int_map([(1, int(3)), (2, int(1))]);
        assert_eq!(client_pin(&bad_protocol).err(), Some(Status(status::INVALID_PARAMETER)));
        assert_eq!(get_assertion(&int(1)).err(), Some(Status(status::CBOR_UNEXPECTED_TYPE)));
        let bad_protect = Some(text_map([("credProtect", int(4))]));
        assert_eq!(cred_protect(bad_protect.as_ref()).err(), Some(Status(status::INVALID_PARAMETER)));
        let params = int_map([(2, Value::Array(vec![])), (3, Value::Bool(true)), (1, int(6))]);
        assert_eq!(
            set_min_pin_length(Some(&params)).ok(),
            Some(SetMinPinLength { new_min_pin_length: Some(6), rp_ids: vec![], force_change_pin: true })
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(v) = cbor::decode(&bytes) {
                let _ = make_credential(&v);
                let _ = get_assertion(&v);
                let _ = client_pin(&v);
                let _ = sub_command(&v);
                let _ = set_min_pin_length(Some(&v));
                let _ = cred_mgmt_params(Some(&v));
            }
        }

        #[test]
        fn get_assertion_round_trips(rp in "[a-z]{1,20}\\.[a-z]{2,5}", hash in proptest::collection::vec(any::<u8>(), 32),
                                     ids in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..70), 0..5),
                                     up in any::<bool>()) {
            let allow: Vec<Value> = ids.iter().map(|id| text_map([("id", Value::Bytes(id.clone())), ("type", Value::Text("public-key".into()))])).collect();
            let req = int_map([(1, Value::Text(rp.clone())), (2, Value::Bytes(hash.clone())), (3, Value::Array(allow)), (5, text_map([("up", Value::Bool(up))]))]);
            let bytes = cbor::encode(&req);
            let decoded = cbor::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ga = get_assertion(&decoded).map_err(|s| TestCaseError::fail(format!("{:02x}", s.0)))?;
            prop_assert_eq!(ga.rp_id, rp);
            prop_assert_eq!(ga.client_data_hash, hash);
            prop_assert_eq!(ga.allow_list.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), ids);
            prop_assert_eq!(ga.options.up, Some(up));
        }
    }
}
