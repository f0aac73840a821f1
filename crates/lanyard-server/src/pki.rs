//! The CA hierarchy as the server keeps it: keys and certificates in `<data_dir>/ca`, created by
//! [`Pki::create`] (only `lanyard init` calls it, through [`crate::install`]) and loaded by
//! [`Pki::load`], which never creates a root or an issuing CA. The OCSP responder certificate is
//! short-lived and is re-issued at start when it has less than a third of its life left.

use lanyard_ca::hierarchy::{
    Hierarchy, HierarchySpec, SignerCredential, issue_ocsp_signer, issue_signer, profile_signer_subject,
};
use lanyard_ca::scep::RaKey;
use lanyard_ca::{
    CaError, CaUrls, CertificateAuthority, KeyAlgorithm, KeyFileStore, OcspResponder, SoftwareKey,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{dir} is incomplete: {} missing while other CA files exist; restore them from backup",
        missing.join(", ")
    )]
    Incomplete { dir: PathBuf, missing: Vec<String> },
    #[error("{0} holds no CA (no root.crt, root.key.pem, issuing.crt, …)")]
    Missing(PathBuf),
    #[error("{0} exists already; a CA is never overwritten")]
    Exists(PathBuf),
}

/// What a CA directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaFiles {
    /// None of the CA's files (the directory may not exist).
    Absent,
    /// Every certificate and key of root, issuing CA and OCSP responder.
    Complete,
    /// Some, but not these.
    Incomplete(Vec<String>),
}

/// The running CA: root and issuing CA, OCSP responder, PIV content signer (CHUID signatures),
/// configuration-profile signer (`.mobileconfig`), SCEP RA.
pub struct Pki {
    pub root: CertificateAuthority<SoftwareKey>,
    pub issuing: CertificateAuthority<SoftwareKey>,
    /// The OCSP responder, swapped whole when its certificate is renewed ([`Pki::renew_ocsp`]).
    pub ocsp: OcspSlot,
    pub content_signer: SignerCredential<SoftwareKey>,
    pub profile_signer: SignerCredential<SoftwareKey>,
    /// The organisation named in the CA's certificates (profiles name it too).
    pub organization: String,
    /// The SCEP registration authority: always RSA-2048, whatever the CA's keys, because SCEP
    /// clients (Apple's first) only do RSA key transport.
    pub scep_ra: SignerCredential<RaKey>,
    /// What a renewed OCSP responder certificate says.
    ocsp_renewal: OcspRenewal,
}

/// The OCSP responder certificate's subject, lifetime and nextUpdate interval, for renewals.
#[derive(Clone, Debug)]
struct OcspRenewal {
    subject: lanyard_ca::Name,
    validity_days: u32,
    next_update_in: time::Duration,
}

impl OcspRenewal {
    fn of(spec: &HierarchySpec) -> Self {
        Self {
            subject: spec.ocsp_subject.clone(),
            validity_days: spec.ocsp_validity_days,
            next_update_in: spec.ocsp_next_update_in,
        }
    }
}

/// What [`Pki::renew_ocsp`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The certificate in use has more than a third of its life left.
    Unchanged,
    /// Another server sharing the directory renewed it; its certificate is now in use here too.
    PickedUp,
    /// This server re-issued it (same key) and wrote it for the others.
    Renewed,
}

/// The OCSP responder in use, replaceable while requests are answered: readers take an `Arc` of
/// the current one; a renewal swaps in a new one and bumps the generation, which empties the
/// pre-signed responses of the old signer.
pub struct OcspSlot {
    current: std::sync::RwLock<(Arc<OcspResponder<SoftwareKey>>, u64)>,
}

impl OcspSlot {
    pub fn new(responder: OcspResponder<SoftwareKey>) -> Self {
        Self { current: std::sync::RwLock::new((Arc::new(responder), 0)) }
    }

    /// The responder in use and its generation (grows with every swap).
    pub fn current(&self) -> (Arc<OcspResponder<SoftwareKey>>, u64) {
        let guard = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (Arc::clone(&guard.0), guard.1)
    }

