//! Request context (id, span, timeout, problem rendering, audit of non-action calls) and
//! authentication.

use super::{
    AppState,
    problem::{ApiError, RequestError},
};
use crate::{
    auth::{AuthError, PeerCert, Presented, Principal},
    domain::{SessionId, truncate_for_display},
    service::{Caller, RequestOutcome, RequestRecord},
};
use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::HeaderValue,
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::{net::SocketAddr, time::Instant};
use tracing::Instrument;

/// The request id of the current request (accepted from `x-request-id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The trace id of the current request's span (32 hex digits), for its audit events.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// Set on a response whose call the service already audited (intent + outcome).
#[derive(Debug, Clone, Copy)]
pub struct ActionAudited;

/// Set on a fleet call's response: its items' `batch_id`, kept in the call's request record.
#[derive(Debug, Clone)]
pub struct BatchId(pub String);

/// Extra `params` for a call's audit record (a webhook delivery's source, delivery id and
/// refusal reason), set on the response by its handler.
#[derive(Debug, Clone, Default)]
pub struct AuditParams(pub serde_json::Map<String, serde_json::Value>);

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

    // The server span (OpenTelemetry HTTP server conventions: named by the matched route,
    // never by the raw path), continuing the caller's `traceparent` when it sent a valid one.
    // Probes are DEBUG spans: not traced (the tracing layer takes INFO and up), so a
    // Kubernetes probe every few seconds fills no tracing backend.
    let route_label = route.as_deref().unwrap_or(crate::metrics::UNMATCHED_ROUTE);
    macro_rules! request_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "request",
                otel.name = %format_args!("{method} {route_label}"),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                http.request.method = %method,
                http.route = route_label,
                request_id = %request_id,
                http.response.status_code = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            )
        };
    }
    let span = if is_probe(&path) {
        request_span!(tracing::Level::DEBUG)
    } else {
        request_span!(tracing::Level::INFO)
    };
    crate::telemetry::continue_trace(&span, req.headers());
    if let Some(t) = crate::telemetry::trace_id_of(&span) {
        req.extensions_mut().insert(TraceId(t));
    }
    let timeout = st.request_timeout;
    let mut resp = async {
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::from(RequestError::Timeout).into_response(),
        }
    }
    .instrument(span.clone())
    .await;

    if !is_probe(&path) && resp.extensions().get::<ActionAudited>().is_none() {
        let mut rec = request_record(
            &resp,
            &request_id,
            &method,
            route.as_deref(),
            &path,
            client,
            started,
        );
        rec.trace_id = crate::telemetry::trace_id_of(&span);
        if let Err(e) = st
            .gateway
            .record_request(rec)
            .instrument(span.clone())
            .await
        {
            resp = span.in_scope(|| ApiError::from(e).into_response());
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
    crate::metrics::http_request(&method, route.as_deref(), status, started.elapsed());
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    span.record("http.response.status_code", i64::from(status));
    span.record("latency_ms", latency);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms = latency, "request finished");
        } else {
            tracing::info!(status, latency_ms = latency, "request finished");
        }
    });
    resp
}

/// Describes a finished call for its audit record.
fn request_record(
    resp: &Response,
    request_id: &str,
    method: &axum::http::Method,
    route: Option<&str>,
    path: &str,
    client: Option<String>,
    started: Instant,
) -> RequestRecord {
    let status = resp.status();
    let caller = if let Some(p) = resp.extensions().get::<Principal>() {
        Caller::Principal(p.clone())
    } else if let Some(f) = resp.extensions().get::<AuthFailure>() {
        Caller::Refused {
            presented: f.presented.clone(),
            auth_error: f.error.code(),
        }
    } else {
        Caller::Anonymous
    };
    let outcome = match status.as_u16() {
        200..=399 => RequestOutcome::Ok,
        401 => RequestOutcome::Unauthenticated,
        403 => RequestOutcome::Denied,
        429 => RequestOutcome::RateLimited,
        400..=499 => RequestOutcome::Invalid,
        _ => RequestOutcome::Failed,
    };
    let (pool, host, session_id) = route.map(|r| target_from_path(r, path)).unwrap_or_default();
    RequestRecord {
        request_id: request_id.to_string(),
        caller,
        client_addr: client,
        method: method.to_string(),
        route: route.unwrap_or(path).to_string(),
        action: action_name(method, route, path),
        pool,
        host,
        session_id,
        outcome,
        error_code: resp
            .extensions()
            .get::<ApiError>()
            .map(|e| e.code.to_string()),
        http_status: status.as_u16(),
        duration: started.elapsed(),
        batch_id: resp.extensions().get::<BatchId>().map(|b| b.0.clone()),
        params: resp
            .extensions()
            .get::<AuditParams>()
            .map(|p| p.0.clone())
            .unwrap_or_default(),
        trace_id: None,
    }
}

