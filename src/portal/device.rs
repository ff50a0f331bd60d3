//! Setting a device up in one step: Thunderbird's autoconfig
//! (`/.well-known/autoconfig/mail/config-v1.1.xml` and `/mail/config-v1.1.xml`) and
//! Outlook's autodiscover (`POST /autodiscover/autodiscover.xml`) tell a mail app the
//! servers of `[portal.client_settings]` (implicit TLS) and that the login is the address.

use std::sync::Arc;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Portal;

/// Thunderbird's answer.
#[derive(Template)]
#[template(path = "autoconfig.xml")]
struct Autoconfig<'a> {
    domain: &'a str,
    imap: (&'a str, &'a str),
    smtp: (&'a str, &'a str),
}

/// Outlook's answer.
#[derive(Template)]
#[template(path = "autodiscover.xml")]
struct Autodiscover<'a> {
    email: &'a str,
    imap: (&'a str, &'a str),
    smtp: (&'a str, &'a str),
}

#[derive(serde::Deserialize)]
pub struct AutoconfigQuery {
    emailaddress: Option<String>,
}

/// `host:port` as its two parts.
fn split(address: &str) -> (&str, &str) {
    address.rsplit_once(':').unwrap_or((address, ""))
}

/// Whether `text` looks like one mail address (no markup, one `@`, a dot in the domain).
fn address(text: &str) -> Option<&str> {
    let text = text.trim();
    let (local, domain) = text.split_once('@')?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 254
            && s.chars()
                .all(|c| c.is_alphanumeric() || "._+-'".contains(c))
    };
    (plain(local) && plain(domain) && domain.contains('.')).then_some(text)
}

fn xml(page: &impl Template) -> Response {
    match page.render() {
        Ok(text) => (
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "portal: a device configuration did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Thunderbird: `?emailaddress=` names the account.
pub async fn autoconfig(
    State(portal): State<Arc<Portal>>,
    Query(query): Query<AutoconfigQuery>,
) -> Response {
    let settings = &portal.config.client_settings;
    let email = query.emailaddress.unwrap_or_default();
    let domain = address(&email)
        .and_then(|a| a.split_once('@'))
        .map_or("", |(_, domain)| domain);
    xml(&Autoconfig {
        domain,
        imap: split(&settings.imap),
        smtp: split(&settings.smtp),
    })
}

/// Outlook: the request body's `<EMailAddress>` names the account.
pub async fn autodiscover(State(portal): State<Arc<Portal>>, body: Bytes) -> Response {
    let settings = &portal.config.client_settings;
    let body = String::from_utf8_lossy(&body);
    let email = body
        .split_once("<EMailAddress>")
        .and_then(|(_, rest)| rest.split_once("</EMailAddress>"))
        .and_then(|(value, _)| address(value));
    let Some(email) = email else {
        return (StatusCode::BAD_REQUEST, "expected an <EMailAddress>\n").into_response();
    };
    xml(&Autodiscover {
        email,
        imap: split(&settings.imap),
        smtp: split(&settings.smtp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_addresses_are_taken() {
        assert_eq!(address(" alice@example.com "), Some("alice@example.com"));
        assert_eq!(address("a<b>@example.com"), None);
        assert_eq!(address("alice@localhost"), None);
        assert_eq!(address("alice"), None);
    }
}
