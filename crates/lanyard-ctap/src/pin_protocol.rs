//! PIN/UV auth protocols one and two (CTAP 2.1 §6.5.6 and §6.5.7), usable by either side.
//!
//! Both sides make an ephemeral P-256 key pair ([`KeyPair`]), exchange public keys as COSE keys,
//! and derive the same [`SharedSecret`] from the ECDH x-coordinate. The secret encrypts PINs and
//! PIN tokens (AES-256-CBC) and authenticates requests (HMAC-SHA-256):
//!
//! | | protocol 1 | protocol 2 |
//! |---|---|---|
//! | shared secret | SHA-256(Z), one 32-byte key for both uses | HKDF-SHA-256 → 32-byte HMAC key ‖ 32-byte AES key |
//! | encrypt | CBC with a zero IV | CBC with a random IV, sent in front of the ciphertext |
//! | authenticate | first 16 bytes of the HMAC | the whole 32-byte HMAC |
//!
//! Nothing here is authenticated end to end: whoever runs the ECDH learns the PIN it carries
//! (standards.md §4.7), which is why Lanyard's server only ever sets random temporary PINs itself.

use aes::Aes256;
use cipher::generic_array::GenericArray;
use cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint, ToEncodedPoint};
use p256::{NistP256, PublicKey, SecretKey};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::cbor::{self, MapRef, Value};

/// COSE key members and values used by the key agreement key.
const COSE_KTY: i64 = 1;
const COSE_ALG: i64 = 3;
const COSE_CRV: i64 = -1;
const COSE_X: i64 = -2;
const COSE_Y: i64 = -3;
const KTY_EC2: i64 = 2;
const CRV_P256: i64 = 1;
/// ECDH-ES + HKDF-256, the algorithm CTAP names for the key agreement key.
const ALG_ECDH_ES_HKDF_256: i64 = -25;

/// The longest PIN in bytes (CTAP §6.5.5.5: at most 63 bytes of UTF-8).
pub const MAX_PIN_BYTES: usize = 63;
/// A PIN is sent padded with zeros to this many bytes.
pub const PADDED_PIN_LEN: usize = 64;

/// Why a PIN protocol operation failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PinProtocolError {
    #[error("PIN/UV auth protocol {0} is not supported (1 and 2 are)")]
    UnsupportedProtocol(u64),
    #[error("the key agreement key is not a P-256 COSE key: {0}")]
    BadKey(String),
    #[error("the ciphertext length {0} is not a whole number of AES blocks")]
    BadCiphertext(usize),
    #[error("the PIN is {0} bytes; a PIN has at most 63 bytes and no zero byte")]
    BadPinLength(usize),
    #[error("the decrypted PIN block is not a zero-padded UTF-8 PIN")]
    BadPinBlock,
}

/// The PIN/UV auth protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinProtocol {
    One,
    Two,
}

impl PinProtocol {
    pub fn from_number(n: u64) -> Result<Self, PinProtocolError> {
        match n {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            other => Err(PinProtocolError::UnsupportedProtocol(other)),
        }
    }

    pub fn number(self) -> u64 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }

    /// How long [`authenticate`] output is.
    pub fn tag_len(self) -> usize {
        match self {
            Self::One => 16,
            Self::Two => 32,
        }
    }
}

/// An ephemeral key agreement key pair.
pub struct KeyPair {
    secret: SecretKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair(<secret>)")
    }
}

impl KeyPair {
    pub fn generate() -> Self {
        Self { secret: SecretKey::random(&mut OsRng) }
    }

    /// The public key as the COSE key CTAP sends (`keyAgreement`).
    pub fn public_cose(&self) -> Value {
        let point = self.secret.public_key().to_encoded_point(false);
        // An uncompressed point of a valid public key always has both coordinates.
        let x = point.x().map(|x| x.to_vec()).unwrap_or_default();
        let y = point.y().map(|y| y.to_vec()).unwrap_or_default();
        cbor::int_map([
            (COSE_KTY, cbor::int(KTY_EC2)),
            (COSE_ALG, cbor::int(ALG_ECDH_ES_HKDF_256)),
            (COSE_CRV, cbor::int(CRV_P256)),
            (COSE_X, Value::Bytes(x)),
            (COSE_Y, Value::Bytes(y)),
        ])
    }

