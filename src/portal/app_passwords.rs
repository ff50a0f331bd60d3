//! The user's own app passwords: the list (name, scopes, created, last used, expiry), a
//! new one (which needs a sign-in within the last 10 minutes) shown once with a Copy
//! button and the settings a mail app needs, revoking one or all. The limit, scopes,
//! expiry and the revocation that closes live sessions are the account use cases the
//! CLI uses.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::access::{self, acting, ready, Ready};
use super::browser::Browser;
use super::pages::{self, AppPasswordsPage, Fields, NewPassword, Row, SignInPage};
use super::Portal;
use super::{notify, profile};
use crate::accounts::{AdminError, IssueRequest};
use crate::clock::now;
use crate::store::{AppPassword, PortalSession, Scope, StoreError};

/// Longest name of an app password.
const MAX_NAME: usize = 100;

/// Expiries the create form offers.
const EXPIRIES: [&str; 3] = ["30d", "90d", "365d"];

/// `GET /`: the app passwords when signed in (and past the second factor), else sign-in.
pub async fn home(State(portal): State<Arc<Portal>>, browser: Browser) -> Response {
    match ready(&portal, &browser) {
        Ready::Yes(_) => list(State(portal), browser).await,
        Ready::NeedsMfa => (browser.jar, Redirect::to("/mfa")).into_response(),
        Ready::SignIn => sign_in_page(&portal, &browser, None, None),
    }
}

/// The sign-in page (a password form, or the way to the OpenID provider), with a notice
/// or an error.
pub(super) fn sign_in_page(
    portal: &Portal,
    browser: &Browser,
    notice: Option<&'static str>,
    error: Option<&'static str>,
) -> Response {
    let response = pages::render(
        StatusCode::OK,
        &SignInPage {
            t: browser.t,
            csrf: &browser.csrf,
            signed_in: false,
            nav: false,
            login: "",
            error,
            notice,
            oidc: portal.config.sign_in == crate::config::SignIn::Oidc,
        },
    );
    (browser.jar.clone(), response).into_response()
}

/// `GET /app-passwords`.
pub async fn list(State(portal): State<Arc<Portal>>, browser: Browser) -> Response {
    let session = match ready(&portal, &browser) {
        Ready::Yes(session) => session,
        Ready::NeedsMfa => return (browser.jar, Redirect::to("/mfa")).into_response(),
        Ready::SignIn => return (browser.jar, Redirect::to("/")).into_response(),
    };
    let response = page(&portal, &browser, session, None, None).await;
    (browser.jar, response).into_response()
}

/// The page with the user's list, and maybe a new password or an error.
async fn page(
    portal: &Portal,
    browser: &Browser,
    session: &PortalSession,
    new_password: Option<NewPassword>,
    error: Option<&'static str>,
) -> Response {
    let t = browser.t;
    let passwords = match portal.accounts.app_passwords(&session.user.login).await {
        Ok(passwords) => passwords,
        Err(error) => {
            tracing::warn!(%error, "portal: cannot list app passwords");
            return pages::failure(t);
        }
    };
    let at = now();
    let rows = passwords.iter().map(|p| row(t, p, at)).collect();
    let settings = &portal.config.client_settings;
    pages::render(
        StatusCode::OK,
        &AppPasswordsPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            nav: true,
            login: &session.user.login,
            rows,
            new_password,
            error,
            imap: &settings.imap,
            smtp: &settings.smtp,
        },
    )
}

fn row(t: &'static super::i18n::Messages, p: &AppPassword, at: i64) -> Row {
    let live = p.revoked_at.is_none() && p.is_live(at);
    let mut last_used = match (p.last_used_at, &p.last_used_ip) {
        (Some(when), Some(ip)) => format!("{} · {ip}", pages::time(when)),
        (Some(when), None) => pages::time(when),
        _ => t.never.to_string(),
    };
    if let Some(app) = p.last_used_app().filter(|_| p.last_used_at.is_some()) {
        last_used.push_str(&format!(" · {app}"));
    }
    Row {
        id: p.id,
        name: p.name.clone(),
        scopes: p
            .scopes
            .iter()
            .map(|s| s.as_str().to_uppercase())
            .collect::<Vec<_>>()
            .join(", "),
        created: pages::time(p.created_at),
        last_used,
        expires: p
            .expires_at
            .map_or_else(|| t.no_expiry.to_string(), pages::time),
        live,
        state: if p.revoked_at.is_some() {
            t.revoked
        } else {
            t.expired
        },
    }
}

