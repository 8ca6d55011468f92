//! Audit log against a real PostgreSQL server at postgres://postgres@127.0.0.1:5432/test
//! (trust auth). Each test creates a fresh database and drops it afterwards. When the server
//! is unreachable the tests fail naming what to install (see `support::prereq`).
//! Run: `cargo nextest run --test it audit_postgres::`

use crate::support::audit::{Env, ev, record_n};

crate::audit_suite!(Env::postgres);

/// Connections killed under the log (server restart, failover): the pool reconnects and the
/// chain continues without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_killed_connections() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let log = env.open().await;
    record_n(&log, 5).await;
    env.raw
        .exec(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    let mut ok = 0;
    for i in 0..10 {
        if log.record(ev(i)).await.is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 8, "only {ok} of 10 records after killing connections");
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    env.close().await;
}

/// Two instances opening at once: the schema version is recorded once, both chains work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_open_is_safe() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let (a, b) = tokio::join!(
        env.open_with(|c| c.replica = Some("x1".into())),
        env.open_with(|c| c.replica = Some("x2".into()))
    );
    a.record(ev(1)).await.unwrap();
    b.record(ev(2)).await.unwrap();
    assert_eq!(
        env.raw
            .scalar("SELECT COUNT(*) FROM audit_schema_version")
            .await,
        sessiongate::audit::sql::SCHEMA_VERSION
    );
    assert!(a.verify().await.unwrap().ok);
    env.close().await;
}
