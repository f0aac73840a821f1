//! Administration of users: the list, a new user (with an optional initial password), a user's
//! roles, and disabling or enabling an account. Through the signed-in user's
//! [`Admin`](lanyard_core::authz::Admin) view, as `POST /api/v1/users` and the admin CLI; a refused
//! form comes back as sent, naming the field. Anyone without the administrator role gets a 404.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use lanyard_core::DomainError;
use lanyard_core::authz::NewUser;
use lanyard_core::ids::{GroupId, UserId};
use lanyard_core::model::{Email, Group, Role, User, Username};
use lanyard_core::repo::{Repo, UserQuery};
use secrecy::SecretString;
use serde::Deserialize;

use super::{Nav, PortalError, SignedIn, render, when};
use crate::AppState;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/portal/admin/users", get(list::<R>).post(create::<R>))
        .route("/portal/admin/users/new", get(new_form::<R>))
        .route("/portal/admin/users/{id}", get(detail::<R>))
        .route("/portal/admin/users/{id}/roles", post(set_roles::<R>))
        .route("/portal/admin/users/{id}/account", post(set_account::<R>))
}

const ROLES: [(Role, &str, &str); 4] = [
    (Role::User, "Cardholder", "their own devices and workstations"),
    (Role::Operator, "Operator", "the help desk: every user's devices"),
    (Role::Auditor, "Auditor", "reads the audit log"),
    (Role::Administrator, "Administrator", "groups, policies and users"),
];

/// Most users the list shows.
const LIST_LIMIT: u32 = 500;

fn admin_of(signed: &SignedIn) -> Result<lanyard_core::authz::Admin<'_>, PortalError> {
    signed.principal().admin().map_err(|_| PortalError::not_found())
}

struct Row {
    id: String,
    username: String,
    display_name: String,
    group: String,
    roles: String,
    disabled: bool,
}

fn group_name(groups: &[Group], id: GroupId) -> String {
    groups.iter().find(|g| g.id == id).map_or_else(|| id.to_string(), |g| g.name.clone())
}

fn role_names(roles: &BTreeSet<Role>) -> String {
    let names: Vec<&str> =
        ROLES.iter().filter(|(r, _, _)| roles.contains(r)).map(|(_, label, _)| *label).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

fn row(u: &User, groups: &[Group]) -> Row {
    Row {
        id: u.id.to_string(),
        username: u.username.to_string(),
        display_name: u.display_name.clone(),
        group: group_name(groups, u.group),
        roles: role_names(&u.roles),
        disabled: u.disabled,
    }
}

#[derive(Template)]
#[template(path = "portal/admin_users.html")]
struct ListPage {
    nav: Option<Nav>,
    section: &'static str,
    q: String,
    users: Vec<Row>,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: Option<String>,
}

pub(crate) async fn list<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Query(params): Query<ListQuery>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let repo = s.repo.as_ref();
        let q: String = params.q.unwrap_or_default().trim().chars().take(128).collect();
        let query =
            UserQuery { text: (!q.is_empty()).then(|| q.clone()), limit: LIST_LIMIT, ..UserQuery::default() };
        let groups = admin.groups(repo).await?;
        let users = admin.users(repo, &query).await?.iter().map(|u| row(u, &groups)).collect();
        Ok::<_, PortalError>(ListPage { nav: signed.nav(), section: "admin", q, users })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// The new-user form as typed.
#[derive(Deserialize, Default, Clone)]
pub(crate) struct NewUserForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    role_user: Option<String>,
    #[serde(default)]
    role_operator: Option<String>,
    #[serde(default)]
    role_auditor: Option<String>,
    #[serde(default)]
    role_administrator: Option<String>,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize, Default)]
pub(crate) struct RolesForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    role_user: Option<String>,
    #[serde(default)]
    role_operator: Option<String>,
    #[serde(default)]
    role_auditor: Option<String>,
    #[serde(default)]
    role_administrator: Option<String>,
}

