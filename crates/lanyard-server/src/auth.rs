//! Who is calling: session cookies (portal), bearer API tokens (scripts), login throttling, and
//! the [`Auth`] extractor that turns either into a [`Principal`].
//!
//! - A session is a random 256-bit cookie value (`__Host-lanyard_session`); only its hash is
//!   stored. API requests that change state with a session must send `x-csrf-token`, the value
//!   login returned. It is derived from the cookie with HMAC ([`Session::csrf_token`]), not
//!   stored. The portal (`crate::portal`) authenticates the same sessions through
//!   [`session_auth`] and takes the token from a form field as well.
//! - `Authorization: Bearer <token>` authenticates with an API token (not revoked, not
//!   expired). Bearer requests need no CSRF token: a browser never attaches one on its own.
//! - When both are present, the bearer token is used and the cookie ignored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use lanyard_core::audit::OperationId as CoreOperationId;
use lanyard_core::ids::ApiTokenId;
use lanyard_core::model::Session;
use lanyard_core::repo::StoreError;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::TokenHash;
use lanyard_core::{DomainError, authz::Principal};
use time::{Duration, OffsetDateTime};

use crate::{ApiError, AppState, OperationId};

/// The session cookie's name. The `__Host-` prefix makes browsers keep it only when it is
/// `Secure`, has `Path=/` and no `Domain`, so a sibling host cannot plant or widen it.
pub const SESSION_COOKIE: &str = "__Host-lanyard_session";
/// The header carrying the CSRF token on state-changing session requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How precisely an API token's `last_used_at` is kept.
const LAST_USED_RESOLUTION: Duration = Duration::minutes(1);
/// The longest a portal session lasts, however active.
pub const SESSION_TTL: Duration = Duration::hours(8);
/// A session unused for this long ends; each use (noted to the minute) extends it, up to
/// [`SESSION_TTL`] after login.
pub const SESSION_IDLE: Duration = Duration::minutes(30);
/// Failed logins for one username allowed within [`THROTTLE_WINDOW`].
pub const MAX_FAILED_LOGINS: usize = 5;
/// The window failed logins are counted in.
pub const THROTTLE_WINDOW: Duration = Duration::minutes(15);

/// Counts failures per key (failed logins per username, refused enrolment codes per source
/// address) and refuses further attempts once a key has `max` failures within `window`, until
/// the oldest of them leaves the window.
///
/// The failures are counted in the database (table `throttle_failures`, keys as SHA-256 hashes),
/// so the limit holds across every server sharing it and survives restarts. Each check is one
/// indexed read of at most `max` rows; each failure one insert that also drops the key's
/// failures older than the window. The sweeper deletes what is left of old keys.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    scope: &'static str,
    max: usize,
    window: Duration,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(LOGIN_SCOPE, MAX_FAILED_LOGINS, THROTTLE_WINDOW)
    }
}

/// The throttle scope of failed logins (per username).
pub const LOGIN_SCOPE: &str = "login";

impl LoginThrottle {
    /// A throttle allowing `max` failures per key of `scope` within `window` (the login throttle
    /// is [`MAX_FAILED_LOGINS`] per username in [`THROTTLE_WINDOW`]; the app enrolment protocol
    /// counts per source address).
    pub fn new(scope: &'static str, max: usize, window: Duration) -> Self {
        Self { scope, max: max.max(1), window }
    }

    /// How long failures count.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// `Ok(Err(seconds))` to wait when `key` may not try now.
    pub async fn check<R: Repo>(
        &self,
        repo: &R,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<Result<(), u64>, StoreError> {
        // Failures at or before now - window have left it.
        let since = now - self.window + Duration::nanoseconds(1);
        let limit = u32::try_from(self.max).unwrap_or(u32::MAX);
        let times = {
            let mut tx = repo.read().await?;
            tx.recent_failures(self.scope, &TokenHash::of(key), since, limit).await?
        };
        // Newest first: the last is the oldest of the `max` most recent.
        match times.last() {
            Some(oldest) if times.len() >= self.max => {
                let wait = (*oldest + self.window - now).whole_seconds().max(1);
                Ok(Err(u64::try_from(wait).unwrap_or(1)))
            }
            _ => Ok(Ok(())),
        }
    }

    /// Counts a failure of `key` at `now` inside the caller's unit of work.
    pub async fn record_in<T: Tx>(
        &self,
        tx: &mut T,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        tx.record_failure(self.scope, &TokenHash::of(key), now, now - self.window).await
    }

    /// Counts a failure of `key` at `now`.
    pub async fn record_failure<R: Repo>(
        &self,
        repo: &R,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            self.record_in(&mut tx, key, now).await?;
            tx.commit().await
        })
        .await
    }

    /// Forgets `key`'s failures (a successful login). Skips the write when there are none.
    pub async fn clear<R: Repo>(&self, repo: &R, key: &str) -> Result<(), StoreError> {
        let hash = TokenHash::of(key);
        let any = {
            let mut tx = repo.read().await?;
            !tx.recent_failures(self.scope, &hash, OffsetDateTime::UNIX_EPOCH, 1).await?.is_empty()
        };
        if !any {
            return Ok(());
        }
        let hash = &hash;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.clear_failures(self.scope, hash).await?;
            tx.commit().await
        })
        .await
    }
}

