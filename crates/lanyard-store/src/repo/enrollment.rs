//! One-time enrollment codes for mobiles.

use lanyard_core::ids::DeviceId;
use lanyard_core::model::{EnrollmentCode, EnrollmentPurpose, ExternalSponsor};
use lanyard_core::repo::{EnrollmentCodeRepo, StoreError};
use lanyard_core::secrets::TokenHash;
use time::OffsetDateTime;

use super::{clamped_nanos, found, id, opt_id};
use crate::rows::{Cols, Reader};
use crate::sql::{Query, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! code_cols {
    () => {
        "id, user_id, purpose, sponsor_id, code_hash, created_at, expires_at, used_at, session_hash, device_id, \
         completed_at, external_sponsor_issuer, external_sponsor_serial"
    };
}

const MOBILE_PROFILE: &str = "mobile_profile";
const DERIVED_PIV: &str = "derived_piv";

fn decode_code(row: &dyn Cols) -> Result<EnrollmentCode, StoreError> {
    let r = Reader::new(row, "enrollment_codes", "id");
    let sponsor: Option<DeviceId> = r.opt_parse("sponsor_id")?;
    let external = match (r.opt_text("external_sponsor_issuer")?, r.opt_text("external_sponsor_serial")?) {
        (None, None) => None,
        (Some(issuer), Some(serial)) => Some(
            ExternalSponsor::new(&issuer, &serial).map_err(|e| r.corrupt("external_sponsor_issuer", e))?,
        ),
        _ => {
            return Err(
                r.corrupt("external_sponsor_serial", "set without the issuer, or the other way round")
            );
        }
    };
    let purpose = match r.text("purpose")?.as_str() {
        MOBILE_PROFILE if sponsor.is_none() && external.is_none() => EnrollmentPurpose::MobileProfile,
        MOBILE_PROFILE => return Err(r.corrupt("sponsor_id", "a sponsor set on a mobile_profile code")),
        DERIVED_PIV if sponsor.is_some() && external.is_some() => {
            return Err(r.corrupt("external_sponsor_issuer", "set together with sponsor_id"));
        }
        DERIVED_PIV => EnrollmentPurpose::DerivedPiv { sponsor, external_sponsor: external },
        other => return Err(r.corrupt("purpose", format!("unknown enrollment purpose {other:?}"))),
    };
    Ok(EnrollmentCode {
        id: r.parse("id")?,
        user: r.parse("user_id")?,
        purpose,
        code_hash: TokenHash::from_bytes(r.array("code_hash")?),
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        used_at: r.opt_time("used_at")?,
        session: r.opt_array("session_hash")?.map(TokenHash::from_bytes),
        device: r.opt_parse("device_id")?,
        completed_at: r.opt_time("completed_at")?,
    })
}

impl EnrollmentCodeRepo for StoreTx {
    async fn insert_enrollment_code(&mut self, code: &EnrollmentCode) -> Result<(), StoreError> {
        let (purpose, sponsor, external) = match &code.purpose {
            EnrollmentPurpose::MobileProfile => (MOBILE_PROFILE, None, None),
            EnrollmentPurpose::DerivedPiv { sponsor, external_sponsor } => {
                (DERIVED_PIV, *sponsor, external_sponsor.as_ref())
            }
        };
        let q = Query::new(
            concat!(
                "INSERT INTO enrollment_codes (",
                code_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ),
            vec![
                id(code.id),
                id(code.user),
                purpose.into(),
                opt_id(sponsor),
                code.code_hash.as_bytes().as_slice().into(),
                nanos("enrollment_codes.created_at", code.created_at)?.into(),
                nanos("enrollment_codes.expires_at", code.expires_at)?.into(),
                opt_nanos("enrollment_codes.used_at", code.used_at)?.into(),
                code.session.as_ref().map(|h| h.as_bytes().to_vec()).into(),
                opt_id(code.device),
                opt_nanos("enrollment_codes.completed_at", code.completed_at)?.into(),
                external.map(|e| e.issuer.clone()).into(),
                external.map(|e| e.serial_hex.clone()).into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_enrollment_code_by_hash(
        &mut self,
        hash: &TokenHash,
    ) -> Result<Option<EnrollmentCode>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", code_cols!(), " FROM enrollment_codes WHERE code_hash = $1"),
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_code).await
    }

    async fn update_enrollment_code(&mut self, code: &EnrollmentCode) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE enrollment_codes SET used_at = $2, device_id = $3, completed_at = $4 WHERE id = $1",
            vec![
                id(code.id),
                opt_nanos("enrollment_codes.used_at", code.used_at)?.into(),
                opt_id(code.device),
                opt_nanos("enrollment_codes.completed_at", code.completed_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn delete_expired_enrollment_codes(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q = Query::new(
            "DELETE FROM enrollment_codes WHERE expires_at < $1",
            vec![clamped_nanos(before).into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}
