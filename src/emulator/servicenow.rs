//! ServiceNow instance emulator: the Table API (`/api/now/table/{table}` and
//! `/api/now/v2/table/{table}`) over the `incident`, `sys_user` and `sys_journal_field` tables,
//! Basic and OAuth (`POST /oauth_token.do`) authentication, the per-user inbound rate limit, and
//! the webhook a Business Rule would send to sessiongate.
//!
//! Wire facts followed (see `shared/reference/ticketing.md`):
//! - Answers are `{"result": ...}`; errors are exactly
//!   `{"error":{"message":"...","detail":"..."},"status":"failure"}`: 401 without or with bad
//!   credentials, 403 for an ACL (injected), 404 `No Record found`, 400 for a body that is not
//!   JSON or an unknown table.
//! - `work_notes` and `comments` are journal fields: each write appends an entry to
//!   `sys_journal_field` (`element_id`, `element`, `value`, `sys_created_by`,
//!   `sys_created_on`) and the field itself reads back empty, as on an instance.
//! - `X-no-response-body: true` drops the body of a PATCH/PUT answer.
//! - A rate-limited user gets 429 with the error body, `Retry-After` (seconds),
//!   `X-RateLimit-Limit`, `X-RateLimit-Reset` (Unix seconds) and `X-RateLimit-Rule`.
//! - OAuth: `grant_type=password` (client id/secret plus a user's credentials) or
//!   `client_credentials` (the instance property that allows it is taken as on); tokens live
//!   1 799 s; a refused request is 401 `{"error_description":"access_denied","error":"server_error"}`.
//!
//! # The Business Rule webhook ([`ServiceNowState::notify`])
//! POSTs this JSON (field values as the Table API reads them) to a loopback URL:
//! ```json
//! {"event":"incident.sessiongate_action","delivery_id":"<uuid>","table":"incident",
//!  "number":"INC0010001","sys_id":"<32 hex>","caller_upn":"alice@contoso.com",
//!  "requested_action":"logoff","approval":"approved","state":"2",
//!  "short_description":"...","sys_updated_on":"2026-12-03 16:59:00"}
//! ```
//! with, as the caller of the function chooses, `Authorization: Bearer <token>` or an API key
//! header, an HMAC-SHA256 header over the raw body in the `sha256=<hex>` form (the
//! [`crate::webhooks::signature::hub_sign`] form a Business Rule script can compute), and the
//! delivery id in a header too (`X-ServiceNow-Delivery` by default).

use crate::emulator::common::{
    AuthedUser, CallLog, CallRecord, EmulatorTls, FaultSettings, Faults, Running, is_loopback_url,
    lock, log_calls, serve_tls,
};
use axum::{
    Form, Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::OffsetDateTime;

/// Access-token lifetime of the emulated `oauth_token.do` (an instance's default is 1 800 s).
const TOKEN_LIFETIME_SECS: u64 = 1799;

/// The journal fields of a task record.
pub const JOURNAL_FIELDS: [&str; 2] = ["work_notes", "comments"];

/// Options for [`start`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceNowOptions {
    /// The integration user (Basic auth and the OAuth password grant).
    pub user: String,
    pub password: String,
    /// The OAuth application (`oauth_entity`) of `oauth_token.do`.
    pub client_id: String,
    pub client_secret: String,
    /// Incidents seeded at start (`INC0010001`, ...), callers taken in turn from `callers`.
    pub incidents: u32,
    /// Users seeded into `sys_user` (UPNs; `user_name` is the part before `@`).
    pub callers: Vec<String>,
    /// Inbound rate limit per user: requests per window, or none.
    pub rate_limit: Option<RateLimit>,
    pub faults: FaultSettings,
    /// Extra CA (PEM) the webhook client trusts (sessiongate's TLS certificate in tests).
    pub notify_ca_pem: Option<String>,
}

