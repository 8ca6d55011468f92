//! Errors as a contract: every failure leaves as `application/problem+json` (RFC 9457) with a
//! stable `code` and the `request_id`. 5xx bodies stay generic; the cause is logged once.
//!
//! Every `code` comes from one of three enums, each with one `code()`: [`ServiceError`] (the
//! use cases, provider failures included), [`RequestError`] (what this layer rejects itself)
//! and [`AuthError`]; plus `internal_error`. The table of codes is `docs/api.md`, checked
//! against these enums by a test below.

use crate::{auth::AuthError, service::ServiceError};
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// An API error before it is rendered. Rendering (with request id and instance) happens in
/// the request-context middleware, which finds this in the response extensions.
/// Boxed so `Result<_, ApiError>` stays small.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorSpec>);

/// The parts of an [`ApiError`].
#[derive(Debug, Clone)]
pub struct ErrorSpec {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<Duration>,
    pub www_authenticate: Option<String>,
    /// Extra members for the problem document (e.g. `missing_permission`).
    pub extra: Option<serde_json::Value>,
}

/// The problem document.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type: `urn:sessiongate:problem:{code}`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request path.
    pub instance: String,
    /// Stable machine-readable code.
    pub code: String,
    pub request_id: String,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorSpec;
    fn deref(&self) -> &ErrorSpec {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorSpec {
        &mut self.0
    }
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(ErrorSpec {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
            www_authenticate: None,
            extra: None,
        }))
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
            "The server failed to handle the request; the cause has been logged.",
        )
    }

    /// 401 for a credential that was missing or refused, with the `WWW-Authenticate` challenge.
    pub fn unauthenticated(error: &AuthError, challenge: String) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            error.code(),
            "Unauthenticated",
            match error {
                AuthError::Missing => "Send an API key (Authorization: Bearer <key> or X-API-Key) or an Entra ID access token.".to_string(),
                other => other.to_string(),
            },
        );
        e.www_authenticate = Some(challenge);
        e
    }

    fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// Renders the full problem document.
    pub fn render(&self, request_id: &str, instance: &str) -> Response {
        let mut body = serde_json::to_value(Problem {
            type_: format!("urn:sessiongate:problem:{}", self.code),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            instance: instance.to_string(),
            code: self.code.to_string(),
            request_id: request_id.to_string(),
        })
        .unwrap_or_default();
        if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(b)) =
            (&self.extra, &mut body)
        {
            for (k, v) in extra {
                b.entry(k.clone()).or_insert(v.clone());
            }
        }
        let mut resp = (self.status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(d) = self.retry_after {
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(w) = &self.www_authenticate
            && let Ok(v) = HeaderValue::from_str(w)
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Placeholder body; the context middleware renders the final document.
        let mut resp = self.render("", "");
        resp.extensions_mut().insert(self);
        resp
    }
}

/// What the HTTP layer rejects before (or instead of) calling the service.
#[derive(Debug, Clone)]
pub enum RequestError {
    InvalidPath(String),
    InvalidPoolName(String),
    InvalidHostName(String),
    InvalidSessionId(String),
    InvalidQuery(String),
    /// The body is not JSON.
    InvalidJson(String),
    /// Well-formed JSON that does not fit the endpoint, or a field out of bounds.
    InvalidBody(String),
    /// The body could not be read at all.
    UnreadableBody(String),
    PayloadTooLarge,
    UnsupportedMediaType(String),
    RouteNotFound,
    MethodNotAllowed,
    /// The request took longer than `server.request_timeout_secs`.
    Timeout,
    /// A fleet call names (or resolves to) more targets than `fleet.max_targets`.
    TooManyTargets(String),
    /// An `Idempotency-Key` header that is not 1-255 printable ASCII characters.
    InvalidIdempotencyKey,
    /// The key was already used (by this principal) with another request.
    IdempotencyKeyReused,
    /// The first request with this key is still running.
    IdempotencyInProgress,
    /// `/me` while `auth.self_service` is off.
    SelfServiceDisabled,
    /// `/me` by a caller whose credential names no user (an API key, or a token without UPN).
    SelfServiceNeedsToken,
}

