//! The new PIN typed in the portal (DESIGN §4.4): for a session started over an agent link with
//! `new_pin_from: portal`, the server asks the browser instead of the agent. When the card
//! session reaches `change_pin` or `unblock_pin` it waits here; `GET /api/v1/jobs/{id}` shows the
//! wait (`pin_wanted`), `POST /api/v1/jobs/{id}/pin` hands the PIN in, and it goes to the agent
//! in the frame's `new_pin` (feature `server_pin`), which writes it to the card.
//!
//! A *Change PIN* session (job kind `change_pin`) waits for two PINs instead: the card's current
//! PIN and the new one, both typed by the holder; they go to the agent as the `change_pin`
//! frame's `old_pin` and `new_pin`.
//!
//! The PIN is held only in memory, in a [`Secret`] (wiped on drop), for as long as the session
//! waits for it; it is never logged or audited. With several servers on one database
//! ([`PinRelay`], `crate::cluster`), the browser's request may land on another server than the
//! one running the session: the session's question is then published in the database (rules and
//! deadline, no secret), and the other server checks the holder's answer against those rules and
//! leaves it there sealed under the key-encryption key, until the session's server takes it (one
//! `DELETE`) a moment later. A sealed answer lives at most until the session's deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lanyard_core::ids::JobId;
use lanyard_core::model::{FidoPinRuleError, FidoPinRules, PinRuleError, PinRules};
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

/// What the portal answered for a *Change PIN* session waiting on it.
#[derive(Debug)]
pub enum PortalChange {
    /// The session's PINs do not come from the portal.
    NotUsed,
    /// The card's current PIN and the new PIN (checked against the rules).
    Given { current: Secret, new: Secret },
    /// The holder cancelled, or gave nothing before the deadline.
    Declined,
}

/// The longest PIN a PIV card holds (SP 800-73-4: 8 bytes, padded with `FF`).
pub const MAX_CARD_PIN: usize = 8;

/// Why a PIN was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GiveError {
    #[error("the job is not waiting for a new PIN")]
    NotWaiting,
    #[error("new_pin: {0}")]
    Rules(PinRuleError),
    #[error("current_pin: type the card's current PIN as well")]
    CurrentMissing,
    #[error("current_pin: a card's PIN has at most {MAX_CARD_PIN} characters, so this cannot be it")]
    CurrentTooLong,
    #[error("current_pin: this job asks only for a new PIN")]
    CurrentNotAsked,
    #[error("new_pin: the new PIN is the same as the current one")]
    Unchanged,
    #[error("pin: type the card's PIN")]
    PinMissing,
    #[error("pin: a card's PIN has at most {MAX_CARD_PIN} characters, so this cannot be it")]
    PinTooLong,
    #[error("new_pin: {0}")]
    FidoRules(FidoPinRuleError),
    /// The session runs on another server and the database did not take the answer.
    #[error("the PIN could not be handed to the card session now; nothing was sent to the card, try again")]
    Unavailable,
}

/// What a waiting session asks the holder for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Asking {
    pub rules: PinRules,
    pub seconds_left: u64,
    /// The card's current PIN is asked for too (*Change PIN*).
    pub current: bool,
    /// Only the card's PIN is asked for, to be verified (a sponsor proof); no new PIN.
    pub verify: bool,
    /// The key's FIDO PIN is asked for (`independent` FIDO PIN mode), under these rules instead
    /// of [`Asking::rules`].
    pub fido: Option<FidoPinRules>,
}

/// The holder's answer as it travels to the session: `None` declines.
pub struct Typed {
    pub current: Option<Secret>,
    pub new: Secret,
}

