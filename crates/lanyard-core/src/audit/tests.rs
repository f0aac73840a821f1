use super::*;
use proptest::prelude::*;
use serde_json::json;
use time::macros::datetime;

fn op() -> OperationId {
    OperationId::parse("op-1").unwrap()
}

fn new_event(i: u64) -> NewAuditEvent {
    let actor = match i % 3 {
        0 => Actor::System,
        1 => Actor::User {
            id: UserId::from_uuid(uuid::Uuid::from_u128(u128::from(i))),
            username: Username::parse("olga.op").unwrap(),
        },
        _ => Actor::ApiToken { id: ApiTokenId::from_uuid(uuid::Uuid::from_u128(7)) },
    };
    let mut e = NewAuditEvent::new(
        datetime!(2025-05-01 08:00 UTC) + time::Duration::seconds(i as i64),
        actor,
        "device.suspend",
        &op(),
    );
    if i.is_multiple_of(2) {
        e = e
            .target(format!("device:{i}"))
            .before(json!({"state": "active", "n": i}))
            .after(json!({"state": "suspended", "suspended_from": "active", "list": [1, 2.5, null, true]}));
    }
    e
}

fn chain(n: u64) -> Vec<AuditEvent> {
    let mut head = ChainHead::GENESIS;
    (0..n)
        .map(|i| {
            let e = new_event(i).seal(&head);
            head = e.head();
            e
        })
        .collect()
}

#[test]
fn a_good_chain_verifies() {
    let events = chain(10);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].prev_hash, [0; 32]);
    assert_eq!(verify_chain(&events), Ok(10));
    assert_eq!(verify_chain(events.clone()), Ok(10));
    assert_eq!(verify_chain(Vec::<AuditEvent>::new()), Ok(0));
    for w in events.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
}

#[test]
fn verifier_resumes_from_a_head() {
    let events = chain(6);
    let mut first = ChainVerifier::new();
    for e in &events[..3] {
        first.push(e).unwrap();
    }
    let mut second = ChainVerifier::starting_at(first.head());
    for e in &events[3..] {
        second.push(e).unwrap();
    }
    assert_eq!(second.head(), events[5].head());
    assert_eq!(second.count(), 3);
}

#[test]
fn canonical_encoding_is_exactly_as_documented() {
    let id = UserId::from_uuid(uuid::Uuid::from_u128(0x0102));
    let e = NewAuditEvent::new(
        datetime!(1970-01-01 00:00:01.000_002 UTC),
        Actor::User { id, username: Username::parse("al").unwrap() },
        "x.y",
        &OperationId::parse("op").unwrap(),
    )
    .after(json!({"b": 1, "a": "q\"\n"}))
    .seal(&ChainHead::GENESIS);
    let mut expected = b"lanyard.audit.v1".to_vec();
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.extend_from_slice(&1_000_002_000i128.to_be_bytes());
    expected.push(1);
    expected.extend_from_slice(id.as_bytes());
    expected.extend_from_slice(&[0, 0, 0, 2, b'a', b'l']);
    expected.extend_from_slice(&[0, 0, 0, 3, b'x', b'.', b'y']);
    expected.push(0); // no target
    expected.extend_from_slice(&[0, 0, 0, 2, b'o', b'p']);
    expected.push(0); // no before
    expected.push(1);
    let json = br#"{"a":"q\"\u000a","b":1}"#;
    expected.extend_from_slice(&(json.len() as u32).to_be_bytes());
    expected.extend_from_slice(json);
    assert_eq!(e.canonical_bytes(), expected);

    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0; 32]);
    ctx.update(&expected);
    assert_eq!(e.hash.as_slice(), ctx.finish().as_ref());
}

