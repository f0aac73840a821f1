//! Certificate revocation lists (RFC 5280 §5): full CRLs, version 2.

use der::Encode;
use der::asn1::Uint;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_cert::Version;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::{CrlNumber, CrlReason};
use x509_cert::serial_number::SerialNumber;

use crate::error::CaError;
use crate::ext;
use crate::issue::CertificateAuthority;
use crate::keys::CaSigner;
use crate::oids;
use crate::x509time;

/// RFC 5280 §5.3.1 reason codes (value 7 is unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// unspecified (0). Written as "no reason code", as RFC 5280 recommends.
    Unspecified = 0,
    /// keyCompromise (1).
    KeyCompromise = 1,
    /// cACompromise (2).
    CaCompromise = 2,
    /// affiliationChanged (3).
    AffiliationChanged = 3,
    /// superseded (4).
    Superseded = 4,
    /// cessationOfOperation (5).
    CessationOfOperation = 5,
    /// certificateHold (6): reversible suspension.
    CertificateHold = 6,
    /// removeFromCRL (8): delta CRLs only; lifts a hold.
    RemoveFromCrl = 8,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn = 9,
    /// aACompromise (10).
    AaCompromise = 10,
}

impl RevocationReason {
    /// The numeric reason code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From a numeric code.
    pub fn from_code(code: u8) -> Option<Self> {
        use RevocationReason::*;
        [
            Unspecified,
            KeyCompromise,
            CaCompromise,
            AffiliationChanged,
            Superseded,
            CessationOfOperation,
            CertificateHold,
            RemoveFromCrl,
            PrivilegeWithdrawn,
            AaCompromise,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    pub(crate) fn to_x509(self) -> CrlReason {
        match self {
            RevocationReason::Unspecified => CrlReason::Unspecified,
            RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
            RevocationReason::CaCompromise => CrlReason::CaCompromise,
            RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
            RevocationReason::Superseded => CrlReason::Superseded,
            RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
            RevocationReason::CertificateHold => CrlReason::CertificateHold,
            RevocationReason::RemoveFromCrl => CrlReason::RemoveFromCRL,
            RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => CrlReason::AaCompromise,
        }
    }

    /// The reason code to write, if any: `unspecified` is expressed by leaving the code out
    /// (RFC 5280 §5.3.1 SHOULD).
    pub(crate) fn encoded(reason: Option<Self>) -> Option<CrlReason> {
        reason.filter(|r| *r != RevocationReason::Unspecified).map(Self::to_x509)
    }
}

/// One revoked (or held) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial number.
    pub serial: SerialNumber,
    /// When it was revoked (or put on hold).
    pub revocation_date: OffsetDateTime,
    /// Why.
    pub reason: Option<RevocationReason>,
}

/// The CRL's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlParams {
    /// cRLNumber: must increase with every CRL this CA issues.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate (RFC 5280 requires it).
    pub next_update: OffsetDateTime,
}

impl<S: CaSigner> CertificateAuthority<S> {
    /// Builds and signs a full CRL v2 listing `entries`, with cRLNumber and authorityKeyIdentifier.
    /// Returns DER (PEM label `X509 CRL`).
    pub fn build_crl(&self, entries: &[RevokedEntry], params: &CrlParams) -> Result<Vec<u8>, CaError> {
        let this_update = x509time::truncate(params.this_update);
        let next_update = x509time::truncate(params.next_update);
        if next_update <= this_update {
            return Err(CaError::NextUpdateNotAfterThisUpdate {
                this_update: x509time::rfc3339(this_update),
                next_update: x509time::rfc3339(next_update),
            });
        }
        let mut revoked = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if entries[..i].iter().any(|e| e.serial == entry.serial) {
                return Err(CaError::InvalidSerial(format!("serial {} is listed twice", entry.serial)));
            }
            if entry.reason == Some(RevocationReason::RemoveFromCrl) {
                return Err(CaError::RemoveFromCrlInFullCrl { serial: entry.serial.to_string() });
            }
            let crl_entry_extensions = match RevocationReason::encoded(entry.reason) {
                Some(reason) => Some(vec![ext::extension(oids::CRL_REASON, false, &reason)?]),
                None => None,
            };
            revoked.push(RevokedCert {
                serial_number: entry.serial.clone(),
                revocation_date: x509time::to_x509(x509time::truncate(entry.revocation_date))?,
                crl_entry_extensions,
            });
        }
        let tbs = TbsCertList {
            version: Version::V2,
            signature: self.signer().algorithm(),
            issuer: self.certificate().tbs_certificate.subject.clone(),
            this_update: x509time::to_x509(this_update)?,
            next_update: Some(x509time::to_x509(next_update)?),
            // RFC 5280 §5.1.2.6: absent, not empty, when nothing is revoked.
            revoked_certificates: if revoked.is_empty() { None } else { Some(revoked) },
            crl_extensions: Some(vec![
                ext::authority_key_identifier(self.key_identifier())?,
                ext::extension(
                    oids::CRL_NUMBER,
                    false,
                    &CrlNumber(Uint::new(&params.number.to_be_bytes())?),
                )?,
            ]),
        };
        let tbs_der = tbs.to_der()?;
        let signature = self.sign_checked(&tbs_der, "CRL")?;
        let crl =
            CertificateList { tbs_cert_list: tbs, signature_algorithm: self.signer().algorithm(), signature };
        Ok(crl.to_der()?)
    }
}
