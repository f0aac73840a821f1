//! PIV data objects as they are stored on the card (SP 800-73-4/-5 part 1 §3 and Appendix A).
//!
//! Each type converts between a typed value and the exact bytes that PUT DATA stores and GET DATA
//! returns: `53 L <elements>` for every object except the discovery object, which is a bare
//! `7E L <elements>`. Decoders never panic on any input; they reject what the specification rules
//! out with a precise [`ObjectError`] and tolerate the deprecated elements older cards still carry.
//!
//! - [`FascN`]: the 25-byte, 40-character FASC-N of TIG SCEPACS.
//! - [`Chuid`]: the Card Holder Unique Identifier, including the bytes its issuer signature covers.
//! - [`Ccc`]: the Card Capability Container.
//! - [`Discovery`]: the discovery object with its PIN usage policy.
//! - [`CertificateObject`]: the X.509 certificate containers, optionally gzip-compressed.
//! - [`KeyHistory`]: the key history object describing retired key management keys.
//! - [`PrintedInformation`]: the text printed on the card face, duplicated on chip.

use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use flate2::Compression;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::GzEncoder;
use thiserror::Error;

use crate::tlv::{self, Tlv, TlvError};
use crate::types::{Slot, tag};

/// Why bytes are not a valid PIV data object, or a value cannot be stored as one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectError {
    #[error("malformed TLV: {0}")]
    Tlv(#[from] TlvError),
    #[error("{field} must be {expected} byte(s) long, got {got}")]
    WrongLength { field: &'static str, expected: usize, got: usize },
    #[error("{field} is {got} byte(s) long, at most {max} are allowed")]
    TooLong { field: &'static str, max: usize, got: usize },
    #[error("{0} may contain only the decimal digits 0-9")]
    NotDigits(&'static str),
    #[error("{0} may contain only printable ASCII characters")]
    NotAscii(&'static str),
    #[error("{field} is not a valid calendar date in the form {format}")]
    BadDate { field: &'static str, format: &'static str },
    #[error("FASC-N character {char_index} fails its odd-parity check")]
    BadFascNParity { char_index: usize },
    #[error("FASC-N character {char_index} should be the {expected} sentinel, found {found:#X}")]
    BadSentinel { char_index: usize, expected: &'static str, found: u8 },
    #[error("FASC-N character {char_index} should be a digit, found {found:#X}")]
    BadFascNDigit { char_index: usize, found: u8 },
    #[error("FASC-N LRC character is {found:#X} but the other characters give {expected:#X}")]
    BadLrc { expected: u8, found: u8 },
    #[error("required element {0:#X} is missing")]
    MissingField(u32),
    #[error("element {0:#X} occurs more than once")]
    DuplicateField(u32),
    #[error("the discovery object names an application other than PIV")]
    NotPivAid,
    #[error("CertInfo {0:#04X} is not supported (only 00 = plain and 01 = gzip)")]
    UnsupportedCertInfo(u8),
    #[error("compressed certificate cannot be inflated: {0}")]
    Decompress(String),
    #[error("compressed certificate inflates to more than {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("{on_card} on-card plus {off_card} off-card retired keys exceed the 20 retired slots")]
    TooManyRetiredKeys { on_card: u8, off_card: u8 },
    #[error("key history counts keys with off-card certificates but has no offCardCertURL")]
    MissingOffCardUrl,
    #[error("key history has an offCardCertURL although it counts no retired keys")]
    UnexpectedOffCardUrl,
}

/// The `53` template around every stored object except the discovery object.
const WRAPPER: u32 = 0x53;
/// The error detection code that closes most objects; PIV always leaves it empty.
const EDC: u32 = 0xFE;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Strips the `53` template (nothing may follow it) and splits its value into elements.
fn open_object(bytes: &[u8]) -> Result<Vec<Tlv<'_>>, ObjectError> {
    let value = tlv::expect_single(bytes, WRAPPER)?;
    Ok(tlv::parse_all(value)?)
}

/// Puts the encoded elements inside the `53` template.
fn close_object(elements: &[u8]) -> Vec<u8> {
    tlv::tlv(WRAPPER, elements)
}

/// Records the value of `element` in `slot`, refusing a second occurrence of the same tag.
fn store_once<'a>(slot: &mut Option<&'a [u8]>, element: &Tlv<'a>) -> Result<(), ObjectError> {
    match slot.replace(element.value) {
        Some(_) => Err(ObjectError::DuplicateField(element.tag)),
        None => Ok(()),
    }
}

fn required(slot: Option<&[u8]>, tag: u32) -> Result<&[u8], ObjectError> {
    slot.ok_or(ObjectError::MissingField(tag))
}

/// Copies a value that must have exactly `N` bytes.
fn exact<const N: usize>(field: &'static str, value: &[u8]) -> Result<[u8; N], ObjectError> {
    <[u8; N]>::try_from(value).map_err(|_| ObjectError::WrongLength { field, expected: N, got: value.len() })
}

/// A "fixed, 0 or 1 byte" element: empty means absent.
fn zero_or_one_byte(field: &'static str, value: &[u8]) -> Result<Option<u8>, ObjectError> {
    match value {
        [] => Ok(None),
        [byte] => Ok(Some(*byte)),
        _ => Err(ObjectError::WrongLength { field, expected: 1, got: value.len() }),
    }
}

/// Checks a text element: printable ASCII (space to tilde) of at most `max` bytes.
fn check_text(field: &'static str, text: &[u8], max: usize) -> Result<(), ObjectError> {
    if text.len() > max {
        return Err(ObjectError::TooLong { field, max, got: text.len() });
    }
    if !text.iter().all(|b| (0x20..=0x7E).contains(b)) {
        return Err(ObjectError::NotAscii(field));
    }
    Ok(())
}

fn decode_text(field: &'static str, value: &[u8], max: usize) -> Result<String, ObjectError> {
    check_text(field, value, max)?;
    Ok(value.iter().copied().map(char::from).collect())
}

/// Numeric value of ASCII digits that have already been checked.
fn digits_value(digits: &[u8]) -> u16 {
    digits
        .iter()
        .fold(0u16, |acc, d| acc.saturating_mul(10).saturating_add(u16::from(d.saturating_sub(b'0'))))
}

fn is_leap_year(year: u16) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u16, month: u16) -> u16 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

fn is_valid_day(year: u16, month: u16, day: u16) -> bool {
    day >= 1 && day <= days_in_month(year, month)
}

/// Validates a CHUID expiration date, eight ASCII digits `YYYYMMDD` naming a real day.
fn check_yyyymmdd(field: &'static str, date: &[u8; 8]) -> Result<(), ObjectError> {
    if !date.iter().all(u8::is_ascii_digit) {
        return Err(ObjectError::NotDigits(field));
    }
    let [y1, y2, y3, y4, m1, m2, d1, d2] = *date;
    let year = digits_value(&[y1, y2, y3, y4]);
    let month = digits_value(&[m1, m2]);
    let day = digits_value(&[d1, d2]);
    if !is_valid_day(year, month, day) {
        return Err(ObjectError::BadDate { field, format: "YYYYMMDD" });
    }
    Ok(())
}

/// Month abbreviations of the printed-information expiration date.
const MONTH_ABBREVIATIONS: [&[u8; 3]; 12] =
    [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"];

/// Validates a printed-information expiration date such as `2030JAN01` (month case-insensitive).
fn check_yyyymmmdd(field: &'static str, date: &[u8]) -> Result<(), ObjectError> {
    check_text(field, date, 9)?;
    let [y1, y2, y3, y4, m1, m2, m3, d1, d2] = exact::<9>(field, date)?;
    let bad = ObjectError::BadDate { field, format: "YYYYMMMDD" };
    if ![y1, y2, y3, y4, d1, d2].iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let month = MONTH_ABBREVIATIONS
        .iter()
        .position(|abbr| abbr.eq_ignore_ascii_case(&[m1, m2, m3]))
        .and_then(|index| u16::try_from(index + 1).ok());
    let Some(month) = month else {
        return Err(bad);
    };
    if !is_valid_day(digits_value(&[y1, y2, y3, y4]), month, digits_value(&[d1, d2])) {
        return Err(bad);
    }
    Ok(())
}

/// A random RFC 4122 version 4 UUID, as used for the card UUID (CHUID GUID).
pub fn random_uuid_v4() -> [u8; 16] {
    let mut uuid: [u8; 16] = rand::random();
    uuid[6] = (uuid[6] & 0x0F) | 0x40;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    uuid
}

// ---------------------------------------------------------------------------------------------
// FASC-N
// ---------------------------------------------------------------------------------------------

/// A fixed-width run of decimal digits, held as the values 0–9 (not ASCII).
///
/// The only ways to build one check the digits, so a `Digits` is always valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digits<const N: usize>([u8; N]);

impl<const N: usize> Digits<N> {
    /// All zeros.
    pub const ZERO: Self = Self([0; N]);

    /// Accepts an array of digit values, each 0–9.
    pub fn new(digits: [u8; N]) -> Result<Self, ObjectError> {
        if digits.iter().all(|d| *d <= 9) {
            Ok(Self(digits))
        } else {
            Err(ObjectError::NotDigits("digit array"))
        }
    }

    /// Parses exactly `N` ASCII digits.
    pub fn parse(text: &str) -> Result<Self, ObjectError> {
        Self::parse_named("digit string", text)
    }

    fn parse_named(field: &'static str, text: &str) -> Result<Self, ObjectError> {
        let bytes = text.as_bytes();
        if bytes.len() != N {
            return Err(ObjectError::WrongLength { field, expected: N, got: bytes.len() });
        }
        let mut out = [0u8; N];
        for (slot, byte) in out.iter_mut().zip(bytes) {
            if !byte.is_ascii_digit() {
                return Err(ObjectError::NotDigits(field));
            }
            *slot = byte - b'0';
        }
        Ok(Self(out))
    }

    /// Takes `N` digit values starting at `start`; only used on already-validated characters.
    fn from_values(values: &[u8], start: usize) -> Self {
        let mut out = [0u8; N];
        for (offset, slot) in out.iter_mut().enumerate() {
            *slot = values.get(start + offset).copied().unwrap_or(0).min(9);
        }
        Self(out)
    }

    /// The digit values, each 0–9.
    pub fn as_array(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> fmt::Display for Digits<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|d| write!(f, "{d}"))
    }
}

impl<const N: usize> FromStr for Digits<N> {
    type Err = ObjectError;

    fn from_str(text: &str) -> Result<Self, ObjectError> {
        Self::parse(text)
    }
}

/// Length of a packed FASC-N in bytes (40 characters of 5 bits).
pub const FASC_N_LEN: usize = 25;

/// The all-9s FASC-N of yubico-piv-tool's CHUID template (agency 9999, system 9999, credential
/// 999999, CS 0, ICI 1, PI 0000000000, OC 3, OI 0000, POA 1).
pub const YUBICO_TEMPLATE_FASC_N: [u8; FASC_N_LEN] = [
    0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58, 0x21, 0x08, 0x42,
    0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
];

/// Number of 5-bit characters in a FASC-N.
const FASCN_CHARS: usize = 40;
/// Data value of the start sentinel (bits 11010 on the wire).
const FASCN_SS: u8 = 0b1011;
/// Data value of the field separator (bits 10110).
const FASCN_FS: u8 = 0b1101;
/// Data value of the end sentinel (bits 11111).
const FASCN_ES: u8 = 0b1111;
/// Index of the longitudinal redundancy character.
const FASCN_LRC: usize = 39;

/// The sentinel expected at character `index`, or `None` where a digit belongs.
fn fascn_sentinel(index: usize) -> Option<(u8, &'static str)> {
    match index {
        0 => Some((FASCN_SS, "start")),
        5 | 10 | 17 | 19 | 21 => Some((FASCN_FS, "field separator")),
        38 => Some((FASCN_ES, "end")),
        _ => None,
    }
}

/// The five transmitted bits of a character, first-sent bit in bit 4: the data value LSB first,
/// then a parity bit that makes the number of ones odd.
fn fascn_code(value: u8) -> u8 {
    let data = (0..4).fold(0u8, |code, bit| (code << 1) | ((value >> bit) & 1));
    (data << 1) | u8::from(value.count_ones().is_multiple_of(2))
}

/// The data value of a five-bit code (the inverse of [`fascn_code`], ignoring parity).
fn fascn_value(code: u8) -> u8 {
    (0..4).fold(0u8, |value, bit| value | (((code >> (4 - bit)) & 1) << bit))
}

/// Packs character values into the 200-bit string, most significant bit of each byte first.
fn pack_fascn(values: &[u8]) -> [u8; FASC_N_LEN] {
    let mut out = [0u8; FASC_N_LEN];
    for (index, value) in values.iter().take(FASCN_CHARS).enumerate() {
        let code = fascn_code(*value);
        for k in 0..5 {
            if code & (0x10 >> k) != 0 {
                let bit = index * 5 + k;
                if let Some(byte) = out.get_mut(bit / 8) {
                    *byte |= 0x80 >> (bit % 8);
                }
            }
        }
    }
    out
}

/// Reads the five-bit code of character `index`, first-sent bit in bit 4.
fn read_fascn_code(packed: &[u8; FASC_N_LEN], index: usize) -> u8 {
    (0..5).fold(0u8, |code, k| {
        let bit = index * 5 + k;
        let set = packed.get(bit / 8).is_some_and(|byte| byte & (0x80 >> (bit % 8)) != 0);
        (code << 1) | u8::from(set)
    })
}

/// A Federal Agency Smart Credential Number (TIG SCEPACS), as carried in the CHUID.
///
/// Every field is a [`Digits`], so a `FascN` can always be packed. The usual text form is the 32
/// digits of the fields in order (agency, system, credential, CS, ICI, PI, OC, OI, POA), which is
/// what [`Display`](fmt::Display) writes and [`FromStr`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FascN {
    pub agency_code: Digits<4>,
    pub system_code: Digits<4>,
    pub credential_number: Digits<6>,
    pub credential_series: Digits<1>,
    pub individual_credential_issue: Digits<1>,
    pub person_identifier: Digits<10>,
    pub organizational_category: Digits<1>,
    pub organizational_identifier: Digits<4>,
    pub person_association_category: Digits<1>,
}

impl FascN {
    /// A FASC-N with the given identifier (agency, system, credential) and every other field
    /// zero, which SP 800-73-5 §3.1.2 permits.
    pub fn with_identifier(agency: &str, system: &str, credential: &str) -> Result<Self, ObjectError> {
        Ok(Self {
            agency_code: Digits::parse_named("agency code", agency)?,
            system_code: Digits::parse_named("system code", system)?,
            credential_number: Digits::parse_named("credential number", credential)?,
            credential_series: Digits::ZERO,
            individual_credential_issue: Digits::ZERO,
            person_identifier: Digits::ZERO,
            organizational_category: Digits::ZERO,
            organizational_identifier: Digits::ZERO,
            person_association_category: Digits::ZERO,
        })
    }

    /// The FASC-N identifier: agency code, system code and credential number (14 digits).
    pub fn identifier(&self) -> String {
        format!("{}{}{}", self.agency_code, self.system_code, self.credential_number)
    }

    /// The 40 character values (4-bit data, before parity) including sentinels and the LRC.
    fn characters(&self) -> Vec<u8> {
        let mut chars = Vec::with_capacity(FASCN_CHARS);
        chars.push(FASCN_SS);
        chars.extend_from_slice(self.agency_code.as_array());
        chars.push(FASCN_FS);
        chars.extend_from_slice(self.system_code.as_array());
        chars.push(FASCN_FS);
        chars.extend_from_slice(self.credential_number.as_array());
        chars.push(FASCN_FS);
        chars.extend_from_slice(self.credential_series.as_array());
        chars.push(FASCN_FS);
        chars.extend_from_slice(self.individual_credential_issue.as_array());
        chars.push(FASCN_FS);
        chars.extend_from_slice(self.person_identifier.as_array());
        chars.extend_from_slice(self.organizational_category.as_array());
        chars.extend_from_slice(self.organizational_identifier.as_array());
        chars.extend_from_slice(self.person_association_category.as_array());
        chars.push(FASCN_ES);
        let lrc = chars.iter().fold(0, |acc, c| acc ^ c);
        chars.push(lrc);
        chars
    }

    /// The packed 25-byte form stored in CHUID tag `30`.
    pub fn to_bytes(&self) -> [u8; FASC_N_LEN] {
        pack_fascn(&self.characters())
    }

    /// Unpacks 25 bytes, checking every character's parity, then the sentinels and digits in
    /// order, then the LRC.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ObjectError> {
        let packed: [u8; FASC_N_LEN] = exact("FASC-N", bytes)?;
        let mut chars = [0u8; FASCN_CHARS];
        for (index, slot) in chars.iter_mut().enumerate() {
            let code = read_fascn_code(&packed, index);
            if code.count_ones().is_multiple_of(2) {
                return Err(ObjectError::BadFascNParity { char_index: index });
            }
            *slot = fascn_value(code);
        }
        let mut lrc = 0u8;
        for (index, &value) in chars.iter().enumerate().take(FASCN_LRC) {
            match fascn_sentinel(index) {
                Some((expected, name)) if value != expected => {
                    return Err(ObjectError::BadSentinel { char_index: index, expected: name, found: value });
                }
                None if value > 9 => {
                    return Err(ObjectError::BadFascNDigit { char_index: index, found: value });
                }
                _ => {}
            }
            lrc ^= value;
        }
        let found = chars[FASCN_LRC];
        if found != lrc {
            return Err(ObjectError::BadLrc { expected: lrc, found });
        }
        Ok(Self {
            agency_code: Digits::from_values(&chars, 1),
            system_code: Digits::from_values(&chars, 6),
            credential_number: Digits::from_values(&chars, 11),
            credential_series: Digits::from_values(&chars, 18),
            individual_credential_issue: Digits::from_values(&chars, 20),
            person_identifier: Digits::from_values(&chars, 22),
            organizational_category: Digits::from_values(&chars, 32),
            organizational_identifier: Digits::from_values(&chars, 33),
            person_association_category: Digits::from_values(&chars, 37),
        })
    }
}

