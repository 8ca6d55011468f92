//! The SQL audit store: SQLite (embedded default) and PostgreSQL (several replicas), one code
//! path through sqlx. The SQL text is shared (`$N` placeholders work on both; the SQLite
//! insert paths use `?`, which sqlx binds without a name lookup); the only
//! differences are the transaction start (`BEGIN IMMEDIATE` on SQLite so the write lock is taken
//! up front), `FOR UPDATE` on the chain head read and a statement timeout on PostgreSQL.
//! Appends to a SQLite *file* normally go through the dedicated writer instead
//! (`sqlite_writer.rs`, opened by [`SqlStore::claim_chain`], taken by `AuditLog`); the sqlx
//! append path here serves PostgreSQL, in-memory SQLite and direct `append_batch` callers.

use super::chain::{
    self, Anchor, ChainBreak, ChainHead, ChainStatus, GENESIS_HASH, Verifier, VerifyReport,
    from_unix_micros, unix_micros,
};
use super::event::{Actor, AuditEvent, AuditPage, AuditQuery, EventKind, NewEvent, Target};
use super::sqlite_writer::SqliteWriter;
use super::{AuditError, AuditStore, BlockingWriter, PruneReport};
use async_trait::async_trait;
use base64::Engine as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
// Every SQL text built at run time here (`AssertSqlSafe`) is assembled from constants,
// placeholders and numbers; values are always bound, never formatted in.
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Row, Type};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// Which database, with its pool.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the concrete pool: the same code is compiled for both.
macro_rules! with_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

fn db_err(e: sqlx::Error) -> AuditError {
    AuditError::Unavailable(e.to_string())
}

/// Every event column, in insert order.
const COLS: &str = "id, chain, seq, ts_us, kind, request_id, actor_id, actor_display, \
     actor_auth_method, actor_roles, client_addr, method, route, action, pool, host, session_id, \
     target_user, params, ticket, outcome, error_code, http_status, upstream_status, duration_ms, \
     prev_hash, hash";

/// Number of columns in [`COLS`].
const NCOLS: usize = 27;

/// Events per INSERT statement (27 binds each: within SQLite's 32766 and PostgreSQL's 65535).
const INSERT_CHUNK: usize = 256;

/// `INSERT INTO audit_events (COLS) VALUES ($1, …, $27), ($28, …), …` for `rows` rows.
/// `qmark`: anonymous `?` placeholders instead (SQLite: binding and parsing `$N` names is
/// linear per name, so quadratic for a large batch; `?` is positional and cheap).
pub(crate) fn insert_sql(rows: usize, qmark: bool) -> String {
    let mut sql = String::with_capacity(300 + rows * NCOLS * 6);
    sql.push_str("INSERT INTO audit_events (");
    sql.push_str(COLS);
    sql.push_str(") VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..NCOLS {
            if c > 0 {
                sql.push_str(", ");
            }
            if qmark {
                sql.push('?');
            } else {
                sql.push('$');
                sql.push_str(&(r * NCOLS + c + 1).to_string());
            }
        }
        sql.push(')');
    }
    sql
}

/// SQLite fused commit, first round trip: take the write lock and read the chain head.
const SQLITE_BEGIN_HEAD_SQL: &str =
    "BEGIN IMMEDIATE; SELECT head_seq, head_hash FROM audit_chains WHERE chain = ?";

/// SQLite fused commit, second round trip: the rows, the head move and the commit, as one
/// multi-statement query (positional `?`: the row binds, then head seq, head hash, chain).
fn sqlite_fused_sql(rows: usize) -> String {
    let mut sql = insert_sql(rows, true);
    sql.push_str("; UPDATE audit_chains SET head_seq = ?, head_hash = ? WHERE chain = ?; COMMIT");
    sql
}

/// Batch sizes up to this keep their fused statement prepared (sqlx statement cache);
/// larger ones are rare (only under heavy load) and prepared per use.
const SQLITE_CACHED_ROWS: usize = 16;

const HEADS_SQL: &str = "SELECT chain, head_seq, head_hash, anchor_seq, anchor_hash \
     FROM audit_chains ORDER BY chain";

/// Key of the PostgreSQL advisory lock serialising migrations and retention runs.
const PG_LOCK_KEY: i64 = 0x5347_4155_4449_5431;

