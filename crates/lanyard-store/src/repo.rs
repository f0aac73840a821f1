//! The domain's repository traits on [`StoreTx`]: one SQL text per operation, shared by both
//! dialects, and one decoder per table.
//!
//! Write methods run inside a savepoint ([`StoreTx::begin_call`] / [`StoreTx::end_call`]): a call
//! that fails changes nothing, and the unit of work stays usable.

use std::collections::BTreeMap;

use lanyard_core::audit::{Actor, AuditEvent, ChainHead, NewAuditEvent, canonical_json};
use lanyard_core::ids::{ApiTokenId, CredentialId, DeviceId, GroupId, InstanceId, JobId, UserId};
use lanyard_core::model::{
    ApiToken, Credential, CredentialKind, Device, DeviceLink, Email, EnrollmentCode, EnrollmentPurpose,
    Group, Job, JobLease, JobState, Session, User, Username,
};
use lanyard_core::password::UserPassword;
use lanyard_core::repo::{
    ApiTokenRepo, AuditQuery, AuditRepo, CredentialQuery, CredentialRepo, DeviceQuery, DeviceRepo,
    EnrollmentCodeRepo, GroupRepo, JobRepo, PasswordRepo, SecretRepo, SessionRepo, StoreError, UserQuery,
    UserRepo,
};
use lanyard_core::secrets::{SealedCardSecrets, TokenHash};
use serde::Serialize;
use time::OffsetDateTime;

use crate::rows::{Cols, Reader};
use crate::sql::{Arg, Query, limit, nanos, opt_nanos};
use crate::tx::StoreTx;

fn to_json<T: Serialize + ?Sized>(field: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Backend(format!("{field}: cannot encode as JSON: {e}")))
}

fn id(id: impl std::fmt::Display) -> Arg {
    Arg::Text(Some(id.to_string()))
}

fn opt_id(id: Option<impl std::fmt::Display>) -> Arg {
    Arg::Text(id.map(|id| id.to_string()))
}

