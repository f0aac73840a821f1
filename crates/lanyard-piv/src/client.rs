//! The PIV command set, driven over any [`CardTransport`]. Chaining is handled here: long data
//! goes out in 255-byte blocks with CLA 0x10, and `61xx` responses are collected with GET
//! RESPONSE, so callers deal in whole objects.

use crate::PivError;
use crate::apdu::{Command, Response, StatusWord};
use crate::commands;
use crate::mgmkey::{ManagementKey, MgmAlgorithm};
use crate::tlv;
use crate::transport::CardTransport;
use crate::types::{KeyAlgorithm, PinPolicy, PublicKey, Slot, TouchPolicy};
use zeroize::Zeroizing;

pub use crate::commands::{
    ApplicationProperties, INS_ATTEST, INS_CHANGE_REFERENCE, INS_GENERAL_AUTHENTICATE, INS_GENERATE,
    INS_GET_DATA, INS_GET_METADATA, INS_GET_RESPONSE, INS_GET_SERIAL, INS_GET_VERSION, INS_IMPORT_KEY,
    INS_MOVE_KEY, INS_PUT_DATA, INS_RESET, INS_RESET_RETRY, INS_SELECT, INS_SET_MGMKEY, INS_SET_PIN_RETRIES,
    INS_VERIFY, Metadata, REF_PIV_PIN, REF_PUK, Version, pad_pin,
};

