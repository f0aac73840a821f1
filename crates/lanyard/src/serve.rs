//! `lanyard serve` and `lanyard audit verify`.

use crate::config::{CaKeyAlgorithm, Config};
use anyhow::{Context, bail};
use lanyard_core::audit::ChainVerifier;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, Repo};
use lanyard_core::secrets::Kek;
use lanyard_server::bootstrap::{announcement, ensure_admin};
use lanyard_server::{AppState, Pki, router};
use lanyard_store::Db;
use std::net::SocketAddr;
use std::sync::Arc;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn ca_algorithm(a: CaKeyAlgorithm) -> lanyard_ca::KeyAlgorithm {
    match a {
        CaKeyAlgorithm::P256 => lanyard_ca::KeyAlgorithm::EcP256,
        CaKeyAlgorithm::P384 => lanyard_ca::KeyAlgorithm::EcP384,
        CaKeyAlgorithm::Rsa2048 => lanyard_ca::KeyAlgorithm::Rsa2048,
        CaKeyAlgorithm::Rsa3072 => lanyard_ca::KeyAlgorithm::Rsa3072,
    }
}

async fn open_db(cfg: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&cfg.database_url).await.context("connecting to the database")?;
    db.migrate().await.context("migrating the database")?;
    Ok(db)
}

fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// Starts the server: data directory, database, key-encryption key and CA are created on first
/// start and reused afterwards.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    let addr: SocketAddr = cfg.listen.parse().context("listen address")?;
    if !addr.ip().is_loopback() {
        bail!(
            "listen = {addr}: serving beyond loopback needs TLS, which Lanyard does not serve yet; \
             bind to 127.0.0.1 (or put a TLS-terminating proxy in front)"
        );
    }
    create_private_dir(&cfg.data_dir)?;
    runtime()?.block_on(async {
        let clock = Arc::new(SystemClock);
        let db = open_db(&cfg).await?;
        if let Some(password) =
            ensure_admin(&db, &clock).await.context("creating the bootstrap administrator")?
        {
            // The only copy of the password: it is stored hashed and never logged.
            println!("{}", announcement(&password));
        }
        // Created now so card secrets can be sealed from the first issuance on.
        Kek::load_or_create(&cfg.kek_file)
            .with_context(|| format!("key-encryption key {}", cfg.kek_file.display()))?;
        let pki = Pki::load_or_create(
            &cfg.data_dir.join("ca"),
            "Lanyard",
            ca_algorithm(cfg.ca_key_algorithm),
            &cfg.public_url,
            clock.now(),
        )
        .context("loading the CA")?;
        let state = AppState::new(Arc::new(db), Arc::new(pki), clock);
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("Lanyard is listening on http://{addr}");
        println!("  CA certificates: {0}/pki/root.crt {0}/pki/ca.crt", cfg.public_url);
        println!("  CRL:             {}/pki/crl", cfg.public_url);
        println!("  OCSP:            {}/pki/ocsp", cfg.public_url);
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

/// Reads the whole audit log and checks its hash chain; names the first bad event.
pub fn audit_verify(cfg: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let db = open_db(&cfg).await?;
        let mut tx = db.begin().await?;
        let mut verifier = ChainVerifier::new();
        let mut after_seq = 0;
        loop {
            let page = tx.list_audit(&AuditQuery { after_seq, target: None, limit: 1000 }).await?;
            for event in &page {
                if let Err(e) = verifier.push(event) {
                    bail!("audit log verification FAILED: {e}");
                }
            }
            match page.last() {
                Some(last) if page.len() == 1000 => after_seq = last.seq,
                _ => break,
            }
        }
        let head = verifier.head();
        println!("audit log verified: {} events, head {} {}", head.seq, head.seq, hex::encode(head.hash));
        Ok(())
    })
}
