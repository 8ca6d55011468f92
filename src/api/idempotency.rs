//! `Idempotency-Key` on the POST routes that act (a route layer inside authentication): the
//! key, the principal and a hash of method, path and body decide through
//! [`crate::service::Gateway::idempotency_begin`] whether the request runs or gets the stored
//! answer. Answers that mean nothing was done and a retry should run (429, 503
//! `audit_unavailable`, upstream throttled/unreachable) are not stored.

use super::{
    AppState,
    middleware::RequestId,
    problem::{ApiError, RequestError},
};
use crate::{
    auth::Principal,
    service::{IdempotencyDecision, StoredAnswer},
};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a replayed answer.
pub const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";

/// Error codes whose answers are not stored: nothing was done, a retry should run.
const NOT_STORED: [&str; 4] = [
    "audit_unavailable",
    "rate_limited",
    "upstream_throttled",
    "upstream_unreachable",
];

/// Headers kept with a stored answer.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER];

/// 1-255 printable ASCII characters.
fn valid_key(v: &HeaderValue) -> Option<String> {
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= 255 && b.iter().all(|c| (0x20..=0x7e).contains(c)))
        .then(|| String::from_utf8_lossy(b).into_owned())
}

fn fingerprint(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0u8]);
    h.update(path_and_query.as_bytes());
    h.update([0u8]);
    h.update(body);
    hex::encode(h.finalize())
}

fn replay(a: StoredAnswer) -> Response {
    let mut resp = Response::new(Body::from(a.body));
    *resp.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    for (k, v) in a.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            h.insert(k, v);
        }
    }
    h.insert(
        HeaderName::from_static(IDEMPOTENCY_REPLAYED),
        HeaderValue::from_static("true"),
    );
    resp
}

/// The layer. Requests without the header, and methods other than POST, pass untouched.
pub async fn idempotency(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(req).await;
    };
    let Some(key) = valid_key(raw) else {
        return ApiError::from(RequestError::InvalidIdempotencyKey).into_response();
    };
    let Some(principal) = req.extensions().get::<Principal>().map(|p| p.id.clone()) else {
        return next.run(req).await;
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let method = req.method().to_string();
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, st.body_limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::from(RequestError::PayloadTooLarge).into_response(),
    };
    let fp = fingerprint(&method, &pq, &bytes);
    // A running record older than this belongs to a request that died.
    let stale = st.request_timeout * 2 + std::time::Duration::from_secs(30);
    let created_us = match st
        .gateway
        .idempotency_begin(&principal, &key, &fp, stale)
        .await
    {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(IdempotencyDecision::Mismatch) => {
            return ApiError::from(RequestError::IdempotencyKeyReused).into_response();
        }
        Ok(IdempotencyDecision::InProgress) => {
            return ApiError::from(RequestError::IdempotencyInProgress).into_response();
        }
        Ok(IdempotencyDecision::Replay(a)) => return replay(a),
        Ok(IdempotencyDecision::Run { created_us }) => created_us,
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (mut rparts, rbody) = resp.into_parts();
    let rbytes = match axum::body::to_bytes(rbody, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = st
                .gateway
                .idempotency_finish(&principal, &key, created_us, None)
                .await;
            return ApiError::internal(format!("reading the answer failed: {e}")).into_response();
        }
    };
    let problem = rparts.extensions.get::<ApiError>().cloned();
    let keep = !problem
        .as_ref()
        .is_some_and(|p| NOT_STORED.contains(&p.code));
    let answer = if keep {
        // A problem's final document is rendered by the context middleware; store that one.
        let (status, headers, body) = match &problem {
            Some(p) => {
                let (rp, rb) = p.render(&request_id, &path).into_parts();
                let b = axum::body::to_bytes(rb, usize::MAX)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                (rp.status, rp.headers, b)
            }
            None => (rparts.status, rparts.headers.clone(), rbytes.to_vec()),
        };
        Some(StoredAnswer {
            status: status.as_u16(),
            headers: KEPT_HEADERS
                .iter()
                .filter_map(|k| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| (k.as_str().to_string(), v.to_string()))
                })
                .collect(),
            body,
        })
    } else {
        None
    };
    if let Err(e) = st
        .gateway
        .idempotency_finish(&principal, &key, created_us, answer.as_ref())
        .await
    {
        tracing::warn!(error = %e, "storing an idempotent answer failed; a repeat waits until the key goes stale");
    }
    rparts
        .headers
        .remove(HeaderName::from_static(IDEMPOTENCY_REPLAYED));
    Response::from_parts(rparts, Body::from(rbytes))
}
