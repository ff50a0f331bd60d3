//! The mail a user gets when something changes in their account's security from the
//! portal: an app password created, a second factor added or removed. It says what, when,
//! from which address and browser, and where to undo it, in the language of the page that
//! made the change. It goes through the upstream submission server, logged in as the user
//! with postern's master credentials (the path a message from the user's own mail app
//! takes), from the user's address to itself unless `[portal.notifications] from` says
//! otherwise. Sending runs beside the page, which never waits for it; the outcome is
//! logged and counted (`postern_portal_notifications_total{result}`).

use std::net::SocketAddr;
use std::sync::Arc;

use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;

use super::browser::Browser;
use super::i18n::Messages;
use super::pages;
use super::Portal;
use crate::clock::now;
use crate::smtp::upstream::{self as smtp_upstream, LoginRequest};
use crate::store::User;
use crate::upstream::UpstreamError;

/// What changed.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// An app password with this name.
    AppPasswordCreated { name: &'a str },
    /// A second factor, as the catalogue words it (`mfa_totp_added`, ...), with the
    /// method's name when it has one (a passkey's).
    Mfa {
        what: &'static str,
        name: Option<&'a str>,
    },
}

/// Tells `user` about `change`, made from `browser`, if notifications are on and the user
/// has an address. Returns at once; the mail is sent by a task of its own.
pub fn send(portal: &Arc<Portal>, user: &User, browser: &Browser, change: Change<'_>) {
    let settings = &portal.config.notifications;
    if !settings.enabled || portal.gateway.smtp_upstream().is_none() {
        return;
    }
    let Some(to) = address(user) else {
        tracing::debug!(login = ?user.login, "portal: no address to notify");
        return;
    };
    let from = settings.from.clone().unwrap_or_else(|| to.clone());
    let message = match compose(portal, browser, &from, &to, change) {
        Ok(message) => message,
        Err(error) => {
            tracing::error!(%error, "portal: a notification did not compose");
            return;
        }
    };
    let portal = portal.clone();
    let upstream_user = user.upstream_user.clone();
    let login = user.login.clone();
    let client = browser.client;
    tokio::spawn(async move {
        let sent = deliver(
            &portal,
            &upstream_user,
            &login,
            client,
            &from,
            &to,
            &message,
        )
        .await;
        let result = match &sent {
            Ok(()) => "sent",
            Err(_) => "failed",
        };
        portal
            .gateway
            .metrics
            .portal_notifications
            .with_label_values(&[result])
            .inc();
        match sent {
            Ok(()) => tracing::info!(login = ?login, "portal: notification sent"),
            Err(error) => {
                tracing::warn!(login = ?login, %error, "portal: notification not sent")
            }
        }
    });
}

/// Where the user reads mail: their first sender address, else a login that is one.
fn address(user: &User) -> Option<String> {
    user.addresses
        .first()
        .cloned()
        .or_else(|| user.login.contains('@').then(|| user.login.clone()))
}

/// The message, headers and body, CRLF line ends.
fn compose(
    portal: &Portal,
    browser: &Browser,
    from: &str,
    to: &str,
    change: Change<'_>,
) -> std::io::Result<Vec<u8>> {
    let t: &Messages = browser.t;
    let (subject, intro, what) = match change {
        Change::AppPasswordCreated { name } => (
            t.notify_created_subject,
            t.notify_created,
            format!("{}: {name}", t.app_passwords),
        ),
        Change::Mfa { what, name } => (
            t.notify_mfa_subject,
            t.notify_mfa,
            match name {
                Some(name) => format!("{what}: {name}"),
                None => what.to_string(),
            },
        ),
    };
    let origin = match &browser.agent {
        Some(agent) => format!("{} ({agent})", browser.client.ip()),
        None => browser.client.ip().to_string(),
    };
    let body = format!(
        "{intro}\n\n{}: {what}\n{}: {}\n{}: {origin}\n\n{}\n{}/\n",
        t.notify_what,
        t.notify_when,
        pages::time(now()),
        t.notify_where,
        t.notify_advice,
        portal.config.public_url.trim_end_matches('/'),
    );
    let host = from.rsplit_once('@').map_or("localhost", |(_, host)| host);
    MessageBuilder::new()
        .from(("postern", from))
        .to(to)
        .subject(subject)
        .date(now())
        .message_id(format!("{}@{host}", uuid::Uuid::new_v4()))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .text_body(body)
        .write_to_vec()
}

/// Logs in upstream as the user and submits `message` from `from` to `to`.
async fn deliver(
    portal: &Portal,
    upstream_user: &str,
    login: &str,
    client: SocketAddr,
    from: &str,
    to: &str,
    message: &[u8],
) -> Result<(), UpstreamError> {
    let gateway = &portal.gateway;
    let upstream = gateway
        .smtp_upstream()
        .ok_or(UpstreamError::Unsupported("an [upstream.smtp] section"))?;
    let request = LoginRequest {
        upstream_user,
        client,
        client_helo: None,
        login,
    };
    let (mut conn, _) = smtp_upstream::login(&upstream, &gateway.smtp.hostname, &request).await?;
    for (line, phase) in [
        (format!("MAIL FROM:<{from}>\r\n"), "MAIL"),
        (format!("RCPT TO:<{to}>\r\n"), "RCPT"),
    ] {
        let reply = conn.command(line.as_bytes()).await?;
        if !reply.is_positive_completion() {
            return Err(UpstreamError::Rejected {
                phase,
                code: reply.code,
            });
        }
    }
    let reply = conn.command(b"DATA\r\n").await?;
    if reply.code != 354 {
        return Err(UpstreamError::Rejected {
            phase: "DATA",
            code: reply.code,
        });
    }
    conn.send(&dot_stuffed(message)).await?;
    conn.send(b".\r\n").await?;
    conn.flush().await?;
    let reply = conn.read_reply().await?;
    if !reply.is_positive_completion() {
        return Err(UpstreamError::Rejected {
            phase: "message",
            code: reply.code,
        });
    }
    conn.quit().await;
    Ok(())
}

/// The message as DATA carries it: a line that starts with a dot gets another, and the
/// last line ends in CRLF.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &byte in message {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_starting_with_a_dot_are_stuffed() {
        assert_eq!(dot_stuffed(b".a\r\nb\r\n..c"), b"..a\r\nb\r\n...c\r\n");
        assert_eq!(dot_stuffed(b"x\r\n"), b"x\r\n");
    }
}
