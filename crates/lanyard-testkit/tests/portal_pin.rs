//! *Change PIN* and *Unlock PIN* in the portal, in process: the real server on both databases,
//! the real linked agent with a software card issued through *Add Device*, and the pages and
//! forms as a browser sends them. The PINs typed in the page reach the card and nowhere else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::ids::{DeviceId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::repo::AuditQuery;
use lanyard_core::repo::prelude::*;
use lanyard_piv::PivError;
use lanyard_testkit::card::VCard;
use lanyard_testkit::db::Backend;
use lanyard_testkit::link::{HANG_GUARD, LinkedAgent};
use lanyard_testkit::{SoftWorkstation, TestServer, power_cycle};
use support::{Browser, Page, form, job_of, page, sign_in, start_issuing, wait_for_pin_form};

const READER: &str = "Soft reader 00 00";
/// The PIN set when the card is issued.
const FIRST_PIN: &str = "975319";
/// The PIN Change PIN sets.
const SECOND_PIN: &str = "864201";
/// A current PIN that is not the card's.
const WRONG_PIN: &str = "202413";
/// The PIN Unlock PIN sets.
const THIRD_PIN: &str = "531864";

struct Rig {
    server: TestServer,
    alice: Browser,
    bob: Browser,
    ws: std::sync::Arc<SoftWorkstation>,
    _agent: LinkedAgent,
    device: DeviceId,
}

/// A server on `backend`, alice's paired and running agent, and a card issued to her through
/// *Add Device* with [`FIRST_PIN`] typed in the page: Active.
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
    let fields = [("action", "set"), ("new_pin", FIRST_PIN), ("confirm_pin", FIRST_PIN)];
    let set =
        page(&server, "POST", &format!("/portal/jobs/{job}/pin"), Some(&alice), Some(&form(&alice, &fields)))
            .await;
    assert_eq!(set.status, StatusCode::SEE_OTHER, "{}", set.text);
    let device = server.job(job).await.device;
    assert_eq!(server.device(device).await.state, DeviceState::Active);
    // The agent reports the card again once the session is over: issued now, with its serial.
    server
        .wait_for_agent(&server.alice, id, |a| a["readers"][0]["card"]["verdict"] == "already_issued")
        .await;
    Rig { server, alice, bob, ws, _agent: agent, device }
}

