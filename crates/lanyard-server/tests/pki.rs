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
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tower::ServiceExt;

fn openssl(args: &[&str]) -> String {
    let out =
        Command::new("openssl").args(args).output().expect("openssl is not installed: run scripts/test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

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
        Pki::load_or_create(&d.join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, &base, SystemClock.now())
            .unwrap();

    let now = SystemClock.now();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy: Policy::default() };
    let device = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
    let good = issue(&pki, d, "good", &device);
    let mut revoked = issue(&pki, d, "revoked", &device);
    let mut held = issue(&pki, d, "held", &device);
    let unknown = issue(&pki, d, "unknown", &device); // issued but never recorded
    apply_credential(&mut revoked.credential, CredentialAction::Revoke(RevocationReason::KeyCompromise), now)
        .unwrap();
    apply_credential(&mut held.credential, CredentialAction::Hold, now).unwrap();
    {
        let mut tx = db.begin().await.unwrap();
        tx.insert_group(&group).await.unwrap();
        tx.insert_device(&device).await.unwrap();
        for c in [&good, &revoked, &held] {
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
    assert!(resp.headers().contains_key("x-operation-id"));
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
    assert!(!text.contains(&serial_of(&good)), "{text}");
    assert!(text.contains("NEXT UPDATE"), "{text}");

    // The CA certificates are published where the AIA points.
    let resp = router(state).oneshot(Request::get("/pki/ca.crt").body(Body::empty()).unwrap()).await.unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let _ = root;
    assert_eq!(&body[..], &std::fs::read(d.join("ca/issuing.crt")).unwrap()[..]);
    server.abort();
}
