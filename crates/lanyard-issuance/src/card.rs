//! Identifiers and dates a Lanyard card carries, derived in one place so that the CHUID the card
//! session writes and every certificate issued for the card (from any path) agree.

use lanyard_core::ids::DeviceId;
use lanyard_piv::objects::{FascN, ObjectError};
use time::{Duration, OffsetDateTime};

/// How long a card (its CHUID expiry, and so its certificates) is valid at most.
pub const CARD_VALIDITY_DAYS: i64 = 5 * 365;

/// The expiry of a card personalised at `now`.
pub fn card_expiry(now: OffsetDateTime) -> OffsetDateTime {
    now + Duration::days(CARD_VALIDITY_DAYS)
}

/// The CHUID's expiration date field (`YYYYMMDD`, SP 800-73-4 §3.1.2) for a card expiring at
/// `expires`.
pub fn chuid_expiration(expires: OffsetDateTime) -> String {
    format!("{:04}{:02}{:02}", expires.year(), u8::from(expires.month()), expires.day())
}

/// The card's FASC-N. Lanyard is not a federal issuer: agency code 9999 ("not a federal
/// credential"), and system code and credential number — the rest of the 14-digit FASC-N
/// identifier — are ten digits derived from the device id. Two cards share them only by chance
/// (about 1 in 20 000 among 1 000 cards, even odds near 120 000 cards): the card UUID
/// remains the identifier that matters; a FASC-N a relying party must find unique needs a number
/// allocated by the database.
pub fn fasc_n(device: DeviceId) -> Result<FascN, ObjectError> {
    let n = u128::from_be_bytes(*device.as_uuid().as_bytes()) % 10_000_000_000;
    let digits = format!("{n:010}");
    let (system, credential) = digits.split_at(4);
    FascN::with_identifier("9999", system, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fasc_n_is_per_device_and_stable() {
        let a = DeviceId::new();
        let b = DeviceId::new();
        let (fa, fb) = (fasc_n(a).unwrap().to_bytes(), fasc_n(b).unwrap().to_bytes());
        assert_eq!(fa, fasc_n(a).unwrap().to_bytes());
        assert_ne!(fa, fb);
        assert_ne!(fa, lanyard_piv::objects::YUBICO_TEMPLATE_FASC_N);
    }

    #[test]
    fn chuid_expiration_is_the_card_expiry_date() {
        let now = time::macros::datetime!(2026-12-03 23:00 UTC);
        assert_eq!(chuid_expiration(card_expiry(now)), "20311202");
    }
}
