//! Provider adapters behind one trait. Providers know nothing of our HTTP API: they speak
//! domain types and [`ProviderError`], which the service turns into a `ServiceError`.

pub mod avd;
pub mod winrm;
pub mod wvd_classic;

use crate::domain::{
    Capabilities, HostName, ProviderKind, Session, SessionHost, SessionId, StateFilter,
};
use async_trait::async_trait;
use std::time::Duration;

/// Typed failures of a backend call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("session not found")]
    SessionNotFound,
    #[error("session host not found")]
    HostNotFound,
    #[error("host pool not found upstream")]
    PoolNotFound,
    #[error("session host unreachable: {0}")]
    HostUnreachable(String),
    /// Our credentials were rejected by the backend (token, password): a 502 to our caller.
    #[error("upstream authentication failed: {0}")]
    UpstreamAuth(String),
    /// The backend refused the operation for our identity (missing role, access denied).
    #[error("upstream denied the operation: {0}")]
    UpstreamForbidden(String),
    /// The backend throttled us beyond our retry budget.
    #[error("upstream throttled; retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    #[error("upstream timed out: {0}")]
    Timeout(String),
    /// The session is protected on the backend (e.g. the caller's own session).
    #[error("session is protected: {0}")]
    Protected(String),
    #[error("operation not supported by this provider")]
    Unsupported,
    /// Any other upstream failure, with what the backend said.
    #[error("upstream error (status {status:?}, code {code}): {message}")]
    Upstream {
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// Connection-level failure (DNS, TCP, TLS, dropped connection).
    #[error("transport error: {0}")]
    Transport(String),
    /// A call that is not repeated (a message, a classic action) was sent and its connection
    /// broke before an answer: the backend may have carried it out.
    #[error("no answer after the request was sent; the backend may have acted: {0}")]
    OutcomeUnknown(String),
}

impl ProviderError {
    /// Stable machine code, used in logs. It is the same string the service's `ServiceError`
    /// gives the same failure, so the audit log and the HTTP answer carry it unchanged.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::SessionNotFound => "session_not_found",
            ProviderError::HostNotFound => "host_not_found",
            ProviderError::PoolNotFound => "upstream_pool_not_found",
            ProviderError::HostUnreachable(_) => "host_unreachable",
            ProviderError::UpstreamAuth(_) => "upstream_auth_failed",
            ProviderError::UpstreamForbidden(_) => "upstream_forbidden",
            ProviderError::Throttled { .. } => "upstream_throttled",
            ProviderError::Timeout(_) => "upstream_timeout",
            ProviderError::Protected(_) => "session_protected",
            ProviderError::Unsupported => "action_not_supported",
            ProviderError::Upstream { .. } => "upstream_error",
            ProviderError::Transport(_) => "upstream_unreachable",
            ProviderError::OutcomeUnknown(_) => "upstream_outcome_unknown",
        }
    }
}

impl From<crate::upstream::UpstreamError> for ProviderError {
    fn from(e: crate::upstream::UpstreamError) -> Self {
        use crate::upstream::UpstreamError as U;
        match e {
            U::Throttled { retry_after } => ProviderError::Throttled { retry_after },
            U::Timeout(m) => ProviderError::Timeout(m),
            U::Transport(m) => ProviderError::Transport(m),
            U::OutcomeUnknown(m) => ProviderError::OutcomeUnknown(m),
            U::Auth(m) => ProviderError::UpstreamAuth(m),
            e @ U::TooLarge { status, .. } => ProviderError::Upstream {
                status: Some(status),
                code: "response_too_large".into(),
                message: e.to_string(),
            },
            U::Paging { code, message } => ProviderError::Upstream {
                status: None,
                code: code.into(),
                message,
            },
        }
    }
}

/// Result of a logoff or disconnect that reached the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionEffect {
    Done,
    /// The session did not exist any more (logoff of an ended session).
    AlreadyGone,
    /// The call was sent again after an attempt that may have reached the backend (its
    /// connection broke after sending, it timed out, or it was answered 5xx), and the repeat
    /// found the session gone: the session existed when the action began, so it was most
    /// likely our own first attempt that ended it. Recorded `done`, with `after_retry`.
    DoneAfterRetry,
}

/// A pool-wide listing: sessions plus hosts that could not be asked (on-prem fan-out).
#[derive(Debug, Clone, Default)]
pub struct PoolSessions {
    pub sessions: Vec<Session>,
    pub unreachable_hosts: Vec<UnreachableHost>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UnreachableHost {
    pub host: String,
    pub error: String,
}

/// Filter for pool-wide session lists. Providers may push it upstream (ARM `$filter`);
/// the service applies it again, so a provider may ignore it.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub state: Option<StateFilter>,
}

/// One backend host pool. Every method is one logical operation; retries, paging and
/// token handling are the adapter's business (the HTTP adapters leave them to
/// [`crate::upstream`]).
#[async_trait]
pub trait SessionProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    fn capabilities(&self) -> Capabilities;

    /// Whether `host` may be addressed at all. On-prem providers answer from configured
    /// inventory only; cloud providers answer `true` and let the backend say 404.
    fn host_in_inventory(&self, _host: &HostName) -> bool {
        true
    }

    async fn list_hosts(&self) -> Result<Vec<SessionHost>, ProviderError>;
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<PoolSessions, ProviderError>;
    async fn list_host_sessions(&self, host: &HostName) -> Result<Vec<Session>, ProviderError>;
    async fn get_session(&self, host: &HostName, id: SessionId) -> Result<Session, ProviderError>;
    async fn logoff(
        &self,
        host: &HostName,
        id: SessionId,
        force: bool,
    ) -> Result<ActionEffect, ProviderError>;
    /// Whether [`Self::logoff_many`] sends the ids of one host upstream in one call (the
    /// service then runs a whole-host logoff as one upstream call instead of one per session).
    fn native_logoff_many(&self) -> bool {
        false
    }
    /// Logs off several sessions of one host: one result per id, in the order given. The
    /// default makes one [`Self::logoff`] per id, in turn.
    async fn logoff_many(
        &self,
        host: &HostName,
        ids: &[SessionId],
        force: bool,
    ) -> Vec<Result<ActionEffect, ProviderError>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.logoff(host, *id, force).await);
        }
        out
    }
    async fn disconnect(
        &self,
        host: &HostName,
        id: SessionId,
    ) -> Result<ActionEffect, ProviderError>;
    async fn send_message(
        &self,
        host: &HostName,
        id: SessionId,
        title: &str,
        body: &str,
    ) -> Result<(), ProviderError>;
    async fn lock(&self, _host: &HostName, _id: SessionId) -> Result<ActionEffect, ProviderError> {
        Err(ProviderError::Unsupported)
    }
    async fn unlock(
        &self,
        _host: &HostName,
        _id: SessionId,
    ) -> Result<ActionEffect, ProviderError> {
        Err(ProviderError::Unsupported)
    }
}
