//! Fleet benchmark (issue 12, part 11): 2,000 log-offs through ONE bulk call against the ARM
//! emulator with throttling on, against the bucket's optimum; the same 2,000 log-offs by a
//! sequential script with Microsoft's Python SDK (the baseline users have today); and a
//! user-everywhere lookup over 20 pools of mixed kinds against the slowest single pool.
//!
//! Run: `cargo bench --bench fleet_logoff` (release build). See `docs/benchmarks.md`.
//!
//! All on 127.0.0.1, in this process: the demo emulators (`demo::start_backends`) and the
//! gateway (`app::build_app` + `app::serve`) with the demo config, changed only where the run
//! needs it: ARM buckets (emulator and gateway pacing) of 200 tokens refilled 100/s for every
//! operation kind, `fleet.max_targets` and `fleet.sync_limit` 2000, `server.body_limit_bytes`
//! 1 MiB, `server.request_timeout_secs` 300, the per-principal action rate limit off, and 19
//! more pools (AVD, classic, RDS and MultiPoint, pointing at the same emulated backends).
//!
//! Knobs (environment): `SG_BENCH_TARGETS` (default 2000), `SG_BENCH_BUCKET` (200),
//! `SG_BENCH_REFILL` (100), `SG_BENCH_PYTHON` (default `$CARGO_TARGET_DIR/py/bin/python`, as
//! `scripts/test --setup-only` creates it); `SG_BENCH_SKIP_SDK=1` skips the baseline.
//!
//! Bounded: the bulk call has a 300 s timeout, the SDK script 600 s, every lookup 30 s.

use serde_json::{Value, json};
use sessiongate::{
    config::{Config, ProviderConfig},
    demo::{self, DemoKeys},
    domain::PoolName,
    emulator::arm::{ArmOp, ArmState, ThrottleSettings},
    emulator::common::FaultSettings,
    upstream::pace::{ArmPacing, BucketShape},
};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const ARM_POOL: &str = "hp-demo";
const GW_POOL: &str = "avd-demo";

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
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

fn throttle(bucket: u32, refill: u32) -> ThrottleSettings {
    ThrottleSettings {
        read_capacity: bucket,
        read_refill_per_sec: refill,
        write_capacity: bucket,
        write_refill_per_sec: refill,
        delete_capacity: bucket,
        delete_refill_per_sec: refill,
    }
}

/// `n` fresh sessions spread over the ARM pool's hosts: `(host, id)`.
fn seed(arm: &ArmState, n: usize, tag: &str) -> Res<Vec<(String, u32)>> {
    let hosts = arm.hosts(ARM_POOL);
    (0..n)
        .map(|i| {
            let host = hosts[i % hosts.len()].clone();
            let id = arm
                .add_session(ARM_POOL, &host, &format!("{tag}{i}@contoso.com"))
                .ok_or("seeding failed")?;
            Ok((host, id))
        })
        .collect()
}

/// The demo config plus the 19 extra pools of the lookup (clones of the demo's four kinds).
fn bench_config(base: &Config, bucket: u32, refill: u32, targets: usize) -> Res<Config> {
    let mut c = base.clone();
    c.server.body_limit_bytes = 1024 * 1024;
    c.server.request_timeout_secs = 300;
    c.fleet.max_targets = targets.max(1);
    c.fleet.sync_limit = targets.max(1);
    c.auth.rate_limit.actions_per_minute = 0;
    let shape = BucketShape {
        size: bucket,
        refill_per_sec: refill,
    };
    c.pacing.arm = ArmPacing {
        reads: shape,
        writes: shape,
        deletes: shape,
        ..ArmPacing::default()
    };
    let originals = c.pools.clone();
    // 20 pools: 8 AVD, 6 classic, 3 RDS, 3 MultiPoint (the demo has one of each).
    for (kind, copies) in [("avd", 7), ("classic", 5), ("rds", 2), ("multipoint", 2)] {
        let Some(p) = originals.iter().find(|p| {
            matches!(
                (&p.provider, kind),
                (ProviderConfig::Avd(_), "avd")
                    | (ProviderConfig::WvdClassic(_), "classic")
                    | (ProviderConfig::Rds(_), "rds")
                    | (ProviderConfig::Multipoint(_), "multipoint")
            )
        }) else {
            return Err(format!("the demo config has no {kind} pool").into());
        };
        for i in 0..copies {
            let mut q = p.clone();
            q.name = PoolName::parse(&format!("{kind}-extra-{i}"))?;
            c.pools.push(q);
        }
    }
    Ok(c)
}

