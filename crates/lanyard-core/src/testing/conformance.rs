//! A behavioural test suite for [`Repo`] implementations: what the [`crate::repo`] contract
//! promises, checked call by call. Run it against a fresh, empty database:
//!
//! ```ignore
//! #[tokio::test]
//! async fn sqlite_conforms() {
//!     let repo = SqliteRepo::open_in_memory().await.unwrap();
//!     lanyard_core::testing::conformance::run(&repo).await;
//! }
//! ```
//!
//! Failures panic with a message naming the method and the expectation. The suite never holds
//! two units of work at once, so stores that serialise writers (SQLite) do not deadlock on it.

use std::collections::BTreeSet;

use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::audit::{Actor, AuditEvent, ChainHead, NewAuditEvent, OperationId, verify_chain};
use crate::ids::{DeviceId, GroupId, InstanceId, JobId, UserId};
use crate::lifecycle::{CredentialState, DeviceState, RevocationReason};
use crate::model::{
    Agent, ApiToken, CertSlot, Credential, CredentialKind, Device, DeviceKind, DeviceLink, Email,
    EnrollmentCode, EnrollmentPurpose, ExternalSponsor, Group, Job, JobKind, JobLease, JobState, LinkKind,
    PairingCode, Policy, Role, Session, StepOutcome, User, Username,
};
use crate::password::UserPassword;
use crate::repo::*;
use crate::secrets::{SealedCardSecrets, TokenHash};

const T0: OffsetDateTime = datetime!(2025-02-03 04:05:06 UTC);

fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got {e:?}"),
    }
}

fn conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

fn not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::NotFound) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

async fn read<R: Repo>(repo: &R) -> R::Tx {
    ok(repo.read().await, "read")
}

async fn begin<R: Repo>(repo: &R) -> R::Tx {
    ok(repo.begin().await, "begin")
}

async fn commit<T: Tx>(tx: T) {
    ok(tx.commit().await, "commit");
}

fn name(s: &str) -> Username {
    match Username::parse(s) {
        Ok(u) => u,
        Err(e) => panic!("bad test username {s}: {e}"),
    }
}

fn user(username: &str, group: GroupId) -> User {
    User {
        id: UserId::new(),
        username: name(username),
        display_name: format!("{username} Example"),
        email: None,
        group,
        roles: BTreeSet::from([Role::User]),
        disabled: false,
        created_at: T0,
    }
}

/// Inserts a group and a user for a sub-suite that needs an owner; `tag` keeps names unique.
async fn owner<R: Repo>(repo: &R, tag: &str) -> (Group, User) {
    let group = Group { id: GroupId::new(), name: format!("group-{tag}"), policy: Policy::default() };
    let u = user(&format!("owner-{tag}"), group.id);
    let mut tx = begin(repo).await;
    ok(tx.insert_group(&group).await, "insert_group");
    ok(tx.insert_user(&u).await, "insert_user");
    commit(tx).await;
    (group, u)
}

/// Every check, in an order that needs an empty database only for the audit log.
pub async fn run<R: Repo>(repo: &R) {
    transactions(repo).await;
    users_and_groups(repo).await;
    devices(repo).await;
    credentials(repo).await;
    audit(repo).await;
    card_secrets(repo).await;
    enrollment_codes(repo).await;
    jobs(repo).await;
    api_tokens_and_sessions(repo).await;
    passwords(repo).await;
    installation(repo).await;
    agents_and_pairing(repo).await;
    passkeys(repo).await;
    throttle_and_cluster_notes(repo).await;
}

/// Throttle failures are counted per scope and key, newest first, and forgotten by window or on
/// clear; cluster notes are replaced by `put`, refused twice by `insert`, invisible once expired,
/// listed per topic and owner in creation order, and deleted once.
pub async fn throttle_and_cluster_notes<R: Repo>(repo: &R) {
    let (alice, bob) = (TokenHash::of("alice"), TokenHash::of("bob"));
    let mut tx = begin(repo).await;
    for minutes in [0, 1, 2] {
        let at = T0 + Duration::minutes(minutes);
        ok(tx.record_failure("login", &alice, at, at - Duration::minutes(15)).await, "record_failure");
    }
    ok(tx.record_failure("mobile_code", &alice, T0, T0 - Duration::minutes(15)).await, "record_failure");
    ok(tx.record_failure("login", &bob, T0, T0 - Duration::minutes(15)).await, "record_failure");
    commit(tx).await;

    let mut tx = read(repo).await;
    let times = ok(tx.recent_failures("login", &alice, T0, 10).await, "recent_failures");
    assert_eq!(
        times,
        [T0 + Duration::minutes(2), T0 + Duration::minutes(1), T0],
        "newest first, per scope and key"
    );
    let times =
        ok(tx.recent_failures("login", &alice, T0 + Duration::minutes(1), 1).await, "recent_failures");
    assert_eq!(times, [T0 + Duration::minutes(2)], "since and limit");
    drop(tx);

    let mut tx = begin(repo).await;
    // A failure at minute 16 drops alice's failures before minute 1 (of this scope only).
    let late = T0 + Duration::minutes(16);
    ok(tx.record_failure("login", &alice, late, T0 + Duration::minutes(1)).await, "record_failure");
    let times = ok(tx.recent_failures("login", &alice, T0 - Duration::days(1), 10).await, "recent_failures");
    assert_eq!(
        times,
        [late, T0 + Duration::minutes(2), T0 + Duration::minutes(1)],
        "the window's old failures dropped"
    );
    assert_eq!(ok(tx.clear_failures("login", &alice).await, "clear_failures"), 3);
    assert_eq!(
        ok(tx.prune_failures(T0 + Duration::seconds(1)).await, "prune_failures"),
        2,
        "bob's and mobile_code's"
    );
    assert!(
        ok(tx.recent_failures("login", &bob, T0 - Duration::days(1), 10).await, "recent_failures").is_empty()
    );
    commit(tx).await;

    let note = |owner: &str, key: &str, minutes: i64, value: &[u8]| ClusterNote {
        topic: "t".into(),
        owner: owner.into(),
        key: key.into(),
        value: value.to_vec(),
        created_at: T0 + Duration::minutes(minutes),
        expires_at: T0 + Duration::minutes(10 + minutes),
    };
    let mut tx = begin(repo).await;
    ok(tx.put_note(&note("o", "b", 1, b"first")).await, "put_note");
    ok(tx.put_note(&note("o", "b", 1, b"second")).await, "put_note replaces");
    ok(tx.insert_note(&note("o", "a", 2, b"x")).await, "insert_note");
    conflict(tx.insert_note(&note("o", "a", 2, b"y")).await, "insert_note twice");
    ok(tx.insert_note(&note("other", "a", 0, b"z")).await, "insert_note of another owner");
    commit(tx).await;

    let mut tx = read(repo).await;
    let got = ok(tx.get_note("t", "o", "b", T0).await, "get_note");
    assert_eq!(got, Some(note("o", "b", 1, b"second")));
    let listed = ok(tx.list_notes("t", "o", T0, 10).await, "list_notes");
    assert_eq!(listed, [note("o", "b", 1, b"second"), note("o", "a", 2, b"x")], "per owner, oldest first");
    // Expired at minute 11: invisible to get and list.
    assert_eq!(ok(tx.get_note("t", "o", "b", T0 + Duration::minutes(11)).await, "get_note"), None);
    let listed = ok(tx.list_notes("t", "o", T0 + Duration::minutes(11), 10).await, "list_notes");
    assert_eq!(listed, [note("o", "a", 2, b"x")]);
    assert_eq!(ok(tx.list_notes("t", "o", T0, 1).await, "list_notes").len(), 1, "limit");
    drop(tx);

    let mut tx = begin(repo).await;
    assert!(ok(tx.delete_note("t", "o", "a").await, "delete_note"));
    assert!(!ok(tx.delete_note("t", "o", "a").await, "delete_note"), "deleted once");
    assert_eq!(ok(tx.delete_expired_notes(T0 + Duration::minutes(12)).await, "delete_expired_notes"), 2);
    assert!(ok(tx.list_notes("t", "o", T0, 10).await, "list_notes").is_empty());
    commit(tx).await;
}

