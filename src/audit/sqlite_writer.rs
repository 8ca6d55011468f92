//! The dedicated SQLite writer: one connection of its own (`rusqlite`, over the same
//! `libsqlite3-sys` and bundled SQLite that sqlx links), driven synchronously by the audit
//! writer thread (`AuditLog`), so a whole batch — `BEGIN IMMEDIATE`, the chain head read inside
//! the transaction, the rows, the head move, `COMMIT` — runs on that thread with no further
//! hand-off. Its statements are prepared once and kept in the connection's statement cache.
//! Reads, retention and migrations stay on sqlx.
//!
//! Same guarantees as the sqlx path: WAL, `synchronous=FULL` (a commit is on disk when
//! `COMMIT` returns), `busy_timeout` = ¾ of the write timeout, the head re-read in every
//! transaction (never cached), the same columns, values and hash chain.

use super::chain::unix_micros;
use super::event::{AuditEvent, NewEvent};
use super::sql::{HEARTBEAT_SQL, chain_events, heartbeat_pad, insert_sql};
use super::{AuditError, BlockingWriter};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn unavailable(what: &str, msg: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("audit writer: {what}: {msg}"))
}

const BEGIN_SQL: &str = "BEGIN IMMEDIATE";
const HEAD_SQL: &str = "SELECT head_seq, head_hash FROM audit_chains WHERE chain = ?1";
const UPDATE_HEAD_SQL: &str =
    "UPDATE audit_chains SET head_seq = ?1, head_hash = ?2 WHERE chain = ?3";
const COMMIT_SQL: &str = "COMMIT";
const ROLLBACK_SQL: &str = "ROLLBACK";

/// The writer connection, with the statements of a batch prepared once (cached on the
/// connection; the cache holds them across batches).
struct Open {
    conn: Connection,
    insert_sql: String,
}

impl Open {
    /// Opens the (already migrated) file read-write, sets the busy timeout and the pragmas,
    /// and prepares every statement of the write path.
    fn new(path: &Path, busy_timeout: Duration) -> Result<Open, AuditError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| unavailable("open", e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| unavailable("busy_timeout", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
        )
        .map_err(|e| unavailable("pragma", e))?;
        let open = Open {
            conn,
            insert_sql: insert_sql(1, true),
        };
        for sql in [
            BEGIN_SQL,
            HEAD_SQL,
            open.insert_sql.as_str(),
            UPDATE_HEAD_SQL,
            HEARTBEAT_SQL,
            COMMIT_SQL,
            ROLLBACK_SQL,
        ] {
            open.conn
                .prepare_cached(sql)
                .map_err(|e| unavailable("prepare", e))?;
        }
        Ok(open)
    }

    /// Runs a cached statement that returns no rows.
    fn run(&self, what: &str, sql: &str, params: &[&dyn ToSql]) -> Result<usize, AuditError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(|e| unavailable(what, e))
    }

    /// One transaction: lock, head, rows, head move, commit. On error the transaction may be
    /// open; the caller rolls it back.
    fn append(&self, chain: &str, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError> {
        self.run("begin", BEGIN_SQL, &[])?;
        let head = self
            .conn
            .prepare_cached(HEAD_SQL)
            .and_then(|mut s| {
                s.query_row([chain], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
            })
            .map_err(|e| unavailable("head", e))?;
        let Some((seq, prev)) = head else {
            return Err(AuditError::Unavailable(format!(
                "audit chain {chain} has no head row"
            )));
        };
        let out = chain_events(chain, seq, prev, events);
        {
            let mut insert = self
                .conn
                .prepare_cached(&self.insert_sql)
                .map_err(|e| unavailable("insert", e))?;
            for stored in &out {
                insert_event(&mut insert, stored)?;
            }
        }
        if let Some(last) = out.last() {
            let changed = self.run(
                "head update",
                UPDATE_HEAD_SQL,
                params![last.seq, last.hash, chain],
            )?;
            if changed != 1 {
                return Err(AuditError::Unavailable(format!(
                    "audit chain {chain}: head row vanished"
                )));
            }
        }
        self.run("commit", COMMIT_SQL, &[])?;
        Ok(out)
    }

    fn probe(&self, chain: &str) -> Result<(), AuditError> {
        self.run("begin", BEGIN_SQL, &[])?;
        let now = unix_micros(time::OffsetDateTime::now_utc());
        self.run(
            "heartbeat",
            HEARTBEAT_SQL,
            params![chain, now, heartbeat_pad()],
        )?;
        self.run("commit", COMMIT_SQL, &[]).map(|_| ())
    }

    /// Rolls back whatever is still open (after an error).
    fn abandon(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.run("rollback", ROLLBACK_SQL, &[]);
        }
    }
}

