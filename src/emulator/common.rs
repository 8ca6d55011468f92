//! Machinery shared by every emulator: TLS with a generated CA, ARM-style token-bucket
//! throttling, fault injection (latency, slow answers, 429, 5xx and dropped connections before or
//! after the handler acted, oversized answers) and an Entra ID style
//! token endpoint (client credentials) with bearer-token checks.

use axum::{
    Form, Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A throw-away certificate authority and a server certificate for `localhost`/`127.0.0.1`,
/// so emulators serve HTTPS like the real services (and `azure_identity`, which insists on an
/// https authority, can talk to the emulated token endpoint).
#[derive(Clone)]
pub struct EmulatorTls {
    ca_pem: String,
    /// DER of the server (end-entity) certificate every listener presents.
    server_cert_der: Arc<[u8]>,
    acceptor: TlsAcceptor,
}

impl EmulatorTls {
    pub fn generate() -> Result<Self, BoxError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sessiongate emulator CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

        let server_cert_der: Arc<[u8]> = Arc::from(leaf.der().as_ref());
        let certs = vec![leaf.der().clone(), ca_cert.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_der,
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate (DER) the listeners present, e.g. to compute TLS channel bindings.
    pub fn server_cert_der(&self) -> &[u8] {
        &self.server_cert_der
    }

    /// TLS acceptor presenting the server certificate (for tests that stand up their own
    /// listener, e.g. a TLS-terminating relay).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

/// Locks `m`, taking over a lock poisoned by a panicking holder (emulator state stays usable).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `url` is an `http(s)` URL whose host is a loopback address or `localhost`: the only
/// targets the emulators send their webhooks to.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https") {
        return false;
    }
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// One request an emulator answered (the ticketing emulators keep a log tests read).
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The authenticated caller, when the handler named one ([`AuthedUser`]).
    pub user: Option<String>,
    pub status: u16,
    pub at: Instant,
}

/// The authenticated caller of an answer: a handler puts it in the response's extensions for
/// the call log.
#[derive(Debug, Clone)]
pub struct AuthedUser(pub String);

/// Every request an emulator answered, in order ([`log_calls`] fills it).
#[derive(Debug, Default)]
pub struct CallLog(Mutex<Vec<CallRecord>>);

impl CallLog {
    pub fn records(&self) -> Vec<CallRecord> {
        lock(&self.0).clone()
    }
}

/// Middleware recording each request's method, path, query, caller and status in a [`CallLog`].
pub async fn log_calls(
    State(log): State<Arc<CallLog>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_owned);
    let resp = next.run(req).await;
    let user = resp.extensions().get::<AuthedUser>().map(|u| u.0.clone());
    lock(&log.0).push(CallRecord {
        method,
        path,
        query,
        user,
        status: resp.status().as_u16(),
        at: Instant::now(),
    });
    resp
}

/// Fault injection settings, changeable while the emulator runs (tests flip them).
#[derive(Debug, Default)]
pub struct Faults {
    latency_ms: AtomicU64,
    /// Per mille of requests answered 500/503 before reaching the handler.
    error_permille: AtomicU32,
    /// Per mille of requests whose connection is dropped without a response.
    drop_permille: AtomicU32,
    /// Per mille of requests that are handled (the backend acts) and whose connection is then
    /// dropped without a response.
    drop_after_permille: AtomicU32,
    /// Per mille of requests that are handled (the backend acts) and then answered with the
    /// injected 5xx instead of the handler's answer.
    error_after_permille: AtomicU32,
    /// Per mille of requests answered 429 with `Retry-After` before reaching the handler.
    throttle_permille: AtomicU32,
    /// Per mille of requests delayed by `slow_ms` (on top of `latency_ms`) before handling.
    slow_permille: AtomicU32,
    slow_ms: AtomicU64,
    /// How many requests each kind hit so far, in [`FAULT_KINDS`] order.
    injected: [AtomicU64; 6],
    /// When non-zero, every request is answered 200 with a chunked body this long.
    oversized_body_bytes: AtomicU64,
}