/// Rows changed → `NotFound` when none was.
fn found(rows: u64) -> Result<(), StoreError> {
    if rows == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

// ---------------------------------------------------------------------------------------------
// Users and groups

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

// ---------------------------------------------------------------------------------------------
// Devices

macro_rules! device_cols {
    () => {
        "id, owner_id, kind, model, serial, card_guid, state, suspended_from, revocation_reason, \
         created_at, updated_at, card_expires_at"
    };
}

/// Bind parameters per statement when loading the links of a page of devices; well under
/// SQLite's and PostgreSQL's limits.
const LINK_BATCH: usize = 500;

fn device_args(device: &Device) -> Result<Vec<Arg>, StoreError> {
    Ok(vec![
        id(device.id),
        opt_id(device.owner),
        device.kind.as_str().into(),
        device.model.as_str().into(),
        device.serial.as_deref().into(),
        device.card_guid.map(|g| g.to_vec()).into(),
        device.state.as_str().into(),
        device.suspended_from.map(|s| s.as_str()).into(),
        device.revocation_reason.map(|r| r.as_str()).into(),
        nanos("devices.created_at", device.created_at)?.into(),
        nanos("devices.updated_at", device.updated_at)?.into(),
        opt_nanos("devices.card_expires_at", device.card_expires_at)?.into(),
    ])
}

/// A device without its links (they live in `device_links`).
fn decode_device(row: &dyn Cols) -> Result<Device, StoreError> {
    let r = Reader::new(row, "devices", "id");
    Ok(Device {
        id: r.parse("id")?,
        owner: r.opt_parse("owner_id")?,
        kind: r.parse("kind")?,
        model: r.text("model")?,
        serial: r.opt_text("serial")?,
        card_guid: r.opt_array("card_guid")?,
        card_expires_at: r.opt_time("card_expires_at")?,
        state: r.parse("state")?,
        suspended_from: r.opt_parse("suspended_from")?,
        revocation_reason: r.opt_parse("revocation_reason")?,
        links: Vec::new(),
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn decode_link(row: &dyn Cols) -> Result<(DeviceId, DeviceLink), StoreError> {
    let r = Reader::new(row, "device_links", "device_id");
    Ok((r.parse("device_id")?, DeviceLink { kind: r.parse("kind")?, target: r.parse("target_id")? }))
}

impl StoreTx {
    /// Fills in the links of `devices`, in their stored order.
    async fn load_links(&mut self, devices: &mut [Device]) -> Result<(), StoreError> {
        let mut links: BTreeMap<DeviceId, Vec<DeviceLink>> = BTreeMap::new();
        for batch in devices.chunks(LINK_BATCH) {
            let mut q =
                Query::build("SELECT device_id, kind, target_id FROM device_links WHERE device_id IN (");
            for (i, device) in batch.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(id(device.id));
            }
            q.push(") ORDER BY device_id, position");
            for (device, link) in self.fetch_all(q, decode_link).await? {
                links.entry(device).or_default().push(link);
            }
        }
        for device in devices {
            device.links = links.remove(&device.id).unwrap_or_default();
        }
        Ok(())
    }

    async fn insert_links(&mut self, device: &Device) -> Result<(), StoreError> {
        for (position, link) in device.links.iter().enumerate() {
            let position = i64::try_from(position)
                .map_err(|_| StoreError::Backend("device_links.position: too many links".into()))?;
            let q = Query::new(
                "INSERT INTO device_links (device_id, position, kind, target_id) VALUES ($1, $2, $3, $4)",
                vec![id(device.id), position.into(), link.kind.as_str().into(), id(link.target)],
            );
            self.execute(q).await?;
        }
        Ok(())
    }

    async fn insert_device_rows(&mut self, device: &Device) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO devices (",
                device_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            device_args(device)?,
        );
        self.execute(q).await?;
        self.insert_links(device).await
    }

    async fn update_device_rows(&mut self, device: &Device) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE devices SET owner_id = $2, kind = $3, model = $4, serial = $5, card_guid = $6, state = $7, \
             suspended_from = $8, revocation_reason = $9, created_at = $10, updated_at = $11, \
             card_expires_at = $12 WHERE id = $1",
            device_args(device)?,
        );
        found(self.execute(q).await?)?;
        let q = Query::new("DELETE FROM device_links WHERE device_id = $1", vec![id(device.id)]);
        self.execute(q).await?;
        self.insert_links(device).await
    }

    async fn one_device(&mut self, q: Query) -> Result<Option<Device>, StoreError> {
        let Some(device) = self.fetch_optional(q, decode_device).await? else {
            return Ok(None);
        };
        let mut devices = [device];
        self.load_links(&mut devices).await?;
        let [device] = devices;
        Ok(Some(device))
    }
}

impl DeviceRepo for StoreTx {
    async fn get_device(&mut self, device: DeviceId) -> Result<Option<Device>, StoreError> {
        let q =
            Query::new(concat!("SELECT ", device_cols!(), " FROM devices WHERE id = $1"), vec![id(device)]);
        self.one_device(q).await
    }

