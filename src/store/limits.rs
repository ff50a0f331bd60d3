//! Login penalties and sending quotas shared by every instance (PostgreSQL only): the
//! counts behind `crate::limits`' shared backends, and the notifications that tell every
//! instance about a penalty the moment it is counted.

use super::*;

/// The channel penalties are announced on: `"<failures> <key>"`, `0` when cleared.
pub const PENALTY_CHANNEL: &str = "postern_penalties";

/// Failures older than this are forgotten (as the in-memory book forgets them).
const FORGET_AFTER_SECONDS: i64 = 15 * 60;

/// A penalised key as the store last counted it.
#[derive(Debug, Clone, PartialEq)]
pub struct PenaltyCount {
    /// `a:` and an address group, or `l:` and a login.
    pub key: String,
    pub failures: u32,
    /// Seconds since the last counted failure.
    pub since_seconds: f64,
}

/// Messages and recipients an app password sent in the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentLastHour {
    pub messages: i64,
    pub recipients: i64,
}

impl Store {
    /// Counts one failed login for each key in one statement, and announces the new counts.
    /// A fingerprint already among a key's last eight counts once; a key idle for 15
    /// minutes starts again at one. Returns each key's count.
    pub async fn count_failure(
        &self,
        keys: &[String; 2],
        fingerprint: u16,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        let rows = sqlx::query(
            "WITH hit AS ( \
               INSERT INTO penalties AS p (key, failures, fingerprints, failed_at) \
               VALUES ($1, 1, ARRAY[$3::integer], now()), ($2, 1, ARRAY[$3::integer], now()) \
               ON CONFLICT (key) DO UPDATE SET \
                 failures = CASE \
                   WHEN p.failed_at < now() - make_interval(secs => $4) THEN 1 \
                   WHEN $3::integer = ANY(p.fingerprints) THEN p.failures \
                   ELSE p.failures + 1 END, \
                 fingerprints = CASE \
                   WHEN p.failed_at < now() - make_interval(secs => $4) THEN ARRAY[$3::integer] \
                   WHEN $3::integer = ANY(p.fingerprints) THEN p.fingerprints \
                   ELSE (p.fingerprints || $3::integer)[greatest(1, cardinality(p.fingerprints) - 6):] END, \
                 failed_at = now() \
               RETURNING key, failures) \
             SELECT key, failures, pg_notify($5, failures || ' ' || key)::text AS notified FROM hit",
        )
        .bind(&keys[0])
        .bind(&keys[1])
        .bind(i32::from(fingerprint))
        .bind(FORGET_AFTER_SECONDS as f64)
        .bind(PENALTY_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let failures: i32 = row.try_get("failures")?;
                Ok((row.try_get("key")?, failures.max(0) as u32))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Forgets the keys' failures (a correct password) and announces it.
    pub async fn clear_failures(&self, keys: &[String; 2]) -> Result<(), StoreError> {
        sqlx::query(
            "WITH gone AS (DELETE FROM penalties WHERE key IN ($1, $2) RETURNING key) \
             SELECT pg_notify($3, '0 ' || key)::text AS notified FROM gone",
        )
        .bind(&keys[0])
        .bind(&keys[1])
        .bind(PENALTY_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key with failures not yet forgotten: what a starting or reconnected instance
    /// loads, since notifications sent while it was not listening are lost.
    pub async fn recent_failures(&self) -> Result<Vec<PenaltyCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, failures, EXTRACT(EPOCH FROM now() - failed_at)::float8 AS since \
             FROM penalties WHERE failed_at >= now() - make_interval(secs => $1)",
        )
        .bind(FORGET_AFTER_SECONDS as f64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let failures: i32 = row.try_get("failures")?;
                Ok(PenaltyCount {
                    key: row.try_get("key")?,
                    failures: failures.max(0) as u32,
                    since_seconds: row.try_get("since")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// A listener for penalty announcements; `None` with SQLite.
    pub async fn listen_for_penalties(
        &self,
    ) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        self.listen(PENALTY_CHANNEL).await
    }

    /// What an app password sent in the last hour, in one indexed read.
    pub async fn sent_last_hour(&self, app_password_id: i64) -> Result<SentLastHour, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS messages, COALESCE(SUM(recipients), 0)::bigint AS recipients \
             FROM sent_messages WHERE app_password_id = $1 AND sent_at > now() - interval '1 hour'",
        )
        .bind(app_password_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(SentLastHour {
            messages: row.try_get("messages")?,
            recipients: row.try_get("recipients")?,
        })
    }

    /// Counts a message the upstream accepted.
    pub async fn record_sent(
        &self,
        app_password_id: i64,
        recipients: u32,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sent_messages (app_password_id, sent_at, recipients) VALUES ($1, now(), $2)")
            .bind(app_password_id)
            .bind(i64::from(recipients))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes the counts that no longer matter: failures forgotten, messages older than
    /// the hour. Any instance may run it; it is idempotent.
    pub async fn tidy_limits(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM penalties WHERE failed_at < now() - make_interval(secs => $1)")
            .bind(FORGET_AFTER_SECONDS as f64)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM sent_messages WHERE sent_at <= now() - interval '1 hour'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
