//! Fleet routes: many sessions per call, one result per item (see `service::fleet`).

use super::{
    AppState,
    extract::{ApiQuery, HostPath, OptionalJson, PoolPath},
    handlers::{Ctx, bounded, common_checks},
    jobs::{AsyncQuery, runs_as_job},
    middleware::BatchId,
    problem::{ApiError, Problem, RequestError},
};
use crate::{
    domain::{ActionKind, HostName, PoolName, Session, SessionId},
    service::{
        ActionRequest, ActionTarget, BatchResult, BatchSummary, CallContext, FailureOutcome,
        ItemError, ItemFailure, ItemResult, Limits, Reach, Unreachable, UserSessions,
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
            skip_protected: false,
            self_service: false,
            origin: None,
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
/// `batch_id`); the call itself also gets its request record, carrying the same `batch_id`.
pub fn batch_response(r: BatchResult) -> Response {
    let id = BatchId(r.batch_id.clone());
    let mut resp = (StatusCode::OK, Json(r)).into_response();
    resp.extensions_mut().insert(id);
    resp
}

/// One item of a fleet call as resolved by its route: a request to run, or an answer already
/// known (a target that could not be parsed).
pub type Resolved = Result<ActionRequest, Box<ItemResult>>;

/// THE way every fleet route runs its items: the call is rate-checked once, the runnable
/// items go through [`crate::service::Gateway::act_batch`] under one `batch_id`, and the
/// answers come back in the order resolved (the lead may turn this into "submit as a job").
pub async fn run_items(
    st: &AppState,
    ctx: &CallContext,
    items: Vec<Resolved>,
    unreachable: Option<Vec<Unreachable>>,
    q: &AsyncQuery,
    job_kind: &str,
    one_host: bool,
) -> Response {
    if let Err(e) = check_count_max(items.len(), st.gateway.limits()) {
        return e.into_response();
    }
    if let Err(e) = st.gateway.admit_fleet_call(ctx) {
        return ApiError::from(e).into_response();
    }
    // `?async=true`, or more items than `fleet.sync_limit`: a durable job, answered 202.
    // Nothing to act on (a user with no session) is answered at once, job or not.
    if !items.is_empty() && runs_as_job(st, q, items.len()) {
        let mut inputs = Vec::with_capacity(items.len());
        for r in items {
            inputs.push(match r {
                Ok(a) => Ok(a),
                Err(f) => Err(*f),
            });
        }
        return super::jobs::submit(st, ctx, job_kind, inputs).await;
    }
    let batch_id = uuid::Uuid::now_v7().to_string();
    let runnable: Vec<ActionRequest> = items
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut ran = if one_host {
        st.gateway.act_whole_host(ctx, batch_id, runnable).await
    } else {
        st.gateway.act_batch(ctx, batch_id, runnable).await
    };
    let mut it = std::mem::take(&mut ran.results).into_iter();
    let results: Vec<ItemResult> = items
        .into_iter()
        .filter_map(|p| match p {
            Ok(_) => it.next(),
            Err(f) => Some(*f),
        })
        .collect();
    ran.summary = BatchSummary::of(&results);
    ran.results = results;
    ran.unreachable = unreachable;
    batch_response(ran)
}

/// The bound of `fleet.max_targets` alone (user and host calls may resolve to no session).
pub fn check_count_max(n: usize, lim: &Limits) -> Result<(), ApiError> {
    if n > lim.fleet.max_targets {
        return Err(RequestError::TooManyTargets(format!(
            "{n} targets; one call may act on at most {} sessions (fleet.max_targets)",
            lim.fleet.max_targets
        ))
        .into());
    }
    Ok(())
}

/// An item that could not even be parsed: answered in its place, not audited.
fn unparsed(pool: &str, host: &str, code: &str, detail: String) -> Box<ItemResult> {
    Box::new(ItemResult::Failed(ItemFailure {
        target: ActionTarget {
            pool: pool.to_string(),
            host: host.to_string(),
            session_id: SessionId(0),
        },
        outcome: FailureOutcome::Failed,
        error: ItemError {
            code: code.into(),
            detail,
        },
        audited: false,
    }))
}

/// Act on many sessions of one pool: one result per target, in request order.
#[utoipa::path(post, path = "/hostpools/{pool}/sessions/{action}", tag = "fleet",
    params(("pool" = String, Path), ("action" = inline(FleetAction), Path, description = "The action (lock and unlock where the pool advertises them; `message` has its own route)"), AsyncQuery),
    request_body(content = BulkBody),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 403, description = "forbidden (the caller may not act in the pool)", body = Problem, content_type = "application/problem+json"),
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
    bulk(q, st, ctx, pool, kind, &b.targets, opts).await
}

