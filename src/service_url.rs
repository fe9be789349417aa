//! `serviceUrl` handling: normalisation for the token binding, and the Connector host allow-list.
//!
//! The bot token will only ever be sent to a service URL that passes [`ConnectorPolicy::check`]; an
//! inbound activity whose `serviceUrl` fails it is refused with 400 because nothing could be sent back.

use url::{Host, Url};

use crate::ids::Cloud;

/// A service URL reduced to what identifies the endpoint: scheme, lower-case host, explicit
/// non-default port and the path without a trailing slash. User info, query and fragment are refused.
pub(crate) fn normalize(raw: &str) -> Option<String> {
    normalize_url(&Url::parse(raw.trim()).ok()?)
}

/// [`normalize`] of a URL parsed already (the inbound path parses the `serviceUrl` once).
pub(crate) fn normalize_url(u: &Url) -> Option<String> {
    if !matches!(u.scheme(), "https" | "http") || u.cannot_be_a_base() {
        return None;
    }
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
        return None;
    }
    let host = match u.host()? {
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    };
    // A host of dots only (`https://./`) would leave `https:///…`, which reads back as another URL.
    if host.is_empty() {
        return None;
    }
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = u.path().trim_end_matches('/');
    Some(format!("{}://{host}{port}{path}", u.scheme()))
}

/// Connector hosts (exact host or any subdomain) that may receive the bot token, per cloud.
pub(crate) fn connector_suffixes(cloud: Cloud) -> &'static [&'static str] {
    match cloud {
        Cloud::Public => &["smba.trafficmanager.net", "botframework.com", "smba.infra.gcc.teams.microsoft.com"],
        Cloud::Usgov => &["smba.infra.gov.teams.microsoft.us", "smba.infra.dod.teams.microsoft.us", "botframework.azure.us"],
        Cloud::China => &["botframework.azure.cn"],
    }
}

/// Decides which service URLs are acceptable Connector endpoints.
#[derive(Debug, Clone, Default)]
pub struct ConnectorPolicy {
    /// `serve --dev`: the Agents Playground's loopback connector is acceptable too.
    pub dev: bool,
    /// Operator-configured endpoints (`clouds.<cloud>.connector_endpoints`), normalised: acceptable in
    /// any mode, for bots of that cloud, and they receive real tokens.
    endpoints: Vec<(Cloud, String)>,
}

/// Why a service URL is not an acceptable Connector endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServiceUrlError {
    #[error("not a valid service URL")]
    Malformed,
    #[error("service URL host is not an allow-listed Connector host")]
    NotAllowed,
}

impl ConnectorPolicy {
    /// The allow-list alone (plus the Playground's loopback connector when `dev`).
    pub fn new(dev: bool) -> Self {
        Self { dev, endpoints: Vec::new() }
    }

    /// With each cloud's `connector_endpoints` from the configuration.
    pub fn from_config(clouds: &crate::config::CloudsConfig, dev: bool) -> Self {
        let mut p = Self::new(dev);
        for cloud in Cloud::ALL {
            for e in &clouds.get(cloud).connector_endpoints {
                p = p.with_endpoint(cloud, e);
            }
        }
        p
    }

    /// Also accept service URLs equal to `endpoint` or under it (at a path-segment boundary), for bots of
    /// `cloud`. An endpoint that does not normalise is ignored (the configuration refuses it earlier).
    #[must_use]
    pub fn with_endpoint(mut self, cloud: Cloud, endpoint: &str) -> Self {
        if let Some(n) = normalize(endpoint) {
            self.endpoints.push((cloud, n));
        }
        self
    }

    /// Whether `raw` is (under) an operator-configured Connector endpoint of `cloud`. Such an endpoint
    /// gets real tokens even when it looks like the Playground's loopback connector: the operator named it.
    pub fn is_configured_endpoint(&self, cloud: Cloud, raw: &str) -> bool {
        !self.endpoints.is_empty() && normalize(raw).is_some_and(|n| self.under_endpoint(cloud, &n))
    }