impl Default for ServiceNowOptions {
    fn default() -> Self {
        Self {
            user: "sessiongate.integration".into(),
            password: "emulator-servicenow-password".into(),
            client_id: "ac0dd1c9e4f34f3e9e8b1c2d3e4f5a6b".into(),
            client_secret: "emulator-servicenow-client-secret".into(),
            incidents: 3,
            callers: vec!["alice@contoso.com".into(), "bob@contoso.com".into()],
            rate_limit: None,
            faults: FaultSettings::default(),
            notify_ca_pem: None,
        }
    }
}

/// An inbound REST rate-limit rule: `limit` requests per user per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub limit: u32,
    pub window_secs: u64,
}

/// What `sessiongate emulate servicenow` prints as one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceNowInfo {
    pub kind: String,
    pub instance_url: String,
    pub token_url: String,
    pub user: String,
    pub password: String,
    pub client_id: String,
    pub client_secret: String,
    /// Seeded incidents: number → sys_id.
    pub incidents: BTreeMap<String, String>,
    pub ca_pem_path: Option<String>,
}

/// One journal entry (a row of `sys_journal_field`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    /// `work_notes` or `comments`.
    pub field: String,
    pub value: String,
    pub author: String,
    pub at: String,
}

/// How [`ServiceNowState::notify`] sends the Business Rule's webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyOptions {
    /// Where to POST (loopback only).
    pub url: String,
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// An API-key header name and value.
    #[serde(default)]
    pub api_key_header: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Sign the raw body with HMAC-SHA256 (`sha256=<hex>`) under this secret (UTF-8 bytes).
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// The signature header (default `X-ServiceNow-Signature`).
    #[serde(default)]
    pub hmac_header: Option<String>,
    /// The delivery-id header (default `X-ServiceNow-Delivery`).
    #[serde(default)]
    pub delivery_id_header: Option<String>,
    /// Use this delivery id instead of a fresh one (to send a duplicate).
    #[serde(default)]
    pub delivery_id: Option<String>,
    /// The requested action, instead of the incident's `u_sessiongate_action`.
    #[serde(default)]
    pub action: Option<String>,
}

/// What the webhook target answered.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyOutcome {
    pub delivery_id: String,
    pub status: u16,
    pub body: String,
    /// The exact body that was sent.
    pub sent_body: String,
}

#[derive(Debug, Default)]
struct Settings {
    rate_limit: Option<RateLimit>,
    /// Statuses the next Table API requests are answered with (after authentication).
    fail_queue: std::collections::VecDeque<(u16, u64)>,
}

/// The emulator's state: tables, tokens, settings and the call log.
pub struct ServiceNowState {
    base_url: String,
    opts: ServiceNowOptions,
    tables: Mutex<BTreeMap<String, Vec<Map<String, Value>>>>,
    /// Access token → (user, expiry).
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// Per user: (window start, requests in it).
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    settings: Mutex<Settings>,
    calls: Arc<CallLog>,
    faults: Arc<Faults>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ServiceNowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceNowState")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

fn sn_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).unwrap_or_default()
}

fn now_sn() -> String {
    sn_time(OffsetDateTime::now_utc())
}

fn new_sys_id() -> String {
    hex::encode(rand::rng().random::<[u8; 16]>())
}

/// The Table API error body with `status`.
pub fn sn_error(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    (
        status,
        Json(json!({
            "error": {"message": message, "detail": detail},
            "status": "failure",
        })),
    )
        .into_response()
}

fn injected_error_body() -> Response {
    sn_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error",
        Some("An injected fault"),
    )
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(o) => o.get("value").map(text_of).unwrap_or_default(),
        other => other.to_string(),
    }
}

impl ServiceNowState {
    /// The instance URL (`https://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The sys_id of the incident `number`.
    pub fn incident_sys_id(&self, number: &str) -> Option<String> {
        lock(&self.tables)
            .get("incident")?
            .iter()
            .find(|r| r.get("number").map(text_of).as_deref() == Some(number))
            .map(|r| r.get("sys_id").map(text_of).unwrap_or_default())
    }

