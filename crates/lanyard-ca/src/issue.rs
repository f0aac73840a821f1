//! Certificate issuance: [`CertificateAuthority::issue`] turns an [`IssueRequest`] into a signed
//! X.509 v3 certificate following a [`CertificateProfile`].

use std::net::IpAddr;

use der::asn1::{Any, BitString, Ia5String, OctetString};
use der::{Decode, Encode, Tag};
use spki::SubjectPublicKeyInfoOwned;
use time::{Duration, OffsetDateTime};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::error::CaError;
use crate::ext;
use crate::keys::{CaSigner, KeyAlgorithm, spki_der, verify_signature};
use crate::oids;
use crate::profile::{CertificateProfile, Presence, SanPart};
use crate::x509time;

/// Where relying parties fetch CA certificates, CRLs and OCSP answers. Configured once as a base
/// URL (`http://pki.example.org`); the paths below it are fixed.
///
/// Certificates signed by the issuing CA point to `{base}/pki/ca.crt`, `{base}/pki/ocsp` and
/// `{base}/pki/crl`; the issuing CA's own certificate (signed by the root) points to
/// `{base}/pki/root.crt` and `{base}/pki/root.crl`. Plain `http://` is the norm here: these URLs
/// are fetched while validating TLS chains, so they must not depend on TLS themselves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaUrls {
    /// Base URL, without a trailing slash.
    pub base: String,
}

/// The URLs a particular CA writes into the certificates it signs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityUrls {
    /// id-ad-caIssuers: where the signing CA's certificate is published.
    pub ca_issuers: Option<String>,
    /// id-ad-ocsp: the OCSP responder for certificates this CA signs.
    pub ocsp: Option<String>,
    /// cRLDistributionPoints: the CRL this CA publishes.
    pub crl: Option<String>,
    /// When above zero, the CRL is also published in this many partitions, and each certificate
    /// names its partition's URL `{crl}/{n}` (n = [`crate::crl_shard`] of its serial) instead of
    /// the full CRL. Certificates signed before keep naming the full CRL, which stays complete.
    pub crl_shards: u16,
}

impl CaUrls {
    /// Validates and normalises a base URL.
    pub fn new(base: &str) -> Result<Self, CaError> {
        let trimmed = base.trim_end_matches('/');
        let ok = (trimmed.starts_with("http://") || trimmed.starts_with("https://"))
            && trimmed.len() > "https://".len()
            && trimmed.is_ascii()
            && !trimmed.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
        if !ok {
            return Err(CaError::InvalidUrlBase(base.to_string()));
        }
        Ok(CaUrls { base: trimmed.to_string() })
    }

    fn base(&self) -> &str {
        self.base.trim_end_matches('/')
    }

    /// `{base}/pki/ca.crt`: the issuing CA certificate.
    pub fn issuing_ca_certificate(&self) -> String {
        format!("{}/pki/ca.crt", self.base())
    }
    /// `{base}/pki/ocsp`: the OCSP responder.
    pub fn ocsp(&self) -> String {
        format!("{}/pki/ocsp", self.base())
    }
    /// `{base}/pki/crl`: the issuing CA's CRL.
    pub fn crl(&self) -> String {
        format!("{}/pki/crl", self.base())
    }
    /// `{base}/pki/root.crt`: the root certificate.
    pub fn root_certificate(&self) -> String {
        format!("{}/pki/root.crt", self.base())
    }
    /// `{base}/pki/root.crl`: the root's CRL (covering CA certificates).
    pub fn root_crl(&self) -> String {
        format!("{}/pki/root.crl", self.base())
    }

    /// URLs for certificates signed by the issuing CA.
    pub fn for_issuing_ca(&self) -> AuthorityUrls {
        AuthorityUrls {
            ca_issuers: Some(self.issuing_ca_certificate()),
            ocsp: Some(self.ocsp()),
            crl: Some(self.crl()),
            crl_shards: 0,
        }
    }

