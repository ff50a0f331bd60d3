//! Setting up an iPhone, iPad or Mac in one step: right after an app password is made, the
//! page offers an Apple configuration profile (`.mobileconfig`, IMAP and SMTP accounts
//! carrying the new password) behind a single-use link, as a button and as a QR code a
//! phone's camera opens. The link works once, for [`LINK_LIFETIME`] seconds. The store
//! keeps the token's digest and the password sealed with a key derived from the token, so
//! neither a copy of the database nor a log line can open a link or read a password.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use plist::{Dictionary, Value};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};

use super::pages::{self, ProfileOffer};
use super::token::{random_token, token_hash};
use super::{ClientAddr, Portal};
use crate::auth::Secret;
use crate::clock::now;
use crate::ops::audit;
use crate::store::{DeviceLink, Scope, StoreError, User};

/// How long a profile link works, in seconds.
pub const LINK_LIFETIME: i64 = 10 * 60;

/// Whether a new app password with these scopes gets a profile: Apple Mail's account needs
/// IMAP; SMTP comes with it.
pub fn fits(scopes: &[Scope]) -> bool {
    scopes.contains(&Scope::Imap) && scopes.contains(&Scope::Smtp)
}

/// Makes the single-use link for app password `app_password_id` of `user`, carrying
/// `password`.
pub async fn offer(
    portal: &Portal,
    user: &User,
    app_password_id: i64,
    password: &Secret<String>,
) -> Result<ProfileOffer, StoreError> {
    let token = random_token();
    let link = DeviceLink {
        token_hash: token_hash(&token),
        user_id: user.id,
        app_password_id,
        sealed: seal(&token, app_password_id, password),
        expires_at: now() + LINK_LIFETIME,
    };
    portal
        .gateway
        .store
        .create_device_link(&link, now())
        .await?;
    let url = format!(
        "{}/device/{token}",
        portal.config.public_url.trim_end_matches('/')
    );
    let qr_svg = pages::qr_svg(&url).unwrap_or_default();
    Ok(ProfileOffer { url, qr_svg })
}

/// `GET /device/{token}`: the profile, once; afterwards, or after its time, a page that
/// says the link is spent.
pub async fn fetch(
    State(portal): State<Arc<Portal>>,
    Path(token): Path<String>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    let t = pages::language(&headers);
    let spent = || pages::message(t, StatusCode::GONE, t.link_spent);
    if !well_formed(&token) {
        return spent();
    }
    let store = &portal.gateway.store;
    let link = match store.take_device_link(&token_hash(&token), now()).await {
        Ok(Some(link)) => link,
        Ok(None) => return spent(),
        Err(error) => {
            tracing::warn!(%error, "portal: cannot read a device link");
            return pages::failure(t);
        }
    };
    let Some(password) = open(&token, link.app_password_id, &link.sealed) else {
        return spent();
    };
    let (app_password, login) = match store.app_password(link.app_password_id).await {
        Ok(Some(found)) => found,
        Ok(None) => return spent(),
        Err(error) => {
            tracing::warn!(%error, "portal: cannot look an app password up");
            return pages::failure(t);
        }
    };
    let user = match store.user(&login).await {
        Ok(Some(user)) if user.id == link.user_id && user.disabled_at.is_none() => user,
        Ok(_) => return spent(),
        Err(error) => {
            tracing::warn!(%error, "portal: cannot look a user up");
            return pages::failure(t);
        }
    };
    if app_password.revoked_at.is_some() || !app_password.is_live(now()) {
        return spent();
    }
    let settings = &portal.config.client_settings;
    let profile = Profile {
        user: &user,
        app_password_id: app_password.id,
        name: &app_password.name,
        password: &password,
        imap: &settings.imap,
        smtp: &settings.smtp,
    };
    let mut body = Vec::new();
    if let Err(error) = Value::Dictionary(profile.build()).to_writer_xml(&mut body) {
        tracing::error!(%error, "portal: a profile did not render");
        return pages::failure(t);
    }
    tracing::info!(login = ?user.login, app_password_id = app_password.id, client_ip = %client.ip(), "portal: device profile fetched");
    portal.gateway.audit.record(audit::Event {
        at: now(),
        kind: "device_profile_fetched",
        login: user.login.clone(),
        app_password_id: Some(app_password.id),
        protocol: None,
        client_ip: Some(client.ip().to_string()),
        client_id: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(200).collect()),
        result: Some("ok"),
        detail: None,
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-apple-aspen-config"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"postern.mobileconfig\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The key a link's token gives: the token's SHA-256 under a label of its own, so it is
/// not the digest the store keeps.
fn key(token: &str) -> LessSafeKey {
    let digest = Sha256::new()
        .chain_update(b"postern device link key\0")
        .chain_update(token.as_bytes())
        .finalize();
    // Unwrap: a SHA-256 digest is ChaCha20-Poly1305's key length.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &digest).expect("32-byte key"))
}

/// The password sealed for one link. Each token's key seals once, so the nonce is fixed;
/// the app password's id is bound in as associated data.
fn seal(token: &str, app_password_id: i64, password: &Secret<String>) -> String {
    let mut data = password.expose().as_bytes().to_vec();
    // Unwrap: sealing in place fails only for inputs over 256 GiB.
    key(token)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(app_password_id.to_be_bytes()),
            &mut data,
        )
        .expect("a short password seals");
    STANDARD.encode(data)
}

/// The password a link's token opens, if the token is the one it was sealed with.
fn open(token: &str, app_password_id: i64, sealed: &str) -> Option<Secret<String>> {
    let mut data = STANDARD.decode(sealed).ok()?;
    let plain = key(token)
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(app_password_id.to_be_bytes()),
            &mut data,
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok().map(Secret::new)
}

/// What goes into one profile.
struct Profile<'a> {
    user: &'a User,
    app_password_id: i64,
    /// The app password's name, which names the profile.
    name: &'a str,
    password: &'a Secret<String>,
    /// `host:port` of the IMAP and SMTP servers (implicit TLS).
    imap: &'a str,
    smtp: &'a str,
}

