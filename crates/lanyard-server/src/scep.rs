//! The SCEP endpoint (RFC 8894), `/scep?operation=…`, for Apple configuration profiles and other
//! SCEP clients. The message layer lives in `lanyard_ca::scep`; this module decides what a
//! request earns.
//!
//! - PKCSReq: the challengePassword is a one-time enrolment code for a mobile profile. The
//!   certificate is planned against a preview of the enrolment first (nothing stored), so a
//!   request the CA would refuse leaves the code unused; then the code is redeemed (the mobile is
//!   created), the certificate signed, and the enrolment completed (the mobile Active, the
//!   certificate recorded, audited), all through the core.
//! - RenewalReq: signed by a current certificate of an Active mobile: a new certificate for the
//!   same mobile, the old one superseded.
//! - GetCert: a certificate Lanyard issued, to the holder of its key only. GetCRL: the CRL.
//! - CertPoll: Lanyard answers every request at once and never leaves one pending, so there is
//!   nothing to poll: badCertId.
//!
//! A refusal is a signed CertRep FAILURE with failInfo and failInfoText, never an HTTP error,
//! unless the message is too broken to name its transaction (HTTP 400) or the database is down.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine;
use der::Encode;
use lanyard_ca::scep::{
    self, FailInfo, Header, MessageType, Reply, Request, RequestContent, RequestError, ScepFailure,
};
use lanyard_core::DomainError;
use lanyard_core::audit::OperationId as CoreOperationId;
use lanyard_core::authz::System;
use lanyard_core::model::{CertSlot, Credential, EnrollmentError, EnrollmentKind};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_issuance::rules::{Channel, Enrolment, serial_hex};
use serde::Deserialize;

use crate::{ApiError, AppState, OperationId};

/// Where the endpoint lives.
pub const SCEP_PATH: &str = "/scep";

/// Larger requests are not read: a PKIMessage holds one CSR and one certificate.
const MAX_MESSAGE: usize = 64 * 1024;

/// What GetCACaps answers. SCEPStandard implies AES, POSTPKIOperation and SHA-256; they are
/// listed anyway for clients that predate RFC 8894. DES3 is for clients that know nothing better;
/// single DES, MD5 and SHA-1 are not offered and are refused.
pub const CA_CAPS: &str = "POSTPKIOperation\nSHA-256\nSHA-512\nAES\nDES3\nSCEPStandard\nRenewal\n";

/// The device model recorded for a mobile enrolled over SCEP (SCEP does not say what the phone
/// is).
pub const SCEP_MODEL: &str = "Configuration profile (SCEP)";

pub fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route(SCEP_PATH, get(scep_get::<R>).post(scep_post::<R>).layer(DefaultBodyLimit::max(MAX_MESSAGE)))
}

#[derive(Debug, Deserialize)]
pub struct ScepQuery {
    operation: Option<String>,
    message: Option<String>,
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into())
        .into_response()
}

async fn scep_get<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    op: Option<Extension<OperationId>>,
    query: Result<Query<ScepQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else { return bad_request("invalid query string") };
    match q.operation.as_deref() {
        Some("PKIOperation") => {
            let Some(message) = q.message else { return bad_request("PKIOperation needs message=") };
            // Query decoding turned '+' into ' '; base64 has no spaces.
            let message = message.replace(' ', "+");
            let engine = base64::engine::general_purpose::STANDARD;
            match engine.decode(message.trim()) {
                Ok(der) if der.len() <= MAX_MESSAGE => pki_operation(&s, op, &der).await,
                Ok(_) => bad_request("message too large"),
                Err(_) => bad_request("message= is not base64"),
            }
        }
        other => simple_operation(&s, other),
    }
}

async fn scep_post<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    op: Option<Extension<OperationId>>,
    query: Result<Query<ScepQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(Query(q)) = query else { return bad_request("invalid query string") };
    match q.operation.as_deref() {
        Some("PKIOperation") => pki_operation(&s, op, &body).await,
        other => simple_operation(&s, other),
    }
}

