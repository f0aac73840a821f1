//! [`Auditor`]: read-only access to the audit log.

use crate::audit::{AuditEvent, ChainHead, ChainVerifier};
use crate::error::DomainError;
use crate::repo::AuditQuery;
use crate::repo::prelude::*;

use super::Principal;

/// Read-only access to the audit log.
#[derive(Clone, Copy, Debug)]
pub struct Auditor<'a> {
    #[allow(dead_code)]
    pub(super) p: &'a Principal,
}

impl Auditor<'_> {
    /// Audit events matching `query`, by seq.
    pub async fn events<R: Repo>(
        &self,
        repo: &R,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_audit(query).await?)
    }

    /// Verifies the whole sealed chain, page by page; returns the verified head (its `seq` is
    /// the number of sealed events). Compare it with a head recorded elsewhere to detect a
    /// truncated tail. See [`Auditor::verify_counting_unsealed`] for the events not sealed yet.
    pub async fn verify<R: Repo>(&self, repo: &R) -> Result<ChainHead, DomainError> {
        Ok(self.verify_counting_unsealed(repo).await?.0)
    }

    /// [`Auditor::verify`], and how many committed events the sealer has not chained yet (they
    /// are not covered by the check).
    pub async fn verify_counting_unsealed<R: Repo>(&self, repo: &R) -> Result<(ChainHead, u64), DomainError> {
        const PAGE: u32 = 1000;
        let mut verifier = ChainVerifier::new();
        loop {
            let mut tx = repo.read().await?;
            let query = AuditQuery {
                after_seq: verifier.head().seq,
                target: None,
                limit: PAGE,
                ..Default::default()
            };
            let page = tx.list_audit(&query).await?;
            for event in page.iter().filter(|e| e.sealed) {
                verifier.push(event)?;
            }
            // Unsealed events come after every sealed one: seeing one (or a short page) means
            // the sealed part has been read.
            if page.len() < PAGE as usize || page.last().is_some_and(|e| !e.sealed) {
                let unsealed = tx.unsealed_audit().await?;
                return Ok((verifier.head(), unsealed));
            }
        }
    }
}
