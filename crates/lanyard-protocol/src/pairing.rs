//! The pairing link the portal offers (`lanyard://pair?server=<url>&code=<code>`): the server's
//! base URL and the one-time pairing code, which `lanyard agent pair` also takes typed by hand.

use url::Url;

/// The custom URL scheme a desktop registers for `lanyard agent pair`.
pub const SCHEME: &str = "lanyard";

/// A link that is not a pairing link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pairing link {link:?}: {reason}")]
pub struct LinkError {
    pub link: String,
    pub reason: String,
}

/// The pairing link for `code` on the server at `server` (its base URL).
pub fn link(server: &str, code: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("server", server)
        .append_pair("code", code)
        .finish();
    format!("{SCHEME}://pair?{query}")
}

/// What a pairing link carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub server: String,
    pub code: String,
}

/// Whether `input` looks like a link rather than a typed code.
pub fn is_link(input: &str) -> bool {
    input.trim().to_ascii_lowercase().starts_with(&format!("{SCHEME}:"))
}

/// Reads a pairing link: scheme `lanyard`, host `pair`, and exactly one `server` and one `code`.
/// The server URL itself is checked by whoever connects to it ([`crate::url::parse_server`]).
pub fn parse(input: &str) -> Result<Link, LinkError> {
    let bad = |reason: &str| LinkError { link: input.to_owned(), reason: reason.to_owned() };
    let url = Url::parse(input.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != SCHEME || url.host_str() != Some("pair") {
        return Err(bad("must start with lanyard://pair?"));
    }
    let (mut server, mut code) = (None, None);
    for (key, value) in url.query_pairs() {
        let slot = match key.as_ref() {
            "server" => &mut server,
            "code" => &mut code,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(bad(&format!("names {key} twice")));
        }
    }
    match (server, code) {
        (Some(server), Some(code)) => Ok(Link { server, code }),
        (None, _) => Err(bad("has no server=")),
        (_, None) => Err(bad("has no code=")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip_with_an_encoded_server_url() {
        let l = link("https://lanyard.example.org:8443/base", "ABCDE-FGHJK");
        assert_eq!(
            l,
            "lanyard://pair?server=https%3A%2F%2Flanyard.example.org%3A8443%2Fbase&code=ABCDE-FGHJK"
        );
        assert!(is_link(&l));
        assert!(!is_link("ABCDE-FGHJK"));
        let parsed = parse(&l).unwrap();
        assert_eq!(
            parsed,
            Link { server: "https://lanyard.example.org:8443/base".into(), code: "ABCDE-FGHJK".into() }
        );
    }

    #[test]
    fn other_links_are_refused_with_the_reason() {
        for (input, reason) in [
            ("https://pair?server=x&code=y", "must start with lanyard://pair?"),
            ("lanyard://other?server=x&code=y", "must start with lanyard://pair?"),
            ("lanyard://pair?code=y", "has no server="),
            ("lanyard://pair?server=x", "has no code="),
            ("lanyard://pair?server=x&code=y&code=z", "names code twice"),
        ] {
            assert_eq!(parse(input).unwrap_err().reason, reason, "{input}");
        }
    }
}
