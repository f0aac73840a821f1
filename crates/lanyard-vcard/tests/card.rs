#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests stamp real certificates and card images with the real time.
#![allow(clippy::disallowed_methods)]
//! Conformance suite for the software PIV card: SP 800-73-4/-5 card edge plus the YubiKey
//! extensions (docs: standards.md §1). Every test drives a `VirtualCard` through the host
//! library's `Piv` client over the in-process transport, or through raw APDUs where the client
//! cannot express a malformed command, and checks status words, bytes and signatures.

use der::{Decode, Encode};
use lanyard_piv::apdu::{Command, StatusWord};
use lanyard_piv::client::{ImportKey, Piv};
use lanyard_piv::mgmkey::{DEFAULT_MANAGEMENT_KEY, ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::{Ccc, CertificateObject, Chuid, Discovery, FascN, KeyHistory, PrintedInformation};
use lanyard_piv::tlv;
use lanyard_piv::types::{KeyAlgorithm, PIV_AID, PinPolicy, PublicKey, Slot, TouchPolicy, tag};
use lanyard_piv::{InProcess, PivError};
use lanyard_vcard::card::MAX_OBJECT;
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use proptest::prelude::*;
use rand::rngs::OsRng;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Pkcs1v15Encrypt, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384};
use std::sync::OnceLock;
use std::time::SystemTime;
use x509_cert::Certificate;

type Card = Piv<InProcess<VirtualCard>>;

const PIN: &[u8] = b"123456";
const PUK: &[u8] = b"12345678";
const MSG: &[u8] = b"Lanyard conformance suite: the quick brown fox";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn image_from(root: &AttestationRoot, opts: &NewCard) -> CardImage {
    VirtualCard::new_image(root, opts, SystemTime::now()).unwrap()
}

/// A factory-new card image from a throwaway attestation root.
fn new_image(opts: &NewCard) -> CardImage {
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    image_from(&root, opts)
}

fn connect(img: CardImage) -> Card {
    Piv::new(InProcess(VirtualCard::from_image(img).unwrap()))
}

fn fresh() -> Card {
    connect(new_image(&NewCard::default()))
}

fn vcard(c: &mut Card) -> &mut VirtualCard {
    &mut c.transport_mut().0
}

fn factory_key() -> ManagementKey {
    ManagementKey::factory(MgmAlgorithm::TripleDes)
}

/// Sends raw bytes to the card; returns the response data and status word.
#[track_caller]
fn raw(c: &mut Card, apdu: &[u8]) -> (Vec<u8>, u16) {
    split(&vcard(c).process(apdu))
}

#[track_caller]
fn split(resp: &[u8]) -> (Vec<u8>, u16) {
    assert!(resp.len() >= 2, "response {resp:02X?} has no status word");
    let (data, sw) = resp.split_at(resp.len() - 2);
    (data.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
}

/// Builds an APDU with the client's encoder.
fn apdu(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8], le: Option<usize>) -> Vec<u8> {
    let mut cmd = Command::new(cla, ins, p1, p2).with_data(data.to_vec());
    cmd.le = le;
    cmd.to_bytes().unwrap()
}

/// The status word of a client call (`9000` for success).
#[track_caller]
fn sw_of<T>(r: &Result<T, PivError>) -> u16 {
    match r {
        Ok(_) => 0x9000,
        Err(e) => e.status().map(StatusWord::to_u16).unwrap_or_else(|| panic!("no status word: {e}")),
    }
}

#[track_caller]
fn assert_sw<T>(r: Result<T, PivError>, want: u16) {
    let got = sw_of(&r);
    assert_eq!(got, want, "expected {want:04X}, card answered {got:04X}");
}

fn pin_retries(c: &mut Card) -> (u8, u8) {
    c.get_metadata(0x80).unwrap().retries.unwrap()
}

fn puk_retries(c: &mut Card) -> (u8, u8) {
    c.get_metadata(0x81).unwrap().retries.unwrap()
}

/// The DigestInfo prefix of SHA-256 (RFC 8017 §9.2 note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0D, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0x04, 0x20,
];

/// EMSA-PKCS1-v1_5 encoding of SHA-256(msg) for a `k`-byte modulus, built by hand.
fn pkcs1_v15_block(msg: &[u8], k: usize) -> Vec<u8> {
    let mut t = SHA256_DIGEST_INFO.to_vec();
    t.extend_from_slice(&Sha256::digest(msg));
    let mut em = vec![0xFF; k];
    em[0] = 0x00;
    em[1] = 0x01;
    em[k - t.len() - 1] = 0x00;
    em[k - t.len()..].copy_from_slice(&t);
    em
}

/// What the host sends in tag 81 to sign `msg`: a padded block for RSA, the hash for ECDSA.
fn sign_input(alg: KeyAlgorithm, msg: &[u8]) -> Vec<u8> {
    match alg {
        KeyAlgorithm::EccP256 => Sha256::digest(msg).to_vec(),
        KeyAlgorithm::EccP384 => Sha384::digest(msg).to_vec(),
        other => pkcs1_v15_block(msg, other.size_bytes()),
    }
}

fn rsa_public(pk: &PublicKey) -> RsaPublicKey {
    let PublicKey::Rsa { modulus, exponent } = pk else { panic!("not an RSA key: {pk:?}") };
    RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from_bytes_be(exponent)).unwrap()
}

/// Checks `sig` over `msg` with `pk`, and that it does not verify for another message.
#[track_caller]
fn assert_signature(pk: &PublicKey, msg: &[u8], sig: &[u8]) {
    use p256::ecdsa::signature::Verifier;
    let other = [msg, b"!"].concat();
    match pk {
        PublicKey::Rsa { modulus, .. } => {
            assert_eq!(sig.len(), modulus.len());
            let key = rsa_public(pk);
            key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig).unwrap();
            assert!(key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&other), sig).is_err());
        }
        PublicKey::Ec { algorithm: KeyAlgorithm::EccP256, point } => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let sig = p256::ecdsa::Signature::from_der(sig).unwrap();
            key.verify(msg, &sig).unwrap();
            assert!(key.verify(&other, &sig).is_err());
        }
        PublicKey::Ec { algorithm: KeyAlgorithm::EccP384, point } => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let sig = p384::ecdsa::Signature::from_der(sig).unwrap();
            key.verify(msg, &sig).unwrap();
            assert!(key.verify(&other, &sig).is_err());
        }
        PublicKey::Ec { algorithm, .. } => panic!("unexpected EC algorithm {algorithm}"),
    }
}

/// Signs `MSG` in `slot` and verifies the signature with `pk`.
#[track_caller]
fn sign_verified(c: &mut Card, slot: Slot, alg: KeyAlgorithm, pk: &PublicKey) {
    let sig = c.sign(slot, alg, &sign_input(alg, MSG)).unwrap();
    assert_signature(pk, MSG, &sig);
}

fn sign_result(c: &mut Card, slot: Slot, alg: KeyAlgorithm) -> Result<Vec<u8>, PivError> {
    c.sign(slot, alg, &sign_input(alg, MSG))
}

/// GENERAL AUTHENTICATE data and response for the 9B bare challenge (`7C 02 81 00`).
fn bare_challenge(c: &mut Card, alg: u8) -> (Vec<u8>, u16) {
    raw(c, &apdu(0, 0x87, alg, 0x9B, &[0x7C, 0x02, 0x81, 0x00], Some(256)))
}

/// Whether 9B is authenticated, judged by GENERATE (which needs it) into an empty retired slot
/// with a bad mechanism: `6982` before any parsing when unauthenticated, `6A80` otherwise.
fn mgm_authenticated(c: &mut Card) -> bool {
    let (_, sw) = raw(c, &apdu(0, 0x47, 0, 0x95, &[0xAC, 0x03, 0x80, 0x01, 0xEE], Some(256)));
    match sw {
        0x6982 => false,
        0x6A80 => true,
        other => panic!("unexpected status {other:04X} from the authentication probe"),
    }
}

fn certificate_from_object(object: &[u8]) -> Certificate {
    let der = CertificateObject::decode(object).unwrap().der;
    Certificate::from_der(&der).unwrap()
}

/// Verifies that `issuer`'s P-256 key signed `cert` (ECDSA-SHA256 over the TBS DER).
#[track_caller]
fn assert_issued_by(cert: &Certificate, issuer: &Certificate) {
    use p256::ecdsa::signature::Verifier;
    assert_eq!(cert.tbs_certificate.issuer, issuer.tbs_certificate.subject);
    assert_eq!(cert.signature_algorithm.oid.to_string(), "1.2.840.10045.4.3.2");
    let tbs = cert.tbs_certificate.to_der().unwrap();
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(
        issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes(),
    )
    .unwrap();
    let sig = p256::ecdsa::Signature::from_der(cert.signature.raw_bytes()).unwrap();
    key.verify(&tbs, &sig).unwrap();
    let mut tampered = tbs.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(key.verify(&tampered, &sig).is_err());
}

fn extension<'a>(cert: &'a Certificate, oid: &str) -> &'a [u8] {
    cert.tbs_certificate
        .extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id.to_string() == oid))
        .unwrap_or_else(|| panic!("extension {oid} missing"))
        .extn_value
        .as_bytes()
}

fn rsa_import_parts(key: &RsaPrivateKey) -> [Vec<u8>; 5] {
    let half = key.size() / 2;
    let pad = |v: &BigUint| {
        let b = v.to_bytes_be();
        let mut out = vec![0u8; half - b.len()];
        out.extend_from_slice(&b);
        out
    };
    let primes = key.primes();
    [
        pad(&primes[0]),
        pad(&primes[1]),
        pad(key.dp().unwrap()),
        pad(key.dq().unwrap()),
        pad(&key.crt_coefficient().unwrap()),
    ]
}

// ---------------------------------------------------------------------------------------------
// 1. SELECT
// ---------------------------------------------------------------------------------------------

#[test]
fn select_full_and_truncated_aid_return_the_apt() {
    let mut c = fresh();
    for aid in [&PIV_AID[..], &PIV_AID[..9], &PIV_AID[..5]] {
        let (data, sw) = raw(&mut c, &apdu(0, 0xA4, 0x04, 0x00, aid, Some(256)));
        assert_eq!(sw, 0x9000, "SELECT {aid:02X?}");
        let apt = tlv::expect_single(&data, 0x61).unwrap();
        let tlvs = tlv::parse_all(apt).unwrap();
        let pix = tlv::require(&tlvs, 0x4F).unwrap();
        assert!(pix == &PIV_AID[5..] || pix == &PIV_AID[..], "4F is {pix:02X?}");
        let authority = tlv::require(&tlvs, 0x79).unwrap();
        assert_eq!(tlv::expect_single(authority, 0x4F).unwrap(), &PIV_AID[..5]);
    }
    let props = c.select().unwrap();
    for alg in [0x03, 0x07, 0x11, 0x14] {
        assert!(props.algorithms.contains(&alg), "APT lacks algorithm {alg:02X}");
    }
    // Shorter than the RID, or longer than the AID, is some other application.
    assert_eq!(raw(&mut c, &apdu(0, 0xA4, 0x04, 0x00, &PIV_AID[..4], Some(256))).1, 0x6A82);
    let long = [&PIV_AID[..], &[0x00]].concat();
    assert_eq!(raw(&mut c, &apdu(0, 0xA4, 0x04, 0x00, &long, Some(256))).1, 0x6A82);
}

