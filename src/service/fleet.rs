//! Many actions in one call: one result per item, in request order, each item with its own
//! intent and outcome events linked by a `batch_id`. The fleet routes (bulk on a pool, whole
//! host, one user everywhere, self-service) and jobs all run their items through
//! [`Gateway::act_batch`] / [`Gateway::act_item`], so an item behaves exactly like the single
//! action route with the same target.

use super::{ActionRequest, ActionResult, ActionTarget, CallContext, Gateway, Pool, ServiceError};
use crate::{
    auth::Permission,
    domain::{ActionOutcome, HostName, PoolName, Session},
    providers::SessionFilter,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Why an item did not get its action: the stable code of the single routes and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemError {
    pub code: String,
    pub detail: String,
}

/// `refused` (a check said no: expected user, protection, permission) or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureOutcome {
    Refused,
    Failed,
}

/// An item that was not carried out (or whose outcome is not recorded yet).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemFailure {
    pub target: ActionTarget,
    pub outcome: FailureOutcome,
    pub error: ItemError,
    /// The item's intent/outcome were recorded in the audit log (false when it was stopped
    /// before any intent, e.g. an unknown host).
    pub audited: bool,
}

/// One item's answer: the single routes' action-result shape, or a failure.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ItemResult {
    Ok(ActionResult),
    Failed(ItemFailure),
}

impl ItemResult {
    /// The summary bucket: `done`, `already_gone`, `would_do`, `refused` or `failed`.
    pub fn bucket(&self) -> &'static str {
        match self {
            ItemResult::Ok(r) => match r.outcome {
                ActionOutcome::Done => "done",
                ActionOutcome::AlreadyGone => "already_gone",
                ActionOutcome::WouldDo => "would_do",
            },
            ItemResult::Failed(f) => match f.outcome {
                FailureOutcome::Refused => "refused",
                FailureOutcome::Failed => "failed",
            },
        }
    }

    /// An item's answer from the single-action result.
    pub fn from_action(target: ActionTarget, r: Result<ActionResult, super::ActionError>) -> Self {
        match r {
            Ok(r) => ItemResult::Ok(r),
            Err(e) => {
                let outcome = match &e.error {
                    ServiceError::UserMismatch { .. }
                    | ServiceError::Protected { .. }
                    | ServiceError::Forbidden { .. } => FailureOutcome::Refused,
                    _ => FailureOutcome::Failed,
                };
                ItemResult::Failed(ItemFailure {
                    target,
                    outcome,
                    error: ItemError {
                        code: e.error.code().to_string(),
                        detail: e.error.to_string(),
                    },
                    audited: e.audited,
                })
            }
        }
    }
}

/// Counts per outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchSummary {
    pub done: usize,
    pub already_gone: usize,
    pub would_do: usize,
    pub refused: usize,
    pub failed: usize,
}

impl BatchSummary {
    pub fn add(&mut self, r: &ItemResult) {
        match r.bucket() {
            "done" => self.done += 1,
            "already_gone" => self.already_gone += 1,
            "would_do" => self.would_do += 1,
            "refused" => self.refused += 1,
            _ => self.failed += 1,
        }
    }

    pub fn of(results: &[ItemResult]) -> Self {
        let mut s = Self::default();
        for r in results {
            s.add(r);
        }
        s
    }
}

/// A fleet call's answer: one result per item in request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// Links the items' audit events (`params.batch_id`).
    pub batch_id: String,
    pub results: Vec<ItemResult>,
    pub summary: BatchSummary,
    /// User calls (`POST /users/{upn}/{action}`, `POST /me/sessions/{action}`): pools and hosts
    /// that could not be asked, so their sessions (if any) were not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<Vec<Unreachable>>,
}

/// A pool, or one host of it, that could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Unreachable {
    pub pool: String,
    /// The host, when the pool answered but one of its hosts did not (on-prem fan-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The stable code the single routes would answer (`host_unreachable`, `upstream_timeout`, ...).
    pub code: String,
    pub detail: String,
}

/// `GET /users/{upn}/sessions` (and `GET /me/sessions`): the user's sessions in every pool
/// the lookup covered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserSessions {
    pub upn: String,
    pub sessions: Vec<Session>,
    /// Pools and hosts that could not be asked; the list is partial when non-empty.
    pub unreachable: Vec<Unreachable>,
}

/// Which pools a user lookup covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Pools where the caller holds this permission.
    Granted(Permission),
    /// Every pool (self-service: the caller's own sessions).
    Own,
}

impl Pool {
    /// The down-level name (`DOMAIN\sam`) a UPN maps to in this pool (`upn_domains`).
    pub fn down_level_name(&self, upn: &str) -> Option<String> {
        let (local, suffix) = upn.rsplit_once('@')?;
        let domain = self.upn_domains.get(&suffix.to_ascii_lowercase())?;
        Some(format!("{domain}\\{local}"))
    }
}

