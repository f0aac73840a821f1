//! Card secrets, the key-encryption key (KEK) that protects them at rest, and one-time tokens.
//!
//! - [`CardSecrets`]: a card's management key, PUK and initial PIN, in zeroising containers whose
//!   `Debug` prints no secret byte.
//! - [`Kek`]: 32 bytes, AES-256-GCM from aws-lc-rs, known by a non-secret [`KekId`]. Ciphertext
//!   layout: `version (0x02) ‖ KEK id (16) ‖ nonce (12 random bytes) ‖ ciphertext ‖ tag (16)`.
//!   The AEAD's associated data is `version ‖ KEK id ‖ caller AAD`; [`CardSecrets::seal`] uses
//!   the device id as caller AAD, so a blob copied onto another device's row does not decrypt.
//!   Opening a blob with another KEK fails naming both ids. Version 1 (`0x01 ‖ nonce ‖ ciphertext
//!   ‖ tag`, associated data `0x01 ‖ caller AAD`), written before blobs carried the id, is still
//!   read.
//! - [`TokenHash`] / [`generate_token`]: random tokens (enrollment codes, agent tickets, API
//!   tokens, session cookies) of which only a SHA-256 hash is ever stored.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::ids::DeviceId;
use crate::macros::serde_hex;
use crate::model::{PinRuleError, PinRules, Policy};

/// What can go wrong with secrets and the KEK.
#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("the system random number generator failed")]
    Rng,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is accessible to group or others (mode {mode:03o}); a key-encryption key must be \
         private to its owner: chmod 600 {path}"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a key-encryption key file: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("{path} exists already; a key-encryption key is never overwritten")]
    KekFileExists { path: PathBuf },
    #[error("ciphertext is {len} bytes, shorter than the {min} bytes of its version's header and tag")]
    Truncated { len: usize, min: usize },
    #[error("ciphertext has format version {0}, this build reads versions 1 and 2")]
    UnknownVersion(u8),
    #[error(
        "sealed under the key-encryption key with id {sealed_with}, but the key-encryption key \
         given has id {given}"
    )]
    WrongKek { sealed_with: KekId, given: KekId },
    #[error(
        "decryption failed: wrong binding (another device's record?), tampered ciphertext, or, for a \
         version 1 blob, which names no key, the wrong key-encryption key"
    )]
    DecryptFailed,
    #[error("malformed card secrets: {0}")]
    Malformed(&'static str),
    #[error(
        "management key algorithm 0x{0:02x} is not supported (expected 0x03 3DES, 0x08 AES-128, \
         0x0a AES-192 or 0x0c AES-256)"
    )]
    UnknownMgmAlgorithm(u8),
    #[error("a management key for algorithm 0x{algorithm:02x} has {expected} bytes, got {got}")]
    MgmKeyLength { algorithm: u8, expected: usize, got: usize },
    #[error("PUK must be 6 to 8 printable ASCII characters")]
    BadPuk,
    #[error("initial PIN: {0}")]
    BadInitialPin(PinRuleError),
    #[error("encryption failed")]
    EncryptFailed,
}

pub(crate) fn random_fill(buf: &mut [u8]) -> Result<(), SecretsError> {
    SystemRandom::new().fill(buf).map_err(|_| SecretsError::Rng)
}

/// `n` random decimal digits, without modulo bias.
fn random_digits(n: usize) -> Result<SecretString, SecretsError> {
    let mut out = String::with_capacity(n);
    let mut pool = Zeroizing::new([0u8; 32]);
    while out.len() < n {
        random_fill(pool.as_mut())?;
        for &b in pool.iter() {
            // 250 is the largest multiple of 10 that fits a byte.
            if b < 250 && out.len() < n {
                out.push(char::from(b'0' + b % 10));
            }
        }
    }
    // `out` was allocated at its final size, so the conversion keeps the allocation instead of
    // copying into a new one and leaving an unzeroed copy behind.
    Ok(SecretString::from(out))
}

/// PIV management key algorithm identifiers (SP 800-78) and their key lengths.
pub mod mgm_algorithm {
    /// Triple DES (for cards without AES).
    pub const TDES: u8 = 0x03;
    pub const AES128: u8 = 0x08;
    pub const AES192: u8 = 0x0A;
    pub const AES256: u8 = 0x0C;