/// Commit makes writes visible; dropping a unit of work discards them.
pub async fn transactions<R: Repo>(repo: &R) {
    let group = Group { id: GroupId::new(), name: "tx-kept".into(), policy: Policy::default() };
    let dropped = Group { id: GroupId::new(), name: "tx-dropped".into(), policy: Policy::default() };
    let mut tx = begin(repo).await;
    ok(tx.insert_group(&group).await, "insert_group");
    assert_eq!(
        ok(tx.get_group(group.id).await, "get_group"),
        Some(group.clone()),
        "a unit of work sees its own writes"
    );
    commit(tx).await;
    let mut tx = begin(repo).await;
    ok(tx.insert_group(&dropped).await, "insert_group");
    drop(tx);
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_group(group.id).await, "get_group"), Some(group), "committed group is stored");
    assert_eq!(ok(tx.get_group(dropped.id).await, "get_group"), None, "a dropped unit of work rolls back");
}

pub async fn users_and_groups<R: Repo>(repo: &R) {
    let mut policy = Policy { max_devices: 5, ..Policy::default() };
    policy.accepted_card_models.push("Üñïçødé Card".into());
    let group = Group { id: GroupId::new(), name: "users-suite".into(), policy };
    let other = Group { id: GroupId::new(), name: "users-suite-other".into(), policy: Policy::default() };
    let mut alice = user("alice.suite", group.id);
    alice.email = Email::parse("alice@example.org").ok();
    alice.roles = BTreeSet::from([Role::User, Role::Operator]);
    let bob = user("bob.suite", group.id);
    let carl = user("carl.suite", other.id);

    let mut tx = begin(repo).await;
    ok(tx.insert_group(&group).await, "insert_group");
    ok(tx.insert_group(&other).await, "insert_group");
    conflict(
        tx.insert_group(&Group { id: GroupId::new(), ..group.clone() }).await,
        "insert_group with a taken name",
    );
    commit(tx).await;

    let mut tx = begin(repo).await;
    for u in [&alice, &bob, &carl] {
        ok(tx.insert_user(u).await, "insert_user");
    }
    commit(tx).await;

    let mut tx = begin(repo).await;
    conflict(tx.insert_user(&alice).await, "insert_user with an existing id");
    drop(tx);
    let mut tx = begin(repo).await;
    conflict(
        tx.insert_user(&User { id: UserId::new(), ..bob.clone() }).await,
        "insert_user with a taken username",
    );
    drop(tx);

    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_group(group.id).await, "get_group"),
        Some(group.clone()),
        "group round-trips with its policy"
    );
    let names: Vec<String> = ok(tx.list_groups().await, "list_groups")
        .into_iter()
        .map(|g| g.name)
        .filter(|n| n.starts_with("users-suite"))
        .collect();
    assert_eq!(names, ["users-suite", "users-suite-other"], "list_groups is ordered by name");
    assert_eq!(ok(tx.get_user(alice.id).await, "get_user"), Some(alice.clone()), "user round-trips");
    assert_eq!(ok(tx.get_user(UserId::new()).await, "get_user"), None, "unknown user is None");
    assert_eq!(ok(tx.get_user_by_username(&bob.username).await, "get_user_by_username"), Some(bob.clone()));

    let list = |q: UserQuery| q;
    let ids = |v: Vec<User>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
    let in_group = UserQuery { group: Some(group.id), limit: 10, ..Default::default() };
    assert_eq!(
        ids(ok(tx.list_users(&in_group).await, "list_users")),
        [alice.id, bob.id],
        "by group, ordered by username"
    );
    let q = list(UserQuery { text: Some("ALICE@EXAMPLE".into()), ..in_group.clone() });
    assert_eq!(
        ids(ok(tx.list_users(&q).await, "list_users")),
        [alice.id],
        "text matches e-mail case-insensitively"
    );
    let q = list(UserQuery { text: Some("Bob.Suite Ex".into()), ..in_group.clone() });
    assert_eq!(ids(ok(tx.list_users(&q).await, "list_users")), [bob.id], "text matches display name");
    let q = list(UserQuery { role: Some(Role::Operator), ..in_group.clone() });
    assert_eq!(ids(ok(tx.list_users(&q).await, "list_users")), [alice.id], "role filter");
    let q = list(UserQuery { after: Some(alice.username.clone()), ..in_group.clone() });
    assert_eq!(ids(ok(tx.list_users(&q).await, "list_users")), [bob.id], "keyset pagination");
    let q = list(UserQuery { limit: 1, ..in_group.clone() });
    assert_eq!(ids(ok(tx.list_users(&q).await, "list_users")), [alice.id], "limit");
    let q = list(UserQuery { limit: 0, ..in_group });
    assert!(ok(tx.list_users(&q).await, "list_users").is_empty(), "limit 0 returns nothing");
    drop(tx);

    let mut changed = alice.clone();
    changed.display_name = "Alice Changed".into();
    changed.roles = BTreeSet::from([Role::Auditor]);
    changed.disabled = true;
    changed.email = None;
    changed.group = other.id;
    let mut moved = group.clone();
    moved.policy.max_devices = 9;
    let mut tx = begin(repo).await;
    ok(tx.update_user(&changed).await, "update_user");
    ok(tx.update_group(&moved).await, "update_group");
    not_found(tx.update_user(&user("nobody.suite", group.id)).await, "update_user of a missing user");
    drop(tx);
    let mut tx = begin(repo).await;
    ok(tx.update_user(&changed).await, "update_user");
    ok(tx.update_group(&moved).await, "update_group");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_user(alice.id).await, "get_user"),
        Some(changed),
        "update_user replaces every field"
    );
    assert_eq!(
        ok(tx.get_group(group.id).await, "get_group"),
        Some(moved),
        "update_group replaces the policy"
    );
    conflict(
        tx.update_user(&User { username: carl.username.clone(), ..bob }).await,
        "update_user to a taken username",
    );
}

