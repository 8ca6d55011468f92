//! Durable jobs: a fleet call answered 202 becomes a job whose items are rows in the audit
//! database, written before the caller gets its answer. A runner task per process claims
//! jobs with a lease (renewed while it runs; on PostgreSQL several replicas share the table
//! and a replica takes over a job whose lease expired) and runs the items through
//! [`Gateway::act_item`] as the job's creator, in submission order, a bounded number at once.
//!
//! Restart safety: an item is marked `started` (durably) before it is handed to the pipeline
//! and `finished` with its result after; a finished item is never run again. An item found
//! `started` without a result (its run was cut off) is resolved again: logoff and disconnect
//! simply run again (the pipeline re-reads the session, so a session already logged off
//! answers `already_gone`); message, lock and unlock are never sent twice — the item is
//! recorded failed with `outcome_unknown`.

use super::idempotency::{micros, now_us, store_err};
use super::{ActionRequest, ActionTarget, CallContext, Gateway, ServiceError};
use super::{FailureOutcome, ItemError, ItemFailure, ItemResult};
use crate::audit::chain::from_unix_micros;
use crate::audit::work::{CancelOutcome, ItemRow, JobFilter, JobRow, NewItem, NewJob, WorkStore};
use crate::auth::{Permission, Principal, Role};
use crate::domain::ActionKind;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Stable code of an item that was started but whose result was lost with its runner, and
/// which is never sent twice (message, lock, unlock).
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    CompletedWithErrors,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::CompletedWithErrors => "completed_with_errors",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "completed_with_errors" => JobState::CompletedWithErrors,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

/// Item counts: the summary buckets of a fleet call, plus items cancelled before they started
/// and items still to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    pub done: usize,
    pub already_gone: usize,
    pub would_do: usize,
    pub refused: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Not finished yet (waiting or running).
    pub pending: usize,
    pub total: usize,
}

/// An item's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Not started yet.
    Pending,
    /// Handed to the action pipeline; no result recorded yet.
    Running,
    /// Its result is recorded.
    Finished,
    /// Never started: the job was cancelled first.
    Cancelled,
}

/// One item of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobItem {
    /// Position in the submitted list (from 0).
    pub index: u64,
    pub state: ItemState,
    pub target: ActionTarget,
    /// The item's answer once finished (the fleet calls' per-item shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ItemResult>,
}

/// A job without its items (`GET /jobs`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobSummary {
    pub id: String,
    /// What the job does, e.g. `pool.logoff`.
    pub kind: String,
    pub state: JobState,
    /// The principal id of its creator.
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished: Option<OffsetDateTime>,
    /// A cancel was requested (items not started yet will not start).
    pub cancel_requested: bool,
    pub counts: JobCounts,
}

/// `GET /jobs/{id}`: the job and a page of its items.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobSummary,
    /// Items in submission order, one page (`?cursor=&limit=`).
    pub items: Vec<JobItem>,
    /// Pass as `cursor` for the next page of items; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// A job created by a webhook delivery: the write-back of its result to the ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_back: Option<super::WriteBackView>,
}

/// `GET /jobs`: a page of jobs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Filters and paging of `GET /jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub created_by: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// What the runner needs to act as the creator after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredContext {
    principal: Principal,
    request_id: String,
    client_addr: Option<String>,
    method: String,
    route: String,
}

impl StoredContext {
    fn of(ctx: &CallContext) -> Self {
        Self {
            principal: ctx.principal.clone(),
            request_id: ctx.request_id.clone(),
            client_addr: ctx.client_addr.clone(),
            method: ctx.method.clone(),
            route: ctx.route.clone(),
        }
    }

    fn context(self) -> CallContext {
        CallContext {
            request_id: self.request_id,
            principal: self.principal,
            client_addr: self.client_addr,
            method: self.method,
            route: self.route,
            started: Instant::now(),
            // The runner's own trace (a job outlives the request that submitted it).
            trace_id: crate::telemetry::current_trace_id(),
        }
    }
}

/// A job item as submitted: run it, or its answer is already known (a target that could not
/// be parsed is answered in its place, as in a synchronous call).
pub type JobInput = Result<ActionRequest, ItemResult>;

fn target_of(req: &ActionRequest) -> ActionTarget {
    ActionTarget {
        pool: req.pool.to_string(),
        host: req.host.to_string(),
        session_id: req.id,
    }
}

