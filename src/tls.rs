//! TLS serving (`[server.tls]`): rustls on aws-lc-rs, HTTP/2 and HTTP/1.1 by ALPN, optional
//! client certificates, and certificate reload without restart.
//!
//! [`TlsServer`] holds the current `rustls::ServerConfig` behind a lock; every accepted
//! connection takes the config current at that moment, so a reload changes what new
//! connections get and leaves established ones alone. The files (certificate chain, key, and
//! client CA bundle) are read whole and hashed every `reload_secs` and on SIGHUP; when the
//! hash changed, a new config is built from them and swapped in. A set of files that does not
//! load (half-written, key not matching the certificate, no certificate) is logged as an
//! error, counted in `sessiongate_tls_reloads_total{outcome="error"}`, and the previous config
//! stays in use; the next change is tried again.

use crate::{
    auth::PeerCert,
    config::{ConfigError, Key},
};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
    sign::{CertifiedKey, SingleCertAndKey},
};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};
use tokio::net::TcpStream;

/// `[server.tls]`. Absent: plain HTTP (the default; also right behind a TLS-terminating proxy).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain: the server certificate first, then intermediates.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the server certificate.
    pub key_file: PathBuf,
    /// How often the files are checked for changes, seconds; 0 = only on SIGHUP.
    #[serde(default = "default_reload_secs")]
    pub reload_secs: u64,
    /// PEM bundle of the CAs that issue client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// PEM certificate revocation lists of those CAs: a client certificate listed in one is
    /// refused in the handshake. Reloaded like the other files (publish a new CRL, and new
    /// connections follow it).
    #[serde(default)]
    pub client_crl_file: Option<PathBuf>,
    /// Whether clients present a certificate: `none` (default), `optional`, `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Lowest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

fn default_reload_secs() -> u64 {
    10
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; a client without one still connects (and authenticates
    /// with a header), a certificate that does not verify ends the handshake.
    Optional,
    /// A client without a verifying certificate is refused in the handshake.
    Required,
}

/// `server.tls.min_version`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            F(f64),
        }
        let s = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::F(f) => format!("{f}"),
        };
        match s.trim() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(serde::de::Error::custom(format!(
                "'{other}' is not a TLS version: use \"1.2\" or \"1.3\""
            ))),
        }
    }
}

/// Why a set of files did not load: the `server.tls` field at fault and what is wrong
/// (naming the file).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadError {
    field: &'static str,
    message: String,
}

impl LoadError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    fn config_error(&self) -> ConfigError {
        Key::root("server")
            .field("tls")
            .field(self.field)
            .err(self.message.clone())
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server.tls.{}: {}", self.field, self.message)
    }
}

/// The files' bytes, read in one go.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
}

impl Files {
    fn read(cfg: &TlsConfig) -> Result<Self, LoadError> {
        let read = |field: &'static str, p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| LoadError::new(field, format!("cannot read {}: {e}", p.display())))
        };
        Ok(Self {
            cert: read("cert_file", &cfg.cert_file)?,
            key: read("key_file", &cfg.key_file)?,
            ca: match &cfg.client_ca_file {
                Some(p) => Some(read("client_ca_file", p)?),
                None => None,
            },
            crl: match &cfg.client_crl_file {
                Some(p) => Some(read("client_crl_file", p)?),
                None => None,
            },
        })
    }

    /// One hash over the files (length-prefixed, so moving bytes between them counts).
    fn stamp(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            Some(&self.cert),
            Some(&self.key),
            self.ca.as_ref(),
            self.crl.as_ref(),
        ] {
            match part {
                Some(b) => {
                    h.update((b.len() as u64 + 1).to_be_bytes());
                    h.update(b);
                }
                None => h.update(0u64.to_be_bytes()),
            }
        }
        h.finalize().into()
    }
}