fn device(owner: &User, kind: DeviceKind, serial: Option<&str>) -> Device {
    Device {
        id: DeviceId::new(),
        owner: Some(owner.id),
        kind,
        model: "YubiKey 5".into(),
        serial: serial.map(str::to_owned),
        card_guid: None,
        card_expires_at: None,
        state: if kind == DeviceKind::Mobile { DeviceState::Enrolling } else { DeviceState::Available },
        suspended_from: None,
        revocation_reason: None,
        links: Vec::new(),
        created_at: T0,
        updated_at: T0,
    }
}

pub async fn devices<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "devices-a").await;
    let (_, bob) = owner(repo, "devices-b").await;
    let mut card = device(&alice, DeviceKind::SmartCard, Some("SN-1"));
    card.card_guid = Some([0xAB; 16]);
    card.card_expires_at = Some(T0 + Duration::days(5 * 365));
    card.state = DeviceState::Suspended;
    card.suspended_from = Some(DeviceState::Pending);
    card.updated_at = T0 + Duration::seconds(5);
    let mut phone = device(&alice, DeviceKind::Mobile, None);
    phone.links = vec![
        DeviceLink { kind: LinkKind::DerivedFrom, target: card.id },
        DeviceLink { kind: LinkKind::TemporaryFor, target: card.id },
    ];
    let key = device(&bob, DeviceKind::UsbKey, Some("SN-2"));
    let mut stock = device(&bob, DeviceKind::SmartCard, Some("SN-3"));
    stock.owner = None;

    let mut tx = begin(repo).await;
    for d in [&card, &phone, &key, &stock] {
        ok(tx.insert_device(d).await, "insert_device");
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(
        tx.insert_device(&Device { id: DeviceId::new(), ..key.clone() }).await,
        "insert_device with a taken (model, serial)",
    );
    drop(tx);
    let mut tx = begin(repo).await;
    conflict(tx.insert_device(&card).await, "insert_device with an existing id");
    drop(tx);

    let mut tx = begin(repo).await;
    for d in [&card, &phone, &stock] {
        assert_eq!(ok(tx.get_device(d.id).await, "get_device").as_ref(), Some(d), "device round-trips");
    }
    assert_eq!(ok(tx.get_device(DeviceId::new()).await, "get_device"), None);
    assert_eq!(
        ok(tx.get_device_by_serial("YubiKey 5", "SN-2").await, "get_device_by_serial"),
        Some(key.clone())
    );
    assert_eq!(
        ok(tx.get_device_by_serial("Other", "SN-2").await, "get_device_by_serial"),
        None,
        "serial is per model"
    );

    let mut sorted = vec![card.id, phone.id];
    sorted.sort();
    let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    let mine = DeviceQuery { owner: Some(alice.id), limit: 10, ..Default::default() };
    assert_eq!(ids(ok(tx.list_devices(&mine).await, "list_devices")), sorted, "by owner, ordered by id");
    let q = DeviceQuery { kind: Some(DeviceKind::Mobile), ..mine.clone() };
    assert_eq!(ids(ok(tx.list_devices(&q).await, "list_devices")), [phone.id], "kind filter");
    let q = DeviceQuery { states: vec![DeviceState::Suspended, DeviceState::Active], ..mine.clone() };
    assert_eq!(ids(ok(tx.list_devices(&q).await, "list_devices")), [card.id], "states filter");
    let q = DeviceQuery { linked_to: Some(card.id), limit: 10, ..Default::default() };
    assert_eq!(
        ids(ok(tx.list_devices(&q).await, "list_devices")),
        [phone.id],
        "linked_to filter, each device once"
    );
    let q = DeviceQuery { after: Some(sorted[0]), ..mine.clone() };
    assert_eq!(ids(ok(tx.list_devices(&q).await, "list_devices")), [sorted[1]], "keyset pagination");
    let q = DeviceQuery { limit: 1, ..mine };
    assert_eq!(ok(tx.list_devices(&q).await, "list_devices").len(), 1, "limit");
    let q = DeviceQuery { serials: vec!["sn-2".into()], limit: 10, ..Default::default() };
    assert_eq!(ids(ok(tx.list_devices(&q).await, "list_devices")), [key.id], "serial, ignoring case");
    let q = DeviceQuery {
        serials: vec!["sn-9".into(), "SN-3".into(), "sn-1".into()],
        limit: 10,
        ..Default::default()
    };
    let mut any_of = vec![card.id, stock.id];
    any_of.sort();
    assert_eq!(ids(ok(tx.list_devices(&q).await, "list_devices")), any_of, "any of several serials");
    let q = DeviceQuery { serials: vec!["sn-".into(), "sn-%".into()], limit: 10, ..Default::default() };
    assert!(ok(tx.list_devices(&q).await, "list_devices").is_empty(), "serials match whole, not as patterns");
    let q =
        DeviceQuery { serials: vec!["sn-1".into()], owner: Some(bob.id), limit: 10, ..Default::default() };
    assert!(ok(tx.list_devices(&q).await, "list_devices").is_empty(), "serial and owner both apply");
    drop(tx);

    let mut updated = card.clone();
    updated.state = DeviceState::Revoked;
    updated.suspended_from = None;
    updated.revocation_reason = Some(RevocationReason::Stolen);
    updated.links = vec![DeviceLink { kind: LinkKind::Replaces, target: key.id }];
    updated.owner = None;
    updated.updated_at = T0 + Duration::hours(1);
    let mut tx = begin(repo).await;
    ok(tx.update_device(&updated).await, "update_device");
    not_found(
        tx.update_device(&device(&alice, DeviceKind::UsbKey, None)).await,
        "update_device of a missing device",
    );
    drop(tx);
    let mut tx = begin(repo).await;
    ok(tx.update_device(&updated).await, "update_device");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_device(card.id).await, "get_device"),
        Some(updated),
        "update_device replaces every field"
    );
}

fn certificate(device: DeviceId, serial: &str, not_after: OffsetDateTime) -> Credential {
    Credential::new(
        device,
        CredentialKind::Certificate {
            slot: CertSlot::PivAuthentication,
            profile: "piv-auth".into(),
            serial_hex: serial.into(),
            not_before: T0,
            not_after,
            certificate_der: vec![0x30, 0x82, 0x01, 0x00],
            attestation_der: Some(vec![0x30, 0x03, 0x02, 0x01, 0x05]),
        },
        T0,
    )
}

