//! The group committer behind [`AuditLog`]: `record` hands each event to one committer —
//! the dedicated writer thread when the store has a [`BlockingWriter`] (SQLite files), else an
//! async task (PostgreSQL, in-memory SQLite) — which drains whatever is queued (up to
//! `max_batch`) into one durable transaction and answers every caller. Also retention and the
//! one structured log line per event.

use super::chain::VerifyReport;
use super::event::{AuditEvent, AuditPage, AuditQuery, NewEvent};
use super::spool::Spool;
use super::store::{AuditConfig, AuditError, AuditStore, BlockingWriter, PruneReport};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Counters of the committer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditStats {
    /// Batches committed (one transaction each).
    pub commits: u64,
    /// Events committed.
    pub events: u64,
    /// Batches that failed or timed out.
    pub failed_batches: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    events: AtomicU64,
    failed: AtomicU64,
}

struct Job {
    ev: NewEvent,
    reply: oneshot::Sender<Result<AuditEvent, AuditError>>,
    /// When the caller stops waiting (`None`: it waits for the answer, however long).
    deadline: Option<Instant>,
    /// The writer thread's queue slot, released when the job is answered.
    _slot: Option<OwnedSemaphorePermit>,
}

/// Where `record` sends its event.
enum Queue {
    /// The async committer task (a store without a [`BlockingWriter`]: PostgreSQL, in-memory).
    Task(mpsc::Sender<Job>),
    /// The dedicated writer thread; `slots` bounds the queue like the task's channel.
    Thread {
        tx: std::sync::mpsc::Sender<Job>,
        slots: Arc<Semaphore>,
    },
}

struct Inner {
    store: Arc<dyn AuditStore>,
    tx: Option<Queue>,
    healthy: Arc<AtomicBool>,
    counters: Arc<Counters>,
    write_timeout: Duration,
    /// Where events that could not be committed after their action ran are kept.
    spool: Option<Arc<Spool>>,
    /// Serialises spool drains (the background drainer and the start-up merge).
    drain_lock: tokio::sync::Mutex<()>,
}

/// What became of an event handed to [`AuditLog::record_or_spool`].
#[derive(Debug, Clone)]
pub enum Kept {
    /// Committed to the chain.
    Stored(Box<AuditEvent>),
    /// Durably in the local spool; the drainer commits it once the store takes writes.
    Spooled,
}

/// Handle used by the service: cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// While unhealthy and idle, the committer probes the store this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// While healthy and idle, the committer writes a heartbeat this often, so readiness notices a
/// store that stopped taking writes (full, read-only, locked) even when no event is written.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Headroom between the end of a batch's lock wait and its first caller's deadline.
const LOCK_WAIT_MARGIN: Duration = Duration::from_millis(50);
/// How often the spool drainer looks for spooled events.
const DRAIN_INTERVAL: Duration = Duration::from_millis(500);
/// How often retention runs (it also runs at start).
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