impl RequestError {
    /// Stable machine-readable code (the problem+json `code`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::InvalidPath(_) => "invalid_path",
            RequestError::InvalidPoolName(_) => "invalid_pool_name",
            RequestError::InvalidHostName(_) => "invalid_host_name",
            RequestError::InvalidSessionId(_) => "invalid_session_id",
            RequestError::InvalidQuery(_) => "invalid_query",
            RequestError::InvalidJson(_) => "invalid_json",
            RequestError::InvalidBody(_) | RequestError::UnreadableBody(_) => "invalid_body",
            RequestError::PayloadTooLarge => "payload_too_large",
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::RouteNotFound => "route_not_found",
            RequestError::MethodNotAllowed => "method_not_allowed",
            RequestError::Timeout => "request_timeout",
            RequestError::TooManyTargets(_) => "too_many_targets",
            RequestError::InvalidIdempotencyKey => "invalid_idempotency_key",
            RequestError::IdempotencyKeyReused => "idempotency_key_reused",
            RequestError::IdempotencyInProgress => "idempotency_in_progress",
            RequestError::SelfServiceDisabled => "self_service_disabled",
            RequestError::SelfServiceNeedsToken => "self_service_needs_token",
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        use StatusCode as S;
        let code = e.code();
        match e {
            RequestError::InvalidPath(d)
            | RequestError::InvalidPoolName(d)
            | RequestError::InvalidHostName(d)
            | RequestError::InvalidSessionId(d)
            | RequestError::InvalidQuery(d)
            | RequestError::InvalidJson(d)
            | RequestError::UnreadableBody(d) => {
                ApiError::new(S::BAD_REQUEST, code, "Bad request", d)
            }
            RequestError::InvalidBody(d) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, code, "Invalid request body", d)
            }
            RequestError::TooManyTargets(d) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, code, "Too many targets", d)
            }
            RequestError::InvalidIdempotencyKey => ApiError::new(
                S::BAD_REQUEST,
                code,
                "Bad request",
                "Idempotency-Key must be 1-255 printable ASCII characters.",
            ),
            RequestError::IdempotencyKeyReused => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                code,
                "Idempotency key reused",
                "This Idempotency-Key was already used with a different request (method, path or body); nothing was done. Use a new key for a new request.",
            ),
            RequestError::IdempotencyInProgress => ApiError::new(
                S::CONFLICT,
                code,
                "Request with this key still running",
                "The first request with this Idempotency-Key is still running; retry after the delay to get its answer.",
            )
            .with_retry_after(Duration::from_secs(1)),
            RequestError::PayloadTooLarge => ApiError::new(
                S::PAYLOAD_TOO_LARGE,
                code,
                "Request body too large",
                "The request body exceeds the configured limit.",
            ),
            RequestError::UnsupportedMediaType(d) => {
                ApiError::new(S::UNSUPPORTED_MEDIA_TYPE, code, "Unsupported media type", d)
            }
            RequestError::SelfServiceDisabled => ApiError::new(
                S::NOT_FOUND,
                code,
                "Self-service is not enabled",
                "The /me routes are off on this server (auth.self_service = false).",
            ),
            RequestError::SelfServiceNeedsToken => ApiError::new(
                S::FORBIDDEN,
                code,
                "Self-service needs a user token",
                "The /me routes act for the user an Entra ID token names (preferred_username or upn); this credential names no user (API keys never do).",
            ),
            RequestError::RouteNotFound => ApiError::new(
                S::NOT_FOUND,
                code,
                "Not found",
                "No such route; see GET /openapi.yaml.",
            ),
            RequestError::MethodNotAllowed => ApiError::new(
                S::METHOD_NOT_ALLOWED,
                code,
                "Method not allowed",
                "This route does not accept that method; see GET /openapi.yaml.",
            ),
            RequestError::Timeout => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                code,
                "Request timed out",
                "The request took longer than the server's limit. An action already sent upstream still completes and is audited; check GET /audit with this request id.",
            ),
        }
    }
}

