//! Reading rows of either database into domain values, with a precise error for every corrupt
//! value (a row written by something other than this store, or edited by hand) instead of a panic.

use std::fmt::Display;
use std::str::FromStr;

use lanyard_core::repo::StoreError;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

/// The column types the schema uses, read the same way from a SQLite or a PostgreSQL row.
/// Object-safe, so the decoders below are written once for both.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;
    fn boolean(&self, col: &str) -> Result<Option<bool>, sqlx::Error>;
    /// Column `i` as text borrowed from the row (no copy), for rows read by the million.
    fn text_at(&self, i: usize) -> Result<Option<&str>, sqlx::Error>;
    /// Column `i` as an integer.
    fn int_at(&self, i: usize) -> Result<Option<i64>, sqlx::Error>;
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
            fn int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
                self.try_get(col)
            }
            fn boolean(&self, col: &str) -> Result<Option<bool>, sqlx::Error> {
                self.try_get(col)
            }
            fn text_at(&self, i: usize) -> Result<Option<&str>, sqlx::Error> {
                self.try_get(i)
            }
            fn int_at(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(i)
            }
        }
    };
}

impl_cols!(SqliteRow);
impl_cols!(PgRow);

/// A decoder: one row to one value.
pub(crate) type Decode<T> = fn(&dyn Cols) -> Result<T, StoreError>;

/// Reads the columns of one row of `table`; errors name the table, the row's key and the column.
pub(crate) struct Reader<'r> {
    row: &'r dyn Cols,
    table: &'static str,
    key: String,
}

impl<'r> Reader<'r> {
    /// `key_col` identifies the row in error messages (e.g. `"id"`, `"seq"`).
    pub(crate) fn new(row: &'r dyn Cols, table: &'static str, key_col: &'static str) -> Self {
        let key = match row.text(key_col) {
            Ok(Some(k)) => k,
            _ => match row.int(key_col) {
                Ok(Some(k)) => k.to_string(),
                _ => "?".to_owned(),
            },
        };
        Self { row, table, key }
    }

    /// A `Backend` error about column `col` of this row.
    pub(crate) fn corrupt(&self, col: &str, reason: impl Display) -> StoreError {
        StoreError::Backend(format!("corrupt row in {} ({}): {col}: {reason}", self.table, self.key))
    }

    fn got<T>(&self, col: &str, value: Result<Option<T>, sqlx::Error>) -> Result<Option<T>, StoreError> {
        value.map_err(|e| self.corrupt(col, e))
    }

    fn required<T>(&self, col: &str, value: Option<T>) -> Result<T, StoreError> {
        value.ok_or_else(|| self.corrupt(col, "is NULL"))
    }

    pub(crate) fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.got(col, self.row.text(col))
    }

    pub(crate) fn text(&self, col: &str) -> Result<String, StoreError> {
        let v = self.opt_text(col)?;
        self.required(col, v)
    }

    pub(crate) fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.got(col, self.row.int(col))
    }

    pub(crate) fn int(&self, col: &str) -> Result<i64, StoreError> {
        let v = self.opt_int(col)?;
        self.required(col, v)
    }

    pub(crate) fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.got(col, self.row.bytes(col))
    }

    pub(crate) fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        let v = self.opt_bytes(col)?;
        self.required(col, v)
    }

    pub(crate) fn boolean(&self, col: &str) -> Result<bool, StoreError> {
        let v = self.got(col, self.row.boolean(col))?;
        self.required(col, v)
    }

    /// Text parsed with `FromStr`: ids and the domain's string enums.
    pub(crate) fn opt_parse<T: FromStr>(&self, col: &str) -> Result<Option<T>, StoreError>
    where
        T::Err: Display,
    {
        self.opt_text(col)?.map(|s| s.parse().map_err(|e| self.corrupt(col, e))).transpose()
    }

    pub(crate) fn parse<T: FromStr>(&self, col: &str) -> Result<T, StoreError>
    where
        T::Err: Display,
    {
        let v = self.opt_parse(col)?;
        self.required(col, v)
    }

    /// Text checked by a domain constructor (e.g. `Username::parse`).
    pub(crate) fn opt_checked<T, E: Display>(
        &self,
        col: &str,
        check: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, StoreError> {
        self.opt_text(col)?.map(|s| check(&s).map_err(|e| self.corrupt(col, e))).transpose()
    }

    pub(crate) fn checked<T, E: Display>(
        &self,
        col: &str,
        check: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, StoreError> {
        let v = self.opt_checked(col, check)?;
        self.required(col, v)
    }

    /// A JSON document.
    pub(crate) fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T, StoreError> {
        let text = self.text(col)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(col, format!("invalid JSON: {e}")))
    }

    pub(crate) fn opt_time(&self, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.opt_int(col)?
            .map(|n| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(n))
                    .map_err(|e| self.corrupt(col, format!("{n} ns is not a valid time: {e}")))
            })
            .transpose()
    }

    pub(crate) fn time(&self, col: &str) -> Result<OffsetDateTime, StoreError> {
        let v = self.opt_time(col)?;
        self.required(col, v)
    }

    /// A fixed-length byte string (hashes, GUIDs).
    pub(crate) fn opt_array<const N: usize>(&self, col: &str) -> Result<Option<[u8; N]>, StoreError> {
        self.opt_bytes(col)?
            .map(|b| {
                <[u8; N]>::try_from(b.as_slice())
                    .map_err(|_| self.corrupt(col, format!("expected {N} bytes, got {}", b.len())))
            })
            .transpose()
    }

    pub(crate) fn array<const N: usize>(&self, col: &str) -> Result<[u8; N], StoreError> {
        let v = self.opt_array(col)?;
        self.required(col, v)
    }
}
