//! `lanyard bench server`: the server at scale, side by side with cfssl and openssl, in one run.
//!
//! It starts `lanyard serve` processes (this binary) on SQLite and on PostgreSQL, cfssl `serve`
//! and `ocspserve`, and `openssl ocsp`, each pinned to CPU 1; loads them from a second process
//! pinned to CPU 0 (wrk for keep-alive loads, `lanyard bench connect` for a new connection per
//! request); measures the in-process CSR-verify + sign ceiling and `openssl speed`; seeds a
//! million certificates through SQL; and prints one table, also written as Markdown, JSON and an
//! SVG plot (`bench_report`). docs/BENCHMARKS.md says how to read it.

// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_methods)]

use crate::bench_report::{Load, Report, Row, WrkRequest, parse_load, wrk_script};
use anyhow::{Context, bail};
use base64::Engine as _;
use der::{Decode, Encode};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    pub postgres_url: Option<String>,
    pub seconds: u64,
    pub certificates: u64,
    pub skip: Vec<String>,
}

/// A child process killed when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` on CPU 1 (the servers' core), output to `log`.
fn spawn_on_server_core(
    program: &Path,
    args: &[&str],
    envs: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg("1").arg(program).args(args).stdout(out.try_clone()?).stderr(out).stdin(Stdio::null());
    lanyard_env(&mut cmd, envs);
    let child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
    Ok(Proc { child, name: program.display().to_string() })
}

/// Sets `envs` on `cmd` after removing every other `LANYARD_*` variable of this process's
/// environment (`lanyard serve` refuses unknown ones, and the caller's configuration must not
/// leak into the bench's servers) and `RUST_LOG` (the servers log at `LANYARD_LOG`).
fn lanyard_env(cmd: &mut Command, envs: &[(&str, String)]) {
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LANYARD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16, p: &mut Proc, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!(
                "{} exited ({status}) before listening:\n{}",
                p.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{} did not listen on port {port} within 60 s", p.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// (VmRSS, VmHWM) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn require(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
    if !found {
        bail!("`{tool}` is missing: install the Debian package {package} (./scripts/bench does)");
    }
    Ok(())
}

fn run_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Bench {
    o: Options,
    dir: tempfile::TempDir,
    exe: PathBuf,
    report: Report,
}

impl Bench {
    fn push(&mut self, row: Row) {
        println!(
            "  {:<10} {:<62} {:>4} {:>12} {:<4} p50 {:>8} p99 {:>8}{}",
            row.system,
            row.what,
            row.conns.map_or_else(String::new, |c| c.to_string()),
            crate::bench_report::number(row.value),
            row.unit,
            row.p50_ms.map_or_else(String::new, |v| format!("{v:.1}ms")),
            row.p99_ms.map_or_else(String::new, |v| format!("{v:.1}ms")),
            if row.failed > 0 { format!("  ({} failed)", row.failed) } else { String::new() }
        );
        self.report.rows.push(row);
    }

    fn load_row(&mut self, key: &str, system: &str, what: &str, conns: u32, load: Load) -> Row {
        let mut row = Row::new(key, system, what, load.rate(), "/s");
        row.conns = Some(conns);
        row.p50_ms = Some(load.p50_us as f64 / 1000.0);
        row.p99_ms = Some(load.p99_us as f64 / 1000.0);
        row.failed = load.errors + load.status;
        row
    }

    /// wrk on CPU 0 against each URL at once (connections split between them), `requests`
    /// cycled; one script per URL.
    fn wrk(&self, urls: &[String], conns: u32, requests: &[Vec<WrkRequest>]) -> anyhow::Result<Load> {
        let per = (conns / urls.len() as u32).max(1);
        let mut children = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let script = self.dir.path().join(format!("load{i}.lua"));
            std::fs::write(&script, wrk_script(&requests[i % requests.len()]))?;
            children.push(
                Command::new("taskset")
                    .args(["-c", "0", "wrk", "-t1", "--timeout", "10s"])
                    .arg(format!("-c{per}"))
                    .arg(format!("-d{}s", self.o.seconds))
                    .arg("-s")
                    .arg(&script)
                    .arg(url)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting wrk")?,
            );
        }
        let mut total: Option<Load> = None;
        for c in children {
            let out = c.wait_with_output()?;
            let text =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            let load = parse_load(&text)?;
            total = Some(total.map_or(load, |t| t.combine(&load)));
        }
        total.context("no URL to load")
    }

    /// `lanyard bench connect` on CPU 0: a new TCP connection per request.
    fn connect(&self, addrs: &[SocketAddr], conns: u32, requests: &[Vec<u8>]) -> anyhow::Result<Load> {
        let file = self.dir.path().join("requests.bin");
        std::fs::write(&file, encode_requests(requests))?;
        let per = (conns / addrs.len() as u32).max(1);
        let mut children = Vec::new();
        for a in addrs {
            children.push(
                Command::new("taskset")
                    .args(["-c", "0"])
                    .arg(&self.exe)
                    .args(["bench", "connect", "--addr", &a.to_string(), "--requests"])
                    .arg(&file)
                    .args(["--connections", &per.to_string(), "--seconds", &self.o.seconds.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?,
            );
        }
        let mut total: Option<Load> = None;
        for c in children {
            let out = c.wait_with_output()?;
            let load = parse_load(
                &(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)),
            )?;
            total = Some(total.map_or(load, |t| t.combine(&load)));
        }
        total.context("no address to load")
    }

    /// The concurrencies of the keep-alive rows.
    fn conns(&self) -> Vec<u32> {
        vec![1, 16, 64]
    }
}

// ---------------------------------------------------------------------------------------------
// OCSP requests by hand (RFC 6960 §4.1.1): one CertID, SHA-1 hashes, an optional nonce.

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else if n < 0x100 {
        v.extend([0x81, n as u8]);
    } else {
        v.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref().to_vec()
}

/// Issuer name and key hashes of a CA certificate (DER).
fn issuer_hashes(ca_der: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let cert = x509_cert::Certificate::from_der(ca_der)?;
    let name = cert.tbs_certificate.subject.to_der()?;
    let key = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
    Ok((sha1(&name), sha1(&key)))
}

/// A DER OCSP request for `serial` (big-endian magnitude) under the issuer of `hashes`.
pub fn ocsp_request(hashes: &(Vec<u8>, Vec<u8>), serial: &[u8], nonce: Option<&[u8]>) -> Vec<u8> {
    let mut int = serial.iter().copied().skip_while(|b| *b == 0).collect::<Vec<u8>>();
    if int.first().is_none_or(|b| b & 0x80 != 0) {
        int.insert(0, 0);
    }
    let alg = [0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00];
    let cert_id =
        tlv(0x30, &[&alg[..], &tlv(0x04, &hashes.0), &tlv(0x04, &hashes.1), &tlv(0x02, &int)].concat());
    let request_list = tlv(0x30, &tlv(0x30, &cert_id));
    let mut tbs = request_list;
    if let Some(n) = nonce {
        // [2] EXPLICIT Extensions { id-pkix-ocsp-nonce, OCTET STRING (OCTET STRING nonce) }
        let oid = [0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
        let ext = tlv(0x30, &[&oid[..], &tlv(0x04, &tlv(0x04, n))].concat());
        tbs.extend(tlv(0xa2, &tlv(0x30, &ext)));
    }
    tlv(0x30, &tlv(0x30, &tbs))
}

/// The GET path element for an OCSP request: base64, then percent-encoded (RFC 6960 A.1).
fn ocsp_get_path(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(der)
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn http_post(path: &str, host: &str, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn http_get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn encode_requests(requests: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in requests {
        v.extend((r.len() as u32).to_be_bytes());
        v.extend(r);
    }
    v
}

fn decode_requests(mut b: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (len, rest) = b.split_first_chunk::<4>().context("a truncated request file")?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            bail!("a truncated request file");
        }
        out.push(rest[..len].to_vec());
        b = &rest[len..];
    }
    if out.is_empty() {
        bail!("the request file holds no request");
    }
    Ok(out)
}

/// `lanyard bench connect`: `connections` threads, each opening a new TCP connection for every
/// request (cycled from the file), reading the answer to its end; prints a `BENCHJSON` line.
pub fn connect(addr: SocketAddr, file: &Path, connections: u32, seconds: u64) -> anyhow::Result<()> {
    if connections == 0 || seconds == 0 {
        bail!("--connections and --seconds must be at least 1");
    }
    let requests = std::sync::Arc::new(decode_requests(&std::fs::read(file)?)?);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut threads = Vec::new();
    for t in 0..connections {
        let requests = requests.clone();
        threads.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let (mut errors, mut status) = (0u64, 0u64);
            let mut i = t as usize;
            let mut buf = Vec::with_capacity(4096);
            while Instant::now() < end {
                let req = &requests[i % requests.len()];
                i += 1;
                let t0 = Instant::now();
                let ok = (|| -> std::io::Result<bool> {
                    let mut s = TcpStream::connect(addr)?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(req)?;
                    buf.clear();
                    s.read_to_end(&mut buf)?;
                    Ok(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
                })();
                match ok {
                    Ok(true) => lat.push(t0.elapsed()),
                    Ok(false) => status += 1,
                    Err(_) => errors += 1,
                }
            }
            (lat, errors, status)
        }));
    }
    let mut lat = Vec::new();
    let (mut errors, mut status) = (0, 0);
    for t in threads {
        let (l, e, s) = t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        lat.extend(l);
        errors += e;
        status += s;
    }
    let duration = start.elapsed();
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((p * lat.len() as f64) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros() as u64)
    };
    println!(
        "BENCHJSON {}",
        json!({"requests": lat.len() as u64 + status, "duration_us": duration.as_micros() as u64,
               "errors": errors, "status": status, "p50_us": q(0.50), "p99_us": q(0.99)})
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Lanyard servers.

struct Lanyard {
    procs: Vec<Proc>,
    https: Vec<u16>,
    pki: Vec<u16>,
    data: PathBuf,
    http: ureq::Agent,
    token: String,
    issuing_der: Vec<u8>,
}

impl Lanyard {
    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.https[0])
    }

    fn api(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base());
        let mut resp = match method {
            "GET" => self.http.get(&url).header("authorization", &self.token).call()?,
            "PUT" => self.http.put(&url).header("authorization", &self.token).send_json(&body)?,
            _ => self.http.post(&url).header("authorization", &self.token).send_json(&body)?,
        };
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status} {v}");
        }
        Ok(v)
    }
}