/// Schema migrations: (version, description, SQLite statements, PostgreSQL statements).
/// Applied in order at start, each version once, recorded in `audit_schema_version`.
type Migration = (i64, &'static str, &'static str, &'static str);

const MIGRATIONS: &[Migration] = &[
    (
        1,
        "audit events and chain heads",
        r#"
CREATE TABLE audit_chains (
    chain TEXT PRIMARY KEY,
    created_us BIGINT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts_us BIGINT NOT NULL,
    kind TEXT,
    request_id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_display TEXT,
    actor_auth_method TEXT,
    actor_roles TEXT NOT NULL,
    client_addr TEXT,
    method TEXT,
    route TEXT,
    action TEXT NOT NULL,
    pool TEXT,
    host TEXT,
    session_id BIGINT,
    target_user TEXT,
    params TEXT NOT NULL,
    ticket TEXT,
    outcome TEXT NOT NULL,
    error_code TEXT,
    http_status INTEGER,
    upstream_status INTEGER,
    duration_ms BIGINT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX audit_events_time ON audit_events (ts_us, id);
CREATE INDEX audit_events_actor ON audit_events (actor_id, ts_us);
CREATE INDEX audit_events_pool ON audit_events (pool, ts_us);
CREATE INDEX audit_events_request ON audit_events (request_id);
CREATE INDEX audit_events_ticket ON audit_events (ticket);
CREATE INDEX audit_events_kind ON audit_events (kind);
"#,
        r#"
CREATE TABLE audit_chains (
    chain TEXT COLLATE "C" PRIMARY KEY,
    created_us BIGINT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);
CREATE TABLE audit_events (
    id TEXT COLLATE "C" PRIMARY KEY,
    chain TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    ts_us BIGINT NOT NULL,
    kind TEXT,
    request_id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_display TEXT,
    actor_auth_method TEXT,
    actor_roles TEXT NOT NULL,
    client_addr TEXT,
    method TEXT,
    route TEXT,
    action TEXT NOT NULL,
    pool TEXT,
    host TEXT,
    session_id BIGINT,
    target_user TEXT,
    params TEXT NOT NULL,
    ticket TEXT,
    outcome TEXT NOT NULL,
    error_code TEXT,
    http_status INTEGER,
    upstream_status INTEGER,
    duration_ms BIGINT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    CONSTRAINT audit_events_chain_seq UNIQUE (chain, seq)
);
CREATE INDEX audit_events_time ON audit_events (ts_us, id);
CREATE INDEX audit_events_actor ON audit_events (actor_id, ts_us);
CREATE INDEX audit_events_pool ON audit_events (pool, ts_us);
CREATE INDEX audit_events_request ON audit_events (request_id);
CREATE INDEX audit_events_ticket ON audit_events (ticket);
CREATE INDEX audit_events_kind ON audit_events (kind);
"#,
    ),
    (
        2,
        "writer heartbeat (readiness probe that really writes)",
        r#"
CREATE TABLE audit_heartbeat (
    chain TEXT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    pad BLOB
);
"#,
        r#"
CREATE TABLE audit_heartbeat (
    chain TEXT COLLATE "C" PRIMARY KEY,
    at_us BIGINT NOT NULL,
    pad BYTEA
);
"#,
    ),
    (
        3,
        "durable jobs and their items; idempotency keys",
        r#"
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_by TEXT NOT NULL,
    context TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    started_us BIGINT,
    finished_us BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until_us BIGINT
);
CREATE INDEX jobs_created ON jobs (created_us, id);
CREATE INDEX jobs_state ON jobs (state, created_us);
CREATE TABLE job_items (
    job_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    bucket TEXT,
    result TEXT,
    started_us BIGINT,
    finished_us BIGINT,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status BIGINT,
    headers TEXT,
    body BLOB,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_us);
"#,
        r#"
CREATE TABLE jobs (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_by TEXT NOT NULL,
    context TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    started_us BIGINT,
    finished_us BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until_us BIGINT
);
CREATE INDEX jobs_created ON jobs (created_us, id);
CREATE INDEX jobs_state ON jobs (state, created_us);
CREATE TABLE job_items (
    job_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    bucket TEXT,
    result TEXT,
    started_us BIGINT,
    finished_us BIGINT,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE idempotency_keys (
    principal TEXT COLLATE "C" NOT NULL,
    idem_key TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status BIGINT,
    headers TEXT,
    body BYTEA,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_us);
"#,
    ),
    (
        4,
        "webhook deliveries (dedup, first answer, ticket, write-back state)",
        r#"
CREATE TABLE webhook_deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status BIGINT,
    headers TEXT,
    body BLOB,
    created_us BIGINT NOT NULL,
    job_id TEXT,
    ticket TEXT,
    ticket_id TEXT,
    write_back TEXT NOT NULL DEFAULT 'none',
    write_back_detail TEXT,
    write_back_attempts BIGINT NOT NULL DEFAULT 0,
    write_back_updated_us BIGINT,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_us);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_write_back ON webhook_deliveries (write_back, created_us);
"#,
        r#"
CREATE TABLE webhook_deliveries (
    source TEXT COLLATE "C" NOT NULL,
    delivery_id TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status BIGINT,
    headers TEXT,
    body BYTEA,
    created_us BIGINT NOT NULL,
    job_id TEXT COLLATE "C",
    ticket TEXT,
    ticket_id TEXT,
    write_back TEXT NOT NULL DEFAULT 'none',
    write_back_detail TEXT,
    write_back_attempts BIGINT NOT NULL DEFAULT 0,
    write_back_updated_us BIGINT,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_us);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_write_back ON webhook_deliveries (write_back, created_us);
"#,
    ),
    (
        5,
        "webhook write-back claims (owner, until: a lease, or the time of the next retry)",
        r#"
ALTER TABLE webhook_deliveries ADD COLUMN write_back_owner TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN write_back_until_us BIGINT;
"#,
        r#"
ALTER TABLE webhook_deliveries ADD COLUMN write_back_owner TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN write_back_until_us BIGINT;
"#,
    ),
];

/// The heartbeat write of [`AuditStore::probe`] (and of the SQLite writer's probe): a real,
/// committed row change in a side table, not a no-op, so it fails when event writes would
/// (disk full, read-only, locked beyond the timeout, server refusing). The row carries
/// [`HEARTBEAT_PAD`] fresh bytes, so every heartbeat writes new pages much like an event batch.
pub(crate) const HEARTBEAT_SQL: &str = "INSERT INTO audit_heartbeat (chain, at_us, pad) \
     VALUES ($1, $2, $3) ON CONFLICT (chain) DO UPDATE SET at_us = excluded.at_us, pad = excluded.pad";

/// Bytes a heartbeat writes (a few pages: about what a small event batch needs).
pub(crate) const HEARTBEAT_PAD: usize = 16 * 1024;

/// Fresh, incompressible bytes for a heartbeat row (a different value every time, so no
/// page is left unchanged).
pub(crate) fn heartbeat_pad() -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let seed = uuid::Uuid::new_v4();
    let mut out = Vec::with_capacity(HEARTBEAT_PAD);
    let mut i = 0u64;
    while out.len() < HEARTBEAT_PAD {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(HEARTBEAT_PAD);
    out
}

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i64 = 5;

/// A bind value for dynamically built queries.
enum Arg {
    I(i64),
    S(String),
}

/// The SQL store. One instance writes one chain (`chain`); any instance reads all chains.
pub struct SqlStore {
    db: Db,
    chain: Option<String>,
    write_timeout: Duration,
    transactions: Arc<AtomicU64>,
    prune_chunk: i64,
    /// The SQLite file, when this is one (the dedicated writer opens its own connection).
    sqlite_path: Option<PathBuf>,
    /// The dedicated SQLite writer of the claimed chain, until `AuditLog` takes it.
    writer: Mutex<Option<SqliteWriter>>,
    /// Set by [`SqlStore::close`]; the dedicated writer refuses writes from then on.
    closed: Arc<AtomicBool>,
}

/// Most events one retention transaction deletes per chain (bounds how long it holds locks;
/// a run loops, one checkpoint per transaction, until everything old is gone).
pub const DEFAULT_PRUNE_CHUNK: i64 = 10_000;

/// Where the store lives, parsed from `AuditConfig::url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    SqliteMemory,
    Postgres(String),
}

impl Location {
    /// `postgres://…` / `postgresql://…` → PostgreSQL; `sqlite::memory:` → in-memory SQLite;
    /// `sqlite://PATH`, `sqlite:PATH` or a bare path → SQLite file, relative paths under
    /// `data_dir`; empty → `data_dir/audit.sqlite3`.
    pub fn parse(url: &str, data_dir: &Path) -> Location {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Location::Postgres(url.to_owned());
        }
        if url == "sqlite::memory:" || url == ":memory:" {
            return Location::SqliteMemory;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        // Drop URL options such as `?mode=rwc`: the store sets its own.
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() {
            return Location::Sqlite(data_dir.join("audit.sqlite3"));
        }
        let p = PathBuf::from(path);
        Location::Sqlite(if p.is_absolute() { p } else { data_dir.join(p) })
    }
}