    /// A record as stored (reference fields as `{link, value}`).
    pub fn record(&self, table: &str, sys_id: &str) -> Option<Map<String, Value>> {
        lock(&self.tables)
            .get(table)?
            .iter()
            .find(|r| r.get("sys_id").map(text_of).as_deref() == Some(sys_id))
            .cloned()
    }

    /// The journal entries of record `sys_id`, oldest first.
    pub fn journal(&self, sys_id: &str) -> Vec<JournalEntry> {
        lock(&self.tables)
            .get("sys_journal_field")
            .map(|rows| {
                rows.iter()
                    .filter(|r| r.get("element_id").map(text_of).as_deref() == Some(sys_id))
                    .map(|r| JournalEntry {
                        field: r.get("element").map(text_of).unwrap_or_default(),
                        value: r.get("value").map(text_of).unwrap_or_default(),
                        author: r.get("sys_created_by").map(text_of).unwrap_or_default(),
                        at: r.get("sys_created_on").map(text_of).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds an incident and returns its (number, sys_id).
    pub fn add_incident(
        &self,
        caller_upn: &str,
        short_description: &str,
        approval: &str,
        action: &str,
    ) -> (String, String) {
        let mut tables = lock(&self.tables);
        let user_id = ensure_user(&mut tables, &self.base_url, caller_upn);
        let rows = tables.entry("incident".into()).or_default();
        let number = format!("INC{:07}", 10_001 + rows.len());
        let sys_id = new_sys_id();
        let now = now_sn();
        let mut r = Map::new();
        for (k, v) in [
            ("sys_id", sys_id.as_str()),
            ("number", number.as_str()),
            ("short_description", short_description),
            ("approval", approval),
            ("state", "1"),
            ("impact", "3"),
            ("urgency", "3"),
            ("priority", "5"),
            ("category", "software"),
            ("u_sessiongate_action", action),
            ("work_notes", ""),
            ("comments", ""),
            ("sys_created_on", now.as_str()),
            ("sys_created_by", "admin"),
            ("sys_updated_on", now.as_str()),
            ("sys_updated_by", "admin"),
            ("sys_mod_count", "0"),
            ("sys_class_name", "incident"),
            ("active", "true"),
        ] {
            r.insert(k.into(), Value::String(v.into()));
        }
        r.insert(
            "caller_id".into(),
            json!({"link": format!("{}/api/now/table/sys_user/{user_id}", self.base_url), "value": user_id}),
        );
        rows.push(r);
        (number, sys_id)
    }

    /// Sets a field of a record directly (e.g. the approval state), as an agent would.
    pub fn set_field(&self, table: &str, sys_id: &str, field: &str, value: &str) -> bool {
        let mut tables = lock(&self.tables);
        let Some(r) = tables.get_mut(table).and_then(|rows| {
            rows.iter_mut()
                .find(|r| r.get("sys_id").map(text_of).as_deref() == Some(sys_id))
        }) else {
            return false;
        };
        r.insert(field.into(), Value::String(value.into()));
        true
    }

    /// Every request answered so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.records()
    }

    /// The next `n` Table API requests (after authentication) are answered `status` with the
    /// error body; a 429 carries `Retry-After: retry_after_secs` and the rate-limit headers.
    pub fn fail_next(&self, n: u32, status: u16, retry_after_secs: u64) {
        let mut s = lock(&self.settings);
        for _ in 0..n {
            s.fail_queue.push_back((status, retry_after_secs));
        }
    }

    /// Sets (or lifts) the per-user inbound rate limit.
    pub fn set_rate_limit(&self, r: Option<RateLimit>) {
        lock(&self.settings).rate_limit = r;
        lock(&self.windows).clear();
    }

    pub fn set_faults(&self, f: FaultSettings) {
        self.faults.set(f);
    }

    /// The body the Business Rule's webhook carries for incident `number` (what [`Self::notify`]
    /// sends), with `delivery_id` and, unless given, the incident's requested action.
    pub fn notify_payload(
        &self,
        number: &str,
        delivery_id: &str,
        action: Option<&str>,
    ) -> Result<Value, String> {
        let sys_id = self
            .incident_sys_id(number)
            .ok_or_else(|| format!("no incident {number}"))?;
        let rec = self
            .record("incident", &sys_id)
            .ok_or_else(|| format!("no incident {number}"))?;
        let caller = rec
            .get("caller_id")
            .map(text_of)
            .and_then(|uid| self.record("sys_user", &uid))
            .and_then(|u| u.get("email").map(text_of))
            .unwrap_or_default();
        let field = |k: &str| rec.get(k).map(text_of).unwrap_or_default();
        Ok(json!({
            "event": "incident.sessiongate_action",
            "delivery_id": delivery_id,
            "table": "incident",
            "number": number,
            "sys_id": sys_id,
            "caller_upn": caller,
            "requested_action": action.map(str::to_string).unwrap_or_else(|| field("u_sessiongate_action")),
            "approval": field("approval"),
            "state": field("state"),
            "short_description": field("short_description"),
            "sys_updated_on": field("sys_updated_on"),
        }))
    }

    /// Sends the webhook a Business Rule would send for incident `number` (see the module
    /// documentation for the body). Only loopback targets are accepted.
    pub async fn notify(&self, number: &str, o: &NotifyOptions) -> Result<NotifyOutcome, String> {
        if !is_loopback_url(&o.url) {
            return Err(format!(
                "'{}' is not a loopback http(s) URL: the emulator only notifies loopback targets",
                o.url
            ));
        }
        let delivery_id = o
            .delivery_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let body = self.notify_payload(number, &delivery_id, o.action.as_deref())?;
        let raw = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let mut req = self
            .http
            .post(&o.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "ServiceNow/1.0")
            .header(
                o.delivery_id_header
                    .as_deref()
                    .unwrap_or("X-ServiceNow-Delivery"),
                &delivery_id,
            );
        if let Some(t) = &o.bearer_token {
            req = req.bearer_auth(t);
        }
        if let (Some(h), Some(k)) = (&o.api_key_header, &o.api_key) {
            req = req.header(h.as_str(), k.as_str());
        }
        if let Some(secret) = &o.hmac_secret {
            req = req.header(
                o.hmac_header.as_deref().unwrap_or("X-ServiceNow-Signature"),
                crate::webhooks::signature::hub_sign(secret.as_bytes(), &raw),
            );
        }
        let resp = req
            .body(raw.clone())
            .send()
            .await
            .map_err(|e| format!("sending the webhook: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok(NotifyOutcome {
            delivery_id,
            status,
            body: text,
            sent_body: String::from_utf8_lossy(&raw).into_owned(),
        })
    }

    /// Who is calling: Basic credentials of the integration user, or an issued bearer token.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, AuthFailure> {
        let raw = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthFailure::Missing)?;
        if let Some(b64) = raw.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or(AuthFailure::Missing)?;
            let (user, pass) = decoded.split_once(':').ok_or(AuthFailure::Missing)?;
            let ok = user == self.opts.user
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    pass.as_bytes(),
                    self.opts.password.as_bytes(),
                ));
            return if ok {
                Ok(user.to_string())
            } else {
                Err(AuthFailure::Wrong)
            };
        }
        if let Some(tok) = raw.strip_prefix("Bearer ") {
            let tokens = lock(&self.tokens);
            return match tokens.get(tok.trim()) {
                Some((user, exp)) if Instant::now() < *exp => Ok(user.clone()),
                _ => Err(AuthFailure::Wrong),
            };
        }
        Err(AuthFailure::Missing)
    }

    /// Authentication, the rate limit and the injected failures, in that order.
    fn admit(&self, headers: &HeaderMap) -> Result<String, Box<Response>> {
        let user = self.authenticate(headers).map_err(|f| {
            let message = match f {
                AuthFailure::Missing => "User Not Authenticated",
                AuthFailure::Wrong => "User is not authenticated",
            };
            Box::new(sn_error(
                StatusCode::UNAUTHORIZED,
                message,
                Some("Required to provide Auth information"),
            ))
        })?;
        let (rate, injected) = {
            let mut s = lock(&self.settings);
            (s.rate_limit, s.fail_queue.pop_front())
        };
        if let Some(r) = rate {
            let now = Instant::now();
            let window = Duration::from_secs(r.window_secs.max(1));
            let mut w = lock(&self.windows);
            let e = w.entry(user.clone()).or_insert((now, 0));
            if now.duration_since(e.0) >= window {
                *e = (now, 0);
            }
            if e.1 >= r.limit {
                let left = window.saturating_sub(now.duration_since(e.0));
                let secs = left.as_secs().max(1);
                return Err(Box::new(throttled(r.limit, secs)));
            }
            e.1 += 1;
        }
        if let Some((status, retry_after)) = injected {
            let st = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(Box::new(match status {
                429 => throttled(rate.map_or(100, |r| r.limit), retry_after),
                403 => sn_error(
                    st,
                    "Operation Failed",
                    Some("ACL Exception Update Failed due to security constraints"),
                ),
                404 => not_found(),
                _ => sn_error(st, "Internal server error", Some("An injected fault")),
            }));
        }
        Ok(user)
    }
}

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, Copy)]
enum AuthFailure {
    Missing,
    Wrong,
}

