//! The credentials postern logs in upstream with on a user's behalf, from the configured
//! login mode: the one place that reads `[upstream.*] auth`. Each protocol's upstream
//! login asks it for a SASL PLAIN response or a name and password.

use std::path::PathBuf;

use super::UpstreamError;
use crate::auth::Secret;
use crate::config::{UpstreamAuth, UpstreamConfig};
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
}

impl UpstreamLogin {
    pub fn new(config: &UpstreamConfig) -> Self {
        Self {
            auth: config.auth,
            master_user: config.master_user.clone(),
            master_login_format: config.master_login_format.clone(),
            master_password_file: config.master_password_file.clone(),
        }
    }

    /// The credentials to act as `user` with, the master password read now.
    pub fn credentials(&self, user: &str) -> Result<Credentials, UpstreamError> {
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
        })
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
    /// The SASL PLAIN response (base64) that presents these credentials.
    pub fn plain_response(&self) -> Secret<String> {
        match self {
            Credentials::Authzid {
                user,
                master,
                password,
            } => sasl::plain_response(user, master, password),
            Credentials::MasterLogin { name, password } => sasl::plain_response("", name, password),
        }
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
        UpstreamLogin::new(&config)
    }

    fn decoded(response: Secret<String>) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(response.expose())
            .unwrap()
    }

    #[test]
    fn each_mode_presents_the_user_its_own_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master");
        std::fs::write(&file, "pw\nignored\n").unwrap();
        let authzid = login("sasl-plain-authzid", &file)
            .credentials("alice")
            .unwrap();
        assert_eq!(decoded(authzid.plain_response()), b"alice\0proxy\0pw");
        let master = login("master-login", &file).credentials("alice").unwrap();
        let Credentials::MasterLogin { name, password } = &master else {
            panic!("not a master login");
        };
        assert_eq!(
            (name.as_str(), password.expose().as_str()),
            ("alice*proxy", "pw")
        );
        assert_eq!(decoded(master.plain_response()), b"\0alice*proxy\0pw");
    }

    #[test]
    fn a_missing_password_file_names_the_file() {
        let error = login("master-login", std::path::Path::new("/nonexistent/pw"))
            .credentials("alice")
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/pw"), "{error}");
    }
}