    /// Key length in bytes, or `None` for an unknown algorithm.
    pub const fn key_len(algorithm: u8) -> Option<usize> {
        match algorithm {
            TDES | AES192 => Some(24),
            AES128 => Some(16),
            AES256 => Some(32),
            _ => None,
        }
    }
}

/// A card's management key.
pub struct ManagementKey {
    algorithm: u8,
    key: SecretSlice<u8>,
}

impl ManagementKey {
    /// Checks the algorithm id and key length.
    pub fn new(algorithm: u8, key: Zeroizing<Vec<u8>>) -> Result<Self, SecretsError> {
        let expected =
            mgm_algorithm::key_len(algorithm).ok_or(SecretsError::UnknownMgmAlgorithm(algorithm))?;
        if key.len() != expected {
            return Err(SecretsError::MgmKeyLength { algorithm, expected, got: key.len() });
        }
        Ok(Self { algorithm, key: SecretSlice::from(key.to_vec()) })
    }

    /// A random key for `algorithm`.
    pub fn generate(algorithm: u8) -> Result<Self, SecretsError> {
        let len = mgm_algorithm::key_len(algorithm).ok_or(SecretsError::UnknownMgmAlgorithm(algorithm))?;
        let mut key = Zeroizing::new(vec![0u8; len]);
        random_fill(&mut key)?;
        Self::new(algorithm, key)
    }

    /// The PIV algorithm identifier.
    pub fn algorithm(&self) -> u8 {
        self.algorithm
    }

    /// The key bytes.
    pub fn key(&self) -> &[u8] {
        self.key.expose_secret()
    }
}

impl fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManagementKey {{ algorithm: 0x{:02x}, key: [REDACTED] }}", self.algorithm)
    }
}

/// The secrets Lanyard keeps for a card it personalised. The new PIN a user sets is never here:
/// it goes from the browser to the card through the agent.
pub struct CardSecrets {
    management_key: ManagementKey,
    puk: SecretString,
    initial_pin: SecretString,
    /// The random FIDO PIN Lanyard sets on a security key in the `shared` and `temporary` FIDO
    /// PIN modes (a PIN the holder chooses is never here).
    fido_pin: Option<SecretString>,
}

impl fmt::Debug for CardSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardSecrets")
            .field("management_key", &self.management_key)
            .field("puk", &"[REDACTED]")
            .field("initial_pin", &"[REDACTED]")
            .field("fido_pin", &self.fido_pin.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// Card secrets encrypted under the KEK and bound to one device: what the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCardSecrets(Vec<u8>);

impl SealedCardSecrets {
    /// Wraps bytes read from storage.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id of the KEK these secrets were sealed under (`None` for a version 1 blob, written
    /// before blobs carried it).
    pub fn kek_id(&self) -> Result<Option<KekId>, SecretsError> {
        Kek::sealed_with(&self.0)
    }
}

impl fmt::Debug for SealedCardSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedCardSecrets({} bytes)", self.0.len())
    }
}

const SECRETS_FORMAT: u8 = 1;

