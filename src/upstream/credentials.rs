//! The credentials postern logs in upstream with on a user's behalf, from the configured
//! login mode: the one place that reads `[upstream.*] auth`. Each protocol's upstream
//! login asks it for a SASL response (PLAIN, XOAUTH2, OAUTHBEARER) or a name and password,
//! and tells it when the upstream refused a token.

use std::path::PathBuf;
use std::sync::Arc;

use super::UpstreamError;
use crate::auth::Secret;
use crate::config::{UpstreamAuth, UpstreamConfig};
use crate::oauth2::{Token, Tokens};
use crate::sasl;

/// How postern authenticates upstream, as `[upstream.*]` configures it.
#[derive(Debug, Clone)]
pub struct UpstreamLogin {
    auth: UpstreamAuth,
    /// The upstream account allowed to log in as any user.
    master_user: String,
    /// For `master-login`: `{user}` and `{master}` are replaced.
    master_login_format: String,
    /// Read at each login, so rotating it needs no restart.
    master_password_file: PathBuf,
    /// With tokens: the `[oauth2.NAME]` section and the gateway's tokens.
    oauth2: Option<(String, Arc<Tokens>)>,
}

/// What one upstream login presents.
#[derive(Debug)]
pub enum Credentials {
    /// SASL PLAIN authenticated as the master user and authorized as the user
    /// (`sasl-plain-authzid`: Dovecot, Cyrus, Stalwart).
    Authzid {
        user: String,
        master: String,
        password: Secret<String>,
    },
    /// A name that says both, such as Dovecot's `user*master`, with the master password
    /// (`master-login`): for LOGIN commands, or SASL PLAIN without an authorization
    /// identity.
    MasterLogin {
        name: String,
        password: Secret<String>,
    },
    /// An OAuth 2.0 token for the user, by SASL XOAUTH2 or OAUTHBEARER.
    Bearer {
        user: String,
        token: Arc<Token>,
        oauthbearer: bool,
    },
}

impl UpstreamLogin {
    /// The login mode of `config`; `tokens` serve `auth = "xoauth2"` and `"oauthbearer"`.
    pub fn new(config: &UpstreamConfig, tokens: Option<Arc<Tokens>>) -> Self {
        Self {
            auth: config.auth,
            master_user: config.master_user.clone(),
            master_login_format: config.master_login_format.clone(),
            master_password_file: config.master_password_file.clone(),
            oauth2: config.oauth2.clone().zip(tokens),
        }
    }

    /// The credentials to act as `user` with: the master password read now, or a token
    /// (cached, or fetched now).
    pub async fn credentials(&self, user: &str) -> Result<Credentials, UpstreamError> {
        if self.auth.uses_tokens() {
            let Some((provider, tokens)) = &self.oauth2 else {
                return Err(UpstreamError::Unsupported("[oauth2] tokens"));
            };
            let token = tokens
                .token(provider, user)
                .await
                .map_err(UpstreamError::Token)?;
            return Ok(Credentials::Bearer {
                user: user.to_string(),
                token,
                oauthbearer: self.auth == UpstreamAuth::Oauthbearer,
            });
        }
        let password = self.master_password()?;
        Ok(match self.auth {
            UpstreamAuth::SaslPlainAuthzid => Credentials::Authzid {
                user: user.to_string(),
                master: self.master_user.clone(),
                password,
            },
            UpstreamAuth::MasterLogin => Credentials::MasterLogin {
                name: self
                    .master_login_format
                    .replace("{user}", user)
                    .replace("{master}", &self.master_user),
                password,
            },
            UpstreamAuth::Xoauth2 | UpstreamAuth::Oauthbearer => {
                unreachable!("token modes return above")
            }
        })
    }

