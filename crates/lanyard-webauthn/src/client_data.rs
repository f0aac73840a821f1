//! `clientDataJSON` (WebAuthn §5.8.1): what the browser says it asked the authenticator, hashed
//! into every signature. The relying party reads it as JSON (not with the spec's limited
//! verification algorithm), refuses anything that is not an object with the members below, and
//! keeps the SHA-256 of the exact bytes it received.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{WebAuthnError, from_b64url};

/// Browsers send a few hundred bytes; anything this large is not a client's.
pub const MAX_CLIENT_DATA_LEN: usize = 8 * 1024;

/// Which ceremony a response belongs to (`type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ceremony {
    /// `webauthn.create`: a registration.
    Create,
    /// `webauthn.get`: an authentication.
    Get,
}

impl Ceremony {
    pub const fn as_str(self) -> &'static str {
        match self {
            Ceremony::Create => "webauthn.create",
            Ceremony::Get => "webauthn.get",
        }
    }
}

/// A parsed `clientDataJSON`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientData {
    /// `type`, as sent (checked against the ceremony by [`ClientData::check`]).
    pub kind: String,
    /// `challenge`, decoded from base64url.
    pub challenge: Vec<u8>,
    /// `origin`, as sent.
    pub origin: String,
    /// `crossOrigin` (absent means false).
    pub cross_origin: bool,
    /// `topOrigin`, present only for cross-origin calls.
    pub top_origin: Option<String>,
    /// SHA-256 of the bytes received, which the authenticator signed over.
    pub hash: [u8; 32],
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(default)]
    cross_origin: Option<bool>,
    #[serde(default)]
    top_origin: Option<String>,
}

impl ClientData {
    /// Parses `bytes`. Members other than the ones above are allowed (browsers add some, and the
    /// spec tells relying parties to ignore them); a missing or mistyped one is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, WebAuthnError> {
        let bad = |m: String| WebAuthnError::ClientData(m);
        if bytes.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if bytes.len() > MAX_CLIENT_DATA_LEN {
            return Err(bad(format!("it is {} bytes, more than {MAX_CLIENT_DATA_LEN}", bytes.len())));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("it is not UTF-8".into()))?;
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| bad(format!("not the expected JSON object: {e}")))?;
        let challenge = from_b64url(&raw.challenge, "challenge").map_err(bad)?;
        if challenge.is_empty() {
            return Err(bad("the challenge is empty".into()));
        }
        Ok(Self {
            kind: raw.kind,
            challenge,
            origin: raw.origin,
            cross_origin: raw.cross_origin.unwrap_or(false),
            top_origin: raw.top_origin,
            hash: Sha256::digest(bytes).into(),
        })
    }

    /// The checks of §7.1 steps 7–9 and §7.2 steps 11–13 that need no state: the ceremony type,
    /// the challenge issued, the one origin the relying party serves, and no cross-origin frame.
    pub fn check(&self, ceremony: Ceremony, challenge: &[u8], origin: &str) -> Result<(), WebAuthnError> {
        if self.kind != ceremony.as_str() {
            return Err(WebAuthnError::WrongCeremony {
                expected: ceremony.as_str(),
                found: self.kind.clone(),
            });
        }
        if !constant_time_eq(&self.challenge, challenge) {
            return Err(WebAuthnError::ChallengeMismatch);
        }
        if self.origin != origin {
            return Err(WebAuthnError::OriginMismatch {
                expected: origin.to_owned(),
                found: self.origin.clone(),
            });
        }
        if self.cross_origin || self.top_origin.is_some() {
            return Err(WebAuthnError::CrossOrigin);
        }
        Ok(())
    }
}

