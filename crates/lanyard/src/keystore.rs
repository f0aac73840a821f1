//! The reference client's encrypted keystore: the credentials `lanyard mobile enroll` obtained
//! (private key, certificate, chain), in one passphrase-protected file.
//!
//! File format, version 1 (JSON):
//! `{"format": "lanyard-mobile-keystore", "version": 1, "kdf": {"name": "pbkdf2-hmac-sha256",
//! "iterations": N, "salt": b64}, "cipher": "aes-256-gcm", "nonce": b64, "ciphertext": b64}`.
//! The key is PBKDF2-HMAC-SHA-256 of the passphrase (600 000 iterations, OWASP's 2023 figure);
//! the ciphertext is AES-256-GCM of the entries' JSON, with the header (format, version, kdf,
//! cipher) as associated data, so a changed header fails like a wrong passphrase. Every save
//! draws a fresh salt and nonce. The file is written to a temporary file and renamed, mode 0600.

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{pbkdf2, rand};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::path::Path;
use zeroize::Zeroizing;

const FORMAT: &str = "lanyard-mobile-keystore";
const VERSION: u32 = 1;
const KDF: &str = "pbkdf2-hmac-sha256";
const CIPHER: &str = "aes-256-gcm";
/// Iterations for new files; files say their own.
pub const ITERATIONS: u32 = 600_000;
/// Files asking for fewer iterations are refused (a doctored header would weaken the key).
const MIN_ITERATIONS: u32 = 100_000;

/// One enrolled credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The credential id the server gave.
    pub id: String,
    pub server: String,
    pub holder: String,
    pub device_id: String,
    pub profile: String,
    pub assurance: String,
    pub serial: String,
    pub not_after: String,
    pub enrolled_at: String,
    /// PKCS#8 DER, base64.
    pub key_pkcs8: String,
    /// DER, base64.
    pub certificate: String,
    /// Issuing CA, then root; DER, base64.
    pub chain: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    entries: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfHeader {
    name: String,
    iterations: u32,
    salt: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    version: u32,
    kdf: KdfHeader,
    cipher: String,
    nonce: String,
    ciphertext: String,
}

fn aad(format: &str, version: u32, kdf: &KdfHeader, cipher: &str) -> Vec<u8> {
    format!("{format}\n{version}\n{}\n{}\n{}\n{cipher}", kdf.name, kdf.iterations, kdf.salt).into_bytes()
}

