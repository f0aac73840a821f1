//! Configuration: built-in defaults, then `lanyard.toml`, then `LANYARD_*` environment variables.
//! A `LANYARD_X_FILE` variable reads the value of `LANYARD_X` from a file (for secrets). Unknown
//! keys in the file and unknown `LANYARD_*` variables are errors, so a typo never silently falls
//! back to a default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The key algorithm of the built-in CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKeyAlgorithm {
    P256,
    P384,
    Rsa2048,
    Rsa3072,
}

impl std::str::FromStr for CaKeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p256" => Ok(Self::P256),
            "p384" => Ok(Self::P384),
            "rsa2048" => Ok(Self::Rsa2048),
            "rsa3072" => Ok(Self::Rsa3072),
            other => {
                Err(format!("unknown CA key algorithm {other:?} (expected p256, p384, rsa2048 or rsa3072)"))
            }
        }
    }
}

/// Whether `serve` speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS: with `tls.cert_file`/`tls.key_file` when set, else a certificate from Lanyard's own
    /// CA for the host names of `public_url` and `listen`.
    On,
    /// Plain HTTP: only on a loopback address (a local demo, or behind a TLS-terminating proxy on
    /// the same host).
    Off,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown tls.mode {other:?} (expected on or off)")),
        }
    }
}

