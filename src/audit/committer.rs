//! The group committer behind [`AuditLog`]: `record` hands each event to one committer —
//! the dedicated writer thread when the store has a [`BlockingWriter`] (SQLite files), else an
//! async task (PostgreSQL, in-memory SQLite) — which drains whatever is queued (up to
//! `max_batch`) into one durable transaction and answers every caller. Also retention and the
//! one structured log line per event.

use super::chain::VerifyReport;
use super::event::{AuditEvent, AuditPage, AuditQuery, NewEvent};
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
}

/// Handle used by the service: cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

/// While unhealthy and idle, the committer probes the store this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
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
        Self {
            inner: Arc::new(Inner {
                store,
                tx,
                healthy,
                counters,
                write_timeout,
            }),
        }
    }

    /// Records one event durably. Also emits it as one structured log line on the
    /// `sessiongate::audit` tracing target.
    pub async fn record(&self, ev: NewEvent) -> Result<AuditEvent, AuditError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.write_timeout;
        let result = match &inner.tx {
            Some(q) => {
                let (reply, rx) = oneshot::channel();
                match enqueue(q, deadline, ev, reply).await {
                    Err(e) => Err(e),
                    Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                        Err(_) => Err(AuditError::Unavailable(format!(
                            "no durable commit within {} ms",
                            inner.write_timeout.as_millis()
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
) -> Result<(), AuditError> {
    let full = || AuditError::Unavailable("audit write queue full (timed out)".into());
    let stopped = || AuditError::Unavailable("audit committer stopped".into());
    match q {
        Queue::Task(tx) => {
            let job = Job {
                ev,
                reply,
                _slot: None,
            };
            match tokio::time::timeout_at(deadline, tx.send(job)).await {
                Err(_) => Err(full()),
                Ok(Err(_)) => Err(stopped()),
                Ok(Ok(())) => Ok(()),
            }
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
            tx.send(Job {
                ev,
                reply,
                _slot: Some(slot),
            })
            .map_err(|_| stopped())
        }
    }
}

/// Tops `batch` up with whatever is already queued (`next` returns it without waiting), up to
/// `max_batch` jobs, then drops the jobs whose callers already gave up (timed out): they were
/// told `Unavailable` and will not act on the event, so it is not written.
fn fill_batch(batch: &mut Vec<Job>, max_batch: usize, mut next: impl FnMut() -> Option<Job>) {
    while batch.len() < max_batch {
        match next() {
            Some(j) => batch.push(j),
            None => break,
        }
    }
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
        let first = if healthy.load(Ordering::Relaxed) {
            match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(PROBE_INTERVAL) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout) => {
                    if w.probe().is_ok() {
                        tracing::info!(target: "sessiongate::audit", "audit store writable again");
                        healthy.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        batch.push(first);
        fill_batch(&mut batch, max_batch, || rx.try_recv().ok());
        if batch.is_empty() {
            continue;
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for j in batch.drain(..) {
            events.push(j.ev);
            replies.push(j.reply);
            // `j._slot` drops here: the queue slot is free again.
        }
        let t0 = Instant::now();
        let res = w.append_batch(events);
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
        let first = if healthy.load(Ordering::Relaxed) {
            rx.recv().await
        } else {
            match tokio::time::timeout(PROBE_INTERVAL, rx.recv()).await {
                Ok(j) => j,
                Err(_) => {
                    if let Ok(Ok(())) = tokio::time::timeout(write_timeout, store.probe()).await {
                        tracing::info!(target: "sessiongate::audit", "audit store writable again");
                        healthy.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
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
        let res = match tokio::time::timeout(write_timeout, store.append_batch(events)).await {
            Ok(r) => r,
            Err(_) => Err(AuditError::Unavailable(format!(
                "commit did not finish within {} ms",
                write_timeout.as_millis()
            ))),
        };
        finish_batch(res, replies, &healthy, &counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Location, SqlStore, open};
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
