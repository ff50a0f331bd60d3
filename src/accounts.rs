//! The account use cases: add, disable, enable and remove users; issue, list and revoke
//! app passwords. Each writes its audit event, and the store writes the change-feed entry
//! that makes every instance drop cached verifications and close sessions. The CLI uses
//! them now; the portal and SCIM provisioning are further callers of the same operations.

use crate::auth::digest::DigestKey;
use crate::auth::hasher::{HashError, PasswordHasher};
use crate::auth::{password, Secret};
use crate::clock::now;
use crate::directory::Person;
use crate::store::{
    AppPassword, AuditEvent, DirectoryUser, NewAppPassword, NewUser, Scope, Store, StoreError, User,
};

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot hash the new password: {0}")]
    Hash(#[from] HashError),
    #[error("could not draw an app password with a free lookup tag; try again")]
    NoFreeTag,
}

/// A freshly issued app password: shown once, never stored in clear.
#[derive(Debug)]
pub struct Issued {
    pub app_password: AppPassword,
    /// Display form, `abcd efgh ijkl mnop`.
    pub password: Secret<String>,
}

/// What to issue.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    pub login: &'a str,
    pub name: &'a str,
    pub scopes: &'a [Scope],
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub actor: Actor<'a>,
}

/// Who asks for an operation on app passwords, as its audit event records it: an admin at
/// the command line, or the user in the portal from an address and a browser.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Cli,
    /// The organisation's directory: provisioning at a first sign-in, the sync, SCIM.
    Directory,
    Portal {
        client_ip: std::net::IpAddr,
        /// The browser's User-Agent, shortened.
        browser: Option<&'a str>,
    },
}

impl Actor<'_> {
    /// The audit event's `detail`: where the operation came from.
    fn source(&self) -> &'static str {
        match self {
            Actor::Cli => "source=cli",
            Actor::Directory => "source=directory",
            Actor::Portal { .. } => "source=portal",
        }
    }
}

/// A user to add. The upstream identity defaults to the login, and a login that is an
/// address is the user's sender address when none is given.
#[derive(Debug, Clone, Copy)]
pub struct NewAccount<'a> {
    pub login: &'a str,
    pub upstream_user: Option<&'a str>,
    pub addresses: &'a [String],
}

/// The account operations on one store.
#[derive(Clone)]
pub struct Accounts {
    store: Store,
    hasher: PasswordHasher,
    lookup_key: DigestKey,
    /// Live app passwords a user may hold (`[auth] max_app_passwords`).
    max_live: u32,
}

impl Accounts {
    /// Reads the lookup key from the store.
    pub async fn new(
        store: Store,
        hasher: PasswordHasher,
        max_live: u32,
    ) -> Result<Self, AdminError> {
        let lookup_key = DigestKey::new(store.lookup_key().await?);
        Ok(Self {
            store,
            hasher,
            lookup_key,
            max_live,
        })
    }

    /// Adds a user.
    pub async fn add_user(&self, account: NewAccount<'_>) -> Result<User, AdminError> {
        let mut addresses = account.addresses.to_vec();
        if addresses.is_empty() && account.login.contains('@') {
            addresses.push(account.login.to_string());
        }
        let new = NewUser {
            login: account.login,
            upstream_user: account.upstream_user.unwrap_or(account.login),
            addresses: &addresses,
        };
        let user = self.store.add_user(&new, now()).await?;
        self.audit("user_added", &user.login, None).await?;
        Ok(user)
    }

    /// Creates the user that a person from the directory is (`source`: `ldap`, `oidc`,
    /// `scim`), with the upstream identity and sender addresses it gives; the directory
    /// follows them from now on.
    pub async fn provision(&self, person: &Person, source: &str) -> Result<User, AdminError> {
        let new = NewUser {
            login: &person.login,
            upstream_user: &person.upstream_user,
            addresses: &person.addresses,
        };
        let user = self.store.add_user(&new, now()).await?;
        self.store.mark_directory_user(user.id, source).await?;
        self.audit_as("user_added", &user.login, None, Actor::Directory)
            .await?;
        Ok(user)
    }

