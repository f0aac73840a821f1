//! Several servers on one database (docs/deployment.md): what they share through it besides the
//! domain's tables. Throttle failures ([`crate::auth::LoginThrottle`]) and cluster notes
//! ([`lanyard_core::repo::ClusterNote`]) are short-lived; [`sweep`] deletes what has run out.

use std::sync::Arc;

use lanyard_core::clock::Clock;
use lanyard_core::ids::{AgentId, InstanceId, JobId, UserId};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{ClusterNote, StoreError};
use lanyard_protocol::Secret;
use lanyard_protocol::link::ServerLinkFrame;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::link::{LinkError, LinkSnapshot};
use crate::portal_pin::{Asking, Boxed, GiveError, PinRelay, Typed, check_answer};

use crate::AppState;

/// Deletes throttle failures older than every throttle's window and cluster notes that expired.
pub(crate) async fn sweep<R: Repo>(s: &AppState<R>) {
    let now = s.clock.now();
    let oldest = now - s.throttle.window().max(s.mobile_throttle.window());
    let repo = s.repo.as_ref();
    let swept = retry(repo, || async move {
        let mut tx = repo.begin().await?;
        let failures = tx.prune_failures(oldest).await?;
        let notes = tx.delete_expired_notes(now).await?;
        tx.commit().await?;
        Ok::<_, StoreError>((failures, notes))
    })
    .await;
    match swept {
        Ok((0, 0)) => {}
        Ok((failures, notes)) => {
            tracing::debug!(failures, notes, "old throttle failures and cluster notes deleted")
        }
        Err(e) => tracing::warn!(error = %e, "could not sweep throttle failures and cluster notes"),
    }
}

// ---------------------------------------------------------------------------------------------
// Agent links across servers
//
// Each server announces the links it holds as a note (topic `agent_link`, owner the agent),
// refreshed on every readers report and at each credential re-check, and withdrawn when the link
// closes; a server that stops without withdrawing leaves a note that expires after
// [`LINK_NOTE_TTL`]. A frame for an agent linked elsewhere is sealed under the key-encryption key
// (it may carry a session ticket) and left as a note for the holding server (topic `link_frame`,
// owner that server's instance id), which polls for its notes every [`RELAY_POLL`], takes each
// one (a delete whose success the database decides, so a frame is sent at most once), and sends
// it on the link.

const LINK_TOPIC: &str = "agent_link";
const FRAME_TOPIC: &str = "link_frame";
/// How long a link's announcement lasts without a refresh: a few credential re-checks.
const LINK_NOTE_TTL: time::Duration = time::Duration::minutes(3);
/// How long a handed-over frame waits for its server (a session ticket lasts no longer either).
const FRAME_NOTE_TTL: time::Duration = time::Duration::minutes(2);
/// How often a server looks for frames other servers handed it.
pub const RELAY_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// At most this many handed-over frames are taken per poll.
const RELAY_BATCH: u32 = 64;

/// An agent's link as announced in the database.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Presence {
    pub instance: String,
    pub conn: u64,
    pub user: UserId,
    pub snapshot: LinkSnapshot,
}

/// Announces (or refreshes) that this server holds link `conn` of agent `agent`.
pub(crate) async fn announce_link<R: Repo>(s: &AppState<R>, agent: AgentId, conn: u64) {
    let Some((user, snapshot)) = s.links.status_of(agent, conn) else { return };
    let presence = Presence { instance: s.instance.to_string(), conn, user, snapshot };
    let value = match serde_json::to_vec(&presence) {
        Ok(v) => v,
        Err(e) => return tracing::warn!(%agent, error = %e, "could not encode a link announcement"),
    };
    let now = s.clock.now();
    let note = ClusterNote {
        topic: LINK_TOPIC.into(),
        owner: agent.to_string(),
        key: String::new(),
        value,
        created_at: now,
        expires_at: now + LINK_NOTE_TTL,
    };
    let repo = s.repo.as_ref();
    let note = &note;
    let put = retry(repo, || async move {
        let mut tx = repo.begin().await?;
        tx.put_note(note).await?;
        tx.commit().await
    })
    .await;
    if let Err(e) = put {
        tracing::warn!(%agent, error = %e, "could not announce an agent's link to the other servers");
    }
}

