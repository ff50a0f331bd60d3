//! The schema migrations, compiled into the binary: one numbered list per database.
//!
//! `sqlx::migrate!` needs sqlx's `macros` feature, which this crate does not enable, so the
//! files are embedded with `include_str!` and handed to sqlx's ordinary [`Migrator`].
//! Version, description and checksum (SHA-384 of the file) come out exactly as
//! `migrate!("migrations/<db>")` would make them, so either way reads the same
//! `_sqlx_migrations` table. A new migration is a new file plus one line below; a unit
//! test checks that every file in the directories is listed.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::Backend;

/// (version, description, SQL): the file `<version>_<description>.sql`, version zero-padded
/// to four digits.
type Embedded = (i64, &'static str, &'static str);

const SQLITE: &[Embedded] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "portal",
        include_str!("../../migrations/sqlite/0002_portal.sql"),
    ),
    (
        3,
        "device links",
        include_str!("../../migrations/sqlite/0003_device_links.sql"),
    ),
    (
        4,
        "passkeys",
        include_str!("../../migrations/sqlite/0004_passkeys.sql"),
    ),
    (
        5,
        "last used client",
        include_str!("../../migrations/sqlite/0005_last_used_client.sql"),
    ),
    (
        6,
        "directory users",
        include_str!("../../migrations/sqlite/0006_directory_users.sql"),
    ),
    (
        7,
        "oidc logins",
        include_str!("../../migrations/sqlite/0007_oidc_logins.sql"),
    ),
    (
        8,
        "change notifications",
        include_str!("../../migrations/sqlite/0008_change_notifications.sql"),
    ),
    (
        9,
        "shared limits",
        include_str!("../../migrations/sqlite/0009_shared_limits.sql"),
    ),
    (
        10,
        "certificates",
        include_str!("../../migrations/sqlite/0010_certificates.sql"),
    ),
];

const POSTGRES: &[Embedded] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "portal",
        include_str!("../../migrations/postgres/0002_portal.sql"),
    ),
    (
        3,
        "device links",
        include_str!("../../migrations/postgres/0003_device_links.sql"),
    ),
    (
        4,
        "passkeys",
        include_str!("../../migrations/postgres/0004_passkeys.sql"),
    ),
    (
        5,
        "last used client",
        include_str!("../../migrations/postgres/0005_last_used_client.sql"),
    ),
    (
        6,
        "directory users",
        include_str!("../../migrations/postgres/0006_directory_users.sql"),
    ),
    (
        7,
        "oidc logins",
        include_str!("../../migrations/postgres/0007_oidc_logins.sql"),
    ),
    (
        8,
        "change notifications",
        include_str!("../../migrations/postgres/0008_change_notifications.sql"),
    ),
    (
        9,
        "shared limits",
        include_str!("../../migrations/postgres/0009_shared_limits.sql"),
    ),
    (
        10,
        "certificates",
        include_str!("../../migrations/postgres/0010_certificates.sql"),
    ),
];

/// The embedded migrations of one backend, as a sqlx [`MigrationSource`].
#[derive(Debug)]
struct EmbeddedMigrations(&'static [Embedded]);

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    // Same rule as sqlx's directory source.
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// The migrator for `backend`.
pub(super) async fn migrator(backend: Backend) -> Result<Migrator, sqlx::migrate::MigrateError> {
    let embedded = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    Migrator::new(EmbeddedMigrations(embedded)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every `NNNN_description.sql` in the directory is embedded, with the same version,
    /// description and text, and nothing else is.
    fn assert_lists_directory(embedded: &[Embedded], dir: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .map(|path| {
                let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
                let (version, description) = stem.split_once('_').unwrap();
                assert_eq!(version.len(), 4, "{stem}: version is four digits");
                (
                    version.parse().unwrap(),
                    description.replace('_', " "),
                    std::fs::read_to_string(&path).unwrap(),
                )
            })
            .collect();
        files.sort();
        let listed: Vec<(i64, String, String)> = embedded
            .iter()
            .map(|&(v, d, s)| (v, d.to_owned(), s.to_owned()))
            .collect();
        assert_eq!(
            listed, files,
            "migrations listed in src/store/migrations.rs"
        );
    }

    #[test]
    fn every_sqlite_migration_file_is_embedded() {
        assert_lists_directory(SQLITE, "migrations/sqlite");
    }

    #[test]
    fn every_postgres_migration_file_is_embedded() {
        assert_lists_directory(POSTGRES, "migrations/postgres");
    }

    #[test]
    fn both_backends_have_the_same_versions() {
        let versions = |list: &[Embedded]| list.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
    }
}
