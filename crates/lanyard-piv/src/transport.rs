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
    #[error("card removed or reset during the exchange")]
    CardGone,
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

    fn err(e: pcsc::Error) -> TransportError {
        match e {
            pcsc::Error::RemovedCard | pcsc::Error::ResetCard | pcsc::Error::NoSmartcard => {
                TransportError::CardGone
            }
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
    pub struct PcscTransport {
        card: pcsc::Card,
        reader: String,
        buf: Vec<u8>,
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
            let card = ctx.connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY).map_err(err)?;
            Ok(Self {
                card,
                reader: reader.to_string_lossy().into_owned(),
                buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
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
            let card = ctx.connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY).map_err(err)?;
            Ok(Self {
                card,
                reader: reader.to_string_lossy().into_owned(),
                buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
            })
        }

        pub fn reader(&self) -> &str {
            &self.reader
        }

        /// The card's answer-to-reset.
        pub fn atr(&self) -> Result<Vec<u8>, TransportError> {
            // SCardStatus rather than the ATR attribute, which some readers (vpcd) don't offer.
            Ok(self.card.status2_owned().map_err(err)?.atr().to_vec())
        }
    }

    impl CardTransport for PcscTransport {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
            let resp = self.card.transmit(apdu, &mut self.buf).map_err(err)?;
            Ok(resp.to_vec())
        }
    }
}