/// Withdraws the announcement of link `conn` of `agent`, unless a newer link (here or on another
/// server) has replaced it.
pub(crate) async fn withdraw_link<R: Repo>(s: &AppState<R>, agent: AgentId, conn: u64) {
    let (repo, owner, me, now) = (s.repo.as_ref(), agent.to_string(), s.instance.to_string(), s.clock.now());
    let (owner, me) = (&owner, &me);
    let done = retry(repo, || async move {
        let mut tx = repo.begin().await?;
        let ours = tx
            .get_note(LINK_TOPIC, owner, "", now)
            .await?
            .and_then(|n| serde_json::from_slice::<Presence>(&n.value).ok())
            .is_some_and(|p| &p.instance == me && p.conn == conn);
        if ours {
            tx.delete_note(LINK_TOPIC, owner, "").await?;
            tx.commit().await?;
        }
        Ok::<_, StoreError>(())
    })
    .await;
    if let Err(e) = done {
        tracing::warn!(%agent, error = %e, "could not withdraw an agent's link announcement");
    }
}

/// Agent `agent`'s link as another server announced it, if one does.
pub(crate) async fn remote_link<R: Repo>(s: &AppState<R>, agent: AgentId) -> Option<Presence> {
    let note = {
        let mut tx = s.repo.read().await.ok()?;
        tx.get_note(LINK_TOPIC, &agent.to_string(), "", s.clock.now()).await.ok()??
    };
    let presence: Presence = serde_json::from_slice(&note.value).ok()?;
    // This server's own announcement of a link it no longer holds is stale, not remote.
    (presence.instance != s.instance.to_string()).then_some(presence)
}

/// Binds a handed-over frame to the server it is for and to its note's key, which names the agent.
fn frame_aad(instance: &str, key: &str) -> Vec<u8> {
    format!("lanyard link frame\0{instance}\0{key}").into_bytes()
}

/// Leaves `frame` for the server holding agent `agent`'s link.
pub(crate) async fn hand_over_frame<R: Repo>(
    s: &AppState<R>,
    agent: AgentId,
    frame: &ServerLinkFrame,
) -> Result<(), LinkError> {
    let presence = remote_link(s, agent).await.ok_or(LinkError::Offline)?;
    let Some(cfg) = s.issuance.as_ref() else {
        tracing::warn!(%agent, "a frame for an agent linked to another server needs the key-encryption key");
        return Err(LinkError::Offline);
    };
    let text = Zeroizing::new(frame.to_text());
    let key = format!("{agent}.{}", InstanceId::new());
    let sealed = cfg.kek.encrypt(text.as_bytes(), &frame_aad(&presence.instance, &key)).map_err(|e| {
        tracing::warn!(%agent, error = %e, "could not seal a frame for another server");
        LinkError::Busy
    })?;
    let now = s.clock.now();
    let note = ClusterNote {
        topic: FRAME_TOPIC.into(),
        owner: presence.instance.clone(),
        key,
        value: sealed,
        created_at: now,
        expires_at: now + FRAME_NOTE_TTL,
    };
    let repo = s.repo.as_ref();
    let note = &note;
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        tx.insert_note(note).await?;
        tx.commit().await
    })
    .await
    .map_err(|e| {
        tracing::warn!(%agent, error = %e, "could not hand a frame to another server");
        LinkError::Busy
    })
}

