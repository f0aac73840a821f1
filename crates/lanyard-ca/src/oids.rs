//! Object identifiers the CA emits or recognises.
//!
//! Kept in one place so the profile table in `docs/ca.md` can be checked against a single list.

use spki::ObjectIdentifier as Oid;

// --- Signature and key algorithms -------------------------------------------------------------

/// ecdsa-with-SHA256 (RFC 5758).
pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA384 (RFC 5758).
pub const ECDSA_WITH_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
/// ecdsa-with-SHA512 (RFC 5758).
pub const ECDSA_WITH_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
/// sha256WithRSAEncryption (RFC 4055).
pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
/// sha384WithRSAEncryption (RFC 4055).
pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
/// sha512WithRSAEncryption (RFC 4055).
pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
/// id-ecPublicKey (RFC 5480).
pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 / P-256.
pub const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1 / P-384.
pub const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");
/// rsaEncryption (RFC 8017).
pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");

// --- Digests (OCSP CertID) --------------------------------------------------------------------

/// id-sha1: only used to match OCSP CertIDs and the byKey responder id, as RFC 6960 requires.
pub const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
/// id-sha256.
pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-sha384.
pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
/// id-sha512.
pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");

// --- Certificate and CRL extensions (RFC 5280, RFC 6960) --------------------------------------

/// id-ce-subjectKeyIdentifier.
pub const SUBJECT_KEY_IDENTIFIER: Oid = Oid::new_unwrap("2.5.29.14");
/// id-ce-keyUsage.
pub const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
/// id-ce-subjectAltName.
pub const SUBJECT_ALT_NAME: Oid = Oid::new_unwrap("2.5.29.17");
/// id-ce-basicConstraints.
pub const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
/// id-ce-cRLNumber.
pub const CRL_NUMBER: Oid = Oid::new_unwrap("2.5.29.20");
/// id-ce-cRLReasons.
pub const CRL_REASON: Oid = Oid::new_unwrap("2.5.29.21");
/// id-ce-cRLDistributionPoints.
/// issuingDistributionPoint (RFC 5280 §5.2.5).
pub const ISSUING_DISTRIBUTION_POINT: Oid = Oid::new_unwrap("2.5.29.28");
pub const CRL_DISTRIBUTION_POINTS: Oid = Oid::new_unwrap("2.5.29.31");
/// id-ce-certificatePolicies.
pub const CERTIFICATE_POLICIES: Oid = Oid::new_unwrap("2.5.29.32");
/// anyPolicy.
pub const ANY_POLICY: Oid = Oid::new_unwrap("2.5.29.32.0");
/// id-ce-authorityKeyIdentifier.
pub const AUTHORITY_KEY_IDENTIFIER: Oid = Oid::new_unwrap("2.5.29.35");
/// id-ce-extKeyUsage.
pub const EXT_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
/// id-pe-authorityInfoAccess.
pub const AUTHORITY_INFO_ACCESS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.1.1");
/// id-ad-ocsp.
pub const AD_OCSP: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1");
/// id-ad-caIssuers.
pub const AD_CA_ISSUERS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.2");
/// id-pkix-ocsp-basic.
pub const OCSP_BASIC: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-pkix-ocsp-nonce.
pub const OCSP_NONCE: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.2");
/// id-pkix-ocsp-nocheck.
pub const OCSP_NO_CHECK: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.5");

// --- Extended key usages ----------------------------------------------------------------------