fn key(passphrase: &str, salt: &[u8], iterations: u32) -> anyhow::Result<LessSafeKey> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    let n = NonZeroU32::new(iterations).context("zero iterations")?;
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, salt, passphrase.as_bytes(), bytes.as_mut());
    let unbound = UnboundKey::new(&AES_256_GCM, bytes.as_ref()).map_err(|_| anyhow::anyhow!("AES key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// The keystore at a path, opened with its passphrase.
pub struct Keystore {
    pub entries: Vec<Entry>,
    passphrase: Zeroizing<String>,
}

impl Keystore {
    /// Opens `path`, or starts an empty keystore when it does not exist. A wrong passphrase, a
    /// changed file or an unknown format is an error saying which.
    pub fn open(path: &Path, passphrase: &str) -> anyhow::Result<Self> {
        let passphrase = Zeroizing::new(passphrase.to_owned());
        if passphrase.is_empty() {
            bail!("the keystore passphrase is empty");
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Keystore { entries: Vec::new(), passphrase });
            }
            Err(e) => return Err(e).with_context(|| format!("reading the keystore {}", path.display())),
        };
        let file: File = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Lanyard mobile keystore", path.display()))?;
        if file.format != FORMAT {
            bail!("{} is not a Lanyard mobile keystore (format {:?})", path.display(), file.format);
        }
        if file.version != VERSION {
            bail!(
                "{} is a keystore of format version {}; this lanyard reads version {VERSION}",
                path.display(),
                file.version
            );
        }
        if file.kdf.name != KDF || file.cipher != CIPHER {
            bail!(
                "{}: unknown key derivation {:?} or cipher {:?}",
                path.display(),
                file.kdf.name,
                file.cipher
            );
        }
        if file.kdf.iterations < MIN_ITERATIONS {
            bail!("{}: the key derivation asks for only {} iterations", path.display(), file.kdf.iterations);
        }
        let salt = B64.decode(&file.kdf.salt).context("the keystore's salt is not base64")?;
        let nonce = B64.decode(&file.nonce).context("the keystore's nonce is not base64")?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce)
            .map_err(|_| anyhow::anyhow!("the keystore's nonce is not 12 bytes"))?;
        let mut data = B64.decode(&file.ciphertext).context("the keystore's ciphertext is not base64")?;
        let k = key(&passphrase, &salt, file.kdf.iterations)?;
        let aad = aad(&file.format, file.version, &file.kdf, &file.cipher);
        let plain = k.open_in_place(nonce, Aad::from(aad), &mut data).map_err(|_| {
            anyhow::anyhow!("wrong passphrase for the keystore {} (or the file was altered)", path.display())
        })?;
        let plain = Zeroizing::new(plain.to_vec());
        let contents: Contents =
            serde_json::from_slice(&plain).context("the keystore's contents do not read")?;
        Ok(Keystore { entries: contents.entries, passphrase })
    }

    /// Writes the keystore to `path` (created private, replaced atomically).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        rand::fill(&mut salt).map_err(|_| anyhow::anyhow!("random salt"))?;
        rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("random nonce"))?;
        let kdf = KdfHeader { name: KDF.into(), iterations: ITERATIONS, salt: B64.encode(salt) };
        let k = key(&self.passphrase, &salt, ITERATIONS)?;
        let contents = Contents { entries: self.entries.clone() };
        let mut data = Zeroizing::new(serde_json::to_vec(&contents)?);
        let aad = aad(FORMAT, VERSION, &kdf, CIPHER);
        let mut buf = data.to_vec();
        k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| anyhow::anyhow!("encrypting the keystore"))?;
        data.iter_mut().for_each(|b| *b = 0);
        let file = File {
            format: FORMAT.into(),
            version: VERSION,
            kdf,
            cipher: CIPHER.into(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(&buf),
        };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing in {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        std::io::Write::write_all(&mut tmp, serde_json::to_string_pretty(&file)?.as_bytes())?;
        tmp.persist(path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The entry whose id is `id` or starts with it (a unique prefix of at least 4 characters).
    pub fn find(&self, id: &str) -> anyhow::Result<usize> {
        let matches: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.id == id || (id.len() >= 4 && e.id.starts_with(id)))
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => bail!("the keystore holds no credential {id:?} (see `lanyard mobile list`)"),
            _ => bail!("{id:?} names {} credentials; give more of the id", matches.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            server: "https://s".into(),
            holder: "A".into(),
            device_id: "d".into(),
            profile: "derived-piv-auth".into(),
            assurance: "aal2".into(),
            serial: "01".into(),
            not_after: "2027-01-01T00:00:00Z".into(),
            enrolled_at: "2026-01-01T00:00:00Z".into(),
            key_pkcs8: "AA==".into(),
            certificate: "AA==".into(),
            chain: vec![],
        }
    }

    #[test]
    fn a_keystore_round_trips_and_refuses_the_wrong_passphrase_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.json");
        let mut ks = Keystore::open(&path, "correct horse").unwrap();
        assert!(ks.entries.is_empty());
        ks.entries.push(entry("0f1e2d3c-aaaa"));
        ks.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("0f1e2d3c"), "the entries are encrypted");
        assert_eq!(Keystore::open(&path, "correct horse").unwrap().entries, vec![entry("0f1e2d3c-aaaa")]);
        let e = Keystore::open(&path, "wrong").err().unwrap().to_string();
        assert!(e.starts_with("wrong passphrase for the keystore"), "{e}");
        // A lowered iteration count in the header is refused, a changed salt fails like a wrong
        // passphrase (the header is authenticated).
        let weak = text.replace("600000", "1000");
        std::fs::write(&path, &weak).unwrap();
        assert!(
            Keystore::open(&path, "correct horse")
                .err()
                .unwrap()
                .to_string()
                .contains("only 1000 iterations")
        );
        let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
        file["kdf"]["salt"] = B64.encode([7u8; 16]).into();
        std::fs::write(&path, file.to_string()).unwrap();
        assert!(
            Keystore::open(&path, "correct horse").err().unwrap().to_string().starts_with("wrong passphrase")
        );
        file["version"] = 2.into();
        std::fs::write(&path, file.to_string()).unwrap();
        assert!(
            Keystore::open(&path, "correct horse").err().unwrap().to_string().contains("format version 2")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            ks.save(&path).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(ks.find("0f1e").unwrap(), 0);
        assert!(ks.find("0f1").is_err(), "too short a prefix");
        assert!(ks.find("ffff").err().unwrap().to_string().contains("holds no credential"));
    }
}
