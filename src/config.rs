//! The configuration file: serde structs with their defaults, and `validate()`, which finds
//! every problem at once so `postern check-config` can list them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::protocol::Protocol;

/// Where the configuration is read from when neither `--config` nor `$POSTERN_CONFIG` says.
pub const DEFAULT_PATH: &str = "config/postern.toml";

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Users, app passwords and the audit trail.
    #[serde(default)]
    pub store: StoreConfig,
    /// The certificate postern presents to mail clients.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The ports mail clients connect to.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// The real mail servers behind postern.
    #[serde(default)]
    pub upstream: Upstreams,
    /// Metrics and health checks.
    #[serde(default)]
    pub http: HttpConfig,
    /// How app passwords are hashed, cached and limited.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Timeouts and caps that protect postern from slow or hostile clients.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// SMTP submission: greeting name, message limits, sending quotas.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Who is trusted on the network: penalty exemptions, PROXY header sources, caps.
    #[serde(default)]
    pub network: NetworkConfig,
    /// The self-service portal, where users sign in and make their own app passwords; off
    /// without this section.
    #[serde(default)]
    pub portal: Option<PortalConfig>,
    /// Provisioning from the directory and following it when people leave.
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// The SCIM 2.0 endpoint an identity provider pushes joiners and leavers to.
    #[serde(default)]
    pub scim: Option<ScimConfig>,
    /// Where postern gets OAuth 2.0 tokens for upstreams with `auth = "xoauth2"` or
    /// `"oauthbearer"`, by section name.
    #[serde(default)]
    pub oauth2: std::collections::BTreeMap<String, OAuth2Config>,
}

/// `[oauth2.NAME]`: an identity provider postern gets upstream tokens from, for every user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Defaults for a known provider: `microsoft365`, `google`, or `generic`.
    pub preset: OAuth2Preset,
    /// Microsoft 365: the tenant (`contoso.onmicrosoft.com` or its id), filled into the
    /// token URL.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The application (client) id; for Google, the service account's address.
    pub client_id: String,
    /// A file holding the client secret on its first line.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// A private key (PKCS#8 or PKCS#1 PEM, or Google's JSON key file) that signs client
    /// assertions (Microsoft 365, `generic`) or JWT bearer grants (Google).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Microsoft 365: the certificate registered for `private_key_file`; its thumbprint
    /// goes into the assertion's header.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// The token endpoint; presets fill it in.
    #[serde(default)]
    pub token_url: Option<String>,
    /// The scope asked for; presets fill it in.
    #[serde(default)]
    pub scope: Option<String>,
    /// `client_credentials` (one token for every mailbox) or `jwt_bearer` (one per user,
    /// RFC 7523); presets fill it in.
    #[serde(default)]
    pub grant: Option<OAuth2Grant>,
    /// PEM certificates to trust for the token endpoint instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Deadline for one token request.
    #[serde(default = "default_oauth2_timeout", with = "duration")]
    pub timeout: Duration,
    /// A token is renewed this long before it expires (at most half its lifetime).
    #[serde(default = "default_oauth2_renew_before", with = "duration")]
    pub renew_before: Duration,
}

/// The providers postern knows the token URL, scope and grant of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuth2Preset {
    Microsoft365,
    Google,
    Generic,
}

/// How a token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2Grant {
    /// The application's own token (RFC 6749 4.4), valid for every mailbox it may access.
    ClientCredentials,
    /// A token for one user, asked for with an assertion the key signs (RFC 7523).
    JwtBearer,
}

fn default_oauth2_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_oauth2_renew_before() -> Duration {
    Duration::from_secs(300)
}

impl OAuth2Config {
    /// The token endpoint: as set, else the preset's (`{tenant}` filled in).
    pub fn token_url(&self) -> String {
        match (&self.token_url, self.preset) {
            (Some(url), _) => url.replace("{tenant}", self.tenant.as_deref().unwrap_or("")),
            (None, OAuth2Preset::Microsoft365) => format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant.as_deref().unwrap_or("")
            ),
            (None, OAuth2Preset::Google) => "https://oauth2.googleapis.com/token".to_string(),
            (None, OAuth2Preset::Generic) => String::new(),
        }
    }

    /// The scope: as set, else the preset's.
    pub fn scope(&self) -> String {
        match (&self.scope, self.preset) {
            (Some(scope), _) => scope.clone(),
            (None, OAuth2Preset::Microsoft365) => {
                "https://outlook.office365.com/.default".to_string()
            }
            (None, OAuth2Preset::Google) => "https://mail.google.com/".to_string(),
            (None, OAuth2Preset::Generic) => String::new(),
        }
    }

    /// The grant: as set, else the preset's.
    pub fn grant(&self) -> OAuth2Grant {
        match (self.grant, self.preset) {
            (Some(grant), _) => grant,
            (None, OAuth2Preset::Google) => OAuth2Grant::JwtBearer,
            (None, _) => OAuth2Grant::ClientCredentials,
        }
    }

    fn problems(&self, name: &str, problems: &mut Vec<String>) {
        let section = format!("[oauth2.{name}]");
        let url = self.token_url();
        if url.is_empty() {
            problems.push(format!("{section} needs a token_url"));
        } else if !url.starts_with("https://") && !loopback_http(&url) {
            problems.push(format!(
                "{section} token_url {url:?} must be https:// (http:// only on loopback)"
            ));
        }
        if self.preset == OAuth2Preset::Microsoft365
            && self.token_url.is_none()
            && self.tenant.as_deref().unwrap_or("").is_empty()
        {
            problems.push(format!(
                "{section} preset = \"microsoft365\" needs a tenant"
            ));
        }
        if self.scope().is_empty() {
            problems.push(format!("{section} needs a scope"));
        }
        match (
            self.grant(),
            &self.client_secret_file,
            &self.private_key_file,
        ) {
            (OAuth2Grant::JwtBearer, _, None) => problems.push(format!(
                "{section} grant = \"jwt_bearer\" needs a private_key_file"
            )),
            (OAuth2Grant::ClientCredentials, None, None) => problems.push(format!(
                "{section} needs a client_secret_file or a private_key_file"
            )),
            (OAuth2Grant::ClientCredentials, Some(_), Some(_)) => problems.push(format!(
                "{section} has both a client_secret_file and a private_key_file: keep one"
            )),
            _ => {}
        }
    }

    /// Files that are missing: tokens cannot be had until they exist (they are read at
    /// each token request, so they can be put in place later).
    fn missing_files(&self, name: &str, problems: &mut Vec<String>) {
        for (key, file) in [
            ("client_secret_file", &self.client_secret_file),
            ("private_key_file", &self.private_key_file),
            ("certificate_file", &self.certificate_file),
            ("ca_file", &self.ca_file),
        ] {
            if let Some(file) = file {
                if !file.is_file() {
                    problems.push(format!(
                        "[oauth2.{name}] {key} {} does not exist; upstream logins fail until it does",
                        file.display()
                    ));
                }
            }
        }
    }
}

