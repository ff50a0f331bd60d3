//! The verifier: one login attempt in, one verdict out. Cache first (verified results,
//! keyed by a keyed digest), then one store query by lookup tag, then exactly one argon2id
//! verification, also for unknown users and malformed passwords, so every refusal takes
//! the same time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::digest::DigestKey;
use super::hasher::{HashError, PasswordHasher};
use super::password;
use super::Secret;
use crate::clock::now;
use crate::limits::Penalties;
use crate::ops::audit::{self, AuditWriter};
use crate::ops::metrics::Metrics;
use crate::protocol::Protocol;
use crate::store::{Credential, Scope, Store, StoreError};

/// A login that may proceed: who the user is upstream and what the app password allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user_id: i64,
    pub login: String,
    pub upstream_user: String,
    /// The user's sender addresses (SMTP).
    pub addresses: Vec<String>,
    pub app_password_id: i64,
    pub scopes: Vec<Scope>,
    /// Unix seconds; the session closes then.
    pub expires_at: Option<i64>,
}

/// Why a login was refused. The client sees the same reply for all of them; logs, audit
/// and metrics see the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadPassword,
    UnknownUser,
    Disabled,
    Revoked,
    Expired,
    ScopeDenied,
}

impl Refusal {
    /// The `result` label and audit result.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadPassword => "bad_password",
            Refusal::UnknownUser => "unknown_user",
            Refusal::Disabled => "disabled",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::ScopeDenied => "scope_denied",
        }
    }
}

/// The answer to a login attempt.
#[derive(Debug, Clone)]
pub enum Verdict {
    Granted(Arc<Grant>),
    /// Refused; with the app password concerned when the password matched one (revoked,
    /// expired, disabled user, wrong scope), for the audit trail.
    Refused(Refusal, Option<i64>),
    /// A penalty is running for the client's address or the login: answer with a
    /// temporary failure; nothing was looked up or hashed.
    RateLimited,
}

/// Why no verdict could be reached; the client gets a temporary failure.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("store lookup failed: {0}")]
    Store(#[from] StoreError),
    #[error("password hash: {0}")]
    Hash(#[from] HashError),
}

/// One login attempt as the client made it.
#[derive(Debug)]
pub struct LoginAttempt<'a> {
    pub protocol: Protocol,
    /// `login` or `plain`.
    pub mechanism: &'static str,
    pub login: &'a str,
    pub password: &'a Secret<String>,
    pub client: SocketAddr,
    /// The client's self-description (IMAP ID, SMTP EHLO), for the audit trail.
    pub client_id: Option<&'a str>,
    /// When the login command arrived, for the log line and `postern_auth_seconds`.
    pub started: tokio::time::Instant,
}

/// Settings of the verifier.
#[derive(Clone)]
pub struct VerifierOptions {
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Where login penalties are counted.
    pub penalties: Arc<dyn Penalties>,
}

/// Checks app passwords.
#[derive(Clone)]
pub struct Verifier {
    store: Store,
    hasher: PasswordHasher,
    lookup_key: DigestKey,
    cache_key: DigestKey,
    cache: Cache<[u8; 32], Arc<Grant>>,
    /// A hash of a random password, verified when there is no real candidate.
    decoy_hash: String,
    penalties: Arc<dyn Penalties>,
    metrics: Arc<Metrics>,
    audit: AuditWriter,
}

impl Verifier {
    /// Reads the lookup key from the store and prepares the decoy hash (one hash now).
    /// Login events go to `audit`.
    pub async fn new(
        store: Store,
        hasher: PasswordHasher,
        metrics: Arc<Metrics>,
        audit: AuditWriter,
        options: VerifierOptions,
    ) -> Result<Self, AuthError> {
        let lookup_key = DigestKey::new(store.lookup_key().await?);
        let decoy = password::normalize(password::generate().expose()).unwrap_or_default();
        let decoy_hash = hasher.hash(decoy).await?;
        let cache = Cache::builder()
            .max_capacity(options.cache_capacity)
            .time_to_live(options.cache_ttl)
            .build();
        Ok(Self {
            store,
            hasher,
            lookup_key,
            cache_key: DigestKey::random(),
            cache,
            decoy_hash,
            penalties: options.penalties,
            metrics,
            audit,
        })
    }

