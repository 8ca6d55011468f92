//! One engine for calls to upstream HTTP services: the AVD (ARM) and WVD classic adapters
//! today, outbound clients such as ticketing write-back later. Adapters build requests and
//! classify responses ([`Verdict`]); the engine owns everything about sending again:
//!
//! - **Token refresh.** A 401 makes the [`TokenSource`] drop its cached token and the request
//!   goes out once more with a new one (a 401 means nothing was carried out, so this holds
//!   for every call). A second 401 goes to the classifier (an authentication error).
//! - **Throttling.** A 429 is waited out for its `Retry-After` (delta-seconds or HTTP date;
//!   [`CallPolicy::default_retry_after`] when absent) as long as the wait ends within the
//!   call's [`CallPolicy::retry_budget`], for every call (a 429 is refused before it runs);
//!   otherwise the call ends at once with [`UpstreamError::Throttled`].
//! - **Pacing.** With ARM-style buckets ([`pace`], [`Upstream::with_buckets`]) every attempt
//!   first waits for a token of its kind (GET reads, DELETE deletes, others write), believing
//!   the service's `x-ms-ratelimit-remaining-*` headers over its own count and holding the
//!   bucket for a 429's `Retry-After`; with a concurrency bound ([`Upstream::with_limit`]) it
//!   waits for a slot. A wait that cannot end within the retry budget fails the call at once
//!   with [`UpstreamError::Throttled`].
//! - **Backoff.** Answers the classifier calls [`Verdict::Transient`] (typically 5xx), timeouts
//!   and broken connections are retried up to [`CallPolicy::max_retries`] times, waiting the
//!   answer's `Retry-After` (e.g. a 503's) or a jittered exponential backoff, within the budget —
//!   only for [`Repeat::Safe`] calls. A [`Repeat::Once`] call is sent again only when the
//!   connection could not be made (the request never left).
//! - **Honest uncertainty.** [`Upstream::call_tracked`] also says whether an attempt before
//!   the last one may have reached the service (its connection broke after the request was
//!   sent, it timed out, or it was answered 5xx): an adapter then knows that a "not found" on
//!   the retry of a removal may be the effect of its own first attempt. A [`Repeat::Once`]
//!   call whose connection broke after the request was sent fails with
//!   [`UpstreamError::OutcomeUnknown`], never with "could not be reached" (a timeout stays
//!   [`UpstreamError::Timeout`], which callers already read as "may have happened").
//! - **Per-call timeout.** Each attempt — sending and reading the whole body — is bounded by
//!   [`CallPolicy::timeout`]; running out is [`UpstreamError::Timeout`].
//! - **Body cap.** Every response body is read in chunks up to
//!   [`CallPolicy::max_response_bytes`]; a longer one (by `Content-Length` or as it streams)
//!   ends the call with [`UpstreamError::TooLarge`], never retried.
//!
//! The engine knows nothing of sessions: its failures are [`UpstreamError`], which each
//! caller's error type takes with `From`.
//!
//! Configuration (each HTTP provider's pool table, flat keys): `timeout_secs`, `max_retries`,
//! `retry_budget_secs` (also accepted under its old classic name `throttle_budget_secs`) and
//! `max_response_bytes` (default [`DEFAULT_MAX_RESPONSE_BYTES`]).

mod encode;
pub mod pace;
mod paging;
mod token;

pub use encode::{query, unescape};
pub use paging::{Page, follow_pages};
pub use token::{CredentialFactory, CredentialToken, TokenSource};

use crate::metrics::UpstreamTally;
use bytes::{Bytes, BytesMut};
use rand::Rng;
use reqwest::{StatusCode, header::HeaderMap};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::Instrument;

/// Default cap on one response body: 16 MiB (an ARM page of 1 000 sessions is about 1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Throttle answers waited out per call at most, whatever the budget (a guard against a
/// service that answers `Retry-After: 0` forever).
const MAX_THROTTLE_WAITS: u32 = 20;

