//! Azure Resource Manager emulator for `Microsoft.DesktopVirtualization` host pools, session
//! hosts and user sessions, faithful to the wire contract in `reference/avd-arm.md`:
//! bearer tokens from an Entra-style token endpoint on the same origin, `api-version` checks,
//! case-insensitive ARM paths, ARM error bodies, `nextLink` paging, ARM token-bucket
//! throttling with `Retry-After`, and Windows-like session lifecycle (ids reused after logoff).
//!
//! The emulator can speak both the spec-example naming (`name: "6"`) and what the real
//! service returns (`name: "hp1/sh1.contoso.com/6"`, lower-case id segments and type).

use super::common::{
    EmulatorTls, FaultSettings, Faults, Running, TokenBucket, TokenIssuer, TokenRejection,
    serve_tls,
};
use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// API versions of `Microsoft.DesktopVirtualization` the emulator accepts.
pub const SUPPORTED_API_VERSIONS: &[&str] = &[
    "2021-07-12",
    "2022-02-10-preview",
    "2022-09-09",
    "2023-09-05",
    "2024-04-03",
    "2024-04-08-preview",
    "2025-10-10",
];

const PROVIDER_NS: &str = "Microsoft.DesktopVirtualization";

/// Token audiences (resources) of the real Azure Resource Manager (public cloud); the
/// emulator's ARM routes accept tokens for these as well as for its own origin.
pub const ARM_AUDIENCES: &[&str] = &[
    "https://management.azure.com",
    "https://management.core.windows.net",
];

/// How resource `name`/`id`/`type` are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameStyle {
    /// What the real service returns: `name: "hp1/sh1.contoso.com/6"`, lower-case
    /// resource-type segments in id and type (`.../resourcegroups/rg/providers/
    /// Microsoft.DesktopVirtualization/hostpools/hp1/sessionhosts/sh1/usersessions/6`,
    /// as seen in real Az.DesktopVirtualization output).
    #[default]
    Real,
    /// The spec examples: `name: "6"`, canonical-case id and type.
    Spec,
}

impl FromStr for NameStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "real" => Ok(Self::Real),
            "spec" => Ok(Self::Spec),
            _ => Err(format!("unknown name style '{s}' (expected real or spec)")),
        }
    }
}

/// What a DELETE of a session that does not exist answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MissingLogoffStatus {
    /// 404 "User session ID not found" (what the real service has answered).
    #[default]
    #[serde(rename = "404")]
    NotFound,
    /// 204 No Content (what the spec says).
    #[serde(rename = "204")]
    NoContent,
}

impl FromStr for MissingLogoffStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "404" => Ok(Self::NotFound),
            "204" => Ok(Self::NoContent),
            _ => Err(format!("unknown logoff status '{s}' (expected 404 or 204)")),
        }
    }
}

/// ARM token buckets (per subscription): capacity and refill per second for each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleSettings {
    pub read_capacity: u32,
    pub read_refill_per_sec: u32,
    pub write_capacity: u32,
    pub write_refill_per_sec: u32,
    pub delete_capacity: u32,
    pub delete_refill_per_sec: u32,
}

impl Default for ThrottleSettings {
    /// ARM's documented buckets: reads 250/25 s, writes 200/10 s, deletes 200/10 s.
    fn default() -> Self {
        Self {
            read_capacity: 250,
            read_refill_per_sec: 25,
            write_capacity: 200,
            write_refill_per_sec: 10,
            delete_capacity: 200,
            delete_refill_per_sec: 10,
        }
    }
}

struct Buckets {
    reads: TokenBucket,
    writes: TokenBucket,
    deletes: TokenBucket,
}

impl Buckets {
    fn new(s: ThrottleSettings) -> Self {
        Self {
            reads: TokenBucket::new(s.read_capacity, s.read_refill_per_sec),
            writes: TokenBucket::new(s.write_capacity, s.write_refill_per_sec),
            deletes: TokenBucket::new(s.delete_capacity, s.delete_refill_per_sec),
        }
    }
}

/// Start-up options of the emulator.
#[derive(Debug, Clone)]
pub struct ArmEmulatorOptions {
    pub subscription: String,
    pub resource_group: String,
    pub host_pools: Vec<String>,
    pub hosts_per_pool: usize,
    pub sessions_per_host: usize,
    /// Items per list page (the real service pages at about 200 hosts).
    pub page_size: usize,
    pub name_style: NameStyle,
    pub missing_logoff_status: MissingLogoffStatus,
    /// `None` disables throttling.
    pub throttling: Option<ThrottleSettings>,
    pub faults: FaultSettings,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
}

impl Default for ArmEmulatorOptions {
    fn default() -> Self {
        Self {
            subscription: "0c1d2e3f-4a5b-4c6d-8e7f-000000000001".into(),
            resource_group: "rg-avd".into(),
            host_pools: vec!["hp1".into()],
            hosts_per_pool: 2,
            sessions_per_host: 2,
            page_size: 200,
            name_style: NameStyle::Real,
            missing_logoff_status: MissingLogoffStatus::NotFound,
            throttling: Some(ThrottleSettings::default()),
            faults: FaultSettings::default(),
            tenant: "11111111-2222-4333-8444-555555555555".into(),
            client_id: "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee".into(),
            client_secret: "emulator-client-secret".into(),
        }
    }
}

/// What `sessiongate emulate avd` prints (one JSON line): everything a client needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmEmulatorInfo {
    pub base_url: String,
    pub token_url: String,
    pub authority_host: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    pub subscription: String,
    pub resource_group: String,
    pub host_pools: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem_path: Option<String>,
}

/// The emulated operations (for call counters and one-shot faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArmOp {
    ListPoolSessions,
    ListHostSessions,
    GetSession,
    Logoff,
    Disconnect,
    SendMessage,
    ListHosts,
    GetHost,
    UpdateHost,
}

impl ArmOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ArmOp::ListPoolSessions => "list_pool_sessions",
            ArmOp::ListHostSessions => "list_host_sessions",
            ArmOp::GetSession => "get_session",
            ArmOp::Logoff => "logoff",
            ArmOp::Disconnect => "disconnect",
            ArmOp::SendMessage => "send_message",
            ArmOp::ListHosts => "list_hosts",
            ArmOp::GetHost => "get_host",
            ArmOp::UpdateHost => "update_host",
        }
    }
}

