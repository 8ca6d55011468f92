//! Azure Virtual Desktop (ARM) adapter: `Microsoft.DesktopVirtualization` user sessions and
//! session hosts through Azure Resource Manager, per `reference/avd-arm.md`.
//!
//! - Tokens come from `azure_identity` (explicitly chosen credential kind), which caches them;
//!   token requests go through the same `reqwest` client (and private CA bundle) as ARM calls.
//! - Lists follow `nextLink` (same origin only: the bearer token never leaves the ARM host).
//! - Both the spec (`name: "6"`) and the real (`name: "hp1/sh1/6"`, lower-case id) forms parse.
//! - Calls go through the [`crate::upstream`] engine (401 refresh, 429 budget, backoff, caps).
//!   Reads, logoff (DELETE) and disconnect are safe to repeat; `sendMessage` is not. 500, 502,
//!   503 and 504 are transient; a 429 without `Retry-After` waits 5 s.

use super::{ActionEffect, PoolSessions, ProviderError, SessionFilter, SessionProvider};
use crate::config::{ConfigError, Key};
use crate::domain::{
    ActionKind, Capabilities, HostName, ProviderKind, Session, SessionHost, SessionId,
    SessionState, StateFilter,
};
use crate::upstream::{
    self, CallPolicy, CredentialToken, Page, Repeat, Reply, Upstream, Verdict, pace::Pacer,
};
use async_trait::async_trait;
use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    http::ClientOptions,
};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{path::PathBuf, sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Default `api-version` (newest stable).
pub const DEFAULT_API_VERSION: &str = "2025-10-10";

fn default_api_version() -> String {
    DEFAULT_API_VERSION.into()
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_max_retries() -> u32 {
    3
}
fn default_retry_budget_secs() -> u64 {
    60
}
fn default_max_response_bytes() -> u64 {
    upstream::DEFAULT_MAX_RESPONSE_BYTES
}

/// One `[[pools]]` entry with `provider = "avd"` (the integrator flattens it into the table).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AvdPoolConfig {
    pub subscription_id: String,
    pub resource_group: String,
    pub host_pool: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub cloud: AvdCloud,
    pub credential: AvdCredentialConfig,
    /// Extra trusted CA certificates (PEM), for ARM and token requests alike.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Per-call (per attempt) timeout, sending and reading the whole answer.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Retries of a safe/idempotent call after a 5xx, timeout or connection error.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// A wait (429 `Retry-After` or backoff) must end within this long after the operation
    /// began. `throttle_budget_secs` is accepted as an alias.
    #[serde(default = "default_retry_budget_secs", alias = "throttle_budget_secs")]
    pub retry_budget_secs: u64,
    /// Longest ARM response body read; a longer one fails with `response_too_large`.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Overrides of `[pacing.arm]` for this pool (`pacing = { deletes = { size = 200,
    /// refill_per_sec = 100 } }`). Pools with the same endpoint, subscription and credential
    /// share their buckets and must agree on them.
    #[serde(default)]
    pub pacing: upstream::pace::ArmPacingOverride,
}

/// Which Azure cloud: `"public"`, `"us-gov"`, `"china"`, or a custom
/// `{ arm_endpoint = "https://...", authority_host = "https://..." }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AvdCloud {
    Named(NamedCloud),
    Custom(CustomCloud),
}

impl Default for AvdCloud {
    fn default() -> Self {
        AvdCloud::Named(NamedCloud::Public)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NamedCloud {
    Public,
    UsGov,
    China,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomCloud {
    pub arm_endpoint: String,
    pub authority_host: String,
}

/// The credential, chosen explicitly (`kind = "..."`). Secrets are never held in config
/// values: they are named by environment variable or file and read at build time.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AvdCredentialConfig {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        secret_env: Option<String>,
        #[serde(default)]
        secret_file: Option<PathBuf>,
    },
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
    },
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    AzureCli,
}

/// Builds the AVD provider for pool `pool_name` (no connection is made). Errors name the
/// offending key.
pub fn build(
    pool_name: &str,
    cfg: &AvdPoolConfig,
) -> Result<Arc<dyn SessionProvider>, ConfigError> {
    build_paced(pool_name, cfg, &Pacer::default())
}

/// [`build`], taking the pool's ARM buckets from `pacer` (shared with the other pools of the
/// same endpoint, subscription and credential).
pub fn build_paced(
    pool_name: &str,
    cfg: &AvdPoolConfig,
    pacer: &Pacer,
) -> Result<Arc<dyn SessionProvider>, ConfigError> {
    Ok(Arc::new(AvdProvider::new_paced(pool_name, cfg, pacer)?))
}

impl AvdCredentialConfig {
    /// Who ARM meters: the principal this credential signs in as (no secret in it).
    fn principal(&self) -> String {
        match self {
            AvdCredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                ..
            }
            | AvdCredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                ..
            } => format!("{tenant_id}/{client_id}"),
            AvdCredentialConfig::ManagedIdentity { client_id } => {
                format!("mi/{}", client_id.as_deref().unwrap_or("system"))
            }
            AvdCredentialConfig::AzureCli => "azure-cli".into(),
        }
    }
}

/// The AVD adapter for one host pool.
pub struct AvdProvider {
    pool_name: String,
    subscription: String,
    resource_group: String,
    host_pool: String,
    api_version: String,
    arm_endpoint: url::Url,
    scope: String,
    upstream: Upstream,
}