/// The self-service portal: an HTTPS listener on the `[tls]` certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Where the portal listens (HTTPS).
    #[serde(default = "default_portal_bind")]
    pub bind: SocketAddr,
    /// The portal's address as users reach it, e.g. `https://mail.example.com:10443`: the
    /// origin that form posts must come from, and the base of links.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// How the primary password is checked: `upstream` logs in to the upstream IMAP server
    /// as the user.
    #[serde(default)]
    pub sign_in: SignIn,
    /// Password sign-ins must pass postern's own second factor (TOTP or a recovery code);
    /// users set one up at their first sign-in.
    #[serde(default = "default_true")]
    pub require_mfa: bool,
    /// How long a portal session lasts at most.
    #[serde(default = "default_portal_session", with = "duration")]
    pub session_lifetime: Duration,
    /// A portal session unused this long ends.
    #[serde(default = "default_portal_idle", with = "duration")]
    pub session_idle: Duration,
    /// What a device is told to connect to.
    #[serde(default)]
    pub client_settings: ClientSettings,
    /// The mail a user gets when an app password is made or a second factor changes.
    #[serde(default)]
    pub notifications: Notifications,
    /// The directory of `sign_in = "ldap"`.
    #[serde(default)]
    pub ldap: Option<LdapConfig>,
    /// The OpenID provider of `sign_in = "oidc"`.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// `[portal.notifications]`: a mail to the user, sent through the upstream submission
/// server as the user (postern's master credentials), when an app password is created or
/// a second factor changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    /// On by default; needs an `[upstream.smtp]` section.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The sender address; unset, the user's own address (which the upstream lets the
    /// user send as).
    #[serde(default)]
    pub from: Option<String>,
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            enabled: true,
            from: None,
        }
    }
}

/// How the portal checks a primary password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignIn {
    /// LOGIN to the upstream IMAP server as the user, then LOGOUT.
    #[default]
    Upstream,
    /// A bind to the organisation's LDAP directory as the person (`[portal.ldap]`).
    Ldap,
    /// The organisation's OpenID Connect provider (`[portal.oidc]`).
    Oidc,
}

/// `[portal.oidc]`: the OpenID Connect provider people sign in with (`sign_in = "oidc"`),
/// by the authorization code flow with PKCE; the redirect URI is
/// `{public_url}/oidc/callback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer; its discovery document is at `/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// The client secret, on the file's first line (read at each sign-in).
    pub client_secret_file: PathBuf,
    /// PEM certificates to trust for the provider instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The ID token claim that becomes the postern login.
    #[serde(default = "default_oidc_login_claim")]
    pub login_claim: String,
    /// The claim that is the upstream identity; the login when absent.
    #[serde(default)]
    pub upstream_claim: Option<String>,
    /// Deadline for each request to the provider.
    #[serde(default = "default_ldap_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_oidc_login_claim() -> String {
    "email".to_string()
}

/// `[portal.ldap]`: the directory people sign in with (`sign_in = "ldap"`) and that the
/// sync follows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host[:port]`, or `ldap://host[:port]` (with `starttls = true` unless on
    /// loopback).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    /// PEM certificates to trust for the directory instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The schema's defaults: `openldap` or `active-directory`.
    #[serde(default)]
    pub preset: LdapPreset,
    /// Where people are searched.
    pub base_dn: String,
    /// The service account that searches.
    pub bind_dn: String,
    /// Its password, on the file's first line (read at each search).
    pub bind_password_file: PathBuf,
    /// The search for the person who types `{login}` (escaped, RFC 4515).
    #[serde(default)]
    pub user_filter: Option<String>,
    /// The attribute that becomes the postern login.
    #[serde(default)]
    pub login_attribute: Option<String>,
    /// The attribute that is the upstream identity (the name postern logs in as there).
    #[serde(default)]
    pub upstream_attribute: Option<String>,
    /// The attribute holding the sender addresses (AD's `proxyAddresses` keep their
    /// `smtp:` prefixes; they are read as such).
    #[serde(default)]
    pub address_attribute: Option<String>,
    /// Deadline for each directory operation.
    #[serde(default = "default_ldap_timeout", with = "duration")]
    pub timeout: Duration,
}

