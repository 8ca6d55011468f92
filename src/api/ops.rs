//! Operability routes: `GET /metrics` (Prometheus) and the API viewer `GET /docs`.

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

/// The policy of every `/docs` answer: only this origin's scripts and styles, no inline script,
/// no framing, no plugins; `connect-src 'self'` lets the viewer fetch `/openapi.yaml` and try
/// the API on this server only. Images allow `data:` (Swagger UI's icons are data URIs).
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

const DOCS_HTML: &[u8] = include_bytes!("../../assets/swagger-ui/docs.html");
const DOCS_INIT: &[u8] = include_bytes!("../../assets/swagger-ui/init.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const SWAGGER_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");

/// A static `/docs` answer with the security headers every one of them carries.
fn docs_asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The interactive API documentation (Swagger UI, built into the binary; no CDN). Without a
/// credential when `[docs] public = true` (the default).
#[utoipa::path(get, path = "/docs", tag = "meta",
    responses((status = 200, description = "The API viewer page", content_type = "text/html", body = String)),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn docs() -> Response {
    docs_asset("text/html; charset=utf-8", DOCS_HTML)
}

/// The viewer's start-up script.
#[utoipa::path(get, path = "/docs/init.js", tag = "meta",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn docs_init() -> Response {
    docs_asset("text/javascript; charset=utf-8", DOCS_INIT)
}

/// Swagger UI's style sheet (swagger-ui-dist, vendored).
#[utoipa::path(get, path = "/docs/swagger-ui.css", tag = "meta",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String)),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn docs_css() -> Response {
    docs_asset("text/css; charset=utf-8", SWAGGER_CSS)
}

/// Swagger UI's script bundle (swagger-ui-dist, vendored).
#[utoipa::path(get, path = "/docs/swagger-ui-bundle.js", tag = "meta",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn docs_bundle() -> Response {
    docs_asset("text/javascript; charset=utf-8", SWAGGER_JS)
}
