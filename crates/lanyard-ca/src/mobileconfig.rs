//! Apple configuration profiles (`.mobileconfig`) that make an iPhone, iPad or Mac enrol its own
//! certificate over SCEP (DESIGN flow D).
//!
//! A profile is an XML property list of type `Configuration` holding two payloads: the root CA
//! (`com.apple.security.root`), so that the device trusts what Lanyard issues, and a
//! `com.apple.security.scep` payload with the one-time code as its challenge. [`sign_profile`]
//! wraps it in CMS SignedData (content attached), which the device shows as "Verified" when it
//! trusts the signer's chain.
//!
//! Sans-IO: everything comes in as arguments (certificates, names, the code, the time); the
//! caller serves the bytes.
//!
//! The keys and their meaning follow Apple's device-management schema
//! (`mdm/profiles/com.apple.security.scep.yaml`). Two choices worth knowing:
//! - `CAFingerprint` is the **SHA-1** of the CA certificate: iOS picks the hash by the length of
//!   the value and recognises MD5 (16 bytes) and SHA-1 (20 bytes) only (`SecSCEPValidateCACertMessage`
//!   in Apple's Security sources), so a SHA-256 value would make the device refuse the CA. SHA-1
//!   is safe here: it pins a certificate the same signed profile names, and forging a certificate
//!   with a given SHA-1 needs a second preimage, not a collision.
//! - The `PayloadIdentifier`s depend on the server's host and the user only, so installing a new
//!   profile for the same user on the same device replaces the old one instead of adding another.
//!   The `PayloadUUID`s are fresh for every profile.

use aws_lc_rs::digest;
use plist::{Dictionary, Value};
use time::OffsetDateTime;

use crate::error::CaError;
use crate::hierarchy::SignerCredential;
use crate::keys::CaSigner;

/// The SCEP key size the profile asks for (the payload's default, 1024, is too weak).
pub const KEY_SIZE: u64 = 2048;
/// `Key Usage`: 1 (signing) + 4 (encryption).
pub const KEY_USAGE: u64 = 5;
/// How often the device asks again after a PENDING answer.
pub const RETRIES: u64 = 3;
/// Seconds between retries.
pub const RETRY_DELAY: u64 = 10;

/// What goes into one profile.
#[derive(Debug, Clone)]
pub struct ScepProfileSpec<'a> {
    /// The server's host name as the device reaches it (`lanyard.example.org`); the payload
    /// identifiers are derived from it.
    pub host: &'a str,
    /// The organisation running Lanyard (`PayloadOrganization`, the subject's O).
    pub organization: &'a str,
    /// The user the certificate is for (login name); part of the identifiers and the subject CN.
    pub username: &'a str,
    /// The SCEP endpoint (`https://lanyard.example.org/scep`).
    pub scep_url: &'a str,
    /// The SCEP `Name` (CA-IDENT) the server expects.
    pub ca_ident: &'a str,
    /// The one-time enrolment code, sent as the SCEP challenge password.
    pub challenge: &'a str,
    /// The subject the device puts into its request, as (short name or OID, value) pairs, one RDN
    /// each, e.g. `[("CN", "jdoe mobile"), ("O", "Example")]`.
    pub subject: Vec<(String, String)>,
    /// DER of Lanyard's root certificate (the root payload).
    pub root_der: &'a [u8],
    /// DER of the CA certificate that SCEP's GetCACert answers with (the issuing CA); pinned by
    /// `CAFingerprint`.
    pub scep_ca_der: &'a [u8],
    /// When the device removes the profile by itself: the certificate's expected expiry.
    pub removal_date: OffsetDateTime,
}

/// The identifier of a user's profile on a server: `<host reversed>.lanyard.mobile.<user>`, e.g.
/// `org.example.lanyard.lanyard.mobile.jdoe`. Characters outside `[A-Za-z0-9.-]` (a port's colon,
/// an underscore) become `-`.
pub fn profile_identifier(host: &str, username: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
    };
    // A host with a port (`127.0.0.1:8443`) keeps the port: two servers on one machine are two
    // issuers.
    let host = clean(host.trim_end_matches('.'));
    let reversed: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).rev().collect();
    let user = clean(username);
    format!("{}.lanyard.mobile.{user}", reversed.join("."))
}

/// SHA-1 of a DER certificate, as `CAFingerprint` carries it (see the module docs).
pub fn ca_fingerprint(cert_der: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der).as_ref().to_vec()
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