    /// URLs for certificates signed by the root (the issuing CA's certificate).
    pub fn for_root_ca(&self) -> AuthorityUrls {
        AuthorityUrls {
            ca_issuers: Some(self.root_certificate()),
            ocsp: None,
            crl: Some(self.root_crl()),
            crl_shards: 0,
        }
    }
}

/// The subject-alternative-name values a request may carry. Which ones a certificate may or must
/// have is decided by the profile's [`crate::profile::SanRules`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SanInput {
    /// FASC-N (25 bytes, SP 800-73 encoding), as otherName 2.16.840.1.101.3.6.6 / OCTET STRING.
    pub fasc_n: Option<[u8; 25]>,
    /// Card UUID (the CHUID GUID), as URI `urn:uuid:…`.
    pub card_uuid: Option<[u8; 16]>,
    /// Cardholder UUID, as URI `urn:uuid:…`.
    pub cardholder_uuid: Option<[u8; 16]>,
    /// User principal name, as otherName 1.3.6.1.4.1.311.20.2.3 / UTF8String.
    pub upn: Option<String>,
    /// Email addresses (rfc822Name, ASCII only).
    pub email: Vec<String>,
    /// DNS names (dNSName).
    pub dns: Vec<String>,
    /// IP addresses (iPAddress).
    pub ip: Vec<IpAddr>,
}

/// A request to issue one certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    /// The profile to follow.
    pub profile: &'a CertificateProfile,
    /// Subject DN; may be empty when the profile allows it (then the SAN is critical).
    pub subject: Name,
    /// The key to certify.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// SAN values.
    pub san: SanInput,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// Requested end of validity; capped by the profile's maximum, by `cap_not_after` and by the
    /// issuer's own notAfter.
    pub requested_not_after: OffsetDateTime,
    /// Hard cap, e.g. the card's expiry for 9A/9E certificates.
    pub cap_not_after: Option<OffsetDateTime>,
}

/// A certificate the CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Parsed form.
    pub certificate: Certificate,
    /// DER encoding (exactly the signed bytes).
    pub der: Vec<u8>,
}

impl IssuedCertificate {
    fn from_certificate(certificate: Certificate) -> Result<Self, CaError> {
        let der = certificate.to_der()?;
        Ok(IssuedCertificate { certificate, der })
    }

    /// PEM `CERTIFICATE` block.
    pub fn to_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The serial number.
    pub fn serial(&self) -> &SerialNumber {
        &self.certificate.tbs_certificate.serial_number
    }

    /// Start of validity.
    pub fn not_before(&self) -> Result<OffsetDateTime, CaError> {
        x509time::from_x509(&self.certificate.tbs_certificate.validity.not_before)
    }

    /// End of validity.
    pub fn not_after(&self) -> Result<OffsetDateTime, CaError> {
        x509time::from_x509(&self.certificate.tbs_certificate.validity.not_after)
    }
}

/// PEM-encodes DER with LF line endings. Encoding bytes cannot fail for these labels; an empty
/// string is returned if it somehow did, which no PEM reader would accept.
pub fn pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap_or_default()
}

/// A CA: its certificate, the signer holding its key, and the URLs it writes into what it signs.
pub struct CertificateAuthority<S: CaSigner = Box<dyn CaSigner>> {
    certificate: Certificate,
    der: Vec<u8>,
    signer: S,
    urls: AuthorityUrls,
    key_id: Vec<u8>,
    not_after: OffsetDateTime,
    path_len: Option<u8>,
}

impl<S: CaSigner> std::fmt::Debug for CertificateAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.certificate.tbs_certificate.subject.to_string())
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

/// What issuance needs to know about the signer, for both a CA and a self-signed root.
pub(crate) struct IssuerView<'a> {
    pub name: &'a Name,
    pub key_id: &'a [u8],
    pub spki: &'a SubjectPublicKeyInfoOwned,
    pub urls: &'a AuthorityUrls,
    pub signer: &'a dyn CaSigner,
    pub not_after: Option<OffsetDateTime>,
    /// `Some(n)` when the issuer has a pathLenConstraint of n.
    pub path_len: Option<u8>,
}

