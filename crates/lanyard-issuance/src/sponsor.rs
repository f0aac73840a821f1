//! The sponsor proof of a derived PIV enrolment (DESIGN §2 C, SP 800-157 PKI-AUTH): before a
//! phone receives a derived credential, the holder's PIV card proves itself through their agent.
//! The server drives it like every card session; the agent only relays the APDUs.
//!
//! 1. SELECT PIV and read the PIV Authentication certificate (object `5FC105`).
//! 2. Check the certificate before the card is asked for anything else ([`SponsorTrust::check`]):
//!    its path to the configured PIV trust anchors; its revocation status — Lanyard's own records
//!    (credential and device state) for a card Lanyard issued, otherwise OCSP from the
//!    certificate's AIA or else the CRL from its distribution points, refusing when neither
//!    answers; and whose card it is — for a Lanyard card its card UUID must be a device the
//!    signed-in holder holds, for an imported root the configured [`UserMatch`] rule.
//! 3. Read the PIN retry counter: a blocked PIN ends the session there.
//! 4. Wait for the PIN the holder types in the portal and VERIFY it on the card: a wrong PIN
//!    costs one of the card's tries, and the tries left are recorded; nothing else happens.
//! 5. Have the card sign a fresh random challenge (32 bytes, made for this session and used once)
//!    with its 9A key through GENERAL AUTHENTICATE, and verify it with the certificate's key.
//!
//! A refusal is recorded on the job (step [`STEP_SPONSOR_REFUSED`] with the reason), which fails
//! and is audited like every job; nothing is issued. Success records the sponsor on the job's
//! checkpoint ([`SponsorProof`]), which the portal spends once to start the enrolment.

use std::future::Future;
use std::pin::Pin;

use lanyard_ca::Certificate;
use lanyard_ca::card_check::{
    self, CardCheckError, CardNames, ChallengeKey, Revocation, TrustStore, ValidPath,
};
use lanyard_core::authz::System;
use lanyard_core::ids::DeviceId;
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::{DeviceClass, Job, StepOutcome, User};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_piv::apdu::StatusWord;
use lanyard_piv::objects::CertificateObject;
use lanyard_piv::tag;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::session::{AgentLink, CardSession, SessionError};

/// The step a sponsor proof fails with when the card or its certificate is refused (its detail
/// says why).
pub const STEP_SPONSOR_REFUSED: &str = "sponsor_refused";
/// The step a successful sponsor proof ends with.
pub const STEP_SPONSOR_VERIFIED: &str = "sponsor_verified";
/// How many random bytes the card signs.
pub const CHALLENGE_LEN: usize = 32;

/// Which field of an imported root's card certificate must equal which of the holder's
/// (`piv_user_match` in the server's configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserMatch {
    /// An e-mail address of the certificate (SAN rfc822Name or subject emailAddress) is the
    /// holder's e-mail address.
    #[default]
    Email,
    /// The UPN (SAN otherName) is the holder's e-mail address.
    UpnEmail,
    /// The UPN's part before `@` is the holder's user name.
    UpnUsername,
    /// The subject's common name is the holder's user name.
    CnUsername,
}

impl UserMatch {
    /// Whether `names` belong to `user` under this rule (case-insensitively).
    pub fn matches(self, names: &CardNames, user: &User) -> bool {
        let email = user.email.as_ref().map(|e| e.as_str().to_ascii_lowercase());
        let username = user.username.as_str().to_ascii_lowercase();
        let lower = |s: &str| s.to_ascii_lowercase();
        match self {
            UserMatch::Email => email.is_some_and(|e| names.emails.iter().any(|m| lower(m) == e)),
            UserMatch::UpnEmail => email.is_some_and(|e| names.upn.as_deref().map(lower) == Some(e)),
            UserMatch::UpnUsername => names
                .upn
                .as_deref()
                .and_then(|u| u.split_once('@'))
                .is_some_and(|(local, _)| lower(local) == username),
            UserMatch::CnUsername => names.common_name.as_deref().map(lower) == Some(username),
        }
    }