fn not_found() -> Response {
    sn_error(
        StatusCode::NOT_FOUND,
        "No Record found",
        Some("Record doesn't exist or ACL restricts the record retrieval"),
    )
}

/// The 429 of the inbound rate limit.
fn throttled(limit: u32, retry_after_secs: u64) -> Response {
    let mut r = sn_error(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded",
        Some("Too many requests from this user; retry later"),
    );
    let reset = OffsetDateTime::now_utc().unix_timestamp() + retry_after_secs as i64;
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    h.insert(
        "x-ratelimit-rule",
        HeaderValue::from_static("9d4a1ce0db41330010a4ee8b5e9619a1"),
    );
    r
}

/// Adds `upn` to `sys_user` unless present; its sys_id.
fn ensure_user(
    tables: &mut BTreeMap<String, Vec<Map<String, Value>>>,
    _base: &str,
    upn: &str,
) -> String {
    let rows = tables.entry("sys_user".into()).or_default();
    if let Some(r) = rows
        .iter()
        .find(|r| r.get("email").map(text_of).as_deref() == Some(upn))
    {
        return r.get("sys_id").map(text_of).unwrap_or_default();
    }
    let id = new_sys_id();
    let user_name = upn.split('@').next().unwrap_or(upn);
    let mut r = Map::new();
    for (k, v) in [
        ("sys_id", id.as_str()),
        ("user_name", user_name),
        ("email", upn),
        ("name", user_name),
        ("active", "true"),
    ] {
        r.insert(k.into(), Value::String(v.into()));
    }
    rows.push(r);
    id
}

