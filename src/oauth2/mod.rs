//! OAuth 2.0 tokens postern obtains itself for upstreams that refuse passwords (Microsoft
//! 365, Google Workspace), for every user at once while users keep typing app passwords.
//!
//! - One [`Tokens`] per gateway: the `[oauth2.NAME]` providers ([`provider`]) and a cache
//!   of tokens per (provider, subject). The subject is empty for a client-credentials
//!   token (one serves every mailbox) and the user's upstream identity for a JWT bearer
//!   token (one per user).
//! - A token is fetched on first need; however many logins wait for the same key, one
//!   request goes out (moka's `try_get_with`). It leaves the cache `renew_before` ahead of
//!   its expiry (at most half its lifetime), so the next login fetches a fresh one; when
//!   the upstream refuses a token, [`Tokens::forget`] drops it and the login fetches once
//!   more.
//! - Failures of the identity provider are [`TokenError`]s, which upstream logins report
//!   as unavailable (the client is told to try later), never as a wrong password.
//! - Metrics: `postern_oauth2_token_requests_total{provider,result}` and
//!   `postern_oauth2_token_age_seconds{provider}` at each use.

pub mod check;
pub mod provider;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use crate::auth::Secret;
use crate::config::{OAuth2Config, OAuth2Grant};
use crate::ops::metrics::Metrics;
use provider::Provider;

/// Why no token could be had. None of these is the user's fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no [oauth2.{0}] section")]
    UnknownProvider(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a usable key: {reason}")]
    Key {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot set up TLS for the token endpoint: {0}")]
    Tls(String),
    #[error("the token endpoint {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the token endpoint answered {status}: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("the token endpoint answered {status} without a token")]
    Malformed { status: u16 },
}

impl TokenError {
    /// The `result` label of `postern_oauth2_token_requests_total`.
    pub fn result(&self) -> &'static str {
        match self {
            TokenError::Refused { .. } => "refused",
            TokenError::Unreachable { .. } | TokenError::Malformed { .. } => "unavailable",
            TokenError::UnknownProvider(_)
            | TokenError::File { .. }
            | TokenError::Key { .. }
            | TokenError::Tls(_) => "config",
        }
    }
}

/// An access token, as presented upstream.
#[derive(Debug)]
pub struct Token {
    pub access: Secret<String>,
    /// When postern received it.
    pub obtained: Instant,
    /// When it leaves the cache, ahead of its expiry.
    renew_at: Instant,
}

impl Token {
    /// A token received now that the provider says lasts `lifetime`; it is renewed
    /// `renew_before` ahead of that, or at half its lifetime if that comes first.
    pub fn new(access: Secret<String>, lifetime: Duration, renew_before: Duration) -> Token {
        let obtained = Instant::now();
        let fresh_for = lifetime.saturating_sub(renew_before).max(lifetime / 2);
        Token {
            access,
            obtained,
            renew_at: obtained + fresh_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_ahead_of_its_expiry_but_not_before_half_its_life() {
        let access = || Secret::new(String::new());
        let hour = Token::new(
            access(),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        assert_eq!(hour.renew_at - hour.obtained, Duration::from_secs(3300));
        let short = Token::new(access(), Duration::from_secs(60), Duration::from_secs(300));
        assert_eq!(short.renew_at - short.obtained, Duration::from_secs(30));
    }
}

/// Which token: a provider's, for a subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    provider: String,
    /// Empty for a client-credentials token.
    subject: String,
}

/// Entries leave the cache when their token is due for renewal.
struct Renewal;

impl Expiry<TokenKey, Arc<Token>> for Renewal {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        token: &Arc<Token>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(token.renew_at.saturating_duration_since(created_at))
    }
}

/// The providers and their cached tokens.
pub struct Tokens {
    providers: BTreeMap<String, Provider>,
    cache: Cache<TokenKey, Arc<Token>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl Tokens {
    /// The providers of `[oauth2.*]`, each with its HTTP client.
    pub fn new(
        configs: &BTreeMap<String, OAuth2Config>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Tokens>, TokenError> {
        let providers = configs
            .iter()
            .map(|(name, config)| Ok((name.clone(), Provider::new(name, config)?)))
            .collect::<Result<_, TokenError>>()?;
        Ok(Arc::new(Tokens {
            providers,
            cache: Cache::builder()
                .max_capacity(100_000)
                .expire_after(Renewal)
                .build(),
            metrics,
        }))
    }

    /// A token from `provider` to act as `user` upstream: cached, or fetched now (once
    /// for everyone waiting on the same key).
    pub async fn token(&self, provider: &str, user: &str) -> Result<Arc<Token>, Arc<TokenError>> {
        let source = self
            .providers
            .get(provider)
            .ok_or_else(|| Arc::new(TokenError::UnknownProvider(provider.to_string())))?;
        let key = TokenKey {
            provider: provider.to_string(),
            subject: match source.grant() {
                OAuth2Grant::ClientCredentials => String::new(),
                OAuth2Grant::JwtBearer => user.to_string(),
            },
        };
        let token = self
            .cache
            .try_get_with(key, async {
                let fetched = source.fetch(user).await;
                let result = match &fetched {
                    Ok(_) => "ok",
                    Err(error) => error.result(),
                };
                self.metrics
                    .oauth2_token_requests
                    .with_label_values(&[provider, result])
                    .inc();
                match &fetched {
                    Ok(_) => tracing::info!(provider, "oauth2: token obtained"),
                    Err(error) => tracing::warn!(provider, %error, "oauth2: no token"),
                }
                fetched.map(Arc::new)
            })
            .await?;
        self.metrics
            .oauth2_token_age
            .with_label_values(&[provider])
            .observe(token.obtained.elapsed().as_secs_f64());
        Ok(token)
    }

    /// The upstream refused `token`: it goes from the cache (unless a newer one has
    /// replaced it), so the next request fetches another.
    pub async fn forget(&self, provider: &str, user: &str, token: &Arc<Token>) {
        let Some(source) = self.providers.get(provider) else {
            return;
        };
        let key = TokenKey {
            provider: provider.to_string(),
            subject: match source.grant() {
                OAuth2Grant::ClientCredentials => String::new(),
                OAuth2Grant::JwtBearer => user.to_string(),
            },
        };
        if let Some(cached) = self.cache.get(&key).await {
            if Arc::ptr_eq(&cached, token) {
                self.cache.invalidate(&key).await;
            }
        }
    }
}
