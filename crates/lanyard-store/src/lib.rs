//! `lanyard-store`: persistence on SQLite (the embedded default) and PostgreSQL (for several
//! server replicas). [`Db`] implements the domain's [`lanyard_core::repo::Repo`]; its unit of work
//! is a [`StoreTx`].
//!
//! Queries are built at run time (`sqlx::query` + binds), because sqlx's compile-time macros bind
//! to one database; the SQL text is the same for both dialects. Each dialect has its own
//! migration list with the same ids; a test fails when the two drift apart. `docs/storage.md`
//! explains the schema, isolation and time handling.

mod direct;
mod group;
mod installation;
mod repo;
mod rows;
pub mod seed;
mod sql;
mod tx;

pub use tx::{PG_EPOCH_APPLICATION, POSTGRES_UNIQUE_FIELDS, StoreTx};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;

pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Opening or migrating a database. (Repository operations report
/// [`lanyard_core::repo::StoreError`].)
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database_url {0:?} is neither sqlite: nor postgres://")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection pool to either database.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Connects to `url` (`sqlite:…` or `postgres://…`); SQLite files are created when missing.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
            // Units of work read and write through connections of their own to this file
            // (`direct.rs`, `group.rs`), opened when first needed, after this pool created the
            // file and put it in WAL mode.
            group::Writer::of(&pool).reopen().await;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Ok(Db::Postgres(pool))
        } else {
            Err(DbError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Starts this process's audit sealer (see `lanyard_core::audit`): on PostgreSQL a task that
    /// chains newly committed events shortly after their commit, taking turns with the sealers
    /// of other servers on the same database (an advisory lock lets one work at a time). SQLite
    /// needs none (its group commit chains each batch's events before committing it): `None`.
    pub fn spawn_audit_sealer(&self) -> Option<tokio::task::JoinHandle<()>> {
        use lanyard_core::repo::Repo;
        /// The pause after a pass that found work (a few more events gather for the next one)
        /// and after one that found none.
        const BUSY: Duration = Duration::from_millis(5);
        const IDLE: Duration = Duration::from_millis(50);
        const FAILED: Duration = Duration::from_secs(1);
        let Db::Postgres(_) = self else { return None };
        let db = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let pause = match db.seal_audit().await {
                    Ok(0) => IDLE,
                    Ok(n) => {
                        tracing::trace!(sealed = n, "audit events chained");
                        BUSY
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the audit sealer failed; trying again");
                        FAILED
                    }
                };
                tokio::time::sleep(pause).await;
            }
        }))
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Applies pending migrations of this dialect.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Db::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    /// The applied migrations, as (version, description).
    pub async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, DbError> {
        let q = "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version";
        Ok(match self {
            Db::Sqlite(p) => sqlx::query_as(q).fetch_all(p).await?,
            Db::Postgres(p) => sqlx::query_as(q).fetch_all(p).await?,
        })
    }

    /// Every (table, column) of the schema, lower-case and sorted, for drift checks.
    pub async fn columns(&self) -> Result<Vec<(String, String)>, DbError> {
        let mut cols: Vec<(String, String)> = match self {
            Db::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT m.name, c.name FROM sqlite_master m JOIN pragma_table_info(m.name) c \
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
                )
                .fetch_all(p)
                .await?
            }
            Db::Postgres(p) => {
                sqlx::query_as(
                    "SELECT table_name::text, column_name::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
                )
                .fetch_all(p)
                .await?
            }
        };
        for (t, c) in &mut cols {
            *t = t.to_lowercase();
            *c = c.to_lowercase();
        }
        cols.sort();
        Ok(cols)
    }
}
