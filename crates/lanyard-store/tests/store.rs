//! Storage tests. Every test runs on SQLite and on PostgreSQL: `scripts/test` starts a
//! PostgreSQL cluster and sets LANYARD_TEST_POSTGRES_URL (a role that may create databases);
//! each test gets a fresh database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_store::{Db, Dialect, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

struct TestDb {
    db: Db,
    _dir: Option<tempfile_like::Dir>,
}

mod tempfile_like {
    /// A directory removed on drop (avoids another dev-dependency).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn sqlite() -> TestDb {
    let dir = std::env::temp_dir().join(format!("lanyard-store-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.join("t.db").display())).await.unwrap();
    db.migrate().await.unwrap();
    TestDb { db, _dir: Some(tempfile_like::Dir(dir)) }
}

async fn postgres() -> TestDb {
    let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL").expect(
        "LANYARD_TEST_POSTGRES_URL is not set: run scripts/test, which installs and starts PostgreSQL \
         and creates the lanyard_test role",
    );
    let name = format!("lanyard_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&admin_url).await.expect("cannot reach PostgreSQL at LANYARD_TEST_POSTGRES_URL");
    let Db::Postgres(pool) = &admin else { unreachable!() };
    // The name is a UUID we generated, so it is safe to splice into the statement.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(pool).await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let db = Db::connect(&format!("{base}/{name}")).await.unwrap();
    db.migrate().await.unwrap();
    TestDb { db, _dir: None }
}

/// Runs `body` once against SQLite and once against PostgreSQL.
macro_rules! on_both {
    ($name:ident, |$db:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for t in [sqlite().await, postgres().await] {
                let $db = &t.db;
                $body
            }
        }
    };
}

#[test]
fn migration_lists_have_the_same_ids() {
    let ids = |m: &sqlx::migrate::Migrator| {
        m.iter().map(|m| (m.version, m.description.to_string())).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&SQLITE_MIGRATIONS),
        ids(&POSTGRES_MIGRATIONS),
        "migrations/sqlite and migrations/postgres drifted"
    );
    assert!(!ids(&SQLITE_MIGRATIONS).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_schemas_have_the_same_tables_and_columns() {
    let s = sqlite().await;
    let p = postgres().await;
    assert_eq!(s.db.dialect(), Dialect::Sqlite);
    assert_eq!(p.db.dialect(), Dialect::Postgres);
    assert_eq!(s.db.applied_migrations().await.unwrap(), p.db.applied_migrations().await.unwrap());
    let (sc, pc) = (s.db.columns().await.unwrap(), p.db.columns().await.unwrap());
    assert!(sc.len() > 50, "{sc:?}");
    assert_eq!(sc, pc, "the two schemas drifted");
}

on_both!(audit_table_refuses_update_and_delete, |db| {
    let insert = "INSERT INTO audit_events (seq, at, actor, action, operation_id, prev_hash, hash) \
                  VALUES (1, 0, 'system', 'test', 'op', $1, $2)";
    let update = "UPDATE audit_events SET action = 'forged' WHERE seq = 1";
    let delete = "DELETE FROM audit_events WHERE seq = 1";
    match db {
        Db::Sqlite(p) => {
            sqlx::query(insert).bind(vec![0u8; 32]).bind(vec![1u8; 32]).execute(p).await.unwrap();
            let e = sqlx::query(update).execute(p).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{e}");
            let e = sqlx::query(delete).execute(p).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{e}");
        }
        Db::Postgres(p) => {
            sqlx::query(insert).bind(vec![0u8; 32]).bind(vec![1u8; 32]).execute(p).await.unwrap();
            let e = sqlx::query(update).execute(p).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{e}");
            let e = sqlx::query(delete).execute(p).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{e}");
        }
    }
});

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let e = Db::connect("mysql://x").await.unwrap_err();
    assert!(e.to_string().contains("neither sqlite"), "{e}");
}