#[test]
fn unknown_aid_is_not_found_and_keeps_the_security_state() {
    let mut c = fresh();
    c.verify_pin(PIN).unwrap();
    c.authenticate_mutual(&factory_key()).unwrap();
    // What OpenSC's other drivers probe with: MuscleCard, another applet, a CAC GET DATA.
    for aid in [&[0xA0, 0x00, 0x00, 0x00, 0x01, 0x01][..], &[0x62, 0x76, 0x01, 0xFF, 0x00, 0x00, 0x00]] {
        let (data, sw) = raw(&mut c, &apdu(0, 0xA4, 0x04, 0x00, aid, Some(256)));
        assert_eq!((data.len(), sw), (0, 0x6A82));
    }
    assert_eq!(raw(&mut c, &[0x00, 0xCA, 0xDF, 0x30, 0x00]).1, 0x6D00);
    // PIV is still selected, the PIN still verified and 9B still authenticated.
    assert_eq!(c.pin_status().unwrap(), None);
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80]).1, 0x9000);
    assert!(mgm_authenticated(&mut c));
    Discovery::decode(&c.get_data(tag::DISCOVERY).unwrap()).unwrap();
}

#[test]
fn reselect_keeps_the_security_state() {
    let mut c = fresh();
    c.select().unwrap();
    c.verify_pin(PIN).unwrap();
    c.authenticate_external(&factory_key()).unwrap();
    c.select().unwrap();
    let (_, sw) = raw(&mut c, &apdu(0, 0xA4, 0x04, 0x00, &PIV_AID[..5], Some(256)));
    assert_eq!(sw, 0x9000);
    assert_eq!(c.pin_status().unwrap(), None);
    assert!(mgm_authenticated(&mut c));
    let pk = c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
    sign_verified(&mut c, Slot::AUTHENTICATION, KeyAlgorithm::EccP256, &pk);
}

// ---------------------------------------------------------------------------------------------
// 2. PIN and PUK
// ---------------------------------------------------------------------------------------------

#[test]
fn default_pin_verifies_and_empty_verify_reports_the_status() {
    let mut c = fresh();
    // Both empty forms: 4 bytes, and 5 bytes with Lc/Le = 0 (yubico-piv-tool).
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80]), (vec![], 0x63C3));
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80, 0x00]), (vec![], 0x63C3));
    assert_eq!(c.pin_status().unwrap(), Some(3));
    let padded = [PIN, &[0xFF, 0xFF]].concat();
    assert_eq!(raw(&mut c, &apdu(0, 0x20, 0x00, 0x80, &padded, None)), (vec![], 0x9000));
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80]).1, 0x9000);
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80, 0x00]).1, 0x9000);
    assert_eq!(c.pin_status().unwrap(), None);
    // P1 = FF drops the verification and leaves the counter alone.
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0xFF, 0x80]).1, 0x9000);
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80]).1, 0x63C3);
    assert_sw(c.get_data(tag::PRINTED_INFORMATION), 0x6982);
    c.verify_pin(PIN).unwrap();
    c.reset_pin_verification().unwrap();
    assert_eq!(c.pin_status().unwrap(), Some(3));
    assert_eq!(pin_retries(&mut c), (3, 3));
}

#[test]
fn wrong_pin_counts_down_then_blocks_even_the_right_pin() {
    let mut c = fresh();
    // A correct VERIFY restores the counter.
    assert_sw(c.verify_pin(b"000000"), 0x63C2);
    c.verify_pin(PIN).unwrap();
    assert_eq!(pin_retries(&mut c), (3, 3));
    // A wrong VERIFY also drops an earlier verification.
    assert_sw(c.verify_pin(b"999999"), 0x63C2);
    assert_eq!(c.pin_status().unwrap(), Some(2));
    assert_sw(c.verify_pin(b"99999999"), 0x63C1);
    assert_sw(c.verify_pin(b"654321"), 0x63C0);
    assert_sw(c.verify_pin(PIN), 0x6983);
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80]).1, 0x6983);
    assert_sw(c.change_reference(false, PIN, b"111111"), 0x6983);
    assert_eq!(pin_retries(&mut c), (3, 0));
    assert_eq!(c.pin_status().unwrap(), Some(0));
}

#[test]
fn puk_unblocks_the_pin_and_sets_a_new_one() {
    let mut c = fresh();
    for _ in 0..3 {
        let _ = c.verify_pin(b"000000");
    }
    assert_sw(c.verify_pin(PIN), 0x6983);
    c.unblock_pin(PUK, b"24681357").unwrap();
    assert_eq!(pin_retries(&mut c), (3, 3));
    assert_eq!(puk_retries(&mut c), (3, 3));
    assert_eq!(c.get_metadata(0x80).unwrap().is_default, Some(false));
    assert_sw(c.verify_pin(PIN), 0x63C2);
    c.verify_pin(b"24681357").unwrap();
    assert_eq!(c.pin_status().unwrap(), None);
}

#[test]
fn wrong_puk_counts_down_and_blocks() {
    let mut c = fresh();
    assert_sw(c.unblock_pin(b"87654321", b"111111"), 0x63C2);
    assert_sw(c.unblock_pin(b"00000000", b"111111"), 0x63C1);
    assert_sw(c.unblock_pin(b"11111111", b"111111"), 0x63C0);
    assert_sw(c.unblock_pin(PUK, b"111111"), 0x6983);
    assert_sw(c.change_reference(true, PUK, b"22222222"), 0x6983);
    assert_eq!(puk_retries(&mut c), (3, 0));
    // The PIN itself is unaffected.
    assert_eq!(pin_retries(&mut c), (3, 3));
    c.verify_pin(PIN).unwrap();
}

#[test]
fn change_reference_data_for_pin_and_puk() {
    let mut c = fresh();
    c.change_reference(false, PIN, b"87654321").unwrap();
    assert_eq!(c.get_metadata(0x80).unwrap().is_default, Some(false));
    c.reset_pin_verification().unwrap();
    assert_sw(c.verify_pin(PIN), 0x63C2);
    c.verify_pin(b"87654321").unwrap();
    assert_eq!(pin_retries(&mut c), (3, 3));
    // A wrong current PIN consumes a try.
    assert_sw(c.change_reference(false, PIN, b"111111"), 0x63C2);
    c.verify_pin(b"87654321").unwrap();

    c.change_reference(true, PUK, b"abcdefgh").unwrap();
    assert_eq!(c.get_metadata(0x81).unwrap().is_default, Some(false));
    assert_sw(c.change_reference(true, PUK, b"12121212"), 0x63C2);
    assert_sw(c.unblock_pin(PUK, b"111111"), 0x63C1);
    c.unblock_pin(b"abcdefgh", b"135790").unwrap();
    assert_eq!(puk_retries(&mut c), (3, 3));
    c.verify_pin(b"135790").unwrap();
}

#[test]
fn malformed_new_pin_is_refused_without_using_a_try() {
    let mut c = fresh();
    for bad in [&b"12345"[..], b"12345a", b"abcdef", b"1234 6"] {
        assert_sw(c.change_reference(false, PIN, bad), 0x6A80);
        // Even with a wrong current PIN the format is checked first: no try is used.
        assert_sw(c.change_reference(false, b"000000", bad), 0x6A80);
        assert_sw(c.unblock_pin(PUK, bad), 0x6A80);
        assert_sw(c.unblock_pin(b"00000000", bad), 0x6A80);
    }
    // Digits after padding, and an all-padding value.
    let mut gap = [PIN, &[0xFF; 2]].concat();
    gap[7] = b'7';
    for new in [gap, vec![0xFF; 8]] {
        let data = [PIN, &[0xFF, 0xFF], &new[..]].concat();
        assert_eq!(raw(&mut c, &apdu(0, 0x24, 0x00, 0x80, &data, None)).1, 0x6A80);
    }
    assert_eq!(pin_retries(&mut c), (3, 3));
    assert_eq!(puk_retries(&mut c), (3, 3));
    c.verify_pin(PIN).unwrap();
}

#[test]
fn verify_with_the_wrong_data_length_is_6a80_and_uses_no_try() {
    let mut c = fresh();
    for data in [&b"1234567"[..], b"123456\xFF\xFF\xFF", b"1", &[0xFF; 16]] {
        assert_eq!(raw(&mut c, &apdu(0, 0x20, 0x00, 0x80, data, None)).1, 0x6A80);
    }
    assert_eq!(raw(&mut c, &apdu(0, 0x24, 0x00, 0x80, b"123456\xFF\xFF1234567", None)).1, 0x6A80);
    assert_eq!(raw(&mut c, &apdu(0, 0x2C, 0x00, 0x80, b"12345678123456", None)).1, 0x6A80);
    assert_eq!(pin_retries(&mut c), (3, 3));
    assert_eq!(puk_retries(&mut c), (3, 3));
    // Unknown key references and P1 values.
    let pin = b"123456\xFF\xFF";
    assert_eq!(raw(&mut c, &apdu(0, 0x20, 0x00, 0x00, pin, None)).1, 0x6A88);
    assert_eq!(raw(&mut c, &apdu(0, 0x20, 0x01, 0x80, pin, None)).1, 0x6A86);
    assert_eq!(pin_retries(&mut c), (3, 3));
}

// ---------------------------------------------------------------------------------------------
// 3. Management key
// ---------------------------------------------------------------------------------------------

#[test]
fn factory_3des_key_authenticates_mutually_and_externally() {
    let mut c = fresh();
    let m = c.get_metadata(0x9B).unwrap();
    assert_eq!(m.algorithm, Some(0x03));
    assert_eq!(m.is_default, Some(true));
    assert!(!mgm_authenticated(&mut c));
    c.authenticate_mutual(&factory_key()).unwrap();
    assert!(mgm_authenticated(&mut c));
    vcard(&mut c).reset_session();
    assert!(!mgm_authenticated(&mut c));
    c.authenticate_external(&factory_key()).unwrap();
    assert!(mgm_authenticated(&mut c));
    let pk = c.generate(Slot::CARD_AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
    sign_verified(&mut c, Slot::CARD_AUTHENTICATION, KeyAlgorithm::EccP256, &pk);
}

#[test]
fn wrong_management_key_is_refused_and_leaves_the_card_unauthenticated() {
    let wrong = ManagementKey::new(MgmAlgorithm::TripleDes, &[0x11; 24]).unwrap();
    let mut c = fresh();
    assert_sw(c.authenticate_mutual(&wrong), 0x6982);
    assert_sw(c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None), 0x6982);
    assert_sw(c.authenticate_external(&wrong), 0x6982);
    assert_sw(c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None), 0x6982);
    // A failed attempt also ends an earlier successful authentication.
    c.authenticate_mutual(&factory_key()).unwrap();
    assert_sw(c.authenticate_mutual(&wrong), 0x6982);
    assert!(!mgm_authenticated(&mut c));
    c.authenticate_external(&factory_key()).unwrap();
    assert_sw(c.authenticate_external(&wrong), 0x6982);
    assert!(!mgm_authenticated(&mut c));
    // A response without a challenge, or a second response to the same one, is refused.
    assert_eq!(
        raw(&mut c, &apdu(0, 0x87, 0x03, 0x9B, &tlv::tlv(0x7C, &tlv::tlv(0x82, &[0; 8])), None)).1,
        0x6982
    );
    let (chal, sw) = bare_challenge(&mut c, 0x03);
    assert_eq!(sw, 0x9000);
    let challenge = tlv::require(&tlv::parse_all(tlv::expect_single(&chal, 0x7C).unwrap()).unwrap(), 0x81)
        .unwrap()
        .to_vec();
    let answer = tlv::tlv(0x7C, &tlv::tlv(0x82, &factory_key().encrypt_block(&challenge).unwrap()));
    assert_eq!(raw(&mut c, &apdu(0, 0x87, 0x03, 0x9B, &answer, None)).1, 0x9000);
    assert!(mgm_authenticated(&mut c));
    vcard(&mut c).reset_session();
    assert_eq!(raw(&mut c, &apdu(0, 0x87, 0x03, 0x9B, &answer, None)).1, 0x6982);
    assert!(!mgm_authenticated(&mut c));
}

