//! The dedicated SQLite writer: one connection of its own (raw SQLite through
//! `libsqlite3-sys`, the library sqlx already links), driven synchronously by the audit writer
//! thread (`AuditLog`), so a whole batch — `BEGIN IMMEDIATE`, the chain head read inside the
//! transaction, the rows, the head move, `COMMIT` — runs on that thread with no further
//! hand-off. Reads, retention and migrations stay on sqlx.
//!
//! Same guarantees as the sqlx path: WAL, `synchronous=FULL` (a commit is on disk when
//! `COMMIT` returns), `busy_timeout` = ¾ of the write timeout, the head re-read in every
//! transaction (never cached), the same columns, values and hash chain.

use super::chain::unix_micros;
use super::event::{AuditEvent, NewEvent};
use super::sql::{chain_events, insert_sql};
use super::{AuditError, BlockingWriter};
use libsqlite3_sys as ffi;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn unavailable(what: &str, msg: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("audit writer: {what}: {msg}"))
}

/// An open SQLite connection, used by one thread at a time (opened `NOMUTEX`; it may move
/// between threads, never be shared).
struct Conn {
    db: NonNull<ffi::sqlite3>,
}

// SAFETY: SQLite is built thread-safe (SQLITE_THREADSAFE=1); a NOMUTEX connection may be used
// from any thread as long as it is not used by two at once. `Conn` is not `Sync` and every use
// takes `&mut` (or `&` within one owner), so it is only ever used by its owning thread.
unsafe impl Send for Conn {}

impl Conn {
    fn open(path: &Path, busy_timeout: Duration) -> Result<Conn, AuditError> {
        let name = path
            .to_str()
            .and_then(|s| CString::new(s).ok())
            .ok_or_else(|| unavailable("open", format!("unusable path {}", path.display())))?;
        let mut db: *mut ffi::sqlite3 = std::ptr::null_mut();
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: `name` is a valid C string; `db` receives the handle (also on most errors).
        let rc = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags, std::ptr::null()) };
        let Some(db) = NonNull::new(db) else {
            return Err(unavailable("open", errstr(rc)));
        };
        let conn = Conn { db };
        if rc != ffi::SQLITE_OK {
            return Err(conn.error("open", rc));
        }
        let ms = c_int::try_from(busy_timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: valid handle.
        let rc = unsafe { ffi::sqlite3_busy_timeout(conn.db.as_ptr(), ms) };
        if rc != ffi::SQLITE_OK {
            return Err(conn.error("busy_timeout", rc));
        }
        conn.exec(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
        )?;
        Ok(conn)
    }

    /// Runs SQL text without binds or results (pragmas).
    fn exec(&self, sql: &str) -> Result<(), AuditError> {
        let text = CString::new(sql).map_err(|e| unavailable("exec", e))?;
        // SAFETY: valid handle and C string; no callback; no error-message out-pointer.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db.as_ptr(),
                text.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error("exec", rc))
        }
    }

    fn prepare(&self, sql: &str) -> Result<Stmt, AuditError> {
        let len = c_int::try_from(sql.len()).map_err(|e| unavailable("prepare", e))?;
        let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes; SQLite copies what it needs.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                self.db.as_ptr(),
                sql.as_ptr().cast::<c_char>(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error("prepare", rc));
        }
        let stmt = NonNull::new(stmt).ok_or_else(|| unavailable("prepare", "empty statement"))?;
        Ok(Stmt { stmt, db: self.db })
    }

    /// Whether a transaction is open.
    fn in_transaction(&self) -> bool {
        // SAFETY: valid handle.
        unsafe { ffi::sqlite3_get_autocommit(self.db.as_ptr()) == 0 }
    }

    fn error(&self, what: &str, rc: c_int) -> AuditError {
        unavailable(what, errmsg(self.db, rc))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: valid handle, closed once, after its statements were finalized (`Open`
        // declares them before the connection, so they drop first).
        unsafe {
            ffi::sqlite3_close(self.db.as_ptr());
        }
    }
}

