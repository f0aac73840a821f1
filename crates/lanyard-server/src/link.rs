//! The agent link, server side (DESIGN §4, `lanyard_protocol::link`): each paired agent keeps
//! one authenticated WebSocket open to the server; the server remembers, in memory, which agents
//! are connected, what readers and cards they last reported, and a way to send them requests
//! (`start_session`, `refresh`).
//!
//! The registry is this process's; with several servers on one database each link is also
//! announced there ([`crate::cluster`]), so any server can tell whether an agent is online and
//! hand a frame for it to the server holding its link ([`status_anywhere`], [`send_anywhere`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::authz::{AgentBinding, Principal, System, TicketPurpose};
use lanyard_core::ids::{AgentId, JobId, UserId};
use lanyard_core::model::AGENT_SEEN_RESOLUTION;
use lanyard_core::model::Job;
use lanyard_core::repo::Repo;
use lanyard_protocol::Secret;
use lanyard_protocol::link::{
    AgentLinkFrame, FEATURE_SERVER_PIN, FEATURE_SESSIONS, LINK_IDLE_SECS, MAX_READERS, ReaderReport,
    ServerLinkFrame,
};
use lanyard_protocol::{MAX_FRAME, PROTOCOL_VERSION};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::{ApiError, AppState};

/// Requests waiting to go out on one link; a link this far behind is not keeping up.
const LINK_QUEUE: usize = 32;
/// How long the agent has to say `hello` after the upgrade.
const HELLO_WITHIN: Duration = Duration::from_secs(30);

/// What the rest of the server tells a link's task.
#[derive(Debug)]
enum Command {
    Send(ServerLinkFrame),
    /// Say `error` with this message and close.
    Close(String),
}

/// A connected agent as the registry knows it.
struct Live {
    /// Which connection of the agent this is: a reconnecting agent replaces its old link, and the
    /// old link's task must not unregister the new one.
    conn: u64,
    user: UserId,
    snapshot: LinkSnapshot,
    tx: mpsc::Sender<Command>,
}

/// What a connected agent said about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkSnapshot {
    /// `lanyard-agent/<version>` from its `hello`.
    pub agent: String,
    /// The host name from its `hello`.
    pub host: String,
    pub features: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: OffsetDateTime,
    /// The latest `readers` report; `None` until the first.
    pub readers: Option<Vec<ReaderReport>>,
    /// When the latest report arrived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub reported_at: Option<OffsetDateTime>,
}

/// Why a request could not go to an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the agent is not connected")]
    Offline,
    #[error("the agent's link is not keeping up with requests; try again")]
    Busy,
}

/// Which agents are connected to this server.
#[derive(Default)]
pub struct AgentLinks {
    live: Mutex<HashMap<AgentId, Live>>,
    next_conn: AtomicU64,
}

impl AgentLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Live>> {
        // A panic while holding the lock leaves a map that is still consistent (every update is
        // one insert or remove), so a poisoned lock is used as it is.
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records agent `id` as connected; an older link of the same agent is told to close.
    fn register(&self, id: AgentId, user: UserId, snapshot: LinkSnapshot) -> (u64, mpsc::Receiver<Command>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let old = self.lock().insert(id, Live { conn, user, snapshot, tx });
        if let Some(old) = old {
            let _ =
                old.tx.try_send(Command::Close("the agent connected again; this link is replaced".into()));
        }
        (conn, rx)
    }

    fn unregister(&self, id: AgentId, conn: u64) {
        let mut live = self.lock();
        if live.get(&id).is_some_and(|l| l.conn == conn) {
            live.remove(&id);
        }
    }

    fn set_readers(&self, id: AgentId, conn: u64, readers: Vec<ReaderReport>, at: OffsetDateTime) {
        if let Some(l) = self.lock().get_mut(&id).filter(|l| l.conn == conn) {
            l.snapshot.readers = Some(readers);
            l.snapshot.reported_at = Some(at);
        }
    }

