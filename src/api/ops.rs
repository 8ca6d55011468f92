//! Operability routes: `GET /metrics` (Prometheus).

use super::{
    AppState, middleware,
    problem::{ApiError, Problem, RequestError},
};
use crate::{
    auth::{Permission, Principal},
    service::ServiceError,
};
use axum::{
    Extension,
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Where and for whom `GET /metrics` is served (from `[metrics]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAccess {
    /// Answered on the API's own address (not when `[metrics] listen` names another).
    pub on_api: bool,
    pub enabled: bool,
    /// No credential needed; otherwise the `metrics.read` permission (auditor, admin).
    pub public: bool,
}

/// Prometheus metrics (text format 0.0.4). Public when `[metrics] public = true`; otherwise
/// the caller needs the auditor or admin role. Answers 404 when metrics are disabled or
/// served on a separate address.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Metrics in the Prometheus text format (version 0.0.4)",
               content_type = "text/plain", body = String),
              (status = 404, description = "Metrics are disabled or served on their own address (`[metrics] listen`)",
               body = Problem, content_type = "application/problem+json")),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn metrics(State(st): State<AppState>, who: Option<Extension<Principal>>) -> Response {
    metrics_reply(st.metrics, st.metrics.on_api, who.map(|w| w.0))
}

/// The same handler on the separate metrics address.
pub async fn metrics_separate(
    State(st): State<AppState>,
    who: Option<Extension<Principal>>,
) -> Response {
    metrics_reply(st.metrics, true, who.map(|w| w.0))
}

fn metrics_reply(access: MetricsAccess, here: bool, who: Option<Principal>) -> Response {
    if !access.enabled || !here {
        return ApiError::from(RequestError::RouteNotFound).into_response();
    }
    if !access.public && !who.is_some_and(|p| p.has(Permission::MetricsRead, None)) {
        return ApiError::from(ServiceError::Forbidden {
            missing: Permission::MetricsRead,
            pool: None,
        })
        .into_response();
    }
    match crate::metrics::render() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Authentication for `/metrics` on the API's address: none when it is public, or when the
/// handler answers 404 anyway (disabled, or served elsewhere).
pub async fn guard_metrics(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let m = st.metrics;
    if m.public || !m.enabled || !m.on_api {
        next.run(req).await
    } else {
        middleware::authenticate(State(st), req, next).await
    }
}

/// Authentication for `/metrics` on its separate address.
pub async fn guard_metrics_separate(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if st.metrics.public {
        next.run(req).await
    } else {
        middleware::authenticate(State(st), req, next).await
    }
}

/// Authentication for the API documentation: none when `[docs] public = true`.
pub async fn guard_docs(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.docs_public {
        next.run(req).await
    } else {
        middleware::authenticate(State(st), req, next).await
    }
}
