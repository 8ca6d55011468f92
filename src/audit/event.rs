//! Audit event shapes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What kind of record an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request that is not an action (reads, denials, invalid input), recorded after it.
    Request,
    /// An action about to be sent to a provider; committed before the provider is called.
    Intent,
    /// The result of an action (done, already_gone, would_do, refused, failed).
    Outcome,
    /// Written by retention before old events are deleted: records, for every chain, the
    /// last pruned position (`seq`, `hash`) from which verification of what remains starts.
    Checkpoint,
}

impl EventKind {
    /// The stored / hashed spelling (same as the JSON one).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Request => "request",
            EventKind::Intent => "intent",
            EventKind::Outcome => "outcome",
            EventKind::Checkpoint => "checkpoint",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "request" => EventKind::Request,
            "intent" => EventKind::Intent,
            "outcome" => EventKind::Outcome,
            "checkpoint" => EventKind::Checkpoint,
            _ => return None,
        })
    }
}

/// Who made the call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    /// Principal id (`apikey:NAME`, `cert:NAME`, a token's `oid`), or `anonymous` when authentication failed.
    pub id: String,
    pub display: Option<String>,
    /// `api_key`, `jwt`, `webhook`, `client_cert`, or what was presented when authentication failed.
    pub auth_method: Option<String>,
    pub roles: Vec<String>,
}

/// What the call was about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Target {
    pub pool: Option<String>,
    pub host: Option<String>,
    pub session_id: Option<u32>,
    /// The session's user as resolved before acting.
    pub user: Option<String>,
}

/// An event as the service hands it to the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewEvent {
    pub kind: Option<EventKind>,
    pub request_id: String,
    pub actor: Actor,
    pub client_addr: Option<String>,
    /// HTTP method and matched route, e.g. `POST /hostpools/{pool}/...`.
    pub method: Option<String>,
    pub route: Option<String>,
    /// `logoff`, `disconnect`, `message`, ... or `list_sessions`, `get_session`, ...
    pub action: String,
    pub target: Target,
    /// Action parameters: force, dry_run, reason, ticket, message length/hash. Never secrets
    /// and never message bodies.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// `pending` (intent), `done`, `already_gone`, `would_do`, `refused`, `denied`,
    /// `unauthenticated`, `invalid`, `failed`, `ok`.
    pub outcome: String,
    /// Stable error code when not successful (our problem `code`).
    pub error_code: Option<String>,
    /// HTTP status we answered (or will answer).
    pub http_status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub duration_ms: Option<u64>,
}

/// Replaces NUL characters (which a PostgreSQL text column refuses for good) with U+FFFD.
fn without_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

impl NewEvent {
    /// The event with every NUL in its text fields replaced by U+FFFD. Text reaches events
    /// from tokens, backends and ticket systems; PostgreSQL refuses NUL in a text column, so
    /// such an event could never be stored (and, spooled, would hold up every event after
    /// it). Applied where an event is hashed onto its chain, so the stored text is the hashed
    /// text. `params` is stored as JSON, which escapes NUL.
    pub fn without_nul(mut self) -> Self {
        without_nul(&mut self.request_id);
        without_nul(&mut self.actor.id);
        without_nul(&mut self.action);
        without_nul(&mut self.outcome);
        for s in self.actor.roles.iter_mut() {
            without_nul(s);
        }
        for s in [
            &mut self.actor.display,
            &mut self.actor.auth_method,
            &mut self.client_addr,
            &mut self.method,
            &mut self.route,
            &mut self.target.pool,
            &mut self.target.host,
            &mut self.target.user,
            &mut self.error_code,
        ]
        .into_iter()
        .flatten()
        {
            without_nul(s);
        }
        if let Some(serde_json::Value::String(t)) = self.params.get_mut("ticket") {
            without_nul(t);
        }
        self
    }

    /// The change/incident ticket of the call, taken from `params.ticket` (string or number).
    /// Stored in its own column so `GET /audit?ticket=` is an indexed lookup.
    pub fn ticket(&self) -> Option<String> {
        match self.params.get("ticket")? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// An event as stored: position in its chain and hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Time-ordered unique id (UUIDv7).
    pub id: String,
    /// Chain this event belongs to (one per writer), and its position in it.
    pub chain: String,
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    #[serde(flatten)]
    pub event: NewEvent,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters for `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339 lower bound (inclusive).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    #[schema(value_type = Option<String>)]
    pub since: Option<OffsetDateTime>,
    /// RFC 3339 upper bound (exclusive).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    #[schema(value_type = Option<String>)]
    pub until: Option<OffsetDateTime>,
    pub actor: Option<String>,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub user: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub ticket: Option<String>,
    pub request_id: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<u32>,
}

/// One page of `GET /audit`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}
