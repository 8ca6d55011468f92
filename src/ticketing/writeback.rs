//! The write-back client: one [`WriteBack`] per configured target, every call through the
//! shared upstream-call engine.
//!
//! - **ServiceNow.** Without a `sys_id`, `GET /api/now/table/{table}?sysparm_query=number=N
//!   &sysparm_fields=sys_id,number&sysparm_limit=1` finds it (a safe call, retried); then
//!   `PATCH /api/now/table/{table}/{sys_id}` sets the journal field to the plain-text summary.
//!   Basic auth, or OAuth bearer tokens from `oauth_token.do` (refreshed once on a 401).
//! - **Jira.** `POST /rest/api/3/issue/{key}/comment` with an ADF body (an internal note on a
//!   service-desk request unless `public`), or `POST /rest/servicedeskapi/request/{key}/comment`
//!   with `{"body","public"}`; Basic `email:api-token`. Writes to one issue are serialized.
//! - **Callback.** `POST url` with `{"type":"sessiongate.job.finished","timestamp",
//!   "data":{"ticket","report"}}`, signed with the Standard Webhooks headers; `webhook-id` is the
//!   same on every attempt (receivers dedupe on it), the timestamp and signature are fresh.
//!
//! A comment or journal entry is not idempotent: those writes are [`Repeat::Once`] (sent again
//! after a 429, a 401 with a fresh token, or a connection that never opened — not after a 5xx
//! or a broken connection, which may have written). The callback is [`Repeat::Safe`].

use super::{
    TicketRef, WriteBackConfig, WriteBackReport,
    config::{JiraMode, JournalField, ServiceNowAuth, outbound_url, resolve_secret},
    render::{report_adf, report_text},
};
use crate::config::{ConfigError, Key};
use crate::upstream::{Repeat, Reply, TokenSource, Upstream, UpstreamError, Verdict};
use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

/// Why a write-back failed; [`WriteBackError::code`] is the stable code jobs and audit events
/// carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBackErrorKind {
    /// The record or issue does not exist (or the account may not see it).
    NotFound,
    /// The system refused our credentials (401, or no OAuth token).
    AuthFailed,
    /// The account may not write there (403: ACL, data policy, permission).
    Forbidden,
    /// The system refused the request itself (400, 409, 422, ...).
    Rejected,
    /// Still throttled when the retry budget ran out.
    Throttled,
    /// No connection, or no answer in time.
    Unreachable,
    /// The system answered 5xx after the retries allowed.
    Unavailable,
    /// A write was sent and no answer came: it may have been written.
    OutcomeUnknown,
    /// The ticket reference is missing or not in the form the system uses.
    ReferenceInvalid,
    /// The answer was not what the API returns (unparseable, too large).
    BadAnswer,
}

impl WriteBackErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::NotFound => "ticket_not_found",
            Self::AuthFailed => "ticket_auth_failed",
            Self::Forbidden => "ticket_forbidden",
            Self::Rejected => "ticket_rejected",
            Self::Throttled => "ticket_throttled",
            Self::Unreachable => "ticket_unreachable",
            Self::Unavailable => "ticket_unavailable",
            Self::OutcomeUnknown => "ticket_outcome_unknown",
            Self::ReferenceInvalid => "ticket_reference_invalid",
            Self::BadAnswer => "ticket_bad_answer",
        }
    }
}

/// A failed write-back: its kind, the HTTP status when the system answered, and the system's
/// own message (parsed from its error body; never a credential).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct WriteBackError {
    pub kind: WriteBackErrorKind,
    pub status: Option<u16>,
    pub message: String,
    /// Throttled: how long the system asked to wait (`Retry-After`) beyond the retry budget.
    pub retry_after: Option<Duration>,
    /// The failed call was the (not idempotent) write itself and it may have been carried
    /// out: a 5xx or a timeout after the request was sent. Never sent again automatically.
    pub may_have_written: bool,
    /// The engine gave up waiting for an answer (the request may have been sent).
    timed_out: bool,
}

