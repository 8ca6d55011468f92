//! WinRM host emulator: fake Windows hosts speaking the Windows Remote Shell protocol
//! (WS-Management, SOAP 1.2 over `POST /wsman`, HTTPS, Basic or NTLM auth, NTLM channel
//! binding checked like `CbtHardeningLevel`): Create, Command, Send,
//! Receive (with `w:TimedOut` faults when a command outlives the OperationTimeout), Signal
//! and Delete. Each emulated host has its own listener on 127.0.0.1. The hosts "run"
//! sessiongate's own script templates against an in-memory session table; any other script
//! fails like PowerShell would.

pub mod gss_acceptor;
mod host;
pub mod ntlm_acceptor;

pub use host::{EmuSession, ReceivedScript, SentMessage};

use crate::emulator::common::{
    ConnectionId, EmulatorTls, FaultSettings, Faults, Running, serve_tls,
};
use crate::providers::winrm::soap;
use crate::providers::winrm::transport::STDIN_BOOTSTRAP;
use crate::providers::winrm::xml::{self, Element, esc};
use crate::providers::winrm::{cbt, ntlm};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU8, AtomicU64, Ordering},
};
use std::time::{Duration, Instant};

/// Which kind of Windows host is emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    #[default]
    Rds,
    #[serde(rename = "multipoint")]
    MultiPoint,
}

/// The emulated hosts' `CbtHardeningLevel` (WinRM service `Auth\CbtHardeningLevel`): what an
/// NTLM AUTHENTICATE must carry as TLS channel binding (`MsvAvChannelBindings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CbtHardening {
    /// Channel bindings are ignored.
    None,
    /// A binding that is present must match this host's certificate; none at all is accepted.
    #[default]
    Relaxed,
    /// A binding matching this host's certificate is required.
    Strict,
}

impl CbtHardening {
    fn to_u8(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Relaxed => 1,
            Self::Strict => 2,
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::None,
            2 => Self::Strict,
            _ => Self::Relaxed,
        }
    }
    /// Whether a presented binding (`None`: absent or all-zero) passes, given the expected one.
    pub fn accepts(self, presented: Option<[u8; 16]>, expected: Option<[u8; 16]>) -> bool {
        match self {
            Self::None => true,
            Self::Relaxed => presented.is_none() || presented == expected,
            Self::Strict => presented.is_some() && presented == expected,
        }
    }
}

/// Options of `sessiongate emulate winrm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WinRmEmulatorOptions {
    pub flavour: Flavour,
    /// Host names (FQDNs) to emulate; one listener each.
    pub hosts: Vec<String>,
    /// User sessions created on each host (ids 2, 3, …); session 0 (services) always exists.
    pub sessions_per_host: u32,
    pub username: String,
    pub password: String,
    /// Delay added to every WS-Man round trip.
    pub latency_ms: u64,
    pub faults: FaultSettings,
    /// Hosts that refuse connections (their port is closed).
    pub unreachable: Vec<String>,
    /// How long each remote command "runs" before its output is ready.
    pub command_duration_ms: u64,
    /// Accept Kerberos (under `Negotiate`/`Kerberos`) with the keys of this keytab
    /// (`HTTP/<host>` principals); needs MIT's `libgssapi_krb5.so.2`.
    pub kerberos_keytab: Option<std::path::PathBuf>,
    /// The client principal Kerberos must prove (`user@REALM`); default: `username` at any
    /// realm.
    pub kerberos_principal: Option<String>,
    /// NTLM channel-binding enforcement of every host (changeable per host while running).
    pub cbt_hardening: CbtHardening,
}

impl Default for WinRmEmulatorOptions {
    fn default() -> Self {
        Self {
            flavour: Flavour::Rds,
            hosts: vec!["rdsh-01.contoso.test".into()],
            sessions_per_host: 3,
            username: "sessiongate".into(),
            password: "Emulator-Passw0rd!".into(),
            latency_ms: 0,
            faults: FaultSettings::default(),
            unreachable: Vec::new(),
            command_duration_ms: 0,
            kerberos_keytab: None,
            kerberos_principal: None,
            cbt_hardening: CbtHardening::Relaxed,
        }
    }
}

/// Behaviour switches of one host, flipped by tests.
#[derive(Debug, Clone, Default)]
pub struct HostMode {
    /// Every script reports this Win32 error (5 access denied, 1722 RPC unavailable, …).
    pub force_win32: Option<u32>,
    /// Every Command request fails with a WS-Man fault carrying this code.
    pub command_fault: Option<u64>,
}

struct EmuCommand {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: i64,
    ready_at: Instant,
    awaiting_stdin: bool,
    stdin: Vec<u8>,
    command_line: String,
}