impl SqlStore {
    /// Connects, applies pending migrations. `create`: create a missing SQLite file.
    pub async fn connect(
        loc: &Location,
        write_timeout: Duration,
        create: bool,
    ) -> Result<Self, AuditError> {
        let db = match loc {
            Location::Sqlite(_) | Location::SqliteMemory => {
                let mut opts = SqliteConnectOptions::new()
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    // Below the write timeout, so a locked store fails the batch in time.
                    .busy_timeout(write_timeout.mul_f64(0.75))
                    .foreign_keys(true);
                let mut max = 4;
                match loc {
                    Location::Sqlite(path) => {
                        if create && let Some(dir) = path.parent() {
                            std::fs::create_dir_all(dir).map_err(|e| {
                                AuditError::Unavailable(format!(
                                    "cannot create {}: {e}",
                                    dir.display()
                                ))
                            })?;
                        }
                        opts = opts.filename(path).create_if_missing(create);
                    }
                    _ => {
                        opts = opts.in_memory(true).shared_cache(true);
                        max = 1;
                    }
                }
                let pool = SqlitePoolOptions::new()
                    // A local file: no liveness ping (a worker round trip) per acquire.
                    .test_before_acquire(false)
                    .max_connections(max)
                    .min_connections(if max == 1 { 1 } else { 0 })
                    .acquire_timeout(write_timeout)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(opts)
                    .await
                    .map_err(db_err)?;
                Db::Sqlite(pool)
            }
            Location::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url).map_err(|e| {
                    AuditError::Unavailable(format!("bad PostgreSQL URL: {}", redact(&e)))
                })?;
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(write_timeout)
                    .connect_with(opts)
                    .await
                    .map_err(db_err)?;
                Db::Postgres(pool)
            }
        };
        let store = Self {
            db,
            chain: None,
            write_timeout,
            transactions: Arc::new(AtomicU64::new(0)),
            prune_chunk: DEFAULT_PRUNE_CHUNK,
            sqlite_path: match loc {
                Location::Sqlite(p) => Some(p.clone()),
                _ => None,
            },
            writer: Mutex::new(None),
            closed: Arc::new(AtomicBool::new(false)),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Makes this store the writer of `chain`, creating its head row if new.
    pub async fn claim_chain(&mut self, chain: &str) -> Result<(), AuditError> {
        let now = unix_micros(OffsetDateTime::now_utc());
        with_pool!(&self.db, p => {
            sqlx::query(
                "INSERT INTO audit_chains (chain, created_us, head_seq, head_hash, anchor_seq, \
                 anchor_hash) VALUES ($1, $2, 0, $3, 0, $3) ON CONFLICT (chain) DO NOTHING",
            )
            .bind(chain)
            .bind(now)
            .bind(GENESIS_HASH)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        if let Some(path) = &self.sqlite_path {
            // Opened here (not lazily on the writer thread) so a file the writer cannot open
            // fails the start. The schema exists: `connect` migrated it.
            let w = SqliteWriter::open(
                path,
                chain,
                self.write_timeout.mul_f64(0.75),
                self.closed.clone(),
                self.transactions.clone(),
            )?;
            if let Ok(mut slot) = self.writer.lock() {
                *slot = Some(w);
            }
        }
        self.chain = Some(chain.to_owned());
        Ok(())
    }

    /// Sets how many events one retention transaction deletes per chain (at least 1).
    pub fn set_prune_chunk(&mut self, n: i64) {
        self.prune_chunk = n.max(1);
    }

    /// Whether this is the PostgreSQL store.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Transactions committed by `append_batch` and `prune`.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Closes the pool and the dedicated writer's connection (tests: simulates a store that
    /// went away). Writes fail with `Unavailable` from then on.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.writer.lock() {
            slot.take();
        }
        with_pool!(&self.db, p => p.close().await)
    }

    /// The statement opening a write transaction.
    fn begin_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "BEGIN IMMEDIATE",
            Db::Postgres(_) => "BEGIN",
        }
    }

    fn head_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "SELECT head_seq, head_hash FROM audit_chains WHERE chain = $1",
            Db::Postgres(_) => {
                "SELECT head_seq, head_hash FROM audit_chains WHERE chain = $1 FOR UPDATE"
            }
        }
    }

    /// The statement opening an append transaction. PostgreSQL: `BEGIN` and a statement
    /// timeout bounding lock waits and statements, sent together (simple query protocol: one
    /// round trip).
    fn write_begin_sql(&self) -> String {
        match self.db {
            Db::Sqlite(_) => "BEGIN IMMEDIATE".to_owned(),
            Db::Postgres(_) => format!(
                "BEGIN; SET LOCAL statement_timeout = {}",
                self.write_timeout.as_millis().max(1)
            ),
        }
    }

    async fn migrate(&self) -> Result<(), AuditError> {
        let is_pg = self.is_postgres();
        let now = unix_micros(OffsetDateTime::now_utc());
        with_pool!(&self.db, p => {
            let mut tx = p.begin_with(self.begin_sql()).await.map_err(db_err)?;
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS audit_schema_version (version BIGINT PRIMARY KEY, \
                 description TEXT NOT NULL, applied_us BIGINT NOT NULL)",
            )
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let current: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM audit_schema_version")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
            let current = current.unwrap_or(0);
            if current > SCHEMA_VERSION {
                return Err(AuditError::Unavailable(format!(
                    "audit schema version {current} is newer than this binary knows ({SCHEMA_VERSION})"
                )));
            }
            for (version, description, sqlite_sql, pg_sql) in MIGRATIONS {
                if *version <= current {
                    continue;
                }
                let sql = if is_pg { *pg_sql } else { *sqlite_sql };
                // One statement at a time (the migration texts hold no `;` inside literals).
                for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(stmt)
                        .persistent(false)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                sqlx::query(
                    "INSERT INTO audit_schema_version (version, description, applied_us) \
                     VALUES ($1, $2, $3)",
                )
                .bind(*version)
                .bind(*description)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tracing::info!(target: "sessiongate::audit", { schema.version = *version }, "applied audit schema migration");
            }
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    /// The schema version recorded in the store.
    pub async fn schema_version(&self) -> Result<i64, AuditError> {
        let v: Option<i64> = with_pool!(&self.db, p => {
            sqlx::query_scalar("SELECT MAX(version) FROM audit_schema_version")
                .fetch_one(p)
                .await
                .map_err(db_err)?
        });
        Ok(v.unwrap_or(0))
    }

    async fn heads(&self) -> Result<Vec<ChainHead>, AuditError> {
        with_pool!(&self.db, p => {
            let rows = sqlx::query(HEADS_SQL).fetch_all(p).await.map_err(db_err)?;
            rows.iter().map(head_from_row).collect()
        })
    }

    async fn head(&self, chain: &str) -> Result<Option<ChainHead>, AuditError> {
        with_pool!(&self.db, p => {
            let row = sqlx::query(
                "SELECT chain, head_seq, head_hash, anchor_seq, anchor_hash FROM audit_chains \
                 WHERE chain = $1",
            )
            .bind(chain)
            .fetch_optional(p)
            .await
            .map_err(db_err)?;
            row.as_ref().map(head_from_row).transpose()
        })
    }

    /// Events of `chain` with `after < seq <= upto`, by seq, at most `limit`; with the ticket column.
    async fn chain_page(
        &self,
        chain: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(AuditEvent, Option<String>)>, AuditError> {
        let sql = format!(
            "SELECT {COLS} FROM audit_events WHERE chain = $1 AND seq > $2 AND seq <= $3 \
             ORDER BY seq LIMIT $4"
        );
        with_pool!(&self.db, p => {
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(chain)
                .bind(after)
                .bind(upto)
                .bind(limit)
                .fetch_all(p)
                .await
                .map_err(db_err)?;
            rows.iter().map(event_from_row).collect()
        })
    }

    /// Walks `chain` from its anchor to `upto` through `v`; returns the last event seen.
    async fn walk(
        &self,
        v: &mut Verifier,
        chain: &str,
        from: i64,
        upto: i64,
    ) -> Result<Option<AuditEvent>, AuditError> {
        let mut after = from;
        let mut last = None;
        loop {
            let page = self.chain_page(chain, after, upto, 1000).await?;
            let n = page.len();
            for (ev, ticket) in page {
                v.feed(&ev, ticket.as_deref());
                after = ev.seq;
                last = Some(ev);
            }
            if n < 1000 || v.is_broken() {
                return Ok(last);
            }
        }
    }

    async fn scalar_i64(&self, sql: &str, chain: &str, n: i64) -> Result<Option<i64>, AuditError> {
        with_pool!(&self.db, p => {
            sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
                .bind(chain)
                .bind(n)
                .fetch_one(p)
                .await
                .map_err(db_err)
        })
    }

    async fn checkpoint_anchors(&self) -> Result<HashSet<Anchor>, AuditError> {
        let params: Vec<String> = with_pool!(&self.db, p => {
            sqlx::query_scalar("SELECT params FROM audit_events WHERE kind = 'checkpoint'")
                .fetch_all(p)
                .await
                .map_err(db_err)?
        });
        Ok(params
            .iter()
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .flat_map(|v| chain::checkpoint_anchors(&v))
            .collect())
    }

    async fn verify_chain(
        &self,
        head: ChainHead,
        confirmed: &HashSet<Anchor>,
    ) -> Result<ChainStatus, AuditError> {
        let name = head.chain.clone();
        let (anchor_seq, head_seq) = (head.anchor_seq, head.head_seq);
        let mut v = Verifier::new(head);
        let before = self
            .scalar_i64(
                "SELECT MIN(seq) FROM audit_events WHERE chain = $1 AND seq <= $2",
                &name,
                anchor_seq,
            )
            .await?;
        if let Some(seq) = before {
            let mut st = v.finish(confirmed);
            st.broken = Some(ChainBreak {
                chain: name,
                seq,
                event_id: None,
                kind: chain::BreakKind::BeforeAnchor,
                detail: format!(
                    "event at seq {seq} at or before the prune anchor seq {anchor_seq} (inserted row)"
                ),
            });
            return Ok(st);
        }
        self.walk(&mut v, &name, anchor_seq, head_seq).await?;
        if !v.is_broken() {
            // Rows past the head read at the start: either appended since (the head moved too)
            // or inserted behind the writer's back.
            let beyond = self
                .scalar_i64(
                    "SELECT MAX(seq) FROM audit_events WHERE chain = $1 AND seq > $2",
                    &name,
                    head_seq,
                )
                .await?;
            if let Some(max_seq) = beyond {
                let now_head = self.head(&name).await?.map_or(0, |h| h.head_seq);
                if max_seq > now_head {
                    let page = self.chain_page(&name, now_head, i64::MAX, 1).await?;
                    let id = page.first().map(|(e, _)| e.id.clone());
                    let mut st = v.finish(confirmed);
                    if st.broken.is_none() {
                        st.broken = Some(ChainBreak {
                            chain: name,
                            seq: now_head + 1,
                            event_id: id,
                            kind: chain::BreakKind::BeyondHead,
                            detail: format!(
                                "event past the recorded chain head seq {now_head} (inserted row)"
                            ),
                        });
                    }
                    return Ok(st);
                }
            }
        }
        Ok(v.finish(confirmed))
    }

    async fn orphan_chains(&self) -> Result<Vec<ChainStatus>, AuditError> {
        let rows: Vec<(String, i64, String)> = with_pool!(&self.db, p => {
            let rows = sqlx::query(
                "SELECT e.chain, MIN(e.seq) AS seq, MIN(e.id) AS id FROM audit_events e \
                 WHERE NOT EXISTS (SELECT 1 FROM audit_chains c WHERE c.chain = e.chain) \
                 GROUP BY e.chain ORDER BY e.chain",
            )
            .fetch_all(p)
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|r| Ok((r.try_get("chain")?, r.try_get("seq")?, r.try_get("id")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(db_err)?
        });
        Ok(rows
            .into_iter()
            .map(|(chain, seq, id)| ChainStatus {
                chain: chain.clone(),
                events: 0,
                anchor_seq: 0,
                head_seq: 0,
                head_hash: String::new(),
                broken: Some(ChainBreak {
                    chain,
                    seq,
                    event_id: Some(id),
                    kind: chain::BreakKind::UnknownChain,
                    detail:
                        "events of a chain that has no head row (inserted rows or deleted head)"
                            .into(),
                }),
            })
            .collect())
    }
}

/// Strips anything URL-like from an error text (it could hold a password).
fn redact(e: &sqlx::Error) -> String {
    let s = e.to_string();
    if s.contains("://") {
        "invalid connection URL".into()
    } else {
        s
    }
}

fn head_from_row<R>(row: &R) -> Result<ChainHead, AuditError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ChainHead {
        chain: row.try_get("chain").map_err(db_err)?,
        head_seq: row.try_get("head_seq").map_err(db_err)?,
        head_hash: row.try_get("head_hash").map_err(db_err)?,
        anchor_seq: row.try_get("anchor_seq").map_err(db_err)?,
        anchor_hash: row.try_get("anchor_hash").map_err(db_err)?,
    })
}

/// Rebuilds an event from its row, plus the `ticket` column. Never fails on odd values a
/// tamperer may have written: they come out as something whose hash will not match.
fn event_from_row<R>(row: &R) -> Result<(AuditEvent, Option<String>), AuditError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
{
    let s = |c: &str| row.try_get::<String, _>(c).map_err(db_err);
    let os = |c: &str| row.try_get::<Option<String>, _>(c).map_err(db_err);
    let i = |c: &str| row.try_get::<i64, _>(c).map_err(db_err);
    let oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(db_err);
    let oi32 = |c: &str| row.try_get::<Option<i32>, _>(c).map_err(db_err);
    let kind = os("kind")?;
    let roles_text = s("actor_roles")?;
    let params_text = s("params")?;
    let ev = AuditEvent {
        id: s("id")?,
        chain: s("chain")?,
        seq: i("seq")?,
        time: from_unix_micros(i("ts_us")?),
        event: NewEvent {
            kind: kind.as_deref().and_then(EventKind::parse),
            request_id: s("request_id")?,
            actor: Actor {
                id: s("actor_id")?,
                display: os("actor_display")?,
                auth_method: os("actor_auth_method")?,
                roles: serde_json::from_str(&roles_text)
                    .unwrap_or_else(|_| vec![format!("<unparseable: {roles_text}>")]),
            },
            client_addr: os("client_addr")?,
            method: os("method")?,
            route: os("route")?,
            action: s("action")?,
            target: Target {
                pool: os("pool")?,
                host: os("host")?,
                session_id: oi("session_id")?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
                user: os("target_user")?,
            },
            params: serde_json::from_str(&params_text)
                .unwrap_or(serde_json::Value::String(params_text)),
            outcome: s("outcome")?,
            error_code: os("error_code")?,
            http_status: oi32("http_status")?.map(|v| u16::try_from(v).unwrap_or(u16::MAX)),
            upstream_status: oi32("upstream_status")?.map(|v| u16::try_from(v).unwrap_or(u16::MAX)),
            duration_ms: oi("duration_ms")?.map(|v| u64::try_from(v).unwrap_or(u64::MAX)),
        },
        prev_hash: s("prev_hash")?,
        hash: s("hash")?,
    };
    // An unknown kind spelling must not verify: keep it visible to the hash.
    if kind.is_some() && ev.event.kind.is_none() {
        let mut ev = ev;
        ev.hash = format!("<unknown kind {:?}>", kind);
        let t = os("ticket")?;
        return Ok((ev, t));
    }
    Ok((ev, os("ticket")?))
}

/// Hashes `events` onto the chain head `(seq, prev)`: the stored events, in order.
pub(crate) fn chain_events(
    chain: &str,
    mut seq: i64,
    mut prev: String,
    events: Vec<NewEvent>,
) -> Vec<AuditEvent> {
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        seq += 1;
        let ts_us = unix_micros(OffsetDateTime::now_utc());
        let mut stored = AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            chain: chain.to_owned(),
            seq,
            time: from_unix_micros(ts_us),
            event: ev.without_nul(),
            prev_hash: prev,
            hash: String::new(),
        };
        stored.hash = chain::event_hash(&stored);
        prev = stored.hash.clone();
        out.push(stored);
    }
    out
}

