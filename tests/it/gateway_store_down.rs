//! The audit store stops taking writes under a running gateway (an outside connection holds
//! SQLite's exclusive write lock): actions are refused with 503 `audit_unavailable` +
//! Retry-After before any provider write, `/readyz` turns 503; after the lock is released the
//! gateway recovers by itself and the same actions succeed and are audited.
//! Run: `cargo nextest run --test it gateway_store_down::`

use crate::support::app::{ARM_POOL, Demo, InProc};
use crate::support::gateway::{self, Answer, post_action};
use serde_json::{Value, json};
use sessiongate::emulator::arm::ArmOp;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::time::{Duration, Instant};

fn assert_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {:?}", a.body);
    assert_eq!(a.content_type, "application/problem+json", "{what}");
    assert_eq!(a.body["code"], "audit_unavailable", "{what}: {:?}", a.body);
    assert_eq!(a.body["status"], 503);
    assert_eq!(a.body["request_id"], a.request_id.as_str());
    let ra = a.retry_after.as_deref().unwrap_or("");
    assert!(
        ra.parse::<u64>().is_ok_and(|s| s >= 1),
        "{what}: Retry-After {ra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_refused_without_provider_call_while_store_cannot_write() {
    let b = Demo::start_unthrottled().await;
    let targets = b.seed("down", 3);
    let arm = b.arm();
    let mut cfg = b.config("127.0.0.1:0", None, None);
    cfg.audit.write_timeout_ms = 700;
    let db_file = {
        let u = cfg.audit.url.strip_prefix("sqlite://").expect("sqlite url");
        std::path::PathBuf::from(u)
    };
    let mut gw = InProc::start(&cfg).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let key = &b.keys.operator;

    // Healthy first.
    let r = http.get(format!("{}/readyz", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(db_file.exists(), "{}", db_file.display());

    // An outside writer takes SQLite's exclusive lock and keeps it.
    let raw = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&db_file)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let mut lock = raw.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let calls_before = arm.all_calls();
    let (h0, i0) = &targets[0];
    let (h1, i1) = &targets[1];
    let (h2, i2) = &targets[2];
    let logoff = format!("{}/logoff", Demo::session_url(&gw.url, h0, *i0));
    let disconnect = format!("{}/disconnect", Demo::session_url(&gw.url, h1, *i1));
    let message = format!("{}/message", Demo::session_url(&gw.url, h2, *i2));
    let msg = json!({"title": "Maintenance", "body": "Please save your work"});

    let t0 = Instant::now();
    let (lo, di, me) = tokio::join!(
        post_action(&http, &logoff, key, None),
        post_action(&http, &disconnect, key, None),
        post_action(&http, &message, key, Some(msg.clone())),
    );
    let (lo, di, me) = (lo.unwrap(), di.unwrap(), me.unwrap());
    let refused_in = t0.elapsed();
    assert_unavailable(&lo, "logoff");
    assert_unavailable(&di, "disconnect");
    assert_unavailable(&me, "message");
    assert!(
        refused_in < Duration::from_secs(8),
        "refusals took {refused_in:?}"
    );

    // Down: not ready.
    let r = http.get(format!("{}/readyz", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "audit_unavailable");

    // No provider write happened: counters, sessions and messages unchanged.
    for op in [ArmOp::Logoff, ArmOp::Disconnect, ArmOp::SendMessage] {
        assert_eq!(arm.calls(op), 0, "{op:?} reached the emulator");
    }
    let now = arm.all_calls();
    for (op, n) in &calls_before {
        if *op != "get_session" && *op != "list_host_sessions" {
            assert_eq!(now.get(op), Some(n), "{op}");
        }
    }
    let sessions = arm.sessions(ARM_POOL);
    for (h, i) in &targets {
        let s = sessions
            .iter()
            .find(|s| &s.host == h && s.id == *i)
            .expect("session still there");
        assert_eq!(s.state, "Active");
    }
    assert!(arm.messages().is_empty());
    // Still down on a second try (no half-open state that lets one through).
    let again = post_action(&http, &logoff, key, None).await.unwrap();
    assert_unavailable(&again, "logoff again");
    assert_eq!(arm.calls(ArmOp::Logoff), 0);
    let refused = [
        lo.request_id.clone(),
        di.request_id.clone(),
        me.request_id.clone(),
        again.request_id.clone(),
    ];

    // Release: the gateway recovers on its own (the committer's probe)...
    sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
    drop(lock);
    raw.close().await;
    let t0 = Instant::now();
    loop {
        let r = http.get(format!("{}/readyz", gw.url)).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "readyz never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered_in = t0.elapsed();

    // ...and the same actions now succeed and are audited.
    let lo = post_action(&http, &logoff, key, None).await.unwrap();
    assert_eq!(lo.status, 200, "{:?}", lo.body);
    assert_eq!(lo.body["outcome"], "done");
    let di = post_action(&http, &disconnect, key, None).await.unwrap();
    assert_eq!(di.status, 200, "{:?}", di.body);
    let me = post_action(&http, &message, key, Some(msg)).await.unwrap();
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!(arm.calls(ArmOp::Logoff), 1);
    assert_eq!(arm.calls(ArmOp::Disconnect), 1);
    assert_eq!(arm.calls(ArmOp::SendMessage), 1);
    assert!(
        !arm.sessions(ARM_POOL)
            .iter()
            .any(|s| &s.host == h0 && s.id == *i0)
    );

    gw.stop().await;
    let events = gateway::store_events(&cfg).await;
    let map = gateway::by_request(&events);
    for (a, action) in [(&lo, "logoff"), (&di, "disconnect"), (&me, "message")] {
        let (i, o) = map
            .get(&a.request_id)
            .unwrap_or_else(|| panic!("{action} {} not audited", a.request_id));
        assert_eq!((i.len(), o.len()), (1, 1), "{action}");
        assert_eq!(i[0].event.action, action);
        assert_eq!(o[0].event.outcome, "done");
        assert!(i[0].seq < o[0].seq);
        assert_eq!(
            a.body["audit_event_id"].as_str(),
            Some(o[0].id.as_str()),
            "{action}"
        );
    }
    // The refused requests left nothing behind that claims an action was under way.
    for rid in &refused {
        assert!(
            !map.contains_key(rid),
            "refused request {rid} has intent/outcome"
        );
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.kind == Some(sessiongate::audit::EventKind::Intent))
            .count(),
        3,
        "only the three successful actions have intents"
    );
    let report = sessiongate::audit::open_read_only(&cfg.audit, &cfg.server.data_dir)
        .await
        .unwrap();
    let report = sessiongate::audit::AuditStore::verify(&report)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    eprintln!(
        "store-down figures: 3 concurrent refusals in {refused_in:?} (write_timeout 700 ms), \
         recovered {recovered_in:?} after release, events={}",
        events.len()
    );
}
