//! The second factor of a password sign-in. TOTP (RFC 6238, 30-second steps, one step of
//! clock drift either way): set up by scanning a QR code or typing the key, confirmed by
//! a first code; a step's code is accepted once. At set-up, ten single-use recovery codes
//! are shown once and stored as keyed digests. Wrong codes earn the sign-in penalties.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Secret as TotpSecret, TOTP};

use super::browser::{hex, Browser};
use super::notify::{self, Change};
use super::pages::{self, Fields, MfaPage, RecoveryPage, TotpSetup};
use super::Portal;
use crate::auth::{password, Secret};
use crate::clock::now;
use crate::store::User;

/// Recovery codes made at set-up.
const RECOVERY_CODES: usize = 10;

/// `GET /mfa`: the set-up (first time) or the verification.
pub async fn page(State(portal): State<Arc<Portal>>, browser: Browser) -> Response {
    let Some((_, session)) = &browser.session else {
        return (browser.jar, Redirect::to("/")).into_response();
    };
    if !portal.config.require_mfa {
        return (browser.jar, Redirect::to("/app-passwords")).into_response();
    }
    let response = mfa_page(&portal, &browser, &session.user, None).await;
    (browser.jar, response).into_response()
}

/// The set-up or verification page, with `error` when a code was refused.
async fn mfa_page(
    portal: &Portal,
    browser: &Browser,
    user: &User,
    error: Option<&'static str>,
) -> Response {
    let t = browser.t;
    let setup = match setup(portal, user).await {
        Ok(setup) => setup,
        Err(()) => return pages::failure(t),
    };
    pages::render(
        StatusCode::OK,
        &MfaPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            setup,
            error,
        },
    )
}

/// The set-up to show: `None` when the user has a confirmed secret; else the one being set
/// up (made now if there is none).
async fn setup(portal: &Portal, user: &User) -> Result<Option<TotpSetup>, ()> {
    let store = &portal.gateway.store;
    let record = store.totp(user.id).await.map_err(log)?;
    let secret = match record {
        Some(record) if record.confirmed_at.is_some() => return Ok(None),
        Some(record) => record.secret,
        None => {
            let mut bytes = [0u8; 20];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let secret = TotpSecret::Raw(bytes.to_vec()).to_encoded().to_string();
            if !store
                .begin_totp(user.id, &secret, now())
                .await
                .map_err(log)?
            {
                return Ok(None); // confirmed meanwhile, in another tab
            }
            secret
        }
    };
    let totp = totp(&secret, &user.login).map_err(|_| ())?;
    let qr_svg = pages::qr_svg(&totp.get_url()).ok_or(())?;
    Ok(Some(TotpSetup { secret, qr_svg }))
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
    let record = match store.totp(user.id).await {
        Ok(Some(record)) => record,
        Ok(None) => return (browser.jar, Redirect::to("/mfa")).into_response(),
        Err(error) => return failure(&browser, error),
    };
    let first_time = record.confirmed_at.is_none();
    let passed = if gateway
        .penalties
        .blocked_for(ip, &user.login)
        .await
        .is_some()
    {
        false
    } else {
        match check(&portal, user, &record.secret, &typed, first_time).await {
            Ok(passed) => passed,
            Err(error) => return failure(&browser, error),
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
        let response = mfa_page(&portal, &browser, user, Some(t.code_refused)).await;
        return (browser.jar, response).into_response();
    }
    gateway.penalties.succeeded(ip, &user.login).await;
    if let Err(error) = store.portal_mfa_passed(token_hash, now()).await {
        return failure(&browser, error);
    }
    if !first_time {
        return (browser.jar, Redirect::to("/app-passwords")).into_response();
    }
    // Set up just now: the recovery codes, shown this once.
    let codes: Vec<Secret<String>> = (0..RECOVERY_CODES).map(|_| password::generate()).collect();
    let key = gateway.verifier.lookup_key();
    let digests: Vec<String> = codes
        .iter()
        .filter_map(|code| password::normalize(code.expose()))
        .map(|code| hex(&key.cache_key(&user.login, &code)))
        .collect();
    if let Err(error) = store.replace_recovery_codes(user.id, &digests).await {
        return failure(&browser, error);
    }
    let change = Change::Mfa {
        what: t.mfa_totp_added,
        name: None,
    };
    portal.audit(
        &browser,
        "mfa_added",
        &user.login,
        "ok",
        Some("method=totp".into()),
    );
    notify::send(&portal, user, &browser, change);
    let response = pages::render(
        StatusCode::OK,
        &RecoveryPage {
            t,
            csrf: &browser.csrf,
            signed_in: true,
            codes: codes.iter().map(|code| code.expose().clone()).collect(),
        },
    );
    (browser.jar, response).into_response()
}

/// A TOTP code of the current step or one either side, not used before; or, once TOTP is
/// set up, an unused recovery code.
async fn check(
    portal: &Portal,
    user: &User,
    secret: &str,
    typed: &Secret<String>,
    first_time: bool,
) -> Result<bool, crate::store::StoreError> {
    let store = &portal.gateway.store;
    if is_totp_code(typed) {
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
    if first_time {
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

/// Six digits (spaces aside): a TOTP code; anything else is taken as a recovery code.
fn is_totp_code(typed: &Secret<String>) -> bool {
    let digits: Vec<u8> = typed
        .expose()
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    digits.len() == 6 && digits.iter().all(u8::is_ascii_digit)
}

fn log(error: crate::store::StoreError) {
    tracing::warn!(%error, "portal: store");
}

fn failure(browser: &Browser, error: crate::store::StoreError) -> Response {
    log(error);
    pages::failure(browser.t)
}
