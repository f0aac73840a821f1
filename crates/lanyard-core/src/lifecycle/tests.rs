use super::*;
use crate::ids::{DeviceId, UserId};
use crate::model::{CertSlot, CredentialKind, DeviceKind, DeviceLink, LinkKind};
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);
const T1: OffsetDateTime = datetime!(2025-01-02 00:00 UTC);

/// The legal device transitions, written out independently of `DEVICE_TRANSITIONS` (one per
/// line: class, from, action, to; `*` = the remembered state).
const DEVICE_SPEC: &str = "
token available begin_issuance issuing
token available terminate terminated
token issuing personalized pending
token issuing issuance_failed failed
token pending activate active
token pending suspend suspended
token pending revoke revoked
token pending mark_lost revoked
token pending mark_stolen revoked
token pending mark_damaged revoked
token pending terminate terminated
token active suspend suspended
token active revoke revoked
token active mark_lost revoked
token active mark_stolen revoked
token active mark_damaged revoked
token active terminate terminated
token suspended resume *
token suspended revoke revoked
token suspended mark_lost revoked
token suspended mark_stolen revoked
token suspended mark_damaged revoked
token suspended terminate terminated
token revoked terminate terminated
token terminated recycle available
token failed recycle available
token failed terminate terminated
mobile enrolling enrolled active
mobile enrolling delete deleted
mobile active suspend suspended
mobile active revoke revoked
mobile active mark_lost revoked
mobile active mark_stolen revoked
mobile active mark_damaged revoked
mobile active delete deleted
mobile suspended resume *
mobile suspended revoke revoked
mobile suspended mark_lost revoked
mobile suspended mark_stolen revoked
mobile suspended mark_damaged revoked
mobile suspended delete deleted
mobile revoked delete deleted
";

const CREDENTIAL_SPEC: &str = "
pending activate active
pending hold on_hold
pending revoke revoked
pending expire expired
pending supersede superseded
active hold on_hold
active revoke revoked
active expire expired
active supersede superseded
on_hold release *
on_hold revoke revoked
on_hold expire expired
on_hold supersede superseded
";

fn spec_lookup(spec: &str, key: &[&str]) -> Option<String> {
    spec.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() == key.len() + 1 && w[..key.len()] == *key)
        .map(|w| w[key.len()].to_owned())
}

/// Every action, with every revocation reason for `Revoke`.
fn all_device_actions() -> Vec<DeviceAction> {
    use DeviceAction::*;
    let mut v = vec![
        BeginIssuance,
        IssuanceFailed,
        Personalized,
        Activate,
        Enrolled,
        Suspend,
        Resume,
        MarkLost,
        MarkStolen,
        MarkDamaged,
        Terminate,
        Recycle,
        Delete,
    ];
    v.extend(RevocationReason::ALL.iter().map(|&r| Revoke(r)));
    assert_eq!(
        v.iter().map(|a| a.kind()).collect::<std::collections::BTreeSet<_>>().len(),
        DeviceActionKind::ALL.len(),
        "every action kind is exercised"
    );
    v
}

fn all_credential_actions() -> Vec<CredentialAction> {
    use CredentialAction::*;
    let mut v = vec![Activate, Hold, Release, Expire, Supersede];
    v.extend(RevocationReason::ALL.iter().map(|&r| Revoke(r)));
    v
}

fn device(kind: DeviceKind, state: DeviceState, suspended_from: Option<DeviceState>) -> Device {
    let mut d = Device::new(kind, "YubiKey 5", T0).unwrap();
    d.owner = Some(UserId::new());
    d.serial = Some("12345678".into());
    d.card_guid = Some([7; 16]);
    d.links.push(DeviceLink { kind: LinkKind::Replaces, target: DeviceId::new() });
    d.state = state;
    d.suspended_from = suspended_from;
    d
}

/// The states a suspended device of `class` can believably remember.
fn suspendable(class: DeviceClass) -> Vec<DeviceState> {
    DeviceState::ALL
        .iter()
        .copied()
        .filter(|&s| device_target(class, s, DeviceActionKind::Suspend).is_some())
        .collect()
}

