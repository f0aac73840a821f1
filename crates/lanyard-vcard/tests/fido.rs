//! The FIDO2 application of the virtual card, driven through APDUs as an NFC reader carries CTAP,
//! with a client made of `lanyard-ctap`'s PIN protocols (the other side of the same code). The
//! independent judges (python-fido2, ykman) run in `crates/lanyard/tests/fido_interop.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test card is made "now", like a card plugged in during the test.
#![allow(clippy::disallowed_methods)]

use lanyard_ctap::cbor::{self, MapRef, Value, int, int_map, text_map};
use lanyard_ctap::consts::{FIDO_AID, status};
use lanyard_ctap::pin_protocol::{self, KeyPair, PinProtocol, SharedSecret};
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use sha2::{Digest, Sha256};
use std::time::SystemTime;

fn new_card() -> (VirtualCard, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    let img = VirtualCard::new_image(&root, &NewCard::default(), SystemTime::now()).unwrap();
    (VirtualCard::from_image(img).unwrap(), dir)
}

fn apdu(card: &mut VirtualCard, raw: &[u8]) -> (Vec<u8>, u16) {
    let r = card.process(raw);
    let (data, sw) = r.split_at(r.len() - 2);
    (data.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
}

fn select_fido(card: &mut VirtualCard) {
    let mut cmd = vec![0x00, 0xA4, 0x04, 0x00, 0x08];
    cmd.extend_from_slice(&FIDO_AID);
    assert_eq!(apdu(card, &cmd), (b"FIDO_2_0".to_vec(), 0x9000));
}

/// One CTAP exchange: NFCCTAP_MSG with P1 00, chained in blocks of `block` bytes, long answers
/// read with GET RESPONSE (CLA `get_cla`).
fn exchange(card: &mut VirtualCard, request: &[u8], block: usize, get_cla: u8) -> Vec<u8> {
    let mut rest = request;
    while rest.len() > block {
        let (chunk, tail) = rest.split_at(block);
        let mut cmd = vec![0x90, 0x10, 0x00, 0x00, chunk.len() as u8];
        cmd.extend_from_slice(chunk);
        assert_eq!(apdu(card, &cmd), (vec![], 0x9000));
        rest = tail;
    }
    let mut cmd = vec![0x80, 0x10, 0x00, 0x00, rest.len() as u8];
    cmd.extend_from_slice(rest);
    cmd.push(0x00);
    let (mut data, mut sw) = apdu(card, &cmd);
    while sw >> 8 == 0x61 {
        let (more, next) = apdu(card, &[get_cla, 0xC0, 0x00, 0x00, sw as u8]);
        data.extend_from_slice(&more);
        sw = next;
    }
    assert_eq!(sw, 0x9000, "CTAP over NFC answered {sw:04X}");
    data
}

/// A CTAP command and its decoded answer, or the error status.
fn ctap(card: &mut VirtualCard, command: u8, params: Option<Value>) -> Result<Value, u8> {
    let mut req = vec![command];
    if let Some(p) = params {
        req.extend_from_slice(&cbor::encode(&p));
    }
    let resp = exchange(card, &req, 250, 0x00);
    match resp.split_first() {
        Some((0, [])) => Ok(Value::Null),
        Some((0, body)) => {
            let v = cbor::decode(body).expect("canonical CBOR");
            assert_eq!(cbor::encode(&v), body, "the answer is canonical");
            Ok(v)
        }
        Some((code, _)) => Err(*code),
        None => panic!("empty CTAP response"),
    }
}

fn get(v: &Value, key: i64) -> &Value {
    MapRef::new(v).unwrap().get(key).unwrap_or_else(|| panic!("member {key} missing in {v:?}"))
}

fn info(card: &mut VirtualCard) -> Value {
    ctap(card, 0x04, None).unwrap()
}

fn option(info: &Value, name: &str) -> Option<bool> {
    MapRef::new(get(info, 4)).unwrap().bool_text(name).unwrap()
}

fn shared(card: &mut VirtualCard, p: PinProtocol) -> (SharedSecret, Value) {
    let ka = ctap(card, 0x06, Some(int_map([(1, int(p.number() as i64)), (2, int(2))]))).unwrap();
    let me = KeyPair::generate();
    (me.agree(p, get(&ka, 1)).unwrap(), me.public_cose())
}

fn set_pin(card: &mut VirtualCard, p: PinProtocol, pin: &str) -> Result<Value, u8> {
    let (s, cose) = shared(card, p);
    let enc = s.encrypt_pin(pin).unwrap();
    let param = s.authenticate(&enc);
    ctap(
        card,
        0x06,
        Some(int_map([
            (1, int(p.number() as i64)),
            (2, int(3)),
            (3, cose),
            (4, Value::Bytes(param)),
            (5, Value::Bytes(enc)),
        ])),
    )
}

fn change_pin(card: &mut VirtualCard, p: PinProtocol, old: &str, new: &str) -> Result<Value, u8> {
    let (s, cose) = shared(card, p);
    let new_enc = s.encrypt_pin(new).unwrap();
    let hash_enc = s.encrypt_pin_hash(old).unwrap();
    let param = s.authenticate(&[new_enc.as_slice(), &hash_enc].concat());
    ctap(
        card,
        0x06,
        Some(int_map([
            (1, int(p.number() as i64)),
            (2, int(4)),
            (3, cose),
            (4, Value::Bytes(param)),
            (5, Value::Bytes(new_enc)),
            (6, Value::Bytes(hash_enc)),
        ])),
    )
}

/// getPinUvAuthTokenUsingPinWithPermissions (or getPinToken when `permissions` is `None`).
fn token(
    card: &mut VirtualCard,
    p: PinProtocol,
    pin: &str,
    permissions: Option<u8>,
    rp: Option<&str>,
) -> Result<Vec<u8>, u8> {
    let (s, cose) = shared(card, p);
    let mut m = vec![
        (1, int(p.number() as i64)),
        (2, int(if permissions.is_some() { 9 } else { 5 })),
        (3, cose),
        (6, Value::Bytes(s.encrypt_pin_hash(pin).unwrap())),
    ];
    if let Some(perm) = permissions {
        m.push((9, int(i64::from(perm))));
    }
    if let Some(rp) = rp {
        m.push((10, Value::Text(rp.into())));
    }
    let r = ctap(card, 0x06, Some(int_map(m)))?;
    let t = s.decrypt(get(&r, 2).as_bytes().unwrap()).unwrap();
    assert_eq!(t.len(), 32);
    Ok(t.to_vec())
}

fn retries(card: &mut VirtualCard) -> (i128, bool) {
    let r = ctap(card, 0x06, Some(int_map([(1, int(2)), (2, int(1))]))).unwrap();
    let n = match get(&r, 3) {
        Value::Integer(i) => i128::from(*i),
        other => panic!("{other:?}"),
    };
    (n, get(&r, 4) == &Value::Bool(true))
}

fn make_credential(
    card: &mut VirtualCard,
    rp: &str,
    user: &[u8],
    rk: bool,
    auth: Option<(PinProtocol, &[u8])>,
    exclude: &[Vec<u8>],
) -> Result<Value, u8> {
    let cdh = Sha256::digest(b"client data").to_vec();
    let mut m = vec![
        (1, Value::Bytes(cdh.clone())),
        (2, text_map([("id", Value::Text(rp.into())), ("name", Value::Text("Relying Party".into()))])),
        (
            3,
            text_map([
                ("id", Value::Bytes(user.to_vec())),
                ("name", Value::Text("alice".into())),
                ("displayName", Value::Text("Alice".into())),
            ]),
        ),
        (4, Value::Array(vec![text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])])),
        (7, text_map([("rk", Value::Bool(rk))])),
    ];
    if !exclude.is_empty() {
        m.push((
            5,
            Value::Array(
                exclude
                    .iter()
                    .map(|id| {
                        text_map([
                            ("id", Value::Bytes(id.clone())),
                            ("type", Value::Text("public-key".into())),
                        ])
                    })
                    .collect(),
            ),
        ));
    }
    if let Some((p, t)) = auth {
        m.push((8, Value::Bytes(pin_protocol::authenticate(p, t, &cdh))));
        m.push((9, int(p.number() as i64)));
    }
    ctap(card, 0x01, Some(int_map(m)))
}

