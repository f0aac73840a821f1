//! The card: SP 800-73-4/-5 behaviour plus the YubiKey PIV extensions, reporting a 5.7-series
//! firmware version. Sans-IO: [`VirtualCard::process`] takes a command APDU and returns the
//! response; the vpcd connector and the in-process transport both call it.

use crate::attestation::{self, AttestationRoot, Statement};
use crate::fido::Authenticator;
use crate::fido::nfc::{NfcBinding, NfcReply};
use crate::fido::state::{FidoOptions, FidoState};
use crate::image::{CardImage, Counter, FORMAT, ImageError, StoredKey};
use crate::keys::{CardKey, KeyError};
use lanyard_ctap::consts::{FIDO_AID, NFC_INS_MSG, SELECT_FIDO2};
use lanyard_piv::ApduHandler;
use lanyard_piv::apdu::{Command, Response, StatusWord};
use lanyard_piv::client as ins;
use lanyard_piv::mgmkey::{DEFAULT_MANAGEMENT_KEY, ManagementKey, MgmAlgorithm};
use lanyard_piv::tlv;
use lanyard_piv::types::{KeyAlgorithm, PIV_AID, PinPolicy, Slot, TouchPolicy, tag};
use p256::ecdsa::SigningKey;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use zeroize::Zeroizing;

type Sw = StatusWord;

/// The firmware version the card reports: 5.7 unlocks AES management keys and metadata in
/// clients (yubikit's version gates).
pub const DEFAULT_VERSION: [u8; 3] = [5, 7, 2];
pub const DEFAULT_PIN: &[u8] = b"123456";
pub const DEFAULT_PUK: &[u8] = b"12345678";
const DEFAULT_PIN_TRIES: u8 = 3;
const DEFAULT_PUK_TRIES: u8 = 3;
/// The largest object the card stores (a YubiKey's limit of 3072 bytes per object).
pub const MAX_OBJECT: usize = 3072;
/// The most data a command chain may accumulate.
const MAX_CHAIN: usize = 16 * 1024;
/// Historical bytes in compact-TLV `F`-tag form naming the PIV AID, so OpenSC types the card as
/// a PIV card rather than a contactless or virtual one.
const HISTORICAL: [u8; 13] = [0x80, 0xFB, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("key in slot {slot:02X}: {source}")]
    Key { slot: u8, source: KeyError },
    #[error("attestation: {0}")]
    Attestation(#[from] attestation::AttestationError),
    #[error("card image is inconsistent: {0}")]
    Inconsistent(String),
    #[error("FIDO application: {0}")]
    Fido(#[from] crate::fido::FidoError),
}

/// Options for a factory-new card.
#[derive(Debug, Clone)]
pub struct NewCard {
    pub version: [u8; 3],
    /// The algorithm of the factory management key (bytes are always the well-known default).
    /// 3DES by default, which every client version understands; YubiKey 5.7 ships AES-192.
    pub mgm_algorithm: MgmAlgorithm,
    /// What the FIDO application offers: everything by default.
    pub fido: FidoOptions,
}

impl Default for NewCard {
    fn default() -> Self {
        Self {
            version: DEFAULT_VERSION,
            mgm_algorithm: MgmAlgorithm::TripleDes,
            fido: FidoOptions::default(),
        }
    }
}

/// The answer-to-reset: T=1, PIV AID in the historical bytes, with the check byte computed.
/// TB1 (programming voltage, deprecated since ISO 7816-3:2006) is omitted, so T0 is `Dx`: an
/// `Fx` T0 makes yubikit assume a USB YubiKey and demand a USB product id our reader lacks.
pub fn atr() -> Vec<u8> {
    let mut atr = vec![0x3B, 0xD0 | HISTORICAL.len() as u8, 0x13, 0x00, 0x81, 0x31, 0xFE, 0x15];
    atr.extend_from_slice(&HISTORICAL);
    let tck = atr[1..].iter().fold(0u8, |a, b| a ^ b);
    atr.push(tck);
    atr
}

struct SlotKey {
    key: CardKey,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
    origin: u8,
}

enum PendingAuth {
    /// Mutual authentication: the witness in the clear.
    Witness(Zeroizing<Vec<u8>>),
    /// External authentication: the challenge we sent.
    Challenge(Vec<u8>),
}

/// Yubico's management application: ykman reads the serial and firmware from it.
const MANAGEMENT_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];
const INS_READ_CONFIG: u8 = 0x1D;
/// yubikit's capability bits: PIV, and FIDO2 on cards that have the FIDO application.
const CAPABILITY_PIV: u16 = 0x0010;
const CAPABILITY_FIDO2: u16 = 0x0200;

/// The selected application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum App {
    #[default]
    Piv,
    /// Yubico's management application (device information for ykman).
    Management,
    /// The FIDO2 authenticator (CTAP over ISO 7816, as NFC readers carry it).
    Fido,
}

#[derive(Default)]
struct Session {
    app: App,
    /// The FIDO application's NFC binding (a request waiting for the client's poll).
    nfc: NfcBinding,
    pin_verified: bool,
    /// Set by a successful VERIFY, consumed by the next PIN-always key operation.
    pin_always_armed: bool,
    mgm_authenticated: bool,
    pending_auth: Option<PendingAuth>,
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    pending_response: Vec<u8>,
}

