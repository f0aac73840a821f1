//! A software authenticator for tests: a P-256 key pair that builds authenticator data,
//! attestation objects (none, packed self, packed x5c) and assertions exactly as the spec lays
//! them out, so the relying-party code is tested against bytes a real authenticator would send.
//! It signs for real; nothing in it short-cuts a check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use lanyard_ctap::cbor::{self, Value};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use sha2::{Digest, Sha256};

use crate::auth_data::Flags;
use crate::cose::CoseKey;

/// Authenticator data without attested credential data: RP ID hash, flags, counter.
pub fn auth_data(rp_id: &str, flags: u8, count: u32) -> Vec<u8> {
    let mut out = Sha256::digest(rp_id.as_bytes()).to_vec();
    out.push(flags);
    out.extend_from_slice(&count.to_be_bytes());
    out
}

/// `{"fmt": fmt, "attStmt": statement, "authData": auth_data}`, canonically encoded.
pub fn attestation_object(fmt: &str, auth_data: &[u8], statement: Value) -> Vec<u8> {
    cbor::encode(&cbor::text_map([
        ("fmt", Value::Text(fmt.to_owned())),
        ("attStmt", statement),
        ("authData", Value::Bytes(auth_data.to_vec())),
    ]))
}

/// A `clientDataJSON` as a browser writes it.
pub fn client_data(kind: &str, challenge: &[u8], origin: &str, cross_origin: bool) -> Vec<u8> {
    format!(
        r#"{{"type":"{kind}","challenge":"{}","origin":"{origin}","crossOrigin":{cross_origin}}}"#,
        crate::b64url(challenge)
    )
    .into_bytes()
}

/// One credential of a software authenticator.
pub struct Authenticator {
    pub key: SigningKey,
    pub credential_id: Vec<u8>,
    pub aaguid: [u8; 16],
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator {
    pub fn new() -> Self {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let mut credential_id = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut credential_id);
        Self { key, credential_id, aaguid: *b"lanyard-test-aag" }
    }

    pub fn cose(&self) -> CoseKey {
        CoseKey::from_verifying_key(*self.key.verifying_key())
    }

    /// Authenticator data with this credential attested.
    pub fn registration_auth_data(&self, rp_id: &str, flags: u8, count: u32) -> Vec<u8> {
        let mut out = auth_data(rp_id, flags | Flags::AT, count);
        out.extend_from_slice(&self.aaguid);
        out.extend_from_slice(&u16::try_from(self.credential_id.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&self.credential_id);
        out.extend(self.cose().to_bytes());
        out
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: DerSignature = self.key.sign(message);
        sig.as_bytes().to_vec()
    }

    pub fn attestation_none(&self, rp_id: &str, flags: u8) -> Vec<u8> {
        attestation_object("none", &self.registration_auth_data(rp_id, flags, 0), cbor::text_map([]))
    }

    /// Packed self attestation over `authData ‖ client_data_hash`, flags UP and UV.
    pub fn attestation_self(&self, rp_id: &str, client_data_hash: &[u8; 32]) -> Vec<u8> {
        let ad = self.registration_auth_data(rp_id, Flags::UP | Flags::UV, 0);
        let mut signed = ad.clone();
        signed.extend_from_slice(client_data_hash);
        let st = cbor::text_map([("alg", cbor::int(-7)), ("sig", Value::Bytes(self.sign(&signed)))]);
        attestation_object("packed", &ad, st)
    }

    /// Packed basic attestation with a fresh self-signed attestation certificate whose subject OU
    /// is `ou` and which carries `aaguid` in the FIDO extension when given. Answers the object and
    /// the certificate (DER).
    pub fn attestation_x5c(
        &self,
        rp_id: &str,
        client_data_hash: &[u8; 32],
        ou: &str,
        aaguid: Option<[u8; 16]>,
    ) -> (Vec<u8>, Vec<u8>) {
        let att_key = SigningKey::random(&mut rand::rngs::OsRng);
        let cert = attestation_certificate(&att_key, ou, aaguid);
        let ad = self.registration_auth_data(rp_id, Flags::UP | Flags::UV, 0);
        let mut signed = ad.clone();
        signed.extend_from_slice(client_data_hash);
        let sig: DerSignature = att_key.sign(&signed);
        let st = cbor::text_map([
            ("alg", cbor::int(-7)),
            ("sig", Value::Bytes(sig.as_bytes().to_vec())),
            ("x5c", Value::Array(vec![Value::Bytes(cert.clone())])),
        ]);
        (attestation_object("packed", &ad, st), cert)
    }

    /// An assertion signature over `authData ‖ SHA-256(client_data_json)`.
    pub fn assert(&self, auth_data: &[u8], client_data_json: &[u8]) -> Vec<u8> {
        let mut signed = auth_data.to_vec();
        signed.extend_from_slice(&Sha256::digest(client_data_json));
        self.sign(&signed)
    }
}

struct AaguidExtension(der::asn1::OctetString);

impl der::oid::AssociatedOid for AaguidExtension {
    const OID: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.45724.1.1.4");
}

impl der::Encode for AaguidExtension {
    fn encoded_len(&self) -> der::Result<der::Length> {
        self.0.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

impl x509_cert::ext::AsExtension for AaguidExtension {
    fn critical(&self, _: &x509_cert::name::Name, _: &[x509_cert::ext::Extension]) -> bool {
        false
    }
}

fn attestation_certificate(key: &SigningKey, ou: &str, aaguid: Option<[u8; 16]>) -> Vec<u8> {
    use der::Encode;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    let subject =
        x509_cert::name::Name::from_str(&format!("CN=Test Authenticator,OU={ou},O=Lanyard Tests,C=SE"))
            .unwrap();
    let issuer = x509_cert::name::Name::from_str("CN=Test Attestation Root,O=Lanyard Tests,C=SE").unwrap();
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).unwrap();
    let validity = x509_cert::time::Validity::from_now(std::time::Duration::from_secs(3600)).unwrap();
    let profile = Profile::Leaf {
        issuer,
        enable_key_agreement: false,
        enable_key_encipherment: false,
        include_subject_key_identifier: false,
    };
    let serial = x509_cert::serial_number::SerialNumber::from(7u32);
    let mut builder = CertificateBuilder::new(profile, serial, validity, subject, spki, key).unwrap();
    if let Some(aaguid) = aaguid {
        builder
            .add_extension(&AaguidExtension(der::asn1::OctetString::new(aaguid.to_vec()).unwrap()))
            .unwrap();
    }
    builder.build::<DerSignature>().unwrap().to_der().unwrap()
}
