//! On-premises RD Session Host and MultiPoint over WinRM.
//!
//! Layers: [`transport`] (our WS-Man client behind the [`WinRmTransport`] trait) →
//! [`scripts`] (fixed PowerShell templates, free text only as base64) → [`rds`] /
//! [`multipoint`] (the [`SessionProvider`] adapters). Hosts come from configured inventory
//! only; a host that is not in the inventory is never contacted.

pub mod cbt;
pub mod gssapi;
pub mod multipoint;
pub mod ntlm;
pub mod ntlm_http;
pub mod rds;
pub mod scripts;
pub mod soap;
pub mod transport;
pub mod xml;

pub use multipoint::{BulkLogoffItem, BulkLogoffStatus, MultiPointProvider};
pub use rds::RdsProvider;
pub use transport::{CommandOutput, TransportStats, WinRmError, WinRmTransport, WsManClient};

use crate::config::{ConfigError, Key};
use crate::domain::{HostName, Session, SessionHost, SessionId, SessionState};
use crate::providers::{PoolSessions, ProviderError, SessionProvider, UnreachableHost};
use futures::StreamExt;
use scripts::{ScriptResult, SessionRow};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How we authenticate to WinRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WinRmAuth {
    /// HTTP Basic (local accounts only; WinRM's `Auth/Basic` must be enabled), only over HTTPS.
    Basic,
    /// NTLMv2 (sent under the `Negotiate` scheme), only over HTTPS; domain accounts as
    /// `DOMAIN\\user`. No channel binding (hosts with `CbtHardeningLevel=Strict` refuse it).
    /// The default: Negotiate is enabled on WinRM out of the box, Basic is not.
    #[default]
    Ntlm,
    /// Kerberos (sent under the `Negotiate` scheme, mutual authentication, TLS channel
    /// bindings), only over HTTPS, through the system's MIT GSS-API library
    /// (`libgssapi_krb5.so.2`, loaded at start). The credential's `username` is the
    /// principal (`svc-sessiongate@CONTOSO.COM`); the KDC comes from `krb5.conf`.
    Kerberos,
}

/// Where the password comes from (exactly one of the two).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub username: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// One on-prem host of the inventory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's FQDN: how callers address it and (by default) where we connect.
    pub name: String,
    /// WS-Man endpoint URL; default `https://{name}:5986/wsman`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Name the TLS certificate must carry when it differs from the endpoint host
    /// (requires the endpoint host to be an IP address).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Extra CA bundle (PEM) for this host, replacing the pool's.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Kerberos only: the host's service principal, `HTTP/<fqdn>` or `HTTP/<fqdn>@REALM`;
    /// default `HTTP/<name>` (realm from `krb5.conf`'s `domain_realm`).
    #[serde(default)]
    pub spn: Option<String>,
}

fn d_conc() -> usize {
    2
}
fn d_fanout() -> usize {
    64
}
fn d_op() -> u64 {
    20
}
fn d_connect() -> u64 {
    5
}
fn d_cmd() -> u64 {
    120
}
fn d_idle() -> u64 {
    60
}

/// An on-prem pool (RD Session Host or MultiPoint), TOML:
/// ```toml
/// [pools.rds-east.winrm]
/// auth = "basic"
/// ca_bundle = "/etc/sessiongate/corp-ca.pem"
/// gateway_account = "CONTOSO\\svc-sessiongate"
/// credential = { username = "svc-sessiongate", password_file = "/run/secrets/winrm" }
/// hosts = [ { name = "rdsh-01.contoso.com" }, { name = "rdsh-02.contoso.com", endpoint = "https://10.0.0.12:5986/wsman", tls_server_name = "rdsh-02.contoso.com" } ]
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPremPoolConfig {
    pub hosts: Vec<HostConfig>,
    pub credential: CredentialConfig,
    #[serde(default)]
    pub auth: WinRmAuth,
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default)]
    pub tls_server_name: Option<String>,
    #[serde(default = "d_conc")]
    pub max_concurrency_per_host: usize,
    #[serde(default = "d_fanout")]
    pub fanout_concurrency: usize,
    /// WS-Man OperationTimeout of each request (a Receive waits this long for output).
    #[serde(default = "d_op")]
    pub operation_timeout_secs: u64,
    #[serde(default = "d_connect")]
    pub connect_timeout_secs: u64,
    /// Upper bound for one remote command, Receive polling included.
    #[serde(default = "d_cmd")]
    pub command_timeout_secs: u64,
    /// Warm shells unused this long are deleted instead of reused.
    #[serde(default = "d_idle")]
    pub shell_idle_secs: u64,
    /// The account the gateway signs in as; its sessions are never logged off or disconnected.
    #[serde(default)]
    pub gateway_account: Option<String>,
    /// How a UPN maps to this pool's down-level names for user lookups (`GET /users/{upn}/sessions`):
    /// UPN suffix → NetBIOS domain, e.g. `{ "contoso.com" = "CONTOSO" }` makes
    /// `alice@contoso.com` match sessions of `CONTOSO\alice`.
    #[serde(default)]
    pub upn_domains: std::collections::BTreeMap<String, String>,
}

