//! The portal's records: signed-in browser sessions (only a digest of each cookie token is
//! kept) with the passkey ceremony under way, and the single-use links that hand a device
//! its profile (sealed).

use super::*;

/// A signed-in browser, as the portal reads it on each request.
#[derive(Debug, Clone)]
pub struct PortalSession {
    pub user: User,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the primary password was last checked (Unix seconds).
    pub password_at: i64,
    /// When the second factor was last passed; `None`: not in this session yet.
    pub mfa_at: Option<i64>,
}

/// An OpenID Connect sign-in under way.
#[derive(Debug, Clone)]
pub struct OidcLogin {
    pub state_hash: String,
    /// A digest of the CSRF token of the browser that started it.
    pub browser_hash: String,
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
}

/// A single-use link to a device profile, as the store keeps it.
#[derive(Debug, Clone)]
pub struct DeviceLink {
    /// SHA-256 of the link's token, hex.
    pub token_hash: String,
    pub user_id: i64,
    /// The app password the profile carries.
    pub app_password_id: i64,
    /// The password, sealed with a key only the token gives (base64).
    pub sealed: String,
    pub expires_at: i64,
}

impl Store {
    /// Records a browser signed in as `user_id` with its password just checked.
    pub async fn create_portal_session(
        &self,
        token_hash: &str,
        user_id: i64,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO portal_sessions (token_hash, user_id, csrf, created_at, password_at, \
             last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $4, $4, $5)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session for a cookie token's digest: not past its lifetime, seen within
    /// `idle` seconds, its user enabled. Marks it seen now.
    pub async fn portal_session(
        &self,
        token_hash: &str,
        now: i64,
        idle: i64,
    ) -> Result<Option<PortalSession>, StoreError> {
        let row = sqlx::query(
            "SELECT u.login, s.csrf, s.password_at, s.mfa_at FROM portal_sessions s \
             JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2 AND s.last_seen_at > $3 \
             AND u.disabled_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .bind(now - idle)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        sqlx::query("UPDATE portal_sessions SET last_seen_at = $2 WHERE token_hash = $1")
            .bind(token_hash)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let login: String = row.try_get("login")?;
        let mut conn = self.pool.acquire().await?;
        let Some(user) = find_user(&mut conn, &login).await? else {
            return Ok(None);
        };
        Ok(Some(PortalSession {
            user,
            csrf: row.try_get("csrf")?,
            password_at: row.try_get("password_at")?,
            mfa_at: row.try_get("mfa_at")?,
        }))
    }

    /// The second factor was passed in this session now.
    pub async fn portal_mfa_passed(&self, token_hash: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE portal_sessions SET mfa_at = $2 WHERE token_hash = $1")
            .bind(token_hash)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends one session (sign-out), and any past their lifetime on the way.
    pub async fn end_portal_session(&self, token_hash: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM portal_sessions WHERE token_hash = $1 OR expires_at <= $2")
            .bind(token_hash)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps the passkey ceremony under way in this session (replacing any other).
    pub async fn set_ceremony(&self, token_hash: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE portal_sessions SET ceremony = $2 WHERE token_hash = $1")
            .bind(token_hash)
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes the passkey ceremony under way in this session: once.
    pub async fn take_ceremony(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let state: Option<String> =
            sqlx::query("SELECT ceremony FROM portal_sessions WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("ceremony"))
                .transpose()?
                .flatten();
        sqlx::query("UPDATE portal_sessions SET ceremony = NULL WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(state)
    }

    /// Keeps an OpenID Connect sign-in under way (its older siblings past 10 minutes go).
    pub async fn begin_oidc_login(&self, login: &OidcLogin, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM oidc_logins WHERE created_at <= $1")
            .bind(now - 600)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO oidc_logins (state_hash, browser_hash, nonce, verifier, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&login.state_hash)
        .bind(&login.browser_hash)
        .bind(&login.nonce)
        .bind(&login.verifier)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the sign-in under way with this state digest: once, within 10 minutes.
    pub async fn take_oidc_login(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OidcLogin>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT browser_hash, nonce, verifier, created_at FROM oidc_logins \
             WHERE state_hash = $1",
        )
        .bind(state_hash)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM oidc_logins WHERE state_hash = $1")
            .bind(state_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        let created_at: i64 = row.try_get("created_at")?;
        if created_at <= now - 600 {
            return Ok(None);
        }
        Ok(Some(OidcLogin {
            state_hash: state_hash.to_string(),
            browser_hash: row.try_get("browser_hash")?,
            nonce: row.try_get("nonce")?,
            verifier: row.try_get("verifier")?,
        }))
    }

    /// Keeps a single-use device link: its token's digest and the app password it carries,
    /// sealed. Links past their time go on the way.
    pub async fn create_device_link(&self, link: &DeviceLink, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM device_links WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO device_links (token_hash, user_id, app_password_id, sealed, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&link.token_hash)
        .bind(link.user_id)
        .bind(link.app_password_id)
        .bind(&link.sealed)
        .bind(link.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the device link with this token digest: once, before it expires (it is gone
    /// from the store either way).
    pub async fn take_device_link(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<DeviceLink>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT user_id, app_password_id, sealed, expires_at FROM device_links \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM device_links WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        let link = DeviceLink {
            token_hash: token_hash.to_string(),
            user_id: row.try_get("user_id")?,
            app_password_id: row.try_get("app_password_id")?,
            sealed: row.try_get("sealed")?,
            expires_at: row.try_get("expires_at")?,
        };
        Ok((link.expires_at > now).then_some(link))
    }
}
