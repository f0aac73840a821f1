//! *Add Identity Device* → derived PIV credential in the portal, in process: the real server,
//! the real linked agent, a software card issued to alice through *Add Device*, which then
//! sponsors the enrolment: its PIN typed in the page is verified on the card, its certificate
//! checked, a challenge signed, and the one-time code shown as a QR code and a link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::ids::{DeviceId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::JobState;
use lanyard_testkit::db::Backend;
use lanyard_testkit::link::{HANG_GUARD, LinkedAgent};
use lanyard_testkit::{SoftWorkstation, TestServer};
use support::{Browser, Page, form, page, sign_in, start_issuing, wait_for_pin_form};

const READER: &str = "Soft reader 00 00";
const PIN: &str = "975319";
const WRONG_PIN: &str = "202413";

struct Rig {
    server: TestServer,
    alice: Browser,
    bob: Browser,
    _agent: LinkedAgent,
    device: DeviceId,
}

async fn rig(backend: Backend) -> Rig {
    let server = TestServer::start(backend).await;
    let alice = sign_in(&server, &server.alice).await;
    let bob = sign_in(&server, &server.bob).await;
    let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
    let ws = SoftWorkstation::new();
    ws.insert(READER, server.plug_card());
    let agent = server.run_linked_agent(id, &credential, ws.clone(), None);
    server.wait_for_agent(&server.alice, id, |a| a["readers"][0]["card"]["verdict"] == "compatible").await;
    let job = start_issuing(&server, &alice, READER).await;
    wait_for_pin_form(&server, &alice, job).await;
    let fields = [("action", "set"), ("new_pin", PIN), ("confirm_pin", PIN)];
    let set =
        page(&server, "POST", &format!("/portal/jobs/{job}/pin"), Some(&alice), Some(&form(&alice, &fields)))
            .await;
    assert_eq!(set.status, StatusCode::SEE_OTHER, "{}", set.text);
    let device = server.job(job).await.device;
    assert_eq!(server.device(device).await.state, DeviceState::Active);
    server
        .wait_for_agent(&server.alice, id, |a| {
            a["readers"][0]["card"]["verdict"] == "already_issued"
                && a["readers"][0]["card"]["busy"].is_null()
        })
        .await;
    Rig { server, alice, bob, _agent: agent, device }
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