    /// Puts `responder` in use.
    pub fn replace(&self, responder: OcspResponder<SoftwareKey>) {
        let mut guard = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = guard.1 + 1;
        *guard = (Arc::new(responder), generation);
    }
}

/// How long the SCEP RA certificate is valid; renewed (same key) in the last third of that.
const SCEP_RA_VALIDITY_DAYS: u32 = 365;

/// The SCEP RA in `dir` (`scep-ra.crt`, `scep-ra.key.pem`): loaded, or issued by `issuing` when
/// absent (new data directories, and those made before SCEP existed) or in the last third of its
/// life. The key is kept across renewals, so profiles already on phones keep working.
fn scep_ra(
    dir: &Path,
    keys: &KeyFileStore,
    organization: &str,
    issuing: &CertificateAuthority<SoftwareKey>,
    now: OffsetDateTime,
) -> Result<SignerCredential<RaKey>, PkiError> {
    let cert_path = dir.join("scep-ra.crt");
    if cert_path.exists() && keys.exists("scep-ra")? {
        let der = read(&cert_path)?;
        let certificate: lanyard_ca::Certificate = der::Decode::from_der(&der).map_err(CaError::from)?;
        if !in_last_third(&certificate.tbs_certificate.validity, now) {
            let key = RaKey::new(keys.load("scep-ra")?)?;
            return Ok(SignerCredential {
                certificate: lanyard_ca::IssuedCertificate { certificate, der },
                key,
            });
        }
    }
    let fresh = !keys.exists("scep-ra")?;
    let key = if fresh { SoftwareKey::generate(KeyAlgorithm::Rsa2048)? } else { keys.load("scep-ra")? };
    let subject = lanyard_ca::parse_dn(&format!("CN={organization} SCEP RA,O={organization}"))?;
    let profile = lanyard_ca::CertificateProfile::scep_ra();
    let ra = issue_signer(issuing, &profile, RaKey::new(key)?, subject, now, SCEP_RA_VALIDITY_DAYS)?;
    if fresh {
        keys.save("scep-ra", ra.key.software_key())?;
    }
    write(&cert_path, &ra.certificate.der)?;
    tracing::info!("issued the SCEP RA certificate");
    Ok(ra)
}

/// Whether a certificate has less than a third of its life left at `now`: the server's own
/// signer and TLS certificates are re-issued then.
fn in_last_third(validity: &lanyard_ca::Validity, now: OffsetDateTime) -> bool {
    let not_after = validity.not_after.to_unix_duration().as_secs();
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let remaining = i128::from(not_after) - i128::from(now.unix_timestamp());
    remaining * 3 < i128::from(not_after.saturating_sub(not_before))
}

/// A signer of the server's own in `dir` (`<name>.crt`, `<name>.key.pem`): loaded, or issued by
/// `issue` when absent (data directories created before it existed) or in the last third of its
/// life (for the same key, so what it signed before stays verifiable by its chain).
fn own_signer(
    dir: &Path,
    keys: &KeyFileStore,
    name: &str,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
    issue: impl FnOnce(SoftwareKey) -> Result<SignerCredential<SoftwareKey>, CaError>,
) -> Result<SignerCredential<SoftwareKey>, PkiError> {
    let cert_path = dir.join(format!("{name}.crt"));
    if cert_path.exists() && keys.exists(name)? {
        let der = read(&cert_path)?;
        let certificate: lanyard_ca::Certificate = der::Decode::from_der(&der).map_err(CaError::from)?;
        if !in_last_third(&certificate.tbs_certificate.validity, now) {
            let key = keys.load(name)?;
            return Ok(SignerCredential {
                certificate: lanyard_ca::IssuedCertificate { certificate, der },
                key,
            });
        }
    }
    let key = if keys.exists(name)? { keys.load(name)? } else { SoftwareKey::generate(algorithm)? };
    let signer = issue(key)?;
    if !keys.exists(name)? {
        keys.save(name, &signer.key)?;
    }
    write(&cert_path, &signer.certificate.der)?;
    tracing::info!(signer = name, "issued a signer certificate");
    Ok(signer)
}

