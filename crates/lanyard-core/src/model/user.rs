use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Policy, ValidationError, check_text};
use crate::ids::{GroupId, UserId};
use crate::macros::string_enum;

string_enum! {
    /// What a user may do (DESIGN §1). A user can hold several roles.
    pub enum Role ("role") {
        /// A cardholder: the self-service portal, own devices only.
        User = "user",
        /// Help desk / issuance officer: acts on other users' devices.
        Operator = "operator",
        /// Configures groups, policies and users.
        Administrator = "administrator",
        /// Reads the audit log; changes nothing.
        Auditor = "auditor",
    }
}

/// A login name: 1–64 characters from `[a-z0-9._-]`. Always valid once constructed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

crate::macros::string_schema!(Username, None, "A username: 1–64 of a–z, 0–9, '.', '_', '-', lowercase.");

impl Username {
    /// Maximum length in characters.
    pub const MAX_LEN: usize = 64;

    /// Accepts `s` exactly as given, or says precisely which rule it breaks.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let fail = |reason: String| ValidationError::new("username", reason);
        if s.is_empty() {
            return Err(fail("must not be empty".into()));
        }
        let len = s.chars().count();
        if len > Self::MAX_LEN {
            return Err(fail(format!("must be at most {} characters, got {len}", Self::MAX_LEN)));
        }
        if let Some(c) = s.chars().find(|c| c.is_ascii_uppercase()) {
            return Err(fail(format!("must be lowercase (found {c:?})")));
        }
        if let Some(c) =
            s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(*c)))
        {
            return Err(fail(format!("may contain only a-z, 0-9, '.', '_' and '-' (found {c:?})")));
        }
        Ok(Self(s.to_owned()))
    }

    /// Trims and lowercases `s` first: for what people type into a login or search form.
    pub fn normalize(s: &str) -> Result<Self, ValidationError> {
        Self::parse(&s.trim().to_ascii_lowercase())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An e-mail address, checked for shape only (one `@`, non-empty local part and domain, no
/// whitespace, at most 254 characters). Deliverability is not our business.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

crate::macros::string_schema!(Email, Some(utoipa::openapi::KnownFormat::Email), "An e-mail address.");

impl Email {
    /// Accepts `s` or says which rule it breaks.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let fail = |reason: &str| ValidationError::new("email", reason);
        if s.len() > 254 {
            return Err(fail("must be at most 254 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("must not contain whitespace or control characters"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(fail("must contain '@'"));
        };
        if local.is_empty() || domain.is_empty() {
            return Err(fail("needs text before and after '@'"));
        }
        if domain.contains('@') {
            return Err(fail("must contain exactly one '@'"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A person known to Lanyard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: UserId,
    pub username: Username,
    /// 1–128 characters, no control characters.
    pub display_name: String,
    pub email: Option<Email>,
    /// The group whose policy applies to this user.
    pub group: GroupId,
    pub roles: BTreeSet<Role>,
    /// A disabled user can obtain no view of the domain (see [`crate::authz::Principal::new`]).
    pub disabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl User {
    /// Maximum display name length in characters.
    pub const MAX_DISPLAY_NAME: usize = 128;

    /// A new enabled cardholder (role [`Role::User`]) in `group`.
    pub fn new(
        username: Username,
        display_name: impl Into<String>,
        group: GroupId,
        at: OffsetDateTime,
    ) -> Result<Self, ValidationError> {
        let user = Self {
            id: UserId::new(),
            username,
            display_name: display_name.into(),
            email: None,
            group,
            roles: BTreeSet::from([Role::User]),
            disabled: false,
            created_at: at,
        };
        user.validate()?;
        Ok(user)
    }

    /// Checks the fields whose types do not already guarantee validity.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_text("display_name", &self.display_name, Self::MAX_DISPLAY_NAME)
    }

    /// Whether the user holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A set of users sharing one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    pub id: GroupId,
    /// 1–64 characters, unique.
    pub name: String,
    pub policy: Policy,
}

impl Group {
    /// Maximum group name length in characters.
    pub const MAX_NAME: usize = 64;

    /// Checks the name and the policy.
    pub fn validate(&self) -> Result<(), crate::DomainError> {
        check_text("group name", &self.name, Self::MAX_NAME)?;
        self.policy.validate().map_err(crate::DomainError::InvalidPolicy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["a", "alice", "j.doe-2_x", &"a".repeat(64)] {
            assert_eq!(Username::parse(ok).unwrap().as_str(), ok);
        }
        let cases = [
            ("", "username: must not be empty"),
            ("Alice", "username: must be lowercase (found 'A')"),
            ("al ice", "username: may contain only a-z, 0-9, '.', '_' and '-' (found ' ')"),
            ("émile", "username: may contain only a-z, 0-9, '.', '_' and '-' (found 'é')"),
        ];
        for (input, msg) in cases {
            assert_eq!(Username::parse(input).unwrap_err().to_string(), msg, "{input:?}");
        }
        assert_eq!(
            Username::parse(&"a".repeat(65)).unwrap_err().to_string(),
            "username: must be at most 64 characters, got 65"
        );
        assert_eq!(Username::normalize("  Alice ").unwrap().as_str(), "alice");
        assert!(serde_json::from_str::<Username>("\"BOB\"").is_err());
    }

    #[test]
    fn emails() {
        assert!(Email::parse("a@example.org").is_ok());
        assert_eq!(Email::parse("nope").unwrap_err().to_string(), "email: must contain '@'");
        assert_eq!(Email::parse("@x").unwrap_err().to_string(), "email: needs text before and after '@'");
        assert_eq!(Email::parse("a@b@c").unwrap_err().to_string(), "email: must contain exactly one '@'");
        assert!(Email::parse("a b@c").is_err());
    }

    #[test]
    fn display_name_rules() {
        let at = time::macros::datetime!(2025-01-01 0:00 UTC);
        let name = Username::parse("alice").unwrap();
        assert!(User::new(name.clone(), "Alice Liddell", GroupId::new(), at).is_ok());
        assert_eq!(
            User::new(name.clone(), " ", GroupId::new(), at).unwrap_err().to_string(),
            "display_name: must not be empty"
        );
        assert_eq!(
            User::new(name, "a\u{7}b", GroupId::new(), at).unwrap_err().to_string(),
            "display_name: must not contain control character '\\u{7}'"
        );
    }
}
