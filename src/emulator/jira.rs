//! Jira Cloud / Jira Service Management site emulator: issue comments in Atlassian Document
//! Format (`/rest/api/3/issue/{key}/comment`), the issue itself, service-desk request comments
//! (`/rest/servicedeskapi/request/{key}/comment`), Basic auth with email and API token, the
//! per-issue write rate limit, and the webhooks a site sends (admin webhooks signed with a
//! secret, Automation "Send web request").
//!
//! Wire facts followed (see `shared/reference/ticketing.md`):
//! - Errors of the platform API are `{"errorMessages":[...],"errors":{...}}`: 401 `Client must
//!   be authenticated to access this resource.`, 404 `Issue does not exist or you do not have
//!   permission to see it.`, 400 `{"errors":{"comment":"Comment body is not valid!"}}` for a body
//!   that is not a valid ADF document. The service-desk API answers
//!   `{"errorMessage":"...","i18nErrorMessage":{"i18nKey":"...","parameters":[]}}`.
//! - ADF checked: `{"type":"doc","version":1,"content":[...]}` with `paragraph`, `heading`
//!   (`attrs.level` 1-6), `bulletList`/`orderedList` of `listItem`, `codeBlock` (plain text
//!   only), `blockquote`, `rule`; inline `text` (non-empty, marks `strong`, `em`, `code`,
//!   `strike`, `underline`, `link` with `attrs.href`), `hardBreak`, `mention`, `emoji`.
//! - Comment lists page with `startAt`/`maxResults` (at most 5 000) and say `total`.
//! - 429: `Retry-After` (seconds), `X-RateLimit-Reset` (ISO 8601), `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining`, `RateLimit-Reason` (`jira-per-issue-on-write` for the per-issue
//!   write limit).
//!
//! # The webhooks ([`JiraState::send_admin_webhook`], [`JiraState::send_automation`])
//! An admin webhook POSTs
//! `{"timestamp":<ms>,"webhookEvent":"jira:issue_updated","issue_event_type_name":"issue_generic",
//! "user":{...},"issue":{"id","key","self","fields":{"summary","status":{"name"},"reporter":
//! {"accountId","emailAddress","displayName"},"issuetype":{"name"},"project":{"key"},
//! "customfield_10100":"<requested action>"}},"changelog":{"id","items":[...]}}` with
//! `X-Hub-Signature: sha256=<hex>` when the webhook has a secret, `X-Atlassian-Webhook-Identifier`
//! (the same on every retry), `X-Atlassian-Webhook-Flow: Primary` and, on retries,
//! `X-Atlassian-Webhook-Retry: <n>`; it retries on 408, 409, 425, 429 and 5xx. An Automation
//! web request sends the rule's own headers and body (smart values such as `{{issue.key}}`
//! expanded), unsigned. Both can be triggered over HTTP (loopback targets only):
//! `POST /_emulator/webhook/{key}` with an [`AdminWebhook`] as JSON, and
//! `POST /_emulator/automation/{key}` with `{"url","headers":{..},"body":"<template>"}`.

use crate::emulator::common::{
    CallLog, CallRecord, EmulatorTls, FaultSettings, Faults, Running, is_loopback_url, lock,
    log_calls, serve_tls,
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::OffsetDateTime;

/// The custom field holding the session action a request asks for.
pub const ACTION_FIELD: &str = "customfield_10100";

/// Most comments one page holds.
const MAX_RESULTS: usize = 5000;

/// Options for [`start`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JiraOptions {
    /// The account sessiongate writes as (Basic auth `email:api_token`).
    pub email: String,
    pub api_token: String,
    /// Project key of the seeded service-desk requests (`HELP-1`, ...).
    pub project: String,
    /// Seeded requests, reporters taken in turn from `reporters`.
    pub issues: u32,
    pub reporters: Vec<String>,
    /// Per-issue write limit: writes per window, or none.
    pub write_limit: Option<WriteLimit>,
    pub faults: FaultSettings,
    /// Extra CA (PEM) the webhook client trusts.
    pub notify_ca_pem: Option<String>,
}