/// The PIV content signer (CHUID signatures), see [`own_signer`].
fn content_signer(
    dir: &Path,
    keys: &KeyFileStore,
    spec: &HierarchySpec,
    issuing: &CertificateAuthority<SoftwareKey>,
    now: OffsetDateTime,
) -> Result<SignerCredential<SoftwareKey>, PkiError> {
    own_signer(dir, keys, "content-signer", spec.content_signer_key, now, |key| {
        issue_signer(
            issuing,
            &lanyard_ca::CertificateProfile::content_signer(),
            key,
            spec.content_signer_subject.clone(),
            now,
            spec.content_signer_validity_days,
        )
    })
}

/// The configuration-profile signer (`profile-signer.crt`), see [`own_signer`]; of the issuing
/// CA's key algorithm.
fn profile_signer(
    dir: &Path,
    keys: &KeyFileStore,
    organization: &str,
    spec: &HierarchySpec,
    issuing: &CertificateAuthority<SoftwareKey>,
    now: OffsetDateTime,
) -> Result<SignerCredential<SoftwareKey>, PkiError> {
    own_signer(dir, keys, "profile-signer", spec.issuing_key, now, |key| {
        issue_signer(
            issuing,
            &lanyard_ca::CertificateProfile::profile_signer(),
            key,
            profile_signer_subject(organization)?,
            now,
            lanyard_ca::CertificateProfile::profile_signer().max_validity_days,
        )
    })
}

const CERTS: [&str; 3] = ["root.crt", "issuing.crt", "ocsp.crt"];
const KEYS: [&str; 3] = ["root", "issuing", "ocsp"];

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, bytes).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// Replaces `path` so that a reader (another server sharing the directory) sees the old file or
/// the new one, never a part: written beside it under a unique name, synced, then renamed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Checks the server's own certificates every `every` and renews them ([`Pki::renew_ocsp`]);
/// runs until the runtime stops.
pub fn spawn_renewal(
    pki: Arc<Pki>,
    dir: PathBuf,
    clock: Arc<dyn lanyard_core::clock::Clock>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let (pki, dir, now) = (Arc::clone(&pki), dir.clone(), clock.now());
            match tokio::task::spawn_blocking(move || pki.renew_ocsp(&dir, now)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "renewing the OCSP responder certificate failed"),
                Err(e) => tracing::error!(error = %e, "the renewal task failed"),
            }
        }
    })
}

/// The root certificate as PEM, for clients that take PEM only (`curl --cacert`, browsers,
/// system trust stores); `root.crt` stays DER, as the CA reads it and `/pki/root.crt` serves it.
pub const ROOT_PEM: &str = "root.pem";

/// Writes `root.pem` in `dir` from the root's DER unless it already holds exactly that.
fn write_root_pem(dir: &Path, root_der: &[u8]) -> Result<(), PkiError> {
    let path = dir.join(ROOT_PEM);
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, root_der)
        .map_err(|e| CaError::from(der::Error::from(e)))?;
    if std::fs::read(&path).is_ok_and(|existing| existing == pem.as_bytes()) {
        return Ok(());
    }
    write(&path, pem.as_bytes())
}

impl Pki {
    /// What `dir` holds, without reading or changing any of it.
    pub fn files(dir: &Path) -> Result<CaFiles, PkiError> {
        let keys = KeyFileStore::new(dir);
        let mut missing = Vec::new();
        for cert in CERTS {
            if !dir.join(cert).exists() {
                missing.push(cert.to_owned());
            }
        }
        for k in KEYS {
            if !keys.exists(k)? {
                missing.push(format!("{k}.key.pem"));
            }
        }
        Ok(if missing.is_empty() {
            CaFiles::Complete
        } else if missing.len() == CERTS.len() + KEYS.len() {
            CaFiles::Absent
        } else {
            CaFiles::Incomplete(missing)
        })
    }

    /// The DER of the root certificate in `dir`, to compare before anything else is loaded.
    pub fn read_root_der(dir: &Path) -> Result<Vec<u8>, PkiError> {
        read(&dir.join("root.crt"))
    }