/// A boxed future, for the object-safe [`PinRelay`].
pub type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How a [`PinDesk`] meets the other servers sharing the database (`crate::cluster::DbPins`).
/// Failures are logged by the implementation and read as "nothing there".
pub trait PinRelay: Send + Sync {
    /// Whether another server said `job`'s PINs come from the portal.
    fn expected(&self, job: JobId) -> Boxed<'_, bool>;
    /// Publishes what the session asks for, until `seconds` from now.
    fn ask(&self, job: JobId, asking: Asking) -> Boxed<'_, ()>;
    /// Takes an answer another server checked and left for `job`: `Some(None)` declines.
    fn take_answer(&self, job: JobId) -> Boxed<'_, Option<Option<Typed>>>;
    /// The session no longer asks; with `still_expected`, later steps will ask again.
    fn done(&self, job: JobId, still_expected: bool) -> Boxed<'_, ()>;
}

/// How often a waiting session looks for an answer left by another server.
pub const RELAY_POLL: Duration = Duration::from_millis(200);

struct Waiting {
    rules: PinRules,
    until: Instant,
    current: bool,
    verify: bool,
    fido: Option<FidoPinRules>,
    tx: oneshot::Sender<Option<Typed>>,
}

/// Jobs whose PIN comes from the portal, and those waiting for it now.
#[derive(Default)]
pub struct PinDesk {
    /// `None`: the job expects its PIN from the portal but is not asking yet.
    jobs: Mutex<HashMap<JobId, Option<Waiting>>>,
    /// The other servers on the database; `None`: this process alone.
    relay: Option<std::sync::Arc<dyn PinRelay>>,
}

/// Checks a holder's answer against what the session asks: a new PIN that meets the rules (with
/// the card's current PIN when asked for), the card's own PIN to verify, or no new PIN to
/// decline. `Ok(None)` declines.
pub fn check_answer(
    asking: &Asking,
    current: Option<Secret>,
    new: Option<Secret>,
) -> Result<Option<Typed>, GiveError> {
    Ok(match new {
        None => None,
        Some(pin) if asking.fido.is_some() => {
            if current.is_some() {
                return Err(GiveError::CurrentNotAsked);
            }
            if let Some(rules) = asking.fido {
                rules.check(pin.expose()).map_err(GiveError::FidoRules)?;
            }
            Some(Typed { current: None, new: pin })
        }
        Some(pin) if asking.verify => {
            // The card's own PIN, to be verified: the card judges it; only what cannot be a
            // card PIN is refused here, and costs no try.
            if current.is_some() {
                return Err(GiveError::CurrentNotAsked);
            }
            if pin.expose().is_empty() {
                return Err(GiveError::PinMissing);
            }
            if pin.expose().len() > MAX_CARD_PIN {
                return Err(GiveError::PinTooLong);
            }
            Some(Typed { current: None, new: pin })
        }
        Some(new) => {
            match (&current, asking.current) {
                (Some(_), false) => return Err(GiveError::CurrentNotAsked),
                (None, true) => return Err(GiveError::CurrentMissing),
                (Some(c), true) if c.expose().is_empty() => return Err(GiveError::CurrentMissing),
                (Some(c), true) if c.expose().len() > MAX_CARD_PIN => {
                    return Err(GiveError::CurrentTooLong);
                }
                _ => {}
            }
            asking.rules.check(new.expose()).map_err(GiveError::Rules)?;
            if current.as_ref() == Some(&new) {
                return Err(GiveError::Unchanged);
            }
            Some(Typed { current, new })
        }
    })
}

impl Waiting {
    fn asking(&self) -> Asking {
        Asking {
            rules: self.rules,
            seconds_left: self.until.saturating_duration_since(Instant::now()).as_secs(),
            current: self.current,
            verify: self.verify,
            fido: self.fido,
        }
    }
}

