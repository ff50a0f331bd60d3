//! A browser for load on the self-service portal: one keep-alive HTTPS connection, its
//! own cookies (the double-submit CSRF cookie, the session), the form token, GET and
//! form POSTs. Bodies are read whole, as a browser would, and dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct PortalClient {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
    csrf: String,
}

impl PortalClient {
    /// A browser for the portal at `base` (`https://localhost:port`), trusting `ca`.
    pub fn new(base: &str, ca: &Path) -> Result<PortalClient> {
        let http = postern::tls::https_client(Some(ca), Duration::from_secs(30))?;
        Ok(PortalClient {
            http,
            base: base.to_string(),
            cookies: Vec::new(),
            csrf: String::new(),
        })
    }

    /// `GET path`, timed: the status, the body and how long the whole response took.
    pub async fn get(&mut self, path: &str) -> Result<(u16, String, Duration)> {
        let started = Instant::now();
        let request = self.http.get(format!("{}{path}", self.base));
        let (status, body) = self.send(request).await?;
        Ok((status, body, started.elapsed()))
    }

    /// `POST path` with `fields` and the form token, URL-encoded, timed.
    pub async fn post(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Result<(u16, String, Duration)> {
        let mut body = format!("csrf={}", encode(&self.csrf));
        for (name, value) in fields {
            body.push_str(&format!("&{name}={}", encode(value)));
        }
        let started = Instant::now();
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        let (status, body) = self.send(request).await?;
        Ok((status, body, started.elapsed()))
    }

    /// Opens the sign-in page, then signs in with the primary password (the portal
    /// checks it upstream): the time of the POST alone.
    pub async fn sign_in(&mut self, login: &str, password: &str) -> Result<Duration> {
        let (status, page, _) = self.get("/").await?;
        if status != 200 {
            bail!("sign-in page: {status}");
        }
        self.csrf = csrf_of(&page).context("no form token on the sign-in page")?;
        let (status, _, took) = self
            .post("/sign-in", &[("login", login), ("password", password)])
            .await?;
        if status != 303 {
            bail!("sign-in as {login}: {status}");
        }
        // The signed-in pages carry the session's own token.
        let (_, page, _) = self.get("/").await?;
        self.csrf = csrf_of(&page).context("no form token after sign-in")?;
        Ok(took)
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Result<(u16, String)> {
        let cookie = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let request = if cookie.is_empty() {
            request
        } else {
            request.header("cookie", cookie)
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        for set in response.headers().get_all("set-cookie") {
            let Some((name, value)) = set
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .and_then(|pair| pair.split_once('='))
            else {
                continue;
            };
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        let body = response.text().await?;
        Ok((status, body))
    }
}

/// The value of a form's `csrf` field on `page`.
fn csrf_of(page: &str) -> Option<String> {
    page.split("name=\"csrf\" value=\"")
        .nth(1)?
        .split('"')
        .next()
        .map(str::to_string)
}

/// `application/x-www-form-urlencoded` for one value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