/// Binds the [`NCOLS`] column values of `$stored` to query `$q`, in [`COLS`] order.
macro_rules! bind_event {
    ($q:expr, $stored:expr) => {{
        let stored = $stored;
        let e = &stored.event;
        $q.bind(&stored.id)
            .bind(&stored.chain)
            .bind(stored.seq)
            .bind(unix_micros(stored.time))
            .bind(e.kind.map(|k| k.as_str()))
            .bind(&e.request_id)
            .bind(&e.actor.id)
            .bind(&e.actor.display)
            .bind(&e.actor.auth_method)
            .bind(serde_json::to_string(&e.actor.roles).unwrap_or_else(|_| "[]".into()))
            .bind(&e.client_addr)
            .bind(&e.method)
            .bind(&e.route)
            .bind(&e.action)
            .bind(&e.target.pool)
            .bind(&e.target.host)
            .bind(e.target.session_id.map(i64::from))
            .bind(&e.target.user)
            .bind(serde_json::to_string(&e.params).unwrap_or_else(|_| "null".into()))
            .bind(e.ticket())
            .bind(&e.outcome)
            .bind(&e.error_code)
            .bind(e.http_status.map(i32::from))
            .bind(e.upstream_status.map(i32::from))
            .bind(e.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)))
            .bind(&stored.prev_hash)
            .bind(&stored.hash)
    }};
}

