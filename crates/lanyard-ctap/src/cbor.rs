//! CTAP2 canonical CBOR (CTAP 2.1 §8 "Message Encoding").
//!
//! Encoding sorts every map's keys the way RFC 7049 §3.9 orders them (shorter encoded key first,
//! then byte-wise), uses the shortest integer and length forms (ciborium already does) and only
//! definite lengths. python-fido2 rejects maps in any other order, so everything that leaves an
//! authenticator or a client goes through [`encode`].
//!
//! Decoding is strict about what CTAP messages may contain: definite lengths only, no floats, no
//! tags, nesting at most [`MAX_DEPTH`] deep, no bytes after the item, and no duplicate map keys.

use ciborium::value::Integer;
pub use ciborium::value::Value;
use thiserror::Error;

/// CTAP messages nest four levels at most (request map → options/extensions → credential
/// descriptor list → descriptor map); eight leaves room and still stops recursion bombs early.
pub const MAX_DEPTH: usize = 8;

/// Why a CBOR message was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CborError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is not well-formed CBOR: {0}")]
    Malformed(String),
    #[error("{0} byte(s) follow the CBOR item")]
    TrailingBytes(usize),
    #[error("CBOR nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("CBOR uses {0}, which CTAP messages never contain")]
    Unsupported(&'static str),
    #[error("a CBOR map repeats a key")]
    DuplicateKey,
}

/// Encodes `value` canonically.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Map(entries) => {
            let mut encoded: Vec<(Vec<u8>, Vec<u8>)> =
                entries.iter().map(|(k, v)| (encode(k), encode(v))).collect();
            encoded.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
            head(5, encoded.len() as u64, out);
            for (k, v) in encoded {
                out.extend_from_slice(&k);
                out.extend_from_slice(&v);
            }
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Integer(i) => {
            let i = i128::from(*i);
            if i >= 0 {
                head(0, i as u64, out);
            } else {
                head(1, (-1 - i) as u64, out);
            }
        }
        Value::Bytes(b) => {
            head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(t) => {
            head(3, t.len() as u64, out);
            out.extend_from_slice(t.as_bytes());
        }
        Value::Bool(false) => out.push(0xF4),
        Value::Bool(true) => out.push(0xF5),
        Value::Null => out.push(0xF6),
        // CTAP never sends these; encode them faithfully anyway rather than lose data.
        Value::Float(f) => {
            out.push(0xFB);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Tag(tag, inner) => {
            head(6, *tag, out);
            encode_into(inner, out);
        }
        // `Value` is non-exhaustive; every variant ciborium 0.2 has is handled above.
        _ => out.push(0xF7),
    }
}

/// A CBOR head: major type and argument in the shortest form.
fn head(major: u8, arg: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xFF => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xFFFF => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

/// Decodes one CBOR item that must fill `bytes` exactly.
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    if bytes.is_empty() {
        return Err(CborError::Empty);
    }
    scan(bytes, 0, 0).and_then(|end| {
        if end == bytes.len() { Ok(()) } else { Err(CborError::TrailingBytes(bytes.len() - end)) }
    })?;
    let value: Value = ciborium::de::from_reader(bytes).map_err(|e| CborError::Malformed(e.to_string()))?;
    check_keys(&value)?;
    Ok(value)
}

/// Decodes the one CBOR item at the start of `bytes`, as strictly as [`decode`], and says how
/// many bytes it took. For structures that put CBOR items in a row with no length in front, such
/// as WebAuthn authenticator data (a COSE key, then possibly an extensions map).
pub fn decode_prefix(bytes: &[u8]) -> Result<(Value, usize), CborError> {
    if bytes.is_empty() {
        return Err(CborError::Empty);
    }
    let end = scan(bytes, 0, 0)?;
    decode(&bytes[..end]).map(|v| (v, end))
}