impl<S: CaSigner> CertificateAuthority<S> {
    /// Loads a CA from its certificate and its key. Checks that the certificate is a CA certificate
    /// (basicConstraints cA=TRUE, keyCertSign if keyUsage is present) and that `signer` holds the
    /// key the certificate certifies.
    pub fn new(certificate_der: &[u8], signer: S, urls: AuthorityUrls) -> Result<Self, CaError> {
        let certificate = Certificate::from_der(certificate_der)?;
        let tbs = &certificate.tbs_certificate;
        let unusable = |m: &str| CaError::UnusableIssuer(m.to_string());
        let bc = tbs.get::<BasicConstraints>().map_err(|_| unusable("malformed basicConstraints"))?;
        let path_len = match bc {
            Some((_, bc)) if bc.ca => bc.path_len_constraint,
            _ => {
                return Err(unusable(
                    "the certificate is not a CA certificate (basicConstraints cA is not TRUE)",
                ));
            }
        };
        if let Some((_, ku)) = tbs.get::<KeyUsage>().map_err(|_| unusable("malformed keyUsage"))?
            && !ku.key_cert_sign()
        {
            return Err(unusable("keyUsage lacks keyCertSign"));
        }
        if spki_der(&signer.public_key())? != spki_der(&tbs.subject_public_key_info)? {
            return Err(unusable("the signing key does not match the CA certificate's public key"));
        }
        let key_id = match tbs
            .get::<SubjectKeyIdentifier>()
            .map_err(|_| unusable("malformed subjectKeyIdentifier"))?
        {
            Some((_, ski)) => ski.0.as_bytes().to_vec(),
            None => ext::key_identifier(&tbs.subject_public_key_info),
        };
        let not_after = x509time::from_x509(&tbs.validity.not_after)?;
        Ok(CertificateAuthority {
            der: certificate_der.to_vec(),
            certificate,
            signer,
            urls,
            key_id,
            not_after,
            path_len,
        })
    }

    /// Creates a self-signed CA certificate (a root) with `profile` (which must be a CA profile).
    pub fn self_signed(
        signer: S,
        subject: Name,
        profile: &CertificateProfile,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        urls: AuthorityUrls,
    ) -> Result<Self, CaError> {
        if profile.ca.is_none() {
            return Err(CaError::InvalidProfile {
                profile: profile.id.clone(),
                reason: "a self-signed CA needs a CA profile".into(),
            });
        }
        let spki = signer.public_key();
        let key_id = ext::key_identifier(&spki);
        let no_urls = AuthorityUrls::default();
        let request = IssueRequest {
            profile,
            subject: subject.clone(),
            public_key: spki.clone(),
            san: SanInput::default(),
            not_before,
            requested_not_after: not_after,
            cap_not_after: None,
        };
        let view = IssuerView {
            name: &subject,
            key_id: &key_id,
            spki: &spki,
            urls: &no_urls,
            signer: &signer,
            not_after: None,
            path_len: None,
        };
        let issued = build_certificate(&view, &request)?;
        Self::new(&issued.der, signer, urls)
    }