fn errstr(rc: c_int) -> String {
    // SAFETY: `sqlite3_errstr` returns a static string for any code.
    let p = unsafe { ffi::sqlite3_errstr(rc) };
    if p.is_null() {
        return format!("error {rc}");
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn errmsg(db: NonNull<ffi::sqlite3>, rc: c_int) -> String {
    // SAFETY: valid handle; the message is valid until the next call on this connection,
    // and it is copied right away.
    let p = unsafe { ffi::sqlite3_errmsg(db.as_ptr()) };
    if p.is_null() {
        return errstr(rc);
    }
    // SAFETY: non-null, NUL-terminated.
    let m = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    format!("{m} (code {rc})")
}

/// A prepared statement of a [`Conn`]; must be dropped before it.
struct Stmt {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: NonNull<ffi::sqlite3>,
}

// SAFETY: as for `Conn`: moved with its connection to the one thread that uses both.
unsafe impl Send for Stmt {}

impl Stmt {
    fn check(&self, what: &str, rc: c_int) -> Result<(), AuditError> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(unavailable(what, errmsg(self.db, rc)))
        }
    }

    fn bind_i64(&mut self, i: c_int, v: i64) -> Result<(), AuditError> {
        // SAFETY: valid statement.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), i, v) };
        self.check("bind", rc)
    }

    fn bind_text(&mut self, i: c_int, v: &str) -> Result<(), AuditError> {
        let len = c_int::try_from(v.len()).map_err(|e| unavailable("bind", e))?;
        // SAFETY: valid statement; `v` is valid for `len` bytes and SQLite copies it
        // (SQLITE_TRANSIENT).
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.stmt.as_ptr(),
                i,
                v.as_ptr().cast::<c_char>(),
                len,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check("bind", rc)
    }

    fn bind_null(&mut self, i: c_int) -> Result<(), AuditError> {
        // SAFETY: valid statement.
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), i) };
        self.check("bind", rc)
    }

    fn bind_opt_text(&mut self, i: c_int, v: Option<&str>) -> Result<(), AuditError> {
        match v {
            Some(s) => self.bind_text(i, s),
            None => self.bind_null(i),
        }
    }

    fn bind_opt_i64(&mut self, i: c_int, v: Option<i64>) -> Result<(), AuditError> {
        match v {
            Some(n) => self.bind_i64(i, n),
            None => self.bind_null(i),
        }
    }

    /// One step: `Ok(true)` when a row is ready, `Ok(false)` when done.
    fn step(&mut self, what: &str) -> Result<bool, AuditError> {
        // SAFETY: valid statement.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(unavailable(what, errmsg(self.db, rc))),
        }
    }

    /// Back to the start with no bindings: no statement stays active (holding a read
    /// snapshot) between uses.
    fn reset(&mut self) {
        // SAFETY: valid statement. `reset` repeats the last step's error, already reported.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
        }
    }

    /// Steps a statement that returns no rows to its end, then resets it.
    fn run(&mut self, what: &str) -> Result<(), AuditError> {
        let r = self.step(what);
        self.reset();
        r.map(|_| ())
    }

    fn column_i64(&self, i: c_int) -> i64 {
        // SAFETY: valid statement positioned on a row.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), i) }
    }

    fn column_text(&self, i: c_int) -> Result<String, AuditError> {
        // SAFETY: valid statement on a row; the pointer is valid until the next step/reset,
        // `bytes` is read after `text` as SQLite documents, and the bytes are copied at once.
        unsafe {
            let p = ffi::sqlite3_column_text(self.stmt.as_ptr(), i);
            let n = usize::try_from(ffi::sqlite3_column_bytes(self.stmt.as_ptr(), i)).unwrap_or(0);
            if p.is_null() {
                return Err(unavailable("read", "NULL where text was expected"));
            }
            let bytes = std::slice::from_raw_parts(p, n);
            String::from_utf8(bytes.to_vec()).map_err(|e| unavailable("read", e))
        }
    }
}

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: valid statement, finalized once, before its connection is closed.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The connection with its statements prepared once (fields drop in order: statements first).
struct Open {
    begin: Stmt,
    head: Stmt,
    insert: Stmt,
    update: Stmt,
    probe: Stmt,
    commit: Stmt,
    rollback: Stmt,
    conn: Conn,
}

impl Open {
    fn new(path: &Path, busy_timeout: Duration) -> Result<Open, AuditError> {
        let conn = Conn::open(path, busy_timeout)?;
        Ok(Open {
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            head: conn.prepare("SELECT head_seq, head_hash FROM audit_chains WHERE chain = ?")?,
            insert: conn.prepare(&insert_sql(1, true))?,
            update: conn
                .prepare("UPDATE audit_chains SET head_seq = ?, head_hash = ? WHERE chain = ?")?,
            probe: conn.prepare("UPDATE audit_chains SET head_seq = head_seq WHERE chain = ?")?,
            commit: conn.prepare("COMMIT")?,
            rollback: conn.prepare("ROLLBACK")?,
            conn,
        })
    }

