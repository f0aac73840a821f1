//! The client against an authenticator side built here from the same PIN protocol: each test
//! decodes what the client sent, checks it the way an authenticator would, and answers.

use proptest::prelude::*;

use super::*;
use crate::pin_protocol::{self, pin_hash};

/// The authenticator's half of one PIN protocol exchange.
struct Peer {
    key: KeyPair,
}

impl Peer {
    fn new() -> Self {
        Self { key: KeyPair::generate() }
    }

    fn key_agreement_answer(&self) -> Vec<u8> {
        ok(&cbor::int_map([(1, self.key.public_cose())]))
    }

    /// Splits a request into its command byte and CBOR map.
    fn read(request: &[u8]) -> (u8, Value) {
        let (c, body) = request.split_first().expect("a command byte");
        (*c, cbor::decode(body).expect("canonical CBOR"))
    }

    /// The secret agreed with the platform key the request carries.
    fn secret(&self, m: &MapRef<'_>) -> SharedSecret {
        let p = PinProtocol::from_number(m.uint(1).unwrap().unwrap()).unwrap();
        self.key.agree(p, m.require(3).unwrap()).unwrap()
    }
}

fn ok(v: &Value) -> Vec<u8> {
    [vec![0u8], cbor::encode(v)].concat()
}

fn client_side(peer: &Peer, p: PinProtocol) -> (KeyPair, SharedSecret) {
    let cose = parse_key_agreement(&peer.key_agreement_answer()).unwrap();
    let platform = KeyPair::generate();
    let shared = platform.agree(p, &cose).unwrap();
    (platform, shared)
}

#[test]
fn simple_requests_are_canonical() {
    assert_eq!(get_info(), [0x04]);
    assert_eq!(reset(), [0x07]);
    // {1: 2, 2: 2}
    assert_eq!(get_key_agreement(PinProtocol::Two), [0x06, 0xA2, 0x01, 0x02, 0x02, 0x02]);
    assert_eq!(get_retries(PinProtocol::One), [0x06, 0xA2, 0x01, 0x01, 0x02, 0x01]);
    // {1: 3, 2: {1: 8}} without a PIN.
    assert_eq!(set_min_pin_length(Some(8), false, None), [0x0D, 0xA2, 0x01, 0x03, 0x02, 0xA1, 0x01, 0x08]);
}

#[test]
fn set_pin_reaches_the_authenticator_and_verifies() {
    for p in [PinProtocol::One, PinProtocol::Two] {
        let peer = Peer::new();
        let (platform, shared) = client_side(&peer, p);
        let req = set_pin(&platform, &shared, "482916").unwrap();
        let (c, v) = Peer::read(&req);
        assert_eq!(c, cmd::CLIENT_PIN);
        let m = MapRef::new(&v).unwrap();
        assert_eq!(m.uint(2), Ok(Some(pin_sub::SET_PIN)));
        let theirs = peer.secret(&m);
        let enc = m.bytes(5).unwrap().unwrap();
        assert!(theirs.verify(enc, m.bytes(4).unwrap().unwrap()));
        assert_eq!(theirs.decrypt_pin(enc).unwrap().as_str(), "482916");
        parse_empty(names::SET_PIN, &[0]).unwrap();
    }
}

#[test]
fn change_pin_carries_the_old_hash_and_the_new_pin() {
    for p in [PinProtocol::One, PinProtocol::Two] {
        let peer = Peer::new();
        let (platform, shared) = client_side(&peer, p);
        let req = change_pin(&platform, &shared, "11223344", "99887766").unwrap();
        let (_, v) = Peer::read(&req);
        let m = MapRef::new(&v).unwrap();
        assert_eq!(m.uint(2), Ok(Some(pin_sub::CHANGE_PIN)));
        let theirs = peer.secret(&m);
        let new_enc = m.bytes(5).unwrap().unwrap();
        let hash_enc = m.bytes(6).unwrap().unwrap();
        assert!(theirs.verify(&[new_enc, hash_enc].concat(), m.bytes(4).unwrap().unwrap()));
        assert_eq!(&theirs.decrypt(hash_enc).unwrap()[..], &pin_hash("11223344")[..]);
        assert_eq!(theirs.decrypt_pin(new_enc).unwrap().as_str(), "99887766");
    }
}