/// The directory schemas postern knows the defaults of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LdapPreset {
    /// inetOrgPerson: `mail` (login and addresses), `uid` (upstream identity); an entry
    /// locked for good by the ppolicy overlay (`pwdAccountLockedTime: 000001010000Z`) is
    /// disabled.
    #[default]
    Openldap,
    /// Active Directory: `userPrincipalName` (login and upstream identity), `sAMAccountName`
    /// also accepted, `proxyAddresses` (addresses); `userAccountControl` bit 2 disables.
    ActiveDirectory,
}

fn default_ldap_timeout() -> Duration {
    Duration::from_secs(10)
}

impl LdapConfig {
    pub fn user_filter(&self) -> String {
        self.user_filter
            .clone()
            .unwrap_or_else(|| match self.preset {
                LdapPreset::Openldap => {
                    "(&(objectClass=inetOrgPerson)(|(mail={login})(uid={login})))".to_string()
                }
                LdapPreset::ActiveDirectory => "(&(objectClass=user)(|(userPrincipalName={login})\
                                            (sAMAccountName={login})(mail={login})))"
                    .to_string(),
            })
    }

    pub fn login_attribute(&self) -> String {
        self.login_attribute
            .clone()
            .unwrap_or_else(|| match self.preset {
                LdapPreset::Openldap => "mail".to_string(),
                LdapPreset::ActiveDirectory => "userPrincipalName".to_string(),
            })
    }

    pub fn upstream_attribute(&self) -> String {
        self.upstream_attribute
            .clone()
            .unwrap_or_else(|| match self.preset {
                LdapPreset::Openldap => "uid".to_string(),
                LdapPreset::ActiveDirectory => "userPrincipalName".to_string(),
            })
    }

    pub fn address_attribute(&self) -> String {
        self.address_attribute
            .clone()
            .unwrap_or_else(|| match self.preset {
                LdapPreset::Openldap => "mail".to_string(),
                LdapPreset::ActiveDirectory => "proxyAddresses".to_string(),
            })
    }
}

/// `[scim]`: SCIM 2.0 provisioning (RFC 7643/7644) under `/scim/v2/` on the portal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimConfig {
    /// The bearer token the identity provider presents, on the file's first line (read at
    /// each request).
    pub token_file: PathBuf,
}

/// `[directory]`: what postern does with the people the directory knows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// A person without a postern user gets one at their first sign-in; off, an admin
    /// creates users with the CLI.
    #[serde(default = "default_true")]
    pub provision: bool,
    /// How often the LDAP directory is read to disable people who left (0: never).
    #[serde(default = "default_sync_interval", with = "duration")]
    pub sync_interval: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            provision: true,
            sync_interval: default_sync_interval(),
        }
    }
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(300)
}

/// The servers a user's device is set up with (implicit TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// `host:port` for IMAP over TLS.
    #[serde(default = "default_client_imap")]
    pub imap: String,
    /// `host:port` for SMTP submission over TLS.
    #[serde(default = "default_client_smtp")]
    pub smtp: String,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            imap: default_client_imap(),
            smtp: default_client_smtp(),
        }
    }
}

fn default_portal_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10443))
}
fn default_public_url() -> String {
    "https://localhost:10443".into()
}
fn default_true() -> bool {
    true
}
fn default_portal_session() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_portal_idle() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_client_imap() -> String {
    "localhost:10993".into()
}
fn default_client_smtp() -> String {
    "localhost:10465".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Clients in these networks are exempt from login penalties (an office NAT that many
    /// users share, a monitoring host). Their failed logins are still counted and logged.
    #[serde(default)]
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// Peers allowed to send a PROXY protocol header on listeners with
    /// `proxy_protocol = true`; a connection from anywhere else is closed.
    #[serde(default = "default_proxy_sources")]
    pub proxy_sources: Vec<ipnet::IpNet>,
    /// Concurrent connections from one client address (IPv6 grouped by /64), per
    /// listener; 0 = no cap, the default: an office or a carrier-grade NAT puts hundreds
    /// of people behind one address, each mail client holding several connections. Set it
    /// to what the largest such address needs (people × devices × connections, say
    /// 500 × 2 × 5 = 5,000) to stop one address from taking a listener's
    /// `max_connections`. Trusted networks are exempt.
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// Logged-in sessions one login may hold from one address (IPv6 /64) per protocol,
    /// like Dovecot's `mail_max_userip_connections`; 0 = no cap. A mail client opens up
    /// to about 5 IMAP connections per account (Thunderbird's default), and Microsoft 365
    /// allows 20 per mailbox. The login over the cap gets a temporary failure.
    #[serde(default = "default_max_sessions_per_user_ip")]
    pub max_sessions_per_user_ip: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            trusted_networks: Vec::new(),
            proxy_sources: default_proxy_sources(),
            max_connections_per_ip: 0,
            max_sessions_per_user_ip: default_max_sessions_per_user_ip(),
        }
    }
}

fn default_proxy_sources() -> Vec<ipnet::IpNet> {
    // Unwrap: constant, valid networks.
    vec![
        "127.0.0.0/8".parse().expect("valid"),
        "::1/128".parse().expect("valid"),
    ]
}

