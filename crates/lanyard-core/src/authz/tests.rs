use std::collections::BTreeSet;

use super::MAX_NOTE_CHARS;
use super::*;
use crate::audit::verify_chain;
use crate::clock::{Clock, ManualClock};
use crate::ids::{CredentialId, GroupId};
use crate::lifecycle::CredentialState;
use crate::model::{
    CertSlot, CredentialKind, DeviceLink, EnrollmentError, EnrollmentKind, EnrollmentPurpose,
    ExternalSponsor, Group, PolicyDenied, PolicyErrors, Session, Username,
};
use crate::repo::{AuditQuery, RetryPolicy, StoreError, UserQuery};
use crate::testing::{MemRepo, block_on};

struct World {
    repo: MemRepo,
    clock: ManualClock,
    group: Group,
    alice: User,
    bob: User,
    olga: User,
    adam: User,
    audrey: User,
}

fn user(name: &str, group: GroupId, roles: &[Role], at: OffsetDateTime) -> User {
    let mut u = User::new(Username::parse(name).unwrap(), name.to_uppercase(), group, at).unwrap();
    u.roles = roles.iter().copied().collect();
    u
}

fn world_with(policy: Policy) -> World {
    let clock = ManualClock::default();
    let at = clock.now();
    let group = Group { id: GroupId::new(), name: "staff".into(), policy };
    let w = World {
        repo: MemRepo::new(),
        alice: user("alice", group.id, &[Role::User], at),
        bob: user("bob", group.id, &[Role::User], at),
        olga: user("olga", group.id, &[Role::User, Role::Operator], at),
        adam: user("adam", group.id, &[Role::Administrator], at),
        audrey: user("audrey", group.id, &[Role::Auditor], at),
        group,
        clock,
    };
    w.repo.with_data(|d| {
        d.groups.insert(w.group.id, w.group.clone());
        for u in [&w.alice, &w.bob, &w.olga, &w.adam, &w.audrey] {
            d.users.insert(u.id, u.clone());
        }
    });
    w
}

fn world() -> World {
    world_with(Policy::default())
}

impl World {
    fn principal(&self, u: &User) -> Principal {
        Principal::new(
            u.clone(),
            OperationId::parse(&format!("op-{}", u.username)).unwrap(),
            self.clock.now(),
        )
        .unwrap()
    }

    /// A device owned by `owner` in `state`, with one Active (or Pending) certificate and one
    /// expired one.
    fn device(&self, owner: &User, kind: DeviceKind, state: DeviceState) -> Device {
        let at = self.clock.now();
        let mut d = Device::new(kind, "YubiKey 5", at).unwrap();
        d.owner = Some(owner.id);
        d.state = state;
        let cert = |state: CredentialState, serial: &str| {
            let mut c = Credential::new(
                d.id,
                CredentialKind::Certificate {
                    slot: if kind == DeviceKind::Mobile {
                        CertSlot::MobileDevice
                    } else {
                        CertSlot::PivAuthentication
                    },
                    profile: "p".into(),
                    serial_hex: serial.into(),
                    not_before: at,
                    not_after: at + time::Duration::days(365),
                    certificate_der: vec![0x30],
                    attestation_der: None,
                },
                at,
            );
            c.state = state;
            c
        };
        let live =
            if state == DeviceState::Pending { CredentialState::Pending } else { CredentialState::Active };
        let creds = [
            cert(live, &format!("{}01", d.id.as_uuid().simple())),
            cert(CredentialState::Expired, &format!("{}02", d.id.as_uuid().simple())),
        ];
        self.repo.with_data(|data| {
            data.devices.insert(d.id, d.clone());
            for c in creds {
                data.credentials.insert(c.id, c);
            }
        });
        d
    }

    fn stored(&self, id: DeviceId) -> Device {
        self.repo.data().devices[&id].clone()
    }

    fn credential_states(&self, id: DeviceId) -> Vec<CredentialState> {
        let mut v: Vec<_> =
            self.repo.data().credentials.values().filter(|c| c.device == id).map(|c| c.state).collect();
        v.sort();
        v
    }
}

fn is_not_found(err: &DomainError, id: DeviceId) -> bool {
    matches!(err, DomainError::NotFound { kind: "device", id: s } if *s == id.to_string())
}

#[test]
fn a_user_cannot_see_or_touch_another_users_device() {
    let w = world();
    let mine = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let bobs_card = w.device(&w.bob, DeviceKind::SmartCard, DeviceState::Pending);
    let bobs_phone = w.device(&w.bob, DeviceKind::Mobile, DeviceState::Active);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let before = w.repo.data();

    let listed = block_on(me.devices(&w.repo)).unwrap();
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [mine.id]);
    assert_eq!(block_on(me.device(&w.repo, mine.id)).unwrap().id, mine.id);

    // Bob's devices look exactly like devices that do not exist.
    let nowhere = DeviceId::new();
    for id in [bobs_card.id, bobs_phone.id, nowhere] {
        assert!(is_not_found(&block_on(me.device(&w.repo, id)).unwrap_err(), id));
        assert!(is_not_found(&block_on(me.credentials(&w.repo, id)).unwrap_err(), id));
        assert!(is_not_found(&block_on(me.delete_mobile(&w.repo, id)).unwrap_err(), id));
        assert!(is_not_found(&block_on(me.confirm_pin_changed(&w.repo, id)).unwrap_err(), id));
    }
    assert_eq!(
        block_on(me.device(&w.repo, bobs_card.id)).unwrap_err().to_string(),
        format!("device {} not found", bobs_card.id)
    );
    assert_eq!(w.repo.data(), before, "nothing changed, no audit event written");
}

#[test]
fn roles_gate_the_views() {
    let w = world();
    let alice = w.principal(&w.alice);
    assert_eq!(alice.operator().unwrap_err(), Forbidden::MissingRole(Role::Operator));
    assert_eq!(alice.admin().unwrap_err(), Forbidden::MissingRole(Role::Administrator));
    assert_eq!(alice.auditor().unwrap_err().to_string(), "forbidden: this requires the auditor role");
    let olga = w.principal(&w.olga);
    assert!(olga.operator().is_ok() && olga.self_service().is_ok() && olga.admin().is_err());

    let mut disabled = w.bob.clone();
    disabled.disabled = true;
    assert_eq!(
        Principal::new(disabled, OperationId::random(), w.clock.now()).unwrap_err(),
        Forbidden::Disabled
    );
}

#[test]
fn an_auditor_reads_and_verifies_but_cannot_change_anything() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let olga = w.principal(&w.olga);
    block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap();
    let audrey = w.principal(&w.audrey);
    let before = w.repo.data();

    // No view that changes anything is available to the auditor...
    assert_eq!(audrey.operator().unwrap_err(), Forbidden::MissingRole(Role::Operator));
    assert_eq!(audrey.admin().unwrap_err(), Forbidden::MissingRole(Role::Administrator));
    assert_eq!(audrey.self_service().unwrap_err(), Forbidden::MissingRole(Role::User));
    // ...and what it can do reads only.
    let auditor = audrey.auditor().unwrap();
    let events = block_on(auditor.events(&w.repo, &AuditQuery { limit: 100, ..Default::default() })).unwrap();
    assert_eq!(events.len(), 1);
    let head = block_on(auditor.verify(&w.repo)).unwrap();
    assert_eq!(head, events[0].head());
    assert_eq!(w.repo.data(), before);
}

#[test]
fn an_operators_suspend_writes_one_audit_event_with_before_and_after() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();

    let suspended = block_on(op.suspend_device(&w.repo, card.id)).unwrap();
    assert_eq!(
        (suspended.state, suspended.suspended_from),
        (DeviceState::Suspended, Some(DeviceState::Active))
    );
    assert_eq!(w.stored(card.id), suspended);
    assert_eq!(w.credential_states(card.id), [CredentialState::OnHold, CredentialState::Expired]);

    let data = w.repo.data();
    assert_eq!(data.audit.len(), 1);
    let event = &data.audit[0];
    assert_eq!(event.action, "device.suspend");
    assert_eq!(event.target.as_deref(), Some(format!("device:{}", card.id).as_str()));
    assert_eq!(event.operation_id, "op-olga");
    assert_eq!(event.actor, Actor::User { id: w.olga.id, username: w.olga.username.clone() });
    assert_eq!(event.at, w.clock.now());
    let (before, after) = (event.before.as_ref().unwrap(), event.after.as_ref().unwrap());
    assert_eq!(before["state"], "active");
    assert_eq!(before["suspended_from"], Value::Null);
    assert_eq!(after["state"], "suspended");
    assert_eq!(after["suspended_from"], "active");
    let held: Vec<&Value> = after["credentials"].as_object().unwrap().values().collect();
    assert!(held.contains(&&json!("on_hold")) && held.contains(&&json!("expired")));

    // Resume restores the device and releases the held certificate; a second event chains on.
    w.clock.advance(time::Duration::hours(2));
    let olga = w.principal(&w.olga);
    let resumed = block_on(olga.operator().unwrap().resume_device(&w.repo, card.id)).unwrap();
    assert_eq!((resumed.state, resumed.suspended_from), (DeviceState::Active, None));
    assert_eq!(w.credential_states(card.id), [CredentialState::Active, CredentialState::Expired]);
    let data = w.repo.data();
    assert_eq!(data.audit.len(), 2);
    assert_eq!(data.audit[1].action, "device.resume");
    assert_eq!(verify_chain(&data.audit), Ok(2));
}

#[test]
fn an_illegal_action_is_an_error_and_writes_nothing() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Revoked);
    let olga = w.principal(&w.olga);
    let before = w.repo.data();
    let err = block_on(olga.operator().unwrap().resume_device(&w.repo, card.id)).unwrap_err();
    assert!(matches!(
        err,
        DomainError::Lifecycle(crate::lifecycle::LifecycleError::IllegalTransition {
            from: DeviceState::Revoked,
            action: DeviceAction::Resume,
            ..
        })
    ));
    assert_eq!(w.repo.data(), before);
    let err = block_on(olga.operator().unwrap().suspend_device(&w.repo, DeviceId::new())).unwrap_err();
    assert!(matches!(err, DomainError::NotFound { kind: "device", .. }));
}

