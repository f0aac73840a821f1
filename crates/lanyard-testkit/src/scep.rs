//! A SCEP client made of `openssl` commands, for tests of Lanyard's SCEP server.
//!
//! The key, the self-signed certificate, the PKCS#10 request with its challengePassword and the
//! EnvelopedData (`openssl cms -encrypt -stream`, indefinite-length BER with the ciphertext in
//! chunks, as Apple devices send it) all come from openssl, and so does the signature. `openssl
//! cms -sign` cannot add SCEP's signed attributes (messageType, transactionID, senderNonce), so the
//! signed attributes and the outer SignedData are assembled here, byte by byte, also in
//! indefinite-length BER, and signed with `openssl dgst -sign`. Replies are read back with
//! `openssl cms -verify`, `openssl cms -decrypt` and `openssl cms -cmsout -print`, never with
//! Lanyard's own parser.

use std::path::{Path, PathBuf};

use crate::tools::{command, openssl_in};

/// A client identity in a directory of its own: `key.pem`, `self.pem` (self-signed).
#[derive(Debug)]
pub struct OpensslScepClient {
    pub dir: PathBuf,
}

/// What the server answered, as openssl reads it.
#[derive(Debug, Clone)]
pub struct CertRepView {
    /// pkiStatus: "0" SUCCESS, "2" FAILURE, "3" PENDING.
    pub status: String,
    /// failInfo, on FAILURE.
    pub fail_info: Option<String>,
    /// recipientNonce, hex.
    pub recipient_nonce: String,
    /// transactionID.
    pub transaction_id: String,
    /// The certificates of a SUCCESS (PEM, as `openssl pkcs7 -print_certs` prints them).
    pub certificates_pem: String,
    /// `openssl cms -cmsout -print` of the reply, for failure messages.
    pub printed: String,
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// An indefinite-length constructed element.
fn indefinite(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![tag, 0x80];
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// The value and the rest after the first DER TLV of `der`.
fn split(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, header) = if der[1] < 0x80 {
        (usize::from(der[1]), 2)
    } else {
        let n = usize::from(der[1] & 0x7f);
        (der[2..2 + n].iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)), 2 + n)
    };
    (tag, &der[header..header + len], &der[header + len..])
}

fn full_tlv(der: &[u8]) -> &[u8] {
    let (_, value, rest) = split(der);
    let _ = value;
    &der[..der.len() - rest.len()]
}

/// issuer Name and serial INTEGER TLVs of a DER certificate.
fn issuer_and_serial(cert: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (issuer, serial, _) = names_and_serial(cert);
    (issuer, serial)
}

/// issuer Name, serial INTEGER and subject Name TLVs of a DER certificate.
fn names_and_serial(cert: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (_, c, _) = split(cert);
    let (_, mut tbs, _) = split(c);
    if tbs[0] == 0xa0 {
        tbs = split(tbs).2;
    }
    let serial = full_tlv(tbs).to_vec();
    let after_serial = split(tbs).2;
    let after_alg = split(after_serial).2;
    let issuer = full_tlv(after_alg).to_vec();
    let after_issuer = split(after_alg).2;
    let after_validity = split(after_issuer).2;
    let subject = full_tlv(after_validity).to_vec();
    (issuer, serial, subject)
}

