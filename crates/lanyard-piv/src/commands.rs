//! One builder per PIV / YubiKey command and one parser per structured response, sans-IO.
//!
//! [`crate::client::Piv`] sends these over a transport; the server's personalization engine hands
//! them to a relay. Both therefore encode every APDU the same way. Builders return logical
//! commands: chaining and `61xx` collection are the sender's business
//! ([`crate::client::Piv::exchange`]).

use crate::PivError;
use crate::apdu::Command;
use crate::mgmkey::{ManagementKey, MgmAlgorithm};
use crate::tlv;
use crate::types::{KeyAlgorithm, PIV_AID, PinPolicy, PublicKey, Slot, TouchPolicy};
use zeroize::Zeroizing;

pub const INS_SELECT: u8 = 0xA4;
pub const INS_GET_DATA: u8 = 0xCB;
pub const INS_PUT_DATA: u8 = 0xDB;
pub const INS_VERIFY: u8 = 0x20;
pub const INS_CHANGE_REFERENCE: u8 = 0x24;
pub const INS_RESET_RETRY: u8 = 0x2C;
pub const INS_GENERATE: u8 = 0x47;
pub const INS_GENERAL_AUTHENTICATE: u8 = 0x87;
pub const INS_GET_RESPONSE: u8 = 0xC0;
pub const INS_GET_VERSION: u8 = 0xFD;
pub const INS_GET_SERIAL: u8 = 0xF8;
pub const INS_GET_METADATA: u8 = 0xF7;
pub const INS_SET_MGMKEY: u8 = 0xFF;
pub const INS_IMPORT_KEY: u8 = 0xFE;
pub const INS_ATTEST: u8 = 0xF9;
pub const INS_SET_PIN_RETRIES: u8 = 0xFA;
pub const INS_RESET: u8 = 0xFB;
pub const INS_MOVE_KEY: u8 = 0xF6;

/// Key references for VERIFY / CHANGE REFERENCE DATA.
pub const REF_PIV_PIN: u8 = 0x80;
pub const REF_PUK: u8 = 0x81;

/// Pads a PIN or PUK to the 8-byte card format (`FF` fill), refusing what cannot fit.
pub fn pad_pin(pin: &[u8]) -> Result<Zeroizing<[u8; 8]>, PivError> {
    if pin.len() > 8 {
        return Err(PivError::InvalidArgument("PIN/PUK longer than 8 bytes"));
    }
    let mut out = Zeroizing::new([0xFF; 8]);
    out[..pin.len()].copy_from_slice(pin);
    Ok(out)
}

/// The card's firmware version as GET VERSION reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u8, pub u8, pub u8);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Parsed SELECT response (application property template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationProperties {
    pub aid_or_pix: Vec<u8>,
    pub label: Option<String>,
    pub url: Option<String>,
    pub algorithms: Vec<u8>,
}

/// GET METADATA for a key slot, the management key or a PIN/PUK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    pub algorithm: Option<u8>,
    pub pin_policy: Option<PinPolicy>,
    pub touch_policy: Option<TouchPolicy>,
    /// 1 = generated on the card, 2 = imported.
    pub origin: Option<u8>,
    pub public_key: Option<Vec<u8>>,
    pub is_default: Option<bool>,
    /// (total, remaining) for PIN and PUK.
    pub retries: Option<(u8, u8)>,
}

fn tag_bytes(tag: u32) -> Vec<u8> {
    let mut v = Vec::new();
    tlv::encode_tag(tag, &mut v);
    v
}

/// SELECT the PIV application by its full AID.
pub fn select() -> Command {
    Command::new(0, INS_SELECT, 0x04, 0x00).with_data(PIV_AID.to_vec()).with_le(256)
}

/// Parses the application property template SELECT returns.
pub fn parse_select(data: &[u8]) -> Result<ApplicationProperties, PivError> {
    let apt = tlv::expect_single(data, 0x61)?;
    let tlvs = tlv::parse_all(apt)?;
    let aid_or_pix = tlv::require(&tlvs, 0x4F)?.to_vec();
    let text = |t| tlv::find(&tlvs, t).map(|v| String::from_utf8_lossy(v).into_owned());
    let mut algorithms = Vec::new();
    if let Some(ac) = tlv::find(&tlvs, 0xAC) {
        for t in tlv::parse_all(ac)? {
            if t.tag == 0x80 && t.value.len() == 1 {
                algorithms.push(t.value[0]);
            }
        }
    }
    Ok(ApplicationProperties { aid_or_pix, label: text(0x50), url: text(0x5F50), algorithms })
}

