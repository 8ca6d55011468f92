//! TestApp: the gateway on port 0 in front of the in-tree emulators, configured exactly like
//! `demo` (same template, same adapters), with a fresh audit log per test; its parts, the demo
//! emulators ([`Demo`]) and a gateway served in-process ([`InProc`]), for tests that assemble
//! their own.

use sessiongate::{
    config::Config,
    demo::{DemoBackends, DemoKeys, demo_config, start_backends},
    emulator::arm::ArmState,
    service::Gateway,
};
use std::sync::Arc;

use super::header;

pub const AVD_POOL: &str = "avd-demo";
pub const ARM_POOL: &str = "hp-demo";

/// What `sessiongate demo` starts besides the gateway: the emulators (ARM, classic broker,
/// WinRM hosts) writing into a fresh data dir, and a set of demo API keys.
pub struct Demo {
    pub dir: tempfile::TempDir,
    pub backends: DemoBackends,
    pub keys: DemoKeys,
}

impl Demo {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backends = start_backends(dir.path()).await.expect("emulators");
        Self {
            dir,
            backends,
            keys: DemoKeys::generate(None),
        }
    }

    pub fn arm(&self) -> Arc<ArmState> {
        self.backends.arm.state()
    }
}

/// A gateway built from `cfg` and served in-process on a loopback port 0.
pub struct InProc {
    pub url: String,
    pub gateway: Arc<Gateway>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProc {
    pub async fn start(cfg: &Config) -> Self {
        let app = sessiongate::app::build_app(cfg).await.expect("app");
        let gateway = app.gateway.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let scheme = if cfg.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listener.local_addr().expect("local addr"));
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

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }
}

/// The demo set-up and its gateway with the demo config (plus a test's tweak).
pub struct TestApp {
    pub url: String,
    pub keys: DemoKeys,
    pub backends: DemoBackends,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub config: Config,
    server: InProc,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with a config tweak (extra keys, pools, limits).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let Demo {
            dir,
            backends,
            keys,
        } = Demo::start().await;
        let listen = "127.0.0.1:0".parse().expect("socket address");
        let mut config = demo_config(&backends, &keys, listen).expect("demo config");
        tweak(&mut config);
        config.validate().expect("valid test config");
        let server = InProc::start(&config).await;
        TestApp {
            url: server.url.clone(),
            keys,
            backends,
            dir,
            http: reqwest::Client::new(),
            config,
            server,
        }
    }

    pub fn arm(&self) -> Arc<ArmState> {
        self.backends.arm.state()
    }

    /// The gateway's use cases (for what has no route, e.g. the webhook write-back hooks).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.server.gateway.clone()
    }

    /// First emulated AVD host and a session on it.
    pub fn avd_target(&self) -> (String, u32, String) {
        let s = self
            .arm()
            .sessions(ARM_POOL)
            .into_iter()
            .next()
            .expect("a seeded session");
        (s.host, s.id, s.user)
    }

    pub fn session_url(&self, pool: &str, host: &str, id: u32) -> String {
        format!(
            "{}/hostpools/{pool}/sessionhosts/{host}/sessions/{id}",
            self.url
        )
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(
        &self,
        key: &str,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut r = self.http.post(url).bearer_auth(key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("request")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }
}

/// Asserts a problem+json answer and returns its body.
pub async fn problem(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = header(&resp, "content-type").unwrap_or_default();
    let rid = header(&resp, "x-request-id").unwrap_or_default();
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(ct, "application/problem+json", "content type, body {body}");
    assert_eq!(body["code"], code, "code, body {body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], rid.as_str(), "request id echoed");
    assert!(!rid.is_empty());
    body
}
