//! OpenTelemetry traces end to end: an OTLP/HTTP collector stand-in on loopback receives the
//! spans of one AVD logoff; an incoming `traceparent` continues into the exported spans, the
//! ARM emulator's requests and the audit events; with export off nothing reaches the
//! collector and propagation still works.
//!
//! Each test installs its subscriber for its own thread (`set_default`); `#[tokio::test]` runs
//! the gateway and the emulators on that one thread, so every span of the call is seen.

use crate::support::app::{AVD_POOL, TestApp};
use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use serde_json::Value;
use sessiongate::telemetry::{
    self,
    otlp::{OtlpConfig, OtlpProtocol},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// What the stand-in received: one entry per `POST /v1/traces` (content type, the
/// `x-collector-key` header, body).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, String, Bytes)>>>);

impl Received {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Every span of every JSON export, flattened.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (_, _, body) in self.0.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                continue;
            };
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let mut s = s.clone();
                        s["resource"] = rs["resource"].clone();
                        out.push(s);
                    }
                }
            }
        }
        out
    }
}

async fn collect(State(r): State<Received>, headers: HeaderMap, body: Bytes) -> &'static str {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    r.0.lock()
        .unwrap()
        .push((get("content-type"), get("x-collector-key"), body));
    "{}"
}

/// The stand-in: `POST /v1/traces` on a loopback port; returns its base URL.
async fn collector() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn otlp(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
    let mut c: OtlpConfig = toml::from_str(&format!("endpoint = \"{endpoint}\"")).unwrap();
    c.protocol = protocol;
    c.headers.insert("x-collector-key".into(), "k1".into());
    c
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn attr_str<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key)?["stringValue"].as_str()
}

/// OTLP span kinds: JSON carries the enum as its number (2 server, 3 client) or its name.
fn is_kind(span: &Value, number: i64, name: &str) -> bool {
    span["kind"].as_i64() == Some(number) || span["kind"].as_str() == Some(name)
}

/// Flushes and polls the stand-in until `done` holds for the spans received (10 s at most).
async fn spans_until(
    tracing: &telemetry::Tracing,
    received: &Received,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tracing.flush().await;
        let spans = received.spans();
        if done(&spans) {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans never arrived: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs off the first AVD session, optionally sending `traceparent`; returns the request id.
async fn logoff(app: &TestApp, traceparent: Option<&str>) -> String {
    let (host, id, _) = app.avd_target();
    let url = format!("{}/logoff", app.session_url(AVD_POOL, &host, id));
    let mut r = app.http.post(url).bearer_auth(&app.keys.operator);
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done");
    rid
}

/// The `params.trace_id` of the call's audit events (intent and outcome).
async fn audited_trace_ids(app: &TestApp, rid: &str) -> Vec<String> {
    let page: Value = app
        .get(&app.keys.auditor, &format!("/audit?request_id={rid}"))
        .await
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "intent and outcome: {page}");
    events
        .iter()
        .map(|e| {
            e["params"]["trace_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no params.trace_id: {e}"))
                .to_string()
        })
        .collect()
}

/// The trace ids of the `traceparent`s the ARM emulator received (`None`: request without).
fn arm_trace_ids(app: &TestApp) -> Vec<Option<String>> {
    app.arm()
        .received_traces()
        .into_iter()
        .map(|t| {
            let tp = t.traceparent?;
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00", "{tp}");
            Some(parts[1].to_string())
        })
        .collect()
}

/// Walks `span`'s parents within `spans` and says whether `ancestor` is among them.
fn descends_from(spans: &[Value], span: &Value, ancestor: &Value) -> bool {
    let mut cur = span.clone();
    for _ in 0..16 {
        let parent = cur["parentSpanId"].as_str().unwrap_or("");
        if parent.is_empty() {
            return false;
        }
        if parent == ancestor["spanId"] {
            return true;
        }
        match spans.iter().find(|s| s["spanId"] == parent) {
            Some(p) => cur = p.clone(),
            None => return false,
        }
    }
    false
}

fn server_span(spans: &[Value]) -> Option<&Value> {
    spans.iter().find(|s| {
        is_kind(s, 2, "SPAN_KIND_SERVER") && s["name"].as_str().unwrap_or("").starts_with("POST ")
    })
}

fn arm_client_spans(spans: &[Value]) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| {
            is_kind(s, 3, "SPAN_KIND_CLIENT") && attr_str(s, "upstream.provider") == Some("avd")
        })
        .collect()
}