/// How the caller authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Session(TokenHash),
    ApiToken,
}

/// An authenticated caller: the domain principal (from which handlers take capability views)
/// and how it was established.
#[derive(Debug)]
pub struct Auth {
    pub principal: Principal,
    pub via: Via,
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 syntax; unparsable
/// pairs are skipped, not fatal).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .and_then(|c| c.value_raw())
}

/// The `Set-Cookie` value for the session cookie: `Secure`, `HttpOnly`, `SameSite=Strict`,
/// `Path=/`, for `max_age` (zero ends it in the browser).
pub fn session_cookie(value: &str, max_age: time::Duration) -> String {
    cookie::Cookie::build((SESSION_COOKIE, value))
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .max_age(max_age)
        .build()
        .to_string()
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::UNAUTHORIZED, message)
}

impl<R: Repo + 'static> FromRequestParts<AppState<R>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<R>) -> Result<Self, ApiError> {
        let now = state.clock.now();
        let op = parts
            .extensions
            .get::<OperationId>()
            .and_then(|op| CoreOperationId::parse(&op.0).ok())
            .unwrap_or_else(CoreOperationId::random);
        // Authentication only reads; the rare bookkeeping write (a token's last use, a session's
        // sliding expiry, at most once a minute) is a separate write unit of work.
        let mut tx = state.repo.read().await?;
        let (user_id, via, token_id) = if parts.headers.contains_key(header::AUTHORIZATION) {
            let token = bearer(&parts.headers)
                .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <API token>\""))?;
            let found = tx.get_api_token_by_hash(&TokenHash::of(token)).await?;
            let token = found
                .filter(|t| t.is_valid(now))
                .ok_or_else(|| unauthorized("the API token is unknown, revoked or expired"))?;
            // When a token was last used, to the minute: enough to spot dormant tokens without a
            // write on every request.
            if token.last_used_at.is_none_or(|t| now - t >= LAST_USED_RESOLUTION) {
                drop(tx);
                note_token_use(state.repo.as_ref(), token.id, now).await?;
                tx = state.repo.read().await?;
            }
            (token.user, Via::ApiToken, Some(token.id))
        } else if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
            drop(tx);
            let session = valid_session(state, secret, now).await?;
            tx = state.repo.read().await?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                if !Session::csrf_matches(secret, presented) {
                    return Err(ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "missing or wrong x-csrf-token header (use the csrf_token that login returned)",
                    ));
                }
            }
            (session.user, Via::Session(TokenHash::of(secret)), None)
        } else {
            return Err(unauthorized("authentication required: log in or send an API token"));
        };
        let user = tx.get_user(user_id).await?.ok_or_else(|| unauthorized("the account no longer exists"))?;
        drop(tx);
        let principal = Principal::new(user, op, now).map_err(DomainError::from)?;
        let principal = match token_id {
            Some(id) => principal.via_api_token(id),
            None => principal,
        };
        Ok(Auth { principal, via })
    }
}

/// The valid session whose cookie value is `secret`, its sliding expiry extended for this use.
async fn valid_session<R: Repo + 'static>(
    state: &AppState<R>,
    secret: &str,
    now: OffsetDateTime,
) -> Result<Session, ApiError> {
    let hash = TokenHash::of(secret);
    let session = {
        let mut tx = state.repo.read().await?;
        tx.get_session(&hash).await?.filter(|s| s.is_valid(now)).ok_or_else(|| unauthorized(SESSION_ENDED))?
    };
    // Sliding expiry: use keeps the session alive for SESSION_IDLE more, never past SESSION_TTL
    // after login; written at most once a minute.
    if now - session.last_seen_at >= LAST_USED_RESOLUTION {
        note_session_use(state.repo.as_ref(), &hash, now).await?;
    }
    Ok(session)
}

/// A portal caller: the session's [`Auth`] and the CSRF token its forms must carry. (No `Debug`:
/// it holds the cookie value.)
pub struct SessionAuth {
    pub auth: Auth,
    /// [`Session::csrf_token`] of this session's cookie.
    pub csrf_token: String,
    secret: String,
}

impl SessionAuth {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        Session::csrf_matches(&self.secret, presented)
    }
}

