//! Which cards sit in which readers, and whether Lanyard can issue them.
//!
//! Identification only reads: SELECT, GET VERSION, GET SERIAL and GET DATA CHUID. It never
//! authenticates, so listing cards costs no PIN or management-key tries.

use lanyard_piv::apdu::StatusWord;
use lanyard_piv::objects::ChuidIssuance;
use lanyard_piv::transport::{PcscTransport, reader_states};
use lanyard_piv::{CardTransport, Piv, PivError};
use lanyard_protocol::link::{CardReport, ReaderReport, Verdict};
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// Oldest YubiKey firmware the personalization engine drives: 4.x brought the PIV extensions it
/// needs (GET SERIAL, SET PIN RETRIES, ATTEST from 4.3); the NEO's 3.x applet lacks them.
pub const MIN_YUBIKEY_MAJOR: u8 = 4;

/// One PC/SC reader and what is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderInfo {
    pub reader: String,
    pub card_present: bool,
    /// The card's answer-to-reset, hex; empty without a card.
    pub atr: String,
    /// What identification found; `None` without a card.
    pub card: Option<CardInfo>,
}

/// What a short, read-only session with a card found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardInfo {
    /// The card answered SELECT PIV.
    pub piv: bool,
    /// YubiKey firmware (GET VERSION), e.g. `"5.7.2"`; `None` on other PIV cards.
    pub yubikey_version: Option<String>,
    /// YubiKey serial number (GET SERIAL), when the card tells.
    pub serial: Option<u32>,
    /// The CHUID's card GUID, hex, when the card has a CHUID that decodes.
    pub chuid_guid: Option<String>,
    /// The card carries a CHUID that is not the factory template (the engine's rule,
    /// [`ChuidIssuance`]).
    pub issued: bool,
    pub compatibility: Compatibility,
}

/// Whether Lanyard can issue the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Compatibility {
    /// A YubiKey PIV applet the engine can personalize, not issued yet.
    Compatible,
    /// A compatible card that has been issued already (by Lanyard or anyone else).
    AlreadyIssued,
    /// The engine refuses this card.
    Unsupported { reason: String },
    /// The card could not be read: another program holds it, or it went away mid-session.
    Unreadable { reason: String },
}

/// Every PC/SC reader with its card, identified. No readers is an empty list; pcscd being
/// unreachable is [`AgentError::Pcsc`].
pub fn list_cards() -> Result<Vec<ReaderInfo>, AgentError> {
    // `card_present` already excludes a card being removed (no APDU to a card that is leaving:
    // pcscd's reset of it would fail).
    list_cards_except(&std::collections::BTreeSet::new())
}

/// The model name issuance policies use for a card (`accepted_card_models`): `YubiKey <major>`
/// from the firmware version; `None` for other cards.
pub fn model_name(card: &CardInfo) -> Option<String> {
    let major = card.yubikey_version.as_deref()?.split('.').next()?;
    Some(format!("YubiKey {major}"))
}

impl ReaderInfo {
    /// The reader as the agent link reports it.
    pub fn to_report(&self) -> ReaderReport {
        let card = self.card.as_ref().map(|c| {
            let (verdict, reason) = match &c.compatibility {
                Compatibility::Compatible => (Verdict::Compatible, None),
                Compatibility::AlreadyIssued => (Verdict::AlreadyIssued, None),
                Compatibility::Unsupported { reason } => (Verdict::Unsupported, Some(reason.clone())),
                Compatibility::Unreadable { reason } => (Verdict::Unreadable, Some(reason.clone())),
            };
            CardReport {
                model: model_name(c),
                serial: c.serial.map(|s| s.to_string()),
                verdict,
                reason,
                busy: false,
            }
        });
        ReaderReport {
            name: self.reader.clone(),
            card_present: self.card_present,
            atr: self.atr.clone(),
            card,
        }
    }
}

/// Every PC/SC reader, with the cards of all but the readers in `skip` identified: those run a
/// card session, and identification's SELECT would reset the session's security state.
pub fn list_cards_except(skip: &std::collections::BTreeSet<String>) -> Result<Vec<ReaderInfo>, AgentError> {
    let states = reader_states().map_err(AgentError::Pcsc)?;
    Ok(states
        .into_iter()
        .map(|state| {
            let card = if !state.card_present || skip.contains(&state.name) {
                None
            } else if state.exclusive {
                Some(unreadable("another program holds the card exclusively"))
            } else {
                Some(match PcscTransport::connect_exact(&state.name) {
                    Ok(t) => identify(t),
                    Err(e) => unreadable(&e.to_string()),
                })
            };
            ReaderInfo {
                atr: hex::encode_upper(&state.atr),
                reader: state.name,
                card_present: state.card_present,
                card,
            }
        })
        .collect())
}

fn unreadable(reason: &str) -> CardInfo {
    CardInfo {
        piv: false,
        yubikey_version: None,
        serial: None,
        chuid_guid: None,
        issued: false,
        compatibility: Compatibility::Unreadable { reason: reason.to_owned() },
    }
}

fn not_yubikey(sw: Option<StatusWord>) -> bool {
    matches!(sw, Some(StatusWord::InsNotSupported | StatusWord::FunctionNotSupported))
}

/// Identifies the card behind `transport` with read-only commands.
pub fn identify<T: CardTransport>(transport: T) -> CardInfo {
    let mut piv = Piv::new(transport);
    let mut info = unreadable("");
    // The reader or the card failed, as opposed to the card answering with an error.
    let io_failed = |e: &PivError| matches!(e, PivError::Transport(_));
    match piv.select() {
        Ok(_) => info.piv = true,
        Err(e) if io_failed(&e) => {
            info.compatibility = Compatibility::Unreadable { reason: e.to_string() };
            return info;
        }
        Err(e) => {
            info.compatibility = Compatibility::Unsupported { reason: format!("no PIV application ({e})") };
            return info;
        }
    }
    let version = match piv.get_version() {
        Ok(v) => Some(v),
        Err(e) if not_yubikey(e.status()) => None,
        Err(e) => {
            info.compatibility = Compatibility::Unreadable { reason: format!("GET VERSION: {e}") };
            return info;
        }
    };
    info.yubikey_version = version.map(|v| v.to_string());
    if version.is_some() {
        info.serial = piv.get_serial().ok();
    }
    match piv.try_get_data(lanyard_piv::tag::CHUID) {
        Ok(object) => {
            let chuid = ChuidIssuance::classify(object.as_deref());
            info.chuid_guid = chuid.chuid().map(|c| hex::encode(c.guid));
            info.issued = chuid.is_issued();
        }
        Err(e) if io_failed(&e) => {
            info.compatibility = Compatibility::Unreadable { reason: e.to_string() };
            return info;
        }
        // A card that will not show its CHUID (an access rule someone set) counts as issued.
        Err(_) => info.issued = true,
    }
    info.compatibility = match version {
        None => Compatibility::Unsupported {
            reason: "not a YubiKey: management key rotation on other PIV cards is not implemented".into(),
        },
        Some(v) if v.0 < MIN_YUBIKEY_MAJOR => Compatibility::Unsupported {
            reason: format!("YubiKey firmware {v} lacks the PIV extensions issuance needs (4.0 or later)"),
        },
        Some(_) if info.issued => Compatibility::AlreadyIssued,
        Some(_) => Compatibility::Compatible,
    };
    info
}
