//! Interoperability: the standard Python WinRM client (pywinrm, Basic and NTLM over HTTPS,
//! NTLM with its TLS channel binding) runs commands on the emulated host. Fails, naming the
//! install command, when the test Python lacks pywinrm (see `support::prereq`).

use crate::support::winrm::setup;
use sessiongate::emulator::winrm::{CbtHardening, Flavour};
use sessiongate::providers::winrm::scripts;

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

use crate::support::prereq;
use std::path::Path;

async fn run_pywinrm(transport: &str, user_prefix: &str, cbt: CbtHardening) {
    let Some(python) = prereq::pywinrm(&format!("pywinrm test ({transport})")) else {
        return;
    };
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
    let out = tokio::process::Command::new(&python)
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

const PY_ACCEPTOR: &str = r#"
import sys
import spnego
from spnego.channel_bindings import GssChannelBindings
cb = GssChannelBindings(application_data=bytes.fromhex(sys.argv[1]))
ctx = spnego.server(protocol='ntlm', channel_bindings=cb)
print(ctx.step(bytes.fromhex(sys.stdin.readline().strip())).hex(), flush=True)
try:
    ctx.step(bytes.fromhex(sys.stdin.readline().strip()))
    print('accepted' if ctx.complete else 'incomplete', flush=True)
except Exception as e:
    print('refused ' + type(e).__name__, flush=True)
"#;

/// pyspnego as the NTLM *acceptor*, given the channel bindings of a certificate: judges an
/// AUTHENTICATE built by our client with `binding_of` (application data, or none), after
/// `tamper` changed it.
fn pyspnego_judges(
    python: &Path,
    dir: &Path,
    cert_app: &[u8],
    binding_of: Option<&[u8]>,
    tamper: fn(&mut Vec<u8>),
) -> String {
    use sessiongate::providers::winrm::{cbt, ntlm};
    use std::io::{BufRead, BufReader, Write};
    let users = dir.join("ntlm-users");
    std::fs::write(&users, "CONTOSO:svc:Passw0rd!\n").unwrap();
    let script = dir.join("acceptor.py");
    std::fs::write(&script, PY_ACCEPTOR).unwrap();
    let mut child = std::process::Command::new(python)
        .arg(&script)
        .arg(hex::encode(cert_app))
        .env("NTLM_USER_FILE", &users)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "{}", hex::encode(ntlm::negotiate())).unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let ch = ntlm::parse_challenge(&hex::decode(line.trim()).unwrap()).unwrap();
    let hash = binding_of.map(cbt::ntlm_channel_binding_hash);
    let mut msg = ntlm::authenticate("svc", "CONTOSO", "Passw0rd!", &ch, [5; 8], hash.as_ref());
    tamper(&mut msg);
    writeln!(stdin, "{}", hex::encode(msg)).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = child.wait();
    line.trim().to_string()
}

/// Our AUTHENTICATE judged by an independent NTLM acceptor (pyspnego) that was given the TLS
/// channel bindings: the right binding is accepted, a missing or wrong one is refused.
#[test]
fn pyspnego_acceptor_checks_our_channel_binding() {
    let Some(python) = prereq::pywinrm("pyspnego acceptor test") else {
        return;
    };
    use sessiongate::providers::winrm::cbt;
    let dir = tempfile::tempdir().unwrap();
    let tls = sessiongate::emulator::common::EmulatorTls::generate().unwrap();
    let app = cbt::application_data(tls.server_cert_der()).unwrap();
    let other = sessiongate::emulator::common::EmulatorTls::generate().unwrap();
    let wrong = cbt::application_data(other.server_cert_der()).unwrap();
    let keep: fn(&mut Vec<u8>) = |_| {};
    assert_eq!(
        pyspnego_judges(&python, dir.path(), &app, Some(&app), keep),
        "accepted"
    );
    assert_eq!(
        pyspnego_judges(&python, dir.path(), &app, Some(&wrong), keep),
        "refused BadBindingsError"
    );
    assert_eq!(
        pyspnego_judges(&python, dir.path(), &app, None, keep),
        "refused BadBindingsError"
    );
}

/// Our AUTHENTICATE carries `MsvAvFlags` "MIC present" and the MIC (as current Windows clients
/// send it): pyspnego's acceptor checks that MIC and accepts it; a flipped MIC byte, or a
/// negotiate flag changed after the MIC was computed (the NTProofStr does not cover the
/// flags), is refused.
#[test]
fn pyspnego_acceptor_checks_our_mic() {
    let Some(python) = prereq::pywinrm("pyspnego MIC test") else {
        return;
    };
    use sessiongate::providers::winrm::cbt;
    let dir = tempfile::tempdir().unwrap();
    let tls = sessiongate::emulator::common::EmulatorTls::generate().unwrap();
    let app = cbt::application_data(tls.server_cert_der()).unwrap();
    assert_eq!(
        pyspnego_judges(&python, dir.path(), &app, Some(&app), |_| {}),
        "accepted"
    );
    // The MIC sits at offset 72 (after the 64-byte header and the VERSION).
    assert_eq!(
        pyspnego_judges(&python, dir.path(), &app, Some(&app), |m| m[72] ^= 1),
        "refused InvalidTokenError"
    );
    // NEGOTIATE_56 (bit 31) dropped from the AUTHENTICATE's flags.
    assert_eq!(
        pyspnego_judges(&python, dir.path(), &app, Some(&app), |m| m[63] &= 0x7f),
        "refused InvalidTokenError"
    );
}
