//! The rows the store hands out and takes in: users, app passwords, changes and audit
//! events, as plain data with no database types in them.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A protocol an app password may be used for. A password made for a printer that only
/// sends mail gets `Smtp` alone, so a thief cannot read the mailbox with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reading mail over IMAP.
    Imap,
    /// Sending mail over SMTP submission.
    Smtp,
    /// Fetching mail over POP3.
    Pop3,
}

impl Scope {
    /// Every scope, in the order the store writes them.
    pub const ALL: [Scope; 3] = [Scope::Imap, Scope::Smtp, Scope::Pop3];

    /// The name used in the database, the CLI and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Imap => "imap",
            Scope::Smtp => "smtp",
            Scope::Pop3 => "pop3",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not `imap`, `smtp` or `pop3`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected imap, smtp or pop3")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    /// Accepts `imap`, `smtp` and `pop3` in any case, so `--scopes IMAP` works.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "imap" => Ok(Scope::Imap),
            "smtp" => Ok(Scope::Smtp),
            "pop3" => Ok(Scope::Pop3),
            _ => Err(UnknownScope(s.to_owned())),
        }
    }
}

/// Scopes as stored: canonical order, no duplicates, comma-separated (`"imap,smtp"`).
pub(crate) fn scopes_to_column(scopes: &[Scope]) -> String {
    Scope::ALL
        .iter()
        .filter(|scope| scopes.contains(scope))
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses the stored form back; an unknown name means the row was written by something
/// other than this version of postern.
pub(crate) fn scopes_from_column(column: &str) -> Result<Vec<Scope>, UnknownScope> {
    column
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(Scope::from_str)
        .collect()
}

/// A person who may log in through postern with app passwords.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    /// Store-assigned id; changes and app passwords refer to it.
    pub id: i64,
    /// What the user types as their username; always lowercase.
    pub login: String,
    /// The name postern logs in as on the real mail server on this user's behalf.
    pub upstream_user: String,
    /// Sender addresses the user may use over SMTP; lowercase, sorted.
    pub addresses: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// When an admin disabled the user; `None` while the user may log in.
    pub disabled_at: Option<i64>,
}

/// What an admin supplies to create a user.
#[derive(Clone, Copy, Debug)]
pub struct NewUser<'a> {
    /// Lowercased before it is stored.
    pub login: &'a str,
    /// Stored as given: upstream servers may be case-sensitive.
    pub upstream_user: &'a str,
    /// Lowercased and de-duplicated before they are stored.
    pub addresses: &'a [String],
}

/// One app password, without its hash or tag: safe to print and serialize.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppPassword {
    /// Store-assigned id; what `app-password revoke ID` takes.
    pub id: i64,
    /// The owning user's id.
    pub user_id: i64,
    /// The label the user chose ("Outlook on the office PC").
    pub name: String,
    /// The protocols it opens.
    pub scopes: Vec<Scope>,
    /// Unix seconds.
    pub created_at: i64,
    /// The last successful login with it, in unix seconds.
    pub last_used_at: Option<i64>,
    /// The client address of that login.
    pub last_used_ip: Option<String>,
    /// The mail app of that login, as its IMAP ID described it (`name=…; version=…`).
    pub last_used_client: Option<String>,
    /// It stops working at this time (unix seconds); `None` never expires.
    pub expires_at: Option<i64>,
    /// When it was revoked; `None` while it is not.
    pub revoked_at: Option<i64>,
}

impl AppPassword {
    /// The mail app of the last use, as people name it: the IMAP ID's `name` and
    /// `version` ("iPhone Mail 18.1"), else its first field.
    pub fn last_used_app(&self) -> Option<String> {
        let text = self.last_used_client.as_deref()?;
        let field = |key: &str| {
            text.split("; ")
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        };
        let named = match (field("name"), field("version")) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            (Some(name), None) => name.to_string(),
            _ => text.split("; ").next().unwrap_or(text).to_string(),
        };
        Some(named.chars().filter(|c| !c.is_control()).take(80).collect())
    }

    /// Usable for a login at `now`: not revoked, and not expired (an app password expires
    /// at the first second `now >= expires_at`). The same rule counts live passwords
    /// against the per-user limit.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// What the caller supplies to store a freshly generated app password.
#[derive(Clone, Copy, Debug)]
pub struct NewAppPassword<'a> {
    /// The user's label for it.
    pub name: &'a str,
    /// The protocols it opens; stored de-duplicated in canonical order.
    pub scopes: &'a [Scope],
    /// The lookup tag derived from the password; unique among the user's live passwords.
    pub tag: &'a str,
    /// The argon2id PHC string.
    pub hash: &'a str,
    /// Unix seconds, or `None` for no expiry.
    pub expires_at: Option<i64>,
}

