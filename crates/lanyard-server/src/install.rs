//! Initialising an installation, and checking at every start that the server runs with the CA
//! and key-encryption key (KEK) it was initialised with.
//!
//! [`initialize`] is the only code that creates a CA or a KEK for a server. It records the root
//! certificate's fingerprint and the KEK's id in the database (the installation record), in the
//! same unit of work as the bootstrap administrator. [`open`] loads the CA and the KEK, never
//! creating either, and refuses when the database has no record or when what it finds differs
//! from the record, naming each difference with both values.

use std::fmt;
use std::path::{Path, PathBuf};

use lanyard_ca::KeyAlgorithm;
use lanyard_core::DomainError;
use lanyard_core::audit::{Actor, NewAuditEvent, OperationId};
use lanyard_core::installation::{CertFingerprint, Installation};
use lanyard_core::repo::StoreError;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::{Kek, KekId, SecretsError};
use secrecy::SecretString;
use serde_json::json;
use time::OffsetDateTime;

use crate::bootstrap::ensure_admin_in;
use crate::pki::{CaFiles, Pki, PkiError};

/// Where an installation's CA and KEK live, and how a new CA is made.
#[derive(Debug, Clone, Copy)]
pub struct Material<'a> {
    /// The CA directory (`<data_dir>/ca`).
    pub ca_dir: &'a Path,
    pub kek_file: &'a Path,
    /// The organisation named in the CA's certificates.
    pub organization: &'a str,
    /// The key algorithm of a new CA (an existing CA keeps its own).
    pub key_algorithm: KeyAlgorithm,
    /// The base URL certificates name for CA certificates, CRL and OCSP.
    pub pki_url: &'a str,
}

/// What [`initialize`] made.
pub struct Initialized {
    pub pki: Pki,
    pub kek: Kek,
    pub installation: Installation,
    /// The bootstrap administrator's password, when the database had no user: shown once.
    pub admin_password: Option<SecretString>,
    /// Whether the KEK was created now (`false`: an existing key file was kept).
    pub kek_created: bool,
    /// Whether the CA was created now (`false`: an existing, complete CA was kept).
    pub ca_created: bool,
}

/// A difference between the installation record and the material a server found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaterialProblem {
    KekMissing { path: PathBuf, recorded: KekId },
    KekMismatch { path: PathBuf, recorded: KekId, found: KekId },
    CaMissing { dir: PathBuf, recorded: CertFingerprint },
    RootMismatch { path: PathBuf, recorded: CertFingerprint, found: CertFingerprint },
}

impl fmt::Display for MaterialProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KekMissing { path, recorded } => write!(
                f,
                "the key-encryption key {} does not exist, but the database was initialised with the \
                 key-encryption key with id {recorded}: copy that key file from the server that ran \
                 `lanyard init` (every server sharing this database needs the same one) or restore it \
                 from backup",
                path.display()
            ),
            Self::KekMismatch { path, recorded, found } => write!(
                f,
                "the key-encryption key {} has id {found}, but the database was initialised with the \
                 key-encryption key with id {recorded}: this key belongs to another installation; put \
                 back the key with id {recorded}",
                path.display()
            ),
            Self::CaMissing { dir, recorded } => write!(
                f,
                "{} holds no CA, but the database was initialised with the root CA whose SHA-256 \
                 fingerprint is {recorded}: copy the CA directory from the server that ran `lanyard \
                 init` (every server sharing this database needs the same CA) or restore it from backup",
                dir.display()
            ),
            Self::RootMismatch { path, recorded, found } => write!(
                f,
                "the root CA certificate {} has SHA-256 fingerprint {found}, but the database was \
                 initialised with the root CA whose fingerprint is {recorded}: this CA belongs to \
                 another installation; put back the CA directory with root {recorded}",
                path.display()
            ),
        }
    }
}

