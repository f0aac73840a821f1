//! Certificate revocation lists (RFC 5280 §5): full CRLs, version 2.

use der::asn1::Uint;
use der::{Encode, Length};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_cert::Version;
use x509_cert::crl::RevokedCert;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::DistributionPointName;
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

/// Which CRL shard (distribution-point partition) a certificate belongs to when the CA publishes
/// `shards` partitions: its serial number (big-endian, leading zero bytes or not) modulo `shards`.
/// Serials are random, so shards are even. `shards` must be at least 1.
pub fn crl_shard(serial: &[u8], shards: u16) -> u16 {
    let n = u32::from(shards.max(1));
    let rest = serial.iter().fold(0u32, |acc, b| ((acc << 8) | u32::from(*b)) % n);
    // `rest < n <= u16::MAX + 1`, and `n <= u16::MAX` as it came from a u16.
    u16::try_from(rest).unwrap_or(0)
}

/// A CRL being assembled one entry at a time: entries are DER-encoded as they come, so a list of
/// a million costs about 40 bytes each and no per-entry structures. Entries must be distinct
/// (the caller's source guarantees it, e.g. a unique column); [`CertificateAuthority::build_crl`]
/// checks it for lists built in memory.
pub struct CrlBuilder<'a, S: CaSigner> {
    ca: &'a CertificateAuthority<S>,
    entries: Vec<u8>,
    count: u64,
}

impl<S: CaSigner> CrlBuilder<'_, S> {
    /// Adds one entry.
    pub fn push(&mut self, entry: &RevokedEntry) -> Result<(), CaError> {
        if entry.reason == Some(RevocationReason::RemoveFromCrl) {
            return Err(CaError::RemoveFromCrlInFullCrl { serial: entry.serial.to_string() });
        }
        let crl_entry_extensions = match RevocationReason::encoded(entry.reason) {
            Some(reason) => Some(vec![ext::extension(oids::CRL_REASON, false, &reason)?]),
            None => None,
        };
        let revoked = RevokedCert {
            serial_number: entry.serial.clone(),
            revocation_date: x509time::to_x509(x509time::truncate(entry.revocation_date))?,
            crl_entry_extensions,
        };
        revoked.encode_to_vec(&mut self.entries)?;
        self.count += 1;
        Ok(())
    }

    /// How many entries were added.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Signs the CRL: cRLNumber and authorityKeyIdentifier, and with `distribution_point` an
    /// issuingDistributionPoint naming that URL (critical, as RFC 5280 §5.2.5 requires), which
    /// makes this the CRL of the certificates whose cRLDistributionPoints name the same URL.
    /// Returns DER.
    pub fn finish(self, params: &CrlParams, distribution_point: Option<&str>) -> Result<Vec<u8>, CaError> {
        let this_update = x509time::truncate(params.this_update);
        let next_update = x509time::truncate(params.next_update);
        if next_update <= this_update {
            return Err(CaError::NextUpdateNotAfterThisUpdate {
                this_update: x509time::rfc3339(this_update),
                next_update: x509time::rfc3339(next_update),
            });
        }
        let mut extensions = vec![
            ext::authority_key_identifier(self.ca.key_identifier())?,
            ext::extension(oids::CRL_NUMBER, false, &CrlNumber(Uint::new(&params.number.to_be_bytes())?))?,
        ];
        if let Some(url) = distribution_point {
            let idp = IssuingDistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![ext::uri(url)?])),
                only_contains_user_certs: false,
                only_contains_ca_certs: false,
                only_some_reasons: None,
                indirect_crl: false,
                only_contains_attribute_certs: false,
            };
            extensions.push(ext::extension(oids::ISSUING_DISTRIBUTION_POINT, true, &idp)?);
        }
        let signature_algorithm = self.ca.signer().algorithm();
        // TBSCertList field by field, with the entries spliced in as they were encoded.
        let mut body = Vec::with_capacity(self.entries.len() + 1024);
        Version::V2.encode_to_vec(&mut body)?;
        signature_algorithm.encode_to_vec(&mut body)?;
        self.ca.certificate().tbs_certificate.subject.encode_to_vec(&mut body)?;
        x509time::to_x509(this_update)?.encode_to_vec(&mut body)?;
        x509time::to_x509(next_update)?.encode_to_vec(&mut body)?;
        // RFC 5280 §5.1.2.6: absent, not empty, when nothing is revoked.
        if !self.entries.is_empty() {
            header(&mut body, 0x30, self.entries.len())?;
            body.extend_from_slice(&self.entries);
        }
        drop(self.entries);
        let extensions = extensions.to_der()?;
        header(&mut body, 0xa0, extensions.len())?;
        body.extend_from_slice(&extensions);
        let mut tbs = Vec::with_capacity(body.len() + 8);
        header(&mut tbs, 0x30, body.len())?;
        tbs.extend_from_slice(&body);
        drop(body);
        let signature = self.ca.sign_checked(&tbs, "CRL")?;
        let mut rest = signature_algorithm.to_der()?;
        signature.encode_to_vec(&mut rest)?;
        let mut crl = Vec::with_capacity(tbs.len() + rest.len() + 8);
        header(&mut crl, 0x30, tbs.len() + rest.len())?;
        crl.extend_from_slice(&tbs);
        crl.extend_from_slice(&rest);
        Ok(crl)
    }
}

/// Appends a DER tag and definite length.
fn header(out: &mut Vec<u8>, tag: u8, len: usize) -> Result<(), CaError> {
    out.push(tag);
    Length::try_from(len)?.encode_to_vec(out)?;
    Ok(())
}

impl<S: CaSigner> CertificateAuthority<S> {
    /// A CRL to fill entry by entry ([`CrlBuilder`]).
    pub fn crl_builder(&self) -> CrlBuilder<'_, S> {
        CrlBuilder { ca: self, entries: Vec::new(), count: 0 }
    }

    /// Builds and signs a full CRL v2 listing `entries`, with cRLNumber and authorityKeyIdentifier.
    /// Returns DER (PEM label `X509 CRL`).
    pub fn build_crl(&self, entries: &[RevokedEntry], params: &CrlParams) -> Result<Vec<u8>, CaError> {
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        let mut builder = self.crl_builder();
        for entry in entries {
            if !seen.insert(entry.serial.as_bytes()) {
                return Err(CaError::InvalidSerial(format!("serial {} is listed twice", entry.serial)));
            }
            builder.push(entry)?;
        }
        builder.finish(params, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shards_are_in_range_and_ignore_leading_zero_bytes(serial in proptest::collection::vec(any::<u8>(), 1..20), shards in 1u16..=u16::MAX) {
            let s = crl_shard(&serial, shards);
            prop_assert!(s < shards);
            let mut padded = vec![0u8];
            padded.extend_from_slice(&serial);
            prop_assert_eq!(crl_shard(&padded, shards), s);
        }

        #[test]
        fn shards_match_the_serial_as_a_number(v in any::<u64>(), shards in 1u16..=u16::MAX) {
            prop_assert_eq!(u64::from(crl_shard(&v.to_be_bytes(), shards)), v % u64::from(shards));
        }
    }
}
