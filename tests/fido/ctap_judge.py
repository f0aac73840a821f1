"""python-fido2 as the judge of the virtual card's FIDO2 application.

Run by crates/lanyard/tests/fido_interop.rs with the venv of scripts/test, against a card in a
vpcd reader of a private pcscd (PCSCLITE_CSOCK_NAME names its socket). Every check is made with
python-fido2's own code: its PC/SC transport (NFCCTAP_MSG with polling), its PIN protocols, its
attestation and signature verification, its credential management and config clients.

Usage: ctap_judge.py SCENARIO READER FIDO_ROOT_PEM [ARGS...]
  full          fresh card: PIN, credentials, assertions, credential management, PIN policy
  check-pin PIN MIN_LENGTH
                the PIN on the card is PIN (a token is given) and the minimum length is MIN_LENGTH
  attest        registers a non-discoverable credential (no PIN token) and verifies its
                attestation chains to FIDO_ROOT_PEM (the test also passes another root, which
                must fail, so the chain check is known to bite)
Prints one line "OK <scenario>" at the end; any failed check raises (non-zero exit).
"""

import hashlib
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fido2.attestation import PackedAttestation, verify_x509_chain
from fido2.ctap import STATUS, CtapError
from fido2.ctap2 import ClientPin, Config, CredentialManagement, Ctap2
from fido2.ctap2.pin import PinProtocolV1, PinProtocolV2
from fido2.pcsc import CtapPcscDevice