/// Serializable form of [`Faults`] for CLI flags and configs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct FaultSettings {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub drop_rate: f64,
    /// Share of requests the handler carries out (the backend acts) before the connection is
    /// dropped without a response, so the caller cannot tell whether anything happened.
    #[serde(default)]
    pub drop_after_rate: f64,
    /// Share of requests the handler carries out (the backend acts) whose answer is then
    /// replaced by the injected 5xx.
    #[serde(default)]
    pub error_after_rate: f64,
    /// Share of requests answered 429 with `Retry-After: 1` (the service's throttling shape
    /// is its status and header) before the handler runs.
    #[serde(default)]
    pub throttle_rate: f64,
    /// Share of requests delayed by `slow_ms` on top of `latency_ms` before the handler runs
    /// (e.g. beyond a client's timeout: the backend still acts, late).
    #[serde(default)]
    pub slow_rate: f64,
    #[serde(default)]
    pub slow_ms: u64,
}

/// The fault kinds [`Faults::injected`] counts.
pub const FAULT_KINDS: [&str; 6] = [
    "error",
    "drop",
    "drop_after",
    "error_after",
    "throttle",
    "slow",
];

/// `Retry-After` (seconds) of the injected 429s.
pub const INJECTED_RETRY_AFTER_SECS: u64 = 1;

