//! The store: users, app passwords, the change feed and the audit trail, in SQLite or
//! PostgreSQL. The verifier looks credentials up here, the CLI administers them, and every
//! gateway instance polls the change feed to drop cached verifications and close sessions.
//!
//! One code path serves both databases through sqlx's `Any` driver: placeholders are
//! `$1, $2, …` (SQLite binds `$N` by number), timestamps are `i64` unix seconds, states are
//! nullable timestamps rather than booleans, and every query lives in this file. The
//! migrations differ per database and are embedded in the binary (see `migrations.rs`).
//!
//! Writes that others must notice (revoke, revoke-all, disable, enable, remove) append a row
//! to `changes` in the same transaction, so a poller never sees the change without its
//! effect, nor the effect without the change.

mod migrations;
mod model;

use std::collections::HashMap;
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::RngCore;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::error::{BoxDynError, DatabaseError as _};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};

pub use model::{
    AppPassword, AuditEvent, AuditRecord, Change, Credential, NewAppPassword, NewUser, Scope,
    UnknownScope, User,
};

use model::{scopes_from_column, scopes_to_column};

/// Change kind: an app password was revoked (alone or by revoke-all).
pub const CHANGE_APP_PASSWORD_REVOKED: &str = "app_password_revoked";
/// Change kind: a user was disabled; none of their app passwords work any more.
pub const CHANGE_USER_DISABLED: &str = "user_disabled";
/// Change kind: a disabled user was enabled again.
pub const CHANGE_USER_ENABLED: &str = "user_enabled";
/// Change kind: a user and all their app passwords were removed.
pub const CHANGE_USER_REMOVED: &str = "user_removed";

/// The most changes [`Store::changes_after`] returns at once; a poller that gets this many
/// asks again.
pub const CHANGES_PAGE: u32 = 1000;

/// The `settings` row holding the key of the keyed digests (lookup tags, cache keys).
const LOOKUP_KEY_SETTING: &str = "lookup_key";

/// Why a store operation failed. The variants other than `Database`, `Migrate` and `Io` are
/// refusals the CLI reports to the admin as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached; the text is sqlx's.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed (or the database has one we do not know).
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `[store] url` names a database we do not support. Holds only the scheme, so a
    /// password in the URL is never printed.
    #[error("unsupported store URL {0:?}: expected sqlite:// or postgres://")]
    UnsupportedUrl(String),
    /// No user has this login.
    #[error("no such user {0:?}")]
    UnknownUser(String),
    /// A user with this login exists already.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No app password has this id.
    #[error("no such app password {0}")]
    UnknownAppPassword(i64),
    /// The user has as many live app passwords as allowed; revoke one first.
    #[error("user {login:?} already has {limit} live app passwords")]
    LimitReached {
        /// The user.
        login: String,
        /// The configured maximum.
        limit: u32,
    },
    /// The new app password's tag collides with a live one of the same user; the caller
    /// generates another password.
    #[error("an app password with this tag is already live")]
    TagTaken,
    /// The directory for the SQLite file could not be created.
    #[error("could not create the store directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the database could not be reached or was busy (connection refused or lost,
    /// no connection within [`ACQUIRE_TIMEOUT`], PostgreSQL shutting down or starting up,
    /// a failover's read-only standby, SQLite's file locked by another writer): the same
    /// operation may succeed later. Every other error (a refused statement, a value that
    /// does not decode, a closed pool, the refusals the CLI reports) will not go away by
    /// retrying.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    postgres_unavailable(pg.code())
                } else if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                    sqlite
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(sqlite_unavailable)
                } else {
                    false
                }
            }
            _ => false,
        }
    }
}

/// PostgreSQL SQLSTATEs that say "not now" rather than "never": connection exceptions,
/// insufficient resources, shutdown or startup in progress, a read-only standby,
/// serialization failures and deadlocks, I/O errors.
fn postgres_unavailable(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(
            sqlstate,
            "57P01" | "57P02" | "57P03" | "25006" | "40001" | "40P01" | "58030"
        )
}

/// SQLite result codes (primary, from the extended code sqlx reports) that say "not now":
/// BUSY (another writer holds the lock past the busy timeout), LOCKED, READONLY, IOERR,
/// FULL, CANTOPEN, PROTOCOL.
fn sqlite_unavailable(extended: i32) -> bool {
    matches!(extended & 0xff, 5 | 6 | 8 | 10 | 13 | 14 | 15)
}

