//! The real linked agent (`lanyard_agent::link::Agent`) against a [`TestServer`]: a workstation of
//! software cards in this process stands in for PC/SC, everything else (pairing, the link, the
//! session channel, the relay) is the production code on a real socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use lanyard_agent::AgentError;
use lanyard_agent::cards::{ReaderInfo, identify};
use lanyard_agent::link::{Agent, LinkEvent, LinkOptions, PinSources, Workstation};
use lanyard_agent::relay::{
    FixedPin, Outcome, PinSource, Progress, SessionOptions, SkipPinChange, run_session_with,
};
use lanyard_core::ids::AgentId;
use lanyard_piv::TransportError;
use lanyard_protocol::link::ReaderReport;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::card::VCard;
use crate::server::{Caller, TestServer};

/// How long a test waits for something the agent or the server must do before it calls the
/// run hung. A guard against hanging forever, not a measure: nothing asserts on durations.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A reader of a [`SoftWorkstation`]: empty, holding a card, or lending its card to a session.
enum Slot {
    Empty,
    Card(Box<VCard>),
    InSession,
}

/// A workstation whose readers hold software cards in this process.
#[derive(Default)]
pub struct SoftWorkstation {
    readers: Mutex<BTreeMap<String, Slot>>,
    /// Counts changes to readers and cards; `wait_for_change` waits for it to move.
    generation: Mutex<u64>,
    moved: Condvar,
    seen: Mutex<u64>,
}

impl SoftWorkstation {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn changed(&self) {
        *self.generation.lock().unwrap() += 1;
        self.moved.notify_all();
    }

    /// Connects an empty reader.
    pub fn add_reader(&self, name: &str) {
        self.readers.lock().unwrap().insert(name.to_owned(), Slot::Empty);
        self.changed();
    }

    /// Puts `card` into reader `name` (connecting the reader if needed).
    pub fn insert(&self, name: &str, card: VCard) {
        self.readers.lock().unwrap().insert(name.to_owned(), Slot::Card(Box::new(card)));
        self.changed();
    }

    /// Takes the card out of reader `name` (not while a session uses it).
    pub fn remove(&self, name: &str) -> Option<VCard> {
        let mut readers = self.readers.lock().unwrap();
        let slot = readers.get_mut(name)?;
        match std::mem::replace(slot, Slot::Empty) {
            Slot::Card(card) => {
                drop(readers);
                self.changed();
                Some(*card)
            }
            other => {
                *slot = other;
                None
            }
        }
    }
}

