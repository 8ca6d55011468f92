//! WVD classic (RDInfra broker, Fall 2019 release) emulator.
//!
//! Serves the broker's management routes at their real paths
//! (`/RdsManagement/V1/TenantGroups/{tenantGroup}/Tenants/{tenant}/HostPools/{hostPool}/...`) over
//! HTTPS, with an Entra-style token endpoint for two service principals: one holding an RDS role
//! and one without (403 `UnauthorizedAccess`).
//!
//! Paging: list routes honour `PageSize`, `SortField`, `IsDescending` and `InitialSkip`; when more
//! items remain, the response carries a `next` header holding the *absolute URL* of the next page
//! (same query, `InitialSkip` advanced). The exact format of the real header was never published
//! (medium confidence in the reference); an absolute URL is what the adapter follows, and it also
//! accepts a relative one.
//!
//! Session ids are per host, start at 2 (ids 0 and 1 belong to the services and console sessions on
//! Windows) and the lowest free id is reused after a logoff, as Windows does.
//!
//! Ghost sessions are sessions the broker still lists whose host is gone or unreachable: a
//! non-forced logoff answers `SessionHostUnreachable`, `Force=True` removes them from the broker.

use crate::emulator::common::{
    EmulatorTls, FaultSettings, Faults, Running, TokenBucket, TokenIssuer,
};
use crate::providers::wvd_classic::{APPLICATION_TYPES, HOST_STATUSES, SESSION_STATES};
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};
use time::OffsetDateTime;
use tokio::net::TcpListener;

/// The broker's token audience.
pub const RDINFRA_RESOURCE: &str = "https://mrs-prod.ame.gbl/mrs-RDInfra-prod";
/// The v2 scope for [`RDINFRA_RESOURCE`].
pub const RDINFRA_SCOPE: &str = "https://mrs-prod.ame.gbl/mrs-RDInfra-prod/.default";

const PREFIX: &str = "/RdsManagement/V1/TenantGroups/{tg}/Tenants/{tenant}/HostPools/{pool}";

/// Whether enums (`sessionState`, `status`, `applicationType`) are written as names or integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnumStyle {
    #[default]
    Names,
    Integers,
}

/// Options for [`start`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassicEmulatorOptions {
    /// AAD (Entra) tenant id of the token endpoint.
    pub aad_tenant: String,
    /// Service principal holding an RDS role.
    pub client_id: String,
    pub client_secret: String,
    /// A second service principal that authenticates but holds no RDS role (403).
    pub no_role_client_id: String,
    pub no_role_client_secret: String,
    /// Public client id advertised in the 401 challenge (the PowerShell module's app).
    pub challenge_client_id: String,
    pub tenant_group: String,
    /// RDS tenant name (not the AAD tenant).
    pub rds_tenant: String,
    pub host_pools: Vec<String>,
    pub hosts_per_pool: u32,
    /// Sessions seeded per host at start.
    pub sessions_per_host: u32,
    /// DNS domain of the generated host names (`{pool}-sh{n}.{domain}`).
    pub host_domain: String,
    pub enum_style: EnumStyle,
    /// Token bucket `(capacity, refill per second)`, or none.
    pub throttle: Option<(u32, u32)>,
    pub faults: FaultSettings,
}

impl Default for ClassicEmulatorOptions {
    fn default() -> Self {
        Self {
            aad_tenant: "00000000-0000-4000-8000-00000000c1a5".into(),
            client_id: "11111111-1111-4111-8111-00000000c1a5".into(),
            client_secret: "emulator-classic-secret".into(),
            no_role_client_id: "22222222-2222-4222-8222-00000000c1a5".into(),
            no_role_client_secret: "emulator-classic-norole-secret".into(),
            challenge_client_id: "5a0aa725-4958-4b0c-80a9-34562e23f3b7".into(),
            tenant_group: "Default Tenant Group".into(),
            rds_tenant: "contoso".into(),
            host_pools: vec!["classic-hp1".into()],
            hosts_per_pool: 2,
            sessions_per_host: 2,
            host_domain: "contoso.com".into(),
            enum_style: EnumStyle::Names,
            throttle: None,
            faults: FaultSettings::default(),
        }
    }
}

/// What `sessiongate emulate wvd-classic` prints as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct ClassicEmulatorInfo {
    pub kind: &'static str,
    pub broker_url: String,
    pub token_url: String,
    pub authority_host: String,
    pub aad_tenant: String,
    pub client_id: String,
    pub client_secret: String,
    pub no_role_client_id: String,
    pub no_role_client_secret: String,
    pub resource: String,
    pub tenant_group: String,
    pub rds_tenant: String,
    pub host_pools: Vec<String>,
    pub hosts: BTreeMap<String, Vec<String>>,
    pub ca_pem: String,
}

