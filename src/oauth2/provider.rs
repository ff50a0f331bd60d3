//! One `[oauth2.NAME]` identity provider: how a token request is made for its grant and
//! client authentication, and the HTTP client that sends it.
//!
//! - Client credentials (RFC 6749 4.4), Microsoft 365's app token: the client proves
//!   itself with its secret (`client_secret_file`) or with an assertion its private key
//!   signs (RFC 7523 2.2, `private_key_file`; with `certificate_file` the header carries
//!   the certificate's thumbprint, as Entra ID wants).
//! - JWT bearer (RFC 7523 2.1), Google's domain-wide delegation: an assertion signed by
//!   the service account's key, `sub` = the user to act as.
//!
//! Keys and secrets are read from their files at each request (rotated without restart)
//! and wiped from memory after use; nothing of them, nor the token, reaches a log. The
//! HTTP client verifies TLS against the system roots or `ca_file`, follows no redirect,
//! and gives up after `timeout`; plain HTTP is allowed only to a loopback token URL.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use zeroize::Zeroizing;

use super::{Token, TokenError};
use crate::auth::Secret;
use crate::config::{OAuth2Config, OAuth2Grant};

/// Longest token endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// How long a signed assertion is valid.
const ASSERTION_LIFETIME: u64 = 300;

/// One identity provider.
pub struct Provider {
    name: String,
    config: OAuth2Config,
    token_url: String,
    client: reqwest::Client,
}

/// What a private key file holds: a PEM key, or Google's JSON key file around one.
struct SigningKey {
    pem: Zeroizing<String>,
    /// Google's `private_key_id`, the assertion's `kid`.
    key_id: Option<String>,
    /// Google's `client_email`, the assertion's issuer.
    client_email: Option<String>,
}

/// The claims of an assertion postern signs.
#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// A token endpoint's answer (RFC 6749 5.1 and 5.2).
#[derive(serde::Deserialize)]
struct Answer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Provider {
    /// The provider of `[oauth2.name]`, its HTTP client built once.
    pub fn new(name: &str, config: &OAuth2Config) -> Result<Provider, TokenError> {
        let token_url = config.token_url();
        let tls = crate::tls::client_config(config.ca_file.as_deref(), &[])
            .map_err(|error| TokenError::Tls(error.to_string()))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .https_only(token_url.starts_with("https://"))
            .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| TokenError::Tls(error.to_string()))?;
        Ok(Provider {
            name: name.to_string(),
            config: config.clone(),
            token_url,
            client,
        })
    }

    pub fn grant(&self) -> OAuth2Grant {
        self.config.grant()
    }

    /// Asks the token endpoint for a token to act as `user`.
    pub async fn fetch(&self, user: &str) -> Result<Token, TokenError> {
        let form = self.request(user)?;
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = self
            .client
            .post(&self.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&pairs)
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = answer.status().as_u16();
        let body = read_bounded(answer)
            .await
            .map_err(|error| self.unreachable(&error))?;
        let parsed: Option<Answer> = serde_json::from_slice(&body).ok();
        match parsed {
            Some(Answer {
                access_token: Some(access),
                expires_in,
                ..
            }) if (200..300).contains(&status) && !access.is_empty() => {
                let lifetime = Duration::from_secs(expires_in.unwrap_or(3600).max(1));
                Ok(Token::new(
                    Secret::new(access),
                    lifetime,
                    self.config.renew_before,
                ))
            }
            Some(Answer {
                error: Some(error),
                error_description,
                ..
            }) if (400..500).contains(&status) => Err(TokenError::Refused {
                status,
                error: printable(&error),
                description: error_description.as_deref().map(printable),
            }),
            _ => Err(TokenError::Malformed { status }),
        }
    }

    fn unreachable(&self, error: &reqwest::Error) -> TokenError {
        // reqwest's text names the URL and the cause; no secret is in either.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        TokenError::Unreachable {
            url: self.token_url.clone(),
            reason,
        }
    }

    /// The form of a token request for `user`.
    fn request(&self, user: &str) -> Result<Vec<(&'static str, Zeroizing<String>)>, TokenError> {
        let config = &self.config;
        let scope = config.scope();
        let mut form = vec![];
        match config.grant() {
            OAuth2Grant::ClientCredentials => {
                form.push(("grant_type", "client_credentials".to_string().into()));
                form.push(("client_id", config.client_id.clone().into()));
                form.push(("scope", scope.into()));
                match (&config.client_secret_file, &config.private_key_file) {
                    (Some(file), _) => {
                        let secret = read_secret(file)?;
                        form.push(("client_secret", secret));
                    }
                    (None, Some(file)) => {
                        let assertion = self.client_assertion(file)?;
                        form.push((
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                                .to_string()
                                .into(),
                        ));
                        form.push(("client_assertion", assertion));
                    }
                    (None, None) => {
                        return Err(TokenError::Key {
                            path: PathBuf::new(),
                            reason: "neither client_secret_file nor private_key_file is set".into(),
                        })
                    }
                }
            }
            OAuth2Grant::JwtBearer => {
                let file = config
                    .private_key_file
                    .as_deref()
                    .ok_or_else(|| TokenError::Key {
                        path: PathBuf::new(),
                        reason: "grant jwt_bearer needs private_key_file".into(),
                    })?;
                let key = read_key(file)?;
                let issuer = key.client_email.as_deref().unwrap_or(&config.client_id);
                let now = unix_now();
                let claims = Claims {
                    iss: issuer,
                    sub: user,
                    aud: &self.token_url,
                    iat: now,
                    exp: now + ASSERTION_LIFETIME,
                    nbf: None,
                    jti: None,
                    scope: Some(&scope),
                };
                let mut header = Header::new(Algorithm::RS256);
                header.kid = key.key_id.clone();
                let assertion = sign(file, &key, &header, &claims)?;
                form.push((
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer"
                        .to_string()
                        .into(),
                ));
                form.push(("assertion", assertion));
            }
        }
        Ok(form)
    }

    /// A client assertion (RFC 7523 2.2): the client's own identity, signed by its key,
    /// with the certificate's thumbprints in the header when there is a certificate.
    fn client_assertion(&self, file: &Path) -> Result<Zeroizing<String>, TokenError> {
        let config = &self.config;
        let key = read_key(file)?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key.key_id.clone();
        if let Some(certificate) = &config.certificate_file {
            let der = certificate_der(certificate)?;
            let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
            let sha256 = ring::digest::digest(&ring::digest::SHA256, &der);
            header.x5t = Some(URL_SAFE_NO_PAD.encode(sha1));
            header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(sha256));
        }
        let now = unix_now();
        let claims = Claims {
            iss: &config.client_id,
            sub: &config.client_id,
            aud: &self.token_url,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
            nbf: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            scope: None,
        };
        sign(file, &key, &header, &claims)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the secret or key and signs an assertion, sending nothing: whether a token
    /// request could be made.
    pub fn check(&self) -> Result<(), TokenError> {
        self.request("postern-check@invalid").map(|_| ())
    }
}

