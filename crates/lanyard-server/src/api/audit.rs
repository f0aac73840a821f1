//! The audit log, a page at a time.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use lanyard_core::repo::{AuditQuery, Repo};
use serde::Deserialize;

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// Largest page of audit events one request returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    #[serde(default)]
    after_seq: u64,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<lanyard_core::audit::AuditEvent>), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
pub(super) async fn audit<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<lanyard_core::audit::AuditEvent>>, ApiError> {
    let auditor = auth.principal.auditor()?;
    let Query(p) = params?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_AUDIT_PAGE}, got {limit}"),
        ));
    }
    let query = AuditQuery { after_seq: p.after_seq, target: None, limit, ..Default::default() };
    Ok(Json(auditor.events(s.repo.as_ref(), &query).await?))
}