    /// ECDH with the peer's COSE key, then the protocol's KDF.
    pub fn agree(&self, protocol: PinProtocol, peer: &Value) -> Result<SharedSecret, PinProtocolError> {
        let peer = parse_cose_key(peer)?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let z = shared.raw_secret_bytes();
        let key = match protocol {
            PinProtocol::One => Zeroizing::new(Sha256::digest(z).to_vec()),
            PinProtocol::Two => {
                let mut key = Zeroizing::new(vec![0u8; 64]);
                let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), z);
                // 32-byte outputs are far below HKDF-SHA-256's 8160-byte limit.
                let (hmac_key, aes_key) = key.split_at_mut(32);
                hk.expand(b"CTAP2 HMAC key", hmac_key)
                    .map_err(|_| PinProtocolError::BadKey("HKDF".into()))?;
                hk.expand(b"CTAP2 AES key", aes_key).map_err(|_| PinProtocolError::BadKey("HKDF".into()))?;
                key
            }
        };
        Ok(SharedSecret { protocol, key })
    }
}

/// Reads a COSE EC2 P-256 key (`keyAgreement`) and checks the point is on the curve.
pub fn parse_cose_key(v: &Value) -> Result<PublicKey, PinProtocolError> {
    let bad = |why: &str| PinProtocolError::BadKey(why.to_owned());
    let m = MapRef::new(v).map_err(|e| bad(&e.to_string()))?;
    let int_member =
        |k: i64| m.get(k).map(|v| cbor::as_int(v, k)).transpose().map_err(|e| bad(&e.to_string()));
    if int_member(COSE_KTY)? != Some(KTY_EC2) {
        return Err(bad("kty is not EC2"));
    }
    if int_member(COSE_CRV)? != Some(CRV_P256) {
        return Err(bad("crv is not P-256"));
    }
    let coord = |k: i64| -> Result<&[u8], PinProtocolError> {
        let b = m.bytes(k).map_err(|e| bad(&e.to_string()))?.ok_or_else(|| bad("a coordinate is missing"))?;
        if b.len() == 32 { Ok(b) } else { Err(bad("a coordinate is not 32 bytes")) }
    };
    let point = EncodedPoint::<NistP256>::from_affine_coordinates(
        GenericArray::from_slice(coord(COSE_X)?),
        GenericArray::from_slice(coord(COSE_Y)?),
        false,
    );
    Option::from(PublicKey::from_encoded_point(&point)).ok_or_else(|| bad("the point is not on P-256"))
}

/// The secret both sides derived; wiped on drop.
pub struct SharedSecret {
    protocol: PinProtocol,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedSecret({:?}, <secret>)", self.protocol)
    }
}

impl SharedSecret {
    pub fn protocol(&self) -> PinProtocol {
        self.protocol
    }

    fn aes_key(&self) -> &[u8] {
        match self.protocol {
            PinProtocol::One => &self.key,
            PinProtocol::Two => &self.key[32..],
        }
    }

    fn hmac_key(&self) -> &[u8] {
        match self.protocol {
            PinProtocol::One => &self.key,
            PinProtocol::Two => &self.key[..32],
        }
    }

    /// Encrypts whole AES blocks (PIN blocks, PIN hashes and tokens always are).
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, PinProtocolError> {
        if !plain.len().is_multiple_of(16) {
            return Err(PinProtocolError::BadCiphertext(plain.len()));
        }
        let mut iv = [0u8; 16];
        if self.protocol == PinProtocol::Two {
            OsRng.fill_bytes(&mut iv);
        }
        let ct = cbc_encrypt(self.aes_key(), &iv, plain);
        Ok(match self.protocol {
            PinProtocol::One => ct,
            PinProtocol::Two => [iv.as_slice(), &ct].concat(),
        })
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, PinProtocolError> {
        let (iv, ct) = match self.protocol {
            PinProtocol::One => ([0u8; 16], data),
            PinProtocol::Two => {
                if data.len() < 16 {
                    return Err(PinProtocolError::BadCiphertext(data.len()));
                }
                let (iv, ct) = data.split_at(16);
                let mut fixed = [0u8; 16];
                fixed.copy_from_slice(iv);
                (fixed, ct)
            }
        };
        if ct.is_empty() || !ct.len().is_multiple_of(16) {
            return Err(PinProtocolError::BadCiphertext(ct.len()));
        }
        Ok(cbc_decrypt(self.aes_key(), &iv, ct))
    }

    /// The protocol's MAC of `message` under the shared secret.
    pub fn authenticate(&self, message: &[u8]) -> Vec<u8> {
        authenticate(self.protocol, self.hmac_key(), message)
    }

    /// Checks `tag` in constant time.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        verify(self.protocol, self.hmac_key(), message, tag)
    }

