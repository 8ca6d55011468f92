//! The use cases. The only caller of providers and of the audit log: the HTTP layer reaches
//! both through [`Gateway`] methods and sees provider failures only as [`ServiceError`].
//!
//! An action runs: rate limit → scope check → capability and inventory checks → resolve the
//! session (re-read: ids are reused) → audit INTENT (durable) → checks (expected user,
//! protected sessions) → dry run? → provider call → audit OUTCOME (durable) → result.

mod actions;
mod error;
mod fleet;
mod idempotency;
mod jobs;
mod recovery;
mod requests;
mod webhooks;
mod writeback;

/// The audit read (`GET /audit`) as the service offers it: the filter and the page.
pub use crate::audit::{AuditPage, AuditQuery};
pub use actions::Origin;
pub use actions::{ActionError, ActionRequest, ActionResult, ActionTarget};
pub use error::ServiceError;
pub use fleet::{
    BatchResult, BatchSummary, FailureOutcome, ItemError, ItemFailure, ItemResult, Reach,
    Unreachable, UserSessions,
};
pub use idempotency::{IdempotencyDecision, StoredAnswer};
pub use jobs::{
    ItemState, JobCounts, JobInput, JobItem, JobList, JobQuery, JobState, JobSummary, JobView,
    OUTCOME_UNKNOWN,
};
pub use recovery::STARTED;
pub use requests::{Caller, RequestOutcome, RequestRecord};
pub use webhooks::{DeliveryOutcome, PendingWriteBack, WriteBackResult, WriteBackView};
pub use writeback::WriteBackClients;

/// One value of every [`ServiceError`] and provider error variant (for tests of the error
/// contract).
#[cfg(test)]
pub(crate) use error::tests::{every_provider_error, every_variant as every_service_error};

use crate::{
    audit::{Actor, AuditError, AuditLog, NewEvent, Target},
    auth::{Permission, Principal, ProtectedSessions, RateLimiter},
    domain::{
        Capabilities, HostName, PoolName, ProviderKind, Session, SessionHost, SessionId,
        StateFilter,
    },
    providers::{PoolSessions, ProviderError, SessionFilter, SessionProvider, UnreachableHost},
};
use serde::Serialize;
use std::{collections::BTreeMap, sync::Arc, time::Instant};
use utoipa::ToSchema;

/// One configured pool, ready to use.
pub struct Pool {
    pub name: PoolName,
    pub kind: ProviderKind,
    pub provider: Arc<dyn SessionProvider>,
    /// On-prem pools: UPN suffix (lower case) → NetBIOS domain, for user lookups.
    pub upn_domains: BTreeMap<String, String>,
}

/// Who is calling and about which request: carried from the HTTP layer into the service.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub request_id: String,
    pub principal: Principal,
    pub client_addr: Option<String>,
    pub method: String,
    pub route: String,
    pub started: Instant,
    /// The trace of the call (`params.trace_id` of its audit events), when it has one.
    pub trace_id: Option<String>,
}

/// The audit record's actor for an authenticated caller.
fn actor_of(p: &Principal) -> Actor {
    Actor {
        id: p.id.clone(),
        display: p.display.clone(),
        auth_method: Some(p.method.as_str().to_string()),
        roles: p.role_names(),
    }
}

/// Key, in an event's `params`, of the trace id of the call (W3C, 32 hex digits).
pub const TRACE_ID: &str = "trace_id";

impl CallContext {
    /// Adds the call's trace id to an event's `params` (an object, or none yet).
    fn add_trace_id(&self, params: &mut serde_json::Value) {
        let Some(t) = &self.trace_id else { return };
        if params.is_null() {
            *params = serde_json::Value::Object(serde_json::Map::new());
        }
        if let serde_json::Value::Object(m) = params {
            m.insert(TRACE_ID.into(), t.as_str().into());
        }
    }

    fn event(&self, action: &str, target: Target) -> NewEvent {
        NewEvent {
            kind: None,
            request_id: self.request_id.clone(),
            actor: actor_of(&self.principal),
            client_addr: self.client_addr.clone(),
            method: Some(self.method.clone()),
            route: Some(self.route.clone()),
            action: action.to_string(),
            target,
            params: serde_json::Value::Null,
            outcome: String::new(),
            error_code: None,
            http_status: None,
            upstream_status: None,
            duration_ms: None,
        }
    }
}

/// A pool as shown by `GET /hostpools`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolInfo {
    pub name: String,
    pub provider: ProviderKind,
    pub capabilities: Capabilities,
}

/// `GET /hostpools/{pool}/sessions` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionList {
    pub pool: String,
    pub sessions: Vec<Session>,
    /// Hosts that could not be asked (on-prem fan-out); the list is partial when non-empty.
    pub unreachable_hosts: Vec<UnreachableHost>,
}

