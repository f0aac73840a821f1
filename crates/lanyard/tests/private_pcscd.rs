//! Cards pulled, put back and pcscd restarted, each test on a pcscd of its own
//! (`lanyard_testkit::PrivatePcscd`): the test may stop that pcscd, and its cards never meet the
//! machine's pcscd or other tests' readers, so these tests run in parallel with everything else.
//!
//! Every PC/SC call goes through a child process (`lanyard`, `opensc-tool`, `yubico-piv-tool`)
//! given the private socket; this process makes none (libpcsclite would fix its socket for good).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_testkit::PrivatePcscd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "run scripts/test, which installs pcscd vsmartcard-vpcd opensc yubico-piv-tool";

fn lanyard() -> &'static str {
    env!("CARGO_BIN_EXE_lanyard")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
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
            wait_until(&format!("card {want} in reader {slot}"), || self.serial(slot) == Some(want));
        }
    }

    fn unplug(&mut self) {
        if let Some(mut child) = self.vcard.take() {
            let _ = child.kill();
            let _ = child.wait();
            wait_until("readers empty", || !self.present(0) && !self.present(1));
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
}

/// Two cards in two readers, removal and insertion through the control socket, and the cards
/// coming back after pcscd restarts. The pcscd restarted is this test's own.
#[test]
fn two_cards_removal_insertion_and_pcscd_restart() {
    let mut cards = Cards::plug(2);
    assert_ne!(cards.serials[0], cards.serials[1]);

    cards.control("remove", 0);
    wait_until("card 0 removed", || !cards.present(0));
    let gone = cards.tool("yubico-piv-tool", &["-r", &cards.reader(0), "-a", "status"]);
    assert!(!gone.status.success() && !text(&gone).contains("Serial Number"), "{}", text(&gone));
    assert_eq!(cards.serial(1), Some(cards.serials[1]), "the other card stays");
    cards.control("insert", 0);
    wait_until("card 0 back", || cards.serial(0) == Some(cards.serials[0]));

    // State persists through removal: change the PIN, remove, insert, the new PIN holds.
    cards.ypt_ok(0, &["-a", "change-pin", "-P", "123456", "-N", "445566"]);
    cards.control("remove", 0);
    wait_until("card 0 removed", || !cards.present(0));
    cards.control("insert", 0);
    wait_until("card 0 back", || cards.serial(0) == Some(cards.serials[0]));
    cards.ypt_ok(0, &["-a", "verify-pin", "-P", "445566"]);

    // pcscd restarts: the cards reconnect by themselves.
    cards.pcscd.restart();
    wait_until("card 0 after pcscd restart", || cards.serial(0) == Some(cards.serials[0]));
    wait_until("card 1 after pcscd restart", || cards.serial(1) == Some(cards.serials[1]));
    cards.ypt_ok(0, &["-a", "verify-pin", "-P", "445566"]);
}
