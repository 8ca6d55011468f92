//! Shared helpers of the gateway audit tests (`gateway_crash`, `gateway_store_down`,
//! `gateway_postgres`): the in-tree ARM emulator, the demo config rendered as TOML text (so it
//! can be written to a file for the real binary or parsed in-process), in-process gateways,
//! the real binary as a child process, audit readers and fresh PostgreSQL databases.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sessiongate::{
    audit::{self, AuditEvent, AuditStore},
    config::Config,
    demo::{DEMO_TEMPLATE, DemoBackends, DemoKeys, render_template, start_backends},
    emulator::arm::ArmState,
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

pub const AVD_POOL: &str = "avd-demo";
pub const ARM_POOL: &str = "hp-demo";

/// The ARM emulator (in-process), its data dir and the demo keys.
pub struct Backends {
    pub dir: tempfile::TempDir,
    pub backends: DemoBackends,
    pub keys: DemoKeys,
}

impl Backends {
    /// Starts the emulator with ARM throttling off (the tests measure the audit path, not
    /// the ARM token buckets).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backends = start_backends(dir.path()).await.expect("emulators");
        backends.arm.state().set_throttling(None);
        Self {
            dir,
            backends,
            keys: DemoKeys::generate(None),
        }
    }

    pub fn arm(&self) -> Arc<ArmState> {
        self.backends.arm.state()
    }

    /// Adds `n` sessions (users `{prefix}{i}@contoso.com`) spread over the pool's hosts;
    /// returns their `(host, id)`.
    pub fn seed(&self, prefix: &str, n: usize) -> Vec<(String, u32)> {
        let arm = self.arm();
        let hosts = arm.hosts(ARM_POOL);
        assert!(!hosts.is_empty());
        (0..n)
            .map(|i| {
                let host = hosts[i % hosts.len()].clone();
                let id = arm
                    .add_session(ARM_POOL, &host, &format!("{prefix}{i}@contoso.com"))
                    .expect("add session");
                (host, id)
            })
            .collect()
    }

    /// The demo config as TOML text: `listen`, the audit store URL (`None`: the demo's
    /// SQLite file in the data dir), and the per-principal action rate limit switched off.
    pub fn config_text(
        &self,
        listen: &str,
        audit_url: Option<&str>,
        replica: Option<&str>,
    ) -> String {
        let mut values = self.backends.values.clone();
        values.insert("LISTEN", listen.to_string());
        values.insert(
            "OPERATOR_KEY_HASH",
            sessiongate::auth::apikey::hash_key(&self.keys.operator),
        );
        values.insert(
            "READER_KEY_HASH",
            sessiongate::auth::apikey::hash_key(&self.keys.reader),
        );
        values.insert(
            "ADMIN_KEY_HASH",
            sessiongate::auth::apikey::hash_key(&self.keys.admin),
        );
        values.insert(
            "AUDITOR_KEY_HASH",
            sessiongate::auth::apikey::hash_key(&self.keys.auditor),
        );
        let mut text = render_template(DEMO_TEMPLATE, &values).expect("render demo template");
        let limit = "actions_per_minute = 120\nburst = 20";
        assert!(text.contains(limit), "demo template changed: rate limit");
        text = text.replace(limit, "actions_per_minute = 0\nburst = 1");
        let mut audit = String::from("[audit]\n");
        if let Some(u) = audit_url {
            audit.push_str(&format!("url = {}\n", toml_str(u)));
        } else {
            let line = text
                .lines()
                .skip_while(|l| l.trim() != "[audit]")
                .nth(1)
                .expect("audit url line")
                .to_string();
            audit.push_str(&line);
            audit.push('\n');
        }
        if let Some(r) = replica {
            audit.push_str(&format!("replica = {}\n", toml_str(r)));
        }
        // Replace the template's [audit] table (header and its url line).
        let start = text.find("[audit]\n").expect("audit table");
        let url_end = text[start + 8..].find('\n').expect("audit url") + start + 9;
        text.replace_range(start..url_end, &audit);
        text
    }

    /// [`Backends::config_text`] parsed and validated.
    pub fn config(&self, listen: &str, audit_url: Option<&str>, replica: Option<&str>) -> Config {
        let text = self.config_text(listen, audit_url, replica);
        let c = Config::from_toml_with_env(&text, std::iter::empty()).expect("config parses");
        c.validate().expect("valid config");
        c
    }

    pub fn session_url(base: &str, host: &str, id: u32) -> String {
        format!("{base}/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{id}")
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// A gateway served in-process on port 0.
pub struct InProc {
    pub url: String,
    pub gateway: Arc<sessiongate::service::Gateway>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProc {
    pub async fn start(cfg: &Config) -> Self {
        let app = sessiongate::app::build_app(cfg).await.expect("app");
        let gateway = app.gateway.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sessiongate::app::serve(app, listener, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            gateway,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }
}

/// The real `sessiongate` binary running `serve --config FILE`; SIGKILLed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Spawns the binary and waits until `/healthz` answers.
    pub async fn spawn(config: &Path, url: &str, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn sessiongate serve");
        let mut p = Self { child, log };
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        loop {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("sessiongate serve exited early ({st}):\n{}", p.log_text());
            }
            if let Ok(r) = http
                .get(format!("{url}/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && r.status() == 200
            {
                return p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "sessiongate serve did not come up:\n{}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (no graceful shutdown) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `sessiongate audit verify --config FILE`; returns (exit code, stdout+stderr).
pub async fn cli_verify(config: &Path) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .arg("audit")
        .arg("verify")
        .arg("--config")
        .arg(config)
        .output()
        .await
        .expect("run sessiongate audit verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every event in the configured store, oldest first, read directly (no chain claimed).
pub async fn store_events(cfg: &Config) -> Vec<AuditEvent> {
    let store = audit::open_read_only(&cfg.audit, &cfg.server.data_dir)
        .await
        .expect("open audit store read-only");
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .read_oldest_first(None, cursor.as_deref(), 1000)
            .await
            .expect("read audit");
        out.extend(page.events);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    out
}

/// Every event through `GET /audit` (auditor key), following `next_cursor`.
pub async fn api_events(http: &reqwest::Client, base: &str, auditor_key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let r = http
            .get(format!("{base}/audit"))
            .bearer_auth(auditor_key)
            .query(&q)
            .send()
            .await
            .expect("GET /audit");
        assert_eq!(r.status(), 200, "GET /audit");
        let page: Value = r.json().await.unwrap();
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("GET /audit paging did not end");
}

/// Answer of one action request as the client saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub request_id: String,
    pub body: Value,
}

/// POSTs an action; `Err` when no HTTP answer came back (connection reset, refused...).
pub async fn post_action(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> Result<Answer, reqwest::Error> {
    let mut r = http.post(url).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await?;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = resp.json().await?;
    Ok(Answer {
        status,
        request_id,
        body,
    })
}

/// Events grouped by request id: `(intents, outcomes)` for each.
pub fn by_request(events: &[AuditEvent]) -> HashMap<String, (Vec<AuditEvent>, Vec<AuditEvent>)> {
    let mut m: HashMap<String, (Vec<AuditEvent>, Vec<AuditEvent>)> = HashMap::new();
    for e in events {
        match e.event.kind {
            Some(audit::EventKind::Intent) => m
                .entry(e.event.request_id.clone())
                .or_default()
                .0
                .push(e.clone()),
            Some(audit::EventKind::Outcome) => m
                .entry(e.event.request_id.clone())
                .or_default()
                .1
                .push(e.clone()),
            _ => {}
        }
    }
    m
}

// ---- PostgreSQL ----------------------------------------------------------------------------

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server the PostgreSQL tests use: `SESSIONGATE_TEST_PG_URL` or [`PG_ADMIN_URL`].
pub fn pg_admin_url() -> String {
    std::env::var("SESSIONGATE_TEST_PG_URL").unwrap_or_else(|_| PG_ADMIN_URL.to_owned())
}

/// A fresh database, dropped (WITH FORCE) when this guard drops, also on panic.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    /// A fresh database, or `None` (loud skip) when the server is unreachable outside CI.
    /// Under `CI=true` an unreachable server fails the test.
    pub async fn create() -> Option<PgDb> {
        use sqlx::postgres::PgPoolOptions;
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&pg_admin_url())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "PostgreSQL at {} is not reachable under CI=true: {e}",
                        pg_admin_url()
                    );
                }
                eprintln!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     !!! SKIPPING PostgreSQL gateway test: {} not reachable: {e}\n\
                     !!! (set CI=true to make this a failure)\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                    pg_admin_url()
                );
                return None;
            }
        };
        let name = format!("gw_t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut u = url::Url::parse(&pg_admin_url()).unwrap();
        u.set_path(&format!("/{name}"));
        Some(PgDb {
            name,
            url: u.to_string(),
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(p) = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&pg_admin_url())
                    .await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&p)
                    .await;
                    p.close().await;
                }
            });
        })
        .join();
    }
}