    fn view(&self) -> IssuerView<'_> {
        IssuerView {
            name: &self.certificate.tbs_certificate.subject,
            key_id: &self.key_id,
            spki: &self.certificate.tbs_certificate.subject_public_key_info,
            urls: &self.urls,
            signer: &self.signer,
            not_after: Some(self.not_after),
            path_len: self.path_len,
        }
    }

    /// Issues a certificate.
    pub fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedCertificate, CaError> {
        build_certificate(&self.view(), request)
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.der
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The signer holding the CA key.
    pub fn signer(&self) -> &S {
        &self.signer
    }

    /// The key identifier written as authorityKeyIdentifier into everything this CA signs.
    pub fn key_identifier(&self) -> &[u8] {
        &self.key_id
    }

    /// The URLs this CA writes into the certificates it signs.
    pub fn urls(&self) -> &AuthorityUrls {
        &self.urls
    }

    /// Publishes the CRL in `shards` partitions from now on (see [`AuthorityUrls::crl_shards`];
    /// 0: one CRL).
    pub fn with_crl_shards(mut self, shards: u16) -> Self {
        self.urls.crl_shards = shards;
        self
    }

    /// Signs `tbs_der` and checks the result against the CA certificate's public key before
    /// returning it, so a faulty signer can never publish a broken signature.
    pub(crate) fn sign_checked(&self, tbs_der: &[u8], what: &'static str) -> Result<BitString, CaError> {
        sign_checked(&self.signer, &self.certificate.tbs_certificate.subject_public_key_info, tbs_der, what)
    }
}

pub(crate) fn sign_checked(
    signer: &dyn CaSigner,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    tbs_der: &[u8],
    what: &'static str,
) -> Result<BitString, CaError> {
    let signature = signer.sign(tbs_der)?;
    verify_signature(issuer_spki, &signer.algorithm(), tbs_der, &signature)
        .map_err(|_| CaError::SelfCheckFailed(what))?;
    Ok(BitString::from_bytes(&signature)?)
}

/// A random positive 16-byte serial (RFC 5280 §4.1.2.2; CA/B Forum asks for ≥ 64 random bits).
/// The top bit is cleared so the INTEGER is positive, and the next one set so the encoding is
/// always exactly 16 octets.
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Randomness)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::new(&bytes)?)
}

fn build_certificate(issuer: &IssuerView<'_>, req: &IssueRequest<'_>) -> Result<IssuedCertificate, CaError> {
    let profile = req.profile;
    profile.validate()?;

    let key_alg = KeyAlgorithm::of_spki(&req.public_key)?;
    if !profile.key_algorithms.contains(&key_alg) {
        return Err(CaError::KeyNotAllowed {
            profile: profile.id.clone(),
            key: key_alg,
            allowed: profile.key_algorithms.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        });
    }

    match (profile.subject, req.subject.is_empty()) {
        (Presence::Required, true) => return Err(CaError::SubjectRequired { profile: profile.id.clone() }),
        (Presence::Forbidden, false) => {
            return Err(CaError::InvalidName {
                input: req.subject.to_string(),
                reason: format!("profile {:?} requires an empty subject", profile.id),
            });
        }
        _ => {}
    }

    if profile.ca.is_some() && issuer.path_len == Some(0) {
        return Err(CaError::PathLengthExceeded);
    }

    let (not_before, not_after) = validity(profile, req, issuer.not_after)?;
    let san = build_san(profile, &req.san)?;
    if req.subject.is_empty() && san.is_empty() {
        return Err(CaError::NoSubjectIdentity { profile: profile.id.clone() });
    }

    // Drawn first: the CRL partition a certificate names follows from its serial.
    let req_serial = random_serial()?;
    let mut extensions: Vec<Extension> = Vec::new();
    if let Some(ca) = &profile.ca {
        extensions.push(ext::basic_constraints(true, ca.path_len)?);
    }
    extensions.push(ext::key_usage(profile.key_usage.bits_for(key_alg), profile.key_usage.critical)?);
    if let Some(eku) = &profile.extended_key_usage {
        extensions.push(ext::extended_key_usage(&eku.purposes, eku.critical)?);
    }
    if !profile.policies.is_empty() {
        extensions.push(ext::certificate_policies(&profile.policies)?);
    }
    extensions.push(ext::subject_key_identifier(&ext::key_identifier(&req.public_key))?);
    extensions.push(ext::authority_key_identifier(issuer.key_id)?);
    if !san.is_empty() {
        // RFC 5280 §4.2.1.6: with an empty subject, the SAN carries the identity and is critical.
        extensions.push(ext::subject_alt_name(san, req.subject.is_empty())?);
    }
    let ocsp = issuer.urls.ocsp.as_deref().filter(|_| profile.aia_ocsp);
    if ocsp.is_some() || issuer.urls.ca_issuers.is_some() {
        extensions.push(ext::authority_info_access(ocsp, issuer.urls.ca_issuers.as_deref())?);
    }
    if let Some(crl) = issuer.urls.crl.as_deref().filter(|_| profile.crl_distribution_point) {
        if issuer.urls.crl_shards > 0 {
            let shard = crate::crl::crl_shard(req_serial.as_bytes(), issuer.urls.crl_shards);
            extensions.push(ext::crl_distribution_points(&format!("{crl}/{shard}"))?);
        } else {
            extensions.push(ext::crl_distribution_points(crl)?);
        }
    }
    if profile.ocsp_no_check {
        extensions.push(ext::ocsp_no_check()?);
    }

    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: req_serial,
        signature: issuer.signer.algorithm(),
        issuer: issuer.name.clone(),
        validity: Validity {
            not_before: x509time::to_x509(not_before)?,
            not_after: x509time::to_x509(not_after)?,
        },
        subject: req.subject.clone(),
        subject_public_key_info: req.public_key.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der()?;
    let signature = sign_checked(issuer.signer, issuer.spki, &tbs_der, "certificate")?;
    IssuedCertificate::from_certificate(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: issuer.signer.algorithm(),
        signature,
    })
}