/// Signs `claims` with the key read from `file`.
fn sign(
    file: &Path,
    key: &SigningKey,
    header: &Header,
    claims: &Claims<'_>,
) -> Result<Zeroizing<String>, TokenError> {
    let encoding =
        EncodingKey::from_rsa_pem(key.pem.as_bytes()).map_err(|error| TokenError::Key {
            path: file.to_path_buf(),
            reason: error.to_string(),
        })?;
    jsonwebtoken::encode(header, claims, &encoding)
        .map(Zeroizing::new)
        .map_err(|error| TokenError::Key {
            path: file.to_path_buf(),
            reason: error.to_string(),
        })
}

/// The first line of a secret file.
fn read_secret(file: &Path) -> Result<Zeroizing<String>, TokenError> {
    let text = read(file)?;
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or("").to_string(),
    ))
}

/// A PEM private key, or Google's JSON key file (`private_key`, `private_key_id`,
/// `client_email`).
fn read_key(file: &Path) -> Result<SigningKey, TokenError> {
    let text = read(file)?;
    if text.trim_start().starts_with('{') {
        #[derive(serde::Deserialize)]
        struct GoogleKey {
            private_key: String,
            private_key_id: Option<String>,
            client_email: Option<String>,
        }
        let parsed: GoogleKey = serde_json::from_str(&text).map_err(|_| TokenError::Key {
            path: file.to_path_buf(),
            reason: "a JSON key file needs private_key (and client_email)".into(),
        })?;
        return Ok(SigningKey {
            pem: Zeroizing::new(parsed.private_key),
            key_id: parsed.private_key_id,
            client_email: parsed.client_email,
        });
    }
    if !text.contains("PRIVATE KEY-----") {
        return Err(TokenError::Key {
            path: file.to_path_buf(),
            reason: "expected a PEM private key or a JSON key file".into(),
        });
    }
    Ok(SigningKey {
        pem: text,
        key_id: None,
        client_email: None,
    })
}

/// The DER of the first certificate in a PEM file.
fn certificate_der(file: &Path) -> Result<Vec<u8>, TokenError> {
    let text = read(file)?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|_| TokenError::Key {
            path: file.to_path_buf(),
            reason: "not a PEM certificate".into(),
        })?;
    Ok(pem.contents)
}

fn read(file: &Path) -> Result<Zeroizing<String>, TokenError> {
    std::fs::read_to_string(file)
        .map(Zeroizing::new)
        .map_err(|source| TokenError::File {
            path: file.to_path_buf(),
            source,
        })
}

/// Reads an answer body up to [`MAX_ANSWER`] bytes.
async fn read_bounded(mut answer: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        let room = MAX_ANSWER.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// A provider's error text as a log line may carry it: printable, at most 200 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
