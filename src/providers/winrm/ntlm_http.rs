//! NTLM is connection-bound: the NEGOTIATE → CHALLENGE → AUTHENTICATE exchange authenticates
//! one TCP/TLS connection, and later requests on that connection need no header. reqwest's
//! connection pool cannot promise "the same connection", so NTLM pools use their own HTTP/1.1
//! connections (hyper client over tokio-rustls), kept authenticated and reused. Each
//! connection's AUTHENTICATE carries the channel binding of its TLS session (the server
//! certificate's RFC 5929 `tls-server-end-point`, see [`super::cbt`]).
//!
//! Kerberos (`auth = "kerberos"`) uses the same connections: one leg, the AP-REQ under the
//! `Negotiate` scheme carries the first envelope (with the same channel binding), the host's
//! `200` carries the AP-REP that completes mutual authentication, and the connection stays
//! authenticated.

use super::gssapi;
use super::transport::WinRmError;
use super::{cbt, ntlm};
use base64::Engine;
use hyper::client::conn::http1::SendRequest;
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct NtlmHttp {
    /// Request target (`/wsman`) and Host header.
    path: String,
    host_header: String,
    /// Where the TCP connection goes.
    connect_host: String,
    connect_port: u16,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    mech: Mechanism,
    idle: Mutex<Vec<SendRequest<String>>>,
    /// NEGOTIATE legs sent (HTTP round trips that carry no envelope).
    handshakes: std::sync::atomic::AtomicU64,
}

