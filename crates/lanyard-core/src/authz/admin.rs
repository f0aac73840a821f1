//! [`Admin`]: groups, policies, users and roles.

use std::collections::BTreeSet;

use serde_json::json;

use crate::audit::NewAuditEvent;
use crate::error::DomainError;
use crate::ids::{GroupId, UserId};
use crate::model::{Group, Policy, Role, User, Username, ValidationError};
use crate::password::UserPassword;
use crate::repo::prelude::*;

use super::Principal;

/// Administration: groups, policies, users and roles.
#[derive(Clone, Copy, Debug)]
pub struct Admin<'a> {
    pub(super) p: &'a Principal,
}

/// What an administrator supplies to create a user.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: Username,
    pub display_name: String,
    pub email: Option<crate::model::Email>,
    pub group: GroupId,
    pub roles: BTreeSet<Role>,
}

impl Admin<'_> {
    fn audit(&self, action: &str, target: String) -> NewAuditEvent {
        let who = self.p.acting();
        NewAuditEvent::new(who.at, who.actor.clone(), action, &who.operation_id).target(target)
    }

    /// Every group, ordered by name.
    pub async fn groups<R: Repo>(&self, repo: &R) -> Result<Vec<Group>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_groups().await?)
    }

    /// Creates a group after validating its name and policy.
    pub async fn create_group<R: Repo>(
        &self,
        repo: &R,
        name: &str,
        policy: Policy,
    ) -> Result<Group, DomainError> {
        let group = Group { id: GroupId::new(), name: name.to_owned(), policy };
        group.validate()?;
        let group = &group;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.insert_group(group).await?;
            let after = json!({"name": group.name, "policy": group.policy});
            tx.append_audit(self.audit("group.create", format!("group:{}", group.id)).after(after)).await?;
            tx.commit().await?;
            Ok(group.clone())
        })
        .await
    }

    /// Replaces a group's policy after validating it.
    pub async fn update_policy<R: Repo>(
        &self,
        repo: &R,
        id: GroupId,
        policy: Policy,
    ) -> Result<Group, DomainError> {
        policy.validate()?;
        let policy = &policy;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut group = tx.get_group(id).await?.ok_or_else(|| DomainError::not_found("group", id))?;
            let before = json!(group.policy);
            group.policy = policy.clone();
            tx.update_group(&group).await?;
            let event = self
                .audit("group.update_policy", format!("group:{id}"))
                .before(before)
                .after(json!(group.policy));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(group)
        })
        .await
    }

    /// Users matching `query`, ordered by username (to pick whom to change).
    pub async fn users<R: Repo>(
        &self,
        repo: &R,
        query: &crate::repo::UserQuery,
    ) -> Result<Vec<User>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_users(query).await?)
    }

    /// One user by id.
    pub async fn user<R: Repo>(&self, repo: &R, id: UserId) -> Result<User, DomainError> {
        let mut tx = repo.read().await?;
        tx.get_user(id).await?.ok_or_else(|| DomainError::not_found("user", id))
    }

    /// Creates a user in an existing group.
    pub async fn create_user<R: Repo>(&self, repo: &R, new: NewUser) -> Result<User, DomainError> {
        self.create_user_with_password(repo, new, None).await
    }

    /// Creates a user in an existing group, with an initial password (12 to 1024 characters,
    /// stored as an argon2id hash) when one is given.
    pub async fn create_user_with_password<R: Repo>(
        &self,
        repo: &R,
        new: NewUser,
        password: Option<&secrecy::SecretString>,
    ) -> Result<User, DomainError> {
        let mut user = User::new(new.username, new.display_name, new.group, self.p.at)?;
        user.email = new.email;
        user.roles = new.roles;
        // Hash before the unit of work starts: argon2 takes a while and holds no lock.
        let password = password.map(|p| UserPassword::set(user.id, p, self.p.at)).transpose()?;
        let user = &user;
        let password = &password;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            if tx.get_group(user.group).await?.is_none() {
                return Err(DomainError::not_found("group", user.group));
            }
            if tx.get_user_by_username(&user.username).await?.is_some() {
                return Err(DomainError::Conflict(format!("username {} is taken", user.username)));
            }
            tx.insert_user(user).await?;
            if let Some(password) = &password {
                tx.put_password(password).await?;
            }
            let after = json!({
                "username": user.username,
                "group": user.group,
                "roles": user.roles,
                "password_set": password.is_some(),
            });
            tx.append_audit(self.audit("user.create", format!("user:{}", user.id)).after(after)).await?;
            tx.commit().await?;
            Ok(user.clone())
        })
        .await
    }

    /// Replaces a user's roles. An administrator cannot remove their own administrator role
    /// (someone else must), so the last administrator cannot lock everyone out by accident.
    pub async fn set_roles<R: Repo>(
        &self,
        repo: &R,
        id: UserId,
        roles: BTreeSet<Role>,
    ) -> Result<User, DomainError> {
        if id == self.p.user.id && !roles.contains(&Role::Administrator) {
            return Err(ValidationError::new("roles", "you cannot remove your own administrator role").into());
        }
        let roles = &roles;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut user = tx.get_user(id).await?.ok_or_else(|| DomainError::not_found("user", id))?;
            let before = json!({"roles": user.roles});
            user.roles = roles.clone();
            tx.update_user(&user).await?;
            tx.delete_sessions_of(id).await?;
            let event = self
                .audit("user.set_roles", format!("user:{id}"))
                .before(before)
                .after(json!({"roles": user.roles}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }

    /// Disables or re-enables a user; disabling ends their sessions and revokes their derived PIV
    /// credentials.
    pub async fn set_disabled<R: Repo>(
        &self,
        repo: &R,
        id: UserId,
        disabled: bool,
    ) -> Result<User, DomainError> {
        if id == self.p.user.id && disabled {
            return Err(ValidationError::new("disabled", "you cannot disable your own account").into());
        }
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut user = tx.get_user(id).await?.ok_or_else(|| DomainError::not_found("user", id))?;
            let before = json!({"disabled": user.disabled});
            user.disabled = disabled;
            tx.update_user(&user).await?;
            if disabled {
                tx.delete_sessions_of(id).await?;
            }
            let action = if disabled { "user.disable" } else { "user.enable" };
            let event =
                self.audit(action, format!("user:{id}")).before(before).after(json!({"disabled": disabled}));
            tx.append_audit(event).await?;
            // Derived credentials follow the identity account: disabling it revokes them (for
            // good; enabling the account again does not bring them back).
            if disabled {
                super::revoke_derived_of(&mut tx, id, &self.p.acting()).await?;
            }
            tx.commit().await?;
            Ok(user)
        })
        .await
    }
}