/// A message delivered to a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveredMessage {
    pub pool: String,
    pub host: String,
    pub session_id: u32,
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone)]
struct SessRec {
    host: String,
    id: u32,
    upn: String,
    ad_user: String,
    state: &'static str,
    app_type: &'static str,
    created: OffsetDateTime,
}

#[derive(Debug, Clone)]
struct HostRec {
    name: String,
    allow_new_session: bool,
    reachable: bool,
    /// Actions on this host time out (`OperationFailedTimeout`).
    hang: bool,
    last_heartbeat: OffsetDateTime,
}

#[derive(Debug, Default)]
struct PoolRec {
    name: String,
    hosts: Vec<HostRec>,
    sessions: Vec<SessRec>,
}

impl PoolRec {
    fn host(&self, name: &str) -> Option<&HostRec> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
    fn host_mut(&mut self, name: &str) -> Option<&mut HostRec> {
        self.hosts
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
    fn session_idx(&self, host: &str, id: u32) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.id == id && s.host.eq_ignore_ascii_case(host))
    }
    fn lowest_free_id(&self, host: &str) -> u32 {
        let mut id = 2;
        while self.session_idx(host, id).is_some() {
            id += 1;
        }
        id
    }
    fn count_on(&self, host: &str) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.host.eq_ignore_ascii_case(host))
            .count()
    }
}

