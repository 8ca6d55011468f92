//! Domain types shared by every layer: validated names, the one session shape, host shape,
//! action kinds and outcomes. "Parse, don't validate": values of these types are always valid.

use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Why a path value was rejected; rendered as 400/422 by the API layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {reason}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub reason: String,
}

/// Letters, digits and `@ . - _ space`, within the length bounds — but never a name made of dots
/// only: `.` and `..` are path segments that URL builders drop or resolve, so the target acted on
/// would not be the one the caller named.
fn name_ok(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_' | ' '))
        && !s.chars().all(|c| c == '.')
}

/// A host pool name as configured in sessiongate (3–64 chars of `[A-Za-z0-9@.\-_ ]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(String);

impl PoolName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if name_ok(s, 1, 64) {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidValue {
                what: "pool name",
                reason: "must be 1-64 characters of letters, digits, '@', '.', '-', '_' or space, not dots only".into(),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session host name (its FQDN): 1–255 chars of `[A-Za-z0-9@.\-_ ]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if name_ok(s, 1, 255) {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidValue {
                what: "session host name",
                reason: "must be 1-255 characters of letters, digits, '@', '.', '-', '_' or space, not dots only".into(),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Host names compare case-insensitively (DNS names; ARM lower-cases them in ids).
    pub fn eq_ignore_case(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_impls!(PoolName);
string_newtype_impls!(HostName);

/// A Windows session id: unique per host only, reused after logoff.
///
/// Parsed from a bare integer (`6`) or from the forms ARM hands out (`hp1/sh1.contoso.com/6`
/// or a full ARM resource id), taking the last segment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct SessionId(pub u32);

impl SessionId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let last = s.trim_end_matches('/').rsplit('/').next().unwrap_or(s);
        last.parse::<u32>().map(SessionId).map_err(|_| InvalidValue {
            what: "session id",
            reason: format!(
                "'{}' is not a Windows session id (an unsigned integer, optionally as the last segment of an ARM id)",
                truncate_for_display(s, 64)
            ),
        })
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Shortens caller-provided text before it is echoed in an error message.
pub fn truncate_for_display(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// The kind of backend a pool runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Azure Virtual Desktop through Azure Resource Manager.
    Avd,
    /// Windows Virtual Desktop classic (Fall 2019 release, RDInfra broker).
    WvdClassic,
    /// On-premises RD Session Host over WinRM.
    Rds,
    /// On-premises MultiPoint server over WinRM.
    Multipoint,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Avd => "avd",
            ProviderKind::WvdClassic => "wvd-classic",
            ProviderKind::Rds => "rds",
            ProviderKind::Multipoint => "multipoint",
        }
    }
}

/// Normalised session state. The provider's raw value is kept beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Disconnected,
    Pending,
    LoggingOff,
    Unknown,
}

impl SessionState {
    /// Maps the state names used by ARM, the classic broker and WTS (case-insensitive).
    pub fn from_raw(raw: &str) -> Self {
        match raw.to_ascii_lowercase().as_str() {
            "active" | "connected" => SessionState::Active,
            "disconnected" | "disc" => SessionState::Disconnected,
            "pending" | "connectquery" | "connecting" | "init" => SessionState::Pending,
            "logoff" | "loggoff" | "loggingoff" => SessionState::LoggingOff,
            _ => SessionState::Unknown,
        }
    }
}

/// Query filter for session lists (`?state=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateFilter {
    Active,
    Disconnected,
}

impl StateFilter {
    pub fn matches(self, s: SessionState) -> bool {
        matches!(
            (self, s),
            (StateFilter::Active, SessionState::Active)
                | (StateFilter::Disconnected, SessionState::Disconnected)
        )
    }
}

/// The one session shape every provider maps to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub pool: String,
    pub host: String,
    pub id: SessionId,
    /// User principal name (`user@contoso.com`) where the backend knows it.
    pub user: Option<String>,
    /// Down-level logon name (`CONTOSO\user`) where the backend knows it.
    pub ad_user: Option<String>,
    pub state: SessionState,
    /// The backend's own state value, unmodified.
    pub raw_state: String,
    /// `Desktop`, `RemoteApp`, or the backend's own value.
    pub application_type: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<OffsetDateTime>,
    /// Whether the user is an administrator of the host, where the backend reports it
    /// (MultiPoint). Administrators' sessions may be closed only by the `admin` role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    /// The UPN a user lookup matched this session by, when the host reports only
    /// `DOMAIN\sam` and the pool's `upn_domains` mapped the UPN to it (`GET /users/{upn}/sessions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
}

impl Session {
    /// Whether `expected` names this session's user (UPN or DOMAIN\user, case-insensitive).
    pub fn user_matches(&self, expected: &str) -> bool {
        let e = expected.trim();
        self.user
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(e))
            || self
                .ad_user
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(e))
    }
}

