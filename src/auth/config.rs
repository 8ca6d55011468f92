//! The `[auth]` section of the configuration.
//!
//! ```toml
//! [auth]
//! service_accounts = ["svc-*@contoso.com", "CONTOSO\\svc_backup"]
//!
//! [[auth.api_keys]]
//! id = "ticketing"
//! hash = "sha256:..."
//! roles = ["operator"]
//! pools = ["hp-finance"]
//!
//! [auth.oidc]
//! issuer = "https://login.microsoftonline.com/<tenant-id>/v2.0"
//! audience = ["api://sessiongate", "<application-client-id>"]
//!
//! [auth.oidc.role_map]
//! "Operator" = [{ role = "operator", pools = ["*"] }]
//! "0b7c...-group-object-id" = [{ role = "reader", pools = ["hp-finance"] }]
//!
//! [auth.protected]
//! users = ["adm-*@contoso.com", "*\\Administrator"]
//! groups = ["Tier0 Admins"]
//!
//! [auth.rate_limit]
//! actions_per_minute = 60
//! burst = 10
//!
//! [auth.cors]
//! allowed_origins = ["https://portal.contoso.com"]
//! ```

use super::Role;
use super::apikey::{ApiKeyConfig, ApiKeys};
use crate::config::{ConfigError, Key};
use serde::{Deserialize, Deserializer, Serialize};
use std::{collections::BTreeMap, path::PathBuf};

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.api_keys]]`: hashed API keys for automation.
    pub api_keys: Vec<ApiKeyConfig>,
    /// `[[auth.client_certs]]`: verified TLS client certificates mapped to principals
    /// (needs `[server.tls]` with `client_auth` `optional` or `required`).
    pub client_certs: Vec<super::ClientCertConfig>,
    /// `[auth.oidc]`: Entra ID (or any OIDC issuer) bearer tokens. Absent = JWTs are refused.
    pub oidc: Option<OidcConfig>,
    /// `[auth.protected]`: sessions only an admin may act on.
    pub protected: ProtectedConfig,
    /// `[auth.rate_limit]`: per-principal limit on action endpoints.
    pub rate_limit: RateLimitConfig,
    /// `[auth.cors]`: browser origins allowed to call the API.
    pub cors: CorsConfig,
    /// Accounts whose sessions nobody may act on through sessiongate (same pattern syntax as
    /// `auth.protected.users`).
    pub service_accounts: Vec<String>,
    /// Callers signed in with an Entra ID token may list, log off and disconnect their own
    /// sessions (`GET /me/sessions`, `POST /me/sessions/{action}`) without any role. Off by default.
    pub self_service: bool,
}

/// `[auth.oidc]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Expected `iss` claim, and (unless `discovery_url` is set) the base of the discovery URL.
    /// Must be `https://`.
    pub issuer: String,
    /// Accepted `aud` values: one string or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Default: `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Extra CA certificates (PEM) trusted for the discovery and JWKS requests.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Tolerated clock difference for `exp`/`nbf`, seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// How often the signing keys are re-read, seconds (at least 1).
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Minimum time between two key fetches triggered by an unknown `kid`, seconds.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval_secs: u64,
    /// App role value or group id/name → grants. Matched case-insensitively.
    #[serde(default = "default_role_map")]
    pub role_map: BTreeMap<String, Vec<GrantConfig>>,
}

/// One grant in `auth.oidc.role_map`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub role: Role,
    /// Pools covered: `["*"]` (default) for all.
    #[serde(default = "all_pools")]
    pub pools: Vec<String>,
}

/// `[auth.protected]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectedConfig {
    /// UPN (`adm-*@contoso.com`) or down-level (`*\\Administrator`) patterns, case-insensitive,
    /// `*` matches any run of characters. A pattern with neither `@` nor `\` matches the
    /// account name in any domain.
    pub users: Vec<String>,
    /// Group names/ids; only effective where the provider reports the session user's groups.
    pub groups: Vec<String>,
}

/// `[auth.rate_limit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained actions per minute per principal; 0 disables the limit.
    pub actions_per_minute: u32,
    /// Bucket size: how many actions may be made at once after a quiet period.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            actions_per_minute: 60,
            burst: 10,
        }
    }
}

/// `[auth.cors]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://portal.contoso.com`). Empty = no CORS headers at all.
    pub allowed_origins: Vec<String>,
}

