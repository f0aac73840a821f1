//! The agent link, agent side (DESIGN §4, `lanyard_protocol::link`): `lanyard agent run` keeps
//! one outbound WebSocket to the server, authenticated by the credential from pairing. Over it
//! the agent reports its readers and cards whenever they change, and the server asks it to run
//! card sessions, each of which the ordinary [`crate::relay`] runs on its own session channel.
//! The agent listens on no port.
//!
//! Three kinds of thread share the work:
//! - the link loop ([`Agent::run`]) connects, reconnects with a growing pause after any loss,
//!   reads the server's frames and writes everything that goes out;
//! - the watcher waits for PC/SC reader changes ([`Workstation::wait_for_change`]) and reports
//!   the readers when they change, when a session starts or ends, and on the server's `refresh`;
//! - each `start_session` runs on a thread of its own, at most [`LinkOptions::max_sessions`] at
//!   once and one per reader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lanyard_core::ids::JobId;
use lanyard_protocol::link::{
    AgentLinkFrame, FEATURE_CTAP, FEATURE_SERVER_PIN, FEATURE_SESSIONS, PING_INTERVAL_SECS, ReaderReport,
    ServerLinkFrame, link_url,
};
use lanyard_protocol::{PROTOCOL_VERSION, Secret};
use tungstenite::Message;
use zeroize::Zeroizing;

use crate::relay::{Dial, Outcome, PinSource, Progress, SessionOptions, bearer, close};
use crate::{AGENT_NAME, AgentError};

/// How often the link loop looks at its outbox while no frame arrives.
const POLL: Duration = Duration::from_millis(200);
/// How long the watcher waits for a reader change before it looks at its other reasons to report.
const WATCH: Duration = Duration::from_millis(500);
/// The pause before the first reconnection; it doubles after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The readers and cards of a workstation, and the sessions it runs on them: PC/SC in
/// production ([`Pcsc`]), in-process software cards in tests.
pub trait Workstation: Send + Sync + 'static {
    /// Every reader and its card. The cards in the readers named in `busy` run a session and
    /// must not be touched: their reports carry no `card` (the link fills in the earlier one).
    fn readers(&self, busy: &BTreeSet<String>) -> Result<Vec<ReaderReport>, AgentError>;
    /// Blocks until a reader appears or goes, or a card is inserted, removed or replaced
    /// (`true`), or `timeout` passes (`false`).
    fn wait_for_change(&self, timeout: Duration) -> Result<bool, AgentError>;
    /// Runs one server-driven session on the card in `opts.reader`.
    fn run_session(
        &self,
        opts: &SessionOptions,
        pins: &mut dyn PinSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, AgentError>;
}

/// Where the link goes and how.
#[derive(Clone)]
pub struct LinkOptions {
    /// The server's base URL, as stored at pairing.
    pub server: String,
    /// The agent's credential from pairing.
    pub credential: Zeroizing<String>,
    /// PEM (or DER) trust anchors for the server, as stored at pairing; `None`: the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// This workstation's host name, for `hello`.
    pub host: String,
    /// Most sessions run at once (each on its own reader).
    pub max_sessions: usize,
    pub connect_timeout: Duration,
    /// How long a session waits for the server's next frame.
    pub session_read_timeout: Duration,
}

impl LinkOptions {
    pub fn new(server: impl Into<String>, credential: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            credential: Zeroizing::new(credential.into()),
            ca_pem: None,
            host: host.into(),
            max_sessions: 4,
            connect_timeout: Duration::from_secs(10),
            session_read_timeout: Duration::from_secs(300),
        }
    }
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("server", &self.server)
            .field("credential", &"<redacted>")
            .field("host", &self.host)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

/// What the agent tells whoever runs it (a log line each, or a test's record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Connected,
    /// The link was lost or could not be opened; the agent tries again after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    /// A readers report went to the server.
    Reported {
        readers: usize,
        cards: usize,
    },
    /// The readers could not be read (pcscd stopped, for instance).
    ReadersFailed(String),
    SessionStarted {
        job: JobId,
        reader: String,
        purpose: String,
    },
    /// A session ended: `None` when the server said `done`.
    SessionEnded {
        job: JobId,
        reader: String,
        error: Option<String>,
    },
    /// A session the server asked for was refused here.
    SessionRefused {
        job: JobId,
        reason: String,
    },
    /// The server said `error`.
    ServerError(String),
}