impl Faults {
    pub fn new(s: FaultSettings) -> Arc<Self> {
        let f = Arc::new(Self::default());
        f.set(s);
        f
    }
    pub fn set(&self, s: FaultSettings) {
        let pm = |r: f64| (r.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.latency_ms.store(s.latency_ms, Ordering::Relaxed);
        self.error_permille
            .store(pm(s.error_rate), Ordering::Relaxed);
        self.drop_permille.store(pm(s.drop_rate), Ordering::Relaxed);
        self.drop_after_permille
            .store(pm(s.drop_after_rate), Ordering::Relaxed);
        self.error_after_permille
            .store(pm(s.error_after_rate), Ordering::Relaxed);
        self.throttle_permille
            .store(pm(s.throttle_rate), Ordering::Relaxed);
        self.slow_permille.store(pm(s.slow_rate), Ordering::Relaxed);
        self.slow_ms.store(s.slow_ms, Ordering::Relaxed);
    }
    /// Answers every request with a 200 whose chunked body (no `Content-Length`) is `bytes`
    /// of JSON whitespace; 0 turns this off. For clients' response size caps.
    pub fn set_oversized_body(&self, bytes: u64) {
        self.oversized_body_bytes.store(bytes, Ordering::Relaxed);
    }
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }
    fn roll(&self, permille: &AtomicU32, kind: usize) -> bool {
        let p = permille.load(Ordering::Relaxed);
        let hit = p > 0 && rand::rng().random_range(0..1000) < p;
        if hit {
            self.injected[kind].fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
    /// How many requests each fault kind hit since start (for test figures).
    pub fn injected(&self) -> std::collections::BTreeMap<&'static str, u64> {
        FAULT_KINDS
            .iter()
            .zip(&self.injected)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }
    /// Whether this request should fail with a 5xx.
    pub fn should_error(&self) -> bool {
        self.roll(&self.error_permille, 0)
    }
    /// Whether this request's connection should be dropped.
    pub fn should_drop(&self) -> bool {
        self.roll(&self.drop_permille, 1)
    }
    /// Whether this request should be handled and its connection then dropped unanswered.
    pub fn should_drop_after(&self) -> bool {
        self.roll(&self.drop_after_permille, 2)
    }
    /// Whether this request should be handled and then answered with the injected 5xx.
    pub fn should_error_after(&self) -> bool {
        self.roll(&self.error_after_permille, 3)
    }
    /// Whether this request should be answered 429 before handling.
    pub fn should_throttle(&self) -> bool {
        self.roll(&self.throttle_permille, 4)
    }
    /// The extra delay of this request, if it is one of the slow ones.
    pub fn slow_delay(&self) -> Option<Duration> {
        self.roll(&self.slow_permille, 5)
            .then(|| Duration::from_millis(self.slow_ms.load(Ordering::Relaxed)))
    }
    /// The oversized answer to give instead of the real one, if that fault is on.
    fn oversized_answer(&self) -> Option<Response> {
        let n = self.oversized_body_bytes.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        let chunks = futures::stream::unfold(n, |left| async move {
            let k = left.min(64 * 1024);
            let chunk = bytes::Bytes::from(vec![b' '; usize::try_from(k).ok()?]);
            (k > 0).then_some((Ok::<_, Infallible>(chunk), left - k))
        });
        let mut r = axum::body::Body::from_stream(chunks).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        Some(r)
    }
}

/// A running emulator: its address and a handle that stops it when dropped or aborted.
pub struct Running {
    pub addr: SocketAddr,
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Identifies the connection a request arrived on (added to every request's extensions by
/// [`serve_tls`]), for connection-bound authentication such as NTLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves `router` over HTTPS on `listener`, applying latency, 5xx and dropped-connection
/// faults before the router sees the request, and the drop-after-handling fault once it has
/// answered (the answer is thrown away). `error_body` renders the injected 5xx in the
/// emulated service's own error shape.
pub fn serve_tls(
    listener: TcpListener,
    tls: &EmulatorTls,
    router: Router,
    faults: Arc<Faults>,
    error_body: fn() -> Response,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let acceptor = tls.acceptor.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let faults = faults.clone();
            let conn_id = ConnectionId(NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let router = router.clone();
                        let faults = faults.clone();
                        async move {
                            let lat = faults.latency();
                            if !lat.is_zero() {
                                tokio::time::sleep(lat).await;
                            }
                            if faults.should_drop() {
                                return Err::<Response, std::io::Error>(std::io::Error::other(
                                    "injected connection drop",
                                ));
                            }
                            if faults.should_error() {
                                return Ok(error_body());
                            }
                            if faults.should_throttle() {
                                return Ok(injected_throttle(error_body()));
                            }
                            if let Some(r) = faults.oversized_answer() {
                                return Ok(r);
                            }
                            let drop_after = faults.should_drop_after();
                            let error_after = !drop_after && faults.should_error_after();
                            let mut req = req.map(axum::body::Body::new);
                            req.extensions_mut().insert(conn_id);
                            // The handler runs in its own task, like a real service that
                            // finishes what it started when the client goes away (a slow
                            // request still acts after the client's timeout).
                            let slow = faults.slow_delay();
                            let handled = tokio::spawn(async move {
                                if let Some(slow) = slow {
                                    tokio::time::sleep(slow).await;
                                }
                                tower::ServiceExt::oneshot(router, req)
                                    .await
                                    .unwrap_or_else(|e: Infallible| match e {})
                            });
                            let resp = handled.await.map_err(std::io::Error::other)?;
                            if drop_after {
                                // The handler has acted; its answer is discarded and hyper
                                // closes the connection without writing any response.
                                return Err(std::io::Error::other(
                                    "injected connection drop after handling",
                                ));
                            }
                            if error_after {
                                // The handler has acted; the caller is told it failed.
                                return Ok(error_body());
                            }
                            Ok(resp)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http1_only()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Ok(Running {
        addr,
        base_url: format!("https://127.0.0.1:{}", addr.port()),
        task,
    })
}

/// The injected 429: the service's error body with status 429 and `Retry-After`.
fn injected_throttle(mut r: Response) -> Response {
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(INJECTED_RETRY_AFTER_SECS),
    );
    r
}

/// Token-bucket throttling as ARM does it: a bucket of `capacity` requests refilled at
/// `refill_per_sec`. When empty, the caller must wait `retry_after` seconds.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

/// Why a request was throttled, and when to come back.
#[derive(Debug, Clone, Copy)]
pub struct Throttled {
    pub retry_after_secs: u64,
}

impl TokenBucket {
    pub fn new(capacity: u32, refill_per_sec: u32) -> Self {
        Self {
            capacity: f64::from(capacity),
            refill_per_sec: f64::from(refill_per_sec.max(1)),
            state: Mutex::new((f64::from(capacity), Instant::now())),
        }
    }

    /// Takes one token; returns what remains, or how long to wait.
    pub fn take(&self) -> Result<u32, Throttled> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.refill_per_sec).min(self.capacity);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            Ok(st.0.floor() as u32)
        } else {
            let wait = (1.0 - st.0) / self.refill_per_sec;
            Err(Throttled {
                retry_after_secs: wait.ceil().max(1.0) as u64,
            })
        }
    }
}

/// An OAuth 2.0 client-credentials token endpoint in the shape of Microsoft Entra ID's v2
/// endpoint (`POST /{tenant}/oauth2/v2.0/token`), issuing opaque bearer tokens for one
/// configured client, plus the check every emulated API runs on `Authorization`.
#[derive(Debug)]
pub struct TokenIssuer {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// Scopes this issuer grants tokens for (e.g. `https://127.0.0.1:PORT/.default`).
    allowed_scopes: Mutex<Vec<String>>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    lifetime: Duration,
    issued: AtomicU64,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Missing,
    Invalid,
    Expired,
}

impl TokenIssuer {
    pub fn new(tenant: &str, client_id: &str, client_secret: &str) -> Arc<Self> {
        Arc::new(Self {
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            allowed_scopes: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            lifetime: Duration::from_secs(3599),
            issued: AtomicU64::new(0),
        })
    }

