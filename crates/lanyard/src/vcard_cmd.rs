//! `lanyard vcard …`: create, inspect and run software PIV cards.

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use lanyard_core::clock::{Clock, SystemClock};
use lanyard_piv::MgmAlgorithm;
use lanyard_vcard::vpcd::{self, Control, State};
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MgmAlg {
    #[value(name = "3des")]
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

impl From<MgmAlg> for MgmAlgorithm {
    fn from(a: MgmAlg) -> Self {
        match a {
            MgmAlg::TripleDes => MgmAlgorithm::TripleDes,
            MgmAlg::Aes128 => MgmAlgorithm::Aes128,
            MgmAlg::Aes192 => MgmAlgorithm::Aes192,
            MgmAlg::Aes256 => MgmAlgorithm::Aes256,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VcardCommand {
    /// Create a factory-new card image: default PIN 123456, PUK 12345678 and management key,
    /// a fresh serial, and attestation keys certified by the attestation roots in --home (PIV
    /// and FIDO, made on first use; a server trusts them through `attestation_roots`). The FIDO2
    /// application starts without a PIN.
    New {
        /// Card image file to create.
        #[arg(long)]
        image: PathBuf,
        /// Directory of the attestation root and serial counter
        /// [default: $LANYARD_VCARD_HOME, else ~/.local/share/lanyard/vcard].
        #[arg(long)]
        home: Option<PathBuf>,
        /// Algorithm of the factory management key. 3DES suits every client; YubiKey 5.7
        /// ships AES-192 with the same bytes.
        #[arg(long, value_enum, default_value = "3des")]
        mgm_alg: MgmAlg,
        /// Replace an existing image.
        #[arg(long)]
        force: bool,
    },
    /// Plug card images into pcscd's vpcd reader slots (the first image in "Virtual PCD 00 00",
    /// the next in "Virtual PCD 00 01", …) and serve them until interrupted. Reconnects when
    /// pcscd restarts.
    Run {
        /// Card image(s); state is saved back after every change.
        #[arg(long, required = true)]
        image: Vec<PathBuf>,
        /// Host where pcscd's vpcd driver listens.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// vpcd port of the first slot (`/etc/reader.conf.d/vpcd`).
        #[arg(long, default_value_t = vpcd::DEFAULT_PORT)]
        port: u16,
        /// First vpcd slot to use (port + slot).
        #[arg(long, default_value_t = 0)]
        slot: u16,
        /// Unix socket accepting `remove N`, `insert N` and `status` to simulate card removal.
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Remove card N from its reader (the process keeps running; `insert` puts it back).
    Remove {
        #[arg(long)]
        control: PathBuf,
        #[arg(long, default_value_t = 0)]
        card: usize,
    },
    /// Insert card N again after `remove`.
    Insert {
        #[arg(long)]
        control: PathBuf,
        #[arg(long, default_value_t = 0)]
        card: usize,
    },
    /// Show what a card image holds (no secrets).
    Info {
        #[arg(long)]
        image: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: crate::piv_cmd::Output,
    },
}

pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("LANYARD_VCARD_HOME") {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("lanyard/vcard")
}

pub fn run(cmd: VcardCommand) -> anyhow::Result<()> {
    match cmd {
        VcardCommand::New { image, home, mgm_alg, force } => {
            if image.exists() && !force {
                bail!("{} exists; pass --force to replace it", image.display());
            }
            let home = home.unwrap_or_else(default_home);
            let now = std::time::SystemTime::from(SystemClock.now());
            let root = AttestationRoot::open_or_create(&home, now)
                .with_context(|| format!("attestation root in {}", home.display()))?;
            let opts = NewCard { mgm_algorithm: mgm_alg.into(), ..NewCard::default() };
            let img = VirtualCard::new_image(&root, &opts, now)?;
            img.save(&image)?;
            println!("created {} (serial {})", image.display(), img.serial);
            println!("attestation root: {}", root.certificate_pem_path().display());
            println!("FIDO attestation root: {}", root.fido_certificate_pem_path().display());
            Ok(())
        }
        VcardCommand::Run { image, host, port, slot, control } => {
            run_cards(&image, &host, port, slot, control.as_deref())
        }
        VcardCommand::Remove { control, card } => send_control(&control, &format!("remove {card}")),
        VcardCommand::Insert { control, card } => send_control(&control, &format!("insert {card}")),
        VcardCommand::Info { image, output } => {
            let img = CardImage::load(&image)?;
            let keys: Vec<_> = img
                .keys
                .iter()
                .map(|(slot, k)| {
                    let alg = lanyard_piv::KeyAlgorithm::from_id(k.algorithm).map_or("unknown", |a| a.name());
                    (slot.clone(), alg, if k.origin == 1 { "generated" } else { "imported" })
                })
                .collect();
            let mgm = MgmAlgorithm::from_id(img.mgm_algorithm).map(|a| a.name()).unwrap_or("unknown");
            let fido = img.fido.as_ref().map(|f| {
                serde_json::json!({
                    "pin_set": f.pin.is_some(),
                    "pin_tries_left": f.pin_retries,
                    "min_pin_length": f.min_pin_length,
                    "force_pin_change": f.force_pin_change,
                    "discoverable_credentials": f.credentials.len(),
                    "signature_counter": f.sign_count,
                })
            });
            match output {
                crate::piv_cmd::Output::Json => {
                    let v = serde_json::json!({
                        "serial": img.serial,
                        "version": format!("{}.{}.{}", img.version[0], img.version[1], img.version[2]),
                        "pin": {"tries_left": img.pin.left, "tries_total": img.pin.total, "default": img.pin.is_default},
                        "puk": {"tries_left": img.puk.left, "tries_total": img.puk.total, "default": img.puk.is_default},
                        "management_key": {"algorithm": mgm, "default": img.mgm_is_default},
                        "keys": keys.iter().map(|(s, a, o)| serde_json::json!({"slot": s, "algorithm": a, "origin": o})).collect::<Vec<_>>(),
                        "objects": img.objects.keys().collect::<Vec<_>>(),
                        "fido": fido,
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                crate::piv_cmd::Output::Text => {
                    println!("serial:         {}", img.serial);
                    println!("version:        {}.{}.{}", img.version[0], img.version[1], img.version[2]);
                    println!(
                        "PIN tries:      {}/{}{}",
                        img.pin.left,
                        img.pin.total,
                        if img.pin.is_default { " (default PIN)" } else { "" }
                    );
                    println!(
                        "PUK tries:      {}/{}{}",
                        img.puk.left,
                        img.puk.total,
                        if img.puk.is_default { " (default PUK)" } else { "" }
                    );
                    println!("management key: {mgm}{}", if img.mgm_is_default { " (default)" } else { "" });
                    for (s, a, o) in &keys {
                        println!("key {s}:         {a}, {o}");
                    }
                    println!("objects:        {}", img.objects.keys().cloned().collect::<Vec<_>>().join(" "));
                    match &img.fido {
                        None => println!("FIDO2:          none (image made before the FIDO application)"),
                        Some(f) => println!(
                            "FIDO2:          PIN {} ({} tries left), minimum length {}{}, {} discoverable credential(s)",
                            if f.pin.is_some() { "set" } else { "not set" },
                            f.pin_retries,
                            f.min_pin_length,
                            if f.force_pin_change { ", change forced" } else { "" },
                            f.credentials.len()
                        ),
                    }
                }
            }
            Ok(())
        }
    }
}

fn run_cards(
    images: &[PathBuf],
    host: &str,
    port: u16,
    slot: u16,
    control: Option<&Path>,
) -> anyhow::Result<()> {
    let mut senders = Vec::new();
    let states = Arc::new(Mutex::new(vec![State::Connecting; images.len()]));
    let mut handles = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let mut card = VirtualCard::open(path).with_context(|| format!("opening {}", path.display()))?;
        let Some(p) = u16::try_from(i).ok().and_then(|i| port.checked_add(slot)?.checked_add(i)) else {
            bail!("port out of range");
        };
        let addr = format!("{host}:{p}");
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        let states = Arc::clone(&states);
        println!("card {i}: serial {} on vpcd {addr}", card.serial());
        handles.push(std::thread::spawn(move || {
            let r = vpcd::run(&mut card, &addr, &rx, |s| {
                if let Ok(mut st) = states.lock() {
                    st[i] = s;
                }
            });
            if let Err(e) = r {
                tracing::error!(card = i, error = %e, "card stopped");
            }
        }));
    }
    if let Some(path) = control {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let senders = senders.clone();
        let states = Arc::clone(&states);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = handle_control(conn, &senders, &states) {
                    tracing::warn!(error = %e, "control connection failed");
                }
            }
        });
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn handle_control(
    conn: UnixStream,
    senders: &[mpsc::Sender<Control>],
    states: &Mutex<Vec<State>>,
) -> anyhow::Result<()> {
    let mut out = conn.try_clone()?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let card: Option<usize> = words.next().and_then(|w| w.parse().ok());
    let reply = match (verb, card) {
        ("status", _) => {
            let st = states.lock().map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
            st.iter().enumerate().map(|(i, s)| format!("card {i}: {s:?}")).collect::<Vec<_>>().join("\n")
        }
        ("remove" | "insert", Some(n)) if n < senders.len() => {
            let c = if verb == "remove" { Control::Remove } else { Control::Insert };
            senders[n].send(c)?;
            // Wait until the card has changed state so callers can rely on it.
            let want = if verb == "remove" { State::Removed } else { State::Inserted };
            for _ in 0..100 {
                if states.lock().map(|s| s[n] == want).unwrap_or(false) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            format!("ok: card {n} {verb}d")
        }
        _ => "error: expected `status`, `remove N` or `insert N`".to_owned(),
    };
    writeln!(out, "{reply}")?;
    Ok(())
}

fn send_control(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
    writeln!(s, "{line}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    let reply = reply.trim();
    if reply.starts_with("error") {
        bail!("{reply}");
    }
    println!("{reply}");
    Ok(())
}
