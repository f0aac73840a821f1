//! A test double for the domain layer: an in-memory [`Repo`] and a minimal executor.
//!
//! [`MemRepo`] follows the [`crate::repo`] contract closely enough to test domain logic
//! (transactions that commit or roll back as a whole, optimistic conflict detection,
//! uniqueness, audit sealing), but it is not a store: nothing is persistent and every
//! transaction copies the whole data set.

// The methods name their concrete (always-ready) future type; callers only rely on the traits.
#![allow(refining_impl_trait)]

pub mod conformance;

use std::collections::BTreeMap;
use std::future::{Future, Ready, ready};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use time::OffsetDateTime;

use crate::audit::{AuditEvent, ChainHead, NewAuditEvent};
use crate::ids::{
    AgentId, ApiTokenId, CredentialId, DeviceId, EnrollmentCodeId, GroupId, InstanceId, JobId, UserId,
};
use crate::model::{
    Agent, ApiToken, Credential, Device, EnrollmentCode, Group, Job, JobLease, JobState, PairingCode,
    Session, User, Username,
};
use crate::password::UserPassword;
use crate::repo::*;
use crate::secrets::{SealedCardSecrets, TokenHash};

/// Runs a future to completion on the current thread. Enough for [`MemRepo`], whose futures are
/// always ready; not a general-purpose executor.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Everything a [`MemRepo`] holds. Public so tests can inspect (and deliberately corrupt) it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemData {
    pub users: BTreeMap<UserId, User>,
    pub groups: BTreeMap<GroupId, Group>,
    pub devices: BTreeMap<DeviceId, Device>,
    pub credentials: BTreeMap<CredentialId, Credential>,
    pub audit: Vec<AuditEvent>,
    pub secrets: BTreeMap<DeviceId, SealedCardSecrets>,
    pub enrollment_codes: BTreeMap<EnrollmentCodeId, EnrollmentCode>,
    pub jobs: BTreeMap<JobId, Job>,
    pub api_tokens: BTreeMap<ApiTokenId, ApiToken>,
    pub sessions: Vec<Session>,
    pub passwords: BTreeMap<UserId, UserPassword>,
    pub installation: Option<crate::installation::Installation>,
    pub pairing_codes: BTreeMap<crate::ids::PairingCodeId, PairingCode>,
    pub agents: BTreeMap<AgentId, Agent>,
    pub passkeys: BTreeMap<crate::ids::PasskeyId, crate::model::Passkey>,
    pub webauthn_challenges: Vec<crate::model::WebAuthnChallenge>,
    /// [`RevocationRepo::revocation_epoch`].
    pub revocation_epoch: u64,
    /// [`RevocationRepo::next_crl_number`]'s last number per scope.
    pub crl_numbers: BTreeMap<String, u64>,
    /// Throttle failures: (scope, key, at).
    pub throttle_failures: Vec<(String, TokenHash, OffsetDateTime)>,
    pub cluster_notes: Vec<ClusterNote>,
}

#[derive(Debug, Default)]
struct Shared {
    data: MemData,
    version: u64,
    /// How many more commits of write units of work fail with `Retryable` (see
    /// [`MemRepo::fail_commits`]).
    failing_commits: u32,
    /// Commits of write units of work attempted, failed ones included.
    commits: u32,
    /// Write units of work started.
    write_units: u32,
    /// Every pause [`crate::repo::retry`] asked for, in order.
    pauses: Vec<std::time::Duration>,
}

/// An in-memory repository (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct MemRepo {
    shared: Arc<Mutex<Shared>>,
}

impl MemRepo {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the committed data.
    pub fn data(&self) -> MemData {
        self.lock().data.clone()
    }

    /// Makes the next `n` commits of write units of work fail with [`StoreError::Retryable`],
    /// as a serialization failure would.
    pub fn fail_commits(&self, n: u32) {
        self.lock().failing_commits = n;
    }

    /// How many commits of write units of work were attempted, failed ones included.
    pub fn commits(&self) -> u32 {
        self.lock().commits
    }

    /// How many write units of work were started ([`Repo::begin`]).
    pub fn write_units(&self) -> u32 {
        self.lock().write_units
    }

    /// The pauses asked for between retries, in order.
    pub fn pauses(&self) -> Vec<std::time::Duration> {
        self.lock().pauses.clone()
    }

    /// Changes the committed data directly (test setup, or simulating tampering).
    pub fn with_data<T>(&self, f: impl FnOnce(&mut MemData) -> T) -> T {
        let mut shared = self.lock();
        shared.version += 1;
        f(&mut shared.data)
    }
}

