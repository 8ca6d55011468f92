//! Service errors: what went wrong in domain terms, with one stable machine code per failure.
//! The API layer maps them to HTTP statuses; nothing here knows HTTP. Provider failures arrive
//! here as their own variants (see [`ServiceError::from_provider`]), so the API never sees a
//! provider type, and the code the caller gets is the code the audit log records.

use crate::{
    auth::Permission,
    domain::{HostName, PoolName, SessionId},
    providers::ProviderError,
};
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("host pool '{0}' is not configured")]
    PoolNotFound(String),
    /// Not in the pool's inventory, or unknown to the backend (`host` is `None` when the
    /// backend reported it from a pool-wide call).
    #[error("{}", match host {
        Some(h) => format!("session host '{h}' is not in pool '{pool}'"),
        None => format!("the backend does not know a session host of pool '{pool}'"),
    })]
    HostNotFound { pool: String, host: Option<String> },
    #[error("{}", match (host, id) {
        (Some(h), Some(id)) => format!("session {id} not found on host '{h}' in pool '{pool}'"),
        _ => format!("the backend does not know a session of pool '{pool}'"),
    })]
    SessionNotFound {
        pool: String,
        host: Option<String>,
        id: Option<u32>,
    },
    #[error("missing permission {}{}", missing.as_str(), pool.as_deref().map(|p| format!(" on pool '{p}'")).unwrap_or_default())]
    Forbidden {
        missing: Permission,
        pool: Option<String>,
    },
    #[error("session belongs to {}, not to the expected user {expected}", actual.as_deref().unwrap_or("an unknown user"))]
    UserMismatch {
        expected: String,
        actual: Option<String>,
    },
    #[error("session is protected: {reason}")]
    Protected { reason: String, admin_may: bool },
    #[error("action '{action}' is not supported by pool '{pool}'")]
    ActionNotSupported { action: String, pool: String },
    /// A request body the use case cannot act on.
    #[error("{0}")]
    InvalidBody(String),
    /// A query the use case cannot answer (e.g. an audit filter out of bounds).
    #[error("{0}")]
    InvalidQuery(String),
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// The action ran (or was decided) but its outcome is not in the audit log yet: it is
    /// kept (retried, spooled locally) and will be recorded; the caller must not retry.
    #[error("the action's outcome ({outcome}) is not recorded yet (intent {intent_event_id})")]
    OutcomeNotRecorded {
        /// `done`, `already_gone`, `would_do`, `refused` or `failed`.
        outcome: String,
        /// The action's own error code when it did not succeed.
        error_code: Option<String>,
        /// Id of the audit event that recorded the intent.
        intent_event_id: String,
    },
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    /// The backend does not know the host pool this pool is configured with.
    #[error("the backend does not know the configured host pool")]
    UpstreamPoolNotFound,
    #[error("session host unreachable: {0}")]
    HostUnreachable(String),
    /// sessiongate's own credentials were refused by the backend.
    #[error("upstream authentication failed: {0}")]
    UpstreamAuth(String),
    /// sessiongate's identity lacks the permission on the backend.
    #[error("upstream denied the operation: {0}")]
    UpstreamForbidden(String),
    /// The backend throttled beyond the provider's retry budget.
    #[error("upstream throttled; retry after {retry_after:?}")]
    UpstreamThrottled { retry_after: Duration },
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    /// Any other answer of the backend that is an error.
    #[error("upstream error (status {status:?}, code {code}): {message}")]
    Upstream {
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// The backend could not be reached (DNS, TCP, TLS, a connection dropped before sending).
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// No such job, or the caller may not see it (existence is not revealed).
    #[error("job '{0}' not found")]
    JobNotFound(String),
    /// A job that already ended cannot be cancelled.
    #[error("job '{id}' already ended ({state})")]
    JobFinished { id: String, state: String },
    /// A call that is never repeated was sent and got no answer: the backend may have acted.
    #[error("upstream outcome unknown: {0}")]
    UpstreamOutcomeUnknown(String),
}