impl WriteBackError {
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    fn new(kind: WriteBackErrorKind, status: Option<u16>, message: impl Into<String>) -> Self {
        Self {
            kind,
            status,
            message: crate::domain::truncate_for_display(&message.into(), 400),
            retry_after: None,
            may_have_written: false,
            timed_out: false,
        }
    }

    /// This error ended the journal entry or comment write: a 5xx or a timeout there may
    /// have written it.
    fn after_write(mut self) -> Self {
        self.may_have_written = self.kind == WriteBackErrorKind::Unavailable || self.timed_out;
        self
    }

    fn reference(message: impl Into<String>) -> Self {
        Self::new(WriteBackErrorKind::ReferenceInvalid, None, message)
    }
}

impl From<UpstreamError> for WriteBackError {
    fn from(e: UpstreamError) -> Self {
        use WriteBackErrorKind as K;
        let kind = match &e {
            UpstreamError::Throttled { .. } => K::Throttled,
            UpstreamError::Timeout(_) | UpstreamError::Transport(_) => K::Unreachable,
            UpstreamError::Auth(_) => K::AuthFailed,
            UpstreamError::OutcomeUnknown(_) => K::OutcomeUnknown,
            UpstreamError::TooLarge { .. } | UpstreamError::Paging { .. } => K::BadAnswer,
        };
        let status = match &e {
            UpstreamError::Throttled { .. } => Some(429),
            _ => None,
        };
        let retry_after = match &e {
            UpstreamError::Throttled { retry_after } => Some(*retry_after),
            _ => None,
        };
        Self {
            retry_after,
            timed_out: matches!(e, UpstreamError::Timeout(_)),
            ..Self::new(kind, status, e.to_string())
        }
    }
}

/// What a successful write-back did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteBackReceipt {
    /// `servicenow`, `jira` or `callback`.
    pub kind: &'static str,
    /// The record written to: a ServiceNow `sys_id`, a Jira issue key, or the callback's
    /// `webhook-id`.
    pub target: String,
    /// The comment id (Jira), when the system returned one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub status: u16,
}

#[derive(Clone, Copy)]
enum System {
    ServiceNow,
    Jira,
    JiraServiceDesk,
    Callback,
}

/// The system's own error message from its error body.
fn system_message(system: System, status: StatusCode, body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let parsed = v.as_ref().and_then(|v| match system {
        System::ServiceNow => {
            let e = v.get("error")?;
            let m = e.get("message").and_then(text).unwrap_or_default();
            match e.get("detail").and_then(text).filter(|d| !d.is_empty()) {
                Some(d) => Some(format!("{m}: {d}")),
                None => Some(m),
            }
        }
        System::Jira => {
            let mut parts: Vec<String> = v
                .get("errorMessages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(text)
                .collect();
            if let Some(errs) = v.get("errors").and_then(Value::as_object) {
                parts.extend(
                    errs.iter()
                        .map(|(k, v)| format!("{k}: {}", text(v).unwrap_or_default())),
                );
            }
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        System::JiraServiceDesk => v.get("errorMessage").and_then(text),
        System::Callback => None,
    });
    let msg = parsed.filter(|m| !m.trim().is_empty()).unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(body);
        let raw = raw.trim();
        if raw.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no reason given")
                .to_string()
        } else {
            crate::domain::truncate_for_display(raw, 200)
        }
    });
    // One line, no control characters (a NUL would not even fit a PostgreSQL text column).
    let msg: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("HTTP {}: {msg}", status.as_u16())
}

