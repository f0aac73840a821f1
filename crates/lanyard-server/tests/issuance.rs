//! Card issuance end to end inside one process: the server on a real socket, the agent's side of
//! the WebSocket protocol played by a small relay over the software PIV card (in process, no
//! pcscd; the pcscd + agent run is in the `lanyard` crate's tests), or by the agent's own relay
//! where its behaviour is the point (the PIN deadline, the FIDO phase with CTAP batches to the
//! card's own authenticator). Covers a full issuance, a session cut at
//! every batch then resumed or rolled back, skipping Change PIN, operator activation with the
//! initial-PIN reveal, a PIN typed after the deadline, protocol versions, and tickets.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Certificates, attestations and OCSP use real time here.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use lanyard_ca::KeyAlgorithm;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::ids::{DeviceId, GroupId};
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::{ApiToken, CertSlot, CredentialKind, Group, Policy, Role, User, Username};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::Kek;
use lanyard_piv::apdu::Command;
use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::{CertificateObject, Chuid};
use lanyard_piv::{InProcess, Piv};
use lanyard_protocol::{
    AgentFrame, CONNECT_PATH, PROTOCOL_VERSION, ServerFrame, TICKET_HEADER, VERSION_HEADER,
};
use lanyard_server::issuance::IssuanceConfig;
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

type Card = Piv<InProcess<VirtualCard>>;

const NEW_PIN: &str = "975319";

struct App {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    state: AppState<Db>,
    addr: std::net::SocketAddr,
    alice: String,
    bob: String,
    operator: String,
    root: AttestationRoot,
}

async fn setup() -> App {
    setup_with(IssuanceConfig::DEFAULT_PIN_TIMEOUT).await
}

/// A server whose holders have `pin_timeout` to set their PIN.
async fn setup_with(pin_timeout: std::time::Duration) -> App {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let clock = Arc::new(SystemClock);
    let now = clock.now();
    let pki =
        Pki::create(&dir.path().join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, "http://127.0.0.1", now)
            .unwrap();
    let root =
        AttestationRoot::open_or_create(&dir.path().join("vcard"), std::time::SystemTime::now()).unwrap();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy: Policy::default() };
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&group).await.unwrap();
    let mut token_for = async |name: &str, roles: &[Role]| {
        let mut user = User::new(Username::parse(name).unwrap(), name, group.id, now).unwrap();
        user.roles = roles.iter().copied().collect::<BTreeSet<_>>();
        tx.insert_user(&user).await.unwrap();
        let (token, secret) = ApiToken::issue(user.id, "tests", None, now).unwrap();
        tx.insert_api_token(&token).await.unwrap();
        secret.expose_secret().to_owned()
    };
    let alice = token_for("alice", &[Role::User]).await;
    let bob = token_for("bob", &[Role::User]).await;
    let operator = token_for("oscar", &[Role::Operator]).await;
    tx.commit().await.unwrap();
    let db = Arc::new(db);
    let der = der::Encode::to_der(root.certificate()).unwrap();
    let mut issuance = IssuanceConfig::new(Kek::generate().unwrap(), vec![der]);
    issuance.pin_timeout = pin_timeout;
    let state =
        AppState::new(Arc::clone(&db), Arc::new(pki), clock as Arc<dyn Clock>).with_issuance(issuance);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    App { _dir: dir, db, state, addr, alice, bob, operator, root }
}

impl App {
    /// Frees the policy's device allowance for another round: the device is suspended and
    /// loses its holder.
    async fn free_allowance(&self, device: DeviceId) {
        let (status, body) =
            self.call("POST", &format!("/api/v1/devices/{device}/suspend"), &self.operator, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut tx = self.db.begin().await.unwrap();
        let mut d = tx.get_device(device).await.unwrap().unwrap();
        d.owner = None;
        tx.update_device(&d).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn call(&self, method: &str, uri: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req =
            Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {token}"));
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() })
    }