fn with_user(user: &str, mut r: Response) -> Response {
    r.extensions_mut().insert(AuthedUser(user.to_string()));
    r
}

/// A running ServiceNow emulator. Dropping it stops the server.
pub struct ServiceNowEmulator {
    running: Running,
    state: Arc<ServiceNowState>,
    info: ServiceNowInfo,
}

impl ServiceNowEmulator {
    pub fn info(&self) -> ServiceNowInfo {
        self.info.clone()
    }
    pub fn state(&self) -> Arc<ServiceNowState> {
        self.state.clone()
    }
    pub fn base_url(&self) -> &str {
        &self.info.instance_url
    }
    pub fn running(&self) -> &Running {
        &self.running
    }
    pub fn set_ca_pem_path(&mut self, path: impl Into<String>) {
        self.info.ca_pem_path = Some(path.into());
    }
}

/// Starts the emulator on `listener`, serving HTTPS with `tls`.
pub async fn start(
    listener: tokio::net::TcpListener,
    tls: &EmulatorTls,
    opts: ServiceNowOptions,
) -> std::io::Result<ServiceNowEmulator> {
    let addr = listener.local_addr()?;
    let base_url = format!("https://127.0.0.1:{}", addr.port());
    let http = crate::httpclient::build_client(
        opts.notify_ca_pem
            .as_deref()
            .map(|p| ("servicenow emulator notify CA", p)),
        Duration::from_secs(5),
    )
    .map_err(std::io::Error::other)?;
    let faults = Faults::new(opts.faults);
    let state = Arc::new(ServiceNowState {
        base_url: base_url.clone(),
        tables: Mutex::new(BTreeMap::new()),
        tokens: Mutex::new(HashMap::new()),
        windows: Mutex::new(HashMap::new()),
        settings: Mutex::new(Settings {
            rate_limit: opts.rate_limit,
            fail_queue: Default::default(),
        }),
        calls: Arc::new(CallLog::default()),
        faults: faults.clone(),
        http,
        opts: opts.clone(),
    });
    let descriptions = [
        "My remote desktop session is frozen",
        "Please log me off everywhere",
        "Session hangs after VPN drop",
    ];
    let mut incidents = BTreeMap::new();
    {
        let mut tables = lock(&state.tables);
        for c in &opts.callers {
            ensure_user(&mut tables, &base_url, c);
        }
        tables.entry("sys_journal_field".into()).or_default();
    }
    for i in 0..opts.incidents as usize {
        let caller = opts
            .callers
            .get(i % opts.callers.len().max(1))
            .cloned()
            .unwrap_or_else(|| "alice@contoso.com".into());
        let approval = if i % 3 == 2 { "requested" } else { "approved" };
        let (n, id) = state.add_incident(
            &caller,
            descriptions[i % descriptions.len()],
            approval,
            "logoff",
        );
        incidents.insert(n, id);
    }

    let table = get(list_records);
    let record = get(get_record).patch(update_record).put(update_record);
    let router = Router::new()
        .route("/oauth_token.do", post(oauth_token))
        .route("/api/now/table/{table}", table.clone())
        .route("/api/now/v2/table/{table}", table)
        .route("/api/now/table/{table}/{sys_id}", record.clone())
        .route("/api/now/v2/table/{table}/{sys_id}", record)
        .route("/_emulator/notify/{number}", post(notify_route))
        .layer(middleware::from_fn_with_state(
            state.calls.clone(),
            log_calls,
        ))
        .with_state(state.clone());
    let running = serve_tls(listener, tls, router, faults, injected_error_body)?;
    let info = ServiceNowInfo {
        kind: "servicenow".into(),
        token_url: format!("{base_url}/oauth_token.do"),
        instance_url: base_url,
        user: opts.user,
        password: opts.password,
        client_id: opts.client_id,
        client_secret: opts.client_secret,
        incidents,
        ca_pem_path: None,
    };
    Ok(ServiceNowEmulator {
        running,
        state,
        info,
    })
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

async fn oauth_token(State(st): State<Arc<ServiceNowState>>, Form(f): Form<TokenForm>) -> Response {
    let denied = || {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error_description": "access_denied", "error": "server_error"})),
        )
            .into_response()
    };
    let eq = |a: Option<&str>, b: &str| {
        a.is_some_and(|a| bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes())))
    };
    if !eq(f.client_id.as_deref(), &st.opts.client_id)
        || !eq(f.client_secret.as_deref(), &st.opts.client_secret)
    {
        return denied();
    }
    let user = match f.grant_type.as_deref() {
        Some("client_credentials") => st.opts.user.clone(),
        Some("password") => {
            if f.username.as_deref() != Some(st.opts.user.as_str())
                || !eq(f.password.as_deref(), &st.opts.password)
            {
                return denied();
            }
            st.opts.user.clone()
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error_description": "invalid_request", "error": "invalid_request"})),
            )
                .into_response();
        }
    };
    let token = hex::encode(rand::rng().random::<[u8; 32]>());
    lock(&st.tokens).insert(
        token.clone(),
        (
            user,
            Instant::now() + Duration::from_secs(TOKEN_LIFETIME_SECS),
        ),
    );
    let mut body = json!({
        "access_token": token,
        "scope": "useraccount",
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
    });
    if f.grant_type.as_deref() == Some("password") {
        body["refresh_token"] = Value::String(hex::encode(rand::rng().random::<[u8; 32]>()));
    }
    Json(body).into_response()
}

