//! Several servers on one database (docs/deployment.md): what they share through it besides the
//! domain's tables. Throttle failures ([`crate::auth::LoginThrottle`]) and cluster notes
//! ([`lanyard_core::repo::ClusterNote`]) are short-lived; [`sweep`] deletes what has run out.

use lanyard_core::ids::{AgentId, InstanceId, UserId};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{ClusterNote, StoreError};
use lanyard_protocol::link::ServerLinkFrame;
use zeroize::Zeroizing;

use crate::link::{LinkError, LinkSnapshot};

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
