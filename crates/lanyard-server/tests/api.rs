//! The `/api/v1` routes in process (`tower::ServiceExt::oneshot`) over the real SQLite store:
//! login, sessions and CSRF, API tokens, throttling, and who may do what.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use lanyard_ca::KeyAlgorithm;
use lanyard_core::audit::{Actor, AuditEvent};
use lanyard_core::clock::{Clock, ManualClock};
use lanyard_core::ids::{DeviceId, GroupId};
use lanyard_core::lifecycle::{CredentialState, DeviceState, RevocationReason};
use lanyard_core::model::{
    ApiToken, CertSlot, Credential, CredentialKind, Device, DeviceKind, FidoPinMode, Group, Policy, Role,
    User, Username,
};
use lanyard_core::password::UserPassword;
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, DeviceQuery, Repo};
use lanyard_core::secrets::Kek;
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::Duration;
use tower::ServiceExt;

mod mobile;
mod passkeys;

const PASSWORD: &str = "correct horse battery staple";

struct Caller {
    user: User,
    token: String,
    token_id: lanyard_core::ids::ApiTokenId,
}

struct App {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    clock: Arc<ManualClock>,
    state: AppState<Db>,
    alice: Caller,
    bob: Caller,
    operator: Caller,
    auditor: Caller,
    admin: Caller,
    alice_card: DeviceId,
    bob_card: DeviceId,
    revoked_token: String,
    expired_token: String,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_else(|| panic!("no error message in {}", self.body))
    }
}

async fn setup() -> App {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let clock = Arc::new(ManualClock::default());
    let now = clock.now();
    let pki =
        Pki::create(&dir.path().join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, "http://127.0.0.1", now)
            .unwrap();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy: Policy::default() };
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&group).await.unwrap();
    let mut caller = async |name: &str, roles: &[Role]| {
        let mut user = User::new(Username::parse(name).unwrap(), name, group.id, now).unwrap();
        user.roles = roles.iter().copied().collect::<BTreeSet<_>>();
        tx.insert_user(&user).await.unwrap();
        tx.put_password(&UserPassword::set(user.id, &SecretString::from(PASSWORD), now).unwrap())
            .await
            .unwrap();
        let (token, secret) = ApiToken::issue(user.id, "tests", Some(now + Duration::days(30)), now).unwrap();
        tx.insert_api_token(&token).await.unwrap();
        Caller { user, token: secret.expose_secret().to_owned(), token_id: token.id }
    };
    let alice = caller("alice", &[Role::User]).await;
    let bob = caller("bob", &[Role::User]).await;
    let operator = caller("oscar", &[Role::Operator]).await;
    let auditor = caller("audrey", &[Role::Auditor]).await;
    let admin = caller("root", &[Role::Administrator]).await;
    let card = |owner: &User| {
        let mut d = Device::new(DeviceKind::SmartCard, "Lanyard virtual card", now).unwrap();
        d.owner = Some(owner.id);
        d.state = DeviceState::Active;
        d
    };
    let (a, b) = (card(&alice.user), card(&bob.user));
    tx.insert_device(&a).await.unwrap();
    tx.insert_device(&b).await.unwrap();
    let (mut revoked, revoked_secret) = ApiToken::issue(alice.user.id, "revoked", None, now).unwrap();
    revoked.revoked_at = Some(now - Duration::seconds(1));
    tx.insert_api_token(&revoked).await.unwrap();
    let (expired, expired_secret) =
        ApiToken::issue(alice.user.id, "expired", Some(now - Duration::seconds(1)), now).unwrap();
    tx.insert_api_token(&expired).await.unwrap();
    tx.commit().await.unwrap();
    let db = Arc::new(db);
    let state = AppState::new(Arc::clone(&db), Arc::new(pki), Arc::clone(&clock) as Arc<dyn Clock>);
    App {
        _dir: dir,
        db,
        clock,
        state,
        alice,
        bob,
        operator,
        auditor,
        admin,
        alice_card: a.id,
        bob_card: b.id,
        revoked_token: revoked_secret.expose_secret().to_owned(),
        expired_token: expired_secret.expose_secret().to_owned(),
    }
}

