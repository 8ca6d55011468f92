//! Audit log against SQLite (the embedded default): tamper detection, group commit,
//! store-down behaviour, retention, query and export.
//! Run: `cargo nextest run --test it audit_sqlite::`

use crate::support::audit::{Env, Raw, ev, record_n};

crate::audit_suite!(Env::sqlite);

/// `audit verify` (`run::audit_verify`) on a missing store: exit code 2, and the file is not created.
#[tokio::test]
async fn cli_verify_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sessiongate::audit::AuditConfig::default();
    assert_eq!(sessiongate::run::audit_verify(&cfg, dir.path()).await, 2);
    assert!(!dir.path().join("audit.sqlite3").exists());
    assert_eq!(
        sessiongate::run::audit_export(&cfg, dir.path(), None, "csv").await,
        2
    );
}

/// The store file is in WAL mode with durable commits.
#[tokio::test]
async fn sqlite_pragmas() {
    let env = Env::sqlite().await.unwrap();
    let log = env.open().await;
    log.record(ev(1)).await.unwrap();
    let Raw::Sqlite(p) = &env.raw else {
        unreachable!()
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(p)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    env.close().await;
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every recorded event is one structured line on the `sessiongate::audit` target.
#[test]
fn record_emits_one_structured_log_line() {
    let cap = Captured::default();
    let w = cap.clone();
    let sub = tracing_subscriber::fmt()
        .json()
        .with_writer(move || w.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let stored = tracing::subscriber::with_default(sub, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let env = Env::sqlite().await.unwrap();
            let log = env.open().await;
            let e = log.record(ev(10)).await.unwrap();
            env.close().await;
            e
        })
    });
    let text = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| {
            v["target"] == "sessiongate::audit" && v["fields"]["message"] == "audit event"
        })
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let f = &lines[0]["fields"];
    assert_eq!(f["audit.id"], stored.id.as_str());
    assert_eq!(f["audit.chain"], "gw-test");
    assert_eq!(f["audit.seq"], 1);
    assert_eq!(f["audit.action"], "logoff");
    assert_eq!(f["audit.ticket"], "CHG10");
    assert_eq!(f["audit.outcome"], "done");
    assert_eq!(f["audit.hash"], stored.hash.as_str());
}

/// `audit export` writes JSON lines to stdout and exits 0; `audit verify` exits 0 on an intact log.
#[tokio::test]
async fn cli_helpers_on_a_good_store() {
    let env = Env::sqlite().await.unwrap();
    let log = env.open().await;
    record_n(&log, 3).await;
    assert_eq!(
        sessiongate::run::audit_export(&env.cfg, env.dir.path(), None, "jsonl").await,
        0
    );
    assert_eq!(
        sessiongate::run::audit_verify(&env.cfg, env.dir.path()).await,
        0
    );
    env.close().await;
}

/// A store migrated by a newer binary is refused, not written with an old schema.
#[tokio::test]
async fn newer_schema_is_refused() {
    let env = Env::sqlite().await.unwrap();
    env.raw
        .exec("INSERT INTO audit_schema_version (version, description, applied_us) VALUES (99, 'future', 0)")
        .await;
    let err = sessiongate::audit::open(&env.cfg, env.dir.path())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
    env.close().await;
}
