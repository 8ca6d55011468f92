//! Scale benchmark (ignored by default; run it in release):
//! `cargo test --release --test it winrm_bench:: -- --ignored --nocapture`
//!
//! 200 emulated RD Session Hosts, each WS-Man round trip delayed 100 ms: list every session of
//! the pool (cold: shells created; warm: shells reused), then log off 200 sessions spread over
//! the hosts. Prints times and round trips per action.

use crate::support::kdc::{self, Kdc, REALM};
use crate::support::winrm::{eventually, setup};
use futures::StreamExt;
use sessiongate::domain::{HostName, SessionId};
use sessiongate::emulator::winrm::Flavour;
use sessiongate::providers::winrm::{RdsProvider, WinRmAuth};
use sessiongate::providers::{ActionEffect, SessionFilter, SessionProvider};
use std::time::{Duration, Instant};

const HOSTS: usize = 200;

async fn quiesce(st: &sessiongate::emulator::winrm::WinRmEmulatorState) -> u64 {
    // Background Signals settle; wait until the counter stops moving.
    let mut last = st.round_trips();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = st.round_trips();
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn run(fanout: usize, logoff_concurrency: usize, auth: WinRmAuth) {
    run_with(fanout, logoff_concurrency, auth, None).await
}

async fn run_with(
    fanout: usize,
    logoff_concurrency: usize,
    auth: WinRmAuth,
    keytab: Option<std::path::PathBuf>,
) {
    let env = setup(Flavour::Rds, HOSTS, |o| {
        o.latency_ms = 100;
        o.sessions_per_host = 5;
        o.kerberos_keytab = keytab;
    })
    .await;
    let st = env.emu.state();
    let mut cfg = env.cfg.clone();
    cfg.fanout_concurrency = fanout;
    cfg.auth = auth;
    if auth == WinRmAuth::Kerberos {
        cfg.credential.username = format!("sessiongate@{}", REALM);
    }
    let p = RdsProvider::from_config("bench", &cfg).unwrap();

    let t = Instant::now();
    let cold = p.list_sessions(&SessionFilter::default()).await.unwrap();
    let cold_t = t.elapsed();
    assert_eq!(cold.sessions.len(), HOSTS * 5);
    assert!(cold.unreachable_hosts.is_empty());
    let rt_cold = quiesce(&st).await;

    let t = Instant::now();
    let warm = p.list_sessions(&SessionFilter::default()).await.unwrap();
    let warm_t = t.elapsed();
    assert_eq!(warm.sessions.len(), HOSTS * 5);
    let rt_warm = quiesce(&st).await - rt_cold;

    let hosts: Vec<HostName> = (1..=HOSTS)
        .map(|i| HostName::parse(&format!("rdsh-{i:03}.contoso.test")).unwrap())
        .collect();
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(hosts.iter())
        .map(|h| {
            let p = &p;
            async move { p.logoff(h, SessionId(2), true).await }
        })
        .buffer_unordered(logoff_concurrency)
        .collect()
        .await;
    let logoff_t = t.elapsed();
    assert!(results.iter().all(|r| matches!(r, Ok(ActionEffect::Done))));
    assert!(eventually(|| st.total_sessions() == HOSTS * 5).await); // 6 per host incl. session 0, minus one
    let rt_logoff = quiesce(&st).await - rt_cold - rt_warm;

    println!(
        "BENCH auth={auth:?} hosts={HOSTS} latency=100ms fanout={fanout} logoff_concurrency={logoff_concurrency}: \
         list cold {:.2}s ({:.2} rt/host), list warm {:.2}s ({:.2} rt/host), \
         logoff x{HOSTS} {:.2}s ({:.2} rt/action), shells created {}",
        cold_t.as_secs_f64(),
        rt_cold as f64 / HOSTS as f64,
        warm_t.as_secs_f64(),
        rt_warm as f64 / HOSTS as f64,
        logoff_t.as_secs_f64(),
        rt_logoff as f64 / HOSTS as f64,
        st.shells_created(),
    );
    assert!(warm_t < Duration::from_secs(2) || fanout < 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn bench_fanout_200_hosts() {
    run(32, 32, WinRmAuth::Basic).await;
    run(64, 64, WinRmAuth::Basic).await;
    run(200, 200, WinRmAuth::Basic).await;
    run(32, 32, WinRmAuth::Ntlm).await;
    run(64, 64, WinRmAuth::Ntlm).await;
}

/// The same with Kerberos against a real MIT KDC (one AS exchange, one TGS per host).
#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn bench_fanout_200_hosts_kerberos() {
    if !kdc::available("bench_fanout_200_hosts_kerberos") {
        return;
    }
    let kdc = Kdc::start();
    kdc.add_user("sessiongate", "Emulator-Passw0rd!");
    let hosts: Vec<String> = (1..=HOSTS)
        .map(|i| format!("rdsh-{i:03}.contoso.test"))
        .collect();
    let kt = kdc.add_services(&hosts, "http.keytab");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_with(64, 64, WinRmAuth::Kerberos, Some(kt)));
    let (as_reqs, tgs_reqs) = kdc.issued();
    println!("BENCH kerberos KDC exchanges: {as_reqs} AS, {tgs_reqs} TGS");
}
