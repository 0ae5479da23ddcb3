//! Origin and relying-party id checks: the daemon is the WebAuthn client for socket callers, so the checks a
//! browser would make before talking to an authenticator are made here.
//!
//! Rules: the origin is `https://host[:port]`, or `http://` for `localhost` and loopback addresses only; the
//! rpId is the origin's host or a registrable suffix of it, and is not itself a public suffix (public suffix
//! list, ICANN and private sections). IP-address origins only accept the identical rpId.

use std::net::IpAddr;

use url::{Host, Url};

/// Why an origin or rpId was refused. Each maps to a WebAuthn DOMException name at the socket.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The origin string is not a bare `scheme://host[:port]` origin.
    #[error("origin {0:?} is not a valid origin (expected scheme://host[:port])")]
    Malformed(String),
    /// The scheme is neither https nor http on a loopback host.
    #[error("origin {0:?} is not secure: only https, or http on localhost/127.0.0.1, is allowed")]
    Insecure(String),
    /// The rpId is not the origin's host nor a registrable suffix of it.
    #[error("rpId {rp_id:?} does not match the origin {origin:?}")]
    Mismatch {
        /// The requested rpId.
        rp_id: String,
        /// The caller's origin.
        origin: String,
    },
    /// The origin's host is an IP address other than loopback, which cannot be a relying party.
    #[error(
        "origin {0:?} is an IP address: only domain names (or loopback, for development) can be relying parties"
    )]
    IpAddress(String),
    /// The rpId is a public suffix, which would let unrelated sites share credentials.
    #[error("rpId {0:?} is a public suffix and cannot be used as a relying party id")]
    PublicSuffix(String),
}

/// A checked origin and the rpId it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The origin as it goes into clientDataJSON (ASCII serialization, default port dropped).
    pub origin: String,
    /// The effective rpId, lowercase.
    pub rp_id: String,
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Checks `origin` and the requested rpId (`None`: the origin's host), returning what to use.
pub fn check(origin: &str, rp_id: Option<&str>) -> Result<Checked, Error> {
    let url = Url::parse(origin).map_err(|_| Error::Malformed(origin.to_owned()))?;
    let bare = (url.path().is_empty() || url.path() == "/")
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    let host = url
        .host()
        .ok_or_else(|| Error::Malformed(origin.to_owned()))?;
    if !bare {
        return Err(Error::Malformed(origin.to_owned()));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => return Err(Error::Insecure(origin.to_owned())),
        _ => return Err(Error::Malformed(origin.to_owned())),
    }
    let serialized = url.origin().ascii_serialization();
    let host_str = match &host {
        // "example.com." is the same host as "example.com": one credential scope, one rpIdHash.
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    };
    let rp_id = match rp_id {
        None => host_str.clone(),
        Some(r) => r.trim_end_matches('.').to_ascii_lowercase(),
    };
    let mismatch = || Error::Mismatch {
        rp_id: rp_id.clone(),
        origin: serialized.clone(),
    };
    if let Host::Domain(_) = host {
        if rp_id.parse::<IpAddr>().is_ok() {
            return Err(mismatch());
        }
        let matches = host_str == rp_id
            || (host_str.len() > rp_id.len()
                && host_str.ends_with(&rp_id)
                && host_str.as_bytes()[host_str.len() - rp_id.len() - 1] == b'.');
        if !matches || rp_id.is_empty() {
            return Err(mismatch());
        }
        if is_public_suffix(&rp_id) {
            return Err(Error::PublicSuffix(rp_id));
        }
    } else {
        // IP addresses are not valid rpIds (browsers refuse them); loopback stays usable for development.
        if !is_loopback(&host) {
            return Err(Error::IpAddress(serialized));
        }
        // They have no registrable suffixes: only the address itself.
        let same = rp_id
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .zip(host_str.parse::<IpAddr>().ok())
            .is_some_and(|(a, b)| a == b);
        if !same {
            return Err(mismatch());
        }
    }
    Ok(Checked {
        origin: serialized,
        rp_id,
    })
}

fn is_public_suffix(rp_id: &str) -> bool {
    if rp_id == "localhost" || rp_id.ends_with(".localhost") {
        return false;
    }
    // psl answers with the longest matching rule, or the last label for unknown TLDs (the implicit `*` rule):
    // either way a name equal to its own suffix is not registrable.
    match psl::suffix(rp_id.as_bytes()) {
        Some(s) => s.as_bytes() == rp_id.as_bytes(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_registrable_suffix_accepted() {
        let c = check("https://login.example.com", Some("example.com")).unwrap();
        assert_eq!(c.rp_id, "example.com");
        assert_eq!(c.origin, "https://login.example.com");
        let c = check("https://Example.com:8443/", None).unwrap();
        assert_eq!(c.rp_id, "example.com");
        assert_eq!(c.origin, "https://example.com:8443");
    }

    #[test]
    fn suffix_must_be_on_a_label_boundary() {
        assert!(matches!(
            check("https://badexample.com", Some("example.com")),
            Err(Error::Mismatch { .. })
        ));
        assert!(matches!(
            check("https://example.com", Some("login.example.com")),
            Err(Error::Mismatch { .. })
        ));
    }

    #[test]
    fn public_suffixes_refused() {
        for (origin, rp) in [
            ("https://foo.co.uk", "co.uk"),
            ("https://me.github.io", "github.io"),
            ("https://example.com", "com"),
            ("https://a.b.unknowntld", "unknowntld"),
        ] {
            assert_eq!(
                check(origin, Some(rp)),
                Err(Error::PublicSuffix(rp.to_owned())),
                "{origin} {rp}"
            );
        }
        assert!(check("https://me.github.io", Some("me.github.io")).is_ok());
    }

    #[test]
    fn http_only_on_loopback() {
        assert!(check("http://localhost:8080", None).is_ok());
        assert!(check("http://127.0.0.1:3000", Some("127.0.0.1")).is_ok());
        assert_eq!(
            check("http://example.com", None),
            Err(Error::Insecure("http://example.com".into()))
        );
        assert!(matches!(
            check("ftp://example.com", None),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn ip_origins_only_on_loopback_and_only_the_same_address() {
        assert!(check("https://127.0.0.1:8443", Some("127.0.0.1")).is_ok());
        assert!(check("http://[::1]:8080", Some("::1")).is_ok());
        assert!(matches!(
            check("https://10.0.0.1", Some("10.0.0.1")),
            Err(Error::IpAddress(_))
        ));
        assert!(check("https://127.0.0.1", Some("0.1")).is_err());
        assert!(check("https://example.com", Some("127.0.0.1")).is_err());
    }

    #[test]
    fn trailing_dot_hosts_are_the_same_scope() {
        let c = check("https://login.example.com.", None).unwrap();
        assert_eq!(c.rp_id, "login.example.com");
        assert!(check("https://login.example.com.", Some("example.com")).is_ok());
    }

    #[test]
    fn non_bare_origins_refused() {
        for o in [
            "https://example.com/path",
            "https://example.com/?q",
            "https://u:p@example.com",
            "example.com",
            "",
        ] {
            assert!(matches!(check(o, None), Err(Error::Malformed(_))), "{o}");
        }
    }
}
