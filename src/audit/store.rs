//! The store side of the audit log: the [`AuditStore`] trait every backend implements, the
//! [`BlockingWriter`] a store may hand to the writer thread, the errors they return, and
//! `[audit]` configuration.

use super::chain::{Anchor, ChainBreak, VerifyReport};
use super::event::{AuditEvent, AuditPage, AuditQuery, NewEvent};
use async_trait::async_trait;
use serde::Deserialize;
use time::OffsetDateTime;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The store cannot take writes (down, full, locked): actions must not run.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// A query was malformed (bad cursor or filter).
    #[error("invalid audit query: {0}")]
    BadQuery(String),
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PruneReport {
    /// Events deleted.
    pub deleted: u64,
    /// Every chain's anchor after the run (recorded in the checkpoint event).
    pub anchors: Vec<Anchor>,
    /// The last checkpoint event written (none when nothing was old enough).
    pub checkpoint: Option<AuditEvent>,
    /// Every checkpoint event written (one per retention transaction).
    pub checkpoints: Vec<AuditEvent>,
    /// Chains not pruned because the part to delete does not verify (kept as evidence).
    pub refused: Vec<ChainBreak>,
}

/// A place events are durably kept.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends events in one transaction, chaining each to the previous one; returns them
    /// as stored. Returns only after the commit is durable.
    async fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError>;
    async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuditError>;

    /// The SQL database behind the store, for the other durable records kept beside the
    /// events (jobs, idempotency keys: [`super::work`]).
    fn database(&self) -> Option<super::sql::Db> {
        None
    }
    /// The chain this store writes, if it writes.
    fn chain(&self) -> Option<String> {
        None
    }
    /// A writer that runs whole batches synchronously on a thread of its own, if the store
    /// has one (SQLite files). Handed out once; [`AuditLog`] then commits through it on a
    /// dedicated thread instead of the async committer task.
    fn take_writer(&self) -> Option<Box<dyn BlockingWriter>> {
        None
    }
    /// A cheap write that proves the store takes commits again (used while unhealthy).
    async fn probe(&self) -> Result<(), AuditError> {
        Ok(())
    }
    /// Walks every chain; reports the first break of each.
    async fn verify(&self) -> Result<VerifyReport, AuditError> {
        Err(AuditError::Unavailable("this store cannot verify".into()))
    }
    /// Deletes events older than `older_than` after writing a checkpoint.
    async fn prune(&self, _older_than: OffsetDateTime) -> Result<PruneReport, AuditError> {
        Err(AuditError::Unavailable("this store cannot prune".into()))
    }
    /// Every event (all chains) oldest first by `(time, id)`, from `since`, after `cursor`.
    async fn read_oldest_first(
        &self,
        _since: Option<OffsetDateTime>,
        _cursor: Option<&str>,
        _limit: u32,
    ) -> Result<AuditPage, AuditError> {
        Err(AuditError::Unavailable("this store cannot export".into()))
    }
}

/// A store's writer that runs one batch per call, synchronously, on the audit writer thread:
/// one transaction, the chain head read inside it, durable when it returns (the same contract
/// as [`AuditStore::append_batch`]).
pub trait BlockingWriter: Send {
    fn append_batch(&mut self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError>;
    /// Like `append_batch`, waiting at most `wait` for the store's write lock (so a batch
    /// cannot commit after every caller waiting for it has been told it failed).
    fn append_batch_within(
        &mut self,
        events: Vec<NewEvent>,
        _wait: std::time::Duration,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        self.append_batch(events)
    }
    /// A cheap write that proves the store takes commits again (used while unhealthy).
    fn probe(&mut self) -> Result<(), AuditError>;
}

/// `[audit]` in the TOML config.
///
/// ```toml
/// [audit]
/// url = "sqlite://audit.sqlite3"   # or a bare path, or "postgres://user@host/db"; "" = DATA_DIR/audit.sqlite3
/// replica = "gw-1"                 # chain id of this instance (PostgreSQL: one per replica)
/// retention_days = 400             # unset = keep forever
/// max_batch = 256                  # events per group commit
/// write_timeout_ms = 3000          # record() gives up (Unavailable) after this
/// spool_path = ""                  # "" = DATA_DIR/audit.spool; outcomes the store refused
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// `sqlite://PATH`, `postgres://...` or a bare path; relative paths are under the data
    /// directory; empty means `DATA_DIR/audit.sqlite3`.
    pub url: String,
    /// Chain id of this instance. Unset: `local` on SQLite; a fresh generated id on
    /// PostgreSQL (each start is a new chain).
    pub replica: Option<String>,
    /// Delete events older than this many days (a checkpoint keeps the rest verifiable).
    pub retention_days: Option<u32>,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Bound on how long `record` waits for a durable commit.
    pub write_timeout_ms: u64,
    /// The local spool of events the store refused after their action ran (relative paths
    /// are under the data directory; empty means `DATA_DIR/audit.spool`).
    pub spool_path: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            replica: None,
            retention_days: None,
            max_batch: 256,
            write_timeout_ms: 3000,
            spool_path: String::new(),
        }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("url", &redact_url(&self.url))
            .field("replica", &self.replica)
            .field("retention_days", &self.retention_days)
            .field("max_batch", &self.max_batch)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .field("spool_path", &self.spool_path)
            .finish()
    }
}

impl AuditConfig {
    /// Where the spool lives: `spool_path`, relative to `data_dir`, or `DATA_DIR/audit.spool`.
    pub fn spool_file(&self, data_dir: &std::path::Path) -> std::path::PathBuf {
        let p = self.spool_path.trim();
        if p.is_empty() {
            return data_dir.join("audit.spool");
        }
        let p = std::path::PathBuf::from(p);
        if p.is_absolute() { p } else { data_dir.join(p) }
    }
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: AuditConfig = toml::from_str("").unwrap();
        assert_eq!(c.max_batch, 256);
        assert!(c.validate().is_ok());
        let c: AuditConfig =
            toml::from_str("url = \"postgres://u:secret@h/db\"\nreplica = \"gw-1\"").unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        assert!(toml::from_str::<AuditConfig>("nope = 1").is_err());
        let c = AuditConfig {
            replica: Some("bad name".into()),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "audit.replica");
        for days in [0, 40_000] {
            let c = AuditConfig {
                retention_days: Some(days),
                ..Default::default()
            };
            assert_eq!(c.validate().unwrap_err().key, "audit.retention_days");
        }
    }
}