    async fn get_device_by_serial(
        &mut self,
        model: &str,
        serial: &str,
    ) -> Result<Option<Device>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", device_cols!(), " FROM devices WHERE model = $1 AND serial = $2"),
            vec![model.into(), serial.into()],
        );
        self.one_device(q).await
    }

    async fn list_devices(&mut self, query: &DeviceQuery) -> Result<Vec<Device>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", device_cols!(), " FROM devices WHERE 1 = 1"));
        if let Some(owner) = query.owner {
            q.push(" AND owner_id = ").arg(id(owner));
        }
        if let Some(kind) = query.kind {
            q.push(" AND kind = ").arg(kind.as_str());
        }
        if !query.states.is_empty() {
            q.push(" AND state IN (");
            for (i, state) in query.states.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(state.as_str());
            }
            q.push(")");
        }
        if let Some(target) = query.linked_to {
            q.push(
                " AND EXISTS (SELECT 1 FROM device_links l WHERE l.device_id = devices.id AND l.target_id = ",
            )
            .arg(id(target))
            .push(")");
        }
        if let Some(after) = query.after {
            q.push(" AND id > ").arg(id(after));
        }
        q.push(" ORDER BY id LIMIT ").arg(limit(query.limit));
        let mut devices = self.fetch_all(q, decode_device).await?;
        self.load_links(&mut devices).await?;
        Ok(devices)
    }

    async fn insert_device(&mut self, device: &Device) -> Result<(), StoreError> {
        self.begin_call().await?;
        let result = self.insert_device_rows(device).await;
        self.end_call(result).await
    }

    async fn update_device(&mut self, device: &Device) -> Result<(), StoreError> {
        self.begin_call().await?;
        let result = self.update_device_rows(device).await;
        self.end_call(result).await
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

macro_rules! credential_cols {
    () => {
        "id, device_id, kind, slot, profile, serial_hex, not_before, not_after, certificate_der, \
         attestation_der, state, held_from, revocation_reason, revoked_at, created_at, updated_at"
    };
}

/// `credentials.kind` of [`CredentialKind::Certificate`].
const CERTIFICATE: &str = "certificate";

fn credential_args(c: &Credential) -> Result<Vec<Arg>, StoreError> {
    let CredentialKind::Certificate {
        slot,
        profile,
        serial_hex,
        not_before,
        not_after,
        certificate_der,
        attestation_der,
    } = &c.kind;
    Ok(vec![
        id(c.id),
        id(c.device),
        CERTIFICATE.into(),
        slot.as_str().into(),
        profile.as_str().into(),
        serial_hex.as_str().into(),
        nanos("credentials.not_before", *not_before)?.into(),
        nanos("credentials.not_after", *not_after)?.into(),
        certificate_der.clone().into(),
        attestation_der.clone().into(),
        c.state.as_str().into(),
        c.held_from.map(|s| s.as_str()).into(),
        c.revocation_reason.map(|r| r.as_str()).into(),
        opt_nanos("credentials.revoked_at", c.revoked_at)?.into(),
        nanos("credentials.created_at", c.created_at)?.into(),
        nanos("credentials.updated_at", c.updated_at)?.into(),
    ])
}

fn decode_credential(row: &dyn Cols) -> Result<Credential, StoreError> {
    let r = Reader::new(row, "credentials", "id");
    let kind = match r.text("kind")?.as_str() {
        CERTIFICATE => CredentialKind::Certificate {
            slot: r.parse("slot")?,
            profile: r.text("profile")?,
            serial_hex: r.text("serial_hex")?,
            not_before: r.time("not_before")?,
            not_after: r.time("not_after")?,
            certificate_der: r.bytes("certificate_der")?,
            attestation_der: r.opt_bytes("attestation_der")?,
        },
        other => return Err(r.corrupt("kind", format!("unknown credential kind {other:?}"))),
    };
    Ok(Credential {
        id: r.parse("id")?,
        device: r.parse("device_id")?,
        kind,
        state: r.parse("state")?,
        held_from: r.opt_parse("held_from")?,
        revocation_reason: r.opt_parse("revocation_reason")?,
        revoked_at: r.opt_time("revoked_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

impl CredentialRepo for StoreTx {
    async fn get_credential(&mut self, credential: CredentialId) -> Result<Option<Credential>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", credential_cols!(), " FROM credentials WHERE id = $1"),
            vec![id(credential)],
        );
        self.fetch_optional(q, decode_credential).await
    }

    async fn get_credential_by_serial(&mut self, serial_hex: &str) -> Result<Option<Credential>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", credential_cols!(), " FROM credentials WHERE serial_hex = $1"),
            vec![serial_hex.into()],
        );
        self.fetch_optional(q, decode_credential).await
    }

    async fn list_credentials(&mut self, query: &CredentialQuery) -> Result<Vec<Credential>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", credential_cols!(), " FROM credentials WHERE 1 = 1"));
        if let Some(device) = query.device {
            q.push(" AND device_id = ").arg(id(device));
        }
        if !query.states.is_empty() {
            q.push(" AND state IN (");
            for (i, state) in query.states.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(state.as_str());
            }
            q.push(")");
        }
        if let Some(before) = query.not_after_before {
            q.push(" AND not_after < ").arg(clamped_nanos(before));
        }
        if let Some(after) = query.after {
            q.push(" AND id > ").arg(id(after));
        }
        q.push(" ORDER BY id LIMIT ").arg(limit(query.limit));
        self.fetch_all(q, decode_credential).await
    }

    async fn insert_credential(&mut self, credential: &Credential) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO credentials (",
                credential_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
            ),
            credential_args(credential)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_credential(&mut self, credential: &Credential) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE credentials SET device_id = $2, kind = $3, slot = $4, profile = $5, serial_hex = $6, \
             not_before = $7, not_after = $8, certificate_der = $9, attestation_der = $10, state = $11, \
             held_from = $12, revocation_reason = $13, revoked_at = $14, created_at = $15, updated_at = $16 \
             WHERE id = $1",
            credential_args(credential)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}

