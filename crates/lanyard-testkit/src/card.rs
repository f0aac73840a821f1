//! Software PIV cards in this process, and what they hold.

use std::collections::BTreeMap;

use lanyard_core::clock::{Clock, SystemClock};
use lanyard_core::model::{CertSlot, Credential, CredentialKind};
use lanyard_piv::objects::CertificateObject;
use lanyard_piv::{InProcess, Piv};
use lanyard_vcard::{AttestationRoot, NewCard, VirtualCard};

use crate::server::TestServer;

/// A software card driven in process, no pcscd.
pub type VCard = Piv<InProcess<VirtualCard>>;

/// The PIV data object holding each slot's certificate (SP 800-73-5 table 3).
pub const CERTIFICATE_OBJECTS: [(CertSlot, u32); 4] = [
    (CertSlot::PivAuthentication, 0x5FC105),
    (CertSlot::DigitalSignature, 0x5FC10A),
    (CertSlot::KeyManagement, 0x5FC10B),
    (CertSlot::CardAuthentication, 0x5FC101),
];

/// A factory-fresh card (default PIN, PUK and management key) with its own serial, attested
/// under `root`.
pub fn factory_card(root: &AttestationRoot) -> VCard {
    let now = SystemClock.now().into();
    let image = VirtualCard::new_image(root, &NewCard::default(), now).expect("a card image");
    Piv::new(InProcess(VirtualCard::from_image(image).expect("the image opens")))
}

impl TestServer {
    /// A factory-fresh card whose attestation the server trusts.
    pub fn plug_card(&self) -> VCard {
        factory_card(&self.attestation_root)
    }
}

/// Pulls the card and puts it back: the PIN and management key are no longer verified.
pub fn power_cycle(card: &mut VCard) {
    card.transport_mut().0.reset_session();
}

/// The certificates on the card, by slot (empty slots are left out). Selects PIV first.
pub fn card_certificates(card: &mut VCard) -> BTreeMap<CertSlot, Vec<u8>> {
    card.select().expect("SELECT PIV");
    let mut out = BTreeMap::new();
    for (slot, tag) in CERTIFICATE_OBJECTS {
        if let Some(object) = card.try_get_data(tag).expect("GET DATA") {
            let cert = CertificateObject::decode(&object).expect("a certificate object");
            out.insert(slot, cert.der);
        }
    }
    out
}

/// The certificates the server recorded for a device, by slot.
pub fn recorded_certificates(credentials: &[Credential]) -> BTreeMap<CertSlot, Vec<u8>> {
    credentials
        .iter()
        .map(|c| match &c.kind {
            CredentialKind::Certificate { slot, certificate_der, .. } => (*slot, certificate_der.clone()),
        })
        .collect()
}