impl std::fmt::Debug for AvdProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvdProvider")
            .field("pool", &self.pool_name)
            .field("subscription", &self.subscription)
            .field("resource_group", &self.resource_group)
            .field("host_pool", &self.host_pool)
            .field("arm_endpoint", &self.arm_endpoint.as_str())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn arm_name_ok(s: &str, min: usize, max: usize, extra: &[char]) -> bool {
    (min..=max).contains(&s.chars().count())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

fn https_url(key: &Key, s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| key.err(format!("'{s}' is not a URL: {e}")))?;
    if u.scheme() != "https" {
        return Err(key.err("must be an https URL"));
    }
    if u.host_str().is_none() {
        return Err(key.err("has no host"));
    }
    Ok(u)
}

impl AvdPoolConfig {
    /// The checks that need nothing but these settings (ARM name rules, api-version, URLs);
    /// `key` is the pool's (`pools[<name>]`). [`AvdProvider::new`] runs them first.
    pub fn validate(&self, key: &Key) -> Result<(), ConfigError> {
        if !arm_name_ok(&self.subscription_id, 1, 64, &['-']) {
            return Err(key
                .field("subscription_id")
                .err("must be a subscription id (letters, digits, '-')"));
        }
        if !arm_name_ok(&self.resource_group, 1, 90, &['-', '_', '.', '(', ')'])
            || self.resource_group.ends_with('.')
        {
            return Err(key.field("resource_group").err(
                "must be 1-90 characters of letters, digits, '-', '_', '.', '(', ')' not ending in '.'",
            ));
        }
        if !arm_name_ok(&self.host_pool, 3, 64, &['@', '.', '-', '_', ' ']) {
            return Err(key
                .field("host_pool")
                .err("must be 3-64 characters of letters, digits, '@', '.', '-', '_' or space"));
        }
        let v = &self.api_version;
        let v_ok = v.len() >= 10
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && v.as_bytes()[4] == b'-';
        if !v_ok {
            return Err(key.field("api_version").err(format!(
                "'{v}' is not an api-version like {DEFAULT_API_VERSION}"
            )));
        }
        self.call_policy(key)?;
        for (name, shape) in [
            ("reads", self.pacing.reads),
            ("writes", self.pacing.writes),
            ("deletes", self.pacing.deletes),
        ] {
            if let Some(s) = shape {
                s.check()
                    .map_err(|(f, why)| key.field("pacing").field(name).field(f).err(why))?;
            }
        }
        if let AvdCloud::Custom(c) = &self.cloud {
            https_url(&key.field("cloud").field("arm_endpoint"), &c.arm_endpoint)?;
            https_url(
                &key.field("cloud").field("authority_host"),
                &c.authority_host,
            )?;
        }
        Ok(())
    }

    /// The upstream-call policy from `timeout_secs`, `max_retries`, `retry_budget_secs` and
    /// `max_response_bytes`; a 429 without `Retry-After` waits 5 s.
    pub fn call_policy(&self, key: &Key) -> Result<CallPolicy, ConfigError> {
        CallPolicy::from_knobs(
            self.timeout_secs,
            self.max_retries,
            self.retry_budget_secs,
            self.max_response_bytes,
            Duration::from_secs(5),
        )
        .map_err(|(k, why)| key.field(k).err(why))
    }
}

impl AvdProvider {
    /// Validates `cfg` ([`AvdPoolConfig::validate`]), reads its CA bundle and credential
    /// secret, and builds the client. No connection is made.
    pub fn new(pool_name: &str, cfg: &AvdPoolConfig) -> Result<Self, ConfigError> {
        Self::new_paced(pool_name, cfg, &Pacer::default())
    }