pub async fn credentials<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "credentials").await;
    let card = device(&alice, DeviceKind::SmartCard, None);
    let other = device(&alice, DeviceKind::UsbKey, None);
    let soon = certificate(card.id, "0a01", T0 + Duration::days(10));
    let mut later = certificate(card.id, "0a02", T0 + Duration::days(400));
    later.state = CredentialState::OnHold;
    later.held_from = Some(CredentialState::Active);
    later.revoked_at = Some(T0 + Duration::days(2));
    let elsewhere = certificate(other.id, "0a03", T0 + Duration::days(10));

    let mut tx = begin(repo).await;
    ok(tx.insert_device(&card).await, "insert_device");
    ok(tx.insert_device(&other).await, "insert_device");
    for c in [&soon, &later, &elsewhere] {
        ok(tx.insert_credential(c).await, "insert_credential");
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(tx.insert_credential(&soon).await, "insert_credential with an existing id");
    drop(tx);

    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_credential(later.id).await, "get_credential"),
        Some(later.clone()),
        "credential round-trips"
    );
    assert_eq!(
        ok(tx.get_credential_by_serial("0a03").await, "get_credential_by_serial"),
        Some(elsewhere.clone())
    );
    assert_eq!(ok(tx.get_credential_by_serial("ffff").await, "get_credential_by_serial"), None);
    let ids = |v: Vec<Credential>| v.into_iter().map(|c| c.id).collect::<BTreeSet<_>>();
    let on_card = CredentialQuery { device: Some(card.id), limit: 10, ..Default::default() };
    assert_eq!(
        ids(ok(tx.list_credentials(&on_card).await, "list_credentials")),
        BTreeSet::from([soon.id, later.id])
    );
    let q = CredentialQuery { states: vec![CredentialState::OnHold], ..on_card.clone() };
    assert_eq!(
        ids(ok(tx.list_credentials(&q).await, "list_credentials")),
        BTreeSet::from([later.id]),
        "states filter"
    );
    let q = CredentialQuery { not_after_before: Some(T0 + Duration::days(30)), ..on_card.clone() };
    assert_eq!(
        ids(ok(tx.list_credentials(&q).await, "list_credentials")),
        BTreeSet::from([soon.id]),
        "expiry filter"
    );
    let first = soon.id.min(later.id);
    let q = CredentialQuery { after: Some(first), ..on_card };
    assert_eq!(
        ids(ok(tx.list_credentials(&q).await, "list_credentials")),
        BTreeSet::from([soon.id.max(later.id)])
    );
    drop(tx);

    let mut revoked = later.clone();
    revoked.state = CredentialState::Revoked;
    revoked.held_from = None;
    revoked.revocation_reason = Some(RevocationReason::KeyCompromise);
    revoked.updated_at = T0 + Duration::days(3);
    let mut tx = begin(repo).await;
    ok(tx.update_credential(&revoked).await, "update_credential");
    not_found(
        tx.update_credential(&certificate(card.id, "0a09", T0)).await,
        "update_credential of a missing one",
    );
    drop(tx);
    let mut tx = begin(repo).await;
    ok(tx.update_credential(&revoked).await, "update_credential");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_credential(later.id).await, "get_credential"), Some(revoked));
}

/// Needs an empty audit log.
pub async fn audit<R: Repo>(repo: &R) {
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.audit_head().await, "audit_head"), ChainHead::GENESIS, "empty log has the genesis head");
    drop(tx);

    let op = OperationId::random();
    let (_, someone) = owner(repo, "audit").await;
    let event = |i: i64, target: &str| {
        NewAuditEvent::new(
            // Sub-microsecond digits are dropped by sealing; the rest must survive storage.
            T0 + Duration::nanoseconds(i * 1_234_567_891),
            Actor::User { id: someone.id, username: someone.username.clone() },
            "device.suspend",
            &op,
        )
        .target(target)
        .before(json!({"zeta": [1, 2.5, null], "alpha": {"b": "\u{1}\"é", "a": true}}))
        .after(json!({"state": "suspended", "n": -3}))
    };
    let mut tx = begin(repo).await;
    ok(tx.append_audit(event(1, "device:a")).await, "append_audit");
    ok(tx.append_audit(event(2, "device:b")).await, "append_audit");
    commit(tx).await;

    // An append that is rolled back leaves no trace.
    let mut tx = begin(repo).await;
    ok(tx.append_audit(event(9, "device:gone")).await, "append_audit");
    drop(tx);

    let mut tx = begin(repo).await;
    ok(tx.append_audit(NewAuditEvent::new(T0, Actor::System, "system.tick", &op)).await, "append_audit");
    commit(tx).await;
    // The sealer chains what committed (a store may have done so at commit already).
    ok(repo.seal_audit().await, "seal_audit");

    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.unsealed_audit().await, "unsealed_audit"), 0, "everything committed is sealed");
    let all = ok(tx.list_audit(&AuditQuery { limit: 100, ..Default::default() }).await, "list_audit");
    assert_eq!(all.len(), 3, "the rolled-back append is not there");
    let (first, second, third) = (all[0].clone(), all[1].clone(), all[2].clone());
    assert_eq!((first.seq, second.seq, third.seq), (1, 2, 3), "seq counts from 1, in append order");
    assert_eq!(second.prev_hash, first.hash, "each event links to the one before");
    assert_eq!(ok(tx.audit_head().await, "audit_head"), third.head());
    assert_eq!(
        (first.target.as_deref(), second.target.as_deref(), third.action.as_str()),
        (Some("device:a"), Some("device:b"), "system.tick")
    );
    assert_eq!(first.before, event(1, "device:a").before, "before/after survive storage");
    assert_eq!(first.at, event(1, "device:a").unsealed().at, "at survives to the microsecond");
    assert!(all.iter().all(|e| e.sealed));
    assert_eq!(verify_chain(&all), Ok(3), "the stored chain verifies");
    let q = AuditQuery { after_seq: 1, limit: 1, ..Default::default() };
    assert_eq!(
        ok(tx.list_audit(&q).await, "list_audit"),
        std::slice::from_ref(&second),
        "after_seq and limit"
    );
    let q = AuditQuery { target: Some("device:a".into()), limit: 100, ..Default::default() };
    assert_eq!(ok(tx.list_audit(&q).await, "list_audit"), std::slice::from_ref(&first), "target filter");
    let seqs = |v: Vec<AuditEvent>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    let q = AuditQuery { action: Some("device.suspend".into()), limit: 100, ..Default::default() };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [1, 2], "exact action");
    let q = AuditQuery { action: Some("device".into()), limit: 100, ..Default::default() };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [1, 2], "an action family");
    for none in ["devic", "device.susp", "d_vice", "%", "system.tick.x"] {
        let q = AuditQuery { action: Some(none.into()), limit: 100, ..Default::default() };
        assert!(ok(tx.list_audit(&q).await, "list_audit").is_empty(), "action {none:?} matches nothing");
    }
    let q = AuditQuery { actor: Some(someone.username.as_str().into()), limit: 100, ..Default::default() };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [1, 2], "actor by username");
    let q = AuditQuery { actor: Some(someone.id.to_string()), limit: 100, ..Default::default() };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [1, 2], "actor by id");
    let q = AuditQuery { actor: Some("nobody".into()), limit: 100, ..Default::default() };
    assert!(ok(tx.list_audit(&q).await, "list_audit").is_empty(), "an unknown actor");
    let q = AuditQuery { since: Some(first.at), until: Some(second.at), limit: 100, ..Default::default() };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [1], "since is inclusive, until exclusive");
    let q = AuditQuery { since: Some(T0 + Duration::seconds(2)), limit: 100, ..Default::default() };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [2], "since");
    let q = AuditQuery { until: Some(first.at), limit: 100, ..Default::default() };
    assert_eq!(
        seqs(ok(tx.list_audit(&q).await, "list_audit")),
        [3],
        "until (the third event is the earliest)"
    );
    let q = AuditQuery {
        action: Some("device".into()),
        target: Some("device:b".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(seqs(ok(tx.list_audit(&q).await, "list_audit")), [2], "filters combine");
    let stored: Vec<AuditEvent> = all;
    assert!(stored.iter().all(|e| e.compute_hash() == e.hash));
}

pub async fn card_secrets<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "secrets").await;
    let card = device(&alice, DeviceKind::SmartCard, None);
    let blob = SealedCardSecrets::from_bytes((0..=255).collect());
    let newer = SealedCardSecrets::from_bytes(vec![1, 0, 0, 1]);
    let mut tx = begin(repo).await;
    ok(tx.insert_device(&card).await, "insert_device");
    assert_eq!(ok(tx.get_card_secrets(card.id).await, "get_card_secrets"), None);
    ok(tx.put_card_secrets(card.id, &blob).await, "put_card_secrets");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_card_secrets(card.id).await, "get_card_secrets"),
        Some(blob),
        "bytes round-trip exactly"
    );
    ok(tx.put_card_secrets(card.id, &newer).await, "put_card_secrets replaces");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_card_secrets(card.id).await, "get_card_secrets"), Some(newer));
    ok(tx.delete_card_secrets(card.id).await, "delete_card_secrets");
    not_found(tx.delete_card_secrets(card.id).await, "delete_card_secrets twice");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_card_secrets(card.id).await, "get_card_secrets"), None);
}