/// Judges a reply: 2xx is the answer; 500, 502, 503, 504 may pass; the rest fail for good.
fn classify(system: System, reply: Reply) -> Verdict<Reply, WriteBackError> {
    use WriteBackErrorKind as K;
    let status = reply.status;
    if status.is_success() {
        return Verdict::Done(reply);
    }
    let message = system_message(system, status, &reply.body);
    let kind = match status.as_u16() {
        401 => K::AuthFailed,
        403 => K::Forbidden,
        404 => K::NotFound,
        // An engine-level 429 never reaches here unless the budget ran out before.
        429 => K::Throttled,
        500 | 502 | 503 | 504 => {
            return Verdict::Transient(WriteBackError::new(
                K::Unavailable,
                Some(status.as_u16()),
                message,
            ));
        }
        s if s >= 500 => K::Unavailable,
        _ => K::Rejected,
    };
    Verdict::Fail(WriteBackError::new(kind, Some(status.as_u16()), message))
}

fn json_body(reply: &Reply) -> Result<Value, WriteBackError> {
    serde_json::from_slice(&reply.body).map_err(|e| {
        WriteBackError::new(
            WriteBackErrorKind::BadAnswer,
            Some(reply.status.as_u16()),
            format!("the answer is not JSON: {e}"),
        )
    })
}

/// `url` with `segments` appended to its path (each percent-encoded).
fn join(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut u = base.clone();
    if let Ok(mut p) = u.path_segments_mut() {
        p.pop_if_empty().extend(segments);
    }
    u
}

/// A record number or issue key as a system writes them: letters, digits, `-`, `_`, `.`.
fn check_reference(what: &str, s: &str) -> Result<(), WriteBackError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(WriteBackError::reference(format!(
            "the {what} is not in the form the system uses (letters, digits, '-', '_', '.'; at most 64)"
        )))
    }
}

/// Writes to one Jira issue go one at a time (`jira-per-issue-on-write`). Idle entries are
/// dropped whenever the map reaches this size, so it holds about as many entries as writes
/// in flight.
const ISSUE_LOCKS_PRUNE_AT: usize = 1024;

static ISSUE_LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

async fn issue_lock(id: String) -> tokio::sync::OwnedMutexGuard<()> {
    let m = {
        let mut map = ISSUE_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= ISSUE_LOCKS_PRUNE_AT {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(id).or_default().clone()
    };
    m.lock_owned().await
}

/// OAuth 2.0 bearer tokens from a ServiceNow instance's `oauth_token.do`.
struct ServiceNowToken {
    http: reqwest::Client,
    token_url: url::Url,
    client_id: String,
    client_secret: SecretString,
    user: Option<(String, SecretString)>,
    timeout: Duration,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

#[async_trait]
impl TokenSource for ServiceNowToken {
    async fn token(&self) -> Result<String, UpstreamError> {
        if let Some((t, exp)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && Instant::now() + Duration::from_secs(60) < *exp
        {
            return Ok(t.expose_secret().to_string());
        }
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
        ];
        match &self.user {
            Some((u, p)) => {
                form.push(("grant_type", "password"));
                form.push(("username", u.as_str()));
                form.push(("password", p.expose_secret()));
            }
            None => form.push(("grant_type", "client_credentials")),
        }
        let sent = self
            .http
            .post(self.token_url.clone())
            .form(&form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "could not be reached"
                };
                UpstreamError::Transport(format!("the ServiceNow token endpoint {what}"))
            })?;
        let status = sent.status();
        let body: Value = sent.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // `error` and `error_description` are codes, never the credentials.
            let err = body.get("error").and_then(Value::as_str).unwrap_or("");
            let desc = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(UpstreamError::Auth(crate::domain::truncate_for_display(
                &format!(
                    "the ServiceNow token endpoint answered {}: {err} {desc}",
                    status.as_u16()
                ),
                300,
            )));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                UpstreamError::Auth("the ServiceNow token endpoint returned no access_token".into())
            })?
            .to_string();
        let life = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(1800);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            SecretString::from(token.clone()),
            Instant::now() + Duration::from_secs(life),
        ));
        Ok(token)
    }

    fn refresh(&self) -> Result<(), UpstreamError> {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
}

