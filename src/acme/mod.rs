//! Certificates from an ACME CA (RFC 8555), obtained and renewed by postern itself with
//! instant-acme: an account kept in the store, an order per set of `[tls.acme] domains`,
//! TLS-ALPN-01 challenges answered on postern's TLS ports by the ordering instance
//! (`crate::tls::alpn_challenge`) or HTTP-01 challenges answered by every instance from the
//! store ([`challenge`]), and the certificate kept in the store and served by every
//! instance, swapped in live.
//!
//! A certificate is renewed a third of its lifetime before it expires (a 90-day one 30
//! days ahead). With PostgreSQL one instance orders at a time (an advisory lock); the
//! others serve what it stores, woken by its announcement. A failed order keeps the
//! current certificate, is logged, and is tried again after `retry_after`.

pub mod challenge;
mod http;

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sqlx::postgres::PgListener;
use tokio::time::Instant;

use crate::clock::now;
use crate::config::AcmeConfig;
use crate::gateway::Gateway;
use crate::store::{Store, StoreError, StoredCertificate};
use crate::tls::alpn_challenge::Challenges;
use crate::tls::{self, Issued, TlsError};

/// How long one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an order may take to become ready, and its certificate to be issued.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the store is read again when nothing announces a change.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// The settings row holding the account for a directory URL.
const ACCOUNT_SETTING: &str = "acme_account ";

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("the ACME server refused: {0}")]
    Refused(String),
    #[error("the certificate: {0}")]
    Certificate(String),
}

/// Keeps the certificate for `config.domains` obtained, renewed and served, until
/// `shutdown` completes.
pub async fn run(
    gateway: Arc<Gateway>,
    config: AcmeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let store = gateway.store.clone();
    let name = config.name();
    let mut served: Option<StoredCertificate> = None;
    let mut retry_at: Option<Instant> = None;
    let mut announcements = listen(&store).await;
    loop {
        // Serve what the store has, if it is new.
        match store.certificate(&name).await {
            Ok(Some(stored)) if served.as_ref() != Some(&stored) => {
                match serve(&gateway, &stored) {
                    Ok(()) => {
                        tracing::info!(domains = %name, not_after = %date(stored.not_after), "serving the ACME certificate");
                        served = Some(stored);
                    }
                    Err(error) => {
                        tracing::error!(%error, "the stored ACME certificate cannot be served")
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read the ACME certificate from the store"),
        }
        let renew_at = served.as_ref().map(renewal_time);
        let due = renew_at.is_none_or(|at| at <= now());
        if due && retry_at.is_none_or(|at| at <= Instant::now()) {
            match order_once(&gateway, &config, &store).await {
                Ok(true) => {
                    retry_at = None;
                    continue;
                }
                Ok(false) => {}
                Err(error) => {
                    gateway
                        .metrics
                        .acme_orders
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%error, domains = %name, retry_in = ?config.retry_after, "ACME order failed; keeping the current certificate");
                    retry_at = Some(Instant::now() + config.retry_after);
                }
            }
        }
        // Wait for the renewal time, the retry, an announcement or the next check.
        let mut wait = CHECK_EVERY;
        if let Some(at) = renew_at.filter(|&at| at > now()) {
            wait = wait.min(Duration::from_secs((at - now()) as u64));
        }
        if let Some(at) = retry_at {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
            lost = announced(&mut announcements) => if lost {
                announcements = listen(&store).await;
            },
        }
    }
}

/// Orders if this instance may (the lock) and the certificate is still due; `true` when a
/// new certificate was stored.
async fn order_once(
    gateway: &Gateway,
    config: &AcmeConfig,
    store: &Store,
) -> Result<bool, AcmeError> {
    let Some(lock) = store.try_lock_orders().await? else {
        tracing::debug!("another instance is ordering the ACME certificate");
        return Ok(false);
    };
    // Another instance may have renewed while this one waited for the lock.
    let fresh = store.certificate(&config.name()).await?;
    let result = if fresh.as_ref().is_some_and(|c| renewal_time(c) > now()) {
        Ok(false)
    } else {
        let alpn = gateway
            .alpn_challenges
            .as_ref()
            .map(|(challenges, _)| &**challenges);
        let ordered = order(config, store, alpn).await;
        if let Some(challenges) = alpn {
            challenges.clear();
        }
        match ordered {
            Ok(certificate) => {
                store.put_certificate(&config.name(), &certificate).await?;
                gateway
                    .metrics
                    .acme_orders
                    .with_label_values(&["obtained"])
                    .inc();
                tracing::info!(domains = %config.name(), not_after = %date(certificate.not_after), "ACME certificate obtained");
                Ok(true)
            }
            Err(error) => Err(error),
        }
    };
    if let Err(error) = store.clear_acme_challenges().await {
        tracing::debug!(%error, "cannot clear the ACME challenges");
    }
    lock.release().await;
    result
}

/// One order, from the account to the issued chain. The challenges are answered on the
/// TLS ports when `alpn` is given (TLS-ALPN-01), else through the store (HTTP-01).
async fn order(
    config: &AcmeConfig,
    store: &Store,
    alpn: Option<&Challenges>,
) -> Result<StoredCertificate, AcmeError> {
    let account = account(config, store).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|domain| Identifier::Dns(domain.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Refused(format!("an authorization is {other:?}"))),
        }
        let (kind, name) = match alpn {
            Some(_) => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
            None => (ChallengeType::Http01, "http-01"),
        };
        let domain = match &authorization.identifier().identifier {
            Identifier::Dns(domain) => domain.clone(),
            other => return Err(AcmeError::Refused(format!("an identifier {other:?}"))),
        };
        let mut challenge = authorization
            .challenge(kind)
            .ok_or_else(|| AcmeError::Refused(format!("no {name} challenge offered")))?;
        let key_authorization = challenge.key_authorization();
        match alpn {
            Some(challenges) => challenges.add(&domain, key_authorization.digest().as_ref())?,
            None => {
                store
                    .put_acme_challenge(&challenge.token, key_authorization.as_str(), now())
                    .await?
            }
        }
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Refused(format!("the order is {status:?}")));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let request = rcgen::CertificateParams::new(config.domains.clone())
        .and_then(|params| params.serialize_request(&key))
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    order.finalize_csr(request.der()).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    let (not_before, not_after) = validity(&chain_pem)?;
    Ok(StoredCertificate {
        chain_pem,
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
    })
}