impl fmt::Display for FascN {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}{}{}{}{}{}{}",
            self.agency_code,
            self.system_code,
            self.credential_number,
            self.credential_series,
            self.individual_credential_issue,
            self.person_identifier,
            self.organizational_category,
            self.organizational_identifier,
            self.person_association_category
        )
    }
}

impl FromStr for FascN {
    type Err = ObjectError;

    /// Reads the 32-digit form written by [`Display`](fmt::Display).
    fn from_str(text: &str) -> Result<Self, ObjectError> {
        let field = "FASC-N digit string";
        let all = Digits::<32>::parse_named(field, text)?;
        let d = all.as_array();
        Ok(Self {
            agency_code: Digits::from_values(d, 0),
            system_code: Digits::from_values(d, 4),
            credential_number: Digits::from_values(d, 8),
            credential_series: Digits::from_values(d, 14),
            individual_credential_issue: Digits::from_values(d, 15),
            person_identifier: Digits::from_values(d, 16),
            organizational_category: Digits::from_values(d, 26),
            organizational_identifier: Digits::from_values(d, 27),
            person_association_category: Digits::from_values(d, 31),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// CHUID
// ---------------------------------------------------------------------------------------------

const CHUID_FASC_N: u32 = 0x30;
const CHUID_GUID: u32 = 0x34;
const CHUID_EXPIRATION: u32 = 0x35;
const CHUID_CARDHOLDER_UUID: u32 = 0x36;
const CHUID_SIGNATURE: u32 = 0x3E;

/// The Card Holder Unique Identifier (tag `5FC102`, container 3000).
///
/// The FASC-N is kept as the raw 25 bytes so that a CHUID with an unusual FASC-N still decodes
/// and re-encodes byte for byte; [`Chuid::parsed_fasc_n`] checks and unpacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chuid {
    /// Tag `30`: the packed FASC-N.
    pub fasc_n: [u8; FASC_N_LEN],
    /// Tag `34`: the card UUID.
    pub guid: [u8; 16],
    /// Tag `35`: expiration date as ASCII `YYYYMMDD`.
    pub expiration: [u8; 8],
    /// Tag `36`: the cardholder UUID, if present.
    pub cardholder_uuid: Option<[u8; 16]>,
    /// Tag `3E`: the issuer's CMS signature (detached); empty when unsigned.
    pub signature: Vec<u8>,
    /// Deprecated (`EE`, `32`, `33`, `3D`) and unknown elements found when decoding, in card
    /// order. They are never written back by [`Chuid::encode`].
    pub other: Vec<(u32, Vec<u8>)>,
}

impl Chuid {
    /// An unsigned CHUID; `expiration` is `YYYYMMDD`.
    pub fn new(fasc_n: &FascN, guid: [u8; 16], expiration: &str) -> Result<Self, ObjectError> {
        let field = "CHUID expiration date";
        let expiration: [u8; 8] = exact(field, expiration.as_bytes())?;
        check_yyyymmdd(field, &expiration)?;
        Ok(Self {
            fasc_n: fasc_n.to_bytes(),
            guid,
            expiration,
            cardholder_uuid: None,
            signature: Vec::new(),
            other: Vec::new(),
        })
    }

    /// An unsigned CHUID whose card UUID is a fresh random version 4 UUID.
    pub fn new_random(fasc_n: &FascN, expiration: &str) -> Result<Self, ObjectError> {
        Self::new(fasc_n, random_uuid_v4(), expiration)
    }

    /// Unpacks and checks the FASC-N.
    pub fn parsed_fasc_n(&self) -> Result<FascN, ObjectError> {
        FascN::from_bytes(&self.fasc_n)
    }

    /// The expiration date as text, when it is ASCII.
    pub fn expiration_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.expiration).ok()
    }

    /// The content the issuer signature covers for this value as [`Chuid::encode`] writes it:
    /// every element except `3E` and `FE`, in order (`30`, `34`, `35`, `[36]`).
    ///
    /// To verify the signature of a CHUID read from a card that may carry deprecated elements,
    /// use [`Chuid::signed_content_of`] on the bytes as read.
    pub fn signed_content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        tlv::encode(CHUID_FASC_N, &self.fasc_n, &mut out);
        tlv::encode(CHUID_GUID, &self.guid, &mut out);
        tlv::encode(CHUID_EXPIRATION, &self.expiration, &mut out);
        if let Some(uuid) = &self.cardholder_uuid {
            tlv::encode(CHUID_CARDHOLDER_UUID, uuid, &mut out);
        }
        out
    }

    /// The signed content of a stored CHUID exactly as its bytes stand: every element except
    /// `3E` and `FE`, deprecated ones included, copied verbatim in card order.
    pub fn signed_content_of(object: &[u8]) -> Result<Vec<u8>, ObjectError> {
        Self::decode(object)?;
        let mut rest = tlv::expect_single(object, WRAPPER)?;
        let mut out = Vec::with_capacity(rest.len());
        while !rest.is_empty() {
            let (element, after) = tlv::parse_one(rest)?;
            let raw_len = rest.len().saturating_sub(after.len());
            if element.tag != CHUID_SIGNATURE && element.tag != EDC {
                out.extend_from_slice(rest.get(..raw_len).unwrap_or_default());
            }
            rest = after;
        }
        Ok(out)
    }

