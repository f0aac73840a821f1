//! Local account passwords: argon2id hashes in PHC string form.
//!
//! Only the PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) is stored; it carries its own
//! parameters, so raising them later leaves old hashes verifiable. Checking a login costs the
//! same whether or not the username exists: an unknown user is checked against a fixed dummy
//! hash made with the same parameters, so response time does not reveal which usernames exist.

use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::DomainError;
use crate::ids::UserId;
use crate::model::{User, Username, ValidationError};
use crate::repo::prelude::*;
use crate::secrets::{SecretsError, random_fill};

/// Shortest password accepted when one is set.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (argon2 accepts more, but nobody types that and it bounds the work).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A user's password credential: the argon2id PHC string and when it was set.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPassword {
    pub user: UserId,
    /// The PHC string. Not a secret in the sense of a key, but never shown in logs either.
    pub phc: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPassword")
            .field("user", &self.user)
            .field("phc", &"[REDACTED]")
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

impl UserPassword {
    /// Hashes `password` for `user` with a fresh random salt. Checks only the length: what a
    /// password must look like beyond that is the caller's policy.
    pub fn set(user: UserId, password: &SecretString, at: OffsetDateTime) -> Result<Self, DomainError> {
        let len = password.expose_secret().chars().count();
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&len) {
            return Err(ValidationError::new(
                "password",
                format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters, got {len}"),
            )
            .into());
        }
        Ok(Self { user, phc: hash(password.expose_secret())?, updated_at: at })
    }

    /// Whether `password` matches (argon2 compares the outputs in constant time). A PHC string
    /// that does not parse matches nothing.
    pub fn verify(&self, password: &str) -> bool {
        verify_phc(&self.phc, password)
    }
}

fn hash(password: &str) -> Result<String, SecretsError> {
    let mut salt = Zeroizing::new([0u8; 16]);
    random_fill(salt.as_mut_slice())?;
    hasher()
        .hash_password_with_salt(password.as_bytes(), salt.as_slice())
        .map(|h| h.to_string())
        .map_err(|_| SecretsError::Malformed("argon2 refused to hash the password"))
}

fn verify_phc(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password nobody knows, made once per process with the same parameters as
/// real ones, so a login for an unknown user costs what a real one does.
fn dummy_phc() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut raw = Zeroizing::new([0u8; 24]);
        // If the RNG fails the dummy is a fixed string: still unguessable by timing, and a
        // login against it fails all the same.
        let _ = random_fill(raw.as_mut_slice());
        hash(&hex::encode(raw.as_slice())).unwrap_or_default()
    })
}

/// Checks a username and password. Returns the user when the password is theirs and the
/// account is enabled; `None` otherwise, without saying which part was wrong. Unknown users,
/// users without a password and disabled users cost one argon2 verification like everyone else.
pub async fn authenticate<R: Repo>(
    repo: &R,
    username: &str,
    password: &str,
) -> Result<Option<User>, DomainError> {
    let found = match Username::normalize(username) {
        Ok(name) => {
            let mut tx = repo.read().await?;
            match tx.get_user_by_username(&name).await? {
                Some(user) => {
                    let pw = tx.get_password(user.id).await?;
                    Some((user, pw))
                }
                None => None,
            }
        }
        Err(_) => None,
    };
    Ok(match found {
        Some((user, Some(pw))) => (pw.verify(password) && !user.disabled).then_some(user),
        _ => {
            verify_phc(dummy_phc(), password);
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);

    #[test]
    fn hashes_with_argon2id_and_verifies() {
        let user = UserId::new();
        let pw = UserPassword::set(user, &SecretString::from("correct horse battery"), T).unwrap();
        assert!(pw.phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", pw.phc);
        assert!(pw.verify("correct horse battery"));
        assert!(!pw.verify("correct horse batterY"));
        assert!(!pw.verify(""));
        let again = UserPassword::set(user, &SecretString::from("correct horse battery"), T).unwrap();
        assert_ne!(pw.phc, again.phc, "each hash has its own salt");
        assert!(!format!("{pw:?}").contains("argon2id"));
    }

    #[test]
    fn refuses_short_and_long_passwords() {
        let short = UserPassword::set(UserId::new(), &SecretString::from("short"), T).unwrap_err();
        assert!(short.to_string().contains("password: must be 12 to 1024 characters, got 5"), "{short}");
        let long = "x".repeat(MAX_PASSWORD_LEN + 1);
        assert!(UserPassword::set(UserId::new(), &SecretString::from(long), T).is_err());
    }

    #[test]
    fn authenticate_accepts_only_an_enabled_user_with_the_right_password() {
        use crate::ids::GroupId;
        use crate::model::{Group, Policy};
        use crate::testing::{MemRepo, block_on};
        let repo = MemRepo::new();
        let group = Group { id: GroupId::new(), name: "g".into(), policy: Policy::default() };
        let mut alice = User::new(Username::parse("alice").unwrap(), "Alice", group.id, T).unwrap();
        let nopass = User::new(Username::parse("nopass").unwrap(), "No Password", group.id, T).unwrap();
        let secret = SecretString::from("correct horse battery");
        block_on(async {
            let mut tx = repo.begin().await.unwrap();
            tx.insert_group(&group).await.unwrap();
            tx.insert_user(&alice).await.unwrap();
            tx.insert_user(&nopass).await.unwrap();
            tx.put_password(&UserPassword::set(alice.id, &secret, T).unwrap()).await.unwrap();
            tx.commit().await.unwrap();
        });
        let login = |name: &str, pw: &str| block_on(authenticate(&repo, name, pw)).unwrap().map(|u| u.id);
        assert_eq!(login("alice", "correct horse battery"), Some(alice.id));
        assert_eq!(login(" ALICE ", "correct horse battery"), Some(alice.id), "typed names are normalised");
        assert_eq!(login("alice", "wrong"), None);
        assert_eq!(login("nopass", ""), None, "no password set: nothing matches");
        assert_eq!(login("nobody", "correct horse battery"), None);
        assert_eq!(login("Not a name!", "correct horse battery"), None);
        alice.disabled = true;
        block_on(async {
            let mut tx = repo.begin().await.unwrap();
            tx.update_user(&alice).await.unwrap();
            tx.commit().await.unwrap();
        });
        assert_eq!(login("alice", "correct horse battery"), None, "disabled accounts cannot log in");
    }

    #[test]
    fn a_malformed_phc_matches_nothing() {
        let pw = UserPassword { user: UserId::new(), phc: "not a phc".into(), updated_at: T };
        assert!(!pw.verify("not a phc"));
        assert!(dummy_phc().starts_with("$argon2id$"));
    }
}
