//! The engine against a tiny loopback server whose routes each misbehave one way.

use super::*;
use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap as AxHeaders, StatusCode as AxStatus},
    response::{IntoResponse, Response},
    routing::any,
};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
struct Server {
    hits: AtomicU32,
}

async fn route(
    State(s): State<Arc<Server>>,
    Path(what): Path<String>,
    headers: AxHeaders,
) -> Response {
    let n = s.hits.fetch_add(1, Ordering::SeqCst);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match what.as_str() {
        "ok" => "fine".into_response(),
        // Accepts only the token of the second generation (after one refresh).
        "auth" if bearer == "Bearer gen1" => "fine".into_response(),
        "auth" | "401" => AxStatus::UNAUTHORIZED.into_response(),
        "429" => (AxStatus::TOO_MANY_REQUESTS, [("retry-after", "30")]).into_response(),
        "429-once" if n == 0 => {
            (AxStatus::TOO_MANY_REQUESTS, [("retry-after", "0")]).into_response()
        }
        "429-once" => "fine".into_response(),
        "500" => AxStatus::INTERNAL_SERVER_ERROR.into_response(),
        "drop" => std::panic::resume_unwind(Box::new("dropping the connection")),
        // Acts (counted), loses the answer, then says the thing is gone.
        "drop-once" if n == 0 => std::panic::resume_unwind(Box::new("dropping the connection")),
        "drop-once" => AxStatus::NOT_FOUND.into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late".into_response()
        }
        "big" => vec![b'x'; 10_000].into_response(),
        "endless" => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let s = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            Body::from_stream(s).into_response()
        }
        _ => AxStatus::NOT_FOUND.into_response(),
    }
}

async fn serve() -> (String, Arc<Server>) {
    let state = Arc::new(Server::default());
    let app = Router::new()
        .route("/{what}", any(route))
        .with_state(state.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (base, state)
}

/// Tokens `gen0`, `gen1`, ... : each refresh moves to the next generation.
#[derive(Default)]
struct Gen {
    generation: AtomicU32,
    refreshes: AtomicU32,
}

#[async_trait]
impl TokenSource for Gen {
    async fn token(&self) -> Result<String, UpstreamError> {
        Ok(format!("gen{}", self.generation.load(Ordering::SeqCst)))
    }
    fn refresh(&self) -> Result<(), UpstreamError> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Debug)]
enum TestErr {
    Up(UpstreamError),
    Status(u16),
}

impl From<UpstreamError> for TestErr {
    fn from(e: UpstreamError) -> Self {
        TestErr::Up(e)
    }
}

fn policy() -> CallPolicy {
    CallPolicy {
        timeout: Duration::from_secs(5),
        max_retries: 2,
        retry_budget: Duration::from_secs(10),
        max_response_bytes: 64 * 1024,
        default_retry_after: Duration::from_secs(1),
    }
}

fn engine(policy: CallPolicy, token: Option<Arc<Gen>>) -> Upstream {
    let http = reqwest::Client::builder().build().unwrap();
    Upstream::new(
        "test",
        http,
        policy,
        token.map(|t| t as Arc<dyn TokenSource>),
    )
}

