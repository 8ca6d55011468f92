//! Windows Virtual Desktop classic (RDInfra broker, Fall 2019 release) adapter.
//!
//! Speaks the broker's management routes under
//! `/RdsManagement/V1/TenantGroups/{tg}/Tenants/{tenant}/HostPools/{pool}` with a bearer token
//! for `{resource}/.default`. Lists follow the `next` response header (absolute or relative URL,
//! same origin only). Host sessions and single sessions are filtered from the pool list (the
//! broker has no per-host route). The symbolic error code is read from `error.message`.
//!
//! Calls go through the [`crate::upstream`] engine (401 refresh, 429 budget, backoff, caps).
//! Reads are safe to repeat; actions (logoff, disconnect, message) are not, so they are re-sent
//! only when nothing was sent or the broker refused them unseen (401, 429). A 5xx is transient
//! unless its symbolic code has a definite meaning; a 429 without `Retry-After` waits 1 s.

mod config;
mod credential;
mod wire;

pub use config::{
    ClassicCredentialConfig, ClassicPoolConfig, DEFAULT_AUTHORITY_HOST, DEFAULT_BROKER_URL,
    DEFAULT_CLIENT_API_VERSION, DEFAULT_RESOURCE, DEFAULT_TENANT_GROUP,
};
pub use credential::CertificateAssertion;
pub use wire::{APPLICATION_TYPES, HOST_STATUSES, SESSION_STATES};

use super::{ActionEffect, PoolSessions, ProviderError, SessionFilter, SessionProvider};
use crate::config::{ConfigError, Key};
use crate::domain::{
    ActionKind, Capabilities, HostName, ProviderKind, Session, SessionHost, SessionId,
};
use crate::upstream::{self, CredentialToken, Page, Repeat, Reply, Upstream, Verdict};
use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use std::{sync::Arc, time::Duration};

/// Human description advertised in `capabilities()`.
pub const SERVICE_DESCRIPTION: &str = "Windows Virtual Desktop classic (Fall 2019, RDInfra broker) — retired by Microsoft; migrate to AVD ARM";

/// A WVD classic host pool.
pub struct ClassicProvider {
    pool_name: String,
    broker: Url,
    /// `.../TenantGroups/{tg}/Tenants/{tenant}/HostPools/{pool}` as path segments (unencoded).
    pool_segments: Vec<String>,
    client_api_version: String,
    page_size: u32,
    upstream: Upstream,
}

impl std::fmt::Debug for ClassicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassicProvider")
            .field("pool", &self.pool_name)
            .field("broker", &self.broker.as_str())
            .finish_non_exhaustive()
    }
}

/// Builds the provider for pool `pool_name` (no connection is made). Errors name the
/// offending key.
pub fn build(
    pool_name: &str,
    cfg: &ClassicPoolConfig,
) -> Result<Arc<dyn SessionProvider>, ConfigError> {
    build_paced(pool_name, cfg, &crate::upstream::pace::Pacer::default())
}

/// [`build`], taking the broker's concurrency bound from `pacer` (shared by the pools of the
/// same broker).
pub fn build_paced(
    pool_name: &str,
    cfg: &ClassicPoolConfig,
    pacer: &crate::upstream::pace::Pacer,
) -> Result<Arc<dyn SessionProvider>, ConfigError> {
    let mut p = ClassicProvider::new(pool_name, cfg)?;
    let broker = p.broker.as_str().trim_end_matches('/').to_ascii_lowercase();
    let limit = pacer
        .concurrency(&broker, cfg.max_concurrency_per_broker)
        .map_err(|have| {
            Key::pool(pool_name)
                .field("max_concurrency_per_broker")
                .err(format!(
                    "another pool on the same broker sets {have}; pools sharing a broker must agree"
                ))
        })?;
    p.upstream = p.upstream.with_limit(limit);
    Ok(Arc::new(p))
}