#[test]
fn policy_device_limit_is_enforced() {
    let w = world_with(Policy { max_devices: 1, ..Policy::default() });
    let first = w.device(&w.alice, DeviceKind::UsbKey, DeviceState::Active);
    // A mobile does not count toward the card limit.
    w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let card = CardInfo { kind: DeviceKind::UsbKey, model: "YubiKey 5".into(), serial: Some("4242".into()) };
    assert_eq!(block_on(me.policy(&w.repo)).unwrap(), Policy { max_devices: 1, ..Policy::default() });
    let before = w.repo.data();

    let denied = PolicyDenied::DeviceLimitReached { max: 1, current: 1 };
    let err = block_on(me.begin_issuance(&w.repo, card.clone())).unwrap_err();
    assert!(matches!(&err, DomainError::PolicyDenied(d) if *d == denied), "{err}");
    assert_eq!(
        err.to_string(),
        "policy: your group's policy allows at most 1 smart cards or USB keys, and you have 1"
    );
    assert!(matches!(block_on(me.may_add_device(&w.repo)), Err(DomainError::PolicyDenied(d)) if d == denied));
    assert_eq!(w.repo.data(), before, "nothing registered");

    // Once the first key is revoked, there is room again.
    let olga = w.principal(&w.olga);
    block_on(olga.operator().unwrap().mark_device_lost(&w.repo, first.id)).unwrap();
    block_on(me.may_add_device(&w.repo)).unwrap();
    let (device, job) = block_on(me.begin_issuance(&w.repo, card)).unwrap();
    assert_eq!((device.state, device.owner), (DeviceState::Issuing, Some(w.alice.id)));
    assert_eq!(job.device, device.id);
    let data = w.repo.data();
    assert_eq!(data.jobs.len(), 1);
    assert_eq!(data.audit.last().unwrap().action, "device.begin_issuance");
}

#[test]
fn policy_switches_and_card_models_are_enforced() {
    let w = world_with(Policy { may_add_device: false, may_add_mobile: false, ..Policy::default() });
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let card = CardInfo { kind: DeviceKind::SmartCard, model: "YubiKey 5".into(), serial: None };
    assert!(matches!(
        block_on(me.begin_issuance(&w.repo, card)),
        Err(DomainError::PolicyDenied(PolicyDenied::AddDeviceDisabled))
    ));
    assert!(matches!(
        block_on(me.start_mobile_enrollment(
            &w.repo,
            EnrollmentPurpose::MobileProfile,
            time::Duration::minutes(10),
            None
        )),
        Err(DomainError::PolicyDenied(PolicyDenied::AddMobileDisabled))
    ));

    let w = world();
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let odd = CardInfo { kind: DeviceKind::SmartCard, model: "Acme Card".into(), serial: None };
    assert!(matches!(
        block_on(me.begin_issuance(&w.repo, odd)),
        Err(DomainError::PolicyDenied(PolicyDenied::CardModelNotAccepted(m))) if m == "Acme Card"
    ));
    let phone = CardInfo { kind: DeviceKind::Mobile, model: "YubiKey 5".into(), serial: None };
    assert!(matches!(block_on(me.begin_issuance(&w.repo, phone)), Err(DomainError::Validation(_))));
    assert!(w.repo.data().devices.is_empty());

    // Derived PIV needs a sponsor card under the default policy.
    let err = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_without_sponsor(),
        time::Duration::minutes(10),
        None,
    ))
    .unwrap_err();
    assert_eq!(err.to_string(), "invalid input: sponsor: your group's policy requires a sponsor card");
    let (code, _secret) = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::MobileProfile,
        time::Duration::minutes(10),
        None,
    ))
    .unwrap();
    assert_eq!(w.repo.data().enrollment_codes[&code.id], code);
}

#[test]
fn issuance_claims_stock_but_not_issued_cards() {
    let w = world();
    let at = w.clock.now();
    let mut stock = Device::new(DeviceKind::SmartCard, "YubiKey 5", at).unwrap();
    stock.serial = Some("1001".into());
    let mut issued = Device::new(DeviceKind::SmartCard, "YubiKey 5", at).unwrap();
    issued.serial = Some("1002".into());
    issued.state = DeviceState::Active;
    issued.owner = Some(w.bob.id);
    w.repo.with_data(|d| {
        d.devices.insert(stock.id, stock.clone());
        d.devices.insert(issued.id, issued.clone());
    });
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let info = |serial: &str| CardInfo {
        kind: DeviceKind::SmartCard,
        model: "YubiKey 5".into(),
        serial: Some(serial.into()),
    };
    let (device, _) = block_on(me.begin_issuance(&w.repo, info("1001"))).unwrap();
    assert_eq!(device.id, stock.id);
    assert_eq!(w.stored(stock.id).owner, Some(w.alice.id));
    let err = block_on(me.begin_issuance(&w.repo, info("1002"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "conflict: this card is already registered and is active; an operator must recycle it first"
    );
    assert_eq!(w.stored(issued.id), issued);
}

#[test]
fn a_stolen_card_revokes_the_mobiles_it_sponsored_in_the_last_seven_days() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let phone = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    let unrelated = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    let older = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    w.repo.with_data(|d| {
        for (id, age) in [(phone.id, 6), (older.id, 8)] {
            if let Some(p) = d.devices.get_mut(&id) {
                p.links.push(DeviceLink { kind: LinkKind::DerivedFrom, target: card.id });
                p.created_at -= time::Duration::days(age);
            }
        }
    });
    let olga = w.principal(&w.olga);
    block_on(olga.operator().unwrap().mark_device_stolen(&w.repo, card.id)).unwrap();

    let card = w.stored(card.id);
    assert_eq!((card.state, card.revocation_reason), (DeviceState::Revoked, Some(RevocationReason::Stolen)));
    let phone_now = w.stored(phone.id);
    assert_eq!(
        (phone_now.state, phone_now.revocation_reason),
        (DeviceState::Revoked, Some(RevocationReason::ParentRevoked))
    );
    assert_eq!(w.credential_states(phone.id), [CredentialState::Revoked, CredentialState::Expired]);
    assert_eq!(w.stored(unrelated.id).state, DeviceState::Active);
    assert_eq!(w.stored(older.id).state, DeviceState::Active, "sponsored 8 days ago: it stays");
    let revoked: Vec<_> =
        w.repo.data().credentials.into_values().filter(|c| c.state == CredentialState::Revoked).collect();
    assert!(revoked.iter().all(|c| c.revoked_at == Some(w.clock.now())));
    let audit = w.repo.data().audit;
    assert_eq!(
        audit.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["device.mark_stolen", "device.revoke"]
    );
    assert!(audit.iter().all(|e| e.operation_id == "op-olga"));
}

#[test]
fn a_user_deletes_their_mobile_and_it_disappears() {
    let w = world();
    let phone = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    assert!(matches!(block_on(me.delete_mobile(&w.repo, card.id)), Err(DomainError::Validation(_))));
    let deleted = block_on(me.delete_mobile(&w.repo, phone.id)).unwrap();
    assert_eq!(deleted.state, DeviceState::Deleted);
    assert_eq!(w.credential_states(phone.id), [CredentialState::Revoked, CredentialState::Expired]);
    assert_eq!(block_on(me.devices(&w.repo)).unwrap().iter().map(|d| d.id).collect::<Vec<_>>(), [card.id]);
    assert!(is_not_found(&block_on(me.device(&w.repo, phone.id)).unwrap_err(), phone.id));
}

#[test]
fn a_pending_card_is_activated_by_its_holder_or_an_operator() {
    let w = world();
    let a = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Pending);
    let b = w.device(&w.bob, DeviceKind::SmartCard, DeviceState::Pending);
    let alice = w.principal(&w.alice);
    let done = block_on(alice.self_service().unwrap().confirm_pin_changed(&w.repo, a.id)).unwrap();
    assert_eq!(done.state, DeviceState::Active);
    assert_eq!(w.credential_states(a.id), [CredentialState::Active, CredentialState::Expired]);
    let olga = w.principal(&w.olga);
    let done = block_on(olga.operator().unwrap().activate_device(&w.repo, b.id)).unwrap();
    assert_eq!(done.state, DeviceState::Active);
}

#[test]
fn a_holder_starts_a_pin_change_only_on_their_own_active_lanyard_card() {
    let w = world();
    let ttl = time::Duration::minutes(10);
    let issued = |owner: &User, state: DeviceState| {
        let mut d = w.device(owner, DeviceKind::UsbKey, state);
        d.card_guid = Some([7; 16]);
        w.repo.with_data(|data| {
            data.devices.insert(d.id, d.clone());
        });
        d
    };
    let mine = issued(&w.alice, DeviceState::Active);
    let pending = issued(&w.alice, DeviceState::Pending);
    let suspended = issued(&w.alice, DeviceState::Suspended);
    let foreign = w.device(&w.alice, DeviceKind::UsbKey, DeviceState::Active);
    let bobs = issued(&w.bob, DeviceState::Active);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let before = w.repo.data();
    assert!(is_not_found(&block_on(me.start_change_pin(&w.repo, bobs.id, ttl)).unwrap_err(), bobs.id));
    for (d, why) in [
        (&pending, "is pending; only an active card's PIN is changed"),
        (&suspended, "is suspended; only an active card's PIN is changed"),
        (&foreign, "was not issued by Lanyard"),
    ] {
        let e = block_on(me.start_change_pin(&w.repo, d.id, ttl)).unwrap_err();
        assert!(matches!(&e, DomainError::Conflict(m) if m.contains(why)), "{e}");
    }
    assert_eq!(w.repo.data(), before, "refusals write nothing");

    let (job, _ticket) = block_on(me.start_change_pin(&w.repo, mine.id, ttl)).unwrap();
    assert_eq!((job.kind, job.device, job.state), (JobKind::ChangePin, mine.id, JobState::Created));
    let data = w.repo.data();
    let audited = data.audit.iter().filter(|e| e.action == "job.create").collect::<Vec<_>>();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].after.as_ref().unwrap()["kind"], "change_pin");
}

