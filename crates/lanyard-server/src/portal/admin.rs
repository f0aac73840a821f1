//! Administration: groups and their policies. The policy form edits what an administrator sets
//! by hand (device and mobile rules, PIN rules, accepted card models); certificate profiles per
//! slot are shown and kept as they are (the API's `PUT /api/v1/groups/{id}/policy` changes them).
//!
//! Everything goes through the signed-in user's [`Admin`] view, the one the API's routes use, so
//! the policy is validated by the same [`Policy::validate`]. A refused form comes back filled in,
//! each problem next to the field it names. Someone without the administrator role gets the
//! portal's 404.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use lanyard_core::DomainError;
use lanyard_core::authz::Admin;
use lanyard_core::ids::GroupId;
use lanyard_core::model::{FidoPinMode, Group, InitialPinDisplay, Policy};
use lanyard_core::repo::Repo;
use serde::Deserialize;

use super::{Nav, PortalError, SignedIn, render};
use crate::AppState;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/portal/admin", get(groups::<R>))
        .route("/portal/admin/groups/{id}", get(group::<R>).post(save_policy::<R>))
}

fn admin_of(signed: &SignedIn) -> Result<Admin<'_>, PortalError> {
    signed.principal().admin().map_err(|_| PortalError::not_found())
}

struct GroupRow {
    id: String,
    name: String,
    may_add_device: bool,
    max_devices: u8,
    may_add_mobile: bool,
    may_add_derived_piv: bool,
    max_mobiles: u8,
}

#[derive(Template)]
#[template(path = "portal/admin_groups.html")]
struct GroupsPage {
    nav: Option<Nav>,
    section: &'static str,
    groups: Vec<GroupRow>,
}

/// The groups, each with the gist of its policy.
pub(crate) async fn groups<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let groups = admin
            .groups(s.repo.as_ref())
            .await?
            .into_iter()
            .map(|g| GroupRow {
                id: g.id.to_string(),
                may_add_device: g.policy.may_add_device,
                max_devices: g.policy.max_devices,
                may_add_mobile: g.policy.may_add_mobile,
                may_add_derived_piv: g.policy.may_add_derived_piv,
                max_mobiles: g.policy.max_mobiles,
                name: g.name,
            })
            .collect();
        Ok::<_, PortalError>(GroupsPage { nav: signed.nav(), section: "admin", groups })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// The policy form's fields as text, as typed (so a refused form comes back as it was sent).
#[derive(Deserialize, Default, Clone)]
pub(crate) struct PolicyForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    may_add_device: Option<String>,
    #[serde(default)]
    max_devices: String,
    #[serde(default)]
    may_add_mobile: Option<String>,
    #[serde(default)]
    may_add_derived_piv: Option<String>,
    #[serde(default)]
    max_mobiles: String,
    #[serde(default)]
    derived_piv_requires_sponsor: Option<String>,
    #[serde(default)]
    derived_revoke_on_card_loss: Option<String>,
    #[serde(default)]
    fido_pin_mode: String,
    #[serde(default)]
    fido_min_pin_length: String,
    #[serde(default)]
    pin_min_len: String,
    #[serde(default)]
    pin_max_len: String,
    #[serde(default)]
    pin_forbid_trivial: Option<String>,
    #[serde(default)]
    initial_pin_display: String,
    #[serde(default)]
    accepted_card_models: String,
    #[serde(default)]
    derived_recheck_days: String,
    #[serde(default)]
    enrollment_code_minutes: String,
    #[serde(flatten)]
    sign_in: super::admin_sign_in::SignInForm,
}

impl PolicyForm {
    fn of(p: &Policy) -> Self {
        let on = |b: bool| b.then(|| "on".to_owned());
        Self {
            csrf_token: None,
            may_add_device: on(p.may_add_device),
            max_devices: p.max_devices.to_string(),
            may_add_mobile: on(p.may_add_mobile),
            may_add_derived_piv: on(p.may_add_derived_piv),
            max_mobiles: p.max_mobiles.to_string(),
            derived_piv_requires_sponsor: on(p.derived_piv_requires_sponsor),
            derived_revoke_on_card_loss: on(p.derived_revoke_on_card_loss),
            fido_pin_mode: p.fido_pin_mode.as_str().to_owned(),
            fido_min_pin_length: p.fido_min_pin_length.to_string(),
            pin_min_len: p.pin.min_len.to_string(),
            pin_max_len: p.pin.max_len.to_string(),
            pin_forbid_trivial: on(p.pin.forbid_trivial),
            initial_pin_display: p.initial_pin_display.as_str().to_owned(),
            accepted_card_models: p.accepted_card_models.join("\n"),
            derived_recheck_days: p.derived_recheck_days.to_string(),
            enrollment_code_minutes: p.enrollment_code_minutes.to_string(),
            sign_in: super::admin_sign_in::SignInForm::of(p),
        }
    }

