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
///
/// The entries go into the buffer that becomes the CRL: it starts with a gap for everything
/// that precedes them (the TBSCertList's header, version, algorithm, issuer and dates), which
/// [`CrlBuilder::finish`] fills, so the list is never copied into a second buffer.
pub struct CrlBuilder<'a, S: CaSigner> {
    ca: &'a CertificateAuthority<S>,
    /// `front` bytes of gap, then the encoded entries.
    buf: Vec<u8>,
    front: usize,
    count: u64,
}

/// About how many bytes one entry takes (a 16-octet serial, a UTCTime and a reason code), for
/// [`CrlBuilder::reserve`].
const TYPICAL_ENTRY: usize = 48;

/// Longest DER header (tag and length) written here: lengths below 2^32.
const MAX_HEADER: usize = 6;

/// Longest serial number content (RFC 5280 §4.1.2.2: at most 20 octets).
const MAX_SERIAL_OCTETS: usize = 20;

/// crlEntryExtensions holding reasonCode `code` and nothing else:
/// SEQUENCE { SEQUENCE { OID 2.5.29.21, OCTET STRING { ENUMERATED code } } }, the criticality
/// left out as DER requires for its default (false).
fn reason_extensions(code: u8) -> [u8; 14] {
    [0x30, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a, 0x01, code]
}

/// `t` as an X.509 Time (RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050),
/// whole seconds, into `out`; returns how many bytes it wrote (15 or 17).
fn encode_time(t: OffsetDateTime, out: &mut [u8; 17]) -> Result<usize, CaError> {
    let t = x509time::truncate(t);
    let year = t.year();
    if t.unix_timestamp() < 0 || year > 9999 {
        return Err(CaError::TimeOutOfRange(x509time::rfc3339(t)));
    }
    // `year` is 1970..=9999 here, so every field below is a small non-negative number.
    let digits = |v: i32| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let mut fields = [0u8; 15];
    let (tag, start) = if year <= 2049 { (0x17, 2) } else { (0x18, 0) };
    fields[0..2].copy_from_slice(&digits(year / 100));
    fields[2..4].copy_from_slice(&digits(year % 100));
    fields[4..6].copy_from_slice(&digits(i32::from(u8::from(t.month()))));
    fields[6..8].copy_from_slice(&digits(i32::from(t.day())));
    fields[8..10].copy_from_slice(&digits(i32::from(t.hour())));
    fields[10..12].copy_from_slice(&digits(i32::from(t.minute())));
    fields[12..14].copy_from_slice(&digits(i32::from(t.second())));
    fields[14] = b'Z';
    let content = &fields[start..];
    out[0] = tag;
    // 13 or 15: a short-form length.
    out[1] = content.len() as u8;
    out[2..2 + content.len()].copy_from_slice(content);
    Ok(2 + content.len())
}