impl AuditLog {
    /// A log over `store` with the default batch size and write timeout. Inside a tokio
    /// runtime it starts the group committer; outside one, every record is its own commit.
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        let d = AuditConfig::default();
        Self::with_options(
            store,
            d.max_batch,
            Duration::from_millis(d.write_timeout_ms),
        )
    }

    /// A log over `store`, committing up to `max_batch` events per transaction, and failing
    /// `record` with `Unavailable` after `write_timeout`.
    pub fn with_options(
        store: Arc<dyn AuditStore>,
        max_batch: usize,
        write_timeout: Duration,
    ) -> Self {
        Self::with_spool(store, max_batch, write_timeout, None)
    }

    /// Like [`AuditLog::with_options`], with a spool for events that must not be lost when
    /// the store is down (see [`AuditLog::record_or_spool`]); inside a tokio runtime it also
    /// starts the drainer that commits spooled events once the store takes writes again.
    pub fn with_spool(
        store: Arc<dyn AuditStore>,
        max_batch: usize,
        write_timeout: Duration,
        spool: Option<Arc<Spool>>,
    ) -> Self {
        let healthy = Arc::new(AtomicBool::new(true));
        let counters = Arc::new(Counters::default());
        let max_batch = max_batch.max(1);
        let thread = store.take_writer().and_then(|w| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (h, c) = (healthy.clone(), counters.clone());
            let spawned = std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || writer_thread(w, rx, h, c, max_batch));
            match spawned {
                Ok(_) => Some(Queue::Thread {
                    tx,
                    slots: Arc::new(Semaphore::new(max_batch * 16)),
                }),
                Err(e) => {
                    tracing::error!(target: "sessiongate::audit", error = %e, "cannot start the audit writer thread; using the committer task");
                    None
                }
            }
        });
        let tx = match thread {
            Some(q) => Some(q),
            None => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let (tx, rx) = mpsc::channel(max_batch * 16);
                    rt.spawn(committer(
                        store.clone(),
                        rx,
                        healthy.clone(),
                        counters.clone(),
                        max_batch,
                        write_timeout,
                    ));
                    Some(Queue::Task(tx))
                }
                Err(_) => None,
            },
        };
        let log = Self {
            inner: Arc::new(Inner {
                store,
                tx,
                healthy,
                counters,
                write_timeout,
                spool,
                drain_lock: tokio::sync::Mutex::new(()),
            }),
        };
        if log.inner.spool.is_some()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(drainer(Arc::downgrade(&log.inner)));
        }
        log
    }

    /// The SQL database behind the store (jobs and idempotency keys live beside the events).
    pub fn database(&self) -> Option<super::sql::Db> {
        self.inner.store.database()
    }

    /// The bound on how long [`AuditLog::record`] waits for a durable commit.
    pub fn write_timeout(&self) -> Duration {
        self.inner.write_timeout
    }

    /// The spool, when one is configured.
    pub fn spool(&self) -> Option<&Spool> {
        self.inner.spool.as_deref()
    }

    /// Commits one event, waiting for the committer's definitive answer (no caller-side
    /// timeout: a committer answers every batch it takes, and a batch is bounded by the store's
    /// own limits). Unlike [`AuditLog::record`], an error therefore means the event was NOT
    /// written, so writing it again elsewhere cannot duplicate it.
    async fn record_answered(&self, ev: NewEvent) -> Result<AuditEvent, AuditError> {
        let inner = &self.inner;
        let res = match &inner.tx {
            Some(q) => {
                let (reply, rx) = oneshot::channel();
                let deadline = tokio::time::Instant::now() + inner.write_timeout;
                match enqueue(q, deadline, ev, reply, false).await {
                    Err(e) => Err(e),
                    Ok(()) => rx.await.unwrap_or_else(|_| {
                        Err(AuditError::Unavailable("audit committer stopped".into()))
                    }),
                }
            }
            None => inner.store.append_batch(vec![ev]).await.and_then(|mut v| {
                v.pop()
                    .ok_or_else(|| AuditError::Unavailable("store returned no event".into()))
            }),
        };
        match &res {
            Ok(stored) => {
                inner.healthy.store(true, Ordering::Relaxed);
                emit(stored);
            }
            Err(e) => {
                inner.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(target: "sessiongate::audit", error = %e, "audit record failed");
            }
        }
        res
    }

    /// Keeps an event that must not be lost (the outcome of an action that has run): one
    /// commit attempt with a definitive answer; if the store cannot take it, the event is
    /// appended to the spool (fsynced) and committed later by the drainer. Without a spool, or
    /// when the spool cannot be written either, it retries the store every second (the event
    /// is held in memory by this one call only).
    pub async fn record_or_spool(&self, ev: NewEvent) -> Kept {
        loop {
            let err = match self.record_answered(ev.clone()).await {
                Ok(stored) => return Kept::Stored(Box::new(stored)),
                Err(e) => e,
            };
            if let Some(spool) = self.inner.spool.clone() {
                let line = ev.clone();
                match tokio::task::spawn_blocking(move || spool.append(&line)).await {
                    Ok(Ok(())) => {
                        tracing::warn!(target: "sessiongate::audit", error = %err, request_id = %ev.request_id, "audit store refused an event that must be kept; spooled it locally");
                        return Kept::Spooled;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(target: "sessiongate::audit", error = %e, "cannot spool an audit event; retrying the store")
                    }
                    Err(e) => {
                        tracing::error!(target: "sessiongate::audit", error = %e, "spool task failed; retrying the store")
                    }
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Writes an event straight to the spool without waiting for the store (used for request
    /// records while the store is known to be failing, so a refused call waits only once).
    /// Returns false when there is no spool or it cannot be written (the event is then lost,
    /// and logged as such by the caller).
    pub async fn spool_now(&self, ev: NewEvent) -> bool {
        let Some(spool) = self.inner.spool.clone() else {
            return false;
        };
        match tokio::task::spawn_blocking(move || spool.append(&ev)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(target: "sessiongate::audit", error = %e, "cannot spool an audit event");
                false
            }
            Err(_) => false,
        }
    }

    /// Commits every spooled event, oldest first, and removes them from the spool. Stops at
    /// the first event the store refuses (the rest stay spooled, in order). An event whose
    /// exact copy is already stored (a crash after its commit, before its removal) is not
    /// written twice. Returns how many events left the spool.
    pub async fn drain_spool(&self) -> Result<usize, AuditError> {
        let Some(spool) = self.inner.spool.clone() else {
            return Ok(0);
        };
        let _g = self.inner.drain_lock.lock().await;
        if spool.pending() == 0 {
            return Ok(0);
        }
        let s = spool.clone();
        let events = tokio::task::spawn_blocking(move || s.read_all())
            .await
            .map_err(|e| AuditError::Unavailable(format!("spool read task: {e}")))??;
        let mut done = 0usize;
        let mut failure = None;
        // Identical events are legitimate (a client retrying with its own request id while the
        // store is down spools the same request record twice): the k-th identical spooled copy
        // is skipped only when the store held at least k copies before this drain began.
        // (event, copies stored before the drain, copies of it seen so far in the spool)
        let mut seen: Vec<(NewEvent, usize, usize)> = Vec::new();
        for ev in events {
            // As it was stored (compared with the stored copies below).
            let ev = ev.without_nul();
            let k = match seen.iter_mut().find(|(e, _, _)| e == &ev) {
                Some(entry) => {
                    entry.2 += 1;
                    (entry.1, entry.2)
                }
                None => match self.stored_copies(&ev).await {
                    Ok(stored) => {
                        seen.push((ev.clone(), stored, 1));
                        (stored, 1)
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
            };
            let (stored_before, nth) = k;
            if nth <= stored_before {
                done += 1;
                continue;
            }
            match self.record_answered(ev).await {
                Ok(_) => done += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.remove_first(done))
            .await
            .map_err(|e| AuditError::Unavailable(format!("spool rewrite task: {e}")))??;
        if done > 0 {
            tracing::info!(target: "sessiongate::audit", merged = done, left = spool.pending(), "spooled audit events committed");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// How many copies of exactly this event (same request id, same fields) the store holds.
    async fn stored_copies(&self, ev: &NewEvent) -> Result<usize, AuditError> {
        let mut copies = 0usize;
        let mut cursor = None;
        loop {
            let page = self
                .inner
                .store
                .query(&AuditQuery {
                    request_id: Some(ev.request_id.clone()),
                    cursor: cursor.take(),
                    limit: Some(1000),
                    ..AuditQuery::default()
                })
                .await?;
            copies += page.events.iter().filter(|s| &s.event == ev).count();
            match page.next_cursor {
                Some(c) if !page.events.is_empty() => cursor = Some(c),
                _ => return Ok(copies),
            }
        }
    }

    /// Records one event durably. Also emits it as one structured log line on the
    /// `sessiongate::audit` tracing target.
    pub async fn record(&self, ev: NewEvent) -> Result<AuditEvent, AuditError> {
        self.record_within(ev, self.inner.write_timeout).await
    }

    /// [`Self::record`] with a caller-chosen wait instead of `write_timeout_ms`: start-up
    /// writes (interrupted actions, the start event) have no caller waiting and would rather
    /// wait out a slow disk at boot than refuse to start.
    pub async fn record_within(
        &self,
        ev: NewEvent,
        wait: Duration,
    ) -> Result<AuditEvent, AuditError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + wait;
        let result = match &inner.tx {
            Some(q) => {
                let (reply, rx) = oneshot::channel();
                match enqueue(q, deadline, ev, reply, true).await {
                    Err(e) => Err(e),
                    Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                        Err(_) => Err(AuditError::Unavailable(format!(
                            "no durable commit within {} ms",
                            wait.as_millis()
                        ))),
                        Ok(Err(_)) => {
                            Err(AuditError::Unavailable("audit committer stopped".into()))
                        }
                        Ok(Ok(r)) => r,
                    },
                }
            }
            None => {
                match tokio::time::timeout_at(deadline, inner.store.append_batch(vec![ev])).await {
                    Err(_) => Err(AuditError::Unavailable("audit write timed out".into())),
                    Ok(r) => r.and_then(|mut v| {
                        v.pop().ok_or_else(|| {
                            AuditError::Unavailable("store returned no event".into())
                        })
                    }),
                }
            }
        };
        match result {
            Ok(stored) => {
                inner.healthy.store(true, Ordering::Relaxed);
                emit(&stored);
                Ok(stored)
            }
            Err(e) => {
                if matches!(e, AuditError::Unavailable(_)) {
                    inner.healthy.store(false, Ordering::Relaxed);
                }
                tracing::warn!(target: "sessiongate::audit", error = %e, "audit record failed");
                Err(e)
            }
        }
    }

    pub async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuditError> {
        self.inner.store.query(q).await
    }

    /// False from the first failed or timed-out write until a write succeeds again.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Committer counters (each commit is one transaction).
    pub fn stats(&self) -> AuditStats {
        let c = &self.inner.counters;
        AuditStats {
            commits: c.commits.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            failed_batches: c.failed.load(Ordering::Relaxed),
        }
    }

    /// The chain this instance writes.
    pub fn chain(&self) -> Option<String> {
        self.inner.store.chain()
    }

    /// The underlying store.
    pub fn store(&self) -> Arc<dyn AuditStore> {
        self.inner.store.clone()
    }

    /// Walks every chain in the store.
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        self.inner.store.verify().await
    }

    /// Retention: deletes events older than `older_than`, first writing a checkpoint.
    pub async fn prune(&self, older_than: OffsetDateTime) -> Result<PruneReport, AuditError> {
        let r = self.inner.store.prune(older_than).await?;
        for cp in &r.checkpoints {
            emit(cp);
        }
        Ok(r)
    }

    /// Runs retention now and then every hour while the log is alive.
    pub fn spawn_retention(&self, keep: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let log = AuditLog { inner };
                let cutoff = time::Duration::try_from(keep)
                    .ok()
                    .and_then(|k| OffsetDateTime::now_utc().checked_sub(k))
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                match log.prune(cutoff).await {
                    Ok(r) => tracing::info!(
                        target: "sessiongate::audit",
                        { audit.deleted = r.deleted, audit.refused = r.refused.len() },
                        "audit retention run"
                    ),
                    Err(e) => {
                        tracing::warn!(target: "sessiongate::audit", error = %e, "audit retention failed")
                    }
                }
                drop(log);
                tokio::time::sleep(RETENTION_INTERVAL).await;
            }
        });
    }
}

/// One structured log line per recorded event.
fn emit(ev: &AuditEvent) {
    let e = &ev.event;
    tracing::info!(
        target: "sessiongate::audit", { audit.id = %ev.id,
        audit.chain = %ev.chain,
        audit.seq = ev.seq,
        audit.time = %ev.time,
        audit.kind = e.kind.map(|k| k.as_str()),
        audit.request_id = %e.request_id,
        audit.actor = %e.actor.id,
        audit.auth_method = e.actor.auth_method.as_deref(),
        audit.client_addr = e.client_addr.as_deref(),
        audit.method = e.method.as_deref(),
        audit.route = e.route.as_deref(),
        audit.action = %e.action,
        audit.pool = e.target.pool.as_deref(),
        audit.host = e.target.host.as_deref(),
        audit.session_id = e.target.session_id,
        audit.user = e.target.user.as_deref(),
        audit.ticket = e.ticket().as_deref(),
        audit.params = %e.params,
        audit.outcome = %e.outcome,
        audit.error_code = e.error_code.as_deref(),
        audit.http_status = e.http_status,
        audit.upstream_status = e.upstream_status,
        audit.duration_ms = e.duration_ms,
        audit.hash = %ev.hash }, "audit event");
}

/// Hands `ev` to the committer (task or thread), waiting at most until `deadline` for room.
async fn enqueue(
    q: &Queue,
    deadline: tokio::time::Instant,
    ev: NewEvent,
    reply: oneshot::Sender<Result<AuditEvent, AuditError>>,
    caller_waits_until_deadline: bool,
) -> Result<(), AuditError> {
    let job_deadline = caller_waits_until_deadline.then(|| deadline.into_std());
    let full = || AuditError::Unavailable("audit write queue full (timed out)".into());
    let stopped = || AuditError::Unavailable("audit committer stopped".into());
    match q {
        Queue::Task(tx) => {
            let job = Job {
                ev,
                reply,
                deadline: job_deadline,
                _slot: None,
            };
            // Counted before it is sent, so the committer never takes it off an uncounted queue.
            crate::metrics::audit_queue_add(1);
            let sent = match tokio::time::timeout_at(deadline, tx.send(job)).await {
                Err(_) => Err(full()),
                Ok(Err(_)) => Err(stopped()),
                Ok(Ok(())) => Ok(()),
            };
            if sent.is_err() {
                crate::metrics::audit_queue_add(-1);
            }
            sent
        }
        Queue::Thread { tx, slots } => {
            // Uncontended: an atomic decrement, no wait.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
                        Err(_) => return Err(full()),
                        Ok(Err(_)) => return Err(stopped()),
                        Ok(Ok(s)) => s,
                    }
                }
            };
            crate::metrics::audit_queue_add(1);
            tx.send(Job {
                ev,
                reply,
                deadline: job_deadline,
                _slot: Some(slot),
            })
            .map_err(|_| {
                crate::metrics::audit_queue_add(-1);
                stopped()
            })
        }
    }
}