/// The account for the directory: from the store, or created (and stored) the first time.
async fn account(config: &AcmeConfig, store: &Store) -> Result<Account, AcmeError> {
    let client = tls::https_client(config.ca_file.as_deref(), REQUEST_TIMEOUT)?;
    let builder = Account::builder_with_http(Box::new(http::Https(client)));
    let setting = format!("{ACCOUNT_SETTING}{}", config.directory_url);
    if let Some(saved) = store.setting(&setting).await? {
        let credentials: AccountCredentials = serde_json::from_str(&saved)
            .map_err(|e| AcmeError::Certificate(format!("the stored account: {e}")))?;
        return Ok(builder.from_credentials(credentials).await?);
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory_url.clone(),
            None,
        )
        .await?;
    let saved = serde_json::to_string(&credentials)
        .map_err(|e| AcmeError::Certificate(format!("the account: {e}")))?;
    store.put_setting(&setting, &saved).await?;
    tracing::info!(directory = %config.directory_url, "ACME account created");
    Ok(account)
}

/// Swaps the stored certificate in for new connections.
fn serve(gateway: &Gateway, stored: &StoredCertificate) -> Result<(), TlsError> {
    gateway.install_certificate(Issued::from_pem(&stored.chain_pem, &stored.key_pem)?)?;
    gateway
        .metrics
        .acme_certificate_not_after
        .set(stored.not_after);
    Ok(())
}

/// When to renew: a third of the lifetime before the end.
fn renewal_time(certificate: &StoredCertificate) -> i64 {
    let lifetime = (certificate.not_after - certificate.not_before).max(0);
    certificate.not_after - lifetime / 3
}

/// The leaf's validity (unix seconds).
fn validity(chain_pem: &str) -> Result<(i64, i64), AcmeError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| AcmeError::Certificate(format!("not PEM: {e}")))?;
    let certificate = pem
        .parse_x509()
        .map_err(|e| AcmeError::Certificate(format!("not X.509: {e}")))?;
    let validity = certificate.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// A date for the log.
fn date(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

async fn listen(store: &Store) -> Option<PgListener> {
    match store.listen_for_certificates().await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::debug!(%error, "cannot listen for certificate announcements yet");
            None
        }
    }
}

/// Waits for an announcement; `true` when the connection was lost. Never, without one.
async fn announced(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => !matches!(listener.try_recv().await, Ok(Some(_))),
        None => std::future::pending().await,
    }
}