/// Send one message to many sessions of one pool: one result per target, in request order.
#[utoipa::path(post, path = "/hostpools/{pool}/sessions/message", tag = "fleet",
    params(("pool" = String, Path), AsyncQuery),
    request_body(content = BulkMessageBody),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 403, description = "forbidden (the caller may not act in the pool)", body = Problem, content_type = "application/problem+json"),
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
    bulk(q, st, ctx, pool, ActionKind::Message, &b.targets, opts).await
}

async fn bulk(
    q: AsyncQuery,
    st: AppState,
    ctx: CallContext,
    pool: PoolName,
    kind: ActionKind,
    targets: &[BulkTarget],
    opts: FleetOptions,
) -> Response {
    let lim = st.gateway.limits();
    let message = match opts.check(kind, lim) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_count(targets.len(), lim) {
        return e.into_response();
    }
    if let Err(e) = st.gateway.check_fleet_pool(&ctx, &pool) {
        return ApiError::from(e).into_response();
    }
    // A target that cannot be parsed is answered in its place (the others still run).
    let mut items = Vec::with_capacity(targets.len());
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
        items.push(match (host, id, user) {
            (Ok(h), Ok(i), Ok(u)) => Ok(opts.request(kind, &message, pool.clone(), h, i, u)),
            (h, i, u) => {
                let (code, detail) = [h.err(), i.err(), u.err()]
                    .into_iter()
                    .flatten()
                    .next()
                    .unwrap_or(("invalid_body", String::new()));
                Err(unparsed(pool.as_str(), &t.host, code, detail))
            }
        });
    }
    run_items(
        &st,
        &ctx,
        items,
        None,
        &q,
        &format!("pool.{}", kind.as_str()),
        false,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Whole host: `POST /hostpools/{pool}/sessionhosts/{host}/sessions/{action}` (and `message`)

/// `true`, and only `true` (`{"all": true}`): a closed schema for the whole-host body.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllSessions;

impl<'de> Deserialize<'de> for AllSessions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? {
            Ok(AllSessions)
        } else {
            Err(serde::de::Error::custom(
                "all must be true (name the sessions with ids instead)",
            ))
        }
    }
}

impl utoipa::PartialSchema for AllSessions {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Boolean)
            .enum_values(Some([true]))
            .description(Some(
                "Every session of the host (needs `admin` on the pool)",
            ))
            .into()
    }
}

impl ToSchema for AllSessions {}

macro_rules! host_bodies {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
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
            /// Resolve and check every session, say what would happen, change nothing.
            #[serde(default)]
            pub dry_run: bool,
            /// Admin only: act on protected users' sessions too (skipped and reported otherwise).
            #[serde(default)]
            pub include_protected: bool,
        }
    };
}

