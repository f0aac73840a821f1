//! Storage tests. Every test runs on SQLite and on PostgreSQL: `scripts/test` starts a
//! PostgreSQL cluster and sets LANYARD_TEST_POSTGRES_URL (a role that may create databases);
//! each test gets a fresh database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Instant;

use lanyard_core::DomainError;
use lanyard_core::audit::{Actor, BrokenReason, ChainError, NewAuditEvent, OperationId, verify_chain};
use lanyard_core::authz::{Principal, STEP_ROLLBACK_REQUESTED, System, TicketPurpose};
use lanyard_core::ids::{DeviceId, GroupId, InstanceId, JobId, UserId};
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::{
    CertSlot, Credential, CredentialKind, Device, DeviceKind, DeviceLink, Group, JOB_LEASE, Job, JobKind,
    JobState, LinkKind, Policy, Role, Session, StepOutcome, User, Username,
};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, DeviceQuery, StoreError, UserQuery};
use lanyard_core::secrets::{SealedCardSecrets, TokenHash};
use lanyard_store::{Db, Dialect, POSTGRES_MIGRATIONS, POSTGRES_UNIQUE_FIELDS, SQLITE_MIGRATIONS};
use secrecy::ExposeSecret;
use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime, UtcOffset};

struct TestDb {
    db: Db,
    url: String,
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
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    TestDb { db, url, _dir: Some(tempfile_like::Dir(dir)) }
}

async fn postgres() -> TestDb {
    postgres_with("").await
}

/// A fresh PostgreSQL database created with `options` (e.g. a locale).
async fn postgres_with(options: &'static str) -> TestDb {
    let admin_url = std::env::var("LANYARD_TEST_POSTGRES_URL").expect(
        "LANYARD_TEST_POSTGRES_URL is not set: run scripts/test, which installs and starts PostgreSQL \
         and creates the lanyard_test role",
    );
    let name = format!("lanyard_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&admin_url).await.expect("cannot reach PostgreSQL at LANYARD_TEST_POSTGRES_URL");
    let Db::Postgres(pool) = &admin else { unreachable!() };
    // The name is a UUID we generated and `options` a literal, so both are safe to splice in.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} {options}")))
        .execute(pool)
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    TestDb { db, url, _dir: None }
}

/// Runs `body` once against SQLite and once against PostgreSQL, each on a fresh database, and
/// prints how long each took (`cargo test -- --nocapture` shows it).
macro_rules! on_both {
    ($name:ident, |$db:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for t in [sqlite().await, postgres().await] {
                let $db = &t.db;
                let started = Instant::now();
                $body
                eprintln!("{} on {:?}: {:?}", stringify!($name), $db.dialect(), started.elapsed());
            }
        }
    };
}

/// Runs one statement written by hand (test setup, or an attacker with database access).
async fn raw(db: &Db, sql: &'static str) {
    match db {
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(db: &Db, table: &'static str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    // `table` is a literal of this file.
    let sql = sqlx::AssertSqlSafe(sql);
    match db {
        Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap()
}

const T0: OffsetDateTime = datetime!(2025-06-07 08:09:10 UTC);

fn group(name: &str) -> Group {
    Group { id: GroupId::new(), name: name.into(), policy: Policy::default() }
}

fn user(username: &str, group: GroupId) -> User {
    User {
        id: UserId::new(),
        username: Username::parse(username).unwrap(),
        display_name: format!("{username} Example"),
        email: None,
        group,
        roles: BTreeSet::from([Role::User]),
        disabled: false,
        created_at: T0,
    }
}

fn card(owner: Option<UserId>, serial: Option<&str>) -> Device {
    let mut d = Device::new(DeviceKind::SmartCard, "YubiKey 5", T0).unwrap();
    d.owner = owner;
    d.serial = serial.map(str::to_owned);
    d
}

fn certificate(device: DeviceId, serial: &str) -> Credential {
    Credential::new(
        device,
        CredentialKind::Certificate {
            slot: CertSlot::PivAuthentication,
            profile: "piv-auth".into(),
            serial_hex: serial.into(),
            not_before: T0,
            not_after: T0 + Duration::days(365),
            certificate_der: vec![0x30, 0x00],
            attestation_der: None,
        },
        T0,
    )
}

fn event(n: u32) -> NewAuditEvent {
    NewAuditEvent::new(
        T0 + Duration::nanoseconds(i64::from(n) * 1_001),
        Actor::System,
        "test.event",
        &OperationId::random(),
    )
    .target(format!("test:{n}"))
    .after(json!({"n": n}))
}

/// A group and a user, committed.
async fn someone(db: &Db, name: &str) -> User {
    let g = group(&format!("group-{name}"));
    let u = user(name, g.id);
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&g).await.unwrap();
    tx.insert_user(&u).await.unwrap();
    tx.commit().await.unwrap();
    u
}

on_both!(the_domain_conformance_suite_passes, |db| {
    lanyard_core::testing::conformance::run(db).await;
});

on_both!(concurrent_appends_never_fork_the_chain, |db| {
    const PER_TASK: u32 = 15;
    let append_all = |db: Db, task: u32| async move {
        let mut conflicts = 0;
        for i in 0..PER_TASK {
            loop {
                let mut tx = db.begin().await.unwrap();
                let result = match tx.append_audit(event(task * 1000 + i)).await {
                    Ok(_) => tx.commit().await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => break,
                    Err(StoreError::Retryable(_)) => conflicts += 1,
                    Err(e) => panic!("append by task {task}: {e}"),
                }
            }
        }
        conflicts
    };
    let a = tokio::spawn(append_all(db.clone(), 1));
    let b = tokio::spawn(append_all(db.clone(), 2));
    let conflicts = a.await.unwrap() + b.await.unwrap();
    eprintln!("concurrent appends on {:?}: {conflicts} conflicts retried", db.dialect());
    assert_eq!(conflicts, 0, "appends do not contend for the chain's head");
    db.seal_audit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let all = tx.list_audit(&AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(u64::from(2 * PER_TASK)), "one unbroken chain");
    let targets: BTreeSet<String> = all.iter().filter_map(|e| e.target.clone()).collect();
    assert_eq!(targets.len(), 2 * PER_TASK as usize, "every event of both tasks is there exactly once");
    assert_eq!(tx.audit_head().await.unwrap(), all.last().unwrap().head());
});

/// SQLite's write units of work share transactions (group commit): many writers at once, some
/// of which fail or are dropped half-way, must keep exactly the committed units' changes, each
/// visible once `commit` returned, and no change of a failed or dropped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_group_commit_keeps_exactly_the_committed_units() {
    const TASKS: u32 = 24;
    const PER_TASK: u32 = 10;
    let t = sqlite().await;
    let db = t.db.clone();
    let write = |db: Db, task: u32| async move {
        let mut kept = Vec::new();
        for i in 0..PER_TASK {
            let n = task * 1000 + i;
            let mut tx = db.begin().await.unwrap();
            tx.append_audit(event(n)).await.unwrap();
            match i % 5 {
                // Dropped without commit: as a handler returning early does.
                3 => drop(tx),
                // A failed call (a duplicate group name) inside the unit: only that call is
                // undone, and the unit commits the rest.
                4 => {
                    let g = group(&format!("dup-{n}"));
                    tx.insert_group(&g).await.unwrap();
                    let clash = Group { id: GroupId::new(), ..g };
                    assert!(matches!(tx.insert_group(&clash).await, Err(StoreError::Conflict(_))));
                    tx.commit().await.unwrap();
                    kept.push(n);
                }
                _ => {
                    tx.commit().await.unwrap();
                    kept.push(n);
                    // Committed means visible to a fresh reader at once.
                    let mut r = db.read().await.unwrap();
                    let q = AuditQuery { target: Some(format!("test:{n}")), limit: 10, ..Default::default() };
                    assert_eq!(r.list_audit(&q).await.unwrap().len(), 1, "event {n} visible after commit");
                }
            }
        }
        kept
    };
    let tasks: Vec<_> = (1..=TASKS).map(|task| tokio::spawn(write(db.clone(), task))).collect();
    let mut expected = BTreeSet::new();
    for task in tasks {
        expected.extend(task.await.unwrap().into_iter().map(|n| format!("test:{n}")));
    }
    let mut r = db.read().await.unwrap();
    let all = r.list_audit(&AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(expected.len() as u64), "one unbroken chain of the kept events");
    let found: BTreeSet<String> = all.iter().filter_map(|e| e.target.clone()).collect();
    assert_eq!(found, expected, "exactly the committed units' events");
    assert_eq!(count(&db, "groups").await, i64::from(TASKS * PER_TASK / 5), "one group per conflicting unit");
}

/// Two servers on one PostgreSQL: writers append through both pools while both run sealers.
/// Nothing is lost or duplicated, and the advisory lock (with the unique seq behind it) keeps
/// the two sealers from forking the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sealers_racing_on_two_pools_never_fork_the_chain() {
    const WRITERS: u32 = 6;
    const PER_WRITER: u32 = 40;
    let t = postgres().await;
    let other = Db::connect(&t.url).await.unwrap();
    let pools = [t.db.clone(), other.clone()];
    let write = |db: Db, w: u32| async move {
        for i in 0..PER_WRITER {
            let mut tx = db.begin().await.unwrap();
            tx.append_audit(event(w * 1000 + i)).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let seal = |db: Db| async move {
        let mut sealed = 0;
        for _ in 0..200 {
            sealed += db.seal_audit().await.unwrap();
            tokio::task::yield_now().await;
        }
        sealed
    };
    let writers: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(write(pools[(w % 2) as usize].clone(), w))).collect();
    let sealers: Vec<_> = pools.iter().map(|db| tokio::spawn(seal(db.clone()))).collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut sealed = 0;
    for s in sealers {
        sealed += s.await.unwrap();
    }
    // Whatever the racing sealers left: both pools once more.
    sealed += t.db.seal_audit().await.unwrap() + other.seal_audit().await.unwrap();
    let total = u64::from(WRITERS * PER_WRITER);
    assert_eq!(sealed, total, "each event sealed exactly once, by one sealer or the other");

    let mut r = t.db.read().await.unwrap();
    assert_eq!(r.unsealed_audit().await.unwrap(), 0);
    let all = r.list_audit(&AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(total), "one unbroken chain");
    let targets: BTreeSet<String> = all.iter().filter_map(|e| e.target.clone()).collect();
    assert_eq!(targets.len(), total as usize, "every event is there exactly once");
    assert_eq!(r.audit_head().await.unwrap(), all.last().unwrap().head());
}

/// On PostgreSQL an event is visible before the sealer chains it: listed after every sealed
/// one, marked unsealed, counted, and left out of verification until it is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unsealed_events_are_listed_last_and_marked() {
    let t = postgres().await;
    let db = &t.db;
    for n in 1..=2 {
        let mut tx = db.begin().await.unwrap();
        tx.append_audit(event(n)).await.unwrap();
        tx.commit().await.unwrap();
        if n == 1 {
            assert_eq!(db.seal_audit().await.unwrap(), 1);
        }
    }
    let mut r = db.read().await.unwrap();
    assert_eq!(r.unsealed_audit().await.unwrap(), 1);
    let all = r.list_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.iter().map(|e| (e.seq, e.sealed)).collect::<Vec<_>>(), [(1, true), (0, false)]);
    assert_eq!(all[1].target.as_deref(), Some("test:2"));
    assert_eq!((all[1].hash, all[1].prev_hash), ([0; 32], [0; 32]));
    let mut verifier = lanyard_core::audit::ChainVerifier::new();
    for e in &all {
        verifier.push(e).unwrap();
    }
    assert_eq!((verifier.count(), verifier.unsealed()), (1, 1));
    // Paging past the sealed part still shows the unsealed one.
    let rest = r.list_audit(&AuditQuery { after_seq: 1, limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(!rest[0].sealed);
    assert_eq!(r.audit_head().await.unwrap(), all[0].head(), "the head is the newest sealed event");
    drop(r);

    assert_eq!(db.seal_audit().await.unwrap(), 1);
    let mut r = db.read().await.unwrap();
    let all = r.list_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(2));
    assert_eq!(all[1].target.as_deref(), Some("test:2"));
}

