"""Drives Lanyard's SCEP endpoint with pyscep (PyPI `pyscep`), a SCEP client Lanyard did not write.

Usage:
  pyscep_client.py enrol URL CHALLENGE OUT_DIR
      PKCSReq: a new RSA-2048 key, a self-signed certificate and a CSR carrying CHALLENGE, all
      made by pyscep; writes OUT_DIR/key.pem, OUT_DIR/issued.pem and prints "SUCCESS", or
      "FAILURE <failInfo>" and exits 3.
  pyscep_client.py getcert URL OUT_DIR SERIAL_HEX
      GetCert for SERIAL_HEX, signed with OUT_DIR/issued.pem and its key; writes OUT_DIR/got.pem.
  pyscep_client.py getcrl URL OUT_DIR
      GetCRL, signed the same way; writes OUT_DIR/crl.der.

HTTPS is checked against the file REQUESTS_CA_BUNDLE names (Lanyard's root).

pyscep's own `Client.get_ca_certs` picks the certificate to encrypt to by key usage: one with
keyEncipherment and *without* digitalSignature, else the first CA certificate. Lanyard's RA
certificate carries both usages (iOS refuses an RA without digitalSignature) and its CA keys are
EC, so that rule would pick a key RSA key transport cannot use. This script therefore reads
GetCACert itself and gives pyscep the RSA RA certificate as recipient and as the expected signer
of the replies; everything else (capabilities, CSR, envelope, signed PKIMessage, reading and
decrypting the CertRep) is pyscep's own code, through `Client._pki_operation`.
"""

import os
import sys

from asn1crypto.cms import IssuerAndSerialNumber
from scep.Client.client import Client
from scep.Client.certificate import Certificate
from scep.Client.cryptoutils import hex_digest_for_data
from scep.Client.enums import MessageType, PKIStatus
from scep.Client.envelope import PKCSPKIEnvelopeBuilder
from scep.Client.message import SCEPMessage
from scep.Client.privatekey import PrivateKey
from scep.Client.signingrequest import SigningRequest

import requests


class RaCertificates:
    """The two certificates `Client._pki_operation` asks its `ca_certs` for."""

    def __init__(self, ra):
        self.recipient = ra
        self.signer = ra


def ra_and_issuer(url):
    res = requests.get(url, params={"operation": "GetCACert"})
    res.raise_for_status()
    if res.headers["content-type"] != "application/x-x509-ca-ra-cert":
        raise SystemExit("GetCACert answered " + res.headers["content-type"])
    certs = SCEPMessage.parse(res.content).certificates
    rsa = [c for c in certs if c.public_key.to_asn1_public_key().algorithm == "rsa" and not c.is_ca]
    if len(rsa) != 1:
        raise SystemExit("expected one RSA RA certificate in GetCACert, found %d" % len(rsa))
    ra = rsa[0]
    issuers = [c for c in certs if c.is_ca and c.subject == ra.issuer]
    if len(issuers) != 1:
        raise SystemExit("the RA certificate's issuer is not in GetCACert")
    return ra, issuers[0]


def report(status):
    if status.status == PKIStatus.FAILURE:
        print("FAILURE %s" % status.fail_info.value)
        sys.exit(3)
    if status.status != PKIStatus.SUCCESS:
        print("status %s" % status.status)
        sys.exit(4)
    print("SUCCESS")


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def enrol(url, challenge, out):
    client = Client(url)
    caps = client.get_ca_capabilities()
    ra, _ = ra_and_issuer(url)
    identity, key = SigningRequest.generate_self_signed(
        cn="pyscep", key_usage={"digital_signature", "key_encipherment"}
    )
    csr, _ = SigningRequest.generate_csr(
        cn="pyscep phone",
        key_usage={"digital_signature", "key_encipherment"},
        password=challenge,
        private_key=key,
    )
    envelope = PKCSPKIEnvelopeBuilder().encrypt(csr.to_der(), caps.strongest_cipher())
    transaction = hex_digest_for_data(data=csr.public_key.to_der(), algorithm="sha1")
    status = client._pki_operation(
        identity=identity,
        identity_private_key=key,
        envelope=envelope,
        message_type=MessageType.PKCSReq,
        cacaps=caps,
        ca_certs=RaCertificates(ra),
        transaction_id=transaction,
    )
    if status.status == PKIStatus.SUCCESS:
        write(os.path.join(out, "key.pem"), key.to_pem())
        write(os.path.join(out, "issued.pem"), status.certificates[0].to_pem())
    report(status)


def signed_request(url, out, message_type, serial):
    client = Client(url)
    caps = client.get_ca_capabilities()
    ra, issuer = ra_and_issuer(url)
    identity = Certificate.from_pem_file(os.path.join(out, "issued.pem"))
    key = PrivateKey.from_pem_file(os.path.join(out, "key.pem"))
    ias = IssuerAndSerialNumber({"issuer": issuer.subject, "serial_number": serial})
    envelope = PKCSPKIEnvelopeBuilder().encrypt(ias.dump(), caps.strongest_cipher())
    return client._pki_operation(
        identity=identity,
        identity_private_key=key,
        envelope=envelope,
        message_type=message_type,
        cacaps=caps,
        ca_certs=RaCertificates(ra),
        transaction_id="pyscep-%s-%x" % (message_type.name, serial),
    )


def main(argv):
    if len(argv) == 5 and argv[1] == "enrol":
        enrol(argv[2], argv[3], argv[4])
    elif len(argv) == 5 and argv[1] == "getcert":
        status = signed_request(argv[2], argv[3], MessageType.GetCert, int(argv[4], 16))
        if status.status == PKIStatus.SUCCESS:
            write(os.path.join(argv[3], "got.pem"), status.certificates[0].to_pem())
        report(status)
    elif len(argv) == 4 and argv[1] == "getcrl":
        identity = Certificate.from_pem_file(os.path.join(argv[3], "issued.pem"))
        status = signed_request(argv[2], argv[3], MessageType.GetCRL, identity.serial_number)
        if status.status == PKIStatus.SUCCESS:
            write(os.path.join(argv[3], "crl.der"), status.crl.to_der())
        report(status)
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
