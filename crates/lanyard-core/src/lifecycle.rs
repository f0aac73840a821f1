//! Device and credential lifecycles (DESIGN §5): one transition table each, enforced for every
//! caller.
//!
//! Mobiles share [`DeviceState`] with tokens, but follow their own rows of the table (keyed by
//! [`DeviceClass`]): a mobile is Enrolling → Active → Deleted, and may also be suspended and
//! revoked like a card (a lost phone); it is never Available, Issuing, Pending, Terminated or
//! Failed, and a token is never Enrolling or Deleted. One enum keeps storage, the API and the
//! audit log uniform; the class column keeps the two lifecycles apart.
//!
//! Suspend remembers where it came from (`Device::suspended_from`) and Resume returns there; both
//! Active and Pending devices can be suspended (a card lost before its holder changed the PIN
//! must be blockable too). Hold/Release do the same for credentials with `held_from`.
//!
//! [`apply_device`] and [`apply_credential`] either make the whole change or, on error, none.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use crate::macros::string_enum;
use crate::model::{Credential, Device, DeviceClass};

string_enum! {
    /// Where a device is in its life. See the module docs for which states each class uses.
    pub enum DeviceState ("device state") {
        /// Stock: registered, not issued to anyone (tokens).
        Available = "available",
        /// A card session is personalising it (tokens).
        Issuing = "issuing",
        /// Personalised, but the holder has not changed the initial PIN yet (tokens).
        Pending = "pending",
        /// In use.
        Active = "active",
        /// Temporarily blocked; its certificates are on hold.
        Suspended = "suspended",
        /// Permanently blocked; its certificates are revoked.
        Revoked = "revoked",
        /// Retired; may be recycled into stock (tokens).
        Terminated = "terminated",
        /// Issuance failed and was rolled back (tokens).
        Failed = "failed",
        /// The phone is enrolling itself (mobiles).
        Enrolling = "enrolling",
        /// Removed by its holder or an operator (mobiles).
        Deleted = "deleted",
    }
}

string_enum! {
    /// Where a credential is in its life.
    pub enum CredentialState ("credential state") {
        /// Issued, on a device that is not active yet.
        Pending = "pending",
        Active = "active",
        /// Temporarily invalid (CRL reason certificateHold).
        OnHold = "on_hold",
        Revoked = "revoked",
        Expired = "expired",
        /// Replaced by a renewed credential.
        Superseded = "superseded",
    }
}

string_enum! {
    /// Why a device or credential was revoked.
    pub enum RevocationReason ("revocation reason") {
        Unspecified = "unspecified",
        KeyCompromise = "key_compromise",
        AffiliationChanged = "affiliation_changed",
        Superseded = "superseded",
        CessationOfOperation = "cessation_of_operation",
        PrivilegeWithdrawn = "privilege_withdrawn",
        /// The holder lost the device.
        Lost = "lost",
        /// The device was stolen.
        Stolen = "stolen",
        /// The device is broken.
        Damaged = "damaged",
        /// The card a derived credential was derived from was reported lost, stolen or
        /// compromised shortly after it sponsored the credential.
        ParentRevoked = "parent_revoked",
    }
}

impl RevocationReason {
    /// The RFC 5280 CRLReason code to publish. A lost or stolen device may be in someone else's
    /// hands, so its keys count as compromised; a damaged one simply stopped operating.
    pub const fn crl_reason_code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise | RevocationReason::Lost | RevocationReason::Stolen => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation | RevocationReason::Damaged => 5,
            RevocationReason::PrivilegeWithdrawn | RevocationReason::ParentRevoked => 9,
        }
    }
}

string_enum! {
    /// A device action without its payload: the table's action column.
    pub enum DeviceActionKind ("device action") {
        BeginIssuance = "begin_issuance",
        IssuanceFailed = "issuance_failed",
        Personalized = "personalized",
        Activate = "activate",
        Enrolled = "enrolled",
        Suspend = "suspend",
        Resume = "resume",
        Revoke = "revoke",
        MarkLost = "mark_lost",
        MarkStolen = "mark_stolen",
        MarkDamaged = "mark_damaged",
        Terminate = "terminate",
        Recycle = "recycle",
        Delete = "delete",
    }
}