    /// The rule's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            UserMatch::Email => "email",
            UserMatch::UpnEmail => "upn-email",
            UserMatch::UpnUsername => "upn-username",
            UserMatch::CnUsername => "cn-username",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            UserMatch::Email => "an e-mail address in the certificate must be yours",
            UserMatch::UpnEmail => "the certificate's UPN must be your e-mail address",
            UserMatch::UpnUsername => "the certificate's UPN must be your user name",
            UserMatch::CnUsername => "the certificate's common name must be your user name",
        }
    }
}

impl std::str::FromStr for UserMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [UserMatch::Email, UserMatch::UpnEmail, UserMatch::UpnUsername, UserMatch::CnUsername]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of email, upn-email, upn-username, cn-username"))
    }
}

/// A revocation source's answer: the bytes, or why there are none.
pub type FetchResult<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;

/// Where OCSP answers and CRLs come from (the server's HTTP client; tests serve real answers).
pub trait RevocationFetch: Send + Sync {
    /// POSTs an OCSP request to `url` (`application/ocsp-request`).
    fn ocsp<'a>(&'a self, url: &'a str, request: Vec<u8>) -> FetchResult<'a>;
    /// GETs the CRL at `url`.
    fn crl<'a>(&'a self, url: &'a str) -> FetchResult<'a>;
}

/// What the server trusts for sponsor cards.
pub struct SponsorTrust {
    /// Lanyard's root and issuing CA, plus the imported roots (and their intermediates).
    pub store: TrustStore,
    /// Lanyard's issuing CA: a card certificate it issued is checked against Lanyard's own
    /// records.
    pub lanyard_issuer: Certificate,
    /// The rule for cards of imported roots.
    pub user_match: UserMatch,
    pub fetch: Box<dyn RevocationFetch>,
}

/// Why a sponsor card was refused: shown to the holder, recorded on the job, audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Certificate(#[from] CardCheckError),
    #[error("the card holds no PIV Authentication certificate (slot 9A)")]
    NoCertificate,
    #[error("the card's certificate has been revoked{0}")]
    Revoked(String),
    #[error("the card's certificate is {0} in Lanyard's records, not active")]
    NotActive(CredentialState),
    #[error("the card is {0} in Lanyard's records; only an active card sponsors a derived credential")]
    CardNotActive(DeviceState),
    #[error("Lanyard has no record of the card's certificate, although Lanyard's CA signed it")]
    Unrecorded,
    #[error("the card's revocation status could not be checked, so it is refused: {0}")]
    RevocationUnknown(String),
    #[error("this card is not one of yours")]
    AnotherUsersCard,
    #[error("the card's certificate does not name you: {0}")]
    NotMapped(&'static str),
}

/// The card as checked, before its signature.
#[derive(Debug, Clone)]
pub struct CheckedCard {
    pub path: ValidPath,
    pub names: CardNames,
    /// The holder's device for a Lanyard card; `None` for a card of an imported root.
    pub device: Option<DeviceId>,
}

/// What a successful sponsor proof leaves on its job's checkpoint. The portal spends it once
/// (`spent`) to start the enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SponsorProof {
    /// The card's device, for a Lanyard card.
    pub device: Option<DeviceId>,
    pub subject: String,
    /// The certificate's issuer DN: with the serial, what names a card of an imported root.
    #[serde(default)]
    pub issuer: String,
    pub serial_hex: String,
    /// The trust anchor the path ended at.
    pub anchor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    #[serde(default)]
    pub spent: bool,
}

impl SponsorProof {
    /// The proof recorded on `job`, if its sponsor proof succeeded.
    pub fn of(job: &Job) -> Option<SponsorProof> {
        let value = job.checkpoint.as_ref()?.get("sponsor_proof")?;
        serde_json::from_value(value.clone()).ok()
    }

    /// Records the proof on `job`'s checkpoint.
    pub fn store(&self, job: &mut Job) -> Result<(), SessionError> {
        let value = serde_json::to_value(self).map_err(|e| SessionError::Server(e.to_string()))?;
        job.checkpoint = Some(serde_json::json!({ "sponsor_proof": value }));
        Ok(())
    }
}

