//! `[webhooks]`: the sources that may deliver (`[[webhooks.sources]]`), how each one
//! authenticates, where its delivery id is, which principal it acts as and how its body maps to
//! an action. [`WebhooksConfig::build`] checks everything (`config check` runs it through
//! [`crate::config::Config::validate`]) and reads the secrets it names.

use super::mapping::{Compiled, MappingConfig};
use crate::{
    auth::{Grant, PoolScope, Principal, Role},
    config::{ConfigError, Key},
};
use serde::Deserialize;
use std::path::PathBuf;

/// `[webhooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// How long a delivery id is remembered (and its first answer replayed): at least 72 h
    /// (Jira may deliver up to about 30 minutes late and retries for hours).
    pub dedup_hours: u64,
    /// Largest delivery body accepted (413 above it); at most `server.body_limit_bytes`.
    pub max_body_bytes: usize,
    /// Standard Webhooks (`generic`): accepted distance of `webhook-timestamp` from now.
    pub tolerance_secs: i64,
    /// Write-back: attempts per delivery before it is recorded `failed` (each attempt
    /// already retries throttling and 5xx within the target's `retry_budget_secs`).
    pub write_back_attempts: u32,
    /// Write-back: delay before the second attempt; it doubles per attempt up to
    /// `write_back_retry_max_secs`.
    pub write_back_retry_secs: u64,
    /// Write-back: the longest delay between attempts.
    pub write_back_retry_max_secs: u64,
    /// The sources; each is served at `POST /webhooks/{name}`.
    pub sources: Vec<SourceConfig>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            dedup_hours: 72,
            max_body_bytes: 64 * 1024,
            tolerance_secs: 300,
            write_back_attempts: 8,
            write_back_retry_secs: 30,
            write_back_retry_max_secs: 3600,
            sources: Vec::new(),
        }
    }
}

/// What kind of sender a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Generic,
    /// Jira admin webhooks (`X-Hub-Signature`) and/or Automation "Send web request" (API key
    /// header or Entra ID token).
    Jira,
    /// ServiceNow: Entra ID token or API key header, optional HMAC header.
    Servicenow,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Generic => "generic",
            SourceKind::Jira => "jira",
            SourceKind::Servicenow => "servicenow",
        }
    }

    /// The delivery id's default place (a header name).
    pub fn default_delivery_id(self) -> Option<&'static str> {
        match self {
            SourceKind::Generic => Some("webhook-id"),
            SourceKind::Jira => Some("x-atlassian-webhook-identifier"),
            SourceKind::Servicenow => None,
        }
    }
}

/// A secret by reference, like every other secret of the config: exactly one of `env` (an
/// environment variable's name) or `file` (a file's path; one trailing newline is dropped).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl SecretRef {
    /// Reads the secret; errors name `key`.
    pub fn read(&self, key: &Key) -> Result<String, ConfigError> {
        match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                key.field("env")
                    .err(format!("environment variable '{var}' is not set"))
            }),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| {
                    key.field("file")
                        .err(format!("cannot read {}: {e}", path.display()))
                }),
            _ => Err(key.err("set exactly one of env or file")),
        }
    }
}

/// `entra = { allowed_app_ids = [...] }`: accept an Entra ID token (validated by `[auth.oidc]`)
/// whose client (`azp`, or `appid` in v1 tokens) is listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraSourceConfig {
    pub allowed_app_ids: Vec<String>,
}

/// `hmac = { header, secrets }` (servicenow): an HMAC-SHA256 of the raw body in `header`, as
/// hex with or without `sha256=`, under any of `secrets` (their UTF-8 bytes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    pub header: String,
    pub secrets: Vec<SecretRef>,
}

/// One `[[webhooks.sources]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The route segment (`POST /webhooks/{name}`) and the principal `webhook:<name>`.
    pub name: String,
    pub kind: SourceKind,
    /// generic: `whsec_` secrets; jira: the admin webhook secrets (`X-Hub-Signature`).
    /// Several at once during a rotation.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// jira / servicenow: the header carrying an API key (e.g. `X-Sessiongate-Key`).
    #[serde(default)]
    pub api_key_header: Option<String>,
    /// The accepted keys of `api_key_header`, as `sha256:<hex>` (like `auth.api_keys`).
    #[serde(default)]
    pub api_key_hashes: Vec<String>,
    /// jira / servicenow: accept an Entra ID token of these applications.
    #[serde(default)]
    pub entra: Option<EntraSourceConfig>,
    /// servicenow: an additional HMAC header that must verify.
    #[serde(default)]
    pub hmac: Option<HmacConfig>,
    /// Where the delivery id is: a header name, or a JSON pointer into the body (`/...`).
    /// Defaults: generic `webhook-id`, jira `X-Atlassian-Webhook-Identifier`; servicenow
    /// must set it.
    #[serde(default)]
    pub delivery_id: Option<String>,
    /// Roles of the principal `webhook:<name>` (like an API key's).
    pub roles: Vec<Role>,
    /// Pools those roles cover (`["*"]`: all).
    #[serde(default = "all_pools")]
    pub pools: Vec<String>,
    /// How the body maps to an action, and the guards.
    #[serde(default)]
    pub mapping: MappingConfig,
    /// Where the result of a delivery's job is written (the ticket), when set.
    #[serde(default)]
    pub write_back: Option<crate::ticketing::WriteBackConfig>,
}

