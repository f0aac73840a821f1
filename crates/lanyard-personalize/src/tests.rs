//! The engine against the software card (in process, no pcscd): issuance, interruption at every
//! command followed by resume or rollback, refusals, and hostile relays.

use super::*;
use der::{Decode, Encode};
use lanyard_piv::objects::{Ccc, CertificateObject, Chuid, FascN, KeyHistory};
use lanyard_piv::types::PublicKey;
use lanyard_piv::{InProcess, Piv, PivError};
use lanyard_vcard::x509::{CertTemplate, x509_time};
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use proptest::prelude::*;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

type Card = Piv<InProcess<VirtualCard>>;

const PIN: &str = "246810";
const PUK: &str = "86420975";
const GUID: [u8; 16] = [0x5A; 16];
const SIGNATURE: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x2A];

/// A fixed instant, so no test reads the wall clock.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

/// One factory image (attestation keys are slow to make), copied for every card.
pub(crate) fn factory_image(opts: &NewCard) -> CardImage {
    static ROOT: OnceLock<(tempfile::TempDir, AttestationRoot)> = OnceLock::new();
    let (_, root) = ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = AttestationRoot::open_or_create(dir.path(), t0()).unwrap();
        (dir, root)
    });
    VirtualCard::new_image(root, opts, t0()).unwrap()
}

fn fresh_card() -> Card {
    static IMAGE: OnceLock<CardImage> = OnceLock::new();
    let img = IMAGE.get_or_init(|| factory_image(&NewCard::default())).clone();
    Piv::new(InProcess(VirtualCard::from_image(img).unwrap()))
}

/// Power-cycles the card: the security state goes, the contents stay.
fn pull(card: &mut Card) {
    card.transport_mut().0.reset_session();
}

fn image_json(card: &mut Card) -> String {
    serde_json::to_string(card.transport_mut().0.image()).unwrap()
}

fn factory_keys() -> Vec<ManagementKey> {
    vec![ManagementKey::factory(MgmAlgorithm::TripleDes), ManagementKey::factory(MgmAlgorithm::Aes192)]
}

fn fasc_n() -> FascN {
    FascN::with_identifier("1234", "5678", "000042").unwrap()
}

fn plan_with(slots: &[(Slot, KeyAlgorithm)], key: &ManagementKey) -> IssuancePlan {
    IssuancePlan {
        slots: slots
            .iter()
            .map(|(slot, algorithm)| SlotPlan {
                slot: *slot,
                algorithm: *algorithm,
                profile: "piv-auth".into(),
            })
            .collect(),
        new_management_key: key.clone(),
        puk: SecretString::from(PUK),
        initial_pin: SecretString::from(PIN),
        pin_retries: 5,
        puk_retries: 4,
        fasc_n: fasc_n(),
        guid: GUID,
        expiration: "20310101".into(),
    }
}

fn ec_slots() -> Vec<(Slot, KeyAlgorithm)> {
    vec![(Slot::AUTHENTICATION, KeyAlgorithm::EccP256), (Slot::CARD_AUTHENTICATION, KeyAlgorithm::EccP384)]
}

/// A real certificate for a generated key, signed by a throwaway P-256 issuer.
fn certificate_for(key: &GeneratedKey) -> Vec<u8> {
    let issuer = Name::from_str("CN=Lanyard test issuer").unwrap();
    let signer = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
    let template = CertTemplate {
        subject: Name::from_str(&format!("CN=slot {}", key.slot)).unwrap(),
        spki: spki::SubjectPublicKeyInfoOwned::from_der(&key.public_key_spki_der).unwrap(),
        serial: SerialNumber::new(&[key.slot.0]).unwrap(),
        validity: Validity {
            not_before: x509_time(t0()).unwrap(),
            not_after: x509_time(t0() + Duration::from_secs(86_400 * 365)).unwrap(),
        },
        extensions: Vec::new(),
    };
    lanyard_vcard::x509::sign(template, &issuer, &signer).unwrap().to_der().unwrap()
}

/// Rewrites the responses to batch `n` (of these commands) before the engine sees them.
type Tamper<'a> = dyn FnMut(usize, &[Command], &mut Vec<Response>) + 'a;