#[test]
fn bare_challenge_works_repeatedly_without_authentication() {
    let mut c = fresh();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (data, sw) = bare_challenge(&mut c, 0x03);
        assert_eq!(sw, 0x9000);
        assert_eq!(&data[..4], &[0x7C, 0x0A, 0x81, 0x08]);
        assert_eq!(data.len(), 12);
        assert!(!seen.contains(&data), "challenge repeated");
        seen.push(data);
    }
    assert_eq!(c.get_challenge(MgmAlgorithm::TripleDes).unwrap().len(), 8);
    assert!(!mgm_authenticated(&mut c));
    // The algorithm must name a management-key algorithm.
    assert_eq!(bare_challenge(&mut c, 0x11).1, 0x6A86);
}

#[test]
fn set_management_key_through_every_algorithm() {
    let mut c = fresh();
    let mut current = factory_key();
    assert_sw(c.set_management_key(&ManagementKey::random(MgmAlgorithm::Aes128), false), 0x6982);
    for alg in [
        MgmAlgorithm::Aes128,
        MgmAlgorithm::Aes192,
        MgmAlgorithm::Aes256,
        MgmAlgorithm::Aes256,
        MgmAlgorithm::TripleDes,
    ] {
        c.authenticate_mutual(&current).unwrap();
        let new = ManagementKey::random(alg);
        c.set_management_key(&new, false).unwrap();
        let m = c.get_metadata(0x9B).unwrap();
        assert_eq!((m.algorithm, m.is_default), (Some(alg.id()), Some(false)), "{alg}");
        vcard(&mut c).reset_session();
        // The old key no longer works: a different algorithm is a bad P1, the same one fails.
        let same = current.algorithm() == alg;
        assert_sw(c.authenticate_mutual(&current), if same { 0x6982 } else { 0x6A86 });
        assert_sw(c.authenticate_external(&current), 0x6982);
        assert!(!mgm_authenticated(&mut c));
        let (chal, sw) = bare_challenge(&mut c, alg.id());
        assert_eq!((chal.len(), sw), (4 + alg.block_len(), 0x9000));
        c.authenticate_mutual(&new).unwrap();
        assert!(mgm_authenticated(&mut c));
        vcard(&mut c).reset_session();
        c.authenticate_external(&new).unwrap();
        assert!(mgm_authenticated(&mut c));
        current = new;
    }
    // Back to the factory key: the default flag returns.
    c.set_management_key(&factory_key(), false).unwrap();
    assert_eq!(c.get_metadata(0x9B).unwrap().is_default, Some(true));
    // A key whose length does not match its algorithm is refused.
    let mut bad = vec![0x08, 0x9B, 0x18];
    bad.extend_from_slice(&[0x42; 24]);
    assert_eq!(raw(&mut c, &apdu(0, 0xFF, 0xFF, 0xFF, &bad, None)).1, 0x6A80);
    vcard(&mut c).reset_session();
    c.authenticate_mutual(&factory_key()).unwrap();
}

#[test]
fn aes192_factory_card_authenticates_with_the_default_bytes() {
    let mut c = connect(new_image(&NewCard { mgm_algorithm: MgmAlgorithm::Aes192, ..Default::default() }));
    let m = c.get_metadata(0x9B).unwrap();
    assert_eq!((m.algorithm, m.is_default), (Some(0x0A), Some(true)));
    assert_eq!(m.pin_policy, Some(PinPolicy::Never));
    let aes = ManagementKey::new(MgmAlgorithm::Aes192, &DEFAULT_MANAGEMENT_KEY).unwrap();
    assert_sw(c.authenticate_mutual(&factory_key()), 0x6A86);
    assert!(!mgm_authenticated(&mut c));
    c.authenticate_mutual(&aes).unwrap();
    assert!(mgm_authenticated(&mut c));
    vcard(&mut c).reset_session();
    c.authenticate_external(&aes).unwrap();
    assert!(mgm_authenticated(&mut c));
    assert_eq!(c.get_challenge(MgmAlgorithm::Aes192).unwrap().len(), 16);
}

// ---------------------------------------------------------------------------------------------
// 4. Keys
// ---------------------------------------------------------------------------------------------

#[test]
fn generate_requires_the_management_key_and_checks_its_parameters() {
    let mut c = fresh();
    assert_sw(c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None), 0x6982);
    let generate = |slot, data: &[u8]| apdu(0, 0x47, 0x00, slot, data, Some(256));
    assert_eq!(raw(&mut c, &generate(0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x11])).1, 0x6982);
    assert_sw(c.get_metadata(0x9A), 0x6A88);
    c.authenticate_mutual(&factory_key()).unwrap();
    // Unknown mechanism, missing template, non-key slots, P1 != 00, bad exponent.
    assert_eq!(raw(&mut c, &generate(0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x99])).1, 0x6A80);
    assert_eq!(raw(&mut c, &generate(0x9A, &[0xAC, 0x00])).1, 0x6A80);
    assert_eq!(raw(&mut c, &generate(0x9A, &[0x80, 0x01, 0x11])).1, 0x6A80);
    for slot in [0x9B, 0x00, 0x96, 0xF9] {
        assert_eq!(raw(&mut c, &generate(slot, &[0xAC, 0x03, 0x80, 0x01, 0x11])).1, 0x6A86);
    }
    assert_eq!(raw(&mut c, &apdu(0, 0x47, 0x01, 0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x11], Some(256))).1, 0x6A86);
    let exp3 = [0xAC, 0x08, 0x80, 0x01, 0x11, 0x81, 0x03, 0x01, 0x00, 0x01];
    assert_eq!(raw(&mut c, &generate(0x9A, &exp3)).1, 0x6A80);
    assert_sw(c.get_metadata(0x9A), 0x6A88);
    let (data, sw) = raw(&mut c, &generate(0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x11]));
    assert_eq!(sw, 0x9000);
    let pk = PublicKey::from_inner_tlvs(KeyAlgorithm::EccP256, tlv::expect_single(&data, 0x7F49).unwrap())
        .unwrap();
    let PublicKey::Ec { point, .. } = &pk else { panic!() };
    assert_eq!((point.len(), point[0]), (65, 0x04));
    assert_eq!(c.get_metadata(0x9A).unwrap().public_key, Some(pk.to_inner_tlvs()));
}

#[test]
fn ec_keys_sign_in_every_slot() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    for slot in [0x9A, 0x9C, 0x9D, 0x9E, 0x82] {
        for alg in [KeyAlgorithm::EccP256, KeyAlgorithm::EccP384] {
            let slot = Slot(slot);
            let pk = c.generate(slot, alg, None, None).unwrap();
            let PublicKey::Ec { point, .. } = &pk else { panic!() };
            assert_eq!(point.len(), 1 + 2 * alg.size_bytes());
            let m = c.get_metadata(slot.0).unwrap();
            assert_eq!(m.algorithm, Some(alg.id()));
            assert_eq!(m.origin, Some(1));
            assert_eq!(m.pin_policy, Some(slot.default_pin_policy()));
            assert_eq!(m.public_key, Some(pk.to_inner_tlvs()));
            c.verify_pin(PIN).unwrap();
            sign_verified(&mut c, slot, alg, &pk);
            // A longer hash is truncated to the field size, as ECDSA does.
            if alg == KeyAlgorithm::EccP256 {
                c.verify_pin(PIN).unwrap();
                let long = Sha384::digest(MSG);
                let sig = c.sign(slot, alg, &long).unwrap();
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
                key.verify_prehash(&long[..32], &p256::ecdsa::Signature::from_der(&sig).unwrap()).unwrap();
            }
        }
    }
}

#[test]
fn rsa_2048_signs_and_deciphers_in_9d() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let slot = Slot::KEY_MANAGEMENT;
    let alg = KeyAlgorithm::Rsa2048;
    let pk = c.generate(slot, alg, None, None).unwrap();
    let PublicKey::Rsa { modulus, exponent } = &pk else { panic!() };
    assert_eq!(modulus.len(), 256);
    assert_eq!(exponent.as_slice(), &[0x01, 0x00, 0x01]);
    assert_sw(sign_result(&mut c, slot, alg), 0x6982);
    c.verify_pin(PIN).unwrap();
    sign_verified(&mut c, slot, alg, &pk);

    let public = rsa_public(&pk);
    let secret = b"key transport secret";
    let ct = public.encrypt(&mut OsRng, Pkcs1v15Encrypt, secret).unwrap();
    let em = c.decipher(slot, alg, &ct).unwrap();
    assert_eq!(em.len(), 256);
    assert_eq!(&em[..2], &[0x00, 0x02]);
    let sep = em[2..].iter().position(|b| *b == 0).unwrap() + 2;
    assert!(sep >= 10, "PKCS#1 v1.5 padding string shorter than 8 bytes");
    assert!(em[2..sep].iter().all(|b| *b != 0));
    assert_eq!(&em[sep + 1..], secret);
    // Input that is not a modulus-size block, or not below the modulus.
    assert_sw(c.decipher(slot, alg, &ct[1..]), 0x6A80);
    assert_sw(c.decipher(slot, alg, &[0xFF; 256]), 0x6A80);
    // Attestation states this RSA key.
    let att = Certificate::from_der(&c.attest(slot).unwrap()).unwrap();
    use rsa::pkcs8::DecodePublicKey;
    let spki_der = att.tbs_certificate.subject_public_key_info.to_der().unwrap();
    assert_eq!(RsaPublicKey::from_public_key_der(&spki_der).unwrap(), public);
}

#[test]
fn rsa_3072_signs_with_chaining_both_ways() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let alg = KeyAlgorithm::Rsa3072;
    let pk = c.generate(Slot::AUTHENTICATION, alg, None, None).unwrap();
    let PublicKey::Rsa { modulus, .. } = &pk else { panic!() };
    assert_eq!(modulus.len(), 384);
    assert_eq!(c.get_metadata(0x9A).unwrap().algorithm, Some(0x05));
    c.verify_pin(PIN).unwrap();
    let before = c.round_trips();
    sign_verified(&mut c, Slot::AUTHENTICATION, alg, &pk);
    // Two blocks out (394 bytes of data), 392 bytes back in two pieces.
    assert_eq!(c.round_trips() - before, 3);
    assert_sw(sign_result(&mut c, Slot::AUTHENTICATION, KeyAlgorithm::Rsa2048), 0x6A86);
}

