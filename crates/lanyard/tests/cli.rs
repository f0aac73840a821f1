//! The `lanyard` binary end to end: `init`, and `serve` on a fresh data directory or refusing
//! material other than the recorded one, `audit verify` on an intact and on a tampered log,
//! `config check` on bad settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The test plays the operator's clock when it writes audit events directly.
#![allow(clippy::disallowed_methods)]

use lanyard_core::audit::{Actor, NewAuditEvent, OperationId};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_store::Db;
use lanyard_testkit::tools::{command_ok, openssl, write_pem};
use lanyard_testkit::{ServeProcess, free_port};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn lanyard(data: &Path, port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .env("LANYARD_DATA_DIR", data)
        .env("LANYARD_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Downloads `url` over HTTPS with curl, trusting only the server's own root, in the PEM copy
/// the server keeps for such clients (`<data>/ca/root.pem`).
fn fetch(data: &Path, url: &str, out: &Path) {
    let root_pem = data.join("ca/root.pem");
    command_ok(
        "curl",
        &["-sf", "--cacert", root_pem.to_str().unwrap(), "-o", out.to_str().unwrap(), url],
        None,
    );
}

/// Starts `lanyard serve` on `data` and waits until it listens.
fn start_server(data: &Path, port: u16) -> ServeProcess {
    start_server_with(data, port, &[])
}

fn start_server_with(data: &Path, port: u16, env: &[(&str, &str)]) -> ServeProcess {
    ServeProcess::start(Path::new(env!("CARGO_BIN_EXE_lanyard")), data, port, env)
}

#[test]
fn serve_publishes_a_working_ca_and_keeps_it_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let server = start_server(&data, port);
    let base = format!("https://127.0.0.1:{port}");
    let (root, issuing, crl) =
        (dir.path().join("root.der"), dir.path().join("ca.der"), dir.path().join("crl.der"));
    fetch(&data, &format!("{base}/pki/root.crt"), &root);
    fetch(&data, &format!("{base}/pki/ca.crt"), &issuing);
    fetch(&data, &format!("{base}/pki/crl"), &crl);
    server.stop();

    let pem = |der: &Path| write_pem(&der.with_extension("pem"), "CERTIFICATE", &std::fs::read(der).unwrap());
    let (root_pem, issuing_pem) = (pem(&root), pem(&issuing));
    let verified = openssl(&["verify", "-CAfile", &root_pem, &issuing_pem]);
    assert!(verified.contains(": OK"), "{verified}");
    let chain = dir.path().join("chain.pem");
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            std::fs::read_to_string(&issuing_pem).unwrap(),
            std::fs::read_to_string(&root_pem).unwrap()
        ),
    )
    .unwrap();
    let out = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
        "-verify",
        "-noout",
    ]);
    assert!(out.contains("verify OK"), "{out}");

    // The data directory is private; the key-encryption key and CA keys are owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("kek")), 0o600);
        assert_eq!(mode(&data.join("ca/issuing.key.pem")), 0o600);
        assert_eq!(mode(&data.join("ca/tls.key.pem")), 0o600);
    }
    // The HTTPS certificate chains to the root and names the loopback addresses (curl checked the
    // IP address against it already).
    let tls_pem = write_pem(
        &dir.path().join("tls.pem"),
        "CERTIFICATE",
        &std::fs::read(data.join("ca/tls.crt")).unwrap(),
    );
    let verified = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-verify_ip",
        "127.0.0.1",
        "-CAfile",
        chain.to_str().unwrap(),
        &tls_pem,
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let tls_before = std::fs::read(data.join("ca/tls.crt")).unwrap();

    // A restart reuses the CA and the still-young TLS certificate. It also writes the root's PEM
    // copy again when it is missing, as in a data directory from before that copy existed.
    let root_pem = std::fs::read(data.join("ca/root.pem")).unwrap();
    std::fs::remove_file(data.join("ca/root.pem")).unwrap();
    let server = start_server(&data, port);
    let again = dir.path().join("ca2.der");
    fetch(&data, &format!("{base}/pki/ca.crt"), &again);
    server.stop();
    assert_eq!(std::fs::read(&issuing).unwrap(), std::fs::read(&again).unwrap());
    assert_eq!(std::fs::read(data.join("ca/tls.crt")).unwrap(), tls_before);
    assert_eq!(std::fs::read(data.join("ca/root.pem")).unwrap(), root_pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_event_edited_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let db = Db::connect(&format!("sqlite://{}", data.join("lanyard.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    let op = OperationId::random();
    let now = time::OffsetDateTime::now_utc();
    {
        let mut tx = db.begin().await.unwrap();
        for action in ["user.create", "device.suspend", "device.resume"] {
            tx.append_audit(NewAuditEvent::new(now, Actor::System, action, &op)).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let port = free_port();
    let ok = lanyard(&data, port, &["audit", "verify"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("audit log verified: 3 events"), "{}", text(&ok));
    assert!(text(&ok).contains("every event is sealed"), "{}", text(&ok));

    // Someone with database access rewrites event 2 (past the append-only trigger).
    let Db::Sqlite(pool) = &db else { unreachable!() };
    sqlx::query("DROP TRIGGER audit_events_no_update").execute(pool).await.unwrap();
    sqlx::query("UPDATE audit_events SET action = 'device.activate' WHERE seq = 2")
        .execute(pool)
        .await
        .unwrap();
    pool.close().await;

    let bad = lanyard(&data, port, &["audit", "verify"]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(text(&bad).contains("audit chain broken at event 2"), "{}", text(&bad));
}

#[test]
fn config_check_explains_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["config", "check"])
        .env("LANYARD_DATA_DIR", dir.path())
        .env("LANYARD_LISTN", "127.0.0.1:1")
        .env("LANYARD_CA_KEY_ALGORITHM", "rsa1024")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("unknown environment variable LANYARD_LISTN"), "{t}");
    assert!(t.contains("unknown CA key algorithm \"rsa1024\""), "{t}");
}

/// Runs the admin CLI with its configuration file in `config`.
fn admin(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .env("LANYARD_CLI_CONFIG", config)
        .env_remove("LANYARD_PASSWORD")
        .output()
        .unwrap()
}

fn admin_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let o = admin(config, args);
    assert!(o.status.success(), "lanyard {args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("lanyard {args:?}: {e}: {}", text(&o)))
}

#[test]
fn the_admin_cli_issues_and_revokes_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let port = free_port();
    // The PKI endpoints also on plain HTTP, as relying parties expect, and named in certificates.
    let pki_port = free_port();
    let pki_base = format!("http://127.0.0.1:{pki_port}");
    let server = start_server_with(
        &data,
        port,
        &[("LANYARD_PKI_LISTEN", &format!("127.0.0.1:{pki_port}")), ("LANYARD_PKI_URL", &pki_base)],
    );
    let password = server.bootstrap_password.clone().expect("no bootstrap password on the first start");
    let base = format!("https://127.0.0.1:{port}");
    let config = d.join("cli/cli.json");

    // A wrong password fails with the server's message and operation id.
    // The server's certificate comes from Lanyard's own CA, which the system does not trust;
    // plain HTTP to a remote host is refused before a password is sent.
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["login", "--server", &base, "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &config)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).to_lowercase().contains("certificate"), "{}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["login", "--server", "http://lanyard.example.org", "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &config)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(text(&o).contains("only allowed to a loopback address"), "{}", text(&o));
    assert!(!config.exists());
    let root = data.join("ca/root.crt");
    let root = root.to_str().unwrap();

    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["login", "--server", &base, "--ca-cert", root, "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &config)
        .env("LANYARD_PASSWORD", "not the password")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid username or password (operation id "), "{}", text(&o));
    assert!(!config.exists());

    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["login", "--server", &base, "--ca-cert", root, "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &config)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("logged in as admin"), "{}", text(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // A user, and a card registered for the administrator.
    let user = admin_json(
        &config,
        &[
            "user",
            "add",
            "--username",
            "carol",
            "--display-name",
            "Carol",
            "--role",
            "user",
            "--output",
            "json",
        ],
    );
    assert_eq!(user["username"], "carol");
    // A user with an initial password (read from LANYARD_PASSWORD) can sign in with it.
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["user", "add", "--username", "dave", "--display-name", "Dave", "--with-password"])
        .env("LANYARD_CLI_CONFIG", &config)
        .env("LANYARD_PASSWORD", "dave's own passphrase")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let dave_config = d.join("dave.json");
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["login", "--server", &base, "--ca-cert", root, "--username", "dave"])
        .env("LANYARD_CLI_CONFIG", &dave_config)
        .env("LANYARD_PASSWORD", "dave's own passphrase")
        .output()
        .unwrap();
    assert!(o.status.success() && text(&o).contains("logged in as dave"), "{}", text(&o));
    let device = admin_json(
        &config,
        &[
            "device",
            "add",
            "--kind",
            "smart_card",
            "--model",
            "Test card",
            "--owner",
            "admin",
            "--output",
            "json",
        ],
    );
    let device_id = device["id"].as_str().unwrap().to_owned();
    let list = admin(&config, &["device", "list"]);
    assert!(list.status.success() && text(&list).contains(&device_id), "{}", text(&list));

    let key = d.join("key.pem");
    let csr = d.join("req.pem");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=Admin Signature",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    let cert = d.join("cert.pem");
    let issued = admin_json(
        &config,
        &[
            "cert",
            "issue",
            "--device",
            &device_id,
            "--csr",
            csr.to_str().unwrap(),
            "--profile",
            "digital-signature",
            "--slot",
            "9c",
            "--out",
            cert.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    // The card is still being issued (Issuing): its certificate is Pending, reported on hold until
    // the device is activated, as on the card-session route.
    assert_eq!(issued["credential"]["state"], "pending");
    let shown = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(shown.contains(&format!("OCSP - URI:{pki_base}/pki/ocsp")), "{shown}");
    assert!(shown.contains(&format!("URI:{pki_base}/pki/crl")), "{shown}");
    let credential = issued["credential"]["id"].as_str().unwrap().to_owned();

    // openssl asks the server's OCSP responder.
    let (root, issuing) = (d.join("root.der"), d.join("ca.der"));
    fetch(&data, &format!("{base}/pki/root.crt"), &root);
    fetch(&data, &format!("{base}/pki/ca.crt"), &issuing);
    let pem = |der: &Path| {
        write_pem(&der.with_extension("pem"), "CERTIFICATE", &std::fs::read(der).unwrap());
        lanyard_testkit::pem("CERTIFICATE", &std::fs::read(der).unwrap())
    };
    let chain = d.join("chain.pem");
    std::fs::write(&chain, format!("{}{}", pem(&issuing), pem(&root))).unwrap();
    let ocsp = || {
        openssl(&[
            "ocsp",
            "-issuer",
            d.join("ca.pem").to_str().unwrap(),
            "-cert",
            cert.to_str().unwrap(),
            "-url",
            &format!("{pki_base}/pki/ocsp"),
            "-CAfile",
            chain.to_str().unwrap(),
        ])
    };
    let out = ocsp();
    assert!(out.contains(": revoked") && out.contains("certificateHold"), "{out}");

    let o = admin(&config, &["cert", "revoke", "--credential", &credential, "--reason", "key_compromise"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("revoked"), "{}", text(&o));
    let out = ocsp();
    assert!(out.contains(": revoked") && out.contains("keyCompromise"), "{out}");

    // A refused action exits non-zero with the server's message and operation id.
    let o = admin(&config, &["cert", "release", "--credential", &credential]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("server answered 409") && t.contains("(operation id "), "{t}");

    server.stop();
}

#[test]
fn the_ca_key_algorithm_comes_from_the_configuration() {
    for (setting, expect) in [("p384", "secp384r1"), ("rsa3072", "(3072 bit)")] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        start_server_with(&data, port, &[("LANYARD_CA_KEY_ALGORITHM", setting)]).stop();
        for cert in ["root.crt", "issuing.crt"] {
            let path = data.join("ca").join(cert);
            let text = openssl(&["x509", "-inform", "DER", "-in", path.to_str().unwrap(), "-noout", "-text"]);
            assert!(text.contains(expect), "{setting} {cert}: {text}");
        }
    }
}

/// The agent refuses plain WebSockets to another host, and a listener off loopback, before it
/// touches a reader or a socket.
#[test]
fn agent_refuses_unsafe_settings() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lanyard")).args(args).env_remove("LANYARD_NEW_PIN").output().unwrap()
    };
    let out =
        run(&["agent", "issue", "--server", "http://lanyard.example", "--ticket", "t", "--reader", "r"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("only allowed to a loopback address"), "{}", text(&out));
    let out = run(&["agent", "serve", "--origin", "https://portal.example", "--listen", "0.0.0.0:7180"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("loopback address only"), "{}", text(&out));
    let out = run(&["agent", "serve", "--origin", "https://portal.example/path", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("scheme and host"), "{}", text(&out));
    let out = run(&["agent", "issue", "--server", "https://x.example", "--reader", "r"]);
    assert!(!out.status.success(), "a ticket is required");
}

/// Runs `lanyard <args>` with `env`, expecting it to exit by itself within a minute (a refusing
/// `serve` exits; one that starts would run forever and fails the test).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .envs(env.iter().copied())
        .env("LANYARD_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("lanyard {args:?} did not exit (a server started?): {}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn init(data: &Path, env: &[(&str, &str)]) -> String {
    let data = data.to_str().unwrap();
    let out = run_to_exit(&["init"], &[env, &[("LANYARD_DATA_DIR", data)]].concat());
    assert!(out.status.success(), "lanyard init: {}", text(&out));
    text(&out)
}

fn refused_serve(env: &[(&str, &str)]) -> String {
    let out = run_to_exit(&["serve"], env);
    assert!(!out.status.success(), "serve succeeded: {}", text(&out));
    text(&out)
}

fn root_fingerprint(data: &Path) -> String {
    lanyard_core::installation::CertFingerprint::of_der(&std::fs::read(data.join("ca/root.crt")).unwrap())
        .to_string()
}

fn kek_id(path: &Path) -> String {
    lanyard_core::secrets::Kek::load(path).unwrap().id().to_string()
}

fn sqlite_url(data: &Path) -> String {
    format!("sqlite://{}", data.join("lanyard.db").display())
}

/// Every file under `dir` with its contents, to show that a refusal changed nothing.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if !p.to_string_lossy().contains("lanyard.db") {
                // The SQLite files change on every open (WAL); what matters is the key material.
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn init_runs_once_per_database_and_serve_initialises_only_a_fresh_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let out = init(&a, &[]);
    assert!(out.contains("Bootstrap administrator: admin / "), "{out}");
    assert!(out.contains(&root_fingerprint(&a)) && out.contains(&kek_id(&a.join("kek"))), "{out}");
    // init names the PEM copy of the root, which holds the same certificate as root.crt.
    let root_pem = a.join("ca/root.pem");
    assert!(out.contains(root_pem.to_str().unwrap()), "{out}");
    let fingerprint =
        openssl(&["x509", "-in", root_pem.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"]);
    assert!(
        fingerprint.replace(':', "").to_lowercase().contains(&root_fingerprint(&a)),
        "{fingerprint} vs {}",
        root_fingerprint(&a)
    );
    let before = snapshot(&a);

    let again = run_to_exit(&["init"], &[("LANYARD_DATA_DIR", a.to_str().unwrap())]);
    assert!(!again.status.success());
    let t = text(&again);
    assert!(t.contains("the database is initialised already"), "{t}");
    assert!(t.contains(&root_fingerprint(&a)) && t.contains(&kek_id(&a.join("kek"))), "{t}");
    assert!(!t.contains("Bootstrap administrator"), "{t}");
    assert_eq!(snapshot(&a), before, "a refused init changed files");

    // The embedded default on an empty directory initialises itself, through the same code.
    let b = dir.path().join("b");
    let port = free_port();
    let server = start_server(&b, port);
    let password = server.bootstrap_password.clone();
    server.stop();
    assert!(password.is_some(), "serve on a fresh data directory made no administrator");
    let t = text(&run_to_exit(&["init"], &[("LANYARD_DATA_DIR", b.to_str().unwrap())]));
    assert!(t.contains("initialised already") && t.contains(&root_fingerprint(&b)), "{t}");

    // Not the embedded default (a SQLite file named explicitly elsewhere): no initialisation.
    let c = dir.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    let elsewhere = dir.path().join("elsewhere.db");
    std::fs::write(&elsewhere, b"").unwrap();
    let t = refused_serve(&[
        ("LANYARD_DATA_DIR", c.to_str().unwrap()),
        ("LANYARD_DATABASE_URL", &format!("sqlite://{}", elsewhere.display())),
    ]);
    assert!(t.contains("run `lanyard init`") && t.contains("database_url is not"), "{t}");
    assert!(!c.join("ca").exists() && !c.join("kek").exists(), "{t}");
    // A mistyped SQLite path is not created.
    let t = refused_serve(&[
        ("LANYARD_DATA_DIR", c.to_str().unwrap()),
        ("LANYARD_DATABASE_URL", &format!("sqlite://{}", dir.path().join("typo.db").display())),
    ]);
    assert!(t.contains("typo.db does not exist"), "{t}");
    assert!(!dir.path().join("typo.db").exists());
}

#[test]
fn serve_refuses_another_root_or_kek_and_a_data_directory_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    init(&a, &[]);
    init(&b, &[]);
    let db_a = sqlite_url(&a);
    let (root_a, root_b) = (root_fingerprint(&a), root_fingerprint(&b));
    let (kek_a, kek_b) = (kek_id(&a.join("kek")), kek_id(&b.join("kek")));
    let b_files = snapshot(&b);

    // B's CA with A's database and A's key: the root differs, and both fingerprints are named.
    let t = refused_serve(&[
        ("LANYARD_DATA_DIR", b.to_str().unwrap()),
        ("LANYARD_DATABASE_URL", &db_a),
        ("LANYARD_KEK_FILE", a.join("kek").to_str().unwrap()),
    ]);
    assert!(t.contains("root CA certificate") && t.contains(&root_a) && t.contains(&root_b), "{t}");
    assert!(!t.contains("key-encryption key"), "only the root differs: {t}");

    // A's CA and database with B's key: the KEK ids are named.
    let t = refused_serve(&[
        ("LANYARD_DATA_DIR", a.to_str().unwrap()),
        ("LANYARD_KEK_FILE", b.join("kek").to_str().unwrap()),
    ]);
    assert!(t.contains("key-encryption key") && t.contains(&kek_a) && t.contains(&kek_b), "{t}");
    assert!(!t.contains("root CA certificate"), "only the KEK differs: {t}");
    assert_eq!(snapshot(&b), b_files, "the refused starts changed B's files");

    // A second server on an empty directory against A's SQLite file: told to copy, creates nothing.
    let c = dir.path().join("c");
    let t = refused_serve(&[("LANYARD_DATA_DIR", c.to_str().unwrap()), ("LANYARD_DATABASE_URL", &db_a)]);
    assert!(t.contains(&root_a) && t.contains(&kek_a) && t.contains("copy"), "{t}");
    assert!(!c.join("ca").exists() && !c.join("kek").exists(), "serve created material: {t}");
}

/// A fresh PostgreSQL database of its own (LANYARD_TEST_POSTGRES_URL, as the store's tests use).
async fn postgres_database() -> String {
    let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL").expect(
        "LANYARD_TEST_POSTGRES_URL is not set: run scripts/test, which installs and starts PostgreSQL \
         and creates the lanyard_test role",
    );
    let name = format!("lanyard_cli_{}", std::process::id());
    let admin = Db::connect(&admin_url).await.expect("cannot reach PostgreSQL at LANYARD_TEST_POSTGRES_URL");
    let Db::Postgres(pool) = &admin else { unreachable!() };
    // The name is made of a literal and a number, so it is safe to splice in.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(pool).await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_postgres_must_bring_the_first_servers_ca_and_kek() {
    let url = postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let second_s = second.to_str().unwrap().to_owned();

    // Before `lanyard init`, serve refuses on PostgreSQL and creates nothing.
    let u = url.clone();
    let s = second_s.clone();
    let t = tokio::task::spawn_blocking(move || {
        refused_serve(&[("LANYARD_DATA_DIR", &s), ("LANYARD_DATABASE_URL", &u)])
    })
    .await
    .unwrap();
    assert!(t.contains("run `lanyard init`"), "{t}");
    assert!(!second.join("ca").exists() && !second.join("kek").exists());

    let u = url.clone();
    let f = first.clone();
    tokio::task::spawn_blocking(move || init(&f, &[("LANYARD_DATABASE_URL", &u)])).await.unwrap();
    let (root, kek) = (root_fingerprint(&first), kek_id(&first.join("kek")));

    let u = url.clone();
    let s = second_s.clone();
    let t = tokio::task::spawn_blocking(move || {
        refused_serve(&[("LANYARD_DATA_DIR", &s), ("LANYARD_DATABASE_URL", &u)])
    })
    .await
    .unwrap();
    assert!(t.contains(&root) && t.contains(&kek) && t.contains("copy"), "{t}");
    assert!(!second.join("ca").exists() && !second.join("kek").exists(), "serve created material: {t}");

    // `lanyard init` from the second server is refused too.
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_to_exit(&["init"], &[("LANYARD_DATA_DIR", &second_s), ("LANYARD_DATABASE_URL", &u)])
    })
    .await
    .unwrap();
    assert!(!out.status.success() && text(&out).contains("initialised already"), "{}", text(&out));
}

/// `lanyard agent pair` with the environment of a fresh desktop session: the agent configuration
/// file in `config`, the server's root in `root_pem`.
fn agent_pair(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["agent", "pair"])
        .args(args)
        .env("LANYARD_AGENT_CONFIG", config)
        .output()
        .unwrap()
}

#[test]
fn agent_pair_keeps_a_private_credential_a_code_works_once_and_agent_run_links_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let port = free_port();
    let server = start_server(&data, port);
    let password = server.bootstrap_password.clone().expect("no bootstrap password on the first start");
    let base = format!("https://127.0.0.1:{port}");
    let cli = d.join("cli.json");
    let root_pem =
        write_pem(&d.join("root.pem"), "CERTIFICATE", &std::fs::read(data.join("ca/root.crt")).unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["login", "--server", &base, "--ca-cert", &root_pem, "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &cli)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let token = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&cli).unwrap()).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // What the portal does for the signed-in user.
    let start_pairing = || {
        let out = command_ok(
            "curl",
            &[
                "-sf",
                "--cacert",
                &root_pem,
                "-X",
                "POST",
                "-H",
                &format!("authorization: Bearer {token}"),
                &format!("{base}/api/v1/agents/pairing"),
            ],
            None,
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };

    // A typed code, with --server.
    let pairing = start_pairing();
    let code = pairing["code"].as_str().unwrap().to_owned();
    let config = d.join("agent/agent.json");
    let o = agent_pair(
        &config,
        &[&code.to_lowercase(), "--server", &base, "--ca-cert", &root_pem, "--host-name", "ws-1"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let agent_id = saved["agent_id"].as_str().unwrap().to_owned();
    assert!(text(&o).contains(&format!("paired agent {agent_id} for ws-1")), "{}", text(&o));
    assert_eq!(saved["server"], base.as_str());
    assert_eq!(saved["host_name"], "ws-1");
    assert_eq!(saved["credential"].as_str().unwrap().len(), 64);
    assert!(!text(&o).contains(saved["credential"].as_str().unwrap()), "the credential is not printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // The same code again: refused, and the saved credential is left alone.
    let again = d.join("agent/again.json");
    let o = agent_pair(&again, &[&code, "--server", &base, "--ca-cert", &root_pem, "--host-name", "ws-2"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("server answered 401: the pairing code is wrong, already used or expired"),
        "{}",
        text(&o)
    );
    assert!(!again.exists());

    // The link the portal offers names the server; the host name defaults to the system's.
    let pairing = start_pairing();
    let link = pairing["link"].as_str().unwrap().to_owned();
    assert!(link.starts_with("lanyard://pair?server=https%3A%2F%2F127.0.0.1%3A"), "{link}");
    let second = d.join("agent/second.json");
    let o = agent_pair(&second, &[&link, "--ca-cert", &root_pem, "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(shown["agent"]["host_name"].as_str().is_some_and(|h| !h.is_empty()), "{shown}");
    assert!(shown.get("credential").is_none(), "{shown}");

    // Both agents are listed for the user, none with a secret.
    let out = command_ok(
        "curl",
        &[
            "-sf",
            "--cacert",
            &root_pem,
            "-H",
            &format!("authorization: Bearer {token}"),
            &format!("{base}/api/v1/agents"),
        ],
        None,
    );
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed[0]["id"], agent_id.as_str());
    assert_eq!(listed[0]["online"], false);

    // `lanyard agent run` links the first agent over TLS, trusting the root kept at pairing.
    let curl = |args: &[&str]| {
        let mut all = vec!["-sf", "--cacert", &root_pem, "-H"];
        let auth = format!("authorization: Bearer {token}");
        all.push(&auth);
        all.extend_from_slice(args);
        command_ok("curl", &all, None)
    };
    let mut agent = Running(
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["agent", "run", "--skip-pin-change"])
            .env("LANYARD_AGENT_CONFIG", &config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let online = wait_for("the agent to be online", || {
        let listed: serde_json::Value =
            serde_json::from_str(&curl(&[&format!("{base}/api/v1/agents")])).unwrap();
        let entry =
            listed.as_array().unwrap().iter().find(|a| a["id"] == agent_id.as_str()).cloned().unwrap();
        (entry["online"] == true).then_some(entry)
    });
    assert!(online["agent_version"].as_str().is_some_and(|v| v.starts_with("lanyard-agent/")), "{online}");
    assert!(online["last_seen_at"].is_string(), "{online}");

    // Revoking it closes the link; the agent is refused on reconnecting and stops, saying why.
    curl(&["-X", "DELETE", &format!("{base}/api/v1/agents/{agent_id}")]);
    let status = wait_for("the agent to stop", || agent.0.try_wait().unwrap());
    assert!(!status.success());
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(agent.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(out.contains("connected") && out.contains("server: this agent has been revoked"), "{out}");
    assert!(err.contains("HTTP 401") && err.contains("pair it again (lanyard agent pair)"), "{err}");
    drop(server);
}

/// A child process killed (by its own id) if the test ends before it does.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Asks `f` until it answers something; a minute is a guard against hanging, not a measure.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no {what} within a minute");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `lanyard <args>` with its standard output on a pipe whose reader is closed before the
/// process starts, so every write it makes there fails with EPIPE.
fn run_into_closed_pipe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // `config check` prints a line per setting; `vcard info` a card image's contents.
    let config = run_into_closed_pipe(&["config", "check"], &[("LANYARD_DATA_DIR", data)]);
    let image = dir.path().join("card.json");
    let vcard_home = dir.path().join("vcard-home");
    let made = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["vcard", "new", "--image", image.to_str().unwrap()])
        .args(["--home", vcard_home.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let info = run_into_closed_pipe(&["vcard", "info", "--image", image.to_str().unwrap()], &[]);
    for (what, o) in [("config check", config), ("vcard info", info)] {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "lanyard {what} into a closed pipe: {:?} {stderr}", o.status);
        assert!(stderr.is_empty(), "lanyard {what} into a closed pipe wrote to stderr: {stderr}");
    }
}

/// `lanyard <args>`, which must succeed; its standard output.
fn help_text(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_lanyard")).args(args).output().unwrap();
    assert!(o.status.success(), "lanyard {args:?}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn help_describes_what_the_program_does_now() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["init"],
        &["login"],
        &["user"],
        &["device"],
        &["device", "ticket"],
        &["cert"],
        &["agent"],
        &["agent", "issue"],
        &["agent", "pair"],
        &["vcard"],
        &["piv"],
        &["bench"],
    ];
    let mut all = String::new();
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = help_text(&args);
        // Phrases of earlier stages that no longer hold: the server speaks HTTPS, the CLI logs
        // in over it, and the CA's root for clients is a PEM file.
        for stale in ["Plain HTTP only", "for now", "so far", "not yet", "ca/root.crt"] {
            assert!(!help.contains(stale), "lanyard {args:?} still says {stale:?}:\n{help}");
        }
        all.push_str(&help);
    }
    let top = help_text(&["--help"]);
    assert!(top.contains("server (API") && top.contains("workstation agent"), "{top}");
    let serve = help_text(&["serve", "--help"]);
    for claim in ["/api/v1", "WebSocket", "/pki/", "HTTPS", "OCSP", "pki_listen"] {
        assert!(serve.contains(claim), "serve's help does not mention {claim:?}:\n{serve}");
    }
    let login = help_text(&["login", "--help"]);
    assert!(login.contains("HTTPS") && login.contains("<data_dir>/ca/root.pem"), "{login}");
    let agent = help_text(&["agent", "--help"]);
    for claim in ["pairs", "issuance, PIN unlock, wipe, rollback", "loopback API"] {
        assert!(agent.contains(claim), "agent's help does not mention {claim:?}:\n{agent}");
    }
    let ticket = help_text(&["device", "ticket", "--help"]);
    assert!(ticket.contains("--rollback"), "{ticket}");
    assert!(all.len() > 5000, "the help texts are shorter than expected:\n{all}");
}

/// Runs `program` with the XDG base directories of `home`; panics naming the install step when
/// the program is missing.
fn xdg_tool(program: &str, args: &[&str], home: &Path) -> Output {
    Command::new(program)
        .args(args)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_DIRS", home.join("data"))
        .env_remove("XDG_CURRENT_DESKTOP")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}. Install it: {}", lanyard_testkit::tools::install_hint(program))
        })
}

/// `lanyard agent install` registers the lanyard:// link handler and the log-in entry as the
/// freedesktop tools understand them (judged by desktop-file-validate and xdg-mime), keeps the
/// user's other defaults, and --uninstall takes back exactly what it wrote.
#[test]
fn agent_install_registers_the_link_handler_for_the_desktop_user() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let config = home.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let others = "[Default Applications]\ntext/html=firefox.desktop;\n";
    std::fs::write(config.join("mimeapps.list"), others).unwrap();
    let install = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["agent", "install"])
            .args(extra)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", &config)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let said = install(&[]);
    assert!(said.contains("lanyard:// links open `lanyard agent pair`"), "{said}");
    let handler = home.join("data/applications/lanyard-pair.desktop");
    let autostart = config.join("autostart/lanyard-agent.desktop");
    for entry in [&handler, &autostart] {
        let o = xdg_tool("desktop-file-validate", &[entry.to_str().unwrap()], home);
        assert!(o.status.success() && o.stdout.is_empty(), "{}: {}", entry.display(), text(&o));
    }
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_lanyard")).unwrap();
    let entry = std::fs::read_to_string(&handler).unwrap();
    assert!(entry.contains(&format!("Exec={} agent pair %u\n", exe.display())), "{entry}");
    assert!(entry.contains("MimeType=x-scheme-handler/lanyard;\n"), "{entry}");
    let started = std::fs::read_to_string(&autostart).unwrap();
    assert!(started.contains(&format!("Exec={} agent run --skip-pin-change\n", exe.display())), "{started}");
    let query = || {
        let o = xdg_tool("xdg-mime", &["query", "default", "x-scheme-handler/lanyard"], home);
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    assert_eq!(query(), "lanyard-pair.desktop");
    install(&[]);
    let list = std::fs::read_to_string(config.join("mimeapps.list")).unwrap();
    assert_eq!(list.matches("x-scheme-handler/lanyard=").count(), 1, "installed twice:\n{list}");
    assert!(list.contains("text/html=firefox.desktop;"), "{list}");

    install(&["--uninstall"]);
    assert!(!handler.exists() && !autostart.exists());
    assert_eq!(query(), "");
    assert_eq!(std::fs::read_to_string(config.join("mimeapps.list")).unwrap(), others);
}

/// A derived-PIV enrolment code for a new user `dana` of a group whose policy needs no sponsor
/// card, made in the server's database the way the portal makes one.
async fn derived_code(data: &Path) -> String {
    use lanyard_core::authz::Principal;
    use lanyard_core::model::{EnrollmentPurpose, Group, Policy, Role, User, Username};
    use secrecy::ExposeSecret;
    let db = Db::connect(&format!("sqlite://{}", data.join("lanyard.db").display())).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let group = Group {
        id: lanyard_core::ids::GroupId::new(),
        name: "phones".into(),
        policy: Policy { derived_piv_requires_sponsor: false, ..Policy::default() },
    };
    let mut dana = User::new(Username::parse("dana").unwrap(), "Dana Example", group.id, now).unwrap();
    dana.roles = [Role::User].into_iter().collect();
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&group).await.unwrap();
    tx.insert_user(&dana).await.unwrap();
    tx.commit().await.unwrap();
    let p = Principal::new(dana, OperationId::random(), now).unwrap();
    let (_, code) = p
        .self_service()
        .unwrap()
        .start_mobile_enrollment(
            &db,
            EnrollmentPurpose::derived_without_sponsor(),
            time::Duration::minutes(10),
            None,
        )
        .await
        .unwrap();
    code.expose_secret().to_owned()
}

fn mobile(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("mobile")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobile_enroll_keeps_the_credential_encrypted_and_exports_pkcs12_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let port = free_port();
    let _server = start_server(&data, port);
    let code = derived_code(&data).await;
    let link = format!("https://127.0.0.1:{port}/m/{code}");
    let root = data.join("ca/root.pem");
    let ks = d.join("keys/mobile.json");
    let pass = d.join("pass");
    std::fs::write(&pass, "a long keystore passphrase\n").unwrap();
    let store = ["--keystore", ks.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()];

    // A browser opening the link is told what to do, and the link stays usable.
    let page = d.join("page.html");
    fetch(&data, &link, &page);
    assert!(std::fs::read_to_string(&page).unwrap().contains("lanyard mobile enroll"));

    let mut args = vec!["enroll", &link, "--ca-file", root.to_str().unwrap(), "--output", "json"];
    args.extend(store);
    let o = mobile(&args, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let issued: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (issued["profile"].as_str(), issued["assurance"].as_str()),
        (Some("derived-piv-auth"), Some("aal2"))
    );
    let id = issued["credential_id"].as_str().unwrap().to_owned();
    let on_disk = std::fs::read_to_string(&ks).unwrap();
    assert!(
        on_disk.contains("lanyard-mobile-keystore") && !on_disk.contains("PRIVATE") && !on_disk.contains(&id)
    );

    // The link worked once.
    let o = mobile(&args, &[]);
    assert!(!o.status.success() && text(&o).contains("code_used"), "{}", text(&o));

    let mut list = vec!["list", "--output", "json"];
    list.extend(store);
    let o = mobile(&list, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let entries: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(entries[0]["id"], id.as_str());
    assert_eq!(entries[0]["holder"], "Dana Example");
    let wrong = d.join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let o = mobile(
        &["list", "--keystore", ks.to_str().unwrap(), "--passphrase-file", wrong.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success() && text(&o).contains("wrong passphrase"), "{}", text(&o));

    // Both PKCS#12 encodings open in OpenSSL 3, hold the key and the chain, and the chain verifies.
    for (legacy, expect) in [
        (false, ["MAC: sha256", "PBES2, PBKDF2, AES-256-CBC"]),
        (true, ["MAC: sha1", "pbeWithSHA1And3-KeyTripleDES-CBC"]),
    ] {
        let p12 = d.join(if legacy { "legacy.p12" } else { "modern.p12" });
        let mut export = vec!["export-p12", &id[..8], "--out", p12.to_str().unwrap()];
        if legacy {
            export.push("--legacy");
        }
        export.extend(store);
        let o = mobile(&export, &[("LANYARD_P12_PASSWORD", "p12 secret")]);
        assert!(o.status.success(), "{}", text(&o));
        let p12s = p12.to_str().unwrap();
        let info = openssl(&["pkcs12", "-info", "-noout", "-in", p12s, "-passin", "pass:p12 secret"]);
        for e in expect {
            assert!(info.contains(e), "{e} missing from:\n{info}");
        }
        let certs = d.join("certs.pem");
        openssl(&[
            "pkcs12",
            "-in",
            p12s,
            "-passin",
            "pass:p12 secret",
            "-nokeys",
            "-out",
            certs.to_str().unwrap(),
        ]);
        let pem = std::fs::read_to_string(&certs).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3, "{pem}");
        let leaf = d.join("leaf.pem");
        let leaf_pem =
            pem.split_inclusive("-----END CERTIFICATE-----\n").find(|c| c.contains("Dana Example")).unwrap();
        std::fs::write(&leaf, &leaf_pem[leaf_pem.find("-----BEGIN").unwrap()..]).unwrap();
        let verdict = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            certs.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(verdict.contains(": OK"), "{verdict}");
        let text_form = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
        assert!(text_form.contains("2.16.840.1.101.3.2.1.3.40"), "{text_form}");
        let key = d.join("key.pem");
        openssl(&[
            "pkcs12",
            "-in",
            p12s,
            "-passin",
            "pass:p12 secret",
            "-nocerts",
            "-nodes",
            "-out",
            key.to_str().unwrap(),
        ]);
        let from_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        let from_cert = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-pubkey"]);
        assert_eq!(from_key, from_cert, "the key is the certificate's");
        let bad = lanyard_testkit::tools::command(
            "openssl",
            &["pkcs12", "-info", "-noout", "-in", p12s, "-passin", "pass:wrong"],
            None,
        );
        assert!(!bad.success, "a wrong password must fail the MAC");
    }

    let mut delete = vec!["delete", &id[..8]];
    delete.extend(store);
    let o = mobile(&delete, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mobile(&list, &[]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(), serde_json::json!([]));
}