#[derive(Debug)]
enum End {
    Done(IssuanceOutcome),
    Failed(EngineError),
    /// The card was pulled during batch `k` after `j` commands; the checkpoint is the engine's
    /// state before it saw any answer to that batch.
    Pulled(Checkpoint),
}

/// Relays like the agent: each batch in order, stopping at the first error status word.
/// `pull_at = Some((k, j))` pulls the card in the k-th batch after j commands. `tamper` may
/// rewrite the responses of a batch before the engine sees them.
fn drive_with(
    engine: &mut Engine,
    card: &mut Card,
    pull_at: Option<(usize, usize)>,
    tamper: &mut Tamper<'_>,
) -> End {
    let mut input = Input::Start;
    let mut batch = 0;
    loop {
        let step = engine.next(input);
        input = match step {
            Step::Transmit(commands) => {
                assert!(!commands.is_empty(), "empty batch");
                let limit = pull_at.filter(|(k, _)| *k == batch).map(|(_, j)| j);
                let mut responses = Vec::new();
                for (i, c) in commands.iter().enumerate() {
                    if limit.is_some_and(|j| i >= j) {
                        break;
                    }
                    let r = card.exchange(c).unwrap();
                    let ok = r.sw.is_success();
                    responses.push(r);
                    if !ok {
                        break;
                    }
                }
                if limit.is_some() {
                    let checkpoint = engine.checkpoint();
                    let json = serde_json::to_string(&checkpoint).unwrap();
                    pull(card);
                    return End::Pulled(serde_json::from_str(&json).unwrap());
                }
                tamper(batch, &commands, &mut responses);
                batch += 1;
                Input::Responses(responses)
            }
            Step::IssueCertificates(keys) => {
                Input::Certificates(keys.iter().map(|k| (k.slot, certificate_for(k))).collect())
            }
            Step::SignChuid(content) => {
                let expected = Chuid::new(&fasc_n(), GUID, "20310101").unwrap().signed_content();
                assert_eq!(content, expected);
                Input::ChuidSignature(SIGNATURE.to_vec())
            }
            Step::Done(o) => return End::Done(o),
            Step::Failed(e) => return End::Failed(e),
        };
    }
}

fn drive(engine: &mut Engine, card: &mut Card, pull_at: Option<(usize, usize)>) -> End {
    drive_with(engine, card, pull_at, &mut |_, _, _| {})
}

fn done(end: End) -> IssuanceOutcome {
    match end {
        End::Done(o) => o,
        other => panic!("expected Done, got {other:?}"),
    }
}

