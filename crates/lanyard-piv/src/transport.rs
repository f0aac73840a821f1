//! How command APDUs reach a card. The PIV client is written against [`CardTransport`] only, so
//! the same code drives a YubiKey through PC/SC, a virtual card through pcscd, or a card object in
//! the same process.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("PC/SC: {0}")]
    Pcsc(String),
    #[error("no reader matches {0:?}")]
    NoReader(String),
    /// The card left the reader (or there is no card in it).
    #[error("card removed during the exchange")]
    CardGone,
    /// The card is still in the reader but was reset (by another program, or by the reader)
    /// after this connection had exchanged commands with it, so whatever those established
    /// (selected application, verified PIN, authenticated management key) is gone. The
    /// connection has been re-established; the command was not sent.
    #[error("card reset by another program or the reader during the session (its security state is lost)")]
    CardReset,
    #[error("transport: {0}")]
    Other(String),
}

/// Sends one raw command APDU and returns the raw response (data ‖ SW1 SW2).
pub trait CardTransport {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError>;
}

impl<T: CardTransport + ?Sized> CardTransport for &mut T {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit(apdu)
    }
}

impl<T: CardTransport + ?Sized> CardTransport for Box<T> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit(apdu)
    }
}

/// Something that answers APDUs the way a card does: raw command in, raw response out.
/// The software card implements this; the in-process transport calls it directly.
pub trait ApduHandler {
    fn handle(&mut self, apdu: &[u8]) -> Vec<u8>;
}

/// A transport that hands each APDU to a card object in this process.
#[derive(Debug)]
pub struct InProcess<H: ApduHandler>(pub H);

impl<H: ApduHandler> CardTransport for InProcess<H> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.0.handle(apdu))
    }
}

#[cfg(feature = "pcsc")]
pub use self::pcsc_impl::{PcscTransport, ReaderState, list_readers, reader_states};

#[cfg(feature = "pcsc")]
mod pcsc_impl {
    use super::{CardTransport, TransportError};

    /// PC/SC's "the card was reset" is not in this list: a reset card is still there, and
    /// [`PcscTransport`] reconnects to it instead.
    fn err(e: pcsc::Error) -> TransportError {
        match e {
            pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard => TransportError::CardGone,
            other => TransportError::Pcsc(other.to_string()),
        }
    }