impl OnPremPoolConfig {
    /// A pool with every optional key at its default.
    pub fn new(hosts: Vec<HostConfig>, credential: CredentialConfig) -> Self {
        Self {
            hosts,
            credential,
            auth: WinRmAuth::default(),
            ca_bundle: None,
            tls_server_name: None,
            max_concurrency_per_host: d_conc(),
            fanout_concurrency: d_fanout(),
            operation_timeout_secs: d_op(),
            connect_timeout_secs: d_connect(),
            command_timeout_secs: d_cmd(),
            shell_idle_secs: d_idle(),
            gateway_account: None,
            upn_domains: Default::default(),
        }
    }
}

impl HostConfig {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            endpoint: None,
            tls_server_name: None,
            ca_bundle: None,
            spn: None,
        }
    }
}

/// One inventory host with its transport.
#[derive(Clone)]
pub(crate) struct HostEntry {
    pub name: HostName,
    pub transport: Arc<dyn WinRmTransport>,
}

/// What both adapters share: inventory, fan-out bound, protected account.
#[derive(Clone)]
pub(crate) struct Core {
    pub pool: String,
    pub hosts: Vec<HostEntry>,
    pub fanout: usize,
    pub gateway_account: String,
}

fn resolve_password(key: &Key, c: &CredentialConfig) -> Result<SecretString, ConfigError> {
    match (&c.password_env, &c.password_file) {
        (Some(var), None) => std::env::var(var).map(SecretString::from).map_err(|_| {
            key.field("password_env")
                .err(format!("environment variable '{var}' is not set"))
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| SecretString::from(s.trim_end_matches(['\r', '\n']).to_string()))
            .map_err(|e| {
                key.field("password_file")
                    .err(format!("cannot read {}: {e}", path.display()))
            }),
        _ => Err(key.err("set exactly one of password_env or password_file")),
    }
}

fn read_ca(key: &Key, path: &std::path::Path) -> Result<String, ConfigError> {
    crate::httpclient::read_ca_bundle(path).map_err(|e| key.err(e.to_string()))
}

/// The service principal of a Kerberos host: the configured `spn` or `HTTP/<name>`.
fn kerberos_spn(key: &Key, h: &HostConfig) -> Result<String, ConfigError> {
    match &h.spn {
        None => Ok(format!("HTTP/{}", h.name.to_ascii_lowercase())),
        Some(s) => {
            let ok = s.split_once('/').is_some_and(|(svc, rest)| {
                !svc.is_empty()
                    && !rest.is_empty()
                    && !rest.starts_with('@')
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            if ok {
                Ok(s.clone())
            } else {
                Err(key.field("spn").err(format!(
                    "'{s}' is not a service principal like 'HTTP/rdsh-01.contoso.com' or 'HTTP/rdsh-01.contoso.com@CONTOSO.COM'"
                )))
            }
        }
    }
}

impl OnPremPoolConfig {
    /// The checks that need nothing but these settings; `key` is the pool's
    /// (`pools[<name>]`). [`build_core`] runs them first, then the per-host endpoint checks,
    /// and reads the password, CA bundles and (Kerberos) the GSS-API library.
    pub fn validate(&self, key: &Key) -> Result<(), ConfigError> {
        if self.hosts.is_empty() {
            return Err(key.field("hosts").err("at least one host is required"));
        }
        if self.credential.username.trim().is_empty() {
            return Err(key
                .field("credential")
                .field("username")
                .err("must not be empty"));
        }
        for (k, v) in [
            (
                "max_concurrency_per_host",
                self.max_concurrency_per_host as u64,
            ),
            ("fanout_concurrency", self.fanout_concurrency as u64),
            ("operation_timeout_secs", self.operation_timeout_secs),
            ("connect_timeout_secs", self.connect_timeout_secs),
        ] {
            if v == 0 {
                return Err(key.field(k).err("must be at least 1"));
            }
        }
        for (suffix, domain) in &self.upn_domains {
            let k = key.field("upn_domains");
            let label_ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 63
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            };
            if suffix.len() > 253 || !suffix.split('.').all(label_ok) {
                return Err(k.err(format!(
                    "'{suffix}' is not a UPN suffix (a DNS name such as 'contoso.com')"
                )));
            }
            if domain.is_empty()
                || domain.len() > 15
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(k.err(format!(
                    "'{domain}' (for '{suffix}') is not a NetBIOS domain name (1-15 letters, digits, '-', '_', '.')"
                )));
            }
        }
        if self
            .upn_domains
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            != self.upn_domains.len()
        {
            return Err(key
                .field("upn_domains")
                .err("a UPN suffix is listed twice (suffixes are case-insensitive)"));
        }
        if self.auth == WinRmAuth::Kerberos {
            let u = &self.credential.username;
            if u.contains('\\') {
                return Err(key.field("credential").field("username").err(format!(
                    "Kerberos needs a principal such as 'svc-sessiongate@CONTOSO.COM', not '{u}'"
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let hk = key.field("hosts").index(i);
            HostName::parse(&h.name).map_err(|e| hk.field("name").err(e.to_string()))?;
            if h.spn.is_some() && self.auth != WinRmAuth::Kerberos {
                return Err(hk.field("spn").err(format!(
                    "only used with auth = \"kerberos\" (this pool uses {:?})",
                    self.auth
                )));
            }
            if !seen.insert(h.name.to_ascii_lowercase()) {
                return Err(hk
                    .field("name")
                    .err(format!("'{}' is listed twice", h.name)));
            }
        }
        Ok(())
    }
}

/// Validates the configuration and builds one transport per host. No connection is made.
pub(crate) fn build_core(pool: &str, cfg: &OnPremPoolConfig) -> Result<Core, ConfigError> {
    let pk = Key::pool(pool);
    cfg.validate(&pk)?;
    if cfg.auth == WinRmAuth::Kerberos {
        gssapi::available().map_err(|e| pk.field("auth").err(format!("'kerberos': {e}")))?;
    }
    let password = resolve_password(&pk.field("credential"), &cfg.credential)?;
    let kerberos_creds = (cfg.auth == WinRmAuth::Kerberos).then(|| {
        Arc::new(gssapi::CredentialCache::new(
            cfg.credential.username.clone(),
            password.clone(),
        ))
    });
    let connect = Duration::from_secs(cfg.connect_timeout_secs);
    let pool_ca = match &cfg.ca_bundle {
        Some(p) => Some(read_ca(&pk.field("ca_bundle"), p)?),
        None => None,
    };
    let shared = crate::httpclient::build_client(
        pool_ca.as_deref().map(|pem| ("pool ca_bundle", pem)),
        connect,
    )
    .map_err(|e| pk.field("ca_bundle").err(e.to_string()))?;

    // One TLS client config for the NTLM connections of every host without its own CA bundle.
    let pool_ntlm_tls = if matches!(cfg.auth, WinRmAuth::Ntlm | WinRmAuth::Kerberos) {
        Some(
            ntlm_http::tls_config(pool_ca.as_deref())
                .map_err(|e| pk.field("ca_bundle").err(e.to_string()))?,
        )
    } else {
        None
    };
    let mut hosts = Vec::with_capacity(cfg.hosts.len());
    for (i, h) in cfg.hosts.iter().enumerate() {
        let key = pk.field("hosts").index(i);
        let name = HostName::parse(&h.name).map_err(|e| key.field("name").err(e.to_string()))?;
        let mut endpoint = match &h.endpoint {
            Some(u) => url::Url::parse(u).map_err(|e| key.field("endpoint").err(e.to_string()))?,
            None => {
                let u =
                    url::Url::parse(&format!("https://{}:5986/wsman", h.name)).map_err(|e| {
                        key.field("name")
                            .err(format!("cannot form an endpoint URL: {e}"))
                    })?;
                if !u
                    .host_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(&h.name))
                {
                    return Err(key.field("name").err(format!(
                        "'{}' is not a plain DNS name; set {} explicitly",
                        h.name,
                        key.field("endpoint")
                    )));
                }
                u
            }
        };
        let ek = key.field("endpoint");
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(ek.err(format!(
                "must not carry credentials; use {}",
                pk.field("credential")
            )));
        }
        match endpoint.scheme() {
            "https" => {}
            "http" => {
                return Err(ek.err(match cfg.auth {
                    WinRmAuth::Basic => {
                        "Basic authentication over plain http would send the password in clear; use https"
                    }
                    _ => {
                        "plain http needs WinRM message encryption, which this build does not implement; use https"
                    }
                }));
            }
            other => return Err(ek.err(format!("unsupported scheme '{other}'"))),
        }
        let sni = h
            .tls_server_name
            .clone()
            .or_else(|| cfg.tls_server_name.clone());
        let host_ca = match &h.ca_bundle {
            Some(p) => Some(read_ca(&key.field("ca_bundle"), p)?),
            None => None,
        };
        let http = if let Some(pool_tls) = &pool_ntlm_tls {
            let tls = match host_ca.as_deref() {
                Some(ca) => ntlm_http::tls_config(Some(ca))
                    .map_err(|e| key.field("ca_bundle").err(e.to_string()))?,
                None => pool_tls.clone(),
            };
            transport::HttpChannel::Ntlm(Box::new(
                ntlm_http::NtlmHttp::new(ntlm_http::NtlmSettings {
                    endpoint: endpoint.clone(),
                    tls_server_name: sni.clone(),
                    tls,
                    connect_timeout: connect,
                    username: cfg.credential.username.clone(),
                    password: password.clone(),
                    kerberos: match &kerberos_creds {
                        Some(creds) => Some(ntlm_http::KerberosSettings {
                            creds: creds.clone(),
                            spn: kerberos_spn(&key, h)?,
                        }),
                        None => None,
                    },
                })
                .map_err(|e| key.err(e.to_string()))?,
            ))
        } else if sni.is_some() || host_ca.is_some() {
            let ca = host_ca.as_deref().or(pool_ca.as_deref());
            let mut b = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(connect)
                .pool_idle_timeout(Duration::from_secs(60))
                .user_agent(concat!("sessiongate/", env!("CARGO_PKG_VERSION")));
            if let Some(pem) = ca {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| key.field("ca_bundle").err(e.to_string()))?;
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            if let Some(sni) = &sni {
                let ip: std::net::IpAddr = endpoint
                    .host_str()
                    .map(|s| s.trim_start_matches('[').trim_end_matches(']'))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        key.field("tls_server_name").err(
                            "the endpoint host must be an IP address when tls_server_name is set",
                        )
                    })?;
                let port = endpoint.port_or_known_default().unwrap_or(5986);
                endpoint
                    .set_host(Some(sni))
                    .map_err(|e| key.field("tls_server_name").err(e.to_string()))?;
                b = b.resolve(sni, std::net::SocketAddr::new(ip, port));
            }
            transport::HttpChannel::Basic(
                b.build()
                    .map_err(|e| key.err(format!("building HTTP client: {e}")))?,
            )
        } else {
            transport::HttpChannel::Basic(shared.clone())
        };
        let client = WsManClient::new(
            transport::ClientSettings {
                host: h.name.clone(),
                endpoint,
                username: cfg.credential.username.clone(),
                password: password.clone(),
                max_concurrency: cfg.max_concurrency_per_host,
                operation_timeout: Duration::from_secs(cfg.operation_timeout_secs),
                command_timeout: Duration::from_secs(cfg.command_timeout_secs.max(1)),
                shell_idle: Duration::from_secs(cfg.shell_idle_secs),
            },
            http,
        );
        hosts.push(HostEntry {
            name,
            transport: Arc::new(client),
        });
    }
    Ok(Core {
        pool: pool.to_string(),
        hosts,
        fanout: cfg.fanout_concurrency,
        gateway_account: cfg.gateway_account.clone().unwrap_or_default(),
    })
}

/// Builds an RD Session Host pool provider.
pub fn build_rds(
    pool: &str,
    cfg: &OnPremPoolConfig,
) -> Result<Arc<dyn SessionProvider>, ConfigError> {
    Ok(Arc::new(RdsProvider::from_config(pool, cfg)?))
}

/// Builds a MultiPoint pool provider.
pub fn build_multipoint(
    pool: &str,
    cfg: &OnPremPoolConfig,
) -> Result<Arc<dyn SessionProvider>, ConfigError> {
    Ok(Arc::new(MultiPointProvider::from_config(pool, cfg)?))
}

/// Maps a Win32 error reported by a script.
pub(crate) fn win32_error(host: &str, code: u32, message: Option<&str>) -> ProviderError {
    let msg = format!("{host}: {}", message.unwrap_or("").trim());
    match code {
        5 => ProviderError::UpstreamForbidden(msg),
        1168 => ProviderError::SessionNotFound,
        1722 => ProviderError::HostUnreachable(msg),
        c => ProviderError::Upstream {
            status: None,
            code: format!("win32:{c}"),
            message: msg,
        },
    }
}

impl Core {
    pub fn find(&self, host: &HostName) -> Option<&HostEntry> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_case(host.as_str()))
    }

    pub fn entry(&self, host: &HostName) -> Result<&HostEntry, ProviderError> {
        self.find(host).ok_or(ProviderError::HostNotFound)
    }

    pub fn stats(&self) -> TransportStats {
        self.hosts
            .iter()
            .fold(TransportStats::default(), |a, h| a + h.transport.stats())
    }

    pub async fn close(&self) {
        for h in &self.hosts {
            h.transport.close().await;
        }
    }

    /// Runs a script on a host and returns its JSON result (`ok` not yet checked).
    pub async fn run(
        &self,
        entry: &HostEntry,
        script: &scripts::Script,
    ) -> Result<ScriptResult, ProviderError> {
        let host = entry.name.as_str();
        let out = entry
            .transport
            .run_powershell(&script.text)
            .await
            .map_err(|e| e.into_provider(host))?;
        if out.exit_code != 0 {
            return Err(ProviderError::Upstream {
                status: None,
                code: format!("exit_code:{}", out.exit_code),
                message: format!(
                    "{host}: {}",
                    crate::domain::truncate_for_display(clean_stderr(&out.stderr).trim(), 500)
                ),
            });
        }
        scripts::parse_result(&out.stdout).map_err(|m| ProviderError::Upstream {
            status: None,
            code: "bad_script_output".into(),
            message: format!("{host}: {m}"),
        })
    }

    /// Runs a list script and maps its rows.
    pub async fn list_rows(
        &self,
        entry: &HostEntry,
        script: &scripts::Script,
    ) -> Result<Vec<SessionRow>, ProviderError> {
        let r = self.run(entry, script).await?;
        if !r.ok {
            return Err(win32_error(
                entry.name.as_str(),
                r.win32.unwrap_or(0),
                r.message.as_deref(),
            ));
        }
        Ok(r.sessions.unwrap_or_default())
    }

    pub fn to_session(&self, host: &HostName, r: &SessionRow) -> Session {
        let ad_user = if r.user.is_empty() {
            None
        } else if r.domain.is_empty() {
            Some(r.user.clone())
        } else {
            Some(format!("{}\\{}", r.domain, r.user))
        };
        Session {
            pool: self.pool.clone(),
            host: host.as_str().to_string(),
            id: SessionId(r.id),
            user: None,
            ad_user,
            state: SessionState::from_raw(&r.state),
            raw_state: r.state.clone(),
            application_type: None,
            created_at: None,
            admin: r.admin,
            upn: None,
        }
    }

    /// One user session of `host`, found by listing the host with `list`.
    pub async fn find_session(
        &self,
        host: &HostName,
        list: &scripts::Script,
        id: SessionId,
    ) -> Result<Session, ProviderError> {
        let e = self.entry(host)?;
        self.host_sessions(e, list)
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or(ProviderError::SessionNotFound)
    }

    /// User sessions of a host: session 0 and sessions without a user are left out.
    pub async fn host_sessions(
        &self,
        entry: &HostEntry,
        script: &scripts::Script,
    ) -> Result<Vec<Session>, ProviderError> {
        let rows = self.list_rows(entry, script).await?;
        let mut v: Vec<Session> = rows
            .iter()
            .filter(|r| r.id != 0 && !r.user.is_empty())
            .map(|r| self.to_session(&entry.name, r))
            .collect();
        v.sort_by_key(|s| s.id);
        Ok(v)
    }

    /// Lists every host concurrently (bounded); failing hosts are reported, not fatal.
    pub async fn fan_out(&self, script: &scripts::Script) -> PoolSessions {
        let results: Vec<(HostName, Result<Vec<Session>, ProviderError>)> =
            futures::stream::iter(self.hosts.iter().cloned())
                .map(|h: HostEntry| async move {
                    let r = self.host_sessions(&h, script).await;
                    (h.name, r)
                })
                .buffer_unordered(self.fanout)
                .collect()
                .await;
        let mut out = PoolSessions::default();
        for (host, r) in results {
            match r {
                Ok(mut s) => out.sessions.append(&mut s),
                Err(e) => out.unreachable_hosts.push(UnreachableHost {
                    host: host.as_str().to_string(),
                    error: format!("{}: {e}", e.code()),
                }),
            }
        }
        out.sessions
            .sort_by(|a, b| a.host.cmp(&b.host).then(a.id.cmp(&b.id)));
        out.unreachable_hosts.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }

    pub async fn hosts_status(&self, script: &scripts::Script) -> Vec<SessionHost> {
        let mut v: Vec<SessionHost> = futures::stream::iter(self.hosts.iter().cloned())
            .map(|h: HostEntry| async move {
                let r = self.host_sessions(&h, script).await;
                let (status, raw, count, hb) = match r {
                    Ok(s) => (
                        "available".to_string(),
                        "reachable".to_string(),
                        s.len() as u32,
                        Some(time::OffsetDateTime::now_utc()),
                    ),
                    Err(e) => ("unreachable".to_string(), e.code().to_string(), 0, None),
                };
                SessionHost {
                    pool: self.pool.clone(),
                    name: h.name.as_str().to_string(),
                    status,
                    raw_status: raw,
                    session_count: count,
                    drain: false,
                    last_heartbeat: hb,
                }
            })
            .buffer_unordered(self.fanout)
            .collect()
            .await;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Rejects session 0 before anything is sent.
    pub fn check_not_services(&self, id: SessionId) -> Result<(), ProviderError> {
        if id.0 == 0 {
            return Err(ProviderError::Protected(
                "session 0 is the services session".into(),
            ));
        }
        Ok(())
    }

    /// Maps an action's `{ok, win32, protected}` result.
    pub fn action_result(
        &self,
        host: &HostName,
        r: ScriptResult,
        logoff: bool,
    ) -> Result<crate::providers::ActionEffect, ProviderError> {
        if r.ok {
            return Ok(crate::providers::ActionEffect::Done);
        }
        if r.protected == Some(true) {
            return Err(ProviderError::Protected(
                "the session belongs to the gateway account".into(),
            ));
        }
        let code = r.win32.unwrap_or(0);
        if logoff && code == 1168 {
            return Ok(crate::providers::ActionEffect::AlreadyGone);
        }
        Err(win32_error(host.as_str(), code, r.message.as_deref()))
    }
}

