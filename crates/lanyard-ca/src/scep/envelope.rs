//! CMS EnvelopedData as SCEP uses it (RFC 8894 §3.2.2): one KeyTransRecipientInfo with RSA
//! PKCS#1 v1.5 key transport, and the content encrypted with AES-CBC or 3DES-EDE-CBC.
//!
//! The `cms` crate builds these structures but cannot open them, so both directions are here:
//! [`open`] for requests sent to the RA, [`seal`] for the certificates sent back.

use ::cms::content_info::{CmsVersion, ContentInfo};
use ::cms::enveloped_data::{EncryptedContentInfo, RecipientIdentifier, RecipientInfo, RecipientInfos};
use aes::{Aes128, Aes192, Aes256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use cipher::generic_array::GenericArray;
use cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode, Header, Reader, SliceReader, Tag, TagNumber};
use des::TdesEde3;
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::ber::octet_string_chunks;
use super::message::{ClientCertificate, ClientIssuerAndSerial};
use super::{FailInfo, ScepFailure, oids};
use crate::error::CaError;
use crate::keys::{CaSigner, SoftwareKey};
use crate::oids as pkix;

/// A content-encryption algorithm Lanyard accepts and answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCipher {
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
    /// Three-key triple DES; only for clients that offer nothing better.
    DesEde3Cbc,
}

impl ContentCipher {
    /// Its OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            ContentCipher::Aes128Cbc => oids::AES128_CBC,
            ContentCipher::Aes192Cbc => oids::AES192_CBC,
            ContentCipher::Aes256Cbc => oids::AES256_CBC,
            ContentCipher::DesEde3Cbc => oids::DES_EDE3_CBC,
        }
    }

    fn key_len(self) -> usize {
        match self {
            ContentCipher::Aes128Cbc => 16,
            ContentCipher::Aes192Cbc | ContentCipher::DesEde3Cbc => 24,
            ContentCipher::Aes256Cbc => 32,
        }
    }

    fn block_len(self) -> usize {
        match self {
            ContentCipher::DesEde3Cbc => 8,
            _ => 16,
        }
    }

    /// The cipher an AlgorithmIdentifier names, or the SCEP failure for one Lanyard refuses.
    pub fn of_oid(oid: &ObjectIdentifier) -> Result<Self, ScepFailure> {
        let o = *oid;
        if o == oids::AES128_CBC {
            Ok(ContentCipher::Aes128Cbc)
        } else if o == oids::AES192_CBC {
            Ok(ContentCipher::Aes192Cbc)
        } else if o == oids::AES256_CBC {
            Ok(ContentCipher::Aes256Cbc)
        } else if o == oids::DES_EDE3_CBC {
            Ok(ContentCipher::DesEde3Cbc)
        } else if o == oids::DES_CBC {
            Err(ScepFailure::new(FailInfo::BadAlg, "single DES is refused; use AES or 3DES (see GetCACaps)"))
        } else {
            Err(ScepFailure::new(
                FailInfo::BadAlg,
                format!("content encryption algorithm {o} is not supported"),
            ))
        }
    }

    fn encrypt(self, key: &[u8], iv: &[u8], plain: &[u8]) -> Vec<u8> {
        match self {
            ContentCipher::Aes128Cbc => cbc_encrypt(&Aes128::new(GenericArray::from_slice(key)), iv, plain),
            ContentCipher::Aes192Cbc => cbc_encrypt(&Aes192::new(GenericArray::from_slice(key)), iv, plain),
            ContentCipher::Aes256Cbc => cbc_encrypt(&Aes256::new(GenericArray::from_slice(key)), iv, plain),
            ContentCipher::DesEde3Cbc => {
                cbc_encrypt(&TdesEde3::new(GenericArray::from_slice(key)), iv, plain)
            }
        }
    }

    fn decrypt(self, key: &[u8], iv: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        match self {
            ContentCipher::Aes128Cbc => cbc_decrypt(&Aes128::new(GenericArray::from_slice(key)), iv, data),
            ContentCipher::Aes192Cbc => cbc_decrypt(&Aes192::new(GenericArray::from_slice(key)), iv, data),
            ContentCipher::Aes256Cbc => cbc_decrypt(&Aes256::new(GenericArray::from_slice(key)), iv, data),
            ContentCipher::DesEde3Cbc => cbc_decrypt(&TdesEde3::new(GenericArray::from_slice(key)), iv, data),
        }
    }
}

