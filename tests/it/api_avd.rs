//! The HTTP API end to end over loopback: gateway ↔ real AVD adapter ↔ ARM emulator.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use serde_json::{Value, json};
use sessiongate::emulator::arm::{ArmOp, ThrottleSettings};

#[tokio::test]
async fn pools_list_shows_provider_and_actions() {
    let app = TestApp::start().await;
    let r = app.get(&app.keys.operator, "/hostpools").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    let avd = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == AVD_POOL)
        .expect("avd pool listed");
    assert_eq!(avd["provider"], "avd");
    let actions: Vec<&str> = avd["capabilities"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"logoff")
            && actions.contains(&"disconnect")
            && actions.contains(&"message")
    );
    assert!(!actions.contains(&"lock"));
    assert_eq!(avd["capabilities"]["classic"], false);
}

#[tokio::test]
async fn missing_invalid_and_wrong_header_keys_are_401() {
    let app = TestApp::start().await;
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    problem(r, 401, "unauthenticated").await;

    let r = app
        .get("sg_not-a-real-key-at-all-000000000000", "/hostpools")
        .await;
    problem(r, 401, "invalid_credentials").await;

    // X-API-Key works as well as Authorization.
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .header("X-API-Key", &app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Health, the console's page (`[console] enabled`) and (with `[docs] public`, the
    // default) the API documentation need no key; every other route does.
    for (path, want) in [
        ("/healthz", 200),
        ("/", 200),
        ("/openapi.yaml", 200),
        ("/docs", 200),
        ("/metrics", 401),
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{path}");
    }
}

#[tokio::test]
async fn request_id_is_accepted_and_returned() {
    let app = TestApp::start().await;
    let r = app
        .http
        .get(format!("{}/hostpools/nope/sessions", app.url))
        .bearer_auth(&app.keys.operator)
        .header("x-request-id", "ticket-42.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "ticket-42.abc");
    let b = problem(r, 404, "pool_not_found").await;
    assert_eq!(b["request_id"], "ticket-42.abc");
    assert_eq!(b["instance"], "/hostpools/nope/sessions");
}

#[tokio::test]
async fn pool_sessions_follow_every_page_and_filter() {
    let app = TestApp::start().await;
    app.arm().set_page_size(2);
    let want = app.arm().sessions(ARM_POOL);
    assert!(want.len() > 4, "enough sessions for several pages");
    let r = app
        .get(&app.keys.reader, &format!("/hostpools/{AVD_POOL}/sessions"))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let got = v["sessions"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "all pages followed");
    let s = &got[0];
    for k in [
        "pool",
        "host",
        "id",
        "user",
        "ad_user",
        "state",
        "raw_state",
        "application_type",
        "created_at",
    ] {
        assert!(s.get(k).is_some(), "session has {k}: {s}");
    }
    assert_eq!(s["pool"], AVD_POOL);

    let user = want[0].user.clone();
    let r = app
        .get(
            &app.keys.reader,
            &format!(
                "/hostpools/{AVD_POOL}/sessions?user={}",
                user.to_uppercase()
            ),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let got = v["sessions"].as_array().unwrap();
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|s| s["user"].as_str().unwrap().eq_ignore_ascii_case(&user))
    );

    app.arm()
        .set_session_state(ARM_POOL, &want[0].host, want[0].id, "Disconnected");
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessions?state=disconnected"),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let got = v["sessions"].as_array().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["state"], "disconnected");
    assert_eq!(got[0]["raw_state"], "Disconnected");

    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessions?state=sleeping"),
        )
        .await;
    problem(r, 400, "invalid_query").await;
}

