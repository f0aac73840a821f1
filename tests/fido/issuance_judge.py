"""python-fido2 as the judge of the FIDO PIN that Lanyard's issuance left on a key.

Run by crates/lanyard/tests/interop.rs with the venv of scripts/test, against the virtual card in
a vpcd reader of pcscd. Every check goes through python-fido2's own PC/SC transport and PIN
protocol code.

Usage: issuance_judge.py SCENARIO READER ARGS...
  pin READER PIN MIN_LENGTH OTHER
        the key's PIN is PIN: a token is given for it and refused for OTHER; the minimum PIN
        length is MIN_LENGTH; no change is forced
  forced READER PIN MIN_LENGTH NEW
        the key's PIN is PIN with forcePINChange: no token for it until it is changed; a new PIN
        shorter than MIN_LENGTH is refused; after changePIN to NEW a token is given for NEW
Prints one line "OK <scenario>" at the end; any failed check raises (non-zero exit).
"""

import sys

from fido2.ctap import CtapError
from fido2.ctap2 import ClientPin, Ctap2
from fido2.pcsc import CtapPcscDevice

ERR = CtapError.ERR
GA = ClientPin.PERMISSION.GET_ASSERTION


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(code, fn, *args):
    try:
        fn(*args)
    except CtapError as e:
        check(e.code == code, f"expected {code.name}, got {e.code.name}")
        return
    raise AssertionError(f"expected {code.name}, but the call succeeded")


def connect(reader):
    devices = list(CtapPcscDevice.list_devices(reader))
    check(len(devices) == 1, f"one FIDO device in {reader!r}, found {devices}")
    return Ctap2(devices[0])


def pin(reader, value, min_length, other):
    ctap = connect(reader)
    check(ctap.info.options.get("clientPin") is True, "a PIN is set")
    check(ctap.info.min_pin_length == min_length, f"minPINLength {ctap.info.min_pin_length} != {min_length}")
    check(not ctap.info.force_pin_change, "no forced change pending")
    client = ClientPin(ctap)
    expect_error(ERR.PIN_INVALID, client.get_pin_token, other, GA, "example.org")
    client.get_pin_token(value, GA, "example.org")
    print("OK pin")


def forced(reader, value, min_length, new):
    ctap = connect(reader)
    check(ctap.info.options.get("clientPin") is True, "a PIN is set")
    check(ctap.info.force_pin_change is True, "forcePINChange is set")
    check(ctap.info.min_pin_length == min_length, f"minPINLength {ctap.info.min_pin_length} != {min_length}")
    client = ClientPin(ctap)
    expect_error(ERR.PIN_POLICY_VIOLATION, client.get_pin_token, value, GA, "example.org")
    expect_error(ERR.PIN_POLICY_VIOLATION, client.change_pin, value, "7" * (min_length - 1))
    client.change_pin(value, new)
    ctap = connect(reader)
    check(not ctap.info.force_pin_change, "the forced change is over")
    ClientPin(ctap).get_pin_token(new, GA, "example.org")
    print("OK forced")


def main():
    scenario, reader = sys.argv[1:3]
    if scenario == "pin":
        pin(reader, sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif scenario == "forced":
        forced(reader, sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
