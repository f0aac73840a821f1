//! The PKI endpoints end to end: a server on 127.0.0.1:0 over the real SQLite store, judged by
//! `openssl ocsp -url` and `openssl crl -verify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::Request;
use lanyard_ca::{CertificateProfile, IssueRequest, KeyAlgorithm, SanInput, SoftwareKey, parse_dn};
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::ids::GroupId;
use lanyard_core::lifecycle::{CredentialAction, RevocationReason, apply_credential};
use lanyard_core::model::{CertSlot, Credential, CredentialKind, Device, DeviceKind, Group, Policy};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use lanyard_testkit::tools::{command, openssl, pem};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

struct Issued {
    pem_path: String,
    credential: Credential,
}

fn issue(pki: &Pki, dir: &Path, name: &str, device: &Device) -> Issued {
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
    let serial = cert.certificate.tbs_certificate.serial_number.as_bytes();
    let start = serial.iter().position(|b| *b != 0).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem("CERTIFICATE", &cert.der)).unwrap();
    let mut credential = Credential::new(
        device.id,
        CredentialKind::Certificate {
            slot: CertSlot::PivAuthentication,
            profile: "piv-authentication".into(),
            serial_hex: hex::encode(&serial[start..]),
            not_before: now,
            not_after: now + time::Duration::days(30),
            certificate_der: cert.der.clone(),
            attestation_der: None,
        },
        now,
    );
    apply_credential(&mut credential, CredentialAction::Activate, now).unwrap();
    Issued { pem_path: path.to_string_lossy().into_owned(), credential }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_and_crl_report_good_revoked_held_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::connect(&format!("sqlite://{}", d.join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();

    // The CA's URLs name the server, so bind first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let pki =
        Pki::create(&d.join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, &base, SystemClock.now()).unwrap();

    let now = SystemClock.now();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy: Policy::default() };
    let device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    let good = issue(&pki, d, "good", &device);
    let mut revoked = issue(&pki, d, "revoked", &device);
    let mut held = issue(&pki, d, "held", &device);
    let unknown = issue(&pki, d, "unknown", &device); // issued but never recorded
    // Issued for a card whose personalization is not confirmed yet: still Pending.
    let mut pending = issue(&pki, d, "pending", &device);
    pending.credential = Credential::new(device.id, pending.credential.kind.clone(), now);
    apply_credential(&mut revoked.credential, CredentialAction::Revoke(RevocationReason::KeyCompromise), now)
        .unwrap();
    apply_credential(&mut held.credential, CredentialAction::Hold, now).unwrap();
    {
        let mut tx = db.begin().await.unwrap();
        tx.insert_group(&group).await.unwrap();
        tx.insert_device(&device).await.unwrap();
        for c in [&good, &revoked, &held, &pending] {
            tx.insert_credential(&c.credential).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    let root = d.join("root.pem");
    let issuing = d.join("issuing.pem");
    let chain = d.join("chain.pem");
    std::fs::write(&root, pem("CERTIFICATE", pki.root.certificate_der())).unwrap();
    std::fs::write(&issuing, pem("CERTIFICATE", pki.issuing.certificate_der())).unwrap();
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            pem("CERTIFICATE", pki.issuing.certificate_der()),
            pem("CERTIFICATE", pki.root.certificate_der())
        ),
    )
    .unwrap();
    let (root, issuing, chain) = (root.to_str().unwrap(), issuing.to_str().unwrap(), chain.to_str().unwrap());

    let state = AppState::new(Arc::new(db), Arc::new(pki), Arc::new(SystemClock));
    let app = router(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let url = format!("{base}/pki/ocsp");
    let ask = |cert: String| {
        let url = url.clone();
        let (issuing, chain) = (issuing.to_owned(), chain.to_owned());
        tokio::task::spawn_blocking(move || {
            openssl(&[
                "ocsp",
                "-issuer",
                &issuing,
                "-cert",
                &cert,
                "-url",
                &url,
                "-CAfile",
                &chain,
                "-resp_text",
            ])
        })
    };
    let out = ask(good.pem_path.clone()).await.unwrap();
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(&format!("{}: good", good.pem_path)), "{out}");
    let out = ask(revoked.pem_path.clone()).await.unwrap();
    assert!(out.contains(&format!("{}: revoked", revoked.pem_path)), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    let out = ask(held.pem_path.clone()).await.unwrap();
    assert!(out.contains(&format!("{}: revoked", held.pem_path)), "{out}");
    assert!(out.contains("Reason: certificateHold"), "{out}");
    let out = ask(pending.pem_path.clone()).await.unwrap();
    assert!(out.contains(&format!("{}: revoked", pending.pem_path)), "{out}");
    assert!(out.contains("Reason: certificateHold"), "a pending certificate is on hold: {out}");
    let out = ask(unknown.pem_path.clone()).await.unwrap();
    assert!(out.contains(&format!("{}: unknown", unknown.pem_path)), "{out}");
    // The nonce openssl sends by default is echoed (openssl checks it; -no_nonce is not needed).
    assert!(!out.contains("WARNING: no nonce in response"), "{out}");

    // GET form (RFC 6960 A.1) through the router in-process, with a request made by openssl.
    let req_path = d.join("good.req");
    openssl(&[
        "ocsp",
        "-issuer",
        issuing,
        "-cert",
        &good.pem_path,
        "-reqout",
        req_path.to_str().unwrap(),
        "-no_nonce",
    ]);
    let req_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req_path).unwrap())
    };
    let resp = router(state.clone())
        .oneshot(Request::get(format!("/pki/ocsp/{req_b64}")).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // OCSP is served on its lean route, without an operation id (docs/revocation.md).
    assert!(!resp.headers().contains_key("x-operation-id"));
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let resp_path = d.join("good.resp");
    std::fs::write(&resp_path, &body).unwrap();
    let out = openssl(&[
        "ocsp",
        "-respin",
        resp_path.to_str().unwrap(),
        "-issuer",
        issuing,
        "-cert",
        &good.pem_path,
        "-CAfile",
        chain,
        "-no_nonce",
    ]);
    assert!(out.contains(": good"), "{out}");

    // Garbage gets an OCSP malformedRequest, not an HTTP error or a panic.
    let resp = router(state.clone())
        .oneshot(Request::post("/pki/ocsp").body(Body::from(vec![0x30, 0x03, 0x02, 0x01])).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    assert_eq!(&body[..], &[0x30, 0x03, 0x0A, 0x01, 0x01], "malformedRequest");

    // The CRL verifies against the chain and lists exactly the revoked and held serials.
    let resp =
        router(state.clone()).oneshot(Request::get("/pki/crl").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let crl = d.join("crl.der");
    std::fs::write(&crl, &body).unwrap();
    let crl = crl.to_str().unwrap();
    let out = openssl(&["crl", "-inform", "DER", "-in", crl, "-CAfile", chain, "-verify", "-noout"]);
    assert!(out.contains("verify OK"), "{out}");
    let text = openssl(&["crl", "-inform", "DER", "-in", crl, "-noout", "-text"]).to_uppercase();
    let serial_of = |c: &Issued| match &c.credential.kind {
        CredentialKind::Certificate { serial_hex, .. } => serial_hex.to_uppercase(),
    };
    assert!(text.contains(&serial_of(&revoked)) && text.contains("KEY COMPROMISE"), "{text}");
    assert!(text.contains(&serial_of(&held)) && text.contains("CERTIFICATE HOLD"), "{text}");
    assert!(text.contains(&serial_of(&pending)), "pending certificates are listed on hold: {text}");
    assert!(!text.contains(&serial_of(&good)), "{text}");
    assert!(text.contains("NEXT UPDATE"), "{text}");

    // The root's CRL (where the issuing CA's certificate points) completes a full CRL check.
    let resp = router(state.clone())
        .oneshot(Request::get("/pki/root.crl").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let root_crl = d.join("root-crl.der");
    std::fs::write(&root_crl, &body).unwrap();
    let root_crl = root_crl.to_str().unwrap();
    let out = openssl(&["crl", "-inform", "DER", "-in", root_crl, "-CAfile", chain, "-verify", "-noout"]);
    assert!(out.contains("verify OK"), "{out}");
    let crls = d.join("crls.pem");
    let crl_pem = |p: &str| openssl(&["crl", "-inform", "DER", "-in", p]);
    std::fs::write(&crls, format!("{}{}", crl_pem(crl), crl_pem(root_crl))).unwrap();
    let check = |c: &Issued| {
        let args =
            ["verify", "-crl_check_all", "-CRLfile", crls.to_str().unwrap(), "-CAfile", chain, &c.pem_path];
        command("openssl", &args, None).text()
    };
    assert!(check(&good).contains(": OK"), "{}", check(&good));
    assert!(check(&revoked).contains("certificate revoked"), "{}", check(&revoked));

    // The CA certificates are published where the AIA points.
    let resp = router(state).oneshot(Request::get("/pki/ca.crt").body(Body::empty()).unwrap()).await.unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let _ = root;
    assert_eq!(&body[..], &std::fs::read(d.join("ca/issuing.crt")).unwrap()[..]);
    server.abort();
}

/// A plain HTTP/1.1 exchange over a real socket (`Connection: close`): the status, the
/// `x-operation-id` header and the body.
fn http_raw(addr: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let op = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-operation-id")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap();
    (status, op, raw[split + 4..].to_vec())
}

/// [`http_raw`] with a JSON body (null when empty).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let (status, op, body) = http_raw(addr, method, path, token, body.unwrap_or(""));
    let json = if body.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&body).unwrap() };
    (status, op, json)
}

