//! `POST /webhooks/{source}`: a ticketing system's (or any Standard Webhooks sender's)
//! delivery. The raw body is read with its own cap and authenticated before it is parsed; the
//! delivery id makes it idempotent (the first answer is stored and replayed to duplicates, also
//! concurrent ones); the mapping turns the body into an action, which runs as a job through
//! the fleet/jobs service (one item per session) as the principal `webhook:<source>`.

use super::{
    AppState,
    fleet::{Resolved, check_count_max, run_items, session_item},
    jobs::AsyncQuery,
    middleware::AuditParams,
    problem::{ApiError, Problem, RequestError, WebhookError},
};
use crate::{
    auth::{Grant, Permission, PoolScope},
    domain::{HostName, PoolName, SessionId},
    service::{CallContext, DeliveryOutcome, IdempotencyDecision, Origin, Reach, StoredAnswer},
    webhooks::{
        Source,
        mapping::{GUARD_REFUSED, Mapped, Refusal},
    },
};
use axum::{
    Json,
    body::Body,
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use std::time::Instant;
use utoipa::ToSchema;

/// Set on a replayed answer (a duplicate delivery).
pub const WEBHOOK_REPLAYED: &str = "webhook-replayed";

/// The 202 answer: the job the delivery became.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookAccepted {
    pub job_id: String,
    /// `/jobs/{job_id}` (also in `Location`).
    pub location: String,
    pub delivery_id: String,
}

/// A delivery's body: the sender's JSON object, read through the source's mapping.
#[derive(Debug, ToSchema)]
#[schema(value_type = Object)]
pub struct WebhookPayload(pub serde_json::Value);

/// Headers kept with a stored answer.
const KEPT_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::LOCATION];

/// Problem codes whose answers are not stored: nothing was done, the sender's retry should
/// run (Jira and Standard Webhooks senders retry 5xx and 429).
const NOT_STORED: [&str; 5] = [
    "audit_unavailable",
    "rate_limited",
    "upstream_throttled",
    "upstream_unreachable",
    "request_timeout",
];