#[test]
fn every_device_state_and_action_pair() {
    let mut legal = 0;
    let mut illegal = 0;
    for kind in [DeviceKind::SmartCard, DeviceKind::UsbKey, DeviceKind::Mobile] {
        let class = kind.class();
        for &state in DeviceState::ALL {
            // A suspended device is tried with every state it could remember.
            let memories: Vec<Option<DeviceState>> = if state == DeviceState::Suspended {
                suspendable(class).into_iter().map(Some).collect()
            } else {
                vec![None]
            };
            for remembered in memories {
                for action in all_device_actions() {
                    let mut d = device(kind, state, remembered);
                    let before = d.clone();
                    let expected =
                        spec_lookup(DEVICE_SPEC, &[class.as_str(), state.as_str(), action.kind().as_str()]);
                    let result = apply_device(&mut d, action, T1);
                    match expected {
                        Some(to) => {
                            legal += 1;
                            let to = if to == "*" { remembered.unwrap() } else { to.parse().unwrap() };
                            assert_eq!(result, Ok(Transition { from: state, to }), "{kind} {state} {action}");
                            assert_eq!(d.state, to);
                            assert_eq!(d.updated_at, T1);
                            assert_eq!(d.created_at, before.created_at);
                            assert_eq!(d.id, before.id);
                            let expect_from = (action == DeviceAction::Suspend).then_some(state);
                            assert_eq!(d.suspended_from, expect_from, "{kind} {state} {action}");
                            match action.revocation_reason() {
                                Some(r) => assert_eq!(d.revocation_reason, Some(r)),
                                None if action == DeviceAction::Recycle => {
                                    assert_eq!(d.revocation_reason, None);
                                    assert_eq!(d.owner, None);
                                    assert_eq!(d.card_guid, None);
                                    assert!(d.links.is_empty());
                                }
                                None => {
                                    assert_eq!(d.revocation_reason, before.revocation_reason);
                                    assert_eq!(d.owner, before.owner);
                                    assert_eq!(d.links, before.links);
                                }
                            }
                        }
                        None => {
                            illegal += 1;
                            assert_eq!(
                                result,
                                Err(LifecycleError::IllegalTransition { class, from: state, action }),
                                "{kind} {state} {action}"
                            );
                            assert_eq!(d, before, "{kind} {state} {action} changed the device");
                        }
                    }
                }
            }
        }
    }
    // The spec lines and the table rows are the same set.
    let spec_rows = DEVICE_SPEC.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(spec_rows, DEVICE_TRANSITIONS.len());
    assert!(legal > 0 && illegal > legal);
}

#[test]
fn device_table_has_no_duplicate_rows() {
    for (i, a) in DEVICE_TRANSITIONS.iter().enumerate() {
        for b in &DEVICE_TRANSITIONS[i + 1..] {
            assert!((a.0, a.1, a.2) != (b.0, b.1, b.2), "duplicate row {a:?}");
        }
    }
}

#[test]
fn suspend_resume_round_trips_from_active_and_pending() {
    for (kind, from) in [
        (DeviceKind::SmartCard, DeviceState::Active),
        (DeviceKind::UsbKey, DeviceState::Pending),
        (DeviceKind::Mobile, DeviceState::Active),
    ] {
        let mut d = device(kind, from, None);
        let original = d.clone();
        let t = apply_device(&mut d, DeviceAction::Suspend, T1).unwrap();
        assert_eq!(t, Transition { from, to: DeviceState::Suspended });
        assert_eq!(d.suspended_from, Some(from));
        // A second suspend is an error, not a no-op.
        assert!(matches!(
            apply_device(&mut d.clone(), DeviceAction::Suspend, T1),
            Err(LifecycleError::IllegalTransition { .. })
        ));
        let t = apply_device(&mut d, DeviceAction::Resume, T1).unwrap();
        assert_eq!(t, Transition { from: DeviceState::Suspended, to: from });
        assert_eq!(d, Device { updated_at: T1, ..original });
    }
}