/// A unit of work on a [`MemRepo`]: a private copy, swapped in on commit.
///
/// A read unit of work ([`Repo::read`]) lets writes change only its private copy and refuses
/// them with [`StoreError::ReadOnly`] at commit, so nothing written through it is ever seen.
/// (The store refuses each write as it is made; the double keeps its write methods simple.)
#[derive(Debug)]
pub struct MemTx {
    shared: Arc<Mutex<Shared>>,
    data: MemData,
    base_version: u64,
    dirty: bool,
    read_only: bool,
}

impl MemRepo {
    fn start(&self, read_only: bool) -> MemTx {
        let mut shared = self.lock();
        if !read_only {
            shared.write_units += 1;
        }
        MemTx {
            shared: Arc::clone(&self.shared),
            data: shared.data.clone(),
            base_version: shared.version,
            dirty: false,
            read_only,
        }
    }
}

impl Repo for MemRepo {
    type Tx = MemTx;

    fn begin(&self) -> impl Future<Output = Result<MemTx, StoreError>> + Send {
        ready(Ok(self.start(false)))
    }

    fn read(&self) -> impl Future<Output = Result<MemTx, StoreError>> + Send {
        ready(Ok(self.start(true)))
    }

    /// Records the pause and returns at once: domain tests do not sleep.
    fn pause(&self, delay: std::time::Duration) -> impl Future<Output = ()> + Send {
        self.lock().pauses.push(delay);
        ready(())
    }
}

impl Tx for MemTx {
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let result = if !self.dirty {
            Ok(())
        } else if self.read_only {
            Err(StoreError::ReadOnly("a write through a read unit of work".into()))
        } else if shared.failing_commits > 0 {
            shared.commits += 1;
            shared.failing_commits -= 1;
            Err(StoreError::Retryable("injected serialization failure".into()))
        } else if shared.version != self.base_version {
            shared.commits += 1;
            Err(StoreError::Retryable("another transaction committed first".into()))
        } else {
            shared.commits += 1;
            shared.data = self.data;
            shared.version += 1;
            Ok(())
        };
        ready(result)
    }
}

type Fut<T> = Ready<Result<T, StoreError>>;

fn insert<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: V, what: &str) -> Result<(), StoreError> {
    if map.contains_key(&key) {
        return Err(StoreError::Conflict(format!("{what} already exists")));
    }
    map.insert(key, value);
    Ok(())
}

fn update<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: V) -> Result<(), StoreError> {
    match map.get_mut(&key) {
        Some(slot) => {
            *slot = value;
            Ok(())
        }
        None => Err(StoreError::NotFound),
    }
}

fn take<T>(iter: impl Iterator<Item = T>, limit: u32) -> Vec<T> {
    iter.take(usize::try_from(limit).unwrap_or(usize::MAX)).collect()
}

impl MemTx {
    fn write(&mut self) -> &mut MemData {
        self.dirty = true;
        &mut self.data
    }
}

impl UserRepo for MemTx {
    fn get_user(&mut self, id: UserId) -> Fut<Option<User>> {
        ready(Ok(self.data.users.get(&id).cloned()))
    }

    fn get_user_by_username(&mut self, username: &Username) -> Fut<Option<User>> {
        ready(Ok(self.data.users.values().find(|u| &u.username == username).cloned()))
    }

    fn list_users(&mut self, q: &UserQuery) -> Fut<Vec<User>> {
        let text = q.text.as_ref().map(|t| t.to_lowercase());
        let mut users: Vec<&User> = self
            .data
            .users
            .values()
            .filter(|u| q.group.is_none_or(|g| u.group == g))
            .filter(|u| q.role.is_none_or(|r| u.has_role(r)))
            .filter(|u| q.after.as_ref().is_none_or(|a| &u.username > a))
            .filter(|u| {
                text.as_ref().is_none_or(|t| {
                    u.username.as_str().contains(t.as_str())
                        || u.display_name.to_lowercase().contains(t.as_str())
                        || u.email.as_ref().is_some_and(|e| e.as_str().to_lowercase().contains(t.as_str()))
                })
            })
            .collect();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        ready(Ok(take(users.into_iter().cloned(), q.limit)))
    }

    fn insert_user(&mut self, user: &User) -> Fut<()> {
        if self.data.users.values().any(|u| u.username == user.username) {
            return ready(Err(StoreError::Conflict(format!("username {} is taken", user.username))));
        }
        ready(insert(&mut self.write().users, user.id, user.clone(), "user"))
    }