/// Makes a fresh [`PinSource`] for each session (the PIN typed at this workstation when the
/// server sends none).
pub type PinSources = Arc<dyn Fn() -> Box<dyn PinSource + Send> + Send + Sync>;

/// What the threads of one agent share.
struct Shared {
    /// Readers running a session, and their jobs.
    busy: Mutex<BTreeMap<String, JobId>>,
    /// Held while cards are identified, so a session never starts in the middle of it.
    identifying: Mutex<()>,
    /// The latest readers report, sent again after every reconnection.
    latest: Mutex<Option<Vec<ReaderReport>>>,
    /// The current connection's outgoing frames; `None` while disconnected.
    outbox: Mutex<Option<mpsc::Sender<String>>>,
    /// A report is due whatever the readers did.
    report_due: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is one assignment or lookup, so a value behind a poisoned
    // lock is still whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Queues `frame` on the current connection; `false` while disconnected.
    fn send(&self, frame: &AgentLinkFrame) -> bool {
        lock(&self.outbox).as_ref().is_some_and(|tx| tx.send(frame.to_text()).is_ok())
    }

    /// Keeps `readers` as the latest report and sends it; `false` while disconnected. Under the
    /// outbox's lock, like a new connection's resending of the latest report, so a report goes
    /// out once, by one of them. (Locks are always taken outbox first, then latest.)
    fn publish(&self, readers: Vec<ReaderReport>) -> bool {
        let outbox = lock(&self.outbox);
        *lock(&self.latest) = Some(readers.clone());
        outbox.as_ref().is_some_and(|tx| tx.send(AgentLinkFrame::Readers { readers }.to_text()).is_ok())
    }

    /// Makes `tx` the outbox of a new connection and queues the latest report on it; whether
    /// there was one to send.
    fn connected(&self, tx: mpsc::Sender<String>) -> Option<Vec<ReaderReport>> {
        let mut outbox = lock(&self.outbox);
        let latest = lock(&self.latest).clone();
        if let Some(readers) = &latest {
            let _ = tx.send(AgentLinkFrame::Readers { readers: readers.clone() }.to_text());
        }
        *outbox = Some(tx);
        latest
    }
}

