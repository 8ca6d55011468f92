//! Many actions in one call: one result per item, in request order, each item with its own
//! intent and outcome events linked by a `batch_id`. The fleet routes (bulk on a pool, whole
//! host, one user everywhere, self-service) and jobs all run their items through
//! [`Gateway::act_batch`] / [`Gateway::act_item`], so an item behaves exactly like the single
//! action route with the same target.

use super::{ActionRequest, ActionResult, ActionTarget, CallContext, Gateway, Pool, ServiceError};
use crate::{
    auth::Permission,
    domain::{ActionKind, ActionOutcome, HostName, PoolName, Session, SessionId},
    providers::{ProviderError, SessionFilter},
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tracing::Instrument;
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

fn target_of(req: &ActionRequest) -> ActionTarget {
    ActionTarget {
        pool: req.pool.to_string(),
        host: req.host.to_string(),
        session_id: req.id,
    }
}

impl Gateway {
    /// Runs one item of a batch (its `batch_id` must be set): waits for a slot of the item's
    /// pool (`fleet.pool_concurrency`), then acts exactly as the single route would.
    pub async fn act_item(self: &Arc<Self>, ctx: CallContext, req: ActionRequest) -> ItemResult {
        let target = target_of(&req);
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

    /// A whole-host call: logoffs on a pool whose provider logs off many sessions of a host
    /// in one upstream call ([`crate::providers::SessionProvider::native_logoff_many`]) go
    /// through [`Self::act_host_logoff`]; anything else runs as [`Self::act_batch`] does.
    pub async fn act_whole_host(
        self: &Arc<Self>,
        ctx: &CallContext,
        batch_id: String,
        items: Vec<ActionRequest>,
    ) -> BatchResult {
        let one_call = items.first().is_some_and(|first| {
            self.pools
                .get(&first.pool)
                .is_some_and(|p| p.provider.native_logoff_many())
                && items.iter().all(|r| {
                    r.kind == ActionKind::Logoff
                        && r.pool == first.pool
                        && r.host == first.host
                        && r.force == first.force
                })
        });
        if !one_call {
            return self.act_batch(ctx, batch_id, items).await;
        }
        let items: Vec<ActionRequest> = items
            .into_iter()
            .map(|mut r| {
                r.batch_id = Some(batch_id.clone());
                r
            })
            .collect();
        let me = self.clone();
        let c = ctx.clone();
        let targets: Vec<ActionTarget> = items.iter().map(target_of).collect();
        // Its own task, as a single action: a caller that hangs up cannot cut the batch
        // between the upstream call and the outcomes.
        let task = self.tasks.spawn(
            async move { me.act_host_logoff(&c, &items).await }
                .instrument(tracing::Span::current()),
        );
        let results = match task.await {
            Ok(r) => r,
            Err(e) => targets
                .into_iter()
                .map(|t| {
                    ItemResult::from_action(
                        t,
                        Err(super::ActionError {
                            error: ServiceError::AuditUnavailable(format!(
                                "batch task ended abnormally: {e}"
                            )),
                            audited: false,
                        }),
                    )
                })
                .collect(),
        };
        BatchResult {
            batch_id,
            summary: BatchSummary::of(&results),
            results,
            unreachable: None,
        }
    }

    /// Logoffs of sessions of ONE host (same pool, host and `force`, `batch_id` set). Each
    /// item gets the single pipeline's steps and audit records (admission, resolve, intent,
    /// checks, outcome), but the host is read once for the resolves and the items that pass
    /// their checks go upstream in one `logoff_many` call, after all their intents are
    /// committed. Answers one result per item, in the order given.
    #[tracing::instrument(skip_all, fields(count = items.len(), request_id = %ctx.request_id))]
    async fn act_host_logoff(&self, ctx: &CallContext, items: &[ActionRequest]) -> Vec<ItemResult> {
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut admitted = Vec::new();
        for (i, req) in items.iter().enumerate() {
            match self.admit(ctx, req) {
                Ok(pool) => admitted.push((i, pool)),
                Err(e) => results[i] = Some(ItemResult::from_action(target_of(req), Err(e))),
            }
        }
        if let Some(&(first, pool)) = admitted.first() {
            let host = &items[first].host;
            let slot = match self.pool_slots.get(&items[first].pool) {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let listing = pool.provider.list_host_sessions(host).await;
            let mut upstream = Vec::new();
            for (i, pool) in admitted {
                let req = &items[i];
                let found = match &listing {
                    Ok(list) => list
                        .iter()
                        .find(|s| s.id == req.id)
                        .cloned()
                        .ok_or(ProviderError::SessionNotFound),
                    Err(e) => Err(e.clone()),
                };
                let session = match self.resolved(pool, req, found) {
                    Ok(s) => s,
                    Err(e) => {
                        results[i] = Some(ItemResult::from_action(target_of(req), Err(e)));
                        continue;
                    }
                };
                let pending = match self.open_intent(ctx, req, session.as_ref()).await {
                    Ok(p) => p,
                    Err(e) => {
                        results[i] = Some(ItemResult::from_action(target_of(req), Err(e)));
                        continue;
                    }
                };
                let concluded = match self.checks(ctx, req, session.as_ref()) {
                    Ok(None) => {
                        upstream.push((i, pending));
                        continue;
                    }
                    Ok(Some(ran)) => Ok(ran),
                    Err(e) => Err(e),
                };
                let r = self.close_outcome(ctx, req, pending, concluded).await;
                results[i] = Some(ItemResult::from_action(target_of(req), r));
            }
            if !upstream.is_empty() {
                let ids: Vec<SessionId> = upstream.iter().map(|(i, _)| items[*i].id).collect();
                let effects = pool
                    .provider
                    .logoff_many(host, &ids, items[first].force)
                    .await;
                let mut effects = effects.into_iter();
                for (i, pending) in upstream {
                    let req = &items[i];
                    let effect = effects.next().unwrap_or_else(|| {
                        Err(ProviderError::Upstream {
                            status: None,
                            code: "bad_provider_output".into(),
                            message: format!("{host}: no result for session {}", req.id),
                        })
                    });
                    let ran = self.effect(pool, req, effect);
                    let r = self.close_outcome(ctx, req, pending, ran).await;
                    results[i] = Some(ItemResult::from_action(target_of(req), r));
                }
            }
            drop(slot);
        }
        results.into_iter().flatten().collect()
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

    /// One session's pool and host for a call that names them (a webhook delivery): the pool
    /// exists and the caller may act in it, and the host is in the pool's inventory.
    pub fn check_fleet_host(
        &self,
        ctx: &CallContext,
        pool: &PoolName,
        host: &HostName,
    ) -> Result<(), ServiceError> {
        let p = self.pool_for(ctx, pool, Permission::SessionsAct)?;
        self.host_checked(p, host).map(|_| ())
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