pub async fn enrollment_codes<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "codes").await;
    let issue = |purpose, ttl| match EnrollmentCode::issue(alice.id, purpose, ttl, T0) {
        Ok((code, _)) => code,
        Err(e) => panic!("EnrollmentCode::issue: {e}"),
    };
    let short = issue(EnrollmentPurpose::MobileProfile, Duration::minutes(5));
    let mut long = issue(EnrollmentPurpose::derived_from_card(DeviceId::new()), Duration::hours(5));
    long.session = Some(TokenHash::of("the portal session"));
    let agency = match ExternalSponsor::new("CN=Agency PIV CA,O=Agency,C=US", "7f03a1") {
        Ok(s) => s,
        Err(e) => panic!("ExternalSponsor::new: {e}"),
    };
    let external = issue(EnrollmentPurpose::derived_from_external(agency), Duration::hours(5));
    let phone = match Device::new(DeviceKind::Mobile, "Pixel 9", T0) {
        Ok(d) => Device { owner: Some(alice.id), ..d },
        Err(e) => panic!("Device::new: {e}"),
    };
    let mut tx = begin(repo).await;
    ok(tx.insert_device(&phone).await, "insert_device");
    ok(tx.insert_enrollment_code(&short).await, "insert_enrollment_code");
    ok(tx.insert_enrollment_code(&long).await, "insert_enrollment_code");
    ok(tx.insert_enrollment_code(&external).await, "insert_enrollment_code");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_enrollment_code_by_hash(&long.code_hash).await, "get_enrollment_code_by_hash"),
        Some(long.clone())
    );
    assert_eq!(
        ok(tx.get_enrollment_code_by_hash(&external.code_hash).await, "get_enrollment_code_by_hash"),
        Some(external.clone()),
        "a card of an imported root is kept by issuer and serial"
    );
    assert_eq!(
        ok(tx.get_enrollment_code_by_hash(&TokenHash::of("nope")).await, "get_enrollment_code_by_hash"),
        None
    );
    let mut used = long.clone();
    used.used_at = Some(T0 + Duration::minutes(1));
    used.device = Some(phone.id);
    used.completed_at = Some(T0 + Duration::minutes(2));
    ok(tx.update_enrollment_code(&used).await, "update_enrollment_code");
    let removed = ok(
        tx.delete_expired_enrollment_codes(T0 + Duration::hours(1)).await,
        "delete_expired_enrollment_codes",
    );
    assert_eq!(removed, 1, "only the expired code is removed");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_enrollment_code_by_hash(&long.code_hash).await, "get_enrollment_code_by_hash"),
        Some(used)
    );
    assert_eq!(
        ok(tx.get_enrollment_code_by_hash(&short.code_hash).await, "get_enrollment_code_by_hash"),
        None
    );
}

pub async fn jobs<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "jobs").await;
    let card = device(&alice, DeviceKind::SmartCard, None);
    let mut first = Job::new(JobKind::Issuance, card.id, Some(alice.id), T0);
    let mut second = Job::new(JobKind::Issuance, card.id, None, T0 + Duration::seconds(1));
    let mut tx = begin(repo).await;
    ok(tx.insert_device(&card).await, "insert_device");
    ok(tx.insert_job(&first).await, "insert_job");
    ok(tx.insert_job(&second).await, "insert_job");
    commit(tx).await;

    let step = |job: &mut Job, name: &str, outcome| {
        if let Err(e) = job.record(name, outcome, Some("détail".into()), T0 + Duration::seconds(2)) {
            panic!("Job::record: {e}");
        }
    };
    let at = T0 + Duration::seconds(2);
    let transition = |job: &mut Job, to| {
        if let Err(e) = job.transition(to, at) {
            panic!("Job::transition: {e}");
        }
    };
    transition(&mut first, JobState::Running);
    step(&mut first, "rotate_management_key", StepOutcome::Done);
    step(&mut first, "generate_9a", StepOutcome::Failed);
    if let Err(e) = first.issue_ticket(Duration::minutes(5), at) {
        panic!("Job::issue_ticket: {e}");
    }
    first.checkpoint = Some(serde_json::json!({"completed": ["detect", "authenticate"], "round_trips": 3}));
    transition(&mut second, JobState::Running);
    transition(&mut second, JobState::Succeeded);
    let mut tx = begin(repo).await;
    ok(tx.update_job(&first).await, "update_job");
    ok(tx.update_job(&second).await, "update_job");
    not_found(
        tx.update_job(&Job::new(JobKind::Issuance, card.id, None, T0)).await,
        "update_job of a missing job",
    );
    drop(tx);
    let mut tx = begin(repo).await;
    ok(tx.update_job(&first).await, "update_job");
    ok(tx.update_job(&second).await, "update_job");
    commit(tx).await;
    first.version += 1;
    second.version += 1;

    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_job(first.id).await, "get_job"),
        Some(first.clone()),
        "job round-trips with its step log and its new version"
    );
    let ids = |v: Vec<Job>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(ok(tx.list_jobs_for_device(card.id).await, "list_jobs_for_device")),
        [first.id, second.id]
    );
    let unfinished = ids(ok(tx.list_unfinished_jobs().await, "list_unfinished_jobs"));
    assert!(unfinished.contains(&first.id) && !unfinished.contains(&second.id), "unfinished jobs only");
    drop(tx);

    // A write based on an older version is refused and changes nothing.
    let mut old = first.clone();
    old.version -= 1;
    old.checkpoint = None;
    let mut tx = begin(repo).await;
    match tx.update_job(&old).await {
        Err(StoreError::Stale(_)) => {}
        other => panic!("update_job over an older version: expected Stale, got {other:?}"),
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_job(first.id).await, "get_job"),
        Some(first.clone()),
        "a stale write changes nothing"
    );
    drop(tx);

    job_tickets_and_leases(repo, card.id, alice.id).await;
}

