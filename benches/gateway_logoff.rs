//! Audited logoffs through the gateway vs the same logoffs sent straight to the ARM emulator.
//!
//! Run: `cargo bench --bench gateway_logoff` (release build). See `docs/benchmarks.md`.
//!
//! One run, all on 127.0.0.1:
//! - starts the in-tree ARM emulator (throttling off) in this process;
//! - starts the real gateway as a child process (`sessiongate serve`, the release binary Cargo
//!   builds for this bench) in front of it, with the demo config (SQLite audit log, WAL,
//!   `synchronous=FULL`, group commit) and the per-principal action rate limit turned off;
//! - for each concurrency level runs a fixed number of logoffs directly (DELETE userSessions/{id}
//!   with a bearer token from the emulator's token endpoint), then the same number through the
//!   gateway (POST .../sessions/{id}/logoff), every request aimed at its own seeded session;
//! - prints throughput, latency percentiles, the ratio and the added latency, the gateway
//!   process's peak RSS (its `/proc/<pid>/status` VmHWM), the bare fsync latency of the disk
//!   that holds the audit log, and checks the audit chain afterwards (`sessiongate audit verify`).
//!
//! Knobs (environment, for experiments; the defaults are the shipped configuration):
//! - `SG_BENCH_AUDIT_DIR`: directory for the audit SQLite file (default: the run's temp dir,
//!   on the same disk as `/tmp`); e.g. `/dev/shm/sg-bench` to take the disk out.
//! - `SG_BENCH_GATEWAY_LOG`: the gateway's log filter (default `info`, the shipped default).
//! - `SG_BENCH_LEVELS`: concurrency levels, comma separated (default `1,8,32`).
//! - `SG_BENCH_GATEWAY_WORKERS`: tokio worker threads of the gateway child (default: one per core).
//! - `SG_BENCH_SCALE`: multiplies the request counts (default 1; 0.25 for a quick look).
//! - `SG_BENCH_UPSTREAM_LATENCY_MS`: latency the emulator adds to every request (default 0),
//!   to see the ratio against a backend that is not in memory (use with a small scale).
//!
//! Bounded: every phase has a fixed request count and a time cap, every request a timeout,
//! and the child gateway is stopped (SIGTERM, then killed) at the end.

use sessiongate::{
    auth::apikey,
    demo::{self, DEMO_TEMPLATE},
    emulator::arm::ArmState,
    httpclient,
    providers::avd::DEFAULT_API_VERSION,
};
use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// The emulator's host pool and the gateway pool in front of it (`config/demo.toml`).
const ARM_POOL: &str = "hp-demo";
const GW_POOL: &str = "avd-demo";
/// Gateway requests per phase at each concurrency level (before `SG_BENCH_SCALE`).
fn base_requests(conns: usize) -> usize {
    match conns {
        0 | 1 => 1000,
        2..=8 => 3000,
        _ => 4000,
    }
}
/// Direct logoffs are an order of magnitude faster: more of them, so a phase lasts long
/// enough to measure (and not mostly scheduler noise).
const DIRECT_FACTOR: usize = 4;
/// Extra emulated session hosts, so seeding stays cheap (ids are per host, lowest free first).
const EXTRA_HOSTS: usize = 29;
/// Unmeasured requests before each phase (connections, token, caches).
const WARMUP: usize = 40;
/// No phase runs longer than this; a capped phase is reported as such.
const PHASE_CAP: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One seeded session.
#[derive(Clone)]
struct Target {
    host: String,
    id: u32,
}

