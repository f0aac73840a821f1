//! The append-only, hash-chained audit log.
//!
//! Each event's `hash` is `SHA-256(prev_hash ‖ canonical(event))`, where `prev_hash` is the
//! previous event's hash (32 zero bytes for the first event, seq 1), and `canonical` is the byte
//! encoding below of every field except `prev_hash` and `hash`. Changing, removing or reordering
//! any event therefore breaks the chain at that event, and [`verify_chain`] names it. Truncating
//! the tail, or rewriting the tail and recomputing every hash after it, is only detectable against
//! a head recorded elsewhere (export [`ChainHead`] periodically).
//!
//! Canonical encoding, version 1 (all integers big-endian; `str` = u32 byte length ‖ UTF-8;
//! `opt(x)` = `00` for none or `01 ‖ x`):
//!
//! ```text
//! "lanyard.audit.v1"                      16 ASCII bytes, no length prefix
//! seq                                     u64
//! at                                      i128, nanoseconds since the Unix epoch (UTC)
//! actor                                   00 = system
//!                                         01 ‖ user id (16 bytes) ‖ str(username)
//!                                         02 ‖ API token id (16 bytes)
//! action                                  str
//! target                                  opt(str)
//! operation_id                            str
//! before                                  opt(str(canonical JSON))
//! after                                   opt(str(canonical JSON))
//! ```
//!
//! Canonical JSON: no whitespace; object members sorted by the UTF-8 bytes of their keys; strings
//! with `"` and `\` backslash-escaped, U+0000–U+001F as `\u00xx` (lowercase hex), everything
//! else literal UTF-8; numbers as serde_json 1.x prints them.
//!
//! Events join the chain after they are stored: a store appends an event without reading the
//! chain's head (writers never wait on each other for it), and one sealer later gives each stored
//! event its `seq`, `prev_hash` and `hash`, in append order, in batches ([`AuditEvent::seal_after`]).
//! Until then the event is *unsealed*: it is listed after every sealed event, with `sealed:
//! false`, `seq` 0 and zero hashes, and a verifier counts it without checking it.
//!
//! [`NewAuditEvent::seal`] truncates `at` to whole microseconds, so that a store keeping
//! microseconds (PostgreSQL `timestamptz`) gives back exactly what was hashed. Stores must keep
//! `before`/`after` as text, not as a re-normalising type such as `jsonb`.

use std::borrow::Borrow;
use std::fmt;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use time::{OffsetDateTime, UtcOffset};

use crate::ids::{ApiTokenId, UserId};
use crate::macros::serde_hex;
use crate::model::{Username, ValidationError};

/// Identifies one request or job across logs, audit events and error pages: 1–64 characters of
/// `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperationId(String);

impl OperationId {
    /// A fresh random id (32 hex digits).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Accepts an id from a caller (e.g. an incoming request header) if it is well-formed.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new(
                "operation_id",
                "must be 1-64 characters of A-Z, a-z, 0-9, '.', ':', '_', '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OperationId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<OperationId> for String {
    fn from(o: OperationId) -> String {
        o.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationId({})", self.0)
    }
}

/// Who did it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Actor {
    /// A signed-in user (the username is recorded as it was at the time).
    User { id: UserId, username: Username },
    /// Lanyard itself: sweepers, cascades, the issuance engine.
    System,
    /// A script using an API token.
    ApiToken { id: ApiTokenId },
}

/// An event before it joins the chain. The store seals it against its current head inside the
/// same transaction as the change it records (see [`crate::repo::AuditRepo::append_audit`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: Actor,
    /// Dotted verb, e.g. `"device.suspend"`.
    pub action: String,
    /// What it was done to, e.g. `"device:<uuid>"`.
    pub target: Option<String>,
    pub operation_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl NewAuditEvent {
    /// An event with no target and no before/after.
    pub fn new(
        at: OffsetDateTime,
        actor: Actor,
        action: impl Into<String>,
        operation_id: &OperationId,
    ) -> Self {
        Self {
            at,
            actor,
            action: action.into(),
            target: None,
            operation_id: operation_id.as_str().to_owned(),
            before: None,
            after: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn before(mut self, before: Value) -> Self {
        self.before = Some(before);
        self
    }

    pub fn after(mut self, after: Value) -> Self {
        self.after = Some(after);
        self
    }

    /// Joins the chain after `head`: takes the next sequence number, links to `head.hash` and
    /// computes this event's hash. `at` is normalised to UTC and truncated to microseconds.
    pub fn seal(self, head: &ChainHead) -> AuditEvent {
        let mut event = self.unsealed();
        event.seal_after(head);
        event
    }

    /// The event as stored before the sealer chains it: no `seq` (0), zero hashes, `sealed`
    /// false. `at` is normalised to UTC and truncated to microseconds.
    pub fn unsealed(self) -> AuditEvent {
        let at = self.at.to_offset(UtcOffset::UTC);
        let at = at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000).unwrap_or(at);
        AuditEvent {
            seq: 0,
            at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            operation_id: self.operation_id,
            before: self.before,
            after: self.after,
            prev_hash: [0; 32],
            hash: [0; 32],
            sealed: false,
        }
    }
}

/// The end of the chain: the last event's sequence number and hash.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// 0 for an empty log.
    pub seq: u64,
    #[serde(with = "serde_hex")]
    pub hash: [u8; 32],
}

impl ChainHead {
    /// The head of an empty log.
    pub const GENESIS: ChainHead = ChainHead { seq: 0, hash: [0; 32] };
}