fn start_lanyard(
    b: &Bench,
    name: &str,
    db_url: &str,
    servers: usize,
    ca_alg: &str,
) -> anyhow::Result<Lanyard> {
    let data = b.dir.path().join(name);
    std::fs::create_dir_all(&data)?;
    let https: Vec<u16> = (0..servers).map(|_| free_port()).collect::<Result<_, _>>()?;
    let pki: Vec<u16> = (0..servers).map(|_| free_port()).collect::<Result<_, _>>()?;
    let env = |i: usize| {
        vec![
            ("LANYARD_DATA_DIR", data.display().to_string()),
            ("LANYARD_DATABASE_URL", db_url.to_owned()),
            ("LANYARD_LISTEN", format!("127.0.0.1:{}", https[i])),
            ("LANYARD_PKI_LISTEN", format!("127.0.0.1:{}", pki[i])),
            ("LANYARD_PKI_URL", format!("http://127.0.0.1:{}", pki[0])),
            ("LANYARD_CA_KEY_ALGORITHM", ca_alg.to_owned()),
            ("LANYARD_LOG", "warn".to_owned()),
        ]
    };
    let mut init = Command::new(&b.exe);
    init.arg("init");
    lanyard_env(&mut init, &env(0));
    let out = run_output(&mut init)?;
    let password = out
        .lines()
        .find_map(|l| l.split("Bootstrap administrator: admin / ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .context("`lanyard init` printed no administrator password")?
        .to_owned();
    let mut procs = Vec::new();
    for i in 0..servers {
        let log = b.dir.path().join(format!("{name}-serve{i}.log"));
        let mut p = spawn_on_server_core(&b.exe, &["serve"], &env(i), &log)?;
        wait_port(https[i], &mut p, &log)?;
        wait_port(pki[i], &mut p, &log)?;
        procs.push(p);
    }
    let root = std::fs::read_to_string(data.join("ca").join(lanyard_server::pki::ROOT_PEM))?;
    let http = crate::admin_cmd::agent(Some(&root))?;
    let base = format!("https://127.0.0.1:{}", https[0]);
    let token = crate::bench::in_process::admin_token(&http, &base, &password)?;
    let issuing_der = std::fs::read(data.join("ca").join("issuing.crt"))?;
    Ok(Lanyard { procs, https, pki, data, http, token, issuing_der })
}

fn csr_pem(alg: lanyard_ca::KeyAlgorithm) -> anyhow::Result<String> {
    let key = lanyard_ca::SoftwareKey::generate(alg)?;
    let der = lanyard_ca::build_csr(&key, lanyard_ca::parse_dn("CN=Bench Holder")?, vec![], None)?;
    Ok(lanyard_ca::pem("CERTIFICATE REQUEST", &der))
}

/// How many devices the issuance rows spread their requests over, one after another. An
/// organisation issues to many devices at once, rarely to one device twice at the same moment;
/// with as few devices as connections, concurrent requests for one device's slot meet on
/// PostgreSQL (serializable units of work), and some end in 503 after their retries.
const ISSUANCE_DEVICES: u32 = 1024;

/// Users with one device each; the device ids.
fn devices(l: &Lanyard, n: u32) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let user = format!("bench{i:04}");
        l.api(
            "POST",
            "/api/v1/users",
            json!({"username": user, "display_name": format!("Bench {i}"),
            "email": format!("{user}@example.org"), "roles": ["user"], "group": "default"}),
        )?;
        let d = l.api(
            "POST",
            "/api/v1/devices",
            json!({"kind": "usb_key", "model": "YubiKey 5",
            "serial": format!("{}", 20_000_000 + i), "owner": user}),
        )?;
        ids.push(d["id"].as_str().context("no device id")?.to_owned());
    }
    Ok(ids)
}

fn issuance_requests(l: &Lanyard, devices: &[String], csr: &str) -> Vec<WrkRequest> {
    let body = serde_json::to_vec(&json!({"csr_pem": csr, "profile": "digital-signature", "slot": "9c"}))
        .unwrap_or_default();
    devices
        .iter()
        .map(|d| WrkRequest {
            method: "POST",
            path: format!("/api/v1/devices/{d}/certificates"),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Authorization".into(), l.token.clone()),
            ],
            body: body.clone(),
        })
        .collect()
}

/// Seeds `n` certificate rows through SQL from two real rows (one good, one revoked), every
/// tenth revoked; the serials are `b1` followed by the row number in 16 hex digits. The bench's
/// devices have no card, so their certificates stay pending; the seeded rows and the ones named
/// in `activate` are made active, as on an issued card.
async fn seed(
    db_url: &str,
    good_id: &str,
    revoked_id: &str,
    activate: &[&str],
    n: u64,
) -> anyhow::Result<()> {
    let db = lanyard_store::Db::connect(db_url).await?;
    for id in activate {
        match &db {
            lanyard_store::Db::Sqlite(p) => {
                sqlx::query("UPDATE credentials SET state = 'active' WHERE id = ?1")
                    .bind(*id)
                    .execute(p)
                    .await?;
            }
            lanyard_store::Db::Postgres(p) => {
                sqlx::query("UPDATE credentials SET state = 'active' WHERE id = $1")
                    .bind(*id)
                    .execute(p)
                    .await?;
            }
        }
    }
    let cols = "id, device_id, kind, slot, profile, serial_hex, not_before, not_after, certificate_der, \
                attestation_der, state, held_from, revocation_reason, revoked_at, created_at, updated_at";
    let chunk = 100_000u64;
    let mut from = 1u64;
    while from <= n {
        let to = (from + chunk - 1).min(n);
        match &db {
            lanyard_store::Db::Sqlite(p) => {
                let sql = format!(
                    "INSERT INTO credentials ({cols}) WITH RECURSIVE s(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM s WHERE i < {to}) \
                     SELECT printf('00000000-0000-4000-8000-%012x', i), t.device_id, t.kind, t.slot, t.profile, printf('b1%016x', i), \
                     t.not_before, t.not_after, t.certificate_der, t.attestation_der, \
                     CASE WHEN i % 10 = 0 THEN r.state ELSE 'active' END, NULL, \
                     CASE WHEN i % 10 = 0 THEN r.revocation_reason END, CASE WHEN i % 10 = 0 THEN r.revoked_at END, \
                     t.created_at, t.updated_at FROM s, credentials t, credentials r WHERE t.id = ?1 AND r.id = ?2"
                );
                // Built from numbers and constants only; the ids are bound.
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(good_id).bind(revoked_id).execute(p).await?;
            }
            lanyard_store::Db::Postgres(p) => {
                let sql = format!(
                    "INSERT INTO credentials ({cols}) SELECT '00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), \
                     t.device_id, t.kind, t.slot, t.profile, 'b1' || lpad(to_hex(i), 16, '0'), \
                     t.not_before, t.not_after, t.certificate_der, t.attestation_der, \
                     CASE WHEN i % 10 = 0 THEN r.state ELSE 'active' END, NULL, \
                     CASE WHEN i % 10 = 0 THEN r.revocation_reason END, CASE WHEN i % 10 = 0 THEN r.revoked_at END, \
                     t.created_at, t.updated_at FROM generate_series({from}::bigint, {to}::bigint) AS g(i), credentials t, credentials r \
                     WHERE t.id = $1 AND r.id = $2"
                );
                // Built from numbers and constants only; the ids are bound.
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(good_id).bind(revoked_id).execute(p).await?;
            }
        }
        from = to + 1;
    }
    if let lanyard_store::Db::Postgres(p) = &db {
        sqlx::query("ANALYZE credentials").execute(p).await?;
    }
    Ok(())
}

