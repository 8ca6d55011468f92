//! Typed configuration: embedded defaults < TOML file < environment variables
//! (`SESSIONGATE__SECTION__KEY=value`, array elements by index: `SESSIONGATE__POOLS__0__NAME`).
//! [`Config::validate`] is the one validation: `config check` and `serve` both run it, and
//! every error names the offending key through [`ConfigError::key`] / [`Key`].

use crate::{
    audit::AuditConfig,
    auth::{AuthConfig, ProtectedSessions},
    domain::{PoolName, ProviderKind},
    providers::{
        avd::{self, AvdPoolConfig},
        winrm::{self, OnPremPoolConfig},
        wvd_classic::{self, ClassicPoolConfig},
    },
    service::Pool,
    tls::{ClientAuth, TlsServer},
};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub docs: DocsConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub pacing: PacingConfig,
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// `[webhooks]`: ticketing and generic webhook sources (`POST /webhooks/{source}`).
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhooksConfig,
}

/// `[pacing]`: how calls to the backends are spaced so a large run waits for the backend's
/// budget instead of being refused (`crate::upstream::pace`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacingConfig {
    /// `[pacing.arm]`: ARM's token buckets per (subscription, credential, operation kind);
    /// an AVD pool may override any of it with its own `pacing = {...}`.
    pub arm: crate::upstream::pace::ArmPacing,
}

/// `[fleet]`: bounds of the calls that act on many sessions (bulk, whole host, user
/// everywhere, jobs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Most targets one fleet call may name or resolve to.
    pub max_targets: usize,
    /// Above this many targets a fleet call runs as a job (202) even without `?async=true`.
    pub sync_limit: usize,
    /// Items of fleet calls and jobs run at most this many at once per pool.
    pub pool_concurrency: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            max_targets: 500,
            sync_limit: 100,
            pool_concurrency: 8,
        }
    }
}

impl FleetConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = Key::root("fleet");
        if !(1..=100_000).contains(&self.max_targets) {
            return Err(key.field("max_targets").err("must be 1-100000"));
        }
        if self.sync_limit == 0 {
            return Err(key.field("sync_limit").err("must be at least 1"));
        }
        if !(1..=256).contains(&self.pool_concurrency) {
            return Err(key.field("pool_concurrency").err("must be 1-256"));
        }
        Ok(())
    }
}

/// `[jobs]`: the runner of durable jobs (fleet calls answered 202).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// A runner holds a job for this long and renews the hold every third of it; another
    /// replica (PostgreSQL) takes over a job whose lease expired.
    pub lease_secs: u64,
    /// Items of one job in flight at once (started in submission order).
    pub concurrency: usize,
    /// Jobs one process runs at once.
    pub max_running: usize,
    /// How often an idle runner looks for work (new jobs of this process start at once).
    pub poll_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            lease_secs: 30,
            concurrency: 8,
            max_running: 4,
            poll_ms: 1000,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (on `listen`, or on the API's own address).
    pub enabled: bool,
    /// A separate address for `/metrics` only (the API's address then answers it with 404).
    pub listen: Option<SocketAddr>,
    /// Serve `/metrics` without a credential. Off: the caller needs the `auditor` or `admin`
    /// role (on any pool).
    pub public: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            public: false,
        }
    }
}

impl JobsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = Key::root("jobs");
        if !(1..=3600).contains(&self.lease_secs) {
            return Err(key.field("lease_secs").err("must be 1-3600"));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(key.field("concurrency").err("must be 1-256"));
        }
        if !(1..=64).contains(&self.max_running) {
            return Err(key.field("max_running").err("must be 1-64"));
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err(key.field("poll_ms").err("must be 10-60000"));
        }
        Ok(())
    }
}

/// `[idempotency]`: `Idempotency-Key` on the POST action routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long a key's stored answer is kept (and replayed).
    pub retention_hours: u64,
    /// How long a duplicate waits for the first request with its key before 409
    /// `idempotency_in_progress`.
    pub wait_ms: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            wait_ms: 5000,
        }
    }
}

impl IdempotencyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = Key::root("idempotency");
        if !(1..=24 * 30).contains(&self.retention_hours) {
            return Err(key.field("retention_hours").err("must be 1-720"));
        }
        if self.wait_ms > 60_000 {
            return Err(key.field("wait_ms").err("must be 0-60000"));
        }
        Ok(())
    }
}