/// Authenticates the request's session cookie alone (bearer tokens are for scripts, not the
/// portal): `Ok(None)` when there is no cookie, `Err` (401) when it names no valid session or its
/// user is gone. CSRF is left to the caller, which finds the token in a form or a header.
pub async fn session_auth<R: Repo + 'static>(
    parts: &Parts,
    state: &AppState<R>,
) -> Result<Option<SessionAuth>, ApiError> {
    let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else { return Ok(None) };
    let now = state.clock.now();
    let op = parts
        .extensions
        .get::<OperationId>()
        .and_then(|op| CoreOperationId::parse(&op.0).ok())
        .unwrap_or_else(CoreOperationId::random);
    let session = valid_session(state, secret, now).await?;
    let user = {
        let mut tx = state.repo.read().await?;
        tx.get_user(session.user).await?.ok_or_else(|| unauthorized("the account no longer exists"))?
    };
    let principal = Principal::new(user, op, now).map_err(DomainError::from)?;
    Ok(Some(SessionAuth {
        auth: Auth { principal, via: Via::Session(TokenHash::of(secret)) },
        csrf_token: Session::csrf_token(secret),
        secret: secret.to_owned(),
    }))
}

const SESSION_ENDED: &str = "the session has expired or ended; log in again";

/// Records that API token `id` was used at `now`. The token is read again inside the write unit
/// of work and only `last_used_at` changes, so a revocation that committed since the read is
/// kept, and the request is refused.
async fn note_token_use<R: Repo>(repo: &R, id: ApiTokenId, now: OffsetDateTime) -> Result<(), ApiError> {
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        let mut token = tx
            .get_api_token(id)
            .await?
            .filter(|t| t.is_valid(now))
            .ok_or_else(|| unauthorized("the API token is unknown, revoked or expired"))?;
        if token.last_used_at.is_none_or(|t| now - t >= LAST_USED_RESOLUTION) {
            token.last_used_at = Some(now);
            tx.update_api_token(&token).await?;
            tx.commit().await?;
        }
        Ok(())
    })
    .await
}

/// Extends the session `hash` for its use at `now` (sliding expiry). Read again inside the write
/// unit of work: a session ended since the read stays ended, and the request is refused.
async fn note_session_use<R: Repo>(repo: &R, hash: &TokenHash, now: OffsetDateTime) -> Result<(), ApiError> {
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        let mut session = tx
            .get_session(hash)
            .await?
            .filter(|s| s.is_valid(now))
            .ok_or_else(|| unauthorized(SESSION_ENDED))?;
        if now - session.last_seen_at >= LAST_USED_RESOLUTION {
            session.last_seen_at = now;
            session.expires_at = (now + SESSION_IDLE).min(session.created_at + SESSION_TTL);
            tx.update_session(&session).await?;
            tx.commit().await?;
        }
        Ok(())
    })
    .await
}

/// The value of `Authorization: Bearer <value>` (an API token, an agent credential), if the
/// header has that form and a value.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[tokio::test]
    async fn throttle_allows_five_failures_per_window() {
        let repo = lanyard_core::testing::MemRepo::default();
        let t = LoginThrottle::default();
        let t0 = datetime!(2025-01-01 00:00 UTC);
        for i in 0..5 {
            assert_eq!(t.check(&repo, "alice", t0 + Duration::minutes(i)).await, Ok(Ok(())));
            t.record_failure(&repo, "alice", t0 + Duration::minutes(i)).await.unwrap();
        }
        assert_eq!(t.check(&repo, "alice", t0 + Duration::minutes(5)).await, Ok(Err(600)));
        assert_eq!(t.check(&repo, "bob", t0 + Duration::minutes(5)).await, Ok(Ok(())), "per username");
        let other = LoginThrottle::new("other", 5, THROTTLE_WINDOW);
        assert_eq!(other.check(&repo, "alice", t0 + Duration::minutes(5)).await, Ok(Ok(())), "per scope");
        assert_eq!(
            t.check(&repo, "alice", t0 + Duration::minutes(15)).await,
            Ok(Ok(())),
            "the oldest failure left the window"
        );
        // Two more failures: five in the window again, the oldest at minute 2.
        for _ in 0..2 {
            t.record_failure(&repo, "alice", t0 + Duration::minutes(16)).await.unwrap();
        }
        assert_eq!(t.check(&repo, "alice", t0 + Duration::minutes(16)).await, Ok(Err(60)));
        t.clear(&repo, "alice").await.unwrap();
        assert_eq!(t.check(&repo, "alice", t0 + Duration::minutes(16)).await, Ok(Ok(())));
        assert!(repo.data().throttle_failures.is_empty(), "cleared, and minute 0 was dropped on the way");
    }

    #[test]
    fn finds_the_session_cookie() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; __Host-lanyard_session=abc".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        // Malformed pairs around it are skipped; a second header is searched too.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "=; junk; a=1".parse().unwrap());
        h.append(header::COOKIE, "__Host-lanyard_session=def".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("def"));
        let set = session_cookie("xyz", time::Duration::hours(8));
        for attr in
            ["__Host-lanyard_session=xyz", "Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"]
        {
            assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
        }
    }
}