#[test]
fn canonical_json_ignores_member_order_but_not_content() {
    let render = |v: &Value| {
        let mut out = Vec::new();
        canonical_json(v, &mut out);
        String::from_utf8(out).unwrap()
    };
    let a: Value = serde_json::from_str(r#"{"z": {"y": 1, "x": [true, null]}, "a": "é\\"}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a": "é\\", "z": {"x": [true, null], "y": 1}}"#).unwrap();
    assert_eq!(render(&a), r#"{"a":"é\\","z":{"x":[true,null],"y":1}}"#);
    assert_eq!(render(&a), render(&b));
    assert_ne!(render(&json!(1)), render(&json!(1.0)));
}

#[test]
fn seal_normalises_time_to_utc_microseconds() {
    let at = datetime!(2025-05-01 10:00:00.123_456_789 +02:00);
    let e = NewAuditEvent::new(at, Actor::System, "a", &op()).seal(&ChainHead::GENESIS);
    assert_eq!(e.at, datetime!(2025-05-01 08:00:00.123_456 UTC));
    assert_eq!(e.at.offset(), UtcOffset::UTC);
    // What a microsecond-precision store gives back still verifies.
    let json = serde_json::to_string(&e).unwrap();
    let back: AuditEvent = serde_json::from_str(&json).unwrap();
    assert_eq!(verify_chain([back]), Ok(1));
}

/// The ways an event can be tampered with.
#[derive(Clone, Copy, Debug)]
enum Edit {
    Seq(u64),
    At(i64),
    ActorToSystem,
    ActorUsername,
    ActorId,
    Action,
    Target,
    OperationId,
    Before,
    After,
    AfterRemoved,
    PrevHash(usize),
    Hash(usize),
}

const EDITS: [Edit; 13] = [
    Edit::Seq(1),
    Edit::At(1),
    Edit::ActorToSystem,
    Edit::ActorUsername,
    Edit::ActorId,
    Edit::Action,
    Edit::Target,
    Edit::OperationId,
    Edit::Before,
    Edit::After,
    Edit::AfterRemoved,
    Edit::PrevHash(0),
    Edit::Hash(31),
];

fn apply_edit(e: &mut AuditEvent, edit: Edit) {
    match edit {
        Edit::Seq(d) => e.seq = e.seq.wrapping_add(d.max(1)),
        Edit::At(ns) => e.at += time::Duration::nanoseconds(if ns == 0 { 1 } else { ns }),
        Edit::ActorToSystem => {
            e.actor = match e.actor {
                Actor::System => Actor::ApiToken { id: ApiTokenId::new() },
                _ => Actor::System,
            }
        }
        Edit::ActorUsername => match &mut e.actor {
            Actor::User { username, .. } => *username = Username::parse("mallory").unwrap(),
            other => {
                *other = Actor::User { id: UserId::new(), username: Username::parse("mallory").unwrap() }
            }
        },
        Edit::ActorId => match &mut e.actor {
            Actor::User { id, .. } => *id = UserId::new(),
            Actor::ApiToken { id } => *id = ApiTokenId::new(),
            other => *other = Actor::ApiToken { id: ApiTokenId::new() },
        },
        Edit::Action => e.action.push('!'),
        Edit::Target => e.target = if e.target.is_some() { None } else { Some(String::new()) },
        Edit::OperationId => e.operation_id.push('x'),
        Edit::Before => match &mut e.before {
            Some(Value::Object(m)) => {
                m.insert("state".into(), json!("revoked"));
            }
            other => *other = Some(json!({})),
        },
        Edit::After => match &mut e.after {
            Some(v) => *v = json!([v.clone()]),
            None => e.after = Some(Value::Null),
        },
        Edit::AfterRemoved => e.after = if e.after.is_some() { None } else { Some(json!(0)) },
        Edit::PrevHash(i) => e.prev_hash[i % 32] ^= 0x80,
        Edit::Hash(i) => e.hash[i % 32] ^= 0x01,
    }
}

#[test]
fn editing_any_field_of_any_event_names_that_event() {
    let events = chain(7);
    for k in 0..events.len() {
        for edit in EDITS {
            let mut tampered = events.clone();
            apply_edit(&mut tampered[k], edit);
            let err = verify_chain(&tampered).unwrap_err();
            assert_eq!(err.seq(), events[k].seq, "{edit:?} on event {}: {err}", events[k].seq);
        }
    }
}

#[test]
fn error_kinds_and_messages() {
    let events = chain(4);
    let mut t = events.clone();
    t[2].action = "device.resume".into();
    assert_eq!(verify_chain(&t), Err(ChainError::Broken { seq: 3, reason: BrokenReason::HashMismatch }));
    assert_eq!(
        verify_chain(&t).unwrap_err().to_string(),
        "audit chain broken at event 3: its hash does not match its contents (the event was altered)"
    );
    let mut t = events.clone();
    t[1].prev_hash = [9; 32];
    assert_eq!(verify_chain(&t), Err(ChainError::Broken { seq: 2, reason: BrokenReason::PrevHashMismatch }));
    // Rewriting an event and recomputing its own hash moves the break to its successor.
    let mut t = events.clone();
    t[1].action = "forged".into();
    t[1].hash = t[1].compute_hash();
    assert_eq!(verify_chain(&t), Err(ChainError::Broken { seq: 3, reason: BrokenReason::PrevHashMismatch }));
}

#[test]
fn deleting_or_reordering_is_detected() {
    let events = chain(6);
    for k in 0..5 {
        let mut t = events.clone();
        t.remove(k);
        assert_eq!(verify_chain(&t), Err(ChainError::Gap { expected: k as u64 + 1, found: k as u64 + 2 }));
        let mut t = events.clone();
        t.swap(k, k + 1);
        assert_eq!(verify_chain(&t), Err(ChainError::Gap { expected: k as u64 + 1, found: k as u64 + 2 }));
    }
    assert_eq!(
        verify_chain(&events[1..]).unwrap_err().to_string(),
        "audit chain has a gap: expected event 1, found event 2"
    );
    // Dropping the tail leaves a valid shorter chain: only a head kept elsewhere reveals it.
    let mut v = ChainVerifier::new();
    events[..5].iter().try_for_each(|e| v.push(e)).unwrap();
    assert_ne!(v.head(), events[5].head());
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (1u64..1000).prop_map(Edit::Seq),
        (1i64..10_000_000_000).prop_map(Edit::At),
        (-10_000_000_000i64..0).prop_map(Edit::At),
        Just(Edit::ActorToSystem),
        Just(Edit::ActorUsername),
        Just(Edit::ActorId),
        Just(Edit::Action),
        Just(Edit::Target),
        Just(Edit::OperationId),
        Just(Edit::Before),
        Just(Edit::After),
        Just(Edit::AfterRemoved),
        (0usize..32).prop_map(Edit::PrevHash),
        (0usize..32).prop_map(Edit::Hash),
    ]
}

proptest! {
    #[test]
    fn random_edits_are_always_detected_at_the_edited_event(
        len in 1u64..12,
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit_strategy(), 1..4),
    ) {
        let events = chain(len);
        let k = pick.index(events.len());
        let mut tampered = events.clone();
        for edit in edits {
            apply_edit(&mut tampered[k], edit);
        }
        // Several edits can cancel out (e.g. toggling a target twice); an unchanged event must
        // verify, a changed one must be named.
        if tampered[k] == events[k] {
            prop_assert_eq!(verify_chain(&tampered), Ok(len));
        } else {
            let err = verify_chain(&tampered).unwrap_err();
            prop_assert_eq!(err.seq(), events[k].seq);
        }
    }
}

