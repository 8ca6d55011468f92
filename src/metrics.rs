//! Prometheus metrics: one process-wide registry, rendered in the Prometheus text format
//! (0.0.4) at `GET /metrics`.
//!
//! Every label value comes from a closed set or from the code (route templates, provider and
//! operation names, status codes): never a user, host, pool or session id, so the number of
//! series stays bounded whatever callers send. The catalogue is in `docs/operations.md`.
//!
//! The registry is process-wide (as Prometheus client registries usually are): the parts that
//! record — the HTTP middleware, the upstream-call engine, the audit committer — are far apart
//! and each process serves one application.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{sync::LazyLock, time::Duration};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label value of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Request duration buckets in seconds (the OpenTelemetry HTTP semantic conventions' advice).
const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Audit commit buckets in seconds: a group commit takes about a millisecond on a local disk.
const AUDIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    http_request_method: &'static str,
    http_route: String,
    http_response_status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamCallLabels {
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn audit_histogram() -> Histogram {
    Histogram::new(AUDIT_BUCKETS)
}

/// Every series sessiongate exports.
struct Metrics {
    registry: Registry,
    http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    upstream_calls: Family<UpstreamCallLabels, Counter>,
    upstream_retries: Family<UpstreamLabels, Counter>,
    upstream_throttles: Family<UpstreamLabels, Counter>,
    audit_commit: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    audit_queue: Gauge,
    auth_failures: Family<ReasonLabels, Counter>,
    jobs_running: Gauge,
    jobs_finished: Family<StateLabels, Counter>,
    tls_reloads: Family<OutcomeLabels, Counter>,
    tls_not_after: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let http_duration =
            Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                http_histogram as fn() -> Histogram,
            );
        registry.register(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests",
            http_duration.clone(),
        );
        let upstream_calls = Family::<UpstreamCallLabels, Counter>::default();
        registry.register(
            "sessiongate_upstream_calls",
            "Logical upstream calls (all attempts of one call count once) by outcome",
            upstream_calls.clone(),
        );
        let upstream_retries = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "sessiongate_upstream_retries",
            "Upstream attempts repeated after a transient failure",
            upstream_retries.clone(),
        );
        let upstream_throttles = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "sessiongate_upstream_throttles",
            "Upstream 429 answers (waited out or ending the call)",
            upstream_throttles.clone(),
        );
        let audit_commit =
            Family::<OutcomeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                audit_histogram as fn() -> Histogram,
            );
        registry.register(
            "sessiongate_audit_commit_duration_seconds",
            "Duration of one audit group commit (one transaction)",
            audit_commit.clone(),
        );
        let audit_queue = Gauge::default();
        registry.register(
            "sessiongate_audit_queue_depth",
            "Audit events waiting for the committer",
            audit_queue.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sessiongate_auth_failures",
            "Requests refused authentication, by reason",
            auth_failures.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register(
            "sessiongate_jobs_running",
            "Jobs this process is running now",
            jobs_running.clone(),
        );
        let jobs_finished = Family::<StateLabels, Counter>::default();
        registry.register(
            "sessiongate_jobs_finished",
            "Jobs this process ran to an end, by final state (succeeded, completed_with_errors, failed, cancelled)",
            jobs_finished.clone(),
        );
        let tls_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sessiongate_tls_reloads",
            "Reloads of the TLS certificate, key and client CA files after they changed (ok), or attempts that kept the previous ones (error)",
            tls_reloads.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "sessiongate_tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (Unix time; 0 without [server.tls])",
            tls_not_after.clone(),
        );
        Self {
            registry,
            tls_reloads,
            tls_not_after,
            jobs_running,
            jobs_finished,
            http_duration,
            upstream_calls,
            upstream_retries,
            upstream_throttles,
            audit_commit,
            audit_queue,
            auth_failures,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The whole registry in the Prometheus text format.
pub fn render() -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &METRICS.registry)?;
    Ok(out)
}

/// A job run started (+1) or stopped (-1) in this process.
pub fn job_running(delta: i64) {
    METRICS.jobs_running.inc_by(delta);
}

