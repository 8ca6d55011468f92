//! Rough group-commit throughput of `AuditLog::record` (ignored by default; numbers printed).
//! Run: `cargo nextest run --test it audit_throughput:: --run-ignored only --no-capture`

use crate::support::audit::{Env, ev};
use std::time::{Duration, Instant};

async fn measure(env: Env, label: &str) {
    let log = env.open().await;
    for (callers, total) in [(1usize, 300usize), (16, 3000), (64, 6000)] {
        let before = log.stats();
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..callers {
            let log = log.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                for i in 0..total / callers {
                    let t = Instant::now();
                    log.record(ev(c * 100_000 + i)).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            });
        }
        let mut lat: Vec<Duration> = Vec::new();
        while let Some(r) = set.join_next().await {
            lat.extend(r.unwrap());
        }
        let el = t0.elapsed();
        lat.sort();
        let after = log.stats();
        println!(
            "{label}: {callers:>2} callers, {total} events in {:.2}s = {:.0} events/s, {} commits, p50 {:?} p99 {:?}",
            el.as_secs_f64(),
            total as f64 / el.as_secs_f64(),
            after.commits - before.commits,
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100],
        );
    }
    let t0 = Instant::now();
    let r = log.verify().await.unwrap();
    assert!(r.ok);
    println!(
        "{label}: verify of {} events in {:.2}s",
        r.events_checked,
        t0.elapsed().as_secs_f64()
    );
    env.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn throughput_sqlite() {
    measure(Env::sqlite().await.unwrap(), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn throughput_postgres() {
    if let Some(env) = Env::postgres().await {
        measure(env, "postgres").await;
    }
}