#[tokio::test]
async fn one_logoff_exports_the_server_span_and_the_upstream_call_in_one_trace() {
    let (endpoint, received) = collector().await;
    let settings = otlp(&endpoint, OtlpProtocol::HttpJson).settings().unwrap();
    let (dispatch, tracing) = telemetry::build(false, "warn", Some(&settings)).unwrap();
    let _scope = tracing::dispatcher::set_default(&dispatch);
    let app = TestApp::start().await;
    let arm_before = app.arm().received_traces().len();
    let probe = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    let rid = logoff(&app, None).await;

    let spans = spans_until(&tracing, &received, |s| {
        server_span(s).is_some() && arm_client_spans(s).len() >= 2
    })
    .await;
    assert!(
        !spans.iter().any(|s| s["name"] == "GET /healthz"),
        "probes are not traced"
    );
    let server = server_span(&spans).unwrap();
    let trace = server["traceId"].as_str().unwrap().to_string();
    assert_eq!(trace.len(), 32, "{server}");
    assert!(
        server["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "a new trace: {server}"
    );
    // Named by the matched route, never the raw path.
    let route = "/hostpools/{pool}/sessionhosts/{host}/sessions/{id}/logoff";
    assert_eq!(server["name"], format!("POST {route}"));
    assert_eq!(attr_str(server, "http.route"), Some(route));
    assert_eq!(
        attr_str(server, "http.request.method"),
        Some("POST"),
        "{server:#}"
    );
    assert_eq!(
        attr(server, "http.response.status_code").and_then(|v| v["intValue"]
            .as_str()
            .map(str::to_string)
            .or_else(|| v["intValue"].as_i64().map(|n| n.to_string()))),
        Some("200".to_string()),
        "{server:#}"
    );
    assert_eq!(attr_str(server, "request_id"), Some(rid.as_str()));
    let resource = server["resource"].to_string();
    assert!(
        resource.contains("service.name") && resource.contains("sessiongate"),
        "{resource}"
    );

    // The upstream calls (the resolve read and the DELETE): client spans in the same trace,
    // under the server span (request → action → upstream).
    let clients = arm_client_spans(&spans);
    for c in &clients {
        assert_eq!(c["traceId"], trace.as_str(), "{c}");
        assert!(
            descends_from(&spans, c, server),
            "parent links: {c} in {spans:#?}"
        );
        assert_eq!(attr_str(c, "upstream.outcome"), Some("ok"), "{c}");
    }
    assert!(
        clients
            .iter()
            .any(|c| attr_str(c, "upstream.operation") == Some("delete")),
        "the logoff call: {clients:#?}"
    );
    let action = spans
        .iter()
        .find(|s| s["name"] == "logoff")
        .expect("action span");
    assert!(descends_from(&spans, action, server));
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "audit commit outcome" && descends_from(&spans, s, server)),
        "audit commit span: {spans:#?}"
    );

    // Every ARM request of the call carried a traceparent of this trace, the credential's
    // token request included (the app's first ARM call needs a token).
    let arm = arm_trace_ids(&app);
    assert!(arm.len() > arm_before);
    for t in &arm[arm_before..] {
        assert_eq!(t.as_deref(), Some(trace.as_str()));
    }
    let token_requests = app.arm().received_traces()[arm_before..]
        .iter()
        .filter(|t| t.path.ends_with("/oauth2/v2.0/token"))
        .count();
    assert!(token_requests >= 1, "{:#?}", app.arm().received_traces());
    // The audit events name the trace.
    for t in audited_trace_ids(&app, &rid).await {
        assert_eq!(t, trace);
    }
    // Configured headers travel with the export.
    let (ct, key, _) = received.0.lock().unwrap()[0].clone();
    assert_eq!(ct, "application/json");
    assert_eq!(key, "k1");
    tracing.shutdown().await;
}