host_bodies!(
    /// Whole-host body naming the sessions: `{"ids": [3, 4]}`.
    HostIdsBody {
        /// The session ids (1 to `fleet.max_targets`), answered in this order.
        #[schema(min_items = 1, value_type = Vec<String>)]
        ids: Vec<IdValue>,
    }
);
host_bodies!(
    /// Whole-host body for every session: `{"all": true}` (needs `admin`).
    HostAllBody {
        all: AllSessions,
    }
);
host_bodies!(
    /// Whole-host message body naming the sessions.
    HostIdsMessageBody {
        /// The session ids (1 to `fleet.max_targets`), answered in this order.
        #[schema(min_items = 1, value_type = Vec<String>)]
        ids: Vec<IdValue>,
        /// Message title (1 to `server.message_title_max` characters, default 256).
        #[schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
        title: String,
        /// Message text (1 to `server.message_body_max` characters, default 4096).
        #[schema(min_length = 1, max_length = 4096, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
        body: String,
    }
);
host_bodies!(
    /// Whole-host message body for every session (needs `admin`).
    HostAllMessageBody {
        all: AllSessions,
        /// Message title (1 to `server.message_title_max` characters, default 256).
        #[schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
        title: String,
        /// Message text (1 to `server.message_body_max` characters, default 4096).
        #[schema(min_length = 1, max_length = 4096, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
        body: String,
    }
);

/// Body of the whole-host actions (`POST /hostpools/{pool}/sessionhosts/{host}/sessions/logoff`, ...): `ids` or `all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum HostBody {
    Ids(HostIdsBody),
    All(HostAllBody),
}

/// Body of `POST /hostpools/{pool}/sessionhosts/{host}/sessions/message`: `ids` or `all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum HostMessageBody {
    Ids(HostIdsMessageBody),
    All(HostAllMessageBody),
}

/// What a whole-host call names: ids, or every session.
enum HostSelection {
    Ids(Vec<IdValue>),
    All,
}

struct HostCall {
    sel: HostSelection,
    opts: FleetOptions,
    include_protected: bool,
}

impl HostBody {
    fn call(self) -> HostCall {
        let (sel, force, reason, ticket, dry_run, include_protected) = match self {
            HostBody::Ids(b) => (
                HostSelection::Ids(b.ids),
                b.force,
                b.reason,
                b.ticket,
                b.dry_run,
                b.include_protected,
            ),
            HostBody::All(b) => (
                HostSelection::All,
                b.force,
                b.reason,
                b.ticket,
                b.dry_run,
                b.include_protected,
            ),
        };
        HostCall {
            sel,
            opts: FleetOptions {
                force,
                reason,
                ticket,
                dry_run,
                title: None,
                body: None,
            },
            include_protected,
        }
    }
}

impl HostMessageBody {
    fn call(self) -> HostCall {
        let (sel, reason, ticket, dry_run, include_protected, title, body) = match self {
            HostMessageBody::Ids(b) => (
                HostSelection::Ids(b.ids),
                b.reason,
                b.ticket,
                b.dry_run,
                b.include_protected,
                b.title,
                b.body,
            ),
            HostMessageBody::All(b) => (
                HostSelection::All,
                b.reason,
                b.ticket,
                b.dry_run,
                b.include_protected,
                b.title,
                b.body,
            ),
        };
        HostCall {
            sel,
            opts: FleetOptions {
                force: false,
                reason,
                ticket,
                dry_run,
                title: Some(title),
                body: Some(body),
            },
            include_protected,
        }
    }
}

