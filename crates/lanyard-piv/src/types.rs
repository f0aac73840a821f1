//! Key references, algorithm identifiers, object tags and policies of the PIV card edge.

/// The PIV application identifier (RID A000000308, PIX 00001000, version 0100).
pub const PIV_AID: [u8; 11] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00];

/// Object tags (SP 800-73-5 part 1 Table 3, plus the YubiKey ones).
pub mod tag {
    pub const CARD_CAPABILITY_CONTAINER: u32 = 0x5FC107;
    pub const CHUID: u32 = 0x5FC102;
    pub const CERT_PIV_AUTH: u32 = 0x5FC105;
    pub const FINGERPRINTS: u32 = 0x5FC103;
    pub const SECURITY_OBJECT: u32 = 0x5FC106;
    pub const FACIAL_IMAGE: u32 = 0x5FC108;
    pub const CERT_CARD_AUTH: u32 = 0x5FC101;
    pub const CERT_DIGITAL_SIGNATURE: u32 = 0x5FC10A;
    pub const CERT_KEY_MANAGEMENT: u32 = 0x5FC10B;
    pub const PRINTED_INFORMATION: u32 = 0x5FC109;
    pub const DISCOVERY: u32 = 0x7E;
    pub const KEY_HISTORY: u32 = 0x5FC10C;
    pub const RETIRED_CERT_FIRST: u32 = 0x5FC10D;
    pub const RETIRED_CERT_LAST: u32 = 0x5FC120;
    pub const IRIS: u32 = 0x5FC121;
    pub const BIT_GROUP_TEMPLATE: u32 = 0x7F61;
    pub const SM_CERT_SIGNER: u32 = 0x5FC122;
    pub const PAIRING_CODE: u32 = 0x5FC123;
    pub const YUBICO_ADMIN_DATA: u32 = 0x5FFF00;
    pub const YUBICO_ATTESTATION_CERT: u32 = 0x5FFF01;

    /// Objects a card releases only after PIN verification (Table 4b).
    pub fn needs_pin(tag: u32) -> bool {
        matches!(tag, FINGERPRINTS | FACIAL_IMAGE | PRINTED_INFORMATION | IRIS | PAIRING_CODE)
    }

    /// Whether `tag` names an object a PIV card (with the YubiKey extensions) can hold.
    pub fn is_known(tag: u32) -> bool {
        matches!(tag, 0x5FC101..=0x5FC123 | DISCOVERY | BIT_GROUP_TEMPLATE | 0x5FFF00..=0x5FFF15)
    }
}

/// A key reference on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u8);

impl Slot {
    pub const AUTHENTICATION: Slot = Slot(0x9A);
    pub const MANAGEMENT: Slot = Slot(0x9B);
    pub const SIGNATURE: Slot = Slot(0x9C);
    pub const KEY_MANAGEMENT: Slot = Slot(0x9D);
    pub const CARD_AUTHENTICATION: Slot = Slot(0x9E);
    pub const ATTESTATION: Slot = Slot(0xF9);

    /// Slots that can hold an asymmetric key: 9A, 9C, 9D, 9E and the retired 82–95.
    pub fn is_key_slot(self) -> bool {
        matches!(self.0, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95)
    }

    pub fn is_retired(self) -> bool {
        matches!(self.0, 0x82..=0x95)
    }

    /// The certificate object that belongs with the key in this slot.
    pub fn certificate_tag(self) -> Option<u32> {
        match self.0 {
            0x9A => Some(tag::CERT_PIV_AUTH),
            0x9C => Some(tag::CERT_DIGITAL_SIGNATURE),
            0x9D => Some(tag::CERT_KEY_MANAGEMENT),
            0x9E => Some(tag::CERT_CARD_AUTH),
            0x82..=0x95 => Some(tag::RETIRED_CERT_FIRST + u32::from(self.0 - 0x82)),
            0xF9 => Some(tag::YUBICO_ATTESTATION_CERT),
            _ => None,
        }
    }