fn default_max_sessions_per_user_ip() -> usize {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The name in postern's SMTP greeting and EHLO reply, and its EHLO to the upstream.
    #[serde(default = "default_smtp_hostname")]
    pub hostname: String,
    /// Largest message accepted when the upstream announces no SIZE; when it does, its
    /// limit is advertised and enforced instead.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Largest header block; it is held in memory while From: and Sender: are checked.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Messages one app password may send per hour; 0 = unlimited. Counted per instance.
    #[serde(default = "default_messages_per_hour")]
    pub messages_per_hour: u32,
    /// Recipients one app password may address per hour; 0 = unlimited. Per instance.
    #[serde(default = "default_recipients_per_hour")]
    pub recipients_per_hour: u32,
    /// A logged-in SMTP client silent this long is disconnected (RFC 5321 asks ≥ 5 min).
    #[serde(default = "default_smtp_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// How long the upstream's EHLO capabilities (SIZE, SMTPUTF8, DSN) are reused before
    /// postern asks again.
    #[serde(default = "default_capabilities_refresh", with = "duration")]
    pub capabilities_refresh: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            hostname: default_smtp_hostname(),
            max_message_size: default_max_message_size(),
            max_header_bytes: default_max_header_bytes(),
            messages_per_hour: default_messages_per_hour(),
            recipients_per_hour: default_recipients_per_hour(),
            idle_timeout: default_smtp_idle_timeout(),
            capabilities_refresh: default_capabilities_refresh(),
        }
    }
}

fn default_smtp_hostname() -> String {
    "localhost".into()
}
fn default_max_message_size() -> u64 {
    50 * 1024 * 1024
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_messages_per_hour() -> u32 {
    300
}
fn default_recipients_per_hour() -> u32 {
    1500
}
fn default_smtp_idle_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_capabilities_refresh() -> Duration {
    Duration::from_secs(5 * 60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path` (created on first start) or `postgres://user@host/db`. Several
    /// postern instances share one PostgreSQL store to see each other's revocations.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Audit events (logins, messages) kept in memory while the store cannot be written;
    /// they are written in order once it can. Beyond this many, new events are dropped
    /// and counted in `postern_audit_events_dropped_total`.
    #[serde(default = "default_audit_queue")]
    pub audit_queue: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            audit_queue: default_audit_queue(),
        }
    }
}

fn default_store_url() -> String {
    "sqlite://data/postern.db".into()
}

/// Audit events held in memory while the store cannot be written.
pub const DEFAULT_AUDIT_QUEUE: usize = 10_000;

fn default_audit_queue() -> usize {
    DEFAULT_AUDIT_QUEUE
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. When neither this nor `key` exists at start,
    /// postern writes a self-signed development pair here and warns.
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// More certificates, after the default one in order of preference: another key type
    /// for the same names (RSA beside ECDSA), or other names, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<CertificatePair>,
    /// A certificate obtained and renewed from an ACME CA, served before the others (which
    /// stay as the fallback until the first one is obtained).
    pub acme: Option<AcmeConfig>,
}

/// `[tls.acme]`: certificates from an ACME CA (RFC 8555), such as Let's Encrypt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// The names on the certificate; the first is its subject.
    pub domains: Vec<String>,
    /// The account's contact, e.g. `mailto:postmaster@example.com`.
    pub contact: Option<String>,
    /// Trust for the ACME server itself (a private CA); the system's roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// How the CA checks that postern answers for the domains.
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Where HTTP-01 challenges are answered (`challenge = "http-01"`): the CA asks port
    /// 80 of each domain, so this is port 80 or where the load balancer sends it.
    pub http_challenge_bind: Option<SocketAddr>,
    /// How long to wait after a failed order before trying again.
    #[serde(default = "default_acme_retry", with = "duration")]
    pub retry_after: Duration,
}

/// The ACME challenge postern answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// RFC 8737: the CA connects to port 443 of the domain with ALPN `acme-tls/1`; any of
    /// postern's TLS ports (the portal's, a listener's) answers, as the port 443 the CA
    /// reaches.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 8.3: the CA fetches `http://domain/.well-known/acme-challenge/...` on port
    /// 80, answered on `http_challenge_bind`.
    #[serde(rename = "http-01")]
    Http01,
}

fn default_acme_retry() -> Duration {
    Duration::from_secs(10 * 60)
}

impl AcmeConfig {
    /// The name the store keeps this set of domains' certificate under.
    pub fn name(&self) -> String {
        self.domains.join(",")
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if self.domains.is_empty() {
            problems.push("[tls.acme] domains must name at least one domain".to_string());
        }
        for domain in &self.domains {
            if rustls::pki_types::ServerName::try_from(domain.clone()).is_err() {
                problems.push(format!("[tls.acme] domains: {domain:?} is not a DNS name"));
            }
        }
        match (self.challenge, self.http_challenge_bind) {
            (AcmeChallenge::Http01, None) => problems.push(
                "[tls.acme] challenge = \"http-01\" needs http_challenge_bind (where port 80 arrives)"
                    .to_string(),
            ),
            (AcmeChallenge::TlsAlpn01, Some(_)) => problems.push(
                "[tls.acme] http_challenge_bind is only for challenge = \"http-01\"".to_string(),
            ),
            _ => {}
        }
        if !self.directory_url.starts_with("https://") {
            problems.push("[tls.acme] directory_url must be an https:// URL".to_string());
        }
        if let Some(ca_file) = &self.ca_file {
            if !ca_file.is_file() {
                problems.push(format!(
                    "[tls.acme] ca_file {} does not exist",
                    ca_file.display()
                ));
            }
        }
    }
}

