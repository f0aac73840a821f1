//! Signing keys: the [`CaSigner`] trait every CA operation signs through, and [`SoftwareKey`], its
//! implementation over aws-lc-rs. A PKCS#11 (HSM) signer can implement the same trait later.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self as sig, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    RsaKeyPair,
};
use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Encode, Reader};
use serde::{Deserialize, Serialize};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::error::CaError;
use crate::oids;

/// Key algorithms the CA generates, signs with and certifies (SP 800-78-5 PIV algorithms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256, signing with ecdsa-with-SHA256.
    #[serde(rename = "p256")]
    EcP256,
    /// ECDSA on P-384, signing with ecdsa-with-SHA384.
    #[serde(rename = "p384")]
    EcP384,
    /// RSA with a 2048-bit modulus, signing with sha256WithRSAEncryption.
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus, signing with sha256WithRSAEncryption.
    #[serde(rename = "rsa3072")]
    Rsa3072,
}

impl KeyAlgorithm {
    /// All supported algorithms.
    pub const ALL: [KeyAlgorithm; 4] =
        [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384, KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072];

    /// True for the elliptic-curve algorithms (which can do key agreement but not key transport).
    pub fn is_ec(self) -> bool {
        matches!(self, KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384)
    }

    /// True for RSA.
    pub fn is_rsa(self) -> bool {
        !self.is_ec()
    }

    /// The AlgorithmIdentifier of signatures made with a key of this algorithm.
    pub fn signature_algorithm(self) -> AlgorithmIdentifierOwned {
        match self {
            KeyAlgorithm::EcP256 => {
                AlgorithmIdentifierOwned { oid: oids::ECDSA_WITH_SHA256, parameters: None }
            }
            KeyAlgorithm::EcP384 => {
                AlgorithmIdentifierOwned { oid: oids::ECDSA_WITH_SHA384, parameters: None }
            }
            // RFC 4055 §5: the parameters of the PKCS#1 v1.5 signature algorithms are NULL.
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => AlgorithmIdentifierOwned {
                oid: oids::SHA256_WITH_RSA,
                parameters: Some(der::asn1::Null.into()),
            },
        }
    }

    /// Classifies a SubjectPublicKeyInfo, rejecting anything the CA does not certify: other
    /// algorithms and curves, compressed or invalid EC points, RSA moduli other than 2048/3072 bits.
    pub fn of_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyAlgorithm, CaError> {
        let key = spki.subject_public_key.as_bytes().ok_or_else(|| {
            CaError::UnsupportedPublicKey("public key BIT STRING is not octet-aligned".into())
        })?;
        if spki.algorithm.oid == oids::EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .ok_or_else(|| CaError::UnsupportedPublicKey("EC key without a named curve".into()))?
                .decode_as()
                .map_err(|_| {
                    CaError::UnsupportedPublicKey("EC key parameters are not a named curve".into())
                })?;
            let (alg, verify_alg, point_len) = if curve == oids::SECP256R1 {
                (KeyAlgorithm::EcP256, &sig::ECDSA_P256_SHA256_ASN1, 65)
            } else if curve == oids::SECP384R1 {
                (KeyAlgorithm::EcP384, &sig::ECDSA_P384_SHA384_ASN1, 97)
            } else {
                return Err(CaError::UnsupportedPublicKey(format!("EC curve {curve}")));
            };
            if key.len() != point_len || key[0] != 0x04 {
                return Err(CaError::UnsupportedPublicKey(format!(
                    "{alg} point is not an uncompressed point"
                )));
            }
            sig::UnparsedPublicKey::new(verify_alg, key)
                .parse()
                .map_err(|_| CaError::UnsupportedPublicKey(format!("{alg} point is not on the curve")))?;
            Ok(alg)
        } else if spki.algorithm.oid == oids::RSA_ENCRYPTION {
            match spki.algorithm.parameters.as_ref() {
                None => {}
                Some(p) if p.is_null() => {}
                Some(_) => {
                    return Err(CaError::UnsupportedPublicKey(
                        "rsaEncryption parameters are not NULL".into(),
                    ));
                }
            }
            let bits = rsa_modulus_bits(key)
                .ok_or_else(|| CaError::UnsupportedPublicKey("malformed RSAPublicKey".into()))?;
            let alg = match bits {
                2048 => KeyAlgorithm::Rsa2048,
                3072 => KeyAlgorithm::Rsa3072,
                other => {
                    return Err(CaError::UnsupportedPublicKey(format!(
                        "RSA-{other} (use 2048 or 3072 bits)"
                    )));
                }
            };
            sig::UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, key)
                .parse()
                .map_err(|_| CaError::UnsupportedPublicKey(format!("{alg} key rejected")))?;
            Ok(alg)
        } else {
            Err(CaError::UnsupportedPublicKey(format!("algorithm {}", spki.algorithm.oid)))
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcP256 => "P-256",
            KeyAlgorithm::EcP384 => "P-384",
            KeyAlgorithm::Rsa2048 => "RSA-2048",
            KeyAlgorithm::Rsa3072 => "RSA-3072",
        })
    }
}

