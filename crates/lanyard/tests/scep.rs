//! The SCEP endpoint judged by clients Lanyard did not write: a request made of openssl commands
//! (`openssl cms -encrypt -stream`, indefinite-length BER as Apple sends; see
//! `lanyard_testkit::scep`), and micromdm's `scepclient` (Debian `scep`), which always uses SHA-1
//! and single DES and must be refused with a SCEP failure. Issued certificates are checked with
//! `openssl verify` against Lanyard's root and `openssl ocsp` against its responder.
//!
//! Against a real `lanyard serve` over HTTPS, with the challenge and URL taken from a profile the
//! portal generated: certmonger's daemon (on a private D-Bus session bus), pyscep (PyPI, in the
//! test venv) and the openssl-built client enrol.
//!
//! Needs openssl, curl, scepclient, certmonger, dbus-run-session, python3 and pyscep in
//! `target/test-venv` (`scripts/test` installs them); a missing tool fails the test with the
//! install step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::DeviceKind;
use lanyard_testkit::TestServer;
use lanyard_testkit::scep::OpensslScepClient;
use lanyard_testkit::tools::{command, command_ok, openssl_in, write_pem};

fn curl_post(url: &str, body: &Path, out: &Path) -> String {
    command_ok(
        "curl",
        &[
            "-sS",
            "-f",
            "-o",
            &out.to_string_lossy(),
            "-w",
            "%{http_code} %{content_type}",
            "-H",
            "Content-Type: application/x-pki-message",
            "--data-binary",
            &format!("@{}", body.display()),
            url,
        ],
        None,
    )
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &TestServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = &server.state.pki;
        write_pem(&dir.path().join("root.pem"), "CERTIFICATE", pki.root.certificate_der());
        write_pem(&dir.path().join("issuing.pem"), "CERTIFICATE", pki.issuing.certificate_der());
        let chain = lanyard_testkit::tools::pem("CERTIFICATE", pki.root.certificate_der())
            + &lanyard_testkit::tools::pem("CERTIFICATE", pki.issuing.certificate_der());
        std::fs::write(dir.path().join("chain.pem"), chain).unwrap();
        write_pem(&dir.path().join("ra.pem"), "CERTIFICATE", &pki.scep_ra.certificate.der);
        Files { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Sends a PKCSReq built by openssl with `challenge` and `cipher`; answers the reply as openssl
/// reads it.
fn openssl_pkcsreq(
    server: &TestServer,
    files: &Files,
    client: &OpensslScepClient,
    challenge: &str,
    cipher: &str,
    transaction: &str,
) -> lanyard_testkit::scep::CertRepView {
    let csr = client.csr("My iPhone", challenge);
    let (msg, nonce) =
        client.request(&files.path("ra.pem"), 19, transaction, &csr, cipher, "self.pem", "key.pem", "sha256");
    assert_eq!(&msg[..2], &[0x30, 0x80], "indefinite-length BER");
    let body = client.dir.join(format!("{transaction}.msg"));
    std::fs::write(&body, &msg).unwrap();
    let out = client.dir.join(format!("{transaction}.rep"));
    let status = curl_post(&format!("{}/scep?operation=PKIOperation", server.url), &body, &out);
    assert_eq!(status, "200 application/x-pki-message");
    let view =
        client.read_reply(&std::fs::read(&out).unwrap(), &files.path("chain.pem"), "self.pem", "key.pem");
    assert_eq!(view.transaction_id, transaction, "{}", view.printed);
    assert_eq!(view.recipient_nonce, hex(&nonce), "{}", view.printed);
    view
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ca_caps_and_get_ca_cert_answer_what_clients_need() {
    let server = TestServer::sqlite().await;
    let files = Files::new(&server);
    let caps = command_ok("curl", &["-sS", "-f", &format!("{}/scep?operation=GetCACaps", server.url)], None);
    for cap in ["POSTPKIOperation", "SHA-256", "SHA-512", "AES", "DES3", "SCEPStandard", "Renewal"] {
        assert!(caps.lines().any(|l| l == cap), "{cap} missing from {caps:?}");
    }
    assert!(!caps.contains("SHA-1") && !caps.lines().any(|l| l == "DES"), "{caps}");

    let out = files.path("ca.p7b");
    let status = command_ok(
        "curl",
        &[
            "-sS",
            "-f",
            "-o",
            &out.to_string_lossy(),
            "-w",
            "%{content_type}",
            &format!("{}/scep?operation=GetCACert", server.url),
        ],
        None,
    );
    assert_eq!(status, "application/x-x509-ca-ra-cert");
    let certs =
        openssl_in(Some(files.dir.path()), &["pkcs7", "-inform", "DER", "-in", "ca.p7b", "-print_certs"]);
    assert!(
        certs.contains("SCEP RA") && certs.contains("Issuing CA") && certs.contains("Root CA"),
        "{certs}"
    );
    // The RA certificate is RSA with both usages, under the EC issuing CA, and verifies.
    let ra = openssl_in(Some(files.dir.path()), &["x509", "-in", "ra.pem", "-noout", "-text"]);
    assert!(ra.contains("rsaEncryption") && ra.contains("Digital Signature, Key Encipherment"), "{ra}");
    let verified = openssl_in(
        Some(files.dir.path()),
        &["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "ra.pem"],
    );
    assert!(verified.contains("ra.pem: OK"), "{verified}");

    // Unknown operations and broken messages are HTTP 400, never 500.
    let bad = command(
        "curl",
        &["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/scep?operation=Nonsense", server.url)],
        None,
    );
    assert_eq!(bad.stdout, "400");
    std::fs::write(files.path("junk"), b"\x30\x80junk").unwrap();
    let bad = command(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            &format!("@{}", files.path("junk").display()),
            &format!("{}/scep?operation=PKIOperation", server.url),
        ],
        None,
    );
    assert_eq!(bad.stdout, "400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_streamed_pkcsreq_enrols_a_mobile_once_and_refusals_change_nothing() {
    let server = TestServer::sqlite().await;
    let files = Files::new(&server);
    let client = OpensslScepClient::new(&files.path("client"), "iPhone");
    let code = server.mobile_profile_code(&server.alice).await;

    // Single DES: badAlg, and the code is still good afterwards.
    let view = openssl_pkcsreq(&server, &files, &client, &code, "-des", "tx-des");
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("0")), "{}", view.printed);
    // A wrong challenge: badRequest.
    let view = openssl_pkcsreq(&server, &files, &client, "not-the-code", "-aes256", "tx-wrong");
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("2")), "{}", view.printed);
    assert!(server.devices_of(&server.alice).await.is_empty(), "a refusal created a device");

    // The real thing: AES-256, the code as the challenge.
    let view = openssl_pkcsreq(&server, &files, &client, &code, "-aes256", "tx-good");
    assert_eq!(view.status, "0", "{}", view.printed);
    std::fs::write(files.path("issued.pem"), &view.certificates_pem).unwrap();
    let verified = openssl_in(
        Some(files.dir.path()),
        &["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "issued.pem"],
    );
    assert!(verified.contains("issued.pem: OK"), "{verified}");
    let text = openssl_in(Some(files.dir.path()), &["x509", "-in", "issued.pem", "-noout", "-text"]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    // The key is the client's.
    let ours = openssl_in(Some(&client.dir), &["x509", "-in", "self.pem", "-noout", "-pubkey"]);
    let theirs = openssl_in(Some(files.dir.path()), &["x509", "-in", "issued.pem", "-noout", "-pubkey"]);
    assert_eq!(ours, theirs);
    // OCSP says good.
    let ocsp = openssl_in(
        Some(files.dir.path()),
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "issued.pem",
            "-url",
            &format!("{}/pki/ocsp", server.url),
            "-CAfile",
            "root.pem",
            "-no_nonce",
        ],
    );
    assert!(ocsp.contains("issued.pem: good"), "{ocsp}");

    // The mobile is Active with its certificate recorded Active.
    let devices = server.devices_of(&server.alice).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!((devices[0].kind, devices[0].state), (DeviceKind::Mobile, DeviceState::Active));
    let credentials = server.credentials(devices[0].id).await;
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].state, CredentialState::Active);

    // The same code again: badRequest, nothing more issued.
    let view = openssl_pkcsreq(&server, &files, &client, &code, "-aes128", "tx-again");
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("2")), "{}", view.printed);
    assert!(view.printed.contains("already used"), "{}", view.printed);
    assert_eq!(server.devices_of(&server.alice).await.len(), 1);

    // RenewalReq: signed with the issued certificate and its key, for a new key.
    let next = OpensslScepClient::new(&files.path("next"), "iPhone");
    let csr = next.csr("My iPhone", "unused");
    let issued = files.path("issued.pem").to_string_lossy().into_owned();
    let (msg, _) =
        client.request(&files.path("ra.pem"), 17, "tx-renew", &csr, "-aes256", &issued, "key.pem", "sha256");
    std::fs::write(client.dir.join("renew.msg"), &msg).unwrap();
    let status = curl_post(
        &format!("{}/scep?operation=PKIOperation", server.url),
        &client.dir.join("renew.msg"),
        &client.dir.join("renew.rep"),
    );
    assert_eq!(status, "200 application/x-pki-message");
    let view = client.read_reply(
        &std::fs::read(client.dir.join("renew.rep")).unwrap(),
        &files.path("chain.pem"),
        &issued,
        "key.pem",
    );
    assert_eq!(view.status, "0", "{}", view.printed);
    std::fs::write(files.path("renewed.pem"), &view.certificates_pem).unwrap();
    let new_key = openssl_in(Some(&next.dir), &["x509", "-in", "self.pem", "-noout", "-pubkey"]);
    let renewed_key =
        openssl_in(Some(files.dir.path()), &["x509", "-in", "renewed.pem", "-noout", "-pubkey"]);
    assert_eq!(new_key, renewed_key);
    let credentials = server.credentials(devices[0].id).await;
    let mut states: Vec<CredentialState> = credentials.iter().map(|c| c.state).collect();
    states.sort_by_key(|s| s.as_str());
    assert_eq!(states, [CredentialState::Active, CredentialState::Superseded]);
    let ocsp = openssl_in(
        Some(files.dir.path()),
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "issued.pem",
            "-url",
            &format!("{}/pki/ocsp", server.url),
            "-CAfile",
            "root.pem",
            "-no_nonce",
        ],
    );
    assert!(ocsp.contains("issued.pem: revoked"), "{ocsp}");
    // The superseded certificate cannot renew again.
    let (msg, _) = client.request(
        &files.path("ra.pem"),
        17,
        "tx-renew-2",
        &csr,
        "-aes256",
        &issued,
        "key.pem",
        "sha256",
    );
    std::fs::write(client.dir.join("renew2.msg"), &msg).unwrap();
    curl_post(
        &format!("{}/scep?operation=PKIOperation", server.url),
        &client.dir.join("renew2.msg"),
        &client.dir.join("renew2.rep"),
    );
    let view = client.read_reply(
        &std::fs::read(client.dir.join("renew2.rep")).unwrap(),
        &files.path("chain.pem"),
        &issued,
        "key.pem",
    );
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("2")), "{}", view.printed);
    assert_eq!(server.credentials(devices[0].id).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micromdm_scepclient_with_sha1_and_des_is_refused_and_nothing_is_issued() {
    let server = TestServer::sqlite().await;
    let files = Files::new(&server);
    let code = server.mobile_profile_code(&server.alice).await;
    // scepclient encrypts to every certificate GetCACert lists unless told which one to use; the
    // CA's keys here are EC, so it is pointed at the RA certificate by its SHA-256 fingerprint.
    let fingerprint =
        openssl_in(Some(files.dir.path()), &["x509", "-in", "ra.pem", "-noout", "-fingerprint", "-sha256"]);
    let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    let key = files.path("scepclient.key");
    let cert = files.path("scepclient.pem");
    let ran = command(
        "scepclient",
        &[
            "-server-url",
            &format!("{}/scep", server.url),
            "-challenge",
            &code,
            "-private-key",
            &key.to_string_lossy(),
            "-certificate",
            &cert.to_string_lossy(),
            "-cn",
            "micromdm",
            "-keySize",
            "2048",
            "-ca-fingerprint",
            &fingerprint,
            "-debug",
        ],
        Some(files.dir.path()),
    );
    assert!(!ran.success, "scepclient enrolled with SHA-1 and DES:\n{}", ran.text());
    // It read a signed CertRep FAILURE with failInfo badAlg (a SCEP answer, not an HTTP error).
    assert!(ran.text().contains("PKCSReq (19) request failed, failInfo: badAlg (0)"), "{}", ran.text());
    assert!(!cert.exists() || std::fs::read(&cert).unwrap().is_empty(), "a certificate was written");
    assert!(server.devices_of(&server.alice).await.is_empty(), "a device was created");

    // The code survived: an AES request with it succeeds.
    let client = OpensslScepClient::new(&files.path("client"), "iPhone");
    let view = openssl_pkcsreq(&server, &files, &client, &code, "-aes256", "tx-after-micromdm");
    assert_eq!(view.status, "0", "{}", view.printed);
}

// ---------------------------------------------------------------------------------------------
// A real `lanyard serve` (HTTPS from Lanyard's own CA), its portal driven with curl as a browser
// would: Add Mobile → the one-time profile link → the signed profile, whose SCEP payload gives
// the clients their URL and challenge.

/// `lanyard serve` on a fresh data directory, with the bootstrap administrator signed in to the
/// portal (curl's cookie jar) and OCSP also on plain HTTP (`pki_listen`).
struct Served {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    port: u16,
    pki_port: u16,
    _process: lanyard_testkit::ServeProcess,
}

/// What the generated profile says, read back by Python's plistlib after `openssl cms -verify`
/// checked its signature against Lanyard's root.
#[derive(Debug)]
struct Profile {
    scep_url: String,
    challenge: String,
}

impl Served {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = lanyard_testkit::free_port();
        let pki_port = lanyard_testkit::free_port();
        let pki_listen = format!("127.0.0.1:{pki_port}");
        let process = lanyard_testkit::ServeProcess::start(
            Path::new(env!("CARGO_BIN_EXE_lanyard")),
            &data,
            port,
            &[("LANYARD_PKI_LISTEN", pki_listen.as_str())],
        );
        let password = process.bootstrap_password.clone().expect("the bootstrap password on a first start");
        let served = Served { dir, data, port, pki_port, _process: process };
        std::fs::create_dir_all(served.path("work")).unwrap();
        let issuing = std::fs::read(served.data.join("ca/issuing.crt")).unwrap();
        write_pem(&served.path("issuing.pem"), "CERTIFICATE", &issuing);
        let status = served.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-urlencode",
            "username=admin",
            "--data-urlencode",
            &format!("password={password}"),
            &served.url("/portal/login"),
        ]);
        assert_eq!(status, "303", "signing in to the portal");
        served
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Lanyard's root, the PEM copy the server keeps for clients.
    fn root(&self) -> String {
        self.data.join("ca/root.pem").to_string_lossy().into_owned()
    }

    /// curl over HTTPS trusting only Lanyard's root, with the portal session's cookie jar.
    fn curl(&self, args: &[&str]) -> String {
        let jar = self.path("cookies").to_string_lossy().into_owned();
        let root = self.root();
        let mut all = vec!["-sS", "--cacert", &root, "-b", &jar, "-c", &jar];
        all.extend_from_slice(args);
        command_ok("curl", &all, None)
    }

    /// Add Mobile in the portal: Continue, and the one-time profile link the page shows.
    fn add_mobile(&self) -> String {
        let page = self.curl(&[&self.url("/portal/devices/mobile")]);
        let csrf = page
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token on Add Mobile:\n{page}"))
            .to_owned();
        let page = self.curl(&["--data", &format!("csrf_token={csrf}"), &self.url("/portal/devices/mobile")]);
        let prefix = self.url("/enroll/profile/");
        let start = page.find(&prefix).unwrap_or_else(|| panic!("no profile link on the page:\n{page}"));
        page[start..].split(|c: char| c == '"' || c == '<' || c.is_whitespace()).next().unwrap().to_owned()
    }

    /// Downloads the profile at `link` (which must answer 200 with Apple's content type), checks
    /// its signature against the root with `openssl cms -verify` and reads its SCEP payload with
    /// plistlib.
    fn download_profile(&self, link: &str) -> Profile {
        let file = self.path("work/profile.mobileconfig");
        let status = self.curl(&["-o", &file.to_string_lossy(), "-w", "%{http_code} %{content_type}", link]);
        assert_eq!(status, "200 application/x-apple-aspen-config", "downloading {link}");
        let plist = self.path("work/profile.plist");
        let root = self.root();
        let verified = command(
            "openssl",
            &[
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                &file.to_string_lossy(),
                "-CAfile",
                &root,
                "-purpose",
                "any",
                "-out",
                &plist.to_string_lossy(),
            ],
            None,
        );
        assert!(
            verified.success && verified.text().contains("Verification successful"),
            "{}",
            verified.text()
        );
        let script = "import json, plistlib, sys\n\
            p = plistlib.load(open(sys.argv[1], 'rb'))\n\
            scep = [c for c in p['PayloadContent'] if c['PayloadType'] == 'com.apple.security.scep']\n\
            assert len(scep) == 1, 'one SCEP payload'\n\
            c = scep[0]['PayloadContent']\n\
            print(json.dumps({'url': c['URL'], 'challenge': c['Challenge'], 'keysize': c['Keysize'], \
            'keytype': c['Key Type']}))\n";
        let out = command_ok("python3", &["-c", script, &plist.to_string_lossy()], None);
        let fields: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!((fields["keysize"].as_i64(), fields["keytype"].as_str()), (Some(2048), Some("RSA")));
        Profile {
            scep_url: fields["url"].as_str().unwrap().to_owned(),
            challenge: fields["challenge"].as_str().unwrap().to_owned(),
        }
    }

    /// The HTTP status a download of `link` gets now.
    fn download_status(&self, link: &str) -> String {
        self.curl(&["-o", "/dev/null", "-w", "%{http_code}", link])
    }

    /// The states of the signed-in user's mobiles (`GET /api/v1/devices` with the portal session).
    fn mobile_states(&self) -> Vec<String> {
        let devices: serde_json::Value =
            serde_json::from_str(&self.curl(&[&self.url("/api/v1/devices")])).unwrap();
        devices
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "mobile")
            .map(|d| d["state"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `openssl verify` of the PEM certificate `cert` against the root and the issuing CA, and
    /// `openssl ocsp` against the responder on plain HTTP: its status ("good", "revoked").
    fn verify_and_ocsp(&self, cert: &Path) -> String {
        let cert = cert.to_string_lossy().into_owned();
        let issuing = self.path("issuing.pem").to_string_lossy().into_owned();
        let root = self.root();
        let verified = openssl_in(None, &["verify", "-CAfile", &root, "-untrusted", &issuing, &cert]);
        assert!(verified.contains(": OK"), "{verified}");
        let ocsp = openssl_in(
            None,
            &[
                "ocsp",
                "-issuer",
                &issuing,
                "-cert",
                &cert,
                "-url",
                &format!("http://127.0.0.1:{}/pki/ocsp", self.pki_port),
                "-CAfile",
                &root,
                "-no_nonce",
            ],
        );
        ocsp.lines()
            .find_map(|l| l.strip_prefix(&format!("{cert}: ")))
            .unwrap_or_else(|| panic!("no status in {ocsp}"))
            .trim()
            .to_owned()
    }
}

/// certmonger (Debian `certmonger`): its daemon on a private D-Bus session bus
/// (`dbus-run-session`), its state in `dir`, enrolling with `getcert add-scep-ca` and
/// `getcert request -L <challenge>`. Answers the daemon's output.
///
/// certmonger 0.79's `scep-submit` checks HTTPS for GetCACaps and GetCACert against the CA file
/// given with `-R`, but sends the PKIOperation itself with curl's default trust store. So the
/// daemon runs in a mount namespace of its own where that store (`/etc/ssl/certs/
/// ca-certificates.crt`) is the system's plus Lanyard's root; the machine's store is untouched.
fn certmonger_enrol(served: &Served, profile: &Profile, dir: &Path) -> String {
    let system_store = Path::new("/etc/ssl/certs/ca-certificates.crt");
    assert!(system_store.is_file(), "no {}: apt-get install ca-certificates", system_store.display());
    for d in ["requests", "cas", "tmp", "out"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let mut bundle = std::fs::read(system_store).unwrap();
    bundle.extend(std::fs::read(served.root()).unwrap());
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    // The gate command certmonger runs once its bus name is taken; the daemon stops when it ends.
    let script = format!(
        "#!/bin/sh\n\
         set -e\n\
         getcert add-scep-ca -s -c Lanyard -u '{url}' -R '{root}' -v\n\
         # The daemon fetches the CA certificates in the background; the request needs them.\n\
         i=0\n\
         until getcert list-cas -s -c Lanyard | grep -q 'SCEP CA certificate thumbprint'; do\n\
           i=$((i+1)); [ $i -lt 300 ] || {{ echo 'certmonger never fetched GetCACert'; exit 1; }}\n\
           sleep 0.2\n\
         done\n\
         getcert request -s -w -v -c Lanyard -I lanyard-mobile -k '{out}/key.pem' -f '{out}/cert.pem' \
         -L '{challenge}' -N 'CN=certmonger phone'\n\
         getcert list -s\n",
        url = profile.scep_url,
        root = served.root(),
        out = dir.join("out").display(),
        challenge = profile.challenge,
    );
    let gate = dir.join("gate.sh");
    std::fs::write(&gate, script).unwrap();
    std::fs::set_permissions(&gate, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for tool in ["certmonger", "getcert", "dbus-run-session", "unshare"] {
        let found = command("sh", &["-c", &format!("command -v {tool}")], None);
        assert!(found.success, "{tool} is not installed: {}", lanyard_testkit::tools::install_hint(tool));
    }
    let mut args = vec!["300", "unshare"];
    // Root makes the mount namespace directly; anyone else through a user namespace.
    if is_root() {
        args.push("--mount");
    } else {
        args.extend(["--map-root-user", "--mount"]);
    }
    let inner = "mount --bind \"$0\" /etc/ssl/certs/ca-certificates.crt && \
                 exec dbus-run-session -- certmonger -s -n -d 2 -c \"$1\"";
    let bundle = dir.join("bundle.pem").to_string_lossy().into_owned();
    let gate = gate.to_string_lossy().into_owned();
    args.extend(["sh", "-c", inner, &bundle, &gate]);
    let out = std::process::Command::new("timeout")
        .args(&args)
        .env("CERTMONGER_REQUESTS_DIR", dir.join("requests"))
        .env("CERTMONGER_CAS_DIR", dir.join("cas"))
        .env("CERTMONGER_TMPDIR", dir.join("tmp"))
        .output()
        .expect("timeout (coreutils) runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "certmonger did not finish:\n{text}");
    text
}

/// Whether this process runs as root (then `unshare --mount` needs no user namespace).
fn is_root() -> bool {
    command_ok("id", &["-u"], None).trim() == "0"
}

#[test]
fn certmonger_enrols_with_the_challenge_of_a_generated_profile() {
    let served = Served::start();
    let link = served.add_mobile();
    let profile = served.download_profile(&link);
    assert_eq!(profile.scep_url, served.url("/scep"));
    assert_eq!(served.mobile_states(), ["enrolling"]);

    let dir = served.path("certmonger");
    let log = certmonger_enrol(&served, &profile, &dir);
    assert!(log.contains("SCEP status is \"success\"") && log.contains("status: MONITORING"), "{log}");
    let cert = dir.join("out/cert.pem");
    assert!(cert.is_file(), "certmonger wrote no certificate:\n{log}");
    assert_eq!(served.verify_and_ocsp(&cert), "good");
    // The key is certmonger's own.
    let key = dir.join("out/key.pem").to_string_lossy().into_owned();
    let ours = openssl_in(None, &["pkey", "-in", &key, "-pubout"]);
    let theirs = openssl_in(None, &["x509", "-in", &cert.to_string_lossy(), "-noout", "-pubkey"]);
    assert_eq!(ours, theirs);
    assert_eq!(served.mobile_states(), ["active"]);
    assert_eq!(served.download_status(&link), "410");
}

/// Sends `msg` (signed with `signer`/`key` of `client`) and reads the reply as openssl does.
fn exchange(
    server: &TestServer,
    files: &Files,
    client: &OpensslScepClient,
    msg: &[u8],
    signer: &str,
    transaction: &str,
) -> lanyard_testkit::scep::CertRepView {
    let body = client.dir.join(format!("{transaction}.msg"));
    std::fs::write(&body, msg).unwrap();
    let out = client.dir.join(format!("{transaction}.rep"));
    let status = curl_post(&format!("{}/scep?operation=PKIOperation", server.url), &body, &out);
    assert_eq!(status, "200 application/x-pki-message");
    let view = client.read_reply(&std::fs::read(&out).unwrap(), &files.path("chain.pem"), signer, "key.pem");
    assert_eq!(view.transaction_id, transaction, "{}", view.printed);
    view
}

fn fingerprint(pem_file: &Path) -> String {
    openssl_in(None, &["x509", "-in", &pem_file.to_string_lossy(), "-noout", "-fingerprint", "-sha256"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_cert_get_crl_and_cert_poll_answer_over_http() {
    let server = TestServer::sqlite().await;
    let files = Files::new(&server);
    // A self-signed certificate with a 32-byte serial, as certmonger makes them (RFC 5280 allows a
    // CA 20): the server reads it, and names it in the reply's envelope as sent.
    let client = OpensslScepClient::with_serial(&files.path("client"), "iPhone", &"5a".repeat(32));
    let code = server.mobile_profile_code(&server.alice).await;
    let view = openssl_pkcsreq(&server, &files, &client, &code, "-aes256", "tx-enrol");
    assert_eq!(view.status, "0", "{}", view.printed);
    let issued = files.path("issued.pem");
    std::fs::write(&issued, &view.certificates_pem).unwrap();
    let issued_arg = issued.to_string_lossy().into_owned();
    let ra = files.path("ra.pem");

    // GetCert, signed with the issued certificate: the same certificate comes back.
    let ias = client.issuer_and_serial(&issued_arg);
    let (msg, _) = client.request(&ra, 21, "tx-getcert", &ias, "-aes128", &issued_arg, "key.pem", "sha256");
    let view = exchange(&server, &files, &client, &msg, &issued_arg, "tx-getcert");
    assert_eq!(view.status, "0", "{}", view.printed);
    std::fs::write(files.path("got.pem"), &view.certificates_pem).unwrap();
    assert_eq!(fingerprint(&files.path("got.pem")), fingerprint(&issued));

    // GetCert from someone who does not hold that key: badCertId, nothing told.
    let stranger = OpensslScepClient::new(&files.path("stranger"), "Stranger");
    let (msg, _) = stranger.request(&ra, 21, "tx-stranger", &ias, "-aes256", "self.pem", "key.pem", "sha256");
    let view = exchange(&server, &files, &stranger, &msg, "self.pem", "tx-stranger");
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("4")), "{}", view.printed);
    // GetCert for a certificate that is no credential (the RA's own): badCertId.
    let ra_ias = client.issuer_and_serial(&ra.to_string_lossy());
    let (msg, _) = client.request(&ra, 21, "tx-ra", &ra_ias, "-aes256", &issued_arg, "key.pem", "sha256");
    let view = exchange(&server, &files, &client, &msg, &issued_arg, "tx-ra");
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("4")), "{}", view.printed);

    // GetCRL: the issuing CA's CRL, which verifies against the chain.
    let (msg, _) = client.request(&ra, 22, "tx-getcrl", &ias, "-des3", &issued_arg, "key.pem", "sha256");
    let view = exchange(&server, &files, &client, &msg, &issued_arg, "tx-getcrl");
    assert_eq!(view.status, "0", "{}", view.printed);
    assert!(view.certificates_pem.contains("-----BEGIN X509 CRL-----"), "{}", view.certificates_pem);
    std::fs::write(files.path("crl.pem"), &view.certificates_pem).unwrap();
    let crl = openssl_in(
        Some(files.dir.path()),
        &["crl", "-in", "crl.pem", "-CAfile", "chain.pem", "-verify", "-noout", "-issuer"],
    );
    assert!(crl.contains("verify OK") && crl.contains("Issuing CA"), "{crl}");

    // CertPoll: nothing is ever pending here, so badCertId.
    let ias_subject = client.issuer_and_subject(&issued_arg);
    let (msg, _) =
        client.request(&ra, 20, "tx-poll", &ias_subject, "-aes256", "self.pem", "key.pem", "sha256");
    let view = exchange(&server, &files, &client, &msg, "self.pem", "tx-poll");
    assert_eq!((view.status.as_str(), view.fail_info.as_deref()), ("2", Some("4")), "{}", view.printed);
    assert!(view.printed.contains("no request is pending"), "{}", view.printed);
    // None of it changed the mobile: one Active certificate.
    let devices = server.devices_of(&server.alice).await;
    assert_eq!(devices.len(), 1);
    assert_eq!(server.credentials(devices[0].id).await.len(), 1);
}

/// The test venv's Python, which must import pyscep (and its patched oscrypto).
fn pyscep_python() -> std::path::PathBuf {
    let python = lanyard_testkit::tools::pkilint::bin().join("python");
    let ran =
        command(&python, &["-W", "ignore", "-c", "import scep.Client.client, oscrypto.asymmetric"], None);
    assert!(
        ran.success,
        "pyscep cannot be imported by {}: {}\n{}",
        python.display(),
        lanyard_testkit::tools::install_hint("pyscep"),
        ran.text()
    );
    python
}

/// `tests/scep/pyscep_client.py <args>` under the venv's Python, trusting Lanyard's root.
fn pyscep(served: &Served, args: &[&str]) -> lanyard_testkit::tools::Ran {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scep/pyscep_client.py");
    let out = std::process::Command::new(pyscep_python())
        .arg("-W")
        .arg("ignore")
        .arg(&script)
        .args(args)
        .env("REQUESTS_CA_BUNDLE", served.root())
        .output()
        .expect("the venv's Python runs");
    lanyard_testkit::tools::Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn pyscep_enrols_with_the_challenge_of_a_generated_profile_then_gets_its_certificate_and_the_crl() {
    let served = Served::start();
    let link = served.add_mobile();
    let profile = served.download_profile(&link);
    let out = served.path("pyscep");
    std::fs::create_dir_all(&out).unwrap();
    let out_arg = out.to_string_lossy().into_owned();

    let ran = pyscep(&served, &["enrol", &profile.scep_url, &profile.challenge, &out_arg]);
    assert!(ran.success && ran.stdout.trim() == "SUCCESS", "{}", ran.text());
    let issued = out.join("issued.pem");
    assert_eq!(served.verify_and_ocsp(&issued), "good");
    assert_eq!(served.mobile_states(), ["active"]);
    assert_eq!(served.download_status(&link), "410");

    // GetCert signed with the new certificate: the same certificate.
    let serial = openssl_in(None, &["x509", "-in", &issued.to_string_lossy(), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_owned();
    let ran = pyscep(&served, &["getcert", &profile.scep_url, &out_arg, &serial]);
    assert!(ran.success && ran.stdout.trim() == "SUCCESS", "{}", ran.text());
    assert_eq!(fingerprint(&out.join("got.pem")), fingerprint(&issued));
    // GetCRL: the issuing CA's CRL, which verifies.
    let ran = pyscep(&served, &["getcrl", &profile.scep_url, &out_arg]);
    assert!(ran.success && ran.stdout.trim() == "SUCCESS", "{}", ran.text());
    let chain = served.path("chain.pem");
    let chain_text = std::fs::read_to_string(served.root()).unwrap()
        + &std::fs::read_to_string(served.path("issuing.pem")).unwrap();
    std::fs::write(&chain, chain_text).unwrap();
    let crl = openssl_in(
        None,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &out.join("crl.der").to_string_lossy(),
            "-CAfile",
            &chain.to_string_lossy(),
            "-verify",
            "-noout",
        ],
    );
    assert!(crl.contains("verify OK"), "{crl}");
}

#[test]
fn add_mobile_then_the_profile_challenge_in_an_openssl_request_activates_the_mobile_once() {
    let served = Served::start();
    let link = served.add_mobile();
    // The code alone creates no device; downloading the profile makes the phone Enrolling.
    assert!(served.mobile_states().is_empty());
    let profile = served.download_profile(&link);
    assert_eq!(served.mobile_states(), ["enrolling"]);
    assert_eq!(served.download_status(&link), "410", "the link serves its profile once");

    // The openssl-built client, with the URL and the challenge the profile carries, over HTTPS.
    let client = OpensslScepClient::new(&served.path("client"), "iPhone");
    let ra = served.path("ra.pem");
    write_pem(&ra, "CERTIFICATE", &std::fs::read(served.data.join("ca/scep-ra.crt")).unwrap());
    let csr = client.csr("iPhone", &profile.challenge);
    let (msg, nonce) =
        client.request(&ra, 19, "tx-profile", &csr, "-aes256", "self.pem", "key.pem", "sha256");
    let body = client.dir.join("req.msg");
    std::fs::write(&body, &msg).unwrap();
    let reply = client.dir.join("rep.der");
    let status = served.curl(&[
        "-f",
        "-o",
        &reply.to_string_lossy(),
        "-w",
        "%{http_code} %{content_type}",
        "-H",
        "Content-Type: application/x-pki-message",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("{}?operation=PKIOperation", profile.scep_url),
    ]);
    assert_eq!(status, "200 application/x-pki-message");
    let chain = served.path("chain.pem");
    let chain_text = std::fs::read_to_string(served.root()).unwrap()
        + &std::fs::read_to_string(served.path("issuing.pem")).unwrap();
    std::fs::write(&chain, chain_text).unwrap();
    let view = client.read_reply(&std::fs::read(&reply).unwrap(), &chain, "self.pem", "key.pem");
    assert_eq!(
        (view.status.as_str(), view.recipient_nonce.as_str()),
        ("0", hex(&nonce).as_str()),
        "{}",
        view.printed
    );
    let issued = served.path("issued.pem");
    std::fs::write(&issued, &view.certificates_pem).unwrap();
    assert_eq!(served.verify_and_ocsp(&issued), "good");
    assert_eq!(served.mobile_states(), ["active"]);
    assert_eq!(served.download_status(&link), "410");
}
