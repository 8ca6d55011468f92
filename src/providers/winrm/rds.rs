//! RD Session Host adapter: WTS calls (through a small P/Invoke in the script templates) on
//! the host that owns the session.

use super::{Core, OnPremPoolConfig, TransportStats, scripts};
use crate::domain::{
    ActionKind, Capabilities, HostName, ProviderKind, Session, SessionHost, SessionId,
};
use crate::providers::{ActionEffect, PoolSessions, ProviderError, SessionFilter, SessionProvider};
use async_trait::async_trait;

/// An RD Session Host pool.
pub struct RdsProvider {
    core: Core,
}

impl RdsProvider {
    pub fn from_config(
        pool: &str,
        cfg: &OnPremPoolConfig,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            core: super::build_core(pool, cfg)?,
        })
    }

    /// WS-Man round trips and shells over all hosts of the pool.
    pub fn transport_stats(&self) -> TransportStats {
        self.core.stats()
    }

    /// Deletes the warm shells on every host (shutdown).
    pub async fn close(&self) {
        self.core.close().await;
    }
}

#[async_trait]
impl SessionProvider for RdsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Rds
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            actions: vec![
                ActionKind::Logoff,
                ActionKind::Disconnect,
                ActionKind::Message,
            ],
            force_logoff: false,
            classic: false,
            service: "RD Session Host over WinRM (WTS API)".into(),
        }
    }

    fn host_in_inventory(&self, host: &HostName) -> bool {
        self.core.find(host).is_some()
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool))]
    async fn list_hosts(&self) -> Result<Vec<SessionHost>, ProviderError> {
        Ok(self.core.hosts_status(&scripts::rds_list()).await)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool))]
    async fn list_sessions(&self, _filter: &SessionFilter) -> Result<PoolSessions, ProviderError> {
        Ok(self.core.fan_out(&scripts::rds_list()).await)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host))]
    async fn list_host_sessions(&self, host: &HostName) -> Result<Vec<Session>, ProviderError> {
        let e = self.core.entry(host)?;
        self.core.host_sessions(e, &scripts::rds_list()).await
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn get_session(&self, host: &HostName, id: SessionId) -> Result<Session, ProviderError> {
        self.core.find_session(host, &scripts::rds_list(), id).await
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn logoff(
        &self,
        host: &HostName,
        id: SessionId,
        _force: bool,
    ) -> Result<ActionEffect, ProviderError> {
        let e = self.core.entry(host)?;
        self.core.check_not_services(id)?;
        let r = self
            .core
            .run(e, &scripts::rds_logoff(id.0, &self.core.gateway_account))
            .await?;
        self.core.action_result(&e.name, r, true)
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
            .run(
                e,
                &scripts::rds_disconnect(id.0, &self.core.gateway_account),
            )
            .await?;
        self.core.action_result(&e.name, r, false)
    }

    #[tracing::instrument(skip_all, fields(pool = %self.core.pool, host = %host, session.id = id.0))]
    async fn send_message(
        &self,
        host: &HostName,
        id: SessionId,
        title: &str,
        body: &str,
    ) -> Result<(), ProviderError> {
        let e = self.core.entry(host)?;
        self.core.check_not_services(id)?;
        let r = self
            .core
            .run(e, &scripts::rds_message(id.0, title, body))
            .await?;
        self.core.action_result(&e.name, r, false).map(|_| ())
    }
}