/// CBC with PKCS#7 padding (RFC 5652 §6.3). `iv` has the cipher's block length.
fn cbc_encrypt<C: BlockEncrypt>(cipher: &C, iv: &[u8], plain: &[u8]) -> Vec<u8> {
    let bs = C::block_size();
    let pad = bs - plain.len() % bs;
    let mut data = plain.to_vec();
    // The pad length is at most the block length (8 or 16), so it fits a byte.
    data.resize(plain.len() + pad, pad as u8);
    let mut chain = iv.to_vec();
    for block in data.chunks_mut(bs) {
        for (b, c) in block.iter_mut().zip(&chain) {
            *b ^= c;
        }
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
        chain.copy_from_slice(block);
    }
    data
}

/// The inverse of [`cbc_encrypt`]; `None` when the length or the padding is wrong.
fn cbc_decrypt<C: BlockDecrypt + BlockSizeUser>(cipher: &C, iv: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let bs = C::block_size();
    if data.is_empty() || !data.len().is_multiple_of(bs) || iv.len() != bs {
        return None;
    }
    let mut out = data.to_vec();
    let mut chain = iv.to_vec();
    for block in out.chunks_mut(bs) {
        let next = block.to_vec();
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
        for (b, c) in block.iter_mut().zip(&chain) {
            *b ^= c;
        }
        chain = next;
    }
    let pad = usize::from(*out.last()?);
    if pad == 0 || pad > bs || out[out.len() - pad..].iter().any(|b| usize::from(*b) != pad) {
        return None;
    }
    out.truncate(out.len() - pad);
    Some(out)
}

/// The RA's RSA key: it signs CertReps (through [`CaSigner`]) and opens requests.
pub struct RaKey {
    signer: SoftwareKey,
    decrypter: Pkcs1PrivateDecryptingKey,
}

impl std::fmt::Debug for RaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaKey").field("algorithm", &self.signer.key_algorithm()).finish_non_exhaustive()
    }
}

impl RaKey {
    /// Wraps an RSA software key; EC keys cannot receive RSA key transport.
    pub fn new(key: SoftwareKey) -> Result<Self, CaError> {
        if !key.key_algorithm().is_rsa() {
            return Err(CaError::UnsupportedPublicKey(format!(
                "the SCEP RA key must be RSA (clients encrypt to it), not {}",
                key.key_algorithm()
            )));
        }
        let pkcs8 = key.to_pkcs8_der()?;
        let private = PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .map_err(|e| CaError::InvalidPrivateKey(format!("RSA decryption key: {e}")))?;
        let decrypter = Pkcs1PrivateDecryptingKey::new(private)
            .map_err(|_| CaError::InvalidPrivateKey("RSA PKCS#1 decryption key".into()))?;
        Ok(RaKey { signer: key, decrypter })
    }

    /// The software key inside (to save it).
    pub fn software_key(&self) -> &SoftwareKey {
        &self.signer
    }

    /// PKCS#1 v1.5 decryption of a content-encryption key of `len` bytes. Any failure (bad
    /// padding, wrong length) yields a random key instead, so the caller fails later at the
    /// content's padding exactly as for a wrong key, and the reply tells nothing about the RSA
    /// step (Bleichenbacher).
    fn unwrap_key(&self, encrypted: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, CaError> {
        let mut out = Zeroizing::new(vec![0u8; self.decrypter.min_output_size()]);
        let decrypted = self.decrypter.decrypt(encrypted, &mut out).ok().map(|k| k.len());
        match decrypted {
            Some(n) if n == len => {
                out.truncate(n);
                Ok(out)
            }
            _ => random(len),
        }
    }
}

impl CaSigner for RaKey {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        self.signer.algorithm()
    }
    fn public_key(&self) -> spki::SubjectPublicKeyInfoOwned {
        self.signer.public_key()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        self.signer.sign(msg)
    }
}