/// `[docs]`: the API documentation (`GET /docs`, `GET /openapi.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocsConfig {
    /// Serve `/docs`, its assets and `/openapi.yaml` without a credential (the document holds
    /// no secrets). Off: any valid credential.
    pub public: bool,
}

impl Default for DocsConfig {
    fn default() -> Self {
        Self { public: true }
    }
}

/// `[console]`: the helpdesk console in the browser (`GET /`, `assets/console/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console at `/` (its page and assets need no credential: they hold no data;
    /// every call it makes carries the signed-in user's credential). Off: `/` and its assets
    /// answer 404 `route_not_found`.
    pub enabled: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the SQLite audit log and other state.
    pub data_dir: PathBuf,
    /// Whole-request timeout in seconds (actions already sent upstream still finish and are audited).
    pub request_timeout_secs: u64,
    /// Maximum request body size in bytes.
    pub body_limit_bytes: usize,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
    /// A client must send a request's whole header within this many milliseconds after the
    /// server starts waiting for it; the same bound closes an idle keep-alive connection.
    pub header_read_timeout_ms: u64,
    /// Emit logs as JSON lines.
    pub json_logs: bool,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log_filter: String,
    /// Upper bound for a message title (characters).
    pub message_title_max: usize,
    /// Upper bound for a message body (characters).
    pub message_body_max: usize,
    /// `[server.tls]`: serve HTTPS (and `[metrics] listen` too). Absent: plain HTTP.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            request_timeout_secs: 60,
            body_limit_bytes: 64 * 1024,
            shutdown_grace_secs: 30,
            header_read_timeout_ms: 10_000,
            json_logs: false,
            log_filter: "info".into(),
            message_title_max: 256,
            message_body_max: 4096,
            tls: None,
        }
    }
}

/// One `[[pools]]` entry: sessiongate's name for the pool plus the provider's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolConfig {
    pub name: PoolName,
    #[serde(flatten)]
    pub provider: ProviderConfig,
}

/// Provider-specific settings, chosen by `provider = "..."`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case")]
pub enum ProviderConfig {
    Avd(Box<AvdPoolConfig>),
    WvdClassic(Box<ClassicPoolConfig>),
    Rds(Box<OnPremPoolConfig>),
    Multipoint(Box<OnPremPoolConfig>),
}

impl ProviderConfig {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderConfig::Avd(_) => ProviderKind::Avd,
            ProviderConfig::WvdClassic(_) => ProviderKind::WvdClassic,
            ProviderConfig::Rds(_) => ProviderKind::Rds,
            ProviderConfig::Multipoint(_) => ProviderKind::Multipoint,
        }
    }
}

