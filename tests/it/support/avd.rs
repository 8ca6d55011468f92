//! Shared helpers for the AVD tests: an ARM emulator on loopback HTTPS and an adapter
//! configured against it exactly as an operator would (custom cloud, CA bundle, secret file).

use super::TlsFiles;
use sessiongate::emulator::arm::{self, ArmEmulator, ArmEmulatorOptions, ArmState};
use sessiongate::emulator::common::EmulatorTls;
use sessiongate::providers::SessionProvider;
use sessiongate::providers::avd::{
    AvdCloud, AvdCredentialConfig, AvdPoolConfig, CustomCloud, build,
};
use std::{path::PathBuf, sync::Arc};

pub struct Env {
    pub emu: ArmEmulator,
    pub state: Arc<ArmState>,
    pub tls: EmulatorTls,
    /// Holds `ca_path` and `secret_path` (and whatever else a test writes).
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
    pub secret_path: PathBuf,
}

pub async fn start(opts: ArmEmulatorOptions) -> Env {
    let TlsFiles { tls, dir, ca_path } = TlsFiles::generate();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut emu = arm::start(listener, &tls, opts).await.unwrap();
    emu.set_ca_pem_path(ca_path.display().to_string());
    let secret_path = dir.path().join("secret");
    std::fs::write(&secret_path, format!("{}\n", emu.info().client_secret)).unwrap();
    let state = emu.state();
    Env {
        emu,
        state,
        tls,
        dir,
        ca_path,
        secret_path,
    }
}

impl Env {
    pub fn config(&self, pool: &str) -> AvdPoolConfig {
        let info = self.emu.info();
        AvdPoolConfig {
            subscription_id: info.subscription.clone(),
            resource_group: info.resource_group.clone(),
            host_pool: pool.to_string(),
            api_version: "2025-10-10".into(),
            cloud: AvdCloud::Custom(CustomCloud {
                arm_endpoint: info.base_url.clone(),
                authority_host: info.authority_host.clone(),
            }),
            credential: AvdCredentialConfig::ClientSecret {
                tenant_id: info.tenant.clone(),
                client_id: info.client_id.clone(),
                secret_env: None,
                secret_file: Some(self.secret_path.clone()),
            },
            ca_bundle: Some(self.ca_path.clone()),
            timeout_secs: 5,
            max_retries: 3,
            retry_budget_secs: 10,
            max_response_bytes: sessiongate::upstream::DEFAULT_MAX_RESPONSE_BYTES,
            pacing: Default::default(),
        }
    }

    pub fn provider(&self, pool: &str) -> Arc<dyn SessionProvider> {
        build(pool, &self.config(pool)).unwrap()
    }

    /// A raw HTTPS client trusting the emulator CA (for wire-level checks).
    pub fn raw_client(&self) -> reqwest::Client {
        super::client_trusting(self.tls.ca_pem())
    }

    /// Fetches a token for the emulator's own origin from the emulated token endpoint.
    pub async fn raw_token(&self) -> String {
        let scope = format!("{}/.default", self.emu.info().base_url);
        self.raw_token_for(&scope).await.unwrap()
    }

    /// Asks the emulated token endpoint for a token for `scope`: the token, or the error body.
    pub async fn raw_token_for(&self, scope: &str) -> Result<String, serde_json::Value> {
        let info = self.emu.info();
        let answer = super::client_credentials_answer(
            &self.raw_client(),
            &info.token_url,
            &info.client_id,
            &info.client_secret,
            scope,
        )
        .await;
        answer["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or(answer)
    }

    /// `{base}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DesktopVirtualization/hostPools/{pool}`
    pub fn pool_url(&self, pool: &str) -> String {
        let i = self.emu.info();
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DesktopVirtualization/hostPools/{pool}",
            i.base_url, i.subscription, i.resource_group
        )
    }
}

pub fn opts(hosts: usize, sessions: usize, page: usize) -> ArmEmulatorOptions {
    ArmEmulatorOptions {
        hosts_per_pool: hosts,
        sessions_per_host: sessions,
        page_size: page,
        throttling: None,
        ..Default::default()
    }
}
