//! Conformance: Microsoft's official Python SDK for Azure Virtual Desktop operates against the
//! ARM emulator unchanged (apart from base URL, authority and CA). Fails, naming the install
//! command, when the test Python lacks `azure-mgmt-desktopvirtualization` and `azure-identity`
//! (`scripts/test` installs them; see `support::prereq`).

use crate::support::prereq;
use sessiongate::emulator::arm::ArmEmulatorOptions;

#[tokio::test]
async fn official_python_sdk_runs_against_the_arm_emulator() {
    let Some(python) = prereq::azure_sdk("official_python_sdk_runs_against_the_arm_emulator")
    else {
        return;
    };
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
    let out = tokio::process::Command::new(&python)
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