impl CardSecrets {
    /// Checks and wraps the parts. The PUK is 6–8 printable ASCII characters; the initial PIN is
    /// 6–8 digits.
    pub fn new(
        management_key: ManagementKey,
        puk: SecretString,
        initial_pin: SecretString,
    ) -> Result<Self, SecretsError> {
        let p = puk.expose_secret();
        if !(6..=8).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretsError::BadPuk);
        }
        PinRules { min_len: 6, max_len: 8, forbid_trivial: false }
            .check(initial_pin.expose_secret())
            .map_err(SecretsError::BadInitialPin)?;
        Ok(Self { management_key, puk, initial_pin, fido_pin: None })
    }

    /// Adds the random FIDO PIN Lanyard sets on the key: 8 to 63 digits.
    pub fn with_fido_pin(mut self, pin: SecretString) -> Result<Self, SecretsError> {
        let p = pin.expose_secret();
        if !(8..=63).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SecretsError::Malformed("a FIDO PIN Lanyard sets is 8 to 63 digits"));
        }
        self.fido_pin = Some(pin);
        Ok(self)
    }

    /// The random FIDO PIN for `policy`, when its FIDO PIN mode has Lanyard set one (`shared`,
    /// `temporary`): digits, as long as the policy's FIDO minimum and never shorter than eight,
    /// and not a trivial run, so the key and the policy both take it.
    pub fn generate_fido_pin(policy: &Policy) -> Result<Option<SecretString>, SecretsError> {
        use crate::model::FidoPinMode;
        if !matches!(policy.fido_pin_mode, FidoPinMode::Shared | FidoPinMode::Temporary) {
            return Ok(None);
        }
        let len = usize::from(policy.fido_min_pin_length.clamp(8, 63));
        let rules = crate::model::FidoPinRules { min_len: 8, forbid_trivial: true };
        loop {
            let pin = random_digits(len)?;
            if rules.check(pin.expose_secret()).is_ok() {
                return Ok(Some(pin));
            }
        }
    }

    /// See [`CardSecrets::with_fido_pin`].
    pub fn fido_pin(&self) -> Option<&SecretString> {
        self.fido_pin.as_ref()
    }

    /// Fresh random secrets: a management key for `mgm_algorithm`, an 8-digit PUK, and an initial
    /// PIN of the policy's maximum length that the policy's rules accept.
    pub fn generate(mgm_algorithm: u8, policy: &Policy) -> Result<Self, SecretsError> {
        let management_key = ManagementKey::generate(mgm_algorithm)?;
        let puk = random_digits(8)?;
        let pin_len = usize::from(policy.pin.max_len.clamp(6, 8));
        let initial_pin = loop {
            let pin = random_digits(pin_len)?;
            if policy.check_pin(pin.expose_secret()).is_ok() {
                break pin;
            }
        };
        Self::new(management_key, puk, initial_pin)
    }

    pub fn management_key(&self) -> &ManagementKey {
        &self.management_key
    }

    pub fn puk(&self) -> &SecretString {
        &self.puk
    }

    pub fn initial_pin(&self) -> &SecretString {
        &self.initial_pin
    }

    /// The plaintext encoding: `0x01` (format), then four fields, each `tag ‖ length (1 byte) ‖
    /// value`: `01` algorithm, `02` management key, `03` PUK, `04` initial PIN; and `05` the FIDO
    /// PIN when there is one (secrets sealed before it existed simply lack it).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut fields: Vec<(u8, &[u8])> = vec![
            (1, std::slice::from_ref(&self.management_key.algorithm)),
            (2, self.management_key.key()),
            (3, self.puk.expose_secret().as_bytes()),
            (4, self.initial_pin.expose_secret().as_bytes()),
        ];
        if let Some(pin) = &self.fido_pin {
            fields.push((5, pin.expose_secret().as_bytes()));
        }
        let len = 1 + fields.iter().map(|(_, v)| 2 + v.len()).sum::<usize>();
        // Allocated once at its final size, so no unzeroed copy is left behind by growth.
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        out.push(SECRETS_FORMAT);
        for (tag, value) in fields {
            out.push(tag);
            // Every field is at most 63 bytes (checked on construction).
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        out
    }

    /// Parses [`CardSecrets::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsError> {
        let (&format, mut rest) = bytes.split_first().ok_or(SecretsError::Malformed("empty"))?;
        if format != SECRETS_FORMAT {
            return Err(SecretsError::Malformed("unknown format byte"));
        }
        // `None` only for an optional field (`required` false) at the end of the data.
        let mut field = |tag: u8, required: bool| -> Result<Option<&[u8]>, SecretsError> {
            if rest.is_empty() && !required {
                return Ok(None);
            }
            let [t, len, tail @ ..] = rest else {
                return Err(SecretsError::Malformed("truncated field header"));
            };
            if *t != tag {
                return Err(SecretsError::Malformed("fields out of order"));
            }
            let len = usize::from(*len);
            if tail.len() < len {
                return Err(SecretsError::Malformed("field longer than the data"));
            }
            let (value, tail) = tail.split_at(len);
            rest = tail;
            Ok(Some(value))
        };
        let mut next = |tag: u8| field(tag, true).map(Option::unwrap_or_default);
        let algorithm = match next(1)? {
            [a] => *a,
            _ => return Err(SecretsError::Malformed("algorithm field must be one byte")),
        };
        let key = Zeroizing::new(next(2)?.to_vec());
        let text = |v: &[u8]| {
            std::str::from_utf8(v).map(SecretString::from).map_err(|_| SecretsError::Malformed("not UTF-8"))
        };
        let puk = text(next(3)?)?;
        let initial_pin = text(next(4)?)?;
        let fido_pin = field(5, false)?.map(text).transpose()?;
        if !rest.is_empty() {
            return Err(SecretsError::Malformed("trailing bytes"));
        }
        let secrets = Self::new(ManagementKey::new(algorithm, key)?, puk, initial_pin)?;
        match fido_pin {
            Some(pin) => secrets.with_fido_pin(pin),
            None => Ok(secrets),
        }
    }

    /// Encrypts for storage on `device`'s row.
    pub fn seal(&self, kek: &Kek, device: DeviceId) -> Result<SealedCardSecrets, SecretsError> {
        kek.encrypt(&self.to_bytes(), &card_secrets_aad(device)).map(SealedCardSecrets)
    }

    /// Decrypts what [`CardSecrets::seal`] produced for the same device under the same KEK.
    pub fn open(sealed: &SealedCardSecrets, kek: &Kek, device: DeviceId) -> Result<Self, SecretsError> {
        let plain = kek.decrypt(&sealed.0, &card_secrets_aad(device))?;
        Self::from_bytes(&plain)
    }
}

