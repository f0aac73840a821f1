//! The card image: everything a card remembers across power cycles and restarts, saved as JSON.
//! It holds the card's secrets (PIN, PUK, management key, private keys) in the clear, like the
//! EEPROM of a real card: keep image files private (they are written with mode 0600).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The image format written. Format 1 (before the FIDO application) still opens: it has no
/// `fido` member, and such a card has no FIDO application.
pub const FORMAT: u32 = 2;
/// Formats [`CardImage::load`] accepts.
pub const READABLE_FORMATS: [u32; 2] = [1, 2];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub algorithm: u8,
    pub pin_policy: u8,
    pub touch_policy: u8,
    /// 1 = generated on the card, 2 = imported.
    pub origin: u8,
    #[serde(with = "hex")]
    pub pkcs8: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counter {
    #[serde(with = "hex")]
    pub value: Vec<u8>,
    pub is_default: bool,
    pub total: u8,
    pub left: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardImage {
    pub format: u32,
    pub serial: u32,
    pub version: [u8; 3],
    pub pin: Counter,
    pub puk: Counter,
    pub mgm_algorithm: u8,
    #[serde(with = "hex")]
    pub mgm_key: Vec<u8>,
    pub mgm_is_default: bool,
    pub mgm_touch: bool,
    /// The management-key algorithm a RESET restores.
    pub factory_mgm_algorithm: u8,
    /// Key slot (hex) → key.
    pub keys: BTreeMap<String, StoredKey>,
    /// Object tag (hex) → stored bytes.
    pub objects: BTreeMap<String, String>,
    /// The F9 attestation key (PKCS#8, P-256). Its certificate is object 5FFF01.
    #[serde(with = "hex")]
    pub attestation_key: Vec<u8>,
    /// The FIDO2 authenticator's state (format 2); `None` on cards made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fido: Option<crate::fido::state::FidoState>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("I/O on card image {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("card image {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl CardImage {
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io { path: path.to_owned(), source })?;
        let img: CardImage = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
        if !READABLE_FORMATS.contains(&img.format) {
            return Err(ImageError::Invalid {
                path: path.to_owned(),
                reason: format!("format {} is not one of {READABLE_FORMATS:?}", img.format),
            });
        }
        Ok(img)
    }

    /// Writes the image atomically (temporary file + rename), private to the owner.
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| ImageError::Io { path: path.to_owned(), source };
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| ImageError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}