/// Walks the item at `pos` without building it: checks depth, definite lengths and the absence
/// of floats and tags, and returns where the item ends. Lengths are checked against the input
/// before anything is allocated, so a forged length cannot make the decoder reserve memory.
fn scan(b: &[u8], pos: usize, depth: usize) -> Result<usize, CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::TooDeep);
    }
    let short = || CborError::Malformed("the message ends inside an item".into());
    let first = *b.get(pos).ok_or_else(short)?;
    let major = first >> 5;
    let info = first & 0x1F;
    let (arg, mut at) = match info {
        0..=23 => (u64::from(info), pos + 1),
        24..=27 => {
            let n = 1usize << (info - 24);
            let raw = b.get(pos + 1..pos + 1 + n).ok_or_else(short)?;
            (raw.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)), pos + 1 + n)
        }
        31 => return Err(CborError::Unsupported("indefinite lengths")),
        _ => return Err(CborError::Malformed(format!("reserved additional information {info}"))),
    };
    let remaining = (b.len() - at) as u64;
    match major {
        0 | 1 => Ok(at),
        2 | 3 => {
            if arg > remaining {
                return Err(short());
            }
            let end = at + arg as usize;
            if major == 3 && std::str::from_utf8(&b[at..end]).is_err() {
                return Err(CborError::Malformed("a text string is not UTF-8".into()));
            }
            Ok(end)
        }
        4 | 5 => {
            let items = if major == 5 { arg.saturating_mul(2) } else { arg };
            // Every item takes at least one byte.
            if items > remaining {
                return Err(short());
            }
            for _ in 0..items {
                at = scan(b, at, depth + 1)?;
            }
            Ok(at)
        }
        6 => Err(CborError::Unsupported("tags")),
        _ => match info {
            20..=22 => Ok(at),
            25..=27 => Err(CborError::Unsupported("floating-point numbers")),
            _ => Err(CborError::Unsupported("simple values other than false, true and null")),
        },
    }
}

fn check_keys(value: &Value) -> Result<(), CborError> {
    match value {
        Value::Map(entries) => {
            let mut keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| encode(k)).collect();
            keys.sort();
            if keys.windows(2).any(|w| w[0] == w[1]) {
                return Err(CborError::DuplicateKey);
            }
            entries.iter().try_for_each(|(k, v)| check_keys(k).and_then(|()| check_keys(v)))
        }
        Value::Array(items) => items.iter().try_for_each(check_keys),
        _ => Ok(()),
    }
}

/// A map with integer keys, the shape of every CTAP request and response.
pub fn int_map(entries: impl IntoIterator<Item = (i64, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::Integer(k.into()), v)).collect())
}

/// A map with text keys (options, extensions, credential descriptors, user entities).
pub fn text_map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::Text(k.to_owned()), v)).collect())
}

/// Read access to a decoded map, with errors that name the missing or mistyped member.
#[derive(Debug, Clone, Copy)]
pub struct MapRef<'a>(&'a [(Value, Value)]);

/// Why a member of a CTAP map could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FieldError {
    #[error("expected a CBOR map")]
    NotAMap,
    #[error("member {0} is missing")]
    Missing(String),
    #[error("member {0} has the wrong type (expected {1})")]
    WrongType(String, &'static str),
    #[error("member {0} is out of range")]
    OutOfRange(String),
}

impl<'a> MapRef<'a> {
    pub fn new(value: &'a Value) -> Result<Self, FieldError> {
        match value {
            Value::Map(m) => Ok(Self(m)),
            _ => Err(FieldError::NotAMap),
        }
    }

    pub fn entries(&self) -> &'a [(Value, Value)] {
        self.0
    }

    /// The member under integer key `key`.
    pub fn get(&self, key: i64) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == i128::from(key)))
            .map(|(_, v)| v)
    }

    /// The member under text key `key`.
    pub fn get_text(&self, key: &str) -> Option<&'a Value> {
        self.0.iter().find(|(k, _)| matches!(k, Value::Text(t) if t == key)).map(|(_, v)| v)
    }

    pub fn require(&self, key: i64) -> Result<&'a Value, FieldError> {
        self.get(key).ok_or_else(|| FieldError::Missing(key.to_string()))
    }

    pub fn bytes(&self, key: i64) -> Result<Option<&'a [u8]>, FieldError> {
        self.get(key).map(|v| as_bytes(v, key)).transpose()
    }

    pub fn text(&self, key: i64) -> Result<Option<&'a str>, FieldError> {
        self.get(key).map(|v| as_text(v, key)).transpose()
    }

    pub fn uint(&self, key: i64) -> Result<Option<u64>, FieldError> {
        self.get(key).map(|v| as_uint(v, key)).transpose()
    }

    pub fn map(&self, key: i64) -> Result<Option<MapRef<'a>>, FieldError> {
        self.get(key)
            .map(|v| MapRef::new(v).map_err(|_| FieldError::WrongType(key.to_string(), "map")))
            .transpose()
    }

    pub fn bool_text(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.get_text(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(FieldError::WrongType(key.to_owned(), "boolean")),
        }
    }
}

pub fn as_bytes(v: &Value, key: impl ToString) -> Result<&[u8], FieldError> {
    v.as_bytes().map(Vec::as_slice).ok_or_else(|| FieldError::WrongType(key.to_string(), "byte string"))
}

pub fn as_text(v: &Value, key: impl ToString) -> Result<&str, FieldError> {
    v.as_text().ok_or_else(|| FieldError::WrongType(key.to_string(), "text string"))
}