impl Default for JiraOptions {
    fn default() -> Self {
        Self {
            email: "sessiongate@contoso.com".into(),
            api_token: "emulator-jira-api-token".into(),
            project: "HELP".into(),
            issues: 3,
            reporters: vec!["alice@contoso.com".into(), "bob@contoso.com".into()],
            write_limit: None,
            faults: FaultSettings::default(),
            notify_ca_pem: None,
        }
    }
}

/// `limit` comment writes per issue per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteLimit {
    pub limit: u32,
    pub window_secs: u64,
}

/// What `sessiongate emulate jira` prints as one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JiraInfo {
    pub kind: String,
    pub site_url: String,
    pub email: String,
    pub api_token: String,
    pub issues: Vec<String>,
    pub ca_pem_path: Option<String>,
}

/// One comment as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredComment {
    pub id: String,
    pub author: String,
    /// The ADF document (a service-desk comment's text becomes one paragraph per line).
    pub body: Value,
    /// The plain text of the body (paragraphs and list items one per line).
    pub text: String,
    /// Visible to the customer (`jsdPublic`).
    pub public: bool,
    /// `api` or `servicedesk`.
    pub via: String,
    pub created: String,
}

#[derive(Debug, Clone)]
struct Issue {
    id: u64,
    key: String,
    summary: String,
    status: String,
    reporter: String,
    action: String,
    comments: Vec<StoredComment>,
}

/// An admin webhook as registered in Jira's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminWebhook {
    /// Loopback URL to POST to.
    pub url: String,
    /// Signs deliveries (`X-Hub-Signature`) when set.
    #[serde(default)]
    pub secret: Option<String>,
    /// Retries after a retryable answer (Jira makes up to 5).
    #[serde(default)]
    pub max_retries: u32,
    /// Wait between retries (Jira's are minutes; tests use none).
    #[serde(default)]
    pub retry_delay_ms: u64,
    /// Use this identifier instead of a fresh one.
    #[serde(default)]
    pub identifier: Option<String>,
}

/// What one webhook delivery (with its retries) got.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub identifier: String,
    /// The status of each attempt, first to last (0: no answer).
    pub statuses: Vec<u16>,
    pub last_body: String,
    pub sent_body: String,
}

#[derive(Debug, Default)]
struct Settings {
    write_limit: Option<WriteLimit>,
    /// Statuses (and `Retry-After` of a 429) the next API requests get after authentication.
    fail_queue: VecDeque<(u16, u64)>,
}

/// The emulator's state.
pub struct JiraState {
    base_url: String,
    opts: JiraOptions,
    issues: Mutex<BTreeMap<String, Issue>>,
    next_comment: Mutex<u64>,
    writes: Mutex<HashMap<String, (Instant, u32)>>,
    settings: Mutex<Settings>,
    calls: Arc<CallLog>,
    faults: Arc<Faults>,
    http: reqwest::Client,
}

impl std::fmt::Debug for JiraState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiraState")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The platform API's error body.
pub fn jira_error(status: StatusCode, messages: &[&str], errors: Value) -> Response {
    (
        status,
        Json(json!({"errorMessages": messages, "errors": errors})),
    )
        .into_response()
}

/// The service-desk API's error body.
fn jsm_error(status: StatusCode, message: &str, key: &str) -> Response {
    (
        status,
        Json(json!({
            "errorMessage": message,
            "i18nErrorMessage": {"i18nKey": key, "parameters": []},
        })),
    )
        .into_response()
}

fn injected_error_body() -> Response {
    jira_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &["Internal server error"],
        json!({}),
    )
}

fn jira_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    t.format(&f).unwrap_or_default()
}

fn account_id(email: &str) -> String {
    let h = crate::webhooks::signature::hmac_sha256(b"jira-emulator-account", &[email.as_bytes()]);
    format!("712020:{}", hex::encode(&h[..12]))
}

fn user_json(base: &str, email: &str) -> Value {
    let id = account_id(email);
    json!({
        "self": format!("{base}/rest/api/3/user?accountId={id}"),
        "accountId": id,
        "emailAddress": email,
        "displayName": email.split('@').next().unwrap_or(email),
        "active": true,
        "timeZone": "Etc/UTC",
        "accountType": "atlassian",
    })
}

impl JiraState {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The comments of `key`, oldest first.
    pub fn comments(&self, key: &str) -> Vec<StoredComment> {
        lock(&self.issues)
            .get(key)
            .map(|i| i.comments.clone())
            .unwrap_or_default()
    }