const OID_DATA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_CONTENT_TYPE: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_MESSAGE_DIGEST: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_SHA256: &[u8] = &[0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA1: &[u8] = &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// 2.16.840.1.113733.1.9.<n>
fn scep_oid(n: u8) -> Vec<u8> {
    vec![0x06, 0x0a, 0x60, 0x86, 0x48, 0x01, 0x86, 0xf8, 0x45, 0x01, 0x09, n]
}

fn attribute(oid: &[u8], value: &[u8]) -> Vec<u8> {
    tlv(0x30, &[oid, &tlv(0x31, value)].concat())
}

impl OpensslScepClient {
    /// A fresh RSA-2048 key and a self-signed certificate in `dir`.
    pub fn new(dir: &Path, common_name: &str) -> Self {
        Self::create(dir, common_name, None)
    }

    /// Like [`OpensslScepClient::new`], with the self-signed certificate's serial number set to
    /// `serial_hex`: certmonger's carry 32 bytes, more than the 20 RFC 5280 allows a CA.
    pub fn with_serial(dir: &Path, common_name: &str, serial_hex: &str) -> Self {
        Self::create(dir, common_name, Some(serial_hex))
    }

    fn create(dir: &Path, common_name: &str, serial_hex: Option<&str>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let subject = format!("/CN={common_name}");
        let mut args = vec![
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "self.pem",
            "-days", "1", "-subj", &subject,
        ];
        let serial = serial_hex.map(|s| format!("0x{s}"));
        if let Some(serial) = &serial {
            args.extend(["-set_serial", serial.as_str()]);
        }
        openssl_in(Some(dir), &args);
        OpensslScepClient { dir: dir.to_owned() }
    }

    /// The DER of the certificate in the PEM file `cert` (relative to the client's directory or
    /// absolute).
    fn cert_der(&self, cert: &str) -> Vec<u8> {
        openssl_in(Some(&self.dir), &["x509", "-in", cert, "-outform", "DER", "-out", "named.der"]);
        std::fs::read(self.dir.join("named.der")).unwrap()
    }

    /// IssuerAndSerialNumber (DER) of the certificate in `cert`: the content of GetCert and
    /// GetCRL.
    pub fn issuer_and_serial(&self, cert: &str) -> Vec<u8> {
        let (issuer, serial) = issuer_and_serial(&self.cert_der(cert));
        tlv(0x30, &[issuer, serial].concat())
    }

    /// IssuerAndSubject (DER) of the certificate in `cert`: the content of CertPoll.
    pub fn issuer_and_subject(&self, cert: &str) -> Vec<u8> {
        let (issuer, _, subject) = names_and_serial(&self.cert_der(cert));
        tlv(0x30, &[issuer, subject].concat())
    }

    /// A DER PKCS#10 request for the client's key with `challenge` as challengePassword.
    pub fn csr(&self, common_name: &str, challenge: &str) -> Vec<u8> {
        let config = format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n[dn]\nCN = {common_name}\n[attrs]\nchallengePassword = {challenge}\n"
        );
        std::fs::write(self.dir.join("req.cnf"), config).unwrap();
        openssl_in(
            Some(&self.dir),
            &["req", "-new", "-key", "key.pem", "-config", "req.cnf", "-outform", "DER", "-out", "csr.der"],
        );
        std::fs::read(self.dir.join("csr.der")).unwrap()
    }

    /// A PKIMessage of `message_type` carrying `inner`, encrypted to `ra_pem` with `cipher`
    /// (an `openssl cms` cipher option: `-aes256`, `-aes128`, `-des3`, `-des`) and signed with
    /// `signer` (`self.pem`, or a certificate the server issued, with `key`), digest `digest`
    /// (`sha256` or `sha1`). Returns the message and its senderNonce.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        ra_pem: &Path,
        message_type: u8,
        transaction_id: &str,
        inner: &[u8],
        cipher: &str,
        signer: &str,
        key: &str,
        digest: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        std::fs::write(self.dir.join("inner.der"), inner).unwrap();
        let ra = ra_pem.to_string_lossy().into_owned();
        let mut args = vec![
            "cms",
            "-encrypt",
            "-binary",
            "-stream",
            "-outform",
            "DER",
            "-in",
            "inner.der",
            "-out",
            "env.der",
        ];
        if cipher == "-des" {
            // OpenSSL 3 keeps single DES in its legacy provider.
            args.extend(["-provider", "default", "-provider", "legacy"]);
        }
        args.extend([cipher, ra.as_str()]);
        openssl_in(Some(&self.dir), &args);
        let envelope = std::fs::read(self.dir.join("env.der")).unwrap();
        openssl_in(Some(&self.dir), &["x509", "-in", signer, "-outform", "DER", "-out", "signer.der"]);
        let signer_der = std::fs::read(self.dir.join("signer.der")).unwrap();
        openssl_in(Some(&self.dir), &["rand", "-out", "nonce.bin", "16"]);
        let nonce = std::fs::read(self.dir.join("nonce.bin")).unwrap();
        openssl_in(Some(&self.dir), &["dgst", &format!("-{digest}"), "-binary", "-out", "md.bin", "env.der"]);
        let md = std::fs::read(self.dir.join("md.bin")).unwrap();

        let mut attrs = [
            attribute(OID_CONTENT_TYPE, OID_DATA),
            attribute(OID_MESSAGE_DIGEST, &tlv(0x04, &md)),
            attribute(&scep_oid(2), &tlv(0x13, message_type.to_string().as_bytes())),
            attribute(&scep_oid(5), &tlv(0x04, &nonce)),
            attribute(&scep_oid(7), &tlv(0x13, transaction_id.as_bytes())),
        ];
        // DER orders a SET OF by the encodings.
        attrs.sort();
        let attrs = attrs.concat();
        std::fs::write(self.dir.join("signed.der"), tlv(0x31, &attrs)).unwrap();
        openssl_in(
            Some(&self.dir),
            &["dgst", &format!("-{digest}"), "-sign", key, "-out", "sig.bin", "signed.der"],
        );
        let signature = std::fs::read(self.dir.join("sig.bin")).unwrap();

        let digest_oid = if digest == "sha1" { OID_SHA1 } else { OID_SHA256 };
        let digest_alg = tlv(0x30, &[digest_oid, &[0x05, 0x00]].concat());
        let (issuer, serial) = issuer_and_serial(&signer_der);
        let signer_info = tlv(
            0x30,
            &[
                tlv(0x02, &[1]),
                tlv(0x30, &[issuer, serial].concat()),
                digest_alg.clone(),
                tlv(0xa0, &attrs),
                tlv(0x30, &[OID_RSA, &[0x05, 0x00]].concat()),
                tlv(0x04, &signature),
            ]
            .concat(),
        );
        let chunks: Vec<Vec<u8>> = envelope.chunks(500).map(|c| tlv(0x04, c)).collect();
        let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let econtent = indefinite(0xa0, &[&indefinite(0x24, &chunk_refs)]);
        let encap = indefinite(0x30, &[OID_DATA, &econtent]);
        let signed_data = indefinite(
            0x30,
            &[
                &tlv(0x02, &[1]),
                &tlv(0x31, &digest_alg),
                &encap,
                &indefinite(0xa0, &[&signer_der]),
                &tlv(0x31, &signer_info),
            ],
        );
        let message = indefinite(0x30, &[OID_SIGNED_DATA, &indefinite(0xa0, &[&signed_data])]);
        (message, nonce)
    }

    /// Reads a CertRep: its signature checked by `openssl cms -verify` against `ca_pem` (the root
    /// and the issuing CA: openssl 3.0's `cms` takes no untrusted intermediates), its attributes from `openssl cms -cmsout -print`, and
    /// on SUCCESS the certificates from the envelope opened with `key`/`recipient`.
    pub fn read_reply(&self, reply: &[u8], ca_pem: &Path, recipient: &str, key: &str) -> CertRepView {
        std::fs::write(self.dir.join("rep.der"), reply).unwrap();
        let ca = ca_pem.to_string_lossy().into_owned();
        let printed =
            openssl_in(Some(&self.dir), &["cms", "-cmsout", "-print", "-inform", "DER", "-in", "rep.der"]);
        let attr = |suffix: &str| -> Option<String> { printed_attribute(&printed, suffix) };
        let status = attr("2.16.840.1.113733.1.9.3").unwrap_or_else(|| panic!("no pkiStatus:\n{printed}"));
        let mut args = vec![
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "rep.der",
            "-CAfile",
            &ca,
            "-purpose",
            "any",
            "-out",
            "rep-content.der",
        ];
        if status != "0" {
            // A FAILURE or PENDING carries no content; its messageDigest is that of nothing.
            std::fs::write(self.dir.join("empty"), b"").unwrap();
            args.extend(["-content", "empty"]);
        }
        let verified = command("openssl", &args, Some(&self.dir));
        assert!(verified.success, "openssl cms -verify refused the CertRep:\n{}\n{printed}", verified.text());
        let mut certificates_pem = String::new();
        if status == "0" {
            openssl_in(
                Some(&self.dir),
                &[
                    "cms",
                    "-decrypt",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    "rep-content.der",
                    "-inkey",
                    key,
                    "-recip",
                    recipient,
                    "-out",
                    "certs.p7b",
                ],
            );
            certificates_pem =
                openssl_in(Some(&self.dir), &["pkcs7", "-inform", "DER", "-in", "certs.p7b", "-print_certs"]);
        }
        CertRepView {
            status,
            fail_info: attr("2.16.840.1.113733.1.9.4"),
            recipient_nonce: attr("2.16.840.1.113733.1.9.6").unwrap_or_default(),
            transaction_id: attr("2.16.840.1.113733.1.9.7").unwrap_or_default(),
            certificates_pem,
            printed,
        }
    }
}

