//! Session actions: logoff, disconnect, message, lock, unlock.

use super::{CallContext, Gateway, Pool, ServiceError};
use crate::{
    audit::{EventKind, Kept, NewEvent, Target},
    auth::{Permission, Protection},
    domain::{ActionKind, ActionOutcome, HostName, PoolName, Session, SessionId, SessionState},
    providers::{ActionEffect, ProviderError},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::Instrument;
use utoipa::ToSchema;

/// An action as the HTTP layer hands it over (already validated for shape and bounds).
/// Serde: a job keeps its items' requests in the audit database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRequest {
    pub pool: PoolName,
    pub host: HostName,
    pub id: SessionId,
    pub kind: ActionKind,
    pub force: bool,
    pub expected_user: Option<String>,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub dry_run: bool,
    /// Title and body, for `message`.
    pub message: Option<(String, String)>,
    /// The fleet call or job this item belongs to (audited as `params.batch_id`); items of a
    /// batch are not rate-limited one by one (the batch call was).
    pub batch_id: Option<String>,
    /// Whole-host calls: a protected user's session is skipped (refused, `session_protected`)
    /// even for an admin, unless the admin asked for `include_protected`.
    pub skip_protected: bool,
    /// Self-service (`/me`): the caller acts on its own session without a role on the pool;
    /// `expected_user` (the caller's own name, as found) must be set and is checked as usual.
    pub self_service: bool,
    /// The webhook delivery that asked for it (audited as `params.webhook_source` and
    /// `params.delivery_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where an action came from, when not from an API call: a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub source: String,
    pub delivery_id: String,
}

/// A failed action, and whether the service already audited it (intent and outcome).
#[derive(Debug, Clone)]
pub struct ActionError {
    pub error: ServiceError,
    pub audited: bool,
}

/// What an action was aimed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActionTarget {
    pub pool: String,
    pub host: String,
    pub session_id: SessionId,
}

/// The one action-result shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResult {
    pub action: ActionKind,
    pub target: ActionTarget,
    /// The session's user as resolved before acting (`null` when the session was already gone).
    pub user: Option<String>,
    /// The session's state as resolved before acting (absent when the session was already
    /// gone); with `dry_run`, this and `user` are the blast radius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SessionState>,
    pub outcome: ActionOutcome,
    pub dry_run: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    pub request_id: String,
    /// Id of the audit event that recorded the outcome.
    pub audit_event_id: String,
}

/// Key, in an outcome event's `params`, of the id of the intent event it closes (hashed into
/// the chain with the rest of the event; start-up recovery pairs intents and outcomes on it).
pub const INTENT_ID: &str = "intent_id";

/// `params` with the intent's event id added.
fn with_intent_id(mut params: serde_json::Value, intent_id: &str) -> serde_json::Value {
    if let serde_json::Value::Object(m) = &mut params {
        m.insert(INTENT_ID.into(), intent_id.into());
        params
    } else {
        serde_json::json!({ INTENT_ID: intent_id, "params": params })
    }
}

/// An action whose intent is recorded and whose outcome is still to be recorded.
pub(super) struct Pending {
    intent_id: String,
    target: Target,
    params: serde_json::Value,
    user: Option<String>,
    state: Option<SessionState>,
}

fn unaudited(error: ServiceError) -> ActionError {
    ActionError {
        error,
        audited: false,
    }
}

fn audited(error: ServiceError) -> ActionError {
    ActionError {
        error,
        audited: true,
    }
}

/// What an action came to, before it is recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ran {
    outcome: ActionOutcome,
    /// The backend said the session was gone only when the gateway repeated a call whose
    /// earlier attempt may have reached it (audited as `params.after_retry`).
    after_retry: bool,
}

impl Ran {
    fn done() -> Self {
        ActionOutcome::Done.into()
    }
}

impl From<ActionOutcome> for Ran {
    fn from(outcome: ActionOutcome) -> Self {
        Self {
            outcome,
            after_retry: false,
        }
    }
}