/// Redemption is one conditional update; leases are renewed only by their owner.
async fn job_tickets_and_leases<R: Repo>(repo: &R, card: DeviceId, alice: UserId) {
    let mut job = Job::new(JobKind::Unlock, card, Some(alice), T0);
    let ticket = match job.issue_ticket(Duration::minutes(10), T0) {
        Ok(t) => TokenHash::of(secrecy::ExposeSecret::expose_secret(&t)),
        Err(e) => panic!("Job::issue_ticket: {e}"),
    };
    let mut tx = begin(repo).await;
    ok(tx.insert_job(&job).await, "insert_job");
    commit(tx).await;
    let (us, them) = (InstanceId::new(), InstanceId::new());
    let at = T0 + Duration::minutes(1);
    let lease = JobLease::new(us, at);

    let mut tx = begin(repo).await;
    for (what, id, hash, when) in [
        ("a wrong ticket", job.id, TokenHash::of("wrong"), at),
        ("an expired ticket", job.id, ticket, T0 + Duration::minutes(10)),
        ("another job's id", JobId::new(), ticket, at),
    ] {
        assert_eq!(
            ok(tx.redeem_job_ticket(id, &hash, &lease, when).await, what),
            None,
            "{what} redeems nothing"
        );
    }
    let redeemed = ok(tx.redeem_job_ticket(job.id, &ticket, &lease, at).await, "redeem_job_ticket");
    let Some(redeemed) = redeemed else { panic!("redeem_job_ticket: the good ticket was refused") };
    assert_eq!(
        ok(tx.redeem_job_ticket(job.id, &ticket, &lease, at).await, "redeem twice"),
        None,
        "a used ticket"
    );
    commit(tx).await;
    if let Err(e) = job.check_ticket(&ticket, at).and_then(|()| job.start_under(lease, at)) {
        panic!("the reference rule refused what the store accepted: {e}");
    }
    job.version += 1;
    assert_eq!(redeemed, job, "redemption: Running, ticket used up, the lease taken, version moved on");
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_job(job.id).await, "get_job"), Some(job.clone()));

    let later = at + Duration::minutes(5);
    assert!(!ok(tx.renew_job_lease(job.id, them, later).await, "renew by a stranger"), "not their lease");
    assert!(ok(tx.renew_job_lease(job.id, us, later).await, "renew_job_lease"), "our lease");
    commit(tx).await;
    let mut tx = begin(repo).await;
    let stored = ok(tx.get_job(job.id).await, "get_job");
    assert_eq!(stored.as_ref().and_then(|j| j.lease), Some(JobLease { owner: us, expires_at: later }));
    assert_eq!(stored.map(|j| j.version), Some(job.version), "a renewal leaves the version alone");
    if let Err(e) = job.transition(JobState::Failed, later) {
        panic!("Job::transition: {e}");
    }
    ok(tx.update_job(&job).await, "update_job");
    assert!(!ok(tx.renew_job_lease(job.id, us, later).await, "renew a failed job"), "no lease after Running");
    commit(tx).await;
}

pub async fn api_tokens_and_sessions<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "tokens").await;
    let (_, bob) = owner(repo, "tokens-b").await;
    let token = |name: &str, at| match ApiToken::issue(alice.id, name, Some(T0 + Duration::days(30)), at) {
        Ok((t, _)) => t,
        Err(e) => panic!("ApiToken::issue: {e}"),
    };
    let older = token("ci", T0);
    let newer = token("backup", T0 + Duration::seconds(1));
    let mut tx = begin(repo).await;
    ok(tx.insert_api_token(&newer).await, "insert_api_token");
    ok(tx.insert_api_token(&older).await, "insert_api_token");
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(
        tx.insert_api_token(&ApiToken { id: crate::ids::ApiTokenId::new(), ..older.clone() }).await,
        "insert_api_token with a taken hash",
    );
    drop(tx);
    let mut revoked = older.clone();
    revoked.revoked_at = Some(T0 + Duration::days(1));
    revoked.last_used_at = Some(T0 + Duration::hours(1));
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_api_token(older.id).await, "get_api_token"), Some(older.clone()));
    assert_eq!(
        ok(tx.get_api_token_by_hash(&newer.token_hash).await, "get_api_token_by_hash"),
        Some(newer.clone())
    );
    let listed: Vec<_> =
        ok(tx.list_api_tokens(alice.id).await, "list_api_tokens").into_iter().map(|t| t.id).collect();
    assert_eq!(listed, [older.id, newer.id], "ordered by creation time");
    ok(tx.update_api_token(&revoked).await, "update_api_token");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_api_token(older.id).await, "get_api_token"), Some(revoked));
    drop(tx);

    let session = |user: UserId, ttl| match Session::start(user, ttl, T0) {
        Ok((s, _)) => s,
        Err(e) => panic!("Session::start: {e}"),
    };
    let a1 = session(alice.id, Duration::hours(8));
    let a2 = session(alice.id, Duration::minutes(1));
    let b1 = session(bob.id, Duration::hours(8));
    let b2 = session(bob.id, Duration::hours(8));
    let mut tx = begin(repo).await;
    for s in [&a1, &a2, &b1, &b2] {
        ok(tx.insert_session(s).await, "insert_session");
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(tx.insert_session(&a1).await, "insert_session with a taken hash");
    drop(tx);
    let mut seen = a1.clone();
    seen.last_seen_at = T0 + Duration::minutes(30);
    seen.expires_at = T0 + Duration::hours(9);
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_session(&a1.token_hash).await, "get_session"), Some(a1.clone()));
    ok(tx.update_session(&seen).await, "update_session");
    assert_eq!(ok(tx.delete_expired_sessions(T0 + Duration::minutes(2)).await, "delete_expired_sessions"), 1);
    assert_eq!(ok(tx.delete_sessions_of(bob.id).await, "delete_sessions_of"), 2);
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_session(&a1.token_hash).await, "get_session"), Some(seen));
    assert_eq!(ok(tx.get_session(&a2.token_hash).await, "get_session"), None, "expired session removed");
    assert_eq!(ok(tx.get_session(&b1.token_hash).await, "get_session"), None, "bob's sessions removed");
    ok(tx.delete_session(&a1.token_hash).await, "delete_session");
    not_found(tx.delete_session(&a1.token_hash).await, "delete_session twice");
}

/// One password per user: put inserts or replaces, get reads it back exactly, a dropped unit of
/// work keeps nothing, and a password for a user that does not exist is refused.
pub async fn passwords<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "passwords").await;
    let (_, bob) = owner(repo, "passwords-b").await;
    // The store keeps the PHC string as text; it never hashes or parses it.
    let first = UserPassword {
        user: alice.id,
        phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA".into(),
        updated_at: T0 + Duration::nanoseconds(123_456_789),
    };
    let second = UserPassword {
        phc: "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXI$b3RoZXI".into(),
        updated_at: T0 + Duration::days(1),
        ..first.clone()
    };
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_password(alice.id).await, "get_password"), None, "no password yet");
    ok(tx.put_password(&first).await, "put_password");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_password(alice.id).await, "get_password"), Some(first.clone()));
    assert_eq!(ok(tx.get_password(bob.id).await, "get_password"), None, "bob has none");
    ok(tx.put_password(&second).await, "put_password replacing");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_password(alice.id).await, "get_password"), Some(second.clone()), "replaced");
    ok(tx.put_password(&UserPassword { user: bob.id, ..first.clone() }).await, "put_password");
    drop(tx);
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_password(bob.id).await, "get_password"), None, "dropped unit of work kept nothing");
    drop(tx);
    let mut tx = begin(repo).await;
    let orphan = UserPassword { user: UserId::new(), ..first };
    assert!(tx.put_password(&orphan).await.is_err(), "put_password for a missing user must fail");
}