on_both!(sealing_is_the_only_change_an_audit_row_allows, |db| {
    let mut tx = db.begin().await.unwrap();
    tx.append_audit(event(1)).await.unwrap();
    tx.commit().await.unwrap();
    db.seal_audit().await.unwrap();
    // A sealed event cannot be re-sealed, moved or edited, nor deleted.
    for sql in [
        "UPDATE audit_events SET seq = 7 WHERE seq = 1",
        "UPDATE audit_events SET action = 'x' WHERE seq = 1",
        "UPDATE audit_events SET seq = NULL, prev_hash = NULL, hash = NULL WHERE seq = 1",
        "DELETE FROM audit_events",
    ] {
        let refused = match db {
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
            Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
        };
        assert!(refused.is_err(), "{sql} was allowed");
    }
    // An unsealed one cannot be edited while being sealed either.
    let mut tx = db.begin().await.unwrap();
    tx.append_audit(event(2)).await.unwrap();
    let sql =
        "UPDATE audit_events SET action = 'x', seq = 2, prev_hash = hash, hash = hash WHERE seq IS NULL";
    let refused = match db {
        Db::Sqlite(_) => Err(()), // SQLite seals at commit: no unsealed row is visible outside.
        Db::Postgres(p) => {
            tx.commit().await.unwrap();
            sqlx::query(sql).execute(p).await.map(drop).map_err(drop)
        }
    };
    assert!(refused.is_err(), "an edit slipped in with the seal");
    let mut r = db.read().await.unwrap();
    let all = r.list_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert!(all.iter().all(|e| e.action == "test.event"));
});

on_both!(editing_an_audit_row_in_the_database_is_caught_at_that_event, |db| {
    let mut tx = db.begin().await.unwrap();
    for n in 1..=4 {
        tx.append_audit(event(n)).await.unwrap();
    }
    tx.commit().await.unwrap();
    db.seal_audit().await.unwrap();

    // An attacker with database access removes the guard and rewrites event 3.
    match db.dialect() {
        Dialect::Sqlite => raw(db, "DROP TRIGGER audit_events_no_update").await,
        Dialect::Postgres => raw(db, "DROP TRIGGER audit_events_no_update ON audit_events").await,
    }
    raw(db, "UPDATE audit_events SET after_json = '{\"n\":30}' WHERE seq = 3").await;

    let mut tx = db.begin().await.unwrap();
    let all = tx.list_audit(&AuditQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all[2].after, Some(json!({"n": 30})), "the edit is visible");
    let err = verify_chain(&all).unwrap_err();
    assert_eq!(err, ChainError::Broken { seq: 3, reason: BrokenReason::HashMismatch });
    assert_eq!(err.seq(), 3);
    assert_eq!(verify_chain(&all[..2]), Ok(2), "the events before it still verify");
});

on_both!(a_rolled_back_unit_of_work_leaves_nothing, |db| {
    let g = group("rollback");
    let u = user("rollback.user", g.id);
    let d = card(Some(u.id), Some("RB-1"));
    let c = certificate(d.id, "0b01");
    let (session, _) = Session::start(u.id, Duration::hours(1), T0).unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&g).await.unwrap();
    tx.insert_user(&u).await.unwrap();
    tx.insert_device(&d).await.unwrap();
    tx.insert_credential(&c).await.unwrap();
    tx.put_card_secrets(d.id, &SealedCardSecrets::from_bytes(vec![1, 2, 3])).await.unwrap();
    tx.insert_session(&session).await.unwrap();
    tx.append_audit(event(1)).await.unwrap();
    assert_eq!(tx.get_device(d.id).await.unwrap(), Some(d.clone()), "visible inside the unit of work");
    drop(tx);

    for table in ["groups", "users", "devices", "credentials", "card_secrets", "sessions", "audit_events"] {
        assert_eq!(count(db, table).await, 0, "{table} after rollback");
    }
    let mut tx = db.begin().await.unwrap();
    assert_eq!(tx.get_user(u.id).await.unwrap(), None);
    assert_eq!(tx.audit_head().await.unwrap(), lanyard_core::audit::ChainHead::GENESIS);
});