fn failed(end: End) -> EngineError {
    match end {
        End::Failed(e) => e,
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Checks everything an issued card must show to a relying party and to its holder.
fn assert_issued(card: &mut Card, plan: &IssuancePlan, outcome: &IssuanceOutcome) {
    pull(card);
    card.select().unwrap();
    // The factory key is gone; the new one works.
    assert!(card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).is_err());
    pull(card);
    let new_key =
        ManagementKey::new(outcome.management_key_algorithm, plan.new_management_key.expose_bytes()).unwrap();
    card.authenticate_mutual(&new_key).unwrap();
    assert_eq!(outcome.management_key_algorithm, MgmAlgorithm::Aes192);
    // Retries as planned, PIN and PUK no longer the factory ones.
    let pin = card.get_metadata(0x80).unwrap();
    let puk = card.get_metadata(0x81).unwrap();
    assert_eq!((pin.retries, pin.is_default), (Some((5, 5)), Some(false)));
    assert_eq!((puk.retries, puk.is_default), (Some((4, 4)), Some(false)));
    card.verify_pin(PIN.as_bytes()).unwrap();
    // Each slot: a generated key whose public key is the certificate's.
    assert_eq!(outcome.keys.len(), plan.slots.len());
    for s in &plan.slots {
        let meta = card.get_metadata(s.slot.0).unwrap();
        assert_eq!((meta.algorithm, meta.origin), (Some(s.algorithm.id()), Some(1)));
        let on_card =
            PublicKey::from_inner_tlvs(s.algorithm, &meta.public_key.unwrap()).unwrap().to_spki_der();
        let object = card.get_data(s.slot.certificate_tag().unwrap()).unwrap();
        let cert = Certificate::from_der(&CertificateObject::decode(&object).unwrap().der).unwrap();
        assert_eq!(cert.tbs_certificate.subject_public_key_info.to_der().unwrap(), on_card);
        let key = outcome.keys.iter().find(|k| k.slot == s.slot).unwrap();
        assert_eq!(key.public_key_spki_der, on_card);
        let att = key.attestation.as_ref().expect("the virtual card attests");
        Certificate::from_der(&att.attestation_cert_der).unwrap();
        Certificate::from_der(&att.f9_cert_der).unwrap();
    }
    let chuid = Chuid::decode(&card.get_data(tag::CHUID).unwrap()).unwrap();
    assert_eq!(chuid.parsed_fasc_n().unwrap(), plan.fasc_n);
    assert_eq!(chuid.guid, plan.guid);
    assert_eq!(chuid.expiration_str(), Some("20310101"));
    assert_eq!(chuid.signature, SIGNATURE);
    let ccc = Ccc::decode(&card.get_data(tag::CARD_CAPABILITY_CONTAINER).unwrap()).unwrap();
    assert_eq!(ccc.card_identifier[..7], lanyard_piv::objects::YUBICO_CARD_ID_PREFIX);
    let kh = KeyHistory::decode(&card.get_data(tag::KEY_HISTORY).unwrap()).unwrap();
    assert_eq!((kh.keys_with_on_card_certs, kh.keys_with_off_card_certs), (0, 0));
    Discovery::decode(&card.get_data(tag::DISCOVERY).unwrap()).unwrap();
    // The PUK unblocks the PIN.
    card.unblock_pin(PUK.as_bytes(), b"135790").unwrap();
    card.verify_pin(b"135790").unwrap();
}

fn assert_factory(card: &mut Card) {
    pull(card);
    card.select().unwrap();
    card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).unwrap();
    card.verify_pin(b"123456").unwrap();
    assert_eq!(card.try_get_data(tag::CHUID).unwrap(), None);
    assert_eq!(card.try_get_data(tag::CERT_PIV_AUTH).unwrap(), None);
    assert_eq!(card.try_get_data(tag::CERT_CARD_AUTH).unwrap(), None);
    assert!(matches!(card.get_metadata(0x9A), Err(PivError::Status(StatusWord::ReferenceNotFound))));
    assert_eq!(card.get_metadata(0x80).unwrap().retries, Some((3, 3)));
}

fn rollback(card: &mut Card) -> u32 {
    let mut rb = Rollback::new(factory_keys());
    let mut input = Input::Start;
    loop {
        match rb.next(input) {
            RollbackStep::Transmit(commands) => {
                let mut responses = Vec::new();
                for c in &commands {
                    let r = card.exchange(c).unwrap();
                    let ok = r.sw.is_success();
                    responses.push(r);
                    if !ok {
                        break;
                    }
                }
                input = Input::Responses(responses);
            }
            RollbackStep::Done { round_trips } => return round_trips,
            RollbackStep::Failed(e) => panic!("rollback failed: {e}"),
        }
    }
}

