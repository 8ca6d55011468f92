//! Builds the application from a config: used by `serve`, `demo`, tests and benchmarks alike.

use crate::{
    api::{AppState, router::router},
    audit::AuditLog,
    auth::{Authenticator, RateLimiter},
    config::{Config, ConfigError, ValidatedConfig},
    service::{Gateway, Limits},
    tls::TlsServer,
};
use axum::Router;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// A built application: the router plus the handles `serve` and tests need.
pub struct App {
    pub router: Router,
    pub gateway: Arc<Gateway>,
    pub shutdown_grace: Duration,
    /// Bound on receiving a request's header (also on an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// `[metrics] listen` and the router to serve there ([`serve_metrics`]).
    pub metrics: Option<(std::net::SocketAddr, Router)>,
    /// `[server.tls]`: both listeners serve HTTPS with it ([`serve`], [`serve_metrics_with`]).
    pub tls: Option<Arc<TlsServer>>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting `config check` also reports.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// OIDC discovery / signing keys could not be fetched.
    #[error("{0}")]
    Auth(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Validates `cfg` ([`Config::validate`]), opens the audit log and builds the application.
pub async fn build_app(cfg: &Config) -> Result<App, StartError> {
    build_validated(cfg.validate()?).await
}

/// Opens the audit log of an already validated config and builds the application: what is
/// left can only fail on the network (audit database, OIDC discovery).
pub async fn build_validated(cfg: ValidatedConfig) -> Result<App, StartError> {
    let audit = crate::audit::open(&cfg.audit, &cfg.server.data_dir)
        .await
        .map_err(|e| StartError::Audit(e.to_string()))?;
    build_validated_with_audit(cfg, audit).await
}

/// Same as [`build_app`] with an already open audit log (tests share one).
pub async fn build_app_with_audit(cfg: &Config, audit: AuditLog) -> Result<App, StartError> {
    build_validated_with_audit(cfg.validate()?, audit).await
}

async fn build_validated_with_audit(
    v: ValidatedConfig,
    audit: AuditLog,
) -> Result<App, StartError> {
    let authenticator = Authenticator::new(&v.auth)
        .await
        .map_err(StartError::Auth)?;
    let crate::config::ConfigParts {
        config: cfg,
        pools,
        protected,
        tls,
        webhooks,
    } = v.into_parts();
    let gateway = Arc::new(Gateway::new(
        pools,
        audit,
        protected,
        RateLimiter::new(&cfg.auth.rate_limit),
        Limits {
            message_title_max: cfg.server.message_title_max,
            message_body_max: cfg.server.message_body_max,
            fleet: cfg.fleet.clone(),
            jobs: cfg.jobs.clone(),
            idempotency: cfg.idempotency.clone(),
            self_service: cfg.auth.self_service,
            webhook_dedup_hours: cfg.webhooks.dedup_hours,
            write_back: crate::service::WriteBackLimits {
                attempts: cfg.webhooks.write_back_attempts,
                retry: Duration::from_secs(cfg.webhooks.write_back_retry_secs),
                retry_max: Duration::from_secs(cfg.webhooks.write_back_retry_max_secs),
            },
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
    gateway.spawn_job_runner();
    gateway.spawn_write_back_runner(
        webhooks
            .sources
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.write_back.clone()?)))
            .collect(),
    );
    let st = AppState {
        body_limit: cfg.server.body_limit_bytes,
        gateway: gateway.clone(),
        authenticator: Arc::new(authenticator),
        request_timeout: Duration::from_secs(cfg.server.request_timeout_secs),
        metrics: crate::api::ops::MetricsAccess {
            on_api: cfg.metrics.listen.is_none(),
            enabled: cfg.metrics.enabled,
            public: cfg.metrics.public,
        },
        docs_public: cfg.docs.public,
        webhooks: Arc::new(webhooks),
        console_enabled: cfg.console.enabled,
    };
    let metrics = match cfg.metrics.listen {
        Some(addr) if cfg.metrics.enabled => {
            Some((addr, crate::api::router::metrics_router(st.clone())))
        }
        _ => None,
    };
    Ok(App {
        router: router(
            st,
            cfg.server.body_limit_bytes,
            crate::auth::cors_layer(&cfg.auth.cors),
        ),
        gateway,
        shutdown_grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
        header_read_timeout: Duration::from_millis(cfg.server.header_read_timeout_ms),
        metrics,
        tls,
    })
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish and
/// waits (bounded) for in-flight actions to be audited.
///
/// Connections are served by hyper-util's HTTP/1 + HTTP/2 builder (not `axum::serve`, which
/// has no header-read timeout): a client must send a request's whole header within
/// `server.header_read_timeout_ms`, and hyper starts that timer whenever it waits for a
/// request, so a keep-alive connection left idle is closed after the same time. hyper's own
/// answers to heads it cannot parse (400, 414, 431) are made problem+json by
/// [`crate::edge_io::EdgeIo`]. With `[server.tls]`, each connection first completes a TLS
/// handshake (bounded by the same timeout) with the certificate current at that moment
/// ([`TlsServer`], reloaded while serving); a verified client certificate travels with each
/// request of the connection as an extension for the authenticator.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = app.shutdown_grace;
    let gateway = app.gateway.clone();
    let reloader = app.tls.as_ref().map(TlsServer::spawn_reloader);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let conns = Connections::new(app.router, app.tls, app.header_read_timeout);
    conns.accept_until(&listener, &graceful, shutdown).await;
    drop(listener);
    if let Some(r) = reloader {
        r.abort();
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
    if !gateway.drain(grace).await {
        tracing::warn!("in-flight actions did not finish within the grace period");
    }
    Ok(())
}

/// How one listener serves its connections: the router, TLS or not, the HTTP builder.
#[derive(Clone)]
struct Connections {
    router: Router,
    tls: Option<Arc<TlsServer>>,
    handshake_timeout: Duration,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
}

impl Connections {
    fn new(router: Router, tls: Option<Arc<TlsServer>>, header_read_timeout: Duration) -> Self {
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        Self {
            router,
            tls,
            handshake_timeout: header_read_timeout,
            builder: Arc::new(builder),
        }
    }

    /// Accepts until `shutdown` resolves; each connection runs in its own task, watched by
    /// `graceful`.
    async fn accept_until(
        &self,
        listener: &TcpListener,
        graceful: &hyper_util::server::graceful::GracefulShutdown,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let me = self.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move { me.connection(tcp, peer, watcher).await });
        }
    }

    async fn connection(
        self,
        tcp: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        match &self.tls {
            None => self.http(tcp, peer, None, watcher).await,
            Some(tls) => match tls.accept(tcp, self.handshake_timeout).await {
                Ok((stream, cert)) => self.http(stream, peer, cert, watcher).await,
                Err(e) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
            },
        }
    }

    async fn http<I>(
        &self,
        io: I,
        peer: std::net::SocketAddr,
        cert: Option<Arc<crate::auth::PeerCert>>,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            if let Some(c) = &cert {
                req.extensions_mut().insert(c.clone());
            }
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(
                hyper_util::rt::TokioIo::new(crate::edge_io::EdgeIo::new(io)),
                svc,
            )
            .into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Serves the separate metrics address (`[metrics] listen`) over plain HTTP until the task is
/// dropped.
pub async fn serve_metrics(router: Router, listener: TcpListener) -> std::io::Result<()> {
    serve_metrics_with(router, listener, None, Duration::from_secs(10)).await
}

/// Serves the separate metrics address until the task is dropped: over TLS with the API's
/// certificate (and client-certificate policy) when `tls` is set.
pub async fn serve_metrics_with(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    Connections::new(router, tls, header_read_timeout)
        .accept_until(&listener, &graceful, std::future::pending::<()>())
        .await;
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