/// Inserts one row: the 27 columns of `stored` in `COLS` order, with the same values and
/// storage classes as the sqlx path (`bind_event!` in `sql.rs`).
fn insert_event(
    q: &mut rusqlite::CachedStatement<'_>,
    stored: &AuditEvent,
) -> Result<(), AuditError> {
    let e = &stored.event;
    let roles = serde_json::to_string(&e.actor.roles).unwrap_or_else(|_| "[]".into());
    let params = serde_json::to_string(&e.params).unwrap_or_else(|_| "null".into());
    let duration_ms = e.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
    q.execute(params![
        stored.id,
        stored.chain,
        stored.seq,
        unix_micros(stored.time),
        e.kind.map(|k| k.as_str()),
        e.request_id,
        e.actor.id,
        e.actor.display,
        e.actor.auth_method,
        roles,
        e.client_addr,
        e.method,
        e.route,
        e.action,
        e.target.pool,
        e.target.host,
        e.target.session_id.map(i64::from),
        e.target.user,
        params,
        e.ticket(),
        e.outcome,
        e.error_code,
        e.http_status.map(i64::from),
        e.upstream_status.map(i64::from),
        duration_ms,
        stored.prev_hash,
        stored.hash,
    ])
    .map(|_| ())
    .map_err(|e| unavailable("insert", e))
}

/// The SQLite file writer of one chain. Created by `SqlStore::claim_chain`, handed to the
/// audit writer thread by [`super::AuditStore::take_writer`].
pub struct SqliteWriter {
    open: Option<Open>,
    chain: String,
    /// The connection's usual busy timeout.
    busy_timeout: Duration,
    /// Set by `SqlStore::close`: the writer closes its connection and refuses writes.
    closed: Arc<AtomicBool>,
    /// `SqlStore::transactions`, shared.
    transactions: Arc<AtomicU64>,
}

impl SqliteWriter {
    /// Opens the writer connection on the (already migrated) file at `path`.
    pub(crate) fn open(
        path: &Path,
        chain: &str,
        busy_timeout: Duration,
        closed: Arc<AtomicBool>,
        transactions: Arc<AtomicU64>,
    ) -> Result<SqliteWriter, AuditError> {
        Ok(SqliteWriter {
            open: Some(Open::new(path, busy_timeout)?),
            chain: chain.to_owned(),
            busy_timeout,
            closed,
            transactions,
        })
    }

    fn conn(&mut self) -> Result<&mut Open, AuditError> {
        if self.closed.load(Ordering::Relaxed) {
            self.open = None;
        }
        self.open
            .as_mut()
            .ok_or_else(|| AuditError::Unavailable("audit store closed".into()))
    }

    /// A pragma's value on the writer connection, as text (tests).
    #[cfg(test)]
    fn pragma(&mut self, name: &str) -> Result<String, AuditError> {
        use rusqlite::types::ValueRef;
        let o = self.conn()?;
        o.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| {
                Ok(match r.get_ref(0)? {
                    ValueRef::Integer(n) => n.to_string(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    other => format!("{other:?}"),
                })
            })
            .map_err(|e| unavailable("pragma", e))
    }
}

impl BlockingWriter for SqliteWriter {
    fn append_batch_within(
        &mut self,
        events: Vec<NewEvent>,
        wait: Duration,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let normal = self.busy_timeout;
        let bounded = wait.min(normal);
        if bounded < normal {
            self.conn()?
                .conn
                .busy_timeout(bounded)
                .map_err(|e| unavailable("busy_timeout", e))?;
        }
        let res = self.append_batch(events);
        if bounded < normal
            && let Ok(o) = self.conn()
        {
            let _ = o.conn.busy_timeout(normal);
        }
        res
    }

    fn append_batch(&mut self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let chain = self.chain.clone();
        let o = self.conn()?;
        match o.append(&chain, events) {
            Ok(out) => {
                self.transactions.fetch_add(1, Ordering::Relaxed);
                Ok(out)
            }
            Err(e) => {
                o.abandon();
                Err(e)
            }
        }
    }

