//! The HTTP API: one router, thin handlers, typed extractors, problem+json errors.

pub mod console;
pub mod extract;
pub mod fleet;
pub mod handlers;
pub mod idempotency;
pub mod jobs;
pub mod known_query;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod router;
pub mod webhooks;

use crate::{auth::Authenticator, service::Gateway};
use std::{sync::Arc, time::Duration};

/// Shared state of every handler and middleware.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub authenticator: Arc<Authenticator>,
    pub request_timeout: Duration,
    /// `server.body_limit_bytes` (the idempotency layer reads bodies itself).
    pub body_limit: usize,
    /// `GET /metrics`: where and for whom.
    pub metrics: ops::MetricsAccess,
    /// `/docs` and `/openapi.yaml` without a credential.
    pub docs_public: bool,
    /// `[webhooks]` sources (`POST /webhooks/{source}`).
    pub webhooks: Arc<crate::webhooks::Sources>,
    /// The helpdesk console at `/` (`[console] enabled`).
    pub console_enabled: bool,
}
