//! Attestation objects (WebAuthn §6.5): a CBOR map `{"fmt", "attStmt", "authData"}`. Lanyard
//! reads the formats `none` (§8.7: an empty statement) and `packed` (§8.2: self attestation, signed
//! with the new credential's own key, or basic attestation with an `x5c` certificate whose key
//! signed). It checks the signature and the packed format's certificate requirements; it does
//! not decide whether to *trust* the attestation certificate's issuer (no vendor root list), so
//! an attestation tells the operator which model the authenticator claims to be, nothing more.

use der::asn1::{ObjectIdentifier, OctetString, PrintableStringRef, Utf8StringRef};
use der::{Decode, Tag, Tagged};
use lanyard_ctap::cbor::{self, MapRef, Value};
use p256::ecdsa::VerifyingKey;
use x509_cert::Certificate;
use x509_cert::ext::pkix::BasicConstraints;

use crate::WebAuthnError;
use crate::auth_data::AuthenticatorData;
use crate::cose::{CoseKey, ES256};

/// Attestation objects Lanyard reads are a few kilobytes (a key and a certificate or two).
pub const MAX_ATTESTATION_OBJECT_LEN: usize = 16 * 1024;
/// The FIDO extension carrying the AAGUID in a packed attestation certificate.
const ID_FIDO_GEN_CE_AAGUID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.45724.1.1.4");
const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const AT_C: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
const AT_O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const AT_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const AT_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The attestation statement, as read (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    None,
    Packed { alg: i64, sig: Vec<u8>, x5c: Vec<Vec<u8>> },
}

/// A parsed attestation object.
#[derive(Clone, Debug, PartialEq)]
pub struct AttestationObject {
    pub fmt: String,
    /// The authenticator data exactly as received (signatures cover these bytes).
    pub auth_data_raw: Vec<u8>,
    pub auth_data: AuthenticatorData,
    pub statement: Statement,
}

/// What the verified attestation shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttestationKind {
    /// Format `none`: the client or authenticator gave no attestation.
    None,
    /// Packed self attestation: signed by the credential's own key (proves nothing about the model).
    SelfAttestation,
    /// Packed basic attestation: signed by the key of this certificate (DER), the first of `x5c`.
    Certificate(Vec<u8>),
}

impl AttestationKind {
    /// A stable name for storage and the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::SelfAttestation => "packed-self",
            Self::Certificate(_) => "packed-x5c",
        }
    }
}

fn bad(m: impl Into<String>) -> WebAuthnError {
    WebAuthnError::AttestationObject(m.into())
}

fn stmt(m: impl Into<String>) -> WebAuthnError {
    WebAuthnError::AttestationStatement(m.into())
}

impl AttestationObject {
    pub fn parse(bytes: &[u8]) -> Result<Self, WebAuthnError> {
        if bytes.len() > MAX_ATTESTATION_OBJECT_LEN {
            return Err(bad(format!("{} bytes, more than {MAX_ATTESTATION_OBJECT_LEN}", bytes.len())));
        }
        let value = cbor::decode(bytes).map_err(|e| bad(e.to_string()))?;
        let map = MapRef::new(&value).map_err(|_| bad("not a CBOR map"))?;
        if map.entries().iter().any(|(k, _)| !matches!(k, Value::Text(_))) {
            return Err(bad("a member name is not text"));
        }
        let fmt = cbor::as_text(map.get_text("fmt").ok_or_else(|| bad("\"fmt\" is missing"))?, "fmt")
            .map_err(|e| bad(e.to_string()))?
            .to_owned();
        let raw = cbor::as_bytes(
            map.get_text("authData").ok_or_else(|| bad("\"authData\" is missing"))?,
            "authData",
        )
        .map_err(|e| bad(e.to_string()))?
        .to_vec();
        let att_stmt = map.get_text("attStmt").ok_or_else(|| bad("\"attStmt\" is missing"))?;
        let att_stmt = MapRef::new(att_stmt).map_err(|_| bad("\"attStmt\" is not a map"))?;
        let auth_data = AuthenticatorData::parse(&raw)?;
        let statement = match fmt.as_str() {
            "none" => {
                if !att_stmt.entries().is_empty() {
                    return Err(stmt("format \"none\" with a non-empty statement"));
                }
                Statement::None
            }
            "packed" => parse_packed(att_stmt)?,
            other => return Err(WebAuthnError::UnsupportedFormat(other.to_owned())),
        };
        Ok(Self { fmt, auth_data_raw: raw, auth_data, statement })
    }