/// Something that happens to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", content = "reason", rename_all = "snake_case")]
pub enum DeviceAction {
    /// A card session starts personalising a stock token.
    BeginIssuance,
    /// The card session failed and was rolled back.
    IssuanceFailed,
    /// Keys, certificates and objects are on the card; the initial PIN is set.
    Personalized,
    /// The holder changed the initial PIN, or an operator activated the device.
    Activate,
    /// A mobile finished enrolling.
    Enrolled,
    Suspend,
    /// Back to the state Suspend came from.
    Resume,
    Revoke(RevocationReason),
    /// Revoke with reason Lost.
    MarkLost,
    /// Revoke with reason Stolen.
    MarkStolen,
    /// Revoke with reason Damaged.
    MarkDamaged,
    /// Retire a token for good (it may later be recycled).
    Terminate,
    /// Reset a terminated or failed token into stock.
    Recycle,
    /// Remove a mobile.
    Delete,
}

impl DeviceAction {
    /// The payload-free kind.
    pub const fn kind(self) -> DeviceActionKind {
        match self {
            DeviceAction::BeginIssuance => DeviceActionKind::BeginIssuance,
            DeviceAction::IssuanceFailed => DeviceActionKind::IssuanceFailed,
            DeviceAction::Personalized => DeviceActionKind::Personalized,
            DeviceAction::Activate => DeviceActionKind::Activate,
            DeviceAction::Enrolled => DeviceActionKind::Enrolled,
            DeviceAction::Suspend => DeviceActionKind::Suspend,
            DeviceAction::Resume => DeviceActionKind::Resume,
            DeviceAction::Revoke(_) => DeviceActionKind::Revoke,
            DeviceAction::MarkLost => DeviceActionKind::MarkLost,
            DeviceAction::MarkStolen => DeviceActionKind::MarkStolen,
            DeviceAction::MarkDamaged => DeviceActionKind::MarkDamaged,
            DeviceAction::Terminate => DeviceActionKind::Terminate,
            DeviceAction::Recycle => DeviceActionKind::Recycle,
            DeviceAction::Delete => DeviceActionKind::Delete,
        }
    }

    /// The revocation reason this action records on the device, if it revokes.
    pub const fn revocation_reason(self) -> Option<RevocationReason> {
        match self {
            DeviceAction::Revoke(r) => Some(r),
            DeviceAction::MarkLost => Some(RevocationReason::Lost),
            DeviceAction::MarkStolen => Some(RevocationReason::Stolen),
            DeviceAction::MarkDamaged => Some(RevocationReason::Damaged),
            _ => None,
        }
    }

    /// What the device's credentials undergo when the device does this. The action is applied to
    /// each credential for which it is legal (an expired certificate is not revoked again).
    pub const fn credential_effect(self) -> Option<CredentialAction> {
        match self {
            DeviceAction::Activate => Some(CredentialAction::Activate),
            DeviceAction::Suspend => Some(CredentialAction::Hold),
            DeviceAction::Resume => Some(CredentialAction::Release),
            DeviceAction::Revoke(r) => Some(CredentialAction::Revoke(r)),
            DeviceAction::MarkLost => Some(CredentialAction::Revoke(RevocationReason::Lost)),
            DeviceAction::MarkStolen => Some(CredentialAction::Revoke(RevocationReason::Stolen)),
            DeviceAction::MarkDamaged => Some(CredentialAction::Revoke(RevocationReason::Damaged)),
            // Certificates issued before a failure, and those of a retired or deleted device, are
            // revoked so that nothing valid is left on a device nobody vouches for.
            DeviceAction::IssuanceFailed | DeviceAction::Terminate | DeviceAction::Delete => {
                Some(CredentialAction::Revoke(RevocationReason::CessationOfOperation))
            }
            DeviceAction::BeginIssuance
            | DeviceAction::Personalized
            | DeviceAction::Enrolled
            | DeviceAction::Recycle => None,
        }
    }

    /// Whether the action says the card may be in someone else's hands (lost, stolen, key
    /// compromise). Derived credentials follow the identity account, not the card (SP 800-157r1
    /// §2.3, §2.4), so only then are the ones it sponsored recently revoked: a thief could have
    /// used the card to obtain one. Damage, retirement, replacement or another revocation reason
    /// leave them alone.
    pub const fn revokes_recent_derived(self) -> bool {
        matches!(
            self,
            DeviceAction::MarkLost
                | DeviceAction::MarkStolen
                | DeviceAction::Revoke(RevocationReason::KeyCompromise)
                | DeviceAction::Revoke(RevocationReason::Lost)
                | DeviceAction::Revoke(RevocationReason::Stolen)
        )
    }
}

