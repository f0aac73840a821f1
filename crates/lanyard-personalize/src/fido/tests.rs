//! The FIDO phase against the virtual card's FIDO2 authenticator
//! (`lanyard_vcard::fido::Authenticator`, the one the software card answers CTAP with): it checks
//! every request the way CTAP 2.1 says an authenticator does (MACs, PIN hashes, minimum length,
//! forcePINChange, retries), so a passing run means the phase sent what a key would accept, and
//! the PIN it ends with is the one this test expects.

use lanyard_ctap::consts::{cmd, status};
use lanyard_ctap::pin_protocol::{KeyPair, PinProtocol};
use lanyard_vcard::FidoOptions;
use lanyard_vcard::fido::Authenticator;
use lanyard_vcard::fido::state::FidoState;
use secrecy::SecretString;

use super::*;

/// The authenticator of a factory-new virtual card, and the command bytes it received.
struct Key {
    auth: Authenticator,
    seen: Vec<u8>,
}

impl Key {
    /// A factory-new key: no PIN, minimum length 4, protocols 2 and 1, authenticatorConfig.
    fn new() -> Self {
        Self::offering(FidoOptions::default())
    }

    /// A factory-new key that offers what `options` says.
    fn offering(options: FidoOptions) -> Self {
        let opts = lanyard_vcard::NewCard { fido: options, ..lanyard_vcard::NewCard::default() };
        let img = crate::tests::factory_image(&opts);
        let state: FidoState = img.fido.expect("the virtual card has a FIDO application");
        Self { auth: Authenticator::new(state, img.version).unwrap(), seen: Vec::new() }
    }

    /// A key someone already set `pin` on (through setPIN, as their client would).
    fn with_pin(pin: &str) -> Self {
        let mut key = Self::new();
        let (platform, shared) = key.agree(PinProtocol::Two);
        let answer = key.handle(&client::set_pin(&platform, &shared, pin).unwrap());
        assert_eq!(answer, [status::OK], "setPIN");
        key.seen.clear();
        key
    }

    /// Answers one request (`command ‖ CBOR`) with `status ‖ CBOR`.
    fn handle(&mut self, request: &[u8]) -> Vec<u8> {
        if let Some(&c) = request.first() {
            self.seen.push(c);
        }
        self.auth.process(request)
    }

    /// Runs `batch` as Lanyard's agent does: in order, stopping after the first refusal.
    fn run(&mut self, batch: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for request in batch {
            let answer = self.handle(request);
            let refused = answer.first() != Some(&status::OK);
            out.push(answer);
            if refused {
                break;
            }
        }
        out
    }

    /// A platform key pair and the shared secret with the key's key agreement key.
    fn agree(&mut self, protocol: PinProtocol) -> (KeyPair, lanyard_ctap::pin_protocol::SharedSecret) {
        let ka = client::parse_key_agreement(&self.handle(&client::get_key_agreement(protocol))).unwrap();
        let platform = KeyPair::generate();
        let shared = platform.agree(protocol, &ka).unwrap();
        (platform, shared)
    }

    /// What a client gets asking for a PIN token with `pin` (as python-fido2's
    /// `ClientPin.get_pin_token` does): `Ok` or the refusal's status.
    fn token_with(&mut self, pin: &str) -> Result<(), u8> {
        let protocol =
            client::parse_get_info(&self.handle(&client::get_info())).unwrap().pin_protocol().unwrap();
        let (platform, shared) = self.agree(protocol);
        let answer = self.handle(&client::get_pin_token(&platform, &shared, pin).unwrap());
        match answer.first() {
            Some(&status::OK) => Ok(()),
            Some(s) => Err(*s),
            None => Err(status::OTHER),
        }
    }

    fn min_len(&self) -> u8 {
        self.auth.state().min_pin_length
    }

    fn force_change(&self) -> bool {
        self.auth.state().force_pin_change
    }

    fn has_pin(&self) -> bool {
        self.auth.state().pin.is_some()
    }
}