/// What the served certificate says, for logs, warnings and the expiry gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub subject: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl LeafInfo {
    /// A warning when the certificate is outside its validity period now (it is still served:
    /// clients decide).
    pub fn warning(&self, cert_file: &std::path::Path) -> Option<String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let when = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| t.to_string())
        };
        if now > self.not_after {
            Some(format!(
                "server.tls.cert_file: the certificate in {} ({}) expired at {}; clients will refuse it",
                cert_file.display(),
                self.subject,
                when(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "server.tls.cert_file: the certificate in {} ({}) is not valid before {}",
                cert_file.display(),
                self.subject,
                when(self.not_before)
            ))
        } else {
            None
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds a server config from the files' bytes.
fn build(cfg: &TlsConfig, files: &Files) -> Result<(Arc<ServerConfig>, LeafInfo), LoadError> {
    let cert_path = cfg.cert_file.display();
    let key_path = cfg.key_file.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::new("cert_file", format!("{cert_path}: not PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(LoadError::new(
            "cert_file",
            format!("{cert_path} holds no certificate (expected PEM 'BEGIN CERTIFICATE')"),
        ));
    };
    let info = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, c)) => LeafInfo {
            subject: c.subject().to_string(),
            serial: c.raw_serial_as_string(),
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
        },
        Err(e) => {
            return Err(LoadError::new(
                "cert_file",
                format!("{cert_path}: the first certificate cannot be read: {e}"),
            ));
        }
    };
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        LoadError::new(
            "key_file",
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => format!(
                    "{key_path} holds no private key (expected PEM 'BEGIN PRIVATE KEY', 'BEGIN RSA PRIVATE KEY' or 'BEGIN EC PRIVATE KEY')"
                ),
                other => format!("{key_path}: not a PEM private key: {other}"),
            },
        )
    })?;
    let provider = provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => LoadError::new(
            "key_file",
            format!("the private key in {key_path} does not match the certificate in {cert_path}"),
        ),
        other => LoadError::new(
            "key_file",
            format!("{key_path}: the key cannot be used: {other}"),
        ),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| LoadError::new("min_version", e.to_string()))?;
    let verifier = match (cfg.client_auth, &files.ca) {
        (ClientAuth::None, _) => WebPkiClientVerifier::no_client_auth(),
        (_, None) => {
            return Err(LoadError::new(
                "client_ca_file",
                "must be set when client_auth is 'optional' or 'required'",
            ));
        }
        (mode, Some(ca)) => {
            let ca_path = cfg
                .client_ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| {
                    LoadError::new("client_ca_file", format!("{ca_path}: not PEM: {e}"))
                })?;
                roots.add(c).map_err(|e| {
                    LoadError::new(
                        "client_ca_file",
                        format!("{ca_path}: a certificate cannot be used as a CA: {e}"),
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(LoadError::new(
                    "client_ca_file",
                    format!("{ca_path} holds no certificate"),
                ));
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let b = match &files.crl {
                None => b,
                Some(pem) => {
                    let crl_path = cfg
                        .client_crl_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            LoadError::new("client_crl_file", format!("{crl_path}: not PEM: {e}"))
                        })?;
                    if crls.is_empty() {
                        return Err(LoadError::new(
                            "client_crl_file",
                            format!("{crl_path} holds no CRL"),
                        ));
                    }
                    // Every certificate of the chain is checked against its issuer's CRL (a
                    // root's CRL revoking an intermediate cuts off what it issued); a CA of the
                    // bundle without a CRL here is not checked (its certificates pass).
                    b.with_crls(crls).allow_unknown_revocation_status()
                }
            };
            let b = if mode == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| match e {
                rustls::server::VerifierBuilderError::InvalidCrl(e) => LoadError::new(
                    "client_crl_file",
                    format!(
                        "{}: not a usable CRL: {e:?}",
                        cfg.client_crl_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                ),
                e => LoadError::new("client_ca_file", format!("{ca_path}: {e}")),
            })?
        }
    };
    let mut server = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(server), info))
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last seen (or as last refused).
    Unchanged,
    /// New connections get the new certificate.
    Reloaded(LeafInfo),
    /// The files changed but do not load; the previous config stays.
    Failed(String),
}

struct Seen {
    /// Hash of the files last loaded or last refused.
    stamp: [u8; 32],
    leaf: LeafInfo,
}

