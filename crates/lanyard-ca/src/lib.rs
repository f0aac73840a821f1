//! Lanyard's built-in certificate authority.
//!
//! - [`keys`]: the [`CaSigner`] trait and [`SoftwareKey`] (aws-lc-rs), P-256/P-384/RSA-2048/3072.
//! - [`profile`]: certificate profiles as serde data, with FIPS 201-3 / FPKI built-ins.
//! - [`issue`]: [`CertificateAuthority`] issuing X.509 v3 certificates from an [`IssueRequest`].
//! - [`csr`]: PKCS#10 parsing with signature verification.
//! - [`hierarchy`]: root, issuing CA, OCSP responder, content signer and profile signer.
//! - [`crl`]: CRL v2.
//! - [`ocsp`]: a sans-IO RFC 6960 responder.
//! - [`cms`]: CMS signatures: detached for PIV data objects (the CHUID issuer signature),
//!   attached for configuration profiles.
//! - [`mobileconfig`]: signed Apple configuration profiles that enrol a device over SCEP.
//! - [`attestation`]: YubiKey PIV attestation verification (proof a key was made on the card).
//! - [`card_check`]: a presented PIV card's certificate as a relying party checks it: path to the
//!   configured anchors, OCSP or CRL status, the card's signature over a challenge.
//! - [`scep`]: SCEP (RFC 8894) messages: BER normalisation, PKIMessage parsing, CertRep.
//! - [`mobile_attestation`]: Android Key Attestation and Apple App Attest verification.
//! - [`store`]: PKCS#8 key files, the crate's only I/O.
//!
//! Everything takes the current time as an argument; nothing here reads the clock.

pub mod attestation;
pub mod card_check;
pub mod cms;
pub mod crl;
pub mod csr;
pub mod error;
mod ext;
pub mod hierarchy;
pub mod issue;
pub mod keys;
pub mod mobile_attestation;
pub mod mobileconfig;
pub mod name;
pub mod ocsp;
pub mod oids;
pub mod profile;
pub mod scep;
pub mod store;
mod x509time;

pub use attestation::{AttestationEvidence, verify_piv_attestation};
pub use crl::{CrlBuilder, CrlParams, RevocationReason, RevokedEntry, crl_shard};
pub use csr::{ParsedCsr, build_csr, parse_csr, parse_csr_der, parse_csr_pem};
pub use error::{AttestationError, CaError, ChainPosition, CmsError, CsrError};
pub use hierarchy::{Hierarchy, HierarchySpec, SignerCredential};
pub use issue::{
    AuthorityUrls, CaUrls, CertificateAuthority, IssueRequest, IssuedCertificate, SanInput, pem,
};
pub use keys::{CaSigner, KeyAlgorithm, SoftwareKey};
pub use name::{common_name, parse_dn};
pub use ocsp::{CertStatus, OcspResponder, ParsedOcspRequest};
pub use profile::{CertificateProfile, Presence, SanPart};
pub use store::KeyFileStore;

// The types callers need to fill requests and read results.
pub use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
pub use x509_cert::{Certificate, name::Name, serial_number::SerialNumber, time::Validity};