impl ActionRequest {
    fn params(&self) -> serde_json::Value {
        let mut p = serde_json::json!({
            "force": self.force,
            "dry_run": self.dry_run,
            "reason": self.reason,
            "ticket": self.ticket,
            "expected_user": self.expected_user,
        });
        if let Some(b) = &self.batch_id {
            p["batch_id"] = b.as_str().into();
        }
        if let Some(o) = &self.origin {
            p["webhook_source"] = o.source.as_str().into();
            p["delivery_id"] = o.delivery_id.as_str().into();
        }
        if let Some((title, body)) = &self.message {
            p["message_title_chars"] = title.chars().count().into();
            p["message_body_chars"] = body.chars().count().into();
            let mut h = Sha256::new();
            h.update(title.as_bytes());
            h.update([0u8]);
            h.update(body.as_bytes());
            p["message_sha256"] = hex::encode(h.finalize()).into();
        }
        p
    }
}

impl Gateway {
    /// Runs an action. The work runs on its own task, so a caller that hangs up (or a request
    /// timeout) cannot cancel it between the provider call and its outcome record.
    pub async fn act(
        self: &Arc<Self>,
        ctx: CallContext,
        req: ActionRequest,
    ) -> Result<ActionResult, ActionError> {
        let me = self.clone();
        let task = self.tasks.spawn(
            async move { me.act_inner(&ctx, &req).await }.instrument(tracing::Span::current()),
        );
        match task.await {
            Ok(r) => r,
            Err(e) => Err(ActionError {
                error: ServiceError::AuditUnavailable(format!("action task ended abnormally: {e}")),
                audited: false,
            }),
        }
    }

    #[tracing::instrument(name = "action", skip_all, fields(otel.name = req.kind.as_str(), pool = %req.pool, host = %req.host, session = %req.id, action = req.kind.as_str(), request_id = %ctx.request_id))]
    async fn act_inner(
        &self,
        ctx: &CallContext,
        req: &ActionRequest,
    ) -> Result<ActionResult, ActionError> {
        let pool = self.admit(ctx, req)?;
        let found = pool.provider.get_session(&req.host, req.id).await;
        let session = self.resolved(pool, req, found)?;
        let pending = self.open_intent(ctx, req, session.as_ref()).await?;
        let result = match self.checks(ctx, req, session.as_ref()) {
            Ok(Some(concluded)) => Ok(concluded),
            Ok(None) => self.call(req, pool).await,
            Err(e) => Err(e),
        };
        self.close_outcome(ctx, req, pending, result).await
    }

    /// The checks made before anything goes upstream (none of them audited: no intent yet):
    /// the rate limit (single calls), the pool and the caller's role on it (or self-service),
    /// the action's support by the provider, the host's inventory, and the audit store's health.
    pub(super) fn admit(
        &self,
        ctx: &CallContext,
        req: &ActionRequest,
    ) -> Result<&Pool, ActionError> {
        if req.batch_id.is_none()
            && let Err(retry_after) = self.limiter.check(&ctx.principal.id)
        {
            return Err(unaudited(ServiceError::RateLimited { retry_after }));
        }
        let pool = if req.self_service {
            if req.expected_user.is_none() || ctx.principal.upn.is_none() {
                return Err(unaudited(ServiceError::Forbidden {
                    missing: Permission::SessionsAct,
                    pool: Some(req.pool.to_string()),
                }));
            }
            self.pools
                .get(&req.pool)
                .ok_or_else(|| unaudited(ServiceError::PoolNotFound(req.pool.to_string())))?
        } else {
            self.pool_for(ctx, &req.pool, Permission::SessionsAct)
                .map_err(unaudited)?
        };
        let caps = pool.provider.capabilities();
        if !caps.actions.contains(&req.kind) {
            return Err(unaudited(ServiceError::ActionNotSupported {
                action: req.kind.as_str().into(),
                pool: req.pool.to_string(),
            }));
        }
        let pool = self.host_checked(pool, &req.host).map_err(unaudited)?;

        // Fail fast: while the audit store is known to refuse writes, no intent could be
        // recorded, so nothing goes upstream, not even the resolve read.
        if !self.audit.healthy() {
            return Err(unaudited(ServiceError::AuditUnavailable(
                "the audit store is failing (last write or heartbeat failed)".into(),
            )));
        }
        Ok(pool)
    }

    /// Resolve: ids are reused by Windows, and protection depends on the user. `found` is the
    /// backend's answer for the session (a logoff of a session that is gone is `None`).
    pub(super) fn resolved(
        &self,
        pool: &Pool,
        req: &ActionRequest,
        found: Result<Session, ProviderError>,
    ) -> Result<Option<Session>, ActionError> {
        match found {
            Ok(s) => Ok(Some(s)),
            Err(ProviderError::SessionNotFound) if req.kind == ActionKind::Logoff => Ok(None),
            Err(e) => Err(unaudited(self.provider_err(
                pool,
                req.kind.as_str(),
                Some(&req.host),
                Some(req.id),
                e,
            ))),
        }
    }

