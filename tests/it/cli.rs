//! The binary's commands, run as a user would: demo (and its printed curl commands), emulate,
//! config check, apikey new, openapi.

use crate::support::{
    free_port,
    process::{DemoProcess, Killer, read_until},
};
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

#[tokio::test]
async fn demo_prints_working_keys_and_commands() {
    let mut k = DemoProcess::start();
    let (port, dir, lines) = (k.port, k.dir.path().to_path_buf(), k.lines.clone());
    let key_of = |role: &str| k.key(role.trim());
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
    // The demo user's Entra-style token, as printed, is accepted; its user has sessions there.
    let token = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .expect("the demo prints a token")
        .to_string();
    let user = lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Entra ID (emulated: `sessiongate emulate oidc`) token of demo user ")
        })
        .expect("the demo names its user")
        .to_string();
    // Self-service (the demo turns it on): the user's own sessions, in every pool…
    let r = http
        .get(format!("{base}/me/sessions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert!(!sessions.is_empty(), "{user} has a session: {v}");
    assert!(
        sessions.iter().all(|s| s.to_string().contains(&user)),
        "only {user}'s own sessions: {v}"
    );
    // …and nothing else: the token carries no role.
    let r = http
        .get(format!("{base}/hostpools/avd-demo/sessions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200, "a token without a role reads no pool");
    let claims = jwt_claims(&token);
    assert_eq!(claims["preferred_username"], user.as_str());
    let life = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!((60..=3600).contains(&life), "short-lived: {life} s");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let r = http
        .get(format!("{base}/hostpools"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a tampered token is refused");
    // The audit log the demo wrote verifies, with the command the demo printed, run as printed
    // (after the demo stopped: the config it wrote needs no running emulator).
    k.stop();
    let verify: Vec<&str> = lines
        .iter()
        .find(|l| l.contains("audit verify --config"))
        .expect("the demo prints the audit verify command")
        .split_whitespace()
        .collect();
    assert_eq!(verify[..4], ["sessiongate", "audit", "verify", "--config"]);
    assert_eq!(verify.len(), 5, "{verify:?}");
    let out = Command::new(BIN).args(&verify[1..]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("result: INTACT"),
        "verify: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!report.contains(" 0 event(s)"), "{report}");
    // The written config is the demo's: in its data dir, passing config check, no secrets in it.
    let written = std::path::Path::new(verify[4]);
    assert_eq!(
        written,
        dir.as_path()
            .canonicalize()
            .unwrap()
            .join("sessiongate.toml")
    );
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(written)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(written).unwrap();
    assert!(
        text.contains(&format!("listen = \"127.0.0.1:{port}\"")),
        "{text}"
    );
    assert!(!text.contains(&op) && !text.contains(&reader));
    for secret_file in [
        "arm-client-secret",
        "classic-client-secret",
        "winrm-password",
    ] {
        let secret = std::fs::read_to_string(dir.as_path().join(secret_file)).unwrap();
        assert!(
            !secret.trim().is_empty() && !text.contains(secret.trim()),
            "{secret_file}"
        );
        assert!(text.contains(secret_file), "{secret_file} is referenced");
    }
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

/// Starts `emulate avd` with `flags`; returns the process and a client trusting its CA.
fn emulate_avd_with(flags: &[&str]) -> (Killer, serde_json::Value, reqwest::Client) {
    let child = Command::new(BIN)
        .args(["emulate", "avd", "--listen", "127.0.0.1:0"])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let lines = read_until(&mut k.0, |l| l.starts_with('{'));
    let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let pem = std::fs::read(v["ca_pem_path"].as_str().unwrap()).unwrap();
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
        b = b.add_root_certificate(c);
    }
    (k, v, b.build().unwrap())
}

/// The fault switches are `emulate` flags: `--error-rate 1` answers every request with the
/// service's own 5xx (here ARM's `InternalServerError`) where it would have answered 401/400.
#[tokio::test]
async fn emulate_avd_error_rate_flag_answers_5xx() {
    let (_k, v, http) = emulate_avd_with(&["--error-rate", "1"]);
    let base = v["base_url"].as_str().unwrap();
    let token_url = v["token_url"].as_str().unwrap();
    for _ in 0..5 {
        let r = http
            .get(format!(
                "{base}/subscriptions/x/providers?api-version=2024-04-03"
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "InternalServerError", "{body}");
        let r = http
            .post(token_url)
            .form(&[("grant_type", "x")])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    // Without the flag the same requests are refused by the emulated service itself.
    let (_k, v, http) = emulate_avd_with(&[]);
    let base = v["base_url"].as_str().unwrap();
    let r = http
        .get(format!(
            "{base}/subscriptions/x/providers?api-version=2024-04-03"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
}

/// `--drop-rate 1`: every connection is dropped without an answer.
#[tokio::test]
async fn emulate_avd_drop_rate_flag_drops_connections() {
    let (_k, v, http) = emulate_avd_with(&["--drop-rate", "1", "--latency-ms", "50"]);
    let base = v["base_url"].as_str().unwrap();
    let t0 = Instant::now();
    let e = http.get(format!("{base}/x")).send().await.unwrap_err();
    assert!(!e.is_timeout() && !e.is_status(), "{e:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "latency applied first"
    );
}

/// A rate outside 0..=1 (or not a number) is refused like any bad flag: exit 2, naming the flag
/// and the range, before anything listens.
#[test]
fn emulate_refuses_fault_rates_out_of_range() {
    for (which, flag, value) in [
        ("avd", "--error-rate", "1.5"),
        ("wvd-classic", "--drop-rate", "-0.2"),
        ("winrm", "--error-rate", "NaN"),
        ("avd", "--drop-rate", "20%"),
    ] {
        let out = Command::new(BIN)
            .args(["emulate", which, "--listen", "127.0.0.1:0"])
            .arg(format!("{flag}={value}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{which} {flag} {value}: {err}");
        assert!(err.contains(flag), "{err}");
        assert!(err.contains("0 to 1"), "{err}");
        assert!(out.stdout.is_empty(), "nothing started: {:?}", out.stdout);
    }
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
fn emulate_servicenow_and_jira_print_one_json_line_and_listen_on_loopback_only() {
    for (which, fields) in [
        (
            "servicenow",
            &[
                "instance_url",
                "token_url",
                "user",
                "password",
                "client_id",
                "client_secret",
                "incidents",
                "ca_pem_path",
            ][..],
        ),
        (
            "jira",
            &["site_url", "email", "api_token", "issues", "ca_pem_path"][..],
        ),
    ] {
        let child = Command::new(BIN)
            .args([
                "emulate",
                which,
                "--listen",
                "127.0.0.1:0",
                "--tickets",
                "2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut k = Killer(child);
        let lines = read_until(&mut k.0, |l| l.starts_with('{'));
        let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        for f in fields {
            assert!(
                v.get(*f).is_some_and(|x| !x.is_null()),
                "{which}: {f} in {v}"
            );
        }
        assert_eq!(v["kind"], which);
        let out = Command::new(BIN)
            .args(["emulate", which, "--listen", "0.0.0.0:0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{which}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
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

    // The shipped example passes when the secrets it names are there (config check reads them).
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let whsec = dir.path().join("whsec");
    std::fs::write(&whsec, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "config",
            "check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"),
        ])
        .env("SESSIONGATE_AVD_SECRET", "s3cret")
        .env("SESSIONGATE_WINRM_PASSWORD", "s3cret")
        .env("SESSIONGATE__POOLS__1__CREDENTIAL__SECRET_FILE", &secret)
        .env("SESSIONGATE__POOLS__3__CREDENTIAL__PASSWORD_FILE", &secret)
        .env("SESSIONGATE_JIRA_WEBHOOK_SECRET", "s3cret")
        .env(
            "SESSIONGATE__WEBHOOKS__SOURCES__1__SECRETS__0__FILE",
            &whsec,
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A valid config with one pool of each provider kind; every table case breaks one thing.
fn table_base(dir: &std::path::Path) -> toml::Value {
    let pw = dir.join("winrm-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = {data:?}

[audit]
max_batch = 64

[auth]
service_accounts = ["svc-sessiongate@contoso.com"]

[[auth.api_keys]]
id = "ops"
hash = "sha256:{zeros}"
roles = ["operator"]

[auth.protected]
users = ["adm-*@contoso.com"]

[[pools]]
name = "avd-prod"
provider = "avd"
subscription_id = "00000000-0000-0000-0000-000000000000"
resource_group = "rg-avd"
host_pool = "hp-prod"
[pools.credential]
kind = "azure_cli"

[[pools]]
name = "classic-legacy"
provider = "wvd-classic"
tenant = "contoso"
host_pool = "Legacy Pool"
[pools.credential]
kind = "managed_identity"

[[pools]]
name = "rds-farm"
provider = "rds"
credential = {{ username = 'CONTOSO\svc', password_file = {pw:?} }}
hosts = [{{ name = "rdsh-01.contoso.com" }}]
"#,
        port = free_port(),
        data = dir.join("data").display().to_string(),
        zeros = "0".repeat(64),
        pw = pw.display().to_string(),
    );
    toml::from_str(&text).unwrap()
}

/// Sets `a.b.0.c` (numbers index arrays) to the TOML value `literal`.
fn set_key(root: &mut toml::Value, path: &str, literal: &str) {
    let value = toml::from_str::<toml::Table>(&format!("v = {literal}")).unwrap()["v"].clone();
    let (parents, last) = path.rsplit_once('.').unwrap_or(("", path));
    let mut cur = root;
    for seg in parents.split('.').filter(|s| !s.is_empty()) {
        cur = match (seg.parse::<usize>(), cur) {
            (Ok(i), toml::Value::Array(a)) => &mut a[i],
            (_, toml::Value::Table(t)) => t
                .entry(seg)
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            (_, other) => panic!("{path}: {other:?} has no {seg}"),
        };
    }
    match cur {
        toml::Value::Table(t) => {
            t.insert(last.to_string(), value);
        }
        toml::Value::Array(a) => a[last.parse::<usize>().unwrap()] = value,
        other => panic!("{path}: {other:?} is not a table"),
    }
}

/// Runs the binary, returns (exit code, stderr); fails the test if it runs for over 20 s.
fn run_bounded(args: &[&str], file: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg(file)
        .env_remove("SESSIONGATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} {} did not exit", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue #10 item 4: `config check` and `serve` run one validation. Each broken config is
/// refused by both, before `serve` binds or touches the network, naming the same key.
#[test]
fn broken_configs_are_refused_by_check_and_serve_naming_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let not_pem = d.join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let lit = |s: String| format!("{s:?}");
    let not_pem_lit = lit(not_pem.display().to_string());
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        // [server]
        (vec![("server.listen", r#""localhost""#.into())], "server.listen"),
        (vec![("server.body_limit_bytes", "100".into())], "server.body_limit_bytes"),
        (vec![("server.request_timeout_secs", "0".into())], "server.request_timeout_secs"),
        (vec![("server.header_read_timeout_ms", "0".into())], "server.header_read_timeout_ms"),
        (vec![("server.header_read_timeout_ms", "99999999".into())], "server.header_read_timeout_ms"),
        (vec![("server.message_body_max", "0".into())], "server.message_body_max"),
        (vec![("server.log_filter", r#""sessiongate=loud""#.into())], "server.log_filter"),
        (vec![("server.data_dir", not_pem_lit.clone())], "server.data_dir"),
        (vec![("server.listen_addr", r#""127.0.0.1:1""#.into())], "server.listen_addr"),
        // [server.tls]
        (
            vec![("server.tls", format!("{{ cert_file = {not_pem_lit}, key_file = {not_pem_lit} }}"))],
            "server.tls.cert_file",
        ),
        (
            vec![("server.tls", format!("{{ cert_file = {not_pem_lit}, key_file = {not_pem_lit}, min_version = \"1.1\" }}"))],
            "server.tls.min_version",
        ),
        // [audit]
        (vec![("audit.max_batch", "0".into())], "audit.max_batch"),
        (vec![("audit.write_timeout_ms", "0".into())], "audit.write_timeout_ms"),
        (vec![("audit.retention_days", "0".into())], "audit.retention_days"),
        (vec![("audit.replica", r#""gw 1""#.into())], "audit.replica"),
        (vec![("audit.url", r#""mysql://db/audit""#.into())], "audit.url"),
        (vec![("audit.url", r#""postgres://u:pw@db:port/audit""#.into())], "audit.url"),
        (vec![("audit.url", lit(format!("sqlite://{}", d.display())))], "audit.url"),
        (vec![("audit.kind", r#""sqlite""#.into())], "audit.kind"),
        // [auth]
        (vec![("auth.api_keys.0.hash", r#""sha256:abc""#.into())], "auth.api_keys[0].hash"),
        (vec![("auth.api_keys.0.roles", r#"["superuser"]"#.into())], "auth.api_keys[0].roles[0]"),
        (vec![("auth.api_keys.0.pools", "[]".into())], "auth.api_keys[0].pools"),
        (
            vec![("auth.oidc", r#"{ issuer = "http://idp.contoso.com", audience = "api://sg" }"#.into())],
            "auth.oidc.issuer",
        ),
        (
            vec![(
                "auth.oidc",
                format!(r#"{{ issuer = "https://idp.contoso.com", audience = "api://sg", ca_bundle = {not_pem_lit} }}"#),
            )],
            "auth.oidc.ca_bundle",
        ),
        (vec![("auth.protected.users", r#"['adm@contoso\x']"#.into())], "auth.protected.users[0]"),
        (vec![("auth.service_accounts", r#"[" "]"#.into())], "auth.service_accounts[0]"),
        (vec![("auth.cors.allowed_origins", r#"["*"]"#.into())], "auth.cors.allowed_origins[0]"),
        (
            vec![("auth.client_certs", r#"[{ id = "snow", subject_cn = "mid", roles = ["operator"] }]"#.into())],
            "auth.client_certs",
        ),
        // pools: AVD (ARM name rules, credential files)
        (vec![("pools.0.host_pool", r#""hp/prod""#.into())], "pools[avd-prod].host_pool"),
        (vec![("pools.0.resource_group", r#""rg.""#.into())], "pools[avd-prod].resource_group"),
        (vec![("pools.0.api_version", r#""latest""#.into())], "pools[avd-prod].api_version"),
        (
            vec![(
                "pools.0.credential",
                r#"{ kind = "client_secret", tenant_id = "t", client_id = "c", secret_file = "/nonexistent/secret" }"#.into(),
            )],
            "pools[avd-prod].credential.secret_file",
        ),
        // pools: WVD classic
        (vec![("pools.1.page_size", "0".into())], "pools[classic-legacy].page_size"),
        (vec![("pools.1.max_response_bytes", "100".into())], "pools[classic-legacy].max_response_bytes"),
        (vec![("pools.0.max_response_bytes", "0".into())], "pools[avd-prod].max_response_bytes"),
        (vec![("pools.1.broker_url", r#""http://broker.contoso.com""#.into())], "pools[classic-legacy].broker_url"),
        (vec![("pools.1.ca_bundle", not_pem_lit.clone())], "pools[classic-legacy].ca_bundle"),
        // pools: WinRM
        (vec![("pools.2.hosts.0.name", r#""rdsh 01!""#.into())], "pools[rds-farm].hosts[0].name"),
        (
            vec![("pools.2.hosts.0.endpoint", r#""http://rdsh-01.contoso.com:5985/wsman""#.into())],
            "pools[rds-farm].hosts[0].endpoint",
        ),
        (vec![("pools.2.auth", r#""kerberos""#.into())], "pools[rds-farm].credential.username"),
        (
            vec![("pools.2.credential.password_file", r#""/nonexistent/pw""#.into())],
            "pools[rds-farm].credential.password_file",
        ),
        // pools: shape
        (vec![("pools.2.provider", r#""citrix""#.into())], "pools[2]"),
        (vec![("pools.0.bogus", "1".into())], "pools[0]"),
        (vec![("pools.1.name", r#""AVD-Prod""#.into())], "pools[1].name"),
        (vec![("pools.0.name", r#""avd prod!""#.into())], "pools[0].name"),
    ];
    let base = table_base(d);
    let file = d.join("sessiongate.toml");
    std::fs::write(&file, toml::to_string(&base).unwrap()).unwrap();
    let (code, err) = run_bounded(&["config", "check"], &file);
    assert_eq!(code, Some(0), "the base config must pass: {err}");
    let mut wrong = Vec::new();
    for (edits, key) in cases {
        let mut v = base.clone();
        for (path, literal) in &edits {
            set_key(&mut v, path, literal);
        }
        std::fs::write(&file, toml::to_string(&v).unwrap()).unwrap();
        let (check_code, check_err) = run_bounded(&["config", "check"], &file);
        let (serve_code, serve_err) = run_bounded(&["serve", "--config"], &file);
        let named = format!(": {key}: ");
        let ok = check_code == Some(2)
            && serve_code == Some(2)
            && check_err.contains(&named)
            && serve_err.contains(&named)
            && check_err.lines().next() == serve_err.lines().next();
        if !ok {
            wrong.push(format!(
                "{edits:?} should name {key}:\n  check {check_code:?}: {check_err}  serve {serve_code:?}: {serve_err}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
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

/// The ARM throttle is shaped from the command line: `--delete-bucket 3 --delete-refill 1`
/// lets three log-offs through (each answer counting down
/// `x-ms-ratelimit-remaining-subscription-deletes`), then answers 429 with `Retry-After` and
/// ARM's error body; reads have their own bucket; `--no-throttle` meters nothing.
#[tokio::test]
async fn emulate_avd_throttle_flags_shape_the_buckets() {
    async fn token(http: &reqwest::Client, v: &serde_json::Value) -> String {
        crate::support::client_credentials_token(
            http,
            v["token_url"].as_str().unwrap(),
            v["client_id"].as_str().unwrap(),
            v["client_secret"].as_str().unwrap(),
            &format!("{}/.default", v["base_url"].as_str().unwrap()),
        )
        .await
    }
    fn session_url(v: &serde_json::Value) -> String {
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DesktopVirtualization/hostPools/{}/sessionHosts/nohost.contoso.com/userSessions/7?api-version=2025-10-10",
            v["base_url"].as_str().unwrap(),
            v["subscription"].as_str().unwrap(),
            v["resource_group"].as_str().unwrap(),
            v["host_pools"][0].as_str().unwrap()
        )
    }
    let (_k, v, http) = emulate_avd_with(&[
        "--delete-bucket",
        "3",
        "--delete-refill",
        "1",
        "--read-bucket",
        "1000",
    ]);
    let tok = token(&http, &v).await;
    let url = session_url(&v);
    for left in ["2", "1", "0"] {
        let r = http.delete(&url).bearer_auth(&tok).send().await.unwrap();
        assert_ne!(r.status(), 429);
        assert_eq!(
            r.headers()["x-ms-ratelimit-remaining-subscription-deletes"],
            left
        );
    }
    let r = http.delete(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(
        r.headers()["x-ms-ratelimit-remaining-subscription-deletes"],
        "0"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "SubscriptionRequestsThrottled",
        "{body}"
    );
    let r = http.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_ne!(r.status(), 429, "reads have their own bucket");
    assert_eq!(
        r.headers()["x-ms-ratelimit-remaining-subscription-reads"],
        "999"
    );

    let (_k, v, http) = emulate_avd_with(&["--no-throttle"]);
    let tok = token(&http, &v).await;
    let url = session_url(&v);
    for _ in 0..250 {
        let r = http.delete(&url).bearer_auth(&tok).send().await.unwrap();
        assert_ne!(r.status(), 429);
        assert!(
            !r.headers()
                .contains_key("x-ms-ratelimit-remaining-subscription-deletes")
        );
    }
}

/// The claims of a JWT (not verified: the gateway does that).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// `emulate oidc`: discovery, JWKS and an Entra-shaped v2 token endpoint (password and
/// client-credentials grants, Entra's error bodies); it refuses to listen beyond loopback.
#[tokio::test]
async fn emulate_oidc_serves_discovery_jwks_and_a_token_endpoint() {
    let child = Command::new(BIN)
        .args([
            "emulate",
            "oidc",
            "--user",
            "bob@contoso.com",
            "--user-role",
            "Operator",
            "--token-lifetime-secs",
            "600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut k = Killer(child);
    let lines = read_until(&mut k.0, |l| l.starts_with('{'));
    let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let pem = std::fs::read(v["ca_pem_path"].as_str().unwrap()).unwrap();
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
        b = b.add_root_certificate(c);
    }
    let http = b.build().unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    let disc: serde_json::Value = http
        .get(s("discovery_url"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disc["issuer"], v["issuer"]);
    assert_eq!(disc["token_endpoint"], v["token_url"]);
    assert_eq!(disc["jwks_uri"], v["jwks_uri"]);
    let jwks: serde_json::Value = http
        .get(s("jwks_uri"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scope = format!("{}/.default", s("audience"));
    let ask = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = s("token_url");
        async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let user_form = |password: String| {
        vec![
            ("grant_type", "password".to_string()),
            ("client_id", s("client_id")),
            ("username", "Bob@contoso.com".to_string()),
            ("password", password),
            ("scope", scope.clone()),
        ]
    };
    let (status, t) = ask(user_form(s("password"))).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 600);
    let token = t["access_token"].as_str().unwrap();
    let c = jwt_claims(token);
    assert_eq!(c["iss"], v["issuer"]);
    assert_eq!(c["aud"], v["audience"]);
    assert_eq!(c["upn"], "bob@contoso.com");
    assert_eq!(c["roles"], serde_json::json!(["Operator"]));
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    let header: serde_json::Value = {
        use base64::Engine;
        let h = token.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == header["kid"]),
        "the token's kid is published"
    );
    let (status, e) = ask(user_form("wrong".into())).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    assert_eq!(e["error_codes"][0], 50126);
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS50126:")
    );
    let app_form = |secret: String| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", s("client_id")),
            ("client_secret", secret),
            ("scope", scope.clone()),
        ]
    };
    let (status, t) = ask(app_form(s("client_secret"))).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        jwt_claims(t["access_token"].as_str().unwrap())["idtyp"],
        "app"
    );
    let (status, e) = ask(app_form("wrong".into())).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );
    let mut bad_scope = app_form(s("client_secret"));
    bad_scope[3].1 = "https://graph.microsoft.com/.default".into();
    let (status, e) = ask(bad_scope).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_scope")),
        "{e}"
    );
    let mut bad_grant = app_form(s("client_secret"));
    bad_grant[0].1 = "implicit".into();
    let (status, e) = ask(bad_grant).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("unsupported_grant_type")),
        "{e}"
    );
    drop(k);

    let out = Command::new(BIN)
        .args(["emulate", "oidc", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

/// `completions bash|zsh|fish` prints a script for that shell naming the commands and flags;
/// bash accepts its script (`bash -n`); another shell name is refused.
#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _sessiongate"),
        ("zsh", "#compdef sessiongate"),
        ("fish", "complete -c sessiongate"),
    ] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {marker}");
        for word in ["apikey", "completions", "verify", "output"] {
            assert!(script.contains(word), "{shell} script names {word}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("sessiongate.bash");
            std::fs::write(&f, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&f).output().unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--output json` on the commands that print reports: `config check`, `apikey new`,
/// `audit verify` — one JSON document on stdout, the same exit codes as the text.
#[tokio::test]
async fn output_json_for_check_apikey_and_verify() {
    // config check: ok, and a bad key named in the document.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[server]\nbody_limit = 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--output", "json"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["key"], "server.body_limit", "{v}");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[server]\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--output", "json"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["pools"], 0);

    // apikey new: the key, and a snippet that authenticates it.
    let out = Command::new(BIN)
        .args([
            "apikey", "new", "--id", "bot", "--role", "auditor", "--pool", "*", "--output", "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "bot");
    assert_eq!(v["roles"], serde_json::json!(["auditor"]));
    assert_eq!(v["expires"], serde_json::Value::Null);
    let cfg = sessiongate::config::Config::from_toml_with_env(
        v["config_snippet"].as_str().unwrap(),
        std::iter::empty(),
    )
    .unwrap();
    let keys = sessiongate::auth::apikey::ApiKeys::new(&cfg.auth.api_keys).unwrap();
    let p = keys
        .authenticate(v["key"].as_str().unwrap(), time::OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(p.id, "apikey:bot");

    // audit verify: the report of a store with three events, and a store that is missing.
    let env = crate::support::audit::Env::sqlite().await.unwrap();
    let log = env.open().await;
    crate::support::audit::record_n(&log, 3).await;
    drop(log);
    let conf = env.dir.path().join("verify.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\ndata_dir = {:?}\n[audit]\nreplica = \"gw-test\"\n",
            env.dir.path().display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["audit", "verify", "--output", "json", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["ok"], true);
    assert!(v["events_checked"].as_u64().unwrap() >= 3, "{v}");
    assert!(!v["chains"].as_array().unwrap().is_empty());
    let empty = tempfile::tempdir().unwrap();
    let conf = empty.path().join("verify.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\ndata_dir = {:?}\n",
            empty.path().display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["audit", "verify", "--output", "json", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("cannot open"), "{v}");
}
