//! Revocation publishing at scale: OCSP answers and CRLs cached per revocation epoch.
//!
//! The store keeps a revocation epoch that grows in the same transaction as every change to a
//! certificate's status ([`lanyard_core::repo::RevocationRepo::revocation_epoch`]). Everything
//! cached here is valid for one epoch (and one OCSP signer), and is served only after an epoch
//! read that *started after the request arrived* ([`EpochGate`]): whatever committed before a
//! request arrived — on this server or any other sharing the database — is in its answer.
//! Reads are coalesced: requests arriving while a read is in flight wait for the next read,
//! which then serves all of them, so the cost is one small query per batch of requests.
//!
//! - OCSP: a request without a nonce gets a pre-signed response (RFC 5019 allows it), kept in a
//!   bounded cache keyed by the request's bytes, until the epoch or the signer changes or half
//!   of its validity passed. Requests with a nonce are signed fresh. "unknown" answers are never
//!   cached: inserting an active certificate does not move the epoch.
//! - CRL: the full CRL and each partition are rebuilt only when the epoch moved or half of
//!   their validity passed; one build at a time per CRL (others wait for its result); entries
//!   streamed from a read snapshot (four columns per row, borrowed) straight into the DER of
//!   the CRL, with nothing allocated per entry; cRLNumber taken from the database.

use axum::body::Bytes;
use lanyard_ca::{CertStatus, CrlParams, ParsedOcspRequest};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{ListedEntry, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// How long a CRL stays valid; it is re-signed when the epoch moves or half of this passed.
pub const CRL_VALIDITY: time::Duration = time::Duration::days(1);
/// Pre-signed OCSP responses kept at most (about 1 KiB each, the responder certificate
/// included): bounded whatever the number of certificates.
pub const DEFAULT_OCSP_CACHE_ENTRIES: usize = 65_536;
/// Most CRL partitions a server publishes.
pub const MAX_CRL_SHARDS: u16 = 1024;

/// Coalesced reads of the committed revocation epoch. [`EpochGate::fresh`] returns the result
/// of a read that started after it was called.
#[derive(Default)]
pub struct EpochGate {
    state: Arc<Mutex<GateState>>,
    done: Arc<Notify>,
}

#[derive(Default)]
struct GateState {
    /// Reads started so far (each read's number is the value after its start).
    started: u64,
    /// The number of the last read that finished, and its result.
    completed: u64,
    last: Option<Result<u64, StoreError>>,
    running: bool,
    /// Reads made, for tests and figures.
    reads: u64,
}

impl EpochGate {
    /// The epoch as committed at some instant after this call began.
    pub async fn fresh<R: Repo + 'static>(&self, repo: &Arc<R>) -> Result<u64, StoreError> {
        let need = self.lock().started + 1;
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.completed >= need {
                    return st
                        .last
                        .clone()
                        .unwrap_or_else(|| Err(StoreError::Backend("no epoch read".into())));
                }
                if !st.running {
                    st.running = true;
                    st.started += 1;
                    st.reads += 1;
                    let number = st.started;
                    let (state, done, repo) =
                        (Arc::clone(&self.state), Arc::clone(&self.done), Arc::clone(repo));
                    // A task of its own, so a request that gives up cannot strand the others.
                    tokio::spawn(async move {
                        let result = repo.revocation_epoch().await;
                        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                        st.completed = number;
                        st.last = Some(result);
                        st.running = false;
                        drop(st);
                        done.notify_waiters();
                    });
                }
            }
            notified.await;
        }
    }

    /// How many reads went to the database.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One pre-signed OCSP response.
#[derive(Debug)]
pub struct Presigned {
    pub der: Bytes,
    pub this_update: OffsetDateTime,
    /// Served until then; afterwards signed again.
    pub refresh_at: OffsetDateTime,
    /// A strong validator of `der`, quoted.
    pub etag: String,
    /// The answer's headers, made once when it was signed: Content-Type, the RFC 5019 §6
    /// caching headers, ETag and Last-Modified.
    pub headers: axum::http::HeaderMap,
}

/// Pre-signed responses of one epoch and signer generation. Two halves approximate LRU: hits
/// in the older half move to the newer; when the newer fills up, the older is dropped.
struct OcspCache {
    epoch: u64,
    generation: u64,
    young: HashMap<Bytes, Arc<Presigned>>,
    old: HashMap<Bytes, Arc<Presigned>>,
    half: usize,
}

impl OcspCache {
    fn get(
        &mut self,
        key: &[u8],
        epoch: u64,
        generation: u64,
        now: OffsetDateTime,
    ) -> Option<Arc<Presigned>> {
        if epoch != self.epoch || generation != self.generation {
            return None;
        }
        let hit = match self.young.get(key) {
            Some(hit) => Arc::clone(hit),
            None => {
                let (k, v) = self.old.remove_entry(key)?;
                self.insert(k, Arc::clone(&v));
                v
            }
        };
        (now < hit.refresh_at && now >= hit.this_update).then_some(hit)
    }