    fn update_user(&mut self, user: &User) -> Fut<()> {
        if self.data.users.values().any(|u| u.username == user.username && u.id != user.id) {
            return ready(Err(StoreError::Conflict(format!("username {} is taken", user.username))));
        }
        ready(update(&mut self.write().users, user.id, user.clone()))
    }
}

impl GroupRepo for MemTx {
    fn get_group(&mut self, id: GroupId) -> Fut<Option<Group>> {
        ready(Ok(self.data.groups.get(&id).cloned()))
    }

    fn list_groups(&mut self) -> Fut<Vec<Group>> {
        let mut groups: Vec<Group> = self.data.groups.values().cloned().collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        ready(Ok(groups))
    }

    fn insert_group(&mut self, group: &Group) -> Fut<()> {
        if self.data.groups.values().any(|g| g.name == group.name) {
            return ready(Err(StoreError::Conflict(format!("group name {} is taken", group.name))));
        }
        ready(insert(&mut self.write().groups, group.id, group.clone(), "group"))
    }

    fn update_group(&mut self, group: &Group) -> Fut<()> {
        ready(update(&mut self.write().groups, group.id, group.clone()))
    }
}

impl DeviceRepo for MemTx {
    fn get_device(&mut self, id: DeviceId) -> Fut<Option<Device>> {
        ready(Ok(self.data.devices.get(&id).cloned()))
    }

    fn get_device_by_serial(&mut self, model: &str, serial: &str) -> Fut<Option<Device>> {
        let found =
            self.data.devices.values().find(|d| d.model == model && d.serial.as_deref() == Some(serial));
        ready(Ok(found.cloned()))
    }

    fn list_devices(&mut self, q: &DeviceQuery) -> Fut<Vec<Device>> {
        let iter = self
            .data
            .devices
            .values()
            .filter(|d| q.owner.is_none_or(|o| d.owner == Some(o)))
            .filter(|d| q.kind.is_none_or(|k| d.kind == k))
            .filter(|d| q.states.is_empty() || q.states.contains(&d.state))
            .filter(|d| q.linked_to.is_none_or(|t| d.links.iter().any(|l| l.target == t)))
            .filter(|d| {
                q.serials.is_empty()
                    || d.serial.as_ref().is_some_and(|s| q.serials.iter().any(|w| w.eq_ignore_ascii_case(s)))
            })
            .filter(|d| q.after.is_none_or(|a| d.id > a))
            .cloned();
        ready(Ok(take(iter, q.limit)))
    }

    fn insert_device(&mut self, device: &Device) -> Fut<()> {
        if let Some(serial) = &device.serial
            && self
                .data
                .devices
                .values()
                .any(|d| d.model == device.model && d.serial.as_ref() == Some(serial))
        {
            return ready(Err(StoreError::Conflict(format!(
                "a {} with serial {serial} exists",
                device.model
            ))));
        }
        ready(insert(&mut self.write().devices, device.id, device.clone(), "device"))
    }

    fn update_device(&mut self, device: &Device) -> Fut<()> {
        ready(update(&mut self.write().devices, device.id, device.clone()))
    }
}

impl CredentialRepo for MemTx {
    fn get_credential(&mut self, id: CredentialId) -> Fut<Option<Credential>> {
        ready(Ok(self.data.credentials.get(&id).cloned()))
    }

    fn get_credential_by_serial(&mut self, serial_hex: &str) -> Fut<Option<Credential>> {
        ready(Ok(self.data.credentials.values().find(|c| c.serial_hex() == serial_hex).cloned()))
    }

    fn list_credentials(&mut self, q: &CredentialQuery) -> Fut<Vec<Credential>> {
        let iter = self
            .data
            .credentials
            .values()
            .filter(|c| q.device.is_none_or(|d| c.device == d))
            .filter(|c| q.states.is_empty() || q.states.contains(&c.state))
            .filter(|c| {
                q.not_after_before.is_none_or(|t| match &c.kind {
                    crate::model::CredentialKind::Certificate { not_after, .. } => *not_after < t,
                })
            })
            .filter(|c| q.after.is_none_or(|a| c.id > a))
            .cloned();
        ready(Ok(take(iter, q.limit)))
    }

    fn insert_credential(&mut self, credential: &Credential) -> Fut<()> {
        let data = self.write();
        let result = insert(&mut data.credentials, credential.id, credential.clone(), "credential");
        // As the store's trigger: only a credential that is not simply good changes answers.
        if result.is_ok()
            && !matches!(
                credential.state,
                crate::lifecycle::CredentialState::Active | crate::lifecycle::CredentialState::Expired
            )
        {
            data.revocation_epoch += 1;
        }
        ready(result)
    }