/// The installation record: none at first, written once and read back exactly (time to the
/// nanosecond), a second one refused with `Conflict` leaving the first as it was, and a dropped
/// unit of work keeps nothing.
pub async fn installation<R: Repo>(repo: &R) {
    use crate::installation::{CertFingerprint, Installation};
    use crate::secrets::KekId;
    let first = Installation {
        root_fingerprint: CertFingerprint::from_bytes([0xA5; 32]),
        kek_id: KekId::from_bytes([0x3C; 16]),
        initialized_at: T0 + Duration::nanoseconds(987_654_321),
    };
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_installation().await, "get_installation"), None, "a fresh database has no record");
    ok(tx.insert_installation(&first).await, "insert_installation");
    drop(tx);
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_installation().await, "get_installation"),
        None,
        "a dropped unit of work kept the record"
    );
    ok(tx.insert_installation(&first).await, "insert_installation");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_installation().await, "get_installation"), Some(first.clone()));
    let second = Installation {
        root_fingerprint: CertFingerprint::from_bytes([0x11; 32]),
        kek_id: KekId::from_bytes([0x22; 16]),
        initialized_at: T0,
    };
    conflict(tx.insert_installation(&second).await, "a second insert_installation");
    assert_eq!(
        ok(tx.get_installation().await, "get_installation"),
        Some(first),
        "the refused second record changed nothing"
    );
}

/// Pairing codes: round trip, single use decided by one conditional update, expiry, sweeping;
/// agents: round trip, lookup by credential hash, listing per user, revocation stored.
pub async fn agents_and_pairing<R: Repo>(repo: &R) {
    let (_, alice) = owner(repo, "agents").await;
    let (_, bob) = owner(repo, "agents-b").await;
    let issue = |user: UserId, at| match PairingCode::issue(user, at) {
        Ok((c, s)) => (c, secrecy::ExposeSecret::expose_secret(&s).to_owned()),
        Err(e) => panic!("PairingCode::issue: {e}"),
    };
    let (code, secret) = issue(alice.id, T0);
    let (old, _) = issue(bob.id, T0 - Duration::minutes(10));
    let mut tx = begin(repo).await;
    ok(tx.insert_pairing_code(&code).await, "insert_pairing_code");
    ok(tx.insert_pairing_code(&old).await, "insert_pairing_code");
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(
        tx.insert_pairing_code(&PairingCode { id: crate::ids::PairingCodeId::new(), ..code.clone() }).await,
        "insert_pairing_code with a taken hash",
    );
    drop(tx);
    let hash = match PairingCode::hash_of(&secret) {
        Ok(h) => h,
        Err(e) => panic!("PairingCode::hash_of: {e}"),
    };
    assert_eq!(hash, code.code_hash);
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_pairing_code(code.id).await, "get_pairing_code"), Some(code.clone()));
    for (what, hash, at) in [
        ("a wrong code", TokenHash::of("wrong"), T0),
        ("an expired code", hash, T0 + Duration::minutes(2)),
        ("an old code", old.code_hash, T0),
    ] {
        assert_eq!(ok(tx.redeem_pairing_code(&hash, at).await, what), None, "{what} redeems nothing");
    }
    let at = T0 + Duration::seconds(30);
    let redeemed = ok(tx.redeem_pairing_code(&hash, at).await, "redeem_pairing_code");
    assert_eq!(redeemed, Some(PairingCode { used_at: Some(at), ..code.clone() }));
    assert_eq!(ok(tx.redeem_pairing_code(&hash, at).await, "redeem twice"), None, "a used code");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(
        ok(tx.get_pairing_code(code.id).await, "get_pairing_code").and_then(|c| c.used_at),
        Some(at),
        "the redemption is stored"
    );
    assert_eq!(ok(tx.delete_expired_pairing_codes(T0).await, "delete_expired_pairing_codes"), 1);
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_pairing_code(old.id).await, "get_pairing_code"), None, "the expired code is gone");
    assert!(ok(tx.get_pairing_code(code.id).await, "get_pairing_code").is_some(), "a live code stays");
    drop(tx);

    let pair = |user: UserId, host: &str, at| match Agent::pair(user, host, at) {
        Ok((a, s)) => (a, secrecy::ExposeSecret::expose_secret(&s).to_owned()),
        Err(e) => panic!("Agent::pair: {e}"),
    };
    let (newer, credential) = pair(alice.id, "ws-2.example.org", T0 + Duration::seconds(1));
    let (older, _) = pair(alice.id, "ws-1", T0);
    let (bobs, _) = pair(bob.id, "ws-b", T0);
    let mut tx = begin(repo).await;
    for a in [&newer, &older, &bobs] {
        ok(tx.insert_agent(a).await, "insert_agent");
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(
        tx.insert_agent(&Agent { id: crate::ids::AgentId::new(), ..older.clone() }).await,
        "insert_agent with a taken credential hash",
    );
    drop(tx);
    let mut seen = newer.clone();
    seen.last_seen_at = Some(T0 + Duration::minutes(3));
    seen.revoked_at = Some(T0 + Duration::minutes(4));
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_agent(older.id).await, "get_agent"), Some(older.clone()));
    assert_eq!(
        ok(tx.get_agent_by_credential(&TokenHash::of(&credential)).await, "get_agent_by_credential"),
        Some(newer.clone())
    );
    let listed: Vec<_> =
        ok(tx.list_agents(alice.id).await, "list_agents").into_iter().map(|a| a.id).collect();
    assert_eq!(listed, [older.id, newer.id], "ordered by creation time");
    ok(tx.update_agent(&seen).await, "update_agent");
    not_found(
        tx.update_agent(&Agent { id: crate::ids::AgentId::new(), ..seen.clone() }).await,
        "update_agent",
    );
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_agent(newer.id).await, "get_agent"), Some(seen));
    drop(tx);

    // A job whose ticket is bound to an agent keeps the binding; a plain ticket clears it.
    let card = device(&alice, DeviceKind::SmartCard, None);
    let mut job = Job::new(JobKind::Issuance, card.id, Some(alice.id), T0);
    job.agent = Some(older.id);
    let mut tx = begin(repo).await;
    ok(tx.insert_device(&card).await, "insert_device");
    ok(tx.insert_job(&job).await, "insert_job");
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_job(job.id).await, "get_job"), Some(job.clone()), "the binding is stored");
    job.agent = None;
    ok(tx.update_job(&job).await, "update_job");
    commit(tx).await;
    job.version += 1;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_job(job.id).await, "get_job"), Some(job), "the binding is cleared");
}

