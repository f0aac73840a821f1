//! Feeds arbitrary bytes to the SCEP server's message layer: the BER normaliser and the
//! PKIMessage parser (signature check, envelope opening with a real RSA RA key, inner content).
//!
//! Checked: no panic; whatever the normaliser accepts is DER it leaves unchanged the second time;
//! a FAILURE the parser reports can be answered with a signed CertRep.
#![no_main]

use lanyard_ca::hierarchy::{HierarchySpec, SignerCredential, issue_scep_ra};
use lanyard_ca::scep::{self, RaKey, Reply, RequestError};
use lanyard_ca::{CaUrls, Hierarchy, KeyAlgorithm, SoftwareKey, parse_dn};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn ra() -> &'static SignerCredential<RaKey> {
    static RA: OnceLock<SignerCredential<RaKey>> = OnceLock::new();
    RA.get_or_init(|| {
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let urls = CaUrls::new("http://fuzz.invalid").expect("urls");
        let spec = HierarchySpec::new("Fuzz", KeyAlgorithm::EcP256, urls).expect("spec");
        let h = Hierarchy::generate(&spec, now).expect("hierarchy");
        let key = RaKey::new(SoftwareKey::generate(KeyAlgorithm::Rsa2048).expect("RSA key")).expect("RA key");
        issue_scep_ra(&h.issuing, key, parse_dn("CN=Fuzz SCEP RA").expect("dn"), now, 30).expect("RA")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = scep::ber::to_der(data) {
        assert_eq!(scep::ber::to_der(&der).as_deref(), Ok(der.as_slice()), "normalising DER changed it");
    }
    let ra = ra();
    match scep::parse_request(data, &ra.key, &ra.certificate.certificate) {
        Ok(_) | Err(RequestError::Unreadable(_)) => {}
        Err(RequestError::Failed { header, failure }) => {
            scep::cert_rep(&ra.key, &ra.certificate.der, &header, &Reply::Failure(&failure))
                .expect("a FAILURE can always be signed");
        }
    }
});
