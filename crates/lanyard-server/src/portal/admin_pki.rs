//! Read-only views for administrators: the certificate profiles the CA issues with, and the
//! trust anchors (Lanyard's own root and issuing CA, and the card-vendor attestation roots that
//! issuance trusts). Changing either is a server setting, not a portal action. Anyone without the
//! administrator role gets a 404.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use der::Decode;
use lanyard_ca::{Certificate, CertificateProfile};
use lanyard_core::repo::Repo;
use sha2::{Digest, Sha256};

use super::{Nav, PortalError, SignedIn, render, when};
use crate::AppState;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/portal/admin/profiles", get(profiles::<R>))
        .route("/portal/admin/trust", get(trust::<R>))
}

fn require_admin(signed: &SignedIn) -> Result<(), PortalError> {
    signed.principal().admin().map(|_| ()).map_err(|_| PortalError::not_found())
}

struct ProfileRow {
    id: String,
    name: String,
    kind: &'static str,
    algorithms: String,
    max_validity_days: u32,
    key_usage: String,
    used_by: String,
}

#[derive(Template)]
#[template(path = "portal/admin_profiles.html")]
struct ProfilesPage {
    nav: Option<Nav>,
    section: &'static str,
    profiles: Vec<ProfileRow>,
}

/// The built-in certificate profiles, and which groups' slots use each.
pub(crate) async fn profiles<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let admin = signed.principal().admin().map_err(|_| PortalError::not_found())?;
        let groups = admin.groups(s.repo.as_ref()).await?;
        let profiles = CertificateProfile::builtin_all()
            .into_iter()
            .map(|p| {
                let used_by: Vec<String> = groups
                    .iter()
                    .flat_map(|g| {
                        g.policy
                            .certificates
                            .iter()
                            .filter(|(_, sp)| sp.profile == p.id)
                            .map(move |(slot, _)| format!("{} ({slot})", g.name))
                    })
                    .collect();
                ProfileRow {
                    kind: if p.ca.is_some() { "CA" } else { "End entity" },
                    algorithms: p
                        .key_algorithms
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    max_validity_days: p.max_validity_days,
                    key_usage: key_usage(&p.key_usage),
                    used_by: if used_by.is_empty() { "—".into() } else { used_by.join(", ") },
                    id: p.id,
                    name: p.name,
                }
            })
            .collect();
        Ok::<_, PortalError>(ProfilesPage { nav: signed.nav(), section: "admin", profiles })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// keyUsage in words: the bits (per key type when they differ), and whether it is critical.
fn key_usage(rule: &lanyard_ca::profile::KeyUsageRule) -> String {
    let bits = |v: &[lanyard_ca::profile::KeyUsageBit]| {
        v.iter().map(|b| format!("{b:?}")).collect::<Vec<_>>().join(", ")
    };
    let body = if rule.ec == rule.rsa {
        bits(&rule.ec)
    } else {
        format!("EC keys: {}; RSA keys: {}", bits(&rule.ec), bits(&rule.rsa))
    };
    if rule.critical { format!("{body} (critical)") } else { body }
}

struct AnchorRow {
    role: &'static str,
    subject: String,
    not_after: String,
    sha256: String,
}

fn anchor(role: &'static str, der_bytes: &[u8]) -> AnchorRow {
    let sha256 = hex::encode(Sha256::digest(der_bytes));
    match Certificate::from_der(der_bytes) {
        Ok(c) => AnchorRow {
            role,
            subject: c.tbs_certificate.subject.to_string(),
            not_after: time::OffsetDateTime::from_unix_timestamp(
                i64::try_from(c.tbs_certificate.validity.not_after.to_unix_duration().as_secs())
                    .unwrap_or(i64::MAX),
            )
            .map_or_else(|_| "—".into(), when),
            sha256,
        },
        // Roots were parsed when the server loaded them; this only shows what cannot be read.
        Err(e) => AnchorRow {
            role,
            subject: format!("(unreadable certificate: {e})"),
            not_after: "—".into(),
            sha256,
        },
    }
}

#[derive(Template)]
#[template(path = "portal/admin_trust.html")]
struct TrustPage {
    nav: Option<Nav>,
    section: &'static str,
    anchors: Vec<AnchorRow>,
    issuance_enabled: bool,
    attestation_roots: usize,
}

/// Lanyard's CA certificates and the attestation roots issuance trusts.
pub(crate) async fn trust<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    require_admin(&signed).map_err(|e| e.with_nav(signed.nav()))?;
    let mut anchors = vec![
        anchor("Lanyard root CA", s.pki.root.certificate_der()),
        anchor("Lanyard issuing CA", s.pki.issuing.certificate_der()),
    ];
    if let Some(cfg) = &s.issuance {
        anchors.extend(cfg.attestation_roots.iter().map(|der| anchor("Card attestation root", der)));
    }
    let page = TrustPage {
        nav: signed.nav(),
        section: "admin",
        anchors,
        issuance_enabled: s.issuance.is_some(),
        attestation_roots: s.issuance.as_ref().map_or(0, |c| c.attestation_roots.len()),
    };
    Ok(render(StatusCode::OK, &page))
}