/// How one logical call may spend its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// Bound on one attempt: sending the request and reading the whole response.
    pub timeout: Duration,
    /// Retries of a [`Repeat::Safe`] call after a transient failure.
    pub max_retries: u32,
    /// A wait (Retry-After or backoff) is only started if it ends within this long after the
    /// call began; otherwise the call fails with what went wrong last.
    pub retry_budget: Duration,
    /// Longest response body read; a longer one fails the call.
    pub max_response_bytes: u64,
    /// Wait for a 429 that carries no `Retry-After`.
    pub default_retry_after: Duration,
}

impl CallPolicy {
    /// From the knobs every HTTP provider shares. An error names the knob (without its prefix).
    pub fn from_knobs(
        timeout_secs: u64,
        max_retries: u32,
        retry_budget_secs: u64,
        max_response_bytes: u64,
        default_retry_after: Duration,
    ) -> Result<Self, (&'static str, &'static str)> {
        if timeout_secs == 0 {
            return Err(("timeout_secs", "must be at least 1"));
        }
        if max_response_bytes < 1024 {
            return Err(("max_response_bytes", "must be at least 1024"));
        }
        Ok(Self {
            timeout: Duration::from_secs(timeout_secs),
            max_retries,
            retry_budget: Duration::from_secs(retry_budget_secs),
            max_response_bytes,
            default_retry_after,
        })
    }
}

/// Whether a request may be sent again after it may have reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Safe or idempotent (a read, a DELETE, an ARM disconnect).
    Safe,
    /// Not idempotent (a message): sent again only when it certainly never left (connection
    /// refused) or the service refused it unseen (401, 429).
    Once,
}

/// A complete response (body within the cap), as the classifier sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the adapter makes of a reply other than 401/429 (the engine's own).
#[derive(Debug)]
pub enum Verdict<T, E> {
    /// The call succeeded.
    Done(T),
    /// The call failed for good.
    Fail(E),
    /// The call failed in a way that may pass (e.g. 5xx): retried if the call is safe to repeat.
    Transient(E),
}

/// Failures the engine itself reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Throttled for longer than the retry budget allows.
    #[error("throttled; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    #[error("timed out: {0}")]
    Timeout(String),
    /// Connection-level failure (DNS, TCP, TLS, dropped connection).
    #[error("transport error: {0}")]
    Transport(String),
    /// No token could be obtained (the identity provider refused our credential).
    #[error("no token: {0}")]
    Auth(String),
    /// A call that is not repeated (a message) was sent, and the connection broke before an
    /// answer: the service may have carried it out.
    #[error("no answer after the request was sent; it may have been carried out: {0}")]
    OutcomeUnknown(String),
    /// The response body is longer than the cap.
    #[error("the response (status {status}) is larger than {limit} bytes")]
    TooLarge { status: u16, limit: u64 },
    /// A paged list's next link is unusable (`code`: `InvalidNextLink` or `PagingLoop`).
    #[error("{message}")]
    Paging { code: &'static str, message: String },
}

/// The result of one logical call, and whether an attempt before the last one may have
/// reached the service (and been carried out there) although it got no usable answer.
#[derive(Debug)]
pub struct Called<T, E> {
    pub result: Result<T, E>,
    /// What befell the last such attempt (e.g. `transport error: ...`, `HTTP 503`); `None`
    /// when every earlier attempt certainly never reached the service, or there was none.
    pub earlier_attempt_may_have_acted: Option<String>,
}

/// Jittered exponential backoff for retry `attempt` (0-based): 200 ms doubling, capped at 5 s,
/// drawn from the upper half so concurrent retries spread out.
fn backoff(attempt: u32) -> Duration {
    let base_ms = 200u64.saturating_mul(1u64 << attempt.min(10)).min(5_000);
    Duration::from_millis(rand::rng().random_range(base_ms / 2..=base_ms))
}

/// `Retry-After` as delta-seconds or an HTTP date (IMF-fixdate); a date in the past is zero.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &fmt).ok()?.assume_utc();
    let d = at - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(d.whole_seconds().max(0).unsigned_abs()))
}

/// The operation label of an upstream request: its method, from a closed set.
fn operation_label(m: &reqwest::Method) -> &'static str {
    match m.as_str() {
        "GET" => "get",
        "POST" => "post",
        "PUT" => "put",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "other",
    }
}

