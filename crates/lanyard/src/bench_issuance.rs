//! `lanyard bench issuance`: issues factory-fresh virtual cards end to end and splits the time.
//!
//! - **card**: inside PC/SC transmits (pcscd, vpcd, the software card);
//! - **server**: from the agent's answer to the next frame arriving (the server's work plus the
//!   loopback WebSocket);
//! - **agent**: the rest of the wall time (JSON, hex, checks, the PIN change bookkeeping).
//!
//! Nothing is timed with assertions; the figures go to docs/BENCHMARKS.md.

// A benchmark measures real elapsed time and stamps the server with it.
#![allow(clippy::disallowed_methods)]

use crate::bench::in_process;
use anyhow::{Context, bail};
use lanyard_agent::relay::{FixedPin, PcscCard, Progress, SessionCard, SessionOptions, run_session_with};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_piv::transport::{CardTransport, TransportError};
use lanyard_vcard::{AttestationRoot, NewCard, VirtualCard};
use serde_json::{Value, json};
use std::cell::Cell;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

const READER: &str = "Virtual PCD 00 00";

/// A PC/SC card that adds up the time spent in transmits and counts them.
struct Timed {
    inner: PcscCard,
    busy: Duration,
    transmits: u32,
    /// Transmits that only continue a command: chained blocks before the last (CLA bit 0x10) and
    /// GET RESPONSE (INS C0).
    continuations: u32,
    /// When the last transmit ended; shared with the progress callback, which cannot borrow
    /// the card while the relay holds it.
    last_end: Rc<Cell<Option<Instant>>>,
}

impl CardTransport for Timed {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let start = Instant::now();
        let r = self.inner.transmit(apdu);
        let end = Instant::now();
        self.busy += end - start;
        self.transmits += 1;
        if apdu.first().is_some_and(|cla| cla & 0x10 != 0) || apdu.get(1) == Some(&0xC0) {
            self.continuations += 1;
        }
        self.last_end.set(Some(end));
        r
    }
}

impl SessionCard for Timed {
    fn still_present(&mut self) -> bool {
        self.inner.still_present()
    }
}

struct VcardProcess(Child);

impl Drop for VcardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn card_present() -> bool {
    lanyard_piv::transport::reader_states()
        .map(|s| s.iter().any(|r| r.name == READER && r.card_present))
        .unwrap_or(false)
}

