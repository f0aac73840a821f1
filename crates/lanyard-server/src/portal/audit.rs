//! The audit log for auditors: events filtered by actor, target, action and date, a page at a
//! time, with the verdict of the whole chain's verification above them.
//!
//! It reads through the signed-in user's [`Auditor`](lanyard_core::authz::Auditor) view, the one
//! `GET /api/v1/audit` uses. Someone without the auditor role gets the portal's 404.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use lanyard_core::audit::{Actor, AuditEvent};
use lanyard_core::repo::{AuditQuery, Repo};
use serde::Deserialize;
use time::{Date, Month, OffsetDateTime, Time};

use super::{Nav, PortalError, SignedIn, render, when};
use crate::AppState;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new().route("/portal/audit", get(log::<R>))
}

/// Events per page.
const PAGE: u32 = 100;
/// Longest filter text, in characters.
const MAX_FILTER_CHARS: usize = 128;

/// One audit event as the pages show it.
pub(crate) struct EventRow {
    /// The event's place in the chain, or "unsealed" before the sealer chained it.
    pub seq: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// The operator's page for a device target, when the viewer may open it.
    pub target_link: Option<String>,
    pub operation_id: String,
    pub note: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl EventRow {
    /// `link_devices`: whether device targets link to the help desk's device page.
    pub fn new(e: &AuditEvent, link_devices: bool) -> Self {
        let target = e.target.clone().unwrap_or_default();
        let target_link = target
            .strip_prefix("device:")
            .filter(|id| link_devices && id.parse::<lanyard_core::ids::DeviceId>().is_ok())
            .map(|id| format!("/portal/operator/devices/{id}"));
        Self {
            seq: if e.sealed { e.seq.to_string() } else { "unsealed".into() },
            at: when(e.at),
            actor: match &e.actor {
                Actor::User { username, .. } => username.to_string(),
                Actor::System => "Lanyard (system)".into(),
                Actor::ApiToken { id } => format!("API token {id}"),
            },
            action: e.action.clone(),
            target,
            target_link,
            operation_id: e.operation_id.clone(),
            note: e.after.as_ref().and_then(|a| a.get("note")).and_then(|n| n.as_str()).map(str::to_owned),
            before: e.before.as_ref().map(ToString::to_string),
            after: e.after.as_ref().map(ToString::to_string),
        }
    }
}

/// A calendar date as a form's `<input type="date">` sends it: `YYYY-MM-DD`.
pub(crate) fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    if ![y, m, d].iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

#[derive(Deserialize, Default)]
pub(crate) struct Filters {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    after: Option<String>,
}

fn field(v: &Option<String>) -> String {
    v.as_deref().map(str::trim).unwrap_or_default().to_owned()
}

enum Chain {
    Verified { events: u64, head: String, unsealed: u64 },
    Broken(String),
}

#[derive(Template)]
#[template(path = "portal/audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    section: &'static str,
    actor: String,
    target: String,
    action: String,
    from: String,
    to: String,
    error: Option<(String, String)>,
    chain: Chain,
    events: Vec<EventRow>,
    next: Option<String>,
    filtered: bool,
}