/// The TLS side of a listener: the current server config and what it was built from.
pub struct TlsServer {
    cfg: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads the files `cfg` names; errors name the key and the file.
    pub fn new(cfg: &TlsConfig) -> Result<Self, ConfigError> {
        if cfg.reload_secs > 86_400 {
            return Err(Key::root("server")
                .field("tls")
                .field("reload_secs")
                .err("must be 0-86400 (0: reload only on SIGHUP)"));
        }
        if cfg.client_auth == ClientAuth::None && cfg.client_crl_file.is_some() {
            return Err(Key::root("server")
                .field("tls")
                .field("client_crl_file")
                .err("is set but client_auth is 'none': set client_auth to 'optional' or 'required', or remove client_crl_file"));
        }
        if cfg.client_auth == ClientAuth::None && cfg.client_ca_file.is_some() {
            return Err(Key::root("server")
                .field("tls")
                .field("client_ca_file")
                .err("is set but client_auth is 'none': set client_auth to 'optional' or 'required', or remove client_ca_file"));
        }
        let files = Files::read(cfg).map_err(|e| e.config_error())?;
        let (config, leaf) = build(cfg, &files).map_err(|e| e.config_error())?;
        Ok(Self {
            cfg: cfg.clone(),
            current: RwLock::new(config),
            seen: Mutex::new(Seen {
                stamp: files.stamp(),
                leaf,
            }),
        })
    }

    /// The settings this server was built from.
    pub fn settings(&self) -> &TlsConfig {
        &self.cfg
    }

    /// The config new connections get now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the served certificate says.
    pub fn leaf(&self) -> LeafInfo {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leaf
            .clone()
    }

    /// Warnings about the served certificate (expired, not yet valid).
    pub fn warnings(&self) -> Vec<String> {
        self.leaf()
            .warning(&self.cfg.cert_file)
            .into_iter()
            .collect()
    }

    /// Re-reads the files; when they changed since last seen (or `force`), builds and swaps
    /// in a new config. Blocking (file reads): call from a blocking context.
    pub fn reload(&self, force: bool) -> Reload {
        // A file that cannot be read is stamped by the error, so it is reported once.
        let (stamp, files) = match Files::read(&self.cfg) {
            Ok(f) => (f.stamp(), Ok(f)),
            Err(e) => (Sha256::digest(e.to_string().as_bytes()).into(), Err(e)),
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !force && stamp == seen.stamp {
            return Reload::Unchanged;
        }
        seen.stamp = stamp;
        let files = match files {
            Ok(f) => f,
            Err(e) => return Reload::Failed(e.to_string()),
        };
        match build(&self.cfg, &files) {
            Ok((config, leaf)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                seen.leaf = leaf.clone();
                Reload::Reloaded(leaf)
            }
            Err(e) => Reload::Failed(e.to_string()),
        }
    }

    /// [`TlsServer::reload`] off the async threads, logged and counted.
    async fn reload_logged(self: &Arc<Self>, force: bool) {
        let me = self.clone();
        let r = match tokio::task::spawn_blocking(move || me.reload(force)).await {
            Ok(r) => r,
            Err(e) => Reload::Failed(format!("the reload task failed: {e}")),
        };
        match r {
            Reload::Unchanged => {}
            Reload::Reloaded(leaf) => {
                crate::metrics::tls_reload(true);
                crate::metrics::tls_certificate_not_after(leaf.not_after);
                tracing::info!(
                    tls.subject = %leaf.subject,
                    tls.serial = %leaf.serial,
                    tls.not_after = leaf.not_after,
                    "TLS certificate reloaded; new connections get it"
                );
                if let Some(w) = leaf.warning(&self.cfg.cert_file) {
                    tracing::warn!("{w}");
                }
            }
            Reload::Failed(e) => {
                crate::metrics::tls_reload(false);
                tracing::error!(
                    error = %e,
                    "TLS files changed but could not be loaded; the previous certificate stays in use"
                );
            }
        }
    }

    /// Logs the start-up warnings, sets the expiry gauge and starts watching the files:
    /// every `reload_secs` (unless 0) and on SIGHUP. The signal handler is installed before
    /// this returns. Abort the handle to stop.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        for w in self.warnings() {
            tracing::warn!("{w}");
        }
        crate::metrics::tls_certificate_not_after(self.leaf().not_after);
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; TLS files reload on the poll only");
                None
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = (me.cfg.reload_secs > 0).then(|| {
                let every = Duration::from_secs(me.cfg.reload_secs);
                let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            loop {
                let polled = async {
                    match tick.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(unix)]
                let signalled = async {
                    match hup.as_mut() {
                        Some(s) => {
                            if s.recv().await.is_none() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<()>();
                let force = tokio::select! {
                    () = polled => false,
                    () = signalled => {
                        tracing::info!("SIGHUP: reloading the TLS files");
                        true
                    }
                };
                me.reload_logged(force).await;
            }
        })
    }

    /// The TLS handshake of one accepted connection, bounded by `timeout`; with the peer's
    /// verified certificate when the client presented one.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<(
        tokio_rustls::server::TlsStream<TcpStream>,
        Option<Arc<PeerCert>>,
    )> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| Arc::new(PeerCert::from_der(leaf)));
        Ok((stream, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
        ca_pem: String,
    }

    fn self_signed(cn: &str) -> (String, String) {
        let k = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let c = p.self_signed(&k).unwrap();
        (c.pem(), k.serialize_pem())
    }

    fn pki() -> Pki {
        let (ca_pem, _) = self_signed("client CA");
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem,
        }
    }