/// A message delivered to a session through `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveredMessage {
    pub pool: String,
    pub host: String,
    pub session_id: u32,
    pub user: String,
    pub title: String,
    pub body: String,
}

/// A snapshot of one emulated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmulatedSession {
    pub host: String,
    pub id: u32,
    pub user: String,
    pub state: String,
}

#[derive(Debug, Clone)]
struct Sess {
    upn: String,
    ad_user: String,
    object_id: String,
    app_type: String,
    state: String,
    created: OffsetDateTime,
}

#[derive(Debug, Clone)]
struct Host {
    name: String,
    status: String,
    allow_new_session: bool,
    object_id: String,
    sessions: BTreeMap<u32, Sess>,
}

#[derive(Debug, Clone)]
struct Pool {
    name: String,
    hosts: Vec<Host>,
}

impl Pool {
    fn host_mut(&mut self, name: &str) -> Option<&mut Host> {
        self.hosts
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
    fn host(&self, name: &str) -> Option<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
}

struct World {
    pools: Vec<Pool>,
    next_user: u32,
}

impl World {
    fn pool_mut(&mut self, name: &str) -> Option<&mut Pool> {
        self.pools
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
    fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// Windows hands out the lowest free session id; 0 is services and 1 the console.
const FIRST_RDP_SESSION_ID: u32 = 2;

fn lowest_free_id(h: &Host) -> u32 {
    let mut id = FIRST_RDP_SESSION_ID;
    while h.sessions.contains_key(&id) {
        id += 1;
    }
    id
}

fn seeded_time() -> OffsetDateTime {
    time::macros::datetime!(2026-01-05 08:00:00 UTC)
}

fn new_session(user_no: u32, upn: Option<&str>) -> Sess {
    let upn = upn
        .map(str::to_string)
        .unwrap_or_else(|| format!("user{user_no}@contoso.com"));
    let local = upn.split('@').next().unwrap_or(&upn).to_string();
    Sess {
        ad_user: format!("CONTOSO\\{local}"),
        object_id: format!("00000000-0000-4000-8000-{user_no:012x}"),
        upn,
        app_type: "Desktop".into(),
        state: "Active".into(),
        created: seeded_time() + time::Duration::minutes(i64::from(user_no)),
    }
}

fn host_fqdn(pool: &str, n: usize) -> String {
    let clean: String = pool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("sh-{clean}-{n}.contoso.com")
}

struct Settings {
    name_style: NameStyle,
    missing_logoff_status: MissingLogoffStatus,
    page_size: usize,
    throttle: Option<Arc<Buckets>>,
    fail_next: u32,
    fail_status: u16,
    drop_after: BTreeMap<ArmOp, u32>,
    forbidden: Vec<ArmOp>,
    reject_state_filter: bool,
}

/// The emulator's state, shared between the HTTP handlers and tests (through
/// [`ArmEmulator::state`]): inspect and mutate sessions, count calls, flip faults.
pub struct ArmState {
    subscription: String,
    resource_group: String,
    base_url: String,
    /// Token scopes the ARM routes accept (`{resource}/.default`).
    audiences: Vec<String>,
    tenant: String,
    issuer: Arc<TokenIssuer>,
    faults: Arc<Faults>,
    world: Mutex<World>,
    settings: Mutex<Settings>,
    calls: Mutex<BTreeMap<ArmOp, u64>>,
    /// Requests refused by the token buckets (429 `SubscriptionRequestsThrottled`).
    throttled: std::sync::atomic::AtomicU64,
    messages: Mutex<Vec<DeliveredMessage>>,
    /// The W3C trace headers of the latest requests (oldest dropped past [`KEPT_TRACE_HEADERS`]).
    trace_headers: Mutex<std::collections::VecDeque<ReceivedTrace>>,
    /// DELETE requests being handled now, and the most at once since the last reset.
    deletes_in_flight: std::sync::atomic::AtomicUsize,
    deletes_peak: std::sync::atomic::AtomicUsize,
    /// How long each DELETE takes inside the handler (ms), so concurrency can be observed.
    delete_delay_ms: std::sync::atomic::AtomicU64,
}

/// How many requests' trace headers [`ArmState::received_traces`] keeps.
pub const KEPT_TRACE_HEADERS: usize = 1000;

/// The W3C Trace Context headers of one request the emulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedTrace {
    pub method: String,
    pub path: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ArmState {
    /// Adds a session for `upn` on `host`, taking the lowest free session id (like Windows).
    /// Returns the id, or `None` when the pool or host does not exist.
    pub fn add_session(&self, pool: &str, host: &str, upn: &str) -> Option<u32> {
        let mut w = lock(&self.world);
        w.next_user += 1;
        let no = w.next_user;
        let h = w.pool_mut(pool)?.host_mut(host)?;
        let id = lowest_free_id(h);
        h.sessions.insert(id, new_session(no, Some(upn)));
        Some(id)
    }

    /// Removes a session (as if the user logged off); `true` when it existed.
    pub fn remove_session(&self, pool: &str, host: &str, id: u32) -> bool {
        let mut w = lock(&self.world);
        w.pool_mut(pool)
            .and_then(|p| p.host_mut(host))
            .and_then(|h| h.sessions.remove(&id))
            .is_some()
    }

    /// Sets a session's raw state (any string: enums are open).
    pub fn set_session_state(&self, pool: &str, host: &str, id: u32, state: &str) -> bool {
        let mut w = lock(&self.world);
        match w
            .pool_mut(pool)
            .and_then(|p| p.host_mut(host))
            .and_then(|h| h.sessions.get_mut(&id))
        {
            Some(s) => {
                s.state = state.to_string();
                true
            }
            None => false,
        }
    }

    /// Every session of a pool, ordered by host then id.
    pub fn sessions(&self, pool: &str) -> Vec<EmulatedSession> {
        let w = lock(&self.world);
        let Some(p) = w.pool(pool) else {
            return Vec::new();
        };
        p.hosts
            .iter()
            .flat_map(|h| {
                h.sessions.iter().map(|(id, s)| EmulatedSession {
                    host: h.name.clone(),
                    id: *id,
                    user: s.upn.clone(),
                    state: s.state.clone(),
                })
            })
            .collect()
    }

    /// Host names of a pool, in listing order.
    pub fn hosts(&self, pool: &str) -> Vec<String> {
        let w = lock(&self.world);
        w.pool(pool)
            .map(|p| p.hosts.iter().map(|h| h.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Adds an (empty) session host to a pool.
    pub fn add_host(&self, pool: &str, name: &str) -> bool {
        let mut w = lock(&self.world);
        let Some(p) = w.pool_mut(pool) else {
            return false;
        };
        if p.host(name).is_some() {
            return false;
        }
        p.hosts.push(Host {
            name: name.to_string(),
            status: "Available".into(),
            allow_new_session: true,
            object_id: uuid::Uuid::new_v4().to_string(),
            sessions: BTreeMap::new(),
        });
        true
    }

    /// A host's `allowNewSession` (false = drain mode).
    pub fn host_allows_new_sessions(&self, pool: &str, host: &str) -> Option<bool> {
        let w = lock(&self.world);
        w.pool(pool)
            .and_then(|p| p.host(host))
            .map(|h| h.allow_new_session)
    }

    /// How many requests the token buckets refused (429) so far.
    pub fn throttled_answers(&self) -> u64 {
        self.throttled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many requests for `op` reached the emulator's routing (including ones then
    /// throttled or failed by injected faults).
    pub fn calls(&self, op: ArmOp) -> u64 {
        lock(&self.calls).get(&op).copied().unwrap_or(0)
    }

    /// All call counters by operation name.
    pub fn all_calls(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.calls)
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    }

    /// The trace headers of the latest requests, oldest first.
    pub fn received_traces(&self) -> Vec<ReceivedTrace> {
        lock(&self.trace_headers).iter().cloned().collect()
    }

    fn keep_trace_headers(&self, method: &Method, uri: &Uri, headers: &HeaderMap) {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut kept = lock(&self.trace_headers);
        if kept.len() >= KEPT_TRACE_HEADERS {
            kept.pop_front();
        }
        kept.push_back(ReceivedTrace {
            method: method.to_string(),
            path: uri.path().to_string(),
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        });
    }

    /// Messages delivered so far.
    pub fn messages(&self) -> Vec<DeliveredMessage> {
        lock(&self.messages).clone()
    }

    /// Turns throttling on (with these buckets, freshly filled) or off.
    pub fn set_throttling(&self, t: Option<ThrottleSettings>) {
        lock(&self.settings).throttle = t.map(|s| Arc::new(Buckets::new(s)));
    }

    /// Each DELETE (a logoff) takes `ms` inside the emulator from now on; the peak of
    /// concurrent DELETEs starts again from 0.
    pub fn set_delete_delay(&self, ms: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.delete_delay_ms.store(ms, SeqCst);
        self.deletes_peak.store(0, SeqCst);
    }

    /// The most DELETE requests handled at once since [`ArmState::set_delete_delay`].
    pub fn peak_deletes_in_flight(&self) -> usize {
        self.deletes_peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Changes latency / 5xx / dropped-connection fault rates.
    pub fn set_faults(&self, f: FaultSettings) {
        self.faults.set(f);
    }

    /// The fault switches themselves (e.g. [`Faults::set_oversized_body`]).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn set_name_style(&self, s: NameStyle) {
        lock(&self.settings).name_style = s;
    }

    pub fn set_missing_logoff_status(&self, s: MissingLogoffStatus) {
        lock(&self.settings).missing_logoff_status = s;
    }

    pub fn set_page_size(&self, n: usize) {
        lock(&self.settings).page_size = n.max(1);
    }

    /// The next `n` ARM requests (after auth and api-version checks) fail with `status`
    /// (500 or 503 typically) and an ARM error body.
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut s = lock(&self.settings);
        s.fail_next = n;
        s.fail_status = status;
    }

    /// The next `n` successful requests for `op` are carried out, but their connection is
    /// then dropped without a response (the client cannot know the request arrived).
    pub fn drop_after_handling(&self, op: ArmOp, n: u32) {
        lock(&self.settings).drop_after.insert(op, n);
    }

    /// Answers 403 `AuthorizationFailed` for these operations (as when the identity lacks
    /// the RBAC role); an empty slice allows everything again.
    pub fn set_forbidden(&self, ops: &[ArmOp]) {
        lock(&self.settings).forbidden = ops.to_vec();
    }

    /// Makes `$filter` expressions with a state term fail with 400 `InvalidFilter` (to
    /// exercise clients against a service that only filters by user).
    pub fn set_reject_state_filter(&self, reject: bool) {
        lock(&self.settings).reject_state_filter = reject;
    }

    /// Tokens issued by the token endpoint so far.
    pub fn tokens_issued(&self) -> u64 {
        self.issuer.issued_count()
    }

    /// Lets the token endpoint also grant tokens for `scope` (e.g. another emulated ARM).
    /// Such tokens are not accepted by this emulator's ARM routes.
    pub fn allow_scope(&self, scope: &str) {
        self.issuer.allow_scope(scope);
    }

    /// Invalidates every issued token.
    pub fn revoke_tokens(&self) {
        self.issuer.revoke_all();
    }
}

/// A running ARM emulator. Dropping it stops the server.
pub struct ArmEmulator {
    running: Running,
    state: Arc<ArmState>,
    info: ArmEmulatorInfo,
}

impl ArmEmulator {
    pub fn info(&self) -> ArmEmulatorInfo {
        self.info.clone()
    }
    pub fn state(&self) -> Arc<ArmState> {
        self.state.clone()
    }
    pub fn base_url(&self) -> &str {
        &self.info.base_url
    }
    pub fn running(&self) -> &Running {
        &self.running
    }
    /// Records where the CA certificate was written, for [`ArmEmulatorInfo::ca_pem_path`].
    pub fn set_ca_pem_path(&mut self, path: impl Into<String>) {
        self.info.ca_pem_path = Some(path.into());
    }
}

/// Starts the emulator on `listener`, serving HTTPS with `tls`.
pub async fn start(
    listener: tokio::net::TcpListener,
    tls: &EmulatorTls,
    opts: ArmEmulatorOptions,
) -> std::io::Result<ArmEmulator> {
    let addr = listener.local_addr()?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => {
            if addr.is_ipv6() && !ip.is_unspecified() {
                "[::1]".to_string()
            } else {
                "127.0.0.1".to_string()
            }
        }
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    let base_url = format!("https://{host}:{}", addr.port());

    let issuer = TokenIssuer::new(&opts.tenant, &opts.client_id, &opts.client_secret);
    // Tokens for the emulator's own origin, and for the audiences of the real ARM, so a client
    // whose only change is the base URL works.
    let mut audiences = vec![
        format!("{base_url}/.default"),
        format!("https://localhost:{}/.default", addr.port()),
    ];
    audiences.extend(ARM_AUDIENCES.iter().map(|a| format!("{a}/.default")));
    for a in &audiences {
        issuer.allow_scope(a);
    }
    let faults = Faults::new(opts.faults);

    let mut world = World {
        pools: Vec::new(),
        next_user: 0,
    };
    for pool in &opts.host_pools {
        let mut hosts = Vec::new();
        for n in 0..opts.hosts_per_pool {
            let mut h = Host {
                name: host_fqdn(pool, n),
                status: "Available".into(),
                allow_new_session: true,
                object_id: format!(
                    "10000000-0000-4000-8000-{:012x}",
                    world.pools.len() * 10_000 + n
                ),
                sessions: BTreeMap::new(),
            };
            for _ in 0..opts.sessions_per_host {
                world.next_user += 1;
                let id = lowest_free_id(&h);
                h.sessions.insert(id, new_session(world.next_user, None));
            }
            hosts.push(h);
        }
        world.pools.push(Pool {
            name: pool.clone(),
            hosts,
        });
    }

    let state = Arc::new(ArmState {
        subscription: opts.subscription.clone(),
        resource_group: opts.resource_group.clone(),
        base_url: base_url.clone(),
        audiences,
        tenant: opts.tenant.clone(),
        issuer: issuer.clone(),
        faults: faults.clone(),
        world: Mutex::new(world),
        settings: Mutex::new(Settings {
            name_style: opts.name_style,
            missing_logoff_status: opts.missing_logoff_status,
            page_size: opts.page_size.max(1),
            throttle: opts.throttling.map(|s| Arc::new(Buckets::new(s))),
            fail_next: 0,
            fail_status: 500,
            drop_after: BTreeMap::new(),
            forbidden: Vec::new(),
            reject_state_filter: false,
        }),
        calls: Mutex::new(BTreeMap::new()),
        throttled: std::sync::atomic::AtomicU64::new(0),
        messages: Mutex::new(Vec::new()),
        trace_headers: Mutex::new(std::collections::VecDeque::new()),
        deletes_in_flight: std::sync::atomic::AtomicUsize::new(0),
        deletes_peak: std::sync::atomic::AtomicUsize::new(0),
        delete_delay_ms: std::sync::atomic::AtomicU64::new(0),
    });

    let discovery = Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/common/discovery/instance", get(instance_discovery))
        .with_state(state.clone());
    let router: Router = issuer
        .router()
        .merge(discovery)
        .merge(
            Router::new()
                .fallback(arm_handler)
                .with_state(state.clone()),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            keep_trace_headers,
        ));
    let running = serve_tls(listener, tls, router, faults, injected_error_body)?;

    let info = ArmEmulatorInfo {
        token_url: format!("{base_url}/{}/oauth2/v2.0/token", opts.tenant),
        authority_host: base_url.clone(),
        base_url,
        tenant: opts.tenant,
        client_id: opts.client_id,
        client_secret: opts.client_secret,
        subscription: opts.subscription,
        resource_group: opts.resource_group,
        host_pools: opts.host_pools,
        ca_pem_path: None,
    };
    Ok(ArmEmulator {
        running,
        state,
        info,
    })
}

/// OpenID Connect discovery document (MSAL-based SDKs read it before asking for tokens).
async fn openid_configuration(
    State(st): State<Arc<ArmState>>,
    Path(tenant): Path<String>,
) -> Response {
    if !tenant.eq_ignore_ascii_case(&st.tenant) {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            json!({
                "error": "invalid_tenant",
                "error_description": format!("AADSTS90002: Tenant '{tenant}' not found."),
                "error_codes": [90002],
            })
            .to_string(),
        )
            .into_response();
    }
    let b = &st.base_url;
    let t = &st.tenant;
    json_ok(json!({
        "token_endpoint": format!("{b}/{t}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{b}/{t}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{b}/{t}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{b}/{t}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{b}/{t}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{b}/{t}/oauth2/v2.0/logout"),
        "tenant_region_scope": null,
        "cloud_instance_name": "emulator",
    }))
}

/// Entra instance discovery: the emulator is its own (only) cloud instance.
async fn instance_discovery(State(st): State<Arc<ArmState>>) -> Response {
    let host = st.base_url.trim_start_matches("https://").to_string();
    json_ok(json!({
        "tenant_discovery_endpoint": format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            st.base_url, st.tenant
        ),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": host,
            "preferred_cache": host,
            "aliases": [host],
        }],
    }))
}