/// Bit length of the modulus of a DER RSAPublicKey (RFC 8017 A.1.1), or `None` if malformed.
pub(crate) fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Option<usize> {
    let mut reader = der::SliceReader::new(rsa_public_key).ok()?;
    let bits = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let _e = UintRef::decode(r)?;
            Ok(n.as_bytes().first().map(|b| n.as_bytes().len() * 8 - b.leading_zeros() as usize))
        })
        .ok()?;
    reader.finish(bits).ok()?
}

/// Something that holds a CA (or responder) private key and signs with it.
///
/// The key never leaves the implementation; certificates, CRLs and OCSP responses are built as
/// DER and handed to [`CaSigner::sign`].
pub trait CaSigner: Send + Sync {
    /// The signatureAlgorithm this signer produces (goes into the signed structure).
    fn algorithm(&self) -> AlgorithmIdentifierOwned;
    /// The signer's public key.
    fn public_key(&self) -> SubjectPublicKeyInfoOwned;
    /// Signs `msg` (the DER of a to-be-signed structure) and returns the signature value as it goes
    /// into the BIT STRING (a DER ECDSA-Sig-Value for ECDSA, the raw signature for RSA).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError>;
}

impl<T: CaSigner + ?Sized> CaSigner for Box<T> {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        (**self).algorithm()
    }
    fn public_key(&self) -> SubjectPublicKeyInfoOwned {
        (**self).public_key()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        (**self).sign(msg)
    }
}

impl<T: CaSigner + ?Sized> CaSigner for std::sync::Arc<T> {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        (**self).algorithm()
    }
    fn public_key(&self) -> SubjectPublicKeyInfoOwned {
        (**self).public_key()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        (**self).sign(msg)
    }
}

enum KeyPair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private key held in process memory by aws-lc-rs.
///
/// The key material lives inside aws-lc, which cleanses it when the key is freed on drop; PKCS#8
/// exports are returned in [`Zeroizing`] buffers.
pub struct SoftwareKey {
    pair: KeyPair,
    algorithm: KeyAlgorithm,
    public_key: SubjectPublicKeyInfoOwned,
}

impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// The PEM label of an unencrypted PKCS#8 private key.
const PKCS8_PEM_LABEL: &str = "PRIVATE KEY";

impl SoftwareKey {
    /// Generates a new key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        let pair = match algorithm {
            KeyAlgorithm::EcP256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map(KeyPair::Ec),
            KeyAlgorithm::EcP384 => EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).map(KeyPair::Ec),
            KeyAlgorithm::Rsa2048 => RsaKeyPair::generate(KeySize::Rsa2048).map(KeyPair::Rsa),
            KeyAlgorithm::Rsa3072 => RsaKeyPair::generate(KeySize::Rsa3072).map(KeyPair::Rsa),
        }
        .map_err(|_| CaError::KeyGeneration(algorithm))?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: KeyPair) -> Result<Self, CaError> {
        let spki_der = match &pair {
            KeyPair::Ec(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            KeyPair::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| CaError::InvalidPrivateKey("cannot encode the public key".into()))?;
        let public_key = SubjectPublicKeyInfoOwned::from_der(&spki_der)?;
        let algorithm = KeyAlgorithm::of_spki(&public_key)?;
        Ok(Self { pair, algorithm, public_key })
    }

    /// Loads an unencrypted PKCS#8 (RFC 5208) DER private key of one of the supported algorithms.
    pub fn from_pkcs8_der(pkcs8: &[u8]) -> Result<Self, CaError> {
        let pair = if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8) {
            KeyPair::Ec(k)
        } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8) {
            KeyPair::Ec(k)
        } else {
            match RsaKeyPair::from_pkcs8(pkcs8) {
                Ok(k) => KeyPair::Rsa(k),
                Err(e) => {
                    return Err(CaError::InvalidPrivateKey(format!(
                        "not a P-256, P-384 or RSA PKCS#8 private key ({e})"
                    )));
                }
            }
        };
        Self::from_pair(pair).map_err(|e| match e {
            CaError::UnsupportedPublicKey(what) => CaError::InvalidPrivateKey(what),
            other => other,
        })
    }

    /// Exports the key as unencrypted PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CaError> {
        let err = |_| CaError::KeyExport(self.algorithm);
        match &self.pair {
            KeyPair::Ec(k) => k.to_pkcs8v1().map(|doc| Zeroizing::new(doc.as_ref().to_vec())).map_err(err),
            KeyPair::Rsa(k) => {
                let doc: Pkcs8V1Der<'static> = k.as_der().map_err(err)?;
                Ok(Zeroizing::new(doc.as_ref().to_vec()))
            }
        }
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CaError> {
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| CaError::Pem(e.to_string()))?;
        let der = Zeroizing::new(der);
        if label != PKCS8_PEM_LABEL {
            return Err(CaError::Pem(format!("expected a {PKCS8_PEM_LABEL} block, found {label:?}")));
        }
        Self::from_pkcs8_der(&der)
    }

    /// Exports the key as a PEM `PRIVATE KEY` block.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CaError> {
        let der = self.to_pkcs8_der()?;
        der::pem::encode_string(PKCS8_PEM_LABEL, der::pem::LineEnding::LF, &der)
            .map(Zeroizing::new)
            .map_err(|e| CaError::Pem(e.to_string()))
    }

    /// The key's algorithm.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
}

