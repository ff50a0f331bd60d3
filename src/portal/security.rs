//! The user's sign-in methods: the authenticator app (TOTP), passkeys and the recovery
//! codes left; add TOTP or a passkey, remove one (never the last while MFA is required),
//! make new recovery codes. Each change needs a recent sign-in, is an audit event, and
//! mails the user.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::access::{self, acting, ready, Ready};
use super::app_passwords::sign_in_page;
use super::browser::Browser;
use super::mfa;
use super::notify::{self, Change};
use super::pages::{self, Fields, PasskeyRow, SecurityPage};
use super::Portal;
use crate::store::{PortalSession, StoreError};

/// `GET /security`.
pub async fn show(State(portal): State<Arc<Portal>>, browser: Browser) -> Response {
    let session = match ready(&portal, &browser) {
        Ready::Yes(session) => session,
        Ready::NeedsMfa => return (browser.jar, Redirect::to("/mfa")).into_response(),
        Ready::SignIn => return (browser.jar, Redirect::to("/")).into_response(),
    };
    let response = page(&portal, &browser, session, None).await;
    (browser.jar, response).into_response()
}

/// The page, with `error` when a change was refused.
pub(super) async fn page(
    portal: &Portal,
    browser: &Browser,
    session: &PortalSession,
    error: Option<&'static str>,
) -> Response {
    let t = browser.t;
    let store = &portal.gateway.store;
    let user = &session.user;
    let (methods, passkeys) = match (
        store.mfa_methods(user.id).await,
        store.passkeys(user.id).await,
    ) {
        (Ok(methods), Ok(passkeys)) => (methods, passkeys),
        (Err(error), _) | (_, Err(error)) => return failure(t, error),
    };
    let passkeys = passkeys
        .into_iter()
        .map(|key| PasskeyRow {
            id: key.id,
            name: key.name,
            created: pages::time(key.created_at),
            last_used: key
                .last_used_at
                .map_or_else(|| t.never.to_string(), pages::time),
        })
        .collect();
    pages::render(
        StatusCode::OK,
        &SecurityPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            nav: true,
            totp: methods.totp,
            passkeys,
            recovery_codes: methods.recovery_codes,
            error,
        },
    )
}

/// `GET /security/totp`: set up an authenticator app next to the methods there are.
pub async fn add_totp(State(portal): State<Arc<Portal>>, browser: Browser) -> Response {
    let response = mfa::totp_page(&portal, &browser, None).await;
    (browser.jar, response).into_response()
}

/// The session a change acts for: a form with its token, past the second factor, signed
/// in recently; else the answer to give.
#[allow(clippy::result_large_err)] // the error is the page itself, answered at once
fn changing<'b>(
    portal: &Portal,
    browser: &'b Browser,
    body: &Bytes,
) -> Result<&'b PortalSession, Response> {
    let form = Fields::parse(body);
    let session = acting(portal, browser, &form)?;
    if !access::recent(portal, session) {
        return Err(sign_in_page(
            portal,
            browser,
            Some(browser.t.sign_in_again_change),
            None,
        ));
    }
    Ok(session)
}

/// `POST /security/totp/remove`.
pub async fn remove_totp(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let session = match changing(&portal, &browser, &body) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let keep_one = portal.config.require_mfa;
    let outcome = portal
        .gateway
        .store
        .remove_totp(session.user.id, keep_one)
        .await;
    let change = Change::Mfa {
        what: t.mfa_totp_removed,
        name: None,
    };
    after_removal(&portal, &browser, session, outcome, "totp", change).await
}

/// `POST /security/passkeys/{id}/remove`: one of the user's own.
pub async fn remove_passkey(
    State(portal): State<Arc<Portal>>,
    Path(id): Path<i64>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let session = match changing(&portal, &browser, &body) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let user = &session.user;
    let store = &portal.gateway.store;
    let name = match store.passkeys(user.id).await {
        Ok(keys) => keys
            .into_iter()
            .find(|key| key.id == id)
            .map(|key| key.name),
        Err(error) => return failure(t, error),
    };
    let Some(name) = name else {
        return pages::message(t, StatusCode::NOT_FOUND, t.not_found);
    };
    let outcome = store
        .remove_passkey(user.id, id, portal.config.require_mfa)
        .await;
    let change = Change::Mfa {
        what: t.mfa_passkey_removed,
        name: Some(&name),
    };
    after_removal(&portal, &browser, session, outcome, "passkey", change).await
}

/// `POST /security/recovery-codes`: ten new codes, shown once; the old ones stop working.
pub async fn renew_recovery_codes(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let session = match changing(&portal, &browser, &body) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let user = &session.user;
    let response = mfa::recovery_codes(&portal, &browser, user).await;
    if response.status().is_success() {
        portal.audit(&browser, "recovery_codes_renewed", &user.login, "ok", None);
        let change = Change::Mfa {
            what: t.mfa_recovery_renewed,
            name: None,
        };
        notify::send(&portal, user, &browser, change);
    }
    (browser.jar, response).into_response()
}

/// What follows a removal: refused as the last method (the page says so), or done (a log
/// line, an audit event, the user's mail, back to the page).
async fn after_removal(
    portal: &Arc<Portal>,
    browser: &Browser,
    session: &PortalSession,
    outcome: Result<bool, StoreError>,
    method: &str,
    change: Change<'_>,
) -> Response {
    let t = browser.t;
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            let response = page(portal, browser, session, Some(t.last_method)).await;
            return (browser.jar.clone(), response).into_response();
        }
        Err(error) => return failure(t, error),
    }
    let login = &session.user.login;
    tracing::info!(login = ?login, method, "portal: second factor removed");
    portal.audit(
        browser,
        "mfa_removed",
        login,
        "ok",
        Some(format!("method={method}")),
    );
    notify::send(portal, &session.user, browser, change);
    (browser.jar.clone(), Redirect::to("/security")).into_response()
}

fn failure(t: &'static super::i18n::Messages, error: StoreError) -> Response {
    tracing::warn!(%error, "portal: store");
    pages::failure(t)
}
