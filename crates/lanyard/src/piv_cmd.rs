//! `lanyard piv …`: look at a PIV card through PC/SC, the way the agent will.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use lanyard_piv::transport::{PcscTransport, list_readers};
use lanyard_piv::{Piv, Slot};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum PivCommand {
    /// List PC/SC readers.
    Readers,
    /// Show a card's PIV application: version, serial, PIN and PUK tries, keys and certificates.
    Info {
        /// Reader name filter (case-insensitive substring), as yubico-piv-tool's `-r`.
        #[arg(long, short, default_value = "")]
        reader: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

pub fn run(cmd: PivCommand) -> anyhow::Result<()> {
    match cmd {
        PivCommand::Readers => {
            for r in list_readers()? {
                println!("{r}");
            }
            Ok(())
        }
        PivCommand::Info { reader, output } => info(&reader, output),
    }
}

fn info(reader: &str, output: Output) -> anyhow::Result<()> {
    let mut transport = PcscTransport::connect(reader).context("connecting to the card")?;
    let name = transport.reader().to_owned();
    let atr = transport.atr().unwrap_or_default();
    let mut piv = Piv::new(transport);
    let app = piv.select().context("selecting the PIV application")?;
    // Version and serial are YubiKey extensions: a plain PIV card answers 6D00.
    let version = piv.get_version().ok();
    let serial = piv.get_serial().ok();
    let pin = piv.pin_status()?;
    let puk = piv.get_metadata(0x81).ok().and_then(|m| m.retries);
    let mut slots = Vec::new();
    for s in [0x9A, 0x9C, 0x9D, 0x9E] {
        let slot = Slot(s);
        let meta = piv.get_metadata(s).ok();
        let cert = match slot.certificate_tag() {
            Some(t) => piv.try_get_data(t)?.is_some(),
            None => false,
        };
        slots.push((slot, meta.and_then(|m| m.algorithm).and_then(lanyard_piv::KeyAlgorithm::from_id), cert));
    }
    let chuid = piv.try_get_data(lanyard_piv::tag::CHUID)?.is_some();
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "reader": name,
                "atr": hex::encode(&atr),
                "label": app.label,
                "version": version.map(|v| v.to_string()),
                "serial": serial,
                "pin_tries_left": pin,
                "puk_tries": puk.map(|(t, l)| serde_json::json!({"total": t, "left": l})),
                "chuid": chuid,
                "slots": slots.iter().map(|(s, a, c)| serde_json::json!({
                    "slot": s.to_string(), "name": s.name(), "algorithm": a.map(|a| a.name()), "certificate": c
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("reader:   {name}");
            println!("ATR:      {}", hex::encode(&atr));
            if let Some(l) = &app.label {
                println!("label:    {l}");
            }
            if let Some(v) = version {
                println!("version:  {v}");
            }
            if let Some(s) = serial {
                println!("serial:   {s}");
            }
            match pin {
                None => println!("PIN:      verified"),
                Some(n) => println!("PIN:      {n} tries left"),
            }
            if let Some((total, left)) = puk {
                println!("PUK:      {left}/{total} tries left");
            }
            println!("CHUID:    {}", if chuid { "present" } else { "absent" });
            for (s, a, c) in &slots {
                println!(
                    "slot {s} ({}): key {}, certificate {}",
                    s.name(),
                    a.map_or("unknown/none", |a| a.name()),
                    if *c { "present" } else { "absent" }
                );
            }
        }
    }
    Ok(())
}