fn roles_of(user: bool, operator: bool, auditor: bool, administrator: bool) -> BTreeSet<Role> {
    [
        (user, Role::User),
        (operator, Role::Operator),
        (auditor, Role::Auditor),
        (administrator, Role::Administrator),
    ]
    .into_iter()
    .filter_map(|(on, r)| on.then_some(r))
    .collect()
}

struct RoleBox {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    checked: bool,
}

fn role_boxes(roles: &BTreeSet<Role>) -> Vec<RoleBox> {
    ROLES
        .iter()
        .map(|(r, label, hint)| RoleBox { name: role_field(*r), label, hint, checked: roles.contains(r) })
        .collect()
}

fn role_field(r: Role) -> &'static str {
    match r {
        Role::User => "role_user",
        Role::Operator => "role_operator",
        Role::Auditor => "role_auditor",
        Role::Administrator => "role_administrator",
    }
}

#[derive(Template)]
#[template(path = "portal/admin_user_new.html")]
struct NewPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    form: NewUserForm,
    groups: Vec<(String, String)>,
    roles: Vec<RoleBox>,
    /// (field, message).
    error: Option<(String, String)>,
}

impl NewPage {
    fn invalid(&self, field: &str) -> bool {
        self.error.as_ref().is_some_and(|(f, _)| f == field)
    }
}

fn new_page(
    signed: &SignedIn,
    groups: &[Group],
    form: NewUserForm,
    error: Option<(String, String)>,
) -> NewPage {
    let roles = roles_of(
        form.role_user.is_some(),
        form.role_operator.is_some(),
        form.role_auditor.is_some(),
        form.role_administrator.is_some(),
    );
    NewPage {
        nav: signed.nav(),
        section: "admin",
        csrf_token: signed.session.csrf_token.clone(),
        groups: groups.iter().map(|g| (g.id.to_string(), g.name.clone())).collect(),
        roles: role_boxes(&roles),
        form,
        error,
    }
}

pub(crate) async fn new_form<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let groups = admin.groups(s.repo.as_ref()).await?;
        // A new account is a cardholder unless the administrator says otherwise.
        let form = NewUserForm { role_user: Some("on".into()), ..NewUserForm::default() };
        Ok::<_, PortalError>(new_page(&signed, &groups, form, None))
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// Reads the form into a [`NewUser`], or the first field that cannot be one.
fn read_new_user(form: &NewUserForm, groups: &[Group]) -> Result<NewUser, (&'static str, String)> {
    let username = Username::parse(&form.username.trim().to_ascii_lowercase())
        .map_err(|e| ("username", format!("Username: {}.", e.reason)))?;
    let email = match form.email.trim() {
        "" => None,
        e => Some(Email::parse(e).map_err(|e| ("email", format!("E-mail: {}.", e.reason)))?),
    };
    let group = form
        .group
        .parse::<GroupId>()
        .ok()
        .filter(|id| groups.iter().any(|g| g.id == *id))
        .ok_or_else(|| ("group", "Group: choose one of the listed groups.".to_owned()))?;
    Ok(NewUser {
        username,
        display_name: form.display_name.trim().to_owned(),
        email,
        group,
        roles: roles_of(
            form.role_user.is_some(),
            form.role_operator.is_some(),
            form.role_auditor.is_some(),
            form.role_administrator.is_some(),
        ),
    })
}

/// Creates the user; a refused form comes back as sent (the password excepted) with the field
/// named.
pub(crate) async fn create<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<NewUserForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let repo = s.repo.as_ref();
        let groups = admin.groups(repo).await?;
        let again = |field: &str, message: String| {
            let shown = NewUserForm { password: String::new(), csrf_token: None, ..form.clone() };
            render(
                StatusCode::BAD_REQUEST,
                &new_page(&signed, &groups, shown, Some((field.to_owned(), message))),
            )
        };
        let new = match read_new_user(&form, &groups) {
            Ok(n) => n,
            Err((field, message)) => return Ok(again(field, message)),
        };
        let password = (!form.password.is_empty()).then(|| SecretString::from(form.password.clone()));
        match admin.create_user_with_password(repo, new, password.as_ref()).await {
            Ok(user) => {
                Ok(Redirect::to(&format!("/portal/admin/users/{}?created=1", user.id)).into_response())
            }
            Err(DomainError::Validation(e)) => {
                let label = match e.field {
                    "display_name" => "Display name",
                    "password" => "Initial password",
                    "username" => "Username",
                    "email" => "E-mail",
                    other => other,
                };
                Ok(again(e.field, format!("{label}: {}.", e.reason)))
            }
            Err(DomainError::Conflict(why)) => Ok(again("username", format!("Username: {why}."))),
            Err(e) => Err(e.into()),
        }
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