#[test]
fn pin_policies_of_9a_9c_and_9e() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let alg = KeyAlgorithm::EccP256;
    let a = c.generate(Slot::AUTHENTICATION, alg, None, None).unwrap();
    let s = c.generate(Slot::SIGNATURE, alg, None, None).unwrap();
    let e = c.generate(Slot::CARD_AUTHENTICATION, alg, None, None).unwrap();
    assert_eq!(c.get_metadata(0x9C).unwrap().pin_policy, Some(PinPolicy::Always));
    assert_eq!(c.get_metadata(0x9E).unwrap().pin_policy, Some(PinPolicy::Never));
    // 9E: no PIN ever.
    sign_verified(&mut c, Slot::CARD_AUTHENTICATION, alg, &e);
    sign_verified(&mut c, Slot::CARD_AUTHENTICATION, alg, &e);
    // 9A: PIN once per session.
    assert_sw(sign_result(&mut c, Slot::AUTHENTICATION, alg), 0x6982);
    assert_sw(sign_result(&mut c, Slot::SIGNATURE, alg), 0x6982);
    c.verify_pin(PIN).unwrap();
    sign_verified(&mut c, Slot::AUTHENTICATION, alg, &a);
    sign_verified(&mut c, Slot::AUTHENTICATION, alg, &a);
    // 9C: PIN always, one signature per VERIFY.
    sign_verified(&mut c, Slot::SIGNATURE, alg, &s);
    assert_sw(sign_result(&mut c, Slot::SIGNATURE, alg), 0x6982);
    // An empty VERIFY (status query) does not re-arm it; a real one does.
    assert_eq!(raw(&mut c, &[0x00, 0x20, 0x00, 0x80]).1, 0x9000);
    assert_sw(sign_result(&mut c, Slot::SIGNATURE, alg), 0x6982);
    c.verify_pin(PIN).unwrap();
    sign_verified(&mut c, Slot::SIGNATURE, alg, &s);
    assert_sw(sign_result(&mut c, Slot::SIGNATURE, alg), 0x6982);
    // 9A stays usable; dropping the verification locks it again.
    sign_verified(&mut c, Slot::AUTHENTICATION, alg, &a);
    c.reset_pin_verification().unwrap();
    assert_sw(sign_result(&mut c, Slot::AUTHENTICATION, alg), 0x6982);
    // Policies requested at generation are honoured.
    let n = c.generate(Slot(0x83), alg, Some(PinPolicy::Never), Some(TouchPolicy::Never)).unwrap();
    sign_verified(&mut c, Slot(0x83), alg, &n);
    let al = c.generate(Slot::CARD_AUTHENTICATION, alg, Some(PinPolicy::Always), None).unwrap();
    assert_sw(sign_result(&mut c, Slot::CARD_AUTHENTICATION, alg), 0x6982);
    c.verify_pin(PIN).unwrap();
    sign_verified(&mut c, Slot::CARD_AUTHENTICATION, alg, &al);
    assert_sw(sign_result(&mut c, Slot::CARD_AUTHENTICATION, alg), 0x6982);
}

#[test]
fn ecdh_in_9d_matches_the_software_side() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    c.verify_pin(PIN).unwrap();

    let pk = c.generate(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP256, None, None).unwrap();
    let PublicKey::Ec { point, .. } = &pk else { panic!() };
    let eph = p256::ecdh::EphemeralSecret::random(&mut OsRng);
    let mine = eph.public_key().to_encoded_point(false);
    let z = c.ecdh(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP256, mine.as_bytes()).unwrap();
    let theirs = p256::PublicKey::from_sec1_bytes(point).unwrap();
    assert_eq!(z.as_slice(), eph.diffie_hellman(&theirs).raw_secret_bytes().as_slice());
    assert_eq!(z.len(), 32);
    // A point that is not on the curve, or of the other curve, is refused.
    let mut off = mine.as_bytes().to_vec();
    off[64] ^= 0x01;
    assert_sw(c.ecdh(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP256, &off), 0x6A80);

    let pk = c.generate(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP384, None, None).unwrap();
    let PublicKey::Ec { point, .. } = &pk else { panic!() };
    let eph = p384::ecdh::EphemeralSecret::random(&mut OsRng);
    let mine = eph.public_key().to_encoded_point(false);
    let z = c.ecdh(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP384, mine.as_bytes()).unwrap();
    let theirs = p384::PublicKey::from_sec1_bytes(point).unwrap();
    assert_eq!(z.as_slice(), eph.diffie_hellman(&theirs).raw_secret_bytes().as_slice());
    assert_eq!(z.len(), 48);
    assert_sw(c.ecdh(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP384, &off), 0x6A80);

    // ECDH needs the PIN on 9D.
    c.reset_pin_verification().unwrap();
    assert_sw(c.ecdh(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP384, mine.as_bytes()), 0x6982);
}

#[test]
fn ecdh_on_9a_wrong_algorithm_and_missing_key_are_refused() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    c.verify_pin(PIN).unwrap();
    c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
    let eph = p256::SecretKey::random(&mut OsRng).public_key().to_encoded_point(false);
    assert_sw(c.ecdh(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, eph.as_bytes()), 0x6A86);
    for wrong in [KeyAlgorithm::EccP384, KeyAlgorithm::Rsa2048] {
        assert_sw(sign_result(&mut c, Slot::AUTHENTICATION, wrong), 0x6A86);
    }
    // An algorithm id that names nothing, a request without 82 00, a missing key.
    let t = [tlv::tlv(0x82, &[]), tlv::tlv(0x81, &[0x11; 32])].concat();
    assert_eq!(raw(&mut c, &apdu(0, 0x87, 0x42, 0x9A, &tlv::tlv(0x7C, &t), Some(256))).1, 0x6A86);
    let no_request = tlv::tlv(0x7C, &tlv::tlv(0x81, &[0x11; 32]));
    assert_eq!(raw(&mut c, &apdu(0, 0x87, 0x11, 0x9A, &no_request, Some(256))).1, 0x6A80);
    assert_sw(sign_result(&mut c, Slot::SIGNATURE, KeyAlgorithm::EccP256), 0x6A88);
    assert_sw(sign_result(&mut c, Slot(0x90), KeyAlgorithm::EccP256), 0x6A88);
    assert_sw(sign_result(&mut c, Slot(0x42), KeyAlgorithm::EccP256), 0x6A86);
    // ECDH naming the wrong curve for the key.
    c.import_key(
        Slot::KEY_MANAGEMENT,
        KeyAlgorithm::EccP256,
        ImportKey::Ec { scalar: &p256::SecretKey::random(&mut OsRng).to_bytes() },
        None,
        None,
    )
    .unwrap();
    assert_sw(c.ecdh(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP384, eph.as_bytes()), 0x6A86);
}

// ---------------------------------------------------------------------------------------------
// 5. YubiKey extensions
// ---------------------------------------------------------------------------------------------

#[test]
fn version_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    let img1 = image_from(&root, &NewCard::default());
    let img2 = image_from(&root, &NewCard::default());
    let (s1, s2) = (img1.serial, img2.serial);
    let mut c1 = connect(img1);
    let mut c2 = connect(img2);
    let v = c1.get_version().unwrap();
    assert_eq!((v.0, v.1), (5, 7));
    assert_eq!(raw(&mut c1, &[0x00, 0xFD, 0x00, 0x00]).0.len(), 3);
    assert_eq!(c1.get_serial().unwrap(), s1);
    assert_eq!(c2.get_serial().unwrap(), s2);
    assert_ne!(s1, s2);
    assert_eq!(raw(&mut c1, &[0x00, 0xF8, 0x00, 0x00]), (s1.to_be_bytes().to_vec(), 0x9000));
}

#[test]
fn metadata_for_pin_puk_and_key_slots() {
    let mut c = fresh();
    let pin = c.get_metadata(0x80).unwrap();
    assert_eq!((pin.retries, pin.is_default), (Some((3, 3)), Some(true)));
    let puk = c.get_metadata(0x81).unwrap();
    assert_eq!((puk.retries, puk.is_default), (Some((3, 3)), Some(true)));
    assert_sw(c.verify_pin(b"000000"), 0x63C2);
    assert_eq!(pin_retries(&mut c), (3, 2));
    c.change_reference(true, PUK, b"87654321").unwrap();
    assert_eq!(c.get_metadata(0x81).unwrap().is_default, Some(false));
    // Empty key slots.
    for slot in [0x9A, 0x9C, 0x9D, 0x9E, 0x82, 0x95] {
        assert_sw(c.get_metadata(slot), 0x6A88);
    }
    c.authenticate_mutual(&factory_key()).unwrap();
    let pk = c
        .generate(
            Slot::KEY_MANAGEMENT,
            KeyAlgorithm::EccP384,
            Some(PinPolicy::Never),
            Some(TouchPolicy::Always),
        )
        .unwrap();
    let m = c.get_metadata(0x9D).unwrap();
    assert_eq!(m.algorithm, Some(0x14));
    assert_eq!((m.pin_policy, m.touch_policy), (Some(PinPolicy::Never), Some(TouchPolicy::Always)));
    assert_eq!(m.origin, Some(1));
    assert_eq!(m.public_key, Some(pk.to_inner_tlvs()));
    // The raw form: 01 alg, 02 [pin, touch], 03 origin, 04 public key.
    let (data, sw) = raw(&mut c, &[0x00, 0xF7, 0x00, 0x9D, 0x00]);
    assert_eq!(sw, 0x9000);
    let tlvs = tlv::parse_all(&data).unwrap();
    assert_eq!(tlv::require(&tlvs, 0x01).unwrap(), &[0x14]);
    assert_eq!(tlv::require(&tlvs, 0x02).unwrap(), &[0x01, 0x02]);
    assert_eq!(tlv::require(&tlvs, 0x03).unwrap(), &[0x01]);
    // The attestation key in F9.
    let f9 = c.get_metadata(0xF9).unwrap();
    assert_eq!(f9.algorithm, Some(0x11));
    let f9_cert = certificate_from_object(&c.get_data(tag::YUBICO_ATTESTATION_CERT).unwrap());
    let f9_point = tlv::require(&tlv::parse_all(&f9.public_key.unwrap()).unwrap(), 0x86).unwrap().to_vec();
    assert_eq!(f9_point, f9_cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes());
}