/// A credential given by reference, read again when the system refuses it: a rotated file or
/// variable is picked up without a restart.
struct RefSecret {
    current: std::sync::RwLock<SecretString>,
    key: Key,
    name: &'static str,
    env: Option<String>,
    file: Option<std::path::PathBuf>,
}

impl RefSecret {
    fn load(
        key: &Key,
        name: &'static str,
        env: &Option<String>,
        file: &Option<std::path::PathBuf>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            current: std::sync::RwLock::new(resolve_secret(key, name, env, file)?),
            key: key.clone(),
            name,
            env: env.clone(),
            file: file.clone(),
        })
    }

    fn get(&self) -> SecretString {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the secret again; true when it changed.
    fn reload(&self) -> bool {
        let Ok(fresh) = resolve_secret(&self.key, self.name, &self.env, &self.file) else {
            return false;
        };
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.expose_secret() == fresh.expose_secret() {
            return false;
        }
        *cur = fresh;
        true
    }
}

enum Target {
    ServiceNow {
        base: url::Url,
        table: String,
        field: JournalField,
        /// Basic credentials; `None` with OAuth (the engine's token source adds the bearer).
        basic: Option<(String, RefSecret)>,
    },
    Jira {
        base: url::Url,
        mode: JiraMode,
        public: bool,
        email: String,
        token: RefSecret,
    },
    Callback {
        url: url::Url,
        key: secrecy::SecretSlice<u8>,
    },
}

/// A write-back client built from one [`WriteBackConfig`].
pub struct WriteBack {
    target: Target,
    upstream: Upstream,
}

