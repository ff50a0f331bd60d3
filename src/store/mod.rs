//! The store: users, app passwords, the change feed and the audit trail, in SQLite or
//! PostgreSQL. The verifier looks credentials up here, the CLI administers them, and every
//! gateway instance polls the change feed to drop cached verifications and close sessions.
//!
//! One code path serves both databases through sqlx's `Any` driver: placeholders are
//! `$1, $2, …` (SQLite binds `$N` by number), timestamps are `i64` unix seconds, states are
//! nullable timestamps rather than booleans, and every query lives in this module: this
//! file has the backend (pool, errors, row helpers), and one file each the aggregates
//! (`users.rs`, `app_passwords.rs`, `changes.rs`, `audit.rs`). The migrations differ per
//! database and are embedded in the binary (see `migrations.rs`).
//!
//! Writes that others must notice (revoke, revoke-all, disable, enable, remove) append a row
//! to `changes` in the same transaction, so a poller never sees the change without its
//! effect, nor the effect without the change.

mod app_passwords;
mod audit;
mod certificates;
mod changes;
mod directory;
mod limits;
mod mfa;
mod migrations;
mod model;
mod portal;
mod users;

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

pub use certificates::{OrderLock, StoredCertificate, CERTIFICATE_CHANNEL};
pub use changes::ChangeSignal;
pub use directory::DirectoryUser;
pub use limits::{PenaltyCount, SentLastHour, PENALTY_CHANNEL};
pub use mfa::{MfaMethods, PasskeyRecord, TotpRecord};
pub use portal::{DeviceLink, OidcLogin, PortalSession};

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
    /// A value postern keeps (a passkey, a ceremony under way) did not encode or decode.
    #[error("a stored value does not encode or decode: {0}")]
    Corrupt(String),
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
    /// PostgreSQL's URL, for the connection that listens for changes.
    listen_url: Option<std::sync::Arc<str>>,
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
        let listen_url = (backend == Backend::Postgres).then(|| url.into());
        Ok(Store {
            pool,
            backend,
            listen_url,
        })
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

    /// Starts a transaction that will write. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`, which waits out the busy timeout), instead of failing with
    /// "database is locked" when a read inside the transaction is later upgraded.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }
}

/// The user columns, aliased so they do not clash in joins; read by [`user_from_row`].
const USER_COLUMNS: &str = "u.id AS user_id, u.login, u.upstream_user, \
                            u.created_at AS user_created_at, u.disabled_at";

/// The app password columns, without the hash; read by [`app_password_from_row`].
const APP_PASSWORD_COLUMNS: &str = "p.id AS app_password_id, \
                                    p.user_id AS app_password_user_id, p.name, p.scopes, \
                                    p.created_at AS app_password_created_at, p.last_used_at, \
                                    p.last_used_ip, p.last_used_client, p.expires_at, \
                                    p.revoked_at";

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
        last_used_client: row.try_get("last_used_client")?,
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
