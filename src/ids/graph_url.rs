//! Where a Graph token may go: the Graph host allow-list, and the API base URL.
//!
//! The Agent User's bearer token is only ever sent over https to one of the national Graph hosts
//! ([`GRAPH_HOSTS`], exact host match: no subdomains, no look-alikes such as
//! `graph.microsoft.com.attacker.example`), or over plain http to the one loopback origin a test
//! configured explicitly as its base URL. Every URL is checked, `@odata.nextLink` included, before
//! a request is built.

use std::fmt;

use url::{Host, Url};

/// The hosts that may receive a Graph bearer token (global, US Gov L4, US Gov L5 (DoD), China).
pub const GRAPH_HOSTS: [&str; 4] =
    ["graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn"];

/// The Graph v1.0 API of the global cloud.
pub const DEFAULT_GRAPH_BASE: &str = "https://graph.microsoft.com/v1.0";

/// Why a URL may not receive a Graph token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphUrlError {
    /// Not a URL, or one with user info.
    #[error("`{0}` is not a usable Graph URL")]
    Malformed(String),
    /// A host outside the allow-list (or plain http to anything but the configured loopback origin).
    #[error(
        "`{0}` is not a Microsoft Graph host (graph.microsoft.com, graph.microsoft.us, dod-graph.microsoft.us, microsoftgraph.chinacloudapi.cn over https); the Graph token is never sent anywhere else"
    )]
    NotAllowed(String),
}

/// The Graph API base (such as `https://graph.microsoft.com/v1.0`), and the policy for the URLs the
/// token may be sent to.
#[derive(Clone, PartialEq, Eq)]
pub struct GraphEndpoint {
    base: Url,
    /// The loopback origin (`http://127.0.0.1:PORT`) of a local fake, when the base is one.
    loopback: Option<String>,
}

impl GraphEndpoint {
    /// Parse a base URL: https on an allow-listed Graph host, or plain http on a loopback address (a
    /// local fake: then that exact origin, and only it, is allowed besides the Graph hosts).
    pub fn parse(s: &str) -> Result<Self, GraphUrlError> {
        let base = Url::parse(s.trim().trim_end_matches('/')).map_err(|_| GraphUrlError::Malformed(s.to_owned()))?;
        if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() || base.password().is_some() {
            return Err(GraphUrlError::Malformed(s.to_owned()));
        }
        if base.scheme() == "http" && is_loopback(&base) {
            let loopback = Some(origin(&base));
            return Ok(Self { base, loopback });
        }
        let this = Self { base, loopback: None };
        this.check(&this.base)?;
        Ok(this)
    }

    /// The global cloud's Graph v1.0.
    pub fn global() -> Self {
        Self { base: Url::parse(DEFAULT_GRAPH_BASE).unwrap_or_else(|_| unreachable!("built-in URL")), loopback: None }
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// Whether the token may be sent to `url`: https to an allow-listed host on the default port, or
    /// the configured loopback origin.
    pub fn check(&self, url: &Url) -> Result<(), GraphUrlError> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(GraphUrlError::Malformed(redact_query(url)));
        }
        if let Some(lo) = &self.loopback
            && url.scheme() == "http"
            && origin(url) == *lo
        {
            return Ok(());
        }
        let allowed = url.scheme() == "https"
            && url.port().is_none()
            && matches!(url.host(), Some(Host::Domain(h)) if GRAPH_HOSTS.contains(&h.to_ascii_lowercase().trim_end_matches('.')));
        if allowed { Ok(()) } else { Err(GraphUrlError::NotAllowed(redact_query(url))) }
    }

    /// `path` (which starts with `/`) under the base, checked.
    pub fn url(&self, path_and_query: &str) -> Result<Url, GraphUrlError> {
        let u = Url::parse(&format!("{}{path_and_query}", self.base())).map_err(|_| GraphUrlError::Malformed(path_and_query.to_owned()))?;
        self.check(&u)?;
        Ok(u)
    }

    /// A URL Graph handed back (`@odata.nextLink`), checked against the same policy.
    pub fn next_link(&self, link: &str) -> Result<Url, GraphUrlError> {
        let u = Url::parse(link).map_err(|_| GraphUrlError::Malformed("@odata.nextLink".to_owned()))?;
        self.check(&u)?;
        Ok(u)
    }

    /// The `user@odata.bind` URL of a user (by object id or UPN/email), on the base's host and version.
    pub fn user_bind(&self, id_or_upn: &str) -> String {
        format!("{}/users('{}')", self.bind_base(), odata_string(id_or_upn))
    }

    /// Graph binds always name the public Graph URL form of the API the request goes to.
    fn bind_base(&self) -> String {
        if self.loopback.is_some() { DEFAULT_GRAPH_BASE.to_owned() } else { self.base().to_owned() }
    }
}

impl fmt::Debug for GraphEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GraphEndpoint({})", self.base())
    }
}

impl fmt::Display for GraphEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base())
    }
}

/// An OData string literal's content: `'` doubled.
#[must_use]
pub fn odata_string(s: &str) -> String {
    s.replace('\'', "''")
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// A URL for an error message: scheme, host and path only (a query may carry a skip token).
fn redact_query(u: &Url) -> String {
    format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_graph_hosts_over_https() {
        let g = GraphEndpoint::global();
        for ok in [
            "https://graph.microsoft.com/v1.0/me",
            "https://GRAPH.microsoft.com/v1.0/chats?$skiptoken=x",
            "https://graph.microsoft.us/v1.0/me",
            "https://dod-graph.microsoft.us/v1.0/me",
            "https://microsoftgraph.chinacloudapi.cn/v1.0/me",
        ] {
            assert!(g.check(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "https://graph.microsoft.com.attacker.com/v1.0/me",
            "https://evil.example/?x=graph.microsoft.com",
            "https://evil.example/graph.microsoft.com/v1.0",
            "https://user@graph.microsoft.com/v1.0/me",
            "http://graph.microsoft.com/v1.0/me",
            "https://graph.microsoft.de/v1.0/me",
            "https://login.microsoftonline.com/common",
            "https://graph.microsoft.com:8443/v1.0/me",
            "https://sub.graph.microsoft.com/v1.0/me",
            "http://127.0.0.1:8080/v1.0/me",
        ] {
            assert!(g.check(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_loopback_base_allows_that_origin_only() {
        let g = GraphEndpoint::parse("http://127.0.0.1:4000/v1.0/").unwrap();
        assert_eq!(g.base(), "http://127.0.0.1:4000/v1.0");
        assert!(g.url("/me").is_ok());
        assert!(g.next_link("http://127.0.0.1:4000/v1.0/chats?$skiptoken=a").is_ok());
        assert!(g.next_link("http://127.0.0.1:4001/v1.0/chats").is_err());
        assert!(g.next_link("http://evil.example/v1.0/chats").is_err());
        assert!(g.next_link("https://graph.microsoft.com/v1.0/chats").is_ok());
        assert!(GraphEndpoint::parse("http://graph.microsoft.com/v1.0").is_err());
        assert!(GraphEndpoint::parse("https://example.com/v1.0").is_err());
        assert!(GraphEndpoint::parse("https://graph.microsoft.us/v1.0").is_ok());
    }

    #[test]
    fn odata_quotes_are_doubled_in_binds() {
        assert_eq!(odata_string("o'brien@x.test"), "o''brien@x.test");
        let g = GraphEndpoint::global();
        assert_eq!(g.user_bind("o'b@x.test"), "https://graph.microsoft.com/v1.0/users('o''b@x.test')");
    }
}
