//! The ticketing emulators started in-process ([`servicenow`], [`jira`]) and a loopback
//! webhook receiver ([`Receiver`]) that records what it is sent and answers from a script.

use super::TlsFiles;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use sessiongate::emulator::{jira, servicenow};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

/// A ServiceNow emulator with the default options and its TLS files.
pub async fn servicenow() -> (servicenow::ServiceNowEmulator, TlsFiles) {
    servicenow_with(servicenow::ServiceNowOptions::default()).await
}

pub async fn servicenow_with(
    opts: servicenow::ServiceNowOptions,
) -> (servicenow::ServiceNowEmulator, TlsFiles) {
    let tls = TlsFiles::generate();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = servicenow::start(l, &tls.tls, opts).await.unwrap();
    (emu, tls)
}

/// A Jira emulator with the default options and its TLS files.
pub async fn jira() -> (jira::JiraEmulator, TlsFiles) {
    let tls = TlsFiles::generate();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = jira::start(l, &tls.tls, jira::JiraOptions::default())
        .await
        .unwrap();
    (emu, tls)
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Received>>,
    /// Statuses to answer with, in turn; 202 once empty.
    script: Mutex<VecDeque<u16>>,
    /// How long each answer takes.
    delay: std::time::Duration,
}

/// A plain-HTTP loopback receiver at `{url}` (`http://127.0.0.1:PORT/hook`).
pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inner.got.lock().unwrap().push(Received { headers, body });
    tokio::time::sleep(inner.delay).await;
    let s = inner.script.lock().unwrap().pop_front().unwrap_or(202);
    StatusCode::from_u16(s).unwrap()
}

impl Receiver {
    /// Answers `script` in turn, then 202.
    pub async fn start(script: &[u16]) -> Self {
        Self::start_slow(script, std::time::Duration::ZERO).await
    }

    /// [`Receiver::start`], each answer taking `delay`.
    pub async fn start_slow(script: &[u16], delay: std::time::Duration) -> Self {
        let inner = Arc::new(Inner {
            delay,
            ..Inner::default()
        });
        inner.script.lock().unwrap().extend(script);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Self { url, inner, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.got.lock().unwrap().clone()
    }
}