ERR = CtapError.ERR
MC = ClientPin.PERMISSION.MAKE_CREDENTIAL
GA = ClientPin.PERMISSION.GET_ASSERTION
CM = ClientPin.PERMISSION.CREDENTIAL_MGMT
ACFG = ClientPin.PERMISSION.AUTHENTICATOR_CFG
AAGUID = "0c2e5dce-6a62-4a15-9deb-ff374f786d53"
ES256 = [{"type": "public-key", "alg": -7}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except CtapError as e:
        check(e.code == code, f"expected {code.name}, got {e.code.name}")
        return
    raise AssertionError(f"expected {code.name}, but the call succeeded")


def connect(reader):
    devices = list(CtapPcscDevice.list_devices(reader))
    check(len(devices) == 1, f"one FIDO device in {reader!r}, found {devices}")
    return Ctap2(devices[0])


class Keepalives:
    """Counts the keep-alives (9100) python-fido2's NFC transport reports."""

    def __init__(self):
        self.seen = []

    def __call__(self, status):
        self.seen.append(STATUS(status))


def register(ctap, root_der, rp, user, rk, protocol, token, exclude=None):
    cdh = hashlib.sha256(os.urandom(32)).digest()
    ka = Keepalives()
    att = ctap.make_credential(
        cdh,
        {"id": rp, "name": rp},
        user,
        ES256,
        exclude_list=exclude,
        options={"rk": rk},
        pin_uv_param=protocol.authenticate(token, cdh) if token else None,
        pin_uv_protocol=protocol.VERSION if token else None,
        on_keepalive=ka,
    )
    check(STATUS.PROCESSING in ka.seen, f"makeCredential sent no keep-alive ({ka.seen})")
    check(att.fmt == "packed", f"attestation format {att.fmt}")
    # python-fido2 verifies the packed statement (signature, certificate requirements, AAGUID).
    result = PackedAttestation().verify(att.att_stmt, att.auth_data, cdh)
    chain = list(result.trust_path) + [root_der]
    verify_x509_chain(chain)
    cert = x509.load_der_x509_certificate(result.trust_path[0])
    ou = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    check(ou == "Authenticator Attestation", f"OU {ou}")
    ad = att.auth_data
    check(str(ad.credential_data.aaguid) == AAGUID, f"AAGUID {ad.credential_data.aaguid}")
    check(ad.rp_id_hash == hashlib.sha256(rp.encode()).digest(), "rpIdHash")
    check(ad.is_user_present(), "UP in makeCredential")
    check(ad.is_user_verified() == bool(token), "UV exactly when a PIN token was used")
    return ad


def assert_ok(ctap, rp, allow, protocol, token, keys):
    cdh = hashlib.sha256(os.urandom(32)).digest()
    ka = Keepalives()
    first = ctap.get_assertion(
        rp,
        cdh,
        allow_list=allow,
        pin_uv_param=protocol.authenticate(token, cdh) if token else None,
        pin_uv_protocol=protocol.VERSION if token else None,
        on_keepalive=ka,
    )
    check(STATUS.PROCESSING in ka.seen, "getAssertion sent no keep-alive")
    answers = [first] + [ctap.get_next_assertion() for _ in range(1, first.number_of_credentials or 1)]
    for a in answers:
        key = keys[a.credential["id"]]
        # python-fido2 checks the signature over authData || clientDataHash.
        a.verify(cdh, key)
        check(a.auth_data.is_user_present(), "UP in getAssertion")
        check(a.auth_data.is_user_verified() == bool(token), "UV exactly when a PIN token was used")
    return answers


def full(reader, root_der):
    ctap = connect(reader)
    info = ctap.info
    check("FIDO_2_1" in info.versions, f"versions {info.versions}")
    check(str(info.aaguid) == AAGUID, f"AAGUID {info.aaguid}")
    check(info.options.get("clientPin") is False, "no PIN on a fresh card")
    check("uv" not in info.options, "no built-in UV")
    check(info.pin_uv_protocols == [2, 1], f"protocols {info.pin_uv_protocols}")
    check(info.min_pin_length == 4, f"min PIN length {info.min_pin_length}")
    check(info.force_pin_change is False, "forcePINChange on a fresh card")

    v2 = ClientPin(ctap)  # python-fido2 picks protocol 2
    check(isinstance(v2.protocol, PinProtocolV2), "protocol 2 chosen")
    v1 = ClientPin(ctap, PinProtocolV1())
    v2.set_pin("4821")
    ctap = Ctap2(ctap.device)  # getInfo again, on the same connection
    check(ctap.info.options["clientPin"] is True, "clientPin after setPIN")
    v2, v1 = ClientPin(ctap), ClientPin(ctap, PinProtocolV1())
    check(v2.get_pin_retries()[0] == 8, "8 tries")
    # A wrong PIN costs a try; the right one restores them.
    expect_error(ERR.PIN_INVALID, v2.get_pin_token, "9999", GA, "example.org")
    check(v2.get_pin_retries()[0] == 7, "7 tries after a wrong PIN")
    v1.get_pin_token("4821", GA, "example.org")
    check(v2.get_pin_retries()[0] == 8, "8 tries after the right PIN")

    keys = {}
    # Non-discoverable with a protocol-2 token; discoverable (two users) with protocol 1.
    token = v2.get_pin_token("4821", MC, "example.org")
    ad = register(ctap, root_der, "example.org", {"id": b"u-nr", "name": "nr"}, False, v2.protocol, token)
    nr_id = ad.credential_data.credential_id
    keys[nr_id] = ad.credential_data.public_key
    for uid, name in [(b"u-alice", "alice"), (b"u-bob", "bob")]:
        token = v1.get_pin_token("4821", MC, "example.org")
        ad = register(ctap, root_der, "example.org", {"id": uid, "name": name}, True, v1.protocol, token)
        keys[ad.credential_data.credential_id] = ad.credential_data.public_key
    # Without a PIN token: non-discoverable is allowed (makeCredUvNotRqd) and has no UV.
    ad = register(ctap, root_der, "example.com", {"id": b"u-x"}, False, None, None)
    keys[ad.credential_data.credential_id] = ad.credential_data.public_key
    # A discoverable one needs the token.
    expect_error(
        ERR.PUAT_REQUIRED,
        ctap.make_credential,
        b"\0" * 32,
        {"id": "example.org"},
        {"id": b"u-c"},
        ES256,
        options={"rk": True},
    )
    # Exclude list; other algorithms.
    token = v2.get_pin_token("4821", MC, "example.org")
    cdh = b"\1" * 32
    expect_error(
        ERR.CREDENTIAL_EXCLUDED,
        ctap.make_credential,
        cdh,
        {"id": "example.org"},
        {"id": b"u-d"},
        ES256,
        exclude_list=[{"type": "public-key", "id": nr_id}],
        pin_uv_param=v2.protocol.authenticate(token, cdh),
        pin_uv_protocol=2,
    )
    expect_error(
        ERR.UNSUPPORTED_ALGORITHM,
        ctap.make_credential,
        cdh,
        {"id": "example.org"},
        {"id": b"u-d"},
        [{"type": "public-key", "alg": -8}],
    )

    # Assertions: by allow list without UV, discoverable with UV (newest first), counter rises.
    (a,) = assert_ok(ctap, "example.org", [{"type": "public-key", "id": nr_id}], None, None, keys)
    counter = a.auth_data.counter
    token = v2.get_pin_token("4821", GA, "example.org")
    answers = assert_ok(ctap, "example.org", None, v2.protocol, token, keys)
    check(len(answers) == 2, f"{len(answers)} discoverable credentials")
    check([x.user["id"] for x in answers] == [b"u-bob", b"u-alice"], "newest first")
    check(answers[0].user.get("name") == "bob", "user name after UV")
    check(answers[0].auth_data.counter > counter, "counter rises")
    expect_error(ERR.NO_CREDENTIALS, ctap.get_assertion, "example.net", b"\0" * 32)

    # Credential management.
    token = v2.get_pin_token("4821", CM)
    cm = CredentialManagement(ctap, v2.protocol, token)
    meta = cm.get_metadata()
    check(meta[CredentialManagement.RESULT.EXISTING_CRED_COUNT] == 2, f"metadata {meta}")
    rps = cm.enumerate_rps()
    check([r[CredentialManagement.RESULT.RP]["id"] for r in rps] == ["example.org"], f"RPs {rps}")
    creds = cm.enumerate_creds(rps[0][CredentialManagement.RESULT.RP_ID_HASH])
    check(len(creds) == 2, f"{len(creds)} credentials")
    bob = [c for c in creds if c[CredentialManagement.RESULT.USER]["id"] == b"u-bob"][0]
    bob_id = bob[CredentialManagement.RESULT.CREDENTIAL_ID]
    check(
        bob[CredentialManagement.RESULT.PUBLIC_KEY] == keys[bob_id["id"]],
        "enumerated public key matches the attested one",
    )
    cm.delete_cred(bob_id)
    check(cm.get_metadata()[CredentialManagement.RESULT.EXISTING_CRED_COUNT] == 1, "one left")
    token = v2.get_pin_token("4821", GA, "example.org")
    cdh = b"\2" * 32
    expect_error(
        ERR.NO_CREDENTIALS,
        ctap.get_assertion,
        "example.org",
        cdh,
        allow_list=[bob_id],
        pin_uv_param=v2.protocol.authenticate(token, cdh),
        pin_uv_protocol=2,
    )

    # Minimum PIN length: raise it, never lower it; a PIN shorter than it is refused.
    token = v2.get_pin_token("4821", ACFG)
    Config(ctap, v2.protocol, token).set_min_pin_length(min_pin_length=6)
    ctap = Ctap2(ctap.device)
    v2 = ClientPin(ctap)
    check(ctap.info.min_pin_length == 6, "minPINLength 6")
    # The PIN (4 code points) is now shorter than the minimum, so a change is forced.
    check(ctap.info.force_pin_change is True, "a short PIN must change")
    expect_error(ERR.PIN_POLICY_VIOLATION, v2.get_pin_token, "4821", ACFG)
    expect_error(ERR.PIN_POLICY_VIOLATION, v2.change_pin, "4821", "12345")
    expect_error(ERR.PIN_POLICY_VIOLATION, v2.change_pin, "4821", "ÄÖÜäö")  # 5 code points, 10 bytes
    v2.change_pin("4821", "ÄÖÜäöü")  # 6 code points
    ctap = Ctap2(ctap.device)
    v2 = ClientPin(ctap)
    check(ctap.info.force_pin_change is False, "forcePINChange cleared")
    token = v2.get_pin_token("ÄÖÜäöü", ACFG)
    expect_error(ERR.PIN_POLICY_VIOLATION, Config(ctap, v2.protocol, token).set_min_pin_length, min_pin_length=5)

    # Forced change: no token until changePIN to a different PIN succeeds.
    token = v2.get_pin_token("ÄÖÜäöü", ACFG)
    Config(ctap, v2.protocol, token).set_min_pin_length(force_change_pin=True)
    ctap = Ctap2(ctap.device)
    v2 = ClientPin(ctap)
    check(ctap.info.force_pin_change is True, "forcePINChange set")
    expect_error(ERR.PIN_POLICY_VIOLATION, v2.get_pin_token, "ÄÖÜäöü", GA, "example.org")
    expect_error(ERR.PIN_POLICY_VIOLATION, ClientPin(ctap, PinProtocolV1()).get_pin_token, "ÄÖÜäöü")
    expect_error(ERR.PIN_POLICY_VIOLATION, v2.change_pin, "ÄÖÜäöü", "ÄÖÜäöü")
    v2.change_pin("ÄÖÜäöü", "135792")
    v2.get_pin_token("135792", GA, "example.org")
    print("OK full")


def check_pin(reader, pin, min_length):
    ctap = connect(reader)
    check(ctap.info.options.get("clientPin") is True, "a PIN is set")
    check(ctap.info.min_pin_length == min_length, f"minPINLength {ctap.info.min_pin_length} != {min_length}")
    check(ctap.info.force_pin_change is False, "no forced change pending")
    client = ClientPin(ctap)
    client.get_pin_token(pin, GA, "example.org")
    print("OK check-pin")


def attest(reader, root_der):
    ctap = connect(reader)
    register(ctap, root_der, "attest.example", {"id": b"u-attest"}, False, None, None)
    print("OK attest")


def main():
    scenario, reader, root_pem = sys.argv[1:4]
    with open(root_pem, "rb") as f:
        root_der = x509.load_pem_x509_certificate(f.read()).public_bytes(Encoding.DER)
    if scenario == "full":
        full(reader, root_der)
    elif scenario == "attest":
        attest(reader, root_der)
    elif scenario == "check-pin":
        check_pin(reader, sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