/// The one session-host shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionHost {
    pub pool: String,
    pub name: String,
    /// Normalised: `available`, `unavailable`, `unreachable`, or the backend's value lower-cased.
    pub status: String,
    pub raw_status: String,
    pub session_count: u32,
    /// `true` when the host accepts no new sessions (drain mode).
    pub drain: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat: Option<OffsetDateTime>,
}

/// Session actions. Every action kind is audited with intent and outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Logoff,
    Disconnect,
    Message,
    Lock,
    Unlock,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Logoff => "logoff",
            ActionKind::Disconnect => "disconnect",
            ActionKind::Message => "message",
            ActionKind::Lock => "lock",
            ActionKind::Unlock => "unlock",
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// The backend carried it out.
    Done,
    /// The session had already ended (logoff only).
    AlreadyGone,
    /// Dry run: the target was resolved and checked; nothing was sent upstream.
    WouldDo,
}

/// Capabilities of a pool, as advertised by `GET /hostpools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    pub actions: Vec<ActionKind>,
    /// Logoff supports `force`.
    pub force_logoff: bool,
    /// `true` for WVD classic pools (the Fall 2019 service, retired by Microsoft).
    pub classic: bool,
    /// Human description of the backend service.
    pub service: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_accepts_bare_and_arm_forms() {
        assert_eq!(SessionId::parse("6").unwrap(), SessionId(6));
        assert_eq!(
            SessionId::parse("hp1/sh1.contoso.com/6").unwrap(),
            SessionId(6)
        );
        assert_eq!(
            SessionId::parse("/subscriptions/s/resourcegroups/rg/providers/microsoft.desktopvirtualization/hostpools/hp1/sessionhosts/sh1/usersessions/17").unwrap(),
            SessionId(17)
        );
        assert!(SessionId::parse("abc").is_err());
        assert!(SessionId::parse("-1").is_err());
        assert!(SessionId::parse("99999999999").is_err());
    }

    #[test]
    fn names_reject_bad_characters() {
        assert!(PoolName::parse("hp-1").is_ok());
        assert!(PoolName::parse("hp/1").is_err());
        assert!(PoolName::parse("").is_err());
        assert!(HostName::parse("sh1.contoso.com").is_ok());
        assert!(HostName::parse("sh1;rm -rf").is_err());
    }

    #[test]
    fn dot_segments_are_not_names() {
        for bad in [".", "..", "..."] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
            assert!(PoolName::parse(bad).is_err(), "{bad}");
        }
        assert!(HostName::parse(".sh1").is_ok());
        assert!(HostName::parse("sh1.").is_ok());
    }

    #[test]
    fn states_normalise() {
        assert_eq!(SessionState::from_raw("Active"), SessionState::Active);
        assert_eq!(SessionState::from_raw("LoggOff"), SessionState::LoggingOff);
        assert_eq!(
            SessionState::from_raw("UserProfileDiskMounted"),
            SessionState::Unknown
        );
    }
}
