//! Start-up recovery: actions whose intent was recorded but whose outcome never was (the
//! process died between the two) get an `interrupted` outcome, so an auditor can tell which
//! actions need checking against the backend.
//!
//! Pairing: an outcome names its intent's event id (`params.intent_id`), so two actions that
//! share a client-chosen request id are told apart. Outcomes written before that field existed
//! (older chains) close the intents of their request id, as they did then.

use super::Gateway;
use super::actions::INTENT_ID;
use crate::audit::{Actor, AuditError, AuditQuery, EventKind, NewEvent};
use std::collections::HashSet;

/// Action name of the marker event written at every start.
pub const STARTED: &str = "gateway_started";
/// How many of this chain's newest events a start looks through at most.
const SCAN_LIMIT: usize = 100_000;

impl Gateway {
    /// Closes intents left without an outcome since the previous start of this chain, then
    /// records a start marker. Returns how many actions were marked `interrupted`.
    pub async fn close_interrupted_actions(&self) -> Result<usize, AuditError> {
        // Ten times the write timeout, at least 30 s, for the whole start-up's writes.
        let deadline = tokio::time::Instant::now()
            + (self.audit.write_timeout() * 10).max(std::time::Duration::from_secs(30));
        let chain = self.audit.chain();
        // Intent ids closed by an outcome; request ids closed by an outcome without intent id.
        let mut closed: HashSet<String> = HashSet::new();
        let mut closed_legacy: HashSet<String> = HashSet::new();
        let mut orphans: Vec<(String, NewEvent)> = Vec::new();
        let mut cursor = None;
        let mut scanned = 0usize;
        'scan: loop {
            let page = self
                .audit
                .query(&AuditQuery {
                    cursor: cursor.take(),
                    limit: Some(1000),
                    ..AuditQuery::default()
                })
                .await?;
            for ev in &page.events {
                if chain.as_ref().is_some_and(|c| c != &ev.chain) {
                    continue;
                }
                scanned += 1;
                let e = &ev.event;
                if e.action == STARTED || scanned > SCAN_LIMIT {
                    break 'scan;
                }
                match e.kind {
                    Some(EventKind::Outcome) => {
                        match e.params.get(INTENT_ID).and_then(|v| v.as_str()) {
                            Some(intent) => closed.insert(intent.to_owned()),
                            None => closed_legacy.insert(e.request_id.clone()),
                        };
                    }
                    Some(EventKind::Intent)
                        if !closed.contains(&ev.id) && !closed_legacy.contains(&e.request_id) =>
                    {
                        orphans.push((ev.id.clone(), e.clone()));
                    }
                    _ => {}
                }
            }
            match page.next_cursor {
                Some(c) if !page.events.is_empty() => cursor = Some(c),
                _ => break,
            }
        }
        let n = orphans.len();
        for (intent_id, mut ev) in orphans {
            tracing::warn!(
                request_id = %ev.request_id,
                action = %ev.action,
                "action interrupted by a gateway stop: its outcome is unknown; check the backend"
            );
            ev.kind = Some(EventKind::Outcome);
            ev.outcome = "interrupted".into();
            ev.error_code = Some("gateway_restarted".into());
            ev.duration_ms = None;
            if let serde_json::Value::Object(m) = &mut ev.params {
                m.insert(INTENT_ID.into(), intent_id.into());
            } else {
                ev.params = serde_json::json!({ INTENT_ID: intent_id });
            }
            self.record_at_start(ev, deadline).await?;
        }
        self.record_at_start(
            NewEvent {
                kind: Some(EventKind::Request),
                request_id: uuid::Uuid::now_v7().to_string(),
                actor: Actor {
                    id: "system".into(),
                    display: Some("sessiongate".into()),
                    auth_method: None,
                    roles: vec![],
                },
                action: STARTED.into(),
                params: serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "interrupted_actions": n,
                }),
                outcome: "ok".into(),
                ..NewEvent::default()
            },
            deadline,
        )
        .await?;
        Ok(n)
    }

    /// Records a start-up event, waiting up to `deadline` (no caller is waiting at start, so a
    /// store slower than `write_timeout_ms` at boot delays the start instead of failing it). A
    /// write the store refused (locked, busy) is tried again; one that timed out is not (it may
    /// still commit), the deadline being spent by then.
    async fn record_at_start(
        &self,
        ev: NewEvent,
        deadline: tokio::time::Instant,
    ) -> Result<(), AuditError> {
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.audit.record_within(ev.clone(), wait).await {
                Ok(_) => return Ok(()),
                Err(AuditError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "audit store refused a start-up write; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
