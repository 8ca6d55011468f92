//! Our own small WS-Man client: the Windows Remote Shell verbs (Create, Command, Send,
//! Receive, Signal, Delete) over reqwest, Basic authentication over HTTPS, a per-host
//! concurrency bound and a pool of warm shells per host.

use super::soap::{self, RequestHeader, WsManFault};
use super::xml;
use crate::providers::ProviderError;
use async_trait::async_trait;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// What a finished remote command produced.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Counters of one host's transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// HTTP round trips sent (every WS-Man request, retries, background Signals and NTLM
    /// NEGOTIATE legs included).
    pub round_trips: u64,
    pub shells_created: u64,
    pub shells_deleted: u64,
}

impl std::ops::Add for TransportStats {
    type Output = TransportStats;
    fn add(self, o: Self) -> Self {
        TransportStats {
            round_trips: self.round_trips + o.round_trips,
            shells_created: self.shells_created + o.shells_created,
            shells_deleted: self.shells_deleted + o.shells_deleted,
        }
    }
}

/// Failures of the WS-Man layer, before they are mapped to [`ProviderError`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum WinRmError {
    /// TCP connect failed (refused, no route, DNS).
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// TLS handshake or certificate verification failed.
    #[error("TLS failure: {0}")]
    Tls(String),
    /// HTTP 401: the credentials were rejected.
    #[error("credentials rejected (HTTP 401)")]
    Auth,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Fault(WsManFault),
    #[error("unexpected HTTP status {status}: {snippet}")]
    Http { status: u16, snippet: String },
    #[error("WS-Man protocol error: {0}")]
    Protocol(String),
    /// The connection broke after it was established.
    #[error("connection failed: {0}")]
    Connection(String),
    /// Kerberos could not authenticate (no KDC, no service ticket, mutual auth failed).
    #[error("Kerberos: {0}")]
    Kerberos(String),
    /// The KDC refused the configured principal or password.
    #[error("Kerberos credentials refused: {0}")]
    KerberosCredentials(String),
}

impl WinRmError {
    /// Maps to the provider error our service understands; `host` names the host in messages.
    pub fn into_provider(self, host: &str) -> ProviderError {
        match self {
            WinRmError::Unreachable(m) => ProviderError::HostUnreachable(format!("{host}: {m}")),
            WinRmError::Tls(m) => ProviderError::Transport(format!("{host}: TLS: {m}")),
            WinRmError::Auth => ProviderError::UpstreamAuth(format!(
                "{host}: WinRM rejected the configured credentials (HTTP 401)"
            )),
            WinRmError::Timeout(m) => ProviderError::Timeout(format!("{host}: {m}")),
            WinRmError::Fault(f) if f.is_access_denied() => {
                ProviderError::UpstreamForbidden(format!("{host}: {f}"))
            }
            WinRmError::Fault(f) => ProviderError::Upstream {
                status: Some(500),
                code: format!("wsman_fault:{}", f.wsman_code.unwrap_or(0)),
                message: format!("{host}: {f}"),
            },
            WinRmError::Http { status, snippet } => ProviderError::Upstream {
                status: Some(status),
                code: "wsman_http_status".into(),
                message: format!("{host}: {snippet}"),
            },
            WinRmError::Protocol(m) => ProviderError::Upstream {
                status: None,
                code: "wsman_protocol".into(),
                message: format!("{host}: {m}"),
            },
            WinRmError::Connection(m) => ProviderError::Transport(format!("{host}: {m}")),
            WinRmError::KerberosCredentials(m) => {
                ProviderError::UpstreamAuth(format!("{host}: Kerberos: {m}"))
            }
            WinRmError::Kerberos(m) => ProviderError::Upstream {
                status: None,
                code: "kerberos".into(),
                message: format!("{host}: {m}"),
            },
        }
    }
}

/// One remote host that runs PowerShell scripts for us. Implementations: [`WsManClient`];
/// tests may plug in fakes.
#[async_trait]
pub trait WinRmTransport: Send + Sync {
    /// Runs one PowerShell script and waits for it to finish.
    async fn run_powershell(&self, script: &str) -> Result<CommandOutput, WinRmError>;
    fn stats(&self) -> TransportStats;
    /// Deletes the warm shells (shutdown).
    async fn close(&self) {}
}

/// Settings of one host's client.
#[derive(Clone)]
pub struct ClientSettings {
    pub host: String,
    pub endpoint: url::Url,
    pub username: String,
    pub password: SecretString,
    pub max_concurrency: usize,
    pub operation_timeout: Duration,
    pub command_timeout: Duration,
    pub shell_idle: Duration,
}

