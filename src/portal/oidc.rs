//! Signing in through the organisation's OpenID Connect provider (`sign_in = "oidc"`), by
//! the authorization code flow with PKCE (openidconnect). `GET /oidc/start` sends the
//! browser to the provider with a fresh state, nonce and PKCE challenge, kept in the store
//! and bound to this browser; `GET /oidc/callback` takes them once, exchanges the code,
//! and verifies the ID token against the provider's keys (discovery is read at each step,
//! so rotated keys are picked up), its issuer, audience, expiry and nonce. The login comes
//! from `login_claim`; a person without a postern user gets one (unless provisioning is
//! off). An ID token whose `amr` says `mfa` passes postern's second factor too; without
//! it, postern's own MFA applies.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use super::app_passwords::sign_in_page;
use super::browser::Browser;
use super::pages::{self, ContinuePage};
use super::token::token_hash;
use super::Portal;
use crate::auth::Secret;
use crate::clock::now;
use crate::config::OidcConfig;
use crate::directory::Person;
use crate::store::OidcLogin;

/// Where people come from: provisioned users are marked so.
pub const SOURCE: &str = "oidc";

/// The provider's HTTP client: TLS verified (system roots or `ca_file`), no redirects.
pub fn http_client(config: &OidcConfig) -> Result<reqwest::Client, String> {
    crate::tls::https_client(config.ca_file.as_deref(), config.timeout)
        .map_err(|error| format!("[portal.oidc] TLS: {error}"))
}

/// What went wrong with a sign-in: the provider unreachable (try later), or a sign-in
/// that does not hold (refused).
enum Failure {
    Unavailable(String),
    Refused(String),
}

/// `GET /oidc/start`: to the provider.
pub async fn start(State(portal): State<Arc<Portal>>, mut browser: Browser) -> Response {
    let t = browser.t;
    let binding = browser.begin_oidc();
    match redirect(&portal, binding).await {
        Ok(url) => (browser.jar, Redirect::to(&url)).into_response(),
        Err(why) => {
            tracing::warn!(reason = %why, "portal: the OpenID provider cannot be reached");
            let page = sign_in_page(&portal, &browser, None, Some(t.try_later));
            (browser.jar, page).into_response()
        }
    }
}

async fn redirect(portal: &Portal, binding: String) -> Result<String, String> {
    let (config, http) = provider(portal)?;
    let client = client(portal, config, http).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let login = OidcLogin {
        state_hash: token_hash(state.secret()),
        browser_hash: binding,
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
    };
    portal
        .gateway
        .store
        .begin_oidc_login(&login, now())
        .await
        .map_err(|error| format!("the store: {error}"))?;
    Ok(url.to_string())
}

#[derive(serde::Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oidc/callback?code&state`: back from the provider.
pub async fn callback(
    State(portal): State<Arc<Portal>>,
    mut browser: Browser,
    Query(query): Query<Callback>,
) -> Response {
    let t = browser.t;
    let binding = browser.take_oidc();
    let person = match finish(&portal, binding, query).await {
        Ok(person) => person,
        Err(Failure::Unavailable(why)) => {
            tracing::warn!(reason = %why, "portal: the OpenID provider cannot be reached");
            super::sign_in::record(&portal, "", &browser, "upstream_unavailable");
            let page = sign_in_page(&portal, &browser, None, Some(t.try_later));
            return (browser.jar, page).into_response();
        }
        Err(Failure::Refused(why)) => {
            tracing::warn!(reason = %why, "portal: an OpenID sign-in was refused");
            super::sign_in::record(&portal, "", &browser, "refused");
            let page = sign_in_page(&portal, &browser, None, Some(t.sign_in_refused));
            return (browser.jar, page).into_response();
        }
    };
    let (person, mfa) = person;
    let user = match super::sign_in::known_or_provisioned(&portal, &person, SOURCE).await {
        Ok(Some(user)) if user.disabled_at.is_none() => user,
        Ok(_) => {
            super::sign_in::record(&portal, &person.login, &browser, "disabled");
            let page = sign_in_page(&portal, &browser, None, Some(t.sign_in_refused));
            return (browser.jar, page).into_response();
        }
        Err(()) => return (browser.jar, pages::failure(t)).into_response(),
    };
    match super::sign_in::begin_session(&portal, &mut browser, &user, mfa).await {
        Ok(next) => {
            super::sign_in::record(&portal, &user.login, &browser, "ok");
            // Not a redirect: this answer ends a navigation that began at the provider, so
            // a redirect would still be cross-site and carry no SameSite=Strict session
            // cookie. The page's own refresh is a navigation from postern.
            let page = pages::render(
                StatusCode::OK,
                &ContinuePage {
                    t,
                    csrf: "",
                    signed_in: false,
                    nav: false,
                    next,
                },
            );
            (browser.jar, page).into_response()
        }
        Err(()) => (browser.jar, pages::failure(t)).into_response(),
    }
}