#[test]
fn resume_refuses_to_guess_a_lost_memory() {
    for remembered in [None, Some(DeviceState::Revoked), Some(DeviceState::Available)] {
        let mut d = device(DeviceKind::SmartCard, DeviceState::Suspended, remembered);
        let before = d.clone();
        assert_eq!(
            apply_device(&mut d, DeviceAction::Resume, T1),
            Err(LifecycleError::BadSuspendedFrom(remembered))
        );
        assert_eq!(d, before);
    }
}

#[test]
fn lost_stolen_damaged_revoke_with_their_reason() {
    for (action, reason, crl) in [
        (DeviceAction::MarkLost, RevocationReason::Lost, 1),
        (DeviceAction::MarkStolen, RevocationReason::Stolen, 1),
        (DeviceAction::MarkDamaged, RevocationReason::Damaged, 5),
    ] {
        let mut d = device(DeviceKind::SmartCard, DeviceState::Active, None);
        apply_device(&mut d, action, T1).unwrap();
        assert_eq!((d.state, d.revocation_reason), (DeviceState::Revoked, Some(reason)));
        assert_eq!(reason.crl_reason_code(), crl);
        assert_eq!(action.credential_effect(), Some(CredentialAction::Revoke(reason)));
        assert_eq!(action.revokes_recent_derived(), action != DeviceAction::MarkDamaged);
    }
}

#[test]
fn error_messages_are_precise() {
    let mut d = device(DeviceKind::SmartCard, DeviceState::Revoked, None);
    let err = apply_device(&mut d, DeviceAction::Resume, T1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "illegal transition: resume is not allowed for a token device in state revoked"
    );
    let mut m = device(DeviceKind::Mobile, DeviceState::Deleted, None);
    let err = apply_device(&mut m, DeviceAction::Revoke(RevocationReason::KeyCompromise), T1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "illegal transition: revoke (key_compromise) is not allowed for a mobile device in state deleted"
    );
}

fn credential(state: CredentialState, held_from: Option<CredentialState>) -> Credential {
    let kind = CredentialKind::Certificate {
        slot: CertSlot::PivAuthentication,
        profile: "piv-auth".into(),
        serial_hex: "01ab".into(),
        not_before: T0,
        not_after: T1,
        certificate_der: vec![0x30, 0x00],
        attestation_der: None,
    };
    let mut c = Credential::new(DeviceId::new(), kind, T0);
    c.state = state;
    c.held_from = held_from;
    if state == CredentialState::OnHold {
        c.revoked_at = Some(T0);
    }
    c
}

#[test]
fn every_credential_state_and_action_pair() {
    for &state in CredentialState::ALL {
        let memories: Vec<Option<CredentialState>> = if state == CredentialState::OnHold {
            vec![Some(CredentialState::Pending), Some(CredentialState::Active)]
        } else {
            vec![None]
        };
        for remembered in memories {
            for action in all_credential_actions() {
                let mut c = credential(state, remembered);
                let before = c.clone();
                let result = apply_credential(&mut c, action, T1);
                match spec_lookup(CREDENTIAL_SPEC, &[state.as_str(), action.kind().as_str()]) {
                    Some(to) => {
                        let to = if to == "*" { remembered.unwrap() } else { to.parse().unwrap() };
                        assert_eq!(result, Ok(Transition { from: state, to }), "{state} {action}");
                        assert_eq!(c.state, to);
                        assert_eq!(c.updated_at, T1);
                        assert_eq!(c.held_from, (action == CredentialAction::Hold).then_some(state));
                        match action {
                            CredentialAction::Hold => assert_eq!(c.revoked_at, Some(T1)),
                            CredentialAction::Release => assert_eq!(c.revoked_at, None),
                            CredentialAction::Revoke(r) => {
                                assert_eq!(c.revocation_reason, Some(r));
                                let since = if state == CredentialState::OnHold { T0 } else { T1 };
                                assert_eq!(c.revoked_at, Some(since));
                            }
                            _ => assert_eq!(c.revoked_at, before.revoked_at),
                        }
                    }
                    None => {
                        assert_eq!(
                            result,
                            Err(LifecycleError::IllegalCredentialTransition { from: state, action }),
                            "{state} {action}"
                        );
                        assert_eq!(c, before);
                    }
                }
            }
        }
    }
    assert_eq!(
        CREDENTIAL_SPEC.lines().filter(|l| !l.trim().is_empty()).count(),
        CREDENTIAL_TRANSITIONS.len()
    );
}