#[test]
fn import_p256_and_rsa_2048_then_sign() {
    let mut c = fresh();
    let ec = p256::SecretKey::random(&mut OsRng);
    let scalar = ec.to_bytes();
    let import_ec = |c: &mut Card| {
        c.import_key(
            Slot::AUTHENTICATION,
            KeyAlgorithm::EccP256,
            ImportKey::Ec { scalar: &scalar },
            None,
            None,
        )
    };
    assert_sw(import_ec(&mut c), 0x6982);
    assert_sw(c.get_metadata(0x9A), 0x6A88);
    c.authenticate_mutual(&factory_key()).unwrap();
    import_ec(&mut c).unwrap();
    let pk = PublicKey::Ec {
        algorithm: KeyAlgorithm::EccP256,
        point: ec.public_key().to_encoded_point(false).as_bytes().to_vec(),
    };
    let m = c.get_metadata(0x9A).unwrap();
    assert_eq!((m.algorithm, m.origin), (Some(0x11), Some(2)));
    assert_eq!(m.public_key, Some(pk.to_inner_tlvs()));
    c.verify_pin(PIN).unwrap();
    sign_verified(&mut c, Slot::AUTHENTICATION, KeyAlgorithm::EccP256, &pk);
    // Scalar of the wrong size for the curve, or the curve order itself.
    assert_sw(
        c.import_key(
            Slot::AUTHENTICATION,
            KeyAlgorithm::EccP384,
            ImportKey::Ec { scalar: &scalar },
            None,
            None,
        ),
        0x6A80,
    );
    let order = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    assert_sw(
        c.import_key(Slot(0x84), KeyAlgorithm::EccP256, ImportKey::Ec { scalar: &order }, None, None),
        0x6A80,
    );
    assert_sw(c.get_metadata(0x84), 0x6A88);

    let soft = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let [p, q, dp, dq, qinv] = rsa_import_parts(&soft);
    let rsa_pk = PublicKey::Rsa { modulus: soft.n().to_bytes_be(), exponent: soft.e().to_bytes_be() };
    c.import_key(
        Slot::SIGNATURE,
        KeyAlgorithm::Rsa2048,
        ImportKey::Rsa { p: &p, q: &q, dp: &dp, dq: &dq, qinv: &qinv },
        Some(PinPolicy::Once),
        None,
    )
    .unwrap();
    let m = c.get_metadata(0x9C).unwrap();
    assert_eq!((m.algorithm, m.origin, m.pin_policy), (Some(0x07), Some(2), Some(PinPolicy::Once)));
    assert_eq!(m.public_key, Some(rsa_pk.to_inner_tlvs()));
    sign_verified(&mut c, Slot::SIGNATURE, KeyAlgorithm::Rsa2048, &rsa_pk);
    sign_verified(&mut c, Slot::SIGNATURE, KeyAlgorithm::Rsa2048, &rsa_pk);
    // CRT values that disagree with p and q are refused and leave the slot as it was.
    let mut bad_dp = dp.clone();
    bad_dp[100] ^= 0x01;
    assert_sw(
        c.import_key(
            Slot::SIGNATURE,
            KeyAlgorithm::Rsa2048,
            ImportKey::Rsa { p: &p, q: &q, dp: &bad_dp, dq: &dq, qinv: &qinv },
            None,
            None,
        ),
        0x6A80,
    );
    assert_eq!(c.get_metadata(0x9C).unwrap().public_key, Some(rsa_pk.to_inner_tlvs()));
    // Imported keys cannot be attested.
    assert!(c.attest(Slot::SIGNATURE).is_err());
    assert!(c.attest(Slot::AUTHENTICATION).is_err());
}

#[test]
fn attestation_chains_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    let img = image_from(&root, &NewCard::default());
    let serial = img.serial;
    let mut c = connect(img);
    c.authenticate_mutual(&factory_key()).unwrap();
    assert_sw(c.attest(Slot::AUTHENTICATION), 0x6A88);
    let pk = c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
    let PublicKey::Ec { point, .. } = &pk else { panic!() };

    let before = c.round_trips();
    let att = Certificate::from_der(&c.attest(Slot::AUTHENTICATION).unwrap()).unwrap();
    assert!(c.round_trips() - before >= 2, "a certificate comes back through 61xx");
    assert_eq!(att.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes(), point.as_slice());
    assert_eq!(att.tbs_certificate.subject_public_key_info.algorithm.oid.to_string(), "1.2.840.10045.2.1");

    // The F9 certificate from its 53 { 70 … } container.
    let f9_object = c.get_data(tag::YUBICO_ATTESTATION_CERT).unwrap();
    let inner = tlv::parse_all(tlv::expect_single(&f9_object, 0x53).unwrap()).unwrap();
    let f9 = Certificate::from_der(tlv::require(&inner, 0x70).unwrap()).unwrap();
    assert_issued_by(&att, &f9);
    assert_issued_by(&f9, root.certificate());
    assert_issued_by(root.certificate(), root.certificate());
    // A certificate from another root does not verify.
    let other_dir = tempfile::tempdir().unwrap();
    let other = AttestationRoot::open_or_create(other_dir.path(), SystemTime::now()).unwrap();
    {
        use p256::ecdsa::signature::Verifier;
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(
            other.certificate().tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes(),
        )
        .unwrap();
        let sig = p256::ecdsa::Signature::from_der(f9.signature.raw_bytes()).unwrap();
        assert!(key.verify(&f9.tbs_certificate.to_der().unwrap(), &sig).is_err());
    }
    // Yubico's extensions: firmware, serial, [pin policy, touch policy].
    assert_eq!(extension(&att, "1.3.6.1.4.1.41482.3.3"), &lanyard_vcard::card::DEFAULT_VERSION);
    assert_eq!(u32::from_der(extension(&att, "1.3.6.1.4.1.41482.3.7")).unwrap(), serial);
    let m = c.get_metadata(0x9A).unwrap();
    assert_eq!(
        extension(&att, "1.3.6.1.4.1.41482.3.8"),
        &[m.pin_policy.unwrap().id(), m.touch_policy.unwrap().id()]
    );

    // P-384 keys are attested too.
    let pk = c.generate(Slot(0x88), KeyAlgorithm::EccP384, Some(PinPolicy::Always), None).unwrap();
    let PublicKey::Ec { point, .. } = &pk else { panic!() };
    let att = Certificate::from_der(&c.attest(Slot(0x88)).unwrap()).unwrap();
    assert_eq!(att.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes(), point.as_slice());
    assert_eq!(extension(&att, "1.3.6.1.4.1.41482.3.8")[0], PinPolicy::Always.id());
    assert_issued_by(&att, &f9);
}

#[test]
fn set_pin_retries_needs_mgm_and_pin_and_resets_to_defaults() {
    let mut c = fresh();
    c.change_reference(false, PIN, b"999999").unwrap();
    c.change_reference(true, PUK, b"99999999").unwrap();
    c.reset_pin_verification().unwrap();
    assert_sw(c.set_pin_retries(5, 4), 0x6982);
    c.authenticate_mutual(&factory_key()).unwrap();
    assert_sw(c.set_pin_retries(5, 4), 0x6982);
    vcard(&mut c).reset_session();
    c.verify_pin(b"999999").unwrap();
    assert_sw(c.set_pin_retries(5, 4), 0x6982);
    c.authenticate_mutual(&factory_key()).unwrap();
    assert_sw(c.set_pin_retries(0, 4), 0x6A86);
    assert_sw(c.set_pin_retries(5, 0), 0x6A86);
    assert_eq!(pin_retries(&mut c), (3, 3));
    c.set_pin_retries(5, 4).unwrap();
    let pin = c.get_metadata(0x80).unwrap();
    let puk = c.get_metadata(0x81).unwrap();
    assert_eq!((pin.retries, pin.is_default), (Some((5, 5)), Some(true)));
    assert_eq!((puk.retries, puk.is_default), (Some((4, 4)), Some(true)));
    // The PIN verification is gone and the old values are no longer valid.
    assert_eq!(c.pin_status().unwrap(), Some(5));
    assert_sw(c.verify_pin(b"999999"), 0x63C4);
    c.verify_pin(PIN).unwrap();
    assert_sw(c.unblock_pin(b"99999999", b"111111"), 0x63C3);
    c.unblock_pin(PUK, b"111111").unwrap();
    assert_eq!(puk_retries(&mut c), (4, 4));
}

#[test]
fn reset_needs_pin_and_puk_blocked_then_restores_the_factory_state() {
    let dir = tempfile::tempdir().unwrap();
    let root = AttestationRoot::open_or_create(dir.path(), SystemTime::now()).unwrap();
    let img = image_from(&root, &NewCard::default());
    let f9_before = img.objects.get("5FFF01").cloned().unwrap();
    let mut c = connect(img);
    c.authenticate_mutual(&factory_key()).unwrap();
    c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
    c.generate(Slot(0x82), KeyAlgorithm::EccP256, None, None).unwrap();
    let chuid = Chuid::new(&FascN::with_identifier("1234", "5678", "000001").unwrap(), [7; 16], "20301231")
        .unwrap()
        .encode();
    c.put_data(tag::CHUID, &chuid).unwrap();
    c.put_data(tag::CERT_PIV_AUTH, &CertificateObject::new(vec![0x30; 40]).encode(false)).unwrap();
    c.put_data(tag::DISCOVERY, &Discovery { pin_usage_policy: [0x60, 0x10] }.encode()).unwrap();
    let aes = ManagementKey::random(MgmAlgorithm::Aes256);
    c.set_management_key(&aes, false).unwrap();
    c.change_reference(false, PIN, b"777777").unwrap();
    c.change_reference(true, PUK, b"77777777").unwrap();

    assert_sw(c.reset(), 0x6985);
    for _ in 0..3 {
        let _ = c.verify_pin(b"000000");
    }
    assert_eq!(pin_retries(&mut c), (3, 0));
    assert_sw(c.reset(), 0x6985);
    c.block_pin_and_puk().unwrap();
    assert_eq!(puk_retries(&mut c), (3, 0));
    c.reset().unwrap();

    for slot in [0x9A, 0x82] {
        assert_sw(c.get_metadata(slot), 0x6A88);
    }
    for t in [tag::CHUID, tag::CERT_PIV_AUTH] {
        assert_sw(c.get_data(t), 0x6A82);
    }
    assert_eq!(Discovery::decode(&c.get_data(tag::DISCOVERY).unwrap()).unwrap(), Discovery::default());
    let f9 = c.get_data(tag::YUBICO_ATTESTATION_CERT).unwrap();
    assert_eq!(hex::encode(&f9), f9_before);
    assert_issued_by(&certificate_from_object(&f9), root.certificate());
    let img = vcard(&mut c).image().clone();
    assert_eq!(img.keys.len(), 0);
    assert_eq!(img.objects.keys().collect::<Vec<_>>(), ["00007E", "5FFF01"]);
    for (slot, retries) in [(0x80, (3, 3)), (0x81, (3, 3))] {
        let m = c.get_metadata(slot).unwrap();
        assert_eq!((m.retries, m.is_default), (Some(retries), Some(true)));
    }
    let m = c.get_metadata(0x9B).unwrap();
    assert_eq!((m.algorithm, m.is_default), (Some(0x03), Some(true)));
    assert!(!mgm_authenticated(&mut c));
    assert_eq!(c.pin_status().unwrap(), Some(3));
    c.verify_pin(PIN).unwrap();
    c.authenticate_mutual(&factory_key()).unwrap();
    c.unblock_pin(PUK, b"123456").unwrap();
}

#[test]
fn move_and_delete_keys() {
    let mut c = fresh();
    assert_sw(c.move_key(Slot::AUTHENTICATION, 0x85), 0x6982);
    c.authenticate_mutual(&factory_key()).unwrap();
    assert_sw(c.move_key(Slot::AUTHENTICATION, 0x85), 0x6A88);
    let pk = c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
    assert_sw(c.move_key(Slot::AUTHENTICATION, 0x9B), 0x6A86);
    assert_sw(c.move_key(Slot::MANAGEMENT, 0x85), 0x6A86);
    c.move_key(Slot::AUTHENTICATION, 0x85).unwrap();
    assert_sw(c.get_metadata(0x9A), 0x6A88);
    let m = c.get_metadata(0x85).unwrap();
    assert_eq!((m.public_key, m.origin), (Some(pk.to_inner_tlvs()), Some(1)));
    c.verify_pin(PIN).unwrap();
    assert_sw(sign_result(&mut c, Slot::AUTHENTICATION, KeyAlgorithm::EccP256), 0x6A88);
    sign_verified(&mut c, Slot(0x85), KeyAlgorithm::EccP256, &pk);
    // The move is in the image, not just in memory.
    let img = vcard(&mut c).image().clone();
    assert!(img.keys.contains_key("85") && !img.keys.contains_key("9A"));
    let mut again = connect(img);
    again.verify_pin(PIN).unwrap();
    sign_verified(&mut again, Slot(0x85), KeyAlgorithm::EccP256, &pk);
    // Delete.
    c.move_key(Slot(0x85), 0xFF).unwrap();
    assert_sw(c.get_metadata(0x85), 0x6A88);
    assert_sw(sign_result(&mut c, Slot(0x85), KeyAlgorithm::EccP256), 0x6A88);
    assert!(vcard(&mut c).image().keys.is_empty());
    assert_sw(c.move_key(Slot(0x85), 0xFF), 0x6A88);
}