/// One term of `sysparm_query`.
enum Term {
    Eq(String, String),
    Ne(String, String),
    Like(String, String),
    Starts(String, String),
}

/// `field=value` terms joined by `^` (also `!=`, `LIKE`, `STARTSWITH`; `ORDERBY...` ignored).
/// `None` for a term it cannot read (an instance with `glide.invalid_query.returns_no_rows`
/// answers no rows then, as this emulator does).
fn parse_query(q: &str) -> Option<Vec<Term>> {
    let mut terms = Vec::new();
    for t in q.split('^').filter(|t| !t.is_empty()) {
        if t.starts_with("ORDERBY") {
            continue;
        }
        let term = if let Some((f, v)) = t.split_once("!=") {
            Term::Ne(f.into(), v.into())
        } else if let Some((f, v)) = t.split_once("STARTSWITH") {
            Term::Starts(f.into(), v.into())
        } else if let Some((f, v)) = t.split_once("LIKE") {
            Term::Like(f.into(), v.into())
        } else if let Some((f, v)) = t.split_once('=') {
            Term::Eq(f.into(), v.into())
        } else {
            return None;
        };
        terms.push(term);
    }
    Some(terms)
}

fn matches(r: &Map<String, Value>, terms: &[Term]) -> bool {
    terms.iter().all(|t| {
        let get = |f: &str| r.get(f).map(text_of).unwrap_or_default();
        match t {
            Term::Eq(f, v) => get(f) == *v,
            Term::Ne(f, v) => get(f) != *v,
            Term::Like(f, v) => get(f).to_lowercase().contains(&v.to_lowercase()),
            Term::Starts(f, v) => get(f).starts_with(v.as_str()),
        }
    })
}

