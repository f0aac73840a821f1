//! A sans-IO OCSP responder (RFC 6960): DER request in, DER response out.
//!
//! Responses are signed by a delegated responder certificate issued by the CA (EKU
//! id-kp-OCSPSigning, id-pkix-ocsp-nocheck), included in `certs` so clients can check it.

use aws_lc_rs::digest;
use der::asn1::{Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use time::{Duration, OffsetDateTime};
use x509_cert::certificate::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_ocsp::{
    BasicOcspResponse, OcspGeneralizedTime, OcspRequest, OcspResponse, OcspResponseStatus, ResponderId,
    ResponseBytes, ResponseData, RevokedInfo, SingleResponse,
};

pub use x509_ocsp::CertId;

use crate::crl::RevocationReason;
use crate::error::CaError;
use crate::issue::sign_checked;
use crate::keys::{CaSigner, spki_der, verify_signature};
use crate::oids;
use crate::x509time;

/// The status the CA's records give for one serial number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked, or on hold (`reason: Some(CertificateHold)`).
    Revoked {
        /// When.
        revoked_at: OffsetDateTime,
        /// Why; `Unspecified` is sent as no reason. `RemoveFromCrl` means the hold was lifted, so
        /// it is answered as good.
        reason: Option<RevocationReason>,
    },
    /// Not a serial this CA issued.
    Unknown,
}

/// The DER of an OCSPResponse with status internalError, used if building a response fails.
const INTERNAL_ERROR: [u8; 5] = [0x30, 0x03, 0x0a, 0x01, 0x02];
/// The DER of an OCSPResponse with status malformedRequest.
const MALFORMED_REQUEST: [u8; 5] = [0x30, 0x03, 0x0a, 0x01, 0x01];

/// Requests larger than this are refused as malformed (a normal one is under 200 bytes).
const MAX_REQUEST_LEN: usize = 16 * 1024;
/// At most this many certificates per request.
const MAX_REQUESTS: usize = 64;
/// RFC 8954 §2.1: nonces are 1 to 32 octets.
const MAX_NONCE_LEN: usize = 32;

/// Issuer name and key hashes for one CertID hash algorithm.
#[derive(Debug, Clone)]
struct IssuerHashes {
    algorithm: ObjectIdentifier,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
}

/// An OCSP responder for one issuing CA.
pub struct OcspResponder<S: CaSigner = Box<dyn CaSigner>> {
    signer: S,
    responder_cert: Certificate,
    responder_key_hash: Vec<u8>,
    issuer: Vec<IssuerHashes>,
    next_update_in: Duration,
}

impl<S: CaSigner> std::fmt::Debug for OcspResponder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspResponder")
            .field("responder", &self.responder_cert.tbs_certificate.subject.to_string())
            .field("next_update_in", &self.next_update_in)
            .finish_non_exhaustive()
    }
}

fn hash_alg(oid: ObjectIdentifier) -> Option<&'static digest::Algorithm> {
    match oid {
        // SHA-1 only to match CertIDs (openssl's default) and the byKey responder id.
        o if o == oids::SHA1 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        o if o == oids::SHA256 => Some(&digest::SHA256),
        o if o == oids::SHA384 => Some(&digest::SHA384),
        o if o == oids::SHA512 => Some(&digest::SHA512),
        _ => None,
    }
}

impl<S: CaSigner> OcspResponder<S> {
    /// A responder answering for certificates issued by `issuer_der`, signing with `signer`, whose
    /// certificate `responder_der` must be issued by that same CA, carry id-kp-OCSPSigning and
    /// certify the signer's key. Responses say the answer is good for `next_update_in`.
    pub fn new(
        issuer_der: &[u8],
        responder_der: &[u8],
        signer: S,
        next_update_in: Duration,
    ) -> Result<Self, CaError> {
        let issuer = Certificate::from_der(issuer_der)?;
        let responder_cert = Certificate::from_der(responder_der)?;
        let unusable = |m: &str| CaError::UnusableResponder(m.to_string());
        let rtbs = &responder_cert.tbs_certificate;
        if rtbs.issuer != issuer.tbs_certificate.subject {
            return Err(unusable("not issued by the CA it would answer for"));
        }
        verify_signature(
            &issuer.tbs_certificate.subject_public_key_info,
            &responder_cert.signature_algorithm,
            &rtbs.to_der()?,
            responder_cert.signature.as_bytes().unwrap_or_default(),
        )
        .map_err(|_| unusable("its signature does not verify with the CA's key"))?;
        let eku = rtbs.get::<ExtendedKeyUsage>().map_err(|_| unusable("malformed extKeyUsage"))?;
        if !eku.is_some_and(|(_, eku)| eku.0.contains(&oids::KP_OCSP_SIGNING)) {
            return Err(unusable("it lacks extKeyUsage id-kp-OCSPSigning"));
        }
        if spki_der(&signer.public_key())? != spki_der(&rtbs.subject_public_key_info)? {
            return Err(unusable("the signing key does not match the responder certificate"));
        }
        if next_update_in <= Duration::ZERO {
            return Err(unusable("the nextUpdate interval must be positive"));
        }
        // Prove once that the signer produces signatures the certificate's key verifies; responses
        // are then signed without a per-response self-check, which would halve throughput.
        sign_checked(
            &signer,
            &rtbs.subject_public_key_info,
            b"lanyard ocsp responder self-test",
            "test signature",
        )?;

        let name_der = issuer.tbs_certificate.subject.to_der()?;
        let key_bits = issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
        let issuer_hashes = [oids::SHA1, oids::SHA256, oids::SHA384, oids::SHA512]
            .into_iter()
            .filter_map(|oid| {
                let alg = hash_alg(oid)?;
                Some(IssuerHashes {
                    algorithm: oid,
                    name_hash: digest::digest(alg, &name_der).as_ref().to_vec(),
                    key_hash: digest::digest(alg, key_bits).as_ref().to_vec(),
                })
            })
            .collect();
        let responder_key_hash = key_hash_sha1(&rtbs.subject_public_key_info);
        Ok(OcspResponder {
            signer,
            responder_cert,
            responder_key_hash,
            issuer: issuer_hashes,
            next_update_in,
        })
    }

