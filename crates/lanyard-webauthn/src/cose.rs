//! COSE public keys (RFC 9052/9053) as authenticators report them in attested credential data.
//! Lanyard verifies ES256 only: an EC2 key (kty 2) on P-256 (crv 1) with alg -7. Any other
//! algorithm is refused by name, so a holder whose authenticator offers only, say, EdDSA learns
//! why; the registration options ask for ES256 alone, so a conforming client never sends one.

use lanyard_ctap::cbor::{self, MapRef, Value};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::EncodedPoint;

use crate::WebAuthnError;

/// COSE algorithm identifier of ES256.
pub const ES256: i64 = -7;

/// An ES256 public key: a point on P-256, checked to be on the curve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoseKey {
    key: VerifyingKey,
}

fn bad(m: impl Into<String>) -> WebAuthnError {
    WebAuthnError::Cose(m.into())
}

/// Names of the COSE algorithms an authenticator might offer, for the refusal message.
fn algorithm_name(alg: i64) -> &'static str {
    match alg {
        -8 => "EdDSA",
        -35 => "ES384",
        -36 => "ES512",
        -37 => "PS256",
        -257 => "RS256",
        -47 => "ES256K",
        _ => "unknown",
    }
}

impl CoseKey {
    /// Reads a decoded COSE_Key map.
    pub fn from_value(value: &Value) -> Result<Self, WebAuthnError> {
        let map = MapRef::new(value).map_err(|_| bad("not a CBOR map"))?;
        let alg = cbor::as_int(map.get(3).ok_or_else(|| bad("the algorithm (3) is missing"))?, 3)
            .map_err(|e| bad(e.to_string()))?;
        if alg != ES256 {
            return Err(WebAuthnError::UnsupportedAlgorithm { alg, name: algorithm_name(alg) });
        }
        let kty = cbor::as_int(map.get(1).ok_or_else(|| bad("the key type (1) is missing"))?, 1)
            .map_err(|e| bad(e.to_string()))?;
        if kty != 2 {
            return Err(bad(format!("key type {kty} with ES256; expected 2 (EC2)")));
        }
        let crv = cbor::as_int(map.get(-1).ok_or_else(|| bad("the curve (-1) is missing"))?, -1)
            .map_err(|e| bad(e.to_string()))?;
        if crv != 1 {
            return Err(bad(format!("curve {crv} with ES256; expected 1 (P-256)")));
        }
        let coord = |label: i64, name: &str| -> Result<[u8; 32], WebAuthnError> {
            let v =
                map.get(label).ok_or_else(|| bad(format!("the {name} coordinate ({label}) is missing")))?;
            let b = cbor::as_bytes(v, label).map_err(|e| bad(e.to_string()))?;
            <[u8; 32]>::try_from(b)
                .map_err(|_| bad(format!("the {name} coordinate is {} bytes, expected 32", b.len())))
        };
        let (x, y) = (coord(-2, "x")?, coord(-3, "y")?);
        let point = EncodedPoint::<p256::NistP256>::from_affine_coordinates(&x.into(), &y.into(), false);
        let key = VerifyingKey::from_encoded_point(&point).map_err(|_| bad("the point is not on P-256"))?;
        Ok(Self { key })
    }

    /// Decodes and reads a COSE_Key that fills `bytes` exactly (as stored).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WebAuthnError> {
        let value = cbor::decode(bytes).map_err(|e| bad(e.to_string()))?;
        Self::from_value(&value)
    }

    /// The key as a canonical COSE_Key map, which is what Lanyard stores.
    pub fn to_bytes(&self) -> Vec<u8> {
        let point = self.key.to_encoded_point(false);
        // An uncompressed point of a valid key always has both coordinates.
        let x = point.x().map(|x| x.to_vec()).unwrap_or_default();
        let y = point.y().map(|y| y.to_vec()).unwrap_or_default();
        cbor::encode(&cbor::int_map([
            (1, cbor::int(2)),
            (3, cbor::int(ES256)),
            (-1, cbor::int(1)),
            (-2, Value::Bytes(x)),
            (-3, Value::Bytes(y)),
        ]))
    }

    /// From a P-256 verifying key.
    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        Self { key }
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Verifies an ES256 signature (ASN.1 DER, as WebAuthn carries it) over `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> Result<(), WebAuthnError> {
        let sig = Signature::from_der(der_signature).map_err(|_| WebAuthnError::BadSignature)?;
        self.key.verify(message, &sig).map_err(|_| WebAuthnError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::random(&mut rand::rngs::OsRng)
    }

    #[test]
    fn a_key_round_trips_and_verifies() {
        let sk = key();
        let cose = CoseKey::from_verifying_key(*sk.verifying_key());
        let again = CoseKey::from_bytes(&cose.to_bytes()).unwrap();
        assert_eq!(again, cose);
        let sig: p256::ecdsa::DerSignature = p256::ecdsa::signature::Signer::sign(&sk, b"message");
        again.verify(b"message", sig.as_bytes()).unwrap();
        assert_eq!(again.verify(b"massage", sig.as_bytes()), Err(WebAuthnError::BadSignature));
        assert_eq!(again.verify(b"message", b"\x30\x00"), Err(WebAuthnError::BadSignature));
    }

    fn with(entries: Vec<(i64, Value)>) -> Vec<u8> {
        cbor::encode(&cbor::int_map(entries))
    }

    #[test]
    fn other_algorithms_are_refused_by_name() {
        let e = CoseKey::from_bytes(&with(vec![(1, cbor::int(1)), (3, cbor::int(-8))])).unwrap_err();
        assert_eq!(e, WebAuthnError::UnsupportedAlgorithm { alg: -8, name: "EdDSA" });
        assert!(e.to_string().contains("ES256 (-7"));
        let e = CoseKey::from_bytes(&with(vec![(1, cbor::int(3)), (3, cbor::int(-257))])).unwrap_err();
        assert!(e.to_string().contains("RS256"));
    }

    #[test]
    fn malformed_keys_are_refused_precisely() {
        let good = CoseKey::from_verifying_key(*key().verifying_key());
        let value = cbor::decode(&good.to_bytes()).unwrap();
        let Value::Map(entries) = value else { panic!("a map") };
        let replace = |label: i64, v: Option<Value>| {
            let mut e: Vec<(Value, Value)> =
                entries.iter().filter(|(k, _)| *k != cbor::int(label)).cloned().collect();
            if let Some(v) = v {
                e.push((cbor::int(label), v));
            }
            cbor::encode(&Value::Map(e))
        };
        for (bytes, needle) in [
            (replace(3, None), "algorithm (3) is missing"),
            (replace(1, Some(cbor::int(1))), "key type 1"),
            (replace(-1, Some(cbor::int(2))), "curve 2"),
            (replace(-2, None), "x coordinate (-2) is missing"),
            (replace(-3, Some(Value::Bytes(vec![1; 31]))), "31 bytes"),
            (replace(-2, Some(Value::Bytes(vec![0xff; 32]))), "not on P-256"),
            (replace(-2, Some(Value::Text("x".into()))), "wrong type"),
            (vec![0x01], "not a CBOR map"),
        ] {
            let e = CoseKey::from_bytes(&bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CoseKey::from_bytes(&bytes);
        }

        #[test]
        fn any_int_map_is_judged_without_panicking(
            entries in proptest::collection::btree_map(-4i64..5, prop_oneof![
                any::<i64>().prop_map(cbor::int),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            ], 0..7)
        ) {
            let _ = CoseKey::from_bytes(&with(entries.into_iter().collect()));
        }
    }
}
