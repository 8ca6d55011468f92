//! Crash test of the audit log through the real binary: `sessiongate serve` in front of the
//! in-process ARM emulator, a burst of concurrent logoffs, SIGKILL in the middle of it,
//! restart with the same config, then:
//! (a) every action acknowledged to a client (200 done/already_gone) has its `outcome` event;
//! (b) every session the emulator logged off has an `intent` event for that target;
//! (c) `sessiongate audit verify --config FILE` exits 0 (and again after more actions).
//! Run: `cargo nextest run --test gateway_crash`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use gateway_support::{ARM_POOL, Backends, GatewayProcess, api_events, cli_verify, free_port};
use serde_json::Value;
use sessiongate::emulator::arm::ArmOp;
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const TARGETS: usize = 200;
const CLIENTS: usize = 8;
/// SIGKILL once this many actions were acknowledged (mid-burst).
const KILL_AFTER_ACKS: usize = 70;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_or_performed_action() {
    let t_start = Instant::now();
    let b = Backends::start().await;
    let targets = b.seed("crash", TARGETS);
    let arm = b.arm();
    let target_set: BTreeSet<(String, u32)> = targets.iter().cloned().collect();
    let present = |arm: &sessiongate::emulator::arm::ArmState| -> BTreeSet<(String, u32)> {
        arm.sessions(ARM_POOL)
            .into_iter()
            .map(|s| (s.host, s.id))
            .filter(|t| target_set.contains(t))
            .collect()
    };
    let before = present(&arm);
    assert_eq!(before.len(), TARGETS);

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cfg_path = b.dir.path().join("sessiongate.toml");
    std::fs::write(
        &cfg_path,
        b.config_text(&format!("127.0.0.1:{port}"), None, None),
    )
    .unwrap();

    let gw = GatewayProcess::spawn(&cfg_path, &url, b.dir.path().join("serve-1.log")).await;
    let gw = Arc::new(Mutex::new(gw));

    // The burst: CLIENTS workers share the target queue; each stops at its first request
    // that got no HTTP answer (the gateway died under it).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let queue = Arc::new(Mutex::new(targets.clone()));
    let acked = Arc::new(AtomicUsize::new(0));
    // request id -> (target, outcome) of every acknowledged action.
    let acks: Arc<Mutex<HashMap<String, ((String, u32), String)>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let other: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();

    let killer = {
        let gw = gw.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            while acked.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
                if t0.elapsed() > Duration::from_secs(20) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let in_flight_at_kill = acked.load(Ordering::SeqCst);
            gw.lock().unwrap().kill();
            in_flight_at_kill
        })
    };

    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (http, queue, acked, acks, sent, lost, other) = (
            http.clone(),
            queue.clone(),
            acked.clone(),
            acks.clone(),
            sent.clone(),
            lost.clone(),
            other.clone(),
        );
        let key = b.keys.operator.clone();
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let Some((host, id)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let u = format!("{}/logoff", Backends::session_url(&url, &host, id));
                sent.fetch_add(1, Ordering::SeqCst);
                match gateway_support::post_action(&http, &u, &key, None).await {
                    Ok(a) if a.status == 200 => {
                        let outcome = a.body["outcome"].as_str().unwrap_or("").to_string();
                        assert!(
                            outcome == "done" || outcome == "already_gone",
                            "{:?}",
                            a.body
                        );
                        assert_eq!(a.body["request_id"], a.request_id.as_str());
                        acks.lock()
                            .unwrap()
                            .insert(a.request_id.clone(), ((host, id), outcome));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(a) => other.lock().unwrap().push((a.status, a.body)),
                    Err(_) => {
                        lost.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let acked_at_kill = killer.await.unwrap();
    let burst_log = gw.lock().unwrap().log_text();
    let other = other.lock().unwrap().clone();
    assert!(
        other.is_empty(),
        "unexpected answers: {other:?}\n{burst_log}"
    );
    let acks = acks.lock().unwrap().clone();
    let lost = lost.load(Ordering::SeqCst);
    assert!(
        acks.len() >= KILL_AFTER_ACKS && acks.len() < TARGETS,
        "the kill did not land mid-burst: {} of {TARGETS} acknowledged",
        acks.len()
    );
    assert!(lost >= 1, "no request was cut off by the kill");

    // Let the emulator finish any request that reached it before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = present(&arm);
    let logged_off: BTreeSet<(String, u32)> = before.difference(&after).cloned().collect();
    let logoff_calls = arm.calls(ArmOp::Logoff);
    for (t, o) in acks.values() {
        if o == "done" {
            assert!(
                logged_off.contains(t),
                "acknowledged done but present: {t:?}"
            );
        }
    }

    // Restart on the same config (same port, same SQLite file).
    let gw2 = GatewayProcess::spawn(&cfg_path, &url, b.dir.path().join("serve-2.log")).await;
    let events = api_events(&http, &url, &b.keys.auditor).await;

    let mut outcomes: HashMap<String, Vec<&Value>> = HashMap::new();
    let mut intents_by_target: HashMap<(String, u32), Vec<&Value>> = HashMap::new();
    let mut intent_rids: HashSet<String> = HashSet::new();
    for e in &events {
        match e["kind"].as_str() {
            Some("outcome") => outcomes
                .entry(e["request_id"].as_str().unwrap().to_string())
                .or_default()
                .push(e),
            Some("intent") => {
                assert_eq!(e["action"], "logoff");
                assert_eq!(e["outcome"], "pending");
                assert_eq!(e["target"]["pool"], "avd-demo");
                let t = (
                    e["target"]["host"].as_str().unwrap().to_string(),
                    u32::try_from(e["target"]["session_id"].as_u64().unwrap()).unwrap(),
                );
                intent_rids.insert(e["request_id"].as_str().unwrap().to_string());
                intents_by_target.entry(t).or_default().push(e);
            }
            _ => {}
        }
    }

    // (a) Every acknowledged action has exactly one outcome event with its request id and
    // the outcome the client was told, and its intent.
    for (rid, (t, o)) in &acks {
        let got = outcomes
            .get(rid)
            .unwrap_or_else(|| panic!("acknowledged action {rid} {t:?} has no outcome event"));
        assert_eq!(got.len(), 1, "{rid}: {got:?}");
        assert_eq!(got[0]["outcome"], o.as_str(), "{rid}");
        assert_eq!(got[0]["target"]["host"], t.0.as_str());
        assert_eq!(got[0]["target"]["session_id"], t.1);
        assert!(intent_rids.contains(rid), "{rid}: outcome without intent");
    }
    // (b) Every provider call that took effect was announced by an intent for that target,
    // and there were no more logoff calls than intents.
    for t in &logged_off {
        assert!(
            intents_by_target.contains_key(t),
            "the emulator logged off {t:?} but no intent was recorded"
        );
    }
    let intents: usize = intents_by_target.values().map(Vec::len).sum();
    assert!(
        logoff_calls as usize <= intents,
        "{logoff_calls} logoff calls but only {intents} intents"
    );
    assert!(logged_off.len() >= acks.len());
    // Every outcome has its intent (same request id).
    for rid in outcomes.keys() {
        assert!(intent_rids.contains(rid), "outcome {rid} without intent");
    }
    let intents_without_outcome = intent_rids
        .iter()
        .filter(|r| !outcomes.contains_key(*r))
        .count();

    // (c) The chain verifies after the crash...
    let (code, out) = cli_verify(&cfg_path).await;
    assert_eq!(code, 0, "audit verify after crash:\n{out}");
    assert!(out.contains("INTACT"), "{out}");

    // ...and the restarted gateway continues it: one more action, verify again.
    let (host, id) = after.iter().next().cloned().expect("a session left");
    let a = gateway_support::post_action(
        &http,
        &format!("{}/logoff", Backends::session_url(&url, &host, id)),
        &b.keys.operator,
        None,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{:?}\n{}", a.body, gw2.log_text());
    assert_eq!(a.body["outcome"], "done");
    drop(gw2);
    let (code, out) = cli_verify(&cfg_path).await;
    assert_eq!(code, 0, "audit verify after restart + second kill:\n{out}");
    let cfg = b.config(&format!("127.0.0.1:{port}"), None, None);
    let stored = gateway_support::store_events(&cfg).await;
    let map = gateway_support::by_request(&stored);
    let (i, o) = map.get(&a.request_id).expect("post-restart action audited");
    assert_eq!((i.len(), o.len()), (1, 1));
    assert_eq!(i[0].chain, o[0].chain);
    assert!(i[0].seq < o[0].seq);

    eprintln!(
        "crash figures: targets={TARGETS} clients={CLIENTS} sent={} acknowledged={} \
         (kill triggered at {acked_at_kill}) cut_off={lost} emulator_logged_off={} \
         logoff_calls={logoff_calls} intents={intents} outcomes={} \
         intents_without_outcome={intents_without_outcome} events={} elapsed={:?}",
        sent.load(Ordering::SeqCst),
        acks.len(),
        logged_off.len(),
        outcomes.len(),
        events.len(),
        t_start.elapsed()
    );
}