pub fn as_uint(v: &Value, key: impl ToString) -> Result<u64, FieldError> {
    match v {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| FieldError::OutOfRange(key.to_string())),
        _ => Err(FieldError::WrongType(key.to_string(), "unsigned integer")),
    }
}

pub fn as_int(v: &Value, key: impl ToString) -> Result<i64, FieldError> {
    match v {
        Value::Integer(i) => i64::try_from(*i).map_err(|_| FieldError::OutOfRange(key.to_string())),
        _ => Err(FieldError::WrongType(key.to_string(), "integer")),
    }
}

/// An integer value.
pub fn int(i: i64) -> Value {
    Value::Integer(Integer::from(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_are_sorted_shortest_key_first() {
        let v = Value::Map(vec![
            (Value::Text("rk".into()), Value::Bool(true)),
            (int(10), Value::Null),
            (Value::Text("up".into()), Value::Bool(false)),
            (int(-1), Value::Null),
            (int(1), Value::Null),
            (int(256), Value::Null),
            (Value::Text("clientPin".into()), Value::Bool(true)),
        ]);
        let out = encode(&v);
        // 1 (0x01) < 10 (0x0a) < -1 (0x20) < 256 (0x19 0100) < "rk" < "up" < "clientPin"
        assert_eq!(
            hex::encode(&out),
            "a7 01f6 0af6 20f6 190100f6 62726bf5 627570f4 69636c69656e7450696ef5".replace(' ', "")
        );
        assert_eq!(decode(&out).map(|d| encode(&d)), Ok(out));
    }

    #[test]
    fn refuses_what_ctap_never_sends() {
        assert_eq!(decode(&[]), Err(CborError::Empty));
        assert_eq!(decode(&[0xA0, 0x00]), Err(CborError::TrailingBytes(1)));
        assert_eq!(decode(&[0x9F, 0xFF]), Err(CborError::Unsupported("indefinite lengths")));
        assert_eq!(
            decode(&[0xFB, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(CborError::Unsupported("floating-point numbers"))
        );
        assert_eq!(decode(&[0xC1, 0x00]), Err(CborError::Unsupported("tags")));
        assert_eq!(decode(&[0xA2, 0x01, 0x00, 0x01, 0x02]), Err(CborError::DuplicateKey));
        assert!(matches!(decode(&[0x5A, 0xFF, 0xFF, 0xFF, 0xFF]), Err(CborError::Malformed(_))));
        assert!(matches!(
            decode(&[0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(CborError::Malformed(_))
        ));
        assert!(matches!(decode(&[0x62, 0xFF, 0xFE]), Err(CborError::Malformed(_))));
        let deep = [vec![0x81; MAX_DEPTH + 1], vec![0x00]].concat();
        assert_eq!(decode(&deep), Err(CborError::TooDeep));
        let ok = [vec![0x81; MAX_DEPTH], vec![0x00]].concat();
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn map_ref_names_the_member() {
        let v = int_map([(1, Value::Bytes(vec![1])), (2, Value::Text("x".into())), (3, int(-4))]);
        let m = MapRef::new(&v).map_err(|e| e.to_string());
        let m = m.as_ref().map_err(Clone::clone);
        let Ok(m) = m else { panic!("a map") };
        assert_eq!(m.bytes(1), Ok(Some(&[1u8][..])));
        assert_eq!(m.text(2), Ok(Some("x")));
        assert_eq!(m.uint(3), Err(FieldError::OutOfRange("3".into())));
        assert_eq!(m.bytes(2), Err(FieldError::WrongType("2".into(), "byte string")));
        assert_eq!(m.require(9), Err(FieldError::Missing("9".into())));
        assert_eq!(MapRef::new(&int(1)).err(), Some(FieldError::NotAMap));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(any::<i32>(), inner, 0..6)
                    .prop_map(|m| int_map(m.into_iter().map(|(k, v)| (i64::from(k), v)))),
            ]
        })
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn canonical_encoding_round_trips(v in arb_value()) {
            let once = encode(&v);
            let back = decode(&once).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(encode(&back), once.clone());
            // ciborium's own encoder agrees byte for byte once the maps are in canonical order.
            let mut theirs = Vec::new();
            ciborium::ser::into_writer(&back, &mut theirs).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(theirs, once);
        }

        #[test]
        fn a_prefix_item_is_found_whatever_follows(v in arb_value(), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
            let item = encode(&v);
            let mut bytes = item.clone();
            bytes.extend_from_slice(&tail);
            let (back, used) = decode_prefix(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(used, item.len());
            prop_assert_eq!(encode(&back), item);
        }

        #[test]
        fn decode_prefix_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((_, used)) = decode_prefix(&bytes) {
                prop_assert!(used >= 1 && used <= bytes.len());
            }
        }
    }
}