    fn cfg(p: &Pki, cert: &str, key: &str) -> TlsConfig {
        let d = p.dir.path();
        std::fs::write(d.join("cert.pem"), cert).unwrap();
        std::fs::write(d.join("key.pem"), key).unwrap();
        std::fs::write(d.join("ca.pem"), &p.ca_pem).unwrap();
        TlsConfig {
            cert_file: d.join("cert.pem"),
            key_file: d.join("key.pem"),
            reload_secs: 10,
            client_ca_file: None,
            client_crl_file: None,
            client_auth: ClientAuth::None,
            min_version: TlsVersion::V1_2,
        }
    }

    #[test]
    fn settings_parse_with_defaults() {
        let c: TlsConfig = toml::from_str("cert_file = \"c\"\nkey_file = \"k\"").unwrap();
        assert_eq!(c.reload_secs, 10);
        assert_eq!(c.client_auth, ClientAuth::None);
        assert_eq!(c.min_version, TlsVersion::V1_2);
        let c: TlsConfig = toml::from_str(
            "cert_file = \"c\"\nkey_file = \"k\"\nmin_version = 1.3\nclient_auth = \"required\"",
        )
        .unwrap();
        assert_eq!(c.min_version, TlsVersion::V1_3);
        assert_eq!(c.client_auth, ClientAuth::Required);
        let c: TlsConfig =
            toml::from_str("cert_file = \"c\"\nkey_file = \"k\"\nmin_version = \"1.2\"").unwrap();
        assert_eq!(c.min_version, TlsVersion::V1_2);
        assert!(
            toml::from_str::<TlsConfig>(
                "cert_file = \"c\"\nkey_file = \"k\"\nmin_version = \"1.1\""
            )
            .is_err()
        );
        assert!(toml::from_str::<TlsConfig>("cert_file = \"c\"\nkey_file = \"k\"\nx = 1").is_err());
    }