    /// Adds a service-desk request; its key.
    pub fn add_issue(&self, reporter: &str, summary: &str, action: &str) -> String {
        let mut issues = lock(&self.issues);
        let n = issues.len() + 1;
        let key = format!("{}-{n}", self.opts.project);
        issues.insert(
            key.clone(),
            Issue {
                id: 10_000 + n as u64,
                key: key.clone(),
                summary: summary.into(),
                status: "Waiting for support".into(),
                reporter: reporter.into(),
                action: action.into(),
                comments: Vec::new(),
            },
        );
        key
    }

    /// Sets an issue's status name (e.g. `Approved`); false for an unknown issue.
    pub fn set_status(&self, key: &str, status: &str) -> bool {
        match lock(&self.issues).get_mut(key) {
            Some(i) => {
                i.status = status.into();
                true
            }
            None => false,
        }
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.records()
    }

    /// The next `n` API requests (after authentication) are answered `status`; a 429 carries
    /// `Retry-After: retry_after_secs` and `RateLimit-Reason: jira-per-issue-on-write`.
    pub fn fail_next(&self, n: u32, status: u16, retry_after_secs: u64) {
        let mut s = lock(&self.settings);
        for _ in 0..n {
            s.fail_queue.push_back((status, retry_after_secs));
        }
    }

    pub fn set_write_limit(&self, w: Option<WriteLimit>) {
        lock(&self.settings).write_limit = w;
        lock(&self.writes).clear();
    }

    pub fn set_faults(&self, f: FaultSettings) {
        self.faults.set(f);
    }

    fn issue_json(&self, i: &Issue) -> Value {
        json!({
            "id": i.id.to_string(),
            "key": i.key,
            "self": format!("{}/rest/api/3/issue/{}", self.base_url, i.id),
            "fields": {
                "summary": i.summary,
                "status": {"name": i.status},
                "reporter": user_json(&self.base_url, &i.reporter),
                "issuetype": {"name": "Service Request"},
                "project": {"key": self.opts.project},
                ACTION_FIELD: i.action,
            }
        })
    }

    /// The `jira:issue_updated` payload for `key` (status changed to its current one).
    pub fn issue_updated_payload(&self, key: &str) -> Option<Value> {
        let issues = lock(&self.issues);
        let i = issues.get(key)?;
        Some(json!({
            "timestamp": OffsetDateTime::now_utc().unix_timestamp() * 1000,
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_generic",
            "user": user_json(&self.base_url, "agent@contoso.com"),
            "issue": self.issue_json(i),
            "changelog": {
                "id": format!("{}", 20_000 + i.id),
                "items": [{
                    "field": "status", "fieldtype": "jira", "fieldId": "status",
                    "from": "10001", "fromString": "Waiting for approval",
                    "to": "10002", "toString": i.status,
                }]
            }
        }))
    }

