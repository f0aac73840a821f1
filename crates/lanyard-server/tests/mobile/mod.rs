//! The app enrolment protocol (`/api/v1/mobile/*`, `GET /m/{code}`) in process: every step,
//! every refusal (which changes nothing), key attestations against test roots, the throttle per
//! source address, and the issued certificates judged by openssl and pkilint.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lanyard_ca::mobile_attestation::{apple_client_data_hash, enrolment_challenge, fixtures};
use lanyard_ca::{CaSigner, KeyAlgorithm, SoftwareKey};
use lanyard_core::audit::{AuditEvent, OperationId};
use lanyard_core::authz::Principal;
use lanyard_core::clock::{Clock, ManualClock};
use lanyard_core::ids::{DeviceId, GroupId};
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::{
    CertSlot, CredentialKind, DeviceKind, EnrollmentPurpose, Group, KeyAlgorithm as PolicyAlgorithm,
    LinkKind, Policy, Role, Session, User, Username,
};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, CredentialQuery, DeviceQuery, Repo};
use lanyard_core::secrets::TokenHash;
use lanyard_server::api::mobile::{MobileConfig, enrollment_status};
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use lanyard_testkit::tools::{openssl, pkilint, write_pem};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use time::Duration;
use tower::ServiceExt;

const APP_ID: &str = "ABCDE12345.org.example.lanyard";

struct Mobile {
    dir: tempfile::TempDir,
    db: Arc<Db>,
    clock: Arc<ManualClock>,
    state: AppState<Db>,
    alice: User,
    bob: User,
    group: Group,
    /// Alice's Active card, the sponsor of sponsored codes.
    alice_card: DeviceId,
    android_root: Vec<u8>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or_else(|| panic!("no reason in {}", self.body))
    }
}

/// The policy the tests start from: derived credentials on, no sponsor step.
fn policy() -> Policy {
    Policy { derived_piv_requires_sponsor: false, ..Policy::default() }
}

async fn setup() -> Mobile {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let clock = Arc::new(ManualClock::default());
    let now = clock.now();
    let pki =
        Pki::create(&dir.path().join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, "http://127.0.0.1", now)
            .unwrap();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy: policy() };
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&group).await.unwrap();
    let mut user = async |name: &str, display: &str| {
        let mut u = User::new(Username::parse(name).unwrap(), display, group.id, now).unwrap();
        u.roles = BTreeSet::from([Role::User]);
        tx.insert_user(&u).await.unwrap();
        u
    };
    let alice = user("alice", "Alice Example").await;
    let bob = user("bob", "Bob Example").await;
    let mut card =
        lanyard_core::model::Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    card.owner = Some(alice.id);
    card.state = DeviceState::Active;
    tx.insert_device(&card).await.unwrap();
    tx.commit().await.unwrap();
    // One Android root for every chain the tests make; a fresh Apple root per object.
    let android_root = fixtures::TestCa::root("CN=Test Android Root", KeyAlgorithm::Rsa2048, now);
    let db = Arc::new(db);
    let state = AppState::new(Arc::clone(&db), Arc::new(pki), Arc::clone(&clock) as Arc<dyn Clock>)
        .with_public_url("https://lanyard.example.org")
        .with_mobile(MobileConfig {
            android_roots: vec![android_root.der.clone()],
            apple_roots: vec![],
            apple_app_ids: vec![APP_ID.into()],
        });
    let android_root_der = android_root.der.clone();
    ANDROID_ROOT.with(|r| *r.borrow_mut() = Some(android_root));
    Mobile { dir, db, clock, state, alice, bob, group, alice_card: card.id, android_root: android_root_der }
}

thread_local! {
    /// The Android test root of the current test (its key signs the batch intermediates).
    static ANDROID_ROOT: std::cell::RefCell<Option<fixtures::TestCa>> = const { std::cell::RefCell::new(None) };
}

