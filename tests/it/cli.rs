//! The binary's commands, run as a user would: demo (and its printed curl commands), emulate,
//! config check, apikey new, openapi.

use crate::support::free_port;
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until `pred` has seen enough (bounded in time).
fn read_until(child: &mut Child, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let stop = done(&l);
            lines.push(l);
            if stop {
                return lines;
            }
        }
    }
    panic!("timed out; got {lines:?}");
}

#[tokio::test]
async fn demo_prints_working_keys_and_commands() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let lines = read_until(&mut k.0, |l| l.contains("Stop with Ctrl-C"));
    let key_of = |role: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(role).map(|r| r.trim().to_string()))
            .unwrap_or_else(|| panic!("{role} key printed"))
    };
    let (op, reader) = (key_of("operator "), key_of("reader "));
    assert_ne!(op, reader);
    // The printed logoff command, as printed.
    let logoff = lines
        .iter()
        .find(|l| l.contains("/logoff"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let r = http
        .get(format!("{base}/hostpools"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/hostpools/avd-demo/sessions"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = http
        .post(&logoff)
        .bearer_auth(&op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    let v: serde_json::Value = http
        .post(&logoff)
        .bearer_auth(&op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["outcome"], "already_gone", "{v}");
    let r = http.get(format!("{base}/hostpools")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let disconnect = logoff.replace("/logoff", "/disconnect");
    let r = http
        .post(&disconnect)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{base}/hostpools/classic-demo/sessions"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The audit log the demo wrote verifies.
    drop(k);
    let cfg = dir.path().join("verify.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndata_dir = {:?}\n[audit]\nurl = \"sqlite://{}/audit.sqlite\"\n",
            dir.path(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn emulate_avd_prints_one_json_line_a_client_can_use() {
    let child = Command::new(BIN)
        .args([
            "emulate",
            "avd",
            "--listen",
            "127.0.0.1:0",
            "--hosts",
            "2",
            "--sessions-per-host",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let lines = read_until(&mut k.0, |l| l.starts_with('{'));
    let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    for f in [
        "base_url",
        "token_url",
        "tenant",
        "client_id",
        "client_secret",
        "subscription",
        "resource_group",
        "host_pools",
        "ca_pem_path",
    ] {
        assert!(v.get(f).is_some_and(|x| !x.is_null()), "{f} in {v}");
    }
    assert!(
        std::fs::read_to_string(v["ca_pem_path"].as_str().unwrap())
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
}

#[test]
fn emulate_wvd_classic_prints_one_json_line() {
    let child = Command::new(BIN)
        .args(["emulate", "wvd-classic", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let lines = read_until(&mut k.0, |l| l.starts_with('{'));
    let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    for f in [
        "broker_url",
        "token_url",
        "client_id",
        "client_secret",
        "tenant_group",
        "rds_tenant",
        "aad_tenant",
        "host_pools",
    ] {
        assert!(v.get(f).is_some_and(|x| !x.is_null()), "{f} in {v}");
    }
}

#[test]
fn config_check_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[server]\nlisten = \"127.0.0.1:8080\"\nbody_limit = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.body_limit"), "{err}");

    let out = Command::new(BIN)
        .args([
            "config",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn apikey_new_prints_a_key_and_a_pasteable_hash_line() {
    let out = Command::new(BIN)
        .args([
            "apikey", "new", "--id", "bot", "--role", "operator", "--pool", "avd-prod",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sg_"))
        .unwrap();
    let block = &text[text.find("[[auth.api_keys]]").unwrap()..];
    let cfg = sessiongate::config::Config::from_toml_with_env(block, std::iter::empty()).unwrap();
    let keys = sessiongate::auth::apikey::ApiKeys::new(&cfg.auth.api_keys).unwrap();
    let p = keys
        .authenticate(key, time::OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(p.id, "apikey:bot");
    let out = Command::new(BIN)
        .args(["apikey", "new", "--role", "god"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn openapi_command_matches_committed_file() {
    let out = Command::new(BIN).arg("openapi").output().unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn emulate_winrm_prints_one_json_line_with_host_endpoints() {
    let child = Command::new(BIN)
        .args([
            "emulate",
            "winrm",
            "--flavour",
            "multipoint",
            "--hosts",
            "2",
            "--cbt-hardening",
            "strict",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let lines = read_until(&mut k.0, |l| l.starts_with('{'));
    let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{v}");
    assert!(
        hosts[0]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    for f in ["username", "password", "auth", "flavour", "ca_pem_path"] {
        assert!(v.get(f).is_some_and(|x| !x.is_null()), "{f} in {v}");
    }
    assert_eq!(v["cbt_hardening"], "strict", "{v}");
}
