//! The *Sign-in* part of the group policy form (password, passkey or either; passkey user
//! verification), kept apart from [`super::admin`]'s other fields.

use lanyard_core::model::{PasskeyUserVerification, Policy, SignInMethod};
use serde::Deserialize;

/// The sign-in fields of the policy form, as typed.
#[derive(Deserialize, Default, Clone)]
pub(crate) struct SignInForm {
    #[serde(default)]
    pub sign_in_method: String,
    #[serde(default)]
    pub passkey_user_verification: String,
}

/// The choices the form offers, with their labels.
pub(crate) const METHODS: [(&str, &str); 3] = [
    ("either", "Password or passkey, as the member likes"),
    ("passkey", "Passkey (the password only while no passkey of theirs works)"),
    ("password", "Password only (no passkeys)"),
];
pub(crate) const USER_VERIFICATION: [(&str, &str); 2] = [
    ("required", "Required: the key's PIN (or biometric) every time"),
    ("preferred", "Preferred: a touch is enough for keys without a PIN"),
];

impl SignInForm {
    pub fn of(p: &Policy) -> Self {
        Self {
            sign_in_method: p.sign_in.method.as_str().to_owned(),
            passkey_user_verification: p.sign_in.passkey_user_verification.as_str().to_owned(),
        }
    }

    /// Sets `p.sign_in` from the form, or says which field is wrong. A field the form did not
    /// send at all (a form from before these fields existed) keeps the policy's current value.
    pub fn apply(&self, p: &mut Policy, errors: &mut Vec<(String, String)>) {
        if self.sign_in_method.is_empty() && self.passkey_user_verification.is_empty() {
            return;
        }
        match self.sign_in_method.parse::<SignInMethod>() {
            Ok(m) => p.sign_in.method = m,
            Err(_) => {
                errors.push(("sign_in.method".into(), "Sign-in: choose one of the listed methods.".into()))
            }
        }
        match self.passkey_user_verification.parse::<PasskeyUserVerification>() {
            Ok(uv) => p.sign_in.passkey_user_verification = uv,
            Err(_) => errors.push((
                "sign_in.passkey_user_verification".into(),
                "Passkey user verification: choose one of the listed options.".into(),
            )),
        }
    }
}