/// Credential ID and public key from makeCredential's authenticator data.
fn credential_of(att: &Value) -> (Vec<u8>, VerifyingKey, u8) {
    let ad = get(att, 2).as_bytes().unwrap();
    let flags = ad[32];
    let len = usize::from(u16::from_be_bytes([ad[53], ad[54]]));
    let id = ad[55..55 + len].to_vec();
    let key = cbor::decode(&ad[55 + len..]).map(|k| {
        let m = MapRef::new(&k).unwrap();
        let mut point = vec![0x04];
        point.extend_from_slice(m.bytes(-2).unwrap().unwrap());
        point.extend_from_slice(m.bytes(-3).unwrap().unwrap());
        VerifyingKey::from_sec1_bytes(&point).unwrap()
    });
    (id, key.expect("the authenticator data ends with the COSE key"), flags)
}

fn get_assertion(
    card: &mut VirtualCard,
    rp: &str,
    allow: &[Vec<u8>],
    auth: Option<(PinProtocol, &[u8])>,
) -> Result<Value, u8> {
    let cdh = Sha256::digest(b"assertion client data").to_vec();
    let mut m = vec![(1, Value::Text(rp.into())), (2, Value::Bytes(cdh.clone()))];
    if !allow.is_empty() {
        m.push((
            3,
            Value::Array(
                allow
                    .iter()
                    .map(|id| {
                        text_map([
                            ("id", Value::Bytes(id.clone())),
                            ("type", Value::Text("public-key".into())),
                        ])
                    })
                    .collect(),
            ),
        ));
    }
    if let Some((p, t)) = auth {
        m.push((6, Value::Bytes(pin_protocol::authenticate(p, t, &cdh))));
        m.push((7, int(p.number() as i64)));
    }
    ctap(card, 0x02, Some(int_map(m)))
}

fn verify_assertion(a: &Value, key: &VerifyingKey) -> (u8, u32) {
    let cdh = Sha256::digest(b"assertion client data");
    let ad = get(a, 2).as_bytes().unwrap();
    let sig = DerSignature::try_from(get(a, 3).as_bytes().unwrap().as_slice()).unwrap();
    key.verify(&[ad.as_slice(), &cdh].concat(), &sig).expect("the assertion signature verifies");
    (ad[32], u32::from_be_bytes([ad[33], ad[34], ad[35], ad[36]]))
}