/// A configuration error that names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// The one way to report a bad setting: the key as the user writes it (`server.listen`,
    /// `auth.api_keys[0].hash`, `pools[avd-prod].host_pool`) and what is wrong with it.
    pub fn key(key: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// A key path being built up while checking nested settings: `Key::root("auth")
/// .field("api_keys").index(0).field("hash")` prints `auth.api_keys[0].hash`. A pool's
/// settings are named by the pool's name: `Key::pool("avd-prod").field("host_pool")` prints
/// `pools[avd-prod].host_pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn root(name: &str) -> Self {
        Self(name.to_string())
    }

    /// `pools[<name>]`.
    pub fn pool(name: &str) -> Self {
        Self(format!("pools[{name}]"))
    }

    /// `self.name`.
    pub fn field(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    /// `self[i]`.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The error for this key.
    pub fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::key(self, message)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const ENV_PREFIX: &str = "SESSIONGATE__";

/// A configuration that passed [`Config::validate`], with what validation built on the way:
/// the providers (credentials read, CA bundles parsed, no connection made) and the compiled
/// protected-session patterns. `serve` starts from this, so it cannot fail for a reason
/// `config check` does not report; only the network (audit database, OIDC discovery, the
/// listening socket) is left.
pub struct ValidatedConfig {
    config: Config,
    pools: Vec<Pool>,
    protected: ProtectedSessions,
    /// `[server.tls]` with its files loaded.
    tls: Option<Arc<TlsServer>>,
    /// `[webhooks]` sources, built (secrets read, mappings checked).
    webhooks: crate::webhooks::Sources,
    /// `[telemetry.otlp]` with its secret headers read.
    otlp: Option<crate::telemetry::otlp::OtlpSettings>,
}

impl std::fmt::Debug for ValidatedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedConfig")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for ValidatedConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// What a validated config is made of, handed to the application at start.
pub(crate) struct ConfigParts {
    pub config: Config,
    pub pools: Vec<Pool>,
    pub protected: ProtectedSessions,
    pub tls: Option<Arc<TlsServer>>,
    pub webhooks: crate::webhooks::Sources,
}

impl ValidatedConfig {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The trace export settings (secret headers read), when `[telemetry.otlp]` is set.
    pub fn otlp(&self) -> Option<&crate::telemetry::otlp::OtlpSettings> {
        self.otlp.as_ref()
    }

    /// Not errors, but worth telling the operator (an expired server certificate).
    pub fn warnings(&self) -> Vec<String> {
        self.tls.as_ref().map(|t| t.warnings()).unwrap_or_default()
    }

    pub(crate) fn into_parts(self) -> ConfigParts {
        ConfigParts {
            config: self.config,
            pools: self.pools,
            protected: self.protected,
            tls: self.tls,
            webhooks: self.webhooks,
        }
    }
}

impl Config {
    /// Loads `path` (TOML) and applies `SESSIONGATE__*` environment overrides. Only the
    /// shape is checked here (types, unknown keys); [`Config::validate`] checks the values.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::key(path.display(), e.to_string()))?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text and applies overrides from `env` (shape only, like [`Config::load`]).
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            ConfigError::key("(file)", format!("not valid TOML: {}", e.message().trim()))
        })?;
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                apply_override(&mut value, rest, &v).map_err(|m| ConfigError::key(&k, m))?;
            }
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::key(
                if path == "." { "(root)".into() } else { path },
                e.into_inner().message().trim().to_string(),
            )
        })
    }

    /// Every check `serve` makes before it touches the network — values, cross-field rules,
    /// and the local resources the config names (secret and certificate files, CA bundles,
    /// the GSS-API library of Kerberos pools) — as `config check` runs it. The first problem
    /// is returned, naming its key.
    pub fn validate(&self) -> Result<ValidatedConfig, ConfigError> {
        self.server.validate()?;
        self.audit.validate()?;
        self.audit.validate_location(&self.server.data_dir)?;
        self.auth.validate()?;
        let tls = match &self.server.tls {
            Some(t) => Some(Arc::new(TlsServer::new(t)?)),
            None => None,
        };
        if !self.auth.client_certs.is_empty()
            && self
                .server
                .tls
                .as_ref()
                .is_none_or(|t| t.client_auth == ClientAuth::None)
        {
            return Err(Key::root("auth").field("client_certs").err(
                "needs [server.tls] with client_auth = \"optional\" or \"required\" and a client_ca_file",
            ));
        }
        self.fleet.validate()?;
        self.jobs.validate()?;
        self.idempotency.validate()?;
        let otlp = self.telemetry.settings()?;
        if let Some(l) = self.metrics.listen
            && l == self.server.listen
        {
            return Err(Key::root("metrics")
                .field("listen")
                .err("must differ from server.listen (leave it out to serve /metrics there)"));
        }
        self.pacing
            .arm
            .check()
            .map_err(|(f, why)| Key::root("pacing").field("arm").field(&f).err(why))?;
        let pacer = crate::upstream::pace::Pacer::new(self.pacing.arm);
        let protected = ProtectedSessions::new(&self.auth.protected, &self.auth.service_accounts)?;
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            if !seen.insert(p.name.as_str().to_ascii_lowercase()) {
                return Err(Key::root("pools")
                    .index(i)
                    .field("name")
                    .err(format!("pool '{}' is configured twice", p.name)));
            }
        }
        let mut pools = Vec::with_capacity(self.pools.len());
        for p in &self.pools {
            let name = p.name.as_str();
            let provider = match &p.provider {
                ProviderConfig::Avd(c) => avd::build_paced(name, c, &pacer),
                ProviderConfig::WvdClassic(c) => wvd_classic::build_paced(name, c, &pacer),
                ProviderConfig::Rds(c) => winrm::build_rds(name, c),
                ProviderConfig::Multipoint(c) => winrm::build_multipoint(name, c),
            }?;
            let upn_domains = match &p.provider {
                ProviderConfig::Rds(c) | ProviderConfig::Multipoint(c) => c
                    .upn_domains
                    .iter()
                    .map(|(s, d)| (s.to_ascii_lowercase(), d.clone()))
                    .collect(),
                _ => Default::default(),
            };
            pools.push(Pool {
                name: p.name.clone(),
                kind: p.provider.kind(),
                provider,
                upn_domains,
            });
        }
        let pool_names: Vec<String> = self.pools.iter().map(|p| p.name.to_string()).collect();
        let webhooks = self.webhooks.build(
            &pool_names,
            self.auth.oidc.is_some(),
            self.server.body_limit_bytes,
        )?;
        Ok(ValidatedConfig {
            config: self.clone(),
            pools,
            protected,
            tls,
            webhooks,
            otlp,
        })
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = Key::root("server");
        if self.data_dir.as_os_str().is_empty() {
            return Err(key.field("data_dir").err("must not be empty"));
        }
        if self.data_dir.exists() && !self.data_dir.is_dir() {
            return Err(key.field("data_dir").err(format!(
                "{} exists and is not a directory",
                self.data_dir.display()
            )));
        }
        if self.body_limit_bytes < 1024 {
            return Err(key.field("body_limit_bytes").err("must be at least 1024"));
        }
        if self.request_timeout_secs == 0 {
            return Err(key.field("request_timeout_secs").err("must be at least 1"));
        }
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(key
                .field("header_read_timeout_ms")
                .err("must be 100-600000 (0.1 s to 10 minutes)"));
        }
        if self.message_title_max == 0 {
            return Err(key.field("message_title_max").err("must be at least 1"));
        }
        if self.message_body_max == 0 {
            return Err(key.field("message_body_max").err("must be at least 1"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter).map_err(|e| {
            key.field("log_filter")
                .err(format!("not a tracing filter: {e}"))
        })?;
        Ok(())
    }
}

