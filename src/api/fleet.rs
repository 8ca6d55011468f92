//! Fleet routes: many sessions per call, one result per item (see `service::fleet`).

use super::{
    AppState,
    extract::{ApiQuery, OptionalJson, PoolPath},
    handlers::{Ctx, bounded, common_checks},
    jobs::{AsyncQuery, runs_as_job},
    problem::{ApiError, Problem, RequestError},
};
use crate::{
    domain::{ActionKind, HostName, PoolName, SessionId},
    service::{
        ActionRequest, ActionTarget, BatchResult, ItemError, ItemFailure, ItemResult, Limits,
    },
};
use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::ToSchema;

/// The `{action}` segment of a fleet route.
pub struct ActionPath(pub ActionKind);

impl<S: Send + Sync> FromRequestParts<S> for ActionPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(v) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::from(RequestError::InvalidPath(e.body_text())))?;
        let a = v
            .iter()
            .find(|(k, _)| k == "action")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let kind = match a {
            "logoff" => ActionKind::Logoff,
            "disconnect" => ActionKind::Disconnect,
            "lock" => ActionKind::Lock,
            "unlock" => ActionKind::Unlock,
            _ => return Err(RequestError::RouteNotFound.into()),
        };
        Ok(Self(kind))
    }
}

/// A session id as JSON: a number, or a string (an ARM session name or id ending in it).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum IdValue {
    Number(u64),
    Text(String),
}

impl IdValue {
    fn text(&self) -> String {
        match self {
            IdValue::Number(n) => n.to_string(),
            IdValue::Text(s) => s.clone(),
        }
    }
}

/// One target of a bulk call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkTarget {
    /// Session host FQDN (as in the single routes).
    pub host: String,
    /// Windows session id (number), or an ARM session name/id ending in it.
    #[schema(value_type = String)]
    pub id: IdValue,
    /// UPN or DOMAIN\user the caller expects for this session; another user → item `refused`.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub expected_user: Option<String>,
}

/// What every fleet action body may carry besides its targets. (Each body repeats these
/// fields itself: `#[serde(flatten)]` with `deny_unknown_fields` makes an OpenAPI `allOf` of two
/// closed objects that no body can satisfy.)
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Logoff only (ignored by the other actions): log off even if the backend would ask the user.
    pub force: bool,
    /// Why (kept in every item's audit events), up to 1000 characters.
    pub reason: Option<String>,
    /// Ticket reference, up to 128 characters.
    pub ticket: Option<String>,
    /// Resolve and check every target, say what would happen, change nothing.
    pub dry_run: bool,
    /// Message title (`message` only; required there), up to `server.message_title_max` characters.
    pub title: Option<String>,
    /// Message text (`message` only; required there), up to `server.message_body_max` characters.
    pub body: Option<String>,
}

/// Body of `POST /hostpools/{pool}/sessions/{action}` (logoff, disconnect, lock, unlock).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// The sessions to act on (1 to `fleet.max_targets`), answered in this order.
    #[schema(min_items = 1)]
    pub targets: Vec<BulkTarget>,
    /// Logoff only (ignored by the other actions): log off even if the backend would ask the user.
    #[serde(default)]
    pub force: bool,
    /// Why (kept in every item's audit events), up to 1000 characters.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub reason: Option<String>,
    /// Ticket reference, up to 128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub ticket: Option<String>,
    /// Resolve and check every target, say what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl BulkBody {
    /// The fields every fleet body shares.
    pub fn options(&self) -> FleetOptions {
        FleetOptions {
            force: self.force,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            dry_run: self.dry_run,
            title: None,
            body: None,
        }
    }
}

/// Body of `POST /hostpools/{pool}/sessions/message`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkMessageBody {
    /// The sessions to message (1 to `fleet.max_targets`), answered in this order.
    #[schema(min_items = 1)]
    pub targets: Vec<BulkTarget>,
    /// Message title (1 to `server.message_title_max` characters, default 256).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub title: String,
    /// Message text (1 to `server.message_body_max` characters, default 4096).
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub body: String,
    /// Why (kept in every item's audit events), up to 1000 characters.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub reason: Option<String>,
    /// Ticket reference, up to 128 characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub ticket: Option<String>,
    /// Resolve and check every target, say what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl BulkMessageBody {
    /// The fields every fleet body shares.
    pub fn options(&self) -> FleetOptions {
        FleetOptions {
            force: false,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            dry_run: self.dry_run,
            title: Some(self.title.clone()),
            body: Some(self.body.clone()),
        }
    }
}

/// The `{action}` of the fleet routes whose body is the same for all of them (`message` has a
/// route and a body of its own).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetAction {
    Logoff,
    Disconnect,
    Lock,
    Unlock,
}

impl FleetOptions {
    /// Checks the shared fields and turns them into the action's message (for `message`).
    fn check(&self, kind: ActionKind, lim: &Limits) -> Result<Option<(String, String)>, ApiError> {
        common_checks(&None, &self.reason, &self.ticket)?;
        if kind == ActionKind::Message {
            let (Some(t), Some(b)) = (&self.title, &self.body) else {
                return Err(
                    RequestError::InvalidBody("message needs a title and a body".into()).into(),
                );
            };
            bounded("title", &self.title, lim.message_title_max)?;
            bounded("body", &self.body, lim.message_body_max)?;
            Ok(Some((t.clone(), b.clone())))
        } else {
            // One body shape serves every action (the schema cannot tie fields to the path):
            // `title`/`body` are read for `message` only, as `force` is for `logoff` only.
            bounded("title", &self.title, lim.message_title_max)?;
            bounded("body", &self.body, lim.message_body_max)?;
            Ok(None)
        }
    }

