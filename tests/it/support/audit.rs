//! Shared audit test suite, run against SQLite (`tests/it/audit_sqlite.rs`) and PostgreSQL
//! (`tests/it/audit_postgres.rs`). Each test gets a fresh store: a temp dir for SQLite, a fresh
//! database for PostgreSQL (dropped afterwards, even when the test panics).

use super::pg::PgDb;
use sessiongate::audit::{
    self, AuditConfig, AuditError, AuditEvent, AuditLog, AuditQuery, BreakKind, EventKind,
    NewEvent, Target, VerifyReport, chain,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use time::OffsetDateTime;

/// Raw access to the store behind the log's back (the tamperer).
pub enum Raw {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// A held write lock on the store (simulates a store that cannot take writes).
pub enum Lock {
    Sqlite(PoolConnection<sqlx::Sqlite>),
    Pg(PoolConnection<sqlx::Postgres>),
}

impl Lock {
    pub async fn release(self) {
        match self {
            Lock::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
            }
            Lock::Pg(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
            }
        }
    }
}

impl Raw {
    pub async fn exec(&self, sql: &str) -> u64 {
        match self {
            Raw::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(p)
                .await
                .unwrap()
                .rows_affected(),
            Raw::Pg(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(p)
                .await
                .unwrap()
                .rows_affected(),
        }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .unwrap(),
            Raw::Pg(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }

    /// Takes the write lock and keeps it until `release`.
    pub async fn lock_writes(&self) -> Lock {
        match self {
            Raw::Sqlite(p) => {
                let mut c = p.acquire().await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut *c)
                    .await
                    .unwrap();
                Lock::Sqlite(c)
            }
            Raw::Pg(p) => {
                let mut c = p.acquire().await.unwrap();
                sqlx::query("BEGIN").execute(&mut *c).await.unwrap();
                sqlx::query("LOCK TABLE audit_chains IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *c)
                    .await
                    .unwrap();
                Lock::Pg(c)
            }
        }
    }
}

pub struct Env {
    pub cfg: AuditConfig,
    pub dir: TempDir,
    pub raw: Raw,
    pub is_pg: bool,
    _db: Option<PgDb>,
}

impl Env {
    pub async fn sqlite() -> Option<Env> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            replica: Some("gw-test".into()),
            ..Default::default()
        };
        // Create the store (schema) so the raw pool can attach to the file.
        drop(audit::open(&cfg, dir.path()).await.unwrap());
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("audit.sqlite3"))
            .busy_timeout(Duration::from_secs(10));
        let raw = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .unwrap();
        Some(Env {
            cfg,
            dir,
            raw: Raw::Sqlite(raw),
            is_pg: false,
            _db: None,
        })
    }

    /// A fresh database on the test server; unreachable fails the test (`None`, a loud skip,
    /// only with `SESSIONGATE_SKIP_MISSING=1`, see `super::prereq`).
    pub async fn postgres() -> Option<Env> {
        let db = PgDb::create("audit_t").await?;
        let url = db.url.clone();
        let cfg = AuditConfig {
            url: url.clone(),
            replica: Some("gw-test".into()),
            ..Default::default()
        };
        drop(
            audit::open(&cfg, std::path::Path::new("/nonexistent"))
                .await
                .unwrap(),
        );
        let raw = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        Some(Env {
            cfg,
            dir: tempfile::tempdir().unwrap(),
            raw: Raw::Pg(raw),
            is_pg: true,
            _db: Some(db),
        })
    }

    pub async fn open(&self) -> AuditLog {
        audit::open(&self.cfg, self.dir.path()).await.unwrap()
    }

    pub async fn open_with(&self, f: impl FnOnce(&mut AuditConfig)) -> AuditLog {
        let mut cfg = self.cfg.clone();
        f(&mut cfg);
        audit::open(&cfg, self.dir.path()).await.unwrap()
    }

    pub async fn close(self) {
        match &self.raw {
            Raw::Sqlite(p) => p.close().await,
            Raw::Pg(p) => p.close().await,
        }
    }
}