/// PowerShell writes errors to stderr as CLIXML when run with `-EncodedCommand`; keep the text.
fn clean_stderr(s: &str) -> String {
    if !s.trim_start().starts_with("#< CLIXML") {
        return s.to_string();
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("<S S=\"Error\">") {
        let after = &rest[i + 13..];
        let end = after.find("</S>").unwrap_or(after.len());
        out.push_str(&after[..end].replace("_x000D_", "").replace("_x000A_", "\n"));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> OnPremPoolConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn upn_domains_are_checked_naming_the_key() {
        let base = r#"hosts = [{ name = "h1.contoso.com" }]
               credential = { username = "u", password_file = "/nonexistent" }
               "#;
        let ok = cfg(&format!(
            "{base}upn_domains = {{ \"contoso.com\" = \"CONTOSO\" }}"
        ));
        ok.validate(&Key::pool("p")).unwrap();
        for bad in [
            r#"{ "contoso com" = "CONTOSO" }"#,
            r#"{ "" = "CONTOSO" }"#,
            r#"{ "contoso.com" = "" }"#,
            r#"{ "contoso.com" = 'CONTOSO\X' }"#,
            r#"{ "contoso.com" = "A-NAME-TOO-LONG-FOR-NETBIOS" }"#,
            r#"{ "contoso.com" = "C", "CONTOSO.com" = "D" }"#,
        ] {
            let c = cfg(&format!("{base}upn_domains = {bad}"));
            let e = c.validate(&Key::pool("p")).err().unwrap();
            assert!(
                e.to_string().starts_with("pools[p].upn_domains"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn config_rejects_http_with_basic_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let c = cfg(&format!(
            r#"hosts = [{{ name = "h1.contoso.com", endpoint = "http://h1.contoso.com:5985/wsman" }}]
               credential = {{ username = "u", password_file = "{}" }}"#,
            pw.display()
        ));
        let e = build_core("p", &c).err().unwrap();
        assert!(e.to_string().contains("pools[p].hosts[0].endpoint"), "{e}");
    }

    #[test]
    fn config_rejects_bad_kerberos_settings_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret").unwrap();
        let c = cfg(&format!(
            r#"hosts = [{{ name = "h1.contoso.com" }}]
               auth = "kerberos"
               credential = {{ username = "CONTOSO\\svc", password_file = "{}" }}"#,
            pw.display()
        ));
        let e = build_core("p", &c).err().unwrap();
        assert!(
            e.to_string().contains("pools[p].credential.username"),
            "{e}"
        );
        assert!(e.to_string().contains("svc-sessiongate@CONTOSO.COM"), "{e}");
        if gssapi::available().is_ok() {
            for bad in ["HTTP", "HTTP/", "/h1", "HTTP/@X", "HTTP/h 1"] {
                let c = cfg(&format!(
                    r#"hosts = [{{ name = "h1.contoso.com", spn = "{bad}" }}]
                       auth = "kerberos"
                       credential = {{ username = "svc@CONTOSO.COM", password_file = "{}" }}"#,
                    pw.display()
                ));
                let e = build_core("p", &c).err().unwrap();
                assert!(
                    e.to_string().contains("pools[p].hosts[0].spn"),
                    "{bad}: {e}"
                );
            }
            let c = cfg(&format!(
                r#"hosts = [{{ name = "h1.contoso.com", spn = "HTTP/h1.contoso.com@CONTOSO.COM" }}, {{ name = "h2.contoso.com" }}]
                   auth = "kerberos"
                   credential = {{ username = "svc@CONTOSO.COM", password_file = "{}" }}"#,
                pw.display()
            ));
            assert!(build_core("p", &c).is_ok());
        }
        assert!(
            toml::from_str::<OnPremPoolConfig>(
                r#"hosts = []
               credential = { username = "u" }
               bogus = 1"#
            )
            .is_err()
        );
        assert!(
            toml::from_str::<OnPremPoolConfig>(
                r#"hosts = []
               auth = "digest"
               credential = { username = "u" }"#
            )
            .is_err()
        );
    }

    #[test]
    fn config_rejects_names_that_are_not_dns_names_and_urls_with_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret").unwrap();
        let mk = |host: &str| {
            cfg(&format!(
                r#"hosts = [{host}]
                   credential = {{ username = "u", password_file = "{}" }}"#,
                pw.display()
            ))
        };
        let e = build_core("p", &mk(r#"{ name = "evil@attacker.example" }"#))
            .err()
            .unwrap();
        assert!(e.to_string().contains("pools[p].hosts[0].name"), "{e}");
        let e = build_core(
            "p",
            &mk(r#"{ name = "h1", endpoint = "https://u:pw@h1:5986/wsman" }"#),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("pools[p].hosts[0].endpoint"), "{e}");
        assert!(build_core("p", &mk(r#"{ name = "h1.contoso.com" }"#)).is_ok());
    }

    #[test]
    fn config_needs_exactly_one_password_source() {
        let c = cfg(r#"hosts = [{ name = "h1" }]
               credential = { username = "u" }"#);
        let e = build_core("p", &c).err().unwrap();
        assert!(e.to_string().contains("pools[p].credential"), "{e}");
    }

    #[test]
    fn clixml_stderr_is_reduced_to_text() {
        let s = "#< CLIXML\r\n<Objs><S S=\"Error\">boom_x000D__x000A_</S></Objs>";
        assert_eq!(clean_stderr(s), "boom\n");
    }
}