    /// What agent `id` last said, if it is connected, and whose it is.
    pub fn status(&self, id: AgentId) -> Option<(UserId, LinkSnapshot)> {
        self.lock().get(&id).map(|l| (l.user, l.snapshot.clone()))
    }

    /// Queues `frame` for agent `id`.
    pub fn send(&self, id: AgentId, frame: ServerLinkFrame) -> Result<(), LinkError> {
        let live = self.lock();
        let link = live.get(&id).ok_or(LinkError::Offline)?;
        link.tx.try_send(Command::Send(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Busy,
            mpsc::error::TrySendError::Closed(_) => LinkError::Offline,
        })
    }

    /// Closes agent `id`'s link, if it has one, telling it `why`.
    pub fn disconnect(&self, id: AgentId, why: &str) {
        if let Some(link) = self.lock().remove(&id) {
            let _ = link.tx.try_send(Command::Close(why.to_owned()));
        }
    }
}

impl AgentLinks {
    /// What agent `id`'s link on this server last said, if it is still link `conn`.
    pub(crate) fn status_of(&self, id: AgentId, conn: u64) -> Option<(UserId, LinkSnapshot)> {
        self.lock().get(&id).filter(|l| l.conn == conn).map(|l| (l.user, l.snapshot.clone()))
    }
}

/// What agent `id` last said and whose it is, if it is connected to this server or, as the
/// database says, to another server sharing it.
pub async fn status_anywhere<R: Repo>(s: &AppState<R>, id: AgentId) -> Option<(UserId, LinkSnapshot)> {
    if let Some(found) = s.links.status(id) {
        return Some(found);
    }
    crate::cluster::remote_link(s, id).await.map(|p| (p.user, p.snapshot))
}

/// Queues `frame` for agent `id`: on this server's link, or through the database for the server
/// holding the agent's link, which sends it within a poll interval
/// ([`crate::cluster::relay_frames`]).
pub async fn send_anywhere<R: Repo>(
    s: &AppState<R>,
    id: AgentId,
    frame: ServerLinkFrame,
) -> Result<(), LinkError> {
    match s.links.send(id, frame.clone()) {
        Err(LinkError::Offline) => crate::cluster::hand_over_frame(s, id, &frame).await,
        done => done,
    }
}