/// The associated data that binds card secrets to a device.
pub fn card_secrets_aad(device: DeviceId) -> Vec<u8> {
    let mut aad = b"lanyard card secrets for device ".to_vec();
    aad.extend_from_slice(device.as_bytes());
    aad
}

/// The identifier of a key-encryption key: the first 16 bytes of a SHA-256 over a
/// domain-separated label and the key.
///
/// Derived rather than stored beside the key, so it cannot drift from the key it names: a copy of
/// the key file (or the same 64 hex digits restored from a vault) has the same id, and the key
/// file stays 64 hex digits. It reveals nothing usable about the key (recovering a 256-bit key
/// from its hash is out of reach), so it is printed, logged, stored in the database's
/// installation record and written in front of every sealed blob. 128 bits make two keys of one
/// installation sharing an id a non-event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId([u8; KekId::LEN]);

impl KekId {
    pub const LEN: usize = 16;

    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({self})")
    }
}

impl std::str::FromStr for KekId {
    type Err = String;

    /// 32 hex digits, as [`KekId`]'s `Display` writes them.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; Self::LEN];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| format!("a key-encryption key id is {} hex digits: {e}", 2 * Self::LEN))?;
        Ok(Self(out))
    }
}

/// The key-encryption key.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek {{ id: {} }}", self.id())
    }
}

/// The format [`Kek::encrypt`] writes: the KEK id travels with the ciphertext.
const KEK_FORMAT: u8 = 2;
/// The format written before blobs carried the KEK id; still read.
const KEK_FORMAT_V1: u8 = 1;
const TAG_LEN: usize = 16;
/// Version and KEK id.
const HEADER_LEN: usize = 1 + KekId::LEN;

impl Kek {
    /// A fresh random key.
    pub fn generate() -> Result<Self, SecretsError> {
        let mut key = Zeroizing::new([0u8; 32]);
        random_fill(key.as_mut())?;
        Ok(Self { key })
    }