    /// [`AvdProvider::new`] with the ARM buckets from `pacer`.
    pub fn new_paced(
        pool_name: &str,
        cfg: &AvdPoolConfig,
        pacer: &Pacer,
    ) -> Result<Self, ConfigError> {
        let pool_key = Key::pool(pool_name);
        let key = |k: &str| pool_key.field(k);
        cfg.validate(&pool_key)?;
        let policy = cfg.call_policy(&pool_key)?;

        let (arm_endpoint, cloud) = match &cfg.cloud {
            AvdCloud::Named(NamedCloud::Public) => (
                "https://management.azure.com".to_string(),
                CloudConfiguration::AzurePublic,
            ),
            AvdCloud::Named(NamedCloud::UsGov) => (
                "https://management.usgovcloudapi.net".to_string(),
                CloudConfiguration::AzureGovernment,
            ),
            AvdCloud::Named(NamedCloud::China) => (
                "https://management.chinacloudapi.cn".to_string(),
                CloudConfiguration::AzureChina,
            ),
            AvdCloud::Custom(c) => {
                let auth = https_url(&key("cloud").field("authority_host"), &c.authority_host)?;
                let mut custom = CustomConfiguration::default();
                custom.authority_host = auth.as_str().trim_end_matches('/').to_string();
                (c.arm_endpoint.clone(), CloudConfiguration::Custom(custom))
            }
        };
        let arm_endpoint_str = arm_endpoint.trim_end_matches('/').to_string();
        let arm_endpoint = https_url(&key("cloud").field("arm_endpoint"), &arm_endpoint_str)?;
        let scope = format!("{arm_endpoint_str}/.default");

        let ca = match &cfg.ca_bundle {
            Some(p) => Some((
                p.display().to_string(),
                crate::httpclient::read_ca_bundle(p)
                    .map_err(|e| key("ca_bundle").err(e.to_string()))?,
            )),
            None => None,
        };
        let http = crate::httpclient::build_client(
            ca.as_ref().map(|(o, p)| (o.as_str(), p.as_str())),
            policy.timeout.min(Duration::from_secs(10)),
        )
        .map_err(|e| key("ca_bundle").err(e.to_string()))?;

        // Token requests get twice the per-call timeout (discovery and token round trips).
        let first = make_credential(pool_name, &cfg.credential, &http, &cloud)?;
        let (pool, cred, client) = (pool_name.to_string(), cfg.credential.clone(), http.clone());
        let token = CredentialToken::new(
            scope.clone(),
            policy.timeout.saturating_mul(2),
            first,
            Box::new(move || {
                make_credential(&pool, &cred, &client, &cloud).map_err(|e| e.to_string())
            }),
        );

        let mut upstream = Upstream::new("ARM", http, policy, Some(Arc::new(token)));
        let pacing = pacer.arm_defaults().with(&cfg.pacing);
        if pacing.enabled {
            let bucket_key = format!(
                "{}|{}|{}",
                arm_endpoint.as_str().to_ascii_lowercase(),
                cfg.subscription_id.to_ascii_lowercase(),
                cfg.credential.principal().to_ascii_lowercase()
            );
            let buckets = pacer.arm(&bucket_key, &pacing).map_err(|have| {
                key("pacing").err(format!(
                    "another pool with the same subscription and credential shares its ARM buckets and paces them differently (reads {}/{}, writes {}/{}, deletes {}/{}); give both pools the same pacing",
                    have.reads.size,
                    have.reads.refill_per_sec,
                    have.writes.size,
                    have.writes.refill_per_sec,
                    have.deletes.size,
                    have.deletes.refill_per_sec
                ))
            })?;
            upstream = upstream.with_buckets(buckets);
        }
        Ok(Self {
            pool_name: pool_name.to_string(),
            subscription: cfg.subscription_id.clone(),
            resource_group: cfg.resource_group.clone(),
            host_pool: cfg.host_pool.clone(),
            api_version: cfg.api_version.clone(),
            arm_endpoint,
            scope,
            upstream,
        })
    }
}

/// Builds the configured credential (secrets are read here, so a rebuild picks up a rotated
/// secret file). Token requests use `http` (and so the private CA bundle).
fn make_credential(
    pool_name: &str,
    cred: &AvdCredentialConfig,
    http: &reqwest::Client,
    cloud: &CloudConfiguration,
) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let key = |k: &str| Key::pool(pool_name).field(k);
    let client_options = || ClientOptions {
        transport: Some(crate::httpclient::TracedTransport::transport(http)),
        cloud: Some(Arc::new(cloud.clone())),
        ..Default::default()
    };
    let ckey = |k: &str| key("credential").field(k);
    let credential: Arc<dyn TokenCredential> = match cred {
        AvdCredentialConfig::ClientSecret {
            tenant_id,
            client_id,
            secret_env,
            secret_file,
        } => {
            let secret = match (secret_env, secret_file) {
                (Some(var), None) => std::env::var(var).map_err(|_| {
                    ckey("secret_env").err(format!("environment variable {var} is not set"))
                })?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| {
                        ckey("secret_file").err(format!("cannot read {}: {e}", path.display()))
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                _ => {
                    return Err(
                        key("credential").err("set exactly one of secret_env or secret_file")
                    );
                }
            };
            if secret.is_empty() {
                let k = if secret_env.is_some() {
                    ckey("secret_env")
                } else {
                    ckey("secret_file")
                };
                return Err(k.err("the client secret is empty"));
            }
            ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret),
                Some(ClientSecretCredentialOptions {
                    client_options: client_options(),
                }),
            )
            .map_err(|e| key("credential").err(e.to_string()))?
        }
        AvdCredentialConfig::ManagedIdentity { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: client_options(),
            }))
            .map_err(|e| key("credential").err(e.to_string()))?
        }
        AvdCredentialConfig::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => {
            if let Some(p) = token_file
                && !p.exists()
            {
                return Err(ckey("token_file").err(format!("{} does not exist", p.display())));
            }
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: client_options(),
                },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant_id.clone()),
                token_file_path: token_file.clone(),
            }))
            .map_err(|e| key("credential").err(e.to_string()))?
        }
        AvdCredentialConfig::AzureCli => Arc::new(CachedCredential {
            inner: AzureCliCredential::new(None)
                .map_err(|e| key("credential").err(e.to_string()))?,
            cache: tokio::sync::Mutex::new(None),
        }),
    };
    Ok(credential)
}

/// Token cache in front of credentials that do not cache themselves (the Azure CLI
/// credential runs `az` on every call). Refreshes five minutes before expiry.
#[derive(Debug)]
struct CachedCredential {
    inner: Arc<dyn TokenCredential>,
    cache: tokio::sync::Mutex<Option<azure_core::credentials::AccessToken>>,
}

#[async_trait]
impl TokenCredential for CachedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let mut cached = self.cache.lock().await;
        if let Some(t) = cached.as_ref()
            && t.expires_on > OffsetDateTime::now_utc() + time::Duration::minutes(5)
        {
            return Ok(t.clone());
        }
        let t = self.inner.get_token(scopes, options).await?;
        *cached = Some(t.clone());
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------
// Wire shapes (every field optional: enums are open and the service adds fields freely).