/// Sends on this server's links the frames other servers left for it, every [`RELAY_POLL`].
/// Runs until the task is dropped.
pub async fn relay_frames<R: Repo>(s: AppState<R>) {
    let mut ticker = tokio::time::interval(RELAY_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = s.instance.to_string();
    loop {
        ticker.tick().await;
        if let Err(e) = relay_once(&s, &me).await {
            tracing::warn!(error = %e, "could not take the frames other servers left for this one");
        }
    }
}

async fn relay_once<R: Repo>(s: &AppState<R>, me: &str) -> Result<(), StoreError> {
    let notes = {
        let mut tx = s.repo.read().await?;
        tx.list_notes(FRAME_TOPIC, me, s.clock.now(), RELAY_BATCH).await?
    };
    let repo = s.repo.as_ref();
    for note in notes {
        let key = &note.key;
        let taken = retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let taken = tx.delete_note(FRAME_TOPIC, me, key).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(taken)
        })
        .await?;
        if taken {
            deliver(s, me, &note.key, &note.value);
        }
    }
    Ok(())
}

/// Opens one handed-over frame and queues it on the agent's link here.
fn deliver<R>(s: &AppState<R>, me: &str, key: &str, sealed: &[u8]) {
    let Some(cfg) = s.issuance.as_ref() else { return };
    let Some(agent) = key.split_once('.').and_then(|(a, _)| a.parse::<AgentId>().ok()) else {
        return tracing::warn!(key, "a frame handed over by another server names no agent; dropped");
    };
    let text = match cfg.kek.decrypt(sealed, &frame_aad(me, key)) {
        Ok(t) => t,
        Err(e) => {
            return tracing::warn!(%agent, error = %e, "a frame handed over by another server could not be opened; dropped");
        }
    };
    let frame = match std::str::from_utf8(&text)
        .map_err(|e| e.to_string())
        .and_then(|t| ServerLinkFrame::parse(t).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => {
            return tracing::warn!(%agent, error = %e, "a frame handed over by another server is unreadable; dropped");
        }
    };
    if let Err(e) = s.links.send(agent, frame) {
        tracing::warn!(%agent, error = %e, "a frame handed over by another server found no link here");
    }
}

// ---------------------------------------------------------------------------------------------
// PINs typed in the portal, for a card session on another server
//
// Notes of topic `portal_pin`, owner the job: `expected` (the session's PINs come from the
// portal; written by the server that started it), `asking` (what the waiting session asks, JSON
// of [`Asking`] without secrets, expiring at its deadline) and `answer` (the holder's answer,
// checked against `asking` by the server that took it, sealed under the KEK, bound to the job,
// expiring with `asking`; inserted once, taken by one `DELETE`).

const PIN_TOPIC: &str = "portal_pin";
const PIN_EXPECTED: &str = "expected";
const PIN_ASKING: &str = "asking";
const PIN_ANSWER: &str = "answer";
/// How long a session's "PINs from the portal" note lasts: longer than a ticket and a session.
const PIN_EXPECTED_TTL: time::Duration = time::Duration::hours(2);

fn pin_aad(job: JobId) -> Vec<u8> {
    format!("lanyard portal pin\0{job}").into_bytes()
}

/// The holder's answer as sealed in the database (never stored in clear).
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedAnswer {
    current: Option<String>,
    new: Option<String>,
}

/// [`PinRelay`] through the database.
pub struct DbPins<R> {
    repo: Arc<R>,
    clock: Arc<dyn Clock>,
    issuance: Arc<crate::issuance::IssuanceConfig>,
}

impl<R> DbPins<R> {
    pub fn new(repo: Arc<R>, clock: Arc<dyn Clock>, issuance: Arc<crate::issuance::IssuanceConfig>) -> Self {
        Self { repo, clock, issuance }
    }
}

async fn write<R: Repo, T: Send, F, Fut>(repo: &R, what: &str, work: F) -> Option<T>
where
    F: Fn(R::Tx) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<(T, R::Tx), StoreError>> + Send,
{
    let work = &work;
    let done = retry(repo, || async move {
        let tx = repo.begin().await?;
        let (value, tx) = work(tx).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(value)
    })
    .await;
    match done {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "could not {what}");
            None
        }
    }
}

