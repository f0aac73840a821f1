//! Setting up a CA hierarchy: a self-signed root, an issuing CA under it, and the two service
//! certificates the issuing CA needs (OCSP responder, PIV content signer).

use time::{Duration, OffsetDateTime};
use x509_cert::name::Name;

use crate::error::CaError;
use crate::issue::{CaUrls, CertificateAuthority, IssueRequest, IssuedCertificate, SanInput};
use crate::keys::{CaSigner, KeyAlgorithm, SoftwareKey};
use crate::name::parse_dn;
use crate::ocsp::OcspResponder;
use crate::profile::CertificateProfile;
use crate::x509time;

/// A certificate together with the key it certifies.
#[derive(Debug)]
pub struct SignerCredential<K: CaSigner = SoftwareKey> {
    /// The certificate.
    pub certificate: IssuedCertificate,
    /// Its key.
    pub key: K,
}

fn days(n: u32) -> Duration {
    Duration::days(i64::from(n))
}

/// Creates a self-signed root with the built-in `root-ca` profile.
pub fn create_root<S: CaSigner>(
    signer: S,
    subject: Name,
    not_before: OffsetDateTime,
    validity_days: u32,
    urls: &CaUrls,
) -> Result<CertificateAuthority<S>, CaError> {
    CertificateAuthority::self_signed(
        signer,
        subject,
        &CertificateProfile::root_ca(),
        not_before,
        x509time::add(not_before, days(validity_days))?,
        urls.for_root_ca(),
    )
}

/// Creates an issuing CA certified by `root` with the built-in `issuing-ca` profile.
pub fn create_issuing_ca<R: CaSigner, S: CaSigner>(
    root: &CertificateAuthority<R>,
    signer: S,
    subject: Name,
    not_before: OffsetDateTime,
    validity_days: u32,
    urls: &CaUrls,
) -> Result<CertificateAuthority<S>, CaError> {
    let profile = CertificateProfile::issuing_ca();
    let issued = root.issue(&IssueRequest {
        profile: &profile,
        subject,
        public_key: signer.public_key(),
        san: SanInput::default(),
        not_before,
        requested_not_after: x509time::add(not_before, days(validity_days))?,
        cap_not_after: None,
    })?;
    CertificateAuthority::new(&issued.der, signer, urls.for_issuing_ca())
}

/// A certificate under `profile` for one of the CA's own signing keys (no SAN).
fn issue_signer_certificate<S: CaSigner, K: CaSigner>(
    issuing: &CertificateAuthority<S>,
    profile: &CertificateProfile,
    key: &K,
    subject: Name,
    not_before: OffsetDateTime,
    validity_days: u32,
) -> Result<IssuedCertificate, CaError> {
    issuing.issue(&IssueRequest {
        profile,
        subject,
        public_key: key.public_key(),
        san: SanInput::default(),
        not_before,
        requested_not_after: x509time::add(not_before, days(validity_days))?,
        cap_not_after: None,
    })
}

/// Issues a delegated OCSP responder certificate for `key` and returns the ready responder.
pub fn issue_ocsp_signer<S: CaSigner, K: CaSigner>(
    issuing: &CertificateAuthority<S>,
    key: K,
    subject: Name,
    not_before: OffsetDateTime,
    validity_days: u32,
    next_update_in: Duration,
) -> Result<OcspResponder<K>, CaError> {
    let issued = issue_signer_certificate(
        issuing,
        &CertificateProfile::ocsp_signer(),
        &key,
        subject,
        not_before,
        validity_days,
    )?;
    OcspResponder::new(issuing.certificate_der(), &issued.der, key, next_update_in)
}

/// Issues a certificate under `profile` for one of the CA's own signers and pairs it with `key`:
/// the PIV content signer ([`CertificateProfile::content_signer`]), the configuration-profile
/// signer ([`CertificateProfile::profile_signer`]) or the SCEP RA ([`CertificateProfile::scep_ra`],
/// an RSA [`crate::scep::RaKey`]).
pub fn issue_signer<S: CaSigner, K: CaSigner>(
    issuing: &CertificateAuthority<S>,
    profile: &CertificateProfile,
    key: K,
    subject: Name,
    not_before: OffsetDateTime,
    validity_days: u32,
) -> Result<SignerCredential<K>, CaError> {
    let certificate = issue_signer_certificate(issuing, profile, &key, subject, not_before, validity_days)?;
    Ok(SignerCredential { certificate, key })
}