    fn update_credential(&mut self, credential: &Credential) -> Fut<()> {
        let data = self.write();
        let before = data.credentials.get(&credential.id).map(RevocationRecord::of);
        let result = update(&mut data.credentials, credential.id, credential.clone());
        if result.is_ok() && before != Some(RevocationRecord::of(credential)) {
            data.revocation_epoch += 1;
        }
        ready(result)
    }
}

impl RevocationRepo for MemTx {
    fn revocation_epoch(&mut self) -> Fut<u64> {
        ready(Ok(self.data.revocation_epoch))
    }

    fn revocation_records(&mut self, serials: &[String]) -> Fut<Vec<RevocationRecord>> {
        let records = self
            .data
            .credentials
            .values()
            .filter(|c| serials.iter().any(|s| s == c.serial_hex()))
            .map(RevocationRecord::of)
            .collect();
        ready(Ok(records))
    }

    fn for_each_listed<F>(&mut self, mut each: F) -> Fut<u64>
    where
        F: FnMut(RevocationRecord) -> Result<(), StoreError> + Send,
    {
        let mut n = 0;
        for c in self.data.credentials.values() {
            let record = RevocationRecord::of(c);
            if record.is_listed() {
                if let Err(e) = each(record) {
                    return ready(Err(e));
                }
                n += 1;
            }
        }
        ready(Ok(n))
    }

    fn next_crl_number(&mut self, scope: &str, floor: u64) -> Fut<u64> {
        let data = self.write();
        let last = data.crl_numbers.get(scope).copied().unwrap_or(0);
        let next = last.saturating_add(1).max(floor);
        data.crl_numbers.insert(scope.to_owned(), next);
        ready(Ok(next))
    }
}

impl AuditRepo for MemTx {
    fn append_audit(&mut self, event: NewAuditEvent) -> Fut<AuditEvent> {
        let head = self.data.audit.last().map_or(ChainHead::GENESIS, AuditEvent::head);
        let sealed = event.seal(&head);
        self.write().audit.push(sealed.clone());
        ready(Ok(sealed))
    }

    fn audit_head(&mut self) -> Fut<ChainHead> {
        ready(Ok(self.data.audit.last().map_or(ChainHead::GENESIS, AuditEvent::head)))
    }

    fn unsealed_audit(&mut self) -> Fut<u64> {
        // This store seals each event as it appends it (its units of work run one at a time).
        ready(Ok(0))
    }

    fn list_audit(&mut self, q: &AuditQuery) -> Fut<Vec<AuditEvent>> {
        let iter = self
            .data
            .audit
            .iter()
            .filter(|e| e.seq > q.after_seq)
            .filter(|e| q.target.is_none() || e.target == q.target)
            .filter(|e| q.action.as_deref().is_none_or(|a| action_matches(&e.action, a)))
            .filter(|e| q.actor.as_deref().is_none_or(|a| actor_matches(&e.actor, a)))
            .filter(|e| q.since.is_none_or(|t| e.at >= t))
            .filter(|e| q.until.is_none_or(|t| e.at < t))
            .cloned();
        ready(Ok(take(iter, q.limit)))
    }
}

impl SecretRepo for MemTx {
    fn put_card_secrets(&mut self, device: DeviceId, sealed: &SealedCardSecrets) -> Fut<()> {
        self.write().secrets.insert(device, sealed.clone());
        ready(Ok(()))
    }

    fn get_card_secrets(&mut self, device: DeviceId) -> Fut<Option<SealedCardSecrets>> {
        ready(Ok(self.data.secrets.get(&device).cloned()))
    }

    fn delete_card_secrets(&mut self, device: DeviceId) -> Fut<()> {
        ready(self.write().secrets.remove(&device).map(|_| ()).ok_or(StoreError::NotFound))
    }
}

impl EnrollmentCodeRepo for MemTx {
    fn insert_enrollment_code(&mut self, code: &EnrollmentCode) -> Fut<()> {
        ready(insert(&mut self.write().enrollment_codes, code.id, code.clone(), "enrollment code"))
    }

    fn get_enrollment_code_by_hash(&mut self, hash: &TokenHash) -> Fut<Option<EnrollmentCode>> {
        ready(Ok(self.data.enrollment_codes.values().find(|c| &c.code_hash == hash).cloned()))
    }

    fn update_enrollment_code(&mut self, code: &EnrollmentCode) -> Fut<()> {
        ready(update(&mut self.write().enrollment_codes, code.id, code.clone()))
    }

