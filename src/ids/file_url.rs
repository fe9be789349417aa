//! Where file bytes may be fetched from or sent to without a bearer token: SharePoint and OneDrive.
//!
//! A Teams file attachment in a 1:1 chat carries a short-lived, pre-authenticated `downloadUrl`; the file
//! consent flow and a Graph upload session hand back a pre-authenticated `uploadUrl`; Graph answers a
//! driveItem's `/content` with a redirect to a pre-authenticated download. Those URLs come from
//! activities and answers, so they are an SSRF surface: the gateway fetches or uploads only over https to
//! a SharePoint host ([`FILE_HOST_SUFFIXES`], the host itself or a subdomain at a label boundary; never
//! an IP literal, never another port), or to an origin the operator configured (`files.endpoints`: a
//! base URL, matched at a path-segment boundary; plain http only on loopback, for local fakes). Errors
//! name the host only: these URLs carry credentials in their query.

use std::fmt;

use url::{Host, Url};

/// The SharePoint (and OneDrive for work or school) hosts, per cloud: public, US Government (GCC High and
/// DoD), China (21Vianet).
pub const FILE_HOST_SUFFIXES: [&str; 4] = ["sharepoint.com", "sharepoint.us", "sharepoint-mil.us", "sharepoint.cn"];

/// Why a URL may not be fetched or written to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileUrlError {
    /// Not an absolute URL, or one with user info.
    #[error("the file URL is not a usable URL")]
    Malformed,
    /// Another host (the host is named; the rest of the URL is not shown: it may carry a credential).
    #[error(
        "the file URL's host `{0}` is not a SharePoint or OneDrive host (https, *.sharepoint.com, *.sharepoint.us, *.sharepoint-mil.us, *.sharepoint.cn) nor a configured files.endpoints entry; nothing was fetched or sent"
    )]
    NotAllowed(String),
}

/// The file-host policy: SharePoint hosts plus the configured endpoints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FileHosts {
    /// Configured base URLs, parsed.
    endpoints: Vec<Url>,
}

impl fmt::Debug for FileHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.endpoints.iter().map(|u| format!("{}://{}", u.scheme(), host_port(u))).collect();
        f.debug_struct("FileHosts").field("endpoints", &list).finish()
    }
}

/// `host` or `host:port`, as the error shows it.
fn host_port(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

impl FileHosts {
    /// The policy with these configured endpoints (ones that do not parse, or carry user info, a query or
    /// a fragment, are ignored: the configuration refuses them earlier).
    pub fn new(endpoints: &[String]) -> Self {
        let endpoints = endpoints
            .iter()
            .filter_map(|e| Url::parse(e.trim()).ok())
            .filter(|u| u.username().is_empty() && u.password().is_none() && u.query().is_none() && u.fragment().is_none())
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .collect();
        Self { endpoints }
    }

    /// Whether bytes may be fetched from, or sent to, `url` (without any token of ours).
    pub fn check(&self, url: &Url) -> Result<(), FileUrlError> {
        if !url.username().is_empty() || url.password().is_some() || url.cannot_be_a_base() {
            return Err(FileUrlError::Malformed);
        }
        if self.endpoints.iter().any(|e| under(e, url)) {
            return Ok(());
        }
        let Some(Host::Domain(host)) = url.host() else {
            return Err(FileUrlError::NotAllowed(host_port(url)));
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let sharepoint = FILE_HOST_SUFFIXES
            .iter()
            .any(|s| host == *s || (host.len() > s.len() && host.ends_with(s) && host.as_bytes()[host.len() - s.len() - 1] == b'.'));
        if url.scheme() == "https" && url.port().is_none() && sharepoint { Ok(()) } else { Err(FileUrlError::NotAllowed(host_port(url))) }
    }

    /// [`FileHosts::check`] of a string.
    pub fn check_str(&self, raw: &str) -> Result<Url, FileUrlError> {
        let url = Url::parse(raw.trim()).map_err(|_| FileUrlError::Malformed)?;
        self.check(&url)?;
        Ok(url)
    }
}

/// Whether `url` is `base` or under it: same scheme, host and port, and the path continues at a segment
/// boundary.
fn under(base: &Url, url: &Url) -> bool {
    let same_origin = base.scheme() == url.scheme()
        && base.host_str().map(str::to_ascii_lowercase) == url.host_str().map(str::to_ascii_lowercase)
        && base.port_or_known_default() == url.port_or_known_default();
    let base_path = base.path().trim_end_matches('/');
    same_origin && url.path().strip_prefix(base_path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &FileHosts, s: &str) -> bool {
        p.check_str(s).is_ok()
    }

    #[test]
    fn sharepoint_hosts_over_https_only() {
        let p = FileHosts::default();
        for good in [
            "https://contoso.sharepoint.com/sites/x/f.txt",
            "https://contoso-my.sharepoint.com/personal/a/_layouts/15/download.aspx?UniqueId=1&tempauth=xyz",
            "https://CONTOSO.SharePoint.com./a",
            "https://agency.sharepoint.us/a",
            "https://agency.sharepoint-mil.us/a",
            "https://contoso.sharepoint.cn/a",
            "https://sharepoint.com/a",
        ] {
            assert!(ok(&p, good), "{good}");
        }
        for bad in [
            "http://contoso.sharepoint.com/a",
            "https://contoso.sharepoint.com:8443/a",
            "https://evilsharepoint.com/a",
            "https://sharepoint.com.evil.test/a",
            "https://contoso.sharepoint.com@evil.test/a",
            "https://user:pw@contoso.sharepoint.com/a",
            "https://10.0.0.5/a",
            "https://[::1]/a",
            "https://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8080/download",
            "file:///etc/passwd",
            "https://graph.microsoft.com/v1.0/me",
            "https://smba.trafficmanager.net/amer/v3/attachments/x",
            "not a url",
        ] {
            assert!(!ok(&p, bad), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_host_never_the_query() {
        let e = FileHosts::default().check_str("https://evil.test:444/x?tempauth=SECRET").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("evil.test:444") && !shown.contains("SECRET") && !shown.contains("/x"), "{shown}");
    }

    #[test]
    fn configured_endpoints_at_a_segment_boundary() {
        let p = FileHosts::new(&["http://127.0.0.1:4100/files/".into(), "http://127.0.0.1:4200".into(), "https://x.test/a?q=1".into()]);
        for good in ["http://127.0.0.1:4100/files", "http://127.0.0.1:4100/files/d/1?tempauth=x", "http://127.0.0.1:4200/anything"] {
            assert!(ok(&p, good), "{good}");
        }
        for bad in [
            "http://127.0.0.1:4100/filesx",
            "http://127.0.0.1:4101/files/d",
            "https://127.0.0.1:4100/files/d",
            "http://localhost:4100/files/d",
            "https://x.test/a/b",
        ] {
            assert!(!ok(&p, bad), "{bad}");
        }
        assert!(format!("{p:?}").contains("127.0.0.1:4100"));
    }
}
