//! Export: every event (all chains), oldest first by `(time, id)`, as JSON lines.

use super::committer::AuditLog;
use super::event::AuditEvent;
use super::store::{AuditError, AuditStore};
use time::OffsetDateTime;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes every event since `since` (all chains) as one JSON object per line, oldest first
/// by `(time, id)`. Returns the number of events written.
pub async fn export_jsonl(
    store: &dyn AuditStore,
    since: Option<OffsetDateTime>,
    mut out: impl AsyncWrite + Unpin,
) -> Result<u64, AuditError> {
    let io = |e: std::io::Error| AuditError::Unavailable(format!("export write failed: {e}"));
    let mut n = 0u64;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .read_oldest_first(since, cursor.as_deref(), 1000)
            .await?;
        let mut buf = Vec::with_capacity(page.events.len() * 600);
        for ev in &page.events {
            serde_json::to_writer(&mut buf, ev)
                .map_err(|e| AuditError::Unavailable(format!("export encode failed: {e}")))?;
            buf.push(b'\n');
            n += 1;
        }
        out.write_all(&buf).await.map_err(io)?;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    out.flush().await.map_err(io)?;
    Ok(n)
}

impl AuditLog {
    /// Writes every event since `since` (all chains) as JSON lines, oldest first.
    pub async fn export_jsonl(
        &self,
        since: Option<OffsetDateTime>,
        out: impl AsyncWrite + Unpin,
    ) -> Result<u64, AuditError> {
        export_jsonl(self.store().as_ref(), since, out).await
    }

    /// Every stored event, oldest first (tests, benchmarks, crash checks).
    pub async fn all_events(&self) -> Result<Vec<AuditEvent>, AuditError> {
        let store = self.store();
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .read_oldest_first(None, cursor.as_deref(), 5000)
                .await?;
            out.extend(page.events);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }
}