fn seeded_serial(i: u64) -> Vec<u8> {
    let mut v = vec![0xb1];
    v.extend(i.to_be_bytes());
    v
}

/// A fresh PostgreSQL database on the server of `url`; its URL. `name` is made by this program
/// from its pid (letters, digits and underscores), never from outside input.
async fn fresh_pg(url: &str, name: &str) -> anyhow::Result<String> {
    let admin = lanyard_store::Db::connect(url).await?;
    let lanyard_store::Db::Postgres(p) = &admin else { bail!("--postgres-url must be a postgres:// URL") };
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(p)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(p).await?;
    let (head, _) = url.rsplit_once('/').context("--postgres-url has no database name")?;
    Ok(format!("{head}/{name}"))
}

async fn drop_pg(url: &str, name: &str) {
    if let Ok(lanyard_store::Db::Postgres(p)) = lanyard_store::Db::connect(url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&p)
            .await;
    }
}

struct Seeded {
    /// (serial, revoked) of sample certificates to ask about.
    sample: Vec<(Vec<u8>, bool)>,
    /// An issued certificate to revoke during the load: its credential id and serial.
    victim: (String, String),
}

/// Issues two real certificates (one revoked), one more to revoke later, and seeds `n` rows.
fn prepare_ocsp(
    rt: &tokio::runtime::Runtime,
    l: &Lanyard,
    db_url: &str,
    device: &str,
    n: u64,
) -> anyhow::Result<Seeded> {
    let csr = csr_pem(lanyard_ca::KeyAlgorithm::EcP256)?;
    let issue = || -> anyhow::Result<(String, String)> {
        let v = l.api(
            "POST",
            &format!("/api/v1/devices/{device}/certificates"),
            json!({"csr_pem": csr, "profile": "digital-signature", "slot": "9c"}),
        )?;
        let c = &v["credential"];
        let id = c["id"].as_str().context("no credential id")?.to_owned();
        let serial = c["serial_hex"]
            .as_str()
            .or_else(|| c["kind"]["serial_hex"].as_str())
            .or_else(|| c["certificate"]["serial_hex"].as_str())
            .map(str::to_owned)
            .or_else(|| find_key(c, "serial_hex"))
            .context("no serial in the credential")?;
        Ok((id, serial))
    };
    let good = issue()?;
    let revoked = issue()?;
    l.api("POST", &format!("/api/v1/credentials/{}/revoke", revoked.0), json!({"reason": "superseded"}))?;
    let victim = issue()?;
    let t = Instant::now();
    rt.block_on(seed(db_url, &good.0, &revoked.0, &[&good.0, &victim.0], n))?;
    println!("  seeded {n} certificates ({} revoked) in {:.1} s", n / 10, t.elapsed().as_secs_f64());
    let mut sample = Vec::new();
    for k in 0..1000u64 {
        let i = 1 + (k * 7919 * 13) % n.max(1);
        sample.push((seeded_serial(i), i.is_multiple_of(10)));
    }
    Ok(Seeded { sample, victim })
}

fn find_key(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_str().map(str::to_owned))
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// The same OCSP requests four ways: POST and GET for wrk, then POST and GET as raw HTTP
/// requests with `Connection: close` for `lanyard bench connect`.
type OcspLoads = (Vec<WrkRequest>, Vec<WrkRequest>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn ocsp_loads(
    hashes: &(Vec<u8>, Vec<u8>),
    serials: &[Vec<u8>],
    host: &str,
    post_path: &str,
    get_prefix: &str,
) -> OcspLoads {
    let mut post = Vec::new();
    let mut get = Vec::new();
    let mut post_raw = Vec::new();
    let mut get_raw = Vec::new();
    for s in serials {
        let der = ocsp_request(hashes, s, None);
        post.push(WrkRequest {
            method: "POST",
            path: post_path.to_owned(),
            headers: vec![("Content-Type".into(), "application/ocsp-request".into())],
            body: der.clone(),
        });
        let path = format!("{get_prefix}{}", ocsp_get_path(&der));
        get.push(WrkRequest { method: "GET", path: path.clone(), headers: vec![], body: vec![] });
        post_raw.push(http_post(post_path, host, "application/ocsp-request", &der, true));
        get_raw.push(http_get(&path, host));
    }
    (post, get, post_raw, get_raw)
}

/// Sends one raw request and checks the answer is HTTP 200 with a successful OCSP response, so
/// that a load never measures error answers.
fn check_ocsp(addr: &str, raw: &[u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let body = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &buf[i + 4..]).unwrap_or_default();
    let successful = body.windows(3).take(6).any(|w| w == [0x0a, 0x01, 0x00]);
    if !(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")) || !successful {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
        bail!("{addr} did not answer an OCSP request with a successful response: {head:?}");
    }
    Ok(())
}

/// `openssl ocsp` as a client: the status line of `serial` and whether the answer checks out.
fn openssl_probe(l: &Lanyard, serial_hex: &str) -> anyhow::Result<(String, bool)> {
    let issuing = l.data.join("issuing.pem");
    std::fs::write(&issuing, lanyard_ca::pem("CERTIFICATE", &l.issuing_der))?;
    let out = Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&issuing)
        .args([
            "-serial",
            &format!("0x{serial_hex}"),
            "-url",
            &format!("http://127.0.0.1:{}/pki/ocsp", l.pki[0]),
            "-CAfile",
        ])
        .arg(l.data.join("ca").join(lanyard_server::pki::ROOT_PEM))
        .args(["-nonce", "-resp_text"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let status = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(&format!("0x{serial_hex}: ")).map(str::to_owned))
        .unwrap_or_else(|| "no status".to_owned());
    let ok = text.contains("Response verify OK")
        && !text.contains("WARNING: no nonce")
        && !text.contains("nonce verify error")
        && text.contains("This Update:")
        && text.contains("Next Update:");
    Ok((status, ok))
}

// ---------------------------------------------------------------------------------------------

fn versions(b: &mut Bench, pg_url: &Option<String>) {
    let first_line = |cmd: &mut Command| {
        run_output(cmd).ok().and_then(|s| s.lines().next().map(str::to_owned)).unwrap_or_default()
    };
    let wrk = Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            t.lines().next().unwrap_or_default().to_owned()
        })
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(String::new(), |k| format!("{:.0} GiB", k / 1048576.0));
    let ctx = &mut b.report.context;
    ctx.push((
        "date".into(),
        run_output(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"))
            .unwrap_or_default()
            .trim()
            .to_owned(),
    ));
    ctx.push(("machine".into(), format!("{cores} cores, {cpu}, {mem}")));
    ctx.push((
        "lanyard".into(),
        format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
        ),
    ));
    ctx.push(("wrk".into(), wrk));
    ctx.push(("cfssl".into(), first_line(Command::new("cfssl").arg("version"))));
    ctx.push(("openssl".into(), first_line(Command::new("openssl").arg("version"))));
    if pg_url.is_some() {
        ctx.push(("PostgreSQL".into(), first_line(Command::new("psql").arg("--version"))));
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    ctx.push(("load average at the start (1, 5, 15 min)".into(), loadavg));
    ctx.push((
        "load".into(),
        format!("wrk -t1 on CPU 0, servers on CPU 1, {} s per row, loopback", b.o.seconds),
    ));
}