impl ClassicProvider {
    /// Validates `cfg` ([`ClassicPoolConfig::validate`]), reads its CA bundle and credential,
    /// and builds the client. No connection is made.
    pub fn new(pool_name: &str, cfg: &ClassicPoolConfig) -> Result<Self, ConfigError> {
        let p = pool_name;
        let key = Key::pool(p);
        cfg.validate(&key)?;
        let broker = config::https_url(&key.field("broker_url"), &cfg.broker_url)?;
        let resource = config::https_url(&key.field("resource"), &cfg.resource)?;
        let policy = cfg.call_policy(&key)?;
        let ca = match &cfg.ca_bundle {
            Some(path) => Some((
                path.display().to_string(),
                crate::httpclient::read_ca_bundle(path)
                    .map_err(|e| key.field("ca_bundle").err(e.to_string()))?,
            )),
            None => None,
        };
        let http = crate::httpclient::build_client(
            ca.as_ref().map(|(o, pem)| (o.as_str(), pem.as_str())),
            policy.timeout.min(Duration::from_secs(10)),
        )
        .map_err(|e| key.field("ca_bundle").err(e.to_string()))?;
        let credential =
            credential::build_credential(p, &cfg.credential, &http, &cfg.authority_host)?;
        let scope = format!("{}/.default", resource.as_str().trim_end_matches('/'));
        // Token requests get twice the per-call timeout (discovery and token round trips).
        let (pool, cred, client, authority) = (
            p.to_string(),
            cfg.credential.clone(),
            http.clone(),
            cfg.authority_host.clone(),
        );
        let token = CredentialToken::new(
            scope,
            policy.timeout.saturating_mul(2),
            credential,
            Box::new(move || {
                credential::build_credential(&pool, &cred, &client, &authority)
                    .map_err(|e| e.to_string())
            }),
        );
        Ok(Self {
            pool_name: pool_name.to_string(),
            broker,
            pool_segments: vec![
                "RdsManagement".into(),
                "V1".into(),
                "TenantGroups".into(),
                cfg.tenant_group.clone(),
                "Tenants".into(),
                cfg.tenant.clone(),
                "HostPools".into(),
                cfg.host_pool.clone(),
            ],
            client_api_version: cfg.client_api_version.clone(),
            page_size: cfg.page_size,
            upstream: Upstream::new("the classic broker", http, policy, Some(Arc::new(token))),
        })
    }

    /// `broker/.../HostPools/{pool}/{extra...}` with every segment percent-encoded.
    fn url(&self, extra: &[&str]) -> Result<Url, ProviderError> {
        let mut u = self.broker.clone();
        {
            let mut segs = u
                .path_segments_mut()
                .map_err(|_| ProviderError::Transport("broker_url cannot carry a path".into()))?;
            segs.pop_if_empty();
            segs.extend(self.pool_segments.iter().map(String::as_str));
            segs.extend(extra.iter().copied());
        }
        Ok(u)
    }

    fn list_url(&self, what: &str, sort_field: &str) -> Result<Url, ProviderError> {
        let mut u = self.url(&[what])?;
        let page_size = self.page_size.to_string();
        u.set_query(Some(&upstream::query(&[
            ("PageSize", page_size.as_str()),
            ("SortField", sort_field),
            ("IsDescending", "False"),
            ("InitialSkip", "0"),
        ])));
        Ok(u)
    }

    fn action_url(
        &self,
        host: &HostName,
        id: SessionId,
        action: &str,
        query: Option<String>,
    ) -> Result<Url, ProviderError> {
        let id = id.0.to_string();
        let mut u = self.url(&[
            "SessionHosts",
            host.as_str(),
            "Sessions",
            &id,
            "actions",
            action,
        ])?;
        u.set_query(query.as_deref());
        Ok(u)
    }

    /// One logical call; the reply is a 2xx, anything else the mapped broker error.
    async fn send(&self, method: Method, url: Url, repeat: Repeat) -> Result<Reply, ProviderError> {
        let build = |http: &reqwest::Client| {
            let req = http
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .header("x-ms-wvd-client-api-version", &self.client_api_version);
            if method == Method::POST {
                // Action bodies are ignored by the broker: send none.
                req.header(reqwest::header::CONTENT_LENGTH, "0")
            } else {
                req
            }
        };
        self.upstream.call(repeat, build, classify).await
    }

