//! The second factor of a password sign-in. The first time ("Set it up now") the user
//! sets up TOTP or a passkey (the passkeys module); afterwards each sign-in asks for one
//! of them or a recovery code. TOTP (RFC 6238, 30-second steps, one step of clock drift
//! either way) is set up by scanning a QR code or typing the key, confirmed by a first
//! code; a step's code is accepted once. With the first method, ten single-use recovery
//! codes are shown once and stored as keyed digests. Wrong codes earn the sign-in
//! penalties.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Secret as TotpSecret, TOTP};

use super::access::{ready, Ready};
use super::browser::Browser;
use super::notify::{self, Change};
use super::pages::{self, Fields, MfaPage, RecoveryPage, TotpSetup};
use super::token::hex;
use super::Portal;
use crate::auth::{password, Secret};
use crate::clock::now;
use crate::store::{MfaMethods, StoreError, User};

/// Recovery codes made at set-up.
const RECOVERY_CODES: usize = 10;

/// `GET /mfa`: the set-up (first time) or the verification.
pub async fn page(State(portal): State<Arc<Portal>>, browser: Browser) -> Response {
    match &browser.session {
        None => return (browser.jar, Redirect::to("/")).into_response(),
        Some(_) if !portal.config.require_mfa => {
            return (browser.jar, Redirect::to("/app-passwords")).into_response()
        }
        Some(_) => {}
    }
    let response = page_with(&portal, &browser, None).await;
    (browser.jar, response).into_response()
}

/// The set-up page (no second factor yet: TOTP, or a passkey instead) or the verification
/// page (a code, or a passkey when the user has one), with `error` when one was refused.
pub(super) async fn page_with(
    portal: &Portal,
    browser: &Browser,
    error: Option<&'static str>,
) -> Response {
    let t = browser.t;
    let Some((_, session)) = &browser.session else {
        return Redirect::to("/").into_response();
    };
    let user = &session.user;
    let methods = match portal.gateway.store.mfa_methods(user.id).await {
        Ok(methods) => methods,
        Err(error) => return failure(t, error),
    };
    let setup = if methods.count() == 0 {
        match totp_setup(portal, user).await {
            Ok(setup) => setup,
            Err(error) => return failure(t, error),
        }
    } else {
        None
    };
    pages::render(
        StatusCode::OK,
        &MfaPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            nav: false,
            first: methods.count() == 0,
            setup,
            passkeys: methods.passkeys > 0,
            codes: methods.totp || methods.recovery_codes > 0,
            totp: methods.totp,
            error,
        },
    )
}

/// A TOTP secret being set up for `user` (made now if there is none), as the page shows
/// it; `None` when the user's secret is confirmed already.
pub(super) async fn totp_setup(
    portal: &Portal,
    user: &User,
) -> Result<Option<TotpSetup>, StoreError> {
    let store = &portal.gateway.store;
    let secret = match store.totp(user.id).await? {
        Some(record) if record.confirmed_at.is_some() => return Ok(None),
        Some(record) => record.secret,
        None => {
            let mut bytes = [0u8; 20];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let secret = TotpSecret::Raw(bytes.to_vec()).to_encoded().to_string();
            if !store.begin_totp(user.id, &secret, now()).await? {
                return Ok(None); // confirmed meanwhile, in another tab
            }
            secret
        }
    };
    let Ok(totp) = totp(&secret, &user.login) else {
        return Ok(None);
    };
    let qr_svg = pages::qr_svg(&totp.get_url()).unwrap_or_default();
    Ok(Some(TotpSetup { secret, qr_svg }))
}