/// Runs job `job`'s card session on the caller's own agent `agent`, at `reader`: the route
/// `POST /api/v1/agents/{id}/sessions` and the portal's *Add Device* share it. The agent must be
/// the caller's (another user's is 404, even for an operator), connected, able to run sessions
/// (and to take the portal's PIN when `from_portal`), and must have reported `reader` holding a
/// card that no session is using. A fresh ticket bound to the agent and reader goes over the
/// link; the job as it stands and the agent's id are returned.
pub(crate) async fn start_session<R: Repo>(
    s: &AppState<R>,
    principal: &Principal,
    agent: AgentId,
    job_id: JobId,
    reader: &str,
    purpose: TicketPurpose,
    from_portal: bool,
) -> Result<(Job, AgentId), ApiError> {
    let reader = reader.to_owned();
    let repo = s.repo.as_ref();
    let operator = principal.operator().ok();
    // The caller's own agent, whatever their role; nobody learns about another user's.
    let agent = principal.workstations()?.agent(repo, agent).await?;
    let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, m);
    let Some((_, snapshot)) = status_anywhere(s, agent.id).await else {
        return Err(conflict(format!("agent {} ({}) is not connected", agent.id, agent.host_name)));
    };
    if !snapshot.features.iter().any(|f| f == FEATURE_SESSIONS) {
        return Err(conflict(format!(
            "agent {} ({}) does not run card sessions over its link; update it",
            agent.id, snapshot.agent
        )));
    }
    if from_portal && !snapshot.features.iter().any(|f| f == FEATURE_SERVER_PIN) {
        return Err(conflict(format!(
            "agent {} ({}) cannot take a PIN typed in the portal; update it",
            agent.id, snapshot.agent
        )));
    }
    let Some(readers) = snapshot.readers else {
        return Err(conflict(format!("agent {} has not reported its readers yet", agent.id)));
    };
    match readers.iter().find(|r| r.name == reader) {
        None => return Err(conflict(format!("agent {} reports no reader {reader:?}", agent.id))),
        Some(r) if !r.card_present => return Err(conflict(format!("reader {reader:?} holds no card"))),
        Some(r) if r.card.as_ref().is_some_and(|c| c.busy) => {
            return Err(conflict(format!("a card session is already running on reader {reader:?}")));
        }
        Some(_) => {}
    }
    let bound = AgentBinding { agent: agent.id, reader: reader.clone() };
    let ttl = crate::issuance::TICKET_TTL;
    let (job, ticket) = match &operator {
        Some(op) => op.agent_job_ticket(repo, job_id, purpose, ttl, &bound).await?,
        None => principal.self_service()?.agent_job_ticket(repo, job_id, purpose, ttl, &bound).await?,
    };
    let purpose = match purpose {
        TicketPurpose::Run | TicketPurpose::RunErasingFido => job.kind.as_str().to_owned(),
        TicketPurpose::Rollback => "rollback".to_owned(),
    };
    if from_portal {
        crate::cluster::pin_expect(s, job.id).await;
    } else {
        crate::cluster::pin_forget(s, job.id).await;
    }
    let frame = ServerLinkFrame::StartSession {
        job: job.id,
        ticket: Secret::new(crate::issuance::ticket_string(job.id, &ticket)),
        reader: reader.clone(),
        purpose,
    };
    send_anywhere(s, agent.id, frame).await.map_err(|e| {
        conflict(format!("{e}: the session was not started (its ticket stays unused and expires)"))
    })?;
    Ok((job, agent.id))
}

/// What an agent is told for a credential that authenticates nothing: one message for unknown,
/// revoked, and a disabled user's.
pub const BAD_AGENT_CREDENTIAL: &str =
    "the agent credential is unknown or revoked; pair the agent again (lanyard agent pair)";

/// `GET /api/v1/agent/link`: a paired agent's link. The protocol version and then the credential
/// are checked before the upgrade, so a refusal is a plain 4xx that names the server's version.
pub async fn connect<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    request: axum::extract::Request,
) -> Response {
    crate::issuance::naming_our_version(accept(s, op, request).await)
}

async fn accept<R: Repo + 'static>(
    s: AppState<R>,
    op: Option<axum::Extension<crate::OperationId>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    crate::issuance::check_agent_version(&parts.headers)?;
    let credential = Zeroizing::new(
        crate::auth::bearer(&parts.headers)
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <agent credential>")
            })?
            .to_owned(),
    );
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &s)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("not a WebSocket request: {e}")))?;
    let op = crate::api::operation(op.as_ref());
    let system = System::new(op, s.clock.now());
    let (agent, user) = system
        .authenticate_agent(s.repo.as_ref(), &credential)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, BAD_AGENT_CREDENTIAL))?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            let link = Link { socket, agent: agent.id, user: user.id };
            link.run(s, credential).await;
        })
        .into_response())
}

struct Link {
    socket: WebSocket,
    agent: AgentId,
    user: UserId,
}

/// How a link's receive ended.
enum Heard {
    Frame(AgentLinkFrame),
    /// Something arrived that is not a frame this side reads; the agent is told, the link stays.
    Unreadable(String),
    /// A control frame: the agent is alive.
    Alive,
    Gone,
}

impl Link {
    async fn send(&mut self, frame: &ServerLinkFrame) -> bool {
        self.socket.send(Message::Text(frame.to_text().into())).await.is_ok()
    }