/// Sets `a__b__0__c` = raw inside `root`, creating tables as needed. Values are parsed as
/// TOML scalars (`true`, `42`, `"x"`, `[..]`), falling back to a plain string.
fn apply_override(root: &mut toml::Value, path: &str, raw: &str) -> Result<(), String> {
    let segs: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err("empty key segment".into());
    }
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur = root;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        cur = match cur {
            toml::Value::Table(t) => {
                if last {
                    t.insert(seg.clone(), parsed);
                    return Ok(());
                }
                let next_is_index = segs[i + 1].parse::<usize>().is_ok();
                t.entry(seg.clone()).or_insert_with(|| {
                    if next_is_index {
                        toml::Value::Array(Vec::new())
                    } else {
                        toml::Value::Table(toml::Table::new())
                    }
                })
            }
            toml::Value::Array(a) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| format!("'{seg}' must be an array index"))?;
                if idx > a.len() {
                    return Err(format!(
                        "array index {idx} skips elements (length {})",
                        a.len()
                    ));
                }
                if idx == a.len() {
                    a.push(toml::Value::Table(toml::Table::new()));
                }
                if last {
                    a[idx] = parsed;
                    return Ok(());
                }
                &mut a[idx]
            }
            _ => return Err(format!("'{seg}' is below a value that is not a table")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_win_and_parse_types() {
        let c = Config::from_toml_with_env(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            vec![
                (
                    "SESSIONGATE__SERVER__LISTEN".into(),
                    "127.0.0.1:9999".into(),
                ),
                ("SESSIONGATE__SERVER__JSON_LOGS".into(), "true".into()),
                ("OTHER".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert!(c.server.json_logs);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_with_env("[server]\nlisten_addr = \"x\"\n", vec![]).unwrap_err();
        assert_eq!(e.key, "server.listen_addr");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_value_is_named_with_path() {
        let e = Config::from_toml_with_env("[server]\nlisten = \"nope\"\n", vec![]).unwrap_err();
        assert_eq!(e.key, "server.listen");
    }

    #[test]
    fn duplicate_pool_is_refused() {
        let pool = |n: &str| {
            format!(
                "[[pools]]\nname=\"{n}\"\nprovider=\"avd\"\nsubscription_id=\"s\"\nresource_group=\"rg\"\nhost_pool=\"hp1\"\n[pools.credential]\nkind=\"azure_cli\"\n"
            )
        };
        let text = format!("{}{}", pool("a"), pool("A"));
        let c = Config::from_toml_with_env(&text, vec![]).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "pools[1].name", "{e}");
        Config::from_toml_with_env(&pool("a"), vec![])
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn trace_export_is_off_by_default_and_checked_when_set() {
        let c = Config::from_toml_with_env("", vec![]).unwrap();
        assert!(c.validate().unwrap().otlp().is_none());
        // Set by environment alone, like any table.
        let c = Config::from_toml_with_env(
            "",
            vec![(
                "SESSIONGATE__TELEMETRY__OTLP__ENDPOINT".into(),
                "http://collector:4318".into(),
            )],
        )
        .unwrap();
        let v = c.validate().unwrap();
        let o = v.otlp().unwrap();
        assert_eq!(o.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(o.sampling, 1.0);
        assert_eq!(o.service_name, "sessiongate");
        let c = Config::from_toml_with_env(
            "[telemetry.otlp]\nendpoint = \"http://c:4318\"\nsampling = 2.0\n",
            vec![],
        )
        .unwrap();
        assert_eq!(c.validate().unwrap_err().key, "telemetry.otlp.sampling");
        let e =
            Config::from_toml_with_env("[telemetry.otlp]\nendpont = \"x\"\n", vec![]).unwrap_err();
        assert_eq!(e.key, "telemetry.otlp.endpont");
    }

    #[test]
    fn shipped_example_config_parses() {
        // Its validation (which reads the secrets it names) runs in tests/cli.rs.
        let text = include_str!("../config/example.toml");
        let c = Config::from_toml_with_env(text, vec![]).unwrap();
        assert!(c.pools.len() >= 2);
    }

    #[test]
    fn keys_print_as_written() {
        let k = Key::root("auth").field("api_keys").index(2).field("hash");
        assert_eq!(k.to_string(), "auth.api_keys[2].hash");
        let e = Key::pool("avd-prod").field("host_pool").err("bad");
        assert_eq!(e.key, "pools[avd-prod].host_pool");
        assert_eq!(e.to_string(), "pools[avd-prod].host_pool: bad");
    }

    #[test]
    fn jobs_and_idempotency_values_are_checked_naming_the_key() {
        let bad = |toml: &str| {
            Config::from_toml_with_env(toml, vec![])
                .unwrap()
                .validate()
                .unwrap_err()
                .key
        };
        assert_eq!(bad("[jobs]\nlease_secs = 0\n"), "jobs.lease_secs");
        assert_eq!(bad("[jobs]\nconcurrency = 0\n"), "jobs.concurrency");
        assert_eq!(bad("[jobs]\nmax_running = 65\n"), "jobs.max_running");
        assert_eq!(bad("[jobs]\npoll_ms = 1\n"), "jobs.poll_ms");
        assert_eq!(
            bad("[idempotency]\nretention_hours = 0\n"),
            "idempotency.retention_hours"
        );
        assert_eq!(
            bad("[idempotency]\nwait_ms = 60001\n"),
            "idempotency.wait_ms"
        );
        let c = Config::from_toml_with_env("[jobs]\nlease_secs = 5\n", vec![]).unwrap();
        assert_eq!((c.jobs.lease_secs, c.idempotency.retention_hours), (5, 24));
        assert!(Config::from_toml_with_env("[jobs]\nnope = 1\n", vec![]).is_err());
    }

    #[test]
    fn server_values_are_checked_naming_the_key() {
        let bad = |toml: &str| {
            Config::from_toml_with_env(toml, vec![])
                .unwrap()
                .validate()
                .unwrap_err()
                .key
        };
        assert_eq!(
            bad("[server]\nbody_limit_bytes = 10\n"),
            "server.body_limit_bytes"
        );
        assert_eq!(
            bad("[server]\nmessage_body_max = 0\n"),
            "server.message_body_max"
        );
        assert_eq!(
            bad("[server]\nlog_filter = \"x=loud\"\n"),
            "server.log_filter"
        );
        assert_eq!(bad("[audit]\nmax_batch = 0\n"), "audit.max_batch");
    }
}