fn pin_note(
    job: JobId,
    key: &str,
    value: Vec<u8>,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> ClusterNote {
    ClusterNote {
        topic: PIN_TOPIC.into(),
        owner: job.to_string(),
        key: key.into(),
        value,
        created_at: now,
        expires_at,
    }
}

impl<R: Repo + 'static> PinRelay for DbPins<R> {
    fn expected(&self, job: JobId) -> Boxed<'_, bool> {
        Box::pin(async move {
            let Ok(mut tx) = self.repo.read().await else { return false };
            tx.get_note(PIN_TOPIC, &job.to_string(), PIN_EXPECTED, self.clock.now())
                .await
                .ok()
                .flatten()
                .is_some()
        })
    }

    fn ask(&self, job: JobId, asking: Asking) -> Boxed<'_, ()> {
        Box::pin(async move {
            let Ok(value) = serde_json::to_vec(&asking) else { return };
            let now = self.clock.now();
            let seconds = i64::try_from(asking.seconds_left).unwrap_or(i64::MAX / 2);
            let note = pin_note(job, PIN_ASKING, value, now, now + time::Duration::seconds(seconds));
            let note = &note;
            write(self.repo.as_ref(), "publish a card session's PIN question", |mut tx| async move {
                // An answer left for an earlier question is no answer to this one.
                tx.delete_note(PIN_TOPIC, &note.owner, PIN_ANSWER).await?;
                tx.put_note(note).await?;
                Ok(((), tx))
            })
            .await;
        })
    }

    fn take_answer(&self, job: JobId) -> Boxed<'_, Option<Option<Typed>>> {
        Box::pin(async move {
            let owner = job.to_string();
            let now = self.clock.now();
            {
                // Most polls find nothing: read before taking a write unit of work.
                let mut tx = self.repo.read().await.ok()?;
                tx.get_note(PIN_TOPIC, &owner, PIN_ANSWER, now).await.ok()??;
            }
            let owner = &owner;
            let note =
                write(self.repo.as_ref(), "take a PIN handed over by another server", |mut tx| async move {
                    let note = tx.get_note(PIN_TOPIC, owner, PIN_ANSWER, now).await?;
                    if note.is_some() {
                        tx.delete_note(PIN_TOPIC, owner, PIN_ANSWER).await?;
                    }
                    Ok((note, tx))
                })
                .await??;
            let opened = match self.issuance.kek.decrypt(&note.value, &pin_aad(job)) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(%job, error = %e, "a PIN handed over by another server could not be opened");
                    return None;
                }
            };
            let answer: SealedAnswer = serde_json::from_slice(&opened).ok()?;
            Some(
                answer
                    .new
                    .map(|new| Typed { current: answer.current.map(Secret::new), new: Secret::new(new) }),
            )
        })
    }

    fn done(&self, job: JobId, still_expected: bool) -> Boxed<'_, ()> {
        Box::pin(async move {
            let owner = job.to_string();
            let owner = &owner;
            write(self.repo.as_ref(), "withdraw a card session's PIN question", |mut tx| async move {
                tx.delete_note(PIN_TOPIC, owner, PIN_ASKING).await?;
                tx.delete_note(PIN_TOPIC, owner, PIN_ANSWER).await?;
                if !still_expected {
                    tx.delete_note(PIN_TOPIC, owner, PIN_EXPECTED).await?;
                }
                Ok(((), tx))
            })
            .await;
        })
    }
}

/// Job `job`'s PINs will come from the portal, whichever server runs its session.
pub async fn pin_expect<R: Repo>(s: &AppState<R>, job: JobId) {
    s.pins.expect(job);
    if s.pins.shared() {
        let now = s.clock.now();
        let note = pin_note(job, PIN_EXPECTED, Vec::new(), now, now + PIN_EXPECTED_TTL);
        let note = &note;
        write(s.repo.as_ref(), "note that a job's PINs come from the portal", |mut tx| async move {
            tx.put_note(note).await?;
            Ok(((), tx))
        })
        .await;
    }
}

/// Job `job`'s PINs come from the agent again (a ticket handed out as text).
pub async fn pin_forget<R: Repo>(s: &AppState<R>, job: JobId) {
    s.pins.forget(job);
    if s.pins.shared() {
        let owner = job.to_string();
        let owner = &owner;
        write(s.repo.as_ref(), "forget a job's portal PIN notes", |mut tx| async move {
            for key in [PIN_EXPECTED, PIN_ASKING, PIN_ANSWER] {
                tx.delete_note(PIN_TOPIC, owner, key).await?;
            }
            Ok(((), tx))
        })
        .await;
    }
}