impl<S: CaSigner> CrlBuilder<'_, S> {
    /// Adds one entry. This is the reference encoding, through `x509-cert`'s types;
    /// [`CrlBuilder::push_parts`] writes the same bytes without them.
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
        revoked.encode_to_vec(&mut self.buf)?;
        self.count += 1;
        Ok(())
    }

    /// Adds one entry from its parts, written straight into the list with no allocation:
    /// `serial` is the serial number's big-endian value (leading zero octets allowed, at most
    /// 20 octets once encoded), `revocation_date` is truncated to whole seconds, and `reason`
    /// becomes a reasonCode extension (none for `unspecified`, as [`CrlBuilder::push`] does).
    /// On error nothing is added.
    pub fn push_parts(
        &mut self,
        serial: &[u8],
        revocation_date: OffsetDateTime,
        reason: Option<RevocationReason>,
    ) -> Result<(), CaError> {
        let mut value = serial;
        while let [0, rest @ ..] = value
            && !rest.is_empty()
        {
            value = rest;
        }
        let Some(first) = value.first() else {
            return Err(CaError::InvalidSerial("an empty serial number".into()));
        };
        let pad = usize::from(*first >= 0x80);
        if value.len() + pad > MAX_SERIAL_OCTETS {
            return Err(CaError::InvalidSerial(format!(
                "serial {} is longer than {MAX_SERIAL_OCTETS} octets",
                hex::encode(serial)
            )));
        }
        if reason == Some(RevocationReason::RemoveFromCrl) {
            return Err(CaError::RemoveFromCrlInFullCrl { serial: hex::encode(serial) });
        }
        let mut time = [0u8; 17];
        let time_len = encode_time(revocation_date, &mut time)?;
        let extensions = RevocationReason::encoded(reason).map(|r| reason_extensions(r as u8));
        let serial_len = pad + value.len();
        // At most 2 + 20 + 17 + 14 = 53: a short-form length.
        let content = 2 + serial_len + time_len + extensions.map_or(0, |e| e.len());
        self.buf.extend_from_slice(&[0x30, content as u8, 0x02, serial_len as u8]);
        if pad == 1 {
            self.buf.push(0);
        }
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(&time[..time_len]);
        if let Some(e) = extensions {
            self.buf.extend_from_slice(&e);
        }
        self.count += 1;
        Ok(())
    }

    /// Makes room for about `entries` more entries, so a list of known size grows its buffer
    /// once.
    pub fn reserve(&mut self, entries: usize) {
        self.buf.reserve(entries.saturating_mul(TYPICAL_ENTRY));
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
    /// Returns DER, in the buffer the entries were written to.
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
        let Self { ca, mut buf, front, .. } = self;
        let listed = buf.len() - front;
        // TBSCertList field by field up to the entries, which are already in place.
        let mut head = Vec::with_capacity(front);
        Version::V2.encode_to_vec(&mut head)?;
        signature_algorithm.encode_to_vec(&mut head)?;
        ca.certificate().tbs_certificate.subject.encode_to_vec(&mut head)?;
        x509time::to_x509(this_update)?.encode_to_vec(&mut head)?;
        x509time::to_x509(next_update)?.encode_to_vec(&mut head)?;
        // RFC 5280 §5.1.2.6: absent, not empty, when nothing is revoked.
        if listed > 0 {
            header(&mut head, 0x30, listed)?;
        }
        let mut tail = Vec::new();
        let extensions = extensions.to_der()?;
        header(&mut tail, 0xa0, extensions.len())?;
        tail.extend_from_slice(&extensions);
        let mut tbs_header = Vec::with_capacity(MAX_HEADER);
        header(&mut tbs_header, 0x30, head.len() + listed + tail.len())?;
        // The gap must hold the TBSCertList's start and, before it, the CRL's own header.
        let need = MAX_HEADER + tbs_header.len() + head.len();
        let front = if need > front {
            buf.splice(0..0, std::iter::repeat_n(0, need - front));
            need
        } else {
            front
        };
        let tbs_start = front - head.len() - tbs_header.len();
        buf[tbs_start..tbs_start + tbs_header.len()].copy_from_slice(&tbs_header);
        buf[tbs_start + tbs_header.len()..front].copy_from_slice(&head);
        buf.extend_from_slice(&tail);
        let signature = ca.sign_checked(&buf[tbs_start..], "CRL")?;
        let mut rest = signature_algorithm.to_der()?;
        signature.encode_to_vec(&mut rest)?;
        let mut crl_header = Vec::with_capacity(MAX_HEADER);
        header(&mut crl_header, 0x30, buf.len() - tbs_start + rest.len())?;
        buf.extend_from_slice(&rest);
        let start = tbs_start - crl_header.len();
        buf[start..tbs_start].copy_from_slice(&crl_header);
        buf.drain(..start);
        Ok(buf)
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
        // Room for the CRL's and TBSCertList's headers, version, algorithm, issuer, two dates
        // (GeneralizedTime at most) and the entries' header; `finish` widens it if short.
        let size = |len: der::Result<Length>| len.ok().and_then(|l| usize::try_from(l).ok()).unwrap_or(0);
        let named = size(self.signer().algorithm().encoded_len())
            + size(self.certificate().tbs_certificate.subject.encoded_len());
        let front = 3 * MAX_HEADER + 3 + named + 2 * 17;
        CrlBuilder { ca: self, buf: vec![0; front], front, count: 0 }
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
    use crate::hierarchy::{Hierarchy, HierarchySpec};
    use der::Decode;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn ca() -> &'static CertificateAuthority<crate::SoftwareKey> {
        static H: OnceLock<Hierarchy> = OnceLock::new();
        &H.get_or_init(|| {
            let urls = crate::CaUrls::new("http://pki.test").unwrap();
            let spec = HierarchySpec::new("CRL Test", crate::KeyAlgorithm::EcP256, urls).unwrap();
            Hierarchy::generate(&spec, OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()).unwrap()
        })
        .issuing
    }

    const REASONS: [Option<RevocationReason>; 10] = [
        None,
        Some(RevocationReason::Unspecified),
        Some(RevocationReason::KeyCompromise),
        Some(RevocationReason::CaCompromise),
        Some(RevocationReason::AffiliationChanged),
        Some(RevocationReason::Superseded),
        Some(RevocationReason::CessationOfOperation),
        Some(RevocationReason::CertificateHold),
        Some(RevocationReason::PrivilegeWithdrawn),
        Some(RevocationReason::AaCompromise),
    ];

    /// The entries' bytes of a builder, after its gap.
    fn listed<S: CaSigner>(b: &CrlBuilder<'_, S>) -> Vec<u8> {
        b.buf[b.front..].to_vec()
    }

    /// Up to 20 octets once encoded: 1..=20 octets below 0x80 at the top, 1..=19 above, with
    /// up to two leading zero octets the encoding drops.
    fn serial() -> impl Strategy<Value = Vec<u8>> {
        (0usize..3, proptest::collection::vec(any::<u8>(), 1..=20)).prop_map(|(zeros, mut v)| {
            if v[0] >= 0x80 && v.len() == 20 {
                v.remove(0);
            }
            let mut s = vec![0u8; zeros];
            s.extend(v);
            s
        })
    }

    proptest! {
        #[test]
        fn parts_encode_exactly_as_the_reference(
            entries in proptest::collection::vec(
                // 1970 to 9999, either side of 2050 (UTCTime, GeneralizedTime), any nanoseconds.
                (serial(), 0i64..253_402_300_800, 0u32..1_000_000_000, 0usize..REASONS.len()),
                0..20,
            )
        ) {
            let mut reference = ca().crl_builder();
            let mut fast = ca().crl_builder();
            for (serial, secs, nanos, reason) in &entries {
                let at = OffsetDateTime::from_unix_timestamp(*secs).unwrap() + time::Duration::nanoseconds(i64::from(*nanos));
                let entry = RevokedEntry { serial: SerialNumber::new(serial).unwrap(), revocation_date: at, reason: REASONS[*reason] };
                reference.push(&entry).unwrap();
                fast.push_parts(serial, at, REASONS[*reason]).unwrap();
            }
            prop_assert_eq!(listed(&fast), listed(&reference));
            prop_assert_eq!(fast.len(), entries.len() as u64);
        }

        #[test]
        fn refused_parts_add_nothing(serial in proptest::collection::vec(any::<u8>(), 0..40), secs in -10_000i64..10_000) {
            let mut fast = ca().crl_builder();
            let at = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let value: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
            let octets = value.len() + usize::from(value.first().is_some_and(|b| *b >= 0x80));
            let valid = !serial.is_empty() && octets <= 20 && secs >= 0;
            prop_assert_eq!(fast.push_parts(&serial, at, None).is_ok(), valid);
            prop_assert_eq!(fast.len(), u64::from(valid));
            if !valid {
                prop_assert!(listed(&fast).is_empty());
            }
            prop_assert!(fast.push_parts(&[1], at.max(OffsetDateTime::UNIX_EPOCH), Some(RevocationReason::RemoveFromCrl)).is_err());
        }
    }

    #[test]
    fn a_crl_of_parts_is_the_reference_crl() {
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let params = CrlParams { number: 77, this_update: now, next_update: now + time::Duration::days(1) };
        // The gap before the entries fits; and also when it is too short and must widen.
        for gap in [None, Some(0)] {
            for n in [0u64, 1, 1000] {
                let mut entries = Vec::new();
                let mut fast = ca().crl_builder();
                if let Some(g) = gap {
                    fast.buf.drain(..fast.front - g);
                    fast.front = g;
                }
                for i in 0..n {
                    let serial = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
                    let at = now + time::Duration::days(i as i64 * 30);
                    let reason = REASONS[i as usize % REASONS.len()];
                    fast.push_parts(&serial, at, reason).unwrap();
                    entries.push(RevokedEntry {
                        serial: SerialNumber::new(&serial).unwrap(),
                        revocation_date: at,
                        reason,
                    });
                }
                let mut reference = ca().crl_builder();
                for e in &entries {
                    reference.push(e).unwrap();
                }
                let (fast, reference) =
                    (fast.finish(&params, None).unwrap(), reference.finish(&params, None).unwrap());
                // ECDSA signatures differ; everything they sign must not.
                let parse = |der: &[u8]| x509_cert::crl::CertificateList::from_der(der).unwrap();
                let (f, r) = (parse(&fast), parse(&reference));
                assert_eq!(f.tbs_cert_list.to_der().unwrap(), r.tbs_cert_list.to_der().unwrap());
                assert_eq!(f.tbs_cert_list.revoked_certificates.as_ref().map_or(0, |v| v.len()), n as usize);
                assert!(
                    crate::keys::verify_signature(
                        &ca().certificate().tbs_certificate.subject_public_key_info,
                        &f.signature_algorithm,
                        &f.tbs_cert_list.to_der().unwrap(),
                        f.signature.raw_bytes(),
                    )
                    .is_ok()
                );
            }
        }
    }

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
