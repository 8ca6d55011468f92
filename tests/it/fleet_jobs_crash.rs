//! Jobs survive SIGKILL (the real binary, `serve --config FILE`): a bulk logoff job killed in
//! the middle resumes after a restart and no item is repeated (the ARM emulator counts one
//! logoff call per item); a message item cut off mid-flight is never sent again
//! (`outcome_unknown`); on PostgreSQL, a second replica takes over the job of a killed one once
//! its lease expires.
//! Run: `cargo nextest run --test it fleet_jobs_crash::`

use crate::support::app::{ARM_POOL, AVD_POOL, Demo};
use crate::support::free_port;
use crate::support::gateway::GatewayProcess;
use crate::support::pg::PgDb;
use serde_json::{Value, json};
use sessiongate::emulator::{arm::ArmOp, common::FaultSettings};
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

const ENDED: [&str; 4] = ["succeeded", "completed_with_errors", "failed", "cancelled"];

/// Writes the demo config (plus `extra`) for a gateway on a fresh port; returns (file, url).
fn config(
    demo: &Demo,
    name: &str,
    audit: Option<&str>,
    replica: Option<&str>,
    extra: &str,
) -> (PathBuf, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut text = demo.config_text(&listen, audit, replica);
    text.push_str("\n[jobs]\n");
    text.push_str(extra);
    let path = demo.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, format!("http://{listen}"))
}

fn targets(demo: &Demo, prefix: &str, n: usize) -> Vec<Value> {
    demo.seed(prefix, n)
        .into_iter()
        .map(|(host, id)| json!({"host": host, "id": id.to_string()}))
        .collect()
}