/// An Android-shaped chain (leaf, batch, root) for `spki` under the test's Android root.
fn android_chain(spki: &[u8], level: u8, challenge: &[u8], now: time::OffsetDateTime) -> Vec<Vec<u8>> {
    ANDROID_ROOT.with(|r| {
        let r = r.borrow();
        let root = r.as_ref().unwrap();
        let batch = root.intermediate("CN=Test Batch", now);
        let leaf = batch.leaf(
            der::Decode::from_der(spki).unwrap(),
            vec![fixtures::android_extension(fixtures::key_description(level, level, challenge, Some(0)))],
            now,
        );
        vec![leaf, batch.der.clone(), root.der.clone()]
    })
}

impl Mobile {
    async fn send_from(&self, from: Option<&str>, method: &str, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let mut req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        if let Some(addr) = from {
            req.extensions_mut().insert(ConnectInfo(addr.parse::<SocketAddr>().unwrap()));
        }
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send_from(Some("192.0.2.10:50000"), "POST", path, Some(body)).await
    }

    /// A derived-PIV code for `user` (no sponsor unless `sponsor`), bound to `session` if given.
    async fn code(&self, user: &User, sponsor: Option<DeviceId>, session: Option<TokenHash>) -> String {
        self.code_for(user, EnrollmentPurpose::DerivedPiv { sponsor, external_sponsor: None }, session).await
    }

    async fn code_for(&self, user: &User, purpose: EnrollmentPurpose, session: Option<TokenHash>) -> String {
        let p = Principal::new(user.clone(), OperationId::random(), self.clock.now()).unwrap();
        let (_, secret) = p
            .self_service()
            .unwrap()
            .start_mobile_enrollment(self.db.as_ref(), purpose, Duration::minutes(10), session)
            .await
            .unwrap();
        secret.expose_secret().to_owned()
    }

    async fn redeem(&self, code: &str) -> Reply {
        self.post("/api/v1/mobile/redeem", json!({"code": code, "platform": "android", "model": "Pixel 8"}))
            .await
    }

    async fn submit(&self, code: &str, csr: &[u8], attestation: Option<Value>) -> Reply {
        let mut body = json!({"code": code, "csr": B64.encode(csr)});
        if let Some(a) = attestation {
            body["attestation"] = a;
        }
        self.post("/api/v1/mobile/certificate", body).await
    }

    async fn audit(&self) -> Vec<AuditEvent> {
        let mut tx = self.db.read().await.unwrap();
        tx.list_audit(&AuditQuery { limit: 10_000, ..Default::default() }).await.unwrap()
    }

    async fn mobiles(&self, user: &User) -> Vec<lanyard_core::model::Device> {
        let mut tx = self.db.read().await.unwrap();
        let q = DeviceQuery {
            owner: Some(user.id),
            kind: Some(DeviceKind::Mobile),
            limit: 100,
            ..Default::default()
        };
        tx.list_devices(&q).await.unwrap()
    }

    async fn credentials(&self, device: DeviceId) -> Vec<lanyard_core::model::Credential> {
        let mut tx = self.db.read().await.unwrap();
        tx.list_credentials(&CredentialQuery { device: Some(device), limit: 100, ..Default::default() })
            .await
            .unwrap()
    }