pub fn ev(i: usize) -> NewEvent {
    NewEvent {
        kind: Some(match i % 3 {
            0 => EventKind::Request,
            1 => EventKind::Intent,
            _ => EventKind::Outcome,
        }),
        request_id: format!("req-{i}"),
        actor: audit::Actor {
            id: format!("apikey:a{}", i % 3),
            display: Some(format!("Actor {}", i % 3)),
            auth_method: Some("api_key".into()),
            roles: vec!["operator".into()],
        },
        client_addr: Some("127.0.0.1".into()),
        method: Some("POST".into()),
        route: Some("/hostpools/{pool}/sessions/{id}/logoff".into()),
        action: if i.is_multiple_of(2) {
            "logoff"
        } else {
            "disconnect"
        }
        .into(),
        target: Target {
            pool: Some(format!("p{}", i % 5)),
            host: Some(format!("h{}.example.test", i % 4)),
            session_id: Some(u32::try_from(i).unwrap()),
            user: Some(format!("user{}@example.test", i % 7)),
        },
        params: if i.is_multiple_of(10) {
            serde_json::json!({"force": false, "reason": "maintenance ünïcode", "ticket": format!("CHG{}", i)})
        } else {
            serde_json::json!({"force": true, "dry_run": false})
        },
        outcome: if i.is_multiple_of(4) {
            "failed"
        } else {
            "done"
        }
        .into(),
        error_code: i.is_multiple_of(4).then(|| "upstream_error".into()),
        http_status: Some(if i.is_multiple_of(4) { 502 } else { 200 }),
        upstream_status: Some(200),
        duration_ms: Some(u64::try_from(i).unwrap() * 3),
    }
}

pub async fn record_n(log: &AuditLog, n: usize) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(log.record(ev(i)).await.unwrap());
    }
    out
}

pub fn first_break(r: &VerifyReport) -> &audit::ChainBreak {
    assert!(!r.ok, "expected a broken chain, got {r:#?}");
    r.first_break.as_ref().unwrap()
}

async fn cli_verify_code(env: &Env) -> i32 {
    sessiongate::run::audit_verify(&env.cfg, env.dir.path()).await
}

// ---------------------------------------------------------------- the suite

pub async fn intact_log_verifies(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 20).await;
    assert_eq!(stored.first().unwrap().prev_hash, chain::GENESIS_HASH);
    for w in stored.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.events_checked, 20);
    assert_eq!(cli_verify_code(&env).await, 0);
    // Everything readable back exactly as stored.
    let all = log.all_events().await.unwrap();
    assert_eq!(all, stored);
    // Export: one JSON object per line, oldest first.
    let mut buf = Vec::new();
    let n = log.export_jsonl(None, &mut buf).await.unwrap();
    assert_eq!(n, 20);
    let lines: Vec<AuditEvent> = String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, stored);
    let mut buf = Vec::new();
    let n = log
        .export_jsonl(Some(stored[15].time), &mut buf)
        .await
        .unwrap();
    assert!((5..=6).contains(&n), "since export returned {n}");
    // A restart continues the same chain.
    drop(log);
    let log = env.open().await;
    let next = log.record(ev(99)).await.unwrap();
    assert_eq!(next.seq, 21);
    assert_eq!(next.prev_hash, stored[19].hash);
    assert!(log.verify().await.unwrap().ok);
    assert_eq!(
        env.raw
            .scalar("SELECT MAX(version) FROM audit_schema_version")
            .await,
        sessiongate::audit::sql::SCHEMA_VERSION
    );
    env.close().await;
}