fn wait(what: &str, f: impl Fn() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct Sample {
    wall: Duration,
    card: Duration,
    server: Duration,
    batches: u32,
    transmits: u32,
    continuations: u32,
}

pub fn run(cards: u32, algorithm: &str) -> anyhow::Result<()> {
    if card_present() {
        bail!("{READER} already holds a card; stop the other `lanyard vcard run` first");
    }
    let algorithm: lanyard_core::model::KeyAlgorithm =
        algorithm.parse().map_err(|e| anyhow::anyhow!("--algorithm: {e}"))?;
    let dir = tempfile::tempdir()?;
    let root = AttestationRoot::open_or_create(&dir.path().join("vcard-home"), SystemTime::now())?;
    let root_der = der::Encode::to_der(root.certificate())?;

    // The server, in this process, on a loopback port.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (addr, password) = rt.block_on(async {
        let (db, password) = in_process::database(dir.path()).await?;
        // Every slot gets the algorithm under test.
        let mut tx = db.begin().await?;
        for mut group in tx.list_groups().await? {
            for slot in group.policy.certificates.values_mut() {
                slot.algorithm = algorithm;
            }
            tx.update_group(&group).await?;
        }
        tx.commit().await?;
        anyhow::Ok((in_process::serve(db, dir.path(), vec![root_der]).await?, password))
    })?;
    let base = format!("http://{addr}");
    let http: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let api = in_process::admin_token(&http, &base, &password)?;

    let exe = std::env::current_exe()?;
    let mut samples = Vec::new();
    for i in 0..cards {
        // A factory-fresh card in the reader; the setup is not timed.
        let image = dir.path().join(format!("card{i}.json"));
        VirtualCard::new_image(&root, &NewCard::default(), SystemTime::now())?.save(&image)?;
        let vcard = VcardProcess(
            Command::new(&exe)
                .args(["vcard", "run", "--image"])
                .arg(&image)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait("the card", card_present)?;
        let started: Value = http
            .post(format!("{base}/api/v1/issuance"))
            .header("authorization", &api)
            .send_json(json!({"kind": "usb_key", "model": "Lanyard virtual card"}))?
            .body_mut()
            .read_json()?;
        let ticket = started["ticket"].as_str().with_context(|| format!("no ticket: {started}"))?.to_owned();
        let device = started["device"]["id"].as_str().unwrap_or_default().to_owned();

        let mut inner = PcscCard::connect(READER)?;
        let atr = inner.atr()?;
        let last_end = Rc::new(Cell::new(None));
        let mut card = Timed {
            inner,
            busy: Duration::ZERO,
            transmits: 0,
            continuations: 0,
            last_end: Rc::clone(&last_end),
        };
        let opts = SessionOptions::new(base.clone(), ticket, READER);
        let mut pins = FixedPin(Zeroizing::new("97531864".to_owned()));
        let mut server = Duration::ZERO;
        let mut batches = 0;
        let start = Instant::now();
        let mut mark = start;
        let outcome = {
            let mut progress = |p: &Progress| {
                if let Progress::Step { .. } = p {
                    batches += 1;
                    let now = Instant::now();
                    let from = last_end.get().unwrap_or(mark).max(mark);
                    server += now - from;
                    mark = now;
                }
            };
            run_session_with(&opts, &mut card, &atr, &mut pins, &mut progress)?
        };
        let wall = start.elapsed();
        drop(vcard);
        wait("the card to leave", || !card_present())?;
        if !matches!(outcome.state, lanyard_agent::relay::DeviceState::Active) {
            bail!("card {i} ended {:?}", outcome.state);
        }
        samples.push(Sample {
            wall,
            card: card.busy,
            server,
            batches,
            transmits: card.transmits,
            continuations: card.continuations,
        });
        // Free the device allowance (max 2 per user) for the next card.
        let _ = http
            .post(format!("{base}/api/v1/devices/{device}/terminate"))
            .header("authorization", &api)
            .send_empty()?;
    }
    report(&samples, algorithm.as_str());
    drop(rt);
    Ok(())
}

fn report(samples: &[Sample], algorithm: &str) {
    let n = samples.len().max(1) as u32;
    let sum = |f: fn(&Sample) -> Duration| samples.iter().map(f).sum::<Duration>() / n;
    let (wall, card, server) = (sum(|s| s.wall), sum(|s| s.card), sum(|s| s.server));
    let agent = wall.saturating_sub(card + server);
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    walls.sort();
    let median = walls.get(walls.len() / 2).copied().unwrap_or_default();
    let batches = samples.first().map_or(0, |s| s.batches);
    let transmits = samples.first().map_or(0, |s| s.transmits);
    let continuations = samples.first().map_or(0, |s| s.continuations);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "issuance of {} virtual cards through pcscd, 4 slots ({algorithm}), PIN change included",
        samples.len()
    );
    println!("  wall      mean {:8.1} ms   median {:8.1} ms", ms(wall), ms(median));
    println!(
        "  card      mean {:8.1} ms   ({:.0}%)",
        ms(card),
        100.0 * card.as_secs_f64() / wall.as_secs_f64()
    );
    println!(
        "  server    mean {:8.1} ms   ({:.0}%)",
        ms(server),
        100.0 * server.as_secs_f64() / wall.as_secs_f64()
    );
    println!(
        "  agent     mean {:8.1} ms   ({:.0}%)",
        ms(agent),
        100.0 * agent.as_secs_f64() / wall.as_secs_f64()
    );
    println!("  server round trips (WebSocket batches): {batches}, plus the PIN change");
    println!(
        "  card round trips (PC/SC transmits): {transmits} = {} commands + {continuations} chained blocks and GET RESPONSEs",
        transmits - continuations
    );
}