/// Longest command line Windows' CreateProcess accepts is 32767 UTF-16 units; we keep margin.
/// Longer scripts travel on stdin behind a fixed bootstrap command.
pub const MAX_ENCODED_COMMAND_LINE: usize = 30_000;

struct IdleShell {
    id: String,
    last_used: Instant,
}

/// How requests reach the host.
pub enum HttpChannel {
    /// reqwest with Basic credentials on every request.
    Basic(reqwest::Client),
    /// Our own NTLM-authenticated connections.
    Ntlm(Box<super::ntlm_http::NtlmHttp>),
}

struct Inner {
    s: ClientSettings,
    http: HttpChannel,
    sem: Arc<Semaphore>,
    idle: Mutex<Vec<IdleShell>>,
    round_trips: AtomicU64,
    shells_created: AtomicU64,
    shells_deleted: AtomicU64,
}

/// The WS-Man client of one host.
#[derive(Clone)]
pub struct WsManClient {
    inner: Arc<Inner>,
}

/// Encodes a script for `-EncodedCommand` (base64 of UTF-16LE).
pub fn encode_command(script: &str) -> String {
    let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The arguments of `powershell.exe` for an encoded script.
pub fn powershell_args(encoded: &str) -> [&str; 5] {
    [
        "-NoLogo",
        "-NoProfile",
        "-NonInteractive",
        "-EncodedCommand",
        encoded,
    ]
}

fn classify(e: reqwest::Error) -> WinRmError {
    if e.is_timeout() {
        return WinRmError::Timeout("no answer within the HTTP timeout".into());
    }
    let mut tls = false;
    let mut detail = e.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = src {
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        let t = s.to_string();
        let tl = t.to_ascii_lowercase();
        if tl.contains("certificate") || tl.contains("tls") || tl.contains("handshake") {
            tls = true;
        }
        detail = t;
        src = s.source();
    }
    if tls {
        WinRmError::Tls(detail)
    } else if e.is_connect() {
        WinRmError::Unreachable(detail)
    } else {
        WinRmError::Connection(detail)
    }
}

impl WsManClient {
    pub fn new(s: ClientSettings, http: HttpChannel) -> Self {
        let max = s.max_concurrency.max(1);
        Self {
            inner: Arc::new(Inner {
                s,
                http,
                sem: Arc::new(Semaphore::new(max)),
                idle: Mutex::new(Vec::new()),
                round_trips: AtomicU64::new(0),
                shells_created: AtomicU64::new(0),
                shells_deleted: AtomicU64::new(0),
            }),
        }
    }
}

impl Inner {
    /// One WS-Man round trip, as an OpenTelemetry client span.
    async fn post(
        &self,
        action: &str,
        shell_id: Option<&str>,
        options: &[(&str, &str)],
        body: &str,
    ) -> Result<xml::Element, WinRmError> {
        // The operation: the action URI's last segment (Create, Command, Receive, ...).
        let operation = action.rsplit('/').next().unwrap_or("");
        let span = tracing::info_span!(
            "upstream",
            otel.name = %format_args!("winrm {operation}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            upstream.provider = "winrm",
            upstream.operation = operation,
            http.request.method = "POST",
            server.address = self.s.endpoint.host_str().unwrap_or(""),
            http.response.status_code = tracing::field::Empty,
        );
        let res = self
            .post_inner(action, shell_id, options, body, &span)
            .instrument(span.clone())
            .await;
        if res.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        res
    }

    async fn post_inner(
        &self,
        action: &str,
        shell_id: Option<&str>,
        options: &[(&str, &str)],
        body: &str,
        span: &tracing::Span,
    ) -> Result<xml::Element, WinRmError> {
        let message_id = format!("uuid:{}", uuid::Uuid::new_v4().to_string().to_uppercase());
        let env = soap::request(
            &RequestHeader {
                to: self.s.endpoint.as_str(),
                action,
                message_id: &message_id,
                operation_timeout: self.s.operation_timeout,
                shell_id,
                options,
            },
            body,
        );
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let http_timeout = self.s.operation_timeout + Duration::from_secs(15);
        let (status, text) = match &self.http {
            HttpChannel::Basic(client) => {
                let mut trace = reqwest::header::HeaderMap::new();
                crate::telemetry::inject(&mut trace);
                let resp = client
                    .post(self.s.endpoint.clone())
                    .headers(trace)
                    .basic_auth(&self.s.username, Some(self.s.password.expose_secret()))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/soap+xml;charset=UTF-8",
                    )
                    .timeout(http_timeout)
                    .body(env)
                    .send()
                    .await
                    .map_err(classify)?;
                let status = resp.status().as_u16();
                if status == 401 {
                    return Err(WinRmError::Auth);
                }
                (status, resp.text().await.map_err(classify)?)
            }
            HttpChannel::Ntlm(n) => tokio::time::timeout(http_timeout, n.exchange(env))
                .await
                .map_err(|_| WinRmError::Timeout("no answer within the HTTP timeout".into()))??,
        };
        span.record("http.response.status_code", i64::from(status));
        if status == 401 {
            return Err(WinRmError::Auth);
        }
        let parsed = if text.trim().is_empty() {
            None
        } else {
            xml::parse(&text).ok()
        };
        if let Some(env) = &parsed
            && let Some(f) = soap::parse_fault(env)
        {
            return Err(WinRmError::Fault(f));
        }
        match (status, parsed) {
            (200, Some(env)) => Ok(env),
            (200, None) => Err(WinRmError::Protocol(
                "HTTP 200 without a readable SOAP envelope".into(),
            )),
            (status, _) => Err(WinRmError::Http {
                status,
                snippet: crate::domain::truncate_for_display(text.trim(), 200),
            }),
        }
    }

    async fn create_shell(&self) -> Result<String, WinRmError> {
        let env = self
            .post(
                soap::ACTION_CREATE,
                None,
                &[("WINRS_NOPROFILE", "TRUE"), ("WINRS_CODEPAGE", "65001")],
                &soap::create_shell_body(),
            )
            .await?;
        let id = soap::shell_id_of_create(&env)
            .ok_or_else(|| WinRmError::Protocol("CreateResponse without ShellId".into()))?;
        self.shells_created.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    async fn delete_shell(&self, id: &str) {
        if self
            .post(soap::ACTION_DELETE, Some(id), &[], "")
            .await
            .is_ok()
        {
            self.shells_deleted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A warm shell if one is fresh, else `None`. Expired shells are deleted in the background.
    fn take_idle(self: &Arc<Self>) -> Option<String> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(sh) = idle.pop() {
                if now.duration_since(sh.last_used) < self.s.shell_idle {
                    found = Some(sh.id);
                    break;
                }
                expired.push(sh.id);
            }
            found
        };
        if !expired.is_empty() {
            let me = self.clone();
            // Clean-up the current call caused: part of its trace.
            tokio::spawn(
                async move {
                    for id in expired {
                        me.delete_shell(&id).await;
                    }
                }
                .instrument(tracing::Span::current()),
            );
        }
        found
    }

    fn put_idle(&self, id: String) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(IdleShell {
            id,
            last_used: Instant::now(),
        });
    }

    fn discard(self: &Arc<Self>, id: String) {
        let me = self.clone();
        tokio::spawn(
            async move { me.delete_shell(&id).await }.instrument(tracing::Span::current()),
        );
    }

    async fn start_command(
        &self,
        shell: &str,
        args: &[&str],
        stdin: bool,
    ) -> Result<String, WinRmError> {
        // A script on stdin is read to its end: a pipe (not console mode) delivers the EOF.
        let console = if stdin { "FALSE" } else { "TRUE" };
        let env = self
            .post(
                soap::ACTION_COMMAND,
                Some(shell),
                &[
                    ("WINRS_CONSOLEMODE_STDIN", console),
                    ("WINRS_SKIP_CMD_SHELL", "TRUE"),
                ],
                &soap::command_body("powershell.exe", args),
            )
            .await?;
        soap::command_id_of(&env)
            .ok_or_else(|| WinRmError::Protocol("CommandResponse without CommandId".into()))
    }

    async fn collect(&self, shell: &str, cmd: &str) -> Result<CommandOutput, WinRmError> {
        let deadline = Instant::now() + self.s.command_timeout;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        loop {
            if Instant::now() >= deadline {
                return Err(WinRmError::Timeout(format!(
                    "command did not finish within {:?}",
                    self.s.command_timeout
                )));
            }
            match self
                .post(
                    soap::ACTION_RECEIVE,
                    Some(shell),
                    &[("WSMAN_CMDSHELL_OPTION_KEEPALIVE", "TRUE")],
                    &soap::receive_body(cmd),
                )
                .await
            {
                Ok(env) => {
                    let chunk = soap::parse_receive(&env).map_err(WinRmError::Protocol)?;
                    stdout.extend_from_slice(&chunk.stdout);
                    stderr.extend_from_slice(&chunk.stderr);
                    if chunk.done {
                        return Ok(CommandOutput {
                            exit_code: chunk.exit_code.unwrap_or(0),
                            stdout: String::from_utf8_lossy(&stdout).into_owned(),
                            stderr: String::from_utf8_lossy(&stderr).into_owned(),
                        });
                    }
                }
                Err(WinRmError::Fault(f)) if f.is_timed_out() => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Bootstrap used when a script is too long for the command line: read the script from
/// stdin and run it. Fixed text; the emulator recognises it like every other template.
pub const STDIN_BOOTSTRAP: &str = "$ErrorActionPreference = 'Stop'; $s = [Console]::In.ReadToEnd(); & ([scriptblock]::Create($s))";

#[async_trait]
impl WinRmTransport for WsManClient {
    #[tracing::instrument(skip_all, fields(winrm.host = %self.inner.s.host))]
    async fn run_powershell(&self, script: &str) -> Result<CommandOutput, WinRmError> {
        let inner = &self.inner;
        let permit = inner
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WinRmError::Protocol("transport closed".into()))?;
        let direct = encode_command(script);
        let use_stdin = direct.len() > MAX_ENCODED_COMMAND_LINE;
        let encoded = if use_stdin {
            encode_command(STDIN_BOOTSTRAP)
        } else {
            direct
        };
        let args = powershell_args(&encoded);

        // Start the command: on a warm shell first; a warm shell the server no longer knows
        // (idle timeout, service restart) is discarded and the command retried once on a new one.
        let mut attempt = 0;
        let (shell, cmd) = loop {
            attempt += 1;
            let (shell, warm) = match inner.take_idle() {
                Some(s) => (s, true),
                None => (inner.create_shell().await?, false),
            };
            match inner.start_command(&shell, &args, use_stdin).await {
                Ok(cmd) => break (shell, cmd),
                Err(WinRmError::Fault(f)) if warm && attempt < 2 => {
                    tracing::debug!(fault = %f, "warm shell rejected; opening a new one");
                    inner.discard(shell);
                }
                Err(e) => {
                    inner.discard(shell);
                    return Err(e);
                }
            }
        };
        if use_stdin {
            let b64 = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
            if let Err(e) = inner
                .post(
                    soap::ACTION_SEND,
                    Some(&shell),
                    &[],
                    &soap::send_body(&cmd, &b64, true),
                )
                .await
            {
                inner.discard(shell);
                return Err(e);
            }
        }
        let out = match inner.collect(&shell, &cmd).await {
            Ok(o) => o,
            Err(e) => {
                inner.discard(shell);
                return Err(e);
            }
        };
        // Terminate the finished command off the caller's path; the shell returns to the pool
        // (and the host's concurrency permit is released) once the server acknowledged it.
        let me = inner.clone();
        tokio::spawn(
            async move {
                let r = me
                    .post(
                        soap::ACTION_SIGNAL,
                        Some(&shell),
                        &[],
                        &soap::signal_body(&cmd, soap::SIGNAL_TERMINATE),
                    )
                    .await;
                match r {
                    Ok(_) => me.put_idle(shell),
                    Err(_) => me.discard(shell),
                }
                drop(permit);
            }
            .instrument(tracing::Span::current()),
        );
        Ok(out)
    }

    fn stats(&self) -> TransportStats {
        let handshakes = match &self.inner.http {
            HttpChannel::Ntlm(n) => n.handshake_round_trips(),
            HttpChannel::Basic(_) => 0,
        };
        TransportStats {
            round_trips: self.inner.round_trips.load(Ordering::Relaxed) + handshakes,
            shells_created: self.inner.shells_created.load(Ordering::Relaxed),
            shells_deleted: self.inner.shells_deleted.load(Ordering::Relaxed),
        }
    }

    async fn close(&self) {
        let ids: Vec<String> = {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.drain(..).map(|s| s.id).collect()
        };
        for id in ids {
            self.inner.delete_shell(&id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_command_is_utf16le_base64() {
        // "hi" → 68 00 69 00
        assert_eq!(encode_command("hi"), "aABpAA==");
    }

    #[test]
    fn faults_map_to_provider_errors() {
        let f = WsManFault {
            code: "s:Sender".into(),
            subcode: "w:AccessDenied".into(),
            reason: "Access is denied.".into(),
            wsman_code: Some(5),
            message: String::new(),
        };
        assert!(matches!(
            WinRmError::Fault(f).into_provider("h"),
            ProviderError::UpstreamForbidden(_)
        ));
        assert!(matches!(
            WinRmError::Auth.into_provider("h"),
            ProviderError::UpstreamAuth(_)
        ));
        assert!(matches!(
            WinRmError::Unreachable("refused".into()).into_provider("h"),
            ProviderError::HostUnreachable(_)
        ));
        assert!(matches!(
            WinRmError::Tls("bad cert".into()).into_provider("h"),
            ProviderError::Transport(_)
        ));
    }
}
