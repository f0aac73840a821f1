//! Private keys held in the card's slots. RustCrypto is fine here: this is the software test
//! card, never the CA (see CONVENTIONS.md on RUSTSEC-2023-0071).

use der::{Decode, Encode};
use lanyard_piv::{KeyAlgorithm, PublicKey, StatusWord};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use spki::SubjectPublicKeyInfoOwned;

/// A private key in a slot.
#[derive(Clone)]
pub enum CardKey {
    Rsa(Box<RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
}

impl std::fmt::Debug for CardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardKey({}, <private>)", self.algorithm())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("algorithm {0} is not supported by the virtual card")]
    Unsupported(KeyAlgorithm),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("stored key is corrupt: {0}")]
    Corrupt(String),
}

impl CardKey {
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, KeyError> {
        let mut rng = rand::rngs::OsRng;
        Ok(match alg {
            KeyAlgorithm::Rsa1024 | KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let key = RsaPrivateKey::new(&mut rng, alg.size_bytes() * 8)
                    .map_err(|e| KeyError::Generate(e.to_string()))?;
                CardKey::Rsa(Box::new(key))
            }
            KeyAlgorithm::EccP256 => CardKey::P256(p256::SecretKey::random(&mut rng)),
            KeyAlgorithm::EccP384 => CardKey::P384(p384::SecretKey::random(&mut rng)),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            CardKey::Rsa(k) => match k.size() {
                128 => KeyAlgorithm::Rsa1024,
                256 => KeyAlgorithm::Rsa2048,
                384 => KeyAlgorithm::Rsa3072,
                _ => KeyAlgorithm::Rsa4096,
            },
            CardKey::P256(_) => KeyAlgorithm::EccP256,
            CardKey::P384(_) => KeyAlgorithm::EccP384,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            CardKey::Rsa(k) => PublicKey::Rsa {
                modulus: left_pad(&k.n().to_bytes_be(), k.size()),
                exponent: k.e().to_bytes_be(),
            },
            CardKey::P256(k) => PublicKey::Ec {
                algorithm: KeyAlgorithm::EccP256,
                point: k.public_key().to_sec1_bytes().to_vec(),
            },
            CardKey::P384(k) => PublicKey::Ec {
                algorithm: KeyAlgorithm::EccP384,
                point: k.public_key().to_sec1_bytes().to_vec(),
            },
        }
    }

