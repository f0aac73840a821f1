//! Lanyard CA, judged by independent tools: `openssl verify` / `x509` / `crl` / `ocsp` / `req`, and
//! pkilint (`lint_pkix_cert`, `lint_crl`, `lint_ocsp_response`, installed by `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests stamp real certificates and card images with the real time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use der::asn1::{Any, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use lanyard_ca::profile::{KeyUsageBit, Presence};
use lanyard_ca::*;
use lanyard_piv::objects::{Chuid, FascN};
use lanyard_testkit::tools::{self, Ran, pkilint};
use proptest::prelude::*;
use time::{Duration, OffsetDateTime, macros::datetime};
use x509_cert::ext::Extension;
use x509_ocsp::{CertId, OcspRequest, OcspResponseStatus, Request, TbsRequest};

// ------------------------------------------------------------------------------------------------
// Tools

// The kit's runners; a missing tool or venv fails with its install step.
fn openssl(args: &[&str], dir: &Path) -> Ran {
    tools::command("openssl", args, Some(dir))
}

fn openssl_ok(args: &[&str], dir: &Path) -> String {
    tools::openssl_in(Some(dir), args)
}

// ------------------------------------------------------------------------------------------------
// Fixtures

fn urls() -> CaUrls {
    CaUrls::new("http://pki.lanyard.test").unwrap()
}

fn now() -> OffsetDateTime {
    // Certificates must be valid when openssl checks them, so use the real clock here (the library
    // itself never reads it).
    OffsetDateTime::now_utc()
}

fn hierarchy(alg: KeyAlgorithm) -> Hierarchy {
    let spec = HierarchySpec::new("Lanyard Test", alg, urls()).unwrap();
    Hierarchy::generate(&spec, now() - Duration::minutes(5)).unwrap()
}

const FASC_N: [u8; 25] = [
    0xd4, 0x32, 0x10, 0xd8, 0x21, 0x0c, 0x2d, 0x08, 0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0x08, 0x42, 0x10,
    0x84, 0x3e, 0x50, 0x31, 0x40, 0x10, 0x84, 0x3f,
];
const CARD_UUID: [u8; 16] =
    [0x3f, 0x25, 0x04, 0xe0, 0x4f, 0x89, 0x11, 0xd3, 0x9a, 0x0c, 0x03, 0x05, 0xe8, 0x2c, 0x33, 0x01];
const CARDHOLDER_UUID: [u8; 16] =
    [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x47, 0x08, 0x89, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e, 0x6f, 0x70];

/// Every SAN part the profile allows, filled in.
fn full_san(profile: &CertificateProfile) -> SanInput {
    let allowed = |p: Presence| p != Presence::Forbidden;
    SanInput {
        fasc_n: allowed(profile.san.fasc_n).then_some(FASC_N),
        card_uuid: allowed(profile.san.card_uuid).then_some(CARD_UUID),
        cardholder_uuid: allowed(profile.san.cardholder_uuid).then_some(CARDHOLDER_UUID),
        upn: allowed(profile.san.upn).then(|| "jdoe@corp.lanyard.test".to_string()),
        email: if allowed(profile.san.email) { vec!["jane.doe@lanyard.test".into()] } else { vec![] },
        dns: if allowed(profile.san.dns) { vec!["lanyard.lanyard.test".into()] } else { vec![] },
        ip: if allowed(profile.san.ip) { vec!["192.0.2.7".parse().unwrap()] } else { vec![] },
    }
}

fn jane() -> Name {
    parse_dn("CN=Jane Doe,OU=People,O=Lanyard Test,C=US").unwrap()
}

fn request<'a>(profile: &'a CertificateProfile, key: &SoftwareKey) -> IssueRequest<'a> {
    let start = now() - Duration::minutes(1);
    IssueRequest {
        profile,
        subject: if profile.subject == Presence::Required { jane() } else { Name::default() },
        public_key: key.public_key(),
        san: full_san(profile),
        not_before: start,
        requested_not_after: start + Duration::days(i64::from(profile.max_validity_days)),
        cap_not_after: None,
    }
}

/// A temp dir with root.pem, issuing.pem and chain.pem (root + issuing) written.
fn workdir(h: &Hierarchy) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), h.root.certificate_pem()).unwrap();
    std::fs::write(dir.path().join("issuing.pem"), h.issuing.certificate_pem()).unwrap();
    std::fs::write(dir.path().join("chain.pem"), h.root.certificate_pem() + &h.issuing.certificate_pem())
        .unwrap();
    dir
}

fn write_cert(dir: &Path, name: &str, cert: &IssuedCertificate) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, cert.to_pem()).unwrap();
    path
}

fn assert_chain_verifies(dir: &Path, leaf: &str) {
    let out = openssl_ok(&["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", leaf], dir);
    assert!(out.contains(&format!("{leaf}: OK")), "openssl verify {leaf}:\n{out}");
}

/// One extension from `openssl x509 -text`: (critical, body with lines joined by '\n').
fn extension(text: &str, name: &str) -> Option<(bool, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let i = lines.iter().position(|l| l.trim_start().starts_with(&format!("{name}:")))?;
    let indent = lines[i].len() - lines[i].trim_start().len();
    let critical = lines[i].trim_end().ends_with("critical");
    let body: Vec<&str> = lines[i + 1..]
        .iter()
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(|l| l.trim())
        .collect();
    Some((critical, body.join("\n")))
}

fn x509_text(dir: &Path, file: &str) -> String {
    openssl_ok(&["x509", "-in", file, "-noout", "-text"], dir)
}

/// The SAN extension's value as `openssl asn1parse` decodes it, to check the exact encodings.
fn san_asn1(dir: &Path, file: &str) -> String {
    let outer = openssl_ok(&["asn1parse", "-in", file], dir);
    let lines: Vec<&str> = outer.lines().collect();
    let at = lines.iter().position(|l| l.contains(":X509v3 Subject Alternative Name")).unwrap();
    let value = lines[at + 1..].iter().find(|l| l.contains("OCTET STRING")).unwrap();
    let offset = value.trim_start().split(':').next().unwrap();
    openssl_ok(&["asn1parse", "-in", file, "-strparse", offset, "-i"], dir)
}

fn openssl_ku_name(bit: KeyUsageBit) -> &'static str {
    match bit {
        KeyUsageBit::DigitalSignature => "Digital Signature",
        KeyUsageBit::NonRepudiation => "Non Repudiation",
        KeyUsageBit::KeyEncipherment => "Key Encipherment",
        KeyUsageBit::DataEncipherment => "Data Encipherment",
        KeyUsageBit::KeyAgreement => "Key Agreement",
        KeyUsageBit::KeyCertSign => "Certificate Sign",
        KeyUsageBit::CrlSign => "CRL Sign",
        KeyUsageBit::EncipherOnly => "Encipher Only",
        KeyUsageBit::DecipherOnly => "Decipher Only",
    }
}

// ------------------------------------------------------------------------------------------------
// Profiles, judged by openssl and pkilint

/// What openssl must show for each built-in end-entity profile: (id, key usage for EC keys,
/// key usage for RSA keys, EKU line (critical?), policy line, SAN fragments).
struct Expect {
    id: &'static str,
    ku_ec: &'static str,
    ku_rsa: &'static str,
    eku: Option<(bool, &'static str)>,
    policy: Option<&'static str>,
    san: &'static [&'static str],
    san_critical: bool,
}

const FASC_N_SHOWN: &str = "othername: 2.16.840.1.101.3.6.6::<unsupported>";
const PIV_EKU: &str = "TLS Web Client Authentication, PKINIT Client Auth, Microsoft Smartcard Login";

const EXPECTED: &[Expect] = &[
    Expect {
        id: "piv-auth",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: Some((false, PIV_EKU)),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.13"),
        san: &[
            FASC_N_SHOWN,
            "URI:urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "URI:urn:uuid:a1b2c3d4-e5f6-4708-891a-2b3c4d5e6f70",
            "othername: UPN::jdoe@corp.lanyard.test",
            "email:jane.doe@lanyard.test",
        ],
        san_critical: false,
    },
    Expect {
        id: "card-auth",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: Some((true, "2.16.840.1.101.3.6.8")),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.17"),
        san: &[FASC_N_SHOWN, "URI:urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301"],
        san_critical: true,
    },
    Expect {
        id: "digital-signature",
        ku_ec: "Digital Signature, Non Repudiation",
        ku_rsa: "Digital Signature, Non Repudiation",
        eku: Some((false, "E-mail Protection, 1.3.6.1.4.1.311.10.3.12, 1.2.840.113583.1.1.5")),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.7"),
        san: &["email:jane.doe@lanyard.test", "othername: UPN::jdoe@corp.lanyard.test"],
        san_critical: false,
    },
    Expect {
        id: "key-management",
        ku_ec: "Key Agreement",
        ku_rsa: "Key Encipherment",
        eku: Some((false, "E-mail Protection")),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.7"),
        san: &["email:jane.doe@lanyard.test"],
        san_critical: false,
    },
    Expect {
        id: "derived-piv-auth",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: Some((false, PIV_EKU)),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.40"),
        san: &["URI:urn:uuid:a1b2c3d4-e5f6-4708-891a-2b3c4d5e6f70", "othername: UPN::jdoe@corp.lanyard.test"],
        san_critical: false,
    },
    Expect {
        id: "derived-piv-auth-hardware",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: Some((false, PIV_EKU)),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.41"),
        san: &["URI:urn:uuid:a1b2c3d4-e5f6-4708-891a-2b3c4d5e6f70"],
        san_critical: false,
    },
    Expect {
        id: "mobile-device",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature, Key Encipherment",
        eku: Some((false, "TLS Web Client Authentication")),
        policy: None,
        san: &["othername: UPN::jdoe@corp.lanyard.test", "DNS:lanyard.lanyard.test"],
        san_critical: false,
    },
    Expect {
        id: "content-signer",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: Some((true, "2.16.840.1.101.3.6.7")),
        policy: Some("Policy: 2.16.840.1.101.3.2.1.3.39"),
        san: &[],
        san_critical: false,
    },
    Expect {
        id: "profile-signer",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: None,
        policy: None,
        san: &[],
        san_critical: false,
    },
    Expect {
        id: "scep-ra",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature, Key Encipherment",
        eku: None,
        policy: None,
        san: &[],
        san_critical: false,
    },
    Expect {
        id: "ocsp-signer",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature",
        eku: Some((false, "OCSP Signing")),
        policy: None,
        san: &[],
        san_critical: false,
    },
    Expect {
        id: "tls-server",
        ku_ec: "Digital Signature",
        ku_rsa: "Digital Signature, Key Encipherment",
        eku: Some((false, "TLS Web Server Authentication")),
        policy: None,
        san: &["DNS:lanyard.lanyard.test", "IP Address:192.0.2.7"],
        san_critical: true,
    },
];