/// What the API-driven PKI tests share: a migrated SQLite store, a bound listener, the CA (whose
/// URLs name that listener), and a cardholder (alice) and an operator (oscar) with API tokens.
struct Setup {
    dir: tempfile::TempDir,
    db: Db,
    listener: tokio::net::TcpListener,
    addr: String,
    base: String,
    pki: Pki,
    now: time::OffsetDateTime,
    group: Group,
    alice: lanyard_core::model::User,
    oscar: lanyard_core::model::User,
    alice_token: lanyard_core::model::ApiToken,
    alice_secret: secrecy::SecretString,
    oscar_token: lanyard_core::model::ApiToken,
    oscar_secret: secrecy::SecretString,
}

/// A user of `group` with exactly `role`.
fn person(
    name: &str,
    role: lanyard_core::model::Role,
    group: GroupId,
    now: time::OffsetDateTime,
) -> lanyard_core::model::User {
    use lanyard_core::model::{User, Username};
    let mut u = User::new(Username::parse(name).unwrap(), name, group, now).unwrap();
    u.roles = [role].into_iter().collect();
    u
}

async fn setup() -> Setup {
    use lanyard_core::model::{ApiToken, Role};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::connect(&format!("sqlite://{}", d.join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let base = format!("http://{addr}");
    let pki =
        Pki::create(&d.join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, &base, SystemClock.now()).unwrap();
    let now = SystemClock.now();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy: Policy::default() };
    let (alice, oscar) =
        (person("alice", Role::User, group.id, now), person("oscar", Role::Operator, group.id, now));
    let (alice_token, alice_secret) = ApiToken::issue(alice.id, "t", None, now).unwrap();
    let (oscar_token, oscar_secret) = ApiToken::issue(oscar.id, "t", None, now).unwrap();
    Setup {
        dir,
        db,
        listener,
        addr,
        base,
        pki,
        now,
        group,
        alice,
        oscar,
        alice_token,
        alice_secret,
        oscar_token,
        oscar_secret,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_holds_releases_and_revokes_a_credential_and_ocsp_and_the_crl_follow() {
    use lanyard_core::audit::{Actor, AuditEvent};
    use lanyard_core::lifecycle::{CredentialState, DeviceState};
    use lanyard_core::model::{ApiToken, Role};
    use lanyard_core::repo::AuditQuery;
    use secrecy::ExposeSecret;

    let Setup {
        dir,
        db,
        listener,
        addr,
        base,
        pki,
        now,
        group,
        alice,
        oscar,
        alice_token,
        alice_secret,
        oscar_token,
        oscar_secret,
    } = setup().await;
    let d = dir.path();
    let mut device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    device.owner = Some(alice.id);
    device.state = DeviceState::Active;
    let cert = issue(&pki, d, "alice", &device);
    {
        let mut tx = db.begin().await.unwrap();
        tx.insert_group(&group).await.unwrap();
        for u in [&alice, &oscar] {
            tx.insert_user(u).await.unwrap();
        }
        tx.insert_api_token(&alice_token).await.unwrap();
        tx.insert_api_token(&oscar_token).await.unwrap();
        tx.insert_device(&device).await.unwrap();
        tx.insert_credential(&cert.credential).await.unwrap();
        tx.commit().await.unwrap();
    }
    let (alice_secret, oscar_secret) =
        (alice_secret.expose_secret().to_owned(), oscar_secret.expose_secret().to_owned());
    let issuing = d.join("issuing.pem");
    let chain = d.join("chain.pem");
    std::fs::write(&issuing, pem("CERTIFICATE", pki.issuing.certificate_der())).unwrap();
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            pem("CERTIFICATE", pki.issuing.certificate_der()),
            pem("CERTIFICATE", pki.root.certificate_der())
        ),
    )
    .unwrap();
    let (issuing, chain) = (issuing.to_str().unwrap().to_owned(), chain.to_str().unwrap().to_owned());

    let db = Arc::new(db);
    let state = AppState::new(Arc::clone(&db), Arc::new(pki), Arc::new(SystemClock));
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });

    let call = |method: &'static str, path: String, token: String, body: Option<&'static str>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || http(&addr, method, &path, &token, body))
    };
    let ocsp = || {
        let (url, issuing, chain, cert) =
            (format!("{base}/pki/ocsp"), issuing.clone(), chain.clone(), cert.pem_path.clone());
        tokio::task::spawn_blocking(move || {
            openssl(&["ocsp", "-issuer", &issuing, "-cert", &cert, "-url", &url, "-CAfile", &chain])
        })
    };
    let state_of = async |db: &Db| {
        db.begin().await.unwrap().get_credential(cert.credential.id).await.unwrap().unwrap().state
    };
    let events = async |db: &Db| -> Vec<AuditEvent> {
        let mut tx = db.begin().await.unwrap();
        tx.list_audit(&AuditQuery { after_seq: 0, target: None, limit: 1000, ..Default::default() })
            .await
            .unwrap()
    };
    let id = cert.credential.id;
    let good = format!("{}: good", cert.pem_path);
    let revoked = format!("{}: revoked", cert.pem_path);

    // The owner and the operator see the credential; it is good.
    let (status, _, list) =
        call("GET", format!("/api/v1/devices/{}/credentials", device.id), alice_secret.clone(), None)
            .await
            .unwrap();
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["id"], id.to_string());
    let (status, _, _) =
        call("GET", format!("/api/v1/devices/{}/credentials", device.id), oscar_secret.clone(), None)
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(ocsp().await.unwrap().contains(&good));

    // A cardholder may not revoke, not even their own certificate: 403, nothing changes.
    let (status, _, body) = call(
        "POST",
        format!("/api/v1/credentials/{id}/revoke"),
        alice_secret.clone(),
        Some(r#"{"reason": "key_compromise"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden: this requires the operator role");
    assert_eq!(state_of(&db).await, CredentialState::Active);
    assert!(events(&db).await.is_empty());

    // Each change answers the credential and writes exactly one audit event with the request's
    // operation id, the operator's token as the actor, and the states before and after.
    let expect_event = async |count: usize, op: &str, action: &str, from: &str, to: &str| {
        let all = events(&db).await;
        assert_eq!(all.len(), count, "{all:?}");
        let e = all.last().unwrap();
        assert_eq!(e.action, action);
        assert_eq!(e.operation_id, op);
        assert_eq!(e.actor, Actor::ApiToken { id: oscar_token.id });
        assert_eq!(e.target.as_deref(), Some(format!("credential:{id}").as_str()));
        assert_eq!(e.before.as_ref().unwrap()["state"], from);
        assert_eq!(e.after.as_ref().unwrap()["state"], to);
    };

    let (status, op, body) =
        call("POST", format!("/api/v1/credentials/{id}/hold"), oscar_secret.clone(), None).await.unwrap();
    assert_eq!((status, body["state"].as_str()), (200, Some("on_hold")), "{body}");
    expect_event(1, &op, "credential.hold", "active", "on_hold").await;
    let out = ocsp().await.unwrap();
    assert!(out.contains(&revoked) && out.contains("Reason: certificateHold"), "{out}");

    // Holding twice is an illegal transition: 409 with the lifecycle's message, no event.
    let (status, _, body) =
        call("POST", format!("/api/v1/credentials/{id}/hold"), oscar_secret.clone(), None).await.unwrap();
    assert_eq!(status, 409);
    assert_eq!(
        body["error"], "illegal transition: hold is not allowed for a credential in state on_hold",
        "{body}"
    );
    assert_eq!(events(&db).await.len(), 1);

    let (status, op, body) =
        call("POST", format!("/api/v1/credentials/{id}/release"), oscar_secret.clone(), None).await.unwrap();
    assert_eq!((status, body["state"].as_str()), (200, Some("active")), "{body}");
    expect_event(2, &op, "credential.release", "on_hold", "active").await;
    assert!(ocsp().await.unwrap().contains(&good));

    // An unknown reason is a 400 naming the accepted ones.
    let (status, _, body) = call(
        "POST",
        format!("/api/v1/credentials/{id}/revoke"),
        oscar_secret.clone(),
        Some(r#"{"reason": "bored"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("\"bored\"") && message.contains("key_compromise, affiliation_changed"),
        "{message}"
    );
    assert_eq!(state_of(&db).await, CredentialState::Active);

    let (status, op, body) = call(
        "POST",
        format!("/api/v1/credentials/{id}/revoke"),
        oscar_secret.clone(),
        Some(r#"{"reason": "key_compromise"}"#),
    )
    .await
    .unwrap();
    assert_eq!((status, body["state"].as_str()), (200, Some("revoked")), "{body}");
    assert_eq!(body["revocation_reason"], "key_compromise");
    expect_event(3, &op, "credential.revoke", "active", "revoked").await;
    let out = ocsp().await.unwrap();
    assert!(out.contains(&revoked) && out.contains("Reason: keyCompromise"), "{out}");

    // Revoked is final: release is a 409.
    let (status, _, body) =
        call("POST", format!("/api/v1/credentials/{id}/release"), oscar_secret.clone(), None).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(events(&db).await.len(), 3);

    // The CRL lists the serial as a key compromise.
    let crl_path = d.join("crl.der");
    let crl = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || http_raw(&addr, "GET", "/pki/crl", "", "")).await.unwrap()
    };
    assert_eq!(crl.0, 200);
    let crl = crl.2;
    std::fs::write(&crl_path, &crl).unwrap();
    let crl_path = crl_path.to_str().unwrap();
    let out = openssl(&["crl", "-inform", "DER", "-in", crl_path, "-CAfile", &chain, "-verify", "-noout"]);
    assert!(out.contains("verify OK"), "{out}");
    let text = openssl(&["crl", "-inform", "DER", "-in", crl_path, "-noout", "-text"]).to_uppercase();
    let CredentialKind::Certificate { serial_hex, .. } = &cert.credential.kind;
    assert!(text.contains(&serial_hex.to_uppercase()) && text.contains("KEY COMPROMISE"), "{text}");

    // Someone else's device's credentials are a 404 for a cardholder.
    let bob_view = person("bob", Role::User, group.id, now);
    let (bob_token, bob_secret) = ApiToken::issue(bob_view.id, "t", None, now).unwrap();
    {
        let mut tx = db.begin().await.unwrap();
        tx.insert_user(&bob_view).await.unwrap();
        tx.insert_api_token(&bob_token).await.unwrap();
        tx.commit().await.unwrap();
    }
    let (status, _, _) = call(
        "GET",
        format!("/api/v1/devices/{}/credentials", device.id),
        bob_secret.expose_secret().to_owned(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_issues_a_certificate_from_a_csr() {
    use lanyard_core::audit::AuditEvent;
    use lanyard_core::lifecycle::DeviceState;
    use lanyard_core::repo::{AuditQuery, CredentialQuery};
    use secrecy::ExposeSecret;

    let Setup {
        dir,
        db,
        listener,
        addr,
        base,
        pki,
        now,
        group,
        alice,
        oscar,
        alice_token,
        alice_secret,
        oscar_token,
        oscar_secret,
    } = setup().await;
    let d = dir.path();
    let mut card = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    card.owner = Some(alice.id);
    card.state = DeviceState::Active;
    card.card_guid = Some([0x42; 16]);
    let mut blank = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    blank.owner = Some(alice.id);
    blank.state = DeviceState::Active;
    {
        let mut tx = db.begin().await.unwrap();
        tx.insert_group(&group).await.unwrap();
        tx.insert_user(&alice).await.unwrap();
        tx.insert_user(&oscar).await.unwrap();
        tx.insert_api_token(&alice_token).await.unwrap();
        tx.insert_api_token(&oscar_token).await.unwrap();
        tx.insert_device(&card).await.unwrap();
        tx.insert_device(&blank).await.unwrap();
        tx.commit().await.unwrap();
    }
    let (alice_secret, oscar_secret) =
        (alice_secret.expose_secret().to_owned(), oscar_secret.expose_secret().to_owned());
    let root = d.join("root.pem");
    let issuing = d.join("issuing.pem");
    let chain = d.join("chain.pem");
    std::fs::write(&root, pem("CERTIFICATE", pki.root.certificate_der())).unwrap();
    std::fs::write(&issuing, pem("CERTIFICATE", pki.issuing.certificate_der())).unwrap();
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            pem("CERTIFICATE", pki.issuing.certificate_der()),
            pem("CERTIFICATE", pki.root.certificate_der())
        ),
    )
    .unwrap();
    let (root, issuing, chain) = (
        root.to_str().unwrap().to_owned(),
        issuing.to_str().unwrap().to_owned(),
        chain.to_str().unwrap().to_owned(),
    );

    // A CSR as openssl makes it.
    let key = d.join("key.pem");
    let csr_path = d.join("req.pem");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=x",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr_path.to_str().unwrap(),
    ]);
    let csr = std::fs::read_to_string(&csr_path).unwrap();
    // The same request with its subject changed from x to y: the signature no longer verifies.
    let tampered = {
        let (_, der) = der::pem::decode_vec(csr.as_bytes()).unwrap();
        let mut der = der;
        let at = der.windows(6).position(|w| w == [0x55, 0x04, 0x03, 0x0c, 0x01, b'x']).unwrap();
        der[at + 5] = b'y';
        pem("CERTIFICATE REQUEST", &der)
    };

    let db = Arc::new(db);
    let state = AppState::new(Arc::clone(&db), Arc::new(pki), Arc::new(SystemClock));
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let call = |path: String, token: String, body: String| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let (status, op, body) = http_raw(&addr, "POST", &path, &token, &body);
            (status, op, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        })
    };
    let request = |csr: &str, profile: &str, slot: &str| {
        serde_json::json!({"csr_pem": csr, "profile": profile, "slot": slot}).to_string()
    };
    let stored = async |db: &Db| -> (usize, Vec<AuditEvent>) {
        let mut tx = db.begin().await.unwrap();
        let creds =
            tx.list_credentials(&CredentialQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let events = tx
            .list_audit(&AuditQuery { after_seq: 0, target: None, limit: 1000, ..Default::default() })
            .await
            .unwrap();
        (creds.len(), events)
    };
    let path = format!("/api/v1/devices/{}/certificates", card.id);

    // A cardholder may not issue: 403 before anything is read.
    let (status, _, body) =
        call(path.clone(), alice_secret.clone(), request(&csr, "piv-auth", "9a")).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden: this requires the operator role");

    // A tampered CSR is a 400 with the CSR parser's message; nothing is stored.
    let (status, _, body) =
        call(path.clone(), oscar_secret.clone(), request(&tampered, "piv-auth", "9a")).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "csr_pem: the certificate request signature does not verify");
    // A card profile on a card without a card UUID is a 400 saying so.
    let (status, _, body) = call(
        format!("/api/v1/devices/{}/certificates", blank.id),
        oscar_secret.clone(),
        request(&csr, "piv-auth", "9a"),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("needs the card UUID"), "{body}");
    let (status, _, body) =
        call(path.clone(), oscar_secret.clone(), request(&csr, "root-ca", "9a")).await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (count, events) = stored(&db).await;
    assert_eq!((count, events.len()), (0, 0));

    // The operator issues: 201, an Active credential, one audit event with the operation id.
    let (status, op, body) =
        call(path.clone(), oscar_secret.clone(), request(&csr, "piv-auth", "9a")).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let credential = &body["credential"];
    assert_eq!(credential["state"], "active");
    assert_eq!(credential["device"], card.id.to_string());
    assert_eq!(credential["kind"]["slot"], "9a");
    assert_eq!(credential["kind"]["profile"], "piv-auth");
    let serial = credential["kind"]["serial_hex"].as_str().unwrap().to_owned();
    assert!(!serial.starts_with("00") && serial == serial.to_lowercase(), "{serial}");
    let (count, events) = stored(&db).await;
    assert_eq!((count, events.len()), (1, 1));
    assert_eq!(events[0].action, "credential.issue");
    assert_eq!(events[0].operation_id, op);
    assert_eq!(
        events[0].target.as_deref(),
        Some(format!("credential:{}", credential["id"].as_str().unwrap()).as_str())
    );

    // openssl accepts the chain, sees the card holder as the subject (the CSR asked for CN=x: the
    // subject is the holder's on every route, as on the card session) and the card UUID, and OCSP says
    // good.
    let cert = d.join("issued.pem");
    std::fs::write(&cert, body["certificate_pem"].as_str().unwrap()).unwrap();
    let cert = cert.to_str().unwrap().to_owned();
    let out = openssl(&["verify", "-CAfile", &root, "-untrusted", &issuing, &cert]);
    assert!(out.contains(": OK"), "{out}");
    let text = openssl(&["x509", "-in", &cert, "-noout", "-text"]);
    assert!(text.contains("Subject: CN = alice"), "{text}");
    assert!(!text.contains("CN = x"), "{text}");
    assert!(text.contains("urn:uuid:42424242-4242-4242-4242-424242424242"), "{text}");
    let url = format!("{base}/pki/ocsp");
    let out = tokio::task::spawn_blocking(move || {
        openssl(&["ocsp", "-issuer", &issuing, "-cert", &cert, "-url", &url, "-CAfile", &chain])
    })
    .await
    .unwrap();
    assert!(out.contains(": good"), "{out}");
    server.abort();
}

