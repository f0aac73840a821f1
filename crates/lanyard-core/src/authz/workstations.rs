//! [`Workstations`]: a person's own paired workstation agents.
//!
//! An agent belongs to the account that paired it and to nobody else: every method here acts on
//! the caller's agents only, and another account's agent is NotFound, exactly like a missing one,
//! whatever roles the caller holds. An operator issuing in person pairs the agent at their own
//! desk; the server then relays sessions for any holder's card through it
//! ([`super::Operator::agent_job_ticket`]), but never through someone else's agent.

use secrecy::SecretString;
use serde_json::json;

use crate::audit::NewAuditEvent;
use crate::error::DomainError;
use crate::ids::{AgentId, UserId};
use crate::model::{Agent, PairingCode};
use crate::repo::prelude::*;

use super::{Principal, own_agent};

/// The caller's own workstation agents (roles user, operator or administrator).
#[derive(Clone, Copy, Debug)]
pub struct Workstations<'a> {
    pub(super) p: &'a Principal,
}

impl Workstations<'_> {
    fn me(&self) -> UserId {
        self.p.user.id
    }

    /// Starts pairing a workstation agent with me: a one-time code, valid for
    /// [`crate::model::PAIRING_CODE_TTL`], to type into `lanyard agent pair` or to carry in a
    /// `lanyard://pair` link. Returns the code to show once (`ABCDE-FGHJK`); only its hash is
    /// stored. Codes that expired are cleared out in the same unit of work, so the table holds
    /// only the last two minutes' codes.
    pub async fn start_pairing<R: Repo>(&self, repo: &R) -> Result<(PairingCode, SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            // A new code for every run: nothing of a failed run is kept.
            let (code, secret) = PairingCode::issue(self.me(), who.at)?;
            let mut tx = repo.begin().await?;
            tx.delete_expired_pairing_codes(who.at).await?;
            tx.insert_pairing_code(&code).await?;
            let event =
                NewAuditEvent::new(who.at, who.actor.clone(), "agent.pairing_start", &who.operation_id)
                    .target(format!("pairing_code:{}", code.id))
                    .after(json!({"user": code.user, "expires_at": code.expires_at.unix_timestamp()}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok((code, secret))
        })
        .await
    }

    /// My paired agents (revoked ones included), oldest first.
    pub async fn agents<R: Repo>(&self, repo: &R) -> Result<Vec<Agent>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_agents(self.me()).await?)
    }

    /// One of my agents, not revoked; another user's is NotFound, like a missing one.
    pub async fn agent<R: Repo>(&self, repo: &R, id: AgentId) -> Result<Agent, DomainError> {
        own_agent(repo, id, self.me()).await
    }

    /// Revokes one of my agents: its credential stops working at once. Another user's agent is
    /// NotFound, like a missing one; an agent already revoked is a Conflict.
    pub async fn revoke_agent<R: Repo>(&self, repo: &R, id: AgentId) -> Result<Agent, DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut agent = match tx.get_agent(id).await? {
                Some(a) if a.user == self.me() => a,
                _ => return Err(DomainError::not_found("agent", id)),
            };
            if agent.revoked_at.is_some() {
                return Err(DomainError::Conflict("this agent is already revoked".into()));
            }
            agent.revoked_at = Some(who.at);
            tx.update_agent(&agent).await?;
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "agent.revoke", &who.operation_id)
                .target(format!("agent:{id}"))
                .before(json!({"revoked_at": null}))
                .after(json!({"user": agent.user, "host_name": agent.host_name, "revoked_at": who.at.unix_timestamp()}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(agent)
        })
        .await
    }
}
