//! `write_back` configuration: one table per source, tagged by `kind`:
//!
//! ```toml
//! write_back = { kind = "servicenow", instance_url = "https://contoso.service-now.com",
//!                field = "work_notes",
//!                auth = { kind = "basic", user = "svc.sessiongate", password_file = "/run/secrets/sn" } }
//! write_back = { kind = "jira", site_url = "https://contoso.atlassian.net", mode = "servicedesk",
//!                email = "svc@contoso.com", api_token_env = "JIRA_TOKEN" }
//! write_back = { kind = "callback", url = "https://hooks.contoso.com/sessiongate",
//!                secret_file = "/run/secrets/callback" }
//! ```
//!
//! Credentials are given by reference, as everywhere in sessiongate: `<name>_env` (an
//! environment variable) or `<name>_file` (a file, trailing newline dropped), exactly one.

use crate::config::{ConfigError, Key};
use crate::upstream::CallPolicy;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

fn d_timeout() -> u64 {
    10
}
fn d_retries() -> u32 {
    3
}
fn d_budget() -> u64 {
    60
}
fn d_table() -> String {
    "incident".into()
}

/// Where a source's job results are written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WriteBackConfig {
    /// A journal field of a ServiceNow record, through the Table API.
    Servicenow(ServiceNowWriteBack),
    /// A comment on a Jira issue (ADF) or a Jira Service Management request.
    Jira(JiraWriteBack),
    /// A JSON POST signed with the Standard Webhooks scheme.
    Callback(CallbackWriteBack),
}

/// The journal field a ServiceNow write-back appends to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalField {
    /// Work notes: internal, agents only.
    #[default]
    WorkNotes,
    /// Additional comments: visible to the caller.
    Comments,
}

impl JournalField {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkNotes => "work_notes",
            Self::Comments => "comments",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowWriteBack {
    /// `https://<instance>.service-now.com`.
    pub instance_url: String,
    /// Default `incident`.
    #[serde(default = "d_table")]
    pub table: String,
    #[serde(default)]
    pub field: JournalField,
    pub auth: ServiceNowAuth,
    /// Extra CA bundle (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "d_retries")]
    pub max_retries: u32,
    #[serde(default = "d_budget")]
    pub retry_budget_secs: u64,
}

/// How sessiongate signs in to ServiceNow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ServiceNowAuth {
    /// Basic with an integration user.
    Basic {
        user: String,
        #[serde(default)]
        password_env: Option<String>,
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
    /// OAuth 2.0 at the instance's `oauth_token.do` (or `token_url`): the password grant when
    /// `user` is set, else client credentials (which the instance must allow).
    Oauth {
        #[serde(default)]
        token_url: Option<String>,
        client_id: String,
        #[serde(default)]
        client_secret_env: Option<String>,
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password_env: Option<String>,
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
}

/// Which Jira endpoint a comment goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JiraMode {
    /// `POST /rest/api/3/issue/{key}/comment` with an ADF body.
    #[default]
    Issue,
    /// `POST /rest/servicedeskapi/request/{key}/comment` with a text body.
    Servicedesk,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraWriteBack {
    /// `https://<site>.atlassian.net`.
    pub site_url: String,
    #[serde(default)]
    pub mode: JiraMode,
    /// Whether the customer sees the comment (default false: an internal note).
    #[serde(default)]
    pub public: bool,
    pub email: String,
    #[serde(default)]
    pub api_token_env: Option<String>,
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "d_retries")]
    pub max_retries: u32,
    #[serde(default = "d_budget")]
    pub retry_budget_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackWriteBack {
    pub url: String,
    /// The Standard Webhooks secret (`whsec_` + base64).
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "d_retries")]
    pub max_retries: u32,
    #[serde(default = "d_budget")]
    pub retry_budget_secs: u64,
}

