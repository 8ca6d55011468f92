//! Strict edges (issue 11, findings 10 and 11): unknown query parameters are refused on every
//! route.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use serde_json::{Value, json};
use sessiongate::emulator::arm::ArmOp;

#[tokio::test]
async fn every_routed_operation_refuses_an_unknown_query_parameter() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let doc = serde_json::to_value(sessiongate::api::router::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut refused = Vec::new();
    for (tpl, item) in paths {
        let path = tpl
            .replace("{pool}", AVD_POOL)
            .replace("{host}", &host)
            .replace("{id}", &id.to_string());
        for method in item.as_object().unwrap().keys() {
            let url = format!("{}{path}?dry_runn=true", app.url);
            let r = match method.as_str() {
                "get" => app.http.get(&url).bearer_auth(&app.keys.admin).send().await,
                "post" => {
                    let body = if path.ends_with("/message") {
                        json!({"title": "t", "body": "b"})
                    } else {
                        json!({})
                    };
                    app.http
                        .post(&url)
                        .bearer_auth(&app.keys.admin)
                        .json(&body)
                        .send()
                        .await
                }
                other => panic!("unexpected method {other} for {tpl}"),
            }
            .unwrap();
            let b = problem(r, 400, "invalid_query").await;
            assert!(
                b["detail"].as_str().unwrap().contains("dry_runn"),
                "{method} {tpl}: {b}"
            );
            refused.push(format!("{method} {tpl}"));
        }
    }
    assert_eq!(refused.len(), 14, "{refused:?}");
    // Nothing was acted on.
    for op in [ArmOp::Logoff, ArmOp::Disconnect, ArmOp::SendMessage] {
        assert_eq!(app.arm().calls(op), 0, "{op:?}");
    }
    assert!(
        app.arm()
            .sessions(ARM_POOL)
            .iter()
            .any(|s| s.host == host && s.id == id)
    );
}

#[tokio::test]
async fn declared_query_parameters_still_work_and_unknown_ones_are_audited_invalid() {
    let app = TestApp::start().await;
    let r = app
        .get(
            &app.keys.operator,
            &format!("/hostpools/{AVD_POOL}/sessions?state=active&user=nobody%40contoso.com"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app.get(&app.keys.auditor, "/audit?limit=1").await;
    assert_eq!(r.status(), 200);
    let r = app.get(&app.keys.operator, "/hostpools?pool=x").await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    problem(r, 400, "invalid_query").await;
    let a: Value = app
        .get(&app.keys.auditor, &format!("/audit?request_id={rid}"))
        .await
        .json()
        .await
        .unwrap();
    let ev = &a["events"][0];
    assert_eq!(ev["outcome"], "invalid", "{a}");
    assert_eq!(ev["error_code"], "invalid_query", "{a}");
}