/// What a login attempt needs, found by (login, tag) in one query.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user, with addresses (the SMTP sender policy needs them).
    pub user: User,
    /// The user's app password with the attempt's tag: the live one if there is one,
    /// else the most recently revoked one (so the attempt can be reported as `revoked`).
    pub app_password: Option<AppPassword>,
    /// That app password's argon2id PHC string; `Some` exactly when `app_password` is.
    pub hash: Option<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a password, but it can be attacked offline: keep it out of logs.
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("app_password", &self.app_password)
            .field("hash", &self.hash.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One entry of the change feed that gateway instances poll to drop cached verifications
/// and close sessions of revoked, disabled or removed credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Increases with every change; pollers remember the last one they saw.
    pub id: i64,
    /// The user concerned (possibly removed by now).
    pub user_id: i64,
    /// The app password concerned, for `app_password_revoked`.
    pub app_password_id: Option<i64>,
    /// One of the `CHANGE_*` constants in [`crate::store`].
    pub kind: String,
    /// Unix seconds.
    pub at: i64,
}

/// An audit event to record. Borrowed, so the hot path does not allocate to audit.
#[derive(Clone, Copy, Debug)]
pub struct AuditEvent<'a> {
    /// Unix seconds.
    pub at: i64,
    /// What happened: `login`, `app_password_created`, `app_password_revoked`, ...
    pub kind: &'a str,
    /// The login concerned, as attempted (it may not exist); stored lowercased.
    pub login: &'a str,
    /// The app password concerned, when one was identified.
    pub app_password_id: Option<i64>,
    /// `imap` or `smtp` for logins.
    pub protocol: Option<&'a str>,
    /// The client's address.
    pub client_ip: Option<&'a str>,
    /// The client's self-description (IMAP ID), when it sent one.
    pub client_id: Option<&'a str>,
    /// The outcome, with the same names as the `result` metric label.
    pub result: Option<&'a str>,
    /// Free text for humans.
    pub detail: Option<&'a str>,
}

/// A recorded audit event, as read back for `postern audit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Increases with every event.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// See [`AuditEvent::kind`].
    pub kind: String,
    /// Lowercase.
    pub login: String,
    /// See [`AuditEvent::app_password_id`].
    pub app_password_id: Option<i64>,
    /// See [`AuditEvent::protocol`].
    pub protocol: Option<String>,
    /// See [`AuditEvent::client_ip`].
    pub client_ip: Option<String>,
    /// See [`AuditEvent::client_id`].
    pub client_id: Option<String>,
    /// See [`AuditEvent::result`].
    pub result: Option<String>,
    /// See [`AuditEvent::detail`].
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_in_canonical_order() {
        let column = scopes_to_column(&[Scope::Smtp, Scope::Imap, Scope::Smtp]);
        assert_eq!(column, "imap,smtp");
        assert_eq!(
            scopes_from_column(&column).unwrap(),
            vec![Scope::Imap, Scope::Smtp]
        );
        assert_eq!(scopes_from_column("smtp").unwrap(), vec![Scope::Smtp]);
        assert_eq!(scopes_from_column("").unwrap(), vec![]);
        assert_eq!(
            scopes_from_column("imap,pop3").unwrap(),
            vec![Scope::Imap, Scope::Pop3]
        );
        assert_eq!(
            scopes_from_column("imap,jmap"),
            Err(UnknownScope("jmap".into()))
        );
    }

    #[test]
    fn scope_parses_any_case_and_serializes_lowercase() {
        assert_eq!("IMAP".parse::<Scope>(), Ok(Scope::Imap));
        assert_eq!("smtp".parse::<Scope>(), Ok(Scope::Smtp));
        assert_eq!("Pop3".parse::<Scope>(), Ok(Scope::Pop3));
        assert!("jmap".parse::<Scope>().is_err());
        assert_eq!(
            serde_json::to_string(&[Scope::Imap, Scope::Smtp]).unwrap(),
            r#"["imap","smtp"]"#
        );
    }

    #[test]
    fn live_means_not_revoked_and_not_yet_expired() {
        let mut password = AppPassword {
            id: 1,
            user_id: 1,
            name: "phone".into(),
            scopes: vec![Scope::Imap],
            created_at: 0,
            last_used_at: None,
            last_used_ip: None,
            last_used_client: None,
            expires_at: Some(100),
            revoked_at: None,
        };
        assert!(password.is_live(99));
        assert!(!password.is_live(100));
        password.expires_at = None;
        assert!(password.is_live(i64::MAX));
        password.revoked_at = Some(5);
        assert!(!password.is_live(0));
    }

    #[test]
    fn credential_debug_hides_the_hash() {
        let credential = Credential {
            user: User {
                id: 1,
                login: "a".into(),
                upstream_user: "a".into(),
                addresses: vec![],
                created_at: 0,
                disabled_at: None,
            },
            app_password: None,
            hash: Some("$argon2id$v=19$secret".into()),
        };
        let shown = format!("{credential:?}");
        assert!(!shown.contains("argon2id"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