fn check_end_entity(dir: &Path, h: &Hierarchy, profile: &CertificateProfile, leaf_alg: KeyAlgorithm) {
    let expect = EXPECTED
        .iter()
        .find(|e| e.id == profile.id)
        .unwrap_or_else(|| panic!("no expectation for {}", profile.id));
    let key = SoftwareKey::generate(leaf_alg).unwrap();
    let cert = h.issuing.issue(&request(profile, &key)).unwrap();
    let file = format!("{}-{leaf_alg}.pem", profile.id);
    let path = write_cert(dir, &file, &cert);
    assert_chain_verifies(dir, &file);

    let text = x509_text(dir, &file);
    let ctx = format!("{file}:\n{text}");
    assert!(text.contains("Version: 3 (0x2)"), "{ctx}");
    let (ku_critical, ku) = extension(&text, "X509v3 Key Usage").unwrap();
    assert!(ku_critical, "{ctx}");
    assert_eq!(ku, if leaf_alg.is_ec() { expect.ku_ec } else { expect.ku_rsa }, "{ctx}");
    // The profile data and the openssl rendering agree.
    let from_profile: Vec<&str> =
        profile.key_usage.bits_for(leaf_alg).iter().map(|b| openssl_ku_name(*b)).collect();
    assert_eq!(ku, from_profile.join(", "));

    assert_eq!(
        extension(&text, "X509v3 Extended Key Usage"),
        expect.eku.map(|(c, s)| (c, s.to_string())),
        "{ctx}"
    );
    assert_eq!(
        extension(&text, "X509v3 Certificate Policies").map(|(_, b)| b),
        expect.policy.map(String::from),
        "{ctx}"
    );
    match extension(&text, "X509v3 Subject Alternative Name") {
        Some((critical, body)) => {
            assert_eq!(critical, expect.san_critical, "{ctx}");
            for fragment in expect.san {
                assert!(body.contains(fragment), "SAN lacks {fragment:?}: {ctx}");
            }
        }
        None => assert!(expect.san.is_empty(), "{ctx}"),
    }
    // The exact encodings of the other-names: FASC-N as a 25-byte OCTET STRING, UPN as UTF8String.
    if profile.san.fasc_n != Presence::Forbidden || profile.san.upn != Presence::Forbidden {
        let asn1 = san_asn1(dir, &file);
        if profile.san.fasc_n != Presence::Forbidden {
            let fasc_n = format!("OCTET STRING      [HEX DUMP]:{}", hex::encode_upper(FASC_N));
            let oid = asn1.find(":2.16.840.1.101.3.6.6").unwrap_or_else(|| panic!("{asn1}"));
            assert!(asn1[oid..].contains(&fasc_n), "FASC-N encoding:\n{asn1}");
        }
        if profile.san.upn != Presence::Forbidden {
            let oid = asn1.find(":Microsoft User Principal Name").unwrap_or_else(|| panic!("{asn1}"));
            assert!(
                asn1[oid..].contains("UTF8STRING        :jdoe@corp.lanyard.test"),
                "UPN encoding:\n{asn1}"
            );
        }
    }
    // End entities carry no basicConstraints; AKI/SKI/AIA are always present.
    assert!(extension(&text, "X509v3 Basic Constraints").is_none(), "{ctx}");
    assert!(extension(&text, "X509v3 Subject Key Identifier").is_some(), "{ctx}");
    let (_, aki) = extension(&text, "X509v3 Authority Key Identifier").unwrap();
    assert_eq!(aki.replace(':', "").to_lowercase(), hex::encode(h.issuing.key_identifier()), "{ctx}");
    let (_, aia) = extension(&text, "Authority Information Access").unwrap();
    assert!(aia.contains("CA Issuers - URI:http://pki.lanyard.test/pki/ca.crt"), "{ctx}");
    if profile.id == "ocsp-signer" {
        assert!(!aia.contains("OCSP - URI"), "{ctx}");
        assert!(text.contains("OCSP No Check"), "{ctx}");
        assert!(extension(&text, "X509v3 CRL Distribution Points").is_none(), "{ctx}");
    } else {
        assert!(aia.contains("OCSP - URI:http://pki.lanyard.test/pki/ocsp"), "{ctx}");
        let (_, dp) = extension(&text, "X509v3 CRL Distribution Points").unwrap();
        assert!(dp.contains("URI:http://pki.lanyard.test/pki/crl"), "{ctx}");
    }
    if profile.subject != Presence::Required {
        assert!(text.lines().any(|l| l.trim() == "Subject:"), "empty subject expected: {ctx}");
    } else {
        assert!(text.contains("Subject: C = US, O = Lanyard Test, OU = People, CN = Jane Doe"), "{ctx}");
    }
    pkilint::assert_cert(&path);
    pkilint::assert_pair(&dir.join("issuing.pem"), &path);
}

#[test]
fn every_builtin_profile_under_a_p256_issuing_ca() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let dir = workdir(&h);
    let d = dir.path();

    // The CA certificates themselves.
    assert_chain_verifies(d, "issuing.pem");
    let root = x509_text(d, "root.pem");
    assert_eq!(extension(&root, "X509v3 Basic Constraints"), Some((true, "CA:TRUE".into())));
    assert_eq!(extension(&root, "X509v3 Key Usage"), Some((true, "Certificate Sign, CRL Sign".into())));
    assert!(extension(&root, "Authority Information Access").is_none(), "{root}");
    let issuing = x509_text(d, "issuing.pem");
    assert_eq!(extension(&issuing, "X509v3 Basic Constraints"), Some((true, "CA:TRUE, pathlen:0".into())));
    assert_eq!(
        extension(&issuing, "X509v3 Certificate Policies"),
        Some((false, "Policy: X509v3 Any Policy".into()))
    );
    let (_, aia) = extension(&issuing, "Authority Information Access").unwrap();
    assert_eq!(aia, "CA Issuers - URI:http://pki.lanyard.test/pki/root.crt");
    assert!(issuing.contains("URI:http://pki.lanyard.test/pki/root.crl"), "{issuing}");
    pkilint::assert_cert(&d.join("root.pem"));
    pkilint::assert_cert(&d.join("issuing.pem"));
    pkilint::assert_pair(&d.join("root.pem"), &d.join("issuing.pem"));

    // The hierarchy's own OCSP and content-signer certificates.
    let ocsp = d.join("ocsp.pem");
    std::fs::write(&ocsp, pem("CERTIFICATE", &h.ocsp.responder_certificate().to_der().unwrap())).unwrap();
    assert_chain_verifies(d, "ocsp.pem");
    pkilint::assert_cert(&ocsp);
    write_cert(d, "content-signer.pem", &h.content_signer.certificate);
    assert_chain_verifies(d, "content-signer.pem");

    let mut covered = BTreeSet::new();
    for profile in CertificateProfile::builtin_all() {
        if profile.ca.is_some() {
            covered.insert(profile.id.clone());
            continue;
        }
        if !profile.key_algorithms.contains(&KeyAlgorithm::EcP256) {
            // RSA-only (the SCEP RA): an RSA key under the P-256 CA.
            check_end_entity(d, &h, &profile, KeyAlgorithm::Rsa2048);
            covered.insert(profile.id.clone());
            continue;
        }
        check_end_entity(d, &h, &profile, KeyAlgorithm::EcP256);
        // Key usage depends on the key type for 9D (and the RSA variants of mobile/TLS).
        if profile.key_usage.ec != profile.key_usage.rsa {
            check_end_entity(d, &h, &profile, KeyAlgorithm::Rsa2048);
        }
        covered.insert(profile.id.clone());
    }
    let all: BTreeSet<String> =
        EXPECTED.iter().map(|e| e.id.to_string()).chain(["root-ca".into(), "issuing-ca".into()]).collect();
    assert_eq!(covered, all, "every built-in profile has an expectation");
}

#[test]
fn hierarchies_with_p384_rsa2048_and_rsa3072_ca_keys() {
    for (alg, sig_name) in [
        (KeyAlgorithm::EcP384, "ecdsa-with-SHA384"),
        (KeyAlgorithm::Rsa2048, "sha256WithRSAEncryption"),
        (KeyAlgorithm::Rsa3072, "sha256WithRSAEncryption"),
    ] {
        let h = hierarchy(alg);
        let dir = workdir(&h);
        let d = dir.path();
        assert_chain_verifies(d, "issuing.pem");
        pkilint::assert_cert(&d.join("root.pem"));
        pkilint::assert_cert(&d.join("issuing.pem"));
        pkilint::assert_pair(&d.join("root.pem"), &d.join("issuing.pem"));
        let root = x509_text(d, "root.pem");
        assert!(root.contains(&format!("Signature Algorithm: {sig_name}")), "{alg}: {root}");
        // A leaf of the CA's own algorithm, and the key-type-dependent 9D profile.
        check_end_entity(d, &h, &CertificateProfile::piv_authentication(), alg);
        check_end_entity(d, &h, &CertificateProfile::key_management(), alg);
        let leaf = x509_text(d, &format!("piv-auth-{alg}.pem"));
        assert!(leaf.contains(&format!("Signature Algorithm: {sig_name}")), "{alg}: {leaf}");
        write_cert(d, "cs.pem", &h.content_signer.certificate);
        assert_chain_verifies(d, "cs.pem");
    }
}

// ------------------------------------------------------------------------------------------------
// Issuance rules

#[test]
fn validity_is_capped_by_the_card_expiry_and_the_profile() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let dir = workdir(&h);
    let profile = CertificateProfile::piv_authentication();
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let start = datetime!(2026-01-01 00:00:00 UTC).max(now() - Duration::days(1));
    let start = start.replace_nanosecond(0).unwrap();
    let card_expiry = start + Duration::days(400);

    let mut req = request(&profile, &key);
    req.not_before = start;
    req.requested_not_after = start + Duration::days(3650);
    req.cap_not_after = Some(card_expiry);
    let cert = h.issuing.issue(&req).unwrap();
    assert_eq!(cert.not_before().unwrap(), start);
    assert_eq!(cert.not_after().unwrap(), card_expiry);
    write_cert(dir.path(), "capped.pem", &cert);
    let out = openssl_ok(&["x509", "-in", "capped.pem", "-noout", "-enddate"], dir.path());
    let expected = format!(
        "notAfter={}",
        card_expiry
            .format(time::macros::format_description!(
                "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
            ))
            .unwrap()
    );
    assert_eq!(out.trim(), expected);

    // Without a cap: the profile's three years, not the ten requested.
    req.cap_not_after = None;
    let cert = h.issuing.issue(&req).unwrap();
    assert_eq!(cert.not_after().unwrap(), start + Duration::days(1095));

    // A cap before notBefore is an error, not a silently empty certificate.
    req.cap_not_after = Some(start - Duration::days(1));
    assert!(matches!(h.issuing.issue(&req), Err(CaError::CapBeforeNotBefore { .. })));
    req.cap_not_after = None;
    req.requested_not_after = start;
    assert!(matches!(h.issuing.issue(&req), Err(CaError::EmptyValidity { .. })));

    // Dates X.509 cannot carry are an error, not a panic.
    req.not_before = datetime!(9999-12-30 00:00:00 UTC);
    req.requested_not_after = datetime!(9999-12-31 00:00:00 UTC);
    let root_profile = CertificateProfile::root_ca();
    let far = lanyard_ca::hierarchy::create_root(
        SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap(),
        parse_dn("CN=Far Future").unwrap(),
        req.not_before,
        root_profile.max_validity_days,
        &urls(),
    );
    assert!(matches!(far, Err(CaError::TimeOutOfRange(_))), "{far:?}");
    req.not_before = datetime!(1960-01-01 00:00:00 UTC);
    req.requested_not_after = datetime!(1961-01-01 00:00:00 UTC);
    assert!(matches!(h.issuing.issue(&req), Err(CaError::TimeOutOfRange(_))));

    // Nothing outlives the issuing CA.
    let ca_end = h.issuing.certificate().tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    let content = CertificateProfile::content_signer();
    let mut req = request(&content, &key);
    req.not_before = OffsetDateTime::from_unix_timestamp(ca_end as i64).unwrap() - Duration::days(10);
    req.requested_not_after = req.not_before + Duration::days(365);
    let cert = h.issuing.issue(&req).unwrap();
    assert_eq!(cert.not_after().unwrap().unix_timestamp(), ca_end as i64);
}