impl std::fmt::Display for DeviceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceAction::Revoke(r) => write!(f, "revoke ({r})"),
            other => f.write_str(other.kind().as_str()),
        }
    }
}

string_enum! {
    /// A credential action without its payload.
    pub enum CredentialActionKind ("credential action") {
        Activate = "activate",
        Hold = "hold",
        Release = "release",
        Revoke = "revoke",
        Expire = "expire",
        Supersede = "supersede",
    }
}

/// Something that happens to a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", content = "reason", rename_all = "snake_case")]
pub enum CredentialAction {
    Activate,
    /// Temporarily invalidate (certificateHold).
    Hold,
    /// Back to the state Hold came from.
    Release,
    Revoke(RevocationReason),
    /// `not_after` has passed.
    Expire,
    /// A renewed credential replaced it.
    Supersede,
}

impl CredentialAction {
    /// The payload-free kind.
    pub const fn kind(self) -> CredentialActionKind {
        match self {
            CredentialAction::Activate => CredentialActionKind::Activate,
            CredentialAction::Hold => CredentialActionKind::Hold,
            CredentialAction::Release => CredentialActionKind::Release,
            CredentialAction::Revoke(_) => CredentialActionKind::Revoke,
            CredentialAction::Expire => CredentialActionKind::Expire,
            CredentialAction::Supersede => CredentialActionKind::Supersede,
        }
    }
}

impl std::fmt::Display for CredentialAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialAction::Revoke(r) => write!(f, "revoke ({r})"),
            other => f.write_str(other.kind().as_str()),
        }
    }
}

/// Where a row of the table leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<S> {
    /// A fixed state.
    To(S),
    /// The state remembered by Suspend (devices) or Hold (credentials).
    Remembered,
}

/// A transition that happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition<S> {
    pub from: S,
    pub to: S,
}

/// A transition the table does not allow, or a record too inconsistent to transition.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LifecycleError {
    #[error("illegal transition: {action} is not allowed for a {class} device in state {from}")]
    IllegalTransition { class: DeviceClass, from: DeviceState, action: DeviceAction },
    #[error("illegal transition: {action} is not allowed for a credential in state {from}")]
    IllegalCredentialTransition { from: CredentialState, action: CredentialAction },
    #[error("device record is inconsistent: it is suspended but remembers {0:?} as the state to resume to")]
    BadSuspendedFrom(Option<DeviceState>),
    #[error(
        "credential record is inconsistent: it is on hold but remembers {0:?} as the state to release to"
    )]
    BadHeldFrom(Option<CredentialState>),
}

use DeviceActionKind as DA;
use DeviceClass::{Mobile as M, Token as T};
use DeviceState as DS;

