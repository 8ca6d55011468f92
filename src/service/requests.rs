//! The audit record of a call that is not an action (reads, denials, invalid input, unknown
//! routes): the HTTP layer describes the call, the service writes the event.

use super::{Gateway, ServiceError, TRACE_ID, actor_of};
use crate::{
    audit::{Actor, EventKind, NewEvent, Target},
    auth::{Presented, Principal},
};
use std::time::Duration;
use tracing::Instrument;

/// Who made a call, as far as authentication got.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authenticated.
    Principal(Principal),
    /// Authentication failed: what was presented (never the secret) and the auth error code.
    Refused {
        presented: Presented,
        auth_error: &'static str,
    },
    /// No authentication was attempted (unknown route).
    Anonymous,
}

/// How a non-action call ended, in the audit log's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Ok,
    Unauthenticated,
    Denied,
    RateLimited,
    Invalid,
    Failed,
}

impl RequestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Unauthenticated => "unauthenticated",
            RequestOutcome::Denied => "denied",
            RequestOutcome::RateLimited => "rate_limited",
            RequestOutcome::Invalid => "invalid",
            RequestOutcome::Failed => "failed",
        }
    }
}

/// A finished call the service did not audit itself.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: String,
    pub caller: Caller,
    pub client_addr: Option<String>,
    pub method: String,
    /// The matched route template, or the raw path when no route matched.
    pub route: String,
    /// `list_sessions`, `get_session`, `read_audit`, ... (`unknown_route` when none matched).
    pub action: String,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub session_id: Option<u32>,
    pub outcome: RequestOutcome,
    /// The problem `code` of the answer, when it was an error.
    pub error_code: Option<String>,
    pub http_status: u16,
    pub duration: Duration,
    /// A fleet call: the `batch_id` its items' events carry (kept as `params.batch_id`).
    pub batch_id: Option<String>,
    /// More `params` (a webhook delivery: its source, delivery id and refusal reason).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The trace of the call's span (kept as `params.trace_id`).
    pub trace_id: Option<String>,
}

impl Gateway {
    /// Records a call that is not an action. An error means the audit log cannot take the
    /// record; the caller must then not be told the call succeeded.
    pub async fn record_request(&self, r: RequestRecord) -> Result<(), ServiceError> {
        let mut params = r.params.clone();
        if let Some(b) = &r.batch_id {
            params.insert("batch_id".into(), b.as_str().into());
        }
        if let Some(t) = &r.trace_id {
            params.insert(TRACE_ID.into(), t.as_str().into());
        }
        let actor = match &r.caller {
            Caller::Principal(p) => actor_of(p),
            Caller::Refused {
                presented,
                auth_error,
            } => {
                params.insert("auth_error".into(), (*auth_error).into());
                Actor {
                    id: "anonymous".into(),
                    display: presented.hint.clone(),
                    auth_method: presented.method.clone(),
                    roles: vec![],
                }
            }
            Caller::Anonymous => Actor {
                id: "anonymous".into(),
                ..Actor::default()
            },
        };
        let ev = NewEvent {
            kind: Some(EventKind::Request),
            request_id: r.request_id,
            actor,
            client_addr: r.client_addr,
            method: Some(r.method),
            route: Some(r.route),
            action: r.action,
            target: Target {
                pool: r.pool,
                host: r.host,
                session_id: r.session_id,
                user: None,
            },
            params: serde_json::Value::Object(params),
            outcome: r.outcome.as_str().into(),
            error_code: r.error_code,
            http_status: Some(r.http_status),
            upstream_status: None,
            duration_ms: Some(r.duration.as_millis() as u64),
        };
        // A refused or failed call while the store is known to be failing: its answer is an
        // error already, so its record is spooled (committed once the store is back) instead of
        // making the caller wait a second write timeout.
        if !self.audit.healthy() && ev.http_status.is_some_and(|s| s >= 400) {
            if !self.audit.spool_now(ev.clone()).await {
                tracing::error!(target: "sessiongate::audit", request_id = %ev.request_id, action = %ev.action, "audit store failing and no spool: request record dropped");
            }
            return Ok(());
        }
        self.audit
            .record(ev)
            .instrument(tracing::info_span!(
                "audit_commit",
                otel.name = "audit commit request"
            ))
            .await
            .map(|_| ())
            .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))
    }
}