fn simple_operation<R>(s: &AppState<R>, operation: Option<&str>) -> Response {
    match operation {
        Some("GetCACaps") => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], CA_CAPS).into_response(),
        Some("GetCACert") => match ca_ra_certs(s) {
            Ok(p7) => ([(header::CONTENT_TYPE, "application/x-x509-ca-ra-cert")], p7).into_response(),
            Err(e) => ApiError::internal("building the GetCACert answer", e).into_response(),
        },
        Some(other) => bad_request(format!("operation {other:?} is not supported")),
        None => bad_request("missing operation="),
    }
}

/// GetCACert: the RA certificate, the issuing CA and the root, as a degenerate PKCS#7.
fn ca_ra_certs<R>(s: &AppState<R>) -> Result<Vec<u8>, lanyard_ca::CaError> {
    scep::degenerate(
        &[
            s.pki.scep_ra.certificate.der.clone(),
            s.pki.issuing.certificate_der().to_vec(),
            s.pki.root.certificate_der().to_vec(),
        ],
        &[],
    )
}

fn pki_message(der: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pki-message")], der).into_response()
}

/// Why a request went no further: a SCEP failure (answered with a signed CertRep) or a fault of
/// the server (database down), answered with an HTTP error.
enum Refusal {
    Scep(ScepFailure),
    Server(ApiError),
}

impl From<ScepFailure> for Refusal {
    fn from(f: ScepFailure) -> Self {
        Refusal::Scep(f)
    }
}

/// A domain error as SCEP reports it: the client's fault (code wrong, expired, used, policy) is
/// badRequest with the reason; a storage or secrets fault is the server's.
fn domain(e: DomainError) -> Refusal {
    match e {
        DomainError::Store(_) | DomainError::Secrets(_) | DomainError::AuditChain(_) => {
            Refusal::Server(e.into())
        }
        other => Refusal::Scep(ScepFailure::new(FailInfo::BadRequest, other.to_string())),
    }
}

async fn pki_operation<R: Repo + 'static>(
    s: &AppState<R>,
    op: Option<Extension<OperationId>>,
    body: &[u8],
) -> Response {
    let ra = &s.pki.scep_ra;
    let request = match scep::parse_request(body, &ra.key, &ra.certificate.certificate) {
        Ok(r) => r,
        Err(RequestError::Unreadable(why)) => {
            tracing::info!(reason = %why, "SCEP: unreadable PKIMessage");
            return bad_request(format!("not a SCEP PKIMessage: {why}"));
        }
        Err(RequestError::Failed { header, failure }) => return failure_reply(s, &header, &failure),
    };
    let op = crate::api::operation(op.as_ref());
    tracing::info!(
        message_type = %request.message_type,
        transaction = %request.header.transaction_id_text,
        "SCEP request"
    );
    let outcome = match request.message_type {
        MessageType::PkcsReq => enrol(s, &op, &request).await,
        MessageType::RenewalReq => renew(s, &op, &request).await,
        MessageType::GetCert => get_cert(s, &request).await,
        MessageType::GetCrl => get_crl(s, &request).await,
        MessageType::CertPoll => Err(Refusal::Scep(ScepFailure::new(
            FailInfo::BadCertId,
            "no request is pending: this server answers every request at once",
        ))),
        MessageType::CertRep => {
            Err(Refusal::Scep(ScepFailure::new(FailInfo::BadRequest, "a CertRep is not a request")))
        }
    };
    match outcome {
        Ok((certificates, crls)) => {
            let reply = Reply::Success {
                certificates: &certificates,
                crls: &crls,
                recipient: &request.signer,
                cipher: request.cipher,
            };
            match scep::cert_rep(&ra.key, &ra.certificate.der, &request.header, &reply) {
                Ok(der) => pki_message(der),
                Err(e) => ApiError::internal("signing the SCEP reply", e).into_response(),
            }
        }
        Err(Refusal::Scep(failure)) => failure_reply(s, &request.header, &failure),
        Err(Refusal::Server(e)) => e.into_response(),
    }
}