/// Whether an action that may have reached the backend can simply run again.
fn repeatable(kind: ActionKind) -> bool {
    matches!(kind, ActionKind::Logoff | ActionKind::Disconnect)
}

/// `admin` on any pool.
fn is_admin(p: &Principal) -> bool {
    p.grants.iter().any(|g| g.role == Role::Admin)
}

fn counts_of(rows: &[(String, Option<String>, i64)]) -> JobCounts {
    let mut c = JobCounts::default();
    for (state, bucket, n) in rows {
        let n = usize::try_from(*n).unwrap_or(0);
        c.total += n;
        match (state.as_str(), bucket.as_deref()) {
            ("finished", Some("done")) => c.done += n,
            ("finished", Some("already_gone")) => c.already_gone += n,
            ("finished", Some("would_do")) => c.would_do += n,
            ("finished", Some("refused")) => c.refused += n,
            ("finished", _) => c.failed += n,
            ("cancelled", _) => c.cancelled += n,
            _ => c.pending += n,
        }
    }
    c
}

/// The state a job ends in, from its counts.
fn final_state(c: &JobCounts, cancelled: bool) -> JobState {
    let ok = c.done + c.already_gone + c.would_do;
    if cancelled {
        JobState::Cancelled
    } else if c.refused + c.failed == 0 {
        JobState::Succeeded
    } else if ok == 0 {
        JobState::Failed
    } else {
        JobState::CompletedWithErrors
    }
}

fn time_of(us: i64) -> OffsetDateTime {
    from_unix_micros(us)
}

pub(super) fn item_of(row: &ItemRow) -> JobItem {
    let req: Option<ActionRequest> = serde_json::from_str(&row.request).ok();
    let result: Option<ItemResult> = row
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok());
    let target = match (&req, &result) {
        (Some(r), _) => target_of(r),
        (None, Some(ItemResult::Failed(f))) => f.target.clone(),
        (None, Some(ItemResult::Ok(r))) => r.target.clone(),
        (None, None) => ActionTarget {
            pool: String::new(),
            host: String::new(),
            session_id: crate::domain::SessionId(0),
        },
    };
    JobItem {
        index: u64::try_from(row.seq).unwrap_or(0),
        state: match row.state.as_str() {
            "pending" => ItemState::Pending,
            "started" => ItemState::Running,
            "cancelled" => ItemState::Cancelled,
            _ => ItemState::Finished,
        },
        target,
        result,
    }
}

impl Gateway {
    fn work(&self) -> Result<&WorkStore, ServiceError> {
        self.work
            .as_ref()
            .ok_or_else(|| ServiceError::AuditUnavailable("this audit store keeps no jobs".into()))
    }

    /// Persists a job and its items (durably, before answering) and wakes the runner.
    #[tracing::instrument(skip_all, fields(kind = kind, items = items.len()))]
    pub async fn submit_job(
        self: &Arc<Self>,
        ctx: &CallContext,
        kind: &str,
        items: Vec<ActionRequest>,
    ) -> Result<JobView, ServiceError> {
        self.submit_job_inputs(ctx, kind, items.into_iter().map(Ok).collect())
            .await
    }

