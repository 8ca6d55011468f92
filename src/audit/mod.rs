//! The audit log: every API call and every action's intent and outcome, durably and
//! tamper-evidently recorded. The service layer is its only writer; it knows nothing of axum.
//!
//! Interface used by the rest of the crate (keep it stable):
//! - [`AuditLog::record`]: append one event; returns once it is durably committed.
//! - [`AuditLog::query`]: filtered, cursor-paginated read for `GET /audit`.
//! - [`AuditLog::healthy`]: whether the store currently accepts writes.

pub mod event;

pub use event::{Actor, AuditEvent, AuditPage, AuditQuery, EventKind, NewEvent, Target};

use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The store cannot take writes (down, full, locked): actions must not run.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// A query was malformed (bad cursor or filter).
    #[error("invalid audit query: {0}")]
    BadQuery(String),
}

/// A place events are durably kept.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends events in one transaction, chaining each to the previous one; returns them
    /// as stored. Returns only after the commit is durable.
    async fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError>;
    async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuditError>;
}

/// Handle used by the service: cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn AuditStore>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store }
    }

    /// Records one event durably. Also emits it as one structured log line on the
    /// `sessiongate::audit` tracing target.
    pub async fn record(&self, ev: NewEvent) -> Result<AuditEvent, AuditError> {
        let mut v = self.store.append_batch(vec![ev]).await?;
        let stored = v
            .pop()
            .ok_or_else(|| AuditError::Unavailable("store returned no event".into()))?;
        tracing::info!(target: "sessiongate::audit", event = %serde_json::to_string(&stored).unwrap_or_default(), "audit event");
        Ok(stored)
    }

    pub async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuditError> {
        self.store.query(q).await
    }

    pub fn healthy(&self) -> bool {
        true
    }
}

/// Placeholder until the stores land.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuditConfig {
    #[serde(default)]
    pub url: String,
}

pub async fn open(_cfg: &AuditConfig, _data_dir: &std::path::Path) -> Result<AuditLog, AuditError> {
    Err(AuditError::Unavailable(
        "audit store not available in this build".into(),
    ))
}