#[test]
fn recycling_discards_card_secrets() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Terminated);
    w.repo.with_data(|d| {
        d.secrets.insert(card.id, crate::secrets::SealedCardSecrets::from_bytes(vec![1, 2, 3]))
    });
    let olga = w.principal(&w.olga);
    let stock = block_on(olga.operator().unwrap().recycle_device(&w.repo, card.id)).unwrap();
    assert_eq!((stock.state, stock.owner), (DeviceState::Available, None));
    assert!(w.repo.data().secrets.is_empty());
}

#[test]
fn admin_manages_groups_users_and_roles() {
    let w = world();
    let adam = w.principal(&w.adam);
    let admin = adam.admin().unwrap();
    let err = block_on(admin.create_group(&w.repo, "lab", Policy { max_devices: 99, ..Policy::default() }))
        .unwrap_err();
    assert!(matches!(&err, DomainError::InvalidPolicy(PolicyErrors(e)) if e.len() == 1), "{err}");
    let group = block_on(admin.create_group(&w.repo, "lab", Policy::default())).unwrap();
    let new = NewUser {
        username: Username::parse("carol").unwrap(),
        display_name: "Carol".into(),
        email: None,
        group: group.id,
        roles: BTreeSet::from([Role::User]),
    };
    let carol = block_on(admin.create_user(&w.repo, new.clone())).unwrap();
    assert!(matches!(block_on(admin.create_user(&w.repo, new)), Err(DomainError::Conflict(_))));
    let carol =
        block_on(admin.set_roles(&w.repo, carol.id, BTreeSet::from([Role::User, Role::Operator]))).unwrap();
    assert!(carol.has_role(Role::Operator));
    let err = block_on(admin.set_roles(&w.repo, w.adam.id, BTreeSet::new())).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: roles: you cannot remove your own administrator role");
    block_on(admin.set_disabled(&w.repo, carol.id, true)).unwrap();
    let actions: Vec<String> = w.repo.data().audit.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["group.create", "user.create", "user.set_roles", "user.disable"]);
}

#[test]
fn api_token_requests_are_audited_as_the_token() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let token = ApiTokenId::new();
    let olga = w.principal(&w.olga).via_api_token(token);
    block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap();
    assert_eq!(w.repo.data().audit[0].actor, Actor::ApiToken { id: token });
}

#[test]
fn audit_verification_names_a_tampered_event() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    block_on(op.suspend_device(&w.repo, card.id)).unwrap();
    block_on(op.resume_device(&w.repo, card.id)).unwrap();
    block_on(op.suspend_device(&w.repo, card.id)).unwrap();
    w.repo.with_data(|d| d.audit[1].action = "device.nothing_to_see".into());
    let audrey = w.principal(&w.audrey);
    let err = block_on(audrey.auditor().unwrap().verify(&w.repo)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "audit chain broken at event 2: its hash does not match its contents (the event was altered)"
    );
}

#[test]
fn a_concurrent_commit_conflicts_instead_of_losing_an_update() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let mut tx = block_on(w.repo.begin()).unwrap();
    let mut d = block_on(tx.get_device(card.id)).unwrap().unwrap();
    // Meanwhile an operator suspends the card.
    let olga = w.principal(&w.olga);
    block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap();
    apply_device(&mut d, DeviceAction::Revoke(RevocationReason::Unspecified), w.clock.now()).unwrap();
    block_on(tx.update_device(&d)).unwrap();
    assert!(matches!(block_on(tx.commit()), Err(StoreError::Retryable(_))));
    assert_eq!(w.stored(card.id).state, DeviceState::Suspended);
}

#[test]
fn service_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let w = world();
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    let fut = op.suspend_device(&w.repo, DeviceId::new());
    assert_send(&fut);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let card = CardInfo { kind: DeviceKind::SmartCard, model: "YubiKey 5".into(), serial: None };
    assert_send(&me.begin_issuance(&w.repo, card));
}

#[test]
fn an_operator_holds_releases_and_revokes_one_credential_with_one_event_each() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let live = w
        .repo
        .data()
        .credentials
        .values()
        .find(|c| c.device == card.id && c.state == CredentialState::Active)
        .unwrap()
        .id;
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    let held = block_on(op.hold_credential(&w.repo, live)).unwrap();
    assert_eq!((held.state, held.held_from), (CredentialState::OnHold, Some(CredentialState::Active)));
    let before = w.repo.data();
    let err = block_on(op.hold_credential(&w.repo, live)).unwrap_err();
    assert_eq!(err.to_string(), "illegal transition: hold is not allowed for a credential in state on_hold");
    assert_eq!(w.repo.data(), before, "a refused action writes nothing");
    let released = block_on(op.release_credential(&w.repo, live)).unwrap();
    assert_eq!((released.state, released.revoked_at), (CredentialState::Active, None));
    let revoked = block_on(op.revoke_credential(&w.repo, live, RevocationReason::KeyCompromise)).unwrap();
    assert_eq!(
        (revoked.state, revoked.revocation_reason),
        (CredentialState::Revoked, Some(RevocationReason::KeyCompromise))
    );
    assert_eq!(w.stored(card.id).state, DeviceState::Active, "the device is untouched");
    let events = w.repo.data().audit;
    let seen: Vec<(&str, &Value, &Value)> = events
        .iter()
        .map(|e| {
            (e.action.as_str(), &e.before.as_ref().unwrap()["state"], &e.after.as_ref().unwrap()["state"])
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("credential.hold", &json!("active"), &json!("on_hold")),
            ("credential.release", &json!("on_hold"), &json!("active")),
            ("credential.revoke", &json!("active"), &json!("revoked")),
        ]
    );
    assert!(
        events.iter().all(|e| e.operation_id == "op-olga" && e.target == Some(format!("credential:{live}")))
    );
    let err = block_on(op.hold_credential(&w.repo, CredentialId::new())).unwrap_err();
    assert!(matches!(err, DomainError::NotFound { kind: "credential", .. }));
}

#[test]
fn anyone_manages_their_own_api_tokens_only() {
    let w = world();
    let alice = w.principal(&w.alice);
    let bob = w.principal(&w.bob);
    let (token, secret) = block_on(alice.create_api_token(&w.repo, "ci", Some(365))).unwrap();
    assert_eq!(token.expires_at, Some(w.clock.now() + time::Duration::days(365)));
    assert!(token.is_valid(w.clock.now()));
    assert_eq!(
        w.repo.data().api_tokens[&token.id].token_hash,
        crate::secrets::TokenHash::of(secrecy::ExposeSecret::expose_secret(&secret))
    );
    for days in [0, 366] {
        let err = block_on(alice.create_api_token(&w.repo, "ci", Some(days))).unwrap_err();
        assert_eq!(err.to_string(), format!("invalid input: expires_in_days: must be 1 to 365, got {days}"));
    }
    assert_eq!(block_on(bob.api_tokens(&w.repo)).unwrap(), []);
    let err = block_on(bob.revoke_api_token(&w.repo, token.id)).unwrap_err();
    assert!(matches!(err, DomainError::NotFound { kind: "api token", .. }), "{err}");
    let revoked = block_on(alice.revoke_api_token(&w.repo, token.id)).unwrap();
    assert!(!revoked.is_valid(w.clock.now()));
    assert!(matches!(block_on(alice.revoke_api_token(&w.repo, token.id)), Err(DomainError::Conflict(_))));
    assert_eq!(block_on(alice.api_tokens(&w.repo)).unwrap(), [revoked]);
    let actions: Vec<String> = w.repo.data().audit.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["api_token.create", "api_token.revoke"]);
}

#[test]
fn an_administrator_creates_a_user_with_an_initial_password() {
    let w = world();
    let adam = w.principal(&w.adam);
    let admin = adam.admin().unwrap();
    let new = NewUser {
        username: Username::parse("carol").unwrap(),
        display_name: "Carol".into(),
        email: None,
        group: w.group.id,
        roles: BTreeSet::from([Role::User]),
    };
    let short = secrecy::SecretString::from("short");
    let err = block_on(admin.create_user_with_password(&w.repo, new.clone(), Some(&short))).unwrap_err();
    assert!(err.to_string().contains("password: must be 12 to 1024"), "{err}");
    assert!(w.repo.data().audit.is_empty());
    let good = secrecy::SecretString::from("twelve chars!");
    let carol = block_on(admin.create_user_with_password(&w.repo, new, Some(&good))).unwrap();
    let found = block_on(crate::password::authenticate(&w.repo, "carol", "twelve chars!")).unwrap();
    assert_eq!(found.map(|u| u.id), Some(carol.id));
}

#[test]
fn a_credential_on_a_suspended_device_is_not_released_on_its_own() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    block_on(op.suspend_device(&w.repo, card.id)).unwrap();
    let held = w
        .repo
        .data()
        .credentials
        .values()
        .find(|c| c.device == card.id && c.state == CredentialState::OnHold)
        .unwrap()
        .id;
    let before = w.repo.data();
    let err = block_on(op.release_credential(&w.repo, held)).unwrap_err();
    assert!(
        matches!(&err, DomainError::Conflict(m) if m.starts_with("the credential's device is suspended")),
        "{err}"
    );
    assert_eq!(w.repo.data(), before);
    block_on(op.resume_device(&w.repo, card.id)).unwrap();
    assert_eq!(w.credential_states(card.id), [CredentialState::Active, CredentialState::Expired]);
}

