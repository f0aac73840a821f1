//! Revocation publishing across servers: two `AppState`s over one database (SQLite file, and
//! PostgreSQL from LANYARD_TEST_POSTGRES_URL) and one CA directory. A change committed through
//! one is in the other's very next OCSP answer and CRL; cRLNumbers grow across both; CRLs are
//! built once per change, not per audit event; partitioned CRLs verify with openssl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::{Body, Bytes};
use axum::http::Request;
use der::Decode;
use lanyard_ca::{CertificateProfile, IssueRequest, KeyAlgorithm, SanInput, SoftwareKey, parse_dn};
use lanyard_core::audit::{Actor, NewAuditEvent, OperationId};
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::ids::CredentialId;
use lanyard_core::lifecycle::{CredentialAction, RevocationReason, apply_credential};
use lanyard_core::model::{CertSlot, Credential, CredentialKind, Device, DeviceKind};
use lanyard_core::repo::prelude::*;
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use lanyard_testkit::tools::{command, openssl, pem};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse};

const BASE: &str = "http://pki.test";

async fn database(dir: &Path, postgres: bool) -> String {
    if !postgres {
        return format!("sqlite://{}", dir.join("lanyard.db").display());
    }
    let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL")
        .expect("LANYARD_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL");
    let name = format!("lanyard_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&admin_url).await.unwrap();
    let Db::Postgres(pool) = &admin else { unreachable!() };
    // A UUID we generated: safe to splice in.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(pool).await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A server: its own pool and caches over the shared database and CA directory.
async fn server(url: &str, ca: &Path, shards: u16) -> AppState<Db> {
    let db = Db::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    let pki = Pki::load(ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, SystemClock.now())
        .unwrap()
        .with_crl_shards(shards);
    AppState::new(Arc::new(db), Arc::new(pki), Arc::new(SystemClock))
}

struct Cert {
    pem_path: String,
    credential: Credential,
}

/// `chain.pem` in `dir`: the issuing CA then the root, as `openssl -CAfile` takes them.
fn write_chain(pki: &Pki, dir: &Path) -> std::path::PathBuf {
    let chain = dir.join("chain.pem");
    let text = format!(
        "{}{}",
        pem("CERTIFICATE", pki.issuing.certificate_der()),
        pem("CERTIFICATE", pki.root.certificate_der())
    );
    std::fs::write(&chain, text).unwrap();
    chain
}

fn issue(pki: &Pki, dir: &Path, name: &str, device: &Device) -> Cert {
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let now = SystemClock.now();
    let profile = CertificateProfile::piv_authentication();
    let cert = pki
        .issuing
        .issue(&IssueRequest {
            profile: &profile,
            subject: parse_dn(&format!("CN={name}")).unwrap(),
            public_key: lanyard_ca::CaSigner::public_key(&key),
            san: SanInput { fasc_n: Some([0xD4; 25]), card_uuid: Some([7; 16]), ..SanInput::default() },
            not_before: now,
            requested_not_after: now + time::Duration::days(30),
            cap_not_after: None,
        })
        .unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem("CERTIFICATE", &cert.der)).unwrap();
    let mut credential = Credential::new(
        device.id,
        CredentialKind::Certificate {
            slot: CertSlot::PivAuthentication,
            profile: "piv-authentication".into(),
            serial_hex: lanyard_issuance::rules::serial_hex(
                cert.certificate.tbs_certificate.serial_number.as_bytes(),
            ),
            not_before: now,
            not_after: now + time::Duration::days(30),
            certificate_der: cert.der.clone(),
            attestation_der: None,
        },
        now,
    );
    apply_credential(&mut credential, CredentialAction::Activate, now).unwrap();
    Cert { pem_path: path.to_string_lossy().into_owned(), credential }
}

/// Applies `action` through `state`'s database, committed when this returns.
async fn change(state: &AppState<Db>, id: CredentialId, action: CredentialAction) {
    let mut tx = state.repo.begin().await.unwrap();
    let mut c = tx.get_credential(id).await.unwrap().unwrap();
    apply_credential(&mut c, action, SystemClock.now()).unwrap();
    tx.update_credential(&c).await.unwrap();
    tx.commit().await.unwrap();
}

/// An OCSP request for `cert` made by openssl, with or without a nonce.
fn request(dir: &Path, issuing: &str, cert: &Cert, nonce: bool) -> Vec<u8> {
    let out = dir.join(format!("req-{}-{nonce}.der", uuid::Uuid::new_v4()));
    let mut args =
        vec!["ocsp", "-issuer", issuing, "-cert", &cert.pem_path, "-reqout", out.to_str().unwrap()];
    if !nonce {
        args.push("-no_nonce");
    }
    openssl(&args);
    std::fs::read(out).unwrap()
}

async fn post(state: &AppState<Db>, der: &[u8]) -> (axum::http::HeaderMap, Bytes) {
    let resp = router(state.clone())
        .oneshot(Request::post("/pki/ocsp").body(Body::from(der.to_vec())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (headers, axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap())
}

async fn get(
    state: &AppState<Db>,
    path: &str,
    if_none_match: Option<&str>,
) -> (u16, axum::http::HeaderMap, Bytes) {
    let mut req = Request::get(path);
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let resp = router(state.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap())
}

/// The status of the single response, and the nonce extension's value if any.
fn status_of(der: &[u8]) -> (String, Option<Vec<u8>>, BasicOcspResponse) {
    let resp = OcspResponse::from_der(der).unwrap();
    let basic = BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes()).unwrap();
    let single = &basic.tbs_response_data.responses[0];
    let status = match &single.cert_status {
        CertStatus::Good(_) => "good".to_owned(),
        CertStatus::Revoked(info) => format!("revoked:{:?}", info.revocation_reason),
        CertStatus::Unknown(_) => "unknown".to_owned(),
    };
    let nonce = basic
        .tbs_response_data
        .response_extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == lanyard_ca::oids::OCSP_NONCE))
        .map(|e| e.extn_value.as_bytes().to_vec());
    (status, nonce, basic)
}

