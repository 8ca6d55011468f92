//! How a delivery's JSON body becomes an action: each field is a JSON pointer (RFC 6901,
//! `"/issue/fields/customfield_10042"`) or a literal (`{ value = "logoff" }`), plus guards
//! (`allowed_actions`, `allowed_pools`, `require`). Nothing is evaluated: no templates, no code.

use crate::{
    config::{ConfigError, Key},
    domain::ActionKind,
};
use serde::Deserialize;
use serde_json::Value;

/// A field: a JSON pointer into the body, or a literal value.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    /// `"/a/b"`: the value at that pointer.
    Pointer(String),
    /// `{ value = ... }`: always this value.
    Literal(LiteralSpec),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiteralSpec {
    pub value: Value,
}

/// `require = [{ pointer = "/approval", equals = "approved" }]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub pointer: String,
    pub equals: Value,
}

/// `[webhooks.sources.mapping]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// `logoff` | `disconnect` | `lock` | `unlock` (default: the literal `logoff`).
    pub action: FieldSpec,
    /// The user's UPN: every session of this user (in the source's pools) is acted on.
    pub user: Option<FieldSpec>,
    /// Optional pool: narrows the user's sessions to it, or names the one session's pool.
    pub pool: Option<FieldSpec>,
    /// With `pool` and `session_id`: one session instead of a user's sessions.
    pub host: Option<FieldSpec>,
    pub session_id: Option<FieldSpec>,
    pub force: Option<FieldSpec>,
    pub reason: Option<FieldSpec>,
    /// Ticket number (e.g. `INC0012345`, `ITSM-42`): kept in every audit event.
    pub ticket: Option<FieldSpec>,
    /// The ticket system's id (ServiceNow `sys_id`, Jira key): for the write-back.
    pub ticket_id: Option<FieldSpec>,
    pub dry_run: Option<FieldSpec>,
    /// Actions this source may ask for.
    pub allowed_actions: Vec<String>,
    /// Pools this source may act in (empty: every pool its `pools` cover).
    pub allowed_pools: Vec<String>,
    /// Every pointer must hold exactly this value (e.g. the approval state).
    pub require: Vec<Requirement>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            action: FieldSpec::Literal(LiteralSpec {
                value: Value::String("logoff".into()),
            }),
            user: None,
            pool: None,
            host: None,
            session_id: None,
            force: None,
            reason: None,
            ticket: None,
            ticket_id: None,
            dry_run: None,
            allowed_actions: vec!["logoff".into(), "disconnect".into()],
            allowed_pools: Vec::new(),
            require: Vec::new(),
        }
    }
}

/// A mapping checked at start.
#[derive(Debug, Clone)]
pub struct Compiled {
    cfg: MappingConfig,
    allowed_actions: Vec<ActionKind>,
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub action: ActionKind,
    pub user: Option<String>,
    pub pool: Option<String>,
    /// `(host, session id text)`: one session.
    pub session: Option<(String, String)>,
    pub force: bool,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub ticket_id: Option<String>,
    pub dry_run: bool,
}

/// Why a delivery was refused: `code` is `webhook_mapping_failed` or `webhook_guard_refused`;
/// `field` names the mapping field or guard; `detail` never holds a body value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub field: String,
    pub detail: String,
}

pub const MAPPING_FAILED: &str = "webhook_mapping_failed";
pub const GUARD_REFUSED: &str = "webhook_guard_refused";

fn failed(field: &str, detail: impl Into<String>) -> Refusal {
    Refusal {
        code: MAPPING_FAILED,
        field: field.to_string(),
        detail: detail.into(),
    }
}

fn guard(field: &str, detail: impl Into<String>) -> Refusal {
    Refusal {
        code: GUARD_REFUSED,
        field: field.to_string(),
        detail: detail.into(),
    }
}

fn parse_action(s: &str) -> Option<ActionKind> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "logoff" => ActionKind::Logoff,
        "disconnect" => ActionKind::Disconnect,
        "lock" => ActionKind::Lock,
        "unlock" => ActionKind::Unlock,
        _ => return None,
    })
}

/// A JSON pointer as RFC 6901 writes it: empty, or `/` segments with `~0`/`~1` escapes only.
fn valid_pointer(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 512
        && !p.chars().any(char::is_control)
        && p.split('~')
            .skip(1)
            .all(|s| s.starts_with('0') || s.starts_with('1'))
}

fn check_spec(key: &Key, spec: &FieldSpec, want: &str) -> Result<(), ConfigError> {
    match spec {
        FieldSpec::Pointer(p) if !valid_pointer(p) => Err(key.err(format!(
            "'{p}' is not a JSON pointer (it starts with '/'); write a literal as {{ value = ... }}"
        ))),
        FieldSpec::Pointer(_) => Ok(()),
        FieldSpec::Literal(l) => {
            let ok = match want {
                "bool" => l.value.is_boolean(),
                "action" => l.value.as_str().and_then(parse_action).is_some(),
                _ => l.value.is_string() || l.value.is_number(),
            };
            if ok {
                Ok(())
            } else {
                Err(key.err(format!("the literal must be a {want}")))
            }
        }
    }
}

