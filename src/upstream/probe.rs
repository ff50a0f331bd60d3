//! `postern check-config --probe`: connects to each configured upstream as a login would
//! (TCP, TLS or STARTTLS, the greeting, the capabilities) and says in one sentence whether
//! that works, so a certificate or address problem shows before the first user's login.

use crate::config::{Config, UpstreamConfig};
use crate::protocol::Protocol;
use crate::upstream::Upstream;
use crate::{imap, pop3, smtp};

/// What one upstream answered.
#[derive(Debug)]
pub struct ProbeReport {
    /// `[upstream.imap]`.
    pub section: String,
    pub address: String,
    /// What worked, or what did not, in one sentence.
    pub outcome: Result<String, String>,
}

/// Probes every configured upstream, one after the other.
pub async fn probe_all(config: &Config) -> Vec<ProbeReport> {
    let mut reports = Vec::new();
    for (protocol, section) in [
        (Protocol::Imap, &config.upstream.imap),
        (Protocol::Smtp, &config.upstream.smtp),
        (Protocol::Pop3, &config.upstream.pop3),
    ] {
        if let Some(section) = section {
            reports.push(ProbeReport {
                section: format!("[upstream.{}]", protocol.as_str()),
                address: section.address.clone(),
                outcome: probe(protocol, section, &config.smtp.hostname).await,
            });
        }
    }
    reports
}

async fn probe(
    protocol: Protocol,
    section: &UpstreamConfig,
    hostname: &str,
) -> Result<String, String> {
    // The probe connects and greets; it logs in as nobody, so it needs no token.
    let upstream = Upstream::new(section, None).map_err(|error| error.to_string())?;
    let tls = match upstream.tls {
        crate::config::UpstreamTls::None => "without TLS",
        _ => "TLS and certificate ok",
    };
    match protocol {
        Protocol::Imap => {
            imap::upstream::connect(&upstream)
                .await
                .map_err(|error| error.to_string())?;
            Ok(format!("{tls}, IMAP greeting ok"))
        }
        Protocol::Pop3 => {
            pop3::upstream::connect(&upstream)
                .await
                .map_err(|error| error.to_string())?;
            Ok(format!("{tls}, POP3 greeting ok"))
        }
        Protocol::Smtp => {
            let capabilities = smtp::upstream::probe(&upstream, hostname)
                .await
                .map_err(|error| error.to_string())?;
            Ok(format!(
                "{tls}, EHLO ok, AUTH {}",
                if capabilities.auth.is_empty() {
                    "not offered".to_string()
                } else {
                    capabilities.auth.join(" ")
                }
            ))
        }
    }
}