/// A software PIV card.
pub struct VirtualCard {
    img: CardImage,
    keys: BTreeMap<u8, SlotKey>,
    attestation_key: SigningKey,
    /// The FIDO2 application; `None` on cards whose image predates it.
    fido: Option<Authenticator>,
    path: Option<PathBuf>,
    session: Session,
    dirty: bool,
}

impl std::fmt::Debug for VirtualCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualCard").field("serial", &self.img.serial).field("path", &self.path).finish()
    }
}

fn pad8(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    out.resize(8, 0xFF);
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A PIV PIN is 6–8 ASCII digits padded with `FF` to 8 bytes (SP 800-73-5 part 2 §2.4.3).
fn valid_pin_format(p: &[u8]) -> bool {
    if p.len() != 8 {
        return false;
    }
    let len = p.iter().position(|b| *b == 0xFF).unwrap_or(8);
    len >= 6 && p[..len].iter().all(u8::is_ascii_digit) && p[len..].iter().all(|b| *b == 0xFF)
}

fn certificate_object(der: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    tlv::encode(0x70, der, &mut inner);
    tlv::encode(0x71, &[0x00], &mut inner);
    tlv::encode(0xFE, &[], &mut inner);
    tlv::tlv(0x53, &inner)
}

fn discovery_object() -> Vec<u8> {
    let mut inner = Vec::new();
    tlv::encode(0x4F, &PIV_AID, &mut inner);
    tlv::encode(0x5F2F, &[0x40, 0x00], &mut inner);
    tlv::tlv(0x7E, &inner)
}

fn key_name(tag: u32) -> String {
    format!("{tag:06X}")
}

fn factory_counter(value: &[u8], tries: u8) -> Counter {
    Counter { value: pad8(value), is_default: true, total: tries, left: tries }
}

impl VirtualCard {
    /// Makes the image of a factory-new card with a fresh serial and attestation key.
    pub fn new_image(
        root: &AttestationRoot,
        opts: &NewCard,
        now: SystemTime,
    ) -> Result<CardImage, CardError> {
        use p256::pkcs8::EncodePrivateKey;
        if !opts.fido.is_valid() {
            return Err(crate::fido::FidoError::Options(opts.fido.pin_protocols.clone()).into());
        }
        let serial = root.next_serial()?;
        let (att_key, att_cert) = root.issue_card_attestation(serial, now)?;
        let att_pkcs8 =
            att_key.to_pkcs8_der().map_err(|e| CardError::Inconsistent(e.to_string()))?.as_bytes().to_vec();
        let (fido_key, fido_cert) = root.fido().issue_card_attestation(serial, now)?;
        let fido_pkcs8 =
            fido_key.to_pkcs8_der().map_err(|e| CardError::Inconsistent(e.to_string()))?.as_bytes().to_vec();
        let mut img = CardImage {
            format: FORMAT,
            serial,
            version: opts.version,
            pin: factory_counter(DEFAULT_PIN, DEFAULT_PIN_TRIES),
            puk: factory_counter(DEFAULT_PUK, DEFAULT_PUK_TRIES),
            mgm_algorithm: opts.mgm_algorithm.id(),
            mgm_key: DEFAULT_MANAGEMENT_KEY.to_vec(),
            mgm_is_default: true,
            mgm_touch: false,
            factory_mgm_algorithm: opts.mgm_algorithm.id(),
            keys: BTreeMap::new(),
            objects: BTreeMap::new(),
            attestation_key: att_pkcs8,
            fido: Some(FidoState::with_options(fido_pkcs8, fido_cert, opts.fido.clone())),
        };
        img.objects.insert(key_name(tag::DISCOVERY), hex::encode(discovery_object()));
        img.objects
            .insert(key_name(tag::YUBICO_ATTESTATION_CERT), hex::encode(certificate_object(&att_cert)));
        Ok(img)
    }

    /// Opens a card from its image file; every change is written back to it.
    pub fn open(path: &Path) -> Result<Self, CardError> {
        let img = CardImage::load(path)?;
        let mut card = Self::from_image(img)?;
        card.path = Some(path.to_owned());
        Ok(card)
    }

    /// A card that lives only in memory (tests, benchmarks).
    pub fn from_image(img: CardImage) -> Result<Self, CardError> {
        use p256::pkcs8::DecodePrivateKey;
        let mut keys = BTreeMap::new();
        for (name, k) in &img.keys {
            let slot = u8::from_str_radix(name, 16)
                .map_err(|_| CardError::Inconsistent(format!("slot name {name:?}")))?;
            let alg = KeyAlgorithm::from_id(k.algorithm).ok_or_else(|| {
                CardError::Inconsistent(format!("algorithm {:02X} in slot {name}", k.algorithm))
            })?;
            let key = CardKey::from_pkcs8(alg, &k.pkcs8).map_err(|source| CardError::Key { slot, source })?;
            keys.insert(
                slot,
                SlotKey {
                    key,
                    pin_policy: PinPolicy::from_id(k.pin_policy).unwrap_or(Slot(slot).default_pin_policy()),
                    touch_policy: TouchPolicy::from_id(k.touch_policy).unwrap_or(TouchPolicy::Never),
                    origin: k.origin,
                },
            );
        }
        MgmAlgorithm::from_id(img.mgm_algorithm).map_err(|e| CardError::Inconsistent(e.to_string()))?;
        let attestation_key = SigningKey::from_pkcs8_der(&img.attestation_key)
            .map_err(|e| CardError::Inconsistent(format!("attestation key: {e}")))?;
        let fido = img.fido.clone().map(|state| Authenticator::new(state, img.version)).transpose()?;
        Ok(Self { img, keys, attestation_key, fido, path: None, session: Session::default(), dirty: false })
    }

    pub fn image(&self) -> &CardImage {
        &self.img
    }

    pub fn serial(&self) -> u32 {
        self.img.serial
    }

    /// Power cycle or warm reset: the security state is lost, the contents are not.
    pub fn reset_session(&mut self) {
        self.session = Session::default();
        if let Some(f) = self.fido.as_mut() {
            f.power_cycle();
        }
    }

    /// The FIDO2 application, if the card has one.
    pub fn fido(&mut self) -> Option<&mut Authenticator> {
        self.fido.as_mut()
    }

    /// Processes one command APDU and returns the response APDU. Never panics on any input.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        let resp = match Command::parse(raw) {
            Ok(cmd) => self.process_command(cmd),
            Err(_) => Response::status(Sw::WrongLength),
        };
        if let Some(f) = self.fido.as_mut()
            && f.take_dirty()
        {
            self.img.fido = Some(f.state().clone());
            self.dirty = true;
        }
        if self.dirty {
            self.dirty = false;
            if let Some(path) = &self.path
                && let Err(e) = self.img.save(path)
            {
                tracing::error!(error = %e, "could not save the card image");
                return Response::status(Sw::MemoryFailure).to_bytes();
            }
        }
        resp.to_bytes()
    }

    fn process_command(&mut self, cmd: Command) -> Response {
        let fido = self.session.app == App::Fido;
        // GET RESPONSE: CLA 00, and 80 too in the FIDO application (CTAP 2.1 §11.3.5).
        if cmd.ins == ins::INS_GET_RESPONSE && (cmd.cla == 0 || fido && cmd.cla == 0x80) {
            if self.session.pending_response.is_empty() {
                return Response::status(Sw::ConditionsNotSatisfied);
            }
            let rest = std::mem::take(&mut self.session.pending_response);
            return self.deliver(rest, cmd.le);
        }
        self.session.pending_response.clear();
        match cmd.cla {
            0x00 | 0x10 => {}
            // The FIDO application's proprietary class, chained as 90.
            0x80 | 0x90 if fido => {}
            0x0C | 0x1C => return Response::status(Sw::SmNotSupported),
            _ => return Response::status(Sw::ClaNotSupported),
        }
        let cmd = match self.chain(cmd) {
            Ok(Some(c)) => c,
            Ok(None) => return Response::status(Sw::Success),
            Err(sw) => return Response::status(sw),
        };
        if !(cmd.ins == ins::INS_GENERAL_AUTHENTICATE && cmd.p2 == Slot::MANAGEMENT.0) {
            self.session.pending_auth = None;
        }
        let le = cmd.le;
        if cmd.ins == ins::INS_SELECT && cmd.p1 == 0x04 && cmd.data == FIDO_AID && self.fido.is_some() {
            // Leaving PIV for another application ends its security state.
            self.session = Session { app: App::Fido, ..Session::default() };
            return self.deliver(SELECT_FIDO2.to_vec(), le);
        }
        if cmd.ins == ins::INS_SELECT && cmd.p1 == 0x04 && cmd.data == MANAGEMENT_AID {
            // Leaving PIV for another application ends its security state.
            self.session = Session { app: App::Management, ..Session::default() };
            let v = self.img.version;
            return self.deliver(
                format!("Lanyard virtual card - FW version {}.{}.{}", v[0], v[1], v[2]).into_bytes(),
                le,
            );
        }
        if self.session.app != App::Piv {
            if cmd.ins == ins::INS_SELECT {
                if cmd.p1 == 0x04 && cmd.data.len() >= 5 && PIV_AID.starts_with(&cmd.data) {
                    self.session = Session::default();
                } else {
                    // Another application stays selected (as PIV does for unknown AIDs).
                    return Response::status(Sw::NotFound);
                }
            } else if self.session.app == App::Fido {
                return self.fido_command(&cmd);
            } else if cmd.ins == INS_READ_CONFIG {
                return match self.device_info(cmd.p1) {
                    Ok(d) => self.deliver(d, le),
                    Err(sw) => Response::status(sw),
                };
            } else if cmd.ins != ins::INS_SELECT {
                return Response::status(Sw::InsNotSupported);
            }
        }
        match self.dispatch(&cmd) {
            Ok(data) => self.deliver(data, le),
            Err(sw) => Response::status(sw),
        }
    }

    /// A command of the FIDO application, through its NFC binding.
    fn fido_command(&mut self, cmd: &Command) -> Response {
        let Some(auth) = self.fido.as_mut() else { return Response::status(Sw::InsNotSupported) };
        match self.session.nfc.command(auth, cmd.cla, cmd.ins, cmd.p1, cmd.p2, &cmd.data) {
            NfcReply::Response(data) => self.deliver(data, cmd.le),
            NfcReply::KeepAlive(state) => {
                Response { data: vec![state], sw: Sw::Other(lanyard_ctap::consts::SW_KEEPALIVE) }
            }
            NfcReply::Error(sw) => Response::status(Sw::from_u16(sw)),
        }
    }

    /// Command chaining: blocks with the chaining bit (CLA 0x10, or 0x90 in the FIDO
    /// application) accumulate; the final block completes the command. A chain interrupted by a
    /// different command is dropped, so nothing half-sent takes effect.
    fn chain(&mut self, mut cmd: Command) -> Result<Option<Command>, Sw> {
        let header = (cmd.ins, cmd.p1, cmd.p2);
        let pending = self.session.chain.take();
        let mut data = match pending {
            Some((i, p1, p2, data)) if (i, p1, p2) == header => data,
            _ => Vec::new(),
        };
        if data.len() + cmd.data.len() > MAX_CHAIN {
            return Err(Sw::WrongLength);
        }
        if cmd.cla & 0x10 != 0 {
            let chainable = if self.session.app == App::Fido {
                cmd.ins == NFC_INS_MSG
            } else {
                matches!(
                    cmd.ins,
                    ins::INS_PUT_DATA
                        | ins::INS_GENERAL_AUTHENTICATE
                        | ins::INS_GENERATE
                        | ins::INS_VERIFY
                        | ins::INS_CHANGE_REFERENCE
                        | ins::INS_RESET_RETRY
                        | ins::INS_IMPORT_KEY
                )
            };
            if !chainable {
                return Err(Sw::Other(0x6884));
            }
            data.extend_from_slice(&cmd.data);
            self.session.chain = Some((header.0, header.1, header.2, data));
            return Ok(None);
        }
        if !data.is_empty() {
            data.extend_from_slice(&cmd.data);
            cmd.data = data;
        }
        Ok(Some(cmd))
    }

    /// Returns at most Le bytes (256 when absent) and keeps the rest for GET RESPONSE.
    fn deliver(&mut self, mut data: Vec<u8>, le: Option<usize>) -> Response {
        let max = le.unwrap_or(256).max(1);
        if data.len() > max {
            let rest = data.split_off(max);
            let next = if rest.len() >= 256 { 0 } else { rest.len() as u8 };
            self.session.pending_response = rest;
            return Response { data, sw: Sw::MoreData(next) };
        }
        Response { data, sw: Sw::Success }
    }

    fn dispatch(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        match cmd.ins {
            ins::INS_SELECT => self.select(cmd),
            ins::INS_GET_DATA => self.get_data(cmd),
            ins::INS_PUT_DATA => self.put_data(cmd),
            ins::INS_VERIFY => self.verify(cmd),
            ins::INS_CHANGE_REFERENCE => self.change_reference(cmd),
            ins::INS_RESET_RETRY => self.reset_retry_counter(cmd),
            ins::INS_GENERAL_AUTHENTICATE => self.general_authenticate(cmd),
            ins::INS_GENERATE => self.generate(cmd),
            ins::INS_GET_VERSION => Ok(self.img.version.to_vec()),
            ins::INS_GET_SERIAL => Ok(self.img.serial.to_be_bytes().to_vec()),
            ins::INS_GET_METADATA => self.metadata(cmd),
            ins::INS_SET_MGMKEY => self.set_management_key(cmd),
            ins::INS_IMPORT_KEY => self.import_key(cmd),
            ins::INS_ATTEST => self.attest(cmd),
            ins::INS_RESET => self.factory_reset(),
            ins::INS_SET_PIN_RETRIES => self.set_pin_retries(cmd),
            ins::INS_MOVE_KEY => self.move_key(cmd),
            _ => Err(Sw::InsNotSupported),
        }
    }

    /// READ CONFIG of the management application: a length byte, then TLVs for the supported and
    /// enabled applications (PIV, and FIDO2 when the card has it; over USB and NFC), serial, form factor and firmware.
    fn device_info(&self, page: u8) -> Result<Vec<u8>, Sw> {
        if page != 0 {
            return Err(Sw::IncorrectP1P2);
        }
        let caps = (CAPABILITY_PIV | if self.fido.is_some() { CAPABILITY_FIDO2 } else { 0 }).to_be_bytes();
        let mut t = Vec::new();
        tlv::encode(0x01, &caps, &mut t);
        tlv::encode(0x03, &caps, &mut t);
        tlv::encode(0x02, &self.img.serial.to_be_bytes(), &mut t);
        tlv::encode(0x04, &[0x00], &mut t);
        tlv::encode(0x05, &self.img.version, &mut t);
        tlv::encode(0x0D, &caps, &mut t);
        tlv::encode(0x0E, &caps, &mut t);
        tlv::encode(0x0A, &[0x00], &mut t);
        let len = u8::try_from(t.len()).map_err(|_| Sw::MemoryFailure)?;
        let mut out = vec![len];
        out.extend_from_slice(&t);
        Ok(out)
    }

    fn require_mgm(&self) -> Result<(), Sw> {
        if self.session.mgm_authenticated { Ok(()) } else { Err(Sw::SecurityStatusNotSatisfied) }
    }

    fn select(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        // Any other AID (or selection by file) is "not found", and PIV stays selected with its
        // security state (SP 800-73-5 part 2 §3.1.1). Re-selecting PIV keeps the state too.
        if cmd.p1 != 0x04 || cmd.data.len() < 5 || !PIV_AID.starts_with(&cmd.data) {
            return Err(Sw::NotFound);
        }
        let mut apt = Vec::new();
        tlv::encode(0x4F, &PIV_AID[5..], &mut apt);
        tlv::encode(0x79, &tlv::tlv(0x4F, &PIV_AID[..5]), &mut apt);
        tlv::encode(0x50, b"Lanyard Virtual PIV", &mut apt);
        let mut algs = Vec::new();
        for a in [0x03, 0x08, 0x0A, 0x0C, 0x07, 0x05, 0x11, 0x14] {
            tlv::encode(0x80, &[a], &mut algs);
        }
        tlv::encode(0x06, &[], &mut algs);
        tlv::encode(0xAC, &algs, &mut apt);
        Ok(tlv::tlv(0x61, &apt))
    }

    fn requested_tag(data: &[u8]) -> Result<u32, Sw> {
        let t = tlv::expect_single(data, 0x5C).map_err(|_| Sw::IncorrectData)?;
        if t.is_empty() || t.len() > 3 {
            return Err(Sw::IncorrectData);
        }
        Ok(t.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
    }

    fn get_data(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Sw::IncorrectP1P2);
        }
        let t = Self::requested_tag(&cmd.data)?;
        if tag::needs_pin(t) && !self.session.pin_verified {
            return Err(Sw::SecurityStatusNotSatisfied);
        }
        let stored = self.img.objects.get(&key_name(t)).ok_or(Sw::NotFound)?;
        hex::decode(stored).map_err(|_| Sw::MemoryFailure)
    }

    fn put_data(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let (first, rest) = tlv::parse_one(&cmd.data).map_err(|_| Sw::IncorrectData)?;
        let (t, object): (u32, &[u8]) = match first.tag {
            0x5C => {
                let t = Self::requested_tag(&cmd.data[..cmd.data.len() - rest.len()])?;
                let value = tlv::expect_single(rest, 0x53).map_err(|_| Sw::IncorrectData)?;
                if value.is_empty() {
                    // An empty object deletes it (YubiKey behaviour).
                    if !tag::is_known(t) {
                        return Err(Sw::NotFound);
                    }
                    self.img.objects.remove(&key_name(t));
                    self.dirty = true;
                    return Ok(Vec::new());
                }
                (t, rest)
            }
            tag::DISCOVERY | tag::BIT_GROUP_TEMPLATE if rest.is_empty() => (first.tag, &cmd.data[..]),
            _ => return Err(Sw::IncorrectData),
        };
        if !tag::is_known(t) || t == tag::DISCOVERY && first.tag != tag::DISCOVERY {
            return Err(Sw::NotFound);
        }
        if object.len() > MAX_OBJECT {
            return Err(Sw::NoMemory);
        }
        self.img.objects.insert(key_name(t), hex::encode(object));
        self.dirty = true;
        Ok(Vec::new())
    }

    fn verify(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        match cmd.p2 {
            ins::REF_PIV_PIN => {}
            0x00 | 0x96 | 0x97 | 0x98 => return Err(Sw::ReferenceNotFound),
            _ => return Err(Sw::ReferenceNotFound),
        }
        match cmd.p1 {
            0xFF if cmd.data.is_empty() => {
                self.session.pin_verified = false;
                self.session.pin_always_armed = false;
                return Ok(Vec::new());
            }
            0x00 => {}
            _ => return Err(Sw::IncorrectP1P2),
        }
        if cmd.data.is_empty() {
            return if self.img.pin.left == 0 {
                Err(Sw::AuthenticationBlocked)
            } else if self.session.pin_verified {
                Ok(Vec::new())
            } else {
                Err(Sw::WrongPin { retries: self.img.pin.left })
            };
        }
        if cmd.data.len() != 8 {
            return Err(Sw::IncorrectData);
        }
        if self.img.pin.left == 0 {
            return Err(Sw::AuthenticationBlocked);
        }
        // A value of the wrong form counts as a wrong PIN, as on a YubiKey: clients block the PIN
        // on purpose with such values before a RESET, and a card must not leak the PIN's format.
        if !ct_eq(&cmd.data, &self.img.pin.value) {
            self.session.pin_verified = false;
            self.session.pin_always_armed = false;
            self.img.pin.left -= 1;
            self.dirty = true;
            return Err(Sw::WrongPin { retries: self.img.pin.left });
        }
        if self.img.pin.left != self.img.pin.total {
            self.img.pin.left = self.img.pin.total;
            self.dirty = true;
        }
        self.session.pin_verified = true;
        self.session.pin_always_armed = true;
        Ok(Vec::new())
    }

    fn change_reference(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0x00 {
            return Err(Sw::IncorrectP1P2);
        }
        let is_pin = match cmd.p2 {
            ins::REF_PIV_PIN => true,
            ins::REF_PUK => false,
            _ => return Err(Sw::ReferenceNotFound),
        };
        if cmd.data.len() != 16 {
            return Err(Sw::IncorrectData);
        }
        let (old, new) = cmd.data.split_at(8);
        let counter = if is_pin { &mut self.img.pin } else { &mut self.img.puk };
        if counter.left == 0 {
            return Err(Sw::AuthenticationBlocked);
        }
        // A malformed new value is refused before the old one is checked: no try is used.
        if is_pin && !valid_pin_format(new) || !is_pin && new.iter().take_while(|b| **b != 0xFF).count() < 6 {
            return Err(Sw::IncorrectData);
        }
        if !ct_eq(old, &counter.value) {
            counter.left -= 1;
            self.dirty = true;
            if is_pin {
                self.session.pin_verified = false;
                self.session.pin_always_armed = false;
            }
            return Err(Sw::WrongPin { retries: counter.left });
        }
        counter.value = new.to_vec();
        counter.left = counter.total;
        counter.is_default = new == pad8(if is_pin { DEFAULT_PIN } else { DEFAULT_PUK }).as_slice();
        self.dirty = true;
        if is_pin {
            self.session.pin_verified = true;
        }
        Ok(Vec::new())
    }

    fn reset_retry_counter(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0x00 {
            return Err(Sw::IncorrectP1P2);
        }
        if cmd.p2 != ins::REF_PIV_PIN {
            return Err(Sw::ReferenceNotFound);
        }
        if cmd.data.len() != 16 {
            return Err(Sw::IncorrectData);
        }
        let (puk, new_pin) = cmd.data.split_at(8);
        if self.img.puk.left == 0 {
            return Err(Sw::AuthenticationBlocked);
        }
        if !valid_pin_format(new_pin) {
            return Err(Sw::IncorrectData);
        }
        if !ct_eq(puk, &self.img.puk.value) {
            self.img.puk.left -= 1;
            self.dirty = true;
            return Err(Sw::WrongPin { retries: self.img.puk.left });
        }
        self.img.puk.left = self.img.puk.total;
        self.img.pin.value = new_pin.to_vec();
        self.img.pin.left = self.img.pin.total;
        self.img.pin.is_default = new_pin == pad8(DEFAULT_PIN).as_slice();
        self.session.pin_verified = false;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn mgm_key(&self) -> Result<ManagementKey, Sw> {
        let alg = MgmAlgorithm::from_id(self.img.mgm_algorithm).map_err(|_| Sw::MemoryFailure)?;
        ManagementKey::new(alg, &self.img.mgm_key).map_err(|_| Sw::MemoryFailure)
    }

    fn random_block(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
        v
    }

    fn general_authenticate(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let inner = tlv::expect_single(&cmd.data, 0x7C).map_err(|_| Sw::IncorrectData)?;
        let tlvs = tlv::parse_all(inner).map_err(|_| Sw::IncorrectData)?;
        if cmd.p2 == Slot::MANAGEMENT.0 {
            // Any failed step of an authentication drops what an earlier one established.
            let r = self.authenticate_management(cmd.p1, &tlvs);
            if r.is_err() {
                self.session.mgm_authenticated = false;
            }
            return r;
        }
        let slot = Slot(cmd.p2);
        if !slot.is_key_slot() {
            return Err(Sw::IncorrectP1P2);
        }
        let alg = KeyAlgorithm::from_id(cmd.p1).ok_or(Sw::IncorrectP1P2)?;
        let sk = self.keys.get(&slot.0).ok_or(Sw::ReferenceNotFound)?;
        if sk.key.algorithm() != alg {
            return Err(Sw::IncorrectP1P2);
        }
        match sk.pin_policy {
            PinPolicy::Never => {}
            PinPolicy::Once | PinPolicy::Default if self.session.pin_verified => {}
            PinPolicy::Always if self.session.pin_verified && self.session.pin_always_armed => {}
            _ => return Err(Sw::SecurityStatusNotSatisfied),
        }
        let request = tlv::find(&tlvs, 0x82);
        if request != Some(&[][..]) {
            return Err(Sw::IncorrectData);
        }
        let result = if let Some(point) = tlv::find(&tlvs, 0x85) {
            // Key agreement belongs to key-management keys: SP 800-73 forbids it on 9A/9C/9E.
            if matches!(slot.0, 0x9A | 0x9C | 0x9E) {
                return Err(Sw::IncorrectP1P2);
            }
            sk.key.ecdh(point)?
        } else if let Some(challenge) = tlv::find(&tlvs, 0x81) {
            sk.key.private_operation(challenge)?
        } else {
            return Err(Sw::IncorrectData);
        };
        if sk.pin_policy == PinPolicy::Always {
            self.session.pin_always_armed = false;
        }
        Ok(tlv::tlv(0x7C, &tlv::tlv(0x82, &result)))
    }

    /// 9B authentication (SP 800-73-5 Appendix A): mutual (witness + challenge), external
    /// (challenge + response), or a bare challenge request used by hosts as a random source.
    fn authenticate_management(&mut self, p1: u8, tlvs: &[tlv::Tlv<'_>]) -> Result<Vec<u8>, Sw> {
        let alg = MgmAlgorithm::from_id(p1).map_err(|_| Sw::IncorrectP1P2)?;
        let key = self.mgm_key()?;
        let alg_ok = alg == key.algorithm();
        let n = alg.block_len();
        let witness = tlv::find(tlvs, 0x80);
        let challenge = tlv::find(tlvs, 0x81);
        let response = tlv::find(tlvs, 0x82);
        let pending = self.session.pending_auth.take();
        match (witness, challenge, response) {
            (Some([]), None, None) => {
                if !alg_ok {
                    return Err(Sw::IncorrectP1P2);
                }
                self.session.mgm_authenticated = false;
                let plain = Zeroizing::new(Self::random_block(n));
                let enc = key.encrypt_block(&plain).map_err(|_| Sw::MemoryFailure)?;
                self.session.pending_auth = Some(PendingAuth::Witness(plain));
                Ok(tlv::tlv(0x7C, &tlv::tlv(0x80, &enc)))
            }
            (Some(w), Some(c), None | Some([])) if !w.is_empty() => {
                let Some(PendingAuth::Witness(expected)) = pending else {
                    return Err(Sw::SecurityStatusNotSatisfied);
                };
                if !alg_ok || !ct_eq(w, &expected) {
                    self.session.mgm_authenticated = false;
                    return Err(Sw::SecurityStatusNotSatisfied);
                }
                if c.len() != n {
                    return Err(Sw::IncorrectData);
                }
                let enc = key.encrypt_block(c).map_err(|_| Sw::MemoryFailure)?;
                self.session.mgm_authenticated = true;
                Ok(tlv::tlv(0x7C, &tlv::tlv(0x82, &enc)))
            }
            (None, Some([]), None) => {
                let c = Self::random_block(n);
                if alg_ok {
                    self.session.pending_auth = Some(PendingAuth::Challenge(c.clone()));
                }
                Ok(tlv::tlv(0x7C, &tlv::tlv(0x81, &c)))
            }
            (None, None, Some(r)) if !r.is_empty() => {
                let Some(PendingAuth::Challenge(c)) = pending else {
                    return Err(Sw::SecurityStatusNotSatisfied);
                };
                let expected = key.encrypt_block(&c).map_err(|_| Sw::MemoryFailure)?;
                if alg_ok && ct_eq(r, &expected) {
                    self.session.mgm_authenticated = true;
                    Ok(Vec::new())
                } else {
                    self.session.mgm_authenticated = false;
                    Err(Sw::SecurityStatusNotSatisfied)
                }
            }
            _ => Err(Sw::IncorrectData),
        }
    }

    fn parse_policies(tlvs: &[tlv::Tlv<'_>], slot: Slot) -> Result<(PinPolicy, TouchPolicy), Sw> {
        let one = |t| match tlv::find(tlvs, t) {
            None => Ok(None),
            Some([v]) => Ok(Some(*v)),
            Some(_) => Err(Sw::IncorrectData),
        };
        let pin = match one(0xAA)? {
            None | Some(0) => slot.default_pin_policy(),
            Some(v) => PinPolicy::from_id(v).ok_or(Sw::IncorrectData)?,
        };
        let touch = match one(0xAB)? {
            None | Some(0) => TouchPolicy::Never,
            Some(v) => TouchPolicy::from_id(v).ok_or(Sw::IncorrectData)?,
        };
        Ok((pin, touch))
    }

    fn store_key(&mut self, slot: Slot, sk: SlotKey) -> Result<(), Sw> {
        let pkcs8 = sk.key.to_pkcs8().map_err(|_| Sw::MemoryFailure)?;
        self.img.keys.insert(
            format!("{:02X}", slot.0),
            StoredKey {
                algorithm: sk.key.algorithm().id(),
                pin_policy: sk.pin_policy.id(),
                touch_policy: sk.touch_policy.id(),
                origin: sk.origin,
                pkcs8,
            },
        );
        self.keys.insert(slot.0, sk);
        self.dirty = true;
        Ok(())
    }

    fn generate(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let slot = Slot(cmd.p2);
        if cmd.p1 != 0x00 || !slot.is_key_slot() {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let inner = tlv::expect_single(&cmd.data, 0xAC).map_err(|_| Sw::IncorrectData)?;
        let tlvs = tlv::parse_all(inner).map_err(|_| Sw::IncorrectData)?;
        let alg = match tlv::find(&tlvs, 0x80) {
            Some([id]) => KeyAlgorithm::from_id(*id).ok_or(Sw::IncorrectData)?,
            _ => return Err(Sw::IncorrectData),
        };
        if let Some(e) = tlv::find(&tlvs, 0x81)
            && (!alg.is_rsa() || e != [0x01, 0x00, 0x01])
        {
            return Err(Sw::IncorrectData);
        }
        let (pin_policy, touch_policy) = Self::parse_policies(&tlvs, slot)?;
        let key = CardKey::generate(alg).map_err(|_| Sw::MemoryFailure)?;
        let public = key.public_key();
        self.store_key(slot, SlotKey { key, pin_policy, touch_policy, origin: 1 })?;
        Ok(tlv::tlv(0x7F49, &public.to_inner_tlvs()))
    }

    fn metadata(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let mut out = Vec::new();
        match cmd.p2 {
            0x80 | 0x81 => {
                let c = if cmd.p2 == 0x80 { &self.img.pin } else { &self.img.puk };
                tlv::encode(0x01, &[0xFF], &mut out);
                tlv::encode(0x05, &[u8::from(c.is_default)], &mut out);
                tlv::encode(0x06, &[c.total, c.left], &mut out);
            }
            0x9B => {
                tlv::encode(0x01, &[self.img.mgm_algorithm], &mut out);
                let touch = if self.img.mgm_touch { TouchPolicy::Always } else { TouchPolicy::Never };
                tlv::encode(0x02, &[PinPolicy::Never.id(), touch.id()], &mut out);
                tlv::encode(0x05, &[u8::from(self.img.mgm_is_default)], &mut out);
            }
            0xF9 => {
                let point = self.attestation_key.verifying_key().to_encoded_point(false);
                tlv::encode(0x01, &[KeyAlgorithm::EccP256.id()], &mut out);
                tlv::encode(0x02, &[PinPolicy::Never.id(), TouchPolicy::Never.id()], &mut out);
                tlv::encode(0x03, &[2], &mut out);
                tlv::encode(0x04, &tlv::tlv(0x86, point.as_bytes()), &mut out);
            }
            s => {
                let sk = self.keys.get(&s).ok_or(Sw::ReferenceNotFound)?;
                tlv::encode(0x01, &[sk.key.algorithm().id()], &mut out);
                tlv::encode(0x02, &[sk.pin_policy.id(), sk.touch_policy.id()], &mut out);
                tlv::encode(0x03, &[sk.origin], &mut out);
                tlv::encode(0x04, &sk.key.public_key().to_inner_tlvs(), &mut out);
            }
        }
        Ok(out)
    }

    fn set_management_key(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0xFF || !matches!(cmd.p2, 0xFF | 0xFE) {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let [alg, 0x9B, len, key @ ..] = cmd.data.as_slice() else {
            return Err(Sw::IncorrectData);
        };
        let alg = MgmAlgorithm::from_id(*alg).map_err(|_| Sw::IncorrectData)?;
        if usize::from(*len) != key.len() {
            return Err(Sw::IncorrectData);
        }
        ManagementKey::new(alg, key).map_err(|_| Sw::IncorrectData)?;
        self.img.mgm_algorithm = alg.id();
        self.img.mgm_key = key.to_vec();
        self.img.mgm_is_default = key == DEFAULT_MANAGEMENT_KEY;
        self.img.mgm_touch = cmd.p2 == 0xFE;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn import_key(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let slot = Slot(cmd.p2);
        if !slot.is_key_slot() {
            return Err(Sw::IncorrectP1P2);
        }
        let alg = KeyAlgorithm::from_id(cmd.p1).ok_or(Sw::IncorrectP1P2)?;
        self.require_mgm()?;
        let tlvs = tlv::parse_all(&cmd.data).map_err(|_| Sw::IncorrectData)?;
        let parts: Vec<(u32, &[u8])> = tlvs.iter().map(|t| (t.tag, t.value)).collect();
        let key = CardKey::import(alg, &parts)?;
        let (pin_policy, touch_policy) = Self::parse_policies(&tlvs, slot)?;
        self.store_key(slot, SlotKey { key, pin_policy, touch_policy, origin: 2 })?;
        Ok(Vec::new())
    }

    fn attest(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let sk = self.keys.get(&cmd.p1).ok_or(Sw::ReferenceNotFound)?;
        if sk.origin != 1 {
            // Only keys made on the card can be attested.
            return Err(Sw::IncorrectData);
        }
        let f9_obj = self
            .img
            .objects
            .get(&key_name(tag::YUBICO_ATTESTATION_CERT))
            .ok_or(Sw::ConditionsNotSatisfied)?;
        let f9_obj = hex::decode(f9_obj).map_err(|_| Sw::MemoryFailure)?;
        let f9_der = tlv::expect_single(&f9_obj, 0x53)
            .and_then(tlv::parse_all)
            .ok()
            .and_then(|t| tlv::find(&t, 0x70).map(<[u8]>::to_vec))
            .ok_or(Sw::ConditionsNotSatisfied)?;
        let spki = sk.key.spki().map_err(|_| Sw::MemoryFailure)?;
        attestation::attest(
            Statement {
                slot: cmd.p1,
                spki,
                firmware: self.img.version,
                serial: self.img.serial,
                pin_policy: sk.pin_policy.id(),
                touch_policy: sk.touch_policy.id(),
                f9_cert_der: &f9_der,
            },
            &self.attestation_key,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "attestation failed");
            Sw::MemoryFailure
        })
    }

    fn factory_reset(&mut self) -> Result<Vec<u8>, Sw> {
        if self.img.pin.left != 0 || self.img.puk.left != 0 {
            return Err(Sw::ConditionsNotSatisfied);
        }
        self.img.pin = factory_counter(DEFAULT_PIN, DEFAULT_PIN_TRIES);
        self.img.puk = factory_counter(DEFAULT_PUK, DEFAULT_PUK_TRIES);
        self.img.mgm_algorithm = self.img.factory_mgm_algorithm;
        self.img.mgm_key = DEFAULT_MANAGEMENT_KEY.to_vec();
        self.img.mgm_is_default = true;
        self.img.mgm_touch = false;
        self.img.keys.clear();
        self.keys.clear();
        let attestation = self.img.objects.remove(&key_name(tag::YUBICO_ATTESTATION_CERT));
        self.img.objects.clear();
        self.img.objects.insert(key_name(tag::DISCOVERY), hex::encode(discovery_object()));
        if let Some(a) = attestation {
            self.img.objects.insert(key_name(tag::YUBICO_ATTESTATION_CERT), a);
        }
        self.session = Session::default();
        self.dirty = true;
        Ok(Vec::new())
    }

    fn set_pin_retries(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if !(self.session.mgm_authenticated && self.session.pin_verified) {
            return Err(Sw::SecurityStatusNotSatisfied);
        }
        // The status word reports at most 15 tries; 800-73-5 caps the PIN at 10, which the
        // server's policy enforces for cards it issues.
        if !(1..=15).contains(&cmd.p1) || !(1..=15).contains(&cmd.p2) {
            return Err(Sw::IncorrectP1P2);
        }
        self.img.pin = factory_counter(DEFAULT_PIN, cmd.p1);
        self.img.puk = factory_counter(DEFAULT_PUK, cmd.p2);
        self.session.pin_verified = false;
        self.session.pin_always_armed = false;
        self.dirty = true;
        Ok(Vec::new())
    }

    fn move_key(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        let (to, from) = (cmd.p1, Slot(cmd.p2));
        if !from.is_key_slot() || to != 0xFF && !Slot(to).is_key_slot() {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let sk = self.keys.remove(&from.0).ok_or(Sw::ReferenceNotFound)?;
        let stored = self.img.keys.remove(&format!("{:02X}", from.0));
        self.dirty = true;
        if to != 0xFF {
            self.keys.insert(to, sk);
            if let Some(s) = stored {
                self.img.keys.insert(format!("{to:02X}"), s);
            }
        }
        Ok(Vec::new())
    }
}

impl ApduHandler for VirtualCard {
    fn handle(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.process(apdu)
    }
}
