//! Thin handlers: parse typed input, call the service, map the result.

use super::{
    AppState,
    extract::{ApiQuery, HostPath, OptionalJson, PoolPath, SessionPath},
    middleware::{ActionAudited, RequestId},
    problem::{ApiError, Problem, RequestError},
};
use crate::{
    auth::Principal,
    domain::{ActionKind, HostName, PoolName, Session, SessionId, StateFilter},
    service::{
        ActionRequest, ActionResult, AuditPage, AuditQuery, CallContext, HostList, PoolInfo,
        ServiceError, SessionList,
    },
};
use axum::{
    Json,
    extract::{ConnectInfo, FromRequestParts, MatchedPath, State},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, time::Instant};
use utoipa::{IntoParams, ToSchema};

/// Builds the service's [`CallContext`] from what the middleware put on the request.
pub struct Ctx(pub CallContext);

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _st: &AppState) -> Result<Self, ApiError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route reached without authentication"))?;
        Ok(Ctx(call_context(parts, principal, Instant::now())))
    }
}

/// The service's [`CallContext`] for a request made by `principal`, from what the middleware put
/// on it (request id, client address, matched route, trace id).
pub(crate) fn call_context(parts: &Parts, principal: Principal, started: Instant) -> CallContext {
    CallContext {
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        principal,
        client_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        method: parts.method.to_string(),
        route: parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string()),
        started,
        trace_id: parts
            .extensions
            .get::<super::middleware::TraceId>()
            .map(|t| t.0.clone()),
    }
}

/// `GET /healthz` body.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: the audit log takes writes (actions would otherwise be refused).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "Audit log unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(st): State<AppState>) -> Response {
    if st.gateway.ready() {
        Json(Health {
            status: "ready",
            version: env!("CARGO_PKG_VERSION"),
        })
        .into_response()
    } else {
        ApiError::from(ServiceError::AuditUnavailable("not ready".into())).into_response()
    }
}

