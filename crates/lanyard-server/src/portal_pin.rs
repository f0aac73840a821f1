//! The new PIN typed in the portal (DESIGN §4.4): for a session started over an agent link with
//! `new_pin_from: portal`, the server asks the browser instead of the agent. When the card
//! session reaches `change_pin` or `unblock_pin` it waits here; `GET /api/v1/jobs/{id}` shows the
//! wait (`pin_wanted`), `POST /api/v1/jobs/{id}/pin` hands the PIN in, and it goes to the agent
//! in the frame's `new_pin` (feature `server_pin`), which writes it to the card.
//!
//! The PIN is held only in memory, in a [`Secret`] (wiped on drop), for as long as the session
//! waits for it; it is never stored, logged or audited. Like the link registry this is the
//! process's own: the PIN must reach the server that runs the session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lanyard_core::ids::JobId;
use lanyard_core::model::{PinRuleError, PinRules};
use lanyard_protocol::Secret;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What the portal answered for a session waiting on it.
#[derive(Debug)]
pub enum PortalPin {
    /// The session's PIN does not come from the portal.
    NotUsed,
    /// The holder's new PIN, checked against the rules.
    Given(Secret),
    /// The holder kept the initial PIN, or gave none before the deadline.
    Declined,
}

/// Why a PIN was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GiveError {
    #[error("the job is not waiting for a new PIN")]
    NotWaiting,
    #[error("new_pin: {0}")]
    Rules(PinRuleError),
}

struct Waiting {
    rules: PinRules,
    until: Instant,
    tx: oneshot::Sender<Option<Secret>>,
}

/// Jobs whose PIN comes from the portal, and those waiting for it now.
#[derive(Default)]
pub struct PinDesk {
    /// `None`: the job expects its PIN from the portal but is not asking yet.
    jobs: Mutex<HashMap<JobId, Option<Waiting>>>,
}

impl PinDesk {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Option<Waiting>>> {
        // Every change is one insert or remove: a poisoned map is still whole.
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Job `job`'s new PIN will come from the portal.
    pub fn expect(&self, job: JobId) {
        self.lock().insert(job, None);
    }

    /// The job's PIN comes from the agent again (a session started without the portal).
    pub fn forget(&self, job: JobId) {
        self.lock().remove(&job);
    }

    /// Waits up to `within` for the portal's PIN for `job`, if its PIN comes from the portal.
    pub async fn wait(&self, job: JobId, rules: PinRules, within: Duration) -> PortalPin {
        let rx = {
            let mut jobs = self.lock();
            let Some(slot) = jobs.get_mut(&job) else { return PortalPin::NotUsed };
            let (tx, rx) = oneshot::channel();
            *slot = Some(Waiting { rules, until: Instant::now() + within, tx });
            rx
        };
        let answer = tokio::time::timeout(within, rx).await;
        // Asked once per session: whatever came, the job no longer waits.
        self.lock().remove(&job);
        match answer {
            Ok(Ok(Some(pin))) => PortalPin::Given(pin),
            _ => PortalPin::Declined,
        }
    }

    /// Whether `job`'s new PIN is to come from the portal and has not been answered yet (asked
    /// now, or to be asked once the session reaches that step).
    pub fn expects(&self, job: JobId) -> bool {
        self.lock().contains_key(&job)
    }

    /// The rules and the seconds left, while `job` waits for the portal's PIN.
    pub fn wanted(&self, job: JobId) -> Option<(PinRules, u64)> {
        let jobs = self.lock();
        let waiting = jobs.get(&job)?.as_ref()?;
        Some((waiting.rules, waiting.until.saturating_duration_since(Instant::now()).as_secs()))
    }

    /// Hands the holder's answer to a waiting session: a PIN that meets the rules, or `None` to
    /// keep the initial PIN. A PIN that breaks a rule is refused here and the session waits on.
    pub fn give(&self, job: JobId, pin: Option<Secret>) -> Result<(), GiveError> {
        let mut jobs = self.lock();
        let Some(Some(waiting)) = jobs.get(&job) else { return Err(GiveError::NotWaiting) };
        if let Some(pin) = &pin {
            waiting.rules.check(pin.expose()).map_err(GiveError::Rules)?;
        }
        let Some(Some(waiting)) = jobs.remove(&job) else { return Err(GiveError::NotWaiting) };
        // The session may have given up this instant; then the PIN is dropped (and wiped).
        waiting.tx.send(pin).map_err(|_| GiveError::NotWaiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pin_reaches_the_waiting_session_once_and_only_if_it_meets_the_rules() {
        let desk = std::sync::Arc::new(PinDesk::default());
        let job = JobId::new();
        assert!(matches!(
            desk.wait(JobId::new(), PinRules::default(), Duration::from_secs(1)).await,
            PortalPin::NotUsed
        ));
        assert_eq!(desk.give(job, None), Err(GiveError::NotWaiting));
        desk.expect(job);
        assert_eq!(desk.wanted(job), None, "expected, not yet asked");
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(async move { desk.wait(job, PinRules::default(), Duration::from_secs(600)).await })
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(desk.give(job, Some(Secret::new("111111"))), Err(GiveError::Rules(_))));
        assert!(desk.wanted(job).is_some(), "a refused PIN leaves the session waiting");
        desk.give(job, Some(Secret::new("975319"))).unwrap();
        match waiter.await.unwrap() {
            PortalPin::Given(pin) => assert_eq!(pin.expose(), "975319"),
            other => panic!("{other:?}"),
        }
        assert_eq!(desk.give(job, None), Err(GiveError::NotWaiting), "asked once");
    }
}
