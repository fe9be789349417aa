//! Prometheus metrics on a `prometheus-client` registry. Every label set is fixed, so each series' handle
//! is resolved once at start: the request path adds to an atomic, with no label lookup, hash or lock.
//!
//! To add a metric: a field holding its handle(s), one `registry.register(…)` in [`Metrics::new`].

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ids::Cloud;

/// The `Content-Type` of [`Metrics::render`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $label:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn label(self) -> &'static str { match self { $($name::$variant => $label),* } }
        }
    };
}

label_enum!(
    /// How a request to `/api/messages` ended.
    Outcome {
        Accepted => "accepted",
        Duplicate => "duplicate",
        BadRequest => "bad_request",
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        MethodNotAllowed => "method_not_allowed",
        PayloadTooLarge => "payload_too_large",
        UnsupportedMediaType => "unsupported_media_type",
        Unavailable => "unavailable",
        TimedOut => "timed_out",
    }
);

label_enum!(
    /// Why an inbound token was refused (the log says more; the response never does).
    AuthReason {
        MissingHeader => "missing_header",
        NotBearer => "not_bearer",
        Malformed => "malformed",
        BadAlgorithm => "bad_algorithm",
        MissingKid => "missing_kid",
        UnknownKid => "unknown_kid",
        BadSignature => "bad_signature",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        MissingClaim => "missing_claim",
        WrongIssuer => "wrong_issuer",
        WrongAudience => "wrong_audience",
        MissingServiceUrl => "missing_serviceurl",
        ServiceUrlMismatch => "serviceurl_mismatch",
        EndorsementMissing => "endorsement_missing",
        DevAnonymousRefused => "anonymous_refused",
        TenantNotAllowed => "tenant_not_allowed",
        CallerNotAllowed => "caller_not_allowed",
        TenantMismatch => "tenant_mismatch",
    }
);

label_enum!(
    /// How one outbound attempt ended.
    OutboundOutcome {
        Delivered => "delivered",
        Retried => "retried",
        Uncertain => "uncertain",
        Dead => "dead",
        Throttled => "throttled_locally",
        Skipped => "skipped",
    }
);

/// Upper bounds (seconds) of the commit-latency histogram.
const COMMIT_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// A label set of a family.
type Labels = Vec<(&'static str, String)>;

/// Every metric the gateway exports on `/metrics`: the registry, and a handle per fixed series.
pub struct Metrics {
    registry: Registry,
    /// Indexed by `Outcome as usize`.
    requests: Vec<Counter>,
    /// Indexed by `AuthReason as usize`.
    auth_failures: Vec<Counter>,
    /// Indexed by `Cloud::index()`.
    key_refresh_ok: Vec<Counter>,
    key_refresh_err: Vec<Counter>,
    token_cache_hits: Counter,
    /// Indexed by `OutboundOutcome as usize`.
    outbound: Vec<Counter>,
    commit: Histogram,
    committed_activities: Counter,
    /// The audit chain's length and head, set from the store at each scrape.
    audit_events: Counter,
    audit_head: Family<Labels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `family` under `name` and resolves one counter per label set, in order.
fn counters(registry: &mut Registry, name: &str, help: &str, label_sets: impl IntoIterator<Item = Labels>) -> Vec<Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    label_sets.into_iter().map(|labels| family.get_or_create(&labels).clone()).collect()
}

impl Metrics {
    /// The registry with every metric, at zero. Help texts go without the final period (the encoder adds it).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let one = |key: &'static str, value: &'static str| vec![(key, value.to_owned())];
        let requests = counters(
            &mut registry,
            "agentgate_requests",
            "Requests to /api/messages by outcome",
            Outcome::ALL.iter().map(|o| one("outcome", o.label())),
        );
        let auth_failures = counters(
            &mut registry,
            "agentgate_auth_failures",
            "Refused inbound tokens by reason",
            AuthReason::ALL.iter().map(|r| one("reason", r.label())),
        );
        let refreshes = Family::<Labels, Counter>::default();
        registry.register("agentgate_key_refreshes", "Signing-key (OpenID metadata + JWKS) fetches by cloud and result", refreshes.clone());
        let refresh = |result: &'static str| -> Vec<Counter> {
            Cloud::ALL
                .iter()
                .map(|c| refreshes.get_or_create(&vec![("cloud", c.to_string()), ("result", result.to_owned())]).clone())
                .collect()
        };
        let (key_refresh_ok, key_refresh_err) = (refresh("ok"), refresh("error"));
        let token_cache_hits = Counter::default();
        registry.register("agentgate_token_cache_hits", "Requests whose token signature was already verified", token_cache_hits.clone());
        let outbound = counters(
            &mut registry,
            "agentgate_outbound_attempts",
            "Outbound Connector attempts by outcome",
            OutboundOutcome::ALL.iter().map(|o| one("outcome", o.label())),
        );
        let commit = Histogram::new(COMMIT_BUCKETS);
        registry.register("agentgate_store_commit_seconds", "Latency of one durable group commit", commit.clone());
        let committed_activities = Counter::default();
        registry.register("agentgate_store_committed_activities", "Activities made durable", committed_activities.clone());
        let audit_events = Counter::default();
        registry.register("agentgate_audit_events", "Events in the audit chain", audit_events.clone());
        let audit_head = Family::<Labels, Gauge>::default();
        registry.register(
            "agentgate_audit_head_info",
            "The audit chain's head as `agentgate audit --verify --expect-head` takes it: keep it outside the database",
            audit_head.clone(),
        );
        Self {
            registry,
            requests,
            auth_failures,
            key_refresh_ok,
            key_refresh_err,
            token_cache_hits,
            outbound,
            commit,
            committed_activities,
            audit_events,
            audit_head,
        }
    }

    /// The audit chain's head (`count/last_id/hash`, as `agentgate audit --verify` prints it), read from the
    /// store before a scrape. The count only grows; a smaller one (rows deleted) is logged, not shown.
    pub fn audit_head(&self, head: &str, count: u64, last_id: i64, hash: &str) {
        let shown = self.audit_events.get();
        if count >= shown {
            self.audit_events.inc_by(count - shown);
        } else {
            tracing::error!(count, shown, "the audit chain is shorter than before: events were deleted");
        }
        self.audit_head.clear();
        let labels = vec![("head", head.to_owned()), ("last_id", last_id.to_string()), ("hash", hash.to_owned())];
        self.audit_head.get_or_create(&labels).set(1);
    }

    pub fn request(&self, o: Outcome) {
        inc(&self.requests, o as usize);
    }
    pub fn auth_failure(&self, r: AuthReason) {
        inc(&self.auth_failures, r as usize);
    }
    pub fn key_refresh(&self, cloud: Cloud, ok: bool) {
        inc(if ok { &self.key_refresh_ok } else { &self.key_refresh_err }, cloud.index());
    }
    pub fn outbound(&self, o: OutboundOutcome) {
        inc(&self.outbound, o as usize);
    }
    pub fn token_cache_hit(&self) {
        self.token_cache_hits.inc();
    }
    /// One group commit of `n` activities took `d`.
    pub fn commit(&self, d: Duration, n: usize) {
        self.commit.observe(d.as_secs_f64());
        self.committed_activities.inc_by(n as u64);
    }

    pub fn requests_total(&self, o: Outcome) -> u64 {
        self.requests.get(o as usize).map_or(0, Counter::get)
    }

    /// The exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Adds one to the series at `i` (every index comes from a fixed label set, so it is always there).