/// The value `openssl cms -cmsout -print` shows for the signed attribute `oid`: the string of a
/// PrintableString, or the hex of an OCTET STRING.
fn printed_attribute(printed: &str, oid: &str) -> Option<String> {
    let lines: Vec<&str> = printed.lines().collect();
    let at = lines.iter().position(|l| {
        l.trim() == format!("object: {oid}").as_str()
            || l.trim().starts_with(&format!("object: undefined ({oid})"))
            || l.trim().ends_with(&format!("({oid})"))
    })?;
    for line in &lines[at + 1..(at + 8).min(lines.len())] {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("PRINTABLESTRING:") {
            return Some(v.trim().to_owned());
        }
        if let Some(v) = t.strip_prefix("UTF8STRING:") {
            return Some(v.trim().to_owned());
        }
        if t.starts_with("OCTET STRING:") {
            // Hex dump lines: "0000 - 67 f0 32 …-… 96   ascii"; the hex area ends at the run of
            // spaces before the ASCII column (which may itself hold spaces).
            let hex: String = lines[at + 1..]
                .iter()
                .skip_while(|l| !l.contains("OCTET STRING:"))
                .skip(1)
                .map_while(|l| l.split_once(" - ").map(|(_, rest)| rest))
                .map(|rest| rest.split("  ").next().unwrap_or_default().replace(['-', ' '], ""))
                .collect();
            return Some(hex);
        }
    }
    None
}