fn injected_error_body() -> Response {
    arm_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        &format!(
            "Encountered internal server error. Diagnostic information: timestamp '{}', correlation id '{}'.",
            now_rfc3339(),
            uuid::Uuid::new_v4()
        ),
    )
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

/// A request body as JSON (an empty body is `{}`), or ARM's 400 for content it cannot read.
fn json_body(body: &Bytes) -> Result<Value, Box<Response>> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            &format!("The request content was invalid and could not be deserialized: '{e}'."),
        ))
    })
}

fn json_ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

fn session_not_found() -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "404",
        &format!(
            "ActivityId: {} Error: User session ID not found",
            uuid::Uuid::new_v4()
        ),
    )
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// The target of a request, after the ARM prefix was matched.
enum Route {
    PoolSessions,
    Hosts,
    Host(String),
    HostSessions(String),
    Session(String, String),
    SessionAction(String, String, &'static str),
}

enum Kind {
    Read,
    Write,
    Delete,
}

fn op_of(route: &Route, method: &Method) -> Option<ArmOp> {
    Some(match (route, method.as_str()) {
        (Route::PoolSessions, "GET") => ArmOp::ListPoolSessions,
        (Route::Hosts, "GET") => ArmOp::ListHosts,
        (Route::Host(_), "GET") => ArmOp::GetHost,
        (Route::Host(_), "PATCH") => ArmOp::UpdateHost,
        (Route::HostSessions(_), "GET") => ArmOp::ListHostSessions,
        (Route::Session(..), "GET") => ArmOp::GetSession,
        (Route::Session(..), "DELETE") => ArmOp::Logoff,
        (Route::SessionAction(_, _, "disconnect"), "POST") => ArmOp::Disconnect,
        (Route::SessionAction(_, _, "sendMessage"), "POST") => ArmOp::SendMessage,
        _ => return None,
    })
}

fn seg_is(s: &str, want: &str) -> bool {
    s.eq_ignore_ascii_case(want)
}

/// Keeps the W3C trace headers of every request (token and discovery requests included).
async fn keep_trace_headers(
    State(st): State<Arc<ArmState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    st.keep_trace_headers(req.method(), req.uri(), req.headers());
    if req.method() != Method::DELETE {
        return next.run(req).await;
    }
    use std::sync::atomic::Ordering::SeqCst;
    /// Counts the DELETE out when it ends, also when its connection is dropped mid-way.
    struct InFlight(Arc<ArmState>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.deletes_in_flight.fetch_sub(1, SeqCst);
        }
    }
    let now = st.deletes_in_flight.fetch_add(1, SeqCst) + 1;
    let _counted = InFlight(st.clone());
    st.deletes_peak.fetch_max(now, SeqCst);
    let delay = st.delete_delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    next.run(req).await
}