impl std::fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl WriteBack {
    /// Validates `cfg`, reads its credentials and CA bundle, and builds the client (no
    /// connection is made). `key` names the `write_back` table in errors.
    pub fn new(cfg: &WriteBackConfig, key: &Key) -> Result<Self, ConfigError> {
        cfg.validate(key)?;
        let policy = cfg.call_policy(key)?;
        let ca = match cfg.ca_bundle() {
            Some(p) => Some((
                p.display().to_string(),
                crate::httpclient::read_ca_bundle(p)
                    .map_err(|e| key.field("ca_bundle").err(e.to_string()))?,
            )),
            None => None,
        };
        let http = crate::httpclient::build_client(
            ca.as_ref().map(|(o, p)| (o.as_str(), p.as_str())),
            policy.timeout.min(Duration::from_secs(10)),
        )
        .map_err(|e| key.field("ca_bundle").err(e.to_string()))?;
        let (target, service, token): (Target, &'static str, Option<Arc<dyn TokenSource>>) =
            match cfg {
                WriteBackConfig::Servicenow(c) => {
                    let base = outbound_url(&key.field("instance_url"), &c.instance_url)?;
                    let akey = key.field("auth");
                    let (basic, token) = match &c.auth {
                        ServiceNowAuth::Basic {
                            user,
                            password_env,
                            password_file,
                        } => (
                            Some((
                                user.clone(),
                                RefSecret::load(&akey, "password", password_env, password_file)?,
                            )),
                            None,
                        ),
                        ServiceNowAuth::Oauth {
                            token_url,
                            client_id,
                            client_secret_env,
                            client_secret_file,
                            user,
                            password_env,
                            password_file,
                        } => {
                            let token_url = match token_url {
                                Some(t) => outbound_url(&akey.field("token_url"), t)?,
                                None => join(&base, &["oauth_token.do"]),
                            };
                            let user = match user {
                                Some(u) => Some((
                                    u.clone(),
                                    resolve_secret(&akey, "password", password_env, password_file)?,
                                )),
                                None => None,
                            };
                            let t: Arc<dyn TokenSource> = Arc::new(ServiceNowToken {
                                http: http.clone(),
                                token_url,
                                client_id: client_id.clone(),
                                client_secret: resolve_secret(
                                    &akey,
                                    "client_secret",
                                    client_secret_env,
                                    client_secret_file,
                                )?,
                                user,
                                timeout: policy.timeout,
                                cached: Mutex::new(None),
                            });
                            (None, Some(t))
                        }
                    };
                    (
                        Target::ServiceNow {
                            base,
                            table: c.table.clone(),
                            field: c.field,
                            basic,
                        },
                        "ServiceNow",
                        token,
                    )
                }
                WriteBackConfig::Jira(c) => (
                    Target::Jira {
                        base: outbound_url(&key.field("site_url"), &c.site_url)?,
                        mode: c.mode,
                        public: c.public,
                        email: c.email.clone(),
                        token: RefSecret::load(
                            key,
                            "api_token",
                            &c.api_token_env,
                            &c.api_token_file,
                        )?,
                    },
                    "Jira",
                    None,
                ),
                WriteBackConfig::Callback(c) => {
                    let secret = resolve_secret(key, "secret", &c.secret_env, &c.secret_file)?;
                    let raw =
                        crate::webhooks::signature::decode_standard_secret(secret.expose_secret())
                            .ok_or_else(|| {
                                let which = if c.secret_env.is_some() {
                                    "secret_env"
                                } else {
                                    "secret_file"
                                };
                                key.field(which).err(
                                    "not a Standard Webhooks secret ('whsec_' followed by base64)",
                                )
                            })?;
                    (
                        Target::Callback {
                            url: outbound_url(&key.field("url"), &c.url)?,
                            key: secrecy::SecretSlice::from(raw),
                        },
                        "the callback receiver",
                        None,
                    )
                }
            };
        Ok(Self {
            target,
            upstream: Upstream::new(service, http, policy, token),
        })
    }

    /// `servicenow`, `jira` or `callback`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::ServiceNow { .. } => "servicenow",
            Target::Jira { .. } => "jira",
            Target::Callback { .. } => "callback",
        }
    }

    /// Writes `report` to `ticket`.
    #[tracing::instrument(skip_all, fields(ticketing.kind = self.kind(), job.id = %report.job_id))]
    pub async fn write_back(
        &self,
        ticket: &TicketRef,
        report: &WriteBackReport,
    ) -> Result<WriteBackReceipt, WriteBackError> {
        let mut res = self.dispatch(ticket, report).await;
        // A 401 wrote nothing: if the credential was rotated since it was read, try once more.
        if matches!(&res, Err(e) if e.kind == WriteBackErrorKind::AuthFailed && e.status == Some(401))
            && self.reload_credential()
        {
            tracing::info!("the credential changed since it was read; trying once more");
            res = self.dispatch(ticket, report).await;
        }
        match &res {
            Ok(r) => tracing::info!(ticketing.target = %r.target, "written back to the ticket"),
            Err(e) => tracing::warn!(
                ticketing.code = e.code(),
                ticketing.status = e.status,
                ticketing.message = %e.message,
                "write-back failed"
            ),
        }
        res
    }

    fn reload_credential(&self) -> bool {
        match &self.target {
            Target::ServiceNow {
                basic: Some((_, s)),
                ..
            } => s.reload(),
            Target::Jira { token, .. } => token.reload(),
            _ => false,
        }
    }

    async fn dispatch(
        &self,
        ticket: &TicketRef,
        report: &WriteBackReport,
    ) -> Result<WriteBackReceipt, WriteBackError> {
        match &self.target {
            Target::ServiceNow {
                base,
                table,
                field,
                basic,
            } => {
                self.servicenow(base, table, *field, basic.as_ref(), ticket, report)
                    .await
            }
            Target::Jira {
                base,
                mode,
                public,
                email,
                token,
            } => {
                self.jira(base, *mode, *public, email, token, ticket, report)
                    .await
            }
            Target::Callback { url, key } => self.callback(url, key, ticket, report).await,
        }
    }

    async fn servicenow(
        &self,
        base: &url::Url,
        table: &str,
        field: JournalField,
        basic: Option<&(String, RefSecret)>,
        ticket: &TicketRef,
        report: &WriteBackReport,
    ) -> Result<WriteBackReceipt, WriteBackError> {
        let basic = basic.map(|(u, s)| (u, s.get()));
        let auth = |rb: reqwest::RequestBuilder| match &basic {
            Some((u, p)) => rb.basic_auth(u, Some(p.expose_secret())),
            None => rb,
        };
        let sys_id = match (&ticket.sys_id, &ticket.number) {
            (Some(id), _) => {
                if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(WriteBackError::reference(
                        "a ServiceNow sys_id is 32 hexadecimal digits",
                    ));
                }
                id.clone()
            }
            (None, Some(number)) => {
                check_reference("ticket number", number)?;
                let mut url = join(base, &["api", "now", "table", table]);
                url.query_pairs_mut()
                    .append_pair("sysparm_query", &format!("number={number}"))
                    .append_pair("sysparm_fields", "sys_id,number")
                    .append_pair("sysparm_limit", "1");
                let reply = self
                    .upstream
                    .call(
                        Repeat::Safe,
                        |c| auth(c.get(url.clone()).header("accept", "application/json")),
                        |r| classify(System::ServiceNow, r),
                    )
                    .await?;
                let v = json_body(&reply)?;
                v.get("result")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(|r| r.get("sys_id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        WriteBackError::new(
                            WriteBackErrorKind::NotFound,
                            Some(reply.status.as_u16()),
                            format!("no {table} record numbered {number}"),
                        )
                    })?
            }
            (None, None) => {
                return Err(WriteBackError::reference(
                    "a ServiceNow ticket needs its sys_id or number",
                ));
            }
        };
        let mut url = join(base, &["api", "now", "table", table, &sys_id]);
        url.query_pairs_mut()
            .append_pair("sysparm_fields", "sys_id,number");
        let body = json!({ field.as_str(): report_text(report) });
        let reply = self
            .upstream
            .call(
                Repeat::Once,
                |c| {
                    auth(
                        c.patch(url.clone())
                            .header("accept", "application/json")
                            .json(&body),
                    )
                },
                |r| classify(System::ServiceNow, r),
            )
            .await
            .map_err(WriteBackError::after_write)?;
        Ok(WriteBackReceipt {
            kind: "servicenow",
            target: sys_id,
            id: None,
            status: reply.status.as_u16(),
        })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the Jira target's parts, unpacked once"
    )]
    async fn jira(
        &self,
        base: &url::Url,
        mode: JiraMode,
        public: bool,
        email: &str,
        token: &RefSecret,
        ticket: &TicketRef,
        report: &WriteBackReport,
    ) -> Result<WriteBackReceipt, WriteBackError> {
        let key = ticket
            .key
            .as_ref()
            .or(ticket.number.as_ref())
            .ok_or_else(|| WriteBackError::reference("a Jira ticket needs its issue key"))?;
        check_reference("issue key", key)?;
        let (url, body, system) = match mode {
            JiraMode::Issue => {
                let mut body = json!({ "body": report_adf(report) });
                if !public {
                    // Jira Service Management reads this property as "internal note"; on
                    // other projects it is an ordinary, unused comment property.
                    body["properties"] =
                        json!([{"key": "sd.public.comment", "value": {"internal": true}}]);
                }
                (
                    join(base, &["rest", "api", "3", "issue", key, "comment"]),
                    body,
                    System::Jira,
                )
            }
            JiraMode::Servicedesk => (
                join(base, &["rest", "servicedeskapi", "request", key, "comment"]),
                json!({ "body": report_text(report), "public": public }),
                System::JiraServiceDesk,
            ),
        };
        let _one_at_a_time = issue_lock(format!("{}|{key}", base.as_str())).await;
        let token = token.get();
        let reply = self
            .upstream
            .call(
                Repeat::Once,
                |c| {
                    c.post(url.clone())
                        .basic_auth(email, Some(token.expose_secret()))
                        .header("accept", "application/json")
                        .json(&body)
                },
                |r| classify(system, r),
            )
            .await
            .map_err(WriteBackError::after_write)?;
        let id = json_body(&reply)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
        Ok(WriteBackReceipt {
            kind: "jira",
            target: key.clone(),
            id,
            status: reply.status.as_u16(),
        })
    }

    async fn callback(
        &self,
        url: &url::Url,
        key: &secrecy::SecretSlice<u8>,
        ticket: &TicketRef,
        report: &WriteBackReport,
    ) -> Result<WriteBackReceipt, WriteBackError> {
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let now = time::OffsetDateTime::now_utc();
        let body = serde_json::to_vec(&json!({
            "type": "sessiongate.job.finished",
            "timestamp": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "data": {"ticket": ticket, "report": report},
        }))
        .map_err(|e| WriteBackError::new(WriteBackErrorKind::Rejected, None, e.to_string()))?;
        let reply = self
            .upstream
            .call(
                Repeat::Safe,
                |c| {
                    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                    let sig = crate::webhooks::signature::standard_sign(
                        key.expose_secret(),
                        &id,
                        ts,
                        &body,
                    );
                    c.post(url.clone())
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", sig)
                        .body(body.clone())
                },
                |r| classify(System::Callback, r),
            )
            .await?;
        Ok(WriteBackReceipt {
            kind: "callback",
            target: id,
            id: None,
            status: reply.status.as_u16(),
        })
    }
}

