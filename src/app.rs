//! Builds the application from a config: used by `serve`, `demo`, tests and benchmarks alike.

use crate::{
    api::{AppState, router::router},
    audit::AuditLog,
    auth::Authenticator,
    auth::{ProtectedSessions, RateLimiter},
    config::{Config, ProviderConfig},
    providers::{avd, winrm, wvd_classic},
    service::{Gateway, Limits, Pool},
};
use axum::Router;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// A built application: the router plus the handles `serve` and tests need.
pub struct App {
    pub router: Router,
    pub gateway: Arc<Gateway>,
    pub shutdown_grace: Duration,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Builds providers, audit log and authenticator from `cfg`.
pub async fn build_app(cfg: &Config) -> Result<App, StartError> {
    let audit = crate::audit::open(&cfg.audit, &cfg.server.data_dir)
        .await
        .map_err(|e| StartError::Audit(e.to_string()))?;
    build_app_with_audit(cfg, audit).await
}

/// Same as [`build_app`] with an already open audit log (tests share one).
pub async fn build_app_with_audit(cfg: &Config, audit: AuditLog) -> Result<App, StartError> {
    let mut pools = Vec::with_capacity(cfg.pools.len());
    for p in &cfg.pools {
        let name = p.name.as_str();
        let provider = match &p.provider {
            ProviderConfig::Avd(c) => avd::build(name, c),
            ProviderConfig::WvdClassic(c) => wvd_classic::build(name, c),
            ProviderConfig::Rds(c) => winrm::build_rds(name, c),
            ProviderConfig::Multipoint(c) => winrm::build_multipoint(name, c),
        }
        .map_err(|e| StartError::Config(format!("pools[{name}]: {e}")))?;
        pools.push(Pool {
            name: p.name.clone(),
            kind: p.provider.kind(),
            provider,
        });
    }
    let authenticator = Authenticator::new(&cfg.auth)
        .await
        .map_err(|e| StartError::Config(format!("auth: {e}")))?;
    let gateway = Arc::new(Gateway::new(
        pools,
        audit,
        ProtectedSessions::new(&cfg.auth.protected, &cfg.auth.service_accounts)
            .map_err(|e| StartError::Config(format!("auth.protected: {e}")))?,
        RateLimiter::new(&cfg.auth.rate_limit),
        Limits {
            message_title_max: cfg.server.message_title_max,
            message_body_max: cfg.server.message_body_max,
        },
    ));
    match gateway.close_interrupted_actions().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            interrupted = n,
            "actions interrupted by the previous stop were marked in the audit log"
        ),
        Err(e) => return Err(StartError::Audit(e.to_string())),
    }
    let st = AppState {
        gateway: gateway.clone(),
        authenticator: Arc::new(authenticator),
        request_timeout: Duration::from_secs(cfg.server.request_timeout_secs),
    };
    Ok(App {
        router: router(
            st,
            cfg.server.body_limit_bytes,
            crate::auth::cors_layer(&cfg.auth.cors),
        ),
        gateway,
        shutdown_grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
    })
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish and
/// waits (bounded) for in-flight actions to be audited.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = app.shutdown_grace;
    let gateway = app.gateway.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.router
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let _ = rx.await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    if !gateway.drain(grace).await {
        tracing::warn!("in-flight actions did not finish within the grace period");
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