    async fn close(&mut self, why: &str) {
        let _ = self.send(&ServerLinkFrame::Error { message: why.to_owned() }).await;
        let _ = self.socket.send(Message::Close(None)).await;
    }

    async fn receive(&mut self) -> Heard {
        let idle = Duration::from_secs(LINK_IDLE_SECS);
        match tokio::time::timeout(idle, self.socket.recv()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => Heard::Gone,
            Ok(Some(Ok(Message::Text(text)))) => match AgentLinkFrame::parse(text.as_str()) {
                Ok(frame) => Heard::Frame(frame),
                Err(e) => Heard::Unreadable(format!("unintelligible frame: {e}")),
            },
            Ok(Some(Ok(Message::Binary(_)))) => {
                Heard::Unreadable("binary frames are not part of the protocol".into())
            }
            Ok(Some(Ok(_))) => Heard::Alive,
        }
    }

    /// Waits for `hello`, registers the agent, then serves the link until either side ends it,
    /// the agent falls silent, or its credential stops working.
    async fn run<R: Repo>(mut self, s: AppState<R>, credential: Zeroizing<String>) {
        let hello = tokio::time::timeout(HELLO_WITHIN, self.receive()).await;
        let snapshot = match hello {
            Ok(Heard::Frame(AgentLinkFrame::Hello { protocol, agent, host, features })) => {
                if protocol != PROTOCOL_VERSION {
                    let why = format!(
                        "the agent's hello names protocol version {protocol}, not {PROTOCOL_VERSION}"
                    );
                    return self.close(&why).await;
                }
                LinkSnapshot {
                    agent,
                    host,
                    features,
                    connected_at: s.clock.now(),
                    readers: None,
                    reported_at: None,
                }
            }
            Ok(Heard::Frame(other)) => {
                return self.close(&format!("expected hello, got {}", kind(&other))).await;
            }
            Ok(Heard::Unreadable(why)) => return self.close(&format!("expected hello: {why}")).await,
            Ok(Heard::Alive | Heard::Gone) | Err(_) => return self.close("expected hello").await,
        };
        tracing::info!(agent = %self.agent, host = %snapshot.host, version = %snapshot.agent, "agent linked");
        let (conn, mut rx) = s.links.register(self.agent, self.user, snapshot);
        crate::cluster::announce_link(&s, self.agent, conn).await;
        let mut recheck = tokio::time::interval(
            Duration::try_from(AGENT_SEEN_RESOLUTION).unwrap_or(Duration::from_secs(60)),
        );
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; authentication has just happened.
        recheck.tick().await;
        loop {
            tokio::select! {
                heard = self.receive() => match heard {
                    Heard::Gone => break,
                    Heard::Alive => {}
                    Heard::Unreadable(why) => {
                        if !self.send(&ServerLinkFrame::Error { message: why }).await {
                            break;
                        }
                    }
                    Heard::Frame(frame) => {
                        let report = matches!(frame, AgentLinkFrame::Readers { .. });
                        if let Some(why) = self.on_frame(&s, conn, frame) && !self.send(&ServerLinkFrame::Error { message: why }).await {
                            break;
                        }
                        if report {
                            crate::cluster::announce_link(&s, self.agent, conn).await;
                        }
                    }
                },
                command = rx.recv() => match command {
                    Some(Command::Send(frame)) => {
                        if !self.send(&frame).await {
                            break;
                        }
                    }
                    Some(Command::Close(why)) => {
                        self.close(&why).await;
                        break;
                    }
                    None => break,
                },
                _ = recheck.tick() => {
                    // Notes `last_seen_at`, and ends a link whose agent was revoked, or whose user
                    // was disabled, on any server sharing the database.
                    let system = System::new(lanyard_core::audit::OperationId::random(), s.clock.now());
                    match system.authenticate_agent(s.repo.as_ref(), &credential).await {
                        Ok(Some(_)) => crate::cluster::announce_link(&s, self.agent, conn).await,
                        Ok(None) => {
                            self.close(BAD_AGENT_CREDENTIAL).await;
                            break;
                        }
                        Err(e) => tracing::warn!(agent = %self.agent, error = %e, "could not re-check an agent's credential"),
                    }
                }
            }
        }
        s.links.unregister(self.agent, conn);
        crate::cluster::withdraw_link(&s, self.agent, conn).await;
        tracing::info!(agent = %self.agent, "agent link closed");
    }

