//! The virtual card's FIDO2 application judged by tools Lanyard did not write, through a real
//! pcscd and the vsmartcard vpcd reader: python-fido2 (`tests/fido/ctap_judge.py`, PyPI fido2 2.x
//! with pyscard) and yubikey-manager (`ykman fido …`).
//!
//! Each test runs its own pcscd (`PrivatePcscd`), so it meets neither the machine's readers nor
//! other tests'. Every PC/SC call goes through a child process given the private socket.
//! Needs what `scripts/test` installs: pcscd, vsmartcard-vpcd, opensc (for `opensc-tool -l`) and
//! the venv `target/test-venv` with fido2, pyscard and ykman. A missing piece fails the test with
//! the install step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_testkit::PrivatePcscd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VENV_HINT: &str = "run ./scripts/test, which installs fido2, pyscard and yubikey-manager into target/test-venv \
                         (or set LANYARD_TEST_VENV to a venv that has them)";

fn lanyard() -> &'static str {
    env!("CARGO_BIN_EXE_lanyard")
}

fn out_ok(o: &Output, scenario: &str) -> bool {
    o.status.success() && text(o).contains(&format!("OK {scenario}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The test venv's `bin`: `$LANYARD_TEST_VENV` (the venv or its `bin`), else the workspace's.
fn venv_bin() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin");
    let candidates: Vec<PathBuf> = match std::env::var_os("LANYARD_TEST_VENV") {
        Some(v) => vec![PathBuf::from(&v).join("bin"), PathBuf::from(v)],
        None => vec![workspace],
    };
    let bin = candidates
        .iter()
        .find(|d| d.join("python").is_file() && d.join("ykman").is_file())
        .cloned()
        .unwrap_or_else(|| panic!("no venv with python and ykman in {candidates:?}: {VENV_HINT}"));
    let probe = Command::new(bin.join("python"))
        .args(["-c", "import importlib.metadata as m, fido2, smartcard; assert int(m.version('fido2').split('.')[0]) >= 2"])
        .output()
        .unwrap();
    assert!(probe.status.success(), "python-fido2 2.x or pyscard is missing: {VENV_HINT}\n{}", text(&probe));
    bin
}

/// One factory-new virtual card in reader 0 of a private pcscd.
struct Card {
    pcscd: PrivatePcscd,
    dir: tempfile::TempDir,
    vcard: Child,
    image: PathBuf,
    venv: PathBuf,
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = self.vcard.kill();
        let _ = self.vcard.wait();
    }
}

impl Card {
    fn plug() -> Card {
        let venv = venv_bin();
        let pcscd = PrivatePcscd::start();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("card.json");
        let out = Command::new(lanyard())
            .args(["vcard", "new", "--image"])
            .arg(&image)
            .arg("--home")
            .arg(dir.path().join("home"))
            .output()
            .unwrap();
        assert!(out.status.success(), "vcard new: {}", text(&out));
        assert!(text(&out).contains("FIDO attestation root: "), "{}", text(&out));
        let log = std::fs::File::create(dir.path().join("vcard.log")).unwrap();
        let vcard = Command::new(lanyard())
            .args(["vcard", "run", "--port", &pcscd.vpcd_port().to_string(), "--image"])
            .arg(&image)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let card = Card { pcscd, dir, vcard, image, venv };
        let start = Instant::now();
        while !card.present() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the card did not appear in {}\nvcard log:\n{}\npcscd:\n{}",
                card.reader(),
                std::fs::read_to_string(card.dir.path().join("vcard.log")).unwrap_or_default(),
                card.pcscd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        card
    }

    fn reader(&self) -> String {
        self.pcscd.reader(0)
    }

    /// Whether `opensc-tool -l` shows a card in the reader (reader state only; no APDU).
    fn present(&self) -> bool {
        let out = self.pcscd.command("opensc-tool").arg("-l").output().unwrap_or_else(|e| {
            panic!("cannot run opensc-tool: {e}: run scripts/test, which installs opensc")
        });
        let reader = self.reader();
        text(&out).lines().any(|l| l.ends_with(&reader) && l.split_whitespace().nth(1) == Some("Yes"))
    }

    fn fido_root(&self) -> PathBuf {
        self.dir.path().join("home/fido-attestation-root.pem")
    }

    /// `tests/fido/ctap_judge.py SCENARIO READER ROOT ARGS…`.
    fn run_judge(&self, scenario: &str, root: &Path, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fido/ctap_judge.py");
        self.pcscd
            .command(self.venv.join("python"))
            .arg(&script)
            .arg(scenario)
            .arg(self.reader())
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The judge's SCENARIO with the installation's FIDO root, which must print `OK SCENARIO`.
    fn judge(&self, scenario: &str, args: &[&str]) {
        let out = self.run_judge(scenario, &self.fido_root(), args);
        assert!(
            out_ok(&out, scenario),
            "python-fido2 judge {scenario} failed:\n{}\nvcard log tail:\n{}",
            text(&out),
            self.vcard_log_tail()
        );
    }

    fn vcard_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("vcard.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn ykman(&self, args: &[&str]) -> Output {
        let reader = self.reader();
        self.pcscd
            .command(self.venv.join("ykman"))
            .args(["--reader", &reader])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ykman_ok(&self, args: &[&str]) -> String {
        let out = self.ykman(args);
        assert!(out.status.success(), "ykman {args:?} failed:\n{}", text(&out));
        text(&out)
    }

    fn ykman_fails(&self, args: &[&str]) -> String {
        let out = self.ykman(args);
        assert!(!out.status.success(), "ykman {args:?} unexpectedly succeeded:\n{}", text(&out));
        text(&out)
    }

    fn fido_state(&self) -> serde_json::Value {
        let out = Command::new(lanyard())
            .args(["vcard", "info", "--output", "json", "--image"])
            .arg(&self.image)
            .output()
            .unwrap();
        assert!(out.status.success(), "vcard info: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["fido"].clone()
    }
}

/// python-fido2 sets a PIN, registers discoverable and non-discoverable credentials and verifies
/// the packed attestation (and its chain to the installation's FIDO root) and every assertion
/// signature with its own code; lists and deletes credentials; and checks the PIN retry counter,
/// the minimum length (in code points, never lowered) and the forced PIN change. NFC keep-alives
/// (9100) are seen for every makeCredential and getAssertion. ykman then lists and deletes the
/// credential python-fido2 left.
#[test]
fn python_fido2_judges_the_authenticator() {
    let card = Card::plug();
    card.judge("full", &[]);
    let state = card.fido_state();
    assert_eq!(state["pin_set"], true);
    assert_eq!(state["min_pin_length"], 6);
    assert_eq!(state["force_pin_change"], false);
    assert_eq!(state["discoverable_credentials"], 1, "alice's is left after bob's was deleted");
    assert_eq!(state["pin_tries_left"], 8);
    // The attestation chains to this installation's FIDO root and to no other root: with the
    // PIV attestation root (another key) python-fido2's chain check refuses it.
    card.judge("attest", &[]);
    let other = card.run_judge("attest", &card.dir.path().join("home/attestation-root.pem"), &[]);
    assert!(
        !out_ok(&other, "attest") && text(&other).contains("InvalidSignature"),
        "a chain to the PIV root was accepted:\n{}",
        text(&other)
    );
    // ykman reads the same credential through credential management, and deletes it.
    let listed = card.ykman_ok(&["fido", "credentials", "list", "--pin", "135792", "--csv"]);
    let row =
        listed.lines().find(|l| l.contains(",example.org,alice,")).unwrap_or_else(|| panic!("{listed}"));
    let id = row.split(',').next().unwrap();
    card.ykman_ok(&["fido", "credentials", "delete", id, "--pin", "135792", "--force"]);
    assert_eq!(card.fido_state()["discoverable_credentials"], 0);
}

/// ykman ≥ 5.3 reads the card as a YubiKey with FIDO2, sets and changes the PIN, raises the
/// minimum length (which forces a change of the shorter PIN) and forces a change; python-fido2
/// then confirms the PIN and minimum length on the card.
#[test]
fn ykman_manages_the_fido_pin() {
    let card = Card::plug();
    let version = Command::new(card.venv.join("ykman")).arg("--version").output().unwrap();
    let v = text(&version);
    let numbers: Vec<u32> = v
        .rsplit("version: ")
        .next()
        .unwrap_or("")
        .trim()
        .split('.')
        .take(2)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    assert!(numbers >= vec![5, 3], "ykman {v} is older than 5.3: {VENV_HINT}");

    let info = card.ykman_ok(&["info"]);
    assert!(info.contains("FIDO2"), "ykman info does not list FIDO2:\n{info}");
    let fido = card.ykman_ok(&["fido", "info"]);
    assert!(fido.contains("AAGUID:") && fido.contains("0c2e5dce-6a62-4a15-9deb-ff374f786d53"), "{fido}");
    assert!(fido.contains("PIN:") && fido.contains("Not set"), "{fido}");
    assert!(fido.contains("Minimum PIN length:") && fido.contains('4'), "{fido}");

    card.ykman_ok(&["fido", "access", "change-pin", "--new-pin", "1234567"]);
    let fido = card.ykman_ok(&["fido", "info"]);
    assert!(fido.contains("8 attempt(s) remaining"), "{fido}");
    let wrong =
        card.ykman_fails(&["fido", "access", "change-pin", "--pin", "0000000", "--new-pin", "7654321"]);
    assert!(wrong.contains("Wrong PIN"), "{wrong}");
    assert!(card.ykman_ok(&["fido", "info"]).contains("7 attempt(s) remaining"));
    card.ykman_ok(&["fido", "access", "change-pin", "--pin", "1234567", "--new-pin", "7654321"]);
    assert!(card.ykman_ok(&["fido", "info"]).contains("8 attempt(s) remaining"));

    // A minimum above the PIN's length: the card forces a change of the PIN.
    let set = card.ykman_ok(&["fido", "access", "set-min-length", "--pin", "7654321", "8"]);
    assert!(set.contains("Minimum PIN length set"), "{set}");
    let fido = card.ykman_ok(&["fido", "info"]);
    assert!(fido.contains("must be changed"), "{fido}");
    assert!(fido.contains("Minimum PIN length:") && fido.contains('8'), "{fido}");
    let lower = card.ykman_fails(&["fido", "access", "set-min-length", "--pin", "7654321", "6"]);
    assert!(lower.contains("shorter than 8"), "{lower}");
    let blocked = card.ykman_fails(&["fido", "access", "verify-pin", "--pin", "7654321"]);
    assert!(blocked.contains("Change the PIN first"), "{blocked}");
    card.ykman_ok(&["fido", "access", "change-pin", "--pin", "7654321", "--new-pin", "11223344"]);
    card.ykman_ok(&["fido", "access", "verify-pin", "--pin", "11223344"]);

    // force-change: the same PIN is refused, a new one accepted.
    let forced = card.ykman_ok(&["fido", "access", "force-change", "--pin", "11223344"]);
    assert!(forced.contains("Force PIN change set"), "{forced}");
    assert!(card.ykman_ok(&["fido", "info"]).contains("must be changed"));
    let same =
        card.ykman_fails(&["fido", "access", "change-pin", "--pin", "11223344", "--new-pin", "11223344"]);
    assert!(same.contains("complexity requirements"), "{same}");
    card.ykman_ok(&["fido", "access", "change-pin", "--pin", "11223344", "--new-pin", "55667788"]);
    let fido = card.ykman_ok(&["fido", "info"]);
    assert!(!fido.contains("must be changed"), "{fido}");

    card.judge("check-pin", &["55667788", "8"]);
}
