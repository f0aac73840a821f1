//! The real server in this process, on a real socket, over a throwaway database.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lanyard_ca::KeyAlgorithm;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::ids::{DeviceId, GroupId, JobId, UserId};
use lanyard_core::model::{ApiToken, Credential, Device, Group, Job, Policy, Role, User, Username};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{CredentialQuery, Repo};
use lanyard_core::secrets::Kek;
use lanyard_server::issuance::IssuanceConfig;
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use lanyard_vcard::AttestationRoot;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::db::{Backend, TestDb};

/// Someone the tests act as: a user with an API token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: UserId,
    pub username: String,
    /// `Authorization: Bearer` value.
    pub token: String,
}

/// What `POST /api/v1/issuance` answered.
#[derive(Debug, Clone)]
pub struct Issuance {
    pub device: DeviceId,
    pub job: JobId,
    /// The one-time agent ticket.
    pub ticket: String,
}

/// A running server: CA, key-encryption key and issuance enabled, with the software card's
/// attestation root trusted, and four callers. Dropping it stops the listener.
pub struct TestServer {
    pub db: TestDb,
    pub state: AppState<Db>,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`; the agent may use plain WebSockets to loopback.
    pub url: String,
    /// Every role, like the bootstrap administrator.
    pub admin: Caller,
    pub operator: Caller,
    /// Two cardholders (role `user`) in group `staff` under the default policy.
    pub alice: Caller,
    pub bob: Caller,
    /// Signs the attestations of cards from [`TestServer::plug_card`].
    pub attestation_root: AttestationRoot,
    /// The CA directory and the attestation root live here.
    pub dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The one place the kit makes a CA: a new hierarchy in a fresh directory.
fn create_pki(dir: &Path, now: time::OffsetDateTime) -> Pki {
    Pki::create(&dir.join("ca"), "Lanyard Test", KeyAlgorithm::EcP256, "http://127.0.0.1", now)
        .expect("a fresh CA hierarchy")
}

/// The one place the kit makes a key-encryption key.
fn create_kek() -> Kek {
    Kek::generate().expect("a key-encryption key")
}

/// The one place the kit makes the software cards' attestation root.
fn create_attestation_root(dir: &Path, now: time::OffsetDateTime) -> AttestationRoot {
    AttestationRoot::open_or_create(&dir.join("vcard"), now.into()).expect("an attestation root")
}

impl TestServer {
    /// A server on SQLite.
    pub async fn sqlite() -> Self {
        Self::start(Backend::Sqlite).await
    }

    /// A server on a fresh PostgreSQL database.
    pub async fn postgres() -> Self {
        Self::start(Backend::Postgres).await
    }

    /// A server on `backend`, listening on 127.0.0.1 at a free port.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// [`TestServer::start`] with the issuance configuration adjusted by `configure` (imported
    /// PIV trust anchors, the user-match rule, deadlines).
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut IssuanceConfig)) -> Self {
        let db = TestDb::new(backend).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let now = clock.now();
        let pki = create_pki(dir.path(), now);
        let attestation_root = create_attestation_root(dir.path(), now);

        let group = Group { id: GroupId::new(), name: "staff".into(), policy: Policy::default() };
        let mut tx = db.db.begin().await.expect("a transaction");
        tx.insert_group(&group).await.expect("insert group");
        let mut caller = async |name: &str, roles: &[Role]| {
            let mut user = User::new(Username::parse(name).expect("a valid name"), name, group.id, now)
                .expect("a valid user");
            user.roles = roles.iter().copied().collect::<BTreeSet<_>>();
            tx.insert_user(&user).await.expect("insert user");
            let (token, secret) = ApiToken::issue(user.id, "testkit", None, now).expect("an API token");
            tx.insert_api_token(&token).await.expect("insert token");
            Caller { id: user.id, username: name.to_owned(), token: secret.expose_secret().to_owned() }
        };
        let all = [Role::User, Role::Operator, Role::Administrator, Role::Auditor];
        let admin = caller("admin", &all).await;
        let operator = caller("oscar", &[Role::Operator]).await;
        let alice = caller("alice", &[Role::User]).await;
        let bob = caller("bob", &[Role::User]).await;
        tx.commit().await.expect("commit the callers");

        let root_der = der::Encode::to_der(attestation_root.certificate()).expect("the root encodes");
        let mut issuance = IssuanceConfig::new(create_kek(), vec![root_der]);
        configure(&mut issuance);
        let state = AppState::new(Arc::clone(&db.db), Arc::new(pki), clock).with_issuance(issuance);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("the port");
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the server runs");
        });
        TestServer {
            db,
            state,
            addr,
            url: format!("http://{addr}"),
            admin,
            operator,
            alice,
            bob,
            attestation_root,
            dir,
            server,
        }
    }

    /// `method path` as `caller`, with a JSON body when given: the status and the JSON answer
    /// (`Null` when empty). Goes through the same router the socket serves, in process.
    pub async fn call(
        &self,
        caller: &Caller,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", caller.token));
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("a well-formed request");
        let resp = router(self.state.clone()).oneshot(req).await.expect("the router answers");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.expect("the body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path} answered {status} with no JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    /// `GET path`, which must answer 200.
    pub async fn get(&self, caller: &Caller, path: &str) -> Value {
        let (status, body) = self.call(caller, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path} as {}: {body}", caller.username);
        body
    }

    /// `POST path` with `body`, which must answer 200 or 201.
    pub async fn post(&self, caller: &Caller, path: &str, body: Value) -> Value {
        let (status, answer) = self.call(caller, "POST", path, Some(body)).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::CREATED,
            "POST {path} as {} answered {status}: {answer}",
            caller.username
        );
        answer
    }

    /// `caller` starts issuing a USB key to themselves: the new device, the job and its ticket.
    pub async fn begin_issuance(&self, caller: &Caller) -> Issuance {
        let body = json!({"kind": "usb_key", "model": "Lanyard virtual card"});
        let (status, answer) = self.call(caller, "POST", "/api/v1/issuance", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "begin issuance as {}: {answer}", caller.username);
        let parse =
            |v: &Value, what: &str| v.as_str().unwrap_or_else(|| panic!("no {what} in {answer}")).to_owned();
        Issuance {
            device: parse(&answer["device"]["id"], "device id").parse().expect("a device id"),
            job: parse(&answer["job"]["id"], "job id").parse().expect("a job id"),
            ticket: parse(&answer["ticket"], "ticket"),
        }
    }

    /// The device as stored.
    pub async fn device(&self, id: DeviceId) -> Device {
        let mut tx = self.db.db.begin().await.expect("a transaction");
        tx.get_device(id).await.expect("read the device").unwrap_or_else(|| panic!("no device {id}"))
    }

    /// The device's credentials as stored.
    pub async fn credentials(&self, device: DeviceId) -> Vec<Credential> {
        let mut tx = self.db.db.begin().await.expect("a transaction");
        let query = CredentialQuery { device: Some(device), limit: 1000, ..Default::default() };
        tx.list_credentials(&query).await.expect("read the credentials")
    }

    /// A one-time enrolment code `caller` obtains for adding a mobile with a configuration
    /// profile (the SCEP challenge), through the core as the portal does; valid ten minutes, not
    /// bound to a portal session.
    pub async fn mobile_profile_code(&self, caller: &Caller) -> String {
        let user = {
            let mut tx = self.db.db.begin().await.expect("a transaction");
            tx.get_user(caller.id).await.expect("read the user").expect("the caller exists")
        };
        let now = self.state.clock.now();
        let principal =
            lanyard_core::authz::Principal::new(user, lanyard_core::audit::OperationId::random(), now)
                .expect("an enabled user");
        let me = principal.self_service().expect("a user");
        let (_, secret) = me
            .start_mobile_enrollment(
                self.db.db.as_ref(),
                lanyard_core::model::EnrollmentPurpose::MobileProfile,
                time::Duration::minutes(10),
                None,
            )
            .await
            .expect("an enrolment code");
        secret.expose_secret().to_owned()
    }

    /// The devices `caller` holds, as stored.
    pub async fn devices_of(&self, caller: &Caller) -> Vec<Device> {
        let mut tx = self.db.db.begin().await.expect("a transaction");
        let query =
            lanyard_core::repo::DeviceQuery { owner: Some(caller.id), limit: 1000, ..Default::default() };
        tx.list_devices(&query).await.expect("read the devices")
    }

    /// The job as stored.
    pub async fn job(&self, id: JobId) -> Job {
        let mut tx = self.db.db.begin().await.expect("a transaction");
        tx.get_job(id).await.expect("read the job").unwrap_or_else(|| panic!("no job {id}"))
    }
}