/// Passkeys: unique credential ids, listing by user, device and state, the fields that change;
/// WebAuthn challenges redeemed once, only with their binding and purpose, before they expire.
pub async fn passkeys<R: Repo>(repo: &R) {
    use crate::model::{ChallengePurpose, Passkey, PasskeyState, WebAuthnChallenge};
    let (_, alice) = owner(repo, "passkeys").await;
    let (_, bob) = owner(repo, "passkeys-b").await;
    let key_a = device(&alice, DeviceKind::UsbKey, Some("pk-a"));
    let key_b = device(&bob, DeviceKind::UsbKey, Some("pk-b"));
    let passkey = |user: &User, dev: &Device, cred: &[u8], at: OffsetDateTime| Passkey {
        id: crate::ids::PasskeyId::new(),
        credential_id: cred.to_vec(),
        user: user.id,
        device: dev.id,
        rp_id: "lanyard.example".into(),
        public_key: vec![0xa5, 1, 2],
        sign_count: 0,
        aaguid: [7; 16],
        attestation: "none".into(),
        state: PasskeyState::Active,
        created_at: at,
        last_used_at: None,
        removed_at: None,
    };
    let first = passkey(&alice, &key_a, &[1; 32], T0);
    let second = passkey(&alice, &key_a, &[2; 64], T0 + Duration::seconds(1));
    let bobs = passkey(&bob, &key_b, &[3; 16], T0);
    let mut tx = begin(repo).await;
    ok(tx.insert_device(&key_a).await, "insert_device");
    ok(tx.insert_device(&key_b).await, "insert_device");
    for p in [&second, &first, &bobs] {
        ok(tx.insert_passkey(p).await, "insert_passkey");
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(
        tx.insert_passkey(&Passkey { id: crate::ids::PasskeyId::new(), ..first.clone() }).await,
        "insert_passkey with a taken credential id",
    );
    drop(tx);
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.get_passkey(first.id).await, "get_passkey"), Some(first.clone()));
    assert_eq!(ok(tx.get_passkey_by_credential_id(&[2; 64]).await, "by credential id"), Some(second.clone()));
    assert_eq!(ok(tx.get_passkey_by_credential_id(&[9; 32]).await, "unknown credential id"), None);
    let mine = PasskeyQuery { user: Some(alice.id), limit: 10, ..Default::default() };
    assert_eq!(ok(tx.list_passkeys(&mine).await, "list_passkeys"), vec![first.clone(), second.clone()]);
    let on_b = PasskeyQuery { device: Some(key_b.id), limit: 10, ..Default::default() };
    assert_eq!(ok(tx.list_passkeys(&on_b).await, "list by device"), vec![bobs.clone()]);
    let one = PasskeyQuery { limit: 1, ..mine.clone() };
    assert_eq!(ok(tx.list_passkeys(&one).await, "limit").len(), 1);
    let mut used = first.clone();
    used.sign_count = 9;
    used.last_used_at = Some(T0 + Duration::minutes(1));
    used.state = PasskeyState::Removed;
    used.removed_at = Some(T0 + Duration::minutes(2));
    used.rp_id = "ignored.example".into();
    ok(tx.update_passkey(&used).await, "update_passkey");
    not_found(
        tx.update_passkey(&Passkey { id: crate::ids::PasskeyId::new(), ..used.clone() }).await,
        "update_passkey of a missing passkey",
    );
    commit(tx).await;
    let mut tx = begin(repo).await;
    let stored = ok(tx.get_passkey(first.id).await, "get_passkey");
    assert_eq!(
        stored,
        Some(Passkey { rp_id: first.rp_id.clone(), ..used.clone() }),
        "only the changing fields are stored"
    );
    let active = PasskeyQuery { states: vec![PasskeyState::Active], ..mine };
    assert_eq!(ok(tx.list_passkeys(&active).await, "list active"), vec![second.clone()]);
    drop(tx);

    let binding = TokenHash::of("session-a");
    let challenge = |text: &str, purpose, expires: OffsetDateTime| WebAuthnChallenge {
        challenge_hash: WebAuthnChallenge::hash_of(text.as_bytes()),
        purpose,
        binding,
        user: Some(alice.id),
        device: Some(key_a.id),
        created_at: T0,
        expires_at: expires,
        used_at: None,
    };
    let reg = challenge("reg", ChallengePurpose::Registration, T0 + Duration::minutes(5));
    let old = challenge("old", ChallengePurpose::SignIn, T0 - Duration::minutes(1));
    let sign_in = WebAuthnChallenge {
        user: None,
        device: None,
        ..challenge("in", ChallengePurpose::SignIn, T0 + Duration::minutes(5))
    };
    let mut tx = begin(repo).await;
    for c in [&reg, &old, &sign_in] {
        ok(tx.insert_webauthn_challenge(c).await, "insert_webauthn_challenge");
    }
    commit(tx).await;
    let mut tx = begin(repo).await;
    conflict(tx.insert_webauthn_challenge(&reg).await, "insert_webauthn_challenge with a taken hash");
    drop(tx);
    let mut tx = begin(repo).await;
    let at = T0 + Duration::minutes(1);
    for (what, hash, bound, purpose, when) in [
        (
            "another session",
            reg.challenge_hash,
            TokenHash::of("session-b"),
            ChallengePurpose::Registration,
            at,
        ),
        ("another purpose", reg.challenge_hash, binding, ChallengePurpose::SignIn, at),
        (
            "an expired challenge",
            reg.challenge_hash,
            binding,
            ChallengePurpose::Registration,
            T0 + Duration::minutes(5),
        ),
        ("an old challenge", old.challenge_hash, binding, ChallengePurpose::SignIn, at),
        ("an unknown challenge", WebAuthnChallenge::hash_of(b"nope"), binding, ChallengePurpose::SignIn, at),
    ] {
        assert_eq!(
            ok(tx.redeem_webauthn_challenge(&hash, &bound, purpose, when).await, what),
            None,
            "{what} redeems nothing"
        );
    }
    let redeemed = ok(
        tx.redeem_webauthn_challenge(&reg.challenge_hash, &binding, ChallengePurpose::Registration, at).await,
        "redeem_webauthn_challenge",
    );
    assert_eq!(redeemed, Some(WebAuthnChallenge { used_at: Some(at), ..reg.clone() }));
    assert_eq!(
        ok(
            tx.redeem_webauthn_challenge(&reg.challenge_hash, &binding, ChallengePurpose::Registration, at)
                .await,
            "twice"
        ),
        None,
        "a used challenge"
    );
    assert_eq!(
        ok(
            tx.redeem_webauthn_challenge(&sign_in.challenge_hash, &binding, ChallengePurpose::SignIn, at)
                .await,
            "sign-in"
        )
        .map(|c| (c.user, c.device)),
        Some((None, None))
    );
    commit(tx).await;
    let mut tx = begin(repo).await;
    assert_eq!(ok(tx.delete_expired_webauthn_challenges(T0).await, "delete_expired_webauthn_challenges"), 1);
    commit(tx).await;
}