async fn submit(http: &reqwest::Client, url: &str, key: &str, action: &str, body: Value) -> String {
    let r = http
        .post(format!(
            "{url}/hostpools/{AVD_POOL}/sessions/{action}?async=true"
        ))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn job(http: &reqwest::Client, url: &str, key: &str, id: &str) -> Option<Value> {
    let r = http
        .get(format!("{url}/jobs/{id}?limit=1000"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    assert_eq!(r.status(), 200);
    r.json().await.ok()
}

async fn wait_for(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    id: &str,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(j) = job(http, url, key, id).await
            && cond(&j)
        {
            return j;
        }
        assert!(
            t0.elapsed() < within,
            "job {id} did not get there in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ended(j: &Value) -> bool {
    ENDED.contains(&j["state"].as_str().unwrap_or(""))
}

fn finished(j: &Value) -> u64 {
    let c = &j["counts"];
    ["done", "already_gone", "failed", "refused"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_resumes_and_repeats_no_item() {
    let demo = Demo::start_unthrottled().await;
    let arm = demo.arm();
    let t = targets(&demo, "crash", 12);
    let (cfg, url) = config(&demo, "gw", None, None, "poll_ms = 100\nconcurrency = 2\n");
    let http = reqwest::Client::new();
    let key = demo.keys.operator.clone();
    let mut gw = GatewayProcess::spawn(&cfg, &url, demo.dir.path().join("gw1.log")).await;
    arm.set_faults(FaultSettings {
        latency_ms: 150,
        ..Default::default()
    });
    let before = arm.calls(ArmOp::Logoff);
    let id = submit(&http, &url, &key, "logoff", json!({"targets": t})).await;
    let at_kill = wait_for(&http, &url, &key, &id, Duration::from_secs(60), |j| {
        finished(j) >= 3
    })
    .await;
    gw.kill();
    assert!(!ended(&at_kill), "the job ended before the kill: {at_kill}");

    let _gw = GatewayProcess::spawn(&cfg, &url, demo.dir.path().join("gw2.log")).await;
    let j = wait_for(&http, &url, &key, &id, Duration::from_secs(90), ended).await;
    arm.set_faults(FaultSettings::default());
    assert_eq!(j["state"], "succeeded", "{j}");
    let c = &j["counts"];
    assert_eq!(
        c["done"].as_u64().unwrap() + c["already_gone"].as_u64().unwrap(),
        12,
        "{j}"
    );
    // One logoff call per item, none repeated, and every session is gone.
    assert_eq!(arm.calls(ArmOp::Logoff) - before, 12, "{j}");
    let left = arm.sessions(ARM_POOL);
    for it in j["items"].as_array().unwrap() {
        let id = it["target"]["session_id"].as_u64().unwrap() as u32;
        let host = it["target"]["host"].as_str().unwrap();
        assert!(!left.iter().any(|s| s.host == host && s.id == id), "{it}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cut_off_by_sigkill_is_never_sent_again() {
    let demo = Demo::start_unthrottled().await;
    let arm = demo.arm();
    let t = targets(&demo, "msg", 3);
    let (cfg, url) = config(&demo, "gw", None, None, "poll_ms = 100\nconcurrency = 1\n");
    let http = reqwest::Client::new();
    let key = demo.keys.operator.clone();
    let mut gw = GatewayProcess::spawn(&cfg, &url, demo.dir.path().join("gw1.log")).await;
    // Each item takes two ARM calls of 1 s: a wide window to catch the second one in flight.
    arm.set_faults(FaultSettings {
        latency_ms: 1000,
        ..Default::default()
    });
    let id = submit(
        &http,
        &url,
        &key,
        "message",
        json!({"targets": t, "title": "maintenance", "body": "log off please"}),
    )
    .await;
    // Kill while the second item is handed to the pipeline (started, no result).
    wait_for(&http, &url, &key, &id, Duration::from_secs(60), |j| {
        j["items"][1]["state"] == "running"
    })
    .await;
    gw.kill();
    let _gw = GatewayProcess::spawn(&cfg, &url, demo.dir.path().join("gw2.log")).await;
    let j = wait_for(&http, &url, &key, &id, Duration::from_secs(90), ended).await;
    arm.set_faults(FaultSettings::default());
    let items = j["items"].as_array().unwrap();
    assert_eq!(items[0]["result"]["outcome"], "done", "{j}");
    assert_eq!(items[1]["result"]["outcome"], "failed", "{j}");
    assert_eq!(
        items[1]["result"]["error"]["code"], "outcome_unknown",
        "{j}"
    );
    for it in &items[2..] {
        assert_eq!(it["result"]["outcome"], "done", "{it}");
    }
    assert_eq!(j["state"], "completed_with_errors");
    // No session got the message twice; the cut-off one got it at most once.
    let mut per: HashMap<(String, u32), usize> = HashMap::new();
    for m in arm.messages() {
        *per.entry((m.host, m.session_id)).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 1), "{per:?}");
    assert!(per.len() == 2 || per.len() == 3, "{per:?}");
    assert!(arm.calls(ArmOp::SendMessage) <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_the_job_of_a_killed_one_after_its_lease() {
    let Some(db) = PgDb::create("jobs_t").await else {
        return;
    };
    let demo = Demo::start_unthrottled().await;
    let arm = demo.arm();
    let t = targets(&demo, "lease", 10);
    let extra = "poll_ms = 100\nconcurrency = 1\nlease_secs = 2\n";
    let (cfg_a, url_a) = config(&demo, "gw-a", Some(&db.url), Some("gw-a"), extra);
    let (cfg_b, url_b) = config(&demo, "gw-b", Some(&db.url), Some("gw-b"), extra);
    let http = reqwest::Client::new();
    let key = demo.keys.operator.clone();
    let mut a = GatewayProcess::spawn(&cfg_a, &url_a, demo.dir.path().join("a.log")).await;
    // 10 items one at a time, 0.8 s each: B comes up well before A would be done.
    arm.set_faults(FaultSettings {
        latency_ms: 400,
        ..Default::default()
    });
    let before = arm.calls(ArmOp::Logoff);
    let id = submit(&http, &url_a, &key, "logoff", json!({"targets": t})).await;
    wait_for(&http, &url_a, &key, &id, Duration::from_secs(60), |j| {
        finished(j) >= 2
    })
    .await;
    // B is up while A holds the lease: it must not take the job until A dies and the lease
    // runs out.
    let _b = GatewayProcess::spawn(&cfg_b, &url_b, demo.dir.path().join("b.log")).await;
    let progress = job(&http, &url_b, &key, &id).await.unwrap();
    assert!(!ended(&progress), "{progress}");
    a.kill();
    let killed = Instant::now();
    let j = wait_for(&http, &url_b, &key, &id, Duration::from_secs(90), ended).await;
    arm.set_faults(FaultSettings::default());
    assert_eq!(j["state"], "succeeded", "{j}");
    let c = &j["counts"];
    assert_eq!(
        c["done"].as_u64().unwrap() + c["already_gone"].as_u64().unwrap(),
        10,
        "{j}"
    );
    assert_eq!(arm.calls(ArmOp::Logoff) - before, 10, "{j}");
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "finished before any lease could expire"
    );
    drop(db);
}
