//! `Idempotency-Key` over loopback: replay (same status and body, no new upstream call, no new
//! audit intent), mismatch (422), a bad key (400), a duplicate while the first still runs (it
//! waits, or 409 with `Retry-After`), answers that mean "nothing was done" are not stored —
//! on a single-session route and on the bulk route; and the v2 → v3 schema migration that
//! brought the jobs and idempotency tables, on SQLite and PostgreSQL.
//! Run: `cargo nextest run --test it fleet_idempotency::`

use crate::fleet_jobs::{bulk_url, seed};
use crate::support::app::{AVD_POOL, TestApp, problem};
use crate::support::audit::{Env, record_n};
use crate::support::header;
use serde_json::{Value, json};
use sessiongate::emulator::{arm::ArmOp, common::FaultSettings};

struct Got {
    status: u16,
    body: String,
    replayed: bool,
    location: Option<String>,
    retry_after: Option<String>,
}

async fn post(app: &TestApp, k: &str, url: &str, idem: &str, body: Value) -> Got {
    let r = app
        .http
        .post(url)
        .bearer_auth(k)
        .header("Idempotency-Key", idem)
        .json(&body)
        .send()
        .await
        .unwrap();
    Got {
        status: r.status().as_u16(),
        replayed: header(&r, "idempotency-replayed").as_deref() == Some("true"),
        location: header(&r, "location"),
        retry_after: header(&r, "retry-after"),
        body: r.text().await.unwrap(),
    }
}

/// Intent events recorded for session `id`.
async fn intents(app: &TestApp, id: u32) -> usize {
    let a: Value = app
        .get(&app.keys.auditor, "/audit?outcome=pending&limit=1000")
        .await
        .json()
        .await
        .unwrap();
    a["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"]["session_id"] == id)
        .count()
}

#[tokio::test]
async fn single_route_replays_refuses_a_reused_key_and_bad_keys() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let arm = app.arm();
    let k = app.keys.operator.clone();

    let first = post(&app, &k, &url, "retry-1", json!({"reason": "stuck"})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!first.replayed);
    let first_body: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(first_body["outcome"], "done");
    let calls = arm.calls(ArmOp::Logoff);
    let gets = arm.calls(ArmOp::GetSession);
    let n_intents = intents(&app, id).await;
    assert_eq!(n_intents, 1);

    // The same request again: the stored answer, nothing done.
    let again = post(&app, &k, &url, "retry-1", json!({"reason": "stuck"})).await;
    assert_eq!(again.status, 200);
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(arm.calls(ArmOp::Logoff), calls);
    assert_eq!(arm.calls(ArmOp::GetSession), gets);
    assert_eq!(intents(&app, id).await, n_intents);

    // The same key with another body: 422, nothing done.
    let r = app
        .http
        .post(&url)
        .bearer_auth(&k)
        .header("Idempotency-Key", "retry-1")
        .json(&json!({"reason": "another"}))
        .send()
        .await
        .unwrap();
    problem(r, 422, "idempotency_key_reused").await;
    assert_eq!(arm.calls(ArmOp::Logoff), calls);

    // Keys are per principal: the admin's "retry-1" is its own.
    let (host2, id2) = {
        let s = seed(&app, "idem", 1);
        (
            s[0]["host"].as_str().unwrap().to_string(),
            s[0]["id"].as_str().unwrap().parse::<u32>().unwrap(),
        )
    };
    let url2 = format!("{}/logoff", app.session_url(AVD_POOL, &host2, id2));
    let other = post(&app, &app.keys.admin, &url2, "retry-1", json!({})).await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert!(!other.replayed);

    // Bad keys: 400 with a stable code, nothing done.
    for bad in ["a".repeat(256), "tab\there".to_string()] {
        let r = app
            .http
            .post(&url2)
            .bearer_auth(&k)
            .header("Idempotency-Key", bad)
            .send()
            .await
            .unwrap();
        problem(r, 400, "invalid_idempotency_key").await;
    }
    // A problem answer is stored and replayed too (the session is gone now: already_gone is
    // a 200, so use a host that is not in the pool: 404).
    let url3 = format!("{}/logoff", app.session_url(AVD_POOL, "no-such-host", 1));
    let p1 = post(&app, &k, &url3, "nf", json!({})).await;
    let p2 = post(&app, &k, &url3, "nf", json!({})).await;
    assert_eq!((p1.status, p2.status), (404, 404));
    assert!(
        p2.replayed && p1.body == p2.body,
        "{} / {}",
        p1.body,
        p2.body
    );
}

