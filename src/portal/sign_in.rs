//! Signing in with the primary password and signing out. The password is checked by the
//! configured method: `sign_in = "upstream"` logs in to the upstream IMAP server as the
//! user, then out; `sign_in = "ldap"` binds to the organisation's directory as the person
//! (a person without a postern user gets one now, from the directory's attributes, unless
//! `[directory] provision = false`). The password is never stored, cached or logged. An
//! unknown user and a wrong password get the same refusal; failed sign-ins earn the same
//! penalties as IMAP and SMTP logins, per address and login; the directory or upstream
//! unreachable is "try again later", never counted against the person.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::browser::Browser;
use super::pages::{self, Fields, SignInPage};
use super::Portal;
use crate::accounts::AdminError;
use crate::auth::{password, Secret};
use crate::clock::now;
use crate::config::SignIn;
use crate::directory::{sync, Answer, Person};
use crate::imap;
use crate::store::{StoreError, User};

/// What the sign-in method said.
enum Checked {
    /// The password is right; the directory's description of the person when it has one.
    Accepted(Option<Person>),
    Refused,
    Unavailable,
}

/// `POST /sign-in`: `login`, `password`, `csrf`.
pub async fn sign_in(
    State(portal): State<Arc<Portal>>,
    mut browser: Browser,
    body: Bytes,
) -> Response {
    let form = Fields::parse(&body);
    let t = browser.t;
    if !browser.csrf_ok(form.get("csrf")) {
        return (browser.jar, pages::forbidden(t)).into_response();
    }
    if portal.config.sign_in == SignIn::Oidc {
        // No password here: the provider asks for it.
        return (browser.jar, Redirect::to("/oidc/start")).into_response();
    }
    let typed_login = form.get("login").unwrap_or("").trim().to_string();
    let password = Secret::new(form.get("password").unwrap_or("").to_string());
    let login = password::normalize_login(&typed_login);
    let page = |browser: &Browser, error| {
        pages::render(
            StatusCode::OK,
            &SignInPage {
                t,
                csrf: &browser.csrf,
                signed_in: false,
                nav: false,
                login: &typed_login,
                error: Some(error),
                notice: None,
                oidc: false,
            },
        )
    };
    if login.is_empty() || password.expose().is_empty() || login.len() > 256 {
        let response = page(&browser, t.sign_in_refused);
        return (browser.jar, response).into_response();
    }
    let gateway = &portal.gateway;
    let ip = browser.client.ip();
    if gateway.penalties.blocked_for(ip, &login).await.is_some() {
        record(&portal, &login, &browser, "rate_limited");
        let response = page(&browser, t.try_later);
        return (browser.jar, response).into_response();
    }
    let user = match gateway.store.user(&login).await {
        Ok(user) => user,
        Err(error) => {
            tracing::warn!(%error, "portal: cannot look the user up");
            return (browser.jar, pages::failure(t)).into_response();
        }
    };
    let checked = match portal.config.sign_in {
        SignIn::Upstream => {
            // An unknown login is checked upstream all the same: a refusal takes as long
            // either way.
            let upstream_user = user
                .as_ref()
                .map_or(login.as_str(), |user| user.upstream_user.as_str());
            check_upstream(&portal, upstream_user, &password).await
        }
        SignIn::Ldap => check_directory(&portal, &login, &password).await,
        SignIn::Oidc => Checked::Refused,
    };
    let digest = gateway.verifier.lookup_key().cache_key(&login, &password);
    drop(password);
    // The directory may name the person differently from what they typed (uid, UPN).
    let (checked, user) = match checked {
        Checked::Accepted(Some(person)) => {
            match known_or_provisioned(&portal, &person, sync::SOURCE).await {
                Ok(user) => (Checked::Accepted(None), user),
                Err(()) => return (browser.jar, pages::failure(t)).into_response(),
            }
        }
        checked => (checked, user),
    };
    let login = user.as_ref().map_or(login, |user| user.login.clone());
    let user = match (checked, user) {
        (Checked::Accepted(_), Some(user)) if user.disabled_at.is_none() => user,
        (Checked::Unavailable, _) => {
            record(&portal, &login, &browser, "upstream_unavailable");
            let response = page(&browser, t.try_later);
            return (browser.jar, response).into_response();
        }
        (checked, user) => {
            let result = match (&checked, &user) {
                (_, None) => "unknown_user",
                (Checked::Accepted(_), Some(_)) => "disabled",
                _ => "bad_password",
            };
            if matches!(checked, Checked::Refused) {
                let delay = gateway.penalties.failed(ip, &login, digest).await;
                tokio::time::sleep(delay).await;
            }
            record(&portal, &login, &browser, result);
            let response = page(&browser, t.sign_in_refused);
            return (browser.jar, response).into_response();
        }
    };
    gateway.penalties.succeeded(ip, &login).await;
    match begin_session(&portal, &mut browser, &user, false).await {
        Ok(next) => {
            record(&portal, &login, &browser, "ok");
            (browser.jar, Redirect::to(next)).into_response()
        }
        Err(()) => pages::failure(t),
    }
}