/// A certificate chain and its key, in `[[tls.certificates]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: default_cert(),
            key: default_key(),
            certificates: Vec::new(),
            acme: None,
        }
    }
}

fn default_cert() -> PathBuf {
    "certs/postern.crt".into()
}

fn default_key() -> PathBuf {
    "certs/postern.key".into()
}

/// How a client listener starts TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// TLS from the first byte (ports 993, 465).
    Implicit,
    /// Plaintext greeting, then STARTTLS before any login (ports 143, 587).
    Starttls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Names the listener in logs and in the `listener` metric label.
    pub name: String,
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub tls: ListenerTls,
    /// Expect a PROXY protocol v1 or v2 header from a load balancer in
    /// `[network] proxy_sources`; the client address it carries is used for penalties,
    /// logs, audit and the upstream.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Concurrent connections this listener accepts; further clients wait in the kernel's
    /// backlog until a slot frees.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    10_000
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub imap: Option<UpstreamConfig>,
    pub smtp: Option<UpstreamConfig>,
    pub pop3: Option<UpstreamConfig>,
}

/// How postern reaches the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Implicit,
    Starttls,
    /// Plaintext: refused unless the upstream address is on loopback.
    None,
}

/// How postern logs in upstream on the user's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// SASL PLAIN with authzid = the user, authcid = the master user (Dovecot, Cyrus, Stalwart).
    SaslPlainAuthzid,
    /// LOGIN with a user name built from `master_login_format` (Dovecot's `user*master`).
    MasterLogin,
    /// SASL XOAUTH2 with a token from the `[oauth2.NAME]` that `oauth2` names (Microsoft
    /// 365, Google).
    Xoauth2,
    /// SASL OAUTHBEARER (RFC 7628), likewise.
    Oauthbearer,
}

impl UpstreamAuth {
    /// Whether logins present an OAuth 2.0 token instead of the master password.
    pub fn uses_tokens(self) -> bool {
        matches!(self, UpstreamAuth::Xoauth2 | UpstreamAuth::Oauthbearer)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of the real server.
    pub address: String,
    pub tls: UpstreamTls,
    /// Name checked against the upstream's certificate; defaults to the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificates to trust instead of the system roots: the CA that signed the
    /// upstream's certificate (a private CA), or the upstream's own certificate, which is
    /// then trusted exactly as it is (a self-signed one made with `openssl req -x509`);
    /// its dates and names are still checked.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprints of upstream certificates trusted exactly as they are, as
    /// `openssl x509 -noout -fingerprint -sha256` prints them (colons optional); dates and
    /// names are still checked.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    pub auth: UpstreamAuth,
    /// The upstream account allowed to log in as any user (not with tokens).
    #[serde(default)]
    pub master_user: String,
    /// File holding the master password on its first line; read at each upstream login so
    /// rotating it needs no restart (not with tokens).
    #[serde(default)]
    pub master_password_file: PathBuf,
    /// With `auth = "xoauth2"` or `"oauthbearer"`: the `[oauth2.NAME]` section.
    #[serde(default)]
    pub oauth2: Option<String>,
    /// For `master-login`: `{user}` and `{master}` are replaced.
    #[serde(default = "default_master_login_format")]
    pub master_login_format: String,
    /// TCP connect deadline.
    #[serde(default = "default_upstream_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Deadline for each upstream reply during greeting, TLS and login.
    #[serde(default = "default_upstream_reply_timeout", with = "duration")]
    pub reply_timeout: Duration,
    /// IMAP and POP3: connections kept connected, TLS done and greeted ahead of logins, so
    /// that a client's login waits only for the upstream's login; 0 turns this off.
    #[serde(default = "default_warm_connections")]
    pub warm_connections: usize,
    /// How long a warm connection waits for a login before it is replaced: well under the
    /// upstream's own timeout for clients that have not logged in.
    #[serde(default = "default_warm_max_age", with = "duration")]
    pub warm_max_age: Duration,
}

fn default_warm_connections() -> usize {
    4
}

fn default_warm_max_age() -> Duration {
    Duration::from_secs(20)
}

fn default_master_login_format() -> String {
    "{user}*{master}".into()
}

fn default_upstream_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_upstream_reply_timeout() -> Duration {
    Duration::from_secs(15)
}

impl UpstreamConfig {
    /// The host part of `address`, without brackets.
    pub fn host(&self) -> &str {
        let host = match self.address.rsplit_once(':') {
            Some((host, _)) => host,
            None => &self.address,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The pinned fingerprints that parse (`problems()` reports the others).
    pub fn pins(&self) -> Vec<[u8; 32]> {
        self.pin_sha256
            .iter()
            .filter_map(|pin| crate::tls::trust::parse_fingerprint(pin))
            .collect()
    }

    /// The name to verify the upstream's certificate against.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| self.host())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics`, `/healthz`, `/readyz`. Keep it off the public interface.
    #[serde(default = "default_http_bind")]
    pub bind: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: default_http_bind(),
        }
    }
}

fn default_http_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9898))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// argon2id memory cost in KiB for new hashes (OWASP's 19 MiB by default). Existing
    /// hashes keep the parameters they were made with.
    #[serde(default = "default_argon2_memory")]
    pub argon2_memory_kib: u32,
    /// argon2id passes.
    #[serde(default = "default_argon2_iterations")]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[serde(default = "default_argon2_parallelism")]
    pub argon2_parallelism: u32,
    /// Hash verifications that may run at once; 0 means one per core. Hashing is the
    /// expensive part of a login, so this caps the CPU a password flood can take.
    #[serde(default)]
    pub hash_workers: usize,
    /// How long an unverified login waits for a free hash worker before it is answered
    /// with a temporary failure.
    #[serde(default = "default_hash_queue_timeout", with = "duration")]
    pub hash_queue_timeout: Duration,
    /// How long a verified (login, password) stays cached. Revocation clears it at once.
    #[serde(default = "default_cache_ttl", with = "duration")]
    pub cache_ttl: Duration,
    /// Verified logins kept in memory.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    /// Live (not revoked, not expired) app passwords a user may have.
    #[serde(default = "default_max_app_passwords")]
    pub max_app_passwords: u32,
    /// How often the store is polled for revocations made elsewhere (the CLI, another
    /// instance). Revocation takes effect within this interval plus one query.
    #[serde(default = "default_change_poll_interval", with = "duration")]
    pub change_poll_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            argon2_memory_kib: default_argon2_memory(),
            argon2_iterations: default_argon2_iterations(),
            argon2_parallelism: default_argon2_parallelism(),
            hash_workers: 0,
            hash_queue_timeout: default_hash_queue_timeout(),
            cache_ttl: default_cache_ttl(),
            cache_capacity: default_cache_capacity(),
            max_app_passwords: default_max_app_passwords(),
            change_poll_interval: default_change_poll_interval(),
        }
    }
}

