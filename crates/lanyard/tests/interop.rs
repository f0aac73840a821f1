//! Interoperability through a real pcscd + vsmartcard vpcd: the virtual card is judged by
//! OpenSC (opensc-tool, pkcs11-tool), yubico-piv-tool, yubikey-manager (ykman) and openssl.
//!
//! Needs the system packages that `scripts/test` installs (pcscd, vsmartcard-vpcd, opensc,
//! yubico-piv-tool, openssl, PyPI yubikey-manager) and a running pcscd. Missing pieces fail the
//! test with the install step; nothing is skipped. The tests share pcscd's two vpcd readers, so
//! they run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_piv::transport::PcscTransport;
use lanyard_piv::{Piv, PivError, StatusWord};
use lanyard_protocol::{AgentFrame, ServerFrame};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const READER0: &str = "Virtual PCD 00 00";
const READER1: &str = "Virtual PCD 00 01";
const DEFAULT_MGM: &str = "010203040506070801020304050607080102030405060708";
const INSTALL: &str = "run scripts/test, which installs pcscd vsmartcard-vpcd opensc yubico-piv-tool \
                       (apt-get) and yubikey-manager (pip) and starts pcscd";

static READERS: Mutex<()> = Mutex::new(());

fn lanyard() -> &'static str {
    env!("CARGO_BIN_EXE_lanyard")
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "`{tool}` is not installed: {INSTALL}");
}

