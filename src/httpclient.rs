//! Outbound HTTP: one place that builds `reqwest` clients for providers and token requests,
//! so a private CA bundle and the timeouts apply to every outbound call alike.

use std::{path::Path, time::Duration};

/// Settings for an outbound client.
#[derive(Debug, Clone)]
pub struct OutboundTls {
    /// Extra trusted CA certificates (PEM), added to the platform's roots.
    pub ca_bundle_pem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("reading CA bundle {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate: {detail}")]
    BadCa { path: String, detail: String },
    #[error("building HTTP client: {0}")]
    Build(String),
}

/// Reads a PEM CA bundle from disk.
pub fn read_ca_bundle(path: &Path) -> Result<String, ClientBuildError> {
    std::fs::read_to_string(path).map_err(|source| ClientBuildError::ReadCa {
        path: path.display().to_string(),
        source,
    })
}

/// Builds a client: rustls, never follows redirects, bounded connect time, optional extra CAs.
/// `origin` names where the PEM came from, for error messages.
pub fn build_client(
    ca_bundle_pem: Option<(&str, &str)>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, ClientBuildError> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sessiongate/", env!("CARGO_PKG_VERSION")));
    if let Some((origin, pem)) = ca_bundle_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
            ClientBuildError::BadCa {
                path: origin.to_string(),
                detail: e.to_string(),
            }
        })?;
        if certs.is_empty() {
            return Err(ClientBuildError::BadCa {
                path: origin.to_string(),
                detail: "no certificates found".into(),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| ClientBuildError::Build(e.to_string()))
}

/// The `azure_core` transport of our token requests: our reqwest client, adding the current
/// span's `traceparent` to each request (the identity endpoints' calls join the action's trace).
#[derive(Debug, Clone)]
pub struct TracedTransport(pub reqwest::Client);

impl TracedTransport {
    /// As an `azure_core` transport option.
    pub fn transport(http: &reqwest::Client) -> azure_core::http::Transport {
        azure_core::http::Transport::new(std::sync::Arc::new(Self(http.clone())))
    }
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for TracedTransport {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        let mut trace = http::HeaderMap::new();
        crate::telemetry::inject(&mut trace);
        if trace.is_empty() {
            return self.0.execute_request(request).await;
        }
        let mut request = request.clone();
        for (name, value) in &trace {
            if let Ok(v) = value.to_str() {
                request.insert_header(name.as_str().to_owned(), v.to_owned());
            }
        }
        self.0.execute_request(&request).await
    }
}