impl Gateway {
    /// Runs one item of a batch (its `batch_id` must be set): waits for a slot of the item's
    /// pool (`fleet.pool_concurrency`), then acts exactly as the single route would.
    pub async fn act_item(self: &Arc<Self>, ctx: CallContext, req: ActionRequest) -> ItemResult {
        let target = ActionTarget {
            pool: req.pool.to_string(),
            host: req.host.to_string(),
            session_id: req.id,
        };
        let slot = match self.pool_slots.get(&req.pool) {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let r = self.act(ctx, req).await;
        drop(slot);
        ItemResult::from_action(target, r)
    }

    /// Runs the items (each with `batch_id` set to `batch_id`) concurrently, bounded per pool,
    /// and answers one result per item in the order given.
    pub async fn act_batch(
        self: &Arc<Self>,
        ctx: &CallContext,
        batch_id: String,
        items: Vec<ActionRequest>,
    ) -> BatchResult {
        let futs = items.into_iter().map(|mut req| {
            req.batch_id = Some(batch_id.clone());
            self.act_item(ctx.clone(), req)
        });
        let results = futures::future::join_all(futs).await;
        BatchResult {
            batch_id,
            summary: BatchSummary::of(&results),
            results,
            unreachable: None,
        }
    }

    /// A fleet call is rate-checked once, as a whole (its items are not, one by one).
    pub fn admit_fleet_call(&self, ctx: &CallContext) -> Result<(), ServiceError> {
        self.limiter
            .check(&ctx.principal.id)
            .map_err(|retry_after| ServiceError::RateLimited { retry_after })
    }

    /// A fleet call on one pool: the pool exists and the caller may act in it (`pool_not_found`
    /// without any grant on it, `forbidden` with another grant), checked once for the call.
    pub fn check_fleet_pool(&self, ctx: &CallContext, pool: &PoolName) -> Result<(), ServiceError> {
        self.pool_for(ctx, pool, Permission::SessionsAct)
            .map(|_| ())
    }

    /// Whether the caller holds `admin` on the pool.
    pub fn is_pool_admin(&self, ctx: &CallContext, pool: &PoolName) -> bool {
        ctx.principal.has(Permission::SessionsAdmin, Some(pool))
    }

    /// Every session of one host, for a whole-host call with `all` (needs `admin` on the pool:
    /// `forbidden` otherwise, or `pool_not_found` without any grant on it).
    #[tracing::instrument(skip_all, fields(pool = %pool, host = %host))]
    pub async fn whole_host_sessions(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
        host: &HostName,
    ) -> Result<Vec<Session>, ServiceError> {
        let p = self.pool_for(ctx, pool, Permission::SessionsAct)?;
        let p = self.host_checked(p, host)?;
        if !self.is_pool_admin(ctx, pool) {
            return Err(ServiceError::Forbidden {
                missing: Permission::SessionsAdmin,
                pool: Some(pool.to_string()),
            });
        }
        p.provider
            .list_host_sessions(host)
            .await
            .map_err(|e| self.provider_err(p, "list_host_sessions", Some(host), None, e))
    }

    /// One user's sessions in every pool `reach` covers, asked concurrently. A pool (or an
    /// on-prem host) that cannot be asked is listed in `unreachable` instead of failing the
    /// lookup. Cloud pools match the UPN; on-prem pools match the `DOMAIN\sam` their
    /// `upn_domains` map it to, and such sessions carry the matched `upn`.
    #[tracing::instrument(skip_all)]
    pub async fn user_sessions(&self, ctx: &CallContext, upn: &str, reach: Reach) -> UserSessions {
        let pools = self.pools.values().filter(|p| match reach {
            Reach::Granted(perm) => ctx.principal.has(perm, Some(&p.name)),
            Reach::Own => true,
        });
        let asks = pools.map(|p| async move {
            let alias = p.down_level_name(upn);
            let filter = SessionFilter {
                user: Some(upn.to_string()),
                state: None,
            };
            match p.provider.list_sessions(&filter).await {
                Ok(found) => {
                    let sessions: Vec<Session> = found
                        .sessions
                        .into_iter()
                        .filter_map(|mut s| {
                            if s.user_matches(upn) {
                                Some(s)
                            } else if alias.as_deref().is_some_and(|a| s.user_matches(a)) {
                                s.upn = Some(upn.to_string());
                                Some(s)
                            } else {
                                None
                            }
                        })
                        .collect();
                    let unreachable = found
                        .unreachable_hosts
                        .into_iter()
                        .map(|h| Unreachable {
                            pool: p.name.to_string(),
                            host: Some(h.host),
                            code: "host_unreachable".into(),
                            detail: h.error,
                        })
                        .collect::<Vec<_>>();
                    (sessions, unreachable)
                }
                Err(e) => {
                    let e = self.provider_err(p, "list_sessions", None, None, e);
                    (
                        Vec::new(),
                        vec![Unreachable {
                            pool: p.name.to_string(),
                            host: None,
                            code: e.code().into(),
                            detail: e.to_string(),
                        }],
                    )
                }
            }
        });
        let mut out = UserSessions {
            upn: upn.to_string(),
            sessions: Vec::new(),
            unreachable: Vec::new(),
        };
        for (s, u) in futures::future::join_all(asks).await {
            out.sessions.extend(s);
            out.unreachable.extend(u);
        }
        out
    }
}
