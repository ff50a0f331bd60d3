//! The self-service portal: an HTTPS listener in the same binary, on the `[tls]`
//! certificate, where users sign in with their primary password ([`sign_in`]), set up and
//! pass a second factor ([`mfa`]), and create, see and revoke their own app passwords
//! ([`app_passwords`]) through the same account use cases as the CLI. Pages are rendered
//! on the server ([`pages`]) in English or Japanese ([`i18n`]); [`browser`] says who a
//! request comes from (session cookie, CSRF token, language).
//!
//! Passkeys are [`passkeys`]; the user's sign-in methods are managed on [`security`];
//! [`access`] says what a request may do; [`notify`] mails the user about changes.
//!
//! Routes: `GET /`, `POST /sign-in`, `GET /mfa`, `POST /mfa/verify`,
//! `POST /mfa/passkeys/{register,sign-in}/{start,finish}`, `GET /security`,
//! `GET /security/totp`, `POST /security/totp/remove`, `POST /security/passkeys/{id}/remove`,
//! `POST /security/recovery-codes`, `GET /app-passwords`,
//! `POST /app-passwords`, `POST /app-passwords/{id}/revoke`,
//! `POST /app-passwords/revoke-all`, `POST /sign-out`; a device is set up in one step from
//! [`device`]: Thunderbird's autoconfig and Outlook's autodiscover, and from [`profile`]:
//! an Apple configuration profile behind a single-use link (`GET /device/{token}`).

pub mod access;
pub mod app_passwords;
pub mod browser;
pub mod device;
pub mod i18n;
pub mod mfa;
pub mod notify;
pub mod oidc;
pub mod pages;
pub mod passkeys;
pub mod profile;
pub mod scim;
pub mod security;
pub mod sign_in;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::accounts::{Accounts, AdminError};
use crate::config::PortalConfig;
use crate::gateway::Gateway;

/// Longest form a browser may post.
const MAX_FORM: usize = 16 * 1024;

/// What every portal request shares.
pub struct Portal {
    pub gateway: Arc<Gateway>,
    pub config: PortalConfig,
    pub accounts: Accounts,
    /// The passkey relying party of `public_url`.
    pub webauthn: webauthn_rs::Webauthn,
    /// The LDAP directory of `sign_in = "ldap"`.
    pub directory: Option<Arc<crate::directory::ldap::Directory>>,
    /// People without a postern user get one at their first sign-in.
    pub provision: bool,
    /// The OpenID provider's HTTP client, with `sign_in = "oidc"`.
    pub oidc_http: Option<reqwest::Client>,
    /// SCIM provisioning, when `[scim]` is configured.
    pub scim: Option<crate::config::ScimConfig>,
}

/// Why the portal cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error(transparent)]
    Accounts(#[from] AdminError),
    #[error("{0}")]
    Config(String),
}