    /// The policy this form describes on top of `base` (whose certificate profiles it keeps), or
    /// every field that is not even of the right kind, each with its message.
    fn apply(&self, base: &Policy) -> Result<Policy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut number = |field: &str, label: &str, text: &str, max: u64| -> u64 {
            match text.trim().parse::<u64>() {
                Ok(n) if n <= max => n,
                _ => {
                    errors.push((
                        field.to_owned(),
                        format!("{label}: enter a whole number, {text:?} is not one in range."),
                    ));
                    0
                }
            }
        };
        let max_devices = number("max_devices", "Most cards or keys per member", &self.max_devices, 255);
        let max_mobiles = number("max_mobiles", "Most phones per member", &self.max_mobiles, 255);
        let pin_min = number("pin.min_len", "Shortest PIN", &self.pin_min_len, 255);
        let pin_max = number("pin.max_len", "Longest PIN", &self.pin_max_len, 255);
        let fido_min = number("fido_min_pin_length", "Shortest FIDO PIN", &self.fido_min_pin_length, 255);
        let recheck = number(
            "derived_recheck_days",
            "Days before a derived PIV recheck",
            &self.derived_recheck_days,
            65535,
        );
        let code_minutes = number(
            "enrollment_code_minutes",
            "Minutes a mobile enrolment link stays valid",
            &self.enrollment_code_minutes,
            255,
        );
        let fido = self.fido_pin_mode.parse::<FidoPinMode>().map_err(|_| {
            ("fido_pin_mode".to_owned(), "FIDO PIN: choose one of the listed modes.".to_owned())
        });
        let display = self.initial_pin_display.parse::<InitialPinDisplay>().map_err(|_| {
            ("initial_pin_display".to_owned(), "Initial PIN: choose one of the listed options.".to_owned())
        });
        let mut sign_in = base.clone();
        self.sign_in.apply(&mut sign_in, &mut errors);
        let (fido, display) = match (fido, display) {
            (Ok(f), Ok(d)) if errors.is_empty() => (f, d),
            (f, d) => {
                errors.extend(f.err());
                errors.extend(d.err());
                return Err(errors);
            }
        };
        let mut p = base.clone();
        p.sign_in = sign_in.sign_in;
        // The numbers are within their types' ranges (checked above).
        p.max_devices = u8::try_from(max_devices).unwrap_or(u8::MAX);
        p.max_mobiles = u8::try_from(max_mobiles).unwrap_or(u8::MAX);
        p.pin.min_len = u8::try_from(pin_min).unwrap_or(u8::MAX);
        p.pin.max_len = u8::try_from(pin_max).unwrap_or(u8::MAX);
        p.fido_min_pin_length = u8::try_from(fido_min).unwrap_or(u8::MAX);
        p.derived_recheck_days = u16::try_from(recheck).unwrap_or(u16::MAX);
        p.enrollment_code_minutes = u8::try_from(code_minutes).unwrap_or(u8::MAX);
        p.may_add_device = self.may_add_device.is_some();
        p.may_add_mobile = self.may_add_mobile.is_some();
        p.may_add_derived_piv = self.may_add_derived_piv.is_some();
        p.derived_piv_requires_sponsor = self.derived_piv_requires_sponsor.is_some();
        p.derived_revoke_on_card_loss = self.derived_revoke_on_card_loss.is_some();
        p.pin.forbid_trivial = self.pin_forbid_trivial.is_some();
        p.fido_pin_mode = fido;
        p.initial_pin_display = display;
        p.accepted_card_models = self
            .accepted_card_models
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(p)
    }
}

struct SlotRow {
    slot: String,
    profile: String,
    algorithm: String,
    validity_days: u16,
}

/// A numeric field of the form: its name (also its element id), label, hint, value and problem.
struct NumberField {
    id: &'static str,
    label: &'static str,
    hint: &'static str,
    value: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/admin_group.html")]
struct GroupPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    id: String,
    name: String,
    form: PolicyForm,
    max_devices: NumberField,
    max_mobiles: NumberField,
    pin_min_len: NumberField,
    pin_max_len: NumberField,
    fido_min_pin_length: NumberField,
    derived_recheck_days: NumberField,
    enrollment_code_minutes: NumberField,
    slots: Vec<SlotRow>,
    /// (element id, message) for each problem, in the policy's order.
    errors: Vec<(String, String)>,
    certificates_refused: bool,
    fido_modes: [(&'static str, &'static str); 4],
    pin_displays: [(&'static str, &'static str); 2],
    saved: bool,
}

impl GroupPage {
    /// The message for the field with element id `id`, if it has one.
    fn error_for(&self, id: &str) -> Option<&str> {
        self.errors.iter().find(|(f, _)| f == id).map(|(_, m)| m.as_str())
    }
}

/// The element id of a policy field (`pin.min_len` → `pin_min_len`).
fn element_id(field: &str) -> String {
    if field.starts_with("certificates") { "certificates".to_owned() } else { field.replace('.', "_") }
}