/// Live state of the emulator; tests drive it through [`ClassicEmulator::state`].
pub struct ClassicState {
    opts: ClassicEmulatorOptions,
    base_url: Mutex<String>,
    pools: Mutex<BTreeMap<String, PoolRec>>,
    integers: AtomicBool,
    reject_tokens: AtomicBool,
    bucket: Mutex<Option<Arc<TokenBucket>>>,
    throttle_next: Mutex<(u32, u64)>,
    fail_next: AtomicU32,
    faults: Arc<Faults>,
    calls: Mutex<HashMap<String, u64>>,
    messages: Mutex<Vec<DeliveredMessage>>,
    issuer: Arc<TokenIssuer>,
    no_role_issuer: Arc<TokenIssuer>,
    trusted_certs: Mutex<Vec<TrustedCert>>,
    last_api_version: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
struct TrustedCert {
    client_id: String,
    x5t_s256: String,
    public_key_pem: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClassicState {
    /// The role-holding principal's token issuer (tests count tokens, revoke them).
    pub fn issuer(&self) -> &Arc<TokenIssuer> {
        &self.issuer
    }
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }
    /// Switches enums between names and integers.
    pub fn set_enum_style(&self, s: EnumStyle) {
        self.integers
            .store(s == EnumStyle::Integers, Ordering::Relaxed);
    }
    /// Makes the broker refuse every bearer token with 401 (e.g. a broker-side key problem).
    pub fn set_reject_tokens(&self, on: bool) {
        self.reject_tokens.store(on, Ordering::Relaxed);
    }
    /// Token-bucket throttling `(capacity, refill per second)`, or off.
    pub fn set_throttling(&self, t: Option<(u32, u32)>) {
        *lock(&self.bucket) = t.map(|(c, r)| Arc::new(TokenBucket::new(c, r)));
    }
    /// Answers the next `n` authenticated requests with 429 and `Retry-After: retry_after_secs`.
    pub fn throttle_next(&self, n: u32, retry_after_secs: u64) {
        *lock(&self.throttle_next) = (n, retry_after_secs);
    }
    /// Answers the next `n` broker requests with 503 (deterministic 5xx).
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::Relaxed);
    }
    /// How many requests hit the route kind (`list_sessions`, `list_hosts`, `get_host`,
    /// `patch_host`, `logoff-user`, `disconnect-user`, `send-message-user`, `discovery`), counted
    /// before auth, throttling and injected failures.
    pub fn calls(&self, kind: &str) -> u64 {
        lock(&self.calls).get(kind).copied().unwrap_or(0)
    }
    /// The last `x-ms-wvd-client-api-version` header seen.
    pub fn last_client_api_version(&self) -> Option<String> {
        lock(&self.last_api_version).clone()
    }
    /// Messages delivered so far.
    pub fn messages(&self) -> Vec<DeliveredMessage> {
        lock(&self.messages).clone()
    }

    fn with_pool<R>(&self, pool: &str, f: impl FnOnce(&mut PoolRec) -> R) -> Option<R> {
        let mut pools = lock(&self.pools);
        pools.get_mut(&pool.to_ascii_lowercase()).map(f)
    }

    /// Adds an active session for `upn` on `host` (the lowest free id); `None` when the pool is
    /// unknown. The host need not exist (a session on a missing host is a ghost).
    pub fn add_session(&self, pool: &str, host: &str, upn: &str) -> Option<u32> {
        self.with_pool(pool, |p| {
            let id = p.lowest_free_id(host);
            let host_name = p.host(host).map_or(host.to_string(), |h| h.name.clone());
            let user = upn.split('@').next().unwrap_or(upn);
            p.sessions.push(SessRec {
                host: host_name,
                id,
                upn: upn.to_string(),
                ad_user: format!("CONTOSO\\{user}"),
                state: "Active",
                app_type: "Desktop",
                created: OffsetDateTime::now_utc(),
            });
            id
        })
    }

    /// Adds a ghost session: listed by the broker, but on a host that is gone.
    pub fn add_ghost_session(&self, pool: &str, gone_host: &str, upn: &str) -> Option<u32> {
        self.with_pool(pool, |p| {
            p.hosts.retain(|h| !h.name.eq_ignore_ascii_case(gone_host))
        })?;
        self.add_session(pool, gone_host, upn)
    }

    /// Marks a host unreachable (status `Unavailable`): its sessions become ghosts.
    pub fn set_host_reachable(&self, pool: &str, host: &str, reachable: bool) -> bool {
        self.with_pool(pool, |p| {
            p.host_mut(host).map(|h| h.reachable = reachable).is_some()
        })
        .unwrap_or(false)
    }

    /// Makes actions on `host` answer `OperationFailedTimeout`.
    pub fn set_host_hang(&self, pool: &str, host: &str, hang: bool) -> bool {
        self.with_pool(pool, |p| p.host_mut(host).map(|h| h.hang = hang).is_some())
            .unwrap_or(false)
    }

    /// Sets a session's state by name (e.g. `Disconnected`).
    pub fn set_session_state(&self, pool: &str, host: &str, id: u32, state: &str) -> bool {
        let Some(st) = SESSION_STATES
            .iter()
            .find(|s| s.eq_ignore_ascii_case(state))
        else {
            return false;
        };
        self.with_pool(pool, |p| {
            p.session_idx(host, id)
                .map(|i| p.sessions[i].state = st)
                .is_some()
        })
        .unwrap_or(false)
    }

    /// Session state name, or `None` when the broker no longer lists it.
    pub fn session_state(&self, pool: &str, host: &str, id: u32) -> Option<String> {
        self.with_pool(pool, |p| {
            p.session_idx(host, id)
                .map(|i| p.sessions[i].state.to_string())
        })
        .flatten()
    }

    /// Number of sessions the broker lists in `pool`.
    pub fn session_count(&self, pool: &str) -> usize {
        self.with_pool(pool, |p| p.sessions.len()).unwrap_or(0)
    }

    /// Host names of `pool`.
    pub fn hosts(&self, pool: &str) -> Vec<String> {
        self.with_pool(pool, |p| p.hosts.iter().map(|h| h.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether a host accepts new sessions.
    pub fn allow_new_session(&self, pool: &str, host: &str) -> Option<bool> {
        self.with_pool(pool, |p| p.host(host).map(|h| h.allow_new_session))
            .flatten()
    }

    /// Trusts a certificate for client-assertion sign-in of `client_id`: `cert_der` gives the
    /// thumbprints the assertion must name, `public_key_pem` (SPKI PEM) verifies its signature.
    pub fn trust_certificate(&self, client_id: &str, cert_der: &[u8], public_key_pem: &str) {
        use base64::Engine;
        use sha2::Digest;
        let x5t_s256 =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der));
        lock(&self.trusted_certs).push(TrustedCert {
            client_id: client_id.to_string(),
            x5t_s256,
            public_key_pem: public_key_pem.to_string(),
        });
    }

    fn verify_assertion(&self, client_id: &str, jwt: &str) -> Result<(), String> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
        let thumb = header.x5t_s256.ok_or("no x5t#S256 header")?;
        let certs = lock(&self.trusted_certs).clone();
        let cert = certs
            .iter()
            .find(|c| c.client_id == client_id && c.x5t_s256 == thumb)
            .ok_or("no trusted certificate with that thumbprint for this client")?;
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(cert.public_key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(jwt, &key, &v).map_err(|e| e.to_string())?;
        let c = &data.claims;
        let aud_ok = c["aud"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!("/{}/oauth2/v2.0/token", self.opts.aad_tenant)));
        if !aud_ok || c["iss"] != client_id || c["sub"] != client_id {
            return Err("aud, iss or sub do not match".into());
        }
        Ok(())
    }

    fn count(&self, kind: &str) {
        *lock(&self.calls).entry(kind.to_string()).or_default() += 1;
    }
}

/// A running classic broker emulator.
pub struct ClassicEmulator {
    running: Running,
    state: Arc<ClassicState>,
    ca_pem: String,
}