#[test]
fn select_beside_piv_and_get_info() {
    let (mut card, _dir) = new_card();
    select_fido(&mut card);
    let i = info(&mut card);
    assert_eq!(
        get(&i, 1),
        &Value::Array(vec![Value::Text("FIDO_2_0".into()), Value::Text("FIDO_2_1".into())])
    );
    assert_eq!(get(&i, 3).as_bytes().unwrap().as_slice(), &lanyard_vcard::attestation::FIDO_AAGUID);
    assert_eq!(option(&i, "clientPin"), Some(false));
    assert_eq!(option(&i, "uv"), None, "no built-in user verification");
    assert_eq!(option(&i, "credMgmt"), Some(true));
    assert_eq!(option(&i, "setMinPINLength"), Some(true));
    assert_eq!(get(&i, 6), &Value::Array(vec![int(2), int(1)]));
    assert_eq!(get(&i, 13), &int(4));
    assert_eq!(get(&i, 12), &Value::Bool(false));
    // PIV and the management application still answer after the FIDO application.
    let (piv, sw) = apdu(&mut card, &[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
    assert_eq!(sw, 0x9000);
    assert_eq!(piv[0], 0x61);
    assert_eq!(apdu(&mut card, &[0x00, 0xFD, 0x00, 0x00]).0, vec![5, 7, 2]);
    let mgmt = vec![0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];
    assert_eq!(apdu(&mut card, &mgmt).1, 0x9000);
    let (cfg, sw) = apdu(&mut card, &[0x00, 0x1D, 0x00, 0x00, 0x00]);
    assert_eq!(sw, 0x9000);
    // Supported and enabled over USB (01, 03) and NFC (0D, 0E): PIV and FIDO2.
    for tag in [0x01u8, 0x03, 0x0D, 0x0E] {
        let at = cfg.windows(4).position(|w| w == [tag, 2, 0x02, 0x10]);
        assert!(at.is_some(), "tag {tag:02X} lacks PIV|FIDO2 in {}", hex::encode(&cfg));
    }
    // CTAP commands are refused outside the FIDO application.
    assert_eq!(apdu(&mut card, &[0x80, 0x10, 0x00, 0x00, 0x01, 0x04]).1, 0x6E00);
}

#[test]
fn framing_chaining_get_response_and_keepalive() {
    let (mut card, _dir) = new_card();
    select_fido(&mut card);
    // A getInfo chained one byte at a time is the same request.
    let whole = exchange(&mut card, &[0x04], 250, 0x00);
    // A long request chained in small blocks, with GET RESPONSE under CLA 80.
    set_pin(&mut card, PinProtocol::Two, "1234").unwrap();
    let t = token(&mut card, PinProtocol::Two, "1234", Some(0x01), Some("example.org")).unwrap();
    let cdh = Sha256::digest(b"client data").to_vec();
    let param = pin_protocol::authenticate(PinProtocol::Two, &t, &cdh);
    let req = int_map([
        (1, Value::Bytes(cdh)),
        (2, text_map([("id", Value::Text("example.org".into()))])),
        (3, text_map([("id", Value::Bytes(vec![1; 16])), ("name", Value::Text("x".repeat(200)))])),
        (4, Value::Array(vec![text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])])),
        (8, Value::Bytes(param)),
        (9, int(2)),
    ]);
    let mut raw = vec![0x01];
    raw.extend_from_slice(&cbor::encode(&req));
    assert!(raw.len() > 250);
    let resp = exchange(&mut card, &raw, 40, 0x80);
    assert_eq!(resp[0], 0, "makeCredential answered {:02X}", resp[0]);
    assert!(resp.len() > 256, "the attestation needs GET RESPONSE");
    assert_eq!(whole[0], 0);

    // P1 80: makeCredential is answered 9100 once, then polled; cancel leaves no trace.
    let t = token(&mut card, PinProtocol::Two, "1234", Some(0x01), Some("example.org")).unwrap();
    let cdh = Sha256::digest(b"client data").to_vec();
    let req = int_map([
        (1, Value::Bytes(cdh.clone())),
        (2, text_map([("id", Value::Text("example.org".into()))])),
        (3, text_map([("id", Value::Bytes(vec![2; 16]))])),
        (4, Value::Array(vec![text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])])),
        (7, text_map([("rk", Value::Bool(true))])),
        (8, Value::Bytes(pin_protocol::authenticate(PinProtocol::Two, &t, &cdh))),
        (9, int(2)),
    ]);
    let mut raw = vec![0x01];
    raw.extend_from_slice(&cbor::encode(&req));
    let mut cmd = vec![0x80, 0x10, 0x80, 0x00, raw.len() as u8];
    cmd.extend_from_slice(&raw);
    let count_before = card.image().fido.as_ref().unwrap().sign_count;
    assert_eq!(apdu(&mut card, &cmd), (vec![0x01], 0x9100));
    assert_eq!(apdu(&mut card, &[0x80, 0x11, 0x11, 0x00]), (vec![status::KEEPALIVE_CANCEL], 0x9000));
    assert_eq!(card.image().fido.as_ref().unwrap().sign_count, count_before, "cancel ran nothing");
    assert!(card.image().fido.as_ref().unwrap().credentials.is_empty());
    assert_eq!(apdu(&mut card, &[0x80, 0x11, 0x00, 0x00]).1, 0x6985, "nothing to poll");
    assert_eq!(apdu(&mut card, &cmd), (vec![0x01], 0x9100));
    let (mut data, mut sw) = apdu(&mut card, &[0x80, 0x11, 0x00, 0x00, 0x00]);
    while sw >> 8 == 0x61 {
        let (more, next) = apdu(&mut card, &[0x00, 0xC0, 0x00, 0x00, sw as u8]);
        data.extend_from_slice(&more);
        sw = next;
    }
    assert_eq!((data[0], sw), (0, 0x9000));
    assert_eq!(card.image().fido.as_ref().unwrap().credentials.len(), 1);
    // Malformed NFC commands get ISO errors, and bytes that are no CBOR a CTAP error.
    assert_eq!(apdu(&mut card, &[0x80, 0x10, 0x01, 0x00, 0x01, 0x04]).1, 0x6A86);
    assert_eq!(apdu(&mut card, &[0x80, 0x12, 0x00, 0x00]).1, 0x6D00);
    assert_eq!(exchange(&mut card, &[0x06, 0xFF], 250, 0), vec![status::INVALID_CBOR]);
}