fn date(t: OffsetDateTime) -> plist::Date {
    let st = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0));
    plist::Date::from(st)
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn i(v: u64) -> Value {
    Value::Integer(v.into())
}

/// The payload keys every payload carries.
fn payload(kind: &str, identifier: String, name: &str, description: &str, org: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), s(kind));
    d.insert("PayloadVersion".into(), i(1));
    d.insert("PayloadIdentifier".into(), Value::String(identifier));
    d.insert("PayloadUUID".into(), Value::String(uuid()));
    d.insert("PayloadDisplayName".into(), s(name));
    d.insert("PayloadDescription".into(), s(description));
    d.insert("PayloadOrganization".into(), s(org));
    d
}

/// Builds the profile as an XML property list (unsigned).
pub fn build_scep_profile(spec: &ScepProfileSpec<'_>) -> Result<Vec<u8>, CaError> {
    let id = profile_identifier(spec.host, spec.username);
    let org = spec.organization;

    let mut root = payload(
        "com.apple.security.root",
        format!("{id}.root"),
        &format!("{org} root certificate"),
        &format!("Makes this device trust certificates issued by {org}'s Lanyard."),
        org,
    );
    root.insert("PayloadCertificateFileName".into(), s("lanyard-root.cer"));
    root.insert("PayloadContent".into(), Value::Data(spec.root_der.to_vec()));

    let subject = spec
        .subject
        .iter()
        .map(|(k, v)| Value::Array(vec![Value::Array(vec![s(k), s(v)])]))
        .collect::<Vec<_>>();
    let mut scep = Dictionary::new();
    scep.insert("URL".into(), s(spec.scep_url));
    scep.insert("Name".into(), s(spec.ca_ident));
    scep.insert("Subject".into(), Value::Array(subject));
    scep.insert("Challenge".into(), s(spec.challenge));
    scep.insert("Keysize".into(), i(KEY_SIZE));
    scep.insert("Key Type".into(), s("RSA"));
    scep.insert("Key Usage".into(), i(KEY_USAGE));
    scep.insert("CAFingerprint".into(), Value::Data(ca_fingerprint(spec.scep_ca_der)));
    scep.insert("Retries".into(), i(RETRIES));
    scep.insert("RetryDelay".into(), i(RETRY_DELAY));
    let mut scep_payload = payload(
        "com.apple.security.scep",
        format!("{id}.scep"),
        &format!("{org} device certificate"),
        &format!("Creates a key on this device and asks {org}'s Lanyard for its certificate."),
        org,
    );
    scep_payload.insert("PayloadContent".into(), Value::Dictionary(scep));

    let mut top = payload(
        "Configuration",
        id,
        &format!("{org} mobile certificate"),
        &format!(
            "Installs {org}'s root certificate and enrols a certificate for {} on this device. \
             The device removes this profile by itself when the certificate expires.",
            spec.username
        ),
        org,
    );
    top.insert("PayloadRemovalDisallowed".into(), Value::Boolean(false));
    top.insert("RemovalDate".into(), Value::Date(date(spec.removal_date)));
    top.insert(
        "PayloadContent".into(),
        Value::Array(vec![Value::Dictionary(root), Value::Dictionary(scep_payload)]),
    );
    let mut out = Vec::new();
    Value::Dictionary(top)
        .to_writer_xml(&mut out)
        .map_err(|e| CaError::SelfCheckFailed(if e.is_io() { "profile (I/O)" } else { "profile (plist)" }))?;
    Ok(out)
}