impl ClassicEmulator {
    pub fn base_url(&self) -> &str {
        &self.running.base_url
    }
    pub fn state(&self) -> Arc<ClassicState> {
        self.state.clone()
    }
    pub fn info(&self) -> ClassicEmulatorInfo {
        let o = &self.state.opts;
        let base = self.running.base_url.clone();
        let hosts = o
            .host_pools
            .iter()
            .map(|p| (p.clone(), self.state.hosts(p)))
            .collect();
        ClassicEmulatorInfo {
            kind: "wvd-classic",
            broker_url: base.clone(),
            token_url: format!("{base}/{}/oauth2/v2.0/token", o.aad_tenant),
            authority_host: base,
            aad_tenant: o.aad_tenant.clone(),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
            no_role_client_id: o.no_role_client_id.clone(),
            no_role_client_secret: o.no_role_client_secret.clone(),
            resource: RDINFRA_RESOURCE.into(),
            tenant_group: o.tenant_group.clone(),
            rds_tenant: o.rds_tenant.clone(),
            host_pools: o.host_pools.clone(),
            hosts,
            ca_pem: self.ca_pem.clone(),
        }
    }
    pub fn stop(&self) {
        self.running.abort();
    }
}

fn seed(opts: &ClassicEmulatorOptions) -> BTreeMap<String, PoolRec> {
    let now = OffsetDateTime::now_utc();
    let mut pools = BTreeMap::new();
    let mut user_no = 0u32;
    for pool in &opts.host_pools {
        let mut p = PoolRec {
            name: pool.clone(),
            ..PoolRec::default()
        };
        for h in 1..=opts.hosts_per_pool {
            let name = format!("{}-sh{h}.{}", pool.to_ascii_lowercase(), opts.host_domain);
            for s in 0..opts.sessions_per_host {
                user_no += 1;
                p.sessions.push(SessRec {
                    host: name.clone(),
                    id: 2 + s,
                    upn: format!("user{user_no}@{}", opts.host_domain),
                    ad_user: format!("CONTOSO\\user{user_no}"),
                    state: "Active",
                    app_type: "Desktop",
                    created: now,
                });
            }
            p.hosts.push(HostRec {
                name,
                allow_new_session: true,
                reachable: true,
                hang: false,
                last_heartbeat: now,
            });
        }
        pools.insert(pool.to_ascii_lowercase(), p);
    }
    pools
}

/// Starts the emulator on `listener`.
pub async fn start(
    listener: TcpListener,
    tls: &EmulatorTls,
    opts: ClassicEmulatorOptions,
) -> std::io::Result<ClassicEmulator> {
    let port = listener.local_addr()?.port();
    let issuer = TokenIssuer::new(&opts.aad_tenant, &opts.client_id, &opts.client_secret);
    issuer.allow_scope(RDINFRA_SCOPE);
    let no_role_issuer = TokenIssuer::new(
        &opts.aad_tenant,
        &opts.no_role_client_id,
        &opts.no_role_client_secret,
    );
    no_role_issuer.allow_scope(RDINFRA_SCOPE);
    let faults = Faults::new(opts.faults);
    let state = Arc::new(ClassicState {
        base_url: Mutex::new(format!("https://127.0.0.1:{port}")),
        pools: Mutex::new(seed(&opts)),
        integers: AtomicBool::new(opts.enum_style == EnumStyle::Integers),
        reject_tokens: AtomicBool::new(false),
        bucket: Mutex::new(opts.throttle.map(|(c, r)| Arc::new(TokenBucket::new(c, r)))),
        throttle_next: Mutex::new((0, 1)),
        fail_next: AtomicU32::new(0),
        faults: faults.clone(),
        calls: Mutex::new(HashMap::new()),
        messages: Mutex::new(Vec::new()),
        issuer,
        no_role_issuer,
        trusted_certs: Mutex::new(Vec::new()),
        last_api_version: Mutex::new(None),
        opts,
    });

    let broker = Router::new()
        .route("/RdsManagement/V1", get(discovery))
        .route(&format!("{PREFIX}/Sessions"), get(list_sessions))
        .route(&format!("{PREFIX}/SessionHosts"), get(list_hosts))
        .route(
            &format!("{PREFIX}/SessionHosts/{{host}}"),
            get(get_host).patch(patch_host),
        )
        .route(
            &format!("{PREFIX}/SessionHosts/{{host}}/Sessions/{{id}}/actions/{{action}}"),
            post(action),
        )
        .fallback(not_found_route)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state.clone());
    let router = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_dispatch))
        .with_state(state.clone())
        .merge(broker);

    let ca_pem = tls.ca_pem().to_string();
    let running =
        crate::emulator::common::serve_tls(listener, tls, router, faults, injected_error)?;
    *lock(&state.base_url) = running.base_url.clone();
    Ok(ClassicEmulator {
        running,
        state,
        ca_pem,
    })
}

/// A refused request, boxed so `Result`s stay small.
struct Rejected(Box<Response>);

