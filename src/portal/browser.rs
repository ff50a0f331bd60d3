//! Who a portal request comes from: the session cookie (its token is random; the store
//! keeps only its SHA-256), the CSRF token its forms must carry (the session's, or before
//! sign-in a double-submit cookie), the client's address, and the language (a `?lang=`
//! switch, the `postern_lang` cookie, or Accept-Language).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use subtle::ConstantTimeEq;

use super::i18n::{self, Messages};
use super::token::{random_token, token_hash};
use super::{ClientAddr, Portal};
use crate::clock::now;
use crate::store::PortalSession;

/// The session cookie: `__Host-` keeps it to this origin, HTTPS only, path `/`.
pub const SESSION_COOKIE: &str = "__Host-postern";
/// The CSRF token of a browser that has not signed in (double submit).
const ANONYMOUS_CSRF_COOKIE: &str = "__Host-postern-csrf";
/// The language chosen with the switch.
const LANG_COOKIE: &str = "postern_lang";
/// Binds an OpenID sign-in to the browser that started it. `SameSite=Lax`: the provider
/// sends the browser back with a cross-site navigation, which carries no Strict cookie.
const OIDC_COOKIE: &str = "__Host-postern-oidc";

/// A request's browser.
pub struct Browser {
    pub t: &'static Messages,
    /// Cookies to send back with the response (language, CSRF, session).
    pub jar: CookieJar,
    /// The signed-in session and its token's digest, when there is one.
    pub session: Option<(String, PortalSession)>,
    pub client: std::net::SocketAddr,
    /// The token this browser's forms carry.
    pub csrf: String,
    /// What the browser says it is (User-Agent, at most 200 characters), for the audit
    /// trail.
    pub agent: Option<String>,
}

#[derive(serde::Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

impl FromRequestParts<Arc<Portal>> for Browser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        portal: &Arc<Portal>,
    ) -> Result<Self, Self::Rejection> {
        let mut jar = CookieJar::from_headers(&parts.headers);
        let client = parts
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0)
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let switch = Query::<LangQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.lang)
            .and_then(|lang| i18n::named(&lang));
        let t = match switch {
            Some(t) => {
                jar = jar.add(cookie(LANG_COOKIE, t.lang.to_string(), false));
                t
            }
            None => i18n::negotiate(
                jar.get(LANG_COOKIE).map(|c| c.value()),
                parts
                    .headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok()),
            ),
        };
        let session = match jar.get(SESSION_COOKIE) {
            Some(cookie) => {
                let token_hash = token_hash(cookie.value());
                let idle = portal.config.session_idle.as_secs() as i64;
                match portal
                    .gateway
                    .store
                    .portal_session(&token_hash, now(), idle)
                    .await
                {
                    Ok(Some(session)) => Some((token_hash, session)),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%error, "portal: cannot read the session");
                        return Err(super::pages::failure(t));
                    }
                }
            }
            None => None,
        };
        let csrf = match &session {
            Some((_, session)) => session.csrf.clone(),
            None => match jar.get(ANONYMOUS_CSRF_COOKIE) {
                Some(cookie) if cookie.value().len() >= 32 => cookie.value().to_string(),
                _ => {
                    let token = random_token();
                    jar = jar.add(cookie(ANONYMOUS_CSRF_COOKIE, token.clone(), true));
                    token
                }
            },
        };
        let agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(200).collect());
        Ok(Browser {
            t,
            jar,
            session,
            client,
            csrf,
            agent,
        })
    }
}

impl Browser {
    /// Whether a posted form's `csrf` field is this browser's token.
    pub fn csrf_ok(&self, posted: Option<&str>) -> bool {
        let Some(posted) = posted else { return false };
        posted.as_bytes().ct_eq(self.csrf.as_bytes()).into()
    }

    /// This browser as the actor of an account operation, for its audit event.
    pub fn actor(&self) -> crate::accounts::Actor<'_> {
        crate::accounts::Actor::Portal {
            client_ip: self.client.ip(),
            browser: self.agent.as_deref(),
        }
    }

    /// Signs this browser in: a new session cookie (the caller stores its digest).
    pub fn begin_session(&mut self) -> (String, String) {
        let token = random_token();
        self.jar = std::mem::take(&mut self.jar).add(cookie(SESSION_COOKIE, token.clone(), true));
        (token_hash(&token), random_token())
    }

    /// Starts an OpenID sign-in in this browser: a fresh binding cookie; returns the
    /// digest the store keeps.
    pub fn begin_oidc(&mut self) -> String {
        let token = random_token();
        let cookie = Cookie::build((OIDC_COOKIE, token.clone()))
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Lax)
            .build();
        self.jar = std::mem::take(&mut self.jar).add(cookie);
        token_hash(&token)
    }

    /// The digest of this browser's OpenID binding cookie, which goes now (it serves once).
    pub fn take_oidc(&mut self) -> Option<String> {
        let value = self.jar.get(OIDC_COOKIE)?.value().to_string();
        self.jar = std::mem::take(&mut self.jar).remove(Cookie::build(OIDC_COOKIE).path("/"));
        Some(token_hash(&value))
    }

    /// Signs this browser out: the session cookie goes.
    pub fn end_session(&mut self) {
        self.jar = std::mem::take(&mut self.jar).remove(Cookie::build(SESSION_COOKIE).path("/"));
    }
}

/// A cookie for this origin only, over HTTPS, for scripts only when `http_only` is false
/// (none of ours is read by a script).
fn cookie(name: &'static str, value: String, http_only: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .secure(true)
        .http_only(http_only)
        .same_site(SameSite::Strict)
        .build()
}
