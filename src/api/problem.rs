//! Errors as a contract: every failure leaves as `application/problem+json` (RFC 9457) with a
//! stable `code` and the `request_id`. 5xx bodies stay generic; the cause is logged once.

use crate::{providers::ProviderError, service::ServiceError};
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
    pub fn new(
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

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "Invalid request body",
            detail,
        )
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

    pub fn with_retry_after(mut self, d: Duration) -> Self {
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
            ServiceError::Invalid { .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, code, "Invalid request", detail)
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
            ServiceError::RateLimited { retry_after } => {
                ApiError::new(S::TOO_MANY_REQUESTS, code, "Too many requests", detail)
                    .with_retry_after(retry_after)
            }
            ServiceError::Provider(pe) => from_provider(code, pe),
        }
    }
}

fn from_provider(code: &'static str, pe: ProviderError) -> ApiError {
    use StatusCode as S;
    match pe {
        ProviderError::SessionNotFound => ApiError::new(
            S::NOT_FOUND,
            code,
            "Session not found",
            "The session does not exist on the backend.",
        ),
        ProviderError::HostNotFound => ApiError::new(
            S::NOT_FOUND,
            code,
            "Session host not found",
            "The backend does not know this session host.",
        ),
        ProviderError::PoolNotFound => ApiError::new(
            S::BAD_GATEWAY,
            code,
            "Upstream host pool not found",
            "The backend does not know the host pool this pool is configured with; check the configuration.",
        ),
        ProviderError::HostUnreachable(_) => ApiError::new(
            S::BAD_GATEWAY,
            code,
            "Session host unreachable",
            "The session host could not be reached.",
        ),
        ProviderError::UpstreamAuth(_) => ApiError::new(
            S::BAD_GATEWAY,
            code,
            "Upstream authentication failed",
            "sessiongate's own credentials were rejected by the backend; an operator must fix the configuration.",
        ),
        ProviderError::UpstreamForbidden(_) => ApiError::new(
            S::BAD_GATEWAY,
            code,
            "Upstream denied the operation",
            "sessiongate's identity lacks the permission on the backend.",
        ),
        ProviderError::Throttled { retry_after } => ApiError::new(
            S::SERVICE_UNAVAILABLE,
            code,
            "Upstream throttled",
            "The backend is throttling requests beyond sessiongate's retry budget.",
        )
        .with_retry_after(retry_after),
        ProviderError::Timeout(_) => ApiError::new(
            S::GATEWAY_TIMEOUT,
            code,
            "Upstream timed out",
            "The backend did not answer in time; the action may or may not have happened.",
        ),
        ProviderError::Protected(reason) => {
            ApiError::new(S::FORBIDDEN, code, "Session is protected", reason)
        }
        ProviderError::Unsupported => ApiError::new(
            S::CONFLICT,
            "action_not_supported",
            "Action not supported by this pool",
            "The backend does not support this action.",
        ),
        ProviderError::Upstream { .. } => ApiError::new(
            S::BAD_GATEWAY,
            code,
            "Upstream error",
            "The backend answered with an error.",
        ),
        ProviderError::Transport(_) => ApiError::new(
            S::BAD_GATEWAY,
            code,
            "Upstream unreachable",
            "The backend could not be reached.",
        ),
    }
}