fn ceiling(b: &mut Bench) -> anyhow::Result<()> {
    use lanyard_ca::{
        CaUrls, CertificateProfile, Hierarchy, HierarchySpec, IssueRequest, KeyAlgorithm, SanInput,
    };
    for (alg, label) in [(KeyAlgorithm::EcP256, "P-256"), (KeyAlgorithm::Rsa2048, "RSA-2048")] {
        let spec = HierarchySpec::new("Bench", alg, CaUrls::new("http://127.0.0.1")?)?;
        let now = time::OffsetDateTime::now_utc();
        let h = Hierarchy::generate(&spec, now)?;
        let csr = csr_pem(alg)?;
        let profile = CertificateProfile::digital_signature();
        let secs = if b.o.quick { 1.0 } else { 3.0 };
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let parsed = lanyard_ca::parse_csr_pem(&csr)?;
            h.issuing.issue(&IssueRequest {
                profile: &profile,
                subject: parsed.subject,
                public_key: parsed.public_key,
                san: SanInput { email: vec!["bench@example.org".into()], ..SanInput::default() },
                not_before: now,
                requested_not_after: now + time::Duration::days(365),
                cap_not_after: None,
            })?;
            n += 1;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        b.push(Row::new(
            &format!("inprocess-{label}"),
            "Lanyard CA code",
            &format!("CSR parse + verify, certificate build + sign, in process, {label}, 1 core"),
            rate,
            "/s",
        ));
    }
    // openssl speed on the servers' core.
    let out = run_output(Command::new("taskset").args([
        "-c",
        "1",
        "openssl",
        "speed",
        "-seconds",
        if b.o.quick { "1" } else { "2" },
        "ecdsap256",
        "rsa2048",
    ]))?;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("rsa 2048 bits") && f.len() >= 7 {
            let (s, v) = (f[5].parse::<f64>().unwrap_or(0.0), f[6].parse::<f64>().unwrap_or(0.0));
            b.push(Row::new("speed-rsa-sign", "openssl speed", "RSA-2048 sign, 1 core", s, "/s"));
            b.push(Row::new("speed-rsa-verify", "openssl speed", "RSA-2048 verify, 1 core", v, "/s"));
        }
        if line.contains("ecdsa (nistp256)") && f.len() >= 7 {
            let (s, v) =
                (f[f.len() - 2].parse::<f64>().unwrap_or(0.0), f[f.len() - 1].parse::<f64>().unwrap_or(0.0));
            b.push(Row::new("speed-p256-sign", "openssl speed", "P-256 sign, 1 core", s, "/s"));
            b.push(Row::new("speed-p256-verify", "openssl speed", "P-256 verify, 1 core", v, "/s"));
        }
    }
    // The machine's ceiling for a request that verifies one signature and makes one: both
    // operations back to back on one core.
    for (label, sign, verify) in [
        ("P-256", "speed-p256-sign", "speed-p256-verify"),
        ("RSA-2048", "speed-rsa-sign", "speed-rsa-verify"),
    ] {
        let rate = |k: &str| b.report.rows.iter().find(|r| r.key == k).map(|r| r.value).filter(|v| *v > 0.0);
        if let (Some(s), Some(v)) = (rate(sign), rate(verify)) {
            let mut row = Row::new(
                &format!("ceiling-{label}"),
                "ceiling",
                &format!("verify + sign, {label}, 1 core (openssl speed: 1 / (1/sign + 1/verify))"),
                1.0 / (1.0 / s + 1.0 / v),
                "/s",
            );
            row.peer = None;
            b.push(row);
            if let Some(r) = b.report.rows.iter_mut().find(|r| r.key == format!("inprocess-{label}")) {
                r.ceiling = Some(format!("ceiling-{label}"));
            }
        }
    }
    Ok(())
}

/// A CA made by openssl for the peers (cfssl and openssl): cert and key PEM paths.
fn peer_ca(b: &Bench, alg: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = b.dir.path().join(format!("peer-{alg}-ca.pem"));
    let key = b.dir.path().join(format!("peer-{alg}-ca-key.pem"));
    let newkey = if alg == "rsa" { "rsa:2048".to_owned() } else { "ec".to_owned() };
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-nodes", "-newkey", &newkey]);
    if alg != "rsa" {
        cmd.args(["-pkeyopt", "ec_paramgen_curve:P-256"]);
    }
    cmd.args(["-keyout"]).arg(&key).arg("-out").arg(&cert).args([
        "-days",
        "30",
        "-subj",
        &format!("/CN=Peer {alg} CA"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ]);
    run_output(&mut cmd)?;
    Ok((cert, key))
}

fn pem_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    let (_, der) =
        der::pem::decode_vec(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(der)
}

/// Decimal digits → big-endian bytes.
fn decimal_bytes(s: &str) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = vec![0];
    for c in s.trim().chars() {
        let mut carry = c.to_digit(10)?;
        for byte in out.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            out.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    Some(out)
}

fn cfssl(b: &mut Bench, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    for (alg, label, conns) in [("ec", "P-256", b.conns()), ("rsa", "RSA-2048", vec![16])] {
        let (ca, key) = peer_ca(b, alg)?;
        let db = b.dir.path().join(format!("cfssl-{alg}.db"));
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", db.display())).await?;
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
            sqlx::query("CREATE TABLE certificates (serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, \
                ca_label blob, status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp, pem blob NOT NULL, \
                PRIMARY KEY(serial_number, authority_key_identifier))").execute(&pool).await?;
            sqlx::query("CREATE TABLE ocsp_responses (serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, \
                body blob NOT NULL, expiry timestamp, PRIMARY KEY(serial_number, authority_key_identifier), \
                FOREIGN KEY(serial_number, authority_key_identifier) REFERENCES certificates(serial_number, authority_key_identifier))")
                .execute(&pool).await?;
            pool.close().await;
            anyhow::Ok(())
        })?;
        let db_config = b.dir.path().join(format!("cfssl-{alg}-db.json"));
        std::fs::write(
            &db_config,
            json!({"driver": "sqlite3", "data_source": db.display().to_string()}).to_string(),
        )?;
        let config = b.dir.path().join("cfssl-config.json");
        std::fs::write(
            &config,
            json!({"signing": {"default": {"expiry": "8760h",
            "usages": ["digital signature", "email protection"]}}})
            .to_string(),
        )?;
        let port = free_port()?;
        let log = b.dir.path().join(format!("cfssl-serve-{alg}.log"));
        let cfssl = PathBuf::from("cfssl");
        let ca_s = ca.display().to_string();
        let key_s = key.display().to_string();
        let mut p = spawn_on_server_core(
            &cfssl,
            &[
                "serve",
                "-address",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-ca",
                &ca_s,
                "-ca-key",
                &key_s,
                "-config",
                &config.display().to_string(),
                "-db-config",
                &db_config.display().to_string(),
                "-loglevel",
                "3",
            ],
            &[],
            &log,
        )?;
        wait_port(port, &mut p, &log)?;
        let csr = csr_pem(if alg == "rsa" {
            lanyard_ca::KeyAlgorithm::Rsa2048
        } else {
            lanyard_ca::KeyAlgorithm::EcP256
        })?;
        let req = vec![WrkRequest {
            method: "POST",
            path: "/api/v1/cfssl/sign".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(&json!({"certificate_request": csr}))?,
        }];
        for c in conns {
            let load = b.wrk(&[format!("http://127.0.0.1:{port}")], c, &[req.clone_list()])?;
            let mut row = b.load_row(
                &format!("cfssl-sign-{label}-{c}"),
                "cfssl serve",
                &format!("sign, SQLite WAL store, HTTP, {label}"),
                c,
                load,
            );
            row.series = (alg == "ec").then(|| "cfssl serve sign (SQLite WAL, HTTP)".to_owned());
            row.ceiling = Some(format!("ceiling-{label}"));
            b.push(row);
        }
        drop(p);
        if alg != "ec" {
            continue;
        }
        // ocspserve with responses pre-signed by ocsprefresh from the certificates just signed.
        run_output(
            Command::new("cfssl")
                .args(["ocsprefresh", "-db-config"])
                .arg(&db_config)
                .arg("-ca")
                .arg(&ca)
                .arg("-responder")
                .arg(&ca)
                .arg("-responder-key")
                .arg(&key)
                .args(["-loglevel", "3"]),
        )?;
        let dump = run_output(Command::new("cfssl").args(["ocspdump", "-db-config"]).arg(&db_config))?;
        let responses = b.dir.path().join("cfssl-responses");
        std::fs::write(&responses, dump)?;
        let serials: Vec<Vec<u8>> = rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT CAST(serial_number AS TEXT) FROM certificates LIMIT 1000")
                    .fetch_all(&pool)
                    .await?;
            anyhow::Ok(rows.into_iter().filter_map(|r| decimal_bytes(&r.0)).collect())
        })?;
        if serials.is_empty() {
            bail!("cfssl stored no certificate: its sign rows cannot have worked");
        }
        let oport = free_port()?;
        let log = b.dir.path().join("cfssl-ocspserve.log");
        let mut p = spawn_on_server_core(
            &cfssl,
            &[
                "ocspserve",
                "-address",
                "127.0.0.1",
                "-port",
                &oport.to_string(),
                "-responses",
                &responses.display().to_string(),
                "-loglevel",
                "3",
            ],
            &[],
            &log,
        )?;
        wait_port(oport, &mut p, &log)?;
        let hashes = issuer_hashes(&pem_der(&ca)?)?;
        let host = format!("127.0.0.1:{oport}");
        let (post, get, post_raw, get_raw) = ocsp_loads(&hashes, &serials, &host, "/", "/");
        check_ocsp(&host, &post_raw[0])?;
        // cfssl 1.2 URL-decodes the already decoded GET path once more, so a `+` of the base64
        // turns into a space: try its GET requests with `+` encoded twice, then once.
        let twice: Vec<WrkRequest> = get
            .clone_list()
            .into_iter()
            .map(|r| WrkRequest { path: r.path.replace("%2B", "%252B"), ..r })
            .collect();
        let get = [twice, get].into_iter().find(|g| check_ocsp(&host, &http_get(&g[0].path, &host)).is_ok());
        if get.is_none() {
            b.report.context.push((
                "cfssl ocspserve GET".into(),
                "answered HTTP 400 to every form of GET request tried; no GET row".into(),
            ));
        }
        drop(get_raw);
        for c in b.conns() {
            let load = b.wrk(&[format!("http://{host}")], c, &[post.clone_list()])?;
            let mut row = b.load_row(
                &format!("cfssl-ocsp-post-{c}"),
                "cfssl ocspserve",
                "OCSP POST, pre-signed, keep-alive",
                c,
                load,
            );
            row.series = Some("cfssl ocspserve POST (keep-alive)".into());
            b.push(row);
        }
        if let Some(get) = get {
            let load = b.wrk(&[format!("http://{host}")], 64, &[get])?;
            let row = b.load_row(
                "cfssl-ocsp-get-64",
                "cfssl ocspserve",
                "OCSP GET, pre-signed, keep-alive",
                64,
                load,
            );
            b.push(row);
        }
        let load = b.connect(&[host.parse()?], 16, &post_raw)?;
        let row = b.load_row(
            "cfssl-ocsp-post-new-16",
            "cfssl ocspserve",
            "OCSP POST, new connection per request",
            16,
            load,
        );
        b.push(row);
        drop(p);
    }
    Ok(())
}