#[tokio::test]
async fn hosts_host_sessions_and_one_session() {
    let app = TestApp::start().await;
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessionhosts"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), app.arm().hosts(ARM_POOL).len());
    assert!(hosts[0].get("drain").is_some() && hosts[0].get("session_count").is_some());

    let (host, id, user) = app.avd_target();
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions"),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["host"].as_str().unwrap().eq_ignore_ascii_case(&host))
    );

    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{id}"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["user"], user.as_str());

    // The ARM name form is accepted for the id too.
    let r = app
        .get(
            &app.keys.reader,
            &format!(
                "/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{ARM_POOL}%2F{host}%2F{id}"
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn not_found_and_malformed_targets_have_distinct_codes() {
    let app = TestApp::start().await;
    let (host, _, _) = app.avd_target();
    let k = &app.keys.reader;
    problem(
        app.get(k, "/hostpools/nope/sessionhosts").await,
        404,
        "pool_not_found",
    )
    .await;
    problem(
        app.get(
            k,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/sh-unknown.contoso.com/sessions"),
        )
        .await,
        404,
        "host_not_found",
    )
    .await;
    problem(
        app.get(
            k,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/999"),
        )
        .await,
        404,
        "session_not_found",
    )
    .await;
    problem(
        app.get(
            k,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/abc"),
        )
        .await,
        400,
        "invalid_session_id",
    )
    .await;
    problem(
        app.get(
            k,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/bad;host/sessions"),
        )
        .await,
        400,
        "invalid_host_name",
    )
    .await;
    problem(app.get(k, "/no/such/route").await, 404, "route_not_found").await;
    let r = app
        .http
        .delete(format!("{}/hostpools", app.url))
        .bearer_auth(k)
        .send()
        .await
        .unwrap();
    problem(r, 405, "method_not_allowed").await;
}

/// Every operation of the OpenAPI document is served with its method (the router and the
/// document come from one registration); the audit record names the matched route and the
/// action; a trailing slash is not a route.
#[tokio::test]
async fn every_documented_operation_is_routed_and_audited_by_its_route() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let doc = serde_json::to_value(sessiongate::api::router::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 38, "{:?}", paths.keys());
    let mut seen = Vec::new();
    for (tpl, item) in paths {
        let path = tpl
            .replace("{pool}", AVD_POOL)
            .replace("{host}", &host)
            .replace("{id}", &id.to_string())
            .replace("{action}", "logoff")
            .replace("{upn}", "dana@contoso.com");
        for method in item.as_object().unwrap().keys() {
            let op = &item[method]["operationId"];
            let r = match method.as_str() {
                "get" => app.get(&app.keys.admin, &path).await,
                "post" => {
                    let url = format!("{}{path}", app.url);
                    // Each route's own body shape: a whole host names ids, a pool names
                    // targets, the others need none; `message` adds title and body.
                    let mut body = if tpl.contains("{host}/sessions/") && !tpl.contains("{id}") {
                        json!({"dry_run": true, "ids": [id]})
                    } else if tpl.starts_with("/hostpools/{pool}/sessions/") {
                        json!({"dry_run": true, "targets": [{"host": host, "id": id.to_string()}]})
                    } else {
                        json!({"dry_run": true})
                    };
                    if path.ends_with("/message") {
                        body["title"] = "t".into();
                        body["body"] = "b".into();
                    }
                    app.post(&app.keys.admin, &url, Some(body)).await
                }
                other => panic!("unexpected method {other} for {tpl}"),
            };
            let status = r.status().as_u16();
            let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("route_not_found") && !body.contains("method_not_allowed"),
                "{method} {tpl} is documented but not routed: {status} {body}"
            );
            if tpl.starts_with("/hostpools/") {
                let a: Value = app
                    .get(&app.keys.auditor, &format!("/audit?request_id={rid}"))
                    .await
                    .json()
                    .await
                    .unwrap();
                let ev = a["events"]
                    .as_array()
                    .unwrap()
                    .first()
                    .unwrap_or_else(|| panic!("{tpl}: audited: {a}"));
                assert_eq!(ev["route"], tpl.as_str(), "{ev}");
                assert_eq!(ev["target"]["pool"], AVD_POOL, "{ev}");
                if method == "get" {
                    assert_eq!(&ev["action"], op, "{ev}");
                } else {
                    assert_eq!(ev["action"].as_str(), path.rsplit('/').next(), "{ev}");
                }
            }
            seen.push(format!("{method} {tpl}"));
            // A trailing slash names no route.
            if tpl != "/" && method == "get" {
                let r = app.get(&app.keys.admin, &format!("{path}/")).await;
                problem(r, 404, "route_not_found").await;
            }
        }
    }
    let documented: usize = paths.values().map(|i| i.as_object().unwrap().len()).sum();
    assert_eq!(seen.len(), documented, "{seen:?}");
}