    /// Creates a new hierarchy (root, issuing CA, OCSP responder, PIV content signer) in `dir`.
    /// Refuses, writing nothing, when `dir` holds any of a CA's files.
    pub fn create(
        dir: &Path,
        organization: &str,
        key: KeyAlgorithm,
        public_url: &str,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let urls = CaUrls::new(public_url)?;
        let spec = HierarchySpec::new(organization, key, urls)?;
        let keys = KeyFileStore::new(dir);
        let existing = CERTS
            .iter()
            .chain(["content-signer.crt", "profile-signer.crt", "scep-ra.crt"].iter())
            .map(|f| dir.join(f))
            .chain(
                KEYS.iter()
                    .chain(["content-signer", "profile-signer", "scep-ra"].iter())
                    .map(|k| keys.path(k))
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .find(|p| p.exists());
        if let Some(path) = existing {
            return Err(PkiError::Exists(path));
        }
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
        let h = Hierarchy::generate(&spec, now)?;
        // Keys first: `save` refuses to replace a key, so a concurrent `create` in the same
        // directory fails here instead of mixing two hierarchies.
        keys.save("root", h.root.signer())?;
        keys.save("issuing", h.issuing.signer())?;
        keys.save("ocsp", h.ocsp.signer())?;
        keys.save("content-signer", &h.content_signer.key)?;
        write(&dir.join("content-signer.crt"), &h.content_signer.certificate.der)?;
        write(&dir.join("root.crt"), h.root.certificate_der())?;
        write_root_pem(dir, h.root.certificate_der())?;
        write(&dir.join("issuing.crt"), h.issuing.certificate_der())?;
        write(
            &dir.join("ocsp.crt"),
            &der::Encode::to_der(h.ocsp.responder_certificate()).map_err(CaError::from)?,
        )?;
        let profile_signer = profile_signer(dir, &keys, organization, &spec, &h.issuing, now)?;
        let scep_ra = scep_ra(dir, &keys, organization, &h.issuing, now)?;
        tracing::info!(dir = %dir.display(), "created the CA hierarchy");
        Ok(Pki {
            root: h.root,
            issuing: h.issuing,
            ocsp: OcspSlot::new(h.ocsp),
            content_signer: h.content_signer,
            profile_signer,
            organization: organization.to_owned(),
            scep_ra,
            ocsp_renewal: OcspRenewal::of(&spec),
        })
    }

    /// Loads the hierarchy from `dir`. Never creates a root or issuing CA: a directory without
    /// one is [`PkiError::Missing`], a partial one [`PkiError::Incomplete`]. It does renew the
    /// server's own short-lived certificates (OCSP responder, content signer) as they age.
    pub fn load(
        dir: &Path,
        organization: &str,
        key: KeyAlgorithm,
        public_url: &str,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        match Self::files(dir)? {
            CaFiles::Complete => {}
            CaFiles::Absent => return Err(PkiError::Missing(dir.to_owned())),
            CaFiles::Incomplete(missing) => {
                return Err(PkiError::Incomplete { dir: dir.to_owned(), missing });
            }
        }
        let urls = CaUrls::new(public_url)?;
        let spec = HierarchySpec::new(organization, key, urls.clone())?;
        let keys = KeyFileStore::new(dir);
        let root =
            CertificateAuthority::new(&read(&dir.join("root.crt"))?, keys.load("root")?, urls.for_root_ca())?;
        let issuing = CertificateAuthority::new(
            &read(&dir.join("issuing.crt"))?,
            keys.load("issuing")?,
            urls.for_issuing_ca(),
        )?;
        let ocsp_der = read(&dir.join("ocsp.crt"))?;
        let ocsp = OcspResponder::new(
            issuing.certificate_der(),
            &ocsp_der,
            keys.load("ocsp")?,
            spec.ocsp_next_update_in,
        )?;
        let ocsp = if in_last_third(&ocsp.responder_certificate().tbs_certificate.validity, now) {
            // Re-issue for the same key; the old certificate simply expires.
            let fresh = issue_ocsp_signer(
                &issuing,
                keys.load("ocsp")?,
                spec.ocsp_subject.clone(),
                now,
                spec.ocsp_validity_days,
                spec.ocsp_next_update_in,
            )?;
            write_atomically(
                &dir.join("ocsp.crt"),
                &der::Encode::to_der(fresh.responder_certificate()).map_err(CaError::from)?,
            )?;
            tracing::info!("re-issued the OCSP responder certificate");
            fresh
        } else {
            ocsp
        };
        let content_signer = content_signer(dir, &keys, &spec, &issuing, now)?;
        let profile_signer = profile_signer(dir, &keys, organization, &spec, &issuing, now)?;
        let scep_ra = scep_ra(dir, &keys, organization, &issuing, now)?;
        // Data directories made before the PEM copy existed get it now.
        write_root_pem(dir, root.certificate_der())?;
        Ok(Pki {
            root,
            issuing,
            ocsp: OcspSlot::new(ocsp),
            content_signer,
            profile_signer,
            organization: organization.to_owned(),
            scep_ra,
            ocsp_renewal: OcspRenewal::of(&spec),
        })
    }

    /// Keeps the OCSP responder certificate current while the server runs: takes a newer
    /// `ocsp.crt` another server sharing `dir` wrote, or re-issues it for the same key once less
    /// than a third of its life is left, writing it atomically (temporary file, then rename) so
    /// the others pick it up. The responder is swapped whole; answers being signed finish with
    /// the old one, and its pre-signed answers are dropped.
    pub fn renew_ocsp(&self, dir: &Path, now: OffsetDateTime) -> Result<Renewal, PkiError> {
        let (current, _) = self.ocsp.current();
        let current_cert = current.responder_certificate();
        let keys = KeyFileStore::new(dir);
        let on_disk = read(&dir.join("ocsp.crt"))?;
        if on_disk != der::Encode::to_der(current_cert).map_err(CaError::from)? {
            let cert: lanyard_ca::Certificate = der::Decode::from_der(&on_disk).map_err(CaError::from)?;
            let newer = cert.tbs_certificate.validity.not_before.to_unix_duration()
                > current_cert.tbs_certificate.validity.not_before.to_unix_duration();
            if newer {
                // `OcspResponder::new` checks issuer, EKU and that it certifies our key.
                let responder = OcspResponder::new(
                    self.issuing.certificate_der(),
                    &on_disk,
                    keys.load("ocsp")?,
                    self.ocsp_renewal.next_update_in,
                )?;
                self.ocsp.replace(responder);
                tracing::info!("took the OCSP responder certificate another server renewed");
                return Ok(Renewal::PickedUp);
            }
        }
        if !in_last_third(&current_cert.tbs_certificate.validity, now) {
            return Ok(Renewal::Unchanged);
        }
        let fresh = issue_ocsp_signer(
            &self.issuing,
            keys.load("ocsp")?,
            self.ocsp_renewal.subject.clone(),
            now,
            self.ocsp_renewal.validity_days,
            self.ocsp_renewal.next_update_in,
        )?;
        write_atomically(
            &dir.join("ocsp.crt"),
            &der::Encode::to_der(fresh.responder_certificate()).map_err(CaError::from)?,
        )?;
        self.ocsp.replace(fresh);
        tracing::info!("re-issued the OCSP responder certificate");
        Ok(Renewal::Renewed)
    }

    /// Publishes the issuing CA's CRL in `shards` partitions (`/pki/crl/<n>`): certificates
    /// signed from now on name their partition; those signed before keep naming the full CRL,
    /// which stays complete. Keep the number once certificates name partitions: a certificate's
    /// partition is its serial modulo this number.
    pub fn with_crl_shards(mut self, shards: u16) -> Self {
        self.issuing = self.issuing.with_crl_shards(shards.min(crate::revocation::MAX_CRL_SHARDS));
        self
    }

    /// The root certificate's SHA-256 fingerprint, as the installation record keeps it.
    pub fn root_fingerprint(&self) -> lanyard_core::installation::CertFingerprint {
        lanyard_core::installation::CertFingerprint::of_der(self.root.certificate_der())
    }
}

/// How long the server's own TLS certificate is valid; it is re-issued (same key) once less than
/// a third of that is left, at start and by a running server ([`Pki::tls_identity`] called
/// again, see `lanyard serve`).
const TLS_VALIDITY_DAYS: i64 = 90;

/// The server's TLS identity: the certificate chain (leaf, then the issuing CA) and the PKCS#8 key.
pub struct TlsIdentity {
    pub chain: Vec<Vec<u8>>,
    pub pkcs8_key: zeroize::Zeroizing<Vec<u8>>,
}

impl Pki {
    /// The TLS server certificate for `dns` names and `ip` addresses, kept in `dir` as
    /// `tls.crt`/`tls.key.pem`/`tls.names`. A certificate is issued by the issuing CA when none
    /// exists, when the names changed, or when less than a third of its life is left, for the key
    /// already there (a fresh one the first time). Files are replaced atomically; a server sharing
    /// the directory that calls this later gets the certificate another one renewed.
    pub fn tls_identity(
        &self,
        dir: &Path,
        dns: &[String],
        ip: &[std::net::IpAddr],
        now: OffsetDateTime,
    ) -> Result<TlsIdentity, PkiError> {
        let keys = KeyFileStore::new(dir);
        let names = dns.iter().map(String::as_str).map(str::to_owned).chain(ip.iter().map(|i| i.to_string()));
        let names = names.collect::<Vec<_>>().join("\n");
        let (cert_path, names_path) = (dir.join("tls.crt"), dir.join("tls.names"));
        if cert_path.exists()
            && keys.exists("tls")?
            && std::fs::read_to_string(&names_path).ok() == Some(names.clone())
        {
            let der = read(&cert_path)?;
            let cert: lanyard_ca::Certificate = der::Decode::from_der(&der).map_err(CaError::from)?;
            if !in_last_third(&cert.tbs_certificate.validity, now) {
                let key = keys.load("tls")?.to_pkcs8_der()?;
                return Ok(TlsIdentity {
                    chain: vec![der, self.issuing.certificate_der().to_vec()],
                    pkcs8_key: key,
                });
            }
        }
        // The same key across renewals (a running server, and others sharing the directory,
        // keep serving with it); a fresh one only the first time.
        let fresh = !keys.exists("tls")?;
        let key = if fresh { SoftwareKey::generate(KeyAlgorithm::EcP256)? } else { keys.load("tls")? };
        let issued = self.issuing.issue(&lanyard_ca::IssueRequest {
            profile: &lanyard_ca::CertificateProfile::tls_server(),
            subject: lanyard_ca::Name::default(),
            public_key: lanyard_ca::CaSigner::public_key(&key),
            san: lanyard_ca::SanInput { dns: dns.to_vec(), ip: ip.to_vec(), ..Default::default() },
            not_before: now,
            requested_not_after: now + time::Duration::days(TLS_VALIDITY_DAYS),
            cap_not_after: None,
        })?;
        if fresh {
            keys.save("tls", &key)?;
        }
        // Names first: a reader that sees the new certificate also sees the names it is for.
        write_atomically(&names_path, names.as_bytes())?;
        write_atomically(&cert_path, &issued.der)?;
        tracing::info!(names = %names.replace('\n', ", "), "issued the server's TLS certificate");
        Ok(TlsIdentity {
            chain: vec![issued.der, self.issuing.certificate_der().to_vec()],
            pkcs8_key: key.to_pkcs8_der()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: OffsetDateTime = time::macros::datetime!(2025-03-04 05:06:07 UTC);
    const URL: &str = "http://127.0.0.1:1";

    fn create(dir: &Path) -> Result<Pki, PkiError> {
        Pki::create(dir, "Lanyard Test", KeyAlgorithm::EcP256, URL, T0)
    }

    fn load(dir: &Path) -> Result<Pki, PkiError> {
        Pki::load(dir, "Lanyard Test", KeyAlgorithm::EcP256, URL, T0)
    }

    #[test]
    fn the_root_has_a_pem_copy_and_load_restores_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        create(&dir).unwrap();
        let root_der = std::fs::read(dir.join("root.crt")).unwrap();
        let pem = std::fs::read_to_string(dir.join(ROOT_PEM)).unwrap();
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!((label, der), ("CERTIFICATE", root_der.clone()));

        // A data directory from before the copy existed, and one whose copy was spoiled.
        std::fs::remove_file(dir.join(ROOT_PEM)).unwrap();
        load(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(ROOT_PEM)).unwrap(), pem);
        std::fs::write(dir.join(ROOT_PEM), "not a certificate").unwrap();
        load(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(ROOT_PEM)).unwrap(), pem);
        assert_eq!(std::fs::read(dir.join("root.crt")).unwrap(), root_der, "root.crt changed");
    }

