//! Users and groups: the `users` and `groups` tables.

use lanyard_core::ids::{GroupId, UserId};
use lanyard_core::model::{Email, Group, User, Username};
use lanyard_core::repo::{GroupRepo, StoreError, UserQuery, UserRepo};

use super::{found, id, to_json};
use crate::rows::{Cols, Reader};
use crate::sql::{Arg, Query, limit, nanos};
use crate::tx::StoreTx;

macro_rules! user_cols {
    () => {
        "id, username, display_name, email, group_id, roles, disabled, created_at"
    };
}

/// Separates the fields of `users.search_key`; none of them may contain it.
const SEARCH_SEPARATOR: char = '\u{1f}';

/// Lowercased with Unicode rules here rather than by SQL `lower()`, which folds only ASCII on
/// SQLite and follows the collation on PostgreSQL: this way both databases find the same users.
fn search_key(user: &User) -> String {
    let mut key = user.username.as_str().to_lowercase();
    key.push(SEARCH_SEPARATOR);
    key.push_str(&user.display_name.to_lowercase());
    key.push(SEARCH_SEPARATOR);
    if let Some(email) = &user.email {
        key.push_str(&email.as_str().to_lowercase());
    }
    key
}

/// A `LIKE` pattern matching `text` anywhere, with `\` as the escape character.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn user_args(user: &User) -> Result<Vec<Arg>, StoreError> {
    Ok(vec![
        id(user.id),
        user.username.as_str().into(),
        user.display_name.as_str().into(),
        user.email.as_ref().map(Email::as_str).into(),
        id(user.group),
        to_json("users.roles", &user.roles)?.into(),
        user.disabled.into(),
        nanos("users.created_at", user.created_at)?.into(),
        search_key(user).into(),
    ])
}

fn decode_user(row: &dyn Cols) -> Result<User, StoreError> {
    let r = Reader::new(row, "users", "id");
    Ok(User {
        id: r.parse("id")?,
        username: r.checked("username", Username::parse)?,
        display_name: r.text("display_name")?,
        email: r.opt_checked("email", Email::parse)?,
        group: r.parse("group_id")?,
        roles: r.json("roles")?,
        disabled: r.boolean("disabled")?,
        created_at: r.time("created_at")?,
    })
}

fn decode_group(row: &dyn Cols) -> Result<Group, StoreError> {
    let r = Reader::new(row, "groups", "id");
    Ok(Group { id: r.parse("id")?, name: r.text("name")?, policy: r.json("policy")? })
}

impl UserRepo for StoreTx {
    async fn get_user(&mut self, user: UserId) -> Result<Option<User>, StoreError> {
        let q = Query::new(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"), vec![id(user)]);
        self.fetch_optional(q, decode_user).await
    }

    async fn get_user_by_username(&mut self, username: &Username) -> Result<Option<User>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", user_cols!(), " FROM users WHERE username = $1"),
            vec![username.as_str().into()],
        );
        self.fetch_optional(q, decode_user).await
    }

    async fn list_users(&mut self, query: &UserQuery) -> Result<Vec<User>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", user_cols!(), " FROM users WHERE 1 = 1"));
        if let Some(text) = &query.text {
            let text = text.to_lowercase();
            if text.contains(SEARCH_SEPARATOR) {
                // No single field contains the separator, so nothing can match.
                return Ok(Vec::new());
            }
            q.push(" AND search_key LIKE ").arg(contains_pattern(&text)).push(" ESCAPE '\\'");
        }
        if let Some(group) = query.group {
            q.push(" AND group_id = ").arg(id(group));
        }
        if let Some(role) = query.role {
            // Role names are plain lowercase words, so they need no LIKE escaping.
            q.push(" AND roles LIKE ").arg(format!("%\"{}\"%", role.as_str()));
        }
        if let Some(after) = &query.after {
            q.push(" AND username > ").arg(after.as_str());
        }
        q.push(" ORDER BY username LIMIT ").arg(limit(query.limit));
        self.fetch_all(q, decode_user).await
    }

    async fn insert_user(&mut self, user: &User) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO users (id, username, display_name, email, group_id, roles, disabled, created_at, \
             search_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            user_args(user)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_user(&mut self, user: &User) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE users SET username = $2, display_name = $3, email = $4, group_id = $5, roles = $6, \
             disabled = $7, created_at = $8, search_key = $9 WHERE id = $1",
            user_args(user)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}

impl GroupRepo for StoreTx {
    async fn get_group(&mut self, group: GroupId) -> Result<Option<Group>, StoreError> {
        let q = Query::new("SELECT id, name, policy FROM groups WHERE id = $1", vec![id(group)]);
        self.fetch_optional(q, decode_group).await
    }

    async fn list_groups(&mut self) -> Result<Vec<Group>, StoreError> {
        let q = Query::new("SELECT id, name, policy FROM groups ORDER BY name", vec![]);
        self.fetch_all(q, decode_group).await
    }

    async fn insert_group(&mut self, group: &Group) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO groups (id, name, policy) VALUES ($1, $2, $3)",
            vec![id(group.id), group.name.as_str().into(), to_json("groups.policy", &group.policy)?.into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_group(&mut self, group: &Group) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE groups SET name = $2, policy = $3 WHERE id = $1",
            vec![id(group.id), group.name.as_str().into(), to_json("groups.policy", &group.policy)?.into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}