    #[test]
    fn load_errors_name_the_key_and_the_file() {
        let p = pki();
        let (cert, key) = self_signed("a");
        let (_, other_key) = self_signed("b");
        let ok = cfg(&p, &cert, &key);
        let s = TlsServer::new(&ok).unwrap();
        assert!(s.leaf().subject.contains("CN=a"), "{:?}", s.leaf());
        assert!(s.warnings().is_empty());

        let mut missing = ok.clone();
        missing.cert_file = p.dir.path().join("nope.pem");
        let e = TlsServer::new(&missing).unwrap_err();
        assert_eq!(e.key, "server.tls.cert_file");
        assert!(e.message.contains("nope.pem"), "{e}");

        let mismatch = cfg(&p, &cert, &other_key);
        let e = TlsServer::new(&mismatch).unwrap_err();
        assert_eq!(e.key, "server.tls.key_file");
        assert!(e.message.contains("does not match"), "{e}");
        assert!(
            e.message.contains("key.pem") && e.message.contains("cert.pem"),
            "{e}"
        );

        let no_key = cfg(&p, &cert, &cert);
        let e = TlsServer::new(&no_key).unwrap_err();
        assert_eq!(e.key, "server.tls.key_file");
        assert!(e.message.contains("no private key"), "{e}");

        let no_cert = cfg(&p, &key, &key);
        let e = TlsServer::new(&no_cert).unwrap_err();
        assert_eq!(e.key, "server.tls.cert_file");
        assert!(e.message.contains("no certificate"), "{e}");

        let mut need_ca = cfg(&p, &cert, &key);
        need_ca.client_auth = ClientAuth::Required;
        assert_eq!(
            TlsServer::new(&need_ca).unwrap_err().key,
            "server.tls.client_ca_file"
        );
        need_ca.client_ca_file = Some(p.dir.path().join("ca.pem"));
        TlsServer::new(&need_ca).unwrap();
        need_ca.client_ca_file = Some(p.dir.path().join("key.pem"));
        let e = TlsServer::new(&need_ca).unwrap_err();
        assert_eq!(e.key, "server.tls.client_ca_file");
        assert!(e.message.contains("no certificate"), "{e}");

        let mut ca_unused = cfg(&p, &cert, &key);
        ca_unused.client_ca_file = Some(p.dir.path().join("ca.pem"));
        assert_eq!(
            TlsServer::new(&ca_unused).unwrap_err().key,
            "server.tls.client_ca_file"
        );
        let mut crl_unused = cfg(&p, &cert, &key);
        crl_unused.client_crl_file = Some(p.dir.path().join("ca.pem"));
        assert_eq!(
            TlsServer::new(&crl_unused).unwrap_err().key,
            "server.tls.client_crl_file"
        );
        // A file holding no CRL (here: a certificate) is named.
        need_ca.client_ca_file = Some(p.dir.path().join("ca.pem"));
        need_ca.client_crl_file = Some(p.dir.path().join("ca.pem"));
        let e = TlsServer::new(&need_ca).unwrap_err();
        assert_eq!(e.key, "server.tls.client_crl_file");
        assert!(e.message.contains("no CRL"), "{e}");
        // A CRL label over bytes that are no CRL is named as the CRL file, not the CA file.
        std::fs::write(
            p.dir.path().join("bad.crl"),
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        need_ca.client_crl_file = Some(p.dir.path().join("bad.crl"));
        let e = TlsServer::new(&need_ca).unwrap_err();
        assert_eq!(e.key, "server.tls.client_crl_file");
        assert!(e.message.contains("bad.crl"), "{e}");
        let mut slow = cfg(&p, &cert, &key);
        slow.reload_secs = 100_000;
        assert_eq!(
            TlsServer::new(&slow).unwrap_err().key,
            "server.tls.reload_secs"
        );
    }

    #[test]
    fn expired_certificate_loads_with_a_warning() {
        let p = pki();
        let k = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let c = params.self_signed(&k).unwrap();
        let s = TlsServer::new(&cfg(&p, &c.pem(), &k.serialize_pem())).unwrap();
        let w = s.warnings();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("expired") && w[0].contains("cert.pem"),
            "{w:?}"
        );
    }

    #[test]
    fn reload_swaps_on_change_and_keeps_the_old_on_a_broken_file() {
        let p = pki();
        let (cert, key) = self_signed("first");
        let c = cfg(&p, &cert, &key);
        let s = TlsServer::new(&c).unwrap();
        assert_eq!(s.reload(false), Reload::Unchanged);
        let before = s.current();

        // Half-written: a new certificate with the old key.
        let (cert2, key2) = self_signed("second");
        std::fs::write(&c.cert_file, &cert2).unwrap();
        assert!(matches!(s.reload(false), Reload::Failed(e) if e.contains("does not match")));
        assert!(Arc::ptr_eq(&before, &s.current()), "old config kept");
        assert!(s.leaf().subject.contains("first"));
        // Refused once, not retried until something changes (or forced).
        assert_eq!(s.reload(false), Reload::Unchanged);

        std::fs::write(&c.key_file, &key2).unwrap();
        match s.reload(false) {
            Reload::Reloaded(l) => assert!(l.subject.contains("second"), "{l:?}"),
            other => panic!("{other:?}"),
        }
        assert!(!Arc::ptr_eq(&before, &s.current()));
        assert!(matches!(s.reload(true), Reload::Reloaded(_)));

        std::fs::remove_file(&c.key_file).unwrap();
        assert!(matches!(s.reload(false), Reload::Failed(e) if e.contains("server.tls.key_file")));
        assert_eq!(
            s.reload(false),
            Reload::Unchanged,
            "a lasting error is reported once"
        );
        assert!(s.leaf().subject.contains("second"));
    }
}