pub async fn detects_edited_row(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 12).await;
    // Only the indexed ticket column changed: caught as a column mismatch.
    env.raw
        .exec("UPDATE audit_events SET ticket = 'CHG-FORGED' WHERE seq = 11")
        .await;
    let r = log.verify().await.unwrap();
    let b = first_break(&r);
    assert_eq!((b.seq, b.kind), (11, BreakKind::ColumnMismatch), "{b}");
    // A hashed field changed.
    env.raw
        .exec("UPDATE audit_events SET outcome = 'done' WHERE seq = 5")
        .await;
    let r = log.verify().await.unwrap();
    let b = first_break(&r);
    assert_eq!(b.seq, 5);
    assert_eq!(b.kind, BreakKind::HashMismatch);
    assert_eq!(b.event_id.as_deref(), Some(stored[4].id.as_str()));
    assert_eq!(b.chain, "gw-test");
    assert_eq!(cli_verify_code(&env).await, 1);
    // Editing params JSON (e.g. the reason) is caught too.
    let env2 = env;
    env2.raw
        .exec("UPDATE audit_events SET outcome = 'failed' WHERE seq = 5")
        .await;
    env2.raw
        .exec("UPDATE audit_events SET ticket = 'CHG10' WHERE seq = 11")
        .await;
    assert!(log.verify().await.unwrap().ok, "restored rows verify again");
    env2.raw
        .exec("UPDATE audit_events SET params = '{\"force\":true,\"dry_run\":true}' WHERE seq = 3")
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (3, BreakKind::HashMismatch));
    env2.close().await;
}

pub async fn detects_deleted_row(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 10).await;
    env.raw
        .exec("DELETE FROM audit_events WHERE seq = 10")
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (10, BreakKind::MissingTail), "{b}");
    env.raw.exec("DELETE FROM audit_events WHERE seq = 5").await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (6, BreakKind::SeqGap), "{b}");
    assert_eq!(b.event_id.as_deref(), Some(stored[5].id.as_str()));
    // Deleting and renumbering (seq 6.. moved down) is still caught.
    env.raw
        .exec("UPDATE audit_events SET seq = -seq WHERE seq > 5")
        .await;
    env.raw
        .exec("UPDATE audit_events SET seq = -seq - 1 WHERE seq < 0")
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (5, BreakKind::HashMismatch), "{b}");
    env.close().await;
}

const COPY_COLS: &str = "chain, ts_us, kind, request_id, actor_id, actor_display, \
    actor_auth_method, actor_roles, client_addr, method, route, action, pool, host, session_id, \
    target_user, params, ticket, outcome, error_code, http_status, upstream_status, duration_ms";

async fn insert_copy(env: &Env, of_seq: i64, id: &str, seq: i64, prev: &str, hash: &str) {
    env.raw
        .exec(&format!(
            "INSERT INTO audit_events (id, seq, prev_hash, hash, {COPY_COLS}) \
             SELECT '{id}', {seq}, '{prev}', '{hash}', {COPY_COLS} FROM audit_events WHERE seq = {of_seq}"
        ))
        .await;
}

pub async fn detects_inserted_row(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 10).await;
    let last = stored.last().unwrap().clone();
    // A forged row with a properly computed hash appended after the head.
    let mut forged = last.clone();
    forged.id = uuid::Uuid::now_v7().to_string();
    forged.seq = 11;
    forged.prev_hash = last.hash.clone();
    forged.hash = chain::event_hash(&forged);
    insert_copy(&env, 10, &forged.id, 11, &forged.prev_hash, &forged.hash).await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (11, BreakKind::BeyondHead), "{b}");
    assert_eq!(b.event_id.as_deref(), Some(forged.id.as_str()));
    env.raw
        .exec(&format!(
            "DELETE FROM audit_events WHERE id = '{}'",
            forged.id
        ))
        .await;
    assert!(log.verify().await.unwrap().ok);
    // A forged row in a gap-free position: take seq 4 out, put a forgery in its place.
    env.raw.exec("DELETE FROM audit_events WHERE seq = 4").await;
    let fid = uuid::Uuid::now_v7().to_string();
    insert_copy(&env, 3, &fid, 4, &stored[2].hash, &"ab".repeat(32)).await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (4, BreakKind::HashMismatch), "{b}");
    assert_eq!(b.event_id.as_deref(), Some(fid.as_str()));
    // Rows of a chain that has no head row.
    env.raw
        .exec(&format!("DELETE FROM audit_events WHERE id = '{fid}'"))
        .await;
    let oid = uuid::Uuid::now_v7().to_string();
    env.raw
        .exec(&format!(
            "INSERT INTO audit_events (id, seq, prev_hash, hash, {COPY_COLS}) \
             SELECT '{oid}', 1, prev_hash, hash, 'ghost', ts_us, kind, request_id, actor_id, actor_display, \
             actor_auth_method, actor_roles, client_addr, method, route, action, pool, host, session_id, \
             target_user, params, ticket, outcome, error_code, http_status, upstream_status, duration_ms \
             FROM audit_events WHERE seq = 1"
        ))
        .await;
    let r = log.verify().await.unwrap();
    let ghost = r.chains.iter().find(|c| c.chain == "ghost").unwrap();
    assert_eq!(ghost.broken.as_ref().unwrap().kind, BreakKind::UnknownChain);
    env.close().await;
}