impl App {
    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_owned())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Reply { status, headers, body }
    }

    async fn bearer(&self, method: &str, uri: &str, token: &str) -> Reply {
        self.send(method, uri, &[("authorization", &format!("Bearer {token}"))], None).await
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        let body = json!({"username": username, "password": password}).to_string();
        self.send("POST", "/api/v1/login", &[], Some(&body)).await
    }

    /// Logs in and returns the cookie header value and the CSRF token.
    async fn session(&self, username: &str) -> (String, String) {
        let r = self.login(username, PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let set = r.headers[header::SET_COOKIE].to_str().unwrap();
        let pair = set.split(';').next().unwrap().to_owned();
        (pair, r.body["csrf_token"].as_str().unwrap().to_owned())
    }

    async fn device(&self, id: DeviceId) -> Device {
        self.db.begin().await.unwrap().get_device(id).await.unwrap().unwrap()
    }

    /// The audit events about records, leaving out sign-ins and sign-outs (`session.*`).
    async fn audit(&self) -> Vec<AuditEvent> {
        self.all_audit().await.into_iter().filter(|e| !e.action.starts_with("session.")).collect()
    }

    async fn all_audit(&self) -> Vec<AuditEvent> {
        let mut tx = self.db.begin().await.unwrap();
        tx.list_audit(&AuditQuery { after_seq: 0, target: None, limit: 1000, ..Default::default() })
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn login_sets_a_secure_session_cookie_and_logout_ends_it() {
    let app = setup().await;
    let r = app.login("Alice ", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["user"]["username"], "alice");
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-lanyard_session="), "{set}");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing from {set}");
    }
    let cookie = set.split(';').next().unwrap();
    let csrf = r.body["csrf_token"].as_str().unwrap();
    assert_eq!(csrf.len(), 64);

    let me = app.send("GET", "/api/v1/me", &[("cookie", cookie)], None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"]["username"], "alice");
    assert_eq!(me.body["authenticated_with"], "session");

    let no_csrf = app.send("POST", "/api/v1/logout", &[("cookie", cookie)], None).await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    let out = app.send("POST", "/api/v1/logout", &[("cookie", cookie), ("x-csrf-token", csrf)], None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let after = app.send("GET", "/api/v1/me", &[("cookie", cookie)], None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    // Sign-in and sign-out are audited, with the user as actor and the request's operation id.
    let events = app.all_audit().await;
    let alice = Actor::User { id: app.alice.user.id, username: app.alice.user.username.clone() };
    let seen: Vec<_> = events.iter().map(|e| (e.action.as_str(), &e.actor, e.target.as_deref())).collect();
    let target = format!("user:{}", app.alice.user.id);
    assert_eq!(
        seen,
        [("session.login", &alice, Some(target.as_str())), ("session.logout", &alice, Some(target.as_str()))]
    );
    assert_eq!(events[0].operation_id, r.headers["x-operation-id"].to_str().unwrap());
    assert_eq!(events[1].operation_id, out.headers["x-operation-id"].to_str().unwrap());
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_401() {
    let app = setup().await;
    let wrong = app.login("alice", "not the password").await;
    let unknown = app.login("mallory", PASSWORD).await;
    let invalid_name = app.login("Not A Name!", PASSWORD).await;
    for r in [&wrong, &unknown, &invalid_name] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.error(), "invalid username or password");
        assert!(r.headers.get(header::SET_COOKIE).is_none());
    }
    let none = app.send("GET", "/api/v1/me", &[], None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let bad_cookie =
        app.send("GET", "/api/v1/me", &[("cookie", "__Host-lanyard_session=forged")], None).await;
    assert_eq!(bad_cookie.status, StatusCode::UNAUTHORIZED);
    let basic = app.send("GET", "/api/v1/me", &[("authorization", "Basic YWxpY2U6eA==")], None).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    // Each failure is audited by Lanyard itself under the name that was tried, cut to 64 characters.
    let long = "x".repeat(10_000);
    assert_eq!(app.login(&long, PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    let failed: Vec<_> = app
        .all_audit()
        .await
        .into_iter()
        .map(|e| {
            assert_eq!((e.action.as_str(), &e.actor), ("session.login_failed", &Actor::System));
            e.target.unwrap()
        })
        .collect();
    let long_target = format!("username:{}", "x".repeat(64));
    assert_eq!(failed, ["username:alice", "username:mallory", "username:not a name!", long_target.as_str()]);
}

#[tokio::test]
async fn five_failed_logins_throttle_the_username_for_fifteen_minutes() {
    let app = setup().await;
    for _ in 0..5 {
        assert_eq!(app.login("alice", "guess").await.status, StatusCode::UNAUTHORIZED);
    }
    let throttled = app.login("alice", PASSWORD).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS, "even the right password waits");
    assert_eq!(throttled.headers[header::RETRY_AFTER], "900");
    assert!(throttled.headers.get(header::SET_COOKIE).is_none());
    assert_eq!(app.login("bob", PASSWORD).await.status, StatusCode::OK, "other usernames are not affected");
    app.clock.advance(Duration::minutes(10));
    let later = app.login("ALICE", PASSWORD).await;
    assert_eq!(later.status, StatusCode::TOO_MANY_REQUESTS, "usernames are throttled case-insensitively");
    assert_eq!(later.headers[header::RETRY_AFTER], "300");
    app.clock.advance(Duration::minutes(5));
    assert_eq!(app.login("alice", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn cookie_requests_that_change_state_need_the_csrf_token_bearer_requests_do_not() {
    let app = setup().await;
    let (cookie, csrf) = app.session("oscar").await;
    let suspend = format!("/api/v1/devices/{}/suspend", app.alice_card);
    let before = app.device(app.alice_card).await;
    for headers in
        [vec![("cookie", cookie.as_str())], vec![("cookie", cookie.as_str()), ("x-csrf-token", "0000")]]
    {
        let r = app.send("POST", &suspend, &headers, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.error().contains("x-csrf-token"), "{}", r.error());
    }
    // Another session's token is no good either.
    let (_, other_csrf) = app.session("oscar").await;
    let r = app.send("POST", &suspend, &[("cookie", &cookie), ("x-csrf-token", &other_csrf)], None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.device(app.alice_card).await, before, "refused requests change nothing");
    assert!(app.audit().await.is_empty());

    let r = app.send("POST", &suspend, &[("cookie", &cookie), ("x-csrf-token", &csrf)], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "suspended");
    let resume = format!("/api/v1/devices/{}/resume", app.alice_card);
    let r = app.bearer("POST", &resume, &app.operator.token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "active");
}

impl App {
    /// A request with an optional bearer token and an optional JSON body.
    async fn call(&self, method: &str, uri: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let body = body.map(Value::to_string);
        self.send(method, uri, &headers, body.as_deref()).await
    }

    /// Everything a request could change: the audit log, devices, credentials, users, groups and
    /// their policies, and every caller's API tokens.
    async fn snapshot(&self) -> String {
        use lanyard_core::repo::{CredentialQuery, DeviceQuery, UserQuery};
        let mut tx = self.db.begin().await.unwrap();
        let audit = tx
            .list_audit(&AuditQuery { after_seq: 0, target: None, limit: 1000, ..Default::default() })
            .await
            .unwrap();
        let devices = tx.list_devices(&DeviceQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let credentials =
            tx.list_credentials(&CredentialQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let users = tx.list_users(&UserQuery { limit: 1000, ..Default::default() }).await.unwrap();
        let groups = tx.list_groups().await.unwrap();
        let mut tokens = Vec::new();
        for c in [&self.alice, &self.bob, &self.operator, &self.auditor, &self.admin] {
            // `last_used_at` records that a token authenticated, which even a refused request
            // does; it is bookkeeping, not a change the request made.
            let mut list = tx.list_api_tokens(c.user.id).await.unwrap();
            list.iter_mut().for_each(|t| t.last_used_at = None);
            tokens.push(list);
        }
        format!("{}\n{devices:?}\n{credentials:?}\n{users:?}\n{groups:?}\n{tokens:?}", audit.len())
    }
}

/// A P-256 CSR made in process (no RSA), as PEM.
fn csr_pem() -> String {
    use base64::Engine;
    let key = lanyard_ca::SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let der =
        lanyard_ca::build_csr(&key, lanyard_ca::parse_dn("CN=Alice Example").unwrap(), vec![], None).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem + "-----END CERTIFICATE REQUEST-----\n"
}

/// Every caller against every `/api/v1` route but login, in an order where each of the
/// operator's changes is legal (suspend before resume, hold before release before revoke) and
/// the token to delete belongs to the last authorised caller (the administrator), so everyone
/// before is refused a live token. Every refused request changes nothing at all; afterwards
/// only the successful calls left audit events.
#[tokio::test]
async fn authorization_matrix() {
    use StatusCode as S;
    const N: usize = 25;
    let app = setup().await;
    let (a, b) = (app.alice_card, app.bob_card);
    let cert_body = json!({"csr_pem": csr_pem(), "profile": "digital-signature", "slot": "9c"});

    // A credential on alice's card for the credential actions, and a live administrator token
    // for the delete.
    let r =
        app.post_json(&format!("/api/v1/devices/{a}/certificates"), &app.operator.token, &cert_body).await;
    assert_eq!(r.status, S::CREATED, "{}", r.body);
    let c = r.body["credential"]["id"].as_str().unwrap().to_owned();
    let r = app.post_json("/api/v1/tokens", &app.admin.token, &json!({"name": "target"})).await;
    assert_eq!(r.status, S::CREATED, "{}", r.body);
    let t = r.body["api_token"]["id"].as_str().unwrap().to_owned();
    let r = app.bearer("GET", "/api/v1/groups", &app.admin.token).await;
    let g = r.body[0]["id"].as_str().unwrap().to_owned();
    let audit_before = app.all_audit().await.len();

    let new_device = json!({"kind": "smart_card", "model": "Matrix card"});
    let new_user = json!({"username": "carol", "display_name": "Carol", "roles": ["user"], "group": "staff"});
    let new_token = json!({"name": "matrix"});
    let revoke = json!({"reason": "key_compromise"});
    let new_group = json!({"name": "contractors"});
    let mut stricter = serde_json::to_value(Policy::default()).unwrap();
    stricter["max_devices"] = json!(1);
    let mobile = json!({"type": "mobile_profile"});
    let routes: [(&str, String, Option<&Value>); N] = [
        ("GET", "/api/v1/me".into(), None),
        ("GET", "/api/v1/devices".into(), None),
        ("GET", format!("/api/v1/devices/{a}"), None),
        ("GET", format!("/api/v1/devices/{b}"), None),
        ("POST", format!("/api/v1/devices/{a}/suspend"), None),
        ("POST", format!("/api/v1/devices/{a}/resume"), None),
        ("GET", "/api/v1/audit".into(), None),
        ("POST", "/api/v1/logout".into(), None),
        ("POST", "/api/v1/devices".into(), Some(&new_device)),
        ("GET", format!("/api/v1/devices/{a}/credentials"), None),
        ("GET", format!("/api/v1/devices/{b}/credentials"), None),
        ("POST", format!("/api/v1/devices/{a}/certificates"), Some(&cert_body)),
        ("POST", format!("/api/v1/credentials/{c}/hold"), None),
        ("POST", format!("/api/v1/credentials/{c}/release"), None),
        ("POST", format!("/api/v1/credentials/{c}/revoke"), Some(&revoke)),
        ("POST", "/api/v1/users".into(), Some(&new_user)),
        ("POST", "/api/v1/tokens".into(), Some(&new_token)),
        ("GET", "/api/v1/tokens".into(), None),
        ("DELETE", format!("/api/v1/tokens/{t}"), None),
        ("GET", "/api/v1/users?q=a".into(), None),
        ("GET", "/api/v1/users/alice/devices".into(), None),
        ("GET", "/api/v1/groups".into(), None),
        ("POST", "/api/v1/groups".into(), Some(&new_group)),
        ("PUT", format!("/api/v1/groups/{g}/policy"), Some(&stricter)),
        ("POST", "/api/v1/me/mobile-enrollments".into(), Some(&mobile)),
    ];
    const BAD: StatusCode = S::BAD_REQUEST; // logout with a token: there is no session to end
    const NO: StatusCode = S::FORBIDDEN;
    const NF: StatusCode = S::NOT_FOUND;
    const NEW: StatusCode = S::CREATED;
    #[rustfmt::skip]
    let expected: [(&str, Option<&str>, [StatusCode; N]); 9] = [
        //                                  me     devs   dev a  dev b  susp   resume audit  logout
        //                                  +dev   cr a   cr b   cert   hold   releas revoke users  +tok   tokens -tok
        //                                  find   udevs  groups +group policy +mobile
        ("alice", Some(&app.alice.token), [S::OK, S::OK, S::OK, NF,    NO,    NO,    NO,    BAD,
                                           NO,    S::OK, NF,    NO,    NO,    NO,    NO,    NO,    NEW,   S::OK, NF,
                                           NO,    NO,    NO,    NO,    NO,    NEW]),
        ("bob", Some(&app.bob.token),     [S::OK, S::OK, NF,    S::OK, NO,    NO,    NO,    BAD,
                                           NO,    NF,    S::OK, NO,    NO,    NO,    NO,    NO,    NEW,   S::OK, NF,
                                           NO,    NO,    NO,    NO,    NO,    NEW]),
        ("operator", Some(&app.operator.token),
                                          [S::OK, NO,    S::OK, S::OK, S::OK, S::OK, NO,    BAD,
                                           NEW,   S::OK, S::OK, NEW,   S::OK, S::OK, S::OK, NO,    NEW,   S::OK, NF,
                                           S::OK, S::OK, S::OK, NO,    NO,    NO]),
        ("auditor", Some(&app.auditor.token),
                                          [S::OK, NO,    NO,    NO,    NO,    NO,    S::OK, BAD,
                                           NO,    NO,    NO,    NO,    NO,    NO,    NO,    NO,    NEW,   S::OK, NF,
                                           NO,    NO,    NO,    NO,    NO,    NO]),
        ("admin", Some(&app.admin.token), [S::OK, NO,    NO,    NO,    NO,    NO,    NO,    BAD,
                                           NO,    NO,    NO,    NO,    NO,    NO,    NO,    NEW,   NEW,   S::OK, S::OK,
                                           NO,    NO,    S::OK, NEW,   S::OK, NO]),
        ("revoked token", Some(&app.revoked_token), [S::UNAUTHORIZED; N]),
        ("expired token", Some(&app.expired_token), [S::UNAUTHORIZED; N]),
        ("unknown token", Some("f00d"), [S::UNAUTHORIZED; N]),
        ("anonymous", None, [S::UNAUTHORIZED; N]),
    ];
    let cards_before = (app.device(a).await, app.device(b).await);
    let mut cells = 0;
    let mut state = app.snapshot().await;
    for (who, token, statuses) in expected {
        for ((method, uri, body), want) in routes.iter().zip(statuses) {
            let r = app.call(method, uri, token, *body).await;
            assert_eq!(r.status, want, "{who} {method} {uri}: {}", r.body);
            assert!(r.headers.contains_key("x-operation-id"), "{who} {method} {uri}");
            let after = app.snapshot().await;
            if !r.status.is_success() {
                assert_eq!(
                    after, state,
                    "{who} {method} {uri} was refused ({}) but changed something",
                    r.status
                );
            }
            if want == S::FORBIDDEN {
                let role = r.error().strip_prefix("forbidden: this requires the ");
                assert!(role.is_some_and(|r| r.ends_with(" role")), "{who} {method} {uri}: {}", r.error());
            }
            // Refusals are decided before the body is read: a malformed one changes nothing.
            if body.is_some() && matches!(want, S::UNAUTHORIZED | S::FORBIDDEN) {
                let auth = token.map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
                let r = app.send(method, uri, &headers, Some("{")).await;
                assert_eq!(r.status, want, "{who} {method} {uri} with a malformed body: {}", r.body);
                assert_eq!(app.snapshot().await, after, "{who} {method} {uri} with a malformed body");
            }
            state = after;
            cells += 1;
        }
    }
    assert_eq!(cells, 9 * N);

    // Login is the one route without a caller: any bearer token sent along is ignored.
    let login = json!({"username": "bob", "password": PASSWORD});
    for (who, token, _) in expected {
        let r = app.call("POST", "/api/v1/login", token, Some(&login)).await;
        assert_eq!(r.status, S::OK, "{who} POST /api/v1/login: {}", r.body);
        assert_eq!(r.body["user"]["username"], "bob", "{who}");
    }

    // A cardholder's list holds their own card only.
    let mine = app.bearer("GET", "/api/v1/devices", &app.alice.token).await;
    let ids: Vec<&str> = mine.body.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [a.to_string()]);

    let (a_after, b_after) = (app.device(a).await, app.device(b).await);
    assert_eq!(b_after, cards_before.1, "bob's card untouched");
    assert_eq!((a_after.state, a_after.owner), (cards_before.0.state, cards_before.0.owner));
    let events = app.all_audit().await;
    let actions: Vec<_> =
        events[audit_before..].iter().map(|e| (e.action.as_str(), e.actor.clone())).collect();
    let by = |c: &Caller| Actor::ApiToken { id: c.token_id };
    let bob_logs_in =
        ("session.login", Actor::User { id: app.bob.user.id, username: app.bob.user.username.clone() });
    assert_eq!(
        actions,
        [
            ("api_token.create", by(&app.alice)),
            ("enrollment_code.issue", by(&app.alice)),
            ("api_token.create", by(&app.bob)),
            ("enrollment_code.issue", by(&app.bob)),
            ("device.suspend", by(&app.operator)),
            ("device.resume", by(&app.operator)),
            ("device.register", by(&app.operator)),
            ("credential.issue", by(&app.operator)),
            ("credential.hold", by(&app.operator)),
            ("credential.release", by(&app.operator)),
            ("credential.revoke", by(&app.operator)),
            ("api_token.create", by(&app.operator)),
            ("api_token.create", by(&app.auditor)),
            ("user.create", by(&app.admin)),
            ("api_token.create", by(&app.admin)),
            ("api_token.revoke", by(&app.admin)),
            ("group.create", by(&app.admin)),
            ("group.update_policy", by(&app.admin)),
        ]
        .into_iter()
        .chain(std::iter::repeat_n(bob_logs_in, 9))
        .collect::<Vec<_>>()
    );
    // The policy an administrator wrote is the one in force.
    let groups = app.bearer("GET", "/api/v1/groups", &app.operator.token).await;
    let staff = groups.body.as_array().unwrap().iter().find(|x| x["id"] == g.as_str()).unwrap().clone();
    assert_eq!(staff["policy"]["max_devices"], 1);
}

#[tokio::test]
async fn someone_elses_device_is_indistinguishable_from_a_missing_one() {
    let app = setup().await;
    let before = app.device(app.bob_card).await;
    let theirs = app.bearer("GET", &format!("/api/v1/devices/{}", app.bob_card), &app.alice.token).await;
    let missing_id = DeviceId::new();
    let missing = app.bearer("GET", &format!("/api/v1/devices/{missing_id}"), &app.alice.token).await;
    assert_eq!((theirs.status, missing.status), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(theirs.error(), format!("device {} not found", app.bob_card));
    assert_eq!(missing.error(), format!("device {missing_id} not found"));
    let keys = |r: &Reply| r.body.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&theirs), keys(&missing), "same shape, no detail");
    let (cookie, csrf) = app.session("alice").await;
    let suspend = format!("/api/v1/devices/{}/suspend", app.bob_card);
    let r = app.send("POST", &suspend, &[("cookie", &cookie), ("x-csrf-token", &csrf)], None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.device(app.bob_card).await, before, "bob's card is unchanged");
    assert!(app.audit().await.is_empty());
}

#[tokio::test]
async fn an_auditor_cannot_suspend_and_nothing_changes() {
    let app = setup().await;
    let before = app.device(app.alice_card).await;
    let r =
        app.bearer("POST", &format!("/api/v1/devices/{}/suspend", app.alice_card), &app.auditor.token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error(), "forbidden: this requires the operator role");
    assert_eq!(app.device(app.alice_card).await, before);
    assert!(app.audit().await.is_empty());
}

#[tokio::test]
async fn an_operators_suspend_writes_one_audit_event_with_the_operation_id() {
    let app = setup().await;
    let r =
        app.bearer("POST", &format!("/api/v1/devices/{}/suspend", app.alice_card), &app.operator.token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let op = r.headers["x-operation-id"].to_str().unwrap();
    let events = app.audit().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.action, "device.suspend");
    assert_eq!(e.target.as_deref(), Some(format!("device:{}", app.alice_card).as_str()));
    assert_eq!(e.operation_id, op);
    assert_eq!(e.actor, Actor::ApiToken { id: app.operator.token_id });
    assert_eq!(app.device(app.alice_card).await.state, DeviceState::Suspended);

    // The auditor reads the same event through the API, page by page.
    let seen = app.bearer("GET", "/api/v1/audit?after_seq=0&limit=10", &app.auditor.token).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body[0]["operation_id"], op);
    let rest = app.bearer("GET", "/api/v1/audit?after_seq=1", &app.auditor.token).await;
    assert_eq!(rest.body, json!([]));

    // Suspending again is an illegal transition: 409, and still one event.
    let again =
        app.bearer("POST", &format!("/api/v1/devices/{}/suspend", app.alice_card), &app.operator.token).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.error().contains("illegal transition"), "{}", again.error());
    assert_eq!(app.audit().await.len(), 1);
}

#[tokio::test]
async fn malformed_input_is_a_precise_400_and_changes_nothing() {
    let app = setup().await;
    let cases = [
        (
            r#"{"username": "alice", "password": "#,
            "invalid JSON body: Failed to parse the request body as JSON",
        ),
        (r#"{"username": "alice"}"#, "missing field `password`"),
        (r#"{"username": "alice", "password": 7}"#, "invalid type: integer `7`, expected a string"),
        (r#"{"username": "alice", "password": "x", "admin": true}"#, "unknown field `admin`"),
    ];
    for (body, message) in cases {
        let r = app.send("POST", "/api/v1/login", &[], Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().contains(message), "{body}: {}", r.error());
        assert!(r.body["operation_id"].as_str().unwrap() == r.headers["x-operation-id"].to_str().unwrap());
        assert!(r.headers.get(header::SET_COOKIE).is_none());
    }
    let no_type = app.send("POST", "/api/v1/login", &[], None).await;
    assert_eq!(no_type.status, StatusCode::BAD_REQUEST);
    assert!(no_type.error().contains("Content-Type: application/json"), "{}", no_type.error());
    // None of that counted as a failed login, and nothing was written.
    assert_eq!(app.login("alice", PASSWORD).await.status, StatusCode::OK);
    assert!(app.audit().await.is_empty());

    let bad_id = app.bearer("GET", "/api/v1/devices/not-a-uuid", &app.operator.token).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert!(bad_id.error().contains("device"), "{}", bad_id.error());
    for query in ["limit=0", "limit=1001", "limit=ten", "after_seq=-1", "colour=red"] {
        let r = app.bearer("GET", &format!("/api/v1/audit?{query}"), &app.auditor.token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
    }
}

#[tokio::test]
async fn a_disabled_account_cannot_log_in_or_use_its_session_or_token() {
    let app = setup().await;
    let (cookie, _) = app.session("bob").await;
    let mut bob = app.bob.user.clone();
    bob.disabled = true;
    let mut tx = app.db.begin().await.unwrap();
    tx.update_user(&bob).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(app.login("bob", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    let by_token = app.bearer("GET", "/api/v1/me", &app.bob.token).await;
    assert_eq!(by_token.status, StatusCode::FORBIDDEN);
    assert_eq!(by_token.error(), "forbidden: the account is disabled");
    let by_session = app.send("GET", "/api/v1/devices", &[("cookie", &cookie)], None).await;
    assert_eq!(by_session.status, StatusCode::FORBIDDEN);
    // The portal says why, and still shows the sign-in page to that cookie.
    let portal = app.page("GET", "/portal/devices", &[("cookie", &cookie)], None).await;
    assert_eq!(portal.status, StatusCode::FORBIDDEN);
    assert!(portal.text.contains("the account is disabled"), "{}", portal.text);
    let sign_in = app.page("GET", "/portal/login", &[("cookie", &cookie)], None).await;
    assert_eq!(sign_in.status, StatusCode::OK);
    assert!(sign_in.text.contains("Sign in to Lanyard"));
}

impl App {
    async fn post_json(&self, uri: &str, token: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {token}");
        self.send("POST", uri, &[("authorization", &auth)], Some(&body.to_string())).await
    }
}

#[tokio::test]
async fn only_an_administrator_creates_users_and_bad_input_is_a_400() {
    let app = setup().await;
    let new = json!({
        "username": "carol",
        "display_name": "Carol Example",
        "email": "carol@example.org",
        "roles": ["user", "operator"],
        "group": "staff",
        "password": "a long enough secret",
    });
    for caller in [&app.alice, &app.operator, &app.auditor] {
        let r = app.post_json("/api/v1/users", &caller.token, &new).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(r.error(), "forbidden: this requires the administrator role");
    }
    assert!(app.audit().await.is_empty(), "refused requests change nothing");

    let mut invalid = Vec::new();
    for (field, value, says) in [
        ("username", json!("Not A Name!"), "username"),
        ("password", json!("too short"), "password: must be 12 to 1024 characters, got 9"),
        ("group", json!("nobody"), "group: there is no group \"nobody\""),
        ("roles", json!(["emperor"]), "unknown variant `emperor`"),
        ("email", json!("not an address"), "email"),
        ("display_name", json!(""), "display_name: must not be empty"),
    ] {
        let mut body = new.clone();
        body[field] = value;
        invalid.push((field, body, says));
    }
    let mut missing = new.clone();
    missing.as_object_mut().unwrap().remove("display_name");
    invalid.push(("display_name", missing, "missing field `display_name`"));
    for (field, body, says) in invalid {
        let r = app.post_json("/api/v1/users", &app.admin.token, &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.body);
        assert!(r.error().to_lowercase().contains(says), "{field}: {}", r.error());
    }
    assert!(app.audit().await.is_empty());

    let r = app.post_json("/api/v1/users", &app.admin.token, &new).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["username"], "carol");
    assert_eq!(r.body["roles"], json!(["user", "operator"]));
    let op = r.headers["x-operation-id"].to_str().unwrap().to_owned();
    let events = app.audit().await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].action.as_str(), events[0].operation_id.as_str()), ("user.create", op.as_str()));
    assert_eq!(events[0].actor, Actor::ApiToken { id: app.admin.token_id });
    assert!(!format!("{:?}", events[0]).contains("a long enough secret"));

    // The initial password works (and is stored hashed).
    let login = app.login("carol", "a long enough secret").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let stored = app
        .db
        .begin()
        .await
        .unwrap()
        .get_password(login.body["user"]["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.phc.starts_with("$argon2id$"));

    // The group can also be named by id; a taken username is a 409 naming the field.
    let group = app.alice.user.group.to_string();
    let mut again = new.clone();
    again["group"] = json!(group);
    again["username"] = json!("Carol");
    let r = app.post_json("/api/v1/users", &app.admin.token, &again).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.error().contains("username carol is taken"), "{}", r.error());
    assert_eq!(app.audit().await.len(), 1);
}

#[tokio::test]
async fn api_tokens_are_shown_once_listed_without_secrets_and_revoked_by_their_owner_only() {
    let app = setup().await;
    let r = app
        .post_json("/api/v1/tokens", &app.alice.token, &json!({"name": "laptop", "expires_in_days": 30}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let secret = r.body["token"].as_str().unwrap().to_owned();
    let id = r.body["api_token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["api_token"]["name"], "laptop");
    assert!(r.body["api_token"].get("token_hash").is_none(), "{}", r.body);
    let op = r.headers["x-operation-id"].to_str().unwrap().to_owned();
    let expires = time::OffsetDateTime::parse(
        r.body["api_token"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires, app.clock.now() + Duration::days(30));

    // The new token authenticates as alice.
    let me = app.bearer("GET", "/api/v1/me", &secret).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        (me.body["user"]["username"].as_str(), me.body["authenticated_with"].as_str()),
        (Some("alice"), Some("api_token"))
    );

    // The list holds alice's own tokens and no secret or hash.
    let list = app.bearer("GET", "/api/v1/tokens", &secret).await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<&str> =
        list.body.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}"); // tests, revoked, expired, laptop
    assert!(names.contains(&"laptop"));
    let text = list.body.to_string();
    assert!(!text.contains(&secret) && !text.contains("token_hash"), "{text}");
    let bobs = app.bearer("GET", "/api/v1/tokens", &app.bob.token).await;
    assert_eq!(bobs.body.as_array().unwrap().len(), 1);

    // Bad input is a 400 naming the field, and creates nothing.
    for (body, says) in [
        (json!({"name": "x", "expires_in_days": 0}), "expires_in_days: must be 1 to 365, got 0"),
        (json!({"name": "x", "expires_in_days": 366}), "expires_in_days: must be 1 to 365, got 366"),
        (json!({"name": "", "expires_in_days": 1}), "token name"),
        (json!({"name": "x".repeat(65)}), "token name"),
        (json!({"expires_in_days": 1}), "missing field `name`"),
        (json!({"name": "x", "expires_in_days": -1}), "invalid value"),
    ] {
        let r = app.post_json("/api/v1/tokens", &app.alice.token, &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert!(r.error().contains(says), "{body}: {}", r.error());
    }

    // Bob cannot revoke alice's token: 404, like a token that does not exist.
    let uri = format!("/api/v1/tokens/{id}");
    let theirs = app.bearer("DELETE", &uri, &app.bob.token).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.body);
    let missing = app
        .bearer("DELETE", &format!("/api/v1/tokens/{}", lanyard_core::ids::ApiTokenId::new()), &app.bob.token)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(app.bearer("GET", "/api/v1/me", &secret).await.status, StatusCode::OK, "still valid");
    assert_eq!(
        app.bearer("DELETE", "/api/v1/tokens/nope", &app.alice.token).await.status,
        StatusCode::BAD_REQUEST
    );

    // Alice revokes it (with another of her tokens); it stops working; revoking again is a 409.
    let r = app.bearer("DELETE", &uri, &app.alice.token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["revoked_at"].is_string());
    let revoke_op = r.headers["x-operation-id"].to_str().unwrap().to_owned();
    assert_eq!(app.bearer("GET", "/api/v1/me", &secret).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.bearer("DELETE", &uri, &app.alice.token).await.status, StatusCode::CONFLICT);

    let events = app.audit().await;
    let seen: Vec<(&str, &str)> =
        events.iter().map(|e| (e.action.as_str(), e.operation_id.as_str())).collect();
    assert_eq!(seen, [("api_token.create", op.as_str()), ("api_token.revoke", revoke_op.as_str())]);
    assert!(events.iter().all(|e| e.target.as_deref() == Some(format!("api_token:{id}").as_str())));
    assert!(!format!("{events:?}").contains(&secret));
}

#[tokio::test]
async fn device_credentials_follow_device_visibility_and_credential_actions_need_an_operator() {
    let app = setup().await;
    let mine =
        app.bearer("GET", &format!("/api/v1/devices/{}/credentials", app.alice_card), &app.alice.token).await;
    assert_eq!((mine.status, mine.body.clone()), (StatusCode::OK, json!([])));
    let theirs =
        app.bearer("GET", &format!("/api/v1/devices/{}/credentials", app.bob_card), &app.alice.token).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.error(), format!("device {} not found", app.bob_card));
    let any = app
        .bearer("GET", &format!("/api/v1/devices/{}/credentials", app.bob_card), &app.operator.token)
        .await;
    assert_eq!(any.status, StatusCode::OK);
    let missing = DeviceId::new();
    let none =
        app.bearer("GET", &format!("/api/v1/devices/{missing}/credentials"), &app.operator.token).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let auditor = app
        .bearer("GET", &format!("/api/v1/devices/{}/credentials", app.alice_card), &app.auditor.token)
        .await;
    assert_eq!(auditor.status, StatusCode::FORBIDDEN);

    let credential = lanyard_core::ids::CredentialId::new();
    for action in ["hold", "release"] {
        let uri = format!("/api/v1/credentials/{credential}/{action}");
        assert_eq!(app.bearer("POST", &uri, &app.alice.token).await.status, StatusCode::FORBIDDEN);
        assert_eq!(app.bearer("POST", &uri, &app.operator.token).await.status, StatusCode::NOT_FOUND);
    }
    let revoke = format!("/api/v1/credentials/{credential}/revoke");
    let body = json!({"reason": "key_compromise"});
    assert_eq!(app.post_json(&revoke, &app.admin.token, &body).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.post_json(&revoke, &app.operator.token, &body).await.status, StatusCode::NOT_FOUND);
    let r = app.post_json(&revoke, &app.operator.token, &json!({"reason": "boredom"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("expected one of: unspecified, key_compromise"), "{}", r.error());
    let r = app.post_json(&revoke, &app.operator.token, &json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("missing field `reason`"), "{}", r.error());
    let r = app.bearer("POST", "/api/v1/credentials/nope/hold", &app.operator.token).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(app.audit().await.is_empty());
}

#[tokio::test]
async fn an_invalid_policy_is_a_precise_400_and_the_old_policy_stays() {
    let app = setup().await;
    let groups = app.bearer("GET", "/api/v1/groups", &app.admin.token).await;
    let g = groups.body[0]["id"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/groups/{g}/policy");
    let before = app.snapshot().await;
    let mut too_many = serde_json::to_value(Policy::default()).unwrap();
    too_many["max_devices"] = json!(99);
    let mut typo = serde_json::to_value(Policy::default()).unwrap();
    typo["max_device"] = json!(2);
    let auth = format!("Bearer {}", app.admin.token);
    let headers = [("authorization", auth.as_str())];
    for (body, wanted) in [
        (too_many.to_string(), "max_devices"),
        (typo.to_string(), "unknown field `max_device`"),
        ("{\"may_add_device\": true".to_owned(), "EOF"),
    ] {
        let r = app.send("PUT", &uri, &headers, Some(&body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.error().contains(wanted), "{wanted}: {}", r.error());
    }
    let r = app.send("PUT", "/api/v1/groups/not-an-id/policy", &headers, Some(&too_many.to_string())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(app.snapshot().await, before);
    // Users and devices searches check their parameters.
    for uri in ["/api/v1/users?limit=0", "/api/v1/users?role=king", "/api/v1/users/alice/devices?state=shiny"]
    {
        let r = app.bearer("GET", uri, &app.operator.token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
    }
    let r = app.bearer("GET", "/api/v1/users/nobody/devices", &app.operator.token).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = app.bearer("GET", "/api/v1/users/alice/devices", &app.operator.token).await;
    let ids: Vec<_> =
        r.body.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, [app.alice_card.to_string()]);
}

/// One way to spoil a valid request body.
#[derive(Debug, Clone)]
enum Spoil {
    /// Cut the JSON text short at this fraction of its length.
    Truncate(f64),
    /// Replace the value of the n-th field with this JSON value.
    Replace(usize, Value),
    /// Add a field nobody asked for.
    Extra(String, Value),
    /// Drop the n-th field.
    Drop(usize),
}

fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[a-z0-9_ -]{0,12}".prop_map(Value::from),
        Just(Value::from("x".repeat(5000))),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_spoil() -> impl proptest::strategy::Strategy<Value = Spoil> {
    use proptest::prelude::*;
    prop_oneof![
        (0.0..1.0f64).prop_map(Spoil::Truncate),
        (0..8usize, any_json()).prop_map(|(i, v)| Spoil::Replace(i, v)),
        ("[a-z_]{1,12}", any_json()).prop_map(|(k, v)| Spoil::Extra(k, v)),
        (0..8usize).prop_map(Spoil::Drop),
    ]
}

fn spoil(valid: &Value, how: &Spoil) -> String {
    let mut v = valid.clone();
    let fields = v.as_object_mut().unwrap();
    let nth = |i: usize| fields.keys().nth(i % fields.len().max(1)).cloned();
    match how {
        Spoil::Truncate(f) => {
            let text = valid.to_string();
            let mut cut = ((text.len() as f64) * f) as usize;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            return text[..cut].to_owned();
        }
        Spoil::Replace(i, new) => {
            if let Some(k) = nth(*i) {
                fields.insert(k, new.clone());
            }
        }
        Spoil::Extra(k, new) => {
            if !fields.contains_key(k) {
                fields.insert(k.clone(), new.clone());
            }
        }
        Spoil::Drop(i) => {
            if let Some(k) = nth(*i) {
                fields.remove(&k);
            }
        }
    }
    v.to_string()
}

/// Property: whatever is done to a valid body, every route that reads one answers without a
/// server fault, and a refusal (4xx) leaves the database exactly as it was.
#[test]
fn spoiled_request_bodies_never_fault_and_refusals_change_nothing() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let app = rt.block_on(setup());
    let a = app.alice_card;
    let g = rt.block_on(app.bearer("GET", "/api/v1/groups", &app.admin.token)).body[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let issued = rt.block_on(app.post_json(
        &format!("/api/v1/devices/{a}/certificates"),
        &app.operator.token,
        &json!({"csr_pem": csr_pem(), "profile": "digital-signature", "slot": "9c"}),
    ));
    let c = issued.body["credential"]["id"].as_str().unwrap().to_owned();
    let routes: Vec<(&str, String, &str, Value)> = vec![
        ("POST", "/api/v1/login".into(), "", json!({"username": "alice", "password": PASSWORD})),
        (
            "POST",
            "/api/v1/devices".into(),
            &app.operator.token,
            json!({"kind": "usb_key", "model": "Key", "serial": "1", "owner": "bob"}),
        ),
        (
            "POST",
            format!("/api/v1/devices/{a}/certificates"),
            &app.operator.token,
            json!({"csr_pem": csr_pem(), "profile": "key-management", "slot": "9d", "validity_days": 30}),
        ),
        (
            "POST",
            format!("/api/v1/credentials/{c}/revoke"),
            &app.operator.token,
            json!({"reason": "superseded"}),
        ),
        (
            "POST",
            "/api/v1/users".into(),
            &app.admin.token,
            json!({"username": "dave", "display_name": "Dave", "email": "d@example.org", "roles": ["user"], "group": "staff", "password": "a long enough password"}),
        ),
        ("POST", "/api/v1/tokens".into(), &app.alice.token, json!({"name": "laptop", "expires_in_days": 30})),
        ("POST", "/api/v1/me/mobile-enrollments".into(), &app.bob.token, json!({"type": "mobile_profile"})),
        (
            "POST",
            "/api/v1/groups".into(),
            &app.admin.token,
            json!({"name": "contractors", "policy": Policy::default()}),
        ),
        (
            "PUT",
            format!("/api/v1/groups/{g}/policy"),
            &app.admin.token,
            serde_json::to_value(Policy::default()).unwrap(),
        ),
    ];
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 256, ..ProptestConfig::default() });
    runner
        .run(&(0..routes.len(), any_spoil()), |(r, how)| {
            let (method, uri, token, valid) = &routes[r];
            let body = spoil(valid, &how);
            rt.block_on(async {
                let before = app.snapshot().await;
                let auth = format!("Bearer {token}");
                let headers: Vec<(&str, &str)> =
                    if token.is_empty() { vec![] } else { vec![("authorization", auth.as_str())] };
                let reply = app.send(method, uri, &headers, Some(&body)).await;
                prop_assert!(!reply.status.is_server_error(), "{method} {uri} {body}: {}", reply.body);
                prop_assert!(reply.headers.contains_key("x-operation-id"));
                if reply.status.is_client_error() {
                    prop_assert!(!reply.error().is_empty());
                    // A failed login is recorded (`session.login_failed`); nothing else may change.
                    if *uri != "/api/v1/login" {
                        prop_assert_eq!(
                            app.snapshot().await,
                            before,
                            "{} {} {} changed something",
                            method,
                            uri,
                            body
                        );
                    }
                }
                Ok(())
            })
        })
        .unwrap();
}

#[tokio::test]
async fn device_actions_need_an_operator_and_follow_the_lifecycle() {
    let app = setup().await;
    let a = app.alice_card;
    let routes: [(&str, Option<Value>); 5] = [
        ("revoke", Some(json!({"reason": "key_compromise"}))),
        ("mark", Some(json!({"condition": "stolen"}))),
        ("terminate", None),
        ("recycle", None),
        ("activate", None),
    ];
    // Nobody but an operator gets anywhere, and a refusal changes nothing.
    let before = app.snapshot().await;
    for caller in [&app.alice, &app.bob, &app.auditor, &app.admin] {
        for (action, body) in &routes {
            let r = app
                .call("POST", &format!("/api/v1/devices/{a}/{action}"), Some(&caller.token), body.as_ref())
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{} {action}: {}", caller.user.username, r.body);
        }
    }
    assert_eq!(app.snapshot().await, before);
    // Malformed input is a 400 naming the field.
    let op = Some(app.operator.token.as_str());
    let uri = |action: &str| format!("/api/v1/devices/{a}/{action}");
    let r = app.call("POST", &uri("mark"), op, Some(&json!({"condition": "misplaced"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("condition"), "{}", r.error());
    let r = app.call("POST", &uri("revoke"), op, Some(&json!({"reason": "bored"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // Activating a card that is not pending is a conflict (and reveals nothing); issuance is not
    // configured in this app, which is a 503 before anything else.
    let r = app.call("POST", &uri("activate"), op, None).await;
    assert!(r.status == StatusCode::SERVICE_UNAVAILABLE || r.status == StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body.get("initial_pin").is_none());
    assert_eq!(app.snapshot().await, before);
    // An operator walks the card through stolen → terminated → recycled stock.
    let r = app.call("POST", &uri("mark"), op, Some(&json!({"condition": "stolen"}))).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::OK, Some("revoked")), "{}", r.body);
    assert_eq!(r.body["revocation_reason"], "stolen");
    let r = app.call("POST", &uri("revoke"), op, Some(&json!({"reason": "key_compromise"}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "a revoked card is not revoked twice: {}", r.body);
    let r = app.call("POST", &uri("terminate"), op, None).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::OK, Some("terminated")), "{}", r.body);
    let r = app.call("POST", &uri("recycle"), op, None).await;
    assert_eq!((r.status, r.body["state"].as_str()), (StatusCode::OK, Some("available")), "{}", r.body);
    assert!(r.body["owner"].is_null());
    // Bob's card was never touched.
    assert_eq!(app.device(app.bob_card).await.state, DeviceState::Active);
    let actions: Vec<String> = app.audit().await.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["device.mark_stolen", "device.terminate", "device.recycle"]);
}

#[tokio::test]
async fn an_api_token_records_when_it_was_last_used_to_the_minute() {
    let app = setup().await;
    let id = app.alice.token_id;
    let user = app.alice.user.id;
    let db = Arc::clone(&app.db);
    let used = move || {
        let db = Arc::clone(&db);
        async move {
            let mut tx = db.begin().await.unwrap();
            let tokens = tx.list_api_tokens(user).await.unwrap();
            tokens.into_iter().find(|t| t.id == id).unwrap().last_used_at
        }
    };
    assert_eq!(used().await, None);
    let t0 = app.clock.now();
    assert_eq!(app.bearer("GET", "/api/v1/me", &app.alice.token).await.status, StatusCode::OK);
    assert_eq!(used().await, Some(t0));
    app.clock.advance(Duration::seconds(30));
    app.bearer("GET", "/api/v1/me", &app.alice.token).await;
    assert_eq!(used().await, Some(t0), "not rewritten within a minute");
    app.clock.advance(Duration::seconds(31));
    app.bearer("GET", "/api/v1/me", &app.alice.token).await;
    assert_eq!(used().await, Some(t0 + Duration::seconds(61)));
}

/// The card-session and device-action routes by role: who may not act gets a refusal (401, 403
/// naming the role, or 404 for someone else's device or job) and nothing changes. The in-process
/// issuance flows themselves are in tests/issuance.rs.
#[tokio::test]
async fn card_routes_refuse_every_caller_without_the_role_and_change_nothing() {
    let mut app = setup().await;
    app.state = app
        .state
        .clone()
        .with_issuance(lanyard_server::issuance::IssuanceConfig::new(Kek::generate().unwrap(), vec![]));
    let a = app.alice_card;
    // A job of Alice's to aim at.
    let r = app
        .post_json("/api/v1/issuance", &app.alice.token, &json!({"kind": "usb_key", "model": "YubiKey 5"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let job = r.body["job"]["id"].as_str().unwrap().to_owned();
    let before = app.snapshot().await;
    let issuance = json!({"kind": "usb_key", "model": "YubiKey 5"});
    let replace = json!({"reason": "superseded", "kind": "usb_key", "model": "YubiKey 5"});
    let revoke = json!({"reason": "key_compromise"});
    let mark = json!({"condition": "lost"});
    let routes: Vec<(&str, String, Option<&Value>)> = vec![
        ("GET", format!("/api/v1/jobs/{job}"), None),
        ("POST", format!("/api/v1/jobs/{job}/ticket"), Some(&issuance)),
        ("POST", format!("/api/v1/devices/{a}/activate"), None),
        ("POST", format!("/api/v1/devices/{a}/unlock"), None),
        ("POST", format!("/api/v1/devices/{a}/wipe"), None),
        ("POST", format!("/api/v1/devices/{a}/replace"), Some(&replace)),
        ("POST", format!("/api/v1/devices/{a}/revoke"), Some(&revoke)),
        ("POST", format!("/api/v1/devices/{a}/mark"), Some(&mark)),
        ("POST", format!("/api/v1/devices/{a}/terminate"), None),
        ("POST", format!("/api/v1/devices/{a}/recycle"), None),
        ("POST", "/api/v1/issuance".into(), Some(&issuance)),
    ];
    use StatusCode as S;
    const NO: StatusCode = S::FORBIDDEN;
    const NF: StatusCode = S::NOT_FOUND;
    #[rustfmt::skip]
    let expected: [(&str, Option<&str>, [StatusCode; 11]); 6] = [
        // job, ticket, activate, unlock, wipe, replace, revoke, mark, terminate, recycle, issuance
        ("bob", Some(&app.bob.token),           [NF, NF, NO, NF, NO, NO, NO, NO, NO, NO, S::CREATED]),
        ("auditor", Some(&app.auditor.token),   [NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO]),
        ("admin", Some(&app.admin.token),       [NO, NO, NO, NO, NO, NO, NO, NO, NO, NO, NO]),
        ("revoked token", Some(&app.revoked_token), [S::UNAUTHORIZED; 11]),
        ("expired token", Some(&app.expired_token), [S::UNAUTHORIZED; 11]),
        ("anonymous", None,                     [S::UNAUTHORIZED; 11]),
    ];
    for (who, token, statuses) in expected {
        for ((method, uri, body), want) in routes.iter().zip(statuses) {
            if want.is_success() {
                continue; // Bob starting his own issuance is allowed; checked below.
            }
            // The ticket route reads a purpose, not an issuance body: send it an empty object.
            let body = if uri.ends_with("/ticket") { Some(json!({})) } else { body.cloned() };
            let r = app.call(method, uri, token, body.as_ref()).await;
            assert_eq!(r.status, want, "{who} {method} {uri}: {}", r.body);
            assert_eq!(app.snapshot().await, before, "{who} {method} {uri} changed something");
        }
    }
    // Bob may start issuing a card of his own, and Alice's job stays hers.
    let r = app.post_json("/api/v1/issuance", &app.bob.token, &issuance).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = app.bearer("GET", &format!("/api/v1/jobs/{job}"), &app.alice.token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn a_session_ends_after_30_idle_minutes_and_after_8_hours_however_busy() {
    let app = setup().await;
    let me = |cookie: &str| {
        let cookie = cookie.to_owned();
        let app = &app;
        async move { app.send("GET", "/api/v1/me", &[("cookie", &cookie)], None).await.status }
    };
    // Idle for 31 minutes: gone.
    let (cookie, _) = app.session("alice").await;
    app.clock.advance(Duration::minutes(31));
    assert_eq!(me(&cookie).await, StatusCode::UNAUTHORIZED);
    // Used every 20 minutes: alive for 8 hours after login, not a minute more.
    let (cookie, _) = app.session("alice").await;
    for _ in 0..23 {
        app.clock.advance(Duration::minutes(20));
        assert_eq!(me(&cookie).await, StatusCode::OK);
    }
    app.clock.advance(Duration::minutes(20)); // 8 h after login
    assert_eq!(me(&cookie).await, StatusCode::UNAUTHORIZED);
}

impl App {
    /// Every agent of the test callers, for "nothing changed" checks.
    async fn agents(&self) -> Vec<lanyard_core::model::Agent> {
        let mut tx = self.db.read().await.unwrap();
        let mut all = Vec::new();
        for c in [&self.alice, &self.bob, &self.operator, &self.auditor, &self.admin] {
            all.extend(tx.list_agents(c.user.id).await.unwrap());
        }
        all
    }
}

#[tokio::test]
async fn a_user_pairs_an_agent_by_code_once_and_only_they_see_and_revoke_it() {
    let mut app = setup().await;
    app.state = app.state.clone().with_public_url("https://lanyard.example.org/");
    let r = app.post_json("/api/v1/agents/pairing", &app.alice.token, &json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let code = r.body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 11, "{code}");
    assert_eq!(
        r.body["link"],
        format!("lanyard://pair?server=https%3A%2F%2Flanyard.example.org&code={code}")
    );
    let expires = time::OffsetDateTime::parse(
        r.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires, app.clock.now() + Duration::minutes(2));

    // Unauthenticated: the code is the proof. Typed in lower case with a space, it still pairs.
    let typed = code.to_lowercase().replace('-', " ");
    let body = json!({"code": typed, "host_name": "ws-0042.example.org"}).to_string();
    let r = app.send("POST", "/api/v1/agents/pair", &[], Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let credential = r.body["credential"].as_str().unwrap().to_owned();
    assert_eq!(credential.len(), 64);
    let agent = r.body["agent"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["agent"]["user"], json!(app.alice.user.id));
    assert_eq!(r.body["agent"]["host_name"], "ws-0042.example.org");
    assert_eq!(r.body["agent"]["last_seen_at"], Value::Null);

    // Used, wrong and expired codes get one answer that does not say which.
    let (_, late) = {
        let r = app.post_json("/api/v1/agents/pairing", &app.alice.token, &json!({})).await;
        (r.status, r.body["code"].as_str().unwrap().to_owned())
    };
    let agents_before = app.agents().await;
    let mut messages = BTreeSet::new();
    for (code, advance) in [(code.as_str(), 0), ("ABCDE-FGHJK", 0), (late.as_str(), 120)] {
        app.clock.advance(Duration::seconds(advance));
        let body = json!({"code": code, "host_name": "ws-2"}).to_string();
        let r = app.send("POST", "/api/v1/agents/pair", &[], Some(&body)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{code}: {}", r.body);
        messages.insert(r.error().to_owned());
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(app.agents().await, agents_before, "a refused code pairs nothing");

    // Listing: alice sees her agent (no hash); bob sees none and cannot revoke hers.
    let r = app.bearer("GET", "/api/v1/agents", &app.alice.token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["id"], agent.as_str());
    assert!(r.body[0].get("credential_hash").is_none(), "{}", r.body);
    let r = app.bearer("GET", "/api/v1/agents", &app.bob.token).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!([])));
    let before = (app.snapshot().await, app.agents().await);
    let r = app.bearer("DELETE", &format!("/api/v1/agents/{agent}"), &app.bob.token).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = app
        .bearer("DELETE", &format!("/api/v1/agents/{}", lanyard_core::ids::AgentId::new()), &app.bob.token)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!((app.snapshot().await, app.agents().await), before, "bob changed nothing");
    // An auditor alone has no workstation to pair.
    let r = app.post_json("/api/v1/agents/pairing", &app.auditor.token, &json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("user, operator or administrator role"), "{}", r.body);

    let r = app.bearer("DELETE", &format!("/api/v1/agents/{agent}"), &app.alice.token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["revoked_at"].is_string());
    let r = app.bearer("DELETE", &format!("/api/v1/agents/{agent}"), &app.alice.token).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let system =
        lanyard_core::authz::System::new(lanyard_core::audit::OperationId::random(), app.clock.now());
    assert!(system.authenticate_agent(app.db.as_ref(), &credential).await.unwrap().is_none(), "revoked");

    let events = app.audit().await;
    let actions: Vec<&str> =
        events.iter().map(|e| e.action.as_str()).filter(|a| a.starts_with("agent.")).collect();
    assert_eq!(actions, ["agent.pairing_start", "agent.pair", "agent.pairing_start", "agent.revoke"]);
    let pair = events.iter().find(|e| e.action == "agent.pair").unwrap();
    assert_eq!(pair.actor, Actor::System);
    assert_eq!(pair.target.as_deref(), Some(format!("agent:{agent}").as_str()));
    let text = serde_json::to_string(&events).unwrap();
    for secret in [&code, &code.replace('-', ""), &late, &late.replace('-', ""), &credential] {
        assert!(!text.contains(secret.as_str()), "the audit log holds a secret");
    }
}

/// Pairs an agent for `token`'s account through the API: its id.
async fn pair_for(app: &App, token: &str, host: &str) -> String {
    let r = app.post_json("/api/v1/agents/pairing", token, &json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let body = json!({"code": r.body["code"], "host_name": host}).to_string();
    let r = app.send("POST", "/api/v1/agents/pair", &[], Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["agent"]["id"].as_str().unwrap().to_owned()
}

/// Operators pair the agent at their desk (to issue in person) and administrators theirs, without
/// the cardholder role; each agent stays bound to the account that paired it, and no one, an
/// operator included, lists, refreshes, revokes or runs sessions on another account's agent.
#[tokio::test]
async fn operators_and_administrators_pair_their_own_agents_and_reach_no_one_elses() {
    let app = setup().await;
    let oscars = pair_for(&app, &app.operator.token, "help-desk-1").await;
    let roots = pair_for(&app, &app.admin.token, "admin-ws").await;
    let alices = pair_for(&app, &app.alice.token, "alice-ws").await;
    for (who, token, own) in [
        ("oscar", &app.operator.token, &oscars),
        ("root", &app.admin.token, &roots),
        ("alice", &app.alice.token, &alices),
    ] {
        let r = app.bearer("GET", "/api/v1/agents", token).await;
        assert_eq!(r.status, StatusCode::OK, "{who}: {}", r.body);
        let ids: Vec<&str> = r.body.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [own.as_str()], "{who} lists exactly their own agent");
    }
    let stored = app.agents().await;
    let owner = |id: &str| stored.iter().find(|a| a.id.to_string() == id).unwrap().user;
    assert_eq!(
        (owner(&oscars), owner(&roots), owner(&alices)),
        (app.operator.user.id, app.admin.user.id, app.alice.user.id)
    );

    // Another account's agent is a 404 for every route, whatever the caller's roles.
    let before = (app.snapshot().await, app.agents().await);
    for (token, theirs) in
        [(&app.operator.token, &alices), (&app.alice.token, &oscars), (&app.admin.token, &oscars)]
    {
        let r = app.bearer("DELETE", &format!("/api/v1/agents/{theirs}"), token).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        let r = app.post_json(&format!("/api/v1/agents/{theirs}/refresh"), token, &json!({})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    }
    assert_eq!((app.snapshot().await, app.agents().await), before, "nothing changed");

    // Each revokes their own.
    for (token, own) in [(&app.operator.token, &oscars), (&app.admin.token, &roots)] {
        let r = app.bearer("DELETE", &format!("/api/v1/agents/{own}"), token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let actors: Vec<Actor> = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e.action == "agent.pairing_start")
        .map(|e| e.actor)
        .collect();
    let by_token = |c: &Caller| Actor::ApiToken { id: c.token_id };
    assert_eq!(actors, [by_token(&app.operator), by_token(&app.admin), by_token(&app.alice)]);
}

#[tokio::test]
async fn bad_pairing_bodies_are_precise_400s_that_use_nothing_up() {
    let app = setup().await;
    let r = app.post_json("/api/v1/agents/pairing", &app.alice.token, &json!({})).await;
    let code = r.body["code"].as_str().unwrap().to_owned();
    let before = (app.snapshot().await, app.agents().await);
    for (body, needle) in [
        ("{}".to_owned(), "code"),
        (json!({"code": code}).to_string(), "host_name"),
        (json!({"code": code, "host_name": "ws", "extra": 1}).to_string(), "extra"),
        (json!({"code": 12, "host_name": "ws"}).to_string(), "code"),
        (json!({"code": code, "host_name": ""}).to_string(), "host_name"),
        (json!({"code": code, "host_name": "ws\u{7}"}).to_string(), "host_name"),
        (json!({"code": "ABCDE", "host_name": "ws"}).to_string(), "code"),
        (json!({"code": "ABCDE-FGHJU", "host_name": "ws"}).to_string(), "code"),
        ("not json".to_owned(), ""),
    ] {
        let r = app.send("POST", "/api/v1/agents/pair", &[], Some(&body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert!(r.error().contains(needle), "{body}: {}", r.error());
    }
    let r = app.bearer("DELETE", "/api/v1/agents/not-an-id", &app.alice.token).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("agent id"), "{}", r.error());
    assert_eq!((app.snapshot().await, app.agents().await), before, "nothing changed");
    // The code was not used up by any of them.
    let body = json!({"code": code, "host_name": "ws"}).to_string();
    let r = app.send("POST", "/api/v1/agents/pair", &[], Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

// The web portal (`/portal`): the same sessions, seen through HTML pages and forms.

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl App {
    /// A portal request; `form` is sent as `application/x-www-form-urlencoded`.
    async fn page(&self, method: &str, uri: &str, headers: &[(&str, &str)], form: Option<&str>) -> Page {
        let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "lanyard.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match form {
            Some(f) => req
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(f.to_owned())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        Page { status, headers, text: String::from_utf8(bytes.to_vec()).unwrap() }
    }

    /// Signs in through the portal's form: the cookie pair and the CSRF token the pages carry.
    async fn portal_session(&self, username: &str) -> (String, String) {
        let form = format!("username={username}&password=correct+horse+battery+staple");
        let p = self.page("POST", "/portal/login", &[("origin", "https://lanyard.test")], Some(&form)).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
        assert_eq!(p.headers[header::LOCATION], "/");
        let set = p.headers[header::SET_COOKIE].to_str().unwrap();
        let pair = set.split(';').next().unwrap().to_owned();
        let devices = self.page("GET", "/portal/devices", &[("cookie", &pair)], None).await;
        let token = devices
            .text
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        (pair, token)
    }
}

#[tokio::test]
async fn every_portal_response_carries_the_security_headers() {
    let app = setup().await;
    let (cookie, _) = app.portal_session("alice").await;
    for (uri, cookie, status) in [
        ("/", "", StatusCode::SEE_OTHER),
        ("/portal/login", "", StatusCode::OK),
        ("/portal/help", "", StatusCode::OK),
        ("/portal/devices", "", StatusCode::SEE_OTHER),
        ("/portal/devices", cookie.as_str(), StatusCode::OK),
        ("/portal/nothing-here", cookie.as_str(), StatusCode::NOT_FOUND),
    ] {
        let p = app.page("GET", uri, &[("cookie", cookie)], None).await;
        assert_eq!(p.status, status, "{uri}");
        assert_eq!(
            p.headers[header::CONTENT_SECURITY_POLICY],
            lanyard_server::portal::CONTENT_SECURITY_POLICY
        );
        assert_eq!(p.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(p.headers[header::REFERRER_POLICY], "same-origin");
        assert_eq!(p.headers[header::CACHE_CONTROL], "no-store", "{uri}");
        assert_eq!(p.headers[header::X_FRAME_OPTIONS], "DENY");
    }
    // The pages link only to assets the binary serves, which are cached for good.
    let login = app.page("GET", "/portal/login", &[], None).await;
    assert!(!login.text.contains("style=") && !login.text.contains("<script>"), "no inline code");
    for asset in login.text.split(['"', '\'']).filter(|s| s.starts_with("/portal/assets/")) {
        let a = app.page("GET", asset, &[], None).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        assert_eq!(a.headers[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
        assert_eq!(
            a.headers[header::CONTENT_SECURITY_POLICY],
            lanyard_server::portal::CONTENT_SECURITY_POLICY
        );
    }
    let stale = app.page("GET", "/portal/assets/lanyard-0000000000000000.css", &[], None).await;
    assert_eq!(stale.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_form_the_portal_cannot_read_gets_a_portal_page_and_changes_nothing() {
    let app = setup().await;
    let origin = [("origin", "https://lanyard.test")];
    // A repeated field, and a body that is not a form at all. (A missing field is the sign-in
    // page's own message, tested with the sign-in.)
    for (body, content_type) in [
        ("username=alice&username=bob&password=x", "application/x-www-form-urlencoded"),
        ("{\"username\":\"alice\"}", "application/json"),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri("/portal/login")
            .header(header::HOST, "lanyard.test")
            .header("origin", origin[0].1)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = router(app.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        assert!(status.is_client_error(), "{body}: {status}");
        let h = resp.headers().clone();
        assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"), "{body}");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], lanyard_server::portal::CONTENT_SECURITY_POLICY);
        assert!(h.get(header::SET_COOKIE).is_none(), "no session from an unreadable form");
        let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec())
            .unwrap();
        assert!(text.contains("That request could not be read"), "{text}");
        assert!(text.contains("Nothing was changed"), "{text}");
    }
    // The API keeps its own JSON errors.
    let api = app.page("POST", "/api/v1/login", &origin, Some("username=alice")).await;
    assert!(api.status.is_client_error());
    assert!(!api.text.contains("That request could not be read"));
}

#[tokio::test]
async fn portal_sign_in_shares_the_api_throttle_and_one_message_for_both_mistakes() {
    let app = setup().await;
    let origin = [("origin", "https://lanyard.test")];
    let wrong_user = app.page("POST", "/portal/login", &origin, Some("username=nobody&password=x")).await;
    let wrong_password = app.page("POST", "/portal/login", &origin, Some("username=alice&password=x")).await;
    for p in [&wrong_user, &wrong_password] {
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.text.contains("That username and password do not match an account."), "{}", p.text);
        assert!(!p.headers.contains_key(header::SET_COOKIE));
    }
    let empty = app.page("POST", "/portal/login", &origin, Some("username=alice&password=")).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.text.contains("Enter both your username and your password."));
    for _ in 0..4 {
        app.page("POST", "/portal/login", &origin, Some("username=alice&password=x")).await;
    }
    // Five failures through the portal: the API refuses the right password too, and vice versa.
    let api = app.login("alice", PASSWORD).await;
    assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
    let form = "username=alice&password=correct+horse+battery+staple";
    let portal = app.page("POST", "/portal/login", &origin, Some(form)).await;
    assert_eq!(portal.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(portal.text.contains("Try again in 15 minutes."), "{}", portal.text);
    assert_eq!(portal.headers[header::RETRY_AFTER], "900");
    let failed = app.all_audit().await.iter().filter(|e| e.action == "session.login_failed").count();
    assert_eq!(failed, 6);
}

#[tokio::test]
async fn portal_posts_need_this_sites_origin_and_the_sessions_token() {
    let app = setup().await;
    let (cookie, token) = app.portal_session("alice").await;
    let c = ("cookie", cookie.as_str());
    let with_token = format!("csrf_token={token}");
    let cross = app
        .page("POST", "/portal/login", &[("origin", "https://evil.test")], Some("username=alice&password=x"))
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(cross.text.contains("Request from another site refused"));
    for (headers, form) in [
        (vec![c], ""),
        (vec![c], "csrf_token=0000"),
        (vec![c, ("sec-fetch-site", "cross-site")], with_token.as_str()),
        (vec![c, ("origin", "https://evil.test")], with_token.as_str()),
        (vec![c, ("origin", "null")], with_token.as_str()),
    ] {
        for uri in ["/portal/logout", "/portal/workstations/pairing"] {
            let p = app.page("POST", uri, &headers, Some(form)).await;
            assert_eq!(p.status, StatusCode::FORBIDDEN, "{uri} {headers:?} {form}");
            assert_eq!(p.headers[header::CACHE_CONTROL], "no-store");
        }
    }
    assert!(app.audit().await.iter().all(|e| e.action != "agent.pairing_start"), "nothing changed");
    // htmx sends the token in a header instead of the form.
    let htmx = app
        .page(
            "POST",
            "/portal/workstations/pairing",
            &[c, ("hx-request", "true"), ("x-csrf-token", &token), ("sec-fetch-site", "same-origin")],
            Some(""),
        )
        .await;
    assert_eq!(htmx.status, StatusCode::OK, "{}", htmx.text);
    assert!(htmx.text.starts_with("<div id=\"pairing\""), "a fragment: {}", htmx.text);
    let out =
        app.page("POST", "/portal/logout", &[c, ("origin", "https://lanyard.test")], Some(&with_token)).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let after = app.page("GET", "/portal/devices", &[c], None).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER, "the session ended");
}

#[tokio::test]
async fn portal_pages_show_only_the_users_own_devices_and_workstations() {
    let app = setup().await;
    let (alice, alice_token) = app.portal_session("alice").await;
    let (bob, _) = app.portal_session("bob").await;
    let mine =
        app.page("GET", &format!("/portal/devices/{}", app.alice_card), &[("cookie", &alice)], None).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert!(mine.text.contains(&app.alice_card.to_string()));
    let theirs =
        app.page("GET", &format!("/portal/devices/{}", app.alice_card), &[("cookie", &bob)], None).await;
    let missing =
        app.page("GET", &format!("/portal/devices/{}", DeviceId::new()), &[("cookie", &bob)], None).await;
    let garbage = app.page("GET", "/portal/devices/not-an-id", &[("cookie", &bob)], None).await;
    for p in [&theirs, &missing, &garbage] {
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        assert!(p.text.contains("Page not found"));
        assert!(!p.text.contains(&app.alice_card.to_string()));
    }
    let list = app.page("GET", "/portal/devices", &[("cookie", &bob)], None).await;
    assert!(
        list.text.contains(&app.bob_card.to_string()) && !list.text.contains(&app.alice_card.to_string())
    );

    // Alice pairs an agent; Bob can neither see nor revoke it.
    let code = app
        .page(
            "POST",
            "/portal/workstations/pairing",
            &[("cookie", &alice), ("origin", "https://lanyard.test")],
            Some(&format!("csrf_token={alice_token}")),
        )
        .await;
    let code =
        code.text.split("class=\"code\">").nth(1).and_then(|r| r.split('<').next()).unwrap().to_owned();
    let body = json!({"code": code, "host_name": "alice-pc"}).to_string();
    let paired = app.send("POST", "/api/v1/agents/pair", &[], Some(&body)).await;
    assert_eq!(paired.status, StatusCode::CREATED, "{}", paired.body);
    let agent = paired.body["agent"]["id"].as_str().unwrap().to_owned();
    let bobs = app.page("GET", "/portal/workstations", &[("cookie", &bob)], None).await;
    assert!(!bobs.text.contains("alice-pc"));
    let bob_token =
        bobs.text.split("name=\"csrf_token\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let confirm =
        app.page("GET", &format!("/portal/workstations/{agent}/revoke"), &[("cookie", &bob)], None).await;
    assert_eq!(confirm.status, StatusCode::NOT_FOUND);
    let form = format!("csrf_token={bob_token}");
    let revoke = app
        .page("POST", &format!("/portal/workstations/{agent}/revoke"), &[("cookie", &bob)], Some(&form))
        .await;
    assert_eq!(revoke.status, StatusCode::NOT_FOUND);
    let alices = app.page("GET", "/portal/workstations", &[("cookie", &alice)], None).await;
    assert!(alices.text.contains("alice-pc") && alices.text.contains("Paired"));

    let form = format!("csrf_token={alice_token}");
    let revoked = app
        .page("POST", &format!("/portal/workstations/{agent}/revoke"), &[("cookie", &alice)], Some(&form))
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert_eq!(revoked.headers[header::LOCATION], format!("/portal/workstations?revoked={agent}").as_str());
    let events: Vec<_> = app.audit().await.into_iter().filter(|e| e.action == "agent.revoke").collect();
    assert_eq!(events.len(), 1);
    let again = app
        .page("POST", &format!("/portal/workstations/{agent}/revoke"), &[("cookie", &alice)], Some(&form))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.text.contains("already revoked"));
}

#[tokio::test]
async fn add_device_follows_the_policy_check_issuance_makes() {
    let app = setup().await;
    let (alice, _) = app.portal_session("alice").await;
    let open = app.page("GET", "/portal/devices", &[("cookie", &alice)], None).await;
    assert!(open.text.contains("href=\"/portal/devices/new\""));
    let add = app.page("GET", "/portal/devices/new", &[("cookie", &alice)], None).await;
    assert!(add.text.contains("Lanyard virtual card") && add.text.contains("Show a pairing code"));

    // The same group, now closed to new cards.
    let mut tx = app.db.begin().await.unwrap();
    let mut group = tx.get_group(app.alice.user.group).await.unwrap().unwrap();
    group.policy.may_add_device = false;
    tx.update_group(&group).await.unwrap();
    tx.commit().await.unwrap();
    let closed = app.page("GET", "/portal/devices", &[("cookie", &alice)], None).await;
    assert!(
        closed.text.contains(
            "<button type=\"button\" disabled aria-describedby=\"add-refused\">Add Device</button>"
        )
    );
    assert!(closed.text.contains("does not allow adding a smart card or USB key"));
    let add = app.page("GET", "/portal/devices/new", &[("cookie", &alice)], None).await;
    assert!(!add.text.contains("Show a pairing code"));
}

#[tokio::test]
async fn htmx_requests_get_full_navigations_for_redirects_and_errors_in_place_of_main() {
    let app = setup().await;
    let (cookie, token) = app.portal_session("alice").await;
    let hx = ("hx-request", "true");
    // The session is gone: htmx is told to navigate to the sign-in page, not to swap it in.
    let ended = app.page("POST", "/portal/workstations/pairing", &[hx], Some("")).await;
    assert_eq!(ended.status, StatusCode::OK);
    assert_eq!(ended.headers["hx-redirect"], "/portal/login");
    // A refused token: the error page replaces <main>, so its explanation is seen.
    let refused =
        app.page("POST", "/portal/workstations/pairing", &[hx, ("cookie", &cookie)], Some("")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.headers["hx-retarget"], "main");
    assert_eq!(refused.headers["hx-reselect"], "main");
    assert_eq!(refused.headers["hx-reswap"], "outerHTML");
    assert!(refused.text.contains("<main id=\"main\""));
    // Sign-out through htmx still clears the cookie.
    let form = format!("csrf_token={token}");
    let out = app.page("POST", "/portal/logout", &[hx, ("cookie", &cookie)], Some(&form)).await;
    assert_eq!(out.headers["hx-redirect"], "/portal/login?signed_out=1");
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
}

// The help desk, audit log and their role checks.

impl App {
    /// A card for alice with a manufacturer serial, as a help-desk search would find it.
    async fn serial_card(&self, serial: &str) -> DeviceId {
        let mut d = Device::new(DeviceKind::UsbKey, "YubiKey 5 NFC", self.clock.now()).unwrap();
        d.owner = Some(self.alice.user.id);
        d.state = DeviceState::Active;
        d.serial = Some(serial.into());
        let mut tx = self.db.begin().await.unwrap();
        tx.insert_device(&d).await.unwrap();
        tx.commit().await.unwrap();
        d.id
    }
}

/// The audit table's cell for an event with `action`.
fn row(action: &str) -> String {
    format!("data-label=\"Action\" class=\"mono action\">{action}<")
}

/// What a confirmation page or action form posts for `action`, with the token.
fn action_form(token: &str, extra: &str) -> String {
    format!("csrf_token={token}{extra}")
}

const ACTION_SLUGS: [&str; 9] =
    ["activate", "suspend", "resume", "revoke", "lost", "stolen", "damaged", "terminate", "recycle"];

#[tokio::test]
async fn help_desk_and_audit_pages_are_a_404_to_everyone_without_the_role_and_change_nothing() {
    let app = setup().await;
    let card = app.alice_card;
    let before = app.device(card).await;
    let events_before = app.all_audit().await.len();
    let operator_gets = [
        "/portal/operator".to_owned(),
        "/portal/operator?q=alice".to_owned(),
        format!("/portal/operator/users/{}", app.alice.user.id),
        format!("/portal/operator/devices/{card}"),
        format!(
            "/portal/operator/devices/{card}/certificates/{}.pem",
            lanyard_core::ids::CredentialId::new()
        ),
    ];
    for who in ["alice", "audrey", "root"] {
        let (cookie, token) = app.portal_session(who).await;
        let c = ("cookie", cookie.as_str());
        let mut gets = operator_gets.to_vec();
        gets.extend(ACTION_SLUGS.iter().map(|a| format!("/portal/operator/devices/{card}/{a}")));
        for uri in &gets {
            let p = app.page("GET", uri, &[c], None).await;
            assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} {uri}");
            assert!(p.text.contains("Page not found"), "{who} {uri}");
            assert!(!p.text.contains("Help Desk"), "{who} sees no help-desk link");
        }
        for action in ACTION_SLUGS {
            let form = action_form(&token, "&note=x&reason=unspecified");
            let uri = format!("/portal/operator/devices/{card}/{action}");
            let p = app.page("POST", &uri, &[c, ("origin", "https://lanyard.test")], Some(&form)).await;
            assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} POST {action}");
        }
    }
    for who in ["alice", "oscar", "root"] {
        let (cookie, _) = app.portal_session(who).await;
        let p = app.page("GET", "/portal/audit", &[("cookie", &cookie)], None).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} and the audit log");
        assert!(!p.text.contains("Audit Log"), "{who} sees no audit link");
    }
    assert_eq!(app.device(card).await, before, "nothing changed");
    let after: Vec<_> = app
        .all_audit()
        .await
        .into_iter()
        .skip(events_before)
        .filter(|e| !e.action.starts_with("session."))
        .collect();
    assert!(after.is_empty(), "no event but sign-ins: {after:?}");
}

#[tokio::test]
async fn help_desk_posts_need_this_sites_origin_and_the_sessions_token() {
    let app = setup().await;
    let (cookie, token) = app.portal_session("oscar").await;
    let c = ("cookie", cookie.as_str());
    let card = app.alice_card;
    let before = app.device(card).await;
    let good = action_form(&token, "&reason=unspecified&note=ticket+7");
    for action in ACTION_SLUGS {
        let uri = format!("/portal/operator/devices/{card}/{action}");
        for (headers, form) in [
            (vec![c], "note=ticket+7&reason=unspecified".to_owned()),
            (vec![c], "csrf_token=0000&note=ticket+7&reason=unspecified".to_owned()),
            (vec![c, ("origin", "https://evil.test")], good.clone()),
            (vec![c, ("sec-fetch-site", "cross-site")], good.clone()),
        ] {
            let p = app.page("POST", &uri, &headers, Some(&form)).await;
            assert_eq!(p.status, StatusCode::FORBIDDEN, "{action} {headers:?} {form}");
        }
    }
    assert_eq!(app.device(card).await, before);
    assert!(app.audit().await.iter().all(|e| !e.action.starts_with("device.")), "nothing changed");
}

#[tokio::test]
async fn an_operator_finds_a_device_by_serial_and_suspends_it_with_a_note_in_the_audit_event() {
    let app = setup().await;
    let key = app.serial_card("12345678").await;
    let (cookie, token) = app.portal_session("oscar").await;
    let c = ("cookie", cookie.as_str());
    let origin = ("origin", "https://lanyard.test");

    // Oscar's navigation shows the help desk and not the cardholder's pages.
    let home = app.page("GET", "/", &[c], None).await;
    assert_eq!(home.headers[header::LOCATION], "/portal/operator");
    let desk = app.page("GET", "/portal/operator", &[c], None).await;
    assert_eq!(desk.status, StatusCode::OK);
    assert!(desk.text.contains("href=\"/portal/operator\" aria-current=\"page\">Help Desk"));
    assert!(!desk.text.contains(">My Devices<") && !desk.text.contains(">Audit Log<"));

    for q in ["1234+5678", "%20BC614E", "0x00bc614e"] {
        let found = app.page("GET", &format!("/portal/operator?q={q}"), &[c], None).await;
        assert_eq!(found.status, StatusCode::OK, "{q}");
        assert!(found.text.contains(&format!("/portal/operator/devices/{key}")), "{q} finds the key");
        assert!(!found.text.contains(&app.bob_card.to_string()));
    }
    let users = app.page("GET", "/portal/operator?q=ALI", &[c], None).await;
    assert!(users.text.contains(&format!("/portal/operator/users/{}", app.alice.user.id)));
    let long = app.page("GET", &format!("/portal/operator?q={}", "x".repeat(129)), &[c], None).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert!(long.text.contains("Search: at most 128 characters"));

    let user = app.page("GET", &format!("/portal/operator/users/{}", app.alice.user.id), &[c], None).await;
    assert!(user.text.contains(&key.to_string()) && user.text.contains(&app.alice_card.to_string()));
    assert!(user.text.contains("staff"), "the group by name");

    let page = app.page("GET", &format!("/portal/operator/devices/{key}"), &[c], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("id=\"state-badge\">Active<"));
    assert!(page.text.contains(&format!("/portal/operator/devices/{key}/suspend")));
    assert!(!page.text.contains(&format!("/portal/operator/devices/{key}/resume")), "only legal actions");

    let confirm = app.page("GET", &format!("/portal/operator/devices/{key}/suspend"), &[c], None).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.text.contains("YubiKey 5 NFC") && confirm.text.contains("12345678"));
    assert!(confirm.text.contains("alice"), "names the holder");

    // A note too long is refused with the field named, and nothing changes.
    let form = action_form(&token, &format!("&note={}", "n".repeat(501)));
    let refused =
        app.page("POST", &format!("/portal/operator/devices/{key}/suspend"), &[c, origin], Some(&form)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text.contains("Note: at most 500 characters"));
    assert!(refused.text.contains("aria-invalid=\"true\""));
    assert_eq!(app.device(key).await.state, DeviceState::Active);

    let form = action_form(&token, "&note=Holder+called%3A+ticket+42");
    let done =
        app.page("POST", &format!("/portal/operator/devices/{key}/suspend"), &[c, origin], Some(&form)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(
        done.headers[header::LOCATION],
        format!("/portal/operator/devices/{key}?done=suspend").as_str()
    );
    assert_eq!(app.device(key).await.state, DeviceState::Suspended);
    let event = app.audit().await.into_iter().rfind(|e| e.action == "device.suspend").unwrap();
    assert_eq!(event.target.as_deref(), Some(format!("device:{key}").as_str()));
    assert_eq!(event.after.as_ref().unwrap()["note"], "Holder called: ticket 42");
    assert!(
        matches!(&event.actor, lanyard_core::audit::Actor::User { username, .. } if username.as_str() == "oscar")
    );
    let shown = app.page("GET", &format!("/portal/operator/devices/{key}?done=suspend"), &[c], None).await;
    assert!(shown.text.contains("id=\"state-badge\">Suspended<"));
    assert!(shown.text.contains("Holder called: ticket 42"), "the trail shows the note");

    // An action the state does not allow is the conflict page, and changes nothing.
    let again =
        app.page("POST", &format!("/portal/operator/devices/{key}/suspend"), &[c, origin], Some(&form)).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let resumed = app
        .page(
            "POST",
            &format!("/portal/operator/devices/{key}/resume"),
            &[c, origin],
            Some(&action_form(&token, "")),
        )
        .await;
    assert_eq!(resumed.status, StatusCode::SEE_OTHER);
    assert_eq!(app.device(key).await.state, DeviceState::Active);
    let event = app.audit().await.into_iter().rfind(|e| e.action == "device.resume").unwrap();
    assert!(event.after.as_ref().unwrap().get("note").is_none(), "no note given, none recorded");

    // Revoking needs one of the listed reasons; the refusal names the field.
    for bad in ["", "&reason=parent_revoked", "&reason=bogus"] {
        let form = action_form(&token, bad);
        let p = app
            .page("POST", &format!("/portal/operator/devices/{key}/revoke"), &[c, origin], Some(&form))
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(p.text.contains("Reason: choose one of the listed reasons"));
    }
    assert_eq!(app.device(key).await.state, DeviceState::Active);
    let form = action_form(&token, "&reason=affiliation_changed&note=left+the+company");
    let p =
        app.page("POST", &format!("/portal/operator/devices/{key}/revoke"), &[c, origin], Some(&form)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let d = app.device(key).await;
    assert_eq!(
        (d.state, d.revocation_reason),
        (DeviceState::Revoked, Some(RevocationReason::AffiliationChanged))
    );

    for missing in [
        format!("/portal/operator/devices/{}", DeviceId::new()),
        "/portal/operator/devices/nope".into(),
        format!("/portal/operator/devices/{key}/explode"),
        format!("/portal/operator/users/{}", DeviceId::new()),
    ] {
        assert_eq!(app.page("GET", &missing, &[c], None).await.status, StatusCode::NOT_FOUND, "{missing}");
    }
}

#[tokio::test]
async fn the_audit_log_page_filters_events_and_shows_the_chain_verified() {
    let app = setup().await;
    let (oscar, token) = app.portal_session("oscar").await;
    let form = action_form(&token, "&note=for+the+auditor");
    let uri = format!("/portal/operator/devices/{}/suspend", app.bob_card);
    let p =
        app.page("POST", &uri, &[("cookie", &oscar), ("origin", "https://lanyard.test")], Some(&form)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let (audrey, _) = app.portal_session("audrey").await;
    let c = ("cookie", audrey.as_str());
    assert_eq!(app.page("GET", "/", &[c], None).await.headers[header::LOCATION], "/portal/audit");
    let all = app.page("GET", "/portal/audit", &[c], None).await;
    assert_eq!(all.status, StatusCode::OK);
    let total = app.all_audit().await.len();
    assert!(all.text.contains(&format!("Chain verified</span> All {total} sealed events")), "{}", all.text);
    assert!(all.text.contains(&row("session.login")) && all.text.contains(&row("device.suspend")));
    assert!(all.text.contains("for the auditor"));
    let only = app.page("GET", "/portal/audit?action=device.suspend&actor=OSCAR", &[c], None).await;
    assert!(only.text.contains(&row("device.suspend")) && !only.text.contains(&row("session.login")));
    let target = format!("/portal/audit?target=device%3A{}", app.alice_card);
    assert!(!app.page("GET", &target, &[c], None).await.text.contains(&row("device.suspend")));
    let target = format!("/portal/audit?target=device%3A{}", app.bob_card);
    assert!(app.page("GET", &target, &[c], None).await.text.contains(&row("device.suspend")));
    let today = app.clock.now().date();
    let dated =
        app.page("GET", &format!("/portal/audit?from={today}&to={today}&action=device"), &[c], None).await;
    assert!(dated.text.contains(&row("device.suspend")), "today's events");
    let tomorrow = today.next_day().unwrap();
    let later = app.page("GET", &format!("/portal/audit?from={tomorrow}"), &[c], None).await;
    assert!(later.text.contains("No events."));
    for (query, message) in [
        ("from=2026-13-01", "From: \"2026-13-01\" is not a date"),
        ("to=yesterday", "To: \"yesterday\" is not a date"),
        (&format!("from={tomorrow}&to={today}") as &str, "To: must not be before From."),
        ("after=-1", "Page: not an event number."),
    ] {
        let p = app.page("GET", &format!("/portal/audit?{query}"), &[c], None).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            p.text.contains(&message.replace('"', "&#34;")) || p.text.contains(message),
            "{query}: {}",
            p.text
        );
    }
}

/// The policy form as the page sends it, with `max_devices` and `pin_max_len` as given.
fn policy_form(token: &str, max_devices: &str, pin_max_len: &str) -> String {
    policy_form_with(token, &[("max_devices", Some(max_devices)), ("pin_max_len", Some(pin_max_len))])
}

/// [`policy_form`] with the enrolment links' lifetime as given.
fn policy_form_minutes(token: &str, max_devices: &str, pin_max_len: &str, code_minutes: &str) -> String {
    policy_form_with(
        token,
        &[
            ("max_devices", Some(max_devices)),
            ("pin_max_len", Some(pin_max_len)),
            ("enrollment_code_minutes", Some(code_minutes)),
        ],
    )
}

/// The policy form of the default policy (every box ticked that it ticks), with `changes`: a
/// field's new value, or `None` for a box left unticked (a browser then sends nothing).
fn policy_form_with(token: &str, changes: &[(&str, Option<&str>)]) -> String {
    let fields = [
        ("may_add_device", "on"),
        ("max_devices", "2"),
        ("may_add_mobile", "on"),
        ("may_add_derived_piv", "on"),
        ("max_mobiles", "3"),
        ("derived_piv_requires_sponsor", "on"),
        ("derived_revoke_on_card_loss", "on"),
        ("fido_pin_mode", "none"),
        ("fido_min_pin_length", "6"),
        ("pin_min_len", "6"),
        ("pin_max_len", "8"),
        ("pin_forbid_trivial", "on"),
        ("initial_pin_display", "hidden"),
        ("accepted_card_models", "YubiKey+5%0D%0ALanyard+virtual+card"),
        ("derived_recheck_days", "7"),
        ("enrollment_code_minutes", "10"),
    ];
    let mut form = format!("csrf_token={token}");
    for (name, default) in fields {
        let value = match changes.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => *v,
            None => Some(default),
        };
        if let Some(v) = value {
            form.push_str(&format!("&{name}={v}"));
        }
    }
    form
}

#[tokio::test]
async fn an_administrator_edits_a_policy_and_a_refused_value_names_its_field() {
    let app = setup().await;
    let group = app.db.begin().await.unwrap().list_groups().await.unwrap().remove(0);
    let uri = format!("/portal/admin/groups/{}", group.id);
    let origin = ("origin", "https://lanyard.test");

    // Everyone else: the 404 page, and nothing changes.
    for who in ["alice", "oscar", "audrey"] {
        let (cookie, token) = app.portal_session(who).await;
        let c = ("cookie", cookie.as_str());
        for get in ["/portal/admin", uri.as_str()] {
            assert_eq!(app.page("GET", get, &[c], None).await.status, StatusCode::NOT_FOUND, "{who} {get}");
        }
        let p = app.page("POST", &uri, &[c, origin], Some(&policy_form(&token, "5", "8"))).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} POST");
    }

    let (cookie, token) = app.portal_session("root").await;
    let c = ("cookie", cookie.as_str());
    let list = app.page("GET", "/portal/admin", &[c], None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.text.contains(&uri) && list.text.contains(">Administration</a>"));
    let form = app.page("GET", &uri, &[c], None).await;
    assert!(form.text.contains("id=\"max_devices\" name=\"max_devices\" value=\"2\""));

    // No token, or another site: 403.
    let p = app.page("POST", &uri, &[c, origin], Some(&policy_form("", "5", "8"))).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = app
        .page("POST", &uri, &[c, ("origin", "https://evil.test")], Some(&policy_form(&token, "5", "8")))
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    // The domain's validation, each problem next to its field.
    let p = app.page("POST", &uri, &[c, origin], Some(&policy_form(&token, "0", "7x"))).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(
        p.text.contains("Longest PIN: enter a whole number, &#34;7x&#34; is not one in range."),
        "{}",
        p.text
    );
    assert!(p.text.contains("id=\"pin_max_len-error\""));
    let p = app.page("POST", &uri, &[c, origin], Some(&policy_form(&token, "0", "9"))).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.text.contains("max_devices must be between 1 and 20, got 0"));
    assert!(p.text.contains("id=\"max_devices-error\"") && p.text.contains("id=\"pin_max_len-error\""));
    assert!(p.text.contains("value=\"0\""), "the form comes back as sent");
    let p = app.page("POST", &uri, &[c, origin], Some(&policy_form_minutes(&token, "5", "8", "11"))).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.text.contains("enrollment_code_minutes must be between 1 and 10"), "{}", p.text);
    assert!(p.text.contains("id=\"enrollment_code_minutes-error\""));
    let unchanged = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert_eq!(unchanged.policy, group.policy);
    assert!(app.audit().await.iter().all(|e| e.action != "group.update_policy"));

    let p = app.page("POST", &uri, &[c, origin], Some(&policy_form_minutes(&token, "5", "8", "4"))).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let saved = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert_eq!(saved.policy, Policy { max_devices: 5, enrollment_code_minutes: 4, ..group.policy.clone() });
    let events: Vec<_> =
        app.audit().await.into_iter().filter(|e| e.action == "group.update_policy").collect();
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn an_administrator_sets_the_mobile_rules_and_a_refused_limit_names_its_field() {
    let app = setup().await;
    let group = app.db.begin().await.unwrap().list_groups().await.unwrap().remove(0);
    let uri = format!("/portal/admin/groups/{}", group.id);
    let origin = ("origin", "https://lanyard.test");
    let (cookie, token) = app.portal_session("root").await;
    let c = ("cookie", cookie.as_str());

    // The form shows the stored rules, each with its hint.
    let form = app.page("GET", &uri, &[c], None).await;
    for shown in [
        "id=\"may_add_derived_piv\" name=\"may_add_derived_piv\" aria-describedby=\"may_add_derived_piv-hint\" checked",
        "id=\"derived_revoke_on_card_loss\" name=\"derived_revoke_on_card_loss\" \
         aria-describedby=\"derived_revoke_on_card_loss-hint\" checked",
        "id=\"max_mobiles\" name=\"max_mobiles\" value=\"3\" aria-describedby=\"max_mobiles-hint\"",
        "id=\"max_mobiles-hint\">1 to 20, counting both kinds of mobile.",
        "id=\"may_add_derived_piv-hint\">",
        "id=\"derived_revoke_on_card_loss-hint\">",
    ] {
        assert!(form.text.contains(shown), "{shown} missing:\n{}", form.text);
    }
    let list = app.page("GET", "/portal/admin", &[c], None).await;
    assert!(list.text.contains("<td data-label=\"Most mobiles\">3</td>"), "{}", list.text);

    // Out of range or not a number: refused under the field, the form as sent, nothing saved.
    for (sent, message) in [
        ("0", "max_mobiles must be between 1 and 20, got 0"),
        ("21", "max_mobiles must be between 1 and 20, got 21"),
        ("three", "Most phones per member: enter a whole number, &#34;three&#34; is not one in range."),
        ("300", "Most phones per member: enter a whole number, &#34;300&#34; is not one in range."),
    ] {
        let body = policy_form_with(&token, &[("max_mobiles", Some(sent)), ("may_add_derived_piv", None)]);
        let p = app.page("POST", &uri, &[c, origin], Some(&body)).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{sent}");
        let under_field = format!("<p class=\"field-error\" id=\"max_mobiles-error\">{message}</p>");
        assert!(p.text.contains(&under_field), "{sent}: {}", p.text);
        assert!(p.text.contains(&format!("name=\"max_mobiles\" value=\"{sent}\"")), "{sent}: as sent");
        assert!(
            p.text.contains("aria-describedby=\"max_mobiles-hint max_mobiles-error\" aria-invalid=\"true\"")
        );
        assert!(
            p.text.contains("id=\"may_add_derived_piv\" name=\"may_add_derived_piv\" aria-describedby=\"may_add_derived_piv-hint\">"),
            "the unticked box stays unticked"
        );
    }
    let unchanged = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert_eq!(unchanged.policy, group.policy);

    // Saved: derived credentials off, the revocation on card loss off, five phones.
    let body = policy_form_with(
        &token,
        &[("max_mobiles", Some("5")), ("may_add_derived_piv", None), ("derived_revoke_on_card_loss", None)],
    );
    let p = app.page("POST", &uri, &[c, origin], Some(&body)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let saved = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert_eq!(
        saved.policy,
        Policy {
            max_mobiles: 5,
            may_add_derived_piv: false,
            derived_revoke_on_card_loss: false,
            ..group.policy.clone()
        }
    );
    let form = app.page("GET", &uri, &[c], None).await;
    assert!(form.text.contains("name=\"max_mobiles\" value=\"5\""));
    assert!(
        form.text.contains("name=\"may_add_derived_piv\" aria-describedby=\"may_add_derived_piv-hint\">")
    );
    assert!(form.text.contains(
        "name=\"derived_revoke_on_card_loss\" aria-describedby=\"derived_revoke_on_card_loss-hint\">"
    ));
    // Both mobile kinds off while the certificate profiles stay: allowed, and saved.
    let body = policy_form_with(&token, &[("may_add_mobile", None), ("may_add_derived_piv", None)]);
    let p = app.page("POST", &uri, &[c, origin], Some(&body)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let saved = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert!(
        !saved.policy.may_add_mobile && !saved.policy.may_add_derived_piv && saved.policy.max_mobiles == 3
    );
    let events = app.audit().await.into_iter().filter(|e| e.action == "group.update_policy").count();
    assert_eq!(events, 2);
}

#[tokio::test]
async fn an_administrator_sets_the_fido_pin_mode_and_its_minimum_length() {
    let app = setup().await;
    let group = app.db.begin().await.unwrap().list_groups().await.unwrap().remove(0);
    let uri = format!("/portal/admin/groups/{}", group.id);
    let origin = ("origin", "https://lanyard.test");
    let (cookie, token) = app.portal_session("root").await;
    let c = ("cookie", cookie.as_str());
    let form = app.page("GET", &uri, &[c], None).await;
    for shown in [
        "<option value=\"none\" selected>",
        "<option value=\"temporary\">",
        "id=\"fido_min_pin_length\" name=\"fido_min_pin_length\" value=\"6\"",
        "id=\"fido_pin_mode-hint\"",
    ] {
        assert!(form.text.contains(shown), "{shown} missing:\n{}", form.text);
    }
    // Shared mode with a FIDO minimum above the shortest device PIN: the device PIN could not
    // become the FIDO PIN. Refused under the field, nothing saved.
    let body =
        policy_form_with(&token, &[("fido_pin_mode", Some("shared")), ("fido_min_pin_length", Some("7"))]);
    let p = app.page("POST", &uri, &[c, origin], Some(&body)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(
        p.text.contains(
            "id=\"fido_min_pin_length-error\">fido_min_pin_length (7) must not exceed pin.min_len (6)"
        ),
        "{}",
        p.text
    );
    for (sent, message) in [
        ("3", "fido_min_pin_length must be between 4 and 63, got 3"),
        ("64", "fido_min_pin_length must be between 4 and 63, got 64"),
        ("four", "Shortest FIDO PIN: enter a whole number, &#34;four&#34; is not one in range."),
    ] {
        let body = policy_form_with(&token, &[("fido_min_pin_length", Some(sent))]);
        let p = app.page("POST", &uri, &[c, origin], Some(&body)).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{sent}");
        assert!(p.text.contains(message), "{sent}: {}", p.text);
    }
    let unchanged = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert_eq!(unchanged.policy, group.policy);
    let body = policy_form_with(
        &token,
        &[("fido_pin_mode", Some("temporary")), ("fido_min_pin_length", Some("10"))],
    );
    let p = app.page("POST", &uri, &[c, origin], Some(&body)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let saved = app.db.begin().await.unwrap().get_group(group.id).await.unwrap().unwrap();
    assert_eq!(
        saved.policy,
        Policy { fido_pin_mode: FidoPinMode::Temporary, fido_min_pin_length: 10, ..group.policy.clone() }
    );
    // The API shows the same fields.
    let r = app.bearer("GET", "/api/v1/groups", &app.admin.token).await;
    let listed = r.body.as_array().unwrap().iter().find(|g| g["id"] == group.id.to_string()).unwrap().clone();
    assert_eq!(listed["policy"]["fido_pin_mode"], "temporary", "{listed}");
    assert_eq!(listed["policy"]["fido_min_pin_length"], 10);
}

/// An issuance that stopped because the key already had a FIDO PIN: the holder's page says
/// what a reset erases and offers it (or Start over); nobody else sees the job or can agree.
#[tokio::test]
async fn a_job_stopped_at_a_fido_pin_asks_its_holder_and_no_one_else() {
    use lanyard_core::model::{Job, JobKind, JobState, StepOutcome};
    let app = setup().await;
    let now = app.clock.now();
    let mut job = Job::new(JobKind::Issuance, app.alice_card, Some(app.alice.user.id), now);
    job.transition(JobState::Running, now).unwrap();
    let why = "the key already has a FIDO PIN; resetting its FIDO application erases that PIN and every passkey on it";
    job.record("fido_pin_present", StepOutcome::Failed, Some(why.into()), now).unwrap();
    job.record("session", StepOutcome::Failed, Some(format!("the card session failed: {why}")), now).unwrap();
    job.transition(JobState::Failed, now).unwrap();
    let mut tx = app.db.begin().await.unwrap();
    tx.insert_job(&job).await.unwrap();
    tx.commit().await.unwrap();
    let uri = format!("/portal/jobs/{}", job.id);
    let origin = ("origin", "https://lanyard.test");

    let (alice, _) = app.portal_session("alice").await;
    let page = app.page("GET", &uri, &[("cookie", alice.as_str())], None).await;
    assert_eq!(page.status, StatusCode::OK);
    for shown in [
        "data-phase=\"fido_consent\"",
        "This key already has a FIDO PIN",
        "every passkey stored on the key",
        &format!("action=\"/portal/jobs/{}/erase-fido\"", job.id),
        "Start over, leaving the passkeys alone",
    ] {
        assert!(page.text.contains(shown), "{shown} missing:\n{}", page.text);
    }
    let (bob, bob_token) = app.portal_session("bob").await;
    let c = ("cookie", bob.as_str());
    assert_eq!(app.page("GET", &uri, &[c], None).await.status, StatusCode::NOT_FOUND);
    let form = format!("csrf_token={bob_token}");
    let refused = app.page("POST", &format!("{uri}/erase-fido"), &[c, origin], Some(&form)).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let stored = app.db.begin().await.unwrap().get_job(job.id).await.unwrap().unwrap();
    assert_eq!(stored.steps.len(), 2, "nothing recorded for bob's attempt");
}

#[tokio::test]
async fn an_administrator_creates_users_sets_roles_and_disables_accounts_and_no_one_else_can() {
    let app = setup().await;
    let group = app.db.begin().await.unwrap().list_groups().await.unwrap().remove(0);
    let origin = ("origin", "https://lanyard.test");
    let alice_page = format!("/portal/admin/users/{}", app.alice.user.id);
    let new_user = |token: &str, username: &str, display: &str| {
        format!(
            "csrf_token={token}&username={username}&display_name={display}&email=&group={}&role_user=on&\
             role_operator=on&password=",
            group.id
        )
    };
    for who in ["alice", "oscar", "audrey"] {
        let (cookie, token) = app.portal_session(who).await;
        let c = ("cookie", cookie.as_str());
        for get in ["/portal/admin/users", "/portal/admin/users/new", alice_page.as_str()] {
            assert_eq!(app.page("GET", get, &[c], None).await.status, StatusCode::NOT_FOUND, "{who} {get}");
        }
        let form = new_user(&token, "newbie", "New+Bie");
        let p = app.page("POST", "/portal/admin/users", &[c, origin], Some(&form)).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} creates no user");
        let form = format!("csrf_token={token}&account=disable");
        let p = app.page("POST", &format!("{alice_page}/account"), &[c, origin], Some(&form)).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} disables no one");
        let form = format!("csrf_token={token}&role_administrator=on");
        let p = app.page("POST", &format!("{alice_page}/roles"), &[c, origin], Some(&form)).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{who} grants no role");
    }
    let (cookie, token) = app.portal_session("root").await;
    let c = ("cookie", cookie.as_str());
    // Without the token: 403 for every form.
    for (uri, form) in [
        ("/portal/admin/users".to_owned(), new_user("", "newbie", "New+Bie")),
        (format!("{alice_page}/account"), "account=disable".to_owned()),
        (format!("{alice_page}/roles"), "role_auditor=on".to_owned()),
    ] {
        assert_eq!(
            app.page("POST", &uri, &[c, origin], Some(&form)).await.status,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
    }
    let list = app.page("GET", "/portal/admin/users?q=ali", &[c], None).await;
    assert!(list.text.contains(&alice_page) && !list.text.contains("bob"));
    let new = app.page("GET", "/portal/admin/users/new", &[c], None).await;
    assert_eq!(new.status, StatusCode::OK);

    for (form, message) in [
        (new_user(&token, "Bad+Name%21", "New+Bie"), "Username: "),
        (new_user(&token, "newbie", ""), "Display name: "),
        (new_user(&token, "alice", "Another+Alice"), "Username: username alice is taken."),
        (new_user(&token, "newbie", "New+Bie").replace("email=", "email=not-an-address"), "E-mail: "),
        (
            new_user(&token, "newbie", "New+Bie").replace(&group.id.to_string(), "nope"),
            "Group: choose one of the listed groups.",
        ),
    ] {
        let p = app.page("POST", "/portal/admin/users", &[c, origin], Some(&form)).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{form}");
        assert!(p.text.contains(message), "{message}: {}", p.text);
        assert!(p.text.contains("aria-invalid=\"true\""));
    }
    let none = app
        .db
        .begin()
        .await
        .unwrap()
        .get_user_by_username(&Username::parse("newbie").unwrap())
        .await
        .unwrap();
    assert!(none.is_none(), "no refused form created a user");

    let p = app
        .page("POST", "/portal/admin/users", &[c, origin], Some(&new_user(&token, "newbie", "New+Bie")))
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let newbie = app
        .db
        .begin()
        .await
        .unwrap()
        .get_user_by_username(&Username::parse("newbie").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newbie.roles, BTreeSet::from([Role::User, Role::Operator]));
    assert_eq!(newbie.group, group.id);

    let uri = format!("/portal/admin/users/{}", newbie.id);
    let p = app
        .page(
            "POST",
            &format!("{uri}/roles"),
            &[c, origin],
            Some(&format!("csrf_token={token}&role_auditor=on")),
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let p = app
        .page(
            "POST",
            &format!("{uri}/account"),
            &[c, origin],
            Some(&format!("csrf_token={token}&account=disable")),
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let stored = app.db.begin().await.unwrap().get_user(newbie.id).await.unwrap().unwrap();
    assert_eq!((stored.roles, stored.disabled), (BTreeSet::from([Role::Auditor]), true));
    let page = app.page("GET", &uri, &[c], None).await;
    assert!(page.text.contains("Enable newbie"));

    // An administrator cannot lock themselves out.
    let me = format!("/portal/admin/users/{}", app.admin.user.id);
    let p = app
        .page(
            "POST",
            &format!("{me}/account"),
            &[c, origin],
            Some(&format!("csrf_token={token}&account=disable")),
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.text.contains("Account: you cannot disable your own account."));
    let p = app
        .page("POST", &format!("{me}/roles"), &[c, origin], Some(&format!("csrf_token={token}&role_user=on")))
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.text.contains("Roles: you cannot remove your own administrator role."));
    let actions: Vec<String> =
        app.audit().await.into_iter().map(|e| e.action).filter(|a| a.starts_with("user.")).collect();
    assert_eq!(actions, ["user.create", "user.set_roles", "user.disable"]);
}

#[tokio::test]
async fn an_administrators_tokens_page_shows_a_new_token_once_and_revokes_it() {
    let app = setup().await;
    let origin = ("origin", "https://lanyard.test");
    let (alice, alice_token) = app.portal_session("alice").await;
    assert_eq!(
        app.page("GET", "/portal/admin/tokens", &[("cookie", &alice)], None).await.status,
        StatusCode::NOT_FOUND
    );
    let p = app
        .page(
            "POST",
            "/portal/admin/tokens",
            &[("cookie", &alice), origin],
            Some(&format!("csrf_token={alice_token}&name=x&days=")),
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);

    let (cookie, token) = app.portal_session("root").await;
    let c = ("cookie", cookie.as_str());
    let p = app.page("POST", "/portal/admin/tokens", &[c, origin], Some("name=backup&days=30")).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "no CSRF token");
    for (form, message) in [
        ("name=backup&days=abc", "Expires in: &#34;abc&#34; is not a number of days."),
        ("name=backup&days=999", "Expires in: must be 1 to 365, got 999."),
        ("name=&days=30", "Name: "),
    ] {
        let p = app
            .page("POST", "/portal/admin/tokens", &[c, origin], Some(&format!("csrf_token={token}&{form}")))
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{form}");
        assert!(p.text.contains(message), "{message}: {}", p.text);
    }
    let made = app
        .page(
            "POST",
            "/portal/admin/tokens",
            &[c, origin],
            Some(&format!("csrf_token={token}&name=backup&days=30")),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK);
    let secret =
        made.text.split("id=\"new-token\">").nth(1).and_then(|r| r.split('<').next()).unwrap().to_owned();
    assert_eq!(
        app.bearer("GET", "/api/v1/me", &secret).await.status,
        StatusCode::OK,
        "the shown value works"
    );
    let listed = app.page("GET", "/portal/admin/tokens", &[c], None).await;
    assert!(listed.text.contains("backup") && !listed.text.contains(&secret), "shown once only");
    let id = app
        .db
        .begin()
        .await
        .unwrap()
        .list_api_tokens(app.admin.user.id)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "backup")
        .unwrap()
        .id;
    // Another user's token is not this page's to revoke.
    let theirs = format!("/portal/admin/tokens/{}/revoke", app.alice.token_id);
    let p = app.page("POST", &theirs, &[c, origin], Some(&format!("csrf_token={token}"))).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert_eq!(app.bearer("GET", "/api/v1/me", &app.alice.token).await.status, StatusCode::OK);
    let p = app
        .page(
            "POST",
            &format!("/portal/admin/tokens/{id}/revoke"),
            &[c, origin],
            Some(&format!("csrf_token={token}")),
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(app.bearer("GET", "/api/v1/me", &secret).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn administrators_see_the_certificate_profiles_and_trust_anchors_and_no_one_else_does() {
    let app = setup().await;
    for who in ["alice", "oscar", "audrey"] {
        let (cookie, _) = app.portal_session(who).await;
        for uri in ["/portal/admin/profiles", "/portal/admin/trust"] {
            assert_eq!(
                app.page("GET", uri, &[("cookie", &cookie)], None).await.status,
                StatusCode::NOT_FOUND,
                "{who} {uri}"
            );
        }
    }
    let (cookie, _) = app.portal_session("root").await;
    let c = ("cookie", cookie.as_str());
    let profiles = app.page("GET", "/portal/admin/profiles", &[c], None).await;
    assert_eq!(profiles.status, StatusCode::OK);
    assert!(profiles.text.contains("piv-auth") && profiles.text.contains("staff (9a)"), "{}", profiles.text);
    let trust = app.page("GET", "/portal/admin/trust", &[c], None).await;
    assert_eq!(trust.status, StatusCode::OK);
    use sha2::Digest as _;
    let root = hex::encode(sha2::Sha256::digest(app.state.pki.root.certificate_der()));
    assert!(trust.text.contains(&root), "the root's SHA-256");
    assert!(trust.text.contains("CN=Lanyard Test") || trust.text.contains("Lanyard Test"));
}

#[tokio::test]
async fn an_operator_activates_a_pending_card_and_sees_its_initial_pin_once_with_the_note_audited() {
    let mut app = setup().await;
    app.state = app
        .state
        .clone()
        .with_issuance(lanyard_server::issuance::IssuanceConfig::new(Kek::generate().unwrap(), vec![]));
    let kek = &app.state.issuance.as_ref().unwrap().kek;
    let mut card = Device::new(DeviceKind::SmartCard, "YubiKey 5", app.clock.now()).unwrap();
    card.owner = Some(app.bob.user.id);
    card.state = DeviceState::Pending;
    card.serial = Some("27182818".into());
    let secrets = lanyard_core::secrets::CardSecrets::generate(
        lanyard_core::secrets::mgm_algorithm::AES192,
        &Policy::default(),
    )
    .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    tx.insert_device(&card).await.unwrap();
    tx.put_card_secrets(card.id, &secrets.seal(kek, card.id).unwrap()).await.unwrap();
    tx.commit().await.unwrap();

    let (cookie, token) = app.portal_session("oscar").await;
    let c = ("cookie", cookie.as_str());
    let page = app.page("GET", &format!("/portal/operator/devices/{}", card.id), &[c], None).await;
    assert!(page.text.contains(&format!("/portal/operator/devices/{}/activate", card.id)));
    let confirm =
        app.page("GET", &format!("/portal/operator/devices/{}/activate", card.id), &[c], None).await;
    assert!(confirm.text.contains("shown to you once"));
    let form = action_form(&token, "&note=PIN+handed+over+at+the+desk");
    let uri = format!("/portal/operator/devices/{}/activate", card.id);
    let done = app.page("POST", &uri, &[c, ("origin", "https://lanyard.test")], Some(&form)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let pin = secrets.initial_pin().expose_secret();
    assert!(done.text.contains(&format!("id=\"initial-pin\">{pin}<")), "the PIN, once");
    assert!(done.text.contains("This initial PIN is shown this once"));
    assert_eq!(app.device(card.id).await.state, DeviceState::Active);
    let events = app.audit().await;
    let activated = events.iter().rfind(|e| e.action == "device.activate").unwrap();
    assert_eq!(activated.after.as_ref().unwrap()["note"], "PIN handed over at the desk");
    assert!(events.iter().any(|e| e.action == "card_secrets.reveal_initial_pin"));
    // The device page afterwards does not show it again.
    let after = app.page("GET", &format!("/portal/operator/devices/{}", card.id), &[c], None).await;
    assert!(!after.text.contains("initial-pin"), "no PIN on the device page");
}

/// The profile link on Add Mobile's page (`https://lanyard.test/enroll/profile/<code>`): the code.
fn profile_code(page: &str) -> String {
    let start = page.find("https://lanyard.test/enroll/profile/").expect("the link on the page");
    let rest = &page[start + "https://lanyard.test/enroll/profile/".len()..];
    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).next().unwrap().to_owned()
}

/// `GET path` without a session: status, headers and the body as bytes (a profile is DER).
async fn fetch(app: &App, path: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    let req = Request::builder().uri(path).header(header::HOST, "lanyard.test").body(Body::empty()).unwrap();
    let resp = router(app.state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec())
}

async fn mobiles_of(app: &App, user: &User) -> Vec<Device> {
    let mut tx = app.db.begin().await.unwrap();
    let query = DeviceQuery { owner: Some(user.id), limit: 100, ..Default::default() };
    let all = tx.list_devices(&query).await.unwrap();
    all.into_iter().filter(|d| d.kind == DeviceKind::Mobile).collect()
}

#[tokio::test]
async fn add_mobile_shows_a_one_time_link_whose_signed_profile_downloads_once() {
    let app = setup().await;
    let origin = ("origin", "https://lanyard.test");
    let (cookie, token) = app.portal_session("alice").await;
    let c = ("cookie", cookie.as_str());
    let devices = app.page("GET", "/portal/devices", &[c], None).await;
    assert!(devices.text.contains("href=\"/portal/devices/mobile\""), "{}", devices.text);
    let pre = app.page("GET", "/portal/devices/mobile", &[c], None).await;
    assert_eq!(pre.status, StatusCode::OK);
    assert!(pre.text.contains("What you need") && pre.text.contains("valid for 10 minutes"), "{}", pre.text);

    // Continue needs the session's token.
    let p = app.page("POST", "/portal/devices/mobile", &[c, origin], Some("csrf_token=")).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(app.audit().await.iter().all(|e| e.action != "enrollment_code.issue"));
    let form = format!("csrf_token={token}");
    let p = app.page("POST", "/portal/devices/mobile", &[c, origin], Some(&form)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let code = profile_code(&p.text);
    assert_eq!(code.len(), 40, "{code}");
    let svg = p.text.split("src=\"data:image/svg+xml;base64,").nth(1).unwrap().split('"').next().unwrap();
    let svg = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(svg).unwrap()).unwrap();
    assert!(svg.contains("<svg") && !svg.contains("style"), "{svg}");
    assert!(p.text.contains("hx-get=\"/portal/devices/mobile/status?since="));
    assert!(p.text.contains("Waiting for the phone to download the profile"));
    let since = p.text.split("status?since=").nth(1).unwrap().split('"').next().unwrap().to_owned();

    // A malformed or unknown code: 404, nothing made.
    for bad in ["not-a-code", "x%2Fy", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let (status, _, body) = fetch(&app, &format!("/enroll/profile/{bad}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        assert!(String::from_utf8_lossy(&body).contains("Unknown enrolment link"), "{bad}");
    }
    assert!(mobiles_of(&app, &app.alice.user).await.is_empty());

    // The profile: signed, content type and file name, Challenge = the code.
    let (status, headers, body) = fetch(&app, &format!("/enroll/profile/{code}")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-apple-aspen-config");
    assert_eq!(headers[header::CONTENT_DISPOSITION], "attachment; filename=\"lanyard-alice.mobileconfig\"");
    let (xml, summary) = lanyard_ca::cms::verify_attached(&body).unwrap();
    assert_eq!(summary.signer_certificate_der, app.state.pki.profile_signer.certificate.der);
    let xml = String::from_utf8(xml).unwrap();
    for want in [
        &format!("<string>{code}</string>"),
        "<string>https://lanyard.test/scep</string>",
        "<string>alice mobile</string>",
        "<string>test.lanyard.lanyard.mobile.alice</string>",
    ] {
        assert!(xml.contains(want), "{want} missing:\n{xml}");
    }
    let mobiles = mobiles_of(&app, &app.alice.user).await;
    assert_eq!(mobiles.len(), 1);
    assert_eq!(mobiles[0].state, DeviceState::Enrolling);
    let actions: Vec<String> = app.audit().await.into_iter().map(|e| e.action).collect();
    assert!(
        actions.contains(&"enrollment_code.redeem".into()) && actions.contains(&"device.register".into())
    );

    // Once only: 410, nothing more made.
    let (status, _, body) = fetch(&app, &format!("/enroll/profile/{code}")).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(String::from_utf8_lossy(&body).contains("was already used"));
    assert_eq!(mobiles_of(&app, &app.alice.user).await.len(), 1);

    // The page's status shows the new mobile to alice, and nothing of hers to bob.
    let status = app.page("GET", &format!("/portal/devices/mobile/status?since={since}"), &[c], None).await;
    assert!(
        status.text.contains(&mobiles[0].id.to_string()) && status.text.contains("Enrolling"),
        "{}",
        status.text
    );
    let (bob_cookie, _) = app.portal_session("bob").await;
    let b = ("cookie", bob_cookie.as_str());
    let status = app.page("GET", &format!("/portal/devices/mobile/status?since={since}"), &[b], None).await;
    assert!(!status.text.contains(&mobiles[0].id.to_string()));

    // An expired code: 410, nothing made.
    let p = app.page("POST", "/portal/devices/mobile", &[c, origin], Some(&form)).await;
    let late = profile_code(&p.text);
    app.clock.advance(Duration::minutes(10));
    let (status, _, body) = fetch(&app, &format!("/enroll/profile/{late}")).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(String::from_utf8_lossy(&body).contains("The link expired at"));
    assert_eq!(mobiles_of(&app, &app.alice.user).await.len(), 1);
}

#[tokio::test]
async fn add_mobile_follows_the_policy_and_codes_of_a_changed_policy_are_refused() {
    let app = setup().await;
    let origin = ("origin", "https://lanyard.test");
    let (cookie, token) = app.portal_session("alice").await;
    let c = ("cookie", cookie.as_str());
    let form = format!("csrf_token={token}");
    let p = app.page("POST", "/portal/devices/mobile", &[c, origin], Some(&form)).await;
    let code = profile_code(&p.text);

    let mut tx = app.db.begin().await.unwrap();
    let mut group = tx.list_groups().await.unwrap().remove(0);
    group.policy.may_add_mobile = false;
    tx.update_group(&group).await.unwrap();
    tx.commit().await.unwrap();

    let devices = app.page("GET", "/portal/devices", &[c], None).await;
    assert!(
        devices.text.contains("aria-describedby=\"mobile-refused\">Add Mobile</button>"),
        "{}",
        devices.text
    );
    assert!(devices.text.contains("does not allow adding a mobile device"));
    let pre = app.page("GET", "/portal/devices/mobile", &[c], None).await;
    assert!(pre.text.contains("You cannot add a mobile now") && !pre.text.contains(">Continue<"));
    let p = app.page("POST", "/portal/devices/mobile", &[c, origin], Some(&form)).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
    // A code issued before the change no longer installs anything, and stays unused.
    let (status, _, _) = fetch(&app, &format!("/enroll/profile/{code}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(mobiles_of(&app, &app.alice.user).await.is_empty());
}

#[tokio::test]
async fn a_holder_and_an_operator_delete_mobiles_and_no_one_else_reaches_them() {
    let app = setup().await;
    let now = app.clock.now();
    let mut tx = app.db.begin().await.unwrap();
    let mut phones = Vec::new();
    for _ in 0..2 {
        let mut phone = Device::new(DeviceKind::Mobile, "Apple device (configuration profile)", now).unwrap();
        phone.owner = Some(app.alice.user.id);
        phone.state = DeviceState::Active;
        tx.insert_device(&phone).await.unwrap();
        let mut cred = Credential::new(
            phone.id,
            CredentialKind::Certificate {
                slot: CertSlot::MobileDevice,
                profile: "mobile-device".into(),
                serial_hex: format!("0{}", phones.len() + 1),
                not_before: now,
                not_after: now + Duration::days(365),
                certificate_der: Vec::new(),
                attestation_der: None,
            },
            now,
        );
        cred.state = CredentialState::Active;
        tx.insert_credential(&cred).await.unwrap();
        phones.push((phone.id, cred.id));
    }
    tx.commit().await.unwrap();
    let origin = ("origin", "https://lanyard.test");
    let (held, operated) = (phones[0], phones[1]);

    // Bob sees neither the confirmation nor can he delete; alice's card is not a mobile.
    let (bob_cookie, bob_token) = app.portal_session("bob").await;
    let b = ("cookie", bob_cookie.as_str());
    let uri = format!("/portal/devices/{}/delete", held.0);
    assert_eq!(app.page("GET", &uri, &[b], None).await.status, StatusCode::NOT_FOUND);
    let p = app.page("POST", &uri, &[b, origin], Some(&format!("csrf_token={bob_token}"))).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    let (cookie, token) = app.portal_session("alice").await;
    let c = ("cookie", cookie.as_str());
    let card = format!("/portal/devices/{}/delete", app.alice_card);
    assert_eq!(app.page("GET", &card, &[c], None).await.status, StatusCode::NOT_FOUND);
    let db = Arc::clone(&app.db);
    let state = |id: DeviceId| {
        let db = Arc::clone(&db);
        async move { db.begin().await.unwrap().get_device(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(held.0).await, DeviceState::Active);

    // The holder: the device page offers it, a confirmation, then the phone's own steps.
    let page = app.page("GET", &format!("/portal/devices/{}", held.0), &[c], None).await;
    assert!(page.text.contains(&format!("href=\"/portal/devices/{}/delete\"", held.0)));
    let confirm = app.page("GET", &uri, &[c], None).await;
    assert!(confirm.text.contains("Delete this mobile?"));
    let p = app.page("POST", &uri, &[c, origin], Some("csrf_token=wrong")).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = app.page("POST", &uri, &[c, origin], Some(&format!("csrf_token={token}"))).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert!(p.text.contains("Its certificate is revoked"), "{}", p.text);
    assert!(p.text.contains("VPN &amp; Device Management") && p.text.contains("Remove Profile"));
    assert!(p.text.contains("href=\"/portal/devices/mobile\""), "may enrol again");
    assert_eq!(state(held.0).await, DeviceState::Deleted);
    let cred = app.db.begin().await.unwrap().get_credential(held.1).await.unwrap().unwrap();
    assert_eq!(cred.state, CredentialState::Revoked);
    assert_eq!(
        app.page("GET", &format!("/portal/devices/{}", held.0), &[c], None).await.status,
        StatusCode::NOT_FOUND
    );

    // The operator, from the device page's actions.
    let (op_cookie, op_token) = app.portal_session("oscar").await;
    let o = ("cookie", op_cookie.as_str());
    let dev = app.page("GET", &format!("/portal/operator/devices/{}", operated.0), &[o], None).await;
    assert!(dev.text.contains(&format!("/portal/operator/devices/{}/delete", operated.0)), "{}", dev.text);
    let op_uri = format!("/portal/operator/devices/{}/delete", operated.0);
    let confirm = app.page("GET", &op_uri, &[o], None).await;
    assert!(confirm.text.contains("Device Management"), "{}", confirm.text);
    // Alice is no operator.
    let p = app.page("POST", &op_uri, &[c, origin], Some(&format!("csrf_token={token}"))).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert_eq!(state(operated.0).await, DeviceState::Active);
    let p = app
        .page("POST", &op_uri, &[o, origin], Some(&format!("csrf_token={op_token}&note=phone+replaced")))
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    assert_eq!(state(operated.0).await, DeviceState::Deleted);
    let cred = app.db.begin().await.unwrap().get_credential(operated.1).await.unwrap().unwrap();
    assert_eq!(cred.state, CredentialState::Revoked);
    let deletes: Vec<_> = app.audit().await.into_iter().filter(|e| e.action == "device.delete").collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    // A card cannot be deleted by the operator either.
    let p = app
        .page(
            "POST",
            &format!("/portal/operator/devices/{}/delete", app.alice_card),
            &[o, origin],
            Some(&format!("csrf_token={op_token}")),
        )
        .await;
    assert_ne!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(state(app.alice_card).await, DeviceState::Active);
}

/// `POST /api/v1/me/mobile-enrollments` with `headers` (the host is `lanyard.test`) and `body`.
async fn start_enrollment(app: &App, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("host", "lanyard.test")];
    all.extend_from_slice(headers);
    app.send("POST", "/api/v1/me/mobile-enrollments", &all, Some(body)).await
}

/// How many enrolment codes were issued (audited `enrollment_code.issue`).
async fn codes_issued(app: &App) -> usize {
    app.audit().await.iter().filter(|e| e.action == "enrollment_code.issue").count()
}

async fn set_policy(app: &App, change: impl FnOnce(&mut Policy)) {
    let mut tx = app.db.begin().await.unwrap();
    let mut group = tx.list_groups().await.unwrap().remove(0);
    change(&mut group.policy);
    tx.update_group(&group).await.unwrap();
    tx.commit().await.unwrap();
}

/// A mobile of `owner` in `state`, put in the store directly.
async fn put_mobile(app: &App, owner: &User, state: DeviceState) -> DeviceId {
    let mut phone =
        Device::new(DeviceKind::Mobile, "Apple device (configuration profile)", app.clock.now()).unwrap();
    phone.owner = Some(owner.id);
    phone.state = state;
    let mut tx = app.db.begin().await.unwrap();
    tx.insert_device(&phone).await.unwrap();
    tx.commit().await.unwrap();
    phone.id
}

#[tokio::test]
async fn the_api_issues_a_mobile_profile_code_to_the_caller_only() {
    let app = setup().await;
    let alice = format!("Bearer {}", app.alice.token);
    let a = ("authorization", alice.as_str());
    let r = start_enrollment(&app, &[a], r#"{"type": "mobile_profile"}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let code = r.body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 40, "{code}");
    assert_eq!(r.body["type"], "mobile_profile");
    assert_eq!(r.body["link"], format!("https://lanyard.test/enroll/profile/{code}"));
    let expires = time::OffsetDateTime::parse(
        r.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires, app.clock.now() + Duration::minutes(10));
    let issued: Vec<AuditEvent> =
        app.audit().await.into_iter().filter(|e| e.action == "enrollment_code.issue").collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].actor, Actor::ApiToken { id: app.alice.token_id }, "the token acted for alice");
    assert_eq!(
        issued[0].target.as_deref(),
        Some(format!("enrollment_code:{}", r.body["id"].as_str().unwrap()).as_str())
    );
    assert!(!serde_json::to_string(&issued[0]).unwrap().contains(&code), "the code is not in the audit log");

    // Bob's code makes bob's mobile, which alice neither lists nor reads.
    let bob = format!("Bearer {}", app.bob.token);
    let r = start_enrollment(&app, &[("authorization", &bob)], r#"{"type":"mobile_profile"}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let bob_code = r.body["code"].as_str().unwrap().to_owned();
    assert_ne!(bob_code, code);
    let (status, _, body) = fetch(&app, &format!("/enroll/profile/{bob_code}")).await;
    assert_eq!(status, StatusCode::OK);
    let (xml, _) = lanyard_ca::cms::verify_attached(&body).unwrap();
    assert!(String::from_utf8(xml).unwrap().contains("<string>bob mobile</string>"));
    let bobs = mobiles_of(&app, &app.bob.user).await;
    assert_eq!((bobs.len(), bobs[0].state), (1, DeviceState::Enrolling));
    assert!(mobiles_of(&app, &app.alice.user).await.is_empty());
    let listed = app.bearer("GET", "/api/v1/devices", &app.alice.token).await;
    assert!(!listed.body.to_string().contains(&bobs[0].id.to_string()), "{}", listed.body);
    let read = app.bearer("GET", &format!("/api/v1/devices/{}", bobs[0].id), &app.alice.token).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    let read =
        app.bearer("GET", &format!("/api/v1/devices/{}/credentials", bobs[0].id), &app.alice.token).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    // Nor does alice's session delete it.
    let (cookie, token) = app.portal_session("alice").await;
    let p = app
        .page(
            "POST",
            &format!("/portal/devices/{}/delete", bobs[0].id),
            &[("cookie", &cookie), ("origin", "https://lanyard.test")],
            Some(&format!("csrf_token={token}")),
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert_eq!(app.device(bobs[0].id).await.state, DeviceState::Enrolling);

    // Alice's own code: her mobile.
    let (status, _, _) = fetch(&app, &format!("/enroll/profile/{code}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mobiles_of(&app, &app.alice.user).await.len(), 1);
    assert_eq!(mobiles_of(&app, &app.bob.user).await.len(), 1);
}

#[tokio::test]
async fn the_mobile_enrollment_api_refuses_bad_bodies_other_roles_and_derived_codes_and_changes_nothing() {
    let app = setup().await;
    let alice = format!("Bearer {}", app.alice.token);
    let a = ("authorization", alice.as_str());
    for (body, message) in [
        ("", "invalid JSON body"),
        ("{}", "missing field `type`"),
        (r#"{"type": "sim_card"}"#, "unknown variant `sim_card`, expected `mobile_profile` or `derived_piv`"),
        (r#"{"type": "mobile_profile", "user": "bob"}"#, "unknown field `user`"),
        (r#"{"type": 1}"#, "type: expected value"),
        ("[", "invalid JSON body"),
        (r#"{"type": "derived_piv"}"#, "the sponsor card proves itself"),
    ] {
        let r = start_enrollment(&app, &[a], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert!(r.error().contains(message), "{body}: {}", r.error());
    }
    // Not JSON at all.
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/me/mobile-enrollments")
        .header("authorization", &alice)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("type=mobile_profile"))
        .unwrap();
    let resp = router(app.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // No caller: 401; staff without the cardholder role: 403, body unread.
    let r = start_enrollment(&app, &[], r#"{"type":"mobile_profile"}"#).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for who in [&app.operator, &app.auditor, &app.admin] {
        let bearer = format!("Bearer {}", who.token);
        let r = start_enrollment(&app, &[("authorization", &bearer)], r#"{"type":"mobile_profile"}"#).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}: {}", who.user.username, r.body);
    }
    // A derived credential the policy forbids: the policy's reason, 403.
    set_policy(&app, |p| p.may_add_derived_piv = false).await;
    let r = start_enrollment(&app, &[a], r#"{"type":"derived_piv"}"#).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("does not allow derived PIV credentials"), "{}", r.error());
    assert_eq!(codes_issued(&app).await, 0);
    assert!(mobiles_of(&app, &app.alice.user).await.is_empty());
}

#[tokio::test]
async fn the_mobile_enrollment_api_answers_403_with_the_policys_reason() {
    let app = setup().await;
    let alice = format!("Bearer {}", app.alice.token);
    let a = ("authorization", alice.as_str());
    let body = r#"{"type":"mobile_profile"}"#;

    // Mobiles off.
    set_policy(&app, |p| p.may_add_mobile = false).await;
    let r = start_enrollment(&app, &[a], body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.error(), "policy: your group's policy does not allow adding a mobile device");
    assert!(r.body["operation_id"].is_string());
    assert_eq!(codes_issued(&app).await, 0);

    // At most two: an Enrolling and a Suspended mobile count, a Deleted one does not.
    set_policy(&app, |p| {
        p.may_add_mobile = true;
        p.max_mobiles = 2;
    })
    .await;
    put_mobile(&app, &app.alice.user, DeviceState::Deleted).await;
    put_mobile(&app, &app.alice.user, DeviceState::Suspended).await;
    put_mobile(&app, &app.bob.user, DeviceState::Active).await;
    let r = start_enrollment(&app, &[a], body).await;
    assert_eq!(r.status, StatusCode::CREATED, "one of two: {}", r.body);
    let (status, _, _) = fetch(&app, &format!("/enroll/profile/{}", r.body["code"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    let r = start_enrollment(&app, &[a], body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.error(), "policy: your group's policy allows at most 2 mobiles, and you have 2");
    assert_eq!(codes_issued(&app).await, 1);
    // Bob's mobile is his: he may still add one.
    let bob = format!("Bearer {}", app.bob.token);
    let r = start_enrollment(&app, &[("authorization", &bob)], body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn a_code_asked_for_with_a_session_needs_its_csrf_token_and_ends_with_the_session() {
    let app = setup().await;
    let (cookie, csrf) = app.session("alice").await;
    let c = ("cookie", cookie.as_str());
    let body = r#"{"type":"mobile_profile"}"#;
    let r = start_enrollment(&app, &[c], body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF token: {}", r.body);
    assert_eq!(codes_issued(&app).await, 0);
    let r = start_enrollment(&app, &[c, ("x-csrf-token", &csrf)], body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let code = r.body["code"].as_str().unwrap().to_owned();
    let r = app.send("POST", "/api/v1/logout", &[c, ("x-csrf-token", &csrf)], None).await;
    assert!(r.status.is_success(), "{}", r.body);
    let (status, _, page) = fetch(&app, &format!("/enroll/profile/{code}")).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(String::from_utf8_lossy(&page).contains("ended with the portal session"));
    assert!(mobiles_of(&app, &app.alice.user).await.is_empty());
}

#[tokio::test]
async fn the_mobile_buttons_are_disabled_with_the_reason_at_the_limit_and_when_the_policy_forbids() {
    let app = setup().await;
    let origin = ("origin", "https://lanyard.test");
    let (cookie, token) = app.portal_session("alice").await;
    let c = ("cookie", cookie.as_str());
    let limit = "your group&#39;s policy allows at most 1 mobiles, and you have 1";
    let limit_plain = "your group's policy allows at most 1 mobiles, and you have 1";
    let has = |text: &str, want: &str| text.contains(want) || text.contains(&want.replace("&#39;", "'"));

    // One mobile at most, and alice's suspended phone counts.
    set_policy(&app, |p| p.max_mobiles = 1).await;
    let phone = put_mobile(&app, &app.alice.user, DeviceState::Suspended).await;
    let devices = app.page("GET", "/portal/devices", &[c], None).await;
    assert!(
        devices.text.contains("aria-describedby=\"mobile-refused\">Add Mobile</button>"),
        "{}",
        devices.text
    );
    assert!(
        devices.text.contains(
            "aria-describedby=\"derived-refused\">Add Identity Device: derived PIV credential</button>"
        ),
        "{}",
        devices.text
    );
    for id in ["mobile-refused", "derived-refused"] {
        let hint = devices.text.split(&format!("<p id=\"{id}\" class=\"hint\">")).nth(1).unwrap();
        let hint = hint.split("</p>").next().unwrap();
        assert!(has(hint, limit), "{id}: {hint}");
    }
    let pre = app.page("GET", "/portal/devices/mobile", &[c], None).await;
    assert!(has(&pre.text, limit) && !pre.text.contains(">Continue<"), "{}", pre.text);
    let p =
        app.page("POST", "/portal/devices/mobile", &[c, origin], Some(&format!("csrf_token={token}"))).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.text);
    assert!(has(&p.text, limit), "{}", p.text);
    // The API gives the same reason; the derived page counts the same phones.
    let bearer = format!("Bearer {}", app.alice.token);
    let r = start_enrollment(&app, &[("authorization", &bearer)], r#"{"type":"mobile_profile"}"#).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().ends_with(limit_plain), "{}", r.error());
    let derived = app.page("GET", "/portal/identities/derived", &[c], None).await;
    assert!(
        derived.text.contains("you have 1 mobile devices, the most your group&#39;s policy allows (1)")
            || derived.text.contains("you have 1 mobile devices, the most your group's policy allows (1)"),
        "{}",
        derived.text
    );
    assert_eq!(codes_issued(&app).await, 0);

    // A deleted phone no longer counts: both open again.
    let mut tx = app.db.begin().await.unwrap();
    let mut d = tx.get_device(phone).await.unwrap().unwrap();
    d.state = DeviceState::Deleted;
    tx.update_device(&d).await.unwrap();
    tx.commit().await.unwrap();
    let devices = app.page("GET", "/portal/devices", &[c], None).await;
    assert!(devices.text.contains("<a class=\"button\" href=\"/portal/devices/mobile\">Add Mobile</a>"));
    assert!(devices.text.contains("href=\"/portal/identities/derived\">Add Identity Device"));

    // Derived credentials off: only that button is disabled, with its own reason.
    set_policy(&app, |p| p.may_add_derived_piv = false).await;
    let devices = app.page("GET", "/portal/devices", &[c], None).await;
    assert!(devices.text.contains("<a class=\"button\" href=\"/portal/devices/mobile\">Add Mobile</a>"));
    assert!(
        has(
            &devices.text,
            "You cannot add a derived PIV credential now: your group&#39;s policy does not allow derived PIV \
             credentials on mobiles."
        ),
        "{}",
        devices.text
    );
}