    /// Alice starts issuing a card: device id, job id and ticket.
    async fn begin(&self) -> (DeviceId, String, String) {
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/issuance",
                &self.alice,
                Some(json!({"kind": "usb_key", "model": "Lanyard virtual card"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["device"]["state"], "issuing");
        let device = body["device"]["id"].as_str().unwrap().parse().unwrap();
        (device, body["job"]["id"].as_str().unwrap().to_owned(), body["ticket"].as_str().unwrap().to_owned())
    }

    /// A factory-fresh card with its own serial.
    fn card(&self) -> Card {
        let image: CardImage =
            VirtualCard::new_image(&self.root, &NewCard::default(), std::time::SystemTime::now()).unwrap();
        Piv::new(InProcess(VirtualCard::from_image(image).unwrap()))
    }

    async fn device(&self, id: DeviceId) -> lanyard_core::model::Device {
        let mut tx = self.db.begin().await.unwrap();
        tx.get_device(id).await.unwrap().unwrap()
    }

    async fn credentials(&self, id: DeviceId) -> Vec<lanyard_core::model::Credential> {
        let mut tx = self.db.begin().await.unwrap();
        tx.list_credentials(&lanyard_core::repo::CredentialQuery {
            device: Some(id),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    async fn job_state(&self, job: &str) -> String {
        let (status, body) = self.call("GET", &format!("/api/v1/jobs/{job}"), &self.alice, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["state"].as_str().unwrap().to_owned()
    }

    /// Waits until the server has recorded the job as `state`.
    async fn wait_job(&self, job: &str, state: &str) {
        for _ in 0..200 {
            if self.job_state(job).await == state {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("job {job} never became {state} (it is {})", self.job_state(job).await);
    }

    async fn ticket(&self, job: &str, purpose: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/v1/jobs/{job}/ticket"),
                &self.alice,
                Some(json!({"purpose": purpose})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["ticket"].as_str().unwrap().to_owned()
    }
}

/// How the relay ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The server said done, with this device state.
    Done(String),
    /// The relay hung up on purpose after this many batches.
    Cut,
    /// The server said error.
    Error(String),
}

/// The upgrade request of an agent speaking `version` (none: an agent from before versioning).
fn agent_request(
    app: &App,
    ticket: Option<&str>,
    version: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}{CONNECT_PATH}", app.addr).into_client_request().unwrap();
    if let Some(t) = ticket {
        request.headers_mut().insert(TICKET_HEADER, t.parse().unwrap());
    }
    if let Some(v) = version {
        request.headers_mut().insert(VERSION_HEADER, v.parse().unwrap());
    }
    request
}

/// Plays the agent: relays batches to `card`; `cut_after` drops the connection (and powers the
/// card off) after that many batches; `pin` answers Change PIN (`None`: skip it).
async fn relay(app: &App, ticket: &str, card: &mut Card, cut_after: Option<usize>, pin: Option<&str>) -> End {
    let version = PROTOCOL_VERSION.to_string();
    let (mut ws, response) =
        tokio_tungstenite::connect_async(agent_request(app, Some(ticket), Some(&version))).await.unwrap();
    assert_eq!(response.headers()[VERSION_HEADER], version.as_str(), "the server names its version");
    let hello = AgentFrame::Hello {
        protocol: PROTOCOL_VERSION,
        agent: "test-relay".into(),
        reader: "in-process".into(),
        atr: "3B".into(),
        features: vec![],
    };
    ws.send(Message::text(hello.to_text())).await.unwrap();
    let mut batches = 0;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg.unwrap() else { continue };
        let answer = match ServerFrame::parse(text.as_str()).unwrap() {
            ServerFrame::Transmit { seq, apdus, answer_within_secs, .. } => {
                assert_eq!(answer_within_secs, 120, "the default batch deadline");
                if cut_after == Some(batches) {
                    card.transport_mut().0.reset_session();
                    return End::Cut;
                }
                batches += 1;
                let mut responses = Vec::new();
                for apdu in apdus {
                    let cmd = Command::parse(&hex::decode(apdu).unwrap()).unwrap();
                    let resp = card.exchange(&cmd).unwrap();
                    responses.push(hex::encode_upper(resp.to_bytes()));
                    if !resp.sw.is_success() {
                        break;
                    }
                }
                AgentFrame::Responses { seq, responses }
            }
            ServerFrame::ChangePin { seq, old_pin, answer_within_secs, .. } => {
                assert_eq!(answer_within_secs, 300, "the default PIN deadline");
                match pin {
                    Some(new) => {
                        card.change_reference(false, old_pin.expose().as_bytes(), new.as_bytes()).unwrap();
                        AgentFrame::PinChanged { seq, sw: "9000".into() }
                    }
                    None => AgentFrame::PinChangeSkipped { seq },
                }
            }
            ServerFrame::UnblockPin { seq, puk, answer_within_secs, .. } => {
                assert_eq!(answer_within_secs, 300, "the default PIN deadline");
                let new = pin.expect("a new PIN for the unblock");
                let sw = match card.unblock_pin(puk.expose().as_bytes(), new.as_bytes()) {
                    Ok(()) => "9000".to_owned(),
                    Err(e) => format!("error {e}"),
                };
                AgentFrame::PinChanged { seq, sw }
            }
            ServerFrame::Done { state, .. } => return End::Done(state.to_string()),
            ServerFrame::Error { message } => return End::Error(message),
            ServerFrame::Ctap { .. } => panic!("`ctap` sent to an agent that did not list the feature"),
        };
        ws.send(Message::text(answer.to_text())).await.unwrap();
    }
    End::Error("closed without a word".into())
}

/// What an issued card must hold, checked on the card itself and against the records.
async fn assert_issued(app: &App, device: DeviceId, card: &mut Card, pin: &str, state: DeviceState) {
    let d = app.device(device).await;
    assert_eq!(d.state, state);
    let guid = d.card_guid.expect("the card UUID is recorded");
    card.select().unwrap();
    card.verify_pin(pin.as_bytes()).unwrap();
    // The factory management keys no longer open the card.
    for alg in [MgmAlgorithm::TripleDes, MgmAlgorithm::Aes192] {
        assert!(card.authenticate_mutual(&ManagementKey::factory(alg)).is_err(), "{alg:?}");
    }
    let credentials = app.credentials(device).await;
    let slots: BTreeSet<_> = credentials
        .iter()
        .map(|c| match &c.kind {
            CredentialKind::Certificate { slot, .. } => *slot,
        })
        .collect();
    let want = [
        CertSlot::PivAuthentication,
        CertSlot::DigitalSignature,
        CertSlot::KeyManagement,
        CertSlot::CardAuthentication,
    ];
    assert_eq!(slots, want.into_iter().collect());
    let credential_state =
        if state == DeviceState::Active { CredentialState::Active } else { CredentialState::Pending };
    for c in &credentials {
        assert_eq!(c.state, credential_state);
        let CredentialKind::Certificate { slot, certificate_der, attestation_der, .. } = &c.kind;
        let tag = match slot {
            CertSlot::PivAuthentication => 0x5FC105,
            CertSlot::DigitalSignature => 0x5FC10A,
            CertSlot::KeyManagement => 0x5FC10B,
            _ => 0x5FC101,
        };
        let object = CertificateObject::decode(&card.get_data(tag).unwrap()).unwrap();
        assert_eq!(&object.der, certificate_der, "{slot}: the card holds the recorded certificate");
        assert!(attestation_der.is_some(), "{slot}: the verified attestation is recorded");
    }
    // The CHUID names the recorded card UUID and carries a valid content-signer signature.
    let raw = card.get_data(0x5FC102).unwrap();
    let chuid = Chuid::decode(&raw).unwrap();
    assert_eq!(chuid.guid, guid);
    let content = Chuid::signed_content_of(&raw).unwrap();
    let summary = lanyard_ca::cms::verify_detached(&chuid.signature, &content).unwrap();
    assert_eq!(summary.signer_certificate_der, app.state.pki.content_signer.certificate.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_is_issued_and_the_holder_sets_the_pin() {
    let app = setup().await;
    let (device, job, ticket) = app.begin().await;
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, None, Some(NEW_PIN)).await, End::Done("active".into()));
    assert_eq!(app.job_state(&job).await, "succeeded");
    assert_issued(&app, device, &mut card, NEW_PIN, DeviceState::Active).await;

    // The ticket worked once.
    let version = PROTOCOL_VERSION.to_string();
    let reused = tokio_tungstenite::connect_async(agent_request(&app, Some(&ticket), Some(&version))).await;
    assert!(reused.is_err(), "a used ticket is refused before the upgrade");
    // Bob cannot see or ticket Alice's job; a finished job takes no ticket.
    let (status, _) = app.call("GET", &format!("/api/v1/jobs/{job}"), &app.bob, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        app.call("POST", &format!("/api/v1/jobs/{job}/ticket"), &app.bob, Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        app.call("POST", &format!("/api/v1/jobs/{job}/ticket"), &app.alice, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The issued card is not issued again: a second job on it fails without touching it.
    let before = serde_json::to_string(card.transport_mut().0.image()).unwrap();
    let (_, job2, ticket2) = app.begin().await;
    let end = relay(&app, &ticket2, &mut card, None, Some(NEW_PIN)).await;
    assert!(matches!(&end, End::Error(m) if m.contains("already")), "{end:?}");
    app.wait_job(&job2, "failed").await;
    // ... and rolling that job back leaves this card alone, as it is not the job's card.
    let rollback = app.ticket(&job2, "rollback").await;
    let end = relay(&app, &rollback, &mut card, None, None).await;
    assert!(matches!(&end, End::Done(s) if s == "failed") || matches!(&end, End::Error(_)), "{end:?}");
    card.transport_mut().0.reset_session();
    assert_eq!(serde_json::to_string(card.transport_mut().0.image()).unwrap(), before);

    // The audit log holds the story and verifies.
    let mut tx = app.db.begin().await.unwrap();
    let events = tx
        .list_audit(&lanyard_core::repo::AuditQuery {
            after_seq: 0,
            target: None,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for a in
        ["device.prepare_card", "credential.issue", "job.succeeded", "device.personalized", "device.activate"]
    {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    lanyard_core::audit::verify_chain(&events).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_at_any_batch_resumes_to_the_same_card() {
    let app = setup().await;
    for cut in 0..5 {
        let (device, job, ticket) = app.begin().await;
        let mut card = app.card();
        assert_eq!(relay(&app, &ticket, &mut card, Some(cut), Some(NEW_PIN)).await, End::Cut, "cut {cut}");
        app.wait_job(&job, "failed").await;
        assert_eq!(app.device(device).await.state, DeviceState::Issuing, "cut {cut}");
        let resume = app.ticket(&job, "run").await;
        assert_eq!(relay(&app, &resume, &mut card, None, Some(NEW_PIN)).await, End::Done("active".into()));
        assert_issued(&app, device, &mut card, NEW_PIN, DeviceState::Active).await;
        app.free_allowance(device).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_at_any_batch_rolls_back_to_a_factory_card() {
    let app = setup().await;
    for cut in 0..5 {
        let (device, job, ticket) = app.begin().await;
        let mut card = app.card();
        assert_eq!(relay(&app, &ticket, &mut card, Some(cut), Some(NEW_PIN)).await, End::Cut, "cut {cut}");
        app.wait_job(&job, "failed").await;
        let rollback = app.ticket(&job, "rollback").await;
        assert_eq!(
            relay(&app, &rollback, &mut card, None, None).await,
            End::Done("failed".into()),
            "cut {cut}"
        );
        assert_eq!(app.job_state(&job).await, "rolled_back");
        assert_eq!(app.device(device).await.state, DeviceState::Failed);
        // Whatever was issued is revoked; the card is back to factory settings.
        for c in app.credentials(device).await {
            assert_eq!(c.state, CredentialState::Revoked, "cut {cut}");
        }
        card.transport_mut().0.reset_session();
        card.select().unwrap();
        card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes))
            .or_else(|_| card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::Aes192)))
            .unwrap();
        card.verify_pin(b"123456").unwrap();
        assert!(card.try_get_data(0x5FC102).unwrap().is_none_or(|c| c.len() <= 2), "cut {cut}: CHUID gone");
        assert!(card.try_get_data(0x5FC105).unwrap().is_none(), "cut {cut}: 9A certificate gone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_change_pin_the_card_stays_pending_until_an_operator_activates_it() {
    let app = setup().await;
    let (device, _job, ticket) = app.begin().await;
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, None, None).await, End::Done("pending".into()));
    let d = app.device(device).await;
    assert_eq!(d.state, DeviceState::Pending);

    // The holder cannot activate it; an operator can, once, and receives the initial PIN.
    let uri = format!("/api/v1/devices/{device}/activate");
    let (status, _) = app.call("POST", &uri, &app.alice, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app.call("POST", &uri, &app.operator, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device"]["state"], "active");
    let pin = body["initial_pin"].as_str().unwrap().to_owned();
    assert_issued(&app, device, &mut card, &pin, DeviceState::Active).await;
    let (status, body) = app.call("POST", &uri, &app.operator, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.get("initial_pin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tickets_are_refused_before_anything_happens() {
    let app = setup().await;
    let (_device, job, ticket) = app.begin().await;
    let version = PROTOCOL_VERSION.to_string();
    for bad in ["", "nonsense", &format!("{job}.wrong"), &format!("{}.x", uuid_like())] {
        let r = agent_request(&app, Some(bad).filter(|b| !b.is_empty()), Some(&version));
        let err = tokio_tungstenite::connect_async(r).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{bad:?}: {err}");
    }
    assert_eq!(app.job_state(&job).await, "created");
    // A request with the right ticket that is not a WebSocket upgrade does not use it up.
    let plain = Request::get(CONNECT_PATH)
        .header(TICKET_HEADER, &ticket)
        .header(VERSION_HEADER, &version)
        .body(Body::empty())
        .unwrap();
    let resp = router(app.state.clone()).oneshot(plain).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.job_state(&job).await, "created");
    // The real ticket still works afterwards.
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, None, Some(NEW_PIN)).await, End::Done("active".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_racing_with_one_ticket_get_one_session() {
    let app = setup().await;
    let (_device, job, mut ticket) = app.begin().await;
    let version = PROTOCOL_VERSION.to_string();
    let connect = |ticket: String| {
        let r = agent_request(&app, Some(&ticket), Some(&version));
        tokio::spawn(async move { tokio_tungstenite::connect_async(r).await })
    };
    for round in 0..10 {
        let (a, b) = tokio::join!(connect(ticket.clone()), connect(ticket.clone()));
        let (a, b) = (a.unwrap(), b.unwrap());
        let loser = match (&a, &b) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e.to_string(),
            _ => panic!("round {round}: exactly one connection must get the session, got {a:?} / {b:?}"),
        };
        assert!(loser.contains("401"), "round {round}: {loser}");
        assert_eq!(app.job_state(&job).await, "running");
        // The winner hangs up without a hello: the job fails and takes a new ticket.
        drop((a, b));
        app.wait_job(&job, "failed").await;
        ticket = app.ticket(&job, "run").await;
    }
}

fn uuid_like() -> String {
    "0b3d2c1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_pin_is_unlocked_with_the_stored_puk_and_a_pin_typed_at_the_agent() {
    let app = setup().await;
    let (device, _job, ticket) = app.begin().await;
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, None, Some(NEW_PIN)).await, End::Done("active".into()));
    card.select().unwrap();
    for _ in 0..3 {
        assert!(card.verify_pin(b"000000").is_err());
    }
    assert!(card.verify_pin(NEW_PIN.as_bytes()).is_err(), "the PIN is blocked");

    // Bob cannot start an unlock of Alice's card; Alice can, and so can an operator.
    let uri = format!("/api/v1/devices/{device}/unlock");
    let (status, _) = app.call("POST", &uri, &app.bob, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.call("POST", &uri, &app.alice, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["job"]["kind"], "unlock");
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    let job = body["job"]["id"].as_str().unwrap().to_owned();
    // The unlock only talks to this card: another one is refused untouched.
    let mut other = app.card();
    let end = relay(&app, &ticket, &mut other, None, Some("135792")).await;
    assert!(matches!(&end, End::Error(m) if m.contains("not card")), "{end:?}");
    app.wait_job(&job, "failed").await;
    let retry = app.ticket(&job, "run").await;
    assert_eq!(relay(&app, &retry, &mut card, None, Some("135792")).await, End::Done("active".into()));
    assert_eq!(app.job_state(&job).await, "succeeded");
    card.select().unwrap();
    card.verify_pin(b"135792").unwrap();
    let (status, body) = app.call("POST", &uri, &app.operator, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_by_a_server_restart_is_failed_at_start_and_resumes() {
    let app = setup().await;
    let (device, job, ticket) = app.begin().await;
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, Some(3), Some(NEW_PIN)).await, End::Cut);
    app.wait_job(&job, "failed").await;
    // Recreate what a crash leaves: the job still Running in the database.
    let mut tx = app.db.begin().await.unwrap();
    let mut j = tx.get_job(job.parse().unwrap()).await.unwrap().unwrap();
    j.state = lanyard_core::model::JobState::Running;
    tx.update_job(&j).await.unwrap();
    tx.commit().await.unwrap();
    let system =
        lanyard_core::authz::System::new(lanyard_core::audit::OperationId::random(), SystemClock.now());
    assert_eq!(system.fail_interrupted_jobs(app.db.as_ref()).await.unwrap(), 1);
    assert_eq!(app.job_state(&job).await, "failed");
    // Its certificates are not good while the card is unconfirmed.
    for c in app.credentials(device).await {
        assert_eq!(c.state, CredentialState::Pending);
    }
    let resume = app.ticket(&job, "run").await;
    assert_eq!(relay(&app, &resume, &mut card, None, Some(NEW_PIN)).await, End::Done("active".into()));
    assert_issued(&app, device, &mut card, NEW_PIN, DeviceState::Active).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replaces_a_card_and_wipes_the_old_one_back_to_stock() {
    let app = setup().await;
    let (old, _job, ticket) = app.begin().await;
    let mut old_card = app.card();
    assert_eq!(relay(&app, &ticket, &mut old_card, None, Some(NEW_PIN)).await, End::Done("active".into()));

    // Replace: the old card is revoked (with its certificates), the new one starts issuance for
    // the same holder, linked to the old one.
    let body = json!({"reason": "superseded", "kind": "usb_key", "model": "Lanyard virtual card"});
    let (status, _) =
        app.call("POST", &format!("/api/v1/devices/{old}/replace"), &app.alice, Some(body.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "holders do not replace cards themselves");
    let (status, started) =
        app.call("POST", &format!("/api/v1/devices/{old}/replace"), &app.operator, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["device"]["links"][0], json!({"kind": "replaces", "target": old.to_string()}));
    let new: DeviceId = started["device"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.device(old).await.state, DeviceState::Revoked);
    for c in app.credentials(old).await {
        assert_eq!(c.state, CredentialState::Revoked);
    }
    let mut new_card = app.card();
    let ticket = started["ticket"].as_str().unwrap();
    assert_eq!(relay(&app, ticket, &mut new_card, None, Some(NEW_PIN)).await, End::Done("active".into()));
    assert_issued(&app, new, &mut new_card, NEW_PIN, DeviceState::Active).await;
    assert_eq!(app.device(new).await.owner, app.device(old).await.owner);

    // Wipe: only a retired card, and only the right card.
    let wipe = format!("/api/v1/devices/{old}/wipe");
    let (status, _) = app.call("POST", &wipe, &app.operator, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a revoked card is terminated before a wipe");
    let (status, _) =
        app.call("POST", &format!("/api/v1/devices/{old}/terminate"), &app.operator, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.call("POST", &wipe, &app.operator, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let end = relay(&app, body["ticket"].as_str().unwrap(), &mut new_card, None, None).await;
    assert!(matches!(&end, End::Error(m) if m.contains("not card")), "the new card is not wiped: {end:?}");
    new_card.transport_mut().0.reset_session();
    new_card.select().unwrap();
    new_card.verify_pin(NEW_PIN.as_bytes()).unwrap();
    let job = body["job"]["id"].as_str().unwrap();
    app.wait_job(job, "failed").await;
    let (status, body) =
        app.call("POST", &format!("/api/v1/jobs/{job}/ticket"), &app.operator, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let end = relay(&app, body["ticket"].as_str().unwrap(), &mut old_card, None, None).await;
    assert_eq!(end, End::Done("available".into()));
    let d = app.device(old).await;
    assert_eq!((d.state, d.owner), (DeviceState::Available, None));
    old_card.transport_mut().0.reset_session();
    old_card.select().unwrap();
    old_card.verify_pin(b"123456").unwrap();
    assert!(old_card.try_get_data(0x5FC105).unwrap().is_none(), "no certificate left on the wiped card");
}

/// The subjectAltName extension's value of a DER certificate.
fn san_of(der: &[u8]) -> Vec<u8> {
    use der::Decode;
    let cert = lanyard_ca::Certificate::from_der(der).unwrap();
    let san = cert
        .tbs_certificate
        .extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.17")
        .expect("a subjectAltName");
    san.extn_value.into_bytes()
}

fn subject_of(der: &[u8]) -> String {
    use der::Decode;
    lanyard_ca::Certificate::from_der(der).unwrap().tbs_certificate.subject.to_string()
}

/// A certificate for a card from the operator's CSR route follows the same rules as the card
/// session's: the card's own FASC-N and UUID, the holder's subject, capped at the card's expiry,
/// Pending while the card is Pending (issue 8, bug 2: the route used to write the template FASC-N,
/// take the CSR's subject, set no cap and record Active).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csr_route_and_the_card_session_give_one_answer_for_one_card() {
    let app = setup().await;
    let (device, _job, ticket) = app.begin().await;
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, None, None).await, End::Done("pending".into()));
    let on_card = app
        .credentials(device)
        .await
        .into_iter()
        .find_map(|c| match c.kind {
            CredentialKind::Certificate { slot: CertSlot::PivAuthentication, certificate_der, .. } => {
                Some(certificate_der)
            }
            _ => None,
        })
        .unwrap();
    card.select().unwrap();
    let chuid = Chuid::decode(&card.get_data(0x5FC102).unwrap()).unwrap();

    // The card is near the end of its life: certificates must not outlive it.
    let expires = {
        let mut tx = app.db.begin().await.unwrap();
        let mut d = tx.get_device(device).await.unwrap().unwrap();
        let expires =
            time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::days(10);
        d.card_expires_at = Some(expires);
        tx.update_device(&d).await.unwrap();
        tx.commit().await.unwrap();
        expires
    };
    let key = lanyard_ca::SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let csr =
        lanyard_ca::build_csr(&key, lanyard_ca::parse_dn("CN=Somebody Else").unwrap(), vec![], None).unwrap();
    let csr_pem = lanyard_ca::issue::pem("CERTIFICATE REQUEST", &csr);
    let (status, body) = app
        .call(
            "POST",
            &format!("/api/v1/devices/{device}/certificates"),
            &app.operator,
            Some(json!({"csr_pem": csr_pem, "profile": "piv-auth", "slot": "9a"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["credential"]["state"], "pending", "the card is Pending, so is its new certificate");
    let (_, der) = der::pem::decode_vec(body["certificate_pem"].as_str().unwrap().as_bytes()).unwrap();

    let san = san_of(&der);
    assert!(san.windows(25).any(|w| w == chuid.fasc_n), "the card's own FASC-N, as in its CHUID");
    assert_eq!(san, san_of(&on_card), "the same FASC-N and card UUID as the certificate on the card");
    assert_eq!(subject_of(&der), subject_of(&on_card), "the holder's subject, not the CSR's");
    let not_after = {
        use der::Decode;
        let cert = lanyard_ca::Certificate::from_der(&der).unwrap();
        cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs()
    };
    assert!(not_after <= expires.unix_timestamp() as u64, "capped at the card's expiry");

    // A key of another algorithm than the policy's for the slot, or a profile the policy does not
    // name for it, is refused and records nothing.
    let before = app.credentials(device).await.len();
    let rsa = lanyard_ca::SoftwareKey::generate(KeyAlgorithm::Rsa2048).unwrap();
    let rsa_csr = lanyard_ca::build_csr(&rsa, lanyard_ca::parse_dn("CN=x").unwrap(), vec![], None).unwrap();
    for (csr, profile, want) in [
        (lanyard_ca::issue::pem("CERTIFICATE REQUEST", &rsa_csr), "piv-auth", "takes p-256 keys"),
        (csr_pem.clone(), "digital-signature", "is not the one the holder's policy names for slot 9a"),
    ] {
        let (status, body) = app
            .call(
                "POST",
                &format!("/api/v1/devices/{device}/certificates"),
                &app.operator,
                Some(json!({"csr_pem": csr, "profile": profile, "slot": "9a"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"].as_str().unwrap().contains(want), "{body}");
    }
    assert_eq!(app.credentials(device).await.len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_protocol_version_is_refused_before_its_ticket_is_used() {
    let app = setup().await;
    let (_device, job, ticket) = app.begin().await;
    for (version, words) in [
        (Some("2"), "the agent speaks agent protocol version 2 and the server version 1"),
        (Some("one"), "the agent speaks agent protocol version one and the server version 1"),
        (None, "the agent names no agent protocol version (it predates version 1) and the server version 1"),
    ] {
        let request = agent_request(&app, Some(&ticket), version);
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) =
            tokio_tungstenite::connect_async(request).await
        else {
            panic!("{version:?}: the upgrade must be refused");
        };
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{version:?}");
        assert_eq!(response.headers()[VERSION_HEADER], "1", "the refusal names the server's version");
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains(words), "{body}");
    }
    assert_eq!(app.job_state(&job).await, "created", "the ticket was not used up");
    let mut card = app.card();
    assert_eq!(relay(&app, &ticket, &mut card, None, Some(NEW_PIN)).await, End::Done("active".into()));
}

/// A holder who types the PIN after `delay`.
struct SlowHolder(std::time::Duration);

impl lanyard_agent::relay::PinSource for SlowHolder {
    fn new_pin(
        &mut self,
        _prompt: &lanyard_agent::relay::PinPrompt<'_>,
    ) -> Result<Option<zeroize::Zeroizing<String>>, lanyard_agent::AgentError> {
        std::thread::sleep(self.0);
        Ok(Some(zeroize::Zeroizing::new(NEW_PIN.into())))
    }
}

/// Issue 8: the server gives the holder a deadline for the PIN in the `change_pin` frame and
/// records the device Pending once it passes. The agent's relay (the real one, over the software
/// card) must then not write the late PIN, or the initial PIN an operator's activation reveals
/// would no longer open the card. Both timings: the PIN comes while the server still waits (its
/// grace), and after the server has given up and ended the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_typed_after_the_deadline_never_reaches_the_card() {
    use lanyard_agent::relay::{PinOutcome, Progress, SessionOptions, run_session_with};
    let pin_timeout = std::time::Duration::from_secs(1);
    let app = setup_with(pin_timeout).await;
    let grace = std::time::Duration::from_secs(lanyard_protocol::ANSWER_GRACE_SECS.into());
    let ms = std::time::Duration::from_millis;
    for (delay, words) in [
        (pin_timeout + ms(500), "after the server's deadline of 1 s"),
        (pin_timeout + grace + ms(700), "after the server's deadline of 1 s"),
    ] {
        let (device, job, ticket) = app.begin().await;
        let mut card = app.card().into_transport();
        let opts = SessionOptions::new(format!("http://{}", app.addr), ticket, "in-process");
        let (result, events, card) = tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            let result =
                run_session_with(&opts, &mut card, &lanyard_vcard::atr(), &mut SlowHolder(delay), &mut |p| {
                    events.push(p.clone())
                });
            (result, events, card)
        })
        .await
        .unwrap();
        // The agent says what happened and why.
        let outcome = result.unwrap_or_else(|e| panic!("{delay:?}: {e}"));
        assert_eq!(outcome.state, DeviceState::Pending, "{delay:?}");
        assert!(
            matches!(&outcome.pin, PinOutcome::TooLate(m) if m.contains(words)),
            "{delay:?}: {outcome:?}"
        );
        assert!(events.contains(&Progress::PinTooLate), "{delay:?}");
        // The server recorded what the card is: personalised, with its initial PIN.
        assert_eq!(app.job_state(&job).await, "succeeded");
        assert_eq!(app.device(device).await.state, DeviceState::Pending, "{delay:?}");
        let mut card: Card = Piv::new(card);
        card.select().unwrap();
        assert!(card.verify_pin(NEW_PIN.as_bytes()).is_err(), "{delay:?}: the late PIN was written");
        // The operator's activation reveals an initial PIN that opens the card.
        let (status, body) =
            app.call("POST", &format!("/api/v1/devices/{device}/activate"), &app.operator, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let initial = body["initial_pin"].as_str().unwrap();
        assert_issued(&app, device, &mut card, initial, DeviceState::Active).await;
        app.free_allowance(device).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The FIDO phase (DESIGN flow B): the agent's own relay (`lanyard_agent::relay::Relay`) carries
// PIV batches and CTAP batches to the software card, whose FIDO2 application is the virtual card's
// authenticator (`lanyard_vcard::fido::Authenticator`), reached over the card's APDUs as over an
// NFC reader. The tests then ask that authenticator what a client would.
// ---------------------------------------------------------------------------------------------

use lanyard_agent::relay::{Next, Relay, SkipPinChange, Unlinked};
use lanyard_core::model::FidoPinMode;
use lanyard_ctap::consts::status as ctap_status;
use lanyard_ctap::pin_protocol::{KeyPair, PinProtocol, SharedSecret};
use lanyard_vcard::fido::Authenticator;

/// Plays an agent with features `server_pin` and `ctap` through the agent's relay over `card`;
/// the new device PIN comes in the `change_pin` frame from the portal (none: skipped). The
/// command byte of every CTAP request sent goes to `sent`; `cut_after_ctap` drops the
/// connection after that many CTAP batches.
async fn relay_fido(
    app: &App,
    ticket: &str,
    card: &mut Card,
    sent: &mut Vec<u8>,
    cut_after_ctap: Option<usize>,
) -> End {
    let version = PROTOCOL_VERSION.to_string();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(agent_request(app, Some(ticket), Some(&version))).await.unwrap();
    let hello = AgentFrame::Hello {
        protocol: PROTOCOL_VERSION,
        agent: "test-relay".into(),
        reader: "in-process".into(),
        atr: "3B".into(),
        features: vec!["server_pin".into(), "ctap".into()],
    };
    ws.send(Message::text(hello.to_text())).await.unwrap();
    let mut relay = Relay::new(card.transport_mut());
    let mut ctap_batches = 0;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg.unwrap() else { continue };
        match ServerFrame::parse(text.as_str()).unwrap() {
            ServerFrame::Ctap { requests, .. } => {
                if cut_after_ctap == Some(ctap_batches) {
                    return End::Cut;
                }
                ctap_batches += 1;
                sent.extend(requests.iter().map(|r| hex::decode(r).unwrap()[0]));
            }
            ServerFrame::Done { state, .. } => return End::Done(state.to_string()),
            ServerFrame::Error { message } => return End::Error(message),
            _ => {}
        }
        match relay.on_text(text.as_str(), &mut SkipPinChange, &mut Unlinked, &mut |_| {}) {
            Next::Send(frame) => ws.send(Message::text(frame)).await.unwrap(),
            other => panic!("the relay did not answer {text}: {other:?}"),
        }
    }
    End::Error("closed without a word".into())
}

/// The card's FIDO2 authenticator.
fn fido(card: &mut Card) -> &mut Authenticator {
    card.transport_mut().0.fido().expect("the virtual card has a FIDO application")
}

/// A platform key pair and the shared secret with the card authenticator's key agreement key.
fn fido_agree(card: &mut Card) -> (KeyPair, SharedSecret) {
    let answer = fido(card).process(&lanyard_ctap::client::get_key_agreement(PinProtocol::Two));
    let ka = lanyard_ctap::client::parse_key_agreement(&answer).unwrap();
    let platform = KeyPair::generate();
    let shared = platform.agree(PinProtocol::Two, &ka).unwrap();
    (platform, shared)
}

/// What a client gets asking the card's authenticator for a PIN token with `pin` (as
/// python-fido2's `ClientPin.get_pin_token` does): `Ok` or the refusal's status.
fn token_with(card: &mut Card, pin: &str) -> Result<(), u8> {
    let (platform, shared) = fido_agree(card);
    let request = lanyard_ctap::client::get_pin_token(&platform, &shared, pin).unwrap();
    match fido(card).process(&request).first() {
        Some(&ctap_status::OK) => Ok(()),
        Some(s) => Err(*s),
        None => Err(ctap_status::OTHER),
    }
}

impl App {
    async fn set_fido_policy(&self, mode: FidoPinMode, min: u8) {
        let mut tx = self.db.begin().await.unwrap();
        let mut g = tx.list_groups().await.unwrap().remove(0);
        g.policy.fido_pin_mode = mode;
        g.policy.fido_min_pin_length = min;
        g.policy.validate().unwrap();
        tx.update_group(&g).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// Answers the portal's questions of job `job` as the holder would: the FIDO PIN when asked
    /// for one (`fido`), then the device PIN.
    async fn answer_pins(&self, job: &str, fido: Option<&str>, device_pin: &str) {
        let mut fido = fido;
        for _ in 0..2000 {
            let (_, body) = self.call("GET", &format!("/api/v1/jobs/{job}"), &self.alice, None).await;
            if let Some(wanted) = body.get("pin_wanted") {
                let pin = if wanted.get("fido").is_some() {
                    fido.take().expect("a FIDO PIN is asked once")
                } else {
                    device_pin
                };
                let (status, answer) = self
                    .call(
                        "POST",
                        &format!("/api/v1/jobs/{job}/pin"),
                        &self.alice,
                        Some(json!({"new_pin": pin})),
                    )
                    .await;
                assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
                if wanted.get("fido").is_none() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("job {job} never asked for its PINs");
    }

    /// The FIDO PIN sealed with the card secrets.
    async fn sealed_fido_pin(&self, device: DeviceId) -> Option<String> {
        let sealed = self.db.begin().await.unwrap().get_card_secrets(device).await.unwrap().unwrap();
        let kek = &self.state.issuance.as_ref().unwrap().kek;
        let secrets = lanyard_core::secrets::CardSecrets::open(&sealed, kek, device).unwrap();
        secrets.fido_pin().map(|p| p.expose_secret().to_owned())
    }

    /// Every byte the server's database holds, for looking for a PIN in it.
    fn database_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for name in ["lanyard.db", "lanyard.db-wal"] {
            if let Ok(b) = std::fs::read(self._dir.path().join(name)) {
                all.extend(b);
            }
        }
        all
    }

    /// The `device.fido_pin` audit events, as JSON.
    async fn fido_audit(&self) -> Vec<Value> {
        let query = lanyard_core::repo::AuditQuery {
            action: Some("device.fido_pin".into()),
            limit: 100,
            ..Default::default()
        };
        let events = self.db.read().await.unwrap().list_audit(&query).await.unwrap();
        events.iter().map(|e| json!({"target": e.target, "after": e.after})).collect()
    }
}

/// Everything the server logs while it is alive, at every level (the test's runtime runs every
/// task on the test's thread, where this subscriber is the default).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn independent_mode_sets_the_holders_fido_pin_and_keeps_no_trace_of_it() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = setup().await;
    app.set_fido_policy(FidoPinMode::Independent, 8).await;
    let (device, job, ticket) = app.begin().await;
    app.state.pins.expect(job.parse().unwrap());
    let (mut card, mut sent) = (app.card(), Vec::new());
    const FIDO_PIN: &str = "correct horse 42";
    let (end, ()) = tokio::join!(
        relay_fido(&app, &ticket, &mut card, &mut sent, None),
        app.answer_pins(&job, Some(FIDO_PIN), NEW_PIN)
    );
    assert_eq!(end, End::Done("active".into()));
    assert_issued(&app, device, &mut card, NEW_PIN, DeviceState::Active).await;
    // The judge: the key gives a PIN token for the holder's PIN, and for no other.
    assert_eq!(token_with(&mut card, FIDO_PIN), Ok(()));
    assert_eq!(token_with(&mut card, NEW_PIN), Err(ctap_status::PIN_INVALID));
    assert_eq!(fido(&mut card).state().min_pin_length, 8, "the policy's minimum is on the key");
    assert!(!fido(&mut card).state().force_pin_change);
    assert_eq!(app.sealed_fido_pin(device).await, None, "a PIN the holder chose is never sealed");
    // Neither the database nor the job's record nor the audit log holds it.
    assert!(!contains(&app.database_bytes(), FIDO_PIN));
    let (_, record) = app.call("GET", &format!("/api/v1/jobs/{job}"), &app.alice, None).await;
    assert!(!record.to_string().contains(FIDO_PIN));
    let steps: Vec<&str> =
        record["steps"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(steps.contains(&"fido"), "{steps:?}");
    let audit = app.fido_audit().await;
    assert!(!audit.is_empty(), "the FIDO step is audited");
    assert!(audit.iter().any(|e| e.to_string().contains("\"pin_set\":true")), "{audit:?}");
    assert!(!audit.iter().any(|e| e.to_string().contains(FIDO_PIN)));
    // Nor the server's logs, at any level (which did log the session).
    let logged = logs.0.lock().unwrap().clone();
    assert!(contains(&logged, "agent connected"), "the capture sees the server's logs");
    assert!(!contains(&logged, FIDO_PIN) && !contains(&logged, NEW_PIN));
}

#[tokio::test]
async fn shared_mode_makes_the_device_pin_the_fido_pin_at_change_pin() {
    let app = setup().await;
    app.set_fido_policy(FidoPinMode::Shared, 6).await;
    let (device, job, ticket) = app.begin().await;
    app.state.pins.expect(job.parse().unwrap());
    let (mut card, mut sent) = (app.card(), Vec::new());
    let (end, ()) = tokio::join!(
        relay_fido(&app, &ticket, &mut card, &mut sent, None),
        app.answer_pins(&job, None, NEW_PIN)
    );
    assert_eq!(end, End::Done("active".into()));
    assert_issued(&app, device, &mut card, NEW_PIN, DeviceState::Active).await;
    let temporary = app.sealed_fido_pin(device).await.expect("the temporary FIDO PIN is sealed");
    assert_eq!(temporary.len(), 8);
    assert_eq!(token_with(&mut card, NEW_PIN), Ok(()), "the device PIN is the FIDO PIN");
    assert_eq!(token_with(&mut card, &temporary), Err(ctap_status::PIN_INVALID));
    assert!(!contains(&app.database_bytes(), NEW_PIN), "the device PIN is nowhere in the database");
    assert!(app.fido_audit().await.iter().any(|e| e.to_string().contains("fido_change_pin")));
}

#[tokio::test]
async fn temporary_mode_blocks_pin_tokens_until_the_pin_is_changed() {
    let app = setup().await;
    app.set_fido_policy(FidoPinMode::Temporary, 10).await;
    let (device, job, ticket) = app.begin().await;
    app.state.pins.expect(job.parse().unwrap());
    let (mut card, mut sent) = (app.card(), Vec::new());
    let (end, ()) = tokio::join!(
        relay_fido(&app, &ticket, &mut card, &mut sent, None),
        app.answer_pins(&job, None, NEW_PIN)
    );
    assert_eq!(end, End::Done("active".into()));
    let temporary = app.sealed_fido_pin(device).await.expect("the random FIDO PIN is sealed");
    assert_eq!(temporary.len(), 10, "as long as the policy's minimum");
    assert!(fido(&mut card).state().force_pin_change && fido(&mut card).state().min_pin_length == 10);
    assert_eq!(token_with(&mut card, &temporary), Err(ctap_status::PIN_POLICY_VIOLATION));
    // The holder changes it (as their browser or ykman would); then tokens come.
    let (platform, shared) = fido_agree(&mut card);
    // Shorter than the minimum: refused by the key.
    let short = lanyard_ctap::client::change_pin(&platform, &shared, &temporary, "123456789").unwrap();
    assert_eq!(fido(&mut card).process(&short), [ctap_status::PIN_POLICY_VIOLATION]);
    let change = lanyard_ctap::client::change_pin(&platform, &shared, &temporary, "my own 10+ PIN").unwrap();
    assert_eq!(fido(&mut card).process(&change), [0]);
    assert_eq!(token_with(&mut card, "my own 10+ PIN"), Ok(()));
}

#[tokio::test]
async fn a_key_with_a_fido_pin_is_reset_only_after_the_holder_agrees() {
    let app = setup().await;
    app.set_fido_policy(FidoPinMode::Shared, 6).await;
    let (device, job, ticket) = app.begin().await;
    app.state.pins.expect(job.parse().unwrap());
    let (mut card, mut sent) = (app.card(), Vec::new());
    // Someone set a FIDO PIN on the key before (through setPIN, as their client would).
    let (platform, shared) = fido_agree(&mut card);
    let set = lanyard_ctap::client::set_pin(&platform, &shared, "somebody's old PIN").unwrap();
    assert_eq!(fido(&mut card).process(&set), [ctap_status::OK]);
    let end = relay_fido(&app, &ticket, &mut card, &mut sent, None).await;
    assert!(matches!(&end, End::Error(m) if m.contains("already has a FIDO PIN")), "{end:?}");
    app.wait_job(&job, "failed").await;
    assert!(!sent.contains(&lanyard_ctap::consts::cmd::RESET), "nothing erased without consent");
    assert_eq!(token_with(&mut card, "somebody's old PIN"), Ok(()));
    assert_eq!(app.device(device).await.state, DeviceState::Issuing);
    // A plain resume stops at the same place; consent is its own ticket purpose.
    let (status, _) = app
        .call(
            "POST",
            &format!("/api/v1/jobs/{job}/ticket"),
            &app.bob,
            Some(json!({"purpose": "run_erasing_fido"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another user cannot agree for the holder");
    let ticket = app.ticket(&job, "run_erasing_fido").await;
    app.state.pins.expect(job.parse().unwrap());
    let (end, ()) = tokio::join!(
        relay_fido(&app, &ticket, &mut card, &mut sent, None),
        app.answer_pins(&job, None, NEW_PIN)
    );
    assert_eq!(end, End::Done("active".into()));
    assert!(sent.contains(&lanyard_ctap::consts::cmd::RESET));
    assert_eq!(token_with(&mut card, NEW_PIN), Ok(()));
    let (_, record) = app.call("GET", &format!("/api/v1/jobs/{job}"), &app.alice, None).await;
    assert!(record.to_string().contains("fido_reset_consented"));
}

#[tokio::test]
async fn rollback_resets_a_fido_pin_the_job_set() {
    let app = setup().await;
    app.set_fido_policy(FidoPinMode::Temporary, 6).await;
    let (device, job, ticket) = app.begin().await;
    let (mut card, mut sent) = (app.card(), Vec::new());
    // Cut after detect, minimum length, key agreement and setPIN: the PIN is on the key.
    let end = relay_fido(&app, &ticket, &mut card, &mut sent, Some(4)).await;
    assert_eq!(end, End::Cut);
    app.wait_job(&job, "failed").await;
    assert!(fido(&mut card).state().pin.is_some());
    let ticket = app.ticket(&job, "rollback").await;
    let end = relay_fido(&app, &ticket, &mut card, &mut sent, None).await;
    assert_eq!(end, End::Done("failed".into()));
    assert!(fido(&mut card).state().pin.is_none(), "the key's FIDO application was reset");
    assert_eq!(app.device(device).await.state, DeviceState::Failed);
    assert!(app.fido_audit().await.iter().any(|e| e.to_string().contains("fido_rollback")));
}