impl Workstation for SoftWorkstation {
    fn readers(&self, busy: &std::collections::BTreeSet<String>) -> Result<Vec<ReaderReport>, AgentError> {
        let mut readers = self.readers.lock().unwrap();
        Ok(readers
            .iter_mut()
            .map(|(name, slot)| {
                let (present, card) = match slot {
                    Slot::Empty => (false, None),
                    Slot::InSession => (true, None),
                    Slot::Card(_) if busy.contains(name) => (true, None),
                    Slot::Card(card) => (true, Some(identify(card.transport_mut()))),
                };
                let atr = if present { hex::encode_upper(lanyard_vcard::atr()) } else { String::new() };
                ReaderInfo { reader: name.clone(), card_present: present, atr, card }.to_report()
            })
            .collect())
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<bool, AgentError> {
        let generation = self.generation.lock().unwrap();
        let seen = *self.seen.lock().unwrap();
        let (generation, _) = self.moved.wait_timeout_while(generation, timeout, |g| *g == seen).unwrap();
        *self.seen.lock().unwrap() = *generation;
        Ok(*generation != seen)
    }

    fn run_session(
        &self,
        opts: &SessionOptions,
        pins: &mut dyn PinSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, AgentError> {
        let mut card = {
            let mut readers = self.readers.lock().unwrap();
            let Some(slot) = readers.get_mut(&opts.reader) else {
                return Err(AgentError::Reader {
                    reader: opts.reader.clone(),
                    source: TransportError::NoReader(opts.reader.clone()),
                });
            };
            match std::mem::replace(slot, Slot::InSession) {
                Slot::Card(card) => card,
                other => {
                    *slot = other;
                    return Err(AgentError::Reader {
                        reader: opts.reader.clone(),
                        source: TransportError::CardGone,
                    });
                }
            }
        };
        let result = run_session_with(opts, card.transport_mut(), &lanyard_vcard::atr(), pins, progress);
        self.readers.lock().unwrap().insert(opts.reader.clone(), Slot::Card(card));
        self.changed();
        result
    }
}

/// A paired agent running its link on a thread. Dropping it stops the agent.
pub struct LinkedAgent {
    pub id: AgentId,
    pub credential: String,
    pub workstation: Arc<SoftWorkstation>,
    stop: Arc<AtomicBool>,
    events: tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
    thread: Option<std::thread::JoinHandle<Result<(), AgentError>>>,
}

impl Drop for LinkedAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LinkedAgent {
    /// The next event that `wanted` accepts; the others are skipped.
    pub async fn wait_for(&mut self, what: &str, wanted: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
        let found = tokio::time::timeout(HANG_GUARD, async {
            while let Some(event) = self.events.recv().await {
                if wanted(&event) {
                    return Some(event);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the agent stopped before {what}"),
            Err(_) => panic!("no {what} within {HANG_GUARD:?}"),
        }
    }

    /// Waits for the agent's `run` to return (after the server refused it, or a stop).
    pub async fn finished(&mut self) -> Result<(), AgentError> {
        let thread = self.thread.take().expect("finished is asked once");
        tokio::time::timeout(HANG_GUARD, tokio::task::spawn_blocking(move || thread.join()))
            .await
            .expect("the agent ends in time")
            .expect("the waiting task ends")
            .expect("the agent thread ends without a panic")
    }
}

impl TestServer {
    /// `caller` pairs an agent through the API (pairing code, then redemption): its id and
    /// credential.
    pub async fn pair_agent(&self, caller: &Caller, host: &str) -> (AgentId, String) {
        let started = self.post(caller, "/api/v1/agents/pairing", json!({})).await;
        let code = started["code"].as_str().expect("a pairing code").to_owned();
        let paired = self.post(caller, "/api/v1/agents/pair", json!({"code": code, "host_name": host})).await;
        let id = paired["agent"]["id"].as_str().expect("the agent id").parse().expect("an agent id");
        (id, paired["credential"].as_str().expect("the credential").to_owned())
    }

    /// Starts the real agent with `credential` and `workstation`; the new PIN is `pin` when the
    /// server asks (`None` keeps the initial PIN).
    pub fn run_linked_agent(
        &self,
        id: AgentId,
        credential: &str,
        workstation: Arc<SoftWorkstation>,
        pin: Option<&str>,
    ) -> LinkedAgent {
        let mut opts = LinkOptions::new(self.url.clone(), credential, "testkit-workstation");
        opts.session_read_timeout = HANG_GUARD;
        let pin = pin.map(|p| Zeroizing::new(p.to_owned()));
        let pins: PinSources = Arc::new(move || -> Box<dyn PinSource + Send> {
            match &pin {
                Some(p) => Box::new(FixedPin(p.clone())),
                None => Box::new(SkipPinChange),
            }
        });
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let agent = Agent::new(opts, Arc::clone(&workstation), pins, Arc::new(move |e| drop(tx.send(e))));
        let stop = agent.stop_flag();
        let thread = std::thread::spawn(move || agent.run());
        LinkedAgent { id, credential: credential.to_owned(), workstation, stop, events, thread: Some(thread) }
    }

    /// Asks `GET /api/v1/agents` as `caller` until agent `id` satisfies `ready`; returns its entry.
    pub async fn wait_for_agent(
        &self,
        caller: &Caller,
        id: AgentId,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let id = id.to_string();
        let found = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let list = self.get(caller, "/api/v1/agents").await;
                if let Some(entry) = list.as_array().into_iter().flatten().find(|a| a["id"] == id.as_str())
                    && ready(entry)
                {
                    return entry.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("agent {id} did not reach the expected state within {HANG_GUARD:?}"))
    }

    /// Asks `GET /api/v1/jobs/{id}` as `caller` until the job is finished or failed; returns it.
    pub async fn wait_for_job(&self, caller: &Caller, id: lanyard_core::ids::JobId) -> Value {
        let path = format!("/api/v1/jobs/{id}");
        let found = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let job = self.get(caller, &path).await;
                if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "rolled_back")) {
                    return job;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("job {id} did not end within {HANG_GUARD:?}"))
    }
}
