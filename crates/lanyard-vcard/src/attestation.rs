//! Attestation for the software card, modelled on YubiKey PIV attestation: a per-installation
//! root signs each card's attestation certificate (object 5FFF01, key in slot F9), and ATTEST
//! returns a certificate for a slot's key signed by that F9 key. Issuance can then prove a key
//! was generated on a card of this installation exactly as it proves it for a YubiKey.

use crate::x509::{self, CertError, CertTemplate};
use der::{Decode, DecodePem, Encode, EncodePem};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use spki::SubjectPublicKeyInfoOwned;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::name::Name;
use x509_cert::time::Validity;

/// Yubico's attestation extension arc, reused so existing verifiers read our statements.
pub const OID_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
pub const OID_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
pub const OID_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
pub const OID_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {what}")]
    Corrupt { path: PathBuf, what: &'static str },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AttestationError + '_ {
    move |source| AttestationError::Io { path: path.to_owned(), source }
}

/// A certificate (DER) signed by an attestation CA (`issuer`, `issuer_key`), valid from an hour
/// before `now` for twenty years: attestation certificates outlive any card.
fn sign_twenty_years(
    issuer: &Certificate,
    issuer_key: &SigningKey,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<x509_cert::ext::Extension>,
    now: SystemTime,
) -> Result<Vec<u8>, CertError> {
    let template = CertTemplate {
        subject,
        spki,
        serial: x509::random_serial()?,
        validity: Validity {
            not_before: x509::x509_time(now - Duration::from_secs(3600))?,
            not_after: x509::x509_time(now + 20 * YEAR)?,
        },
        extensions,
    };
    let cert = x509::sign(template, &issuer.tbs_certificate.subject, issuer_key)?;
    cert.to_der().map_err(CertError::from)
}

fn spki_of(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    use p256::pkcs8::EncodePublicKey;
    let der = key.verifying_key().to_public_key_der().map_err(|e| CertError::Other(e.to_string()))?;
    Ok(SubjectPublicKeyInfoOwned::from_der(der.as_bytes())?)
}

/// The FIDO AAGUID extension of attestation certificates (WebAuthn §8.2.1).
pub const OID_FIDO_AAGUID: &str = "1.3.6.1.4.1.45724.1.1.4";

/// The AAGUID of Lanyard's virtual card: one value for the model, as WebAuthn intends.
pub const FIDO_AAGUID: [u8; 16] =
    [0x0c, 0x2e, 0x5d, 0xce, 0x6a, 0x62, 0x4a, 0x15, 0x9d, 0xeb, 0xff, 0x37, 0x4f, 0x78, 0x6d, 0x53];

/// File names of the FIDO attestation root, beside the PIV one.
pub const FIDO_ROOT_KEY: &str = "fido-attestation-root.key";
pub const FIDO_ROOT_PEM: &str = "fido-attestation-root.pem";

/// The per-installation attestation roots (PIV and FIDO) and the serial counter of the cards
/// they made.
pub struct AttestationRoot {
    dir: PathBuf,
    key: SigningKey,
    cert: Certificate,
    fido: FidoAttestationCa,
}

/// The FIDO attestation root of an installation: a self-signed CA that certifies each card's
/// FIDO attestation key. A relying party (Lanyard's server) trusts it for packed attestation.
pub struct FidoAttestationCa {
    key: SigningKey,
    cert: Certificate,
}

impl FidoAttestationCa {
    /// A new root that lives only in memory (tests, fuzzing).
    pub fn generate(now: SystemTime) -> Result<Self, AttestationError> {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let name = Name::from_str("CN=Lanyard Virtual Card FIDO Attestation Root,O=Lanyard,C=US")
            .map_err(CertError::from)?;
        let spki = spki_of(&key)?;
        let cert = x509::sign(
            CertTemplate {
                subject: name.clone(),
                extensions: x509::ca_extensions(&spki, &spki)?,
                spki,
                serial: x509::random_serial()?,
                validity: Validity {
                    not_before: x509::x509_time(now - Duration::from_secs(3600))?,
                    not_after: x509::x509_time(now + 30 * YEAR)?,
                },
            },
            &name,
            &key,
        )?;
        Ok(Self { key, cert })
    }

    /// Opens the root in `dir`, creating it on first use.
    pub fn open_or_create(dir: &Path, now: SystemTime) -> Result<Self, AttestationError> {
        let key_path = dir.join(FIDO_ROOT_KEY);
        let cert_path = dir.join(FIDO_ROOT_PEM);
        if key_path.exists() && cert_path.exists() {
            let (key, cert) = read_key_and_cert(&key_path, &cert_path)?;
            return Ok(Self { key, cert });
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = Self::generate(now)?;
        let key_pem = ca.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| CertError::Other(e.to_string()))?;
        write_private(&key_path, key_pem.as_bytes())?;
        let cert_pem = ca.cert.to_pem(LineEnding::LF).map_err(CertError::from)?;
        std::fs::write(&cert_path, cert_pem).map_err(io(&cert_path))?;
        Ok(ca)
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// A card's FIDO attestation key and certificate (DER): an end-entity certificate with the
    /// subject WebAuthn §8.2.1 asks of packed attestation (C, O, OU "Authenticator Attestation",
    /// CN) and the AAGUID extension.
    pub fn issue_card_attestation(
        &self,
        serial: u32,
        now: SystemTime,
    ) -> Result<(SigningKey, Vec<u8>), AttestationError> {
        use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let spki = spki_of(&key)?;
        let subject = Name::from_str(&format!(
            "CN=Lanyard Virtual Card FIDO {serial},OU=Authenticator Attestation,O=Lanyard,C=US"
        ))
        .map_err(CertError::from)?;
        let issuer_spki = &self.cert.tbs_certificate.subject_public_key_info;
        let mut extensions = x509::ca_extensions(&spki, issuer_spki)?;
        // Replace the CA's constraints and usage with an end entity's.
        extensions.retain(|e| !matches!(e.extn_id.to_string().as_str(), "2.5.29.19" | "2.5.29.15"));
        extensions.insert(
            0,
            x509::extension(
                "2.5.29.19",
                true,
                BasicConstraints { ca: false, path_len_constraint: None }
                    .to_der()
                    .map_err(CertError::from)?,
            )?,
        );
        extensions.insert(
            1,
            x509::extension(
                "2.5.29.15",
                true,
                KeyUsage(KeyUsages::DigitalSignature.into()).to_der().map_err(CertError::from)?,
            )?,
        );
        extensions.push(x509::extension(
            OID_FIDO_AAGUID,
            false,
            der::asn1::OctetString::new(FIDO_AAGUID.to_vec())
                .map_err(CertError::from)?
                .to_der()
                .map_err(CertError::from)?,
        )?);
        let der = sign_twenty_years(&self.cert, &self.key, subject, spki, extensions, now)?;
        Ok((key, der))
    }
}

fn read_key_and_cert(
    key_path: &Path,
    cert_path: &Path,
) -> Result<(SigningKey, Certificate), AttestationError> {
    let pem = std::fs::read_to_string(key_path).map_err(io(key_path))?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|_| AttestationError::Corrupt { path: key_path.to_owned(), what: "PKCS#8 P-256 key" })?;
    let pem = std::fs::read_to_string(cert_path).map_err(io(cert_path))?;
    let cert = Certificate::from_pem(pem.as_bytes())
        .map_err(|_| AttestationError::Corrupt { path: cert_path.to_owned(), what: "PEM certificate" })?;
    Ok((key, cert))
}

impl AttestationRoot {
    /// Opens the root in `dir`, creating a new one (and the directory) on first use.
    pub fn open_or_create(dir: &Path, now: SystemTime) -> Result<Self, AttestationError> {
        let key_path = dir.join("attestation-root.key");
        let cert_path = dir.join("attestation-root.pem");
        if key_path.exists() && cert_path.exists() {
            let (key, cert) = read_key_and_cert(&key_path, &cert_path)?;
            // Homes made before the FIDO application get their FIDO root now.
            let fido = FidoAttestationCa::open_or_create(dir, now)?;
            return Ok(Self { dir: dir.to_owned(), key, cert, fido });
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let name =
            Name::from_str("CN=Lanyard Virtual PIV Attestation Root,O=Lanyard").map_err(CertError::from)?;
        let spki = spki_of(&key)?;
        let cert = x509::sign(
            CertTemplate {
                subject: name.clone(),
                extensions: x509::ca_extensions(&spki, &spki)?,
                spki,
                serial: x509::random_serial()?,
                validity: Validity {
                    not_before: x509::x509_time(now - Duration::from_secs(3600))?,
                    not_after: x509::x509_time(now + 30 * YEAR)?,
                },
            },
            &name,
            &key,
        )?;
        let key_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| CertError::Other(e.to_string()))?;
        write_private(&key_path, key_pem.as_bytes())?;
        let cert_pem = cert.to_pem(LineEnding::LF).map_err(CertError::from)?;
        std::fs::write(&cert_path, cert_pem).map_err(io(&cert_path))?;
        let fido = FidoAttestationCa::open_or_create(dir, now)?;
        Ok(Self { dir: dir.to_owned(), key, cert, fido })
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    pub fn certificate_pem_path(&self) -> PathBuf {
        self.dir.join("attestation-root.pem")
    }

    /// The FIDO attestation root of this installation.
    pub fn fido(&self) -> &FidoAttestationCa {
        &self.fido
    }

    /// Where the FIDO attestation root's certificate is (beside the PIV root's).
    pub fn fido_certificate_pem_path(&self) -> PathBuf {
        self.dir.join(FIDO_ROOT_PEM)
    }

    /// The next card serial of this installation, unique across processes (file lock).
    pub fn next_serial(&self) -> Result<u32, AttestationError> {
        use std::io::{Read, Seek, Write};
        let path = self.dir.join("next-serial");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        f.lock().map_err(io(&path))?;
        let mut s = String::new();
        f.read_to_string(&mut s).map_err(io(&path))?;
        let serial = match s.trim().parse::<u32>() {
            Ok(n) => n,
            // First card: start somewhere random in the 8-digit range so two installations'
            // cards rarely share serials.
            Err(_) => 10_000_000 + (rand::Rng::gen_range(&mut rand::rngs::OsRng, 0..80_000_000u32)),
        };
        f.set_len(0).map_err(io(&path))?;
        f.rewind().map_err(io(&path))?;
        write!(f, "{}", serial.wrapping_add(1)).map_err(io(&path))?;
        Ok(serial)
    }

    /// A new card's attestation key and certificate (DER).
    pub fn issue_card_attestation(
        &self,
        serial: u32,
        now: SystemTime,
    ) -> Result<(SigningKey, Vec<u8>), AttestationError> {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let spki = spki_of(&key)?;
        let subject = Name::from_str(&format!("CN=Lanyard Virtual PIV Attestation {serial}"))
            .map_err(CertError::from)?;
        let mut extensions = x509::ca_extensions(&spki, &self.cert.tbs_certificate.subject_public_key_info)?;
        extensions.push(x509::extension(
            OID_SERIAL,
            false,
            der::asn1::Uint::new(&serial.to_be_bytes())
                .map_err(CertError::from)?
                .to_der()
                .map_err(CertError::from)?,
        )?);
        let der = sign_twenty_years(&self.cert, &self.key, subject, spki, extensions, now)?;
        Ok((key, der))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AttestationError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// What ATTEST states about a slot's key.
pub struct Statement<'a> {
    pub slot: u8,
    pub spki: SubjectPublicKeyInfoOwned,
    pub firmware: [u8; 3],
    pub serial: u32,
    pub pin_policy: u8,
    pub touch_policy: u8,
    pub f9_cert_der: &'a [u8],
}

/// Builds an attestation statement signed by the card's F9 key. Its validity copies the F9
/// certificate's, as YubiKeys do.
pub fn attest(st: Statement<'_>, f9_key: &SigningKey) -> Result<Vec<u8>, CertError> {
    let f9 = Certificate::from_der(st.f9_cert_der)?;
    let subject = Name::from_str(&format!("CN=Lanyard Virtual PIV Attestation {:02x}", st.slot))?;
    let serial_der = der::asn1::Uint::new(&st.serial.to_be_bytes())?.to_der()?;
    let extensions = vec![
        x509::extension(OID_FIRMWARE, false, st.firmware.to_vec())?,
        x509::extension(OID_SERIAL, false, serial_der)?,
        x509::extension(OID_POLICY, false, vec![st.pin_policy, st.touch_policy])?,
        x509::extension(OID_FORM_FACTOR, false, vec![0x00])?,
    ];
    let cert = x509::sign(
        CertTemplate {
            subject,
            spki: st.spki,
            serial: x509::random_serial()?,
            validity: f9.tbs_certificate.validity,
            extensions,
        },
        &f9.tbs_certificate.subject,
        f9_key,
    )?;
    Ok(cert.to_der()?)
}