    /// Verifies the statement over `authData ‖ client_data_hash` (§8.2 verification procedure).
    pub fn verify(&self, client_data_hash: &[u8; 32]) -> Result<AttestationKind, WebAuthnError> {
        let credential = self.auth_data.attested.as_ref().ok_or(WebAuthnError::NoCredential)?;
        let mut signed = self.auth_data_raw.clone();
        signed.extend_from_slice(client_data_hash);
        match &self.statement {
            Statement::None => Ok(AttestationKind::None),
            Statement::Packed { alg, sig, x5c } if x5c.is_empty() => {
                if *alg != ES256 {
                    return Err(stmt(format!(
                        "self attestation with algorithm {alg}, but the credential's is -7 (ES256)"
                    )));
                }
                credential
                    .public_key
                    .verify(&signed, sig)
                    .map_err(|_| stmt("the self attestation signature does not verify"))?;
                Ok(AttestationKind::SelfAttestation)
            }
            Statement::Packed { alg, sig, x5c } => {
                if *alg != ES256 {
                    return Err(stmt(format!(
                        "x5c attestation with algorithm {alg}; Lanyard verifies ES256 (-7) only"
                    )));
                }
                let leaf = &x5c[0];
                let cert = Certificate::from_der(leaf)
                    .map_err(|e| stmt(format!("the attestation certificate: {e}")))?;
                check_packed_certificate(&cert, &credential.aaguid)?;
                let spki = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
                let key = VerifyingKey::from_sec1_bytes(spki)
                    .map_err(|_| stmt("the attestation certificate's key is not a P-256 key"))?;
                CoseKey::from_verifying_key(key).verify(&signed, sig).map_err(|_| {
                    stmt("the attestation signature does not verify with the certificate's key")
                })?;
                Ok(AttestationKind::Certificate(leaf.clone()))
            }
        }
    }
}

fn parse_packed(m: MapRef<'_>) -> Result<Statement, WebAuthnError> {
    if m.get_text("ecdaaKeyId").is_some() {
        return Err(stmt("ECDAA attestation is not supported"));
    }
    for (k, _) in m.entries() {
        if !matches!(k, Value::Text(t) if t == "alg" || t == "sig" || t == "x5c") {
            return Err(stmt(format!("unexpected member {k:?} in a packed statement")));
        }
    }
    let alg = cbor::as_int(m.get_text("alg").ok_or_else(|| stmt("\"alg\" is missing"))?, "alg")
        .map_err(|e| stmt(e.to_string()))?;
    let sig = cbor::as_bytes(m.get_text("sig").ok_or_else(|| stmt("\"sig\" is missing"))?, "sig")
        .map_err(|e| stmt(e.to_string()))?
        .to_vec();
    let x5c = match m.get_text("x5c") {
        None => Vec::new(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|c| cbor::as_bytes(c, "x5c").map(<[u8]>::to_vec).map_err(|e| stmt(e.to_string())))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(stmt("\"x5c\" is empty")),
        Some(_) => return Err(stmt("\"x5c\" is not an array")),
    };
    Ok(Statement::Packed { alg, sig, x5c })
}

