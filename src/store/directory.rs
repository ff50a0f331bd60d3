//! Which users came from the organisation's directory, and which of them the directory
//! (not an admin) disabled.

use super::*;

/// A user the directory follows.
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    pub user: User,
    /// `ldap`, `oidc` or `scim`.
    pub source: String,
    /// When the directory disabled the user; `None` if it did not (an admin may have).
    pub directory_disabled_at: Option<i64>,
}

impl Store {
    /// Marks `user_id` as coming from `source`.
    pub async fn mark_directory_user(&self, user_id: i64, source: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO directory_users (user_id, source) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(source)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The users that came from `source`, by login.
    pub async fn directory_users(&self, source: &str) -> Result<Vec<DirectoryUser>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.login, d.source, d.disabled_at AS directory_disabled_at \
             FROM directory_users d JOIN users u ON u.id = d.user_id \
             WHERE d.source = $1 ORDER BY u.login",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        let mut users = Vec::with_capacity(rows.len());
        let mut conn = self.pool.acquire().await?;
        for row in rows {
            let login: String = row.try_get("login")?;
            if let Some(user) = find_user(&mut conn, &login).await? {
                users.push(DirectoryUser {
                    user,
                    source: row.try_get("source")?,
                    directory_disabled_at: row.try_get("directory_disabled_at")?,
                });
            }
        }
        Ok(users)
    }

    /// Notes that the directory disabled (`Some(now)`) or enabled (`None`) the user.
    pub async fn set_directory_disabled(
        &self,
        user_id: i64,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE directory_users SET disabled_at = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