/// The client's address, as the connection's task saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Portal {
    /// The portal over `gateway`'s services.
    pub async fn new(
        gateway: Arc<Gateway>,
        config: PortalConfig,
        directory: &crate::config::DirectoryConfig,
        scim: Option<crate::config::ScimConfig>,
    ) -> Result<Arc<Self>, PortalError> {
        let webauthn = passkeys::relying_party(&config).map_err(PortalError::Config)?;
        let ldap = config
            .ldap
            .as_ref()
            .map(|ldap| crate::directory::ldap::Directory::new(ldap).map(Arc::new))
            .transpose()
            .map_err(PortalError::Config)?;
        let oidc_http = config
            .oidc
            .as_ref()
            .map(oidc::http_client)
            .transpose()
            .map_err(PortalError::Config)?;
        let accounts = Accounts::new(
            gateway.store.clone(),
            gateway.verifier.hasher().clone(),
            gateway.max_app_passwords,
        )
        .await?;
        Ok(Arc::new(Self {
            gateway,
            config,
            accounts,
            webauthn,
            directory: ldap,
            provision: directory.provision,
            oidc_http,
            scim,
        }))
    }

    /// Records what `browser` did as `login` in the audit trail, with its address and
    /// browser.
    pub fn audit(
        &self,
        browser: &browser::Browser,
        kind: &'static str,
        login: &str,
        result: &'static str,
        detail: Option<String>,
    ) {
        self.gateway.audit.record(crate::ops::audit::Event {
            at: crate::clock::now(),
            kind,
            login: login.to_string(),
            app_password_id: None,
            protocol: None,
            client_ip: Some(browser.client.ip().to_string()),
            client_id: browser.agent.clone(),
            result: Some(result),
            detail,
        });
    }

    /// Every route.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(app_passwords::home))
            .route("/sign-in", post(sign_in::sign_in))
            .route("/sign-out", post(sign_in::sign_out))
            .route("/oidc/start", get(oidc::start))
            .route("/oidc/callback", get(oidc::callback))
            .route("/scim/v2/Users", get(scim::list).post(scim::create))
            .route(
                "/scim/v2/Users/{id}",
                get(scim::get)
                    .patch(scim::patch)
                    .put(scim::put)
                    .delete(scim::delete),
            )
            .route("/mfa", get(mfa::page))
            .route("/mfa/verify", post(mfa::verify))
            .route(
                "/mfa/passkeys/register/start",
                post(passkeys::register_start),
            )
            .route(
                "/mfa/passkeys/register/finish",
                post(passkeys::register_finish),
            )
            .route("/mfa/passkeys/sign-in/start", post(passkeys::sign_in_start))
            .route(
                "/mfa/passkeys/sign-in/finish",
                post(passkeys::sign_in_finish),
            )
            .route("/security", get(security::show))
            .route("/security/totp", get(security::add_totp))
            .route("/security/totp/remove", post(security::remove_totp))
            .route(
                "/security/passkeys/{id}/remove",
                post(security::remove_passkey),
            )
            .route(
                "/security/recovery-codes",
                post(security::renew_recovery_codes),
            )
            .route(
                "/app-passwords",
                get(app_passwords::list).post(app_passwords::create),
            )
            .route("/app-passwords/revoke-all", post(app_passwords::revoke_all))
            .route("/app-passwords/{id}/revoke", post(app_passwords::revoke))
            .route(
                "/.well-known/autoconfig/mail/config-v1.1.xml",
                get(device::autoconfig),
            )
            .route("/mail/config-v1.1.xml", get(device::autoconfig))
            .route("/device/{token}", get(profile::fetch))
            .route("/autodiscover/autodiscover.xml", post(device::autodiscover))
            .route("/Autodiscover/Autodiscover.xml", post(device::autodiscover))
            .route("/static/portal.css", get(pages::stylesheet))
            .route("/static/copy.js", get(pages::script))
            .route("/static/passkey.js", get(pages::passkey_script))
            .fallback(pages::not_found)
            .method_not_allowed_fallback(pages::not_a_page)
            .layer(axum::middleware::map_response(pages::security_headers))
            .layer(DefaultBodyLimit::max(MAX_FORM))
            .with_state(self.clone())
    }
}

/// Accepts browsers until the gateway drains; each connection's TLS handshake and HTTP
/// run in a task of its own, under `tasks`.
pub async fn serve(portal: Arc<Portal>, listener: TcpListener, tasks: TaskTracker) {
    let router = portal.router();
    let drain = portal.gateway.drain.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            () = drain.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "portal: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tasks.spawn(connection(portal.clone(), router.clone(), tcp, peer));
    }
}

/// One browser connection: TLS, then HTTP/1.1 until it closes or the gateway stops.
async fn connection(portal: Arc<Portal>, router: Router, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let gateway = &portal.gateway;
    let stream = match gateway.accept_tls(tcp).await {
        Ok(stream) => stream,
        Err(why) => {
            tracing::debug!(client = %peer, reason = why, "portal connection dropped");
            return;
        }
    };
    let service = TowerToHyperService::new(router.layer(Extension(ClientAddr(peer))));
    let http = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(gateway.limits.preauth_idle_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut http = std::pin::pin!(http);
    tokio::select! {
        result = http.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(client = %peer, %error, "portal connection ended");
            }
        }
        () = gateway.drain.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(gateway.shutdown_grace, http).await;
        }
    }
}