// ---------------------------------------------------------------------------------------------
// 6. Data objects
// ---------------------------------------------------------------------------------------------

#[test]
fn put_data_needs_the_management_key() {
    let mut c = fresh();
    let chuid = Chuid::new_random(&FascN::with_identifier("9999", "9999", "999999").unwrap(), "20300101")
        .unwrap()
        .encode();
    assert_sw(c.put_data(tag::CHUID, &chuid), 0x6982);
    assert_sw(c.put_data(tag::DISCOVERY, &Discovery::default().encode()), 0x6982);
    assert_sw(c.get_data(tag::CHUID), 0x6A82);
    c.verify_pin(PIN).unwrap();
    assert_sw(c.put_data(tag::CHUID, &chuid), 0x6982);
    c.authenticate_mutual(&factory_key()).unwrap();
    c.put_data(tag::CHUID, &chuid).unwrap();
    assert_eq!(c.get_data(tag::CHUID).unwrap(), chuid);
}

#[test]
fn chuid_ccc_and_certificate_objects_round_trip() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let mut chuid =
        Chuid::new_random(&FascN::with_identifier("1201", "0042", "123456").unwrap(), "20301231").unwrap();
    chuid.cardholder_uuid = Some([0x5A; 16]);
    chuid.signature = vec![0x30, 0x03, 0x02, 0x01, 0x00];
    c.put_data(tag::CHUID, &chuid.encode()).unwrap();
    let back = Chuid::decode(&c.get_data(tag::CHUID).unwrap()).unwrap();
    assert_eq!(back, chuid);
    assert_eq!(back.parsed_fasc_n().unwrap().identifier(), "12010042123456");

    let ccc = Ccc::new_random();
    c.put_data(tag::CARD_CAPABILITY_CONTAINER, &ccc.encode()).unwrap();
    assert_eq!(Ccc::decode(&c.get_data(tag::CARD_CAPABILITY_CONTAINER).unwrap()).unwrap(), ccc);

    // A real certificate (the card's own F9 certificate) in every certificate container.
    let f9_der = CertificateObject::decode(&c.get_data(tag::YUBICO_ATTESTATION_CERT).unwrap()).unwrap().der;
    for slot in [0x9A, 0x9C, 0x9D, 0x9E, 0x82, 0x95] {
        let t = Slot(slot).certificate_tag().unwrap();
        let compress = slot == 0x9C;
        let object = CertificateObject::new(f9_der.clone()).encode(compress);
        c.put_data(t, &object).unwrap();
        let stored = c.get_data(t).unwrap();
        assert_eq!(stored, object);
        let cert = certificate_from_object(&stored);
        assert_eq!(cert.to_der().unwrap(), f9_der);
    }

    let history = KeyHistory::new(2, 1, Some("http://example.invalid/kh".into())).unwrap();
    c.put_data(tag::KEY_HISTORY, &history.encode()).unwrap();
    assert_eq!(KeyHistory::decode(&c.get_data(tag::KEY_HISTORY).unwrap()).unwrap(), history);

    // Discovery and BIT group go without the 53 wrapper.
    let disc = Discovery { pin_usage_policy: [0x60, 0x10] };
    c.put_data(tag::DISCOVERY, &disc.encode()).unwrap();
    assert_eq!(Discovery::decode(&c.get_data(tag::DISCOVERY).unwrap()).unwrap(), disc);
    let bit = tlv::tlv(0x7F61, &tlv::tlv(0x02, &[0x01]));
    c.put_data(tag::BIT_GROUP_TEMPLATE, &bit).unwrap();
    assert_eq!(c.get_data(tag::BIT_GROUP_TEMPLATE).unwrap(), bit);
    // Overwriting replaces.
    let ccc2 = Ccc::new_random();
    c.put_data(tag::CARD_CAPABILITY_CONTAINER, &ccc2.encode()).unwrap();
    assert_eq!(Ccc::decode(&c.get_data(tag::CARD_CAPABILITY_CONTAINER).unwrap()).unwrap(), ccc2);
}

#[test]
fn large_certificate_object_uses_chaining_both_ways() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let der: Vec<u8> = (0..2500u32).map(|i| (i * 7 + 3) as u8).collect();
    let object = CertificateObject::new(der.clone()).encode(false);
    assert!(object.len() > 2500);
    let before = c.round_trips();
    c.put_data(tag::CERT_PIV_AUTH, &object).unwrap();
    let sent = c.round_trips() - before;
    assert_eq!(sent, (object.len() + 5).div_ceil(255) as u64, "255-byte blocks with CLA 10");
    let before = c.round_trips();
    let back = c.get_data(tag::CERT_PIV_AUTH).unwrap();
    assert_eq!(c.round_trips() - before, object.len().div_ceil(256) as u64);
    assert_eq!(back, object);
    assert_eq!(CertificateObject::decode(&back).unwrap().der, der);

    // The same at the APDU level: 256 bytes + 61 00, then GET RESPONSE until 9000.
    let (mut data, mut sw) = raw(&mut c, &[0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x00]);
    assert_eq!((data.len(), sw), (256, 0x6100));
    while sw & 0xFF00 == 0x6100 {
        let (more, next) = raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, sw as u8]);
        let expected = if sw as u8 == 0 { 256 } else { usize::from(sw as u8) };
        assert_eq!(more.len(), expected);
        data.extend_from_slice(&more);
        sw = next;
    }
    assert_eq!((data, sw), (object, 0x9000));
}

#[test]
fn objects_over_the_size_limit_are_refused() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let object_of = |total: usize| {
        // 53 82 LL LL <value>: a value of total - 4 bytes.
        tlv::tlv(0x53, &vec![0x42; total - 4])
    };
    assert_sw(c.put_data(tag::CERT_PIV_AUTH, &object_of(MAX_OBJECT + 1)), 0x6A84);
    assert_sw(c.put_data(tag::CERT_PIV_AUTH, &object_of(MAX_OBJECT + 2000)), 0x6A84);
    assert_sw(c.get_data(tag::CERT_PIV_AUTH), 0x6A82);
    let fits = object_of(MAX_OBJECT);
    c.put_data(tag::CERT_PIV_AUTH, &fits).unwrap();
    assert_eq!(c.get_data(tag::CERT_PIV_AUTH).unwrap(), fits);
    // A refused overwrite keeps the old value.
    assert_sw(c.put_data(tag::CERT_PIV_AUTH, &object_of(MAX_OBJECT + 1)), 0x6A84);
    assert_eq!(c.get_data(tag::CERT_PIV_AUTH).unwrap(), fits);
}

#[test]
fn empty_object_deletes() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let ccc = Ccc::new_random().encode();
    c.put_data(tag::CARD_CAPABILITY_CONTAINER, &ccc).unwrap();
    assert_eq!(c.get_data(tag::CARD_CAPABILITY_CONTAINER).unwrap(), ccc);
    c.put_data(tag::CARD_CAPABILITY_CONTAINER, &[0x53, 0x00]).unwrap();
    assert_sw(c.get_data(tag::CARD_CAPABILITY_CONTAINER), 0x6A82);
    assert_eq!(c.try_get_data(tag::CARD_CAPABILITY_CONTAINER).unwrap(), None);
    // Deleting what is absent is fine; an unknown tag is not.
    c.put_data(tag::CARD_CAPABILITY_CONTAINER, &[0x53, 0x00]).unwrap();
    assert_sw(c.put_data(0x5FC1FF, &[0x53, 0x00]), 0x6A82);
    assert_sw(c.put_data(0x5FC1FF, &[0x53, 0x01, 0x00]), 0x6A82);
    assert!(!vcard(&mut c).image().objects.contains_key("5FC107"));
}

#[test]
fn printed_information_needs_the_pin() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let info = PrintedInformation {
        name: "Doe, Jane".into(),
        employee_affiliation: "Employee".into(),
        expiration_date: "2030JAN01".into(),
        agency_card_serial: "0000123".into(),
        issuer_identification: "LANYARD".into(),
        organization_line1: Some("Example Org".into()),
        organization_line2: None,
    };
    let object = info.encode().unwrap();
    c.put_data(tag::PRINTED_INFORMATION, &object).unwrap();
    assert_sw(c.get_data(tag::PRINTED_INFORMATION), 0x6982);
    // Other PIN-protected objects, even absent ones, answer 6982 first.
    for t in [tag::FINGERPRINTS, tag::FACIAL_IMAGE, tag::IRIS, tag::PAIRING_CODE] {
        assert_sw(c.get_data(t), 0x6982);
    }
    c.verify_pin(PIN).unwrap();
    assert_eq!(PrintedInformation::decode(&c.get_data(tag::PRINTED_INFORMATION).unwrap()).unwrap(), info);
    assert_sw(c.get_data(tag::FINGERPRINTS), 0x6A82);
    c.reset_pin_verification().unwrap();
    assert_sw(c.get_data(tag::PRINTED_INFORMATION), 0x6982);
}

#[test]
fn get_data_of_unknown_and_malformed_tags() {
    let mut c = fresh();
    assert_sw(c.get_data(0x5FC1FF), 0x6A82);
    assert_sw(c.get_data(tag::CHUID), 0x6A82);
    let get = |data: &[u8]| apdu(0, 0xCB, 0x3F, 0xFF, data, Some(256));
    for bad in [
        &[0x5C, 0x03, 0x5F, 0xC1][..],         // length overruns
        &[0x5C, 0x04, 0x5F, 0xC1, 0x02, 0x00], // tag longer than three bytes
        &[0x5C, 0x00],                         // empty tag list
        &[0x5D, 0x03, 0x5F, 0xC1, 0x02],       // not a tag list
        &[0x5C, 0x03, 0x5F, 0xC1, 0x02, 0x00], // trailing byte
        &[0x5C, 0x80],                         // indefinite length
        &[],                                   // nothing at all
    ] {
        assert_eq!(raw(&mut c, &get(bad)).1, 0x6A80, "tag list {bad:02X?}");
    }
    assert_eq!(raw(&mut c, &apdu(0, 0xCB, 0x3F, 0xFE, &[0x5C, 0x01, 0x7E], Some(256))).1, 0x6A86);
}

#[test]
fn discovery_object_is_present_on_a_new_card() {
    let mut c = fresh();
    let raw_disc = c.get_data(tag::DISCOVERY).unwrap();
    assert_eq!(raw_disc[0], 0x7E, "discovery is not wrapped in 53");
    let disc = Discovery::decode(&raw_disc).unwrap();
    assert_eq!(disc, Discovery::default());
    assert_eq!(disc.pin_usage_policy, [0x40, 0x00]);
    assert_eq!(raw_disc, Discovery::default().encode());
    // The form OpenSC uses: 5C 01 7E.
    let (data, sw) = raw(&mut c, &[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00]);
    assert_eq!((data, sw), (raw_disc, 0x9000));
}

