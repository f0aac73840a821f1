//! `lanyard mobile`: the reference client of the app enrolment protocol
//! (`docs/mobile-protocol.md`). `enroll` does what a phone app does (redeem the one-time link,
//! generate the key the server asks for, send the CSR, keep key and certificates, confirm);
//! `list`, `delete` and `export-p12` manage what it keeps, in an encrypted keystore file.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use lanyard_ca::{KeyAlgorithm, SoftwareKey};
use lanyard_protocol::mobile::{self, CertificateResponse, RedeemResponse};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use crate::admin_cmd::{Output, OutputArg, agent, read_ca_cert, reply};
use crate::keystore::{Entry, Keystore};

#[derive(Debug, Args)]
pub struct KeystoreArgs {
    /// The keystore file [default: $LANYARD_MOBILE_KEYSTORE, else
    /// $XDG_DATA_HOME/lanyard/mobile-keystore.json or ~/.local/share/lanyard/mobile-keystore.json].
    #[arg(long)]
    keystore: Option<PathBuf>,
    /// A file whose first line is the keystore passphrase [default: $LANYARD_MOBILE_PASSPHRASE,
    /// else asked for on the terminal].
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MobileCommand {
    /// Enrol a derived PIV credential from a one-time link (https://<server>/m/<code>, what the
    /// portal's QR code holds), like a phone app: redeem the code, generate the key the server
    /// asks for (P-256 or RSA-2048), send the CSR, keep key and certificates in the keystore,
    /// confirm the installation.
    Enroll {
        /// The link, or the QR code's text.
        link: String,
        /// PEM or DER file with the CA certificate(s) the server's TLS certificate must chain to
        /// (`<data_dir>/ca/root.pem` for a server using Lanyard's own CA) [default: the system's
        /// trust store].
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The device model the server records.
        #[arg(long, default_value = "Lanyard reference client")]
        model: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// The credentials in the keystore.
    List {
        #[command(flatten)]
        keystore: KeystoreArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove a credential (key and certificates) from the keystore. The certificate stays valid
    /// at the server: ask for Delete Mobile in the portal to revoke it.
    Delete {
        /// The credential id, or a unique prefix of it (at least 4 characters).
        id: String,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
    /// Write a credential as a PKCS#12 file for Android's "VPN and app user certificate" store
    /// (or any other importer). The file's password comes from --p12-password-file, else
    /// $LANYARD_P12_PASSWORD.
    ExportP12 {
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// A file whose first line is the PKCS#12 password.
        #[arg(long)]
        p12_password_file: Option<PathBuf>,
        /// 3DES and SHA-1 instead of AES-256 and SHA-256: Android 13 and older import only
        /// these.
        #[arg(long)]
        legacy: bool,
        #[command(flatten)]
        keystore: KeystoreArgs,
    },
}

fn default_keystore() -> PathBuf {
    if let Some(p) = std::env::var_os("LANYARD_MOBILE_KEYSTORE") {
        return PathBuf::from(p);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map_or_else(
            || PathBuf::from("lanyard-mobile-keystore.json"),
            |d| d.join("lanyard/mobile-keystore.json"),
        )
}

fn first_line(path: &Path, what: &str) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} file {}", path.display()))?,
    );
    let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    if line.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(line)
}

fn passphrase(args: &KeystoreArgs) -> anyhow::Result<Zeroizing<String>> {
    if let Some(file) = &args.passphrase_file {
        return first_line(file, "passphrase");
    }
    if let Ok(p) = std::env::var("LANYARD_MOBILE_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("no keystore passphrase: use --passphrase-file or set LANYARD_MOBILE_PASSPHRASE");
    }
    // Without a terminal library the input is echoed; prefer --passphrase-file.
    eprint!("Keystore passphrase (will be echoed): ");
    std::io::stderr().flush()?;
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned()))
}

fn open(args: &KeystoreArgs) -> anyhow::Result<(PathBuf, Keystore)> {
    let path = args.keystore.clone().unwrap_or_else(default_keystore);
    let ks = Keystore::open(&path, &passphrase(args)?)?;
    Ok((path, ks))
}

/// POSTs `body` to `path` of `server`; a refusal becomes an error with the server's message,
/// reason and operation id.
fn call(agent: &ureq::Agent, server: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
    let u = format!("{}{path}", server.trim_end_matches('/'));
    let r = reply(agent.post(&u).send_json(body), &u)?;
    if (200..300).contains(&r.status) {
        return Ok(r.body);
    }
    let field = |k: &str| r.body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let message = if field("error").is_empty() { r.body.to_string() } else { field("error") };
    bail!(
        "the server refused ({} {}): {message} (operation id {})",
        r.status,
        field("reason"),
        field("operation_id")
    )
}

fn key_for(algorithm: &str) -> anyhow::Result<SoftwareKey> {
    let alg = match algorithm {
        "p-256" => KeyAlgorithm::EcP256,
        "p-384" => KeyAlgorithm::EcP384,
        "rsa-2048" => KeyAlgorithm::Rsa2048,
        other => bail!("the server asks for a {other} key, which this client cannot make"),
    };
    Ok(SoftwareKey::generate(alg)?)
}