    /// Sends the admin webhook for `key`'s update to a loopback URL, retrying as Jira does.
    pub async fn send_admin_webhook(
        &self,
        key: &str,
        hook: &AdminWebhook,
    ) -> Result<Delivery, String> {
        if !is_loopback_url(&hook.url) {
            return Err(format!("'{}' is not a loopback http(s) URL", hook.url));
        }
        let payload = self
            .issue_updated_payload(key)
            .ok_or_else(|| format!("no issue {key}"))?;
        let raw = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        let identifier = hook
            .identifier
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut statuses = Vec::new();
        let mut last_body = String::new();
        for attempt in 0..=hook.max_retries {
            if attempt > 0 && hook.retry_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(hook.retry_delay_ms)).await;
            }
            let mut req = self
                .http
                .post(&hook.url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("X-Atlassian-Webhook-Identifier", &identifier)
                .header("X-Atlassian-Webhook-Flow", "Primary");
            if attempt > 0 {
                req = req.header("X-Atlassian-Webhook-Retry", attempt.to_string());
            }
            if let Some(s) = &hook.secret {
                req = req.header(
                    "X-Hub-Signature",
                    crate::webhooks::signature::hub_sign(s.as_bytes(), &raw),
                );
            }
            let status = match req.body(raw.clone()).send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    last_body = r.text().await.unwrap_or_default();
                    s
                }
                Err(e) => {
                    last_body = e.to_string();
                    0
                }
            };
            statuses.push(status);
            let retry = status == 0 || matches!(status, 408 | 409 | 425 | 429) || status >= 500;
            if !retry {
                break;
            }
        }
        Ok(Delivery {
            identifier,
            statuses,
            last_body,
            sent_body: String::from_utf8_lossy(&raw).into_owned(),
        })
    }

    /// Expands the smart values `{{issue.key}}`, `{{issue.id}}`, `{{issue.summary}}`,
    /// `{{issue.status.name}}`, `{{issue.reporter.emailAddress}}` and
    /// `{{issue.customfield_10100}}` in `template`.
    pub fn expand_smart_values(&self, key: &str, template: &str) -> Option<String> {
        let issues = lock(&self.issues);
        let i = issues.get(key)?;
        let mut s = template.to_string();
        for (k, v) in [
            ("{{issue.key}}", i.key.clone()),
            ("{{issue.id}}", i.id.to_string()),
            ("{{issue.summary}}", i.summary.clone()),
            ("{{issue.status.name}}", i.status.clone()),
            ("{{issue.reporter.emailAddress}}", i.reporter.clone()),
            (&format!("{{{{issue.{ACTION_FIELD}}}}}"), i.action.clone()),
        ] {
            s = s.replace(k, &v);
        }
        Some(s)
    }

    /// An Automation rule's "Send web request": the rule's headers and body (smart values
    /// expanded for `key`), unsigned, once. Returns (status, answer body).
    pub async fn send_automation(
        &self,
        key: &str,
        url: &str,
        headers: &[(String, String)],
        body_template: &str,
    ) -> Result<(u16, String), String> {
        if !is_loopback_url(url) {
            return Err(format!("'{url}' is not a loopback http(s) URL"));
        }
        let body = self
            .expand_smart_values(key, body_template)
            .ok_or_else(|| format!("no issue {key}"))?;
        let mut req = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "Automation for Jira");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let r = req.body(body).send().await.map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        Ok((s, r.text().await.unwrap_or_default()))
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<String, ()> {
        let raw = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(())?;
        let b64 = raw.strip_prefix("Basic ").ok_or(())?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or(())?;
        let (email, token) = decoded.split_once(':').ok_or(())?;
        let ok = email.eq_ignore_ascii_case(&self.opts.email)
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                token.as_bytes(),
                self.opts.api_token.as_bytes(),
            ));
        if ok { Ok(email.to_string()) } else { Err(()) }
    }

    /// Authentication and injected failures; `jsm` picks the service-desk error shape.
    fn admit(&self, headers: &HeaderMap, jsm: bool) -> Result<String, Box<Response>> {
        let Ok(user) = self.authenticate(headers) else {
            return Err(Box::new(if jsm {
                jsm_error(
                    StatusCode::UNAUTHORIZED,
                    "Client must be authenticated to access this resource.",
                    "sd.customer.authentication.required",
                )
            } else {
                jira_error(
                    StatusCode::UNAUTHORIZED,
                    &["Client must be authenticated to access this resource."],
                    json!({}),
                )
            }));
        };
        let injected = lock(&self.settings).fail_queue.pop_front();
        if let Some((status, retry_after)) = injected {
            return Err(Box::new(match status {
                429 => throttled(100, retry_after, "jira-per-issue-on-write"),
                404 => not_found(jsm),
                403 => jira_error(
                    StatusCode::FORBIDDEN,
                    &["You do not have permission to comment on this issue."],
                    json!({}),
                ),
                s => jira_error(
                    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &["Internal server error"],
                    json!({}),
                ),
            }));
        }
        Ok(user)
    }

    /// The per-issue write limit.
    fn take_write(&self, key: &str) -> Result<(), Box<Response>> {
        let Some(w) = lock(&self.settings).write_limit else {
            return Ok(());
        };
        let now = Instant::now();
        let window = Duration::from_secs(w.window_secs.max(1));
        let mut m = lock(&self.writes);
        let e = m.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(e.0) >= window {
            *e = (now, 0);
        }
        if e.1 >= w.limit {
            let left = window
                .saturating_sub(now.duration_since(e.0))
                .as_secs()
                .max(1);
            return Err(Box::new(throttled(
                w.limit,
                left,
                "jira-per-issue-on-write",
            )));
        }
        e.1 += 1;
        Ok(())
    }
}

