//! Micro-benchmarks of the login hot path: parsing a LOGIN before authentication, the
//! cache hit that most logins take, and the argon2id verification that a cache miss costs.
//!
//! Run with `cargo bench --bench hot_paths`.

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use postern::auth::hasher::PasswordHasher;
use postern::auth::{LoginAttempt, Secret, Verdict, Verifier};
use postern::config::Protocol;
use postern::imap::preauth::{Action, PreAuth, PreAuthOptions};
use postern::ops::audit::AuditWriter;
use postern::ops::metrics::Metrics;
use postern::store::{NewUser, Scope, Store};
use postern::{auth::verifier::VerifierOptions, clock::now};

fn preauth_login(c: &mut Criterion) {
    c.bench_function("preauth: LOGIN line to Login action", |b| {
        b.iter(|| {
            let mut machine = PreAuth::new(PreAuthOptions {
                tls_active: true,
                ..PreAuthOptions::default()
            });
            machine.feed(b"a1 LOGIN \"alice@example.com\" \"abcd efgh ijkl mnop\"\r\n");
            match machine.next_action() {
                Some(Action::Login { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        })
    });
}

fn verifier(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let (verifier, password) = runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        store
            .add_user(
                &NewUser {
                    login: "alice@example.com",
                    upstream_user: "alice",
                    addresses: &[],
                },
                now(),
            )
            .await
            .unwrap();
        let hasher =
            PasswordHasher::new(19_456, 2, 1, 0, std::time::Duration::from_secs(30)).unwrap();
        let metrics = Metrics::new();
        let audit = AuditWriter::start(store.clone(), &metrics, 10_000);
        let verifier = Verifier::new(
            store.clone(),
            hasher.clone(),
            metrics,
            audit,
            VerifierOptions {
                cache_ttl: std::time::Duration::from_secs(600),
                cache_capacity: 1000,
                penalties: std::sync::Arc::new(postern::limits::penalty::MemoryPenalties::new(
                    vec![],
                )),
            },
        )
        .await
        .unwrap();
        let accounts = postern::accounts::Accounts::new(store.clone(), hasher.clone(), 40)
            .await
            .unwrap();
        let issued = accounts
            .issue_app_password(postern::accounts::IssueRequest {
                login: "alice@example.com",
                name: "bench",
                scopes: &[Scope::Imap],
                expires_at: None,
                actor: postern::accounts::Actor::Cli,
            })
            .await
            .unwrap();
        (verifier, issued.password)
    });
    let client: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let attempt = |password: &Secret<String>| {
        let verifier = verifier.clone();
        let password = password.clone();
        async move {
            let attempt = LoginAttempt {
                protocol: Protocol::Imap,
                mechanism: "login",
                login: "alice@example.com",
                password: &password,
                client,
                client_id: None,
                started: tokio::time::Instant::now(),
            };
            verifier.verify(&attempt).await.unwrap()
        }
    };
    let mut group = c.benchmark_group("verifier");
    group.bench_function("cache hit", |b| {
        b.to_async(&runtime).iter(|| async {
            assert!(matches!(attempt(&password).await, Verdict::Granted(_)));
        })
    });
    group.sample_size(20);
    group.bench_function("cache miss: store lookup + argon2id (m=19 MiB, t=2)", |b| {
        b.to_async(&runtime).iter(|| async {
            verifier.forget_all();
            assert!(matches!(attempt(&password).await, Verdict::Granted(_)));
        })
    });
    group.finish();
}

criterion_group!(benches, preauth_login, verifier);
criterion_main!(benches);