async fn run() -> Res<()> {
    let targets_n = env_u32("SG_BENCH_TARGETS", 2000) as usize;
    let bucket = env_u32("SG_BENCH_BUCKET", 200);
    let refill = env_u32("SG_BENCH_REFILL", 100).max(1);
    let dir = tempfile::tempdir()?;
    let backends = demo::start_backends(dir.path()).await?;
    let keys = DemoKeys::generate(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let base = demo::demo_config(&backends, &keys, local)?;
    let cfg = bench_config(&base, bucket, refill, targets_n)?;
    let app = sessiongate::app::build_app(&cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sessiongate::app::serve(app, listener, async move {
        let _ = stop_rx.await;
    }));
    let url = format!("http://{local}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let arm = backends.arm.state();

    // 1. One bulk call of `targets_n` log-offs, throttling on.
    let targets = seed(&arm, targets_n, "bulk")?;
    arm.set_throttling(Some(throttle(bucket, refill)));
    let body = json!({
        "targets": targets.iter().map(|(h, id)| json!({"host": h, "id": id.to_string()})).collect::<Vec<_>>(),
        "reason": "fleet benchmark",
    });
    let before = (
        arm.calls(ArmOp::Logoff),
        arm.calls(ArmOp::GetSession),
        arm.throttled_answers(),
    );
    let started = Instant::now();
    let r = http
        .post(format!("{url}/hostpools/{GW_POOL}/sessions/logoff"))
        .bearer_auth(&keys.operator)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    let took = started.elapsed();
    if status != 200 {
        return Err(format!("bulk call answered {status}: {v}").into());
    }
    let optimum = (targets_n as f64 - f64::from(bucket)).max(0.0) / f64::from(refill);
    let s = &v["summary"];
    println!("bulk logoff through the gateway: {targets_n} targets in one call");
    println!(
        "  wall {:.2} s; bucket optimum (targets - {bucket}) / {refill}/s = {optimum:.2} s; ratio {:.3} (target <= 1.1)",
        took.as_secs_f64(),
        took.as_secs_f64() / optimum.max(f64::EPSILON)
    );
    println!(
        "  summary: done {} already_gone {} refused {} failed {}",
        s["done"], s["already_gone"], s["refused"], s["failed"]
    );
    println!(
        "  upstream: {} DELETE, {} GET session, {} answered 429 by the emulator",
        arm.calls(ArmOp::Logoff) - before.0,
        arm.calls(ArmOp::GetSession) - before.1,
        arm.throttled_answers() - before.2
    );
    let bulk_ok = s["failed"] == 0 && s["done"] == targets_n;

    // 2. The same number of log-offs with Microsoft's Python SDK, sequentially.
    if std::env::var("SG_BENCH_SKIP_SDK").is_ok_and(|v| v == "1") {
        println!("python SDK baseline: skipped (SG_BENCH_SKIP_SDK=1)");
    } else {
        let python = std::env::var("SG_BENCH_PYTHON").unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
            format!("{target}/py/bin/python")
        });
        let targets = seed(&arm, targets_n, "sdk")?;
        arm.set_throttling(Some(throttle(bucket, refill)));
        let mut info = serde_json::to_value(backends.arm.info())?;
        info["pool"] = ARM_POOL.into();
        info["targets"] = json!(targets);
        let info_path = dir.path().join("sdk-bench.json");
        std::fs::write(&info_path, info.to_string())?;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/sdk/avd_sdk_bulk_logoff.py"
        );
        let before = arm.throttled_answers();
        let out = tokio::time::timeout(
            Duration::from_secs(600),
            tokio::process::Command::new(&python)
                .arg(script)
                .arg(&info_path)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| "the SDK script ran over 600 s")??;
        if !out.status.success() {
            return Err(format!(
                "SDK script failed ({python}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let r: Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))?;
        let secs = r["secs"].as_f64().unwrap_or(f64::NAN);
        println!(
            "python SDK (azure-mgmt-desktopvirtualization), sequential loop: {targets_n} log-offs"
        );
        println!(
            "  wall {secs:.2} s; ratio to the gateway's bulk call {:.2}; done {} already_gone {} failed {} {}; {} answered 429",
            secs / took.as_secs_f64(),
            r["done"],
            r["already_gone"],
            r["failed"],
            r["errors"],
            arm.throttled_answers() - before
        );
    }

    // 3. User everywhere over 20 pools vs the slowest single pool.
    arm.set_throttling(None);
    let upn = arm
        .sessions(ARM_POOL)
        .last()
        .map(|s| s.user.clone())
        .ok_or("no session left")?;
    let pools: Vec<String> = cfg.pools.iter().map(|p| p.name.to_string()).collect();
    // Twice: as the emulators answer in-process (CPU-bound: all 20 pools' backends share this
    // machine's 2 cores with the gateway, so asking them at once cannot beat their summed CPU
    // time), and with every backend answer taking 50 ms more, as a remote service's does
    // (latency-bound: what concurrency across pools is for).
    for latency_ms in [0u64, 50] {
        let slow = FaultSettings {
            latency_ms,
            ..FaultSettings::default()
        };
        arm.set_faults(slow);
        backends.classic.state().faults().set(slow);
        backends.rds.faults().set(slow);
        backends.multipoint.faults().set(slow);
        let (slowest, best) = user_everywhere(&http, &url, &keys.reader, &pools, &upn).await?;
        println!(
            "user everywhere over {} pools, backend latency {latency_ms} ms: slowest single pool {} at {:.1} ms (best of 3)",
            pools.len(),
            slowest.1,
            slowest.0.as_secs_f64() * 1e3
        );
        match best {
            Some(best) => println!(
                "  GET /users/{{upn}}/sessions: {:.1} ms (best of 3); ratio {:.2} (target <= 1.2)",
                best.as_secs_f64() * 1e3,
                best.as_secs_f64() / slowest.0.as_secs_f64()
            ),
            None => println!(
                "  GET /users/{{upn}}/sessions: not measured (the route is not in this build)"
            ),
        }
    }
    arm.set_faults(FaultSettings::default());

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    if !bulk_ok {
        return Err("the bulk call did not log every target off".into());
    }
    Ok(())
}

/// The slowest single pool's `GET /hostpools/{pool}/sessions?user=` (best of 3 each) and the
/// user-everywhere lookup (best of 3; `None` when the route is not in this build).
async fn user_everywhere(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    pools: &[String],
    upn: &str,
) -> Result<((Duration, String), Option<Duration>), BoxError> {
    let mut slowest = (Duration::ZERO, String::new());
    for p in pools {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let r = http
                .get(format!("{url}/hostpools/{p}/sessions"))
                .query(&[("user", upn)])
                .bearer_auth(key)
                .timeout(Duration::from_secs(30))
                .send()
                .await?;
            if r.status() != 200 {
                return Err(format!("pool {p}: {}", r.status()).into());
            }
            best = best.min(t.elapsed());
        }
        if best > slowest.0 {
            slowest = (best, p.clone());
        }
    }
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let r = http
            .get(format!("{url}/users/{upn}/sessions"))
            .bearer_auth(key)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        if r.status() == 404 || r.status() == 405 {
            return Ok((slowest, None));
        }
        if r.status() != 200 {
            return Err(format!("GET /users/{upn}/sessions: {}", r.status()).into());
        }
        best = best.min(t.elapsed());
    }
    Ok((slowest, Some(best)))
}
