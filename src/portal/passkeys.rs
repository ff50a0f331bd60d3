//! Passkeys and security keys (WebAuthn, through webauthn-rs) as second factors, several
//! per user. A ceremony is two requests: `…/start` answers the options for the browser's
//! `navigator.credentials` (JSON) and keeps the challenge in the session (the store, so
//! any instance can finish it); `…/finish` is a form post carrying the browser's answer,
//! taken against that challenge once. `static/passkey.js` runs the browser's part; the
//! pages work without it, only passkeys need it.
//!
//! The relying party is `[portal] public_url`'s host: its origin must be the page's (any
//! port of that host, since the rp ID covers the host anyway). User verification (a PIN,
//! a fingerprint, a face) is required, as for any passkey.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::access;
use super::browser::Browser;
use super::mfa;
use super::notify::{self, Change};
use super::pages::{self, Fields};
use super::Portal;
use crate::clock::now;
use crate::config::PortalConfig;
use crate::store::{PortalSession, StoreError, User};

/// Longest name of a passkey.
const MAX_NAME: usize = 100;

/// The relying party of `[portal] public_url`.
pub fn relying_party(config: &PortalConfig) -> Result<Webauthn, String> {
    let origin =
        Url::parse(&config.public_url).map_err(|error| format!("[portal] public_url: {error}"))?;
    let rp_id = origin
        .host_str()
        .ok_or("[portal] public_url has no host")?
        .to_string();
    WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|builder| builder.rp_name("postern").allow_any_port(true).build())
        .map_err(|error| format!("[portal] public_url cannot be a passkey origin: {error}"))
}

/// A ceremony under way in a session.
#[derive(Serialize, Deserialize)]
enum Ceremony {
    /// Registering a passkey; `first` when it is the user's first second factor.
    Register {
        state: PasskeyRegistration,
        first: bool,
    },
    SignIn(PasskeyAuthentication),
}

/// The WebAuthn user handle of a user: stable, and nothing but the store's number.
fn user_handle(user: &User) -> Uuid {
    Uuid::from_u64_pair(0x706f_7374_6572_6e00, user.id as u64)
}

/// A JSON refusal for a `…/start` request; the script shows its own words.
fn refuse(status: StatusCode) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": status.as_u16() })),
    )
        .into_response()
}

/// The session a `…/start` request acts for (and its token's digest).
#[allow(clippy::result_large_err)] // the error is the answer itself, given at once
fn starter<'b>(
    browser: &'b Browser,
    form: &Fields,
) -> Result<(&'b str, &'b PortalSession), Response> {
    if !browser.csrf_ok(form.get("csrf")) {
        return Err(refuse(StatusCode::FORBIDDEN));
    }
    match &browser.session {
        Some((token_hash, session)) => Ok((token_hash, session)),
        None => Err(refuse(StatusCode::UNAUTHORIZED)),
    }
}

/// The user's passkeys, as webauthn-rs takes them, with their store ids.
async fn passkeys(portal: &Portal, user: &User) -> Result<Vec<(i64, Passkey)>, StoreError> {
    let records = portal.gateway.store.passkeys(user.id).await?;
    Ok(records
        .into_iter()
        .filter_map(|record| match serde_json::from_str(&record.passkey) {
            Ok(passkey) => Some((record.id, passkey)),
            Err(error) => {
                tracing::warn!(%error, passkey_id = record.id, "portal: a stored passkey does not parse");
                None
            }
        })
        .collect())
}

/// Whether this session may register a passkey now: as its first second factor, or, past
/// the second factor, recently signed in. `Some(first)` when it may.
async fn may_register(
    portal: &Portal,
    session: &PortalSession,
) -> Result<Option<bool>, StoreError> {
    let methods = portal.gateway.store.mfa_methods(session.user.id).await?;
    if methods.count() == 0 {
        return Ok(Some(true));
    }
    let passed = session.mfa_at.is_some() || !portal.config.require_mfa;
    Ok((passed && access::recent(portal, session)).then_some(false))
}

