//! *Add Identity Device* → derived PIV credential in the portal, in process: the real server,
//! the real linked agent, a software card issued to alice through *Add Device*, which then
//! sponsors the enrolment: its PIN typed in the page is verified on the card, its certificate
//! checked, a challenge signed, and the one-time code shown as a QR code and a link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::ids::{DeviceId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::JobState;
use lanyard_testkit::card::VCard;
use lanyard_testkit::db::Backend;
use lanyard_testkit::link::{HANG_GUARD, LinkedAgent};
use lanyard_testkit::{Caller, SoftWorkstation, TestServer};
use support::{Browser, Page, form, page, sign_in, start_issuing, wait_for_pin_form};

const READER: &str = "Soft reader 00 00";
const PIN: &str = "975319";
const WRONG_PIN: &str = "202413";

struct Rig {
    server: TestServer,
    alice: Browser,
    bob: Browser,
    _agent: LinkedAgent,
    /// Alice's workstation, whose reader holds her card.
    ws: Arc<SoftWorkstation>,
    device: DeviceId,
}

/// Pairs an agent for `who` on a workstation of its own with a fresh card in [`READER`], and
/// issues the card to them through the portal's *Add Device* with [`PIN`].
async fn issue_card(
    server: &TestServer,
    who: &Caller,
    browser: &Browser,
    host: &str,
) -> (LinkedAgent, Arc<SoftWorkstation>, DeviceId) {
    let (id, credential) = server.pair_agent(who, host).await;
    let ws = SoftWorkstation::new();
    ws.insert(READER, server.plug_card());
    let agent = server.run_linked_agent(id, &credential, ws.clone(), None);
    server.wait_for_agent(who, id, |a| a["readers"][0]["card"]["verdict"] == "compatible").await;
    let job = start_issuing(server, browser, READER).await;
    wait_for_pin_form(server, browser, job).await;
    let fields = [("action", "set"), ("new_pin", PIN), ("confirm_pin", PIN)];
    let set = page(
        server,
        "POST",
        &format!("/portal/jobs/{job}/pin"),
        Some(browser),
        Some(&form(browser, &fields)),
    )
    .await;
    assert_eq!(set.status, StatusCode::SEE_OTHER, "{}", set.text);
    let device = server.job(job).await.device;
    assert_eq!(server.device(device).await.state, DeviceState::Active);
    server
        .wait_for_agent(who, id, |a| {
            a["readers"][0]["card"]["verdict"] == "already_issued"
                && a["readers"][0]["card"]["busy"].is_null()
        })
        .await;
    (agent, ws, device)
}

async fn rig(backend: Backend) -> Rig {
    rig_with(TestServer::start(backend).await).await
}

async fn rig_with(server: TestServer) -> Rig {
    let alice = sign_in(&server, &server.alice).await;
    let bob = sign_in(&server, &server.bob).await;
    let (agent, ws, device) = issue_card(&server, &server.alice, &alice, "alice-ws").await;
    Rig { server, alice, bob, _agent: agent, ws, device }
}

impl Rig {
    async fn get(&self, path: &str, who: &Browser) -> Page {
        page(&self.server, "GET", path, Some(who), None).await
    }

    async fn post(&self, path: &str, who: &Browser, fields: &[(&str, &str)]) -> Page {
        page(&self.server, "POST", path, Some(who), Some(&form(who, fields))).await
    }

    /// **Continue** on the pre-enrolment page: the sponsor proof's id.
    async fn continue_(&self) -> JobId {
        let started = self.post("/portal/identities/derived/start", &self.alice, &[]).await;
        assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
        let location = started.location.unwrap();
        location.strip_prefix("/portal/identities/derived/").unwrap().parse().unwrap()
    }