impl MappingConfig {
    /// Checks pointers, literals and guards; `pools` are the configured pool names.
    pub fn compile(&self, key: &Key, pools: &[String]) -> Result<Compiled, ConfigError> {
        check_spec(&key.field("action"), &self.action, "action")?;
        for (name, spec, want) in [
            ("user", &self.user, "string"),
            ("pool", &self.pool, "string"),
            ("host", &self.host, "string"),
            ("session_id", &self.session_id, "string"),
            ("force", &self.force, "bool"),
            ("reason", &self.reason, "string"),
            ("ticket", &self.ticket, "string"),
            ("ticket_id", &self.ticket_id, "string"),
            ("dry_run", &self.dry_run, "bool"),
        ] {
            if let Some(s) = spec {
                check_spec(&key.field(name), s, want)?;
            }
        }
        if self.user.is_none() && self.session_id.is_none() {
            return Err(key.field("user").err(
                "map the user (every session of a user) or pool + host + session_id (one session)",
            ));
        }
        if self.session_id.is_some() != self.host.is_some()
            || (self.session_id.is_some() && self.pool.is_none())
        {
            return Err(key
                .field("session_id")
                .err("one session needs pool, host and session_id together"));
        }
        if self.allowed_actions.is_empty() {
            return Err(key.field("allowed_actions").err("list at least one action"));
        }
        let mut allowed_actions = Vec::new();
        for (i, a) in self.allowed_actions.iter().enumerate() {
            allowed_actions.push(parse_action(a).ok_or_else(|| {
                key.field("allowed_actions")
                    .index(i)
                    .err(format!("'{a}' is not logoff, disconnect, lock or unlock"))
            })?);
        }
        for (i, p) in self.allowed_pools.iter().enumerate() {
            if !pools.iter().any(|c| c == p) {
                return Err(key
                    .field("allowed_pools")
                    .index(i)
                    .err(format!("pool '{p}' is not configured")));
            }
        }
        for (i, r) in self.require.iter().enumerate() {
            if !valid_pointer(&r.pointer) {
                return Err(key
                    .field("require")
                    .index(i)
                    .field("pointer")
                    .err("is not a JSON pointer (it starts with '/')"));
            }
        }
        Ok(Compiled {
            cfg: self.clone(),
            allowed_actions,
        })
    }
}

/// The value a field names in `body` (`None`: absent or `null`).
fn value<'a>(spec: &'a FieldSpec, body: &'a Value) -> Option<&'a Value> {
    match spec {
        FieldSpec::Pointer(p) => body.pointer(p),
        FieldSpec::Literal(l) => Some(&l.value),
    }
    .filter(|v| !v.is_null())
}

/// A text field: strings as they are, numbers as written; bounded, no control characters.
fn text(
    name: &str,
    spec: &Option<FieldSpec>,
    body: &Value,
    max: usize,
) -> Result<Option<String>, Refusal> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let Some(v) = value(spec, body) else {
        return Ok(None);
    };
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return Err(failed(name, format!("{name} must be a string or a number"))),
    };
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(failed(
            name,
            format!("{name} must be 1-{max} characters without control characters"),
        ));
    }
    Ok(Some(s))
}

fn flag(name: &str, spec: &Option<FieldSpec>, body: &Value) -> Result<bool, Refusal> {
    let Some(spec) = spec else {
        return Ok(false);
    };
    match value(spec, body) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(failed(name, format!("{name} must be true or false"))),
    }
}

