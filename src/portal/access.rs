//! What a portal request may do: see pages once signed in and past the second factor,
//! post forms with the session's CSRF token, and change what matters (create an app
//! password, add or remove a second factor) only within [`RECENT`] seconds of signing in.

use axum::response::{IntoResponse, Redirect, Response};

use super::browser::Browser;
use super::pages::{self, Fields};
use super::Portal;
use crate::clock::now;
use crate::store::PortalSession;

/// How recent the sign-in (password and second factor) must be for a change that matters.
pub const RECENT: i64 = 10 * 60;

/// Whether the browser may see the pages of a signed-in user.
pub enum Ready<'b> {
    Yes(&'b PortalSession),
    NeedsMfa,
    SignIn,
}

pub fn ready<'b>(portal: &Portal, browser: &'b Browser) -> Ready<'b> {
    match &browser.session {
        None => Ready::SignIn,
        Some((_, session)) if portal.config.require_mfa && session.mfa_at.is_none() => {
            Ready::NeedsMfa
        }
        Some((_, session)) => Ready::Yes(session),
    }
}

/// The session a posted form acts for: the right CSRF token, signed in and past the
/// second factor; else the answer to give instead.
#[allow(clippy::result_large_err)] // the error is the page itself, answered at once
pub fn acting<'b>(
    portal: &Portal,
    browser: &'b Browser,
    form: &Fields,
) -> Result<&'b PortalSession, Response> {
    if !browser.csrf_ok(form.get("csrf")) {
        return Err(pages::forbidden(browser.t));
    }
    match ready(portal, browser) {
        Ready::Yes(session) => Ok(session),
        Ready::NeedsMfa => Err(Redirect::to("/mfa").into_response()),
        Ready::SignIn => Err(Redirect::to("/").into_response()),
    }
}

/// Whether the session signed in (and passed the second factor, when required) within
/// the last [`RECENT`] seconds.
pub fn recent(portal: &Portal, session: &PortalSession) -> bool {
    let at = now();
    at - session.password_at <= RECENT
        && (!portal.config.require_mfa || session.mfa_at.is_some_and(|mfa| at - mfa <= RECENT))
}