fn not_found(jsm: bool) -> Response {
    if jsm {
        jsm_error(
            StatusCode::NOT_FOUND,
            "The request either does not exist or you do not have permission to view it.",
            "sd.request.error.not.found",
        )
    } else {
        jira_error(
            StatusCode::NOT_FOUND,
            &["Issue does not exist or you do not have permission to see it."],
            json!({}),
        )
    }
}

fn throttled(limit: u32, retry_after: u64, reason: &'static str) -> Response {
    let mut r = jira_error(
        StatusCode::TOO_MANY_REQUESTS,
        &["Rate limit exceeded."],
        json!({}),
    );
    let reset = OffsetDateTime::now_utc() + Duration::from_secs(retry_after);
    let reset = reset
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    if let Ok(v) = HeaderValue::from_str(&reset) {
        h.insert("x-ratelimit-reset", v);
    }
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(0));
    h.insert("ratelimit-reason", HeaderValue::from_static(reason));
    r
}

/// Why an ADF document was refused (only for tests and logs; the answer is Jira's fixed text).
pub fn validate_adf(doc: &Value) -> Result<(), String> {
    let o = doc.as_object().ok_or("the body is not an object")?;
    if o.get("type").and_then(Value::as_str) != Some("doc") {
        return Err("the root node is not of type doc".into());
    }
    if o.get("version").and_then(Value::as_u64) != Some(1) {
        return Err("version must be 1".into());
    }
    let content = o
        .get("content")
        .and_then(Value::as_array)
        .ok_or("the doc has no content array")?;
    for n in content {
        block(n, 0)?;
    }
    Ok(())
}

fn children(n: &Value) -> Result<&[Value], String> {
    match n.get("content") {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err("content must be an array".into()),
    }
}

fn block(n: &Value, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("nesting too deep".into());
    }
    let t = n
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a node has no type")?;
    match t {
        "paragraph" => children(n)?.iter().try_for_each(inline),
        "heading" => {
            let level = n
                .get("attrs")
                .and_then(|a| a.get("level"))
                .and_then(Value::as_u64);
            if !matches!(level, Some(1..=6)) {
                return Err("heading needs attrs.level 1-6".into());
            }
            children(n)?.iter().try_for_each(inline)
        }
        "bulletList" | "orderedList" => {
            let items = children(n)?;
            if items.is_empty() {
                return Err(format!("{t} needs at least one listItem"));
            }
            for i in items {
                if i.get("type").and_then(Value::as_str) != Some("listItem") {
                    return Err(format!("{t} may only hold listItem"));
                }
                let c = children(i)?;
                if c.is_empty() {
                    return Err("listItem needs content".into());
                }
                for b in c {
                    let bt = b.get("type").and_then(Value::as_str).unwrap_or("");
                    if !matches!(bt, "paragraph" | "bulletList" | "orderedList" | "codeBlock") {
                        return Err(format!("listItem may not hold {bt}"));
                    }
                    block(b, depth + 1)?;
                }
            }
            Ok(())
        }
        "codeBlock" => {
            for c in children(n)? {
                if c.get("type").and_then(Value::as_str) != Some("text") || c.get("marks").is_some()
                {
                    return Err("codeBlock holds only unmarked text".into());
                }
                inline(c)?;
            }
            Ok(())
        }
        "blockquote" => {
            for c in children(n)? {
                if c.get("type").and_then(Value::as_str) != Some("paragraph") {
                    return Err("blockquote holds paragraphs".into());
                }
                block(c, depth + 1)?;
            }
            Ok(())
        }
        "rule" => Ok(()),
        other => Err(format!("unknown block node {other}")),
    }
}