fn group_page(
    signed: &SignedIn,
    g: &Group,
    form: PolicyForm,
    errors: Vec<(String, String)>,
    saved: bool,
) -> GroupPage {
    let errors: Vec<(String, String)> = errors.into_iter().map(|(f, m)| (element_id(&f), m)).collect();
    let number = |id: &'static str, label: &'static str, hint: &'static str, value: &str| NumberField {
        id,
        label,
        hint,
        value: value.to_owned(),
        error: errors.iter().find(|(f, _)| f == id).map(|(_, m)| m.clone()),
    };
    GroupPage {
        nav: signed.nav(),
        section: "admin",
        csrf_token: signed.session.csrf_token.clone(),
        id: g.id.to_string(),
        name: g.name.clone(),
        max_devices: number(
            "max_devices",
            "Most cards or keys per member",
            "1 to 20; mobiles do not count.",
            &form.max_devices,
        ),
        max_mobiles: number(
            "max_mobiles",
            "Most phones per member",
            "1 to 20, counting both kinds of mobile. A phone counts from the moment it starts enrolling until \
             it is deleted; a suspended one counts too.",
            &form.max_mobiles,
        ),
        pin_min_len: number("pin_min_len", "Shortest PIN", "6 to 8 digits.", &form.pin_min_len),
        pin_max_len: number(
            "pin_max_len",
            "Longest PIN",
            "6 to 8 digits, not less than the shortest.",
            &form.pin_max_len,
        ),
        fido_min_pin_length: number(
            "fido_min_pin_length",
            "Shortest FIDO PIN",
            "4 to 63 characters; issuance sets it on the key, which then refuses shorter PINs and never \
             lowers it. In the shared mode it must not exceed the shortest PIN above.",
            &form.fido_min_pin_length,
        ),
        derived_recheck_days: number(
            "derived_recheck_days",
            "Days before a derived PIV credential's card is checked again",
            "1 to 365. Until then, the card that sponsored a derived credential still answers for it: \
             reported lost or stolen, it revokes the credential (when the box above is ticked).",
            &form.derived_recheck_days,
        ),
        enrollment_code_minutes: number(
            "enrollment_code_minutes",
            "Minutes a mobile enrolment link stays valid",
            "1 to 10: a phone drops a downloaded profile after about 8 minutes.",
            &form.enrollment_code_minutes,
        ),
        form,
        slots: g
            .policy
            .certificates
            .iter()
            .map(|(slot, p)| SlotRow {
                slot: slot.to_string(),
                profile: p.profile.clone(),
                algorithm: p.algorithm.as_str().to_owned(),
                validity_days: p.validity_days,
            })
            .collect(),
        certificates_refused: errors.iter().any(|(f, _)| f == "certificates"),
        errors,
        fido_modes: [
            ("none", "Not set by Lanyard (the key's FIDO application is left alone)"),
            ("independent", "The holder sets their own FIDO PIN during issuance"),
            ("shared", "One PIN for PIV and FIDO (a temporary FIDO PIN until Change PIN)"),
            ("temporary", "A random FIDO PIN, shown once, that the holder must change"),
        ],
        pin_displays: [
            ("hidden", "Hidden (an operator reveals it when activating)"),
            ("shown", "Shown after issuance"),
        ],
        saved,
    }
}

async fn find_group<R: Repo>(admin: &Admin<'_>, repo: &R, id: &str) -> Result<Group, PortalError> {
    let id = id.parse::<GroupId>().map_err(|_| PortalError::not_found())?;
    admin.groups(repo).await?.into_iter().find(|g| g.id == id).ok_or_else(PortalError::not_found)
}

#[derive(Deserialize)]
pub(crate) struct SavedQuery {
    #[serde(default)]
    saved: Option<String>,
}

/// One group's policy, as a form.
pub(crate) async fn group<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Query(q): Query<SavedQuery>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let g = find_group(&admin, s.repo.as_ref(), &id).await?;
        Ok::<_, PortalError>(group_page(
            &signed,
            &g,
            PolicyForm::of(&g.policy),
            Vec::new(),
            q.saved.is_some(),
        ))
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// Saves the policy through [`Admin::update_policy`]; a refused one is shown again, each
/// problem naming its field.
pub(crate) async fn save_policy<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<PolicyForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let repo = s.repo.as_ref();
        let g = find_group(&admin, repo, &id).await?;
        let policy = match form.apply(&g.policy) {
            Ok(p) => p,
            Err(errors) => {
                return Ok(render(
                    StatusCode::BAD_REQUEST,
                    &group_page(&signed, &g, form.clone(), errors, false),
                ));
            }
        };
        match admin.update_policy(repo, g.id, policy).await {
            Ok(_) => Ok(Redirect::to(&format!("/portal/admin/groups/{}?saved=1", g.id)).into_response()),
            Err(DomainError::InvalidPolicy(problems)) => {
                let errors = problems.0.iter().map(|e| (e.field(), e.to_string())).collect();
                Ok(render(StatusCode::BAD_REQUEST, &group_page(&signed, &g, form.clone(), errors, false)))
            }
            Err(e) => Err(e.into()),
        }
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}