// ---------------------------------------------------------------------------------------------
// 7. Chaining
// ---------------------------------------------------------------------------------------------

#[test]
fn interrupted_put_data_chain_stores_nothing() {
    let object = CertificateObject::new(vec![0xAB; 600]).encode(false);
    let data = [&[0x5C, 0x03, 0x5F, 0xC1, 0x05][..], &object].concat();
    let blocks: Vec<&[u8]> = data.chunks(255).collect();
    assert_eq!(blocks.len(), 3);
    let interruptions: [&[u8]; 3] = [
        &[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00],
        &[0x00, 0x20, 0x00, 0x80],
        &[0x00, 0xF8, 0x00, 0x00],
    ];
    for (i, interruption) in interruptions.iter().enumerate() {
        let mut c = fresh();
        c.authenticate_mutual(&factory_key()).unwrap();
        for (n, block) in blocks.iter().enumerate() {
            if n == 1 {
                let (_, sw) = raw(&mut c, interruption);
                assert!(sw == 0x9000 || sw == 0x63C3, "interruption {i} answered {sw:04X}");
            }
            let last = n == blocks.len() - 1;
            let (_, sw) = raw(&mut c, &apdu(if last { 0x00 } else { 0x10 }, 0xDB, 0x3F, 0xFF, block, None));
            if last {
                assert_ne!(sw, 0x9000, "the tail of an interrupted chain was accepted");
            } else {
                assert_eq!(sw, 0x9000);
            }
        }
        assert_sw(c.get_data(tag::CERT_PIV_AUTH), 0x6A82);
        assert!(!vcard(&mut c).image().objects.contains_key("5FC105"));
        // The same blocks uninterrupted do store the object.
        for (n, block) in blocks.iter().enumerate() {
            let cla = if n == blocks.len() - 1 { 0x00 } else { 0x10 };
            assert_eq!(raw(&mut c, &apdu(cla, 0xDB, 0x3F, 0xFF, block, None)).1, 0x9000);
        }
        assert_eq!(c.get_data(tag::CERT_PIV_AUTH).unwrap(), object);
    }
}

#[test]
fn interrupted_general_authenticate_chain_rolls_back() {
    let mut c = fresh();
    c.authenticate_mutual(&factory_key()).unwrap();
    let pk = c.generate(Slot::CARD_AUTHENTICATION, KeyAlgorithm::Rsa2048, None, None).unwrap();
    let block = pkcs1_v15_block(MSG, 256);
    let t = [tlv::tlv(0x82, &[]), tlv::tlv(0x81, &block)].concat();
    let data = tlv::tlv(0x7C, &t);
    let (first, rest) = data.split_at(255);
    assert_eq!(raw(&mut c, &apdu(0x10, 0x87, 0x07, 0x9E, first, None)).1, 0x9000);
    assert_eq!(raw(&mut c, &[0x00, 0xFD, 0x00, 0x00]).1, 0x9000);
    let (_, sw) = raw(&mut c, &apdu(0x00, 0x87, 0x07, 0x9E, rest, Some(256)));
    assert_eq!(sw, 0x6A80);
    // Complete, it signs.
    assert_eq!(raw(&mut c, &apdu(0x10, 0x87, 0x07, 0x9E, first, None)).1, 0x9000);
    let (mut resp, mut sw) = raw(&mut c, &apdu(0x00, 0x87, 0x07, 0x9E, rest, Some(256)));
    while sw & 0xFF00 == 0x6100 {
        let (more, next) = raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, sw as u8]);
        resp.extend_from_slice(&more);
        sw = next;
    }
    assert_eq!(sw, 0x9000);
    let inner = tlv::parse_all(tlv::expect_single(&resp, 0x7C).unwrap()).unwrap();
    assert_signature(&pk, MSG, tlv::require(&inner, 0x82).unwrap());
}

#[test]
fn get_response_without_pending_data_is_6985() {
    let mut c = fresh();
    assert_eq!(raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]), (vec![], 0x6985));
    assert_eq!(raw(&mut c, &[0x00, 0xC0, 0x00, 0x00]).1, 0x6985);
    // After a response that fit, there is nothing pending either.
    assert_eq!(raw(&mut c, &[0x00, 0xFD, 0x00, 0x00, 0x00]).1, 0x9000);
    assert_eq!(raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]).1, 0x6985);
    // Another command discards what was pending.
    let (_, sw) = raw(&mut c, &[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x04]);
    assert_eq!(sw & 0xFF00, 0x6100);
    assert_eq!(raw(&mut c, &[0x00, 0xF8, 0x00, 0x00]).1, 0x9000);
    assert_eq!(raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]).1, 0x6985);
}

#[test]
fn short_le_returns_a_prefix_and_the_rest_through_get_response() {
    let mut c = fresh();
    let full = c.get_data(tag::DISCOVERY).unwrap();
    assert_eq!(full.len(), 20);
    // OpenSC's probe: Le = 8 to learn the TLV length.
    let (head, sw) = raw(&mut c, &[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x08]);
    assert_eq!(head.as_slice(), &full[..8]);
    assert_eq!(sw, 0x610C);
    // GET RESPONSE with a smaller Le leaves the rest pending again.
    let (mid, sw) = raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x05]);
    assert_eq!((mid.as_slice(), sw), (&full[8..13], 0x6107));
    let (tail, sw) = raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x07]);
    assert_eq!((tail.as_slice(), sw), (&full[13..], 0x9000));
    assert_eq!(raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]).1, 0x6985);
    // GET VERSION with Le = 1.
    let (v, sw) = raw(&mut c, &[0x00, 0xFD, 0x00, 0x00, 0x01]);
    assert_eq!((v.as_slice(), sw), (&[5u8][..], 0x6102));
    let (v, sw) = raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x02]);
    assert_eq!((v[0], sw), (7, 0x9000));
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_class_and_instruction_bytes() {
    let mut c = fresh();
    for cla in [0x80, 0x84, 0xA0, 0xFF, 0x01, 0x20] {
        assert_eq!(raw(&mut c, &[cla, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00]), (vec![], 0x6E00));
    }
    for cla in [0x0C, 0x1C] {
        assert_eq!(raw(&mut c, &[cla, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00]), (vec![], 0x6882));
    }
    for ins in [0x00, 0x01, 0x50, 0xB0, 0xCA, 0xD6, 0xE0, 0xFC] {
        assert_eq!(raw(&mut c, &[0x00, ins, 0x00, 0x00]), (vec![], 0x6D00), "INS {ins:02X}");
    }
    // Chaining is refused for commands that do not take it.
    assert_eq!(raw(&mut c, &[0x10, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E]).1, 0x6884);
}

#[test]
fn short_and_inconsistent_apdus_are_6700() {
    let mut c = fresh();
    for short in [&[][..], &[0x00], &[0x00, 0xA4], &[0x00, 0xA4, 0x04]] {
        assert_eq!(raw(&mut c, short), (vec![], 0x6700), "{short:02X?}");
    }
    for bad in [
        &[0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03][..], // Lc longer than the data
        &[0x00, 0xCB, 0x3F, 0xFF, 0x02, 0x5C, 0x03, 0x5F, 0xC1, 0x02], // Lc shorter by > 1
        &[0x00, 0x20, 0x00, 0x80, 0x08, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0xFF],
        &[0x00, 0xCB, 0x3F, 0xFF, 0x00, 0x00], // two-byte body
        &[0x00, 0xCB, 0x3F, 0xFF, 0x00, 0x00, 0x05, 0x5C], // extended Lc too long
        &[0x00, 0xCB, 0x3F, 0xFF, 0x00, 0x00, 0x00, 0x5C, 0x01], // extended Lc = 0
    ] {
        assert_eq!(raw(&mut c, bad).1, 0x6700, "{bad:02X?}");
    }
    // Nothing was counted against the PIN.
    assert_eq!(pin_retries(&mut c), (3, 3));
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// A card image with keys and objects, made once.
fn template_image() -> &'static CardImage {
    static TEMPLATE: OnceLock<CardImage> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut c = fresh();
        c.authenticate_mutual(&factory_key()).unwrap();
        for slot in [Slot::AUTHENTICATION, Slot::SIGNATURE, Slot::CARD_AUTHENTICATION] {
            c.generate(slot, KeyAlgorithm::EccP256, None, None).unwrap();
        }
        c.generate(Slot::KEY_MANAGEMENT, KeyAlgorithm::EccP384, None, None).unwrap();
        let chuid = Chuid::new_random(&FascN::with_identifier("9999", "9999", "999999").unwrap(), "20300101")
            .unwrap();
        c.put_data(tag::CHUID, &chuid.encode()).unwrap();
        c.into_transport().0.image().clone()
    })
}

/// A card from the template, optionally with 9B authenticated and the PIN verified so that
/// mutated commands get past the access checks.
fn template_card(authenticated: bool) -> VirtualCard {
    let mut c = connect(template_image().clone());
    if authenticated {
        c.authenticate_mutual(&factory_key()).unwrap();
        c.verify_pin(PIN).unwrap();
    }
    c.into_transport().0
}

