//! BER → DER, for the forms SCEP clients actually send.
//!
//! Apple devices and `openssl cms -stream` write indefinite lengths and split OCTET STRINGs into
//! constructed chunks; Go clients write long-form lengths where a short one would do. The `der`
//! crate, rightly, refuses all of that, so messages pass through [`to_der`] first, which rewrites:
//!
//! - every indefinite length into a definite, minimal one;
//! - every non-minimal definite length into the minimal one;
//! - every constructed universal OCTET STRING (tag `24`) into one primitive OCTET STRING holding
//!   the concatenated chunks.
//!
//! It knows no schema: a context-specific constructed element stays constructed (an `[0]
//! IMPLICIT OCTET STRING` sent in chunks, as CMS encryptedContent can be, is left for the parser
//! that knows the field). Everything else is copied byte for byte. Depth and size are bounded,
//! and every malformed input is an error, never a panic.

use thiserror::Error;

/// Deepest nesting accepted. CMS messages nest about fifteen levels; certificates inside them a
/// few more.
pub const MAX_DEPTH: u32 = 48;

/// Largest input accepted: SCEP messages hold one request or certificate and are a few KiB.
pub const MAX_INPUT: usize = 512 * 1024;

/// Why an input is not BER this normaliser accepts. Offsets count from the start of the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BerError {
    #[error("empty input")]
    Empty,
    #[error("input of {0} bytes is larger than the {MAX_INPUT} accepted")]
    TooLarge(usize),
    #[error("nested deeper than {MAX_DEPTH} levels at offset {0}")]
    TooDeep(usize),
    #[error("truncated element at offset {0}")]
    Truncated(usize),
    #[error("tag number too long at offset {0}")]
    TagTooLong(usize),
    #[error("length field of more than 4 bytes at offset {0}")]
    LengthTooLong(usize),
    #[error("indefinite length on a primitive element at offset {0}")]
    IndefinitePrimitive(usize),
    #[error("end-of-contents marker outside an indefinite-length element at offset {0}")]
    StrayEndOfContents(usize),
    #[error("malformed end-of-contents marker at offset {0}")]
    BadEndOfContents(usize),
    #[error("a constructed OCTET STRING holds something other than OCTET STRINGs at offset {0}")]
    BadOctetStringChunk(usize),
    #[error("{0} bytes after the end of the element")]
    TrailingData(usize),
}

/// The normalised DER encoding of the single BER element `input` holds.
pub fn to_der(input: &[u8]) -> Result<Vec<u8>, BerError> {
    if input.is_empty() {
        return Err(BerError::Empty);
    }
    if input.len() > MAX_INPUT {
        return Err(BerError::TooLarge(input.len()));
    }
    let mut parser = Parser { input, pos: 0 };
    let mut out = Vec::with_capacity(input.len());
    match parser.element(0, &mut out)? {
        Parsed::Element => {}
        Parsed::EndOfContents => return Err(BerError::StrayEndOfContents(0)),
    }
    if parser.pos != input.len() {
        return Err(BerError::TrailingData(input.len() - parser.pos));
    }
    Ok(out)
}

/// Appends a DER length.
pub(crate) fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Fits in seven bits.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        // A usize has at most 16 bytes, so the count fits in the low seven bits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

enum Parsed {
    Element,
    EndOfContents,
}

