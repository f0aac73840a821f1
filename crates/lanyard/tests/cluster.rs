//! Two real `lanyard serve` processes on one PostgreSQL database and one data directory behave
//! as one system (docs/deployment.md): a session or API token from one works on the other, the
//! login throttle counts across both, an issuance job started on one runs through the other, a
//! ticket raced through both servers is redeemed once, an agent linked to one server runs a job
//! started on the other, and a revocation made on one is answered by the other's OCSP and CRL.
//! Every check goes over HTTPS to the processes. PostgreSQL comes from
//! LANYARD_TEST_POSTGRES_URL (`scripts/test` installs and starts it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lanyard_agent::link::{Agent, LinkEvent, LinkOptions, PinSources};
use lanyard_agent::relay::{FixedPin, PinSource, SessionOptions, run_session_with};
use lanyard_core::clock::Clock;
use lanyard_store::Db;
use lanyard_testkit::card::factory_card;
use lanyard_testkit::tools::{openssl, write_pem};
use lanyard_testkit::{ServeProcess, SoftWorkstation, VCard, free_port};
use lanyard_vcard::AttestationRoot;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// A guard against hanging forever, not a measure: nothing asserts on durations.
const HANG_GUARD: Duration = Duration::from_secs(60);
const NEW_PIN: &str = "975319";
/// The PIN the holder types in the portal (the agent's own would be [`NEW_PIN`]).
const PORTAL_PIN: &str = "246801";

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A fresh PostgreSQL database of this test's own.
async fn postgres_database(tag: &str) -> String {
    let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL").expect(
        "LANYARD_TEST_POSTGRES_URL is not set: run scripts/test, which installs and starts PostgreSQL \
         and creates the lanyard_test role",
    );
    let name = format!("lanyard_cluster_{tag}_{}", std::process::id());
    let admin = Db::connect(&admin_url).await.expect("cannot reach PostgreSQL at LANYARD_TEST_POSTGRES_URL");
    let Db::Postgres(pool) = &admin else { panic!("LANYARD_TEST_POSTGRES_URL names no PostgreSQL database") };
    // The name is made of literals and a number, so it is safe to splice in.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(pool).await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// An HTTP answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Two servers on one database and one data directory.
struct Cluster {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    a: ServeProcess,
    b: ServeProcess,
    password: String,
    attestation: AttestationRoot,
}

impl Cluster {
    async fn start(tag: &str) -> Cluster {
        let url = postgres_database(tag).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let data = d.join("data");
        let attestation =
            AttestationRoot::open_or_create(&d.join("vcard"), lanyard_core::clock::SystemClock.now().into())
                .unwrap();
        let roots = attestation.certificate_pem_path().to_str().unwrap().to_owned();
        let bin = Path::new(env!("CARGO_BIN_EXE_lanyard"));
        let init = Command::new(bin)
            .arg("init")
            .env("LANYARD_DATA_DIR", &data)
            .env("LANYARD_DATABASE_URL", &url)
            .env("LANYARD_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(init.status.success(), "lanyard init: {}", text(&init));
        let out = text(&init);
        let password = out
            .split("Bootstrap administrator: admin / ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no bootstrap password: {out}"))
            .to_owned();
        let env = [("LANYARD_DATABASE_URL", url.as_str()), ("LANYARD_ATTESTATION_ROOTS", roots.as_str())];
        // One data directory for both: the same CA, key-encryption key and TLS certificate.
        let a = ServeProcess::start(bin, &data, free_port(), &env);
        let b = ServeProcess::start(bin, &data, free_port(), &env);
        Cluster { _dir: dir, dir: d, data, a, b, password, attestation }
    }

    fn root_pem(&self) -> PathBuf {
        self.data.join("ca/root.pem")
    }