    /// `53 L { 30, 34, 35, [36], 3E, FE 00 }`.
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = self.signed_content();
        tlv::encode(CHUID_SIGNATURE, &self.signature, &mut inner);
        tlv::encode(EDC, &[], &mut inner);
        close_object(&inner)
    }

    /// Requires `30`, `34` and `35`; a missing `3E` reads as an empty signature; `FE` is ignored
    /// whatever it holds; deprecated and unknown elements go to [`Chuid::other`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ObjectError> {
        let elements = open_object(bytes)?;
        let (mut fasc_n, mut guid, mut expiration) = (None, None, None);
        let (mut cardholder_uuid, mut signature, mut edc) = (None, None, None);
        let mut other = Vec::new();
        for element in &elements {
            match element.tag {
                CHUID_FASC_N => store_once(&mut fasc_n, element)?,
                CHUID_GUID => store_once(&mut guid, element)?,
                CHUID_EXPIRATION => store_once(&mut expiration, element)?,
                CHUID_CARDHOLDER_UUID => store_once(&mut cardholder_uuid, element)?,
                CHUID_SIGNATURE => store_once(&mut signature, element)?,
                EDC => store_once(&mut edc, element)?,
                tag => other.push((tag, element.value.to_vec())),
            }
        }
        let fasc_n = exact("FASC-N", required(fasc_n, CHUID_FASC_N)?)?;
        let guid = exact("GUID", required(guid, CHUID_GUID)?)?;
        let field = "CHUID expiration date";
        let expiration = exact(field, required(expiration, CHUID_EXPIRATION)?)?;
        check_yyyymmdd(field, &expiration)?;
        let cardholder_uuid = cardholder_uuid.map(|v| exact("cardholder UUID", v)).transpose()?;
        Ok(Self {
            fasc_n,
            guid,
            expiration,
            cardholder_uuid,
            signature: signature.unwrap_or_default().to_vec(),
            other,
        })
    }
}

/// What a card's CHUID says about whether the card has been issued. This is the one rule for
/// "already issued": the personalization engine refuses such a card, and the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChuidIssuance {
    /// No CHUID, or an empty one (`53 00`): a factory-fresh or reset card.
    Absent,
    /// yubico-piv-tool's template CHUID (all-9s FASC-N), which `ykman piv objects generate chuid`
    /// and the tool's `set-chuid` write with a random GUID: a card nobody has issued.
    Template(Chuid),
    /// Any other CHUID: someone issued this card.
    Issued(Chuid),
    /// A CHUID that does not decode. Counted as issued: overwriting data we cannot read is not
    /// ours to decide.
    Undecodable(ObjectError),
}

impl ChuidIssuance {
    /// Classifies the bytes GET DATA 5FC102 returned (`None` when the card answered "not found").
    pub fn classify(object: Option<&[u8]>) -> Self {
        let Some(object) = object else { return Self::Absent };
        if object.get(1).is_none_or(|len| *len == 0) {
            return Self::Absent;
        }
        match Chuid::decode(object) {
            Ok(c) if c.fasc_n == YUBICO_TEMPLATE_FASC_N => Self::Template(c),
            Ok(c) => Self::Issued(c),
            Err(e) => Self::Undecodable(e),
        }
    }

    pub fn is_issued(&self) -> bool {
        matches!(self, Self::Issued(_) | Self::Undecodable(_))
    }

    /// The decoded CHUID, when there is one.
    pub fn chuid(&self) -> Option<&Chuid> {
        match self {
            Self::Template(c) | Self::Issued(c) => Some(c),
            Self::Absent | Self::Undecodable(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CCC
// ---------------------------------------------------------------------------------------------

/// The first seven bytes of the card identifier yubico-piv-tool writes (GSC-RID `A000000116`,
/// manufacturer `FF`, card type `02`).
pub const YUBICO_CARD_ID_PREFIX: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x16, 0xFF, 0x02];

/// The registered data model number of PIV (CCC tag `F5`).
pub const PIV_DATA_MODEL: u8 = 0x10;

const CCC_CARD_ID: u32 = 0xF0;
const CCC_CONTAINER_VERSION: u32 = 0xF1;
const CCC_GRAMMAR_VERSION: u32 = 0xF2;
const CCC_CARD_URL: u32 = 0xF3;
const CCC_PKCS15: u32 = 0xF4;
const CCC_DATA_MODEL: u32 = 0xF5;
const CCC_ACR_TABLE: u32 = 0xF6;
const CCC_CARD_APDUS: u32 = 0xF7;
const CCC_REDIRECTION: u32 = 0xFA;
const CCC_CAPABILITY_TUPLES: u32 = 0xFB;
const CCC_STATUS_TUPLES: u32 = 0xFC;
const CCC_NEXT_CCC: u32 = 0xFD;
const CCC_MAX_CARD_URL: usize = 128;

/// The Card Capability Container (tag `5FC107`, container DB00).
///
/// One-byte elements that may also be empty are `Option<u8>` (`None` = empty); the variable
/// elements are raw bytes. Unknown and deprecated elements are ignored when decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ccc {
    /// `F0`: card identifier (21 bytes).
    pub card_identifier: [u8; 21],
    /// `F1`: capability container version number.
    pub container_version: Option<u8>,
    /// `F2`: capability grammar version number.
    pub grammar_version: Option<u8>,
    /// `F3`: applications CardURL (at most 128 bytes).
    pub applications_card_url: Vec<u8>,
    /// `F4`: PKCS#15.
    pub pkcs15: Option<u8>,
    /// `F5`: registered data model number (`10` for PIV).
    pub data_model_number: u8,
    /// `F6`: access control rule table.
    pub access_control_rule_table: Vec<u8>,
    /// `F7`: card APDUs.
    pub card_apdus: Vec<u8>,
    /// `FA`: redirection tag.
    pub redirection_tag: Vec<u8>,
    /// `FB`: capability tuples.
    pub capability_tuples: Vec<u8>,
    /// `FC`: status tuples.
    pub status_tuples: Vec<u8>,
    /// `FD`: next CCC.
    pub next_ccc: Vec<u8>,
}

impl Ccc {
    /// A CCC with the given card identifier and the customary values for everything else
    /// (`F1 01 21, F2 01 21, F3 00, F4 01 00, F5 01 10`, the rest empty).
    pub fn new(card_identifier: [u8; 21]) -> Self {
        Self {
            card_identifier,
            container_version: Some(0x21),
            grammar_version: Some(0x21),
            applications_card_url: Vec::new(),
            pkcs15: Some(0x00),
            data_model_number: PIV_DATA_MODEL,
            access_control_rule_table: Vec::new(),
            card_apdus: Vec::new(),
            redirection_tag: Vec::new(),
            capability_tuples: Vec::new(),
            status_tuples: Vec::new(),
            next_ccc: Vec::new(),
        }
    }

    /// Like [`Ccc::new`] with [`YUBICO_CARD_ID_PREFIX`] followed by 14 random bytes.
    pub fn new_random() -> Self {
        let mut card_identifier = [0u8; 21];
        let random: [u8; 14] = rand::random();
        for (slot, byte) in card_identifier.iter_mut().zip(YUBICO_CARD_ID_PREFIX.iter().chain(&random)) {
            *slot = *byte;
        }
        Self::new(card_identifier)
    }

    /// `53 L { F0, F1, F2, F3, F4, F5, F6, F7, FA, FB, FC, FD, FE 00 }`, every element present.
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = Vec::with_capacity(64);
        tlv::encode(CCC_CARD_ID, &self.card_identifier, &mut inner);
        tlv::encode(CCC_CONTAINER_VERSION, self.container_version.as_slice(), &mut inner);
        tlv::encode(CCC_GRAMMAR_VERSION, self.grammar_version.as_slice(), &mut inner);
        tlv::encode(CCC_CARD_URL, &self.applications_card_url, &mut inner);
        tlv::encode(CCC_PKCS15, self.pkcs15.as_slice(), &mut inner);
        tlv::encode(CCC_DATA_MODEL, &[self.data_model_number], &mut inner);
        tlv::encode(CCC_ACR_TABLE, &self.access_control_rule_table, &mut inner);
        tlv::encode(CCC_CARD_APDUS, &self.card_apdus, &mut inner);
        tlv::encode(CCC_REDIRECTION, &self.redirection_tag, &mut inner);
        tlv::encode(CCC_CAPABILITY_TUPLES, &self.capability_tuples, &mut inner);
        tlv::encode(CCC_STATUS_TUPLES, &self.status_tuples, &mut inner);
        tlv::encode(CCC_NEXT_CCC, &self.next_ccc, &mut inner);
        tlv::encode(EDC, &[], &mut inner);
        close_object(&inner)
    }

    /// Requires `F0` (21 bytes) and `F5` (1 byte); other known elements are optional.
    pub fn decode(bytes: &[u8]) -> Result<Self, ObjectError> {
        let elements = open_object(bytes)?;
        let mut values: [Option<&[u8]>; 12] = [None; 12];
        let mut edc = None;
        for element in &elements {
            let index = match element.tag {
                CCC_CARD_ID => 0,
                CCC_CONTAINER_VERSION => 1,
                CCC_GRAMMAR_VERSION => 2,
                CCC_CARD_URL => 3,
                CCC_PKCS15 => 4,
                CCC_DATA_MODEL => 5,
                CCC_ACR_TABLE => 6,
                CCC_CARD_APDUS => 7,
                CCC_REDIRECTION => 8,
                CCC_CAPABILITY_TUPLES => 9,
                CCC_STATUS_TUPLES => 10,
                CCC_NEXT_CCC => 11,
                EDC => {
                    store_once(&mut edc, element)?;
                    continue;
                }
                _ => continue,
            };
            if let Some(slot) = values.get_mut(index) {
                store_once(slot, element)?;
            }
        }
        let [id, f1, f2, f3, f4, f5, f6, f7, fa, fb, fc, fd] = values;
        let card_identifier = exact("card identifier", required(id, CCC_CARD_ID)?)?;
        let [data_model_number] = exact("data model number", required(f5, CCC_DATA_MODEL)?)?;
        let applications_card_url = f3.unwrap_or_default();
        if applications_card_url.len() > CCC_MAX_CARD_URL {
            return Err(ObjectError::TooLong {
                field: "applications CardURL",
                max: CCC_MAX_CARD_URL,
                got: applications_card_url.len(),
            });
        }
        let bytes_of = |v: Option<&[u8]>| v.unwrap_or_default().to_vec();
        Ok(Self {
            card_identifier,
            container_version: zero_or_one_byte("container version", f1.unwrap_or_default())?,
            grammar_version: zero_or_one_byte("grammar version", f2.unwrap_or_default())?,
            applications_card_url: applications_card_url.to_vec(),
            pkcs15: zero_or_one_byte("PKCS#15", f4.unwrap_or_default())?,
            data_model_number,
            access_control_rule_table: bytes_of(f6),
            card_apdus: bytes_of(f7),
            redirection_tag: bytes_of(fa),
            capability_tuples: bytes_of(fb),
            status_tuples: bytes_of(fc),
            next_ccc: bytes_of(fd),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery object
// ---------------------------------------------------------------------------------------------

/// The PIV AID without its two version bytes (RID `A000000308`, PIX `00001000`).
const PIV_AID_PREFIX: [u8; 9] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00];
/// The full PIV AID written into the discovery object.
const DISCOVERY_AID: [u8; 11] = crate::types::PIV_AID;
const DISCOVERY_AID_TAG: u32 = 0x4F;
const DISCOVERY_POLICY_TAG: u32 = 0x5F2F;
/// The longest AID element SP 800-73 allows in the discovery object.
const DISCOVERY_MAX_AID: usize = 12;

/// The discovery object (tag `7E`, container 6050), stored without the `53` wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Discovery {
    /// First byte: which PINs satisfy the access rules (see the `PIN_POLICY_*` constants).
    /// Second byte: the primary PIN when the global PIN is usable (`10` PIV, `20` global), else
    /// `00`.
    pub pin_usage_policy: [u8; 2],
}

impl Default for Discovery {
    /// `40 00`: only the PIV PIN.
    fn default() -> Self {
        Self { pin_usage_policy: [Self::PIN_POLICY_PIV_PIN, 0x00] }
    }
}

impl Discovery {
    /// The PIV application PIN satisfies the PIV access control rules.
    pub const PIN_POLICY_PIV_PIN: u8 = 0x40;
    /// The global PIN satisfies the PIV access control rules.
    pub const PIN_POLICY_GLOBAL_PIN: u8 = 0x20;
    /// On-card biometric comparison satisfies them.
    pub const PIN_POLICY_OCC: u8 = 0x10;
    /// The virtual contact interface is implemented.
    pub const PIN_POLICY_VCI: u8 = 0x08;
    /// The VCI works without a pairing code.
    pub const PIN_POLICY_VCI_NO_PAIRING: u8 = 0x04;

    /// Whether the global PIN is the primary PIN (second policy byte `20`).
    pub fn global_pin_is_primary(&self) -> bool {
        self.pin_usage_policy[1] == 0x20
    }

    /// `7E 12 { 4F 0B <PIV AID>, 5F2F 02 <policy> }`.
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = Vec::with_capacity(18);
        tlv::encode(DISCOVERY_AID_TAG, &DISCOVERY_AID, &mut inner);
        tlv::encode(DISCOVERY_POLICY_TAG, &self.pin_usage_policy, &mut inner);
        tlv::tlv(tag::DISCOVERY, &inner)
    }

    /// Requires `4F` naming the PIV application (any version) and a two-byte `5F2F`; other
    /// elements are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, ObjectError> {
        let value = tlv::expect_single(bytes, tag::DISCOVERY)?;
        let (mut aid, mut policy) = (None, None);
        for element in tlv::parse_all(value)? {
            match element.tag {
                DISCOVERY_AID_TAG => store_once(&mut aid, &element)?,
                DISCOVERY_POLICY_TAG => store_once(&mut policy, &element)?,
                _ => {}
            }
        }
        let aid = required(aid, DISCOVERY_AID_TAG)?;
        if aid.len() > DISCOVERY_MAX_AID || !aid.starts_with(&PIV_AID_PREFIX) {
            return Err(ObjectError::NotPivAid);
        }
        let pin_usage_policy = exact("PIN usage policy", required(policy, DISCOVERY_POLICY_TAG)?)?;
        Ok(Self { pin_usage_policy })
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate objects
// ---------------------------------------------------------------------------------------------

/// The most a compressed certificate may inflate to; anything larger is treated as hostile.
pub const MAX_DECOMPRESSED_CERT: usize = 16 * 1024;

const CERT_TAG: u32 = 0x70;
const CERT_INFO_TAG: u32 = 0x71;
const CERT_INFO_PLAIN: u8 = 0x00;
const CERT_INFO_GZIP: u8 = 0x01;

/// A certificate container (`5FC105`, `5FC10A`, `5FC10B`, `5FC101`, `5FC10D`–`5FC120`, and the
/// YubiKey attestation object `5FFF01`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateObject {
    /// The DER certificate, always uncompressed here.
    pub der: Vec<u8>,
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len()), Compression::best());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

/// Reads at most [`MAX_DECOMPRESSED_CERT`] bytes out of a decompressor.
fn inflate_capped(reader: impl Read) -> Result<Vec<u8>, ObjectError> {
    let mut out = Vec::new();
    let cap = MAX_DECOMPRESSED_CERT;
    reader.take(cap as u64 + 1).read_to_end(&mut out).map_err(|e| ObjectError::Decompress(e.to_string()))?;
    if out.len() > cap {
        return Err(ObjectError::DecompressedTooLarge { limit: cap });
    }
    Ok(out)
}

/// Inflates a CertInfo-01 certificate: gzip, or the "Net iD" form `01 00 <len LE16> <zlib>`.
fn decompress_certificate(data: &[u8]) -> Result<Vec<u8>, ObjectError> {
    if let [0x01, 0x00, lo, hi, zlib @ ..] = data {
        let declared = usize::from(u16::from_le_bytes([*lo, *hi]));
        if declared > MAX_DECOMPRESSED_CERT {
            return Err(ObjectError::DecompressedTooLarge { limit: MAX_DECOMPRESSED_CERT });
        }
        let out = inflate_capped(ZlibDecoder::new(zlib))?;
        if out.len() != declared {
            return Err(ObjectError::Decompress(format!(
                "zlib data inflates to {} bytes, header says {declared}",
                out.len()
            )));
        }
        return Ok(out);
    }
    inflate_capped(GzDecoder::new(data))
}

impl CertificateObject {
    pub fn new(der: Vec<u8>) -> Self {
        Self { der }
    }