pub(crate) struct HostState {
    pub(crate) name: String,
    pub(crate) sessions: Mutex<BTreeMap<u32, EmuSession>>,
    pub(crate) messages: Mutex<Vec<SentMessage>>,
    pub(crate) mode: Mutex<HostMode>,
    shells: Mutex<HashMap<String, HashMap<String, EmuCommand>>>,
    round_trips: AtomicU64,
    /// [`CbtHardening`] as u8.
    cbt_hardening: AtomicU8,
}

pub(crate) struct StateInner {
    pub(crate) flavour: Flavour,
    username: String,
    password: String,
    hosts: Vec<Arc<HostState>>,
    pub(crate) scripts: Mutex<Vec<ReceivedScript>>,
    round_trips: AtomicU64,
    /// The `traceparent` of the latest requests (`None`: sent without), oldest first, at most
    /// [`KEPT_TRACEPARENTS`].
    traceparents: Mutex<std::collections::VecDeque<Option<String>>>,
    shells_created: AtomicU64,
    command_duration_ms: AtomicU64,
    /// NTLM: the NEGOTIATE received and the CHALLENGE sent per connection (the MIC covers
    /// both), and connections that authenticated.
    ntlm_pending: Mutex<HashMap<u64, NtlmExchange>>,
    ntlm_authed: Mutex<std::collections::HashSet<u64>>,
    /// `MsvAvChannelBindings` a client of this emulator's certificate sends (`None` when the
    /// certificate has no RFC 5929 hash: then every presented binding is wrong).
    expected_cbt: Option<[u8; 16]>,
    /// NTLM AUTHENTICATEs with a valid proof refused for their channel binding.
    cbt_refusals: AtomicU64,
    /// NTLM sign-ins accepted (one per authenticated connection).
    ntlm_sign_ins: AtomicU64,
    kerberos: Option<KerberosAcceptor>,
    /// Connections authenticated with Kerberos: client principal, channel bindings verified.
    kerberos_clients: Mutex<Vec<(String, bool)>>,
}

/// An NTLM exchange waiting for its AUTHENTICATE: the NEGOTIATE received, the CHALLENGE sent.
type NtlmExchange = (Vec<u8>, Vec<u8>);

struct KerberosAcceptor {
    cred: crate::providers::winrm::gssapi::Credential,
    principal: Option<String>,
    /// `tls-server-end-point` application data of our own certificate.
    app_data: Vec<u8>,
}

/// How many requests' `traceparent` [`WinRmEmulatorState::received_traceparents`] keeps.
pub const KEPT_TRACEPARENTS: usize = 1000;

/// Handle on the emulator's state for tests and benchmarks.
#[derive(Clone)]
pub struct WinRmEmulatorState {
    inner: Arc<StateInner>,
}