    fn probe(&mut self) -> Result<(), AuditError> {
        let chain = self.chain.clone();
        let o = self.conn()?;
        o.probe(&chain).inspect_err(|_| o.abandon())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::sql::{Location, SqlStore};
    use crate::audit::{AuditStore, EventKind};

    fn ev(i: usize) -> NewEvent {
        NewEvent {
            kind: Some(EventKind::Outcome),
            request_id: format!("r{i}"),
            action: "logoff".into(),
            outcome: "done".into(),
            http_status: Some(200),
            duration_ms: Some(3),
            params: serde_json::json!({ "ticket": "CHG1", "i": i }),
            ..Default::default()
        }
    }

    /// The writer connection is WAL + `synchronous=FULL`; what it writes reads back through
    /// sqlx as the same events and verifies, mixed with events written by the sqlx path.
    #[tokio::test]
    async fn writer_is_durable_and_compatible_with_the_sqlx_path() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::Sqlite(dir.path().join("a.sqlite3"));
        let mut store = SqlStore::connect(&loc, Duration::from_secs(2), true)
            .await
            .unwrap();
        store.claim_chain("c").await.unwrap();
        let mut w = store.take_writer().unwrap();
        assert!(store.take_writer().is_none(), "one writer per store");
        let mut w2 = SqliteWriter::open(
            &dir.path().join("a.sqlite3"),
            "c",
            Duration::from_secs(1),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap();
        assert_eq!(w2.pragma("journal_mode").unwrap(), "wal");
        assert_eq!(w2.pragma("synchronous").unwrap(), "2", "FULL");
        assert_eq!(w2.pragma("busy_timeout").unwrap(), "1000");
        let a = w.append_batch(vec![ev(0), ev(1), ev(2)]).unwrap();
        let b = store.append_batch(vec![ev(3)]).await.unwrap();
        let c = w.append_batch(vec![ev(4)]).unwrap();
        assert_eq!(
            [a[0].seq, a[2].seq, b[0].seq, c[0].seq],
            [1, 3, 4, 5],
            "one chain"
        );
        assert_eq!(b[0].prev_hash, a[2].hash);
        assert_eq!(c[0].prev_hash, b[0].hash);
        let all = crate::audit::AuditLog::new(Arc::new(store))
            .all_events()
            .await
            .unwrap();
        let mut want: Vec<AuditEvent> = a.into_iter().chain(b).chain(c).collect();
        let mut got = all;
        want.sort_by_key(|e| e.seq);
        got.sort_by_key(|e| e.seq);
        assert_eq!(got, want, "read back exactly as written");
        // No transaction left open: another connection can write right away.
        w2.probe().unwrap();
    }

    /// A batch failing after `BEGIN IMMEDIATE` (a foreign row squats the next seq) is rolled
    /// back: the head stays, the lock is released, the next batch continues the chain.
    #[tokio::test]
    async fn failed_batch_rolls_back_and_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite3");
        let mut store = SqlStore::connect(
            &Location::Sqlite(path.clone()),
            Duration::from_secs(2),
            true,
        )
        .await
        .unwrap();
        store.claim_chain("c").await.unwrap();
        let mut w = store.take_writer().unwrap();
        let first = w.append_batch(vec![ev(0)]).unwrap();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::from_millis(100)).unwrap();
        other
            .execute_batch(
                "INSERT INTO audit_events (id, chain, seq, ts_us, request_id, actor_id, \
                 actor_roles, action, params, outcome, prev_hash, hash) \
                 VALUES ('x', 'c', 3, 0, 'x', 'x', '[]', 'x', '{}', 'x', 'x', 'x')",
            )
            .unwrap();
        assert!(w.append_batch(vec![ev(1), ev(2)]).is_err());
        // The writer holds no lock: another connection writes at once (100 ms busy timeout).
        other
            .execute_batch("DELETE FROM audit_events WHERE id = 'x'")
            .unwrap();
        let next = w.append_batch(vec![ev(3)]).unwrap();
        assert_eq!(
            (next[0].seq, next[0].prev_hash.as_str()),
            (2, first[0].hash.as_str())
        );
        assert!(store.verify().await.unwrap().ok);
        // Closing the store closes the writer.
        store.close().await;
        assert!(matches!(
            w.append_batch(vec![ev(4)]),
            Err(AuditError::Unavailable(_))
        ));
        assert!(w.probe().is_err());
    }
}