    fn delete_expired_enrollment_codes(&mut self, before: OffsetDateTime) -> Fut<u64> {
        let codes = &mut self.write().enrollment_codes;
        let n = codes.len();
        codes.retain(|_, c| c.expires_at >= before);
        ready(Ok((n - codes.len()) as u64))
    }
}

impl JobRepo for MemTx {
    fn get_job(&mut self, id: JobId) -> Fut<Option<Job>> {
        ready(Ok(self.data.jobs.get(&id).cloned()))
    }

    fn list_jobs_for_device(&mut self, device: DeviceId) -> Fut<Vec<Job>> {
        let mut jobs: Vec<Job> = self.data.jobs.values().filter(|j| j.device == device).cloned().collect();
        jobs.sort_by_key(|j| j.created_at);
        ready(Ok(jobs))
    }

    fn list_unfinished_jobs(&mut self) -> Fut<Vec<Job>> {
        let mut jobs: Vec<Job> = self
            .data
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Created | JobState::Running | JobState::Failed))
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.created_at);
        ready(Ok(jobs))
    }

    fn insert_job(&mut self, job: &Job) -> Fut<()> {
        ready(insert(&mut self.write().jobs, job.id, job.clone(), "job"))
    }

    fn update_job(&mut self, job: &Job) -> Fut<()> {
        let result = match self.data.jobs.get(&job.id) {
            None => Err(StoreError::NotFound),
            Some(stored) if stored.version != job.version => Err(StoreError::Stale(format!(
                "job {} is at version {}, not {}",
                job.id, stored.version, job.version
            ))),
            Some(_) => {
                let mut next = job.clone();
                next.version += 1;
                update(&mut self.write().jobs, job.id, next)
            }
        };
        ready(result)
    }

    fn redeem_job_ticket(
        &mut self,
        id: JobId,
        ticket: &TokenHash,
        lease: &JobLease,
        at: OffsetDateTime,
    ) -> Fut<Option<Job>> {
        let Some(stored) = self.data.jobs.get(&id) else { return ready(Ok(None)) };
        if stored.check_ticket(ticket, at).is_err() {
            return ready(Ok(None));
        }
        let mut job = stored.clone();
        if job.start_under(*lease, at).is_err() {
            return ready(Ok(None));
        }
        job.version += 1;
        self.write().jobs.insert(id, job.clone());
        ready(Ok(Some(job)))
    }

    fn renew_job_lease(&mut self, id: JobId, owner: InstanceId, expires_at: OffsetDateTime) -> Fut<bool> {
        let ours = self
            .data
            .jobs
            .get(&id)
            .is_some_and(|j| j.state == JobState::Running && j.lease.is_some_and(|l| l.owner == owner));
        if ours && let Some(lease) = self.write().jobs.get_mut(&id).and_then(|j| j.lease.as_mut()) {
            lease.expires_at = expires_at;
        }
        ready(Ok(ours))
    }
}

impl ApiTokenRepo for MemTx {
    fn get_api_token(&mut self, id: ApiTokenId) -> Fut<Option<ApiToken>> {
        ready(Ok(self.data.api_tokens.get(&id).cloned()))
    }

    fn get_api_token_by_hash(&mut self, hash: &TokenHash) -> Fut<Option<ApiToken>> {
        ready(Ok(self.data.api_tokens.values().find(|t| &t.token_hash == hash).cloned()))
    }

    fn list_api_tokens(&mut self, user: UserId) -> Fut<Vec<ApiToken>> {
        let mut tokens: Vec<ApiToken> =
            self.data.api_tokens.values().filter(|t| t.user == user).cloned().collect();
        tokens.sort_by_key(|t| t.created_at);
        ready(Ok(tokens))
    }

    fn insert_api_token(&mut self, token: &ApiToken) -> Fut<()> {
        if self.data.api_tokens.values().any(|t| t.token_hash == token.token_hash) {
            return ready(Err(StoreError::Conflict("token hash exists".into())));
        }
        ready(insert(&mut self.write().api_tokens, token.id, token.clone(), "API token"))
    }

    fn update_api_token(&mut self, token: &ApiToken) -> Fut<()> {
        ready(update(&mut self.write().api_tokens, token.id, token.clone()))
    }
}

impl SessionRepo for MemTx {
    fn insert_session(&mut self, session: &Session) -> Fut<()> {
        if self.data.sessions.iter().any(|s| s.token_hash == session.token_hash) {
            return ready(Err(StoreError::Conflict("session exists".into())));
        }
        self.write().sessions.push(session.clone());
        ready(Ok(()))
    }