#[test]
fn pin_set_change_retries_and_blocking() {
    let (mut card, _dir) = new_card();
    select_fido(&mut card);
    // Too short (code points, not bytes: "äöü" is six bytes and three code points).
    assert_eq!(set_pin(&mut card, PinProtocol::Two, "äöü"), Err(status::PIN_POLICY_VIOLATION));
    set_pin(&mut card, PinProtocol::One, "äöüß").unwrap();
    assert_eq!(set_pin(&mut card, PinProtocol::Two, "5678"), Err(status::NOT_ALLOWED));
    assert_eq!(option(&info(&mut card), "clientPin"), Some(true));
    assert_eq!(retries(&mut card), (8, false));
    for p in [PinProtocol::One, PinProtocol::Two] {
        token(&mut card, p, "äöüß", None, None).unwrap();
        token(&mut card, p, "äöüß", Some(0x03), Some("example.org")).unwrap();
    }
    assert_eq!(
        token(&mut card, PinProtocol::Two, "äöüß", Some(0x08), None),
        Err(status::UNAUTHORIZED_PERMISSION)
    );
    assert_eq!(token(&mut card, PinProtocol::Two, "äöüß", Some(0), None), Err(status::INVALID_PARAMETER));
    // Three wrong in a row: blocked until a power cycle; the counter keeps counting down.
    assert_eq!(token(&mut card, PinProtocol::Two, "0000", None, None), Err(status::PIN_INVALID));
    assert_eq!(token(&mut card, PinProtocol::Two, "0000", None, None), Err(status::PIN_INVALID));
    assert_eq!(token(&mut card, PinProtocol::Two, "0000", None, None), Err(status::PIN_AUTH_BLOCKED));
    assert_eq!(retries(&mut card), (5, true));
    assert_eq!(token(&mut card, PinProtocol::Two, "äöüß", None, None), Err(status::PIN_AUTH_BLOCKED));
    card.reset_session();
    select_fido(&mut card);
    assert_eq!(retries(&mut card), (5, false));
    token(&mut card, PinProtocol::Two, "äöüß", None, None).unwrap();
    assert_eq!(retries(&mut card), (8, false), "a right PIN restores the tries");
    // changePIN: a wrong current PIN counts; the new PIN works, the old does not.
    assert_eq!(change_pin(&mut card, PinProtocol::Two, "9999", "abcdef"), Err(status::PIN_INVALID));
    change_pin(&mut card, PinProtocol::Two, "äöüß", "abcdef").unwrap();
    assert_eq!(token(&mut card, PinProtocol::One, "äöüß", None, None), Err(status::PIN_INVALID));
    token(&mut card, PinProtocol::One, "abcdef", None, None).unwrap();
    // Eight wrong PINs (with power cycles between) block it for good; only Reset recovers.
    for i in 0..8 {
        if i % 3 == 0 {
            card.reset_session();
            select_fido(&mut card);
        }
        let r = token(&mut card, PinProtocol::Two, "wrong", None, None);
        assert!(
            matches!(r, Err(status::PIN_INVALID | status::PIN_AUTH_BLOCKED | status::PIN_BLOCKED)),
            "{r:?}"
        );
    }
    card.reset_session();
    select_fido(&mut card);
    assert_eq!(retries(&mut card).0, 0);
    assert_eq!(token(&mut card, PinProtocol::Two, "abcdef", None, None), Err(status::PIN_BLOCKED));
    ctap(&mut card, 0x07, None).unwrap();
    assert_eq!(option(&info(&mut card), "clientPin"), Some(false));
    assert_eq!(retries(&mut card), (8, false));
}

fn config_set_min(
    card: &mut VirtualCard,
    token: Option<&[u8]>,
    min: Option<i64>,
    force: bool,
) -> Result<Value, u8> {
    let mut params = vec![(3, Value::Bool(force))];
    if let Some(m) = min {
        params.push((1, int(m)));
    }
    let params = int_map(params);
    let mut m = vec![(1, int(3)), (2, params.clone())];
    if let Some(t) = token {
        let mut msg = vec![0xFF; 32];
        msg.extend_from_slice(&[0x0D, 0x03]);
        msg.extend_from_slice(&cbor::encode(&params));
        m.push((3, int(2)));
        m.push((4, Value::Bytes(pin_protocol::authenticate(PinProtocol::Two, t, &msg))));
    }
    ctap(card, 0x0D, Some(int_map(m)))
}

