//! Strict edges (issue 11, findings 10 and 11): unknown query parameters are refused on every
//! route; a slow header or an idle keep-alive connection is cut after `header_read_timeout_ms`.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use serde_json::{Value, json};
use sessiongate::emulator::arm::ArmOp;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            .replace("{id}", &id.to_string())
            .replace("{action}", "logoff")
            .replace("{upn}", "dana@contoso.com");
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
    let documented: usize = paths.values().map(|i| i.as_object().unwrap().len()).sum();
    assert_eq!(refused.len(), documented, "{refused:?}");
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

/// A gateway whose header-read timeout is 600 ms, and the raw address it listens on.
async fn with_header_timeout() -> (TestApp, String) {
    let app = TestApp::start_with(|c| c.server.header_read_timeout_ms = 600).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    (app, addr)
}

/// Reads until the peer closes; how long that took from `t0`.
async fn until_closed(s: &mut tokio::net::TcpStream, t0: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection is still open after 15 s"),
        }
    }
}

#[tokio::test]
async fn a_client_sending_half_a_header_is_cut_after_the_header_read_timeout() {
    let (_app, addr) = with_header_timeout().await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let t0 = Instant::now();
    let took = until_closed(&mut s, t0).await;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let (_app, addr) = with_header_timeout().await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the whole answer (its body is small JSON with a Content-Length).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let t0 = Instant::now();
    let took = until_closed(&mut s, t0).await;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Sends `raw` on a fresh connection and reads the answer until the server closes.
async fn raw_answer(addr: &str, raw: &[u8]) -> (u16, String, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it read everything: a failed write is fine.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 20 s");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), json)
}

fn assert_problem(answer: &(u16, String, Value), status: u16, code: &str) {
    let (st, head, body) = answer;
    assert_eq!(*st, status, "{head}\n{body}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:sessiongate:problem:{code}"),
        "{body}"
    );
    let rid = body["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-request-id: {rid}")),
        "{head}"
    );
}

#[tokio::test]
async fn a_64_kb_request_target_is_414_problem_json() {
    let app = TestApp::start().await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let q = "a".repeat(64 * 1024);
    let req = format!("GET /healthz?x={q} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_problem(
        &raw_answer(&addr, req.as_bytes()).await,
        414,
        "uri_too_long",
    );
}

#[tokio::test]
async fn huge_or_too_many_headers_are_431_problem_json() {
    let app = TestApp::start().await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(600 * 1024)
    );
    assert_problem(
        &raw_answer(&addr, big.as_bytes()).await,
        431,
        "headers_too_large",
    );
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_problem(
        &raw_answer(&addr, many.as_bytes()).await,
        431,
        "headers_too_large",
    );
}

#[tokio::test]
async fn a_malformed_request_line_or_header_is_400_problem_json() {
    let app = TestApp::start().await;
    let addr = app.url.trim_start_matches("http://").to_string();
    for raw in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"[..],
        b"GET /he althz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"G\x01T /healthz HTTP/1.1\r\n\r\n",
    ] {
        assert_problem(&raw_answer(&addr, raw).await, 400, "malformed_request");
    }
    // The connection handling still serves well-formed requests.
    let (st, _, body) = raw_answer(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 200, "{body}");
}