    /// The public key as an X.509 SubjectPublicKeyInfo.
    pub fn spki(&self) -> Result<SubjectPublicKeyInfoOwned, KeyError> {
        use spki::EncodePublicKey;
        let der = match self {
            CardKey::Rsa(k) => k.to_public_key().to_public_key_der(),
            CardKey::P256(k) => k.public_key().to_public_key_der(),
            CardKey::P384(k) => k.public_key().to_public_key_der(),
        }
        .map_err(|e| KeyError::Corrupt(e.to_string()))?;
        SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| KeyError::Corrupt(e.to_string()))
    }

    /// The raw private-key operation of GENERAL AUTHENTICATE tag 81: for RSA a modulus-size block
    /// (already padded by the host), for ECDSA a hash (left-padded or truncated to field size by
    /// the host; shorter input is left-padded here). Returns the `82` response value.
    pub fn private_operation(&self, input: &[u8]) -> Result<Vec<u8>, StatusWord> {
        match self {
            CardKey::Rsa(k) => {
                if input.len() != k.size() {
                    return Err(StatusWord::IncorrectData);
                }
                let c = BigUint::from_bytes_be(input);
                if &c >= k.n() {
                    return Err(StatusWord::IncorrectData);
                }
                let m = rsa::hazmat::rsa_decrypt_and_check(k.as_ref(), Some(&mut rand::rngs::OsRng), &c)
                    .map_err(|_| StatusWord::IncorrectData)?;
                Ok(left_pad(&m.to_bytes_be(), k.size()))
            }
            CardKey::P256(k) => {
                use signature::hazmat::PrehashSigner;
                let digest = fit(input, 32)?;
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k)
                    .sign_prehash(&digest)
                    .map_err(|_| StatusWord::IncorrectData)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            CardKey::P384(k) => {
                use signature::hazmat::PrehashSigner;
                let digest = fit(input, 48)?;
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k)
                    .sign_prehash(&digest)
                    .map_err(|_| StatusWord::IncorrectData)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
        }
    }

    /// ECDH (GENERAL AUTHENTICATE tag 85): the x-coordinate of the shared point.
    pub fn ecdh(&self, peer: &[u8]) -> Result<Vec<u8>, StatusWord> {
        match self {
            CardKey::Rsa(_) => Err(StatusWord::IncorrectP1P2),
            CardKey::P256(k) => {
                let p = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| StatusWord::IncorrectData)?;
                Ok(p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), p.as_affine())
                    .raw_secret_bytes()
                    .to_vec())
            }
            CardKey::P384(k) => {
                let p = p384::PublicKey::from_sec1_bytes(peer).map_err(|_| StatusWord::IncorrectData)?;
                Ok(p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), p.as_affine())
                    .raw_secret_bytes()
                    .to_vec())
            }
        }
    }

    /// Builds a key from IMPORT KEY parts. RSA takes p and q (the CRT values are recomputed and
    /// must match what was sent); EC takes the scalar.
    pub fn import(alg: KeyAlgorithm, parts: &[(u32, &[u8])]) -> Result<Self, StatusWord> {
        let get = |tag: u32| parts.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
        match alg {
            KeyAlgorithm::EccP256 => {
                let s = get(0x06).ok_or(StatusWord::IncorrectData)?;
                if s.len() != 32 {
                    return Err(StatusWord::IncorrectData);
                }
                p256::SecretKey::from_slice(s).map(CardKey::P256).map_err(|_| StatusWord::IncorrectData)
            }
            KeyAlgorithm::EccP384 => {
                let s = get(0x06).ok_or(StatusWord::IncorrectData)?;
                if s.len() != 48 {
                    return Err(StatusWord::IncorrectData);
                }
                p384::SecretKey::from_slice(s).map(CardKey::P384).map_err(|_| StatusWord::IncorrectData)
            }
            _ => {
                let half = alg.size_bytes() / 2;
                let p = get(0x01).ok_or(StatusWord::IncorrectData)?;
                let q = get(0x02).ok_or(StatusWord::IncorrectData)?;
                if p.len() != half || q.len() != half {
                    return Err(StatusWord::IncorrectData);
                }
                let key = RsaPrivateKey::from_p_q(
                    BigUint::from_bytes_be(p),
                    BigUint::from_bytes_be(q),
                    BigUint::from(65537u32),
                )
                .map_err(|_| StatusWord::IncorrectData)?;
                if key.size() != alg.size_bytes() {
                    return Err(StatusWord::IncorrectData);
                }
                // If the host sent CRT values, they must agree with p and q.
                let check = |tag, want: Option<BigUint>| match (get(tag), want) {
                    (Some(v), Some(w)) if BigUint::from_bytes_be(v) != w => Err(StatusWord::IncorrectData),
                    _ => Ok(()),
                };
                check(0x03, key.dp().cloned())?;
                check(0x04, key.dq().cloned())?;
                check(0x05, key.crt_coefficient())?;
                Ok(CardKey::Rsa(Box::new(key)))
            }
        }
    }

    /// PKCS#8 DER for the card image.
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, KeyError> {
        use p256::pkcs8::EncodePrivateKey;
        let doc = match self {
            CardKey::Rsa(k) => k.to_pkcs8_der(),
            CardKey::P256(k) => k.to_pkcs8_der(),
            CardKey::P384(k) => k.to_pkcs8_der(),
        }
        .map_err(|e| KeyError::Corrupt(e.to_string()))?;
        Ok(doc.as_bytes().to_vec())
    }

    pub fn from_pkcs8(alg: KeyAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        use p256::pkcs8::DecodePrivateKey;
        let bad = |e: p256::pkcs8::Error| KeyError::Corrupt(e.to_string());
        let key = match alg {
            KeyAlgorithm::EccP256 => CardKey::P256(p256::SecretKey::from_pkcs8_der(der).map_err(bad)?),
            KeyAlgorithm::EccP384 => CardKey::P384(p384::SecretKey::from_pkcs8_der(der).map_err(bad)?),
            _ => CardKey::Rsa(Box::new(RsaPrivateKey::from_pkcs8_der(der).map_err(bad)?)),
        };
        if key.algorithm() != alg {
            return Err(KeyError::Corrupt(format!("expected {alg}, found {}", key.algorithm())));
        }
        Ok(key)
    }

    /// DER of the SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        self.spki()?.to_der().map_err(|e| KeyError::Corrupt(e.to_string()))
    }
}

fn left_pad(v: &[u8], len: usize) -> Vec<u8> {
    if v.len() >= len {
        return v.to_vec();
    }
    let mut out = vec![0u8; len - v.len()];
    out.extend_from_slice(v);
    out
}

/// Fits a hash to the field size: left-pads shorter input and keeps the leftmost bytes of longer
/// input, which is what ECDSA does with a hash wider than the curve.
fn fit(input: &[u8], size: usize) -> Result<Vec<u8>, StatusWord> {
    if input.is_empty() {
        return Err(StatusWord::IncorrectData);
    }
    Ok(left_pad(&input[..input.len().min(size)], size))
}