/// A job this process ran reached its final `state`.
pub fn job_finished(state: &'static str) {
    METRICS
        .jobs_finished
        .get_or_create(&StateLabels { state })
        .inc();
}

/// The method label: the standard methods as sent, anything else `_OTHER` (as the
/// OpenTelemetry conventions say), so an invented method cannot add series.
pub fn method_label(m: &http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

/// One HTTP request served. `route` is the matched route template ([`UNMATCHED_ROUTE`] when
/// none matched), never the raw path.
pub fn http_request(method: &http::Method, route: Option<&str>, status: u16, elapsed: Duration) {
    METRICS
        .http_duration
        .get_or_create(&HttpLabels {
            http_request_method: method_label(method),
            http_route: route.unwrap_or(UNMATCHED_ROUTE).to_string(),
            http_response_status_code: status,
        })
        .observe(elapsed.as_secs_f64());
}

/// The provider label of an upstream-call engine's service name.
pub fn provider_label(service: &str) -> &'static str {
    match service {
        "ARM" => "avd",
        "the classic broker" => "wvd_classic",
        "ServiceNow" => "servicenow",
        "Jira" => "jira",
        "the callback receiver" => "callback",
        _ => "other",
    }
}

/// What one logical upstream call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTally {
    /// `ok`, or why it failed (see `docs/operations.md`).
    pub outcome: &'static str,
    pub retries: u32,
    pub throttles: u32,
}

/// One logical upstream call finished.
pub fn upstream_call(provider: &'static str, operation: &'static str, t: UpstreamTally) {
    METRICS
        .upstream_calls
        .get_or_create(&UpstreamCallLabels {
            provider,
            operation,
            outcome: t.outcome,
        })
        .inc();
    let labels = UpstreamLabels {
        provider,
        operation,
    };
    if t.retries > 0 {
        METRICS
            .upstream_retries
            .get_or_create(&labels)
            .inc_by(u64::from(t.retries));
    }
    if t.throttles > 0 {
        METRICS
            .upstream_throttles
            .get_or_create(&labels)
            .inc_by(u64::from(t.throttles));
    }
}

/// An audit group commit finished (`ok` says whether it committed).
pub fn audit_commit(ok: bool, elapsed: Duration) {
    METRICS
        .audit_commit
        .get_or_create(&OutcomeLabels {
            outcome: if ok { "ok" } else { "error" },
        })
        .observe(elapsed.as_secs_f64());
}

/// `n` audit events entered (positive) or left (negative) the committer's queue.
pub fn audit_queue_add(n: i64) {
    METRICS.audit_queue.inc_by(n);
}

/// A request was refused authentication; `reason` is the auth error's stable code.
pub fn auth_failure(reason: &'static str) {
    METRICS
        .auth_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// A changed set of TLS files was loaded (`ok`) or refused, keeping the previous (`error`).
pub fn tls_reload(ok: bool) {
    METRICS
        .tls_reloads
        .get_or_create(&OutcomeLabels {
            outcome: if ok { "ok" } else { "error" },
        })
        .inc();
}

/// The served certificate's expiry (Unix seconds).
pub fn tls_certificate_not_after(unix_secs: i64) {
    METRICS.tls_not_after.set(unix_secs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        http_request(
            &http::Method::from_bytes(b"BREW").unwrap(),
            None,
            404,
            Duration::from_millis(3),
        );
        upstream_call(
            provider_label("ARM"),
            "delete",
            UpstreamTally {
                outcome: "ok",
                retries: 2,
                throttles: 1,
            },
        );
        let text = render().unwrap();
        assert!(text.contains(
            r#"http_server_request_duration_seconds_bucket{http_request_method="_OTHER",http_route="(unmatched)",http_response_status_code="404",le="0.005"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"sessiongate_upstream_retries_total{provider="avd",operation="delete"} 2"#
        ));
        assert!(text.contains(
            r#"sessiongate_upstream_calls_total{provider="avd",operation="delete",outcome="ok"} 1"#
        ));
        assert_eq!(provider_label("the classic broker"), "wvd_classic");
    }
}