/// id-kp-serverAuth.
pub const KP_SERVER_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.1");
/// id-kp-clientAuth.
pub const KP_CLIENT_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.2");
/// id-kp-emailProtection.
pub const KP_EMAIL_PROTECTION: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.4");
/// id-kp-OCSPSigning.
pub const KP_OCSP_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.9");
/// id-pkinit-KPClientAuth (RFC 4556).
pub const KP_PKINIT_CLIENT: Oid = Oid::new_unwrap("1.3.6.1.5.2.3.4");
/// Microsoft smart card logon.
pub const KP_MS_SMARTCARD_LOGON: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.20.2.2");
/// Microsoft document signing.
pub const KP_MS_DOCUMENT_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.10.3.12");
/// Adobe authentic documents trust.
pub const KP_ADOBE_AUTHENTIC_DOCUMENTS: Oid = Oid::new_unwrap("1.2.840.113583.1.1.5");
/// id-PIV-content-signing (FIPS 201).
pub const KP_PIV_CONTENT_SIGNING: Oid = Oid::new_unwrap("2.16.840.1.101.3.6.7");
/// id-PIV-cardAuth (FIPS 201).
pub const KP_PIV_CARD_AUTH: Oid = Oid::new_unwrap("2.16.840.1.101.3.6.8");

// --- Subject alternative name other-names -----------------------------------------------------

/// FASC-N other-name (FIPS 201), value is a 25-byte OCTET STRING.
pub const PIV_FASC_N: Oid = Oid::new_unwrap("2.16.840.1.101.3.6.6");
/// Microsoft user principal name other-name, value is a UTF8String.
pub const MS_UPN: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.20.2.3");

// --- Certificate policies (FPKI Common Policy) ------------------------------------------------

/// id-fpki-common-policy.
pub const FPKI_COMMON_POLICY: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.6");
/// id-fpki-common-hardware.
pub const FPKI_COMMON_HARDWARE: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.7");
/// id-fpki-common-authentication.
pub const FPKI_COMMON_AUTHENTICATION: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.13");
/// id-fpki-common-cardAuth.
pub const FPKI_COMMON_CARD_AUTH: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.17");
/// id-fpki-common-piv-contentSigning.
pub const FPKI_COMMON_PIV_CONTENT_SIGNING: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.39");
/// id-fpki-common-derived-pivAuth (AAL2, software token).
pub const FPKI_COMMON_DERIVED_PIV_AUTH: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.40");
/// id-fpki-common-derived-pivAuth-hardware (AAL3, hardware token).
pub const FPKI_COMMON_DERIVED_PIV_AUTH_HARDWARE: Oid = Oid::new_unwrap("2.16.840.1.101.3.2.1.3.41");

// --- Attributes -------------------------------------------------------------------------------

/// PKCS#9 challengePassword.
pub const PKCS9_CHALLENGE_PASSWORD: Oid = Oid::new_unwrap("1.2.840.113549.1.9.7");
/// PKCS#9 extensionRequest.
pub const PKCS9_EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.14");

// --- CMS (RFC 5652) and PIV signed objects (SP 800-73-4 Part 1) -------------------------------

/// id-data.
pub const CMS_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
/// id-signedData.
pub const CMS_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
/// id-contentType signed attribute.
pub const CMS_CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
/// id-messageDigest signed attribute.
pub const CMS_MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
/// id-PIV-CHUIDSecurityObject: eContentType of the CHUID issuer signature.
pub const PIV_CHUID_SECURITY_OBJECT: Oid = Oid::new_unwrap("2.16.840.1.101.3.6.1");
/// pivSigner-DN signed attribute: the subject DN of the content signing certificate.
pub const PIV_SIGNER_DN: Oid = Oid::new_unwrap("2.16.840.1.101.3.6.5");

// --- YubiKey PIV attestation certificate extensions -------------------------------------------

/// Firmware version: three raw bytes (major, minor, patch).
pub const YUBICO_FIRMWARE: Oid = Oid::new_unwrap("1.3.6.1.4.1.41482.3.3");
/// Device serial number: a DER INTEGER.
pub const YUBICO_SERIAL: Oid = Oid::new_unwrap("1.3.6.1.4.1.41482.3.7");
/// PIN and touch policy: two raw bytes.
pub const YUBICO_POLICY: Oid = Oid::new_unwrap("1.3.6.1.4.1.41482.3.8");
/// Form factor: one raw byte.
pub const YUBICO_FORM_FACTOR: Oid = Oid::new_unwrap("1.3.6.1.4.1.41482.3.9");
