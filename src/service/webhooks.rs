//! Webhook deliveries in the audit database (`webhook_deliveries`): dedup by (source, delivery
//! id) with the first answer replayed to every duplicate (the same first-answer machinery as
//! `Idempotency-Key`, on its own table and retention), what a delivery led to (job, ticket), and
//! the write-back state a runner works through after the job ends — also after a restart.

use super::idempotency::{FirstAnswerTimes, micros, now_us, store_err};
use super::{Gateway, IdempotencyDecision, ServiceError, StoredAnswer};
use crate::audit::{
    Actor, EventKind, NewEvent, Target,
    chain::from_unix_micros,
    work::{AnswerTable, DeliveryDone, DeliveryRow},
};
use serde::Serialize;
use std::time::Duration;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Every delivery of a source has the same fingerprint: a duplicate gets the first answer
/// whatever its body (a sender's retry is the same delivery by its id).
const FINGERPRINT: &str = "delivery";

/// What a delivery led to, kept with its answer.
#[derive(Debug, Clone, Default)]
pub struct DeliveryOutcome {
    pub job_id: Option<String>,
    pub ticket: Option<String>,
    pub ticket_id: Option<String>,
    /// The source writes back to the ticket: the delivery is recorded `pending`.
    pub write_back: bool,
}

/// A delivery whose job has ended and whose ticket still needs its write-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWriteBack {
    pub source: String,
    pub delivery_id: String,
    pub job_id: String,
    pub ticket: Option<String>,
    pub ticket_id: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// The result of one write-back attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBackResult {
    /// Written to the ticket.
    Done(String),
    /// Not written yet; try again later (stays `pending`).
    Retry(String),
    /// Given up (permanent error, or attempts exhausted).
    Failed(String),
}

impl WriteBackResult {
    fn state(&self) -> &'static str {
        match self {
            WriteBackResult::Done(_) => "done",
            WriteBackResult::Retry(_) => "pending",
            WriteBackResult::Failed(_) => "failed",
        }
    }

    fn detail(&self) -> &str {
        match self {
            WriteBackResult::Done(d) | WriteBackResult::Retry(d) | WriteBackResult::Failed(d) => d,
        }
    }
}

/// `GET /jobs/{id}`: the write-back of the delivery that created the job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WriteBackView {
    /// The webhook source.
    pub source: String,
    pub delivery_id: String,
    /// `none` (the source writes nothing back), `pending`, `done` or `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub attempts: u32,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated: Option<OffsetDateTime>,
}

impl From<DeliveryRow> for WriteBackView {
    fn from(d: DeliveryRow) -> Self {
        Self {
            source: d.source,
            delivery_id: d.delivery_id,
            state: d.write_back,
            ticket: d.ticket,
            detail: d.write_back_detail,
            attempts: u32::try_from(d.write_back_attempts).unwrap_or(0),
            updated: d.write_back_updated_us.map(from_unix_micros),
        }
    }
}

impl Gateway {
    pub(super) fn delivery_store(&self) -> Result<&crate::audit::work::WorkStore, ServiceError> {
        self.work.as_ref().ok_or_else(|| {
            ServiceError::AuditUnavailable("this audit store keeps no webhook deliveries".into())
        })
    }

    /// Decides what a delivery does: the first with its id runs ([`Gateway::webhook_finish`]
    /// afterwards), a duplicate gets the stored answer, a duplicate of one still running waits
    /// (up to `idempotency.wait_ms`) for it. `stale`: a running record older than this belongs
    /// to a request that died and is taken over.
    pub async fn webhook_begin(
        &self,
        source: &str,
        delivery_id: &str,
        stale: Duration,
    ) -> Result<IdempotencyDecision, ServiceError> {
        self.first_answer_begin(
            AnswerTable::Webhooks,
            source,
            delivery_id,
            FINGERPRINT,
            FirstAnswerTimes {
                stale,
                retention: Duration::from_secs(self.limits.webhook_dedup_hours * 3600),
                wait: Duration::from_millis(self.limits.idempotency.wait_ms),
            },
        )
        .await
    }

    /// Stores a delivery's first answer with what it led to (`None`: nothing was done and a
    /// retry should run — the record is forgotten).
    pub async fn webhook_finish(
        &self,
        source: &str,
        delivery_id: &str,
        created_us: i64,
        answer: Option<&StoredAnswer>,
        outcome: &DeliveryOutcome,
    ) -> Result<(), ServiceError> {
        let Some(a) = answer else {
            return self
                .first_answer_finish(AnswerTable::Webhooks, source, delivery_id, created_us, None)
                .await;
        };
        let headers = serde_json::to_string(&a.headers)
            .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?;
        let write_back = if outcome.write_back && outcome.job_id.is_some() {
            "pending"
        } else {
            "none"
        };
        self.delivery_store()?
            .delivery_complete(&DeliveryDone {
                source,
                delivery_id,
                created_us,
                status: i64::from(a.status),
                headers: &headers,
                body: &a.body,
                job_id: outcome.job_id.as_deref(),
                ticket: outcome.ticket.as_deref(),
                ticket_id: outcome.ticket_id.as_deref(),
                write_back,
                now_us: now_us(),
            })
            .await
            .map_err(store_err)
    }

