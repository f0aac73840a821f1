//! PKCS#12 (RFC 7292) files holding one private key and its certificate chain, for Android's
//! "VPN and app user certificate" store and anything else that imports `.p12`.
//!
//! Two encodings:
//! - [`Encryption::Modern`]: the key and the certificates encrypted with PBES2 (PBKDF2 with
//!   HMAC-SHA-256, AES-256-CBC), the file's MAC HMAC-SHA-256 (what OpenSSL 3 writes by default,
//!   and what Android 14 and later read);
//! - [`Encryption::Legacy`]: `pbeWithSHAAnd3-KeyTripleDES-CBC` and an HMAC-SHA-1 MAC, for Android
//!   13 and older, whose importer knows nothing newer.
//!
//! Written by hand with the `der` crate's primitives: the structure is small and fixed, and no
//! maintained crate writes both encodings (the `p12` crate is unmaintained and writes only the
//! legacy one).

use aws_lc_rs::{digest, hmac, pbkdf2, rand};
use cipher::{BlockEncrypt, KeyInit};
use der::asn1::{Any, BmpString, ObjectIdentifier, OctetStringRef};
use der::{Encode, Tag};
use std::num::NonZeroU32;

/// How the file is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// PBES2 (PBKDF2-HMAC-SHA-256, AES-256-CBC), HMAC-SHA-256 MAC.
    Modern,
    /// pbeWithSHAAnd3-KeyTripleDES-CBC, HMAC-SHA-1 MAC (Android 13 and older).
    Legacy,
}

/// Iterations of the key derivations (OpenSSL 3 writes 2048; more costs importers little).
const ITERATIONS: u32 = 10_000;

const ID_DATA: &str = "1.2.840.113549.1.7.1";
const ID_ENCRYPTED_DATA: &str = "1.2.840.113549.1.7.6";
const PKCS8_SHROUDED_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.2";
const CERT_BAG: &str = "1.2.840.113549.1.12.10.1.3";
const X509_CERTIFICATE: &str = "1.2.840.113549.1.9.22.1";
const FRIENDLY_NAME: &str = "1.2.840.113549.1.9.20";
const LOCAL_KEY_ID: &str = "1.2.840.113549.1.9.21";
const PBES2: &str = "1.2.840.113549.1.5.13";
const PBKDF2: &str = "1.2.840.113549.1.5.12";
const HMAC_WITH_SHA256: &str = "1.2.840.113549.2.9";
const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";
const PBE_SHA1_3DES: &str = "1.2.840.113549.1.12.1.3";
const SHA1: &str = "1.3.14.3.2.26";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";

#[derive(Debug, thiserror::Error)]
pub enum Pkcs12Error {
    #[error("encoding the PKCS#12 structure: {0}")]
    Der(#[from] der::Error),
    #[error("the system's random number generator failed")]
    Random,
    #[error("the password must not be empty")]
    EmptyPassword,
}

type Result<T> = std::result::Result<T, Pkcs12Error>;

fn oid(s: &str) -> Result<Vec<u8>> {
    Ok(ObjectIdentifier::new(s).map_err(|_| der::Error::from(der::ErrorKind::OidMalformed))?.to_der()?)
}

fn tlv(tag: Tag, parts: &[&[u8]]) -> Result<Vec<u8>> {
    Ok(Any::new(tag, parts.concat())?.to_der()?)
}

fn seq(parts: &[&[u8]]) -> Result<Vec<u8>> {
    tlv(Tag::Sequence, parts)
}

fn set(parts: &[&[u8]]) -> Result<Vec<u8>> {
    tlv(Tag::Set, parts)
}

fn octets(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(OctetStringRef::new(bytes)?.to_der()?)
}

fn int(n: u32) -> Result<Vec<u8>> {
    Ok(n.to_der()?)
}

/// `[n] EXPLICIT` around `inner`.
fn explicit(n: u8, inner: &[u8]) -> Result<Vec<u8>> {
    let tag = Tag::ContextSpecific { constructed: true, number: der::TagNumber::new(n) };
    tlv(tag, &[inner])
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(|_| Pkcs12Error::Random)?;
    Ok(out)
}

/// The password as PKCS#12's KDF takes it: BMPString (UTF-16BE) with a terminating NUL.
fn bmp_password(password: &str) -> Vec<u8> {
    let mut out: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    out.extend([0, 0]);
    out
}

/// RFC 7292 appendix B.2: the PKCS#12 key derivation with `hash` (block size 64 for SHA-1 and
/// SHA-256), purpose `id` (1 key, 2 IV, 3 MAC key).
fn pkcs12_kdf(
    hash: &'static digest::Algorithm,
    id: u8,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    n: usize,
) -> Vec<u8> {
    const V: usize = 64;
    let fill = |input: &[u8]| -> Vec<u8> {
        if input.is_empty() {
            return Vec::new();
        }
        let len = V * input.len().div_ceil(V);
        input.iter().cycle().take(len).copied().collect()
    };
    let d = [id; V];
    let mut i: Vec<u8> = [fill(salt), fill(password)].concat();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut a = digest::digest(hash, &[&d[..], &i].concat()).as_ref().to_vec();
        for _ in 1..iterations {
            a = digest::digest(hash, &a).as_ref().to_vec();
        }
        let b: Vec<u8> = a.iter().cycle().take(V).copied().collect();
        for block in i.chunks_mut(V) {
            // block = (block + b + 1) mod 2^(8V), big-endian.
            let mut carry = 1u16;
            for (x, y) in block.iter_mut().rev().zip(b.iter().rev()) {
                let sum = u16::from(*x) + u16::from(*y) + carry;
                *x = sum as u8; // the low byte; the high one carries
                carry = sum >> 8;
            }
        }
        out.extend_from_slice(&a);
    }
    out.truncate(n);
    out
}

