//! Penalties and quotas shared through a real PostgreSQL: two instances' worth of shared
//! limits in one process, as two postern processes would hold them. A failure counted by
//! one blocks the other as soon as the announcement arrives; a retyped password counts
//! once across both; a quota holds across both; with the store stopped, failures are
//! still counted (in memory) and the announcements resume once it is back.

mod support;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use postern::limits::quota::QuotaLimits;
use postern::limits::shared::{self, SharedPenalties, SharedQuotas};
use postern::limits::{Penalties, Quotas};
use postern::ops::metrics::Metrics;
use postern::store::Store;
use support::postern::metric;
use support::Postgres;

/// A condition polled for this long that never holds is a failure.
const DEADLINE: Duration = Duration::from_secs(30);

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Instance {
    penalties: Arc<SharedPenalties>,
    quotas: Arc<SharedQuotas>,
    metrics: Arc<Metrics>,
}

async fn instance(url: &str) -> Instance {
    let store = Store::open(url).await.unwrap();
    store.migrate().await.unwrap();
    let metrics = Metrics::new();
    let limits = QuotaLimits {
        messages_per_hour: Some(2),
        recipients_per_hour: Some(5),
    };
    let (penalties, quotas) = shared::start(store, Vec::new(), limits, &metrics)
        .await
        .unwrap();
    Instance {
        penalties,
        quotas,
        metrics,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn penalties_counted_by_one_instance_hold_on_the_other() {
    let postgres = Postgres::start();
    let url = postgres.create_database("penalties");
    let (a, b) = (instance(&url).await, instance(&url).await);

    let delay = a.penalties.failed(ip("192.0.2.1"), "alice", [1; 32]).await;
    assert_eq!(delay, Duration::from_secs(2));
    eventually("the other instance learns of the penalty", || async {
        b.penalties
            .blocked_for(ip("198.51.100.9"), "alice")
            .await
            .is_some()
    })
    .await;

    // The same wrong password typed on the other instance counts once; a new one counts.
    let again = b.penalties.failed(ip("192.0.2.2"), "alice", [1; 32]).await;
    assert_eq!(
        again,
        Duration::from_secs(2),
        "a retyped password counts once"
    );
    let next = b.penalties.failed(ip("192.0.2.3"), "alice", [2; 32]).await;
    assert_eq!(
        next,
        Duration::from_secs(4),
        "the second guess of one gateway"
    );
    let counted = postgres.psql(
        "penalties",
        "SELECT failures FROM penalties WHERE key = 'l:alice'",
    );
    assert_eq!(counted.trim(), "2");

    // The address counts across instances too.
    let third = a.penalties.failed(ip("192.0.2.3"), "bob", [3; 32]).await;
    assert_eq!(third, Duration::from_secs(4), "192.0.2.3's second failure");

    // A correct password through one instance clears the login on both.
    b.penalties.succeeded(ip("192.0.2.4"), "alice").await;
    eventually("the clearing reaches the first instance", || async {
        let login_blocked = a.penalties.blocked_for(ip("203.0.113.5"), "alice").await;
        login_blocked.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_hold_across_instances() {
    let postgres = Postgres::start();
    let url = postgres.create_database("quotas");
    let (a, b) = (instance(&url).await, instance(&url).await);

    assert!(a.quotas.may_send_message(7).await);
    a.quotas.record(7, 3).await;
    assert!(b.quotas.may_add_recipients(7, 2).await);
    assert!(
        !b.quotas.may_add_recipients(7, 3).await,
        "3 + 3 recipients > 5"
    );
    b.quotas.record(7, 1).await;
    assert!(
        !a.quotas.may_send_message(7).await,
        "two messages this hour"
    );
    assert!(b.quotas.may_send_message(8).await, "per app password");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_store_down_penalties_still_count_and_resume_after() {
    let mut postgres = Postgres::start();
    let url = postgres.create_database("outage");
    let (a, b) = (instance(&url).await, instance(&url).await);

    postgres.stop();
    let delay = a.penalties.failed(ip("192.0.2.1"), "erin", [1; 32]).await;
    assert_eq!(
        delay,
        Duration::from_secs(2),
        "counted in memory: fail safe"
    );
    assert!(a
        .penalties
        .blocked_for(ip("192.0.2.9"), "erin")
        .await
        .is_some());
    assert!(
        a.quotas.may_send_message(9).await,
        "this instance's count decides"
    );
    let text = a.metrics.render();
    assert_eq!(
        metric(
            &text,
            r#"postern_shared_limits_fallbacks_total{limit="penalty"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"postern_shared_limits_fallbacks_total{limit="quota"}"#
        ),
        1.0
    );

    postgres.start_again();
    eventually(
        "a failure counted after the restart reaches the other instance",
        || async {
            b.penalties.failed(ip("192.0.2.50"), "frank", [5; 32]).await;
            a.penalties
                .blocked_for(ip("192.0.2.51"), "frank")
                .await
                .is_some()
        },
    )
    .await;
}