    /// [`ConnectorPolicy::is_configured_endpoint`] of a URL parsed already.
    pub fn is_configured_endpoint_url(&self, cloud: Cloud, u: &Url) -> bool {
        !self.endpoints.is_empty() && normalize_url(u).is_some_and(|n| self.under_endpoint(cloud, &n))
    }

    fn under_endpoint(&self, cloud: Cloud, normalized: &str) -> bool {
        self.endpoints
            .iter()
            .any(|(c, e)| *c == cloud && normalized.strip_prefix(e.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    }

    /// Whether a call to `raw` must carry the dev placeholder instead of a real token: the Playground's
    /// loopback connector, unless the operator configured it as an endpoint.
    pub fn placeholder_only(&self, cloud: Cloud, raw: &str) -> bool {
        is_dev_connector_str(raw) && !self.is_configured_endpoint(cloud, raw)
    }

    pub fn check(&self, cloud: Cloud, raw: &str) -> Result<(), ServiceUrlError> {
        self.check_url(cloud, &Url::parse(raw.trim()).map_err(|_| ServiceUrlError::Malformed)?)
    }

    /// [`ConnectorPolicy::check`] of a URL parsed already.
    pub fn check_url(&self, cloud: Cloud, u: &Url) -> Result<(), ServiceUrlError> {
        if normalize_url(u).is_none() {
            return Err(ServiceUrlError::Malformed);
        }
        if self.is_configured_endpoint_url(cloud, u) {
            return Ok(());
        }
        if self.dev && is_dev_connector(u) {
            return Ok(());
        }
        if u.scheme() != "https" {
            return Err(ServiceUrlError::NotAllowed);
        }
        let Some(Host::Domain(host)) = u.host() else {
            return Err(ServiceUrlError::NotAllowed); // IP literals never
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ok = connector_suffixes(cloud)
            .iter()
            .any(|s| host == *s || (host.len() > s.len() && host.ends_with(s) && host.as_bytes()[host.len() - s.len() - 1] == b'.'));
        if ok { Ok(()) } else { Err(ServiceUrlError::NotAllowed) }
    }
}

/// The Agents Playground's mock Connector: `http://localhost:<port>/_connector` (or 127.0.0.1 / [::1]).
pub(crate) fn is_dev_connector(u: &Url) -> bool {
    let loopback = match u.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    u.scheme() == "http" && loopback && (u.path() == "/_connector" || u.path().starts_with("/_connector/"))
}

/// Convenience for a raw string.
pub(crate) fn is_dev_connector_str(raw: &str) -> bool {
    Url::parse(raw.trim()).is_ok_and(|u| is_dev_connector(&u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize("https://SMBA.trafficmanager.net/amer/").as_deref(), Some("https://smba.trafficmanager.net/amer"));
        assert_eq!(normalize("https://smba.trafficmanager.net:443/amer").as_deref(), Some("https://smba.trafficmanager.net/amer"));
        assert_eq!(normalize("http://localhost:56150/_connector/").as_deref(), Some("http://localhost:56150/_connector"));
        assert_eq!(normalize("https://victim.com@evil.com/"), None);
        assert_eq!(normalize("https://x.com/a?b=c"), None);
        assert_eq!(normalize("ftp://x.com/"), None);
        assert_eq!(normalize("not a url"), None);
    }

    #[test]
    fn a_host_of_only_dots_does_not_normalise() {
        // Found by `service_url_normalisation_is_idempotent`: the host `.` lost its dot and left
        // `https://`, and `https://./evil.test` normalised to `https:///evil.test`, which reads back as
        // host `evil.test`.
        for raw in ["https:///.", "https://./", "https://../amer", "https://./evil.test"] {
            assert_eq!(normalize(raw), None, "{raw}");
        }
        assert_eq!(normalize("https://smba.trafficmanager.net./amer").as_deref(), Some("https://smba.trafficmanager.net/amer"));
    }

    #[test]
    fn connector_allow_list() {
        let prod = ConnectorPolicy::new(false);
        let dev = ConnectorPolicy::new(true);
        for ok in [
            "https://smba.trafficmanager.net/amer/",
            "https://europe.smba.botframework.com/x",
            "https://smba.infra.gcc.teams.microsoft.com/",
        ] {
            assert_eq!(prod.check(Cloud::Public, ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://smba.trafficmanager.net/amer/",
            "https://evilbotframework.com/",
            "https://botframework.com.evil.com/",
            "https://10.0.0.1/",
            "https://victim.smba.trafficmanager.net@evil.com/",
            "http://localhost:56150/_connector",
        ] {
            assert!(prod.check(Cloud::Public, bad).is_err(), "{bad}");
        }
        assert!(prod.check(Cloud::Usgov, "https://smba.trafficmanager.net/amer/").is_err());
        assert_eq!(prod.check(Cloud::Usgov, "https://smba.infra.gov.teams.microsoft.us/x"), Ok(()));
        assert_eq!(dev.check(Cloud::Public, "http://localhost:56150/_connector"), Ok(()));
        assert_eq!(dev.check(Cloud::Public, "http://127.0.0.1:56150/_connector/"), Ok(()));
        assert!(dev.check(Cloud::Public, "http://localhost:56150/other").is_err());
        assert!(dev.check(Cloud::Public, "http://192.168.1.5:56150/_connector").is_err());
    }

    #[test]
    fn configured_endpoints_are_accepted_at_a_segment_boundary_and_get_real_tokens() {
        for dev in [false, true] {
            let p = ConnectorPolicy::new(dev)
                .with_endpoint(Cloud::Public, "http://127.0.0.1:4100/_connector/")
                .with_endpoint(Cloud::Public, "https://connector.contoso.test/teams");
            for ok in [
                "http://127.0.0.1:4100/_connector",
                "http://127.0.0.1:4100/_connector/",
                "http://127.0.0.1:4100/_connector/amer/",
                "https://Connector.Contoso.test/teams/x",
                "https://connector.contoso.test:443/teams",
            ] {
                assert_eq!(p.check(Cloud::Public, ok), Ok(()), "dev={dev} {ok}");
                assert!(p.is_configured_endpoint(Cloud::Public, ok), "{ok}");
                assert!(!p.placeholder_only(Cloud::Public, ok), "{ok}: a configured endpoint gets the real token");
            }
            for bad in [
                "http://127.0.0.1:4100/_connector2",
                "http://127.0.0.1:4100/_connectorx/y",
                "http://127.0.0.1:4101/_connector",
                "https://connector.contoso.test/teamsx",
                "https://connector.contoso.test/",
                "https://evil.test/teams",
                "http://127.0.0.1:4100/_connector?x=1",
            ] {
                assert!(!p.is_configured_endpoint(Cloud::Public, bad), "{bad}");
            }
            for bad in ["https://connector.contoso.test/teamsx", "https://evil.test/teams", "http://127.0.0.1:4100/_connector?x=1"] {
                assert!(p.check(Cloud::Public, bad).is_err(), "{bad}");
            }
            // Another cloud's bots do not get them.
            assert!(p.check(Cloud::Usgov, "https://connector.contoso.test/teams").is_err());
            assert!(!p.is_configured_endpoint(Cloud::Usgov, "http://127.0.0.1:4100/_connector"));
        }
        // `/_connector2` is not under `/_connector`: without dev mode it is refused outright.
        let p = ConnectorPolicy::new(false).with_endpoint(Cloud::Public, "http://127.0.0.1:4100/_connector");
        assert!(p.check(Cloud::Public, "http://127.0.0.1:4100/_connector2").is_err());
        // The Playground's connector that is not configured keeps getting only the placeholder.
        let dev = ConnectorPolicy::new(true).with_endpoint(Cloud::Public, "http://127.0.0.1:4100/_connector");
        assert!(dev.placeholder_only(Cloud::Public, "http://127.0.0.1:4200/_connector"));
        assert!(dev.placeholder_only(Cloud::Usgov, "http://127.0.0.1:4100/_connector"));
        assert!(!dev.placeholder_only(Cloud::Public, "https://smba.trafficmanager.net/amer/"));
    }
}