fn failure_reply<R>(s: &AppState<R>, header: &Header, failure: &ScepFailure) -> Response {
    tracing::info!(
        transaction = %header.transaction_id_text,
        fail_info = %failure.info,
        reason = %failure.text,
        "SCEP request refused"
    );
    let ra = &s.pki.scep_ra;
    match scep::cert_rep(&ra.key, &ra.certificate.der, header, &Reply::Failure(failure)) {
        Ok(der) => pki_message(der),
        Err(e) => ApiError::internal("signing the SCEP failure", e).into_response(),
    }
}

type Issued = (Vec<Vec<u8>>, Vec<Vec<u8>>);

fn csr_of(request: &Request) -> Result<&lanyard_ca::ParsedCsr, Refusal> {
    match &request.content {
        RequestContent::Csr(csr) => Ok(csr),
        _ => Err(ScepFailure::new(FailInfo::BadRequest, "no certificate request").into()),
    }
}

fn spki_der(csr: &lanyard_ca::ParsedCsr) -> Result<Vec<u8>, Refusal> {
    csr.public_key
        .to_der()
        .map_err(|e| ScepFailure::new(FailInfo::BadRequest, format!("the request's public key: {e}")).into())
}

/// Plans the mobile certificate for `r` without signing it: what the CA would refuse (key
/// algorithm, name) is a badRequest before anything changes.
fn plan_for(
    r: &lanyard_core::authz::Redeemed,
    public_key: &[u8],
    now: time::OffsetDateTime,
) -> Result<(), Refusal> {
    let enrolment = Enrolment {
        device: &r.device,
        holder: &r.holder,
        policy: &r.policy,
        slot: CertSlot::MobileDevice,
        public_key_der: public_key,
        channel: Channel::Mobile { hardware_attested: false },
        now,
    };
    lanyard_issuance::plan(&enrolment)
        .map(drop)
        .map_err(|e| ScepFailure::new(FailInfo::BadRequest, e.to_string()).into())
}

/// PKCSReq: a first enrolment with a one-time code as the challenge.
async fn enrol<R: Repo>(s: &AppState<R>, op: &CoreOperationId, request: &Request) -> Result<Issued, Refusal> {
    let csr = csr_of(request)?;
    let code = csr.challenge_password.as_deref().ok_or_else(|| {
        ScepFailure::new(FailInfo::BadRequest, "the request has no challengePassword (the enrolment code)")
    })?;
    let public_key = spki_der(csr)?;
    let now = s.clock.now();
    let system = System::new(op.clone(), now);
    let kind = EnrollmentKind::MobileProfile;

    // The profile's download redeemed the code (the phone's mobile is Enrolling); a SCEP client
    // given the code directly presents it fresh.
    let redeemed = match system.enrollment_in_progress(s.repo.as_ref(), code, kind).await {
        Ok(in_progress) => {
            plan_for(&in_progress, &public_key, now)?;
            in_progress
        }
        Err(DomainError::Enrollment(EnrollmentError::NotInProgress)) => {
            // Plan against a preview first: a key or name the CA would refuse leaves the code
            // unused.
            let preview =
                system.preview_enrollment(s.repo.as_ref(), code, kind, SCEP_MODEL).await.map_err(domain)?;
            plan_for(&preview, &public_key, now)?;
            system.redeem_enrollment(s.repo.as_ref(), code, kind, SCEP_MODEL).await.map_err(domain)?
        }
        Err(e) => return Err(domain(e)),
    };
    let signed = lanyard_issuance::sign_for_mobile(
        &s.pki.issuing,
        &redeemed,
        CertSlot::MobileDevice,
        &public_key,
        false,
        now,
    )
    .map_err(|e| {
        // The preview planned the same certificate, so only a CA fault gets here; the Enrolling
        // mobile is deleted by the stale-enrolment sweeper once the code expires.
        Refusal::Server(ApiError::internal("signing a SCEP certificate", e))
    })?;
    let mut credentials = [Credential::new(redeemed.device.id, signed.kind, now)];
    let device = system.complete_enrollment(s.repo.as_ref(), code, &mut credentials).await.map_err(domain)?;
    tracing::info!(device = %device.id, holder = %redeemed.holder.id, "SCEP enrolment completed");
    Ok((vec![signed.der], Vec::new()))
}

