//! Cards pulled, put back and pcscd restarted, each test on a pcscd of its own
//! (`lanyard_testkit::PrivatePcscd`): the test may stop that pcscd, and its cards never meet the
//! machine's pcscd or other tests' readers, so these tests run in parallel with everything else.
//!
//! Every PC/SC call goes through a child process (`lanyard`, `opensc-tool`, `yubico-piv-tool`)
//! given the private socket; this process makes none (libpcsclite would fix its socket for good).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_testkit::{PrivatePcscd, ServeProcess, free_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "run scripts/test, which installs pcscd vsmartcard-vpcd opensc yubico-piv-tool";

fn lanyard() -> &'static str {
    env!("CARGO_BIN_EXE_lanyard")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Polls `f` until it holds; after 30 s fails the test with what the card and pcscd logged.
fn wait_until(cards: &Cards, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}\nvcard log:\n{}\npcscd's errors:\n{}",
            cards.vcard_log(),
            cards.pcscd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Virtual cards plugged into a private pcscd's readers by one `lanyard vcard run`.
struct Cards {
    pcscd: PrivatePcscd,
    dir: tempfile::TempDir,
    vcard: Option<Child>,
    serials: Vec<u32>,
}

impl Drop for Cards {
    fn drop(&mut self) {
        self.unplug();
    }
}

impl Cards {
    /// A private pcscd with `n` (1 or 2) factory-new cards in its readers.
    fn plug(n: usize) -> Cards {
        let pcscd = PrivatePcscd::start();
        let dir = tempfile::tempdir().unwrap();
        let mut cards = Cards { pcscd, dir, vcard: None, serials: Vec::new() };
        cards.replug(n);
        cards
    }

    /// Fresh card images in the readers (the previous ones are unplugged first).
    fn replug(&mut self, n: usize) {
        self.unplug();
        let home = self.dir.path().join("home");
        let mut images = Vec::new();
        for i in 0..n {
            let img = self.dir.path().join(format!("card{i}.json"));
            let out = Command::new(lanyard())
                .args(["vcard", "new", "--force", "--image"])
                .arg(&img)
                .arg("--home")
                .arg(&home)
                .output()
                .unwrap();
            assert!(out.status.success(), "vcard new: {}", text(&out));
            images.push(img);
        }
        self.serials = images.iter().map(|p| lanyard_vcard::CardImage::load(p).unwrap().serial).collect();
        let mut cmd = Command::new(lanyard());
        cmd.args(["vcard", "run", "--port", &self.pcscd.vpcd_port().to_string(), "--control"])
            .arg(self.control_socket());
        for img in &images {
            cmd.arg("--image").arg(img);
        }
        let log = std::fs::File::create(self.dir.path().join("vcard.log")).unwrap();
        self.vcard = Some(cmd.env("RUST_LOG", "debug").stdout(Stdio::null()).stderr(log).spawn().unwrap());
        for slot in 0..n {
            let want = self.serials[slot];
            wait_until(self, &format!("card {want} in reader {slot}"), || self.serial(slot) == Some(want));
        }
    }

    fn unplug(&mut self) {
        if let Some(mut child) = self.vcard.take() {
            let _ = child.kill();
            let _ = child.wait();
            wait_until(self, "readers empty", || !self.present(0) && !self.present(1));
        }
    }

    fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn reader(&self, slot: usize) -> String {
        self.pcscd.reader(slot as u16)
    }

    /// `lanyard vcard remove|insert` for card `slot`.
    fn control(&self, verb: &str, slot: usize) {
        let out = Command::new(lanyard())
            .args(["vcard", verb, "--control"])
            .arg(self.control_socket())
            .args(["--card", &slot.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "vcard {verb}: {}", text(&out));
    }

    /// Whether `opensc-tool -l` shows a card in reader `slot` (reader state only; no APDU).
    fn present(&self, slot: usize) -> bool {
        let out = self.tool("opensc-tool", &["-l"]);
        let reader = self.reader(slot);
        text(&out).lines().any(|l| l.ends_with(&reader) && l.split_whitespace().nth(1) == Some("Yes"))
    }

    /// The serial `yubico-piv-tool -a status` reads from the card in reader `slot`.
    fn serial(&self, slot: usize) -> Option<u32> {
        if !self.present(slot) {
            return None;
        }
        let out = self.tool("yubico-piv-tool", &["-r", &self.reader(slot), "-a", "status"]);
        let t = text(&out);
        t.lines().find_map(|l| l.strip_prefix("Serial Number:\t")).and_then(|s| s.trim().parse().ok())
    }

    /// A tool run against the private pcscd; its output whatever the status.
    fn tool(&self, program: &str, args: &[&str]) -> Output {
        self.pcscd
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}: {INSTALL}"))
    }