fn clone_plan(p: &IssuancePlan) -> IssuancePlan {
    IssuancePlan {
        slots: p.slots.clone(),
        new_management_key: p.new_management_key.clone(),
        puk: p.puk.clone(),
        initial_pin: p.initial_pin.clone(),
        pin_retries: p.pin_retries,
        puk_retries: p.puk_retries,
        fasc_n: p.fasc_n,
        guid: p.guid,
        expiration: p.expiration.clone(),
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn issues_a_card_in_the_minimum_round_trips() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let mut card = fresh_card();
    let mut engine = Engine::new(clone_plan(&plan), factory_keys());
    assert_eq!(engine.progress(), (0, 16, STEP_DETECT));
    let outcome = done(drive(&mut engine, &mut card, None));
    assert_eq!(outcome.version, Some(Version(5, 7, 2)));
    assert_eq!(outcome.serial, Some(card.transport_mut().0.serial()));
    assert_eq!(outcome.round_trips, Engine::minimum_round_trips(Version(5, 7, 2)));
    assert_eq!(outcome.round_trips, 5);
    assert_eq!(engine.progress(), (16, 16, STEP_DONE));
    let checkpoint = engine.checkpoint();
    assert_eq!(checkpoint.completed.len(), 16);
    assert_eq!(checkpoint.management_key_algorithm, Some(MgmAlgorithm::Aes192.id()));
    assert!(outcome.log.iter().any(|l| l.step == STEP_ROTATE));
    assert_issued(&mut card, &plan, &outcome);
    // A finished engine keeps answering Done.
    assert!(matches!(engine.next(Input::Start), Step::Done(_)));
}

#[test]
fn issues_rsa_and_all_four_slots() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(
        &[
            (Slot::AUTHENTICATION, KeyAlgorithm::Rsa2048),
            (Slot::SIGNATURE, KeyAlgorithm::EccP256),
            (Slot::KEY_MANAGEMENT, KeyAlgorithm::Rsa2048),
            (Slot::CARD_AUTHENTICATION, KeyAlgorithm::EccP384),
        ],
        &key,
    );
    let mut card = fresh_card();
    let outcome = done(drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, None));
    assert_eq!(outcome.round_trips, 5);
    assert_issued(&mut card, &plan, &outcome);
}

#[test]
fn card_without_aes_gets_the_same_bytes_as_a_3des_key() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots()[..1], &key);
    let img = factory_image(&NewCard {
        version: [5, 2, 7],
        mgm_algorithm: MgmAlgorithm::TripleDes,
        ..NewCard::default()
    });
    let mut card = Piv::new(InProcess(VirtualCard::from_image(img).unwrap()));
    let outcome = done(drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, None));
    assert_eq!(outcome.management_key_algorithm, MgmAlgorithm::TripleDes);
    // The software card answers GET METADATA whatever its version, so the budget is the 5.3 one.
    assert_eq!(outcome.round_trips, 5);
    pull(&mut card);
    card.select().unwrap();
    card.authenticate_mutual(&ManagementKey::new(MgmAlgorithm::TripleDes, key.expose_bytes()).unwrap())
        .unwrap();
}

/// Firmware before 5.3 has no GET METADATA: it stops the detect batch, the rest follows in
/// one more round trip, and the factory key is found by trying.
#[test]
fn card_without_metadata_takes_one_more_round_trip() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let img = factory_image(&NewCard {
        version: [5, 2, 7],
        mgm_algorithm: MgmAlgorithm::TripleDes,
        ..NewCard::default()
    });
    let mut card = Piv::new(InProcess(VirtualCard::from_image(img).unwrap()));
    let mut sizes = Vec::new();
    let mut engine = Engine::new(clone_plan(&plan), factory_keys());
    let outcome = done(drive_with(&mut engine, &mut card, None, &mut |batch, c, r| {
        sizes.push(c.len());
        if batch == 0 {
            // What a YubiKey 5.2 answers to the first GET METADATA.
            r.truncate(4);
            r[3] = Response::status(StatusWord::InsNotSupported);
        }
    }));
    assert_eq!(sizes, vec![7, 1, 1, 1, 11, 5]);
    assert_eq!(outcome.round_trips, Engine::minimum_round_trips(Version(5, 2, 7)));
    assert_eq!(outcome.management_key_algorithm, MgmAlgorithm::TripleDes);
}

#[test]
fn step_debug_shows_no_command_data() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let mut card = fresh_card();
    let mut engine = Engine::new(clone_plan(&plan), factory_keys());
    let mut seen = Vec::new();
    let mut input = Input::Start;
    loop {
        let step = engine.next(input);
        seen.push(format!("{step:?}"));
        input = match step {
            Step::Transmit(cs) => Input::Responses(cs.iter().map(|c| card.exchange(c).unwrap()).collect()),
            Step::IssueCertificates(keys) => {
                Input::Certificates(keys.iter().map(|k| (k.slot, certificate_for(k))).collect())
            }
            Step::SignChuid(_) => Input::ChuidSignature(SIGNATURE.to_vec()),
            _ => break,
        };
    }
    let all = seen.join("\n");
    assert!(all.contains("00DBFFFF") || all.contains("00DB3FFF"), "{all}");
    let pin_hex = hex::encode_upper(PIN);
    let puk_hex = hex::encode_upper(PUK);
    for secret in [pin_hex.as_str(), puk_hex.as_str(), PIN, PUK] {
        assert!(!all.to_uppercase().contains(&secret.to_uppercase()), "{secret} in {all}");
    }
}

