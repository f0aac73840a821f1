//! Conversions between `time::OffsetDateTime` and the ASN.1 times of X.509, CRLs and OCSP.
//!
//! Everything is truncated to whole seconds (DER times carry no fractions here), and RFC 5280
//! §4.1.2.5 is followed: UTCTime through 2049, GeneralizedTime from 2050.

use std::time::Duration;

use der::DateTime;
use der::asn1::{GeneralizedTime, UtcTime};
use time::OffsetDateTime;
use x509_cert::time::Time;

use crate::error::CaError;

/// Drops sub-second precision and normalises to UTC.
pub(crate) fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    // Out-of-range conversions keep `t`; encoding it later reports TimeOutOfRange.
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    t.replace_nanosecond(0).unwrap_or(t)
}

/// `t + d`, as an error instead of a panic when the result leaves the representable range.
pub(crate) fn add(t: OffsetDateTime, d: time::Duration) -> Result<OffsetDateTime, CaError> {
    t.checked_add(d).ok_or_else(|| CaError::TimeOutOfRange(format!("{} + {d}", rfc3339(t))))
}

fn to_der_datetime(t: OffsetDateTime) -> Result<DateTime, CaError> {
    let secs = u64::try_from(t.unix_timestamp()).map_err(|_| CaError::TimeOutOfRange(rfc3339(t)))?;
    DateTime::from_unix_duration(Duration::from_secs(secs)).map_err(|_| CaError::TimeOutOfRange(rfc3339(t)))
}

/// X.509 `Time` (validity, CRL dates).
pub(crate) fn to_x509(t: OffsetDateTime) -> Result<Time, CaError> {
    let dt = to_der_datetime(t)?;
    if dt.year() <= UtcTime::MAX_YEAR {
        Ok(Time::UtcTime(UtcTime::from_date_time(dt).map_err(|_| CaError::TimeOutOfRange(rfc3339(t)))?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(dt)))
    }
}

/// GeneralizedTime (OCSP).
pub(crate) fn to_generalized(t: OffsetDateTime) -> Result<GeneralizedTime, CaError> {
    Ok(GeneralizedTime::from_date_time(to_der_datetime(t)?))
}

/// Back from an X.509 `Time`.
pub(crate) fn from_x509(t: &Time) -> Result<OffsetDateTime, CaError> {
    let secs = t.to_unix_duration().as_secs();
    let secs = i64::try_from(secs).map_err(|_| CaError::TimeOutOfRange(t.to_string()))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CaError::TimeOutOfRange(t.to_string()))
}

/// RFC 3339 rendering for error messages.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn utc_until_2049_then_generalized() {
        assert!(matches!(to_x509(datetime!(2049-12-31 23:59:59 UTC)).unwrap(), Time::UtcTime(_)));
        assert!(matches!(to_x509(datetime!(2050-01-01 00:00:00 UTC)).unwrap(), Time::GeneralTime(_)));
        assert!(to_x509(datetime!(1969-12-31 23:59:59 UTC)).is_err());
    }

    #[test]
    fn round_trip_truncates() {
        let t = datetime!(2030-05-06 07:08:09.123456 +02:00);
        let back = from_x509(&to_x509(truncate(t)).unwrap()).unwrap();
        assert_eq!(back, datetime!(2030-05-06 05:08:09 UTC));
    }
}
