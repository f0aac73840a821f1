//! Small code generators shared by the model modules.

/// Declares a fieldless enum stored and transmitted as a fixed lowercase string: serde, `Display`,
/// `FromStr` (with a [`crate::ParseEnumError`] naming the accepted values), `as_str` and `ALL`.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
            serde::Serialize, serde::Deserialize,
        )]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable text form (used in storage, the API and the audit log).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::macros::openapi_string_enum(&[$($text),+])
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl ::std::str::FromStr for $name {
            type Err = $crate::ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err($crate::ParseEnumError {
                        what: $what,
                        value: s.to_owned(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

pub(crate) use string_enum;

/// The OpenAPI schema of a string that takes one of `values`.
#[cfg(feature = "openapi")]
pub(crate) fn openapi_string_enum(
    values: &[&str],
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied())).into()
}

/// The OpenAPI schema of a string with an optional `format` (e.g. `uuid`) and a description.
#[cfg(feature = "openapi")]
pub(crate) fn openapi_string(
    format: Option<utoipa::openapi::KnownFormat>,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(format.map(SchemaFormat::KnownFormat))
        .description(Some(description))
        .into()
}

/// `ToSchema` for a type that is a string on the wire.
macro_rules! string_schema {
    ($name:ty, $format:expr, $description:literal) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::macros::openapi_string($format, $description)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

pub(crate) use string_schema;

/// Hex (lowercase) serde helpers for byte arrays and vectors, so stored JSON and API bodies show
/// `"a1b2…"` rather than arrays of numbers.
pub(crate) mod serde_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: AsRef<[u8]>, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, T: hex::FromHex, D: Deserializer<'de>>(d: D) -> Result<T, D::Error>
    where
        T::Error: std::fmt::Display,
    {
        let s = String::deserialize(d)?;
        T::from_hex(s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<T: AsRef<[u8]>, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&hex::encode(v)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, T: hex::FromHex, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error>
        where
            T::Error: std::fmt::Display,
        {
            match Option::<String>::deserialize(d)? {
                Some(s) => T::from_hex(s).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}