    fn get_session(&mut self, hash: &TokenHash) -> Fut<Option<Session>> {
        ready(Ok(self.data.sessions.iter().find(|s| &s.token_hash == hash).cloned()))
    }

    fn update_session(&mut self, session: &Session) -> Fut<()> {
        let found = self.write().sessions.iter_mut().find(|s| s.token_hash == session.token_hash);
        ready(match found {
            Some(s) => {
                *s = session.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound),
        })
    }

    fn delete_session(&mut self, hash: &TokenHash) -> Fut<()> {
        let sessions = &mut self.write().sessions;
        let n = sessions.len();
        sessions.retain(|s| &s.token_hash != hash);
        ready(if sessions.len() < n { Ok(()) } else { Err(StoreError::NotFound) })
    }

    fn delete_sessions_of(&mut self, user: UserId) -> Fut<u64> {
        let sessions = &mut self.write().sessions;
        let n = sessions.len();
        sessions.retain(|s| s.user != user);
        ready(Ok((n - sessions.len()) as u64))
    }

    fn delete_expired_sessions(&mut self, before: OffsetDateTime) -> Fut<u64> {
        let sessions = &mut self.write().sessions;
        let n = sessions.len();
        sessions.retain(|s| s.expires_at >= before);
        ready(Ok((n - sessions.len()) as u64))
    }
}

impl PasswordRepo for MemTx {
    fn get_password(&mut self, user: UserId) -> Fut<Option<UserPassword>> {
        ready(Ok(self.data.passwords.get(&user).cloned()))
    }

    fn put_password(&mut self, password: &UserPassword) -> Fut<()> {
        if !self.data.users.contains_key(&password.user) {
            return ready(Err(StoreError::Backend("foreign key: no such user".into())));
        }
        self.write().passwords.insert(password.user, password.clone());
        ready(Ok(()))
    }
}

impl InstallationRepo for MemTx {
    fn get_installation(&mut self) -> Fut<Option<crate::installation::Installation>> {
        ready(Ok(self.data.installation.clone()))
    }

    fn insert_installation(&mut self, installation: &crate::installation::Installation) -> Fut<()> {
        if self.data.installation.is_some() {
            return ready(Err(StoreError::Conflict("installation.id already exists".into())));
        }
        self.write().installation = Some(installation.clone());
        ready(Ok(()))
    }
}

impl AgentRepo for MemTx {
    fn insert_pairing_code(&mut self, code: &PairingCode) -> Fut<()> {
        if self.data.pairing_codes.values().any(|c| c.code_hash == code.code_hash) {
            return ready(Err(StoreError::Conflict("pairing_codes.code_hash already exists".into())));
        }
        ready(insert(&mut self.write().pairing_codes, code.id, code.clone(), "pairing code"))
    }

    fn get_pairing_code(&mut self, id: crate::ids::PairingCodeId) -> Fut<Option<PairingCode>> {
        ready(Ok(self.data.pairing_codes.get(&id).cloned()))
    }

    fn redeem_pairing_code(&mut self, hash: &TokenHash, at: OffsetDateTime) -> Fut<Option<PairingCode>> {
        let found = self
            .data
            .pairing_codes
            .values()
            .find(|c| &c.code_hash == hash && c.used_at.is_none() && at < c.expires_at)
            .cloned();
        let Some(mut code) = found else { return ready(Ok(None)) };
        code.used_at = Some(at);
        self.write().pairing_codes.insert(code.id, code.clone());
        ready(Ok(Some(code)))
    }

    fn delete_expired_pairing_codes(&mut self, before: OffsetDateTime) -> Fut<u64> {
        let n = self.data.pairing_codes.values().filter(|c| c.expires_at < before).count();
        if n > 0 {
            self.write().pairing_codes.retain(|_, c| c.expires_at >= before);
        }
        ready(Ok(n as u64))
    }

    fn insert_agent(&mut self, agent: &Agent) -> Fut<()> {
        if self.data.agents.values().any(|a| a.credential_hash == agent.credential_hash) {
            return ready(Err(StoreError::Conflict("agents.credential_hash already exists".into())));
        }
        ready(insert(&mut self.write().agents, agent.id, agent.clone(), "agent"))
    }

    fn get_agent(&mut self, id: AgentId) -> Fut<Option<Agent>> {
        ready(Ok(self.data.agents.get(&id).cloned()))
    }