/// What `lanyard.toml` may contain. Every field is optional; absent ones keep the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    public_url: Option<String>,
    pki_listen: Option<String>,
    pki_url: Option<String>,
    crl_shards: Option<u16>,
    database_url: Option<String>,
    kek_file: Option<PathBuf>,
    attestation_roots: Option<Vec<PathBuf>>,
    piv_trust_anchors: Option<Vec<PathBuf>>,
    piv_user_match: Option<String>,
    log: Option<String>,
    ca: Option<FileCa>,
    tls: Option<FileTls>,
    mobile: Option<FileMobile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMobile {
    android_attestation_roots: Option<Vec<PathBuf>>,
    apple_attestation_roots: Option<Vec<PathBuf>>,
    apple_app_ids: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCa {
    key_algorithm: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    mode: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: String,
    pub public_url: String,
    /// An extra plain-HTTP listener serving only `/pki/…` (CA certificates, CRL, OCSP).
    pub pki_listen: Option<String>,
    /// The base URL written into certificates' AIA and CRL distribution points; defaults to
    /// `public_url`. Set it to the plain-HTTP address of `pki_listen` in production.
    pub pki_url: String,
    /// CRL partitions (`/pki/crl/<n>`) new certificates name; 0: the full CRL only. See
    /// `docs/revocation.md`.
    pub crl_shards: u16,
    /// May hold a password: never print it; see [`Config::redacted`].
    pub database_url: String,
    pub kek_file: PathBuf,
    /// PEM files with the roots that YubiKey key attestations must chain to (Yubico's PIV
    /// attestation CA, or `lanyard vcard`'s per-installation root). Empty: attestations are
    /// recorded unverified.
    pub attestation_roots: Vec<PathBuf>,
    /// PEM files of imported PIV roots (self-signed) and their intermediates, which sponsor cards
    /// of a derived PIV enrolment may chain to besides Lanyard's own CA (`docs/derived-piv.md`).
    pub piv_trust_anchors: Vec<PathBuf>,
    /// How a sponsor card of an imported root is matched to the signed-in user.
    pub piv_user_match: lanyard_server::issuance::UserMatch,
    pub log: String,
    pub ca_key_algorithm: CaKeyAlgorithm,
    pub tls_mode: TlsMode,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM (or DER) files with the roots Android Key Attestation chains must end at (Google's
    /// hardware attestation roots). Empty: the app protocol accepts no Android attestation, and
    /// derived credentials from Android phones get the software (AAL2) profile.
    pub android_attestation_roots: Vec<PathBuf>,
    /// The same for Apple App Attest (Apple's App Attestation Root CA).
    pub apple_attestation_roots: Vec<PathBuf>,
    /// The App IDs (`<team id>.<bundle id>`) whose App Attest attestations are accepted.
    pub apple_app_ids: Vec<String>,
}

/// Environment variables that configure the server, and the config key each sets.
const ENV_KEYS: &[&str] = &[
    "DATA_DIR",
    "LISTEN",
    "PUBLIC_URL",
    "PKI_LISTEN",
    "PKI_URL",
    "CRL_SHARDS",
    "DATABASE_URL",
    "KEK_FILE",
    "ATTESTATION_ROOTS",
    "PIV_TRUST_ANCHORS",
    "PIV_USER_MATCH",
    "LOG",
    "CA_KEY_ALGORITHM",
    "TLS_MODE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "ANDROID_ATTESTATION_ROOTS",
    "APPLE_ATTESTATION_ROOTS",
    "APPLE_APP_IDS",
];

/// `LANYARD_*` variables that belong to other commands, not to the server's configuration.
const OTHER_ENV: &[&str] = &[
    "LANYARD_VCARD_HOME",
    "LANYARD_DEMO_DIR",
    "LANYARD_TEST_VENV",
    "LANYARD_CONFIG",
    "LANYARD_CLI_CONFIG",
    "LANYARD_PASSWORD",
    "LANYARD_AGENT_SERVER",
    "LANYARD_AGENT_ORIGIN",
    "LANYARD_NEW_PIN",
    "LANYARD_AGENT_CONFIG",
    "LANYARD_MOBILE_PASSPHRASE",
    "LANYARD_MOBILE_KEYSTORE",
    "LANYARD_P12_PASSWORD",
];

impl Config {
    fn defaults(data_dir: PathBuf) -> Self {
        Config {
            database_url: format!("sqlite://{}?mode=rwc", data_dir.join("lanyard.db").display()),
            kek_file: data_dir.join("kek"),
            attestation_roots: Vec::new(),
            piv_trust_anchors: Vec::new(),
            piv_user_match: lanyard_server::issuance::UserMatch::default(),
            data_dir,
            listen: "127.0.0.1:8443".into(),
            // Replaced by the scheme and `listen` when not configured; see `load`.
            public_url: String::new(),
            pki_listen: None,
            pki_url: String::new(),
            crl_shards: 0,
            log: "info".into(),
            ca_key_algorithm: CaKeyAlgorithm::P256,
            tls_mode: TlsMode::On,
            tls_cert_file: None,
            tls_key_file: None,
            android_attestation_roots: Vec::new(),
            apple_attestation_roots: Vec::new(),
            apple_app_ids: Vec::new(),
        }
    }

    /// Loads the configuration from `file` (if given, or `./lanyard.toml` if it exists) and
    /// the environment `env` (pass `std::env::vars()`).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let env: BTreeMap<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("LANYARD_")).collect();
        let file = file.map(Path::to_path_buf).or_else(|| {
            env.get("LANYARD_CONFIG").map(PathBuf::from).or_else(|| {
                let p = PathBuf::from("lanyard.toml");
                p.exists().then_some(p)
            })
        });
        let parsed = match &file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => match toml::from_str::<FileConfig>(&text) {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(format!("{}: {}", path.display(), e.message()));
                        FileConfig::default()
                    }
                },
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    FileConfig::default()
                }
            },
            None => FileConfig::default(),
        };

        // Environment values, with LANYARD_X_FILE read from disk.
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in &env {
            let Some(name) = k.strip_prefix("LANYARD_") else { continue };
            // LANYARD_TEST_* belong to the test harness (scripts/test), not to the server.
            if OTHER_ENV.contains(&k.as_str()) || k.starts_with("LANYARD_TEST_") {
                continue;
            }
            if let Some(base) =
                name.strip_suffix("_FILE").filter(|b| ENV_KEYS.contains(b) && !b.ends_with("_FILE"))
            {
                if env.contains_key(&format!("LANYARD_{base}")) {
                    errors.push(format!("both LANYARD_{base} and {k} are set; use one"));
                    continue;
                }
                match std::fs::read_to_string(v) {
                    Ok(s) => {
                        values.insert(base, s.trim_end_matches(['\n', '\r']).to_owned());
                    }
                    Err(e) => errors.push(format!("{k}: cannot read {v}: {e}")),
                }
            } else if let Some(key) = ENV_KEYS.iter().find(|key| **key == name) {
                values.insert(key, v.clone());
            } else {
                errors.push(format!(
                    "unknown environment variable {k} (known: {})",
                    ENV_KEYS.iter().map(|k| format!("LANYARD_{k}")).collect::<Vec<_>>().join(", ")
                ));
            }
        }

        let data_dir = values
            .get("DATA_DIR")
            .map(PathBuf::from)
            .or(parsed.data_dir.clone())
            .unwrap_or_else(default_data_dir);
        let mut c = Config::defaults(data_dir);
        if let Some(v) = parsed.listen {
            c.listen = v;
        }
        if let Some(v) = parsed.public_url {
            c.public_url = v;
        }
        c.pki_listen = parsed.pki_listen;
        if let Some(v) = parsed.pki_url {
            c.pki_url = v;
        }
        if let Some(v) = parsed.crl_shards {
            c.crl_shards = v;
        }
        if let Some(v) = parsed.database_url {
            c.database_url = v;
        }
        if let Some(v) = parsed.kek_file {
            c.kek_file = v;
        }
        if let Some(v) = parsed.attestation_roots {
            c.attestation_roots = v;
        }
        if let Some(v) = parsed.piv_trust_anchors {
            c.piv_trust_anchors = v;
        }
        if let Some(v) = parsed.piv_user_match {
            match v.parse() {
                Ok(m) => c.piv_user_match = m,
                Err(e) => errors.push(format!("piv_user_match: {e}")),
            }
        }
        if let Some(v) = parsed.log {
            c.log = v;
        }
        let mut ca_alg = parsed.ca.and_then(|ca| ca.key_algorithm);
        let mut tls_mode = None;
        if let Some(tls) = parsed.tls {
            tls_mode = tls.mode;
            c.tls_cert_file = tls.cert_file;
            c.tls_key_file = tls.key_file;
        }
        if let Some(m) = parsed.mobile {
            c.android_attestation_roots = m.android_attestation_roots.unwrap_or_default();
            c.apple_attestation_roots = m.apple_attestation_roots.unwrap_or_default();
            c.apple_app_ids = m.apple_app_ids.unwrap_or_default();
        }
        let paths = |v: &str| v.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
        for (key, v) in values {
            match key {
                "LISTEN" => c.listen = v,
                "PUBLIC_URL" => c.public_url = v,
                "PKI_LISTEN" => c.pki_listen = Some(v),
                "PKI_URL" => c.pki_url = v,
                "CRL_SHARDS" => match v.parse() {
                    Ok(n) => c.crl_shards = n,
                    Err(_) => {
                        errors.push(format!("LANYARD_CRL_SHARDS = {v:?} is not a number from 0 to 1024"))
                    }
                },
                "DATABASE_URL" => c.database_url = v,
                "KEK_FILE" => c.kek_file = v.into(),
                // Several files separated by ':' (like PATH).
                "ATTESTATION_ROOTS" => {
                    c.attestation_roots = v.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect()
                }
                "PIV_TRUST_ANCHORS" => {
                    c.piv_trust_anchors = v.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect()
                }
                "PIV_USER_MATCH" => match v.parse() {
                    Ok(m) => c.piv_user_match = m,
                    Err(e) => errors.push(format!("LANYARD_PIV_USER_MATCH: {e}")),
                },
                "LOG" => c.log = v,
                "CA_KEY_ALGORITHM" => ca_alg = Some(v),
                "TLS_MODE" => tls_mode = Some(v),
                "TLS_CERT_FILE" => c.tls_cert_file = Some(v.into()),
                "TLS_KEY_FILE" => c.tls_key_file = Some(v.into()),
                "ANDROID_ATTESTATION_ROOTS" => c.android_attestation_roots = paths(&v),
                "APPLE_ATTESTATION_ROOTS" => c.apple_attestation_roots = paths(&v),
                // Several App IDs separated by ','.
                "APPLE_APP_IDS" => {
                    c.apple_app_ids =
                        v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
                }
                _ => {}
            }
        }
        if let Some(a) = ca_alg {
            match a.parse() {
                Ok(a) => c.ca_key_algorithm = a,
                Err(e) => errors.push(e),
            }
        }
        if let Some(m) = tls_mode {
            match m.parse() {
                Ok(m) => c.tls_mode = m,
                Err(e) => errors.push(e),
            }
        }
        if c.public_url.is_empty() {
            let scheme = if c.tls_mode == TlsMode::On { "https" } else { "http" };
            c.public_url = format!("{scheme}://{}", c.listen);
        }
        if c.pki_url.is_empty() {
            c.pki_url = c.public_url.clone();
        }
        errors.extend(c.check());
        if errors.is_empty() { Ok(c) } else { Err(errors) }
    }

    /// Checks values that parse but make no sense.
    fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        match self.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) if self.tls_mode == TlsMode::Off && !addr.ip().is_loopback() => errors.push(format!(
                "tls.mode = off with listen = {addr}: plain HTTP is only served on a loopback address"
            )),
            Ok(_) => {}
            Err(_) => errors.push(format!("listen = {:?} is not an address:port", self.listen)),
        }
        if !(self.public_url.starts_with("https://")
            || self.public_url.starts_with("http://127.")
            || self.public_url.starts_with("http://localhost"))
        {
            errors.push(format!(
                "public_url = {:?} must be https:// (plain http only on loopback)",
                self.public_url
            ));
        }
        if let Some(l) = &self.pki_listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            errors.push(format!("pki_listen = {l:?} is not an address:port"));
        }
        if !(self.pki_url.starts_with("http://") || self.pki_url.starts_with("https://")) {
            errors.push(format!("pki_url = {:?} must be an http:// or https:// URL", self.pki_url));
        }
        if self.crl_shards > lanyard_server::revocation::MAX_CRL_SHARDS {
            errors.push(format!(
                "crl_shards = {} is more than {}",
                self.crl_shards,
                lanyard_server::revocation::MAX_CRL_SHARDS
            ));
        }
        if self.tls_mode == TlsMode::Off && (self.tls_cert_file.is_some() || self.tls_key_file.is_some()) {
            errors.push("tls.mode = off, but tls.cert_file/tls.key_file are set".to_owned());
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            errors.push("database_url must start with sqlite:, postgres:// or postgresql://".to_owned());
        }
        for id in &self.apple_app_ids {
            match id.split_once('.') {
                Some((team, bundle)) if !team.is_empty() && !bundle.is_empty() && !id.contains(char::is_whitespace) => {}
                _ => errors.push(format!(
                    "mobile.apple_app_ids: {id:?} is not an App ID (<team id>.<bundle id>, e.g. ABCDE12345.org.example.app)"
                )),
            }
        }
        if !self.apple_attestation_roots.is_empty() && self.apple_app_ids.is_empty() {
            errors.push("mobile.apple_attestation_roots is set but mobile.apple_app_ids is empty: name the apps whose attestations count".to_owned());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            errors.push("tls.cert_file and tls.key_file go together".to_owned());
        }
        errors
    }

    /// The CA directory: `<data_dir>/ca`.
    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join("ca")
    }

    /// Why this is not the embedded default installation, or `None` when it is: the database is
    /// the SQLite file `lanyard.db` in `data_dir` and the key-encryption key is `<data_dir>/kek`,
    /// as they are when neither `database_url` nor `kek_file` is set. Only then does everything
    /// an installation keeps live in the data directory, so that `serve` on a fresh data directory
    /// (a new one, or a mistyped one) makes a new, separate installation rather than a second CA
    /// for a database that already has one.
    pub fn not_embedded_default(&self) -> Option<String> {
        let db = self.data_dir.join("lanyard.db");
        if sqlite_file(&self.database_url).as_deref() != Some(db.as_path()) {
            return Some(format!(
                "database_url is not the SQLite file {} in the data directory",
                db.display()
            ));
        }
        let kek = self.data_dir.join("kek");
        if self.kek_file != kek {
            return Some(format!(
                "kek_file {} is not {} in the data directory",
                self.kek_file.display(),
                kek.display()
            ));
        }
        None
    }

    /// The configuration for display, with the database password hidden.
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        vec![
            ("data_dir", self.data_dir.display().to_string()),
            ("listen", self.listen.clone()),
            ("public_url", self.public_url.clone()),
            ("pki_listen", self.pki_listen.clone().unwrap_or_else(|| "(none)".into())),
            ("pki_url", self.pki_url.clone()),
            ("crl_shards", self.crl_shards.to_string()),
            ("database_url", redact_url(&self.database_url)),
            ("kek_file", self.kek_file.display().to_string()),
            (
                "attestation_roots",
                self.attestation_roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
            ),
            (
                "piv_trust_anchors",
                self.piv_trust_anchors.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
            ),
            ("piv_user_match", self.piv_user_match.as_str().to_owned()),
            ("log", self.log.clone()),
            ("ca.key_algorithm", format!("{:?}", self.ca_key_algorithm).to_lowercase()),
            ("tls.mode", if self.tls_mode == TlsMode::On { "on" } else { "off" }.to_owned()),
            (
                "tls.cert_file",
                self.tls_cert_file.as_ref().map_or("(own CA)".into(), |p| p.display().to_string()),
            ),
            (
                "tls.key_file",
                self.tls_key_file.as_ref().map_or("(own CA)".into(), |p| p.display().to_string()),
            ),
            ("mobile.android_attestation_roots", join_paths(&self.android_attestation_roots)),
            ("mobile.apple_attestation_roots", join_paths(&self.apple_attestation_roots)),
            ("mobile.apple_app_ids", self.apple_app_ids.join(",")),
        ]
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
}