/// The packed format's requirements for an attestation certificate (§8.2.1).
fn check_packed_certificate(cert: &Certificate, aaguid: &[u8; 16]) -> Result<(), WebAuthnError> {
    let tbs = &cert.tbs_certificate;
    if tbs.version != x509_cert::Version::V3 {
        return Err(stmt("the attestation certificate is not version 3"));
    }
    let mut seen = [false; 4];
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            let value = match atv.value.tag() {
                Tag::PrintableString => {
                    PrintableStringRef::try_from(&atv.value).ok().map(|s| s.as_str().to_owned())
                }
                Tag::Utf8String => Utf8StringRef::try_from(&atv.value).ok().map(|s| s.as_str().to_owned()),
                _ => None,
            };
            let Some(value) = value else { continue };
            match atv.oid {
                AT_C => seen[0] = !value.is_empty(),
                AT_O => seen[1] = !value.is_empty(),
                AT_OU => seen[2] = value == "Authenticator Attestation",
                AT_CN => seen[3] = !value.is_empty(),
                _ => {}
            }
        }
    }
    for (ok, what) in
        seen.iter().zip(["C (country)", "O (organisation)", "OU = \"Authenticator Attestation\"", "CN"])
    {
        if !ok {
            return Err(stmt(format!("the attestation certificate's subject lacks {what}")));
        }
    }
    let extensions = tbs.extensions.as_deref().unwrap_or_default();
    let basic = extensions
        .iter()
        .find(|e| e.extn_id == ID_CE_BASIC_CONSTRAINTS)
        .ok_or_else(|| stmt("the attestation certificate has no basic constraints"))?;
    let basic = BasicConstraints::from_der(basic.extn_value.as_bytes())
        .map_err(|e| stmt(format!("the basic constraints: {e}")))?;
    if basic.ca {
        return Err(stmt("the attestation certificate is a CA certificate"));
    }
    if let Some(ext) = extensions.iter().find(|e| e.extn_id == ID_FIDO_GEN_CE_AAGUID) {
        if ext.critical {
            return Err(stmt("the AAGUID extension is marked critical"));
        }
        let inner = OctetString::from_der(ext.extn_value.as_bytes())
            .map_err(|e| stmt(format!("the AAGUID extension: {e}")))?;
        if inner.as_bytes() != aaguid {
            return Err(stmt("the certificate's AAGUID differs from the authenticator data's"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth_data::Flags;
    use crate::testkit::{Authenticator, attestation_object};
    use proptest::prelude::*;

    const HASH: [u8; 32] = [7; 32];

    #[test]
    fn none_and_packed_self_verify() {
        let a = Authenticator::new();
        let none = AttestationObject::parse(&a.attestation_none("l.example", Flags::UP | Flags::AT)).unwrap();
        assert_eq!(none.verify(&HASH), Ok(AttestationKind::None));
        let packed = AttestationObject::parse(&a.attestation_self("l.example", &HASH)).unwrap();
        assert_eq!(packed.verify(&HASH), Ok(AttestationKind::SelfAttestation));
        let other = [8; 32];
        assert!(packed.verify(&other).unwrap_err().to_string().contains("does not verify"));
    }

    #[test]
    fn packed_x5c_verifies_and_checks_the_certificate() {
        let a = Authenticator::new();
        let (obj, cert) = a.attestation_x5c("l.example", &HASH, "Authenticator Attestation", Some(a.aaguid));
        let parsed = AttestationObject::parse(&obj).unwrap();
        assert_eq!(parsed.verify(&HASH), Ok(AttestationKind::Certificate(cert)));
        let (obj, _) = a.attestation_x5c("l.example", &HASH, "Something Else", Some(a.aaguid));
        let e = AttestationObject::parse(&obj).unwrap().verify(&HASH).unwrap_err().to_string();
        assert!(e.contains("Authenticator Attestation"), "{e}");
        let (obj, _) = a.attestation_x5c("l.example", &HASH, "Authenticator Attestation", Some([9; 16]));
        let e = AttestationObject::parse(&obj).unwrap().verify(&HASH).unwrap_err().to_string();
        assert!(e.contains("AAGUID differs"), "{e}");
        let (obj, _) = a.attestation_x5c("l.example", &HASH, "Authenticator Attestation", None);
        assert!(
            AttestationObject::parse(&obj).unwrap().verify(&HASH).is_ok(),
            "the AAGUID extension is optional"
        );
    }

    #[test]
    fn unsupported_or_malformed_statements_are_refused_precisely() {
        let a = Authenticator::new();
        let ad = a.registration_auth_data("l.example", Flags::UP | Flags::AT, 0);
        let obj = |fmt: &str, st: Value| attestation_object(fmt, &ad, st);
        let e = AttestationObject::parse(&obj("tpm", cbor::text_map([]))).unwrap_err();
        assert_eq!(e, WebAuthnError::UnsupportedFormat("tpm".into()));
        for (bytes, needle) in [
            (obj("none", cbor::text_map([("x", cbor::int(1))])), "non-empty"),
            (obj("packed", cbor::text_map([("sig", Value::Bytes(vec![1]))])), "\"alg\" is missing"),
            (obj("packed", cbor::text_map([("alg", cbor::int(-7))])), "\"sig\" is missing"),
            (
                obj(
                    "packed",
                    cbor::text_map([
                        ("alg", cbor::int(-7)),
                        ("sig", Value::Bytes(vec![])),
                        ("ecdaaKeyId", Value::Bytes(vec![])),
                    ]),
                ),
                "ECDAA",
            ),
            (
                obj(
                    "packed",
                    cbor::text_map([
                        ("alg", cbor::int(-7)),
                        ("sig", Value::Bytes(vec![])),
                        ("x5c", Value::Array(vec![])),
                    ]),
                ),
                "\"x5c\" is empty",
            ),
            (vec![0xa0], "\"fmt\" is missing"),
            (vec![0x80], "not a CBOR map"),
            (cbor::encode(&cbor::int_map([(1, cbor::int(1))])), "not text"),
        ] {
            let e = AttestationObject::parse(&bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        let self_rs256 =
            obj("packed", cbor::text_map([("alg", cbor::int(-257)), ("sig", Value::Bytes(vec![0x30, 0]))]));
        let e = AttestationObject::parse(&self_rs256).unwrap().verify(&HASH).unwrap_err().to_string();
        assert!(e.contains("algorithm -257"), "{e}");
        let no_cred = attestation_object(
            "none",
            &crate::testkit::auth_data("l.example", Flags::UP, 0),
            cbor::text_map([]),
        );
        assert_eq!(
            AttestationObject::parse(&no_cred).unwrap().verify(&HASH),
            Err(WebAuthnError::NoCredential)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(obj) = AttestationObject::parse(&bytes) {
                let _ = obj.verify(&HASH);
            }
        }

        #[test]
        fn flipped_bytes_of_a_packed_object_never_panic_nor_pass_unchanged_checks(index in any::<usize>(), value in any::<u8>()) {
            let a = Authenticator::new();
            let original = a.attestation_self("l.example", &HASH);
            let mut bytes = original.clone();
            let i = index % bytes.len();
            bytes[i] = value;
            if let Ok(obj) = AttestationObject::parse(&bytes) {
                // The signature covers authData; any verdict other than a panic is acceptable,
                // and a pass means the bytes that matter did not change.
                if obj.verify(&HASH).is_ok() {
                    let orig = AttestationObject::parse(&original).unwrap();
                    prop_assert_eq!(obj.auth_data_raw, orig.auth_data_raw);
                }
            }
        }
    }
}