    /// A snapshot of what a refusal must not change: devices, credentials, codes' state, audit.
    async fn snapshot(&self) -> (usize, Vec<String>, usize) {
        let mut tx = self.db.read().await.unwrap();
        let devices = tx.list_devices(&DeviceQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let creds =
            tx.list_credentials(&CredentialQuery { limit: 1000, ..Default::default() }).await.unwrap();
        drop(tx);
        let states = devices.iter().map(|d| format!("{} {}", d.id, d.state)).collect();
        (creds.len(), states, self.audit().await.len())
    }

    fn write(&self, name: &str, der: &[u8]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        write_pem(&path, "CERTIFICATE", der);
        path
    }

    /// openssl verifies the certificate up to Lanyard's root; answers its text form.
    fn verify_and_lint(&self, reply: &Reply) -> String {
        let cert = B64.decode(reply.body["certificate"].as_str().unwrap()).unwrap();
        let chain: Vec<Vec<u8>> = reply.body["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| B64.decode(c.as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(chain[1], self.state.pki.root.certificate_der());
        let leaf = self.write("leaf.pem", &cert);
        let issuing = self.write("issuing.pem", &chain[0]);
        let root = self.write("root.pem", &chain[1]);
        let at = self.clock.now().unix_timestamp().to_string();
        let verdict = openssl(&[
            "verify",
            "-attime",
            &at,
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            issuing.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(verdict.contains(": OK"), "{verdict}");
        pkilint::assert_cert(&leaf);
        pkilint::assert_pair(&issuing, &leaf);
        // The PEM answer holds the same three certificates.
        assert_eq!(reply.body["pem"].as_str().unwrap().matches("BEGIN CERTIFICATE").count(), 3);
        openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"])
    }
}

fn csr(key: &SoftwareKey) -> Vec<u8> {
    lanyard_ca::build_csr(key, lanyard_ca::parse_dn("CN=ignored by the CA").unwrap(), vec![], None).unwrap()
}

fn spki(key: &SoftwareKey) -> Vec<u8> {
    der::Encode::to_der(&key.public_key()).unwrap()
}

#[tokio::test]
async fn a_derived_code_enrols_a_software_key_at_aal2_and_the_app_confirms_once() {
    let m = setup().await;
    let code = m.code(&m.alice, Some(m.alice_card), None).await;

    // A browser opening the link sees a page and uses nothing up.
    let page = m.send_from(None, "GET", &format!("/m/{code}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.body.as_str().unwrap();
    assert!(html.contains(&format!("lanyard mobile enroll https://lanyard.example.org/m/{code}")), "{html}");
    assert!(page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
    assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(m.send_from(None, "GET", "/m/not%20a%20code", None).await.status, StatusCode::NOT_FOUND);
    let status = m.post("/api/v1/mobile/status", json!({"code": code})).await;
    assert_eq!(status.body["state"], "issued", "{}", status.body);

    let r = m.redeem(&code).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["protocol"], 1);
    assert_eq!(r.body["key"]["algorithm"], "p-256");
    assert_eq!(r.body["certificate"]["subject"], "CN=Alice Example");
    assert_eq!(r.body["holder"], "Alice Example");
    assert_eq!(r.body["attestation"]["formats"], json!(["android-key"]), "Apple has no roots here");
    assert_eq!(r.body["attestation"]["required"], false);
    let enrolment = r.body["enrollment_id"].as_str().unwrap();
    assert_eq!(
        B64.decode(r.body["attestation"]["challenge"].as_str().unwrap()).unwrap(),
        enrolment_challenge(enrolment)
    );
    let device: DeviceId = r.body["device_id"].as_str().unwrap().parse().unwrap();
    let mobile = &m.mobiles(&m.alice).await[0];
    assert_eq!(
        (mobile.id, mobile.state, mobile.model.as_str()),
        (device, DeviceState::Enrolling, "Pixel 8 (Android)")
    );
    assert_eq!(mobile.links[0].kind, LinkKind::DerivedFrom);
    assert_eq!(mobile.links[0].target, m.alice_card);
    assert_eq!(m.post("/api/v1/mobile/status", json!({"code": code})).await.body["state"], "redeemed");

    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let c = m.submit(&code, &csr(&key), None).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    assert_eq!(
        (c.body["assurance"].as_str(), c.body["profile"].as_str()),
        (Some("aal2"), Some("derived-piv-auth"))
    );
    assert_eq!(c.body["attestation"], Value::Null);
    let text = m.verify_and_lint(&c);
    assert!(text.contains("2.16.840.1.101.3.2.1.3.40"), "{text}");
    assert!(!text.contains("2.16.840.1.101.3.2.1.3.41"), "{text}");
    assert!(
        text.contains("Subject: CN=Alice Example") || text.contains("Subject: CN = Alice Example"),
        "{text}"
    );

    let mobile = &m.mobiles(&m.alice).await[0];
    assert_eq!(mobile.state, DeviceState::Active);
    let creds = m.credentials(device).await;
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].state, CredentialState::Active);
    let CredentialKind::Certificate { slot, certificate_der, attestation_der, .. } = &creds[0].kind;
    assert_eq!((*slot, attestation_der), (CertSlot::DerivedPivAuthentication, &None));
    assert_eq!(certificate_der, &B64.decode(c.body["certificate"].as_str().unwrap()).unwrap());

    // Completed: the code neither redeems nor submits again.
    assert_eq!(m.redeem(&code).await.reason(), "code_used");
    assert_eq!(m.submit(&code, &csr(&key), None).await.reason(), "not_in_progress");

    // The portal's view of the enrolment: the holder's, never another user's.
    let hash = TokenHash::of(&code);
    let seen = enrollment_status(m.db.as_ref(), m.alice.id, &hash, m.clock.now()).await.unwrap().unwrap();
    assert_eq!((seen.state, seen.installed), (lanyard_protocol::mobile::EnrollmentState::Completed, false));
    assert_eq!(enrollment_status(m.db.as_ref(), m.bob.id, &hash, m.clock.now()).await.unwrap(), None);

    let first = m.post("/api/v1/mobile/confirm", json!({"code": code})).await;
    assert_eq!(
        (first.status, &first.body["already_confirmed"]),
        (StatusCode::OK, &json!(false)),
        "{}",
        first.body
    );
    let again = m.post("/api/v1/mobile/confirm", json!({"code": code})).await;
    assert_eq!(again.body["already_confirmed"], true);
    let installs = m.audit().await.iter().filter(|e| e.action == "mobile.installed").count();
    assert_eq!(installs, 1);
    let actions: Vec<String> = m.audit().await.into_iter().map(|e| e.action).collect();
    for wanted in ["enrollment_code.redeem", "device.register", "notification.credential_issued"] {
        assert!(actions.iter().any(|a| a == wanted), "{wanted} not in {actions:?}");
    }
    assert!(m.post("/api/v1/mobile/status", json!({"code": code})).await.body["installed"] == true);
}

#[tokio::test]
async fn only_a_verified_hardware_attestation_earns_the_aal3_profile() {
    let m = setup().await;
    let now = m.clock.now();

    // StrongBox key, attested for this enrolment: AAL3, the leaf kept with the credential.
    let code = m.code(&m.alice, None, None).await;
    let r = m.redeem(&code).await;
    let challenge = B64.decode(r.body["attestation"]["challenge"].as_str().unwrap()).unwrap();
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let chain = android_chain(&spki(&key), 2, &challenge, now);
    let attestation = json!({"format": "android-key", "certificate_chain": chain.iter().map(|c| B64.encode(c)).collect::<Vec<_>>()});
    let c = m.submit(&code, &csr(&key), Some(attestation)).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    assert_eq!(
        (c.body["assurance"].as_str(), c.body["profile"].as_str()),
        (Some("aal3"), Some("derived-piv-auth-hardware"))
    );
    assert_eq!(c.body["attestation"]["security_level"], "strong_box");
    assert_eq!(c.body["attestation"]["root_subject"], "CN=Test Android Root");
    let text = m.verify_and_lint(&c);
    assert!(text.contains("2.16.840.1.101.3.2.1.3.41"), "{text}");
    let device: DeviceId = r.body["device_id"].as_str().unwrap().parse().unwrap();
    let CredentialKind::Certificate { attestation_der, .. } = &m.credentials(device).await[0].kind;
    assert_eq!(attestation_der.as_ref(), Some(&chain[0]));
    let verified = m.audit().await.into_iter().find(|e| e.action == "mobile.attestation_verified").unwrap();
    assert_eq!(verified.after.as_ref().unwrap()["hardware"], true);

    // A software-level Android attestation verifies but proves no hardware: AAL2.
    let code = m.code(&m.alice, None, None).await;
    let r = m.redeem(&code).await;
    let challenge = B64.decode(r.body["attestation"]["challenge"].as_str().unwrap()).unwrap();
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let chain = android_chain(&spki(&key), 0, &challenge, now);
    let attestation = json!({"format": "android-key", "certificate_chain": chain.iter().map(|c| B64.encode(c)).collect::<Vec<_>>()});
    let c = m.submit(&code, &csr(&key), Some(attestation)).await;
    assert_eq!((c.status, c.body["assurance"].as_str()), (StatusCode::CREATED, Some("aal2")), "{}", c.body);
    let text = m.verify_and_lint(&c);
    assert!(
        text.contains("2.16.840.1.101.3.2.1.3.40") && !text.contains("2.16.840.1.101.3.2.1.3.41"),
        "{text}"
    );

    // Apple App Attest binds a genuine app to the CSR key but not the key to hardware: AAL2.
    let code = m.code(&m.alice, None, None).await;
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let hash_for = |challenge: &[u8]| apple_client_data_hash(challenge, &spki(&key));
    // The Apple root is made with the object; configure it on a copy of the state.
    let r = m.redeem(&code).await;
    let challenge = B64.decode(r.body["attestation"]["challenge"].as_str().unwrap()).unwrap();
    let (object, key_id, apple_root) = fixtures::apple_object(APP_ID, &hash_for(&challenge), 0, now);
    let apple = Mobile {
        state: m.state.clone().with_mobile(MobileConfig {
            android_roots: vec![m.android_root.clone()],
            apple_roots: vec![apple_root],
            apple_app_ids: vec![APP_ID.into()],
        }),
        ..m
    };
    let attestation = json!({"format": "apple-appattest", "key_id": B64.encode(&key_id), "attestation_object": B64.encode(&object)});
    let c = apple.submit(&code, &csr(&key), Some(attestation)).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    assert_eq!(
        (c.body["assurance"].as_str(), &c.body["attestation"]["format"]),
        (Some("aal2"), &json!("apple-appattest"))
    );
    assert_eq!(c.body["attestation"]["hardware"], false);
}

#[tokio::test]
async fn every_refusal_is_precise_and_changes_nothing() {
    let m = setup().await;
    let now = m.clock.now();
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let code = m.code(&m.alice, None, None).await;

    let unchanged =
        async |reply: Reply, status: StatusCode, reason: &str, before: &(usize, Vec<String>, usize)| {
            assert_eq!((reply.status, reply.reason()), (status, reason), "{}", reply.body);
            assert!(reply.body["error"].as_str().is_some_and(|e| !e.is_empty()));
            assert!(reply.body["operation_id"].is_string());
            assert_eq!(&m.snapshot().await, before, "the refusal {reason} changed something");
        };

    let before = m.snapshot().await;
    unchanged(m.redeem("0123456789abcdef").await, StatusCode::NOT_FOUND, "unknown_code", &before).await;
    let bad = m.post("/api/v1/mobile/redeem", json!({"code": code, "platform": "android"})).await;
    unchanged(bad, StatusCode::BAD_REQUEST, "bad_request", &before).await;
    let bad = m
        .post(
            "/api/v1/mobile/redeem",
            json!({"code": code, "platform": "android", "model": "x", "user": "bob"}),
        )
        .await;
    unchanged(bad, StatusCode::BAD_REQUEST, "bad_request", &before).await;
    // The CSR before the code was redeemed.
    unchanged(m.submit(&code, &csr(&key), None).await, StatusCode::CONFLICT, "not_in_progress", &before)
        .await;
    // A profile code is not for the app.
    let profile_code = m.code_for(&m.alice, EnrollmentPurpose::MobileProfile, None).await;
    let before = m.snapshot().await;
    unchanged(m.redeem(&profile_code).await, StatusCode::CONFLICT, "wrong_kind", &before).await;

    assert_eq!(m.redeem(&code).await.status, StatusCode::OK);
    let before = m.snapshot().await;
    unchanged(m.redeem(&code).await, StatusCode::GONE, "code_used", &before).await;
    // A key of the wrong algorithm (the policy says P-256).
    let rsa = SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    unchanged(
        m.submit(&code, &csr(&rsa), None).await,
        StatusCode::BAD_REQUEST,
        "wrong_key_algorithm",
        &before,
    )
    .await;
    // A CSR whose signature does not verify, and one that is not a CSR.
    let mut forged = csr(&key);
    let n = forged.len();
    forged[n - 5] ^= 0x40;
    unchanged(m.submit(&code, &forged, None).await, StatusCode::BAD_REQUEST, "bad_csr", &before).await;
    unchanged(m.submit(&code, b"not a csr", None).await, StatusCode::BAD_REQUEST, "bad_csr", &before).await;
    // An attestation for another enrolment's challenge, and one for another key.
    let wrong_challenge = android_chain(&spki(&key), 2, &enrolment_challenge("another"), now);
    let a = json!({"format": "android-key", "certificate_chain": wrong_challenge.iter().map(|c| B64.encode(c)).collect::<Vec<_>>()});
    let r = m.submit(&code, &csr(&key), Some(a)).await;
    assert!(r.body["error"].as_str().unwrap().contains("challenge"), "{}", r.body);
    unchanged(r, StatusCode::BAD_REQUEST, "attestation_rejected", &before).await;
    // A format without configured roots.
    let a =
        json!({"format": "apple-appattest", "key_id": B64.encode([0u8; 32]), "attestation_object": "oA=="});
    unchanged(
        m.submit(&code, &csr(&key), Some(a)).await,
        StatusCode::BAD_REQUEST,
        "attestation_not_accepted",
        &before,
    )
    .await;
    // Expired: past the code's ten minutes nothing completes.
    m.clock.advance(Duration::minutes(11));
    unchanged(m.submit(&code, &csr(&key), None).await, StatusCode::GONE, "code_expired", &before).await;
    let fresh = m.code(&m.alice, None, None).await;
    m.clock.advance(Duration::minutes(11));
    let before = m.snapshot().await;
    unchanged(m.redeem(&fresh).await, StatusCode::GONE, "code_expired", &before).await;
    assert_eq!(m.post("/api/v1/mobile/status", json!({"code": fresh})).await.body["state"], "expired");

    // A code whose portal session ended.
    let (session, _) = Session::start(m.alice.id, Duration::hours(8), m.clock.now()).unwrap();
    let hash = session.token_hash;
    let mut tx = m.db.begin().await.unwrap();
    tx.insert_session(&session).await.unwrap();
    tx.commit().await.unwrap();
    let bound = m.code(&m.alice, None, Some(hash)).await;
    let mut tx = m.db.begin().await.unwrap();
    tx.delete_session(&hash).await.unwrap();
    tx.commit().await.unwrap();
    let before = m.snapshot().await;
    unchanged(m.redeem(&bound).await, StatusCode::GONE, "session_ended", &before).await;

    // The policy turned derived credentials off after the code was made.
    let late = m.code(&m.alice, None, None).await;
    let mut tx = m.db.begin().await.unwrap();
    let mut g = m.group.clone();
    g.policy.may_add_derived_piv = false;
    tx.update_group(&g).await.unwrap();
    tx.commit().await.unwrap();
    let before = m.snapshot().await;
    unchanged(m.redeem(&late).await, StatusCode::FORBIDDEN, "policy_denied", &before).await;
    // Confirming what never completed.
    unchanged(
        m.post("/api/v1/mobile/confirm", json!({"code": late})).await,
        StatusCode::CONFLICT,
        "not_completed",
        &before,
    )
    .await;
}

#[tokio::test]
async fn a_code_yields_its_own_holders_credential_and_the_policy_algorithm() {
    let m = setup().await;
    // Bob's group asks for RSA-2048 derived keys.
    let mut tx = m.db.begin().await.unwrap();
    let mut p = policy();
    if let Some(slot) = p.certificates.get_mut(&CertSlot::DerivedPivAuthentication) {
        slot.algorithm = PolicyAlgorithm::Rsa2048;
    }
    let rsa_group = Group { id: GroupId::new(), name: "rsa".into(), policy: p };
    tx.insert_group(&rsa_group).await.unwrap();
    let mut bob = m.bob.clone();
    bob.group = rsa_group.id;
    tx.update_user(&bob).await.unwrap();
    tx.commit().await.unwrap();

    let alice_code = m.code(&m.alice, None, None).await;
    let bob_code = m.code(&bob, None, None).await;
    // Bob presents Alice's code: whoever presents it, it is Alice's credential.
    let r = m.redeem(&alice_code).await;
    assert_eq!(
        (r.body["holder"].as_str(), r.body["key"]["algorithm"].as_str()),
        (Some("Alice Example"), Some("p-256"))
    );
    let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let c = m.submit(&alice_code, &csr(&key), None).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    assert!(m.verify_and_lint(&c).contains("Alice Example"));
    assert_eq!(m.mobiles(&m.alice).await.len(), 1);
    assert!(m.mobiles(&bob).await.is_empty(), "nothing of Alice's code lands on Bob's account");

    let r = m.redeem(&bob_code).await;
    assert_eq!(
        (r.body["holder"].as_str(), r.body["key"]["algorithm"].as_str()),
        (Some("Bob Example"), Some("rsa-2048"))
    );
    let wrong = m.submit(&bob_code, &csr(&key), None).await;
    assert_eq!(wrong.reason(), "wrong_key_algorithm");
    let rsa = SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let c = m.submit(&bob_code, &csr(&rsa), None).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let text = m.verify_and_lint(&c);
    assert!(text.contains("Bob Example") && text.contains("rsaEncryption"), "{text}");
    assert_eq!(m.mobiles(&bob).await.len(), 1);
    assert_eq!(m.mobiles(&m.alice).await.len(), 1);
}

#[tokio::test]
async fn an_address_with_ten_refused_codes_waits_and_others_do_not() {
    let m = setup().await;
    let code = m.code(&m.alice, None, None).await;
    let from = |addr: &'static str, code: String| {
        let m = &m;
        async move {
            m.send_from(
                Some(addr),
                "POST",
                "/api/v1/mobile/redeem",
                Some(json!({"code": code, "platform": "ios", "model": "iPhone"})),
            )
            .await
        }
    };
    // A bad body is no guess and does not count: ten wrong codes after it are still looked up.
    assert_eq!(from("198.51.100.7:1000", "not/a/code".into()).await.status, StatusCode::BAD_REQUEST);
    for i in 0..10 {
        assert_eq!(from("198.51.100.7:1000", format!("wrong{i}")).await.status, StatusCode::NOT_FOUND);
    }
    // The next request from that address is refused before its code is looked at.
    let r = from("198.51.100.7:1000", code.clone()).await;
    assert_eq!((r.status, r.reason()), (StatusCode::TOO_MANY_REQUESTS, "too_many_failures"));
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    assert!(m.mobiles(&m.alice).await.is_empty(), "the throttled request redeemed nothing");
    // Another address is not affected; after the window the first may try again.
    let ok = from("203.0.113.9:2000", code.clone()).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    m.clock.advance(Duration::minutes(16));
    assert_eq!(from("198.51.100.7:1000", "wrong".into()).await.status, StatusCode::NOT_FOUND);
}