impl WinRmEmulatorState {
    fn host(&self, name: &str) -> Option<&Arc<HostState>> {
        self.inner
            .hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
    /// The `traceparent` header of the latest WS-Man requests (401s included), oldest first.
    pub fn received_traceparents(&self) -> Vec<Option<String>> {
        self.inner
            .traceparents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
    /// Every WS-Man request received, over all hosts (401s included).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }
    pub fn host_round_trips(&self, host: &str) -> u64 {
        self.host(host)
            .map(|h| h.round_trips.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
    pub fn shells_created(&self) -> u64 {
        self.inner.shells_created.load(Ordering::Relaxed)
    }
    /// Shells currently open on a host.
    pub fn open_shells(&self, host: &str) -> usize {
        self.host(host)
            .map(|h| h.shells.lock().unwrap_or_else(|p| p.into_inner()).len())
            .unwrap_or(0)
    }
    pub fn sessions(&self, host: &str) -> BTreeMap<u32, EmuSession> {
        self.host(host)
            .map(|h| h.sessions.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
    pub fn total_sessions(&self) -> usize {
        self.inner
            .hosts
            .iter()
            .map(|h| h.sessions.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
    pub fn add_session(&self, host: &str, id: u32, s: EmuSession) {
        if let Some(h) = self.host(host) {
            h.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, s);
        }
    }
    pub fn remove_session(&self, host: &str, id: u32) {
        if let Some(h) = self.host(host) {
            h.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
    pub fn messages(&self, host: &str) -> Vec<SentMessage> {
        self.host(host)
            .map(|h| h.messages.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
    /// Every script received so far, decoded.
    pub fn scripts(&self) -> Vec<ReceivedScript> {
        self.inner
            .scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn set_mode(&self, host: &str, mode: HostMode) {
        if let Some(h) = self.host(host) {
            *h.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        }
    }
    /// Forgets every shell of a host (as after a WinRM service restart or idle timeout).
    pub fn drop_shells(&self, host: &str) {
        if let Some(h) = self.host(host) {
            h.shells.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
    /// Client principals of the connections that authenticated with Kerberos, in order.
    pub fn kerberos_clients(&self) -> Vec<String> {
        self.inner
            .kerberos_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }
    /// For each Kerberos-authenticated connection: whether its channel bindings matched.
    pub fn kerberos_bound(&self) -> Vec<bool> {
        self.inner
            .kerberos_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, b)| *b)
            .collect()
    }
    /// Sets the channel-binding enforcement of every host.
    pub fn set_cbt_hardening(&self, level: CbtHardening) {
        for h in &self.inner.hosts {
            h.cbt_hardening.store(level.to_u8(), Ordering::Relaxed);
        }
    }
    /// Sets the channel-binding enforcement of one host.
    pub fn set_host_cbt_hardening(&self, host: &str, level: CbtHardening) {
        if let Some(h) = self.host(host) {
            h.cbt_hardening.store(level.to_u8(), Ordering::Relaxed);
        }
    }
    pub fn cbt_hardening(&self, host: &str) -> Option<CbtHardening> {
        self.host(host)
            .map(|h| CbtHardening::from_u8(h.cbt_hardening.load(Ordering::Relaxed)))
    }
    /// NTLM sign-ins with the right password refused for a missing or wrong channel binding.
    pub fn cbt_refusals(&self) -> u64 {
        self.inner.cbt_refusals.load(Ordering::Relaxed)
    }
    /// NTLM sign-ins accepted so far (each authenticates one connection).
    pub fn ntlm_sign_ins(&self) -> u64 {
        self.inner.ntlm_sign_ins.load(Ordering::Relaxed)
    }
    /// The `MsvAvChannelBindings` value a client must send to these hosts.
    pub fn expected_channel_binding(&self) -> Option<[u8; 16]> {
        self.inner.expected_cbt
    }
    pub fn set_command_duration(&self, d: Duration) {
        self.inner
            .command_duration_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

/// One emulated host as announced by [`WinRmEmulator::info`].
#[derive(Debug, Clone, Serialize)]
pub struct EmulatedHost {
    pub name: String,
    pub endpoint: String,
    pub reachable: bool,
}

/// The one JSON line `sessiongate emulate winrm` prints.
#[derive(Debug, Clone, Serialize)]
pub struct WinRmEmulatorInfo {
    pub emulator: &'static str,
    pub flavour: Flavour,
    pub username: String,
    pub password: String,
    pub auth: Vec<&'static str>,
    pub cbt_hardening: CbtHardening,
    pub hosts: Vec<EmulatedHost>,
}

/// A running WinRM emulator (all its listeners stop when dropped).
pub struct WinRmEmulator {
    info: WinRmEmulatorInfo,
    state: WinRmEmulatorState,
    faults: Arc<Faults>,
    _running: Vec<Running>,
}

impl WinRmEmulator {
    pub fn info(&self) -> &WinRmEmulatorInfo {
        &self.info
    }
    pub fn state(&self) -> WinRmEmulatorState {
        self.state.clone()
    }
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
    /// Endpoint URL of a host.
    pub fn endpoint(&self, host: &str) -> Option<String> {
        self.info
            .hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(host))
            .map(|h| h.endpoint.clone())
    }
}

fn initial_sessions(flavour: Flavour, host_index: usize, n: u32) -> BTreeMap<u32, EmuSession> {
    let mut m = BTreeMap::new();
    m.insert(
        0,
        EmuSession {
            user: String::new(),
            domain: String::new(),
            state: "Disconnected".into(),
            station: "Services".into(),
            admin: false,
            locked: false,
        },
    );
    for k in 0..n {
        let id = k + 2;
        let mut s = EmuSession::user(
            &format!("user{:03}-{:02}", host_index + 1, k + 1),
            "CONTOSO",
            k % 3 != 2,
        );
        if flavour == Flavour::MultiPoint {
            s.station = format!("Station{}", k + 1);
        }
        m.insert(id, s);
    }
    m
}

/// Starts one listener per host on 127.0.0.1:0 (a closed port for unreachable hosts).
pub async fn start(
    tls: &EmulatorTls,
    opts: WinRmEmulatorOptions,
) -> std::io::Result<WinRmEmulator> {
    let mut faults_cfg = opts.faults;
    if opts.latency_ms > 0 {
        faults_cfg.latency_ms = opts.latency_ms;
    }
    let faults = Faults::new(faults_cfg);
    let kerberos = match &opts.kerberos_keytab {
        None => None,
        Some(kt) => {
            let cred = gss_acceptor::acceptor_from_keytab(kt)
                .map_err(|e| std::io::Error::other(format!("Kerberos keytab: {e}")))?;
            let app_data =
                cbt::application_data(tls.server_cert_der()).map_err(std::io::Error::other)?;
            Some(KerberosAcceptor {
                cred,
                principal: opts.kerberos_principal.clone(),
                app_data,
            })
        }
    };
    let mut auth_schemes = vec!["basic", "ntlm"];
    if kerberos.is_some() {
        auth_schemes.push("kerberos");
    }
    let hosts: Vec<Arc<HostState>> = opts
        .hosts
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Arc::new(HostState {
                name: name.clone(),
                sessions: Mutex::new(initial_sessions(opts.flavour, i, opts.sessions_per_host)),
                messages: Mutex::new(Vec::new()),
                mode: Mutex::new(HostMode::default()),
                shells: Mutex::new(HashMap::new()),
                round_trips: AtomicU64::new(0),
                cbt_hardening: AtomicU8::new(opts.cbt_hardening.to_u8()),
            })
        })
        .collect();
    let inner = Arc::new(StateInner {
        flavour: opts.flavour,
        username: opts.username.clone(),
        password: opts.password.clone(),
        hosts: hosts.clone(),
        scripts: Mutex::new(Vec::new()),
        round_trips: AtomicU64::new(0),
        traceparents: Mutex::new(std::collections::VecDeque::new()),
        shells_created: AtomicU64::new(0),
        command_duration_ms: AtomicU64::new(opts.command_duration_ms),
        ntlm_pending: Mutex::new(HashMap::new()),
        ntlm_authed: Mutex::new(std::collections::HashSet::new()),
        kerberos,
        kerberos_clients: Mutex::new(Vec::new()),
        expected_cbt: cbt::application_data(tls.server_cert_der())
            .ok()
            .map(|app| cbt::ntlm_channel_binding_hash(&app)),
        cbt_refusals: AtomicU64::new(0),
        ntlm_sign_ins: AtomicU64::new(0),
    });
    let mut running = Vec::new();
    let mut announced = Vec::new();
    for h in &hosts {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let endpoint = format!("https://127.0.0.1:{port}/wsman");
        let reachable = !opts
            .unreachable
            .iter()
            .any(|u| u.eq_ignore_ascii_case(&h.name));
        if reachable {
            let router = Router::new()
                .route("/wsman", post(wsman))
                .with_state((inner.clone(), h.clone()));
            running.push(serve_tls(
                listener,
                tls,
                router,
                faults.clone(),
                injected_error,
            )?);
        } else {
            drop(listener);
        }
        announced.push(EmulatedHost {
            name: h.name.clone(),
            endpoint,
            reachable,
        });
    }
    Ok(WinRmEmulator {
        info: WinRmEmulatorInfo {
            emulator: "winrm",
            flavour: opts.flavour,
            username: opts.username,
            password: opts.password,
            auth: auth_schemes,
            cbt_hardening: opts.cbt_hardening,
            hosts: announced,
        },
        state: WinRmEmulatorState { inner },
        faults,
        _running: running,
    })
}

const ENVELOPE_OPEN: &str = concat!(
    r#"<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope""#,
    r#" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing""#,
    r#" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer""#,
    r#" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd""#,
    r#" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell""#,
    r#" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">"#
);

fn soap_response(status: StatusCode, action: &str, relates_to: &str, body: &str) -> Response {
    let msg = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>{ENVELOPE_OPEN}<s:Header><a:Action>{}</a:Action><a:MessageID>uuid:{}</a:MessageID><a:To>{}</a:To><a:RelatesTo>{}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        esc(action),
        uuid::Uuid::new_v4().to_string().to_uppercase(),
        soap::ANONYMOUS,
        esc(relates_to),
    );
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/soap+xml;charset=UTF-8"),
        )],
        msg,
    )
        .into_response()
}

fn fault(
    relates_to: &str,
    code: &str,
    subcode: &str,
    wsman_code: u64,
    text: &str,
    machine: &str,
) -> Response {
    let body = format!(
        r#"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{t}</s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f="{ns}" Code="{wsman_code}" Machine="{m}"><f:Message>{t}</f:Message></f:WSManFault></s:Detail></s:Fault>"#,
        t = esc(text),
        ns = soap::NS_WSMAN_FAULT,
        m = esc(machine),
    );
    soap_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        soap::ACTION_FAULT,
        relates_to,
        &body,
    )
}

fn injected_error() -> Response {
    fault(
        "uuid:00000000-0000-0000-0000-000000000000",
        "s:Receiver",
        "w:InternalError",
        2150858752,
        "The WS-Management service cannot process the request (injected fault).",
        "emulator",
    )
}

fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "").into_response();
    let h = r.headers_mut();
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"WSMAN\""),
    );
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Negotiate"),
    );
    r
}

enum AuthOutcome {
    Ok,
    Refused,
    /// NTLM CHALLENGE to send back in a 401.
    Challenge(Vec<u8>),
    /// Kerberos accepted: the AP-REP goes back on the answer (mutual authentication).
    OkWithReply(Vec<u8>),
}

/// Kerberos under `Negotiate`/`Kerberos`: one leg authenticates the connection.
/// Channel bindings follow the host's `CbtHardeningLevel` as for NTLM: `none` ignores them,
/// `relaxed` refuses wrong ones, `strict` also refuses missing ones.
fn kerberos_authenticate(
    st: &StateInner,
    host: &HostState,
    conn: u64,
    token: &[u8],
) -> AuthOutcome {
    let Some(k) = &st.kerberos else {
        return AuthOutcome::Refused;
    };
    let level = CbtHardening::from_u8(host.cbt_hardening.load(Ordering::Relaxed));
    let bindings = (level != CbtHardening::None).then_some(k.app_data.as_slice());
    let accepted = match gss_acceptor::accept(&k.cred, token, bindings) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(target: "sessiongate::emulator", error = %e, "Kerberos refused");
            return AuthOutcome::Refused;
        }
    };
    let allowed = match &k.principal {
        Some(p) => accepted.client.eq_ignore_ascii_case(p),
        None => accepted
            .client
            .split('@')
            .next()
            .is_some_and(|u| u.eq_ignore_ascii_case(&st.username)),
    };
    if !allowed {
        return AuthOutcome::Refused;
    }
    if level == CbtHardening::Strict && !accepted.channel_bound {
        st.cbt_refusals.fetch_add(1, Ordering::Relaxed);
        return AuthOutcome::Refused;
    }
    st.ntlm_authed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(conn);
    st.kerberos_clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((accepted.client, accepted.channel_bound));
    AuthOutcome::OkWithReply(accepted.reply)
}

