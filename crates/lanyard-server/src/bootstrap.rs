//! The first administrator of a new installation.

use std::collections::BTreeSet;

use lanyard_core::DomainError;
use lanyard_core::audit::{Actor, NewAuditEvent, OperationId};
use lanyard_core::clock::Clock;
use lanyard_core::ids::GroupId;
use lanyard_core::model::{Group, Policy, Role, User, Username};
use lanyard_core::password::UserPassword;
use lanyard_core::repo::UserQuery;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::random_password;
use secrecy::SecretString;
use serde_json::json;
use time::OffsetDateTime;

/// The bootstrap administrator's username.
pub const ADMIN_USERNAME: &str = "admin";
/// The group the bootstrap administrator joins.
pub const DEFAULT_GROUP: &str = "default";
/// Length of the generated password (62 symbols each: about 119 bits).
pub const PASSWORD_LEN: usize = 20;

/// On a database without any user, creates the group `default` (default policy) and the user
/// `admin` holding every role, with a random password stored as an argon2id hash, and records
/// both as the system actor in the audit log, all in one unit of work. Returns the password,
/// which exists nowhere else: the caller shows it once. On a database that has users, does
/// nothing and returns `None`.
pub async fn ensure_admin<R: Repo>(repo: &R, clock: &dyn Clock) -> Result<Option<SecretString>, DomainError> {
    let mut tx = repo.begin().await?;
    let password = ensure_admin_in(&mut tx, clock.now(), &OperationId::random()).await?;
    if password.is_some() {
        tx.commit().await?;
    }
    Ok(password)
}

/// [`ensure_admin`] inside the caller's unit of work (`lanyard init` commits the administrator
/// together with the installation record), under the caller's operation id.
pub async fn ensure_admin_in<T: Tx>(
    tx: &mut T,
    at: OffsetDateTime,
    op: &OperationId,
) -> Result<Option<SecretString>, DomainError> {
    if !tx.list_users(&UserQuery { limit: 1, ..UserQuery::default() }).await?.is_empty() {
        return Ok(None);
    }
    // A group named "default" may exist already (made by hand before any user): reuse it.
    let existing = tx.list_groups().await?.into_iter().find(|g| g.name == DEFAULT_GROUP);
    let created = existing.is_none();
    let group = match existing {
        Some(group) => group,
        None => {
            let group = Group { id: GroupId::new(), name: DEFAULT_GROUP.into(), policy: Policy::default() };
            group.validate()?;
            tx.insert_group(&group).await?;
            group
        }
    };
    let mut user = User::new(Username::parse(ADMIN_USERNAME)?, "Administrator", group.id, at)?;
    user.roles = BTreeSet::from([Role::Administrator, Role::Operator, Role::Auditor, Role::User]);
    tx.insert_user(&user).await?;
    let password = random_password(PASSWORD_LEN)?;
    tx.put_password(&UserPassword::set(user.id, &password, at)?).await?;
    let event =
        |action: &str, target: String| NewAuditEvent::new(at, Actor::System, action, op).target(target);
    if created {
        tx.append_audit(
            event("group.create", format!("group:{}", group.id))
                .after(json!({"name": group.name, "policy": group.policy})),
        )
        .await?;
    }
    tx.append_audit(
        event("user.bootstrap_admin", format!("user:{}", user.id))
            .after(json!({"username": user.username, "group": user.group, "roles": user.roles})),
    )
    .await?;
    Ok(Some(password))
}

/// The line `lanyard init` (and `lanyard serve` when it initialises) prints once for a new administrator.
pub fn announcement(password: &SecretString) -> String {
    use secrecy::ExposeSecret;
    format!(
        "Bootstrap administrator: {ADMIN_USERNAME} / {} (shown once; change it)",
        password.expose_secret()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::clock::ManualClock;
    use lanyard_core::password::authenticate;
    use lanyard_core::testing::{MemRepo, block_on};
    use secrecy::ExposeSecret;

    #[test]
    fn creates_the_admin_once_and_the_password_logs_in() {
        let repo = MemRepo::new();
        let clock = ManualClock::default();
        let password = block_on(ensure_admin(&repo, &clock)).unwrap().expect("a new admin");
        let pw = password.expose_secret();
        assert_eq!(
            announcement(&password),
            format!("Bootstrap administrator: admin / {pw} (shown once; change it)")
        );
        assert_eq!(pw.len(), PASSWORD_LEN);
        assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()));

        let data = repo.data();
        assert_eq!(data.users.len(), 1);
        assert_eq!(data.groups.len(), 1);
        let admin = data.users.values().next().unwrap();
        assert_eq!(admin.username.as_str(), "admin");
        assert_eq!(
            admin.roles,
            BTreeSet::from([Role::Administrator, Role::Operator, Role::Auditor, Role::User])
        );
        assert_eq!(data.groups.values().next().unwrap().name, "default");
        let stored = &data.passwords[&admin.id];
        assert!(stored.phc.starts_with("$argon2id$") && !stored.phc.contains(pw));
        let actions: Vec<_> = data.audit.iter().map(|e| (e.action.as_str(), e.actor.clone())).collect();
        assert_eq!(actions, [("group.create", Actor::System), ("user.bootstrap_admin", Actor::System)]);

        let user = block_on(authenticate(&repo, "admin", pw)).unwrap();
        assert_eq!(user.map(|u| u.id), Some(admin.id));
        assert!(block_on(authenticate(&repo, "admin", "wrong password")).unwrap().is_none());
        assert!(block_on(authenticate(&repo, "nobody", pw)).unwrap().is_none());

        // A second start finds a user and leaves everything as it was.
        assert!(block_on(ensure_admin(&repo, &clock)).unwrap().is_none());
        assert_eq!(repo.data(), data);
    }

    #[test]
    fn reuses_an_existing_default_group() {
        let repo = MemRepo::new();
        let group = Group { id: GroupId::new(), name: "default".into(), policy: Policy::default() };
        block_on(async {
            let mut tx = repo.begin().await.unwrap();
            tx.insert_group(&group).await.unwrap();
            tx.commit().await.unwrap();
        });
        assert!(block_on(ensure_admin(&repo, &ManualClock::default())).unwrap().is_some());
        let data = repo.data();
        assert_eq!(data.groups.len(), 1);
        assert_eq!(data.users.values().next().unwrap().group, group.id);
        assert_eq!(data.audit.len(), 1, "only the user was created");
    }
}
