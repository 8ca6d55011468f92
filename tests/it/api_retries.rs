//! Honest answers and audit records when the gateway's call reached the backend but the answer
//! was lost (issue 11, findings 5 and 7): a logoff or disconnect the gateway repeated after a
//! lost answer, and then found gone, is `done` (audited with `params.after_retry`), never
//! `already_gone`; a message whose answer was lost is 502 `upstream_outcome_unknown`, never
//! "could not be reached".

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use serde_json::Value;
use sessiongate::emulator::arm::ArmOp;
use sessiongate::emulator::common::FaultSettings;
use std::time::{Duration, Instant};

/// The audit events of one request: (intent, outcome).
async fn audited(app: &TestApp, rid: &str) -> (Value, Value) {
    let a: Value = app
        .get(&app.keys.auditor, &format!("/audit?request_id={rid}"))
        .await
        .json()
        .await
        .unwrap();
    let events = a["events"].as_array().unwrap();
    let of = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {a}"))
            .clone()
    };
    (of("intent"), of("outcome"))
}

fn session_exists(app: &TestApp, host: &str, id: u32) -> bool {
    app.arm()
        .sessions(ARM_POOL)
        .iter()
        .any(|s| s.host == host && s.id == id)
}

#[tokio::test]
async fn a_logoff_retried_after_a_lost_answer_and_then_found_gone_is_done() {
    let app = TestApp::start().await;
    let (host, id, user) = app.avd_target();
    // ARM logs the session off, and the connection drops before the 200 arrives; the
    // gateway repeats the DELETE (idempotent) and ARM answers 404: the gateway ended it.
    app.arm().drop_after_handling(ArmOp::Logoff, 1);
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let r = app.post(&app.keys.operator, &url, None).await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    assert_eq!(v["user"], user.as_str());
    assert_eq!(app.arm().calls(ArmOp::Logoff), 2, "the gateway repeated it");
    assert!(!session_exists(&app, &host, id));

    let (intent, outcome) = audited(&app, &rid).await;
    assert_eq!(outcome["outcome"], "done", "{outcome}");
    assert_eq!(outcome["params"]["after_retry"], true, "{outcome}");
    assert_eq!(intent["outcome"], "pending");
    assert!(
        intent["params"].get("after_retry").is_none(),
        "the intent is written before anything happened: {intent}"
    );

    // A logoff of a session that had really ended before the call stays `already_gone`,
    // with no retry mark.
    let r = app.post(&app.keys.operator, &url, None).await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "already_gone", "{v}");
    let (_, outcome) = audited(&app, &rid).await;
    assert_eq!(outcome["outcome"], "already_gone");
    assert!(outcome["params"].get("after_retry").is_none(), "{outcome}");
}

#[tokio::test]
async fn a_plain_logoff_carries_no_retry_mark() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let r = app.post(&app.keys.operator, &url, None).await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done");
    assert_eq!(app.arm().calls(ArmOp::Logoff), 1);
    let (_, outcome) = audited(&app, &rid).await;
    assert_eq!(outcome["outcome"], "done");
    assert!(outcome["params"].get("after_retry").is_none(), "{outcome}");
}

#[tokio::test]
async fn a_disconnect_whose_session_vanished_after_our_unanswered_attempt_is_done() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    // ARM disconnects the session and the answer is lost; before the gateway's repeat
    // (backoff of at least 100 ms) the user's session ends. The repeat gets 404.
    app.arm().drop_after_handling(ArmOp::Disconnect, 1);
    let url = format!("{}/disconnect", app.session_url(AVD_POOL, &host, id));
    let (http, key) = (app.http.clone(), app.keys.operator.clone());
    let call = tokio::spawn(async move { http.post(url).bearer_auth(key).send().await });
    let t0 = Instant::now();
    while app.arm().calls(ArmOp::Disconnect) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no disconnect call");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(app.arm().remove_session(ARM_POOL, &host, id));
    let r = call.await.unwrap().unwrap();
    assert_eq!(
        app.arm().calls(ArmOp::Disconnect),
        2,
        "the repeat came after the session ended"
    );
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    let (_, outcome) = audited(&app, &rid).await;
    assert_eq!(outcome["outcome"], "done", "{outcome}");
    assert_eq!(outcome["params"]["after_retry"], true, "{outcome}");
}

#[tokio::test]
async fn a_message_whose_answer_was_lost_is_502_outcome_unknown_not_unreachable() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    app.arm().drop_after_handling(ArmOp::SendMessage, 1);
    let url = format!("{}/message", app.session_url(AVD_POOL, &host, id));
    let r = app
        .post(
            &app.keys.operator,
            &url,
            Some(serde_json::json!({"title": "Maintenance", "body": "in 5 minutes"})),
        )
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let b = problem(r, 502, "upstream_outcome_unknown").await;
    let detail = b["detail"].as_str().unwrap();
    assert!(!detail.contains("could not be reached"), "{detail}");
    assert!(detail.contains("may have acted"), "{detail}");
    // Delivered once, never repeated.
    assert_eq!(app.arm().calls(ArmOp::SendMessage), 1);
    assert_eq!(app.arm().messages().len(), 1);
    let (_, outcome) = audited(&app, &rid).await;
    assert_eq!(
        outcome["error_code"], "upstream_outcome_unknown",
        "{outcome}"
    );
}

#[tokio::test]
async fn a_read_whose_connection_keeps_dropping_is_still_upstream_unreachable() {
    let app = TestApp::start().await;
    let path = format!("/hostpools/{AVD_POOL}/sessionhosts");
    // The token is cached by a first good call; then every connection drops.
    assert_eq!(app.get(&app.keys.operator, &path).await.status(), 200);
    app.arm().set_faults(FaultSettings {
        drop_rate: 1.0,
        ..FaultSettings::default()
    });
    let r = app.get(&app.keys.operator, &path).await;
    let b = problem(r, 502, "upstream_unreachable").await;
    assert_eq!(b["detail"], "The backend could not be reached.");
}