fn validity(
    profile: &CertificateProfile,
    req: &IssueRequest<'_>,
    issuer_not_after: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let not_before = x509time::truncate(req.not_before);
    let requested = x509time::truncate(req.requested_not_after);
    let empty = |na: OffsetDateTime| CaError::EmptyValidity {
        not_before: x509time::rfc3339(not_before),
        not_after: x509time::rfc3339(na),
    };
    if requested <= not_before {
        return Err(empty(requested));
    }
    let mut not_after =
        requested.min(x509time::add(not_before, Duration::days(i64::from(profile.max_validity_days)))?);
    if let Some(cap) = req.cap_not_after {
        let cap = x509time::truncate(cap);
        if cap <= not_before {
            return Err(CaError::CapBeforeNotBefore {
                cap: x509time::rfc3339(cap),
                not_before: x509time::rfc3339(not_before),
            });
        }
        not_after = not_after.min(cap);
    }
    if let Some(issuer_end) = issuer_not_after {
        // A certificate outliving its issuer would fail path validation after the issuer expires.
        not_after = not_after.min(issuer_end);
    }
    if not_after <= not_before {
        return Err(empty(not_after));
    }
    Ok((not_before, not_after))
}

fn check_presence(profile: &CertificateProfile, part: SanPart, present: bool) -> Result<(), CaError> {
    match (profile.san.get(part), present) {
        (Presence::Required, false) => Err(CaError::SanPartMissing { profile: profile.id.clone(), part }),
        (Presence::Forbidden, true) => Err(CaError::SanPartNotAllowed { profile: profile.id.clone(), part }),
        _ => Ok(()),
    }
}