impl Profile<'_> {
    /// The profile's top dictionary: one `com.apple.mail.managed` payload.
    fn build(&self) -> Dictionary {
        let login = self.user.login.as_str();
        let address = self.user.addresses.first().map_or(login, String::as_str);
        let (imap_host, imap_port) = host_port(self.imap, 993);
        let (smtp_host, smtp_port) = host_port(self.smtp, 465);
        let identifier = format!("postern.{imap_host}.{}", self.app_password_id);
        let mut mail = Dictionary::new();
        for (key, value) in [
            ("PayloadType", Value::from("com.apple.mail.managed")),
            ("PayloadVersion", Value::from(1)),
            (
                "PayloadIdentifier",
                Value::from(format!("{identifier}.mail")),
            ),
            ("PayloadUUID", uuid()),
            ("PayloadDisplayName", Value::from(address)),
            ("EmailAccountDescription", Value::from(address)),
            ("EmailAccountType", Value::from("EmailTypeIMAP")),
            ("EmailAddress", Value::from(address)),
            (
                "IncomingMailServerAuthentication",
                Value::from("EmailAuthPassword"),
            ),
            ("IncomingMailServerHostName", Value::from(imap_host)),
            ("IncomingMailServerPortNumber", Value::from(imap_port)),
            ("IncomingMailServerUseSSL", Value::from(true)),
            ("IncomingMailServerUsername", Value::from(login)),
            (
                "IncomingPassword",
                Value::from(self.password.expose().as_str()),
            ),
            (
                "OutgoingMailServerAuthentication",
                Value::from("EmailAuthPassword"),
            ),
            ("OutgoingMailServerHostName", Value::from(smtp_host)),
            ("OutgoingMailServerPortNumber", Value::from(smtp_port)),
            ("OutgoingMailServerUseSSL", Value::from(true)),
            ("OutgoingMailServerUsername", Value::from(login)),
            (
                "OutgoingPassword",
                Value::from(self.password.expose().as_str()),
            ),
            ("OutgoingPasswordSameAsIncomingPassword", Value::from(true)),
        ] {
            mail.insert(key.to_string(), value);
        }
        let mut top = Dictionary::new();
        for (key, value) in [
            ("PayloadType", Value::from("Configuration")),
            ("PayloadVersion", Value::from(1)),
            ("PayloadIdentifier", Value::from(identifier.clone())),
            ("PayloadUUID", uuid()),
            (
                "PayloadDisplayName",
                Value::from(format!("Mail: {}", self.name)),
            ),
            (
                "PayloadDescription",
                Value::from(format!("{address} ({imap_host})")),
            ),
            ("PayloadOrganization", Value::from(imap_host)),
            ("PayloadRemovalDisallowed", Value::from(false)),
            (
                "PayloadContent",
                Value::Array(vec![Value::Dictionary(mail)]),
            ),
        ] {
            top.insert(key.to_string(), value);
        }
        top
    }
}

/// `host:port` as its parts; the port `default` when absent or not a number.
fn host_port(address: &str, default: u16) -> (&str, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap_or(default)),
        None => (address, default),
    }
}

fn uuid() -> Value {
    Value::from(uuid::Uuid::new_v4().to_string().to_uppercase())
}

/// A token as it appears in a link (32 bytes, URL-safe base64): checked before any lookup.
fn well_formed(token: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(token)
        .is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_password_opens_with_its_token_and_id_only() {
        let password = Secret::new("abcd efgh ijkl mnop".to_string());
        let sealed = seal("token-one", 7, &password);
        assert!(!sealed.contains("abcd"));
        assert_eq!(
            open("token-one", 7, &sealed).map(|p| p.expose().clone()),
            Some("abcd efgh ijkl mnop".to_string())
        );
        assert!(open("token-two", 7, &sealed).is_none());
        assert!(open("token-one", 8, &sealed).is_none());
        assert!(open("token-one", 7, "not base64!").is_none());
    }

    #[test]
    fn ports_default_when_absent() {
        assert_eq!(
            host_port("mail.example.com:10993", 993),
            ("mail.example.com", 10993)
        );
        assert_eq!(
            host_port("mail.example.com", 993),
            ("mail.example.com", 993)
        );
    }
}
