//! The installation record: which root CA and which key-encryption key an installation was
//! initialised with, kept in the database so that a server started with other material (a second
//! server on an empty data directory, a typo in `data_dir`, a restored backup of the wrong host)
//! notices and refuses instead of carrying on with a CA nobody trusts or a KEK that opens nothing.

use std::fmt;

use aws_lc_rs::digest;
use time::OffsetDateTime;

use crate::secrets::KekId;

/// The SHA-256 of a certificate's DER encoding, the fingerprint `openssl x509 -fingerprint
/// -sha256` prints (there with colons and in upper case).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// The fingerprint of `der`.
    pub fn of_der(der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Self(out)
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CertFingerprint {
    /// 64 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

impl std::str::FromStr for CertFingerprint {
    type Err = String;

    /// 64 hex digits, as `Display` writes them.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| format!("a SHA-256 certificate fingerprint is 64 hex digits: {e}"))?;
        Ok(Self(out))
    }
}

/// What `lanyard init` records, once per database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    /// The root CA certificate's fingerprint.
    pub root_fingerprint: CertFingerprint,
    /// The key-encryption key's id.
    pub kek_id: KekId,
    pub initialized_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_of_the_der_and_round_trip() {
        // echo -n abc | sha256sum
        let fp = CertFingerprint::of_der(b"abc");
        assert_eq!(fp.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(fp.to_string().parse::<CertFingerprint>().unwrap(), fp);
        assert!("ba78".parse::<CertFingerprint>().unwrap_err().contains("64 hex digits"));
    }
}
