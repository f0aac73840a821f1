//! Passkeys over the API in process, with a software authenticator (a P-256 key of the test's
//! that builds and signs real WebAuthn messages, `lanyard_webauthn::testkit`): registration and
//! sign-in work; a replayed assertion, a foreign origin, a tampered RP ID hash, a wrong
//! challenge, a counter that does not move, and a suspended key are refused and audited; another
//! user sees and removes nothing; a passkey policy refuses the password while a passkey works.

use axum::http::{StatusCode, header};
use lanyard_core::ids::UserId;
use lanyard_core::model::SignInMethod;
use lanyard_core::repo::prelude::*;
use lanyard_webauthn::auth_data::Flags;
use lanyard_webauthn::testkit::{Authenticator, auth_data, client_data};
use lanyard_webauthn::{b64url, from_b64url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{App, PASSWORD, Reply, setup};

const ORIGIN: &str = "https://lanyard.example";
const RP: &str = "lanyard.example";
const SITE: [(&str, &str); 2] = [("host", "lanyard.example"), ("origin", ORIGIN)];

async fn app() -> App {
    let mut app = setup().await;
    app.state = app.state.clone().with_public_url(ORIGIN);
    app
}

fn cookie_named(r: &Reply, name: &str) -> String {
    r.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", r.headers))
}

/// Alice registers `key` for her card; answers the registered passkey's JSON.
async fn register(app: &App, key: &Authenticator) -> Value {
    let (cookie, csrf) = app.session("alice").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let body = json!({"device": app.alice_card}).to_string();
    let r = app.send("POST", "/api/v1/me/passkeys/registration-options", &h, Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let pk = &r.body["publicKey"];
    assert_eq!(pk["rp"]["id"], RP);
    assert_eq!(pk["authenticatorSelection"]["residentKey"], "required");
    assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
    let handle = from_b64url(pk["user"]["id"].as_str().unwrap(), "user.id").unwrap();
    assert_eq!(handle, app.alice.user.id.as_bytes(), "the user handle is the account's random id");
    let challenge = from_b64url(pk["challenge"].as_str().unwrap(), "challenge").unwrap();
    let cd = client_data("webauthn.create", &challenge, ORIGIN, false);
    let att = key.attestation_self(RP, &Sha256::digest(&cd).into());
    let credential = json!({
        "id": b64url(&key.credential_id),
        "rawId": b64url(&key.credential_id),
        "type": "public-key",
        "response": {"clientDataJSON": b64url(&cd), "attestationObject": b64url(&att), "transports": ["usb"]},
        "clientExtensionResults": {},
    });
    let r = app
        .send("POST", "/api/v1/me/passkeys", &h, Some(&json!({"credential": credential}).to_string()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

struct Attempt {
    cookie: String,
    challenge: Vec<u8>,
}

async fn start_sign_in(app: &App) -> Attempt {
    let r = app.send("POST", "/api/v1/passkeys/sign-in/options", &SITE, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["publicKey"]["rpId"], RP);
    let challenge = from_b64url(r.body["publicKey"]["challenge"].as_str().unwrap(), "challenge").unwrap();
    Attempt { cookie: cookie_named(&r, "__Host-lanyard_webauthn"), challenge }
}

/// An assertion body signed by `key` over the given parts.
fn assertion(key: &Authenticator, ad: &[u8], cd: &[u8], user: UserId) -> String {
    json!({
        "id": b64url(&key.credential_id),
        "rawId": b64url(&key.credential_id),
        "type": "public-key",
        "response": {
            "clientDataJSON": b64url(cd),
            "authenticatorData": b64url(ad),
            "signature": b64url(&key.assert(ad, cd)),
            "userHandle": b64url(user.as_bytes()),
        },
    })
    .to_string()
}

async fn finish(app: &App, a: &Attempt, body: &str) -> Reply {
    let h = [SITE[0], SITE[1], ("cookie", a.cookie.as_str())];
    app.send("POST", "/api/v1/passkeys/sign-in", &h, Some(body)).await
}

/// A whole sign-in with counter `count`.
async fn sign_in(app: &App, key: &Authenticator, count: u32) -> Reply {
    let a = start_sign_in(app).await;
    let cd = client_data("webauthn.get", &a.challenge, ORIGIN, false);
    let ad = auth_data(RP, Flags::UP | Flags::UV, count);
    finish(app, &a, &assertion(key, &ad, &cd, app.alice.user.id)).await
}

async fn refusal_reasons(app: &App) -> Vec<String> {
    app.all_audit()
        .await
        .into_iter()
        .filter(|e| e.action == "passkey.sign_in_refused")
        .map(|e| e.after.unwrap()["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn register_and_sign_in_with_a_passkey() {
    let app = app().await;
    let key = Authenticator::new();
    let registered = register(&app, &key).await;
    assert_eq!(registered["device"], json!(app.alice_card));
    assert_eq!(registered["attestation"], "packed-self");
    assert_eq!(registered["usable"], true);

    let r = sign_in(&app, &key, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["user"]["username"], "alice");
    let session = cookie_named(&r, "__Host-lanyard_session");
    let me = app.send("GET", "/api/v1/me", &[("cookie", &session)], None).await;
    assert_eq!(me.body["user"]["username"], "alice");
    let actions: Vec<String> = app.all_audit().await.into_iter().map(|e| e.action).collect();
    for a in ["passkey.register", "passkey.sign_in"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    let mine = app.send("GET", "/api/v1/me/passkeys", &[("cookie", &session)], None).await;
    assert_eq!(mine.body[0]["sign_count"], 1);
    assert!(mine.body[0]["last_used_at"].is_string());
}

#[tokio::test]
async fn replayed_foreign_tampered_and_unasked_assertions_are_refused() {
    let app = app().await;
    let key = Authenticator::new();
    register(&app, &key).await;

    // A replay: the same response again, in the same browser.
    let a = start_sign_in(&app).await;
    let cd = client_data("webauthn.get", &a.challenge, ORIGIN, false);
    let body = assertion(&key, &auth_data(RP, Flags::UP | Flags::UV, 1), &cd, app.alice.user.id);
    assert_eq!(finish(&app, &a, &body).await.status, StatusCode::OK);
    let again = finish(&app, &a, &body).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(again.error().contains("already used"), "{}", again.error());
    // …and the same response under a fresh challenge of the same browser.
    let b = start_sign_in(&app).await;
    let replay =
        finish(&app, &Attempt { cookie: b.cookie.clone(), challenge: a.challenge.clone() }, &body).await;
    assert_eq!(replay.status, StatusCode::CONFLICT, "{}", replay.body);

    // Signed by the key for another origin (a phishing page relaying the challenge).
    let c = start_sign_in(&app).await;
    let foreign = client_data("webauthn.get", &c.challenge, "https://lanyard.example.evil", false);
    let r = finish(
        &app,
        &c,
        &assertion(&key, &auth_data(RP, Flags::UP | Flags::UV, 2), &foreign, app.alice.user.id),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.error().contains("origin"), "{}", r.error());
    // Inside a cross-origin frame.
    let c = start_sign_in(&app).await;
    let framed = client_data("webauthn.get", &c.challenge, ORIGIN, true);
    let r = finish(
        &app,
        &c,
        &assertion(&key, &auth_data(RP, Flags::UP | Flags::UV, 2), &framed, app.alice.user.id),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // Authenticator data for another RP ID, correctly signed.
    let c = start_sign_in(&app).await;
    let cd = client_data("webauthn.get", &c.challenge, ORIGIN, false);
    let r = finish(
        &app,
        &c,
        &assertion(&key, &auth_data("evil.example", Flags::UP | Flags::UV, 2), &cd, app.alice.user.id),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.error().contains("another relying party"), "{}", r.error());

    // A challenge the server never issued.
    let c = start_sign_in(&app).await;
    let cd = client_data("webauthn.get", &[0x42; 32], ORIGIN, false);
    let r =
        finish(&app, &c, &assertion(&key, &auth_data(RP, Flags::UP | Flags::UV, 2), &cd, app.alice.user.id))
            .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);

    // Touch without the PIN, where the policy requires user verification.
    let c = start_sign_in(&app).await;
    let cd = client_data("webauthn.get", &c.challenge, ORIGIN, false);
    let r = finish(&app, &c, &assertion(&key, &auth_data(RP, Flags::UP, 2), &cd, app.alice.user.id)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // A counter that did not move: a possible clone.
    let r = sign_in(&app, &key, 1).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("copied"), "{}", r.error());

    // Another key claiming Alice's credential id: the signature fails.
    let thief = Authenticator { credential_id: key.credential_id.clone(), ..Authenticator::new() };
    let r = sign_in(&app, &thief, 50).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // Without the browser's sign-in cookie.
    let c = start_sign_in(&app).await;
    let cd = client_data("webauthn.get", &c.challenge, ORIGIN, false);
    let body = assertion(&key, &auth_data(RP, Flags::UP | Flags::UV, 60), &cd, app.alice.user.id);
    let r = app.send("POST", "/api/v1/passkeys/sign-in", &SITE, Some(&body)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // From another site's page.
    let r = app
        .send(
            "POST",
            "/api/v1/passkeys/sign-in/options",
            &[("host", RP), ("origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    assert_eq!(
        refusal_reasons(&app).await,
        vec![
            "challenge",
            "challenge",
            "origin",
            "cross_origin",
            "rp_id_hash",
            "challenge",
            "user_verification",
            "possible_clone",
            "signature"
        ]
    );
    // Still works with the next counter value.
    assert_eq!(sign_in(&app, &key, 61).await.status, StatusCode::OK);
}

#[tokio::test]
async fn suspending_the_key_disables_its_passkey_and_resuming_restores_it() {
    let app = app().await;
    let key = Authenticator::new();
    register(&app, &key).await;
    let suspend = format!("/api/v1/devices/{}/suspend", app.alice_card);
    let r = app
        .send("POST", &suspend, &[("authorization", &format!("Bearer {}", app.operator.token))], None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = sign_in(&app, &key, 1).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("suspended"), "{}", r.error());
    let resume = format!("/api/v1/devices/{}/resume", app.alice_card);
    let r = app
        .send("POST", &resume, &[("authorization", &format!("Bearer {}", app.operator.token))], None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(sign_in(&app, &key, 2).await.status, StatusCode::OK);
}

#[tokio::test]
async fn nobody_sees_or_removes_another_users_passkeys() {
    let app = app().await;
    let key = Authenticator::new();
    let registered = register(&app, &key).await;
    let id = registered["id"].as_str().unwrap();
    let bob = format!("Bearer {}", app.bob.token);
    let r = app.send("GET", "/api/v1/me/passkeys", &[("authorization", &bob)], None).await;
    assert_eq!(r.body, json!([]));
    let r = app
        .send(
            "GET",
            &format!("/api/v1/devices/{}/passkeys", app.alice_card),
            &[("authorization", &bob)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = app.send("DELETE", &format!("/api/v1/passkeys/{id}"), &[("authorization", &bob)], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Bob cannot register on Alice's card either.
    let (cookie, csrf) = app.session("bob").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let body = json!({"device": app.alice_card}).to_string();
    let r = app.send("POST", "/api/v1/me/passkeys/registration-options", &h, Some(&body)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // The operator sees it on the user and the device, and removes it; then it signs in no more.
    let op = format!("Bearer {}", app.operator.token);
    let r = app
        .send(
            "GET",
            &format!("/api/v1/users/{}/passkeys", app.alice.user.id),
            &[("authorization", &op)],
            None,
        )
        .await;
    assert_eq!(r.body[0]["id"], id);
    let r = app.send("DELETE", &format!("/api/v1/passkeys/{id}"), &[("authorization", &op)], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "removed");
    let r = sign_in(&app, &key, 1).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("removed"), "{}", r.error());
    assert!(app.all_audit().await.iter().any(|e| e.action == "passkey.remove"));
}

#[tokio::test]
async fn a_passkey_policy_refuses_the_password_only_while_a_passkey_works() {
    let app = app().await;
    let key = Authenticator::new();
    register(&app, &key).await;
    let mut tx = app.db.begin().await.unwrap();
    let mut g = tx.get_group(app.alice.user.group).await.unwrap().unwrap();
    g.policy.sign_in.method = SignInMethod::Passkey;
    tx.update_group(&g).await.unwrap();
    tx.commit().await.unwrap();
    let r = app.login("alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("passkey"), "{}", r.error());
    let suspend = format!("/api/v1/devices/{}/suspend", app.alice_card);
    app.send("POST", &suspend, &[("authorization", &format!("Bearer {}", app.operator.token))], None).await;
    assert_eq!(app.login("alice", PASSWORD).await.status, StatusCode::OK, "a lost key does not lock her out");
    // Password-only groups may not register passkeys.
    let resume = format!("/api/v1/devices/{}/resume", app.alice_card);
    app.send("POST", &resume, &[("authorization", &format!("Bearer {}", app.operator.token))], None).await;
    let mut tx = app.db.begin().await.unwrap();
    g.policy.sign_in.method = SignInMethod::Password;
    tx.update_group(&g).await.unwrap();
    tx.commit().await.unwrap();
    let (cookie, csrf) = app.session("alice").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let body = json!({"device": app.alice_card}).to_string();
    let r = app.send("POST", "/api/v1/me/passkeys/registration-options", &h, Some(&body)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

#[tokio::test]
async fn the_portal_lists_passkeys_on_the_device_and_sets_the_sign_in_policy() {
    let app = app().await;
    let key = Authenticator::new();
    let registered = register(&app, &key).await;
    let id = registered["id"].as_str().unwrap();
    let origin = ("origin", "https://lanyard.test");

    // The holder's device page lists it; reached at another host than the relying party's, the
    // page says why no passkey can be registered from there, and the sign-in page has no button.
    let (cookie, _) = app.portal_session("alice").await;
    let c = ("cookie", cookie.as_str());
    let page = app.page("GET", &format!("/portal/devices/{}", app.alice_card), &[c], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains(id) && page.text.contains("Works"), "{}", page.text);
    assert!(page.text.contains("open Lanyard at its public address"), "{}", page.text);
    let list = app.page("GET", "/portal/devices", &[c], None).await;
    assert!(list.text.contains("1 registered, signing in."), "{}", list.text);
    let login = app.page("GET", "/portal/login", &[], None).await;
    assert!(!login.text.contains("data-passkey-sign-in"));

    // Bob's request to remove it is the 404 page; the operator's page lists it and removes it.
    let (bob_cookie, bob_token) = app.portal_session("bob").await;
    let form = format!("csrf_token={bob_token}&back=/portal/devices");
    let p = app
        .page(
            "POST",
            &format!("/portal/passkeys/{id}/remove"),
            &[("cookie", &bob_cookie), origin],
            Some(&form),
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    let (op_cookie, op_token) = app.portal_session("oscar").await;
    let oc = ("cookie", op_cookie.as_str());
    let page = app.page("GET", &format!("/portal/operator/users/{}", app.alice.user.id), &[oc], None).await;
    assert!(page.text.contains(id) && page.text.contains("Works"), "{}", page.text);
    let page = app.page("GET", &format!("/portal/operator/devices/{}", app.alice_card), &[oc], None).await;
    assert!(page.text.contains(id) && page.text.contains("Remove passkey"), "{}", page.text);
    let back = format!("/portal/operator/devices/{}", app.alice_card);
    let form = format!("csrf_token={op_token}&back={back}");
    let p = app.page("POST", &format!("/portal/passkeys/{id}/remove"), &[oc, origin], Some(&form)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    assert_eq!(p.headers[header::LOCATION], back.as_str());
    let page = app.page("GET", &format!("/portal/devices/{}", app.alice_card), &[c], None).await;
    assert!(page.text.contains("Removed"), "{}", page.text);

    // The administrator's policy form sets the sign-in method.
    let group = app.alice.user.group;
    let (admin_cookie, admin_token) = app.portal_session("root").await;
    let ac = ("cookie", admin_cookie.as_str());
    let uri = format!("/portal/admin/groups/{group}");
    let form = app.page("GET", &uri, &[ac], None).await;
    assert!(form.text.contains("name=\"sign_in_method\""), "{}", form.text);
    let body = super::policy_form_with(&admin_token, &[])
        + "&sign_in_method=passkey&passkey_user_verification=preferred";
    let p = app.page("POST", &uri, &[ac, origin], Some(&body)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let g = app.db.begin().await.unwrap().get_group(group).await.unwrap().unwrap();
    assert_eq!(g.policy.sign_in.method, SignInMethod::Passkey);
    assert_eq!(
        g.policy.sign_in.passkey_user_verification,
        lanyard_core::model::PasskeyUserVerification::Preferred
    );
    let body = super::policy_form_with(&admin_token, &[])
        + "&sign_in_method=sometimes&passkey_user_verification=required";
    let p = app.page("POST", &uri, &[ac, origin], Some(&body)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.text.contains("Sign-in: choose one of the listed methods."), "{}", p.text);
}

#[tokio::test]
async fn a_registration_for_another_origin_is_refused_and_audited() {
    let app = app().await;
    let key = Authenticator::new();
    let (cookie, csrf) = app.session("alice").await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let body = json!({"device": app.alice_card}).to_string();
    let r = app.send("POST", "/api/v1/me/passkeys/registration-options", &h, Some(&body)).await;
    let challenge = from_b64url(r.body["publicKey"]["challenge"].as_str().unwrap(), "challenge").unwrap();
    let cd = client_data("webauthn.create", &challenge, "https://evil.example", false);
    let att = key.attestation_self(RP, &Sha256::digest(&cd).into());
    let credential = json!({
        "rawId": b64url(&key.credential_id),
        "type": "public-key",
        "response": {"clientDataJSON": b64url(&cd), "attestationObject": b64url(&att)},
    });
    let r = app
        .send("POST", "/api/v1/me/passkeys", &h, Some(&json!({"credential": credential}).to_string()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("origin"), "{}", r.error());
    let refused: Vec<_> =
        app.all_audit().await.into_iter().filter(|e| e.action == "passkey.register_refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].after.as_ref().unwrap()["reason"], "origin");
    let mine = app.send("GET", "/api/v1/me/passkeys", &[("cookie", &cookie)], None).await;
    assert_eq!(mine.body, json!([]), "nothing was registered");
}