#[test]
fn a_token_with_permissions_is_decrypted_and_authenticates_config() {
    for p in [PinProtocol::One, PinProtocol::Two] {
        let peer = Peer::new();
        let (platform, shared) = client_side(&peer, p);
        let req =
            get_pin_token_with_permissions(&platform, &shared, "482916", PERMISSION_CONFIG, None).unwrap();
        let (_, v) = Peer::read(&req);
        let m = MapRef::new(&v).unwrap();
        assert_eq!(m.uint(2), Ok(Some(pin_sub::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS)));
        assert_eq!(m.uint(9), Ok(Some(0x20)));
        assert_eq!(m.get(10), None);
        let theirs = peer.secret(&m);
        assert_eq!(&theirs.decrypt(m.bytes(6).unwrap().unwrap()).unwrap()[..], &pin_hash("482916")[..]);
        let token = [0x5Au8; 32];
        let answer = ok(&cbor::int_map([(2, Value::Bytes(theirs.encrypt(&token).unwrap()))]));
        let got = parse_pin_token(names::GET_TOKEN_WITH_PERMISSIONS, &shared, &answer).unwrap();
        assert_eq!(&got[..], &token[..]);

        // The config request the token authenticates, checked as the authenticator does.
        let req = set_min_pin_length(Some(8), true, Some(ConfigAuth { protocol: p, token: &got }));
        let (c, v) = Peer::read(&req);
        assert_eq!(c, cmd::CONFIG);
        let m = MapRef::new(&v).unwrap();
        assert_eq!(m.uint(1), Ok(Some(config_sub::SET_MIN_PIN_LENGTH)));
        assert_eq!(m.uint(3), Ok(Some(p.number())));
        let params = m.require(2).unwrap();
        let pm = MapRef::new(params).unwrap();
        assert_eq!(pm.uint(1), Ok(Some(8)));
        assert_eq!(pm.get(3), Some(&Value::Bool(true)));
        let mut message = vec![0xFF; 32];
        message.extend_from_slice(&[0x0D, 0x03]);
        message.extend_from_slice(&cbor::encode(params));
        assert!(pin_protocol::verify(p, &token, &message, m.bytes(4).unwrap().unwrap()));
    }
}

#[test]
fn get_pin_token_sends_the_pin_hash() {
    let peer = Peer::new();
    let (platform, shared) = client_side(&peer, PinProtocol::Two);
    let req = get_pin_token(&platform, &shared, "246810").unwrap();
    let (_, v) = Peer::read(&req);
    let m = MapRef::new(&v).unwrap();
    assert_eq!(m.uint(2), Ok(Some(pin_sub::GET_PIN_TOKEN)));
    let theirs = peer.secret(&m);
    assert_eq!(&theirs.decrypt(m.bytes(6).unwrap().unwrap()).unwrap()[..], &pin_hash("246810")[..]);
}

#[test]
fn refusals_name_the_status_and_the_command() {
    let e = parse_empty(names::SET_PIN, &[status::PIN_POLICY_VIOLATION]).unwrap_err();
    assert_eq!(e.to_string(), "authenticatorClientPIN (setPIN): CTAP2_ERR_PIN_POLICY_VIOLATION (0x37)");
    assert_eq!(e.status(), Some(0x37));
    assert_eq!(parse_get_info(&[]).unwrap_err(), ClientError::Empty { command: names::GET_INFO });
    assert!(matches!(parse_empty(names::RESET, &[0, 0x01]), Err(ClientError::Malformed { .. })));
    parse_empty(names::RESET, &[0, 0xA0]).unwrap();
    // A token of the wrong length.
    let peer = Peer::new();
    let (_, shared) = client_side(&peer, PinProtocol::Two);
    let bad = ok(&cbor::int_map([(2, Value::Bytes(vec![0; 16]))]));
    let e = parse_pin_token(names::GET_PIN_TOKEN, &shared, &bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        "authenticatorClientPIN (getPinToken): the ciphertext length 0 is not a whole number of AES blocks"
    );
}

fn info_answer() -> Value {
    cbor::int_map([
        (1, Value::Array(vec![Value::Text("FIDO_2_0".into()), Value::Text("FIDO_2_1".into())])),
        (2, Value::Array(vec![Value::Text("credProtect".into())])),
        (3, Value::Bytes((0u8..16).collect())),
        (
            4,
            cbor::text_map([
                ("rk", Value::Bool(true)),
                ("clientPin", Value::Bool(false)),
                ("setMinPINLength", Value::Bool(true)),
            ]),
        ),
        (5, uint(1200)),
        (6, Value::Array(vec![uint(2), uint(1)])),
        (0x0C, Value::Bool(false)),
        (0x0D, uint(4)),
        (0x0E, uint(0x050704)),
    ])
}