    /// The hasher, shared with the CLI's password creation.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// The key of the store lookup tags.
    pub fn lookup_key(&self) -> &DigestKey {
        &self.lookup_key
    }

    /// Forgets every cached verification (after a revocation anywhere).
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    /// Decides one login attempt. A cached verification answers at once, without the
    /// store; otherwise a running penalty answers [`Verdict::RateLimited`] without hashing,
    /// once it has run out, and a refusal is answered only after the penalty delay it earns. When the store
    /// cannot be read the answer is an [`AuthError`] (a temporary failure for the client)
    /// and no penalty is counted: an outage is not the client's fault. The caller reports
    /// the final outcome, which may be an upstream failure, with [`Verifier::record`].
    pub async fn verify(&self, attempt: &LoginAttempt<'_>) -> Result<Verdict, AuthError> {
        let login = password::normalize_login(attempt.login);
        let cache_key = self.cache_key.cache_key(&login, attempt.password);
        if let Some(grant) = self.cache.get(&cache_key).await {
            if grant.expires_at.is_none_or(|at| at > now()) {
                self.metrics.auth_cache_hits.inc();
                return Ok(in_scope(grant, attempt.protocol));
            }
            self.cache.invalidate(&cache_key).await;
        }
        let ip = attempt.client.ip();
        if let Some(left) = self.penalties.blocked_for(ip, &login).await {
            // Answered once the penalty has run out, never by hashing: a flooder gets one
            // answer per penalty on each connection instead of one per round trip.
            tokio::time::sleep(left).await;
            return Ok(Verdict::RateLimited);
        }
        self.metrics.auth_cache_misses.inc();
        let verdict = self
            .check(&login, attempt.password, attempt.protocol)
            .await?;
        match &verdict {
            Verdict::Granted(grant) => {
                self.penalties.succeeded(ip, &login).await;
                self.cache.insert(cache_key, grant.clone()).await;
            }
            Verdict::Refused(..) => {
                // Under the shared key, so every instance fingerprints a retyped wrong
                // password alike.
                let digest = self.lookup_key.cache_key(&login, attempt.password);
                let delay = self.penalties.failed(ip, &login, digest).await;
                tokio::time::sleep(delay).await;
            }
            Verdict::RateLimited => {}
        }
        Ok(verdict)
    }

    /// The store lookup and the one argon2id verification.
    async fn check(
        &self,
        login: &str,
        typed: &Secret<String>,
        protocol: Protocol,
    ) -> Result<Verdict, AuthError> {
        let Some(canonical) = password::normalize(typed.expose()) else {
            self.spend_decoy().await?;
            return self.unknown_or_bad(login).await;
        };
        let tag = self.lookup_key.tag(login, &canonical);
        let credential = self.store.credential(login, &tag).await?;
        let Some(Credential {
            user,
            app_password: Some(app_password),
            hash: Some(hash),
        }) = credential
        else {
            self.spend_decoy().await?;
            let refusal = if credential.is_none() {
                Refusal::UnknownUser
            } else {
                Refusal::BadPassword
            };
            return Ok(Verdict::Refused(refusal, None));
        };
        if !self.hasher.verify(canonical, hash).await? {
            return Ok(Verdict::Refused(Refusal::BadPassword, None));
        }
        // The password is right; now whether it may still be used.
        if app_password.revoked_at.is_some() {
            return Ok(Verdict::Refused(Refusal::Revoked, Some(app_password.id)));
        }
        if !app_password.is_live(now()) {
            return Ok(Verdict::Refused(Refusal::Expired, Some(app_password.id)));
        }
        if user.disabled_at.is_some() {
            return Ok(Verdict::Refused(Refusal::Disabled, Some(app_password.id)));
        }
        let grant = Arc::new(Grant {
            user_id: user.id,
            login: user.login,
            upstream_user: user.upstream_user,
            addresses: user.addresses,
            app_password_id: app_password.id,
            scopes: app_password.scopes,
            expires_at: app_password.expires_at,
        });
        Ok(in_scope(grant, protocol))
    }