/// The file of a `sqlite:` URL (`sqlite://<path>`, `sqlite:<path>`, query options removed), or
/// `None` for another database or an in-memory one.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

fn redact_url(url: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map_or_else(|| PathBuf::from("lanyard-data"), |d| d.join("lanyard"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lanyard.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/l\"\nlisten = \"0.0.0.0:443\"\n[ca]\nkey_algorithm = \"p384\"\n",
        )
        .unwrap();
        let c =
            Config::load(Some(&file), env(&[("LANYARD_LISTEN", "127.0.0.1:9000"), ("HOME", "/x")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/l"));
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.ca_key_algorithm, CaKeyAlgorithm::P384);
        assert_eq!(c.database_url, "sqlite:///srv/l/lanyard.db?mode=rwc");
    }

    #[test]
    fn unknown_keys_and_variables_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lanyard.toml");
        std::fs::write(&file, "listn = \"0.0.0.0:443\"\n").unwrap();
        let e = Config::load(Some(&file), env(&[("LANYARD_LISTNE", "x")])).unwrap_err();
        assert!(e.iter().any(|m| m.contains("unknown field `listn`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("unknown environment variable LANYARD_LISTNE")), "{e:?}");
    }

    #[test]
    fn file_variables_read_secrets_and_urls_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("db");
        std::fs::write(&secret, "postgres://lanyard:s3cret@db/lanyard\n").unwrap();
        let c = Config::load(
            None,
            env(&[("LANYARD_DATABASE_URL_FILE", secret.to_str().unwrap()), ("LANYARD_DATA_DIR", "/d")]),
        )
        .unwrap();
        assert_eq!(c.database_url, "postgres://lanyard:s3cret@db/lanyard");
        let shown: String = c.redacted().iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        assert!(!shown.contains("s3cret") && shown.contains("lanyard:***@db"), "{shown}");
        let both = Config::load(
            None,
            env(&[("LANYARD_DATABASE_URL_FILE", "/x"), ("LANYARD_DATABASE_URL", "sqlite::memory:")]),
        )
        .unwrap_err();
        assert!(both[0].contains("use one"), "{both:?}");
    }

    #[test]
    fn nonsense_values_are_explained() {
        let e = Config::load(
            None,
            env(&[
                ("LANYARD_LISTEN", "nowhere"),
                ("LANYARD_CA_KEY_ALGORITHM", "rsa1024"),
                ("LANYARD_PUBLIC_URL", "http://example.org"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn the_embedded_default_is_sqlite_and_kek_in_the_data_directory() {
        let c = Config::load(None, env(&[("LANYARD_DATA_DIR", "/d")])).unwrap();
        assert_eq!(c.not_embedded_default(), None);
        let c = Config::load(
            None,
            env(&[("LANYARD_DATA_DIR", "/d"), ("LANYARD_DATABASE_URL", "sqlite:///d/lanyard.db")]),
        )
        .unwrap();
        assert_eq!(c.not_embedded_default(), None, "the same file, spelled without options");
        for (key, value, why) in [
            ("LANYARD_DATABASE_URL", "sqlite:///elsewhere/lanyard.db?mode=rwc", "database_url is not"),
            ("LANYARD_DATABASE_URL", "postgres://u@db/lanyard", "database_url is not"),
            ("LANYARD_DATABASE_URL", "sqlite::memory:", "database_url is not"),
            ("LANYARD_KEK_FILE", "/run/secrets/kek", "kek_file /run/secrets/kek is not /d/kek"),
        ] {
            let c = Config::load(None, env(&[("LANYARD_DATA_DIR", "/d"), (key, value)])).unwrap();
            let reason = c.not_embedded_default().unwrap_or_default();
            assert!(reason.contains(why), "{key}={value}: {reason}");
        }
        assert_eq!(sqlite_file("sqlite:rel/x.db?mode=rwc"), Some(PathBuf::from("rel/x.db")));
    }

    #[test]
    fn mobile_attestation_roots_and_app_ids_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lanyard.toml");
        std::fs::write(
            &file,
            "[mobile]\nandroid_attestation_roots = [\"/etc/lanyard/google.pem\"]\napple_attestation_roots = [\"/etc/lanyard/apple.pem\"]\napple_app_ids = [\"ABCDE12345.org.example.lanyard\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[("LANYARD_DATA_DIR", "/d")])).unwrap();
        assert_eq!(c.android_attestation_roots, vec![PathBuf::from("/etc/lanyard/google.pem")]);
        assert_eq!(c.apple_app_ids, vec!["ABCDE12345.org.example.lanyard".to_owned()]);
        let c = Config::load(
            Some(&file),
            env(&[
                ("LANYARD_ANDROID_ATTESTATION_ROOTS", "/a.pem:/b.pem"),
                ("LANYARD_APPLE_APP_IDS", "T.one, T.two"),
            ]),
        )
        .unwrap();
        assert_eq!(c.android_attestation_roots, vec![PathBuf::from("/a.pem"), PathBuf::from("/b.pem")]);
        assert_eq!(c.apple_app_ids, vec!["T.one".to_owned(), "T.two".to_owned()]);
        let e = Config::load(None, env(&[("LANYARD_APPLE_APP_IDS", "nodot")])).unwrap_err();
        assert!(e[0].contains("is not an App ID"), "{e:?}");
        let e = Config::load(None, env(&[("LANYARD_APPLE_ATTESTATION_ROOTS", "/apple.pem")])).unwrap_err();
        assert!(e[0].contains("apple_app_ids is empty"), "{e:?}");
    }

    #[test]
    fn tls_is_on_by_default_and_off_only_on_loopback() {
        let c = Config::load(None, env(&[("LANYARD_DATA_DIR", "/d")])).unwrap();
        assert_eq!((c.tls_mode, c.public_url.as_str()), (TlsMode::On, "https://127.0.0.1:8443"));
        let c = Config::load(None, env(&[("LANYARD_TLS_MODE", "off"), ("LANYARD_LISTEN", "127.0.0.1:80")]))
            .unwrap();
        assert_eq!(c.public_url, "http://127.0.0.1:80");
        let e = Config::load(None, env(&[("LANYARD_TLS_MODE", "off"), ("LANYARD_LISTEN", "0.0.0.0:80")]))
            .unwrap_err();
        assert!(e[0].contains("only served on a loopback"), "{e:?}");
        let e = Config::load(None, env(&[("LANYARD_TLS_MODE", "maybe")])).unwrap_err();
        assert!(e[0].contains("expected on or off"), "{e:?}");
    }
}