/// Basic on every request, or NTLM (under `Negotiate` or `NTLM`) once per connection.
fn authenticate(
    st: &StateInner,
    host: &HostState,
    conn: Option<u64>,
    headers: &HeaderMap,
) -> AuthOutcome {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = raw.and_then(|r| {
        r.strip_prefix("Negotiate ")
            .or_else(|| r.strip_prefix("NTLM "))
            .or_else(|| r.strip_prefix("Kerberos "))
            .and_then(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t.trim())
                    .ok()
            })
    });
    match (token, conn) {
        (Some(tok), Some(c)) if !tok.starts_with(b"NTLMSSP\0") => {
            kerberos_authenticate(st, host, c, &tok)
        }
        (Some(tok), Some(c)) => {
            if ntlm_acceptor::is_negotiate(&tok) {
                let sc: [u8; 8] = rand::random();
                let info = ntlm::av_pairs(&[
                    (ntlm::AV_NB_DOMAIN, ntlm::utf16le("CONTOSO")),
                    (
                        ntlm::AV_NB_COMPUTER,
                        ntlm::utf16le(&host.name.to_ascii_uppercase()),
                    ),
                    (
                        ntlm::AV_TIMESTAMP,
                        ntlm::filetime_now().to_le_bytes().to_vec(),
                    ),
                ]);
                let challenge = ntlm_acceptor::challenge_message(sc, &info, "CONTOSO");
                st.ntlm_pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c, (tok, challenge.clone()));
                return AuthOutcome::Challenge(challenge);
            }
            let pending = st
                .ntlm_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&c);
            match pending {
                Some((negotiate, challenge))
                    if ntlm_acceptor::verify_authenticate(
                        &tok,
                        &negotiate,
                        &challenge,
                        &st.username,
                        &st.password,
                    ) =>
                {
                    let level = CbtHardening::from_u8(host.cbt_hardening.load(Ordering::Relaxed));
                    if !level.accepts(ntlm_acceptor::channel_binding_of(&tok), st.expected_cbt) {
                        // Windows answers a bad binding like a bad password: 401.
                        st.cbt_refusals.fetch_add(1, Ordering::Relaxed);
                        return AuthOutcome::Refused;
                    }
                    st.ntlm_sign_ins.fetch_add(1, Ordering::Relaxed);
                    st.ntlm_authed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(c);
                    AuthOutcome::Ok
                }
                _ => AuthOutcome::Refused,
            }
        }
        (Some(_), None) => AuthOutcome::Refused,
        (None, _) if raw.is_some() => {
            if basic_ok(st, raw) {
                AuthOutcome::Ok
            } else {
                AuthOutcome::Refused
            }
        }
        (None, Some(c)) => {
            if st
                .ntlm_authed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&c)
            {
                AuthOutcome::Ok
            } else {
                AuthOutcome::Refused
            }
        }
        (None, None) => AuthOutcome::Refused,
    }
}