#[test]
fn an_operator_registers_a_card_and_records_an_issued_certificate() {
    let w = world();
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    let card = |serial: &str| CardInfo {
        kind: DeviceKind::SmartCard,
        model: "YubiKey 5".into(),
        serial: Some(serial.into()),
    };

    // Stock without an owner; issuing to the owner with one; a taken serial is a conflict.
    let stock = block_on(op.register_device(&w.repo, card("1"), None)).unwrap();
    assert_eq!((stock.state, stock.owner), (DeviceState::Available, None));
    let issued = block_on(op.register_device(&w.repo, card("2"), Some(w.alice.id))).unwrap();
    assert_eq!((issued.state, issued.owner), (DeviceState::Issuing, Some(w.alice.id)));
    let err = block_on(op.register_device(&w.repo, card("2"), None)).unwrap_err();
    assert!(matches!(err, DomainError::Conflict(_)), "{err}");
    let actions: Vec<String> = w.repo.data().audit.iter().map(|e| e.action.clone()).collect();
    assert_eq!(actions, ["device.register", "device.register", "device.begin_issuance"]);

    let kind = |at: OffsetDateTime| CredentialKind::Certificate {
        slot: CertSlot::PivAuthentication,
        profile: "piv-auth".into(),
        serial_hex: "7f01".into(),
        not_before: at,
        not_after: at + time::Duration::days(30),
        certificate_der: vec![0x30],
        attestation_der: None,
    };
    // Stock has no holder to issue under: refused before anything is signed, nothing written.
    let before = w.repo.data();
    let err = block_on(op.issuance_context(&w.repo, stock.id)).unwrap_err();
    assert!(matches!(err, DomainError::Conflict(_)), "{err}");
    assert_eq!(w.repo.data(), before);
    let (device, holder, _policy) = block_on(op.issuance_context(&w.repo, issued.id)).unwrap();
    assert_eq!((device.id, holder.id), (issued.id, w.alice.id));
    assert_eq!(w.repo.data(), before);

    // A certificate for a device still being issued is Pending (on hold in OCSP and the CRL)
    // until the device is Active, whichever path signed it.
    let credential = block_on(op.record_certificate(&w.repo, issued.id, kind(w.clock.now()))).unwrap();
    assert_eq!((credential.state, credential.device), (CredentialState::Pending, issued.id));
    let data = w.repo.data();
    assert_eq!(data.credentials[&credential.id], credential);
    let event = data.audit.last().unwrap();
    assert_eq!(event.action, "credential.issue");
    assert_eq!(event.operation_id, "op-olga");
    assert_eq!(event.target.as_deref(), Some(format!("credential:{}", credential.id).as_str()));
    assert_eq!(event.after.as_ref().unwrap()["serial"], "7f01");
    assert_eq!(event.after.as_ref().unwrap()["state"], "pending");
    assert_eq!(verify_chain(&data.audit), Ok(4));

    // A device that stopped taking certificates while the CA was signing: the certificate is
    // recorded revoked (OCSP and the CRL know its serial) and the caller hears why.
    let err = block_on(op.record_certificate(&w.repo, stock.id, kind(w.clock.now()))).unwrap_err();
    assert!(matches!(&err, DomainError::Conflict(m) if m.contains("recorded revoked")), "{err}");
    let data = w.repo.data();
    let revoked: Vec<_> = data.credentials.values().filter(|c| c.device == stock.id).collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].state, CredentialState::Revoked);
    assert_eq!(revoked[0].revocation_reason, Some(RevocationReason::CessationOfOperation));

    // Cardholders have no operator view.
    assert!(w.principal(&w.alice).operator().is_err());
}

#[test]
fn a_write_retries_after_a_serialization_failure_and_commits_once() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let events = w.repo.data().audit.len();
    w.repo.fail_commits(4);
    let olga = w.principal(&w.olga);
    let device = block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap();
    assert_eq!(device.state, DeviceState::Suspended);
    assert_eq!(w.stored(card.id).state, DeviceState::Suspended);
    assert_eq!(w.repo.commits(), 5, "four failed runs, then the fifth committed");
    assert_eq!(w.repo.data().audit.len(), events + 1, "one audit event, not one per run");
    let pauses = w.repo.pauses();
    assert_eq!(pauses.len(), 4);
    for (n, pause) in pauses.iter().enumerate() {
        let ceiling = RetryPolicy::DEFAULT.base * (1 << n);
        assert!(*pause <= ceiling.min(RetryPolicy::DEFAULT.cap), "pause {n}: {pause:?}");
    }
}

#[test]
fn a_write_gives_up_after_five_runs_with_the_retryable_error() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let before = w.repo.data();
    w.repo.fail_commits(u32::MAX);
    let olga = w.principal(&w.olga);
    let err = block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap_err();
    assert!(matches!(err, DomainError::Store(StoreError::Retryable(_))), "{err}");
    assert_eq!(w.repo.commits(), RetryPolicy::DEFAULT.attempts);
    assert_eq!(w.repo.pauses().len(), 4);
    assert_eq!(w.repo.data(), before, "nothing changed");
}

#[test]
fn final_errors_are_not_retried() {
    let w = world();
    let olga = w.principal(&w.olga);
    // A uniqueness conflict, a missing row and a refused transition fail on the first run.
    let err = block_on(olga.operator().unwrap().suspend_device(&w.repo, DeviceId::new())).unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }), "{err}");
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Revoked);
    let err = block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap_err();
    assert!(matches!(err, DomainError::Lifecycle(_)), "{err}");
    assert!(w.repo.pauses().is_empty());
    assert_eq!(w.repo.commits(), 0);
}

#[test]
fn retry_pauses_are_full_jitter_below_a_doubling_capped_ceiling() {
    let p = RetryPolicy::DEFAULT;
    let ms = std::time::Duration::from_millis;
    assert_eq!(p.pause(1, 0), ms(0));
    assert_eq!(p.pause(1, u64::MAX / 2 + 1), ms(50) / 2);
    assert!(p.pause(1, u64::MAX) < ms(50) && p.pause(1, u64::MAX) > ms(49));
    assert!(p.pause(2, u64::MAX) < ms(100) && p.pause(2, u64::MAX) > ms(99));
    assert!(p.pause(4, u64::MAX) < ms(400) && p.pause(4, u64::MAX) > ms(399));
    assert!(p.pause(40, u64::MAX) <= ms(400), "capped, and no overflow");
}

#[test]
fn reads_go_through_read_units_of_work() {
    // A read unit of work of the double refuses at commit whatever was written through it.
    let w = world();
    let mut tx = block_on(w.repo.read()).unwrap();
    block_on(tx.insert_group(&Group { id: GroupId::new(), name: "x".into(), policy: Policy::default() }))
        .unwrap();
    assert!(matches!(block_on(tx.commit()), Err(StoreError::ReadOnly(_))));
    assert_eq!(w.repo.data().groups.len(), 1);
    // Listings and lookups start no write unit of work.
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    block_on(op.device(&w.repo, card.id)).unwrap();
    block_on(op.credentials(&w.repo, card.id)).unwrap();
    block_on(op.find_devices(&w.repo, &DeviceQuery { limit: 10, ..Default::default() })).unwrap();
    block_on(op.find_users(&w.repo, &UserQuery { limit: 10, ..Default::default() })).unwrap();
    block_on(op.groups(&w.repo)).unwrap();
    block_on(op.device_history(&w.repo, card.id, 0, 10)).unwrap();
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    block_on(me.devices(&w.repo)).unwrap();
    block_on(me.device(&w.repo, card.id)).unwrap();
    block_on(me.credentials(&w.repo, card.id)).unwrap();
    block_on(alice.api_tokens(&w.repo)).unwrap();
    let audrey = w.principal(&w.audrey);
    block_on(audrey.auditor().unwrap().events(&w.repo, &AuditQuery { limit: 10, ..Default::default() }))
        .unwrap();
    block_on(audrey.auditor().unwrap().verify(&w.repo)).unwrap();
    block_on(crate::password::authenticate(&w.repo, "alice", "not her password")).unwrap();
    assert_eq!(w.repo.write_units(), 0);
}

#[test]
fn a_pairing_code_pairs_one_agent_with_its_user_once_within_two_minutes() {
    use secrecy::ExposeSecret;
    let w = world();
    let alice = w.principal(&w.alice);
    let bob = w.principal(&w.bob);
    let system = |at| System::new(OperationId::parse("op-agent").unwrap(), at);
    let (code, secret) = block_on(alice.workstations().unwrap().start_pairing(&w.repo)).unwrap();
    let stored = w.repo.data().pairing_codes[&code.id].clone();
    assert_eq!(stored.user, w.alice.id);
    assert_eq!(stored.code_hash, crate::model::PairingCode::hash_of(secret.expose_secret()).unwrap());

    // A bad host name is refused before the code is used up.
    let err = block_on(system(w.clock.now()).pair_agent(&w.repo, secret.expose_secret(), " ")).unwrap_err();
    assert!(matches!(err, DomainError::Validation(ref v) if v.field == "host_name"), "{err}");
    let at = w.clock.now() + time::Duration::seconds(119);
    let (agent, credential) =
        block_on(system(at).pair_agent(&w.repo, &secret.expose_secret().to_lowercase(), "ws-1"))
            .unwrap()
            .expect("a fresh code pairs");
    assert_eq!((agent.user, agent.host_name.as_str(), agent.created_at), (w.alice.id, "ws-1", at));
    assert!(block_on(system(at).pair_agent(&w.repo, secret.expose_secret(), "ws-2")).unwrap().is_none());
    assert_eq!(w.repo.data().agents.len(), 1, "a used code pairs nothing");

    // Expired: two minutes after issue.
    let (_, late) = block_on(alice.workstations().unwrap().start_pairing(&w.repo)).unwrap();
    let expired = w.clock.now() + time::Duration::minutes(2);
    assert!(block_on(system(expired).pair_agent(&w.repo, late.expose_secret(), "ws-3")).unwrap().is_none());

    // The credential authenticates and notes the use; bob sees and revokes nothing of alice's.
    let seen = at + time::Duration::minutes(5);
    let (a, u) =
        block_on(system(seen).authenticate_agent(&w.repo, credential.expose_secret())).unwrap().unwrap();
    assert_eq!((a.id, a.last_seen_at, u.id), (agent.id, Some(seen), w.alice.id));
    assert!(block_on(system(seen).authenticate_agent(&w.repo, "nope")).unwrap().is_none());
    assert_eq!(block_on(bob.workstations().unwrap().agents(&w.repo)).unwrap(), []);
    let err = block_on(bob.workstations().unwrap().revoke_agent(&w.repo, agent.id)).unwrap_err();
    assert!(matches!(err, DomainError::NotFound { kind: "agent", .. }), "{err}");
    let revoked = block_on(alice.workstations().unwrap().revoke_agent(&w.repo, agent.id)).unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        block_on(alice.workstations().unwrap().revoke_agent(&w.repo, agent.id)),
        Err(DomainError::Conflict(_))
    ));
    assert!(
        block_on(system(seen).authenticate_agent(&w.repo, credential.expose_secret())).unwrap().is_none()
    );
    assert_eq!(block_on(alice.workstations().unwrap().agents(&w.repo)).unwrap(), [revoked]);

    let events = w.repo.data().audit;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["agent.pairing_start", "agent.pair", "agent.pairing_start", "agent.revoke"]);
    let text = serde_json::to_string(&events).unwrap();
    let normal = crate::model::PairingCode::normalize(secret.expose_secret()).unwrap();
    for s in [secret.expose_secret(), normal.as_str(), credential.expose_secret()] {
        assert!(!text.contains(s), "the audit log holds a secret");
    }
}

