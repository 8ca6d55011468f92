//! `Idempotency-Key`: the first request with a key (per principal) runs and its answer is
//! stored in the audit database; a repeat with the same method, path and body within the
//! retention gets the stored answer and nothing runs again. The HTTP layer
//! (`api::idempotency`) reads the key and the body and renders what this decides.

use super::{Gateway, ServiceError};
use crate::audit::{chain::unix_micros, work::AnswerTable};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// A stored answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub status: u16,
    /// The headers worth replaying (content type, `Location`, `Retry-After`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What to do with a request that carries a key.
#[derive(Debug, Clone)]
pub enum IdempotencyDecision {
    /// First use (or the earlier one is gone): run it, then [`Gateway::idempotency_finish`].
    /// `created_us` identifies this run's record.
    Run { created_us: i64 },
    /// Answer this; nothing runs.
    Replay(StoredAnswer),
    /// The key was used with another request.
    Mismatch,
    /// The first request with the key is still running.
    InProgress,
}

pub(super) fn now_us() -> i64 {
    unix_micros(OffsetDateTime::now_utc())
}

/// `d` in microseconds (saturating), for the stores' `*_us` columns.
pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2)
}

pub(super) fn store_err(e: crate::audit::AuditError) -> ServiceError {
    ServiceError::AuditUnavailable(e.to_string())
}

impl Gateway {
    /// Decides what a request with `key` does. A duplicate of a running request waits up to
    /// `idempotency.wait_ms` for its answer. A `running` record older than `stale` belongs
    /// to a request that died (its process was killed): it is taken over.
    pub async fn idempotency_begin(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &str,
        stale: Duration,
    ) -> Result<IdempotencyDecision, ServiceError> {
        let retention = Duration::from_secs(self.limits.idempotency.retention_hours * 3600);
        let wait = Duration::from_millis(self.limits.idempotency.wait_ms);
        self.first_answer_begin(
            AnswerTable::Idempotency,
            principal,
            key,
            fingerprint,
            FirstAnswerTimes {
                stale,
                retention,
                wait,
            },
        )
        .await
    }

    /// "The first request with this key runs, every repeat gets its stored answer", on one
    /// of the first-answer tables (idempotency keys, webhook deliveries): the record is
    /// inserted `running`; a repeat finds it and replays the stored answer once it is
    /// `done`, waits (up to `wait`) while it runs, takes over a `running` record older than
    /// `stale` (its request died), and starts afresh when the record is older than `retention`.
    pub(crate) async fn first_answer_begin(
        &self,
        table: AnswerTable,
        owner: &str,
        key: &str,
        fingerprint: &str,
        times: FirstAnswerTimes,
    ) -> Result<IdempotencyDecision, ServiceError> {
        let work = self
            .work
            .as_ref()
            .ok_or_else(|| ServiceError::AuditUnavailable("no idempotency store".into()))?;
        let FirstAnswerTimes {
            stale,
            retention,
            wait,
        } = times;
        let t0 = Instant::now();
        loop {
            let now = now_us();
            if work
                .answer_insert(table, owner, key, fingerprint, now)
                .await
                .map_err(store_err)?
            {
                return Ok(IdempotencyDecision::Run { created_us: now });
            }
            let Some(row) = work
                .answer_get(table, owner, key)
                .await
                .map_err(store_err)?
            else {
                continue; // deleted meanwhile: try again
            };
            if row.created_us < now - micros(retention) {
                work.answer_delete(table, owner, key, Some(row.created_us))
                    .await
                    .map_err(store_err)?;
                continue;
            }
            if row.fingerprint != fingerprint {
                return Ok(IdempotencyDecision::Mismatch);
            }
            if row.state == "done" {
                let headers: Vec<(String, String)> = row
                    .headers
                    .as_deref()
                    .and_then(|h| serde_json::from_str(h).ok())
                    .unwrap_or_default();
                return Ok(IdempotencyDecision::Replay(StoredAnswer {
                    status: row
                        .status
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(200),
                    headers,
                    body: row.body.unwrap_or_default(),
                }));
            }
            if row.created_us < now - micros(stale) {
                if work
                    .answer_take_over(table, owner, key, row.created_us, now)
                    .await
                    .map_err(store_err)?
                {
                    tracing::warn!(
                        "taking over a first-answer record whose first request never finished"
                    );
                    return Ok(IdempotencyDecision::Run { created_us: now });
                }
                continue;
            }
            if t0.elapsed() >= wait {
                return Ok(IdempotencyDecision::InProgress);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stores the answer of a run (`None`: forget the key, so a retry runs — for answers
    /// that mean nothing was done).
    pub async fn idempotency_finish(
        &self,
        principal: &str,
        key: &str,
        created_us: i64,
        answer: Option<&StoredAnswer>,
    ) -> Result<(), ServiceError> {
        self.first_answer_finish(AnswerTable::Idempotency, principal, key, created_us, answer)
            .await
    }

    /// [`Gateway::idempotency_finish`] on either first-answer table.
    pub(crate) async fn first_answer_finish(
        &self,
        table: AnswerTable,
        owner: &str,
        key: &str,
        created_us: i64,
        answer: Option<&StoredAnswer>,
    ) -> Result<(), ServiceError> {
        let work = self
            .work
            .as_ref()
            .ok_or_else(|| ServiceError::AuditUnavailable("no idempotency store".into()))?;
        match answer {
            Some(a) => {
                let headers = serde_json::to_string(&a.headers)
                    .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?;
                work.answer_complete(
                    table,
                    owner,
                    key,
                    created_us,
                    i64::from(a.status),
                    &headers,
                    &a.body,
                )
                .await
                .map_err(store_err)
            }
            None => work
                .answer_delete(table, owner, key, Some(created_us))
                .await
                .map_err(store_err),
        }
    }
}

/// The durations of [`Gateway::first_answer_begin`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FirstAnswerTimes {
    pub stale: Duration,
    pub retention: Duration,
    pub wait: Duration,
}