impl From<Response> for Rejected {
    fn from(r: Response) -> Self {
        Self(Box::new(r))
    }
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn reject(status: StatusCode, code: &str, target: &str) -> Rejected {
    Rejected::from(broker_error(status, code, target))
}

/// The broker's error shape: the symbolic code is in `message`.
fn broker_error(status: StatusCode, code: &str, target: &str) -> Response {
    let http_code = status
        .canonical_reason()
        .unwrap_or("Error")
        .replace(' ', "");
    (
        status,
        Json(json!({
            "error": {"code": http_code, "message": code, "target": target, "details": []}
        })),
    )
        .into_response()
}

fn injected_error() -> Response {
    broker_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "The service is temporarily unavailable (injected fault).",
    )
}

fn challenge(st: &ClassicState) -> Response {
    let base = lock(&st.base_url).clone();
    let o = &st.opts;
    let hint = format!(
        "MS-WARA-CLAIMS hint=\"Authority={base}/{};Client={};Redirect=urn:ietf:wg:oauth:2.0:oob;Resource={RDINFRA_RESOURCE};Tenant={}\"",
        o.aad_tenant, o.challenge_client_id, o.aad_tenant
    );
    let mut r = broker_error(
        StatusCode::UNAUTHORIZED,
        "UnauthorizedAccess",
        "The request carries no valid bearer token for the RDInfra broker.",
    );
    if let Ok(v) = HeaderValue::from_str(&hint) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn route_kind(method: &Method, path: &str) -> String {
    let p = path.trim_end_matches('/');
    if p.eq_ignore_ascii_case("/RdsManagement/V1") {
        return "discovery".into();
    }
    if let Some(i) = p.rfind("/actions/") {
        return p[i + "/actions/".len()..].to_string();
    }
    if p.ends_with("/Sessions") {
        return "list_sessions".into();
    }
    if p.ends_with("/SessionHosts") {
        return "list_hosts".into();
    }
    if p.contains("/SessionHosts/") {
        return if method == Method::PATCH {
            "patch_host".into()
        } else {
            "get_host".into()
        };
    }
    "other".into()
}

/// Counts, injects deterministic failures, checks the bearer token and throttles.
async fn gate(State(st): State<Arc<ClassicState>>, req: Request, next: Next) -> Response {
    st.count(&route_kind(req.method(), req.uri().path()));
    let fail = st
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        return injected_error();
    }
    let headers = req.headers();
    if let Some(v) = headers
        .get("x-ms-wvd-client-api-version")
        .and_then(|v| v.to_str().ok())
    {
        *lock(&st.last_api_version) = Some(v.to_string());
    }
    if st.reject_tokens.load(Ordering::Relaxed) {
        return challenge(&st);
    }
    if st.issuer.check(headers, &[RDINFRA_SCOPE]).is_err() {
        if st.no_role_issuer.check(headers, &[RDINFRA_SCOPE]).is_ok() {
            return broker_error(
                StatusCode::FORBIDDEN,
                "UnauthorizedAccess",
                "User is not authorized to query the management service (no RDS role assignment in this tenant).",
            );
        }
        return challenge(&st);
    }
    let forced = {
        let mut t = lock(&st.throttle_next);
        if t.0 > 0 {
            t.0 -= 1;
            Some(t.1)
        } else {
            None
        }
    };
    let bucket = lock(&st.bucket).clone();
    let wait = forced.or_else(|| bucket.and_then(|b| b.take().err().map(|t| t.retry_after_secs)));
    if let Some(secs) = wait {
        let mut r = broker_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RequestThrottled",
            "Too many requests; retry later.",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    next.run(req).await
}

async fn discovery() -> Response {
    Json(json!({"service": "RDInfra broker (emulated)", "version": "V1"})).into_response()
}

async fn not_found_route() -> Response {
    broker_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "No route matches the request.",
    )
}

