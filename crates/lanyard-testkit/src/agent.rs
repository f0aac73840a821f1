//! The real agent relay (`lanyard_agent::relay::run_session_with`) between an in-process card
//! and a [`TestServer`], over the server's real socket.

use std::time::Duration;

use lanyard_agent::AgentError;
use lanyard_agent::relay::{
    FixedPin, Outcome, PinSource, Progress, SessionOptions, SkipPinChange, run_session_with,
};
use zeroize::Zeroizing;

use crate::card::VCard;
use crate::server::TestServer;

/// The reader name the agent reports in its hello.
pub const READER: &str = "Lanyard testkit in-process card";

/// How an agent session ended, and the card it worked on.
pub struct AgentRun {
    pub outcome: Result<Outcome, AgentError>,
    pub card: VCard,
    /// Every progress event, in order.
    pub progress: Vec<Progress>,
}

impl TestServer {
    /// Runs the agent's session for `ticket` with `card`: `pin` answers Change PIN (`None`
    /// skips it, and the device stays Pending).
    pub async fn issue_with_agent(&self, ticket: &str, card: VCard, pin: Option<&str>) -> AgentRun {
        match pin {
            Some(pin) => self.run_agent(ticket, card, FixedPin(Zeroizing::new(pin.to_owned()))).await,
            None => self.run_agent(ticket, card, SkipPinChange).await,
        }
    }

    /// Runs the agent's session for `ticket` with `card`, asking `pins` for the new PIN. The
    /// relay blocks, so it runs on tokio's blocking pool while the server serves.
    pub async fn run_agent(
        &self,
        ticket: &str,
        mut card: VCard,
        mut pins: impl PinSource + Send + 'static,
    ) -> AgentRun {
        let mut opts = SessionOptions::new(self.url.clone(), ticket, READER);
        // A stuck session fails the test in a minute rather than the agent's five.
        opts.read_timeout = Duration::from_secs(60);
        tokio::task::spawn_blocking(move || {
            let mut progress = Vec::new();
            let outcome =
                run_session_with(&opts, card.transport_mut(), &lanyard_vcard::atr(), &mut pins, &mut |p| {
                    progress.push(p.clone())
                });
            AgentRun { outcome, card, progress }
        })
        .await
        .expect("the agent thread ends without a panic")
    }
}