// ---------------------------------------------------------------------------------------------
// Audit

macro_rules! audit_cols {
    () => {
        "seq, at, actor, actor_id, actor_username, action, target, operation_id, before_json, after_json, \
         prev_hash, hash"
    };
}

fn canonical_text(value: &Option<serde_json::Value>) -> Result<Option<String>, StoreError> {
    value
        .as_ref()
        .map(|v| {
            let mut out = Vec::new();
            canonical_json(v, &mut out);
            String::from_utf8(out)
                .map_err(|e| StoreError::Backend(format!("audit JSON is not UTF-8 after encoding: {e}")))
        })
        .transpose()
}

fn opt_json(r: &Reader<'_>, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
    r.opt_text(col)?
        .map(|text| serde_json::from_str(&text).map_err(|e| r.corrupt(col, format!("invalid JSON: {e}"))))
        .transpose()
}

fn decode_audit(row: &dyn Cols) -> Result<AuditEvent, StoreError> {
    let r = Reader::new(row, "audit_events", "seq");
    let seq = r.int("seq")?;
    let seq = u64::try_from(seq).map_err(|_| r.corrupt("seq", format!("{seq} is negative")))?;
    let actor = match r.text("actor")?.as_str() {
        "system" => Actor::System,
        "user" => {
            Actor::User { id: r.parse("actor_id")?, username: r.checked("actor_username", Username::parse)? }
        }
        "api_token" => Actor::ApiToken { id: r.parse("actor_id")? },
        other => return Err(r.corrupt("actor", format!("unknown actor kind {other:?}"))),
    };
    Ok(AuditEvent {
        seq,
        at: r.time("at")?,
        actor,
        action: r.text("action")?,
        target: r.opt_text("target")?,
        operation_id: r.text("operation_id")?,
        before: opt_json(&r, "before_json")?,
        after: opt_json(&r, "after_json")?,
        prev_hash: r.array("prev_hash")?,
        hash: r.array("hash")?,
    })
}

fn decode_head(row: &dyn Cols) -> Result<ChainHead, StoreError> {
    let r = Reader::new(row, "audit_events", "seq");
    let seq = r.int("seq")?;
    let seq = u64::try_from(seq).map_err(|_| r.corrupt("seq", format!("{seq} is negative")))?;
    Ok(ChainHead { seq, hash: r.array("hash")? })
}

fn audit_args(e: &AuditEvent) -> Result<Vec<Arg>, StoreError> {
    let seq =
        i64::try_from(e.seq).map_err(|_| StoreError::Backend(format!("audit seq {} overflows", e.seq)))?;
    let (actor, actor_id, actor_username) = match &e.actor {
        Actor::System => ("system", None, None),
        Actor::User { id, username } => ("user", Some(id.to_string()), Some(username.as_str().to_owned())),
        Actor::ApiToken { id } => ("api_token", Some(id.to_string()), None),
    };
    Ok(vec![
        seq.into(),
        nanos("audit_events.at", e.at)?.into(),
        actor.into(),
        actor_id.into(),
        actor_username.into(),
        e.action.as_str().into(),
        e.target.as_deref().into(),
        e.operation_id.as_str().into(),
        canonical_text(&e.before)?.into(),
        canonical_text(&e.after)?.into(),
        e.prev_hash.to_vec().into(),
        e.hash.to_vec().into(),
    ])
}