#[test]
fn requests_that_break_the_profile_are_refused_precisely() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let piv = CertificateProfile::piv_authentication();

    let mut req = request(&piv, &key);
    req.san.fasc_n = None;
    let err = h.issuing.issue(&req).unwrap_err();
    assert!(matches!(err, CaError::SanPartMissing { part: SanPart::FascN, .. }), "{err}");
    assert!(err.to_string().contains("FASC-N"), "{err}");

    let mut req = request(&piv, &key);
    req.san.dns = vec!["host.lanyard.test".into()];
    assert!(matches!(h.issuing.issue(&req), Err(CaError::SanPartNotAllowed { part: SanPart::Dns, .. })));

    let mut req = request(&piv, &key);
    req.subject = Name::default();
    assert!(matches!(h.issuing.issue(&req), Err(CaError::SubjectRequired { .. })));

    let mut req = request(&piv, &key);
    req.san.email = vec!["not an address".into()];
    assert!(matches!(h.issuing.issue(&req), Err(CaError::InvalidSanValue { part: SanPart::Email, .. })));

    let tls = CertificateProfile::tls_server();
    let mut req = request(&tls, &key);
    req.san = SanInput::default();
    assert!(matches!(h.issuing.issue(&req), Err(CaError::SanRequired { .. })));

    // Key type restrictions, and keyAgreement only for EC keys.
    let mut p256_only = CertificateProfile::piv_authentication();
    p256_only.key_algorithms = vec![KeyAlgorithm::EcP256];
    let rsa = SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let err = h.issuing.issue(&request(&p256_only, &rsa)).unwrap_err();
    assert!(matches!(err, CaError::KeyNotAllowed { key: KeyAlgorithm::Rsa2048, .. }), "{err}");
    let mut broken = CertificateProfile::key_management();
    broken.key_usage.rsa = vec![KeyUsageBit::KeyAgreement];
    assert!(matches!(h.issuing.issue(&request(&broken, &rsa)), Err(CaError::InvalidProfile { .. })));

    // A key the CA does not certify (P-521, from openssl).
    let dir = tempfile::tempdir().unwrap();
    openssl_ok(
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521", "-out", "k.pem"],
        dir.path(),
    );
    openssl_ok(&["pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "pub.der"], dir.path());
    let spki =
        SubjectPublicKeyInfoOwned::from_der(&std::fs::read(dir.path().join("pub.der")).unwrap()).unwrap();
    let mut req = request(&piv, &key);
    req.public_key = spki;
    let err = h.issuing.issue(&req).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedPublicKey(_)), "{err}");

    // The issuing CA has pathLenConstraint 0: no sub-CAs under it.
    let sub = CertificateProfile::issuing_ca();
    let mut req = request(&sub, &key);
    req.san = SanInput::default();
    assert!(matches!(h.issuing.issue(&req), Err(CaError::PathLengthExceeded)));

    // A CA refuses a key that is not its own.
    let other = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let err =
        CertificateAuthority::new(h.issuing.certificate_der(), other, urls().for_issuing_ca()).unwrap_err();
    assert!(matches!(err, CaError::UnusableIssuer(_)), "{err}");
    // And a leaf certificate is not a CA.
    let leaf = h.issuing.issue(&request(&piv, &key)).unwrap();
    let err = CertificateAuthority::new(&leaf.der, key, urls().for_issuing_ca()).unwrap_err();
    assert!(matches!(err, CaError::UnusableIssuer(_)), "{err}");
}

#[test]
fn serials_are_random_positive_16_bytes() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let profile = CertificateProfile::mobile_device();
    let mut seen = BTreeSet::new();
    for _ in 0..50 {
        let cert = h.issuing.issue(&request(&profile, &key)).unwrap();
        let bytes = cert.serial().as_bytes().to_vec();
        assert_eq!(bytes.len(), 16);
        assert!(bytes[0] < 0x80 && bytes[0] != 0);
        assert!(seen.insert(bytes));
    }
}

#[test]
fn profiles_round_trip_through_serde_and_reject_unknown_keys() {
    for profile in CertificateProfile::builtin_all() {
        let json = serde_json::to_string(&profile).unwrap();
        let back: CertificateProfile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, profile);
    }
    let json = serde_json::to_value(CertificateProfile::key_management()).unwrap();
    assert_eq!(json["key_usage"]["ec"], serde_json::json!(["key_agreement"]));
    assert_eq!(json["key_usage"]["rsa"], serde_json::json!(["key_encipherment"]));
    assert_eq!(json["policies"], serde_json::json!(["2.16.840.1.101.3.2.1.3.7"]));
    let mut bad = json.clone();
    bad["colour"] = serde_json::json!("blue");
    assert!(serde_json::from_value::<CertificateProfile>(bad).is_err());
    let mut bad = json;
    bad["policies"] = serde_json::json!(["not.an.oid"]);
    assert!(serde_json::from_value::<CertificateProfile>(bad).is_err());
}

// ------------------------------------------------------------------------------------------------
// Keys

#[test]
fn software_keys_round_trip_through_pkcs8_and_the_key_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyFileStore::new(dir.path().join("keys"));
    for alg in KeyAlgorithm::ALL {
        let key = SoftwareKey::generate(alg).unwrap();
        let name = alg.to_string().to_lowercase();
        let path = store.save(&name, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // openssl reads and checks what we wrote.
        openssl_ok(&["pkey", "-in", path.to_str().unwrap(), "-noout", "-check"], dir.path());
        let loaded = store.load(&name).unwrap();
        assert_eq!(loaded.key_algorithm(), alg);
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(matches!(store.save(&name, &key), Err(CaError::KeyExists(_))));
    }
    assert!(matches!(
        store.save("../evil", &SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap()),
        Err(CaError::InvalidKeyName(_))
    ));

    // Keys made by openssl load too, and sign CSRs openssl accepts.
    openssl_ok(
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "p384.pem"],
        dir.path(),
    );
    let key =
        SoftwareKey::from_pkcs8_pem(&std::fs::read_to_string(dir.path().join("p384.pem")).unwrap()).unwrap();
    assert_eq!(key.key_algorithm(), KeyAlgorithm::EcP384);
    let csr = build_csr(&key, parse_dn("CN=From openssl key").unwrap(), vec![], Some("challenge")).unwrap();
    std::fs::write(dir.path().join("req.der"), &csr).unwrap();
    let out =
        openssl_ok(&["req", "-in", "req.der", "-inform", "DER", "-verify", "-noout", "-text"], dir.path());
    assert!(
        out.contains("verify OK") || out.contains("Certificate request self-signature verify OK"),
        "{out}"
    );
    assert!(out.contains("challengePassword") && out.contains("challenge"), "{out}");

    openssl_ok(&["genpkey", "-algorithm", "ED25519", "-out", "ed.pem"], dir.path());
    let err = SoftwareKey::from_pkcs8_pem(&std::fs::read_to_string(dir.path().join("ed.pem")).unwrap())
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidPrivateKey(_)), "{err}");
}

// ------------------------------------------------------------------------------------------------
// CRL

#[test]
fn crl_verifies_and_lists_reasons() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let dir = workdir(&h);
    let d = dir.path();
    let profile = CertificateProfile::piv_authentication();
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let certs: Vec<IssuedCertificate> =
        (0..4).map(|_| h.issuing.issue(&request(&profile, &key)).unwrap()).collect();
    let t = now() - Duration::hours(1);
    let entries = vec![
        RevokedEntry {
            serial: certs[0].serial().clone(),
            revocation_date: t,
            reason: Some(RevocationReason::KeyCompromise),
        },
        RevokedEntry {
            serial: certs[1].serial().clone(),
            revocation_date: t,
            reason: Some(RevocationReason::CertificateHold),
        },
        RevokedEntry {
            serial: certs[2].serial().clone(),
            revocation_date: t,
            reason: Some(RevocationReason::Superseded),
        },
        RevokedEntry { serial: certs[3].serial().clone(), revocation_date: t, reason: None },
    ];
    let params = CrlParams {
        number: 7,
        this_update: now() - Duration::minutes(1),
        next_update: now() + Duration::days(1),
    };
    let crl = h.issuing.build_crl(&entries, &params).unwrap();
    std::fs::write(d.join("crl.pem"), pem("X509 CRL", &crl)).unwrap();
    std::fs::write(d.join("crl.der"), &crl).unwrap();

    let out = openssl_ok(&["crl", "-in", "crl.pem", "-CAfile", "chain.pem", "-verify", "-noout"], d);
    assert!(out.contains("verify OK"), "{out}");
    let text = openssl_ok(&["crl", "-in", "crl.pem", "-noout", "-text"], d);
    assert!(text.contains("Version 2 (0x1)"), "{text}");
    let (_, number) = extension(&text, "X509v3 CRL Number").unwrap();
    assert_eq!(number, "7");
    let (_, aki) = extension(&text, "X509v3 Authority Key Identifier").unwrap();
    assert_eq!(aki.replace(':', "").to_lowercase(), hex::encode(h.issuing.key_identifier()));
    assert!(text.contains("Next Update:"), "{text}");
    // Each serial, followed by its reason.
    let reasons = ["Key Compromise", "Certificate Hold", "Superseded"];
    for (cert, reason) in certs.iter().zip(reasons) {
        let serial = hex::encode_upper(cert.serial().as_bytes());
        let at = text
            .find(&format!("Serial Number: {serial}"))
            .unwrap_or_else(|| panic!("{serial} missing:\n{text}"));
        let entry = &text[at..];
        let entry = &entry[..entry[1..].find("Serial Number:").map_or(entry.len(), |i| i + 1)];
        assert!(entry.contains(reason), "{serial} should be {reason}:\n{entry}");
    }
    let last = hex::encode_upper(certs[3].serial().as_bytes());
    let entry = &text[text.find(&format!("Serial Number: {last}")).unwrap()..];
    let entry = &entry[..entry.find("Signature Algorithm").unwrap()];
    assert!(!entry.contains("CRL Reason Code"), "no reason code for an unspecified revocation:\n{entry}");

    let errors = pkilint::errors("lint_crl", &["-t", "CRL", "-p", "PKIX"], &[&d.join("crl.der")]);
    assert!(errors.is_empty(), "lint_crl:\n{}", errors.join("\n"));

    // An empty CRL omits revokedCertificates and still verifies and lints.
    let empty = h.issuing.build_crl(&[], &CrlParams { number: 8, ..params }).unwrap();
    std::fs::write(d.join("empty.pem"), pem("X509 CRL", &empty)).unwrap();
    let out =
        openssl_ok(&["crl", "-in", "empty.pem", "-CAfile", "chain.pem", "-verify", "-noout", "-text"], d);
    assert!(out.contains("No Revoked Certificates"), "{out}");
    assert!(pkilint::errors("lint_crl", &["-t", "CRL", "-p", "PKIX"], &[&d.join("empty.pem")]).is_empty());

    // The root's CRL (an ARL, covering the issuing CA) verifies against the root alone.
    let arl = h.root.build_crl(&[], &params).unwrap();
    std::fs::write(d.join("arl.pem"), pem("X509 CRL", &arl)).unwrap();
    openssl_ok(&["crl", "-in", "arl.pem", "-CAfile", "root.pem", "-verify", "-noout"], d);

    // removeFromCRL belongs in delta CRLs only; duplicates and backwards times are refused.
    let mut bad = entries.clone();
    bad[0].reason = Some(RevocationReason::RemoveFromCrl);
    assert!(matches!(h.issuing.build_crl(&bad, &params), Err(CaError::RemoveFromCrlInFullCrl { .. })));
    let dup = vec![entries[0].clone(), entries[0].clone()];
    assert!(matches!(h.issuing.build_crl(&dup, &params), Err(CaError::InvalidSerial(_))));
    let backwards = CrlParams { next_update: params.this_update, ..params };
    assert!(matches!(
        h.issuing.build_crl(&entries, &backwards),
        Err(CaError::NextUpdateNotAfterThisUpdate { .. })
    ));
    assert_eq!(RevocationReason::from_code(6), Some(RevocationReason::CertificateHold));
    assert_eq!(RevocationReason::from_code(7), None);
    assert_eq!(RevocationReason::RemoveFromCrl.code(), 8);
}