    /// Records the action's intent (committed before anything is sent upstream).
    pub(super) async fn open_intent(
        &self,
        ctx: &CallContext,
        req: &ActionRequest,
        session: Option<&Session>,
    ) -> Result<Pending, ActionError> {
        let user = session.and_then(|s| s.user.clone().or_else(|| s.ad_user.clone()));
        let state = session.map(|s| s.state);
        let target = Target {
            pool: Some(req.pool.to_string()),
            host: Some(req.host.to_string()),
            session_id: Some(req.id.0),
            user: user.clone(),
        };
        let params = req.params();
        let mut intent = ctx.event(req.kind.as_str(), target.clone());
        intent.kind = Some(EventKind::Intent);
        intent.params = params.clone();
        ctx.add_trace_id(&mut intent.params);
        intent.outcome = "pending".into();
        let intent = self
            .audit
            .record(intent)
            .instrument(tracing::info_span!(
                "audit_commit",
                otel.name = "audit commit intent"
            ))
            .await
            .map_err(|e| unaudited(ServiceError::AuditUnavailable(e.to_string())))?;
        Ok(Pending {
            intent_id: intent.id,
            target,
            params,
            user,
            state,
        })
    }

    /// Records the outcome that closes `pending` and answers the action's result.
    pub(super) async fn close_outcome(
        &self,
        ctx: &CallContext,
        req: &ActionRequest,
        pending: Pending,
        result: Result<Ran, ServiceError>,
    ) -> Result<ActionResult, ActionError> {
        let Pending {
            intent_id,
            target,
            params,
            user,
            state,
        } = pending;
        let mut outcome = ctx.event(req.kind.as_str(), target);
        outcome.kind = Some(EventKind::Outcome);
        outcome.params = with_intent_id(params, &intent_id);
        ctx.add_trace_id(&mut outcome.params);
        outcome.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
        match &result {
            Ok(ran) => {
                outcome.outcome = match ran.outcome {
                    ActionOutcome::Done => "done",
                    ActionOutcome::AlreadyGone => "already_gone",
                    ActionOutcome::WouldDo => "would_do",
                }
                .into();
                if ran.after_retry {
                    outcome.params["after_retry"] = true.into();
                }
            }
            Err(e) => {
                outcome.outcome = match e {
                    ServiceError::UserMismatch { .. }
                    | ServiceError::Protected { .. }
                    | ServiceError::Forbidden { .. } => "refused",
                    _ => "failed",
                }
                .into();
                outcome.error_code = Some(e.code().to_string());
                outcome.upstream_status = e.upstream_status();
            }
        }
        let stored = match self.keep_outcome(outcome.clone()).await {
            Some(stored) => stored,
            None => {
                return Err(audited(ServiceError::OutcomeNotRecorded {
                    outcome: outcome.outcome,
                    error_code: outcome.error_code,
                    intent_event_id: intent_id,
                }));
            }
        };
        let outcome = result.map_err(audited)?.outcome;
        Ok(ActionResult {
            action: req.kind,
            target: ActionTarget {
                pool: req.pool.to_string(),
                host: req.host.to_string(),
                session_id: req.id,
            },
            user,
            state,
            outcome,
            dry_run: req.dry_run,
            time: stored.time,
            request_id: ctx.request_id.clone(),
            audit_event_id: stored.id,
        })
    }

