//! Authenticator data (WebAuthn §6.1): RP ID hash (32 bytes), flags (1), signature counter (4,
//! big-endian); with the AT flag, attested credential data (AAGUID 16, credential id length 2,
//! credential id, COSE public key); with the ED flag, a CBOR map of extension outputs. Nothing may
//! follow.

use lanyard_ctap::cbor::{self, Value};

use crate::cose::CoseKey;
use crate::{MAX_CREDENTIAL_ID_LEN, WebAuthnError};

/// The flags byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    pub const UP: u8 = 0x01;
    pub const UV: u8 = 0x04;
    pub const BE: u8 = 0x08;
    pub const BS: u8 = 0x10;
    pub const AT: u8 = 0x40;
    pub const ED: u8 = 0x80;

    pub const fn user_present(self) -> bool {
        self.0 & Self::UP != 0
    }
    pub const fn user_verified(self) -> bool {
        self.0 & Self::UV != 0
    }
    pub const fn backup_eligible(self) -> bool {
        self.0 & Self::BE != 0
    }
    pub const fn backed_up(self) -> bool {
        self.0 & Self::BS != 0
    }
    pub const fn attested(self) -> bool {
        self.0 & Self::AT != 0
    }
    pub const fn extensions(self) -> bool {
        self.0 & Self::ED != 0
    }
}

/// Attested credential data: the new credential of a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedCredential {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CoseKey,
}

/// Parsed authenticator data.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthenticatorData {
    pub rp_id_hash: [u8; 32],
    pub flags: Flags,
    pub sign_count: u32,
    pub attested: Option<AttestedCredential>,
    /// The extension outputs map, when the ED flag is set (kept, not interpreted).
    pub extensions: Option<Value>,
}

fn bad(m: impl Into<String>) -> WebAuthnError {
    WebAuthnError::AuthData(m.into())
}

impl AuthenticatorData {
    /// Parses `bytes`; the flags must agree with what follows the fixed part.
    pub fn parse(bytes: &[u8]) -> Result<Self, WebAuthnError> {
        if bytes.len() < 37 {
            return Err(bad(format!("{} bytes, shorter than the 37 of its fixed part", bytes.len())));
        }
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&bytes[..32]);
        let flags = Flags(bytes[32]);
        let sign_count = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
        let mut rest = &bytes[37..];
        let attested = if flags.attested() {
            if rest.len() < 18 {
                return Err(bad("the AT flag is set, but the attested credential data is cut short"));
            }
            let mut aaguid = [0u8; 16];
            aaguid.copy_from_slice(&rest[..16]);
            let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
            if len == 0 || len > MAX_CREDENTIAL_ID_LEN {
                return Err(bad(format!(
                    "a credential id of {len} bytes (1 to {MAX_CREDENTIAL_ID_LEN} allowed)"
                )));
            }
            let id = rest.get(18..18 + len).ok_or_else(|| bad("the credential id is cut short"))?.to_vec();
            rest = &rest[18 + len..];
            let (key, used) =
                cbor::decode_prefix(rest).map_err(|e| bad(format!("the credential public key: {e}")))?;
            rest = &rest[used..];
            Some(AttestedCredential { aaguid, credential_id: id, public_key: CoseKey::from_value(&key)? })
        } else {
            None
        };
        let extensions = if flags.extensions() {
            let (ext, used) = cbor::decode_prefix(rest).map_err(|e| bad(format!("the extensions: {e}")))?;
            if !matches!(ext, Value::Map(_)) {
                return Err(bad("the extensions are not a CBOR map"));
            }
            rest = &rest[used..];
            Some(ext)
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(bad(format!("{} byte(s) follow what the flags announce", rest.len())));
        }
        Ok(Self { rp_id_hash, flags, sign_count, attested, extensions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Authenticator, auth_data};
    use proptest::prelude::*;

    #[test]
    fn registration_data_parses() {
        let a = Authenticator::new();
        let bytes = a.registration_auth_data("l.example", Flags::UP | Flags::UV | Flags::AT, 7);
        let d = AuthenticatorData::parse(&bytes).unwrap();
        assert_eq!(d.sign_count, 7);
        assert!(d.flags.user_present() && d.flags.user_verified() && d.flags.attested());
        let c = d.attested.unwrap();
        assert_eq!(c.credential_id, a.credential_id);
        assert_eq!(c.aaguid, a.aaguid);
        assert_eq!(c.public_key, a.cose());
    }

    #[test]
    fn extensions_follow_the_key() {
        let a = Authenticator::new();
        let mut bytes = a.registration_auth_data("l.example", Flags::UP | Flags::AT | Flags::ED, 0);
        bytes.extend(cbor::encode(&cbor::text_map([("credProtect", cbor::int(2))])));
        let d = AuthenticatorData::parse(&bytes).unwrap();
        assert!(d.extensions.is_some());
    }

    #[test]
    fn malformed_data_is_refused_precisely() {
        let a = Authenticator::new();
        let reg = a.registration_auth_data("l.example", Flags::UP | Flags::AT, 0);
        let mut trailing = reg.clone();
        trailing.push(0);
        let mut ed_without = auth_data("l.example", Flags::UP | Flags::ED, 1);
        ed_without.extend(cbor::encode(&cbor::int(5)));
        let mut zero_id = auth_data("l.example", Flags::UP | Flags::AT, 0);
        zero_id.extend([0u8; 16]);
        zero_id.extend([0, 0]);
        for (bytes, needle) in [
            (vec![0u8; 36], "shorter than the 37"),
            (auth_data("l.example", Flags::UP | Flags::AT, 0), "cut short"),
            (reg[..reg.len() - 3].to_vec(), "credential public key"),
            (trailing, "follow what the flags announce"),
            (auth_data("l.example", Flags::UP | Flags::ED, 0), "extensions"),
            (ed_without, "not a CBOR map"),
            (zero_id, "credential id of 0 bytes"),
        ] {
            let e = AuthenticatorData::parse(&bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = AuthenticatorData::parse(&bytes);
        }

        #[test]
        fn flipped_bytes_of_registration_data_never_panic(index in 0usize..200, value in any::<u8>()) {
            let a = Authenticator::new();
            let mut bytes = a.registration_auth_data("l.example", Flags::UP | Flags::AT, 3);
            let i = index % bytes.len();
            bytes[i] = value;
            let _ = AuthenticatorData::parse(&bytes);
        }

        #[test]
        fn assertion_data_round_trips(flags in any::<u8>(), count in any::<u32>()) {
            let flags = flags & !(Flags::AT | Flags::ED);
            let d = AuthenticatorData::parse(&auth_data("l.example", flags, count)).unwrap();
            prop_assert_eq!(d.flags.0, flags);
            prop_assert_eq!(d.sign_count, count);
            prop_assert!(d.attested.is_none() && d.extensions.is_none());
        }
    }
}