/// Appends `events` to `$chain` inside transaction `$tx`: reads the chain head (locked), hashes
/// and inserts each event, moves the head. Evaluates to the stored events. `$qmark`: SQLite
/// (`?` placeholders in the INSERT).
macro_rules! append_in_tx {
    ($tx:ident, $head_sql:expr, $chain:expr, $events:expr, $qmark:expr) => {{
        let row = sqlx::query($head_sql)
            .bind($chain)
            .fetch_optional(&mut *$tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Err(AuditError::Unavailable(format!(
                "audit chain {} has no head row",
                $chain
            )));
        };
        let seq: i64 = row.try_get("head_seq").map_err(db_err)?;
        let prev: String = row.try_get("head_hash").map_err(db_err)?;
        let out = chain_events($chain, seq, prev, $events);
        // Multi-row INSERTs: one statement per INSERT_CHUNK events.
        for chunk in out.chunks(INSERT_CHUNK) {
            let sql = insert_sql(chunk.len(), $qmark);
            let mut q =
                sqlx::query(AssertSqlSafe(sql)).persistent(chunk.len() <= SQLITE_CACHED_ROWS);
            for stored in chunk {
                q = bind_event!(q, stored);
            }
            q.execute(&mut *$tx).await.map_err(db_err)?;
        }
        let (seq, prev) = out
            .last()
            .map_or((seq, String::new()), |l| (l.seq, l.hash.clone()));
        if !out.is_empty() {
            sqlx::query("UPDATE audit_chains SET head_seq = $1, head_hash = $2 WHERE chain = $3")
                .bind(seq)
                .bind(&prev)
                .bind($chain)
                .execute(&mut *$tx)
                .await
                .map_err(db_err)?;
        }
        out
    }};
}

/// A SQLite connection that may hold a transaction opened by raw SQL (sqlx does not track
/// it). Dropped before [`TxConn::release`] (an error, or the commit future cancelled by the
/// write timeout), the connection is closed instead of going back to the pool: closing rolls
/// the transaction back and frees the write lock.
struct TxConn(Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>);

impl TxConn {
    /// Back to the pool: only when no transaction is open.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.close_on_drop();
        }
    }
}