macro_rules! host_action_route {
    ($fn:ident, $kind:expr, $path:literal, $what:literal) => {
        #[doc = $what]
        #[doc = ""]
        #[doc = "The gateway's own accounts are never touched; protected users' sessions are skipped"]
        #[doc = "(refused, `session_protected`) unless an admin sets `include_protected`."]
        #[utoipa::path(post, path = $path, tag = "fleet",
            params(("pool" = String, Path), ("host" = String, Path, description = "Session host FQDN"), AsyncQuery),
            request_body(content = HostBody),
            responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
                      (status = 403, description = "forbidden (the caller may not act in the pool; `all` needs admin)", body = Problem, content_type = "application/problem+json"),
                      (status = 404, description = "pool_not_found | host_not_found", body = Problem, content_type = "application/problem+json"),
                      (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
            security(("bearer" = []), ("api_key" = [])))]
        pub async fn $fn(
            State(st): State<AppState>,
            Ctx(ctx): Ctx,
            HostPath(pool, host): HostPath,
            ApiQuery(q): ApiQuery<AsyncQuery>,
            OptionalJson(b): OptionalJson<Option<HostBody>>,
        ) -> Response {
            let Some(b) = b else {
                return ApiError::from(RequestError::InvalidBody(
                    "the body must name the sessions: {\"ids\": [..]} or {\"all\": true}".into(),
                ))
                .into_response();
            };
            whole_host(q, st, ctx, pool, host, $kind, b.call()).await
        }
    };
}

// One static route per action (not `{action}`): `.../sessions/{id}` already takes that
// path segment for reading one session, and the router cannot hold both templates.
host_action_route!(
    host_logoff,
    ActionKind::Logoff,
    "/hostpools/{pool}/sessionhosts/{host}/sessions/logoff",
    "Log off sessions of one host: the ids named, or every session (`all`, needs `admin`)."
);
host_action_route!(
    host_disconnect,
    ActionKind::Disconnect,
    "/hostpools/{pool}/sessionhosts/{host}/sessions/disconnect",
    "Disconnect sessions of one host: the ids named, or every session (`all`, needs `admin`)."
);
host_action_route!(
    host_lock,
    ActionKind::Lock,
    "/hostpools/{pool}/sessionhosts/{host}/sessions/lock",
    "Lock sessions of one host (where the pool advertises lock): the ids named, or every session (`all`, needs `admin`)."
);
host_action_route!(
    host_unlock,
    ActionKind::Unlock,
    "/hostpools/{pool}/sessionhosts/{host}/sessions/unlock",
    "Unlock sessions of one host (where the pool advertises unlock): the ids named, or every session (`all`, needs `admin`)."
);

/// Send one message to sessions of one host: the ids named, or every session (`all`, needs `admin`).
#[utoipa::path(post, path = "/hostpools/{pool}/sessionhosts/{host}/sessions/message", tag = "fleet",
    params(("pool" = String, Path), ("host" = String, Path, description = "Session host FQDN"), AsyncQuery),
    request_body(content = HostMessageBody),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 403, description = "forbidden (the caller may not act in the pool; `all` needs admin)", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "pool_not_found | host_not_found", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn host_message(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    HostPath(pool, host): HostPath,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    OptionalJson(b): OptionalJson<Option<HostMessageBody>>,
) -> Response {
    let Some(b) = b else {
        return ApiError::from(RequestError::InvalidBody(
            "the body must name the sessions and carry title and body".into(),
        ))
        .into_response();
    };
    whole_host(q, st, ctx, pool, host, ActionKind::Message, b.call()).await
}