impl Compiled {
    /// Reads `body` and applies the guards.
    pub fn apply(&self, body: &Value) -> Result<Mapped, Refusal> {
        let c = &self.cfg;
        for (i, r) in c.require.iter().enumerate() {
            if body.pointer(&r.pointer) != Some(&r.equals) {
                return Err(guard(
                    &format!("require[{i}]"),
                    format!(
                        "the delivery's {} does not hold the required value",
                        r.pointer
                    ),
                ));
            }
        }
        let action_text = text("action", &Some(c.action.clone()), body, 32)?
            .ok_or_else(|| failed("action", "the action is missing"))?;
        let action = parse_action(&action_text).ok_or_else(|| {
            failed(
                "action",
                "the action must be logoff, disconnect, lock or unlock",
            )
        })?;
        if !self.allowed_actions.contains(&action) {
            return Err(guard(
                "allowed_actions",
                format!("this source may not ask for {}", action.as_str()),
            ));
        }
        let user = text("user", &c.user, body, 256)?;
        let pool = text("pool", &c.pool, body, 128)?;
        let host = text("host", &c.host, body, 255)?;
        let session_id = text("session_id", &c.session_id, body, 64)?;
        let session = match (host, session_id) {
            (Some(h), Some(s)) => Some((h, s)),
            (None, None) => None,
            (None, Some(_)) => return Err(failed("host", "the host is missing")),
            (Some(_), None) => return Err(failed("session_id", "the session id is missing")),
        };
        if session.is_some() && pool.is_none() {
            return Err(failed("pool", "one session needs its pool"));
        }
        if session.is_none() {
            match &user {
                None => return Err(failed("user", "the user is missing")),
                Some(u) if !crate::api::fleet::valid_upn(u) => {
                    return Err(failed(
                        "user",
                        "the user must be a user principal name such as alice@contoso.com",
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(p) = &pool
            && !c.allowed_pools.is_empty()
            && !c.allowed_pools.iter().any(|a| a == p)
        {
            return Err(guard(
                "allowed_pools",
                "this source may not act in the pool the delivery names",
            ));
        }
        Ok(Mapped {
            action,
            user,
            pool,
            session,
            force: flag("force", &c.force, body)?,
            reason: text("reason", &c.reason, body, 1000)?,
            ticket: text("ticket", &c.ticket, body, 128)?,
            ticket_id: text("ticket_id", &c.ticket_id, body, 128)?,
            dry_run: flag("dry_run", &c.dry_run, body)?,
        })
    }

    /// `allowed_pools` (empty: no narrowing beyond the source's scopes).
    pub fn allowed_pools(&self) -> &[String] {
        &self.cfg.allowed_pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(t: &str) -> Result<Compiled, ConfigError> {
        let c: MappingConfig = toml::from_str(t).expect("shape");
        c.compile(&Key::root("m"), &["hp1".into(), "hp2".into()])
    }

    #[test]
    fn pointers_literals_and_guards() {
        let m = compile(
            r#"
action = "/action"
user = "/issue/fields/reporter/emailAddress"
ticket = "/issue/key"
ticket_id = "/issue/id"
force = { value = true }
reason = { value = "service desk" }
allowed_actions = ["logoff"]
allowed_pools = ["hp1"]
pool = "/pool"
require = [{ pointer = "/approval", equals = "approved" }]
"#,
        )
        .unwrap();
        let body = json!({"action": "LogOff", "approval": "approved", "pool": "hp1",
            "issue": {"key": "ITSM-7", "id": 10042, "fields": {"reporter": {"emailAddress": "a@contoso.com"}}}});
        let got = m.apply(&body).unwrap();
        assert_eq!(got.action, ActionKind::Logoff);
        assert_eq!(got.user.as_deref(), Some("a@contoso.com"));
        assert_eq!(got.ticket.as_deref(), Some("ITSM-7"));
        assert_eq!(got.ticket_id.as_deref(), Some("10042"));
        assert!(got.force);
        assert_eq!(got.pool.as_deref(), Some("hp1"));

        let mut b = body.clone();
        b["approval"] = json!("requested");
        assert_eq!(m.apply(&b).unwrap_err().field, "require[0]");
        let mut b = body.clone();
        b["action"] = json!("disconnect");
        let e = m.apply(&b).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (GUARD_REFUSED, "allowed_actions")
        );
        let mut b = body.clone();
        b["action"] = json!("reboot");
        assert_eq!(m.apply(&b).unwrap_err().code, MAPPING_FAILED);
        let mut b = body.clone();
        b["pool"] = json!("hp2");
        assert_eq!(m.apply(&b).unwrap_err().field, "allowed_pools");
        let mut b = body.clone();
        b["issue"]["fields"]["reporter"] = json!({});
        assert_eq!(m.apply(&b).unwrap_err().field, "user");
        let mut b = body;
        b["issue"]["fields"]["reporter"]["emailAddress"] = json!("not a upn");
        assert_eq!(m.apply(&b).unwrap_err().field, "user");
    }

    #[test]
    fn bad_mappings_name_the_key() {
        assert_eq!(compile("").unwrap_err().key, "m.user");
        assert_eq!(
            compile("user = \"/u\"\naction = { value = \"reboot\" }")
                .unwrap_err()
                .key,
            "m.action"
        );
        assert_eq!(
            compile("user = \"/u\"\nforce = { value = \"yes\" }")
                .unwrap_err()
                .key,
            "m.force"
        );
        assert_eq!(
            compile("user = \"/u\"\nhost = \"/h\"\nsession_id = \"/s\"")
                .unwrap_err()
                .key,
            "m.session_id"
        );
        assert_eq!(
            compile("user = \"/u\"\nallowed_actions = [\"message\"]")
                .unwrap_err()
                .key,
            "m.allowed_actions[0]"
        );
        assert_eq!(
            compile("user = \"/u\"\nrequire = [{ pointer = \"x\", equals = 1 }]")
                .unwrap_err()
                .key,
            "m.require[0].pointer"
        );
        assert!(
            compile("user = \"/u\"\npool = \"/p\"\nhost = \"/h\"\nsession_id = \"/s\"").is_ok()
        );
    }
}