fn default_argon2_memory() -> u32 {
    19_456
}
fn default_argon2_iterations() -> u32 {
    2
}
fn default_argon2_parallelism() -> u32 {
    1
}
fn default_hash_queue_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_cache_capacity() -> u64 {
    100_000
}
fn default_max_app_passwords() -> u32 {
    40
}
fn default_change_poll_interval() -> Duration {
    Duration::from_millis(250)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// A client that sends nothing for this long before logging in is disconnected.
    #[serde(default = "default_preauth_idle", with = "duration")]
    pub preauth_idle_timeout: Duration,
    /// From connect to a successful login, whatever the client does.
    #[serde(default = "default_login_deadline", with = "duration")]
    pub login_deadline: Duration,
    /// TLS handshake with a client.
    #[serde(default = "default_tls_handshake", with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// A logged-in session with no traffic either way for this long is closed. IMAP
    /// requires at least 30 minutes (RFC 9051 §5.4); clients re-issue IDLE every 29.
    #[serde(default = "default_authenticated_idle", with = "duration")]
    pub authenticated_idle_timeout: Duration,
    /// Longest command line or literal accepted before login.
    #[serde(default = "default_max_line")]
    pub max_line: usize,
    /// Failed logins before the connection is closed.
    #[serde(default = "default_max_failures")]
    pub max_failed_logins: u32,
    /// On SIGTERM, how long sessions may finish what they are doing before they are cut.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Reading the PROXY protocol header of a new connection.
    #[serde(default = "default_proxy_header_timeout", with = "duration")]
    pub proxy_header_timeout: Duration,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_proxy_header_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            preauth_idle_timeout: default_preauth_idle(),
            login_deadline: default_login_deadline(),
            tls_handshake_timeout: default_tls_handshake(),
            authenticated_idle_timeout: default_authenticated_idle(),
            max_line: default_max_line(),
            max_failed_logins: default_max_failures(),
            shutdown_grace: default_shutdown_grace(),
            proxy_header_timeout: default_proxy_header_timeout(),
        }
    }
}

fn default_preauth_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_login_deadline() -> Duration {
    Duration::from_secs(180)
}
fn default_tls_handshake() -> Duration {
    Duration::from_secs(10)
}
fn default_authenticated_idle() -> Duration {
    Duration::from_secs(35 * 60)
}
fn default_max_line() -> usize {
    8 * 1024
}
fn default_max_failures() -> u32 {
    3
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log shippers.
    #[serde(default)]
    pub format: LogFormat,
}