trait CloneList {
    fn clone_list(&self) -> Vec<WrkRequest>;
}

impl CloneList for Vec<WrkRequest> {
    fn clone_list(&self) -> Vec<WrkRequest> {
        self.iter()
            .map(|r| WrkRequest {
                method: r.method,
                path: r.path.clone(),
                headers: r.headers.clone(),
                body: r.body.clone(),
            })
            .collect()
    }
}

/// openssl's index.txt with `n` entries, every one revoked (for -gencrl) or every tenth (for ocsp).
fn openssl_index(path: &Path, n: u64, all_revoked: bool) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 1..=n {
        if all_revoked || i.is_multiple_of(10) {
            writeln!(w, "R\t391231235959Z\t261201000000Z,superseded\tB1{i:016X}\tunknown\t/CN=Holder {i}")?;
        } else {
            writeln!(w, "V\t391231235959Z\t\tB1{i:016X}\tunknown\t/CN=Holder {i}")?;
        }
    }
    w.flush()?;
    std::fs::write(format!("{}.attr", path.display()), "unique_subject = no\n")?;
    Ok(())
}

fn openssl_peers(b: &mut Bench) -> anyhow::Result<()> {
    let (ca, key) = peer_ca(b, "ec")?;
    let n = b.o.certificates;
    // openssl ocsp: one connection at a time, HTTP/1.0.
    let index = b.dir.path().join("ocsp-index.txt");
    openssl_index(&index, n, false)?;
    let port = free_port()?;
    let log = b.dir.path().join("openssl-ocsp.log");
    // OpenSSL 3.0 takes a bare port number here (it listens on every address).
    let mut p = spawn_on_server_core(
        Path::new("openssl"),
        &[
            "ocsp",
            "-port",
            &port.to_string(),
            "-index",
            &index.display().to_string(),
            "-CA",
            &ca.display().to_string(),
            "-rsigner",
            &ca.display().to_string(),
            "-rkey",
            &key.display().to_string(),
            "-nmin",
            "60",
        ],
        &[],
        &log,
    )?;
    // Not wait_port: a connection closed without a request wedges `openssl ocsp` for good.
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("waiting for OCSP client connections") {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!("openssl ocsp exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("openssl ocsp did not start within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let hashes = issuer_hashes(&pem_der(&ca)?)?;
    let serials: Vec<Vec<u8>> = (0..1000u64).map(|k| seeded_serial(1 + (k * 7919 * 13) % n)).collect();
    let host = format!("127.0.0.1:{port}");
    let (_, _, post_raw, get_raw) = ocsp_loads(&hashes, &serials, &host, "/", "/");
    check_ocsp(&host, &post_raw[0])?;
    for c in [1u32, 16] {
        let load = b.connect(&[host.parse()?], c, &post_raw)?;
        let mut row = b.load_row(
            &format!("openssl-ocsp-post-{c}"),
            "openssl ocsp",
            "OCSP POST, signs each, new connection per request",
            c,
            load,
        );
        row.series = Some("openssl ocsp POST (new connection)".into());
        b.push(row);
    }
    let load = b.connect(&[host.parse()?], 16, &get_raw)?;
    let row =
        b.load_row("openssl-ocsp-get-16", "openssl ocsp", "OCSP GET, new connection per request", 16, load);
    b.push(row);
    drop(p);
    // openssl ca -gencrl over n entries: all revoked (the issue's figure), and every tenth
    // revoked (what Lanyard's CRL rows build from the seeded population: like for like).
    for (all, tag, revoked) in [(true, "all", n), (false, "tenth", n / 10)] {
        let crl_dir = b.dir.path().join(format!("gencrl-{tag}"));
        std::fs::create_dir_all(&crl_dir)?;
        openssl_index(&crl_dir.join("index.txt"), n, all)?;
        std::fs::write(crl_dir.join("crlnumber"), "1000\n")?;
        std::fs::write(
            crl_dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = bench\n[bench]\ndatabase = {d}/index.txt\ncrlnumber = {d}/crlnumber\ncertificate = {}\nprivate_key = {}\ndefault_md = sha256\ndefault_crl_days = 1\n",
                ca.display(),
                key.display(),
                d = crl_dir.display()
            ),
        )?;
        let out = Command::new("taskset")
            .args(["-c", "1", "/usr/bin/time", "-f", "TIME %e %M", "openssl", "ca", "-gencrl", "-config"])
            .arg(crl_dir.join("ca.cnf"))
            .arg("-out")
            .arg(crl_dir.join("crl.pem"))
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let Some((secs, kib)) = err.lines().find_map(|l| l.strip_prefix("TIME ")).and_then(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse::<f64>().ok()?, it.next()?.parse::<f64>().ok()?))
        }) else {
            bail!("openssl ca -gencrl: {err}");
        };
        let size = std::fs::metadata(crl_dir.join("crl.pem"))?.len() as f64 / 1e6;
        let what = format!("-gencrl, {revoked} of {n} entries revoked");
        b.push(Row::new(
            &format!("openssl-gencrl-{tag}-time"),
            "openssl ca",
            &format!("{what}: time"),
            secs,
            "s",
        ));
        b.push(Row::new(
            &format!("openssl-gencrl-{tag}-rss"),
            "openssl ca",
            &format!("{what}: peak RSS"),
            kib / 1024.0,
            "MiB",
        ));
        b.push(Row::new(
            &format!("openssl-gencrl-{tag}-size"),
            "openssl ca",
            &format!("{what}: CRL size (PEM)"),
            size,
            "MB",
        ));
    }
    Ok(())
}

/// Issuance rows on one Lanyard installation.
fn issuance(
    b: &mut Bench,
    l: &Lanyard,
    db: &str,
    servers: usize,
    devs: &[String],
    alg: lanyard_ca::KeyAlgorithm,
    conns: &[u32],
) -> anyhow::Result<()> {
    let label = if alg == lanyard_ca::KeyAlgorithm::Rsa2048 { "RSA-2048" } else { "P-256" };
    let csr = csr_pem(alg)?;
    let reqs = issuance_requests(l, devs, &csr);
    let urls: Vec<String> = l.https.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let plural = if servers > 1 { format!(", {servers} servers") } else { String::new() };
    for &c in conns {
        // Each server gets the devices in turn, so the two never fight over one.
        let per: Vec<Vec<WrkRequest>> = (0..servers)
            .map(|s| {
                reqs.clone_list()
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| i % servers == s)
                    .map(|(_, r)| r)
                    .collect()
            })
            .collect();
        let load = b.wrk(&urls, c, &per)?;
        let mut row = b.load_row(
            &format!("lanyard-issue-{db}-{servers}-{label}-{c}"),
            "Lanyard",
            &format!("issuance API, {db}{plural}, HTTPS, {label}"),
            c,
            load,
        );
        row.peer = Some(format!("cfssl-sign-{label}-{c}"));
        row.ceiling = Some(format!("ceiling-{label}"));
        if label == "P-256" {
            row.series = Some(format!("Lanyard issuance ({db}{plural})"));
        }
        b.push(row);
    }
    Ok(())
}