/// The OpenAPI document of this API (without a credential when `[docs] public = true`).
#[utoipa::path(get, path = "/openapi.yaml", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/yaml", body = Object)),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn openapi_yaml() -> Response {
    match super::openapi::yaml() {
        Ok(y) => ([(header::CONTENT_TYPE, "application/yaml")], y).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// `GET /hostpools` body.
#[derive(Serialize, ToSchema)]
pub struct PoolListBody {
    pub pools: Vec<PoolInfo>,
}

/// Configured host pools the caller may read, with their provider and supported actions.
#[utoipa::path(get, path = "/hostpools", tag = "sessions",
    responses((status = 200, body = PoolListBody), (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_pools(State(st): State<AppState>, Ctx(ctx): Ctx) -> Json<PoolListBody> {
    Json(PoolListBody {
        pools: st.gateway.list_pools(&ctx),
    })
}

/// Session hosts of a pool with status, session count and drain state.
#[utoipa::path(get, path = "/hostpools/{pool}/sessionhosts", tag = "sessions",
    params(("pool" = String, Path, description = "Pool name as configured")),
    responses((status = 200, body = HostList),
              (status = 404, description = "pool_not_found", body = Problem, content_type = "application/problem+json"),
              (status = 502, description = "upstream error", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_hosts(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    PoolPath(pool): PoolPath,
) -> Result<Json<HostList>, ApiError> {
    Ok(Json(st.gateway.list_hosts(&ctx, &pool).await?))
}

/// Filters for pool-wide session lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// User principal name (or DOMAIN\user), case-insensitive, 1-256 characters.
    #[param(min_length = 1, max_length = 256)]
    pub user: Option<String>,
    /// `active` or `disconnected`.
    pub state: Option<StateFilter>,
}

/// Every session of a pool, optionally filtered by user and state.
#[utoipa::path(get, path = "/hostpools/{pool}/sessions", tag = "sessions",
    params(("pool" = String, Path), SessionsQuery),
    responses((status = 200, body = SessionList),
              (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "pool_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_sessions(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    PoolPath(pool): PoolPath,
    ApiQuery(q): ApiQuery<SessionsQuery>,
) -> Result<Json<SessionList>, ApiError> {
    if let Some(u) = &q.user
        && (u.is_empty() || u.chars().count() > 256)
    {
        return Err(RequestError::InvalidQuery("user must be 1-256 characters".into()).into());
    }
    Ok(Json(
        st.gateway
            .list_sessions(&ctx, &pool, q.user, q.state)
            .await?,
    ))
}

/// `GET .../sessionhosts/{host}/sessions` body.
#[derive(Serialize, ToSchema)]
pub struct HostSessionsBody {
    pub pool: String,
    pub host: String,
    pub sessions: Vec<Session>,
}

/// Sessions on one session host.
#[utoipa::path(get, path = "/hostpools/{pool}/sessionhosts/{host}/sessions", tag = "sessions",
    params(("pool" = String, Path), ("host" = String, Path, description = "Session host FQDN")),
    responses((status = 200, body = HostSessionsBody),
              (status = 404, description = "pool_not_found | host_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_host_sessions(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    HostPath(pool, host): HostPath,
) -> Result<Json<HostSessionsBody>, ApiError> {
    let sessions = st.gateway.list_host_sessions(&ctx, &pool, &host).await?;
    Ok(Json(HostSessionsBody {
        pool: pool.to_string(),
        host: host.to_string(),
        sessions,
    }))
}

/// One session.
#[utoipa::path(get, path = "/", tag = "sessions",
    params(("pool" = String, Path), ("host" = String, Path), ("id" = String, Path, description = "Windows session id, or an ARM session name/id ending in it")),
    responses((status = 200, body = Session),
              (status = 400, description = "invalid_session_id", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "pool_not_found | host_not_found | session_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_session(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    SessionPath(pool, host, id): SessionPath,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(st.gateway.get_session(&ctx, &pool, &host, id).await?))
}

/// Body of `POST .../logoff` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoffBody {
    /// Log off even if the backend would ask the user (AVD `force=true`, classic `Force=True`
    /// which also clears broker leftovers of hosts that are gone).
    #[serde(default)]
    pub force: bool,
    /// UPN or DOMAIN\user the caller expects; a different user answers 409 and nothing is done.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub expected_user: Option<String>,
    /// Why (kept in the audit log), up to 1000 characters.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub reason: Option<String>,
    /// Ticket reference (kept in the audit log), up to 128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub ticket: Option<String>,
    /// Resolve and check the target, say what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Body of `POST .../disconnect`, `.../lock`, `.../unlock` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    /// UPN or DOMAIN\user the caller expects; a different user answers 409 and nothing is done.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub expected_user: Option<String>,
    /// Why (kept in the audit log).
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub reason: Option<String>,
    /// Ticket reference (kept in the audit log).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub ticket: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Body of `POST .../message`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// Message title (1 to `server.message_title_max` characters, default 256).
    #[serde(default)]
    #[schema(
        required = true,
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub title: String,
    /// Message text (1 to `server.message_body_max` characters, default 4096).
    #[serde(default)]
    #[schema(
        required = true,
        min_length = 1,
        max_length = 4096,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub body: String,
    /// UPN or DOMAIN\user the caller expects; a different user answers 409 and nothing is done.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub expected_user: Option<String>,
    /// Why (kept in the audit log).
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub reason: Option<String>,
    /// Ticket reference (kept in the audit log).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub ticket: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

pub(super) fn bounded(name: &str, v: &Option<String>, max: usize) -> Result<(), ApiError> {
    if let Some(s) = v {
        let n = s.chars().count();
        if n == 0 || n > max {
            return Err(
                RequestError::InvalidBody(format!("{name} must be 1-{max} characters")).into(),
            );
        }
        if s.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            return Err(RequestError::InvalidBody(format!(
                "{name} must not contain control characters"
            ))
            .into());
        }
    }
    Ok(())
}

pub(super) fn common_checks(
    expected_user: &Option<String>,
    reason: &Option<String>,
    ticket: &Option<String>,
) -> Result<(), ApiError> {
    bounded("expected_user", expected_user, 256)?;
    bounded("reason", reason, 1000)?;
    bounded("ticket", ticket, 128)
}

async fn run_action(st: &AppState, ctx: CallContext, req: ActionRequest) -> Response {
    match st.gateway.act(ctx, req).await {
        Ok(r) => {
            let mut resp = (StatusCode::OK, Json(r)).into_response();
            resp.extensions_mut().insert(ActionAudited);
            resp
        }
        Err(e) => {
            let mut resp = ApiError::from(e.error).into_response();
            if e.audited {
                resp.extensions_mut().insert(ActionAudited);
            }
            resp
        }
    }
}

const ACTION_ERRORS: &str = "see the problem `code`";

/// Log off a session. Already gone → 200 with outcome `already_gone`.
#[utoipa::path(post, path = "/logoff", tag = "actions",
    params(("pool" = String, Path), ("host" = String, Path), ("id" = String, Path)),
    request_body(content = Option<LogoffBody>, description = "Optional"),
    responses((status = 200, body = ActionResult),
              (status = 404, description = ACTION_ERRORS, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "user_mismatch", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body", body = Problem, content_type = "application/problem+json"),
              (status = 502, description = "upstream_auth_failed, upstream_error, ...", body = Problem, content_type = "application/problem+json"),
              (status = 503, description = "upstream_throttled | audit_unavailable (with Retry-After)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn logoff(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    SessionPath(pool, host, id): SessionPath,
    OptionalJson(b): OptionalJson<LogoffBody>,
) -> Response {
    if let Err(e) = common_checks(&b.expected_user, &b.reason, &b.ticket) {
        return e.into_response();
    }
    let req = ActionRequest {
        pool,
        host,
        id,
        kind: ActionKind::Logoff,
        force: b.force,
        expected_user: b.expected_user,
        reason: b.reason,
        ticket: b.ticket,
        dry_run: b.dry_run,
        message: None,
        batch_id: None,
        skip_protected: false,
        self_service: false,
        origin: None,
    };
    run_action(&st, ctx, req).await
}

async fn simple_action(
    st: AppState,
    ctx: CallContext,
    (pool, host, id): (PoolName, HostName, SessionId),
    b: DisconnectBody,
    kind: ActionKind,
) -> Response {
    if let Err(e) = common_checks(&b.expected_user, &b.reason, &b.ticket) {
        return e.into_response();
    }
    let req = ActionRequest {
        pool,
        host,
        id,
        kind,
        force: false,
        expected_user: b.expected_user,
        reason: b.reason,
        ticket: b.ticket,
        dry_run: b.dry_run,
        message: None,
        batch_id: None,
        skip_protected: false,
        self_service: false,
        origin: None,
    };
    run_action(&st, ctx, req).await
}

/// Disconnect a session (it stays signed in).
#[utoipa::path(post, path = "/disconnect", tag = "actions",
    params(("pool" = String, Path), ("host" = String, Path), ("id" = String, Path)),
    request_body(content = Option<DisconnectBody>, description = "Optional"),
    responses((status = 200, body = ActionResult),
              (status = 404, description = ACTION_ERRORS, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "user_mismatch", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn disconnect(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    SessionPath(pool, host, id): SessionPath,
    OptionalJson(b): OptionalJson<DisconnectBody>,
) -> Response {
    simple_action(st, ctx, (pool, host, id), b, ActionKind::Disconnect).await
}

/// Lock a session (MultiPoint pools only; see `capabilities.actions`).
#[utoipa::path(post, path = "/lock", tag = "actions",
    params(("pool" = String, Path), ("host" = String, Path), ("id" = String, Path)),
    request_body(content = Option<DisconnectBody>, description = "Optional"),
    responses((status = 200, body = ActionResult),
              (status = 409, description = "action_not_supported | user_mismatch", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn lock(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    SessionPath(pool, host, id): SessionPath,
    OptionalJson(b): OptionalJson<DisconnectBody>,
) -> Response {
    simple_action(st, ctx, (pool, host, id), b, ActionKind::Lock).await
}

/// Unlock a session (MultiPoint pools only).
#[utoipa::path(post, path = "/unlock", tag = "actions",
    params(("pool" = String, Path), ("host" = String, Path), ("id" = String, Path)),
    request_body(content = Option<DisconnectBody>, description = "Optional"),
    responses((status = 200, body = ActionResult),
              (status = 409, description = "action_not_supported | user_mismatch", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn unlock(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    SessionPath(pool, host, id): SessionPath,
    OptionalJson(b): OptionalJson<DisconnectBody>,
) -> Response {
    simple_action(st, ctx, (pool, host, id), b, ActionKind::Unlock).await
}

/// Send a message to a session's user.
#[utoipa::path(post, path = "/message", tag = "actions",
    params(("pool" = String, Path), ("host" = String, Path), ("id" = String, Path)),
    request_body(content = MessageBody),
    responses((status = 200, body = ActionResult),
              (status = 404, description = ACTION_ERRORS, body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn message(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    SessionPath(pool, host, id): SessionPath,
    OptionalJson(b): OptionalJson<MessageBody>,
) -> Response {
    let lim = st.gateway.limits();
    let checks = common_checks(&b.expected_user, &b.reason, &b.ticket)
        .and_then(|()| bounded("title", &Some(b.title.clone()), lim.message_title_max))
        .and_then(|()| bounded("body", &Some(b.body.clone()), lim.message_body_max));
    if let Err(e) = checks {
        return e.into_response();
    }
    let req = ActionRequest {
        pool,
        host,
        id,
        kind: ActionKind::Message,
        force: false,
        expected_user: b.expected_user,
        reason: b.reason,
        ticket: b.ticket,
        dry_run: b.dry_run,
        message: Some((b.title, b.body)),
        batch_id: None,
        skip_protected: false,
        self_service: false,
        origin: None,
    };
    run_action(&st, ctx, req).await
}

/// The audit log, newest first, filtered, with cursor pagination (auditor role).
#[utoipa::path(get, path = "/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = AuditPage),
              (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
              (status = 403, description = "forbidden (needs audit.read)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn read_audit(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(st.gateway.read_audit(&ctx, &q).await?))
}

/// Unknown route.
pub async fn not_found() -> ApiError {
    RequestError::RouteNotFound.into()
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    RequestError::MethodNotAllowed.into()
}