    /// Allows tokens for `scope` (the `{resource}/.default` form). Resource comparison ignores
    /// a trailing slash, like Entra ID.
    pub fn allow_scope(&self, scope: &str) {
        self.allowed_scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(scope.to_string());
    }

    /// How many tokens were issued (tests prove caching with it).
    pub fn issued_count(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Invalidates every issued token (simulates revocation / key rollover).
    pub fn revoke_all(&self) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The token endpoint's routes, to merge into an emulator's router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
            .with_state(self.clone())
    }

    /// Checks `Authorization: Bearer` against issued tokens for any of `scopes`.
    pub fn check<S: AsRef<str>>(
        &self,
        headers: &HeaderMap,
        scopes: &[S],
    ) -> Result<(), TokenRejection> {
        let raw = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(TokenRejection::Missing)?;
        let tok = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .ok_or(TokenRejection::Invalid)?;
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (tok_scope, exp) = tokens.get(tok).ok_or(TokenRejection::Invalid)?;
        let tok_scope = norm_scope(tok_scope);
        if !scopes.iter().any(|s| norm_scope(s.as_ref()) == tok_scope) {
            return Err(TokenRejection::Invalid);
        }
        if Instant::now() > *exp {
            return Err(TokenRejection::Expired);
        }
        Ok(())
    }
}

fn norm_scope(s: &str) -> String {
    s.trim_end_matches("/.default")
        .trim_end_matches('/')
        .to_ascii_lowercase()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

fn entra_error(status: StatusCode, error: &str, code: u32, desc: &str) -> Response {
    let body = serde_json::json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {desc}"),
        "error_codes": [code],
        "timestamp": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    });
    (status, Json(body)).into_response()
}

async fn token_endpoint(
    State(iss): State<Arc<TokenIssuer>>,
    Path(tenant): Path<String>,
    Form(f): Form<TokenForm>,
) -> Response {
    if !tenant.eq_ignore_ascii_case(&iss.tenant) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if f.grant_type.as_deref() != Some("client_credentials") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if f.client_id.as_deref() != Some(iss.client_id.as_str()) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    let secret_ok = f.client_secret.as_deref().is_some_and(|s| {
        subtle::ConstantTimeEq::ct_eq(s.as_bytes(), iss.client_secret.as_bytes()).into()
    });
    if !secret_ok {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
    }
    let Some(scope) = f.scope else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let allowed = iss
        .allowed_scopes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|a| norm_scope(a) == norm_scope(&scope));
    if !allowed || !scope.ends_with("/.default") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid."),
        );
    }
    let token = format!("emu.{}", hex::encode(rand::rng().random::<[u8; 24]>()));
    iss.tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone(), (scope, Instant::now() + iss.lifetime));
    iss.issued.fetch_add(1, Ordering::Relaxed);
    let secs = iss.lifetime.as_secs();
    Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    }))
    .into_response()
}

/// The page starting at item `skip` of `total`: `(start, end, more_after_it)`, clamped to
/// the list (page starts are plain offsets in both emulators' next links).
pub fn page_bounds(total: usize, skip: usize, page_size: usize) -> (usize, usize, bool) {
    let start = skip.min(total);
    let end = (start + page_size.max(1)).min(total);
    (start, end, end < total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_when_empty_and_says_when_to_return() {
        let b = TokenBucket::new(2, 1);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let t = b.take().unwrap_err();
        assert!(t.retry_after_secs >= 1);
    }

    #[test]
    fn drop_after_rate_is_its_own_switch() {
        let f = Faults::new(FaultSettings {
            drop_after_rate: 1.0,
            ..Default::default()
        });
        assert!(f.should_drop_after());
        assert!(!f.should_drop(), "dropping before handling stays off");
        f.set(FaultSettings::default());
        assert!(!f.should_drop_after());
        let parsed: FaultSettings = serde_json::from_str(r#"{"drop_after_rate":0.5}"#).unwrap();
        assert_eq!(parsed.drop_after_rate, 0.5);
    }

    #[test]
    fn page_bounds_cover_everything_once() {
        assert_eq!(page_bounds(5, 0, 2), (0, 2, true));
        assert_eq!(page_bounds(5, 4, 2), (4, 5, false));
        assert_eq!(page_bounds(5, 9, 2), (5, 5, false));
    }
}
