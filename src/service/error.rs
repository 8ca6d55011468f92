//! Service errors: what went wrong in domain terms, with a stable machine code.
//! The API layer maps them to HTTP statuses; nothing here knows HTTP.

use crate::{auth::Permission, providers::ProviderError};
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("host pool '{0}' is not configured")]
    PoolNotFound(String),
    #[error("session host '{host}' is not in pool '{pool}'")]
    HostNotFound { pool: String, host: String },
    #[error("session {id} not found on host '{host}' in pool '{pool}'")]
    SessionNotFound { pool: String, host: String, id: u32 },
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
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error(transparent)]
    Provider(ProviderError),
}

impl ServiceError {
    /// Stable machine-readable code (the problem+json `code`).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::PoolNotFound(_) => "pool_not_found",
            ServiceError::HostNotFound { .. } => "host_not_found",
            ServiceError::SessionNotFound { .. } => "session_not_found",
            ServiceError::Forbidden { .. } => "forbidden",
            ServiceError::UserMismatch { .. } => "user_mismatch",
            ServiceError::Protected { .. } => "session_protected",
            ServiceError::ActionNotSupported { .. } => "action_not_supported",
            ServiceError::Invalid { code, .. } => code,
            ServiceError::AuditUnavailable(_) => "audit_unavailable",
            ServiceError::RateLimited { .. } => "rate_limited",
            ServiceError::Provider(e) => match e {
                ProviderError::SessionNotFound => "session_not_found",
                ProviderError::HostNotFound => "host_not_found",
                ProviderError::PoolNotFound => "upstream_pool_not_found",
                other => other.kind(),
            },
        }
    }
}

impl From<ProviderError> for ServiceError {
    fn from(e: ProviderError) -> Self {
        ServiceError::Provider(e)
    }
}