enum Length {
    Definite(usize),
    Indefinite,
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

const UNIVERSAL_OCTET_STRING: u8 = 0x04;
const CONSTRUCTED_OCTET_STRING: u8 = 0x24;
const CONSTRUCTED: u8 = 0x20;

impl Parser<'_> {
    fn byte(&mut self) -> Result<u8, BerError> {
        let b = *self.input.get(self.pos).ok_or(BerError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads identifier octets; returns them as they are (DER keeps the tag as encoded).
    fn tag(&mut self) -> Result<(usize, usize), BerError> {
        let start = self.pos;
        let first = self.byte()?;
        if first & 0x1f == 0x1f {
            // High tag number form: base-128 continuation bytes. Four cover any tag in use.
            let mut count = 0;
            loop {
                let b = self.byte()?;
                count += 1;
                if count > 4 {
                    return Err(BerError::TagTooLong(start));
                }
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        Ok((start, self.pos))
    }

    fn length(&mut self) -> Result<Length, BerError> {
        let at = self.pos;
        let first = self.byte()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            return Ok(Length::Indefinite);
        } else {
            let count = usize::from(first & 0x7f);
            if count > 4 {
                return Err(BerError::LengthTooLong(at));
            }
            let mut len = 0usize;
            for _ in 0..count {
                len = (len << 8) | usize::from(self.byte()?);
            }
            len
        };
        if len > self.input.len() - self.pos {
            return Err(BerError::Truncated(at));
        }
        Ok(Length::Definite(len))
    }

    /// Parses one element at `self.pos` and appends its DER form to `out`.
    fn element(&mut self, depth: u32, out: &mut Vec<u8>) -> Result<Parsed, BerError> {
        let start = self.pos;
        if depth > MAX_DEPTH {
            return Err(BerError::TooDeep(start));
        }
        let (tag_start, tag_end) = self.tag()?;
        let first = self.input[tag_start];
        let length = self.length()?;
        if first == 0x00 {
            // End-of-contents is the two bytes 00 00; the caller decides whether it is allowed.
            return match (tag_end - tag_start, length) {
                (1, Length::Definite(0)) => Ok(Parsed::EndOfContents),
                _ => Err(BerError::BadEndOfContents(start)),
            };
        }
        let constructed = first & CONSTRUCTED != 0;
        if !constructed {
            let Length::Definite(len) = length else {
                return Err(BerError::IndefinitePrimitive(start));
            };
            let content = &self.input[self.pos..self.pos + len];
            self.pos += len;
            out.extend_from_slice(&self.input[tag_start..tag_end]);
            push_length(out, len);
            out.extend_from_slice(content);
            return Ok(Parsed::Element);
        }

        let mut children = Vec::new();
        let flatten = first == CONSTRUCTED_OCTET_STRING && tag_end - tag_start == 1;
        match length {
            Length::Definite(len) => {
                // Children are read from a view that ends where this element ends, so none can
                // run past it.
                let end = self.pos + len;
                let mut inner = Parser { input: &self.input[..end], pos: self.pos };
                while inner.pos < end {
                    let child_at = inner.pos;
                    match inner.element(depth + 1, &mut children)? {
                        Parsed::Element => {}
                        Parsed::EndOfContents => return Err(BerError::StrayEndOfContents(child_at)),
                    }
                }
                self.pos = end;
            }
            Length::Indefinite => loop {
                if self.pos >= self.input.len() {
                    return Err(BerError::Truncated(start));
                }
                if let Parsed::EndOfContents = self.element(depth + 1, &mut children)? {
                    break;
                }
            },
        }
        if flatten {
            let content = octet_string_chunks(&children).ok_or(BerError::BadOctetStringChunk(start))?;
            out.push(UNIVERSAL_OCTET_STRING);
            push_length(out, content.len());
            out.extend_from_slice(&content);
        } else {
            out.extend_from_slice(&self.input[tag_start..tag_end]);
            push_length(out, children.len());
            out.extend_from_slice(&children);
        }
        Ok(Parsed::Element)
    }
}

/// The concatenated contents of a run of DER OCTET STRINGs (nested constructed chunks were
/// already flattened into primitive ones), or `None` when something else is among them.
pub(crate) fn octet_string_chunks(der: &[u8]) -> Option<Vec<u8>> {
    let mut content = Vec::with_capacity(der.len());
    let mut rest = der;
    while !rest.is_empty() {
        let (tag, value, after) = split_tlv(rest)?;
        if tag != UNIVERSAL_OCTET_STRING {
            return None;
        }
        content.extend_from_slice(value);
        rest = after;
    }
    Some(content)
}

/// Splits the first DER TLV (single-byte tag) off `der`: (tag, value, rest).
pub(crate) fn split_tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut len = 0usize;
        for b in &rest[..count] {
            len = (len << 8) | usize::from(*b);
        }
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (value, after) = rest.split_at(len);
    Some((tag, value, after))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn indefinite_lengths_and_chunked_octet_strings_become_der() {
        // SEQUENCE (indefinite) { OCTET STRING constructed (indefinite) { "ab", "c" }, INTEGER 5 }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x02, 0x01, 0x05,
            0x00, 0x00,
        ];
        let der = [0x30, 0x08, 0x04, 0x03, b'a', b'b', b'c', 0x02, 0x01, 0x05];
        assert_eq!(to_der(&ber).unwrap(), der);
        assert_eq!(to_der(&der).unwrap(), der);
    }

    #[test]
    fn long_form_lengths_are_made_minimal_and_context_tags_stay_constructed() {
        // [0] constructed with a long-form length 81 03, holding OCTET STRING 82 00 01 'x'.
        let ber = [0xa0, 0x81, 0x05, 0x04, 0x82, 0x00, 0x01, b'x'];
        assert_eq!(to_der(&ber).unwrap(), [0xa0, 0x03, 0x04, 0x01, b'x']);
    }

    #[test]
    fn malformed_inputs_are_precise_errors() {
        assert_eq!(to_der(&[]), Err(BerError::Empty));
        assert_eq!(to_der(&[0x04, 0x80, 0x00, 0x00]), Err(BerError::IndefinitePrimitive(0)));
        assert_eq!(to_der(&[0x30, 0x80, 0x02, 0x01, 0x01]), Err(BerError::Truncated(0)));
        assert_eq!(to_der(&[0x30, 0x02, 0x00, 0x00]), Err(BerError::StrayEndOfContents(2)));
        assert_eq!(to_der(&[0x04, 0x01, 0x41, 0x00]), Err(BerError::TrailingData(1)));
        assert_eq!(to_der(&[0x04, 0x85, 1, 0, 0, 0, 0]), Err(BerError::LengthTooLong(1)));
        assert_eq!(to_der(&[0x24, 0x03, 0x02, 0x01, 0x00]), Err(BerError::BadOctetStringChunk(0)));
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        assert!(matches!(to_der(&deep), Err(BerError::TooDeep(_))));
    }

    /// A BER tree to encode in several ways.
    #[derive(Debug, Clone)]
    enum Node {
        Primitive(u8, Vec<u8>),
        OctetString(Vec<u8>),
        Constructed(u8, Vec<Node>),
    }

    fn node() -> impl Strategy<Value = Node> {
        // Primitive universal tags other than OCTET STRING (04) and the EOC (00).
        let primitive_tag = prop::sample::select(vec![0x01u8, 0x02, 0x05, 0x06, 0x0c, 0x13, 0x80, 0x81]);
        let constructed_tag = prop::sample::select(vec![0x30u8, 0x31, 0xa0, 0xa1, 0xa3]);
        let leaf = prop_oneof![
            (primitive_tag, prop::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(t, v)| Node::Primitive(t, v)),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Node::OctetString),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            (constructed_tag.clone(), prop::collection::vec(inner, 0..6))
                .prop_map(|(t, c)| Node::Constructed(t, c))
        })
    }

    fn der(node: &Node, out: &mut Vec<u8>) {
        let (tag, content) = match node {
            Node::Primitive(t, v) => (*t, v.clone()),
            Node::OctetString(v) => (0x04, v.clone()),
            Node::Constructed(t, children) => {
                let mut c = Vec::new();
                for child in children {
                    der(child, &mut c);
                }
                (*t, c)
            }
        };
        out.push(tag);
        push_length(out, content.len());
        out.extend_from_slice(&content);
    }

    /// An encoding choice for each element, driven by `choices` (cycled).
    fn ber(node: &Node, choices: &[u8], i: &mut usize, out: &mut Vec<u8>) {
        fn pick(choices: &[u8], i: &mut usize) -> u8 {
            let c = choices[*i % choices.len()];
            *i += 1;
            c
        }
        let long_length = |out: &mut Vec<u8>, len: usize| {
            out.push(0x84);
            out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        };
        match node {
            Node::Primitive(t, v) => {
                out.push(*t);
                if pick(choices, i).is_multiple_of(2) {
                    push_length(out, v.len())
                } else {
                    long_length(out, v.len())
                }
                out.extend_from_slice(v);
            }
            Node::OctetString(v) => {
                let choice = pick(choices, i);
                if choice.is_multiple_of(3) || v.is_empty() {
                    out.push(0x04);
                    push_length(out, v.len());
                    out.extend_from_slice(v);
                } else {
                    // Chunks of a size the choice picks, in an indefinite or definite wrapper.
                    let size = usize::from(choice % 7) + 1;
                    let mut chunks = Vec::new();
                    for chunk in v.chunks(size) {
                        chunks.push(0x04);
                        push_length(&mut chunks, chunk.len());
                        chunks.extend_from_slice(chunk);
                    }
                    out.push(0x24);
                    if choice.is_multiple_of(2) {
                        out.push(0x80);
                        out.extend_from_slice(&chunks);
                        out.extend_from_slice(&[0, 0]);
                    } else {
                        long_length(out, chunks.len());
                        out.extend_from_slice(&chunks);
                    }
                }
            }
            Node::Constructed(t, children) => {
                let mut c = Vec::new();
                for child in children {
                    ber(child, choices, i, &mut c);
                }
                out.push(*t);
                if pick(choices, i).is_multiple_of(2) {
                    out.push(0x80);
                    out.extend_from_slice(&c);
                    out.extend_from_slice(&[0, 0]);
                } else {
                    push_length(out, c.len());
                    out.extend_from_slice(&c);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(der) = to_der(&bytes) {
                // Whatever was accepted is DER now: normalising again changes nothing.
                prop_assert_eq!(to_der(&der).unwrap(), der);
            }
        }

        #[test]
        fn der_is_left_as_it_is(tree in node()) {
            let mut encoded = Vec::new();
            der(&tree, &mut encoded);
            prop_assert_eq!(to_der(&encoded).unwrap(), encoded);
        }

        #[test]
        fn every_ber_form_of_a_tree_normalises_to_its_der(
            tree in node(),
            choices in prop::collection::vec(any::<u8>(), 1..32),
        ) {
            let mut expected = Vec::new();
            der(&tree, &mut expected);
            let mut encoded = Vec::new();
            ber(&tree, &choices, &mut 0, &mut encoded);
            prop_assert_eq!(to_der(&encoded).unwrap(), expected);
        }

        #[test]
        fn truncations_of_ber_are_errors(tree in node(), choices in prop::collection::vec(any::<u8>(), 1..8), cut in any::<prop::sample::Index>()) {
            let mut encoded = Vec::new();
            ber(&tree, &choices, &mut 0, &mut encoded);
            let cut = cut.index(encoded.len());
            prop_assert!(to_der(&encoded[..cut]).is_err());
        }
    }
}