    #[test]
    fn load_never_creates_and_create_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        assert_eq!(Pki::files(&dir).unwrap(), CaFiles::Absent);
        assert!(matches!(load(&dir), Err(PkiError::Missing(ref d)) if *d == dir));
        assert!(!dir.exists(), "load created the CA directory");

        let created = create(&dir).unwrap();
        assert_eq!(Pki::files(&dir).unwrap(), CaFiles::Complete);
        let root_der = std::fs::read(dir.join("root.crt")).unwrap();
        assert_eq!(
            created.root_fingerprint(),
            lanyard_core::installation::CertFingerprint::of_der(&root_der)
        );
        assert_eq!(load(&dir).unwrap().root_fingerprint(), created.root_fingerprint());

        let err = create(&dir).err().unwrap();
        assert!(matches!(err, PkiError::Exists(_)), "{err:?}");
        assert!(err.to_string().ends_with("exists already; a CA is never overwritten"), "{err}");
        assert_eq!(std::fs::read(dir.join("root.crt")).unwrap(), root_der, "create replaced the root");
    }

    #[test]
    fn the_profile_signer_is_created_kept_and_renewed_for_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let created = create(&dir).unwrap();
        let der = std::fs::read(dir.join("profile-signer.crt")).unwrap();
        assert_eq!(created.profile_signer.certificate.der, der);
        let subject = created.profile_signer.certificate.certificate.tbs_certificate.subject.to_string();
        assert_eq!(subject, "CN=Lanyard Test Profile Signer,O=Lanyard Test");
        assert_eq!(load(&dir).unwrap().profile_signer.certificate.der, der, "re-issued while fresh");