/// The person the provider vouches for, and whether it did the MFA.
async fn finish(
    portal: &Portal,
    binding: Option<String>,
    query: Callback,
) -> Result<(Person, bool), Failure> {
    if let Some(error) = query.error {
        let error: String = error
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        return Err(Failure::Refused(format!("the provider answered {error}")));
    }
    let (Some(code), Some(state)) = (query.code, query.state) else {
        return Err(Failure::Refused("no code or state".into()));
    };
    let login = portal
        .gateway
        .store
        .take_oidc_login(&token_hash(&state), now())
        .await
        .map_err(|error| Failure::Unavailable(format!("the store: {error}")))?
        .ok_or_else(|| Failure::Refused("an unknown or spent state".into()))?;
    if binding.as_deref() != Some(login.browser_hash.as_str()) {
        return Err(Failure::Refused("another browser's sign-in".into()));
    }
    let (config, http) = provider(portal).map_err(Failure::Unavailable)?;
    let client = client(portal, config, http)
        .await
        .map_err(Failure::Unavailable)?;
    let exchange = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|error| Failure::Unavailable(error.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(login.verifier));
    let tokens = exchange.request_async(http).await.map_err(|error| {
        use openidconnect::RequestTokenError;
        match error {
            RequestTokenError::ServerResponse(answer) => {
                Failure::Refused(format!("the token endpoint said {}", answer.error()))
            }
            other => Failure::Unavailable(other.to_string()),
        }
    })?;
    let _ = tokens.access_token();
    let id_token = tokens
        .id_token()
        .ok_or_else(|| Failure::Refused("no ID token".into()))?;
    let verifier = client.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &Nonce::new(login.nonce))
        .map_err(|error| Failure::Refused(format!("the ID token: {error}")))?;
    let person = person(config, claims)
        .ok_or_else(|| Failure::Refused(format!("no {} claim", config.login_claim)))?;
    let mfa = claims
        .auth_method_refs()
        .is_some_and(|amr| amr.iter().any(|method| method.as_str() == "mfa"));
    Ok((person, mfa))
}

/// The configuration and HTTP client, when the portal signs in with OIDC.
fn provider(portal: &Portal) -> Result<(&OidcConfig, &reqwest::Client), String> {
    match (&portal.config.oidc, &portal.oidc_http) {
        (Some(config), Some(http)) => Ok((config, http)),
        _ => Err("there is no [portal.oidc] section".into()),
    }
}

/// A client from the provider's discovery document, as it is now.
async fn client(
    portal: &Portal,
    config: &OidcConfig,
    http: &reqwest::Client,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    String,
> {
    let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|error| error.to_string())?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|error| format!("discovery: {error}"))?;
    let secret = std::fs::read_to_string(&config.client_secret_file)
        .map(|text| Secret::new(text.lines().next().unwrap_or("").to_string()))
        .map_err(|error| {
            format!(
                "cannot read {}: {error}",
                config.client_secret_file.display()
            )
        })?;
    let redirect = RedirectUrl::new(format!(
        "{}/oidc/callback",
        portal.config.public_url.trim_end_matches('/')
    ))
    .map_err(|error| error.to_string())?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(config.client_id.clone()),
        Some(ClientSecret::new(secret.expose().clone())),
    )
    .set_redirect_uri(redirect))
}

/// The person an ID token describes: the login from `login_claim` (`email`,
/// `preferred_username` or `sub`), the upstream identity from `upstream_claim` (the
/// login when unset), the address from `email`.
fn person(config: &OidcConfig, claims: &CoreIdTokenClaims) -> Option<Person> {
    let claim = |name: &str| -> Option<String> {
        match name {
            "email" => claims.email().map(|email| email.as_str().to_string()),
            "preferred_username" => claims
                .preferred_username()
                .map(|name| name.as_str().to_string()),
            "sub" => Some(claims.subject().as_str().to_string()),
            _ => None,
        }
        .filter(|value| !value.is_empty() && !value.contains(char::is_control))
    };
    let login = claim(&config.login_claim)?.to_lowercase();
    let upstream_user = config
        .upstream_claim
        .as_deref()
        .and_then(claim)
        .unwrap_or_else(|| login.clone());
    let addresses = claim("email")
        .filter(|email| email.contains('@'))
        .map(|email| vec![email.to_lowercase()])
        .unwrap_or_default();
    Some(Person {
        login,
        upstream_user,
        addresses,
        disabled: false,
    })
}
