//! Job routes: `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`, and the 202 answer of
//! a fleet call that became a job (see `service::jobs`).

use super::{
    AppState,
    extract::ApiQuery,
    handlers::Ctx,
    problem::{ApiError, Problem, RequestError},
};
use crate::service::{CallContext, JobInput, JobList, JobQuery, JobState, JobView};
use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;

/// The `{id}` of a job route: a UUID.
pub struct JobPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(v) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::from(RequestError::InvalidPath(e.body_text())))?;
        let id = v
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        match uuid::Uuid::parse_str(id) {
            Ok(u) => Ok(JobPath(u.hyphenated().to_string())),
            Err(_) => Err(RequestError::InvalidPath("a job id is a UUID".into()).into()),
        }
    }
}

/// `?async=` of the fleet routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsyncQuery {
    /// Answer 202 at once with a job (`Location: /jobs/{id}`) instead of waiting for every
    /// item. Calls with more than `fleet.sync_limit` targets always run as jobs.
    #[serde(default, rename = "async")]
    #[param(rename = "async")]
    pub run_async: Option<bool>,
}

/// Whether a fleet call with `targets` targets runs as a job.
pub fn runs_as_job(st: &AppState, q: &AsyncQuery, targets: usize) -> bool {
    q.run_async.unwrap_or(false) || targets > st.gateway.limits().fleet.sync_limit
}

/// Submits the items as a job and answers 202 with `Location: /jobs/{id}` and the job.
pub async fn submit(
    st: &AppState,
    ctx: &CallContext,
    kind: &str,
    items: Vec<JobInput>,
) -> Response {
    match st.gateway.submit_job_inputs(ctx, kind, items).await {
        Ok(job) => accepted(job),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// 202 with `Location: /jobs/{id}` and the job in the body.
pub fn accepted(job: JobView) -> Response {
    let loc = format!("/jobs/{}", job.job.id);
    let mut resp = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `GET /jobs/{id}` query: paging of the items.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobItemsQuery {
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// Items per page (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `GET /jobs` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only jobs in this state.
    #[param(inline)]
    pub state: Option<JobState>,
    /// Only jobs of this kind (e.g. `pool.logoff`).
    pub kind: Option<String>,
    /// Only jobs created by this principal id.
    pub created_by: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}_[0-9a-fA-F-]{1,64}$")]
    pub cursor: Option<String>,
    /// Jobs per page (1-1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A job: state, counts and a page of its items (creator, admin and auditor; others 404).
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, format = Uuid, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The job id (a UUID)"), JobItemsQuery),
    responses((status = 200, body = JobView),
              (status = 400, description = "invalid_path | invalid_query", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "job_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_job(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    JobPath(id): JobPath,
    ApiQuery(q): ApiQuery<JobItemsQuery>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(
        st.gateway
            .get_job(&ctx, &id, q.cursor.as_deref(), q.limit)
            .await?,
    ))
}

/// Jobs, newest first, with filters and cursor paging (admin and auditor see all, others
/// their own).
#[utoipa::path(get, path = "/jobs", tag = "jobs",
    params(JobsQuery),
    responses((status = 200, body = JobList),
              (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_jobs(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let q = JobQuery {
        state: q.state,
        kind: q.kind,
        created_by: q.created_by,
        cursor: q.cursor,
        limit: q.limit,
    };
    Ok(Json(st.gateway.list_jobs(&ctx, &q).await?))
}

/// Cancels a job (creator or admin): items not started yet are not started; an item already
/// sent upstream is recorded as it ends.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, format = Uuid, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "The job id (a UUID)")),
    responses((status = 200, description = "Cancel requested (a queued job is cancelled at once)", body = JobView),
              (status = 403, description = "forbidden (an auditor may see but not cancel)", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "job_not_found", body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "job_finished", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cancel_job(
    State(st): State<AppState>,
    Ctx(ctx): Ctx,
    JobPath(id): JobPath,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(st.gateway.cancel_job(&ctx, &id).await?))
}