    fn put(&mut self, key: Bytes, epoch: u64, generation: u64, entry: Arc<Presigned>) {
        if epoch < self.epoch || (epoch == self.epoch && generation < self.generation) {
            return; // signed from an older snapshot than what the cache holds
        }
        if epoch != self.epoch || generation != self.generation {
            self.young.clear();
            self.old.clear();
            self.epoch = epoch;
            self.generation = generation;
        }
        self.insert(key, entry);
    }

    fn insert(&mut self, key: Bytes, entry: Arc<Presigned>) {
        if self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, entry);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// A signed CRL and what it was built from.
#[derive(Clone)]
pub struct CachedCrl {
    pub epoch: u64,
    pub this_update: OffsetDateTime,
    pub number: u64,
    pub der: Bytes,
    /// Entries listed.
    pub entries: u64,
}

/// Which CRL: the full one or a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlScope {
    Full,
    Shard(u16),
}

impl CrlScope {
    /// The cRLNumber counter's name.
    fn counter(self) -> String {
        match self {
            CrlScope::Full => "issuing".to_owned(),
            CrlScope::Shard(n) => format!("issuing/{n}"),
        }
    }
}

/// The revocation caches of one server process.
pub struct Revocation {
    pub epoch: EpochGate,
    ocsp: Mutex<OcspCache>,
    /// Index 0: the full CRL; 1 + n: partition n. The async mutex makes builds single-flight.
    crls: Vec<tokio::sync::Mutex<Option<CachedCrl>>>,
    shards: u16,
    builds: std::sync::atomic::AtomicU64,
}

impl Revocation {
    /// Caches for a CA publishing `shards` CRL partitions (0: the full CRL only) and keeping at
    /// most `ocsp_entries` pre-signed responses.
    pub fn new(shards: u16, ocsp_entries: usize) -> Self {
        let shards = shards.min(MAX_CRL_SHARDS);
        Self {
            epoch: EpochGate::default(),
            ocsp: Mutex::new(OcspCache {
                epoch: 0,
                generation: 0,
                young: HashMap::new(),
                old: HashMap::new(),
                half: (ocsp_entries / 2).max(1),
            }),
            crls: (0..=usize::from(shards)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            shards,
            builds: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The number of CRL partitions.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// CRLs signed by this process so far.
    pub fn crl_builds(&self) -> u64 {
        self.builds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pre-signed OCSP responses held.
    pub fn ocsp_cached(&self) -> usize {
        self.lock_ocsp().len()
    }

    fn lock_ocsp(&self) -> std::sync::MutexGuard<'_, OcspCache> {
        self.ocsp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn cached_ocsp(
        &self,
        request: &[u8],
        epoch: u64,
        generation: u64,
        now: OffsetDateTime,
    ) -> Option<Arc<Presigned>> {
        self.lock_ocsp().get(request, epoch, generation, now)
    }

    pub fn store_ocsp(&self, request: Bytes, epoch: u64, generation: u64, entry: Arc<Presigned>) {
        self.lock_ocsp().put(request, epoch, generation, entry);
    }

    /// The CRL of `scope`, from the cache when it was built at the epoch seen after this call
    /// began (or a later one) and is less than half its validity old; otherwise built once for
    /// every caller waiting.
    pub async fn crl<R: Repo + 'static>(
        &self,
        repo: &Arc<R>,
        pki: &crate::Pki,
        scope: CrlScope,
        now: impl Fn() -> OffsetDateTime,
    ) -> Result<CachedCrl, CrlError> {
        let slot = match scope {
            CrlScope::Full => 0,
            CrlScope::Shard(n) if n < self.shards => usize::from(n) + 1,
            CrlScope::Shard(_) => return Err(CrlError::NoSuchShard),
        };
        let epoch = self.epoch.fresh(repo).await?;
        let mut cached = self.crls[slot].lock().await;
        let at = now();
        if let Some(c) = &*cached
            && c.epoch >= epoch
            && at >= c.this_update
            && at - c.this_update < CRL_VALIDITY / 2
        {
            return Ok(c.clone());
        }
        // The stale CRL is never served again: drop it before building the next, so two lists
        // are not held at once. Its size tells how much room the next one needs.
        let hint = cached.take().map_or(0, |c| c.entries);
        let built = self.build(repo, pki, scope, at, hint).await?;
        *cached = Some(built.clone());
        Ok(built)
    }

    async fn build<R: Repo + 'static>(
        &self,
        repo: &Arc<R>,
        pki: &crate::Pki,
        scope: CrlScope,
        now: OffsetDateTime,
        hint: u64,
    ) -> Result<CachedCrl, CrlError> {
        let mut builder = pki.issuing.crl_builder();
        // About as many entries as last time, and a little more.
        builder.reserve(usize::try_from(hint + hint / 16).unwrap_or(0));
        let shards = self.shards;
        // One snapshot for the epoch and every entry, so the CRL is exactly that epoch's.
        let mut tx = repo.read().await?;
        let epoch = tx.revocation_epoch().await?;
        let mut failure = None;
        let listed = tx
            .for_each_listed_entry(|e| {
                let mut buf = [0u8; SERIAL_BUF];
                let serial = serial_bytes(e.serial_hex, &mut buf);
                if let CrlScope::Shard(n) = scope {
                    // A serial the store holds is hex; anything else is not ours to list.
                    match &serial {
                        Ok(bytes) if lanyard_ca::crl_shard(bytes, shards) == n => {}
                        _ => return Ok(()),
                    }
                }
                match serial.and_then(|bytes| push(&mut builder, bytes, &e)) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        failure = Some(e);
                        Err(StoreError::Backend("CRL entry refused".into()))
                    }
                }
            })
            .await;
        drop(tx);
        if let Some(e) = failure {
            return Err(CrlError::Sign(e));
        }
        listed?;
        // Above every number used before, the earlier wall-clock numbering included.
        let floor = u64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(0);
        let counter = scope.counter();
        let number = lanyard_core::repo::retry(repo.as_ref(), || async {
            let mut tx = repo.begin().await?;
            let n = tx.next_crl_number(&counter, floor).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(n)
        })
        .await?;
        // A partition names the URL its certificates' cRLDistributionPoints name.
        let url = match (scope, &pki.issuing.urls().crl) {
            (CrlScope::Full, _) => None,
            (CrlScope::Shard(n), Some(crl)) => Some(format!("{crl}/{n}")),
            (CrlScope::Shard(_), None) => return Err(CrlError::NoSuchShard),
        };
        let entries = builder.len();
        let der = builder
            .finish(&CrlParams { number, this_update: now, next_update: now + CRL_VALIDITY }, url.as_deref())
            .map_err(|e| CrlError::Sign(e.to_string()))?;
        self.builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(CachedCrl { epoch, this_update: now, number, der: Bytes::from(der), entries })
    }
}