fn basic_ok(st: &StateInner, raw: Option<&str>) -> bool {
    let Some(raw) = raw else {
        return false;
    };
    let Some(b64) = raw
        .strip_prefix("Basic ")
        .or_else(|| raw.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", st.username, st.password);
    subtle::ConstantTimeEq::ct_eq(bytes.as_slice(), expected.as_bytes()).into()
}

/// Splits the command line into tokens (WinRM hands `Command` and `Arguments` separately;
/// clients such as pywinrm put everything into `Command`).
fn command_line(body: &Element) -> String {
    let mut parts = Vec::new();
    if let Some(cl) = body.find("CommandLine") {
        if let Some(c) = cl.child("Command") {
            parts.push(c.text.trim().to_string());
        }
        for a in cl.children_named("Arguments") {
            parts.push(a.text.trim().to_string());
        }
    }
    parts.join(" ")
}

/// Decodes `powershell … -EncodedCommand <b64>` into the script; `Err` carries stderr.
fn powershell_script(cmdline: &str) -> Option<Result<String, String>> {
    let tokens: Vec<&str> = cmdline.split_whitespace().collect();
    let exe = tokens.first()?.to_ascii_lowercase();
    let exe = exe.rsplit(['\\', '/']).next().unwrap_or(&exe).to_string();
    if !matches!(
        exe.as_str(),
        "powershell" | "powershell.exe" | "pwsh" | "pwsh.exe"
    ) {
        return None;
    }
    let pos = tokens.iter().position(|t| {
        let l = t.to_ascii_lowercase();
        l.len() >= 2 && "-encodedcommand".starts_with(&l)
    });
    let Some(pos) = pos else {
        return Some(Err(
            "This emulated host only accepts -EncodedCommand scripts.\r\n".into(),
        ));
    };
    let Some(b64) = tokens.get(pos + 1) else {
        return Some(Err("Cannot process the command because of a missing parameter. Specify a parameter of type 'System.String' and try again.\r\n".into()));
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return Some(Err("Cannot process the command because the value specified with -EncodedCommand is not properly encoded. The value must be Base64 encoded.\r\n".into()));
    };
    if bytes.len() % 2 != 0 {
        return Some(Err(
            "The value specified with -EncodedCommand is not valid UTF-16.\r\n".into(),
        ));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Some(String::from_utf16(&units).map_err(|_| {
        "The value specified with -EncodedCommand is not valid UTF-16.\r\n".to_string()
    }))
}

async fn wsman(
    State((st, host)): State<(Arc<StateInner>, Arc<HostState>)>,
    conn: Option<axum::Extension<ConnectionId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.round_trips.fetch_add(1, Ordering::Relaxed);
    host.round_trips.fetch_add(1, Ordering::Relaxed);
    {
        let mut kept = st.traceparents.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= KEPT_TRACEPARENTS {
            kept.pop_front();
        }
        kept.push_back(
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
    }
    match authenticate(&st, &host, conn.map(|c| c.0.0), &headers) {
        AuthOutcome::Ok => {}
        AuthOutcome::OkWithReply(reply) => {
            let mut r = wsman_authenticated(&st, &host, &headers, &body).await;
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Negotiate {}",
                base64::engine::general_purpose::STANDARD.encode(reply)
            )) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return r;
        }
        AuthOutcome::Refused => return unauthorized(),
        AuthOutcome::Challenge(msg) => {
            let mut r = (StatusCode::UNAUTHORIZED, "").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Negotiate {}",
                base64::engine::general_purpose::STANDARD.encode(msg)
            )) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return r;
        }
    }
    wsman_authenticated(&st, &host, &headers, &body).await
}