async fn whole_host(
    q: AsyncQuery,
    st: AppState,
    ctx: CallContext,
    pool: PoolName,
    host: HostName,
    kind: ActionKind,
    call: HostCall,
) -> Response {
    let lim = st.gateway.limits();
    let message = match call.opts.check(kind, lim) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = st.gateway.check_fleet_pool(&ctx, &pool) {
        return ApiError::from(e).into_response();
    }
    let skip_protected = !(call.include_protected && st.gateway.is_pool_admin(&ctx, &pool));
    let items: Vec<Resolved> = match call.sel {
        HostSelection::Ids(ids) => {
            if let Err(e) = check_count(ids.len(), lim) {
                return e.into_response();
            }
            ids.iter()
                .map(|i| match SessionId::parse(&i.text()) {
                    Ok(id) => {
                        let mut r =
                            call.opts
                                .request(kind, &message, pool.clone(), host.clone(), id, None);
                        r.skip_protected = skip_protected;
                        Ok(r)
                    }
                    Err(e) => Err(unparsed(
                        pool.as_str(),
                        host.as_str(),
                        "invalid_session_id",
                        e.to_string(),
                    )),
                })
                .collect()
        }
        HostSelection::All => {
            let sessions = match st.gateway.whole_host_sessions(&ctx, &pool, &host).await {
                Ok(s) => s,
                Err(e) => return ApiError::from(e).into_response(),
            };
            sessions
                .iter()
                .map(|s| {
                    // The user seen now: an id reused meanwhile by someone else is refused.
                    let user = s.user.clone().or_else(|| s.ad_user.clone());
                    let mut r =
                        call.opts
                            .request(kind, &message, pool.clone(), host.clone(), s.id, user);
                    r.skip_protected = skip_protected;
                    Ok(r)
                })
                .collect()
        }
    };
    run_items(
        &st,
        &ctx,
        items,
        None,
        &q,
        &format!("host.{}", kind.as_str()),
        true,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// One user everywhere: `GET /users/{upn}/sessions`, `POST /users/{upn}/{action}` (and `message`)

/// The `{upn}` segment: `local@domain`, 1-256 characters, no whitespace, control characters,
/// `/` or `\` (the lookup maps it to each on-prem pool's `DOMAIN\sam` itself).
pub struct UpnPath(pub String);

/// Whether `s` is a UPN as the `{upn}` path parameter's schema states it.
pub fn valid_upn(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let bad = |c: char| c == '@' || c == '/' || c == '\\' || c.is_whitespace() || c.is_control();
    s.chars().count() <= 256
        && !local.is_empty()
        && !local.chars().any(bad)
        && !domain.is_empty()
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

impl<S: Send + Sync> FromRequestParts<S> for UpnPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(v) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::from(RequestError::InvalidPath(e.body_text())))?;
        let upn = v
            .iter()
            .find(|(k, _)| k == "upn")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !valid_upn(&upn) {
            return Err(RequestError::InvalidPath(
                "upn must be a user principal name such as alice@contoso.com (1-256 characters)"
                    .into(),
            )
            .into());
        }
        Ok(Self(upn))
    }
}