    /// GETs every page of a list, following `next`.
    async fn get_all<T: serde::de::DeserializeOwned>(
        &self,
        first: Url,
    ) -> Result<Vec<T>, ProviderError> {
        upstream::follow_pages(first, |url| async move {
            let reply = self.send(Method::GET, url, Repeat::Safe).await?;
            let items: Vec<T> =
                serde_json::from_slice(&reply.body).map_err(|e| ProviderError::Upstream {
                    status: Some(reply.status.as_u16()),
                    code: "InvalidResponse".into(),
                    message: format!("the broker's list is not the expected JSON array: {e}"),
                })?;
            let next = reply
                .headers
                .get("next")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Page { items, next })
        })
        .await
    }

    async fn pool_sessions(&self) -> Result<Vec<Session>, ProviderError> {
        let raw: Vec<wire::WireSession> = self
            .get_all(self.list_url("Sessions", "UserPrincipalName")?)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|w| w.into_domain(&self.pool_name))
            .collect())
    }

    async fn action(
        &self,
        host: &HostName,
        id: SessionId,
        action: &str,
        query: Option<String>,
    ) -> Result<(), ProviderError> {
        let url = self.action_url(host, id, action, query)?;
        self.send(Method::POST, url, Repeat::Once).await?;
        Ok(())
    }

    /// Distinguishes "no such host" from "host without sessions" for a host missing from lists.
    async fn host_exists(&self, host: &HostName) -> Result<bool, ProviderError> {
        let url = self.url(&["SessionHosts", host.as_str()])?;
        match self.send(Method::GET, url, Repeat::Safe).await {
            Ok(_) => Ok(true),
            Err(ProviderError::HostNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Judges a broker reply: 2xx is the answer; a 5xx may pass unless its symbolic code has a
/// definite meaning.
fn classify(reply: Reply) -> Verdict<Reply, ProviderError> {
    if reply.status.is_success() {
        return Verdict::Done(reply);
    }
    let transient = reply.status.is_server_error()
        && wire::parse_error(&reply.body).is_none_or(|e| !wire::is_known_code(&e.message));
    let e = map_error(reply.status, &reply.body);
    if transient {
        Verdict::Transient(e)
    } else {
        Verdict::Fail(e)
    }
}

/// Maps a broker error response to a typed error (the symbolic code is in `error.message`).
fn map_error(status: StatusCode, body: &[u8]) -> ProviderError {
    let err = wire::parse_error(body);
    let code = err.as_ref().map(|e| e.message.as_str()).unwrap_or("");
    let text = err
        .as_ref()
        .map(|e| crate::domain::truncate_for_display(&e.target, 300))
        .unwrap_or_default();
    match (status.as_u16(), code) {
        (401, _) => {
            ProviderError::UpstreamAuth(format!("the classic broker rejected our token: {text}"))
        }
        (403, _) => ProviderError::UpstreamForbidden(format!(
            "the classic broker denied the operation (the identity needs an RDS role in the tenant): {text}"
        )),
        (_, "SessionNotFound" | "SessionHostLogoffSessionIdNotExist") => {
            ProviderError::SessionNotFound
        }
        (_, "SessionHostNotFound") => ProviderError::HostNotFound,
        (_, "HostPoolNotFound" | "TenantNotFound" | "TenantGroupNotFound") => {
            ProviderError::PoolNotFound
        }
        (_, "SessionHostUnreachable") => ProviderError::HostUnreachable(text),
        (_, "OperationFailedTimeout") => ProviderError::Timeout(text),
        (_, "UnauthorizedAccess") => ProviderError::UpstreamForbidden(text),
        (429, _) | (_, "RequestThrottled") => ProviderError::Throttled {
            retry_after: Duration::from_secs(1),
        },
        (s, c) => ProviderError::Upstream {
            status: Some(s),
            code: if c.is_empty() {
                format!("http_{s}")
            } else {
                c.to_string()
            },
            message: if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            },
        },
    }
}

#[async_trait]
impl SessionProvider for ClassicProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WvdClassic
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            actions: vec![
                ActionKind::Logoff,
                ActionKind::Disconnect,
                ActionKind::Message,
            ],
            force_logoff: true,
            classic: true,
            service: SERVICE_DESCRIPTION.into(),
        }
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name))]
    async fn list_hosts(&self) -> Result<Vec<SessionHost>, ProviderError> {
        let raw: Vec<wire::WireHost> = self
            .get_all(self.list_url("SessionHosts", "SessionHostName")?)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|w| w.into_domain(&self.pool_name))
            .collect())
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name))]
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<PoolSessions, ProviderError> {
        let sessions = self
            .pool_sessions()
            .await?
            .into_iter()
            .filter(|s| filter.user.as_deref().is_none_or(|u| s.user_matches(u)))
            .filter(|s| filter.state.is_none_or(|f| f.matches(s.state)))
            .collect();
        Ok(PoolSessions {
            sessions,
            unreachable_hosts: Vec::new(),
        })
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name, host = %host))]
    async fn list_host_sessions(&self, host: &HostName) -> Result<Vec<Session>, ProviderError> {
        let sessions: Vec<Session> = self
            .pool_sessions()
            .await?
            .into_iter()
            .filter(|s| host.eq_ignore_case(&s.host))
            .collect();
        if sessions.is_empty() && !self.host_exists(host).await? {
            return Err(ProviderError::HostNotFound);
        }
        Ok(sessions)
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name, host = %host, session.id = id.0))]
    async fn get_session(&self, host: &HostName, id: SessionId) -> Result<Session, ProviderError> {
        let found = self
            .pool_sessions()
            .await?
            .into_iter()
            .find(|s| s.id == id && host.eq_ignore_case(&s.host));
        match found {
            Some(s) => Ok(s),
            None if !self.host_exists(host).await? => Err(ProviderError::HostNotFound),
            None => Err(ProviderError::SessionNotFound),
        }
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name, host = %host, session.id = id.0, force))]
    async fn logoff(
        &self,
        host: &HostName,
        id: SessionId,
        force: bool,
    ) -> Result<ActionEffect, ProviderError> {
        let q = format!("Force={}", if force { "True" } else { "False" });
        match self.action(host, id, "logoff-user", Some(q)).await {
            Ok(()) => Ok(ActionEffect::Done),
            Err(ProviderError::SessionNotFound) => Ok(ActionEffect::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name, host = %host, session.id = id.0))]
    async fn disconnect(
        &self,
        host: &HostName,
        id: SessionId,
    ) -> Result<ActionEffect, ProviderError> {
        self.action(host, id, "disconnect-user", None).await?;
        Ok(ActionEffect::Done)
    }

    #[tracing::instrument(skip_all, fields(provider = "wvd-classic", pool = %self.pool_name, host = %host, session.id = id.0))]
    async fn send_message(
        &self,
        host: &HostName,
        id: SessionId,
        title: &str,
        body: &str,
    ) -> Result<(), ProviderError> {
        let q = upstream::query(&[("MessageTitle", title), ("MessageBody", body)]);
        self.action(host, id, "send-message-user", Some(q)).await
    }
}

