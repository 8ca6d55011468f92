//! Who is calling, and what they may do.
//!
//! Authentication turns request headers into a [`Principal`]; authorisation is
//! [`Principal::check`] against a [`Permission`] and the target pool.

pub mod apikey;
mod authenticator;
pub mod clientcert;
pub mod config;
mod cors;
mod jwt;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use jwt::fuzz_token_header;
pub mod policy;
mod ratelimit;

pub use authenticator::{API_KEY_HEADER, Authenticator, www_authenticate};
pub use clientcert::{ClientCertConfig, PeerCert};
pub use config::{
    AuthConfig, CorsConfig, GrantConfig, OidcConfig, ProtectedConfig, RateLimitConfig,
};
pub use cors::cors_layer;
pub use policy::{Denied, ProtectedSessions, Protection};
pub use ratelimit::{DEFAULT_MAX_PRINCIPALS, RateLimiter};

use crate::domain::PoolName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// sessiongate roles. Each grant of a role names the pools it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// List and get pools, hosts and sessions.
    Reader,
    /// Reader, plus disconnect, message and log off.
    Operator,
    /// Operator, plus force actions on protected sessions and bulk/all-session actions.
    Admin,
    /// Read the audit log.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

/// Which pools a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PoolScope {
    /// `"*"`: every pool.
    All(AllPools),
    /// The listed pools only.
    Pools(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllPools {
    #[serde(rename = "*")]
    All,
}

impl PoolScope {
    pub fn covers(&self, pool: &PoolName) -> bool {
        match self {
            PoolScope::All(_) => true,
            PoolScope::Pools(p) => p.iter().any(|x| x == "*" || x == pool.as_str()),
        }
    }
}

/// One role over some pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub role: Role,
    pub pools: PoolScope,
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Webhook,
    /// A TLS client certificate mapped by `[[auth.client_certs]]`.
    ClientCert,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Webhook => "webhook",
            AuthMethod::ClientCert => "client_cert",
        }
    }
}

/// An authenticated caller (serde: a job keeps its creator's principal so its runner can act
/// as the creator after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable id: `apikey:<id>`, `cert:<id>` (a mapped client certificate), or the token's
    /// `oid`/`sub`.
    pub id: String,
    pub display: Option<String>,
    pub method: AuthMethod,
    pub grants: Vec<Grant>,
    /// The user principal name an Entra ID token names (`preferred_username`, else `upn`);
    /// `None` for API keys. Self-service (`/me/...`) acts on this user's sessions only.
    pub upn: Option<String>,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// List/get (reader, operator, admin).
    SessionsRead,
    /// Disconnect, message, log off, lock, unlock (operator, admin).
    SessionsAct,
    /// Act on protected sessions, force, bulk (admin).
    SessionsAdmin,
    /// Read the audit log (auditor).
    AuditRead,
    /// Scrape `GET /metrics` when it is not public (auditor, admin).
    MetricsRead,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SessionsRead => "sessions.read",
            Permission::SessionsAct => "sessions.act",
            Permission::SessionsAdmin => "sessions.admin",
            Permission::AuditRead => "audit.read",
            Permission::MetricsRead => "metrics.read",
        }
    }

    fn granted_by(self, role: Role) -> bool {
        match self {
            Permission::SessionsRead => {
                matches!(role, Role::Reader | Role::Operator | Role::Admin)
            }
            Permission::SessionsAct => matches!(role, Role::Operator | Role::Admin),
            Permission::SessionsAdmin => matches!(role, Role::Admin),
            Permission::AuditRead => matches!(role, Role::Auditor),
            Permission::MetricsRead => matches!(role, Role::Auditor | Role::Admin),
        }
    }
}

impl Principal {
    /// Whether any grant gives `perm` on `pool` (or, with `None`, on at least one pool /
    /// globally for pool-less permissions).
    pub fn has(&self, perm: Permission, pool: Option<&PoolName>) -> bool {
        self.grants
            .iter()
            .any(|g| perm.granted_by(g.role) && pool.is_none_or(|p| g.pools.covers(p)))
    }

    /// Roles held, for the audit record.
    pub fn role_names(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .grants
            .iter()
            .map(|g| g.role.as_str().to_string())
            .collect();
        r.sort();
        r.dedup();
        r
    }
}

/// Why authentication failed. Never carries the presented secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials presented")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
    #[error("credentials expired")]
    Expired,
    /// A verified TLS client certificate that no `[[auth.client_certs]]` entry maps.
    #[error("the client certificate is not mapped to a principal")]
    ClientCertUnmapped,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Invalid(_) => "invalid_credentials",
            AuthError::Expired => "credentials_expired",
            AuthError::ClientCertUnmapped => "client_cert_unmapped",
        }
    }
}

/// What was presented, for the audit record of a failed or successful authentication:
/// a method and a non-secret identifier (key id prefix, token `kid`/issuer), never the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Presented {
    pub method: Option<String>,
    pub hint: Option<String>,
}