// ------------------------------------------------------------------------------------------------
// OCSP

struct OcspCase {
    name: &'static str,
    cert: IssuedCertificate,
    status: CertStatus,
}

fn ocsp_text(dir: &Path, args: &[&str]) -> String {
    let out = openssl(args, dir);
    assert!(out.success, "openssl {args:?}:\n{}", out.text());
    out.text()
}

#[test]
fn ocsp_responses_are_accepted_by_openssl() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let dir = workdir(&h);
    let d = dir.path();
    let profile = CertificateProfile::piv_authentication();
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let revoked_at = datetime!(2026-03-04 05:06:07 UTC);
    let cases = vec![
        OcspCase {
            name: "good",
            cert: h.issuing.issue(&request(&profile, &key)).unwrap(),
            status: CertStatus::Good,
        },
        OcspCase {
            name: "revoked",
            cert: h.issuing.issue(&request(&profile, &key)).unwrap(),
            status: CertStatus::Revoked { revoked_at, reason: Some(RevocationReason::KeyCompromise) },
        },
        OcspCase {
            name: "held",
            cert: h.issuing.issue(&request(&profile, &key)).unwrap(),
            status: CertStatus::Revoked { revoked_at, reason: Some(RevocationReason::CertificateHold) },
        },
        OcspCase {
            name: "unknown",
            cert: h.issuing.issue(&request(&profile, &key)).unwrap(),
            status: CertStatus::Unknown,
        },
    ];
    let lookup = |id: &CertId| {
        cases.iter().find(|c| c.cert.serial() == &id.serial_number).map_or(CertStatus::Unknown, |c| c.status)
    };

    for case in &cases {
        let leaf = format!("{}.pem", case.name);
        write_cert(d, &leaf, &case.cert);
        for (digest, nonce) in [("-sha1", true), ("-sha1", false), ("-sha256", true)] {
            let req_file = format!("{}{digest}-{nonce}.req", case.name);
            let resp_file = format!("{}{digest}-{nonce}.resp", case.name);
            let mut args =
                vec!["ocsp", digest, "-issuer", "issuing.pem", "-cert", &leaf, "-reqout", &req_file];
            if !nonce {
                args.push("-no_nonce");
            }
            openssl_ok(&args, d);
            let request = std::fs::read(d.join(&req_file)).unwrap();
            let response = h.ocsp.respond(&request, lookup, now());
            std::fs::write(d.join(&resp_file), &response).unwrap();

            // Status and signature, as a client checking this certificate sees them.
            let out = ocsp_text(
                d,
                &[
                    "ocsp",
                    digest,
                    "-respin",
                    &resp_file,
                    "-issuer",
                    "issuing.pem",
                    "-cert",
                    &leaf,
                    "-CAfile",
                    "chain.pem",
                    "-no_nonce",
                    "-resp_text",
                ],
            );
            let ctx = format!("{} {digest} nonce={nonce}:\n{out}", case.name);
            assert!(out.contains("Response verify OK"), "{ctx}");
            assert!(out.contains("OCSP Response Status: successful (0x0)"), "{ctx}");
            assert!(out.contains("Responder Id: "), "{ctx}");
            assert!(
                !out.contains("Responder Id: C =") && !out.contains("Responder Id: O ="),
                "byKey expected: {ctx}"
            );
            assert!(out.contains("Next Update:"), "{ctx}");
            match case.status {
                CertStatus::Good => assert!(out.contains(&format!("{leaf}: good")), "{ctx}"),
                CertStatus::Unknown => assert!(out.contains(&format!("{leaf}: unknown")), "{ctx}"),
                CertStatus::Revoked { reason, .. } => {
                    assert!(out.contains(&format!("{leaf}: revoked")), "{ctx}");
                    let shown = match reason {
                        Some(RevocationReason::KeyCompromise) => "Reason: keyCompromise",
                        Some(RevocationReason::CertificateHold) => "Reason: certificateHold",
                        _ => unreachable!(),
                    };
                    assert!(out.contains(shown), "{ctx}");
                    assert!(out.contains("Revocation Time: Mar  4 05:06:07 2026 GMT"), "{ctx}");
                }
            }
            // The responder's certificate travels in the response.
            assert!(out.contains("Lanyard Test OCSP Responder"), "{ctx}");

            // The nonce: with the original request, openssl checks it was echoed.
            let out = ocsp_text(
                d,
                &["ocsp", "-reqin", &req_file, "-respin", &resp_file, "-CAfile", "chain.pem", "-resp_text"],
            );
            assert!(out.contains("Response verify OK"), "{ctx}\n{out}");
            if nonce {
                assert!(out.contains("OCSP Nonce:"), "nonce not echoed: {out}");
                assert!(!out.contains("Nonce Verify error") && !out.contains("WARNING: no nonce"), "{out}");
                let sent = OcspRequest::from_der(&request).unwrap().nonce().unwrap();
                let got = x509_ocsp::OcspResponse::from_der(&response).unwrap();
                let basic =
                    x509_ocsp::BasicOcspResponse::from_der(got.response_bytes.unwrap().response.as_bytes())
                        .unwrap();
                assert_eq!(basic.nonce(), Some(sent));
            } else {
                assert!(!out.contains("OCSP Nonce:"), "no nonce was sent: {out}");
            }

            let errors = pkilint::errors("lint_ocsp_response", &[], &[&d.join(&resp_file)]);
            assert!(errors.is_empty(), "lint_ocsp_response {resp_file}:\n{}", errors.join("\n"));
        }
    }

    // openssl does notice a nonce that does not match (so the checks above mean something).
    let out = openssl(
        &["ocsp", "-reqin", "good-sha1-true.req", "-respin", "held-sha1-true.resp", "-CAfile", "chain.pem"],
        d,
    );
    assert!(out.text().contains("Nonce Verify error"), "{}", out.text());

    // A CertID naming another issuer (the root, asked about the issuing CA) is not ours: unknown,
    // and the lookup is not even consulted.
    openssl_ok(&["ocsp", "-issuer", "root.pem", "-cert", "issuing.pem", "-reqout", "foreign.req"], d);
    let response =
        h.ocsp.respond(&std::fs::read(d.join("foreign.req")).unwrap(), |_| panic!("lookup consulted"), now());
    std::fs::write(d.join("foreign.resp"), response).unwrap();
    let out = ocsp_text(
        d,
        &[
            "ocsp",
            "-respin",
            "foreign.resp",
            "-issuer",
            "root.pem",
            "-cert",
            "issuing.pem",
            "-no_nonce",
            "-noverify",
            "-resp_text",
        ],
    );
    assert!(out.contains("issuing.pem: unknown"), "{out}");

    // Several certificates in one request, answered in order.
    let mut args = vec!["ocsp", "-issuer", "issuing.pem"];
    for leaf in ["good.pem", "revoked.pem", "unknown.pem"] {
        args.extend_from_slice(&["-cert", leaf]);
    }
    args.extend_from_slice(&["-reqout", "multi.req"]);
    openssl_ok(&args, d);
    let response = h.ocsp.respond(&std::fs::read(d.join("multi.req")).unwrap(), lookup, now());
    std::fs::write(d.join("multi.resp"), response).unwrap();
    let mut args =
        vec!["ocsp", "-respin", "multi.resp", "-issuer", "issuing.pem", "-CAfile", "chain.pem", "-no_nonce"];
    for leaf in ["good.pem", "revoked.pem", "unknown.pem"] {
        args.extend_from_slice(&["-cert", leaf]);
    }
    let out = ocsp_text(d, &args);
    assert!(
        out.contains("good.pem: good")
            && out.contains("revoked.pem: revoked")
            && out.contains("unknown.pem: unknown"),
        "{out}"
    );

    // Garbage gets malformedRequest, as openssl reads it.
    let response = h.ocsp.respond(b"this is not an OCSP request", lookup, now());
    assert_eq!(lanyard_ca::ocsp::response_status(&response), Some(OcspResponseStatus::MalformedRequest));
    std::fs::write(d.join("garbage.resp"), response).unwrap();
    let out = openssl(&["ocsp", "-respin", "garbage.resp", "-resp_text", "-noverify"], d);
    assert!(out.text().contains("Responder Error: malformedrequest (1)"), "{}", out.text());
}

/// A valid SHA-256 CertID request for `serial` under `issuer`, built without openssl.
fn ocsp_request(issuer: &Certificate, serial: &SerialNumber, nonce: Option<&[u8]>) -> Vec<u8> {
    use aws_lc_rs::digest::{SHA256, digest};
    let cert_id = CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1"),
            parameters: Some(Any::from(der::asn1::Null)),
        },
        issuer_name_hash: OctetString::new(
            digest(&SHA256, &issuer.tbs_certificate.subject.to_der().unwrap()).as_ref(),
        )
        .unwrap(),
        issuer_key_hash: OctetString::new(
            digest(&SHA256, issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes())
                .as_ref(),
        )
        .unwrap(),
        serial_number: serial.clone(),
    };
    let request_extensions = nonce.map(|n| {
        vec![Extension {
            extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2"),
            critical: false,
            extn_value: OctetString::new(OctetString::new(n).unwrap().to_der().unwrap()).unwrap(),
        }]
    });
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request { req_cert: cert_id, single_request_extensions: None }],
            request_extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