fn random(len: usize) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let mut v = Zeroizing::new(vec![0u8; len]);
    SystemRandom::new().fill(&mut v).map_err(|_| CaError::SelfCheckFailed("random number generator"))?;
    Ok(v)
}

/// Whether `rid` names `cert`.
fn names(rid: &RecipientIdentifier, cert: &Certificate) -> bool {
    match rid {
        RecipientIdentifier::IssuerAndSerialNumber(ias) => {
            ias.issuer == cert.tbs_certificate.issuer
                && ias.serial_number == cert.tbs_certificate.serial_number
        }
        RecipientIdentifier::SubjectKeyIdentifier(ski) => cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == pkix::SUBJECT_KEY_IDENTIFIER)
            .any(|e| OctetString::from_der(e.extn_value.as_bytes()).is_ok_and(|v| v == ski.0)),
    }
}

fn malformed(what: impl std::fmt::Display) -> ScepFailure {
    ScepFailure::new(FailInfo::BadMessageCheck, format!("the pkcsPKIEnvelope is malformed: {what}"))
}

/// The parts of an EnvelopedData [`open`] needs, read from DER in which encryptedContent may still
/// be a constructed `[0]` of OCTET STRING chunks (BER streaming; [`super::ber`] keeps it).
struct Envelope {
    recipients: RecipientInfos,
    content_alg: AlgorithmIdentifierOwned,
    encrypted: Vec<u8>,
}

fn read_envelope(ber: &[u8]) -> Result<Envelope, ScepFailure> {
    let der = super::ber::to_der(ber).map_err(malformed)?;
    let info = ContentInfo::from_der(&der).map_err(malformed)?;
    if info.content_type != oids::CMS_ENVELOPED_DATA {
        return Err(malformed(format!("content type {} is not envelopedData", info.content_type)));
    }
    let inner = info.content.to_der().map_err(malformed)?;
    let mut reader = SliceReader::new(&inner).map_err(malformed)?;
    let envelope = reader
        .sequence(|r| {
            let _version = CmsVersion::decode(r)?;
            if r.peek_tag()? == (Tag::ContextSpecific { constructed: true, number: TagNumber::N0 }) {
                // originatorInfo: certificates for key agreement, of no use for key transport.
                let _ = r.tlv_bytes()?;
            }
            let recipients = RecipientInfos::decode(r)?;
            let (content_type, content_alg, encrypted) = r.sequence(|r| {
                let content_type = ObjectIdentifier::decode(r)?;
                let content_alg = AlgorithmIdentifierOwned::decode(r)?;
                let mut encrypted = None;
                if !r.is_finished() {
                    let header = Header::decode(r)?;
                    let body = r.read_slice(header.length)?;
                    encrypted = match header.tag {
                        Tag::ContextSpecific { constructed: false, number: TagNumber::N0 } => {
                            Some(body.to_vec())
                        }
                        Tag::ContextSpecific { constructed: true, number: TagNumber::N0 } => {
                            octet_string_chunks(body)
                        }
                        _ => None,
                    };
                }
                Ok((content_type, content_alg, encrypted))
            })?;
            // unprotectedAttrs, if any, mean nothing to SCEP.
            while !r.is_finished() {
                let _ = r.tlv_bytes()?;
            }
            Ok((recipients, content_type, content_alg, encrypted))
        })
        .map_err(malformed)?;
    reader.finish(()).map_err(malformed)?;
    let (recipients, content_type, content_alg, encrypted) = envelope;
    if content_type != pkix::CMS_DATA {
        return Err(malformed(format!("encrypted content type {content_type} is not id-data")));
    }
    let encrypted =
        encrypted.ok_or_else(|| malformed("encryptedContent is absent or not an OCTET STRING"))?;
    Ok(Envelope { recipients, content_alg, encrypted })
}

