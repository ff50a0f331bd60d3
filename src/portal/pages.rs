//! The portal's pages, compiled from `templates/` (askama: checked at build time, every
//! value escaped), and the posted forms they send back.

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::i18n::{self, Messages};

/// The sign-in page.
#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignInPage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    /// The links to the signed-in pages, once past the second factor.
    pub nav: bool,
    pub login: &'a str,
    pub error: Option<&'static str>,
    pub notice: Option<&'static str>,
    /// Signing in is the OpenID provider's: a button to it instead of the form.
    pub oidc: bool,
}

/// What the TOTP set-up shows.
pub struct TotpSetup {
    /// Base32, as authenticator apps take it typed.
    pub secret: String,
    /// The otpauth URL as an inline SVG QR code.
    pub qr_svg: String,
}

/// The second-factor page: set-up (TOTP's QR code and key, or a passkey) or
/// verification (a passkey, or a code).
#[derive(Template)]
#[template(path = "mfa.html")]
pub struct MfaPage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    /// The links to the signed-in pages, once past the second factor.
    pub nav: bool,
    /// The user has no second factor yet: TOTP's set-up, or a passkey instead.
    pub first: bool,
    /// A TOTP secret being set up.
    pub setup: Option<TotpSetup>,
    /// Verification offers a passkey.
    pub passkeys: bool,
    /// Verification takes a code (TOTP or recovery).
    pub codes: bool,
    /// Among the codes, TOTP's.
    pub totp: bool,
    pub error: Option<&'static str>,
}

/// One passkey in the list.
pub struct PasskeyRow {
    pub id: i64,
    pub name: String,
    pub created: String,
    pub last_used: String,
}

/// The sign-in methods page: TOTP, passkeys, recovery codes left.
#[derive(Template)]
#[template(path = "security.html")]
pub struct SecurityPage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    pub nav: bool,
    pub totp: bool,
    pub passkeys: Vec<PasskeyRow>,
    pub recovery_codes: i64,
    pub error: Option<&'static str>,
}

/// The recovery codes, shown once.
#[derive(Template)]
#[template(path = "recovery.html")]
pub struct RecoveryPage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    /// The links to the signed-in pages, once past the second factor.
    pub nav: bool,
    pub codes: Vec<String>,
}

/// One app password in the list.
pub struct Row {
    pub id: i64,
    pub name: String,
    pub scopes: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub live: bool,
    /// Revoked or expired, when not live.
    pub state: &'static str,
}

/// A password just created, shown once.
pub struct NewPassword {
    pub name: String,
    /// In groups, as typed: `abcd efgh ijkl mnop`.
    pub password: String,
    /// Without spaces, for the Copy button.
    pub compact: String,
    /// The single-use link to an Apple configuration profile, when the scopes fit one.
    pub profile: Option<ProfileOffer>,
}

/// The Apple configuration profile offered for a new password: its single-use link, and
/// the link as a QR code.
pub struct ProfileOffer {
    pub url: String,
    pub qr_svg: String,
}

/// The app passwords page: the list, the create form, and a new password once.
#[derive(Template)]
#[template(path = "app_passwords.html")]
pub struct AppPasswordsPage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    /// The links to the signed-in pages, once past the second factor.
    pub nav: bool,
    pub login: &'a str,
    pub rows: Vec<Row>,
    pub new_password: Option<NewPassword>,
    pub error: Option<&'static str>,
    pub imap: &'a str,
    pub smtp: &'a str,
}

/// A page that goes on to `next` at once (a same-site navigation, after a cross-site one).
#[derive(Template)]
#[template(path = "continue.html")]
pub struct ContinuePage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    pub nav: bool,
    pub next: &'a str,
}

/// A page that only says something went wrong.
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub t: &'static Messages,
    pub csrf: &'a str,
    pub signed_in: bool,
    /// The links to the signed-in pages, once past the second factor.
    pub nav: bool,
    pub message: &'static str,
}

/// Renders a page; a template failure is logged and answered with a plain 500.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::VARY, "Accept-Language, Cookie"),
            ],
            Html(html),
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "portal: a page did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The page for a failure of postern's own (the store, a template): try later.
pub fn failure(t: &'static Messages) -> Response {
    message(t, StatusCode::INTERNAL_SERVER_ERROR, t.error)
}

/// A form without the right CSRF token.
pub fn forbidden(t: &'static Messages) -> Response {
    message(t, StatusCode::FORBIDDEN, t.forbidden)
}

/// A page that says `text` with `status`.
pub fn message(t: &'static Messages, status: StatusCode, text: &'static str) -> Response {
    render(
        status,
        &MessagePage {
            t,
            csrf: "",
            signed_in: false,
            nav: false,
            message: text,
        },
    )
}

/// Any other path.
pub async fn not_found(headers: axum::http::HeaderMap) -> Response {
    let t = language(&headers);
    message(t, StatusCode::NOT_FOUND, t.not_found)
}

/// A GET of an address that only takes forms: the address bar of a page that answered a
/// form (reloaded, or its language switched) goes home, where the query (`?lang=`) still
/// applies; any other method gets 405.
pub async fn not_a_page(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    if method != axum::http::Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let home = match uri.query() {
        Some(query) if query.len() <= 64 => format!("/?{query}"),
        _ => "/".to_string(),
    };
    axum::response::Redirect::to(&home).into_response()
}

/// A posted form (`application/x-www-form-urlencoded`); a field may repeat.
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Fields(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Headers on every answer: no script but the portal's own file, no inline style, no
/// framing, HTTPS only from now on, nothing leaked in a Referer.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// The portal's stylesheet, compiled in.
pub async fn stylesheet() -> Response {
    static_file(
        "text/css; charset=utf-8",
        include_str!("../../static/portal.css"),
    )
}

/// The Copy button's script, compiled in.
pub async fn script() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../../static/copy.js"),
    )
}

/// The passkey ceremonies' script, compiled in.
pub async fn passkey_script() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../../static/passkey.js"),
    )
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `text` as an inline SVG QR code (a phone's camera reads it), or `None` if it is too
/// long for one.
pub fn qr_svg(text: &str) -> Option<String> {
    let svg = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map(|code| {
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build()
        })
        .map_err(|error| tracing::warn!(%error, "portal: QR code"))
        .ok()?;
    Some(svg[svg.find("<svg").unwrap_or(0)..].to_string())
}

/// The catalogue for a request that has no `Browser` (no session): the language
/// cookie, else Accept-Language.
pub fn language(headers: &axum::http::HeaderMap) -> &'static Messages {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("postern_lang="));
    i18n::negotiate(
        cookie,
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// A time for people: `2026-12-07 14:03 UTC`.
pub fn time(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    format!("{} {} UTC", &text[..10], &text[11..16])
}
