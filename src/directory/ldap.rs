//! LDAP, as OpenLDAP and Active Directory speak it (ldap3). A sign-in searches the
//! person's entry with the service account (`{login}` in the filter escaped as RFC 4515
//! says, so a typed `*)(uid=*` matches nobody), then binds as that entry with the typed
//! password on a connection of its own. Entries map to a [`Person`] by the preset's
//! attributes (or the configured ones). Connections are LDAPS, or LDAP upgraded with
//! StartTLS, the certificate verified against the system roots or `ca_file`; plain LDAP
//! is allowed only on loopback. Every operation has the configured deadline; the
//! directory down or slow is [`Answer::Unavailable`], never the person's fault.

use std::sync::Arc;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::{Answer, Person};
use crate::auth::Secret;
use crate::config::{LdapConfig, LdapPreset};

/// AD's `userAccountControl` bit for a disabled account.
const ACCOUNTDISABLE: i64 = 0x2;

/// The OpenLDAP ppolicy lock attribute, and its value for an administrator's permanent
/// lock (slapo-ppolicy(5)); another value is a temporary lockout after failed binds.
const LOCKED: &str = "pwdAccountLockedTime";
const LOCKED_FOR_GOOD: &str = "000001010000Z";

/// One configured directory.
pub struct Directory {
    config: LdapConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl Directory {
    /// The directory of `[portal.ldap]`, its TLS trust loaded once.
    pub fn new(config: &LdapConfig) -> Result<Directory, String> {
        let tls = crate::tls::client_config(config.ca_file.as_deref(), &[])
            .map_err(|error| format!("[portal.ldap] TLS: {error}"))?;
        Ok(Directory {
            config: config.clone(),
            tls,
        })
    }

    /// Whether `password` is `login`'s: the person, [`Answer::No`] for a wrong password,
    /// an unknown or ambiguous login or a disabled account.
    pub async fn sign_in(&self, login: &str, password: &Secret<String>) -> Answer<Person> {
        // An empty password would be an anonymous bind, which succeeds.
        if password.expose().is_empty() || login.is_empty() {
            return Answer::No;
        }
        let entry = match self.entry(login).await {
            Answer::Yes(Some(entry)) => entry,
            Answer::Yes(None) | Answer::No => return Answer::No,
            Answer::Unavailable(why) => return Answer::Unavailable(why),
        };
        let Some(person) = self.person(&entry) else {
            return Answer::No;
        };
        let mut ldap = match self.connect().await {
            Ok(ldap) => ldap,
            Err(why) => return Answer::Unavailable(why),
        };
        let bound = ldap
            .with_timeout(self.config.timeout)
            .simple_bind(&entry.dn, password.expose())
            .await;
        let _ = ldap.unbind().await;
        match bound {
            Ok(result) if result.rc == 0 => {
                if person.disabled {
                    Answer::No
                } else {
                    Answer::Yes(person)
                }
            }
            // 49: invalidCredentials (AD adds a data code for locked, expired, disabled).
            Ok(result) if result.rc == 49 => Answer::No,
            Ok(result) => Answer::Unavailable(format!("the bind answered {}", result.rc)),
            Err(error) => Answer::Unavailable(error.to_string()),
        }
    }

    /// The person with this login, `None` when the directory has nobody by it (for the
    /// sync); [`Answer::No`] when several entries match, which says nothing either way.
    pub async fn find(&self, login: &str) -> Answer<Option<Person>> {
        match self.entry(login).await {
            Answer::Yes(entry) => Answer::Yes(entry.and_then(|entry| self.person(&entry))),
            Answer::No => Answer::No,
            Answer::Unavailable(why) => Answer::Unavailable(why),
        }
    }

    /// The one entry the filter finds for `login`; [`Answer::No`] when several do.
    async fn entry(&self, login: &str) -> Answer<Option<SearchEntry>> {
        let mut ldap = match self.connect().await {
            Ok(ldap) => ldap,
            Err(why) => return Answer::Unavailable(why),
        };
        let password = match std::fs::read_to_string(&self.config.bind_password_file) {
            Ok(text) => Secret::new(text.lines().next().unwrap_or("").to_string()),
            Err(error) => {
                return Answer::Unavailable(format!(
                    "cannot read {}: {error}",
                    self.config.bind_password_file.display()
                ))
            }
        };
        let timeout = self.config.timeout;
        let bound = ldap
            .with_timeout(timeout)
            .simple_bind(&self.config.bind_dn, password.expose())
            .await;
        match bound {
            Ok(result) if result.rc == 0 => {}
            Ok(result) => {
                return Answer::Unavailable(format!(
                    "the service account's bind answered {} {}",
                    result.rc, result.text
                ))
            }
            Err(error) => return Answer::Unavailable(error.to_string()),
        }
        let filter = self
            .config
            .user_filter()
            .replace("{login}", &ldap3::ldap_escape(login));
        let attributes = self.attributes();
        let found = ldap
            .with_timeout(timeout)
            .search(&self.config.base_dn, Scope::Subtree, &filter, attributes)
            .await;
        let _ = ldap.unbind().await;
        let entries = match found.and_then(|result| result.success()) {
            Ok((entries, _)) => entries,
            Err(error) => return Answer::Unavailable(format!("the search failed: {error}")),
        };
        let mut entries: Vec<SearchEntry> =
            entries.into_iter().map(SearchEntry::construct).collect();
        match entries.len() {
            0 => Answer::Yes(None),
            1 => Answer::Yes(entries.pop()),
            n => {
                tracing::warn!(
                    matches = n,
                    "ldap: a login matches several entries; refused"
                );
                Answer::No
            }
        }
    }

    /// A connection, TLS established (LDAPS, or StartTLS when configured).
    async fn connect(&self) -> Result<Ldap, String> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.timeout)
            .set_config(self.tls.clone())
            .set_starttls(self.config.starttls);
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|error| format!("cannot connect to {}: {error}", self.config.url))?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    /// The attributes a search asks for.
    fn attributes(&self) -> Vec<String> {
        let mut wanted = vec![
            self.config.login_attribute(),
            self.config.upstream_attribute(),
            self.config.address_attribute(),
        ];
        wanted.push(match self.config.preset {
            LdapPreset::Openldap => LOCKED.to_string(),
            LdapPreset::ActiveDirectory => "userAccountControl".to_string(),
        });
        wanted.dedup();
        wanted
    }

    /// The person an entry describes; `None` without a login or upstream identity.
    fn person(&self, entry: &SearchEntry) -> Option<Person> {
        let first = |attribute: &str| -> Option<String> {
            entry
                .attrs
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
                .and_then(|(_, values)| values.first())
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        let all = |attribute: &str| -> Vec<String> {
            entry
                .attrs
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(attribute))
                .flat_map(|(_, values)| values.iter().cloned())
                .collect()
        };
        let login = first(&self.config.login_attribute())?.to_lowercase();
        let upstream_user = first(&self.config.upstream_attribute())?;
        let mut addresses: Vec<String> = all(&self.config.address_attribute())
            .iter()
            .filter_map(|value| address(value))
            .collect();
        addresses.sort();
        addresses.dedup();
        let disabled = match self.config.preset {
            LdapPreset::Openldap => first(LOCKED).as_deref() == Some(LOCKED_FOR_GOOD),
            LdapPreset::ActiveDirectory => first("userAccountControl")
                .and_then(|flags| flags.parse::<i64>().ok())
                .is_some_and(|flags| flags & ACCOUNTDISABLE != 0),
        };
        Some(Person {
            login,
            upstream_user,
            addresses,
            disabled,
        })
    }
}