/// Builds the TLS client config: platform roots plus the configured CA bundle.
pub fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut extra = Vec::new();
    if let Some(pem) = ca_pem {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            extra.push(c.map_err(|e| format!("bad PEM certificate: {e}"))?);
        }
        if extra.is_empty() {
            return Err("no certificates found".into());
        }
    }
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("TLS verifier: {e}"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn auth_header(scheme: &str, token: &[u8]) -> String {
    format!(
        "{scheme} {}",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

fn challenge_token(resp: &hyper::Response<hyper::body::Incoming>) -> Option<Vec<u8>> {
    resp.headers()
        .get_all(hyper::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(header_token)
}

/// The token of one `WWW-Authenticate` value (`Negotiate`, `NTLM` or `Kerberos` + base64).
pub(crate) fn header_token(value: &str) -> Option<Vec<u8>> {
    ["Negotiate ", "NTLM ", "Kerberos "]
        .iter()
        .find_map(|scheme| {
            let t = value.strip_prefix(scheme)?;
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        })
}

async fn read_body(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<(u16, String), WinRmError> {
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 64 * 1024 * 1024)
        .await
        .map_err(|e| WinRmError::Connection(format!("reading response: {e}")))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// How a new connection authenticates.
enum Mechanism {
    Ntlm {
        user: String,
        domain: String,
        password: SecretString,
    },
    Kerberos {
        creds: Arc<gssapi::CredentialCache>,
        spn: String,
    },
}

/// Kerberos settings of one host: the pool's shared credentials and the host's SPN.
#[derive(Clone)]
pub struct KerberosSettings {
    pub creds: Arc<gssapi::CredentialCache>,
    /// `HTTP/host[@REALM]` (or `HTTP@host`).
    pub spn: String,
}

pub struct NtlmSettings {
    pub endpoint: url::Url,
    pub tls_server_name: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub username: String,
    pub password: SecretString,
    /// Use Kerberos instead of NTLM.
    pub kerberos: Option<KerberosSettings>,
}

impl NtlmHttp {
    pub fn new(s: NtlmSettings) -> Result<Self, String> {
        let host = s
            .endpoint
            .host_str()
            .ok_or("endpoint has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = s.endpoint.port_or_known_default().unwrap_or(5986);
        let name = s.tls_server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| format!("invalid TLS server name '{name}': {e}"))?;
        let mech = match s.kerberos {
            Some(k) => Mechanism::Kerberos {
                creds: k.creds,
                spn: k.spn,
            },
            None => {
                let (user, domain) = ntlm::split_user(&s.username);
                Mechanism::Ntlm {
                    user,
                    domain,
                    password: s.password,
                }
            }
        };
        let mut path = s.endpoint.path().to_string();
        if let Some(q) = s.endpoint.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Self {
            path,
            host_header: match s.endpoint.port() {
                Some(p) => format!("{name}:{p}"),
                None => name.clone(),
            },
            connect_host: host,
            connect_port: port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(s.tls),
            connect_timeout: s.connect_timeout,
            mech,
            idle: Mutex::new(Vec::new()),
            handshakes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn request(
        &self,
        body: String,
        auth: Option<String>,
    ) -> Result<hyper::Request<String>, WinRmError> {
        let mut b = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(self.path.as_str())
            .header(hyper::header::HOST, self.host_header.as_str())
            .header(
                hyper::header::CONTENT_TYPE,
                "application/soap+xml;charset=UTF-8",
            )
            .header(
                hyper::header::USER_AGENT,
                concat!("sessiongate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = auth {
            b = b.header(hyper::header::AUTHORIZATION, a);
        }
        if let Some(h) = b.headers_mut() {
            crate::telemetry::inject(h);
        }
        b.body(body)
            .map_err(|e| WinRmError::Protocol(format!("building request: {e}")))
    }

    /// Opens a TLS connection; returns it with its channel-binding application data
    /// (`None` when the server certificate's signature algorithm defines no RFC 5929 hash).
    async fn connect(&self) -> Result<(SendRequest<String>, Option<Vec<u8>>), WinRmError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((self.connect_host.as_str(), self.connect_port)),
        )
        .await
        .map_err(|_| WinRmError::Unreachable("connect timed out".into()))?
        .map_err(|e| WinRmError::Unreachable(e.to_string()))?;
        let tls = tokio::time::timeout(
            self.connect_timeout,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| WinRmError::Tls("TLS handshake timed out".into()))?
        .map_err(|e| WinRmError::Tls(e.to_string()))?;
        let binding = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => match cbt::application_data(cert.as_ref()) {
                Ok(app) => Some(app),
                Err(e) => {
                    tracing::debug!(error = %e, "no TLS channel binding for this server certificate");
                    None
                }
            },
            None => None,
        };
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| WinRmError::Connection(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, binding))
    }

    async fn send(
        sender: &mut SendRequest<String>,
        req: hyper::Request<String>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, WinRmError> {
        sender
            .ready()
            .await
            .map_err(|e| WinRmError::Connection(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| WinRmError::Connection(e.to_string()))
    }

    /// Opens a connection and authenticates it; the AUTHENTICATE leg carries `body`.
    async fn connect_and_send(
        &self,
        body: String,
    ) -> Result<(SendRequest<String>, (u16, String)), WinRmError> {
        let (user, domain, password) = match &self.mech {
            Mechanism::Ntlm {
                user,
                domain,
                password,
            } => (user, domain, password),
            Mechanism::Kerberos { creds, spn } => {
                return self.kerberos_connect_and_send(creds, spn, body).await;
            }
        };
        let (mut sender, binding) = self.connect().await?;
        let req = self.request(
            body.clone(),
            Some(auth_header("Negotiate", &ntlm::negotiate())),
        )?;
        self.handshakes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = Self::send(&mut sender, req).await?;
        if resp.status().as_u16() != 401 {
            let st = resp.status().as_u16();
            let _ = read_body(resp).await;
            return Err(WinRmError::Protocol(format!(
                "expected an NTLM challenge (HTTP 401), got HTTP {st}"
            )));
        }
        let Some(token) = challenge_token(&resp) else {
            let _ = read_body(resp).await;
            return Err(WinRmError::Auth);
        };
        let _ = read_body(resp).await;
        let ch = ntlm::parse_challenge(&token).map_err(WinRmError::Protocol)?;
        let client_challenge: [u8; 8] = rand::random();
        let msg = ntlm::authenticate(
            user,
            domain,
            password.expose_secret(),
            &ch,
            client_challenge,
            binding
                .as_deref()
                .map(cbt::ntlm_channel_binding_hash)
                .as_ref(),
        );
        let req = self.request(body, Some(auth_header("Negotiate", &msg)))?;
        let resp = Self::send(&mut sender, req).await?;
        if resp.status().as_u16() == 401 {
            let _ = read_body(resp).await;
            return Err(WinRmError::Auth);
        }
        let out = read_body(resp).await?;
        Ok((sender, out))
    }

    /// Opens a connection and authenticates it with Kerberos: the AP-REQ rides on the
    /// request that carries `body`; the answer must carry the AP-REP (mutual auth).
    async fn kerberos_connect_and_send(
        &self,
        creds: &Arc<gssapi::CredentialCache>,
        spn: &str,
        body: String,
    ) -> Result<(SendRequest<String>, (u16, String)), WinRmError> {
        let (mut sender, app_data) = self.connect().await?;
        let creds = creds.clone();
        let spn_owned = spn.to_string();
        let started = tokio::task::spawn_blocking(move || {
            let cred = creds.get().map_err(|e| (true, e))?;
            match gssapi::Initiator::start(cred, &spn_owned, app_data.clone()) {
                Ok(v) => Ok(v),
                // Our tickets expired early (clock change, KDC policy): try once afresh.
                Err(e) if e.is_expired() => {
                    creds.invalidate();
                    let cred = creds.get().map_err(|e| (true, e))?;
                    gssapi::Initiator::start(cred, &spn_owned, app_data).map_err(|e| (false, e))
                }
                Err(e) => Err((false, e)),
            }
        })
        .await
        .map_err(|e| WinRmError::Kerberos(format!("Kerberos task failed: {e}")))?;
        let (mut initiator, token) = started.map_err(|(acquiring, e)| {
            if acquiring && !e.is_credentials() {
                WinRmError::Kerberos(format!("cannot obtain Kerberos tickets: {e}"))
            } else if acquiring {
                WinRmError::KerberosCredentials(format!(
                    "the KDC refused the configured credentials: {e}"
                ))
            } else {
                WinRmError::Kerberos(format!("cannot get a service ticket for {spn}: {e}"))
            }
        })?;
        let req = self.request(body, Some(auth_header("Negotiate", &token)))?;
        let resp = Self::send(&mut sender, req).await?;
        if resp.status().as_u16() == 401 {
            let _ = read_body(resp).await;
            return Err(WinRmError::Auth);
        }
        let reply = challenge_token(&resp);
        let out = read_body(resp).await?;
        let Some(reply) = reply else {
            return Err(WinRmError::Kerberos(
                "the host answered without a Kerberos reply token: mutual authentication failed"
                    .into(),
            ));
        };
        let done = tokio::task::spawn_blocking(move || initiator.finish(&reply))
            .await
            .map_err(|e| WinRmError::Kerberos(format!("Kerberos task failed: {e}")))?;
        done.map_err(|e| {
            WinRmError::Kerberos(format!("mutual authentication with the host failed: {e}"))
        })?;
        Ok((sender, out))
    }

    /// HTTP round trips spent on NTLM NEGOTIATE legs.
    pub fn handshake_round_trips(&self) -> u64 {
        self.handshakes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one envelope on an authenticated connection; returns status and body.
    pub async fn exchange(&self, body: String) -> Result<(u16, String), WinRmError> {
        let reused = loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(s) if s.is_closed() => continue,
                other => break other,
            }
        };
        if let Some(mut sender) = reused
            && sender.ready().await.is_ok()
        {
            // Once sent, a request is never sent again (it may have run): errors are returned.
            let req = self.request(body.clone(), None)?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| WinRmError::Connection(e.to_string()))?;
            if resp.status().as_u16() != 401 {
                let out = read_body(resp).await?;
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sender);
                return Ok(out);
            }
            // The server no longer considers this connection authenticated (the request was
            // refused, not run): authenticate a new connection below.
            let _ = read_body(resp).await;
        }
        let (sender, out) = self.connect_and_send(body).await?;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
        Ok(out)
    }
}