/// A paired agent: its link, its watcher and its sessions.
pub struct Agent<W: Workstation> {
    opts: LinkOptions,
    workstation: Arc<W>,
    pins: PinSources,
    events: Arc<dyn Fn(LinkEvent) + Send + Sync>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl<W: Workstation> Agent<W> {
    pub fn new(
        opts: LinkOptions,
        workstation: Arc<W>,
        pins: PinSources,
        events: Arc<dyn Fn(LinkEvent) + Send + Sync>,
    ) -> Self {
        Self {
            opts,
            workstation,
            pins,
            events,
            stop: Arc::new(AtomicBool::new(false)),
            shared: Arc::new(Shared {
                busy: Mutex::new(BTreeMap::new()),
                identifying: Mutex::new(()),
                latest: Mutex::new(None),
                outbox: Mutex::new(None),
                report_due: AtomicBool::new(true),
            }),
        }
    }

    /// Set it to end [`Agent::run`] (within a fraction of a second, sessions aside).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Keeps the link up until the stop flag is set or the server refuses the credential (the
    /// agent was revoked or never paired with this server: reconnecting cannot help).
    pub fn run(&self) -> Result<(), AgentError> {
        let url = link_url(&self.opts.server)?;
        // A bad CA file is reported now, not as a failed connection every minute.
        if url.starts_with("wss://") {
            crate::relay::tls_config(self.opts.ca_pem.as_deref())?;
        }
        let watcher = {
            let (shared, ws, stop, events) = (
                Arc::clone(&self.shared),
                Arc::clone(&self.workstation),
                Arc::clone(&self.stop),
                Arc::clone(&self.events),
            );
            std::thread::spawn(move || watch(&shared, ws.as_ref(), &stop, events.as_ref()))
        };
        let mut backoff = FIRST_BACKOFF;
        let result = loop {
            if self.stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let started = Instant::now();
            let reason = match self.connect(&url) {
                Ok(ws) => {
                    (self.events)(LinkEvent::Connected);
                    let reason = self.serve(ws);
                    // A link that lived a while was a success: the next failure starts over.
                    if started.elapsed() > MAX_BACKOFF {
                        backoff = FIRST_BACKOFF;
                    }
                    reason
                }
                Err(AgentError::Refused { status: 401, body }) => {
                    break Err(AgentError::Refused { status: 401, body });
                }
                Err(e @ AgentError::ProtocolVersion(_)) => break Err(e),
                Err(e) => e.to_string(),
            };
            if self.stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            (self.events)(LinkEvent::Disconnected { reason, retry_in: backoff });
            self.pause(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        self.stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        result
    }

    /// Sleeps `d`, or less if the stop flag is set meanwhile.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }

    fn connect(&self, url: &str) -> Result<tungstenite::WebSocket<crate::relay::Stream>, AgentError> {
        let dial = Dial {
            server: &self.opts.server,
            ca_pem: self.opts.ca_pem.as_deref(),
            connect_timeout: self.opts.connect_timeout,
            read_timeout: self.opts.connect_timeout,
        };
        let mut opened = dial.open(url, vec![("authorization", bearer(&self.opts.credential)?)])?;
        if let Err(e) =
            lanyard_protocol::check_version(lanyard_protocol::Side::Agent, opened.version.as_deref())
        {
            close(&mut opened.ws);
            return Err(AgentError::ProtocolVersion(e));
        }
        // From now on a read returns after a short while without data, so the loop can write
        // what the watcher and the sessions queued.
        opened.ws.get_ref().set_read_timeout(Some(POLL)).map_err(|e| AgentError::WebSocket(e.to_string()))?;
        Ok(opened.ws)
    }

    /// Serves one connection until it ends; returns why it ended.
    fn serve(&self, mut ws: tungstenite::WebSocket<crate::relay::Stream>) -> String {
        let (tx, rx) = mpsc::channel::<String>();
        let hello = AgentLinkFrame::Hello {
            protocol: PROTOCOL_VERSION,
            agent: AGENT_NAME.to_owned(),
            host: self.opts.host.clone(),
            features: vec![
                FEATURE_SESSIONS.to_owned(),
                FEATURE_SERVER_PIN.to_owned(),
                FEATURE_CTAP.to_owned(),
            ],
        };
        if let Err(e) = ws.send(Message::text(hello.to_text())) {
            return format!("saying hello: {e}");
        }
        // The server forgets reports with the connection; the last one goes again at once.
        if let Some(readers) = self.shared.connected(tx) {
            let cards = readers.iter().filter(|r| r.card_present).count();
            (self.events)(LinkEvent::Reported { readers: readers.len(), cards });
        }
        let mut last_ping = Instant::now();
        let reason = loop {
            if self.stop.load(Ordering::Relaxed) {
                close(&mut ws);
                break "stopped".to_owned();
            }
            let mut failed = None;
            while let Ok(text) = rx.try_recv() {
                if let Err(e) = ws.send(Message::text(text)) {
                    failed = Some(format!("sending: {e}"));
                    break;
                }
            }
            if let Some(f) = failed {
                break f;
            }
            if last_ping.elapsed() >= Duration::from_secs(PING_INTERVAL_SECS) {
                if let Err(e) = ws.send(Message::Ping(Vec::new().into())) {
                    break format!("pinging: {e}");
                }
                last_ping = Instant::now();
            }
            match ws.read() {
                Ok(Message::Text(text)) => {
                    if let Some(answer) = self.on_frame(text.as_str())
                        && let Err(e) = ws.send(Message::text(answer))
                    {
                        break format!("sending: {e}");
                    }
                }
                Ok(Message::Binary(_)) => {
                    let answer = AgentLinkFrame::Error {
                        message: "binary frames are not part of the protocol".into(),
                    };
                    if let Err(e) = ws.send(Message::text(answer.to_text())) {
                        break format!("sending: {e}");
                    }
                }
                Ok(Message::Close(_)) => {
                    close(&mut ws);
                    break "the server closed the link".to_owned();
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => break e.to_string(),
            }
        };
        *lock(&self.shared.outbox) = None;
        reason
    }

    /// Acts on one frame from the server; `Some` is the answer to send at once.
    fn on_frame(&self, text: &str) -> Option<String> {
        let frame = match ServerLinkFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                return Some(
                    AgentLinkFrame::Error { message: format!("unintelligible frame: {e}") }.to_text(),
                );
            }
        };
        match frame {
            ServerLinkFrame::Refresh => {
                self.shared.report_due.store(true, Ordering::Relaxed);
                None
            }
            ServerLinkFrame::Error { message } => {
                (self.events)(LinkEvent::ServerError(message));
                None
            }
            ServerLinkFrame::StartSession { job, ticket, reader, purpose } => {
                match self.start_session(job, ticket, &reader, &purpose) {
                    Ok(()) => None,
                    Err(reason) => {
                        (self.events)(LinkEvent::SessionRefused { job, reason: reason.clone() });
                        Some(AgentLinkFrame::SessionEnded { job, error: Some(reason) }.to_text())
                    }
                }
            }
        }
    }

    /// Starts a session thread, if the reader is free and the limit allows.
    fn start_session(&self, job: JobId, ticket: Secret, reader: &str, purpose: &str) -> Result<(), String> {
        {
            let mut busy = lock(&self.shared.busy);
            if let Some(other) = busy.get(reader) {
                return Err(format!("reader {reader:?} is already running job {other}"));
            }
            if busy.len() >= self.opts.max_sessions {
                return Err(format!("this agent already runs {} sessions, its limit", busy.len()));
            }
            busy.insert(reader.to_owned(), job);
        }
        self.shared.report_due.store(true, Ordering::Relaxed);
        let mut opts = SessionOptions::new(self.opts.server.clone(), ticket.expose(), reader);
        opts.ca_pem = self.opts.ca_pem.clone();
        opts.connect_timeout = self.opts.connect_timeout;
        opts.read_timeout = self.opts.session_read_timeout;
        opts.credential = Some(self.opts.credential.clone());
        let (shared, ws, events, pins) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.workstation),
            Arc::clone(&self.events),
            Arc::clone(&self.pins),
        );
        let reader = reader.to_owned();
        events(LinkEvent::SessionStarted { job, reader: reader.clone(), purpose: purpose.to_owned() });
        std::thread::spawn(move || {
            // An identification under way finishes before the session's first command.
            drop(lock(&shared.identifying));
            let mut pins = pins();
            let result = ws.run_session(&opts, pins.as_mut(), &mut |_| {});
            let error = result.err().map(|e| e.to_string());
            lock(&shared.busy).remove(&reader);
            shared.report_due.store(true, Ordering::Relaxed);
            // A link that is down meanwhile misses this; the job's own record says how it ended.
            let _ = shared.send(&AgentLinkFrame::SessionEnded { job, error: error.clone() });
            events(LinkEvent::SessionEnded { job, reader, error });
        });
        Ok(())
    }
}