fn inline(n: &Value) -> Result<(), String> {
    match n.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = n.get("text").and_then(Value::as_str).unwrap_or("");
            if text.is_empty() {
                return Err("text nodes need non-empty text".into());
            }
            if let Some(marks) = n.get("marks") {
                for m in marks.as_array().ok_or("marks must be an array")? {
                    match m.get("type").and_then(Value::as_str) {
                        Some("strong" | "em" | "code" | "strike" | "underline") => {}
                        Some("link") => {
                            if m.get("attrs")
                                .and_then(|a| a.get("href"))
                                .and_then(Value::as_str)
                                .is_none()
                            {
                                return Err("link needs attrs.href".into());
                            }
                        }
                        _ => return Err("unknown mark".into()),
                    }
                }
            }
            Ok(())
        }
        Some("hardBreak" | "mention" | "emoji") => Ok(()),
        Some(other) => Err(format!("unknown inline node {other}")),
        None => Err("an inline node has no type".into()),
    }
}

/// The plain text of an ADF document: each paragraph, heading, list item or code line on
/// its own line, hard breaks as new lines.
pub fn adf_text(doc: &Value) -> String {
    fn walk(n: &Value, out: &mut String) {
        match n.get("type").and_then(Value::as_str) {
            Some("text") => out.push_str(n.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("hardBreak") => out.push('\n'),
            Some("paragraph" | "heading" | "codeBlock") => {
                for c in n
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    walk(c, out);
                }
                out.push('\n');
            }
            _ => {
                for c in n
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    walk(c, out);
                }
            }
        }
    }
    let mut out = String::new();
    walk(doc, &mut out);
    out
}

fn text_to_adf(text: &str) -> Value {
    let paras: Vec<Value> = text
        .lines()
        .map(|l| {
            if l.is_empty() {
                json!({"type": "paragraph", "content": []})
            } else {
                json!({"type": "paragraph", "content": [{"type": "text", "text": l}]})
            }
        })
        .collect();
    json!({"type": "doc", "version": 1, "content": paras})
}

/// A running Jira emulator. Dropping it stops the server.
pub struct JiraEmulator {
    running: Running,
    state: Arc<JiraState>,
    info: JiraInfo,
}