fn default_skew() -> u64 {
    60
}
fn default_refresh() -> u64 {
    3600
}
fn default_min_refetch() -> u64 {
    30
}
fn all_pools() -> Vec<String> {
    vec!["*".to_string()]
}

/// The app roles documented in `docs/security.md`, each over every pool.
pub fn default_role_map() -> BTreeMap<String, Vec<GrantConfig>> {
    [
        ("Reader", Role::Reader),
        ("Operator", Role::Operator),
        ("Admin", Role::Admin),
        ("Auditor", Role::Auditor),
    ]
    .into_iter()
    .map(|(k, role)| {
        (
            k.to_string(),
            vec![GrantConfig {
                role,
                pools: all_pools(),
            }],
        )
    })
    .collect()
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl OidcConfig {
    /// A config with the defaults for everything but issuer and audience.
    pub fn new(issuer: &str, audience: &[&str]) -> Self {
        Self {
            issuer: issuer.to_string(),
            audience: audience.iter().map(|s| s.to_string()).collect(),
            discovery_url: None,
            ca_bundle: None,
            clock_skew_secs: default_skew(),
            refresh_secs: default_refresh(),
            min_refetch_interval_secs: default_min_refetch(),
            role_map: default_role_map(),
        }
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        self.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            )
        })
    }

    /// The HTTP client for discovery and JWKS: the extra CA bundle read and parsed here, so
    /// `config check` and the start-up share one reading of it.
    pub(crate) fn http_client(&self) -> Result<reqwest::Client, ConfigError> {
        let key = Key::root("auth").field("oidc").field("ca_bundle");
        let ca = match &self.ca_bundle {
            Some(p) => {
                Some(crate::httpclient::read_ca_bundle(p).map_err(|e| key.err(e.to_string()))?)
            }
            None => None,
        };
        crate::httpclient::build_client(
            ca.as_deref().map(|pem| ("auth.oidc.ca_bundle", pem)),
            std::time::Duration::from_secs(5),
        )
        .map_err(|e| key.err(e.to_string()))
    }

    fn validate(&self, key: &Key) -> Result<(), ConfigError> {
        check_https(&self.issuer, &key.field("issuer"))?;
        check_https(&self.discovery_url(), &key.field("discovery_url"))?;
        if self.audience.is_empty() || self.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(key
                .field("audience")
                .err("must name at least one non-empty audience"));
        }
        if self.refresh_secs == 0 {
            return Err(key.field("refresh_secs").err("must be at least 1"));
        }
        if self.clock_skew_secs > 600 {
            return Err(key.field("clock_skew_secs").err("must be at most 600"));
        }
        for (k, grants) in &self.role_map {
            let rk = key.field("role_map");
            if k.trim().is_empty() {
                return Err(rk.err("has an empty key"));
            }
            for (i, g) in grants.iter().enumerate() {
                validate_pools(
                    &g.pools,
                    &rk.field(&format!("\"{k}\"")).index(i).field("pools"),
                )?;
            }
        }
        self.http_client()?;
        Ok(())
    }
}