impl AuditRepo for StoreTx {
    async fn append_audit(&mut self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        // The head is read inside this unit of work. Two concurrent appends both read the same
        // head and try the same seq: the primary key lets only one of them commit (SQLite never
        // gets that far, since its writers run one at a time).
        let head = self.audit_head().await?;
        let sealed = event.seal(&head);
        let q = Query::new(
            concat!(
                "INSERT INTO audit_events (",
                audit_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            audit_args(&sealed)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        match self.end_call(result).await {
            Ok(()) => Ok(sealed),
            Err(StoreError::Conflict(m)) => {
                // Another unit of work took this seq. This one would read the same head again,
                // so only a fresh start can append.
                self.break_with(StoreError::Conflict(format!(
                    "{m}: another unit of work appended to the audit log first; retry from the start"
                )));
                Err(StoreError::Conflict(m))
            }
            Err(e) => Err(e),
        }
    }

    async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
        let q = Query::new("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", vec![]);
        Ok(self.fetch_optional(q, decode_head).await?.unwrap_or(ChainHead::GENESIS))
    }

    async fn list_audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", audit_cols!(), " FROM audit_events WHERE seq > "));
        q.arg(i64::try_from(query.after_seq).unwrap_or(i64::MAX));
        if let Some(target) = &query.target {
            q.push(" AND target = ").arg(target.as_str());
        }
        q.push(" ORDER BY seq LIMIT ").arg(limit(query.limit));
        self.fetch_all(q, decode_audit).await
    }
}

// ---------------------------------------------------------------------------------------------
// Card secrets

fn decode_sealed(row: &dyn Cols) -> Result<SealedCardSecrets, StoreError> {
    let r = Reader::new(row, "card_secrets", "device_id");
    Ok(SealedCardSecrets::from_bytes(r.bytes("sealed")?))
}