fn enroll(
    link: &str,
    ca_file: Option<&Path>,
    model: &str,
    ks: &KeystoreArgs,
    output: Output,
) -> anyhow::Result<()> {
    let link = mobile::parse_link(link).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The keystore opens (right passphrase) before the one-time code is spent.
    let (path, mut keystore) = open(ks)?;
    let agent = agent(read_ca_cert(ca_file)?.as_deref())?;
    let redeemed: RedeemResponse = serde_json::from_value(call(
        &agent,
        &link.server,
        mobile::REDEEM_PATH,
        &json!({"code": link.code, "platform": "other", "model": model}),
    )?)
    .context("the redeem answer does not read")?;
    let key = key_for(&redeemed.key.algorithm)?;
    // The subject is the CA's to choose; the request's is a placeholder.
    let csr = lanyard_ca::build_csr(&key, lanyard_ca::parse_dn("CN=lanyard mobile enroll")?, vec![], None)?;
    let issued: CertificateResponse = serde_json::from_value(call(
        &agent,
        &link.server,
        mobile::CERTIFICATE_PATH,
        &json!({"code": link.code, "csr": B64.encode(&csr)}),
    )?)
    .context("the certificate answer does not read")?;
    let now = lanyard_core::clock::Clock::now(&lanyard_core::clock::SystemClock);
    keystore.entries.push(Entry {
        id: issued.credential_id.clone(),
        server: link.server.clone(),
        holder: redeemed.holder.clone(),
        device_id: issued.device_id.clone(),
        profile: issued.profile.clone(),
        assurance: issued.assurance.clone(),
        serial: issued.serial.clone(),
        not_after: issued.not_after.clone(),
        enrolled_at: now.format(&time::format_description::well_known::Rfc3339)?,
        key_pkcs8: B64.encode(key.to_pkcs8_der()?.as_slice()),
        certificate: issued.certificate.clone(),
        chain: issued.chain.clone(),
    });
    keystore.save(&path)?;
    // Confirm only what is safely stored.
    call(&agent, &link.server, mobile::CONFIRM_PATH, &json!({"code": link.code}))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&issued)?)?),
        Output::Text => {
            println!(
                "Enrolled {} for {} ({}, {})",
                issued.credential_id, redeemed.holder, issued.profile, issued.assurance
            );
            println!("  certificate serial {}, valid until {}", issued.serial, issued.not_after);
            println!("  kept in {}", path.display());
        }
    }
    Ok(())
}

pub fn run(command: MobileCommand) -> anyhow::Result<()> {
    match command {
        MobileCommand::Enroll { link, ca_file, model, keystore, out } => {
            enroll(&link, ca_file.as_deref(), &model, &keystore, out.output)
        }
        MobileCommand::List { keystore, out } => {
            let (_, ks) = open(&keystore)?;
            match out.output {
                Output::Json => {
                    let list: Vec<Value> = ks
                        .entries
                        .iter()
                        .map(|e| {
                            json!({"id": e.id, "server": e.server, "holder": e.holder, "device_id": e.device_id,
                                "profile": e.profile, "assurance": e.assurance, "serial": e.serial,
                                "not_after": e.not_after, "enrolled_at": e.enrolled_at})
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                }
                Output::Text if ks.entries.is_empty() => println!("The keystore holds no credential."),
                Output::Text => {
                    for e in &ks.entries {
                        println!(
                            "{}  {}  {} {}  serial {}  until {}  {}",
                            e.id, e.holder, e.profile, e.assurance, e.serial, e.not_after, e.server
                        );
                    }
                }
            }
            Ok(())
        }
        MobileCommand::Delete { id, keystore } => {
            let (path, mut ks) = open(&keystore)?;
            let i = ks.find(&id)?;
            let gone = ks.entries.remove(i);
            ks.save(&path)?;
            println!(
                "Deleted {} from {} (its certificate stays valid until revoked at the server)",
                gone.id,
                path.display()
            );
            Ok(())
        }
        MobileCommand::ExportP12 { id, out, p12_password_file, legacy, keystore } => {
            let (_, ks) = open(&keystore)?;
            let e = &ks.entries[ks.find(&id)?];
            let password =
                match &p12_password_file {
                    Some(f) => first_line(f, "PKCS#12 password")?,
                    None => Zeroizing::new(std::env::var("LANYARD_P12_PASSWORD").context(
                        "no PKCS#12 password: use --p12-password-file or set LANYARD_P12_PASSWORD",
                    )?),
                };
            let key = Zeroizing::new(B64.decode(&e.key_pkcs8).context("the stored key is not base64")?);
            let mut chain = vec![B64.decode(&e.certificate).context("the stored certificate is not base64")?];
            for c in &e.chain {
                chain.push(B64.decode(c).context("a stored chain certificate is not base64")?);
            }
            let encryption =
                if legacy { crate::pkcs12::Encryption::Legacy } else { crate::pkcs12::Encryption::Modern };
            let name = format!("{} (Lanyard derived PIV)", e.holder);
            let p12 = crate::pkcs12::write(&key, &chain, &name, &password, encryption)?;
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            std::io::Write::write_all(
                &mut file.open(&out).with_context(|| format!("creating {}", out.display()))?,
                &p12,
            )?;
            println!(
                "Wrote {} ({}): import it under Settings → Security → Encryption & credentials → Install a certificate → VPN and app user certificate",
                out.display(),
                if legacy { "3DES/SHA-1 for Android 13 and older" } else { "AES-256/SHA-256" }
            );
            Ok(())
        }
    }
}
