//! Set-up shared by the integration tests: the gateway in front of the demo emulators
//! ([`app`]), each emulator with an adapter config pointing at it ([`avd`], [`classic`],
//! [`winrm`]), a throw-away Kerberos realm ([`kdc`]), fresh PostgreSQL databases ([`pg`]), the
//! audit store suite ([`audit`]) and the gateway-level audit helpers ([`gateway`]); below, the
//! small pieces several of them need.

pub mod app;
pub mod audit;
pub mod avd;
pub mod classic;
pub mod gateway;
pub mod kdc;
pub mod pg;
pub mod prereq;
pub mod process;
pub mod python;
pub mod ticketing;
pub mod winrm;

use sessiongate::auth::OidcConfig;
use sessiongate::emulator::{common::EmulatorTls, oidc::TestIssuer};
use std::path::PathBuf;
use std::time::Duration;

/// A port that was free a moment ago on 127.0.0.1 (for a child process that must be told
/// its port; in-process servers bind port 0 instead).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A response header as text (`None` when absent or not visible ASCII).
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A fresh emulator certificate authority, its `ca.pem` written into a new temp dir (the CA
/// bundle an operator would configure). Emulators and their config files share the dir.
pub struct TlsFiles {
    pub tls: EmulatorTls,
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
}

impl TlsFiles {
    pub fn generate() -> Self {
        let tls = EmulatorTls::generate().expect("emulator tls");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, tls.ca_pem()).expect("write ca.pem");
        Self { tls, dir, ca_path }
    }
}

/// An HTTPS client that trusts only `ca_pem` (wire-level checks against an emulator).
pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    sessiongate::httpclient::build_client(Some(("emulator-ca", ca_pem)), Duration::from_secs(5))
        .expect("http client")
}

/// The access token of a `client_credentials` grant at an emulated token endpoint.
pub async fn client_credentials_token(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    scope: &str,
) -> String {
    let answer = client_credentials_answer(http, token_url, client_id, client_secret, scope).await;
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {answer}"))
        .to_string()
}

/// The token endpoint's JSON answer to a client-credentials request (a token or an error).
pub async fn client_credentials_answer(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    scope: &str,
) -> serde_json::Value {
    http.post(token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json")
}

/// An OIDC config for `issuer` accepting `audiences`, trusting the issuer's CA through a CA
/// bundle file (keep the file as long as the config is used).
pub fn oidc_config(
    issuer: &TestIssuer,
    audiences: &[&str],
) -> (OidcConfig, tempfile::NamedTempFile) {
    use std::io::Write;
    let mut ca = tempfile::NamedTempFile::new().expect("temp file");
    ca.write_all(issuer.ca_pem().as_bytes()).expect("write CA");
    let mut config = OidcConfig::new(issuer.issuer(), audiences);
    config.ca_bundle = Some(ca.path().to_path_buf());
    (config, ca)
}