async fn arm_handler(
    State(st): State<Arc<ArmState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let correlation = headers
        .get("x-ms-correlation-request-id")
        .or_else(|| headers.get("x-ms-client-request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (mut resp, drop_after) = handle(&st, &method, &uri, &headers, &body);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-ms-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&correlation) {
        h.insert("x-ms-correlation-request-id", v);
    }
    if drop_after {
        // Deliberate fault injection: the operation was carried out, now drop the
        // connection without answering. Unwinding ends this connection's task only and
        // bypasses the panic hook (no noise on stderr).
        std::panic::resume_unwind(Box::new("injected connection drop after handling"));
    }
    resp
}

fn handle(
    st: &ArmState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Response, bool) {
    // 1. Authentication.
    if let Err(rej) = st.issuer.check(headers, &st.audiences) {
        let (code, msg) = match rej {
            TokenRejection::Missing => (
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.".to_string(),
            ),
            TokenRejection::Invalid => (
                "InvalidAuthenticationToken",
                "The access token is invalid.".to_string(),
            ),
            TokenRejection::Expired => (
                "ExpiredAuthenticationToken",
                format!(
                    "The access token expiry UTC time is earlier than current UTC time '{}'.",
                    now_rfc3339()
                ),
            ),
        };
        let mut r = arm_error(StatusCode::UNAUTHORIZED, code, &msg);
        let www = format!(
            "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"{}\"",
            st.base_url,
            st.tenant,
            if rej == TokenRejection::Missing {
                "The authentication failed because of missing 'Authorization' header."
            } else {
                "The access token is invalid or expired."
            }
        );
        if let Ok(v) = HeaderValue::from_str(&www) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return (r, false);
    }

    // 2. api-version.
    let q = Query::parse(uri.query());
    match q.get("api-version") {
        None => {
            return (
                arm_error(
                    StatusCode::BAD_REQUEST,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                ),
                false,
            );
        }
        Some(v) if !SUPPORTED_API_VERSIONS.contains(&v) => {
            return (
                arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidApiVersionParameter",
                    &format!(
                        "The api-version '{v}' is invalid. The supported versions are '{}'.",
                        SUPPORTED_API_VERSIONS.join(",")
                    ),
                ),
                false,
            );
        }
        Some(_) => {}
    }

    // 3. Path.
    let raw_path = uri.path();
    let segs: Vec<String> = raw_path
        .trim_matches('/')
        .split('/')
        .map(crate::upstream::unescape)
        .collect();
    let (sub, rg, pool, route) = match parse_path(&segs) {
        Ok(x) => x,
        Err(r) => return (*r, false),
    };
    if !sub.eq_ignore_ascii_case(&st.subscription) {
        return (
            arm_error(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                &format!("The subscription '{sub}' could not be found."),
            ),
            false,
        );
    }
    if !rg.eq_ignore_ascii_case(&st.resource_group) {
        return (
            arm_error(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                &format!("Resource group '{rg}' could not be found."),
            ),
            false,
        );
    }
    let Some(op) = op_of(&route, method) else {
        return (
            arm_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "HttpMethodNotAllowed",
                &format!("The HTTP method '{method}' is not supported for this resource."),
            ),
            false,
        );
    };
    *lock(&st.calls).entry(op).or_insert(0) += 1;

    // 4. Throttling.
    let kind = match *method {
        Method::GET => Kind::Read,
        Method::DELETE => Kind::Delete,
        _ => Kind::Write,
    };
    let (buckets, fail, forbidden) = {
        let mut s = lock(&st.settings);
        let forbidden = s.forbidden.contains(&op);
        let fail = if s.fail_next > 0 {
            s.fail_next -= 1;
            Some(s.fail_status)
        } else {
            None
        };
        (s.throttle.clone(), fail, forbidden)
    };
    if forbidden {
        let action = match op {
            ArmOp::ListPoolSessions | ArmOp::ListHostSessions | ArmOp::GetSession => {
                "hostpools/sessionhosts/usersessions/read"
            }
            ArmOp::Logoff => "hostpools/sessionhosts/usersessions/delete",
            ArmOp::Disconnect => "hostpools/sessionhosts/usersessions/disconnect/action",
            ArmOp::SendMessage => "hostpools/sessionhosts/usersessions/sendMessage/action",
            ArmOp::ListHosts | ArmOp::GetHost => "hostpools/sessionhosts/read",
            ArmOp::UpdateHost => "hostpools/sessionhosts/write",
        };
        return (
            arm_error(
                StatusCode::FORBIDDEN,
                "AuthorizationFailed",
                &format!(
                    "The client '{}' with object id '{}' does not have authorization to perform action 'Microsoft.DesktopVirtualization/{action}' over scope '/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DesktopVirtualization/hostPools/{pool}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
                    st.issuer.client_id, st.issuer.client_id, st.subscription, st.resource_group
                ),
            ),
            false,
        );
    }
    let mut remaining_header = None;
    if let Some(b) = buckets {
        let (bucket, word, hname) = match kind {
            Kind::Read => (
                &b.reads,
                "read",
                "x-ms-ratelimit-remaining-subscription-reads",
            ),
            Kind::Write => (
                &b.writes,
                "write",
                "x-ms-ratelimit-remaining-subscription-writes",
            ),
            Kind::Delete => (
                &b.deletes,
                "delete",
                "x-ms-ratelimit-remaining-subscription-deletes",
            ),
        };
        match bucket.take() {
            Ok(left) => remaining_header = Some((hname, left)),
            Err(t) => {
                st.throttled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut r = arm_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "SubscriptionRequestsThrottled",
                    &format!(
                        "Number of '{word}' requests for subscription '{}' actor '{}' exceeded. Please try again after '{}' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling",
                        st.subscription, st.issuer.client_id, t.retry_after_secs
                    ),
                );
                let h = r.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs));
                h.insert(hname, HeaderValue::from(0u32));
                return (r, false);
            }
        }
    }

    // 5. Injected one-shot failures.
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            "ServiceUnavailable"
        } else {
            "InternalServerError"
        };
        return (
            arm_error(
                status,
                code,
                &format!(
                    "Encountered internal server error. Diagnostic information: correlation id '{}'.",
                    uuid::Uuid::new_v4()
                ),
            ),
            false,
        );
    }

    // 6. The operation.
    let mut resp = execute(st, op, &pool, &route, &q, raw_path, body);
    if let Some((name, left)) = remaining_header {
        resp.headers_mut().insert(name, HeaderValue::from(left));
    }
    let drop_after = resp.status().is_success() && {
        let mut s = lock(&st.settings);
        match s.drop_after.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    (resp, drop_after)
}

