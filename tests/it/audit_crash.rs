//! Crash safety at the store level: a child process records events from 16 concurrent tasks
//! and prints every acknowledged `(chain, seq)`; the parent SIGKILLs it mid-burst, then checks
//! that the chain verifies and that every acknowledged event is stored.
//! Run: `cargo nextest run --test it audit_crash::`

use crate::support::audit::{Env, ev};
use sessiongate::audit::{self, AuditConfig};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SESSIONGATE_AUDIT_CRASH_CHILD";

/// The child: only does something when started by `crash_mid_burst`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, dir) = spec.split_once('|').unwrap();
    let cfg = AuditConfig {
        url: url.to_owned(),
        replica: Some("crash".into()),
        ..Default::default()
    };
    let log = audit::open(&cfg, std::path::Path::new(dir)).await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..16usize {
        let log = log.clone();
        set.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0;
            while Instant::now() < deadline {
                let e = log.record(ev(t * 1_000_000 + i)).await.unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {} {}", e.seq, e.id).unwrap();
                out.flush().unwrap();
                i += 1;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// `crash_child`'s name as the test harness knows it (`audit_crash::crash_child`).
fn child_test_name() -> String {
    let path = module_path!();
    let module = path.split_once("::").map_or(path, |(_, m)| m);
    format!("{module}::crash_child")
}

async fn crash_mid_burst(env: Env) {
    let spec = format!("{}|{}", env.cfg.url, env.dir.path().display());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([child_test_name().as_str(), "--exact", "--nocapture"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut killer = Some(child);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (seq, id) = rest.split_once(' ').unwrap();
                acked.push((seq.parse::<i64>().unwrap(), id.to_owned()));
                if acked.len() == 437
                    && let Some(mut c) = killer.take()
                {
                    c.kill().unwrap(); // SIGKILL
                    c.wait().unwrap();
                }
            }
        }
        if let Some(mut c) = killer {
            let _ = c.kill();
            let _ = c.wait();
        }
        acked
    });
    let acked = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(
        acked.len() >= 437,
        "child acknowledged only {}",
        acked.len()
    );
    let log = env.open_with(|c| c.replica = Some("crash".into())).await;
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:#?}");
    let stored: HashSet<(i64, String)> = log
        .all_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.chain == "crash")
        .map(|e| (e.seq, e.id))
        .collect();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged event {a:?} lost");
    }
    eprintln!(
        "crash: {} acknowledged, {} stored, chain intact",
        acked.len(),
        stored.len()
    );
    // The restarted writer continues the chain.
    let next = log.record(ev(1)).await.unwrap();
    assert_eq!(next.seq, i64::try_from(stored.len()).unwrap() + 1);
    assert!(log.verify().await.unwrap().ok);
    env.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_mid_burst() {
    crash_mid_burst(Env::sqlite().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_mid_burst() {
    if let Some(env) = Env::postgres().await {
        crash_mid_burst(env).await;
    }
}
