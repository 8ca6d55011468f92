//! Interoperability: the standard Python WinRM client (pywinrm, Basic and NTLM over HTTPS,
//! NTLM with its TLS channel binding) runs commands on the emulated host. Skips (loudly) when
//! python3 or pywinrm is missing.

mod winrm_support;

use sessiongate::emulator::winrm::{CbtHardening, Flavour};
use sessiongate::providers::winrm::scripts;
use winrm_support::setup;

const PY: &str = r#"
import json, sys
import winrm
endpoint, user, pw, ca, script_path, transport = sys.argv[1:7]
s = winrm.Session(endpoint, auth=(user, pw), transport=transport,
                  server_cert_validation='validate', ca_trust_path=ca,
                  operation_timeout_sec=1, read_timeout_sec=10)
with open(script_path, newline='') as f:
    script = f.read()
out = {}
r = s.run_ps(script)
out['ps'] = [r.status_code, r.std_out.decode('utf-8'), r.std_err.decode('utf-8', 'replace')]
r = s.run_cmd('hostname')
out['cmd'] = [r.status_code, r.std_out.decode('utf-8'), r.std_err.decode('utf-8', 'replace')]
r = s.run_ps('Get-Process')
out['bad'] = [r.status_code, r.std_out.decode('utf-8'), r.std_err.decode('utf-8', 'replace')]
print(json.dumps(out))
"#;

fn pywinrm_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import winrm"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn run_pywinrm(transport: &str, user_prefix: &str, cbt: CbtHardening) {
    if !pywinrm_available() {
        eprintln!(
            "\n*** SKIPPED pywinrm test ({transport}): python3 with pywinrm is not installed (pip install pywinrm) ***\n"
        );
        return;
    }
    // Commands take 1.5 s while pywinrm's OperationTimeout is 1 s: it must poll through w:TimedOut.
    let env = setup(Flavour::Rds, 1, |o| {
        o.command_duration_ms = 1500;
        o.cbt_hardening = cbt;
    })
    .await;
    let host = &env.emu.info().hosts[0];
    let script_path = env.dir.path().join("list.ps1");
    std::fs::write(&script_path, scripts::rds_list().text).unwrap();
    let py_path = env.dir.path().join("client.py");
    std::fs::write(&py_path, PY).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(&py_path)
        .arg(&host.endpoint)
        .arg(format!("{user_prefix}{}", env.emu.info().username))
        .arg(&env.emu.info().password)
        .arg(&env.ca_path)
        .arg(&script_path)
        .arg(transport)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "pywinrm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ps"][0], 0, "{v}");
    let result = scripts::parse_result(v["ps"][1].as_str().unwrap()).unwrap();
    assert!(result.ok);
    assert_eq!(result.sessions.unwrap().len(), 4);
    assert_eq!(v["cmd"][0], 0);
    assert_eq!(v["cmd"][1].as_str().unwrap().trim(), host.name);
    assert_eq!(v["bad"][0], 1);
    assert!(
        v["bad"][2]
            .as_str()
            .unwrap()
            .contains("not one this host accepts"),
        "{v}"
    );
    // pywinrm opened and deleted its shells.
    assert!(env.emu.state().shells_created() >= 3);
    assert_eq!(env.emu.state().open_shells(&host.name), 0);
    assert_eq!(env.emu.state().cbt_refusals(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pywinrm_basic_runs_a_script_on_the_emulated_host() {
    run_pywinrm("basic", "", CbtHardening::Relaxed).await;
}

/// pywinrm's NTLM (pyspnego) is an independent NTLMv2 implementation: this checks the
/// emulator's NTLM server, which in turn checks our client (`winrm_provider` NTLM tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pywinrm_ntlm_runs_a_script_on_the_emulated_host() {
    run_pywinrm("ntlm", "CONTOSO\\", CbtHardening::Relaxed).await;
}

/// requests-ntlm sends the `tls-server-end-point` binding over HTTPS: a host that requires
/// one (`CbtHardeningLevel=Strict`) accepts pywinrm, so the emulator computes the binding the
/// way an independent implementation does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pywinrm_ntlm_passes_a_strict_channel_binding_check() {
    run_pywinrm("ntlm", "CONTOSO\\", CbtHardening::Strict).await;
}
