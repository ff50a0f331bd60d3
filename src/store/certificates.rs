//! Certificates obtained by ACME, the account that obtains them, the HTTP-01 challenges of
//! an order under way, and the lock that lets one instance order at a time.

use sqlx::pool::PoolConnection;

use super::*;

/// The advisory lock key of ACME orders (PostgreSQL): "postern" in ASCII.
const ORDER_LOCK: i64 = 0x0070_6f73_7465_726e;

/// Announced on this channel when a certificate or a challenge changes.
pub const CERTIFICATE_CHANNEL: &str = "postern_certificates";

/// A certificate as stored: PEM chain and key, and its validity in unix seconds.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Held while this instance orders; dropping it without [`OrderLock::release`] releases it
/// when its connection closes.
pub struct OrderLock(Option<PoolConnection<Any>>);

impl OrderLock {
    /// Lets another instance order.
    pub async fn release(self) {
        if let Some(mut connection) = self.0 {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)::text AS unlocked")
                .bind(ORDER_LOCK)
                .fetch_one(&mut *connection)
                .await;
            if unlocked.is_err() {
                // The session's locks end with the connection.
                connection.close_on_drop();
            }
        }
    }
}

impl Store {
    /// The certificate stored for `name`, if any.
    pub async fn certificate(&self, name: &str) -> Result<Option<StoredCertificate>, StoreError> {
        let row = sqlx::query(
            "SELECT chain_pem, key_pem, not_before, not_after FROM certificates WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredCertificate {
            chain_pem: row.try_get("chain_pem")?,
            key_pem: row.try_get("key_pem")?,
            not_before: row.try_get("not_before")?,
            not_after: row.try_get("not_after")?,
        }))
    }

    /// Keeps a new certificate for `name` (replacing the old one) and tells every instance.
    pub async fn put_certificate(
        &self,
        name: &str,
        certificate: &StoredCertificate,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO certificates (name, chain_pem, key_pem, not_before, not_after) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
             chain_pem = excluded.chain_pem, key_pem = excluded.key_pem, \
             not_before = excluded.not_before, not_after = excluded.not_after",
        )
        .bind(name)
        .bind(&certificate.chain_pem)
        .bind(&certificate.key_pem)
        .bind(certificate.not_before)
        .bind(certificate.not_after)
        .execute(&self.pool)
        .await?;
        self.announce_certificates().await
    }

    /// Publishes an HTTP-01 challenge's answer, for whichever instance the CA asks.
    pub async fn put_acme_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO acme_challenges (token, key_authorization, created_at) \
             VALUES ($1, $2, $3) ON CONFLICT (token) DO UPDATE SET \
             key_authorization = excluded.key_authorization, created_at = excluded.created_at",
        )
        .bind(token)
        .bind(key_authorization)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The answer to an HTTP-01 challenge's token, if an order is waiting for it.
    pub async fn acme_challenge(&self, token: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT key_authorization FROM acme_challenges WHERE token = $1")
            .bind(token)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get("key_authorization"))
            .transpose()?)
    }

    /// Forgets the challenges of finished orders.
    pub async fn clear_acme_challenges(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM acme_challenges")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A setting's value (the ACME account's credentials, say).
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("value")).transpose()?)
    }

    /// Sets a setting.
    pub async fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The right to order certificates now: with PostgreSQL, a session advisory lock, so
    /// one instance orders at a time; `None` while another holds it. With SQLite (one
    /// instance) always granted.
    pub async fn try_lock_orders(&self) -> Result<Option<OrderLock>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(Some(OrderLock(None)));
        }
        let mut connection = self.pool.acquire().await?;
        let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind(ORDER_LOCK)
            .fetch_one(&mut *connection)
            .await?;
        let locked: bool = row.try_get("locked")?;
        Ok(locked.then(|| OrderLock(Some(connection))))
    }

    /// A listener for certificate announcements; `None` with SQLite.
    pub async fn listen_for_certificates(
        &self,
    ) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        self.listen(CERTIFICATE_CHANNEL).await
    }

    async fn announce_certificates(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')::text AS notified")
                .bind(CERTIFICATE_CHANNEL)
                .fetch_one(&self.pool)
                .await?;
        }
        Ok(())
    }
}