#[test]
fn a_disabled_user_pairs_no_agent_and_their_agents_stop_authenticating() {
    use secrecy::ExposeSecret;
    let w = world();
    let alice = w.principal(&w.alice);
    let system = System::new(OperationId::parse("op-agent").unwrap(), w.clock.now());
    let (_, first) = block_on(alice.workstations().unwrap().start_pairing(&w.repo)).unwrap();
    let (_, second) = block_on(alice.workstations().unwrap().start_pairing(&w.repo)).unwrap();
    let (_, credential) = block_on(system.pair_agent(&w.repo, first.expose_secret(), "ws")).unwrap().unwrap();
    w.repo.with_data(|d| d.users.get_mut(&w.alice.id).unwrap().disabled = true);
    assert!(block_on(system.pair_agent(&w.repo, second.expose_secret(), "ws")).unwrap().is_none());
    assert!(block_on(system.authenticate_agent(&w.repo, credential.expose_secret())).unwrap().is_none());
    assert_eq!(w.repo.data().agents.len(), 1);
}

#[test]
fn a_note_given_with_an_action_is_in_its_audit_event() {
    let w = world();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let olga = w.principal(&w.olga).with_note(Some("  holder called: left it on the train \n")).unwrap();
    block_on(olga.operator().unwrap().suspend_device(&w.repo, card.id)).unwrap();
    let plain = w.principal(&w.olga).with_note(Some("   ")).unwrap();
    block_on(plain.operator().unwrap().resume_device(&w.repo, card.id)).unwrap();
    let data = w.repo.data();
    assert_eq!(data.audit.len(), 2);
    let after = data.audit[0].after.as_ref().unwrap();
    assert_eq!(after["note"], "holder called: left it on the train");
    assert_eq!(after["state"], "suspended");
    assert!(data.audit[1].after.as_ref().unwrap().get("note").is_none(), "a blank note is no note");
    assert_eq!(verify_chain(&data.audit), Ok(2));

    let long = "x".repeat(MAX_NOTE_CHARS + 1);
    let err = w.principal(&w.olga).with_note(Some(&long)).unwrap_err();
    assert_eq!(err.field, "note");
    let err = w.principal(&w.olga).with_note(Some("a\u{0}b")).unwrap_err();
    assert_eq!(err.field, "note");
    assert!(w.principal(&w.olga).with_note(Some(&"é".repeat(MAX_NOTE_CHARS))).is_ok());
}

#[test]
fn an_operator_finds_devices_by_device_or_certificate_serial() {
    use crate::serial::SerialSearch;
    let w = world();
    let mut key = w.device(&w.alice, DeviceKind::UsbKey, DeviceState::Active);
    key.serial = Some("12345678".into());
    w.repo.with_data(|d| {
        d.devices.insert(key.id, key.clone());
    });
    let card = w.device(&w.bob, DeviceKind::SmartCard, DeviceState::Active);
    let op_principal = w.principal(&w.olga);
    let op = op_principal.operator().unwrap();
    let find = |text: &str| {
        let search = SerialSearch::parse(text).unwrap();
        block_on(op.find_by_serial(&w.repo, &search, 10))
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(find("1234 5678"), [key.id], "decimal with a pasted space");
    assert_eq!(find("0x bc 61 4e"), [key.id], "the same number in hex");
    let cert_serial = format!("{}01", card.id.as_uuid().simple());
    let spaced: String = cert_serial
        .chars()
        .enumerate()
        .flat_map(|(i, c)| if i % 2 == 1 { vec![c, ' '] } else { vec![c] })
        .collect();
    assert_eq!(find(&spaced.to_uppercase()), [card.id], "a certificate serial, spaced and upper case");
    assert!(find("99999").is_empty());
    // A user without the operator role has no such search.
    assert!(w.principal(&w.alice).operator().is_err());
}

#[test]
fn cardholders_operators_and_administrators_pair_their_own_agents_and_auditors_none() {
    use secrecy::ExposeSecret;
    let w = world();
    let mut oscar = user("oscar", w.group.id, &[Role::Operator], w.clock.now());
    oscar.display_name = "Oscar".into();
    w.repo.with_data(|d| {
        d.users.insert(oscar.id, oscar.clone());
    });
    let system = System::new(OperationId::parse("op-agent").unwrap(), w.clock.now());
    let mut paired = Vec::new();
    for u in [&w.alice, &oscar, &w.adam] {
        let p = w.principal(u);
        let (_, code) = block_on(p.workstations().unwrap().start_pairing(&w.repo)).unwrap();
        let (agent, _) = block_on(system.pair_agent(&w.repo, code.expose_secret(), "ws")).unwrap().unwrap();
        assert_eq!(agent.user, u.id, "the agent is bound to the account that paired it");
        paired.push((u, agent));
    }
    assert_eq!(w.principal(&w.audrey).workstations().unwrap_err(), Forbidden::NoWorkstationRole);
    // Each sees and reaches only their own.
    for (u, own) in &paired {
        let p = w.principal(u);
        let view = p.workstations().unwrap();
        assert_eq!(block_on(view.agents(&w.repo)).unwrap(), std::slice::from_ref(own));
        for (other, theirs) in &paired {
            if other.id != u.id {
                let err = block_on(view.agent(&w.repo, theirs.id)).unwrap_err();
                assert!(matches!(err, DomainError::NotFound { kind: "agent", .. }), "{err}");
                let err = block_on(view.revoke_agent(&w.repo, theirs.id)).unwrap_err();
                assert!(matches!(err, DomainError::NotFound { kind: "agent", .. }), "{err}");
            }
        }
    }
    // An operator's ticket binds only to the operator's own agent, never a holder's.
    let card = w.device(&w.alice, DeviceKind::UsbKey, DeviceState::Active);
    w.repo.with_data(|d| {
        d.secrets.insert(card.id, crate::secrets::SealedCardSecrets::from_bytes(vec![1, 2, 3]));
    });
    let op_principal = w.principal(&oscar);
    let op = op_principal.operator().unwrap();
    let (job, _) = block_on(op.start_unlock(&w.repo, card.id, time::Duration::minutes(10))).unwrap();
    let bind = |agent: AgentId| AgentBinding { agent, reader: "Reader 0".into() };
    let err = block_on(op.agent_job_ticket(
        &w.repo,
        job.id,
        TicketPurpose::Run,
        time::Duration::minutes(10),
        &bind(paired[0].1.id),
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::NotFound { kind: "agent", .. }), "{err}");
    block_on(op.agent_job_ticket(
        &w.repo,
        job.id,
        TicketPurpose::Run,
        time::Duration::minutes(10),
        &bind(paired[1].1.id),
    ))
    .unwrap();
}

#[test]
fn an_operator_issues_in_person_under_the_holders_policy_with_the_holder_and_note_audited() {
    let w = world_with(Policy { max_devices: 1, ..Policy::default() });
    let olga = w.principal(&w.olga).with_note(Some("ticket 4711, ID checked")).unwrap();
    let op = olga.operator().unwrap();
    let card = CardInfo { kind: DeviceKind::UsbKey, model: "YubiKey 5".into(), serial: Some("777".into()) };

    // Only cardholders, enabled ones, under their own policy.
    let err = block_on(op.begin_issuance_for(&w.repo, w.audrey.id, card.clone())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid input: holder: audrey is not a cardholder (the user role); an administrator grants it"
    );
    let odd = CardInfo { model: "Acme Card".into(), ..card.clone() };
    let err = block_on(op.begin_issuance_for(&w.repo, w.alice.id, odd)).unwrap_err();
    assert_eq!(err.to_string(), "policy: card model \"Acme Card\" is not accepted by alice's group policy");
    assert!(w.repo.data().devices.is_empty() && w.repo.data().audit.is_empty(), "refusals change nothing");

    block_on(op.may_issue_to(&w.repo, w.alice.id)).unwrap();
    let (device, job) = block_on(op.begin_issuance_for(&w.repo, w.alice.id, card.clone())).unwrap();
    assert_eq!((device.state, device.owner), (DeviceState::Issuing, Some(w.alice.id)));
    assert_eq!((job.device, job.created_by), (device.id, Some(w.olga.id)));
    let data = w.repo.data();
    let olga_actor = Actor::User { id: w.olga.id, username: w.olga.username.clone() };
    let actions: Vec<_> = data.audit.iter().map(|e| (e.action.as_str(), &e.actor)).collect();
    assert_eq!(actions, [("device.begin_issuance", &olga_actor), ("job.create", &olga_actor)]);
    let begin = data.audit[0].after.as_ref().unwrap();
    assert_eq!(
        (begin["owner"].clone(), begin["note"].clone()),
        (json!(w.alice.id), json!("ticket 4711, ID checked"))
    );
    let created = data.audit[1].after.as_ref().unwrap();
    assert_eq!(created["holder"], json!(w.alice.id));
    assert_eq!(created["device"], json!(device.id));
    assert_eq!(created["note"], "ticket 4711, ID checked");

    // Alice is now at her limit: the refusal names her.
    let denied = PolicyDenied::HolderDeviceLimitReached { holder: "alice".into(), max: 1, current: 1 };
    let more = CardInfo { serial: Some("778".into()), ..card };
    let err = block_on(op.begin_issuance_for(&w.repo, w.alice.id, more)).unwrap_err();
    assert!(matches!(&err, DomainError::PolicyDenied(d) if *d == denied), "{err}");
    assert_eq!(
        err.to_string(),
        "policy: alice's group policy allows at most 1 smart cards or USB keys, and alice has 1"
    );
    assert!(
        matches!(block_on(op.may_issue_to(&w.repo, w.alice.id)), Err(DomainError::PolicyDenied(d)) if d == denied)
    );
    // A cardholder has no such call.
    assert!(w.principal(&w.alice).operator().is_err());
}

#[test]
fn unlock_wipe_and_replace_jobs_name_the_holder_and_the_note_and_replace_follows_the_holders_models() {
    let w = world();
    let olga = w.principal(&w.olga).with_note(Some("desk visit")).unwrap();
    let op = olga.operator().unwrap();
    let ttl = time::Duration::minutes(10);
    let card = w.device(&w.alice, DeviceKind::UsbKey, DeviceState::Active);
    w.repo.with_data(|d| {
        d.secrets.insert(card.id, crate::secrets::SealedCardSecrets::from_bytes(vec![1, 2, 3]));
    });
    let (unlock, _) = block_on(op.start_unlock(&w.repo, card.id, ttl)).unwrap();
    let event = w.repo.data().audit.last().unwrap().clone();
    assert_eq!(
        (event.action.as_str(), event.target.clone()),
        ("job.create", Some(format!("job:{}", unlock.id)))
    );
    let after = event.after.unwrap();
    assert_eq!((after["kind"].clone(), after["device"].clone()), (json!("unlock"), json!(card.id)));
    assert_eq!((after["holder"].clone(), after["note"].clone()), (json!(w.alice.id), json!("desk visit")));

    // Wipe is refused, with the reason, for a card in use.
    let before = w.repo.data();
    let err = block_on(op.start_wipe(&w.repo, card.id, ttl)).unwrap_err();
    assert!(err.to_string().contains("is active; terminate it before wiping it"), "{err}");
    assert_eq!(w.repo.data(), before);

    // The new card must be a model alice's policy accepts; then the old one is revoked.
    let odd = CardInfo { kind: DeviceKind::UsbKey, model: "Acme Card".into(), serial: None };
    let err =
        block_on(op.replace_device(&w.repo, card.id, RevocationReason::Superseded, odd, ttl)).unwrap_err();
    assert!(
        matches!(err, DomainError::PolicyDenied(PolicyDenied::HolderCardModelNotAccepted { .. })),
        "{err}"
    );
    assert_eq!(w.repo.data(), before, "a refused replacement revokes nothing");
    let new = CardInfo { kind: DeviceKind::UsbKey, model: "YubiKey 5".into(), serial: Some("9001".into()) };
    let (device, job, _) =
        block_on(op.replace_device(&w.repo, card.id, RevocationReason::Superseded, new, ttl)).unwrap();
    assert_eq!(w.stored(card.id).state, DeviceState::Revoked);
    assert_eq!((device.owner, device.state), (Some(w.alice.id), DeviceState::Issuing));
    let data = w.repo.data();
    let replace = data.audit.iter().find(|e| e.action == "device.replace").unwrap();
    assert_eq!(replace.after.as_ref().unwrap()["note"], "desk visit");
    let created = data.audit.iter().rev().find(|e| e.action == "job.create").unwrap();
    assert_eq!(created.target, Some(format!("job:{}", job.id)));
    assert_eq!(created.after.as_ref().unwrap()["holder"], json!(w.alice.id));
    assert_eq!(verify_chain(&data.audit), Ok(data.audit.len() as u64));
}

/// A certificate credential as the CA would sign it for an enrolling phone.
fn phone_certificate(at: OffsetDateTime, slot: CertSlot, serial: &str) -> Credential {
    Credential::new(
        crate::ids::DeviceId::new(),
        CredentialKind::Certificate {
            slot,
            profile: "mobile-device".into(),
            serial_hex: serial.into(),
            not_before: at,
            not_after: at + time::Duration::days(365),
            certificate_der: vec![0x30],
            attestation_der: None,
        },
        at,
    )
}

fn signed_in(w: &World, u: &User) -> crate::secrets::TokenHash {
    let (session, _cookie) = Session::start(u.id, time::Duration::hours(8), w.clock.now()).unwrap();
    let hash = session.token_hash;
    w.repo.with_data(|d| {
        d.sessions.push(session);
    });
    hash
}

#[test]
fn a_profile_code_enrols_one_mobile_once_and_the_holder_is_notified() {
    use secrecy::ExposeSecret;
    let w = world();
    let session = signed_in(&w, &w.alice);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let ten = time::Duration::minutes(10);
    let (code, secret) =
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, Some(session)))
            .unwrap();
    let secret = secret.expose_secret();
    let system = System::new(OperationId::parse("op-scep").unwrap(), w.clock.now());

    // The wrong kind, or a code nobody issued, changes nothing.
    let before = w.repo.data();
    let err = block_on(system.redeem_enrollment(&w.repo, secret, EnrollmentKind::DerivedPiv, "iPhone"))
        .unwrap_err();
    assert_eq!(err.to_string(), "the enrollment code is for a mobile profile, not a derived PIV credential");
    let err = block_on(system.redeem_enrollment(
        &w.repo,
        "A".repeat(40).as_str(),
        EnrollmentKind::MobileProfile,
        "iPhone",
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::WrongCode)), "{err}");
    assert_eq!(w.repo.data().devices, before.devices);
    assert_eq!(w.repo.data().audit.len(), before.audit.len());

    let redeemed =
        block_on(system.redeem_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "iPhone")).unwrap();
    assert_eq!(redeemed.code.id, code.id);
    assert_eq!((redeemed.device.state, redeemed.device.owner), (DeviceState::Enrolling, Some(w.alice.id)));
    let err = block_on(system.redeem_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "iPhone"))
        .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::AlreadyUsed(_))), "{err}");

    let in_progress =
        block_on(system.enrollment_in_progress(&w.repo, secret, EnrollmentKind::MobileProfile)).unwrap();
    assert_eq!(in_progress.device.id, redeemed.device.id);
    let mut certs = [phone_certificate(w.clock.now(), CertSlot::MobileDevice, "aa01")];
    let device = block_on(system.complete_enrollment(&w.repo, secret, &mut certs)).unwrap();
    assert_eq!(device.state, DeviceState::Active);
    assert_eq!((certs[0].state, certs[0].device), (CredentialState::Active, device.id));
    let data = w.repo.data();
    assert_eq!(data.enrollment_codes[&code.id].completed_at, Some(w.clock.now()));
    let actions: Vec<&str> = data.audit.iter().map(|e| e.action.as_str()).collect();
    for wanted in [
        "enrollment_code.issue",
        "device.register",
        "enrollment_code.redeem",
        "notification.credential_issued",
    ] {
        assert!(actions.contains(&wanted), "{wanted} missing from {actions:?}");
    }
    // Completed: the code can neither complete again nor start over.
    let err = block_on(system.complete_enrollment(&w.repo, secret, &mut certs)).unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::NotInProgress)), "{err}");
}