    /// The session's page once it asks for the PIN, or has ended.
    async fn settled(&self, job: JobId) -> Page {
        let path = format!("/portal/identities/derived/{job}");
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let p = self.get(&path, &self.alice).await;
                assert_eq!(p.status, StatusCode::OK, "{}", p.text);
                if !p.text.contains("Checking your card") {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the session moves on")
    }

    /// Takes alice's card out of her reader and puts `card` in.
    async fn swap_card(&self, card: VCard) -> VCard {
        let own = self.ws.remove(READER).expect("alice's card is in the reader");
        self.ws.insert(READER, card);
        self.card_idle().await;
        own
    }

    /// The session's page after the holder typed `pin`.
    async fn type_pin(&self, job: JobId, pin: &str) -> Page {
        let typed =
            self.post(&format!("/portal/identities/derived/{job}/pin"), &self.alice, &[("pin", pin)]).await;
        assert_eq!(typed.status, StatusCode::SEE_OTHER, "{}", typed.text);
        self.settled(job).await
    }

    /// The audit log, as the administrator reads it.
    async fn audit(&self) -> serde_json::Value {
        self.server.get(&self.server.admin, "/api/v1/audit?limit=1000").await
    }

    /// Waits until the agent has reported the card idle again.
    async fn card_idle(&self) {
        let agents = self.server.get(&self.server.alice, "/api/v1/agents").await;
        let id = agents[0]["id"].as_str().unwrap().parse().unwrap();
        self.server
            .wait_for_agent(&self.server.alice, id, |a| a["readers"][0]["card"]["busy"].is_null())
            .await;
    }
}

/// The whole flow: the pre-enrolment page; a wrong PIN costs a try, is shown with the tries
/// left and gives nothing; the right PIN verifies the card, and **Show the enrolment code**
/// gives the QR code and link once. Bob sees none of alice's pages. A revoked card is refused
/// with the reason before any PIN is asked, and audited.
async fn derived_piv(backend: Backend) {
    let r = rig(backend).await;
    let start = r.get("/portal/identities/derived", &r.alice).await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text);
    assert!(
        start.text.contains("Your PIV card in a reader")
            && start.text.contains("lanyard mobile enroll")
            && start.text.contains(">Continue</button>"),
        "{}",
        start.text
    );
    let devices = r.get("/portal/devices", &r.alice).await;
    assert!(devices.text.contains("href=\"/portal/identities/derived\""), "{}", devices.text);
    let no_token =
        page(&r.server, "POST", "/portal/identities/derived/start", Some(&r.alice), Some("x=1")).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);

    // A wrong PIN.
    let job = r.continue_().await;
    let asking = r.settled(job).await;
    assert!(
        asking.text.contains("Your card's PIN") && asking.text.contains("name=\"pin\""),
        "{}",
        asking.text
    );
    for path in [format!("/portal/identities/derived/{job}")] {
        assert_eq!(r.get(&path, &r.bob).await.status, StatusCode::NOT_FOUND, "bob sees nothing of alice's");
    }
    let bob_pin = r.post(&format!("/portal/identities/derived/{job}/pin"), &r.bob, &[("pin", PIN)]).await;
    assert_eq!(bob_pin.status, StatusCode::NOT_FOUND);
    let wrong =
        r.post(&format!("/portal/identities/derived/{job}/pin"), &r.alice, &[("pin", WRONG_PIN)]).await;
    assert_eq!(wrong.status, StatusCode::SEE_OTHER, "{}", wrong.text);
    let shown = r.settled(job).await;
    assert!(shown.text.contains("The PIN is wrong") && shown.text.contains("2 tries left"), "{}", shown.text);
    assert!(!shown.text.contains(WRONG_PIN), "the PIN is never shown");
    assert_eq!(r.server.job(job).await.state, JobState::Failed);
    r.card_idle().await;

    // The right PIN.
    let job = r.continue_().await;
    r.settled(job).await;
    let right = r.post(&format!("/portal/identities/derived/{job}/pin"), &r.alice, &[("pin", PIN)]).await;
    assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.text);
    let verified = r.settled(job).await;
    assert!(verified.text.contains("Your card is verified"), "{}", verified.text);
    let done = r.server.job(job).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert!(done.steps.iter().any(|s| s.name == "sponsor_verified"), "{:?}", done.steps);
    let code_path = format!("/portal/identities/derived/{job}/code");
    assert_eq!(r.post(&code_path, &r.bob, &[]).await.status, StatusCode::NOT_FOUND);
    let code = r.post(&code_path, &r.alice, &[]).await;
    assert_eq!(code.status, StatusCode::OK, "{}", code.text);
    assert!(code.text.contains("<svg role=\"img\"") && code.text.contains("/m/"), "{}", code.text);
    let again = r.post(&code_path, &r.alice, &[]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "the proof gives one code");
    r.card_idle().await;

    // The card's certificate revoked by an operator: refused before the PIN, with the reason.
    let creds = r.server.credentials(r.device).await;
    let auth = creds.iter().find(|c| format!("{:?}", c.kind).contains("PivAuthentication")).unwrap();
    r.server
        .post(
            &r.server.operator,
            &format!("/api/v1/credentials/{}/revoke", auth.id),
            serde_json::json!({"reason": "key_compromise"}),
        )
        .await;
    let job = r.continue_().await;
    let refused = r.settled(job).await;
    assert!(
        refused.text.contains("This card cannot sponsor") && refused.text.contains("revoked"),
        "{}",
        refused.text
    );
    let audit = r.server.get(&r.server.admin, "/api/v1/audit?limit=1000").await.to_string();
    assert!(
        audit.contains("sponsor_refused") || audit.contains("has been revoked"),
        "the refusal is audited"
    );
    assert!(!audit.contains(PIN) && !audit.contains(WRONG_PIN), "no PIN in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_piv_on_sqlite() {
    derived_piv(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_piv_on_postgres() {
    derived_piv(Backend::Postgres).await;
}

/// Alice presents Bob's card, which Lanyard issued to Bob: its certificate is valid and not
/// revoked, and the card would even sign, but it is not hers. The proof is refused with the
/// reason before any PIN is asked, the refusal is audited, and no code can be had from it.
async fn another_users_card(backend: Backend) {
    let r = rig(backend).await;
    let bob_browser = &r.bob;
    let (bobs_agent, bobs_ws, bobs_device) =
        issue_card(&r.server, &r.server.bob, bob_browser, "bob-ws").await;
    let bobs_card = bobs_ws.remove(READER).expect("bob's card is in his reader");
    drop(bobs_agent);
    r.swap_card(bobs_card).await;

    let job = r.continue_().await;
    let refused = r.settled(job).await;
    assert!(
        refused.text.contains("This card cannot sponsor")
            && refused.text.contains("this card is not one of yours"),
        "{}",
        refused.text
    );
    assert!(!refused.text.contains("name=\"pin\""), "no PIN is asked of another user's card");
    let failed = r.server.job(job).await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(
        failed.steps.iter().any(|s| s.name == "sponsor_refused"
            && s.detail.as_deref().is_some_and(|d| d.contains("not one of yours"))),
        "{:?}",
        failed.steps
    );
    let code = r.post(&format!("/portal/identities/derived/{job}/code"), &r.alice, &[]).await;
    assert_eq!(code.status, StatusCode::CONFLICT, "a refused card gives no code");
    assert!(!code.text.contains("/m/"), "{}", code.text);
    let audit = r.audit().await;
    let events = audit["events"].as_array().or(audit.as_array()).expect("a list of events");
    assert!(
        events.iter().any(|e| e.to_string().contains("this card is not one of yours")),
        "the refusal is audited"
    );
    assert!(
        !events.iter().any(|e| e["action"] == "enrollment_code.issue"
            || e["action"] == "device.register" && e["after"]["kind"] == "mobile"),
        "nothing issued"
    );
    assert_eq!(r.server.device(bobs_device).await.state, DeviceState::Active, "bob's card is untouched");
}

/// A card Lanyard did not issue: its 9A certificate comes from an agency's hierarchy imported in
/// `piv_trust_anchors`, whose OCSP responder (served here over HTTP) says it is good, and whose
/// common name is alice's user name (`piv_user_match = cn-username`). It sponsors the enrolment:
/// the code names the card by issuer and serial, and the mobile's registration audits it.
async fn imported_root_card(backend: Backend) {
    use lanyard_ca::hierarchy::{Hierarchy, HierarchySpec};
    use lanyard_ca::{
        CaUrls, CertStatus, CertificateProfile, IssueRequest, KeyAlgorithm, SanInput, parse_dn,
    };
    use lanyard_core::clock::{Clock, SystemClock};
    use lanyard_core::model::EnrollmentKind;
    use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
    use lanyard_piv::objects::CertificateObject;
    use lanyard_piv::{Slot, tag};

    // The agency's CA and its OCSP responder.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let now = SystemClock.now();
    let spec = HierarchySpec::new("Agency Test", KeyAlgorithm::EcP256, CaUrls::new(&base).unwrap()).unwrap();
    let agency = Arc::new(Hierarchy::generate(&spec, now - time::Duration::minutes(5)).unwrap());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let responder = {
        let (agency, asked) = (Arc::clone(&agency), Arc::clone(&asked));
        axum::Router::new().route(
            "/pki/ocsp",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (agency, asked) = (Arc::clone(&agency), Arc::clone(&asked));
                async move {
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    agency.ocsp.respond(&body, |_| CertStatus::Good, SystemClock.now())
                }
            }),
        )
    };
    let ocsp = tokio::spawn(async move { axum::serve(listener, responder).await.unwrap() });
    let mut bundle = lanyard_testkit::pem("CERTIFICATE", agency.root.certificate_der());
    bundle.push_str(&lanyard_testkit::pem("CERTIFICATE", agency.issuing.certificate_der()));
    let server = TestServer::start_with(backend, |cfg| {
        cfg.piv_trust_anchors = vec![bundle.into_bytes()];
        cfg.piv_user_match = lanyard_server::issuance::UserMatch::CnUsername;
    })
    .await;
    let r = rig_with(server).await;

    // The agency's card: a factory card with a 9A key and the agency's certificate for it.
    let mut card = r.server.plug_card();
    card.select().unwrap();
    card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).unwrap();
    let public = card.generate(Slot(0x9A), lanyard_piv::KeyAlgorithm::EccP256, None, None).unwrap();
    let spki = der::Decode::from_der(&public.to_spki_der()).unwrap();
    let profile = CertificateProfile::piv_authentication();
    let request = IssueRequest {
        profile: &profile,
        subject: parse_dn("CN=alice,OU=People,O=Agency Test,C=US").unwrap(),
        public_key: spki,
        san: SanInput { fasc_n: Some([0xd4; 25]), card_uuid: Some([0x42; 16]), ..SanInput::default() },
        not_before: now - time::Duration::minutes(1),
        requested_not_after: now + time::Duration::days(365),
        cap_not_after: None,
    };
    let cert = agency.issuing.issue(&request).unwrap();
    card.put_data(tag::CERT_PIV_AUTH, &CertificateObject::new(cert.der.clone()).encode(false)).unwrap();
    lanyard_testkit::power_cycle(&mut card);
    let cert: lanyard_ca::Certificate = der::Decode::from_der(&cert.der).unwrap();
    let serial = lanyard_ca::card_check::card_names(&cert).unwrap().serial_hex;
    let issuer = cert.tbs_certificate.issuer.to_string();
    r.swap_card(card).await;

    let job = r.continue_().await;
    let asking = r.settled(job).await;
    assert!(asking.text.contains("name=\"pin\""), "{}", asking.text);
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the agency's OCSP responder was asked");
    let verified = r.type_pin(job, "123456").await;
    assert!(
        verified.text.contains("Your card is verified") && verified.text.contains("Agency Test"),
        "{}",
        verified.text
    );
    let code = r.post(&format!("/portal/identities/derived/{job}/code"), &r.alice, &[]).await;
    assert_eq!(code.status, StatusCode::OK, "{}", code.text);
    assert!(code.text.contains("<svg role=\"img\""), "{}", code.text);
    let presented = code
        .text
        .split("/m/")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).next())
        .expect("the link")
        .to_owned();

    // The phone redeems it: the mobile is alice's, linked to no Lanyard card, and its
    // registration names the agency's card.
    let system = lanyard_core::authz::System::new(
        lanyard_core::audit::OperationId::parse("op-test-phone").unwrap(),
        SystemClock.now(),
    );
    let redeemed = system
        .redeem_enrollment(r.server.db.db.as_ref(), &presented, EnrollmentKind::DerivedPiv, "Pixel 9")
        .await
        .unwrap();
    assert_eq!(redeemed.device.owner, Some(r.server.alice.id));
    assert!(redeemed.device.links.is_empty());
    let audit = r.audit().await;
    let events = audit["events"].as_array().or(audit.as_array()).expect("a list of events");
    let register = events
        .iter()
        .find(|e| e["action"] == "device.register" && e["target"] == format!("device:{}", redeemed.device.id))
        .expect("the mobile's registration is audited");
    assert_eq!(register["after"]["external_sponsor"]["issuer"], issuer.as_str());
    assert_eq!(register["after"]["external_sponsor"]["serial_hex"], serial.as_str());
    assert!(issuer.contains("Agency Test"), "{issuer}");
    ocsp.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_card_on_sqlite() {
    another_users_card(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_card_on_postgres() {
    another_users_card(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_root_card_on_sqlite() {
    imported_root_card(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_root_card_on_postgres() {
    imported_root_card(Backend::Postgres).await;
}