impl Config {
    /// Reads and parses the file; does not validate (see [`Config::validate`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every problem that would stop postern from serving, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listeners.is_empty() {
            problems.push("no [[listener]] is configured".to_string());
        }
        let mut names = std::collections::HashSet::new();
        for listener in &self.listeners {
            if !names.insert(&listener.name) {
                problems.push(format!("listener name {:?} is used twice", listener.name));
            }
            if listener.max_connections == 0 {
                problems.push(format!(
                    "listener {:?}: max_connections must be at least 1",
                    listener.name
                ));
            }
            let upstream = match listener.protocol {
                Protocol::Imap => &self.upstream.imap,
                Protocol::Smtp => &self.upstream.smtp,
                Protocol::Pop3 => &self.upstream.pop3,
            };
            if upstream.is_none() {
                problems.push(format!(
                    "listener {:?} needs an [upstream.{}] section",
                    listener.name,
                    listener.protocol.as_str()
                ));
            }
        }
        for (protocol, upstream) in [("imap", &self.upstream.imap), ("smtp", &self.upstream.smtp)] {
            if let Some(upstream) = upstream {
                upstream.problems(protocol, &mut problems);
                if let Some(name) = upstream.oauth2.as_deref() {
                    if !self.oauth2.contains_key(name) {
                        problems.push(format!(
                            "[upstream.{protocol}] oauth2 = {name:?} names no [oauth2.{name}] section"
                        ));
                    }
                }
            }
        }
        for (name, provider) in &self.oauth2 {
            provider.problems(name, &mut problems);
        }
        if !self.store.url.starts_with("sqlite:")
            && !self.store.url.starts_with("postgres://")
            && !self.store.url.starts_with("postgresql://")
        {
            problems.push(format!(
                "[store] url must start with sqlite:// or postgres://, not {:?}",
                self.store.url
            ));
        }
        if self.store.audit_queue == 0 {
            problems.push("[store] audit_queue must be at least 1".to_string());
        }
        let auth = &self.auth;
        if argon2::Params::new(
            auth.argon2_memory_kib,
            auth.argon2_iterations,
            auth.argon2_parallelism,
            None,
        )
        .is_err()
        {
            problems.push("[auth] argon2 parameters are out of range".to_string());
        }
        if auth.max_app_passwords == 0 {
            problems.push("[auth] max_app_passwords must be at least 1".to_string());
        }
        if self.limits.authenticated_idle_timeout < Duration::from_secs(31 * 60) {
            problems.push(
                "[limits] authenticated_idle_timeout must be at least 31m (IMAP clients re-issue IDLE every 29 minutes)"
                    .to_string(),
            );
        }
        if self.smtp.hostname.is_empty()
            || !self
                .smtp
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            problems.push(format!(
                "[smtp] hostname {:?} must be a host name",
                self.smtp.hostname
            ));
        }
        if self.smtp.max_header_bytes < 1024 {
            problems.push("[smtp] max_header_bytes must be at least 1024".to_string());
        }
        if let Some(acme) = &self.tls.acme {
            acme.problems(&mut problems);
        }
        if let Some(portal) = &self.portal {
            if !portal.public_url.starts_with("https://") {
                problems.push(format!(
                    "[portal] public_url {:?} must start with https://",
                    portal.public_url
                ));
            }
            match (portal.sign_in, &portal.ldap) {
                (SignIn::Upstream, _) if self.upstream.imap.is_none() => problems.push(
                    "[portal] sign_in = \"upstream\" needs an [upstream.imap] section".to_string(),
                ),
                (SignIn::Ldap, None) => problems
                    .push("[portal] sign_in = \"ldap\" needs a [portal.ldap] section".to_string()),
                (SignIn::Oidc, _) if portal.oidc.is_none() => problems
                    .push("[portal] sign_in = \"oidc\" needs a [portal.oidc] section".to_string()),
                _ => {}
            }
            if let Some(ldap) = &portal.ldap {
                let loopback = ldap
                    .url
                    .strip_prefix("ldap://")
                    .and_then(|rest| rest.split([':', '/']).next())
                    .is_some_and(is_loopback_host);
                if !ldap.url.starts_with("ldaps://") && !ldap.url.starts_with("ldap://") {
                    problems.push(format!(
                        "[portal.ldap] url {:?} must start with ldaps:// or ldap://",
                        ldap.url
                    ));
                } else if ldap.url.starts_with("ldap://") && !ldap.starttls && !loopback {
                    problems.push(
                        "[portal.ldap] an ldap:// url needs starttls = true (passwords would cross \
                         the network in clear), or use ldaps://"
                            .to_string(),
                    );
                }
                if !ldap.user_filter().contains("{login}") {
                    problems.push("[portal.ldap] user_filter must contain {login}".to_string());
                }
            }
        }
        if self.limits.max_line < 1024 {
            problems.push("[limits] max_line must be at least 1024".to_string());
        }
        problems
    }

    /// Problems that do not stop postern from starting but fail logins until fixed: a
    /// missing master password file (it is read at each upstream login, so creating it
    /// later needs no restart). `check-config` reports them; `serve` warns.
    pub fn deferred_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (protocol, upstream) in [("imap", &self.upstream.imap), ("smtp", &self.upstream.smtp)] {
            if let Some(upstream) = upstream.as_ref().filter(|u| !u.auth.uses_tokens()) {
                if !upstream.master_password_file.is_file() {
                    problems.push(format!(
                        "[upstream.{protocol}] master_password_file {} does not exist; upstream logins fail until it does",
                        upstream.master_password_file.display()
                    ));
                }
            }
        }
        for (name, provider) in &self.oauth2 {
            provider.missing_files(name, &mut problems);
        }
        if let Some(portal) = &self.portal {
            if portal.notifications.enabled && self.upstream.smtp.is_none() {
                problems.push(
                    "[portal.notifications] is on but there is no [upstream.smtp] to send through; \
                     users get no mail about app passwords and second factors (add the section, or \
                     set enabled = false)"
                        .to_string(),
                );
            }
        }
        problems
    }

    /// `Ok` when [`Config::problems`] finds none.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl UpstreamConfig {
    fn problems(&self, protocol: &str, problems: &mut Vec<String>) {
        let section = format!("[upstream.{protocol}]");
        if !self.address.contains(':') {
            problems.push(format!("{section} address must be host:port"));
        }
        if self.tls == UpstreamTls::None && !is_loopback_host(self.host()) {
            problems.push(format!(
                "{section} tls = \"none\" is refused for a non-loopback upstream: the master password would cross the network in clear"
            ));
        }
        if self.tls != UpstreamTls::None
            && rustls::pki_types::ServerName::try_from(self.server_name().to_string()).is_err()
        {
            problems.push(format!(
                "{section} server_name {:?} is not a valid DNS name or IP address",
                self.server_name()
            ));
        }
        if let Some(ca_file) = &self.ca_file {
            if !ca_file.is_file() {
                problems.push(format!(
                    "{section} ca_file {} does not exist",
                    ca_file.display()
                ));
            }
        }
        for pin in &self.pin_sha256 {
            if crate::tls::trust::parse_fingerprint(pin).is_none() {
                problems.push(format!(
                    "{section} pin_sha256 {pin:?} is not a SHA-256 fingerprint (64 hex digits, colons optional)"
                ));
            }
        }
        if !self.auth.uses_tokens()
            && (self.master_user.is_empty() || self.master_password_file.as_os_str().is_empty())
        {
            problems.push(format!(
                "{section} needs master_user and master_password_file"
            ));
        }
        if self.auth.uses_tokens() && self.oauth2.is_none() {
            problems.push(format!(
                "{section} auth = \"xoauth2\" or \"oauthbearer\" needs oauth2 = \"NAME\" of an [oauth2.NAME] section"
            ));
        }
        if self.auth == UpstreamAuth::MasterLogin && !self.master_login_format.contains("{user}") {
            problems.push(format!(
                "{section} master_login_format must contain {{user}}"
            ));
        }
    }
}

