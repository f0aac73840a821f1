//! Property tests for what the secrets module reads back from storage and configuration: sealed
//! blobs, key-encryption key ids and certificate fingerprints. Whatever the bytes, the answer is
//! an error or the value, never a panic, and a sealed blob changed anywhere does not open.

use proptest::prelude::*;

use super::*;
use crate::installation::CertFingerprint;

fn secrets() -> CardSecrets {
    let key = ManagementKey::new(0x0A, Zeroizing::new(vec![7u8; 24])).expect("a valid AES-192 key");
    CardSecrets::new(key, SecretString::from("12345678"), SecretString::from("123456")).expect("valid parts")
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_open_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let kek = Kek::generate().unwrap();
        let sealed = SealedCardSecrets::from_bytes(bytes);
        let _ = sealed.kek_id();
        prop_assert!(CardSecrets::open(&sealed, &kek, DeviceId::new()).is_err());
    }

    #[test]
    fn a_sealed_blob_changed_anywhere_does_not_open(index in any::<prop::sample::Index>(), flip in 1u8..) {
        let kek = Kek::generate().unwrap();
        let device = DeviceId::new();
        let sealed = secrets().seal(&kek, device).unwrap();
        let mut bytes = sealed.as_bytes().to_vec();
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        let changed = SealedCardSecrets::from_bytes(bytes);
        prop_assert!(CardSecrets::open(&changed, &kek, device).is_err(), "byte {} changed", i);
    }

    #[test]
    fn kek_ids_and_fingerprints_parse_or_explain(text in ".{0,80}") {
        if let Ok(id) = text.parse::<KekId>() {
            prop_assert_eq!(id.to_string().parse::<KekId>().unwrap(), id);
            prop_assert_eq!(id.to_string(), text.to_lowercase());
        }
        if let Ok(f) = text.parse::<CertFingerprint>() {
            prop_assert_eq!(f.to_string(), text.to_lowercase());
        }
    }

    #[test]
    fn ids_and_fingerprints_round_trip(bytes in any::<[u8; 32]>()) {
        let f = CertFingerprint::from_bytes(bytes);
        prop_assert_eq!(f.to_string().parse::<CertFingerprint>().unwrap(), f);
        prop_assert_eq!(f.to_string().to_uppercase().parse::<CertFingerprint>().unwrap(), f);
    }
}
