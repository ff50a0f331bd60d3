//! The audit trail: login, message and administrative events, written and listed.

use super::*;

impl Store {
    /// Appends an audit event. The login is lowercased so that filtering by user finds
    /// every attempt, however it was typed.
    pub async fn record_audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(insert_audit(&mut conn, event).await?)
    }

    /// Appends audit events in order and notes app password uses (`(id, at, ip, client)`, as
    /// [`Store::record_use`] does; an app password removed since is skipped), all in one
    /// transaction: either everything is written or nothing, so a retry after a failure
    /// does not write an event twice.
    pub async fn record_audit_batch(
        &self,
        events: &[AuditEvent<'_>],
        uses: &[(i64, i64, Option<&str>, Option<&str>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for event in events {
            insert_audit(&mut tx, event).await?;
        }
        for &(app_password_id, at, ip, client) in uses {
            sqlx::query(
                "UPDATE app_passwords SET last_used_at = $2, last_used_ip = $3, \
                 last_used_client = $4 WHERE id = $1",
            )
            .bind(app_password_id)
            .bind(at)
            .bind(ip)
            .bind(client)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` audit events, newest first; only `login`'s (any case) if given.
    pub async fn audit(
        &self,
        login: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        const COLUMNS: &str = "id, at, kind, login, app_password_id, protocol, client_ip, \
                               client_id, result, detail";
        let rows = match login {
            Some(login) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE login = $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(login.to_lowercase())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM audit_events ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        let records = rows
            .iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
                    login: row.try_get("login")?,
                    app_password_id: row.try_get("app_password_id")?,
                    protocol: row.try_get("protocol")?,
                    client_ip: row.try_get("client_ip")?,
                    client_id: row.try_get("client_id")?,
                    result: row.try_get("result")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(records)
    }
}