        // A data directory from before profile signing existed gets one on load.
        std::fs::remove_file(dir.join("profile-signer.crt")).unwrap();
        std::fs::remove_file(KeyFileStore::new(&dir).path("profile-signer").unwrap()).unwrap();
        let fresh = load(&dir).unwrap().profile_signer;
        assert_ne!(fresh.certificate.der, der);

        // In the last third of its life it is re-issued for the same key.
        let late = T0 + time::Duration::days(2 * 365 * 2 / 3 + 2);
        let renewed =
            Pki::load(&dir, "Lanyard Test", KeyAlgorithm::EcP256, URL, late).unwrap().profile_signer;
        assert_ne!(renewed.certificate.der, fresh.certificate.der);
        let spki = |s: &SignerCredential<SoftwareKey>| {
            s.certificate.certificate.tbs_certificate.subject_public_key_info.clone()
        };
        assert_eq!(spki(&renewed), spki(&fresh));
    }

    #[test]
    fn a_partial_ca_directory_names_the_missing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        create(&dir).unwrap();
        std::fs::remove_file(dir.join("ocsp.crt")).unwrap();
        std::fs::remove_file(dir.join("root.key.pem")).unwrap();
        let missing = vec!["ocsp.crt".to_owned(), "root.key.pem".to_owned()];
        assert_eq!(Pki::files(&dir).unwrap(), CaFiles::Incomplete(missing.clone()));
        let err = load(&dir).err().unwrap();
        assert!(matches!(&err, PkiError::Incomplete { missing: m, .. } if *m == missing), "{err:?}");
        assert!(err.to_string().contains("ocsp.crt, root.key.pem missing"), "{err}");
        assert!(matches!(create(&dir), Err(PkiError::Exists(_))));
    }
}