/// The record as the Table API shows it: journal fields read back empty, `sysparm_fields`
/// applied.
fn render(r: &Map<String, Value>, fields: Option<&str>) -> Value {
    let mut out = r.clone();
    for f in JOURNAL_FIELDS {
        if out.contains_key(f) {
            out.insert(f.into(), Value::String(String::new()));
        }
    }
    if let Some(fields) = fields.filter(|f| !f.trim().is_empty()) {
        let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
        out.retain(|k, _| wanted.contains(&k.as_str()));
    }
    Value::Object(out)
}

fn known_table(st: &ServiceNowState, table: &str) -> Result<(), Box<Response>> {
    if lock(&st.tables).contains_key(table) {
        Ok(())
    } else {
        Err(Box::new(sn_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid table {table}"),
            None,
        )))
    }
}

async fn list_records(
    State(st): State<Arc<ServiceNowState>>,
    Path(table): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match st.admit(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if let Err(r) = known_table(&st, &table) {
        return with_user(&user, *r);
    }
    let limit = match q.get("sysparm_limit").map(|s| s.parse::<usize>()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return with_user(
                &user,
                sn_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid sysparm_limit",
                    Some("sysparm_limit must be a number"),
                ),
            );
        }
    };
    let offset = q
        .get("sysparm_offset")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let terms = q.get("sysparm_query").map(|s| parse_query(s));
    let tables = lock(&st.tables);
    let rows = tables.get(&table).map(Vec::as_slice).unwrap_or_default();
    let hits: Vec<&Map<String, Value>> = match &terms {
        Some(None) => Vec::new(),
        Some(Some(t)) => rows.iter().filter(|r| matches(r, t)).collect(),
        None => rows.iter().collect(),
    };
    let total = hits.len();
    let page: Vec<Value> = hits
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| render(r, q.get("sysparm_fields").map(String::as_str)))
        .collect();
    drop(tables);
    let mut resp = Json(json!({ "result": page })).into_response();
    resp.headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    with_user(&user, resp)
}

