//! The use cases. The only caller of providers and of the audit log.
//!
//! An action runs: scope check → resolve the session (re-read: ids are reused) → audit INTENT
//! (durable) → checks (expected user, protected sessions) → dry run? → provider call →
//! audit OUTCOME (durable) → result.

mod actions;
mod error;
mod recovery;

pub use actions::{ActionError, ActionRequest, ActionResult, ActionTarget};
pub use error::ServiceError;
pub use recovery::STARTED;

use crate::{
    audit::{Actor, AuditLog, NewEvent, Target},
    auth::{Permission, Principal, ProtectedSessions, RateLimiter},
    domain::{
        Capabilities, HostName, PoolName, ProviderKind, Session, SessionHost, SessionId,
        StateFilter,
    },
    providers::{PoolSessions, SessionFilter, SessionProvider, UnreachableHost},
};
use serde::Serialize;
use std::{collections::BTreeMap, sync::Arc, time::Instant};
use utoipa::ToSchema;

/// One configured pool, ready to use.
pub struct Pool {
    pub name: PoolName,
    pub kind: ProviderKind,
    pub provider: Arc<dyn SessionProvider>,
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
}

impl CallContext {
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.principal.id.clone(),
            display: self.principal.display.clone(),
            auth_method: Some(self.principal.method.as_str().to_string()),
            roles: self.principal.role_names(),
        }
    }

    fn event(&self, action: &str, target: Target) -> NewEvent {
        NewEvent {
            kind: None,
            request_id: self.request_id.clone(),
            actor: self.actor(),
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
}

/// The gateway's use cases.
pub struct Gateway {
    pools: BTreeMap<PoolName, Pool>,
    audit: AuditLog,
    guard: ProtectedSessions,
    limiter: RateLimiter,
    pub limits: Limits,
    tasks: tokio_util::task::TaskTracker,
}

impl Gateway {
    pub fn new(
        pools: Vec<Pool>,
        audit: AuditLog,
        guard: ProtectedSessions,
        limiter: RateLimiter,
        limits: Limits,
    ) -> Self {
        Self {
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            audit,
            guard,
            limiter,
            limits,
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits (up to `grace`) for in-flight actions to finish and be audited.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
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
                host: host.to_string(),
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
            .map_err(|e| self.map_pool_err(p, e))?;
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
            .map_err(|e| self.map_pool_err(p, e))?;
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
            .map_err(|e| self.map_target_err(p, host, None, e))
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
            .map_err(|e| self.map_target_err(p, host, Some(id), e))
    }

    fn map_pool_err(&self, p: &Pool, e: crate::providers::ProviderError) -> ServiceError {
        tracing::warn!(pool = %p.name, error = %e, "provider call failed");
        ServiceError::Provider(e)
    }

    fn map_target_err(
        &self,
        p: &Pool,
        host: &HostName,
        id: Option<SessionId>,
        e: crate::providers::ProviderError,
    ) -> ServiceError {
        use crate::providers::ProviderError as PE;
        match (e, id) {
            (PE::SessionNotFound, Some(id)) => ServiceError::SessionNotFound {
                pool: p.name.to_string(),
                host: host.to_string(),
                id: id.0,
            },
            (PE::HostNotFound, _) => ServiceError::HostNotFound {
                pool: p.name.to_string(),
                host: host.to_string(),
            },
            (other, _) => self.map_pool_err(p, other),
        }
    }
}