/// Signs a profile: CMS SignedData, id-data, the plist inside, the signer's certificate and
/// `chain` (the issuing CA) included.
pub fn sign_profile<K: CaSigner>(
    signer: &SignerCredential<K>,
    chain: &[&[u8]],
    plist_xml: &[u8],
) -> Result<Vec<u8>, CaError> {
    crate::cms::sign_attached(&signer.key, &signer.certificate.der, chain, plist_xml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn identifiers_come_from_host_and_user_only() {
        assert_eq!(
            profile_identifier("lanyard.example.org", "jdoe"),
            "org.example.lanyard.lanyard.mobile.jdoe"
        );
        assert_eq!(profile_identifier("127.0.0.1:8443", "j.doe"), "1-8443.0.0.127.lanyard.mobile.j.doe");
        assert_eq!(profile_identifier("host.", "a_b"), "host.lanyard.mobile.a-b");
    }

    fn spec<'a>(root: &'a [u8], ca: &'a [u8]) -> ScepProfileSpec<'a> {
        ScepProfileSpec {
            host: "lanyard.example.org",
            organization: "Example & Co",
            username: "jdoe",
            scep_url: "https://lanyard.example.org/scep",
            ca_ident: "lanyard",
            challenge: "code-1234",
            subject: vec![("CN".into(), "jdoe mobile".into()), ("O".into(), "Example & Co".into())],
            root_der: root,
            scep_ca_der: ca,
            removal_date: datetime!(2027-01-02 03:04:05 UTC),
        }
    }

    #[test]
    fn the_profile_holds_the_root_and_the_scep_payload() {
        let xml = build_scep_profile(&spec(b"root-der", b"ca-der")).unwrap();
        let top = Value::from_reader_xml(xml.as_slice()).unwrap().into_dictionary().unwrap();
        assert_eq!(top["PayloadType"].as_string(), Some("Configuration"));
        assert_eq!(top["PayloadIdentifier"].as_string(), Some("org.example.lanyard.lanyard.mobile.jdoe"));
        assert_eq!(top["PayloadOrganization"].as_string(), Some("Example & Co"));
        let removal: std::time::SystemTime = top["RemovalDate"].as_date().unwrap().into();
        assert_eq!(
            removal.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            u64::try_from(datetime!(2027-01-02 03:04:05 UTC).unix_timestamp()).unwrap()
        );
        let payloads = top["PayloadContent"].as_array().unwrap();
        assert_eq!(payloads.len(), 2);
        let root = payloads[0].as_dictionary().unwrap();
        assert_eq!(root["PayloadType"].as_string(), Some("com.apple.security.root"));
        assert_eq!(root["PayloadContent"].as_data(), Some(&b"root-der"[..]));
        let scep = payloads[1].as_dictionary().unwrap();
        assert_eq!(scep["PayloadType"].as_string(), Some("com.apple.security.scep"));
        assert_eq!(
            scep["PayloadIdentifier"].as_string(),
            Some("org.example.lanyard.lanyard.mobile.jdoe.scep")
        );
        let c = scep["PayloadContent"].as_dictionary().unwrap();
        assert_eq!(c["URL"].as_string(), Some("https://lanyard.example.org/scep"));
        assert_eq!(c["Challenge"].as_string(), Some("code-1234"));
        assert_eq!(c["Keysize"].as_unsigned_integer(), Some(2048));
        assert_eq!(c["Key Type"].as_string(), Some("RSA"));
        assert_eq!(c["Key Usage"].as_unsigned_integer(), Some(5));
        assert_eq!(c["CAFingerprint"].as_data().map(<[u8]>::len), Some(20));
        assert_eq!(c["CAFingerprint"].as_data(), Some(ca_fingerprint(b"ca-der").as_slice()));
        // Array of RDNs, each an array of one [name, value] pair.
        let subject = c["Subject"].as_array().unwrap();
        let pairs: Vec<Vec<&str>> = subject
            .iter()
            .map(|rdn| {
                let rdn = rdn.as_array().unwrap();
                assert_eq!(rdn.len(), 1);
                rdn[0].as_array().unwrap().iter().map(|v| v.as_string().unwrap()).collect()
            })
            .collect();
        assert_eq!(pairs, vec![vec!["CN", "jdoe mobile"], vec!["O", "Example & Co"]]);
    }

    #[test]
    fn every_profile_gets_fresh_uuids_but_the_same_identifiers() {
        let a = build_scep_profile(&spec(b"r", b"c")).unwrap();
        let b = build_scep_profile(&spec(b"r", b"c")).unwrap();
        let uuids = |xml: &[u8]| {
            let top = Value::from_reader_xml(xml).unwrap().into_dictionary().unwrap();
            let mut out = vec![top["PayloadUUID"].as_string().unwrap().to_owned()];
            for p in top["PayloadContent"].as_array().unwrap() {
                out.push(p.as_dictionary().unwrap()["PayloadUUID"].as_string().unwrap().to_owned());
            }
            out
        };
        let (ua, ub) = (uuids(&a), uuids(&b));
        assert_eq!(ua.len(), 3);
        assert!(ua.iter().all(|u| !ub.contains(u)), "{ua:?} {ub:?}");
        let mut unique = ua.clone();
        unique.dedup();
        assert_eq!(unique.len(), 3);
    }
}