impl PinDesk {
    /// A desk that also meets the other servers on the database through `relay`.
    pub fn with_relay(relay: std::sync::Arc<dyn PinRelay>) -> Self {
        Self { jobs: Mutex::default(), relay: Some(relay) }
    }

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
        match self.wait_for(job, rules, within, false, false, None).await {
            None => PortalPin::NotUsed,
            Some(Some(typed)) => PortalPin::Given(typed.new),
            Some(None) => PortalPin::Declined,
        }
    }

    /// Waits up to `within` for the FIDO PIN the holder chooses for `job`'s key (`independent`
    /// FIDO PIN mode), if its PINs come from the portal.
    pub async fn wait_fido(&self, job: JobId, rules: FidoPinRules, within: Duration) -> PortalPin {
        match self.wait_for(job, PinRules::default(), within, false, false, Some(rules)).await {
            None => PortalPin::NotUsed,
            Some(Some(typed)) => PortalPin::Given(typed.new),
            Some(None) => PortalPin::Declined,
        }
    }

    /// Waits up to `within` for the card's current PIN and the new one for `job` (*Change PIN*),
    /// if its PINs come from the portal.
    pub async fn wait_change(&self, job: JobId, rules: PinRules, within: Duration) -> PortalChange {
        match self.wait_for(job, rules, within, true, false, None).await {
            None => PortalChange::NotUsed,
            Some(Some(Typed { current: Some(current), new })) => PortalChange::Given { current, new },
            Some(_) => PortalChange::Declined,
        }
    }

    /// Waits up to `within` for the card's PIN for `job`, to be verified on the card (a sponsor
    /// proof), if it comes from the portal. The PIN is [`Typed::new`]'s place.
    pub async fn wait_verify(&self, job: JobId, within: Duration) -> PortalPin {
        match self.wait_for(job, PinRules::default(), within, false, true, None).await {
            None => PortalPin::NotUsed,
            Some(Some(typed)) => PortalPin::Given(typed.new),
            Some(None) => PortalPin::Declined,
        }
    }

    /// `None`: the job's PIN does not come from the portal; `Some(None)`: declined or too late.
    async fn wait_for(
        &self,
        job: JobId,
        rules: PinRules,
        within: Duration,
        current: bool,
        verify: bool,
        fido: Option<FidoPinRules>,
    ) -> Option<Option<Typed>> {
        let expected_here = self.lock().contains_key(&job);
        if !expected_here {
            // Started through another server: its note says whether the PIN comes from the portal.
            let relay = self.relay.as_ref()?;
            if !relay.expected(job).await {
                return None;
            }
            self.lock().entry(job).or_insert(None);
        }
        let (mut rx, asking) = {
            let mut jobs = self.lock();
            let slot = jobs.entry(job).or_insert(None);
            let (tx, rx) = oneshot::channel();
            let waiting = Waiting { rules, until: Instant::now() + within, current, verify, fido, tx };
            let asking = waiting.asking();
            *slot = Some(waiting);
            (rx, asking)
        };
        if let Some(relay) = &self.relay {
            relay.ask(job, asking).await;
        }
        let deadline = Instant::now() + within;
        let answer = loop {
            let poll = async {
                match &self.relay {
                    Some(_) => tokio::time::sleep(RELAY_POLL).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                answer = &mut rx => break answer.ok(),
                () = tokio::time::sleep_until(deadline) => break None,
                () = poll => {
                    let Some(relay) = &self.relay else { continue };
                    let Some(typed) = relay.take_answer(job).await else { continue };
                    // Checked by the server that took it; checked again against the rules here.
                    let checked = match typed {
                        None => Ok(None),
                        Some(t) => check_answer(&asking, t.current, Some(t.new)),
                    };
                    match checked {
                        Ok(answer) => break Some(answer),
                        Err(e) => tracing::warn!(%job, error = %e, "a PIN handed over by another server breaks the rules; still waiting"),
                    }
                }
            }
        };
        // Asked once per step: the job no longer waits. An issuance asks the FIDO PIN first and
        // the device PIN later, so after the FIDO PIN it stays expected from the portal.
        let still_expected = fido.is_some() && matches!(answer, Some(Some(_)));
        {
            let mut jobs = self.lock();
            if still_expected {
                jobs.insert(job, None);
            } else {
                jobs.remove(&job);
            }
        }
        if let Some(relay) = &self.relay {
            relay.done(job, still_expected).await;
        }
        Some(answer.flatten())
    }

    /// Whether `job`'s new PIN is to come from the portal and has not been answered yet (asked
    /// now, or to be asked once the session reaches that step).
    /// Whether this desk meets other servers through the database.
    pub fn shared(&self) -> bool {
        self.relay.is_some()
    }

    pub fn expects(&self, job: JobId) -> bool {
        self.lock().contains_key(&job)
    }

    /// What `job` asks for, while it waits for the portal's PIN on this server.
    pub fn wanted(&self, job: JobId) -> Option<Asking> {
        let jobs = self.lock();
        Some(jobs.get(&job)?.as_ref()?.asking())
    }

    /// Hands the holder's answer to a session waiting on this server: a new PIN that meets the
    /// rules (with the card's current PIN when the session asks for it, *Change PIN*), or no new
    /// PIN to decline (keep the initial PIN; cancel a PIN change). A PIN that breaks a rule, or a
    /// missing or impossible current PIN, is refused here and the session waits on.
    pub fn give(&self, job: JobId, current: Option<Secret>, new: Option<Secret>) -> Result<(), GiveError> {
        let mut jobs = self.lock();
        let Some(Some(waiting)) = jobs.get(&job) else { return Err(GiveError::NotWaiting) };
        let typed = check_answer(&waiting.asking(), current, new)?;
        let Some(Some(waiting)) = jobs.remove(&job) else { return Err(GiveError::NotWaiting) };
        // The session may have given up this instant; then the PINs are dropped (and wiped).
        waiting.tx.send(typed).map_err(|_| GiveError::NotWaiting)
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
        assert_eq!(desk.give(job, None, None), Err(GiveError::NotWaiting));
        desk.expect(job);
        assert_eq!(desk.wanted(job), None, "expected, not yet asked");
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(async move { desk.wait(job, PinRules::default(), Duration::from_secs(600)).await })
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(desk.give(job, None, Some(Secret::new("111111"))), Err(GiveError::Rules(_))));
        assert_eq!(
            desk.give(job, Some(Secret::new("123456")), Some(Secret::new("975319"))),
            Err(GiveError::CurrentNotAsked)
        );
        assert!(desk.wanted(job).is_some_and(|a| !a.current), "a refused PIN leaves the session waiting");
        desk.give(job, None, Some(Secret::new("975319"))).unwrap();
        match waiter.await.unwrap() {
            PortalPin::Given(pin) => assert_eq!(pin.expose(), "975319"),
            other => panic!("{other:?}"),
        }
        assert_eq!(desk.give(job, None, None), Err(GiveError::NotWaiting), "asked once");
    }

    #[tokio::test]
    async fn a_pin_change_takes_the_current_pin_and_a_new_one_that_meets_the_rules() {
        let desk = std::sync::Arc::new(PinDesk::default());
        let job = JobId::new();
        desk.expect(job);
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(
                async move { desk.wait_change(job, PinRules::default(), Duration::from_secs(600)).await },
            )
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        assert!(desk.wanted(job).is_some_and(|a| a.current), "the current PIN is asked for");
        let new = || Some(Secret::new("975319"));
        let refusals = [
            (None, new(), GiveError::CurrentMissing),
            (Some(Secret::new("")), new(), GiveError::CurrentMissing),
            (Some(Secret::new("123456789")), new(), GiveError::CurrentTooLong),
            (Some(Secret::new("975319")), new(), GiveError::Unchanged),
        ];
        for (current, new, expected) in refusals {
            assert_eq!(desk.give(job, current, new), Err(expected));
        }
        assert!(matches!(
            desk.give(job, Some(Secret::new("246801")), Some(Secret::new("123456"))),
            Err(GiveError::Rules(_))
        ));
        assert!(desk.wanted(job).is_some(), "every refusal leaves the session waiting");
        desk.give(job, Some(Secret::new("246801")), new()).unwrap();
        match waiter.await.unwrap() {
            PortalChange::Given { current, new } => {
                assert_eq!((current.expose(), new.expose()), ("246801", "975319"));
            }
            other => panic!("{other:?}"),
        }

        // Cancelled: no new PIN declines the change.
        desk.expect(job);
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(
                async move { desk.wait_change(job, PinRules::default(), Duration::from_secs(600)).await },
            )
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        desk.give(job, None, None).unwrap();
        assert!(matches!(waiter.await.unwrap(), PortalChange::Declined));
    }

    /// An issuance in the independent FIDO mode waits for the key's FIDO PIN under the FIDO
    /// rules (any characters, the policy's minimum length), then for the device PIN.
    #[tokio::test]
    async fn a_fido_pin_meets_the_fido_rules_and_the_device_pin_is_asked_after_it() {
        let desk = std::sync::Arc::new(PinDesk::default());
        let job = JobId::new();
        desk.expect(job);
        let rules = FidoPinRules { min_len: 8, forbid_trivial: true };
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(async move { desk.wait_fido(job, rules, Duration::from_secs(600)).await })
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        assert_eq!(desk.wanted(job).and_then(|a| a.fido), Some(rules));
        assert!(matches!(desk.give(job, None, Some(Secret::new("short"))), Err(GiveError::FidoRules(_))));
        assert!(matches!(desk.give(job, None, Some(Secret::new("12345678"))), Err(GiveError::FidoRules(_))));
        assert_eq!(
            desk.give(job, Some(Secret::new("123456")), Some(Secret::new("long enough"))),
            Err(GiveError::CurrentNotAsked)
        );
        desk.give(job, None, Some(Secret::new("long enough"))).unwrap();
        match waiter.await.unwrap() {
            PortalPin::Given(pin) => assert_eq!(pin.expose(), "long enough"),
            other => panic!("{other:?}"),
        }
        assert!(desk.expects(job), "the device PIN is still to come from the portal");
        assert_eq!(desk.wanted(job), None);
    }

    /// A sponsor proof waits for the card's own PIN: the card judges it, so the PIN rules do not
    /// apply; only what cannot be a card PIN is refused (and costs the card no try), and no
    /// current PIN is taken.
    #[tokio::test]
    async fn a_pin_to_verify_is_judged_by_the_card_not_the_rules() {
        let desk = std::sync::Arc::new(PinDesk::default());
        let job = JobId::new();
        assert!(matches!(desk.wait_verify(JobId::new(), Duration::from_secs(1)).await, PortalPin::NotUsed));
        desk.expect(job);
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(async move { desk.wait_verify(job, Duration::from_secs(600)).await })
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        assert!(desk.wanted(job).is_some_and(|a| a.verify && !a.current), "only the card's PIN is asked");
        let refusals = [
            (None, Some(Secret::new("")), GiveError::PinMissing),
            (None, Some(Secret::new("123456789")), GiveError::PinTooLong),
            (Some(Secret::new("123456")), Some(Secret::new("123456")), GiveError::CurrentNotAsked),
        ];
        for (current, pin, expected) in refusals {
            assert_eq!(desk.give(job, current, pin), Err(expected));
        }
        assert!(desk.wanted(job).is_some(), "every refusal leaves the session waiting");
        // "111111" breaks the rules for a new PIN, but it may well be the card's PIN.
        desk.give(job, None, Some(Secret::new("111111"))).unwrap();
        match waiter.await.unwrap() {
            PortalPin::Given(pin) => assert_eq!(pin.expose(), "111111"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            desk.give(job, None, Some(Secret::new("111111"))),
            Err(GiveError::NotWaiting),
            "asked once"
        );

        // Cancel declines; so does a wait that ends with nothing given.
        desk.expect(job);
        let waiter = {
            let desk = std::sync::Arc::clone(&desk);
            tokio::spawn(async move { desk.wait_verify(job, Duration::from_secs(600)).await })
        };
        while desk.wanted(job).is_none() {
            tokio::task::yield_now().await;
        }
        desk.give(job, None, None).unwrap();
        assert!(matches!(waiter.await.unwrap(), PortalPin::Declined));
        desk.expect(job);
        assert!(matches!(desk.wait_verify(job, Duration::ZERO).await, PortalPin::Declined));
        assert!(!desk.expects(job), "the job no longer waits");
    }
}