/// OCSP rows, the correctness probe and the CRL on a seeded installation.
fn ocsp(b: &mut Bench, l: &Lanyard, db: &str, seeded: &Seeded, full: bool) -> anyhow::Result<()> {
    let servers = l.pki.len();
    let plural = if servers > 1 { format!(", {servers} servers") } else { String::new() };
    let hashes = issuer_hashes(&l.issuing_der)?;
    let serials: Vec<Vec<u8>> = seeded.sample.iter().map(|s| s.0.clone()).collect();
    let host = format!("127.0.0.1:{}", l.pki[0]);
    let (post, get, post_raw, get_raw) = ocsp_loads(&hashes, &serials, &host, "/pki/ocsp", "/pki/ocsp/");
    let urls: Vec<String> = l.pki.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let addrs: Vec<SocketAddr> = l.pki.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let n = b.o.certificates;
    check_ocsp(&host, &post_raw[0])?;
    check_ocsp(&host, &get_raw[0])?;
    let conns = if full { b.conns() } else { vec![64] };
    for (method, reqs) in [("POST", &post), ("GET", &get)] {
        for &c in &conns {
            let probe = full && method == "POST" && c == 64;
            let sampler = probe.then(|| {
                let pids: Vec<u32> = l.procs.iter().map(Proc::pid).collect();
                let wait = Duration::from_secs(b.o.seconds) / 2;
                std::thread::spawn(move || {
                    std::thread::sleep(wait);
                    pids.iter().map(|p| memory(*p).0).sum::<f64>()
                })
            });
            let probe_thread = probe.then(|| probe_during_load(l, seeded, b.o.seconds));
            let load = b.wrk(&urls, c, &[reqs.clone_list()])?;
            let mut row = b.load_row(
                &format!("lanyard-ocsp-{method}-{db}-{servers}-{c}"),
                "Lanyard",
                &format!("OCSP {method}, keep-alive, {db}{plural}, {n} certs"),
                c,
                load,
            );
            row.peer = Some(format!("cfssl-ocsp-{}-{c}", method.to_lowercase()));
            if method == "POST" {
                row.series = Some(format!("Lanyard OCSP POST ({db}{plural})"));
            }
            b.push(row);
            if let Some(t) = sampler {
                let rss = t.join().unwrap_or(0.0);
                b.push(Row::new(
                    &format!("lanyard-rss-ocsp-{db}-{servers}"),
                    "Lanyard",
                    &format!("server RSS during OCSP POST @64, {db}{plural}, {n} certs"),
                    rss,
                    "MiB",
                ));
            }
            if let Some(t) = probe_thread {
                let verdict = t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the probe panicked")));
                let text = match verdict {
                    Ok(v) => v,
                    Err(e) => format!("probe failed: {e:#}"),
                };
                println!("  correctness probe ({db}{plural}): {text}");
                b.report.context.push((format!("OCSP probe under load ({db}{plural})"), text));
            }
        }
        let new_conns: Vec<u32> = if full { vec![1, 16, 64] } else { vec![16] };
        for c in new_conns {
            let raw = if method == "POST" { &post_raw } else { &get_raw };
            let load = b.connect(&addrs, c, raw)?;
            let mut row = b.load_row(
                &format!("lanyard-ocsp-{method}-new-{db}-{servers}-{c}"),
                "Lanyard",
                &format!("OCSP {method}, new connection per request, {db}{plural}"),
                c,
                load,
            );
            // `openssl ocsp` answers one connection at a time, so its figure at 16 stands for
            // any concurrency above one.
            row.peer = Some(match method {
                "POST" => format!("openssl-ocsp-post-{}", c.min(16)),
                _ => "openssl-ocsp-get-16".to_owned(),
            });
            if method == "POST" {
                row.series = Some(format!("Lanyard OCSP POST new connection ({db}{plural})"));
            }
            b.push(row);
        }
    }
    if full {
        // The CRL from the database: time, size, the server's peak-RSS growth.
        let m = measure_crl(l)?;
        std::fs::write(b.dir.path().join(format!("crl-tenth-{db}.der")), &m.der)?;
        crl_rows(b, "crl", "tenth", db, &m);
    }
    Ok(())
}

/// The time, size and memory rows of one measured CRL: keys `lanyard-<key>-{time,size,rss}-<db>`,
/// compared with the `openssl-gencrl-<peer>-*` rows.
fn crl_rows(b: &mut Bench, key: &str, peer: &str, db: &str, m: &CrlMeasure) {
    let entries = m.entries;
    let mut row = Row::new(
        &format!("lanyard-{key}-time-{db}"),
        "Lanyard",
        &format!("CRL from the database, {entries} revoked ({db}): time"),
        m.secs,
        "s",
    );
    row.peer = Some(format!("openssl-gencrl-{peer}-time"));
    b.push(row);
    b.push(Row::new(
        &format!("lanyard-{key}-size-{db}"),
        "Lanyard",
        &format!("CRL, {entries} revoked ({db}): size (DER)"),
        m.der.len() as f64 / 1e6,
        "MB",
    ));
    let mut row = Row::new(
        &format!("lanyard-{key}-rss-{db}"),
        "Lanyard",
        &format!("CRL, {entries} revoked ({db}): server RSS growth (peak while building)"),
        m.growth_mib,
        "MiB",
    );
    row.peer = Some(format!("openssl-gencrl-{peer}-rss"));
    b.push(row);
}

/// One CRL fetched from the server, measured.
struct CrlMeasure {
    der: Vec<u8>,
    /// Entries counted in the DER.
    entries: u64,
    /// From the request to the last byte.
    secs: f64,
    /// How far the server's resident memory rose above where it was before the request, at its
    /// highest: VmHWM after the request, the high-water mark having been reset to the current
    /// VmRSS just before (`/proc/<pid>/clear_refs`), minus VmRSS before.
    growth_mib: f64,
}

/// `GET /pki/crl` on the first server, timed, with the server's peak memory while it answers.
fn measure_crl(l: &Lanyard) -> anyhow::Result<CrlMeasure> {
    let pid = l.procs[0].pid();
    // Writing 5 to clear_refs resets VmHWM to the current VmRSS (Linux 4.0 and later).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of the server (pid {pid})"))?;
    let (rss_before, _) = memory(pid);
    let t = Instant::now();
    let mut resp = ureq::get(&format!("http://127.0.0.1:{}/pki/crl", l.pki[0])).call()?;
    let der = resp.body_mut().with_config().limit(1 << 31).read_to_vec()?;
    let secs = t.elapsed().as_secs_f64();
    let (_, hwm) = memory(pid);
    let entries = crl_entries(&der).context("GET /pki/crl: not a CRL")?;
    Ok(CrlMeasure { der, entries, secs, growth_mib: (hwm - rss_before).max(0.0) })
}

