//! Conformance: Microsoft's official Python SDK for Azure Virtual Desktop operates against the
//! ARM emulator unchanged (apart from base URL, authority and CA). Skips loudly when python3
//! lacks `azure-mgmt-desktopvirtualization` and `azure-identity` (CI installs them).

use sessiongate::emulator::arm::ArmEmulatorOptions;
use std::process::Command;

fn sdk_available() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import azure.identity, azure.mgmt.desktopvirtualization",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn official_python_sdk_runs_against_the_arm_emulator() {
    if !sdk_available() {
        eprintln!(
            "\n*** SKIPPED official Azure SDK conformance test: pip install azure-identity azure-mgmt-desktopvirtualization ***\n"
        );
        return;
    }
    let env = crate::support::avd::start(ArmEmulatorOptions {
        hosts_per_pool: 3,
        sessions_per_host: 3,
        page_size: 4,
        ..ArmEmulatorOptions::default()
    })
    .await;
    let mut info = serde_json::to_value(env.emu.info()).unwrap();
    info["expect_hosts"] = 3.into();
    info["expect_sessions"] = 9.into();
    let info_path = env.dir.path().join("info.json");
    std::fs::write(&info_path, info.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/sdk/avd_sdk_probe.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&info_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "SDK probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = &env.state;
    assert_eq!(
        st.messages().len(),
        1,
        "the SDK's sendMessage reached the emulator"
    );
    assert!(st.tokens_issued() >= 1);
}