/// Valid commands to mutate.
fn seed_commands() -> Vec<Vec<u8>> {
    let point256 = p256::SecretKey::random(&mut OsRng).public_key().to_encoded_point(false);
    let point384 = p384::SecretKey::random(&mut OsRng).public_key().to_encoded_point(false);
    let ga = |alg, slot, t: Vec<u8>| apdu(0, 0x87, alg, slot, &tlv::tlv(0x7C, &t), Some(256));
    let sign = |alg, slot, n| ga(alg, slot, [tlv::tlv(0x82, &[]), tlv::tlv(0x81, &vec![0x5A; n])].concat());
    let chuid = Chuid::new(&FascN::with_identifier("1111", "2222", "333333").unwrap(), [3; 16], "20291231")
        .unwrap()
        .encode();
    let put =
        |t: &[u8], object: &[u8]| apdu(0, 0xDB, 0x3F, 0xFF, &[&tlv::tlv(0x5C, t), object].concat(), None);
    let rsa_parts = {
        // A small fixed RSA-1024 key so that the seed costs nothing to build.
        static KEY: OnceLock<[Vec<u8>; 5]> = OnceLock::new();
        KEY.get_or_init(|| rsa_import_parts(&RsaPrivateKey::new(&mut OsRng, 1024).unwrap())).clone()
    };
    let mut rsa_import = Vec::new();
    for (t, v) in (1u32..).zip(&rsa_parts) {
        tlv::encode(t, v, &mut rsa_import);
    }
    vec![
        apdu(0, 0xA4, 0x04, 0x00, &PIV_AID, Some(256)),
        apdu(0, 0x20, 0x00, 0x80, b"123456\xFF\xFF", None),
        apdu(0, 0x20, 0x00, 0x80, b"000000\xFF\xFF", None),
        apdu(0, 0x24, 0x00, 0x80, b"123456\xFF\xFF654321\xFF\xFF", None),
        apdu(0, 0x24, 0x00, 0x81, b"1234567887654321", None),
        apdu(0, 0x2C, 0x00, 0x80, b"00000000654321\xFF\xFF", None),
        ga(0x03, 0x9B, vec![0x80, 0x00]),
        ga(0x03, 0x9B, vec![0x81, 0x00]),
        ga(0x03, 0x9B, [tlv::tlv(0x80, &[1; 8]), tlv::tlv(0x81, &[2; 8]), tlv::tlv(0x82, &[])].concat()),
        ga(0x03, 0x9B, tlv::tlv(0x82, &[3; 8])),
        sign(0x11, 0x9A, 32),
        sign(0x11, 0x9C, 32),
        sign(0x11, 0x9E, 32),
        sign(0x14, 0x9D, 48),
        ga(0x14, 0x9D, [tlv::tlv(0x82, &[]), tlv::tlv(0x85, point384.as_bytes())].concat()),
        ga(0x11, 0x9A, [tlv::tlv(0x82, &[]), tlv::tlv(0x85, point256.as_bytes())].concat()),
        put(&[0x5F, 0xC1, 0x02], &chuid),
        put(&[0x5F, 0xC1, 0x05], &CertificateObject::new(vec![0x30; 64]).encode(false)),
        put(&[0x5F, 0xC1, 0x07], &[0x53, 0x00]),
        apdu(0, 0xDB, 0x3F, 0xFF, &Discovery::default().encode(), None),
        apdu(0, 0xCB, 0x3F, 0xFF, &[0x5C, 0x03, 0x5F, 0xC1, 0x02], Some(256)),
        apdu(0, 0x47, 0x00, 0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x11], Some(256)),
        apdu(
            0,
            0x47,
            0x00,
            0x82,
            &[0xAC, 0x09, 0x80, 0x01, 0x14, 0xAA, 0x01, 0x03, 0xAB, 0x01, 0x02],
            Some(256),
        ),
        apdu(0, 0xFE, 0x11, 0x9A, &tlv::tlv(0x06, &[0x42; 32]), None),
        apdu(0, 0xFE, 0x14, 0x84, &[tlv::tlv(0x06, &[0x42; 48]), vec![0xAA, 0x01, 0x01]].concat(), None),
        apdu(0, 0xFE, 0x06, 0x9D, &rsa_import, None),
        apdu(0, 0xFF, 0xFF, 0xFF, &[&[0x08, 0x9B, 0x10][..], &[0x77; 16]].concat(), None),
        apdu(0, 0xF7, 0x00, 0x9A, &[], Some(256)),
        apdu(0, 0xF9, 0x9A, 0x00, &[], Some(256)),
        apdu(0, 0xFA, 0x05, 0x04, &[], None),
        apdu(0, 0xF6, 0x85, 0x9A, &[], None),
        apdu(0, 0xFB, 0x00, 0x00, &[], None),
    ]
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(seed_commands)
}

/// Whether `cmd` is a GENERATE asking for RSA, which would make a case take seconds.
fn generates_rsa(cmd: &[u8]) -> bool {
    cmd.get(1) == Some(&0x47)
        && cmd.windows(3).any(|w| w[0] == 0x80 && w[1] == 0x01 && matches!(w[2], 0x05 | 0x06 | 0x07 | 0x16))
}

/// Sends `cmd` and checks what a command that did not succeed may change: nothing, except that
/// PIN and PUK counters may go down.
fn process_checked(card: &mut VirtualCard, cmd: &[u8]) -> Result<u16, TestCaseError> {
    let before = card.image().clone();
    let resp = card.process(cmd);
    prop_assert!(resp.len() >= 2, "response without a status word");
    let sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
    let succeeded = sw == 0x9000 || sw & 0xFF00 == 0x6100;
    if !succeeded {
        prop_assert!(resp.len() == 2, "error {sw:04X} came with data");
        let after = card.image();
        prop_assert!(after.pin.left <= before.pin.left, "PIN tries went up on {sw:04X}");
        prop_assert!(after.puk.left <= before.puk.left, "PUK tries went up on {sw:04X}");
        let mut a = serde_json::to_value(after).unwrap();
        let mut b = serde_json::to_value(&before).unwrap();
        for v in [&mut a, &mut b] {
            v["pin"]["left"] = 0.into();
            v["puk"]["left"] = 0.into();
        }
        prop_assert_eq!(a, b, "the image changed on {:04X}", sw);
    }
    Ok(sw)
}

/// A command built around a known instruction with random parameters and data.
fn structured_command() -> impl Strategy<Value = Vec<u8>> {
    let ins = prop::sample::select(vec![
        0xA4u8, 0xCB, 0xDB, 0x20, 0x24, 0x2C, 0x47, 0x87, 0xC0, 0xFD, 0xF8, 0xF7, 0xFF, 0xFE, 0xF9, 0xFA,
        0xFB, 0xF6, 0x00,
    ]);
    let cla = prop::sample::select(vec![0x00u8, 0x10, 0x0C, 0x80]);
    let p = prop_oneof![
        any::<u8>(),
        prop::sample::select(vec![0x00u8, 0x3F, 0xFF, 0x80, 0x81, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x03, 0x11])
    ];
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 0..600),
        // Something TLV-shaped.
        (
            prop::sample::select(vec![0x5Cu8, 0x53, 0x7C, 0xAC, 0x06, 0x7E]),
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(t, v)| tlv::tlv(u32::from(t), &v)),
    ];
    let le = prop::option::of(prop_oneof![1usize..=256, Just(65536usize)]);
    (cla, ins, p.clone(), p, data, le)
        .prop_map(|(cla, ins, p1, p2, data, le)| apdu(cla, ins, p1, p2, &data, le))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_or_change_secrets(
        authenticated in any::<bool>(),
        inputs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
    ) {
        let mut card = template_card(authenticated);
        for input in &inputs {
            process_checked(&mut card, input)?;
        }
    }

    #[test]
    fn random_commands_never_panic_or_change_secrets(
        authenticated in any::<bool>(),
        cmds in prop::collection::vec(structured_command(), 1..8),
    ) {
        let mut card = template_card(authenticated);
        for cmd in &cmds {
            if generates_rsa(cmd) {
                continue;
            }
            process_checked(&mut card, cmd)?;
        }
    }

    #[test]
    fn mutated_commands_never_panic_or_change_secrets(
        authenticated in any::<bool>(),
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut cmd = seed.get(seeds()).clone();
        for (at, byte) in &edits {
            let i = at.index(cmd.len());
            cmd[i] = *byte;
        }
        if let Some(t) = truncate {
            cmd.truncate(t.index(cmd.len()));
        }
        if !generates_rsa(&cmd) {
            let mut card = template_card(authenticated);
            process_checked(&mut card, &cmd)?;
            // The card still answers sanely afterwards.
            let sw = process_checked(&mut card, &[0x00, 0xFD, 0x00, 0x00])?;
            prop_assert_eq!(sw, 0x9000);
        }
    }

    #[test]
    fn mutated_mutual_authentication_is_refused(
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut c = connect(template_image().clone());
        let key = factory_key();
        let (resp, sw) = raw(&mut c, &apdu(0, 0x87, 0x03, 0x9B, &[0x7C, 0x02, 0x80, 0x00], Some(256)));
        prop_assert_eq!(sw, 0x9000);
        let inner = tlv::parse_all(tlv::expect_single(&resp, 0x7C).unwrap()).unwrap();
        let mut witness = key.decrypt_block(tlv::require(&inner, 0x80).unwrap()).unwrap();
        witness[at.index(8)] ^= flip;
        let t = [tlv::tlv(0x80, &witness), tlv::tlv(0x81, &[9; 8]), tlv::tlv(0x82, &[])].concat();
        let mut card = c.into_transport().0;
        let sw = process_checked(&mut card, &apdu(0, 0x87, 0x03, 0x9B, &tlv::tlv(0x7C, &t), Some(256)))?;
        prop_assert_eq!(sw, 0x6982);
        let sw = process_checked(&mut card, &apdu(0, 0x47, 0, 0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x11], None))?;
        prop_assert_eq!(sw, 0x6982);
    }

    #[test]
    fn mutated_external_authentication_is_refused(
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut c = connect(template_image().clone());
        let (resp, sw) = bare_challenge(&mut c, 0x03);
        prop_assert_eq!(sw, 0x9000);
        let inner = tlv::parse_all(tlv::expect_single(&resp, 0x7C).unwrap()).unwrap();
        let mut answer = factory_key().encrypt_block(tlv::require(&inner, 0x81).unwrap()).unwrap();
        answer[at.index(8)] ^= flip;
        let mut card = c.into_transport().0;
        let data = tlv::tlv(0x7C, &tlv::tlv(0x82, &answer));
        let sw = process_checked(&mut card, &apdu(0, 0x87, 0x03, 0x9B, &data, None))?;
        prop_assert_eq!(sw, 0x6982);
        let sw = process_checked(&mut card, &apdu(0, 0x47, 0, 0x9A, &[0xAC, 0x03, 0x80, 0x01, 0x11], None))?;
        prop_assert_eq!(sw, 0x6982);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Persistence
// ---------------------------------------------------------------------------------------------

#[test]
fn image_file_keeps_pin_counters_and_keys_but_not_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    let img = new_image(&NewCard::default());
    let serial = img.serial;
    img.save(&path).unwrap();

    let pk = {
        let mut c = Piv::new(InProcess(VirtualCard::open(&path).unwrap()));
        c.change_reference(false, PIN, b"20252025").unwrap();
        c.verify_pin(b"20252025").unwrap();
        assert_sw(c.unblock_pin(b"00000000", b"111111"), 0x63C2);
        c.authenticate_mutual(&factory_key()).unwrap();
        let pk = c.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).unwrap();
        c.put_data(tag::CARD_CAPABILITY_CONTAINER, &Ccc::new_random().encode()).unwrap();
        assert_eq!(c.pin_status().unwrap(), None);
        pk
    };
    // Every change went to disk as it happened.
    let on_disk = CardImage::load(&path).unwrap();
    assert_eq!(on_disk.serial, serial);
    assert!(on_disk.keys.contains_key("9A"));
    assert_eq!((on_disk.puk.total, on_disk.puk.left), (3, 2));

    let mut c = Piv::new(InProcess(VirtualCard::open(&path).unwrap()));
    assert_eq!(c.get_serial().unwrap(), serial);
    // The session did not survive: PIN not verified, 9B not authenticated.
    assert_eq!(c.pin_status().unwrap(), Some(3));
    assert!(!mgm_authenticated(&mut c));
    assert_sw(sign_result(&mut c, Slot::AUTHENTICATION, KeyAlgorithm::EccP256), 0x6982);
    // The PIN, the counters and the key did.
    assert_eq!(puk_retries(&mut c), (3, 2));
    assert_eq!(c.get_metadata(0x80).unwrap().is_default, Some(false));
    let m = c.get_metadata(0x9A).unwrap();
    assert_eq!((m.public_key, m.origin), (Some(pk.to_inner_tlvs()), Some(1)));
    assert_sw(c.verify_pin(PIN), 0x63C2);
    drop(c);
    let mut c = Piv::new(InProcess(VirtualCard::open(&path).unwrap()));
    assert_eq!(c.pin_status().unwrap(), Some(2));
    c.verify_pin(b"20252025").unwrap();
    sign_verified(&mut c, Slot::AUTHENTICATION, KeyAlgorithm::EccP256, &pk);
    Ccc::decode(&c.get_data(tag::CARD_CAPABILITY_CONTAINER).unwrap()).unwrap();
    assert_eq!(pin_retries(&mut c), (3, 3));
}