/// GET DATA of one object.
pub fn get_data(tag: u32) -> Command {
    let mut q = Vec::new();
    tlv::encode(0x5C, &tag_bytes(tag), &mut q);
    Command::new(0, INS_GET_DATA, 0x3F, 0xFF).with_data(q).with_le(256)
}

/// PUT DATA of a complete object (`53 …`, or the raw discovery/BIT template).
pub fn put_data(tag: u32, object: &[u8]) -> Command {
    let mut data = Vec::with_capacity(object.len() + 6);
    if tag != crate::types::tag::DISCOVERY && tag != crate::types::tag::BIT_GROUP_TEMPLATE {
        tlv::encode(0x5C, &tag_bytes(tag), &mut data);
    }
    data.extend_from_slice(object);
    Command::new(0, INS_PUT_DATA, 0x3F, 0xFF).with_data(data)
}

/// VERIFY the PIV PIN.
pub fn verify_pin(pin: &[u8]) -> Result<Command, PivError> {
    let p = pad_pin(pin)?;
    Ok(Command::new(0, INS_VERIFY, 0, REF_PIV_PIN).with_data(p.to_vec()))
}

/// VERIFY with no data: asks for the PIN status.
pub fn pin_status() -> Command {
    Command::new(0, INS_VERIFY, 0, REF_PIV_PIN)
}

/// VERIFY with P1=FF: drops PIN verification.
pub fn reset_pin_verification() -> Command {
    Command::new(0, INS_VERIFY, 0xFF, REF_PIV_PIN)
}

/// CHANGE REFERENCE DATA for the PIN (`puk == false`) or the PUK.
pub fn change_reference(puk: bool, old: &[u8], new: &[u8]) -> Result<Command, PivError> {
    let mut data = Zeroizing::new(Vec::with_capacity(16));
    data.extend_from_slice(&*pad_pin(old)?);
    data.extend_from_slice(&*pad_pin(new)?);
    let p2 = if puk { REF_PUK } else { REF_PIV_PIN };
    Ok(Command::new(0, INS_CHANGE_REFERENCE, 0, p2).with_data(data.to_vec()))
}

/// RESET RETRY COUNTER: unblocks the PIN with the PUK and sets a new PIN.
pub fn unblock_pin(puk: &[u8], new_pin: &[u8]) -> Result<Command, PivError> {
    let mut data = Zeroizing::new(Vec::with_capacity(16));
    data.extend_from_slice(&*pad_pin(puk)?);
    data.extend_from_slice(&*pad_pin(new_pin)?);
    Ok(Command::new(0, INS_RESET_RETRY, 0, REF_PIV_PIN).with_data(data.to_vec()))
}

/// GENERAL AUTHENTICATE with a dynamic authentication template (`7C` is added here).
pub fn general_authenticate(alg: u8, key: u8, template: &[u8]) -> Command {
    Command::new(0, INS_GENERAL_AUTHENTICATE, alg, key).with_data(tlv::tlv(0x7C, template)).with_le(256)
}

/// The inside of the `7C` template a GENERAL AUTHENTICATE answered with.
pub fn parse_general_authenticate(data: &[u8]) -> Result<Vec<u8>, PivError> {
    Ok(tlv::expect_single(data, 0x7C)?.to_vec())
}

/// Mutual authentication, first command: asks the card for an encrypted witness.
pub fn mutual_auth_witness(alg: MgmAlgorithm) -> Command {
    general_authenticate(alg.id(), Slot::MANAGEMENT.0, &[0x80, 0x00])
}

/// Mutual authentication, second command: decrypts the card's witness (the response to
/// [`mutual_auth_witness`]) and sends it back with our `challenge`, which must be one block.
pub fn mutual_auth_response(
    key: &ManagementKey,
    witness_response: &[u8],
    challenge: &[u8],
) -> Result<Command, PivError> {
    let alg = key.algorithm();
    let n = alg.block_len();
    if challenge.len() != n {
        return Err(PivError::InvalidArgument("challenge is not one cipher block"));
    }
    let inner = parse_general_authenticate(witness_response)?;
    let tlvs = tlv::parse_all(&inner)?;
    let enc_witness = tlv::require(&tlvs, 0x80)?;
    if enc_witness.len() != n {
        return Err(PivError::Malformed("witness is not one cipher block"));
    }
    let witness = Zeroizing::new(key.decrypt_block(enc_witness)?);
    let mut t = Zeroizing::new(Vec::new());
    tlv::encode(0x80, &witness, &mut t);
    tlv::encode(0x81, challenge, &mut t);
    tlv::encode(0x82, &[], &mut t);
    Ok(general_authenticate(alg.id(), Slot::MANAGEMENT.0, &t))
}

