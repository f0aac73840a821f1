//! Feeds arbitrary bytes to the BER-TLV parser and every PIV object decoder. Besides "never
//! panics", whatever decodes must survive encode → decode unchanged.
#![no_main]

use lanyard_piv::objects::{Ccc, CertificateObject, Chuid, Discovery, FascN, KeyHistory, PrintedInformation};
use lanyard_piv::tlv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(all) = tlv::parse_all(data) {
        for t in &all {
            let enc = tlv::tlv(t.tag, t.value);
            assert_eq!(tlv::expect_single(&enc, t.tag).expect("re-encoded TLV parses"), t.value);
        }
    }
    let _ = tlv::parse_one(data);

    if let Ok(chuid) = Chuid::decode(data) {
        let mut plain = chuid.clone();
        plain.other.clear();
        assert_eq!(Chuid::decode(&plain.encode()).expect("CHUID re-decodes"), plain);
        let _ = chuid.parsed_fasc_n();
        let _ = Chuid::signed_content_of(data).expect("signed content of a valid CHUID");
    }
    if let Ok(ccc) = Ccc::decode(data) {
        assert_eq!(Ccc::decode(&ccc.encode()).expect("CCC re-decodes"), ccc);
    }
    if let Ok(d) = Discovery::decode(data) {
        assert_eq!(Discovery::decode(&d.encode()).expect("discovery re-decodes"), d);
    }
    if let Ok(cert) = CertificateObject::decode(data) {
        assert_eq!(CertificateObject::decode(&cert.encode(false)).expect("plain re-decodes"), cert);
        assert_eq!(CertificateObject::decode(&cert.encode(true)).expect("gzip re-decodes"), cert);
    }
    if let Ok(kh) = KeyHistory::decode(data) {
        assert_eq!(KeyHistory::decode(&kh.encode()).expect("key history re-decodes"), kh);
    }
    if let Ok(pi) = PrintedInformation::decode(data) {
        // Decoding is lenient where encoding validates; only a valid value must round-trip.
        if let Ok(enc) = pi.encode() {
            assert_eq!(PrintedInformation::decode(&enc).expect("printed information re-decodes"), pi);
        }
    }
    if let Ok(f) = FascN::from_bytes(data) {
        assert_eq!(&f.to_bytes()[..], data);
        let text = f.to_string();
        assert_eq!(text.parse::<FascN>().expect("FASC-N text parses"), f);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(f) = text.parse::<FascN>()
    {
        assert_eq!(FascN::from_bytes(&f.to_bytes()).expect("packed FASC-N unpacks"), f);
    }
});