impl fmt::Debug for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHead {{ seq: {}, hash: {} }}", self.seq, hex::encode(self.hash))
    }
}

/// An audit event, sealed (in the chain) or not yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// The event's place in the chain: 1, 2, 3, … without gaps. 0 while unsealed.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: Actor,
    pub action: String,
    pub target: Option<String>,
    pub operation_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    #[serde(with = "serde_hex")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "hex"))]
    pub prev_hash: [u8; 32],
    #[serde(with = "serde_hex")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "hex"))]
    pub hash: [u8; 32],
    /// Whether the sealer has chained the event yet (it does so shortly after the change it
    /// records committed). An unsealed event has `seq` 0 and zero hashes.
    #[serde(default = "sealed_by_default")]
    pub sealed: bool,
}

fn sealed_by_default() -> bool {
    true
}

impl AuditEvent {
    /// Chains this event after `head`: gives it the next `seq`, links it to `head.hash` and
    /// computes its hash.
    pub fn seal_after(&mut self, head: &ChainHead) {
        self.seq = head.seq + 1;
        self.prev_hash = head.hash;
        self.sealed = true;
        self.hash = self.compute_hash();
    }

    /// The canonical encoding (module docs) of everything but `prev_hash` and `hash`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"lanyard.audit.v1");
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at.unix_timestamp_nanos().to_be_bytes());
        match &self.actor {
            Actor::System => out.push(0),
            Actor::User { id, username } => {
                out.push(1);
                out.extend_from_slice(id.as_bytes());
                put_str(&mut out, username.as_str());
            }
            Actor::ApiToken { id } => {
                out.push(2);
                out.extend_from_slice(id.as_bytes());
            }
        }
        put_str(&mut out, &self.action);
        put_opt(&mut out, self.target.as_deref(), put_str);
        put_str(&mut out, &self.operation_id);
        for value in [&self.before, &self.after] {
            put_opt(&mut out, value.as_ref(), |out, v| {
                let mut json = Vec::new();
                canonical_json(v, &mut json);
                put_bytes(out, &json);
            });
        }
        out
    }

    /// `SHA-256(prev_hash ‖ canonical_bytes)`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.prev_hash);
        ctx.update(&self.canonical_bytes());
        let mut hash = [0; 32];
        hash.copy_from_slice(ctx.finish().as_ref());
        hash
    }

    /// The chain head this event makes.
    pub fn head(&self) -> ChainHead {
        ChainHead { seq: self.seq, hash: self.hash }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Audit fields are far below 4 GiB; a longer one would be cut at the length prefix and
    // still hash deterministically.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

/// Writes `v` as canonical JSON (module docs).
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => json_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorted here rather than trusting the map's order: serde_json's `preserve_order`
            // feature, if any crate in the build enables it, keeps insertion order.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(key, out);
                out.push(b':');
                canonical_json(value, out);
            }
            out.push(b'}');
        }
    }
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if u32::from(c) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes()),
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Why an event does not belong where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum BrokenReason {
    #[error("its hash does not match its contents (the event was altered)")]
    HashMismatch,
    #[error("its prev_hash is not the previous event's hash (an event before it was altered or removed)")]
    PrevHashMismatch,
}

/// The first problem found in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("audit chain broken at event {seq}: {reason}")]
    Broken { seq: u64, reason: BrokenReason },
    #[error("audit chain has a gap: expected event {expected}, found event {found}")]
    Gap { expected: u64, found: u64 },
}

impl ChainError {
    /// The sequence number of the event the chain fails at (for a gap, the position where the
    /// expected event is missing).
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Broken { seq, .. } => *seq,
            ChainError::Gap { expected, .. } => *expected,
        }
    }
}

/// Verifies a chain incrementally, e.g. page by page from the store.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    head: ChainHead,
    count: u64,
    unsealed: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// Starts at the genesis (an empty log).
    pub fn new() -> Self {
        Self::starting_at(ChainHead::GENESIS)
    }

    /// Starts after a head verified earlier (or recorded elsewhere).
    pub fn starting_at(head: ChainHead) -> Self {
        Self { head, count: 0, unsealed: 0 }
    }

    /// Checks that `event` is the next link, then advances. An unsealed event is not in the
    /// chain yet: it is counted ([`ChainVerifier::unsealed`]) and not checked.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), ChainError> {
        if !event.sealed {
            self.unsealed += 1;
            return Ok(());
        }
        let expected = self.head.seq + 1;
        if event.seq != expected {
            return Err(ChainError::Gap { expected, found: event.seq });
        }
        if event.prev_hash != self.head.hash {
            return Err(ChainError::Broken { seq: event.seq, reason: BrokenReason::PrevHashMismatch });
        }
        if event.compute_hash() != event.hash {
            return Err(ChainError::Broken { seq: event.seq, reason: BrokenReason::HashMismatch });
        }
        self.head = event.head();
        self.count += 1;
        Ok(())
    }

    /// The head after the events pushed so far.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// How many events were verified.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many unsealed events were seen (not verified: the sealer has not chained them yet).
    pub fn unsealed(&self) -> u64 {
        self.unsealed
    }
}

/// Verifies a whole chain from the genesis and returns how many sealed events it has (unsealed
/// ones are skipped).
pub fn verify_chain<I>(events: I) -> Result<u64, ChainError>
where
    I: IntoIterator,
    I::Item: Borrow<AuditEvent>,
{
    let mut verifier = ChainVerifier::new();
    for event in events {
        verifier.push(event.borrow())?;
    }
    Ok(verifier.count())
}

#[cfg(test)]
mod tests;