/// `GET /hostpools/{pool}/sessionhosts` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostList {
    pub pool: String,
    pub hosts: Vec<SessionHost>,
}

/// Service settings from config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub message_title_max: usize,
    pub message_body_max: usize,
    /// `[fleet]` bounds.
    pub fleet: crate::config::FleetConfig,
    /// `[jobs]`: the job runner.
    pub jobs: crate::config::JobsConfig,
    /// `[idempotency]`.
    pub idempotency: crate::config::IdempotencyConfig,
    /// `auth.self_service`: the `/me` routes are open to token callers.
    pub self_service: bool,
    /// `webhooks.dedup_hours`: how long a webhook delivery id is remembered.
    pub webhook_dedup_hours: u64,
    /// Write-back attempts per delivery and the delay between them (`[webhooks]`).
    pub write_back: WriteBackLimits,
}

/// How the write-back runner retries (`webhooks.write_back_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBackLimits {
    pub attempts: u32,
    pub retry: std::time::Duration,
    pub retry_max: std::time::Duration,
}

impl Default for WriteBackLimits {
    fn default() -> Self {
        Self {
            attempts: 8,
            retry: std::time::Duration::from_secs(30),
            retry_max: std::time::Duration::from_secs(3600),
        }
    }
}

/// The gateway's use cases.
pub struct Gateway {
    pools: BTreeMap<PoolName, Pool>,
    audit: AuditLog,
    guard: ProtectedSessions,
    limiter: RateLimiter,
    limits: Limits,
    tasks: tokio_util::task::TaskTracker,
    /// Bounds items of fleet calls and jobs per pool (`fleet.pool_concurrency`).
    pool_slots: BTreeMap<PoolName, Arc<tokio::sync::Semaphore>>,
    /// Jobs and idempotency keys (the audit database's work tables).
    work: Option<crate::audit::work::WorkStore>,
    /// This process's id as a job lease owner.
    runner_id: String,
    /// Wakes the job runner (a job was submitted, or a runner slot freed).
    job_wake: tokio::sync::Notify,
    /// Wakes the write-back runner (a job ended).
    write_back_wake: tokio::sync::Notify,
    /// Set at shutdown: the job runner starts nothing more.
    stopping: std::sync::atomic::AtomicBool,
}

impl Gateway {
    pub fn new(
        pools: Vec<Pool>,
        audit: AuditLog,
        guard: ProtectedSessions,
        limiter: RateLimiter,
        limits: Limits,
    ) -> Self {
        let slots = limits.fleet.pool_concurrency;
        Self {
            pool_slots: pools
                .iter()
                .map(|p| (p.name.clone(), Arc::new(tokio::sync::Semaphore::new(slots))))
                .collect(),
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            work: audit.database().map(crate::audit::work::WorkStore::new),
            runner_id: format!("runner-{}", uuid::Uuid::now_v7().simple()),
            job_wake: tokio::sync::Notify::new(),
            write_back_wake: tokio::sync::Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            audit,
            guard,
            limiter,
            limits,
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits (up to `grace`) for in-flight actions to finish and be audited.
    /// Then commits what the spool holds, if the store takes it in the time left (what is
    /// not committed stays spooled for the next start).
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        let t0 = Instant::now();
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.write_back_wake.notify_one();
        self.tasks.close();
        let done = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        let left = grace.saturating_sub(t0.elapsed());
        if self.audit.healthy() && self.audit.spool().is_some_and(|s| s.pending() > 0) {
            match tokio::time::timeout(left, self.audit.drain_spool()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "committing the spool at shutdown failed; spooled audit events stay spooled until the next start"
                ),
                Err(_) => tracing::warn!(
                    "the shutdown grace ended before the spool was committed; spooled audit events stay spooled until the next start"
                ),
            }
        }
        done
    }

    /// The audit log, for start-up and tests; the HTTP layer uses the methods below (checked
    /// by `src/layer_check.rs`).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Bounds of caller-provided text (message title and body).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the audit log takes writes: without it, actions are refused.
    pub fn ready(&self) -> bool {
        self.audit.healthy()
    }

    /// A page of the audit log, newest first (needs `audit.read`).
    #[tracing::instrument(skip_all)]
    pub async fn read_audit(
        &self,
        ctx: &CallContext,
        q: &AuditQuery,
    ) -> Result<AuditPage, ServiceError> {
        if !ctx.principal.has(Permission::AuditRead, None) {
            return Err(ServiceError::Forbidden {
                missing: Permission::AuditRead,
                pool: None,
            });
        }
        if q.limit.is_some_and(|l| l == 0 || l > 1000) {
            return Err(ServiceError::InvalidQuery("limit must be 1-1000".into()));
        }
        self.audit.query(q).await.map_err(|e| match e {
            AuditError::BadQuery(m) => ServiceError::InvalidQuery(m),
            other => ServiceError::AuditUnavailable(other.to_string()),
        })
    }

