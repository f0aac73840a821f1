//! Throwaway databases: a SQLite file in a temporary directory, or a fresh PostgreSQL database
//! made from `LANYARD_TEST_POSTGRES_URL`.

use std::sync::Arc;

use lanyard_store::Db;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Both, for a test body that must hold on each.
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
}

/// A migrated, empty database of its own.
pub struct TestDb {
    pub db: Arc<Db>,
    pub backend: Backend,
    /// SQLite's file lives here; removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite().await,
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A SQLite database in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("lanyard.db").display()))
            .await
            .expect("SQLite opens a new file");
        db.migrate().await.expect("SQLite migrations");
        TestDb { db: Arc::new(db), backend: Backend::Sqlite, _dir: Some(dir) }
    }

    /// A new PostgreSQL database named `lanyard_t_<uuid>`, created with the role in
    /// `LANYARD_TEST_POSTGRES_URL`. It is left behind, as the store's tests leave theirs:
    /// `scripts/test` drops every `lanyard_t_%` database before it runs the suite.
    pub async fn postgres() -> Self {
        let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "LANYARD_TEST_POSTGRES_URL is not set: run ./scripts/test, which installs and starts \
                 PostgreSQL, creates the lanyard_test role and sets it (or export it yourself, e.g. \
                 postgres://lanyard_test:lanyard_test@127.0.0.1:5432/postgres)"
            )
        });
        let name = format!("lanyard_t_{}", uuid::Uuid::new_v4().simple());
        let admin = Db::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at LANYARD_TEST_POSTGRES_URL ({e}); ./scripts/test starts it")
        });
        let Db::Postgres(pool) = &admin else {
            panic!("LANYARD_TEST_POSTGRES_URL must be a postgres:// URL, not {admin_url}")
        };
        // The name is a UUID made here, so it is safe to splice in.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e} (the role needs CREATEDB)"));
        pool.close().await;
        let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database path");
        let db = Db::connect(&format!("{base}/{name}")).await.expect("the new database opens");
        db.migrate().await.expect("PostgreSQL migrations");
        TestDb { db: Arc::new(db), backend: Backend::Postgres, _dir: None }
    }
}

/// Declares one `#[tokio::test]` per database for the same body: `name::sqlite` and
/// `name::postgres`. The body sees the [`Backend`] under the name given in the pattern. The test
/// crate needs `tokio` with `macros` and `rt-multi-thread`.
///
/// ```text
/// lanyard_testkit::on_both_databases!(async fn a_card_is_issued(backend) {
///     let server = TestServer::start(backend).await;
///     // ...
/// });
/// ```
#[macro_export]
macro_rules! on_both_databases {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($backend: $crate::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body($crate::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body($crate::Backend::Postgres).await
            }
        }
    };
}