impl SecretRepo for StoreTx {
    async fn put_card_secrets(
        &mut self,
        device: DeviceId,
        sealed: &SealedCardSecrets,
    ) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO card_secrets (device_id, sealed) VALUES ($1, $2) \
             ON CONFLICT (device_id) DO UPDATE SET sealed = excluded.sealed",
            vec![id(device), sealed.as_bytes().into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_card_secrets(&mut self, device: DeviceId) -> Result<Option<SealedCardSecrets>, StoreError> {
        let q =
            Query::new("SELECT device_id, sealed FROM card_secrets WHERE device_id = $1", vec![id(device)]);
        self.fetch_optional(q, decode_sealed).await
    }

    async fn delete_card_secrets(&mut self, device: DeviceId) -> Result<(), StoreError> {
        let q = Query::new("DELETE FROM card_secrets WHERE device_id = $1", vec![id(device)]);
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}

// ---------------------------------------------------------------------------------------------
// Enrollment codes

macro_rules! code_cols {
    () => {
        "id, user_id, purpose, sponsor_id, code_hash, created_at, expires_at, used_at"
    };
}

const MOBILE_PROFILE: &str = "mobile_profile";
const DERIVED_PIV: &str = "derived_piv";

fn decode_code(row: &dyn Cols) -> Result<EnrollmentCode, StoreError> {
    let r = Reader::new(row, "enrollment_codes", "id");
    let sponsor: Option<DeviceId> = r.opt_parse("sponsor_id")?;
    let purpose = match r.text("purpose")?.as_str() {
        MOBILE_PROFILE if sponsor.is_none() => EnrollmentPurpose::MobileProfile,
        MOBILE_PROFILE => return Err(r.corrupt("sponsor_id", "set on a mobile_profile code")),
        DERIVED_PIV => EnrollmentPurpose::DerivedPiv { sponsor },
        other => return Err(r.corrupt("purpose", format!("unknown enrollment purpose {other:?}"))),
    };
    Ok(EnrollmentCode {
        id: r.parse("id")?,
        user: r.parse("user_id")?,
        purpose,
        code_hash: TokenHash::from_bytes(r.array("code_hash")?),
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        used_at: r.opt_time("used_at")?,
    })
}

impl EnrollmentCodeRepo for StoreTx {
    async fn insert_enrollment_code(&mut self, code: &EnrollmentCode) -> Result<(), StoreError> {
        let (purpose, sponsor) = match &code.purpose {
            EnrollmentPurpose::MobileProfile => (MOBILE_PROFILE, None),
            EnrollmentPurpose::DerivedPiv { sponsor } => (DERIVED_PIV, *sponsor),
        };
        let q = Query::new(
            concat!(
                "INSERT INTO enrollment_codes (",
                code_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            vec![
                id(code.id),
                id(code.user),
                purpose.into(),
                opt_id(sponsor),
                code.code_hash.as_bytes().as_slice().into(),
                nanos("enrollment_codes.created_at", code.created_at)?.into(),
                nanos("enrollment_codes.expires_at", code.expires_at)?.into(),
                opt_nanos("enrollment_codes.used_at", code.used_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_enrollment_code_by_hash(
        &mut self,
        hash: &TokenHash,
    ) -> Result<Option<EnrollmentCode>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", code_cols!(), " FROM enrollment_codes WHERE code_hash = $1"),
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_code).await
    }

    async fn update_enrollment_code(&mut self, code: &EnrollmentCode) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE enrollment_codes SET used_at = $2 WHERE id = $1",
            vec![id(code.id), opt_nanos("enrollment_codes.used_at", code.used_at)?.into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn delete_expired_enrollment_codes(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q = Query::new(
            "DELETE FROM enrollment_codes WHERE expires_at < $1",
            vec![clamped_nanos(before).into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}

/// A cut-off for comparisons: an instant past the storable range compares like the range's end.
fn clamped_nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(if t.unix_timestamp() > 0 {
        i64::MAX
    } else {
        i64::MIN
    })
}

// ---------------------------------------------------------------------------------------------
// Jobs

macro_rules! job_cols {
    () => {
        "id, kind, device_id, created_by, state, steps, agent_ticket, ticket_expires_at, created_at, updated_at, \
         checkpoint, lease_owner, lease_expires_at, version"
    };
}

fn version_arg(job: &Job) -> Result<Arg, StoreError> {
    i64::try_from(job.version)
        .map(Arg::from)
        .map_err(|_| StoreError::Backend(format!("jobs.version {} does not fit a BIGINT", job.version)))
}

fn job_args(job: &Job) -> Result<Vec<Arg>, StoreError> {
    Ok(vec![
        id(job.id),
        job.kind.as_str().into(),
        id(job.device),
        opt_id(job.created_by),
        job.state.as_str().into(),
        to_json("jobs.steps", &job.steps)?.into(),
        job.agent_ticket.map(|h| h.as_bytes().to_vec()).into(),
        opt_nanos("jobs.ticket_expires_at", job.ticket_expires_at)?.into(),
        nanos("jobs.created_at", job.created_at)?.into(),
        nanos("jobs.updated_at", job.updated_at)?.into(),
        job.checkpoint.as_ref().map(|c| c.to_string()).into(),
        opt_id(job.lease.map(|l| l.owner)),
        opt_nanos("jobs.lease_expires_at", job.lease.map(|l| l.expires_at))?.into(),
        version_arg(job)?,
    ])
}

fn decode_job(row: &dyn Cols) -> Result<Job, StoreError> {
    let r = Reader::new(row, "jobs", "id");
    let lease = match (r.opt_parse("lease_owner")?, r.opt_time("lease_expires_at")?) {
        (Some(owner), Some(expires_at)) => Some(JobLease { owner, expires_at }),
        (None, None) => None,
        _ => return Err(r.corrupt("lease_owner", "set without lease_expires_at, or the other way round")),
    };
    let version = r.int("version")?;
    Ok(Job {
        id: r.parse("id")?,
        kind: r.parse("kind")?,
        device: r.parse("device_id")?,
        created_by: r.opt_parse("created_by")?,
        state: r.parse("state")?,
        steps: r.json("steps")?,
        agent_ticket: r.opt_array("agent_ticket")?.map(TokenHash::from_bytes),
        ticket_expires_at: r.opt_time("ticket_expires_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        checkpoint: opt_json(&r, "checkpoint")?,
        version: u64::try_from(version)
            .map_err(|_| r.corrupt("version", format!("{version} is negative")))?,
        lease,
    })
}

impl JobRepo for StoreTx {
    async fn get_job(&mut self, job: JobId) -> Result<Option<Job>, StoreError> {
        let q = Query::new(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"), vec![id(job)]);
        self.fetch_optional(q, decode_job).await
    }

    async fn list_jobs_for_device(&mut self, device: DeviceId) -> Result<Vec<Job>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", job_cols!(), " FROM jobs WHERE device_id = $1 ORDER BY created_at, id"),
            vec![id(device)],
        );
        self.fetch_all(q, decode_job).await
    }

    async fn list_unfinished_jobs(&mut self) -> Result<Vec<Job>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", job_cols!(), " FROM jobs WHERE state IN ($1, $2, $3) ORDER BY created_at, id"),
            vec![
                JobState::Created.as_str().into(),
                JobState::Running.as_str().into(),
                JobState::Failed.as_str().into(),
            ],
        );
        self.fetch_all(q, decode_job).await
    }

    async fn insert_job(&mut self, job: &Job) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO jobs (",
                job_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            job_args(job)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_job(&mut self, job: &Job) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE jobs SET kind = $2, device_id = $3, created_by = $4, state = $5, steps = $6, \
             agent_ticket = $7, ticket_expires_at = $8, created_at = $9, updated_at = $10, \
             checkpoint = $11, lease_owner = $12, lease_expires_at = $13, version = $14 + 1 \
             WHERE id = $1 AND version = $14",
            job_args(job)?,
        );
        self.begin_call().await?;
        let result = match self.execute(q).await {
            Ok(0) => {
                // Nothing matched: tell a vanished job from one that moved on.
                let q = Query::new("SELECT version FROM jobs WHERE id = $1", vec![id(job.id)]);
                match self.fetch_optional(q, |row| Reader::new(row, "jobs", "id").int("version")).await {
                    Ok(Some(current)) => Err(StoreError::Stale(format!(
                        "job {} is at version {current}, the write was based on version {}",
                        job.id, job.version
                    ))),
                    Ok(None) => Err(StoreError::NotFound),
                    Err(e) => Err(e),
                }
            }
            other => other.map(drop),
        };
        self.end_call(result).await
    }

    async fn redeem_job_ticket(
        &mut self,
        job: JobId,
        ticket: &TokenHash,
        lease: &JobLease,
        at: OffsetDateTime,
    ) -> Result<Option<Job>, StoreError> {
        // The whole rule of `Job::check_ticket` in the WHERE clause: the database, not a copy read
        // earlier, decides whether this redemption wins. Comparing hashes of 256-bit random
        // tickets in SQL leaks nothing useful through timing.
        let q = Query::new(
            "UPDATE jobs SET state = $1, agent_ticket = NULL, ticket_expires_at = NULL, \
             lease_owner = $2, lease_expires_at = $3, updated_at = $4, version = version + 1 \
             WHERE id = $5 AND agent_ticket = $6 AND ticket_expires_at > $4 AND state IN ($7, $8)",
            vec![
                JobState::Running.as_str().into(),
                id(lease.owner),
                nanos("jobs.lease_expires_at", lease.expires_at)?.into(),
                nanos("jobs.updated_at", at)?.into(),
                id(job),
                ticket.as_bytes().to_vec().into(),
                JobState::Created.as_str().into(),
                JobState::Failed.as_str().into(),
            ],
        );
        self.begin_call().await?;
        let result = match self.execute(q).await {
            Ok(0) => Ok(None),
            Ok(_) => {
                let q =
                    Query::new(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"), vec![id(job)]);
                self.fetch_optional(q, decode_job).await
            }
            Err(e) => Err(e),
        };
        self.end_call(result).await
    }

    async fn renew_job_lease(
        &mut self,
        job: JobId,
        owner: InstanceId,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let q = Query::new(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND state = $3 AND lease_owner = $4",
            vec![
                nanos("jobs.lease_expires_at", expires_at)?.into(),
                id(job),
                JobState::Running.as_str().into(),
                id(owner),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(|rows| rows > 0);
        self.end_call(result).await
    }
}

// ---------------------------------------------------------------------------------------------
// API tokens and sessions

macro_rules! token_cols {
    () => {
        "id, user_id, name, token_hash, created_at, expires_at, last_used_at, revoked_at"
    };
}

fn decode_token(row: &dyn Cols) -> Result<ApiToken, StoreError> {
    let r = Reader::new(row, "api_tokens", "id");
    Ok(ApiToken {
        id: r.parse("id")?,
        user: r.parse("user_id")?,
        name: r.text("name")?,
        token_hash: TokenHash::from_bytes(r.array("token_hash")?),
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
        last_used_at: r.opt_time("last_used_at")?,
        revoked_at: r.opt_time("revoked_at")?,
    })
}

fn decode_session(row: &dyn Cols) -> Result<Session, StoreError> {
    // Keyed by the user in messages: the token hash is a credential of sorts.
    let r = Reader::new(row, "sessions", "user_id");
    Ok(Session {
        token_hash: TokenHash::from_bytes(r.array("token_hash")?),
        user: r.parse("user_id")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        last_seen_at: r.time("last_seen_at")?,
    })
}

impl ApiTokenRepo for StoreTx {
    async fn get_api_token(&mut self, token: ApiTokenId) -> Result<Option<ApiToken>, StoreError> {
        let q =
            Query::new(concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE id = $1"), vec![id(token)]);
        self.fetch_optional(q, decode_token).await
    }

    async fn get_api_token_by_hash(&mut self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE token_hash = $1"),
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_token).await
    }

    async fn list_api_tokens(&mut self, user: UserId) -> Result<Vec<ApiToken>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE user_id = $1 ORDER BY created_at, id"),
            vec![id(user)],
        );
        self.fetch_all(q, decode_token).await
    }

    async fn insert_api_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        let q = Query::new(
            concat!("INSERT INTO api_tokens (", token_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            vec![
                id(token.id),
                id(token.user),
                token.name.as_str().into(),
                token.token_hash.as_bytes().as_slice().into(),
                nanos("api_tokens.created_at", token.created_at)?.into(),
                opt_nanos("api_tokens.expires_at", token.expires_at)?.into(),
                opt_nanos("api_tokens.last_used_at", token.last_used_at)?.into(),
                opt_nanos("api_tokens.revoked_at", token.revoked_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_api_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE api_tokens SET last_used_at = $2, revoked_at = $3 WHERE id = $1",
            vec![
                id(token.id),
                opt_nanos("api_tokens.last_used_at", token.last_used_at)?.into(),
                opt_nanos("api_tokens.revoked_at", token.revoked_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}

impl SessionRepo for StoreTx {
    async fn insert_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                session.token_hash.as_bytes().as_slice().into(),
                id(session.user),
                nanos("sessions.created_at", session.created_at)?.into(),
                nanos("sessions.expires_at", session.expires_at)?.into(),
                nanos("sessions.last_seen_at", session.last_seen_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_session(&mut self, hash: &TokenHash) -> Result<Option<Session>, StoreError> {
        let q = Query::new(
            "SELECT token_hash, user_id, created_at, expires_at, last_seen_at FROM sessions WHERE token_hash = $1",
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_session).await
    }

    async fn update_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE sessions SET last_seen_at = $2, expires_at = $3 WHERE token_hash = $1",
            vec![
                session.token_hash.as_bytes().as_slice().into(),
                nanos("sessions.last_seen_at", session.last_seen_at)?.into(),
                nanos("sessions.expires_at", session.expires_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn delete_session(&mut self, hash: &TokenHash) -> Result<(), StoreError> {
        let q =
            Query::new("DELETE FROM sessions WHERE token_hash = $1", vec![hash.as_bytes().as_slice().into()]);
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn delete_sessions_of(&mut self, user: UserId) -> Result<u64, StoreError> {
        let q = Query::new("DELETE FROM sessions WHERE user_id = $1", vec![id(user)]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }

    async fn delete_expired_sessions(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q = Query::new("DELETE FROM sessions WHERE expires_at < $1", vec![clamped_nanos(before).into()]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}

// ---------------------------------------------------------------------------------------------
// Local account passwords

fn decode_password(row: &dyn Cols) -> Result<UserPassword, StoreError> {
    let r = Reader::new(row, "user_passwords", "user_id");
    Ok(UserPassword { user: r.parse("user_id")?, phc: r.text("phc")?, updated_at: r.time("updated_at")? })
}

impl PasswordRepo for StoreTx {
    async fn get_password(&mut self, user: UserId) -> Result<Option<UserPassword>, StoreError> {
        let q = Query::new(
            "SELECT user_id, phc, updated_at FROM user_passwords WHERE user_id = $1",
            vec![id(user)],
        );
        self.fetch_optional(q, decode_password).await
    }

    async fn put_password(&mut self, password: &UserPassword) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO user_passwords (user_id, phc, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET phc = excluded.phc, updated_at = excluded.updated_at",
            vec![
                id(password.user),
                password.phc.as_str().into(),
                nanos("user_passwords.updated_at", password.updated_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }
}