    /// `method url` over HTTPS with curl, trusting only the cluster's root.
    fn call(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-i", "--cacert"]).arg(self.root_pem()).args(["-X", method]);
        for (name, value) in headers {
            cmd.args(["-H", &format!("{name}: {value}")]);
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("curl (apt-get install curl)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(b) = body {
                stdin.write_all(b).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl {method} {url}: {}", text(&out));
        let raw = out.stdout;
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status =
            lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer { status, headers, body: raw[split + 4..].to_vec() }
    }

    fn json(
        &self,
        server: &ServeProcess,
        method: &str,
        path: &str,
        auth: &[(&str, &str)],
        body: Value,
    ) -> Answer {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(auth);
        let body = body.to_string();
        self.call(method, &format!("{}{path}", server.url()), &headers, Some(body.as_bytes()))
    }

    fn get(&self, server: &ServeProcess, path: &str, auth: &[(&str, &str)]) -> Answer {
        self.call("GET", &format!("{}{path}", server.url()), auth, None)
    }

    fn login(&self, server: &ServeProcess, username: &str, password: &str) -> Answer {
        self.json(server, "POST", "/api/v1/login", &[], json!({"username": username, "password": password}))
    }

    /// An API token of the administrator, made on `server`.
    fn admin_token(&self, server: &ServeProcess) -> String {
        let login = self.login(server, "admin", &self.password);
        assert_eq!(login.status, 200, "{}", String::from_utf8_lossy(&login.body));
        let (cookie, csrf) = session_of(&login);
        let made = self.json(
            server,
            "POST",
            "/api/v1/tokens",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            json!({"name": "cluster test"}),
        );
        assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
        made.json()["token"].as_str().unwrap().to_owned()
    }

    fn card(&self) -> VCard {
        factory_card(&self.attestation)
    }

    /// Runs the agent's card session for `ticket` against `server` with `card`.
    async fn run_session(
        &self,
        server: &ServeProcess,
        ticket: &str,
        mut card: VCard,
    ) -> (bool, String, VCard) {
        let mut opts = SessionOptions::new(server.url(), ticket, "cluster reader");
        opts.ca_pem = Some(std::fs::read(self.root_pem()).unwrap());
        opts.read_timeout = HANG_GUARD;
        tokio::task::spawn_blocking(move || {
            let mut pins = FixedPin(Zeroizing::new(NEW_PIN.to_owned()));
            let outcome =
                run_session_with(&opts, card.transport_mut(), &lanyard_vcard::atr(), &mut pins, &mut |_| {});
            let said = format!("{outcome:?}");
            (outcome.is_ok(), said, card)
        })
        .await
        .unwrap()
    }
}

/// The session cookie (as a `Cookie` header value) and CSRF token a login answered.
fn session_of(login: &Answer) -> (String, String) {
    let set = login.header("set-cookie").expect("a session cookie");
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = login.json()["csrf_token"].as_str().unwrap().to_owned();
    (cookie, csrf)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_tokens_and_the_login_throttle_hold_across_two_servers() {
    let c = Cluster::start("auth").await;

    // A session from A works on B, and a logout on B ends it on A.
    let login = c.login(&c.a, "admin", &c.password);
    assert_eq!(login.status, 200);
    let (cookie, csrf) = session_of(&login);
    let me = c.get(&c.b, "/api/v1/me", &[("cookie", &cookie)]);
    assert_eq!(me.status, 200, "A's session on B: {}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["user"]["username"], "admin", "{}", me.json());
    let out =
        c.json(&c.b, "POST", "/api/v1/logout", &[("cookie", &cookie), ("x-csrf-token", &csrf)], json!({}));
    assert!(out.status < 300, "logout on B: {}", out.status);
    assert_eq!(c.get(&c.a, "/api/v1/me", &[("cookie", &cookie)]).status, 401, "the session ended on A too");

    // An API token made on A works on B; revoked on B, A refuses it.
    let token = c.admin_token(&c.a);
    let auth = bearer(&token);
    let tokens = c.get(&c.b, "/api/v1/tokens", &[("authorization", &auth)]);
    assert_eq!(tokens.status, 200);
    let id = tokens.json().as_array().unwrap().iter().find(|t| t["name"] == "cluster test").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked =
        c.call("DELETE", &format!("{}/api/v1/tokens/{id}", c.b.url()), &[("authorization", &auth)], None);
    assert!(revoked.status < 300, "revoke on B: {}", revoked.status);
    assert_eq!(
        c.get(&c.a, "/api/v1/me", &[("authorization", &auth)]).status,
        401,
        "revoked on B, refused by A"
    );

    // Five failed logins spread over both servers throttle the username on both.
    for (i, server) in [&c.a, &c.b, &c.a, &c.b, &c.a].into_iter().enumerate() {
        let failed = c.login(server, "Admin", "not the password");
        assert_eq!(failed.status, 401, "failure {i}");
    }
    for server in [&c.a, &c.b] {
        let throttled = c.login(server, "admin", &c.password);
        assert_eq!(throttled.status, 429, "even the right password waits, on either server");
        let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
        assert!(wait > 0 && wait <= 900, "{wait}");
    }
    // Another username is not affected.
    assert_eq!(c.login(&c.b, "nobody", "x").status, 401);
}

/// Issues a card through `server` for `ticket`, and answers its device id from the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuance_started_on_one_server_runs_through_the_other_and_a_raced_ticket_wins_once() {
    let c = Cluster::start("jobs").await;
    let token = c.admin_token(&c.a);
    let auth = bearer(&token);
    let auth = [("authorization", auth.as_str())];

    // Begun on A; a fresh ticket from B; the card session runs through B.
    let begun = c.json(
        &c.a,
        "POST",
        "/api/v1/issuance",
        &auth,
        json!({"kind": "usb_key", "model": "Lanyard virtual card"}),
    );
    assert_eq!(begun.status, 201, "{}", String::from_utf8_lossy(&begun.body));
    let job = begun.json()["job"]["id"].as_str().unwrap().to_owned();
    let ticket = c.json(&c.b, "POST", &format!("/api/v1/jobs/{job}/ticket"), &auth, json!({}));
    assert!(ticket.status < 300, "ticket from B: {}", String::from_utf8_lossy(&ticket.body));
    let ticket = ticket.json()["ticket"].as_str().unwrap().to_owned();
    let (ok, said, _card) = c.run_session(&c.b, &ticket, c.card()).await;
    assert!(ok, "the session through B: {said}");
    let seen = c.get(&c.a, &format!("/api/v1/jobs/{job}"), &auth).json();
    assert_eq!(seen["state"], "succeeded", "A sees the job B ran: {seen}");

    // One ticket, two cards, one session through each server at once: exactly one redeems it.
    let begun = c.json(
        &c.b,
        "POST",
        "/api/v1/issuance",
        &auth,
        json!({"kind": "usb_key", "model": "Lanyard virtual card"}),
    );
    assert_eq!(begun.status, 201, "{}", String::from_utf8_lossy(&begun.body));
    let job = begun.json()["job"]["id"].as_str().unwrap().to_owned();
    let device = begun.json()["device"]["id"].as_str().unwrap().to_owned();
    let ticket = begun.json()["ticket"].as_str().unwrap().to_owned();
    let (first, second) =
        tokio::join!(c.run_session(&c.a, &ticket, c.card()), c.run_session(&c.b, &ticket, c.card()));
    assert!(first.0 != second.0, "exactly one session may run: A {} / B {}", first.1, second.1);
    let loser = if first.0 { &second.1 } else { &first.1 };
    assert!(loser.contains("invalid or expired agent ticket"), "{loser}");
    let seen = c.get(&c.a, &format!("/api/v1/jobs/{job}"), &auth).json();
    assert_eq!(seen["state"], "succeeded", "{seen}");
    let credentials = c.get(&c.b, &format!("/api/v1/devices/{device}/credentials"), &auth).json();
    let serials: std::collections::BTreeSet<&str> =
        credentials.as_array().unwrap().iter().filter_map(|cr| cr["kind"]["serial_hex"].as_str()).collect();
    assert!(!serials.is_empty(), "{credentials}");
    assert_eq!(
        serials.len(),
        credentials.as_array().unwrap().len(),
        "one card's credentials, no duplicates: {credentials}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_linked_to_one_server_runs_a_job_started_on_the_other() {
    let c = Cluster::start("agent").await;
    let token = c.admin_token(&c.a);
    let auth_value = bearer(&token);
    let auth = [("authorization", auth_value.as_str())];

    // Paired through B, linked to A.
    let code = c.json(&c.b, "POST", "/api/v1/agents/pairing", &auth, json!({})).json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let paired =
        c.json(&c.b, "POST", "/api/v1/agents/pair", &auth, json!({"code": code, "host_name": "ws-cluster"}));
    assert_eq!(paired.status, 201, "{}", String::from_utf8_lossy(&paired.body));
    let agent_id = paired.json()["agent"]["id"].as_str().unwrap().to_owned();
    let credential = paired.json()["credential"].as_str().unwrap().to_owned();
    let workstation = SoftWorkstation::new();
    workstation.insert("Reader 0", c.card());
    let mut opts = LinkOptions::new(c.a.url(), credential, "ws-cluster");
    opts.ca_pem = Some(std::fs::read(c.root_pem()).unwrap());
    opts.session_read_timeout = HANG_GUARD;
    let pins: PinSources =
        Arc::new(|| -> Box<dyn PinSource + Send> { Box::new(FixedPin(Zeroizing::new(NEW_PIN.to_owned()))) });
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel::<LinkEvent>();
    let agent = Agent::new(opts, Arc::clone(&workstation), pins, Arc::new(move |e| drop(tx.send(e))));
    let stop = agent.stop_flag();
    let thread = std::thread::spawn(move || agent.run());

    // B sees the agent online, with the reader it reported to A.
    let online = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let list = c.get(&c.b, "/api/v1/agents", &auth).json();
            if let Some(entry) = list.as_array().unwrap().iter().find(|a| a["id"] == agent_id.as_str())
                && entry["online"] == true
                && entry["readers"].as_array().is_some_and(|r| r.iter().any(|r| r["card_present"] == true))
            {
                return entry.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("B never saw the agent linked to A");
    assert_eq!(
        online["agent_version"].as_str().map(|v| v.starts_with("lanyard-agent/")),
        Some(true),
        "{online}"
    );

    // A job begun on B, started on the agent through B: A sends the frame, the card is issued.
    let begun = c.json(
        &c.b,
        "POST",
        "/api/v1/issuance",
        &auth,
        json!({"kind": "usb_key", "model": "Lanyard virtual card"}),
    );
    assert_eq!(begun.status, 201, "{}", String::from_utf8_lossy(&begun.body));
    let job = begun.json()["job"]["id"].as_str().unwrap().to_owned();
    let started = c.json(
        &c.b,
        "POST",
        &format!("/api/v1/agents/{agent_id}/sessions"),
        &auth,
        json!({"job": job, "reader": "Reader 0"}),
    );
    assert_eq!(started.status, 202, "{}", String::from_utf8_lossy(&started.body));
    let ended = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let seen = c.get(&c.b, &format!("/api/v1/jobs/{job}"), &auth).json();
            if matches!(seen["state"].as_str(), Some("succeeded" | "failed" | "rolled_back")) {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the job never ended");
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let job_id: lanyard_core::ids::JobId = job.parse().unwrap();
    // The job's state is stored before the agent's own report of the session's end reaches
    // this test: wait for that report rather than look once.
    let ended_here = tokio::time::timeout(HANG_GUARD, async {
        while let Some(event) = events.recv().await {
            if matches!(&event, LinkEvent::SessionEnded { job, error: None, .. } if *job == job_id) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(ended_here, "the agent linked to A ran the session B started");

    // The new PIN typed in the portal through B reaches the session A runs: the question is
    // seen on B, a PIN against the rules is refused by B, the holder's PIN lands on the card.
    workstation.insert("Reader 1", c.card());
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let list = c.get(&c.b, "/api/v1/agents", &auth).json();
            let reported = list.as_array().unwrap().iter().any(|a| {
                a["id"] == agent_id.as_str()
                    && a["readers"].as_array().is_some_and(|r| {
                        r.iter().any(|r| r["name"] == "Reader 1" && r["card_present"] == true)
                    })
            });
            if reported {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("B never saw the agent's new card");
    let begun = c.json(
        &c.b,
        "POST",
        "/api/v1/issuance",
        &auth,
        json!({"kind": "usb_key", "model": "Lanyard virtual card"}),
    );
    assert_eq!(begun.status, 201, "{}", String::from_utf8_lossy(&begun.body));
    let job = begun.json()["job"]["id"].as_str().unwrap().to_owned();
    let body = json!({"job": job, "reader": "Reader 1", "new_pin_from": "portal"});
    let started = c.json(&c.b, "POST", &format!("/api/v1/agents/{agent_id}/sessions"), &auth, body);
    assert_eq!(started.status, 202, "{}", String::from_utf8_lossy(&started.body));
    let wanted = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let seen = c.get(&c.b, &format!("/api/v1/jobs/{job}"), &auth).json();
            if !seen["pin_wanted"].is_null() {
                return seen["pin_wanted"].clone();
            }
            assert!(seen["state"] != "failed", "{seen}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("B never saw the session on A ask for the PIN");
    assert!(wanted["seconds_left"].as_u64().is_some_and(|s| s > 0), "{wanted}");
    let pin_path = format!("/api/v1/jobs/{job}/pin");
    let refused = c.json(&c.b, "POST", &pin_path, &auth, json!({"new_pin": "111111"}));
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    assert!(
        refused.json()["error"].as_str().is_some_and(|e| e.starts_with("new_pin: ")),
        "{}",
        refused.json()
    );
    let given = c.json(&c.b, "POST", &pin_path, &auth, json!({"new_pin": PORTAL_PIN}));
    assert_eq!(given.status, 202, "{}", String::from_utf8_lossy(&given.body));
    let ended = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let seen = c.get(&c.a, &format!("/api/v1/jobs/{job}"), &auth).json();
            if matches!(seen["state"].as_str(), Some("succeeded" | "failed" | "rolled_back")) {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the job never ended");
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let again = c.json(&c.b, "POST", &pin_path, &auth, json!({"new_pin": PORTAL_PIN}));
    assert_eq!(again.status, 409, "the session no longer waits");
    let taken = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(card) = workstation.remove("Reader 1") {
                return card;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the card is back in its reader");
    let mut card = taken;
    lanyard_testkit::power_cycle(&mut card);
    assert!(card.verify_pin(NEW_PIN.as_bytes()).is_err(), "the agent's own PIN was not used");
    lanyard_testkit::power_cycle(&mut card);
    card.verify_pin(PORTAL_PIN.as_bytes()).expect("the PIN typed through B opens the card");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(thread);
}

/// The revocation points of issue 12: a revocation made on A is answered by B's OCSP and CRL at
/// once, and cRLNumber grows strictly across both servers. (They depend on the revocation epoch
/// and the database cRLNumber of the `revocation` branch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_server_is_answered_by_the_other_and_crl_numbers_grow_across_both() {
    let c = Cluster::start("revoke").await;
    let token = c.admin_token(&c.a);
    let auth_value = bearer(&token);
    let auth = [("authorization", auth_value.as_str())];
    let begun = c.json(
        &c.a,
        "POST",
        "/api/v1/issuance",
        &auth,
        json!({"kind": "usb_key", "model": "Lanyard virtual card"}),
    );
    assert_eq!(begun.status, 201, "{}", String::from_utf8_lossy(&begun.body));
    let device = begun.json()["device"]["id"].as_str().unwrap().to_owned();
    let ticket = begun.json()["ticket"].as_str().unwrap().to_owned();
    let (ok, said, mut card) = c.run_session(&c.a, &ticket, c.card()).await;
    assert!(ok, "{said}");

    let d = &c.dir;
    let issuing = c.get(&c.a, "/pki/ca.crt", &[]);
    let ca_pem = write_pem(&d.join("ca.pem"), "CERTIFICATE", &issuing.body);
    let root_pem = c.root_pem();
    let chain = d.join("chain.pem");
    std::fs::write(&chain, [std::fs::read(&ca_pem).unwrap(), std::fs::read(&root_pem).unwrap()].concat())
        .unwrap();
    let certs = lanyard_testkit::card_certificates(&mut card);
    let (_, der) = certs.iter().next().expect("the card holds a certificate");
    let cert_pem = write_pem(&d.join("cert.pem"), "CERTIFICATE", der);
    let serial = openssl(&["x509", "-in", &cert_pem, "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_uppercase();

    let ocsp = |server: &ServeProcess, name: &str| -> String {
        let req = d.join(format!("{name}.req"));
        let resp = d.join(format!("{name}.resp"));
        openssl(&[
            "ocsp",
            "-issuer",
            &ca_pem,
            "-cert",
            &cert_pem,
            "-no_nonce",
            "-reqout",
            req.to_str().unwrap(),
        ]);
        let answer = c.call(
            "POST",
            &format!("{}/pki/ocsp", server.url()),
            &[("content-type", "application/ocsp-request")],
            Some(&std::fs::read(&req).unwrap()),
        );
        assert_eq!(answer.status, 200);
        std::fs::write(&resp, &answer.body).unwrap();
        openssl(&[
            "ocsp",
            "-respin",
            resp.to_str().unwrap(),
            "-issuer",
            &ca_pem,
            "-cert",
            &cert_pem,
            "-CAfile",
            chain.to_str().unwrap(),
            "-no_nonce",
        ])
    };
    let crl = |server: &ServeProcess, name: &str| -> (u64, String) {
        let path = d.join(format!("{name}.crl"));
        std::fs::write(&path, c.get(server, "/pki/crl", &[]).body).unwrap();
        let out = openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            path.to_str().unwrap(),
            "-noout",
            "-text",
            "-CAfile",
            chain.to_str().unwrap(),
        ]);
        let number = out
            .lines()
            .skip_while(|l| !l.contains("X509v3 CRL Number"))
            .nth(1)
            .map(str::trim)
            .and_then(|n| {
                n.parse::<u64>().ok().or_else(|| u64::from_str_radix(n.trim_start_matches("0x"), 16).ok())
            })
            .unwrap_or_else(|| panic!("no CRL number: {out}"));
        (number, out.to_uppercase().replace(':', ""))
    };

    // Both servers say good and have built a CRL.
    for (server, name) in [(&c.a, "a0"), (&c.b, "b0")] {
        let said = ocsp(server, name);
        assert!(said.contains(": good"), "{name}: {said}");
    }
    let (a0, _) = crl(&c.a, "a0");
    let (b0, _) = crl(&c.b, "b0");

    // Revoked through A (the whole device); B answers revoked at once.
    let revoked = c.json(
        &c.a,
        "POST",
        &format!("/api/v1/devices/{device}/revoke"),
        &auth,
        json!({"reason": "key_compromise"}),
    );
    assert!(revoked.status < 300, "{}", String::from_utf8_lossy(&revoked.body));
    let said = ocsp(&c.b, "b1");
    assert!(said.contains(": revoked"), "B's OCSP after A's revocation: {said}");
    let (b1, b1_text) = crl(&c.b, "b1");
    assert!(b1_text.contains(&serial), "B's CRL lists {serial}: {b1_text}");
    let (a1, a1_text) = crl(&c.a, "a1");
    assert!(a1_text.contains(&serial), "A's CRL lists {serial}");
    // Strictly growing across both servers: each new CRL has a number above every earlier one.
    assert!(b1 > a0.max(b0), "B's CRL after the revocation: {b1} vs earlier {a0}, {b0}");
    assert!(a1 > a0.max(b0), "A's CRL after the revocation: {a1} vs earlier {a0}, {b0}");
    assert!(a1 != b1 || a1_text == b1_text, "two different CRLs under one number {a1}");
}
