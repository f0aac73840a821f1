//! `lanyard serve` and `lanyard audit verify`.

use crate::config::{Config, TlsMode, sqlite_file};
use crate::init_cmd::{initialize_and_report, material};
use anyhow::{Context, bail};
use lanyard_core::audit::ChainVerifier;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, Repo};
use lanyard_core::secrets::Kek;
use lanyard_server::install::{self, InstallError};
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use std::net::SocketAddr;
use std::sync::Arc;

/// How often a running server checks whether its own certificates need renewing.
const OWN_CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub(crate) async fn open_db(cfg: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&cfg.database_url).await.context("connecting to the database")?;
    db.migrate().await.context("migrating the database")?;
    Ok(db)
}

pub(crate) fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// The CA and key-encryption key to serve with: those of an initialised installation, checked
/// against the database's installation record, or, for the embedded default on a fresh data
/// directory only, a new installation made by the same code as `lanyard init`.
async fn installation(cfg: &Config, db: &Db, now: time::OffsetDateTime) -> anyhow::Result<(Pki, Kek)> {
    let ca_dir = cfg.ca_dir();
    let material = material(cfg, &ca_dir);
    match install::open(db, &material, now).await {
        Ok((pki, kek, _)) => Ok((pki, kek)),
        Err(InstallError::NotInitialized) => {
            let ca_files = Pki::files(&ca_dir).context("looking for a CA")?;
            let why_not = match cfg.not_embedded_default() {
                Some(reason) => Some(reason),
                None if ca_files != lanyard_server::pki::CaFiles::Absent => {
                    Some(format!("{} holds CA files", ca_dir.display()))
                }
                None if cfg.kek_file.exists() => {
                    Some(format!("the key-encryption key {} exists", cfg.kek_file.display()))
                }
                None => None,
            };
            if let Some(why_not) = why_not {
                bail!(
                    "the database has no installation record: run `lanyard init` with this configuration \
                     first ({why_not}, so `serve` does not initialise by itself; it only does so for the \
                     embedded default on a fresh data directory)"
                );
            }
            let init = initialize_and_report(cfg, db, now).await?;
            Ok((init.pki, init.kek))
        }
        Err(e) => Err(e).context("refusing to start"),
    }
}

/// Opens the database for `serve`. In the embedded default the database lives in the data
/// directory, which is created (private) when missing; any other SQLite file must exist already,
/// so that a mistyped path is an error rather than a new, empty database.
async fn open_db_for_serve(cfg: &Config) -> anyhow::Result<Db> {
    if cfg.not_embedded_default().is_none() {
        create_private_dir(&cfg.data_dir)?;
    } else if let Some(file) = sqlite_file(&cfg.database_url)
        && !file.exists()
    {
        bail!(
            "the database {} does not exist: run `lanyard init` with this configuration first",
            file.display()
        );
    }
    open_db(cfg).await
}

