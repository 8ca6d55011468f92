//! Configuration of a WVD classic pool (`kind = "wvd-classic"`).

use crate::config::{ConfigError, Key};
use crate::upstream::CallPolicy;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

pub const DEFAULT_BROKER_URL: &str = "https://rdbroker.wvd.microsoft.com";
pub const DEFAULT_TENANT_GROUP: &str = "Default Tenant Group";
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
pub const DEFAULT_RESOURCE: &str = "https://mrs-prod.ame.gbl/mrs-RDInfra-prod";
/// Sent as `x-ms-wvd-client-api-version` unless configured (the PowerShell module sends its
/// own version there).
pub const DEFAULT_CLIENT_API_VERSION: &str = "1.0.0.0";

fn default_broker_url() -> String {
    DEFAULT_BROKER_URL.into()
}
fn default_tenant_group() -> String {
    DEFAULT_TENANT_GROUP.into()
}
fn default_authority_host() -> String {
    DEFAULT_AUTHORITY_HOST.into()
}
fn default_resource() -> String {
    DEFAULT_RESOURCE.into()
}
fn default_client_api_version() -> String {
    DEFAULT_CLIENT_API_VERSION.into()
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_page_size() -> u32 {
    1000
}
fn default_retry_budget_secs() -> u64 {
    30
}
fn default_max_response_bytes() -> u64 {
    crate::upstream::DEFAULT_MAX_RESPONSE_BYTES
}
fn default_max_retries() -> u32 {
    3
}

/// One WVD classic host pool.
///
/// ```toml
/// [[pools]]
/// name = "legacy"
/// provider = "wvd-classic"
/// tenant = "contoso"
/// host_pool = "Contoso Host Pool"
/// # broker_url = "https://rdbroker.wvd.microsoft.com"
/// # tenant_group = "Default Tenant Group"
/// # authority_host = "https://login.microsoftonline.com"
/// # resource = "https://mrs-prod.ame.gbl/mrs-RDInfra-prod"
/// # ca_bundle = "/etc/ssl/private-ca.pem"
/// # timeout_secs = 30
/// # client_api_version = "1.0.0.0"
/// # page_size = 1000
/// # retry_budget_secs = 30           # alias: throttle_budget_secs
/// # max_retries = 3
/// # max_response_bytes = 16777216
/// [pools.credential]
/// kind = "client_secret"
/// tenant_id = "00000000-0000-0000-0000-000000000000"
/// client_id = "11111111-1111-1111-1111-111111111111"
/// secret_env = "SESSIONGATE_CLASSIC_SECRET"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassicPoolConfig {
    #[serde(default = "default_broker_url")]
    pub broker_url: String,
    #[serde(default = "default_tenant_group")]
    pub tenant_group: String,
    /// RDS tenant name (not the AAD tenant id).
    pub tenant: String,
    pub host_pool: String,
    #[serde(default = "default_authority_host")]
    pub authority_host: String,
    /// Token audience; the scope requested is `{resource}/.default`.
    #[serde(default = "default_resource")]
    pub resource: String,
    pub credential: ClassicCredentialConfig,
    /// Extra CA certificates (PEM) trusted for the broker and the authority.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Per-call (per attempt) timeout, sending and reading the whole answer.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_client_api_version")]
    pub client_api_version: String,
    /// `PageSize` asked of the broker for lists.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// A wait (429 `Retry-After` or backoff) must end within this long after the operation
    /// began. Formerly `throttle_budget_secs`, still accepted as an alias.
    #[serde(default = "default_retry_budget_secs", alias = "throttle_budget_secs")]
    pub retry_budget_secs: u64,
    /// Retries of safe (GET) calls after 5xx or connection failures.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Longest broker response body read; a longer one fails with `response_too_large`.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Calls in flight to the broker at most, shared by every pool on the same `broker_url`
    /// (which must then agree on it); more wait for a slot within the retry budget.
    #[serde(default = "default_max_concurrency_per_broker")]
    pub max_concurrency_per_broker: usize,
}

fn default_max_concurrency_per_broker() -> usize {
    16
}

impl ClassicPoolConfig {
    /// A config with defaults for everything optional.
    pub fn new(tenant: &str, host_pool: &str, credential: ClassicCredentialConfig) -> Self {
        Self {
            broker_url: default_broker_url(),
            tenant_group: default_tenant_group(),
            tenant: tenant.into(),
            host_pool: host_pool.into(),
            authority_host: default_authority_host(),
            resource: default_resource(),
            credential,
            ca_bundle: None,
            timeout_secs: default_timeout_secs(),
            client_api_version: default_client_api_version(),
            page_size: default_page_size(),
            retry_budget_secs: default_retry_budget_secs(),
            max_retries: default_max_retries(),
            max_response_bytes: default_max_response_bytes(),
            max_concurrency_per_broker: default_max_concurrency_per_broker(),
        }
    }
}