/// CBC encryption with PKCS#7 padding over any block cipher.
fn cbc_encrypt<C: BlockEncrypt>(cipher: &C, iv: &[u8], plain: &[u8]) -> Vec<u8> {
    let bs = iv.len();
    let pad = bs - plain.len() % bs;
    let mut data = plain.to_vec();
    data.extend(std::iter::repeat_n(pad as u8, pad));
    let mut prev = iv.to_vec();
    for block in data.chunks_mut(bs) {
        for (b, p) in block.iter_mut().zip(&prev) {
            *b ^= p;
        }
        cipher.encrypt_block(cipher::generic_array::GenericArray::from_mut_slice(block));
        prev.copy_from_slice(block);
    }
    data
}

/// Encrypts `plain` under `password`; answers the AlgorithmIdentifier and the ciphertext.
fn encrypt(encryption: Encryption, password: &str, plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let salt: [u8; 16] = random()?;
    match encryption {
        Encryption::Modern => {
            let iv: [u8; 16] = random()?;
            let mut key = [0u8; 32];
            let iterations = NonZeroU32::new(ITERATIONS).ok_or(Pkcs12Error::Random)?;
            pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &mut key);
            let aes = aes::Aes256::new_from_slice(&key).map_err(|_| Pkcs12Error::Random)?;
            let ciphertext = cbc_encrypt(&aes, &iv, plain);
            let prf = seq(&[&oid(HMAC_WITH_SHA256)?, &der::asn1::Null.to_der()?])?;
            let kdf_params = seq(&[&octets(&salt)?, &int(ITERATIONS)?, &prf])?;
            let kdf = seq(&[&oid(PBKDF2)?, &kdf_params])?;
            let scheme = seq(&[&oid(AES256_CBC)?, &octets(&iv)?])?;
            let alg = seq(&[&oid(PBES2)?, &seq(&[&kdf, &scheme])?])?;
            Ok((alg, ciphertext))
        }
        Encryption::Legacy => {
            let pw = bmp_password(password);
            let key = pkcs12_kdf(&digest::SHA1_FOR_LEGACY_USE_ONLY, 1, &pw, &salt, ITERATIONS, 24);
            let iv = pkcs12_kdf(&digest::SHA1_FOR_LEGACY_USE_ONLY, 2, &pw, &salt, ITERATIONS, 8);
            let tdes = des::TdesEde3::new_from_slice(&key).map_err(|_| Pkcs12Error::Random)?;
            let ciphertext = cbc_encrypt(&tdes, &iv, plain);
            let alg = seq(&[&oid(PBE_SHA1_3DES)?, &seq(&[&octets(&salt)?, &int(ITERATIONS)?])?])?;
            Ok((alg, ciphertext))
        }
    }
}

fn attributes(local_key_id: &[u8], friendly_name: &str) -> Result<Vec<u8>> {
    let id = seq(&[&oid(LOCAL_KEY_ID)?, &set(&[&octets(local_key_id)?])?])?;
    let name = BmpString::from_utf8(friendly_name)?.to_der()?;
    let name = seq(&[&oid(FRIENDLY_NAME)?, &set(&[&name])?])?;
    set(&[&id, &name])
}