    /// The responder certificate.
    pub fn responder_certificate(&self) -> &Certificate {
        &self.responder_cert
    }

    /// The signer.
    pub fn signer(&self) -> &S {
        &self.signer
    }

    /// Answers a DER OCSPRequest. Never fails: garbage gets `malformedRequest`, and an internal
    /// failure `internalError`. `lookup` is asked only about CertIDs that name this CA as issuer;
    /// others are answered `unknown` without it.
    pub fn respond(
        &self,
        request_der: &[u8],
        lookup: impl Fn(&CertId) -> CertStatus,
        now: OffsetDateTime,
    ) -> Vec<u8> {
        match ParsedOcspRequest::parse(request_der) {
            Ok(request) => self.respond_to(&request, lookup, now),
            Err(malformed) => malformed,
        }
    }

    /// [`OcspResponder::respond`] for a request parsed already. A response to a request without
    /// a nonce depends only on the request, the statuses and `now`, so it may be signed ahead and
    /// served again until its nextUpdate (RFC 5019 §2.2.1).
    pub fn respond_to(
        &self,
        request: &ParsedOcspRequest,
        lookup: impl Fn(&CertId) -> CertStatus,
        now: OffsetDateTime,
    ) -> Vec<u8> {
        self.build_response(&request.request, request.nonce.clone(), lookup, now)
            .unwrap_or_else(|_| INTERNAL_ERROR.to_vec())
    }

    /// Whether a CertID names this responder's CA (by any supported hash); others are answered
    /// `unknown` without a lookup.
    pub fn answers_for(&self, id: &CertId) -> bool {
        self.matches_issuer(id)
    }

    /// How far after thisUpdate a response's nextUpdate lies.
    pub fn next_update_in(&self) -> Duration {
        self.next_update_in
    }

    fn matches_issuer(&self, id: &CertId) -> bool {
        let params_ok = id.hash_algorithm.parameters.as_ref().is_none_or(|p| p.is_null());
        params_ok
            && self.issuer.iter().any(|h| {
                h.algorithm == id.hash_algorithm.oid
                    && h.name_hash == id.issuer_name_hash.as_bytes()
                    && h.key_hash == id.issuer_key_hash.as_bytes()
            })
    }

    fn build_response(
        &self,
        request: &OcspRequest,
        nonce: Option<Extension>,
        lookup: impl Fn(&CertId) -> CertStatus,
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, CaError> {
        let now = x509time::truncate(now);
        let this_update = OcspGeneralizedTime(x509time::to_generalized(now)?);
        let next_update =
            OcspGeneralizedTime(x509time::to_generalized(x509time::add(now, self.next_update_in)?)?);
        let mut responses = Vec::with_capacity(request.tbs_request.request_list.len());
        for single in &request.tbs_request.request_list {
            let id = &single.req_cert;
            let status = if self.matches_issuer(id) { lookup(id) } else { CertStatus::Unknown };
            let cert_status = match status {
                CertStatus::Good
                | CertStatus::Revoked { reason: Some(RevocationReason::RemoveFromCrl), .. } => {
                    x509_ocsp::CertStatus::Good(Null)
                }
                CertStatus::Revoked { revoked_at, reason } => x509_ocsp::CertStatus::Revoked(RevokedInfo {
                    revocation_time: OcspGeneralizedTime(x509time::to_generalized(x509time::truncate(
                        revoked_at,
                    ))?),
                    revocation_reason: RevocationReason::encoded(reason),
                }),
                CertStatus::Unknown => x509_ocsp::CertStatus::Unknown(Null),
            };
            responses.push(SingleResponse {
                cert_id: id.clone(),
                cert_status,
                this_update,
                next_update: Some(next_update),
                single_extensions: None,
            });
        }
        let tbs = ResponseData {
            version: x509_ocsp::Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new(self.responder_key_hash.clone())?),
            produced_at: OcspGeneralizedTime(x509time::to_generalized(now)?),
            responses,
            response_extensions: nonce.map(|n| vec![n]),
        };
        let signature = self.signer.sign(&tbs.to_der()?)?;
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: self.signer.algorithm(),
            signature: der::asn1::BitString::from_bytes(&signature)?,
            certs: Some(vec![self.responder_cert.clone()]),
        };
        let response = OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: oids::OCSP_BASIC,
                response: OctetString::new(basic.to_der()?)?,
            }),
        };
        Ok(response.to_der()?)
    }
}