    fn get_agent_by_credential(&mut self, hash: &TokenHash) -> Fut<Option<Agent>> {
        ready(Ok(self.data.agents.values().find(|a| &a.credential_hash == hash).cloned()))
    }

    fn list_agents(&mut self, user: UserId) -> Fut<Vec<Agent>> {
        let mut agents: Vec<Agent> = self.data.agents.values().filter(|a| a.user == user).cloned().collect();
        agents.sort_by_key(|a| (a.created_at, a.id));
        ready(Ok(agents))
    }

    fn update_agent(&mut self, agent: &Agent) -> Fut<()> {
        let Some(stored) = self.data.agents.get(&agent.id) else { return ready(Err(StoreError::NotFound)) };
        let updated =
            Agent { last_seen_at: agent.last_seen_at, revoked_at: agent.revoked_at, ..stored.clone() };
        ready(update(&mut self.write().agents, agent.id, updated))
    }
}

impl ThrottleRepo for MemTx {
    fn recent_failures(
        &mut self,
        scope: &str,
        key: &TokenHash,
        since: OffsetDateTime,
        limit: u32,
    ) -> Fut<Vec<OffsetDateTime>> {
        let mut times: Vec<OffsetDateTime> = self
            .data
            .throttle_failures
            .iter()
            .filter(|(s, k, at)| s == scope && k == key && *at >= since)
            .map(|(_, _, at)| *at)
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        ready(Ok(take(times.into_iter(), limit)))
    }

    fn record_failure(
        &mut self,
        scope: &str,
        key: &TokenHash,
        at: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Fut<()> {
        let failures = &mut self.write().throttle_failures;
        failures.retain(|(s, k, t)| !(s == scope && k == key && *t < forget_before));
        failures.push((scope.to_owned(), *key, at));
        ready(Ok(()))
    }

    fn clear_failures(&mut self, scope: &str, key: &TokenHash) -> Fut<u64> {
        let failures = &mut self.write().throttle_failures;
        let n = failures.len();
        failures.retain(|(s, k, _)| !(s == scope && k == key));
        ready(Ok((n - failures.len()) as u64))
    }

    fn prune_failures(&mut self, before: OffsetDateTime) -> Fut<u64> {
        let failures = &mut self.write().throttle_failures;
        let n = failures.len();
        failures.retain(|(_, _, t)| *t >= before);
        ready(Ok((n - failures.len()) as u64))
    }
}

fn same_note(n: &ClusterNote, topic: &str, owner: &str, key: &str) -> bool {
    n.topic == topic && n.owner == owner && n.key == key
}

impl ClusterRepo for MemTx {
    fn put_note(&mut self, note: &ClusterNote) -> Fut<()> {
        let notes = &mut self.write().cluster_notes;
        notes.retain(|n| !same_note(n, &note.topic, &note.owner, &note.key));
        notes.push(note.clone());
        ready(Ok(()))
    }

    fn insert_note(&mut self, note: &ClusterNote) -> Fut<()> {
        if self.data.cluster_notes.iter().any(|n| same_note(n, &note.topic, &note.owner, &note.key)) {
            return ready(Err(StoreError::Conflict("cluster note exists".into())));
        }
        self.write().cluster_notes.push(note.clone());
        ready(Ok(()))
    }

    fn get_note(
        &mut self,
        topic: &str,
        owner: &str,
        key: &str,
        now: OffsetDateTime,
    ) -> Fut<Option<ClusterNote>> {
        ready(Ok(self
            .data
            .cluster_notes
            .iter()
            .find(|n| same_note(n, topic, owner, key) && n.expires_at > now)
            .cloned()))
    }

    fn list_notes(
        &mut self,
        topic: &str,
        owner: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Fut<Vec<ClusterNote>> {
        let mut notes: Vec<ClusterNote> = self
            .data
            .cluster_notes
            .iter()
            .filter(|n| n.topic == topic && n.owner == owner && n.expires_at > now)
            .cloned()
            .collect();
        notes.sort_by(|a, b| (a.created_at, &a.key).cmp(&(b.created_at, &b.key)));
        ready(Ok(take(notes.into_iter(), limit)))
    }

    fn delete_note(&mut self, topic: &str, owner: &str, key: &str) -> Fut<bool> {
        let notes = &mut self.write().cluster_notes;
        let n = notes.len();
        notes.retain(|n| !same_note(n, topic, owner, key));
        ready(Ok(notes.len() < n))
    }

    fn delete_expired_notes(&mut self, before: OffsetDateTime) -> Fut<u64> {
        let notes = &mut self.write().cluster_notes;
        let n = notes.len();
        notes.retain(|n| n.expires_at >= before);
        ready(Ok((n - notes.len()) as u64))
    }
}

impl PasskeyRepo for MemTx {
    fn insert_passkey(&mut self, passkey: &crate::model::Passkey) -> Fut<()> {
        if self.data.passkeys.values().any(|p| p.credential_id == passkey.credential_id) {
            return ready(Err(StoreError::Conflict("passkeys.credential_id already exists".into())));
        }
        ready(insert(&mut self.write().passkeys, passkey.id, passkey.clone(), "passkey"))
    }

