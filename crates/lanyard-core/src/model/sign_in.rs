//! How the members of a group sign in to the portal: the `sign_in` part of a group's
//! [`super::Policy`] (issue 11, passkeys). Kept apart from the rest of the policy so its rules
//! read in one place.

use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum! {
    /// Which ways of signing in to the portal a group's members have.
    pub enum SignInMethod ("sign-in method") {
        /// Username and password only; passkeys may not be registered or used.
        Password = "password",
        /// A passkey only, once the member has a usable one (an active registration on an Active
        /// security key); until then, and whenever none is usable (key suspended, revoked or
        /// its registration removed), the password still works, so nobody is locked out.
        Passkey = "passkey",
        /// Either, as the member likes.
        Either = "either",
    }
}

string_enum! {
    /// Whether a passkey sign-in (and registration) must include user verification: the key's
    /// FIDO PIN or a biometric (the UV flag).
    pub enum PasskeyUserVerification ("passkey user verification") {
        /// The key must verify the user; a touch alone is refused.
        Required = "required",
        /// Asked for; a key that only checks presence is accepted.
        Preferred = "preferred",
    }
}

/// The `sign_in` part of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignInPolicy {
    pub method: SignInMethod,
    pub passkey_user_verification: PasskeyUserVerification,
}

impl Default for SignInPolicy {
    /// `either` with user verification required. `either` because a policy that changes what
    /// existing members must do to sign in should be an administrator's decision, never the
    /// side effect of an upgrade; UV required because a passkey that replaces a password must be
    /// two factors (the key, and its PIN), and the issuance flow sets a FIDO PIN anyway.
    fn default() -> Self {
        Self { method: SignInMethod::Either, passkey_user_verification: PasskeyUserVerification::Required }
    }
}

impl SignInPolicy {
    /// Whether members may register and use passkeys at all.
    pub const fn passkeys_allowed(&self) -> bool {
        !matches!(self.method, SignInMethod::Password)
    }

    /// Whether a password sign-in is refused for a member who has `usable` passkeys.
    pub const fn refuses_password(&self, usable_passkeys: usize) -> bool {
        matches!(self.method, SignInMethod::Passkey) && usable_passkeys > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_refused_only_with_passkey_policy_and_a_usable_passkey() {
        let mut p = SignInPolicy::default();
        assert_eq!(p.method, SignInMethod::Either);
        assert!(p.passkeys_allowed() && !p.refuses_password(3));
        p.method = SignInMethod::Passkey;
        assert!(p.refuses_password(1));
        assert!(!p.refuses_password(0), "no usable passkey: the password still works");
        p.method = SignInMethod::Password;
        assert!(!p.passkeys_allowed() && !p.refuses_password(1));
    }

    #[test]
    fn stored_policies_read_back_and_unknown_members_are_refused() {
        let p: SignInPolicy =
            serde_json::from_str(r#"{"method":"passkey","passkey_user_verification":"preferred"}"#).unwrap();
        assert_eq!(p.method, SignInMethod::Passkey);
        assert!(
            serde_json::from_str::<SignInPolicy>(r#"{"method":"x","passkey_user_verification":"required"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<SignInPolicy>(
                r#"{"method":"either","passkey_user_verification":"required","x":1}"#
            )
            .is_err()
        );
    }
}