/// Every session of one user, in every pool the caller may read, asked concurrently. On-prem
/// pools match the `DOMAIN\sam` their `upn_domains` map the UPN to (those sessions carry
/// `upn`); pools or hosts that could not be asked are listed in `unreachable`.
#[utoipa::path(get, path = "/users/{upn}/sessions", tag = "fleet",
    params(("upn" = String, Path, description = "User principal name", min_length = 3, max_length = 256,
            pattern = r"^[^@\s/\\\u0000-\u001F\u007F-\u009F]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")),
    responses((status = 200, body = UserSessions),
              (status = 403, description = "forbidden (the caller may read no pool)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn user_sessions(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    UpnPath(upn): UpnPath,
) -> Result<Json<UserSessions>, ApiError> {
    let reach = Reach::Granted(crate::auth::Permission::SessionsRead);
    reach_check(&ctx, reach)?;
    Ok(Json(st.gateway.user_sessions(&ctx, &upn, reach).await))
}

/// A caller that holds the permission in no pool at all is told so (`forbidden`), rather
/// than answered an empty list.
fn reach_check(ctx: &CallContext, reach: Reach) -> Result<(), ApiError> {
    match reach {
        Reach::Granted(perm) if !ctx.principal.has(perm, None) => {
            Err(crate::service::ServiceError::Forbidden {
                missing: perm,
                pool: None,
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// Body of `POST /users/{upn}/{action}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserActionBody {
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
    /// Find and check every session, answer what would happen (host, id, user, state), change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Body of `POST /users/{upn}/message`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserMessageBody {
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
    /// Find and check every session, answer what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Act on every session of one user, in every pool where the caller may act: one result per
/// session, plus the pools and hosts that could not be asked.
#[utoipa::path(post, path = "/users/{upn}/{action}", tag = "fleet",
    params(("upn" = String, Path, description = "User principal name", min_length = 3, max_length = 256,
            pattern = r"^[^@\s/\\\u0000-\u001F\u007F-\u009F]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$"),
           ("action" = inline(FleetAction), Path, description = "The action (lock and unlock act in pools that advertise them; `message` has its own route)"), AsyncQuery),
    request_body(content = Option<UserActionBody>, description = "Optional"),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 403, description = "forbidden (the caller may act in no pool)", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn user_action(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    UpnPath(upn): UpnPath,
    ActionPath(kind): ActionPath,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    OptionalJson(b): OptionalJson<UserActionBody>,
) -> Response {
    let opts = FleetOptions {
        force: b.force,
        reason: b.reason,
        ticket: b.ticket,
        dry_run: b.dry_run,
        title: None,
        body: None,
    };
    user_call(
        q,
        st,
        ctx,
        upn,
        kind,
        opts,
        Reach::Granted(crate::auth::Permission::SessionsAct),
    )
    .await
}

/// Send one message to every session of one user, in every pool where the caller may act.
#[utoipa::path(post, path = "/users/{upn}/message", tag = "fleet",
    params(("upn" = String, Path, description = "User principal name", min_length = 3, max_length = 256,
            pattern = r"^[^@\s/\\\u0000-\u001F\u007F-\u009F]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$"), AsyncQuery),
    request_body(content = UserMessageBody),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 403, description = "forbidden (the caller may act in no pool)", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn user_message(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    UpnPath(upn): UpnPath,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    OptionalJson(b): OptionalJson<Option<UserMessageBody>>,
) -> Response {
    let Some(b) = b else {
        return ApiError::from(RequestError::InvalidBody(
            "message needs a title and a body".into(),
        ))
        .into_response();
    };
    let opts = FleetOptions {
        force: false,
        reason: b.reason,
        ticket: b.ticket,
        dry_run: b.dry_run,
        title: Some(b.title),
        body: Some(b.body),
    };
    user_call(
        q,
        st,
        ctx,
        upn,
        ActionKind::Message,
        opts,
        Reach::Granted(crate::auth::Permission::SessionsAct),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Self-service: `GET /me/sessions`, `POST /me/sessions/{action}` (logoff, disconnect)

/// The `{action}` of the self-service route.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelfAction {
    Logoff,
    Disconnect,
}

/// The caller's own UPN, from its token: never from the request.
fn own_upn(st: &AppState, ctx: &CallContext) -> Result<String, ApiError> {
    if !st.gateway.limits().self_service {
        return Err(RequestError::SelfServiceDisabled.into());
    }
    match &ctx.principal.upn {
        Some(u) if ctx.principal.method == crate::auth::AuthMethod::Jwt && valid_upn(u) => {
            Ok(u.clone())
        }
        _ => Err(RequestError::SelfServiceNeedsToken.into()),
    }
}

/// The caller's own sessions in every pool (self-service; no role needed). The user is the
/// one the caller's Entra ID token names (`preferred_username`, else `upn`).
#[utoipa::path(get, path = "/me/sessions", tag = "self-service",
    responses((status = 200, body = UserSessions),
              (status = 403, description = "self_service_needs_token (an API key, or a token naming no user)", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "self_service_disabled (`auth.self_service` is off)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn my_sessions(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
) -> Result<Json<UserSessions>, ApiError> {
    let upn = own_upn(&st, &ctx)?;
    Ok(Json(st.gateway.user_sessions(&ctx, &upn, Reach::Own).await))
}

/// Log off or disconnect every one of the caller's own sessions (self-service; no role
/// needed). Protected users' sessions stay refused; each session is audited like any action.
#[utoipa::path(post, path = "/me/sessions/{action}", tag = "self-service",
    params(("action" = inline(SelfAction), Path, description = "logoff or disconnect"), AsyncQuery),
    request_body(content = Option<UserActionBody>, description = "Optional"),
    responses((status = 200, body = BatchResult),
              (status = 202, description = "Runs as a job (`?async=true`, or more than `fleet.sync_limit` items); `Location: /jobs/{id}`", body = crate::service::JobView),
              (status = 403, description = "self_service_needs_token (an API key, or a token naming no user)", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "self_service_disabled (`auth.self_service` is off); an action other than logoff or disconnect answers 404 as an unknown route", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid_body | too_many_targets", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn my_action(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    ActionPath(kind): ActionPath,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    OptionalJson(b): OptionalJson<UserActionBody>,
) -> Response {
    if !matches!(kind, ActionKind::Logoff | ActionKind::Disconnect) {
        return ApiError::from(RequestError::RouteNotFound).into_response();
    }
    let upn = match own_upn(&st, &ctx) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let opts = FleetOptions {
        force: b.force,
        reason: b.reason,
        ticket: b.ticket,
        dry_run: b.dry_run,
        title: None,
        body: None,
    };
    user_call(q, st, ctx, upn, kind, opts, Reach::Own).await
}

/// Finds the user's sessions (in the pools `reach` covers) and acts on each; each item expects
/// the user it was found with, so a session id reused meanwhile is refused, not acted on.
pub async fn user_call(
    q: AsyncQuery,
    st: AppState,
    ctx: CallContext,
    upn: String,
    kind: ActionKind,
    opts: FleetOptions,
    reach: Reach,
) -> Response {
    let message = match opts.check(kind, st.gateway.limits()) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = reach_check(&ctx, reach) {
        return e.into_response();
    }
    let found = st.gateway.user_sessions(&ctx, &upn, reach).await;
    let items: Vec<Resolved> = found
        .sessions
        .iter()
        .map(|s| {
            session_item(s, &upn, kind, &message, &opts).map(|mut r| {
                r.self_service = reach == Reach::Own;
                r
            })
        })
        .collect();
    let job_kind = match reach {
        Reach::Own => format!("me.{}", kind.as_str()),
        _ => format!("user.{}", kind.as_str()),
    };
    run_items(
        &st,
        &ctx,
        items,
        Some(found.unreachable),
        &q,
        &job_kind,
        false,
    )
    .await
}

pub(crate) fn session_item(
    s: &Session,
    upn: &str,
    kind: ActionKind,
    message: &Option<(String, String)>,
    opts: &FleetOptions,
) -> Resolved {
    let pool = PoolName::parse(&s.pool)
        .map_err(|e| unparsed(&s.pool, &s.host, "invalid_pool_name", e.to_string()))?;
    let host = HostName::parse(&s.host)
        .map_err(|e| unparsed(&s.pool, &s.host, "invalid_host_name", e.to_string()))?;
    // A session matched through `upn_domains` is expected to still be that DOMAIN\sam.
    let expected = if s.upn.is_some() {
        s.ad_user.clone()
    } else {
        Some(upn.to_string())
    };
    Ok(opts.request(kind, message, pool, host, s.id, expected))
}

#[cfg(test)]
mod tests {
    use super::valid_upn;

    #[test]
    fn upn_path_values() {
        for ok in [
            "alice@contoso.com",
            "a.b-c@x",
            "ÄLICE@CONTOSO.COM",
            "o'neil@sub.contoso.com",
        ] {
            assert!(valid_upn(ok), "{ok}");
        }
        for bad in [
            "alice",
            "@contoso.com",
            "alice@",
            "a@b@c",
            "CONTOSO\\alice@contoso.com",
            "al ice@contoso.com",
            "alice@contoso..com",
            "alice@contoso_com",
            "a\u{7}@contoso.com",
        ] {
            assert!(!valid_upn(bad), "{bad}");
        }
        assert!(!valid_upn(&format!("{}@c.com", "a".repeat(251))));
        assert!(valid_upn(&format!("{}@c.com", "a".repeat(250))));
    }
}