    fn get_passkey(&mut self, id: crate::ids::PasskeyId) -> Fut<Option<crate::model::Passkey>> {
        ready(Ok(self.data.passkeys.get(&id).cloned()))
    }

    fn get_passkey_by_credential_id(&mut self, credential_id: &[u8]) -> Fut<Option<crate::model::Passkey>> {
        ready(Ok(self.data.passkeys.values().find(|p| p.credential_id == credential_id).cloned()))
    }

    fn list_passkeys(&mut self, q: &PasskeyQuery) -> Fut<Vec<crate::model::Passkey>> {
        let mut found: Vec<crate::model::Passkey> = self
            .data
            .passkeys
            .values()
            .filter(|p| q.user.is_none_or(|u| p.user == u))
            .filter(|p| q.device.is_none_or(|d| p.device == d))
            .filter(|p| q.states.is_empty() || q.states.contains(&p.state))
            .cloned()
            .collect();
        found.sort_by_key(|p| (p.created_at, p.id));
        ready(Ok(take(found.into_iter(), q.limit)))
    }

    fn update_passkey(&mut self, passkey: &crate::model::Passkey) -> Fut<()> {
        let Some(stored) = self.data.passkeys.get(&passkey.id) else {
            return ready(Err(StoreError::NotFound));
        };
        let updated = crate::model::Passkey {
            sign_count: passkey.sign_count,
            last_used_at: passkey.last_used_at,
            state: passkey.state,
            removed_at: passkey.removed_at,
            ..stored.clone()
        };
        ready(update(&mut self.write().passkeys, passkey.id, updated))
    }

    fn insert_webauthn_challenge(&mut self, challenge: &crate::model::WebAuthnChallenge) -> Fut<()> {
        if self.data.webauthn_challenges.iter().any(|c| c.challenge_hash == challenge.challenge_hash) {
            return ready(Err(StoreError::Conflict(
                "webauthn_challenges.challenge_hash already exists".into(),
            )));
        }
        self.write().webauthn_challenges.push(challenge.clone());
        ready(Ok(()))
    }

    fn redeem_webauthn_challenge(
        &mut self,
        hash: &TokenHash,
        binding: &TokenHash,
        purpose: crate::model::ChallengePurpose,
        at: OffsetDateTime,
    ) -> Fut<Option<crate::model::WebAuthnChallenge>> {
        let found = self.data.webauthn_challenges.iter().position(|c| {
            &c.challenge_hash == hash
                && &c.binding == binding
                && c.purpose == purpose
                && c.used_at.is_none()
                && at < c.expires_at
        });
        let Some(i) = found else { return ready(Ok(None)) };
        let data = self.write();
        data.webauthn_challenges[i].used_at = Some(at);
        ready(Ok(Some(data.webauthn_challenges[i].clone())))
    }

    fn delete_expired_webauthn_challenges(&mut self, before: OffsetDateTime) -> Fut<u64> {
        let n = self.data.webauthn_challenges.iter().filter(|c| c.expires_at < before).count();
        if n > 0 {
            self.write().webauthn_challenges.retain(|c| c.expires_at >= before);
        }
        ready(Ok(n as u64))
    }
}

/// [`AuditQuery::action`]: the exact action, or for a name without a dot, its family.
fn action_matches(action: &str, wanted: &str) -> bool {
    action == wanted
        || (!wanted.contains('.') && action.strip_prefix(wanted).is_some_and(|rest| rest.starts_with('.')))
}

/// [`AuditQuery::actor`]: a user's username, or a user's or token's id.
fn actor_matches(actor: &crate::audit::Actor, wanted: &str) -> bool {
    match actor {
        crate::audit::Actor::System => false,
        crate::audit::Actor::User { id, username } => id.to_string() == wanted || username.as_str() == wanted,
        crate::audit::Actor::ApiToken { id } => id.to_string() == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_memory_repo_passes_the_conformance_suite() {
        block_on(conformance::run(&MemRepo::new()));
    }
}
