//! The write-back runner (issue #13 part 5): when a job created by a webhook delivery ends,
//! its result is written to the ticket through the source's [`WriteBack`] client, and the
//! attempt is recorded on the delivery (`pending` → `done` or `failed`, shown in
//! `GET /jobs/{id}`) and in the audit log (`webhook.write_back`).
//!
//! Durable and shared by replicas: the pending write-backs are rows of `webhook_deliveries`.
//! A runner claims one (owner and lease, like a job) before it calls the ticket system, so two
//! replicas never write the same result twice; a claim whose holder died expires (PostgreSQL)
//! or is dropped at start (SQLite: one process owns the file). A write that may have reached
//! the ticket system without an answer (`ticket_outcome_unknown`) is not sent again.
//!
//! Retries: each attempt already retries throttling (`Retry-After`) and 5xx within the
//! target's budget ([`crate::upstream`]); an attempt that still fails on something temporary
//! (throttled, unreachable, unavailable) is tried again after `webhooks.write_back_retry_secs`,
//! doubling up to `write_back_retry_max_secs`, `write_back_attempts` times in all. Permanent
//! errors (not found, refused credentials or permission, a rejected body, a bad reference) are
//! recorded `failed` at once. Write-backs run one at a time per process, oldest first, which
//! also keeps the comments on one issue in order.

