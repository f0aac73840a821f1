//! Feeds arbitrary bytes to the app enrolment protocol's request parsers (the bodies of
//! /api/v1/mobile/*) and the link parser. Besides "never panics": whatever parses is within the
//! protocol's limits, and a checked code passes the check again unchanged.
#![no_main]

use lanyard_protocol::mobile::{self, Attestation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = mobile::parse_redeem(data) {
        assert_eq!(mobile::check_code(&r.code).as_deref(), Ok(r.code.as_str()));
        assert!(!r.model.is_empty() && r.model.chars().count() <= mobile::MAX_MODEL);
    }
    if let Ok(c) = mobile::parse_certificate(data) {
        assert!(c.code.len() <= mobile::MAX_CODE && !c.csr.is_empty());
        match c.attestation {
            Some(Attestation::AndroidKey { chain }) => assert!((1..=8).contains(&chain.len())),
            Some(Attestation::AppleAppAttest { key_id, .. }) => assert_eq!(key_id.len(), 32),
            None => {}
        }
    }
    if let Ok(code) = mobile::parse_code_request(data) {
        assert_eq!(mobile::check_code(&code).as_deref(), Ok(code.as_str()));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(link) = mobile::parse_link(text)
    {
        let again = mobile::parse_link(&format!("{}/m/{}", link.server, link.code)).expect("a link re-parses");
        assert_eq!(again, link);
    }
});
