//! What an admin runs to see that tokens work before users need them: `check-config`
//! reads each `[oauth2.*]` key and secret and signs a test assertion (nothing is sent),
//! and `postern oauth2 test NAME --user LOGIN` fetches a token and logs in to each upstream
//! that uses the provider, saying what went wrong in one sentence.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::provider::Provider;
use super::Tokens;
use crate::config::Config;
use crate::imap::upstream as imap_upstream;
use crate::ops::metrics::Metrics;
use crate::smtp::upstream as smtp_upstream;
use crate::upstream::Upstream;

/// Problems with the providers' files: unreadable, or a key that does not sign.
pub fn key_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, section) in &config.oauth2 {
        let checked = Provider::new(name, section).and_then(|provider| provider.check());
        if let Err(error) = checked {
            problems.push(format!("[oauth2.{name}] {error}"));
        }
    }
    problems
}

/// Fetches a token from `[oauth2.name]` to act as `upstream_user`, then logs in with it to
/// each upstream that uses the provider. One line per step: `Ok` what worked, `Err` what
/// did not, in a sentence.
pub async fn test(config: &Config, name: &str, upstream_user: &str) -> Vec<Result<String, String>> {
    let mut lines = Vec::new();
    if !config.oauth2.contains_key(name) {
        lines.push(Err(format!("there is no [oauth2.{name}] section")));
        return lines;
    }
    let tokens = match Tokens::new(&config.oauth2, Metrics::new()) {
        Ok(tokens) => tokens,
        Err(error) => {
            lines.push(Err(format!("[oauth2.{name}]: {error}")));
            return lines;
        }
    };
    match tokens.token(name, upstream_user).await {
        Ok(_) => lines.push(Ok(format!(
            "[oauth2.{name}]: a token to act as {upstream_user} was issued"
        ))),
        Err(error) => {
            lines.push(Err(format!("[oauth2.{name}]: {error}")));
            return lines;
        }
    }
    // The test login speaks for this host (XCLIENT refuses port 0).
    let here = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    for (protocol, section) in [
        ("imap", &config.upstream.imap),
        ("smtp", &config.upstream.smtp),
    ] {
        let Some(section) = section else { continue };
        if section.oauth2.as_deref() != Some(name) {
            continue;
        }
        let what = format!("[upstream.{protocol}] {}", section.address);
        let upstream = match Upstream::new(section, Some(Arc::clone(&tokens))) {
            Ok(upstream) => upstream,
            Err(error) => {
                lines.push(Err(format!("{what}: {error}")));
                continue;
            }
        };
        let result = if protocol == "imap" {
            let request = imap_upstream::LoginRequest {
                upstream_user,
                client: here,
                client_id: &[],
            };
            imap_upstream::login(&upstream, &request).await.map(|_| ())
        } else {
            let request = smtp_upstream::LoginRequest {
                upstream_user,
                client: here,
                client_helo: None,
                login: upstream_user,
            };
            match smtp_upstream::login(&upstream, &config.smtp.hostname, &request).await {
                Ok((conn, _)) => {
                    conn.quit().await;
                    Ok(())
                }
                Err(error) => Err(error),
            }
        };
        lines.push(match result {
            Ok(()) => Ok(format!(
                "{what}: logged in as {upstream_user} with {}",
                section_mechanism(section)
            )),
            Err(crate::upstream::UpstreamError::Refused) => Err(format!(
                "{what}: the server refused the token for {upstream_user} (is the application allowed this mailbox?)"
            )),
            Err(error) => Err(format!("{what}: {error}")),
        });
    }
    lines
}

fn section_mechanism(section: &crate::config::UpstreamConfig) -> &'static str {
    match section.auth {
        crate::config::UpstreamAuth::Oauthbearer => "OAUTHBEARER",
        _ => "XOAUTH2",
    }
}