#[derive(Template)]
#[template(path = "portal/admin_user.html")]
struct UserPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    user: Row,
    email: String,
    created: String,
    roles: Vec<RoleBox>,
    notice: Option<&'static str>,
    error: Option<String>,
    is_me: bool,
}

#[derive(Deserialize)]
pub(crate) struct NoticeQuery {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    saved: Option<String>,
}

async fn user_page<R: Repo>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Result<UserPage, PortalError> {
    let admin = admin_of(signed)?;
    let repo = s.repo.as_ref();
    let id = id.parse::<UserId>().map_err(|_| PortalError::not_found())?;
    let user = admin.user(repo, id).await?;
    let groups = admin.groups(repo).await?;
    Ok(UserPage {
        nav: signed.nav(),
        section: "admin",
        csrf_token: signed.session.csrf_token.clone(),
        email: user.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_else(|| "—".into()),
        created: when(user.created_at),
        roles: role_boxes(&user.roles),
        is_me: user.id == signed.principal().user().id,
        user: row(&user, &groups),
        notice,
        error,
    })
}

pub(crate) async fn detail<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, PortalError> {
    let notice = if q.created.is_some() {
        Some("The user is created.")
    } else if q.saved.is_some() {
        Some("Saved. The user's sessions ended; they sign in again to get the change.")
    } else {
        None
    };
    let page = user_page(&s, &signed, &id, notice, None).await.map_err(|e| e.with_nav(signed.nav()))?;
    Ok(render(StatusCode::OK, &page))
}

/// Replaces the user's roles.
pub(crate) async fn set_roles<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<RolesForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let uid = id.parse::<UserId>().map_err(|_| PortalError::not_found())?;
        let roles = roles_of(
            form.role_user.is_some(),
            form.role_operator.is_some(),
            form.role_auditor.is_some(),
            form.role_administrator.is_some(),
        );
        match admin.set_roles(s.repo.as_ref(), uid, roles).await {
            Ok(_) => Ok(Redirect::to(&format!("/portal/admin/users/{uid}?saved=1")).into_response()),
            Err(DomainError::Validation(e)) => {
                let page = user_page(&s, &signed, &id, None, Some(format!("Roles: {}.", e.reason))).await?;
                Ok(render(StatusCode::BAD_REQUEST, &page))
            }
            Err(e) => Err(e.into()),
        }
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

#[derive(Deserialize, Default)]
pub(crate) struct AccountForm {
    #[serde(default)]
    csrf_token: Option<String>,
    /// `disable` or `enable`.
    #[serde(default)]
    account: String,
}

/// Disables (ending their sessions) or enables the account.
pub(crate) async fn set_account<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<AccountForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let admin = admin_of(&signed)?;
        let uid = id.parse::<UserId>().map_err(|_| PortalError::not_found())?;
        let disabled = match form.account.as_str() {
            "disable" => true,
            "enable" => false,
            _ => {
                let page =
                    user_page(&s, &signed, &id, None, Some("Account: choose disable or enable.".into()))
                        .await?;
                return Ok(render(StatusCode::BAD_REQUEST, &page));
            }
        };
        match admin.set_disabled(s.repo.as_ref(), uid, disabled).await {
            Ok(_) => Ok(Redirect::to(&format!("/portal/admin/users/{uid}?saved=1")).into_response()),
            Err(DomainError::Validation(e)) => {
                let page = user_page(&s, &signed, &id, None, Some(format!("Account: {}.", e.reason))).await?;
                Ok(render(StatusCode::BAD_REQUEST, &page))
            }
            Err(e) => Err(e.into()),
        }
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}