impl SponsorTrust {
    /// Checks the certificate read from a card for `holder` at `now`: path, revocation, owner.
    pub async fn check<R: Repo>(
        &self,
        repo: &R,
        cert_der: &[u8],
        holder: &User,
        now: OffsetDateTime,
    ) -> Result<CheckedCard, SponsorCheckError> {
        let path = self.store.validate(cert_der, now).map_err(Refusal::from)?;
        let names = card_check::card_names(path.leaf()).map_err(Refusal::from)?;
        let device = if path.issuer() == &self.lanyard_issuer {
            Some(lanyard_card(repo, &names, holder).await?)
        } else {
            self.revocation(&path, now).await?;
            if !self.user_match.matches(&names, holder) {
                return Err(Refusal::NotMapped(self.user_match.describe()).into());
            }
            None
        };
        Ok(CheckedCard { path, names, device })
    }

    /// The card's revocation status from OCSP, or else its CRL; no answer from either is a
    /// refusal naming why.
    async fn revocation(&self, path: &ValidPath, now: OffsetDateTime) -> Result<(), Refusal> {
        let (leaf, issuer) = (path.leaf(), path.issuer());
        let mut why = Vec::new();
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Refusal::RevocationUnknown("no randomness".into()))?;
        let status = 'found: {
            for url in card_check::ocsp_urls(leaf) {
                let request = card_check::ocsp_request(leaf, issuer, &nonce)
                    .map_err(|e| Refusal::RevocationUnknown(e.to_string()))?;
                match self.fetch.ocsp(&url, request).await {
                    Ok(answer) => match card_check::ocsp_status(&answer, leaf, issuer, &nonce, now) {
                        Ok(status) => break 'found status,
                        Err(e) => why.push(format!("OCSP {url}: {e}")),
                    },
                    Err(e) => why.push(format!("OCSP {url}: {e}")),
                }
            }
            for url in card_check::crl_urls(leaf) {
                match self.fetch.crl(&url).await {
                    Ok(crl) => match card_check::crl_status(&crl, leaf, issuer, now) {
                        Ok(status) => break 'found status,
                        Err(e) => why.push(format!("CRL {url}: {e}")),
                    },
                    Err(e) => why.push(format!("CRL {url}: {e}")),
                }
            }
            if why.is_empty() {
                why.push("the certificate names neither an OCSP responder nor a CRL".into());
            }
            return Err(Refusal::RevocationUnknown(why.join("; ")));
        };
        match status {
            Revocation::Good => Ok(()),
            Revocation::Revoked { reason, .. } => {
                Err(Refusal::Revoked(reason.map(|r| format!(" ({r:?})")).unwrap_or_default()))
            }
        }
    }
}

/// A card Lanyard issued: its certificate and its device must be active in Lanyard's records,
/// the device must be the holder's, and its card UUID the certificate's.
async fn lanyard_card<R: Repo>(
    repo: &R,
    names: &CardNames,
    holder: &User,
) -> Result<DeviceId, SponsorCheckError> {
    let mut tx = repo.read().await?;
    let credential = tx.get_credential_by_serial(&names.serial_hex).await?.ok_or(Refusal::Unrecorded)?;
    let device = tx.get_device(credential.device).await?.ok_or(Refusal::Unrecorded)?;
    if device.owner != Some(holder.id) {
        return Err(Refusal::AnotherUsersCard.into());
    }
    match credential.state {
        CredentialState::Active => {}
        CredentialState::Revoked => {
            let reason = credential.revocation_reason.map(|r| format!(" ({r})")).unwrap_or_default();
            return Err(Refusal::Revoked(reason).into());
        }
        other => return Err(Refusal::NotActive(other).into()),
    }
    if device.class() != DeviceClass::Token || device.state != DeviceState::Active {
        return Err(Refusal::CardNotActive(device.state).into());
    }
    match device.card_guid {
        Some(guid) if names.uuids.contains(&guid) => Ok(device.id),
        _ => Err(Refusal::AnotherUsersCard.into()),
    }
}

/// A sponsor check that stopped: a refusal, or the server could not look.
#[derive(Debug, thiserror::Error)]
pub enum SponsorCheckError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Server(#[from] lanyard_core::repo::StoreError),
}