#[test]
fn already_issued_card_is_refused_untouched() {
    let mut card = fresh_card();
    card.select().unwrap();
    card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).unwrap();
    let other = Chuid::new(&fasc_n(), [0x11; 16], "20300101").unwrap();
    card.put_data(tag::CHUID, &other.encode()).unwrap();
    pull(&mut card);
    let before = image_json(&mut card);
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let e = failed(drive(&mut Engine::new(plan_with(&ec_slots(), &key), factory_keys()), &mut card, None));
    assert!(matches!(&e, EngineError::AlreadyIssued(m) if m.contains(&"11".repeat(16))), "{e}");
    assert_eq!(image_json(&mut card), before);
}

#[test]
fn template_chuid_is_not_an_issued_card() {
    let mut card = fresh_card();
    card.select().unwrap();
    card.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).unwrap();
    let mut template = Chuid::new(&fasc_n(), [0x11; 16], "20300101").unwrap();
    template.fasc_n = lanyard_piv::objects::YUBICO_TEMPLATE_FASC_N;
    card.put_data(tag::CHUID, &template.encode()).unwrap();
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let outcome = done(drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, None));
    assert_issued(&mut card, &plan, &outcome);
}

#[test]
fn our_guid_on_a_fresh_engine_asks_for_resume() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let mut card = fresh_card();
    done(drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, None));
    pull(&mut card);
    let e = failed(drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, None));
    assert!(matches!(&e, EngineError::AlreadyIssued(m) if m.contains("resume")), "{e}");
}

#[test]
fn wrong_factory_key_is_reported_and_nothing_changes() {
    let mut card = fresh_card();
    let before = image_json(&mut card);
    let wrong = vec![ManagementKey::new(MgmAlgorithm::TripleDes, &[9; 24]).unwrap()];
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let e = failed(drive(&mut Engine::new(plan_with(&ec_slots(), &key), wrong), &mut card, None));
    assert_eq!(e, EngineError::WrongManagementKey { tried: 1 });
    assert_eq!(image_json(&mut card), before);
    // No factory key of the card's algorithm at all.
    let aes_only = vec![ManagementKey::factory(MgmAlgorithm::Aes192)];
    let e = failed(drive(&mut Engine::new(plan_with(&ec_slots(), &key), aes_only), &mut card, None));
    assert_eq!(e, EngineError::WrongManagementKey { tried: 0 });
}

#[test]
fn invalid_plans_fail_before_any_command() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let cases: Vec<(IssuancePlan, &str)> = vec![
        (IssuancePlan { puk: SecretString::from("1234"), ..plan_with(&ec_slots(), &key) }, "PUK"),
        (IssuancePlan { initial_pin: SecretString::from("12a456"), ..plan_with(&ec_slots(), &key) }, "PIN"),
        (IssuancePlan { pin_retries: 0, ..plan_with(&ec_slots(), &key) }, "retries"),
        (IssuancePlan { expiration: "2031".into(), ..plan_with(&ec_slots(), &key) }, "CHUID"),
        (plan_with(&[(Slot(0x82), KeyAlgorithm::EccP256)], &key), "slot"),
        (plan_with(&[(Slot::AUTHENTICATION, KeyAlgorithm::Rsa1024)], &key), "RSA-1024"),
        (plan_with(&ec_slots(), &ManagementKey::random(MgmAlgorithm::TripleDes)), "AES"),
        (plan_with(&ec_slots(), &ManagementKey::factory(MgmAlgorithm::Aes192)), "factory"),
        (plan_with(&[], &key), "no slots"),
        (
            plan_with(
                &[
                    (Slot::AUTHENTICATION, KeyAlgorithm::EccP256),
                    (Slot::AUTHENTICATION, KeyAlgorithm::EccP384),
                ],
                &key,
            ),
            "twice",
        ),
    ];
    for (plan, needle) in cases {
        match Engine::new(plan, factory_keys()).next(Input::Start) {
            Step::Failed(EngineError::InvalidPlan(m)) => assert!(m.contains(needle), "{m} lacks {needle}"),
            other => panic!("{needle}: {other:?}"),
        }
    }
}

