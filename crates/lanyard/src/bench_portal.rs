//! `lanyard bench portal`: page latency under many signed-in sessions at once.
//!
//! `lanyard serve`'s router runs in this process on SQLite with a throwaway CA. The setup (not
//! timed) makes a population of users, cardholders with devices and certificates, and operators,
//! and signs every session in. Then each session gets a thread of its own that asks for its page
//! over its own keep-alive connection, all starting together, either as fast as the server
//! answers (`--think-ms 0`: the server saturated, where latency is mostly queueing) or after a
//! pause between requests like a person reading the page (latency near the service time):
//! - **My Devices**: `GET /portal/devices` for cardholder sessions (their devices and
//!   certificates, the policy's Add Device verdict);
//! - **operator search**: the operator search page for operator sessions, cycling through
//!   queries by username prefix, display name, e-mail and device serial.
//!
//! The figures are latencies seen by the clients (p50, p90, p99, max) and throughput. Clients and
//! server share the machine's cores, as they would not in production, so the figures are an upper
//! bound of the server's own time. Nothing here asserts on a duration; the figures go to
//! docs/BENCHMARKS.md with the command line.

// A benchmark measures real elapsed time and stamps the server with it.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::bench::in_process;
use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The operator search page, with the query in `q`.
const SEARCH_PATH: &str = "/portal/operator";

pub struct Options {
    /// Signed-in sessions asking at once.
    pub sessions: u32,
    /// Requests each session makes.
    pub requests: u32,
    /// Users beyond the signed-in ones, so searches run over a realistic directory.
    pub population: u32,
    /// Mean pause of a session between its requests (uniform from half to one and a half of
    /// it); 0 asks again at once, which measures the server saturated.
    pub think: Duration,
}

/// A signed-in session: its cookie header value.
struct SignedIn {
    cookie: String,
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections_per_host(1).build().into()
}

fn login(http: &ureq::Agent, base: &str, username: &str, password: &str) -> anyhow::Result<SignedIn> {
    Ok(SignedIn { cookie: in_process::sign_in(http, base, username, password)?.0 })
}

/// POSTs `body` as the administrator's API token; the JSON answer, which must be 201.
fn create(http: &ureq::Agent, base: &str, api: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let mut resp = http.post(format!("{base}{path}")).header("authorization", api).send_json(&body)?;
    let status = resp.status();
    let answer: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if status != 201 {
        bail!("POST {path} {body}: HTTP {status} {answer}");
    }
    Ok(answer)
}

fn csr_pem() -> anyhow::Result<String> {
    let key = lanyard_ca::SoftwareKey::generate(lanyard_ca::KeyAlgorithm::EcP256)?;
    let der = lanyard_ca::build_csr(&key, lanyard_ca::parse_dn("CN=Bench Holder")?, vec![], None)?;
    Ok(lanyard_ca::pem("CERTIFICATE REQUEST", &der))
}

/// Latencies of one page under load.
pub struct Figures {
    latencies: Vec<Duration>,
    wall: Duration,
    failures: u32,
}

impl Figures {
    fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank: the smallest latency at or above the q-th fraction of the samples.
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }

    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile(q).as_secs_f64() * 1000.0
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn print(&self, what: &str) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{what}: {} requests in {:.1} s ({:.0}/s), p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} failed",
            self.latencies.len(),
            self.wall.as_secs_f64(),
            self.latencies.len() as f64 / self.wall.as_secs_f64().max(f64::EPSILON),
            ms(self.quantile(0.50)),
            ms(self.quantile(0.90)),
            ms(self.quantile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.failures,
        );
    }
}