impl JiraEmulator {
    pub fn info(&self) -> JiraInfo {
        self.info.clone()
    }
    pub fn state(&self) -> Arc<JiraState> {
        self.state.clone()
    }
    pub fn base_url(&self) -> &str {
        &self.info.site_url
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
    opts: JiraOptions,
) -> std::io::Result<JiraEmulator> {
    let addr = listener.local_addr()?;
    let base_url = format!("https://127.0.0.1:{}", addr.port());
    let http = crate::httpclient::build_client(
        opts.notify_ca_pem
            .as_deref()
            .map(|p| ("jira emulator webhook CA", p)),
        Duration::from_secs(5),
    )
    .map_err(std::io::Error::other)?;
    let faults = Faults::new(opts.faults);
    let state = Arc::new(JiraState {
        base_url: base_url.clone(),
        issues: Mutex::new(BTreeMap::new()),
        next_comment: Mutex::new(10_000),
        writes: Mutex::new(HashMap::new()),
        settings: Mutex::new(Settings {
            write_limit: opts.write_limit,
            fail_queue: VecDeque::new(),
        }),
        calls: Arc::new(CallLog::default()),
        faults: faults.clone(),
        http,
        opts: opts.clone(),
    });
    let summaries = [
        "My remote desktop session is frozen",
        "Please log me off everywhere",
        "Session hangs after VPN drop",
    ];
    let mut keys = Vec::new();
    for i in 0..opts.issues as usize {
        let reporter = opts
            .reporters
            .get(i % opts.reporters.len().max(1))
            .cloned()
            .unwrap_or_else(|| "alice@contoso.com".into());
        keys.push(state.add_issue(&reporter, summaries[i % summaries.len()], "logoff"));
    }
    let router = Router::new()
        .route("/rest/api/3/issue/{key}", get(get_issue))
        .route(
            "/rest/api/3/issue/{key}/comment",
            get(list_comments).post(add_comment),
        )
        .route(
            "/rest/servicedeskapi/request/{key}/comment",
            post(add_request_comment),
        )
        .route("/_emulator/webhook/{key}", post(webhook_route))
        .route("/_emulator/automation/{key}", post(automation_route))
        .layer(middleware::from_fn_with_state(
            state.calls.clone(),
            log_calls,
        ))
        .with_state(state.clone());
    let running = serve_tls(listener, tls, router, faults, injected_error_body)?;
    let info = JiraInfo {
        kind: "jira".into(),
        site_url: base_url,
        email: opts.email,
        api_token: opts.api_token,
        issues: keys,
        ca_pem_path: None,
    };
    Ok(JiraEmulator {
        running,
        state,
        info,
    })
}

fn comment_json(base: &str, key_id: u64, c: &StoredComment) -> Value {
    json!({
        "self": format!("{base}/rest/api/3/issue/{key_id}/comment/{}", c.id),
        "id": c.id,
        "author": user_json(base, &c.author),
        "updateAuthor": user_json(base, &c.author),
        "body": c.body,
        "created": c.created,
        "updated": c.created,
        "jsdPublic": c.public,
    })
}

async fn get_issue(
    State(st): State<Arc<JiraState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = st.admit(&headers, false) {
        return *r;
    }
    let issues = lock(&st.issues);
    let Some(i) = issues.get(&key) else {
        return not_found(false);
    };
    let mut v = st.issue_json(i);
    let comments: Vec<Value> = i
        .comments
        .iter()
        .map(|c| comment_json(&st.base_url, i.id, c))
        .collect();
    v["fields"]["comment"] = json!({
        "comments": comments, "maxResults": comments.len(), "total": comments.len(), "startAt": 0
    });
    Json(v).into_response()
}

async fn list_comments(
    State(st): State<Arc<JiraState>>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = st.admit(&headers, false) {
        return *r;
    }
    let num = |name: &str, default: usize| match q.get(name) {
        None => Ok(default),
        Some(s) => s.parse::<usize>().map_err(|_| {
            Box::new(jira_error(
                StatusCode::BAD_REQUEST,
                &[&format!(
                    "The '{name}' parameter must be a non-negative integer."
                )],
                json!({}),
            ))
        }),
    };
    let (start, max) = match (num("startAt", 0), num("maxResults", MAX_RESULTS)) {
        (Ok(s), Ok(m)) => (s, m.min(MAX_RESULTS)),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let issues = lock(&st.issues);
    let Some(i) = issues.get(&key) else {
        return not_found(false);
    };
    let (from, to, _) = crate::emulator::common::page_bounds(i.comments.len(), start, max.max(1));
    let to = if max == 0 { from } else { to };
    let page: Vec<Value> = i.comments[from..to]
        .iter()
        .map(|c| comment_json(&st.base_url, i.id, c))
        .collect();
    Json(json!({
        "startAt": start,
        "maxResults": max,
        "total": i.comments.len(),
        "comments": page,
    }))
    .into_response()
}

impl JiraState {
    fn push_comment(
        &self,
        key: &str,
        author: &str,
        body: Value,
        public: bool,
        via: &str,
    ) -> Option<(u64, StoredComment)> {
        let id = {
            let mut n = lock(&self.next_comment);
            *n += 1;
            *n
        };
        let mut issues = lock(&self.issues);
        let i = issues.get_mut(key)?;
        let c = StoredComment {
            id: id.to_string(),
            author: author.to_string(),
            text: adf_text(&body),
            body,
            public,
            via: via.into(),
            created: jira_time(OffsetDateTime::now_utc()),
        };
        i.comments.push(c.clone());
        Some((i.id, c))
    }
}

async fn add_comment(
    State(st): State<Arc<JiraState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = match st.admit(&headers, false) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !lock(&st.issues).contains_key(&key) {
        return not_found(false);
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return jira_error(
                StatusCode::BAD_REQUEST,
                &[&format!("Unexpected character in the request body: {e}")],
                json!({}),
            );
        }
    };
    let doc = match v.get("body") {
        None | Some(Value::Null) => {
            return jira_error(
                StatusCode::BAD_REQUEST,
                &[],
                json!({"comment": "Comment body can not be empty!"}),
            );
        }
        Some(d) => d.clone(),
    };
    if validate_adf(&doc).is_err() {
        return jira_error(
            StatusCode::BAD_REQUEST,
            &[],
            json!({"comment": "Comment body is not valid!"}),
        );
    }
    if let Err(r) = st.take_write(&key) {
        return *r;
    }
    // An internal note is written with a `sd.public.comment` property `{"internal": true}`;
    // without it a comment on a request is public.
    let internal = v
        .get("properties")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter().any(|p| {
                p.get("key").and_then(Value::as_str) == Some("sd.public.comment")
                    && p.get("value").and_then(|x| x.get("internal")) == Some(&Value::Bool(true))
            })
        });
    match st.push_comment(&key, &user, doc, !internal, "api") {
        Some((issue_id, c)) => (
            StatusCode::CREATED,
            Json(comment_json(&st.base_url, issue_id, &c)),
        )
            .into_response(),
        None => not_found(false),
    }
}