#[test]
fn codes_die_with_their_session_expire_and_respect_the_mobile_limit() {
    use secrecy::ExposeSecret;
    let w = world_with(Policy { max_mobiles: 1, ..Policy::default() });
    let session = signed_in(&w, &w.alice);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let ten = time::Duration::minutes(10);
    let start = || {
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, Some(session)))
    };
    let system = |w: &World| System::new(OperationId::parse("op-scep").unwrap(), w.clock.now());

    // Signing out ends the code.
    let (_, signed_out) = start().unwrap();
    w.repo.with_data(|d| {
        d.sessions.retain(|s| s.token_hash != session);
    });
    let err = block_on(system(&w).redeem_enrollment(
        &w.repo,
        signed_out.expose_secret(),
        EnrollmentKind::MobileProfile,
        "iPhone",
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::SessionEnded)), "{err}");

    // Expired.
    let (_, late) =
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None)).unwrap();
    w.clock.advance(ten);
    let err = block_on(system(&w).redeem_enrollment(
        &w.repo,
        late.expose_secret(),
        EnrollmentKind::MobileProfile,
        "iPhone",
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::Expired(_))), "{err}");
    assert!(w.repo.data().devices.is_empty());

    // One mobile at most: a second code is refused while the first enrolment is under way, and
    // works again once the abandoned enrolment is swept.
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let (_, first) =
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None)).unwrap();
    let (_, second) =
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None)).unwrap();
    block_on(system(&w).redeem_enrollment(
        &w.repo,
        first.expose_secret(),
        EnrollmentKind::MobileProfile,
        "iPhone",
    ))
    .unwrap();
    let err = block_on(system(&w).redeem_enrollment(
        &w.repo,
        second.expose_secret(),
        EnrollmentKind::MobileProfile,
        "iPad",
    ))
    .unwrap_err();
    assert!(
        matches!(err, DomainError::PolicyDenied(PolicyDenied::MobileLimitReached { max: 1, current: 1 })),
        "{err}"
    );
    let err = block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None))
        .unwrap_err();
    assert_eq!(err.to_string(), "policy: your group's policy allows at most 1 mobiles, and you have 1");
    // The portal's question gives the same answer, for either kind, and changes nothing.
    let before = w.repo.data();
    for kind in [EnrollmentKind::MobileProfile, EnrollmentKind::DerivedPiv] {
        let asked = block_on(me.may_add_mobile(&w.repo, kind)).unwrap_err();
        assert_eq!(asked.to_string(), err.to_string(), "{kind:?}");
    }
    assert_eq!(w.repo.data().audit.len(), before.audit.len());
    assert_eq!(block_on(system(&w).abandon_stale_enrolments(&w.repo)).unwrap(), 0, "not stale yet");
    w.clock.advance(MAX_CODE_LIFETIME + STALE_ENROLMENT_GRACE + time::Duration::seconds(1));
    assert_eq!(block_on(system(&w).abandon_stale_enrolments(&w.repo)).unwrap(), 1);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    block_on(me.may_add_mobile(&w.repo, EnrollmentKind::MobileProfile)).unwrap();
    block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None)).unwrap();

    // Policy off: refused at the start.
    let w = world_with(Policy { may_add_derived_piv: false, ..Policy::default() });
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let err = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_from_card(card.id),
        ten,
        None,
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::PolicyDenied(PolicyDenied::DerivedPivDisabled)), "{err}");
    let asked = block_on(me.may_add_mobile(&w.repo, EnrollmentKind::DerivedPiv)).unwrap_err();
    assert!(matches!(asked, DomainError::PolicyDenied(PolicyDenied::DerivedPivDisabled)), "{asked}");
    block_on(me.may_add_mobile(&w.repo, EnrollmentKind::MobileProfile)).unwrap();
}