    fn ypt_ok(&self, slot: usize, args: &[&str]) -> String {
        let mut all = vec!["-r".to_owned(), self.reader(slot)];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = self.tool("yubico-piv-tool", &all);
        assert!(out.status.success(), "yubico-piv-tool {all:?}: {}", text(&out));
        text(&out)
    }

    fn attestation_root(&self) -> PathBuf {
        self.dir.path().join("home/attestation-root.pem")
    }

    fn vcard_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vcard.log")).unwrap_or_default()
    }
}

/// Two cards in two readers, removal and insertion through the control socket, and the cards
/// coming back after pcscd restarts. The pcscd restarted is this test's own.
#[test]
fn two_cards_removal_insertion_and_pcscd_restart() {
    let mut cards = Cards::plug(2);
    assert_ne!(cards.serials[0], cards.serials[1]);

    cards.control("remove", 0);
    wait_until(&cards, "card 0 removed", || !cards.present(0));
    let gone = cards.tool("yubico-piv-tool", &["-r", &cards.reader(0), "-a", "status"]);
    assert!(!gone.status.success() && !text(&gone).contains("Serial Number"), "{}", text(&gone));
    assert_eq!(cards.serial(1), Some(cards.serials[1]), "the other card stays");
    cards.control("insert", 0);
    wait_until(&cards, "card 0 back", || cards.serial(0) == Some(cards.serials[0]));

    // State persists through removal: change the PIN, remove, insert, the new PIN holds.
    cards.ypt_ok(0, &["-a", "change-pin", "-P", "123456", "-N", "445566"]);
    cards.control("remove", 0);
    wait_until(&cards, "card 0 removed", || !cards.present(0));
    cards.control("insert", 0);
    wait_until(&cards, "card 0 back", || cards.serial(0) == Some(cards.serials[0]));
    cards.ypt_ok(0, &["-a", "verify-pin", "-P", "445566"]);

    // pcscd restarts: the cards reconnect by themselves.
    cards.pcscd.restart();
    wait_until(&cards, "card 0 after pcscd restart", || cards.serial(0) == Some(cards.serials[0]));
    wait_until(&cards, "card 1 after pcscd restart", || cards.serial(1) == Some(cards.serials[1]));
    cards.ypt_ok(0, &["-a", "verify-pin", "-P", "445566"]);
}

/// `lanyard serve` with the virtual cards' attestation root trusted, every slot's key RSA-2048
/// (the slowest generation, so a pull lands in the middle of it), and the admin CLI logged in.
struct Server {
    process: ServeProcess,
    data: PathBuf,
    cli_config: PathBuf,
}

impl Server {
    fn start(cards: &Cards, dir: &Path) -> Server {
        let data = dir.join("server");
        let root = cards.attestation_root();
        let process = ServeProcess::start(
            Path::new(lanyard()),
            &data,
            free_port(),
            &[("LANYARD_ATTESTATION_ROOTS", root.to_str().unwrap())],
        );
        let server = Server { data, cli_config: dir.join("cli.json"), process };
        let password = server.process.bootstrap_password.clone().expect("a bootstrap password");
        let login = Command::new(lanyard())
            .args(["login", "--server", &server.process.url(), "--ca-cert"])
            .arg(server.root_pem())
            .args(["--username", "admin"])
            .env("LANYARD_CLI_CONFIG", &server.cli_config)
            .env("LANYARD_PASSWORD", password)
            .output()
            .unwrap();
        assert!(login.status.success(), "{}", text(&login));
        server.rsa_2048_everywhere();
        server
    }

    fn root_pem(&self) -> PathBuf {
        self.data.join("ca/root.pem")
    }

