//! Windows Virtual Desktop classic (RDInfra broker, Fall 2019 release) adapter.
//!
//! Speaks the broker's management routes under
//! `/RdsManagement/V1/TenantGroups/{tg}/Tenants/{tenant}/HostPools/{pool}` with a bearer token
//! for `{resource}/.default`. Lists follow the `next` response header (absolute or relative URL,
//! same origin only). Host sessions and single sessions are filtered from the pool list (the
//! broker has no per-host route). The symbolic error code is read from `error.message`.
//!
//! Retries: safe calls (GET) retry 5xx and connection failures with backoff; actions retry only
//! when the connection could not be made (nothing was sent) or the broker answered 429 (the
//! request was refused before it ran). A message is never re-sent once it may have arrived.

mod config;
mod credential;
mod wire;

pub use config::{
    ClassicCredentialConfig, ClassicPoolConfig, DEFAULT_AUTHORITY_HOST, DEFAULT_BROKER_URL,
    DEFAULT_CLIENT_API_VERSION, DEFAULT_RESOURCE, DEFAULT_TENANT_GROUP,
};
pub use credential::CertificateAssertion;
pub use wire::escape_query_value;

use super::http_util::{backoff, retry_after};
use super::{ActionEffect, PoolSessions, ProviderError, SessionFilter, SessionProvider};
use crate::config::{ConfigError, Key};
use crate::domain::{
    ActionKind, Capabilities, HostName, ProviderKind, Session, SessionHost, SessionId,
};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use reqwest::{Method, StatusCode, Url, header::HeaderMap};
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

/// Human description advertised in `capabilities()`.
pub const SERVICE_DESCRIPTION: &str = "Windows Virtual Desktop classic (Fall 2019, RDInfra broker) — retired by Microsoft; migrate to AVD ARM";

const MAX_PAGES: usize = 10_000;

