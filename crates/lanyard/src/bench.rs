//! `lanyard bench card`: APDU round trips and a generate + certificate write through PC/SC.
//! Figures go to docs/BENCHMARKS.md with the command that produced them.

use anyhow::{Context, bail};
use clap::Subcommand;
use lanyard_piv::transport::PcscTransport;
use lanyard_piv::{KeyAlgorithm, ManagementKey, MgmAlgorithm, Piv, Slot, tag};
use lanyard_vcard::x509::{self, CertError, CertTemplate};
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Benchmark a card. DESTRUCTIVE: overwrites the key and certificate in slot 9A, so it
    /// refuses any reader that is not a "Virtual PCD" unless --i-know-this-erases-9a is given.
    Card {
        #[arg(long, short, default_value = "Virtual PCD 00 00")]
        reader: String,
        /// Iterations of each round-trip measurement.
        #[arg(long, default_value_t = 200)]
        iterations: u32,
        /// Iterations of the generate + write-certificate sequence per algorithm.
        #[arg(long, default_value_t = 5)]
        sequences: u32,
        /// PIN of the card.
        #[arg(long, default_value = "123456")]
        pin: String,
        /// Management key (hex); the factory 3DES key when absent.
        #[arg(long)]
        mgm_key: Option<String>,
        #[arg(long)]
        i_know_this_erases_9a: bool,
    },
    /// Full issuance of fresh virtual cards through pcscd: `lanyard serve`'s router in this
    /// process (SQLite, software CA), the agent's relay, and a `lanyard vcard run` per card.
    /// Splits the wall time into card, server and agent time and counts round trips.
    Issuance {
        /// Cards to issue (one after another, each factory-fresh).
        #[arg(long, default_value_t = 10)]
        cards: u32,
        /// Key algorithm for all four slots: p-256, p-384, rsa-2048 or rsa-3072.
        #[arg(long, default_value = "p-256")]
        algorithm: String,
    },
    /// Portal pages under load: My Devices and the operator search, each with many signed-in
    /// sessions asking at once (`lanyard serve`'s router in this process, SQLite). Prints
    /// latency percentiles and throughput.
    Portal {
        /// Signed-in sessions asking at once (cardholders for My Devices, operators for search).
        #[arg(long, default_value_t = 200)]
        sessions: u32,
        /// Requests each session makes.
        #[arg(long, default_value_t = 50)]
        requests: u32,
        /// Other users in the directory, so that searches run over a realistic population.
        #[arg(long, default_value_t = 5000)]
        population: u32,
        /// Mean pause of each session between its requests, in milliseconds (0: none, the
        /// server saturated).
        #[arg(long, default_value_t = 1000)]
        think_ms: u64,
    },
    /// The server at scale, side by side with cfssl and openssl on this machine, in one run:
    /// issuance through the API (SQLite, PostgreSQL, one and two servers), OCSP with a million
    /// certificates, the CRL, portal latency, memory. Starts `lanyard serve` processes on CPU 1
    /// and loads them with wrk on CPU 0. Prints one table and writes table.md, figures.json and
    /// throughput.svg to --out. `./scripts/bench` installs what it needs and runs it.
    Server {
        /// A PostgreSQL server to make throwaway databases on (a role with CREATEDB); without
        /// it the PostgreSQL rows are skipped.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Where the table, figures and plot go.
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
        /// Fewer rows, 2 s each and 100,000 certificates: for development, not for the docs.
        #[arg(long)]
        quick: bool,
        /// Seconds per load row [default: 8, or 2 with --quick].
        #[arg(long)]
        seconds: Option<u64>,
        /// Certificates in the database for the OCSP and CRL rows [default: 1,000,000, or
        /// 100,000 with --quick].
        #[arg(long)]
        certificates: Option<u64>,
        /// Parts to leave out, comma-separated: ceiling, cfssl, openssl, sqlite, rsa, postgres,
        /// ocsp (Lanyard's OCSP rows on SQLite and PostgreSQL, their seeding and the CRL rows),
        /// portal, crl-all (the CRL of the million all revoked, after the OCSP rows), issuance
        /// (the API issuance rows on SQLite and PostgreSQL); their rows are then missing from
        /// the table.
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
    },
    /// Renders table.md and throughput.svg again from a figures.json of `bench server`.
    Render {
        /// The figures.json to read.
        figures: std::path::PathBuf,
        /// Where the table and plot go.
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
    },
    /// A load client for servers that need a new TCP connection per request (what `bench
    /// server` runs on CPU 0): prints one BENCHJSON line.
    #[command(hide = true)]
    Connect {
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Requests to cycle through: each a 4-byte big-endian length and the raw HTTP request.
        #[arg(long)]
        requests: std::path::PathBuf,
        #[arg(long, default_value_t = 16)]
        connections: u32,
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Card { reader, iterations, sequences, pin, mgm_key, i_know_this_erases_9a } => {
            card(reader, iterations, sequences, pin, mgm_key, i_know_this_erases_9a)
        }
        BenchCommand::Issuance { cards, algorithm } => crate::bench_issuance::run(cards, &algorithm),
        BenchCommand::Portal { sessions, requests, population, think_ms } => {
            crate::bench_portal::run(crate::bench_portal::Options {
                sessions,
                requests,
                population,
                think: Duration::from_millis(think_ms),
            })
        }
        BenchCommand::Server { postgres_url, out, quick, seconds, certificates, skip } => {
            let seconds = seconds.unwrap_or(if quick { 2 } else { 8 });
            if seconds == 0 {
                bail!("--seconds must be at least 1");
            }
            crate::bench_server::run(crate::bench_server::Options {
                quick,
                out,
                postgres_url,
                seconds,
                certificates: certificates.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
                skip,
            })
        }
        BenchCommand::Render { figures, out } => crate::bench_server::render(&figures, &out),
        BenchCommand::Connect { addr, requests, connections, seconds } => {
            crate::bench_server::connect(addr, &requests, connections, seconds)
        }
    }
}