fn build_san(profile: &CertificateProfile, san: &SanInput) -> Result<Vec<GeneralName>, CaError> {
    check_presence(profile, SanPart::FascN, san.fasc_n.is_some())?;
    check_presence(profile, SanPart::CardUuid, san.card_uuid.is_some())?;
    check_presence(profile, SanPart::CardholderUuid, san.cardholder_uuid.is_some())?;
    check_presence(profile, SanPart::Upn, san.upn.is_some())?;
    check_presence(profile, SanPart::Email, !san.email.is_empty())?;
    check_presence(profile, SanPart::Dns, !san.dns.is_empty())?;
    check_presence(profile, SanPart::Ip, !san.ip.is_empty())?;

    let mut names = Vec::new();
    if let Some(fasc_n) = &san.fasc_n {
        names.push(GeneralName::OtherName(OtherName {
            type_id: oids::PIV_FASC_N,
            value: Any::new(Tag::OctetString, fasc_n.as_slice())?,
        }));
    }
    if let Some(uuid) = &san.card_uuid {
        names.push(ext::uri(&ext::uuid_urn(uuid))?);
    }
    if let Some(uuid) = &san.cardholder_uuid {
        names.push(ext::uri(&ext::uuid_urn(uuid))?);
    }
    if let Some(upn) = &san.upn {
        check_upn(upn)?;
        names.push(GeneralName::OtherName(OtherName {
            type_id: oids::MS_UPN,
            value: Any::new(Tag::Utf8String, upn.as_bytes())?,
        }));
    }
    for email in &san.email {
        check_email(email)?;
        names.push(GeneralName::Rfc822Name(Ia5String::new(email)?));
    }
    for dns in &san.dns {
        check_dns(dns, SanPart::Dns, true)?;
        names.push(GeneralName::DnsName(Ia5String::new(dns)?));
    }
    for ip in &san.ip {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(GeneralName::IpAddress(OctetString::new(bytes)?));
    }
    if profile.san.at_least_one && names.is_empty() {
        return Err(CaError::SanRequired { profile: profile.id.clone() });
    }
    Ok(names)
}

fn check_upn(upn: &str) -> Result<(), CaError> {
    let bad = |reason| CaError::InvalidSanValue { part: SanPart::Upn, value: upn.to_string(), reason };
    if upn.is_empty() {
        return Err(bad("empty"));
    }
    if upn.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("contains whitespace or control characters"));
    }
    match upn.rsplit_once('@') {
        Some((user, domain)) if !user.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err(bad("must have the form user@domain")),
    }
}

fn check_email(email: &str) -> Result<(), CaError> {
    let bad = |reason| CaError::InvalidSanValue { part: SanPart::Email, value: email.to_string(), reason };
    if !email.is_ascii() {
        return Err(bad("internationalised mailboxes (SmtpUTF8Mailbox) are not supported"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(bad("must have the form local@domain"));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(bad("the local part must be 1-64 characters"));
    }
    if local
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"@\"(),:;<>[\\]".contains(&b))
    {
        return Err(bad("the local part contains characters that need quoting"));
    }
    check_dns(domain, SanPart::Email, false).map_err(|_| bad("the domain is not a valid host name"))
}

fn check_dns(name: &str, part: SanPart, allow_wildcard: bool) -> Result<(), CaError> {
    let bad = |reason| CaError::InvalidSanValue { part, value: name.to_string(), reason };
    let host = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => name,
    };
    if host.is_empty() || name.len() > 253 {
        return Err(bad("must be 1-253 characters"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 && allow_wildcard && name.starts_with("*.") {
        return Err(bad("a wildcard needs at least two labels after it"));
    }
    for label in labels {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(bad("labels must be 1-63 letters, digits or inner hyphens"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_and_email_checks() {
        assert!(check_dns("lanyard.example.org", SanPart::Dns, true).is_ok());
        assert!(check_dns("*.example.org", SanPart::Dns, true).is_ok());
        assert!(check_dns("*.org", SanPart::Dns, true).is_err());
        assert!(check_dns("-bad.example", SanPart::Dns, true).is_err());
        assert!(check_dns("a..b", SanPart::Dns, true).is_err());
        assert!(check_email("jane.doe@example.gov").is_ok());
        assert!(check_email("jane doe@example.gov").is_err());
        assert!(check_email("jané@example.gov").is_err());
        assert!(check_email("@example.gov").is_err());
        assert!(check_upn("jdoe@corp.example").is_ok());
        assert!(check_upn("jdoe").is_err());
    }

    #[test]
    fn urls() {
        let u = CaUrls::new("http://pki.example.org/").unwrap();
        assert_eq!(u.ocsp(), "http://pki.example.org/pki/ocsp");
        assert_eq!(u.for_root_ca().crl.as_deref(), Some("http://pki.example.org/pki/root.crl"));
        assert!(CaUrls::new("ftp://x").is_err());
        assert!(CaUrls::new("http://a b").is_err());
    }
}