/// The outcome label of a call that ended with one of the engine's own failures.
fn error_outcome(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Throttled { .. } => "throttled",
        UpstreamError::Timeout(_) => "timeout",
        UpstreamError::Transport(_) => "transport",
        UpstreamError::Auth(_) => "auth",
        UpstreamError::OutcomeUnknown(_) => "outcome_unknown",
        UpstreamError::TooLarge { .. } => "too_large",
        UpstreamError::Paging { .. } => "paging",
    }
}

/// One upstream service as seen by one client: HTTP client, policy and token source.
pub struct Upstream {
    service: &'static str,
    http: reqwest::Client,
    policy: CallPolicy,
    token: Option<Arc<dyn TokenSource>>,
    /// ARM-style token buckets taken before each attempt (see [`pace`]).
    buckets: Option<Arc<pace::ArmBuckets>>,
    /// At most this many attempts in flight (shared with other pools of the same upstream).
    limit: Option<Arc<tokio::sync::Semaphore>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("service", &self.service)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// When a failed attempt may be made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    /// Nothing was sent: any call may go again.
    Always,
    /// The request may have arrived: only safe calls go again.
    IfSafe,
    Never,
}

impl Upstream {
    /// `service` names the upstream in logs and messages ("ARM", "the classic broker").
    pub fn new(
        service: &'static str,
        http: reqwest::Client,
        policy: CallPolicy,
        token: Option<Arc<dyn TokenSource>>,
    ) -> Self {
        Self {
            service,
            http,
            policy,
            token,
            buckets: None,
            limit: None,
        }
    }

    /// Paces every attempt through these buckets (one token of the request's kind each).
    pub fn with_buckets(mut self, buckets: Arc<pace::ArmBuckets>) -> Self {
        self.buckets = Some(buckets);
        self
    }