/// The device transition table: `(class, from, action, to)`. Anything not listed is illegal.
pub const DEVICE_TRANSITIONS: &[(DeviceClass, DeviceState, DeviceActionKind, Target<DeviceState>)] = &[
    // Tokens (smart cards, USB keys).
    (T, DS::Available, DA::BeginIssuance, Target::To(DS::Issuing)),
    (T, DS::Available, DA::Terminate, Target::To(DS::Terminated)),
    (T, DS::Issuing, DA::Personalized, Target::To(DS::Pending)),
    (T, DS::Issuing, DA::IssuanceFailed, Target::To(DS::Failed)),
    (T, DS::Pending, DA::Activate, Target::To(DS::Active)),
    (T, DS::Pending, DA::Suspend, Target::To(DS::Suspended)),
    (T, DS::Pending, DA::Revoke, Target::To(DS::Revoked)),
    (T, DS::Pending, DA::MarkLost, Target::To(DS::Revoked)),
    (T, DS::Pending, DA::MarkStolen, Target::To(DS::Revoked)),
    (T, DS::Pending, DA::MarkDamaged, Target::To(DS::Revoked)),
    (T, DS::Pending, DA::Terminate, Target::To(DS::Terminated)),
    (T, DS::Active, DA::Suspend, Target::To(DS::Suspended)),
    (T, DS::Active, DA::Revoke, Target::To(DS::Revoked)),
    (T, DS::Active, DA::MarkLost, Target::To(DS::Revoked)),
    (T, DS::Active, DA::MarkStolen, Target::To(DS::Revoked)),
    (T, DS::Active, DA::MarkDamaged, Target::To(DS::Revoked)),
    (T, DS::Active, DA::Terminate, Target::To(DS::Terminated)),
    (T, DS::Suspended, DA::Resume, Target::Remembered),
    (T, DS::Suspended, DA::Revoke, Target::To(DS::Revoked)),
    (T, DS::Suspended, DA::MarkLost, Target::To(DS::Revoked)),
    (T, DS::Suspended, DA::MarkStolen, Target::To(DS::Revoked)),
    (T, DS::Suspended, DA::MarkDamaged, Target::To(DS::Revoked)),
    (T, DS::Suspended, DA::Terminate, Target::To(DS::Terminated)),
    (T, DS::Revoked, DA::Terminate, Target::To(DS::Terminated)),
    (T, DS::Terminated, DA::Recycle, Target::To(DS::Available)),
    (T, DS::Failed, DA::Recycle, Target::To(DS::Available)),
    (T, DS::Failed, DA::Terminate, Target::To(DS::Terminated)),
    // Mobiles.
    (M, DS::Enrolling, DA::Enrolled, Target::To(DS::Active)),
    (M, DS::Enrolling, DA::Delete, Target::To(DS::Deleted)),
    (M, DS::Active, DA::Suspend, Target::To(DS::Suspended)),
    (M, DS::Active, DA::Revoke, Target::To(DS::Revoked)),
    (M, DS::Active, DA::MarkLost, Target::To(DS::Revoked)),
    (M, DS::Active, DA::MarkStolen, Target::To(DS::Revoked)),
    (M, DS::Active, DA::MarkDamaged, Target::To(DS::Revoked)),
    (M, DS::Active, DA::Delete, Target::To(DS::Deleted)),
    (M, DS::Suspended, DA::Resume, Target::Remembered),
    (M, DS::Suspended, DA::Revoke, Target::To(DS::Revoked)),
    (M, DS::Suspended, DA::MarkLost, Target::To(DS::Revoked)),
    (M, DS::Suspended, DA::MarkStolen, Target::To(DS::Revoked)),
    (M, DS::Suspended, DA::MarkDamaged, Target::To(DS::Revoked)),
    (M, DS::Suspended, DA::Delete, Target::To(DS::Deleted)),
    (M, DS::Revoked, DA::Delete, Target::To(DS::Deleted)),
];

use CredentialActionKind as CA;
use CredentialState as CS;

/// The credential transition table: `(from, action, to)`. Anything not listed is illegal.
pub const CREDENTIAL_TRANSITIONS: &[(CredentialState, CredentialActionKind, Target<CredentialState>)] = &[
    (CS::Pending, CA::Activate, Target::To(CS::Active)),
    (CS::Pending, CA::Hold, Target::To(CS::OnHold)),
    (CS::Pending, CA::Revoke, Target::To(CS::Revoked)),
    (CS::Pending, CA::Expire, Target::To(CS::Expired)),
    (CS::Pending, CA::Supersede, Target::To(CS::Superseded)),
    (CS::Active, CA::Hold, Target::To(CS::OnHold)),
    (CS::Active, CA::Revoke, Target::To(CS::Revoked)),
    (CS::Active, CA::Expire, Target::To(CS::Expired)),
    (CS::Active, CA::Supersede, Target::To(CS::Superseded)),
    (CS::OnHold, CA::Release, Target::Remembered),
    (CS::OnHold, CA::Revoke, Target::To(CS::Revoked)),
    (CS::OnHold, CA::Expire, Target::To(CS::Expired)),
    (CS::OnHold, CA::Supersede, Target::To(CS::Superseded)),
];

/// The table's answer for a device transition, or `None` when it is illegal.
pub fn device_target(
    class: DeviceClass,
    from: DeviceState,
    action: DeviceActionKind,
) -> Option<Target<DeviceState>> {
    DEVICE_TRANSITIONS.iter().find(|(c, f, a, _)| *c == class && *f == from && *a == action).map(|row| row.3)
}

/// The table's answer for a credential transition, or `None` when it is illegal.
pub fn credential_target(
    from: CredentialState,
    action: CredentialActionKind,
) -> Option<Target<CredentialState>> {
    CREDENTIAL_TRANSITIONS.iter().find(|(f, a, _)| *f == from && *a == action).map(|row| row.2)
}

/// The actions the table allows for a device of `class` in `state` (for showing the right buttons).
pub fn allowed_device_actions(
    class: DeviceClass,
    state: DeviceState,
) -> impl Iterator<Item = DeviceActionKind> {
    DEVICE_TRANSITIONS.iter().filter(move |(c, f, _, _)| *c == class && *f == state).map(|row| row.2)
}