impl Rig {
    /// Opens the PIN action's page (`change-pin`, `unlock-pin`), checks it found the card, and
    /// starts the job: its id.
    async fn start(&self, action: &str) -> JobId {
        let path = format!("/portal/devices/{}/{action}", self.device);
        let found = page(&self.server, "GET", &path, Some(&self.alice), None).await;
        assert_eq!(found.status, StatusCode::OK, "{}", found.text);
        let serial = self.server.device(self.device).await.serial.expect("the card's serial is recorded");
        assert!(
            found.text.contains("Your card is ready")
                && found.text.contains(READER)
                && found.text.contains("alice-ws")
                && found.text.contains(&serial)
                && found.text.contains(">Start</button>")
                && found.text.contains(">Cancel</a>"),
            "{}",
            found.text
        );
        // The agent reports its reader free again shortly after the previous session's job
        // has ended (two messages on its link, in either order): until then the portal answers
        // 409 "a card session is already running", as a person starting too early would see.
        let started = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let started = page(
                    &self.server,
                    "POST",
                    &format!("{path}/start"),
                    Some(&self.alice),
                    Some(&form(&self.alice, &[])),
                )
                .await;
                if started.status != StatusCode::CONFLICT
                    || !started.text.contains("already running on reader")
                {
                    return started;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the reader became free");
        assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
        job_of(started.location.as_deref().unwrap())
    }

    async fn post_pin(&self, job: JobId, fields: &[(&str, &str)]) -> Page {
        let path = format!("/portal/jobs/{job}/pin");
        page(&self.server, "POST", &path, Some(&self.alice), Some(&form(&self.alice, fields))).await
    }

    /// The job's page once the job has ended, as the browser is sent back to it.
    async fn ended(&self, job: JobId) -> Page {
        let path = format!("/portal/jobs/{job}");
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let seen = self.server.job(job).await;
                if seen.state != lanyard_core::model::JobState::Running
                    && seen.state != lanyard_core::model::JobState::Created
                {
                    let p = page(&self.server, "GET", &path, Some(&self.alice), None).await;
                    let now = self.server.job(job).await;
                    eprintln!(
                        "ended: saw {} {:?}; page read after: {} {:?}",
                        seen.state, seen.steps, now.state, now.steps
                    );
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the job ends")
    }

    /// Takes the card out once no session uses it, fresh as if pulled and put back.
    async fn take_card(&self) -> VCard {
        let mut card = tokio::time::timeout(HANG_GUARD, async {
            loop {
                if let Some(card) = self.ws.remove(READER) {
                    return card;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the card is free again");
        power_cycle(&mut card);
        card.select().unwrap();
        card
    }

    /// Puts the card back and waits until alice's agent reports it, issued and idle.
    async fn put_back(&self, card: VCard) {
        self.ws.insert(READER, card);
        let agents = self.server.get(&self.server.alice, "/api/v1/agents").await;
        let id = agents[0]["id"].as_str().unwrap().parse().unwrap();
        self.server
            .wait_for_agent(&self.server.alice, id, |a| {
                a["readers"][0]["card"]["verdict"] == "already_issued"
                    && a["readers"][0]["card"]["busy"].is_null()
            })
            .await;
    }

    /// The whole audit log as text, to look for PINs in.
    async fn audit_text(&self) -> String {
        let mut tx = self.server.db.db.read().await.unwrap();
        let events = tx.list_audit(&AuditQuery { limit: u32::MAX, ..Default::default() }).await.unwrap();
        serde_json::to_string(&events.iter().map(|e| serde_json::to_value(e).unwrap()).collect::<Vec<_>>())
            .unwrap()
    }
}

/// Whether `pin` opens the card (a wrong one uses up a try).
fn opens(card: &mut VCard, pin: &str) -> bool {
    match card.verify_pin(pin.as_bytes()) {
        Ok(()) => true,
        Err(PivError::WrongPin { .. }) => false,
        Err(e) => panic!("VERIFY: {e}"),
    }
}

/// *Change PIN*: the page finds alice's card; the PIN form checks the current PIN is there and
/// the new one meets the rules (never echoing a PIN); a wrong current PIN costs one try, is
/// shown with the tries left and changes nothing; a second job with the right PIN changes it, and
/// the card then opens with the new PIN only. Bob sees neither page nor job and cannot start one.
/// No PIN is in the audit log.
async fn change_pin(backend: Backend) {
    let r = rig(backend).await;
    let device_page = format!("/portal/devices/{}", r.device);
    let shown = page(&r.server, "GET", &device_page, Some(&r.alice), None).await;
    assert!(
        shown.text.contains(&format!("href=\"{device_page}/change-pin\">Change PIN</a>"))
            && shown.text.contains(&format!("href=\"{device_page}/unlock-pin\">Unlock PIN</a>")),
        "{}",
        shown.text
    );
    // Bob: the same 404 as a device that does not exist, for every page and form.
    for path in ["change-pin", "unlock-pin"] {
        let p = page(&r.server, "GET", &format!("{device_page}/{path}"), Some(&r.bob), None).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "bob GET {path}");
        for post in ["start", "refresh"] {
            let p = page(
                &r.server,
                "POST",
                &format!("{device_page}/{path}/{post}"),
                Some(&r.bob),
                Some(&form(&r.bob, &[])),
            )
            .await;
            assert_eq!(p.status, StatusCode::NOT_FOUND, "bob POST {path}/{post}");
        }
    }
    let no_token =
        page(&r.server, "POST", &format!("{device_page}/change-pin/start"), Some(&r.alice), Some("x=1"))
            .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);

    let job = r.start("change-pin").await;
    for path in [format!("/portal/jobs/{job}"), format!("/portal/jobs/{job}/events")] {
        let p = page(&r.server, "GET", &path, Some(&r.bob), None).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "bob, {path}");
    }
    let asking = wait_for_pin_form(&r.server, &r.alice, job).await;
    assert!(
        asking.text.contains("Changing your PIN")
            && asking.text.contains("id=\"current-pin\"")
            && asking.text.contains(">Change PIN</button>")
            && asking.text.contains(">Cancel</button>"),
        "{}",
        asking.text
    );
    // While it waits, the device page and the card page lead back to this session, so a holder
    // who left its page is not stuck with a busy card.
    let open = format!("<a href=\"/portal/jobs/{job}\">");
    let device = page(&r.server, "GET", &device_page, Some(&r.alice), None).await;
    assert!(
        device.text.contains("A PIN session on this card has not ended yet") && device.text.contains(&open)
    );
    let again = page(&r.server, "GET", &format!("{device_page}/change-pin"), Some(&r.alice), None).await;
    assert!(again.text.contains("but busy") && again.text.contains(&open), "{}", again.text);
    let full = |current: &'static str, new: &'static str, again: &'static str| {
        vec![("action", "set"), ("current_pin", current), ("new_pin", new), ("confirm_pin", again)]
    };
    let refusals = [
        (full("", SECOND_PIN, SECOND_PIN), "Type your current PIN."),
        (full(FIRST_PIN, "777777", "777777"), "PIN must not repeat one digit"),
        (full(FIRST_PIN, "24680", "24680"), "PIN must have at least 6 digits, got 5"),
        (full(FIRST_PIN, SECOND_PIN, "864200"), "The two PINs differ"),
        (full(FIRST_PIN, FIRST_PIN, FIRST_PIN), "The new PIN is the same as the current one"),
        (full("123456789", SECOND_PIN, SECOND_PIN), "8 characters at most"),
        (vec![("action", "skip")], "Choose Change PIN or Cancel."),
    ];
    for (fields, message) in refusals {
        let p = r.post_pin(job, &fields).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{fields:?}");
        assert!(p.text.contains(message), "{message}: {}", p.text);
        for pin in [FIRST_PIN, SECOND_PIN, "777777", "24680", "864200", "123456789"] {
            assert!(!p.text.contains(&format!("value=\"{pin}")), "no PIN is echoed back");
        }
        assert!(p.text.contains("id=\"pin-form\""), "the session still waits");
    }
    let p = page(
        &r.server,
        "POST",
        &format!("/portal/jobs/{job}/pin"),
        Some(&r.bob),
        Some(&form(&r.bob, &full(FIRST_PIN, SECOND_PIN, SECOND_PIN))),
    )
    .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "bob cannot answer alice's job");

    // A wrong current PIN: one try used, shown, nothing else changed.
    let wrong = r.post_pin(job, &full(WRONG_PIN, SECOND_PIN, SECOND_PIN)).await;
    assert_eq!(wrong.status, StatusCode::SEE_OTHER, "{}", wrong.text);
    let result = r.ended(job).await;
    assert!(
        result.text.contains("The current PIN is wrong")
            && result.text.contains("Not changed: the current PIN is wrong: 2 tries left")
            && !result.text.contains("the card session failed")
            && result.text.contains(&format!("href=\"{device_page}/change-pin\">Try again</a>"))
            && result.text.contains(&format!("href=\"{device_page}/unlock-pin\">unlock it")),
        "{}",
        result.text
    );
    let mut card = r.take_card().await;
    assert_eq!(card.pin_status().unwrap(), Some(2), "one try used up");
    assert!(opens(&mut card, FIRST_PIN), "the PIN is unchanged");
    r.put_back(card).await;

    // Try again with the right PIN.
    let job = r.start("change-pin").await;
    wait_for_pin_form(&r.server, &r.alice, job).await;
    let done = r.post_pin(job, &full(FIRST_PIN, SECOND_PIN, SECOND_PIN)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    let result = r.ended(job).await;
    assert!(result.text.contains("Your PIN is changed"), "{}", result.text);
    assert_eq!(r.server.device(r.device).await.state, DeviceState::Active);
    let again = r.post_pin(job, &full(FIRST_PIN, SECOND_PIN, SECOND_PIN)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "the session no longer waits");
    let mut card = r.take_card().await;
    assert!(!opens(&mut card, FIRST_PIN), "the old PIN no longer opens the card");
    assert!(opens(&mut card, SECOND_PIN), "the new PIN does");

    let audit = r.audit_text().await;
    assert_eq!(audit.matches("\"kind\":\"change_pin\"").count(), 2, "both jobs are audited: {audit}");
    for pin in [FIRST_PIN, SECOND_PIN, WRONG_PIN] {
        let hex = pin.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        assert!(!audit.contains(pin) && !audit.to_lowercase().contains(&hex), "PIN {pin} in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_pin_on_sqlite() {
    change_pin(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_pin_on_postgres() {
    change_pin(Backend::Postgres).await;
}

/// A blocked PIN: *Change PIN* stops at once with "the PIN is blocked" and a link to *Unlock
/// PIN*, which unblocks the card with the sealed PUK and sets the new PIN typed in the page (no
/// current PIN asked); the card then opens with it. No PIN is in the audit log.
async fn unlock_pin(backend: Backend) {
    let r = rig(backend).await;
    let device_page = format!("/portal/devices/{}", r.device);
    let mut card = r.take_card().await;
    while card.pin_status().unwrap() != Some(0) {
        assert!(!opens(&mut card, WRONG_PIN));
    }
    r.put_back(card).await;

    let job = r.start("change-pin").await;
    let blocked = r.ended(job).await;
    assert!(
        blocked.text.contains("The PIN is blocked")
            && blocked.text.contains(&format!("href=\"{device_page}/unlock-pin\">Unlock PIN</a>")),
        "{}",
        blocked.text
    );

    let job = r.start("unlock-pin").await;
    let asking = wait_for_pin_form(&r.server, &r.alice, job).await;
    assert!(
        asking.text.contains("Unlocking your PIN") && !asking.text.contains("id=\"current-pin\""),
        "{}",
        asking.text
    );
    let bad = r.post_pin(job, &[("action", "set"), ("new_pin", "123456"), ("confirm_pin", "123456")]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("must not be a run"), "{}", bad.text);
    let done =
        r.post_pin(job, &[("action", "set"), ("new_pin", THIRD_PIN), ("confirm_pin", THIRD_PIN)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    let result = r.ended(job).await;
    assert!(result.text.contains("Your PIN is unlocked"), "{}", result.text);
    let mut card = r.take_card().await;
    assert_eq!(card.pin_status().unwrap(), Some(3), "the tries are reset");
    assert!(opens(&mut card, THIRD_PIN), "the new PIN opens the card");

    let audit = r.audit_text().await;
    assert!(audit.contains("\"kind\":\"unlock\""), "the unlock job is audited");
    for pin in [FIRST_PIN, THIRD_PIN, WRONG_PIN] {
        let hex = pin.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        assert!(!audit.contains(pin) && !audit.to_lowercase().contains(&hex), "PIN {pin} in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_pin_on_sqlite() {
    unlock_pin(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_pin_on_postgres() {
    unlock_pin(Backend::Postgres).await;
}

/// Cancel on the PIN form ends the session with nothing changed, and the page says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pin_change_changes_nothing() {
    let r = rig(Backend::Sqlite).await;
    let job = r.start("change-pin").await;
    wait_for_pin_form(&r.server, &r.alice, job).await;
    let cancelled = r.post_pin(job, &[("action", "cancel")]).await;
    assert_eq!(cancelled.status, StatusCode::SEE_OTHER, "{}", cancelled.text);
    let result = r.ended(job).await;
    assert!(
        result.text.contains("The session stopped") && result.text.contains("The PIN was not changed"),
        "{}",
        result.text
    );
    let mut card = r.take_card().await;
    assert_eq!(card.pin_status().unwrap(), Some(3), "no try used");
    assert!(opens(&mut card, FIRST_PIN));
}
