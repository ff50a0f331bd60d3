//! Certificates from ACME against a real pebble (Let's Encrypt's test server) with its own
//! root: the first certificate obtained over HTTP-01, served and verified by
//! `openssl s_client` trusting pebble's root; renewed by itself a third of its (short)
//! lifetime before expiry and swapped in live; pebble gone at the next renewal keeps the
//! current certificate and logs it. TLS-ALPN-01 answered on the IMAP port itself, while
//! an ordinary client on that port still gets its session. Two instances on one PostgreSQL
//! share one order: one orders (the challenge answered by the other, from the store), both
//! serve the result.

mod support;

use std::time::{Duration, Instant};

use support::openssl::{leaf, s_client};
use support::pebble::Pebble;
use support::postern::{logged_lines, metric, Options, Postern};
use support::{free_port, Dovecot, Postgres};

const DOMAIN: &str = "mail.example.test";

/// `[tls.acme]` for pebble: HTTP-01 answered on `http_port`, or TLS-ALPN-01 when `None`.
fn acme_config(pebble: &Pebble, http_port: Option<u16>) -> String {
    let challenge = match http_port {
        Some(port) => {
            format!("challenge = \"http-01\"\nhttp_challenge_bind = \"127.0.0.1:{port}\"\n")
        }
        None => "challenge = \"tls-alpn-01\"\n".to_string(),
    };
    format!(
        "[tls.acme]\ndirectory_url = \"{}\"\ndomains = [\"{DOMAIN}\"]\n\
         contact = \"mailto:postmaster@example.test\"\nca_file = \"{}\"\n\
         {challenge}retry_after = \"1s\"\n",
        pebble.directory_url,
        pebble.ca_path.display()
    )
}

/// Polls postern's metrics until `series` reaches `at_least`.
async fn until_metric(postern: &Postern, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(&postern.metrics(), series) < at_least {
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}: {:?}",
            logged_lines("acme")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const OBTAINED: &str = r#"postern_acme_orders_total{result="obtained"}"#;
const FAILED: &str = r#"postern_acme_orders_total{result="failed"}"#;

/// The leaf served for DOMAIN, verified against `root`.
fn served(postern: &Postern, root: &std::path::Path) -> String {
    leaf(&s_client(
        postern.imaps.port(),
        root,
        &["-servername", DOMAIN],
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_obtained_renewed_and_kept_when_the_ca_is_gone() {
    let http_port = free_port();
    let mut pebble = Pebble::start(http_port, free_port(), 15);
    let dovecot = Dovecot::start();
    let options = Options {
        extra_config: acme_config(&pebble, Some(http_port)),
        ..Options::default()
    };
    let postern = Postern::start_with(&dovecot, options).await;
    let root = postern.dir.path().join("pebble-root.pem");

    until_metric(&postern, OBTAINED, 1.0).await;
    std::fs::write(&root, pebble.root()).unwrap();
    let first = served(&postern, &root);

    // A third of 15 s before expiry, a new one, served to new connections.
    until_metric(&postern, OBTAINED, 2.0).await;
    let second = served(&postern, &root);
    assert_ne!(first, second, "the renewed certificate is served");

    // The CA gone at the next renewal: the current certificate stays, and the log says so.
    pebble.stop();
    until_metric(&postern, FAILED, 1.0).await;
    assert_eq!(served(&postern, &root), second);
    assert!(
        !logged_lines("ACME order failed; keeping the current certificate").is_empty(),
        "the failure is logged"
    );
    postern.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_one_order() {
    let postgres = Postgres::start();
    let url = postgres.create_database("acme");
    let http_port = free_port();
    let pebble = Pebble::start(http_port, free_port(), 3600);
    let dovecot = Dovecot::start();
    // Only the first instance is where pebble checks the challenge; whichever orders.
    let first = Postern::start_with(
        &dovecot,
        Options {
            store_url: Some(url.clone()),
            extra_config: acme_config(&pebble, Some(http_port)),
            ..Options::default()
        },
    )
    .await;
    let second = Postern::start_with(
        &dovecot,
        Options {
            store_url: Some(url.clone()),
            extra_config: acme_config(&pebble, Some(free_port())),
            ..Options::default()
        },
    )
    .await;
    let root = first.dir.path().join("pebble-root.pem");
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(&first.metrics(), OBTAINED) + metric(&second.metrics(), OBTAINED) < 1.0 {
        assert!(Instant::now() < deadline, "no certificate obtained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&root, pebble.root()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gauge = r#"postern_acme_certificate_not_after_seconds"#;
        if metric(&first.metrics(), gauge) > 0.0 && metric(&second.metrics(), gauge) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "not both serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served(&first, &root),
        served(&second, &root),
        "one certificate for both"
    );
    let orders = metric(&first.metrics(), OBTAINED) + metric(&second.metrics(), OBTAINED);
    assert_eq!(orders, 1.0, "one order between them");
    let rows = postgres.psql("acme", "SELECT count(*) FROM certificates");
    assert_eq!(rows.trim(), "1");
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_on_the_mail_port() {
    let imaps = free_port();
    let pebble = Pebble::start(free_port(), imaps, 3600);
    let dovecot = Dovecot::start();
    let ports = [imaps, free_port(), free_port(), free_port()];
    let options = Options {
        listener_ports: Some(ports),
        extra_config: acme_config(&pebble, None),
        ..Options::default()
    };
    let postern = Postern::start_with(&dovecot, options).await;
    until_metric(&postern, OBTAINED, 1.0).await;
    let root = postern.dir.path().join("pebble-root.pem");
    std::fs::write(&root, pebble.root()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        &postern.metrics(),
        "postern_acme_certificate_not_after_seconds",
    ) == 0.0
    {
        assert!(Instant::now() < deadline, "the certificate is not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The port served the challenge to pebble and serves mail clients as before.
    let session = s_client(imaps, &root, &["-servername", DOMAIN]);
    assert!(session.contains("* OK"), "{session}");
    let offering_alpn = s_client(imaps, &root, &["-servername", DOMAIN, "-alpn", "imap,h2"]);
    assert!(
        offering_alpn.contains("No ALPN negotiated"),
        "{offering_alpn}"
    );
    postern.stop().await;
}