/// `POST /mfa/passkeys/register/start` (`csrf`): the options for `navigator.credentials.create`.
pub async fn register_start(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let form = Fields::parse(&body);
    let (token_hash, session) = match starter(&browser, &form) {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let user = &session.user;
    let result = async {
        let Some(first) = may_register(&portal, session).await? else {
            return Ok(None);
        };
        let existing = passkeys(&portal, user).await?;
        let exclude = existing
            .iter()
            .map(|(_, passkey)| passkey.cred_id().clone())
            .collect();
        let started = portal.webauthn.start_passkey_registration(
            user_handle(user),
            &user.login,
            &user.login,
            Some(exclude),
        );
        let (options, state) = match started {
            Ok(started) => started,
            Err(error) => {
                tracing::warn!(%error, "portal: cannot start a passkey registration");
                return Ok(None);
            }
        };
        Ok::<_, StoreError>(Some((options, Ceremony::Register { state, first })))
    };
    begin(&portal, token_hash, result.await).await
}

/// What both `…/start`s end with: the ceremony kept in the session, and its options
/// answered to the browser (403 when it may not start one).
async fn begin<O: Serialize>(
    portal: &Portal,
    token_hash: &str,
    started: Result<Option<(O, Ceremony)>, StoreError>,
) -> Response {
    let kept = async {
        let Some((options, ceremony)) = started? else {
            return Ok(None);
        };
        let ceremony = serde_json::to_string(&ceremony)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        portal
            .gateway
            .store
            .set_ceremony(token_hash, &ceremony)
            .await?;
        Ok::<_, StoreError>(Some(options))
    };
    match kept.await {
        Ok(Some(options)) => Json(options).into_response(),
        Ok(None) => refuse(StatusCode::FORBIDDEN),
        Err(error) => {
            tracing::warn!(%error, "portal: store");
            refuse(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// What both `…/finish`es begin with: the form's CSRF token checked, the session, and the
/// ceremony it had under way (taken: it serves once); else the answer to give.
async fn finisher<'b>(
    portal: &Portal,
    browser: &'b Browser,
    form: &Fields,
) -> Result<(&'b str, &'b PortalSession, Option<Ceremony>), Response> {
    if !browser.csrf_ok(form.get("csrf")) {
        return Err(pages::forbidden(browser.t));
    }
    let Some((token_hash, session)) = &browser.session else {
        return Err((browser.jar.clone(), Redirect::to("/")).into_response());
    };
    let ceremony = match portal.gateway.store.take_ceremony(token_hash).await {
        Ok(ceremony) => ceremony.and_then(|json| serde_json::from_str::<Ceremony>(&json).ok()),
        Err(error) => return Err(failure(browser.t, error)),
    };
    Ok((token_hash, session, ceremony))
}

/// `POST /mfa/passkeys/register/finish` (`csrf`, `name`, `credential`: the browser's
/// answer as JSON): the passkey is the user's. The first second factor also passes this
/// session's and shows the recovery codes.
pub async fn register_finish(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let form = Fields::parse(&body);
    let (token_hash, session, ceremony) = match finisher(&portal, &browser, &form).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let user = &session.user;
    let store = &portal.gateway.store;
    let Some(Ceremony::Register { state, first }) = ceremony else {
        return refused(&portal, &browser, "register").await;
    };
    let credential: Option<RegisterPublicKeyCredential> = form
        .get("credential")
        .and_then(|json| serde_json::from_str(json).ok());
    let passkey = credential.and_then(|credential| {
        portal
            .webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|error| tracing::warn!(%error, login = ?user.login, "portal: passkey registration refused"))
            .ok()
    });
    let Some(passkey) = passkey else {
        return refused(&portal, &browser, "register").await;
    };
    let name = form.get("name").unwrap_or("").trim();
    let name = if name.is_empty() {
        t.passkey_default_name.to_string()
    } else {
        name.chars().take(MAX_NAME).collect()
    };
    let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id());
    let json = match serde_json::to_string(&passkey) {
        Ok(json) => json,
        Err(error) => return failure(t, StoreError::Corrupt(error.to_string())),
    };
    match store
        .add_passkey(user.id, &name, &credential_id, &json, now())
        .await
    {
        Ok(true) => {}
        Ok(false) => return refused(&portal, &browser, "register").await,
        Err(error) => return failure(t, error),
    }
    tracing::info!(login = ?user.login, "portal: passkey added");
    portal.audit(
        &browser,
        "mfa_added",
        &user.login,
        "ok",
        Some("method=passkey".into()),
    );
    let change = Change::Mfa {
        what: t.mfa_passkey_added,
        name: Some(&name),
    };
    notify::send(&portal, user, &browser, change);
    if !first {
        return (browser.jar, Redirect::to("/security")).into_response();
    }
    if let Err(error) = store.portal_mfa_passed(token_hash, now()).await {
        return failure(t, error);
    }
    let response = mfa::recovery_codes(&portal, &browser, user).await;
    (browser.jar, response).into_response()
}

/// `POST /mfa/passkeys/sign-in/start` (`csrf`): the options for `navigator.credentials.get`.
pub async fn sign_in_start(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let form = Fields::parse(&body);
    let (token_hash, session) = match starter(&browser, &form) {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let result = async {
        let keys: Vec<Passkey> = passkeys(&portal, &session.user)
            .await?
            .into_iter()
            .map(|(_, passkey)| passkey)
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        let (options, state) = match portal.webauthn.start_passkey_authentication(&keys) {
            Ok(started) => started,
            Err(error) => {
                tracing::warn!(%error, "portal: cannot start a passkey sign-in");
                return Ok(None);
            }
        };
        Ok::<_, StoreError>(Some((options, Ceremony::SignIn(state))))
    };
    begin(&portal, token_hash, result.await).await
}

/// `POST /mfa/passkeys/sign-in/finish` (`csrf`, `credential`): the second factor passed
/// with one of the user's passkeys.
pub async fn sign_in_finish(
    State(portal): State<Arc<Portal>>,
    browser: Browser,
    body: Bytes,
) -> Response {
    let t = browser.t;
    let form = Fields::parse(&body);
    let (token_hash, session, ceremony) = match finisher(&portal, &browser, &form).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let user = &session.user;
    let store = &portal.gateway.store;
    let Some(Ceremony::SignIn(state)) = ceremony else {
        return refused(&portal, &browser, "sign_in").await;
    };
    let credential: Option<PublicKeyCredential> = form
        .get("credential")
        .and_then(|json| serde_json::from_str(json).ok());
    let result = credential.and_then(|credential| {
        portal
            .webauthn
            .finish_passkey_authentication(&credential, &state)
            .map_err(|error| tracing::warn!(%error, login = ?user.login, "portal: passkey sign-in refused"))
            .ok()
    });
    let Some(result) = result else {
        return refused(&portal, &browser, "sign_in").await;
    };
    // The signature counter and the time of use.
    let keys = match passkeys(&portal, user).await {
        Ok(keys) => keys,
        Err(error) => return failure(t, error),
    };
    for (id, mut passkey) in keys {
        if passkey.cred_id() == result.cred_id() {
            passkey.update_credential(&result);
            if let Ok(json) = serde_json::to_string(&passkey) {
                if let Err(error) = store.passkey_used(id, &json, now()).await {
                    return failure(t, error);
                }
            }
        }
    }
    count(&portal, "ok");
    portal.audit(
        &browser,
        "portal_mfa",
        &user.login,
        "ok",
        Some("method=passkey".into()),
    );
    portal
        .gateway
        .penalties
        .succeeded(browser.client.ip(), &user.login)
        .await;
    if let Err(error) = store.portal_mfa_passed(token_hash, now()).await {
        return failure(t, error);
    }
    (browser.jar, Redirect::to("/app-passwords")).into_response()
}

/// A ceremony that did not pass: counted, audited, and the page it came from again with
/// the reason.
async fn refused(portal: &Arc<Portal>, browser: &Browser, ceremony: &'static str) -> Response {
    let t = browser.t;
    count(portal, "refused");
    if let Some((_, session)) = &browser.session {
        portal.audit(
            browser,
            "portal_mfa",
            &session.user.login,
            "refused",
            Some(format!("method=passkey ceremony={ceremony}")),
        );
    }
    let page = match browser.session.as_ref() {
        Some((_, session)) if ceremony == "register" && session.mfa_at.is_some() => {
            super::security::page(portal, browser, session, Some(t.passkey_failed)).await
        }
        _ => mfa::page_with(portal, browser, Some(t.passkey_failed)).await,
    };
    (browser.jar.clone(), page).into_response()
}

fn count(portal: &Portal, result: &str) {
    portal
        .gateway
        .metrics
        .portal_mfa
        .with_label_values(&["passkey", result])
        .inc();
}

fn failure(t: &'static super::i18n::Messages, error: StoreError) -> Response {
    tracing::warn!(%error, "portal: store");
    pages::failure(t)
}