#[tokio::test]
async fn an_incoming_traceparent_continues_into_spans_arm_and_audit() {
    let (endpoint, received) = collector().await;
    let settings = otlp(&endpoint, OtlpProtocol::HttpJson).settings().unwrap();
    let (dispatch, tracing) = telemetry::build(false, "warn", Some(&settings)).unwrap();
    let _scope = tracing::dispatcher::set_default(&dispatch);
    let app = TestApp::start().await;
    let arm_before = app.arm().received_traces().len();
    let rid = logoff(&app, Some(&format!("00-{TRACE}-{CALLER_SPAN}-01"))).await;

    let spans = spans_until(&tracing, &received, |s| {
        server_span(s).is_some() && !arm_client_spans(s).is_empty()
    })
    .await;
    let server = server_span(&spans).unwrap();
    assert_eq!(server["traceId"], TRACE);
    assert_eq!(
        server["parentSpanId"], CALLER_SPAN,
        "the caller's span is the parent"
    );
    for c in arm_client_spans(&spans) {
        assert_eq!(c["traceId"], TRACE);
    }
    let received_by_arm = app.arm().received_traces();
    for t in &received_by_arm[arm_before..] {
        let tp = t
            .traceparent
            .as_deref()
            .expect("traceparent on every ARM request");
        assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
        assert!(
            !tp.contains(CALLER_SPAN),
            "the parent is a span of ours: {tp}"
        );
        assert!(tp.ends_with("-01"), "sampled: {tp}");
    }
    assert_eq!(audited_trace_ids(&app, &rid).await, vec![TRACE, TRACE]);
    tracing.shutdown().await;
}

#[tokio::test]
async fn http_protobuf_is_the_default_encoding() {
    let (endpoint, received) = collector().await;
    let c: OtlpConfig = toml::from_str(&format!("endpoint = \"{endpoint}/\"")).unwrap();
    let settings = c.settings().unwrap();
    let (dispatch, tracing) = telemetry::build(false, "warn", Some(&settings)).unwrap();
    let _scope = tracing::dispatcher::set_default(&dispatch);
    let app = TestApp::start().await;
    logoff(&app, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.count() == 0 {
        tracing.flush().await;
        assert!(tokio::time::Instant::now() < deadline, "no export");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ct, _, body) = received.0.lock().unwrap()[0].clone();
    assert_eq!(ct, "application/x-protobuf");
    assert!(!body.is_empty());
    tracing.shutdown().await;
}

#[tokio::test]
async fn with_export_off_nothing_is_sent_and_propagation_still_works() {
    let (_endpoint, received) = collector().await;
    let (dispatch, tracing) = telemetry::build(false, "warn", None).unwrap();
    assert!(!tracing.exporting());
    let _scope = tracing::dispatcher::set_default(&dispatch);
    let app = TestApp::start().await;

    // A caller's trace goes on to ARM and into the audit log.
    let before = app.arm().received_traces().len();
    let rid = logoff(&app, Some(&format!("00-{TRACE}-{CALLER_SPAN}-01"))).await;
    let arm = arm_trace_ids(&app);
    assert!(arm.len() > before);
    for t in &arm[before..] {
        assert_eq!(t.as_deref(), Some(TRACE));
    }
    assert_eq!(audited_trace_ids(&app, &rid).await, vec![TRACE, TRACE]);

    // Without one, a fresh trace id still ties ARM's requests and the audit events together
    // (not sampled: nothing is recorded).
    let before = app.arm().received_traces().len();
    let rid = logoff(&app, None).await;
    let ids = audited_trace_ids(&app, &rid).await;
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0].len(), 32);
    assert_ne!(ids[0], TRACE);
    let tps: Vec<String> = app.arm().received_traces()[before..]
        .iter()
        .map(|t| t.traceparent.clone().expect("traceparent"))
        .collect();
    assert!(!tps.is_empty());
    for tp in &tps {
        assert!(tp.starts_with(&format!("00-{}-", ids[0])), "{tp}");
        assert!(tp.ends_with("-00"), "not sampled: {tp}");
    }

    tracing.flush().await;
    assert_eq!(received.count(), 0, "no connection to the collector");
    // An invalid traceparent is ignored (a new trace), never an error.
    let (host, id, _) = app.avd_target();
    let r = app
        .http
        .get(app.session_url(AVD_POOL, &host, id))
        .bearer_auth(&app.keys.reader)
        .header("traceparent", "00-not-a-trace-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn winrm_requests_carry_the_callers_trace() {
    let (dispatch, _tracing) = telemetry::build(false, "warn", None).unwrap();
    let _scope = tracing::dispatcher::set_default(&dispatch);
    let app = TestApp::start().await;
    let winrm = app.backends.rds.state();
    let before = winrm.received_traceparents().len();
    let r = app
        .http
        .get(format!("{}/hostpools/rds-demo/sessions", app.url))
        .bearer_auth(&app.keys.reader)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = winrm.received_traceparents();
    assert!(got.len() > before, "WS-Man requests were made");
    for tp in &got[before..] {
        let tp = tp.as_deref().expect("traceparent on every WS-Man request");
        assert!(tp.starts_with(&format!("00-{TRACE}-")), "{tp}");
        assert!(!tp.contains(CALLER_SPAN), "{tp}");
    }
}