#[test]
fn ocsp_nonce_limits_and_empty_requests() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let issuer = h.issuing.certificate();
    let serial = SerialNumber::new(&[0x42]).unwrap();
    let good = |_: &CertId| CertStatus::Good;
    for (nonce, expected) in [
        (None, OcspResponseStatus::Successful),
        (Some(vec![7u8; 1]), OcspResponseStatus::Successful),
        (Some(vec![7u8; 32]), OcspResponseStatus::Successful),
        (Some(vec![7u8; 33]), OcspResponseStatus::MalformedRequest),
        (Some(vec![]), OcspResponseStatus::MalformedRequest),
    ] {
        let req = ocsp_request(issuer, &serial, nonce.as_deref());
        let resp = h.ocsp.respond(&req, good, now());
        assert_eq!(lanyard_ca::ocsp::response_status(&resp), Some(expected), "nonce {nonce:?}");
    }
    let empty =
        OcspRequest { tbs_request: TbsRequest::default(), optional_signature: None }.to_der().unwrap();
    let resp = h.ocsp.respond(&empty, good, now());
    assert_eq!(lanyard_ca::ocsp::response_status(&resp), Some(OcspResponseStatus::MalformedRequest));
}

// ------------------------------------------------------------------------------------------------
// CSR

fn openssl_csr(dir: &Path, name: &str, newkey: &[&str]) {
    std::fs::write(
        dir.join("req.cnf"),
        "[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n\
         [dn]\nCN = Jane Doe\nO = Lanyard Test\n\
         [attrs]\nchallengePassword = one-time-7f3a\n",
    )
    .unwrap();
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["req", "-new", "-config", "req.cnf", "-nodes", "-keyout", &key, "-out", &csr];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-addext", "subjectAltName=email:jane.doe@lanyard.test,DNS:jane.lanyard.test"]);
    openssl_ok(&args, dir);
    openssl_ok(&["req", "-in", &csr, "-outform", "DER", "-out", &format!("{name}.der")], dir);
}

/// A DER request may end in octets that are whitespace codes (an ECDSA signature ending in 0x20,
/// 0x0a, …); `parse_csr` once trimmed them off and refused about one request in 40.
#[test]
fn der_csrs_ending_in_whitespace_octets_parse() {
    let mut seen = 0;
    while seen < 3 {
        let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
        let der = build_csr(&key, parse_dn("CN=x").unwrap(), vec![], None).unwrap();
        if der.last().is_some_and(u8::is_ascii_whitespace) {
            seen += 1;
        }
        assert_eq!(parse_csr(&der).unwrap().der, der);
    }
}

#[test]
fn csrs_from_openssl_parse_and_verify() {
    let h = hierarchy(KeyAlgorithm::EcP256);
    let dir = workdir(&h);
    let d = dir.path();
    openssl_csr(d, "ec", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    openssl_csr(d, "rsa", &["-newkey", "rsa:2048"]);
    openssl_csr(d, "ec384", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-sha384"]);

    for (name, alg) in
        [("ec", KeyAlgorithm::EcP256), ("rsa", KeyAlgorithm::Rsa2048), ("ec384", KeyAlgorithm::EcP384)]
    {
        let pem_text = std::fs::read_to_string(d.join(format!("{name}.csr"))).unwrap();
        let der_bytes = std::fs::read(d.join(format!("{name}.der"))).unwrap();
        let from_pem = parse_csr_pem(&pem_text).unwrap();
        let from_der = parse_csr_der(&der_bytes).unwrap();
        assert_eq!(from_pem, from_der);
        assert_eq!(parse_csr(pem_text.as_bytes()).unwrap(), from_der);
        // RFC 4514 writes the most significant RDN last; openssl wrote CN first.
        assert_eq!(from_der.subject.to_string(), "O=Lanyard Test,CN=Jane Doe");
        assert_eq!(from_der.challenge_password.as_deref(), Some("one-time-7f3a"));
        assert_eq!(from_der.requested_extensions.len(), 1);
        assert_eq!(from_der.requested_extensions[0].extn_id.to_string(), "2.5.29.17");
        assert_eq!(KeyAlgorithm::of_spki(&from_der.public_key).unwrap(), alg);

        // Issue from the CSR's key, then check openssl agrees the certificate certifies that key.
        let profile = CertificateProfile::mobile_device();
        let mut req = request(&profile, &SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap());
        req.public_key = from_der.public_key.clone();
        let cert = h.issuing.issue(&req).unwrap();
        write_cert(d, &format!("{name}-cert.pem"), &cert);
        assert_chain_verifies(d, &format!("{name}-cert.pem"));
        let a = openssl_ok(&["x509", "-in", &format!("{name}-cert.pem"), "-noout", "-pubkey"], d);
        let b = openssl_ok(&["req", "-in", &format!("{name}.csr"), "-noout", "-pubkey"], d);
        assert_eq!(a, b);

        // One flipped bit in the signature: refused as a bad signature.
        let mut broken = der_bytes.clone();
        let last = broken.len() - 3;
        broken[last] ^= 0x01;
        assert_eq!(parse_csr_der(&broken), Err(CsrError::BadSignature));
        // One changed letter in the subject: also a bad signature, not a different requester.
        let mut forged = der_bytes.clone();
        let at = forged.windows(8).position(|w| w == b"Jane Doe").unwrap();
        forged[at] = b'J' ^ 0x20;
        assert_eq!(parse_csr_der(&forged), Err(CsrError::BadSignature));
    }

    // Other failures, each with its own error.
    assert_eq!(parse_csr(b""), Err(CsrError::Empty));
    assert!(matches!(parse_csr(b"\x30\x03\x02\x01\x00"), Err(CsrError::Der(_))));
    assert!(
        matches!(parse_csr(h.root.certificate_pem().as_bytes()), Err(CsrError::WrongPemLabel(l)) if l == "CERTIFICATE")
    );
    assert!(matches!(
        parse_csr(b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n"),
        Err(CsrError::Pem(_))
    ));
    openssl_ok(
        &[
            "req", "-new", "-config", "req.cnf", "-key", "rsa.key", "-sha1", "-outform", "DER", "-out",
            "sha1.der",
        ],
        d,
    );
    let err = parse_csr_der(&std::fs::read(d.join("sha1.der")).unwrap()).unwrap_err();
    assert_eq!(err, CsrError::UnsupportedSignatureAlgorithm("1.2.840.113549.1.1.5".into()));
    assert!(err.to_string().contains("unsupported signature algorithm"), "{err}");
}

// ------------------------------------------------------------------------------------------------
// Property tests

fn sample_csr() -> &'static [u8] {
    static CSR: OnceLock<Vec<u8>> = OnceLock::new();
    CSR.get_or_init(|| {
        let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
        let ext = Extension {
            extn_id: ObjectIdentifier::new_unwrap("2.5.29.15"),
            critical: true,
            extn_value: OctetString::new(vec![0x03, 0x02, 0x07, 0x80]).unwrap(),
        };
        let csr =
            build_csr(&key, parse_dn("CN=Property Test,O=Lanyard Test").unwrap(), vec![ext], Some("pw"))
                .unwrap();
        assert!(parse_csr_der(&csr).is_ok());
        csr
    })
}

fn ocsp_fixture() -> &'static (Hierarchy, Vec<u8>) {
    static FIXTURE: OnceLock<(Hierarchy, Vec<u8>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let h = hierarchy(KeyAlgorithm::EcP256);
        let req = ocsp_request(
            h.issuing.certificate(),
            &SerialNumber::new(&[0x12, 0x34]).unwrap(),
            Some(&[9u8; 16]),
        );
        (h, req)
    })
}

// ------------------------------------------------------------------------------------------------
// CHUID issuer signatures (detached CMS), judged by `openssl cms`

fn sample_chuid() -> Chuid {
    let fasc_n = FascN::with_identifier("1201", "0042", "123456").unwrap();
    let mut chuid = Chuid::new(&fasc_n, CARD_UUID, "20301231").unwrap();
    chuid.cardholder_uuid = Some(CARDHOLDER_UUID);
    chuid
}

#[test]
fn chuid_signatures_verify_with_openssl_for_p256_p384_and_rsa_signers() {
    for (alg, digest_oid, digest_name) in [
        (KeyAlgorithm::EcP256, oids::SHA256, "sha256"),
        (KeyAlgorithm::EcP384, oids::SHA384, "sha384"),
        (KeyAlgorithm::Rsa2048, oids::SHA256, "sha256"),
    ] {
        let h = hierarchy(alg);
        let d = workdir(&h);
        let dir = d.path();
        let mut chuid = sample_chuid();
        let content = chuid.signed_content();
        let signature = lanyard_ca::cms::sign_chuid(&h.content_signer, &content).unwrap();

        // The signature goes into tag 3E, and the card's bytes give back the signed content.
        chuid.signature = signature.clone();
        let object = chuid.encode();
        assert_eq!(Chuid::signed_content_of(&object).unwrap(), content);
        assert_eq!(Chuid::decode(&object).unwrap().signature, signature);

        std::fs::write(dir.join("sig.der"), &signature).unwrap();
        std::fs::write(dir.join("content.bin"), &content).unwrap();
        let mut tampered = content.clone();
        tampered[5] ^= 0x01;
        std::fs::write(dir.join("tampered.bin"), &tampered).unwrap();

        let verify = |content_file: &str| {
            openssl(
                &[
                    "cms",
                    "-verify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    "sig.der",
                    "-content",
                    content_file,
                    "-CAfile",
                    "chain.pem",
                    "-purpose",
                    "any",
                    "-out",
                    "verified.bin",
                ],
                dir,
            )
        };
        let ok = verify("content.bin");
        assert!(
            ok.success && ok.text().contains("Verification successful"),
            "{alg}: openssl cms -verify:\n{}",
            ok.text()
        );
        assert_eq!(std::fs::read(dir.join("verified.bin")).unwrap(), content);
        let bad = verify("tampered.bin");
        assert!(!bad.success, "{alg}: openssl accepted a tampered CHUID:\n{}", bad.text());
        // OpenSSL reports the messageDigest mismatch from CMS_SignerInfo_verify_content.
        assert!(bad.text().contains("CMS_SignerInfo_verify_content"), "{alg}: {}", bad.text());

        // The structure SP 800-73-4 asks for, as openssl reads it.
        let printed = openssl_ok(&["cms", "-cmsout", "-print", "-inform", "DER", "-in", "sig.der"], dir);
        for want in [
            "contentType: pkcs7-signedData",
            "eContent: <ABSENT>",
            "d.issuerAndSerialNumber:",
            "object: contentType (1.2.840.113549.1.9.3)",
            "object: messageDigest (1.2.840.113549.1.9.4)",
            "crls:\n      <ABSENT>",
        ] {
            assert!(printed.contains(want), "{alg}: `{want}` missing from:\n{printed}");
        }
        // openssl has no names for the PIV OIDs, so match the dotted form on the right line.
        let line_with = |prefix: &str, oid: &str| {
            printed
                .lines()
                .any(|l| l.trim_start().starts_with(prefix) && l.trim_end().ends_with(&format!("({oid})")))
        };
        assert!(line_with("eContentType:", "2.16.840.1.101.3.6.1"), "{alg}: eContentType:\n{printed}");
        assert!(line_with("object:", "2.16.840.1.101.3.6.5"), "{alg}: pivSigner-DN:\n{printed}");
        assert!(printed.contains(&format!("algorithm: {digest_name}")), "{alg}: digest:\n{printed}");
        assert!(printed.contains("version: 3"), "{alg}: SignedData v3:\n{printed}");
        assert_eq!(
            printed.matches("d.certificate:").count(),
            1,
            "{alg}: exactly one certificate:\n{printed}"
        );
        assert_eq!(printed.matches("version: 1").count(), 1, "{alg}: SignerInfo v1:\n{printed}");

        // Our own verifier agrees and reports the signer.
        let summary = lanyard_ca::cms::verify_detached(&signature, &content).unwrap();
        assert_eq!(summary.econtent_type, oids::PIV_CHUID_SECURITY_OBJECT);
        assert_eq!(summary.digest_algorithm, digest_oid);
        assert_eq!(summary.signer_certificate_der, h.content_signer.certificate.der);
        assert_eq!(
            summary.piv_signer_dn.as_deref(),
            Some(h.content_signer.certificate.certificate.tbs_certificate.subject.to_string().as_str())
        );
        assert_eq!(summary.signed_attributes.len(), 3);
        assert_eq!(lanyard_ca::cms::verify_detached(&signature, &tampered), Err(CmsError::DigestMismatch));

        // The other direction: a detached signature made by openssl (id-data, signingTime, and
        // rsaEncryption as the RSA signature algorithm) passes verify_detached.
        std::fs::write(dir.join("cs.pem"), h.content_signer.certificate.to_pem()).unwrap();
        std::fs::write(dir.join("cs.key"), h.content_signer.key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
        openssl_ok(
            &[
                "cms",
                "-sign",
                "-binary",
                "-in",
                "content.bin",
                "-signer",
                "cs.pem",
                "-inkey",
                "cs.key",
                "-md",
                digest_name,
                "-outform",
                "DER",
                "-out",
                "openssl.der",
            ],
            dir,
        );
        let theirs = std::fs::read(dir.join("openssl.der")).unwrap();
        let summary = lanyard_ca::cms::verify_detached(&theirs, &content)
            .unwrap_or_else(|e| panic!("{alg}: openssl's signature refused: {e}"));
        assert_eq!(summary.econtent_type.to_string(), "1.2.840.113549.1.7.1");
        assert_eq!(summary.piv_signer_dn, None);
        assert_eq!(lanyard_ca::cms::verify_detached(&theirs, &tampered), Err(CmsError::DigestMismatch));
    }
}

#[test]
fn chuid_signing_refuses_the_wrong_key_or_certificate() {
    let h = cms_fixture();
    let content = sample_chuid().signed_content();
    // The issuing CA's certificate lacks id-PIV-content-signing.
    let err = lanyard_ca::cms::sign_piv_object(
        h.issuing.signer(),
        h.issuing.certificate_der(),
        oids::PIV_CHUID_SECURITY_OBJECT,
        &content,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::Cms(CmsError::NotContentSigner)), "{err}");
    // A key the certificate does not certify.
    let err = lanyard_ca::cms::sign_detached(
        h.issuing.signer(),
        &h.content_signer.certificate.der,
        oids::PIV_CHUID_SECURITY_OBJECT,
        &content,
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, CaError::Cms(CmsError::KeyMismatch)), "{err}");
    // A signature over other content, and bytes that are not CMS.
    let sig = lanyard_ca::cms::sign_chuid(&h.content_signer, &content).unwrap();
    assert_eq!(lanyard_ca::cms::verify_detached(&sig, b"other"), Err(CmsError::DigestMismatch));
    assert!(matches!(
        lanyard_ca::cms::verify_detached(&sig[..sig.len() - 1], &content),
        Err(CmsError::Malformed(_))
    ));
    // A flipped byte in the signature value (the last bytes of the DER) breaks the signature.
    let mut flipped = sig.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert!(lanyard_ca::cms::verify_detached(&flipped, &content).is_err());
}