fn check_https(url: &str, key: &Key) -> Result<(), ConfigError> {
    let u = url::Url::parse(url).map_err(|e| key.err(format!("is not a URL: {e}")))?;
    if u.scheme() != "https" {
        return Err(key.err("must be an https:// URL"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(key.err("has no host"));
    }
    Ok(())
}

fn validate_pools(pools: &[String], key: &Key) -> Result<(), ConfigError> {
    if pools.is_empty() {
        return Err(key.err("must list at least one pool (or \"*\")"));
    }
    for p in pools {
        if p != "*" {
            crate::domain::PoolName::parse(p).map_err(|e| key.err(format!("'{p}': {e}")))?;
        }
    }
    Ok(())
}

/// Parses an origin as browsers send it: `scheme://host[:port]`, nothing else.
pub(crate) fn parse_origin(s: &str) -> Result<http::HeaderValue, String> {
    let u = url::Url::parse(s).map_err(|e| format!("'{s}' is not an origin: {e}"))?;
    if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() {
        return Err(format!("'{s}' must be http(s)://host[:port]"));
    }
    let origin = u.origin().ascii_serialization();
    if origin != s.trim_end_matches('/') {
        return Err(format!(
            "'{s}' must be only scheme://host[:port] (did you mean '{origin}'?)"
        ));
    }
    http::HeaderValue::from_str(&origin).map_err(|e| format!("'{s}': {e}"))
}

impl AuthConfig {
    /// Checks everything that can be checked without the network (the OIDC CA bundle is read
    /// and parsed); errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = Key::root("auth");
        ApiKeys::new(&self.api_keys)?;
        super::clientcert::ClientCerts::new(&self.client_certs)?;
        for (i, c) in self.client_certs.iter().enumerate() {
            validate_pools(&c.pools, &key.field("client_certs").index(i).field("pools"))?;
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            let kk = key.field("api_keys").index(i);
            validate_pools(&k.pools, &kk.field("pools"))?;
            if k.roles.is_empty() {
                return Err(kk.field("roles").err("must not be empty"));
            }
        }
        if let Some(o) = &self.oidc {
            o.validate(&key.field("oidc"))?;
        }
        for (i, p) in self.protected.users.iter().enumerate() {
            super::policy::validate_pattern(p)
                .map_err(|e| key.field("protected").field("users").index(i).err(e))?;
        }
        for (i, g) in self.protected.groups.iter().enumerate() {
            if g.trim().is_empty() {
                return Err(key
                    .field("protected")
                    .field("groups")
                    .index(i)
                    .err("must not be empty"));
            }
        }
        for (i, p) in self.service_accounts.iter().enumerate() {
            super::policy::validate_pattern(p)
                .map_err(|e| key.field("service_accounts").index(i).err(e))?;
        }
        if self.rate_limit.actions_per_minute > 0 && self.rate_limit.burst == 0 {
            return Err(key
                .field("rate_limit")
                .field("burst")
                .err("must be at least 1"));
        }
        for (i, o) in self.cors.allowed_origins.iter().enumerate() {
            let ok = key.field("cors").field("allowed_origins").index(i);
            if o == "*" {
                return Err(ok.err("'*' is not allowed; list the portal origins"));
            }
            parse_origin(o).map_err(|e| ok.err(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_toml_parses_with_defaults() {
        let t = r#"
            service_accounts = ["svc-*@contoso.com"]
            [oidc]
            issuer = "https://login.microsoftonline.com/t/v2.0"
            audience = "api://sessiongate"
            [oidc.role_map]
            "Ops" = [{ role = "operator", pools = ["hp1"] }]
            [protected]
            users = ["adm-*@contoso.com", '*\Administrator']
            [rate_limit]
            burst = 5
            [cors]
            allowed_origins = ["https://portal.contoso.com"]
        "#;
        let c: AuthConfig = toml::from_str(t).unwrap();
        c.validate().unwrap();
        let o = c.oidc.as_ref().unwrap();
        assert_eq!(o.audience, vec!["api://sessiongate"]);
        assert_eq!(o.clock_skew_secs, 60);
        assert_eq!(o.refresh_secs, 3600);
        assert_eq!(o.min_refetch_interval_secs, 30);
        assert_eq!(
            o.discovery_url(),
            "https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(c.rate_limit.actions_per_minute, 60);
        assert_eq!(c.rate_limit.burst, 5);
        assert_eq!(o.role_map["Ops"][0].role, Role::Operator);
    }

    #[test]
    fn default_role_map_holds_the_four_app_roles() {
        let t = "issuer = \"https://i.example/\"\naudience = [\"a\", \"b\"]";
        let o: OidcConfig = toml::from_str(t).unwrap();
        assert_eq!(o.audience.len(), 2);
        assert_eq!(o.role_map.len(), 4);
        assert_eq!(o.role_map["Admin"][0].role, Role::Admin);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
        assert!(toml::from_str::<AuthConfig>("nope = 1").is_err());
        let mut c = AuthConfig {
            oidc: Some(OidcConfig::new("http://idp.example", &["a"])),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "auth.oidc.issuer");
        c.oidc = None;
        c.cors.allowed_origins = vec!["https://portal.example/path".into()];
        assert_eq!(
            c.validate().unwrap_err().key,
            "auth.cors.allowed_origins[0]"
        );
        c.cors.allowed_origins = vec!["*".into()];
        assert!(c.validate().is_err());
        c.cors.allowed_origins = vec![];
        c.protected.users = vec!["".into()];
        assert_eq!(c.validate().unwrap_err().key, "auth.protected.users[0]");
    }
}