impl ServiceError {
    /// Stable machine-readable code: the problem+json `code` and the audited `error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::PoolNotFound(_) => "pool_not_found",
            ServiceError::HostNotFound { .. } => "host_not_found",
            ServiceError::SessionNotFound { .. } => "session_not_found",
            ServiceError::Forbidden { .. } => "forbidden",
            ServiceError::UserMismatch { .. } => "user_mismatch",
            ServiceError::Protected { .. } => "session_protected",
            ServiceError::ActionNotSupported { .. } => "action_not_supported",
            ServiceError::InvalidBody(_) => "invalid_body",
            ServiceError::InvalidQuery(_) => "invalid_query",
            ServiceError::AuditUnavailable(_) => "audit_unavailable",
            ServiceError::OutcomeNotRecorded { .. } => "outcome_not_recorded",
            ServiceError::RateLimited { .. } => "rate_limited",
            ServiceError::UpstreamPoolNotFound => "upstream_pool_not_found",
            ServiceError::HostUnreachable(_) => "host_unreachable",
            ServiceError::UpstreamAuth(_) => "upstream_auth_failed",
            ServiceError::UpstreamForbidden(_) => "upstream_forbidden",
            ServiceError::UpstreamThrottled { .. } => "upstream_throttled",
            ServiceError::UpstreamTimeout(_) => "upstream_timeout",
            ServiceError::Upstream { .. } => "upstream_error",
            ServiceError::UpstreamUnreachable(_) => "upstream_unreachable",
            ServiceError::UpstreamOutcomeUnknown(_) => "upstream_outcome_unknown",
            ServiceError::JobNotFound(_) => "job_not_found",
            ServiceError::JobFinished { .. } => "job_finished",
        }
    }

    /// The backend's HTTP status, where the failure carried one (kept in the audit log).
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            ServiceError::Upstream { status, .. } => *status,
            _ => None,
        }
    }

    /// A provider failure in service terms, with what the caller named (`host`, `id`) when the
    /// call was about one host or session.
    pub(crate) fn from_provider(
        e: ProviderError,
        action: &str,
        pool: &PoolName,
        host: Option<&HostName>,
        id: Option<SessionId>,
    ) -> Self {
        let pool = pool.to_string();
        let host = host.map(|h| h.to_string());
        match e {
            ProviderError::SessionNotFound => ServiceError::SessionNotFound {
                pool,
                host,
                id: id.map(|i| i.0),
            },
            ProviderError::HostNotFound => ServiceError::HostNotFound { pool, host },
            ProviderError::PoolNotFound => ServiceError::UpstreamPoolNotFound,
            ProviderError::HostUnreachable(m) => ServiceError::HostUnreachable(m),
            ProviderError::UpstreamAuth(m) => ServiceError::UpstreamAuth(m),
            ProviderError::UpstreamForbidden(m) => ServiceError::UpstreamForbidden(m),
            ProviderError::Throttled { retry_after } => {
                ServiceError::UpstreamThrottled { retry_after }
            }
            ProviderError::Timeout(m) => ServiceError::UpstreamTimeout(m),
            ProviderError::Protected(reason) => ServiceError::Protected {
                reason,
                admin_may: false,
            },
            ProviderError::Unsupported => ServiceError::ActionNotSupported {
                action: action.to_string(),
                pool,
            },
            ProviderError::Upstream {
                status,
                code,
                message,
            } => ServiceError::Upstream {
                status,
                code,
                message,
            },
            ProviderError::Transport(m) => ServiceError::UpstreamUnreachable(m),
            ProviderError::OutcomeUnknown(m) => ServiceError::UpstreamOutcomeUnknown(m),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One value of every variant. The match below stops compiling when a variant is added,
    /// so this list (and the code table in docs/api.md, checked against it) cannot miss one.
    pub(crate) fn every_variant() -> Vec<ServiceError> {
        let s = || String::from("x");
        let all = vec![
            ServiceError::PoolNotFound(s()),
            ServiceError::HostNotFound {
                pool: s(),
                host: Some(s()),
            },
            ServiceError::SessionNotFound {
                pool: s(),
                host: Some(s()),
                id: Some(1),
            },
            ServiceError::Forbidden {
                missing: Permission::SessionsAct,
                pool: None,
            },
            ServiceError::UserMismatch {
                expected: s(),
                actual: None,
            },
            ServiceError::Protected {
                reason: s(),
                admin_may: true,
            },
            ServiceError::ActionNotSupported {
                action: s(),
                pool: s(),
            },
            ServiceError::InvalidBody(s()),
            ServiceError::InvalidQuery(s()),
            ServiceError::AuditUnavailable(s()),
            ServiceError::OutcomeNotRecorded {
                outcome: s(),
                error_code: None,
                intent_event_id: s(),
            },
            ServiceError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            ServiceError::UpstreamPoolNotFound,
            ServiceError::JobNotFound(s()),
            ServiceError::JobFinished {
                id: s(),
                state: s(),
            },
            ServiceError::HostUnreachable(s()),
            ServiceError::UpstreamAuth(s()),
            ServiceError::UpstreamForbidden(s()),
            ServiceError::UpstreamThrottled {
                retry_after: Duration::from_secs(1),
            },
            ServiceError::UpstreamTimeout(s()),
            ServiceError::Upstream {
                status: Some(500),
                code: s(),
                message: s(),
            },
            ServiceError::UpstreamUnreachable(s()),
            ServiceError::UpstreamOutcomeUnknown(s()),
        ];
        for e in &all {
            match e {
                ServiceError::PoolNotFound(_)
                | ServiceError::HostNotFound { .. }
                | ServiceError::SessionNotFound { .. }
                | ServiceError::Forbidden { .. }
                | ServiceError::UserMismatch { .. }
                | ServiceError::Protected { .. }
                | ServiceError::ActionNotSupported { .. }
                | ServiceError::InvalidBody(_)
                | ServiceError::InvalidQuery(_)
                | ServiceError::AuditUnavailable(_)
                | ServiceError::OutcomeNotRecorded { .. }
                | ServiceError::RateLimited { .. }
                | ServiceError::UpstreamPoolNotFound
                | ServiceError::HostUnreachable(_)
                | ServiceError::UpstreamAuth(_)
                | ServiceError::UpstreamForbidden(_)
                | ServiceError::UpstreamThrottled { .. }
                | ServiceError::UpstreamTimeout(_)
                | ServiceError::Upstream { .. }
                | ServiceError::UpstreamUnreachable(_)
                | ServiceError::UpstreamOutcomeUnknown(_)
                | ServiceError::JobNotFound(_)
                | ServiceError::JobFinished { .. } => {}
            }
        }
        all
    }

    /// One value of every provider failure (same exhaustiveness guard as above).
    pub(crate) fn every_provider_error() -> Vec<ProviderError> {
        let s = || String::from("x");
        let all = vec![
            ProviderError::SessionNotFound,
            ProviderError::HostNotFound,
            ProviderError::PoolNotFound,
            ProviderError::HostUnreachable(s()),
            ProviderError::UpstreamAuth(s()),
            ProviderError::UpstreamForbidden(s()),
            ProviderError::Throttled {
                retry_after: Duration::from_secs(1),
            },
            ProviderError::Timeout(s()),
            ProviderError::Protected(s()),
            ProviderError::Unsupported,
            ProviderError::Upstream {
                status: Some(500),
                code: s(),
                message: s(),
            },
            ProviderError::Transport(s()),
            ProviderError::OutcomeUnknown(s()),
        ];
        for e in &all {
            match e {
                ProviderError::SessionNotFound
                | ProviderError::HostNotFound
                | ProviderError::PoolNotFound
                | ProviderError::HostUnreachable(_)
                | ProviderError::UpstreamAuth(_)
                | ProviderError::UpstreamForbidden(_)
                | ProviderError::Throttled { .. }
                | ProviderError::Timeout(_)
                | ProviderError::Protected(_)
                | ProviderError::Unsupported
                | ProviderError::Upstream { .. }
                | ProviderError::Transport(_)
                | ProviderError::OutcomeUnknown(_) => {}
            }
        }
        all
    }

    #[test]
    fn the_upstream_status_survives_the_mapping() {
        let pool = PoolName::parse("hp1").unwrap();
        let pe = ProviderError::Upstream {
            status: Some(409),
            code: "Conflict".into(),
            message: "m".into(),
        };
        let se = ServiceError::from_provider(pe, "logoff", &pool, None, None);
        assert_eq!(se.upstream_status(), Some(409));
    }
}
