//! The SCEP endpoint judged by clients Lanyard did not write: a request made of openssl commands
//! (`openssl cms -encrypt -stream`, indefinite-length BER as Apple sends; see
//! `lanyard_testkit::scep`), and micromdm's `scepclient` (Debian `scep`), which always uses SHA-1
//! and single DES and must be refused with a SCEP failure. Issued certificates are checked with
//! `openssl verify` against Lanyard's root and `openssl ocsp` against its responder.
//!
//! Needs openssl, curl and scepclient (`scripts/test` installs them); a missing tool fails the test
//! with the install step.
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