fn card(
    reader: String,
    iterations: u32,
    sequences: u32,
    pin: String,
    mgm_key: Option<String>,
    i_know_this_erases_9a: bool,
) -> anyhow::Result<()> {
    if !reader.to_lowercase().contains("virtual pcd") && !i_know_this_erases_9a {
        bail!("refusing to overwrite slot 9A of {reader:?}; pass --i-know-this-erases-9a");
    }
    let key = match mgm_key {
        Some(h) => {
            let b = hex::decode(h).context("management key hex")?;
            let alg = if b.len() == 24 {
                MgmAlgorithm::TripleDes
            } else if b.len() == 16 {
                MgmAlgorithm::Aes128
            } else {
                MgmAlgorithm::Aes256
            };
            ManagementKey::new(alg, &b)?
        }
        None => ManagementKey::factory(MgmAlgorithm::TripleDes),
    };
    let t = PcscTransport::connect(&reader)?;
    println!("reader: {}", t.reader());
    let mut piv = Piv::new(t);
    piv.select()?;
    piv.verify_pin(pin.as_bytes())?;
    piv.authenticate_mutual(&key)?;

    // Round trips of a small GET DATA (discovery object, 20 bytes).
    let start = Instant::now();
    for _ in 0..iterations {
        piv.get_data(tag::DISCOVERY)?;
    }
    report("GET DATA discovery (7E)", iterations, start.elapsed());

    piv.generate(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, None, None)?;
    let hash = Sha256::digest(b"lanyard benchmark");
    let start = Instant::now();
    for _ in 0..iterations {
        piv.sign(Slot::AUTHENTICATION, KeyAlgorithm::EccP256, &hash)?;
    }
    report("GENERAL AUTHENTICATE sign P-256 (9A)", iterations, start.elapsed());

    for alg in [KeyAlgorithm::EccP256, KeyAlgorithm::Rsa2048] {
        let mut total = Duration::ZERO;
        let mut apdus = 0;
        for _ in 0..sequences {
            let before = piv.round_trips();
            let start = Instant::now();
            generate_and_write_certificate(&mut piv, alg)?;
            total += start.elapsed();
            apdus = piv.round_trips() - before;
        }
        let per = total / sequences.max(1);
        println!(
            "generate {alg} in 9A + self-signed certificate + PUT DATA: {:.1} ms per sequence ({apdus} APDUs), {sequences} runs",
            per.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn report(what: &str, n: u32, d: Duration) {
    let per = d.as_secs_f64() / f64::from(n.max(1));
    println!("{what}: {:.0} round trips/s ({:.3} ms each, {n} runs)", 1.0 / per, per * 1e3);
}

/// Generates a key in 9A and writes a self-signed certificate for it, signed on the card
/// (what `yubico-piv-tool -a generate -a selfsign -a import-certificate` does).
fn generate_and_write_certificate(piv: &mut Piv<PcscTransport>, alg: KeyAlgorithm) -> anyhow::Result<()> {
    let public = piv.generate(Slot::AUTHENTICATION, alg, None, None)?;
    let spki = crate::bench::spki_of(&public)?;
    let name = x509_cert::name::Name::from_str("CN=Lanyard benchmark").map_err(CertError::from)?;
    let now = std::time::SystemTime::from(lanyard_core::clock::Clock::now(&lanyard_core::clock::SystemClock));
    let cell = std::cell::RefCell::new(&mut *piv);
    let signer = |tbs: &[u8]| -> Result<Vec<u8>, CertError> {
        let digest = Sha256::digest(tbs);
        let mut p = cell.borrow_mut();
        if alg.is_rsa() {
            Err(CertError::Other(
                "RSA self-signing is not benchmarked; P-256 signs the RSA certificate".into(),
            ))
        } else {
            p.sign(Slot::AUTHENTICATION, alg, &digest).map_err(|e| CertError::Other(e.to_string()))
        }
    };
    let template = CertTemplate {
        subject: name.clone(),
        spki,
        serial: x509::random_serial()?,
        validity: x509_cert::time::Validity {
            not_before: x509::x509_time(now)?,
            not_after: x509::x509_time(now + Duration::from_secs(86400))?,
        },
        extensions: Vec::new(),
    };
    let cert = if alg.is_rsa() {
        // The RSA key's certificate is signed by a throwaway software key: the measured part is
        // the card's key generation and the object write.
        let issuer = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        x509::sign(template, &name, &issuer)?
    } else {
        x509::sign_with(template, &name, &signer)?
    };
    let der = der::Encode::to_der(&cert)?;
    let object = lanyard_piv::objects::CertificateObject::new(der).encode(false);
    piv.put_data(tag::CERT_PIV_AUTH, &object)?;
    Ok(())
}

/// SubjectPublicKeyInfo for a key the card returned.
pub fn spki_of(public: &lanyard_piv::PublicKey) -> anyhow::Result<spki::SubjectPublicKeyInfoOwned> {
    use der::Decode;
    let der = match public {
        lanyard_piv::PublicKey::Ec { algorithm: KeyAlgorithm::EccP256, point } => {
            let pk = p256::PublicKey::from_sec1_bytes(point)?;
            spki::EncodePublicKey::to_public_key_der(&pk)?.into_vec()
        }
        lanyard_piv::PublicKey::Rsa { modulus, exponent } => {
            // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let n = der::asn1::UintRef::new(modulus)?;
            let e = der::asn1::UintRef::new(exponent)?;
            let seq = der::Encode::to_der(&RsaPub { n, e })?;
            let spki = spki::SubjectPublicKeyInfoRef {
                algorithm: spki::AlgorithmIdentifierRef {
                    oid: spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"),
                    parameters: Some(der::asn1::AnyRef::NULL),
                },
                subject_public_key: der::asn1::BitStringRef::from_bytes(&seq)?,
            };
            der::Encode::to_der(&spki)?
        }
        other => bail!("no SPKI conversion for {other:?}"),
    };
    Ok(spki::SubjectPublicKeyInfoOwned::from_der(&der)?)
}

#[derive(der::Sequence)]
struct RsaPub<'a> {
    n: der::asn1::UintRef<'a>,
    e: der::asn1::UintRef<'a>,
}

/// What the in-process benchmarks share: `lanyard serve`'s router on a loopback port, over a
/// SQLite file and a throwaway CA in `dir` (a benchmark never touches an installation).
pub(crate) mod in_process {
    use std::path::Path;
    use std::sync::Arc;

    use anyhow::Context;
    use lanyard_core::clock::{Clock, SystemClock};
    use lanyard_core::secrets::Kek;
    use lanyard_server::issuance::IssuanceConfig;
    use lanyard_server::{AppState, Pki, router};
    use lanyard_store::Db;
    use serde_json::{Value, json};

    /// A migrated SQLite database in `dir` with its bootstrap administrator, and that
    /// administrator's password.
    pub async fn database(dir: &Path) -> anyhow::Result<(Db, String)> {
        let db = Db::connect(&format!("sqlite://{}?mode=rwc", dir.join("bench.db").display())).await?;
        db.migrate().await?;
        let password = lanyard_server::bootstrap::ensure_admin(&db, &SystemClock)
            .await?
            .context("a fresh database has no administrator yet")?;
        Ok((db, secrecy::ExposeSecret::expose_secret(&password).to_owned()))
    }

    /// Serves `db` on a loopback port from this runtime, trusting `attestation_roots` (DER).
    pub async fn serve(
        db: Db,
        dir: &Path,
        attestation_roots: Vec<Vec<u8>>,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let clock = Arc::new(SystemClock);
        let pki = Pki::create(
            &dir.join("ca"),
            "Lanyard Bench",
            lanyard_ca::KeyAlgorithm::EcP256,
            "http://127.0.0.1",
            clock.now(),
        )?;
        let state = AppState::new(Arc::new(db), Arc::new(pki), clock as Arc<dyn Clock>)
            .with_issuance(IssuanceConfig::new(Kek::generate()?, attestation_roots));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        Ok(addr)
    }

    /// Signs in as `username`: the session cookie (`name=value`) and its CSRF token.
    pub fn sign_in(
        http: &ureq::Agent,
        base: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(String, String)> {
        let mut resp = http
            .post(format!("{base}/api/v1/login"))
            .send_json(json!({"username": username, "password": password}))?;
        if resp.status() != 200 {
            anyhow::bail!("signing in as {username}: HTTP {}", resp.status());
        }
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("login set no cookie")?
            .to_owned();
        let body: Value = resp.body_mut().read_json()?;
        let csrf = body["csrf_token"].as_str().context("no CSRF token")?.to_owned();
        Ok((cookie, csrf))
    }

    /// Signs in as the administrator and makes an API token: the `Authorization` header value.
    pub fn admin_token(http: &ureq::Agent, base: &str, password: &str) -> anyhow::Result<String> {
        let (cookie, csrf) = sign_in(http, base, "admin", password)?;
        let created: Value = http
            .post(format!("{base}/api/v1/tokens"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send_json(json!({"name": "bench"}))?
            .body_mut()
            .read_json()?;
        Ok(format!("Bearer {}", created["token"].as_str().context("no API token")?))
    }
}
