//! What administrators do, shared by the CLI and the tests: issue and revoke app
//! passwords, each with its audit event.

use crate::auth::digest::DigestKey;
use crate::auth::hasher::{HashError, PasswordHasher};
use crate::auth::{password, Secret};
use crate::store::{AppPassword, AuditEvent, NewAppPassword, Scope, Store, StoreError};

/// Why an administrative operation failed.
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
    pub max_live: u32,
}

/// Generates, hashes and stores a new app password. A clash of lookup tags with one of
/// the user's live passwords (about 1 in 400,000 with 40 live) draws a new password.
pub async fn issue_app_password(
    store: &Store,
    hasher: &PasswordHasher,
    lookup_key: &DigestKey,
    request: IssueRequest<'_>,
    now: i64,
) -> Result<Issued, AdminError> {
    let login = password::normalize_login(request.login);
    for _ in 0..8 {
        let shown = password::generate();
        // Unwrap: generate() yields the canonical alphabet and length.
        let canonical =
            password::normalize(shown.expose()).expect("generated passwords are well-formed");
        let tag = lookup_key.tag(&login, &canonical);
        let hash = hasher.hash(canonical).await?;
        let new = NewAppPassword {
            name: request.name,
            scopes: request.scopes,
            tag: &tag,
            hash: &hash,
            expires_at: request.expires_at,
        };
        match store
            .create_app_password(&login, &new, request.max_live, now)
            .await
        {
            Ok(app_password) => {
                audit(store, "app_password_created", &login, app_password.id, now).await?;
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
    store: &Store,
    id: i64,
    now: i64,
) -> Result<(AppPassword, String), AdminError> {
    let Some((_, login)) = store.app_password(id).await? else {
        return Err(StoreError::UnknownAppPassword(id).into());
    };
    let app_password = store.revoke_app_password(id, now).await?;
    audit(store, "app_password_revoked", &login, id, now).await?;
    Ok((app_password, login))
}

/// Revokes every live app password of a user; returns their ids.
pub async fn revoke_all(store: &Store, login: &str, now: i64) -> Result<Vec<i64>, AdminError> {
    let ids = store.revoke_all(login, now).await?;
    for &id in &ids {
        audit(store, "app_password_revoked", login, id, now).await?;
    }
    Ok(ids)
}

async fn audit(
    store: &Store,
    kind: &str,
    login: &str,
    app_password_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    store
        .record_audit(&AuditEvent {
            at: now,
            kind,
            login,
            app_password_id: Some(app_password_id),
            protocol: None,
            client_ip: None,
            client_id: None,
            result: None,
            detail: None,
        })
        .await
}
