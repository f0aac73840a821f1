//! `card_check`: a sponsor card's certificate as the server checks it. The cards are software
//! PIV cards (`lanyard-vcard`) whose keys sign the challenges, and the certificates, OCSP
//! answers and CRLs come from real hierarchies of this crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The certificates and card images carry the real time, like the rest of the CA tests.
#![allow(clippy::disallowed_methods)]

use lanyard_ca::card_check::{
    CardCheckError, ChallengeKey, Revocation, TrustStore, challenge_input, crl_status, crl_urls,
    ocsp_request, ocsp_status, ocsp_urls, verify_challenge,
};
use lanyard_ca::hierarchy::{Hierarchy, HierarchySpec};
use lanyard_ca::{
    CaUrls, CertStatus, Certificate, CertificateProfile, CrlParams, IssueRequest, KeyAlgorithm,
    RevocationReason, RevokedEntry, SanInput, SubjectPublicKeyInfoOwned, parse_dn,
};
use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
use lanyard_piv::{InProcess, Piv, Slot};
use lanyard_vcard::VirtualCard;
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};

use der::{Decode, Encode};

const CARD_UUID: [u8; 16] =
    [0x3f, 0x25, 0x04, 0xe0, 0x4f, 0x89, 0x11, 0xd3, 0x9a, 0x0c, 0x03, 0x05, 0xe8, 0x2c, 0x33, 0x01];
const PIN: &[u8] = b"123456";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn hierarchy(name: &str) -> Hierarchy {
    let spec =
        HierarchySpec::new(name, KeyAlgorithm::EcP256, CaUrls::new("http://pki.lanyard.test").unwrap())
            .unwrap();
    Hierarchy::generate(&spec, now() - Duration::minutes(5)).unwrap()
}

/// A software card with a fresh key of `alg` in 9A, and the SubjectPublicKeyInfo of that key.
fn card(
    alg: lanyard_piv::KeyAlgorithm,
) -> (Piv<InProcess<VirtualCard>>, SubjectPublicKeyInfoOwned, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root =
        lanyard_vcard::AttestationRoot::open_or_create(dir.path(), std::time::SystemTime::now()).unwrap();
    let img = VirtualCard::new_image(&root, &lanyard_vcard::NewCard::default(), std::time::SystemTime::now())
        .unwrap();
    let mut piv = Piv::new(InProcess(VirtualCard::from_image(img).unwrap()));
    piv.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).unwrap();
    let public = piv.generate(Slot(0x9A), alg, None, None).unwrap();
    let spki = SubjectPublicKeyInfoOwned::from_der(&public.to_spki_der()).unwrap();
    (piv, spki, dir)
}

/// A PIV Authentication certificate for `spki` from `h`'s issuing CA, valid from `start` for
/// `days`.
fn issue(h: &Hierarchy, spki: SubjectPublicKeyInfoOwned, start: OffsetDateTime, days: i64) -> Vec<u8> {
    let profile = CertificateProfile::piv_authentication();
    let request = IssueRequest {
        profile: &profile,
        subject: parse_dn("CN=Jane Doe,OU=People,O=Lanyard Test,C=US").unwrap(),
        public_key: spki,
        san: SanInput {
            fasc_n: Some([0xd4; 25]),
            card_uuid: Some(CARD_UUID),
            upn: Some("jdoe@corp.lanyard.test".into()),
            email: vec!["jane.doe@lanyard.test".into()],
            ..SanInput::default()
        },
        not_before: start,
        requested_not_after: start + Duration::days(days),
        cap_not_after: None,
    };
    h.issuing.issue(&request).unwrap().der
}

fn store(h: &Hierarchy) -> TrustStore {
    TrustStore::new(&[h.root.certificate_der().to_vec()], &[h.issuing.certificate_der().to_vec()]).unwrap()
}

/// The card signs `challenge` as the sponsor session has it do: GENERAL AUTHENTICATE over
/// [`challenge_input`] after VERIFY PIN.
fn card_signs(
    piv: &mut Piv<InProcess<VirtualCard>>,
    cert: &Certificate,
    alg: lanyard_piv::KeyAlgorithm,
    challenge: &[u8],
) -> Vec<u8> {
    let key = ChallengeKey::of(&cert.tbs_certificate.subject_public_key_info).unwrap();
    assert_eq!(key.piv_algorithm(), alg.id());
    piv.verify_pin(PIN).unwrap();
    piv.sign(Slot(0x9A), alg, &challenge_input(key, challenge)).unwrap()
}

