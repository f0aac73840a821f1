//! Typed identifiers. Each is a UUID underneath, but a `DeviceId` cannot be passed where a
//! `UserId` is expected, and a parse error says which kind of id was wrong and why.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// A string that is not a valid id of the expected kind.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdParseError {
    /// Which id was expected, e.g. "device id".
    pub kind: &'static str,
    /// The rejected input (truncated to 80 characters).
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        $crate::macros::string_schema!($name, Some(utoipa::openapi::KnownFormat::Uuid), "An id (UUID).");

        impl $name {
            /// A fresh random (version 4) id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID (e.g. read from storage).
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID underneath.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The 16 bytes of the UUID, big-endian as RFC 9562 lays them out.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_uuid(s, $kind).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

fn parse_uuid(s: &str, kind: &'static str) -> Result<Uuid, IdParseError> {
    let fail = |reason: String| IdParseError { kind, value: s.chars().take(80).collect(), reason };
    if s.is_empty() {
        return Err(fail("it is empty".into()));
    }
    // Only the canonical hyphenated form (what Display prints) and the simple 32-digit form are
    // accepted; braces and URNs are legal UUID spellings but never appear in our URLs or storage.
    if s.len() != 36 && s.len() != 32 {
        return Err(fail(format!(
            "expected 36 characters (8-4-4-4-12 hex digits with hyphens), got {}",
            s.chars().count()
        )));
    }
    Uuid::parse_str(s).map_err(|e| fail(e.to_string()))
}

id_type!(
    /// A user (cardholder, operator, administrator or auditor).
    UserId,
    "user id"
);
id_type!(
    /// A user group, which carries a policy.
    GroupId,
    "group id"
);
id_type!(
    /// A smart card, USB key or mobile device.
    DeviceId,
    "device id"
);
id_type!(
    /// A credential (certificate) held by a device.
    CredentialId,
    "credential id"
);
id_type!(
    /// An issuance (or other card session) job.
    JobId,
    "job id"
);
id_type!(
    /// A one-time enrollment code (mobile or derived PIV QR code).
    EnrollmentCodeId,
    "enrollment code id"
);
id_type!(
    /// An API token.
    ApiTokenId,
    "API token id"
);
id_type!(
    /// A one-time code that pairs a workstation agent with its user.
    PairingCodeId,
    "pairing code id"
);
id_type!(
    /// A workstation agent paired with a user.
    AgentId,
    "agent id"
);

id_type!(
    /// A passkey registration: a WebAuthn credential of a user's security key, for portal sign-in.
    PasskeyId,
    "passkey id"
);
id_type!(
    /// One run of a server process: random at each start, it names the holder of card-session
    /// leases (a restarted process is a new instance, so it never mistakes a lease of its
    /// previous life for its own).
    InstanceId,
    "server instance id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = DeviceId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        assert_eq!(id.as_uuid().simple().to_string().parse::<DeviceId>().unwrap(), id);
    }

    #[test]
    fn parse_errors_name_the_kind_and_reason() {
        let err = "".parse::<UserId>().unwrap_err();
        assert_eq!(err.to_string(), "invalid user id \"\": it is empty");
        let err = "1234".parse::<DeviceId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid device id \"1234\": expected 36 characters (8-4-4-4-12 hex digits with hyphens), got 4"
        );
        let err = "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz".parse::<JobId>().unwrap_err();
        assert_eq!(err.kind, "job id");
        assert!(err.reason.contains("invalid character"), "{}", err.reason);
    }

    #[test]
    fn serde_is_a_plain_string() {
        let id: CredentialId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"67e55044-10b1-426f-9247-bb680e5fe0c8\"");
        assert_eq!(serde_json::from_str::<CredentialId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<CredentialId>("\"nope\"").is_err());
    }

    #[test]
    fn debug_names_the_type() {
        let id: ApiTokenId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        assert_eq!(format!("{id:?}"), "ApiTokenId(67e55044-10b1-426f-9247-bb680e5fe0c8)");
    }
}
