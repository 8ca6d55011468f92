//! `GET /metrics` (issue 14, part 1): the Prometheus text format over loopback, the request
//! histogram labelled by route template (never the raw path), the upstream-call counters with
//! retries and throttles, audit commits, auth failures; who may scrape; the separate address.

use crate::support::{
    app::{AVD_POOL, TestApp, problem},
    free_port, header,
};
use sessiongate::config::Config;

/// The value of the series whose line starts with `series` (name and labels, as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The label names of one sample line (`name{a="x",b="y"} v`); values may hold any character
/// but an unescaped quote.
fn label_names(line: &str) -> Vec<String> {
    let Some(start) = line.find('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut rest = &line[start + 1..];
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(',').to_string());
        let after = &rest[eq + 2..];
        let end = after.find('"').expect("closing quote");
        rest = &after[end + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

async fn scrape(app: &TestApp, key: &str) -> String {
    let r = app.get(key, "/metrics").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_show_requests_by_route_and_upstream_calls() {
    let app = TestApp::start().await;
    let (host, id, _) = app.avd_target();
    // A list, a logoff, a refused credential, a path no route matches, a retried and a
    // throttled ARM call.
    let r = app
        .get(&app.keys.reader, &format!("/hostpools/{AVD_POOL}/sessions"))
        .await;
    assert_eq!(r.status(), 200);
    let logoff = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let r = app.post(&app.keys.operator, &logoff, None).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthenticated").await;
    let r = app.get(&app.keys.reader, "/no/such/route-7731").await;
    assert_eq!(r.status(), 404);
    app.arm().fail_next(1, 503);
    let r = app
        .get(&app.keys.reader, &format!("/hostpools/{AVD_POOL}/sessions"))
        .await;
    assert_eq!(r.status(), 200, "retried after one 503");
    app.arm().fail_next(1, 429);
    let r = app
        .get(&app.keys.reader, &format!("/hostpools/{AVD_POOL}/sessions"))
        .await;
    assert_eq!(r.status(), 200, "429 waited out");

    let text = scrape(&app, &app.keys.auditor).await;
    let route = "/hostpools/{pool}/sessionhosts/{host}/sessions/{id}/logoff";
    let count = |method: &str, route: &str, status: u16| {
        value(
            &text,
            &format!(
                "http_server_request_duration_seconds_count{{http_request_method=\"{method}\",http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(count("POST", route, 200), Some(1.0), "{text}");
    assert_eq!(count("GET", "/hostpools/{pool}/sessions", 200), Some(3.0));
    assert_eq!(count("GET", "/hostpools", 401), Some(1.0));
    assert_eq!(count("GET", "(unmatched)", 404), Some(1.0));
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    assert!(text.contains(
        "http_server_request_duration_seconds_bucket{http_request_method=\"POST\",http_route=\"/hostpools/{pool}/sessionhosts/{host}/sessions/{id}/logoff\",http_response_status_code=\"200\",le=\"+Inf\"} 1"
    ));

    // Upstream: the lists (GET) and the logoff (DELETE) on ARM; one retry, one throttle.
    let ok_gets = value(
        &text,
        r#"sessiongate_upstream_calls_total{provider="avd",operation="get",outcome="ok"}"#,
    )
    .unwrap_or(0.0);
    assert!(ok_gets >= 3.0, "{text}");
    assert!(
        value(
            &text,
            r#"sessiongate_upstream_calls_total{provider="avd",operation="delete",outcome="ok"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"sessiongate_upstream_retries_total{provider="avd",operation="get"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"sessiongate_upstream_throttles_total{provider="avd",operation="get"}"#
        ),
        Some(1.0)
    );
    // Audit commits, the queue gauge, auth failures.
    assert!(
        value(
            &text,
            r#"sessiongate_audit_commit_duration_seconds_count{outcome="ok"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(value(&text, "sessiongate_audit_queue_depth").is_some());
    assert_eq!(
        value(
            &text,
            r#"sessiongate_auth_failures_total{reason="unauthenticated"}"#
        ),
        Some(1.0)
    );
    // Bounded labels: no raw path, host, pool or session id anywhere.
    for raw in [
        host.as_str(),
        AVD_POOL,
        "route-7731",
        &format!("/sessions/{id}"),
    ] {
        assert!(!text.contains(raw), "{raw} appears in the metrics");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        for name in label_names(line) {
            assert!(
                [
                    "http_request_method",
                    "http_route",
                    "http_response_status_code",
                    "le",
                    "provider",
                    "operation",
                    "outcome",
                    "reason",
                ]
                .contains(&name.as_str()),
                "unexpected label {name} in {line}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_need_the_auditor_or_admin_role_unless_public() {
    let app = TestApp::start().await;
    let r = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    problem(r, 401, "unauthenticated").await;
    let r = app.get(&app.keys.reader, "/metrics").await;
    let body = problem(r, 403, "forbidden").await;
    assert_eq!(body["missing_permission"], "metrics.read");
    let r = app.get(&app.keys.operator, "/metrics").await;
    problem(r, 403, "forbidden").await;
    scrape(&app, &app.keys.admin).await;
    scrape(&app, &app.keys.auditor).await;
    // The denials are audited like every other.
    let a: serde_json::Value = app
        .get(
            &app.keys.auditor,
            "/audit?action=read_metrics&outcome=denied",
        )
        .await
        .json()
        .await
        .unwrap();
    let events = a["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{a}");

    let public = TestApp::start_with(|c| c.metrics.public = true).await;
    let r = public
        .http
        .get(format!("{}/metrics", public.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("http_server_request_duration_seconds")
    );

    let off = TestApp::start_with(|c| c.metrics.enabled = false).await;
    let r = off.get(&off.keys.auditor, "/metrics").await;
    problem(r, 404, "route_not_found").await;
}

#[tokio::test]
async fn metrics_on_a_separate_address() {
    let app = TestApp::start_with(|c: &mut Config| {
        c.metrics.listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
        c.metrics.public = true;
    })
    .await;
    // The API's own address no longer answers it.
    let r = app.get(&app.keys.auditor, "/metrics").await;
    problem(r, 404, "route_not_found").await;
    let built = sessiongate::app::build_app(&app.config).await.expect("app");
    let (addr, router) = built.metrics.expect("a metrics router");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let server = tokio::spawn(sessiongate::app::serve_metrics(router, listener));
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("# TYPE"));
    let r = reqwest::get(format!("http://{addr}/hostpools"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.abort();
}