    /// Wraps existing key bytes (from an HSM unwrap, a test, …).
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        Self { key }
    }

    /// This key's non-secret identifier (see [`KekId`]).
    pub fn id(&self) -> KekId {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"lanyard kek id\0");
        ctx.update(self.key.as_ref());
        let mut id = [0u8; KekId::LEN];
        id.copy_from_slice(&ctx.finish().as_ref()[..KekId::LEN]);
        KekId(id)
    }

    /// Reads an existing key file: 64 hex digits, optionally followed by a newline. A missing
    /// file is an error (`Io` with `NotFound`): loading never creates a key; [`Kek::create`] does.
    /// On Unix a file that group or others can access is refused.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let io = |source| SecretsError::Io { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let bad =
            |reason: &str| SecretsError::BadKeyFile { path: path.to_owned(), reason: reason.to_owned() };
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretsError::InsecurePermissions { path: path.to_owned(), mode });
            }
        }
        if meta.len() > 128 {
            return Err(bad("larger than 64 hex digits and a newline"));
        }
        let text = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let hex_digits = text.strip_suffix(b"\n").unwrap_or(&text);
        let hex_digits = hex_digits.strip_suffix(b"\r").unwrap_or(hex_digits);
        if hex_digits.len() != 64 {
            return Err(bad(&format!("expected 64 hex digits, found {} characters", hex_digits.len())));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_digits, key.as_mut()).map_err(|e| bad(&e.to_string()))?;
        Ok(Self { key })
    }

    /// Creates the key file at `path` with a fresh key (mode 0600 on Unix). An existing file is
    /// never overwritten: that is [`SecretsError::KekFileExists`], and the file is left as it was.
    pub fn create(path: &Path) -> Result<Self, SecretsError> {
        let io = |source| SecretsError::Io { path: path.to_owned(), source };
        let kek = Self::generate()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                SecretsError::KekFileExists { path: path.to_owned() }
            } else {
                io(source)
            }
        })?;
        let mut text = Zeroizing::new(Vec::with_capacity(65));
        text.extend_from_slice(hex::encode(kek.key.as_ref()).as_bytes());
        text.push(b'\n');
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        if let Err(source) = written {
            // Do not leave a half-written key behind for the next start to trip over.
            let _ = std::fs::remove_file(path);
            return Err(io(source));
        }
        Ok(kek)
    }

    fn aead_key(&self) -> Result<LessSafeKey, SecretsError> {
        // Only fails for a wrong key length, which the type rules out.
        let key =
            UnboundKey::new(&AES_256_GCM, self.key.as_ref()).map_err(|_| SecretsError::EncryptFailed)?;
        Ok(LessSafeKey::new(key))
    }

    /// Encrypts `plaintext` bound to `aad` (see the module docs for the layout).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_fill(&mut nonce)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(KEK_FORMAT);
        out.extend_from_slice(self.id().as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        // The header is authenticated too, so a blob whose id was rewritten does not decrypt.
        let full_aad = [&out[..HEADER_LEN], aad].concat();
        let tag = self
            .aead_key()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&full_aad[..]),
                &mut out[HEADER_LEN + NONCE_LEN..],
            )
            .map_err(|_| SecretsError::EncryptFailed)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The KEK id a ciphertext from [`Kek::encrypt`] names, without decrypting it; `None` for a
    /// version 1 blob, which carries none.
    pub fn sealed_with(ciphertext: &[u8]) -> Result<Option<KekId>, SecretsError> {
        match ciphertext.first() {
            Some(&KEK_FORMAT) => {
                let min = HEADER_LEN + NONCE_LEN + TAG_LEN;
                let id = ciphertext
                    .get(1..HEADER_LEN)
                    .filter(|_| ciphertext.len() >= min)
                    .ok_or(SecretsError::Truncated { len: ciphertext.len(), min })?;
                let mut out = [0u8; KekId::LEN];
                out.copy_from_slice(id);
                Ok(Some(KekId(out)))
            }
            Some(&KEK_FORMAT_V1) => Ok(None),
            Some(&other) => Err(SecretsError::UnknownVersion(other)),
            None => Err(SecretsError::Truncated { len: 0, min: HEADER_LEN + NONCE_LEN + TAG_LEN }),
        }
    }

    /// Decrypts what [`Kek::encrypt`] produced with the same `aad`. A blob sealed under another
    /// KEK is [`SecretsError::WrongKek`], naming both ids.
    pub fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let header_len = match Self::sealed_with(ciphertext)? {
            Some(sealed_with) => {
                let given = self.id();
                if sealed_with != given {
                    return Err(SecretsError::WrongKek { sealed_with, given });
                }
                HEADER_LEN
            }
            None => 1,
        };
        let min = header_len + NONCE_LEN + TAG_LEN;
        if ciphertext.len() < min {
            return Err(SecretsError::Truncated { len: ciphertext.len(), min });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&ciphertext[header_len..header_len + NONCE_LEN]);
        let mut buf = Zeroizing::new(ciphertext[header_len + NONCE_LEN..].to_vec());
        let full_aad = [&ciphertext[..header_len], aad].concat();
        let len = self
            .aead_key()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&full_aad[..]), &mut buf)
            .map_err(|_| SecretsError::DecryptFailed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The SHA-256 of a random token. Tokens have at least 160 bits of entropy, so a fast hash is
/// enough: there is nothing to brute-force.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(#[serde(with = "serde_hex")] [u8; 32]);

impl TokenHash {
    /// The hash of `token` as presented.
    pub fn of(token: &str) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"lanyard token\0");
        ctx.update(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    /// Whether `presented` hashes to this value (compared in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&Self::of(presented).0, &self.0).is_ok()
    }

    /// Wraps a stored hash.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

/// A random password of `len` characters from `A-Z a-z 0-9` (about 5.95 bits each), without
/// modulo bias: for generated account passwords that a person types once.
pub fn random_password(len: usize) -> Result<SecretString, SecretsError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut pool = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        random_fill(pool.as_mut_slice())?;
        // 248 = 4 × 62: bytes at or above it would favour the first characters.
        for b in pool.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*b) % 62]));
        }
    }
    Ok(SecretString::from(out.as_str()))
}