impl<R: Repo, L: AgentLink> CardSession<'_, R, L> {
    /// Runs a sponsor proof (job kind `sponsor_proof`); see the module documentation.
    pub(crate) async fn sponsor_proof(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let trust = self
            .authority
            .sponsor
            .ok_or_else(|| SessionError::Server("sponsor cards are not configured on this server".into()))?;
        let device = crate::session::job_device(self.repo, job).await?;
        let holder = {
            let by = job.created_by.ok_or_else(|| SessionError::Server("the job names no holder".into()))?;
            let mut tx = self.repo.read().await?;
            tx.get_user(by).await?.ok_or_else(|| SessionError::Server("the holder is gone".into()))?
        };
        if device.owner != Some(holder.id) {
            return Err(SessionError::Server("the job's card is not its creator's".into()));
        }

        // 1. The certificate, read without the PIN.
        let answers = self
            .link
            .transmit(
                "read_certificate",
                (0, 4),
                &[lanyard_piv::commands::select(), lanyard_piv::commands::get_data(tag::CERT_PIV_AUTH)],
            )
            .await?;
        let select = answers.first().ok_or_else(|| SessionError::Protocol("no answer to SELECT".into()))?;
        if !select.sw.is_success() {
            return self
                .refuse(job, format!("the card has no PIV application (SELECT answered {})", select.sw))
                .await;
        }
        let object = match answers.get(1) {
            Some(r) if r.sw.is_success() => r.data.clone(),
            Some(r) if r.sw == StatusWord::NotFound => {
                return self.refuse(job, Refusal::NoCertificate.to_string()).await;
            }
            Some(r) => {
                return Err(SessionError::Engine(format!(
                    "reading the 9A certificate: the card answered {}",
                    r.sw
                )));
            }
            None => return Err(SessionError::Protocol("no answer to GET DATA".into())),
        };
        let cert_der = match lanyard_piv::tlv::expect_single(&object, 0x53)
            .map_err(|e| e.to_string())
            .and_then(|_| CertificateObject::decode(&object).map_err(|e| e.to_string()))
        {
            Ok(c) => c.der,
            Err(e) => {
                return self
                    .refuse(job, format!("the card's 9A certificate object is unreadable: {e}"))
                    .await;
            }
        };

        // 2. Path, revocation, owner.
        let now = self.clock.now();
        let card = match trust.check(self.repo, &cert_der, &holder, now).await {
            Ok(card) => card,
            Err(SponsorCheckError::Refused(r)) => return self.refuse(job, r.to_string()).await,
            Err(SponsorCheckError::Server(e)) => return Err(e.into()),
        };
        let key = match ChallengeKey::of(&card.path.leaf().tbs_certificate.subject_public_key_info) {
            Ok(key) => key,
            Err(e) => return self.refuse(job, e.to_string()).await,
        };
        self.step(
            job,
            "check_certificate",
            format!("{} (under {})", card.names.subject, card.path.anchor().tbs_certificate.subject),
        )
        .await?;

        // 3. The PIN's state.
        match self.pin_tries().await? {
            crate::session::PinTries::Blocked => {
                return self.pin_refused(job, crate::STEP_PIN_BLOCKED, SPONSOR_PIN_BLOCKED.to_owned()).await;
            }
            crate::session::PinTries::Left(n) => {
                self.step(job, "pin_status", format!("{n} PIN tries left")).await?
            }
            crate::session::PinTries::Verified => {
                // A PIN verified earlier on this power-up proves nothing about this holder now.
                self.link
                    .transmit("pin_status", (1, 4), &[lanyard_piv::commands::reset_pin_verification()])
                    .await?;
            }
        }

        // 4. The holder's PIN, verified on the card.
        let Some(pin) = self.link.holder_pin().await? else {
            return Err(SessionError::AgentError(
                "no PIN was given (cancelled, or the time ran out); nothing changed".into(),
            ));
        };
        let verify = lanyard_piv::commands::verify_pin(pin.expose_secret().as_bytes())
            .map_err(|_| SessionError::Engine("a card PIN has at most 8 characters".into()));
        drop(pin);
        let verify = verify?;
        let answers = self.link.transmit("verify_pin", (2, 4), &[verify]).await?;
        let sw = answers
            .first()
            .map(|r| r.sw)
            .ok_or_else(|| SessionError::Protocol("no answer to VERIFY".into()))?;
        match sw {
            s if s.is_success() => {}
            StatusWord::WrongPin { retries: 0 } | StatusWord::AuthenticationBlocked => {
                let why = format!("the PIN is wrong, and that was the last try: {SPONSOR_PIN_BLOCKED}");
                return self.pin_refused(job, crate::STEP_PIN_BLOCKED, why).await;
            }
            StatusWord::WrongPin { retries } => {
                let why = format!(
                    "the PIN is wrong: {retries} {} left",
                    if retries == 1 { "try" } else { "tries" }
                );
                return self.pin_refused(job, crate::STEP_PIN_WRONG, why).await;
            }
            other => return Err(SessionError::Engine(format!("the card answered VERIFY with {other}"))),
        }

        // 5. A fresh challenge, signed by the 9A key.
        let mut challenge = [0u8; CHALLENGE_LEN];
        aws_lc_rs::rand::fill(&mut challenge).map_err(|_| SessionError::Server("no randomness".into()))?;
        let mut template = Vec::new();
        lanyard_piv::tlv::encode(0x82, &[], &mut template);
        lanyard_piv::tlv::encode(0x81, &card_check::challenge_input(key, &challenge), &mut template);
        let sign = lanyard_piv::commands::general_authenticate(key.piv_algorithm(), 0x9A, &template);
        let answers = self
            .link
            .transmit("sign_challenge", (3, 4), &[sign, lanyard_piv::commands::reset_pin_verification()])
            .await?;
        let answer = answers
            .first()
            .ok_or_else(|| SessionError::Protocol("no answer to GENERAL AUTHENTICATE".into()))?;
        if !answer.sw.is_success() {
            return self
                .refuse(job, format!("the card would not sign with its 9A key (it answered {})", answer.sw))
                .await;
        }
        let signature = lanyard_piv::commands::parse_general_authenticate(&answer.data).and_then(|inner| {
            Ok(lanyard_piv::tlv::require(&lanyard_piv::tlv::parse_all(&inner)?, 0x82)?.to_vec())
        });
        let signature = match signature {
            Ok(s) => s,
            Err(e) => {
                return self
                    .refuse(job, format!("the card's answer to the challenge is unreadable: {e}"))
                    .await;
            }
        };
        if let Err(e) = card_check::verify_challenge(card.path.leaf(), &challenge, &signature) {
            return self.refuse(job, e.to_string()).await;
        }

        let now = self.clock.now();
        let proof = SponsorProof {
            device: card.device,
            subject: card.names.subject.clone(),
            issuer: card.path.leaf().tbs_certificate.issuer.to_string(),
            serial_hex: card.names.serial_hex.clone(),
            anchor: card.path.anchor().tbs_certificate.subject.to_string(),
            verified_at: now,
            spent: false,
        };
        proof.store(job)?;
        let note = format!(
            "{} proved possession of its 9A key (certificate serial {})",
            proof.subject, proof.serial_hex
        );
        job.record(STEP_SPONSOR_VERIFIED, StepOutcome::Done, Some(note), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(lanyard_core::model::JobState::Succeeded, now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        System::new(self.op.clone(), now).save_job(self.repo, job).await?;
        self.link.done(device.id, device.state).await
    }

    async fn step(&mut self, job: &mut Job, name: &str, detail: String) -> Result<(), SessionError> {
        let now = self.clock.now();
        job.record(name, StepOutcome::Done, Some(detail), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        System::new(self.op.clone(), now).save_job(self.repo, job).await?;
        Ok(())
    }

    /// Records the refusal and stops the session with it.
    async fn refuse(&mut self, job: &mut Job, why: String) -> Result<(), SessionError> {
        self.pin_refused(job, STEP_SPONSOR_REFUSED, why).await
    }
}

const SPONSOR_PIN_BLOCKED: &str =
    "the card's PIN is blocked; unlock it with a new PIN (Unlock PIN on the card's page) and try again";

/// The secret type the link hands the PIN over in.
pub type HolderPin = SecretString;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lanyard_core::ids::GroupId;
    use lanyard_core::model::{Email, Username};
    use proptest::prelude::*;

    fn user(name: &str, email: Option<&str>) -> User {
        let at = time::macros::datetime!(2025-03-01 10:00 UTC);
        let mut user = User::new(Username::parse(name).unwrap(), "Jane Doe", GroupId::new(), at).unwrap();
        user.email = email.map(|e| Email::parse(e).unwrap());
        user
    }

    fn names(emails: &[&str], upn: Option<&str>, cn: Option<&str>) -> CardNames {
        CardNames {
            emails: emails.iter().map(|e| (*e).to_owned()).collect(),
            upn: upn.map(str::to_owned),
            common_name: cn.map(str::to_owned),
            serial_hex: "01".into(),
            subject: "CN=whoever".into(),
            ..CardNames::default()
        }
    }

    #[test]
    fn email_matches_any_address_of_the_certificate_ignoring_case() {
        let jane = user("jdoe", Some("jane.doe@agency.test"));
        let rule = UserMatch::Email;
        assert!(rule.matches(&names(&["other@agency.test", "Jane.Doe@Agency.TEST"], None, None), &jane));
        assert!(!rule.matches(&names(&["jane.doe@elsewhere.test"], None, None), &jane));
        assert!(
            !rule.matches(&names(&[], Some("jane.doe@agency.test"), None), &jane),
            "a UPN is not an e-mail"
        );
        assert!(
            !rule.matches(&names(&["jdoe"], None, Some("jdoe")), &user("jdoe", None)),
            "a user without an address matches nothing"
        );
        assert!(
            !rule.matches(&names(&["jane.doe@agency.test.evil"], None, None), &jane),
            "whole address only"
        );
    }

    #[test]
    fn upn_email_wants_the_upn_to_be_the_users_address() {
        let jane = user("jdoe", Some("jane.doe@agency.test"));
        let rule = UserMatch::UpnEmail;
        assert!(rule.matches(&names(&[], Some("JANE.DOE@agency.test"), None), &jane));
        assert!(!rule.matches(&names(&["jane.doe@agency.test"], None, None), &jane), "no UPN, no match");
        assert!(!rule.matches(&names(&[], Some("jdoe@agency.test"), None), &jane));
        assert!(!rule.matches(&names(&[], Some("jane.doe@agency.test"), None), &user("jdoe", None)));
    }

    #[test]
    fn upn_username_wants_the_upns_local_part_to_be_the_user_name() {
        let jane = user("jdoe", Some("jane.doe@agency.test"));
        let rule = UserMatch::UpnUsername;
        assert!(rule.matches(&names(&[], Some("JDoe@corp.agency.test"), None), &jane));
        assert!(!rule.matches(&names(&[], Some("jdoe2@corp.agency.test"), None), &jane));
        assert!(!rule.matches(&names(&[], Some("jdoe"), None), &jane), "a UPN without @ names no user");
        assert!(!rule.matches(&names(&["jdoe@agency.test"], None, Some("jdoe")), &jane), "no UPN, no match");
        assert!(!rule.matches(&names(&[], Some("x@jdoe"), None), &jane), "the domain is not the user name");
    }

    #[test]
    fn cn_username_wants_the_common_name_to_be_the_user_name() {
        let jane = user("jdoe", Some("jane.doe@agency.test"));
        let rule = UserMatch::CnUsername;
        assert!(rule.matches(&names(&[], None, Some("JDOE")), &jane));
        assert!(!rule.matches(&names(&[], None, Some("Jane Doe")), &jane));
        assert!(!rule.matches(&names(&[], Some("jdoe@agency.test"), None), &jane), "no CN, no match");
        assert!(!rule.matches(&names(&[], None, Some("jdoe ")), &jane), "no trimming");
    }

    #[test]
    fn rules_are_named_as_the_configuration_spells_them() {
        for rule in [UserMatch::Email, UserMatch::UpnEmail, UserMatch::UpnUsername, UserMatch::CnUsername] {
            assert_eq!(rule.as_str().parse::<UserMatch>(), Ok(rule));
        }
        let err = "upn".parse::<UserMatch>().unwrap_err();
        assert!(err.contains("\"upn\"") && err.contains("cn-username"), "{err}");
    }

    proptest! {
        /// Whatever the configuration holds, a rule is one of the four names, or a refusal
        /// that names what was given.
        #[test]
        fn any_configured_rule_is_read_or_refused(s in "\\PC{0,16}") {
            match s.parse::<UserMatch>() {
                Ok(rule) => prop_assert_eq!(rule.as_str(), s.as_str()),
                Err(e) => prop_assert!(e.contains("is not one of")),
            }
        }
    }
}
