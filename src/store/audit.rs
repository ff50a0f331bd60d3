//! The audit trail: login, message and administrative events, written and listed.

use super::*;

/// One transaction of audit events and app password uses on `conn`.
async fn write_batch(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[AuditEvent<'_>],
    uses: &[(i64, i64, Option<&str>, Option<&str>)],
) -> Result<(), StoreError> {
    let begin = match backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let mut tx = sqlx::Connection::begin_with(&mut *conn, begin).await?;
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
    ///
    /// The commit does not wait for the disk (SQLite's `synchronous = NORMAL` in WAL mode,
    /// PostgreSQL's `synchronous_commit = off`): a login's trail is written at the pace of
    /// logins, and an fsync for each costs more CPU than the login itself on a virtual
    /// machine. The transaction stays atomic, and survives postern stopping or crashing;
    /// only a crash of the machine itself can lose the last moment's events. Credentials
    /// and everything an administrator or user changes keep waiting for the disk.
    pub async fn record_audit_batch(
        &self,
        events: &[AuditEvent<'_>],
        uses: &[(i64, i64, Option<&str>, Option<&str>)],
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let relaxed = match self.backend {
            Backend::Sqlite => "PRAGMA synchronous = NORMAL",
            Backend::Postgres => "SET synchronous_commit = off",
        };
        sqlx::query(relaxed).execute(&mut *conn).await?;
        let written = write_batch(&mut conn, self.backend, events, uses).await;
        // The connection goes back to the pool as it came, or not at all.
        let restore = match self.backend {
            Backend::Sqlite => "PRAGMA synchronous = FULL",
            Backend::Postgres => "RESET synchronous_commit",
        };
        if sqlx::query(restore).execute(&mut *conn).await.is_err() {
            conn.close_on_drop();
        }
        written
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The relaxed commit of an audit batch does not outlive it: the pooled connection
    /// (in-memory SQLite has exactly one) is back to waiting for the disk.
    #[tokio::test]
    async fn an_audit_batch_leaves_the_connection_durable() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let event = AuditEvent {
            at: 1,
            kind: "login",
            login: "alice@example.test",
            app_password_id: None,
            protocol: Some("pop3"),
            client_ip: Some("192.0.2.1"),
            client_id: None,
            result: Some("ok"),
            detail: None,
        };
        store.record_audit_batch(&[event], &[]).await.unwrap();
        let synchronous: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
        assert_eq!(store.audit(None, 10).await.unwrap().len(), 1);
    }
}
