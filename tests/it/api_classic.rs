//! A WVD classic pool through the same HTTP API and JSON shapes as AVD.

use crate::support::app::{TestApp, problem};
use serde_json::{Value, json};
use sessiongate::emulator::wvd_classic::EnumStyle;

const POOL: &str = "classic-demo";
const BROKER_POOL: &str = "classic-hp1";

fn classic(app: &TestApp) -> std::sync::Arc<sessiongate::emulator::wvd_classic::ClassicState> {
    app.backends.classic.state()
}

/// A fresh session on the first broker host, for a user nobody else has.
fn target(app: &TestApp, upn: &str) -> (String, u32) {
    let host = classic(app).hosts(BROKER_POOL).into_iter().next().unwrap();
    let id = classic(app).add_session(BROKER_POOL, &host, upn).unwrap();
    (host, id)
}

#[tokio::test]
async fn classic_pool_is_listed_as_classic_with_the_same_shapes() {
    let app = TestApp::start().await;
    let v: Value = app
        .get(&app.keys.reader, "/hostpools")
        .await
        .json()
        .await
        .unwrap();
    let p = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == POOL)
        .unwrap()
        .clone();
    assert_eq!(p["provider"], "wvd-classic");
    assert_eq!(p["capabilities"]["classic"], true);
    assert!(
        p["capabilities"]["service"]
            .as_str()
            .unwrap()
            .contains("classic")
    );

    let v: Value = app
        .get(&app.keys.reader, &format!("/hostpools/{POOL}/sessions"))
        .await
        .json()
        .await
        .unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), classic(&app).session_count(BROKER_POOL));
    for k in [
        "pool",
        "host",
        "id",
        "user",
        "state",
        "raw_state",
        "created_at",
    ] {
        assert!(sessions[0].get(k).is_some(), "{k} in {}", sessions[0]);
    }
    let v: Value = app
        .get(&app.keys.reader, &format!("/hostpools/{POOL}/sessionhosts"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["hosts"].as_array().unwrap().len(),
        classic(&app).hosts(BROKER_POOL).len()
    );
}

#[tokio::test]
async fn enums_as_integers_still_normalise() {
    let app = TestApp::start().await;
    let (host, id) = target(&app, "int.user@contoso.com");
    classic(&app).set_session_state(BROKER_POOL, &host, id, "Disconnected");
    classic(&app).set_enum_style(EnumStyle::Integers);
    let v: Value = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{POOL}/sessionhosts/{host}/sessions/{id}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "disconnected", "{v}");
    assert_eq!(v["user"], "int.user@contoso.com");
}

#[tokio::test]
async fn logoff_disconnect_and_message() {
    let app = TestApp::start().await;
    let (host, id) = target(&app, "classic.user@contoso.com");
    let base = app.session_url(POOL, &host, id);

    let r = app
        .post(&app.keys.operator, &format!("{base}/disconnect"), None)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        classic(&app)
            .session_state(BROKER_POOL, &host, id)
            .as_deref(),
        Some("Disconnected")
    );

    let body = "Maintenance at 18:00 & after: save work = 100% #now";
    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/message"),
            Some(json!({"title": "IT / Notice?", "body": body})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let m = classic(&app).messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].body, body);
    assert_eq!(m[0].title, "IT / Notice?");

    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/logoff"),
            Some(json!({"expected_user": "CLASSIC.USER@contoso.com"})),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    assert_eq!(classic(&app).session_state(BROKER_POOL, &host, id), None);
    let r = app
        .post(&app.keys.operator, &format!("{base}/logoff"), None)
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "already_gone");
}

#[tokio::test]
async fn ghost_sessions_need_force() {
    let app = TestApp::start().await;
    let gone = "gone-host.contoso.com";
    let id = classic(&app)
        .add_ghost_session(BROKER_POOL, gone, "ghost.user@contoso.com")
        .unwrap();
    let url = format!("{}/logoff", app.session_url(POOL, gone, id));
    let r = app.post(&app.keys.operator, &url, None).await;
    problem(r, 502, "host_unreachable").await;
    assert!(
        classic(&app).session_state(BROKER_POOL, gone, id).is_some(),
        "still listed"
    );
    let r = app
        .post(&app.keys.operator, &url, Some(json!({"force": true})))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    assert!(
        classic(&app).session_state(BROKER_POOL, gone, id).is_none(),
        "force cleared the ghost"
    );
}

#[tokio::test]
async fn unknown_host_and_session() {
    let app = TestApp::start().await;
    let host = classic(&app).hosts(BROKER_POOL).into_iter().next().unwrap();
    problem(
        app.get(
            &app.keys.reader,
            &format!("/hostpools/{POOL}/sessionhosts/nowhere.contoso.com/sessions"),
        )
        .await,
        404,
        "host_not_found",
    )
    .await;
    problem(
        app.get(
            &app.keys.reader,
            &format!("/hostpools/{POOL}/sessionhosts/{host}/sessions/4000"),
        )
        .await,
        404,
        "session_not_found",
    )
    .await;
}
