//! Request context (id, span, timeout, problem rendering, audit of non-action calls) and
//! authentication.

use super::{AppState, problem::ApiError};
use crate::{
    audit::{Actor, EventKind, NewEvent, Target},
    auth::{AuthError, Presented, Principal},
};
use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::{net::SocketAddr, time::Instant};
use tracing::Instrument;

/// The request id of the current request (accepted from `x-request-id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Set on a response whose call the service already audited (intent + outcome).
#[derive(Debug, Clone, Copy)]
pub struct ActionAudited;

/// Why authentication failed, for the audit record (never the secret).
#[derive(Debug, Clone)]
pub struct AuthFailure {
    pub error: AuthError,
    pub presented: Presented,
}

pub const REQUEST_ID: &str = "x-request-id";

fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    .then(|| s.to_string())
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Outermost layer: request id, one span per request, timeout, problem rendering, and the
/// audit record of every call the service did not audit itself.
pub async fn context(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));

    let span = tracing::info_span!(
        "request",
        http.method = %method,
        http.route = route.as_deref().unwrap_or("(unmatched)"),
        request_id = %request_id,
        http.status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let timeout = st.request_timeout;
    let mut resp = async {
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "Request timed out",
                "The request took longer than the server's limit. An action already sent upstream still completes and is audited; check GET /audit with this request id.",
            )
            .into_response(),
        }
    }
    .instrument(span.clone())
    .await;

    if !is_probe(&path) && resp.extensions().get::<ActionAudited>().is_none() {
        let ev = request_event(
            &resp,
            &request_id,
            &method,
            route.as_deref(),
            &path,
            client,
            started,
        );
        if let Err(e) = st.gateway.audit().record(ev).await {
            tracing::error!(parent: &span, error = %e, "audit record of request failed; answering 503");
            resp = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "Audit log unavailable",
                "The audit log cannot record this call. Retry later.",
            )
            .with_retry_after(std::time::Duration::from_secs(5))
            .into_response();
        }
    }

    if let Some(err) = resp.extensions().get::<ApiError>().cloned() {
        let ext = std::mem::take(resp.extensions_mut());
        resp = err.render(&request_id, &path);
        *resp.extensions_mut() = ext;
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    span.record("http.status", status);
    span.record("latency_ms", latency);
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms = latency, "request finished");
        } else {
            tracing::info!(status, latency_ms = latency, "request finished");
        }
    });
    resp
}

fn request_event(
    resp: &Response,
    request_id: &str,
    method: &axum::http::Method,
    route: Option<&str>,
    path: &str,
    client: Option<String>,
    started: Instant,
) -> NewEvent {
    let status = resp.status();
    let err = resp.extensions().get::<ApiError>();
    let actor = if let Some(p) = resp.extensions().get::<Principal>() {
        Actor {
            id: p.id.clone(),
            display: p.display.clone(),
            auth_method: Some(p.method.as_str().into()),
            roles: p.role_names(),
        }
    } else if let Some(f) = resp.extensions().get::<AuthFailure>() {
        Actor {
            id: "anonymous".into(),
            display: f.presented.hint.clone(),
            auth_method: f.presented.method.clone(),
            roles: vec![],
        }
    } else {
        Actor {
            id: "anonymous".into(),
            ..Actor::default()
        }
    };
    let outcome = match status.as_u16() {
        200..=399 => "ok",
        401 => "unauthenticated",
        403 => "denied",
        429 => "rate_limited",
        400..=499 => "invalid",
        _ => "failed",
    };
    let target = route.map(|r| target_from_path(r, path)).unwrap_or_default();
    let mut params = serde_json::Map::new();
    if let Some(f) = resp.extensions().get::<AuthFailure>() {
        params.insert("auth_error".into(), f.error.code().into());
    }
    NewEvent {
        kind: Some(EventKind::Request),
        request_id: request_id.to_string(),
        actor,
        client_addr: client,
        method: Some(method.to_string()),
        route: Some(route.unwrap_or(path).to_string()),
        action: action_name(method, route),
        target,
        params: serde_json::Value::Object(params),
        outcome: outcome.into(),
        error_code: err.map(|e| e.code.to_string()),
        http_status: Some(status.as_u16()),
        upstream_status: None,
        duration_ms: Some(started.elapsed().as_millis() as u64),
    }
}

/// A short action name for the audit log, derived from the matched route.
fn action_name(method: &axum::http::Method, route: Option<&str>) -> String {
    let Some(r) = route else {
        return "unknown_route".into();
    };
    let last = r.rsplit('/').next().unwrap_or("");
    match (method.as_str(), last) {
        ("GET", "hostpools") => "list_pools".into(),
        ("GET", "sessionhosts") => "list_hosts".into(),
        ("GET", "sessions") if r.contains("/sessionhosts/") => "list_host_sessions".into(),
        ("GET", "sessions") => "list_sessions".into(),
        ("GET", "{id}") => "get_session".into(),
        ("GET", "audit") => "read_audit".into(),
        ("GET", "openapi.yaml") => "read_openapi".into(),
        ("POST", a) => a.to_string(),
        (m, _) => format!("{} {r}", m.to_ascii_lowercase()),
    }
}

/// Fills pool/host/session from the path by lining it up with the route template.
fn target_from_path(route: &str, path: &str) -> Target {
    let mut t = Target::default();
    for (tpl, val) in route.split('/').zip(path.split('/')) {
        let val = percent_decode(val);
        match tpl {
            "{pool}" => t.pool = Some(crate::domain::truncate_for_display(&val, 128)),
            "{host}" => t.host = Some(crate::domain::truncate_for_display(&val, 255)),
            "{id}" => t.session_id = crate::domain::SessionId::parse(&val).ok().map(|s| s.0),
            _ => {}
        }
    }
    t
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// Authentication for every route except the probes: inserts the [`Principal`] into the
/// request (for handlers) and the response (for the audit record).
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    match st.authenticator.authenticate(req.headers()).await {
        Ok(p) => {
            req.extensions_mut().insert(p.clone());
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(p);
            resp
        }
        Err((error, presented)) => {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                error.code(),
                "Unauthenticated",
                match &error {
                    AuthError::Missing => "Send an API key (Authorization: Bearer <key> or X-API-Key) or an Entra ID access token.".to_string(),
                    other => other.to_string(),
                },
            );
            e.www_authenticate = Some(st.authenticator.www_authenticate(&error));
            let mut resp = e.into_response();
            resp.extensions_mut()
                .insert(AuthFailure { error, presented });
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_lines_up_with_route() {
        let t = target_from_path(
            "/hostpools/{pool}/sessionhosts/{host}/sessions/{id}/logoff",
            "/hostpools/hp%201/sessionhosts/sh1.contoso.com/sessions/7/logoff",
        );
        assert_eq!(t.pool.as_deref(), Some("hp 1"));
        assert_eq!(t.host.as_deref(), Some("sh1.contoso.com"));
        assert_eq!(t.session_id, Some(7));
    }

    #[test]
    fn request_ids_are_sanitised() {
        assert!(acceptable_request_id(&HeaderValue::from_static("abc-123")).is_some());
        assert!(acceptable_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(acceptable_request_id(&HeaderValue::from_static("")).is_none());
    }
}
