//! `scripts/demo`: try the whole flow in a minute. Starts a private Dovecot (the test
//! harness's generated configuration) with a demo user and a few messages, and postern
//! with the portal in front of it; prints the portal's address, the demo user's primary
//! password and the settings for a mail client. Ctrl-C stops everything and leaves
//! nothing running.

#[path = "../tests/support/mod.rs"]
mod support;

use support::postern::{Options, Postern};
use support::{free_port, Dovecot};

const LOGIN: &str = "demo@example.test";
const PASSWORD: &str = "demo-primary-password";

#[tokio::main]
async fn main() {
    let dovecot = Dovecot::start();
    dovecot.add_user("demo", PASSWORD);
    for (i, subject) in [
        "Welcome to postern",
        "Your app passwords",
        "A third message",
    ]
    .iter()
    .enumerate()
    {
        let message = format!(
            "From: Postmaster <postmaster@example.test>\r\nTo: <{LOGIN}>\r\n\
             Subject: {subject}\r\nMessage-ID: <demo-{i}@example.test>\r\n\r\n\
             This message is in the demo user's mailbox; read it through postern.\r\n"
        );
        dovecot.deliver("demo", message.as_bytes());
    }
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let portal_port = free_port();
    let postern = Postern::start_with(
        &dovecot,
        Options {
            listener_ports: Some(ports),
            // Wrong passwords are slowed down as they would be in production.
            trusted_networks: "[]",
            extra_config: format!(
                "[portal]\nbind = \"127.0.0.1:{portal_port}\"\n\
                 public_url = \"https://localhost:{portal_port}\"\n\
                 [portal.client_settings]\nimap = \"localhost:{}\"\nsmtp = \"localhost:{}\"\n",
                ports[0], ports[2]
            ),
            ..Options::default()
        },
    )
    .await;
    postern.add_user(LOGIN, "demo").await;
    let ca = postern.ca_path.display();
    let config = postern.config_path.display();
    println!("\npostern's demo is running.\n");
    println!("1. Open https://localhost:{portal_port}/ (the certificate is the demo's own:");
    println!("   accept the warning, or trust {ca}).");
    println!("2. Sign in as {LOGIN} with the primary password {PASSWORD}");
    println!("   and set up two-step verification with any authenticator app.");
    println!("3. Create an app password, then set up a mail client with it:");
    println!("     user name  {LOGIN}");
    println!(
        "     IMAP       localhost:{} (SSL/TLS), or :{} (STARTTLS)",
        ports[0], ports[1]
    );
    println!(
        "     SMTP       localhost:{} (SSL/TLS), or :{} (STARTTLS)",
        ports[2], ports[3]
    );
    println!("\nThe command line works on the same store:");
    println!("   target/release/postern --config {config} app-password list {LOGIN}");
    println!("\nCtrl-C stops everything.");
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping");
    postern.stop().await;
    drop(dovecot);
}
