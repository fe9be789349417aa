//! Small helpers shared by the HTTP clients (keys, tokens, Connector, Graph), and their one retry loop
//! ([`retry`]).

pub(crate) mod retry;

use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters left as they are in a path segment; everything else (`:`, `@`, `;`, `=`, `/`, `?`, `#`, `%`…)
/// is encoded, as Microsoft's .NET clients do (`Url::path_segments_mut` would leave `:@;=` raw).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `s` percent-encoded as one URL path segment (or query value), for the Connector and Graph clients.
pub(crate) fn path_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Whether `path` (already encoded, query excluded) has an empty, `.` or `..` segment. `.` is unreserved,
/// so an id of `..` would go out as `..` and the URL parser would resolve it (`%2E%2E` too): a request meant
/// for `/v3/conversations/{id}/activities/{id}` could reach another resource. Such an id is refused before
/// anything is sent.
pub(crate) fn has_dot_or_empty_segment(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.trim_start_matches('/').split('/').any(|seg| {
        seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg.eq_ignore_ascii_case("%2e")
            || seg.eq_ignore_ascii_case("%2e%2e")
            || seg.eq_ignore_ascii_case(".%2e")
            || seg.eq_ignore_ascii_case("%2e.")
    })
}

/// An error and its causes on one line ("error sending request: connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// `Retry-After` as seconds or as an HTTP date (a date in the past is zero).
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_encode_everything_but_unreserved() {
        assert_eq!(path_segment("19:abc@thread.tacv2;messageid=123"), "19%3Aabc%40thread.tacv2%3Bmessageid%3D123");
        assert_eq!(path_segment("a:1/2 3?x#y%z&w+v"), "a%3A1%2F2%203%3Fx%23y%25z%26w%2Bv");
        assert_eq!(path_segment("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(path_segment("ü"), "%C3%BC");
    }

    #[test]
    fn dot_and_empty_segments_are_found() {
        for bad in [
            "v3/conversations/../activities",
            "v3/conversations/./x",
            "v3/conversations//activities",
            "v3/%2E%2E/x",
            "v3/.%2e/x",
            "/chats/%2e?$top=1",
        ] {
            assert!(has_dot_or_empty_segment(bad), "{bad}");
        }
        for ok in
            ["v3/conversations/a%3A..b/activities", "v3/conversations/...", "/chats/19%3Ax/messages?$filter=a/b", "v3/x/activities/1.2"]
        {
            assert!(!has_dot_or_empty_segment(ok), "{ok}");
        }
        assert!(has_dot_or_empty_segment(&format!("v3/conversations/{}/activities", path_segment(".."))));
        assert!(has_dot_or_empty_segment(&format!("v3/conversations/{}/activities", path_segment(""))));
    }

    #[test]
    fn retry_after_both_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_chain_joins_causes() {
        let io = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(io);
        assert!(error_chain(&outer).contains("connection refused"));
    }
}