#[derive(Debug, Deserialize)]
struct ArmList {
    #[serde(default)]
    value: Vec<Value>,
    #[serde(rename = "nextLink", default)]
    next_link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UserSessionProps {
    user_principal_name: Option<String>,
    application_type: Option<String>,
    session_state: Option<String>,
    active_directory_user_name: Option<String>,
    create_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArmResource<P> {
    id: Option<String>,
    name: Option<String>,
    properties: Option<P>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SessionHostProps {
    status: Option<String>,
    sessions: Option<u32>,
    allow_new_session: Option<bool>,
    last_heart_beat: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArmErrorBody {
    error: Option<ArmErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ArmErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

fn parse_time(s: Option<&str>) -> Option<OffsetDateTime> {
    let s = s?;
    OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339))
        .ok()
}

/// The segment following `key` (case-insensitive) in an ARM id.
fn id_segment_after<'a>(id: &'a str, key: &str) -> Option<&'a str> {
    let mut it = id.split('/');
    while let Some(s) = it.next() {
        if s.eq_ignore_ascii_case(key) {
            return it.next().filter(|s| !s.is_empty());
        }
    }
    None
}

fn last_segment(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().unwrap_or(s)
}

/// Maps one UserSession resource. `host_hint` is the host the list was asked for.
/// Fuzzing entry (see `crate::fuzzing`): everything the adapter does with an ARM answer body —
/// a list page, a single resource mapped as session and as host, an error body.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_arm_body(body: &[u8]) {
    if let Ok(list) = serde_json::from_slice::<ArmList>(body) {
        for v in list.value {
            let _ = map_session("pool", v.clone(), Some("host"));
            let _ = map_session("pool", v.clone(), None);
            let _ = map_host("pool", v);
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let _ = map_session("pool", v.clone(), None);
        let _ = map_host("pool", v);
    }
    for status in [400u16, 404, 409, 429, 500, 503] {
        let s = reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
        let _ = error_parts(s, body);
    }
}

fn map_session(pool: &str, v: Value, host_hint: Option<&str>) -> Option<Session> {
    let r: ArmResource<UserSessionProps> = serde_json::from_value(v).ok()?;
    let id_str = r.id.as_deref().unwrap_or_default();
    let name = r.name.as_deref().unwrap_or_default();
    let sid_src = if name.is_empty() { id_str } else { name };
    let id = SessionId::parse(last_segment(sid_src))
        .or_else(|_| SessionId::parse(last_segment(id_str)))
        .ok()?;
    let host = id_segment_after(id_str, "sessionhosts")
        .map(str::to_string)
        .or_else(|| {
            let parts: Vec<&str> = name.split('/').collect();
            (parts.len() == 3).then(|| parts[1].to_string())
        })
        .or_else(|| host_hint.map(str::to_string))?;
    let p = r.properties.unwrap_or_default();
    let raw_state = p.session_state.unwrap_or_else(|| "Unknown".into());
    Some(Session {
        pool: pool.to_string(),
        host,
        id,
        user: p.user_principal_name.filter(|s| !s.is_empty()),
        ad_user: p.active_directory_user_name.filter(|s| !s.is_empty()),
        state: SessionState::from_raw(&raw_state),
        raw_state,
        application_type: p.application_type,
        created_at: parse_time(p.create_time.as_deref()),
        admin: None,
        upn: None,
    })
}

fn normalise_host_status(raw: &str) -> String {
    match raw.to_ascii_lowercase().as_str() {
        "available" => "available".into(),
        "unavailable" | "shutdown" => "unavailable".into(),
        "noheartbeat" | "disconnected" => "unreachable".into(),
        other => other.to_string(),
    }
}

fn map_host(pool: &str, v: Value) -> Option<SessionHost> {
    let r: ArmResource<SessionHostProps> = serde_json::from_value(v).ok()?;
    let name = r
        .name
        .as_deref()
        .map(last_segment)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| {
            r.id.as_deref()
                .and_then(|i| id_segment_after(i, "sessionhosts"))
                .map(str::to_string)
        })?;
    let p = r.properties.unwrap_or_default();
    let raw_status = p.status.unwrap_or_else(|| "Unknown".into());
    Some(SessionHost {
        pool: pool.to_string(),
        name,
        status: normalise_host_status(&raw_status),
        raw_status,
        session_count: p.sessions.unwrap_or(0),
        drain: !p.allow_new_session.unwrap_or(true),
        last_heartbeat: parse_time(p.last_heart_beat.as_deref()),
    })
}

/// OData string literal: single quotes doubled.
pub fn odata_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Builds the pool-wide `$filter` for a [`SessionFilter`].
pub fn session_filter_expr(f: &SessionFilter) -> Option<String> {
    let mut terms = Vec::new();
    // Only a UPN can be pushed upstream; a DOMAIN\user is matched locally after listing.
    if let Some(u) = f
        .user
        .as_deref()
        .filter(|u| u.contains('@') && !u.contains('\\') && !u.trim().is_empty())
    {
        terms.push(format!("userPrincipalName eq {}", odata_quote(u.trim())));
    }
    if let Some(s) = f.state {
        let v = match s {
            StateFilter::Active => "Active",
            StateFilter::Disconnected => "Disconnected",
        };
        terms.push(format!("sessionState eq {}", odata_quote(v)));
    }
    (!terms.is_empty()).then(|| terms.join(" and "))
}

// ---------------------------------------------------------------------------------------
// Calls.

/// What a 404 means, by the resource addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Pool,
    Host,
    Session,
}