#[test]
fn a_lanyard_card_validates_to_the_root_and_its_signature_verifies() {
    let h = hierarchy("Lanyard Test");
    for alg in [
        lanyard_piv::KeyAlgorithm::EccP256,
        lanyard_piv::KeyAlgorithm::EccP384,
        lanyard_piv::KeyAlgorithm::Rsa2048,
    ] {
        let (mut piv, spki, _dir) = card(alg);
        let der = issue(&h, spki, now() - Duration::minutes(1), 365);
        let path = store(&h).validate(&der, now()).unwrap();
        assert_eq!(path.chain.len(), 3, "card, issuing CA, root");
        assert_eq!(path.issuer(), h.issuing.certificate());
        assert_eq!(path.anchor(), h.root.certificate());
        let challenge = [0x5a; 32];
        let signature = card_signs(&mut piv, path.leaf(), alg, &challenge);
        verify_challenge(path.leaf(), &challenge, &signature).unwrap();
        // The same signature over another challenge, or another card's, proves nothing.
        assert_eq!(
            verify_challenge(path.leaf(), &[0x5b; 32], &signature),
            Err(CardCheckError::BadSignature),
            "{alg:?}"
        );
        let names = lanyard_ca::card_check::card_names(path.leaf()).unwrap();
        assert_eq!(names.uuids, vec![CARD_UUID]);
        assert_eq!(names.upn.as_deref(), Some("jdoe@corp.lanyard.test"));
        assert_eq!(names.emails, vec!["jane.doe@lanyard.test".to_owned()]);
        assert_eq!(names.common_name.as_deref(), Some("Jane Doe"));
        assert!(!names.serial_hex.starts_with("00") && names.serial_hex.len() >= 2);
        assert_eq!(ocsp_urls(path.leaf()), vec!["http://pki.lanyard.test/pki/ocsp".to_owned()]);
        assert_eq!(crl_urls(path.leaf()), vec!["http://pki.lanyard.test/pki/crl".to_owned()]);
    }
}

#[test]
fn another_cards_signature_is_refused() {
    let h = hierarchy("Lanyard Test");
    let (_, spki, _dir) = card(lanyard_piv::KeyAlgorithm::EccP256);
    let (mut other, _, _dir2) = card(lanyard_piv::KeyAlgorithm::EccP256);
    let der = issue(&h, spki, now() - Duration::minutes(1), 365);
    let cert = Certificate::from_der(&der).unwrap();
    let challenge = [7u8; 48];
    let signature = card_signs(&mut other, &cert, lanyard_piv::KeyAlgorithm::EccP256, &challenge);
    assert_eq!(verify_challenge(&cert, &challenge, &signature), Err(CardCheckError::BadSignature));
    assert_eq!(verify_challenge(&cert, &challenge, b"not a signature"), Err(CardCheckError::BadSignature));
}

#[test]
fn untrusted_expired_and_incomplete_paths_are_refused() {
    let h = hierarchy("Lanyard Test");
    let stranger = hierarchy("Stranger");
    let (_, spki, _dir) = card(lanyard_piv::KeyAlgorithm::EccP256);
    let der = issue(&h, spki.clone(), now() - Duration::minutes(1), 30);

    // Another installation's root, with the same kind of names, anchors nothing here.
    match store(&stranger).validate(&der, now()) {
        Err(CardCheckError::Untrusted { issuer }) => {
            assert!(issuer.contains("Lanyard Test Issuing CA"), "{issuer}")
        }
        other => panic!("{other:?}"),
    }
    // The root alone does not reach a card issued by the issuing CA.
    let root_only = TrustStore::new(&[h.root.certificate_der().to_vec()], &[]).unwrap();
    assert!(matches!(root_only.validate(&der, now()), Err(CardCheckError::Untrusted { .. })));
    // A PEM bundle of root and issuing CA: the self-signed root is the anchor.
    let mut bundle = TrustStore::default();
    let pem = format!("{}{}", h.root.certificate_pem(), h.issuing.certificate_pem());
    assert_eq!(bundle.add_pem_bundle(pem.as_bytes()).unwrap(), 1);
    bundle.validate(&der, now()).unwrap();
    assert!(bundle.add_pem_bundle(b"no certificates here").is_err());

    // Past the card certificate's end, and before its start.
    match store(&h).validate(&der, now() + Duration::days(31)) {
        Err(CardCheckError::Expired { subject, .. }) => assert!(subject.contains("Jane Doe"), "{subject}"),
        other => panic!("{other:?}"),
    }
    let later = issue(&h, spki, now() + Duration::days(2), 30);
    assert!(matches!(store(&h).validate(&later, now()), Err(CardCheckError::NotYetValid { .. })));
    // A CA certificate is not a card's.
    assert_eq!(
        store(&h).validate(h.issuing.certificate_der(), now()).map(|_| ()),
        Err(CardCheckError::NotAnEndEntity)
    );
    assert!(matches!(store(&h).validate(b"garbage", now()), Err(CardCheckError::Malformed(_))));
}

