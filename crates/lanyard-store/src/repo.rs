//! The domain's repository traits on [`StoreTx`]: one SQL text per operation, shared by both
//! dialects, and one decoder per table.
//!
//! Write methods run inside a savepoint ([`StoreTx::begin_call`] / [`StoreTx::end_call`]): a call
//! that fails changes nothing, and the unit of work stays usable.
//!
//! One submodule per aggregate (workstation agents and pairing codes, users and groups, devices, credentials, audit, card secrets,
//! enrollment codes, jobs, API tokens and sessions, passwords); the argument and decoding helpers
//! they share are here.
//!
//! [`StoreTx`]: crate::tx::StoreTx
//! [`StoreTx::begin_call`]: crate::tx::StoreTx::begin_call
//! [`StoreTx::end_call`]: crate::tx::StoreTx::end_call

use lanyard_core::repo::StoreError;
use serde::Serialize;
use time::OffsetDateTime;

use crate::rows::Reader;
use crate::sql::Arg;

mod agents;
mod audit;
mod cluster;
mod credentials;
mod devices;
mod enrollment;
mod jobs;
mod passkeys;
mod passwords;
mod revocation;
mod secrets;
mod tokens;
mod users;

fn to_json<T: Serialize + ?Sized>(field: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("{field}: cannot encode as JSON: {e}")))
}

fn id(id: impl std::fmt::Display) -> Arg {
    Arg::Text(Some(id.to_string()))
}

fn opt_id(id: Option<impl std::fmt::Display>) -> Arg {
    Arg::Text(id.map(|id| id.to_string()))
}

/// Rows changed → `NotFound` when none was.
fn found(rows: u64) -> Result<(), StoreError> {
    if rows == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

/// A cut-off for comparisons: an instant past the storable range compares like the range's end.
fn clamped_nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(if t.unix_timestamp() > 0 {
        i64::MAX
    } else {
        i64::MIN
    })
}

fn opt_json(r: &Reader<'_>, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
    r.opt_text(col)?
        .map(|text| serde_json::from_str(&text).map_err(|e| r.corrupt(col, format!("invalid JSON: {e}"))))
        .transpose()
}
