//! Following the LDAP directory: every `[directory] sync_interval`, each postern user who
//! came from it is looked up. One whose entry is disabled or gone is disabled in postern
//! (every app password stops working and live sessions close, through the change feed);
//! one the directory disabled is enabled again when the entry is back. A directory that
//! cannot be read changes nothing: an outage never disables anybody.
//! `postern directory sync --dry-run` shows the plan without applying it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ldap::Directory;
use super::Answer;
use crate::accounts::{Accounts, AdminError};
use crate::store::{DirectoryUser, Store};

/// Where provisioned LDAP users are marked from.
pub const SOURCE: &str = "ldap";

/// One change a sync makes.
#[derive(Debug)]
pub struct Change {
    pub user: DirectoryUser,
    pub action: Action,
}

/// What happens to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The entry is disabled.
    DisableDisabled,
    /// The entry is gone.
    DisableGone,
    /// The entry is back (or enabled again) after the directory disabled the user.
    Enable,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let login = &self.user.user.login;
        match self.action {
            Action::DisableDisabled => write!(f, "disable {login}: disabled in the directory"),
            Action::DisableGone => write!(f, "disable {login}: gone from the directory"),
            Action::Enable => write!(f, "enable {login}: back in the directory"),
        }
    }
}

/// What the directory says should change.
pub async fn plan(directory: &Directory, store: &Store) -> Result<Vec<Change>, String> {
    let users = store
        .directory_users(SOURCE)
        .await
        .map_err(|error| format!("the store: {error}"))?;
    let mut changes = Vec::new();
    for user in users {
        let enabled_here = user.user.disabled_at.is_none();
        let action = match directory.find(&user.user.login).await {
            Answer::Yes(Some(person)) if person.disabled => {
                enabled_here.then_some(Action::DisableDisabled)
            }
            Answer::Yes(Some(_)) => {
                (!enabled_here && user.directory_disabled_at.is_some()).then_some(Action::Enable)
            }
            Answer::Yes(None) => enabled_here.then_some(Action::DisableGone),
            Answer::No => {
                tracing::warn!(login = ?user.user.login, "directory sync: several entries match; left as it is");
                None
            }
            Answer::Unavailable(why) => return Err(why),
        };
        if let Some(action) = action {
            changes.push(Change { user, action });
        }
    }
    Ok(changes)
}

/// Makes the changes.
pub async fn apply(accounts: &Accounts, changes: &[Change]) -> Result<(), AdminError> {
    for change in changes {
        let disable = change.action != Action::Enable;
        accounts.follow_directory(&change.user, disable).await?;
        tracing::info!(change = %change, "directory sync");
    }
    Ok(())
}

/// Syncs every `interval` until `stop`.
pub async fn run(
    directory: std::sync::Arc<Directory>,
    store: Store,
    accounts: Accounts,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match plan(&directory, &store).await {
            Ok(changes) => {
                if let Err(error) = apply(&accounts, &changes).await {
                    tracing::warn!(%error, "directory sync: cannot apply a change");
                }
            }
            Err(why) => {
                tracing::warn!(reason = %why, "directory sync: the directory cannot be read; nothing changed")
            }
        }
    }
}