fn error_parts(status: reqwest::StatusCode, body: &[u8]) -> (String, String) {
    let parsed: ArmErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let (code, message) = parsed
        .error
        .map(|e| (e.code, e.message))
        .unwrap_or((None, None));
    let code = code.unwrap_or_else(|| status.as_u16().to_string());
    let message = message.unwrap_or_else(|| {
        let t = String::from_utf8_lossy(body);
        crate::domain::truncate_for_display(t.trim(), 200)
    });
    (code, message)
}

fn map_error(status: reqwest::StatusCode, body: &[u8], target: Target) -> ProviderError {
    let (code, message) = error_parts(status, body);
    let lc = message.to_ascii_lowercase();
    match status.as_u16() {
        401 => ProviderError::UpstreamAuth(format!("{code}: {message}")),
        403 => ProviderError::UpstreamForbidden(format!("{code}: {message}")),
        404 => {
            let code_lc = code.to_ascii_lowercase();
            if matches!(
                code_lc.as_str(),
                "subscriptionnotfound"
                    | "resourcegroupnotfound"
                    | "parentresourcenotfound"
                    | "hostpoolnotfound"
            ) {
                ProviderError::PoolNotFound
            } else if lc.contains("user session") || lc.contains("usersession") {
                if target == Target::Session {
                    ProviderError::SessionNotFound
                } else {
                    ProviderError::Upstream {
                        status: Some(404),
                        code,
                        message,
                    }
                }
            } else if lc.contains("sessionhosts/")
                || lc.contains("session host")
                || lc.contains("sessionhost")
            {
                ProviderError::HostNotFound
            } else if code_lc == "resourcenotfound" {
                if target == Target::Pool || lc.contains("hostpools/") {
                    ProviderError::PoolNotFound
                } else {
                    ProviderError::HostNotFound
                }
            } else if target == Target::Session {
                ProviderError::SessionNotFound
            } else {
                ProviderError::Upstream {
                    status: Some(404),
                    code,
                    message,
                }
            }
        }
        s => ProviderError::Upstream {
            status: Some(s),
            code,
            message,
        },
    }
}

/// Judges an ARM reply: 2xx is the answer; 500, 502, 503 and 504 may pass.
fn classify(reply: Reply, target: Target) -> Verdict<Reply, ProviderError> {
    if reply.status.is_success() {
        return Verdict::Done(reply);
    }
    let e = map_error(reply.status, &reply.body, target);
    if matches!(reply.status.as_u16(), 500 | 502 | 503 | 504) {
        Verdict::Transient(e)
    } else {
        Verdict::Fail(e)
    }
}

impl AvdProvider {
    fn url(&self, tail: &[&str]) -> Result<url::Url, ProviderError> {
        let mut u = self.arm_endpoint.clone();
        {
            let mut segs = u.path_segments_mut().map_err(|_| ProviderError::Upstream {
                status: None,
                code: "BadEndpoint".into(),
                message: "ARM endpoint cannot be a base URL".into(),
            })?;
            segs.pop_if_empty().extend([
                "subscriptions",
                &self.subscription,
                "resourceGroups",
                &self.resource_group,
                "providers",
                "Microsoft.DesktopVirtualization",
                "hostPools",
                &self.host_pool,
            ]);
            segs.extend(tail);
        }
        Ok(u)
    }

    /// `u` with the query `api-version=...&extra...`.
    fn with_query(&self, mut u: url::Url, extra: &[(&str, &str)]) -> url::Url {
        let mut pairs = vec![("api-version", self.api_version.as_str())];
        pairs.extend_from_slice(extra);
        u.set_query(Some(&upstream::query(&pairs)));
        u
    }

    /// One logical call; the reply is a 2xx, anything else the error mapped from the ARM
    /// error body (404s by `target`).
    async fn call(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Option<&Value>,
        repeat: Repeat,
        target: Target,
    ) -> Result<Reply, ProviderError> {
        self.call_tracked(method, url, body, repeat, target)
            .await
            .result
    }

    /// [`Self::call`], also telling whether an earlier attempt may have been carried out.
    async fn call_tracked(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Option<&Value>,
        repeat: Repeat,
        target: Target,
    ) -> upstream::Called<Reply, ProviderError> {
        let build = |http: &reqwest::Client| {
            let req = http
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .header("x-ms-client-request-id", uuid::Uuid::new_v4().to_string());
            match body {
                Some(b) => req.json(b),
                None if method == reqwest::Method::POST => {
                    req.header(reqwest::header::CONTENT_LENGTH, "0")
                }
                None => req,
            }
        };
        self.upstream
            .call_tracked(repeat, build, |r| classify(r, target))
            .await
    }

    /// GETs a collection, following `nextLink` (same origin only; `api-version` is added to
    /// a link that lacks it).
    async fn list_all(&self, first: url::Url, target: Target) -> Result<Vec<Value>, ProviderError> {
        upstream::follow_pages(first, |u| async move {
            let u = self.with_api_version(u);
            let reply = self
                .call(reqwest::Method::GET, u, None, Repeat::Safe, target)
                .await?;
            let list: ArmList =
                serde_json::from_slice(&reply.body).map_err(|e| ProviderError::Upstream {
                    status: Some(reply.status.as_u16()),
                    code: "InvalidResponse".into(),
                    message: format!("list response is not an ARM list: {e}"),
                })?;
            Ok(Page {
                items: list.value,
                next: list.next_link,
            })
        })
        .await
    }

    fn with_api_version(&self, u: url::Url) -> url::Url {
        if u.query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        {
            return u;
        }
        let mut u = u;
        let v = upstream::query(&[("api-version", self.api_version.as_str())]);
        let q = match u.query() {
            Some(q) if !q.is_empty() => format!("{q}&{v}"),
            _ => v,
        };
        u.set_query(Some(&q));
        u
    }