    /// Acts on one frame after `hello`; `Some` is the error to tell the agent.
    fn on_frame<R>(&self, s: &AppState<R>, conn: u64, frame: AgentLinkFrame) -> Option<String> {
        match frame {
            AgentLinkFrame::Readers { readers } if readers.len() > MAX_READERS => Some(format!(
                "a readers report lists {} readers, more than the {MAX_READERS} allowed",
                readers.len()
            )),
            AgentLinkFrame::Readers { readers } => {
                s.links.set_readers(self.agent, conn, readers, s.clock.now());
                None
            }
            AgentLinkFrame::SessionEnded { job, error } => {
                match error {
                    None => tracing::info!(agent = %self.agent, %job, "agent session ended"),
                    Some(e) => tracing::warn!(agent = %self.agent, %job, error = %e, "agent session failed"),
                }
                None
            }
            AgentLinkFrame::Error { message } => {
                tracing::warn!(agent = %self.agent, %message, "the agent could not act on a frame");
                None
            }
            AgentLinkFrame::Hello { .. } => Some("hello was already said on this link".into()),
        }
    }
}

fn kind(frame: &AgentLinkFrame) -> &'static str {
    match frame {
        AgentLinkFrame::Hello { .. } => "hello",
        AgentLinkFrame::Readers { .. } => "readers",
        AgentLinkFrame::SessionEnded { .. } => "session_ended",
        AgentLinkFrame::Error { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(agent: &str) -> LinkSnapshot {
        LinkSnapshot {
            agent: agent.into(),
            host: "ws".into(),
            features: vec![],
            connected_at: OffsetDateTime::UNIX_EPOCH,
            readers: None,
            reported_at: None,
        }
    }

    #[test]
    fn a_reconnecting_agent_replaces_its_old_link_and_the_old_one_cannot_remove_it() {
        let links = AgentLinks::default();
        let (id, user) = (AgentId::new(), UserId::new());
        assert_eq!(links.send(id, ServerLinkFrame::Refresh), Err(LinkError::Offline));
        let (old, mut old_rx) = links.register(id, user, snapshot("first"));
        let (new, mut new_rx) = links.register(id, user, snapshot("second"));
        assert!(matches!(old_rx.try_recv(), Ok(Command::Close(m)) if m.contains("replaced")));
        // The old link's task ends and unregisters: the new link stays.
        links.unregister(id, old);
        links.set_readers(id, old, vec![], OffsetDateTime::UNIX_EPOCH);
        let (owner, seen) = links.status(id).expect("still online");
        assert_eq!((owner, seen.agent.as_str(), seen.readers), (user, "second", None));
        links.set_readers(id, new, vec![], OffsetDateTime::UNIX_EPOCH);
        assert_eq!(links.status(id).and_then(|(_, s)| s.readers), Some(vec![]));
        links.send(id, ServerLinkFrame::Refresh).unwrap();
        assert!(matches!(new_rx.try_recv(), Ok(Command::Send(ServerLinkFrame::Refresh))));
        // A full queue is "busy", not a silent drop.
        for _ in 0..LINK_QUEUE {
            links.send(id, ServerLinkFrame::Refresh).unwrap();
        }
        assert_eq!(links.send(id, ServerLinkFrame::Refresh), Err(LinkError::Busy));
        links.disconnect(id, "revoked");
        assert!(links.status(id).is_none());
        assert_eq!(links.send(id, ServerLinkFrame::Refresh), Err(LinkError::Offline));
    }
}