    /// `53 L { 70 L <cert>, 71 01 <CertInfo>, FE 00 }`; with `compress` the certificate is
    /// gzipped and CertInfo is `01`.
    pub fn encode(&self, compress: bool) -> Vec<u8> {
        let compressed = if compress { gzip(&self.der) } else { None };
        let (body, info): (Cow<'_, [u8]>, u8) = match compressed {
            Some(z) => (Cow::Owned(z), CERT_INFO_GZIP),
            None => (Cow::Borrowed(&self.der), CERT_INFO_PLAIN),
        };
        let mut inner = Vec::with_capacity(body.len() + 12);
        tlv::encode(CERT_TAG, &body, &mut inner);
        tlv::encode(CERT_INFO_TAG, &[info], &mut inner);
        tlv::encode(EDC, &[], &mut inner);
        close_object(&inner)
    }

    /// Requires `70`; a missing `71` means uncompressed; `72` (MSCUID), `FE` and unknown
    /// elements are ignored. Compressed certificates may inflate to at most
    /// [`MAX_DECOMPRESSED_CERT`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ObjectError> {
        let elements = open_object(bytes)?;
        let (mut cert, mut info) = (None, None);
        for element in &elements {
            match element.tag {
                CERT_TAG => store_once(&mut cert, element)?,
                CERT_INFO_TAG => store_once(&mut info, element)?,
                _ => {}
            }
        }
        let cert = required(cert, CERT_TAG)?;
        let [info] = match info {
            Some(value) => exact("CertInfo", value)?,
            None => [CERT_INFO_PLAIN],
        };
        let der = match info {
            CERT_INFO_PLAIN => cert.to_vec(),
            CERT_INFO_GZIP => decompress_certificate(cert)?,
            other => return Err(ObjectError::UnsupportedCertInfo(other)),
        };
        Ok(Self { der })
    }
}

// ---------------------------------------------------------------------------------------------
// Key history
// ---------------------------------------------------------------------------------------------

const KH_ON_CARD: u32 = 0xC1;
const KH_OFF_CARD: u32 = 0xC2;
const KH_URL: u32 = 0xF3;
const KH_MAX_URL: usize = 118;

/// The Key History object (tag `5FC10C`, container 6060).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyHistory {
    /// `C1`: retired keys whose certificates are also on the card (references 82 upward).
    pub keys_with_on_card_certs: u8,
    /// `C2`: retired keys whose certificates are only off the card (references 95 downward).
    pub keys_with_off_card_certs: u8,
    /// `F3`: where the OffCardKeyHistoryFile lives (printable ASCII, at most 118 bytes).
    pub off_card_cert_url: Option<String>,
}

impl KeyHistory {
    /// The number of retired key management key references (82–95).
    pub const MAX_RETIRED_KEYS: u8 = 20;

    /// A validated key history (see [`KeyHistory::validate`]).
    pub fn new(on_card: u8, off_card: u8, url: Option<String>) -> Result<Self, ObjectError> {
        let history = Self {
            keys_with_on_card_certs: on_card,
            keys_with_off_card_certs: off_card,
            off_card_cert_url: url,
        };
        history.validate()?;
        Ok(history)
    }

    /// Checks the SP 800-73 rules: at most 20 retired keys in all; a URL of printable ASCII,
    /// at most 118 bytes, present whenever off-card certificates exist and absent when there
    /// are no retired keys at all.
    pub fn validate(&self) -> Result<(), ObjectError> {
        let (on_card, off_card) = (self.keys_with_on_card_certs, self.keys_with_off_card_certs);
        if u16::from(on_card) + u16::from(off_card) > u16::from(Self::MAX_RETIRED_KEYS) {
            return Err(ObjectError::TooManyRetiredKeys { on_card, off_card });
        }
        match &self.off_card_cert_url {
            Some(url) => {
                check_text("offCardCertURL", url.as_bytes(), KH_MAX_URL)?;
                if on_card == 0 && off_card == 0 {
                    return Err(ObjectError::UnexpectedOffCardUrl);
                }
            }
            None if off_card > 0 => return Err(ObjectError::MissingOffCardUrl),
            None => {}
        }
        Ok(())
    }

    /// The key references of the retired keys with on-card certificates (82, 83, …).
    pub fn on_card_slots(&self) -> Vec<Slot> {
        let count = self.keys_with_on_card_certs.min(Self::MAX_RETIRED_KEYS);
        (0..count).map(|i| Slot(0x82 + i)).collect()
    }

    /// The key references of the retired keys with off-card certificates only (95, 94, …).
    pub fn off_card_slots(&self) -> Vec<Slot> {
        let count = self.keys_with_off_card_certs.min(Self::MAX_RETIRED_KEYS);
        (0..count).map(|i| Slot(0x95 - i)).collect()
    }

    /// `53 L { C1 01 n, C2 01 n, [F3 L url], FE 00 }`. Does not validate; see
    /// [`KeyHistory::validate`].
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = Vec::with_capacity(16);
        tlv::encode(KH_ON_CARD, &[self.keys_with_on_card_certs], &mut inner);
        tlv::encode(KH_OFF_CARD, &[self.keys_with_off_card_certs], &mut inner);
        if let Some(url) = &self.off_card_cert_url {
            tlv::encode(KH_URL, url.as_bytes(), &mut inner);
        }
        tlv::encode(EDC, &[], &mut inner);
        close_object(&inner)
    }

    /// Requires one-byte `C1` and `C2`, then applies [`KeyHistory::validate`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ObjectError> {
        let elements = open_object(bytes)?;
        let (mut on_card, mut off_card, mut url) = (None, None, None);
        for element in &elements {
            match element.tag {
                KH_ON_CARD => store_once(&mut on_card, element)?,
                KH_OFF_CARD => store_once(&mut off_card, element)?,
                KH_URL => store_once(&mut url, element)?,
                _ => {}
            }
        }
        let [on_card] = exact("keysWithOnCardCerts", required(on_card, KH_ON_CARD)?)?;
        let [off_card] = exact("keysWithOffCardCerts", required(off_card, KH_OFF_CARD)?)?;
        let url = url.map(|v| decode_text("offCardCertURL", v, KH_MAX_URL)).transpose()?;
        Self::new(on_card, off_card, url)
    }
}

// ---------------------------------------------------------------------------------------------
// Printed information
// ---------------------------------------------------------------------------------------------

const PI_NAME: u32 = 0x01;
const PI_AFFILIATION: u32 = 0x02;
const PI_EXPIRATION: u32 = 0x04;
const PI_SERIAL: u32 = 0x05;
const PI_ISSUER: u32 = 0x06;
const PI_ORG_LINE1: u32 = 0x07;
const PI_ORG_LINE2: u32 = 0x08;

const PI_MAX_NAME: usize = 125;
const PI_MAX_AFFILIATION: usize = 20;
const PI_MAX_SERIAL: usize = 20;
const PI_MAX_ISSUER: usize = 15;
const PI_MAX_ORG_LINE: usize = 20;

/// The Printed Information object (tag `5FC109`, container 3001). All text is printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrintedInformation {
    /// `01`: name, at most 125 bytes.
    pub name: String,
    /// `02`: employee affiliation, at most 20 bytes.
    pub employee_affiliation: String,
    /// `04`: expiration date `YYYYMMMDD`, e.g. `2030JAN01`.
    pub expiration_date: String,
    /// `05`: agency card serial number, at most 20 bytes.
    pub agency_card_serial: String,
    /// `06`: issuer identification, at most 15 bytes.
    pub issuer_identification: String,
    /// `07`: organization affiliation line 1, at most 20 bytes.
    pub organization_line1: Option<String>,
    /// `08`: organization affiliation line 2, at most 20 bytes.
    pub organization_line2: Option<String>,
}