/// The SQLite fused commit on `conn` (at most [`INSERT_CHUNK`] events: one INSERT statement;
/// larger batches take the generic path): two worker round trips per batch (lock + head read;
/// rows + head move + commit), same transaction and same chain semantics as the generic path.
/// On error the transaction may still be open: the caller must not reuse the connection.
async fn sqlite_fused_append(
    conn: &mut sqlx::SqliteConnection,
    chain: &str,
    events: Vec<NewEvent>,
) -> Result<Vec<AuditEvent>, AuditError> {
    // `fetch_all`: both statements run to completion (no statement left active, holding a
    // read snapshot, after the commit). `chain` is the primary key: at most one row.
    let rows = sqlx::query(SQLITE_BEGIN_HEAD_SQL)
        .bind(chain)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let Some(row) = rows.first() else {
        return Err(AuditError::Unavailable(format!(
            "audit chain {chain} has no head row"
        )));
    };
    let seq: i64 = row.try_get("head_seq").map_err(db_err)?;
    let prev: String = row.try_get("head_hash").map_err(db_err)?;
    let out = chain_events(chain, seq, prev, events);
    let Some(last) = out.last() else {
        sqlx::query("ROLLBACK")
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        return Ok(out);
    };
    let sql = sqlite_fused_sql(out.len());
    let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(out.len() <= SQLITE_CACHED_ROWS);
    for stored in &out {
        q = bind_event!(q, stored);
    }
    q.bind(last.seq)
        .bind(&last.hash)
        .bind(chain)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(out)
}

/// Decodes a cursor `base64url("v1:<time_us>:<id>")`.
pub fn decode_cursor(c: &str) -> Result<(i64, String), AuditError> {
    let bad = || AuditError::BadQuery("invalid cursor".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ':');
    if parts.next() != Some("v1") {
        return Err(bad());
    }
    let ts: i64 = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    let id = parts.next().ok_or_else(bad)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(bad());
    }
    Ok((ts, id.to_owned()))
}

/// Encodes the position of `ev` as a cursor.
pub fn encode_cursor(ev: &AuditEvent) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "v1:{}:{}",
        unix_micros(ev.time),
        ev.id
    ))
}

fn check_limit(limit: Option<u32>) -> Result<i64, AuditError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(i64::from(n)),
        Some(n) => Err(AuditError::BadQuery(format!(
            "limit must be between 1 and 1000, got {n}"
        ))),
    }
}

impl SqlStore {
    /// One retention transaction: deletes at most `prune_chunk` old events per chain.
    async fn prune_once(
        &self,
        cutoff_us: i64,
        skip: &HashSet<String>,
    ) -> Result<PruneReport, AuditError> {
        let Some(own) = self.chain.as_deref() else {
            return Err(AuditError::Unavailable(
                "prune needs a writer (store opened read-only)".into(),
            ));
        };
        let mut report = PruneReport::default();
        // 1. Outside the write lock: pick each chain's prune point and verify the prefix that
        //    is about to be deleted (never destroy evidence of tampering).
        let mut plan: Vec<(ChainHead, Anchor)> = Vec::new();
        for head in self.heads().await? {
            if skip.contains(&head.chain) {
                continue;
            }
            let first_kept: Option<i64> = with_pool!(&self.db, p => {
                sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT MIN(seq) FROM audit_events WHERE chain = $1 AND seq > $2 \
                     AND ts_us >= $3",
                )
                .bind(&head.chain)
                .bind(head.anchor_seq)
                .bind(cutoff_us)
                .fetch_one(p)
                .await
                .map_err(db_err)?
            });
            let through = first_kept
                .map_or(head.head_seq, |s| s - 1)
                .min(head.anchor_seq + self.prune_chunk);
            if through <= head.anchor_seq {
                continue;
            }
            let mut v = Verifier::new(head.clone());
            let last = self
                .walk(&mut v, &head.chain, head.anchor_seq, through)
                .await?;
            let broken = match (&last, v.is_broken()) {
                (_, true) => v.finish(&HashSet::new()).broken,
                (Some(l), false) if l.seq == through => None,
                (l, false) => Some(ChainBreak {
                    chain: head.chain.clone(),
                    seq: l.as_ref().map_or(head.anchor_seq + 1, |e| e.seq + 1),
                    event_id: None,
                    kind: chain::BreakKind::SeqGap,
                    detail: "events missing before the prune point".into(),
                }),
            };
            if let Some(b) = broken {
                tracing::error!(target: "sessiongate::audit", { audit.chain = %head.chain, audit.break = %b }, "refusing to prune a broken chain");
                report.refused.push(b);
                continue;
            }
            if let Some(l) = last {
                let anchor = Anchor {
                    chain: head.chain.clone(),
                    seq: l.seq,
                    hash: l.hash,
                };
                plan.push((head, anchor));
            }
        }
        if plan.is_empty() {
            return Ok(report);
        }
        // 2. Under the write lock: delete, move anchors, write one checkpoint listing every
        //    anchor, commit — all or nothing.
        let is_pg = self.is_postgres();
        let head_sql = self.head_sql();
        let checkpoint = with_pool!(&self.db, p => {
            let mut tx = p.begin_with(self.begin_sql()).await.map_err(db_err)?;
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            let mut deleted = 0u64;
            for (head, anchor) in &plan {
                // Another retention run may have moved this anchor meanwhile: skip then.
                let res = sqlx::query(
                    "UPDATE audit_chains SET anchor_seq = $1, anchor_hash = $2 \
                     WHERE chain = $3 AND anchor_seq = $4",
                )
                .bind(anchor.seq)
                .bind(&anchor.hash)
                .bind(&anchor.chain)
                .bind(head.anchor_seq)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if res.rows_affected() != 1 {
                    continue;
                }
                let res = sqlx::query("DELETE FROM audit_events WHERE chain = $1 AND seq <= $2")
                    .bind(&anchor.chain)
                    .bind(anchor.seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                deleted += res.rows_affected();
            }
            if deleted == 0 {
                // Nothing done (anchors moved by a concurrent run): roll back.
                tx.rollback().await.map_err(db_err)?;
                return Ok(report);
            }
            let rows = sqlx::query(HEADS_SQL).fetch_all(&mut *tx).await.map_err(db_err)?;
            let anchors: Vec<Anchor> = rows
                .iter()
                .map(head_from_row)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|h| h.anchor_seq > 0)
                .map(|h| Anchor { chain: h.chain, seq: h.anchor_seq, hash: h.anchor_hash })
                .collect();
            let ev = NewEvent {
                kind: Some(EventKind::Checkpoint),
                request_id: format!("retention-{}", uuid::Uuid::now_v7()),
                actor: Actor {
                    id: "system:retention".into(),
                    ..Default::default()
                },
                action: "checkpoint".into(),
                params: serde_json::json!({
                    "cutoff_us": cutoff_us,
                    "deleted": deleted,
                    "anchors": anchors,
                }),
                outcome: "ok".into(),
                ..Default::default()
            };
            let mut out = append_in_tx!(tx, head_sql, own, vec![ev], !is_pg);
            tx.commit().await.map_err(db_err)?;
            report.deleted = deleted;
            report.anchors = anchors;
            out.pop()
        });
        self.transactions.fetch_add(1, Ordering::Relaxed);
        report.checkpoint = checkpoint;
        Ok(report)
    }
}