/// A random token of `bytes` random bytes, as lowercase hex, and its hash.
pub fn generate_token(bytes: usize) -> Result<(SecretString, TokenHash), SecretsError> {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    random_fill(&mut raw)?;
    let text = Zeroizing::new(hex::encode(raw.as_slice()));
    let hash = TokenHash::of(&text);
    Ok((SecretString::from(text.as_str()), hash))
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN_ID: &str = "79742dcb5f04fe6bd1c13e399de89828";

    fn sample() -> CardSecrets {
        let key = Zeroizing::new((0xA0..0xC0).collect::<Vec<u8>>());
        CardSecrets::new(
            ManagementKey::new(mgm_algorithm::AES256, key).unwrap(),
            SecretString::from("87654321"),
            SecretString::from("246801"),
        )
        .unwrap()
    }

    fn assert_same(a: &CardSecrets, b: &CardSecrets) {
        assert_eq!(a.management_key().algorithm(), b.management_key().algorithm());
        assert_eq!(a.management_key().key(), b.management_key().key());
        assert_eq!(a.puk().expose_secret(), b.puk().expose_secret());
        assert_eq!(a.initial_pin().expose_secret(), b.initial_pin().expose_secret());
    }

    #[test]
    fn a_fido_pin_is_sealed_with_the_card_secrets_and_older_blobs_read_without_one() {
        use crate::model::{FidoPinMode, Policy};
        let kek = Kek::generate().unwrap();
        let device = DeviceId::new();
        let none = Policy::default();
        assert!(CardSecrets::generate_fido_pin(&none).unwrap().is_none());
        for (mode, min, len) in [(FidoPinMode::Shared, 6, 8), (FidoPinMode::Temporary, 12, 12)] {
            let policy = Policy { fido_pin_mode: mode, fido_min_pin_length: min, ..Policy::default() };
            let pin = CardSecrets::generate_fido_pin(&policy).unwrap().unwrap();
            assert_eq!(pin.expose_secret().len(), len);
            let secrets = sample().with_fido_pin(pin.clone()).unwrap();
            let opened = CardSecrets::open(&secrets.seal(&kek, device).unwrap(), &kek, device).unwrap();
            assert_eq!(
                opened.fido_pin().map(|p| p.expose_secret().to_owned()),
                Some(pin.expose_secret().to_owned())
            );
            assert!(!format!("{opened:?}").contains(pin.expose_secret()));
        }
        // Secrets sealed before the FIDO PIN existed.
        let old = sample();
        assert!(CardSecrets::from_bytes(&old.to_bytes()).unwrap().fido_pin().is_none());
        for bad in ["1234567", "12345678a", &"1".repeat(64)] {
            assert!(sample().with_fido_pin(SecretString::from(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_passwords_are_alphanumeric_and_differ() {
        let a = random_password(20).unwrap();
        let b = random_password(20).unwrap();
        assert_eq!(a.expose_secret().len(), 20);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn seal_open_round_trip() {
        let kek = Kek::generate().unwrap();
        let device = DeviceId::new();
        let secrets = sample();
        let sealed = secrets.seal(&kek, device).unwrap();
        assert_eq!(sealed.as_bytes()[0], 2);
        assert_eq!(&sealed.as_bytes()[1..17], kek.id().as_bytes(), "the KEK id follows the version");
        assert_eq!(sealed.kek_id().unwrap(), Some(kek.id()));
        assert_eq!(sealed.as_bytes().len(), 1 + 16 + 12 + secrets.to_bytes().len() + 16);
        assert_same(&CardSecrets::open(&sealed, &kek, device).unwrap(), &secrets);
        // A fresh nonce each time.
        assert_ne!(secrets.seal(&kek, device).unwrap(), sealed);
    }

    #[test]
    fn another_devices_row_does_not_decrypt() {
        let kek = Kek::generate().unwrap();
        let sealed = sample().seal(&kek, DeviceId::new()).unwrap();
        assert!(matches!(
            CardSecrets::open(&sealed, &kek, DeviceId::new()),
            Err(SecretsError::DecryptFailed)
        ));
    }

    #[test]
    fn opening_with_another_kek_names_both_ids() {
        let device = DeviceId::new();
        let (a, b) = (Kek::generate().unwrap(), Kek::generate().unwrap());
        let sealed = sample().seal(&a, device).unwrap();
        let err = CardSecrets::open(&sealed, &b, device).unwrap_err();
        assert!(
            matches!(err, SecretsError::WrongKek { sealed_with, given } if sealed_with == a.id() && given == b.id()),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "sealed under the key-encryption key with id {}, but the key-encryption key given has id {}",
                a.id(),
                b.id()
            )
        );
    }

    /// The version 1 layout, written before blobs carried the KEK id: `01 ‖ nonce ‖ ciphertext ‖
    /// tag`, associated data `01 ‖ caller AAD`. Built here independently of `Kek::encrypt`.
    fn seal_v1(kek: &Kek, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = [7u8; NONCE_LEN];
        let mut out = vec![1u8];
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = kek
            .aead_key()
            .unwrap()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[&[1u8][..], aad].concat()[..]),
                &mut out[1 + NONCE_LEN..],
            )
            .unwrap();
        out.extend_from_slice(tag.as_ref());
        out
    }

    #[test]
    fn version_1_blobs_stay_readable() {
        let kek = Kek::generate().unwrap();
        let device = DeviceId::new();
        let v1 =
            SealedCardSecrets::from_bytes(seal_v1(&kek, &sample().to_bytes(), &card_secrets_aad(device)));
        assert_eq!(v1.kek_id().unwrap(), None, "a version 1 blob names no KEK");
        assert_same(&CardSecrets::open(&v1, &kek, device).unwrap(), &sample());
        // Without an id in the blob, a wrong KEK can only show as a failed decryption.
        let err = CardSecrets::open(&v1, &Kek::generate().unwrap(), device).unwrap_err();
        assert!(matches!(err, SecretsError::DecryptFailed), "{err:?}");
    }

    #[test]
    fn kek_ids_are_stable_derived_and_parse() {
        let key = Kek::from_bytes(Zeroizing::new([0x5A; 32]));
        // python3 -c "import hashlib;print(hashlib.sha256(b'lanyard kek id\\0'+b'\\x5a'*32).hexdigest()[:32])"
        assert_eq!(key.id().to_string(), KNOWN_ID);
        assert_eq!(Kek::from_bytes(Zeroizing::new([0x5A; 32])).id(), key.id(), "same key, same id");
        assert_ne!(Kek::generate().unwrap().id(), key.id());
        assert_eq!(KNOWN_ID.parse::<KekId>().unwrap(), key.id());
        assert!("abcd".parse::<KekId>().unwrap_err().contains("32 hex digits"));
        assert_eq!(format!("{key:?}"), format!("Kek {{ id: {KNOWN_ID} }}"));
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let kek = Kek::generate().unwrap();
        let device = DeviceId::new();
        let sealed = sample().seal(&kek, device).unwrap();
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            let err = CardSecrets::open(&SealedCardSecrets::from_bytes(bytes), &kek, device).unwrap_err();
            let expected = match i {
                0 => "UnknownVersion",
                1..17 => "WrongKek",
                _ => "DecryptFailed",
            };
            assert!(format!("{err:?}").starts_with(expected), "byte {i}: {err:?}");
        }
        let short = SealedCardSecrets::from_bytes(sealed.as_bytes()[..44].to_vec());
        assert_eq!(
            CardSecrets::open(&short, &kek, device).unwrap_err().to_string(),
            "ciphertext is 44 bytes, shorter than the 45 bytes of its version's header and tag"
        );
    }

    #[test]
    fn debug_never_prints_secrets() {
        let s = sample();
        let text = format!("{s:?} {:?} {:#?}", Kek::generate().unwrap(), s);
        for needle in ["87654321", "246801", "a0a1a2", "160, 161", "A0A1"] {
            assert!(!text.contains(needle), "{needle} leaked in {text}");
        }
        assert!(text.contains("REDACTED"));
        let kek = Kek::from_bytes(Zeroizing::new([0x5A; 32]));
        assert!(!format!("{kek:?}").to_lowercase().contains("5a5a"));
    }

    #[test]
    fn encoding_is_strict() {
        let bytes = sample().to_bytes();
        assert_same(&CardSecrets::from_bytes(&bytes).unwrap(), &sample());
        let mut stray = bytes.to_vec();
        stray.push(0);
        assert_eq!(
            CardSecrets::from_bytes(&stray).unwrap_err().to_string(),
            "malformed card secrets: truncated field header"
        );
        let mut unknown = bytes.to_vec();
        unknown.extend_from_slice(&[9, 0]);
        assert_eq!(
            CardSecrets::from_bytes(&unknown).unwrap_err().to_string(),
            "malformed card secrets: fields out of order"
        );
        let with_fido = sample().with_fido_pin(SecretString::from("48291736")).unwrap().to_bytes();
        let mut trailing = with_fido.to_vec();
        trailing.push(0);
        assert_eq!(
            CardSecrets::from_bytes(&trailing).unwrap_err().to_string(),
            "malformed card secrets: trailing bytes"
        );
        assert!(CardSecrets::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(CardSecrets::from_bytes(&[]).is_err());
    }

    #[test]
    fn constructor_checks() {
        assert_eq!(
            ManagementKey::new(mgm_algorithm::AES128, Zeroizing::new(vec![0; 24])).unwrap_err().to_string(),
            "a management key for algorithm 0x08 has 16 bytes, got 24"
        );
        assert!(matches!(
            ManagementKey::new(0x11, Zeroizing::new(vec![0; 16])),
            Err(SecretsError::UnknownMgmAlgorithm(0x11))
        ));
        let key = || ManagementKey::generate(mgm_algorithm::TDES).unwrap();
        assert!(matches!(CardSecrets::new(key(), "1234".into(), "246801".into()), Err(SecretsError::BadPuk)));
        assert!(matches!(
            CardSecrets::new(key(), "12345678".into(), "12a456".into()),
            Err(SecretsError::BadInitialPin(PinRuleError::NotDigits))
        ));
    }

    #[test]
    fn generated_secrets_follow_the_policy() {
        let policy = Policy::default();
        for _ in 0..50 {
            let s = CardSecrets::generate(mgm_algorithm::AES192, &policy).unwrap();
            assert_eq!(s.management_key().key().len(), 24);
            assert_eq!(s.puk().expose_secret().len(), 8);
            let pin = s.initial_pin().expose_secret();
            assert_eq!(pin.len(), 8);
            assert_eq!(policy.check_pin(pin), Ok(()));
        }
    }

    #[cfg(unix)]
    #[test]
    fn kek_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        assert!(
            matches!(Kek::load(&path), Err(SecretsError::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "loading never creates a key"
        );
        assert!(!path.exists());
        let kek = Kek::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(&path).unwrap();
        let err = Kek::create(&path).unwrap_err();
        assert!(matches!(err, SecretsError::KekFileExists { .. }), "{err:?}");
        assert!(
            err.to_string().ends_with("exists already; a key-encryption key is never overwritten"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "an existing key file is left as it was");
        let again = Kek::load(&path).unwrap();
        assert_eq!(kek.id(), again.id());
        let device = DeviceId::new();
        let sealed = sample().seal(&kek, device).unwrap();
        assert_same(&CardSecrets::open(&sealed, &again, device).unwrap(), &sample());
    }

    #[cfg(unix)]
    #[test]
    fn kek_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        Kek::create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Kek::load(&path).unwrap_err();
        assert!(matches!(err, SecretsError::InsecurePermissions { mode: 0o640, .. }), "{err:?}");
        assert!(err.to_string().contains("(mode 640)"), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_kek_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let write = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        };
        write(b"abcd\n");
        let err = Kek::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("is not a key-encryption key file: expected 64 hex digits, found 4 characters"),
            "{err}"
        );
        write(&[b'z'; 64]);
        let err = Kek::load(&path).unwrap_err().to_string();
        assert!(err.contains("Invalid character 'z'"), "{err}");
        write(format!("{}\n", "0f".repeat(32)).as_bytes());
        Kek::load(&path).unwrap();
        let missing = dir.path().join("nowhere/kek");
        assert!(matches!(Kek::create(&missing), Err(SecretsError::Io { .. })));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_matches() {
        let (a, ha) = generate_token(20).unwrap();
        let (b, hb) = generate_token(20).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(ha, hb);
        assert!(ha.matches(a.expose_secret()));
        assert!(!ha.matches(b.expose_secret()));
        let json = serde_json::to_string(&ha).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), ha);
    }
}