/// How long an operation waits for a connection before it fails with
/// [`sqlx::Error::PoolTimedOut`] (sqlx retries a refused connection until then). Short, so
/// that a login during a store outage gets its temporary failure in seconds, not sqlx's
/// default 30. SQLite's busy timeout (how long a write waits for another writer's lock)
/// is sqlx's default, also 5 seconds.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Which database a [`Store`] talks to; picked by the URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:` URLs: one file, one host.
    Sqlite,
    /// `postgres://` or `postgresql://` URLs: shared by several gateway instances.
    Postgres,
}

impl Backend {
    fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            // Only the scheme: the rest may hold a password.
            let shown = match url.split_once(':') {
                Some((scheme, _)) => format!("{scheme}:"),
                None => url.to_owned(),
            };
            Err(StoreError::UnsupportedUrl(shown))
        }
    }
}

/// A connection pool to the store. Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://…`). A SQLite
    /// file and its directory are created when missing (unless the URL sets `mode=`), and
    /// the file is switched to WAL so readers do not block the writer. Does not migrate.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let mut options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let mut wal = false;
        let url = match backend {
            Backend::Postgres => url.to_owned(),
            Backend::Sqlite => {
                let (url, kind) = prepare_sqlite(url)?;
                match kind {
                    SqliteKind::File => wal = true,
                    SqliteKind::ReadOnlyFile => {}
                    SqliteKind::Memory => {
                        // Through `Any`, each new connection parses the URL again, and
                        // `:memory:` then names a fresh, empty database: keep exactly one
                        // connection, for the life of the pool.
                        options = options
                            .max_connections(1)
                            .min_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None);
                    }
                }
                url
            }
        };
        let pool = options.connect(&url).await?;
        if wal {
            // Persistent in the file, so set it once, and only if needed: switching needs
            // an exclusive lock that the busy timeout does not wait for.
            let row = sqlx::query("PRAGMA journal_mode").fetch_one(&pool).await?;
            let mode: String = row.try_get(0)?;
            if !mode.eq_ignore_ascii_case("wal") {
                sqlx::query("PRAGMA journal_mode=WAL")
                    .execute(&pool)
                    .await?;
            }
        }
        Ok(Store { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations that have not been applied yet; a no-op when the
    /// schema is current. Fails if the database has a migration this binary does not know
    /// or one whose text changed.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::migrator(self.backend)
            .await?
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// Checks that the database answers, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The 32-byte key for keyed digests (app password lookup tags). Generated from the OS
    /// random source by whichever instance asks first and shared by all instances through
    /// the store, so the migrations never contain a secret and every instance agrees.
    pub async fn lookup_key(&self) -> Result<[u8; 32], StoreError> {
        if let Some(key) = self.read_lookup_key().await? {
            return Ok(key);
        }
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        // If another instance got there first, its key wins and ours is dropped.
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(LOOKUP_KEY_SETTING)
        .bind(hex_encode(&key))
        .execute(&self.pool)
        .await?;
        match self.read_lookup_key().await? {
            Some(key) => Ok(key),
            None => Err(sqlx::Error::RowNotFound.into()),
        }
    }

    async fn read_lookup_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(LOOKUP_KEY_SETTING)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let value: String = row.try_get("value")?;
        match hex_decode_32(&value) {
            Some(key) => Ok(Some(key)),
            None => Err(corrupt("value", "the lookup_key setting is not 64 hex digits").into()),
        }
    }

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
            "DELETE FROM app_passwords WHERE user_id = $1",
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

    /// Appends an audit event. The login is lowercased so that filtering by user finds
    /// every attempt, however it was typed.
    pub async fn record_audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(insert_audit(&mut conn, event).await?)
    }

    /// Appends audit events in order and notes app password uses (`(id, at, ip)`, as
    /// [`Store::record_use`] does; an app password removed since is skipped), all in one
    /// transaction: either everything is written or nothing, so a retry after a failure
    /// does not write an event twice.
    pub async fn record_audit_batch(
        &self,
        events: &[AuditEvent<'_>],
        uses: &[(i64, i64, Option<&str>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for event in events {
            insert_audit(&mut tx, event).await?;
        }
        for &(app_password_id, at, ip) in uses {
            sqlx::query(
                "UPDATE app_passwords SET last_used_at = $2, last_used_ip = $3 WHERE id = $1",
            )
            .bind(app_password_id)
            .bind(at)
            .bind(ip)
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

    /// Starts a transaction that will write. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`, which waits out the busy timeout), instead of failing with
    /// "database is locked" when a read inside the transaction is later upgraded.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Appends to the change feed; call it after the transaction's other writes.
    ///
    /// On PostgreSQL the table lock, held until commit, makes ids commit in increasing
    /// order (see [`Store::changes_after`]); it still lets pollers read. Taking it last
    /// means a transaction holding it waits on nothing else, so it cannot deadlock.
    async fn insert_change(
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

/// The user columns, aliased so they do not clash in joins; read by [`user_from_row`].
const USER_COLUMNS: &str = "u.id AS user_id, u.login, u.upstream_user, \
                            u.created_at AS user_created_at, u.disabled_at";

/// The app password columns, without the hash; read by [`app_password_from_row`].
const APP_PASSWORD_COLUMNS: &str = "p.id AS app_password_id, \
                                    p.user_id AS app_password_user_id, p.name, p.scopes, \
                                    p.created_at AS app_password_created_at, p.last_used_at, \
                                    p.last_used_ip, p.expires_at, p.revoked_at";

/// A user from [`USER_COLUMNS`], without addresses.
fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("user_id")?,
        login: row.try_get("login")?,
        upstream_user: row.try_get("upstream_user")?,
        addresses: Vec::new(),
        created_at: row.try_get("user_created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

/// An app password from [`APP_PASSWORD_COLUMNS`].
fn app_password_from_row(row: &AnyRow) -> Result<AppPassword, sqlx::Error> {
    let scopes: String = row.try_get("scopes")?;
    Ok(AppPassword {
        id: row.try_get("app_password_id")?,
        user_id: row.try_get("app_password_user_id")?,
        name: row.try_get("name")?,
        scopes: scopes_from_column(&scopes).map_err(|e| corrupt("scopes", e))?,
        created_at: row.try_get("app_password_created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        last_used_ip: row.try_get("last_used_ip")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// The user with this (already lowercased) login, with addresses.
async fn find_user(conn: &mut AnyConnection, login: &str) -> Result<Option<User>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users u WHERE u.login = $1"
    ))
    .bind(login)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut user = user_from_row(&row)?;
    let rows =
        sqlx::query("SELECT address FROM user_addresses WHERE user_id = $1 ORDER BY address")
            .bind(user.id)
            .fetch_all(&mut *conn)
            .await?;
    user.addresses = rows
        .iter()
        .map(|row| row.try_get("address"))
        .collect::<Result<_, _>>()?;
    Ok(Some(user))
}

/// Appends one audit event, its login lowercased.
async fn insert_audit(conn: &mut AnyConnection, event: &AuditEvent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_events \
         (at, kind, login, app_password_id, protocol, client_ip, client_id, result, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(event.at)
    .bind(event.kind)
    .bind(event.login.to_lowercase())
    .bind(event.app_password_id)
    .bind(event.protocol)
    .bind(event.client_ip)
    .bind(event.client_id)
    .bind(event.result)
    .bind(event.detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// One app password and its owner's login.
async fn find_app_password(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<(AppPassword, String)>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {APP_PASSWORD_COLUMNS}, u.login FROM app_passwords p \
         JOIN users u ON u.id = p.user_id WHERE p.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| Ok((app_password_from_row(&row)?, row.try_get("login")?)))
        .transpose()
}

/// Finds a user by (lowercased) login and locks the row until the transaction ends, so
/// that writes to one user's app passwords happen one at a time. A no-op update is the
/// one row lock both databases understand (SQLite already holds the write lock).
async fn lock_user(conn: &mut AnyConnection, login: &str) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("UPDATE users SET login = login WHERE login = $1 RETURNING id")
        .bind(login)
        .fetch_optional(conn)
        .await?;
    row.map(|row| row.try_get("id")).transpose()
}

/// Whether `error` violates the unique constraint or index `name`. PostgreSQL names the
/// constraint; SQLite does not, and then the statement that failed tells which it was.
fn is_unique_violation(error: &sqlx::Error, name: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint().is_none_or(|constraint| constraint == name)
        }
        _ => false,
    }
}

/// A value in the database that this version of postern cannot read.
fn corrupt(column: &str, source: impl Into<BoxDynError>) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: source.into(),
    }
}

/// What a SQLite URL opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SqliteKind {
    /// A file we may write: switched to WAL.
    File,
    /// `mode=ro`: left as it is.
    ReadOnlyFile,
    /// `:memory:` or `mode=memory`: gone when the last connection closes.
    Memory,
}

/// Rewrites a SQLite URL so that the file is created when missing (`mode=rwc`, unless the
/// URL chooses a mode), creating its directory too. Returns the URL to connect to and
/// what it opens.
fn prepare_sqlite(url: &str) -> Result<(String, SqliteKind), StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (database, params) = match rest.split_once('?') {
        Some((database, params)) => (database, Some(params)),
        None => (rest, None),
    };
    let mode = params.and_then(|params| {
        params
            .split('&')
            .find_map(|pair| pair.strip_prefix("mode="))
    });
    if database.is_empty() || database == ":memory:" || mode == Some("memory") {
        return Ok((url.to_owned(), SqliteKind::Memory));
    }
    let url = match (mode, params) {
        (Some(_), _) => url.to_owned(),
        (None, Some(_)) => format!("{url}&mode=rwc"),
        (None, None) => format!("{url}?mode=rwc"),
    };
    let mode = mode.unwrap_or("rwc");
    if mode == "rwc" {
        // sqlx's own parser, so the path (percent-decoding and all) is the one it opens.
        let options = SqliteConnectOptions::from_str(&url)?;
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
    }
    let kind = match mode {
        "ro" => SqliteKind::ReadOnlyFile,
        _ => SqliteKind::File,
    };
    Ok((url, kind))
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

fn hex_decode_32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        // Both digits are below 16, so the value fits a byte.
        *byte = (high * 16 + low) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let text = hex_encode(&key);
        assert_eq!(text.len(), 64);
        assert_eq!(&text[..4], "052a");
        assert_eq!(hex_decode_32(&text), Some(key));
        assert_eq!(hex_decode_32(&text.to_uppercase()), Some(key));
        assert_eq!(hex_decode_32(&text[..62]), None);
        assert_eq!(hex_decode_32(&format!("zz{}", &text[2..])), None);
    }

    #[test]
    fn outages_are_told_from_refusals() {
        let io = |kind: std::io::ErrorKind| StoreError::Database(sqlx::Error::Io(kind.into()));
        assert!(io(std::io::ErrorKind::ConnectionRefused).is_unavailable());
        assert!(io(std::io::ErrorKind::UnexpectedEof).is_unavailable());
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::Database(sqlx::Error::PoolClosed).is_unavailable());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!StoreError::UnknownAppPassword(1).is_unavailable());
        assert!(!StoreError::TagTaken.is_unavailable());

        // PostgreSQL: shutting down, starting up, connection lost, standby, deadlock.
        for sqlstate in ["57P01", "57P03", "08006", "53300", "25006", "40P01"] {
            assert!(postgres_unavailable(sqlstate), "{sqlstate}");
        }
        // A unique violation, a syntax error, an undefined table.
        for sqlstate in ["23505", "42601", "42P01"] {
            assert!(!postgres_unavailable(sqlstate), "{sqlstate}");
        }
        // SQLite: BUSY, BUSY_SNAPSHOT (517), LOCKED, IOERR_WRITE (778); not CONSTRAINT
        // (19), CONSTRAINT_UNIQUE (2067) or ERROR (1).
        for code in [5, 517, 6, 778] {
            assert!(sqlite_unavailable(code), "{code}");
        }
        for code in [19, 2067, 1] {
            assert!(!sqlite_unavailable(code), "{code}");
        }
    }

    #[test]
    fn backend_is_picked_by_scheme_and_urls_are_not_echoed() {
        assert_eq!(Backend::from_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("sqlite::memory:").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        let error = Backend::from_url("mysql://root:hunter2@h/db").unwrap_err();
        assert!(matches!(&error, StoreError::UnsupportedUrl(s) if s == "mysql:"));
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn sqlite_urls_get_create_mode_unless_they_choose_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/p.db");
        let url = format!("sqlite://{}", file.display());
        let (prepared, kind) = prepare_sqlite(&url).unwrap();
        assert_eq!(prepared, format!("{url}?mode=rwc"));
        assert_eq!(kind, SqliteKind::File);
        assert!(dir.path().join("a/b").is_dir());

        let (prepared, _) = prepare_sqlite(&format!("{url}?cache=private")).unwrap();
        assert_eq!(prepared, format!("{url}?cache=private&mode=rwc"));

        let ro = format!("sqlite://{}/c/p.db?mode=ro", dir.path().display());
        assert_eq!(
            prepare_sqlite(&ro).unwrap(),
            (ro.clone(), SqliteKind::ReadOnlyFile)
        );
        assert!(!dir.path().join("c").exists());

        assert_eq!(
            prepare_sqlite("sqlite::memory:").unwrap(),
            ("sqlite::memory:".to_owned(), SqliteKind::Memory)
        );
    }
}