/// The TOTP set-up for a user past the second factor; its code goes to `/mfa/verify`.
pub(super) async fn totp_page(
    portal: &Portal,
    browser: &Browser,
    error: Option<&'static str>,
) -> Response {
    let t = browser.t;
    let session = match ready(portal, browser) {
        Ready::Yes(session) => session,
        Ready::NeedsMfa => return Redirect::to("/mfa").into_response(),
        Ready::SignIn => return Redirect::to("/").into_response(),
    };
    let setup = match totp_setup(portal, &session.user).await {
        Ok(Some(setup)) => setup,
        Ok(None) => return Redirect::to("/security").into_response(),
        Err(error) => return failure(t, error),
    };
    pages::render(
        StatusCode::OK,
        &MfaPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            nav: true,
            first: false,
            setup: Some(setup),
            passkeys: false,
            codes: false,
            totp: false,
            error,
        },
    )
}

/// The TOTP of a base32 secret, labelled with the user's login for the authenticator app.
fn totp(secret: &str, login: &str) -> Result<TOTP, ()> {
    let bytes = TotpSecret::Encoded(secret.to_string())
        .to_bytes()
        .map_err(|_| tracing::warn!("portal: a stored TOTP secret is not base32"))?;
    TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        Some("postern".to_string()),
        login.replace(':', "_"),
    )
    .map_err(|error| tracing::warn!(%error, "portal: TOTP"))
}

/// What a posted code may do in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Pass the second factor with a confirmed TOTP secret or a recovery code.
    Verify,
    /// Confirm the TOTP secret being set up as the user's first second factor.
    FirstSetup,
    /// Confirm a TOTP secret being added, past the second factor already.
    Add,
}

/// `POST /mfa/verify`: `code` (TOTP or recovery), `csrf`.
pub async fn verify(State(portal): State<Arc<Portal>>, browser: Browser, body: Bytes) -> Response {
    let t = browser.t;
    let form = Fields::parse(&body);
    if !browser.csrf_ok(form.get("csrf")) {
        return pages::forbidden(t);
    }
    let Some((token_hash, session)) = &browser.session else {
        return (browser.jar, Redirect::to("/")).into_response();
    };
    let user = &session.user;
    let gateway = &portal.gateway;
    let store = &gateway.store;
    let ip = browser.client.ip();
    let typed = Secret::new(form.get("code").unwrap_or("").to_string());
    let (methods, record) = match (store.mfa_methods(user.id).await, store.totp(user.id).await) {
        (Ok(methods), Ok(record)) => (methods, record),
        (Err(error), _) | (_, Err(error)) => return failure(t, error),
    };
    let purpose = match (&record, methods.count()) {
        (Some(record), 0) if record.confirmed_at.is_none() => Purpose::FirstSetup,
        (Some(record), _) if record.confirmed_at.is_none() && session.mfa_at.is_some() => {
            Purpose::Add
        }
        (_, 0) => return (browser.jar, Redirect::to("/mfa")).into_response(),
        _ => Purpose::Verify,
    };
    let blocked = gateway
        .penalties
        .blocked_for(ip, &user.login)
        .await
        .is_some();
    let passed = if blocked {
        false
    } else {
        let secret = record.as_ref().map(|record| record.secret.as_str());
        match check(&portal, user, secret, &typed, purpose, &methods).await {
            Ok(passed) => passed,
            Err(error) => return failure(t, error),
        }
    };
    let method = if is_totp_code(&typed) {
        "totp"
    } else {
        "recovery"
    };
    let result = if passed { "ok" } else { "refused" };
    gateway
        .metrics
        .portal_mfa
        .with_label_values(&[method, result])
        .inc();
    portal.audit(
        &browser,
        "portal_mfa",
        &user.login,
        result,
        Some(format!("method={method}")),
    );
    if !passed {
        let digest = gateway.verifier.lookup_key().cache_key(&user.login, &typed);
        let delay = gateway.penalties.failed(ip, &user.login, digest).await;
        tokio::time::sleep(delay).await;
        tracing::warn!(login = ?user.login, client_ip = %ip, "portal: second factor refused");
        let response = if purpose == Purpose::Add {
            totp_page(&portal, &browser, Some(t.code_refused)).await
        } else {
            page_with(&portal, &browser, Some(t.code_refused)).await
        };
        return (browser.jar, response).into_response();
    }
    gateway.penalties.succeeded(ip, &user.login).await;
    if purpose != Purpose::Add {
        if let Err(error) = store.portal_mfa_passed(token_hash, now()).await {
            return failure(t, error);
        }
    }
    if purpose == Purpose::Verify {
        return (browser.jar, Redirect::to("/app-passwords")).into_response();
    }
    // A TOTP secret set up just now.
    portal.audit(
        &browser,
        "mfa_added",
        &user.login,
        "ok",
        Some("method=totp".into()),
    );
    let change = Change::Mfa {
        what: t.mfa_totp_added,
        name: None,
    };
    notify::send(&portal, user, &browser, change);
    if purpose == Purpose::Add {
        return (browser.jar, Redirect::to("/security")).into_response();
    }
    let response = recovery_codes(&portal, &browser, user).await;
    (browser.jar, response).into_response()
}