#[test]
fn sealing_a_stored_event_later_gives_the_same_chain_as_sealing_at_once() {
    let at_once = chain(5);
    let mut head = ChainHead::GENESIS;
    let later: Vec<AuditEvent> = (0..5)
        .map(|i| {
            let mut e = new_event(i).unsealed();
            assert!(!e.sealed);
            assert_eq!((e.seq, e.prev_hash, e.hash), (0, [0; 32], [0; 32]));
            e.seal_after(&head);
            head = e.head();
            e
        })
        .collect();
    assert_eq!(later, at_once);
}

#[test]
fn unsealed_events_are_counted_not_checked() {
    let mut events = chain(3);
    events.push(new_event(3).unsealed());
    events.push(new_event(4).unsealed());
    let mut v = ChainVerifier::new();
    for e in &events {
        v.push(e).unwrap();
    }
    assert_eq!((v.count(), v.unsealed(), v.head()), (3, 2, events[2].head()));
    assert_eq!(verify_chain(&events), Ok(3));
    // A sealed event tampered with is still caught with unsealed ones around it.
    events[1].action = "device.resume".into();
    assert_eq!(verify_chain(&events), Err(ChainError::Broken { seq: 2, reason: BrokenReason::HashMismatch }));
}

#[test]
fn events_stored_before_the_sealed_flag_read_back_as_sealed() {
    let e = &chain(1)[0];
    let mut json = serde_json::to_value(e).unwrap();
    json.as_object_mut().unwrap().remove("sealed");
    let back: AuditEvent = serde_json::from_value(json).unwrap();
    assert_eq!(&back, e);
}
