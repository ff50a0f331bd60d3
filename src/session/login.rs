//! The login step, the same for every protocol: verify the app password, log in upstream
//! as the user, record the outcome (metrics, log line, audit event) and say what the
//! client is told.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Grant, LoginAttempt, Verdict};
use crate::gateway::Gateway;
use crate::session::live::SessionSlot;
use crate::upstream::warm::WarmConnection;
use crate::upstream::UpstreamError;

/// A connection logged in upstream, as a protocol's upstream login returns it.
pub struct UpstreamSession<U> {
    pub session: U,
    /// How long the TCP connect and TLS handshake took.
    pub connect_time: Duration,
    /// Whether the login started from a warm connection: the `connection` label of
    /// `postern_upstream_logins_total`.
    pub warm: bool,
}

/// Logs in upstream on `warm`, a connection greeted ahead, when there is one, else on a
/// new connection with `log_in_new` (also when the warm one turns out to be gone).
pub async fn warm_or_new<W, U, WarmLogin, NewLogin>(
    warm: Option<W>,
    log_in_warm: impl FnOnce(W) -> WarmLogin,
    log_in_new: impl FnOnce() -> NewLogin,
) -> Result<UpstreamSession<U>, UpstreamError>
where
    W: WarmConnection,
    WarmLogin: Future<Output = Result<U, UpstreamError>>,
    NewLogin: Future<Output = Result<(U, Duration), UpstreamError>>,
{
    if let Some(warm) = warm {
        let connect_time = warm.connect_time();
        match log_in_warm(warm).await {
            // The upstream dropped the warm connection just before it was taken.
            Err(UpstreamError::Io { .. } | UpstreamError::Closed(_)) => {
                tracing::debug!("warm upstream connection was gone; connecting anew");
            }
            result => {
                return result.map(|session| UpstreamSession {
                    session,
                    connect_time,
                    warm: true,
                })
            }
        }
    }
    let (session, connect_time) = log_in_new().await?;
    Ok(UpstreamSession {
        session,
        connect_time,
        warm: false,
    })
}

/// How a login ended, which decides the client's reply.
pub enum LoginOutcome<U> {
    /// Verified and logged in upstream, with the session's place under the per-login cap.
    LoggedIn {
        grant: Arc<Grant>,
        upstream: U,
        slot: SessionSlot,
    },
    /// Verified, but the login holds as many sessions from this address as allowed.
    TooManySessions,
    /// The credentials were refused, for any of the client's reasons: the protocol's one
    /// fixed refusal.
    Refused,
    /// No decision now (a penalty runs, the store or the upstream failed): the protocol's
    /// temporary failure.
    Unavailable,
    /// Verified, but the upstream says another session holds the mailbox.
    MailboxInUse,
}

/// Verifies `attempt`, then logs in upstream with `upstream_login` as the granted user,
/// and records the outcome once.
pub async fn log_in<U, F, Fut>(
    gateway: &Gateway,
    attempt: &LoginAttempt<'_>,
    upstream_login: F,
) -> LoginOutcome<U>
where
    F: FnOnce(Arc<Grant>) -> Fut,
    Fut: Future<Output = Result<UpstreamSession<U>, UpstreamError>>,
{
    let verifier = &gateway.verifier;
    let grant = match verifier.verify(attempt).await {
        Ok(Verdict::Granted(grant)) => grant,
        Ok(Verdict::Refused(refusal, app_password_id)) => {
            verifier.record(attempt, refusal.as_str(), app_password_id);
            return LoginOutcome::Refused;
        }
        Ok(Verdict::RateLimited) => {
            verifier.record(attempt, "rate_limited", None);
            return LoginOutcome::Unavailable;
        }
        Err(error) => {
            tracing::warn!(%error, "login could not be verified");
            verifier.record(attempt, "temporary_failure", None);
            return LoginOutcome::Unavailable;
        }
    };
    let Some(slot) =
        gateway
            .session_caps
            .admit_session(attempt.protocol, attempt.client.ip(), grant.user_id)
    else {
        tracing::info!(login = ?grant.login, "too many sessions for the login from this address (max_sessions_per_user_ip)");
        verifier.record(attempt, "session_limit", Some(grant.app_password_id));
        return LoginOutcome::TooManySessions;
    };
    match upstream(
        gateway,
        attempt.protocol.as_str(),
        upstream_login(grant.clone()),
    )
    .await
    {
        Ok(upstream) => {
            verifier.record(attempt, "ok", Some(grant.app_password_id));
            LoginOutcome::LoggedIn {
                grant,
                upstream,
                slot,
            }
        }
        Err(error) => {
            let (result, outcome) = match error {
                UpstreamError::Refused => ("upstream_refused", LoginOutcome::Unavailable),
                UpstreamError::InUse => ("upstream_unavailable", LoginOutcome::MailboxInUse),
                _ => ("upstream_unavailable", LoginOutcome::Unavailable),
            };
            if matches!(outcome, LoginOutcome::MailboxInUse) {
                tracing::info!(%error, login = ?attempt.login, "upstream login refused for now");
            } else {
                tracing::error!(%error, login = ?attempt.login, "upstream login failed");
            }
            verifier.record(attempt, result, Some(grant.app_password_id));
            outcome
        }
    }
}

/// A later upstream login for a session that is already logged in (SMTP, after the
/// upstream connection was lost): only while the verifier still allows the grant. `None`
/// when it does not, or the login failed; both are logged here.
pub async fn log_in_again<U>(
    gateway: &Gateway,
    protocol: &'static str,
    grant: &Grant,
    upstream_login: impl Future<Output = Result<UpstreamSession<U>, UpstreamError>>,
) -> Option<U> {
    match gateway.verifier.still_allows(grant).await {
        Ok(None) => {}
        Ok(Some(refusal)) => {
            tracing::info!(login = ?grant.login, app_password_id = grant.app_password_id, result = refusal.as_str(), "no new upstream login: the verifier refuses the credential now");
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, "no new upstream login: the credential cannot be checked");
            return None;
        }
    }
    match upstream(gateway, protocol, upstream_login).await {
        Ok(session) => Some(session),
        Err(error) => {
            tracing::warn!(%error, "upstream login for a new transaction failed");
            None
        }
    }
}

/// Runs an upstream login and counts it: connect time, warm or new, or the error.
async fn upstream<U>(
    gateway: &Gateway,
    protocol: &'static str,
    login: impl Future<Output = Result<UpstreamSession<U>, UpstreamError>>,
) -> Result<U, UpstreamError> {
    let metrics = &gateway.metrics;
    match login.await {
        Ok(logged_in) => {
            let connection = if logged_in.warm { "warm" } else { "new" };
            metrics
                .upstream_logins
                .with_label_values(&[protocol, connection])
                .inc();
            metrics
                .upstream_connect_seconds
                .with_label_values(&[protocol])
                .observe(logged_in.connect_time.as_secs_f64());
            Ok(logged_in.session)
        }
        Err(error) => {
            metrics
                .upstream_errors
                .with_label_values(&[protocol, error.reason()])
                .inc();
            Err(error)
        }
    }
}