#[test]
fn ocsp_answers_say_good_or_revoked_and_only_the_issuers_count() {
    let h = hierarchy("Lanyard Test");
    let stranger = hierarchy("Stranger");
    let (_, spki, _dir) = card(lanyard_piv::KeyAlgorithm::EccP256);
    let der = issue(&h, spki, now() - Duration::minutes(1), 365);
    let cert = Certificate::from_der(&der).unwrap();
    let issuer = h.issuing.certificate();
    let nonce = [0x11; 16];
    let request = ocsp_request(&cert, issuer, &nonce).unwrap();

    let good = h.ocsp.respond(&request, |_| CertStatus::Good, now());
    assert_eq!(ocsp_status(&good, &cert, issuer, &nonce, now()), Ok(Revocation::Good));

    let revoked_at = now() - Duration::hours(1);
    let revoked = h.ocsp.respond(
        &request,
        |_| CertStatus::Revoked { revoked_at, reason: Some(RevocationReason::KeyCompromise) },
        now(),
    );
    match ocsp_status(&revoked, &cert, issuer, &nonce, now()) {
        Ok(Revocation::Revoked { reason, .. }) => assert_eq!(reason, Some(RevocationReason::KeyCompromise)),
        other => panic!("{other:?}"),
    }

    // Unknown, another request's nonce, too old, another CA's responder, garbage: no answer.
    let unknown = h.ocsp.respond(&request, |_| CertStatus::Unknown, now());
    assert!(ocsp_status(&unknown, &cert, issuer, &nonce, now()).unwrap_err().0.contains("does not know"));
    assert!(ocsp_status(&good, &cert, issuer, &[0x22; 16], now()).unwrap_err().0.contains("nonce"));
    assert!(
        ocsp_status(&good, &cert, issuer, &nonce, now() + Duration::days(2))
            .unwrap_err()
            .0
            .contains("out of date")
    );
    let forged = stranger.ocsp.respond(&request, |_| CertStatus::Good, now());
    let err = ocsp_status(&forged, &cert, issuer, &nonce, now()).unwrap_err();
    assert!(err.0.contains("not signed") || err.0.contains("does not speak"), "{err}");
    assert!(ocsp_status(b"garbage", &cert, issuer, &nonce, now()).is_err());
}

#[test]
fn crls_say_good_or_revoked_and_must_be_the_issuers_and_current() {
    let h = hierarchy("Lanyard Test");
    let stranger = hierarchy("Stranger");
    let (_, spki, _dir) = card(lanyard_piv::KeyAlgorithm::EccP256);
    let der = issue(&h, spki, now() - Duration::minutes(1), 365);
    let cert = Certificate::from_der(&der).unwrap();
    let issuer = h.issuing.certificate();
    let params = CrlParams {
        number: 1,
        this_update: now() - Duration::minutes(1),
        next_update: now() + Duration::days(1),
    };
    let empty = h.issuing.build_crl(&[], &params).unwrap();
    assert_eq!(crl_status(&empty, &cert, issuer, now()), Ok(Revocation::Good));
    let entry = RevokedEntry {
        serial: cert.tbs_certificate.serial_number.clone(),
        revocation_date: now() - Duration::hours(2),
        reason: Some(RevocationReason::CessationOfOperation),
    };
    let listed = h.issuing.build_crl(&[entry], &params).unwrap();
    match crl_status(&listed, &cert, issuer, now()) {
        Ok(Revocation::Revoked { reason, .. }) => {
            assert_eq!(reason, Some(RevocationReason::CessationOfOperation))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        crl_status(&empty, &cert, issuer, now() + Duration::days(2)).unwrap_err().0.contains("out of date")
    );
    let foreign = stranger.issuing.build_crl(&[], &params).unwrap();
    assert!(crl_status(&foreign, &cert, issuer, now()).is_err());
    assert!(crl_status(b"garbage", &cert, issuer, now()).is_err());
}

#[test]
fn the_rsa_block_is_pkcs1_v1_5_of_sha256_at_the_modulus_length() {
    let block = challenge_input(ChallengeKey::Rsa { modulus_len: 256 }, b"challenge");
    assert_eq!(block.len(), 256);
    assert_eq!(&block[..2], &[0x00, 0x01]);
    let zero = block[2..].iter().position(|b| *b == 0).unwrap() + 2;
    assert!(block[2..zero].iter().all(|b| *b == 0xFF) && zero - 2 >= 8);
    assert_eq!(block.len() - zero - 1, 19 + 32, "DigestInfo and the SHA-256 digest follow");
    assert_eq!(challenge_input(ChallengeKey::EcP256, b"x").len(), 32);
    assert_eq!(challenge_input(ChallengeKey::EcP384, b"x").len(), 48);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a card or a responder sends, the checks answer with an error, never a panic.
    #[test]
    fn arbitrary_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        static FIXTURE: std::sync::OnceLock<(Hierarchy, Vec<u8>)> = std::sync::OnceLock::new();
        let (h, der) = FIXTURE.get_or_init(|| {
            let h = hierarchy("Lanyard Test");
            let key = lanyard_ca::SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
            let der = issue(&h, lanyard_ca::CaSigner::public_key(&key), now() - Duration::minutes(1), 30);
            (h, der)
        });
        let cert = Certificate::from_der(der).unwrap();
        let issuer = h.issuing.certificate();
        prop_assert!(store(h).validate(&bytes, now()).is_err());
        prop_assert!(ocsp_status(&bytes, &cert, issuer, &[1; 8], now()).is_err());
        prop_assert!(crl_status(&bytes, &cert, issuer, now()).is_err());
        prop_assert!(verify_challenge(&cert, b"challenge", &bytes).is_err());
        let _ = cert.to_der().unwrap();
    }
}