/// An outbound URL: https, or http to a loopback host (emulators, a local relay).
pub(crate) fn outbound_url(key: &Key, s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| key.err(format!("'{s}' is not a URL: {e}")))?;
    if u.cannot_be_a_base() || u.host().is_none() {
        return Err(key.err(format!("'{s}' has no host")));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(key.err("credentials do not belong in the URL; use the auth settings"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(key.err(format!("'{s}' must not carry a query or fragment")));
    }
    match u.scheme() {
        "https" => Ok(u),
        "http" if crate::emulator::common::is_loopback_url(s) => Ok(u),
        _ => Err(key.err(format!(
            "'{s}' must be https (plain http only to a loopback host)"
        ))),
    }
}

/// A secret given by reference: exactly one of `<name>_env` and `<name>_file`.
pub(crate) fn resolve_secret(
    key: &Key,
    name: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<SecretString, ConfigError> {
    let value = match (env, file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            key.field(&format!("{name}_env"))
                .err(format!("environment variable '{var}' is not set"))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| {
                key.field(&format!("{name}_file"))
                    .err(format!("cannot read {}: {e}", path.display()))
            })?,
        _ => {
            return Err(key.err(format!("set exactly one of {name}_env or {name}_file")));
        }
    };
    if value.is_empty() {
        let which = if env.is_some() { "env" } else { "file" };
        return Err(key
            .field(&format!("{name}_{which}"))
            .err("the secret is empty"));
    }
    Ok(SecretString::from(value))
}

fn policy(
    key: &Key,
    timeout_secs: u64,
    max_retries: u32,
    retry_budget_secs: u64,
) -> Result<CallPolicy, ConfigError> {
    if max_retries > 10 {
        return Err(key.field("max_retries").err("at most 10"));
    }
    // One write-back attempt (at most four calls) must end well within the runner's claim.
    if retry_budget_secs > 600 {
        return Err(key.field("retry_budget_secs").err("at most 600"));
    }
    if timeout_secs > 120 {
        return Err(key.field("timeout_secs").err("at most 120"));
    }
    CallPolicy::from_knobs(
        timeout_secs,
        max_retries,
        retry_budget_secs,
        // Ticketing answers are small: 1 MiB is plenty.
        1024 * 1024,
        Duration::from_secs(5),
    )
    .map_err(|(k, why)| key.field(k).err(why))
}

impl WriteBackConfig {
    /// The checks that need nothing but these settings (secrets and CA files are read when
    /// the client is built, [`super::WriteBack::new`]). `key` is the table's own key, e.g.
    /// `webhooks.sources[jira].write_back`.
    pub fn validate(&self, key: &Key) -> Result<(), ConfigError> {
        self.call_policy(key)?;
        match self {
            Self::Servicenow(c) => {
                outbound_url(&key.field("instance_url"), &c.instance_url)?;
                if c.table.is_empty()
                    || c.table.len() > 80
                    || !c
                        .table
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
                {
                    return Err(key
                        .field("table")
                        .err("a table name is lower-case letters, digits and '_'"));
                }
                let akey = key.field("auth");
                match &c.auth {
                    ServiceNowAuth::Basic { user, .. } => {
                        if user.trim().is_empty() {
                            return Err(akey.field("user").err("must not be empty"));
                        }
                    }
                    ServiceNowAuth::Oauth {
                        token_url,
                        client_id,
                        user,
                        password_env,
                        password_file,
                        ..
                    } => {
                        if let Some(t) = token_url {
                            outbound_url(&akey.field("token_url"), t)?;
                        }
                        if client_id.trim().is_empty() {
                            return Err(akey.field("client_id").err("must not be empty"));
                        }
                        if user.is_none() && (password_env.is_some() || password_file.is_some()) {
                            return Err(akey
                                .field("user")
                                .err("a password is given: name the user it belongs to"));
                        }
                    }
                }
            }
            Self::Jira(c) => {
                outbound_url(&key.field("site_url"), &c.site_url)?;
                if !c.email.contains('@') {
                    return Err(key
                        .field("email")
                        .err("the Atlassian account's e-mail address"));
                }
            }
            Self::Callback(c) => {
                outbound_url(&key.field("url"), &c.url)?;
            }
        }
        Ok(())
    }

    pub(crate) fn call_policy(&self, key: &Key) -> Result<CallPolicy, ConfigError> {
        let (t, r, b) = match self {
            Self::Servicenow(c) => (c.timeout_secs, c.max_retries, c.retry_budget_secs),
            Self::Jira(c) => (c.timeout_secs, c.max_retries, c.retry_budget_secs),
            Self::Callback(c) => (c.timeout_secs, c.max_retries, c.retry_budget_secs),
        };
        policy(key, t, r, b)
    }

    pub(crate) fn ca_bundle(&self) -> Option<&PathBuf> {
        match self {
            Self::Servicenow(c) => c.ca_bundle.as_ref(),
            Self::Jira(c) => c.ca_bundle.as_ref(),
            Self::Callback(c) => c.ca_bundle.as_ref(),
        }
    }

    /// `servicenow`, `jira` or `callback`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Servicenow(_) => "servicenow",
            Self::Jira(_) => "jira",
            Self::Callback(_) => "callback",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        write_back: WriteBackConfig,
    }

    fn parse(s: &str) -> Result<WriteBackConfig, String> {
        toml::from_str::<Holder>(s)
            .map(|h| h.write_back)
            .map_err(|e| e.to_string())
    }

    fn check(s: &str) -> Result<(), ConfigError> {
        parse(s).expect("parses").validate(&Key::root("write_back"))
    }

    #[test]
    fn each_kind_parses_with_defaults() {
        let c = parse(
            r#"write_back = { kind = "servicenow", instance_url = "https://x.service-now.com", auth = { kind = "basic", user = "u", password_env = "P" } }"#,
        )
        .unwrap();
        let WriteBackConfig::Servicenow(s) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(s.table, "incident");
        assert_eq!(s.field, JournalField::WorkNotes);
        c.validate(&Key::root("write_back")).unwrap();
        let c = parse(
            r#"write_back = { kind = "jira", site_url = "https://x.atlassian.net", email = "a@b.c", api_token_file = "/t" }"#,
        )
        .unwrap();
        let WriteBackConfig::Jira(j) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(j.mode, JiraMode::Issue);
        assert!(!j.public);
        check(r#"write_back = { kind = "callback", url = "http://127.0.0.1:9/cb", secret_env = "S" }"#).unwrap();
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        assert!(parse(r#"write_back = { kind = "jira", site_url = "https://x", email = "a@b", api_token = "inline" }"#).is_err());
        assert!(parse(r#"write_back = { kind = "zendesk", url = "https://x" }"#).is_err());
        assert!(parse(r#"write_back = { kind = "servicenow", instance_url = "https://x", field = "description", auth = { kind = "basic", user = "u" } }"#).is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = check(r#"write_back = { kind = "callback", url = "http://hooks.contoso.com/x", secret_env = "S" }"#).unwrap_err();
        assert_eq!(e.key, "write_back.url");
        let e = check(r#"write_back = { kind = "servicenow", instance_url = "https://x.service-now.com", table = "incident^x", auth = { kind = "basic", user = "u" } }"#).unwrap_err();
        assert_eq!(e.key, "write_back.table");
        let e = check(r#"write_back = { kind = "servicenow", instance_url = "https://x.service-now.com", auth = { kind = "oauth", client_id = "c", token_url = "ftp://x" } }"#).unwrap_err();
        assert_eq!(e.key, "write_back.auth.token_url");
        let e = check(r#"write_back = { kind = "jira", site_url = "https://x.atlassian.net", email = "nobody", timeout_secs = 0 }"#).unwrap_err();
        assert_eq!(e.key, "write_back.timeout_secs");
    }

    #[test]
    fn secrets_come_by_reference_exactly_once() {
        let k = Key::root("wb");
        let e = resolve_secret(&k, "secret", &None, &None).unwrap_err();
        assert_eq!(e.key, "wb");
        let e = resolve_secret(
            &k,
            "secret",
            &Some("SESSIONGATE_TEST_SURELY_UNSET".into()),
            &None,
        )
        .unwrap_err();
        assert_eq!(e.key, "wb.secret_env");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "whsec_abc\n").unwrap();
        let s = resolve_secret(&k, "secret", &None, &Some(f)).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&s), "whsec_abc");
    }
}