    /// Bounds the attempts in flight by this semaphore.
    pub fn with_limit(mut self, limit: Arc<tokio::sync::Semaphore>) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Waits for a token of `kind` and a concurrency slot, within `deadline`.
    async fn pace(
        &self,
        kind: pace::OpKind,
        deadline: Instant,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, UpstreamError> {
        if let Some(b) = &self.buckets
            && let Err(wait) = b.bucket(kind).acquire(deadline).await
        {
            tracing::warn!(
                upstream.service = self.service,
                upstream.wait_ms = wait.as_millis() as u64,
                "no pacing token within the call's budget"
            );
            return Err(UpstreamError::Throttled {
                retry_after: wait.max(Duration::from_secs(1)),
            });
        }
        match &self.limit {
            None => Ok(None),
            Some(s) => {
                let at = tokio::time::Instant::from_std(deadline);
                match tokio::time::timeout_at(at, s.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Ok(Some(p)),
                    // The semaphore is never closed; treat it as a full one.
                    Ok(Err(_)) | Err(_) => {
                        tracing::warn!(
                            upstream.service = self.service,
                            "no concurrency slot within the call's budget"
                        );
                        Err(UpstreamError::Throttled {
                            retry_after: Duration::from_secs(1),
                        })
                    }
                }
            }
        }
    }

    /// Believes the service's own count of tokens left (`x-ms-ratelimit-remaining-*`).
    fn observe(&self, kind: pace::OpKind, headers: &HeaderMap) {
        if let Some(b) = &self.buckets
            && b.honours_remaining_headers()
            && let Some(n) = headers
                .get(kind.remaining_header())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
        {
            b.bucket(kind).observe_remaining(n);
        }
    }

    /// One logical call. `build` makes the request for each attempt (the engine adds the
    /// bearer token); `classify` judges every reply other than the 401 and 429 the engine
    /// handles itself (a 401 after the refresh does reach it).
    pub async fn call<T, E>(
        &self,
        repeat: Repeat,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        classify: impl FnMut(Reply) -> Verdict<T, E>,
    ) -> Result<T, E>
    where
        E: From<UpstreamError>,
    {
        self.call_tracked(repeat, build, classify).await.result
    }

    /// [`Upstream::call`], also telling whether an earlier attempt may have been carried out.
    pub async fn call_tracked<T, E>(
        &self,
        repeat: Repeat,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        classify: impl FnMut(Reply) -> Verdict<T, E>,
    ) -> Called<T, E>
    where
        E: From<UpstreamError>,
    {
        let mut uncertain = None;
        // The operation label: the request's HTTP method (built once more, without sending).
        let probe = build(&self.http).build().ok();
        let operation = probe
            .as_ref()
            .map_or("other", |r| operation_label(r.method()));
        let provider = crate::metrics::provider_label(self.service);
        // The client span of the whole call (attempts, waits and retries included); each
        // attempt carries its `traceparent`.
        let span = tracing::info_span!(
            "upstream",
            otel.name = %format_args!("{provider} {}", operation.to_ascii_uppercase()),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            upstream.provider = provider,
            upstream.operation = operation,
            http.request.method = %operation.to_ascii_uppercase(),
            server.address = probe.as_ref().and_then(|r| r.url().host_str()).unwrap_or(""),
            http.response.status_code = tracing::field::Empty,
            upstream.outcome = tracing::field::Empty,
            upstream.retries = tracing::field::Empty,
            upstream.throttles = tracing::field::Empty,
        );
        drop(probe);
        // Every return of `call_inner` sets the outcome; a call dropped midway is not counted.
        let mut tally = UpstreamTally {
            outcome: "auth",
            retries: 0,
            throttles: 0,
        };
        let result = self
            .call_inner(repeat, build, classify, &mut uncertain, &mut tally)
            .instrument(span.clone())
            .await;
        span.record("upstream.outcome", tally.outcome);
        span.record("upstream.retries", i64::from(tally.retries));
        span.record("upstream.throttles", i64::from(tally.throttles));
        if tally.outcome != "ok" {
            span.record("otel.status_code", "ERROR");
        }
        crate::metrics::upstream_call(provider, operation, tally);
        Called {
            result,
            earlier_attempt_may_have_acted: uncertain,
        }
    }

    async fn call_inner<T, E>(
        &self,
        repeat: Repeat,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        mut classify: impl FnMut(Reply) -> Verdict<T, E>,
        uncertain: &mut Option<String>,
        tally: &mut UpstreamTally,
    ) -> Result<T, E>
    where
        E: From<UpstreamError>,
    {
        let deadline = Instant::now() + self.policy.retry_budget;
        let mut retries = 0u32;
        let mut throttled = 0u32;
        let mut refreshed = false;
        loop {
            tally.retries = retries;
            tally.throttles = throttled;
            // Until an attempt says otherwise: failing to get or refresh our token.
            tally.outcome = "auth";
            let mut req = build(&self.http);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.token().await?);
            }
            let mut req = req.build().map_err(|e| self.transport_error(&e))?;
            crate::telemetry::inject(req.headers_mut());
            let kind = pace::OpKind::of(req.method());
            let permit = self.pace(kind, deadline).await?;
            let outcome = self.attempt(req).await;
            drop(permit);
            let (err, again, hint, status, what) = match outcome {
                Ok(reply) => {
                    let status = reply.status;
                    tracing::Span::current()
                        .record("http.response.status_code", i64::from(status.as_u16()));
                    self.observe(kind, &reply.headers);
                    if status == StatusCode::UNAUTHORIZED
                        && !refreshed
                        && let Some(t) = &self.token
                    {
                        refreshed = true;
                        tracing::warn!(
                            upstream.service = self.service,
                            "token refused; fetching a new one"
                        );
                        t.refresh()?;
                        continue;
                    }
                    let hint = retry_after(&reply.headers);
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = hint.unwrap_or(self.policy.default_retry_after);
                        if let Some(b) = &self.buckets {
                            b.bucket(kind).hold(wait);
                        }
                        throttled += 1;
                        tally.throttles = throttled;
                        if Instant::now() + wait > deadline || throttled > MAX_THROTTLE_WAITS {
                            tracing::warn!(
                                upstream.service = self.service,
                                upstream.retry_after_secs = wait.as_secs(),
                                "throttled beyond the retry budget"
                            );
                            tally.outcome = "throttled";
                            return Err(UpstreamError::Throttled { retry_after: wait }.into());
                        }
                        tracing::info!(
                            upstream.service = self.service,
                            upstream.retry_after_secs = wait.as_secs(),
                            "throttled; waiting Retry-After"
                        );
                        // Paced calls wait in the bucket (held until then), in turn.
                        if self.buckets.is_none() {
                            tokio::time::sleep(wait).await;
                        }
                        continue;
                    }
                    match classify(reply) {
                        Verdict::Done(v) => {
                            tally.outcome = "ok";
                            return Ok(v);
                        }
                        Verdict::Fail(e) => {
                            tally.outcome = "failed";
                            return Err(e);
                        }
                        Verdict::Transient(e) => {
                            tally.outcome = "transient";
                            (
                                e,
                                Again::IfSafe,
                                hint,
                                Some(status.as_u16()),
                                format!("HTTP {}", status.as_u16()),
                            )
                        }
                    }
                }
                Err((e, again)) => {
                    let what = e.to_string();
                    let e = match e {
                        // Sent, unanswered, and not to be repeated: say so, not "unreachable".
                        // (A timeout keeps its own code, whose text already says so.)
                        UpstreamError::Transport(m)
                            if again == Again::IfSafe && repeat == Repeat::Once =>
                        {
                            UpstreamError::OutcomeUnknown(m)
                        }
                        e => e,
                    };
                    tally.outcome = error_outcome(&e);
                    (E::from(e), again, None, None, what)
                }
            };
            let may = match again {
                Again::Always => true,
                Again::IfSafe => repeat == Repeat::Safe,
                Again::Never => false,
            };
            if !may || retries >= self.policy.max_retries {
                return Err(err);
            }
            let wait = hint.unwrap_or_else(|| backoff(retries));
            if Instant::now() + wait > deadline {
                return Err(err);
            }
            if again == Again::IfSafe {
                *uncertain = Some(what);
            }
            retries += 1;
            tracing::info!(
                upstream.service = self.service,
                upstream.attempt = retries,
                upstream.status = status,
                upstream.wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends once and reads the body within the cap, all within the per-call timeout.
    async fn attempt(&self, req: reqwest::Request) -> Result<Reply, (UpstreamError, Again)> {
        let limit = self.policy.max_response_bytes;
        let exchange = async {
            let mut resp = self.http.execute(req).await.map_err(|e| {
                let again = if e.is_connect() {
                    Again::Always
                } else if e.is_builder() {
                    Again::Never
                } else {
                    Again::IfSafe
                };
                (self.transport_error(&e), again)
            })?;
            let status = resp.status();
            let too_large = || {
                (
                    UpstreamError::TooLarge {
                        status: status.as_u16(),
                        limit,
                    },
                    Again::Never,
                )
            };
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let headers = std::mem::take(resp.headers_mut());
            let mut body = BytesMut::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| (self.transport_error(&e), Again::IfSafe))?
            {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Reply {
                status,
                headers,
                body: body.freeze(),
            })
        };
        match tokio::time::timeout(self.policy.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err((
                UpstreamError::Timeout(format!(
                    "no answer from {} within {:?}",
                    self.service, self.policy.timeout
                )),
                Again::IfSafe,
            )),
        }
    }

    /// Describes a reqwest failure without its URL (a query may carry message text).
    fn transport_error(&self, e: &reqwest::Error) -> UpstreamError {
        let what = if e.is_connect() {
            "connection failed"
        } else if e.is_timeout() {
            "timed out"
        } else if e.is_body() || e.is_decode() {
            "reading the response failed"
        } else {
            "request failed"
        };
        let host = e.url().and_then(|u| u.host_str()).unwrap_or("");
        let mut s = format!("{} ({host}): {what}", self.service);
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            let t = inner.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = inner.source();
        }
        let s = crate::domain::truncate_for_display(&s, 400);
        if e.is_timeout() {
            UpstreamError::Timeout(s)
        } else {
            UpstreamError::Transport(s)
        }
    }
}

#[cfg(test)]
mod tests;
