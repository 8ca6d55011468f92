//! The OpenAPI document states what the server does (issue 11, finding 12): every status a route
//! can answer, as problem+json; path-parameter and query bounds that the server enforces exactly;
//! optional bodies that are absent, never `null`; resolvable references; links from lists to
//! the operations on their items. Each claim of the document is checked against the running
//! server where it can be.

use crate::support::app::{AVD_POOL, TestApp, problem};
use serde_json::{Value, json};

fn doc() -> Value {
    serde_json::to_value(sessiongate::api::router::openapi()).unwrap()
}

/// Every operation: (path template, method, operation object).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((path.clone(), method.clone(), op.clone()));
        }
    }
    out
}

fn has_param(op: &Value, name: &str, location: &str) -> bool {
    op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == location))
}

fn param_schema(op: &Value, name: &str) -> Value {
    op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {op}"))["schema"]
        .clone()
}

/// The statuses each kind of operation can answer are all declared, each as problem+json.
#[test]
fn every_operation_declares_the_errors_it_can_answer() {
    let doc = doc();
    let ops = operations(&doc);
    assert_eq!(ops.len(), 38);
    for (path, method, op) in &ops {
        let protected = op["security"].as_array().is_some_and(|s| !s.is_empty());
        let mut want = vec!["400", "503"];
        if protected {
            want.extend(["401", "403"]);
        }
        if has_param(op, "pool", "path") {
            want.extend(["404", "502", "504"]);
        }
        // A body (every action; `POST /jobs/{id}/cancel` takes none).
        if method == "post" && op.get("requestBody").is_some() {
            want.extend(["409", "413", "415", "422", "429"]);
        }
        for status in want {
            let r = &op["responses"][status];
            assert!(r.is_object(), "{method} {path} does not declare {status}");
            assert_eq!(
                r["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{method} {path} {status}"
            );
        }
    }
    // The probes and the console's static assets are not protected, and the webhook receiver
    // is authenticated by each source's own scheme; everything else needs the API's credentials.
    let unprotected: Vec<_> = ops
        .iter()
        .filter(|(_, _, op)| op["security"].as_array().is_none_or(|s| s.is_empty()))
        .map(|(p, _, _)| p.as_str())
        .collect();
    assert_eq!(
        unprotected,
        [
            "/",
            "/console/app.css",
            "/console/app.js",
            "/healthz",
            "/readyz",
            "/webhooks/{source}"
        ]
    );
}

/// Every `$ref` points at something in the document (finding 12: `StateFilter` did not).
#[test]
fn every_reference_resolves() {
    fn walk(v: &Value, doc: &Value, seen: &mut usize) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let pointer = r.strip_prefix('#').expect("a local reference");
                    assert!(doc.pointer(pointer).is_some(), "unresolvable {r}");
                    *seen += 1;
                }
                m.values().for_each(|x| walk(x, doc, seen));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, doc, seen)),
            _ => {}
        }
    }
    let doc = doc();
    let mut seen = 0;
    walk(&doc, &doc, &mut seen);
    assert!(seen > 50, "only {seen} references walked");
}

/// The path-parameter schemas state the bounds the server enforces, and the server keeps to
/// them at the edges: the longest valid name and the largest session id are taken (404 for an
/// unknown target), one more is refused 400.
#[tokio::test]
async fn path_parameter_bounds_are_the_servers() {
    let doc = doc();
    let ops = operations(&doc);
    let (_, _, session_op) = ops
        .iter()
        .find(|(_, _, op)| op["operationId"] == "get_session")
        .unwrap();
    let pool = param_schema(session_op, "pool");
    let host = param_schema(session_op, "host");
    let id = param_schema(session_op, "id");
    assert_eq!(
        (pool["minLength"].as_u64(), pool["maxLength"].as_u64()),
        (Some(1), Some(64))
    );
    assert_eq!(
        (host["minLength"].as_u64(), host["maxLength"].as_u64()),
        (Some(1), Some(255))
    );
    assert_eq!(id["type"], "integer");
    assert_eq!(
        (id["minimum"].as_u64(), id["maximum"].as_u64()),
        (Some(0), Some(u64::from(u32::MAX)))
    );
    for p in [&pool, &host] {
        assert!(p["pattern"].is_string(), "{p}");
    }
    // Every operation naming a pool, host or id uses the same schema (a job's `{id}` is a
    // UUID, not a session id).
    for (path, _, op) in ops.iter().filter(|(p, _, _)| !p.starts_with("/jobs/")) {
        for (name, want) in [("pool", &pool), ("host", &host), ("id", &id)] {
            if has_param(op, name, "path") {
                assert_eq!(&param_schema(op, name), want, "{path} {name}");
            }
        }
    }

    let app = TestApp::start().await;
    let k = &app.keys.admin;
    let (avd_host, _, _) = app.avd_target();
    let name = |n: usize| "p".repeat(n);
    problem(
        app.get(k, &format!("/hostpools/{}/sessionhosts", name(64)))
            .await,
        404,
        "pool_not_found",
    )
    .await;
    problem(
        app.get(k, &format!("/hostpools/{}/sessionhosts", name(65)))
            .await,
        400,
        "invalid_pool_name",
    )
    .await;
    let host_path = |h: &str| format!("/hostpools/{AVD_POOL}/sessionhosts/{h}/sessions");
    let r = app.get(k, &host_path(&name(255))).await;
    assert_ne!(r.status(), 400, "a 255-character host name is valid");
    problem(
        app.get(k, &host_path(&name(256))).await,
        400,
        "invalid_host_name",
    )
    .await;
    let session = |id: &str| format!("/hostpools/{AVD_POOL}/sessionhosts/{avd_host}/sessions/{id}");
    problem(
        app.get(k, &session(&u32::MAX.to_string())).await,
        404,
        "session_not_found",
    )
    .await;
    problem(
        app.get(k, &session(&(u64::from(u32::MAX) + 1).to_string()))
            .await,
        400,
        "invalid_session_id",
    )
    .await;
}