fn plan(mode: FidoMode, min: u8, pin: Option<&str>) -> FidoPlan {
    FidoPlan { mode, min_pin_length: min, server_pin: pin.map(SecretString::from), reset_consented: false }
}

/// Drives `engine` against `key` to the end, giving `holder` when asked.
fn drive(engine: &mut FidoEngine, key: &mut Key, holder: Option<&str>) -> Result<FidoOutcome, FidoError> {
    let mut input = FidoInput::Start;
    loop {
        input = match engine.next(input) {
            FidoStep::Transmit(batch) => FidoInput::Responses(key.run(&batch)),
            FidoStep::HolderPin { .. } => {
                FidoInput::HolderPin(SecretString::from(holder.expect("a holder PIN")))
            }
            FidoStep::Done(o) => return Ok(o),
            FidoStep::Failed(e) => return Err(e),
        }
    }
}

#[test]
fn independent_sets_the_holders_pin_after_raising_the_minimum() {
    let mut key = Key::new();
    let mut engine = FidoEngine::new(plan(FidoMode::Independent, 8, None));
    let o = drive(&mut engine, &mut key, Some("horse battery")).unwrap();
    assert!(o.pin_set && !o.force_change && !o.reset && o.skipped.is_none());
    assert_eq!(key.min_len(), 8);
    assert_eq!(key.token_with("horse battery"), Ok(()));
    assert_eq!(key.token_with("12345678"), Err(status::PIN_INVALID));
    // getInfo; setMinPINLength; getKeyAgreement; setPIN.
    assert_eq!(o.round_trips, 4);
    assert_eq!(&key.seen[..4], &[cmd::GET_INFO, cmd::CONFIG, cmd::CLIENT_PIN, cmd::CLIENT_PIN]);
    let c = engine.checkpoint();
    assert_eq!(c.completed, [STEP_FIDO_DETECT, STEP_FIDO_MIN_LENGTH, STEP_FIDO_SET_PIN]);
    assert_eq!(c.blank_at_start, Some(true));
}

#[test]
fn a_holder_pin_below_the_minimum_is_refused_before_the_key_sees_it() {
    let mut key = Key::new();
    let mut engine = FidoEngine::new(plan(FidoMode::Independent, 8, None));
    let e = drive(&mut engine, &mut key, Some("short")).unwrap_err();
    assert!(e.to_string().contains("8 to 63 characters"), "{e}");
    assert!(!key.has_pin());
}

#[test]
fn the_key_enforces_the_minimum_lanyard_set() {
    // A plan whose own check is bypassed: the key refuses a PIN below its minimum and the error
    // names the CTAP status.
    let mut key = Key::new();
    // The key's own minimum is 10 already (set before any PIN, which needs no token).
    assert_eq!(key.run(&[client::set_min_pin_length(Some(10), false, None)]), [[status::OK]]);
    assert_eq!(key.min_len(), 10);
    let mut engine = FidoEngine::new(plan(FidoMode::Shared, 6, Some("48291736")));
    let e = drive(&mut engine, &mut key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported key at fido_set_pin: the key asks for PINs of at least 10 characters"
    );
    // Sent anyway (as a client ignoring the minimum would), the key refuses it.
    let ka = client::parse_key_agreement(&key.handle(&client::get_key_agreement(PinProtocol::One))).unwrap();
    let platform = KeyPair::generate();
    let shared = platform.agree(PinProtocol::One, &ka).unwrap();
    let answer = key.handle(&client::set_pin(&platform, &shared, "48291736").unwrap());
    let e = client::parse_empty(names::SET_PIN, &answer).unwrap_err();
    assert_eq!(e.to_string(), "authenticatorClientPIN (setPIN): CTAP2_ERR_PIN_POLICY_VIOLATION (0x37)");
}