    /// One item's request for a target already parsed.
    pub fn request(
        &self,
        kind: ActionKind,
        message: &Option<(String, String)>,
        pool: PoolName,
        host: HostName,
        id: SessionId,
        expected_user: Option<String>,
    ) -> ActionRequest {
        ActionRequest {
            pool,
            host,
            id,
            kind,
            force: self.force,
            expected_user,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            dry_run: self.dry_run,
            message: message.clone(),
            batch_id: None,
        }
    }
}

/// The number of targets against `fleet.max_targets`.
pub fn check_count(n: usize, lim: &Limits) -> Result<(), ApiError> {
    if n == 0 {
        return Err(
            RequestError::InvalidBody("targets must name at least one session".into()).into(),
        );
    }
    if n > lim.fleet.max_targets {
        return Err(RequestError::TooManyTargets(format!(
            "{n} targets; one call may name at most {} (fleet.max_targets)",
            lim.fleet.max_targets
        ))
        .into());
    }
    Ok(())
}

/// A fleet call's answer. Every item was audited on its own (intent and outcome with the
/// `batch_id`); the call itself also gets its request record.
pub fn batch_response(r: BatchResult) -> Response {
    (StatusCode::OK, Json(r)).into_response()
}

/// Act on many sessions of one pool: one result per target, in request order.
#[utoipa::path(post, path = "/hostpools/{pool}/sessions/{action}", tag = "fleet",
    params(("pool" = String, Path), ("action" = inline(FleetAction), Path, description = "The action (lock and unlock where the pool advertises them; `message` has its own route)"), AsyncQuery),
    request_body(content = BulkBody),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` targets); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 404, description = "pool_not_found (an unknown action answers 404 as an unknown route)", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn bulk_action(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    PoolPath(pool): PoolPath,
    ActionPath(kind): ActionPath,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    OptionalJson(b): OptionalJson<BulkBody>,
) -> Response {
    let opts = b.options();
    let run_async = runs_as_job(&st, &q, b.targets.len());
    bulk(st, ctx, pool, kind, &b.targets, opts, run_async).await
}

/// Send one message to many sessions of one pool: one result per target, in request order.
#[utoipa::path(post, path = "/hostpools/{pool}/sessions/message", tag = "fleet",
    params(("pool" = String, Path), AsyncQuery),
    request_body(content = BulkMessageBody),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` targets); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 404, description = "pool_not_found", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn bulk_message(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    PoolPath(pool): PoolPath,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    OptionalJson(b): OptionalJson<BulkMessageBody>,
) -> Response {
    let opts = b.options();
    let run_async = runs_as_job(&st, &q, b.targets.len());
    bulk(
        st,
        ctx,
        pool,
        ActionKind::Message,
        &b.targets,
        opts,
        run_async,
    )
    .await
}

async fn bulk(
    st: AppState,
    ctx: crate::service::CallContext,
    pool: PoolName,
    kind: ActionKind,
    targets: &[BulkTarget],
    opts: FleetOptions,
    run_async: bool,
) -> Response {
    let lim = st.gateway.limits();
    let message = match opts.check(kind, lim) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_count(targets.len(), lim) {
        return e.into_response();
    }
    // A target that cannot be parsed is answered in its place (the others still run).
    let mut parsed = Vec::with_capacity(targets.len());
    for t in targets {
        let host = HostName::parse(&t.host).map_err(|e| ("invalid_host_name", e.to_string()));
        let id = SessionId::parse(&t.id.text()).map_err(|e| ("invalid_session_id", e.to_string()));
        let user = match &t.expected_user {
            Some(_) => common_checks(&t.expected_user, &None, &None)
                .map(|()| t.expected_user.clone())
                .map_err(|_| {
                    (
                        "invalid_body",
                        "expected_user must be 1-256 characters without control characters"
                            .to_string(),
                    )
                }),
            None => Ok(None),
        };
        parsed.push(match (host, id, user) {
            (Ok(h), Ok(i), Ok(u)) => Ok(opts.request(kind, &message, pool.clone(), h, i, u)),
            (h, i, u) => {
                let (code, detail) = [h.err(), i.err(), u.err()]
                    .into_iter()
                    .flatten()
                    .next()
                    .unwrap_or(("invalid_body", String::new()));
                Err(ItemResult::Failed(ItemFailure {
                    target: ActionTarget {
                        pool: pool.to_string(),
                        host: t.host.clone(),
                        session_id: SessionId(0),
                    },
                    outcome: crate::service::FailureOutcome::Failed,
                    error: ItemError {
                        code: code.into(),
                        detail,
                    },
                    audited: false,
                }))
            }
        });
    }
    if run_async {
        return super::jobs::submit(&st, &ctx, &format!("pool.{}", kind.as_str()), parsed).await;
    }
    let batch_id = uuid::Uuid::now_v7().to_string();
    let runnable: Vec<ActionRequest> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut ran = st.gateway.act_batch(&ctx, batch_id, runnable).await;
    let mut it = std::mem::take(&mut ran.results).into_iter();
    let results: Vec<ItemResult> = parsed
        .into_iter()
        .filter_map(|p| match p {
            Ok(_) => it.next(),
            Err(f) => Some(f),
        })
        .collect();
    ran.summary = crate::service::BatchSummary::of(&results);
    ran.results = results;
    batch_response(ran)
}
