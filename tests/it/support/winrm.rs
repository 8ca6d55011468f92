//! Shared set-up for the WinRM integration tests: an emulator on loopback and a pool config
//! pointing at it (CA bundle and password written to a temp dir).

use super::TlsFiles;
use sessiongate::emulator::winrm::{self, Flavour, WinRmEmulator, WinRmEmulatorOptions};
use sessiongate::providers::winrm::{CredentialConfig, HostConfig, OnPremPoolConfig, WinRmAuth};
use std::time::{Duration, Instant};

pub const GATEWAY: &str = "CONTOSO\\svc-gateway";

pub struct Env {
    pub emu: WinRmEmulator,
    pub dir: tempfile::TempDir,
    pub cfg: OnPremPoolConfig,
    pub ca_path: std::path::PathBuf,
}

pub fn host_names(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("rdsh-{i:03}.contoso.test"))
        .collect()
}

pub async fn setup(
    flavour: Flavour,
    hosts: usize,
    tweak: impl FnOnce(&mut WinRmEmulatorOptions),
) -> Env {
    let mut opts = WinRmEmulatorOptions {
        flavour,
        hosts: host_names(hosts),
        sessions_per_host: 3,
        ..Default::default()
    };
    tweak(&mut opts);
    let TlsFiles { tls, dir, ca_path } = TlsFiles::generate();
    let emu = winrm::start(&tls, opts.clone()).await.unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", opts.password)).unwrap();
    let host_cfgs = emu
        .info()
        .hosts
        .iter()
        .map(|h| HostConfig {
            endpoint: Some(h.endpoint.clone()),
            ..HostConfig::named(&h.name)
        })
        .collect();
    let mut cfg = OnPremPoolConfig::new(
        host_cfgs,
        CredentialConfig {
            username: opts.username.clone(),
            password_env: None,
            password_file: Some(pw),
        },
    );
    cfg.auth = WinRmAuth::Basic;
    cfg.ca_bundle = Some(ca_path.clone());
    cfg.operation_timeout_secs = 5;
    cfg.connect_timeout_secs = 2;
    cfg.gateway_account = Some(GATEWAY.into());
    Env {
        emu,
        dir,
        cfg,
        ca_path,
    }
}

/// Waits until `f` holds (background Signals finish after the action returned).
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