/// `POST /app-passwords`: `name`, `scopes` (repeated: `imap`, `smtp`, `pop3`), optional
/// `expires_in` (`30d`, `90d`, `365d`), `csrf`.
pub async fn create(State(portal): State<Arc<Portal>>, browser: Browser, body: Bytes) -> Response {
    let t = browser.t;
    let form = Fields::parse(&body);
    let session = match acting(&portal, &browser, &form) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    if !access::recent(&portal, session) {
        let t = browser.t;
        return sign_in_page(&portal, &browser, Some(t.sign_in_again), None);
    }
    let at = now();
    let name = form.get("name").unwrap_or("").trim();
    let mut scopes = Vec::new();
    for value in form.all("scopes") {
        let Ok(scope) = value.parse::<Scope>() else {
            continue;
        };
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let expires_in = match form.get("expires_in").unwrap_or("") {
        "" => Ok(None),
        value if EXPIRIES.contains(&value) => Ok(humantime::parse_duration(value).ok()),
        _ => Err(()),
    };
    let error = if name.is_empty() || name.chars().count() > MAX_NAME {
        Some(t.name_required)
    } else if scopes.is_empty() {
        Some(t.scope_required)
    } else if expires_in.is_err() {
        Some(t.bad_expiry)
    } else {
        None
    };
    if let Some(error) = error {
        let response = page(&portal, &browser, session, None, Some(error)).await;
        return (browser.jar, response).into_response();
    }
    let expires_at = expires_in
        .ok()
        .flatten()
        .map(|d: Duration| at + d.as_secs() as i64);
    let request = IssueRequest {
        login: &session.user.login,
        name,
        scopes: &scopes,
        expires_at,
        actor: browser.actor(),
    };
    let new_password = match portal.accounts.issue_app_password(request).await {
        Ok(issued) => {
            tracing::info!(login = ?session.user.login, app_password_id = issued.app_password.id, "portal: app password created");
            count(&portal, "created", 1);
            let change = notify::Change::AppPasswordCreated {
                name: &issued.app_password.name,
            };
            notify::send(&portal, &session.user, &browser, change);
            let profile = if profile::fits(&scopes) {
                let offer = profile::offer(
                    &portal,
                    &session.user,
                    issued.app_password.id,
                    &issued.password,
                );
                match offer.await {
                    Ok(offer) => Some(offer),
                    Err(error) => {
                        tracing::warn!(%error, "portal: cannot keep a device link");
                        None
                    }
                }
            } else {
                None
            };
            let shown = issued.password.expose().clone();
            NewPassword {
                name: issued.app_password.name.clone(),
                compact: shown.replace(' ', ""),
                password: shown,
                profile,
            }
        }
        Err(AdminError::Store(StoreError::LimitReached { .. })) => {
            let response = page(&portal, &browser, session, None, Some(t.limit_reached)).await;
            return (browser.jar, response).into_response();
        }
        Err(error) => {
            tracing::warn!(%error, "portal: cannot create an app password");
            return pages::failure(t);
        }
    };
    let response = page(&portal, &browser, session, Some(new_password), None).await;
    (browser.jar, response).into_response()
}

/// Counts app passwords created or revoked from the portal.
fn count(portal: &Portal, action: &str, n: u64) {
    portal
        .gateway
        .metrics
        .portal_app_passwords
        .with_label_values(&[action])
        .inc_by(n);
}

/// `POST /app-passwords/{id}/revoke`: one of the user's own.
pub async fn revoke(
    State(portal): State<Arc<Portal>>,
    Path(id): Path<i64>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let form = Fields::parse(&body);
    let session = match acting(&portal, &browser, &form) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let owned = match portal.gateway.store.app_password(id).await {
        Ok(Some((_, login))) => login == session.user.login,
        Ok(None) => false,
        Err(error) => {
            tracing::warn!(%error, "portal: cannot look an app password up");
            return pages::failure(t);
        }
    };
    if !owned {
        return pages::message(t, StatusCode::NOT_FOUND, t.not_found);
    }
    if let Err(error) = portal
        .accounts
        .revoke_app_password(id, browser.actor())
        .await
    {
        tracing::warn!(%error, "portal: cannot revoke an app password");
        return pages::failure(t);
    }
    count(&portal, "revoked", 1);
    (browser.jar, Redirect::to("/app-passwords")).into_response()
}

/// `POST /app-passwords/revoke-all`.
pub async fn revoke_all(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let form = Fields::parse(&body);
    let session = match acting(&portal, &browser, &form) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    match portal
        .accounts
        .revoke_all(&session.user.login, browser.actor())
        .await
    {
        Ok(ids) => count(&portal, "revoked", ids.len() as u64),
        Err(error) => {
            tracing::warn!(%error, "portal: cannot revoke app passwords");
            return pages::failure(t);
        }
    }
    (browser.jar, Redirect::to("/app-passwords")).into_response()
}
