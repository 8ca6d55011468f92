//! Audit log against SQLite (the embedded default): tamper detection, group commit,
//! store-down behaviour, retention, query and export.
//! Run: `cargo nextest run --test audit_sqlite`

mod audit_common;

use audit_common::Env;

audit_suite!(Env::sqlite;
    intact_log_verifies,
    detects_edited_row,
    detects_deleted_row,
    detects_inserted_row,
    detects_swapped_rows,
    group_commit,
    store_down_and_recovery,
    retention,
    retention_twice_and_everything,
    prune_refuses_broken_prefix,
    retention_config_runs_at_start,
    query_filters_and_pagination,
    two_replicas_concurrently,
    generated_chain_id,
);

/// `cli_verify` on a missing store: exit code 2, and the file is not created.
#[tokio::test]
async fn cli_verify_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sessiongate::audit::AuditConfig::default();
    assert_eq!(sessiongate::audit::cli_verify(&cfg, dir.path()).await, 2);
    assert!(!dir.path().join("audit.sqlite3").exists());
    assert_eq!(
        sessiongate::audit::cli_export(&cfg, dir.path(), None, "csv").await,
        2
    );
}

/// The store file is in WAL mode with durable commits.
#[tokio::test]
async fn sqlite_pragmas() {
    let env = Env::sqlite().await.unwrap();
    let log = env.open().await;
    log.record(audit_common::ev(1)).await.unwrap();
    let audit_common::Raw::Sqlite(p) = &env.raw else {
        unreachable!()
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(p)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    env.close().await;
}
