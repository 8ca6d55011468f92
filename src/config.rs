//! Typed configuration: embedded defaults < TOML file < environment variables
//! (`SESSIONGATE__SECTION__KEY=value`, array elements by index: `SESSIONGATE__POOLS__0__NAME`).
//! Validated at start; errors name the offending key.

use crate::{
    audit::AuditConfig,
    auth::AuthConfig,
    domain::{PoolName, ProviderKind},
    providers::{avd::AvdPoolConfig, winrm::OnPremPoolConfig, wvd_classic::ClassicPoolConfig},
};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf};

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
    pub pools: Vec<PoolConfig>,
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
    /// Emit logs as JSON lines.
    pub json_logs: bool,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log_filter: String,
    /// Upper bound for a message title (characters).
    pub message_title_max: usize,
    /// Upper bound for a message body (characters).
    pub message_body_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            request_timeout_secs: 60,
            body_limit_bytes: 64 * 1024,
            shutdown_grace_secs: 30,
            json_logs: false,
            log_filter: "info".into(),
            message_title_max: 256,
            message_body_max: 4096,
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
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

const ENV_PREFIX: &str = "SESSIONGATE__";

impl Config {
    /// Loads `path` (TOML), applies `SESSIONGATE__*` environment overrides, validates.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text, applies overrides from `env`, validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            ConfigError::new("(file)", format!("not valid TOML: {}", e.message().trim()))
        })?;
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                apply_override(&mut value, rest, &v).map_err(|m| ConfigError::new(k.clone(), m))?;
            }
        }
        let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(
                if path == "." { "(root)".into() } else { path },
                e.into_inner().message().trim().to_string(),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            if !seen.insert(p.name.as_str().to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("pools[{i}].name"),
                    format!("pool '{}' is configured twice", p.name),
                ));
            }
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::new(
                "server.body_limit_bytes",
                "must be at least 1024",
            ));
        }
        if self.server.request_timeout_secs == 0 {
            return Err(ConfigError::new(
                "server.request_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.server.message_title_max == 0 || self.server.message_body_max == 0 {
            return Err(ConfigError::new(
                "server.message_title_max",
                "message bounds must be positive",
            ));
        }
        self.auth.validate().map_err(|m| {
            let key = m
                .split_whitespace()
                .next()
                .unwrap_or("auth")
                .trim_end_matches(':')
                .to_string();
            ConfigError::new(key, m)
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
                "[[pools]]\nname=\"{n}\"\nprovider=\"avd\"\nsubscription_id=\"s\"\nresource_group=\"rg\"\nhost_pool=\"hp\"\n[pools.credential]\nkind=\"azure_cli\"\n"
            )
        };
        let text = format!("{}{}", pool("a"), pool("A"));
        let e = Config::from_toml_with_env(&text, vec![]).unwrap_err();
        assert_eq!(e.key, "pools[1].name", "{e}");
        Config::from_toml_with_env(&pool("a"), vec![]).unwrap();
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../config/example.toml");
        let c = Config::from_toml_with_env(text, vec![]).unwrap();
        assert!(c.pools.len() >= 2);
    }
}
