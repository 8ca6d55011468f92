//! The audit log: every API call and every action's intent and outcome, durably and
//! tamper-evidently recorded. The service layer is its only writer; it knows nothing of axum.
//!
//! Interface used by the rest of the crate (keep it stable):
//! - [`AuditLog::record`]: append one event; returns once it is durably committed.
//! - [`AuditLog::query`]: filtered, cursor-paginated read for `GET /audit`.
//! - [`AuditLog::healthy`]: whether the store currently accepts writes.
//!
//! Opening: [`open`] with an [`AuditConfig`] (`[audit]` in the TOML config). Operations:
//! [`AuditLog::verify`], [`AuditLog::prune`], [`AuditLog::export_jsonl`]; the `audit verify`
//! and `audit export` commands print through them (`crate::run`). Design and formats:
//! `docs/audit.md`.
//!
//! Modules: [`event`] (what is recorded), [`chain`] (hashes, verification), [`store`] (the
//! store trait, errors, config), [`sql`] (SQLite and PostgreSQL through sqlx),
//! [`sqlite_writer`] (the SQLite writer thread's connection), [`committer`] ([`AuditLog`]:
//! group commit, retention), [`export`] (JSON lines).

pub mod chain;
pub mod committer;
pub mod event;
pub mod export;
pub mod spool;
pub mod sql;
pub mod sqlite_writer;
pub mod store;
mod validate;
pub mod work;

pub use chain::{Anchor, BreakKind, ChainBreak, ChainStatus, GENESIS_HASH, VerifyReport};
pub use committer::{AuditLog, AuditStats, Kept};
pub use event::{Actor, AuditEvent, AuditPage, AuditQuery, EventKind, NewEvent, Target};
pub use export::export_jsonl;
pub use spool::Spool;
pub use sql::{Location, SqlStore};
pub use sqlite_writer::SqliteWriter;
pub use store::{AuditConfig, AuditError, AuditStore, BlockingWriter, PruneReport, redact_url};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Opens the configured store (creating it and applying migrations), claims this instance's
/// chain, starts the group committer and, when configured, retention.
pub async fn open(cfg: &AuditConfig, data_dir: &Path) -> Result<AuditLog, AuditError> {
    cfg.validate()
        .map_err(|e| AuditError::Unavailable(e.to_string()))?;
    let loc = Location::parse(&cfg.url, data_dir);
    if let Location::Sqlite(path) = &loc {
        writable_store(path)?;
    }
    let timeout = Duration::from_millis(cfg.write_timeout_ms);
    let mut store = SqlStore::connect(&loc, timeout, true).await?;
    let chain = match &cfg.replica {
        Some(r) => r.clone(),
        None if store.is_postgres() => format!("replica-{}", uuid::Uuid::now_v7().simple()),
        None => "local".to_owned(),
    };
    store.claim_chain(&chain).await?;
    tracing::info!(
        target: "sessiongate::audit", { audit.chain = %chain,
        audit.backend = if store.is_postgres() { "postgres" } else { "sqlite" } }, "audit log open");
    let spool = Arc::new(Spool::open(&cfg.spool_file(data_dir))?);
    let log = AuditLog::with_spool(Arc::new(store), cfg.max_batch, timeout, Some(spool));
    // Events spooled while the store was down (by this or an earlier run) go into the chain
    // before anything else reads it: start-up recovery must see the outcomes they hold.
    let merged = log.drain_spool().await?;
    if merged > 0 {
        tracing::warn!(target: "sessiongate::audit", merged, "merged spooled audit events into the chain at start");
    }
    if let Some(days) = cfg.retention_days.filter(|d| *d > 0) {
        log.spawn_retention(Duration::from_secs(u64::from(days) * 86_400));
    }
    Ok(log)
}

/// Refuses a SQLite store that cannot be written: its directory (SQLite writes its WAL and
/// shared-memory files there) or an existing database file on a read-only file system or
/// without write permission. Without this check start-up failed later with SQLite's "attempt
/// to write a readonly database", naming neither the setting nor the path.
fn writable_store(path: &Path) -> Result<(), AuditError> {
    let refuse = |what: &Path, e: std::io::Error| {
        AuditError::Unavailable(format!(
            "audit.url: the SQLite store is read-only or not writable: {} ({e}); the audit \
             log must be writable (check the volume's mount options and permissions)",
            what.display()
        ))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if dir.exists() {
        let probe = dir.join(format!(".sessiongate-write-probe-{}", std::process::id()));
        std::fs::File::create(&probe).map_err(|e| refuse(&dir, e))?;
        let _ = std::fs::remove_file(&probe);
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| refuse(path, e))?;
    }
    Ok(())
}

/// Opens the store for reading only: no chain claimed, no committer. Does not create a
/// missing SQLite file.
pub async fn open_read_only(cfg: &AuditConfig, data_dir: &Path) -> Result<SqlStore, AuditError> {
    let loc = Location::parse(&cfg.url, data_dir);
    SqlStore::connect(
        &loc,
        Duration::from_millis(cfg.write_timeout_ms.max(1)),
        false,
    )
    .await
}