/// Whether `url` is plain HTTP to a loopback host (a test's token endpoint).
fn loopback_http(url: &str) -> bool {
    url.strip_prefix("http://")
        .and_then(|rest| rest.split(['/', ':']).next())
        .is_some_and(is_loopback_host)
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Durations written the human way: "60s", "31m", "250ms", "1h 30m".
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth2_presets_fill_in_the_endpoint_scope_and_grant() {
        let parse = |text: &str| -> OAuth2Config { toml::from_str(text).unwrap() };
        let m365 = parse(
            "preset = \"microsoft365\"\ntenant = \"contoso.onmicrosoft.com\"\n\
             client_id = \"app\"\nclient_secret_file = \"s\"",
        );
        assert_eq!(
            m365.token_url(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(m365.scope(), "https://outlook.office365.com/.default");
        assert_eq!(m365.grant(), OAuth2Grant::ClientCredentials);
        let google = parse(
            "preset = \"google\"\nclient_id = \"sa@p.iam.gserviceaccount.com\"\n\
             private_key_file = \"k.json\"",
        );
        assert_eq!(google.token_url(), "https://oauth2.googleapis.com/token");
        assert_eq!(google.scope(), "https://mail.google.com/");
        assert_eq!(google.grant(), OAuth2Grant::JwtBearer);
        let mut problems = Vec::new();
        parse("preset = \"generic\"\nclient_id = \"x\"\ntoken_url = \"http://idp.example/token\"")
            .problems("x", &mut problems);
        assert!(
            problems.iter().any(|p| p.contains("must be https")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("needs a scope")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("client_secret_file or a private_key_file")),
            "{problems:?}"
        );
    }

    const MINIMAL: &str = r#"
        [[listener]]
        name = "imaps"
        protocol = "imap"
        bind = "127.0.0.1:10993"
        tls = "implicit"

        [upstream.imap]
        address = "127.0.0.1:993"
        tls = "implicit"
        auth = "sasl-plain-authzid"
        master_user = "proxy"
        master_password_file = "/nonexistent/master-password"
    "#;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.store.url, "sqlite://data/postern.db");
        assert_eq!(config.store.audit_queue, 10_000);
        assert_eq!(config.auth.argon2_memory_kib, 19_456);
        assert_eq!(config.auth.max_app_passwords, 40);
        assert_eq!(config.limits.preauth_idle_timeout, Duration::from_secs(60));
        assert_eq!(config.limits.max_line, 8192);
        let upstream = config.upstream.imap.unwrap();
        assert_eq!(upstream.server_name(), "127.0.0.1");
        assert_eq!(upstream.master_login_format, "{user}*{master}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut config = Config::parse(MINIMAL).unwrap();
        config.limits.authenticated_idle_timeout = Duration::from_secs(60);
        config.store.url = "mysql://x".into();
        let problems = config.problems();
        assert!(config.deferred_problems()[0].contains("master_password_file"));
        assert!(problems
            .iter()
            .any(|p| p.contains("authenticated_idle_timeout")));
        assert!(problems.iter().any(|p| p.contains("[store] url")));
    }

    #[test]
    fn plaintext_upstream_is_refused_off_loopback() {
        let text = MINIMAL
            .replace(
                "tls = \"implicit\"\n        auth",
                "tls = \"none\"\n        auth",
            )
            .replace("127.0.0.1:993", "mail.example.com:143");
        let config = Config::parse(&text).unwrap();
        assert!(config
            .problems()
            .iter()
            .any(|p| p.contains("tls = \"none\" is refused")));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{MINIMAL}\n[http]\nbnd = \"127.0.0.1:1\"\n");
        assert!(Config::parse(&text).is_err());
    }

    #[test]
    fn durations_read_the_human_way() {
        let text = format!("{MINIMAL}\n[limits]\npreauth_idle_timeout = \"90s\"\n");
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.limits.preauth_idle_timeout, Duration::from_secs(90));
    }
}