/// Private key material for IMPORT KEY.
pub enum ImportKey<'a> {
    /// CRT parts, each half the modulus length (public exponent 65537).
    Rsa { p: &'a [u8], q: &'a [u8], dp: &'a [u8], dq: &'a [u8], qinv: &'a [u8] },
    /// The private scalar, field-size bytes.
    Ec { scalar: &'a [u8] },
}

/// A session with the PIV application of one card.
pub struct Piv<T: CardTransport> {
    transport: T,
    /// Number of APDUs sent, for benchmarks and round-trip budgets.
    round_trips: u64,
}

impl<T: CardTransport> Piv<T> {
    pub fn new(transport: T) -> Self {
        Self { transport, round_trips: 0 }
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn into_transport(self) -> T {
        self.transport
    }

    /// APDUs sent so far (each chaining block and GET RESPONSE counts).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    fn raw(&mut self, cmd: &Command) -> Result<Response, PivError> {
        let bytes = cmd.to_bytes()?;
        self.round_trips += 1;
        let resp = self.transport.transmit(&bytes)?;
        Ok(Response::parse(&resp)?)
    }

    /// Sends a command with command chaining for data over 255 bytes and collects `61xx`
    /// continuations. Returns the whole response whatever its status word.
    pub fn exchange(&mut self, cmd: &Command) -> Result<Response, PivError> {
        let mut chunks = cmd.data.chunks(255).peekable();
        let mut resp = if cmd.data.len() <= 255 {
            self.raw(cmd)?
        } else {
            loop {
                let Some(chunk) = chunks.next() else {
                    return Err(PivError::InvalidArgument("empty chain"));
                };
                let last = chunks.peek().is_none();
                let block = Command {
                    cla: if last { cmd.cla } else { cmd.cla | 0x10 },
                    ins: cmd.ins,
                    p1: cmd.p1,
                    p2: cmd.p2,
                    data: chunk.to_vec(),
                    le: if last { cmd.le } else { None },
                };
                let r = self.raw(&block)?;
                if last || !r.sw.is_success() {
                    break r;
                }
            }
        };
        let mut data = std::mem::take(&mut resp.data);
        let mut guard = 0;
        loop {
            match resp.sw {
                StatusWord::MoreData(n) => {
                    guard += 1;
                    if guard > 1024 {
                        return Err(PivError::Malformed("card sent an endless 61xx chain"));
                    }
                    let le = if n == 0 { 256 } else { usize::from(n) };
                    resp = self.raw(&Command::new(0x00, INS_GET_RESPONSE, 0, 0).with_le(le))?;
                    data.extend_from_slice(&resp.data);
                }
                StatusWord::WrongLe(n) if guard == 0 => {
                    // The card wants a different Le: repeat the final block with it.
                    guard += 1;
                    let mut again = cmd.clone();
                    again.le = Some(if n == 0 { 256 } else { usize::from(n) });
                    if cmd.data.len() > 255 {
                        return Err(PivError::Status(resp.sw));
                    }
                    resp = self.raw(&again)?;
                    data = std::mem::take(&mut resp.data);
                }
                _ => break,
            }
        }
        Ok(Response { data, sw: resp.sw })
    }

    /// Like [`exchange`](Self::exchange) but anything except `9000` is an error.
    pub fn call(&mut self, cmd: &Command) -> Result<Vec<u8>, PivError> {
        let resp = self.exchange(cmd)?;
        if resp.sw.is_success() { Ok(resp.data) } else { Err(PivError::Status(resp.sw)) }
    }

    /// SELECT the PIV application and parse its property template.
    pub fn select(&mut self) -> Result<ApplicationProperties, PivError> {
        commands::parse_select(&self.call(&commands::select())?)
    }

    /// GET DATA: returns the object's stored bytes (`53 …` wrapper included, or the raw `7E …` /
    /// `7F61 …` template for discovery and BIT).
    pub fn get_data(&mut self, tag: u32) -> Result<Vec<u8>, PivError> {
        self.call(&commands::get_data(tag))
    }

    /// GET DATA returning `None` for an absent object (`6A82`).
    pub fn try_get_data(&mut self, tag: u32) -> Result<Option<Vec<u8>>, PivError> {
        match self.get_data(tag) {
            Ok(v) => Ok(Some(v)),
            Err(PivError::Status(StatusWord::NotFound)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// PUT DATA of a complete object (`53 …`, or the raw discovery/BIT template). An empty
    /// `53 00` deletes the object.
    pub fn put_data(&mut self, tag: u32, object: &[u8]) -> Result<(), PivError> {
        self.call(&commands::put_data(tag, object)).map(drop)
    }

    fn verify_result(&mut self, cmd: &Command, what: &'static str) -> Result<(), PivError> {
        let resp = self.exchange(cmd)?;
        match resp.sw {
            StatusWord::Success => Ok(()),
            StatusWord::WrongPin { retries } => Err(PivError::WrongPin { what, retries }),
            StatusWord::AuthenticationBlocked => Err(PivError::Blocked(what)),
            sw => Err(PivError::Status(sw)),
        }
    }

    /// VERIFY the PIV PIN.
    pub fn verify_pin(&mut self, pin: &[u8]) -> Result<(), PivError> {
        self.verify_result(&commands::verify_pin(pin)?, "PIN")
    }

    /// VERIFY with no data: `Ok(None)` when the PIN is already verified, otherwise the tries left.
    pub fn pin_status(&mut self) -> Result<Option<u8>, PivError> {
        let resp = self.exchange(&commands::pin_status())?;
        match resp.sw {
            StatusWord::Success => Ok(None),
            StatusWord::WrongPin { retries } => Ok(Some(retries)),
            StatusWord::AuthenticationBlocked => Ok(Some(0)),
            sw => Err(PivError::Status(sw)),
        }
    }

    /// VERIFY with P1=FF: drops PIN verification, counter unchanged.
    pub fn reset_pin_verification(&mut self) -> Result<(), PivError> {
        self.call(&commands::reset_pin_verification()).map(drop)
    }

    /// CHANGE REFERENCE DATA for the PIN (`puk == false`) or the PUK.
    pub fn change_reference(&mut self, puk: bool, old: &[u8], new: &[u8]) -> Result<(), PivError> {
        let what = if puk { "PUK" } else { "PIN" };
        self.verify_result(&commands::change_reference(puk, old, new)?, what)
    }

    /// RESET RETRY COUNTER: unblocks the PIN with the PUK and sets a new PIN.
    pub fn unblock_pin(&mut self, puk: &[u8], new_pin: &[u8]) -> Result<(), PivError> {
        self.verify_result(&commands::unblock_pin(puk, new_pin)?, "PUK")
    }

    fn general_authenticate(&mut self, alg: u8, key: u8, template: &[u8]) -> Result<Vec<u8>, PivError> {
        commands::parse_general_authenticate(&self.call(&commands::general_authenticate(alg, key, template))?)
    }

    /// Mutual authentication with the management key (SP 800-73 App. A.2): the host proves the
    /// key by decrypting the card's witness, and the card proves it by encrypting our challenge.
    pub fn authenticate_mutual(&mut self, key: &ManagementKey) -> Result<(), PivError> {
        let witness = self.call(&commands::mutual_auth_witness(key.algorithm()))?;
        let mut challenge = vec![0u8; key.algorithm().block_len()];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut challenge);
        let resp = self.call(&commands::mutual_auth_response(key, &witness, &challenge)?)?;
        commands::check_mutual_auth(key, &challenge, &resp)
    }

    /// External authentication of the host with the management key (SP 800-73 App. A.1).
    pub fn authenticate_external(&mut self, key: &ManagementKey) -> Result<(), PivError> {
        let alg = key.algorithm();
        let resp = self.general_authenticate(alg.id(), Slot::MANAGEMENT.0, &[0x81, 0x00])?;
        let tlvs = tlv::parse_all(&resp)?;
        let challenge = tlv::require(&tlvs, 0x81)?;
        let response = key.encrypt_block(challenge)?;
        let t = tlv::tlv(0x82, &response);
        let data = tlv::tlv(0x7C, &t);
        self.call(&Command::new(0, INS_GENERAL_AUTHENTICATE, alg.id(), Slot::MANAGEMENT.0).with_data(data))
            .map(drop)
    }

    /// A random challenge from the card (OpenSC uses this as an RNG).
    pub fn get_challenge(&mut self, alg: MgmAlgorithm) -> Result<Vec<u8>, PivError> {
        let resp = self.general_authenticate(alg.id(), Slot::MANAGEMENT.0, &[0x81, 0x00])?;
        Ok(tlv::require(&tlv::parse_all(&resp)?, 0x81)?.to_vec())
    }

    /// Signs with a key on the card. RSA: `input` is a modulus-size block the caller has padded.
    /// ECDSA: `input` is the hash; the card returns a DER `SEQUENCE { r, s }`.
    pub fn sign(&mut self, slot: Slot, alg: KeyAlgorithm, input: &[u8]) -> Result<Vec<u8>, PivError> {
        let mut t = Vec::new();
        tlv::encode(0x82, &[], &mut t);
        tlv::encode(0x81, input, &mut t);
        let resp = self.general_authenticate(alg.id(), slot.0, &t)?;
        Ok(tlv::require(&tlv::parse_all(&resp)?, 0x82)?.to_vec())
    }

    /// RSA decipher: returns the padded encoded message; the caller strips the padding.
    pub fn decipher(
        &mut self,
        slot: Slot,
        alg: KeyAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, PivError> {
        self.sign(slot, alg, ciphertext)
    }

    /// ECDH with the key in `slot`: returns the shared secret (x-coordinate).
    pub fn ecdh(&mut self, slot: Slot, alg: KeyAlgorithm, peer_point: &[u8]) -> Result<Vec<u8>, PivError> {
        let mut t = Vec::new();
        tlv::encode(0x82, &[], &mut t);
        tlv::encode(0x85, peer_point, &mut t);
        let resp = self.general_authenticate(alg.id(), slot.0, &t)?;
        Ok(tlv::require(&tlv::parse_all(&resp)?, 0x82)?.to_vec())
    }

    /// GENERATE ASYMMETRIC KEY PAIR on the card. Policies are YubiKey extensions; pass `None` for
    /// a plain PIV card.
    pub fn generate(
        &mut self,
        slot: Slot,
        alg: KeyAlgorithm,
        pin_policy: Option<PinPolicy>,
        touch_policy: Option<TouchPolicy>,
    ) -> Result<PublicKey, PivError> {
        let resp = self.call(&commands::generate(slot, alg, pin_policy, touch_policy))?;
        commands::parse_generate(alg, &resp)
    }

    // ---- YubiKey extensions ----

    pub fn get_version(&mut self) -> Result<Version, PivError> {
        commands::parse_version(&self.call(&commands::get_version())?)
    }

    pub fn get_serial(&mut self) -> Result<u32, PivError> {
        commands::parse_serial(&self.call(&commands::get_serial())?)
    }

    pub fn get_metadata(&mut self, slot: u8) -> Result<Metadata, PivError> {
        commands::parse_metadata(&self.call(&commands::get_metadata(slot))?)
    }

    /// SET MANAGEMENT KEY (needs the current key authenticated).
    pub fn set_management_key(&mut self, key: &ManagementKey, require_touch: bool) -> Result<(), PivError> {
        self.call(&commands::set_management_key(key, require_touch)).map(drop)
    }

    /// IMPORT KEY into a slot (needs the management key).
    pub fn import_key(
        &mut self,
        slot: Slot,
        alg: KeyAlgorithm,
        key: ImportKey<'_>,
        pin_policy: Option<PinPolicy>,
        touch_policy: Option<TouchPolicy>,
    ) -> Result<(), PivError> {
        let mut data = Zeroizing::new(Vec::new());
        match key {
            ImportKey::Rsa { p, q, dp, dq, qinv } => {
                for (tag, v) in [(0x01, p), (0x02, q), (0x03, dp), (0x04, dq), (0x05, qinv)] {
                    tlv::encode(tag, v, &mut data);
                }
            }
            ImportKey::Ec { scalar } => tlv::encode(0x06, scalar, &mut data),
        }
        if let Some(p) = pin_policy {
            tlv::encode(0xAA, &[p.id()], &mut data);
        }
        if let Some(p) = touch_policy {
            tlv::encode(0xAB, &[p.id()], &mut data);
        }
        self.call(&Command::new(0, INS_IMPORT_KEY, alg.id(), slot.0).with_data(data.to_vec())).map(drop)
    }

    /// ATTEST: a certificate for the key in `slot`, signed by the card's attestation key (F9).
    pub fn attest(&mut self, slot: Slot) -> Result<Vec<u8>, PivError> {
        self.call(&commands::attest(slot))
    }

    /// SET PIN RETRIES (needs the management key and the PIN); resets PIN and PUK to defaults.
    pub fn set_pin_retries(&mut self, pin_tries: u8, puk_tries: u8) -> Result<(), PivError> {
        self.call(&commands::set_pin_retries(pin_tries, puk_tries)).map(drop)
    }

    /// RESET the PIV application to factory state (the PIN and PUK must both be blocked).
    pub fn reset(&mut self) -> Result<(), PivError> {
        self.call(&commands::reset()).map(drop)
    }

    /// MOVE KEY from one slot to another, or delete it with `to = 0xFF` (YubiKey 5.7).
    pub fn move_key(&mut self, from: Slot, to: u8) -> Result<(), PivError> {
        self.call(&commands::move_key(from, to)).map(drop)
    }

    /// Blocks the PIN and then the PUK with deliberately wrong values, as a RESET requires.
    pub fn block_pin_and_puk(&mut self) -> Result<(), PivError> {
        for _ in 0..16 {
            match self.verify_pin(b"\x00\x00\x00\x00\x00\x00\x00\x00") {
                Err(PivError::Blocked(_)) => break,
                Err(PivError::WrongPin { .. }) | Ok(()) => continue,
                Err(e) => return Err(e),
            }
        }
        for _ in 0..16 {
            match self.unblock_pin(b"\x00\x00\x00\x00\x00\x00\x00\x00", b"000000") {
                Err(PivError::Blocked(_)) => return Ok(()),
                Err(PivError::WrongPin { .. }) | Ok(()) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(PivError::Malformed("PUK did not block after 16 wrong tries"))
    }
}