type Parsed = (String, String, String, Route);

fn parse_path(segs: &[String]) -> Result<Parsed, Box<Response>> {
    let not_found = || {
        arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the namespace 'Microsoft.DesktopVirtualization' for api version.",
        )
    };
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    if s.len() < 8
        || !seg_is(s[0], "subscriptions")
        || !seg_is(s[2], "resourceGroups")
        || !seg_is(s[4], "providers")
        || !seg_is(s[6], "hostPools")
    {
        if s.len() >= 6 && seg_is(s[4], "providers") && !seg_is(s[5], PROVIDER_NS) {
            return Err(Box::new(arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceNamespace",
                &format!("The resource namespace '{}' is invalid.", s[5]),
            )));
        }
        return Err(Box::new(not_found()));
    }
    if !seg_is(s[5], PROVIDER_NS) {
        return Err(Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidResourceNamespace",
            &format!("The resource namespace '{}' is invalid.", s[5]),
        )));
    }
    let rest = &s[8..];
    let route = match rest {
        [us] if seg_is(us, "userSessions") => Route::PoolSessions,
        [sh] if seg_is(sh, "sessionHosts") => Route::Hosts,
        [sh, h] if seg_is(sh, "sessionHosts") => Route::Host(h.to_string()),
        [sh, h, us] if seg_is(sh, "sessionHosts") && seg_is(us, "userSessions") => {
            Route::HostSessions(h.to_string())
        }
        [sh, h, us, id] if seg_is(sh, "sessionHosts") && seg_is(us, "userSessions") => {
            Route::Session(h.to_string(), id.to_string())
        }
        [sh, h, us, id, act] if seg_is(sh, "sessionHosts") && seg_is(us, "userSessions") => {
            let a = if seg_is(act, "disconnect") {
                "disconnect"
            } else if seg_is(act, "sendMessage") {
                "sendMessage"
            } else {
                return Err(Box::new(not_found()));
            };
            Route::SessionAction(h.to_string(), id.to_string(), a)
        }
        _ => return Err(Box::new(not_found())),
    };
    Ok((s[1].to_string(), s[3].to_string(), s[7].to_string(), route))
}