    /// Follows the directory: it says the user is disabled or gone (`disabled`), or there
    /// again. Disabling stops every app password and closes the live sessions, like an
    /// admin's; enabling undoes only what the directory itself disabled.
    pub async fn follow_directory(
        &self,
        user: &DirectoryUser,
        disabled: bool,
    ) -> Result<User, AdminError> {
        let at = now();
        if !disabled && user.directory_disabled_at.is_none() {
            return Ok(user.user.clone());
        }
        let changed = self
            .store
            .set_disabled(&user.user.login, disabled, at)
            .await?;
        self.store
            .set_directory_disabled(user.user.id, disabled.then_some(at))
            .await?;
        let kind = if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        };
        self.audit_as(kind, &changed.login, None, Actor::Directory)
            .await?;
        Ok(changed)
    }

    /// Every user, by login.
    pub async fn users(&self) -> Result<Vec<User>, AdminError> {
        Ok(self.store.users().await?)
    }

    /// One user, or [`StoreError::UnknownUser`].
    pub async fn user(&self, login: &str) -> Result<User, AdminError> {
        match self.store.user(login).await? {
            Some(user) => Ok(user),
            None => Err(StoreError::UnknownUser(login.to_lowercase()).into()),
        }
    }

    /// Disables a user (none of their app passwords work, their sessions close) or
    /// enables them again.
    pub async fn set_disabled(&self, login: &str, disabled: bool) -> Result<User, AdminError> {
        self.set_disabled_as(login, disabled, Actor::Cli).await
    }

    /// [`Accounts::set_disabled`], for `actor` (the CLI, or SCIM's directory).
    pub async fn set_disabled_as(
        &self,
        login: &str,
        disabled: bool,
        actor: Actor<'_>,
    ) -> Result<User, AdminError> {
        let user = self.store.set_disabled(login, disabled, now()).await?;
        let kind = if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        };
        self.audit_as(kind, &user.login, None, actor).await?;
        Ok(user)
    }

    /// Removes a user with all their app passwords; their sessions close.
    pub async fn remove_user(&self, login: &str) -> Result<(), AdminError> {
        self.remove_user_as(login, Actor::Cli).await
    }

    /// [`Accounts::remove_user`], for `actor`.
    pub async fn remove_user_as(&self, login: &str, actor: Actor<'_>) -> Result<(), AdminError> {
        let login = login.to_lowercase();
        self.store.remove_user(&login, now()).await?;
        self.audit_as("user_removed", &login, None, actor).await?;
        Ok(())
    }

    /// Forgets the user's second factors and signs their portal sessions out (the
    /// helpdesk, when a phone is lost).
    pub async fn reset_mfa(&self, login: &str) -> Result<User, AdminError> {
        let user = self.store.reset_mfa(login).await?;
        self.audit("mfa_reset", &user.login, None).await?;
        Ok(user)
    }

    /// A user's app passwords, live or not.
    pub async fn app_passwords(&self, login: &str) -> Result<Vec<AppPassword>, AdminError> {
        Ok(self.store.app_passwords(login).await?)
    }

    /// Generates, hashes and stores a new app password. A clash of lookup tags with one
    /// of the user's live passwords (about 1 in 400,000 with 40 live) draws a new password.
    pub async fn issue_app_password(
        &self,
        request: IssueRequest<'_>,
    ) -> Result<Issued, AdminError> {
        let login = password::normalize_login(request.login);
        for _ in 0..8 {
            let shown = password::generate();
            // Unwrap: generate() yields the canonical alphabet and length.
            let canonical =
                password::normalize(shown.expose()).expect("generated passwords are well-formed");
            let tag = self.lookup_key.tag(&login, &canonical);
            let hash = self.hasher.hash(canonical).await?;
            let new = NewAppPassword {
                name: request.name,
                scopes: request.scopes,
                tag: &tag,
                hash: &hash,
                expires_at: request.expires_at,
            };
            match self
                .store
                .create_app_password(&login, &new, self.max_live, now())
                .await
            {
                Ok(app_password) => {
                    self.audit_as(
                        "app_password_created",
                        &login,
                        Some(app_password.id),
                        request.actor,
                    )
                    .await?;
                    return Ok(Issued {
                        app_password,
                        password: shown,
                    });
                }
                Err(StoreError::TagTaken) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(AdminError::NoFreeTag)
    }

    /// Revokes one app password; returns it and its owner's login.
    pub async fn revoke_app_password(
        &self,
        id: i64,
        actor: Actor<'_>,
    ) -> Result<(AppPassword, String), AdminError> {
        let Some((_, login)) = self.store.app_password(id).await? else {
            return Err(StoreError::UnknownAppPassword(id).into());
        };
        let app_password = self.store.revoke_app_password(id, now()).await?;
        self.audit_as("app_password_revoked", &login, Some(id), actor)
            .await?;
        Ok((app_password, login))
    }

    /// Revokes every live app password of a user; returns their ids.
    pub async fn revoke_all(&self, login: &str, actor: Actor<'_>) -> Result<Vec<i64>, AdminError> {
        let at = now();
        let ids = self.store.revoke_all(login, at).await?;
        let login = login.to_lowercase();
        for &id in &ids {
            self.audit_as("app_password_revoked", &login, Some(id), actor)
                .await?;
        }
        Ok(ids)
    }

    async fn audit(
        &self,
        kind: &str,
        login: &str,
        app_password_id: Option<i64>,
    ) -> Result<(), StoreError> {
        self.audit_as(kind, login, app_password_id, Actor::Cli)
            .await
    }

    /// Records `kind` for `login`, with the actor's address and browser when it is the
    /// portal.
    pub async fn audit_as(
        &self,
        kind: &str,
        login: &str,
        app_password_id: Option<i64>,
        actor: Actor<'_>,
    ) -> Result<(), StoreError> {
        let (client_ip, client_id) = match actor {
            Actor::Cli | Actor::Directory => (None, None),
            Actor::Portal { client_ip, browser } => (Some(client_ip.to_string()), browser),
        };
        self.store
            .record_audit(&AuditEvent {
                at: now(),
                kind,
                login,
                app_password_id,
                protocol: None,
                client_ip: client_ip.as_deref(),
                client_id,
                result: None,
                detail: Some(actor.source()),
            })
            .await
    }
}