    /// Keeps an outcome: the action has run, so its record must never be lost. The record is
    /// handed to a task of its own (tracked, so a graceful stop waits for it) that commits it
    /// or, when the store refuses, spools it locally for the drainer (`AuditLog::record_or_spool`).
    /// The caller waits at most the write timeout for the commit; `None` means the answer must
    /// leave before the outcome is in the chain (it is still kept).
    async fn keep_outcome(&self, ev: NewEvent) -> Option<crate::audit::AuditEvent> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let audit = self.audit.clone();
        let span = tracing::info_span!("audit_commit", otel.name = "audit commit outcome");
        self.tasks.spawn(
            async move {
                let _ = tx.send(audit.record_or_spool(ev).await);
            }
            .instrument(span),
        );
        match tokio::time::timeout(self.audit.write_timeout(), rx).await {
            Ok(Ok(Kept::Stored(stored))) => Some(*stored),
            Ok(Ok(Kept::Spooled)) | Ok(Err(_)) | Err(_) => {
                tracing::error!(
                    "an action outcome could not be committed in time; it is kept and will be recorded"
                );
                None
            }
        }
    }

    /// The checks made after the intent is recorded: `Ok(Some(_))` concludes the action
    /// without any upstream call (the session is already gone, or a dry run), `Ok(None)` lets
    /// it go upstream, `Err` refuses it (expected user, protection).
    pub(super) fn checks(
        &self,
        ctx: &CallContext,
        req: &ActionRequest,
        session: Option<&Session>,
    ) -> Result<Option<Ran>, ServiceError> {
        let Some(session) = session else {
            // Logoff of a session that has already ended.
            return Ok(Some(ActionOutcome::AlreadyGone.into()));
        };
        if let Some(expected) = &req.expected_user
            && !session.user_matches(expected)
        {
            return Err(ServiceError::UserMismatch {
                expected: expected.clone(),
                actual: session.user.clone().or_else(|| session.ad_user.clone()),
            });
        }
        let guarded = matches!(
            req.kind,
            ActionKind::Logoff | ActionKind::Disconnect | ActionKind::Lock
        );
        if guarded {
            let mut protection = self
                .guard
                .classify(session.user.as_deref(), session.ad_user.as_deref());
            // "Only administrators can close administrator sessions" (MultiPoint).
            if protection == Protection::None && session.admin == Some(true) {
                protection = Protection::Protected;
            }
            match protection {
                Protection::None => {}
                Protection::ServiceAccount => {
                    return Err(ServiceError::Protected {
                        reason: "the session belongs to one of sessiongate's own service accounts; nobody may act on it through sessiongate".into(),
                        admin_may: false,
                    });
                }
                Protection::Protected => {
                    if req.skip_protected {
                        return Err(ServiceError::Protected {
                            reason: "the session's user is protected: skipped (an admin may include it with include_protected)".into(),
                            admin_may: true,
                        });
                    }
                    let reason = "the session's user is protected; only an admin may log off, disconnect or lock it".to_string();
                    if !ctx
                        .principal
                        .has(Permission::SessionsAdmin, Some(&req.pool))
                    {
                        return Err(ServiceError::Protected {
                            reason,
                            admin_may: true,
                        });
                    }
                }
            }
        }
        if req.dry_run {
            return Ok(Some(ActionOutcome::WouldDo.into()));
        }
        Ok(None)
    }

    /// The provider call of one action that passed its checks.
    async fn call(&self, req: &ActionRequest, pool: &Pool) -> Result<Ran, ServiceError> {
        let p = &pool.provider;
        let effect = match req.kind {
            ActionKind::Logoff => p.logoff(&req.host, req.id, req.force).await,
            ActionKind::Disconnect => p.disconnect(&req.host, req.id).await,
            ActionKind::Lock => p.lock(&req.host, req.id).await,
            ActionKind::Unlock => p.unlock(&req.host, req.id).await,
            ActionKind::Message => {
                let (t, b) = req.message.as_ref().ok_or_else(|| {
                    ServiceError::InvalidBody("message needs a title and a body".into())
                })?;
                p.send_message(&req.host, req.id, t, b)
                    .await
                    .map(|()| ActionEffect::Done)
            }
        };
        self.effect(pool, req, effect)
    }

    /// What a provider's answer to one action comes to.
    pub(super) fn effect(
        &self,
        pool: &Pool,
        req: &ActionRequest,
        effect: Result<ActionEffect, ProviderError>,
    ) -> Result<Ran, ServiceError> {
        match effect {
            Ok(ActionEffect::Done) => Ok(Ran::done()),
            Ok(ActionEffect::DoneAfterRetry) => Ok(Ran {
                outcome: ActionOutcome::Done,
                after_retry: true,
            }),
            Ok(ActionEffect::AlreadyGone) => Ok(ActionOutcome::AlreadyGone.into()),
            Err(ProviderError::SessionNotFound) if req.kind == ActionKind::Logoff => {
                Ok(ActionOutcome::AlreadyGone.into())
            }
            Err(e) => {
                Err(self.provider_err(pool, req.kind.as_str(), Some(&req.host), Some(req.id), e))
            }
        }
    }
}