    /// Whether `grant`, given earlier, still allows a login now: `None` when it does, else
    /// why not. For a session that logs in upstream again later (SMTP after a lost
    /// connection); it asks the store, not the cache, and costs no hash.
    pub async fn still_allows(&self, grant: &Grant) -> Result<Option<Refusal>, AuthError> {
        let at = now();
        if grant.expires_at.is_some_and(|expires| expires <= at) {
            return Ok(Some(Refusal::Expired));
        }
        let Some((app_password, login)) = self.store.app_password(grant.app_password_id).await?
        else {
            return Ok(Some(Refusal::UnknownUser));
        };
        if app_password.revoked_at.is_some() {
            return Ok(Some(Refusal::Revoked));
        }
        if !app_password.is_live(at) {
            return Ok(Some(Refusal::Expired));
        }
        match self.store.user(&login).await? {
            None => Ok(Some(Refusal::UnknownUser)),
            Some(user) if user.disabled_at.is_some() => Ok(Some(Refusal::Disabled)),
            Some(_) => Ok(None),
        }
    }

    /// For a malformed password, whether the user exists decides the label only; the
    /// time spent is the same either way.
    async fn unknown_or_bad(&self, login: &str) -> Result<Verdict, AuthError> {
        let refusal = match self.store.user(login).await? {
            Some(_) => Refusal::BadPassword,
            None => Refusal::UnknownUser,
        };
        Ok(Verdict::Refused(refusal, None))
    }

    /// One verification that cannot succeed, so that a refusal costs what a real check
    /// costs.
    async fn spend_decoy(&self) -> Result<(), AuthError> {
        let wrong = Secret::new("decoy-never-matches".to_string());
        self.hasher.verify(wrong, self.decoy_hash.clone()).await?;
        Ok(())
    }

    /// Counts the attempt's final outcome, logs it (one line per attempt, with a plain
    /// `client_ip` field for fail2ban), and queues its audit event (which, for a success,
    /// also stamps the app password's last use) with the [`AuditWriter`]: the client's
    /// reply does not wait on the store, and a store outage delays the event.
    pub fn record(
        &self,
        attempt: &LoginAttempt<'_>,
        result: &'static str,
        app_password_id: Option<i64>,
    ) {
        self.metrics
            .auth_attempts
            .with_label_values(&[attempt.protocol.as_str(), attempt.mechanism, result])
            .inc();
        self.metrics
            .auth_seconds
            .with_label_values(&[attempt.protocol.as_str()])
            .observe(attempt.started.elapsed().as_secs_f64());
        let succeeded = result == "ok";
        let client_ip = attempt.client.ip();
        let duration_ms = attempt.started.elapsed().as_millis() as u64;
        // The login name is the client's text: Debug-quoted, so it cannot forge a line,
        // and capped, so it cannot fill the log.
        let login: String = attempt.login.chars().take(256).collect();
        if succeeded {
            tracing::info!(protocol = attempt.protocol.as_str(), login = ?login, mechanism = attempt.mechanism, result, app_password_id, %client_ip, duration_ms, "login");
        } else {
            tracing::warn!(protocol = attempt.protocol.as_str(), login = ?login, mechanism = attempt.mechanism, result, app_password_id, %client_ip, duration_ms, "login failed");
        }
        let event = audit::Event {
            at: now(),
            kind: "login",
            login: password::normalize_login(attempt.login),
            app_password_id,
            protocol: Some(attempt.protocol.as_str()),
            client_ip: Some(client_ip.to_string()),
            client_id: attempt.client_id.map(str::to_owned),
            result: Some(result),
            detail: None,
        };
        if succeeded && app_password_id.is_some() {
            self.audit.record_use(event);
        } else {
            self.audit.record(event);
        }
    }
}

fn in_scope(grant: Arc<Grant>, protocol: Protocol) -> Verdict {
    let wanted = match protocol {
        Protocol::Imap => Scope::Imap,
        Protocol::Smtp => Scope::Smtp,
        Protocol::Pop3 => Scope::Pop3,
    };
    if grant.scopes.contains(&wanted) {
        Verdict::Granted(grant)
    } else {
        Verdict::Refused(Refusal::ScopeDenied, Some(grant.app_password_id))
    }
}