fn cms_fixture() -> &'static Hierarchy {
    static FIXTURE: OnceLock<Hierarchy> = OnceLock::new();
    FIXTURE.get_or_init(|| hierarchy(KeyAlgorithm::EcP256))
}

// ------------------------------------------------------------------------------------------------
// YubiKey PIV attestation, with the software card as the YubiKey

type Card = lanyard_piv::Piv<lanyard_piv::InProcess<lanyard_vcard::VirtualCard>>;

/// A software card from a fresh attestation root, with the management key authenticated.
struct AttestedCard {
    card: Card,
    serial: u32,
    root_der: Vec<u8>,
    root_pem_path: PathBuf,
    f9_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn ec_spki_der(point: &[u8], curve: ObjectIdentifier) -> Vec<u8> {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: oids::EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&curve).unwrap()),
        },
        subject_public_key: der::asn1::BitString::from_bytes(point).unwrap(),
    }
    .to_der()
    .unwrap()
}

fn attested_card() -> AttestedCard {
    use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
    let dir = tempfile::tempdir().unwrap();
    let root =
        lanyard_vcard::AttestationRoot::open_or_create(dir.path(), std::time::SystemTime::now()).unwrap();
    let img = lanyard_vcard::VirtualCard::new_image(
        &root,
        &lanyard_vcard::NewCard::default(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let serial = img.serial;
    let mut card =
        lanyard_piv::Piv::new(lanyard_piv::InProcess(lanyard_vcard::VirtualCard::from_image(img).unwrap()));
    card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).unwrap();
    let f9_object = card.get_data(lanyard_piv::tag::YUBICO_ATTESTATION_CERT).unwrap();
    let f9_der = lanyard_piv::objects::CertificateObject::decode(&f9_object).unwrap().der;
    AttestedCard {
        card,
        serial,
        root_der: root.certificate().to_der().unwrap(),
        root_pem_path: root.certificate_pem_path(),
        f9_der,
        _dir: dir,
    }
}

/// Generates a key in `slot` and returns (attestation certificate, expected SPKI).
fn generate_and_attest(c: &mut AttestedCard, slot: u8, alg: lanyard_piv::KeyAlgorithm) -> (Vec<u8>, Vec<u8>) {
    let slot = lanyard_piv::Slot(slot);
    let pk = c.card.generate(slot, alg, None, None).unwrap();
    let lanyard_piv::PublicKey::Ec { point, .. } = pk else { panic!("EC key expected") };
    let curve = if alg == lanyard_piv::KeyAlgorithm::EccP384 { oids::SECP384R1 } else { oids::SECP256R1 };
    (c.card.attest(slot).unwrap(), ec_spki_der(&point, curve))
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

#[test]
fn virtual_card_attestations_verify_and_yield_evidence() {
    let mut c = attested_card();
    let (att, spki) = generate_and_attest(&mut c, 0x9A, lanyard_piv::KeyAlgorithm::EccP256);
    let roots = vec![c.root_der.clone()];
    let ev = verify_piv_attestation(&att, &c.f9_der, &roots, &spki, now()).unwrap();
    let v = lanyard_vcard::card::DEFAULT_VERSION;
    assert_eq!(ev.firmware_version, Some(format!("{}.{}.{}", v[0], v[1], v[2])));
    assert_eq!(ev.serial, Some(u64::from(c.serial)));
    let m = c.card.get_metadata(0x9A).unwrap();
    assert_eq!(ev.pin_policy, Some(m.pin_policy.unwrap().id()));
    assert_eq!(ev.touch_policy, Some(m.touch_policy.unwrap().id()));
    assert_eq!(ev.form_factor, Some(0));
    assert_eq!(ev.attestation_sha256, sha256_hex(&att));
    assert_eq!(ev.intermediate_sha256, sha256_hex(&c.f9_der));
    assert_eq!(ev.root_sha256, sha256_hex(&c.root_der));
    assert_eq!(ev.root_subject, "CN=Lanyard Virtual PIV Attestation Root,O=Lanyard");
    // The evidence is stored as JSON with the credential.
    let json = serde_json::to_value(&ev).unwrap();
    assert_eq!(json["serial"], u64::from(c.serial));
    assert_eq!(serde_json::from_value::<AttestationEvidence>(json).unwrap(), ev);

    // P-384 keys with an explicit PIN policy, and the root found among several.
    let other = attested_card();
    let pk = c
        .card
        .generate(
            lanyard_piv::Slot(0x9C),
            lanyard_piv::KeyAlgorithm::EccP384,
            Some(lanyard_piv::PinPolicy::Always),
            None,
        )
        .unwrap();
    let lanyard_piv::PublicKey::Ec { point, .. } = pk else { panic!() };
    let att384 = c.card.attest(lanyard_piv::Slot(0x9C)).unwrap();
    let roots = vec![other.root_der.clone(), c.root_der.clone()];
    let ev = verify_piv_attestation(&att384, &c.f9_der, &roots, &ec_spki_der(&point, oids::SECP384R1), now())
        .unwrap();
    assert_eq!(ev.pin_policy, Some(lanyard_piv::PinPolicy::Always.id()));

    // openssl, as an independent judge, builds the same chain.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f9.der"), &c.f9_der).unwrap();
    std::fs::write(d.path().join("att.der"), &att).unwrap();
    openssl_ok(&["x509", "-inform", "DER", "-in", "f9.der", "-out", "f9.pem"], d.path());
    openssl_ok(&["x509", "-inform", "DER", "-in", "att.der", "-out", "att.pem"], d.path());
    let root_pem = c.root_pem_path.to_str().unwrap();
    let out = openssl_ok(&["verify", "-CAfile", root_pem, "-untrusted", "f9.pem", "att.pem"], d.path());
    assert!(out.contains("att.pem: OK"), "{out}");
    let out = openssl(
        &["verify", "-CAfile", other.root_pem_path.to_str().unwrap(), "-untrusted", "f9.pem", "att.pem"],
        d.path(),
    );
    assert!(!out.success, "openssl accepted the chain under another root:\n{}", out.text());
}

#[test]
fn attestations_that_do_not_prove_the_key_are_refused() {
    let mut c = attested_card();
    let (att, spki) = generate_and_attest(&mut c, 0x9A, lanyard_piv::KeyAlgorithm::EccP256);
    let (_, other_spki) = generate_and_attest(&mut c, 0x9E, lanyard_piv::KeyAlgorithm::EccP256);
    let roots = vec![c.root_der.clone()];
    let verify = |att: &[u8], f9: &[u8], roots: &[Vec<u8>], spki: &[u8], at: OffsetDateTime| {
        verify_piv_attestation(att, f9, roots, spki, at).unwrap_err()
    };

    // Another installation's root (same name, other key).
    let other = attested_card();
    assert_eq!(
        verify(&att, &c.f9_der, std::slice::from_ref(&other.root_der), &spki, now()),
        AttestationError::UntrustedRoot
    );
    assert_eq!(verify(&att, &c.f9_der, &[], &spki, now()), AttestationError::NoRoots);
    // Another card's F9 certificate, from another root or from the same one.
    assert_eq!(
        verify(&att, &other.f9_der, std::slice::from_ref(&other.root_der), &spki, now()),
        AttestationError::IssuerMismatch
    );
    // The attestation certificate offered as its own intermediate.
    assert_eq!(verify(&att, &att, &roots, &spki, now()), AttestationError::UntrustedRoot);
    // Another key than the one attested.
    assert_eq!(verify(&att, &c.f9_der, &roots, &other_spki, now()), AttestationError::KeyMismatch);
    // A flipped byte in the signature.
    let mut flipped = att.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert_eq!(verify(&flipped, &c.f9_der, &roots, &spki, now()), AttestationError::BadSignature);
    // Truncated DER anywhere.
    assert_eq!(
        verify(&att[..att.len() - 1], &c.f9_der, &roots, &spki, now()),
        AttestationError::MalformedDer(ChainPosition::Attestation)
    );
    assert_eq!(
        verify(&att, &c.f9_der[..40], &roots, &spki, now()),
        AttestationError::MalformedDer(ChainPosition::Intermediate)
    );
    assert_eq!(
        verify(&att, &c.f9_der, &[c.root_der[..c.root_der.len() / 2].to_vec()], &spki, now()),
        AttestationError::MalformedDer(ChainPosition::Root)
    );
    assert_eq!(
        verify(&att, &c.f9_der, &roots, &spki[1..], now()),
        AttestationError::MalformedDer(ChainPosition::ExpectedKey)
    );
    // Outside the chain's validity: the F9 certificate lives 20 years, the root 30.
    assert!(matches!(
        verify(&att, &c.f9_der, &roots, &spki, now() + Duration::days(25 * 365)),
        AttestationError::Expired { position: ChainPosition::Intermediate, .. }
    ));
    assert!(matches!(
        verify(&att, &c.f9_der, &roots, &spki, now() - Duration::days(2)),
        AttestationError::NotYetValid { position: ChainPosition::Root, .. }
    ));
}

/// (attestation certificate, F9 certificate, root certificate, expected SPKI), all DER.
type AttestationChain = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

fn attestation_fixture() -> &'static AttestationChain {
    static FIXTURE: OnceLock<AttestationChain> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut c = attested_card();
        let (att, spki) = generate_and_attest(&mut c, 0x9A, lanyard_piv::KeyAlgorithm::EccP256);
        (att, c.f9_der.clone(), c.root_der.clone(), spki)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_never_a_csr(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(parse_csr_der(&bytes).is_err());
        prop_assert!(parse_csr(&bytes).is_err());
    }

    #[test]
    fn a_mutated_csr_is_never_accepted(index in any::<proptest::sample::Index>(), mask in 1u8..=255, cut in any::<proptest::sample::Index>(), insert in any::<u8>()) {
        let csr = sample_csr();
        let i = index.index(csr.len());
        let mut flipped = csr.to_vec();
        flipped[i] ^= mask;
        prop_assert!(parse_csr_der(&flipped).is_err(), "byte {} ^ {:#04x} accepted", i, mask);
        let truncated = &csr[..cut.index(csr.len())];
        prop_assert!(parse_csr_der(truncated).is_err());
        let mut grown = csr.to_vec();
        grown.insert(i, insert);
        prop_assert!(parse_csr_der(&grown).is_err());
    }

    #[test]
    fn random_bytes_get_malformed_request(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (h, _) = ocsp_fixture();
        let resp = h.ocsp.respond(&bytes, |_| CertStatus::Good, now());
        prop_assert_eq!(lanyard_ca::ocsp::response_status(&resp), Some(OcspResponseStatus::MalformedRequest));
    }

    #[test]
    fn mutated_ocsp_requests_never_panic(index in any::<proptest::sample::Index>(), mask in 1u8..=255, cut in any::<proptest::sample::Index>()) {
        let (h, req) = ocsp_fixture();
        let mut flipped = req.clone();
        flipped[index.index(req.len())] ^= mask;
        for input in [flipped.as_slice(), &req[..cut.index(req.len())]] {
            let resp = h.ocsp.respond(input, |_| CertStatus::Good, now());
            let status = lanyard_ca::ocsp::response_status(&resp);
            // A mutation can still leave a well-formed request (say, a different serial); then the
            // answer is a signed response. Anything that is not a well-formed request is
            // malformedRequest.
            let well_formed = OcspRequest::from_der(input).is_ok_and(|r| !r.tbs_request.request_list.is_empty());
            if well_formed {
                prop_assert!(matches!(status, Some(OcspResponseStatus::Successful) | Some(OcspResponseStatus::MalformedRequest)));
            } else {
                prop_assert_eq!(status, Some(OcspResponseStatus::MalformedRequest));
            }
        }
    }

    #[test]
    fn random_bytes_are_never_a_detached_signature(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(lanyard_ca::cms::verify_detached(&bytes, b"content").is_err());
    }

    #[test]
    fn mutated_chuid_signatures_are_refused_unless_only_the_certificate_changed(index in any::<proptest::sample::Index>(), mask in 1u8..=255, cut in any::<proptest::sample::Index>()) {
        static SIG: OnceLock<Vec<u8>> = OnceLock::new();
        let content = sample_chuid().signed_content();
        let sig = SIG.get_or_init(|| lanyard_ca::cms::sign_chuid(&cms_fixture().content_signer, &sample_chuid().signed_content()).unwrap());
        let mut flipped = sig.clone();
        flipped[index.index(sig.len())] ^= mask;
        // verify_detached does not validate the embedded certificate (path validation is the
        // caller's job), so a flip inside, say, the certificate's own signature still verifies;
        // it then reports the altered certificate, which no CA path will accept.
        if let Ok(summary) = lanyard_ca::cms::verify_detached(&flipped, &content) {
            prop_assert_ne!(summary.signer_certificate_der, cms_fixture().content_signer.certificate.der.clone());
        }
        prop_assert!(lanyard_ca::cms::verify_detached(&sig[..cut.index(sig.len())], &content).is_err());
    }

    #[test]
    fn random_bytes_are_never_a_signed_profile(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(lanyard_ca::cms::verify_attached(&bytes).is_err());
    }

    #[test]
    fn a_mutated_signed_profile_never_verifies_with_other_content(index in any::<proptest::sample::Index>(), mask in 1u8..=255, cut in any::<proptest::sample::Index>()) {
        static SIGNED: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
        let (xml, signed) = SIGNED.get_or_init(|| {
            let h = cms_fixture();
            let xml = b"<plist version=\"1.0\"><dict/></plist>".to_vec();
            let signed = lanyard_ca::cms::sign_attached(&h.content_signer.key, &h.content_signer.certificate.der, &[h.issuing.certificate_der()], &xml).unwrap();
            (xml, signed)
        });
        let mut flipped = signed.clone();
        flipped[index.index(signed.len())] ^= mask;
        // As for the CHUID: a flip inside an embedded certificate may still verify (trusting the
        // certificate is the caller's path validation), but the content can never change.
        if let Ok((content, _)) = lanyard_ca::cms::verify_attached(&flipped) {
            prop_assert_eq!(&content, xml);
        }
        prop_assert!(lanyard_ca::cms::verify_attached(&signed[..cut.index(signed.len())]).is_err());
    }

    #[test]
    fn random_bytes_are_never_an_attestation(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (att, f9, root, spki) = attestation_fixture();
        let roots = vec![root.clone()];
        prop_assert!(verify_piv_attestation(&bytes, f9, &roots, spki, now()).is_err());
        prop_assert!(verify_piv_attestation(att, &bytes, &roots, spki, now()).is_err());
        prop_assert!(verify_piv_attestation(att, f9, std::slice::from_ref(&bytes), spki, now()).is_err());
        prop_assert!(verify_piv_attestation(att, f9, &roots, &bytes, now()).is_err());
    }

    #[test]
    fn mutated_attestations_are_refused(index in any::<proptest::sample::Index>(), mask in 1u8..=255) {
        let (att, f9, root, spki) = attestation_fixture();
        let mut flipped = att.clone();
        flipped[index.index(att.len())] ^= mask;
        prop_assert!(verify_piv_attestation(&flipped, f9, std::slice::from_ref(root), spki, now()).is_err());
    }
}

// ------------------------------------------------------------------------------------------------
// Apple configuration profiles

/// Reads a signed profile the way a device and an administrator would: `openssl cms -verify`
/// against the root alone (the signer and the issuing CA come from the profile), then Python's
/// `plistlib` on what it extracted; prints the fields as JSON.
const PLISTLIB: &str = r#"
import json, plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
root, scep = p["PayloadContent"]
c = scep["PayloadContent"]
print(json.dumps({
  "type": p["PayloadType"], "id": p["PayloadIdentifier"], "uuid": p["PayloadUUID"],
  "version": p["PayloadVersion"], "org": p["PayloadOrganization"], "name": p["PayloadDisplayName"],
  "removal": p["RemovalDate"].isoformat(),
  "root_type": root["PayloadType"], "root_der": root["PayloadContent"].hex(),
  "scep_type": scep["PayloadType"], "scep_id": scep["PayloadIdentifier"],
  "url": c["URL"], "name_ca": c["Name"], "challenge": c["Challenge"], "keysize": c["Keysize"],
  "keytype": c["Key Type"], "keyusage": c["Key Usage"], "fingerprint": c["CAFingerprint"].hex(),
  "subject": c["Subject"], "retries": c["Retries"], "delay": c["RetryDelay"],
}))
"#;

#[test]
fn a_signed_profile_verifies_against_the_root_and_plistlib_reads_it() {
    use lanyard_ca::mobileconfig::{ScepProfileSpec, build_scep_profile, sign_profile};
    for alg in [KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048] {
        let h = hierarchy(alg);
        let dir = workdir(&h);
        let d = dir.path();
        let signer = lanyard_ca::hierarchy::issue_signer(
            &h.issuing,
            &CertificateProfile::profile_signer(),
            SoftwareKey::generate(alg).unwrap(),
            lanyard_ca::hierarchy::profile_signer_subject("Lanyard Test").unwrap(),
            now() - Duration::minutes(1),
            CertificateProfile::profile_signer().max_validity_days,
        )
        .unwrap();
        write_cert(d, "signer.pem", &signer.certificate);
        assert_chain_verifies(d, "signer.pem");
        let removal = datetime!(2031-05-06 07:08:09 UTC);
        let xml = build_scep_profile(&ScepProfileSpec {
            host: "lanyard.example.org",
            organization: "Lanyard Test",
            username: "jdoe",
            scep_url: "https://lanyard.example.org/scep",
            ca_ident: "lanyard",
            challenge: "one-time-code",
            subject: vec![("CN".into(), "jdoe mobile".into()), ("O".into(), "Lanyard Test".into())],
            root_der: h.root.certificate_der(),
            scep_ca_der: h.issuing.certificate_der(),
            removal_date: removal,
        })
        .unwrap();
        let signed = sign_profile(&signer, &[h.issuing.certificate_der()], &xml).unwrap();
        std::fs::write(d.join("p.mobileconfig"), &signed).unwrap();
        // The library's own reading agrees with what it signed.
        let (content, summary) = lanyard_ca::cms::verify_attached(&signed).unwrap();
        assert_eq!(content, xml);
        assert_eq!(summary.econtent_type, lanyard_ca::oids::CMS_DATA);
        assert_eq!(summary.signer_certificate_der, signer.certificate.der);

        let out = openssl(
            &[
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                "p.mobileconfig",
                "-CAfile",
                "root.pem",
                "-out",
                "p.plist",
            ],
            d,
        );
        assert!(out.success && out.text().contains("Verification successful"), "{alg}: {}", out.text());
        assert_eq!(std::fs::read(d.join("p.plist")).unwrap(), xml);
        // Both certificates travel in the profile.
        let certs =
            openssl_ok(&["pkcs7", "-inform", "DER", "-in", "p.mobileconfig", "-print_certs", "-noout"], d);
        assert!(certs.contains("CN = Lanyard Test Profile Signer"), "{certs}");
        assert!(certs.contains("CN = Lanyard Test Issuing CA"), "{certs}");
        // Another root does not verify it.
        let other = hierarchy(alg);
        std::fs::write(d.join("other.pem"), other.root.certificate_pem()).unwrap();
        let bad = openssl(
            &[
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                "p.mobileconfig",
                "-CAfile",
                "other.pem",
                "-out",
                "x",
            ],
            d,
        );
        assert!(!bad.success, "verified against a foreign root: {}", bad.text());

        std::fs::write(d.join("read.py"), PLISTLIB).unwrap();
        let json = tools::command_ok("python3", &["read.py", "p.plist"], Some(d));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let id = "org.example.lanyard.lanyard.mobile.jdoe";
        assert_eq!(v["type"], "Configuration");
        assert_eq!(v["id"], id);
        assert_eq!(v["version"], 1);
        assert_eq!(v["org"], "Lanyard Test");
        assert_eq!(v["removal"], "2031-05-06T07:08:09");
        assert_eq!(v["root_type"], "com.apple.security.root");
        assert_eq!(v["root_der"], hex::encode(h.root.certificate_der()));
        assert_eq!(v["scep_type"], "com.apple.security.scep");
        assert_eq!(v["scep_id"], format!("{id}.scep"));
        assert_eq!(v["url"], "https://lanyard.example.org/scep");
        assert_eq!(v["name_ca"], "lanyard");
        assert_eq!(v["challenge"], "one-time-code");
        assert_eq!(v["keysize"], 2048);
        assert_eq!(v["keytype"], "RSA");
        assert_eq!(v["keyusage"], 5);
        assert_eq!(v["retries"], 3);
        assert_eq!(v["delay"], 10);
        assert_eq!(v["subject"], serde_json::json!([[["CN", "jdoe mobile"]], [["O", "Lanyard Test"]]]));
        // The SHA-1 fingerprint of the issuing CA, as openssl computes it.
        let fp = openssl_ok(&["x509", "-in", "issuing.pem", "-noout", "-fingerprint", "-sha1"], d);
        let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
        assert_eq!(v["fingerprint"], fp);
        assert_eq!(v["uuid"].as_str().unwrap().len(), 36);
    }
}

// ------------------------------------------------------------------------------------------------
// SCEP messages, built and read by openssl

mod scep_messages {
    use super::*;
    use lanyard_ca::scep::{self, ContentCipher, FailInfo, MessageType, RaKey, Reply, RequestContent};
    use lanyard_testkit::scep::OpensslScepClient;

    struct World {
        h: Hierarchy,
        ra: SignerCredential<RaKey>,
        dir: tempfile::TempDir,
    }

    fn world() -> World {
        let h = hierarchy(KeyAlgorithm::EcP256);
        let ra_key = RaKey::new(SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap()).unwrap();
        let ra = lanyard_ca::hierarchy::issue_signer(
            &h.issuing,
            &CertificateProfile::scep_ra(),
            ra_key,
            parse_dn("CN=Lanyard Test SCEP RA,O=Lanyard Test").unwrap(),
            now() - Duration::minutes(5),
            30,
        )
        .unwrap();
        let dir = workdir(&h);
        write_cert(dir.path(), "ra.pem", &ra.certificate);
        World { h, ra, dir }
    }

    fn ra_cert(w: &World) -> Certificate {
        w.ra.certificate.certificate.clone()
    }

    #[test]
    fn the_ra_certificate_is_rsa_with_both_usages_under_an_ec_ca() {
        let w = world();
        let d = w.dir.path();
        assert_chain_verifies(d, "ra.pem");
        let text = x509_text(d, "ra.pem");
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("Signature Algorithm: ecdsa-with-SHA256"), "{text}");
        assert_eq!(
            extension(&text, "X509v3 Key Usage"),
            Some((true, "Digital Signature, Key Encipherment".into()))
        );
        pkilint::assert_cert(&d.join("ra.pem"));
        pkilint::assert_pair(&d.join("issuing.pem"), &d.join("ra.pem"));
        // EC keys cannot be an RA key.
        assert!(RaKey::new(SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap()).is_err());
    }

    #[test]
    fn a_streamed_ber_pkcsreq_from_openssl_is_read_and_answered() {
        let w = world();
        let d = w.dir.path();
        let client = OpensslScepClient::new(&d.join("client"), "client");
        let csr = client.csr("Jane Doe", "s3cret-challenge");
        for (cipher, expected) in [
            ("-aes256", ContentCipher::Aes256Cbc),
            ("-aes128", ContentCipher::Aes128Cbc),
            ("-des3", ContentCipher::DesEde3Cbc),
        ] {
            let (msg, nonce) = client.request(
                &d.join("ra.pem"),
                19,
                "tx-0001",
                &csr,
                cipher,
                "self.pem",
                "key.pem",
                "sha256",
            );
            // The message is indefinite-length BER, which DER parsers refuse.
            assert_eq!(&msg[..2], &[0x30, 0x80]);
            assert!(::cms::content_info::ContentInfo::from_der(&msg).is_err());
            let req = scep::parse_request(&msg, &w.ra.key, &ra_cert(&w)).unwrap();
            assert_eq!(req.message_type, MessageType::PkcsReq);
            assert_eq!(req.header.transaction_id_text, "tx-0001");
            assert_eq!(req.header.sender_nonce, nonce);
            assert_eq!(req.cipher, expected, "{cipher}");
            let RequestContent::Csr(parsed) = &req.content else { panic!("{:?}", req.content) };
            assert_eq!(parsed.challenge_password.as_deref(), Some("s3cret-challenge"));

            // SUCCESS: openssl verifies the RA's signature, opens the envelope with the client key
            // and finds the certificate.
            let key = SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap();
            let profile = CertificateProfile::mobile_device();
            let mut r = request(&profile, &key);
            r.public_key = parsed.public_key.clone();
            let issued = w.h.issuing.issue(&r).unwrap();
            let certs = [issued.der.clone(), w.h.issuing.certificate_der().to_vec()];
            let rep = scep::cert_rep(
                &w.ra.key,
                &w.ra.certificate.der,
                &req.header,
                &Reply::Success {
                    certificates: &certs,
                    crls: &[],
                    recipient: &req.signer,
                    cipher: req.cipher,
                },
            )
            .unwrap();
            let view = client.read_reply(&rep, &d.join("chain.pem"), "self.pem", "key.pem");
            assert_eq!(view.status, "0", "{}", view.printed);
            assert_eq!(view.transaction_id, "tx-0001");
            assert_eq!(view.recipient_nonce, hex::encode(&nonce), "{}", view.printed);
            let issued_pem = issued.to_pem();
            assert!(view.certificates_pem.contains(issued_pem.trim()), "{}", view.certificates_pem);
        }
    }

    #[test]
    fn single_des_sha1_bad_signatures_and_garbage_are_refused_precisely() {
        let w = world();
        let d = w.dir.path();
        let client = OpensslScepClient::new(&d.join("client"), "client");
        let csr = client.csr("Jane Doe", "x");
        let parse = |msg: &[u8]| scep::parse_request(msg, &w.ra.key, &ra_cert(&w));
        let failure = |msg: &[u8]| match parse(msg) {
            Err(scep::RequestError::Failed { failure, .. }) => failure,
            other => panic!("{other:?}"),
        };

        let (des, _) =
            client.request(&d.join("ra.pem"), 19, "tx-des", &csr, "-des", "self.pem", "key.pem", "sha256");
        let f = failure(&des);
        assert_eq!(f.info, FailInfo::BadAlg, "{f}");
        assert!(f.text.contains("single DES"), "{f}");

        let (sha1, _) =
            client.request(&d.join("ra.pem"), 19, "tx-sha1", &csr, "-aes128", "self.pem", "key.pem", "sha1");
        assert_eq!(failure(&sha1).info, FailInfo::BadAlg);

        // One bit of the signature flipped (it is the last element of the message, before the
        // six end-of-contents markers).
        let (mut tampered, _) =
            client.request(&d.join("ra.pem"), 19, "tx-bad", &csr, "-aes128", "self.pem", "key.pem", "sha256");
        let at = tampered.len() - 13;
        tampered[at] ^= 1;
        assert_eq!(failure(&tampered).info, FailInfo::BadMessageCheck);

        // A FAILURE reply, checked by openssl: pkiStatus 2 and the failInfo.
        let (msg, _) =
            client.request(&d.join("ra.pem"), 19, "tx-fail", &csr, "-des", "self.pem", "key.pem", "sha256");
        let Err(scep::RequestError::Failed { header, failure }) = parse(&msg) else { panic!() };
        let rep =
            scep::cert_rep(&w.ra.key, &w.ra.certificate.der, &header, &Reply::Failure(&failure)).unwrap();
        let view = client.read_reply(&rep, &d.join("chain.pem"), "self.pem", "key.pem");
        assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("0")), "{}", view.printed);
        assert_eq!(view.transaction_id, "tx-fail");

        // Not a PKIMessage at all: no reply can name a transaction.
        assert!(matches!(parse(b"hello"), Err(scep::RequestError::Unreadable(_))));
        assert!(matches!(parse(&csr), Err(scep::RequestError::Unreadable(_))));
    }

    #[test]
    fn get_ca_cert_is_a_degenerate_pkcs7_openssl_reads() {
        let w = world();
        let d = w.dir.path();
        let p7 = scep::degenerate(
            &[
                w.ra.certificate.der.clone(),
                w.h.issuing.certificate_der().to_vec(),
                w.h.root.certificate_der().to_vec(),
            ],
            &[],
        )
        .unwrap();
        std::fs::write(d.join("ca.p7b"), &p7).unwrap();
        let printed = openssl_ok(&["pkcs7", "-inform", "DER", "-in", "ca.p7b", "-print_certs", "-noout"], d);
        for cn in ["SCEP RA", "Issuing CA", "Root CA"] {
            assert!(printed.contains(cn), "{cn}: {printed}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever bytes arrive, the parser answers (usually an error) without panicking; and a
        /// real request with any byte changed is never accepted with different content.
        #[test]
        fn mangled_messages_never_panic(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            garbage in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let w = shared();
            let _ = scep::parse_request(&garbage, &w.0.ra.key, &w.0.ra.certificate.certificate);
            let mut msg = w.1.clone();
            for (at, value) in &flips {
                let i = at.index(msg.len());
                msg[i] ^= value | 1;
            }
            if let Ok(req) = scep::parse_request(&msg, &w.0.ra.key, &w.0.ra.certificate.certificate) {
                // Only bytes outside what is signed and encrypted can change without notice
                // (e.g. an unsigned length form); the request must still be the one sent.
                prop_assert_eq!(req.header.transaction_id_text, "tx-prop");
                let RequestContent::Csr(csr) = req.content else { panic!() };
                prop_assert_eq!(csr.challenge_password.as_deref(), Some("prop"));
            }
        }
    }

    /// One world and one request for all proptest cases (openssl is slow).
    fn shared() -> &'static (World, Vec<u8>) {
        static SHARED: OnceLock<(World, Vec<u8>)> = OnceLock::new();
        SHARED.get_or_init(|| {
            let w = world();
            let client = OpensslScepClient::new(&w.dir.path().join("client"), "client");
            let csr = client.csr("Prop", "prop");
            let (msg, _) = client.request(
                &w.dir.path().join("ra.pem"),
                19,
                "tx-prop",
                &csr,
                "-aes128",
                "self.pem",
                "key.pem",
                "sha256",
            );
            (w, msg)
        })
    }
}