on_both!(duplicates_are_conflicts_naming_the_field, |db| {
    let alice = someone(db, "alice").await;
    let mut tx = db.begin().await.unwrap();
    let taken = User { id: UserId::new(), ..alice.clone() };
    assert_eq!(
        tx.insert_user(&taken).await,
        Err(StoreError::Conflict("users.username already exists".into()))
    );
    let same_id = User { username: Username::parse("alice.two").unwrap(), ..alice.clone() };
    assert_eq!(tx.insert_user(&same_id).await, Err(StoreError::Conflict("users.id already exists".into())));
    let g = tx.get_group(alice.group).await.unwrap().unwrap();
    assert_eq!(
        tx.insert_group(&Group { id: GroupId::new(), ..g }).await,
        Err(StoreError::Conflict("groups.name already exists".into()))
    );
    let first = card(None, Some("SN-9"));
    tx.insert_device(&first).await.unwrap();
    assert_eq!(
        tx.insert_device(&card(None, Some("SN-9"))).await,
        Err(StoreError::Conflict("devices.(model, serial) already exists".into()))
    );
    tx.insert_device(&card(None, None)).await.unwrap();
    tx.insert_device(&card(None, None)).await.expect("devices without a serial never collide");
    tx.insert_credential(&certificate(first.id, "0c01")).await.unwrap();
    assert_eq!(
        tx.insert_credential(&certificate(first.id, "0c01")).await,
        Err(StoreError::Conflict("credentials.serial_hex already exists".into()))
    );
    // The conflicts changed nothing and left the unit of work usable.
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert_eq!(tx.get_device(first.id).await.unwrap(), Some(first));
    assert_eq!(count(db, "devices").await, 3);
});

on_both!(a_failed_call_changes_nothing_and_the_unit_of_work_goes_on, |db| {
    let mut d = card(None, Some("FC-1"));
    let mut tx = db.begin().await.unwrap();
    tx.insert_device(&d).await.unwrap();
    let before = d.clone();
    d.state = DeviceState::Terminated;
    // The device row would change, but the link points at a device that does not exist.
    d.links = vec![DeviceLink { kind: LinkKind::Replaces, target: DeviceId::new() }];
    match tx.update_device(&d).await {
        Err(StoreError::Backend(m)) => assert!(m.to_lowercase().contains("foreign key"), "{m}"),
        other => panic!("expected a foreign key error, got {other:?}"),
    }
    assert_eq!(tx.get_device(d.id).await.unwrap(), Some(before.clone()), "the whole call was undone");
    assert_eq!(tx.update_device(&card(None, None)).await, Err(StoreError::NotFound));
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert_eq!(tx.get_device(d.id).await.unwrap(), Some(before));
});

on_both!(text_search_folds_case_alike_on_both_databases, |db| {
    let g = group("search");
    let mut emile = user("ezola", g.id);
    emile.display_name = "Émile Zola".into();
    emile.email = Some(lanyard_core::model::Email::parse("Emile@Example.org").unwrap());
    let mut percent = user("pct", g.id);
    percent.display_name = "100% Sure_Thing".into();
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&g).await.unwrap();
    tx.insert_user(&emile).await.unwrap();
    tx.insert_user(&percent).await.unwrap();
    let find = |text: &str| UserQuery { text: Some(text.into()), limit: 10, ..Default::default() };
    for (text, expected) in [
        ("ÉMILE", vec!["ezola"]),
        ("émile z", vec!["ezola"]),
        ("EXAMPLE.ORG", vec!["ezola"]),
        ("0% s", vec!["pct"]),
        ("_", vec!["pct"]), // a literal underscore; as a LIKE wildcard it would match both
        ("100%", vec!["pct"]),
        ("%", vec!["pct"]), // likewise a literal percent sign
        ("0%_s", vec![]),
        ("zolaemile", vec![]),
        ("a\u{1f}e", vec![]), // never matches across fields
        ("", vec!["ezola", "pct"]),
    ] {
        let found: Vec<String> =
            tx.list_users(&find(text)).await.unwrap().into_iter().map(|u| u.username.to_string()).collect();
        assert_eq!(found, expected, "search for {text:?}");
    }
});

on_both!(times_round_trip_exactly, |db| {
    let mut u = someone(db, "timely").await;
    let plus_two = UtcOffset::from_hms(2, 0, 0).unwrap();
    u.created_at = datetime!(2031-12-31 23:59:59.123456789 +2);
    let mut d = card(Some(u.id), None);
    d.created_at = datetime!(1969-12-31 23:59:59.999999999 UTC);
    d.updated_at = datetime!(1677-09-21 00:12:43.145224192 UTC); // the earliest storable instant
    let mut c = certificate(d.id, "0d01");
    let CredentialKind::Certificate { not_before, not_after, .. } = &mut c.kind;
    *not_before = datetime!(2025-01-01 00:00:00.000000001 UTC);
    *not_after = datetime!(2262-04-11 23:47:16.854775807 UTC); // the latest storable instant
    c.state = CredentialState::OnHold;
    c.held_from = Some(CredentialState::Active);
    c.revoked_at = Some(datetime!(2026-02-03 04:05:06.7 -5));

    let mut tx = db.begin().await.unwrap();
    tx.update_user(&u).await.unwrap();
    tx.insert_device(&d).await.unwrap();
    tx.insert_credential(&c).await.unwrap();
    let appended = tx.append_audit(event(7)).await.unwrap();
    tx.commit().await.unwrap();
    db.seal_audit().await.unwrap();
    let mut sealed = appended;
    sealed.seal_after(&lanyard_core::audit::ChainHead::GENESIS);

    let mut tx = db.begin().await.unwrap();
    let got = tx.get_user(u.id).await.unwrap().unwrap();
    assert_eq!(got, u);
    assert_eq!(got.created_at.offset(), UtcOffset::UTC, "times come back in UTC");
    assert_eq!(got.created_at.to_offset(plus_two).nanosecond(), 123_456_789);
    assert_eq!(tx.get_device(d.id).await.unwrap(), Some(d.clone()));
    assert_eq!(tx.get_credential(c.id).await.unwrap(), Some(c.clone()));
    assert_eq!(tx.list_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap(), [sealed]);

    // Outside the range: refused with the field named, before anything reaches the database.
    let mut late = certificate(d.id, "0d02");
    let CredentialKind::Certificate { not_after, .. } = &mut late.kind;
    *not_after = datetime!(9999-12-31 23:59:59 UTC);
    match tx.insert_credential(&late).await {
        Err(StoreError::Backend(m)) => assert!(m.contains("credentials.not_after"), "{m}"),
        other => panic!("expected Backend, got {other:?}"),
    }
    assert_eq!(tx.get_credential(c.id).await.unwrap(), Some(c), "the unit of work is still usable");
});

