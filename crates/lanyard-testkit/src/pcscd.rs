//! A private pcscd for one test: its own socket, its own vpcd reader ports, and a process the
//! test started itself, so the test may stop and restart it without touching the machine's pcscd
//! or the cards other tests (or a developer) have plugged into it.
//!
//! Debian's pcscd (1.9.9) always listens on `/run/pcscd/pcscd.comm`; it has no option for another
//! path. So the private one runs in a mount namespace of its own (`unshare`), where a directory of
//! the test is mounted over `/run`: its socket lands in `<dir>/run/pcscd/pcscd.comm`, visible to
//! everyone. Clients reach it through `PCSCLITE_CSOCK_NAME`, which libpcsclite reads (once per
//! process, at its first PC/SC call); so a test talks to the private pcscd only through child
//! processes given [`PrivatePcscd::command`], never through PC/SC calls of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable libpcsclite reads for pcscd's socket.
pub const SOCKET_ENV: &str = "PCSCLITE_CSOCK_NAME";

/// The vpcd reader driver, from the `vsmartcard-vpcd` package.
const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";

/// The readers' name; pcscd appends " 00 00" and " 00 01" for vpcd's two slots.
pub const READER_NAME: &str = "Lanyard Test PCD";

const INSTALL: &str = "run scripts/test, which installs pcscd and vsmartcard-vpcd (apt-get)";

/// A pcscd of this test, with the vpcd driver's two readers on ports of its own; stopped when
/// dropped.
pub struct PrivatePcscd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl PrivatePcscd {
    /// Starts a private pcscd and waits until its socket answers.
    pub fn start() -> PrivatePcscd {
        assert!(Path::new(VPCD_DRIVER).exists(), "the vpcd reader driver is missing: {INSTALL}");
        let dir = tempfile::tempdir().unwrap();
        let port = two_free_ports();
        let conf = dir.path().join("reader.conf.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("vpcd"),
            format!(
                "FRIENDLYNAME \"{READER_NAME}\"\nDEVICENAME   /dev/null:0x{port:X}\nLIBPATH      \
                 {VPCD_DRIVER}\nCHANNELID    0x{port:X}\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("run/pcscd")).unwrap();
        let mut pcscd = PrivatePcscd { dir, child: None, port };
        pcscd.launch();
        pcscd
    }

    /// The socket clients reach this pcscd through (the value of [`SOCKET_ENV`]).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/pcscd/pcscd.comm")
    }

    /// The exact name of the reader of vpcd slot `slot` (0 or 1).
    pub fn reader(&self, slot: u16) -> String {
        format!("{READER_NAME} 00 {slot:02}")
    }

    /// The vpcd port of slot 0, for `lanyard vcard run --port`; slot 1 is the next port.
    pub fn vpcd_port(&self) -> u16 {
        self.port
    }

    /// `program` set up to talk to this pcscd.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env(SOCKET_ENV, self.socket());
        c
    }

    /// Stops this pcscd (SIGTERM, as a service manager does) and starts it again on the same
    /// socket and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn launch(&mut self) {
        let run = self.dir.path().join("run");
        let conf = self.dir.path().join("reader.conf.d");
        let log = std::fs::File::create(self.dir.path().join("pcscd.log")).unwrap();
        // A user namespace lets an unprivileged user make the mount namespace; root does not
        // need one (and a container may refuse it even to root).
        let mut unshare = Command::new("unshare");
        if !running_as_root() {
            unshare.arg("--map-root-user");
        }
        // `exec` keeps one process, so the child's id is pcscd's.
        let child = unshare
            .args(["--mount", "sh", "-c", "mount --bind \"$0\" /run && exec pcscd --foreground -c \"$1\""])
            .arg(&run)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run unshare for a private pcscd: {e} (package util-linux)"));
        self.child = Some(child);
        let socket = self.socket();
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the private pcscd stopped ({status}); it needs pcscd ({INSTALL}) and a mount \
                     namespace (root, or unprivileged user namespaces). Its output:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the private pcscd did not open {}:\n{}",
                socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // By its id: this pcscd and no other.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A pcscd that was killed leaves these behind, and the next one would refuse to start.
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.dir.path().join("run/pcscd/pcscd.pid"));
    }

    /// What pcscd printed (errors only), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePcscd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A port p such that p and p + 1 are free on every address (vpcd listens on 0.0.0.0).
fn two_free_ports() -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("0.0.0.0", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free TCP ports")
}
