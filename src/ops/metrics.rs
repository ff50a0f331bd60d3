//! Prometheus metrics: one registry, typed handles, every known label combination at zero.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric postern exports; names and labels are part of the interface contract.
pub struct Metrics {
    registry: Registry,
    /// Accepted connections, by listener name and protocol.
    pub connections: IntCounterVec,
    /// Sessions currently open, by protocol.
    pub sessions_active: IntGaugeVec,
    /// Login attempts by protocol, mechanism and result.
    pub auth_attempts: IntCounterVec,
    pub auth_cache_hits: IntCounter,
    pub auth_cache_misses: IntCounter,
    /// Time spent in one argon2id verification.
    pub password_hash_seconds: Histogram,
    /// From the first byte of the login command to the reply.
    pub auth_seconds: HistogramVec,
    /// TCP connect plus TLS to the upstream.
    pub upstream_connect_seconds: HistogramVec,
    pub upstream_errors: IntCounterVec,
    /// Upstream logins by the connection they used: `warm` (connected and greeted ahead
    /// of the login) or `new` (connected for it). Many `new` IMAP logins under load mean
    /// `warm_connections` is too small.
    pub upstream_logins: IntCounterVec,
    /// Bytes relayed after login, by direction.
    pub relay_bytes: IntCounterVec,
    pub smtp_messages: IntCounterVec,
    /// Sessions closed because their app password was revoked, expired or its user disabled.
    pub revoked_sessions_closed: IntCounter,
    /// Audit events lost: the queue was full while the store could not be written, the
    /// store refused the event, or it was still waiting when postern stopped.
    pub audit_events_dropped: IntCounter,
    /// Audit events waiting to be written to the store.
    pub audit_backlog: IntGauge,
    /// Portal sign-ins with the primary password, by result.
    pub portal_sign_ins: IntCounterVec,
    /// Portal second-factor checks, by method (totp, recovery) and result (ok, refused).
    pub portal_mfa: IntCounterVec,
    /// App passwords created and revoked from the portal, by action.
    pub portal_app_passwords: IntCounterVec,
    /// Mails telling users of a change from the portal, by result (`sent`, `failed`).
    pub portal_notifications: IntCounterVec,
    /// Token requests to `[oauth2.*]` providers, by provider and result.
    pub oauth2_token_requests: IntCounterVec,
    /// How old a token is when an upstream login presents it, by provider.
    pub oauth2_token_age: HistogramVec,
    /// Penalty and quota operations the shared store could not serve, counted in this
    /// instance's memory instead, by limit (`penalty`, `quota`).
    pub shared_limits_fallbacks: IntCounterVec,
    /// ACME orders, by result (`obtained`, `failed`).
    pub acme_orders: IntCounterVec,
    /// When the ACME certificate being served expires (unix seconds).
    pub acme_certificate_not_after: IntGauge,
    pub build_info: IntGaugeVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric name and labels are valid constants"); // Unwrap: constant, tested
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once"); // Unwrap: constant, tested
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid gauge name"); // Unwrap: constant
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once"); // Unwrap: constant, tested
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric name"); // Unwrap: constant
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once"); // Unwrap: constant, tested
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid histogram"); // Unwrap: constant
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once"); // Unwrap: constant, tested
    metric
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        let sessions_active = IntGaugeVec::new(
            Opts::new("postern_sessions_active", "Sessions currently open."),
            &["protocol"],
        )
        .expect("valid gauge"); // Unwrap: constant
        registry
            .register(Box::new(sessions_active.clone()))
            .expect("registered once"); // Unwrap: constant
        let build_info = IntGaugeVec::new(
            Opts::new("postern_build_info", "The running postern version."),
            &["version"],
        )
        .expect("valid gauge"); // Unwrap: constant
        registry
            .register(Box::new(build_info.clone()))
            .expect("registered once"); // Unwrap: constant
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let password_hash_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "postern_password_hash_seconds",
                "Time spent in one argon2id hash or verification.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram"); // Unwrap: constant
        registry
            .register(Box::new(password_hash_seconds.clone()))
            .expect("registered once"); // Unwrap: constant
        let audit_backlog = IntGauge::new(
            "postern_audit_backlog",
            "Audit events waiting to be written to the store.",
        )
        .expect("valid gauge"); // Unwrap: constant
        registry
            .register(Box::new(audit_backlog.clone()))
            .expect("registered once"); // Unwrap: constant

        let metrics = Metrics {
            connections: counter_vec(
                r,
                "postern_connections_total",
                "Client connections accepted.",
                &["listener", "protocol"],
            ),
            sessions_active,
            auth_attempts: counter_vec(
                r,
                "postern_auth_attempts_total",
                "Login attempts by result.",
                &["protocol", "mechanism", "result"],
            ),
            auth_cache_hits: counter(
                r,
                "postern_auth_cache_hits_total",
                "Logins answered from the verified-credential cache.",
            ),
            auth_cache_misses: counter(
                r,
                "postern_auth_cache_misses_total",
                "Logins that needed the store and a password hash.",
            ),
            password_hash_seconds,
            auth_seconds: histogram_vec(
                r,
                "postern_auth_seconds",
                "From the first byte of the login command to the reply.",
                &["protocol"],
                LATENCY_BUCKETS,
            ),
            upstream_connect_seconds: histogram_vec(
                r,
                "postern_upstream_connect_seconds",
                "TCP connect and TLS handshake to the upstream.",
                &["protocol"],
                LATENCY_BUCKETS,
            ),
            upstream_errors: counter_vec(
                r,
                "postern_upstream_errors_total",
                "Failed upstream connections and logins.",
                &["protocol", "reason"],
            ),
            upstream_logins: counter_vec(
                r,
                "postern_upstream_logins_total",
                "Upstream logins, by whether a warm connection was used.",
                &["protocol", "connection"],
            ),
            relay_bytes: counter_vec(
                r,
                "postern_relay_bytes_total",
                "Bytes relayed after login.",
                &["protocol", "direction"],
            ),
            smtp_messages: counter_vec(
                r,
                "postern_smtp_messages_total",
                "SMTP messages by result.",
                &["result"],
            ),
            revoked_sessions_closed: counter(
                r,
                "postern_revoked_sessions_closed_total",
                "Live sessions closed because their credential stopped being valid.",
            ),
            audit_events_dropped: counter(
                r,
                "postern_audit_events_dropped_total",
                "Audit events lost: queue full while the store could not be written, refused by \
                 the store, or still waiting at exit.",
            ),
            audit_backlog,
            portal_sign_ins: counter_vec(
                r,
                "postern_portal_sign_ins_total",
                "Portal sign-ins with the primary password, by result.",
                &["result"],
            ),
            portal_mfa: counter_vec(
                r,
                "postern_portal_mfa_total",
                "Portal second-factor checks, by method and result.",
                &["method", "result"],
            ),
            portal_app_passwords: counter_vec(
                r,
                "postern_portal_app_passwords_total",
                "App passwords created or revoked from the portal.",
                &["action"],
            ),
            portal_notifications: counter_vec(
                r,
                "postern_portal_notifications_total",
                "Mails telling a user of an app password created or a second factor changed, by \
                 result.",
                &["result"],
            ),
            oauth2_token_requests: counter_vec(
                r,
                "postern_oauth2_token_requests_total",
                "Token requests to an [oauth2] provider, by result: ok, refused (the provider \
                 said no), unavailable (unreachable, slow, or no token in the answer), config \
                 (a key or secret file postern cannot use).",
                &["provider", "result"],
            ),
            oauth2_token_age: histogram_vec(
                r,
                "postern_oauth2_token_age_seconds",
                "Age of the token an upstream login presents.",
                &["provider"],
                &[1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0],
            ),
            shared_limits_fallbacks: counter_vec(
                r,
                "postern_shared_limits_fallbacks_total",
                "Penalty and quota operations the shared store could not serve, counted in this \
                 instance's memory instead, by limit.",
                &["limit"],
            ),
            acme_orders: counter_vec(
                r,
                "postern_acme_orders_total",
                "ACME certificate orders by this instance, by result: obtained, failed.",
                &["result"],
            ),
            acme_certificate_not_after: gauge(
                r,
                "postern_acme_certificate_not_after_seconds",
                "When the ACME certificate being served expires, in unix seconds (0: none yet).",
            ),
            build_info,
            registry,
        };
        metrics.start_at_zero();
        Arc::new(metrics)
    }

    /// Creates the known label combinations at zero, so a series exists before its first
    /// event and `rate()` sees that event.
    fn start_at_zero(&self) {
        const RESULTS: &[&str] = &[
            "ok",
            "bad_password",
            "unknown_user",
            "disabled",
            "revoked",
            "expired",
            "scope_denied",
            "rate_limited",
            "upstream_refused",
            "upstream_unavailable",
            "temporary_failure",
            "session_limit",
        ];
        for protocol in ["imap", "smtp", "pop3"] {
            self.sessions_active.with_label_values(&[protocol]).set(0);
            for direction in ["to_upstream", "to_client"] {
                self.relay_bytes.with_label_values(&[protocol, direction]);
            }
            for connection in ["warm", "new"] {
                self.upstream_logins
                    .with_label_values(&[protocol, connection]);
            }
            for mechanism in ["login", "plain", "user"] {
                for result in RESULTS {
                    self.auth_attempts
                        .with_label_values(&[protocol, mechanism, result]);
                }
            }
        }
        for result in [
            "ok",
            "bad_password",
            "unknown_user",
            "disabled",
            "rate_limited",
            "upstream_unavailable",
        ] {
            self.portal_sign_ins.with_label_values(&[result]);
        }
        for method in ["totp", "recovery"] {
            for result in ["ok", "refused"] {
                self.portal_mfa.with_label_values(&[method, result]);
            }
        }
        for action in ["created", "revoked"] {
            self.portal_app_passwords.with_label_values(&[action]);
        }
        for result in [
            "accepted",
            "rejected",
            "sender_refused",
            "quota_exceeded",
            "too_large",
            "upstream_failed",
        ] {
            self.smtp_messages.with_label_values(&[result]);
        }
        for result in ["obtained", "failed"] {
            self.acme_orders.with_label_values(&[result]);
        }
        for limit in ["penalty", "quota"] {
            self.shared_limits_fallbacks.with_label_values(&[limit]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Unwrap: the text encoder only fails on a writer error, and a Vec does not fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory");
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let metrics = Metrics::new();
        metrics
            .auth_attempts
            .with_label_values(&["imap", "login", "ok"])
            .inc();
        metrics
            .connections
            .with_label_values(&["imaps", "imap"])
            .inc();
        metrics.sessions_active.with_label_values(&["imap"]).set(0);
        metrics
            .auth_seconds
            .with_label_values(&["imap"])
            .observe(0.01);
        metrics
            .upstream_connect_seconds
            .with_label_values(&["imap"])
            .observe(0.01);
        metrics
            .upstream_errors
            .with_label_values(&["imap", "connect"])
            .inc();
        metrics
            .relay_bytes
            .with_label_values(&["imap", "to_client"])
            .inc();
        metrics.smtp_messages.with_label_values(&["accepted"]).inc();
        metrics.password_hash_seconds.observe(0.02);
        let text = metrics.render();
        for name in [
            "postern_connections_total",
            "postern_sessions_active",
            "postern_auth_attempts_total",
            "postern_auth_cache_hits_total",
            "postern_auth_cache_misses_total",
            "postern_password_hash_seconds",
            "postern_auth_seconds",
            "postern_upstream_connect_seconds",
            "postern_upstream_errors_total",
            "postern_relay_bytes_total",
            "postern_smtp_messages_total",
            "postern_revoked_sessions_closed_total",
            "postern_audit_events_dropped_total",
            "postern_audit_backlog",
            "postern_portal_sign_ins_total",
            "postern_portal_mfa_total",
            "postern_portal_app_passwords_total",
            "postern_build_info",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