impl PrintedInformation {
    /// Checks every field's character set, length limit and the date format.
    pub fn validate(&self) -> Result<(), ObjectError> {
        check_text("name", self.name.as_bytes(), PI_MAX_NAME)?;
        let affiliation = self.employee_affiliation.as_bytes();
        check_text("employee affiliation", affiliation, PI_MAX_AFFILIATION)?;
        check_yyyymmmdd("printed expiration date", self.expiration_date.as_bytes())?;
        check_text("agency card serial number", self.agency_card_serial.as_bytes(), PI_MAX_SERIAL)?;
        let issuer = self.issuer_identification.as_bytes();
        check_text("issuer identification", issuer, PI_MAX_ISSUER)?;
        if let Some(line) = &self.organization_line1 {
            check_text("organization affiliation line 1", line.as_bytes(), PI_MAX_ORG_LINE)?;
        }
        if let Some(line) = &self.organization_line2 {
            check_text("organization affiliation line 2", line.as_bytes(), PI_MAX_ORG_LINE)?;
        }
        Ok(())
    }

    /// `53 L { 01, 02, 04, 05, 06, [07], [08], FE 00 }` after [`PrintedInformation::validate`].
    pub fn encode(&self) -> Result<Vec<u8>, ObjectError> {
        self.validate()?;
        let mut inner = Vec::with_capacity(256);
        tlv::encode(PI_NAME, self.name.as_bytes(), &mut inner);
        tlv::encode(PI_AFFILIATION, self.employee_affiliation.as_bytes(), &mut inner);
        tlv::encode(PI_EXPIRATION, self.expiration_date.as_bytes(), &mut inner);
        tlv::encode(PI_SERIAL, self.agency_card_serial.as_bytes(), &mut inner);
        tlv::encode(PI_ISSUER, self.issuer_identification.as_bytes(), &mut inner);
        if let Some(line) = &self.organization_line1 {
            tlv::encode(PI_ORG_LINE1, line.as_bytes(), &mut inner);
        }
        if let Some(line) = &self.organization_line2 {
            tlv::encode(PI_ORG_LINE2, line.as_bytes(), &mut inner);
        }
        tlv::encode(EDC, &[], &mut inner);
        Ok(close_object(&inner))
    }