/// Whether `action` is legal for a credential in `state`.
/// The state a new certificate for a device in `device` starts in, or `None` when the device
/// takes no new certificates. Pending while the device's issuance is not confirmed (Issuing,
/// Pending: OCSP and the CRL report such certificates on hold), Active on an Active device. Every
/// enrolment path and every record step applies this one rule.
pub const fn new_certificate_state(device: DeviceState) -> Option<CredentialState> {
    match device {
        DeviceState::Issuing | DeviceState::Pending => Some(CredentialState::Pending),
        DeviceState::Active => Some(CredentialState::Active),
        _ => None,
    }
}

pub fn credential_action_allowed(state: CredentialState, action: CredentialAction) -> bool {
    credential_target(state, action.kind()).is_some()
}

/// Applies `action` to `device` at `at`, or returns an error and leaves `device` untouched.
pub fn apply_device(
    device: &mut Device,
    action: DeviceAction,
    at: OffsetDateTime,
) -> Result<Transition<DeviceState>, LifecycleError> {
    let class = device.class();
    let from = device.state;
    let illegal = LifecycleError::IllegalTransition { class, from, action };
    let to = match device_target(class, from, action.kind()).ok_or(illegal)? {
        Target::To(s) => s,
        Target::Remembered => match device.suspended_from {
            // Only a state Suspend could have come from is a believable memory.
            Some(s) if device_target(class, s, DA::Suspend).is_some() => s,
            other => return Err(LifecycleError::BadSuspendedFrom(other)),
        },
    };
    // Nothing below can fail: the change is all or nothing.
    match action {
        DeviceAction::Suspend => device.suspended_from = Some(from),
        DeviceAction::Recycle => {
            device.owner = None;
            device.card_guid = None;
            device.card_expires_at = None;
            device.revocation_reason = None;
            device.links.clear();
            device.suspended_from = None;
        }
        _ => device.suspended_from = None,
    }
    if let Some(reason) = action.revocation_reason() {
        device.revocation_reason = Some(reason);
    }
    device.state = to;
    device.updated_at = at;
    Ok(Transition { from, to })
}

/// Applies `action` to `credential` at `at`, or returns an error and leaves it untouched.
pub fn apply_credential(
    credential: &mut Credential,
    action: CredentialAction,
    at: OffsetDateTime,
) -> Result<Transition<CredentialState>, LifecycleError> {
    let from = credential.state;
    let illegal = LifecycleError::IllegalCredentialTransition { from, action };
    let to = match credential_target(from, action.kind()).ok_or(illegal)? {
        Target::To(s) => s,
        Target::Remembered => match credential.held_from {
            Some(s) if credential_target(s, CA::Hold).is_some() => s,
            other => return Err(LifecycleError::BadHeldFrom(other)),
        },
    };
    match action {
        CredentialAction::Hold => {
            credential.held_from = Some(from);
            credential.revoked_at = Some(at);
        }
        CredentialAction::Release => {
            credential.held_from = None;
            credential.revoked_at = None;
        }
        CredentialAction::Revoke(reason) => {
            credential.held_from = None;
            credential.revocation_reason = Some(reason);
            // A held credential has been invalid since the hold; keep that date.
            credential.revoked_at = Some(credential.revoked_at.unwrap_or(at));
        }
        CredentialAction::Activate | CredentialAction::Expire | CredentialAction::Supersede => {
            credential.held_from = None;
        }
    }
    credential.state = to;
    credential.updated_at = at;
    Ok(Transition { from, to })
}

/// The device table as Markdown (the form `docs/domain.md` shows; a test keeps them in step).
pub fn device_table_markdown() -> String {
    let mut out = String::from("| class | from | action | to |\n|---|---|---|---|\n");
    for (class, from, action, to) in DEVICE_TRANSITIONS {
        let to = match to {
            Target::To(s) => format!("`{s}`"),
            Target::Remembered => "the state it was suspended from".to_owned(),
        };
        out.push_str(&format!("| {class} | `{from}` | `{action}` | {to} |\n"));
    }
    out
}

/// The credential table as Markdown.
pub fn credential_table_markdown() -> String {
    let mut out = String::from("| from | action | to |\n|---|---|---|\n");
    for (from, action, to) in CREDENTIAL_TRANSITIONS {
        let to = match to {
            Target::To(s) => format!("`{s}`"),
            Target::Remembered => "the state it was held from".to_owned(),
        };
        out.push_str(&format!("| `{from}` | `{action}` | {to} |\n"));
    }
    out
}

#[cfg(test)]
mod tests;