fn parent_not_found(pool: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ParentResourceNotFound",
        &format!(
            "Failed to perform 'read' on resource(s) of type 'hostPools/sessionHosts', because the parent resource '{pool}' could not be found."
        ),
    )
}

fn host_not_found(rg: &str, pool: &str, host: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.DesktopVirtualization/hostPools/{pool}/sessionHosts/{host}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

struct Render<'a> {
    st: &'a ArmState,
    style: NameStyle,
}

impl Render<'_> {
    fn prefix(&self, pool: &str) -> String {
        match self.style {
            NameStyle::Spec => format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DesktopVirtualization/hostPools/{pool}",
                self.st.subscription, self.st.resource_group
            ),
            NameStyle::Real => format!(
                "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.DesktopVirtualization/hostpools/{pool}",
                self.st.subscription, self.st.resource_group
            ),
        }
    }

    fn host(&self, pool: &str, h: &Host) -> Value {
        let (id, name, typ) = match self.style {
            NameStyle::Spec => (
                format!("{}/sessionHosts/{}", self.prefix(pool), h.name),
                h.name.clone(),
                "Microsoft.DesktopVirtualization/hostPools/sessionHosts",
            ),
            NameStyle::Real => (
                format!("{}/sessionhosts/{}", self.prefix(pool), h.name),
                format!("{pool}/{}", h.name),
                "Microsoft.DesktopVirtualization/hostpools/sessionhosts",
            ),
        };
        let now = now_rfc3339();
        json!({
            "id": id,
            "name": name,
            "type": typ,
            "properties": {
                "objectId": h.object_id,
                "resourceId": format!(
                    "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                    self.st.subscription,
                    self.st.resource_group,
                    h.name.split('.').next().unwrap_or(&h.name)
                ),
                "vmId": h.object_id,
                "lastHeartBeat": now,
                "sessions": h.sessions.len(),
                "agentVersion": "1.0.9742.1800",
                "allowNewSession": h.allow_new_session,
                "assignedUser": null,
                "status": h.status,
                "statusTimestamp": now,
                "osVersion": "10.0.22631.4602",
                "sxsStackVersion": "rdp-sxs241105100",
                "updateState": "Succeeded",
                "lastUpdateTime": fmt_time(seeded_time()),
                "updateErrorMessage": "",
                "sessionHostHealthCheckResults": [],
            }
        })
    }

    fn session(&self, pool: &str, host: &str, id: u32, s: &Sess) -> Value {
        let (rid, name, typ) = match self.style {
            NameStyle::Spec => (
                format!(
                    "{}/sessionHosts/{host}/userSessions/{id}",
                    self.prefix(pool)
                ),
                id.to_string(),
                "Microsoft.DesktopVirtualization/hostPools/sessionHosts/userSessions",
            ),
            NameStyle::Real => (
                format!(
                    "{}/sessionhosts/{host}/usersessions/{id}",
                    self.prefix(pool)
                ),
                format!("{pool}/{host}/{id}"),
                "Microsoft.DesktopVirtualization/hostpools/sessionhosts/usersessions",
            ),
        };
        json!({
            "id": rid,
            "name": name,
            "type": typ,
            "properties": {
                "objectId": s.object_id,
                "userPrincipalName": s.upn,
                "applicationType": s.app_type,
                "sessionState": s.state,
                "activeDirectoryUserName": s.ad_user,
                "createTime": fmt_time(s.created),
            }
        })
    }
}

