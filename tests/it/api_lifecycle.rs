//! Shutdown and operability: in-flight actions finish and are audited on SIGTERM/Ctrl-C;
//! request ids on every response.

use crate::support::app::{AVD_POOL, TestApp};
use sessiongate::{
    audit::{AuditQuery, AuditStore, EventKind},
    emulator::common::FaultSettings,
};
use std::time::Duration;

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_actions_finish_and_be_audited() {
    let mut app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    // Every upstream round trip now takes 300 ms: the action is in flight when we stop.
    app.arm().set_faults(FaultSettings {
        latency_ms: 300,
        ..FaultSettings::default()
    });
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let http = app.http.clone();
    let key = app.keys.operator.clone();
    let call = tokio::spawn(async move { http.post(url).bearer_auth(key).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.stop().await;
    let resp = call
        .await
        .unwrap()
        .expect("in-flight request answered, not cut");
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["outcome"], "done");

    // New connections are refused after shutdown.
    assert!(
        app.http
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .is_err()
    );

    let store = sessiongate::audit::open_read_only(&app.config.audit, &app.config.server.data_dir)
        .await
        .unwrap();
    let page = store
        .query(&AuditQuery {
            request_id: Some(rid),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let kinds: Vec<_> = page.events.iter().filter_map(|e| e.event.kind).collect();
    assert!(
        kinds.contains(&EventKind::Intent) && kinds.contains(&EventKind::Outcome),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn probes_need_no_key_and_carry_request_ids() {
    let app = TestApp::start().await;
    for p in ["/healthz", "/readyz"] {
        let r = app
            .http
            .get(format!("{}{p}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
        assert!(r.headers().contains_key("x-request-id"));
    }
    // A request id that is not safe to echo is replaced by a generated one.
    let r = app
        .http
        .get(format!("{}/healthz", app.url))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(rid, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(rid).is_ok());
}

/// Start-up writes (the interrupted actions' outcomes, the start event) have no caller waiting:
/// a store that is slow for longer than `write_timeout_ms` at boot delays the start instead of
/// failing it (CI saw a start refused by "no durable commit within 3000 ms" under load).
#[tokio::test]
async fn start_up_waits_out_a_store_slower_than_the_write_timeout() {
    use sessiongate::audit::{NewEvent, Target};
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = sessiongate::config::Config::from_toml_with_env(
        &format!(
            "[server]\ndata_dir = {:?}\n[audit]\nurl = \"sqlite://audit.db\"\nwrite_timeout_ms = 300\n",
            dir.path().display().to_string()
        ),
        std::iter::empty(),
    )
    .unwrap();
    let audit = sessiongate::audit::open(&cfg.audit, &cfg.server.data_dir)
        .await
        .unwrap();
    audit
        .record(NewEvent {
            kind: Some(EventKind::Intent),
            request_id: "req-slow-start".into(),
            action: "logoff".into(),
            target: Target {
                pool: Some("p".into()),
                host: Some("h".into()),
                session_id: Some(4),
                user: Some("u@contoso.com".into()),
            },
            outcome: "pending".into(),
            ..NewEvent::default()
        })
        .await
        .unwrap();
    // Another writer holds the store for 2 s, well past the 300 ms write timeout.
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    });
    let started = std::time::Instant::now();
    let built = sessiongate::app::build_app_with_audit(&cfg, audit.clone()).await;
    holder.await.unwrap();
    assert!(
        built.is_ok(),
        "start-up failed: {:?}",
        built.err().map(|e| e.to_string())
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let page = audit
        .query(&AuditQuery {
            request_id: Some("req-slow-start".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(
        page.events.iter().any(|e| e.event.outcome == "interrupted"),
        "{:?}",
        page.events
    );
}

#[tokio::test]
async fn intents_left_without_outcome_are_marked_interrupted_at_start() {
    use sessiongate::audit::{NewEvent, Target};
    let dir = tempfile::tempdir().unwrap();
    let cfg = sessiongate::config::Config::from_toml_with_env(
        &format!(
            "[server]\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ),
        std::iter::empty(),
    )
    .unwrap();
    let audit = sessiongate::audit::open(&cfg.audit, &cfg.server.data_dir)
        .await
        .unwrap();
    // A previous run recorded an intent, then died before the outcome.
    audit
        .record(NewEvent {
            kind: Some(EventKind::Intent),
            request_id: "req-crashed".into(),
            action: "logoff".into(),
            target: Target {
                pool: Some("p".into()),
                host: Some("h".into()),
                session_id: Some(4),
                user: Some("u@contoso.com".into()),
            },
            outcome: "pending".into(),
            ..NewEvent::default()
        })
        .await
        .unwrap();
    for _ in 0..2 {
        // Two starts: the second must not mark it again.
        sessiongate::app::build_app_with_audit(&cfg, audit.clone())
            .await
            .unwrap();
    }
    let page = audit
        .query(&AuditQuery {
            request_id: Some("req-crashed".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let outcomes: Vec<_> = page
        .events
        .iter()
        .filter(|e| e.event.kind == Some(EventKind::Outcome))
        .collect();
    assert_eq!(outcomes.len(), 1, "{:?}", page.events);
    assert_eq!(outcomes[0].event.outcome, "interrupted");
    assert_eq!(
        outcomes[0].event.error_code.as_deref(),
        Some("gateway_restarted")
    );
    assert_eq!(outcomes[0].event.target.session_id, Some(4));
    let starts = audit
        .query(&AuditQuery {
            action: Some(sessiongate::service::STARTED.into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(starts.events.len(), 2);
    assert!(audit.verify().await.unwrap().ok);
}