    /// Deliveries whose job has ended and whose write-back is `pending`, oldest first (for
    /// the write-back runner; durable, so it resumes after a restart).
    pub async fn pending_write_backs(
        &self,
        limit: u32,
    ) -> Result<Vec<PendingWriteBack>, ServiceError> {
        let rows = self
            .delivery_store()?
            .pending_write_backs(i64::from(limit.max(1)), now_us())
            .await
            .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .filter_map(|d| {
                Some(PendingWriteBack {
                    job_id: d.job_id?,
                    source: d.source,
                    delivery_id: d.delivery_id,
                    ticket: d.ticket,
                    ticket_id: d.ticket_id,
                    attempts: u32::try_from(d.write_back_attempts).unwrap_or(0),
                })
            })
            .collect())
    }

    /// Records one write-back attempt (durably, and in the audit log). False when the
    /// delivery is unknown (pruned meanwhile).
    pub async fn record_write_back(
        &self,
        source: &str,
        delivery_id: &str,
        result: &WriteBackResult,
    ) -> Result<bool, ServiceError> {
        self.record_write_back_by(source, delivery_id, None, result, None)
            .await
    }

    /// [`Gateway::record_write_back`] by the holder of the delivery's claim (`owner`; false
    /// when the claim was lost to another runner meanwhile), with the earliest time of the
    /// next attempt (`not_before_us`) for a retry.
    pub(super) async fn record_write_back_by(
        &self,
        source: &str,
        delivery_id: &str,
        owner: Option<&str>,
        result: &WriteBackResult,
        not_before_us: Option<i64>,
    ) -> Result<bool, ServiceError> {
        let store = self.delivery_store()?;
        let detail = crate::domain::truncate_for_display(result.detail(), 1000);
        let found = store
            .record_write_back_by(
                source,
                delivery_id,
                owner,
                result.state(),
                Some(&detail),
                now_us(),
                not_before_us,
            )
            .await
            .map_err(store_err)?;
        if !found {
            return Ok(false);
        }
        // Best effort: the attempt is recorded; the event names the job and ticket when the
        // row can be read back (a retry of the whole record would find the claim released).
        let row = store.delivery(source, delivery_id).await.ok().flatten();
        let ev = NewEvent {
            kind: Some(EventKind::Request),
            request_id: uuid::Uuid::now_v7().to_string(),
            actor: Actor {
                id: "system".into(),
                display: Some("sessiongate write-back".into()),
                auth_method: None,
                roles: vec![],
            },
            client_addr: None,
            method: None,
            route: None,
            action: "webhook.write_back".into(),
            target: Target::default(),
            params: serde_json::json!({
                "webhook_source": source,
                "delivery_id": delivery_id,
                "job_id": row.as_ref().and_then(|r| r.job_id.clone()),
                "ticket": row.as_ref().and_then(|r| r.ticket.clone()),
                "detail": detail,
            }),
            outcome: result.state().into(),
            error_code: matches!(result, WriteBackResult::Failed(_))
                .then(|| "write_back_failed".to_string()),
            http_status: None,
            upstream_status: None,
            duration_ms: None,
        };
        // The attempt is recorded on the delivery: its audit event must not be lost either
        // (the spool keeps it while the store refuses writes).
        let _ = self.audit.record_or_spool(ev).await;
        Ok(true)
    }

    /// The write-back of the delivery that created job `job_id` (for `GET /jobs/{id}`).
    pub(super) async fn write_back_of_job(
        &self,
        job_id: &str,
    ) -> Result<Option<WriteBackView>, ServiceError> {
        Ok(self
            .delivery_store()?
            .delivery_of_job(job_id)
            .await
            .map_err(store_err)?
            .map(WriteBackView::from))
    }

    /// Forgets deliveries older than `webhooks.dedup_hours` (the job runner calls it
    /// periodically).
    pub(super) async fn prune_deliveries(&self) {
        let Some(work) = self.work.as_ref() else {
            return;
        };
        let keep = Duration::from_secs(self.limits.webhook_dedup_hours * 3600);
        let before = now_us() - micros(keep);
        if let Err(e) = work.answer_prune(AnswerTable::Webhooks, before).await {
            tracing::warn!(error = %e, "pruning webhook deliveries failed");
        }
    }
}