/// An https origin (optionally with a path), without query or fragment.
pub(super) fn https_url(key: &Key, v: &str) -> Result<Url, ConfigError> {
    let u = Url::parse(v).map_err(|e| key.err(format!("'{v}' is not a URL: {e}")))?;
    if u.scheme() != "https" {
        return Err(key.err(format!("'{v}' must use https")));
    }
    if u.host_str().is_none() || u.query().is_some() || u.fragment().is_some() {
        return Err(key.err(format!(
            "'{v}' must be an https origin (optionally with a path) without query or fragment"
        )));
    }
    Ok(u)
}

impl ClassicPoolConfig {
    /// The checks that need nothing but these settings; `key` is the pool's
    /// (`pools[<name>]`). [`super::ClassicProvider::new`] runs them first.
    pub fn validate(&self, key: &Key) -> Result<(), ConfigError> {
        https_url(&key.field("broker_url"), &self.broker_url)?;
        https_url(&key.field("authority_host"), &self.authority_host)?;
        https_url(&key.field("resource"), &self.resource)?;
        for (k, v) in [
            ("tenant_group", &self.tenant_group),
            ("tenant", &self.tenant),
            ("host_pool", &self.host_pool),
        ] {
            if v.trim().is_empty() {
                return Err(key.field(k).err("must not be empty"));
            }
        }
        self.call_policy(key)?;
        if self.page_size == 0 {
            return Err(key.field("page_size").err("must be at least 1"));
        }
        if !(1..=1024).contains(&self.max_concurrency_per_broker) {
            return Err(key
                .field("max_concurrency_per_broker")
                .err("must be 1-1024"));
        }
        reqwest::header::HeaderValue::from_str(&self.client_api_version).map_err(|_| {
            key.field("client_api_version")
                .err("not a valid header value")
        })?;
        Ok(())
    }

    /// The upstream-call policy from `timeout_secs`, `max_retries`, `retry_budget_secs` and
    /// `max_response_bytes`; a 429 without `Retry-After` waits 1 s.
    pub fn call_policy(&self, key: &Key) -> Result<CallPolicy, ConfigError> {
        CallPolicy::from_knobs(
            self.timeout_secs,
            self.max_retries,
            self.retry_budget_secs,
            self.max_response_bytes,
            Duration::from_secs(1),
        )
        .map_err(|(k, why)| key.field(k).err(why))
    }
}

/// How the adapter obtains broker tokens (chosen explicitly; there is no automatic chain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClassicCredentialConfig {
    /// Service principal with a client secret, read from an environment variable or a file.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        secret_env: Option<String>,
        #[serde(default)]
        secret_file: Option<PathBuf>,
    },
    /// Service principal with a certificate: one PEM file holding the certificate and its RSA key.
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        cert_file: PathBuf,
    },
    /// Azure managed identity (system-assigned, or user-assigned by client id).
    ManagedIdentity {
        #[serde(default)]
        client_id: Option<String>,
    },
    /// The signed-in Azure CLI account (development only).
    AzureCli {
        #[serde(default)]
        tenant_id: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_shape_parses_with_defaults() {
        let c: ClassicPoolConfig = toml::from_str(
            r#"
            tenant = "contoso"
            host_pool = "Contoso Host Pool"
            [credential]
            kind = "client_secret"
            tenant_id = "t"
            client_id = "c"
            secret_env = "X"
            "#,
        )
        .unwrap();
        assert_eq!(c.broker_url, DEFAULT_BROKER_URL);
        assert_eq!(c.tenant_group, "Default Tenant Group");
        assert_eq!(c.resource, DEFAULT_RESOURCE);
        assert_eq!(c.page_size, 1000);
        assert_eq!(c.retry_budget_secs, 30);
        assert_eq!(c.max_response_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn the_old_throttle_budget_name_is_an_alias() {
        let base = r#"
            tenant = "contoso"
            host_pool = "hp"
            credential = { kind = "azure_cli" }
        "#;
        let c: ClassicPoolConfig =
            toml::from_str(&format!("throttle_budget_secs = 7\n{base}")).unwrap();
        assert_eq!(c.retry_budget_secs, 7);
        let c: ClassicPoolConfig =
            toml::from_str(&format!("retry_budget_secs = 8\n{base}")).unwrap();
        assert_eq!(c.retry_budget_secs, 8);
        let both = format!("retry_budget_secs = 8\nthrottle_budget_secs = 7\n{base}");
        assert!(toml::from_str::<ClassicPoolConfig>(&both).is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml::from_str::<ClassicPoolConfig>(
            r#"
            tenant = "contoso"
            host_pool = "hp"
            brokr_url = "x"
            [credential]
            kind = "azure_cli"
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("brokr_url"), "{e}");
        let e = toml::from_str::<ClassicPoolConfig>(
            r#"
            tenant = "contoso"
            host_pool = "hp"
            [credential]
            kind = "managed_identity"
            secret = "x"
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
    }
}
