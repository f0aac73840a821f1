//! Lanyard's issuance service: one place for the rules that turn *(device, holder, slot, key,
//! channel)* into a certificate, below HTTP and below the agent channel.
//!
//! Every enrolment path — a server-driven card session, an operator's CSR through the API, and
//! next SCEP, derived PIV, mobile-app CSRs and in-person issuance — builds an [`Enrolment`] with
//! what is particular to it (its [`Channel`]) and calls [`plan`]; the rules for the profile, the
//! subject, the SANs (FASC-N, card UUID, e-mail), the validity and its cap at the card's expiry,
//! the key algorithm, the attestation requirement and the credential's initial state are applied
//! here and nowhere else. [`sign`] then has the CA sign the plan *outside* any database
//! transaction; the caller records the result in a unit of work that re-checks the device (see
//! `Operator::record_certificate` and `System::record_issued` in `lanyard-core`).
//!
//! [`session`] drives a card session over an [`AgentLink`]: personalization (whose certificates
//! come from the same rules), rollback, wipe and PIN unblock, each step recorded so a broken
//! session resumes or rolls back.
//!
//! [`sponsor`] drives the sponsor proof of a derived PIV enrolment (the holder's card verifies
//! its PIN and signs a challenge) and checks the card's certificate: path, revocation, owner.
//!
//! [`status`] maps a credential's lifecycle state to what OCSP and the CRL say about it.

pub mod card;
pub mod fido;
pub mod rules;
pub mod service;
pub mod session;
pub mod sponsor;
pub mod status;

pub use card::{CARD_VALIDITY_DAYS, card_expiry, chuid_expiration, fasc_n};
pub use rules::{Channel, Enrolment, IssuanceError, Plan, Signed, plan, sign};
pub use service::{EnrolError, sign_for_mobile, sign_for_operator};
pub use session::{
    AgentLink, Authority, CardSession, PinAnswer, STEP_PIN_BLOCKED, STEP_PIN_WRONG, SessionError,
};
