//! An inbound request body, read the intake's way: parse, round trip, tenant, `serviceUrl` normalisation
//! and its binding to a token's claim, the Connector allow-list, and mention stripping.

use agentgate::fuzzing::{intake, normalize_service_url, service_url_binds};

fn check(data: &[u8]) {
    let Some(i) = intake(data) else { return };
    assert_eq!(i.reserialized, i.reserialized_twice, "a parse is stable");
    // The intake parses the URL once and normalises the parsed URL; the verifier normalises the claim string.
    // Both ways must agree, or a token could bind to a URL other than the one we reply to.
    assert_eq!(i.service_url_parsed, i.service_url_raw, "{:?}", i.service_url);
    if let Some(n) = &i.service_url_parsed {
        assert_eq!(normalize_service_url(n).as_deref(), Some(n.as_str()), "normalisation is idempotent");
        let raw = i.service_url.as_deref().unwrap_or_default();
        assert!(service_url_binds(raw, n), "the activity's own serviceUrl binds: {raw:?}");
        assert!(service_url_binds(&format!("{n}/"), n), "a trailing slash does not matter: {n:?}");
        let other = format!("{n}/x");
        assert!(!service_url_binds(&other, n), "another path does not bind: {other:?}");
    }
    if i.service_url_allowed {
        assert!(i.service_url_parsed.is_some(), "only a URL that normalises is allowed");
    }
    if let Some(t) = &i.tenant {
        let (a, b) = &i.tenant_fields;
        assert!(a.as_deref() == Some(t.as_str()) || b.as_deref() == Some(t.as_str()), "the tenant comes from a field");
    }
    let (stripped, removed) = &i.stripped;
    if *removed == 0 {
        assert_eq!(stripped, &i.text, "no mention removed, text untouched");
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