fn pkcs11_module() -> PathBuf {
    for p in [
        "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
        "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
        "/usr/lib/opensc-pkcs11.so",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("OpenSC's PKCS#11 module is missing: {INSTALL} (package opensc-pkcs11)");
}

/// Runs a command; returns its output whatever the exit status.
fn run(program: &str, args: &[&str]) -> Output {
    require(program);
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not start {program}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a command that must succeed; returns stdout+stderr.
fn ok(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(o.status.success(), "{program} {args:?} failed ({}):\n{}", o.status, text(&o));
    text(&o)
}

/// Runs a command that must fail; returns stdout+stderr.
fn fails(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(!o.status.success(), "{program} {args:?} unexpectedly succeeded:\n{}", text(&o));
    text(&o)
}

/// Virtual cards plugged into pcscd for the duration of a test.
struct Cards {
    dir: tempfile::TempDir,
    child: Child,
    images: Vec<PathBuf>,
    serials: Vec<u32>,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Cards {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let vpcd notice the card left before the next test plugs one in.
        wait_until("reader empty", || !card_present(READER0));
    }
}

/// Whether pcscd sees a card in `reader`. Reads the reader state only: sending APDUs to a card
/// that is going away makes pcscd's reset of it fail, after which vpcd stops taking new cards.
fn card_present(reader: &str) -> bool {
    lanyard_piv::transport::reader_states()
        .map(|states| states.iter().any(|s| s.name == reader && s.card_present))
        .unwrap_or(false)
}

fn serial_in(reader: &str) -> Option<u32> {
    if !card_present(reader) {
        return None;
    }
    let t = PcscTransport::connect(reader).map_err(|e| eprintln!("connect {reader}: {e}")).ok()?;
    let mut p = Piv::new(t);
    p.select().map_err(|e| eprintln!("select {reader}: {e}")).ok()?;
    p.get_serial().map_err(|e| eprintln!("serial {reader}: {e}")).ok()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pcscd_running() {
    assert!(
        Path::new("/run/pcscd/pcscd.comm").exists(),
        "pcscd is not running (no /run/pcscd/pcscd.comm): {INSTALL}"
    );
    assert!(
        Path::new("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists(),
        "the vpcd reader driver is missing: {INSTALL} (package vsmartcard-vpcd)"
    );
}

impl Cards {
    /// Creates `n` factory-new cards and plugs them into readers 00 00, 00 01, ….
    fn plug(n: usize) -> Cards {
        let guard = READERS.lock().unwrap_or_else(|e| e.into_inner());
        pcscd_running();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let mut images = Vec::new();
        for i in 0..n {
            let img = dir.path().join(format!("card{i}.json"));
            let out = Command::new(lanyard())
                .args(["vcard", "new", "--image"])
                .arg(&img)
                .arg("--home")
                .arg(&home)
                .output()
                .unwrap();
            assert!(out.status.success(), "vcard new: {}", text(&out));
            images.push(img);
        }
        let serials: Vec<u32> =
            images.iter().map(|p| lanyard_vcard::CardImage::load(p).unwrap().serial).collect();
        let mut cmd = Command::new(lanyard());
        cmd.args(["vcard", "run", "--control"]).arg(dir.path().join("control.sock"));
        for img in &images {
            cmd.arg("--image").arg(img);
        }
        let log = std::fs::File::create(dir.path().join("vcard.log")).unwrap();
        let child = cmd.env("RUST_LOG", "trace").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let cards = Cards { dir, child, images, serials, _guard: guard };
        for (i, reader) in [READER0, READER1].iter().enumerate().take(n) {
            let want = cards.serials[i];
            let start = Instant::now();
            while serial_in(reader) != Some(want) {
                if start.elapsed() > Duration::from_secs(20) {
                    let log = std::fs::read_to_string(cards.dir.path().join("vcard.log")).unwrap_or_default();
                    panic!("card {want} did not appear in {reader}; vcard log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cards
    }

    fn image(&self, i: usize) -> lanyard_vcard::CardImage {
        lanyard_vcard::CardImage::load(&self.images[i]).unwrap()
    }

    fn control(&self, verb: &str) {
        let sock = self.dir.path().join("control.sock");
        let out = Command::new(lanyard()).args(["vcard", verb, "--control"]).arg(&sock).output().unwrap();
        assert!(out.status.success(), "vcard {verb}: {}", text(&out));
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn root_pem(&self) -> String {
        self.file("home/attestation-root.pem")
    }
}

fn ypt(args: &[&str]) -> String {
    let mut all = vec!["-r", READER0];
    all.extend_from_slice(args);
    ok("yubico-piv-tool", &all)
}

fn ypt_fails(args: &[&str]) -> String {
    let mut all = vec!["-r", READER0];
    all.extend_from_slice(args);
    fails("yubico-piv-tool", &all)
}

fn ykman(args: &[&str]) -> String {
    let mut all = vec!["--reader", READER0];
    all.extend_from_slice(args);
    ok("ykman", &all)
}

#[test]
fn opensc_recognises_a_piv_card() {
    let _cards = Cards::plug(1);
    let out = ok("opensc-tool", &["-r", READER0, "-n"]);
    assert!(out.contains("Personal Identity Verification Card"), "{out}");
    let atr = ok("opensc-tool", &["-r", READER0, "-a"]);
    assert!(atr.contains("3b:dd:13:00:81:31:fe:15:80:fb:a0:00:00:03:08:00:00:10:00:01:00"), "{atr}");
}

/// pkcs11-tool logs in, lists the 9A key and certificate, and signs; openssl verifies.
#[test]
fn pkcs11_signs_with_9a_rsa_and_p256() {
    let cards = Cards::plug(1);
    let module = pkcs11_module();
    let module = module.to_str().unwrap();
    let data = cards.file("data.txt");
    std::fs::write(&data, b"signed through OpenSC PKCS#11").unwrap();
    for (alg, mech, subject) in
        [("RSA2048", "SHA256-RSA-PKCS", "CN=pkcs11 rsa"), ("ECCP256", "ECDSA-SHA256", "CN=pkcs11 ec")]
    {
        let pubkey = cards.file(&format!("{alg}.pub"));
        ypt(&["-a", "generate", "-s", "9a", "-A", alg, "-o", &pubkey]);
        ykman(&[
            "piv",
            "certificates",
            "generate",
            "-s",
            subject,
            "-P",
            "123456",
            "-m",
            DEFAULT_MGM,
            "9a",
            &pubkey,
        ]);
        let listed = ok("pkcs11-tool", &["--module", module, "--login", "--pin", "123456", "-O"]);
        assert!(listed.contains("Private Key Object"), "{listed}");
        assert!(listed.contains(&format!("DN: {subject}")), "certificate not listed:\n{listed}");
        let sig = cards.file(&format!("{alg}.sig"));
        let mut args =
            vec!["--module", module, "--login", "--pin", "123456", "--sign", "--id", "01", "-m", mech];
        if alg == "ECCP256" {
            args.extend_from_slice(&["--signature-format", "openssl"]);
        }
        args.extend_from_slice(&["-i", &data, "-o", &sig]);
        ok("pkcs11-tool", &args);
        let out = ok("openssl", &["dgst", "-sha256", "-verify", &pubkey, "-signature", &sig, &data]);
        assert!(out.contains("Verified OK"), "{out}");
        // A wrong PIN does not log in.
        let bad = fails("pkcs11-tool", &["--module", module, "--login", "--pin", "000000", "-O"]);
        assert!(bad.contains("CKR_PIN_INCORRECT"), "{bad}");
        ypt(&["-a", "verify-pin", "-P", "123456"]);
    }
}

/// The yubico-piv-tool actions succeed and leave the card in the state they report.
#[test]
fn yubico_piv_tool_manages_the_card() {
    let cards = Cards::plug(1);
    let status = ypt(&["-a", "status"]);
    assert!(status.contains("Version:\t5.7."), "{status}");
    assert!(status.contains(&format!("Serial Number:\t{}", cards.serials[0])), "{status}");
    assert!(status.contains("PIN tries left:\t3"), "{status}");

    ypt(&["-a", "verify-pin", "-P", "123456"]);
    ypt(&["-a", "change-pin", "-P", "123456", "-N", "24681357"]);
    assert!(!cards.image(0).pin.is_default);
    ypt(&["-a", "verify-pin", "-P", "24681357"]);
    ypt_fails(&["-a", "verify-pin", "-P", "123456"]);
    ypt(&["-a", "change-puk", "-P", "12345678", "-N", "87654321"]);
    assert!(!cards.image(0).puk.is_default);

    // Block the PIN, then the PUK unblocks it with a new PIN.
    for _ in 0..3 {
        ypt_fails(&["-a", "verify-pin", "-P", "999999"]);
    }
    let blocked = ypt_fails(&["-a", "verify-pin", "-P", "24681357"]);
    assert!(blocked.to_lowercase().contains("blocked"), "{blocked}");
    ypt(&["-a", "unblock-pin", "-P", "87654321", "-N", "112233"]);
    ypt(&["-a", "verify-pin", "-P", "112233"]);
    assert_eq!(cards.image(0).pin.left, 3);

    // A new management key; the factory one is refused from then on.
    let new_key = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978";
    ypt(&["-a", "set-mgm-key", "-n", new_key]);
    assert!(!cards.image(0).mgm_is_default);
    let refused = ypt_fails(&["-a", "generate", "-s", "9c", "-A", "ECCP256"]);
    assert!(refused.contains("authentication"), "{refused}");

    // Keys generated on the card, with the new management key.
    let pub_rsa = cards.file("9a.pub");
    let pub_ec = cards.file("9c.pub");
    ypt(&[&format!("--key={new_key}"), "-a", "generate", "-s", "9a", "-A", "RSA2048", "-o", &pub_rsa]);
    ypt(&[&format!("--key={new_key}"), "-a", "generate", "-s", "9c", "-A", "ECCP256", "-o", &pub_ec]);
    let meta = ykman(&["piv", "info"]);
    assert!(meta.contains("RSA2048") && meta.contains("ECCP256"), "{meta}");

    // A certificate made by openssl, imported and read back byte for byte.
    let key = cards.file("ca.key");
    let cert = cards.file("import.pem");
    ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            "/CN=imported",
            "-days",
            "30",
        ],
    );
    ypt(&[&format!("--key={new_key}"), "-a", "import-certificate", "-s", "9c", "-i", &cert]);
    let back = ypt(&["-a", "read-certificate", "-s", "9c"]);
    let original = std::fs::read_to_string(&cert).unwrap();
    assert!(back.contains(original.trim()), "read back:\n{back}\noriginal:\n{original}");

    // CSR signed on the card (RSA 9A, PIN once) verifies with openssl.
    let csr = cards.file("9a.csr");
    ok(
        "ykman",
        &[
            "--reader",
            READER0,
            "piv",
            "certificates",
            "request",
            "-s",
            "CN=csr",
            "-P",
            "112233",
            "9a",
            &pub_rsa,
            &csr,
        ],
    );
    let v = ok("openssl", &["req", "-in", &csr, "-verify", "-noout"]);
    assert!(v.contains("verify OK"), "{v}");

    // Attestation chains to this installation's attestation root.
    let att = cards.file("att.pem");
    let f9 = cards.file("f9.pem");
    std::fs::write(&att, ypt(&["-a", "attest", "-s", "9a"])).unwrap();
    std::fs::write(&f9, ypt(&["-a", "read-certificate", "-s", "f9"])).unwrap();
    let verified = ok("openssl", &["verify", "-CAfile", &cards.root_pem(), "-untrusted", &f9, &att]);
    assert!(verified.contains(": OK"), "{verified}");
    let att_pub = ok("openssl", &["x509", "-in", &att, "-pubkey", "-noout"]);
    assert_eq!(
        att_pub.trim(),
        std::fs::read_to_string(&pub_rsa).unwrap().trim(),
        "attested key is the 9A key"
    );

    // Reset needs PIN and PUK blocked; then the card is factory-new again.
    ypt_fails(&["-a", "reset"]);
    for _ in 0..3 {
        ypt_fails(&["-a", "verify-pin", "-P", "999999"]);
        ypt_fails(&["-a", "unblock-pin", "-P", "00000000", "-N", "999999"]);
    }
    ypt(&["-a", "reset"]);
    let img = cards.image(0);
    assert!(img.pin.is_default && img.puk.is_default && img.mgm_is_default && img.keys.is_empty());
    ypt(&["-a", "verify-pin", "-P", "123456"]);
    ypt(&["-a", "generate", "-s", "9e", "-A", "ECCP256"]);
}

#[test]
fn ykman_reports_version_serial_tries_and_slots() {
    let cards = Cards::plug(1);
    ypt(&["-a", "generate", "-s", "9e", "-A", "ECCP384"]);
    let info = ykman(&["piv", "info"]);
    assert!(info.contains("PIV version:              5.7.2"), "{info}");
    assert!(info.contains("PIN tries remaining:      3/3"), "{info}");
    assert!(info.contains("Slot 9E"), "{info}");
    assert!(info.contains("ECCP384"), "{info}");
    let device = ykman(&["info"]);
    assert!(device.contains(&format!("Serial number: {}", cards.serials[0])), "{device}");
    ok("ykman", &["--reader", READER0, "piv", "access", "change-pin", "-P", "123456", "-n", "135790"]);
    let info = ykman(&["piv", "info"]);
    assert!(!info.contains("Using default PIN"), "{info}");
}

/// Wrong PINs count down (63Cx) and block (6983); the PUK unblocks; a wrong management key is
/// refused. Checked at the APDU level through PC/SC with our own host library.
#[test]
fn wrong_pin_counts_down_blocks_and_puk_unblocks() {
    let cards = Cards::plug(1);
    let mut piv = Piv::new(PcscTransport::connect(READER0).unwrap());
    piv.select().unwrap();
    for left in [2u8, 1, 0] {
        match piv.verify_pin(b"000000") {
            Err(PivError::WrongPin { retries, .. }) => assert_eq!(retries, left),
            other => panic!("expected 63C{left}, got {other:?}"),
        }
    }
    assert!(matches!(piv.verify_pin(b"123456"), Err(PivError::Blocked(_))));
    assert_eq!(piv.pin_status().unwrap(), Some(0));
    assert!(matches!(piv.unblock_pin(b"00000000", b"654321"), Err(PivError::WrongPin { retries: 2, .. })));
    piv.unblock_pin(b"12345678", b"654321").unwrap();
    piv.verify_pin(b"654321").unwrap();
    assert_eq!(cards.image(0).pin.left, 3);
    let wrong = lanyard_piv::ManagementKey::new(lanyard_piv::MgmAlgorithm::TripleDes, &[7u8; 24]).unwrap();
    let err = piv.authenticate_mutual(&wrong).unwrap_err();
    assert_eq!(err.status(), Some(StatusWord::SecurityStatusNotSatisfied), "{err}");
    let out = fails(
        "yubico-piv-tool",
        &[
            "-r",
            READER0,
            "--key=070707070707070707070707070707070707070707070707",
            "-a",
            "generate",
            "-s",
            "9a",
        ],
    );
    assert!(out.contains("authentication"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// The agent through pcscd
// ---------------------------------------------------------------------------------------------

/// One WebSocket connection on 127.0.0.1 playing the server's side of the agent protocol.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn agent_server<R: Send + 'static>(
    script: impl FnOnce(&mut tungstenite::WebSocket<std::net::TcpStream>) -> R + Send + 'static,
) -> (String, std::thread::JoinHandle<R>) {
    use lanyard_protocol::{PROTOCOL_VERSION, VERSION_HEADER};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut ws = tungstenite::accept_hdr(
            tcp,
            |req: &tungstenite::handshake::server::Request,
             mut resp: tungstenite::handshake::server::Response| {
                assert_eq!(req.headers()[VERSION_HEADER], PROTOCOL_VERSION.to_string().as_str());
                resp.headers_mut().insert(VERSION_HEADER, PROTOCOL_VERSION.into());
                Ok(resp)
            },
        )
        .unwrap();
        match ws_recv(&mut ws) {
            AgentFrame::Hello { reader, protocol, .. } => {
                assert_eq!((reader.as_str(), protocol), (READER0, PROTOCOL_VERSION));
            }
            other => panic!("expected hello, got {other:?}"),
        }
        let r = script(&mut ws);
        while ws.read().is_ok() {}
        r
    });
    (url, handle)
}

fn ws_recv(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> AgentFrame {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return AgentFrame::parse(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn ws_send(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, frame: ServerFrame) {
    ws.send(tungstenite::Message::text(frame.to_text())).unwrap();
}

fn apdu_hex(c: &lanyard_piv::apdu::Command) -> String {
    hex::encode_upper(c.to_bytes().unwrap())
}

fn transmit(seq: u64, done: u32, apdus: &[String]) -> ServerFrame {
    let step = "detect".into();
    ServerFrame::Transmit { seq, step, done, total: 2, apdus: apdus.to_vec(), answer_within_secs: 60 }
}

/// `lanyard agent readers` judges a factory card compatible; `lanyard agent issue` relays a
/// session through pcscd and sets the new PIN on the card itself.
#[test]
fn agent_lists_the_card_and_relays_a_session() {
    use lanyard_piv::commands;
    let cards = Cards::plug(1);
    let out = Command::new(lanyard()).args(["agent", "readers", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = list.as_array().unwrap().iter().find(|r| r["reader"] == READER0).expect("reader 0 listed");
    assert_eq!(ours["card"]["compatibility"]["verdict"], "compatible", "{ours}");
    assert_eq!(ours["card"]["serial"], cards.serials[0]);
    assert_eq!(ours["card"]["yubikey_version"], "5.7.2");

    let (url, server) = agent_server(|ws| {
        let batch = [apdu_hex(&commands::select()), apdu_hex(&commands::get_serial())];
        ws_send(ws, transmit(1, 0, &batch));
        let r = ws_recv(ws);
        ws_send(
            ws,
            ServerFrame::ChangePin {
                seq: 2,
                old_pin: lanyard_protocol::Secret::new("123456"),
                rules: lanyard_core::model::PinRules::default(),
                answer_within_secs: 60,
                new_pin: None,
            },
        );
        let pin = ws_recv(ws);
        let device = "0b6f3a2e-5d4c-4e3b-9a1f-2c7d8e9f0a1b".parse().unwrap();
        ws_send(ws, ServerFrame::Done { device, state: lanyard_core::lifecycle::DeviceState::Active });
        (r, pin)
    });
    let out = Command::new(lanyard())
        .args(["agent", "issue", "--server", &url, "--ticket", "t1", "--reader", READER0])
        .env("LANYARD_NEW_PIN", "97531864")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (responses, pin) = server.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[0/2] detect") && stdout.contains("PIN: changed"), "{stdout}");
    let AgentFrame::Responses { seq: 1, responses } = responses else { panic!("{responses:?}") };
    let serial = hex::decode(&responses[1]).unwrap();
    assert_eq!(serial[..4], cards.serials[0].to_be_bytes());
    assert_eq!(pin, AgentFrame::PinChanged { seq: 2, sw: "9000".into() });
    ypt(&["-a", "verify-pin", "-P", "97531864"]);
    ypt_fails(&["-a", "verify-pin", "-P", "123456"]);
}

/// `lanyard agent issue` relays `ctap` frames through pcscd to the virtual card's FIDO
/// application on the session's own connection (SELECT FIDO, NFCCTAP_MSG through vpcd), and the
/// PIV batch after them, which does not SELECT PIV itself, still reaches PIV.
#[test]
fn agent_relays_ctap_through_pcscd() {
    use lanyard_ctap::cbor::{MapRef, decode};
    use lanyard_piv::commands;
    let cards = Cards::plug(1);
    let (url, server) = agent_server(|ws| {
        // getInfo, ClientPIN getRetries (protocol 2), then a 600-byte request the card refuses
        // (chained over three APDUs), then one that is never sent.
        let long = format!("06{}", "A0".repeat(599));
        let requests = vec!["04".to_owned(), "06A201020201".to_owned(), long, "04".to_owned()];
        ws_send(
            ws,
            ServerFrame::Ctap {
                seq: 1,
                step: "fido".into(),
                done: 0,
                total: 2,
                requests,
                answer_within_secs: 60,
            },
        );
        let ctap = ws_recv(ws);
        ws_send(ws, transmit(2, 1, &[apdu_hex(&commands::get_serial())]));
        let piv = ws_recv(ws);
        let device = "0b6f3a2e-5d4c-4e3b-9a1f-2c7d8e9f0a1b".parse().unwrap();
        ws_send(ws, ServerFrame::Done { device, state: lanyard_core::lifecycle::DeviceState::Pending });
        (ctap, piv)
    });
    let out = Command::new(lanyard())
        .args(["agent", "issue", "--server", &url, "--ticket", "t1", "--reader", READER0])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (ctap, piv) = server.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("FIDO authenticator: PC/SC reader {READER0:?}")), "{stdout}");
    assert!(stdout.contains("authenticatorGetInfo: CTAP2_OK"), "{stdout}");
    let AgentFrame::CtapResponses { seq: 1, responses } = ctap else { panic!("{ctap:?}") };
    assert_eq!(responses.len(), 3, "stopped after the refused request: {responses:?}");
    let info = hex::decode(&responses[0]).unwrap();
    assert_eq!(info[0], 0x00);
    let info = decode(&info[1..]).unwrap();
    let info = MapRef::new(&info).unwrap();
    let versions: Vec<&str> =
        info.get(1).unwrap().as_array().unwrap().iter().filter_map(|v| v.as_text()).collect();
    assert!(versions.contains(&"FIDO_2_1"), "{versions:?}");
    let retries = hex::decode(&responses[1]).unwrap();
    assert_eq!(retries[0], 0x00);
    assert_eq!(MapRef::new(&decode(&retries[1..]).unwrap()).unwrap().uint(3).unwrap(), Some(8));
    let refused = hex::decode(&responses[2]).unwrap();
    assert_ne!(refused[0], 0x00, "a ClientPIN request of garbage is refused: {refused:02X?}");
    assert!(
        stdout
            .contains(&format!("authenticatorClientPIN: {}", lanyard_ctap::consts::status::name(refused[0])))
    );
    let AgentFrame::Responses { seq: 2, responses } = piv else { panic!("{piv:?}") };
    let serial = hex::decode(&responses[0]).unwrap();
    assert_eq!(serial[..4], cards.serials[0].to_be_bytes());
    assert_eq!(serial[4..], [0x90, 0x00]);
}

/// A card pulled between two batches: the agent sees it in the reader state, sends no APDU to
/// the leaving card, tells the server, and ends the session.
#[test]
fn agent_stops_when_the_card_is_pulled() {
    use lanyard_piv::commands;
    let cards = Cards::plug(1);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let (url, server) = agent_server(move |ws| {
        let batch = [apdu_hex(&commands::select())];
        ws_send(ws, transmit(1, 0, &batch));
        let first = ws_recv(ws);
        assert!(matches!(first, AgentFrame::Responses { seq: 1, .. }), "{first:?}");
        tx.send(()).unwrap();
        back_rx.recv().unwrap();
        ws_send(ws, transmit(2, 1, &batch));
        ws_recv(ws)
    });
    let puller = std::thread::scope(|s| {
        let cards = &cards;
        let h = s.spawn(move || {
            rx.recv().unwrap();
            cards.control("remove");
            wait_until("card 0 removed", || !card_present(READER0));
            back_tx.send(()).unwrap();
        });
        let opts = lanyard_agent::relay::SessionOptions::new(url, "t2", READER0);
        let r =
            lanyard_agent::relay::run_session(&opts, &mut lanyard_agent::relay::SkipPinChange, &mut |_| {});
        h.join().unwrap();
        r
    });
    let answer = server.join().unwrap();
    assert_eq!(answer, AgentFrame::Error { seq: Some(2), message: "card removed".into() });
    assert!(matches!(puller, Err(lanyard_agent::AgentError::CardRemoved)), "{puller:?}");
    // vpcd still takes cards afterwards.
    cards.control("insert");
    wait_until("card 0 back", || serial_in(READER0) == Some(cards.serials[0]));
}

/// `lanyard serve` on a fresh data directory for one test, with HTTPS from its own CA, the PKI
/// endpoints also on plain HTTP, and the virtual cards' attestation root trusted.
struct Server {
    child: Child,
    base: String,
    pki: String,
    data: PathBuf,
    cli_config: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    fn start(cards: &Cards) -> (Server, String) {
        use std::io::{BufRead, BufReader};
        let data = PathBuf::from(cards.file("server"));
        let (port, pki_port) = (free_port(), free_port());
        let mut child = Command::new(lanyard())
            .arg("serve")
            .env("LANYARD_DATA_DIR", &data)
            .env("LANYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("LANYARD_PKI_LISTEN", format!("127.0.0.1:{pki_port}"))
            .env("LANYARD_PKI_URL", format!("http://127.0.0.1:{pki_port}"))
            .env("LANYARD_ATTESTATION_ROOTS", cards.root_pem())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut password = None;
        loop {
            let line = lines.next().expect("lanyard serve exited before listening").unwrap();
            if let Some(rest) = line.split("Bootstrap administrator: admin / ").nth(1) {
                password = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("PKI endpoints also on") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let server = Server {
            child,
            base: format!("https://127.0.0.1:{port}"),
            pki: format!("http://127.0.0.1:{pki_port}"),
            cli_config: data.join("cli.json"),
            data,
        };
        (server, password.expect("a bootstrap password"))
    }

    fn root(&self) -> String {
        self.data.join("ca/root.crt").to_string_lossy().into_owned()
    }

    /// The admin CLI as the logged-in administrator; must succeed; JSON output.
    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(lanyard())
            .args(args)
            .args(["--output", "json"])
            .env("LANYARD_CLI_CONFIG", &self.cli_config)
            .output()
            .unwrap();
        assert!(out.status.success(), "lanyard {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
    }

    /// `lanyard agent issue` at `reader` with `ticket`; `pin`: the new PIN, or skip the change.
    fn agent(&self, reader: &str, ticket: &str, pin: Option<&str>) -> Output {
        let mut cmd = Command::new(lanyard());
        // The server's own root file, DER, as a newcomer would pass it.
        cmd.args(["agent", "issue", "--server", &self.base, "--ca-cert"])
            .arg(self.root())
            .args(["--ticket", ticket, "--reader", reader])
            .stdin(Stdio::null())
            .env_remove("LANYARD_NEW_PIN");
        match pin {
            Some(p) => cmd.env("LANYARD_NEW_PIN", p),
            None => cmd.arg("--skip-pin-change"),
        };
        cmd.output().unwrap()
    }

    /// The root as PEM (the agent and openssl take PEM).
    fn root_pem(&self) -> String {
        let pem = self.data.join("root.pem");
        if !pem.exists() {
            ok("openssl", &["x509", "-inform", "DER", "-in", &self.root(), "-out", pem.to_str().unwrap()]);
        }
        pem.to_string_lossy().into_owned()
    }

    /// Issuing CA + root, PEM, for openssl verify and ocsp.
    fn chain(&self) -> String {
        let chain = self.data.join("chain.pem");
        let issuing = self.data.join("ca/issuing.crt");
        let issuing = ok("openssl", &["x509", "-inform", "DER", "-in", issuing.to_str().unwrap()]);
        let root = std::fs::read_to_string(self.root_pem()).unwrap();
        std::fs::write(&chain, format!("{issuing}{root}")).unwrap();
        chain.to_string_lossy().into_owned()
    }

    fn ocsp(&self, cert: &str) -> String {
        let issuing = self.data.join("issuing.pem");
        ok(
            "openssl",
            &[
                "x509",
                "-inform",
                "DER",
                "-in",
                self.data.join("ca/issuing.crt").to_str().unwrap(),
                "-out",
                issuing.to_str().unwrap(),
            ],
        );
        ok(
            "openssl",
            &[
                "ocsp",
                "-issuer",
                issuing.to_str().unwrap(),
                "-cert",
                cert,
                "-url",
                &format!("{}/pki/ocsp", self.pki),
                "-CAfile",
                &self.chain(),
            ],
        )
    }
}

fn verdicts() -> Vec<(String, String)> {
    let out = Command::new(lanyard()).args(["agent", "readers", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reader"] == READER0 || r["reader"] == READER1)
        .map(|r| {
            let v = r["card"]["compatibility"]["verdict"].as_str().unwrap_or("no card").to_owned();
            (r["reader"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// The whole of flow A through real pcscd with two virtual cards, the server and the agent as
/// separate processes, judged by OpenSC, openssl and yubico-piv-tool.
#[test]
fn two_cards_are_issued_end_to_end_and_judged_by_independent_tools() {
    let cards = Cards::plug(2);
    let (server, password) = Server::start(&cards);
    let login = Command::new(lanyard())
        .args(["login", "--server", &server.base, "--ca-cert", &server.root(), "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &server.cli_config)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(login.status.success(), "{}", text(&login));
    assert_eq!(
        verdicts(),
        [(READER0.to_owned(), "compatible".to_owned()), (READER1.to_owned(), "compatible".to_owned())]
    );

    // Card 1: issued through the API and the agent; the holder sets the PIN.
    let started = server.cli(&["device", "issue", "--kind", "usb_key", "--model", "Lanyard virtual card"]);
    let card1 = started["device"]["id"].as_str().unwrap().to_owned();
    let out = server.agent(READER0, started["ticket"].as_str().unwrap(), Some("97531864"));
    assert!(out.status.success(), "agent issue: {}", text(&out));
    assert!(text(&out).contains("PIN: changed"), "{}", text(&out));
    let list = server.cli(&["device", "list"]);
    let d1 = list.as_array().unwrap().iter().find(|d| d["id"] == card1.as_str()).unwrap();
    assert_eq!(d1["state"], "active");
    assert_eq!(d1["serial"], cards.serials[0].to_string());

    // Card 1 is no longer offered; card 2 still is.
    assert_eq!(
        verdicts(),
        [(READER0.to_owned(), "already_issued".to_owned()), (READER1.to_owned(), "compatible".to_owned())]
    );

    // OpenSC logs in with the new PIN and signs with 9A; the signature verifies with the key in
    // the certificate Lanyard issued.
    let module = pkcs11_module();
    let module = module.to_str().unwrap();
    let data = cards.file("data.txt");
    std::fs::write(&data, b"signed by a Lanyard-issued card").unwrap();
    let sig = cards.file("sig.der");
    ok(
        "pkcs11-tool",
        &[
            "--module",
            module,
            "--slot-index",
            "0",
            "--login",
            "--pin",
            "97531864",
            "--sign",
            "--id",
            "01",
            "-m",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "-i",
            &data,
            "-o",
            &sig,
        ],
    );
    let cert_9a = cards.file("9a.pem");
    let cert_9e = cards.file("9e.pem");
    ypt(&["-a", "read-certificate", "-s", "9a", "-o", &cert_9a]);
    ypt(&["-a", "read-certificate", "-s", "9e", "-o", &cert_9e]);
    let pubkey = cards.file("9a.pub");
    ok("openssl", &["x509", "-in", &cert_9a, "-pubkey", "-noout", "-out", &pubkey]);
    let out = ok("openssl", &["dgst", "-sha256", "-verify", &pubkey, "-signature", &sig, &data]);
    assert!(out.contains("Verified OK"), "{out}");

    // Both certificates chain to Lanyard's CA, and OCSP says good.
    let chain = server.chain();
    for cert in [&cert_9a, &cert_9e] {
        let out = ok("openssl", &["verify", "-CAfile", &chain, cert]);
        assert!(out.contains(": OK"), "{out}");
        assert!(server.ocsp(cert).contains(": good"), "{cert}");
    }

    // The factory management key no longer opens the card.
    let refused = fails("yubico-piv-tool", &["-r", READER0, "-a", "delete-certificate", "-s", "9c"]);
    assert!(refused.to_lowercase().contains("auth"), "{refused}");

    // Card 2: the holder skips Change PIN; it stays Pending until an operator activates it and
    // receives the initial PIN, which works on the card.
    let started = server.cli(&["device", "issue", "--kind", "usb_key", "--model", "Lanyard virtual card"]);
    let card2 = started["device"]["id"].as_str().unwrap().to_owned();
    let out = server.agent(READER1, started["ticket"].as_str().unwrap(), None);
    assert!(out.status.success(), "agent issue: {}", text(&out));
    let list = server.cli(&["device", "list"]);
    let d2 = list.as_array().unwrap().iter().find(|d| d["id"] == card2.as_str()).unwrap();
    assert_eq!(d2["state"], "pending");
    let activated = server.cli(&["device", "activate", "--device", &card2]);
    assert_eq!(activated["device"]["state"], "active");
    let initial = activated["initial_pin"].as_str().unwrap().to_owned();
    ok("yubico-piv-tool", &["-r", READER1, "-a", "verify-pin", "-P", &initial]);

    // Revoking card 1 shows in OCSP.
    let revoked = server.cli(&["device", "revoke", "--device", &card1, "--reason", "key_compromise"]);
    assert_eq!(revoked["state"], "revoked");
    let out = server.ocsp(&cert_9a);
    assert!(out.contains(": revoked") && out.contains("keyCompromise"), "{out}");

    // Card 2's PIN is blocked with wrong tries; an operator starts the unlock, the holder types
    // a new PIN at the agent, and it works.
    for _ in 0..3 {
        fails("yubico-piv-tool", &["-r", READER1, "-a", "verify-pin", "-P", "00000000"]);
    }
    let blocked = fails("yubico-piv-tool", &["-r", READER1, "-a", "verify-pin", "-P", &initial]);
    assert!(blocked.to_lowercase().contains("blocked"), "{blocked}");
    let unlock = server.cli(&["device", "unlock", "--device", &card2]);
    let out = server.agent(READER1, unlock["ticket"].as_str().unwrap(), Some("24681357"));
    assert!(out.status.success(), "agent unlock: {}", text(&out));
    ok("yubico-piv-tool", &["-r", READER1, "-a", "verify-pin", "-P", "24681357"]);

    // And the audit log proves itself.
    let out = Command::new(lanyard())
        .args(["audit", "verify"])
        .env("LANYARD_DATA_DIR", &server.data)
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out).contains("audit log verified"), "{}", text(&out));
}

/// The venv of `scripts/test`, with python-fido2 2.x and pyscard: the FIDO judge.
fn fido_python() -> PathBuf {
    let bin = match std::env::var_os("LANYARD_TEST_VENV") {
        Some(v) => PathBuf::from(v).join("bin"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin"),
    };
    let python = bin.join("python");
    let probe = Command::new(&python)
        .args(["-c", "import importlib.metadata as m, fido2, smartcard; assert int(m.version('fido2').split('.')[0]) >= 2"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python-fido2 2.x with pyscard is missing from {}: run scripts/test, which installs them into its venv",
        bin.display()
    );
    python
}

/// `tests/fido/issuance_judge.py SCENARIO READER ARGS…`; must print `OK <scenario>`.
fn fido_judge(scenario: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fido/issuance_judge.py");
    let out = Command::new(fido_python()).arg(script).arg(scenario).arg(READER0).args(args).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("OK {scenario}")),
        "issuance_judge {scenario}: {}",
        text(&out)
    );
}

/// The FIDO PIN issuance sealed for `device`, read as the server does (its KEK, its database).
fn sealed_fido_pin(server: &Server, device: &str) -> Option<String> {
    use lanyard_core::repo::Repo;
    use lanyard_core::repo::prelude::*;
    use secrecy::ExposeSecret;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", server.data.join("lanyard.db").display());
        let db = lanyard_store::Db::connect(&url).await.unwrap();
        let id: lanyard_core::ids::DeviceId = device.parse().unwrap();
        let sealed = db.read().await.unwrap().get_card_secrets(id).await.unwrap().unwrap();
        let kek = lanyard_core::secrets::Kek::load(&server.data.join("kek")).unwrap();
        let secrets = lanyard_core::secrets::CardSecrets::open(&sealed, &kek, id).unwrap();
        secrets.fido_pin().map(|p| p.expose_secret().to_owned())
    })
}

/// Sets the FIDO PIN mode and minimum of every group's policy through the API, with the admin
/// CLI's token.
fn set_fido_policy(server: &Server, mode: &str, min: u8) {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&server.cli_config).unwrap()).unwrap();
    let auth = format!("authorization: Bearer {}", config["token"].as_str().unwrap());
    let root = server.root_pem();
    let groups = ok(
        "curl",
        &[
            "-sS",
            "--fail-with-body",
            "--cacert",
            &root,
            "-H",
            &auth,
            &format!("{}/api/v1/groups", server.base),
        ],
    );
    let groups: serde_json::Value = serde_json::from_str(&groups).unwrap();
    for g in groups.as_array().unwrap() {
        let mut policy = g["policy"].clone();
        policy["fido_pin_mode"] = mode.into();
        policy["fido_min_pin_length"] = min.into();
        let url = format!("{}/api/v1/groups/{}/policy", server.base, g["id"].as_str().unwrap());
        ok(
            "curl",
            &[
                "-sS",
                "--fail-with-body",
                "--cacert",
                &root,
                "-H",
                &auth,
                "-H",
                "content-type: application/json",
                "-X",
                "PUT",
                "--data",
                &policy.to_string(),
                &url,
            ],
        );
    }
}

/// Flow B through real pcscd: `lanyard serve`, `lanyard agent issue` and the virtual card as
/// separate processes. The group's policy is `temporary` with a minimum of 9: issuance writes
/// the PIV half, then sets a random FIDO PIN with forcePINChange over the agent's CTAP relay.
/// python-fido2 judges the key: no PIN token for the sealed PIN until it is changed, a shorter
/// new PIN refused, a token after the change, and a wrong PIN refused. (`shared` and
/// `independent` take PINs typed in the portal, which `lanyard agent issue` does not carry; they
/// are tested in process in lanyard-server's tests/issuance.rs.)
#[test]
fn a_temporary_fido_pin_is_set_through_pcscd_and_judged_by_python_fido2() {
    let cards = Cards::plug(1);
    let (server, password) = Server::start(&cards);
    let login = Command::new(lanyard())
        .args(["login", "--server", &server.base, "--ca-cert", &server.root(), "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &server.cli_config)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(login.status.success(), "{}", text(&login));
    set_fido_policy(&server, "temporary", 9);
    let started = server.cli(&["device", "issue", "--kind", "usb_key", "--model", "Lanyard virtual card"]);
    let device = started["device"]["id"].as_str().unwrap().to_owned();
    let out = server.agent(READER0, started["ticket"].as_str().unwrap(), Some("97531864"));
    assert!(out.status.success(), "agent issue: {}", text(&out));
    let list = server.cli(&["device", "list"]);
    let d = list.as_array().unwrap().iter().find(|d| d["id"] == device.as_str()).unwrap();
    assert_eq!(d["state"], "active", "agent said: {}", text(&out));
    let fido_pin = sealed_fido_pin(&server, &device).expect("the random FIDO PIN is sealed");
    assert_eq!(fido_pin.len(), 9, "as long as the policy's minimum");
    fido_judge("forced", &[&fido_pin, "9", "my new FIDO PIN"]);
    fido_judge("pin", &["my new FIDO PIN", "9", &fido_pin]);
}

/// `curl` against `server` with the admin CLI's token; must succeed; JSON answer (`Null` when
/// empty).
fn api(server: &Server, method: &str, path: &str, body: Option<&serde_json::Value>) -> serde_json::Value {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&server.cli_config).unwrap()).unwrap();
    let auth = format!("authorization: Bearer {}", config["token"].as_str().unwrap());
    let root = server.root_pem();
    let url = format!("{}{path}", server.base);
    let data = body.map(|b| b.to_string());
    let mut args = vec![
        "-sS",
        "--fail-with-body",
        "--cacert",
        &root,
        "-H",
        &auth,
        "-X",
        method,
        "-H",
        "content-type: application/json",
    ];
    if let Some(d) = &data {
        args.extend_from_slice(&["--data", d]);
    }
    args.push(&url);
    let out = ok("curl", &args);
    if out.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&out).unwrap() }
}

/// Asks `f` until it answers; a minute is a guard against hanging, not a measure.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A paired `lanyard agent run`, killed (by its own id) when dropped.
struct PairedAgent(Child);

impl Drop for PairedAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issues the card in `reader` the way the portal does: a session on the paired agent with the
/// PINs typed in the portal (`new_pin_from: portal`): the FIDO PIN when the job asks for one,
/// then the device PIN. Returns the device id.
fn issue_from_portal(
    server: &Server,
    agent: &str,
    reader: &str,
    fido_pin: Option<&str>,
    device_pin: &str,
) -> String {
    let started = api(
        server,
        "POST",
        "/api/v1/issuance",
        Some(&serde_json::json!({"kind": "usb_key", "model": "Lanyard virtual card"})),
    );
    let device = started["device"]["id"].as_str().unwrap().to_owned();
    let job = started["job"]["id"].as_str().unwrap().to_owned();
    let session =
        serde_json::json!({"job": job, "reader": reader, "purpose": "run", "new_pin_from": "portal"});
    api(server, "POST", &format!("/api/v1/agents/{agent}/sessions"), Some(&session));
    let mut fido_pin = fido_pin;
    poll("the job to ask for its PINs", || {
        let view = api(server, "GET", &format!("/api/v1/jobs/{job}"), None);
        let wanted = view.get("pin_wanted")?;
        let fido = wanted.get("fido").is_some();
        let pin = if fido { fido_pin.take().expect("the FIDO PIN is asked once") } else { device_pin };
        api(server, "POST", &format!("/api/v1/jobs/{job}/pin"), Some(&serde_json::json!({"new_pin": pin})));
        (!fido).then_some(())
    });
    poll("the device to become active", || {
        let d = api(server, "GET", &format!("/api/v1/devices/{device}"), None);
        (d["state"] == "active").then_some(())
    });
    device
}

/// Flow B as the portal runs it, through real pcscd: `lanyard serve`, a paired `lanyard agent
/// run` and two virtual cards as separate processes, the PINs handed in as the portal does. Card
/// 1 under `independent` (minimum 8): the key ends with the holder's FIDO PIN. Card 2 under
/// `shared`: the key ends with the device PIN as its FIDO PIN. python-fido2 judges both keys
/// (a token for the expected PIN, none for another, the minimum length); the server's database
/// holds neither PIN the holder typed.
#[test]
fn independent_and_shared_fido_pins_are_set_from_the_portal_through_pcscd() {
    let cards = Cards::plug(2);
    let (server, password) = Server::start(&cards);
    let login = Command::new(lanyard())
        .args(["login", "--server", &server.base, "--ca-cert", &server.root(), "--username", "admin"])
        .env("LANYARD_CLI_CONFIG", &server.cli_config)
        .env("LANYARD_PASSWORD", &password)
        .output()
        .unwrap();
    assert!(login.status.success(), "{}", text(&login));
    let code = api(&server, "POST", "/api/v1/agents/pairing", None)["code"].as_str().unwrap().to_owned();
    let agent_config = PathBuf::from(cards.file("agent.json"));
    let paired = Command::new(lanyard())
        .args([
            "agent",
            "pair",
            &code,
            "--server",
            &server.base,
            "--ca-cert",
            &server.root_pem(),
            "--host-name",
            "ws",
        ])
        .env("LANYARD_AGENT_CONFIG", &agent_config)
        .output()
        .unwrap();
    assert!(paired.status.success(), "{}", text(&paired));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&agent_config).unwrap()).unwrap();
    let agent_id = saved["agent_id"].as_str().unwrap().to_owned();
    let agent = PairedAgent(
        Command::new(lanyard())
            .args(["agent", "run"])
            .env("LANYARD_AGENT_CONFIG", &agent_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll("the agent to be online", || {
        let listed = api(&server, "GET", "/api/v1/agents", None);
        listed.as_array()?.iter().any(|a| a["id"] == agent_id.as_str() && a["online"] == true).then_some(())
    });

    const FIDO_PIN: &str = "fido pin of my own";
    const PIN_1: &str = "97531864";
    const PIN_2: &str = "86420975";
    set_fido_policy(&server, "independent", 8);
    let card1 = issue_from_portal(&server, &agent_id, READER0, Some(FIDO_PIN), PIN_1);
    set_fido_policy(&server, "shared", 6);
    let card2 = issue_from_portal(&server, &agent_id, READER1, None, PIN_2);
    assert_eq!(sealed_fido_pin(&server, &card1), None, "the holder's own FIDO PIN is not sealed");
    let temporary = sealed_fido_pin(&server, &card2).expect("shared mode seals its temporary PIN");
    drop(agent);

    fido_judge("pin", &[FIDO_PIN, "8", PIN_1]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fido/issuance_judge.py");
    let out = Command::new(fido_python())
        .arg(&script)
        .args(["pin", READER1, PIN_2, "6", &temporary])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK pin"), "shared: {}", text(&out));

    let mut db = Vec::new();
    for name in ["lanyard.db", "lanyard.db-wal"] {
        db.extend(std::fs::read(server.data.join(name)).unwrap_or_default());
    }
    for typed in [FIDO_PIN, PIN_1, PIN_2] {
        assert!(!db.windows(typed.len()).any(|w| w == typed.as_bytes()), "{typed} is in the database");
    }
}
