//! Many actions in one call: one result per item, in request order, each item with its own
//! intent and outcome events linked by a `batch_id`. The fleet routes (bulk on a pool, whole
//! host, one user everywhere, self-service) and jobs all run their items through
//! [`Gateway::act_batch`] / [`Gateway::act_item`], so an item behaves exactly like the single
//! action route with the same target.

use super::{ActionRequest, ActionResult, ActionTarget, CallContext, Gateway, ServiceError};
use crate::domain::ActionOutcome;
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
        }
    }
}