/// How often the watcher reads the readers when it cannot wait for changes (pcscd unreachable).
const POLL_WITHOUT_EVENTS: Duration = Duration::from_secs(5);

/// The watcher: reports the readers whenever they change or a report is due, until `stop`. When
/// waiting for changes fails it falls back to reading the readers every few seconds, and sends a
/// report only when it differs from the last.
fn watch<W: Workstation>(
    shared: &Shared,
    ws: &W,
    stop: &AtomicBool,
    events: &(dyn Fn(LinkEvent) + Send + Sync),
) {
    let mut failing: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let changed = match ws.wait_for_change(WATCH) {
            Ok(c) => {
                failing = None;
                c
            }
            Err(e) => {
                let why = e.to_string();
                if failing.as_deref() != Some(why.as_str()) {
                    events(LinkEvent::ReadersFailed(why.clone()));
                }
                failing = Some(why);
                let until = Instant::now() + POLL_WITHOUT_EVENTS;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(WATCH);
                }
                // Polling: the comparison below decides whether anything changed.
                true
            }
        };
        let due = shared.report_due.swap(false, Ordering::Relaxed);
        if !(changed || due) {
            continue;
        }
        let busy = lock(&shared.busy).clone();
        let busy_names: BTreeSet<String> = busy.keys().cloned().collect();
        let report = {
            let _identifying = lock(&shared.identifying);
            ws.readers(&busy_names)
        };
        let mut readers = match report {
            Ok(r) => r,
            Err(e) => {
                let why = e.to_string();
                if failing.as_deref() != Some(why.as_str()) {
                    events(LinkEvent::ReadersFailed(why.clone()));
                }
                failing = Some(why);
                continue;
            }
        };
        let previous = lock(&shared.latest).clone();
        for r in readers.iter_mut().filter(|r| busy.contains_key(&r.name)) {
            let before = previous.iter().flatten().find(|p| p.name == r.name).and_then(|p| p.card.clone());
            r.card = before.map(|c| lanyard_protocol::link::CardReport { busy: true, ..c });
        }
        if !due && previous.as_ref() == Some(&readers) {
            continue;
        }
        let cards = readers.iter().filter(|r| r.card_present).count();
        let count = readers.len();
        // While disconnected the report waits in `latest` for the next connection.
        if shared.publish(readers) {
            events(LinkEvent::Reported { readers: count, cards });
        }
    }
}