/// A WVD classic host pool.
pub struct ClassicProvider {
    pool_name: String,
    http: reqwest::Client,
    broker: Url,
    /// `.../TenantGroups/{tg}/Tenants/{tenant}/HostPools/{pool}` as path segments (unencoded).
    pool_segments: Vec<String>,
    /// Replaced by a fresh one (new token cache, secret re-read) when the broker answers 401.
    credential: std::sync::RwLock<Arc<dyn TokenCredential>>,
    credential_cfg: ClassicCredentialConfig,
    authority_host: String,
    scope: String,
    client_api_version: String,
    timeout: Duration,
    page_size: u32,
    throttle_budget: Duration,
    max_retries: u32,
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
    Ok(Arc::new(ClassicProvider::new(pool_name, cfg)?))
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
            Duration::from_secs(cfg.timeout_secs.min(10)),
        )
        .map_err(|e| key.field("ca_bundle").err(e.to_string()))?;
        let credential =
            credential::build_credential(p, &cfg.credential, &http, &cfg.authority_host)?;
        let scope = format!("{}/.default", resource.as_str().trim_end_matches('/'));
        Ok(Self {
            pool_name: pool_name.to_string(),
            http,
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
            credential: std::sync::RwLock::new(credential),
            credential_cfg: cfg.credential.clone(),
            authority_host: cfg.authority_host.clone(),
            scope,
            client_api_version: cfg.client_api_version.clone(),
            timeout: Duration::from_secs(cfg.timeout_secs),
            page_size: cfg.page_size,
            throttle_budget: Duration::from_secs(cfg.throttle_budget_secs),
            max_retries: cfg.max_retries,
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
        u.set_query(Some(&format!(
            "PageSize={}&SortField={sort_field}&IsDescending=False&InitialSkip=0",
            self.page_size
        )));
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

    async fn token(&self) -> Result<String, ProviderError> {
        let scopes = [self.scope.as_str()];
        let cred = self
            .credential
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let fut = cred.get_token(&scopes, None);
        let Ok(res) = tokio::time::timeout(self.timeout.saturating_mul(2), fut).await else {
            return Err(ProviderError::Timeout(
                "no token from the identity provider in time".into(),
            ));
        };
        match res {
            Ok(t) => Ok(t.token.secret().to_string()),
            Err(e) => {
                let msg = crate::domain::truncate_for_display(&e.to_string(), 400);
                if matches!(e.kind(), azure_core::error::ErrorKind::Io) {
                    Err(ProviderError::Transport(format!("token endpoint: {msg}")))
                } else {
                    Err(ProviderError::UpstreamAuth(msg))
                }
            }
        }
    }

    /// Drops the cached token by building the credential anew (re-reading a rotated secret).
    fn renew_credential(&self) -> Result<(), ProviderError> {
        let fresh = credential::build_credential(
            &self.pool_name,
            &self.credential_cfg,
            &self.http,
            &self.authority_host,
        )
        .map_err(|e| ProviderError::UpstreamAuth(e.to_string()))?;
        *self.credential.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Sends one logical request with the retry rules described in the module docs.
    async fn send(
        &self,
        method: Method,
        url: Url,
        safe: bool,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), ProviderError> {
        let started = Instant::now();
        let mut failures = 0u32;
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token)
                .header(reqwest::header::ACCEPT, "application/json")
                .header("x-ms-wvd-client-api-version", &self.client_api_version)
                .timeout(self.timeout);
            let req = if method == Method::POST {
                // Action bodies are ignored by the broker: send none.
                req.header(reqwest::header::CONTENT_LENGTH, "0")
            } else {
                req
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let retryable = e.is_connect() || (safe && !e.is_builder());
                    if retryable && failures < self.max_retries {
                        failures += 1;
                        tracing::warn!(http.method = %method, attempt = failures, error.kind = if e.is_timeout() { "timeout" } else { "transport" }, "classic broker call failed; retrying");
                        tokio::time::sleep(backoff(failures)).await;
                        continue;
                    }
                    return Err(if e.is_timeout() {
                        ProviderError::Timeout(format!(
                            "no answer from the classic broker within {}s",
                            self.timeout.as_secs()
                        ))
                    } else {
                        ProviderError::Transport(crate::domain::truncate_for_display(
                            &without_url(&e),
                            300,
                        ))
                    });
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    if safe && failures < self.max_retries {
                        failures += 1;
                        tokio::time::sleep(backoff(failures)).await;
                        continue;
                    }
                    return Err(ProviderError::Transport(without_url(&e)));
                }
            };
            if status == StatusCode::UNAUTHORIZED && !renewed {
                // The broker refused the token before running anything: renew it once.
                renewed = true;
                tracing::info!(http.method = %method, "classic broker answered 401; renewing the token");
                self.renew_credential()?;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after(&headers).unwrap_or(Duration::from_secs(1));
                if started.elapsed() + wait <= self.throttle_budget {
                    tracing::info!(http.method = %method, retry_after.secs = wait.as_secs_f64(), "classic broker throttled; waiting");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(ProviderError::Throttled { retry_after: wait });
            }
            if status.is_server_error() && safe && failures < self.max_retries {
                let err = wire::parse_error(&body);
                if err
                    .as_ref()
                    .is_none_or(|e| !wire::is_known_code(&e.message))
                {
                    failures += 1;
                    tracing::warn!(http.method = %method, http.status = status.as_u16(), attempt = failures, "classic broker 5xx; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            }
            return Ok((status, headers, body));
        }
    }

    /// GETs every page of a list, following `next`.
    async fn get_all<T: serde::de::DeserializeOwned>(
        &self,
        first: Url,
    ) -> Result<Vec<T>, ProviderError> {
        let mut out = Vec::new();
        let mut url = first;
        let mut seen = HashSet::new();
        for _ in 0..MAX_PAGES {
            seen.insert(url.to_string());
            let (status, headers, body) = self.send(Method::GET, url.clone(), true).await?;
            if !status.is_success() {
                return Err(map_error(status, &body));
            }
            let page: Vec<T> =
                serde_json::from_slice(&body).map_err(|e| ProviderError::Upstream {
                    status: Some(status.as_u16()),
                    code: "InvalidResponse".into(),
                    message: format!("the broker's list is not the expected JSON array: {e}"),
                })?;
            out.extend(page);
            let Some(next) = headers
                .get("next")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
            else {
                return Ok(out);
            };
            let next = resolve_next(&url, &self.broker, next)?;
            if seen.contains(next.as_str()) {
                return Err(invalid_next("repeats a page already read"));
            }
            url = next;
        }
        Err(invalid_next("exceeded the page limit"))
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
        let (status, _h, body) = self.send(Method::POST, url, false).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(map_error(status, &body))
        }
    }

    /// Distinguishes "no such host" from "host without sessions" for a host missing from lists.
    async fn host_exists(&self, host: &HostName) -> Result<bool, ProviderError> {
        let url = self.url(&["SessionHosts", host.as_str()])?;
        let (status, _h, body) = self.send(Method::GET, url, true).await?;
        if status.is_success() {
            return Ok(true);
        }
        match map_error(status, &body) {
            ProviderError::HostNotFound => Ok(false),
            e => Err(e),
        }
    }
}

/// Resolves a `next` header (absolute or relative) against the page it came with; it must stay
/// on the broker's origin (our bearer token goes with it).
fn resolve_next(current: &Url, broker: &Url, raw: &str) -> Result<Url, ProviderError> {
    let next = current
        .join(raw)
        .map_err(|_| invalid_next("is not a URL"))?;
    if next.origin() != broker.origin() {
        return Err(invalid_next("points to another origin"));
    }
    Ok(next)
}

fn invalid_next(why: &str) -> ProviderError {
    ProviderError::Upstream {
        status: None,
        code: "InvalidNextLink".into(),
        message: format!("the broker's `next` header {why}"),
    }
}

/// Describes a reqwest error without the URL (it may carry message text in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = String::from(if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    });
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
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
        let q = format!(
            "MessageTitle={}&MessageBody={}",
            escape_query_value(title),
            escape_query_value(body)
        );
        self.action(host, id, "send-message-user", Some(q)).await
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

    #[test]
    fn next_links_stay_on_the_broker() {
        let broker = Url::parse("https://rdbroker.wvd.microsoft.com").unwrap();
        let cur = Url::parse("https://rdbroker.wvd.microsoft.com/RdsManagement/V1/TenantGroups/Default%20Tenant%20Group/Tenants/t/HostPools/p/Sessions?PageSize=2&InitialSkip=0").unwrap();
        let abs = resolve_next(
            &cur,
            &broker,
            "https://rdbroker.wvd.microsoft.com/RdsManagement/V1/x?InitialSkip=2",
        )
        .unwrap();
        assert_eq!(abs.query(), Some("InitialSkip=2"));
        let rel = resolve_next(&cur, &broker, "Sessions?PageSize=2&InitialSkip=2").unwrap();
        assert!(rel.path().ends_with("/HostPools/p/Sessions"), "{rel}");
        assert!(resolve_next(&cur, &broker, "https://evil.example/steal").is_err());
        assert!(resolve_next(&cur, &broker, "http://rdbroker.wvd.microsoft.com/x").is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