/// Pulls the card at every command of every batch (the engine never sees the answers to the
/// batch in flight), then resumes from the stored checkpoint on the same card.
#[test]
fn interrupted_at_every_command_resumes_to_an_issued_card() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    // Batch sizes of an uninterrupted run.
    let mut sizes = Vec::new();
    let mut card = fresh_card();
    let mut engine = Engine::new(clone_plan(&plan), factory_keys());
    done(drive_with(&mut engine, &mut card, None, &mut |_, c, _| sizes.push(c.len())));
    assert_eq!(sizes, vec![7, 1, 1, 11, 5]);
    for (k, size) in sizes.iter().enumerate() {
        for j in 0..=*size {
            let mut card = fresh_card();
            let mut first = Engine::new(clone_plan(&plan), factory_keys());
            let End::Pulled(checkpoint) = drive(&mut first, &mut card, Some((k, j))) else {
                panic!("not pulled at ({k}, {j})")
            };
            // A copy of the card resumed with the checkpoint lost: the card's metadata suffices.
            let img = card.transport_mut().0.image().clone();
            let mut copy = Piv::new(InProcess(VirtualCard::from_image(img).unwrap()));
            let mut blind = Engine::resume(clone_plan(&plan), factory_keys(), &Checkpoint::default());
            match drive(&mut blind, &mut copy, None) {
                End::Done(o) => assert_issued(&mut copy, &plan, &o),
                other => panic!("resume without checkpoint after a pull at ({k}, {j}): {other:?}"),
            }
            let mut resumed = Engine::resume(clone_plan(&plan), factory_keys(), &checkpoint);
            let outcome = match drive(&mut resumed, &mut card, None) {
                End::Done(o) => o,
                other => panic!("resume after a pull at ({k}, {j}): {other:?}"),
            };
            assert!(outcome.total_round_trips > outcome.round_trips || k == 0);
            assert_issued(&mut card, &plan, &outcome);
        }
    }
}

/// A resumed run that is itself interrupted still converges.
#[test]
fn resume_survives_a_second_pull() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let mut card = fresh_card();
    let End::Pulled(cp1) =
        drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, Some((3, 4)))
    else {
        panic!()
    };
    let mut second = Engine::resume(clone_plan(&plan), factory_keys(), &cp1);
    let End::Pulled(cp2) = drive(&mut second, &mut card, Some((3, 2))) else { panic!() };
    let outcome = done(drive(&mut Engine::resume(clone_plan(&plan), factory_keys(), &cp2), &mut card, None));
    assert_issued(&mut card, &plan, &outcome);
}

/// Rollback from wherever an issuance stopped returns the card to factory state.
#[test]
fn rollback_from_every_command_restores_factory_state() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    for (k, size) in [7usize, 1, 1, 11, 5].iter().enumerate() {
        for j in 0..=*size {
            let mut card = fresh_card();
            let End::Pulled(_) =
                drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, Some((k, j)))
            else {
                panic!("not pulled at ({k}, {j})")
            };
            let trips = rollback(&mut card);
            if (k, j) == (0, 0) {
                // A stock card: 6 + 3 PIN tries + 3 PUK tries (docs/issuance.md).
                assert_eq!(trips, 12);
            }
            assert!((12..=15).contains(&trips), "{trips} round trips at ({k}, {j})");
            assert_factory(&mut card);
        }
    }
    // And from a fully issued card.
    let mut card = fresh_card();
    done(drive(&mut Engine::new(clone_plan(&plan), factory_keys()), &mut card, None));
    rollback(&mut card);
    assert_factory(&mut card);
}

// ---- hostile or broken relays ----

fn started() -> (Engine, Vec<Command>) {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let Step::Transmit(commands) = engine.next(Input::Start) else { panic!() };
    (engine, commands)
}

fn ok(data: &[u8]) -> Response {
    Response { data: data.to_vec(), sw: StatusWord::Success }
}