/// What `job`'s session asks for, on this server or another.
pub async fn pin_wanted<R: Repo>(s: &AppState<R>, job: JobId) -> Option<Asking> {
    if let Some(asking) = s.pins.wanted(job) {
        return Some(asking);
    }
    if !s.pins.shared() {
        return None;
    }
    let now = s.clock.now();
    let note = {
        let mut tx = s.repo.read().await.ok()?;
        tx.get_note(PIN_TOPIC, &job.to_string(), PIN_ASKING, now).await.ok()??
    };
    let mut asking: Asking = serde_json::from_slice(&note.value).ok()?;
    asking.seconds_left = u64::try_from((note.expires_at - now).whole_seconds()).unwrap_or(0);
    Some(asking)
}

/// Whether `job`'s PINs are to come from the portal and are not answered yet, on any server.
pub async fn pin_expects<R: Repo>(s: &AppState<R>, job: JobId) -> bool {
    if s.pins.expects(job) {
        return true;
    }
    if !s.pins.shared() {
        return false;
    }
    let Ok(mut tx) = s.repo.read().await else { return false };
    let (owner, now) = (job.to_string(), s.clock.now());
    for key in [PIN_EXPECTED, PIN_ASKING] {
        if tx.get_note(PIN_TOPIC, &owner, key, now).await.ok().flatten().is_some() {
            return true;
        }
    }
    false
}

/// Hands the holder's answer to `job`'s waiting session: here, or through the database to the
/// server running it, checked against what that session asks first either way.
pub async fn pin_give<R: Repo>(
    s: &AppState<R>,
    job: JobId,
    current: Option<Secret>,
    new: Option<Secret>,
) -> Result<(), GiveError> {
    if s.pins.wanted(job).is_some() || !s.pins.shared() {
        return s.pins.give(job, current, new);
    }
    let Some(cfg) = s.issuance.as_ref() else { return Err(GiveError::NotWaiting) };
    let now = s.clock.now();
    let owner = job.to_string();
    let asking_note = {
        let mut tx = s.repo.read().await.map_err(|_| GiveError::Unavailable)?;
        tx.get_note(PIN_TOPIC, &owner, PIN_ASKING, now).await.map_err(|_| GiveError::Unavailable)?
    };
    let Some(asking_note) = asking_note else { return Err(GiveError::NotWaiting) };
    let asking: Asking = serde_json::from_slice(&asking_note.value).map_err(|_| GiveError::NotWaiting)?;
    let typed = check_answer(&asking, current, new)?;
    let body = Zeroizing::new(
        serde_json::to_string(&SealedAnswer {
            current: typed.as_ref().and_then(|t| t.current.as_ref()).map(|c| c.expose().to_owned()),
            new: typed.as_ref().map(|t| t.new.expose().to_owned()),
        })
        .map_err(|_| GiveError::Unavailable)?,
    );
    let sealed = cfg.kek.encrypt(body.as_bytes(), &pin_aad(job)).map_err(|_| GiveError::Unavailable)?;
    let note = pin_note(job, PIN_ANSWER, sealed, now, asking_note.expires_at);
    let (repo, note, owner) = (s.repo.as_ref(), &note, &owner);
    let given = retry(repo, || async move {
        let mut tx = repo.begin().await?;
        // Still asking (not answered, timed out or withdrawn meanwhile)?
        if tx.get_note(PIN_TOPIC, owner, PIN_ASKING, now).await?.is_none() {
            return Ok(false);
        }
        match tx.insert_note(note).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        tx.commit().await?;
        Ok(true)
    })
    .await;
    match given {
        Ok(true) => Ok(()),
        Ok(false) => Err(GiveError::NotWaiting),
        Err(e) => {
            tracing::warn!(%job, error = %e, "could not hand a PIN to the server running the session");
            Err(GiveError::Unavailable)
        }
    }
}