    /// The group `default`'s policy with RSA-2048 in every slot, through the API.
    fn rsa_2048_everywhere(&self) {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.cli_config).unwrap()).unwrap();
        let auth = format!("Authorization: Bearer {}", config["token"].as_str().unwrap());
        let url = format!("{}/api/v1/groups", self.process.url());
        let root = self.root_pem();
        let curl = |args: &[&str]| {
            let out = Command::new("curl")
                .args(["-sf", "--cacert", root.to_str().unwrap(), "-H", &auth])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "curl {args:?}: {}", text(&out));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        let groups = curl(&[&url]);
        let group = groups.as_array().unwrap().iter().find(|g| g["name"] == "default").unwrap();
        let mut policy = group["policy"].clone();
        // Every round issues one more card to the administrator.
        policy["max_devices"] = 20.into();
        for slot in policy["certificates"].as_object_mut().unwrap().values_mut() {
            slot["algorithm"] = "rsa-2048".into();
        }
        let put = format!("{url}/{}/policy", group["id"].as_str().unwrap());
        let body = policy.to_string();
        let updated = curl(&["-X", "PUT", "-H", "content-type: application/json", "--data", &body, &put]);
        assert_eq!(updated["policy"]["certificates"]["9a"]["algorithm"], "rsa-2048", "{updated}");
    }

    /// The admin CLI, which must succeed; its JSON.
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

    /// `lanyard agent issue` at the card in reader 0 of `cards`, started, not awaited.
    fn agent(&self, cards: &Cards, ticket: &str, pin: &str) -> Child {
        cards
            .pcscd
            .command(lanyard())
            .args(["agent", "issue", "--server", &self.process.url(), "--ca-cert"])
            .arg(self.root_pem())
            .args(["--ticket", ticket, "--reader", &cards.reader(0)])
            .env("LANYARD_NEW_PIN", pin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn job_state(&self, job: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--cacert", self.root_pem().to_str().unwrap(), "-H"])
            .arg(format!("Authorization: Bearer {}", self.token()))
            .arg(format!("{}/api/v1/jobs/{job}", self.process.url()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["state"].as_str().unwrap().to_owned()
    }

    fn token(&self) -> String {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.cli_config).unwrap()).unwrap();
        config["token"].as_str().unwrap().to_owned()
    }
}

/// Runs the agent until it reports `step`, pulls the card then (in the middle of that step's
/// batch), and returns the agent's output once it has given up.
fn pull_during(cards: &Cards, mut agent: Child, step: &str) -> Output {
    use std::io::{BufRead, BufReader};
    let stdout = agent.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.ends_with(step) {
            cards.control("remove", 0);
            break;
        }
    }
    let out = agent.wait_with_output().unwrap();
    let mut stdout = seen.join("\n");
    stdout.push('\n');
    stdout.push_str(&String::from_utf8_lossy(&out.stdout));
    Output { status: out.status, stdout: stdout.into_bytes(), stderr: out.stderr }
}

/// One pulled card through real pcscd: issuance starts, the card is pulled while it generates a
/// key, put back, and a new ticket for the failed job (resume, or roll back) must work on the
/// first try. A card that pcscd reset on its way back (its own insertion, or another program) is
/// still the same card and must not be taken for a pulled one. Repeated, because when the reset
/// lands depends on timing.
#[test]
fn a_pulled_card_resumes_or_rolls_back_on_the_first_try() {
    const ROUNDS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let mut cards = Cards::plug(1);
    let server = Server::start(&cards, dir.path());
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            cards.replug(1);
        }
        let rollback = round % 5 == 4;
        let started =
            server.cli(&["device", "issue", "--kind", "usb_key", "--model", "Lanyard virtual card"]);
        let device = started["device"]["id"].as_str().unwrap().to_owned();
        let job = started["job"]["id"].as_str().unwrap().to_owned();
        let first = server.agent(&cards, started["ticket"].as_str().unwrap(), "97531864");
        // The batch that rotates the management key also generates the four RSA keys; the
        // certificates are written in another.
        let step = if round % 2 == 0 { "rotate_management_key" } else { "write_certificates" };
        let cut = pull_during(&cards, first, step);
        assert!(
            !cut.status.success(),
            "round {round}: the agent finished although the card was pulled: {}",
            text(&cut)
        );
        cards.control("insert", 0);
        let back = Instant::now();
        while !cards.present(0) {
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "round {round}: the card did not come back; agent: {}\nopensc-tool -l: {}\nagent readers: {}\nvcard log:\n{}\npcscd log:\n{}",
                text(&cut),
                text(&cards.tool("opensc-tool", &["-l"])),
                text(&cards.tool(lanyard(), &["agent", "readers"])),
                cards.vcard_log(),
                cards.pcscd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_until(&cards, "the job recorded failed", || server.job_state(&job) == "failed");
        let mut args = vec!["device", "ticket", "--job", &job];
        if rollback {
            args.push("--rollback");
        }
        let ticket = server.cli(&args)["ticket"].as_str().unwrap().to_owned();
        let again = server.agent(&cards, &ticket, "97531864").wait_with_output().unwrap();
        if !again.status.success() {
            failures.push(format!(
                "round {round} ({}): {}",
                if rollback { "rollback" } else { "resume" },
                text(&again)
            ));
            continue;
        }
        let state = server.cli(&["device", "list"]);
        let record = state.as_array().unwrap().iter().find(|d| d["id"] == device.as_str()).unwrap();
        if rollback {
            // Back to factory state: the default PIN works again.
            assert_ne!(record["state"], "active", "round {round}: {record}");
            cards.ypt_ok(0, &["-a", "verify-pin", "-P", "123456"]);
        } else {
            assert_eq!(record["state"], "active", "round {round}: {record}");
            cards.ypt_ok(0, &["-a", "verify-pin", "-P", "97531864"]);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} rounds failed at the first try after the card came back:\n{}\npcscd's errors:\n{}\nvcard log tail:\n{}",
        failures.len(),
        failures.join("\n"),
        cards.pcscd.log(),
        cards
            .vcard_log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

type Ws = tungstenite::WebSocket<std::net::TcpStream>;

/// One WebSocket connection on 127.0.0.1 playing the server's side of the agent protocol: after
/// the agent's hello, `script` runs.
fn agent_server<R: Send + 'static>(
    script: impl FnOnce(&mut Ws) -> R + Send + 'static,
) -> (String, std::thread::JoinHandle<R>) {
    use lanyard_protocol::{AgentFrame, PROTOCOL_VERSION, VERSION_HEADER};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let callback = |_: &tungstenite::handshake::server::Request,
                        mut resp: tungstenite::handshake::server::Response| {
            resp.headers_mut().insert(VERSION_HEADER, PROTOCOL_VERSION.into());
            Ok(resp)
        };
        let mut ws = tungstenite::accept_hdr(tcp, callback).unwrap();
        let hello = ws_recv(&mut ws);
        assert!(matches!(hello, AgentFrame::Hello { .. }), "{hello:?}");
        let r = script(&mut ws);
        while ws.read().is_ok() {}
        r
    });
    (url, handle)
}

