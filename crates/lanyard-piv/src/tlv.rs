//! BER-TLV as used by ISO 7816-4 and SP 800-73: tags of one to three bytes, definite lengths of at
//! most three length octets (which covers every PIV object and extended APDU).

use thiserror::Error;

/// Why a byte string is not well-formed BER-TLV.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlvError {
    #[error("TLV truncated: needed {needed} more byte(s)")]
    Truncated { needed: usize },
    #[error("TLV tag longer than three bytes")]
    TagTooLong,
    #[error("TLV length uses the indefinite form (0x80), which PIV forbids")]
    IndefiniteLength,
    #[error("TLV length field 0x{0:02X} is not supported (at most three length octets)")]
    UnsupportedLength(u8),
    #[error("TLV length {length} exceeds the {available} byte(s) that follow")]
    LengthOverrun { length: usize, available: usize },
    #[error("expected tag {expected:#X}, found {found:#X}")]
    UnexpectedTag { expected: u32, found: u32 },
    #[error("required tag {0:#X} is missing")]
    MissingTag(u32),
    #[error("{0} trailing byte(s) after the last TLV")]
    Trailing(usize),
}

/// One decoded TLV borrowing its value from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u32,
    pub value: &'a [u8],
}

fn take(input: &[u8], n: usize) -> Result<(&[u8], &[u8]), TlvError> {
    if input.len() < n {
        return Err(TlvError::Truncated { needed: n - input.len() });
    }
    Ok(input.split_at(n))
}

/// Parses the tag at the start of `input`; returns it and the rest.
pub fn parse_tag(input: &[u8]) -> Result<(u32, &[u8]), TlvError> {
    let (first, mut rest) = take(input, 1)?;
    let mut tag = u32::from(first[0]);
    if first[0] & 0x1F == 0x1F {
        // Multi-byte tag: subsequent bytes carry b8 = "more follows".
        let mut count = 1;
        loop {
            let (b, r) = take(rest, 1)?;
            rest = r;
            count += 1;
            if count > 3 {
                return Err(TlvError::TagTooLong);
            }
            tag = (tag << 8) | u32::from(b[0]);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
    }
    Ok((tag, rest))
}

/// Parses a length field; returns it and the rest.
pub fn parse_length(input: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let (first, rest) = take(input, 1)?;
    match first[0] {
        l @ 0x00..=0x7F => Ok((usize::from(l), rest)),
        0x80 => Err(TlvError::IndefiniteLength),
        n @ 0x81..=0x83 => {
            let count = usize::from(n - 0x80);
            let (bytes, rest) = take(rest, count)?;
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            Ok((len, rest))
        }
        other => Err(TlvError::UnsupportedLength(other)),
    }
}

/// Parses one TLV from the start of `input`; returns it and what follows it.
pub fn parse_one(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (tag, rest) = parse_tag(input)?;
    let (len, rest) = parse_length(rest)?;
    if rest.len() < len {
        return Err(TlvError::LengthOverrun { length: len, available: rest.len() });
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Parses a whole byte string as a sequence of TLVs; trailing garbage is an error.
pub fn parse_all(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = parse_one(input)?;
        out.push(tlv);
        input = rest;
    }
    Ok(out)
}

/// Parses `input` as exactly one TLV with the given tag and returns its value.
pub fn expect_single(input: &[u8], tag: u32) -> Result<&[u8], TlvError> {
    let (tlv, rest) = parse_one(input)?;
    if tlv.tag != tag {
        return Err(TlvError::UnexpectedTag { expected: tag, found: tlv.tag });
    }
    if !rest.is_empty() {
        return Err(TlvError::Trailing(rest.len()));
    }
    Ok(tlv.value)
}

/// First TLV with `tag` among `tlvs`.
pub fn find<'a>(tlvs: &[Tlv<'a>], tag: u32) -> Option<&'a [u8]> {
    tlvs.iter().find(|t| t.tag == tag).map(|t| t.value)
}

/// Like [`find`] but a missing tag is an error.
pub fn require<'a>(tlvs: &[Tlv<'a>], tag: u32) -> Result<&'a [u8], TlvError> {
    find(tlvs, tag).ok_or(TlvError::MissingTag(tag))
}

/// Appends the encoding of `tag` (one to three bytes, big-endian without leading zeros).
pub fn encode_tag(tag: u32, out: &mut Vec<u8>) {
    let bytes = tag.to_be_bytes();
    let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends a definite length.
pub fn encode_length(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
    }
}

/// Appends `tag ‖ length ‖ value`.
pub fn encode(tag: u32, value: &[u8], out: &mut Vec<u8>) {
    encode_tag(tag, out);
    encode_length(value.len(), out);
    out.extend_from_slice(value);
}

/// Returns `tag ‖ length ‖ value` as a new vector.
pub fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    encode(tag, value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_multibyte_tags_and_long_lengths() {
        let value = vec![0xAB; 300];
        let enc = tlv(0x5FC105, &value);
        assert_eq!(&enc[..6], &[0x5F, 0xC1, 0x05, 0x82, 0x01, 0x2C]);
        let (t, rest) = parse_one(&enc).unwrap();
        assert_eq!(t.tag, 0x5FC105);
        assert_eq!(t.value, &value[..]);
        assert!(rest.is_empty());
    }

    #[test]
    fn rejects_bad_forms() {
        assert_eq!(parse_one(&[0x53, 0x80]), Err(TlvError::IndefiniteLength));
        assert_eq!(parse_one(&[0x53, 0x84, 0, 0, 0, 1]), Err(TlvError::UnsupportedLength(0x84)));
        assert_eq!(parse_one(&[0x5F, 0xC1, 0x85, 0x81]), Err(TlvError::TagTooLong));
        assert_eq!(parse_one(&[0x53, 0x03, 0x01]), Err(TlvError::LengthOverrun { length: 3, available: 1 }));
        assert_eq!(parse_one(&[]), Err(TlvError::Truncated { needed: 1 }));
        assert_eq!(expect_single(&[0x53, 0x00, 0x00], 0x53), Err(TlvError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn roundtrip(tag in prop_oneof![0x01u32..0x1F, Just(0x7F49u32), Just(0x5FC102u32), Just(0x7Eu32)],
                     value in proptest::collection::vec(any::<u8>(), 0..70000)) {
            let enc = tlv(tag, &value);
            let parsed = expect_single(&enc, tag).unwrap();
            prop_assert_eq!(parsed, &value[..]);
        }

        #[test]
        fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(all) = parse_all(&input) {
                // Re-encoding what parsed must not be longer than the input (minimal lengths only shrink).
                let mut out = Vec::new();
                for t in &all { encode(t.tag, t.value, &mut out); }
                prop_assert!(out.len() <= input.len());
            }
        }
    }
}
