//! `lanyard-vcard`: a software PIV card with the YubiKey extensions, and its connection to pcscd
//! through the vsmartcard `vpcd` reader driver.

pub mod attestation;
pub mod card;
pub mod fido;
pub mod image;
pub mod keys;
pub mod vpcd;
pub mod x509;

pub use attestation::AttestationRoot;
pub use card::{NewCard, VirtualCard, atr};
pub use fido::state::FidoOptions;
pub use image::CardImage;