    /// Requires `01`, `02`, `04`, `05` and `06`; the deprecated `03` (affiliation line 2) and
    /// unknown elements are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, ObjectError> {
        let elements = open_object(bytes)?;
        let (mut name, mut affiliation, mut expiration, mut serial) = (None, None, None, None);
        let (mut issuer, mut line1, mut line2) = (None, None, None);
        for element in &elements {
            match element.tag {
                PI_NAME => store_once(&mut name, element)?,
                PI_AFFILIATION => store_once(&mut affiliation, element)?,
                PI_EXPIRATION => store_once(&mut expiration, element)?,
                PI_SERIAL => store_once(&mut serial, element)?,
                PI_ISSUER => store_once(&mut issuer, element)?,
                PI_ORG_LINE1 => store_once(&mut line1, element)?,
                PI_ORG_LINE2 => store_once(&mut line2, element)?,
                _ => {}
            }
        }
        let expiration = required(expiration, PI_EXPIRATION)?;
        let date_field = "printed expiration date";
        check_yyyymmmdd(date_field, expiration)?;
        let org_line =
            |field, value: Option<&[u8]>| value.map(|v| decode_text(field, v, PI_MAX_ORG_LINE)).transpose();
        Ok(Self {
            name: decode_text("name", required(name, PI_NAME)?, PI_MAX_NAME)?,
            employee_affiliation: decode_text(
                "employee affiliation",
                required(affiliation, PI_AFFILIATION)?,
                PI_MAX_AFFILIATION,
            )?,
            expiration_date: decode_text(date_field, expiration, 9)?,
            agency_card_serial: decode_text(
                "agency card serial number",
                required(serial, PI_SERIAL)?,
                PI_MAX_SERIAL,
            )?,
            issuer_identification: decode_text(
                "issuer identification",
                required(issuer, PI_ISSUER)?,
                PI_MAX_ISSUER,
            )?,
            organization_line1: org_line("organization affiliation line 1", line1)?,
            organization_line2: org_line("organization affiliation line 2", line2)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(text: &str) -> Vec<u8> {
        hex::decode(text.replace(' ', "")).unwrap()
    }

    const NINES_HEX: &str = "D4 E7 39 DA 73 9C ED 39 CE 73 9D 83 68 58 21 08 42 10 84 21 C8 42 10 C3 EB";

    /// Packs 40 character values; with `fix_lrc` the last one is recomputed first.
    fn pack_chars(mut chars: Vec<u8>, fix_lrc: bool) -> [u8; 25] {
        if fix_lrc {
            let lrc = chars.iter().take(39).fold(0, |a, c| a ^ c);
            chars[39] = lrc;
        }
        pack_fascn(&chars)
    }

    // ----- FASC-N -----

    #[test]
    fn fascn_all_nines_vector_decodes_to_what_the_bytes_hold() {
        let bytes = h(NINES_HEX);
        assert_eq!(bytes, YUBICO_TEMPLATE_FASC_N);
        let f = FascN::from_bytes(&bytes).unwrap();
        // The "all-9s" template really carries 9s only in agency, system and credential.
        assert_eq!(f.agency_code.to_string(), "9999");
        assert_eq!(f.system_code.to_string(), "9999");
        assert_eq!(f.credential_number.to_string(), "999999");
        assert_eq!(f.credential_series.to_string(), "0");
        assert_eq!(f.individual_credential_issue.to_string(), "1");
        assert_eq!(f.person_identifier.to_string(), "0000000000");
        assert_eq!(f.organizational_category.to_string(), "3");
        assert_eq!(f.organizational_identifier.to_string(), "0000");
        assert_eq!(f.person_association_category.to_string(), "1");
        assert_eq!(f.to_string(), "99999999999999010000000000300001");
        assert_eq!(f.identifier(), "99999999999999");
        assert_eq!(f.to_bytes(), YUBICO_TEMPLATE_FASC_N);
    }

    #[test]
    fn fascn_encodes_the_vector_from_fields() {
        let f: FascN = "99999999999999010000000000300001".parse().unwrap();
        assert_eq!(f.to_bytes().to_vec(), h(NINES_HEX));
        let built = FascN {
            credential_series: Digits::parse("0").unwrap(),
            individual_credential_issue: Digits::parse("1").unwrap(),
            organizational_category: Digits::new([3]).unwrap(),
            person_association_category: Digits::new([1]).unwrap(),
            ..FascN::with_identifier("9999", "9999", "999999").unwrap()
        };
        assert_eq!(built, f);
    }

    #[test]
    fn fascn_sentinels_and_lrc_use_the_documented_bit_patterns() {
        assert_eq!(fascn_code(FASCN_SS), 0b11010);
        assert_eq!(fascn_code(FASCN_FS), 0b10110);
        assert_eq!(fascn_code(FASCN_ES), 0b11111);
        assert_eq!(fascn_code(9), 0b10011);
        assert_eq!(fascn_code(0), 0b00001);
        for v in 0..16 {
            assert_eq!(fascn_value(fascn_code(v)), v);
            assert_eq!(fascn_code(v).count_ones() % 2, 1);
        }
    }

    #[test]
    fn fascn_every_single_bit_flip_is_a_parity_error_at_its_character() {
        let good = YUBICO_TEMPLATE_FASC_N;
        for bit in 0..200 {
            let mut bad = good;
            bad[bit / 8] ^= 0x80 >> (bit % 8);
            assert_eq!(
                FascN::from_bytes(&bad),
                Err(ObjectError::BadFascNParity { char_index: bit / 5 }),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn fascn_precise_errors() {
        let good = FascN::from_bytes(&YUBICO_TEMPLATE_FASC_N).unwrap().characters();
        assert_eq!(
            FascN::from_bytes(&YUBICO_TEMPLATE_FASC_N[..24]),
            Err(ObjectError::WrongLength { field: "FASC-N", expected: 25, got: 24 })
        );

        let mut chars = good.clone();
        chars[5] = 9;
        assert_eq!(
            FascN::from_bytes(&pack_chars(chars, true)),
            Err(ObjectError::BadSentinel { char_index: 5, expected: "field separator", found: 9 })
        );
        let mut chars = good.clone();
        chars[0] = FASCN_ES;
        assert_eq!(
            FascN::from_bytes(&pack_chars(chars, true)),
            Err(ObjectError::BadSentinel { char_index: 0, expected: "start", found: FASCN_ES })
        );
        let mut chars = good.clone();
        chars[38] = FASCN_FS;
        assert_eq!(
            FascN::from_bytes(&pack_chars(chars, true)),
            Err(ObjectError::BadSentinel { char_index: 38, expected: "end", found: FASCN_FS })
        );
        let mut chars = good.clone();
        chars[25] = 0xC;
        assert_eq!(
            FascN::from_bytes(&pack_chars(chars, true)),
            Err(ObjectError::BadFascNDigit { char_index: 25, found: 0xC })
        );
        let mut chars = good.clone();
        chars[39] ^= 0x4;
        assert_eq!(
            FascN::from_bytes(&pack_chars(chars, false)),
            Err(ObjectError::BadLrc { expected: 0xA, found: 0xE })
        );
        // A changed digit without a recomputed LRC is caught by the LRC.
        let mut chars = good;
        chars[3] = 1;
        assert!(matches!(FascN::from_bytes(&pack_chars(chars, false)), Err(ObjectError::BadLrc { .. })));
    }

    #[test]
    fn digits_and_fascn_text_errors() {
        assert_eq!(
            Digits::<4>::parse("123"),
            Err(ObjectError::WrongLength { field: "digit string", expected: 4, got: 3 })
        );
        assert_eq!(Digits::<4>::parse("12a4"), Err(ObjectError::NotDigits("digit string")));
        assert_eq!(Digits::<2>::new([1, 10]), Err(ObjectError::NotDigits("digit array")));
        assert_eq!(
            "9".repeat(31).parse::<FascN>(),
            Err(ObjectError::WrongLength { field: "FASC-N digit string", expected: 32, got: 31 })
        );
        assert_eq!(
            format!("{}x", "9".repeat(31)).parse::<FascN>(),
            Err(ObjectError::NotDigits("FASC-N digit string"))
        );
        assert_eq!(
            FascN::with_identifier("12", "0000", "000000"),
            Err(ObjectError::WrongLength { field: "agency code", expected: 4, got: 2 })
        );
        assert_eq!(
            FascN::with_identifier("1234", "00x0", "000000"),
            Err(ObjectError::NotDigits("system code"))
        );
    }

    // ----- CHUID -----

    const GUID: [u8; 16] =
        [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x46, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF];

    fn yubico_chuid_bytes() -> Vec<u8> {
        let mut v = h("53 3B 30 19");
        v.extend_from_slice(&YUBICO_TEMPLATE_FASC_N);
        v.extend_from_slice(&[0x34, 0x10]);
        v.extend_from_slice(&GUID);
        v.extend_from_slice(&[0x35, 0x08]);
        v.extend_from_slice(b"20300101");
        v.extend_from_slice(&[0x3E, 0x00, 0xFE, 0x00]);
        v
    }

    #[test]
    fn chuid_issuance_rule() {
        assert_eq!(ChuidIssuance::classify(None), ChuidIssuance::Absent);
        assert_eq!(ChuidIssuance::classify(Some(&h("53 00"))), ChuidIssuance::Absent);
        assert_eq!(ChuidIssuance::classify(Some(&[])), ChuidIssuance::Absent);
        let template = ChuidIssuance::classify(Some(&yubico_chuid_bytes()));
        assert!(matches!(&template, ChuidIssuance::Template(c) if c.guid == GUID));
        assert!(!template.is_issued());
        let fasc_n = FascN::with_identifier("1234", "5678", "123456").unwrap();
        let ours = Chuid::new(&fasc_n, GUID, "20300101").unwrap().encode();
        let issued = ChuidIssuance::classify(Some(&ours));
        assert!(issued.is_issued() && issued.chuid().is_some_and(|c| c.guid == GUID));
        let garbage = ChuidIssuance::classify(Some(&h("53 03 01 02 03")));
        assert!(matches!(garbage, ChuidIssuance::Undecodable(_)) && garbage.is_issued());
        assert!(garbage.chuid().is_none());
    }

    fn chuid_from(elements: &[(u32, &[u8])]) -> Vec<u8> {
        let mut inner = Vec::new();
        for (t, v) in elements {
            tlv::encode(*t, v, &mut inner);
        }
        tlv::tlv(0x53, &inner)
    }

    #[test]
    fn chuid_yubico_template_parses_and_reencodes_identically() {
        let bytes = yubico_chuid_bytes();
        let chuid = Chuid::decode(&bytes).unwrap();
        assert_eq!(chuid.fasc_n, YUBICO_TEMPLATE_FASC_N);
        assert_eq!(chuid.guid, GUID);
        assert_eq!(chuid.expiration_str(), Some("20300101"));
        assert_eq!(chuid.cardholder_uuid, None);
        assert!(chuid.signature.is_empty());
        assert!(chuid.other.is_empty());
        assert_eq!(chuid.parsed_fasc_n().unwrap().identifier(), "99999999999999");
        assert_eq!(chuid.encode(), bytes);

        let fasc_n = FascN::from_bytes(&YUBICO_TEMPLATE_FASC_N).unwrap();
        assert_eq!(Chuid::new(&fasc_n, GUID, "20300101").unwrap().encode(), bytes);
        assert_eq!(chuid.signed_content(), bytes[2..bytes.len() - 4].to_vec());
        assert_eq!(Chuid::signed_content_of(&bytes).unwrap(), chuid.signed_content());
    }

    #[test]
    fn chuid_random_guid_is_a_v4_uuid() {
        let fasc_n = FascN::with_identifier("1234", "5678", "000001").unwrap();
        let chuid = Chuid::new_random(&fasc_n, "20301231").unwrap();
        assert_eq!(chuid.guid[6] >> 4, 4);
        assert_eq!(chuid.guid[8] & 0xC0, 0x80);
        assert_eq!(chuid.parsed_fasc_n().unwrap(), fasc_n);
    }

    #[test]
    fn chuid_with_cardholder_uuid_and_signature() {
        let mut chuid = Chuid::new(&FascN::from_str(&"1".repeat(32)).unwrap(), GUID, "20240229").unwrap();
        chuid.cardholder_uuid = Some([0x5A; 16]);
        chuid.signature = vec![0x30; 300];
        let bytes = chuid.encode();
        assert_eq!(&bytes[..4], &[0x53, 0x82, 0x01, 0x7B]);
        let back = Chuid::decode(&bytes).unwrap();
        assert_eq!(back, chuid);
        let signed = chuid.signed_content();
        assert_eq!(signed.len(), 27 + 18 + 10 + 18);
        assert_eq!(&signed[signed.len() - 18..signed.len() - 16], &[0x36, 0x10]);
        assert_eq!(Chuid::signed_content_of(&bytes).unwrap(), signed);
    }

    #[test]
    fn chuid_legacy_elements_are_kept_aside_and_signed_content_of_covers_them() {
        let bytes = chuid_from(&[
            (0xEE, &[0x0B, 0xB8]),
            (0x30, &YUBICO_TEMPLATE_FASC_N),
            (0x32, &[1, 2, 3, 4]),
            (0x33, b"123456789"),
            (0x34, &GUID),
            (0x35, b"20291130"),
            (0x3D, &[0x00]),
            (0x3E, &[0xAA, 0xBB]),
            (0xFE, &[0x5C]),
        ]);
        let chuid = Chuid::decode(&bytes).unwrap();
        let tags: Vec<u32> = chuid.other.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![0xEE, 0x32, 0x33, 0x3D]);
        assert_eq!(chuid.signature, vec![0xAA, 0xBB]);
        // The writer drops the deprecated elements ...
        let written = chuid.encode();
        let mut modern = chuid.clone();
        modern.other.clear();
        assert_eq!(Chuid::decode(&written).unwrap(), modern);
        // ... but the content signed on the legacy card included them, verbatim and in order.
        let signed = Chuid::signed_content_of(&bytes).unwrap();
        let expected = chuid_from(&[
            (0xEE, &[0x0B, 0xB8]),
            (0x30, &YUBICO_TEMPLATE_FASC_N),
            (0x32, &[1, 2, 3, 4]),
            (0x33, b"123456789"),
            (0x34, &GUID),
            (0x35, b"20291130"),
            (0x3D, &[0x00]),
        ]);
        assert_eq!(signed, expected[2..].to_vec());
        assert_ne!(signed, chuid.signed_content());
    }

    #[test]
    fn chuid_signed_content_of_keeps_non_minimal_lengths_verbatim() {
        let mut inner = vec![0x30, 0x81, 0x19];
        inner.extend_from_slice(&YUBICO_TEMPLATE_FASC_N);
        inner.extend_from_slice(&[0x34, 0x10]);
        inner.extend_from_slice(&GUID);
        inner.extend_from_slice(&[0x35, 0x08]);
        inner.extend_from_slice(b"20300101");
        let signed = inner.clone();
        inner.extend_from_slice(&[0x3E, 0x00, 0xFE, 0x00]);
        let object = tlv::tlv(0x53, &inner);
        assert_eq!(Chuid::signed_content_of(&object).unwrap(), signed);
    }

    #[test]
    fn chuid_missing_signature_reads_as_empty() {
        let bytes = chuid_from(&[(0x30, &YUBICO_TEMPLATE_FASC_N), (0x34, &GUID), (0x35, b"20300101")]);
        assert!(Chuid::decode(&bytes).unwrap().signature.is_empty());
    }

    #[test]
    fn chuid_precise_errors() {
        let f = &YUBICO_TEMPLATE_FASC_N[..];
        let cases: Vec<(Vec<u8>, ObjectError)> = vec![
            (chuid_from(&[(0x34, &GUID), (0x35, b"20300101")]), ObjectError::MissingField(0x30)),
            (chuid_from(&[(0x30, f), (0x35, b"20300101")]), ObjectError::MissingField(0x34)),
            (chuid_from(&[(0x30, f), (0x34, &GUID)]), ObjectError::MissingField(0x35)),
            (
                chuid_from(&[(0x30, &f[1..]), (0x34, &GUID), (0x35, b"20300101")]),
                ObjectError::WrongLength { field: "FASC-N", expected: 25, got: 24 },
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID[..15]), (0x35, b"20300101")]),
                ObjectError::WrongLength { field: "GUID", expected: 16, got: 15 },
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID), (0x35, b"2030010")]),
                ObjectError::WrongLength { field: "CHUID expiration date", expected: 8, got: 7 },
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID), (0x35, b"2030-1-1")]),
                ObjectError::NotDigits("CHUID expiration date"),
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID), (0x35, b"20301301")]),
                ObjectError::BadDate { field: "CHUID expiration date", format: "YYYYMMDD" },
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID), (0x35, b"20230229")]),
                ObjectError::BadDate { field: "CHUID expiration date", format: "YYYYMMDD" },
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID), (0x35, b"20300101"), (0x36, &[1; 4])]),
                ObjectError::WrongLength { field: "cardholder UUID", expected: 16, got: 4 },
            ),
            (
                chuid_from(&[(0x30, f), (0x34, &GUID), (0x34, &GUID), (0x35, b"20300101")]),
                ObjectError::DuplicateField(0x34),
            ),
            (h("54 00"), ObjectError::Tlv(TlvError::UnexpectedTag { expected: 0x53, found: 0x54 })),
            ([yubico_chuid_bytes(), vec![0]].concat(), ObjectError::Tlv(TlvError::Trailing(1))),
            (h("53 03 30 05 00"), ObjectError::Tlv(TlvError::LengthOverrun { length: 5, available: 1 })),
        ];
        for (bytes, error) in cases {
            assert_eq!(Chuid::decode(&bytes), Err(error.clone()), "{}", hex::encode(&bytes));
            assert_eq!(Chuid::signed_content_of(&bytes), Err(error));
        }
        let fasc_n = FascN::from_bytes(f).unwrap();
        assert_eq!(
            Chuid::new(&fasc_n, GUID, "2030011"),
            Err(ObjectError::WrongLength { field: "CHUID expiration date", expected: 8, got: 7 })
        );
        assert_eq!(
            Chuid::new(&fasc_n, GUID, "20300132"),
            Err(ObjectError::BadDate { field: "CHUID expiration date", format: "YYYYMMDD" })
        );
    }

    // ----- CCC -----

    const CARD_ID: [u8; 21] =
        [0xA0, 0x00, 0x00, 0x01, 0x16, 0xFF, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

    fn ccc_from(elements: &[(u32, &[u8])]) -> Vec<u8> {
        chuid_from(elements)
    }

    #[test]
    fn ccc_defaults_match_the_template() {
        let expected = h(&format!(
            "53 33 F0 15 {} F1 01 21 F2 01 21 F3 00 F4 01 00 F5 01 10 F6 00 F7 00 FA 00 FB 00 \
             FC 00 FD 00 FE 00",
            hex::encode(CARD_ID)
        ));
        let ccc = Ccc::new(CARD_ID);
        assert_eq!(ccc.encode(), expected);
        assert_eq!(Ccc::decode(&expected).unwrap(), ccc);
    }

    #[test]
    fn ccc_random_uses_the_yubico_prefix() {
        let a = Ccc::new_random();
        let b = Ccc::new_random();
        assert_eq!(a.card_identifier[..7], YUBICO_CARD_ID_PREFIX);
        assert_ne!(a.card_identifier, b.card_identifier);
        assert_eq!(a.data_model_number, PIV_DATA_MODEL);
    }

    #[test]
    fn ccc_minimal_form_decodes_with_absent_optionals() {
        let bytes = ccc_from(&[(0xF0, &CARD_ID), (0xF5, &[0x10]), (0xF8, &[1, 2])]);
        let ccc = Ccc::decode(&bytes).unwrap();
        assert_eq!(ccc.container_version, None);
        assert_eq!(ccc.pkcs15, None);
        assert!(ccc.applications_card_url.is_empty());
        assert_eq!(ccc.data_model_number, 0x10);
    }

    #[test]
    fn ccc_precise_errors() {
        let cases: Vec<(Vec<u8>, ObjectError)> = vec![
            (ccc_from(&[(0xF5, &[0x10])]), ObjectError::MissingField(0xF0)),
            (ccc_from(&[(0xF0, &CARD_ID)]), ObjectError::MissingField(0xF5)),
            (
                ccc_from(&[(0xF0, &CARD_ID[..20]), (0xF5, &[0x10])]),
                ObjectError::WrongLength { field: "card identifier", expected: 21, got: 20 },
            ),
            (
                ccc_from(&[(0xF0, &CARD_ID), (0xF5, &[])]),
                ObjectError::WrongLength { field: "data model number", expected: 1, got: 0 },
            ),
            (
                ccc_from(&[(0xF0, &CARD_ID), (0xF1, &[0x21, 0x21]), (0xF5, &[0x10])]),
                ObjectError::WrongLength { field: "container version", expected: 1, got: 2 },
            ),
            (
                ccc_from(&[(0xF0, &CARD_ID), (0xF3, &[b'a'; 129]), (0xF5, &[0x10])]),
                ObjectError::TooLong { field: "applications CardURL", max: 128, got: 129 },
            ),
            (
                ccc_from(&[(0xF0, &CARD_ID), (0xF5, &[0x10]), (0xF5, &[0x10])]),
                ObjectError::DuplicateField(0xF5),
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(Ccc::decode(&bytes), Err(error));
        }
    }

    // ----- Discovery -----

    #[test]
    fn discovery_default_encoding() {
        let expected = h("7E 12 4F 0B A0 00 00 03 08 00 00 10 00 01 00 5F 2F 02 40 00");
        let d = Discovery::default();
        assert_eq!(d.encode(), expected);
        assert_eq!(Discovery::decode(&expected).unwrap(), d);
        assert!(!d.global_pin_is_primary());
        assert!(crate::types::PIV_AID.starts_with(&PIV_AID_PREFIX));
        // Another PIV version and a right-truncated AID are still PIV.
        let other_version = h("7E 10 4F 09 A0 00 00 03 08 00 00 10 00 5F 2F 02 60 20");
        let d = Discovery::decode(&other_version).unwrap();
        assert_eq!(d.pin_usage_policy, [0x60, 0x20]);
        assert!(d.global_pin_is_primary());
    }

    #[test]
    fn discovery_precise_errors() {
        let cases = [
            (
                "53 14 7E 12 4F 0B A0 00 00 03 08 00 00 10 00 01 00 5F 2F 02 40 00",
                ObjectError::Tlv(TlvError::UnexpectedTag { expected: 0x7E, found: 0x53 }),
            ),
            ("7E 12 4F 0B A0 00 00 03 97 00 00 10 00 01 00 5F 2F 02 40 00", ObjectError::NotPivAid),
            ("7E 07 4F 05 A0 00 00 03 08", ObjectError::NotPivAid),
            (
                "7E 11 4F 0B A0 00 00 03 08 00 00 10 00 01 00 5F 2F 01 40",
                ObjectError::WrongLength { field: "PIN usage policy", expected: 2, got: 1 },
            ),
            ("7E 05 5F 2F 02 40 00", ObjectError::MissingField(0x4F)),
            ("7E 0D 4F 0B A0 00 00 03 08 00 00 10 00 01 00", ObjectError::MissingField(0x5F2F)),
            ("7E 0A 5F 2F 02 40 00 5F 2F 02 40 00", ObjectError::DuplicateField(0x5F2F)),
        ];
        for (bytes, error) in cases {
            assert_eq!(Discovery::decode(&h(bytes)), Err(error), "{bytes}");
        }
    }

    // ----- Certificates -----

    fn fake_cert(len: usize) -> Vec<u8> {
        let mut der = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
        der.extend((0..len).map(|i| (i * 7 % 13) as u8));
        der
    }

    fn gzip_bytes(data: &[u8]) -> Vec<u8> {
        gzip(data).unwrap()
    }

    #[test]
    fn certificate_plain_and_compressed_round_trip() {
        let cert = CertificateObject::new(fake_cert(1200));
        let plain = cert.encode(false);
        let mut expected = vec![0x53, 0x82, 0x04, 0xBD, 0x70, 0x82, 0x04, 0xB4];
        expected.extend_from_slice(&cert.der);
        expected.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
        assert_eq!(plain, expected);
        assert_eq!(CertificateObject::decode(&plain).unwrap(), cert);

        let packed = cert.encode(true);
        assert!(packed.len() < plain.len());
        let elements = open_object(&packed).unwrap();
        assert_eq!(tlv::find(&elements, 0x71), Some(&[0x01][..]));
        assert_eq!(&tlv::find(&elements, 0x70).unwrap()[..2], &[0x1F, 0x8B]);
        assert_eq!(CertificateObject::decode(&packed).unwrap(), cert);
    }

    #[test]
    fn certificate_tolerates_missing_certinfo_and_mscuid() {
        let der = fake_cert(100);
        let bytes = chuid_from(&[(0x70, &der), (0x72, &[1, 2, 3]), (0xFE, &[])]);
        assert_eq!(CertificateObject::decode(&bytes).unwrap().der, der);
        let bytes = chuid_from(&[(0x70, &der)]);
        assert_eq!(CertificateObject::decode(&bytes).unwrap().der, der);
    }

    #[test]
    fn certificate_accepts_the_net_id_zlib_form() {
        let der = fake_cert(900);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&der).unwrap();
        let mut body = vec![0x01, 0x00];
        body.extend_from_slice(&(der.len() as u16).to_le_bytes());
        body.extend_from_slice(&z.finish().unwrap());
        let bytes = chuid_from(&[(0x70, &body), (0x71, &[0x01]), (0xFE, &[])]);
        assert_eq!(CertificateObject::decode(&bytes).unwrap().der, der);
        // A wrong declared length is refused.
        body[2] ^= 1;
        let bytes = chuid_from(&[(0x70, &body), (0x71, &[0x01])]);
        assert!(matches!(CertificateObject::decode(&bytes), Err(ObjectError::Decompress(_))));
    }

    #[test]
    fn certificate_decompression_is_capped() {
        let at_limit = vec![0u8; MAX_DECOMPRESSED_CERT];
        let bytes = chuid_from(&[(0x70, &gzip_bytes(&at_limit)), (0x71, &[0x01])]);
        assert_eq!(CertificateObject::decode(&bytes).unwrap().der.len(), MAX_DECOMPRESSED_CERT);

        let over = vec![0u8; MAX_DECOMPRESSED_CERT + 1];
        let bytes = chuid_from(&[(0x70, &gzip_bytes(&over)), (0x71, &[0x01])]);
        assert_eq!(
            CertificateObject::decode(&bytes),
            Err(ObjectError::DecompressedTooLarge { limit: MAX_DECOMPRESSED_CERT })
        );

        // A 64 MiB bomb that compresses to ~64 KiB is refused without inflating it.
        let bomb = {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..64 {
                encoder.write_all(&chunk).unwrap();
            }
            encoder.finish().unwrap()
        };
        let bytes = chuid_from(&[(0x70, &bomb), (0x71, &[0x01])]);
        assert_eq!(
            CertificateObject::decode(&bytes),
            Err(ObjectError::DecompressedTooLarge { limit: MAX_DECOMPRESSED_CERT })
        );

        let mut zlib_header = vec![0x01, 0x00];
        zlib_header.extend_from_slice(&0xFFFFu16.to_le_bytes());
        let bytes = chuid_from(&[(0x70, &zlib_header), (0x71, &[0x01])]);
        assert_eq!(
            CertificateObject::decode(&bytes),
            Err(ObjectError::DecompressedTooLarge { limit: MAX_DECOMPRESSED_CERT })
        );
    }

    #[test]
    fn certificate_precise_errors() {
        let der = fake_cert(50);
        let mut truncated_gzip = gzip_bytes(&der);
        truncated_gzip.truncate(truncated_gzip.len() - 6);
        let cases: Vec<(Vec<u8>, ObjectError)> = vec![
            (chuid_from(&[(0x71, &[0x00])]), ObjectError::MissingField(0x70)),
            (
                chuid_from(&[(0x70, &der), (0x71, &[0x00, 0x00])]),
                ObjectError::WrongLength { field: "CertInfo", expected: 1, got: 2 },
            ),
            (
                chuid_from(&[(0x70, &der), (0x71, &[])]),
                ObjectError::WrongLength { field: "CertInfo", expected: 1, got: 0 },
            ),
            (chuid_from(&[(0x70, &der), (0x71, &[0x04])]), ObjectError::UnsupportedCertInfo(4)),
            (chuid_from(&[(0x70, &der), (0x70, &der)]), ObjectError::DuplicateField(0x70)),
        ];
        for (bytes, error) in cases {
            assert_eq!(CertificateObject::decode(&bytes), Err(error));
        }
        for body in [der.clone(), truncated_gzip] {
            let bytes = chuid_from(&[(0x70, &body), (0x71, &[0x01])]);
            assert!(matches!(CertificateObject::decode(&bytes), Err(ObjectError::Decompress(_))));
        }
    }

    // ----- Key history -----

    #[test]
    fn key_history_encodings() {
        let kh = KeyHistory::new(2, 0, None).unwrap();
        let bytes = kh.encode();
        assert_eq!(bytes, h("53 08 C1 01 02 C2 01 00 FE 00"));
        assert_eq!(KeyHistory::decode(&bytes).unwrap(), kh);
        assert_eq!(kh.on_card_slots(), vec![Slot(0x82), Slot(0x83)]);
        assert!(kh.off_card_slots().is_empty());

        let url = "http://example.com/0123abcd".to_string();
        let kh = KeyHistory::new(1, 3, Some(url.clone())).unwrap();
        let bytes = kh.encode();
        let mut expected = h("53 25 C1 01 01 C2 01 03 F3 1B");
        expected.extend_from_slice(url.as_bytes());
        expected.extend_from_slice(&[0xFE, 0x00]);
        assert_eq!(bytes, expected);
        assert_eq!(KeyHistory::decode(&bytes).unwrap(), kh);
        assert_eq!(kh.off_card_slots(), vec![Slot(0x95), Slot(0x94), Slot(0x93)]);
        assert_eq!(KeyHistory::new(0, 0, None).unwrap().encode(), h("53 08 C1 01 00 C2 01 00 FE 00"));
    }

    #[test]
    fn key_history_precise_errors() {
        assert_eq!(
            KeyHistory::new(15, 6, Some("u".into())),
            Err(ObjectError::TooManyRetiredKeys { on_card: 15, off_card: 6 })
        );
        assert_eq!(KeyHistory::new(0, 1, None), Err(ObjectError::MissingOffCardUrl));
        assert_eq!(KeyHistory::new(0, 0, Some("u".into())), Err(ObjectError::UnexpectedOffCardUrl));
        assert_eq!(
            KeyHistory::new(0, 1, Some("x".repeat(119))),
            Err(ObjectError::TooLong { field: "offCardCertURL", max: 118, got: 119 })
        );
        let cases: Vec<(Vec<u8>, ObjectError)> = vec![
            (h("53 05 C2 01 00 FE 00"), ObjectError::MissingField(0xC1)),
            (h("53 03 C1 01 00"), ObjectError::MissingField(0xC2)),
            (
                h("53 07 C1 02 00 00 C2 01 00"),
                ObjectError::WrongLength { field: "keysWithOnCardCerts", expected: 1, got: 2 },
            ),
            (h("53 06 C1 01 00 C2 01 FF"), ObjectError::TooManyRetiredKeys { on_card: 0, off_card: 255 }),
            (h("53 06 C1 01 00 C2 01 01"), ObjectError::MissingOffCardUrl),
            (h("53 0A C1 01 00 C2 01 01 F3 02 68 07"), ObjectError::NotAscii("offCardCertURL")),
            (h("53 09 C1 01 00 C2 01 00 F3 01 68"), ObjectError::UnexpectedOffCardUrl),
            (h("53 09 C1 01 00 C1 01 00 C2 01 00"), ObjectError::DuplicateField(0xC1)),
        ];
        for (bytes, error) in cases {
            assert_eq!(KeyHistory::decode(&bytes), Err(error), "{}", hex::encode(&bytes));
        }
    }

    // ----- Printed information -----

    fn sample_printed() -> PrintedInformation {
        PrintedInformation {
            name: "DOE, JANE Q".into(),
            employee_affiliation: "Employee".into(),
            expiration_date: "2030JAN01".into(),
            agency_card_serial: "0000123456".into(),
            issuer_identification: "ABCD0001".into(),
            organization_line1: Some("Department of".into()),
            organization_line2: None,
        }
    }

    #[test]
    fn printed_information_encoding() {
        let p = sample_printed();
        let bytes = p.encode().unwrap();
        let expected = chuid_from(&[
            (0x01, b"DOE, JANE Q"),
            (0x02, b"Employee"),
            (0x04, b"2030JAN01"),
            (0x05, b"0000123456"),
            (0x06, b"ABCD0001"),
            (0x07, b"Department of"),
            (0xFE, b""),
        ]);
        assert_eq!(bytes, expected);
        assert_eq!(PrintedInformation::decode(&bytes).unwrap(), p);

        // The deprecated affiliation line 2 (tag 03) is ignored.
        let legacy = chuid_from(&[
            (0x01, b"DOE, JANE Q"),
            (0x02, b"Employee"),
            (0x03, b"ignored"),
            (0x04, b"2030jan01"),
            (0x05, b"0000123456"),
            (0x06, b"ABCD0001"),
        ]);
        let decoded = PrintedInformation::decode(&legacy).unwrap();
        assert_eq!(decoded.expiration_date, "2030jan01");
        assert_eq!(decoded.organization_line1, None);
    }

    #[test]
    fn printed_information_precise_errors() {
        let date = "printed expiration date";
        let bad_date = ObjectError::BadDate { field: date, format: "YYYYMMMDD" };
        let mut p = sample_printed();
        p.name = "N".repeat(126);
        let too_long_name = ObjectError::TooLong { field: "name", max: 125, got: 126 };
        assert_eq!(p.encode(), Err(too_long_name.clone()));
        let mut p = sample_printed();
        p.name = "Zoë".into();
        assert_eq!(p.encode(), Err(ObjectError::NotAscii("name")));
        let mut p = sample_printed();
        p.issuer_identification = "I".repeat(16);
        assert_eq!(
            p.encode(),
            Err(ObjectError::TooLong { field: "issuer identification", max: 15, got: 16 })
        );
        let mut p = sample_printed();
        p.organization_line2 = Some("O".repeat(21));
        assert_eq!(
            p.encode(),
            Err(ObjectError::TooLong { field: "organization affiliation line 2", max: 20, got: 21 })
        );
        for (text, error) in [
            ("20300101", ObjectError::WrongLength { field: date, expected: 9, got: 8 }),
            ("2030JAX01", bad_date.clone()),
            ("2030FEB30", bad_date.clone()),
            ("2O30JAN01", bad_date.clone()),
            ("2030JAN00", bad_date.clone()),
            ("2030JAN011", ObjectError::TooLong { field: date, max: 9, got: 10 }),
        ] {
            let mut p = sample_printed();
            p.expiration_date = text.into();
            assert_eq!(p.encode(), Err(error), "{text}");
        }
        let mut p = sample_printed();
        p.expiration_date = "2028FEB29".into();
        assert!(p.encode().is_ok());

        let long_name = "N".repeat(126);
        let base: Vec<(u32, &[u8])> = vec![
            (0x01, b"DOE, JANE Q"),
            (0x02, b"Employee"),
            (0x04, b"2030JAN01"),
            (0x05, b"0000123456"),
            (0x06, b"ABCD0001"),
        ];
        let without = |tag: u32| {
            let kept: Vec<(u32, &[u8])> = base.iter().copied().filter(|(t, _)| *t != tag).collect();
            chuid_from(&kept)
        };
        let replaced = |tag: u32, value: &[u8]| {
            let kept: Vec<(u32, &[u8])> =
                base.iter().map(|(t, v)| (*t, if *t == tag { value } else { *v })).collect();
            chuid_from(&kept)
        };
        let cases: Vec<(Vec<u8>, ObjectError)> = vec![
            (without(0x01), ObjectError::MissingField(0x01)),
            (without(0x02), ObjectError::MissingField(0x02)),
            (without(0x04), ObjectError::MissingField(0x04)),
            (without(0x05), ObjectError::MissingField(0x05)),
            (without(0x06), ObjectError::MissingField(0x06)),
            (replaced(0x01, long_name.as_bytes()), too_long_name),
            (replaced(0x02, b"Employee\n"), ObjectError::NotAscii("employee affiliation")),
            (replaced(0x04, b"2030JUN31"), bad_date),
            (
                replaced(0x05, &[b'1'; 21]),
                ObjectError::TooLong { field: "agency card serial number", max: 20, got: 21 },
            ),
            (
                chuid_from(&[base.as_slice(), &[(0x07, &[b'x'; 21])]].concat()),
                ObjectError::TooLong { field: "organization affiliation line 1", max: 20, got: 21 },
            ),
            (chuid_from(&[base.as_slice(), &[(0x01, b"again")]].concat()), ObjectError::DuplicateField(0x01)),
        ];
        for (bytes, error) in cases {
            assert_eq!(PrintedInformation::decode(&bytes), Err(error), "{}", hex::encode(&bytes));
        }
    }

    // ----- Property tests -----

    fn digits<const N: usize>() -> impl Strategy<Value = Digits<N>> {
        proptest::array::uniform::<_, N>(0u8..10).prop_map(|d| Digits::new(d).unwrap())
    }

    fn fascn() -> impl Strategy<Value = FascN> {
        (
            (digits::<4>(), digits::<4>(), digits::<6>(), digits::<1>(), digits::<1>()),
            (digits::<10>(), digits::<1>(), digits::<4>(), digits::<1>()),
        )
            .prop_map(|((agency, system, credential, cs, ici), (pi, oc, oi, poa))| FascN {
                agency_code: agency,
                system_code: system,
                credential_number: credential,
                credential_series: cs,
                individual_credential_issue: ici,
                person_identifier: pi,
                organizational_category: oc,
                organizational_identifier: oi,
                person_association_category: poa,
            })
    }

    fn yyyymmdd() -> impl Strategy<Value = [u8; 8]> {
        (0u16..10000, 1u8..=12, 1u8..=28)
            .prop_map(|(y, m, d)| format!("{y:04}{m:02}{d:02}").into_bytes().try_into().unwrap())
    }

    fn chuid() -> impl Strategy<Value = Chuid> {
        (
            any::<[u8; 25]>(),
            any::<[u8; 16]>(),
            yyyymmdd(),
            proptest::option::of(any::<[u8; 16]>()),
            proptest::collection::vec(any::<u8>(), 0..400),
        )
            .prop_map(|(fasc_n, guid, expiration, cardholder_uuid, signature)| Chuid {
                fasc_n,
                guid,
                expiration,
                cardholder_uuid,
                signature,
                other: Vec::new(),
            })
    }

    fn ccc() -> impl Strategy<Value = Ccc> {
        use proptest::collection::vec;
        use proptest::option::of;
        (
            (any::<[u8; 21]>(), of(any::<u8>()), of(any::<u8>()), vec(any::<u8>(), 0..=128)),
            (of(any::<u8>()), any::<u8>(), vec(any::<u8>(), 0..20), vec(any::<u8>(), 0..4)),
            (vec(any::<u8>(), 0..4), vec(any::<u8>(), 0..4), vec(any::<u8>(), 0..4)),
            vec(any::<u8>(), 0..4),
        )
            .prop_map(|((id, f1, f2, f3), (f4, f5, f6, f7), (fa, fb, fc), fd)| Ccc {
                card_identifier: id,
                container_version: f1,
                grammar_version: f2,
                applications_card_url: f3,
                pkcs15: f4,
                data_model_number: f5,
                access_control_rule_table: f6,
                card_apdus: f7,
                redirection_tag: fa,
                capability_tuples: fb,
                status_tuples: fc,
                next_ccc: fd,
            })
    }

    fn key_history() -> impl Strategy<Value = KeyHistory> {
        (0u8..=20)
            .prop_flat_map(|on| (Just(on), 0u8..=(20 - on)))
            .prop_flat_map(|(on, off)| {
                let url = "[!-~]{0,118}";
                let url = match (on, off) {
                    (0, 0) => Just(None).boxed(),
                    (_, 0) => proptest::option::of(url).boxed(),
                    _ => url.prop_map(Some).boxed(),
                };
                (Just(on), Just(off), url)
            })
            .prop_map(|(on, off, url)| KeyHistory::new(on, off, url).unwrap())
    }

    fn printed_date() -> impl Strategy<Value = String> {
        (0u16..10000, 0usize..12, 1u8..=28).prop_map(|(y, m, d)| {
            let month = std::str::from_utf8(MONTH_ABBREVIATIONS[m]).unwrap();
            format!("{y:04}{month}{d:02}")
        })
    }

    fn printed() -> impl Strategy<Value = PrintedInformation> {
        (
            ("[ -~]{0,125}", "[ -~]{0,20}", printed_date(), "[ -~]{0,20}"),
            ("[ -~]{0,15}", proptest::option::of("[ -~]{0,20}"), proptest::option::of("[ -~]{0,20}")),
        )
            .prop_map(|((name, affiliation, date, serial), (issuer, line1, line2))| {
                PrintedInformation {
                    name,
                    employee_affiliation: affiliation,
                    expiration_date: date,
                    agency_card_serial: serial,
                    issuer_identification: issuer,
                    organization_line1: line1,
                    organization_line2: line2,
                }
            })
    }

    /// A valid encoding of any of the objects.
    fn any_encoding() -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            fascn().prop_map(|f| f.to_bytes().to_vec()),
            chuid().prop_map(|c| c.encode()),
            ccc().prop_map(|c| c.encode()),
            any::<[u8; 2]>().prop_map(|p| Discovery { pin_usage_policy: p }.encode()),
            (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>())
                .prop_map(|(der, z)| CertificateObject::new(der).encode(z)),
            key_history().prop_map(|k| k.encode()),
            printed().prop_map(|p| p.encode().unwrap()),
        ]
        .boxed()
    }

    /// Runs every decoder; the point is that none of them panics.
    fn decode_everything(bytes: &[u8]) {
        let _ = FascN::from_bytes(bytes);
        let _ = Chuid::decode(bytes);
        let _ = Chuid::signed_content_of(bytes);
        let _ = Ccc::decode(bytes);
        let _ = Discovery::decode(bytes);
        let _ = CertificateObject::decode(bytes);
        let _ = KeyHistory::decode(bytes);
        let _ = PrintedInformation::decode(bytes);
    }

    const INTERESTING_TAGS: [u32; 36] = [
        0x30, 0x34, 0x35, 0x36, 0x3E, 0xFE, 0xEE, 0x32, 0x33, 0x3D, 0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6,
        0xF7, 0xFA, 0xFB, 0xFC, 0xFD, 0x4F, 0x5F2F, 0x70, 0x71, 0x72, 0xC1, 0xC2, 0x01, 0x02, 0x03, 0x04,
        0x05, 0x06, 0x07,
    ];

    proptest! {
        #[test]
        fn fascn_roundtrip(f in fascn()) {
            let bytes = f.to_bytes();
            prop_assert_eq!(FascN::from_bytes(&bytes).unwrap(), f);
            prop_assert_eq!(f.to_string().parse::<FascN>().unwrap(), f);
            prop_assert_eq!(f.to_string().len(), 32);
        }

        #[test]
        fn chuid_roundtrip(c in chuid()) {
            let bytes = c.encode();
            prop_assert_eq!(Chuid::decode(&bytes).unwrap(), c.clone());
            prop_assert_eq!(Chuid::signed_content_of(&bytes).unwrap(), c.signed_content());
        }

        #[test]
        fn ccc_roundtrip(c in ccc()) {
            prop_assert_eq!(Ccc::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn discovery_roundtrip(policy in any::<[u8; 2]>()) {
            let d = Discovery { pin_usage_policy: policy };
            let bytes = d.encode();
            prop_assert_eq!(bytes.len(), 20);
            prop_assert_eq!(Discovery::decode(&bytes).unwrap(), d);
        }

        #[test]
        fn certificate_roundtrip(
            der in proptest::collection::vec(any::<u8>(), 0..3000),
            compress in any::<bool>(),
        ) {
            let cert = CertificateObject::new(der);
            prop_assert_eq!(CertificateObject::decode(&cert.encode(compress)).unwrap(), cert);
        }

        #[test]
        fn key_history_roundtrip(k in key_history()) {
            prop_assert_eq!(KeyHistory::decode(&k.encode()).unwrap(), k);
        }

        #[test]
        fn printed_information_roundtrip(p in printed()) {
            prop_assert_eq!(PrintedInformation::decode(&p.encode().unwrap()).unwrap(), p);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            decode_everything(&bytes);
            decode_everything(&tlv::tlv(0x53, &bytes));
            decode_everything(&tlv::tlv(0x7E, &bytes));
        }

        #[test]
        fn random_elements_never_panic(
            elements in proptest::collection::vec(
                (proptest::sample::select(INTERESTING_TAGS.to_vec()),
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..14,
            ),
        ) {
            let mut inner = Vec::new();
            for (t, v) in &elements {
                tlv::encode(*t, v, &mut inner);
            }
            decode_everything(&tlv::tlv(0x53, &inner));
            decode_everything(&tlv::tlv(0x7E, &inner));
        }

        #[test]
        fn mutated_encodings_never_panic(
            encoding in any_encoding(),
            position in any::<usize>(),
            flip in 1u8..=255,
            cut in any::<usize>(),
        ) {
            if !encoding.is_empty() {
                let mut mutated = encoding.clone();
                let i = position % mutated.len();
                mutated[i] ^= flip;
                decode_everything(&mutated);
                decode_everything(&encoding[..cut % encoding.len()]);
            }
        }

        #[test]
        fn random_text_never_panics(text in any::<String>()) {
            let _ = text.parse::<FascN>();
            let _ = Digits::<4>::parse(&text);
            let _ = check_yyyymmmdd("date", text.as_bytes());
        }
    }
}