/// `limit` on `/audit`: the document's bounds are the server's (finding 12: `minimum: 0`).
#[tokio::test]
async fn audit_limit_bounds_are_the_servers() {
    let doc = doc();
    let op = &doc["paths"]["/audit"]["get"];
    let limit = param_schema(op, "limit");
    let (min, max) = (
        limit["minimum"].as_u64().unwrap(),
        limit["maximum"].as_u64().unwrap(),
    );
    assert_eq!((min, max), (1, 1000));
    assert_eq!(param_schema(op, "cursor")["minLength"], 1);
    for p in ["since", "until"] {
        assert_eq!(param_schema(op, p)["format"], "date-time", "{p}");
    }
    let app = TestApp::start().await;
    let k = &app.keys.auditor;
    for ok in [min, max] {
        assert_eq!(
            app.get(k, &format!("/audit?limit={ok}")).await.status(),
            200
        );
    }
    for bad in [min - 1, max + 1] {
        problem(
            app.get(k, &format!("/audit?limit={bad}")).await,
            400,
            "invalid_query",
        )
        .await;
    }
    problem(app.get(k, "/audit?cursor=").await, 400, "invalid_query").await;
    problem(app.get(k, "/audit?cursor=0").await, 400, "invalid_query").await;
}

/// An optional body is absent or an object; the document does not offer `null`, and the
/// server refuses it as a body of the wrong shape (422 `invalid_body`, as documented).
#[tokio::test]
async fn optional_bodies_are_absent_never_null() {
    let doc = doc();
    for (path, method, op) in operations(&doc) {
        if let Some(body) = op.get("requestBody") {
            let schema = &body["content"]["application/json"]["schema"];
            assert!(
                schema["$ref"].is_string(),
                "{method} {path}: the body is one object schema, got {schema}"
            );
            assert!(op["responses"]["422"].is_object(), "{method} {path}");
        }
    }
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let url = format!("{}/disconnect", app.session_url(AVD_POOL, &host, id));
    let r = app
        .http
        .post(&url)
        .bearer_auth(&app.keys.admin)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    problem(r, 422, "invalid_body").await;
    // Nothing was done: an absent body (= `{}`) still finds the session and acts.
    let r = app.post(&app.keys.admin, &url, None).await;
    assert_eq!(r.status(), 200);
}

/// The message body requires a title and a body, with the bounds and the character set the
/// server checks.
#[tokio::test]
async fn message_body_states_its_required_fields_and_bounds() {
    let doc = doc();
    let m = &doc["components"]["schemas"]["MessageBody"];
    let required: Vec<&str> = m["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        required.contains(&"title") && required.contains(&"body"),
        "{m}"
    );
    for (field, max) in [("title", 256), ("body", 4096)] {
        let f = &m["properties"][field];
        assert_eq!(
            (f["minLength"].as_u64(), f["maxLength"].as_u64()),
            (Some(1), Some(max))
        );
        assert!(f["pattern"].is_string());
    }
    for schema in ["LogoffBody", "DisconnectBody", "MessageBody"] {
        let s = &doc["components"]["schemas"][schema];
        for (field, max) in [("expected_user", 256), ("reason", 1000), ("ticket", 128)] {
            let f = &s["properties"][field];
            assert_eq!(f["maxLength"].as_u64(), Some(max), "{schema}.{field}");
            assert_eq!(f["minLength"].as_u64(), Some(1), "{schema}.{field}");
        }
    }
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    let url = format!("{}/message", app.session_url(AVD_POOL, &host, id));
    let k = &app.keys.admin;
    for bad in [
        json!({}),
        json!({"title": "t"}),
        json!({"body": "b"}),
        json!({"title": "t", "body": "b".repeat(4097)}),
        json!({"title": "t\u{7}", "body": "b"}),
    ] {
        problem(app.post(k, &url, Some(bad)).await, 422, "invalid_body").await;
    }
    let ok = json!({"title": "t".repeat(256), "body": "line 1\nline 2\ttab", "dry_run": true});
    assert_eq!(app.post(k, &url, Some(ok)).await.status(), 200);
}

/// Lists link to the operations on their items (list → get → act), each link naming an
/// existing operation and filling every path parameter it has.
#[test]
fn lists_link_to_the_operations_on_their_items() {
    let doc = doc();
    let ops = operations(&doc);
    let by_id = |id: &str| {
        ops.iter()
            .find(|(_, _, op)| op["operationId"] == id)
            .map(|(_, _, op)| op.clone())
            .unwrap_or_else(|| panic!("no operation {id}"))
    };
    let mut links = 0;
    for (path, _, op) in &ops {
        let Some(ls) = op["responses"]["200"]["links"].as_object() else {
            continue;
        };
        for (name, link) in ls {
            let target = by_id(link["operationId"].as_str().expect("operationId"));
            for p in target["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let n = p["name"].as_str().unwrap();
                    assert!(
                        link["parameters"][n].is_string(),
                        "{path} link {name} does not fill {n}"
                    );
                }
            }
            links += 1;
        }
    }
    for (from, to) in [
        ("list_pools", "list_hosts"),
        ("list_hosts", "list_host_sessions"),
        ("list_sessions", "get_session"),
        ("list_host_sessions", "logoff"),
        ("get_session", "message"),
    ] {
        let op = by_id(from);
        assert_eq!(
            op["responses"]["200"]["links"][to]["operationId"], to,
            "{from} → {to}"
        );
    }
    assert!(links >= 20, "{links} links");
}