    /// [`Gateway::submit_job`] with items answered at submission kept in their place.
    pub async fn submit_job_inputs(
        self: &Arc<Self>,
        ctx: &CallContext,
        kind: &str,
        items: Vec<JobInput>,
    ) -> Result<JobView, ServiceError> {
        if items.is_empty() {
            return Err(ServiceError::InvalidBody(
                "a job needs at least one item".into(),
            ));
        }
        let work = self.work()?;
        if !self.audit.healthy() {
            return Err(ServiceError::AuditUnavailable(
                "the audit store is failing (last write or heartbeat failed)".into(),
            ));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let context = serde_json::to_string(&StoredContext::of(ctx))
            .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?;
        let mut rows = Vec::with_capacity(items.len());
        for it in items {
            rows.push(match it {
                Ok(mut req) => {
                    req.batch_id = Some(id.clone());
                    NewItem {
                        request: serde_json::to_string(&req)
                            .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?,
                        answered: None,
                    }
                }
                Err(answer) => NewItem {
                    request: "null".into(),
                    answered: Some((
                        answer.bucket().to_string(),
                        serde_json::to_string(&answer)
                            .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?,
                    )),
                },
            });
        }
        let job = NewJob {
            id: id.clone(),
            kind: kind.to_string(),
            created_by: ctx.principal.id.clone(),
            context,
            created_us: now_us(),
            items: rows,
        };
        work.insert_job(&job).await.map_err(store_err)?;
        tracing::info!(job.id = %id, job.kind = kind, "job queued");
        self.job_wake.notify_one();
        self.job_view(&id, None, Some(100))
            .await?
            .ok_or_else(|| ServiceError::AuditUnavailable("job vanished after insert".into()))
    }

    async fn job_view(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Option<JobView>, ServiceError> {
        let work = self.work()?;
        let Some(row) = work.job(id).await.map_err(store_err)? else {
            return Ok(None);
        };
        let after = match cursor {
            None => -1,
            Some(c) => c
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| ServiceError::InvalidQuery("cursor is not valid".into()))?,
        };
        let limit = i64::from(limit.unwrap_or(100));
        let summary = self.summary(work, row).await?;
        let mut items = work.items(id, after, limit + 1).await.map_err(store_err)?;
        let more = items.len() as i64 > limit;
        items.truncate(usize::try_from(limit).unwrap_or(0));
        let next_cursor = if more {
            items.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        let write_back = self.write_back_of_job(id).await?;
        Ok(Some(JobView {
            job: summary,
            items: items.iter().map(item_of).collect(),
            next_cursor,
            write_back,
        }))
    }

    async fn summary(&self, work: &WorkStore, row: JobRow) -> Result<JobSummary, ServiceError> {
        let counts = counts_of(&work.counts(&row.id).await.map_err(store_err)?);
        Ok(JobSummary {
            state: JobState::parse(&row.state).unwrap_or(JobState::Failed),
            counts,
            id: row.id,
            kind: row.kind,
            created_by: row.created_by,
            created: time_of(row.created_us),
            started: row.started_us.map(time_of),
            finished: row.finished_us.map(time_of),
            cancel_requested: row.cancel_requested,
        })
    }

    /// Whether `p` may see a job of `created_by`: its creator, `admin`, `auditor`.
    fn may_see(p: &Principal, created_by: &str) -> bool {
        p.id == created_by || is_admin(p) || p.has(Permission::AuditRead, None)
    }

    /// `GET /jobs/{id}` (others than the creator, admin and auditor get `job_not_found`).
    #[tracing::instrument(skip_all, fields(job.id = id))]
    pub async fn get_job(
        &self,
        ctx: &CallContext,
        id: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<JobView, ServiceError> {
        if limit.is_some_and(|l| l == 0 || l > 1000) {
            return Err(ServiceError::InvalidQuery("limit must be 1-1000".into()));
        }
        let not_found = || ServiceError::JobNotFound(id.to_string());
        let work = self.work()?;
        let row = work
            .job(id)
            .await
            .map_err(store_err)?
            .ok_or_else(not_found)?;
        if !Self::may_see(&ctx.principal, &row.created_by) {
            return Err(not_found());
        }
        self.job_view(id, cursor, limit)
            .await?
            .ok_or_else(not_found)
    }

    /// `GET /jobs`: newest first; a caller who is neither admin nor auditor sees only its own.
    #[tracing::instrument(skip_all)]
    pub async fn list_jobs(
        &self,
        ctx: &CallContext,
        q: &JobQuery,
    ) -> Result<JobList, ServiceError> {
        if q.limit.is_some_and(|l| l == 0 || l > 1000) {
            return Err(ServiceError::InvalidQuery("limit must be 1-1000".into()));
        }
        let work = self.work()?;
        let p = &ctx.principal;
        let created_by = if is_admin(p) || p.has(Permission::AuditRead, None) {
            q.created_by.clone()
        } else {
            match &q.created_by {
                Some(c) if *c != p.id => {
                    return Ok(JobList {
                        jobs: vec![],
                        next_cursor: None,
                    });
                }
                _ => Some(p.id.clone()),
            }
        };
        let before = match &q.cursor {
            None => None,
            Some(c) => {
                let (us, id) = c
                    .split_once('_')
                    .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.to_string())))
                    .ok_or_else(|| ServiceError::InvalidQuery("cursor is not valid".into()))?;
                Some((us, id))
            }
        };
        let limit = i64::from(q.limit.unwrap_or(50));
        let mut rows = work
            .list(&JobFilter {
                state: q.state.map(|s| s.as_str().to_string()),
                kind: q.kind.clone(),
                created_by,
                before,
                limit: limit + 1,
            })
            .await
            .map_err(store_err)?;
        let more = rows.len() as i64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        let next_cursor = if more {
            rows.last().map(|r| format!("{}_{}", r.created_us, r.id))
        } else {
            None
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for r in rows {
            jobs.push(self.summary(work, r).await?);
        }
        Ok(JobList { jobs, next_cursor })
    }

    /// `POST /jobs/{id}/cancel`: the creator or `admin`. Items not started are not started;
    /// an item already sent upstream is recorded as it ends.
    #[tracing::instrument(skip_all, fields(job.id = id))]
    pub async fn cancel_job(&self, ctx: &CallContext, id: &str) -> Result<JobView, ServiceError> {
        let not_found = || ServiceError::JobNotFound(id.to_string());
        let work = self.work()?;
        let row = work
            .job(id)
            .await
            .map_err(store_err)?
            .ok_or_else(not_found)?;
        let p = &ctx.principal;
        if !Self::may_see(p, &row.created_by) {
            return Err(not_found());
        }
        if p.id != row.created_by && !is_admin(p) {
            return Err(ServiceError::Forbidden {
                missing: Permission::SessionsAdmin,
                pool: None,
            });
        }
        match work.cancel(id, now_us()).await.map_err(store_err)? {
            CancelOutcome::NotFound => return Err(not_found()),
            CancelOutcome::Finished(state) => {
                return Err(ServiceError::JobFinished {
                    id: id.to_string(),
                    state,
                });
            }
            CancelOutcome::Requested => {
                tracing::info!(job.id = id, "job cancel requested");
            }
        }
        self.job_view(id, None, Some(100))
            .await?
            .ok_or_else(not_found)
    }

    /// Starts the job runner of this process (once, at start).
    pub fn spawn_job_runner(self: &Arc<Self>) {
        if self.work.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move { me.run_jobs().await });
    }

