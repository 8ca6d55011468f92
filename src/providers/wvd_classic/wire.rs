//! The broker's JSON shapes (camelCase; PascalCase accepted too) and their mapping to domain
//! types. Enums may arrive as names or as integers; integers map in the order the reference
//! lists the names (the emulator renders from the same tables).

use crate::domain::{Session, SessionHost, SessionId, SessionState};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

/// `sessionState` names in the reference's order (the integer form is the index).
pub const SESSION_STATES: [&str; 6] = [
    "Unknown",
    "Active",
    "Disconnected",
    "Pending",
    "LoggOff",
    "UserProfileDiskMounted",
];
/// Host `status` names in the reference's order (as in ARM).
pub const HOST_STATUSES: [&str; 12] = [
    "Available",
    "Unavailable",
    "Shutdown",
    "Disconnected",
    "Upgrading",
    "UpgradeFailed",
    "NoHeartbeat",
    "NotJoinedToDomain",
    "DomainTrustRelationshipLost",
    "SxSStackListenerNotReady",
    "FSLogixNotHealthy",
    "NeedsAssistance",
];
/// `applicationType` names in the reference's order.
pub const APPLICATION_TYPES: [&str; 2] = ["Desktop", "RemoteApp"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireSession {
    #[serde(alias = "SessionHostName")]
    session_host_name: Option<String>,
    #[serde(alias = "SessionId")]
    session_id: Option<Value>,
    #[serde(alias = "UserPrincipalName", default)]
    user_principal_name: Option<String>,
    #[serde(alias = "AdUserName", default)]
    ad_user_name: Option<String>,
    #[serde(alias = "CreateTime", default)]
    create_time: Option<String>,
    #[serde(alias = "ApplicationType", default)]
    application_type: Option<Value>,
    #[serde(alias = "SessionState", default)]
    session_state: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireHost {
    #[serde(alias = "SessionHostName")]
    session_host_name: Option<String>,
    #[serde(alias = "AllowNewSession", default)]
    allow_new_session: Option<bool>,
    #[serde(alias = "Sessions", default)]
    sessions: Option<Value>,
    #[serde(alias = "LastHeartBeat", default)]
    last_heart_beat: Option<String>,
    #[serde(alias = "Status", default)]
    status: Option<Value>,
}

/// An enum value as its name: names pass through, integers index `table`.
pub(super) fn enum_name(v: Option<&Value>, table: &[&str]) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(
            n.as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| table.get(i))
                .map_or_else(|| n.to_string(), |s| (*s).to_string()),
        ),
        _ => None,
    }
}

/// Broker timestamps: RFC 3339, or .NET's form without an offset (taken as UTC).
pub(super) fn parse_time(s: Option<&str>) -> Option<OffsetDateTime> {
    let s = s?.trim();
    let rfc = &time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(s, rfc)
        .ok()
        .or_else(|| OffsetDateTime::parse(&format!("{s}Z"), rfc).ok())
}

fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|i| u32::try_from(i).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl WireSession {
    /// `None` for records without host or id (they cannot be addressed).
    pub(super) fn into_domain(self, pool: &str) -> Option<Session> {
        let host = self.session_host_name.filter(|h| !h.is_empty())?;
        let id = SessionId(as_u32(self.session_id.as_ref()?)?);
        let raw_state = enum_name(self.session_state.as_ref(), &SESSION_STATES)
            .unwrap_or_else(|| "Unknown".into());
        Some(Session {
            pool: pool.to_string(),
            host,
            id,
            user: self.user_principal_name.filter(|s| !s.is_empty()),
            ad_user: self.ad_user_name.filter(|s| !s.is_empty()),
            state: SessionState::from_raw(&raw_state),
            raw_state,
            application_type: enum_name(self.application_type.as_ref(), &APPLICATION_TYPES),
            created_at: parse_time(self.create_time.as_deref()),
            admin: None,
            upn: None,
        })
    }
}

impl WireHost {
    pub(super) fn into_domain(self, pool: &str) -> Option<SessionHost> {
        let name = self.session_host_name.filter(|h| !h.is_empty())?;
        let raw_status =
            enum_name(self.status.as_ref(), &HOST_STATUSES).unwrap_or_else(|| "Unknown".into());
        let status = match raw_status.to_ascii_lowercase().as_str() {
            "available" => "available".to_string(),
            "unavailable" => "unavailable".to_string(),
            "noheartbeat" | "disconnected" => "unreachable".to_string(),
            other => other.to_string(),
        };
        Some(SessionHost {
            pool: pool.to_string(),
            name,
            status,
            raw_status,
            session_count: self.sessions.as_ref().and_then(as_u32).unwrap_or(0),
            drain: self.allow_new_session == Some(false),
            last_heartbeat: parse_time(self.last_heart_beat.as_deref()),
        })
    }
}

/// The broker's error body `{"error": {"code", "message" (symbolic), "target" (text)}}`.
#[derive(Debug, Default)]
pub(super) struct WireError {
    pub message: String,
    pub target: String,
}

pub(super) fn parse_error(body: &[u8]) -> Option<WireError> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").or_else(|| v.get("Error"))?;
    let field = |a: &str, b: &str| {
        e.get(a)
            .or_else(|| e.get(b))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some(WireError {
        message: field("message", "Message"),
        target: field("target", "Target"),
    })
}

/// Symbolic codes with a definite meaning (never retried as a generic 5xx).
pub(super) fn is_known_code(code: &str) -> bool {
    matches!(
        code,
        "UnauthorizedAccess"
            | "TenantNotFound"
            | "TenantGroupNotFound"
            | "HostPoolNotFound"
            | "SessionHostNotFound"
            | "SessionHostUnreachable"
            | "SessionHostLogoffSessionIdNotExist"
            | "OperationFailedTimeout"
            | "SessionNotFound"
            | "RequestThrottled"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sessions_accept_names_and_integers() {
        let w: WireSession = serde_json::from_value(json!({
            "sessionHostName": "sh1.contoso.com", "sessionId": 3, "userPrincipalName": "u@c.com",
            "sessionState": 4, "applicationType": 1, "createTime": "2019-11-01T10:00:00.1234567"
        }))
        .unwrap();
        let s = w.into_domain("p").unwrap();
        assert_eq!(s.raw_state, "LoggOff");
        assert_eq!(s.state, SessionState::LoggingOff);
        assert_eq!(s.application_type.as_deref(), Some("RemoteApp"));
        assert!(s.created_at.is_some());
        let w: WireSession = serde_json::from_value(json!({
            "SessionHostName": "sh1", "SessionId": "7", "SessionState": "Disconnected"
        }))
        .unwrap();
        let s = w.into_domain("p").unwrap();
        assert_eq!(s.id, SessionId(7));
        assert_eq!(s.state, SessionState::Disconnected);
        let w: WireSession =
            serde_json::from_value(json!({"sessionHostName": "sh1", "sessionState": 99})).unwrap();
        assert!(w.into_domain("p").is_none());
    }

    #[test]
    fn hosts_map_status_and_drain() {
        let w: WireHost = serde_json::from_value(json!({
            "sessionHostName": "sh1", "status": 6, "allowNewSession": false, "sessions": 3
        }))
        .unwrap();
        let h = w.into_domain("p").unwrap();
        assert_eq!(h.raw_status, "NoHeartbeat");
        assert_eq!(h.status, "unreachable");
        assert!(h.drain);
        assert_eq!(h.session_count, 3);
    }
}