/// Forwards a token request to the issuer of the client it names.
async fn token_dispatch(State(st): State<Arc<ClassicState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let client = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.into_owned());
    let issuer = if client.as_deref() == Some(st.opts.no_role_client_id.as_str()) {
        st.no_role_issuer.clone()
    } else {
        st.issuer.clone()
    };
    let mut parts = parts;
    let assertion = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.into_owned());
    let bytes = match assertion {
        None => bytes,
        Some(jwt) => {
            // Certificate credential: check the assertion, then let the issuer mint the token
            // as it would for the same client's secret.
            let cid = client.clone().unwrap_or_default();
            if let Err(why) = st.verify_assertion(&cid, &jwt) {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({
                        "error": "invalid_client",
                        "error_description": format!("AADSTS700027: Client assertion failed signature validation: {why}"),
                        "error_codes": [700027],
                    })),
                )
                    .into_response();
            }
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in url::form_urlencoded::parse(&bytes) {
                if k != "client_assertion" && k != "client_assertion_type" {
                    form.append_pair(&k, &v);
                }
            }
            form.append_pair("client_secret", &issuer.client_secret);
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(form.finish())
        }
    };
    // Forward without this router's extensions (its matched path parameters would clash).
    parts.extensions = axum::http::Extensions::new();
    let req = Request::from_parts(parts, Body::from(bytes));
    match tower::ServiceExt::oneshot(issuer.router(), req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

#[derive(Deserialize)]
struct PoolPath {
    tg: String,
    tenant: String,
    pool: String,
}

#[derive(Deserialize)]
struct HostPath {
    tg: String,
    tenant: String,
    pool: String,
    host: String,
}

#[derive(Deserialize)]
struct ActionPath {
    tg: String,
    tenant: String,
    pool: String,
    host: String,
    id: String,
    action: String,
}

/// Resolves tenant group, tenant and pool, or answers the broker's 404.
fn resolve(st: &ClassicState, tg: &str, tenant: &str, pool: &str) -> Result<String, Rejected> {
    if !tg.eq_ignore_ascii_case(&st.opts.tenant_group) {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "TenantGroupNotFound",
            &format!("Tenant group '{tg}' does not exist."),
        ));
    }
    if !tenant.eq_ignore_ascii_case(&st.opts.rds_tenant) {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "TenantNotFound",
            &format!("Tenant '{tenant}' does not exist in tenant group '{tg}'."),
        ));
    }
    let key = pool.to_ascii_lowercase();
    if !lock(&st.pools).contains_key(&key) {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "HostPoolNotFound",
            &format!("Host pool '{pool}' does not exist in tenant '{tenant}'."),
        ));
    }
    Ok(key)
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect()
}

struct Paging {
    page_size: usize,
    skip: usize,
    sort_field: String,
    descending: bool,
}

fn paging(q: &HashMap<String, String>, default_sort: &str) -> Result<Paging, Rejected> {
    let bad = |what: &str| {
        reject(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            &format!("Query parameter '{what}' is invalid."),
        )
    };
    let page_size = match q.get("pagesize") {
        Some(v) => v.parse::<usize>().map_err(|_| bad("PageSize"))?,
        None => 1000,
    };
    let skip = match q.get("initialskip") {
        Some(v) => v.parse::<usize>().map_err(|_| bad("InitialSkip"))?,
        None => 0,
    };
    let descending = match q.get("isdescending").map(|s| s.to_ascii_lowercase()) {
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(_) => return Err(bad("IsDescending")),
        None => false,
    };
    Ok(Paging {
        page_size: page_size.clamp(1, 1000),
        skip,
        sort_field: q
            .get("sortfield")
            .cloned()
            .unwrap_or_else(|| default_sort.to_string()),
        descending,
    })
}

/// Renders one page and the `next` header (absolute URL, same query with `InitialSkip` advanced).
fn page_response(
    st: &ClassicState,
    headers: &HeaderMap,
    path: &str,
    pg: &Paging,
    items: Vec<Value>,
) -> Response {
    let (start, end, more) =
        crate::emulator::common::page_bounds(items.len(), pg.skip, pg.page_size);
    let page: Vec<Value> = items[start..end].to_vec();
    let mut r = Json(Value::Array(page)).into_response();
    if more {
        let base = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("https://{h}"))
            .unwrap_or_else(|| lock(&st.base_url).clone());
        let (size, skip) = (pg.page_size.to_string(), end.to_string());
        let q = crate::upstream::query(&[
            ("PageSize", size.as_str()),
            ("SortField", pg.sort_field.as_str()),
            ("IsDescending", if pg.descending { "True" } else { "False" }),
            ("InitialSkip", skip.as_str()),
        ]);
        if let Ok(v) = HeaderValue::from_str(&format!("{base}{path}?{q}")) {
            r.headers_mut().insert("next", v);
        }
    }
    r
}

