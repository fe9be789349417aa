//! Prometheus metrics, kept as plain atomics (no registry, no allocation on the request path).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::ids::Cloud;

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

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// Every metric the gateway exports on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 10],
    auth_failures: [AtomicU64; AuthReason::ALL.len()],
    key_refresh_ok: [AtomicU64; 3],
    key_refresh_err: [AtomicU64; 3],
    token_cache_hits: AtomicU64,
    outbound: [AtomicU64; 6],
    commit: Histogram,
    committed_activities: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn request(&self, o: Outcome) {
        self.requests[o as usize].fetch_add(1, Relaxed);
    }
    pub fn auth_failure(&self, r: AuthReason) {
        self.auth_failures[r as usize].fetch_add(1, Relaxed);
    }
    pub fn key_refresh(&self, cloud: Cloud, ok: bool) {
        let arr = if ok { &self.key_refresh_ok } else { &self.key_refresh_err };
        arr[cloud.index()].fetch_add(1, Relaxed);
    }
    pub fn outbound(&self, o: OutboundOutcome) {
        self.outbound[o as usize].fetch_add(1, Relaxed);
    }
    pub fn token_cache_hit(&self) {
        self.token_cache_hits.fetch_add(1, Relaxed);
    }
    /// One group commit of `n` activities took `d`.
    pub fn commit(&self, d: Duration, n: usize) {
        let secs = d.as_secs_f64();
        for (i, ub) in COMMIT_BUCKETS.iter().enumerate() {
            if secs <= *ub {
                self.commit.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.commit.count.fetch_add(1, Relaxed);
        self.commit.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.committed_activities.fetch_add(n as u64, Relaxed);
    }

    pub fn requests_total(&self, o: Outcome) -> u64 {
        self.requests[o as usize].load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let _ = writeln!(s, "# HELP agentgate_requests_total Requests to /api/messages by outcome.");
        let _ = writeln!(s, "# TYPE agentgate_requests_total counter");
        for o in Outcome::ALL {
            let _ = writeln!(s, "agentgate_requests_total{{outcome=\"{}\"}} {}", o.label(), self.requests_total(*o));
        }
        let _ = writeln!(s, "# HELP agentgate_auth_failures_total Refused inbound tokens by reason.");
        let _ = writeln!(s, "# TYPE agentgate_auth_failures_total counter");
        for r in AuthReason::ALL {
            let _ =
                writeln!(s, "agentgate_auth_failures_total{{reason=\"{}\"}} {}", r.label(), self.auth_failures[*r as usize].load(Relaxed));
        }
        let _ = writeln!(s, "# HELP agentgate_key_refreshes_total Signing-key (OpenID metadata + JWKS) fetches by cloud and result.");
        let _ = writeln!(s, "# TYPE agentgate_key_refreshes_total counter");
        for c in Cloud::ALL {
            let _ = writeln!(
                s,
                "agentgate_key_refreshes_total{{cloud=\"{c}\",result=\"ok\"}} {}",
                self.key_refresh_ok[c.index()].load(Relaxed)
            );
            let _ = writeln!(
                s,
                "agentgate_key_refreshes_total{{cloud=\"{c}\",result=\"error\"}} {}",
                self.key_refresh_err[c.index()].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP agentgate_token_cache_hits_total Requests whose token signature was already verified.");
        let _ = writeln!(s, "# TYPE agentgate_token_cache_hits_total counter");
        let _ = writeln!(s, "agentgate_token_cache_hits_total {}", self.token_cache_hits.load(Relaxed));
        let _ = writeln!(s, "# HELP agentgate_outbound_attempts_total Outbound Connector attempts by outcome.");
        let _ = writeln!(s, "# TYPE agentgate_outbound_attempts_total counter");
        for o in OutboundOutcome::ALL {
            let _ =
                writeln!(s, "agentgate_outbound_attempts_total{{outcome=\"{}\"}} {}", o.label(), self.outbound[*o as usize].load(Relaxed));
        }
        let _ = writeln!(s, "# HELP agentgate_store_commit_seconds Latency of one durable group commit.");
        let _ = writeln!(s, "# TYPE agentgate_store_commit_seconds histogram");
        for (i, ub) in COMMIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(s, "agentgate_store_commit_seconds_bucket{{le=\"{ub}\"}} {}", self.commit.buckets[i].load(Relaxed));
        }
        let count = self.commit.count.load(Relaxed);
        let _ = writeln!(s, "agentgate_store_commit_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(s, "agentgate_store_commit_seconds_sum {}", self.commit.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(s, "agentgate_store_commit_seconds_count {count}");
        let _ = writeln!(s, "# HELP agentgate_store_committed_activities_total Activities made durable.");
        let _ = writeln!(s, "# TYPE agentgate_store_committed_activities_total counter");
        let _ = writeln!(s, "agentgate_store_committed_activities_total {}", self.committed_activities.load(Relaxed));
        s
    }
}

/// The audit chain's head, read from the store at each scrape: its event count and, as an info metric, its
/// newest id and hash (to be kept outside the database).
/// `head` is the head as `agentgate audit --verify` prints it (`count/last_id/hash`).
pub fn render_audit_head(s: &mut String, head: &str, count: u64, last_id: i64, hash: &str) {
    let _ = writeln!(s, "# HELP agentgate_audit_events_total Events in the audit chain.");
    let _ = writeln!(s, "# TYPE agentgate_audit_events_total counter");
    let _ = writeln!(s, "agentgate_audit_events_total {count}");
    let _ = writeln!(s, "# HELP agentgate_audit_head_info The audit chain's head (`agentgate audit --verify --expect-head`).");
    let _ = writeln!(s, "# TYPE agentgate_audit_head_info gauge");
    let _ = writeln!(s, "agentgate_audit_head_info{{head=\"{head}\",last_id=\"{last_id}\",hash=\"{hash}\"}} 1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_fit_the_label_sets() {
        let m = Metrics::default();
        assert_eq!(m.requests.len(), Outcome::ALL.len());
        assert_eq!(m.auth_failures.len(), AuthReason::ALL.len());
        assert_eq!(m.outbound.len(), OutboundOutcome::ALL.len());
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
    }
}