/// Checks the card's answer to [`mutual_auth_response`]: it must be our challenge encrypted
/// under `key`, or the card does not know the key.
pub fn check_mutual_auth(key: &ManagementKey, challenge: &[u8], response: &[u8]) -> Result<(), PivError> {
    let inner = parse_general_authenticate(response)?;
    let tlvs = tlv::parse_all(&inner)?;
    let card_resp = tlv::require(&tlvs, 0x82)?;
    if card_resp != key.encrypt_block(challenge)?.as_slice() {
        return Err(PivError::CardAuthenticationFailed);
    }
    Ok(())
}

/// GENERATE ASYMMETRIC KEY PAIR. Policies are YubiKey extensions; `None` for a plain PIV card.
pub fn generate(
    slot: Slot,
    alg: KeyAlgorithm,
    pin_policy: Option<PinPolicy>,
    touch_policy: Option<TouchPolicy>,
) -> Command {
    let mut t = Vec::new();
    tlv::encode(0x80, &[alg.id()], &mut t);
    if let Some(p) = pin_policy {
        tlv::encode(0xAA, &[p.id()], &mut t);
    }
    if let Some(p) = touch_policy {
        tlv::encode(0xAB, &[p.id()], &mut t);
    }
    Command::new(0, INS_GENERATE, 0, slot.0).with_data(tlv::tlv(0xAC, &t)).with_le(256)
}

/// The public key a GENERATE answered with (`7F49 { 81, 82 | 86 }`), checked against `alg`.
pub fn parse_generate(alg: KeyAlgorithm, data: &[u8]) -> Result<PublicKey, PivError> {
    let inner = tlv::expect_single(data, 0x7F49)?;
    PublicKey::from_inner_tlvs(alg, inner)
}

/// GET VERSION (YubiKey).
pub fn get_version() -> Command {
    Command::new(0, INS_GET_VERSION, 0, 0).with_le(256)
}

pub fn parse_version(data: &[u8]) -> Result<Version, PivError> {
    match data {
        [a, b, c] => Ok(Version(*a, *b, *c)),
        _ => Err(PivError::Malformed("GET VERSION did not return 3 bytes")),
    }
}

/// GET SERIAL (YubiKey).
pub fn get_serial() -> Command {
    Command::new(0, INS_GET_SERIAL, 0, 0).with_le(256)
}

pub fn parse_serial(data: &[u8]) -> Result<u32, PivError> {
    let b: [u8; 4] = data.try_into().map_err(|_| PivError::Malformed("GET SERIAL did not return 4 bytes"))?;
    Ok(u32::from_be_bytes(b))
}

/// GET METADATA (YubiKey 5.3+) for a slot, the management key (9B), the PIN (80) or PUK (81).
pub fn get_metadata(slot: u8) -> Command {
    Command::new(0, INS_GET_METADATA, 0, slot).with_le(256)
}

pub fn parse_metadata(data: &[u8]) -> Result<Metadata, PivError> {
    let mut m = Metadata::default();
    for t in tlv::parse_all(data)? {
        match (t.tag, t.value) {
            (0x01, [a]) => m.algorithm = Some(*a),
            (0x02, [p, tp]) => {
                m.pin_policy = PinPolicy::from_id(*p);
                m.touch_policy = TouchPolicy::from_id(*tp);
            }
            (0x03, [o]) => m.origin = Some(*o),
            (0x04, pk) => m.public_key = Some(pk.to_vec()),
            (0x05, [d]) => m.is_default = Some(*d != 0),
            (0x06, [total, left]) => m.retries = Some((*total, *left)),
            _ => {}
        }
    }
    Ok(m)
}

/// SET MANAGEMENT KEY (YubiKey; needs the current key authenticated).
pub fn set_management_key(key: &ManagementKey, require_touch: bool) -> Command {
    let mut data =
        Zeroizing::new(vec![key.algorithm().id(), Slot::MANAGEMENT.0, key.algorithm().key_len() as u8]);
    data.extend_from_slice(key.expose_bytes());
    let p2 = if require_touch { 0xFE } else { 0xFF };
    Command::new(0, INS_SET_MGMKEY, 0xFF, p2).with_data(data.to_vec())
}