#[test]
fn shared_sets_the_temporary_pin_and_change_pin_makes_the_device_pin_the_fido_pin() {
    let mut key = Key::new();
    let mut engine = FidoEngine::new(plan(FidoMode::Shared, 6, Some("48291736")));
    let o = drive(&mut engine, &mut key, None).unwrap();
    assert!(o.pin_set && !o.force_change);
    assert_eq!(key.token_with("48291736"), Ok(()));

    let mut change = FidoChangePin::new(SecretString::from("48291736"), SecretString::from("975318"));
    let mut input = FidoInput::Start;
    loop {
        input = match change.next(input) {
            ChangeStep::Transmit(batch) => FidoInput::Responses(key.run(&batch)),
            ChangeStep::Done => break,
            ChangeStep::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(key.token_with("975318"), Ok(()));
    assert_eq!(key.token_with("48291736"), Err(status::PIN_INVALID));

    // A wrong current PIN: the key refuses and the error names the status.
    let mut change = FidoChangePin::new(SecretString::from("00000000"), SecretString::from("864213"));
    let mut input = FidoInput::Start;
    let e = loop {
        input = match change.next(input) {
            ChangeStep::Transmit(batch) => FidoInput::Responses(key.run(&batch)),
            ChangeStep::Done => panic!("a wrong current PIN changed nothing"),
            ChangeStep::Failed(e) => break e,
        }
    };
    assert_eq!(e.status(), Some(status::PIN_INVALID));
    assert_eq!(key.token_with("975318"), Ok(()));
}

#[test]
fn temporary_forces_a_pin_change_before_any_token() {
    let mut key = Key::new();
    let mut engine = FidoEngine::new(plan(FidoMode::Temporary, 6, Some("73920461")));
    let o = drive(&mut engine, &mut key, None).unwrap();
    assert!(o.pin_set && o.force_change);
    assert!(key.force_change());
    // The right PIN gets no token until it is changed.
    assert_eq!(key.token_with("73920461"), Err(status::PIN_POLICY_VIOLATION));
    // getInfo; setMinPINLength; getKeyAgreement; setPIN + getKeyAgreement; token;
    // forceChangePin + getInfo.
    assert_eq!(o.round_trips, 6);
    assert_eq!(
        engine.checkpoint().completed,
        [STEP_FIDO_DETECT, STEP_FIDO_MIN_LENGTH, STEP_FIDO_SET_PIN, STEP_FIDO_FORCE_CHANGE]
    );
}

#[test]
fn a_key_with_a_pin_is_reset_only_with_consent() {
    let mut key = Key::with_pin("the holder's old PIN");
    let mut engine = FidoEngine::new(plan(FidoMode::Shared, 6, Some("48291736")));
    assert_eq!(drive(&mut engine, &mut key, None).unwrap_err(), FidoError::PinAlreadySet);
    assert!(!key.seen.contains(&cmd::RESET), "nothing erased");
    assert_eq!(key.token_with("the holder's old PIN"), Ok(()));
    let c = engine.checkpoint();
    assert_eq!(c.blank_at_start, Some(false));
    assert!(!c.touched_key());

    // Resumed after the holder agreed.
    let mut consented = plan(FidoMode::Shared, 6, Some("48291736"));
    consented.reset_consented = true;
    let mut engine = FidoEngine::resume(consented, &c);
    let o = drive(&mut engine, &mut key, None).unwrap();
    assert!(o.reset && o.pin_set);
    assert_eq!(key.token_with("48291736"), Ok(()));
    assert!(engine.checkpoint().touched_key());
}

#[test]
fn resume_keeps_what_is_done_and_resets_only_its_own_pin() {
    // The PIN was set and recorded; the job broke before forceChangePin.
    let mut key = Key::new();
    let temp = plan(FidoMode::Temporary, 6, Some("73920461"));
    let mut engine = FidoEngine::new(temp);
    let mut input = FidoInput::Start;
    // Run until the set PIN is recorded, then stop (a pulled key).
    let checkpoint = loop {
        input = match engine.next(input) {
            FidoStep::Transmit(batch) => FidoInput::Responses(key.run(&batch)),
            other => panic!("{other:?}"),
        };
        if engine.checkpoint().is_done(STEP_FIDO_SET_PIN) {
            break engine.checkpoint();
        }
    };
    let mut engine = FidoEngine::resume(plan(FidoMode::Temporary, 6, Some("73920461")), &checkpoint);
    let o = drive(&mut engine, &mut key, None).unwrap();
    assert!(o.force_change && !o.reset);
    assert!(key.force_change());

    // The PIN reached the key but the checkpoint never said so: the key was blank at the start,
    // so the PIN is this job's; the resumed run resets and sets it again, no consent needed.
    let mut key = Key::new();
    let mut engine = FidoEngine::new(plan(FidoMode::Shared, 6, Some("48291736")));
    drive(&mut engine, &mut key, None).unwrap();
    let lost = FidoCheckpoint {
        completed: vec![STEP_FIDO_DETECT.into(), STEP_FIDO_MIN_LENGTH.into()],
        ..engine.checkpoint()
    };
    let mut engine = FidoEngine::resume(plan(FidoMode::Shared, 6, Some("55128834")), &lost);
    let o = drive(&mut engine, &mut key, None).unwrap();
    assert!(o.reset && o.pin_set);
    assert_eq!(key.token_with("55128834"), Ok(()));
}

#[test]
fn keys_without_fido2_or_without_what_the_mode_needs() {
    // No FIDO2 application: getInfo is refused; the phase ends with nothing done.
    let mut engine = FidoEngine::new(plan(FidoMode::Independent, 6, None));
    let FidoStep::Transmit(_) = engine.next(FidoInput::Start) else { panic!() };
    let FidoStep::Done(o) = engine.next(FidoInput::Responses(vec![vec![status::INVALID_COMMAND]])) else {
        panic!()
    };
    assert!(o.skipped.is_some_and(|s| s.contains("CTAP1_ERR_INVALID_COMMAND")));
    // A CTAP 2.0 key cannot force a PIN change.
    let mut key = Key::offering(FidoOptions { config: false, ..FidoOptions::default() });
    let mut engine = FidoEngine::new(plan(FidoMode::Temporary, 4, Some("73920461")));
    let e = drive(&mut engine, &mut key, None).unwrap_err();
    assert!(matches!(e, FidoError::Unsupported { step: STEP_FIDO_DETECT, .. }), "{e}");
    assert!(!key.has_pin());
    // Protocol 1 only: the phase follows the key.
    let mut key = Key::offering(FidoOptions { pin_protocols: vec![1], ..FidoOptions::default() });
    let mut engine = FidoEngine::new(plan(FidoMode::Independent, 6, None));
    drive(&mut engine, &mut key, Some("246813579")).unwrap();
    assert_eq!(key.token_with("246813579"), Ok(()));
    assert_eq!(
        key.handle(&client::get_key_agreement(PinProtocol::Two)),
        [status::INVALID_PARAMETER],
        "the key takes protocol 1 only, so the phase used it"
    );
    // A bad plan fails before anything is sent.
    let mut engine = FidoEngine::new(plan(FidoMode::Shared, 6, None));
    assert!(matches!(engine.next(FidoInput::Start), FidoStep::Failed(FidoError::InvalidPlan(_))));
}

#[test]
fn the_relay_must_answer_every_request_or_stop_at_a_refusal() {
    let mut engine = FidoEngine::new(plan(FidoMode::Independent, 6, None));
    let FidoStep::Transmit(_) = engine.next(FidoInput::Start) else { panic!() };
    let e = engine.next(FidoInput::Responses(vec![]));
    assert!(matches!(e, FidoStep::Failed(FidoError::ResponseCount { sent: 1, got: 0 })), "{e:?}");
    // Failed is final.
    assert!(matches!(engine.next(FidoInput::Start), FidoStep::Failed(_)));
}

proptest::proptest! {
    /// Whatever the relay returns, the phase answers with a step, never a panic.
    #[test]
    fn any_answers_give_a_step(answers in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0..4)) {
        for mode in [FidoMode::Independent, FidoMode::Temporary] {
            let pin = (mode != FidoMode::Independent).then_some("73920461");
            let mut engine = FidoEngine::new(plan(mode, 6, pin));
            let _ = engine.next(FidoInput::Start);
            let _ = engine.next(FidoInput::Responses(answers.clone()));
            let _ = engine.next(FidoInput::Responses(answers.clone()));
        }
    }
}
