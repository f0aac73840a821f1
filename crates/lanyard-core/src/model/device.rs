use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ValidationError, check_text};
use crate::ids::{DeviceId, UserId};
use crate::lifecycle::{DeviceState, RevocationReason};
use crate::macros::{serde_hex, string_enum};

string_enum! {
    /// What kind of thing holds the credentials.
    pub enum DeviceKind ("device kind") {
        /// A PIV smart card in a reader.
        SmartCard = "smart_card",
        /// A USB token with the PIV application (YubiKey class).
        UsbKey = "usb_key",
        /// A phone: configuration-profile enrolment or a derived PIV credential.
        Mobile = "mobile",
    }
}

/// The two lifecycles devices follow: tokens (cards and USB keys, personalised through a reader)
/// and mobiles (which enrol themselves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Token,
    Mobile,
}

impl DeviceKind {
    /// Which lifecycle this kind follows.
    pub const fn class(self) -> DeviceClass {
        match self {
            DeviceKind::SmartCard | DeviceKind::UsbKey => DeviceClass::Token,
            DeviceKind::Mobile => DeviceClass::Mobile,
        }
    }
}

impl DeviceClass {
    /// Where a newly registered device of this class starts.
    pub const fn initial_state(self) -> DeviceState {
        match self {
            DeviceClass::Token => DeviceState::Available,
            DeviceClass::Mobile => DeviceState::Enrolling,
        }
    }

    /// Lowercase name for messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Token => "token",
            DeviceClass::Mobile => "mobile",
        }
    }
}

impl std::fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

string_enum! {
    /// How one device relates to another (DESIGN §5).
    pub enum LinkKind ("device link kind") {
        /// This device is the replacement of the target (lost, damaged, renewed).
        Replaces = "replaces",
        /// This device stands in for the target for a while (forgotten card).
        TemporaryFor = "temporary_for",
        /// This mobile's derived PIV credential was vouched for by the target card.
        DerivedFrom = "derived_from",
    }
}

/// A link from this device to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceLink {
    pub kind: LinkKind,
    pub target: DeviceId,
}

/// A smart card, USB key or mobile device.
///
/// `state`, `suspended_from` and `revocation_reason` change only through
/// [`crate::lifecycle::apply_device`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    pub id: DeviceId,
    /// The cardholder. `None` for stock cards (Available) that nobody holds yet; set when issuance
    /// begins, cleared when a terminated card is recycled.
    pub owner: Option<UserId>,
    pub kind: DeviceKind,
    /// The model as the agent or the enrolment reports it, e.g. `"YubiKey 5"`.
    pub model: String,
    /// The manufacturer's serial number, when the device has one.
    pub serial: Option<String>,
    /// The CHUID GUID written at personalisation.
    #[serde(with = "serde_hex::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "hex"))]
    pub card_guid: Option<[u8; 16]>,
    /// When the card expires (its CHUID expiration date), recorded with the card UUID before the
    /// first command reaches the card. Every certificate for the card is capped at it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub card_expires_at: Option<OffsetDateTime>,
    pub state: DeviceState,
    /// While Suspended: the state Resume returns to.
    pub suspended_from: Option<DeviceState>,
    /// Set when the device is revoked (directly or by being marked lost, stolen or damaged).
    pub revocation_reason: Option<RevocationReason>,
    pub links: Vec<DeviceLink>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The time of the last change (of any field).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Device {
    /// A newly registered device of `kind`, unowned, in its class's initial state (Available for
    /// tokens, Enrolling for mobiles).
    pub fn new(
        kind: DeviceKind,
        model: impl Into<String>,
        at: OffsetDateTime,
    ) -> Result<Self, ValidationError> {
        let device = Self {
            id: DeviceId::new(),
            owner: None,
            kind,
            model: model.into(),
            serial: None,
            card_guid: None,
            card_expires_at: None,
            state: kind.class().initial_state(),
            suspended_from: None,
            revocation_reason: None,
            links: Vec::new(),
            created_at: at,
            updated_at: at,
        };
        device.validate()?;
        Ok(device)
    }

    /// Checks the free-text fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_text("model", &self.model, 64)?;
        if let Some(serial) = &self.serial {
            check_text("serial", serial, 64)?;
        }
        Ok(())
    }

    /// Which lifecycle the device follows.
    pub fn class(&self) -> DeviceClass {
        self.kind.class()
    }

    /// Whether the device counts against the policy's `max_devices` (tokens only; see
    /// [`crate::model::Policy::max_devices`]).
    pub fn counts_toward_limit(&self) -> bool {
        self.class() == DeviceClass::Token
            && matches!(
                self.state,
                DeviceState::Issuing | DeviceState::Pending | DeviceState::Active | DeviceState::Suspended
            )
    }

    /// The targets of this device's links of `kind`.
    pub fn linked(&self, kind: LinkKind) -> impl Iterator<Item = DeviceId> + '_ {
        self.links.iter().filter(move |l| l.kind == kind).map(|l| l.target)
    }
}