async fn go(u: &Upstream, repeat: Repeat, url: &str) -> Result<Bytes, TestErr> {
    let method = if repeat == Repeat::Safe {
        reqwest::Method::GET
    } else {
        reqwest::Method::POST
    };
    u.call(
        repeat,
        |http| http.request(method.clone(), url),
        |r| {
            if r.status.is_success() {
                Verdict::Done(r.body)
            } else if r.status.is_server_error() {
                Verdict::Transient(TestErr::Status(r.status.as_u16()))
            } else {
                Verdict::Fail(TestErr::Status(r.status.as_u16()))
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_then_succeeds_or_fails() {
    let (base, srv) = serve().await;
    let tokens = Arc::new(Gen::default());
    let u = engine(policy(), Some(tokens.clone()));
    // Even a call that is not safe to repeat: a 401 was refused before it ran.
    let body = go(&u, Repeat::Once, &format!("{base}/auth")).await.unwrap();
    assert_eq!(&body[..], b"fine");
    assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(srv.hits.load(Ordering::SeqCst), 2);

    let err = go(&u, Repeat::Safe, &format!("{base}/401"))
        .await
        .unwrap_err();
    assert!(matches!(err, TestErr::Status(401)), "{err:?}");
    assert_eq!(
        tokens.refreshes.load(Ordering::SeqCst),
        2,
        "one refresh per call"
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn retry_after_beyond_the_budget_is_throttled_at_once() {
    let (base, srv) = serve().await;
    let u = engine(policy(), None);
    // Within the budget, even a call that is not safe to repeat is sent again.
    let body = go(&u, Repeat::Once, &format!("{base}/429-once"))
        .await
        .unwrap();
    assert_eq!(&body[..], b"fine");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 2);
    let t0 = Instant::now();
    let err = go(&u, Repeat::Safe, &format!("{base}/429"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TestErr::Up(UpstreamError::Throttled { retry_after }) if retry_after == Duration::from_secs(30)),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(srv.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn server_errors_are_retried_only_for_safe_calls() {
    let (base, srv) = serve().await;
    let u = engine(policy(), None);
    let err = go(&u, Repeat::Once, &format!("{base}/500"))
        .await
        .unwrap_err();
    assert!(matches!(err, TestErr::Status(500)), "{err:?}");
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1,
        "a POST is never re-sent after a 5xx"
    );
    let err = go(&u, Repeat::Safe, &format!("{base}/500"))
        .await
        .unwrap_err();
    assert!(matches!(err, TestErr::Status(500)), "{err:?}");
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1 + 3,
        "first try + max_retries"
    );
}

#[tokio::test]
async fn dropped_connections_are_retried_only_for_safe_calls() {
    let (base, srv) = serve().await;
    let u = engine(policy(), None);
    let err = go(&u, Repeat::Once, &format!("{base}/drop"))
        .await
        .unwrap_err();
    // Sent and never answered: not "unreachable", the service may have acted.
    assert!(
        matches!(err, TestErr::Up(UpstreamError::OutcomeUnknown(_))),
        "{err:?}"
    );
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1,
        "a POST is never re-sent once it may have arrived"
    );
    let err = go(&u, Repeat::Safe, &format!("{base}/drop"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TestErr::Up(UpstreamError::Transport(_))),
        "{err:?}"
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1 + 3);
}

/// `go`, tracked.
async fn go_tracked(u: &Upstream, repeat: Repeat, url: &str) -> Called<Bytes, TestErr> {
    u.call_tracked(
        repeat,
        |http| http.get(url),
        |r| {
            if r.status.is_success() {
                Verdict::Done(r.body)
            } else if r.status.is_server_error() {
                Verdict::Transient(TestErr::Status(r.status.as_u16()))
            } else {
                Verdict::Fail(TestErr::Status(r.status.as_u16()))
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_retry_after_an_unanswered_attempt_is_reported_to_the_caller() {
    let (base, srv) = serve().await;
    let u = engine(policy(), None);
    let c = go_tracked(&u, Repeat::Safe, &format!("{base}/drop-once")).await;
    assert!(matches!(c.result, Err(TestErr::Status(404))), "{c:?}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 2);
    let why = c.earlier_attempt_may_have_acted.expect("reported");
    assert!(why.contains("transport error"), "{why}");

    // A 5xx answer may come after the service acted, too.
    let c = go_tracked(&u, Repeat::Safe, &format!("{base}/500")).await;
    assert_eq!(
        c.earlier_attempt_may_have_acted.as_deref(),
        Some("HTTP 500")
    );

    // A first attempt that was answered (nothing retried) reports nothing.
    let c = go_tracked(&u, Repeat::Safe, &format!("{base}/nothing-here")).await;
    assert!(matches!(c.result, Err(TestErr::Status(404))), "{c:?}");
    assert_eq!(c.earlier_attempt_may_have_acted, None);
}

#[tokio::test]
async fn refused_connections_never_count_as_attempts_that_may_have_acted() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut p = policy();
    p.max_retries = 1;
    let u = engine(p, None);
    let c = go_tracked(&u, Repeat::Safe, &format!("http://{addr}/ok")).await;
    assert!(
        matches!(c.result, Err(TestErr::Up(UpstreamError::Transport(_)))),
        "{c:?}"
    );
    assert_eq!(c.earlier_attempt_may_have_acted, None);
}

#[tokio::test]
async fn a_refused_connection_is_retried_even_for_a_post() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut p = policy();
    p.max_retries = 3;
    let u = engine(p, None);
    // The first attempts find nothing listening; then a server appears on that port.
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = Router::new()
            .route("/{what}", any(route))
            .with_state(Arc::new(Server::default()));
        axum::serve(l, app).await
    });
    let body = go(&u, Repeat::Once, &format!("http://{addr}/ok")).await;
    late.abort();
    assert_eq!(&body.unwrap()[..], b"fine");
}

#[tokio::test]
async fn each_attempt_is_bounded_by_the_timeout() {
    let (base, _srv) = serve().await;
    let mut p = policy();
    p.timeout = Duration::from_millis(300);
    p.max_retries = 0;
    let u = engine(p, None);
    let t0 = Instant::now();
    let err = go(&u, Repeat::Safe, &format!("{base}/slow"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TestErr::Up(UpstreamError::Timeout(_))),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn bodies_over_the_cap_fail_typed_whether_declared_or_streamed() {
    let (base, _srv) = serve().await;
    let mut p = policy();
    p.max_response_bytes = 10_000;
    let u = engine(p, None);
    assert_eq!(
        go(&u, Repeat::Safe, &format!("{base}/big"))
            .await
            .unwrap()
            .len(),
        10_000
    );
    p.max_response_bytes = 9_999;
    let u = engine(p, None);
    let err = go(&u, Repeat::Safe, &format!("{base}/big"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TestErr::Up(UpstreamError::TooLarge {
                status: 200,
                limit: 9_999
            })
        ),
        "{err:?}"
    );
    // An endless chunked body: reading stops at the cap.
    let t0 = Instant::now();
    let err = go(&u, Repeat::Safe, &format!("{base}/endless"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TestErr::Up(UpstreamError::TooLarge { .. })),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn retry_after_reads_seconds_and_dates() {
    let mut h = HeaderMap::new();
    h.insert("retry-after", "7".parse().unwrap());
    assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    h.insert(
        "retry-after",
        "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
    );
    assert_eq!(retry_after(&h), Some(Duration::ZERO));
    h.insert("retry-after", "soon".parse().unwrap());
    assert_eq!(retry_after(&h), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    assert!(backoff(0) <= Duration::from_millis(200));
    assert!(backoff(3) >= Duration::from_millis(800));
    assert!(backoff(30) <= Duration::from_secs(5));
}

#[test]
fn knobs_are_checked_and_named() {
    let d = Duration::from_secs(1);
    assert_eq!(
        CallPolicy::from_knobs(0, 3, 60, DEFAULT_MAX_RESPONSE_BYTES, d)
            .unwrap_err()
            .0,
        "timeout_secs"
    );
    assert_eq!(
        CallPolicy::from_knobs(30, 3, 60, 10, d).unwrap_err().0,
        "max_response_bytes"
    );
    let p = CallPolicy::from_knobs(30, 3, 60, DEFAULT_MAX_RESPONSE_BYTES, d).unwrap();
    assert_eq!(
        (p.timeout, p.retry_budget),
        (Duration::from_secs(30), Duration::from_secs(60))
    );
}

/// The value of one series in the metrics registry (0 when absent).
fn series(line_start: &str) -> f64 {
    crate::metrics::render()
        .unwrap()
        .lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Each logical call is counted once with how it ended, its retries and its throttles
/// (nextest runs each test in its own process, so the registry holds only this test's calls).
#[tokio::test]
async fn calls_are_counted_by_operation_and_outcome() {
    let (base, _) = serve().await;
    let u = engine(policy(), None);
    let calls = |op: &str, outcome: &str| {
        series(&format!(
            "sessiongate_upstream_calls_total{{provider=\"other\",operation=\"{op}\",outcome=\"{outcome}\"}}"
        ))
    };
    let before = (
        calls("get", "ok"),
        calls("get", "transient"),
        calls("post", "failed"),
        calls("get", "throttled"),
        series(r#"sessiongate_upstream_retries_total{provider="other",operation="get"}"#),
        series(r#"sessiongate_upstream_throttles_total{provider="other",operation="get"}"#),
    );
    assert!(go(&u, Repeat::Safe, &format!("{base}/ok")).await.is_ok());
    assert!(go(&u, Repeat::Safe, &format!("{base}/500")).await.is_err());
    assert!(
        go(&u, Repeat::Once, &format!("{base}/nothing"))
            .await
            .is_err()
    );
    assert!(go(&u, Repeat::Safe, &format!("{base}/429")).await.is_err());
    assert_eq!(calls("get", "ok") - before.0, 1.0);
    assert_eq!(calls("get", "transient") - before.1, 1.0);
    assert_eq!(calls("post", "failed") - before.2, 1.0);
    assert_eq!(calls("get", "throttled") - before.3, 1.0);
    // The 500 was retried max_retries (2) times; the 429 asked for longer than the budget.
    assert_eq!(
        series(r#"sessiongate_upstream_retries_total{provider="other",operation="get"}"#)
            - before.4,
        2.0
    );
    assert_eq!(
        series(r#"sessiongate_upstream_throttles_total{provider="other",operation="get"}"#)
            - before.5,
        1.0
    );
}