    /// The PIN policy a slot has when none was requested (Table 4b).
    pub fn default_pin_policy(self) -> PinPolicy {
        match self.0 {
            0x9C => PinPolicy::Always,
            0x9E => PinPolicy::Never,
            _ => PinPolicy::Once,
        }
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            0x9A => "PIV Authentication",
            0x9B => "Card Management",
            0x9C => "Digital Signature",
            0x9D => "Key Management",
            0x9E => "Card Authentication",
            0x82..=0x95 => "Retired Key Management",
            0xF9 => "Attestation",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02X}", self.0)
    }
}

/// Asymmetric algorithms (SP 800-78-5 Table 10 plus YubiKey's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    Rsa1024,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EccP256,
    EccP384,
}

impl KeyAlgorithm {
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0x06 => Self::Rsa1024,
            0x07 => Self::Rsa2048,
            0x05 => Self::Rsa3072,
            0x16 => Self::Rsa4096,
            0x11 => Self::EccP256,
            0x14 => Self::EccP384,
            _ => return None,
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Self::Rsa1024 => 0x06,
            Self::Rsa2048 => 0x07,
            Self::Rsa3072 => 0x05,
            Self::Rsa4096 => 0x16,
            Self::EccP256 => 0x11,
            Self::EccP384 => 0x14,
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa1024 | Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }

    /// RSA modulus or EC field size in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            Self::Rsa1024 => 128,
            Self::Rsa2048 => 256,
            Self::Rsa3072 => 384,
            Self::Rsa4096 => 512,
            Self::EccP256 => 32,
            Self::EccP384 => 48,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rsa1024 => "RSA-1024",
            Self::Rsa2048 => "RSA-2048",
            Self::Rsa3072 => "RSA-3072",
            Self::Rsa4096 => "RSA-4096",
            Self::EccP256 => "ECC P-256",
            Self::EccP384 => "ECC P-384",
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When the PIN must be verified before a private-key operation (YubiKey encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinPolicy {
    Default,
    Never,
    Once,
    Always,
}

impl PinPolicy {
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::Default,
            1 => Self::Never,
            2 => Self::Once,
            3 => Self::Always,
            _ => return None,
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Self::Default => 0,
            Self::Never => 1,
            Self::Once => 2,
            Self::Always => 3,
        }
    }
}

/// Whether a touch is needed (a software card has no button; kept for metadata and attestation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TouchPolicy {
    Default,
    Never,
    Always,
    Cached,
}

impl TouchPolicy {
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::Default,
            1 => Self::Never,
            2 => Self::Always,
            3 => Self::Cached,
            _ => return None,
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Self::Default => 0,
            Self::Never => 1,
            Self::Always => 2,
            Self::Cached => 3,
        }
    }
}

/// A public key as GENERATE (tag 7F49) and GET METADATA (tag 04) return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// Uncompressed point `04 ‖ X ‖ Y`.
    Ec {
        algorithm: KeyAlgorithm,
        point: Vec<u8>,
    },
}