/// A short action name for the audit log, derived from the matched route.
/// A fleet route's `{action}` segment is named by the path (one of the action kinds).
fn action_name(method: &axum::http::Method, route: Option<&str>, path: &str) -> String {
    let Some(r) = route else {
        return "unknown_route".into();
    };
    let last = r.rsplit('/').next().unwrap_or("");
    match (method.as_str(), last) {
        ("GET", "hostpools") => "list_pools".into(),
        ("GET", "sessionhosts") => "list_hosts".into(),
        ("GET", "sessions") if r.contains("/sessionhosts/") => "list_host_sessions".into(),
        ("GET", "sessions") if r.starts_with("/users/") => "list_user_sessions".into(),
        ("GET", "sessions") if r.starts_with("/me/") => "list_my_sessions".into(),
        ("GET", "sessions") => "list_sessions".into(),
        ("GET", "{id}") => "get_session".into(),
        ("GET", "audit") => "read_audit".into(),
        ("GET", "openapi.yaml") => "read_openapi".into(),
        ("GET", "metrics") => "read_metrics".into(),
        ("GET", _) if r == "/docs" || r.starts_with("/docs/") => "read_docs".into(),
        ("POST", "{action}") => match path.rsplit('/').next().unwrap_or("") {
            a @ ("logoff" | "disconnect" | "message" | "lock" | "unlock") => a.to_string(),
            _ => "unknown_action".into(),
        },
        ("POST", "{source}") if r.starts_with("/webhooks/") => "webhook".into(),
        ("POST", a) => a.to_string(),
        (m, _) => format!("{} {r}", m.to_ascii_lowercase()),
    }
}

/// Pool, host and session id from the path, by lining it up with the route template.
type PathTarget = (Option<String>, Option<String>, Option<u32>);

fn target_from_path(route: &str, path: &str) -> PathTarget {
    let mut t = PathTarget::default();
    for (tpl, val) in route.split('/').zip(path.split('/')) {
        let val = percent_decode(val);
        match tpl {
            "{pool}" => t.0 = Some(truncate_for_display(&val, 128)),
            "{host}" => t.1 = Some(truncate_for_display(&val, 255)),
            "{id}" => t.2 = SessionId::parse(&val).ok().map(|s| s.0),
            _ => {}
        }
    }
    t
}

/// A path segment as the router decodes it (`+` stays `+`; invalid UTF-8 is replaced).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Authentication for every route except the probes: inserts the [`Principal`] into the
/// request (for handlers) and the response (for the audit record). Over TLS with client
/// certificates, the verified certificate arrives as a request extension (`crate::tls`).
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<std::sync::Arc<PeerCert>>().cloned();
    match st
        .authenticator
        .authenticate_with_cert(req.headers(), peer.as_deref())
        .await
    {
        Ok(p) => {
            req.extensions_mut().insert(p.clone());
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(p);
            resp
        }
        Err((error, presented)) => {
            crate::metrics::auth_failure(error.code());
            let challenge = st.authenticator.www_authenticate(&error);
            let mut resp = ApiError::unauthenticated(&error, challenge).into_response();
            resp.extensions_mut()
                .insert(AuthFailure { error, presented });
            resp
        }
    }
}

/// Refuses a request whose declared `Content-Length` exceeds the body limit with 413 at once,
/// before anything waits for the body (a client announcing more than it sends would otherwise
/// hold the connection until the request timeout).
pub async fn declared_length(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            ApiError::from(RequestError::PayloadTooLarge).into_response()
        }
        _ => next.run(req).await,
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
        assert_eq!(t.0.as_deref(), Some("hp 1"));
        assert_eq!(t.1.as_deref(), Some("sh1.contoso.com"));
        assert_eq!(t.2, Some(7));
    }

    #[test]
    fn request_ids_are_sanitised() {
        assert!(acceptable_request_id(&HeaderValue::from_static("abc-123")).is_some());
        assert!(acceptable_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(acceptable_request_id(&HeaderValue::from_static("")).is_none());
    }
}