/// Why an installation could not be initialised or opened.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the database is initialised already (root CA fingerprint {}, key-encryption key id {}, \
         initialised {}); `lanyard init` runs once per database. Start the server with `lanyard \
         serve`; for another server sharing this database, copy the CA directory and the \
         key-encryption key from the first server; to start a new installation, use an empty database",
        .0.root_fingerprint, .0.kek_id, .0.initialized_at
    )]
    AlreadyInitialized(Installation),
    #[error("the database has no installation record: it was never initialised with `lanyard init`")]
    NotInitialized,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Mismatch(Vec<MaterialProblem>),
    #[error("CA: {0}")]
    Pki(#[from] PkiError),
    #[error("key-encryption key: {0}")]
    Kek(#[from] SecretsError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Domain(#[from] DomainError),
}

/// The database's installation record, if any.
pub async fn record<R: Repo>(repo: &R) -> Result<Option<Installation>, StoreError> {
    let mut tx = repo.begin().await?;
    tx.get_installation().await
}

/// Initialises an installation: checks that the database has no installation record (before
/// touching any file), then creates the KEK and the CA where they are missing, keeping a
/// readable existing key file and a complete existing CA directory (never overwriting either; a
/// partial CA directory or an unreadable key file is refused before anything is created), and
/// finally records the root fingerprint and KEK id, creates the bootstrap administrator when the
/// database has no user, and audits it all, in one unit of work.
pub async fn initialize<R: Repo>(
    repo: &R,
    material: &Material<'_>,
    now: OffsetDateTime,
) -> Result<Initialized, InstallError> {
    if let Some(existing) = record(repo).await? {
        return Err(InstallError::AlreadyInitialized(existing));
    }
    // Everything that can be refused is checked before anything is created.
    let existing_kek = match Kek::load(material.kek_file) {
        Ok(kek) => Some(kek),
        Err(SecretsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let existing_ca = match Pki::files(material.ca_dir)? {
        CaFiles::Absent => None,
        CaFiles::Complete => Some(load_pki(material, now)?),
        CaFiles::Incomplete(missing) => {
            return Err(PkiError::Incomplete { dir: material.ca_dir.to_owned(), missing }.into());
        }
    };
    let kek_created = existing_kek.is_none();
    let kek = match existing_kek {
        Some(kek) => kek,
        None => Kek::create(material.kek_file)?,
    };
    let ca_created = existing_ca.is_none();
    let pki = match existing_ca {
        Some(pki) => pki,
        None => Pki::create(
            material.ca_dir,
            material.organization,
            material.key_algorithm,
            material.pki_url,
            now,
        )?,
    };
    let installation =
        Installation { root_fingerprint: pki.root_fingerprint(), kek_id: kek.id(), initialized_at: now };

    let op = OperationId::random();
    let mut tx = repo.begin().await?;
    // Checked again inside the unit of work: another `lanyard init` may have run meanwhile.
    if let Some(existing) = tx.get_installation().await? {
        return Err(InstallError::AlreadyInitialized(existing));
    }
    tx.insert_installation(&installation).await?;
    tx.append_audit(
        NewAuditEvent::new(now, Actor::System, "installation.init", &op)
            .target("installation".to_owned())
            .after(json!({
                "root_fingerprint": installation.root_fingerprint.to_string(),
                "kek_id": installation.kek_id.to_string(),
                "ca_created": ca_created,
                "kek_created": kek_created,
            })),
    )
    .await?;
    let admin_password = ensure_admin_in(&mut tx, now, &op).await?;
    tx.commit().await?;
    tracing::info!(
        root_fingerprint = %installation.root_fingerprint,
        kek_id = %installation.kek_id,
        ca_created,
        kek_created,
        "initialised the installation"
    );
    Ok(Initialized { pki, kek, installation, admin_password, kek_created, ca_created })
}

/// Opens an initialised installation: loads the KEK and the CA (creating neither) and checks
/// them against the database's installation record. Refuses with [`InstallError::NotInitialized`]
/// when there is no record, and with [`InstallError::Mismatch`] listing every missing or
/// different item with both values. The CA directory is compared before it is loaded, so a
/// foreign CA directory is left exactly as it was.
pub async fn open<R: Repo>(
    repo: &R,
    material: &Material<'_>,
    now: OffsetDateTime,
) -> Result<(Pki, Kek, Installation), InstallError> {
    let installation = record(repo).await?.ok_or(InstallError::NotInitialized)?;
    let mut problems = Vec::new();
    let kek = match Kek::load(material.kek_file) {
        Ok(kek) if kek.id() == installation.kek_id => Some(kek),
        Ok(kek) => {
            problems.push(MaterialProblem::KekMismatch {
                path: material.kek_file.to_owned(),
                recorded: installation.kek_id,
                found: kek.id(),
            });
            None
        }
        Err(SecretsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            problems.push(MaterialProblem::KekMissing {
                path: material.kek_file.to_owned(),
                recorded: installation.kek_id,
            });
            None
        }
        Err(e) => return Err(e.into()),
    };
    match Pki::files(material.ca_dir)? {
        CaFiles::Absent => problems.push(MaterialProblem::CaMissing {
            dir: material.ca_dir.to_owned(),
            recorded: installation.root_fingerprint,
        }),
        CaFiles::Incomplete(missing) => {
            return Err(PkiError::Incomplete { dir: material.ca_dir.to_owned(), missing }.into());
        }
        CaFiles::Complete => {
            let found = CertFingerprint::of_der(&Pki::read_root_der(material.ca_dir)?);
            if found != installation.root_fingerprint {
                problems.push(MaterialProblem::RootMismatch {
                    path: material.ca_dir.join("root.crt"),
                    recorded: installation.root_fingerprint,
                    found,
                });
            }
        }
    }
    let (Some(kek), true) = (kek, problems.is_empty()) else {
        return Err(InstallError::Mismatch(problems));
    };
    let pki = load_pki(material, now)?;
    Ok((pki, kek, installation))
}

fn load_pki(material: &Material<'_>, now: OffsetDateTime) -> Result<Pki, PkiError> {
    Pki::load(material.ca_dir, material.organization, material.key_algorithm, material.pki_url, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::testing::{MemRepo, block_on};

    const T0: OffsetDateTime = time::macros::datetime!(2025-03-04 05:06:07 UTC);

    struct Dir {
        _tmp: tempfile::TempDir,
        ca: PathBuf,
        kek: PathBuf,
    }

    fn dir() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, kek) = (tmp.path().join("ca"), tmp.path().join("kek"));
        Dir { _tmp: tmp, ca, kek }
    }

    fn material(d: &Dir) -> Material<'_> {
        Material {
            ca_dir: &d.ca,
            kek_file: &d.kek,
            organization: "Lanyard Test",
            key_algorithm: KeyAlgorithm::EcP256,
            pki_url: "http://127.0.0.1:1",
        }
    }

    #[test]
    fn initialize_records_the_root_and_kek_and_open_accepts_them() {
        let (repo, d) = (MemRepo::new(), dir());
        let init = block_on(initialize(&repo, &material(&d), T0)).unwrap();
        assert!(init.ca_created && init.kek_created);
        assert!(init.admin_password.is_some());
        let root_der = std::fs::read(d.ca.join("root.crt")).unwrap();
        let recorded = repo.data().installation.unwrap();
        assert_eq!(recorded.root_fingerprint, CertFingerprint::of_der(&root_der));
        assert_eq!(recorded.kek_id, Kek::load(&d.kek).unwrap().id());
        assert_eq!(recorded.initialized_at, T0);
        let actions: Vec<_> = repo.data().audit.iter().map(|e| e.action.clone()).collect();
        assert_eq!(actions, ["installation.init", "group.create", "user.bootstrap_admin"]);

        let (pki, kek, installation) = block_on(open(&repo, &material(&d), T0)).unwrap();
        assert_eq!(installation, recorded);
        assert_eq!(pki.root_fingerprint(), recorded.root_fingerprint);
        assert_eq!(kek.id(), recorded.kek_id);
    }

    #[test]
    fn a_second_initialize_is_refused_and_touches_nothing() {
        let (repo, d) = (MemRepo::new(), dir());
        block_on(initialize(&repo, &material(&d), T0)).unwrap();
        let before = repo.data();
        let other = dir();
        let err = block_on(initialize(&repo, &material(&other), T0)).err().unwrap();
        assert!(
            matches!(err, InstallError::AlreadyInitialized(ref i) if *i == before.installation.clone().unwrap())
        );
        assert!(err.to_string().contains("initialised already"), "{err}");
        assert!(!other.ca.exists() && !other.kek.exists(), "a refused init created files");
        assert_eq!(repo.data(), before);
    }

    #[test]
    fn open_refuses_an_uninitialised_database_without_creating_anything() {
        let (repo, d) = (MemRepo::new(), dir());
        let err = block_on(open(&repo, &material(&d), T0)).err().unwrap();
        assert!(matches!(err, InstallError::NotInitialized), "{err:?}");
        assert!(!d.ca.exists() && !d.kek.exists());
    }

    #[test]
    fn open_names_what_is_missing_and_what_differs_with_both_values() {
        let (repo, first) = (MemRepo::new(), dir());
        block_on(initialize(&repo, &material(&first), T0)).unwrap();
        let recorded = repo.data().installation.unwrap();

        // A second server on an empty directory: both are missing, and nothing is created.
        let empty = dir();
        let err = block_on(open(&repo, &material(&empty), T0)).err().unwrap();
        let InstallError::Mismatch(problems) = &err else { panic!("{err:?}") };
        assert_eq!(
            problems,
            &[
                MaterialProblem::KekMissing { path: empty.kek.clone(), recorded: recorded.kek_id },
                MaterialProblem::CaMissing { dir: empty.ca.clone(), recorded: recorded.root_fingerprint },
            ]
        );
        let text = err.to_string();
        assert!(text.contains(&recorded.kek_id.to_string()) && text.contains("copy"), "{text}");
        assert!(!empty.ca.exists() && !empty.kek.exists(), "open created material");

        // Another installation's material: both values named, and the foreign CA left untouched.
        let foreign_repo = MemRepo::new();
        let foreign = dir();
        block_on(initialize(&foreign_repo, &material(&foreign), T0)).unwrap();
        let theirs = foreign_repo.data().installation.unwrap();
        let listing = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name(), std::fs::read(e.path()).unwrap())
                })
                .collect();
            v.sort();
            v
        };
        let ca_before = listing(&foreign.ca);
        let err = block_on(open(&repo, &material(&foreign), T0)).err().unwrap();
        let InstallError::Mismatch(problems) = &err else { panic!("{err:?}") };
        assert_eq!(
            problems,
            &[
                MaterialProblem::KekMismatch {
                    path: foreign.kek.clone(),
                    recorded: recorded.kek_id,
                    found: theirs.kek_id
                },
                MaterialProblem::RootMismatch {
                    path: foreign.ca.join("root.crt"),
                    recorded: recorded.root_fingerprint,
                    found: theirs.root_fingerprint
                },
            ]
        );
        let text = err.to_string();
        for value in [
            recorded.kek_id.to_string(),
            theirs.kek_id.to_string(),
            recorded.root_fingerprint.to_string(),
            theirs.root_fingerprint.to_string(),
        ] {
            assert!(text.contains(&value), "{value} not in {text}");
        }
        assert_eq!(listing(&foreign.ca), ca_before);

        // Only the KEK differs: only the KEK is named.
        std::fs::copy(foreign.kek.as_path(), first.kek.as_path()).unwrap();
        let err = block_on(open(&repo, &material(&first), T0)).err().unwrap();
        let InstallError::Mismatch(problems) = &err else { panic!("{err:?}") };
        assert!(matches!(problems.as_slice(), [MaterialProblem::KekMismatch { .. }]), "{problems:?}");
    }

    #[test]
    fn initialize_keeps_intact_material_and_refuses_a_partial_ca_before_creating_anything() {
        // Material from before the database existed (or from an init whose commit failed) is kept.
        let d = dir();
        std::fs::create_dir_all(d.kek.parent().unwrap()).unwrap();
        let kek_id = Kek::create(&d.kek).unwrap().id();
        let root = Pki::create(&d.ca, "Lanyard Test", KeyAlgorithm::EcP256, "http://127.0.0.1:1", T0)
            .unwrap()
            .root_fingerprint();
        let repo = MemRepo::new();
        let init = block_on(initialize(&repo, &material(&d), T0)).unwrap();
        assert!(!init.ca_created && !init.kek_created);
        let recorded = repo.data().installation.unwrap();
        assert_eq!((recorded.root_fingerprint, recorded.kek_id), (root, kek_id));

        // A partial CA directory is refused, and no key file appears beside it.
        let partial = dir();
        Pki::create(&partial.ca, "Lanyard Test", KeyAlgorithm::EcP256, "http://127.0.0.1:1", T0).unwrap();
        std::fs::remove_file(partial.ca.join("issuing.crt")).unwrap();
        let repo = MemRepo::new();
        let err = block_on(initialize(&repo, &material(&partial), T0)).err().unwrap();
        assert!(
            matches!(&err, InstallError::Pki(PkiError::Incomplete { missing, .. }) if missing == &["issuing.crt"]),
            "{err:?}"
        );
        assert!(!partial.kek.exists());
        assert_eq!(repo.data().installation, None);
    }
}
