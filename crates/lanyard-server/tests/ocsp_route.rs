//! The OCSP responder's lean route: `/pki/ocsp` is served beside the operation-id middleware
//! (no UUID, span or task-local per answer), on the full router and on the plain-HTTP PKI
//! router alike, while every other route keeps its operation id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use der::Decode;
use lanyard_ca::KeyAlgorithm;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_server::{AppState, Pki, pki_router, router};
use lanyard_store::Db;
use std::sync::Arc;
use tower::ServiceExt;
use x509_ocsp::{OcspResponse, OcspResponseStatus};

async fn state(dir: &std::path::Path) -> AppState<Db> {
    let ca = dir.join("ca");
    Pki::create(&ca, "Lanyard Test", KeyAlgorithm::EcP256, "http://pki.test", SystemClock.now()).unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let pki =
        Pki::load(&ca, "Lanyard Test", KeyAlgorithm::EcP256, "http://pki.test", SystemClock.now()).unwrap();
    AppState::new(Arc::new(db), Arc::new(pki), Arc::new(SystemClock))
}

#[tokio::test]
async fn ocsp_is_answered_without_the_operation_id_middleware_on_both_routers() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path()).await;
    for (name, app) in [("router", router(s.clone())), ("pki_router", pki_router(s.clone()))] {
        // Not an OCSP request: answered malformedRequest, as an OCSP response.
        let resp = app
            .clone()
            .oneshot(Request::post("/pki/ocsp").body(Body::from(vec![0x30, 0x03, 1, 2, 3])).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        assert_eq!(resp.headers()["content-type"], "application/ocsp-response", "{name}");
        assert!(!resp.headers().contains_key("x-operation-id"), "{name}: the lean route");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        assert_eq!(
            OcspResponse::from_der(&body).unwrap().response_status,
            OcspResponseStatus::MalformedRequest
        );

        // The body limit still applies on the lean route.
        let resp = app
            .clone()
            .oneshot(Request::post("/pki/ocsp").body(Body::from(vec![0u8; 17 * 1024])).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{name}");

        // GET with a path that is not base64: a precise 400.
        let resp =
            app.clone().oneshot(Request::get("/pki/ocsp/%%%").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "the OCSP request in the URL is not base64", "{name}");

        // The other PKI routes keep their operation id.
        let resp =
            app.clone().oneshot(Request::get("/pki/ca.crt").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        assert!(resp.headers().contains_key("x-operation-id"), "{name}");
    }
}
