//! The change feed: rows appended in the same transaction as a revocation, disable, enable
//! or removal, which every instance polls to drop cached verifications and close sessions.

use super::*;

impl Store {
    /// Changes with an id greater than `after_id`, oldest first, at most [`CHANGES_PAGE`].
    ///
    /// Ids become visible in order: SQLite has one writer at a time, and on PostgreSQL
    /// every change is written under a table lock held to commit, so a poller that
    /// remembers the last id it saw never skips a change that commits later.
    pub async fn changes_after(&self, after_id: i64) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, app_password_id, kind, at FROM changes WHERE id > $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(CHANGES_PAGE))
        .fetch_all(&self.pool)
        .await?;
        let changes = rows
            .iter()
            .map(|row| {
                Ok(Change {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    app_password_id: row.try_get("app_password_id")?,
                    kind: row.try_get("kind")?,
                    at: row.try_get("at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(changes)
    }

    /// The id of the newest change, or 0 if there is none: where a starting instance
    /// begins polling.
    pub async fn last_change_id(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS last FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("last")?)
    }

    /// Appends to the change feed; call it after the transaction's other writes.
    ///
    /// On PostgreSQL the table lock, held until commit, makes ids commit in increasing
    /// order (see [`Store::changes_after`]); it still lets pollers read. Taking it last
    /// means a transaction holding it waits on nothing else, so it cannot deadlock.
    pub(super) async fn insert_change(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: i64,
        app_password_id: Option<i64>,
        kind: &str,
        at: i64,
    ) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE changes IN EXCLUSIVE MODE")
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO changes (user_id, app_password_id, kind, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(app_password_id)
        .bind(kind)
        .bind(at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Wakes the change follower the moment any writer records a change: PostgreSQL's
/// LISTEN/NOTIFY on `postern_changes`, which a trigger on the changes table sends (so the
/// CLI, SCIM and every instance reach all the others in milliseconds). Polling stays the
/// fallback that misses nothing after a lost connection.
pub struct ChangeSignal(sqlx::postgres::PgListener);

/// The channel the changes trigger notifies.
const CHANNEL: &str = "postern_changes";

impl Store {
    /// A listener for change notifications; `None` with SQLite (one instance: polling
    /// the local file is all there is).
    pub async fn listen_for_changes(&self) -> Result<Option<ChangeSignal>, StoreError> {
        Ok(self.listen(CHANNEL).await?.map(ChangeSignal))
    }

    /// A connection of its own listening on `channel`; `None` with SQLite. After a lost
    /// connection it connects again within about a second of the server's return (sqlx's
    /// backoff is a fifth of the acquire timeout), or fails after [`ACQUIRE_TIMEOUT`].
    pub(super) async fn listen(
        &self,
        channel: &str,
    ) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        let Some(url) = &self.listen_url else {
            return Ok(None);
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy(url)?;
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        listener.listen(channel).await?;
        Ok(Some(listener))
    }
}

impl ChangeSignal {
    /// Waits for the next notification, or for the connection to be lost and made again:
    /// notifications sent meanwhile are gone, so the caller reads the feed either way. An
    /// error means the connection could not be made again.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.0.try_recv().await?;
        Ok(())
    }
}
