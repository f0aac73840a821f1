//! `lanyard init`: makes a new installation (data directory, database schema, key-encryption key,
//! CA, bootstrap administrator) and records its root fingerprint and KEK id in the database.
//! `lanyard serve` runs the same code on a fresh embedded default installation.

use crate::config::{CaKeyAlgorithm, Config};
use crate::serve::{create_private_dir, open_db};
use anyhow::Context;
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_server::bootstrap::announcement;
use lanyard_server::install::{Initialized, Material, initialize};
use lanyard_store::Db;

/// The organisation named in the CA's certificates.
pub const ORGANIZATION: &str = "Lanyard";

fn ca_algorithm(a: CaKeyAlgorithm) -> lanyard_ca::KeyAlgorithm {
    match a {
        CaKeyAlgorithm::P256 => lanyard_ca::KeyAlgorithm::EcP256,
        CaKeyAlgorithm::P384 => lanyard_ca::KeyAlgorithm::EcP384,
        CaKeyAlgorithm::Rsa2048 => lanyard_ca::KeyAlgorithm::Rsa2048,
        CaKeyAlgorithm::Rsa3072 => lanyard_ca::KeyAlgorithm::Rsa3072,
    }
}

/// Where the configuration keeps the CA and the key-encryption key.
pub fn material<'a>(cfg: &'a Config, ca_dir: &'a std::path::Path) -> Material<'a> {
    Material {
        ca_dir,
        kek_file: &cfg.kek_file,
        organization: ORGANIZATION,
        key_algorithm: ca_algorithm(cfg.ca_key_algorithm),
        pki_url: &cfg.pki_url,
    }
}

/// Initialises the installation on an open, migrated database and prints what it did, the
/// administrator's password included (its only copy).
pub async fn initialize_and_report(
    cfg: &Config,
    db: &Db,
    now: time::OffsetDateTime,
) -> anyhow::Result<Initialized> {
    let ca_dir = cfg.ca_dir();
    let init = initialize(db, &material(cfg, &ca_dir), now).await.context("lanyard init")?;
    let made = |created: bool| if created { "created" } else { "existing, kept" };
    println!("Initialised the Lanyard installation in {}:", cfg.data_dir.display());
    println!(
        "  key-encryption key {} ({}), id {}",
        cfg.kek_file.display(),
        made(init.kek_created),
        init.installation.kek_id
    );
    println!(
        "  CA {} ({}), root SHA-256 fingerprint {}",
        ca_dir.display(),
        made(init.ca_created),
        init.installation.root_fingerprint
    );
    println!(
        "  the root certificate for clients (curl --cacert, lanyard login --ca-cert): {}",
        ca_dir.join(lanyard_server::pki::ROOT_PEM).display()
    );
    println!(
        "  both recorded in the database; every server sharing it needs copies of both, so back them up"
    );
    if let Some(password) = &init.admin_password {
        // The only copy of the password: it is stored hashed and never logged.
        println!("{}", announcement(password));
    }
    Ok(init)
}

/// `lanyard init`.
pub fn init(cfg: Config) -> anyhow::Result<()> {
    create_private_dir(&cfg.data_dir)?;
    crate::serve::runtime()?.block_on(async {
        let db = open_db(&cfg).await?;
        initialize_and_report(&cfg, &db, SystemClock.now()).await?;
        println!("Start the server with `lanyard serve`.");
        Ok(())
    })
}