pub async fn detects_swapped_rows(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 10).await;
    env.raw
        .exec("UPDATE audit_events SET seq = -1 WHERE seq = 5")
        .await;
    env.raw
        .exec("UPDATE audit_events SET seq = 5 WHERE seq = 6")
        .await;
    env.raw
        .exec("UPDATE audit_events SET seq = 6 WHERE seq = -1")
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!((b.seq, b.kind), (5, BreakKind::HashMismatch), "{b}");
    assert_eq!(b.event_id.as_deref(), Some(stored[5].id.as_str()));
    env.close().await;
}

pub async fn group_commit(env: Env) {
    let log = env.open().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = log.clone();
        set.spawn(async move { log.record(ev(i)).await });
    }
    let mut seqs = HashSet::new();
    while let Some(r) = set.join_next().await {
        let e = r.unwrap().unwrap();
        assert!(seqs.insert(e.seq));
    }
    assert_eq!(seqs.len(), 200);
    assert_eq!(seqs.iter().copied().max(), Some(200));
    let st = log.stats();
    eprintln!("group commit: 200 records in {} commits", st.commits);
    assert_eq!(st.events, 200);
    assert!(st.commits < 200, "no batching: {st:?}");
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.events_checked, 200);
    env.close().await;
}

pub async fn store_down_and_recovery(env: Env) {
    let log = env
        .open_with(|c| {
            c.write_timeout_ms = 800;
        })
        .await;
    record_n(&log, 3).await;
    assert!(log.healthy());
    let lock = env.raw.lock_writes().await;
    let t0 = Instant::now();
    let err = log.record(ev(3)).await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, AuditError::Unavailable(_)), "{err:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(!log.healthy());
    // Still down: still quick failures, still unhealthy.
    let t0 = Instant::now();
    assert!(log.record(ev(4)).await.is_err());
    assert!(t0.elapsed() < Duration::from_millis(2500));
    assert!(!log.healthy());
    lock.release().await;
    // Recovery through the committer's probe, without any record().
    let t0 = Instant::now();
    while !log.healthy() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = log.record(ev(5)).await.unwrap();
    assert!(log.healthy());
    // No gap, no fork: the chain verifies and the new event follows the last one committed.
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    let all = log.all_events().await.unwrap();
    assert_eq!(all.last().unwrap().id, e.id);
    assert_eq!(e.seq, i64::try_from(all.len()).unwrap());
    // Down again, recovery through a successful record().
    let lock = env.raw.lock_writes().await;
    assert!(log.record(ev(6)).await.is_err());
    assert!(!log.healthy());
    lock.release().await;
    let mut ok = false;
    for _ in 0..20 {
        if log.record(ev(7)).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok && log.healthy());
    assert!(log.verify().await.unwrap().ok);
    assert!(log.stats().failed_batches >= 1);
    env.close().await;
}