/// Room for a serial's bytes: at most 20 octets are valid, and longer hex is refused by the
/// encoder with the serial named.
const SERIAL_BUF: usize = 32;

/// A serial's bytes from the hex the store keeps, decoded into `buf` (no allocation).
fn serial_bytes<'b>(hex: &str, buf: &'b mut [u8; SERIAL_BUF]) -> Result<&'b [u8], String> {
    let out =
        buf.get_mut(..hex.len() / 2).filter(|_| hex.len().is_multiple_of(2) && !hex.is_empty()).ok_or_else(
            || format!("serial {hex:?}: not the hex of a serial number of at most {SERIAL_BUF} octets"),
        )?;
    hex::decode_to_slice(hex, out).map_err(|e| format!("serial {hex:?}: {e}"))?;
    Ok(out)
}

/// Adds a listed certificate's entry, with the date and reason `lanyard_issuance::status` gives
/// its record.
fn push<S: lanyard_ca::CaSigner>(
    builder: &mut lanyard_ca::CrlBuilder<'_, S>,
    serial: &[u8],
    e: &ListedEntry<'_>,
) -> Result<(), String> {
    let reason = lanyard_issuance::status::listed_crl_reason(e.state, e.revocation_reason);
    builder.push_parts(serial, e.since, reason).map_err(|err| format!("serial {:?}: {err}", e.serial_hex))
}

/// Why a CRL could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("no such CRL partition")]
    NoSuchShard,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing the CRL: {0}")]
    Sign(String),
}

/// The statuses of `request`'s certificates, read in one snapshot with the epoch they belong
/// to; `None` in the map's place means not issued by us.
pub async fn lookup<R: Repo>(
    repo: &R,
    request: &ParsedOcspRequest,
    responder: &lanyard_ca::OcspResponder<lanyard_ca::SoftwareKey>,
) -> Result<(u64, HashMap<String, CertStatus>, bool), StoreError> {
    let mut serials: Vec<String> = Vec::new();
    let mut foreign = false;
    for id in request.cert_ids() {
        if !responder.answers_for(id) {
            foreign = true;
            continue;
        }
        let hex = lanyard_issuance::rules::serial_hex(id.serial_number.as_bytes());
        if !serials.contains(&hex) {
            serials.push(hex);
        }
    }
    let mut tx = repo.read().await?;
    let records = tx.revocation_records(&serials).await?;
    let epoch = tx.revocation_epoch().await?;
    drop(tx);
    let statuses: HashMap<String, CertStatus> = records
        .iter()
        .map(|r| (r.serial_hex.clone(), lanyard_issuance::status::record_ocsp_status(r)))
        .collect();
    let unknown = foreign || serials.iter().any(|s| !statuses.contains_key(s));
    Ok((epoch, statuses, unknown))
}