#[test]
fn response_count_mismatches_fail() {
    let (mut e, commands) = started();
    assert_eq!(
        e.next(Input::Responses(vec![])),
        Step::Failed(EngineError::ResponseCount { sent: 7, got: 0 })
    );
    let (mut e, _) = started();
    let too_many = vec![ok(&[]); commands.len() + 1];
    assert_eq!(
        e.next(Input::Responses(too_many)),
        Step::Failed(EngineError::ResponseCount { sent: 7, got: 8 })
    );
    // Fewer answers although none failed: the relay lost some.
    let (mut e, _) = started();
    assert_eq!(
        e.next(Input::Responses(vec![ok(&[]), ok(&[])])),
        Step::Failed(EngineError::ResponseCount { sent: 7, got: 2 })
    );
    // A failure in the middle and answers after it.
    let (mut e, _) = started();
    let mut r = vec![ok(&[]); 7];
    r[2] = Response::status(StatusWord::NotFound);
    assert_eq!(e.next(Input::Responses(r)), Step::Failed(EngineError::ResponseCount { sent: 7, got: 7 }));
    // Failure is final.
    assert!(matches!(e.next(Input::Start), Step::Failed(EngineError::ResponseCount { .. })));
}

#[test]
fn garbage_and_wrong_status_words_fail_precisely() {
    let (mut e, _) = started();
    let step = e.next(Input::Responses(vec![ok(b"garbage"); 7]));
    assert!(
        matches!(&step, Step::Failed(EngineError::BadResponse { step: "detect", command: "SELECT", .. })),
        "{step:?}"
    );
    let (mut e, _) = started();
    assert_eq!(
        e.next(Input::Responses(vec![Response::status(StatusWord::NotFound)])),
        Step::Failed(EngineError::NotPiv(StatusWord::NotFound))
    );
    let (mut e, _) = started();
    let step = e.next(Input::Certificates(vec![]));
    assert_eq!(
        step,
        Step::Failed(EngineError::UnexpectedInput { expected: "Responses", got: "Certificates" })
    );
}

#[test]
fn a_non_yubikey_is_unsupported() {
    let mut card = fresh_card();
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let e = failed(drive_with(&mut engine, &mut card, None, &mut |batch, _, r| {
        if batch == 0 {
            r.truncate(2);
            r[1] = Response::status(StatusWord::InsNotSupported);
        }
    }));
    assert!(matches!(e, EngineError::Unsupported { step: "detect", .. }), "{e}");
}

#[test]
fn card_refusals_name_the_step() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    // 6982 on SET MANAGEMENT KEY.
    let mut card = fresh_card();
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let e = failed(drive_with(&mut engine, &mut card, None, &mut |batch, _, r| {
        if batch == 3 {
            *r = vec![Response::status(StatusWord::SecurityStatusNotSatisfied)];
        }
    }));
    assert_eq!(
        e,
        EngineError::CardRefused {
            step: STEP_ROTATE,
            command: "SET MANAGEMENT KEY",
            sw: StatusWord::SecurityStatusNotSatisfied
        }
    );
    // The card's answer to our challenge is wrong: not a genuine card.
    let mut card = fresh_card();
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let e = failed(drive_with(&mut engine, &mut card, None, &mut |batch, _, r| {
        if batch == 2
            && let Some(last) = r[0].data.last_mut()
        {
            *last ^= 1;
        }
    }));
    assert_eq!(e, EngineError::CardAuthenticationFailed);
}

#[test]
fn truncated_generate_response_fails_at_that_slot() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let mut card = fresh_card();
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let e = failed(drive_with(&mut engine, &mut card, None, &mut |batch, commands, r| {
        if batch == 3 {
            let i = commands.iter().position(|c| c.ins == cmd::INS_GENERATE).unwrap();
            r[i].data.truncate(20);
        }
    }));
    assert!(matches!(e, EngineError::BadResponse { step: "generate_9a", command: "GENERATE", .. }), "{e}");
    // The checkpoint records what did complete before it.
    let cp = engine.checkpoint();
    assert!(cp.completed.iter().any(|s| s == STEP_SET_PIN));
    assert!(!cp.completed.iter().any(|s| s == "generate_9a"));
}