/// RenewalReq: a new certificate for the Active mobile whose current certificate signed the
/// request; the old certificate is superseded.
async fn renew<R: Repo>(s: &AppState<R>, op: &CoreOperationId, request: &Request) -> Result<Issued, Refusal> {
    let csr = csr_of(request)?;
    let public_key = spki_der(csr)?;
    let now = s.clock.now();
    let system = System::new(op.clone(), now);
    let serial = serial_hex(request.signer.tbs_certificate.serial_number.as_bytes());
    let renewal =
        system.mobile_renewal(s.repo.as_ref(), &serial, &request.signer_der).await.map_err(domain)?;
    let enrolment = Enrolment {
        device: &renewal.device,
        holder: &renewal.holder,
        policy: &renewal.policy,
        slot: CertSlot::MobileDevice,
        public_key_der: &public_key,
        channel: Channel::MobileRenewal,
        now,
    };
    let plan = lanyard_issuance::plan(&enrolment)
        .map_err(|e| ScepFailure::new(FailInfo::BadRequest, e.to_string()))?;
    let signed = lanyard_issuance::sign(&s.pki.issuing, &plan)
        .map_err(|e| Refusal::Server(ApiError::internal("signing a SCEP renewal", e)))?;
    let mut credential = Credential::new(renewal.device.id, signed.kind, now);
    system
        .record_mobile_renewal(s.repo.as_ref(), renewal.credential.id, &mut credential)
        .await
        .map_err(domain)?;
    Ok((vec![signed.der], Vec::new()))
}

/// GetCert: the certificate named, to whoever holds its key (the request's signer certificate
/// carries the same public key).
async fn get_cert<R: Repo>(s: &AppState<R>, request: &Request) -> Result<Issued, Refusal> {
    let RequestContent::IssuerAndSerial { issuer, serial } = &request.content else {
        return Err(ScepFailure::new(FailInfo::BadRequest, "no IssuerAndSerialNumber").into());
    };
    let unknown = || Refusal::Scep(ScepFailure::new(FailInfo::BadCertId, "no such certificate for this key"));
    if *issuer != s.pki.issuing.certificate().tbs_certificate.subject {
        return Err(unknown());
    }
    let credential = {
        let mut tx = s.repo.read().await.map_err(|e| Refusal::Server(e.into()))?;
        tx.get_credential_by_serial(&serial_hex(serial.as_bytes()))
            .await
            .map_err(|e| Refusal::Server(e.into()))?
    };
    let Some(credential) = credential else { return Err(unknown()) };
    let lanyard_core::model::CredentialKind::Certificate { certificate_der, .. } = &credential.kind;
    let cert: lanyard_ca::Certificate = der::Decode::from_der(certificate_der).map_err(|_| unknown())?;
    if cert.tbs_certificate.subject_public_key_info != request.signer.tbs_certificate.subject_public_key_info
    {
        return Err(unknown());
    }
    Ok((vec![certificate_der.clone()], Vec::new()))
}

/// GetCRL: the issuing CA's current CRL.
async fn get_crl<R: Repo + 'static>(s: &AppState<R>, request: &Request) -> Result<Issued, Refusal> {
    let RequestContent::IssuerAndSerial { issuer, .. } = &request.content else {
        return Err(ScepFailure::new(FailInfo::BadRequest, "no IssuerAndSerialNumber").into());
    };
    if *issuer != s.pki.issuing.certificate().tbs_certificate.subject {
        return Err(ScepFailure::new(
            FailInfo::BadCertId,
            "this server publishes the CRL of its issuing CA only",
        )
        .into());
    }
    let crl = crate::current_crl(s).await.map_err(Refusal::Server)?;
    Ok((Vec::new(), vec![crl.to_vec()]))
}