/// An OCSP request that parsed and is within limits, and the nonce to echo if it has one.
#[derive(Debug, Clone)]
pub struct ParsedOcspRequest {
    request: OcspRequest,
    nonce: Option<Extension>,
}

impl ParsedOcspRequest {
    /// Parses a DER OCSPRequest: 1 to 64 certificates, at most one nonce of 1 to 32 octets.
    /// `Err` holds the DER of the malformedRequest response to send instead.
    pub fn parse(der: &[u8]) -> Result<Self, Vec<u8>> {
        let request = parse_request(der).ok_or_else(|| MALFORMED_REQUEST.to_vec())?;
        let nonce = request_nonce(&request).ok_or_else(|| MALFORMED_REQUEST.to_vec())?;
        Ok(Self { request, nonce })
    }

    /// Whether the client sent a nonce (its answer must then be signed for it).
    pub fn has_nonce(&self) -> bool {
        self.nonce.is_some()
    }

    /// The certificates asked about, in request order.
    pub fn cert_ids(&self) -> impl Iterator<Item = &CertId> {
        self.request.tbs_request.request_list.iter().map(|r| &r.req_cert)
    }
}

/// RFC 6960 §4.2.1 KeyHash: SHA-1 of the subjectPublicKey BIT STRING value.
fn key_hash_sha1(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, spki.subject_public_key.raw_bytes()).as_ref().to_vec()
}

fn parse_request(der: &[u8]) -> Option<OcspRequest> {
    if der.is_empty() || der.len() > MAX_REQUEST_LEN {
        return None;
    }
    let request = OcspRequest::from_der(der).ok()?;
    let n = request.tbs_request.request_list.len();
    (1..=MAX_REQUESTS).contains(&n).then_some(request)
}

/// `Some(None)`: no nonce. `Some(Some(ext))`: a nonce to echo. `None`: a nonce that is malformed or
/// outside RFC 8954's 1..=32 octets, which is answered malformedRequest.
fn request_nonce(request: &OcspRequest) -> Option<Option<Extension>> {
    let Some(extensions) = &request.tbs_request.request_extensions else {
        return Some(None);
    };
    let mut nonces = extensions.iter().filter(|e| e.extn_id == oids::OCSP_NONCE);
    let Some(nonce) = nonces.next() else {
        return Some(None);
    };
    if nonces.next().is_some() {
        return None;
    }
    // RFC 6960 §4.4.1 wraps the nonce in an OCTET STRING inside extnValue; some old clients put the
    // raw bytes there instead. Either way the extension is echoed exactly as received.
    let inner_len = match OctetString::from_der(nonce.extn_value.as_bytes()) {
        Ok(inner) => inner.as_bytes().len(),
        Err(_) => nonce.extn_value.as_bytes().len(),
    };
    (1..=MAX_NONCE_LEN).contains(&inner_len).then(|| Some(Extension { critical: false, ..nonce.clone() }))
}

/// Reads the response status of a DER OCSPResponse (for callers' logs and tests).
pub fn response_status(response_der: &[u8]) -> Option<OcspResponseStatus> {
    OcspResponse::from_der(response_der).ok().map(|r| r.response_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, parsing answers: a request, or the malformedRequest response.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            match ParsedOcspRequest::parse(&bytes) {
                Ok(r) => prop_assert!(r.cert_ids().count() >= 1),
                Err(e) => prop_assert_eq!(response_status(&e), Some(OcspResponseStatus::MalformedRequest)),
            }
        }

        /// A request mangled after its header is refused or parsed, never more.
        #[test]
        fn mangled_requests_are_answered(cut in 0usize..80, flip in any::<u8>(), at in 0usize..80) {
            // One CertID (SHA-1, serial 0x01), no extensions.
            let mut der = vec![
                0x30, 0x42, 0x30, 0x40, 0x30, 0x3e, 0x30, 0x3c, 0x30, 0x3a, 0x30, 0x09, 0x06, 0x05, 0x2b,
                0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
            ];
            der.extend_from_slice(&[0x11; 20]);
            der.extend_from_slice(&[0x04, 0x14]);
            der.extend_from_slice(&[0x22; 20]);
            der.extend_from_slice(&[0x02, 0x01, 0x01]);
            prop_assert!(ParsedOcspRequest::parse(&der).is_ok());
            if at < der.len() {
                der[at] ^= flip;
            }
            der.truncate(der.len().saturating_sub(cut));
            let _ = ParsedOcspRequest::parse(&der);
        }
    }

    #[test]
    fn fixed_responses_decode() {
        assert_eq!(response_status(&MALFORMED_REQUEST), Some(OcspResponseStatus::MalformedRequest));
        assert_eq!(response_status(&INTERNAL_ERROR), Some(OcspResponseStatus::InternalError));
    }
}
