//! Shared set-up for the WVD classic integration tests: an emulator on loopback HTTPS and
//! adapter configs pointing at it.

use super::TlsFiles;
use sessiongate::emulator::wvd_classic::{
    self, ClassicEmulator, ClassicEmulatorOptions, ClassicState,
};
use sessiongate::providers::SessionProvider;
use sessiongate::providers::wvd_classic::{ClassicCredentialConfig, ClassicPoolConfig, build};
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub const POOL: &str = "classic-hp1";

pub struct Env {
    pub emu: ClassicEmulator,
    /// Holds `ca.pem` and the secret files the configs point at.
    pub dir: TempDir,
    pub ca_pem: String,
    ca_path: PathBuf,
}

impl Env {
    pub async fn start(opts: ClassicEmulatorOptions) -> Self {
        let TlsFiles { tls, dir, ca_path } = TlsFiles::generate();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let emu = wvd_classic::start(listener, &tls, opts)
            .await
            .expect("start");
        Self {
            emu,
            dir,
            ca_pem: tls.ca_pem().to_string(),
            ca_path,
        }
    }

    pub async fn default() -> Self {
        Self::start(ClassicEmulatorOptions::default()).await
    }

    pub fn state(&self) -> Arc<ClassicState> {
        self.emu.state()
    }

    pub fn base(&self) -> String {
        self.emu.base_url().to_string()
    }

    /// An adapter config for `host_pool` using the role-holding principal with `secret`.
    pub fn config_with(&self, client_id: &str, secret: &str, host_pool: &str) -> ClassicPoolConfig {
        let info = self.emu.info();
        let secret_file = self
            .dir
            .path()
            .join(format!("secret-{client_id}-{}", secret.len()));
        std::fs::write(&secret_file, secret).expect("write secret");
        let mut cfg = ClassicPoolConfig::new(
            &info.rds_tenant,
            host_pool,
            ClassicCredentialConfig::ClientSecret {
                tenant_id: info.aad_tenant.clone(),
                client_id: client_id.to_string(),
                secret_env: None,
                secret_file: Some(secret_file),
            },
        );
        cfg.broker_url = info.broker_url.clone();
        cfg.authority_host = info.authority_host.clone();
        cfg.ca_bundle = Some(self.ca_path.clone());
        cfg.timeout_secs = 10;
        cfg.retry_budget_secs = 10;
        cfg
    }

    pub fn config(&self) -> ClassicPoolConfig {
        let info = self.emu.info();
        self.config_with(&info.client_id, &info.client_secret, POOL)
    }

    pub fn provider_with(&self, cfg: &ClassicPoolConfig) -> Arc<dyn SessionProvider> {
        build("legacy", cfg).expect("build provider")
    }

    pub fn provider(&self) -> Arc<dyn SessionProvider> {
        self.provider_with(&self.config())
    }

    /// A raw HTTP client trusting the emulator CA.
    pub fn http(&self) -> reqwest::Client {
        super::client_trusting(&self.ca_pem)
    }

    /// A raw bearer token for the role-holding principal.
    pub async fn token(&self) -> String {
        let info = self.emu.info();
        super::client_credentials_token(
            &self.http(),
            &info.token_url,
            &info.client_id,
            &info.client_secret,
            wvd_classic::RDINFRA_SCOPE,
        )
        .await
    }

    /// `{broker}/RdsManagement/V1/TenantGroups/Default%20Tenant%20Group/Tenants/{t}/HostPools/{POOL}`
    pub fn pool_url(&self) -> String {
        format!(
            "{}/RdsManagement/V1/TenantGroups/Default%20Tenant%20Group/Tenants/{}/HostPools/{POOL}",
            self.base(),
            self.emu.info().rds_tenant
        )
    }
}

pub fn host(name: &str) -> sessiongate::domain::HostName {
    sessiongate::domain::HostName::parse(name).expect("host name")
}