/// The profile signer's subject for `organization`: `CN=<organization> Profile Signer,O=<organization>`.
pub fn profile_signer_subject(organization: &str) -> Result<Name, CaError> {
    parse_dn(&format!("CN={organization} Profile Signer,O={organization}"))
}

/// What [`Hierarchy::generate`] creates.
#[derive(Debug, Clone)]
pub struct HierarchySpec {
    /// Root subject DN.
    pub root_subject: Name,
    /// Root key algorithm.
    pub root_key: KeyAlgorithm,
    /// Root validity in days.
    pub root_validity_days: u32,
    /// Issuing CA subject DN.
    pub issuing_subject: Name,
    /// Issuing CA key algorithm.
    pub issuing_key: KeyAlgorithm,
    /// Issuing CA validity in days.
    pub issuing_validity_days: u32,
    /// OCSP responder subject DN.
    pub ocsp_subject: Name,
    /// OCSP responder key algorithm.
    pub ocsp_key: KeyAlgorithm,
    /// OCSP responder certificate validity in days.
    pub ocsp_validity_days: u32,
    /// How long an OCSP answer stays valid (nextUpdate - thisUpdate).
    pub ocsp_next_update_in: Duration,
    /// Content signer subject DN.
    pub content_signer_subject: Name,
    /// Content signer key algorithm.
    pub content_signer_key: KeyAlgorithm,
    /// Content signer validity in days.
    pub content_signer_validity_days: u32,
    /// Publication URLs.
    pub urls: CaUrls,
}

impl HierarchySpec {
    /// Defaults: every key of `key`, names `CN=<organization> Root CA,O=<organization>` and so on,
    /// each certificate at its profile's longest validity, OCSP answers valid for a day.
    pub fn new(organization: &str, key: KeyAlgorithm, urls: CaUrls) -> Result<Self, CaError> {
        if organization.contains([',', '+', '=', '\\', '"', '<', '>', ';', '#']) {
            return Err(CaError::InvalidName {
                input: organization.to_string(),
                reason: "the organization name must not contain DN special characters".into(),
            });
        }
        let dn = |cn: &str| parse_dn(&format!("CN={organization} {cn},O={organization}"));
        Ok(HierarchySpec {
            root_subject: dn("Root CA")?,
            root_key: key,
            root_validity_days: CertificateProfile::root_ca().max_validity_days,
            issuing_subject: dn("Issuing CA")?,
            issuing_key: key,
            issuing_validity_days: CertificateProfile::issuing_ca().max_validity_days,
            ocsp_subject: dn("OCSP Responder")?,
            ocsp_key: key,
            ocsp_validity_days: CertificateProfile::ocsp_signer().max_validity_days,
            ocsp_next_update_in: Duration::days(1),
            content_signer_subject: dn("PIV Content Signer")?,
            content_signer_key: key,
            content_signer_validity_days: CertificateProfile::content_signer().max_validity_days,
            urls,
        })
    }
}

/// A complete software-key hierarchy.
#[derive(Debug)]
pub struct Hierarchy {
    /// The root.
    pub root: CertificateAuthority<SoftwareKey>,
    /// The issuing CA.
    pub issuing: CertificateAuthority<SoftwareKey>,
    /// The OCSP responder (its certificate and key).
    pub ocsp: OcspResponder<SoftwareKey>,
    /// The PIV content signer.
    pub content_signer: SignerCredential<SoftwareKey>,
}

impl Hierarchy {
    /// Generates all four keys and certificates, valid from `now`.
    pub fn generate(spec: &HierarchySpec, now: OffsetDateTime) -> Result<Self, CaError> {
        let root = create_root(
            SoftwareKey::generate(spec.root_key)?,
            spec.root_subject.clone(),
            now,
            spec.root_validity_days,
            &spec.urls,
        )?;
        let issuing = create_issuing_ca(
            &root,
            SoftwareKey::generate(spec.issuing_key)?,
            spec.issuing_subject.clone(),
            now,
            spec.issuing_validity_days,
            &spec.urls,
        )?;
        let ocsp = issue_ocsp_signer(
            &issuing,
            SoftwareKey::generate(spec.ocsp_key)?,
            spec.ocsp_subject.clone(),
            now,
            spec.ocsp_validity_days,
            spec.ocsp_next_update_in,
        )?;
        let content_signer = issue_signer(
            &issuing,
            &CertificateProfile::content_signer(),
            SoftwareKey::generate(spec.content_signer_key)?,
            spec.content_signer_subject.clone(),
            now,
            spec.content_signer_validity_days,
        )?;
        Ok(Hierarchy { root, issuing, ocsp, content_signer })
    }
}