/// One DER element at the start of `b`: (tag, content, what follows).
fn split_tlv(b: &[u8]) -> anyhow::Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first().context("truncated")?;
    let (&first, rest) = rest.split_first().context("truncated")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            bail!("unsupported length");
        }
        (rest[..n].iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x)), &rest[n..])
    };
    if rest.len() < len {
        bail!("truncated");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// How many revokedCertificates a DER CRL lists (counted without decoding the entries).
fn crl_entries(der: &[u8]) -> anyhow::Result<u64> {
    let (_, list, _) = split_tlv(der)?;
    let (_, tbs, _) = split_tlv(list)?;
    // version, signature, issuer, thisUpdate; then nextUpdate (a time) if present.
    let mut rest = tbs;
    for _ in 0..4 {
        rest = split_tlv(rest)?.2;
    }
    let mut next = split_tlv(rest)?;
    if next.0 == 0x17 || next.0 == 0x18 {
        rest = next.2;
        if rest.is_empty() {
            return Ok(0);
        }
        next = split_tlv(rest)?;
    }
    if next.0 != 0x30 {
        return Ok(0); // no revokedCertificates: the extensions follow
    }
    let mut entries = next.1;
    let mut n = 0u64;
    while !entries.is_empty() {
        entries = split_tlv(entries)?.2;
        n += 1;
    }
    Ok(n)
}

/// `openssl crl -verify` over a CRL of the server's issuing CA: whether the signature checks out
/// against the chain, and its cRLNumber.
fn openssl_crl_check(l: &Lanyard, der_path: &Path) -> anyhow::Result<(bool, String)> {
    let chain = l.data.join("crl-chain.pem");
    let root = std::fs::read_to_string(l.data.join("ca").join(lanyard_server::pki::ROOT_PEM))?;
    std::fs::write(&chain, lanyard_ca::pem("CERTIFICATE", &l.issuing_der) + &root)?;
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(der_path)
        .arg("-CAfile")
        .arg(&chain)
        .args(["-verify", "-noout", "-crlnumber"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let number = text.lines().find_map(|l| l.strip_prefix("crlNumber=")).unwrap_or("?").to_owned();
    Ok((out.status.success() && text.contains("verify OK"), number))
}

/// A cRLNumber as `openssl crl -crlnumber` prints it (`0x` and hex digits).
fn crl_number(printed: &str) -> Option<u128> {
    u128::from_str_radix(printed.strip_prefix("0x")?, 16).ok()
}

/// Revokes, through SQL, every seeded certificate that is still active (superseded, now), so
/// the population is a million revoked like openssl's all-revoked index; then lets the
/// database settle as it would on its own shortly after (SQLite: the WAL checkpointed;
/// PostgreSQL: VACUUM ANALYZE, as autovacuum does after so many changed rows). One statement
/// (one transaction) per 50,000 rows: each revocation moves the revocation epoch, and on
/// PostgreSQL a million updates of its 64 rows in one transaction make every update walk a
/// long chain of row versions.
async fn revoke_seeded(db_url: &str, n: u64) -> anyhow::Result<u64> {
    let db = lanyard_store::Db::connect(db_url).await?;
    let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())?;
    let mut changed = 0;
    let chunk = 50_000u64;
    let mut from = 1u64;
    while from <= n {
        let to = (from + chunk).min(n + 1);
        // The seeded rows' ids (see `seed`), in [from, to); the certificates the bench issued
        // through the API are left as they are.
        let (lo, hi) =
            (format!("00000000-0000-4000-8000-{from:012x}"), format!("00000000-0000-4000-8000-{to:012x}"));
        // `$n` placeholders read the same on both databases.
        const REVOKE: &str = "UPDATE credentials SET state = 'revoked', revocation_reason = 'superseded', \
                              revoked_at = $1, updated_at = $1 WHERE state = 'active' AND id >= $2 AND id < $3";
        changed += match &db {
            lanyard_store::Db::Sqlite(p) => {
                sqlx::query(REVOKE).bind(now).bind(&lo).bind(&hi).execute(p).await?.rows_affected()
            }
            lanyard_store::Db::Postgres(p) => {
                sqlx::query(REVOKE).bind(now).bind(&lo).bind(&hi).execute(p).await?.rows_affected()
            }
        };
        from = to;
    }
    match &db {
        lanyard_store::Db::Sqlite(p) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(p).await?;
        }
        lanyard_store::Db::Postgres(p) => {
            sqlx::query("VACUUM ANALYZE credentials").execute(p).await?;
        }
    }
    Ok(changed)
}

/// The CRL of every seeded certificate revoked (the issue's "1,000,000 revoked entries"): time
/// of the first CRL after the change, DER size and the server's peak-memory growth, against
/// `openssl ca -gencrl` over the same million revoked; checked with `openssl crl -verify` and
/// for a cRLNumber above the previous CRL's.
fn crl_all_revoked(
    b: &mut Bench,
    l: &Lanyard,
    rt: &tokio::runtime::Runtime,
    db_url: &str,
    db: &str,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let changed = rt.block_on(revoke_seeded(db_url, b.o.certificates))?;
    println!(
        "  revoked the {changed} active seeded certificates through SQL in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let m = measure_crl(l)?;
    let entries = m.entries;
    let path = b.dir.path().join(format!("crl-all-{db}.der"));
    std::fs::write(&path, &m.der)?;
    let (verified, number) = openssl_crl_check(l, &path)?;
    let before = b.dir.path().join(format!("crl-tenth-{db}.der"));
    let grew = if before.exists() {
        let (_, earlier) = openssl_crl_check(l, &before)?;
        match (crl_number(&earlier), crl_number(&number)) {
            (Some(a), Some(b)) if b > a => "cRLNumber above the previous CRL's".to_owned(),
            _ => format!("cRLNumber {number} NOT above the previous {earlier}"),
        }
    } else {
        format!("cRLNumber {number}")
    };
    let verdict = format!(
        "{}: {entries} entries, openssl crl -verify {}, {grew}",
        if verified && !grew.contains("NOT") { "PASS" } else { "FAIL" },
        if verified { "OK" } else { "FAILED" }
    );
    println!("  CRL check ({db}, all revoked): {verdict}");
    b.report.context.push((format!("CRL of the revoked million checked ({db})"), verdict));
    crl_rows(b, "crl-all", "all", db, &m);
    Ok(())
}

/// While the load runs: `openssl ocsp` asks for a revoked and a good serial, then a certificate
/// is revoked through the API and the next answer for it must say revoked.
fn probe_during_load(
    l: &Lanyard,
    seeded: &Seeded,
    seconds: u64,
) -> std::thread::JoinHandle<anyhow::Result<String>> {
    let revoked = seeded.sample.iter().find(|s| s.1).map(|s| hex::encode(&s.0)).unwrap_or_default();
    let good = seeded.sample.iter().find(|s| !s.1).map(|s| hex::encode(&s.0)).unwrap_or_default();
    let (victim_id, victim_serial) = seeded.victim.clone();
    let l = Lanyard {
        procs: Vec::new(),
        https: l.https.clone(),
        pki: l.pki.clone(),
        data: l.data.clone(),
        http: l.http.clone(),
        token: l.token.clone(),
        issuing_der: l.issuing_der.clone(),
    };
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds.min(4)) / 2);
        let (r_status, r_ok) = openssl_probe(&l, &revoked)?;
        let (g_status, g_ok) = openssl_probe(&l, &good)?;
        let (before, _) = openssl_probe(&l, &victim_serial)?;
        l.api(
            "POST",
            &format!("/api/v1/credentials/{victim_id}/revoke"),
            json!({"reason": "key_compromise"}),
        )
        .or_else(|_| {
            l.api("POST", &format!("/api/v1/credentials/{victim_id}/revoke"), json!({"reason": "superseded"}))
        })?;
        let (after, a_ok) = openssl_probe(&l, &victim_serial)?;
        let pass = r_status == "revoked"
            && g_status == "good"
            && before == "good"
            && after == "revoked"
            && r_ok
            && g_ok
            && a_ok;
        Ok(format!(
            "{} — revoked serial: {r_status}; good serial: {g_status}; revoked through the API during the load: {before} before, {after} in the next response; signature, nonce, thisUpdate/nextUpdate checked: {}",
            if pass { "PASS" } else { "FAIL" },
            if r_ok && g_ok && a_ok { "yes" } else { "NO" }
        ))
    })
}

fn portal(b: &mut Bench) -> anyhow::Result<()> {
    let o = crate::bench_portal::Options {
        sessions: 200,
        requests: if b.o.quick { 5 } else { 20 },
        population: if b.o.quick { 500 } else { 1000 },
        think: Duration::from_millis(1000),
    };
    let (devices, search) = crate::bench_portal::measure(o)?;
    for (key, what, f) in [
        ("portal-devices", "portal My Devices, 200 sessions, ~1 s think time", devices),
        ("portal-search", "portal operator search, 200 sessions, ~1 s think time", search),
    ] {
        let mut row = Row::new(key, "Lanyard", what, f.rate(), "/s");
        row.p50_ms = Some(f.quantile_ms(0.50));
        row.p99_ms = Some(f.quantile_ms(0.99));
        row.failed = u64::from(f.failures());
        b.push(row);
    }
    Ok(())
}