#[test]
fn min_pin_length_and_forced_change() {
    let (mut card, _dir) = new_card();
    select_fido(&mut card);
    // Before a PIN exists the configuration needs no token; forcing a change needs a PIN.
    config_set_min(&mut card, None, Some(6), false).unwrap();
    assert_eq!(config_set_min(&mut card, None, None, true), Err(status::PIN_NOT_SET));
    assert_eq!(get(&info(&mut card), 13), &int(6));
    assert_eq!(set_pin(&mut card, PinProtocol::Two, "12345"), Err(status::PIN_POLICY_VIOLATION));
    set_pin(&mut card, PinProtocol::Two, "123456").unwrap();
    // Now it needs a token with acfg.
    assert_eq!(config_set_min(&mut card, None, Some(8), false), Err(status::PUAT_REQUIRED));
    let mc_only = token(&mut card, PinProtocol::Two, "123456", Some(0x01), None).unwrap();
    assert_eq!(config_set_min(&mut card, Some(&mc_only), Some(8), false), Err(status::PIN_AUTH_INVALID));
    let t = token(&mut card, PinProtocol::Two, "123456", Some(0x20), None).unwrap();
    // Never lower.
    assert_eq!(config_set_min(&mut card, Some(&t), Some(5), false), Err(status::PIN_POLICY_VIOLATION));
    config_set_min(&mut card, Some(&t), Some(6), true).unwrap();
    let i = info(&mut card);
    assert_eq!((get(&i, 13), get(&i, 12)), (&int(6), &Value::Bool(true)));
    // The token died with the forced change, and no new one is given until the PIN changes.
    assert_eq!(config_set_min(&mut card, Some(&t), Some(8), false), Err(status::PIN_AUTH_INVALID));
    assert_eq!(
        token(&mut card, PinProtocol::Two, "123456", Some(0x20), None),
        Err(status::PIN_POLICY_VIOLATION)
    );
    assert_eq!(token(&mut card, PinProtocol::One, "123456", None, None), Err(status::PIN_POLICY_VIOLATION));
    assert_eq!(
        change_pin(&mut card, PinProtocol::Two, "123456", "123456"),
        Err(status::PIN_POLICY_VIOLATION),
        "the same PIN is refused"
    );
    change_pin(&mut card, PinProtocol::Two, "123456", "7654321").unwrap();
    assert_eq!(get(&info(&mut card), 12), &Value::Bool(false));
    let t = token(&mut card, PinProtocol::Two, "7654321", Some(0x20), None).unwrap();
    // A minimum above the current PIN's length forces a change too.
    config_set_min(&mut card, Some(&t), Some(8), false).unwrap();
    assert_eq!(get(&info(&mut card), 12), &Value::Bool(true));
    assert_eq!(
        change_pin(&mut card, PinProtocol::Two, "7654321", "1234567"),
        Err(status::PIN_POLICY_VIOLATION)
    );
    change_pin(&mut card, PinProtocol::Two, "7654321", "12345678").unwrap();
    token(&mut card, PinProtocol::Two, "12345678", Some(0x20), None).unwrap();
}