/// Receive one delivery from a configured source.
///
/// Authenticated by the source's own scheme (Standard Webhooks signature, `X-Hub-Signature`,
/// an API key header or an Entra ID token, see docs/ticketing.md), not by the API's
/// credentials. A duplicate delivery id gets the first answer again (header
/// `Webhook-Replayed: true`), never 409.
#[utoipa::path(post, path = "/webhooks/{source}", tag = "webhooks",
    params(("source" = String, Path, description = "A configured `[[webhooks.sources]]` name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = WebhookPayload, description = "The sender's JSON, exactly as signed (at most `webhooks.max_body_bytes`)"),
    responses((status = 202, description = "Accepted: a job (`Location: /jobs/{id}`)", body = WebhookAccepted),
              (status = 200, description = "Nothing to act on (the user has no session): an empty fleet result", body = crate::service::BatchResult),
              (status = 401, description = "webhook_unauthenticated (`reason` holds the stable reason code)", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "webhook_source_not_found", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "webhook_mapping_failed (`field`) | webhook_guard_refused (`guard`)", body = Problem, content_type = "application/problem+json"),
              (status = 503, description = "webhook_in_progress (a duplicate of a delivery still being handled) | audit_unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn receive(
    State(st): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let Ok(Path(name)) = name else {
        return ApiError::from(WebhookError::SourceNotFound).into_response();
    };
    let Some(source) = st.webhooks.get(&name) else {
        return ApiError::from(WebhookError::SourceNotFound).into_response();
    };
    let mut audit = serde_json::Map::new();
    audit.insert("webhook_source".into(), source.name.as_str().into());
    let bytes = match axum::body::to_bytes(body, st.webhooks.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return with_audit(
                ApiError::from(RequestError::PayloadTooLarge).into_response(),
                audit,
            );
        }
    };
    let header_id = source.header_delivery_id(&parts.headers);
    if let Some(Ok(id)) = &header_id {
        audit.insert("delivery_id".into(), id.as_str().into());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(reason) = source
        .authenticate(
            &parts.headers,
            &bytes,
            now,
            st.webhooks.tolerance_secs,
            &st.authenticator,
        )
        .await
    {
        crate::metrics::auth_failure("webhook_unauthenticated");
        audit.insert("reason".into(), reason.into());
        return with_audit(
            ApiError::from(WebhookError::Unauthenticated { reason }).into_response(),
            audit,
        );
    }
    // Authenticated: from here on the caller is the source's principal.
    let ctx = super::handlers::call_context(&parts, source.principal.clone(), started);
    let json: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
    let delivery_id =
        match header_id.or_else(|| json.as_ref().ok().and_then(|v| source.body_delivery_id(v))) {
            Some(Ok(id)) => id,
            _ => {
                let e = WebhookError::MappingFailed {
                    field: "delivery_id".into(),
                    detail: format!(
                        "the delivery id ({}) is missing or not 1-256 printable characters",
                        source.delivery_id_place()
                    ),
                };
                return finish(ApiError::from(e).into_response(), &ctx, audit);
            }
        };
    audit.insert("delivery_id".into(), delivery_id.as_str().into());
    // A request that died leaves a running record: taken over after this.
    let stale = st.request_timeout * 2 + std::time::Duration::from_secs(30);
    let created_us = match st
        .gateway
        .webhook_begin(&source.name, &delivery_id, stale)
        .await
    {
        Err(e) => return finish(ApiError::from(e).into_response(), &ctx, audit),
        Ok(IdempotencyDecision::Replay(a)) => {
            audit.insert("replayed".into(), true.into());
            return finish(replay(a), &ctx, audit);
        }
        Ok(IdempotencyDecision::InProgress | IdempotencyDecision::Mismatch) => {
            return finish(
                ApiError::from(WebhookError::InProgress).into_response(),
                &ctx,
                audit,
            );
        }
        Ok(IdempotencyDecision::Run { created_us }) => created_us,
    };
    let (resp, outcome) = handle(&st, source, &ctx, &delivery_id, json).await;
    if let Some(t) = &outcome.ticket {
        audit.insert("ticket".into(), t.as_str().into());
    }
    let (resp, answer) = stored(resp, &ctx.request_id, parts.uri.path()).await;
    if let Err(e) = st
        .gateway
        .webhook_finish(
            &source.name,
            &delivery_id,
            created_us,
            answer.as_ref(),
            &outcome,
        )
        .await
    {
        tracing::warn!(error = %e, "storing a webhook delivery's answer failed; a duplicate waits until the record goes stale");
    }
    finish(resp, &ctx, audit)
}

/// The response with the delivery's audit `params` (and, once authenticated, its principal).
fn finish(
    mut resp: Response,
    ctx: &CallContext,
    params: serde_json::Map<String, serde_json::Value>,
) -> Response {
    resp.extensions_mut().insert(ctx.principal.clone());
    with_audit(resp, params)
}

fn with_audit(mut resp: Response, params: serde_json::Map<String, serde_json::Value>) -> Response {
    if resp
        .extensions()
        .get::<super::middleware::ActionAudited>()
        .is_none()
    {
        resp.extensions_mut().insert(AuditParams(params));
    }
    resp
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
        HeaderName::from_static(WEBHOOK_REPLAYED),
        HeaderValue::from_static("true"),
    );
    resp
}

/// The answer as it is sent (a problem rendered with its request id), and what to store —
/// `None` for answers that mean nothing was done.
async fn stored(resp: Response, request_id: &str, path: &str) -> (Response, Option<StoredAnswer>) {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (
            ApiError::internal("reading the answer failed").into_response(),
            None,
        );
    };
    let problem = parts.extensions.get::<ApiError>().cloned();
    if problem
        .as_ref()
        .is_some_and(|p| NOT_STORED.contains(&p.code) || p.status.is_server_error())
    {
        return (Response::from_parts(parts, Body::from(bytes)), None);
    }
    let (status, headers, body) = match &problem {
        Some(p) => {
            let (rp, rb) = p.render(request_id, path).into_parts();
            let b = axum::body::to_bytes(rb, usize::MAX)
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            (rp.status, rp.headers, b)
        }
        None => (parts.status, parts.headers.clone(), bytes.to_vec()),
    };
    let answer = StoredAnswer {
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
    };
    (Response::from_parts(parts, Body::from(bytes)), Some(answer))
}

fn refused(r: Refusal) -> Response {
    let e = if r.code == GUARD_REFUSED {
        WebhookError::GuardRefused {
            guard: r.field,
            detail: r.detail,
        }
    } else {
        WebhookError::MappingFailed {
            field: r.field,
            detail: r.detail,
        }
    };
    ApiError::from(e).into_response()
}

/// The grants of `p` narrowed to the pools in `only` (those it covers).
fn narrowed(grants: &[Grant], only: &[String]) -> Vec<Grant> {
    grants
        .iter()
        .filter_map(|g| {
            let pools: Vec<String> = only
                .iter()
                .filter(|p| PoolName::parse(p).is_ok_and(|n| g.pools.covers(&n)))
                .cloned()
                .collect();
            (!pools.is_empty()).then_some(Grant {
                role: g.role,
                pools: PoolScope::Pools(pools),
            })
        })
        .collect()
}

/// Maps an authenticated delivery and runs it: the answer and what it led to.
async fn handle(
    st: &AppState,
    source: &Source,
    ctx: &CallContext,
    delivery_id: &str,
    json: Result<serde_json::Value, serde_json::Error>,
) -> (Response, DeliveryOutcome) {
    let mut outcome = DeliveryOutcome {
        write_back: source.write_back.is_some(),
        ..DeliveryOutcome::default()
    };
    let body = match json {
        Ok(v) => v,
        Err(_) => {
            return (
                refused(Refusal {
                    code: crate::webhooks::mapping::MAPPING_FAILED,
                    field: "body".into(),
                    detail: "the body is not JSON".into(),
                }),
                outcome,
            );
        }
    };
    let m: Mapped = match source.mapping.apply(&body) {
        Ok(m) => m,
        Err(r) => return (refused(r), outcome),
    };
    outcome.ticket = m.ticket.clone();
    outcome.ticket_id = m.ticket_id.clone();
    let origin = Origin {
        source: source.name.clone(),
        delivery_id: delivery_id.to_string(),
    };
    // The pools this delivery may reach: the source's scopes, narrowed by `allowed_pools` and
    // by the pool it names.
    let mut ctx = ctx.clone();
    let mut only: Vec<String> = source.mapping.allowed_pools().to_vec();
    if let Some(p) = &m.pool {
        only = vec![p.clone()];
    }
    if !only.is_empty() {
        ctx.principal.grants = narrowed(&ctx.principal.grants, &only);
    }
    let opts = super::fleet::FleetOptions {
        force: m.force,
        reason: m.reason.clone(),
        ticket: m.ticket.clone(),
        dry_run: m.dry_run,
        title: None,
        body: None,
    };
    let kind = m.action;
    let (items, unreachable, job_kind): (Vec<Resolved>, _, String) = match &m.session {
        Some((host, id)) => {
            let target = (|| -> Result<(PoolName, HostName, SessionId), ApiError> {
                let pool = m.pool.as_deref().unwrap_or_default();
                let pool = PoolName::parse(pool)
                    .map_err(|e| RequestError::InvalidPoolName(e.to_string()))?;
                let host = HostName::parse(host)
                    .map_err(|e| RequestError::InvalidHostName(e.to_string()))?;
                let id = SessionId::parse(id)
                    .map_err(|e| RequestError::InvalidSessionId(e.to_string()))?;
                Ok((pool, host, id))
            })();
            let (pool, host, id) = match target {
                Ok(t) => t,
                Err(e) => {
                    return (
                        refused(Refusal {
                            code: crate::webhooks::mapping::MAPPING_FAILED,
                            field: "session".into(),
                            detail: e.detail.clone(),
                        }),
                        outcome,
                    );
                }
            };
            // Refused before anything is called: a pool outside the source's scopes, or a host
            // outside the pool's inventory.
            if let Err(e) = st.gateway.check_fleet_host(&ctx, &pool, &host) {
                return (ApiError::from(e).into_response(), outcome);
            }
            let mut req = opts.request(kind, &None, pool, host, id, None);
            req.origin = Some(origin.clone());
            (vec![Ok(req)], None, format!("webhook.{}", kind.as_str()))
        }
        None => {
            let upn = m.user.clone().unwrap_or_default();
            if !ctx.principal.has(Permission::SessionsAct, None) {
                return (
                    refused(Refusal {
                        code: GUARD_REFUSED,
                        field: "pools".into(),
                        detail: "this source may not act in the pool the delivery names".into(),
                    }),
                    outcome,
                );
            }
            let found = st
                .gateway
                .user_sessions(&ctx, &upn, Reach::Granted(Permission::SessionsAct))
                .await;
            let items = found
                .sessions
                .iter()
                .map(|s| {
                    session_item(s, &upn, kind, &None, &opts).map(|mut r| {
                        r.origin = Some(origin.clone());
                        r
                    })
                })
                .collect();
            (
                items,
                Some(found.unreachable),
                format!("webhook.{}", kind.as_str()),
            )
        }
    };
    if items.is_empty() {
        // Nothing to act on: the fleet routes' empty answer.
        let q = AsyncQuery {
            run_async: Some(true),
        };
        return (
            run_items(st, &ctx, items, unreachable, &q, &job_kind, false).await,
            outcome,
        );
    }
    if let Err(e) = check_count_max(items.len(), st.gateway.limits()) {
        return (e.into_response(), outcome);
    }
    if let Err(e) = st.gateway.admit_fleet_call(&ctx) {
        return (ApiError::from(e).into_response(), outcome);
    }
    let mut inputs = Vec::with_capacity(items.len());
    for r in items {
        inputs.push(match r {
            Ok(a) => Ok(a),
            Err(f) => Err(*f),
        });
    }
    match st.gateway.submit_job_inputs(&ctx, &job_kind, inputs).await {
        Ok(job) => {
            let id = job.job.id.clone();
            outcome.job_id = Some(id.clone());
            let location = format!("/jobs/{id}");
            let mut resp = (
                StatusCode::ACCEPTED,
                Json(WebhookAccepted {
                    job_id: id,
                    location: location.clone(),
                    delivery_id: delivery_id.to_string(),
                }),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            (resp, outcome)
        }
        Err(e) => (ApiError::from(e).into_response(), outcome),
    }
}
