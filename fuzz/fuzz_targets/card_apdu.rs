//! Feeds a sequence of APDUs to one software PIV card made from a factory-fresh image.
//!
//! Input layout: one flags byte (bit 0: authenticate 9B with the factory key first; bit 1:
//! VERIFY the default PIN first), then APDUs, each preceded by its length: one byte, or `FF`
//! followed by a two-byte big-endian length for longer (extended) APDUs.
//!
//! Checked for every APDU: no panic, a response of at least two bytes, errors carry no data, and
//! a command that did not succeed changes neither the PIN, the PUK nor the management key and
//! never raises a retry counter.
#![no_main]

use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
use lanyard_piv::{InProcess, Piv};
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::SystemTime;

fn image() -> &'static CardImage {
    static IMAGE: OnceLock<CardImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lanyard-fuzz-root-{}", std::process::id()));
        let root = AttestationRoot::open_or_create(&dir, SystemTime::now()).expect("attestation root");
        let img = VirtualCard::new_image(&root, &NewCard::default(), SystemTime::now()).expect("card image");
        let _ = std::fs::remove_dir_all(&dir);
        img
    })
}

/// GENERATE of an RSA key costs up to seconds; the unit tests cover it, the fuzzer skips it.
fn generates_rsa(apdu: &[u8]) -> bool {
    apdu.get(1) == Some(&0x47)
        && apdu.windows(3).any(|w| w[0] == 0x80 && w[1] == 0x01 && matches!(w[2], 0x05 | 0x06 | 0x07 | 0x16))
}

fn split_apdus(mut input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = input.split_first() {
        let (len, rest) = match (first, rest) {
            (0xFF, [hi, lo, rest @ ..]) => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            (0xFF, _) => break,
            (n, rest) => (usize::from(n), rest),
        };
        let len = len.min(rest.len());
        let (apdu, rest) = rest.split_at(len);
        out.push(apdu);
        input = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut card = VirtualCard::from_image(image().clone()).expect("card");
    if flags & 0x03 != 0 {
        let mut piv = Piv::new(InProcess(card));
        if flags & 0x01 != 0 {
            piv.authenticate_mutual(&ManagementKey::factory(MgmAlgorithm::TripleDes)).expect("9B auth");
        }
        if flags & 0x02 != 0 {
            piv.verify_pin(b"123456").expect("VERIFY");
        }
        card = piv.into_transport().0;
    }
    for apdu in split_apdus(rest) {
        if generates_rsa(apdu) {
            continue;
        }
        let before = card.image().clone();
        let resp = card.process(apdu);
        assert!(resp.len() >= 2, "response without a status word");
        let sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        if sw == 0x9100 {
            // The FIDO application's keep-alive: one status byte, nothing run yet.
            assert_eq!(resp.len(), 3, "keep-alive with {} bytes", resp.len());
            assert_eq!(card.image().fido, before.fido, "keep-alive changed the FIDO state");
        } else if sw != 0x9000 && sw & 0xFF00 != 0x6100 {
            let after = card.image();
            assert_eq!(resp.len(), 2, "error {sw:04X} carried data");
            assert_eq!(after.pin.value, before.pin.value, "PIN changed on {sw:04X}");
            assert_eq!(after.puk.value, before.puk.value, "PUK changed on {sw:04X}");
            assert_eq!(after.mgm_key, before.mgm_key, "management key changed on {sw:04X}");
            assert_eq!(after.mgm_algorithm, before.mgm_algorithm);
            assert!(after.pin.left <= before.pin.left, "PIN tries rose on {sw:04X}");
            assert!(after.puk.left <= before.puk.left, "PUK tries rose on {sw:04X}");
            assert_eq!(after.keys.keys().collect::<Vec<_>>(), before.keys.keys().collect::<Vec<_>>());
            assert_eq!(after.objects, before.objects, "objects changed on {sw:04X}");
            let pin = |img: &CardImage| img.fido.as_ref().map(|f| (f.pin.clone(), f.credentials.clone()));
            assert_eq!(pin(after), pin(&before), "FIDO PIN or credentials changed on {sw:04X}");
        }
    }
});
