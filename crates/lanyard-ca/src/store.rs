//! The one piece of I/O in this crate: a directory of PKCS#8 key files for software CA keys.
//!
//! Files are PEM `PRIVATE KEY`, created with mode 0600, written to a temporary file first and
//! linked into place so a crash never leaves a half-written key, and never overwritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::CaError;
use crate::keys::SoftwareKey;

/// A directory of key files, one per named key (`root`, `issuing`, `ocsp`, …).
#[derive(Debug, Clone)]
pub struct KeyFileStore {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::KeyStore { path: path.to_path_buf(), source }
}

impl KeyFileStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KeyFileStore { dir: dir.into() }
    }

    /// Where the key named `name` lives.
    pub fn path(&self, name: &str) -> Result<PathBuf, CaError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(CaError::InvalidKeyName(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.key.pem")))
    }

    /// Whether a key named `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool, CaError> {
        Ok(self.path(name)?.exists())
    }

    /// Saves `key` under `name`; fails with [`CaError::KeyExists`] if that name is taken.
    pub fn save(&self, name: &str, key: &SoftwareKey) -> Result<PathBuf, CaError> {
        let path = self.path(name)?;
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        if path.exists() {
            return Err(CaError::KeyExists(path));
        }
        let pem = key.to_pkcs8_pem()?;
        let tmp = self.dir.join(format!(".{name}.key.pem.tmp"));
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
            file.write_all(pem.as_bytes()).map_err(io_err(&tmp))?;
            file.sync_all().map_err(io_err(&tmp))?;
            // A hard link fails if the target exists, so a concurrent writer cannot be overwritten.
            fs::hard_link(&tmp, &path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CaError::KeyExists(path.clone())
                } else {
                    CaError::KeyStore { path: path.clone(), source: e }
                }
            })
        })();
        let _ = fs::remove_file(&tmp);
        result.map(|()| path)
    }

    /// Loads the key named `name`.
    pub fn load(&self, name: &str) -> Result<SoftwareKey, CaError> {
        let path = self.path(name)?;
        let pem = Zeroizing::new(fs::read_to_string(&path).map_err(io_err(&path))?);
        SoftwareKey::from_pkcs8_pem(&pem)
    }
}
