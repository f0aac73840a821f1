//! The server's base URL, as the agent, the admin CLI and `lanyard serve` accept it.
//!
//! `https://` (or `wss://`) anywhere; plain `http://` (or `ws://`) only to a loopback host, since
//! tickets, passwords and tokens would otherwise travel in clear. No query, fragment or user
//! information: a base URL has no use for them, and `user@host` is a classic way to disguise the
//! real host.

use std::net::IpAddr;

use url::{Host, Url};

use crate::CONNECT_PATH;

/// A parsed server base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Host name (lowercase, IDNA-encoded) or IP address, without IPv6 brackets.
    pub host: String,
    /// The explicit port, or the scheme's default (443 with TLS, 80 without).
    pub port: u16,
    /// The WebSocket URL of the agent channel.
    pub url: String,
}

/// A server URL that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Parses a server base URL (`https://host[:port][/prefix]`).
pub fn parse_server(server: &str) -> Result<Target, UrlError> {
    let bad = |reason: &str| UrlError { url: server.to_owned(), reason: reason.to_owned() };
    let must_be_https = "must start with https:// (or wss://)";
    let parsed = Url::parse(server).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => bad(must_be_https),
        url::ParseError::EmptyHost => bad("needs a host"),
        url::ParseError::InvalidPort => bad("port is not a number from 0 to 65535"),
        other => bad(&other.to_string()),
    })?;
    let tls = match parsed.scheme() {
        "https" | "wss" => true,
        "http" | "ws" => false,
        _ => return Err(bad(must_be_https)),
    };
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must not carry a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("needs a host, without user information"));
    }
    let (host, loopback) = match parsed.host() {
        Some(Host::Domain(name)) => (name.to_owned(), name == "localhost"),
        Some(Host::Ipv4(ip)) => (ip.to_string(), IpAddr::V4(ip).is_loopback()),
        Some(Host::Ipv6(ip)) => (ip.to_string(), IpAddr::V6(ip).is_loopback()),
        None => return Err(bad("needs a host")),
    };
    if !tls && !loopback {
        return Err(bad("plain http:// or ws:// is only allowed to a loopback address; use https://"));
    }
    // Every scheme accepted above has a default port; the fallback is never taken.
    let port = parsed.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    // `host_str` keeps the brackets of an IPv6 address; `port` is absent when it is the default,
    // which is the same for http/ws and for https/wss.
    let authority = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(bad("needs a host")),
    };
    let path = parsed.path().trim_end_matches('/');
    let url = format!("{}://{authority}{path}{CONNECT_PATH}", if tls { "wss" } else { "ws" });
    Ok(Target { tls, host, port, url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        for bad in [
            "http://example.com",
            "ws://10.0.0.1:8443",
            "http://[2001:db8::1]/x",
            "http://localhost.example.com",
            "http://127.0.0.1.example",
        ] {
            let e = parse_server(bad).unwrap_err();
            assert!(e.reason.contains("loopback"), "{bad}: {e}");
        }
        for (good, url) in [
            ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/api/v1/agent/connect"),
            ("http://localhost/", "ws://localhost/api/v1/agent/connect"),
            ("http://LOCALHOST:81", "ws://localhost:81/api/v1/agent/connect"),
            ("ws://[::1]:9/base", "ws://[::1]:9/base/api/v1/agent/connect"),
            ("http://127.1", "ws://127.0.0.1/api/v1/agent/connect"),
        ] {
            assert_eq!(parse_server(good).unwrap().url, url, "{good}");
        }
    }

    #[test]
    fn https_anywhere_with_default_ports() {
        for (good, url, port) in [
            ("https://lanyard.example", "wss://lanyard.example/api/v1/agent/connect", 443),
            ("wss://lanyard.example:8443/l/", "wss://lanyard.example:8443/l/api/v1/agent/connect", 8443),
            ("https://Lanyard.Example:443/a/b//", "wss://lanyard.example/a/b/api/v1/agent/connect", 443),
            ("http://127.0.0.1", "ws://127.0.0.1/api/v1/agent/connect", 80),
            ("https://[::1]:444", "wss://[::1]:444/api/v1/agent/connect", 444),
        ] {
            let t = parse_server(good).unwrap();
            assert_eq!((t.url.as_str(), t.port), (url, port), "{good}");
        }
        let t = parse_server("https://[::1]:444").unwrap();
        assert_eq!((t.host.as_str(), t.tls), ("::1", true));
        let t = parse_server("http://localhost:8080").unwrap();
        assert_eq!((t.host.as_str(), t.tls, t.port), ("localhost", false, 8080));
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("ftp://localhost", "must start with https://"),
            ("example.com", "must start with https://"),
            ("", "must start with https://"),
            ("https://", "needs a host"),
            ("https://:443", "needs a host"),
            ("https://host:99999", "port is not a number"),
            ("https://host:x", "port is not a number"),
            ("https://host/?a=1", "query or fragment"),
            ("https://host/?", "query or fragment"),
            ("https://host/#top", "query or fragment"),
            ("https://user@host", "user information"),
            ("https://user:pw@host", "user information"),
            ("https://[::1", "invalid IPv6"),
        ] {
            let e = parse_server(bad).unwrap_err();
            assert!(e.reason.contains(reason), "{bad}: {e}");
            assert_eq!(e.url, bad);
        }
    }
}