/// Writes `report` to `ticket` with `client` (see [`WriteBack::write_back`]).
pub async fn write_back(
    client: &WriteBack,
    ticket: &TicketRef,
    report: &WriteBackReport,
) -> Result<WriteBackReceipt, WriteBackError> {
    client.write_back(ticket, report).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_messages_are_read_from_each_error_shape() {
        let sn = br#"{"error":{"message":"No Record found","detail":"Record doesn't exist"},"status":"failure"}"#;
        assert_eq!(
            system_message(System::ServiceNow, StatusCode::NOT_FOUND, sn),
            "HTTP 404: No Record found: Record doesn't exist"
        );
        let j = br#"{"errorMessages":[],"errors":{"comment":"Comment body is not valid!"}}"#;
        assert_eq!(
            system_message(System::Jira, StatusCode::BAD_REQUEST, j),
            "HTTP 400: comment: Comment body is not valid!"
        );
        let jsm = br#"{"errorMessage":"Nope","i18nErrorMessage":{}}"#;
        assert_eq!(
            system_message(System::JiraServiceDesk, StatusCode::FORBIDDEN, jsm),
            "HTTP 403: Nope"
        );
        assert_eq!(
            system_message(System::Callback, StatusCode::GONE, b""),
            "HTTP 410: Gone"
        );
        // Control characters (NUL, line breaks) never reach the recorded detail.
        let nul =
            br#"{"error":{"message":"bad\u0000thing\r\nhere","detail":null},"status":"failure"}"#;
        assert_eq!(
            system_message(System::ServiceNow, StatusCode::BAD_REQUEST, nul),
            "HTTP 400: bad thing  here"
        );
    }

    #[test]
    fn references_are_checked_before_they_reach_a_query() {
        assert!(check_reference("n", "INC0010001").is_ok());
        assert!(check_reference("n", "HELP-12").is_ok());
        for bad in ["", "INC1^active=true", "HELP 1", "../x", "a/b"] {
            assert_eq!(
                check_reference("n", bad).unwrap_err().code(),
                "ticket_reference_invalid"
            );
        }
    }

    #[test]
    fn joined_paths_are_encoded() {
        let b = url::Url::parse("https://x.example/").unwrap();
        assert_eq!(
            join(&b, &["api", "now", "table", "incident", "a b"]).as_str(),
            "https://x.example/api/now/table/incident/a%20b"
        );
    }
}