async fn add_request_comment(
    State(st): State<Arc<JiraState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = match st.admit(&headers, true) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !lock(&st.issues).contains_key(&key) {
        return not_found(true);
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return jsm_error(
                StatusCode::BAD_REQUEST,
                "The request body is not valid JSON.",
                "sd.request.body.invalid",
            );
        }
    };
    let text = v.get("body").and_then(Value::as_str).unwrap_or("");
    if text.trim().is_empty() {
        return jsm_error(
            StatusCode::BAD_REQUEST,
            "The comment body must not be empty.",
            "sd.comment.body.required",
        );
    }
    let public = match v.get("public") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return jsm_error(
                StatusCode::BAD_REQUEST,
                "'public' must be true or false.",
                "sd.comment.public.invalid",
            );
        }
    };
    if let Err(r) = st.take_write(&key) {
        return *r;
    }
    let Some((_, c)) = st.push_comment(&key, &user, text_to_adf(text), public, "servicedesk")
    else {
        return not_found(true);
    };
    let now = OffsetDateTime::now_utc();
    (
        StatusCode::CREATED,
        Json(json!({
            "id": c.id,
            "body": text,
            "public": public,
            "author": user_json(&st.base_url, &user),
            "created": {
                "iso8601": c.created,
                "jira": c.created,
                "friendly": "Today",
                "epochMillis": now.unix_timestamp() * 1000,
            },
            "_links": {"self": format!("{}/rest/servicedeskapi/request/{key}/comment/{}", st.base_url, c.id)},
        })),
    )
        .into_response()
}

/// `POST /_emulator/automation/{key}`: what an Automation rule's "Send web request" is told.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutomationRequest {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: String,
}

fn emulator_answer<T: Serialize>(r: Result<T, String>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// `POST /_emulator/webhook/{key}` with an [`AdminWebhook`]: sends the admin webhook (for the
/// demo and curl users; loopback targets only).
async fn webhook_route(
    State(st): State<Arc<JiraState>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let hook: AdminWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => return emulator_answer::<()>(Err(format!("bad webhook options: {e}"))),
    };
    emulator_answer(st.send_admin_webhook(&key, &hook).await)
}

async fn automation_route(
    State(st): State<Arc<JiraState>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let a: AutomationRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return emulator_answer::<()>(Err(format!("bad automation options: {e}"))),
    };
    let headers: Vec<(String, String)> = a.headers.into_iter().collect();
    emulator_answer(
        st.send_automation(&key, &a.url, &headers, &a.body)
            .await
            .map(|(status, body)| json!({"status": status, "body": body})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adf_accepts_the_documented_nodes_and_refuses_others() {
        let ok = json!({"type":"doc","version":1,"content":[
            {"type":"heading","attrs":{"level":3},"content":[{"type":"text","text":"H"}]},
            {"type":"paragraph","content":[{"type":"text","text":"a","marks":[{"type":"strong"}]},{"type":"hardBreak"},{"type":"text","text":"b"}]},
            {"type":"bulletList","content":[{"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"i"}]}]}]},
            {"type":"codeBlock","content":[{"type":"text","text":"x"}]}
        ]});
        validate_adf(&ok).unwrap();
        assert_eq!(adf_text(&ok), "H\na\nb\ni\nx\n");
        for bad in [
            json!("text"),
            json!({"type":"doc","version":2,"content":[]}),
            json!({"type":"doc","version":1}),
            json!({"type":"doc","version":1,"content":[{"type":"table"}]}),
            json!({"type":"doc","version":1,"content":[{"type":"paragraph","content":[{"type":"text","text":""}]}]}),
            json!({"type":"doc","version":1,"content":[{"type":"bulletList","content":[{"type":"paragraph"}]}]}),
            json!({"type":"doc","version":1,"content":[{"type":"heading","content":[]}]}),
        ] {
            assert!(validate_adf(&bad).is_err(), "{bad}");
        }
    }
}