on_both!(corrupt_rows_are_backend_errors, |db| {
    someone(db, "corrupt").await;
    raw(
        db,
        "INSERT INTO devices (id, owner_id, kind, model, serial, card_guid, state, suspended_from, \
         revocation_reason, created_at, updated_at) VALUES ('00000000-0000-4000-8000-000000000001', NULL, \
         'smart_card', 'YubiKey 5', NULL, NULL, 'bogus', NULL, NULL, 0, 0)",
    )
    .await;
    raw(db, "INSERT INTO groups (id, name, policy) VALUES ('00000000-0000-4000-8000-000000000002', 'broken', '{\"max_devices\": ')").await;
    raw(db, "UPDATE users SET roles = '[\"superuser\"]'").await;

    let id: DeviceId = "00000000-0000-4000-8000-000000000001".parse().unwrap();
    let mut tx = db.begin().await.unwrap();
    let expect_backend = |result: Result<String, StoreError>, needles: &[&str]| match result {
        Err(StoreError::Backend(m)) => {
            for needle in needles {
                assert!(m.contains(needle), "{m:?} should mention {needle:?}");
            }
        }
        other => panic!("expected Backend, got {other:?}"),
    };
    expect_backend(
        tx.get_device(id).await.map(|d| format!("{d:?}")),
        &["devices", "00000000-0000-4000-8000-000000000001", "state", "bogus"],
    );
    expect_backend(
        tx.list_devices(&DeviceQuery { limit: 10, ..Default::default() }).await.map(|d| format!("{d:?}")),
        &["devices", "state"],
    );
    expect_backend(tx.list_groups().await.map(|g| format!("{g:?}")), &["groups", "policy", "invalid JSON"]);
    expect_backend(
        tx.list_users(&UserQuery { limit: 10, ..Default::default() }).await.map(|u| format!("{u:?}")),
        &["users", "roles", "superuser"],
    );
    // Reading a corrupt row does not break the unit of work.
    assert_eq!(tx.get_device(DeviceId::new()).await, Ok(None));
    tx.commit().await.unwrap();
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_unit_of_work_cancelled_while_it_begins_leaves_no_transaction_behind() {
    // A request cancelled while its unit of work's BEGIN is on the wire must not leave the
    // pooled connection inside a transaction sqlx does not know about: the next unit on it would
    // run inside the stale one (read-only if it was a read unit's).
    let t = postgres().await;
    let db = &t.db;
    for i in 0..200u64 {
        // Give up on a read unit's start after a few microseconds (the cut lands anywhere from
        // taking the connection to waiting for BEGIN's answer), then write.
        let _ = tokio::time::timeout(std::time::Duration::from_micros(i * 7 % 400), db.read()).await;
        let mut tx = db.begin().await.unwrap();
        tx.insert_group(&group(&format!("after-cancel-{i}"))).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut tx = db.read().await.unwrap();
    let all = tx.list_groups().await.unwrap();
    assert_eq!(all.iter().filter(|g| g.name.as_str().starts_with("after-cancel-")).count(), 200);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serialization_failures_are_retryable() {
    let t = postgres().await;
    let db = &t.db;
    let g = group("skew");
    let mut setup = db.begin().await.unwrap();
    setup.insert_group(&g).await.unwrap();
    setup.commit().await.unwrap();

    // Write skew: each reads what the other writes, so no serial order explains both. PostgreSQL
    // aborts one of them, at its insert or at its commit.
    let mut a = db.begin().await.unwrap();
    let mut b = db.begin().await.unwrap();
    let everyone = UserQuery { limit: 10, ..Default::default() };
    assert!(a.list_users(&everyone).await.unwrap().is_empty());
    assert!(b.list_users(&everyone).await.unwrap().is_empty());
    let a_insert = a.insert_user(&user("skew.a", g.id)).await;
    let b_insert = b.insert_user(&user("skew.b", g.id)).await;
    let a_commit = a.commit().await;
    let b_commit = b.commit().await;
    let outcomes = [(a_insert, a_commit), (b_insert, b_commit)];
    let conflicted = outcomes
        .iter()
        .filter(|(insert, commit)| {
            if let Err(StoreError::Retryable(m)) = insert {
                assert!(m.contains("concurrent transaction"), "{m}");
                // Once a unit of work hit a serialization failure, it cannot commit anything.
                assert!(matches!(commit, Err(StoreError::Retryable(_))), "{commit:?}");
                return true;
            }
            match commit {
                Err(StoreError::Retryable(m)) => {
                    assert!(m.contains("concurrent transaction"), "{m}");
                    true
                }
                other => {
                    assert_eq!(other, &Ok(()));
                    assert_eq!(insert, &Ok(()));
                    false
                }
            }
        })
        .count();
    assert_eq!(conflicted, 1, "{outcomes:?}");
    assert_eq!(count(db, "users").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_orders_like_the_domain_whatever_the_database_locale() {
    // ICU's en-US puts "alice" before "Bob" and "a_b" before "a1"; byte order (SQLite, Rust's
    // str, and therefore MemRepo and keyset pagination) does the opposite.
    let t = postgres_with("LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0").await;
    let db = &t.db;
    let names = ["Zeta", "alpha", "Émile", "beta", "Bob", "a_b", "a1"];
    let usernames = ["a1", "a_b", "a.c", "a-d", "b", "a"];
    let mut tx = db.begin().await.unwrap();
    let groups: Vec<Group> = names.iter().map(|n| group(n)).collect();
    for g in &groups {
        tx.insert_group(g).await.unwrap();
    }
    for u in usernames {
        tx.insert_user(&user(u, groups[0].id)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let listed: Vec<String> = tx.list_groups().await.unwrap().into_iter().map(|g| g.name).collect();
    let mut expected: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected, "list_groups in byte order");

    let mut expected: Vec<&str> = usernames.to_vec();
    expected.sort();
    let page = |after: Option<&str>| UserQuery {
        after: after.map(|a| Username::parse(a).unwrap()),
        limit: 100,
        ..Default::default()
    };
    let listed: Vec<String> =
        tx.list_users(&page(None)).await.unwrap().into_iter().map(|u| u.username.to_string()).collect();
    assert_eq!(listed, expected, "list_users in byte order");
    let listed: Vec<String> =
        tx.list_users(&page(Some("a1"))).await.unwrap().into_iter().map(|u| u.username.to_string()).collect();
    assert_eq!(listed, ["a_b", "b"], "keyset pagination in byte order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_unique_index_has_a_field_name_for_conflicts() {
    let t = postgres().await;
    let Db::Postgres(pool) = &t.db else { unreachable!() };
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indisunique AND n.nspname = current_schema() AND c.relname NOT LIKE '_sqlx%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut listed: Vec<String> = POSTGRES_UNIQUE_FIELDS.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(names, listed, "POSTGRES_UNIQUE_FIELDS and the schema's unique indexes differ");
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
            let e = sqlx::query("TRUNCATE audit_events").execute(p).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{e}");
        }
    }
});

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let e = Db::connect("mysql://x").await.unwrap_err();
    assert!(e.to_string().contains("neither sqlite"), "{e}");
}

on_both!(a_read_unit_of_work_refuses_writes_and_stays_usable, |db| {
    let g = group("read-only");
    let mut tx = db.read().await.unwrap();
    match tx.insert_group(&g).await {
        Err(StoreError::ReadOnly(m)) => {
            assert!(m.starts_with("INSERT INTO groups"), "{m}");
            assert!(m.contains("Repo::read"), "{m}");
        }
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    let mut d = card(None, Some("RO-1"));
    d.links.push(DeviceLink { kind: LinkKind::Replaces, target: DeviceId::new() });
    assert!(matches!(tx.insert_device(&d).await, Err(StoreError::ReadOnly(_))));
    assert!(matches!(tx.append_audit(event(1)).await, Err(StoreError::ReadOnly(_))));
    // Refused before the database saw it: the unit of work still reads, and commits nothing.
    assert!(tx.list_groups().await.unwrap().is_empty());
    tx.commit().await.unwrap();
    assert_eq!(count(db, "groups").await, 0);
    assert_eq!(count(db, "audit_events").await, 0);
    // Connections that served read units of work go back to the pool writable.
    for _ in 0..12 {
        let mut r = db.read().await.unwrap();
        r.list_groups().await.unwrap();
    }
    for n in 0..12 {
        let mut w = db.begin().await.unwrap();
        w.insert_group(&group(&format!("after-read-{n}"))).await.unwrap();
        w.commit().await.unwrap();
    }
    assert_eq!(count(db, "groups").await, 12);
});

on_both!(a_read_unit_of_work_runs_beside_a_writer_holding_its_lock, |db| {
    let g = group("committed");
    let mut setup = db.begin().await.unwrap();
    setup.insert_group(&g).await.unwrap();
    setup.commit().await.unwrap();

    let mut writer = db.begin().await.unwrap();
    writer.insert_group(&group("uncommitted")).await.unwrap();
    // On SQLite the writer holds the write lock now; a read must neither wait for it (the old
    // `BEGIN IMMEDIATE` for everything waited up to the 10 s busy timeout) nor see its write.
    let read = async {
        let mut r = db.read().await.unwrap();
        r.list_groups().await.unwrap()
    };
    let seen = tokio::time::timeout(std::time::Duration::from_secs(3), read)
        .await
        .expect("a read unit of work waited for the writer");
    assert_eq!(seen, vec![g]);
    writer.commit().await.unwrap();
    let mut r = db.read().await.unwrap();
    assert_eq!(r.list_groups().await.unwrap().len(), 2);
});

on_both!(concurrent_operator_actions_on_different_devices_all_succeed, |db| {
    use lanyard_core::authz::Principal;
    const WRITERS: usize = 8;
    let mut operator = someone(db, "olga").await;
    operator.roles.insert(Role::Operator);
    let mut tx = db.begin().await.unwrap();
    tx.update_user(&operator).await.unwrap();
    let mut devices = Vec::new();
    for n in 0..WRITERS {
        let mut d = card(Some(operator.id), Some(&format!("C-{n}")));
        d.state = DeviceState::Active;
        tx.insert_device(&d).await.unwrap();
        tx.insert_credential(&certificate(d.id, &format!("c{n:02x}"))).await.unwrap();
        devices.push(d.id);
    }
    tx.commit().await.unwrap();
    let principal = Principal::new(operator, OperationId::random(), T0).unwrap();

    // Every action reads the device, its credentials and the audit head, then writes all three:
    // on PostgreSQL they collide, and only the retry gets every one of them through.
    let tasks: Vec<_> = devices
        .iter()
        .map(|id| {
            let (db, principal, id) = (db.clone(), principal.clone(), *id);
            tokio::spawn(async move { principal.operator().unwrap().suspend_device(&db, id).await })
        })
        .collect();
    for task in tasks {
        let device = task.await.unwrap().unwrap_or_else(|e| panic!("a concurrent suspend failed: {e}"));
        assert_eq!(device.state, DeviceState::Suspended);
    }
    db.seal_audit().await.unwrap();
    let mut r = db.read().await.unwrap();
    let all = r.list_audit(&AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(verify_chain(&all), Ok(WRITERS as u64), "one event per action, one unbroken chain");
    for id in devices {
        assert_eq!(r.get_device(id).await.unwrap().unwrap().state, DeviceState::Suspended);
    }
});

/// A device of `owner` with a job that has an outstanding agent ticket (issued at `T0`, valid
/// 10 minutes); the job and the ticket's secret.
async fn job_with_ticket(db: &Db, owner: &User) -> (Job, String) {
    let device = card(Some(owner.id), None);
    let mut job = Job::new(JobKind::Issuance, device.id, Some(owner.id), T0);
    let secret = job.issue_ticket(Duration::minutes(10), T0).unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.insert_device(&device).await.unwrap();
    tx.insert_job(&job).await.unwrap();
    tx.commit().await.unwrap();
    (job, secret.expose_secret().to_owned())
}

async fn stored_job(db: &Db, id: JobId) -> Job {
    let mut tx = db.begin().await.unwrap();
    tx.get_job(id).await.unwrap().unwrap()
}

fn system(at: OffsetDateTime) -> System {
    System::new(OperationId::random(), at)
}

on_both!(two_agents_racing_with_one_ticket_start_the_job_once, |db| {
    let owner = someone(db, "racer").await;
    let at = T0 + Duration::minutes(1);
    for round in 0..8 {
        let (job, secret) = job_with_ticket(db, &owner).await;
        let redeem = |instance: InstanceId| {
            let (db, secret) = (db.clone(), secret.clone());
            tokio::spawn(async move { system(at).redeem_ticket(&db, job.id, &secret, instance).await })
        };
        let (a, b) = (InstanceId::new(), InstanceId::new());
        let (first, second) = tokio::join!(redeem(a), redeem(b));
        let winners: Vec<Job> =
            [first.unwrap().unwrap(), second.unwrap().unwrap()].into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one redemption wins");
        let winner = &winners[0];
        assert_eq!(winner.state, JobState::Running);
        assert_eq!(winner.agent_ticket, None);
        assert!(winner.lease.is_some_and(|l| [a, b].contains(&l.owner) && l.expires_at == at + JOB_LEASE));
        assert_eq!(&stored_job(db, job.id).await, winner);
        // The used ticket opens nothing any more.
        assert_eq!(system(at).redeem_ticket(db, job.id, &secret, a).await.unwrap(), None);
    }
    // One `job.running` event per job, naming the lease owner.
    let mut tx = db.begin().await.unwrap();
    let events = tx
        .list_audit(&AuditQuery { after_seq: 0, target: None, limit: 1000, ..Default::default() })
        .await
        .unwrap();
    let running: Vec<_> = events.iter().filter(|e| e.action == "job.running").collect();
    assert_eq!(running.len(), 8);
    assert!(running.iter().all(|e| e.after.as_ref().is_some_and(|a| a["lease_owner"].is_string())));
});

on_both!(a_step_write_never_undoes_a_concurrent_rollback_request, |db| {
    let owner = someone(db, "holder").await;
    let g = group("operators");
    let mut operator = user("oscar", g.id);
    operator.roles = BTreeSet::from([Role::Operator]);
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&g).await.unwrap();
    tx.insert_user(&operator).await.unwrap();
    tx.commit().await.unwrap();
    let (job, secret) = job_with_ticket(db, &owner).await;
    let at = T0 + Duration::minutes(1);
    let server = InstanceId::new();
    // The session's own copy, as redemption handed it over.
    let mut session = system(at).redeem_ticket(db, job.id, &secret, server).await.unwrap().unwrap();
    session.record("rotate_management_key", StepOutcome::Done, None, at).unwrap();
    system(at).save_job(db, &mut session).await.unwrap();
    assert_eq!(stored_job(db, job.id).await, session, "the session's writes keep its copy current");

    // Meanwhile (say its server stalled past the lease) another server fails the job and an
    // operator asks for a rollback ticket.
    let later = at + JOB_LEASE + Duration::seconds(1);
    assert_eq!(system(later).fail_interrupted_jobs(db).await.unwrap(), 1);
    let principal = Principal::new(operator, OperationId::random(), later).unwrap();
    principal
        .operator()
        .unwrap()
        .job_ticket(db, job.id, TicketPurpose::Rollback, Duration::minutes(10))
        .await
        .unwrap();
    let requested = stored_job(db, job.id).await;
    assert_eq!(requested.state, JobState::Failed);
    assert_eq!(requested.steps.last().map(|s| s.name.as_str()), Some(STEP_ROLLBACK_REQUESTED));

    // The session wakes up and writes its next step from its old copy: refused, nothing undone.
    session.record("generate_9a", StepOutcome::Done, None, later).unwrap();
    match system(later).save_job(db, &mut session).await {
        Err(DomainError::Store(StoreError::Stale(_))) => {}
        other => panic!("expected a stale write, got {other:?}"),
    }
    session.transition(JobState::Succeeded, later).unwrap();
    assert!(matches!(
        system(later).save_job(db, &mut session).await,
        Err(DomainError::Store(StoreError::Stale(_)))
    ));
    assert_eq!(stored_job(db, job.id).await, requested, "the rollback request survives");
    // Nor can the session keep its lease alive.
    assert!(!system(later).renew_lease(db, job.id, server).await.unwrap());
});

on_both!(a_restarting_server_fails_only_sessions_whose_lease_ran_out, |db| {
    let owner = someone(db, "two-servers").await;
    let (live, live_secret) = job_with_ticket(db, &owner).await;
    let (dead, dead_secret) = job_with_ticket(db, &owner).await;
    let (server_a, server_b) = (InstanceId::new(), InstanceId::new());
    let start = T0 + Duration::minutes(1);
    // Server A runs one session, server B another; B then stops.
    system(start).redeem_ticket(db, live.id, &live_secret, server_a).await.unwrap().unwrap();
    system(start).redeem_ticket(db, dead.id, &dead_secret, server_b).await.unwrap().unwrap();

    // B restarts 90 s later (a new instance): both leases still run, nothing is failed.
    let mut now = start + Duration::seconds(90);
    assert_eq!(system(now).fail_interrupted_jobs(db).await.unwrap(), 0);
    // A keeps renewing every 30 s; B's old session does not.
    for _ in 0..4 {
        assert!(system(now).renew_lease(db, live.id, server_a).await.unwrap());
        now += Duration::seconds(30);
    }
    // Now B's lease has run out and A's has not.
    assert!(now > start + JOB_LEASE);
    assert_eq!(system(now).fail_interrupted_jobs(db).await.unwrap(), 1);
    let live = stored_job(db, live.id).await;
    assert_eq!(live.state, JobState::Running);
    assert_eq!(live.lease.map(|l| l.owner), Some(server_a));
    let dead = stored_job(db, dead.id).await;
    assert_eq!(dead.state, JobState::Failed);
    assert_eq!(dead.lease, None);
    let last = dead.steps.last().unwrap();
    assert_eq!((last.name.as_str(), last.outcome), ("session", StepOutcome::Failed));
    assert!(last.detail.as_deref().unwrap().contains("lease ran out"), "{last:?}");
    // B's old instance cannot revive it.
    assert!(!system(now).renew_lease(db, dead.id, server_b).await.unwrap());
    let mut tx = db.begin().await.unwrap();
    let events = tx
        .list_audit(&AuditQuery {
            after_seq: 0,
            target: Some(format!("job:{}", dead.id)),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let failed = events.iter().find(|e| e.action == "job.failed").unwrap();
    assert_eq!(failed.after.as_ref().unwrap()["lease_owner"], json!(server_b.to_string()));
});

/// The single value of a one-column, one-row query written in this file.
async fn bytes(db: &Db, sql: &'static str) -> Vec<u8> {
    match db {
        Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

on_both!(two_agents_racing_with_one_pairing_code_pair_once_and_only_hashes_are_stored, |db| {
    let owner = someone(db, "pairer").await;
    let principal = Principal::new(owner.clone(), OperationId::random(), T0).unwrap();
    let me = principal.workstations().unwrap();
    let at = T0 + Duration::seconds(30);
    for round in 0..8 {
        let (_, code) = me.start_pairing(db).await.unwrap();
        let code = code.expose_secret().to_owned();
        let pair = |host: &'static str| {
            let (db, code) = (db.clone(), code.clone());
            tokio::spawn(async move { system(at).pair_agent(&db, &code, host).await })
        };
        let (first, second) = tokio::join!(pair("ws-a"), pair("ws-b"));
        let winners: Vec<_> =
            [first.unwrap().unwrap(), second.unwrap().unwrap()].into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one redemption wins");
        assert!(system(at).pair_agent(db, &code, "ws-c").await.unwrap().is_none(), "a used code");
    }
    assert_eq!(count(db, "agents").await, 8);

    // What is stored: hashes of the normalized code and of the credential, nothing else secret.
    raw(db, "DELETE FROM pairing_codes").await;
    let (code, secret) = me.start_pairing(db).await.unwrap();
    let stored = bytes(db, "SELECT code_hash FROM pairing_codes").await;
    assert_eq!(stored, code.code_hash.as_bytes());
    assert_eq!(stored, TokenHash::of(&secret.expose_secret().replace('-', "")).as_bytes());
    raw(db, "DELETE FROM agents").await;
    let (agent, credential) =
        system(at).pair_agent(db, secret.expose_secret(), "ws-h").await.unwrap().unwrap();
    assert_eq!(
        bytes(db, "SELECT credential_hash FROM agents").await,
        TokenHash::of(credential.expose_secret()).as_bytes()
    );
    let mut tx = db.read().await.unwrap();
    let events = tx
        .list_audit(&AuditQuery { after_seq: 0, target: None, limit: 1000, ..Default::default() })
        .await
        .unwrap();
    drop(tx);
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains(secret.expose_secret()) && !text.contains(&secret.expose_secret().replace('-', ""))
    );
    assert!(!text.contains(credential.expose_secret()));

    // The credential authenticates until the agent is revoked; then never again.
    let later = at + Duration::minutes(10);
    let (found, user) =
        system(later).authenticate_agent(db, credential.expose_secret()).await.unwrap().unwrap();
    assert_eq!((found.id, found.last_seen_at, user.id), (agent.id, Some(later), owner.id));
    me.revoke_agent(db, agent.id).await.unwrap();
    assert!(system(later).authenticate_agent(db, credential.expose_secret()).await.unwrap().is_none());
    // An expired code pairs nothing.
    let (_, late) = me.start_pairing(db).await.unwrap();
    let expired = T0 + lanyard_core::model::PAIRING_CODE_TTL;
    assert!(system(expired).pair_agent(db, late.expose_secret(), "ws-x").await.unwrap().is_none());
});

// Passkeys through the domain on both databases: a holder registers one for an Active key of
// theirs; nobody else sees, uses or removes it (another user's key and passkey are NotFound);
// suspending the key disables it at the next sign-in and resuming restores it; a counter that
// does not increase is refused and audited; an operator removes it.
on_both!(passkeys_follow_their_device_and_stay_with_their_holder, |db| {
    use lanyard_core::authz::{NewPasskey, PasskeyRefused, PasskeySignIn, Principal, password_refused};
    use lanyard_core::model::SignInMethod;
    let alice = someone(db, "pk-alice").await;
    let bob = someone(db, "pk-bob").await;
    let mut olga = someone(db, "pk-olga").await;
    olga.roles.insert(Role::Operator);
    let mut key = card(Some(alice.id), Some("PK-1"));
    key.kind = DeviceKind::UsbKey;
    key.state = DeviceState::Active;
    let mut bobs_key = card(Some(bob.id), Some("PK-2"));
    bobs_key.state = DeviceState::Active;
    let mut tx = db.begin().await.unwrap();
    tx.update_user(&olga).await.unwrap();
    tx.insert_device(&key).await.unwrap();
    tx.insert_device(&bobs_key).await.unwrap();
    tx.commit().await.unwrap();
    let p = |u: &User| Principal::new(u.clone(), OperationId::random(), T0).unwrap();
    let (pa, pb, po) = (p(&alice), p(&bob), p(&olga));
    let session_a = TokenHash::of("alice's session");

    // Bob cannot start a registration for Alice's key; Alice can for hers.
    let err =
        pb.self_service().unwrap().start_passkey_registration(db, key.id, session_a, None).await.unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
    let start =
        pa.self_service().unwrap().start_passkey_registration(db, key.id, session_a, None).await.unwrap();
    // The challenge redeems once, only in Alice's session and only for Alice.
    let wrong = pb
        .self_service()
        .unwrap()
        .redeem_registration_challenge(db, session_a, &start.challenge)
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("challenge"), "{wrong}");
    let used = pa
        .self_service()
        .unwrap()
        .redeem_registration_challenge(db, session_a, &start.challenge)
        .await
        .unwrap_err();
    assert!(used.to_string().contains("already used"), "Bob's attempt used the challenge up: {used}");
    let start =
        pa.self_service().unwrap().start_passkey_registration(db, key.id, session_a, None).await.unwrap();
    let (device, _) = pa
        .self_service()
        .unwrap()
        .redeem_registration_challenge(db, session_a, &start.challenge)
        .await
        .unwrap();
    let new = NewPasskey {
        credential_id: vec![0xc1; 32],
        rp_id: "lanyard.example".into(),
        public_key: vec![0xa5],
        sign_count: 0,
        aaguid: [0; 16],
        attestation: "none".into(),
    };
    let passkey = pa.self_service().unwrap().register_passkey(db, device, &new, None).await.unwrap();
    let err = pb
        .self_service()
        .unwrap()
        .register_passkey(db, key.id, &NewPasskey { credential_id: vec![2; 16], ..new.clone() }, None)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
    assert!(pb.self_service().unwrap().passkeys(db).await.unwrap().is_empty(), "Bob sees none of Alice's");
    let err = pb.self_service().unwrap().remove_passkey(db, passkey.id).await.unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
    let mine = pa.self_service().unwrap().passkeys(db).await.unwrap();
    assert_eq!((mine.len(), mine[0].usable), (1, true));

    // Sign-in: the candidate is found by credential id; suspending the key refuses it.
    let sign_in = |at| PasskeySignIn::new(db, OperationId::random(), at);
    let complete = |at: OffsetDateTime, count: u32| async move {
        let s = sign_in(at);
        let candidate = s.candidate(&[0xc1; 32]).await.unwrap().unwrap();
        let (session, _) = Session::start(candidate.user.id, Duration::minutes(30), at).unwrap();
        s.complete(&candidate, count, "lanyard.example", &session).await.unwrap()
    };
    assert_eq!(complete(T0, 1).await.unwrap().id, alice.id);
    po.operator().unwrap().suspend_device(db, key.id).await.unwrap();
    assert_eq!(complete(T0, 2).await, Err(PasskeyRefused::DeviceNotActive(DeviceState::Suspended)));
    po.operator().unwrap().resume_device(db, key.id).await.unwrap();
    assert_eq!(complete(T0, 3).await.unwrap().id, alice.id, "resuming the key restores its passkey");
    assert_eq!(complete(T0, 3).await, Err(PasskeyRefused::PossibleClone { stored: 3, presented: 3 }));
    let mut r = db.read().await.unwrap();
    let refused = r
        .list_audit(&AuditQuery {
            action: Some("passkey.sign_in_refused".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let reasons: Vec<String> =
        refused.iter().map(|e| e.after.as_ref().unwrap()["reason"].as_str().unwrap().to_owned()).collect();
    assert_eq!(reasons, vec!["device_not_active", "possible_clone"]);
    drop(r);

    // Password sign-in is refused under a passkey policy only while a passkey is usable.
    let mut r = db.read().await.unwrap();
    let mut g = r.get_group(alice.group).await.unwrap().unwrap();
    drop(r);
    g.policy.sign_in.method = SignInMethod::Passkey;
    let mut tx = db.begin().await.unwrap();
    tx.update_group(&g).await.unwrap();
    tx.commit().await.unwrap();
    assert!(password_refused(db, &alice).await.unwrap());
    po.operator().unwrap().suspend_device(db, key.id).await.unwrap();
    assert!(!password_refused(db, &alice).await.unwrap(), "a suspended key never locks its holder out");
    po.operator().unwrap().resume_device(db, key.id).await.unwrap();

    // Bob's view of an operator's removal: nothing; the operator removes Alice's passkey.
    let removed = po.operator().unwrap().remove_passkey(db, passkey.id).await.unwrap();
    assert_eq!(removed.state, lanyard_core::model::PasskeyState::Removed);
    assert_eq!(complete(T0, 9).await, Err(PasskeyRefused::Removed));
    assert!(!password_refused(db, &alice).await.unwrap());
});

// Migration 0012 turns every stored policy's FIDO PIN mode to `none` (it had no effect before)
// and writes the minimum FIDO PIN length out; the other members are kept.
on_both!(migration_0012_sets_fido_pin_mode_none, |db| {
    let g = group("fido-before-0012");
    let mut tx = db.begin().await.unwrap();
    tx.insert_group(&g).await.unwrap();
    tx.commit().await.unwrap();
    // The policy as a server before 0012 stored it: "independent", no minimum, max_devices 5.
    let mut old = serde_json::to_value(&g.policy).unwrap();
    let map = old.as_object_mut().unwrap();
    map.remove("fido_min_pin_length");
    map.insert("fido_pin_mode".into(), json!("independent"));
    map.insert("max_devices".into(), json!(5));
    let old = old.to_string();
    let id = g.id.to_string();
    let (migration, set) = match db {
        Db::Sqlite(_) => (
            include_str!("../migrations/sqlite/0012_fido_pin_policy.sql"),
            "UPDATE groups SET policy = ? WHERE id = ?",
        ),
        Db::Postgres(_) => (
            include_str!("../migrations/postgres/0012_fido_pin_policy.sql"),
            "UPDATE groups SET policy = $1 WHERE id = $2",
        ),
    };
    match db {
        Db::Sqlite(p) => {
            sqlx::query(set).bind(&old).bind(&id).execute(p).await.unwrap();
            sqlx::raw_sql(migration).execute(p).await.unwrap();
        }
        Db::Postgres(p) => {
            sqlx::query(set).bind(&old).bind(&id).execute(p).await.unwrap();
            sqlx::raw_sql(migration).execute(p).await.unwrap();
        }
    }
    let read = db.read().await.unwrap().get_group(g.id).await.unwrap().unwrap();
    assert_eq!(read.policy.fido_pin_mode, lanyard_core::model::FidoPinMode::None);
    assert_eq!(read.policy.fido_min_pin_length, 6);
    assert_eq!(read.policy.max_devices, 5, "the other members are kept");
});

async fn epoch(db: &Db) -> u64 {
    let direct = db.revocation_epoch().await.unwrap();
    let mut tx = db.read().await.unwrap();
    assert_eq!(tx.revocation_epoch().await.unwrap(), direct, "both ways of reading the epoch agree");
    direct
}

/// Applies `action` to the stored credential in one committed unit of work.
async fn act(
    db: &Db,
    id: lanyard_core::ids::CredentialId,
    action: lanyard_core::lifecycle::CredentialAction,
) {
    let mut tx = db.begin().await.unwrap();
    let mut c = tx.get_credential(id).await.unwrap().unwrap();
    lanyard_core::lifecycle::apply_credential(&mut c, action, T0 + Duration::hours(1)).unwrap();
    tx.update_credential(&c).await.unwrap();
    tx.commit().await.unwrap();
}

on_both!(every_status_change_moves_the_revocation_epoch_and_nothing_else_does, |db| {
    use lanyard_core::lifecycle::{CredentialAction as A, RevocationReason};
    let owner = someone(db, "epoch").await;
    let d = card(Some(owner.id), Some("E1"));
    let mut tx = db.begin().await.unwrap();
    tx.insert_device(&d).await.unwrap();
    tx.commit().await.unwrap();
    let e0 = epoch(db).await;

    // A pending certificate is on hold: inserting it changes answers.
    let pending = certificate(d.id, "0a01");
    let mut tx = db.begin().await.unwrap();
    tx.insert_credential(&pending).await.unwrap();
    tx.commit().await.unwrap();
    let e1 = epoch(db).await;
    assert!(e1 > e0);

    // An active one was unknown before and is good now: no cached answer covers it.
    let mut active = certificate(d.id, "0a02");
    active.state = CredentialState::Active;
    let mut tx = db.begin().await.unwrap();
    tx.insert_credential(&active).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(epoch(db).await, e1);

    // A rolled-back change moves nothing.
    let mut tx = db.begin().await.unwrap();
    let mut c = tx.get_credential(active.id).await.unwrap().unwrap();
    lanyard_core::lifecycle::apply_credential(&mut c, A::Hold, T0).unwrap();
    tx.update_credential(&c).await.unwrap();
    drop(tx);
    assert_eq!(epoch(db).await, e1);

    // Rewriting a credential without changing its status moves nothing either.
    let mut tx = db.begin().await.unwrap();
    let mut c = tx.get_credential(active.id).await.unwrap().unwrap();
    c.updated_at += Duration::seconds(1);
    tx.update_credential(&c).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(epoch(db).await, e1);

    let mut last = e1;
    for (id, action) in [
        (pending.id, A::Activate),
        (active.id, A::Hold),
        (active.id, A::Release),
        (active.id, A::Revoke(RevocationReason::KeyCompromise)),
        (pending.id, A::Supersede),
    ] {
        act(db, id, action).await;
        let now = epoch(db).await;
        assert!(now > last, "{action:?} must move the epoch ({last} → {now})");
        last = now;
    }

    // The CRL's entries: exactly the listed states, streamed.
    let mut tx = db.read().await.unwrap();
    let mut listed = Vec::new();
    let n = tx
        .for_each_listed(|r| {
            listed.push((r.serial_hex, r.state));
            Ok(())
        })
        .await
        .unwrap();
    listed.sort();
    assert_eq!(n, 2);
    assert_eq!(
        listed,
        vec![("0a01".to_owned(), CredentialState::Superseded), ("0a02".to_owned(), CredentialState::Revoked)]
    );
    // An error from the callback stops the stream and is returned as is.
    let err = tx.for_each_listed(|_| Err(StoreError::Conflict("stop".into()))).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict("stop".into()));
    // Batch lookup: known serials only, one query.
    let mut found = tx
        .revocation_records(&["0a02".to_owned(), "0a01".to_owned(), "ffff".to_owned()])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.serial_hex)
        .collect::<Vec<_>>();
    found.sort();
    assert_eq!(found, vec!["0a01", "0a02"]);
    // Taking a cRLNumber is a write: a read unit of work refuses it.
    assert!(matches!(tx.next_crl_number("issuing", 0).await, Err(StoreError::ReadOnly(_))));
});

/// Concurrent issuances on PostgreSQL (issue 12: at 16 connections a fifth of them ended 503).
/// Each unit of work does what recording a CSR certificate does — reads its device, inserts a
/// pending certificate (whose trigger bumps the revocation epoch) and appends an audit event —
/// and every one of them has written before any commits, the interleaving in which SERIALIZABLE
/// finds a conflict if there is one to find. The tables are analysed first, as autovacuum does on
/// a live database: with statistics, the planner used to read the 64-row epoch table with a
/// sequential scan, whose predicate lock covers the whole table, and all but the first commit
/// failed (or two units drew the same shard and one waited for the other's row). Now each
/// session bumps its own shard through the primary key, and all commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_pending_certificates_for_distinct_devices_all_commit() {
    // Fewer than the pool's 16 connections: every unit of work stays open until the end.
    const N: usize = 12;
    let t = postgres().await;
    // A unit of work that waits for another's row lock would wait for ever here (the others
    // commit only after all have written): with a lock timeout it fails instead. Without such a
    // wait the timeout plays no part; before migration 0016 two units drawing the same shard did.
    let db = &Db::connect(&format!("{}?options=-c%20lock_timeout%3D60s", t.url)).await.unwrap();
    let owner = someone(db, "many").await;
    let devices: Vec<Device> = (0..N).map(|i| card(Some(owner.id), Some(&format!("M{i}")))).collect();
    let mut setup = db.begin().await.unwrap();
    for d in &devices {
        setup.insert_device(d).await.unwrap();
    }
    setup.commit().await.unwrap();
    raw(db, "ANALYZE").await;
    let before = epoch(db).await;

    let mut units = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let mut tx = db.begin().await.unwrap();
        assert!(tx.get_device(d.id).await.unwrap().is_some());
        let c = certificate(d.id, &format!("0c{i:02x}"));
        assert_eq!(c.state, CredentialState::Pending);
        tx.insert_credential(&c).await.unwrap();
        tx.append_audit(event(u32::try_from(i).unwrap())).await.unwrap();
        units.push(tx);
    }
    let mut outcomes = Vec::new();
    for tx in units {
        outcomes.push(tx.commit().await);
    }
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(count(db, "credentials").await, N as i64);
    assert_eq!(epoch(db).await, before + N as u64, "each pending certificate moved the epoch once");
}

on_both!(crl_numbers_grow_strictly_per_scope_and_respect_the_floor, |db| {
    let take = |scope: &'static str, floor: u64| async move {
        let mut tx = db.begin().await.unwrap();
        let n = tx.next_crl_number(scope, floor).await.unwrap();
        tx.commit().await.unwrap();
        n
    };
    assert_eq!(take("issuing", 1000).await, 1000);
    assert_eq!(take("issuing", 0).await, 1001);
    assert_eq!(take("issuing", 5).await, 1002);
    // A floor above the last number (the old wall-clock numbering) wins.
    assert_eq!(take("issuing", 5000).await, 5000);
    assert_eq!(take("issuing/3", 0).await, 1, "scopes count apart");
    // A number taken in a unit of work that rolls back is not used up, nor seen by anyone.
    let mut tx = db.begin().await.unwrap();
    assert_eq!(tx.next_crl_number("issuing", 0).await.unwrap(), 5001);
    drop(tx);
    assert_eq!(take("issuing", 0).await, 5001);
    // Concurrent takers never get the same number (PostgreSQL retries the loser).
    let mut handles = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            lanyard_core::repo::retry(&db, || async {
                let mut tx = db.begin().await?;
                let n = tx.next_crl_number("issuing", 0).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(n)
            })
            .await
            .unwrap()
        }));
    }
    let mut numbers = BTreeSet::new();
    for h in handles {
        assert!(numbers.insert(h.await.unwrap()));
    }
    assert_eq!(numbers.len(), 8);
    assert!(numbers.iter().all(|n| *n > 5001));
});