    /// The upstream refused these credentials: a token is dropped, so that the next
    /// [`UpstreamLogin::credentials`] fetches another. `true` when there is another to try.
    pub async fn refused(&self, credentials: &Credentials) -> bool {
        let (Credentials::Bearer { user, token, .. }, Some((provider, tokens))) =
            (credentials, &self.oauth2)
        else {
            return false;
        };
        tracing::info!(provider = %provider, "oauth2: the upstream refused a token; fetching another");
        tokens.forget(provider, user, token).await;
        true
    }

    /// The master password: the first line of its file, without the line ending.
    fn master_password(&self) -> Result<Secret<String>, UpstreamError> {
        let text = std::fs::read_to_string(&self.master_password_file).map_err(|source| {
            UpstreamError::MasterPassword {
                path: self.master_password_file.clone(),
                source,
            }
        })?;
        Ok(Secret::new(text.lines().next().unwrap_or("").to_string()))
    }
}

impl Credentials {
    /// The SASL mechanism that presents these credentials.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Credentials::Authzid { .. } | Credentials::MasterLogin { .. } => "PLAIN",
            Credentials::Bearer {
                oauthbearer: false, ..
            } => "XOAUTH2",
            Credentials::Bearer {
                oauthbearer: true, ..
            } => "OAUTHBEARER",
        }
    }

    /// The SASL response (base64) of [`Credentials::mechanism`].
    pub fn sasl_response(&self) -> Secret<String> {
        match self {
            Credentials::Authzid {
                user,
                master,
                password,
            } => sasl::plain_response(user, master, password),
            Credentials::MasterLogin { name, password } => sasl::plain_response("", name, password),
            Credentials::Bearer {
                user,
                token,
                oauthbearer: false,
            } => sasl::xoauth2_response(user, &token.access),
            Credentials::Bearer {
                user,
                token,
                oauthbearer: true,
            } => sasl::oauthbearer_response(user, &token.access),
        }
    }

    /// What to answer a challenge after the response: a bearer mechanism's error
    /// challenge is answered with an empty response (XOAUTH2) or `^A` (OAUTHBEARER, RFC
    /// 7628 3.2.3), after which the server says no; PLAIN expects none, and cancels.
    pub fn challenge_answer(&self) -> &'static str {
        match self {
            Credentials::Bearer {
                oauthbearer: true, ..
            } => "AQ==",
            Credentials::Bearer { .. } => "",
            _ => "*",
        }
    }

    /// Whether a token is presented.
    pub fn is_token(&self) -> bool {
        matches!(self, Credentials::Bearer { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn login(auth: &str, password_file: &std::path::Path) -> UpstreamLogin {
        let config: UpstreamConfig = toml::from_str(&format!(
            r#"
            address = "127.0.0.1:1"
            tls = "none"
            auth = "{auth}"
            master_user = "proxy"
            master_password_file = "{}"
            "#,
            password_file.display()
        ))
        .unwrap();
        UpstreamLogin::new(&config, None)
    }

    fn decoded(response: Secret<String>) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(response.expose())
            .unwrap()
    }

    #[tokio::test]
    async fn each_mode_presents_the_user_its_own_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master");
        std::fs::write(&file, "pw\nignored\n").unwrap();
        let authzid = login("sasl-plain-authzid", &file)
            .credentials("alice")
            .await
            .unwrap();
        assert_eq!(decoded(authzid.sasl_response()), b"alice\0proxy\0pw");
        let master = login("master-login", &file)
            .credentials("alice")
            .await
            .unwrap();
        let Credentials::MasterLogin { name, password } = &master else {
            panic!("not a master login");
        };
        assert_eq!(
            (name.as_str(), password.expose().as_str()),
            ("alice*proxy", "pw")
        );
        assert_eq!(decoded(master.sasl_response()), b"\0alice*proxy\0pw");
    }

    #[tokio::test]
    async fn a_missing_password_file_names_the_file() {
        let error = login("master-login", std::path::Path::new("/nonexistent/pw"))
            .credentials("alice")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/pw"), "{error}");
    }
}