    /// `newPinEnc`: the PIN zero-padded to 64 bytes, encrypted.
    pub fn encrypt_pin(&self, pin: &str) -> Result<Vec<u8>, PinProtocolError> {
        self.encrypt(&pad_pin(pin)?[..])
    }

    /// Reads a `newPinEnc` back to the PIN (authenticator side).
    pub fn decrypt_pin(&self, new_pin_enc: &[u8]) -> Result<Zeroizing<String>, PinProtocolError> {
        let block = self.decrypt(new_pin_enc)?;
        if block.len() < PADDED_PIN_LEN {
            return Err(PinProtocolError::BadPinBlock);
        }
        let len = block.iter().position(|b| *b == 0).unwrap_or(block.len());
        if block[len..].iter().any(|b| *b != 0) || len > MAX_PIN_BYTES {
            return Err(PinProtocolError::BadPinBlock);
        }
        std::str::from_utf8(&block[..len])
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| PinProtocolError::BadPinBlock)
    }

    /// `pinHashEnc`: the first 16 bytes of SHA-256(PIN), encrypted.
    pub fn encrypt_pin_hash(&self, pin: &str) -> Result<Vec<u8>, PinProtocolError> {
        self.encrypt(&pin_hash(pin))
    }
}

/// The PIN zero-padded to 64 bytes.
pub fn pad_pin(pin: &str) -> Result<Zeroizing<[u8; PADDED_PIN_LEN]>, PinProtocolError> {
    let bytes = pin.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PIN_BYTES || bytes.contains(&0) {
        return Err(PinProtocolError::BadPinLength(bytes.len()));
    }
    let mut out = Zeroizing::new([0u8; PADDED_PIN_LEN]);
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// LEFT(SHA-256(PIN), 16), what the authenticator stores and `pinHashEnc` carries.
pub fn pin_hash(pin: &str) -> [u8; 16] {
    let digest = Sha256::digest(pin.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The protocol's MAC of `message` under `key` (a shared secret's HMAC key or a PIN token).
pub fn authenticate(protocol: PinProtocol, key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return Vec::new() };
    mac.update(message);
    let mut tag = mac.finalize().into_bytes().to_vec();
    tag.truncate(protocol.tag_len());
    tag
}

/// Checks a MAC in constant time; a tag of the wrong length fails.
pub fn verify(protocol: PinProtocol, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let expected = authenticate(protocol, key, message);
    !expected.is_empty() && expected.len() == tag.len() && bool::from(expected.ct_eq(tag))
}

fn cbc_encrypt(key: &[u8], iv: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let cipher = Aes256::new(GenericArray::from_slice(key));
    let mut prev = *iv;
    let mut out = Vec::with_capacity(plain.len());
    for chunk in plain.chunks_exact(16) {
        let mut block = GenericArray::clone_from_slice(chunk);
        block.iter_mut().zip(prev.iter()).for_each(|(b, p)| *b ^= p);
        cipher.encrypt_block(&mut block);
        prev.copy_from_slice(&block);
        out.extend_from_slice(&block);
    }
    out
}

fn cbc_decrypt(key: &[u8], iv: &[u8; 16], ct: &[u8]) -> Zeroizing<Vec<u8>> {
    let cipher = Aes256::new(GenericArray::from_slice(key));
    let mut prev = *iv;
    let mut out = Zeroizing::new(Vec::with_capacity(ct.len()));
    for chunk in ct.chunks_exact(16) {
        let mut block = GenericArray::clone_from_slice(chunk);
        cipher.decrypt_block(&mut block);
        block.iter_mut().zip(prev.iter()).for_each(|(b, p)| *b ^= p);
        prev.copy_from_slice(chunk);
        out.extend_from_slice(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(protocol: PinProtocol) -> (SharedSecret, SharedSecret) {
        let (a, b) = (KeyPair::generate(), KeyPair::generate());
        let sa = a.agree(protocol, &b.public_cose());
        let sb = b.agree(protocol, &a.public_cose());
        match (sa, sb) {
            (Ok(sa), Ok(sb)) => (sa, sb),
            other => panic!("agreement failed: {other:?}"),
        }
    }

    #[test]
    fn both_sides_derive_the_same_secret() {
        for p in [PinProtocol::One, PinProtocol::Two] {
            let (a, b) = pair(p);
            assert_eq!(*a.key, *b.key);
            assert_eq!(a.key.len(), if p == PinProtocol::One { 32 } else { 64 });
            let enc = a.encrypt_pin("123456").unwrap_or_default();
            assert_eq!(enc.len(), if p == PinProtocol::One { 64 } else { 80 });
            assert_eq!(b.decrypt_pin(&enc).map(|s| s.to_string()), Ok("123456".to_owned()));
            let tag = a.authenticate(&enc);
            assert_eq!(tag.len(), p.tag_len());
            assert!(b.verify(&enc, &tag));
            assert!(!b.verify(&enc, &tag[..tag.len() - 1]));
            assert!(!b.verify(b"other", &tag));
        }
    }

    #[test]
    fn protocol_two_uses_a_fresh_iv_and_separate_keys() {
        let (a, _) = pair(PinProtocol::Two);
        let one = a.encrypt(&[7u8; 16]).unwrap_or_default();
        let two = a.encrypt(&[7u8; 16]).unwrap_or_default();
        assert_ne!(one, two);
        assert_ne!(a.hmac_key(), a.aes_key());
    }

    /// CBC with a zero IV, checked against NIST SP 800-38A F.2.5 (AES-256 CBC, first block,
    /// with the IV folded into the plaintext).
    #[test]
    fn cbc_matches_the_nist_vector() {
        let key = hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .unwrap_or_default();
        let iv: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let plain = hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
            .unwrap_or_default();
        let ct = cbc_encrypt(&key, &iv, &plain);
        assert_eq!(hex::encode(&ct), "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d");
        assert_eq!(*cbc_decrypt(&key, &iv, &ct), plain);
    }

    #[test]
    fn refuses_bad_keys_pins_and_ciphertexts() {
        let k = KeyPair::generate();
        let mut cose = k.public_cose();
        if let Value::Map(m) = &mut cose {
            for (key, v) in m.iter_mut() {
                if *key == cbor::int(COSE_Y) {
                    *v = Value::Bytes(vec![1; 32]);
                }
            }
        }
        assert_eq!(
            k.agree(PinProtocol::Two, &cose).err(),
            Some(PinProtocolError::BadKey("the point is not on P-256".into()))
        );
        assert!(matches!(k.agree(PinProtocol::One, &cbor::int(3)), Err(PinProtocolError::BadKey(_))));
        assert_eq!(pad_pin("").err(), Some(PinProtocolError::BadPinLength(0)));
        assert_eq!(pad_pin(&"1".repeat(64)).err(), Some(PinProtocolError::BadPinLength(64)));
        assert!(pad_pin(&"1".repeat(63)).is_ok());
        let (a, _) = pair(PinProtocol::Two);
        assert_eq!(a.decrypt(&[0; 15]).err(), Some(PinProtocolError::BadCiphertext(15)));
        assert_eq!(a.decrypt(&[0; 20]).err(), Some(PinProtocolError::BadCiphertext(4)));
        assert_eq!(a.decrypt(&[0; 16]).err(), Some(PinProtocolError::BadCiphertext(0)));
        assert_eq!(PinProtocol::from_number(3), Err(PinProtocolError::UnsupportedProtocol(3)));
        // A block that is not zero-padded after the PIN is refused.
        let mut block = [0u8; 64];
        block[..4].copy_from_slice(b"1234");
        block[10] = 1;
        let enc = a.encrypt(&block).unwrap_or_default();
        assert_eq!(a.decrypt_pin(&enc).err(), Some(PinProtocolError::BadPinBlock));
    }

    proptest! {
        #[test]
        fn cose_key_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(v) = cbor::decode(&bytes) {
                let _ = parse_cose_key(&v);
            }
        }

        #[test]
        fn decrypt_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100), two in any::<bool>()) {
            let p = if two { PinProtocol::Two } else { PinProtocol::One };
            let (a, _) = pair(p);
            let _ = a.decrypt_pin(&data);
        }
    }
}