/// Signs the browser in as `user` (a new session cookie, kept in the store), its second
/// factor already passed when `mfa_passed` (an identity provider's MFA). Returns where to
/// go next.
pub(super) async fn begin_session(
    portal: &Portal,
    browser: &mut Browser,
    user: &User,
    mfa_passed: bool,
) -> Result<&'static str, ()> {
    let store = &portal.gateway.store;
    let (token_hash, csrf) = browser.begin_session();
    let at = now();
    let expires_at = at + portal.config.session_lifetime.as_secs() as i64;
    if let Err(error) = store
        .create_portal_session(&token_hash, user.id, &csrf, at, expires_at)
        .await
    {
        tracing::warn!(%error, "portal: cannot store the session");
        return Err(());
    }
    if mfa_passed {
        if let Err(error) = store.portal_mfa_passed(&token_hash, at).await {
            tracing::warn!(%error, "portal: cannot store the session");
            return Err(());
        }
    }
    Ok(if portal.config.require_mfa && !mfa_passed {
        "/mfa"
    } else {
        "/app-passwords"
    })
}

/// LOGIN and LOGOUT upstream as the user, within the upstream's reply timeout.
async fn check_upstream(portal: &Portal, user: &str, password: &Secret<String>) -> Checked {
    let Some(upstream) = portal.gateway.imap_upstream() else {
        return Checked::Unavailable;
    };
    match imap::upstream::check_password(&upstream, user, password).await {
        Ok(true) => Checked::Accepted(None),
        Ok(false) => Checked::Refused,
        Err(error) => {
            tracing::warn!(%error, "portal: the upstream cannot check a sign-in");
            Checked::Unavailable
        }
    }
}

/// A bind to the directory as the person.
async fn check_directory(portal: &Portal, login: &str, password: &Secret<String>) -> Checked {
    let Some(directory) = &portal.directory else {
        return Checked::Unavailable;
    };
    match directory.sign_in(login, password).await {
        Answer::Yes(person) => Checked::Accepted(Some(person)),
        Answer::No => Checked::Refused,
        Answer::Unavailable(why) => {
            tracing::warn!(reason = %why, "portal: the directory cannot check a sign-in");
            Checked::Unavailable
        }
    }
}

/// The postern user a person from the directory is: found, or made now (unless
/// provisioning is off: then `None`, an unknown user).
pub(super) async fn known_or_provisioned(
    portal: &Portal,
    person: &Person,
    source: &str,
) -> Result<Option<User>, ()> {
    let store = &portal.gateway.store;
    match store.user(&person.login).await {
        Ok(Some(user)) => return Ok(Some(user)),
        Ok(None) if !portal.provision => return Ok(None),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "portal: cannot look the user up");
            return Err(());
        }
    }
    match portal.accounts.provision(person, source).await {
        Ok(user) => {
            tracing::info!(login = ?user.login, "portal: user created from the directory");
            Ok(Some(user))
        }
        // Made meanwhile by another sign-in.
        Err(AdminError::Store(StoreError::UserExists(_))) => {
            store.user(&person.login).await.map_err(|_| ())
        }
        Err(error) => {
            tracing::warn!(%error, "portal: cannot create the user");
            Err(())
        }
    }
}

/// One log line and one audit event per sign-in attempt.
pub(super) fn record(portal: &Portal, login: &str, browser: &Browser, result: &'static str) {
    let client_ip = browser.client.ip();
    portal
        .gateway
        .metrics
        .portal_sign_ins
        .with_label_values(&[result])
        .inc();
    let login_shown: String = login.chars().take(256).collect();
    if result == "ok" {
        tracing::info!(login = ?login_shown, %client_ip, result, "portal sign-in");
    } else {
        tracing::warn!(login = ?login_shown, %client_ip, result, "portal sign-in failed");
    }
    portal.audit(browser, "portal_sign_in", login, result, None);
}

/// `POST /sign-out`: ends the session here and in the store.
pub async fn sign_out(
    State(portal): State<Arc<Portal>>,
    mut browser: Browser,
    body: Bytes,
) -> Response {
    let form = Fields::parse(&body);
    if !browser.csrf_ok(form.get("csrf")) {
        return pages::forbidden(browser.t);
    }
    if let Some((token_hash, _)) = &browser.session {
        if let Err(error) = portal
            .gateway
            .store
            .end_portal_session(token_hash, now())
            .await
        {
            tracing::warn!(%error, "portal: cannot end the session");
        }
    }
    browser.end_session();
    (browser.jar, Redirect::to("/")).into_response()
}