#[tokio::test]
async fn bulk_route_replays_sync_and_async() {
    let app = TestApp::start().await;
    let arm = app.arm();
    let k = app.keys.operator.clone();
    let t = seed(&app, "bulk", 3);
    // Synchronous.
    let body = json!({"targets": t[..2]});
    let url = bulk_url(&app, "disconnect", "");
    let first = post(&app, &k, &url, "bulk-1", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let calls = arm.calls(ArmOp::Disconnect);
    let again = post(&app, &k, &url, "bulk-1", body).await;
    assert!(again.replayed && again.status == 200 && again.body == first.body);
    assert_eq!(arm.calls(ArmOp::Disconnect), calls);
    // As a job: the same 202, the same Location, one job only.
    let url = bulk_url(&app, "logoff", "?async=true");
    let body = json!({"targets": t});
    let first = post(&app, &k, &url, "job-1", body.clone()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = post(&app, &k, &url, "job-1", body.clone()).await;
    assert_eq!(again.status, 202);
    assert!(again.replayed);
    assert_eq!(again.location, first.location);
    assert!(again.location.as_deref().unwrap().starts_with("/jobs/"));
    assert_eq!(again.body, first.body);
    let l: Value = app.get(&k, "/jobs").await.json().await.unwrap();
    assert_eq!(l["jobs"].as_array().unwrap().len(), 1, "{l}");
    // The query string is part of the request: without ?async it is another request.
    let r = app
        .http
        .post(bulk_url(&app, "logoff", ""))
        .bearer_auth(&k)
        .header("Idempotency-Key", "job-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(r, 422, "idempotency_key_reused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_the_first_runs_gets_409_or_waits_for_its_answer() {
    // No wait: the duplicate is answered 409 at once.
    let app = TestApp::start_with(|c| c.idempotency.wait_ms = 0).await;
    let arm = app.arm();
    let (host, id, _) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    arm.set_faults(FaultSettings {
        latency_ms: 700,
        ..Default::default()
    });
    let calls = arm.calls(ArmOp::Logoff);
    let k = app.keys.operator.clone();
    let a = post(&app, &k, &url, "dup", json!({}));
    let b = async {
        // Let the first one in before the duplicate.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        post(&app, &k, &url, "dup", json!({})).await
    };
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(b.status, 409, "{}", b.body);
    assert!(b.body.contains("idempotency_in_progress"));
    assert!(b.retry_after.is_some());
    assert_eq!(arm.calls(ArmOp::Logoff) - calls, 1);
    // After the first finished, a retry gets its answer.
    let c = post(&app, &k, &url, "dup", json!({})).await;
    assert!(c.replayed && c.body == a.body);

    // With a wait (the default 5 s): both answers are the first one's.
    let app = TestApp::start().await;
    let arm = app.arm();
    let (host, id, _) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    arm.set_faults(FaultSettings {
        latency_ms: 500,
        ..Default::default()
    });
    let calls = arm.calls(ArmOp::Logoff);
    let k = app.keys.operator.clone();
    let (a, b) = tokio::join!(
        post(&app, &k, &url, "dup", json!({})),
        post(&app, &k, &url, "dup", json!({}))
    );
    assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.body, b.body);
    assert_eq!(a.body, b.body);
    assert!(a.replayed != b.replayed, "exactly one of them ran");
    assert_eq!(arm.calls(ArmOp::Logoff) - calls, 1);
}

#[tokio::test]
async fn answers_that_mean_nothing_was_done_are_not_stored() {
    let app = TestApp::start_with(|c| {
        c.auth.rate_limit.actions_per_minute = 1;
        c.auth.rate_limit.burst = 1;
    })
    .await;
    let k = app.keys.operator.clone();
    let t = seed(&app, "rl", 2);
    let url = |i: usize| {
        format!(
            "{}/disconnect",
            app.session_url(
                AVD_POOL,
                t[i]["host"].as_str().unwrap(),
                t[i]["id"].as_str().unwrap().parse().unwrap()
            )
        )
    };
    let a = post(&app, &k, &url(0), "rl-a", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let b = post(&app, &k, &url(1), "rl-b", json!({})).await;
    assert_eq!(b.status, 429, "{}", b.body);
    // Not stored: the retry runs again (and is limited again), it is not a replay.
    let b2 = post(&app, &k, &url(1), "rl-b", json!({})).await;
    assert_eq!(b2.status, 429);
    assert!(!b2.replayed);
}

async fn migrates_from_v2(env: Env) {
    let log = env.open().await;
    record_n(&log, 3).await;
    drop(log);
    // Turn it into a version-2 store: without the v3-v5 tables and version rows.
    for sql in [
        "DROP TABLE webhook_deliveries",
        "DELETE FROM audit_schema_version WHERE version = 5",
        "DELETE FROM audit_schema_version WHERE version = 4",
        "DROP TABLE job_items",
        "DROP TABLE jobs",
        "DROP TABLE idempotency_keys",
        "DELETE FROM audit_schema_version WHERE version = 3",
    ] {
        env.raw.exec(sql).await;
    }
    assert_eq!(
        env.raw
            .scalar("SELECT MAX(version) FROM audit_schema_version")
            .await,
        2
    );
    let log = env.open().await;
    assert_eq!(
        env.raw
            .scalar("SELECT MAX(version) FROM audit_schema_version")
            .await,
        sessiongate::audit::sql::SCHEMA_VERSION
    );
    for t in [
        "jobs",
        "job_items",
        "idempotency_keys",
        "webhook_deliveries",
    ] {
        assert_eq!(
            env.raw.scalar(&format!("SELECT COUNT(*) FROM {t}")).await,
            0
        );
    }
    assert!(env.raw.scalar("SELECT COUNT(*) FROM audit_events").await >= 3);
    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    drop(log);
    env.close().await;
}

#[tokio::test]
async fn schema_v2_migrates_to_v3_sqlite() {
    migrates_from_v2(Env::sqlite().await.unwrap()).await;
}

#[tokio::test]
async fn schema_v2_migrates_to_v3_postgres() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    migrates_from_v2(env).await;
}

/// On PostgreSQL (keys shared by replicas): a key used through one replica replays through the
/// other, a reused key is refused there, and an answer that is not stored lets the retry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shared_by_replicas_on_postgres() {
    use crate::support::app::{Demo, InProc};
    use crate::support::pg::PgDb;
    let Some(db) = PgDb::create("idem_t").await else {
        return;
    };
    let demo = Demo::start_unthrottled().await;
    let arm = demo.arm();
    let (host, id) = demo.seed("pgidem", 1).remove(0);
    let cfg_a = demo.config("127.0.0.1:0", Some(&db.url), Some("gw-a"));
    let cfg_b = demo.config("127.0.0.1:0", Some(&db.url), Some("gw-b"));
    let (mut a, mut b) = tokio::join!(InProc::start(&cfg_a), InProc::start(&cfg_b));
    let http = reqwest::Client::new();
    let send = |base: &str, key: &str, body: Value| {
        http.post(format!(
            "{base}/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{id}/logoff"
        ))
        .bearer_auth(&demo.keys.operator)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
    };
    let r1 = send(&a.url, "pg-1", json!({"reason": "x"})).await.unwrap();
    assert_eq!(r1.status(), 200);
    let body1 = r1.text().await.unwrap();
    let calls = arm.calls(ArmOp::Logoff);
    let r2 = send(&b.url, "pg-1", json!({"reason": "x"})).await.unwrap();
    assert_eq!(r2.status(), 200);
    assert_eq!(header(&r2, "idempotency-replayed").as_deref(), Some("true"));
    assert_eq!(r2.text().await.unwrap(), body1);
    assert_eq!(arm.calls(ArmOp::Logoff), calls);
    let r3 = send(&b.url, "pg-1", json!({"reason": "y"})).await.unwrap();
    assert_eq!(r3.status(), 422);
    a.stop().await;
    b.stop().await;
    // Forgetting a key (answers not stored) and the retention prune, on PostgreSQL's SQL.
    use sessiongate::audit::{sql::Db, work::WorkStore};
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let w = WorkStore::new(Db::Postgres(pool.clone()));
    assert!(w.idem_insert("p", "k", "f", 7).await.unwrap());
    assert!(!w.idem_insert("p", "k", "f", 8).await.unwrap());
    w.idem_delete("p", "k", Some(8)).await.unwrap();
    assert!(
        w.idem_get("p", "k").await.unwrap().is_some(),
        "another run's record"
    );
    w.idem_delete("p", "k", Some(7)).await.unwrap();
    assert!(w.idem_get("p", "k").await.unwrap().is_none());
    assert!(w.idem_insert("p", "k2", "f", 9).await.unwrap());
    w.idem_delete("p", "k2", None).await.unwrap();
    assert!(w.idem_get("p", "k2").await.unwrap().is_none());
    assert!(w.idem_prune(i64::MAX).await.unwrap() >= 1, "pg-1 pruned");
    pool.close().await;
    drop(db);
}