/// The audit log page.
pub(crate) async fn log<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Query(f): Query<Filters>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let auditor = signed.principal().auditor().map_err(|_| PortalError::not_found())?;
        let repo = s.repo.as_ref();
        let chain = match auditor.verify_counting_unsealed(repo).await {
            Ok((head, unsealed)) => {
                Chain::Verified { events: head.seq, head: hex::encode(head.hash), unsealed }
            }
            Err(lanyard_core::DomainError::AuditChain(e)) => Chain::Broken(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        let mut page = AuditPage {
            nav: signed.nav(),
            section: "audit",
            actor: field(&f.actor),
            target: field(&f.target),
            action: field(&f.action).to_ascii_lowercase(),
            from: field(&f.from),
            to: field(&f.to),
            error: None,
            chain,
            events: Vec::new(),
            next: None,
            filtered: false,
        };
        let too_long = [("actor", &page.actor), ("target", &page.target), ("action", &page.action)]
            .into_iter()
            .find(|(_, v)| v.chars().count() > MAX_FILTER_CHARS);
        if let Some((name, _)) = too_long {
            page.error =
                Some((name.to_owned(), format!("{}: at most {MAX_FILTER_CHARS} characters.", title(name))));
            return Ok::<_, PortalError>((StatusCode::BAD_REQUEST, page));
        }
        let day = |name: &'static str, text: &str| -> Result<Option<Date>, (String, String)> {
            if text.is_empty() {
                return Ok(None);
            }
            parse_date(text).map(Some).ok_or_else(|| {
                (name.to_owned(), format!("{}: {text:?} is not a date (YYYY-MM-DD).", title(name)))
            })
        };
        let from = day("from", &page.from);
        let to = day("to", &page.to);
        let after = match f.after.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            None => Ok(0),
            Some(a) => {
                a.parse::<u64>().map_err(|_| ("after".to_owned(), "Page: not an event number.".to_owned()))
            }
        };
        let (from, to, after) = match (from, to, after) {
            (Ok(f), Ok(t), Ok(a)) => (f, t, a),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                page.error = Some(e);
                return Ok((StatusCode::BAD_REQUEST, page));
            }
        };
        let since = from.map(|d| OffsetDateTime::new_utc(d, Time::MIDNIGHT));
        // "To" includes that whole day.
        let until = to.and_then(Date::next_day).map(|d| OffsetDateTime::new_utc(d, Time::MIDNIGHT));
        if let (Some(a), Some(b)) = (since, until)
            && a >= b
        {
            page.error = Some(("to".into(), "To: must not be before From.".into()));
            return Ok((StatusCode::BAD_REQUEST, page));
        }
        let nonempty = |v: &String| (!v.is_empty()).then(|| v.clone());
        let query = AuditQuery {
            after_seq: after,
            target: nonempty(&page.target),
            action: nonempty(&page.action),
            actor: nonempty(&page.actor).map(|a| a.to_ascii_lowercase()),
            since,
            until,
            limit: PAGE,
        };
        page.filtered = query.target.is_some()
            || query.action.is_some()
            || query.actor.is_some()
            || since.is_some()
            || until.is_some();
        let events = auditor.events(repo, &query).await?;
        let link = signed.principal().operator().is_ok();
        // Unsealed events come last and have no place to page from yet.
        if events.len() == PAGE as usize
            && let Some(last) = events.last().filter(|e| e.sealed)
        {
            page.next = Some(next_link(&page, last.seq));
        }
        page.events = events.iter().map(|e| EventRow::new(e, link)).collect();
        Ok((StatusCode::OK, page))
    };
    let (status, page) = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(status, &page))
}

fn title(name: &str) -> String {
    let mut c = name.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The address of the next page with the same filters.
fn next_link(page: &AuditPage, after: u64) -> String {
    let mut query = String::new();
    for (k, v) in [
        ("actor", &page.actor),
        ("target", &page.target),
        ("action", &page.action),
        ("from", &page.from),
        ("to", &page.to),
    ] {
        if !v.is_empty() {
            query.push_str(k);
            query.push('=');
            query.push_str(&percent_encode(v));
            query.push('&');
        }
    }
    format!("/portal/audit?{query}after={after}")
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_are_read_as_the_date_input_sends_them() {
        assert_eq!(parse_date("2026-12-04"), Date::from_calendar_date(2026, Month::December, 4).ok());
        assert_eq!(parse_date("2024-02-29"), Date::from_calendar_date(2024, Month::February, 29).ok());
        for bad in [
            "",
            "2026-13-01",
            "2025-02-29",
            "2026-1-01",
            "26-01-01",
            "2026-01-01-",
            "2026/01/01",
            "+026-01-01",
            "２０２６-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_judged_without_panicking(s in "\\PC{0,16}") {
            let _ = parse_date(&s);
        }

        #[test]
        fn every_real_date_round_trips(days in 0i32..200_000) {
            let date = Date::from_calendar_date(1900, Month::January, 1).unwrap() + time::Duration::days(i64::from(days));
            let text = format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day());
            prop_assert_eq!(parse_date(&text), Some(date));
        }
    }
}
