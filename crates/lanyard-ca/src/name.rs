//! Distinguished names.
//!
//! [`parse_dn`] reads an RFC 4514 string with x509-cert's parser, then re-encodes values the way the
//! FPKI profile asks: PrintableString wherever the value fits its character set, UTF8String
//! otherwise, IA5String for emailAddress; and it enforces the RFC 5280 upper bounds so a name that
//! validators would reject is refused here with a clear message.

use std::str::FromStr;

use der::asn1::{Any, Ia5StringRef, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use der::{Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use crate::error::CaError;

const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
const C: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
const L: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.7");
const ST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.8");
const O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
const EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

/// RFC 5280 Appendix A upper bounds (in characters).
fn upper_bound(oid: ObjectIdentifier) -> Option<usize> {
    match oid {
        o if o == CN || o == O || o == OU || o == SERIAL_NUMBER => Some(64),
        o if o == L || o == ST => Some(128),
        o if o == C => Some(2),
        o if o == EMAIL_ADDRESS => Some(255),
        _ => None,
    }
}

/// PrintableString's character set (X.680 §41.4).
fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b))
}

/// Parses an RFC 4514 DN such as `CN=Jane Doe,OU=People,O=Example,C=US` (most significant RDN
/// last, as RFC 4514 writes it). The empty string is the empty name.
pub fn parse_dn(input: &str) -> Result<Name, CaError> {
    let invalid = |reason: String| CaError::InvalidName { input: input.to_string(), reason };
    if input.trim().is_empty() {
        return Ok(Name::default());
    }
    let parsed = RdnSequence::from_str(input).map_err(|e| invalid(e.to_string()))?;
    let mut rdns = Vec::with_capacity(parsed.0.len());
    for rdn in parsed.0 {
        let mut atvs = Vec::with_capacity(rdn.0.len());
        for atv in rdn.0.iter() {
            atvs.push(normalise(atv).map_err(&invalid)?);
        }
        rdns.push(RelativeDistinguishedName::try_from(atvs).map_err(|e| invalid(e.to_string()))?);
    }
    Ok(RdnSequence(rdns))
}

/// The name `CN=<value>` for a value taken verbatim (a person's display name), without going
/// through RFC 4514 escaping: every character (a backslash, `,`, `+`, a leading `#`) is part
/// of the value. Encoded and bounded like [`parse_dn`]'s values.
pub fn common_name(value: &str) -> Result<Name, CaError> {
    let invalid = |reason: String| CaError::InvalidName { input: format!("CN={value}"), reason };
    let raw = Any::new(Tag::Utf8String, value.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let atv = normalise(&AttributeTypeAndValue { oid: CN, value: raw }).map_err(&invalid)?;
    let rdn = RelativeDistinguishedName::try_from(vec![atv]).map_err(|e| invalid(e.to_string()))?;
    Ok(RdnSequence(vec![rdn]))
}

fn normalise(atv: &AttributeTypeAndValue) -> Result<AttributeTypeAndValue, String> {
    let text: &str = match atv.value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(&atv.value).map_err(|e| e.to_string())?.as_str(),
        Tag::PrintableString => PrintableStringRef::try_from(&atv.value).map_err(|e| e.to_string())?.as_str(),
        Tag::Ia5String => Ia5StringRef::try_from(&atv.value).map_err(|e| e.to_string())?.as_str(),
        // Hex-encoded (#...) values are kept as given.
        _ => return Ok(atv.clone()),
    };
    if text.is_empty() {
        return Err(format!("attribute {} has an empty value", atv.oid));
    }
    if let Some(max) = upper_bound(atv.oid)
        && text.chars().count() > max
    {
        return Err(format!("attribute {} is longer than {max} characters", atv.oid));
    }
    let value = if atv.oid == EMAIL_ADDRESS {
        if !text.is_ascii() {
            return Err("emailAddress must be ASCII (IA5String)".into());
        }
        Any::new(Tag::Ia5String, text.as_bytes()).map_err(|e| e.to_string())?
    } else if atv.oid == C {
        if text.len() != 2 || !text.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err("countryName must be a two-letter ISO 3166 code in capitals".into());
        }
        Any::new(Tag::PrintableString, text.as_bytes()).map_err(|e| e.to_string())?
    } else if is_printable(text) {
        Any::new(Tag::PrintableString, text.as_bytes()).map_err(|e| e.to_string())?
    } else if atv.value.tag() == Tag::Ia5String {
        atv.value.clone()
    } else {
        Any::new(Tag::Utf8String, text.as_bytes()).map_err(|e| e.to_string())?
    };
    Ok(AttributeTypeAndValue { oid: atv.oid, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn a_common_name_is_taken_verbatim() {
        for value in [r"O'Brien, Pat", r"#1 \ fan+co", "Zoë Ünal"] {
            let n = common_name(value).unwrap();
            let atv = n.0[0].0.iter().next().unwrap();
            assert_eq!(atv.oid, CN);
            let text = match atv.value.tag() {
                Tag::PrintableString => PrintableStringRef::try_from(&atv.value).unwrap().as_str(),
                _ => Utf8StringRef::try_from(&atv.value).unwrap().as_str(),
            };
            assert_eq!(text, value);
        }
        assert_eq!(
            common_name("Jane Doe").unwrap().0[0].0.iter().next().unwrap().value.tag(),
            Tag::PrintableString
        );
        assert!(common_name(&"x".repeat(65)).unwrap_err().to_string().contains("longer than 64"));
    }

    #[test]
    fn printable_where_possible() {
        let n = parse_dn("CN=Jane Doe,O=Example Agency,C=US").unwrap();
        assert_eq!(n.to_string(), "CN=Jane Doe,O=Example Agency,C=US");
        for rdn in n.0.iter() {
            for atv in rdn.0.iter() {
                assert_eq!(atv.value.tag(), Tag::PrintableString);
            }
        }
        let n = parse_dn("CN=Zoë Ørsted").unwrap();
        assert_eq!(n.0[0].0.get(0).unwrap().value.tag(), Tag::Utf8String);
        assert_eq!(parse_dn("").unwrap().to_der().unwrap(), vec![0x30, 0x00]);
    }

    #[test]
    fn bounds_enforced() {
        assert!(parse_dn(&format!("CN={}", "x".repeat(65))).is_err());
        assert!(parse_dn("C=USA").is_err());
        assert!(parse_dn("garbage").is_err());
    }
}