/// A parsed OData `$filter` for user sessions.
#[derive(Debug, Default, PartialEq)]
struct SessionFilter {
    upn: Option<String>,
    state: Option<String>,
}

/// Parses `userPrincipalName eq 'a''b' and sessionState eq 'Active'` (terms joined by `and`,
/// string literals with `''` escaping; `state` is accepted as an alias, as in the spec example).
fn parse_filter(f: &str) -> Result<SessionFilter, String> {
    let mut out = SessionFilter::default();
    let chars: Vec<char> = f.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let word = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    loop {
        skip_ws(&mut i);
        let prop = word(&mut i);
        skip_ws(&mut i);
        let op = word(&mut i);
        skip_ws(&mut i);
        if prop.is_empty() || !op.eq_ignore_ascii_case("eq") {
            return Err(format!("Invalid filter expression '{f}'."));
        }
        if i >= chars.len() || chars[i] != '\'' {
            return Err(format!(
                "Invalid filter expression '{f}': expected a string literal."
            ));
        }
        i += 1;
        let mut lit = String::new();
        loop {
            if i >= chars.len() {
                return Err(format!(
                    "Invalid filter expression '{f}': unterminated literal."
                ));
            }
            if chars[i] == '\'' {
                if i + 1 < chars.len() && chars[i + 1] == '\'' {
                    lit.push('\'');
                    i += 2;
                    continue;
                }
                i += 1;
                break;
            }
            lit.push(chars[i]);
            i += 1;
        }
        match prop.to_ascii_lowercase().as_str() {
            "userprincipalname" => out.upn = Some(lit),
            "sessionstate" | "state" => out.state = Some(lit),
            _ => {
                return Err(format!(
                    "Invalid filter expression '{f}': unknown property '{prop}'."
                ));
            }
        }
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let conj = word(&mut i);
        if !conj.eq_ignore_ascii_case("and") {
            return Err(format!("Invalid filter expression '{f}': expected 'and'."));
        }
    }
}

fn skiptoken_encode(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"o\":{offset}}}"))
}

fn skiptoken_decode(t: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.as_bytes())
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get("o")?.as_u64().and_then(|o| usize::try_from(o).ok())
}

/// Renders one page of `items` with an absolute `nextLink` carrying the other parameters.
fn paged(
    st: &ArmState,
    items: Vec<Value>,
    q: &Query,
    raw_path: &str,
    default_page: usize,
) -> Response {
    let page_size = q
        .get("pageSize")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default_page);
    let start = match q.get("$skiptoken") {
        Some(t) => match skiptoken_decode(t) {
            Some(o) => o,
            None => {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidSkipToken",
                    "The skip token is invalid.",
                );
            }
        },
        None => q
            .get("initialSkip")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0),
    };
    let (start, end, more) = super::common::page_bounds(items.len(), start, page_size);
    let value: Vec<Value> = items[start..end].to_vec();
    let mut body = json!({ "value": value });
    if more {
        let token = skiptoken_encode(end);
        let mut pairs: Vec<(&str, &str)> =
            q.0.iter()
                .filter(|(k, _)| {
                    !k.eq_ignore_ascii_case("$skiptoken") && !k.eq_ignore_ascii_case("initialSkip")
                })
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
        pairs.push(("$skiptoken", &token));
        let link = format!(
            "{}{}?{}",
            st.base_url,
            raw_path,
            crate::upstream::query(&pairs)
        );
        body["nextLink"] = Value::String(link);
    }
    json_ok(body)
}