#[test]
fn credentials_assertions_and_management() {
    let (mut card, _dir) = new_card();
    select_fido(&mut card);
    // No PIN: a non-resident credential needs none; ES256 only.
    let att = make_credential(&mut card, "example.org", b"user-1", false, None, &[]).unwrap();
    assert_eq!(get(&att, 1), &Value::Text("packed".into()));
    let (nr_id, nr_key, flags) = credential_of(&att);
    assert_eq!(flags & 0x45, 0x41, "UP and AT, no UV without a PIN token");
    // The packed statement verifies with the certificate in x5c, which names the AAGUID.
    let stmt = get(&att, 3);
    let x5c = MapRef::new(stmt).unwrap().get_text("x5c").unwrap().as_array().unwrap()[0]
        .as_bytes()
        .unwrap()
        .clone();
    let cert = <x509_cert::Certificate as der::Decode>::from_der(&x5c).unwrap();
    let att_key = VerifyingKey::from_sec1_bytes(
        cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes(),
    )
    .unwrap();
    let sig = DerSignature::try_from(
        MapRef::new(stmt).unwrap().get_text("sig").unwrap().as_bytes().unwrap().as_slice(),
    )
    .unwrap();
    let cdh = Sha256::digest(b"client data");
    att_key.verify(&[get(&att, 2).as_bytes().unwrap().as_slice(), &cdh].concat(), &sig).unwrap();
    assert!(cert.tbs_certificate.subject.to_string().contains("OU=Authenticator Attestation"));
    let eddsa = int_map([
        (1, Value::Bytes(vec![0; 32])),
        (2, text_map([("id", Value::Text("example.org".into()))])),
        (3, text_map([("id", Value::Bytes(vec![1]))])),
        (4, Value::Array(vec![text_map([("alg", int(-8)), ("type", Value::Text("public-key".into()))])])),
    ]);
    assert_eq!(ctap(&mut card, 0x01, Some(eddsa)), Err(status::UNSUPPORTED_ALGORITHM));

    set_pin(&mut card, PinProtocol::Two, "246810").unwrap();
    // A discoverable credential now needs the PIN token.
    assert_eq!(
        make_credential(&mut card, "example.org", b"user-2", true, None, &[]),
        Err(status::PUAT_REQUIRED)
    );
    let t = token(&mut card, PinProtocol::Two, "246810", Some(0x01), Some("example.org")).unwrap();
    assert_eq!(
        make_credential(
            &mut card,
            "example.org",
            b"user-2",
            true,
            Some((PinProtocol::Two, &t)),
            std::slice::from_ref(&nr_id)
        ),
        Err(status::CREDENTIAL_EXCLUDED)
    );
    let t = token(&mut card, PinProtocol::Two, "246810", Some(0x01), Some("other.example")).unwrap();
    assert_eq!(
        make_credential(&mut card, "example.org", b"user-2", true, Some((PinProtocol::Two, &t)), &[]),
        Err(status::PIN_AUTH_INVALID),
        "a token bound to another RP"
    );
    let mut ids = Vec::new();
    for user in [b"user-2".as_slice(), b"user-3"] {
        let t = token(&mut card, PinProtocol::Two, "246810", Some(0x01), Some("example.org")).unwrap();
        let att =
            make_credential(&mut card, "example.org", user, true, Some((PinProtocol::Two, &t)), &[]).unwrap();
        let (id, key, flags) = credential_of(&att);
        assert_eq!(flags & 0x05, 0x05, "UP and UV");
        // The token lost its permissions with the use.
        assert_eq!(
            make_credential(&mut card, "example.org", b"user-9", true, Some((PinProtocol::Two, &t)), &[]),
            Err(status::PIN_AUTH_INVALID)
        );
        ids.push((id, key));
    }
    // Discoverable: newest first, numberOfCredentials, then getNextAssertion.
    let t = token(&mut card, PinProtocol::Two, "246810", Some(0x02), None).unwrap();
    let a = get_assertion(&mut card, "example.org", &[], Some((PinProtocol::Two, &t))).unwrap();
    assert_eq!(get(&a, 5), &int(2));
    let id_of =
        |a: &Value| MapRef::new(get(a, 1)).unwrap().get_text("id").unwrap().as_bytes().unwrap().clone();
    assert_eq!(id_of(&a), ids[1].0);
    let (flags, c1) = verify_assertion(&a, &ids[1].1);
    assert_eq!(flags & 0x05, 0x05);
    let user = MapRef::new(get(&a, 4)).unwrap();
    assert_eq!(user.get_text("name"), Some(&Value::Text("alice".into())), "names only after UV");
    let next = ctap(&mut card, 0x08, None).unwrap();
    assert_eq!(id_of(&next), ids[0].0);
    let (_, c2) = verify_assertion(&next, &ids[0].1);
    assert!(c2 > c1, "the counter rises");
    assert_eq!(ctap(&mut card, 0x08, None), Err(status::NOT_ALLOWED));
    // The non-resident credential by allow list, without UV; another RP's ID is no match.
    let a = get_assertion(&mut card, "example.org", std::slice::from_ref(&nr_id), None).unwrap();
    let (flags, _) = verify_assertion(&a, &nr_key);
    assert_eq!(flags & 0x05, 0x01, "UP without UV");
    assert_eq!(
        get_assertion(&mut card, "example.com", std::slice::from_ref(&nr_id), None),
        Err(status::NO_CREDENTIALS)
    );
    let mut forged = nr_id.clone();
    forged[40] ^= 1;
    assert_eq!(get_assertion(&mut card, "example.org", &[forged], None), Err(status::NO_CREDENTIALS));

    // Credential management: metadata, enumerate, delete.
    let cm = |card: &mut VirtualCard, t: &[u8], sub: i64, params: Option<Value>| {
        let mut msg = vec![sub as u8];
        let mut m = vec![(1, int(sub)), (3, int(2))];
        if let Some(p) = params {
            msg.extend_from_slice(&cbor::encode(&p));
            m.push((2, p));
        }
        m.push((4, Value::Bytes(pin_protocol::authenticate(PinProtocol::Two, t, &msg))));
        ctap(card, 0x0A, Some(int_map(m)))
    };
    let t = token(&mut card, PinProtocol::Two, "246810", Some(0x04), None).unwrap();
    let meta = cm(&mut card, &t, 1, None).unwrap();
    assert_eq!((get(&meta, 1), get(&meta, 2)), (&int(2), &int(98)));
    let rps = cm(&mut card, &t, 2, None).unwrap();
    assert_eq!(get(&rps, 5), &int(1));
    let hash = get(&rps, 4).clone();
    let first = cm(&mut card, &t, 4, Some(int_map([(1, hash.clone())]))).unwrap();
    assert_eq!(get(&first, 9), &int(2));
    let second = ctap(&mut card, 0x0A, Some(int_map([(1, int(5))]))).unwrap();
    let cred_id =
        |v: &Value| MapRef::new(get(v, 7)).unwrap().get_text("id").unwrap().as_bytes().unwrap().clone();
    assert_eq!(vec![cred_id(&first), cred_id(&second)], vec![ids[0].0.clone(), ids[1].0.clone()]);
    let descriptor =
        text_map([("id", Value::Bytes(ids[0].0.clone())), ("type", Value::Text("public-key".into()))]);
    cm(&mut card, &t, 6, Some(int_map([(2, descriptor.clone())]))).unwrap();
    assert_eq!(cm(&mut card, &t, 6, Some(int_map([(2, descriptor)]))), Err(status::NO_CREDENTIALS));
    // A deleted discoverable credential is gone even by its ID.
    let t = token(&mut card, PinProtocol::Two, "246810", Some(0x02), None).unwrap();
    assert_eq!(
        get_assertion(&mut card, "example.org", &[ids[0].0.clone()], Some((PinProtocol::Two, &t))),
        Err(status::NO_CREDENTIALS)
    );
    // A management token without cm permission is refused.
    let t = token(&mut card, PinProtocol::Two, "246810", Some(0x02), None).unwrap();
    assert_eq!(cm(&mut card, &t, 1, None), Err(status::PIN_AUTH_INVALID));
    // Reset: every credential is gone, also the non-resident one.
    ctap(&mut card, 0x07, None).unwrap();
    assert_eq!(get_assertion(&mut card, "example.org", &[nr_id], None), Err(status::NO_CREDENTIALS));
}

