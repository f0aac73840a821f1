//! Reading a serial number an operator typed or pasted: a device's manufacturer serial (printed
//! in decimal on a YubiKey, often shown in hex by other tools) or a certificate's serial (hex,
//! often with colons as `openssl x509 -text` prints it).
//!
//! [`SerialSearch::parse`] tolerates what pasting brings along (spaces, tabs, line breaks,
//! non-breaking spaces, colons between hex bytes, a `0x` prefix, either case) and answers every
//! spelling the stores should look for: the text as written, and for a number its other base.
//! Certificate serials are stored as lowercase hex without leading zeros
//! (`lanyard_issuance::rules::serial_hex`), so that is the form given for them.

use std::collections::BTreeSet;

/// Longest serial text considered, after removing white space (a certificate serial is at most
/// 20 bytes, 40 hex digits; with colons 59 characters).
pub const MAX_SERIAL_TEXT: usize = 64;

/// The spellings to look up for one typed serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialSearch {
    /// Device serials to match, ignoring case: lowercase.
    pub device_serials: Vec<String>,
    /// Certificate serials to match: lowercase hex of whole bytes, no leading zero bytes.
    pub certificate_serials: Vec<String>,
}

impl SerialSearch {
    /// The spellings of `text`, or `None` when it cannot be a serial (empty, longer than
    /// [`MAX_SERIAL_TEXT`], or with characters no serial has).
    pub fn parse(text: &str) -> Option<Self> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
        if compact.is_empty() || compact.chars().count() > MAX_SERIAL_TEXT {
            return None;
        }
        if !compact.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')) {
            return None;
        }
        let mut devices = BTreeSet::new();
        let mut certificates = BTreeSet::new();
        devices.insert(compact.clone());

        let unprefixed = compact.strip_prefix("0x");
        let digits: String = unprefixed.unwrap_or(&compact).chars().filter(|c| *c != ':').collect();
        let is_hex = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit());
        let is_decimal =
            unprefixed.is_none() && !compact.contains(':') && digits.chars().all(|c| c.is_ascii_digit());
        if is_hex {
            devices.insert(digits.clone());
            certificates.insert(stored_form(&digits));
            // A hex number short enough for the device serials tools print in decimal.
            if let Ok(n) = u128::from_str_radix(&digits, 16) {
                devices.insert(n.to_string());
            }
        }
        if is_decimal && let Ok(n) = digits.parse::<u128>() {
            let hex = format!("{n:x}");
            certificates.insert(stored_form(&hex));
            devices.insert(hex);
        }
        Some(Self {
            device_serials: devices.into_iter().collect(),
            certificate_serials: certificates.into_iter().collect(),
        })
    }
}

/// Hex digits as the stores keep certificate serials: whole bytes, leading zero bytes dropped
/// (one byte is kept for zero).
fn stored_form(hex: &str) -> String {
    let mut s = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex.to_owned() };
    while s.len() > 2 && s.starts_with("00") {
        s.drain(..2);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimal_serials_are_also_looked_up_in_hex() {
        let s = SerialSearch::parse(" 1234 5678\n").unwrap();
        assert!(s.device_serials.contains(&"12345678".to_owned()));
        assert!(s.device_serials.contains(&"bc614e".to_owned()));
        assert!(s.certificate_serials.contains(&"bc614e".to_owned()));
        // Digits alone are also valid hex.
        assert!(s.certificate_serials.contains(&"12345678".to_owned()));
    }

    #[test]
    fn hex_with_colons_and_prefix_is_read() {
        let s = SerialSearch::parse("00:1A:2b:3C").unwrap();
        assert_eq!(s.certificate_serials, ["1a2b3c"]);
        assert_eq!(SerialSearch::parse("0A BC").unwrap().certificate_serials, ["0abc"]);
        assert_eq!(SerialSearch::parse("abc").unwrap().certificate_serials, ["0abc"]);
        assert!(s.device_serials.contains(&"001a2b3c".to_owned()));
        assert!(s.device_serials.contains(&(0x1a2b3c_u32).to_string()));
        let s = SerialSearch::parse("0xBC614E").unwrap();
        assert!(s.device_serials.contains(&"12345678".to_owned()));
        assert_eq!(s.certificate_serials, ["bc614e"]);
    }

    #[test]
    fn other_serials_match_as_written() {
        let s = SerialSearch::parse("SN-2").unwrap();
        assert_eq!(s.device_serials, ["sn-2"]);
        assert!(s.certificate_serials.is_empty());
    }

    #[test]
    fn non_serials_are_refused() {
        for bad in ["", "   ", "alice@example.org", "a\"b", "x".repeat(MAX_SERIAL_TEXT + 1).as_str(), "名前"]
        {
            assert_eq!(SerialSearch::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_judged_without_panicking(s in "\\PC{0,80}") {
            if let Some(found) = SerialSearch::parse(&s) {
                prop_assert!(!found.device_serials.is_empty());
                for c in &found.certificate_serials {
                    prop_assert!(c.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
                    prop_assert!(c.len() % 2 == 0 && (c.len() == 2 || !c.starts_with("00")));
                }
            }
        }

        #[test]
        fn spaces_pasted_anywhere_change_nothing(n in any::<u64>(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let plain = n.to_string();
            let mut spaced = plain.clone();
            for cut in cuts {
                let at = cut.index(spaced.len() + 1);
                if spaced.is_char_boundary(at) {
                    spaced.insert(at, ' ');
                }
            }
            prop_assert_eq!(SerialSearch::parse(&spaced), SerialSearch::parse(&plain));
        }

        #[test]
        fn a_number_is_found_in_either_base(n in any::<u64>()) {
            let from_decimal = SerialSearch::parse(&n.to_string()).unwrap();
            let from_hex = SerialSearch::parse(&format!("0x{n:X}")).unwrap();
            let hex = format!("{n:x}");
            let stored = stored_form(&hex);
            prop_assert!(from_decimal.device_serials.contains(&hex));
            prop_assert!(from_hex.device_serials.contains(&n.to_string()));
            prop_assert!(from_hex.certificate_serials.contains(&stored));
        }

        #[test]
        fn colon_separated_bytes_give_the_stored_certificate_form(bytes in proptest::collection::vec(any::<u8>(), 1..20)) {
            let text = bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
            let stored: String = {
                let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
                bytes[start..].iter().map(|b| format!("{b:02x}")).collect()
            };
            let found = SerialSearch::parse(&text).unwrap();
            prop_assert!(found.certificate_serials.contains(&stored));
        }
    }
}