/// The workstation's PC/SC readers through pcscd.
#[derive(Default)]
pub struct Pcsc {
    watch: Mutex<Option<Watch>>,
}

struct Watch {
    ctx: pcsc::Context,
    states: Vec<pcsc::ReaderState>,
    /// What the last report was about: each reader with its card's presence and ATR.
    seen: Vec<(String, bool, Vec<u8>)>,
}

fn pcsc_error(e: pcsc::Error) -> AgentError {
    AgentError::Pcsc(lanyard_piv::TransportError::Pcsc(e.to_string()))
}

impl Watch {
    fn open() -> Result<Self, AgentError> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(pcsc_error)?;
        let pnp = pcsc::ReaderState::new(pcsc::PNP_NOTIFICATION(), pcsc::State::UNAWARE);
        Ok(Self { ctx, states: vec![pnp], seen: Vec::new() })
    }

    /// Keeps one state per reader pcscd lists now (and the PnP entry first).
    fn sync_readers(&mut self) -> Result<(), AgentError> {
        let readers = match self.ctx.list_readers_owned() {
            Ok(r) => r,
            Err(pcsc::Error::NoReadersAvailable) => Vec::new(),
            Err(e) => return Err(pcsc_error(e)),
        };
        let pnp = pcsc::PNP_NOTIFICATION();
        self.states.retain(|s| s.name() == pnp || readers.iter().any(|r| r.as_c_str() == s.name()));
        for r in readers {
            if !self.states.iter().any(|s| s.name() == r.as_c_str()) {
                self.states.push(pcsc::ReaderState::new(r, pcsc::State::UNAWARE));
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<(String, bool, Vec<u8>)> {
        let pnp = pcsc::PNP_NOTIFICATION();
        self.states
            .iter()
            .filter(|s| s.name() != pnp)
            .map(|s| {
                let present = s.event_state().contains(pcsc::State::PRESENT);
                (
                    s.name().to_string_lossy().into_owned(),
                    present,
                    if present { s.atr().to_vec() } else { Vec::new() },
                )
            })
            .collect()
    }
}

impl Workstation for Pcsc {
    fn readers(&self, busy: &BTreeSet<String>) -> Result<Vec<ReaderReport>, AgentError> {
        Ok(crate::cards::list_cards_except(busy)?.iter().map(crate::cards::ReaderInfo::to_report).collect())
    }

    /// `SCardGetStatusChange` on every reader and on `\\?PnP?\Notification`, so a new reader
    /// counts as a change. Only readers, card presence and ATRs count: a program opening a card
    /// (identification does) changes pcscd's state too, and must not set off another report.
    fn wait_for_change(&self, timeout: Duration) -> Result<bool, AgentError> {
        let mut guard = lock(&self.watch);
        if guard.is_none() {
            *guard = Some(Watch::open()?);
        }
        let Some(watch) = guard.as_mut() else { return Ok(false) };
        let result = (|| {
            watch.sync_readers()?;
            for s in &mut watch.states {
                s.sync_current_state();
            }
            match watch.ctx.get_status_change(timeout, &mut watch.states) {
                Ok(()) | Err(pcsc::Error::Timeout) => {}
                // A reader went away between listing and waiting: the next round lists again.
                Err(pcsc::Error::UnknownReader) => return Ok(true),
                Err(e) => return Err(pcsc_error(e)),
            }
            let now = watch.snapshot();
            let changed = now != watch.seen;
            watch.seen = now;
            Ok(changed)
        })();
        if result.is_err() {
            // pcscd restarted or went away: a fresh context next time.
            *guard = None;
        }
        result
    }

    fn run_session(
        &self,
        opts: &SessionOptions,
        pins: &mut dyn PinSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, AgentError> {
        crate::relay::run_session(opts, pins, progress)
    }
}