#[test]
fn get_info_reads_what_issuance_needs() {
    let info = parse_get_info(&ok(&info_answer())).unwrap();
    assert!(info.is_ctap21());
    assert_eq!(info.pin_state(), PinState::NotSet);
    assert!(info.can_set_min_pin_length());
    assert_eq!(info.pin_protocol(), Some(PinProtocol::Two));
    assert_eq!(info.min_pin_length, 4);
    assert_eq!(info.aaguid[15], 15);
    assert_eq!(info.extensions, ["credProtect"]);
    assert_eq!(info.max_msg_size, Some(1200));
    assert_eq!(info.firmware_version, Some(0x050704));
    assert!(!info.force_pin_change);

    let mut v = info_answer();
    if let Value::Map(m) = &mut v {
        m.retain(|(k, _)| *k != cbor::int(3));
    }
    assert_eq!(
        parse_get_info(&ok(&v)).unwrap_err().to_string(),
        "authenticatorGetInfo: member 3 (aaguid) is missing"
    );
    let e = parse_get_info(&[status::INVALID_COMMAND]).unwrap_err();
    assert_eq!(e.to_string(), "authenticatorGetInfo: CTAP1_ERR_INVALID_COMMAND (0x01)");
}

#[test]
fn retries_and_key_agreement_are_checked() {
    let r = parse_retries(&ok(&cbor::int_map([(3, uint(8)), (4, Value::Bool(true))]))).unwrap();
    assert_eq!(r, Retries { retries: 8, power_cycle_needed: true });
    assert!(parse_retries(&ok(&cbor::int_map([(4, Value::Bool(true))]))).is_err());
    // A key agreement key that is not on the curve.
    let mut cose = KeyPair::generate().public_cose();
    if let Value::Map(m) = &mut cose {
        for (k, v) in m.iter_mut() {
            if *k == cbor::int(-3) {
                *v = Value::Bytes(vec![7; 32]);
            }
        }
    }
    assert!(matches!(
        parse_key_agreement(&ok(&cbor::int_map([(1, cose)]))),
        Err(ClientError::PinProtocol { .. })
    ));
}

fn arb_response() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120),
        // A status byte and a well-formed map with random members, which reaches the field
        // checks rather than stopping at the CBOR decoder.
        (
            any::<u8>().prop_map(|s| if s < 128 { 0 } else { s }),
            proptest::collection::btree_map(
                0i64..16,
                prop_oneof![
                    any::<u64>().prop_map(uint),
                    any::<bool>().prop_map(Value::Bool),
                    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
                    "[a-zA-Z_0-9]{0,12}".prop_map(Value::Text),
                    proptest::collection::vec("[A-Z_0-9]{0,8}".prop_map(Value::Text), 0..4)
                        .prop_map(Value::Array),
                ],
                0..8,
            ),
        )
            .prop_map(|(s, m)| [vec![s], cbor::encode(&cbor::int_map(m))].concat()),
    ]
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in arb_response()) {
        let _ = parse_get_info(&bytes);
        let _ = parse_retries(&bytes);
        let _ = parse_key_agreement(&bytes);
        let _ = parse_empty(names::RESET, &bytes);
        let (_, shared) = client_side(&Peer::new(), PinProtocol::Two);
        let _ = parse_pin_token(names::GET_PIN_TOKEN, &shared, &bytes);
        let (_, shared) = client_side(&Peer::new(), PinProtocol::One);
        let _ = parse_pin_token(names::GET_PIN_TOKEN, &shared, &bytes);
    }

    #[test]
    fn a_refusal_is_always_reported_with_its_code(code in 1u8..=255, rest in proptest::collection::vec(any::<u8>(), 0..20)) {
        let bytes = [vec![code], rest].concat();
        prop_assert_eq!(parse_get_info(&bytes).unwrap_err().status(), Some(code));
        prop_assert_eq!(parse_empty(names::SET_PIN, &bytes).unwrap_err().status(), Some(code));
    }

    #[test]
    fn get_info_reads_back_what_was_sent(
        protocols in proptest::collection::vec(1u64..4, 0..3),
        min in 4u64..=63,
        force in any::<bool>(),
        pin in proptest::option::of(any::<bool>()),
    ) {
        let mut options = vec![("rk", Value::Bool(true))];
        if let Some(p) = pin {
            options.push(("clientPin", Value::Bool(p)));
        }
        let v = cbor::int_map([
            (1, Value::Array(vec![Value::Text("FIDO_2_1".into())])),
            (3, Value::Bytes(vec![9; 16])),
            (4, cbor::text_map(options)),
            (6, Value::Array(protocols.iter().copied().map(uint).collect())),
            (0x0C, Value::Bool(force)),
            (0x0D, uint(min)),
        ]);
        let info = parse_get_info(&ok(&v)).unwrap();
        prop_assert_eq!(&info.pin_uv_auth_protocols, &protocols);
        prop_assert_eq!(info.min_pin_length, min);
        prop_assert_eq!(info.force_pin_change, force);
        let expected = match pin { None => PinState::Unsupported, Some(false) => PinState::NotSet, Some(true) => PinState::Set };
        prop_assert_eq!(info.pin_state(), expected);
    }
}