async fn get_record(
    State(st): State<Arc<ServiceNowState>>,
    Path((table, sys_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match st.admit(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if let Err(r) = known_table(&st, &table) {
        return with_user(&user, *r);
    }
    let resp = match st.record(&table, &sys_id) {
        Some(r) => Json(json!({
            "result": render(&r, q.get("sysparm_fields").map(String::as_str))
        }))
        .into_response(),
        None => not_found(),
    };
    with_user(&user, resp)
}

async fn update_record(
    State(st): State<Arc<ServiceNowState>>,
    Path((table, sys_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = match st.admit(&headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if let Err(r) = known_table(&st, &table) {
        return with_user(&user, *r);
    }
    let fields: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return with_user(
                &user,
                sn_error(
                    StatusCode::BAD_REQUEST,
                    "Exception while reading request",
                    Some("The payload is not valid JSON."),
                ),
            );
        }
    };
    let now = now_sn();
    let updated = {
        let mut tables = lock(&st.tables);
        let Some(rec) = tables.get_mut(&table).and_then(|rows| {
            rows.iter_mut()
                .find(|r| r.get("sys_id").map(text_of).as_deref() == Some(sys_id.as_str()))
        }) else {
            return with_user(&user, not_found());
        };
        let mut journal = Vec::new();
        for (k, v) in &fields {
            // System fields are read-only through the API; unknown fields are ignored, as
            // on an instance.
            if k.starts_with("sys_") || !rec.contains_key(k) {
                continue;
            }
            if JOURNAL_FIELDS.contains(&k.as_str()) {
                let text = text_of(v);
                if !text.is_empty() {
                    journal.push((k.clone(), text));
                }
                continue;
            }
            rec.insert(k.clone(), Value::String(text_of(v)));
        }
        let count = rec
            .get("sys_mod_count")
            .map(text_of)
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0);
        rec.insert(
            "sys_mod_count".into(),
            Value::String((count + 1).to_string()),
        );
        rec.insert("sys_updated_on".into(), Value::String(now.clone()));
        rec.insert("sys_updated_by".into(), Value::String(user.clone()));
        let snapshot = rec.clone();
        let jf = tables.entry("sys_journal_field".into()).or_default();
        for (field, value) in journal {
            let mut j = Map::new();
            for (k, v) in [
                ("sys_id", new_sys_id()),
                ("element_id", sys_id.clone()),
                ("name", table.clone()),
                ("element", field),
                ("value", value),
                ("sys_created_by", user.clone()),
                ("sys_created_on", now.clone()),
            ] {
                j.insert(k.into(), Value::String(v));
            }
            jf.push(j);
        }
        snapshot
    };
    let no_body = headers
        .get("x-no-response-body")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let resp = if no_body {
        StatusCode::OK.into_response()
    } else {
        Json(json!({
            "result": render(&updated, q.get("sysparm_fields").map(String::as_str))
        }))
        .into_response()
    };
    with_user(&user, resp)
}

async fn notify_route(
    State(st): State<Arc<ServiceNowState>>,
    Path(number): Path<String>,
    body: Bytes,
) -> Response {
    let opts: NotifyOptions = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("bad notify options: {e}")})),
            )
                .into_response();
        }
    };
    match st.notify(&number, &opts).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_terms_are_read_and_unknown_ones_refused() {
        let t = parse_query("number=INC0010001^active=true^ORDERBYnumber").unwrap();
        assert_eq!(t.len(), 2);
        assert!(parse_query("numberINC").is_none());
        let mut r = Map::new();
        r.insert("number".into(), json!("INC0010001"));
        r.insert("active".into(), json!("true"));
        assert!(matches(&r, &t));
        assert!(!matches(&r, &parse_query("number=INC0010002").unwrap()));
        assert!(matches(
            &r,
            &parse_query("numberSTARTSWITHINC^active!=false").unwrap()
        ));
    }

    #[test]
    fn journal_fields_read_back_empty_and_fields_filter() {
        let mut r = Map::new();
        r.insert("work_notes".into(), json!("x"));
        r.insert("number".into(), json!("INC1"));
        let v = render(&r, None);
        assert_eq!(v["work_notes"], "");
        let v = render(&r, Some("number"));
        assert_eq!(v, json!({"number": "INC1"}));
    }
}
