//! Feeds CTAP requests (`command byte ‖ CBOR`) to the virtual card's FIDO2 authenticator, the
//! transport-independent entry `Authenticator::process`.
//!
//! Input layout: one flags byte (bit 0: the authenticator has the PIN "1234" set), then requests,
//! each preceded by its length: one byte, or `FF` followed by a two-byte big-endian length.
//!
//! Checked for every request: no panic; a response of at least the status byte; an error is the
//! status byte alone; a success's body is canonical CBOR; and a request that failed changed
//! neither the PIN, the minimum PIN length nor the discoverable credentials, and never raised the
//! PIN tries.
#![no_main]

use lanyard_ctap::cbor;
use lanyard_ctap::pin_protocol::pin_hash;
use lanyard_vcard::attestation::FidoAttestationCa;
use lanyard_vcard::fido::Authenticator;
use lanyard_vcard::fido::state::{FidoState, StoredPin};
use libfuzzer_sys::fuzz_target;
use p256::pkcs8::EncodePrivateKey;
use std::sync::OnceLock;
use std::time::SystemTime;

fn fresh_state() -> &'static FidoState {
    static STATE: OnceLock<FidoState> = OnceLock::new();
    STATE.get_or_init(|| {
        let ca = FidoAttestationCa::generate(SystemTime::now()).expect("FIDO root");
        let (key, cert) = ca.issue_card_attestation(1, SystemTime::now()).expect("attestation");
        let pkcs8 = key.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec();
        FidoState::new(pkcs8, cert)
    })
}

fn split_requests(mut input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = input.split_first() {
        let (len, rest) = match (first, rest) {
            (0xFF, [hi, lo, rest @ ..]) => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            (0xFF, _) => break,
            (n, rest) => (usize::from(n), rest),
        };
        let len = len.min(rest.len());
        let (request, rest) = rest.split_at(len);
        out.push(request);
        input = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut state = fresh_state().clone();
    if flags & 0x01 != 0 {
        state.pin = Some(StoredPin { hash: pin_hash("1234").to_vec(), code_points: 4 });
    }
    let mut auth = Authenticator::new(state, [5, 7, 2]).expect("authenticator");
    for request in split_requests(rest) {
        let before = auth.state().clone();
        let resp = auth.process(request);
        let (&code, body) = resp.split_first().expect("a response has a status byte");
        if code != 0 {
            assert!(body.is_empty(), "error {code:02X} carried data");
            let after = auth.state();
            assert_eq!(after.pin, before.pin, "PIN changed on {code:02X}");
            assert_eq!(after.min_pin_length, before.min_pin_length, "min length changed on {code:02X}");
            assert_eq!(after.credentials, before.credentials, "credentials changed on {code:02X}");
            assert!(after.pin_retries <= before.pin_retries, "PIN tries rose on {code:02X}");
        } else if !body.is_empty() {
            let v = cbor::decode(body).expect("a success's body is CBOR");
            assert_eq!(cbor::encode(&v), body, "the body is canonical");
        }
    }
});