/// Starts the server on an initialised installation (see [`installation`]).
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    let addr: SocketAddr = cfg.listen.parse().context("listen address")?;
    if cfg.tls_mode == TlsMode::Off && !addr.ip().is_loopback() {
        bail!("listen = {addr}: plain HTTP is only served on a loopback address; set tls.mode = on");
    }
    runtime()?.block_on(async {
        let clock = Arc::new(SystemClock);
        let db = open_db_for_serve(&cfg).await?;
        let (pki, kek) = installation(&cfg, &db, clock.now()).await?;
        let attestation_roots = load_attestation_roots(&cfg.attestation_roots)?;
        let mut piv_trust_anchors = Vec::new();
        for file in &cfg.piv_trust_anchors {
            let pem =
                std::fs::read(file).with_context(|| format!("piv_trust_anchors: {}", file.display()))?;
            // Checked now, so a bad file stops the start instead of every sponsor proof.
            lanyard_ca::card_check::TrustStore::default().add_pem_bundle(&pem).with_context(|| {
                format!("piv_trust_anchors: {} holds no PEM certificates", file.display())
            })?;
            piv_trust_anchors.push(pem);
        }
        let mobile = lanyard_server::api::mobile::MobileConfig {
            android_roots: load_attestation_roots(&cfg.android_attestation_roots)?,
            apple_roots: load_attestation_roots(&cfg.apple_attestation_roots)?,
            apple_app_ids: cfg.apple_app_ids.clone(),
        };
        // The certificate this server issued itself, renewed while it runs (see below).
        let mut own_tls = None;
        let tls = match (cfg.tls_mode, &cfg.tls_cert_file, &cfg.tls_key_file) {
            (TlsMode::Off, _, _) => None,
            (TlsMode::On, Some(cert), Some(key)) => {
                Some(lanyard_server::tls::server_config_from_files(cert, key)?)
            }
            _ => {
                let (dns, ip) = tls_names(&cfg.public_url, addr)?;
                let id = pki.tls_identity(&cfg.data_dir.join("ca"), &dns, &ip, clock.now())?;
                let (config, cert) = lanyard_server::tls::server_config_reloadable(&id.chain, &id.pkcs8_key)?;
                own_tls = Some((cert, dns, ip));
                Some(config)
            }
        };
        // Card sessions whose server stopped (this one before the restart, or another sharing the
        // database) are failed once their lease has run out, so they can be resumed or rolled
        // back; live sessions of other servers keep renewing theirs and are left alone.
        let op = lanyard_core::audit::OperationId::random();
        let failed = lanyard_core::authz::System::new(op, clock.now())
            .fail_interrupted_jobs(&db)
            .await
            .context("recording interrupted card sessions")?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "card sessions whose server stopped were recorded failed; they can be resumed or rolled back"
            );
        }
        let state = AppState::new(Arc::new(db), Arc::new(pki.with_crl_shards(cfg.crl_shards)), clock.clone())
            .with_issuance(lanyard_server::issuance::IssuanceConfig {
                piv_trust_anchors,
                piv_user_match: cfg.piv_user_match,
                ..lanyard_server::issuance::IssuanceConfig::new(kek, attestation_roots)
            })
            .with_public_url(&cfg.public_url)
            .with_mobile(mobile)
            .with_shared_pins();
        // Sessions this process ran before a restart still hold leases that are running out:
        // the sweeper fails them (and any another server abandons) a few minutes later.
        tokio::spawn(lanyard_server::issuance::sweep_abandoned_jobs(state.clone()));
        // The OCSP responder certificate (90 days) is renewed in its last third, by whichever
        // server sharing the CA directory notices first; the others take its file.
        lanyard_server::pki::spawn_renewal(
            Arc::clone(&state.pki),
            cfg.data_dir.join("ca"),
            clock.clone(),
            OWN_CERTIFICATE_CHECK,
        );
        // Likewise its own TLS certificate (same key): renewed here or taken from the file
        // another server renewed, and presented from the next handshake on.
        if let Some((cert, dns, ip)) = own_tls {
            let (pki, dir) = (Arc::clone(&state.pki), cfg.data_dir.join("ca"));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(OWN_CERTIFICATE_CHECK).await;
                    let (pki, dir, dns, ip, now) =
                        (Arc::clone(&pki), dir.clone(), dns.clone(), ip.clone(), clock.now());
                    let renewed =
                        tokio::task::spawn_blocking(move || pki.tls_identity(&dir, &dns, &ip, now)).await;
                    match renewed {
                        Ok(Ok(id)) if id.chain.first() != Some(&cert.leaf()) => match cert
                            .replace(&id.chain, &id.pkcs8_key)
                        {
                            Ok(()) => tracing::info!("now presenting the renewed TLS certificate"),
                            Err(e) => tracing::error!(error = %e, "the renewed TLS certificate is unusable"),
                        },
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "renewing the TLS certificate failed"),
                        Err(e) => tracing::error!(error = %e, "the TLS renewal task failed"),
                    }
                }
            });
        }
        // Chains audit events after their commit (PostgreSQL; SQLite does it in its commits).
        let _sealer = state.repo.spawn_audit_sealer();
        // Frames other servers on the database left for agents linked here (docs/deployment.md).
        tokio::spawn(lanyard_server::cluster::relay_frames(state.clone()));
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("Lanyard is listening on {scheme}://{addr} (public URL {})", cfg.public_url);
        println!("  CA certificates: {0}/pki/root.crt {0}/pki/ca.crt", cfg.pki_url);
        println!("  CRL:             {}/pki/crl", cfg.pki_url);
        println!("  OCSP:            {}/pki/ocsp", cfg.pki_url);
        if let Some(pki_listen) = &cfg.pki_listen {
            let pki_addr: SocketAddr = pki_listen.parse().context("pki_listen address")?;
            let pki_tcp = tokio::net::TcpListener::bind(pki_addr)
                .await
                .with_context(|| format!("binding {pki_addr}"))?;
            println!("  PKI endpoints also on http://{pki_addr}/pki/");
            let app = lanyard_server::pki_router(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(pki_tcp, app).await {
                    tracing::error!(error = %e, "the PKI listener stopped");
                }
            });
        }
        if tls.is_some() && cfg.tls_cert_file.is_none() {
            println!(
                "  TLS certificate from Lanyard's own CA; clients trust {} (PEM)",
                cfg.ca_dir().join(lanyard_server::pki::ROOT_PEM).display()
            );
        }
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match tls {
            Some(config) => {
                let listener = lanyard_server::tls::TlsListener::new(tcp, config)?;
                // The client's address reaches the handlers (the enrolment protocol throttles per
                // address).
                let app =
                    router(state).into_make_service_with_connect_info::<lanyard_server::tls::ClientAddr>();
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await
            }
            None => {
                let app =
                    router(state).into_make_service_with_connect_info::<lanyard_server::tls::ClientAddr>();
                axum::serve(tcp, app).with_graceful_shutdown(shutdown).await
            }
        }
        .context("serving")
    })
}