fn enum_value(integers: bool, table: &[&str], name: &str) -> Value {
    if integers {
        table
            .iter()
            .position(|t| *t == name)
            .map_or_else(|| Value::from(name), Value::from)
    } else {
        Value::from(name)
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn session_json(st: &ClassicState, pool: &str, s: &SessRec) -> Value {
    let ints = st.integers.load(Ordering::Relaxed);
    json!({
        "tenantGroupName": st.opts.tenant_group,
        "tenantName": st.opts.rds_tenant,
        "hostPoolName": pool,
        "sessionHostName": s.host,
        "userPrincipalName": s.upn,
        "adUserName": s.ad_user,
        "createTime": rfc3339(s.created),
        "sessionId": s.id,
        "applicationType": enum_value(ints, &APPLICATION_TYPES, s.app_type),
        "sessionState": enum_value(ints, &SESSION_STATES, s.state),
    })
}

fn host_json(st: &ClassicState, p: &PoolRec, h: &HostRec) -> Value {
    let ints = st.integers.load(Ordering::Relaxed);
    let status = if h.reachable {
        "Available"
    } else {
        "Unavailable"
    };
    json!({
        "sessionHostName": h.name,
        "tenantName": st.opts.rds_tenant,
        "tenantGroupName": st.opts.tenant_group,
        "hostPoolName": p.name,
        "allowNewSession": h.allow_new_session,
        "sessions": p.count_on(&h.name),
        "lastHeartBeat": rfc3339(h.last_heartbeat),
        "agentVersion": "1.0.1800.1900",
        "assignedUser": null,
        "osVersion": "10.0.17763",
        "sxSStackVersion": "rdp-sxs191111001",
        "status": enum_value(ints, &HOST_STATUSES, status),
        "statusTimestamp": rfc3339(h.last_heartbeat),
        "updateState": "Succeeded",
        "lastUpdateTime": rfc3339(h.last_heartbeat),
        "updateErrorMessage": "",
    })
}

fn sort_key(field: &str, s: &SessRec) -> (String, String, u32) {
    let f = field.to_ascii_lowercase();
    let primary = match f.as_str() {
        "sessionhostname" => s.host.to_ascii_lowercase(),
        "createtime" => rfc3339(s.created),
        "sessionid" => format!("{:010}", s.id),
        "adusername" => s.ad_user.to_ascii_lowercase(),
        _ => s.upn.to_ascii_lowercase(),
    };
    (primary, s.host.to_ascii_lowercase(), s.id)
}

async fn list_sessions(
    State(st): State<Arc<ClassicState>>,
    Path(pp): Path<PoolPath>,
    RawQuery(q): RawQuery,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let key = match resolve(&st, &pp.tg, &pp.tenant, &pp.pool) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let pg = match paging(&query_map(q.as_deref()), "UserPrincipalName") {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let items = st
        .with_pool(&key, |p| {
            let mut v: Vec<&SessRec> = p.sessions.iter().collect();
            v.sort_by_key(|s| sort_key(&pg.sort_field, s));
            if pg.descending {
                v.reverse();
            }
            v.into_iter()
                .map(|s| session_json(&st, &p.name, s))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    page_response(&st, &headers, uri.path(), &pg, items)
}

async fn list_hosts(
    State(st): State<Arc<ClassicState>>,
    Path(pp): Path<PoolPath>,
    RawQuery(q): RawQuery,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let key = match resolve(&st, &pp.tg, &pp.tenant, &pp.pool) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let pg = match paging(&query_map(q.as_deref()), "SessionHostName") {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let items = st
        .with_pool(&key, |p| {
            let mut v: Vec<&HostRec> = p.hosts.iter().collect();
            v.sort_by_key(|h| h.name.to_ascii_lowercase());
            if pg.descending {
                v.reverse();
            }
            v.into_iter()
                .map(|h| host_json(&st, p, h))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    page_response(&st, &headers, uri.path(), &pg, items)
}

fn host_not_found(host: &str, pool: &str) -> Response {
    broker_error(
        StatusCode::NOT_FOUND,
        "SessionHostNotFound",
        &format!("Session host '{host}' does not exist in host pool '{pool}'."),
    )
}

async fn get_host(State(st): State<Arc<ClassicState>>, Path(hp): Path<HostPath>) -> Response {
    let key = match resolve(&st, &hp.tg, &hp.tenant, &hp.pool) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    st.with_pool(&key, |p| match p.host(&hp.host) {
        Some(h) => Json(host_json(&st, p, h)).into_response(),
        None => host_not_found(&hp.host, &p.name),
    })
    .unwrap_or_else(|| host_not_found(&hp.host, &hp.pool))
}

async fn patch_host(
    State(st): State<Arc<ClassicState>>,
    Path(hp): Path<HostPath>,
    body: Bytes,
) -> Response {
    let key = match resolve(&st, &hp.tg, &hp.tenant, &hp.pool) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return broker_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "The request body is not valid JSON.",
            );
        }
    };
    let allow = patch
        .get("allowNewSession")
        .or_else(|| patch.get("AllowNewSession"))
        .and_then(Value::as_bool);
    st.with_pool(&key, |p| {
        let Some(h) = p.host_mut(&hp.host) else {
            return host_not_found(&hp.host, &hp.pool);
        };
        if let Some(a) = allow {
            h.allow_new_session = a;
        }
        let h = h.clone();
        Json(host_json(&st, p, &h)).into_response()
    })
    .unwrap_or_else(|| host_not_found(&hp.host, &hp.pool))
}

fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<bool, Rejected> {
    match q.get(name).map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(_) => Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            &format!("Query parameter '{name}' must be True or False."),
        )),
    }
}

async fn action(
    State(st): State<Arc<ClassicState>>,
    Path(ap): Path<ActionPath>,
    RawQuery(q): RawQuery,
) -> Response {
    let key = match resolve(&st, &ap.tg, &ap.tenant, &ap.pool) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let q = query_map(q.as_deref());
    let Ok(id) = ap.id.parse::<u32>() else {
        return broker_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "Session id must be an integer.",
        );
    };
    let action = ap.action.to_ascii_lowercase();
    let force = match bool_param(&q, "force") {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let (title, body) = (
        q.get("messagetitle").cloned(),
        q.get("messagebody").cloned(),
    );
    if !matches!(
        action.as_str(),
        "logoff-user" | "disconnect-user" | "send-message-user"
    ) {
        return not_found_route().await;
    }
    if action == "send-message-user" && (title.is_none() || body.is_none()) {
        return broker_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "MessageTitle and MessageBody are required.",
        );
    }
    let host = ap.host.clone();
    let outcome = st.with_pool(&key, |p| {
        let host_rec = p.host(&host).cloned();
        let Some(idx) = p.session_idx(&host, id) else {
            if host_rec.is_none() {
                return Err(Rejected::from(host_not_found(&host, &p.name)));
            }
            return Err(Rejected::from(if action == "logoff-user" {
                broker_error(
                    StatusCode::NOT_FOUND,
                    "SessionHostLogoffSessionIdNotExist",
                    &format!("Session id {id} does not exist on session host '{host}'."),
                )
            } else {
                broker_error(
                    StatusCode::NOT_FOUND,
                    "SessionNotFound",
                    &format!("Session {id} was not found on session host '{host}'."),
                )
            }));
        };
        let reachable = host_rec.as_ref().is_some_and(|h| h.reachable);
        if host_rec.as_ref().is_some_and(|h| h.hang) && !(force && action == "logoff-user") {
            return Err(reject(
                StatusCode::GATEWAY_TIMEOUT,
                "OperationFailedTimeout",
                &format!("The operation on session host '{host}' timed out."),
            ));
        }
        match action.as_str() {
            "logoff-user" => {
                if !reachable && !force {
                    return Err(Rejected::from(unreachable(&host)));
                }
                // Reachable: the host logs the user off. Unreachable with Force: the broker drops
                // its stale record.
                p.sessions.remove(idx);
                Ok(None)
            }
            "disconnect-user" => {
                if !reachable {
                    return Err(Rejected::from(unreachable(&host)));
                }
                let s = &mut p.sessions[idx];
                if s.state == "Active" || s.state == "Pending" {
                    s.state = "Disconnected";
                }
                Ok(None)
            }
            _ => {
                if !reachable {
                    return Err(Rejected::from(unreachable(&host)));
                }
                let s = &p.sessions[idx];
                Ok(Some(DeliveredMessage {
                    pool: p.name.clone(),
                    host: s.host.clone(),
                    session_id: id,
                    title: title.clone().unwrap_or_default(),
                    body: body.clone().unwrap_or_default(),
                }))
            }
        }
    });
    match outcome {
        Some(Ok(msg)) => {
            if let Some(m) = msg {
                lock(&st.messages).push(m);
            }
            StatusCode::OK.into_response()
        }
        Some(Err(r)) => r.into_response(),
        None => host_not_found(&ap.host, &ap.pool),
    }
}

fn unreachable(host: &str) -> Response {
    broker_error(
        StatusCode::BAD_REQUEST,
        "SessionHostUnreachable",
        &format!("Session host '{host}' is unreachable; use Force to remove stale sessions."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_id_is_reused() {
        let mut p = PoolRec::default();
        for id in [2, 3, 5] {
            p.sessions.push(SessRec {
                host: "SH1.contoso.com".into(),
                id,
                upn: "u".into(),
                ad_user: "u".into(),
                state: "Active",
                app_type: "Desktop",
                created: OffsetDateTime::now_utc(),
            });
        }
        assert_eq!(p.lowest_free_id("sh1.contoso.com"), 4);
        assert_eq!(p.lowest_free_id("sh2.contoso.com"), 2);
    }

    #[test]
    fn enums_map_in_reference_order() {
        assert_eq!(enum_value(true, &SESSION_STATES, "Active"), json!(1));
        assert_eq!(enum_value(true, &SESSION_STATES, "LoggOff"), json!(4));
        assert_eq!(
            enum_value(false, &SESSION_STATES, "LoggOff"),
            json!("LoggOff")
        );
        assert_eq!(enum_value(true, &HOST_STATUSES, "Unavailable"), json!(1));
    }

    #[test]
    fn route_kinds() {
        assert_eq!(
            route_kind(
                &Method::POST,
                "/RdsManagement/V1/TenantGroups/a/Tenants/b/HostPools/c/SessionHosts/h/Sessions/2/actions/logoff-user"
            ),
            "logoff-user"
        );
        assert_eq!(route_kind(&Method::GET, "/RdsManagement/V1"), "discovery");
    }
}