pub fn run(o: Options) -> anyhow::Result<()> {
    const PARTS: [&str; 10] =
        ["ceiling", "cfssl", "openssl", "sqlite", "rsa", "postgres", "ocsp", "portal", "crl-all", "issuance"];
    if let Some(bad) = o.skip.iter().find(|s| !PARTS.contains(&s.as_str())) {
        bail!("--skip {bad:?}: the parts are {}", PARTS.join(", "));
    }
    if o.certificates < 10 {
        bail!("--certificates must be at least 10");
    }
    for (tool, package) in
        [("wrk", "wrk"), ("cfssl", "golang-cfssl"), ("openssl", "openssl"), ("taskset", "util-linux")]
    {
        require(tool, package)?;
    }
    if !Path::new("/usr/bin/time").exists() {
        bail!("/usr/bin/time is missing: install the Debian package time");
    }
    let began = Instant::now();
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new().prefix("lanyard-bench-").tempdir()?;
    let pg = o.postgres_url.clone();
    let mut b = Bench { o, dir, exe, report: Report::default() };
    versions(&mut b, &pg);
    let binary = std::fs::metadata(&b.exe)?.len() as f64 / 1048576.0;
    b.push(Row::new("binary", "Lanyard", "release binary size", binary, "MiB"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let on = |part: &str| !b.o.skip.iter().any(|s| s == part);
    let (c, f, o, sq, rsa, pgp, por) =
        (on("ceiling"), on("cfssl"), on("openssl"), on("sqlite"), on("rsa"), on("postgres"), on("portal"));
    // The OCSP rows of Lanyard (and their million-certificate seeding, which the CRL rows use
    // too) on SQLite and PostgreSQL: without them the database rows measure issuance alone.
    let oc = on("ocsp");
    let crl_all = oc && on("crl-all");
    // Without the issuance rows one device is enough (the OCSP rows issue their certificates to it).
    let (iss, issuance_devices) = if on("issuance") { (true, ISSUANCE_DEVICES) } else { (false, 1) };
    if c {
        println!("== ceilings");
        ceiling(&mut b)?;
    }
    if f {
        println!("== cfssl");
        cfssl(&mut b, &rt)?;
    }
    if o {
        println!("== openssl");
        openssl_peers(&mut b)?;
    }

    let n = b.o.certificates;
    if sq {
        println!("== Lanyard on SQLite");
        let url = format!("sqlite://{}?mode=rwc", b.dir.path().join("sqlite").join("lanyard.db").display());
        std::fs::create_dir_all(b.dir.path().join("sqlite"))?;
        let l = start_lanyard(&b, "sqlite", &url, 1, "p256")?;
        std::thread::sleep(Duration::from_secs(1));
        let idle = memory(l.procs[0].pid()).0;
        b.push(Row::new("lanyard-rss-idle", "Lanyard", "server RSS idle (SQLite, fresh)", idle, "MiB"));
        let devs = devices(&l, issuance_devices)?;
        let conns = b.conns();
        if iss {
            issuance(&mut b, &l, "SQLite", 1, &devs, lanyard_ca::KeyAlgorithm::EcP256, &conns)?;
        }
        if oc {
            let seeded = prepare_ocsp(&rt, &l, &url, &devs[0], n)?;
            ocsp(&mut b, &l, "SQLite", &seeded, true)?;
        }
        if crl_all {
            crl_all_revoked(&mut b, &l, &rt, &url, "SQLite")?;
        }
        let (rss, hwm) = memory(l.procs[0].pid());
        b.push(Row::new(
            "lanyard-rss-after-sqlite",
            "Lanyard",
            &format!("server RSS after the run, {n} certs (SQLite; peak {hwm:.0} MiB)"),
            rss,
            "MiB",
        ));
    }
    if rsa {
        println!("== Lanyard on SQLite, RSA-2048 CA");
        let url =
            format!("sqlite://{}?mode=rwc", b.dir.path().join("sqlite-rsa").join("lanyard.db").display());
        std::fs::create_dir_all(b.dir.path().join("sqlite-rsa"))?;
        let l = start_lanyard(&b, "sqlite-rsa", &url, 1, "rsa2048")?;
        // Every certificate slot of every group takes RSA-2048 keys.
        let groups = l.api("GET", "/api/v1/groups", Value::Null)?;
        for g in groups.as_array().context("GET /api/v1/groups: not a list")? {
            let mut policy = g["policy"].clone();
            if let Some(slots) = policy["certificates"].as_object_mut() {
                for slot in slots.values_mut() {
                    slot["algorithm"] = json!("rsa-2048");
                }
            }
            let id = g["id"].as_str().context("a group without id")?;
            l.api("PUT", &format!("/api/v1/groups/{id}/policy"), policy)?;
        }
        let devs = devices(&l, 16)?;
        issuance(&mut b, &l, "SQLite", 1, &devs, lanyard_ca::KeyAlgorithm::Rsa2048, &[16])?;
    }
    if let Some(pg) = pg.as_ref().filter(|_| pgp) {
        for servers in [1usize, 2] {
            println!("== Lanyard on PostgreSQL, {servers} server(s)");
            let name = format!("lanyard_bench_{}_{servers}", std::process::id());
            let url = rt.block_on(fresh_pg(pg, &name))?;
            let result = (|| -> anyhow::Result<()> {
                let l = start_lanyard(&b, &format!("pg{servers}"), &url, servers, "p256")?;
                let devs = devices(&l, issuance_devices)?;
                let conns = b.conns();
                if iss {
                    issuance(
                        &mut b,
                        &l,
                        "PostgreSQL",
                        servers,
                        &devs,
                        lanyard_ca::KeyAlgorithm::EcP256,
                        &conns,
                    )?;
                }
                if oc && (servers == 1 || !b.o.quick) {
                    let seeded = prepare_ocsp(&rt, &l, &url, &devs[0], n)?;
                    ocsp(&mut b, &l, "PostgreSQL", &seeded, servers == 1)?;
                    if servers == 1 && crl_all {
                        crl_all_revoked(&mut b, &l, &rt, &url, "PostgreSQL")?;
                    }
                }
                Ok(())
            })();
            rt.block_on(drop_pg(pg, &name));
            result?;
        }
    } else {
        println!("== no --postgres-url: PostgreSQL rows skipped");
    }
    if por {
        println!("== portal (in process, SQLite)");
        portal(&mut b)?;
    }

    // The servers' logs, for the failures a row counts.
    let logs = b.o.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    for entry in std::fs::read_dir(b.dir.path())?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(entry.path(), logs.join(entry.file_name()));
        }
    }
    b.report.context.push(("command".into(), std::env::args().collect::<Vec<_>>().join(" ")));
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    b.report.context.push(("load average at the end (1, 5, 15 min)".into(), loadavg));
    b.report.context.push(("duration".into(), format!("{:.1} min", began.elapsed().as_secs_f64() / 60.0)));
    println!("\n{}", b.report.text());
    b.report.write(&b.o.out)?;
    println!("wrote {}/table.md, figures.json, throughput.svg", b.o.out.display());
    Ok(())
}

/// `lanyard bench render`: the table, Markdown and SVG again from a figures.json.
pub fn render(figures: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(figures).with_context(|| format!("reading {}", figures.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a figures file", figures.display()))?;
    report.write(out)?;
    print!("{}", report.text());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn crl_entries_are_counted_in_the_der() {
        let h = lanyard_ca::hierarchy::Hierarchy::generate(
            &lanyard_ca::hierarchy::HierarchySpec::new(
                "Bench",
                lanyard_ca::KeyAlgorithm::EcP256,
                lanyard_ca::CaUrls::new("http://pki.bench.test").unwrap(),
            )
            .unwrap(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let params =
            lanyard_ca::CrlParams { number: 1, this_update: now, next_update: now + time::Duration::days(1) };
        for n in [0u64, 1, 3, 300] {
            let mut builder = h.issuing.crl_builder();
            for i in 0..n {
                builder
                    .push_parts(&(i + 1).to_be_bytes(), now, Some(lanyard_ca::RevocationReason::Superseded))
                    .unwrap();
            }
            let der = builder.finish(&params, None).unwrap();
            assert_eq!(crl_entries(&der).unwrap(), n);
            assert!(crl_entries(&der[..der.len() - 1]).is_err());
        }
        assert_eq!(crl_number("0x1f"), Some(31));
        assert_eq!(crl_number("31"), None);
    }

    #[test]
    fn decimal_serials_become_bytes() {
        assert_eq!(decimal_bytes("0").unwrap(), vec![0]);
        assert_eq!(decimal_bytes("256").unwrap(), vec![1, 0]);
        assert_eq!(
            decimal_bytes("12345678901234567890").unwrap(),
            12345678901234567890u64.to_be_bytes().to_vec()
        );
        assert!(decimal_bytes("12a").is_none());
    }

    #[test]
    fn request_files_round_trip_and_truncation_is_refused() {
        let reqs = vec![b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![0, 1, 2]];
        assert_eq!(decode_requests(&encode_requests(&reqs)).unwrap(), reqs);
        let mut bad = encode_requests(&reqs);
        bad.pop();
        assert!(decode_requests(&bad).is_err());
        assert!(decode_requests(&[]).is_err());
    }

    #[test]
    fn ocsp_requests_parse_as_der_with_the_serial() {
        let hashes = (vec![1u8; 20], vec![2u8; 20]);
        let der = ocsp_request(&hashes, &[0xb1, 0, 0, 0, 0, 0, 0, 0, 7], Some(&[9; 16]));
        let any = der::asn1::AnyRef::from_der(&der).unwrap();
        assert_eq!(der::Tagged::tag(&any), der::Tag::Sequence);
        let serial = [0x02, 0x0a, 0x00, 0xb1, 0, 0, 0, 0, 0, 0, 0, 7];
        assert!(der.windows(serial.len()).any(|w| w == serial));
    }
}