    async fn run_jobs(self: Arc<Self>) {
        let Some(work) = self.work.clone() else {
            return;
        };
        let cfg = self.limits.jobs.clone();
        if !work.is_postgres() {
            // One process owns a SQLite file: any lease in it is a dead run's.
            match work.release_all().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(jobs = n, "resuming jobs interrupted by the previous stop"),
                Err(e) => tracing::warn!(error = %e, "could not release old job leases"),
            }
        }
        let lease = Duration::from_secs(cfg.lease_secs);
        let poll = Duration::from_millis(cfg.poll_ms);
        let running = Arc::new(tokio::sync::Semaphore::new(cfg.max_running));
        let mut last_prune = Instant::now();
        let retention = Duration::from_secs(self.limits.idempotency.retention_hours * 3600);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = Instant::now();
                let before = now_us() - micros(retention);
                if let Err(e) = work.idem_prune(before).await {
                    tracing::warn!(error = %e, "pruning idempotency keys failed");
                }
                self.prune_deliveries().await;
            }
            // Claim while there is room and work.
            while let Ok(permit) = running.clone().try_acquire_owned() {
                let now = now_us();
                let until = now + micros(lease);
                match work.claim(&self.runner_id, until, now).await {
                    Ok(Some(job)) => {
                        let me = self.clone();
                        // On the action task tracker: a graceful stop waits for the items in
                        // flight to be recorded (the runner starts no new item once stopping).
                        self.tasks.spawn(async move {
                            let id = job.id.clone();
                            if let Err(e) = me.run_job(job, lease).await {
                                tracing::warn!(job.id = %id, error = %e, "job run stopped; it resumes when its lease expires");
                            }
                            drop(permit);
                            me.job_wake.notify_one();
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming a job failed");
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.job_wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Runs one claimed job to its end (or until its lease is lost or the process stops).
    #[tracing::instrument(skip_all, fields(job.id = %job.id))]
    async fn run_job(self: &Arc<Self>, job: JobRow, lease: Duration) -> Result<(), ServiceError> {
        let work = self.work()?.clone();
        let owner = self.runner_id.clone();
        let ctx: CallContext = serde_json::from_str::<StoredContext>(&job.context)
            .map_err(|e| ServiceError::AuditUnavailable(format!("job context unreadable: {e}")))?
            .context();
        tracing::info!(job.kind = %job.kind, "job running");
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewer = {
            let (work, owner, id, lost) =
                (work.clone(), owner.clone(), job.id.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let until = now_us() + micros(lease);
                    match work.renew(&id, &owner, until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing a job lease failed"),
                    }
                }
            })
        };
        crate::metrics::job_running(1);
        let r = self.run_items(&work, &job, &ctx, &lost).await;
        crate::metrics::job_running(-1);
        renewer.abort();
        let stopped = r?;
        if stopped || lost.load(std::sync::atomic::Ordering::Relaxed) {
            if !lost.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = work.release(&job.id, &owner).await;
            }
            return Ok(());
        }
        let cancelled = work.cancel_requested(&job.id).await.map_err(store_err)?;
        let counts = counts_of(&work.counts(&job.id).await.map_err(store_err)?);
        if counts.pending > 0 && !cancelled {
            // Items were left unstarted (the lease was lost meanwhile): leave it open.
            return Ok(());
        }
        let state = final_state(&counts, cancelled);
        if work
            .finish_job(&job.id, &owner, state.as_str(), now_us())
            .await
            .map_err(store_err)?
        {
            tracing::info!(job.state = state.as_str(), "job finished");
            crate::metrics::job_finished(state.as_str());
            self.write_back_wake.notify_one();
        }
        Ok(())
    }

    /// Runs a job's open items in order, `jobs.concurrency` at once. Returns true when it
    /// stopped early because the process is stopping.
    async fn run_items(
        self: &Arc<Self>,
        work: &WorkStore,
        job: &JobRow,
        ctx: &CallContext,
        lost: &std::sync::atomic::AtomicBool,
    ) -> Result<bool, ServiceError> {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.jobs.concurrency));
        let mut running = tokio::task::JoinSet::new();
        let mut stopped = false;
        for item in work.open_items(&job.id).await.map_err(store_err)? {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                stopped = true;
                break;
            }
            if lost.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let req: ActionRequest = match serde_json::from_str(&item.request) {
                Ok(r) => r,
                Err(e) => {
                    let answer = ItemResult::Failed(ItemFailure {
                        target: ActionTarget {
                            pool: String::new(),
                            host: String::new(),
                            session_id: crate::domain::SessionId(0),
                        },
                        outcome: FailureOutcome::Failed,
                        error: ItemError {
                            code: "invalid_body".into(),
                            detail: format!("the stored item cannot be read: {e}"),
                        },
                        audited: false,
                    });
                    self.record_item(work, &job.id, item.seq, &answer).await?;
                    continue;
                }
            };
            if item.state == "started" {
                if !repeatable(req.kind) {
                    // It may have reached the backend: never send it twice.
                    let answer = ItemResult::Failed(ItemFailure {
                        target: target_of(&req),
                        outcome: FailureOutcome::Failed,
                        error: ItemError {
                            code: OUTCOME_UNKNOWN.into(),
                            detail: format!(
                                "the {} was started before the gateway stopped and its result was not recorded; it may or may not have reached the backend and is not sent again (see GET /audit with batch_id {})",
                                req.kind.as_str(),
                                job.id
                            ),
                        },
                        audited: true,
                    });
                    self.record_item(work, &job.id, item.seq, &answer).await?;
                    continue;
                }
                // Logoff/disconnect: resolved again by the pipeline (re-reads the session).
            } else if !work
                .start_item(&job.id, item.seq, &self.runner_id, now_us())
                .await
                .map_err(store_err)?
            {
                // Cancelled (or the lease was taken over): start nothing more.
                break;
            }
            let me = self.clone();
            let (work, id, seq, ctx) = (work.clone(), job.id.clone(), item.seq, ctx.clone());
            running.spawn(async move {
                let answer = me.act_item(ctx, req).await;
                let r = me.record_item(&work, &id, seq, &answer).await;
                drop(permit);
                r
            });
            // Reap what has finished, so errors surface early.
            while let Some(done) = running.try_join_next() {
                done.map_err(|e| ServiceError::AuditUnavailable(e.to_string()))??;
            }
        }
        while let Some(done) = running.join_next().await {
            done.map_err(|e| ServiceError::AuditUnavailable(e.to_string()))??;
        }
        Ok(stopped)
    }

    /// Records an item's result, retrying while the store refuses it (an action that ran
    /// must have its result kept; the item stays `started` until then).
    async fn record_item(
        &self,
        work: &WorkStore,
        id: &str,
        seq: i64,
        answer: &ItemResult,
    ) -> Result<(), ServiceError> {
        let text = serde_json::to_string(answer)
            .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?;
        let mut delay = Duration::from_millis(100);
        for _ in 0..20 {
            match work
                .finish_item(id, seq, answer.bucket(), &text, now_us())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, item = seq, "recording a job item failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Err(ServiceError::AuditUnavailable(
            "could not record a job item's result".into(),
        ))
    }
}