impl CaSigner for SoftwareKey {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        self.algorithm.signature_algorithm()
    }

    fn public_key(&self) -> SubjectPublicKeyInfoOwned {
        self.public_key.clone()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = SystemRandom::new();
        match &self.pair {
            KeyPair::Ec(k) => {
                k.sign(&rng, msg).map(|s| s.as_ref().to_vec()).map_err(|_| CaError::Signing(self.algorithm))
            }
            KeyPair::Rsa(k) => {
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(&sig::RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .map_err(|_| CaError::Signing(self.algorithm))?;
                Ok(out)
            }
        }
    }
}

/// Verifies `signature` over `msg` with the public key in `spki` under `algorithm`, as RFC 5280
/// certificates, CRLs, OCSP responses and PKCS#10 requests are signed.
pub(crate) fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    msg: &[u8],
    signature: &[u8],
) -> Result<(), crate::error::CsrError> {
    use crate::error::CsrError;

    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CsrError::UnsupportedPublicKey("public key BIT STRING is not octet-aligned".into()))?;
    let sig_oid = algorithm.oid;
    let ecdsa_hash =
        [(oids::ECDSA_WITH_SHA256, 256u16), (oids::ECDSA_WITH_SHA384, 384), (oids::ECDSA_WITH_SHA512, 512)]
            .into_iter()
            .find(|(oid, _)| *oid == sig_oid)
            .map(|(_, h)| h);
    let rsa_hash =
        [(oids::SHA256_WITH_RSA, 256u16), (oids::SHA384_WITH_RSA, 384), (oids::SHA512_WITH_RSA, 512)]
            .into_iter()
            .find(|(oid, _)| *oid == sig_oid)
            .map(|(_, h)| h);

    let verify_alg: &'static dyn sig::VerificationAlgorithm = if let Some(hash) = ecdsa_hash {
        // RFC 5758 §3.2: the ECDSA signature algorithm identifiers have absent parameters.
        if algorithm.parameters.is_some() {
            return Err(CsrError::InvalidAlgorithmParameters(sig_oid.to_string()));
        }
        if spki.algorithm.oid != oids::EC_PUBLIC_KEY {
            return Err(CsrError::AlgorithmMismatch {
                signature: sig_oid.to_string(),
                key: spki.algorithm.oid.to_string(),
            });
        }
        let curve: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as().ok())
            .ok_or_else(|| CsrError::UnsupportedPublicKey("EC key without a named curve".into()))?;
        match (curve, hash) {
            (c, 256) if c == oids::SECP256R1 => &sig::ECDSA_P256_SHA256_ASN1,
            (c, 384) if c == oids::SECP256R1 => &sig::ECDSA_P256_SHA384_ASN1,
            (c, 512) if c == oids::SECP256R1 => &sig::ECDSA_P256_SHA512_ASN1,
            (c, 256) if c == oids::SECP384R1 => &sig::ECDSA_P384_SHA256_ASN1,
            (c, 384) if c == oids::SECP384R1 => &sig::ECDSA_P384_SHA384_ASN1,
            (c, 512) if c == oids::SECP384R1 => &sig::ECDSA_P384_SHA512_ASN1,
            (c, _) => return Err(CsrError::UnsupportedPublicKey(format!("EC curve {c}"))),
        }
    } else if let Some(hash) = rsa_hash {
        // RFC 4055 §5 says NULL; some encoders omit it. Anything else is malformed.
        if algorithm.parameters.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(CsrError::InvalidAlgorithmParameters(sig_oid.to_string()));
        }
        if spki.algorithm.oid != oids::RSA_ENCRYPTION {
            return Err(CsrError::AlgorithmMismatch {
                signature: sig_oid.to_string(),
                key: spki.algorithm.oid.to_string(),
            });
        }
        match hash {
            256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            _ => &sig::RSA_PKCS1_2048_8192_SHA512,
        }
    } else {
        return Err(CsrError::UnsupportedSignatureAlgorithm(sig_oid.to_string()));
    };
    let parsed = sig::UnparsedPublicKey::new(verify_alg, key)
        .parse()
        .map_err(|e| CsrError::UnsupportedPublicKey(format!("{} key rejected: {e}", spki.algorithm.oid)))?;
    parsed.verify_sig(msg, signature).map_err(|_| CsrError::BadSignature)
}

/// DER of the signer's SubjectPublicKeyInfo, for comparing keys.
pub(crate) fn spki_der(spki: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>, CaError> {
    Ok(spki.to_der()?)
}