    /// Resolves a pool the caller may see with `perm`. A caller without any grant on the pool
    /// gets `pool_not_found` (existence is not revealed); one with some grant but not `perm`
    /// gets `forbidden` naming the missing permission.
    fn pool_for(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
        perm: Permission,
    ) -> Result<&Pool, ServiceError> {
        let p = self
            .pools
            .get(pool)
            .ok_or_else(|| ServiceError::PoolNotFound(pool.to_string()))?;
        ctx.principal.check(perm, pool, true).map_err(|d| {
            if d.not_found {
                ServiceError::PoolNotFound(pool.to_string())
            } else {
                ServiceError::Forbidden {
                    missing: d.missing,
                    pool: Some(pool.to_string()),
                }
            }
        })?;
        Ok(p)
    }

    fn host_checked<'a>(&self, pool: &'a Pool, host: &HostName) -> Result<&'a Pool, ServiceError> {
        if pool.provider.host_in_inventory(host) {
            Ok(pool)
        } else {
            Err(ServiceError::HostNotFound {
                pool: pool.name.to_string(),
                host: Some(host.to_string()),
            })
        }
    }

    /// Pools the caller may read.
    pub fn list_pools(&self, ctx: &CallContext) -> Vec<PoolInfo> {
        self.pools
            .values()
            .filter(|p| ctx.principal.sees_pool(&p.name))
            .map(|p| PoolInfo {
                name: p.name.to_string(),
                provider: p.kind,
                capabilities: p.provider.capabilities(),
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(pool = %pool))]
    pub async fn list_hosts(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
    ) -> Result<HostList, ServiceError> {
        let p = self.pool_for(ctx, pool, Permission::SessionsRead)?;
        let hosts = p
            .provider
            .list_hosts()
            .await
            .map_err(|e| self.provider_err(p, "list_hosts", None, None, e))?;
        Ok(HostList {
            pool: pool.to_string(),
            hosts,
        })
    }

    #[tracing::instrument(skip_all, fields(pool = %pool))]
    pub async fn list_sessions(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
        user: Option<String>,
        state: Option<StateFilter>,
    ) -> Result<SessionList, ServiceError> {
        let p = self.pool_for(ctx, pool, Permission::SessionsRead)?;
        let filter = SessionFilter {
            user: user.clone(),
            state,
        };
        let PoolSessions {
            mut sessions,
            unreachable_hosts,
        } = p
            .provider
            .list_sessions(&filter)
            .await
            .map_err(|e| self.provider_err(p, "list_sessions", None, None, e))?;
        sessions.retain(|s| {
            user.as_deref().is_none_or(|u| s.user_matches(u))
                && state.is_none_or(|f| f.matches(s.state))
        });
        Ok(SessionList {
            pool: pool.to_string(),
            sessions,
            unreachable_hosts,
        })
    }

    #[tracing::instrument(skip_all, fields(pool = %pool, host = %host))]
    pub async fn list_host_sessions(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
        host: &HostName,
    ) -> Result<Vec<Session>, ServiceError> {
        let p = self.pool_for(ctx, pool, Permission::SessionsRead)?;
        let p = self.host_checked(p, host)?;
        p.provider
            .list_host_sessions(host)
            .await
            .map_err(|e| self.provider_err(p, "list_host_sessions", Some(host), None, e))
    }

    #[tracing::instrument(skip_all, fields(pool = %pool, host = %host, session = %id))]
    pub async fn get_session(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
        host: &HostName,
        id: SessionId,
    ) -> Result<Session, ServiceError> {
        let p = self.pool_for(ctx, pool, Permission::SessionsRead)?;
        let p = self.host_checked(p, host)?;
        p.provider
            .get_session(host, id)
            .await
            .map_err(|e| self.provider_err(p, "get_session", Some(host), Some(id), e))
    }

    /// A provider failure as a [`ServiceError`], logged here unless it is a "not found" or a
    /// protected session (answers, not faults).
    fn provider_err(
        &self,
        p: &Pool,
        action: &str,
        host: Option<&HostName>,
        id: Option<SessionId>,
        e: ProviderError,
    ) -> ServiceError {
        if !matches!(
            e,
            ProviderError::SessionNotFound
                | ProviderError::HostNotFound
                | ProviderError::Protected(_)
        ) {
            tracing::warn!(pool = %p.name, error = %e, "provider call failed");
        }
        ServiceError::from_provider(e, action, &p.name, host, id)
    }
}