#[test]
fn certificates_must_match_the_generated_keys() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let mut card = fresh_card();
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let mut input = Input::Start;
    let keys = loop {
        match engine.next(input) {
            Step::Transmit(cs) => {
                input = Input::Responses(cs.iter().map(|c| card.exchange(c).unwrap()).collect())
            }
            Step::IssueCertificates(keys) => break keys,
            other => panic!("{other:?}"),
        }
    };
    // Swapped certificates: each certifies the other slot's key.
    let swapped = vec![(keys[0].slot, certificate_for(&keys[1])), (keys[1].slot, certificate_for(&keys[0]))];
    let step = engine.next(Input::Certificates(swapped));
    assert!(
        matches!(step, Step::Failed(EngineError::BadCertificates(ref m)) if m.contains("9A")),
        "{step:?}"
    );
}

#[test]
fn plan_debug_and_checkpoint_hold_no_secret() {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let plan = plan_with(&ec_slots(), &key);
    let debug = format!("{plan:?}");
    assert!(!debug.contains(PIN) && !debug.contains(PUK), "{debug}");
    assert!(!debug.contains(&hex::encode(key.expose_bytes())));
    assert!(debug.contains("REDACTED"));
    let mut card = fresh_card();
    let mut engine = Engine::new(clone_plan(&plan), factory_keys());
    done(drive(&mut engine, &mut card, None));
    let json = serde_json::to_string(&engine.checkpoint()).unwrap();
    assert!(!json.contains(PIN) && !json.contains(PUK));
    assert!(!json.contains(&hex::encode(key.expose_bytes())));
    assert!(!format!("{engine:?}").contains(PIN));
}

/// An engine that has sent batch `k` to a real card and awaits its answers.
fn engine_at_batch(k: usize) -> Engine {
    let key = ManagementKey::random(MgmAlgorithm::Aes192);
    let mut engine = Engine::new(plan_with(&ec_slots(), &key), factory_keys());
    let mut card = fresh_card();
    let mut input = Input::Start;
    let mut batch = 0;
    loop {
        match engine.next(input) {
            Step::Transmit(_) if batch == k => return engine,
            Step::Transmit(cs) => {
                batch += 1;
                input = Input::Responses(cs.iter().map(|c| card.exchange(c).unwrap()).collect());
            }
            Step::IssueCertificates(keys) => {
                input = Input::Certificates(keys.iter().map(|k| (k.slot, certificate_for(k))).collect());
            }
            Step::SignChuid(_) => input = Input::ChuidSignature(SIGNATURE.to_vec()),
            other => panic!("{other:?}"),
        }
    }
}

fn arbitrary_responses() -> impl Strategy<Value = Vec<Response>> {
    proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..80), any::<u16>()), 0..12).prop_map(
        |v| v.into_iter().map(|(data, sw)| Response { data, sw: StatusWord::from_u16(sw) }).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Deeper in: a real card answers the first batches, then the relay goes mad.
    #[test]
    fn arbitrary_responses_mid_issuance_never_panic(
        k in 0usize..5,
        rounds in proptest::collection::vec(arbitrary_responses(), 1..4),
        certs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
    ) {
        let mut engine = engine_at_batch(k);
        for responses in rounds {
            let _ = engine.next(Input::Responses(responses));
        }
        let _ = engine.next(Input::Certificates(certs.into_iter().map(|(s, d)| (Slot(s), d)).collect()));
        let _ = engine.next(Input::ChuidSignature(Vec::new()));
        let _ = engine.checkpoint();
        let _ = engine.progress();
    }

    /// Whatever a relay answers, the engine returns a step and never panics.
    #[test]
    fn arbitrary_responses_never_panic(
        rounds in proptest::collection::vec(
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..80), any::<u16>()),
                0..12,
            ),
            1..5,
        ),
    ) {
        let (mut engine, _) = started();
        for round in rounds {
            let responses =
                round.into_iter().map(|(data, sw)| Response { data, sw: StatusWord::from_u16(sw) }).collect();
            let _ = engine.next(Input::Responses(responses));
            let _ = engine.progress();
            let _ = engine.checkpoint();
        }
        let mut rb = Rollback::new(factory_keys());
        let _ = rb.next(Input::Start);
        let _ = rb.next(Input::Responses(vec![ok(&[1, 2, 3])]));
    }
}