use super::idempotency::{micros, now_us, store_err};
use super::jobs::{ItemState, item_of};
use super::{ActionRequest, Gateway, ItemResult, PendingWriteBack, ServiceError, WriteBackResult};
use crate::ticketing::{TicketRef, WriteBack, WriteBackErrorKind, WriteBackItem, WriteBackReport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a runner holds a claimed write-back: longer than one attempt can take (at most
/// four calls — number lookup and write, again after a credential reload — each within a
/// target's `retry_budget_secs` ≤ 600 s plus `timeout_secs` ≤ 120 s).
const CLAIM: Duration = Duration::from_secs(60 * 60);

/// Tries of recording an attempt's result before the claim is left to expire.
const RECORD_TRIES: u32 = 5;

/// Write-backs looked at per pass.
const BATCH: u32 = 16;

/// Job items read per page while building a report.
const ITEM_PAGE: i64 = 500;

/// The write-back clients of the sources that have one, by source name.
pub type WriteBackClients = BTreeMap<String, Arc<WriteBack>>;

/// The delay before attempt `done + 1`, after `done` attempts: `retry · 2^(done-1)`, capped.
pub(super) fn retry_delay(limits: &super::WriteBackLimits, done: u32) -> Duration {
    let factor = 1u32
        .checked_shl(done.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    limits
        .retry
        .checked_mul(factor)
        .unwrap_or(limits.retry_max)
        .min(limits.retry_max)
}

/// Which ticket a delivery names, in the form the target system uses: ServiceNow by `sys_id`
/// (`ticket_id`) or number (`ticket`); Jira by issue key (`ticket`, else `ticket_id`); a
/// callback receives both.
pub(super) fn ticket_ref(kind: &str, p: &PendingWriteBack) -> TicketRef {
    match kind {
        "servicenow" => TicketRef {
            number: p.ticket.clone(),
            sys_id: p.ticket_id.clone(),
            key: None,
        },
        "jira" => TicketRef {
            number: None,
            sys_id: None,
            key: p.ticket.clone().or_else(|| p.ticket_id.clone()),
        },
        _ => TicketRef {
            number: p.ticket.clone(),
            sys_id: None,
            key: p.ticket_id.clone(),
        },
    }
}

/// Whether another attempt may succeed where this one failed.
fn temporary(kind: WriteBackErrorKind) -> bool {
    matches!(
        kind,
        WriteBackErrorKind::Throttled
            | WriteBackErrorKind::Unreachable
            | WriteBackErrorKind::Unavailable
    )
}

impl Gateway {
    /// Starts the write-back runner of this process (once, at start) when any source writes
    /// back and the audit store keeps deliveries.
    pub fn spawn_write_back_runner(self: &Arc<Self>, clients: WriteBackClients) {
        if self.work.is_none() || clients.is_empty() {
            return;
        }
        let me = self.clone();
        // On the task tracker: a graceful stop waits (within its grace) for a write in flight
        // to be recorded; the runner starts no new one once stopping.
        self.tasks
            .spawn(async move { me.run_write_backs(clients).await });
    }

    async fn run_write_backs(self: Arc<Self>, clients: WriteBackClients) {
        let Some(work) = self.work.clone() else {
            return;
        };
        if !work.is_postgres() {
            match work.release_write_backs().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    write_backs = n,
                    "resuming write-backs interrupted by the previous stop"
                ),
                Err(e) => tracing::warn!(error = %e, "could not release old write-back claims"),
            }
        }
        let poll = Duration::from_millis(self.limits.jobs.poll_ms);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            match self.pending_write_backs(BATCH).await {
                Ok(pending) => {
                    for p in pending {
                        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        if let Err(e) = self.write_back_one(&clients, &p).await {
                            tracing::warn!(
                                webhook.source = %p.source,
                                delivery.id = %p.delivery_id,
                                error = %e,
                                "write-back not recorded; it is tried again"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading pending write-backs failed"),
            }
            tokio::select! {
                () = self.write_back_wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Claims one pending write-back, writes it and records the attempt. Ok(false) when
    /// another runner holds it.
    #[tracing::instrument(skip_all, fields(webhook.source = %p.source, delivery.id = %p.delivery_id, job.id = %p.job_id))]
    async fn write_back_one(
        &self,
        clients: &WriteBackClients,
        p: &PendingWriteBack,
    ) -> Result<bool, ServiceError> {
        let work = self.delivery_store()?;
        let now = now_us();
        let Some(done) = work
            .claim_write_back(
                &p.source,
                &p.delivery_id,
                &self.runner_id,
                now + micros(CLAIM),
                now,
            )
            .await
            .map_err(store_err)?
        else {
            return Ok(false);
        };
        // The count as of the claim (another replica may have made attempts since the list
        // was read).
        let attempt = u32::try_from(done)
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1);
        let (result, not_before) = match clients.get(&p.source) {
            None => (
                WriteBackResult::Failed(format!(
                    "write_back_not_configured: the source '{}' no longer writes back",
                    p.source
                )),
                None,
            ),
            Some(client) => match self.write_back_report(&p.job_id).await? {
                None => (
                    WriteBackResult::Failed(format!(
                        "job_not_found: the job {} is no longer in the store",
                        p.job_id
                    )),
                    None,
                ),
                Some(report) => {
                    let ticket = ticket_ref(client.kind(), p);
                    match client.write_back(&ticket, &report).await {
                        Ok(r) => (
                            WriteBackResult::Done(match &r.id {
                                Some(id) => format!(
                                    "written to {} {} (comment {id}, HTTP {})",
                                    r.kind, r.target, r.status
                                ),
                                None => {
                                    format!(
                                        "written to {} {} (HTTP {})",
                                        r.kind, r.target, r.status
                                    )
                                }
                            }),
                            None,
                        ),
                        Err(e) if e.may_have_written => (
                            WriteBackResult::Failed(format!(
                                "{e} (the write may have been made: check the ticket; it is not sent again)"
                            )),
                            None,
                        ),
                        Err(e)
                            if temporary(e.kind) && attempt < self.limits.write_back.attempts =>
                        {
                            // Not before the system's own Retry-After (within the longest delay).
                            let delay = retry_delay(&self.limits.write_back, attempt).max(
                                e.retry_after
                                    .unwrap_or_default()
                                    .min(self.limits.write_back.retry_max),
                            );
                            (
                                WriteBackResult::Retry(format!(
                                    "{e} (attempt {attempt} of {}; next in {} s)",
                                    self.limits.write_back.attempts,
                                    delay.as_secs()
                                )),
                                Some(now_us() + micros(delay)),
                            )
                        }
                        Err(e) if temporary(e.kind) => (
                            WriteBackResult::Failed(format!(
                                "{e} (gave up after {attempt} attempts)"
                            )),
                            None,
                        ),
                        Err(e) => (WriteBackResult::Failed(e.to_string()), None),
                    }
                }
            },
        };
        // The ticket may have been written: a store hiccup now must not make the claim expire
        // and the note be written again.
        let mut tries = 0;
        let recorded = loop {
            tries += 1;
            match self
                .record_write_back_by(
                    &p.source,
                    &p.delivery_id,
                    Some(&self.runner_id),
                    &result,
                    not_before,
                )
                .await
            {
                Ok(r) => break r,
                Err(e) if tries < RECORD_TRIES => {
                    tracing::warn!(error = %e, "recording a write-back failed; trying again");
                    tokio::time::sleep(Duration::from_secs(u64::from(tries))).await;
                }
                Err(e) => return Err(e),
            }
        };
        if !recorded {
            tracing::warn!("the write-back's claim was taken over before its result was recorded");
        }
        Ok(recorded)
    }

    /// The result of job `job_id` as written to its ticket: per item the host, session, user,
    /// outcome, time and error code.
    pub(super) async fn write_back_report(
        &self,
        job_id: &str,
    ) -> Result<Option<WriteBackReport>, ServiceError> {
        let work = self.delivery_store()?;
        let Some(job) = work.job(job_id).await.map_err(store_err)? else {
            return Ok(None);
        };
        let mut items = Vec::new();
        let mut action = None;
        let mut after = -1;
        loop {
            let rows = work
                .items(job_id, after, ITEM_PAGE)
                .await
                .map_err(store_err)?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            let full = i64::try_from(rows.len()).unwrap_or(0) == ITEM_PAGE;
            for row in &rows {
                if action.is_none() {
                    action = serde_json::from_str::<ActionRequest>(&row.request)
                        .ok()
                        .map(|r| r.kind.as_str().to_string());
                }
                let it = item_of(row);
                let at = row
                    .finished_us
                    .or(job.finished_us)
                    .unwrap_or(job.created_us);
                let finished = crate::audit::chain::from_unix_micros(at);
                let (outcome, user, error_code, at) = match &it.result {
                    Some(r @ ItemResult::Ok(ok)) => (r.bucket(), ok.user.clone(), None, ok.time),
                    Some(r @ ItemResult::Failed(f)) => {
                        (r.bucket(), None, Some(f.error.code.clone()), finished)
                    }
                    None if it.state == ItemState::Cancelled => ("cancelled", None, None, finished),
                    None => ("not_run", None, None, finished),
                };
                items.push(WriteBackItem {
                    host: it.target.host.clone(),
                    session: (!it.target.host.is_empty()).then_some(it.target.session_id.0),
                    user,
                    outcome: outcome.to_string(),
                    at,
                    error_code,
                });
            }
            if !full {
                break;
            }
        }
        Ok(Some(WriteBackReport {
            job_id: job.id,
            action,
            state: job.state,
            items,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::WriteBackLimits;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let l = WriteBackLimits {
            attempts: 8,
            retry: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
        };
        let got: Vec<u64> = (1..=9).map(|n| retry_delay(&l, n).as_secs()).collect();
        assert_eq!(got, vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(&l, 200).as_secs(), 3600);
    }

    #[test]
    fn a_ticket_is_named_as_its_system_names_it() {
        let p = PendingWriteBack {
            source: "s".into(),
            delivery_id: "d".into(),
            job_id: "j".into(),
            ticket: Some("INC0010001".into()),
            ticket_id: Some("9d385017c611228701d22104cc95c371".into()),
            attempts: 0,
        };
        let sn = ticket_ref("servicenow", &p);
        assert_eq!(sn.sys_id, p.ticket_id);
        assert_eq!(sn.number, p.ticket);
        let jira = ticket_ref(
            "jira",
            &PendingWriteBack {
                ticket: None,
                ticket_id: Some("ITSM-7".into()),
                ..p.clone()
            },
        );
        assert_eq!(jira.key.as_deref(), Some("ITSM-7"));
        let cb = ticket_ref("callback", &p);
        assert_eq!((cb.number, cb.key), (p.ticket, p.ticket_id));
    }
}