impl PublicKey {
    /// Encodes the inner TLVs (81/82 for RSA, 86 for EC) without the 7F49 wrapper.
    pub fn to_inner_tlvs(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            PublicKey::Rsa { modulus, exponent } => {
                crate::tlv::encode(0x81, modulus, &mut out);
                crate::tlv::encode(0x82, exponent, &mut out);
            }
            PublicKey::Ec { point, .. } => crate::tlv::encode(0x86, point, &mut out),
        }
        out
    }

    /// The DER `SubjectPublicKeyInfo` (RFC 5480 for EC with a named curve, RFC 8017 for RSA),
    /// as a CA or CSR needs it.
    pub fn to_spki_der(&self) -> Vec<u8> {
        use crate::tlv::{encode, tlv};
        const ID_EC_PUBLIC_KEY: [u8; 7] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
        const PRIME256V1: [u8; 8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
        const SECP384R1: [u8; 5] = [0x2B, 0x81, 0x04, 0x00, 0x22];
        const RSA_ENCRYPTION: [u8; 9] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
        // A DER INTEGER of an unsigned big-endian value: minimal, with a 00 when the top bit is set.
        fn uint(value: &[u8]) -> Vec<u8> {
            let skip = value.iter().take(value.len().saturating_sub(1)).take_while(|b| **b == 0).count();
            let v = &value[skip..];
            let mut body = Vec::with_capacity(v.len() + 1);
            if v.first().is_none_or(|b| b & 0x80 != 0) {
                body.push(0);
            }
            body.extend_from_slice(v);
            tlv(0x02, &body)
        }
        let (alg_id, key_bits) = match self {
            PublicKey::Rsa { modulus, exponent } => {
                let mut alg = tlv(0x06, &RSA_ENCRYPTION);
                alg.extend_from_slice(&[0x05, 0x00]);
                let mut ints = uint(modulus);
                ints.extend_from_slice(&uint(exponent));
                (alg, tlv(0x30, &ints))
            }
            PublicKey::Ec { algorithm, point } => {
                let mut alg = tlv(0x06, &ID_EC_PUBLIC_KEY);
                let curve: &[u8] = if *algorithm == KeyAlgorithm::EccP384 { &SECP384R1 } else { &PRIME256V1 };
                encode(0x06, curve, &mut alg);
                (alg, point.clone())
            }
        };
        let mut bits = Vec::with_capacity(key_bits.len() + 1);
        bits.push(0);
        bits.extend_from_slice(&key_bits);
        let mut inner = tlv(0x30, &alg_id);
        encode(0x03, &bits, &mut inner);
        tlv(0x30, &inner)
    }

    /// Parses the inner TLVs for a key of `algorithm`, checking sizes.
    pub fn from_inner_tlvs(algorithm: KeyAlgorithm, inner: &[u8]) -> Result<Self, crate::PivError> {
        let tlvs = crate::tlv::parse_all(inner)?;
        if algorithm.is_rsa() {
            let modulus = crate::tlv::require(&tlvs, 0x81)?;
            let exponent = crate::tlv::require(&tlvs, 0x82)?;
            if modulus.len() != algorithm.size_bytes() || exponent.is_empty() || exponent.len() > 8 {
                return Err(crate::PivError::Malformed("RSA public key of the wrong size"));
            }
            Ok(PublicKey::Rsa { modulus: modulus.to_vec(), exponent: exponent.to_vec() })
        } else {
            let point = crate::tlv::require(&tlvs, 0x86)?;
            if point.len() != 1 + 2 * algorithm.size_bytes() || point[0] != 0x04 {
                return Err(crate::PivError::Malformed("EC point is not uncompressed or of the wrong size"));
            }
            Ok(PublicKey::Ec { algorithm, point: point.to_vec() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_der_of_ec_and_rsa_keys() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[0x11; 64]);
        let ec = PublicKey::Ec { algorithm: KeyAlgorithm::EccP256, point }.to_spki_der();
        // RFC 5480 prefix for a P-256 key: SEQUENCE, id-ecPublicKey, prime256v1, BIT STRING.
        assert_eq!(hex::encode(&ec[..27]), "3059301306072a8648ce3d020106082a8648ce3d03010703420004");
        assert_eq!(ec.len(), 91);
        let mut point = vec![0x04];
        point.extend_from_slice(&[0x22; 96]);
        let ec384 = PublicKey::Ec { algorithm: KeyAlgorithm::EccP384, point }.to_spki_der();
        assert_eq!(hex::encode(&ec384[..24]), "3076301006072a8648ce3d020106052b8104002203620004");
        // RSA: a modulus with its top bit set gets a 00; the exponent is minimal.
        let rsa = PublicKey::Rsa { modulus: vec![0x80; 256], exponent: vec![0x01, 0x00, 0x01] }.to_spki_der();
        assert_eq!(
            hex::encode(&rsa[..32]),
            "30820122300d06092a864886f70d01010105000382010f003082010a02820101"
        );
        assert_eq!(rsa[32], 0x00);
        assert_eq!(hex::encode(&rsa[rsa.len() - 5..]), "0203010001");
        assert_eq!(rsa.len(), 294);
    }
}