/// Reads every certificate from the PEM files (DER files are accepted too).
fn load_attestation_roots(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("attestation root {}", file.display()))?;
        let before = roots.len();
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            roots.push(cert.with_context(|| format!("attestation root {}", file.display()))?.to_vec());
        }
        if roots.len() == before {
            // Not PEM: take the file as one DER certificate.
            roots.push(bytes);
        }
    }
    Ok(roots)
}

/// The names the server's own TLS certificate covers: the host of `public_url`, the listening
/// address when it is a specific one, and `localhost`/127.0.0.1/::1 when listening on loopback.
fn tls_names(public_url: &str, listen: SocketAddr) -> anyhow::Result<(Vec<String>, Vec<std::net::IpAddr>)> {
    let mut dns = Vec::new();
    let mut ip = Vec::new();
    let host = lanyard_protocol::url::parse_server(public_url).context("public_url")?.host;
    match host.parse::<std::net::IpAddr>() {
        Ok(a) => ip.push(a),
        Err(_) => dns.push(host.to_ascii_lowercase()),
    }
    if !listen.ip().is_unspecified() {
        ip.push(listen.ip());
    }
    if listen.ip().is_loopback() {
        dns.push("localhost".into());
        ip.extend([
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]);
    }
    dns.sort();
    dns.dedup();
    ip.sort();
    ip.dedup();
    Ok((dns, ip))
}

/// Reads the whole audit log and checks its hash chain; names the first bad event, and says how
/// many events the sealer has not chained yet (they are not covered by the check).
pub fn audit_verify(cfg: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let db = open_db(&cfg).await?;
        // A read unit of work: one snapshot of the log, and the server keeps writing meanwhile.
        let mut tx = db.read().await?;
        let mut verifier = ChainVerifier::new();
        let mut after_seq = 0;
        loop {
            let page = tx
                .list_audit(&AuditQuery { after_seq, target: None, limit: 1000, ..Default::default() })
                .await?;
            for event in &page {
                if let Err(e) = verifier.push(event) {
                    bail!("audit log verification FAILED: {e}");
                }
            }
            // Unsealed events come last: once one shows up, the sealed part has been read.
            match page.last() {
                Some(last) if page.len() == 1000 && last.sealed => after_seq = last.seq,
                _ => break,
            }
        }
        let unsealed = tx.unsealed_audit().await?;
        let head = verifier.head();
        println!("audit log verified: {} events, head {} {}", head.seq, head.seq, hex::encode(head.hash));
        if unsealed > 0 {
            println!(
                "{unsealed} more events are committed but not sealed yet (the server's sealer chains them \
                 shortly; run again to cover them)"
            );
        } else {
            println!("every event is sealed");
        }
        Ok(())
    })
}
