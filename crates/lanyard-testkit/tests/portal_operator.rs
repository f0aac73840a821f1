//! The help desk's card actions, in process: the real server, the real linked agent paired to the
//! operator with software cards in its readers, and the portal's pages and forms as a browser
//! sends them. In-person issuance, unlock, replace and wipe each run on the operator's own agent
//! only; a cardholder gets the portal's 404 for every page and form of it; the audit events name
//! the operator, the holder, the device and the note.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::audit::{Actor, AuditEvent};
use lanyard_core::ids::{DeviceId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::JobState;
use lanyard_core::repo::AuditQuery;
use lanyard_core::repo::prelude::*;
use lanyard_testkit::link::HANG_GUARD;
use lanyard_testkit::portal::{Browser, card_value, form, job_of};
use lanyard_testkit::{Backend, Caller, LinkedAgent, SoftWorkstation, TestServer, VCard, power_cycle};
use serde_json::{Value, json};
use std::sync::Arc;

const READER: &str = "Soft reader 00 00";
const SECOND: &str = "Soft reader 01 00";
const HOLDER_PIN: &str = "975319";
const NOTE: &str = "ticket 4711: ID card checked at the desk";

async fn audit(server: &TestServer) -> Vec<AuditEvent> {
    let mut tx = server.db.db.begin().await.unwrap();
    tx.list_audit(&AuditQuery { limit: 100_000, ..AuditQuery::default() }).await.unwrap()
}

fn actor(c: &Caller) -> Actor {
    Actor::User { id: c.id, username: lanyard_core::model::Username::parse(&c.username).unwrap() }
}

async fn jobs_of(server: &TestServer, device: DeviceId) -> Vec<lanyard_core::model::Job> {
    let mut tx = server.db.db.begin().await.unwrap();
    tx.list_jobs_for_device(device).await.unwrap()
}

/// The operator's desk: an agent paired to the operator, running, with two readers.
struct Desk {
    ws: Arc<SoftWorkstation>,
    agent: lanyard_core::ids::AgentId,
    _run: LinkedAgent,
}

async fn desk(server: &TestServer, who: &Caller, host: &str) -> Desk {
    let (agent, credential) = server.pair_agent(who, host).await;
    let ws = SoftWorkstation::new();
    ws.add_reader(READER);
    ws.add_reader(SECOND);
    let run = server.run_linked_agent(agent, &credential, ws.clone(), None);
    server.wait_for_agent(who, agent, |a| a["readers"].is_array()).await;
    Desk { ws, agent, _run: run }
}

impl Desk {
    /// Inserts `card` at `reader` and waits until the agent has reported it as `verdict`.
    async fn insert(&self, server: &TestServer, who: &Caller, reader: &str, card: VCard, verdict: &str) {
        self.ws.insert(reader, card);
        server
            .wait_for_agent(who, self.agent, |a| {
                a["readers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["name"] == reader && r["card"]["verdict"] == verdict)
            })
            .await;
    }

    /// Takes the card out once no session holds it.
    async fn take(&self, reader: &str) -> VCard {
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                if let Some(card) = self.ws.remove(reader) {
                    return card;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the card is free again")
    }
}

/// Waits until job `job` waits for a PIN typed in the portal (`pin_wanted` in the API).
async fn pin_wanted(server: &TestServer, who: &Caller, job: JobId) {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let j = server.get(who, &format!("/api/v1/jobs/{job}")).await;
            if j["pin_wanted"].is_object() {
                return;
            }
            assert_ne!(j["state"], "failed", "{j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the session asks for the PIN");
}

async fn wait_job(server: &TestServer, job: JobId, state: JobState) {
    tokio::time::timeout(HANG_GUARD, async {
        while server.job(job).await.state != state {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("job {job} did not reach {state}"));
}

/// The operator issues the card in `reader` to alice in person, the PIN typed at the step; the
/// new device's id and its job.
async fn issue_in_person(
    server: &TestServer,
    oscar: &Browser,
    reader: &str,
    note: &str,
) -> (DeviceId, JobId) {
    let path = format!("/portal/operator/users/{}/issue", server.alice.id);
    let page = server.view(oscar, &path).await;
    let card = card_value(&page.text, reader);
    let started =
        server.page("POST", &path, Some(oscar), Some(&form(oscar, &[("card", &card), ("note", note)]))).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let job = job_of(started.location.as_deref().unwrap());
    let job_path = format!("/portal/jobs/{job}");
    let asking = server.view_until(oscar, &job_path, |t| t.contains("id=\"pin-form\"")).await;
    assert!(
        asking.text.contains("<strong>alice (alice)</strong>")
            && asking.text.contains("let the holder type it"),
        "{}",
        asking.text
    );
    let fields = [("action", "set"), ("new_pin", HOLDER_PIN), ("confirm_pin", HOLDER_PIN)];
    let set = server.page("POST", &format!("{job_path}/pin"), Some(oscar), Some(&form(oscar, &fields))).await;
    assert_eq!(set.status, StatusCode::SEE_OTHER, "{}", set.text);
    let device = server.job(job).await.device;
    (device, job)
}

async fn in_person_issuance_runs_on_the_operators_agent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let oscar = server.sign_in(&server.operator).await;
    let alice = server.sign_in(&server.alice).await;
    let bob = server.sign_in(&server.bob).await;
    let admin = server.sign_in(&server.admin).await;
    let issue = format!("/portal/operator/users/{}/issue", server.alice.id);

    // An operator without the cardholder role has My Workstations and pairs the desk's agent.
    let mine = server.view(&oscar, "/portal/workstations").await;
    assert!(mine.text.contains("My Workstations") && !mine.text.contains(">My Devices<"), "{}", mine.text);
    let page = server.view(&oscar, &issue).await;
    assert!(page.text.contains("Pair the agent at your desk"), "{}", page.text);

    // Alice's own agent holds a blank card: it is never offered to the operator, nor usable.
    let alices = desk(&server, &server.alice, "alice-ws").await;
    alices.insert(&server, &server.alice, READER, server.plug_card(), "compatible").await;
    let hers = format!("{}|{READER}", alices.agent);
    let page = server.view(&oscar, &issue).await;
    assert!(!page.text.contains(&alices.agent.to_string()), "{}", page.text);
    let theirs =
        server.page("POST", &issue, Some(&oscar), Some(&form(&oscar, &[("card", hers.as_str())]))).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.text);

    let oscars = desk(&server, &server.operator, "help-desk-1").await;
    let page = server.view(&oscar, &issue).await;
    assert!(page.text.contains("Insert a blank card") && page.text.contains("help-desk-1"), "{}", page.text);
    oscars.insert(&server, &server.operator, READER, server.plug_card(), "compatible").await;
    let page = server.view(&oscar, &issue).await;
    assert!(page.text.contains("Issue to alice") && page.text.contains(READER), "{}", page.text);
    let card = card_value(&page.text, READER);

    // Cardholders get the portal's 404 for every page and form of it, and change nothing.
    for who in [&alice, &bob] {
        assert_eq!(server.page("GET", &issue, Some(who), None).await.status, StatusCode::NOT_FOUND);
        let p = server.page("POST", &issue, Some(who), Some(&form(who, &[("card", &card)]))).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        let p = server.page("POST", &format!("{issue}/refresh"), Some(who), Some(&form(who, &[]))).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
    }
    let no_token = server.page("POST", &issue, Some(&oscar), Some(&format!("card={card}"))).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let long = "x".repeat(501);
    let bad_note = server
        .page("POST", &issue, Some(&oscar), Some(&form(&oscar, &[("card", &card), ("note", &long)])))
        .await;
    assert_eq!(bad_note.status, StatusCode::BAD_REQUEST);
    assert!(bad_note.text.contains("Note: at most 500 characters"), "{}", bad_note.text);
    assert!(
        server.get(&server.alice, "/api/v1/devices").await.as_array().unwrap().is_empty(),
        "nothing issued"
    );

    let (device, job) = issue_in_person(&server, &oscar, READER, NOTE).await;
    let job_path = format!("/portal/jobs/{job}");
    // Bob learns nothing; the holder follows her own job; another operator only watches.
    assert_eq!(server.page("GET", &job_path, Some(&bob), None).await.status, StatusCode::NOT_FOUND);
    server.view(&alice, &job_path).await;
    let watching = server.view(&admin, &job_path).await;
    assert!(watching.text.contains("only that operator can act on it"), "{}", watching.text);
    let done = server.view_until(&oscar, &job_path, |t| t.contains("Your device is ready")).await;
    assert!(!done.text.contains(HOLDER_PIN), "the PIN is never shown");
    let stored = server.device(device).await;
    assert_eq!((stored.state, stored.owner), (DeviceState::Active, Some(server.alice.id)));
    let serial = stored.serial.clone().unwrap();
    let hers = server.view(&alice, "/portal/devices").await;
    assert!(hers.text.contains(&serial) && hers.text.contains("Active"), "alice sees it: {}", hers.text);
    let mut issued = oscars.take(READER).await;
    power_cycle(&mut issued);
    issued.verify_pin(HOLDER_PIN.as_bytes()).expect("the PIN the holder typed opens the card");

    // Audited with the operator as actor and the holder as subject; the ticket went to the
    // operator's agent.
    let events = audit(&server).await;
    let about = |action: &str, target: &str| {
        events
            .iter()
            .find(|e| e.action == action && e.target.as_deref() == Some(target))
            .unwrap_or_else(|| panic!("no {action} for {target}"))
            .clone()
    };
    let begin = about("device.begin_issuance", &format!("device:{device}"));
    assert_eq!(begin.actor, actor(&server.operator));
    let after = begin.after.unwrap();
    assert_eq!((after["owner"].clone(), after["note"].clone()), (json!(server.alice.id), json!(NOTE)));
    let created = about("job.create", &format!("job:{job}"));
    assert_eq!(created.actor, actor(&server.operator));
    let after = created.after.unwrap();
    assert_eq!((after["holder"].clone(), after["device"].clone()), (json!(server.alice.id), json!(device)));
    assert_eq!(after["note"], NOTE);
    let ticket = about("job.ticket", &format!("job:{job}"));
    assert_eq!(ticket.after.unwrap()["agent"], json!(oscars.agent));

    // Alice's group now allows no more: the user page and the issue page say why, and a post is
    // refused with it, issuing nothing.
    let group = server.get(&server.admin, "/api/v1/groups").await[0].clone();
    let mut policy = group["policy"].clone();
    policy["max_devices"] = json!(1);
    let (status, body) = server
        .call(
            &server.admin,
            "PUT",
            &format!("/api/v1/groups/{}/policy", group["id"].as_str().unwrap()),
            Some(policy),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    oscars.insert(&server, &server.operator, SECOND, server.plug_card(), "compatible").await;
    let why = "alice&#39;s group policy allows at most 1 smart cards or USB keys, and alice has 1";
    let user_page = server.view(&oscar, &format!("/portal/operator/users/{}", server.alice.id)).await;
    assert!(user_page.text.contains(why), "{}", user_page.text);
    let page = server.view(&oscar, &issue).await;
    assert!(page.text.contains(why) && !page.text.contains("Issue to alice"), "{}", page.text);
    let second = format!("{}|{SECOND}", oscars.agent);
    let refused = server.page("POST", &issue, Some(&oscar), Some(&form(&oscar, &[("card", &second)]))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert!(refused.text.contains(why), "{}", refused.text);
    assert_eq!(server.get(&server.alice, "/api/v1/devices").await.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_issues_a_card_in_person_on_their_own_agent_and_the_holder_sets_the_pin_sqlite() {
    in_person_issuance_runs_on_the_operators_agent(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_issues_a_card_in_person_on_their_own_agent_and_the_holder_sets_the_pin_postgres() {
    in_person_issuance_runs_on_the_operators_agent(Backend::Postgres).await;
}

/// The `job.create` event of `job`: actor, holder, device and note.
fn job_created(events: &[AuditEvent], job: JobId) -> (Actor, Value) {
    let e = events
        .iter()
        .find(|e| e.action == "job.create" && e.target == Some(format!("job:{job}")))
        .unwrap_or_else(|| panic!("no job.create for {job}"));
    (e.actor.clone(), e.after.clone().unwrap())
}

/// Unlock, replace and wipe from a device's help-desk page, each with its card at the operator's
/// desk: refused for a cardholder (404) and for a state that rules it out (409, with the reason),
/// each audited with operator, holder, device and note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_replace_and_wipe_run_on_the_operators_agent_with_the_note_audited() {
    let server = TestServer::sqlite().await;
    let oscar = server.sign_in(&server.operator).await;
    let alice = server.sign_in(&server.alice).await;
    let oscars = desk(&server, &server.operator, "help-desk-1").await;
    oscars.insert(&server, &server.operator, READER, server.plug_card(), "compatible").await;
    let (device, _) = issue_in_person(&server, &oscar, READER, "first card").await;
    server.view_until(&oscar, &format!("/portal/operator/devices/{device}"), |t| t.contains("Active")).await;
    let base = format!("/portal/operator/devices/{device}");

    // The holder blocks her PIN and comes to the desk.
    let mut card = oscars.take(READER).await;
    power_cycle(&mut card);
    // More wrong tries than any policy allows.
    for _ in 0..15 {
        let _ = card.verify_pin(b"000000");
    }
    assert!(card.verify_pin(HOLDER_PIN.as_bytes()).is_err(), "blocked");
    oscars.insert(&server, &server.operator, READER, card, "already_issued").await;

    let page = server.view(&oscar, &base).await;
    assert!(page.text.contains(&format!("href=\"{base}/unlock\"")), "{}", page.text);
    assert!(
        page.text.contains("<strong>Wipe</strong>: not now, only a terminated or failed card is wiped"),
        "{}",
        page.text
    );
    for action in ["unlock", "wipe", "replace"] {
        let path = format!("{base}/{action}");
        assert_eq!(
            server.page("GET", &path, Some(&alice), None).await.status,
            StatusCode::NOT_FOUND,
            "{action}"
        );
        let p = server.page("POST", &path, Some(&alice), Some(&form(&alice, &[("note", "x")]))).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{action}");
        let p = server.page("POST", &format!("{path}/refresh"), Some(&alice), Some(&form(&alice, &[]))).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{action}");
    }
    // Wipe is refused for a card in use, with the reason, and nothing happens.
    let jobs_before = jobs_of(&server, device).await;
    let wipe = server.page("GET", &format!("{base}/wipe"), Some(&oscar), None).await;
    assert_eq!(wipe.status, StatusCode::CONFLICT);
    assert!(
        wipe.text.contains("only a terminated or failed card is wiped; this one is active"),
        "{}",
        wipe.text
    );
    let wipe = server.page("POST", &format!("{base}/wipe"), Some(&oscar), Some(&form(&oscar, &[]))).await;
    assert_eq!(wipe.status, StatusCode::CONFLICT, "{}", wipe.text);
    assert_eq!(jobs_of(&server, device).await, jobs_before, "no job was created");
    assert!(
        !audit(&server)
            .await
            .iter()
            .any(|e| e.action == "job.create" && e.after.as_ref().unwrap()["kind"] == "wipe")
    );

    // Unlock: the card is found in the operator's reader; the holder types the new PIN.
    let confirm = server.view(&oscar, &format!("{base}/unlock")).await;
    assert!(
        confirm.text.contains(&format!("The card is in <strong>{READER} on help-desk-1</strong>")),
        "{}",
        confirm.text
    );
    assert!(confirm.text.contains("ALICE") || confirm.text.contains("alice"), "names the holder");
    let started = server
        .page(
            "POST",
            &format!("{base}/unlock"),
            Some(&oscar),
            Some(&form(&oscar, &[("note", "PIN blocked, ID checked")])),
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let unlock = job_of(started.location.as_deref().unwrap());
    pin_wanted(&server, &server.operator, unlock).await;
    let fields = [("action", "set"), ("new_pin", "246813"), ("confirm_pin", "246813")];
    let set = server
        .page("POST", &format!("/portal/jobs/{unlock}/pin"), Some(&oscar), Some(&form(&oscar, &fields)))
        .await;
    assert_eq!(set.status, StatusCode::SEE_OTHER, "{}", set.text);
    wait_job(&server, unlock, JobState::Succeeded).await;
    let mut card = oscars.take(READER).await;
    power_cycle(&mut card);
    card.verify_pin(b"246813").expect("the new PIN opens the unblocked card");
    let events = audit(&server).await;
    let (by, after) = job_created(&events, unlock);
    assert_eq!(by, actor(&server.operator));
    assert_eq!(
        (after["kind"].clone(), after["device"].clone(), after["holder"].clone(), after["note"].clone()),
        (json!("unlock"), json!(device), json!(server.alice.id), json!("PIN blocked, ID checked"))
    );

    // Replace: the old card is revoked, a blank card at the desk is issued to alice.
    oscars.insert(&server, &server.operator, READER, card, "already_issued").await;
    let confirm = server.view(&oscar, &format!("{base}/replace")).await;
    assert!(confirm.text.contains("Insert a blank card"), "{}", confirm.text);
    oscars.insert(&server, &server.operator, SECOND, server.plug_card(), "compatible").await;
    let confirm = server.view(&oscar, &format!("{base}/replace")).await;
    let blank = card_value(&confirm.text, SECOND);
    let bad = server
        .page(
            "POST",
            &format!("{base}/replace"),
            Some(&oscar),
            Some(&form(&oscar, &[("card", &blank), ("reason", "whim")])),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("Reason: choose one of the listed reasons."), "{}", bad.text);
    assert_eq!(server.device(device).await.state, DeviceState::Active, "a refused form revokes nothing");
    let fields = [("card", blank.as_str()), ("reason", "damaged"), ("note", "cracked card")];
    let started =
        server.page("POST", &format!("{base}/replace"), Some(&oscar), Some(&form(&oscar, &fields))).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let replacement = job_of(started.location.as_deref().unwrap());
    let job_path = format!("/portal/jobs/{replacement}");
    server.view_until(&oscar, &job_path, |t| t.contains("id=\"pin-form\"")).await;
    let fields = [("action", "set"), ("new_pin", HOLDER_PIN), ("confirm_pin", HOLDER_PIN)];
    server.page("POST", &format!("{job_path}/pin"), Some(&oscar), Some(&form(&oscar, &fields))).await;
    server.view_until(&oscar, &job_path, |t| t.contains("Your device is ready")).await;
    let new = server.job(replacement).await.device;
    assert_eq!(server.device(device).await.state, DeviceState::Revoked);
    let new_device = server.device(new).await;
    assert_eq!((new_device.state, new_device.owner), (DeviceState::Active, Some(server.alice.id)));
    let events = audit(&server).await;
    let replace = events.iter().find(|e| e.action == "device.replace").unwrap();
    assert_eq!(replace.actor, actor(&server.operator));
    let after = replace.after.clone().unwrap();
    assert_eq!((after["replaces"].clone(), after["owner"].clone()), (json!(device), json!(server.alice.id)));
    assert_eq!(after["note"], "cracked card");
    let revoke = events
        .iter()
        .find(|e| e.action == "device.revoke" && e.target == Some(format!("device:{device}")))
        .unwrap();
    assert_eq!(
        (revoke.actor.clone(), revoke.after.clone().unwrap()["note"].clone()),
        (actor(&server.operator), json!("cracked card"))
    );
    let (by, after) = job_created(&events, replacement);
    assert_eq!(
        (by, after["holder"].clone(), after["note"].clone()),
        (actor(&server.operator), json!(server.alice.id), json!("cracked card"))
    );

    // Wipe the old card once it is terminated: it is reset and back in stock.
    let terminate =
        server.page("POST", &format!("{base}/terminate"), Some(&oscar), Some(&form(&oscar, &[]))).await;
    assert_eq!(terminate.status, StatusCode::SEE_OTHER, "{}", terminate.text);
    let confirm = server.view(&oscar, &format!("{base}/wipe")).await;
    assert!(
        confirm.text.contains(&format!("The card is in <strong>{READER} on help-desk-1</strong>")),
        "{}",
        confirm.text
    );
    let started = server
        .page(
            "POST",
            &format!("{base}/wipe"),
            Some(&oscar),
            Some(&form(&oscar, &[("note", "back to stock")])),
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let wipe = job_of(started.location.as_deref().unwrap());
    wait_job(&server, wipe, JobState::Succeeded).await;
    let stock = server.device(device).await;
    assert_eq!((stock.state, stock.owner), (DeviceState::Available, None));
    let mut card = oscars.take(READER).await;
    power_cycle(&mut card);
    card.verify_pin(b"123456").expect("a wiped card has the factory PIN");
    let (by, after) = job_created(&audit(&server).await, wipe);
    assert_eq!(
        (by, after["kind"].clone(), after["holder"].clone(), after["note"].clone()),
        (actor(&server.operator), json!("wipe"), json!(server.alice.id), json!("back to stock"))
    );
}

/// `POST /api/v1/issuance` with `holder`: operators issue in person under the holder's policy; a
/// cardholder naming someone else is refused, and an unknown holder is a precise 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_api_takes_a_holder_from_operators_only() {
    let server = TestServer::sqlite().await;
    let body = |holder: &str| json!({"kind": "usb_key", "model": "Lanyard virtual card", "holder": holder});
    let (status, answer) =
        server.call(&server.operator, "POST", "/api/v1/issuance", Some(body("alice"))).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["device"]["owner"], json!(server.alice.id));
    assert!(answer["ticket"].is_string());
    let (status, answer) = server.call(&server.alice, "POST", "/api/v1/issuance", Some(body("bob"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, answer) =
        server.call(&server.operator, "POST", "/api/v1/issuance", Some(body("nobody"))).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("holder: no user \"nobody\""))
    );
    let (status, answer) =
        server.call(&server.operator, "POST", "/api/v1/issuance", Some(body("oscar"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("oscar is not a cardholder"), "{answer}");
    assert!(server.get(&server.bob, "/api/v1/devices").await.as_array().unwrap().is_empty());
}