fn all_pools() -> Vec<String> {
    vec!["*".into()]
}

/// Where a delivery id is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryIdFrom {
    /// A header (lower case).
    Header(String),
    /// A JSON pointer into the body.
    Pointer(String),
}

/// A source ready to authenticate and map deliveries.
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// generic: decoded `whsec_` keys; jira: secret bytes.
    pub keys: Vec<Vec<u8>>,
    pub api_key: Option<(http::HeaderName, Vec<[u8; 32]>)>,
    pub entra_apps: Option<Vec<String>>,
    pub hmac: Option<(http::HeaderName, Vec<Vec<u8>>)>,
    pub delivery_id: DeliveryIdFrom,
    pub principal: Principal,
    pub mapping: Compiled,
    /// The client that writes a delivery's job result to its ticket, when `write_back` is
    /// configured (deliveries are then recorded `pending` at submission).
    pub write_back: Option<std::sync::Arc<crate::ticketing::WriteBack>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// The configured sources.
#[derive(Debug, Default)]
pub struct Sources {
    pub sources: Vec<Source>,
    pub max_body_bytes: usize,
    pub tolerance_secs: i64,
    pub dedup_hours: u64,
}

impl Sources {
    pub fn get(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn header_name(key: &Key, v: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(v.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| key.err(format!("'{v}' is not a valid header name")))
}

impl WebhooksConfig {
    /// Checks every setting and reads the secrets. `pools`: the configured pool names;
    /// `oidc`: whether `[auth.oidc]` is set (needed by `entra`); `body_limit`:
    /// `server.body_limit_bytes`.
    pub fn build(
        &self,
        pools: &[String],
        oidc: bool,
        body_limit: usize,
    ) -> Result<Sources, ConfigError> {
        let key = Key::root("webhooks");
        if self.dedup_hours < 72 || self.dedup_hours > 24 * 90 {
            return Err(key.field("dedup_hours").err("must be 72-2160"));
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > body_limit {
            return Err(key.field("max_body_bytes").err(format!(
                "must be 1024 to server.body_limit_bytes ({body_limit})"
            )));
        }
        if !(1..=3600).contains(&self.tolerance_secs) {
            return Err(key.field("tolerance_secs").err("must be 1-3600"));
        }
        if !(1..=100).contains(&self.write_back_attempts) {
            return Err(key.field("write_back_attempts").err("must be 1-100"));
        }
        if !(1..=86_400).contains(&self.write_back_retry_max_secs) {
            return Err(key
                .field("write_back_retry_max_secs")
                .err("must be 1-86400"));
        }
        if self.write_back_retry_secs == 0
            || self.write_back_retry_secs > self.write_back_retry_max_secs
        {
            return Err(key
                .field("write_back_retry_secs")
                .err("must be 1 to write_back_retry_max_secs"));
        }
        let mut out = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            let k = key.field("sources").index(i);
            if !valid_name(&s.name) {
                return Err(k
                    .field("name")
                    .err("must be 1-64 characters of A-Z, a-z, 0-9, '-' and '_'"));
            }
            if out.iter().any(|o: &Source| o.name == s.name) {
                return Err(k
                    .field("name")
                    .err(format!("source '{}' is configured twice", s.name)));
            }
            out.push(s.build(&k, pools, oidc)?);
        }
        Ok(Sources {
            sources: out,
            max_body_bytes: self.max_body_bytes,
            tolerance_secs: self.tolerance_secs,
            dedup_hours: self.dedup_hours,
        })
    }
}

impl SourceConfig {
    fn build(&self, k: &Key, pools: &[String], oidc: bool) -> Result<Source, ConfigError> {
        let kind = self.kind;
        let mut keys = Vec::with_capacity(self.secrets.len());
        for (i, r) in self.secrets.iter().enumerate() {
            let sk = k.field("secrets").index(i);
            let text = r.read(&sk)?;
            keys.push(match kind {
                SourceKind::Generic => super::signature::decode_standard_secret(&text)
                    .ok_or_else(|| sk.err("is not a Standard Webhooks secret (whsec_ + base64)"))?,
                _ if text.is_empty() => return Err(sk.err("is empty")),
                _ => text.into_bytes(),
            });
        }
        let api_key = match (&self.api_key_header, self.api_key_hashes.is_empty()) {
            (None, true) => None,
            (None, false) => {
                return Err(k
                    .field("api_key_header")
                    .err("api_key_hashes are set: name the header that carries the key"));
            }
            (Some(_), true) => {
                return Err(k
                    .field("api_key_hashes")
                    .err("at least one sha256:<hex> hash is required with api_key_header"));
            }
            (Some(h), false) => {
                let name = header_name(&k.field("api_key_header"), h)?;
                let mut digests = Vec::new();
                for (i, hash) in self.api_key_hashes.iter().enumerate() {
                    digests.push(
                        crate::auth::apikey::parse_hash(hash)
                            .map_err(|e| k.field("api_key_hashes").index(i).err(e))?,
                    );
                }
                Some((name, digests))
            }
        };
        let entra_apps = match &self.entra {
            None => None,
            Some(e) => {
                let ek = k.field("entra");
                if !oidc {
                    return Err(ek.err("needs [auth.oidc] (the token validator) to be configured"));
                }
                if e.allowed_app_ids.is_empty()
                    || e.allowed_app_ids.iter().any(|a| a.trim().is_empty())
                {
                    return Err(ek
                        .field("allowed_app_ids")
                        .err("list at least one application (client) id, none empty"));
                }
                Some(e.allowed_app_ids.clone())
            }
        };
        let hmac = match &self.hmac {
            None => None,
            Some(h) => {
                let hk = k.field("hmac");
                let name = header_name(&hk.field("header"), &h.header)?;
                if h.secrets.is_empty() {
                    return Err(hk.field("secrets").err("at least one secret is required"));
                }
                let mut secrets = Vec::new();
                for (i, r) in h.secrets.iter().enumerate() {
                    let t = r.read(&hk.field("secrets").index(i))?;
                    if t.is_empty() {
                        return Err(hk.field("secrets").index(i).err("is empty"));
                    }
                    secrets.push(t.into_bytes());
                }
                Some((name, secrets))
            }
        };
        match kind {
            SourceKind::Generic => {
                if keys.is_empty() {
                    return Err(k
                        .field("secrets")
                        .err("a generic source needs at least one whsec_ secret"));
                }
                for (f, set) in [
                    ("api_key_header", api_key.is_some()),
                    ("entra", entra_apps.is_some()),
                    ("hmac", hmac.is_some()),
                ] {
                    if set {
                        return Err(k
                            .field(f)
                            .err("a generic source authenticates by its signature only"));
                    }
                }
            }
            SourceKind::Jira => {
                if keys.is_empty() && api_key.is_none() && entra_apps.is_none() {
                    return Err(k.err(
                        "a jira source needs secrets (admin webhooks), api_key_header or entra (Automation)",
                    ));
                }
                if hmac.is_some() {
                    return Err(k
                        .field("hmac")
                        .err("jira signs with X-Hub-Signature: use secrets"));
                }
            }
            SourceKind::Servicenow => {
                if api_key.is_none() && entra_apps.is_none() {
                    return Err(k.err("a servicenow source needs entra or api_key_header"));
                }
                if !keys.is_empty() {
                    return Err(k
                        .field("secrets")
                        .err("servicenow signs (optionally) with hmac = { header, secrets }"));
                }
            }
        }
        let delivery_id = match (&self.delivery_id, kind.default_delivery_id()) {
            (Some(p), _) if p.starts_with('/') => DeliveryIdFrom::Pointer(p.clone()),
            (Some(h), _) => DeliveryIdFrom::Header(
                header_name(&k.field("delivery_id"), h)?
                    .as_str()
                    .to_string(),
            ),
            (None, Some(d)) => DeliveryIdFrom::Header(d.to_string()),
            (None, None) => {
                return Err(k.field("delivery_id").err(
                    "a servicenow source must say where the delivery id is (a header name, or a JSON pointer such as /delivery_id)",
                ));
            }
        };
        if self.roles.is_empty() {
            return Err(k.field("roles").err("at least one role is required"));
        }
        if self.pools.is_empty() {
            return Err(k.field("pools").err("list pools, or [\"*\"] for all"));
        }
        for (i, p) in self.pools.iter().enumerate() {
            if p != "*" && !pools.iter().any(|c| c == p) {
                return Err(k
                    .field("pools")
                    .index(i)
                    .err(format!("pool '{p}' is not configured")));
            }
        }
        let mapping = self.mapping.compile(&k.field("mapping"), pools)?;
        let scope = PoolScope::Pools(self.pools.clone());
        Ok(Source {
            name: self.name.clone(),
            kind,
            keys,
            api_key,
            entra_apps,
            hmac,
            delivery_id,
            principal: Principal {
                id: format!("webhook:{}", self.name),
                display: Some(format!("webhook {}", self.name)),
                method: crate::auth::AuthMethod::Webhook,
                grants: self
                    .roles
                    .iter()
                    .map(|r| Grant {
                        role: *r,
                        pools: scope.clone(),
                    })
                    .collect(),
                upn: None,
            },
            mapping,
            write_back: match &self.write_back {
                Some(w) => Some(std::sync::Arc::new(crate::ticketing::WriteBack::new(
                    w,
                    &k.field("write_back"),
                )?)),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Result<Sources, ConfigError> {
        let c: WebhooksConfig = toml::from_str(toml_text).expect("shape");
        c.build(&["hp1".to_string()], false, 64 * 1024)
    }

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn errors_name_the_key() {
        // A variable no test sets: the reference is reported unset.
        let var = "SESSIONGATE_TEST_WEBHOOK_SECRET_CFG";
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{SECRET}\n")).unwrap();
        let f = file.path().display().to_string();
        let src = |extra: &str, mapping: &str| {
            format!(
                "[[sources]]\nname = \"gen\"\nkind = \"generic\"\nroles = [\"operator\"]\nsecrets = [{{ file = {f:?} }}]\n{extra}[sources.mapping]\n{mapping}\n"
            )
        };
        let ok = src("", "user = \"/user\"");
        let s = build(&ok).unwrap();
        assert_eq!(s.sources[0].keys.len(), 1);
        assert_eq!(s.sources[0].principal.id, "webhook:gen");
        let cases = [
            ("dedup_hours = 24\n", "webhooks.dedup_hours"),
            ("max_body_bytes = 10\n", "webhooks.max_body_bytes"),
            (
                "[[sources]]\nname = \"a b\"\nkind = \"generic\"\nroles = [\"operator\"]\n",
                "webhooks.sources[0].name",
            ),
            (
                "[[sources]]\nname = \"g\"\nkind = \"generic\"\nroles = [\"operator\"]\n",
                "webhooks.sources[0].secrets",
            ),
            (
                &format!(
                    "[[sources]]\nname = \"g\"\nkind = \"generic\"\nroles = [\"operator\"]\nsecrets = [{{ env = \"{var}\" }}]\n"
                ),
                "webhooks.sources[0].secrets[0].env",
            ),
            (
                "[[sources]]\nname = \"s\"\nkind = \"servicenow\"\nroles = [\"operator\"]\napi_key_header = \"x-k\"\napi_key_hashes = [\"sha256:00\"]\ndelivery_id = \"/id\"\n",
                "webhooks.sources[0].api_key_hashes[0]",
            ),
            (
                &format!(
                    "[[sources]]\nname = \"s\"\nkind = \"servicenow\"\nroles = [\"operator\"]\napi_key_header = \"x-k\"\napi_key_hashes = [\"{}\"]\n",
                    crate::auth::apikey::hash_key("k")
                ),
                "webhooks.sources[0].delivery_id",
            ),
            (
                "[[sources]]\nname = \"j\"\nkind = \"jira\"\nroles = [\"operator\"]\nentra = { allowed_app_ids = [\"a\"] }\n",
                "webhooks.sources[0].entra",
            ),
            (
                &src("pools = [\"nope\"]\n", "user = \"/user\""),
                "webhooks.sources[0].pools[0]",
            ),
            (
                &src("", "user = \"no-slash\""),
                "webhooks.sources[0].mapping.user",
            ),
            (&src("", ""), "webhooks.sources[0].mapping.user"),
            (
                &src("", "user = \"/u\"\nallowed_pools = [\"zz\"]"),
                "webhooks.sources[0].mapping.allowed_pools[0]",
            ),
        ];
        for (text, want) in cases {
            let e = build(text).err().unwrap_or_else(|| panic!("{text} passed"));
            assert_eq!(e.key, want, "{text}: {e}");
        }
    }
}