#[test]
fn hold_release_round_trips() {
    for from in [CredentialState::Pending, CredentialState::Active] {
        let mut c = credential(from, None);
        let original = c.clone();
        apply_credential(&mut c, CredentialAction::Hold, T1).unwrap();
        assert_eq!((c.state, c.held_from, c.revoked_at), (CredentialState::OnHold, Some(from), Some(T1)));
        apply_credential(&mut c, CredentialAction::Release, T1).unwrap();
        assert_eq!(c, Credential { updated_at: T1, ..original });
    }
    let mut c = credential(CredentialState::OnHold, None);
    assert_eq!(
        apply_credential(&mut c, CredentialAction::Release, T1),
        Err(LifecycleError::BadHeldFrom(None))
    );
}

#[test]
fn device_actions_map_to_credential_actions() {
    use CredentialAction as C;
    use DeviceAction as D;
    let cessation = Some(C::Revoke(RevocationReason::CessationOfOperation));
    assert_eq!(D::Suspend.credential_effect(), Some(C::Hold));
    assert_eq!(D::Resume.credential_effect(), Some(C::Release));
    assert_eq!(D::Activate.credential_effect(), Some(C::Activate));
    assert_eq!(D::Terminate.credential_effect(), cessation);
    assert_eq!(D::Delete.credential_effect(), cessation);
    assert_eq!(D::IssuanceFailed.credential_effect(), cessation);
    assert_eq!(
        D::Revoke(RevocationReason::AffiliationChanged).credential_effect(),
        Some(C::Revoke(RevocationReason::AffiliationChanged))
    );
    assert_eq!(D::Personalized.credential_effect(), None);
    assert!(!D::Suspend.revokes_recent_derived());
    assert!(!D::Terminate.revokes_recent_derived());
    assert!(!D::Revoke(RevocationReason::Superseded).revokes_recent_derived());
    assert!(D::Revoke(RevocationReason::KeyCompromise).revokes_recent_derived());
}

#[test]
fn allowed_actions_for_the_ui() {
    let token_active: Vec<_> = allowed_device_actions(DeviceClass::Token, DeviceState::Active).collect();
    assert_eq!(
        token_active,
        [
            DeviceActionKind::Suspend,
            DeviceActionKind::Revoke,
            DeviceActionKind::MarkLost,
            DeviceActionKind::MarkStolen,
            DeviceActionKind::MarkDamaged,
            DeviceActionKind::Terminate
        ]
    );
    assert_eq!(allowed_device_actions(DeviceClass::Mobile, DeviceState::Deleted).count(), 0);
}

#[test]
fn actions_serialise_with_their_reason() {
    let json = serde_json::to_string(&DeviceAction::Revoke(RevocationReason::Stolen)).unwrap();
    assert_eq!(json, r#"{"action":"revoke","reason":"stolen"}"#);
    assert_eq!(serde_json::to_string(&DeviceAction::Suspend).unwrap(), r#"{"action":"suspend"}"#);
}

#[test]
fn docs_show_the_current_tables() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/domain.md");
    let docs = std::fs::read_to_string(path).expect("docs/domain.md exists");
    assert!(
        docs.contains(&device_table_markdown()),
        "docs/domain.md does not contain the current device table; paste this:\n{}",
        device_table_markdown()
    );
    assert!(
        docs.contains(&credential_table_markdown()),
        "docs/domain.md does not contain the current credential table; paste this:\n{}",
        credential_table_markdown()
    );
}