pub async fn closed_pool_is_unavailable(env: Env) {
    let loc = audit::Location::parse(&env.cfg.url, env.dir.path());
    let mut store = audit::SqlStore::connect(&loc, Duration::from_millis(800), true)
        .await
        .unwrap();
    store.claim_chain("gw-test").await.unwrap();
    let store = std::sync::Arc::new(store);
    let log = AuditLog::with_options(store.clone(), 64, Duration::from_millis(800));
    record_n(&log, 2).await;
    store.close().await;
    let t0 = Instant::now();
    let err = log.record(ev(2)).await.unwrap_err();
    assert!(matches!(err, AuditError::Unavailable(_)), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    assert!(!log.healthy());
    // A new instance over the same store carries on the same chain.
    let log2 = env.open().await;
    let e = log2.record(ev(3)).await.unwrap();
    assert_eq!(e.seq, 3);
    assert!(log2.verify().await.unwrap().ok);
    env.close().await;
}

pub async fn retention(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 30).await;
    // Nothing older than the first event: nothing happens, no checkpoint.
    let r = log.prune(stored[0].time).await.unwrap();
    assert_eq!(r.deleted, 0);
    assert!(r.checkpoint.is_none());
    // Prune everything before event #20 (seq 20).
    let cutoff = stored[19].time;
    let expect_deleted = stored.iter().filter(|e| e.time < cutoff).count();
    let r = log.prune(cutoff).await.unwrap();
    assert_eq!(r.deleted as usize, expect_deleted);
    let cp = r.checkpoint.clone().unwrap();
    assert_eq!(cp.event.kind, Some(EventKind::Checkpoint));
    assert_eq!(cp.seq, 31);
    let anchor = &r.anchors[0];
    assert_eq!(anchor.seq, i64::try_from(expect_deleted).unwrap());
    assert_eq!(anchor.hash, stored[expect_deleted - 1].hash);
    let v = log.verify().await.unwrap();
    assert!(v.ok, "{v:#?}");
    assert_eq!(v.chains[0].anchor_seq, anchor.seq);
    assert_eq!(cli_verify_code(&env).await, 0);
    // The log keeps going after a prune.
    record_n(&log, 2).await;
    assert!(log.verify().await.unwrap().ok);
    // Tampering after prune is still detected: delete the first kept event…
    let first_kept = anchor.seq + 1;
    env.raw
        .exec(&format!(
            "DELETE FROM audit_events WHERE seq = {first_kept}"
        ))
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!(b.kind, BreakKind::SeqGap, "{b}");
    // …and also when the anchor is moved forward to hide it.
    let h = &stored[usize::try_from(first_kept).unwrap() - 1].hash;
    env.raw
        .exec(&format!(
            "UPDATE audit_chains SET anchor_seq = {first_kept}, anchor_hash = '{h}'"
        ))
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!(b.kind, BreakKind::AnchorUnconfirmed, "{b}");
    env.close().await;
}

pub async fn retention_twice_and_everything(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 10).await;
    log.prune(stored[5].time).await.unwrap();
    record_n(&log, 3).await;
    // Prune everything, including the first checkpoint: a new checkpoint carries the anchors.
    let r = log.prune(OffsetDateTime::now_utc()).await.unwrap();
    assert!(r.deleted > 0);
    let left = log.all_events().await.unwrap();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].event.kind, Some(EventKind::Checkpoint));
    let v = log.verify().await.unwrap();
    assert!(v.ok, "{v:#?}");
    record_n(&log, 2).await;
    assert!(log.verify().await.unwrap().ok);
    // Tamper the remaining checkpoint's anchor list: caught.
    env.raw
        .exec("UPDATE audit_events SET params = REPLACE(params, '\"seq\":', '\"seq\":9') WHERE kind = 'checkpoint'")
        .await;
    let b = first_break(&log.verify().await.unwrap()).clone();
    assert_eq!(b.kind, BreakKind::HashMismatch, "{b}");
    env.close().await;
}

pub async fn retention_in_chunks(env: Env) {
    let loc = audit::Location::parse(&env.cfg.url, env.dir.path());
    let mut store = audit::SqlStore::connect(&loc, Duration::from_secs(3), true)
        .await
        .unwrap();
    store.claim_chain("gw-test").await.unwrap();
    store.set_prune_chunk(4);
    let log = AuditLog::with_options(std::sync::Arc::new(store), 64, Duration::from_secs(3));
    let stored = record_n(&log, 30).await;
    let cutoff = stored[25].time;
    let expect = stored.iter().filter(|e| e.time < cutoff).count();
    let r = log.prune(cutoff).await.unwrap();
    assert_eq!(r.deleted as usize, expect);
    assert_eq!(r.anchors[0].seq, i64::try_from(expect).unwrap());
    let left = log.all_events().await.unwrap();
    let checkpoints = left
        .iter()
        .filter(|e| e.event.kind == Some(EventKind::Checkpoint))
        .count();
    assert_eq!(checkpoints, expect.div_ceil(4));
    assert_eq!(r.checkpoints.len(), checkpoints);
    assert_eq!(r.checkpoints.last(), r.checkpoint.as_ref());
    let v = log.verify().await.unwrap();
    assert!(v.ok, "{v:#?}");
    env.close().await;
}