/// A sender address from an attribute value: a plain address (`mail`), or an AD
/// `proxyAddresses` value of type SMTP (`SMTP:primary@…`, `smtp:alias@…`); other types
/// (`X500:`, `SIP:`) are not addresses.
fn address(value: &str) -> Option<String> {
    let value = value.trim();
    let address = match value.split_once(':') {
        Some((kind, rest)) if kind.eq_ignore_ascii_case("smtp") => rest,
        Some(_) => return None,
        None => value,
    };
    (address.contains('@') && !address.contains(char::is_whitespace))
        .then(|| address.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_addresses_of_type_smtp_are_addresses() {
        assert_eq!(
            address("SMTP:Bob@Example.test"),
            Some("bob@example.test".into())
        );
        assert_eq!(
            address("smtp:b@example.test"),
            Some("b@example.test".into())
        );
        assert_eq!(address("X500:/o=Example/cn=bob"), None);
        assert_eq!(
            address("alice@example.test"),
            Some("alice@example.test".into())
        );
        assert_eq!(address("not an address"), None);
    }

    #[test]
    fn a_typed_login_cannot_widen_the_filter() {
        let escaped = ldap3::ldap_escape("*)(uid=*");
        assert_eq!(escaped, "\\2a\\29\\28uid=\\2a");
    }
}