#[test]
fn state_survives_in_the_image_and_old_images_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    assert!(root.fido_certificate_pem_path().exists(), "the FIDO root is exported beside the PIV root");
    let img = VirtualCard::new_image(&root, &NewCard::default(), SystemTime::now()).unwrap();
    let path = dir.path().join("card.json");
    img.save(&path).unwrap();
    {
        let mut card = VirtualCard::open(&path).unwrap();
        select_fido(&mut card);
        set_pin(&mut card, PinProtocol::Two, "13579").unwrap();
        let t = token(&mut card, PinProtocol::Two, "13579", Some(0x01), None).unwrap();
        make_credential(&mut card, "example.net", b"u", true, Some((PinProtocol::Two, &t)), &[]).unwrap();
    }
    let mut card = VirtualCard::open(&path).unwrap();
    select_fido(&mut card);
    assert_eq!(option(&info(&mut card), "clientPin"), Some(true));
    let t = token(&mut card, PinProtocol::Two, "13579", Some(0x02), None).unwrap();
    get_assertion(&mut card, "example.net", &[], Some((PinProtocol::Two, &t))).unwrap();
    // A format-1 image (before FIDO) still opens; it has no FIDO application.
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["format"] = 1.into();
    json.as_object_mut().unwrap().remove("fido");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let old = CardImage::load(&path).unwrap();
    let mut card = VirtualCard::from_image(old).unwrap();
    let mut cmd = vec![0x00, 0xA4, 0x04, 0x00, 0x08];
    cmd.extend_from_slice(&FIDO_AID);
    assert_eq!(apdu(&mut card, &cmd).1, 0x6A82);
}

/// `NewCard::fido` makes a key that offers less, for clients' tests: protocol 1 only and no
/// authenticatorConfig (as a CTAP 2.0 key). getInfo says so, the card refuses what it does not
/// offer, and the options survive authenticatorReset and the image. Options the authenticator
/// cannot honour are refused; an image from before the options offers everything.
#[test]
fn fido_options_make_a_key_that_offers_less() {
    use lanyard_vcard::FidoOptions;
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    let less = FidoOptions { pin_protocols: vec![1], config: false };
    let opts = NewCard { fido: less.clone(), ..NewCard::default() };
    let img = VirtualCard::new_image(&root, &opts, SystemTime::now()).unwrap();
    let path = dir.path().join("card.json");
    img.save(&path).unwrap();
    let check = |card: &mut VirtualCard| {
        select_fido(card);
        let i = info(card);
        assert_eq!(get(&i, 6), &Value::Array(vec![int(1)]), "pinUvAuthProtocols");
        assert_eq!(option(&i, "authnrCfg"), None);
        assert_eq!(option(&i, "setMinPINLength"), None);
        assert_eq!(option(&i, "clientPin"), Some(false));
        let ka = |p: i64| int_map([(1, int(p)), (2, int(2))]);
        assert_eq!(ctap(card, 0x06, Some(ka(2))).unwrap_err(), status::INVALID_PARAMETER);
        assert!(ctap(card, 0x06, Some(ka(1))).is_ok());
        assert_eq!(config_set_min(card, None, Some(8), false).unwrap_err(), status::INVALID_COMMAND);
        // A PIN and a token through protocol 1.
        set_pin(card, PinProtocol::One, "24680").unwrap();
        token(card, PinProtocol::One, "24680", None, None).unwrap();
    };
    let mut card = VirtualCard::open(&path).unwrap();
    check(&mut card);
    // authenticatorReset keeps what the key offers.
    ctap(&mut card, 0x07, None).unwrap();
    check(&mut card);
    assert_eq!(card.image().fido.as_ref().unwrap().options, less);
    drop(card);
    // Saved in the image.
    let mut card = VirtualCard::open(&path).unwrap();
    select_fido(&mut card);
    assert_eq!(option(&info(&mut card), "clientPin"), Some(true));
    assert_eq!(card.image().fido.as_ref().unwrap().options, less);

    // Protocols the authenticator does not have, none, or one twice: refused when the card is
    // made, and when an image holds them.
    for bad in [vec![], vec![3], vec![2, 2], vec![1, 2, 1]] {
        let opts =
            NewCard { fido: FidoOptions { pin_protocols: bad.clone(), config: true }, ..NewCard::default() };
        let e = VirtualCard::new_image(&root, &opts, SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("one or both of 1 and 2"), "{bad:?}: {e}");
        let mut img = VirtualCard::new_image(&root, &NewCard::default(), SystemTime::now()).unwrap();
        img.fido.as_mut().unwrap().options.pin_protocols = bad.clone();
        let e = VirtualCard::from_image(img).unwrap_err();
        assert!(e.to_string().contains("one or both of 1 and 2"), "{bad:?}: {e}");
    }

    // An image from before the options: everything offered.
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["fido"].as_object_mut().unwrap().remove("options").unwrap();
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let mut card = VirtualCard::open(&path).unwrap();
    assert_eq!(card.image().fido.as_ref().unwrap().options, FidoOptions::default());
    select_fido(&mut card);
    let i = info(&mut card);
    assert_eq!(get(&i, 6), &Value::Array(vec![int(2), int(1)]));
    assert_eq!(option(&i, "setMinPINLength"), Some(true));
}