/// One WS-Man request on an authenticated connection.
async fn wsman_authenticated(
    st: &Arc<StateInner>,
    host: &Arc<HostState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let ct_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("soap+xml"));
    if !ct_ok {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "").into_response();
    }
    let text = String::from_utf8_lossy(body);
    let env = match xml::parse(&text) {
        Ok(e) if e.name == "Envelope" => e,
        _ => {
            return fault(
                "",
                "s:Sender",
                "w:SchemaValidationError",
                2150858817,
                "The SOAP XML in the message does not match the corresponding XML schema definition.",
                &host.name,
            );
        }
    };
    let hdr = env.child("Header").cloned().unwrap_or_default();
    let message_id = hdr
        .child("MessageID")
        .map(|m| m.trimmed_text().to_string())
        .unwrap_or_default();
    let action = soap::action_of(&env).unwrap_or("").to_string();
    let resource = hdr
        .child("ResourceURI")
        .map(|r| r.trimmed_text().to_string())
        .unwrap_or_default();
    let op_timeout = hdr
        .child("OperationTimeout")
        .and_then(|t| soap::parse_xs_duration(&t.text))
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(600));
    let shell_id = soap::selector(&env, "ShellId");
    let body_el = env.child("Body").cloned().unwrap_or_default();

    if !resource.eq_ignore_ascii_case(soap::RESOURCE_CMD) {
        return fault(
            &message_id,
            "s:Sender",
            "w:DestinationUnreachable",
            2150858770,
            "The WS-Management service cannot process the request because the resource URI is not supported by this emulated host.",
            &host.name,
        );
    }

    let shell_not_found = |id: &str| {
        fault(
            &message_id,
            "s:Sender",
            "w:InvalidSelectors",
            soap::CODE_SHELL_NOT_FOUND,
            &format!(
                "The request for the Windows Remote Shell with ShellId {id} failed because the shell was not found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server."
            ),
            &host.name,
        )
    };

    match action.as_str() {
        soap::ACTION_CREATE => {
            let id = uuid::Uuid::new_v4().to_string().to_uppercase();
            host.shells
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), HashMap::new());
            st.shells_created.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                r#"<x:ResourceCreated><a:Address>https://{h}:5986/wsman</a:Address><a:ReferenceParameters><w:ResourceURI>{r}</w:ResourceURI><w:SelectorSet><w:Selector Name="ShellId">{id}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated><rsp:Shell><rsp:ShellId>{id}</rsp:ShellId><rsp:ResourceUri>{r}</rsp:ResourceUri><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"#,
                h = esc(&host.name),
                r = soap::RESOURCE_CMD,
            );
            soap_response(
                StatusCode::OK,
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse",
                &message_id,
                &body,
            )
        }
        soap::ACTION_DELETE => {
            let id = shell_id.unwrap_or_default();
            let removed = host
                .shells
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if removed.is_none() {
                return shell_not_found(&id);
            }
            soap_response(
                StatusCode::OK,
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse",
                &message_id,
                "",
            )
        }
        soap::ACTION_COMMAND => {
            let id = shell_id.unwrap_or_default();
            if !host
                .shells
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&id)
            {
                return shell_not_found(&id);
            }
            let forced_fault = host
                .mode
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .command_fault;
            if let Some(code) = forced_fault {
                return fault(
                    &message_id,
                    "s:Receiver",
                    "w:InternalError",
                    code,
                    "The WS-Management service cannot process the request (emulated fault).",
                    &host.name,
                );
            }
            let cmdline = command_line(&body_el);
            let duration = Duration::from_millis(st.command_duration_ms.load(Ordering::Relaxed));
            let mut cmd = EmuCommand {
                stdout: Vec::new(),
                stderr: Vec::new(),
                exit: 0,
                ready_at: Instant::now() + duration,
                awaiting_stdin: false,
                stdin: Vec::new(),
                command_line: cmdline.clone(),
            };
            match powershell_script(&cmdline) {
                Some(Ok(script)) if script == STDIN_BOOTSTRAP => cmd.awaiting_stdin = true,
                Some(Ok(script)) => {
                    let (o, e, x) = host::run_script(st, host, &cmdline, false, &script);
                    cmd.stdout = o.into_bytes();
                    cmd.stderr = e.into_bytes();
                    cmd.exit = x;
                }
                Some(Err(e)) => {
                    cmd.stderr = e.into_bytes();
                    cmd.exit = 1;
                }
                None => {
                    let exe = cmdline.split_whitespace().next().unwrap_or("").to_string();
                    if exe.eq_ignore_ascii_case("hostname") {
                        cmd.stdout = format!("{}\r\n", host.name).into_bytes();
                    } else {
                        cmd.stderr = format!("'{exe}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n").into_bytes();
                        cmd.exit = 1;
                    }
                }
            }
            let cid = uuid::Uuid::new_v4().to_string().to_uppercase();
            if let Some(sh) = host
                .shells
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&id)
            {
                sh.insert(cid.clone(), cmd);
            }
            soap_response(
                StatusCode::OK,
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse",
                &message_id,
                &format!(
                    "<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId></rsp:CommandResponse>"
                ),
            )
        }
        soap::ACTION_SEND => {
            let id = shell_id.unwrap_or_default();
            let Some(stream) = body_el.find("Stream") else {
                return fault(
                    &message_id,
                    "s:Sender",
                    "w:SchemaValidationError",
                    2150858817,
                    "Send without a stream.",
                    &host.name,
                );
            };
            let cid = stream.attr("CommandId").unwrap_or("").to_string();
            let end = stream
                .attr("End")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let data = base64::engine::general_purpose::STANDARD
                .decode(stream.trimmed_text())
                .unwrap_or_default();
            let mut run: Option<(String, String)> = None;
            {
                let mut shells = host.shells.lock().unwrap_or_else(|p| p.into_inner());
                let Some(sh) = shells.get_mut(&id) else {
                    drop(shells);
                    return shell_not_found(&id);
                };
                if let Some(c) = sh.get_mut(&cid) {
                    c.stdin.extend_from_slice(&data);
                    if end && c.awaiting_stdin {
                        run = Some((
                            String::from_utf8_lossy(&c.stdin).into_owned(),
                            c.command_line.clone(),
                        ));
                    }
                }
            }
            if let Some((script, cl)) = run {
                let (o, e, x) = host::run_script(st, host, &cl, true, &script);
                let duration =
                    Duration::from_millis(st.command_duration_ms.load(Ordering::Relaxed));
                if let Some(c) = host
                    .shells
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&id)
                    .and_then(|sh| sh.get_mut(&cid))
                {
                    c.stdout = o.into_bytes();
                    c.stderr = e.into_bytes();
                    c.exit = x;
                    c.awaiting_stdin = false;
                    c.ready_at = Instant::now() + duration;
                }
            }
            soap_response(
                StatusCode::OK,
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SendResponse",
                &message_id,
                "<rsp:SendResponse/>",
            )
        }
        soap::ACTION_RECEIVE => {
            let id = shell_id.unwrap_or_default();
            let cid = body_el
                .find("DesiredStream")
                .and_then(|d| d.attr("CommandId"))
                .unwrap_or("")
                .to_string();
            let wait = {
                let shells = host.shells.lock().unwrap_or_else(|p| p.into_inner());
                let Some(sh) = shells.get(&id) else {
                    drop(shells);
                    return shell_not_found(&id);
                };
                match sh.get(&cid) {
                    None => None,
                    Some(c) if c.awaiting_stdin => Some(Duration::MAX),
                    Some(c) => Some(c.ready_at.saturating_duration_since(Instant::now())),
                }
            };
            let Some(wait) = wait else {
                return fault(
                    &message_id,
                    "s:Sender",
                    "w:InvalidParameter",
                    2150858882,
                    "The CommandId is not valid for this shell.",
                    &host.name,
                );
            };
            if wait > op_timeout {
                tokio::time::sleep(op_timeout).await;
                return fault(
                    &message_id,
                    "s:Receiver",
                    "w:TimedOut",
                    soap::CODE_TIMED_OUT,
                    "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
                    &host.name,
                );
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let out = {
                let mut shells = host.shells.lock().unwrap_or_else(|p| p.into_inner());
                shells
                    .get_mut(&id)
                    .and_then(|sh| sh.get_mut(&cid))
                    .map(|c| {
                        (
                            std::mem::take(&mut c.stdout),
                            std::mem::take(&mut c.stderr),
                            c.exit,
                        )
                    })
            };
            let Some((o, e, x)) = out else {
                return shell_not_found(&id);
            };
            let mut body = String::from("<rsp:ReceiveResponse>");
            for (name, data) in [("stdout", &o), ("stderr", &e)] {
                for chunk in data.chunks(8192) {
                    body.push_str(&format!(
                        r#"<rsp:Stream Name="{name}" CommandId="{cid}">{}</rsp:Stream>"#,
                        base64::engine::general_purpose::STANDARD.encode(chunk)
                    ));
                }
            }
            body.push_str(&format!(
                r#"<rsp:Stream Name="stdout" CommandId="{cid}" End="true"></rsp:Stream><rsp:Stream Name="stderr" CommandId="{cid}" End="true"></rsp:Stream><rsp:CommandState CommandId="{cid}" State="{}"><rsp:ExitCode>{x}</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>"#,
                soap::STATE_DONE
            ));
            soap_response(
                StatusCode::OK,
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse",
                &message_id,
                &body,
            )
        }
        soap::ACTION_SIGNAL => {
            let id = shell_id.unwrap_or_default();
            let cid = body_el
                .find("Signal")
                .and_then(|s| s.attr("CommandId"))
                .unwrap_or("")
                .to_string();
            {
                let mut shells = host.shells.lock().unwrap_or_else(|p| p.into_inner());
                let Some(sh) = shells.get_mut(&id) else {
                    drop(shells);
                    return shell_not_found(&id);
                };
                sh.remove(&cid);
            }
            soap_response(
                StatusCode::OK,
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse",
                &message_id,
                "<rsp:SignalResponse/>",
            )
        }
        other => fault(
            &message_id,
            "s:Sender",
            "a:ActionNotSupported",
            2150858771,
            &format!(
                "The action '{}' is not supported by this emulated host.",
                crate::domain::truncate_for_display(other, 120)
            ),
            &host.name,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::CbtHardening;

    #[test]
    fn cbt_hardening_levels_follow_windows() {
        let right = Some([1u8; 16]);
        let wrong = Some([2u8; 16]);
        for (level, absent, wrong_ok, right_ok) in [
            (CbtHardening::None, true, true, true),
            (CbtHardening::Relaxed, true, false, true),
            (CbtHardening::Strict, false, false, true),
        ] {
            assert_eq!(level.accepts(None, right), absent, "{level:?} absent");
            assert_eq!(level.accepts(wrong, right), wrong_ok, "{level:?} wrong");
            assert_eq!(level.accepts(right, right), right_ok, "{level:?} right");
            assert_eq!(CbtHardening::from_u8(level.to_u8()), level);
        }
        // A certificate without an RFC 5929 hash: nothing presented can match.
        assert!(!CbtHardening::Relaxed.accepts(right, None));
        assert!(!CbtHardening::Strict.accepts(None, None));
        assert_eq!(CbtHardening::default(), CbtHardening::Relaxed);
        assert_eq!(
            serde_json::to_string(&CbtHardening::Strict).unwrap(),
            "\"strict\""
        );
    }
}