/// A portal or API request through the router in process, as the browser at `lanyard.test`
/// would send it: status, headers and body text.
async fn in_process(
    state: &AppState<Db>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, String)>,
) -> (u16, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri).header("host", "lanyard.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some((content_type, b)) => req.header("content-type", content_type).body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// Signs `username` in through the portal's form: the cookie pair and the pages' CSRF token.
async fn portal_session(state: &AppState<Db>, username: &str, password: &str) -> (String, String) {
    let form = format!("username={username}&password={}", password.replace(' ', "+"));
    let origin = [("origin", "https://lanyard.test")];
    let (status, headers, text) = in_process(
        state,
        "POST",
        "/portal/login",
        &origin,
        Some(("application/x-www-form-urlencoded", form)),
    )
    .await;
    assert_eq!(status, 303, "{text}");
    let cookie = headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let (_, _, page) = in_process(state, "GET", "/portal/devices", &[("cookie", &cookie)], None).await;
    let csrf =
        page.split("name=\"csrf_token\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    (cookie, csrf)
}

/// Delete Mobile, by its holder in the portal and by an operator in theirs, as the issue asks
/// of it: the phone's certificate, enrolled through a one-time code like any mobile's, is then
/// reported revoked by the server's OCSP responder (asked by `openssl ocsp` over HTTP), and the
/// holder may enrol a phone again although the policy allows one mobile only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_mobiles_certificate_is_revoked_in_ocsp_and_the_holder_may_enrol_again() {
    use lanyard_core::authz::System;
    use lanyard_core::lifecycle::{CredentialState, DeviceState};
    use lanyard_core::model::Role;
    use lanyard_core::password::UserPassword;
    use secrecy::{ExposeSecret, SecretString};

    const PASSWORD: &str = "correct horse battery staple";
    let Setup {
        dir, db, listener, base, pki, now, mut group, alice, oscar, alice_token, alice_secret, ..
    } = setup().await;
    assert!(alice.roles.contains(&Role::User) && oscar.roles.contains(&Role::Operator));
    let d = dir.path();
    group.policy.max_mobiles = 1;
    {
        let mut tx = db.begin().await.unwrap();
        tx.insert_group(&group).await.unwrap();
        for u in [&alice, &oscar] {
            tx.insert_user(u).await.unwrap();
            tx.put_password(&UserPassword::set(u.id, &SecretString::from(PASSWORD), now).unwrap())
                .await
                .unwrap();
        }
        tx.insert_api_token(&alice_token).await.unwrap();
        tx.commit().await.unwrap();
    }
    let issuing = d.join("issuing.pem");
    let chain = d.join("chain.pem");
    std::fs::write(&issuing, pem("CERTIFICATE", pki.issuing.certificate_der())).unwrap();
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            pem("CERTIFICATE", pki.issuing.certificate_der()),
            pem("CERTIFICATE", pki.root.certificate_der())
        ),
    )
    .unwrap();
    let (issuing, chain) = (issuing.to_str().unwrap().to_owned(), chain.to_str().unwrap().to_owned());
    let state = AppState::new(Arc::new(db), Arc::new(pki), Arc::new(SystemClock));
    let server = tokio::spawn({
        let app = router(state.clone());
        async move { axum::serve(listener, app).await.unwrap() }
    });
    let ocsp = |cert: String| {
        let (url, issuing, chain) = (format!("{base}/pki/ocsp"), issuing.clone(), chain.clone());
        tokio::task::spawn_blocking(move || {
            openssl(&[
                "ocsp",
                "-issuer",
                &issuing,
                "-cert",
                &cert,
                "-url",
                &url,
                "-CAfile",
                &chain,
                "-resp_text",
            ])
        })
    };
    let bearer = format!("Bearer {}", alice_secret.expose_secret());

    // Enrols a phone for alice as SCEP will: a code (here from the API), the profile download
    // redeems it, and the certificate the CA signs for the phone's RSA key completes it.
    let enrol = async |name: &str| -> (lanyard_core::ids::DeviceId, String) {
        let (status, _, body) = in_process(
            &state,
            "POST",
            "/api/v1/me/mobile-enrollments",
            &[("authorization", &bearer)],
            Some(("application/json", r#"{"type": "mobile_profile"}"#.to_owned())),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let started: serde_json::Value = serde_json::from_str(&body).unwrap();
        let code = started["code"].as_str().unwrap().to_owned();
        let (status, headers, _) =
            in_process(&state, "GET", &format!("/enroll/profile/{code}"), &[], None).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/x-apple-aspen-config");

        let key = d.join(format!("{name}.key"));
        let spki = d.join(format!("{name}.spki"));
        let (key, spki) = (key.to_str().unwrap(), spki.to_str().unwrap());
        openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key]);
        openssl(&["pkey", "-in", key, "-pubout", "-outform", "DER", "-out", spki]);
        let system = System::new(lanyard_core::audit::OperationId::random(), SystemClock.now());
        let repo = state.repo.as_ref();
        let redeemed = system
            .enrollment_in_progress(repo, &code, lanyard_core::model::EnrollmentKind::MobileProfile)
            .await
            .unwrap();
        let signed = lanyard_issuance::sign_for_mobile(
            &state.pki.issuing,
            &redeemed,
            CertSlot::MobileDevice,
            &std::fs::read(spki).unwrap(),
            false,
            SystemClock.now(),
        )
        .unwrap();
        let mut certs = [Credential::new(redeemed.device.id, signed.kind, SystemClock.now())];
        let phone = system.complete_enrollment(repo, &code, &mut certs).await.unwrap();
        assert_eq!(phone.state, DeviceState::Active);
        assert_eq!(certs[0].state, CredentialState::Active);
        let path = d.join(format!("{name}.pem"));
        std::fs::write(&path, pem("CERTIFICATE", &signed.der)).unwrap();
        (phone.id, path.to_str().unwrap().to_owned())
    };
    let origin = ("origin", "https://lanyard.test");
    let form = "application/x-www-form-urlencoded";
    let (cookie, csrf) = portal_session(&state, "alice", PASSWORD).await;
    let c = ("cookie", cookie.as_str());

    // The holder deletes her phone.
    let (phone, cert) = enrol("held").await;
    let out = ocsp(cert.clone()).await.unwrap();
    assert!(out.contains("Response verify OK") && out.contains(&format!("{cert}: good")), "{out}");
    let (_, _, page) = in_process(&state, "GET", "/portal/devices", &[c], None).await;
    assert!(page.contains("allows at most 1 mobiles, and you have 1"), "the limit is reached: {page}");
    let (status, _, page) = in_process(
        &state,
        "POST",
        &format!("/portal/devices/{phone}/delete"),
        &[c, origin],
        Some((form, format!("csrf_token={csrf}"))),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Its certificate is revoked") && page.contains("Remove Profile"), "{page}");
    let out = ocsp(cert.clone()).await.unwrap();
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(
        out.contains(&format!("{cert}: revoked")) && out.contains("Reason: cessationOfOperation"),
        "{out}"
    );

    // And may enrol again at once, although the policy allows one mobile only.
    let (status, _, page) = in_process(
        &state,
        "POST",
        "/portal/devices/mobile",
        &[c, origin],
        Some((form, format!("csrf_token={csrf}"))),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("https://lanyard.test/enroll/profile/"), "{page}");

    // An operator deletes the next one.
    let (phone, cert) = enrol("operated").await;
    assert!(ocsp(cert.clone()).await.unwrap().contains(&format!("{cert}: good")));
    let (op_cookie, op_csrf) = portal_session(&state, "oscar", PASSWORD).await;
    let (status, _, page) = in_process(
        &state,
        "POST",
        &format!("/portal/operator/devices/{phone}/delete"),
        &[("cookie", &op_cookie), origin],
        Some((form, format!("csrf_token={op_csrf}&note=phone+handed+back"))),
    )
    .await;
    assert_eq!(status, 303, "{page}");
    let out = ocsp(cert.clone()).await.unwrap();
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(
        out.contains(&format!("{cert}: revoked")) && out.contains("Reason: cessationOfOperation"),
        "{out}"
    );
    let (_, _, page) = in_process(&state, "GET", "/portal/devices", &[c], None).await;
    assert!(page.contains("<a class=\"button\" href=\"/portal/devices/mobile\">Add Mobile</a>"), "{page}");
    let (status, _, page) = in_process(
        &state,
        "POST",
        "/portal/devices/mobile",
        &[c, origin],
        Some((form, format!("csrf_token={csrf}"))),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    server.abort();
}