#[test]
fn a_derived_code_needs_my_active_sponsor_card_and_links_the_mobile_to_it() {
    use secrecy::ExposeSecret;
    let w = world();
    let ten = time::Duration::minutes(10);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let bobs = w.device(&w.bob, DeviceKind::SmartCard, DeviceState::Active);
    let err = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_from_card(bobs.id),
        ten,
        None,
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::NotFound { .. }), "bob's card is not alice's to see: {err}");
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let (_, secret) = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_from_card(card.id),
        ten,
        None,
    ))
    .unwrap();
    let system = System::new(OperationId::parse("op-app").unwrap(), w.clock.now());
    let redeemed = block_on(system.redeem_enrollment(
        &w.repo,
        secret.expose_secret(),
        EnrollmentKind::DerivedPiv,
        "Pixel 9",
    ))
    .unwrap();
    assert_eq!(redeemed.device.linked(LinkKind::DerivedFrom).collect::<Vec<_>>(), [card.id]);
}

#[test]
fn a_card_of_an_imported_root_sponsors_by_its_certificate_and_is_named_in_the_audit() {
    use secrecy::ExposeSecret;
    let w = world();
    let ten = time::Duration::minutes(10);
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let agency = ExternalSponsor::new("CN=Agency PIV CA,O=Agency,C=US", "4d2e01").unwrap();
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);

    // One sponsor: a Lanyard card and an imported one together are refused, nothing stored.
    let both =
        EnrollmentPurpose::DerivedPiv { sponsor: Some(card.id), external_sponsor: Some(agency.clone()) };
    let before = w.repo.data();
    let err = block_on(me.start_mobile_enrollment(&w.repo, both, ten, None)).unwrap_err();
    assert!(matches!(&err, DomainError::Validation(v) if v.field == "sponsor"), "{err}");
    // Names that could not come from a certificate are refused too.
    let forged = ExternalSponsor { issuer: "CN=x".into(), serial_hex: "not hex".into() };
    let err = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_from_external(forged),
        ten,
        None,
    ))
    .unwrap_err();
    assert!(matches!(&err, DomainError::Validation(v) if v.field == "external_sponsor.serial_hex"), "{err}");
    assert_eq!(w.repo.data(), before, "refusals change nothing");

    // The imported card satisfies the policy's sponsor step.
    let (code, secret) = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_from_external(agency.clone()),
        ten,
        None,
    ))
    .unwrap();
    assert_eq!(
        w.repo.data().enrollment_codes[&code.id].purpose,
        EnrollmentPurpose::derived_from_external(agency.clone())
    );
    let system = System::new(OperationId::parse("op-app").unwrap(), w.clock.now());
    let redeemed = block_on(system.redeem_enrollment(
        &w.repo,
        secret.expose_secret(),
        EnrollmentKind::DerivedPiv,
        "Pixel 9",
    ))
    .unwrap();
    assert_eq!(redeemed.device.owner, Some(w.alice.id));
    assert!(redeemed.device.links.is_empty(), "no Lanyard device to link to");
    let data = w.repo.data();
    let register = data
        .audit
        .iter()
        .find(|e| e.action == "device.register" && e.target == Some(format!("device:{}", redeemed.device.id)))
        .expect("the mobile's registration is audited");
    let after = register.after.as_ref().unwrap();
    assert_eq!(after["external_sponsor"]["issuer"], "CN=Agency PIV CA,O=Agency,C=US");
    assert_eq!(after["external_sponsor"]["serial_hex"], "4d2e01");

    // A Lanyard card's mobile names no external sponsor.
    let (_, secret) = block_on(me.start_mobile_enrollment(
        &w.repo,
        EnrollmentPurpose::derived_from_card(card.id),
        ten,
        None,
    ))
    .unwrap();
    let linked = block_on(system.redeem_enrollment(
        &w.repo,
        secret.expose_secret(),
        EnrollmentKind::DerivedPiv,
        "iPhone",
    ))
    .unwrap();
    let data = w.repo.data();
    let register = data
        .audit
        .iter()
        .find(|e| e.action == "device.register" && e.target == Some(format!("device:{}", linked.device.id)))
        .unwrap();
    assert!(register.after.as_ref().unwrap()["external_sponsor"].is_null());
}

#[test]
fn derived_mobiles_follow_the_account_not_the_card() {
    let w = world();
    let olga = w.principal(&w.olga);
    let op = olga.operator().unwrap();
    let link = |phone: DeviceId, card: DeviceId| {
        w.repo.with_data(|d| {
            if let Some(p) = d.devices.get_mut(&phone) {
                p.links.push(DeviceLink { kind: LinkKind::DerivedFrom, target: card });
            }
        })
    };
    // A damaged card (routine replacement) keeps what it sponsored, even yesterday.
    let card = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let phone = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    link(phone.id, card.id);
    block_on(op.mark_device_damaged(&w.repo, card.id)).unwrap();
    assert_eq!(w.stored(phone.id).state, DeviceState::Active);

    // A policy without the loss rule keeps them when the card is lost.
    let lost = w.device(&w.alice, DeviceKind::SmartCard, DeviceState::Active);
    let kept = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    link(kept.id, lost.id);
    w.repo.with_data(|d| {
        if let Some(g) = d.groups.get_mut(&w.group.id) {
            g.policy.derived_revoke_on_card_loss = false;
        }
    });
    block_on(op.mark_device_lost(&w.repo, lost.id)).unwrap();
    assert_eq!(w.stored(kept.id).state, DeviceState::Active);

    // Disabling the account revokes every derived mobile, and nothing else of it.
    let profile_phone = w.device(&w.alice, DeviceKind::Mobile, DeviceState::Active);
    let bobs = w.device(&w.bob, DeviceKind::Mobile, DeviceState::Active);
    link(bobs.id, card.id);
    let adam = w.principal(&w.adam);
    block_on(adam.admin().unwrap().set_disabled(&w.repo, w.alice.id, true)).unwrap();
    for id in [phone.id, kept.id] {
        let d = w.stored(id);
        assert_eq!(
            (d.state, d.revocation_reason),
            (DeviceState::Revoked, Some(RevocationReason::PrivilegeWithdrawn))
        );
    }
    assert_eq!(w.stored(profile_phone.id).state, DeviceState::Active, "not a derived credential");
    assert_eq!(w.stored(bobs.id).state, DeviceState::Active, "bob's account is fine");
    let audit = w.repo.data().audit;
    let disable = audit.iter().position(|e| e.action == "user.disable").unwrap();
    assert_eq!(audit[disable + 1..].iter().filter(|e| e.action == "device.revoke").count(), 2);
}

#[test]
fn preview_enrollment_answers_what_redeeming_would_and_changes_nothing() {
    use secrecy::ExposeSecret;
    let w = world();
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let ten = time::Duration::minutes(10);
    let (code, secret) =
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None)).unwrap();
    let secret = secret.expose_secret();
    let system = System::new(OperationId::parse("op-preview").unwrap(), w.clock.now());

    let before = w.repo.data();
    let preview =
        block_on(system.preview_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "Phone")).unwrap();
    assert_eq!(preview.code.id, code.id);
    assert_eq!((preview.holder.id, preview.device.owner), (w.alice.id, Some(w.alice.id)));
    assert_eq!((preview.device.kind, preview.device.state), (DeviceKind::Mobile, DeviceState::Enrolling));
    // Twice, and with the wrong kind or a wrong code: nothing stored, nothing audited.
    block_on(system.preview_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "Phone")).unwrap();
    let err = block_on(system.preview_enrollment(&w.repo, secret, EnrollmentKind::DerivedPiv, "Phone"))
        .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(_)), "{err}");
    let err = block_on(system.preview_enrollment(
        &w.repo,
        "B".repeat(40).as_str(),
        EnrollmentKind::MobileProfile,
        "Phone",
    ))
    .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::WrongCode)), "{err}");
    let after = w.repo.data();
    assert_eq!(after.devices, before.devices);
    assert_eq!(after.enrollment_codes, before.enrollment_codes);
    assert_eq!(after.audit.len(), before.audit.len());

    // The code still redeems, and the device the preview showed was never stored.
    let redeemed =
        block_on(system.redeem_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "Phone")).unwrap();
    assert!(!before.devices.contains_key(&preview.device.id));
    assert_eq!(w.repo.data().devices.len(), before.devices.len() + 1);
    // Once used, the preview refuses as redeeming would.
    let err = block_on(system.preview_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "Phone"))
        .unwrap_err();
    assert!(matches!(err, DomainError::Enrollment(EnrollmentError::AlreadyUsed(_))), "{err}");
    assert_eq!(w.repo.data().devices[&redeemed.device.id].state, DeviceState::Enrolling);
}

/// Alice's mobile enrolled with a profile code: the mobile, and its Active certificate.
fn enrolled_mobile(w: &World, serial: &str) -> (Device, Credential) {
    use secrecy::ExposeSecret;
    let alice = w.principal(&w.alice);
    let me = alice.self_service().unwrap();
    let ten = time::Duration::minutes(10);
    let (_, secret) =
        block_on(me.start_mobile_enrollment(&w.repo, EnrollmentPurpose::MobileProfile, ten, None)).unwrap();
    let system = System::new(OperationId::parse("op-enrol").unwrap(), w.clock.now());
    let secret = secret.expose_secret();
    block_on(system.redeem_enrollment(&w.repo, secret, EnrollmentKind::MobileProfile, "Phone")).unwrap();
    let mut certs = [phone_certificate(w.clock.now(), CertSlot::MobileDevice, serial)];
    let device = block_on(system.complete_enrollment(&w.repo, secret, &mut certs)).unwrap();
    let [cert] = certs;
    (device, cert)
}