pub async fn prune_refuses_broken_prefix(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 10).await;
    env.raw
        .exec("UPDATE audit_events SET outcome = 'x' WHERE seq = 2")
        .await;
    let r = log.prune(stored[6].time).await.unwrap();
    assert_eq!(r.deleted, 0);
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].seq, 2);
    assert_eq!(log.all_events().await.unwrap().len(), 10);
    env.close().await;
}

pub async fn retention_config_runs_at_start(env: Env) {
    let log = env
        .open_with(|c| {
            c.retention_days = Some(30);
        })
        .await;
    record_n(&log, 3).await;
    assert!(log.verify().await.unwrap().ok);
    env.close().await;
}

pub async fn query_filters_and_pagination(env: Env) {
    let log = env.open().await;
    let stored = record_n(&log, 250).await;
    // Newest first, every event exactly once over the pages.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = log
            .query(&AuditQuery {
                cursor: cursor.clone(),
                limit: Some(100),
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.events.len() <= 100);
        seen.extend(page.events);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut expect = stored.clone();
    expect.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    assert_eq!(seen, expect);
    // Default limit.
    let page = log.query(&AuditQuery::default()).await.unwrap();
    assert_eq!(page.events.len(), 100);
    assert!(page.next_cursor.is_some());
    let count = |q: AuditQuery| {
        let log = log.clone();
        async move {
            let mut n = 0;
            let mut q = q;
            q.limit = Some(37);
            loop {
                let p = log.query(&q).await.unwrap();
                n += p.events.len();
                match p.next_cursor {
                    Some(c) => q.cursor = Some(c),
                    None => return n,
                }
            }
        }
    };
    let want = |f: &dyn Fn(&AuditEvent) -> bool| stored.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(AuditQuery {
            pool: Some("p1".into()),
            ..Default::default()
        })
        .await,
        want(&|e| e.event.target.pool.as_deref() == Some("p1"))
    );
    assert_eq!(
        count(AuditQuery {
            actor: Some("apikey:a2".into()),
            ..Default::default()
        })
        .await,
        want(&|e| e.event.actor.id == "apikey:a2")
    );
    assert_eq!(
        count(AuditQuery {
            host: Some("h3.example.test".into()),
            user: Some("user1@example.test".into()),
            ..Default::default()
        })
        .await,
        want(
            &|e| e.event.target.host.as_deref() == Some("h3.example.test")
                && e.event.target.user.as_deref() == Some("user1@example.test")
        )
    );
    assert_eq!(
        count(AuditQuery {
            action: Some("logoff".into()),
            outcome: Some("failed".into()),
            ..Default::default()
        })
        .await,
        want(&|e| e.event.action == "logoff" && e.event.outcome == "failed")
    );
    let p = log
        .query(&AuditQuery {
            ticket: Some("CHG120".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].event.request_id, "req-120");
    let p = log
        .query(&AuditQuery {
            request_id: Some("req-77".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].id, stored[77].id);
    let (since, until) = (stored[100].time, stored[200].time);
    assert_eq!(
        count(AuditQuery {
            since: Some(since),
            until: Some(until),
            ..Default::default()
        })
        .await,
        want(&|e| e.time >= since && e.time < until)
    );
    // Bad input.
    for q in [
        AuditQuery {
            cursor: Some("not a cursor!".into()),
            ..Default::default()
        },
        AuditQuery {
            limit: Some(0),
            ..Default::default()
        },
        AuditQuery {
            limit: Some(1001),
            ..Default::default()
        },
    ] {
        assert!(matches!(log.query(&q).await, Err(AuditError::BadQuery(_))));
    }
    env.close().await;
}

pub async fn two_replicas_concurrently(env: Env) {
    let a = env.open_with(|c| c.replica = Some("gw-a".into())).await;
    let b = env.open_with(|c| c.replica = Some("gw-b".into())).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300usize {
        let log = if i.is_multiple_of(2) {
            a.clone()
        } else {
            b.clone()
        };
        set.spawn(async move { log.record(ev(i)).await });
    }
    // Verification while both replicas are writing sees consistent chains.
    for _ in 0..5 {
        let r = a.verify().await.unwrap();
        assert!(r.ok, "verify during writes: {r:#?}");
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let r = a.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    let by: std::collections::HashMap<_, _> = r
        .chains
        .iter()
        .map(|c| (c.chain.as_str(), c.events))
        .collect();
    assert_eq!(by.get("gw-a"), Some(&150));
    assert_eq!(by.get("gw-b"), Some(&150));
    // One replica prunes both chains; both still verify; tampering in the other's chain found.
    let all = a.all_events().await.unwrap();
    let cutoff = all[200].time;
    let p = a.prune(cutoff).await.unwrap();
    assert!(p.deleted > 0);
    assert_eq!(p.anchors.len(), 2);
    b.record(ev(1000)).await.unwrap();
    let r = b.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    env.raw
        .exec("UPDATE audit_events SET action = 'message' WHERE chain = 'gw-b' AND seq = (SELECT MAX(seq) FROM audit_events WHERE chain = 'gw-b')")
        .await;
    let r = a.verify().await.unwrap();
    assert_eq!(first_break(&r).chain, "gw-b");
    env.close().await;
}

pub async fn generated_chain_id(env: Env) {
    let log = env.open_with(|c| c.replica = None).await;
    let chain = log.chain().unwrap();
    if env.is_pg {
        assert!(chain.starts_with("replica-"), "{chain}");
    } else {
        assert_eq!(chain, "local");
    }
    log.record(ev(1)).await.unwrap();
    assert!(log.verify().await.unwrap().ok);
    env.close().await;
}

/// Defines one `#[tokio::test]` per suite function above for a backend constructor
/// (`async fn() -> Option<Env>`; `None` skips). A suite function missing from this list is
/// dead code, which the build refuses.
#[macro_export]
macro_rules! audit_suite {
    ($make:path) => {
        $crate::audit_suite!($make;
            intact_log_verifies,
            detects_edited_row,
            detects_deleted_row,
            detects_inserted_row,
            detects_swapped_rows,
            group_commit,
            store_down_and_recovery,
            closed_pool_is_unavailable,
            retention,
            retention_twice_and_everything,
            retention_in_chunks,
            prune_refuses_broken_prefix,
            retention_config_runs_at_start,
            query_filters_and_pagination,
            two_replicas_concurrently,
            generated_chain_id,
            text_with_nul_is_stored,
        );
    };
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(env) = $make().await else { return };
                $crate::support::audit::$name(env).await;
            }
        )*
    };
}