    fn session_url(
        &self,
        host: &HostName,
        id: SessionId,
        action: Option<&str>,
    ) -> Result<url::Url, ProviderError> {
        let id_s = id.to_string();
        let mut tail = vec!["sessionHosts", host.as_str(), "userSessions", id_s.as_str()];
        if let Some(a) = action {
            tail.push(a);
        }
        Ok(self.with_query(self.url(&tail)?, &[]))
    }
}

#[async_trait]
impl SessionProvider for AvdProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Avd
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            actions: vec![
                ActionKind::Logoff,
                ActionKind::Disconnect,
                ActionKind::Message,
            ],
            force_logoff: true,
            classic: false,
            service: "Azure Virtual Desktop (ARM)".into(),
        }
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, avd.host_pool = %self.host_pool))]
    async fn list_hosts(&self) -> Result<Vec<SessionHost>, ProviderError> {
        let u = self.with_query(self.url(&["sessionHosts"])?, &[]);
        let items = self.list_all(u, Target::Pool).await?;
        Ok(items
            .into_iter()
            .filter_map(|v| {
                let h = map_host(&self.pool_name, v);
                if h.is_none() {
                    tracing::warn!("skipping a session host without a usable name");
                }
                h
            })
            .collect())
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, avd.host_pool = %self.host_pool))]
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<PoolSessions, ProviderError> {
        let base = self.url(&["userSessions"])?;
        let listed = match session_filter_expr(filter) {
            Some(f) => {
                let u = self.with_query(base.clone(), &[("$filter", f.as_str())]);
                match self.list_all(u, Target::Pool).await {
                    // The state term is the least documented part of the filter: if the
                    // service rejects the expression, ask again with the UPN term only
                    // (or none) and filter here.
                    Err(ProviderError::Upstream {
                        status: Some(400),
                        code,
                        ..
                    }) if filter.state.is_some() => {
                        tracing::warn!(avd.code = %code, "ARM rejected the $filter; retrying with the user term only");
                        let user_only = SessionFilter {
                            user: filter.user.clone(),
                            state: None,
                        };
                        let user_expr = session_filter_expr(&user_only);
                        let extra: Vec<(&str, &str)> = user_expr
                            .as_deref()
                            .map(|f| ("$filter", f))
                            .into_iter()
                            .collect();
                        self.list_all(self.with_query(base, &extra), Target::Pool)
                            .await
                    }
                    other => other,
                }
            }
            None => {
                self.list_all(self.with_query(base, &[]), Target::Pool)
                    .await
            }
        };
        let sessions = listed?
            .into_iter()
            .filter_map(|v| map_session(&self.pool_name, v, None))
            .filter(|s| {
                filter.user.as_deref().is_none_or(|u| s.user_matches(u))
                    && filter.state.is_none_or(|f| f.matches(s.state))
            })
            .collect();
        Ok(PoolSessions {
            sessions,
            unreachable_hosts: Vec::new(),
        })
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, host = %host))]
    async fn list_host_sessions(&self, host: &HostName) -> Result<Vec<Session>, ProviderError> {
        let u = self.with_query(
            self.url(&["sessionHosts", host.as_str(), "userSessions"])?,
            &[],
        );
        let items = self.list_all(u, Target::Host).await?;
        Ok(items
            .into_iter()
            .filter_map(|v| map_session(&self.pool_name, v, Some(host.as_str())))
            .collect())
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, host = %host, session = %id))]
    async fn get_session(&self, host: &HostName, id: SessionId) -> Result<Session, ProviderError> {
        let u = self.session_url(host, id, None)?;
        let reply = self
            .call(reqwest::Method::GET, u, None, Repeat::Safe, Target::Session)
            .await?;
        let v: Value =
            serde_json::from_slice(&reply.body).map_err(|e| ProviderError::Upstream {
                status: Some(reply.status.as_u16()),
                code: "InvalidResponse".into(),
                message: format!("user session is not JSON: {e}"),
            })?;
        map_session(&self.pool_name, v, Some(host.as_str())).ok_or_else(|| {
            ProviderError::Upstream {
                status: Some(reply.status.as_u16()),
                code: "InvalidResponse".into(),
                message: "user session without a usable id".into(),
            }
        })
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, host = %host, session = %id, force))]
    async fn logoff(
        &self,
        host: &HostName,
        id: SessionId,
        force: bool,
    ) -> Result<ActionEffect, ProviderError> {
        let mut u = self.session_url(host, id, None)?;
        if force {
            u = self.with_query(u, &[("force", "true")]);
        }
        let called = self
            .call_tracked(
                reqwest::Method::DELETE,
                u,
                None,
                Repeat::Safe,
                Target::Session,
            )
            .await;
        let gone = || match &called.earlier_attempt_may_have_acted {
            // Our first DELETE may have removed it: we did it, as far as anyone can tell.
            Some(why) => {
                tracing::info!(earlier_attempt = %why, "session gone after a retried logoff");
                ActionEffect::DoneAfterRetry
            }
            None => ActionEffect::AlreadyGone,
        };
        match &called.result {
            // 200: removed. 204 (spec) or 404 "User session ID not found" (real service):
            // it did not exist (any more).
            Ok(reply) if reply.status == reqwest::StatusCode::NO_CONTENT => Ok(gone()),
            Ok(_) => Ok(ActionEffect::Done),
            Err(ProviderError::SessionNotFound) => Ok(gone()),
            Err(e) => Err(e.clone()),
        }
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, host = %host, session = %id))]
    async fn disconnect(
        &self,
        host: &HostName,
        id: SessionId,
    ) -> Result<ActionEffect, ProviderError> {
        let u = self.session_url(host, id, Some("disconnect"))?;
        let called = self
            .call_tracked(
                reqwest::Method::POST,
                u,
                None,
                Repeat::Safe,
                Target::Session,
            )
            .await;
        match (called.result, called.earlier_attempt_may_have_acted) {
            (Ok(_), _) => Ok(ActionEffect::Done),
            // The session vanished between our first, unanswered attempt and its repeat.
            (Err(ProviderError::SessionNotFound), Some(why)) => {
                tracing::info!(earlier_attempt = %why, "session gone after a retried disconnect");
                Ok(ActionEffect::DoneAfterRetry)
            }
            (Err(e), _) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(pool = %self.pool_name, host = %host, session = %id))]
    async fn send_message(
        &self,
        host: &HostName,
        id: SessionId,
        title: &str,
        body: &str,
    ) -> Result<(), ProviderError> {
        let u = self.session_url(host, id, Some("sendMessage"))?;
        let payload = serde_json::json!({"messageTitle": title, "messageBody": body});
        self.call(
            reqwest::Method::POST,
            u,
            Some(&payload),
            Repeat::Once,
            Target::Session,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_real_and_spec_session_forms() {
        let real = json!({
            "id": "/subscriptions/s/resourcegroups/rg/providers/microsoft.desktopvirtualization/hostpools/hp1/sessionhosts/sh1.contoso.com/usersessions/6",
            "name": "hp1/sh1.contoso.com/6",
            "type": "microsoft.desktopvirtualization/hostpools/sessionhosts/usersessions",
            "properties": {"userPrincipalName": "a@contoso.com", "sessionState": "UserProfileDiskMounted",
                           "applicationType": "Desktop", "createTime": "2026-01-05T08:01:00Z"}
        });
        let s = map_session("p", real, None).unwrap();
        assert_eq!(s.id, SessionId(6));
        assert_eq!(s.host, "sh1.contoso.com");
        assert_eq!(s.state, SessionState::Unknown);
        assert_eq!(s.raw_state, "UserProfileDiskMounted");
        assert!(s.created_at.is_some());

        let spec = json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DesktopVirtualization/hostPools/hp1/sessionHosts/sh2.contoso.com/userSessions/1",
            "name": "1",
            "properties": {"userPrincipalName": "b@contoso.com", "sessionState": "Active"}
        });
        let s = map_session("p", spec, None).unwrap();
        assert_eq!(
            (s.id, s.host.as_str(), s.state),
            (SessionId(1), "sh2.contoso.com", SessionState::Active)
        );
        assert!(map_session("p", json!({"name": "x"}), Some("h")).is_none());
    }

    #[test]
    fn filter_quotes_are_doubled() {
        let f = SessionFilter {
            user: Some("o'brien@contoso.com".into()),
            state: Some(StateFilter::Active),
        };
        assert_eq!(
            session_filter_expr(&f).unwrap(),
            "userPrincipalName eq 'o''brien@contoso.com' and sessionState eq 'Active'"
        );
        assert_eq!(session_filter_expr(&SessionFilter::default()), None);
        let f = SessionFilter {
            user: Some("CONTOSO\\o'brien".into()),
            state: None,
        };
        assert_eq!(session_filter_expr(&f), None);
    }

    #[test]
    fn errors_map_to_typed_kinds() {
        let b = |c: &str, m: &str| {
            json!({"error": {"code": c, "message": m}})
                .to_string()
                .into_bytes()
        };
        let st = reqwest::StatusCode::from_u16;
        assert!(matches!(
            map_error(
                st(404).unwrap(),
                &b("404", "ActivityId: x Error: User session ID not found"),
                Target::Session
            ),
            ProviderError::SessionNotFound
        ));
        assert!(matches!(
            map_error(
                st(404).unwrap(),
                &b(
                    "ResourceNotFound",
                    "The Resource 'Microsoft.DesktopVirtualization/hostPools/hp1/sessionHosts/x' under resource group 'rg' was not found."
                ),
                Target::Session
            ),
            ProviderError::HostNotFound
        ));
        assert!(matches!(
            map_error(
                st(404).unwrap(),
                &b(
                    "ResourceGroupNotFound",
                    "Resource group 'x' could not be found."
                ),
                Target::Host
            ),
            ProviderError::PoolNotFound
        ));
        assert!(matches!(
            map_error(
                st(404).unwrap(),
                &b(
                    "ResourceNotFound",
                    "The Resource 'Microsoft.DesktopVirtualization/hostPools/hpX' under resource group 'rg' was not found."
                ),
                Target::Pool
            ),
            ProviderError::PoolNotFound
        ));
        assert!(matches!(
            map_error(
                st(401).unwrap(),
                &b("InvalidAuthenticationToken", "bad"),
                Target::Pool
            ),
            ProviderError::UpstreamAuth(_)
        ));
        assert!(matches!(
            map_error(
                st(403).unwrap(),
                &b("AuthorizationFailed", "no"),
                Target::Pool
            ),
            ProviderError::UpstreamForbidden(_)
        ));
        match map_error(st(409).unwrap(), b"not json", Target::Pool) {
            ProviderError::Upstream {
                status,
                code,
                message,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (Some(409), "409", "not json")
                );
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn config_parses_and_rejects_unknown_keys() {
        let toml_ok = r#"
            subscription_id = "sub"
            resource_group = "rg"
            host_pool = "hp1"
            cloud = "us-gov"
            [credential]
            kind = "client_secret"
            tenant_id = "t"
            client_id = "c"
            secret_env = "AZ_SECRET"
        "#;
        let c: AvdPoolConfig = toml::from_str(toml_ok).unwrap();
        assert_eq!(c.api_version, DEFAULT_API_VERSION);
        assert_eq!(c.cloud, AvdCloud::Named(NamedCloud::UsGov));
        assert_eq!(c.timeout_secs, 30);
        let custom = r#"
            subscription_id = "sub"
            resource_group = "rg"
            host_pool = "hp1"
            cloud = { arm_endpoint = "https://arm.local", authority_host = "https://login.local" }
            credential = { kind = "managed_identity" }
        "#;
        let c: AvdPoolConfig = toml::from_str(custom).unwrap();
        assert!(matches!(c.cloud, AvdCloud::Custom(_)));
        let bad = toml_ok.replace("secret_env", "secret");
        assert!(toml::from_str::<AvdPoolConfig>(&bad).is_err());
        let bad = format!("{toml_ok}\n");
        let bad = bad.replace(
            "host_pool = \"hp1\"",
            "host_pool = \"hp1\"\nhostpool = \"x\"",
        );
        assert!(toml::from_str::<AvdPoolConfig>(&bad).is_err());
    }

    #[test]
    fn build_errors_name_the_key() {
        let mut c: AvdPoolConfig = toml::from_str(
            r#"
            subscription_id = "sub"
            resource_group = "rg"
            host_pool = "hp1"
            [credential]
            kind = "client_secret"
            tenant_id = "t"
            client_id = "c"
            secret_env = "SESSIONGATE_TEST_SURELY_UNSET_VAR"
        "#,
        )
        .unwrap();
        let e = AvdProvider::new("hp1", &c).unwrap_err().to_string();
        assert_eq!(
            e,
            "pools[hp1].credential.secret_env: environment variable SESSIONGATE_TEST_SURELY_UNSET_VAR is not set"
        );
        c.host_pool = "h/p".into();
        assert!(
            AvdProvider::new("x", &c)
                .unwrap_err()
                .to_string()
                .starts_with("pools[x].host_pool:")
        );
        c.host_pool = "hp1".into();
        c.cloud = AvdCloud::Custom(CustomCloud {
            arm_endpoint: "http://plain".into(),
            authority_host: "https://login".into(),
        });
        assert!(
            AvdProvider::new("x", &c)
                .unwrap_err()
                .to_string()
                .starts_with("pools[x].cloud.arm_endpoint:")
        );
    }

    #[test]
    fn every_credential_kind_builds() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("sa-token");
        std::fs::write(&token_file, "eyJ.fake.jwt").unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        let creds = [
            format!(
                "kind = \"client_secret\"\ntenant_id = \"t1\"\nclient_id = \"c\"\nsecret_file = {:?}",
                secret_file.display().to_string()
            ),
            "kind = \"managed_identity\"".to_string(),
            "kind = \"managed_identity\"\nclient_id = \"c\"".to_string(),
            format!(
                "kind = \"workload_identity\"\ntenant_id = \"t1\"\nclient_id = \"c\"\ntoken_file = {:?}",
                token_file.display().to_string()
            ),
            "kind = \"azure_cli\"".to_string(),
        ];
        for cred in creds {
            let toml_text = format!(
                "subscription_id = \"sub\"\nresource_group = \"rg\"\nhost_pool = \"hp1\"\n[credential]\n{cred}\n"
            );
            let c: AvdPoolConfig = toml::from_str(&toml_text).unwrap();
            let p = AvdProvider::new("hp1", &c).unwrap();
            assert!(!format!("{p:?}").contains("s3cret"));
            assert_eq!(p.scope, "https://management.azure.com/.default");
        }
        let both = format!(
            "subscription_id = \"sub\"\nresource_group = \"rg\"\nhost_pool = \"hp1\"\n[credential]\nkind = \"client_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nsecret_env = \"X\"\nsecret_file = {:?}\n",
            secret_file.display().to_string()
        );
        let c: AvdPoolConfig = toml::from_str(&both).unwrap();
        assert_eq!(
            AvdProvider::new("hp1", &c).unwrap_err().to_string(),
            "pools[hp1].credential: set exactly one of secret_env or secret_file"
        );
    }

    #[test]
    fn embeds_in_a_pools_table() {
        #[derive(Deserialize)]
        #[serde(tag = "provider", rename_all = "kebab-case")]
        enum Backend {
            Avd(AvdPoolConfig),
        }
        #[derive(Deserialize)]
        struct Pool {
            name: String,
            #[serde(flatten)]
            backend: Backend,
        }
        #[derive(Deserialize)]
        struct File {
            pools: Vec<Pool>,
        }
        let text = r#"
            [[pools]]
            name = "hp1"
            provider = "avd"
            subscription_id = "sub"
            resource_group = "rg"
            host_pool = "hp1"
            credential = { kind = "azure_cli" }
        "#;
        let f: File = toml::from_str(text).unwrap();
        let Backend::Avd(c) = &f.pools[0].backend;
        assert_eq!(
            (f.pools[0].name.as_str(), c.host_pool.as_str()),
            ("hp1", "hp1")
        );
        let typo = text.replace("host_pool = \"hp1\"", "host_pool = \"hp1\"\ntimeout = 5");
        assert!(toml::from_str::<File>(&typo).is_err());
    }
}
