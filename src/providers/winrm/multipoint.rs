//! MultiPoint adapter: the `*-WmsSession` cmdlets on the host that owns the session.

use super::{Core, OnPremPoolConfig, TransportStats, scripts, win32_error};
use crate::domain::{
    ActionKind, Capabilities, HostName, ProviderKind, Session, SessionHost, SessionId,
};
use crate::providers::{ActionEffect, PoolSessions, ProviderError, SessionFilter, SessionProvider};
use async_trait::async_trait;
use serde::Serialize;

/// A MultiPoint pool.
pub struct MultiPointProvider {
    core: Core,
}

/// What happened to one session of a bulk logoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkLogoffStatus {
    Closed,
    /// The id did not exist (nothing to do).
    NotFound,
    /// Session 0, the gateway account's session, or the remoting session itself: never closed.
    Protected,
    /// An administrator's session left alone because `include_admin` was false.
    SkippedAdmin,
    Failed,
}

/// One line of a [`MultiPointProvider::logoff_all`] report.
#[derive(Debug, Clone, Serialize)]
pub struct BulkLogoffItem {
    pub id: SessionId,
    /// `DOMAIN\user` where known.
    pub user: Option<String>,
    /// The session's user is a member of the host's local Administrators group: only
    /// administrators may close it, so the service should require an admin role for it.
    pub is_admin: bool,
    pub status: BulkLogoffStatus,
    /// Why it failed, for `Failed`.
    pub error: Option<String>,
}

impl MultiPointProvider {
    pub fn from_config(
        pool: &str,
        cfg: &OnPremPoolConfig,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            core: super::build_core(pool, cfg)?,
        })
    }

    pub fn transport_stats(&self) -> TransportStats {
        self.core.stats()
    }

    pub async fn close(&self) {
        self.core.close().await;
    }

    /// Sessions of a host with the administrator flag (for the admin-only rule).
    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host))]
    pub async fn list_host_sessions_with_admin(
        &self,
        host: &HostName,
    ) -> Result<Vec<(Session, bool)>, ProviderError> {
        let e = self.core.entry(host)?;
        let rows = self.core.list_rows(e, &scripts::mp_list()).await?;
        Ok(rows
            .iter()
            .filter(|r| r.id != 0 && !r.user.is_empty())
            .map(|r| (self.core.to_session(&e.name, r), r.admin.unwrap_or(false)))
            .collect())
    }

    fn item(&self, host: &HostName, r: &scripts::CloseRow) -> BulkLogoffItem {
        let user = r.user.as_ref().filter(|u| !u.is_empty()).map(|u| {
            match r.domain.as_deref().filter(|d| !d.is_empty()) {
                Some(d) => format!("{d}\\{u}"),
                None => u.clone(),
            }
        });
        let (status, error) = match r.status.as_str() {
            "closed" => (BulkLogoffStatus::Closed, None),
            "not_found" => (BulkLogoffStatus::NotFound, None),
            "protected" => (BulkLogoffStatus::Protected, None),
            "skipped_admin" => (BulkLogoffStatus::SkippedAdmin, None),
            _ => (
                BulkLogoffStatus::Failed,
                Some(
                    win32_error(host.as_str(), r.win32.unwrap_or(0), r.message.as_deref())
                        .to_string(),
                ),
            ),
        };
        BulkLogoffItem {
            id: SessionId(r.id),
            user,
            is_admin: r.admin,
            status,
            error,
        }
    }

    fn row_effect(
        &self,
        host: &HostName,
        r: &scripts::CloseRow,
    ) -> Result<ActionEffect, ProviderError> {
        match r.status.as_str() {
            "closed" => Ok(ActionEffect::Done),
            "not_found" => Ok(ActionEffect::AlreadyGone),
            "protected" => Err(ProviderError::Protected(
                "the gateway's own session, or session 0".into(),
            )),
            _ => match r.win32.unwrap_or(0) {
                1168 => Ok(ActionEffect::AlreadyGone),
                c => Err(win32_error(host.as_str(), c, r.message.as_deref())),
            },
        }
    }

    /// Logs off several sessions of one host in one remote command. Session 0 is refused
    /// locally; the gateway's own session is refused by the script.
    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, count = ids.len()))]
    pub async fn logoff_many(
        &self,
        host: &HostName,
        ids: &[SessionId],
    ) -> Vec<(SessionId, Result<ActionEffect, ProviderError>)> {
        let e = match self.core.entry(host) {
            Ok(e) => e,
            Err(err) => return ids.iter().map(|i| (*i, Err(err.clone()))).collect(),
        };
        let mut out: Vec<(SessionId, Result<ActionEffect, ProviderError>)> = Vec::new();
        let mut send: Vec<u32> = Vec::new();
        for id in ids {
            if let Err(err) = self.core.check_not_services(*id) {
                out.push((*id, Err(err)));
            } else if !send.contains(&id.0) {
                send.push(id.0);
            }
        }
        if send.is_empty() {
            return out;
        }
        let res = self
            .core
            .run(e, &scripts::mp_close(&send, &self.core.gateway_account))
            .await;
        match res {
            Err(err) => {
                out.extend(send.iter().map(|i| (SessionId(*i), Err(err.clone()))));
            }
            Ok(r) if !r.ok => {
                let err = win32_error(host.as_str(), r.win32.unwrap_or(0), r.message.as_deref());
                out.extend(send.iter().map(|i| (SessionId(*i), Err(err.clone()))));
            }
            Ok(r) => {
                let rows = r.results.unwrap_or_default();
                for id in send {
                    let res = match rows.iter().find(|x| x.id == id) {
                        Some(row) => self.row_effect(&e.name, row),
                        None => Err(ProviderError::Upstream {
                            status: None,
                            code: "bad_script_output".into(),
                            message: format!("{host}: no result for session {id}"),
                        }),
                    };
                    out.push((SessionId(id), res));
                }
            }
        }
        out
    }

    /// `Close-WmsSession -All` semantics, except that the gateway's own session, session 0 and
    /// the remoting session are never closed, and administrators' sessions are closed only when
    /// `include_admin` is true (the service should require an admin role for that).
    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, include_admin))]
    pub async fn logoff_all(
        &self,
        host: &HostName,
        include_admin: bool,
    ) -> Result<Vec<BulkLogoffItem>, ProviderError> {
        let e = self.core.entry(host)?;
        let r = self
            .core
            .run(
                e,
                &scripts::mp_close_all(include_admin, &self.core.gateway_account),
            )
            .await?;
        if !r.ok {
            return Err(win32_error(
                host.as_str(),
                r.win32.unwrap_or(0),
                r.message.as_deref(),
            ));
        }
        Ok(r.results
            .unwrap_or_default()
            .iter()
            .filter(|x| x.user.as_deref().is_some_and(|u| !u.is_empty()) || x.id != 0)
            .map(|x| self.item(&e.name, x))
            .collect())
    }
}

