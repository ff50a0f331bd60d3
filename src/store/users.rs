//! Users: add, look up, list, disable or enable, remove. Disabling and removing write the
//! change feed in the same transaction.

use super::*;

impl Store {
    /// Creates a user. The login and addresses are lowercased; duplicate addresses are
    /// stored once.
    pub async fn add_user(&self, new: &NewUser<'_>, now: i64) -> Result<User, StoreError> {
        let login = new.login.to_lowercase();
        let mut addresses: Vec<String> = new.addresses.iter().map(|a| a.to_lowercase()).collect();
        addresses.sort();
        addresses.dedup();

        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO users (login, upstream_user, created_at) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(&login)
        .bind(new.upstream_user)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| {
            if is_unique_violation(&error, "users_login_unique") {
                StoreError::UserExists(login.clone())
            } else {
                error.into()
            }
        })?;
        let id: i64 = row.try_get("id")?;
        for address in &addresses {
            sqlx::query("INSERT INTO user_addresses (user_id, address) VALUES ($1, $2)")
                .bind(id)
                .bind(address)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(User {
            id,
            login,
            upstream_user: new.upstream_user.to_owned(),
            addresses,
            created_at: now,
            disabled_at: None,
        })
    }

    /// The user with this store id, with addresses.
    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let login: Option<String> = sqlx::query("SELECT login FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.try_get("login"))
            .transpose()?;
        match login {
            Some(login) => Ok(find_user(&mut conn, &login).await?),
            None => Ok(None),
        }
    }

    /// The user with this login (any case), with addresses.
    pub async fn user(&self, login: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(find_user(&mut conn, &login.to_lowercase()).await?)
    }

    /// Every user with addresses, ordered by login.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u ORDER BY u.login"
        ))
        .fetch_all(&self.pool)
        .await?;
        let address_rows =
            sqlx::query("SELECT user_id, address FROM user_addresses ORDER BY user_id, address")
                .fetch_all(&self.pool)
                .await?;
        let mut addresses: HashMap<i64, Vec<String>> = HashMap::new();
        for row in &address_rows {
            addresses
                .entry(row.try_get("user_id")?)
                .or_default()
                .push(row.try_get("address")?);
        }
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut user = user_from_row(row)?;
            user.addresses = addresses.remove(&user.id).unwrap_or_default();
            users.push(user);
        }
        Ok(users)
    }

    /// Disables or enables a user and returns it. Disabling keeps the first `disabled_at`
    /// if already disabled. A change (`user_disabled` / `user_enabled`) is written only
    /// when the state actually flips.
    pub async fn set_disabled(
        &self,
        login: &str,
        disabled: bool,
        now: i64,
    ) -> Result<User, StoreError> {
        let login = login.to_lowercase();
        let mut tx = self.begin_write().await?;
        let flipped = if disabled {
            sqlx::query(
                "UPDATE users SET disabled_at = $2 WHERE login = $1 AND disabled_at IS NULL \
                 RETURNING id",
            )
            .bind(&login)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE users SET disabled_at = NULL \
                 WHERE login = $1 AND disabled_at IS NOT NULL RETURNING id",
            )
            .bind(&login)
            .fetch_optional(&mut *tx)
            .await?
        };
        let user = find_user(&mut tx, &login)
            .await?
            .ok_or_else(|| StoreError::UnknownUser(login.clone()))?;
        if flipped.is_some() {
            let kind = if disabled {
                CHANGE_USER_DISABLED
            } else {
                CHANGE_USER_ENABLED
            };
            self.insert_change(&mut tx, user.id, None, kind, now)
                .await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    /// Removes a user, their addresses and app passwords, and writes a `user_removed`
    /// change. Their audit events stay.
    pub async fn remove_user(&self, login: &str, now: i64) -> Result<(), StoreError> {
        let login = login.to_lowercase();
        let mut tx = self.begin_write().await?;
        let user_id = lock_user(&mut tx, &login)
            .await?
            .ok_or_else(|| StoreError::UnknownUser(login.clone()))?;
        for statement in [
            "DELETE FROM user_addresses WHERE user_id = $1",
            "DELETE FROM device_links WHERE user_id = $1",
            "DELETE FROM app_passwords WHERE user_id = $1",
            "DELETE FROM portal_sessions WHERE user_id = $1",
            "DELETE FROM totp_secrets WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
            "DELETE FROM passkeys WHERE user_id = $1",
            "DELETE FROM directory_users WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        self.insert_change(&mut tx, user_id, None, CHANGE_USER_REMOVED, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