/// Equality whose time does not depend on where two equal-length inputs differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64url;
    use proptest::prelude::*;

    fn json(kind: &str, challenge: &[u8], origin: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"type":"{kind}","challenge":"{}","origin":"{origin}"{extra}}}"#, b64url(challenge))
            .into_bytes()
    }

    #[test]
    fn a_browser_response_passes() {
        let bytes = json(
            "webauthn.get",
            b"0123456789abcdef",
            "https://l.example",
            r#","crossOrigin":false,"other_keys_can_be_added_here":"x""#,
        );
        let c = ClientData::parse(&bytes).unwrap();
        assert_eq!(c.challenge, b"0123456789abcdef");
        assert_eq!(c.hash, <[u8; 32]>::from(Sha256::digest(&bytes)));
        c.check(Ceremony::Get, b"0123456789abcdef", "https://l.example").unwrap();
    }

    #[test]
    fn each_check_names_what_is_wrong() {
        let c = ClientData::parse(&json("webauthn.create", b"abcdefgh", "https://l.example", "")).unwrap();
        assert!(matches!(
            c.check(Ceremony::Get, b"abcdefgh", "https://l.example"),
            Err(WebAuthnError::WrongCeremony { .. })
        ));
        assert_eq!(
            c.check(Ceremony::Create, b"abcdefgX", "https://l.example"),
            Err(WebAuthnError::ChallengeMismatch)
        );
        assert!(matches!(
            c.check(Ceremony::Create, b"abcdefgh", "https://evil.example"),
            Err(WebAuthnError::OriginMismatch { .. })
        ));
        let framed = ClientData::parse(&json(
            "webauthn.get",
            b"abcdefgh",
            "https://l.example",
            r#","crossOrigin":true"#,
        ))
        .unwrap();
        assert_eq!(
            framed.check(Ceremony::Get, b"abcdefgh", "https://l.example"),
            Err(WebAuthnError::CrossOrigin)
        );
        let top = ClientData::parse(&json(
            "webauthn.get",
            b"abcdefgh",
            "https://l.example",
            r#","topOrigin":"https://evil.example""#,
        ))
        .unwrap();
        assert_eq!(
            top.check(Ceremony::Get, b"abcdefgh", "https://l.example"),
            Err(WebAuthnError::CrossOrigin)
        );
    }

    #[test]
    fn malformed_client_data_is_refused_precisely() {
        for (bytes, needle) in [
            (&b""[..], "empty"),
            (b"\xff\xfe", "UTF-8"),
            (b"[]", "JSON object"),
            (br#"{"type":"webauthn.get","origin":"x"}"#, "challenge"),
            (br#"{"type":"webauthn.get","challenge":"***","origin":"x"}"#, "base64url"),
            (br#"{"type":"webauthn.get","challenge":"","origin":"x"}"#, "empty"),
            (br#"{"type":1,"challenge":"AA","origin":"x"}"#, "JSON object"),
            (br#"{"type":"webauthn.get","challenge":"AA","origin":"x","crossOrigin":"no"}"#, "JSON object"),
        ] {
            let e = ClientData::parse(bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        let big = vec![b' '; MAX_CLIENT_DATA_LEN + 1];
        assert!(ClientData::parse(&big).unwrap_err().to_string().contains("more than"));
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ClientData::parse(&bytes);
        }

        #[test]
        fn any_text_is_judged_without_panicking(text in "\\PC{0,300}") {
            let _ = ClientData::parse(text.as_bytes());
        }

        #[test]
        fn built_client_data_round_trips(
            challenge in proptest::collection::vec(any::<u8>(), 1..64),
            host in "[a-z]{1,12}\\.[a-z]{2,5}",
            get in any::<bool>(),
            cross in proptest::option::of(any::<bool>()),
        ) {
            let kind = if get { Ceremony::Get } else { Ceremony::Create };
            let origin = format!("https://{host}");
            let extra = cross.map(|c| format!(r#","crossOrigin":{c}"#)).unwrap_or_default();
            let c = ClientData::parse(&json(kind.as_str(), &challenge, &origin, &extra)).unwrap();
            prop_assert_eq!(&c.challenge, &challenge);
            prop_assert_eq!(&c.origin, &origin);
            let verdict = c.check(kind, &challenge, &origin);
            if cross == Some(true) {
                prop_assert_eq!(verdict, Err(WebAuthnError::CrossOrigin));
            } else {
                prop_assert_eq!(verdict, Ok(()));
            }
        }
    }
}
