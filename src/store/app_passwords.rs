//! App passwords: create (under the per-user limit), list, look up by lookup tag for the
//! verifier, revoke, and stamp their last use.

use super::*;

impl Store {
    /// Stores a new app password for `login`. Refused with `LimitReached` when the user
    /// already has `max_live` live ones (not revoked, not expired at `now`), and with
    /// `TagTaken` when a live one has the same tag.
    pub async fn create_app_password(
        &self,
        login: &str,
        new: &NewAppPassword<'_>,
        max_live: u32,
        now: i64,
    ) -> Result<AppPassword, StoreError> {
        let login = login.to_lowercase();
        let scopes = scopes_to_column(new.scopes);
        let mut tx = self.begin_write().await?;
        // Locked, so two concurrent creates cannot both pass the count.
        let user_id = lock_user(&mut tx, &login)
            .await?
            .ok_or_else(|| StoreError::UnknownUser(login.clone()))?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS live FROM app_passwords WHERE user_id = $1 \
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(user_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let live: i64 = row.try_get("live")?;
        if live >= i64::from(max_live) {
            return Err(StoreError::LimitReached {
                login,
                limit: max_live,
            });
        }
        let row = sqlx::query(
            "INSERT INTO app_passwords (user_id, name, scopes, tag, hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(user_id)
        .bind(new.name)
        .bind(&scopes)
        .bind(new.tag)
        .bind(new.hash)
        .bind(now)
        .bind(new.expires_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| {
            if is_unique_violation(&error, "app_passwords_live_tag") {
                StoreError::TagTaken
            } else {
                error.into()
            }
        })?;
        let id: i64 = row.try_get("id")?;
        tx.commit().await?;
        Ok(AppPassword {
            id,
            user_id,
            name: new.name.to_owned(),
            scopes: scopes_from_column(&scopes).map_err(|e| corrupt("scopes", e))?,
            created_at: now,
            last_used_at: None,
            last_used_ip: None,
            last_used_client: None,
            expires_at: new.expires_at,
            revoked_at: None,
        })
    }

    /// Every app password of `login`, revoked and expired ones included, ordered by id.
    pub async fn app_passwords(&self, login: &str) -> Result<Vec<AppPassword>, StoreError> {
        let login = login.to_lowercase();
        let user = sqlx::query("SELECT id FROM users WHERE login = $1")
            .bind(&login)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::UnknownUser(login))?;
        let user_id: i64 = user.try_get("id")?;
        let rows = sqlx::query(&format!(
            "SELECT {APP_PASSWORD_COLUMNS} FROM app_passwords p WHERE p.user_id = $1 \
             ORDER BY p.id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let passwords = rows
            .iter()
            .map(app_password_from_row)
            .collect::<Result<_, _>>()?;
        Ok(passwords)
    }

    /// One app password and its owner's login.
    pub async fn app_password(&self, id: i64) -> Result<Option<(AppPassword, String)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(find_app_password(&mut conn, id).await?)
    }

    /// What a login attempt with `login` and a password whose lookup tag is `tag` needs, in
    /// one query: `None` if there is no such user; otherwise the user and the app password
    /// with that tag, preferring the live one, else the most recently revoked one.
    pub async fn credential(
        &self,
        login: &str,
        tag: &str,
    ) -> Result<Option<Credential>, StoreError> {
        // One row per address (or one row without). The candidate is picked by a
        // correlated subquery: live first, then the latest revoked.
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, a.address, {APP_PASSWORD_COLUMNS}, p.hash \
             FROM users u \
             LEFT JOIN app_passwords p ON p.id = ( \
                 SELECT c.id FROM app_passwords c WHERE c.user_id = u.id AND c.tag = $2 \
                 ORDER BY CASE WHEN c.revoked_at IS NULL THEN 0 ELSE 1 END, \
                          c.revoked_at DESC, c.id DESC \
                 LIMIT 1) \
             LEFT JOIN user_addresses a ON a.user_id = u.id \
             WHERE u.login = $1 \
             ORDER BY a.address"
        ))
        .bind(login.to_lowercase())
        .bind(tag)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut user = user_from_row(first)?;
        for row in &rows {
            if let Some(address) = row.try_get::<Option<String>, _>("address")? {
                user.addresses.push(address);
            }
        }
        let (app_password, hash) = match first.try_get::<Option<i64>, _>("app_password_id")? {
            Some(_) => (
                Some(app_password_from_row(first)?),
                Some(first.try_get::<String, _>("hash")?),
            ),
            None => (None, None),
        };
        Ok(Some(Credential {
            user,
            app_password,
            hash,
        }))
    }

    /// Revokes an app password and returns it. Idempotent: revoking a revoked one keeps
    /// the first `revoked_at` and writes no second change.
    pub async fn revoke_app_password(&self, id: i64, now: i64) -> Result<AppPassword, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "UPDATE app_passwords SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
             RETURNING user_id",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let (password, _login) = find_app_password(&mut tx, id)
            .await?
            .ok_or(StoreError::UnknownAppPassword(id))?;
        if revoked.is_some() {
            self.insert_change(
                &mut tx,
                password.user_id,
                Some(id),
                CHANGE_APP_PASSWORD_REVOKED,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(password)
    }

    /// Revokes every app password of `login` that is not revoked yet (expired ones
    /// included) and returns their ids, ascending; one change per id.
    pub async fn revoke_all(&self, login: &str, now: i64) -> Result<Vec<i64>, StoreError> {
        let login = login.to_lowercase();
        let mut tx = self.begin_write().await?;
        let user_id = lock_user(&mut tx, &login)
            .await?
            .ok_or_else(|| StoreError::UnknownUser(login.clone()))?;
        let rows = sqlx::query(
            "UPDATE app_passwords SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL \
             RETURNING id",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = rows
            .iter()
            .map(|row| row.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        for &id in &ids {
            self.insert_change(&mut tx, user_id, Some(id), CHANGE_APP_PASSWORD_REVOKED, now)
                .await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Notes a successful login with an app password: when and from where.
    pub async fn record_use(
        &self,
        app_password_id: i64,
        at: i64,
        ip: Option<&str>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE app_passwords SET last_used_at = $2, last_used_ip = $3 WHERE id = $1",
        )
        .bind(app_password_id)
        .bind(at)
        .bind(ip)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::UnknownAppPassword(app_password_id));
        }
        Ok(())
    }
}
