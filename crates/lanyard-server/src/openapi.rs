//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types. `docs/openapi.json` is this document, checked
//! in; a test fails when the two differ (`LANYARD_UPDATE_OPENAPI=1` rewrites the file).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Every error answer: a message safe to show and the request's operation id.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub operation_id: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "From POST /api/v1/login. Requests other than GET/HEAD/OPTIONS must also send the \
                 x-csrf-token header with the csrf_token login returned.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lanyard API",
        description = "Credential management: users, groups and policies, devices, credentials, \
                       certificates, revocation and the audit log. Every response carries \
                       `x-operation-id`.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&Security),
    security(("api_token" = []), ("session" = [])),
    paths(
        crate::api::session::login,
        crate::api::session::logout,
        crate::api::session::me,
        crate::api::enrollments::start_mobile_enrollment,
        crate::api::devices::devices,
        crate::api::devices::create_device,
        crate::api::devices::device,
        crate::api::devices::suspend,
        crate::api::devices::resume,
        crate::api::credentials::device_credentials,
        crate::api::credentials::issue_certificate,
        crate::api::credentials::hold_credential,
        crate::api::credentials::release_credential,
        crate::api::credentials::revoke_credential,
        crate::api::users::find_users,
        crate::api::users::create_user,
        crate::api::users::user_devices,
        crate::api::groups::list_groups,
        crate::api::groups::create_group,
        crate::api::groups::update_policy,
        crate::api::tokens::create_token,
        crate::api::tokens::list_tokens,
        crate::api::tokens::revoke_token,
        crate::api::audit::audit,
        crate::api::jobs::begin_issuance,
        crate::api::jobs::job,
        crate::api::jobs::job_ticket,
        crate::api::jobs::submit_pin,
        crate::api::devices::activate,
        crate::api::devices::revoke_device,
        crate::api::devices::mark_device,
        crate::api::devices::terminate_device,
        crate::api::devices::recycle_device,
        crate::api::jobs::unlock_pin,
        crate::api::jobs::wipe_device,
        crate::api::jobs::replace_device,
        crate::api::agents::start_pairing,
        crate::api::agents::pair,
        crate::api::agents::list_agents,
        crate::api::agents::revoke_agent,
        crate::api::agents::start_session,
        crate::api::agents::refresh_agent,
        crate::api::mobile::redeem,
        crate::api::mobile::certificate,
        crate::api::mobile::confirm,
        crate::api::mobile::status,
        crate::api::passkeys::registration_options,
        crate::api::passkeys::register,
        crate::api::passkeys::my_passkeys,
        crate::api::passkeys::user_passkeys,
        crate::api::passkeys::device_passkeys,
        crate::api::passkeys::remove_passkey,
        crate::api::passkeys::sign_in_options,
        crate::api::passkeys::sign_in,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "session", description = "Sign in and out"),
        (name = "devices", description = "Smart cards, USB keys and mobiles"),
        (name = "credentials", description = "Certificates and their revocation"),
        (name = "users", description = "People"),
        (name = "groups", description = "Groups and their policies"),
        (name = "tokens", description = "API tokens for scripts"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "issuance", description = "Card sessions: start, follow, resume, roll back"),
        (name = "agents", description = "Workstation agents paired with their user"),
        (name = "passkeys", description = "WebAuthn passkeys on security keys, for portal sign-in (docs/passkeys.md)"),
        (name = "mobile", description = "The app enrolment protocol: a phone turns a one-time code into a derived PIV credential (no login; docs/mobile-protocol.md)"),
    ),
)]
pub struct ApiDoc;

/// The document as checked in: pretty JSON with a final newline.
pub fn document() -> String {
    let mut json = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let generated = super::document();
        if std::env::var_os("LANYARD_UPDATE_OPENAPI").is_some() {
            std::fs::write(CHECKED_IN, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/openapi.json is out of date with the code; regenerate it with \
             `LANYARD_UPDATE_OPENAPI=1 cargo test -p lanyard-server --lib openapi` and commit it"
        );
    }

    #[test]
    fn every_route_of_the_router_is_documented_and_nothing_else() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let mut documented: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        documented.sort();
        let source = include_str!("api/mod.rs");
        let mut routed = Vec::new();
        for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"/api/v1/")) {
            let path = line.split('"').nth(1).unwrap();
            for (needle, method) in
                [("get(", "GET"), ("post(", "POST"), ("put(", "PUT"), ("delete(", "DELETE")]
            {
                if line.contains(&format!(" {needle}"))
                    || line.contains(&format!("({needle}"))
                    || line.contains(&format!(".{needle}"))
                    || line.contains(&format!("::{needle}"))
                {
                    routed.push(format!("{method} {path}"));
                }
            }
        }
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn byte_fields_are_hex_strings_in_the_schemas() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let text = schemas.to_string();
        assert!(
            !text.contains("\"format\":\"int32\",\"minimum\":0,\"type\":\"integer\"}},\"maxItems\":16"),
            "{text}"
        );
        for (schema, field) in [("Device", "card_guid"), ("AuditEvent", "hash"), ("AuditEvent", "prev_hash")]
        {
            let t = &schemas[schema]["properties"][field]["type"];
            assert!(
                t == "string" || t.as_array().is_some_and(|a| a.contains(&"string".into())),
                "{schema}.{field}: {t}"
            );
        }
    }
}