/// Requests the fuzzer also feeds: a valid command byte with random or mutated CBOR.
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn template() -> &'static CardImage {
        static IMG: OnceLock<CardImage> = OnceLock::new();
        IMG.get_or_init(|| {
            let (mut card, _dir) = new_card();
            select_fido(&mut card);
            set_pin(&mut card, PinProtocol::Two, "2468").unwrap();
            let t = token(&mut card, PinProtocol::Two, "2468", Some(0x01), None).unwrap();
            make_credential(&mut card, "example.org", b"u", true, Some((PinProtocol::Two, &t)), &[]).unwrap();
            card.image().clone()
        })
    }

    fn valid_requests() -> Vec<Vec<u8>> {
        let cdh = Value::Bytes(vec![7; 32]);
        let mc = int_map([
            (1, cdh.clone()),
            (2, text_map([("id", Value::Text("example.org".into()))])),
            (3, text_map([("id", Value::Bytes(vec![1, 2, 3]))])),
            (4, Value::Array(vec![text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])])),
            (7, text_map([("rk", Value::Bool(false))])),
        ]);
        let ga = int_map([(1, Value::Text("example.org".into())), (2, cdh)]);
        let pin = int_map([(1, int(2)), (2, int(1))]);
        let cfg = int_map([(1, int(3)), (2, int_map([(1, int(8))]))]);
        let cm = int_map([(1, int(1)), (3, int(2)), (4, Value::Bytes(vec![0; 32]))]);
        [(0x01, mc), (0x02, ga), (0x06, pin), (0x0D, cfg), (0x0A, cm)]
            .into_iter()
            .map(|(c, v)| [vec![c], cbor::encode(&v)].concat())
            .collect()
    }

    fn check(request: &[u8]) -> Result<(), TestCaseError> {
        let mut card = VirtualCard::from_image(template().clone()).unwrap();
        let before = card.image().fido.clone().unwrap();
        let auth = card.fido().unwrap();
        let resp = auth.process(request);
        let after = auth.state().clone();
        prop_assert!(!resp.is_empty());
        if resp[0] != 0 {
            prop_assert_eq!(resp.len(), 1, "an error carries no data");
            prop_assert_eq!(&after.pin, &before.pin);
            prop_assert_eq!(&after.credentials, &before.credentials);
            prop_assert_eq!(after.min_pin_length, before.min_pin_length);
        } else if resp.len() > 1 {
            let v = cbor::decode(&resp[1..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(cbor::encode(&v), resp[1..].to_vec());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn random_requests_never_panic_nor_change_secrets(
            command in prop::sample::select(vec![0x01u8, 0x02, 0x04, 0x06, 0x07, 0x08, 0x0A, 0x0B, 0x0D, 0x41]),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            check(&[vec![command], body].concat())?;
        }

        #[test]
        fn mutated_requests_never_panic_nor_change_secrets(
            which in 0usize..5,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut request = valid_requests()[which].clone();
            for (at, byte) in flips {
                let i = at.index(request.len());
                request[i] = byte;
            }
            // The command byte may become Reset, which changes everything by design.
            if request[0] != 0x07 {
                check(&request)?;
            }
        }
    }
}

/// The agent's NFC binding client (`lanyard_ctap::transport::nfc::NfcCtap`) against this card,
/// with short (chained) and extended APDUs: SELECT, getInfo, and a makeCredential long enough
/// to chain, which also goes through the 9100 keep-alive and polling.
#[test]
fn the_agents_nfc_client_talks_to_the_card() {
    use lanyard_ctap::transport::CtapTransport;
    use lanyard_ctap::transport::nfc::{ApduForm, FidoVersion, NfcCtap};
    use std::time::{Duration, Instant};
    for form in [ApduForm::Short, ApduForm::Extended] {
        let (card, _dir) = new_card();
        let mut card = Some(card);
        let exchange = |apdu: &[u8]| -> Result<Vec<u8>, String> {
            card.as_mut().map(|c| c.process(apdu)).ok_or_else(|| "no card".to_owned())
        };
        let mut client =
            NfcCtap::new(exchange, "virtual card").with_form(form).with_poll_interval(Duration::ZERO);
        assert_eq!(client.select(), Ok(FidoVersion::Fido2));
        let deadline = Instant::now() + Duration::from_secs(60);
        let info = client.ctap(&[0x04], deadline).unwrap();
        assert_eq!(info[0], 0);
        let req = int_map([
            (1, Value::Bytes(vec![3; 32])),
            (2, text_map([("id", Value::Text("example.org".into()))])),
            (3, text_map([("id", Value::Bytes(vec![1; 16])), ("displayName", Value::Text("y".repeat(300)))])),
            (4, Value::Array(vec![text_map([("alg", int(-7)), ("type", Value::Text("public-key".into()))])])),
        ]);
        let raw = [vec![0x01], cbor::encode(&req)].concat();
        assert!(raw.len() > 255);
        let att = client.ctap(&raw, deadline).unwrap();
        assert_eq!(att[0], 0, "{form:?}: makeCredential answered {:02X}", att[0]);
        let v = cbor::decode(&att[1..]).unwrap();
        assert_eq!(get(&v, 1), &Value::Text("packed".into()));
    }
}
