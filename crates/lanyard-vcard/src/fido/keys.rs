//! Credential IDs and credential keys.
//!
//! A credential ID is a key handle only this card can use: a random nonce, the credential's
//! options, and an HMAC-SHA-256 tag over both and the RP ID hash under a key derived from the
//! card's credential secret. The private key is derived from the same secret, the nonce and the
//! RP ID hash, so the card stores no per-credential secret and an ID presented for another RP, or
//! altered in any bit, or made by another card (or before a Reset) is refused.
//!
//! Layout (66 bytes): `01 ‖ flags ‖ nonce (32) ‖ tag (32)`; flags bit 7 = discoverable,
//! bits 0–1 = credProtect level.

use hmac::{Hmac, Mac};
use p256::ecdsa::SigningKey;
use sha2::Sha256;

pub const ID_LEN: usize = 66;
const VERSION: u8 = 0x01;
const FLAG_RESIDENT: u8 = 0x80;

/// What a credential ID says about its credential once its tag checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialInfo {
    pub resident: bool,
    pub cred_protect: u8,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return [0; 32] };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn tag(secret: &[u8], head: &[u8], rp_id_hash: &[u8; 32]) -> [u8; 32] {
    let mac_key = hmac(secret, &[b"lanyard fido credential id"]);
    hmac(&mac_key, &[head, rp_id_hash])
}

fn derive_key(secret: &[u8], head: &[u8], rp_id_hash: &[u8; 32]) -> Option<SigningKey> {
    let seed = hmac(secret, &[b"lanyard fido credential key", head, rp_id_hash]);
    SigningKey::from_bytes(&seed.into()).ok()
}

/// Makes a new credential for `rp_id_hash`: its ID and private key.
pub fn new_credential(secret: &[u8], rp_id_hash: &[u8; 32], info: CredentialInfo) -> (Vec<u8>, SigningKey) {
    loop {
        let mut head = [0u8; 34];
        head[0] = VERSION;
        head[1] = (info.cred_protect & 0x03) | if info.resident { FLAG_RESIDENT } else { 0 };
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut head[2..]);
        // A seed outside the scalar range (probability about 2^-32) takes another nonce.
        if let Some(key) = derive_key(secret, &head, rp_id_hash) {
            let mut id = head.to_vec();
            id.extend_from_slice(&tag(secret, &head, rp_id_hash));
            return (id, key);
        }
    }
}

/// Opens a credential ID presented for `rp_id_hash`: `None` unless this card made it for that RP.
pub fn open_credential(
    secret: &[u8],
    rp_id_hash: &[u8; 32],
    id: &[u8],
) -> Option<(CredentialInfo, SigningKey)> {
    if id.len() != ID_LEN || id[0] != VERSION {
        return None;
    }
    let (head, presented) = id.split_at(34);
    let expected = tag(secret, head, rp_id_hash);
    let same = expected.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return None;
    }
    let info =
        CredentialInfo { resident: head[1] & FLAG_RESIDENT != 0, cred_protect: (head[1] & 0x03).max(1) };
    derive_key(secret, head, rp_id_hash).map(|k| (info, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_id_opens_only_for_its_rp_and_card() {
        let secret = [7u8; 32];
        let rp = [1u8; 32];
        let info = CredentialInfo { resident: true, cred_protect: 2 };
        let (id, key) = new_credential(&secret, &rp, info);
        assert_eq!(id.len(), ID_LEN);
        let opened = open_credential(&secret, &rp, &id);
        assert_eq!(opened.as_ref().map(|(i, _)| *i), Some(info));
        assert_eq!(opened.map(|(_, k)| k.verifying_key().to_owned()), Some(*key.verifying_key()));
        assert!(open_credential(&secret, &[2u8; 32], &id).is_none());
        assert!(open_credential(&[8u8; 32], &rp, &id).is_none());
        let mut flipped = id.clone();
        flipped[1] ^= 0x80;
        assert!(open_credential(&secret, &rp, &flipped).is_none());
    }

    proptest! {
        #[test]
        fn no_forged_id_opens(id in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert!(open_credential(&[3u8; 32], &[4u8; 32], &id).is_none());
        }
    }
}