/// Opens a pkcsPKIEnvelope (a ContentInfo of type envelopedData) addressed to `ra_cert`.
/// Returns the plaintext and the cipher, which the reply reuses.
pub fn open(der: &[u8], ra: &RaKey, ra_cert: &Certificate) -> Result<(Vec<u8>, ContentCipher), ScepFailure> {
    let envelope = read_envelope(der)?;
    let cipher = ContentCipher::of_oid(&envelope.content_alg.oid)?;
    let iv: OctetString = envelope
        .content_alg
        .parameters
        .as_ref()
        .ok_or_else(|| malformed("the content encryption algorithm has no IV"))?
        .decode_as()
        .map_err(|_| malformed("the IV is not an OCTET STRING"))?;
    if iv.as_bytes().len() != cipher.block_len() {
        return Err(malformed(format!("an IV of {} bytes", iv.as_bytes().len())));
    }
    let ktri = envelope
        .recipients
        .0
        .iter()
        .find_map(|r| match r {
            RecipientInfo::Ktri(k) if names(&k.rid, ra_cert) => Some(k),
            _ => None,
        })
        .ok_or_else(|| {
            ScepFailure::new(
                FailInfo::BadMessageCheck,
                "the request is not encrypted to the RA certificate (take it from GetCACert)",
            )
        })?;
    if ktri.key_enc_alg.oid != pkix::RSA_ENCRYPTION {
        return Err(ScepFailure::new(
            FailInfo::BadAlg,
            format!("key transport {} is not supported; use rsaEncryption", ktri.key_enc_alg.oid),
        ));
    }
    let key = ra
        .unwrap_key(ktri.enc_key.as_bytes(), cipher.key_len())
        .map_err(|e| ScepFailure::new(FailInfo::BadMessageCheck, e.to_string()))?;
    let plain = cipher.decrypt(&key, iv.as_bytes(), &envelope.encrypted).ok_or_else(|| {
        ScepFailure::new(FailInfo::BadMessageCheck, "the pkcsPKIEnvelope does not decrypt with the RA key")
    })?;
    Ok((plain, cipher))
}

/// Encrypts `content` to `recipient` (an RSA certificate) as a ContentInfo of type envelopedData.
pub fn seal(
    content: &[u8],
    recipient: &ClientCertificate,
    cipher: ContentCipher,
) -> Result<Vec<u8>, CaError> {
    let spki = &recipient.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != pkix::RSA_ENCRYPTION {
        return Err(CaError::UnsupportedPublicKey("SCEP replies are encrypted to RSA keys only".into()));
    }
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CaError::UnsupportedPublicKey("public key BIT STRING is not octet-aligned".into()))?;
    let public = PublicEncryptingKey::from_der(&spki.to_der()?)
        .or_else(|_| PublicEncryptingKey::from_der(key_bytes))
        .map_err(|e| CaError::UnsupportedPublicKey(format!("RSA key rejected: {e}")))?;
    let public = Pkcs1PublicEncryptingKey::new(public)
        .map_err(|_| CaError::UnsupportedPublicKey("RSA key rejected".into()))?;
    let key = random(cipher.key_len())?;
    let iv = random(cipher.block_len())?;
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped_len =
        public.encrypt(&key, &mut wrapped).map_err(|_| CaError::SelfCheckFailed("RSA key transport"))?.len();
    wrapped.truncate(wrapped_len);
    let encrypted = cipher.encrypt(&key, &iv, content);

    // The recipient is named by the issuer and serial of the certificate the client signed its
    // request with, as sent: PKCS#7 clients (OpenSSL's PKCS7_decrypt) find their key no other
    // way, and a client's self-signed serial may be longer than RFC 5280's 20 octets.
    let ktri = SealedRecipient {
        version: CmsVersion::V0,
        rid: ClientIssuerAndSerial {
            issuer: recipient.tbs_certificate.issuer.clone(),
            serial_number: recipient.tbs_certificate.serial_number.clone(),
        },
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: pkix::RSA_ENCRYPTION,
            parameters: Some(der::asn1::Null.into()),
        },
        enc_key: OctetString::new(wrapped)?,
    };
    let enveloped = SealedEnvelope {
        version: CmsVersion::V0,
        recip_infos: Any::new(Tag::Set, ktri.to_der()?)?,
        encrypted_content: EncryptedContentInfo {
            content_type: pkix::CMS_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: cipher.oid(),
                parameters: Some(Any::encode_from(&OctetString::new(iv.to_vec())?)?),
            },
            encrypted_content: Some(OctetString::new(encrypted)?),
        },
    };
    Ok(ContentInfo { content_type: oids::CMS_ENVELOPED_DATA, content: Any::encode_from(&enveloped)? }
        .to_der()?)
}