fn inc(series: &[Counter], i: usize) {
    if let Some(c) = series.get(i) {
        c.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_has_its_series() {
        let m = Metrics::default();
        assert_eq!(m.requests.len(), Outcome::ALL.len());
        assert_eq!(m.auth_failures.len(), AuthReason::ALL.len());
        assert_eq!(m.outbound.len(), OutboundOutcome::ALL.len());
        assert_eq!(m.key_refresh_ok.len(), Cloud::ALL.len());
        for o in Outcome::ALL {
            m.request(*o);
        }
        for r in AuthReason::ALL {
            m.auth_failure(*r);
        }
        for o in OutboundOutcome::ALL {
            m.outbound(*o);
        }
        for c in Cloud::ALL {
            m.key_refresh(c, true);
            m.key_refresh(c, false);
            m.key_refresh(c, false);
        }
        let text = m.render();
        for o in Outcome::ALL {
            assert!(text.contains(&format!("agentgate_requests_total{{outcome=\"{}\"}} 1\n", o.label())), "{text}");
            assert_eq!(m.requests_total(*o), 1);
        }
        for r in AuthReason::ALL {
            assert!(text.contains(&format!("agentgate_auth_failures_total{{reason=\"{}\"}} 1\n", r.label())), "{text}");
        }
        for o in OutboundOutcome::ALL {
            assert!(text.contains(&format!("agentgate_outbound_attempts_total{{outcome=\"{}\"}} 1\n", o.label())), "{text}");
        }
        for c in Cloud::ALL {
            assert!(text.contains(&format!("agentgate_key_refreshes_total{{cloud=\"{c}\",result=\"ok\"}} 1\n")), "{text}");
            assert!(text.contains(&format!("agentgate_key_refreshes_total{{cloud=\"{c}\",result=\"error\"}} 2\n")), "{text}");
        }
    }

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.request(Outcome::Accepted);
        m.request(Outcome::Accepted);
        m.auth_failure(AuthReason::Expired);
        m.commit(Duration::from_micros(800), 3);
        let text = m.render();
        assert!(text.contains("agentgate_requests_total{outcome=\"accepted\"} 2"), "{text}");
        assert!(text.contains("agentgate_auth_failures_total{reason=\"expired\"} 1"));
        assert!(text.contains("agentgate_store_commit_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("agentgate_store_commit_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("agentgate_store_committed_activities_total 3"));
        assert!(text.contains("agentgate_store_commit_seconds_bucket{le=\"5.0\"} 1"), "{text}");
        assert!(text.contains("agentgate_store_commit_seconds_bucket{le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("agentgate_store_commit_seconds_count 1"), "{text}");
        assert!(text.contains("agentgate_store_commit_seconds_sum 0.0008"), "{text}");
        for (name, kind, help) in [
            ("agentgate_requests", "counter", "Requests to /api/messages by outcome."),
            ("agentgate_auth_failures", "counter", "Refused inbound tokens by reason."),
            ("agentgate_key_refreshes", "counter", "Signing-key (OpenID metadata + JWKS) fetches by cloud and result."),
            ("agentgate_token_cache_hits", "counter", "Requests whose token signature was already verified."),
            ("agentgate_outbound_attempts", "counter", "Outbound Connector attempts by outcome."),
            ("agentgate_store_commit_seconds", "histogram", "Latency of one durable group commit."),
            ("agentgate_store_committed_activities", "counter", "Activities made durable."),
        ] {
            assert!(text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")), "{name}: {text}");
        }
        assert!(text.contains("agentgate_token_cache_hits_total 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