#[derive(Clone)]
enum Mode {
    /// DELETE straight to the emulator.
    Direct {
        sessions_url: String,
        token: Arc<String>,
        ca_pem: Arc<String>,
    },
    /// POST .../logoff to the gateway.
    Gateway { base: String, key: Arc<String> },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Direct { .. } => "direct",
            Mode::Gateway { .. } => "gateway",
        }
    }

    fn client(&self) -> Res<reqwest::Client> {
        Ok(match self {
            Mode::Direct { ca_pem, .. } => {
                httpclient::build_client(Some(("emulator-ca", ca_pem)), Duration::from_secs(5))?
            }
            Mode::Gateway { .. } => reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    async fn logoff(&self, http: &reqwest::Client, t: &Target) -> Result<(), String> {
        match self {
            Mode::Direct {
                sessions_url,
                token,
                ..
            } => {
                let url = format!(
                    "{sessions_url}/{}/userSessions/{}?api-version={DEFAULT_API_VERSION}",
                    t.host, t.id
                );
                let r = http
                    .delete(url)
                    .bearer_auth(token.as_str())
                    .timeout(REQUEST_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| format!("direct: {e}"))?;
                let status = r.status();
                let _ = r.bytes().await;
                if status.as_u16() != 200 {
                    return Err(format!("direct: status {status}"));
                }
                Ok(())
            }
            Mode::Gateway { base, key } => {
                let url = format!(
                    "{base}/hostpools/{GW_POOL}/sessionhosts/{}/sessions/{}/logoff",
                    t.host, t.id
                );
                let r = http
                    .post(url)
                    .bearer_auth(key.as_str())
                    .timeout(REQUEST_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| format!("gateway: {e}"))?;
                let status = r.status();
                let body = r.bytes().await.map_err(|e| format!("gateway body: {e}"))?;
                if status.as_u16() != 200 {
                    return Err(format!(
                        "gateway: status {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ));
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("gateway json: {e}"))?;
                if v["outcome"] != "done" {
                    return Err(format!("gateway: outcome {}", v["outcome"]));
                }
                Ok(())
            }
        }
    }
}

struct PhaseResult {
    mode: &'static str,
    conns: usize,
    planned: usize,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    capped: bool,
    lat: Vec<Duration>,
    /// CPU used during the phase by this process (load generator + emulator) and by the
    /// gateway child.
    cpu_bench: Duration,
    cpu_gateway: Duration,
    /// Context switches in the gateway child during the phase.
    switches_gateway: u64,
}

impl PhaseResult {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn pct(&self, p: f64) -> Duration {
        percentile(&self.lat, p)
    }
    fn cpu_us_per_op(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Seeds `n` fresh sessions spread over the pool's hosts.
fn seed(arm: &ArmState, n: usize, tag: &str) -> Res<Vec<Target>> {
    let hosts = arm.hosts(ARM_POOL);
    if hosts.is_empty() {
        return Err("the emulator has no hosts".into());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let host = &hosts[i % hosts.len()];
        let id = arm
            .add_session(ARM_POOL, host, &format!("bench-{tag}-{i}@contoso.com"))
            .ok_or("add_session failed")?;
        out.push(Target {
            host: host.clone(),
            id,
        });
    }
    Ok(out)
}

/// `conns` workers, each with its own client (so its own keep-alive connection), take the
/// next target until all are done or the time cap passes.
async fn run_phase(
    mode: &Mode,
    conns: usize,
    targets: Vec<Target>,
    measure: bool,
    gateway_pid: u32,
) -> PhaseResult {
    let planned = targets.len();
    let cpu0 = (cpu_time(std::process::id()), cpu_time(gateway_pid));
    let sw0 = ctx_switches(gateway_pid);
    let targets = Arc::new(targets);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + PHASE_CAP;
    let mut workers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mode = mode.clone();
        let targets = targets.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut capped = false;
            let http = match mode.client() {
                Ok(c) => c,
                Err(e) => return (lat, 1, Some(e.to_string()), false),
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = targets.get(i) else { break };
                if Instant::now() >= deadline {
                    capped = true;
                    break;
                }
                let t0 = Instant::now();
                match mode.logoff(&http, t).await {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error, capped)
        }));
    }
    let mut lat = Vec::with_capacity(planned);
    let mut errors = 0;
    let mut first_error = None;
    let mut capped = false;
    for w in workers {
        match w.await {
            Ok((l, e, fe, c)) => {
                lat.extend(l);
                errors += e;
                if first_error.is_none() {
                    first_error = fe;
                }
                capped |= c;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("worker: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu_bench = cpu_time(std::process::id()).saturating_sub(cpu0.0);
    let cpu_gateway = cpu_time(gateway_pid).saturating_sub(cpu0.1);
    let switches_gateway = ctx_switches(gateway_pid).saturating_sub(sw0);
    lat.sort_unstable();
    let r = PhaseResult {
        mode: mode.name(),
        conns,
        planned,
        ok: lat.len(),
        errors,
        first_error,
        elapsed,
        capped,
        lat,
        cpu_bench,
        cpu_gateway,
        switches_gateway,
    };
    if measure {
        eprintln!(
            "  {:<7} c={:<3} {:>5} ok {:>3} err in {:>6.2} s: {:>8.1}/s  p50 {} ms  p99 {} ms  CPU/op: bench {:.0} us, gateway {:.0} us; gateway ctx switches/op {:.1}{}",
            r.mode,
            r.conns,
            r.ok,
            r.errors,
            r.elapsed.as_secs_f64(),
            r.rps(),
            ms(r.pct(50.0)),
            ms(r.pct(99.0)),
            r.cpu_us_per_op(r.cpu_bench),
            r.cpu_us_per_op(r.cpu_gateway),
            r.switches_gateway as f64 / r.ok.max(1) as f64,
            if r.capped { "  (time cap hit)" } else { "" }
        );
        if let Some(e) = &r.first_error {
            eprintln!("    first error: {e}");
        }
    }
    r
}

/// A bare fsync (after a 4 KiB write) on the directory that holds the audit log.
fn fsync_latency(dir: &Path, rounds: usize, data_only: bool) -> Res<(Duration, Duration)> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe.bin");
    let f = std::fs::File::create(&path)?;
    let buf = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let t0 = Instant::now();
        // Append, as a WAL does.
        f.write_all_at(&buf, (i * 4096) as u64)?;
        if data_only {
            f.sync_data()?;
        } else {
            f.sync_all()?;
        }
        lat.push(t0.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    Ok((percentile(&lat, 50.0), percentile(&lat, 99.0)))
}

/// Sequential `AuditLog::record` calls (one event per durable commit, as at 1 connection):
/// latency p50/p99 and this process's context switches per record.
async fn audit_record_latency(dir: &Path, rounds: usize) -> Res<(Duration, Duration, f64)> {
    use sessiongate::audit::{self, Actor, EventKind, NewEvent, Target};
    std::fs::create_dir_all(dir)?;
    let cfg = audit::AuditConfig {
        url: format!("sqlite://{}", dir.join("probe-audit.sqlite").display()),
        ..audit::AuditConfig::default()
    };
    let log = audit::open(&cfg, dir).await?;
    let ev = NewEvent {
        kind: Some(EventKind::Intent),
        request_id: uuid::Uuid::now_v7().to_string(),
        actor: Actor {
            id: "apikey:bench".into(),
            auth_method: Some("api_key".into()),
            roles: vec!["operator".into()],
            ..Actor::default()
        },
        client_addr: Some("127.0.0.1".into()),
        action: "logoff".into(),
        target: Target {
            pool: Some(GW_POOL.into()),
            host: Some("hp-demo-sh0.contoso.com".into()),
            session_id: Some(2),
            user: Some("bench@contoso.com".into()),
        },
        params: serde_json::json!({"force": false, "dry_run": false}),
        outcome: "pending".into(),
        ..NewEvent::default()
    };
    for _ in 0..20 {
        log.record(ev.clone()).await?;
    }
    let sw0 = ctx_switches(std::process::id());
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        log.record(ev.clone()).await?;
        lat.push(t0.elapsed());
    }
    let sw = ctx_switches(std::process::id()).saturating_sub(sw0);
    lat.sort_unstable();
    Ok((
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        sw as f64 / rounds as f64,
    ))
}

/// One sqlx round trip to SQLite (`SELECT 1` on a held connection): sqlx runs each SQLite
/// connection on its own thread, so every statement is a hand-off between threads.
async fn sqlx_round_trip(dir: &Path, rounds: usize) -> Res<(Duration, f64)> {
    use sqlx::{Connection, sqlite::SqliteConnectOptions};
    std::fs::create_dir_all(dir)?;
    let opts = SqliteConnectOptions::new()
        .filename(dir.join("probe-rt.sqlite"))
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    for _ in 0..20 {
        sqlx::query("SELECT 1").execute(&mut conn).await?;
    }
    let sw0 = ctx_switches(std::process::id());
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        lat.push(t0.elapsed());
    }
    let sw = ctx_switches(std::process::id()).saturating_sub(sw0);
    conn.close().await?;
    lat.sort_unstable();
    Ok((percentile(&lat, 50.0), sw as f64 / rounds as f64))
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU time of a process (all threads), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    // USER_HZ is 100 on Linux's user-space ABI.
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15 (1-based).
            let u: u64 = f.get(11)?.parse().ok()?;
            let st: u64 = f.get(12)?.parse().ok()?;
            Some(u + st)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Context switches (voluntary + involuntary) of every thread of a process.
fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
            for l in s.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    n += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    n
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The demo config for the running emulator, with the action rate limit off.
fn gateway_config(
    values: &HashMap<&'static str, String>,
    audit_dir: &Path,
    listen: &str,
    operator_key: &str,
) -> Res<String> {
    let mut v = values.clone();
    // DATA_DIR feeds only `[server] data_dir` and the audit SQLite path.
    v.insert("DATA_DIR", audit_dir.display().to_string());
    v.insert("LISTEN", listen.to_string());
    v.insert("OPERATOR_KEY_HASH", apikey::hash_key(operator_key));
    for k in ["READER_KEY_HASH", "ADMIN_KEY_HASH", "AUDITOR_KEY_HASH"] {
        v.insert(k, apikey::hash_key(&apikey::generate_key()));
    }
    let text = demo::render_template(DEMO_TEMPLATE, &v)?;
    let limited = "actions_per_minute = 120";
    if !text.contains(limited) {
        return Err("config/demo.toml no longer holds the expected rate limit line".into());
    }
    Ok(text.replace(limited, "actions_per_minute = 0"))
}

async fn fetch_token(
    ca_pem: &str,
    info: &sessiongate::emulator::arm::ArmEmulatorInfo,
) -> Res<String> {
    let http = httpclient::build_client(Some(("emulator-ca", ca_pem)), Duration::from_secs(5))?;
    let scope = format!("{}/.default", info.base_url);
    let r = http
        .post(&info.token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", info.client_id.as_str()),
            ("client_secret", info.client_secret.as_str()),
            ("scope", scope.as_str()),
        ])
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    v["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("token endpoint answered {status} without access_token").into())
}

struct Child {
    child: tokio::process::Child,
    pid: u32,
}

impl Child {
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn start_gateway(
    exe: &str,
    config_path: &Path,
    log_path: &Path,
    log_filter: &str,
    base: &str,
) -> Res<Child> {
    let log = std::fs::File::create(log_path)?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(exe);
    // Experiment knob: the gateway's tokio worker threads (tokio reads TOKIO_WORKER_THREADS).
    if let Ok(n) = std::env::var("SG_BENCH_GATEWAY_WORKERS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    let child = cmd
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env_remove("RUST_LOG")
        .env("SESSIONGATE__SERVER__LOG_FILTER", log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the gateway exited at once")?;
    let mut child = Child { child, pid };
    let probe = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.child.try_wait() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(format!("the gateway exited ({st}):\n{log}").into());
        }
        if let Ok(r) = probe
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(child);
        }
        if Instant::now() >= until {
            child.stop().await;
            return Err("the gateway did not become ready within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn run() -> Res<()> {
    let run_started = Instant::now();
    let scale: f64 = env_or("SG_BENCH_SCALE", "1").parse()?;
    let levels: Vec<usize> = env_or("SG_BENCH_LEVELS", "1,8,32")
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()?;
    if levels.iter().any(|&c| c == 0 || c > 256) {
        return Err("SG_BENCH_LEVELS: each level must be 1..=256".into());
    }
    let log_filter = env_or("SG_BENCH_GATEWAY_LOG", "info");
    let dir = tempfile::tempdir()?;
    let audit_dir: PathBuf = match std::env::var("SG_BENCH_AUDIT_DIR") {
        Ok(d) => PathBuf::from(d).join(format!("run-{}", uuid::Uuid::new_v4().simple())),
        Err(_) => dir.path().join("audit"),
    };
    std::fs::create_dir_all(&audit_dir)?;
    let load_start = loadavg();

    // Emulator, throttling off.
    let backends = demo::start_backends(dir.path()).await?;
    let arm = backends.arm.state();
    arm.set_throttling(None);
    let upstream_latency_ms: u64 = env_or("SG_BENCH_UPSTREAM_LATENCY_MS", "0").parse()?;
    for n in 0..EXTRA_HOSTS {
        if !arm.add_host(ARM_POOL, &format!("bench-sh{n}.contoso.com")) {
            return Err("add_host failed".into());
        }
    }
    let info = backends.arm.info();
    let ca_pem = Arc::new(std::fs::read_to_string(dir.path().join("emulator-ca.pem"))?);
    let token = Arc::new(fetch_token(&ca_pem, &info).await?);
    if upstream_latency_ms > 0 {
        arm.set_faults(sessiongate::emulator::common::FaultSettings {
            latency_ms: upstream_latency_ms,
            ..Default::default()
        });
    }
    let sessions_url = format!(
        "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DesktopVirtualization/hostPools/{ARM_POOL}/sessionHosts",
        info.base_url, info.subscription, info.resource_group
    );
    let direct = Mode::Direct {
        sessions_url,
        token,
        ca_pem: ca_pem.clone(),
    };

    // Bare fsync on the audit log's disk.
    let (fdatasync_p50, fdatasync_p99) = fsync_latency(&audit_dir, 200, true)?;
    let (fsync_p50, fsync_p99) = fsync_latency(&audit_dir, 200, false)?;
    // One audit record (= one durable group commit of one event), on this disk and on tmpfs.
    let rec_disk = audit_record_latency(&audit_dir.join("probe"), 300).await?;
    let round_trip = sqlx_round_trip(&audit_dir.join("probe"), 300).await?;
    let shm = Path::new("/dev/shm");
    let rec_tmpfs = if shm.is_dir() {
        let d = shm.join(format!("sg-bench-{}", uuid::Uuid::new_v4().simple()));
        let r = audit_record_latency(&d, 300).await;
        let _ = std::fs::remove_dir_all(&d);
        Some(r?)
    } else {
        None
    };

    // The gateway, as a child process.
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let operator = apikey::generate_key();
    let cfg_text = gateway_config(&backends.values, &audit_dir, &listen, &operator)?;
    let cfg_path = dir.path().join("gateway.toml");
    std::fs::File::create(&cfg_path)?.write_all(cfg_text.as_bytes())?;
    let exe = env!("CARGO_BIN_EXE_sessiongate");
    let gw_log = dir.path().join("gateway.log");
    let child = start_gateway(exe, &cfg_path, &gw_log, &log_filter, &base).await?;
    let pid = child.pid;
    let rss_idle = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let gateway = Mode::Gateway {
        base: base.clone(),
        key: Arc::new(operator),
    };

    eprintln!(
        "gateway_logoff: levels {levels:?}, scale {scale}, audit dir {}, gateway log filter {log_filter}",
        audit_dir.display()
    );
    let mut results: Vec<(PhaseResult, PhaseResult)> = Vec::new();
    let mut gw_ok_total = 0usize;
    let outcome: Res<()> = async {
        for &c in &levels {
            let n = ((base_requests(c) as f64 * scale).round() as usize).max(c);
            for mode in [&direct, &gateway] {
                let warm = seed(&arm, WARMUP.max(c), &format!("w{}{c}", mode.name()))?;
                let w = run_phase(mode, c, warm, false, pid).await;
                if let Some(e) = w.first_error {
                    return Err(format!("{} warm-up failed: {e}", mode.name()).into());
                }
                if matches!(mode, Mode::Gateway { .. }) {
                    gw_ok_total += w.ok;
                }
            }
            let d_targets = seed(&arm, n * DIRECT_FACTOR, &format!("d{c}"))?;
            let d = run_phase(&direct, c, d_targets, true, pid).await;
            let g_targets = seed(&arm, n, &format!("g{c}"))?;
            let g = run_phase(&gateway, c, g_targets, true, pid).await;
            gw_ok_total += g.ok;
            results.push((d, g));
        }
        Ok(())
    }
    .await;
    let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let rss_end = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let gw_threads = proc_status_kb(pid, "Threads:").unwrap_or(0);
    child.stop().await;
    outcome?;
    let bench_hwm = proc_status_kb(std::process::id(), "VmHWM:").unwrap_or(0);
    let load_end = loadavg();

    // The audit chain must be intact and hold the actions.
    let verify = tokio::process::Command::new(exe)
        .args(["audit", "verify", "--config"])
        .arg(&cfg_path)
        .env_remove("RUST_LOG")
        .env("SESSIONGATE__SERVER__LOG_FILTER", "warn")
        .output();
    let verify = tokio::time::timeout(Duration::from_secs(30), verify)
        .await
        .map_err(|_| "audit verify took over 30 s")??;
    let verify_out = String::from_utf8_lossy(&verify.stdout).to_string();

    // Report.
    let errors: usize = results.iter().map(|(d, g)| d.errors + g.errors).sum();
    let capped = results.iter().any(|(d, g)| d.capped || g.capped);
    println!();
    println!("## gateway_logoff results");
    println!();
    println!(
        "audit dir: {} | gateway log filter: {log_filter} | upstream latency added: {upstream_latency_ms} ms | load average before: {load_start}, after: {load_end}",
        audit_dir.display()
    );
    println!(
        "bare 4 KiB write + fdatasync: p50 {} ms, p99 {} ms; + fsync: p50 {} ms, p99 {} ms",
        ms(fdatasync_p50),
        ms(fdatasync_p99),
        ms(fsync_p50),
        ms(fsync_p99)
    );
    println!(
        "one AuditLog::record (1-event durable commit), sequential: on the audit disk p50 {} ms, p99 {} ms, {:.1} context switches/record",
        ms(rec_disk.0),
        ms(rec_disk.1),
        rec_disk.2
    );
    if let Some(r) = rec_tmpfs {
        println!(
            "  same on tmpfs (/dev/shm): p50 {} ms, p99 {} ms, {:.1} context switches/record",
            ms(r.0),
            ms(r.1),
            r.2
        );
    }
    println!(
        "one sqlx statement round trip (SELECT 1, held SQLite connection): p50 {} ms, {:.1} context switches",
        ms(round_trip.0),
        round_trip.1
    );
    println!();
    println!(
        "| conns | requests direct / gateway | direct /s | gateway /s | ratio gw/direct | direct p50 ms | direct p99 ms | gateway p50 ms | gateway p99 ms | added p50 ms | CPU/op direct us | CPU/op gateway us (gw process + bench process) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (d, g) in &results {
        println!(
            "| {} | {} / {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {:.0} | {:.0} ({:.0} + {:.0}) |",
            d.conns,
            d.planned,
            g.planned,
            d.rps(),
            g.rps(),
            g.rps() / d.rps().max(1e-9),
            ms(d.pct(50.0)),
            ms(d.pct(99.0)),
            ms(g.pct(50.0)),
            ms(g.pct(99.0)),
            ms(g.pct(50.0).saturating_sub(d.pct(50.0))),
            d.cpu_us_per_op(d.cpu_bench + d.cpu_gateway),
            g.cpu_us_per_op(g.cpu_bench + g.cpu_gateway),
            g.cpu_us_per_op(g.cpu_gateway),
            g.cpu_us_per_op(g.cpu_bench),
        );
    }
    println!();
    println!(
        "gateway process (child `sessiongate serve`, pid {pid}): VmHWM (peak RSS) {:.1} MiB; VmRSS idle after start {:.1} MiB, after load {:.1} MiB; {gw_threads} threads",
        hwm as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!(
        "bench process (emulator + load generator): VmHWM {:.1} MiB",
        bench_hwm as f64 / 1024.0
    );
    println!(
        "emulator calls: {:?} | tokens issued: {} | errors: {errors} | time cap hit: {capped}",
        arm.all_calls(),
        arm.tokens_issued()
    );
    // Every audited logoff leaves an intent and an outcome event; the gateway adds one
    // `gateway_started` marker at start.
    println!(
        "audit verify (exit {}): {} / {} (expected {} events: intent + outcome for each of {gw_ok_total} gateway logoffs, plus the start marker)",
        verify.status.code().unwrap_or(-1),
        verify_out.lines().next().unwrap_or("").trim(),
        verify_out.lines().last().unwrap_or("").trim(),
        2 * gw_ok_total + 1
    );
    println!(
        "total run time: {:.1} s",
        run_started.elapsed().as_secs_f64()
    );
    if std::env::var("SG_BENCH_AUDIT_DIR").is_ok() {
        let _ = std::fs::remove_dir_all(&audit_dir);
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed").into());
    }
    if !verify.status.success() {
        return Err(format!("audit verify failed:\n{verify_out}").into());
    }
    Ok(())
}