/// Text with NUL characters (from a token's name claim, a backend's user name, a ticket
/// system's message) is stored, with U+FFFD in their place, and the chain verifies: PostgreSQL
/// would refuse the raw text for good.
pub async fn text_with_nul_is_stored(env: Env) {
    let log = env.open().await;
    let mut e = ev(1);
    e.request_id = "req-nul".into();
    e.actor.display = Some("Mallory\0 Admin".into());
    e.target.user = Some("user\0@contoso.com".into());
    e.params = serde_json::json!({"ticket": "INC\u{0}1", "reason": "a\u{0}b"});
    let stored = log
        .record(e)
        .await
        .expect("an event with NUL text is stored");
    assert_eq!(
        stored.event.actor.display.as_deref(),
        Some("Mallory\u{FFFD} Admin")
    );
    assert_eq!(
        stored.event.target.user.as_deref(),
        Some("user\u{FFFD}@contoso.com")
    );
    assert_eq!(
        stored.event.params["reason"], "a\u{0}b",
        "params are JSON: kept as sent"
    );
    record_n(&log, 2).await;
    let page = log
        .query(&sessiongate::audit::AuditQuery {
            request_id: Some(stored.event.request_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.events[0].event.actor.display,
        stored.event.actor.display
    );
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    env.close().await;
}
