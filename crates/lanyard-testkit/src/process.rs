//! `lanyard serve` as a child process, for tests of the binary itself (configuration, HTTPS,
//! restarts). The binary's path comes from the test (`env!("CARGO_BIN_EXE_lanyard")`), which only
//! the `lanyard` crate's tests know.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it soon after).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("the port").port()
}

/// A running `lanyard serve`; killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub port: u16,
    /// The bootstrap administrator's password, printed on the first start of an empty database.
    pub bootstrap_password: Option<String>,
}

impl ServeProcess {
    /// Starts `bin serve` with `LANYARD_DATA_DIR=data`, `LANYARD_LISTEN=127.0.0.1:port` and
    /// `env`, and waits for its "listening" line.
    pub fn start(bin: &Path, data: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin)
            .arg("serve")
            .envs(env.iter().copied())
            .env("LANYARD_DATA_DIR", data)
            .env("LANYARD_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut bootstrap_password = None;
        loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    panic!("lanyard serve exited before listening ({status})")
                }
            };
            if let Some(rest) = line.split("Bootstrap administrator: admin / ").nth(1) {
                bootstrap_password = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("Lanyard is listening") {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServeProcess { child, port, bootstrap_password }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits until it is gone (its port and files are free again).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