#[async_trait]
impl SessionProvider for MultiPointProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Multipoint
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            actions: vec![
                ActionKind::Logoff,
                ActionKind::Disconnect,
                ActionKind::Lock,
                ActionKind::Unlock,
            ],
            force_logoff: false,
            classic: false,
            service: "MultiPoint Server over WinRM (WmsSession cmdlets)".into(),
        }
    }

    fn host_in_inventory(&self, host: &HostName) -> bool {
        self.core.find(host).is_some()
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool))]
    async fn list_hosts(&self) -> Result<Vec<SessionHost>, ProviderError> {
        Ok(self.core.hosts_status(&scripts::mp_list()).await)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool))]
    async fn list_sessions(&self, _filter: &SessionFilter) -> Result<PoolSessions, ProviderError> {
        Ok(self.core.fan_out(&scripts::mp_list()).await)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host))]
    async fn list_host_sessions(&self, host: &HostName) -> Result<Vec<Session>, ProviderError> {
        let e = self.core.entry(host)?;
        self.core.host_sessions(e, &scripts::mp_list()).await
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn get_session(&self, host: &HostName, id: SessionId) -> Result<Session, ProviderError> {
        self.core.find_session(host, &scripts::mp_list(), id).await
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn logoff(
        &self,
        host: &HostName,
        id: SessionId,
        _force: bool,
    ) -> Result<ActionEffect, ProviderError> {
        self.core.entry(host)?;
        self.logoff_many(host, &[id])
            .await
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .unwrap_or(Err(ProviderError::SessionNotFound))
    }

    fn native_logoff_many(&self) -> bool {
        true
    }

    /// One `Close-WmsSession -SessionId a,b,c` for all the ids (MultiPoint has no forced
    /// logoff: `force` changes nothing); the answers come back in the order of `ids`.
    async fn logoff_many(
        &self,
        host: &HostName,
        ids: &[SessionId],
        _force: bool,
    ) -> Vec<Result<ActionEffect, ProviderError>> {
        let got = MultiPointProvider::logoff_many(self, host, ids).await;
        ids.iter()
            .map(|id| match got.iter().find(|(i, _)| i == id) {
                Some((_, r)) => r.clone(),
                None => Err(ProviderError::Upstream {
                    status: None,
                    code: "bad_script_output".into(),
                    message: format!("{host}: no result for session {}", id.0),
                }),
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn disconnect(
        &self,
        host: &HostName,
        id: SessionId,
    ) -> Result<ActionEffect, ProviderError> {
        let e = self.core.entry(host)?;
        self.core.check_not_services(id)?;
        let r = self
            .core
            .run(e, &scripts::mp_disconnect(id.0, &self.core.gateway_account))
            .await?;
        self.core.action_result(&e.name, r, false)
    }

    async fn send_message(
        &self,
        _host: &HostName,
        _id: SessionId,
        _title: &str,
        _body: &str,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn lock(&self, host: &HostName, id: SessionId) -> Result<ActionEffect, ProviderError> {
        let e = self.core.entry(host)?;
        self.core.check_not_services(id)?;
        let r = self
            .core
            .run(e, &scripts::mp_lock(id.0, &self.core.gateway_account))
            .await?;
        self.core.action_result(&e.name, r, false)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn unlock(&self, host: &HostName, id: SessionId) -> Result<ActionEffect, ProviderError> {
        let e = self.core.entry(host)?;
        self.core.check_not_services(id)?;
        let r = self.core.run(e, &scripts::mp_unlock(id.0)).await?;
        self.core.action_result(&e.name, r, false)
    }
}