#[test]
fn mobile_renewal_names_the_active_mobile_and_changes_nothing_until_recorded() {
    let w = world();
    let (device, cert) = enrolled_mobile(&w, "bb01");
    let CredentialKind::Certificate { certificate_der, .. } = &cert.kind;
    let system = System::new(OperationId::parse("op-renew").unwrap(), w.clock.now());

    let before = w.repo.data();
    let renewal = block_on(system.mobile_renewal(&w.repo, "bb01", certificate_der)).unwrap();
    assert_eq!(
        (renewal.credential.id, renewal.device.id, renewal.holder.id),
        (cert.id, device.id, w.alice.id)
    );
    // Another DER under the same serial, or a serial Lanyard never issued: not its certificate.
    let err = block_on(system.mobile_renewal(&w.repo, "bb01", &[0x30, 0x00])).unwrap_err();
    assert!(err.to_string().contains("not signed by a certificate this server issued"), "{err}");
    let err = block_on(system.mobile_renewal(&w.repo, "ffff", certificate_der)).unwrap_err();
    assert!(err.to_string().contains("not signed by a certificate this server issued"), "{err}");
    let after = w.repo.data();
    assert_eq!((after.credentials, after.audit.len()), (before.credentials.clone(), before.audit.len()));

    // Recorded: the new certificate Active on the same mobile, the old one superseded, audited.
    let mut new = phone_certificate(w.clock.now(), CertSlot::MobileDevice, "bb02");
    new.device = device.id;
    block_on(system.record_mobile_renewal(&w.repo, cert.id, &mut new)).unwrap();
    let data = w.repo.data();
    assert_eq!(data.credentials[&cert.id].state, CredentialState::Superseded);
    assert_eq!(
        (data.credentials[&new.id].state, data.credentials[&new.id].device),
        (CredentialState::Active, device.id)
    );
    let actions: Vec<&str> = data.audit[before.audit.len()..].iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"credential.issue") && actions.contains(&"credential.supersede"),
        "{actions:?}"
    );

    // The superseded certificate renews no more, neither asked nor recorded.
    let err = block_on(system.mobile_renewal(&w.repo, "bb01", certificate_der)).unwrap_err();
    assert!(err.to_string().contains("superseded"), "{err}");
    let mut again = phone_certificate(w.clock.now(), CertSlot::MobileDevice, "bb03");
    again.device = device.id;
    let before = w.repo.data();
    let err = block_on(system.record_mobile_renewal(&w.repo, cert.id, &mut again)).unwrap_err();
    assert!(err.to_string().contains("superseded"), "{err}");
    assert_eq!(w.repo.data().credentials, before.credentials);
}

#[test]
fn mobile_renewal_refuses_an_expired_certificate_another_device_and_a_disabled_holder() {
    let w = world();
    let (device, cert) = enrolled_mobile(&w, "cc01");
    let CredentialKind::Certificate { certificate_der, .. } = &cert.kind;

    // A new certificate for some other device is not recorded.
    let system = System::new(OperationId::parse("op-renew").unwrap(), w.clock.now());
    let mut stray = phone_certificate(w.clock.now(), CertSlot::MobileDevice, "cc02");
    let before = w.repo.data();
    let err = block_on(system.record_mobile_renewal(&w.repo, cert.id, &mut stray)).unwrap_err();
    assert!(err.to_string().contains("another device"), "{err}");
    assert_eq!(w.repo.data().credentials, before.credentials);

    // The holder disabled: refused.
    w.repo.with_data(|d| {
        if let Some(u) = d.users.get_mut(&w.alice.id) {
            u.disabled = true;
        }
    });
    let err = block_on(system.mobile_renewal(&w.repo, "cc01", certificate_der)).unwrap_err();
    assert!(err.to_string().contains("disabled"), "{err}");
    w.repo.with_data(|d| {
        if let Some(u) = d.users.get_mut(&w.alice.id) {
            u.disabled = false;
        }
    });

    // After its not-after: refused, and the mobile stays as it was.
    w.clock.advance(time::Duration::days(366));
    let later = System::new(OperationId::parse("op-renew").unwrap(), w.clock.now());
    let err = block_on(later.mobile_renewal(&w.repo, "cc01", certificate_der)).unwrap_err();
    assert!(err.to_string().contains("not valid now"), "{err}");
    assert_eq!(w.repo.data().devices[&device.id].state, DeviceState::Active);
}

/// A holder registers a passkey for the key their own issuance job is issuing while its card
/// session waits for the device PIN (flow B); nobody else can, not for another device, not during
/// an operator's in-person issuance, and not once the job is over unless the key is Active. The
/// passkey signs in only once the key is Active.
#[test]
fn a_passkey_is_registered_during_the_holders_own_issuance_only() {
    use crate::authz::{NewPasskey, PasskeyRefused, PasskeySignIn};
    use crate::secrets::TokenHash;
    let w = world();
    let (alice, bob, olga) = (w.principal(&w.alice), w.principal(&w.bob), w.principal(&w.olga));
    let me = alice.self_service().unwrap();
    let card = CardInfo { kind: DeviceKind::UsbKey, model: "YubiKey 5".into(), serial: Some("77".into()) };
    let (device, job) = block_on(me.begin_issuance(&w.repo, card)).unwrap();
    let live = Some(job.id);
    let session = TokenHash::of("alice's session");
    let set_job = |state: JobState| w.repo.with_data(|d| d.jobs.get_mut(&job.id).unwrap().state = state);
    let set_device =
        |state: DeviceState| w.repo.with_data(|d| d.devices.get_mut(&device.id).unwrap().state = state);
    let refused = |r: Result<RegistrationStart, DomainError>| match r {
        Err(DomainError::Conflict(m)) => assert!(m.contains("Active security keys"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Without a live session at the device PIN, a key that is not Active gets none.
    set_job(JobState::Running);
    refused(block_on(me.start_passkey_registration(&w.repo, device.id, session, None)));
    // The card work is done and the session waits for the device PIN: the key is Pending.
    set_job(JobState::Succeeded);
    set_device(DeviceState::Pending);
    // Bob cannot, for Alice's key, even naming her job (it is not his: NotFound).
    let err =
        block_on(bob.self_service().unwrap().start_passkey_registration(&w.repo, device.id, session, live))
            .unwrap_err();
    assert!(is_not_found(&err, device.id), "{err}");
    // Alice can.
    let before = w.repo.data().audit.len();
    let start = block_on(me.start_passkey_registration(&w.repo, device.id, session, live)).unwrap();
    assert_eq!(start.device.id, device.id);
    let (redeemed, _) =
        block_on(me.redeem_registration_challenge(&w.repo, session, &start.challenge)).unwrap();
    let new = NewPasskey {
        credential_id: vec![0x1b; 32],
        rp_id: "lanyard.example".into(),
        public_key: vec![0xa5],
        sign_count: 0,
        aaguid: [0; 16],
        attestation: "none".into(),
    };
    let err =
        block_on(bob.self_service().unwrap().register_passkey(&w.repo, redeemed, &new, live)).unwrap_err();
    assert!(is_not_found(&err, device.id), "{err}");
    let passkey = block_on(me.register_passkey(&w.repo, redeemed, &new, live)).unwrap();
    assert_eq!((passkey.device, passkey.user), (device.id, w.alice.id));
    let data = w.repo.data();
    let events: Vec<_> = data.audit[before..].iter().filter(|e| e.action == "passkey.register").collect();
    assert_eq!(events.len(), 1);
    let after = events[0].after.as_ref().unwrap();
    assert_eq!(after["issuance_job"], serde_json::json!(job.id));
    assert_eq!(after["device_state"], "pending");
    // Listed on the device, but not signing in while the key is Pending.
    let mine = block_on(me.passkeys(&w.repo)).unwrap();
    assert_eq!((mine.len(), mine[0].usable, mine[0].device_state), (1, false, DeviceState::Pending));
    let sign_in = |count: u32| {
        let s = PasskeySignIn::new(&w.repo, OperationId::random(), w.clock.now());
        let candidate = block_on(s.candidate(&[0x1b; 32])).unwrap().unwrap();
        let (session, _) =
            Session::start(candidate.user.id, time::Duration::minutes(30), w.clock.now()).unwrap();
        block_on(s.complete(&candidate, count, "lanyard.example", &session)).unwrap()
    };
    assert_eq!(sign_in(1), Err(PasskeyRefused::DeviceNotActive(DeviceState::Pending)));

    // Another key of Alice's, issued in person by an operator: not during that job, even named.
    let other = w.device(&w.alice, DeviceKind::UsbKey, DeviceState::Issuing);
    let mut theirs = Job::new(JobKind::Issuance, other.id, Some(w.olga.id), w.clock.now());
    theirs.state = JobState::Running;
    w.repo.with_data(|d| d.jobs.insert(theirs.id, theirs.clone()));
    refused(block_on(me.start_passkey_registration(&w.repo, other.id, session, Some(theirs.id))));
    let err = block_on(olga.self_service().unwrap().start_passkey_registration(
        &w.repo,
        other.id,
        session,
        Some(theirs.id),
    ))
    .unwrap_err();
    assert!(is_not_found(&err, other.id), "{err}");
    // Nor for the other key with this key's job.
    refused(block_on(me.start_passkey_registration(&w.repo, other.id, session, live)));

    // A challenge taken while the session waited is refused once it is over (the holder kept
    // the initial PIN or the time ran out: no live session), the key Pending.
    let start = block_on(me.start_passkey_registration(&w.repo, device.id, session, live)).unwrap();
    let (redeemed, _) =
        block_on(me.redeem_registration_challenge(&w.repo, session, &start.challenge)).unwrap();
    let second = NewPasskey { credential_id: vec![0x2c; 32], ..new.clone() };
    let before = w.repo.data();
    let err = block_on(me.register_passkey(&w.repo, redeemed, &second, None)).unwrap_err();
    assert!(matches!(&err, DomainError::Conflict(m) if m.contains("pending")), "{err}");
    assert_eq!(w.repo.data().passkeys, before.passkeys, "nothing registered");
    // A failed or undone job names no live session either.
    for state in [JobState::Failed, JobState::RolledBack] {
        set_job(state);
        refused(block_on(me.start_passkey_registration(&w.repo, device.id, session, live)));
    }
    // Once the key is Active (an operator activated it), the holder registers as ever, and the
    // passkey registered during issuance signs in.
    set_device(DeviceState::Active);
    block_on(me.start_passkey_registration(&w.repo, device.id, session, None)).unwrap();
    assert_eq!(sign_in(2).unwrap().id, w.alice.id);
}