#[tokio::test]
async fn logoff_then_again_is_already_gone() {
    let app = TestApp::start().await;
    let (host, id, user) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let r = app.post(&app.keys.operator, &url, None).await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done");
    assert_eq!(v["action"], "logoff");
    assert_eq!(v["user"], user.as_str());
    assert_eq!(v["request_id"], rid.as_str());
    assert_eq!(v["target"]["session_id"], id);
    assert!(
        !app.arm()
            .sessions(ARM_POOL)
            .iter()
            .any(|s| s.host == host && s.id == id)
    );
    assert_eq!(app.arm().calls(ArmOp::Logoff), 1);

    let r = app
        .post(&app.keys.operator, &url, Some(json!({"force": true})))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "already_gone");
}

#[tokio::test]
async fn expected_user_mismatch_after_id_reuse_is_409_and_does_nothing() {
    let app = TestApp::start().await;
    let (host, id, user) = app.avd_target();
    assert!(app.arm().remove_session(ARM_POOL, &host, id));
    // Windows hands the freed id to the next logon.
    let reused = app
        .arm()
        .add_session(ARM_POOL, &host, "someone.else@contoso.com")
        .unwrap();
    assert_eq!(reused, id, "emulator reuses the lowest free id");
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let r = app
        .post(
            &app.keys.operator,
            &url,
            Some(json!({"expected_user": user})),
        )
        .await;
    let b = problem(r, 409, "user_mismatch").await;
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("someone.else@contoso.com")
    );
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);
    assert!(
        app.arm()
            .sessions(ARM_POOL)
            .iter()
            .any(|s| s.host == host && s.id == id)
    );

    let r = app
        .post(
            &app.keys.operator,
            &url,
            Some(json!({"expected_user": "SOMEONE.ELSE@contoso.com"})),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn dry_run_checks_and_writes_nothing() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    for action in ["logoff", "disconnect"] {
        let url = format!("{}/{action}", app.session_url(AVD_POOL, &host, id));
        let r = app
            .post(&app.keys.operator, &url, Some(json!({"dry_run": true})))
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["outcome"], "would_do");
        assert_eq!(v["dry_run"], true);
    }
    let url = format!("{}/message", app.session_url(AVD_POOL, &host, id));
    let r = app
        .post(
            &app.keys.operator,
            &url,
            Some(json!({"title": "t", "body": "b", "dry_run": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 0);
    assert_eq!(app.arm().calls(ArmOp::SendMessage), 0);
    assert!(app.arm().messages().is_empty());
    // Dry run on a missing session still resolves the target.
    let url = format!("{}/disconnect", app.session_url(AVD_POOL, &host, 999));
    problem(
        app.post(&app.keys.operator, &url, Some(json!({"dry_run": true})))
            .await,
        404,
        "session_not_found",
    )
    .await;
}

#[tokio::test]
async fn disconnect_and_message() {
    let app = TestApp::start().await;
    let (host, id, user) = app.avd_target();
    let base = app.session_url(AVD_POOL, &host, id);
    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/disconnect"),
            Some(json!({"reason": "stuck", "ticket": "INC001"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let s = app
        .arm()
        .sessions(ARM_POOL)
        .into_iter()
        .find(|s| s.host == host && s.id == id)
        .unwrap();
    assert_eq!(s.state, "Disconnected");

    let body = "Please save your work: café & \"quotes\" <tags>\nline two";
    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/message"),
            Some(json!({"title": "Maintenance", "body": body})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let m = app.arm().messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].body, body);
    assert_eq!(m[0].title, "Maintenance");
    assert_eq!(m[0].user, user);
}

#[tokio::test]
async fn bad_bodies_are_problems_not_500s() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let base = app.session_url(AVD_POOL, &host, id);
    let k = &app.keys.operator;
    let raw = |url: String, body: &'static str, ct: &'static str| {
        app.http
            .post(url)
            .bearer_auth(k)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    problem(
        raw(format!("{base}/logoff"), "{not json", "application/json")
            .await
            .unwrap(),
        400,
        "invalid_json",
    )
    .await;
    problem(
        raw(
            format!("{base}/logoff"),
            r#"{"forse": true}"#,
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    problem(
        raw(
            format!("{base}/logoff"),
            r#"{"force": "yes"}"#,
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    problem(
        raw(
            format!("{base}/logoff"),
            "force=true",
            "application/x-www-form-urlencoded",
        )
        .await
        .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    problem(
        raw(
            format!("{base}/message"),
            r#"{"title": "", "body": "x"}"#,
            "application/json",
        )
        .await
        .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    let long = "x".repeat(300);
    problem(
        app.post(
            k,
            &format!("{base}/message"),
            Some(json!({"title": long, "body": "x"})),
        )
        .await,
        422,
        "invalid_body",
    )
    .await;
    let huge = "y".repeat(200_000);
    problem(
        app.post(
            k,
            &format!("{base}/message"),
            Some(json!({"title": "t", "body": huge})),
        )
        .await,
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(app.arm().calls(ArmOp::SendMessage), 0);
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);
}

#[tokio::test]
async fn throttling_is_waited_out_within_budget() {
    let app = TestApp::start().await;
    app.arm().set_throttling(Some(ThrottleSettings {
        read_capacity: 2,
        read_refill_per_sec: 2,
        ..ThrottleSettings::default()
    }));
    for _ in 0..5 {
        let r = app
            .get(
                &app.keys.reader,
                &format!("/hostpools/{AVD_POOL}/sessionhosts"),
            )
            .await;
        assert_eq!(r.status(), 200, "throttled reads recover after Retry-After");
    }
}

#[tokio::test]
async fn throttling_beyond_budget_is_503_with_retry_after() {
    let app = TestApp::start_with(|c| {
        for p in &mut c.pools {
            if let sessiongate::config::ProviderConfig::Avd(a) = &mut p.provider {
                a.retry_budget_secs = 1;
            }
        }
    })
    .await;
    // A one-token bucket refilled once a second: back-to-back reads exceed a 1 s budget.
    app.arm().set_throttling(Some(ThrottleSettings {
        read_capacity: 1,
        read_refill_per_sec: 1,
        ..ThrottleSettings::default()
    }));
    let mut saw = None;
    for _ in 0..6 {
        let r = app
            .get(&app.keys.reader, &format!("/hostpools/{AVD_POOL}/sessions"))
            .await;
        if r.status() == 503 {
            saw = Some(r);
            break;
        }
    }
    let r = saw.expect("a 503 once the retry budget is exceeded");
    assert!(r.headers().contains_key("retry-after"));
    problem(r, 503, "upstream_throttled").await;
}

#[tokio::test]
async fn upstream_auth_failure_is_502_not_401() {
    let app = TestApp::start().await;
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessionhosts"),
        )
        .await;
    assert_eq!(r.status(), 200, "a token is fetched and cached");
    // The secret is rotated badly, then the cached token stops working.
    let secret = app.dir.path().join("arm-client-secret");
    std::fs::write(&secret, "wrong-secret").unwrap();
    app.arm().revoke_tokens();
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessionhosts"),
        )
        .await;
    problem(r, 502, "upstream_auth_failed").await;
}

#[tokio::test]
async fn roles_and_scopes() {
    let other_key = sessiongate::auth::apikey::generate_key();
    let hash = sessiongate::auth::apikey::hash_key(&other_key);
    let app = TestApp::start_with(move |c| {
        c.auth
            .api_keys
            .push(sessiongate::auth::apikey::ApiKeyConfig {
                id: "other-pool-operator".into(),
                hash,
                roles: vec![sessiongate::auth::Role::Operator],
                pools: vec!["some-other-pool".into()],
                expires_at: None,
                display: None,
            });
    })
    .await;
    let (host, id, _) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let b = problem(
        app.post(&app.keys.reader, &url, None).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(b["missing_permission"], "sessions.act");
    // A key scoped to another pool does not learn that this pool exists.
    problem(
        app.post(&other_key, &url, None).await,
        404,
        "pool_not_found",
    )
    .await;
    let r = app.get(&other_key, "/hostpools").await;
    let v: Value = r.json().await.unwrap();
    assert!(v["pools"].as_array().unwrap().is_empty(), "{v}");
    // The auditor may read the audit log but not act.
    let b = problem(
        app.post(&app.keys.auditor, &url, None).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(b["missing_permission"], "sessions.act");
    // Only auditors read the audit log.
    let b = problem(
        app.get(&app.keys.operator, "/audit").await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(b["missing_permission"], "audit.read");
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);
}

#[tokio::test]
async fn every_call_is_audited_with_intent_and_outcome() {
    let app = TestApp::start().await;
    let (host, id, user) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let r = app
        .post(
            &app.keys.operator,
            &url,
            Some(json!({"reason": "hung", "ticket": "INC42"})),
        )
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.status(), 200);
    let _ = app
        .http
        .get(format!("{}/hostpools", app.url))
        .send()
        .await
        .unwrap(); // 401

    let r = app
        .get(&app.keys.auditor, &format!("/audit?request_id={rid}"))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let evs = v["events"].as_array().unwrap();
    let kinds: Vec<&str> = evs.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"intent") && kinds.contains(&"outcome"),
        "{kinds:?}"
    );
    let outcome = evs.iter().find(|e| e["kind"] == "outcome").unwrap();
    assert_eq!(outcome["outcome"], "done");
    assert_eq!(outcome["target"]["user"], user.as_str());
    assert_eq!(outcome["params"]["ticket"], "INC42");
    assert_eq!(outcome["actor"]["id"], "apikey:demo-operator");

    let r = app
        .get(&app.keys.auditor, "/audit?outcome=unauthenticated")
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(
        !v["events"].as_array().unwrap().is_empty(),
        "401s are audited"
    );
}

#[tokio::test]
async fn openapi_is_served_and_matches_the_committed_file() {
    let app = TestApp::start().await;
    let r = app.get(&app.keys.reader, "/openapi.yaml").await;
    assert_eq!(r.status(), 200);
    let served = r.text().await.unwrap();
    let generated = sessiongate::api::openapi::yaml().unwrap();
    assert_eq!(served, generated);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert!(
        committed == generated,
        "openapi.yaml is stale: run `cargo run -- openapi > openapi.yaml` and commit it"
    );
}

/// Sends one raw HTTP/1.1 request (the path exactly as given, as `curl --path-as-is` does) and
/// returns the status code and body.
async fn raw_request(app: &TestApp, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        app.keys.admin
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn dot_segments_are_not_host_names() {
    let app = TestApp::start().await;
    let (_, id, _) = app.avd_target();
    let before = app.arm().sessions(ARM_POOL).len();
    for host in ["..", ".", "%2e%2e", ".%2e", "%2E", "..."] {
        let (st, body) = raw_request(
            &app,
            "GET",
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions"),
        )
        .await;
        assert_eq!(st, 400, "GET with host {host}: {body}");
        assert!(body.contains("invalid_host_name"), "{body}");
        let (st, body) = raw_request(
            &app,
            "POST",
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{id}/logoff"),
        )
        .await;
        assert_eq!(st, 400, "POST with host {host}: {body}");
        assert!(body.contains("invalid_host_name"), "{body}");
    }
    for pool in ["..", "%2e"] {
        let (st, body) = raw_request(&app, "GET", &format!("/hostpools/{pool}/sessions")).await;
        assert_eq!(st, 400, "GET with pool {pool}: {body}");
    }
    assert_eq!(
        app.arm().sessions(ARM_POOL).len(),
        before,
        "nothing logged off"
    );
}

#[tokio::test]
async fn bytes_after_the_json_body_are_refused_and_nothing_is_done() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let base = app.session_url(AVD_POOL, &host, id);
    for body in [
        r#"{"dry_run":true}{"dry_run":false}"#,
        r#"{"dry_run":false}{"dry_run":true}"#,
        "{}x",
        "{} {}",
        r#"{"force": "yes"} trailing"#,
    ] {
        let r = app
            .http
            .post(format!("{base}/disconnect"))
            .bearer_auth(&app.keys.operator)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        problem(r, 400, "invalid_json").await;
    }
    let s = app
        .arm()
        .sessions(ARM_POOL)
        .into_iter()
        .find(|s| s.host == host && s.id == id)
        .expect("session still there");
    assert_eq!(s.state, "Active", "nothing was disconnected");
    // Trailing white space is still fine.
    let r = app
        .http
        .post(format!("{base}/disconnect"))
        .bearer_auth(&app.keys.operator)
        .header("content-type", "application/json")
        .body("{\"dry_run\":true}\n  ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn declared_length_over_the_limit_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let addr = app.url.trim_start_matches("http://").to_string();
    let limit = app.config.server.body_limit_bytes;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Announces more than the limit, sends two bytes, and keeps the connection open.
    let req = format!(
        "POST /hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{id}/logoff HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{}}",
        app.keys.operator,
        limit + 1
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer before the body arrives")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(
        app.arm()
            .sessions(ARM_POOL)
            .iter()
            .filter(|x| x.host == host && x.id == id)
            .count(),
        1,
        "nothing logged off"
    );
}