/// Fuzzing entry (see `crate::fuzzing`): what the adapter does with a broker answer body —
/// a session list, a host list, an error body.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_classic_body(body: &[u8]) {
    if let Ok(list) = serde_json::from_slice::<Vec<wire::WireSession>>(body) {
        for s in list {
            let _ = s.into_domain("pool");
        }
    }
    if let Ok(list) = serde_json::from_slice::<Vec<wire::WireHost>>(body) {
        for h in list {
            let _ = h.into_domain("pool");
        }
    }
    if let Some(e) = wire::parse_error(body) {
        let _ = wire::is_known_code(&e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_by_symbolic_code() {
        let body = |m: &str| {
            serde_json::to_vec(&serde_json::json!({"error": {"code": "NotFound", "message": m, "target": "t", "details": []}}))
                .unwrap()
        };
        assert!(matches!(
            map_error(
                StatusCode::NOT_FOUND,
                &body("SessionHostLogoffSessionIdNotExist")
            ),
            ProviderError::SessionNotFound
        ));
        assert!(matches!(
            map_error(StatusCode::NOT_FOUND, &body("TenantGroupNotFound")),
            ProviderError::PoolNotFound
        ));
        assert!(matches!(
            map_error(StatusCode::BAD_REQUEST, &body("SessionHostUnreachable")),
            ProviderError::HostUnreachable(_)
        ));
        assert!(matches!(
            map_error(StatusCode::GATEWAY_TIMEOUT, &body("OperationFailedTimeout")),
            ProviderError::Timeout(_)
        ));
        assert!(matches!(
            map_error(StatusCode::UNAUTHORIZED, &body("UnauthorizedAccess")),
            ProviderError::UpstreamAuth(_)
        ));
        assert!(matches!(
            map_error(StatusCode::FORBIDDEN, &body("UnauthorizedAccess")),
            ProviderError::UpstreamForbidden(_)
        ));
        match map_error(StatusCode::BAD_GATEWAY, b"<html>") {
            ProviderError::Upstream { status, code, .. } => {
                assert_eq!(status, Some(502));
                assert_eq!(code, "http_502");
            }
            e => panic!("{e:?}"),
        }
    }
}