/// Answers of `POST /webhooks/{source}` that no other route gives.
#[derive(Debug, Clone)]
pub enum WebhookError {
    /// No such source is configured.
    SourceNotFound,
    /// The delivery did not authenticate; `reason` is the stable reason code (the only
    /// detail told to the sender).
    Unauthenticated { reason: &'static str },
    /// The body could not be mapped to an action (`field` names the mapping field).
    MappingFailed { field: String, detail: String },
    /// A guard of the source refused the delivery (`guard` names it).
    GuardRefused { guard: String, detail: String },
    /// The first delivery with this id is still being handled.
    InProgress,
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        use StatusCode as S;
        match e {
            WebhookError::SourceNotFound => ApiError::new(
                S::NOT_FOUND,
                "webhook_source_not_found",
                "Webhook source not found",
                "No webhook source of this name is configured.",
            ),
            WebhookError::Unauthenticated { reason } => {
                let mut a = ApiError::new(
                    S::UNAUTHORIZED,
                    "webhook_unauthenticated",
                    "Unauthenticated",
                    format!("The delivery was not authenticated ({reason})."),
                );
                a.extra = Some(serde_json::json!({ "reason": reason }));
                a
            }
            WebhookError::MappingFailed { field, detail } => {
                let mut a = ApiError::new(
                    S::UNPROCESSABLE_ENTITY,
                    "webhook_mapping_failed",
                    "Delivery cannot be mapped",
                    detail,
                );
                a.extra = Some(serde_json::json!({ "field": field }));
                a
            }
            WebhookError::GuardRefused { guard, detail } => {
                let mut a = ApiError::new(
                    S::UNPROCESSABLE_ENTITY,
                    "webhook_guard_refused",
                    "Delivery refused by a guard",
                    detail,
                );
                a.extra = Some(serde_json::json!({ "guard": guard }));
                a
            }
            WebhookError::InProgress => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "webhook_in_progress",
                "Delivery still being handled",
                "The first delivery with this id is still being handled; retry after the delay to get its answer.",
            )
            .with_retry_after(Duration::from_secs(1)),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use StatusCode as S;
        let code = e.code();
        let detail = e.to_string();
        match e {
            ServiceError::PoolNotFound(_) => {
                ApiError::new(S::NOT_FOUND, code, "Host pool not found", detail)
            }
            ServiceError::HostNotFound { .. } => {
                ApiError::new(S::NOT_FOUND, code, "Session host not found", detail)
            }
            ServiceError::SessionNotFound { .. } => {
                ApiError::new(S::NOT_FOUND, code, "Session not found", detail)
            }
            ServiceError::Forbidden { missing, .. } => {
                let mut a = ApiError::new(S::FORBIDDEN, code, "Forbidden", detail);
                a.extra = Some(serde_json::json!({ "missing_permission": missing.as_str() }));
                a
            }
            ServiceError::UserMismatch { .. } => ApiError::new(
                S::CONFLICT,
                code,
                "Session belongs to another user",
                format!(
                    "{detail}; nothing was done (Windows reuses session ids: list the sessions again)"
                ),
            ),
            ServiceError::Protected { admin_may, .. } => {
                let mut a = ApiError::new(S::FORBIDDEN, code, "Session is protected", detail);
                a.extra = Some(serde_json::json!({
                    "missing_permission": if admin_may { Some("sessions.admin") } else { None }
                }));
                a
            }
            ServiceError::ActionNotSupported { .. } => ApiError::new(
                S::CONFLICT,
                code,
                "Action not supported by this pool",
                detail,
            ),
            ServiceError::InvalidBody(_) => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                code,
                "Invalid request body",
                detail,
            ),
            ServiceError::InvalidQuery(_) => {
                ApiError::new(S::BAD_REQUEST, code, "Bad request", detail)
            }
            ServiceError::AuditUnavailable(cause) => {
                tracing::error!(error = %cause, "audit log unavailable");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    code,
                    "Audit log unavailable",
                    "The audit log cannot record this call, so nothing was done. Retry later.",
                )
                .with_retry_after(Duration::from_secs(5))
            }
            ServiceError::OutcomeNotRecorded {
                outcome,
                error_code,
                intent_event_id,
            } => {
                let done_upstream = matches!(outcome.as_str(), "done" | "already_gone");
                let what = match outcome.as_str() {
                    "done" => "The action WAS carried out upstream".to_string(),
                    "already_gone" => "The session was already gone upstream".to_string(),
                    "would_do" => {
                        "The dry run was evaluated (nothing was sent upstream)".to_string()
                    }
                    "refused" => {
                        "The action was refused by sessiongate (nothing was sent upstream)"
                            .to_string()
                    }
                    other => format!(
                        "The action was attempted upstream and ended '{other}' ({})",
                        error_code.as_deref().unwrap_or("no code")
                    ),
                };
                let mut a = ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    code,
                    "Outcome not recorded yet",
                    format!(
                        "{what}, but the audit log could not store its outcome in time. The outcome is kept and will be recorded under intent {intent_event_id}; do not retry this request{}.",
                        if done_upstream {
                            " (it would act twice)"
                        } else {
                            ""
                        }
                    ),
                );
                a.extra = Some(serde_json::json!({
                    "outcome": outcome,
                    "error_code": error_code,
                    "intent_event_id": intent_event_id,
                    "retry": false,
                }));
                a
            }
            ServiceError::RateLimited { retry_after } => {
                ApiError::new(S::TOO_MANY_REQUESTS, code, "Too many requests", detail)
                    .with_retry_after(retry_after)
            }
            ServiceError::UpstreamPoolNotFound => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Upstream host pool not found",
                "The backend does not know the host pool this pool is configured with; check the configuration.",
            ),
            ServiceError::HostUnreachable(_) => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Session host unreachable",
                "The session host could not be reached.",
            ),
            ServiceError::UpstreamAuth(_) => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Upstream authentication failed",
                "sessiongate's own credentials were rejected by the backend; an operator must fix the configuration.",
            ),
            ServiceError::UpstreamForbidden(_) => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Upstream denied the operation",
                "sessiongate's identity lacks the permission on the backend.",
            ),
            ServiceError::UpstreamThrottled { retry_after } => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                code,
                "Upstream throttled",
                "The backend is throttling requests beyond sessiongate's retry budget.",
            )
            .with_retry_after(retry_after),
            ServiceError::UpstreamTimeout(_) => ApiError::new(
                S::GATEWAY_TIMEOUT,
                code,
                "Upstream timed out",
                "The backend did not answer in time; the action may or may not have happened.",
            ),
            ServiceError::Upstream { .. } => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Upstream error",
                "The backend answered with an error.",
            ),
            ServiceError::UpstreamUnreachable(_) => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Upstream unreachable",
                "The backend could not be reached.",
            ),
            ServiceError::UpstreamOutcomeUnknown(_) => ApiError::new(
                S::BAD_GATEWAY,
                code,
                "Upstream outcome unknown",
                "The request reached the backend but no answer came back: the backend may have acted. Check before retrying.",
            ),
            ServiceError::JobNotFound(_) => {
                ApiError::new(S::NOT_FOUND, code, "Job not found", detail)
            }
            ServiceError::JobFinished { .. } => {
                ApiError::new(S::CONFLICT, code, "Job already ended", detail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// One value of every variant (the match stops compiling when one is added).
    fn every_request_error() -> Vec<RequestError> {
        let s = || String::from("x");
        let all = vec![
            RequestError::InvalidPath(s()),
            RequestError::InvalidPoolName(s()),
            RequestError::InvalidHostName(s()),
            RequestError::InvalidSessionId(s()),
            RequestError::InvalidQuery(s()),
            RequestError::InvalidJson(s()),
            RequestError::InvalidBody(s()),
            RequestError::UnreadableBody(s()),
            RequestError::PayloadTooLarge,
            RequestError::UnsupportedMediaType(s()),
            RequestError::RouteNotFound,
            RequestError::MethodNotAllowed,
            RequestError::Timeout,
            RequestError::TooManyTargets(s()),
            RequestError::InvalidIdempotencyKey,
            RequestError::IdempotencyKeyReused,
            RequestError::IdempotencyInProgress,
            RequestError::SelfServiceDisabled,
            RequestError::SelfServiceNeedsToken,
        ];
        for e in &all {
            match e {
                RequestError::InvalidPath(_)
                | RequestError::InvalidPoolName(_)
                | RequestError::InvalidHostName(_)
                | RequestError::InvalidSessionId(_)
                | RequestError::InvalidQuery(_)
                | RequestError::InvalidJson(_)
                | RequestError::InvalidBody(_)
                | RequestError::UnreadableBody(_)
                | RequestError::PayloadTooLarge
                | RequestError::UnsupportedMediaType(_)
                | RequestError::RouteNotFound
                | RequestError::MethodNotAllowed
                | RequestError::Timeout
                | RequestError::TooManyTargets(_)
                | RequestError::InvalidIdempotencyKey
                | RequestError::IdempotencyKeyReused
                | RequestError::IdempotencyInProgress => {}
                RequestError::SelfServiceDisabled | RequestError::SelfServiceNeedsToken => {}
            }
        }
        all
    }

    fn every_auth_error() -> Vec<AuthError> {
        let all = vec![
            AuthError::Missing,
            AuthError::Invalid("x".into()),
            AuthError::Expired,
            AuthError::ClientCertUnmapped,
        ];
        for e in &all {
            match e {
                AuthError::Missing
                | AuthError::Invalid(_)
                | AuthError::Expired
                | AuthError::ClientCertUnmapped => {}
            }
        }
        all
    }

    /// Every (code, status) the API can answer with, and which enum value produced it.
    fn every_answer() -> Vec<(String, u16, String)> {
        let mut out = Vec::new();
        for e in crate::service::every_service_error() {
            let want = e.code();
            let what = format!("{e:?}");
            let a = ApiError::from(e);
            assert_eq!(
                a.code, want,
                "{what}: HTTP code differs from the audited code"
            );
            out.push((a.code.to_string(), a.status.as_u16(), what));
        }
        for e in every_request_error() {
            let want = e.code();
            let what = format!("{e:?}");
            let a = ApiError::from(e);
            assert_eq!(a.code, want, "{what}");
            out.push((a.code.to_string(), a.status.as_u16(), what));
        }
        for e in every_auth_error() {
            let a = ApiError::unauthenticated(&e, "Bearer".into());
            assert_eq!(a.code, e.code(), "{e:?}");
            out.push((a.code.to_string(), a.status.as_u16(), format!("{e:?}")));
        }
        let a = ApiError::internal("test");
        out.push((a.code.to_string(), a.status.as_u16(), "internal".into()));
        for e in [
            WebhookError::SourceNotFound,
            WebhookError::Unauthenticated { reason: "x" },
            WebhookError::MappingFailed {
                field: "user".into(),
                detail: String::new(),
            },
            WebhookError::GuardRefused {
                guard: "require[0]".into(),
                detail: String::new(),
            },
            WebhookError::InProgress,
        ] {
            let what = format!("{e:?}");
            let a = ApiError::from(e);
            out.push((a.code.to_string(), a.status.as_u16(), what));
        }
        for (code, status) in crate::edge_io::every_edge_answer() {
            out.push((code, status, "edge_io (below the router)".into()));
        }
        out
    }

    /// The rows of the code table in docs/api.md: code → the statuses its cell names.
    fn documented() -> BTreeMap<String, Vec<u16>> {
        let doc = include_str!("../../docs/api.md");
        let table = doc
            .split("<!-- codes:begin -->")
            .nth(1)
            .and_then(|t| t.split("<!-- codes:end -->").next())
            .expect("docs/api.md has the codes:begin/end markers");
        let mut rows = BTreeMap::new();
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells[1].trim_matches('`').to_string();
            let statuses = cells[2]
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u16>().ok())
                .filter(|n| (100..600).contains(n))
                .collect();
            assert!(
                rows.insert(code.clone(), statuses).is_none(),
                "{code} is listed twice in docs/api.md"
            );
        }
        rows
    }

    #[test]
    fn the_code_table_is_the_code() {
        let doc = documented();
        let answers = every_answer();
        for (code, status, what) in &answers {
            let Some(statuses) = doc.get(code) else {
                panic!("{what} answers `{code}`, which docs/api.md does not list");
            };
            assert!(
                statuses.contains(status),
                "{what} answers {status} `{code}`; docs/api.md says {statuses:?}"
            );
        }
        let produced: BTreeSet<&str> = answers.iter().map(|(c, _, _)| c.as_str()).collect();
        for code in doc.keys() {
            assert!(
                produced.contains(code.as_str()),
                "docs/api.md lists `{code}`, which no error produces"
            );
        }
    }

    #[test]
    fn a_provider_failure_answers_the_code_the_audit_records() {
        // `unsupported` used to be audited while callers got `action_not_supported`.
        use crate::domain::{HostName, PoolName, SessionId};
        let pool = PoolName::parse("hp1").unwrap();
        let host = HostName::parse("sh1").unwrap();
        for pe in crate::service::every_provider_error() {
            let want = pe.code();
            // Pool-wide calls name no host or session; calls about one session name both.
            for (h, id) in [(None, None), (Some(&host), Some(SessionId(3)))] {
                let what = format!("{pe:?} with {h:?}/{id:?}");
                let se = ServiceError::from_provider(pe.clone(), "lock", &pool, h, id);
                let audited = se.code();
                let answered = ApiError::from(se).code;
                assert_eq!((audited, answered), (want, want), "{what}");
            }
        }
    }
}
