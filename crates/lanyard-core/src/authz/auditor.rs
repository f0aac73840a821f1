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

    /// Verifies the whole chain, page by page; returns the verified head (its `seq` is the number
    /// of events). Compare it with a head recorded elsewhere to detect a truncated tail.
    pub async fn verify<R: Repo>(&self, repo: &R) -> Result<ChainHead, DomainError> {
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
            for event in &page {
                verifier.push(event)?;
            }
            if page.len() < PAGE as usize {
                return Ok(verifier.head());
            }
        }
    }
}