    /// A PC/SC context and its readers; no readers at all is an empty list, not an error.
    fn context_and_readers() -> Result<(pcsc::Context, Vec<std::ffi::CString>), TransportError> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(err)?;
        match ctx.list_readers_owned() {
            Ok(r) => Ok((ctx, r)),
            Err(pcsc::Error::NoReadersAvailable) => Ok((ctx, Vec::new())),
            Err(e) => Err(err(e)),
        }
    }

    /// Reader names known to pcscd, in its order.
    pub fn list_readers() -> Result<Vec<String>, TransportError> {
        let (_, readers) = context_and_readers()?;
        Ok(readers.into_iter().map(|r| r.to_string_lossy().into_owned()).collect())
    }

    /// What pcscd knows of a reader, without connecting to its card.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReaderState {
        pub name: String,
        pub card_present: bool,
        /// Another process holds the card exclusively.
        pub exclusive: bool,
        pub atr: Vec<u8>,
    }

    /// The state of every reader, read with SCardGetStatusChange (no APDU is sent).
    pub fn reader_states() -> Result<Vec<ReaderState>, TransportError> {
        let (ctx, readers) = context_and_readers()?;
        if readers.is_empty() {
            return Ok(Vec::new());
        }
        let mut states: Vec<pcsc::ReaderState> =
            readers.iter().map(|r| pcsc::ReaderState::new(r.clone(), pcsc::State::UNAWARE)).collect();
        ctx.get_status_change(std::time::Duration::ZERO, &mut states).map_err(err)?;
        Ok(states
            .iter()
            .map(|s| ReaderState {
                name: s.name().to_string_lossy().into_owned(),
                card_present: s.event_state().contains(pcsc::State::PRESENT)
                    && !s.event_state().contains(pcsc::State::MUTE),
                exclusive: s.event_state().contains(pcsc::State::EXCLUSIVE),
                atr: s.atr().to_vec(),
            })
            .collect())
    }

    /// A card in a PC/SC reader, held with a shared connection over T=1 (or T=0).
    ///
    /// A shared card can be reset under this connection: by another program that leaves it with
    /// SCARD_RESET_CARD (most do, this one included), or by pcscd itself around an insertion.
    /// PC/SC then answers the next call with SCARD_W_RESET_CARD until the connection is
    /// re-established. That is not a pulled card: the transport reconnects (SCardReconnect,
    /// leaving the card as it is). If the connection had not exchanged a command yet, nothing
    /// was lost and the call is made again; otherwise it answers [`TransportError::CardReset`],
    /// because the caller's selected application and verified PIN or key are gone. Only a card
    /// that left the reader is [`TransportError::CardGone`].
    pub struct PcscTransport {
        card: Option<pcsc::Card>,
        reader: String,
        buf: Vec<u8>,
        /// A command got an answer on the current connection.
        exchanged: bool,
        /// The last call failed; the card is gone or unreliable.
        failed: bool,
    }

    impl Drop for PcscTransport {
        fn drop(&mut self) {
            let Some(card) = self.card.take() else { return };
            // Normally the card is reset on leaving, so the next program does not inherit a
            // verified PIN or management key. After a failure it is left alone: resetting a card
            // that is being pulled fails, and vsmartcard's vpcd reader then stops taking cards
            // until pcscd restarts.
            let disposition =
                if self.failed { pcsc::Disposition::LeaveCard } else { pcsc::Disposition::ResetCard };
            // Dropping the card on error would reset it after all; forget the handle instead
            // (pcscd frees it with this process's context).
            if let Err((card, _)) = card.disconnect(disposition) {
                std::mem::forget(card);
            }
        }
    }

    impl std::fmt::Debug for PcscTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PcscTransport").field("reader", &self.reader).finish()
        }
    }

    impl PcscTransport {
        /// Connects to the first reader whose name contains `filter` (case-insensitive), like
        /// yubico-piv-tool's `-r`.
        pub fn connect(filter: &str) -> Result<Self, TransportError> {
            let (ctx, readers) = context_and_readers()?;
            let wanted = filter.to_lowercase();
            let reader = readers
                .into_iter()
                .find(|r| r.to_string_lossy().to_lowercase().contains(&wanted))
                .ok_or_else(|| TransportError::NoReader(filter.to_owned()))?;
            Self::open(&ctx, &reader)
        }

        fn open(ctx: &pcsc::Context, reader: &std::ffi::CStr) -> Result<Self, TransportError> {
            let card = ctx.connect(reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY).map_err(err)?;
            Ok(Self {
                card: Some(card),
                reader: reader.to_string_lossy().into_owned(),
                buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
                exchanged: false,
                failed: false,
            })
        }

        /// Connects to the reader named exactly `name` (as [`reader_states`] and
        /// [`list_readers`] report it).
        pub fn connect_exact(name: &str) -> Result<Self, TransportError> {
            let (ctx, readers) = context_and_readers()?;
            let reader = readers
                .into_iter()
                .find(|r| r.to_string_lossy() == name)
                .ok_or_else(|| TransportError::NoReader(name.to_owned()))?;
            Self::open(&ctx, &reader)
        }

        pub fn reader(&self) -> &str {
            &self.reader
        }

        /// The card's answer-to-reset.
        pub fn atr(&mut self) -> Result<Vec<u8>, TransportError> {
            // SCardStatus rather than the ATR attribute, which some readers (vpcd) don't offer.
            // Reading the ATR depends on no state, so a reset is never worth an error here.
            self.call(true, |card, _| Ok(card.status2_owned()?.atr().to_vec()))
        }

        /// Makes `f` on the card; after a reset, reconnects and makes it again when `repeatable`
        /// or nothing had been exchanged on the connection yet.
        fn call<T>(
            &mut self,
            repeatable: bool,
            mut f: impl FnMut(&mut pcsc::Card, &mut [u8]) -> Result<T, pcsc::Error>,
        ) -> Result<T, TransportError> {
            let card = self.card.as_mut().ok_or(TransportError::CardGone)?;
            let result = match f(card, &mut self.buf) {
                Err(pcsc::Error::ResetCard) => {
                    match card.reconnect(
                        pcsc::ShareMode::Shared,
                        pcsc::Protocols::ANY,
                        pcsc::Disposition::LeaveCard,
                    ) {
                        Ok(()) if repeatable || !self.exchanged => f(card, &mut self.buf).map_err(err),
                        Ok(()) => {
                            self.exchanged = false;
                            Err(TransportError::CardReset)
                        }
                        Err(e) => Err(err(e)),
                    }
                }
                other => other.map_err(err),
            };
            self.failed = matches!(result, Err(ref e) if !matches!(e, TransportError::CardReset));
            result
        }
    }

    impl CardTransport for PcscTransport {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
            let resp = self.call(false, |card, buf| Ok(card.transmit(apdu, buf)?.to_vec()))?;
            if resp.len() < 2 {
                // vpcd answers so when its card went away mid-command; no card does.
                self.failed = true;
                return Err(TransportError::Pcsc(format!(
                    "the reader returned {} bytes, not even a status word",
                    resp.len()
                )));
            }
            self.exchanged = true;
            Ok(resp)
        }
    }
}