fn is_true(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn execute(
    st: &ArmState,
    op: ArmOp,
    pool_name: &str,
    route: &Route,
    q: &Query,
    raw_path: &str,
    body: &Bytes,
) -> Response {
    let (style, missing_logoff, page_size, reject_state_filter) = {
        let s = lock(&st.settings);
        (
            s.name_style,
            s.missing_logoff_status,
            s.page_size,
            s.reject_state_filter,
        )
    };
    let r = Render { st, style };
    let mut w = lock(&st.world);
    let Some(pool) = w.pool_mut(pool_name) else {
        // Every emulated resource is nested under the host pool.
        return parent_not_found(pool_name);
    };
    let pname = pool.name.clone();
    let rg = st.resource_group.clone();

    let host_sessions = |h: &Host| -> Vec<(String, u32, Sess)> {
        h.sessions
            .iter()
            .map(|(id, s)| (h.name.clone(), *id, s.clone()))
            .collect()
    };
    let order = |mut v: Vec<(String, u32, Sess)>| {
        if is_true(q.get("isDescending")) {
            v.reverse();
        }
        v
    };

    match (op, route) {
        (ArmOp::ListHosts, _) => {
            let items = pool.hosts.iter().map(|h| r.host(&pname, h)).collect();
            paged(st, items, q, raw_path, page_size)
        }
        (ArmOp::GetHost, Route::Host(h)) => match pool.host(h) {
            Some(h) => json_ok(r.host(&pname, h)),
            None => host_not_found(&rg, &pname, h),
        },
        (ArmOp::UpdateHost, Route::Host(h)) => {
            let patch = match json_body(body) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let Some(host) = pool.host_mut(h) else {
                return host_not_found(&rg, &pname, h);
            };
            if let Some(v) = patch.pointer("/properties/allowNewSession") {
                match v.as_bool() {
                    Some(b) => host.allow_new_session = b,
                    None => {
                        return arm_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidRequestContent",
                            "The value of 'properties.allowNewSession' must be a boolean.",
                        );
                    }
                }
            }
            json_ok(r.host(&pname, host))
        }
        (ArmOp::ListPoolSessions, _) => {
            let filter = match q.get("$filter") {
                Some(f) => match parse_filter(f) {
                    Ok(p) if p.state.is_some() && reject_state_filter => {
                        return arm_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidFilter",
                            &format!("Invalid filter expression '{f}': unsupported property."),
                        );
                    }
                    Ok(f) => f,
                    Err(msg) => {
                        return arm_error(StatusCode::BAD_REQUEST, "InvalidFilter", &msg);
                    }
                },
                None => SessionFilter::default(),
            };
            let all: Vec<_> = pool
                .hosts
                .iter()
                .flat_map(host_sessions)
                .filter(|(_, _, s)| {
                    filter
                        .upn
                        .as_deref()
                        .is_none_or(|u| s.upn.eq_ignore_ascii_case(u))
                        && filter
                            .state
                            .as_deref()
                            .is_none_or(|x| s.state.eq_ignore_ascii_case(x))
                })
                .collect();
            let items = order(all)
                .iter()
                .map(|(h, id, s)| r.session(&pname, h, *id, s))
                .collect();
            paged(st, items, q, raw_path, page_size)
        }
        (ArmOp::ListHostSessions, Route::HostSessions(h)) => {
            let Some(host) = pool.host(h) else {
                return host_not_found(&rg, &pname, h);
            };
            let items = order(host_sessions(host))
                .iter()
                .map(|(h, id, s)| r.session(&pname, h, *id, s))
                .collect();
            paged(st, items, q, raw_path, page_size)
        }
        (ArmOp::GetSession | ArmOp::Logoff, Route::Session(h, id))
        | (ArmOp::Disconnect | ArmOp::SendMessage, Route::SessionAction(h, id, _)) => {
            let Some(host) = pool.host_mut(h) else {
                return host_not_found(&rg, &pname, h);
            };
            let hname = host.name.clone();
            let sid = id.parse::<u32>().ok();
            let exists = sid.is_some_and(|i| host.sessions.contains_key(&i));
            match op {
                ArmOp::GetSession => {
                    match sid.and_then(|i| host.sessions.get(&i).map(|s| (i, s))) {
                        Some((i, s)) => json_ok(r.session(&pname, &hname, i, s)),
                        None => session_not_found(),
                    }
                }
                ArmOp::Logoff => {
                    if let (true, Some(i)) = (exists, sid) {
                        host.sessions.remove(&i);
                        StatusCode::OK.into_response()
                    } else {
                        match missing_logoff {
                            MissingLogoffStatus::NotFound => session_not_found(),
                            MissingLogoffStatus::NoContent => {
                                StatusCode::NO_CONTENT.into_response()
                            }
                        }
                    }
                }
                ArmOp::Disconnect => match sid.and_then(|i| host.sessions.get_mut(&i)) {
                    Some(s) => {
                        s.state = "Disconnected".into();
                        StatusCode::OK.into_response()
                    }
                    None => session_not_found(),
                },
                _ => {
                    let msg = match json_body(body) {
                        Ok(v) => v,
                        Err(r) => return *r,
                    };
                    let Some((i, s)) = sid.and_then(|i| host.sessions.get(&i).map(|s| (i, s)))
                    else {
                        return session_not_found();
                    };
                    let text = |k: &str| {
                        msg.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    let delivered = DeliveredMessage {
                        pool: pname.clone(),
                        host: hname.clone(),
                        session_id: i,
                        user: s.upn.clone(),
                        title: text("messageTitle"),
                        body: text("messageBody"),
                    };
                    drop(w);
                    lock(&st.messages).push(delivered);
                    StatusCode::OK.into_response()
                }
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_escaped_quotes_and_state() {
        let f = parse_filter(
            "userPrincipalName eq 'o''brien@contoso.com' and sessionState eq 'Active'",
        )
        .unwrap();
        assert_eq!(f.upn.as_deref(), Some("o'brien@contoso.com"));
        assert_eq!(f.state.as_deref(), Some("Active"));
        let f = parse_filter("userPrincipalName eq 'user1@microsoft.com' and state eq 'active'")
            .unwrap();
        assert_eq!(f.state.as_deref(), Some("active"));
        assert!(parse_filter("userPrincipalName eq 'x").is_err());
        assert!(parse_filter("foo eq 'x'").is_err());
        assert!(parse_filter("userPrincipalName ne 'x'").is_err());
        assert!(parse_filter("userPrincipalName eq 'x' or state eq 'y'").is_err());
    }

    #[test]
    fn skiptoken_round_trips() {
        assert_eq!(skiptoken_decode(&skiptoken_encode(42)), Some(42));
        assert_eq!(skiptoken_decode("garbage!"), None);
    }

    #[test]
    fn lowest_free_id_reuses_gaps() {
        let mut h = Host {
            name: "h".into(),
            status: "Available".into(),
            allow_new_session: true,
            object_id: String::new(),
            sessions: BTreeMap::new(),
        };
        for n in 0..3 {
            let id = lowest_free_id(&h);
            h.sessions.insert(id, new_session(n, None));
        }
        assert_eq!(
            h.sessions.keys().copied().collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        h.sessions.remove(&3);
        assert_eq!(lowest_free_id(&h), 3);
    }
}
