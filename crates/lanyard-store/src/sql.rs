//! Statements as text plus arguments, independent of the database they will run on.
//!
//! SQL text only ever comes from `&'static str` pieces and `$n` placeholders that [`Query`]
//! numbers itself; values always travel as bind arguments. That is what makes the
//! `AssertSqlSafe` in [`Sql::into_query`] true.

use std::borrow::Cow;

use lanyard_core::repo::StoreError;
use time::OffsetDateTime;

/// One bind argument. `None` binds SQL NULL of the given type.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bytes(Option<Vec<u8>>),
    Bool(bool),
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<Vec<u8>> for Arg {
    fn from(v: Vec<u8>) -> Self {
        Arg::Bytes(Some(v))
    }
}

impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Self {
        Arg::Bytes(Some(v.to_vec()))
    }
}

impl From<Option<Vec<u8>>> for Arg {
    fn from(v: Option<Vec<u8>>) -> Self {
        Arg::Bytes(v)
    }
}

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// Unix nanoseconds as stored. An `i64` of nanoseconds spans 1677-09-21 to 2262-04-11; an
/// instant outside that range is refused rather than silently changed.
pub(crate) fn nanos(field: &'static str, t: OffsetDateTime) -> Result<i64, StoreError> {
    i64::try_from(t.unix_timestamp_nanos()).map_err(|_| {
        StoreError::Backend(format!(
            "{field} {t} cannot be stored: times are kept as 64-bit Unix nanoseconds, \
             1677-09-21 to 2262-04-11 UTC"
        ))
    })
}

pub(crate) fn opt_nanos(field: &'static str, t: Option<OffsetDateTime>) -> Result<Option<i64>, StoreError> {
    t.map(|t| nanos(field, t)).transpose()
}

/// A `LIMIT` argument.
pub(crate) fn limit(n: u32) -> Arg {
    Arg::Int(Some(i64::from(n)))
}

/// A statement and its arguments. The text is a literal, or one assembled by [`Query::push`] and
/// [`Query::arg`] from literals and numbered placeholders.
#[derive(Clone, Debug)]
pub(crate) struct Query {
    sql: Cow<'static, str>,
    pub(crate) args: Vec<Arg>,
}

impl Query {
    /// A fixed statement whose placeholders `$1…$n` take `args` in order.
    pub(crate) fn new(sql: &'static str, args: Vec<Arg>) -> Self {
        Self { sql: Cow::Borrowed(sql), args }
    }

    /// Starts a statement to be extended with [`Query::push`] and [`Query::arg`].
    pub(crate) fn build(sql: &'static str) -> Self {
        Self::new(sql, Vec::new())
    }

    /// Appends literal SQL.
    pub(crate) fn push(&mut self, sql: &'static str) -> &mut Self {
        self.sql.to_mut().push_str(sql);
        self
    }

    /// Appends the next placeholder (`$n`) and binds `value` to it.
    pub(crate) fn arg(&mut self, value: impl Into<Arg>) -> &mut Self {
        self.args.push(value.into());
        let n = self.args.len();
        let text = self.sql.to_mut();
        text.push('$');
        text.push_str(&n.to_string());
        self
    }

    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    /// The sqlx statement, without its arguments (see `bind_args!`).
    pub(crate) fn statement<'q, DB: sqlx::Database>(&self) -> sqlx::query::Query<'q, DB, DB::Arguments> {
        match &self.sql {
            Cow::Borrowed(s) => sqlx::query(*s),
            // Assembled only by `push` and `arg` from `&'static str` pieces and placeholder
            // numbers: no value ever reaches the text.
            Cow::Owned(s) => sqlx::query(sqlx::AssertSqlSafe(s.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut q = Query::build("SELECT * FROM t WHERE a = ");
        q.arg("x").push(" AND b IN (").arg(1).push(", ").arg(2).push(")");
        assert_eq!(q.sql(), "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)");
        assert_eq!(q.args.len(), 3);
    }

    #[test]
    fn times_outside_the_nanosecond_range_are_refused() {
        let ok = time::macros::datetime!(2262-04-11 23:47:16.854775807 UTC);
        assert_eq!(nanos("t", ok), Ok(i64::MAX));
        let too_late = time::macros::datetime!(2262-04-11 23:47:16.854775808 UTC);
        let err = nanos("credentials.not_after", too_late).unwrap_err();
        assert!(err.to_string().contains("credentials.not_after"), "{err}");
    }
}