/// Tops `batch` up with whatever is already queued (`next` returns it without waiting), up to
/// `max_batch` jobs, then drops the jobs whose callers already gave up (timed out): they were
/// told `Unavailable` and will not act on the event, so it is not written.
/// `batch` holds every job taken off the queue (the first one and these), which leave the
/// queue-depth gauge here.
fn fill_batch(batch: &mut Vec<Job>, max_batch: usize, mut next: impl FnMut() -> Option<Job>) {
    while batch.len() < max_batch {
        match next() {
            Some(j) => batch.push(j),
            None => break,
        }
    }
    crate::metrics::audit_queue_add(-(batch.len() as i64));
    batch.retain(|j| !j.reply.is_closed());
}

/// Answers every caller of a batch with its stored event, or all of them with the error.
fn finish_batch(
    res: Result<Vec<AuditEvent>, AuditError>,
    replies: Vec<oneshot::Sender<Result<AuditEvent, AuditError>>>,
    healthy: &AtomicBool,
    counters: &Counters,
) {
    let n = replies.len();
    let res = match res {
        Ok(stored) if stored.len() != n => Err(AuditError::Unavailable(
            "store returned a wrong number of events".into(),
        )),
        r => r,
    };
    match res {
        Ok(stored) => {
            healthy.store(true, Ordering::Relaxed);
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.events.fetch_add(n as u64, Ordering::Relaxed);
            for (reply, ev) in replies.into_iter().zip(stored) {
                let _ = reply.send(Ok(ev));
            }
        }
        Err(e) => {
            healthy.store(false, Ordering::Relaxed);
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "sessiongate::audit", error = %e, batch = n, "audit batch failed");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Records a heartbeat's result: the store's health is what its last real write said.
fn probed(healthy: &AtomicBool, was_healthy: bool, res: Result<(), AuditError>) {
    match res {
        Ok(()) => {
            if !was_healthy {
                tracing::info!(target: "sessiongate::audit", "audit store writable again");
            }
            healthy.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            if was_healthy {
                tracing::error!(target: "sessiongate::audit", error = %e, "audit heartbeat failed: the store does not take writes");
            }
            healthy.store(false, Ordering::Relaxed);
        }
    }
}

/// Commits spooled events whenever there are some, until the log is gone.
async fn drainer(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(DRAIN_INTERVAL).await;
        let Some(inner) = weak.upgrade() else { return };
        let pending = inner.spool.as_ref().is_some_and(|s| s.pending() > 0);
        if pending && inner.healthy.load(Ordering::Relaxed) {
            let log = AuditLog { inner };
            if let Err(e) = log.drain_spool().await {
                tracing::warn!(target: "sessiongate::audit", error = %e, "spooled audit events not committed yet");
            }
        }
    }
}

/// The group committer on its own thread, over a [`BlockingWriter`]: blocks until a record
/// arrives, takes whatever else is queued (up to `max_batch`), runs the whole transaction in
/// this thread and answers the callers directly (caller → this thread → caller). While
/// unhealthy and idle it probes the store every [`PROBE_INTERVAL`]. Ends, closing the
/// writer's connection, once every [`AuditLog`] handle is gone and the queue is empty.
///
/// A batch is bounded by the store's own limits (SQLite: the busy timeout, ¾ of the write
/// timeout), not cancelled: a caller that stops waiting is told `Unavailable` by `record`.
fn writer_thread(
    mut w: Box<dyn BlockingWriter>,
    rx: std::sync::mpsc::Receiver<Job>,
    healthy: Arc<AtomicBool>,
    counters: Arc<Counters>,
    max_batch: usize,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch.min(1024));
    loop {
        let was_healthy = healthy.load(Ordering::Relaxed);
        let idle = if was_healthy {
            HEARTBEAT_INTERVAL
        } else {
            PROBE_INTERVAL
        };
        let first = match rx.recv_timeout(idle) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => {
                let res = w.probe();
                probed(&healthy, was_healthy, res);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        fill_batch(&mut batch, max_batch, || rx.try_recv().ok());
        // A job whose caller has (all but) stopped waiting is answered now and not written:
        // `busy_timeout(0)` would still commit it if the lock happened to be free, and an intent
        // committed after its caller was told it failed is an action that never ran.
        let now = Instant::now();
        batch.retain_mut(|j| {
            let expired = j
                .deadline
                .is_some_and(|d| d.saturating_duration_since(now) <= LOCK_WAIT_MARGIN);
            if expired {
                let (tx, _) = oneshot::channel();
                let reply = std::mem::replace(&mut j.reply, tx);
                let _ = reply.send(Err(AuditError::Unavailable(
                    "the event's write deadline passed while it waited in the queue".into(),
                )));
            }
            !expired
        });
        if batch.is_empty() {
            continue;
        }
        // Wait for the write lock no longer than the most impatient caller of the batch (less a
        // margin): a batch must not commit events whose callers were told it failed (an intent
        // committed after its caller gave up would be an action that never ran).
        let now = Instant::now();
        let wait = batch
            .iter()
            .filter_map(|j| j.deadline)
            .map(|d| {
                d.saturating_duration_since(now)
                    .saturating_sub(LOCK_WAIT_MARGIN)
            })
            .min();
        let mut events = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for j in batch.drain(..) {
            events.push(j.ev);
            replies.push(j.reply);
            // `j._slot` drops here: the queue slot is free again.
        }
        let t0 = Instant::now();
        let res = match wait {
            Some(wait) => w.append_batch_within(events, wait),
            None => w.append_batch(events),
        };
        crate::metrics::audit_commit(res.is_ok(), t0.elapsed());
        if t0.elapsed() > Duration::from_secs(1) {
            tracing::warn!(target: "sessiongate::audit", elapsed_ms = t0.elapsed().as_millis() as u64, batch = replies.len(), "slow audit commit");
        }
        finish_batch(res, replies, &healthy, &counters);
    }
    drop(w);
    tracing::debug!(target: "sessiongate::audit", "audit writer thread stopped");
}

/// The group committer: takes whatever is waiting (up to `max_batch`), appends it in one
/// transaction, answers every caller. A failed batch is answered with the error; the chain
/// head is re-read from the store inside every transaction, so a failure leaves no gap.
async fn committer(
    store: Arc<dyn AuditStore>,
    mut rx: mpsc::Receiver<Job>,
    healthy: Arc<AtomicBool>,
    counters: Arc<Counters>,
    max_batch: usize,
    write_timeout: Duration,
) {
    loop {
        let was_healthy = healthy.load(Ordering::Relaxed);
        let idle = if was_healthy {
            HEARTBEAT_INTERVAL
        } else {
            PROBE_INTERVAL
        };
        let first = match tokio::time::timeout(idle, rx.recv()).await {
            Ok(j) => j,
            Err(_) => {
                let res = match tokio::time::timeout(write_timeout, store.probe()).await {
                    Ok(r) => r,
                    Err(_) => Err(AuditError::Unavailable(format!(
                        "heartbeat did not commit within {} ms",
                        write_timeout.as_millis()
                    ))),
                };
                probed(&healthy, was_healthy, res);
                continue;
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        fill_batch(&mut batch, max_batch, || rx.try_recv().ok());
        if batch.is_empty() {
            continue;
        }
        let (events, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|j| (j.ev, j.reply)).unzip();
        let t0 = Instant::now();
        let res = match tokio::time::timeout(write_timeout, store.append_batch(events)).await {
            Ok(r) => r,
            Err(_) => Err(AuditError::Unavailable(format!(
                "commit did not finish within {} ms",
                write_timeout.as_millis()
            ))),
        };
        crate::metrics::audit_commit(res.is_ok(), t0.elapsed());
        finish_batch(res, replies, &healthy, &counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Location, Spool, SqlStore, open};
    use async_trait::async_trait;

    fn assert_send<T: Send>(_: &T) {}

    /// The futures handlers await must be `Send` (axum, tokio::spawn).
    #[tokio::test]
    async fn futures_are_send() {
        let mut store = SqlStore::connect(&Location::SqliteMemory, Duration::from_secs(1), true)
            .await
            .unwrap();
        store.claim_chain("c").await.unwrap();
        let log = AuditLog::new(Arc::new(store));
        assert_send(&log.record(NewEvent::default()));
        assert_send(&log.query(&AuditQuery::default()));
        assert_send(&log.verify());
        assert_send(&log.prune(OffsetDateTime::now_utc()));
        assert_send(&log.export_jsonl(None, Vec::new()));
        assert_send(&log.all_events());
        let cfg = AuditConfig::default();
        let dir = std::path::PathBuf::from("/nonexistent");
        assert_send(&open(&cfg, &dir));
    }

    /// The spool drains in order, skips an event the store already holds (a crash between its
    /// commit and its removal), and `record_or_spool` commits directly while the store works.
    /// An in-memory SQLite audit log with a spool file in `dir`.
    async fn log_with_spool(dir: &std::path::Path) -> (AuditLog, Arc<Spool>) {
        let mut store = SqlStore::connect(&Location::SqliteMemory, Duration::from_secs(1), true)
            .await
            .unwrap();
        store.claim_chain("c").await.unwrap();
        let spool = Arc::new(Spool::open(&dir.join("a.spool")).unwrap());
        let log = AuditLog::with_spool(
            Arc::new(store),
            16,
            Duration::from_secs(1),
            Some(spool.clone()),
        );
        (log, spool)
    }

    #[tokio::test]
    async fn spool_drains_in_order_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (log, spool) = log_with_spool(dir.path()).await;
        let ev = |rid: &str| NewEvent {
            request_id: rid.into(),
            action: "logoff".into(),
            outcome: "done".into(),
            params: serde_json::json!({ "intent_id": format!("i-{rid}") }),
            ..NewEvent::default()
        };
        // Already committed, but still in the spool.
        log.record(ev("a")).await.unwrap();
        spool.append(&ev("a")).unwrap();
        spool.append(&ev("b")).unwrap();
        spool.append(&ev("c")).unwrap();
        assert_eq!(log.drain_spool().await.unwrap(), 3);
        assert_eq!(spool.pending(), 0);
        assert!(spool.read_all().unwrap().is_empty());
        let mut all = log.all_events().await.unwrap();
        all.sort_by_key(|e| e.seq);
        let rids: Vec<&str> = all.iter().map(|e| e.event.request_id.as_str()).collect();
        assert_eq!(rids, ["a", "b", "c"], "in order, no duplicate");
        assert!(matches!(
            log.record_or_spool(ev("d")).await,
            Kept::Stored(_)
        ));
        assert_eq!(spool.pending(), 0);
        assert!(log.verify().await.unwrap().ok);
    }

    /// Identical events are not duplicates of each other: a client retrying with its own
    /// request id while the store is down spools the same request record several times, and
    /// every copy must reach the chain (only copies the store already held are skipped).
    #[tokio::test]
    async fn identical_spooled_events_are_all_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (log, spool) = log_with_spool(dir.path()).await;
        let ev = NewEvent {
            request_id: "client-chosen".into(),
            action: "request".into(),
            outcome: "refused".into(),
            ..NewEvent::default()
        };
        // One copy already committed (and still spooled), then two more refused retries.
        log.record(ev.clone()).await.unwrap();
        spool.append(&ev).unwrap();
        spool.append(&ev).unwrap();
        spool.append(&ev).unwrap();
        assert_eq!(log.drain_spool().await.unwrap(), 3);
        assert_eq!(spool.pending(), 0);
        let all = log.all_events().await.unwrap();
        assert_eq!(all.len(), 3, "the stored copy plus the two retries");
        assert!(log.verify().await.unwrap().ok);
    }

    /// A writer whose batches wait on a gate; records the size of every batch it commits.
    struct GatedWriter {
        gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
        seq: i64,
    }

    impl BlockingWriter for GatedWriter {
        fn append_batch(&mut self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError> {
            let (m, cv) = &*self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            drop(open);
            self.batches.lock().unwrap().push(events.len());
            Ok(events
                .into_iter()
                .map(|event| {
                    self.seq += 1;
                    AuditEvent {
                        id: format!("e{}", self.seq),
                        chain: "c".into(),
                        seq: self.seq,
                        time: OffsetDateTime::now_utc(),
                        event,
                        prev_hash: String::new(),
                        hash: String::new(),
                    }
                })
                .collect())
        }

        fn probe(&mut self) -> Result<(), AuditError> {
            Ok(())
        }
    }

    struct WriterOnlyStore(std::sync::Mutex<Option<GatedWriter>>);

    #[async_trait]
    impl AuditStore for WriterOnlyStore {
        async fn append_batch(&self, _: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError> {
            Err(AuditError::Unavailable(
                "the writer thread must be used".into(),
            ))
        }
        async fn query(&self, _: &AuditQuery) -> Result<AuditPage, AuditError> {
            Err(AuditError::Unavailable("no reads".into()))
        }
        fn take_writer(&self) -> Option<Box<dyn BlockingWriter>> {
            let w = self.0.lock().unwrap().take()?;
            Some(Box::new(w))
        }
    }

    /// The writer thread: callers stop waiting at the write timeout even while the thread is
    /// stuck in a batch (and are then not written); queued records share one transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writer_thread_times_out_callers_and_group_commits() {
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = WriterOnlyStore(std::sync::Mutex::new(Some(GatedWriter {
            gate: gate.clone(),
            batches: batches.clone(),
            seq: 0,
        })));
        let log = AuditLog::with_options(Arc::new(store), 64, Duration::from_millis(300));
        let set_gate = |v: bool| {
            *gate.0.lock().unwrap() = v;
            gate.1.notify_all();
        };
        // Stuck writer (one batch of 1 running, 9 callers queued behind it): every caller is
        // told Unavailable at the timeout, not later.
        let spawn_record = |log: &AuditLog| {
            let log = log.clone();
            tokio::spawn(async move { log.record(NewEvent::default()).await })
        };
        let t0 = Instant::now();
        let mut stuck = vec![spawn_record(&log)];
        tokio::time::sleep(Duration::from_millis(50)).await;
        stuck.extend((0..9).map(|_| spawn_record(&log)));
        for h in stuck {
            assert!(matches!(h.await.unwrap(), Err(AuditError::Unavailable(_))));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        assert!(!log.healthy());
        set_gate(true);
        // Only the batch already running when its caller gave up is written; the 9 callers
        // that gave up while queued are dropped, not written.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*batches.lock().unwrap(), vec![1]);
        // Healthy again after the next commit; 20 records queued behind a busy writer share
        // a transaction.
        batches.lock().unwrap().clear();
        set_gate(false);
        let first = spawn_record(&log);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = (0..19).map(|_| spawn_record(&log)).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        set_gate(true);
        first.await.unwrap().unwrap();
        for h in rest {
            h.await.unwrap().unwrap();
        }
        assert!(log.healthy());
        assert_eq!(*batches.lock().unwrap(), vec![1, 19]);
        let st = log.stats();
        assert!(st.failed_batches == 0 && st.events >= 20, "{st:?}");
    }
}
