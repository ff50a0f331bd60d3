//! A user's second factors: the TOTP secret with the last time step used, single-use
//! recovery codes (keyed digests), and passkeys (public keys, webauthn-rs's JSON).

use super::*;

/// A user's TOTP secret.
#[derive(Debug, Clone)]
pub struct TotpRecord {
    /// Base32.
    pub secret: String,
    /// `None` while being set up: the first right code confirms it.
    pub confirmed_at: Option<i64>,
}

/// A registered passkey.
#[derive(Debug, Clone)]
pub struct PasskeyRecord {
    pub id: i64,
    pub name: String,
    /// webauthn-rs's `Passkey`, JSON.
    pub passkey: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Which second factors a user has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MfaMethods {
    /// A confirmed TOTP secret.
    pub totp: bool,
    pub passkeys: i64,
    /// Recovery codes not used yet (a fallback, not a method of its own).
    pub recovery_codes: i64,
}

impl MfaMethods {
    /// Methods that sign in by themselves: TOTP and each passkey.
    pub fn count(&self) -> i64 {
        i64::from(self.totp) + self.passkeys
    }
}

impl Store {
    /// The user's TOTP secret, confirmed or being set up.
    pub async fn totp(&self, user_id: i64) -> Result<Option<TotpRecord>, StoreError> {
        let row = sqlx::query("SELECT secret, confirmed_at FROM totp_secrets WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(TotpRecord {
                secret: row.try_get("secret")?,
                confirmed_at: row.try_get("confirmed_at")?,
            })
        })
        .transpose()
    }

    /// Starts a TOTP set-up with `secret`, replacing one that was never confirmed; a
    /// confirmed secret stays (`false`).
    pub async fn begin_totp(
        &self,
        user_id: i64,
        secret: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM totp_secrets WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO totp_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(secret)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// Takes the code of time step `step` for the user's TOTP secret: `true` only the first
    /// time a step at least this late is used (a code is accepted once), confirming a
    /// secret being set up.
    pub async fn use_totp_step(
        &self,
        user_id: i64,
        step: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE totp_secrets SET last_step = $2, confirmed_at = COALESCE(confirmed_at, $3) \
             WHERE user_id = $1 AND last_step < $2",
        )
        .bind(user_id)
        .bind(step)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Replaces the user's recovery codes with these digests.
    pub async fn replace_recovery_codes(
        &self,
        user_id: i64,
        digests: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for digest in digests {
            sqlx::query("INSERT INTO recovery_codes (user_id, digest) VALUES ($1, $2)")
                .bind(user_id)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Uses the recovery code with this digest: `true` once, if it is the user's and unused.
    pub async fn use_recovery_code(
        &self,
        user_id: i64,
        digest: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND digest = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(digest)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Recovery codes the user has not used yet.
    pub async fn recovery_codes_left(&self, user_id: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Forgets the user's second factors and signs their browsers out (the helpdesk's
    /// `postern user reset-mfa`); they set up a new one at their next sign-in.
    pub async fn reset_mfa(&self, login: &str) -> Result<User, StoreError> {
        let login = login.to_lowercase();
        let mut tx = self.begin_write().await?;
        let user = find_user(&mut tx, &login)
            .await?
            .ok_or_else(|| StoreError::UnknownUser(login.clone()))?;
        for statement in [
            "DELETE FROM totp_secrets WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
            "DELETE FROM passkeys WHERE user_id = $1",
            "DELETE FROM portal_sessions WHERE user_id = $1",
        ] {
            sqlx::query(statement)
                .bind(user.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    /// What second factors the user has.
    pub async fn mfa_methods(&self, user_id: i64) -> Result<MfaMethods, StoreError> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM totp_secrets WHERE user_id = $1 AND confirmed_at IS NOT NULL) AS totp, \
             (SELECT COUNT(*) FROM passkeys WHERE user_id = $1) AS passkeys, \
             (SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL) AS codes",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(MfaMethods {
            totp: row.try_get::<i64, _>("totp")? > 0,
            passkeys: row.try_get("passkeys")?,
            recovery_codes: row.try_get("codes")?,
        })
    }

    /// Forgets the user's TOTP secret, if `keep_one` allows: with `keep_one`, only when
    /// another method remains. `true` when it went.
    pub async fn remove_totp(&self, user_id: i64, keep_one: bool) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let others: i64 = sqlx::query("SELECT COUNT(*) AS n FROM passkeys WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if keep_one && others == 0 {
            return Ok(false);
        }
        let removed = sqlx::query("DELETE FROM totp_secrets WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed == 1)
    }

    /// The user's passkeys, oldest first.
    pub async fn passkeys(&self, user_id: i64) -> Result<Vec<PasskeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, passkey, created_at, last_used_at FROM passkeys \
             WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PasskeyRecord {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    passkey: row.try_get("passkey")?,
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Registers a passkey; `false` if its credential is registered already (to anyone).
    pub async fn add_passkey(
        &self,
        user_id: i64,
        name: &str,
        credential_id: &str,
        passkey: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO passkeys (user_id, name, credential_id, passkey, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(name)
        .bind(credential_id)
        .bind(passkey)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(added == 1)
    }

    /// A passkey was used to sign in: its new state (signature counter) and the time.
    pub async fn passkey_used(&self, id: i64, passkey: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE passkeys SET passkey = $2, last_used_at = $3 WHERE id = $1")
            .bind(id)
            .bind(passkey)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes one of the user's passkeys, if `keep_one` allows: with `keep_one`, only
    /// when another method remains. `true` when it went.
    pub async fn remove_passkey(
        &self,
        user_id: i64,
        id: i64,
        keep_one: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM totp_secrets WHERE user_id = $1 AND confirmed_at IS NOT NULL) \
             + (SELECT COUNT(*) FROM passkeys WHERE user_id = $1) AS n",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        let methods: i64 = row.try_get("n")?;
        if keep_one && methods <= 1 {
            return Ok(false);
        }
        let removed = sqlx::query("DELETE FROM passkeys WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed == 1)
    }
}