/// KeyTransRecipientInfo (RFC 5652 §6.2.1) naming the recipient by a serial of any length.
#[derive(Debug, Clone, der::Sequence)]
struct SealedRecipient {
    version: CmsVersion,
    rid: ClientIssuerAndSerial,
    key_enc_alg: AlgorithmIdentifierOwned,
    enc_key: OctetString,
}

/// EnvelopedData with one recipient and no originatorInfo or unprotectedAttrs.
#[derive(Debug, Clone, der::Sequence)]
struct SealedEnvelope {
    version: CmsVersion,
    /// SET OF RecipientInfo, holding one [`SealedRecipient`].
    recip_infos: Any,
    encrypted_content: EncryptedContentInfo,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cbc_round_trips_and_refuses_bad_padding() {
        for cipher in [
            ContentCipher::Aes128Cbc,
            ContentCipher::Aes192Cbc,
            ContentCipher::Aes256Cbc,
            ContentCipher::DesEde3Cbc,
        ] {
            let key = vec![7u8; cipher.key_len()];
            let iv = vec![9u8; cipher.block_len()];
            for len in [0usize, 1, 7, 8, 15, 16, 17, 100] {
                let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let enc = cipher.encrypt(&key, &iv, &plain);
                assert!(enc.len().is_multiple_of(cipher.block_len()));
                assert_eq!(cipher.decrypt(&key, &iv, &enc).unwrap(), plain, "{cipher:?} {len}");
            }
            let enc = cipher.encrypt(&key, &iv, b"hello");
            assert!(cipher.decrypt(&key, &iv, &enc[..enc.len() - 1]).is_none());
            assert!(cipher.decrypt(&key, &iv, &[]).is_none());
        }
    }

    #[test]
    fn aes_matches_the_fips_197_vector() {
        // FIPS-197 C.1 as one CBC block with a zero IV: the ciphertext of the first block.
        let key: Vec<u8> = (0u8..16).collect();
        let plain: Vec<u8> = (0u8..16).map(|i| i * 0x11).collect();
        let enc = ContentCipher::Aes128Cbc.encrypt(&key, &[0; 16], &plain);
        assert_eq!(hex::encode(&enc[..16]), "69c4e0d86a7b0430d8cdb78070b4c55a");
    }

    proptest! {
        #[test]
        fn anything_decrypts_or_fails_without_panicking(
            data in prop::collection::vec(any::<u8>(), 0..80),
            key in prop::collection::vec(any::<u8>(), 32),
            iv in prop::collection::vec(any::<u8>(), 16),
        ) {
            for cipher in [ContentCipher::Aes128Cbc, ContentCipher::Aes256Cbc, ContentCipher::DesEde3Cbc] {
                let _ = cipher.decrypt(&key[..cipher.key_len()], &iv[..cipher.block_len()], &data);
            }
        }
    }
}