/// ATTEST (YubiKey 4.3+): the response is a DER certificate for the key in `slot`.
pub fn attest(slot: Slot) -> Command {
    Command::new(0, INS_ATTEST, slot.0, 0).with_le(256)
}

/// SET PIN RETRIES (YubiKey; needs the management key and the PIN); resets PIN and PUK.
pub fn set_pin_retries(pin_tries: u8, puk_tries: u8) -> Command {
    Command::new(0, INS_SET_PIN_RETRIES, pin_tries, puk_tries)
}

/// RESET the PIV application (YubiKey; PIN and PUK must both be blocked).
pub fn reset() -> Command {
    Command::new(0, INS_RESET, 0, 0)
}

/// MOVE KEY from one slot to another, or delete it with `to = 0xFF` (YubiKey 5.7).
pub fn move_key(from: Slot, to: u8) -> Command {
    Command::new(0, INS_MOVE_KEY, to, from.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_encode_the_documented_apdus() {
        assert_eq!(hex::encode(get_data(0x5FC102).to_bytes().unwrap()), "00cb3fff055c035fc10200");
        assert_eq!(hex::encode(put_data(0x7E, &[0x7E, 0x00]).to_bytes().unwrap()), "00db3fff027e00");
        assert_eq!(
            hex::encode(put_data(0x5FC10C, &[0x53, 0x00]).to_bytes().unwrap()),
            "00db3fff075c035fc10c5300"
        );
        assert_eq!(
            hex::encode(verify_pin(b"123456").unwrap().to_bytes().unwrap()),
            "0020008008313233343536ffff"
        );
        assert!(verify_pin(b"123456789").is_err());
        assert_eq!(
            hex::encode(
                generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None).to_bytes().unwrap()
            ),
            "0047009a05ac0380011100"
        );
        assert_eq!(hex::encode(set_pin_retries(5, 4).to_bytes().unwrap()), "00fa0504");
        assert_eq!(hex::encode(attest(Slot::CARD_AUTHENTICATION).to_bytes().unwrap()), "00f99e0000");
    }

    #[test]
    fn parsers_refuse_wrong_sizes() {
        assert_eq!(parse_version(&[5, 7, 2]).unwrap(), Version(5, 7, 2));
        assert!(parse_version(&[5, 7]).is_err());
        assert_eq!(parse_serial(&[0, 0, 1, 2]).unwrap(), 258);
        assert!(parse_serial(&[1, 2, 3]).is_err());
        assert!(parse_generate(KeyAlgorithm::EccP256, &[0x7F, 0x49, 0x03, 0x86, 0x01, 0x04]).is_err());
        let m = parse_metadata(&[0x01, 0x01, 0x03, 0x05, 0x01, 0x01, 0x06, 0x02, 0x03, 0x02]).unwrap();
        assert_eq!((m.algorithm, m.is_default, m.retries), (Some(3), Some(true), Some((3, 2))));
        assert!(parse_metadata(&[0x01, 0x05]).is_err());
    }

    /// Plays the card's side of SP 800-73 App. A.2 against the host builders.
    #[test]
    fn mutual_authentication_round_trip() {
        let key = ManagementKey::factory(MgmAlgorithm::TripleDes);
        let first = mutual_auth_witness(key.algorithm());
        assert_eq!(hex::encode(first.to_bytes().unwrap()), "0087039b047c02800000");
        let witness = [7u8; 8];
        let witness_resp = tlv::tlv(0x7C, &tlv::tlv(0x80, &key.encrypt_block(&witness).unwrap()));
        let challenge = [9u8; 8];
        let second = mutual_auth_response(&key, &witness_resp, &challenge).unwrap();
        let inner = tlv::expect_single(&second.data, 0x7C).unwrap();
        let tlvs = tlv::parse_all(inner).unwrap();
        assert_eq!(tlv::find(&tlvs, 0x80), Some(&witness[..]));
        assert_eq!(tlv::find(&tlvs, 0x81), Some(&challenge[..]));
        let good = tlv::tlv(0x7C, &tlv::tlv(0x82, &key.encrypt_block(&challenge).unwrap()));
        check_mutual_auth(&key, &challenge, &good).unwrap();
        let bad = tlv::tlv(0x7C, &tlv::tlv(0x82, &[0u8; 8]));
        assert!(matches!(check_mutual_auth(&key, &challenge, &bad), Err(PivError::CardAuthenticationFailed)));
        assert!(mutual_auth_response(&key, &witness_resp, &[0u8; 16]).is_err());
        assert!(mutual_auth_response(&key, b"junk", &challenge).is_err());
    }
}