fn ws_recv(ws: &mut Ws) -> lanyard_protocol::AgentFrame {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return lanyard_protocol::AgentFrame::parse(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn transmit(ws: &mut Ws, seq: u64, commands: &[lanyard_piv::apdu::Command]) {
    let apdus = commands.iter().map(|c| hex::encode_upper(c.to_bytes().unwrap())).collect();
    let frame = lanyard_protocol::ServerFrame::Transmit {
        seq,
        step: "detect".into(),
        done: 0,
        total: 2,
        apdus,
        answer_within_secs: 60,
    };
    ws.send(tungstenite::Message::text(frame.to_text())).unwrap();
}

/// Another program uses the card in reader 0 and resets it as it leaves (`lanyard piv info`,
/// like most PC/SC programs, disconnects with SCARD_RESET_CARD).
fn reset_by_another_program(socket: &Path, reader: &str) {
    let out = Command::new(lanyard())
        .args(["piv", "info", "--reader", reader])
        .env(lanyard_testkit::pcscd::SOCKET_ENV, socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "lanyard piv info: {}", text(&out));
}

/// A card reset by another program after the agent connected to it, before the session's first
/// command, is the same card: the agent reconnects and the session goes on. A reset after the
/// session had exchanged commands loses the session's state on the card: the agent says so
/// (not "card removed"), and leaves the card usable.
#[test]
fn a_reset_card_is_not_a_pulled_card() {
    use lanyard_piv::commands;
    use lanyard_protocol::AgentFrame;
    let cards = Cards::plug(1);
    let socket = cards.pcscd.socket();
    let reader = cards.reader(0);
    let (script_socket, script_reader) = (socket.clone(), reader.clone());
    let (url, server) = agent_server(move |ws| {
        // The agent holds its connection to the card by now (it read the ATR for its hello).
        reset_by_another_program(&script_socket, &script_reader);
        transmit(ws, 1, &[commands::select(), commands::get_serial()]);
        let first = ws_recv(ws);
        if !matches!(first, AgentFrame::Responses { .. }) {
            return (first, None);
        }
        reset_by_another_program(&script_socket, &script_reader);
        transmit(ws, 2, &[commands::get_serial()]);
        let second = ws_recv(ws);
        (first, Some(second))
    });
    let agent = cards
        .pcscd
        .command(lanyard())
        .args([
            "agent",
            "issue",
            "--server",
            &url,
            "--ticket",
            "t1",
            "--reader",
            &reader,
            "--skip-pin-change",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (first, second) = server.join().unwrap();
    let AgentFrame::Responses { seq: 1, responses } = &first else {
        panic!("the first batch after a reset was not answered: {first:?}\nagent: {}", text(&agent))
    };
    assert_eq!(responses.len(), 2, "{responses:?}");
    let serial = hex::decode(&responses[1]).unwrap();
    assert_eq!(serial[..4], cards.serials[0].to_be_bytes(), "{responses:?}");
    assert!(responses.iter().all(|r| r.ends_with("9000")), "{responses:?}");
    match &second {
        Some(AgentFrame::Error { seq: Some(2), message }) => {
            assert!(message.contains("reset") && !message.contains("removed"), "{message}")
        }
        other => panic!("a reset in the middle of a session was not reported: {other:?}"),
    }
    assert!(!agent.status.success(), "{}", text(&agent));
    assert!(text(&agent).contains("card reset"), "{}", text(&agent));
    // The card is still there and answers.
    assert_eq!(cards.serial(0), Some(cards.serials[0]));
}