    /// One transaction: lock, head, rows, head move, commit. On error the transaction may be
    /// open; the caller rolls it back.
    fn append(
        &mut self,
        chain: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        self.begin.run("begin")?;
        self.head.bind_text(1, chain)?;
        let head = match self.head.step("head") {
            Ok(true) => self
                .head
                .column_text(1)
                .map(|h| Some((self.head.column_i64(0), h))),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        self.head.reset();
        let Some((seq, prev)) = head? else {
            return Err(AuditError::Unavailable(format!(
                "audit chain {chain} has no head row"
            )));
        };
        let out = chain_events(chain, seq, prev, events);
        for stored in &out {
            let r = bind_event(&mut self.insert, stored).and_then(|()| self.insert.step("insert"));
            self.insert.reset();
            r?;
        }
        if let Some(last) = out.last() {
            self.update.bind_i64(1, last.seq)?;
            self.update.bind_text(2, &last.hash)?;
            self.update.bind_text(3, chain)?;
            self.update.run("head update")?;
            // SAFETY: valid handle.
            if unsafe { ffi::sqlite3_changes(self.conn.db.as_ptr()) } != 1 {
                return Err(AuditError::Unavailable(format!(
                    "audit chain {chain}: head row vanished"
                )));
            }
        }
        self.commit.run("commit")?;
        Ok(out)
    }

    fn probe(&mut self, chain: &str) -> Result<(), AuditError> {
        self.begin.run("begin")?;
        self.probe.bind_text(1, chain)?;
        self.probe.run("probe")?;
        self.commit.run("commit")
    }

    /// Rolls back whatever is still open (after an error).
    fn abandon(&mut self) {
        if self.conn.in_transaction() {
            let _ = self.rollback.run("rollback");
        }
    }
}

/// Binds the 27 columns of `stored` in `COLS` order, with the same values and storage classes
/// as the sqlx path (`bind_event!` in `sql.rs`).
fn bind_event(q: &mut Stmt, stored: &AuditEvent) -> Result<(), AuditError> {
    let e = &stored.event;
    let roles = serde_json::to_string(&e.actor.roles).unwrap_or_else(|_| "[]".into());
    let params = serde_json::to_string(&e.params).unwrap_or_else(|_| "null".into());
    q.bind_text(1, &stored.id)?;
    q.bind_text(2, &stored.chain)?;
    q.bind_i64(3, stored.seq)?;
    q.bind_i64(4, unix_micros(stored.time))?;
    q.bind_opt_text(5, e.kind.map(|k| k.as_str()))?;
    q.bind_text(6, &e.request_id)?;
    q.bind_text(7, &e.actor.id)?;
    q.bind_opt_text(8, e.actor.display.as_deref())?;
    q.bind_opt_text(9, e.actor.auth_method.as_deref())?;
    q.bind_text(10, &roles)?;
    q.bind_opt_text(11, e.client_addr.as_deref())?;
    q.bind_opt_text(12, e.method.as_deref())?;
    q.bind_opt_text(13, e.route.as_deref())?;
    q.bind_text(14, &e.action)?;
    q.bind_opt_text(15, e.target.pool.as_deref())?;
    q.bind_opt_text(16, e.target.host.as_deref())?;
    q.bind_opt_i64(17, e.target.session_id.map(i64::from))?;
    q.bind_opt_text(18, e.target.user.as_deref())?;
    q.bind_text(19, &params)?;
    q.bind_opt_text(20, e.ticket().as_deref())?;
    q.bind_text(21, &e.outcome)?;
    q.bind_opt_text(22, e.error_code.as_deref())?;
    q.bind_opt_i64(23, e.http_status.map(i64::from))?;
    q.bind_opt_i64(24, e.upstream_status.map(i64::from))?;
    q.bind_opt_i64(
        25,
        e.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)),
    )?;
    q.bind_text(26, &stored.prev_hash)?;
    q.bind_text(27, &stored.hash)
}

/// The SQLite file writer of one chain. Created by `SqlStore::claim_chain`, handed to the
/// audit writer thread by [`super::AuditStore::take_writer`].
pub struct SqliteWriter {
    open: Option<Open>,
    chain: String,
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

    /// A pragma's value on the writer connection (tests).
    #[cfg(test)]
    fn pragma(&mut self, name: &str) -> Result<String, AuditError> {
        let o = self.conn()?;
        let mut s = o.conn.prepare(&format!("PRAGMA {name}"))?;
        let r = if s.step("pragma")? {
            // SAFETY: valid statement on a row.
            let t = unsafe { ffi::sqlite3_column_type(s.stmt.as_ptr(), 0) };
            if t == ffi::SQLITE_INTEGER {
                Ok(s.column_i64(0).to_string())
            } else {
                s.column_text(0)
            }
        } else {
            Err(unavailable("pragma", "no row"))
        };
        s.reset();
        r
    }
}

impl BlockingWriter for SqliteWriter {
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
        let other = Conn::open(&path, Duration::from_millis(100)).unwrap();
        other
            .exec(
                "INSERT INTO audit_events (id, chain, seq, ts_us, request_id, actor_id, \
                 actor_roles, action, params, outcome, prev_hash, hash) \
                 VALUES ('x', 'c', 3, 0, 'x', 'x', '[]', 'x', '{}', 'x', 'x', 'x')",
            )
            .unwrap();
        assert!(w.append_batch(vec![ev(1), ev(2)]).is_err());
        // The writer holds no lock: another connection writes at once (100 ms busy timeout).
        other
            .exec("DELETE FROM audit_events WHERE id = 'x'")
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