/// Every session asks `path_of(session, i)` `requests` times from its own thread; all start at once.
fn hammer(
    base: &str,
    sessions: Vec<SignedIn>,
    requests: u32,
    think: Duration,
    expect: &'static str,
    path_of: impl Fn(usize, u32) -> String + Send + Sync + 'static,
) -> anyhow::Result<Figures> {
    let path_of = Arc::new(path_of);
    let start = Arc::new(Barrier::new(sessions.len() + 1));
    let mut threads = Vec::new();
    for (n, session) in sessions.into_iter().enumerate() {
        let (base, start, path_of) = (base.to_owned(), start.clone(), path_of.clone());
        threads.push(std::thread::spawn(move || {
            let http = http();
            let mut latencies = Vec::with_capacity(requests as usize);
            let mut failures = 0u32;
            start.wait();
            for i in 0..requests {
                if !think.is_zero() {
                    std::thread::sleep(
                        think.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..1.5)),
                    );
                }
                let t = Instant::now();
                let ok = match http
                    .get(format!("{base}{}", path_of(n, i)))
                    .header("cookie", &session.cookie)
                    .call()
                {
                    Ok(mut resp) => {
                        resp.status() == 200
                            && resp.body_mut().read_to_string().is_ok_and(|b| b.contains(expect))
                    }
                    Err(_) => false,
                };
                latencies.push(t.elapsed());
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    start.wait();
    let began = Instant::now();
    let mut figures = Figures { latencies: Vec::new(), wall: Duration::ZERO, failures: 0 };
    for t in threads {
        let (latencies, failures) = t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        figures.latencies.extend(latencies);
        figures.failures += failures;
    }
    figures.wall = began.elapsed();
    figures.latencies.sort_unstable();
    Ok(figures)
}

fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(o: Options) -> anyhow::Result<()> {
    let (devices, search) = measure(o)?;
    if devices.failures > 0 || search.failures > 0 {
        bail!("some requests failed (see above): the figures are not valid");
    }
    Ok(())
}

/// Runs both loads, prints their figures and returns them (My Devices, operator search).
pub fn measure(o: Options) -> anyhow::Result<(Figures, Figures)> {
    if o.sessions == 0 || o.requests == 0 {
        bail!("--sessions and --requests must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (addr, admin_password) = rt.block_on(async {
        let (db, password) = in_process::database(dir.path()).await?;
        anyhow::Ok((in_process::serve(db, dir.path(), Vec::new()).await?, password))
    })?;
    let base = format!("http://{addr}");
    let http = http();
    let api = in_process::admin_token(&http, &base, &admin_password)?;

    let setup = Instant::now();
    for i in 0..o.population {
        create(
            &http,
            &base,
            &api,
            "/api/v1/users",
            json!({"username": format!("person{i:05}"), "display_name": format!("Person {i:05} Example"),
                   "email": format!("person{i:05}@example.org"), "roles": ["user"], "group": "default"}),
        )?;
    }
    // Cardholders: two cards each, the first with a (Pending) certificate; a password to sign in.
    let password = "bench-password-1";
    let csr = csr_pem()?;
    for i in 0..o.sessions {
        let user = format!("holder{i:04}");
        create(
            &http,
            &base,
            &api,
            "/api/v1/users",
            json!({"username": user, "display_name": format!("Holder {i:04}"), "email": format!("{user}@example.org"),
                   "roles": ["user"], "group": "default", "password": password}),
        )?;
        for card in 0..2u32 {
            let serial = format!("{}", 10_000_000 + i * 2 + card);
            let device = create(
                &http,
                &base,
                &api,
                "/api/v1/devices",
                json!({"kind": "usb_key", "model": "YubiKey 5", "serial": serial, "owner": user}),
            )?;
            if card == 0 {
                let id = device["id"].as_str().context("no device id")?;
                create(
                    &http,
                    &base,
                    &api,
                    &format!("/api/v1/devices/{id}/certificates"),
                    json!({"csr_pem": csr, "profile": "digital-signature", "slot": "9c"}),
                )?;
            }
        }
    }
    for i in 0..o.sessions {
        create(
            &http,
            &base,
            &api,
            "/api/v1/users",
            json!({"username": format!("operator{i:04}"), "display_name": format!("Operator {i:04}"),
                   "roles": ["operator"], "group": "default", "password": password}),
        )?;
    }
    let mut holders = Vec::new();
    let mut operators = Vec::new();
    for i in 0..o.sessions {
        holders.push(login(&http, &base, &format!("holder{i:04}"), password)?);
        operators.push(login(&http, &base, &format!("operator{i:04}"), password)?);
    }
    println!(
        "setup: {} users ({} cardholders with 2 devices and 1 certificate each, {} operators), {} sessions signed in, in {:.1} s",
        o.population + 2 * o.sessions + 1,
        o.sessions,
        o.sessions,
        2 * o.sessions,
        setup.elapsed().as_secs_f64()
    );
    let rss_before = resident_mib();

    let devices =
        hammer(&base, holders, o.requests, o.think, "YubiKey 5", |_, _| "/portal/devices".to_owned())?;
    let load = if o.think.is_zero() {
        "no pause between requests".to_owned()
    } else {
        format!("a pause of {} ms on average between requests", o.think.as_millis())
    };
    devices.print(&format!("My Devices, {} sessions, {load}", o.sessions));

    let population = o.population.max(1);
    let search = hammer(&base, operators, o.requests, o.think, "<main", move |n, i| {
        let k = (n as u32 * 7919 + i * 104_729) % population;
        let q = match i % 4 {
            0 => format!("person{:03}", k / 100),
            1 => format!("Person%20{k:05}"),
            2 => format!("person{k:05}%40example.org"),
            _ => format!("{}", 10_000_000 + (k % (2 * o.sessions.max(1)))),
        };
        format!("{SEARCH_PATH}?q={q}")
    })?;
    search.print(&format!("operator search, {} sessions, {load}", o.sessions));
    if let (Some(before), Some(after)) = (rss_before, resident_mib()) {
        println!(
            "resident memory of this process (server and clients): {before:.0} MiB before, {after:.0} MiB after"
        );
    }
    drop(rt);
    Ok((devices, search))
}