on_both!(the_bulk_seeder_writes_distinct_certificates_and_moves_the_epoch, |db| {
    use lanyard_store::seed::{SeedSpec, seed_certificates, seeded_serial};
    let before = epoch(db).await;
    let spec = SeedSpec {
        certificates: 1234,
        revoke_every: 10,
        certificate_der: vec![0x30, 0x00],
        at: T0,
        batch: 7,
    };
    assert_eq!(seed_certificates(db, &spec).await.unwrap(), 1234);
    assert_eq!(count(db, "credentials").await, 1234);
    assert_eq!(count(db, "devices").await, 2);
    assert!(epoch(db).await > before, "revoked rows are a change of status");
    let mut tx = db.read().await.unwrap();
    let mut listed = BTreeSet::new();
    tx.for_each_listed(|r| {
        assert_eq!(r.state, CredentialState::Revoked);
        listed.insert(r.serial_hex);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(listed.len(), 124);
    assert!(listed.contains(&seeded_serial(7, 0)) && listed.contains(&seeded_serial(7, 1230)));
    let found = tx.revocation_records(&[seeded_serial(7, 1), seeded_serial(7, 1233)]).await.unwrap();
    assert!(found.iter().all(|r| r.state == CredentialState::Active) && found.len() == 2);
    let serials: BTreeSet<String> = (0..100_000).map(|i| seeded_serial(7, i)).collect();
    assert_eq!(serials.len(), 100_000);
});

on_both!(a_bulk_revocation_in_one_statement_moves_the_epoch_and_lists_every_row, |db| {
    // An incident revokes thousands at once. On PostgreSQL the epoch moves once per transaction
    // (migration 0017: bumping once per row made one statement quadratic in its rows); on SQLite
    // once per row. Either way it moves, and every revoked row is listed.
    use lanyard_store::seed::{SeedSpec, seed_certificates};
    let spec =
        SeedSpec { certificates: 5000, revoke_every: 0, certificate_der: vec![0x30, 0x00], at: T0, batch: 9 };
    assert_eq!(seed_certificates(db, &spec).await.unwrap(), 5000);
    let before = epoch(db).await;
    raw(db, "UPDATE credentials SET state = 'revoked', revocation_reason = 'key_compromise' WHERE state = 'active'")
        .await;
    let after = epoch(db).await;
    match db {
        Db::Postgres(_) => assert_eq!(after, before + 1, "one bump for the whole transaction"),
        Db::Sqlite(_) => assert_eq!(after, before + 5000, "one bump per row"),
    }
    let mut tx = db.read().await.unwrap();
    let listed = tx.for_each_listed(|_| Ok(())).await.unwrap();
    assert_eq!(listed, 5000);
    drop(tx);
    // The flag is per transaction: the next one that changes a row moves the epoch again.
    raw(db, "UPDATE credentials SET state = 'on_hold' WHERE serial_hex = (SELECT MIN(serial_hex) FROM credentials)")
        .await;
    assert!(epoch(db).await > after, "a later transaction's change moves the epoch again");
});

on_both!(the_epoch_read_outside_units_of_work_sees_every_later_commit, |db| {
    // `Db::revocation_epoch` reads on a connection of its own, kept between reads: it must never
    // answer from an old snapshot.
    let before = db.revocation_epoch().await.unwrap();
    for bump in 1..=3 {
        // As another process sharing the database would commit it.
        raw(db, "UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 0").await;
        assert_eq!(db.revocation_epoch().await.unwrap(), before + bump);
    }
    if let Db::Postgres(p) = db {
        // Its connection cut (a restarted database, a killed backend): a read may fail once,
        // and the next opens a new connection.
        let cut: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(lanyard_store::PG_EPOCH_APPLICATION)
        .fetch_one(p)
        .await
        .unwrap();
        assert_eq!(cut, 1, "one epoch connection per pool");
        let epoch = match db.revocation_epoch().await {
            Ok(epoch) => epoch,
            Err(_) => db.revocation_epoch().await.unwrap(),
        };
        assert_eq!(epoch, before + 3);
    }
});