fn content_info(content_type: &str, content: &[u8]) -> Result<Vec<u8>> {
    seq(&[&oid(content_type)?, &explicit(0, content)?])
}

/// A PKCS#12 file: `pkcs8_key` (PKCS#8 DER), its certificate `chain` (leaf first, DER), named
/// `friendly_name`, protected with `password`.
pub fn write(
    pkcs8_key: &[u8],
    chain: &[Vec<u8>],
    friendly_name: &str,
    password: &str,
    encryption: Encryption,
) -> Result<Vec<u8>> {
    if password.is_empty() {
        return Err(Pkcs12Error::EmptyPassword);
    }
    let leaf = chain.first().map(Vec::as_slice).unwrap_or_default();
    let local_key_id = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf).as_ref().to_vec();

    // The certificates, encrypted: SafeContents of CertBags, in an EncryptedData.
    let mut bags = Vec::new();
    for (i, cert) in chain.iter().enumerate() {
        let value = explicit(0, &seq(&[&oid(X509_CERTIFICATE)?, &explicit(0, &octets(cert)?)?])?)?;
        let bag = if i == 0 {
            seq(&[&oid(CERT_BAG)?, &value, &attributes(&local_key_id, friendly_name)?])?
        } else {
            seq(&[&oid(CERT_BAG)?, &value])?
        };
        bags.push(bag);
    }
    let safe_contents = seq(&bags.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    let (alg, ciphertext) = encrypt(encryption, password, &safe_contents)?;
    let encrypted_content =
        tlv(Tag::ContextSpecific { constructed: false, number: der::TagNumber::new(0) }, &[&ciphertext])?;
    let encrypted_content_info = seq(&[&oid(ID_DATA)?, &alg, &encrypted_content])?;
    let encrypted_data = seq(&[&int(0)?, &encrypted_content_info])?;
    let certs = content_info(ID_ENCRYPTED_DATA, &encrypted_data)?;

    // The key: a pkcs8ShroudedKeyBag in plain data (the bag itself is encrypted).
    let (alg, ciphertext) = encrypt(encryption, password, pkcs8_key)?;
    let epki = seq(&[&alg, &octets(&ciphertext)?])?;
    let key_bag = seq(&[
        &oid(PKCS8_SHROUDED_KEY_BAG)?,
        &explicit(0, &epki)?,
        &attributes(&local_key_id, friendly_name)?,
    ])?;
    let keys = content_info(ID_DATA, &octets(&seq(&[&key_bag])?)?)?;

    let authenticated_safe = seq(&[&certs, &keys])?;
    let auth_safe = content_info(ID_DATA, &octets(&authenticated_safe)?)?;

    // The MAC over the AuthenticatedSafe's octets.
    let salt: [u8; 16] = random()?;
    let pw = bmp_password(password);
    let (digest_oid, mac_alg, hash, len) = match encryption {
        Encryption::Modern => (SHA256, hmac::HMAC_SHA256, &digest::SHA256, 32),
        Encryption::Legacy => {
            (SHA1, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &digest::SHA1_FOR_LEGACY_USE_ONLY, 20)
        }
    };
    let mac_key = pkcs12_kdf(hash, 3, &pw, &salt, ITERATIONS, len);
    let tag = hmac::sign(&hmac::Key::new(mac_alg, &mac_key), &authenticated_safe);
    let digest_info =
        seq(&[&seq(&[&oid(digest_oid)?, &der::asn1::Null.to_der()?])?, &octets(tag.as_ref())?])?;
    let mac_data = seq(&[&digest_info, &octets(&salt)?, &int(ITERATIONS)?])?;

    seq(&[&int(3)?, &auth_safe, &mac_data])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7292's KDF against a vector computed independently (OpenSSL's PKCS12_key_gen_uni
    /// for password "smeg", salt 0A58CF64530D823F, 1 iteration, SHA-1, ID 1, 24 bytes).
    #[test]
    fn the_pkcs12_kdf_matches_a_known_vector() {
        let key = pkcs12_kdf(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            1,
            &bmp_password("smeg"),
            &hex::decode("0A58CF64530D823F").unwrap(),
            1,
            24,
        );
        assert_eq!(hex::encode_upper(key), "8AAAE6297B6CB04642AB5B077851284EB7128F1A2A7FBCA3");
    }
}