fn crl_number(der: &[u8]) -> u64 {
    let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
    let ext = crl
        .tbs_cert_list
        .crl_extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id == lanyard_ca::oids::CRL_NUMBER)
        .unwrap();
    let n = x509_cert::ext::pkix::CrlNumber::from_der(ext.extn_value.as_bytes()).unwrap();
    n.0.as_bytes().iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn crl_serials(der: &[u8]) -> Vec<String> {
    let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
    crl.tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| lanyard_issuance::rules::serial_hex(r.serial_number.as_bytes()))
        .collect()
}

async fn two_servers(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, SystemClock.now()).unwrap();
    let url = database(d, postgres).await;
    let a = server(&url, &ca, 0).await;
    let b = server(&url, &ca, 0).await;
    let issuing = d.join("issuing.pem");
    std::fs::write(&issuing, pem("CERTIFICATE", a.pki.issuing.certificate_der())).unwrap();
    let chain = write_chain(&a.pki, d);
    let (issuing, chain) = (issuing.to_str().unwrap(), chain.to_str().unwrap());

    let device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", SystemClock.now()).unwrap();
    let alice = issue(&a.pki, d, "alice", &device);
    let bob = issue(&a.pki, d, "bob", &device);
    let unknown = issue(&a.pki, d, "unknown", &device);
    {
        let mut tx = a.repo.begin().await.unwrap();
        tx.insert_device(&device).await.unwrap();
        tx.insert_credential(&alice.credential).await.unwrap();
        tx.insert_credential(&bob.credential).await.unwrap();
        tx.commit().await.unwrap();
    }
    let alice_req = request(d, issuing, &alice, false);
    let alice_nonce = request(d, issuing, &alice, true);
    let serial = alice.credential.serial_hex().to_owned();

    // Both answer good; the answer without a nonce is pre-signed: the same bytes again.
    let (headers, first) = post(&b, &alice_req).await;
    assert_eq!(status_of(&first).0, "good");
    assert!(status_of(&first).1.is_none());
    assert!(headers["cache-control"].to_str().unwrap().contains("max-age=0"));
    assert_eq!(post(&b, &alice_req).await.1, first, "served from the pre-signed cache");
    assert_eq!(b.revocation.ocsp_cached(), 1);
    assert_eq!(status_of(&post(&a, &alice_req).await.1).0, "good");
    // The pre-signed answer verifies with openssl.
    let resp_path = d.join("presigned.der");
    std::fs::write(&resp_path, &first).unwrap();
    let out = openssl(&[
        "ocsp",
        "-respin",
        resp_path.to_str().unwrap(),
        "-issuer",
        issuing,
        "-cert",
        &alice.pem_path,
        "-CAfile",
        chain,
        "-no_nonce",
    ]);
    assert!(out.contains("Response verify OK") && out.contains(": good"), "{out}");
    // thisUpdate ≤ now < nextUpdate.
    let single = &status_of(&first).2.tbs_response_data.responses[0];
    let this_update = single.this_update.0.to_unix_duration().as_secs();
    let next_update = single.next_update.unwrap().0.to_unix_duration().as_secs();
    let now = u64::try_from(SystemClock.now().unix_timestamp()).unwrap();
    assert!(this_update <= now && now < next_update, "{this_update} {now} {next_update}");

    // A nonce is echoed and signed for it.
    let (_, with_nonce) = post(&b, &alice_nonce).await;
    let (status, nonce, _) = status_of(&with_nonce);
    assert_eq!(status, "good");
    let sent = x509_ocsp::OcspRequest::from_der(&alice_nonce).unwrap();
    let sent = sent.tbs_request.request_extensions.unwrap();
    assert_eq!(nonce.as_deref(), Some(sent[0].extn_value.as_bytes()), "nonce echoed");

    // Unknown serials are answered unknown, never cached.
    let unknown_req = request(d, issuing, &unknown, false);
    assert_eq!(status_of(&post(&b, &unknown_req).await.1).0, "unknown");
    assert_eq!(b.revocation.ocsp_cached(), 1);

    // GET: ETag revalidation answers 304 while nothing changed.
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&alice_req)
    };
    let (code, headers, body) = get(&b, &format!("/pki/ocsp/{b64}"), None).await;
    assert_eq!((code, status_of(&body).0.as_str()), (200, "good"));
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(headers.contains_key("last-modified"));
    let (code, _, body) = get(&b, &format!("/pki/ocsp/{b64}"), Some(&etag)).await;
    assert_eq!(code, 304);
    assert!(body.is_empty());

    // The CRLs of both, and an unrelated audited action: no rebuild, the same cRLNumber.
    let (_, _, crl_a0) = get(&a, "/pki/crl", None).await;
    let (_, _, crl_b0) = get(&b, "/pki/crl", None).await;
    assert!(crl_number(&crl_b0) > crl_number(&crl_a0), "cRLNumber grows across servers");
    assert!(crl_serials(&crl_b0).is_empty());
    {
        let mut tx = a.repo.begin().await.unwrap();
        let event =
            NewAuditEvent::new(SystemClock.now(), Actor::System, "test.unrelated", &OperationId::random());
        tx.append_audit(event).await.unwrap();
        tx.commit().await.unwrap();
    }
    let builds = a.revocation.crl_builds();
    let (_, _, crl_a1) = get(&a, "/pki/crl", None).await;
    assert_eq!(crl_number(&crl_a1), crl_number(&crl_a0), "not rebuilt for an unrelated audit event");
    assert_eq!(a.revocation.crl_builds(), builds);

    // Revoke through A: B's very next answers show it, GET revalidation included.
    change(&a, alice.credential.id, CredentialAction::Revoke(RevocationReason::KeyCompromise)).await;
    assert_eq!(status_of(&post(&b, &alice_req).await.1).0, "revoked:Some(KeyCompromise)");
    let (code, _, body) = get(&b, &format!("/pki/ocsp/{b64}"), Some(&etag)).await;
    assert_eq!((code, status_of(&body).0.as_str()), (200, "revoked:Some(KeyCompromise)"));
    assert_eq!(status_of(&post(&a, &alice_req).await.1).0, "revoked:Some(KeyCompromise)");
    let (_, _, crl_b1) = get(&b, "/pki/crl", None).await;
    assert_eq!(crl_serials(&crl_b1), vec![serial.clone()]);
    assert!(crl_number(&crl_b1) > crl_number(&crl_a1));
    let (_, _, crl_a2) = get(&a, "/pki/crl", None).await;
    assert_eq!(crl_serials(&crl_a2), vec![serial.clone()]);
    assert!(crl_number(&crl_a2) > crl_number(&crl_b1));

    // Hold and release bob through B; A follows each step.
    let bob_req = request(d, issuing, &bob, false);
    assert_eq!(status_of(&post(&a, &bob_req).await.1).0, "good");
    change(&b, bob.credential.id, CredentialAction::Hold).await;
    assert_eq!(status_of(&post(&a, &bob_req).await.1).0, "revoked:Some(CertificateHold)");
    let (_, _, crl_a3) = get(&a, "/pki/crl", None).await;
    assert_eq!(crl_serials(&crl_a3).len(), 2);
    change(&b, bob.credential.id, CredentialAction::Release).await;
    assert_eq!(status_of(&post(&a, &bob_req).await.1).0, "good");
    let (_, _, crl_a4) = get(&a, "/pki/crl", None).await;
    assert_eq!(crl_serials(&crl_a4), vec![serial]);
    assert!(crl_number(&crl_a4) > crl_number(&crl_a3));
    let crl_path = d.join("crl.der");
    std::fs::write(&crl_path, &crl_a4).unwrap();
    let out = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl_path.to_str().unwrap(),
        "-CAfile",
        chain,
        "-verify",
        "-noout",
    ]);
    assert!(out.contains("verify OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_server_is_in_the_others_next_answers_on_sqlite() {
    two_servers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_server_is_in_the_others_next_answers_on_postgres() {
    two_servers(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_crl_requests_share_one_build() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, SystemClock.now()).unwrap();
    let url = database(dir.path(), false).await;
    let s = server(&url, &ca, 0).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { get(&s, "/pki/crl", None).await.2 }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every caller got the one result");
    assert_eq!(s.revocation.crl_builds(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_crls_name_their_distribution_point_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, SystemClock.now()).unwrap();
    let url = database(d, false).await;
    let s = server(&url, &ca, 4).await;
    let chain = write_chain(&s.pki, d);
    let chain = chain.to_str().unwrap();
    let device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", SystemClock.now()).unwrap();
    let certs: Vec<Cert> = (0..12).map(|i| issue(&s.pki, d, &format!("c{i}"), &device)).collect();
    {
        let mut tx = s.repo.begin().await.unwrap();
        tx.insert_device(&device).await.unwrap();
        for c in &certs {
            tx.insert_credential(&c.credential).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    for c in certs.iter().step_by(2) {
        change(&s, c.credential.id, CredentialAction::Revoke(RevocationReason::KeyCompromise)).await;
    }
    let (_, _, root_crl) = get(&s, "/pki/root.crl", None).await;
    let root_crl_path = d.join("root-crl.der");
    std::fs::write(&root_crl_path, &root_crl).unwrap();
    let root_crl_pem = openssl(&["crl", "-inform", "DER", "-in", root_crl_path.to_str().unwrap()]);
    let mut listed = 0;
    for (i, c) in certs.iter().enumerate() {
        let serial = hex::decode(c.credential.serial_hex()).unwrap();
        let shard = lanyard_ca::crl_shard(&serial, 4);
        let text = openssl(&["x509", "-in", &c.pem_path, "-noout", "-ext", "crlDistributionPoints"]);
        assert!(text.contains(&format!("URI:{BASE}/pki/crl/{shard}")), "{text}");
        let (code, _, body) = get(&s, &format!("/pki/crl/{shard}"), None).await;
        assert_eq!(code, 200);
        let serials = crl_serials(&body);
        assert_eq!(serials.contains(&c.credential.serial_hex().to_owned()), i % 2 == 0);
        assert!(serials.iter().all(|s| lanyard_ca::crl_shard(&hex::decode(s).unwrap(), 4) == shard));
        listed += usize::from(i % 2 == 0);
        let der_path = d.join(format!("shard-{i}.der"));
        std::fs::write(&der_path, &body).unwrap();
        let der_path = der_path.to_str().unwrap();
        let out = openssl(&[
            "crl", "-inform", "DER", "-in", der_path, "-CAfile", chain, "-verify", "-noout", "-text",
        ]);
        assert!(out.contains("verify OK"), "{out}");
        assert!(out.contains(&format!("URI:{BASE}/pki/crl/{shard}")), "issuingDistributionPoint: {out}");
        let crls = d.join(format!("crls-{i}.pem"));
        let shard_pem = openssl(&["crl", "-inform", "DER", "-in", der_path]);
        std::fs::write(&crls, format!("{shard_pem}{root_crl_pem}")).unwrap();
        let ran = command(
            "openssl",
            &["verify", "-crl_check_all", "-CRLfile", crls.to_str().unwrap(), "-CAfile", chain, &c.pem_path],
            None,
        );
        if i % 2 == 0 {
            assert!(ran.text().contains("certificate revoked"), "{}", ran.text());
        } else {
            assert!(ran.success && ran.text().contains(": OK"), "{}", ran.text());
        }
    }
    // The full CRL still lists everything; partitions beyond the count do not exist.
    let (_, _, full) = get(&s, "/pki/crl", None).await;
    assert_eq!(crl_serials(&full).len(), listed);
    assert_eq!(get(&s, "/pki/crl/4", None).await.0, 404);
    assert_eq!(get(&s, "/pki/crl/x", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_renews_its_ocsp_signer_and_the_other_picks_it_up() {
    use lanyard_core::clock::ManualClock;
    use lanyard_server::pki::Renewal;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    let start = SystemClock.now();
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, start).unwrap();
    let url = database(d, false).await;
    let clock = Arc::new(ManualClock::new(start));
    let load = || Pki::load(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, start).unwrap();
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    let a = AppState::new(Arc::new(db.clone()), Arc::new(load()), clock.clone());
    let b = AppState::new(Arc::new(db), Arc::new(load()), clock.clone());
    let original = a.pki.ocsp.current().0.responder_certificate().clone();

    // A certificate to ask about, and its pre-signed answer from the original signer.
    let device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", start).unwrap();
    let alice = issue(&a.pki, d, "alice", &device);
    {
        let mut tx = a.repo.begin().await.unwrap();
        tx.insert_device(&device).await.unwrap();
        tx.insert_credential(&alice.credential).await.unwrap();
        tx.commit().await.unwrap();
    }
    let issuing = d.join("issuing.pem");
    std::fs::write(&issuing, pem("CERTIFICATE", a.pki.issuing.certificate_der())).unwrap();
    let req = request(d, issuing.to_str().unwrap(), &alice, false);
    let signer_of = |der: &[u8]| status_of(der).2.certs.unwrap()[0].clone();
    assert_eq!(signer_of(&post(&a, &req).await.1), original);

    // Early in its life nothing happens.
    assert_eq!(a.pki.renew_ocsp(&ca, clock.now()).unwrap(), Renewal::Unchanged);
    // Past two thirds of its 90 days, A renews it; B, sharing the directory, takes A's.
    clock.advance(time::Duration::days(70));
    assert_eq!(a.pki.renew_ocsp(&ca, clock.now()).unwrap(), Renewal::Renewed);
    assert_eq!(b.pki.renew_ocsp(&ca, clock.now()).unwrap(), Renewal::PickedUp);
    assert_eq!(a.pki.renew_ocsp(&ca, clock.now()).unwrap(), Renewal::Unchanged);
    assert_eq!(b.pki.renew_ocsp(&ca, clock.now()).unwrap(), Renewal::Unchanged);
    let renewed = a.pki.ocsp.current().0.responder_certificate().clone();
    assert_ne!(renewed, original);
    assert_eq!(b.pki.ocsp.current().0.responder_certificate(), &renewed);
    assert_eq!(
        renewed.tbs_certificate.subject_public_key_info, original.tbs_certificate.subject_public_key_info,
        "the same key"
    );
    assert!(
        renewed.tbs_certificate.validity.not_after.to_unix_duration()
            > original.tbs_certificate.validity.not_after.to_unix_duration()
    );
    // The file holds it (written whole), and no temporary file is left behind.
    let on_disk = x509_cert::Certificate::from_der(&std::fs::read(ca.join("ocsp.crt")).unwrap()).unwrap();
    assert_eq!(on_disk, renewed);
    assert!(
        std::fs::read_dir(&ca).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
    );
    // The pre-signed answer of the old signer is gone: the next one is signed by the new one.
    assert_eq!(signer_of(&post(&a, &req).await.1), renewed);
    assert_eq!(signer_of(&post(&b, &req).await.1), renewed);
    // A server started now loads the renewed certificate as is.
    assert_eq!(load().ocsp.current().0.responder_certificate(), &renewed);
}

/// The leaf certificate a TLS server at `addr` presents to a client trusting `root`.
async fn presented_leaf(addr: std::net::SocketAddr, root: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_renews_its_own_tls_certificate_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    // Set up 70 days ago, so that the renewal falls on today (the client checks with real time).
    let start = SystemClock.now() - time::Duration::days(70);
    let load = || Pki::load(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, start).unwrap();
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, start).unwrap();
    let (a, b) = (load(), load());
    let names = vec!["localhost".to_owned()];
    let first = a.tls_identity(&ca, &names, &[], start).unwrap();
    let (config, cert) =
        lanyard_server::tls::server_config_reloadable(&first.chain, &first.pkcs8_key).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = lanyard_server::tls::TlsListener::new(tcp, config).unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let root = a.root.certificate_der().to_vec();
    assert_eq!(presented_leaf(addr, &root).await, first.chain[0]);

    // Early: the same certificate. Past two thirds of 90 days: renewed, same key.
    assert_eq!(
        a.tls_identity(&ca, &names, &[], start + time::Duration::days(10)).unwrap().chain,
        first.chain
    );
    let later = start + time::Duration::days(70);
    let renewed = a.tls_identity(&ca, &names, &[], later).unwrap();
    assert_ne!(renewed.chain[0], first.chain[0]);
    assert_eq!(&renewed.pkcs8_key[..], &first.pkcs8_key[..], "the same key");
    // Another server sharing the directory gets that certificate instead of issuing its own.
    assert_eq!(b.tls_identity(&ca, &names, &[], later).unwrap().chain, renewed.chain);
    // Swapped in: the next handshake presents it, without a restart.
    cert.replace(&renewed.chain, &renewed.pkcs8_key).unwrap();
    assert_eq!(cert.leaf(), renewed.chain[0]);
    assert_eq!(presented_leaf(addr, &root).await, renewed.chain[0]);
    server.abort();
}

/// The CRL the server builds from the store (four columns a row, written straight as DER) lists
/// exactly what the reference path makes of the same certificates: every record
/// `for_each_listed` returns, mapped by `lanyard_issuance::status` and encoded through
/// `x509-cert`'s types. The population covers every state, every revocation reason (and none),
/// revocation dates before and after 2050 (UTCTime, GeneralizedTime) with fractions of a
/// second, a revocation without a recorded time, and serials with the top bit set.
async fn crl_matches_the_reference_builder(postgres: bool) {
    use lanyard_core::lifecycle::CredentialState;
    use time::macros::datetime;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, BASE, SystemClock.now()).unwrap();
    let url = database(d, postgres).await;
    let s = server(&url, &ca, 0).await;
    let now = SystemClock.now();
    let device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    let dates = [
        datetime!(2031-02-03 04:05:06.789 UTC),
        datetime!(2049-12-31 23:59:59.999 UTC),
        datetime!(2050-01-01 00:00:00 UTC),
        datetime!(2107-08-09 10:11:12.5 UTC),
    ];
    let reasons = [
        None,
        Some(RevocationReason::Unspecified),
        Some(RevocationReason::KeyCompromise),
        Some(RevocationReason::AffiliationChanged),
        Some(RevocationReason::Superseded),
        Some(RevocationReason::CessationOfOperation),
        Some(RevocationReason::PrivilegeWithdrawn),
        Some(RevocationReason::Lost),
        Some(RevocationReason::Stolen),
        Some(RevocationReason::Damaged),
        Some(RevocationReason::ParentRevoked),
    ];
    let states = [
        CredentialState::Revoked,
        CredentialState::OnHold,
        CredentialState::Superseded,
        CredentialState::Pending,
        CredentialState::Active,
        CredentialState::Expired,
    ];
    let mut tx = s.repo.begin().await.unwrap();
    tx.insert_device(&device).await.unwrap();
    let mut i = 0u32;
    let mut listed = 0usize;
    for state in states {
        for reason in reasons {
            for (k, date) in dates.iter().enumerate() {
                i += 1;
                // Half the serials have the top bit set (their DER INTEGER takes a zero octet).
                let top = if i.is_multiple_of(2) { 0x80 | (i % 0x7f) } else { i % 0x7f + 1 };
                let mut c = Credential::new(
                    device.id,
                    CredentialKind::Certificate {
                        slot: CertSlot::PivAuthentication,
                        profile: "piv-authentication".into(),
                        serial_hex: format!("{top:02x}{i:030x}"),
                        not_before: *date,
                        not_after: *date + time::Duration::days(30),
                        certificate_der: vec![0x30, 0x00],
                        attestation_der: None,
                    },
                    *date,
                );
                c.state = state;
                c.revocation_reason = reason;
                // One revocation in four without a recorded time: its entry takes updated_at.
                c.revoked_at = (k != 3).then_some(*date + time::Duration::hours(1));
                c.updated_at = *date + time::Duration::days(2);
                tx.insert_credential(&c).await.unwrap();
                listed += usize::from(!matches!(state, CredentialState::Active | CredentialState::Expired));
            }
        }
    }
    tx.commit().await.unwrap();

    let (code, _, fast) = get(&s, "/pki/crl", None).await;
    assert_eq!(code, 200);
    let mut records = Vec::new();
    let mut tx = s.repo.read().await.unwrap();
    tx.for_each_listed(|r| {
        records.push(r);
        Ok(())
    })
    .await
    .unwrap();
    drop(tx);
    let entries: Vec<lanyard_ca::RevokedEntry> = records
        .iter()
        .map(|r| lanyard_ca::RevokedEntry {
            serial: lanyard_ca::SerialNumber::new(&hex::decode(&r.serial_hex).unwrap()).unwrap(),
            revocation_date: lanyard_issuance::status::record_revocation_date(r),
            reason: lanyard_issuance::status::record_crl_reason(r),
        })
        .collect();
    let params =
        lanyard_ca::CrlParams { number: 1, this_update: now, next_update: now + time::Duration::days(1) };
    let reference = s.pki.issuing.build_crl(&entries, &params).unwrap();
    let list = |der: &[u8]| {
        let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
        let mut v: Vec<Vec<u8>> = crl
            .tbs_cert_list
            .revoked_certificates
            .unwrap_or_default()
            .iter()
            .map(|e| der::Encode::to_der(e).unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&fast).len(), listed);
    assert_eq!(list(&fast), list(&reference));
    // Both sides of 2050 are in it, and every reason code the store maps to.
    let text = {
        let path = d.join("crl.der");
        std::fs::write(&path, &fast).unwrap();
        let chain = write_chain(&s.pki, d);
        openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            path.to_str().unwrap(),
            "-CAfile",
            chain.to_str().unwrap(),
            "-verify",
            "-noout",
            "-text",
        ])
    };
    assert!(text.contains("verify OK"), "{text}");
    for needle in [
        "Dec 31 23:59:59 2049 GMT",
        "Jan  1 00:00:00 2050 GMT",
        "Key Compromise",
        "Affiliation Changed",
        "Superseded",
        "Cessation Of Operation",
        "Privilege Withdrawn",
        "Certificate Hold",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_matches_the_reference_builder_on_sqlite() {
    crl_matches_the_reference_builder(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_matches_the_reference_builder_on_postgres() {
    crl_matches_the_reference_builder(true).await;
}