/// A TOTP code of the current step or one either side, not used before, for the secret
/// the purpose allows; or, to verify, an unused recovery code.
async fn check(
    portal: &Portal,
    user: &User,
    secret: Option<&str>,
    typed: &Secret<String>,
    purpose: Purpose,
    methods: &MfaMethods,
) -> Result<bool, StoreError> {
    let store = &portal.gateway.store;
    if is_totp_code(typed) {
        let confirmed_ok = purpose != Purpose::Verify || methods.totp;
        let (Some(secret), true) = (secret, confirmed_ok) else {
            return Ok(false);
        };
        let digits: String = typed
            .expose()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let Ok(totp) = totp(secret, &user.login) else {
            return Ok(false);
        };
        let at = now().max(0) as u64;
        for step in [at / 30, (at / 30).saturating_sub(1), at / 30 + 1] {
            let expected = totp.generate(step * 30);
            if bool::from(expected.as_bytes().ct_eq(digits.as_bytes())) {
                return store.use_totp_step(user.id, step as i64, now()).await;
            }
        }
        return Ok(false);
    }
    if purpose != Purpose::Verify {
        return Ok(false);
    }
    let Some(code) = password::normalize(typed.expose()) else {
        return Ok(false);
    };
    let digest = hex(&portal
        .gateway
        .verifier
        .lookup_key()
        .cache_key(&user.login, &code));
    store.use_recovery_code(user.id, &digest, now()).await
}

/// Makes the user ten new recovery codes (the old ones stop working) and shows them, this
/// once.
pub(super) async fn recovery_codes(portal: &Portal, browser: &Browser, user: &User) -> Response {
    let t = browser.t;
    let codes: Vec<Secret<String>> = (0..RECOVERY_CODES).map(|_| password::generate()).collect();
    let key = portal.gateway.verifier.lookup_key();
    let digests: Vec<String> = codes
        .iter()
        .filter_map(|code| password::normalize(code.expose()))
        .map(|code| hex(&key.cache_key(&user.login, &code)))
        .collect();
    if let Err(error) = portal
        .gateway
        .store
        .replace_recovery_codes(user.id, &digests)
        .await
    {
        return failure(t, error);
    }
    pages::render(
        StatusCode::OK,
        &RecoveryPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            nav: false,
            codes: codes.iter().map(|code| code.expose().clone()).collect(),
        },
    )
}

/// Six digits (spaces aside): a TOTP code; anything else is taken as a recovery code.
fn is_totp_code(typed: &Secret<String>) -> bool {
    let digits: Vec<u8> = typed
        .expose()
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    digits.len() == 6 && digits.iter().all(u8::is_ascii_digit)
}

fn failure(t: &'static super::i18n::Messages, error: StoreError) -> Response {
    tracing::warn!(%error, "portal: store");
    pages::failure(t)
}