impl SqlStore {
    /// SQLite `append_batch`: the fused commit on a pooled connection (no liveness ping).
    /// A batch that fails leaves nothing behind (rolled back) and the connection is closed.
    async fn append_sqlite(
        &self,
        pool: &SqlitePool,
        chain: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let mut conn = TxConn(Some(pool.acquire().await.map_err(db_err)?));
        let Some(c) = conn.0.as_mut() else {
            return Err(AuditError::Unavailable("no connection".into()));
        };
        match sqlite_fused_append(c, chain, events).await {
            Ok(out) => {
                conn.release();
                self.transactions.fetch_add(1, Ordering::Relaxed);
                Ok(out)
            }
            Err(e) => {
                // Best effort; the connection is closed anyway (dropping `conn`), which
                // rolls back whatever is still open.
                let _ = sqlx::query("ROLLBACK").execute(&mut **c).await;
                Err(e)
            }
        }
    }

    async fn select_events(
        &self,
        sql: &str,
        args: Vec<Arg>,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        with_pool!(&self.db, p => {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for a in args {
                q = match a {
                    Arg::I(v) => q.bind(v),
                    Arg::S(v) => q.bind(v),
                };
            }
            let rows = q.fetch_all(p).await.map_err(db_err)?;
            rows.iter().map(|r| event_from_row(r).map(|(e, _)| e)).collect()
        })
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    fn database(&self) -> Option<Db> {
        Some(self.db.clone())
    }

    async fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<AuditEvent>, AuditError> {
        let Some(chain) = self.chain.as_deref() else {
            return Err(AuditError::Unavailable(
                "store opened read-only (no chain)".into(),
            ));
        };
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if let Db::Sqlite(p) = &self.db
            && events.len() <= INSERT_CHUNK
        {
            return self.append_sqlite(p, chain, events).await;
        }
        let head_sql = self.head_sql();
        let qmark = !self.is_postgres();
        let out = with_pool!(&self.db, p => {
            let mut tx = p.begin_with(AssertSqlSafe(self.write_begin_sql())).await.map_err(db_err)?;
            let out = append_in_tx!(tx, head_sql, chain, events, qmark);
            tx.commit().await.map_err(db_err)?;
            out
        });
        self.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuditError> {
        let limit = check_limit(q.limit)?;
        let mut wh: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut push = |cond: &str, a: Arg, wh: &mut Vec<String>| {
            args.push(a);
            wh.push(cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(t) = q.since {
            push("ts_us >= ?", Arg::I(unix_micros(t)), &mut wh);
        }
        if let Some(t) = q.until {
            push("ts_us < ?", Arg::I(unix_micros(t)), &mut wh);
        }
        for (col, v) in [
            ("actor_id", &q.actor),
            ("pool", &q.pool),
            ("host", &q.host),
            ("target_user", &q.user),
            ("action", &q.action),
            ("outcome", &q.outcome),
            ("ticket", &q.ticket),
            ("request_id", &q.request_id),
        ] {
            if let Some(v) = v {
                push(&format!("{col} = ?"), Arg::S(v.clone()), &mut wh);
            }
        }
        if let Some(c) = &q.cursor {
            let (ts, id) = decode_cursor(c)?;
            args.push(Arg::I(ts));
            let t = args.len();
            args.push(Arg::S(id));
            let i = args.len();
            wh.push(format!("(ts_us < ${t} OR (ts_us = ${t} AND id < ${i}))"));
        }
        let where_sql = if wh.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", wh.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLS} FROM audit_events {where_sql} ORDER BY ts_us DESC, id DESC LIMIT {}",
            limit + 1
        );
        let mut events = self.select_events(&sql, args).await?;
        let more = events.len() as i64 > limit;
        events.truncate(usize::try_from(limit).unwrap_or(100));
        let next_cursor = if more {
            events.last().map(encode_cursor)
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }

    fn chain(&self) -> Option<String> {
        self.chain.clone()
    }

    fn take_writer(&self) -> Option<Box<dyn BlockingWriter>> {
        let w = self.writer.lock().ok()?.take()?;
        Some(Box::new(w))
    }

    async fn probe(&self) -> Result<(), AuditError> {
        let Some(chain) = self.chain.as_deref() else {
            return Ok(());
        };
        with_pool!(&self.db, p => {
            let mut tx = p.begin_with(AssertSqlSafe(self.write_begin_sql())).await.map_err(db_err)?;
            sqlx::query(HEARTBEAT_SQL)
                .bind(chain)
                .bind(unix_micros(OffsetDateTime::now_utc()))
                .bind(heartbeat_pad())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    async fn verify(&self) -> Result<VerifyReport, AuditError> {
        let confirmed = self.checkpoint_anchors().await?;
        let mut chains = Vec::new();
        for head in self.heads().await? {
            chains.push(self.verify_chain(head, &confirmed).await?);
        }
        chains.extend(self.orphan_chains().await?);
        Ok(VerifyReport::from_chains(chains))
    }

    async fn prune(&self, older_than: OffsetDateTime) -> Result<PruneReport, AuditError> {
        if self.chain.is_none() {
            return Err(AuditError::Unavailable(
                "prune needs a writer (store opened read-only)".into(),
            ));
        }
        let cutoff_us = unix_micros(older_than.min(OffsetDateTime::now_utc()));
        let mut total = PruneReport::default();
        loop {
            let skip: HashSet<String> = total.refused.iter().map(|b| b.chain.clone()).collect();
            let r = self.prune_once(cutoff_us, &skip).await?;
            total.refused.extend(r.refused);
            total.deleted += r.deleted;
            if let Some(cp) = r.checkpoint {
                total.anchors = r.anchors;
                total.checkpoints.push(cp.clone());
                total.checkpoint = Some(cp);
            }
            if r.deleted == 0 {
                return Ok(total);
            }
        }
    }

    async fn read_oldest_first(
        &self,
        since: Option<OffsetDateTime>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<AuditPage, AuditError> {
        let limit = i64::from(limit.clamp(1, 10_000));
        let mut wh = Vec::new();
        let mut args = Vec::new();
        if let Some(t) = since {
            args.push(Arg::I(unix_micros(t)));
            wh.push(format!("ts_us >= ${}", args.len()));
        }
        if let Some(c) = cursor {
            let (ts, id) = decode_cursor(c)?;
            args.push(Arg::I(ts));
            let t = args.len();
            args.push(Arg::S(id));
            let i = args.len();
            wh.push(format!("(ts_us > ${t} OR (ts_us = ${t} AND id > ${i}))"));
        }
        let where_sql = if wh.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", wh.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLS} FROM audit_events {where_sql} ORDER BY ts_us, id LIMIT {}",
            limit + 1
        );
        let mut events = self.select_events(&sql, args).await?;
        let more = events.len() as i64 > limit;
        events.truncate(usize::try_from(limit).unwrap_or(1));
        let next_cursor = if more {
            events.last().map(encode_cursor)
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let d = Path::new("/data");
        assert_eq!(
            Location::parse("", d),
            Location::Sqlite("/data/audit.sqlite3".into())
        );
        assert_eq!(
            Location::parse("sqlite://a/b.db", d),
            Location::Sqlite("/data/a/b.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:///x/y.db?mode=rwc", d),
            Location::Sqlite("/x/y.db".into())
        );
        assert_eq!(
            Location::parse("/abs.db", d),
            Location::Sqlite("/abs.db".into())
        );
        assert!(matches!(
            Location::parse("postgres://u@h/db", d),
            Location::Postgres(_)
        ));
    }

    #[test]
    fn cursor_roundtrip_and_rejects_garbage() {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("v1:123:0190a0b0-0000-7000-8000-000000000001");
        assert_eq!(
            decode_cursor(&raw).unwrap(),
            (123, "0190a0b0-0000-7000-8000-000000000001".to_owned())
        );
        for bad in ["", "!!!", "djE6eA", "djI6MTI6YWI"] {
            assert!(matches!(decode_cursor(bad), Err(AuditError::BadQuery(_))));
        }
        let inj = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v1:1:' OR 1=1 --");
        assert!(decode_cursor(&inj).is_err());
    }

    #[tokio::test]
    async fn in_memory_store_records_and_verifies() {
        let mut store = SqlStore::connect(&Location::SqliteMemory, Duration::from_secs(2), true)
            .await
            .unwrap();
        store.claim_chain("mem").await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        let log = crate::audit::AuditLog::with_options(
            std::sync::Arc::new(store),
            8,
            Duration::from_secs(2),
        );
        for i in 0..20 {
            let ev = NewEvent {
                request_id: format!("r{i}"),
                action: "list_sessions".into(),
                outcome: "ok".into(),
                params: serde_json::json!({}),
                ..Default::default()
            };
            log.record(ev).await.unwrap();
        }
        let r = log.verify().await.unwrap();
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.events_checked, 20);
    }

    /// A batch failing inside the fused commit (here: a foreign row already holds the next
    /// seq) leaves the head where it was and nothing half-written; the next batch continues
    /// the chain and it verifies.
    #[tokio::test]
    async fn failed_fused_batch_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::Sqlite(dir.path().join("a.sqlite3"));
        let mut store = SqlStore::connect(&loc, Duration::from_secs(2), true)
            .await
            .unwrap();
        store.claim_chain("c").await.unwrap();
        let ev = |i: usize| NewEvent {
            request_id: format!("r{i}"),
            action: "list_sessions".into(),
            outcome: "ok".into(),
            params: serde_json::json!({ "i": i }),
            ..Default::default()
        };
        let first = store.append_batch(vec![ev(0), ev(1)]).await.unwrap();
        assert_eq!(first[1].seq, 2);
        let Db::Sqlite(p) = &store.db else { panic!() };
        // Squat seq 3 (as a broken writer would), outside the chain head.
        sqlx::query(
            "INSERT INTO audit_events (id, chain, seq, ts_us, request_id, actor_id, actor_roles, \
             action, params, outcome, prev_hash, hash) \
             VALUES ('x', 'c', 3, 0, 'x', 'x', '[]', 'x', '{}', 'x', 'x', 'x')",
        )
        .execute(p)
        .await
        .unwrap();
        for _ in 0..3 {
            assert!(store.append_batch(vec![ev(2), ev(3)]).await.is_err());
        }
        let head = store.head("c").await.unwrap().unwrap();
        assert_eq!(
            (head.head_seq, head.head_hash.as_str()),
            (2, first[1].hash.as_str())
        );
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
            .fetch_one(p)
            .await
            .unwrap();
        assert_eq!(n, 3);
        sqlx::query("DELETE FROM audit_events WHERE id = 'x'")
            .execute(p)
            .await
            .unwrap();
        let next = store.append_batch(vec![ev(4)]).await.unwrap();
        assert_eq!(
            (next[0].seq, next[0].prev_hash.as_str()),
            (3, first[1].hash.as_str())
        );
        // A batch above one INSERT statement takes the generic path.
        let big: Vec<NewEvent> = (0..INSERT_CHUNK + 5).map(ev).collect();
        let out = store.append_batch(big).await.unwrap();
        assert_eq!(out.last().unwrap().seq, 3 + INSERT_CHUNK as i64 + 5);
        let r = store.verify().await.unwrap();
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.events_checked, 3 + INSERT_CHUNK as u64 + 5);
    }

    /// Commits cancelled at arbitrary points (the committer's write timeout drops the future)
    /// never leave a half-open transaction in a pooled connection: later batches commit and the
    /// chain stays gapless and verifiable.
    #[tokio::test]
    async fn cancelled_fused_commits_leave_no_open_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::Sqlite(dir.path().join("a.sqlite3"));
        let mut store = SqlStore::connect(&loc, Duration::from_secs(2), true)
            .await
            .unwrap();
        store.claim_chain("c").await.unwrap();
        let ev = |i: u64| NewEvent {
            request_id: format!("r{i}"),
            action: "list_sessions".into(),
            outcome: "ok".into(),
            params: serde_json::json!({ "i": i }),
            ..Default::default()
        };
        let mut committed = 0i64;
        for i in 0..60u64 {
            let t = Duration::from_micros(20 + i * 25);
            if let Ok(r) = tokio::time::timeout(t, store.append_batch(vec![ev(i), ev(i)])).await {
                r.unwrap();
            }
            let out = store.append_batch(vec![ev(1000 + i)]).await.unwrap();
            committed = out[0].seq;
        }
        let r = store.verify().await.unwrap();
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.events_checked, u64::try_from(committed).unwrap());
    }

    #[test]
    fn insert_sql_shape() {
        assert_eq!(COLS.split(',').count(), NCOLS);
        let one = insert_sql(1, false);
        assert!(one.ends_with("$26, $27)"));
        let q = insert_sql(2, true);
        assert_eq!(q.matches('?').count(), 2 * NCOLS);
        assert!(!q.contains('$'));
        let f = sqlite_fused_sql(3);
        assert_eq!(f.matches('?').count(), 3 * NCOLS + 3);
        assert!(f.ends_with("WHERE chain = ?; COMMIT"));
        let two = insert_sql(2, false);
        assert!(two.ends_with("), ($28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51, $52, $53, $54)"));
    }

    #[test]
    fn limits() {
        assert_eq!(check_limit(None).unwrap(), 100);
        assert_eq!(check_limit(Some(1000)).unwrap(), 1000);
        assert!(check_limit(Some(0)).is_err());
        assert!(check_limit(Some(1001)).is_err());
    }
}
