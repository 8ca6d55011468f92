//! Crash test of the audit log through the real binary: `sessiongate serve` in front of the
//! in-process ARM emulator, bursts of concurrent logoffs, SIGKILL in the middle of each burst
//! (at a different point each round: at once, early, middle, late), restart with the same
//! config — [`ROUNDS`] kills in all — then:
//! (a) every action acknowledged to a client (200 done/already_gone) has its `outcome` event;
//! (b) every session the emulator logged off has an `intent` event for that target, and there
//!     were no more logoff calls than intents;
//! (c) `sessiongate audit verify --config FILE` exits 0 after each crash, and the restarted
//!     gateway continues the chain.
//! Run: `cargo nextest run --test it gateway_crash::`

use crate::support::app::{ARM_POOL, Demo};
use crate::support::free_port;
use crate::support::gateway::{self, GatewayProcess, api_events, cli_verify};
use serde_json::Value;
use sessiongate::emulator::arm::{ArmOp, ArmState};
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

type Target = (String, u32);

/// Targets per round, and the number of acknowledged actions after which the round's
/// gateway is SIGKILLed: at the first answer, early, middle and late in the burst (a
/// different point each round; the latest leaves more than [`CLIENTS`] targets in the queue so
/// the kill always lands mid-burst). Ten SIGKILLs, bounded to well under a minute on 2 cores.
const ROUNDS: [(usize, usize); 10] = [
    (40, 1),
    (40, 3),
    (40, 6),
    (40, 9),
    (40, 12),
    (40, 15),
    (40, 18),
    (40, 21),
    (40, 24),
    (40, 26),
];
const CLIENTS: usize = 8;

/// What the clients of one burst saw.
#[derive(Default)]
struct Round {
    sent: usize,
    /// request id -> (target, outcome) of every acknowledged action.
    acks: HashMap<String, (Target, String)>,
    /// Requests that got no HTTP answer (cut off by the kill).
    cut_off: usize,
    /// Acknowledged count when the kill fired.
    acked_at_kill: usize,
}

fn present(arm: &ArmState, of: &BTreeSet<Target>) -> BTreeSet<Target> {
    arm.sessions(ARM_POOL)
        .into_iter()
        .map(|s| (s.host, s.id))
        .filter(|t| of.contains(t))
        .collect()
}

/// Logs `targets` off through `url` with CLIENTS concurrent clients and SIGKILLs `gw` once
/// `kill_after` actions were acknowledged. Each client stops at its first request that got no
/// HTTP answer.
async fn burst_and_kill(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    targets: &[Target],
    kill_after: usize,
    gw: GatewayProcess,
) -> (Round, String) {
    let gw = Arc::new(Mutex::new(gw));
    let queue = Arc::new(Mutex::new(targets.to_vec()));
    let round = Arc::new(Mutex::new(Round::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let other: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();

    let killer = {
        let (gw, acked) = (gw.clone(), acked.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            while acked.load(Ordering::SeqCst) < kill_after
                && t0.elapsed() < Duration::from_secs(20)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let at = acked.load(Ordering::SeqCst);
            gw.lock().unwrap().kill();
            at
        })
    };
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (http, queue, round, acked, other) = (
            http.clone(),
            queue.clone(),
            round.clone(),
            acked.clone(),
            other.clone(),
        );
        let (key, url) = (key.to_string(), url.to_string());
        workers.push(tokio::spawn(async move {
            loop {
                let Some((host, id)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let u = format!("{}/logoff", Demo::session_url(&url, &host, id));
                round.lock().unwrap().sent += 1;
                match gateway::post_action(&http, &u, &key, None).await {
                    Ok(a) if a.status == 200 => {
                        let outcome = a.body["outcome"].as_str().unwrap_or("").to_string();
                        assert!(
                            outcome == "done" || outcome == "already_gone",
                            "{:?}",
                            a.body
                        );
                        assert_eq!(a.body["request_id"], a.request_id.as_str());
                        round
                            .lock()
                            .unwrap()
                            .acks
                            .insert(a.request_id.clone(), ((host, id), outcome));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(a) => other.lock().unwrap().push((a.status, a.body)),
                    Err(_) => {
                        round.lock().unwrap().cut_off += 1;
                        return;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let at = killer.await.unwrap();
    let log = gw.lock().unwrap().log_text();
    let other = other.lock().unwrap().clone();
    assert!(other.is_empty(), "unexpected answers: {other:?}\n{log}");
    let mut r = std::mem::take(&mut *round.lock().unwrap());
    r.acked_at_kill = at;
    (r, log)
}

async fn verify_ok(cfg_path: &Path, when: &str) {
    let (code, out) = cli_verify(cfg_path).await;
    assert_eq!(code, 0, "audit verify {when}:\n{out}");
    assert!(out.contains("INTACT"), "{when}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_or_performed_action() {
    let t_start = Instant::now();
    let b = Demo::start_unthrottled().await;
    let total: usize = ROUNDS.iter().map(|r| r.0).sum();
    let all_targets = b.seed("crash", total + 1);
    let arm = b.arm();
    let target_set: BTreeSet<Target> = all_targets.iter().cloned().collect();
    let before = present(&arm, &target_set);
    assert_eq!(before.len(), total + 1);

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cfg_path = b.dir.path().join("sessiongate.toml");
    std::fs::write(
        &cfg_path,
        b.config_text(&format!("127.0.0.1:{port}"), None, None),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let mut acks: HashMap<String, (Target, String)> = HashMap::new();
    let mut figures = Vec::new();
    let (mut kills, mut verified, mut sent, mut cut_off) = (0usize, 0usize, 0usize, 0usize);
    let mut offset = 0;
    for (n, (count, kill_after)) in ROUNDS.iter().copied().enumerate() {
        let targets = &all_targets[offset..offset + count];
        offset += count;
        // Round 0 starts on an empty store; later rounds are restarts after a SIGKILL.
        let gw =
            GatewayProcess::spawn(&cfg_path, &url, b.dir.path().join(format!("serve-{n}.log")))
                .await;
        let (round, _log) =
            burst_and_kill(&http, &url, &b.keys.operator, targets, kill_after, gw).await;
        assert!(
            round.acks.len() >= kill_after && round.acks.len() < count,
            "round {n}: the kill did not land mid-burst: {} of {count} acknowledged",
            round.acks.len()
        );
        assert!(round.cut_off >= 1, "round {n}: no request was cut off");
        kills += 1;
        verify_ok(&cfg_path, &format!("after SIGKILL in round {n}")).await;
        verified += 1;
        sent += round.sent;
        cut_off += round.cut_off;
        figures.push(format!(
            "round {n}: sent={} acked={} (kill fired at {}) cut_off={}",
            round.sent,
            round.acks.len(),
            round.acked_at_kill,
            round.cut_off
        ));
        acks.extend(round.acks);
    }

    // Let the emulator finish any request that reached it before the last kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = present(&arm, &target_set);
    let logged_off: BTreeSet<Target> = before.difference(&after).cloned().collect();
    let logoff_calls = arm.calls(ArmOp::Logoff);
    for (t, o) in acks.values() {
        if o == "done" {
            assert!(
                logged_off.contains(t),
                "acknowledged done but present: {t:?}"
            );
        }
    }

    // Restart once more and read the log through the API.
    let gw = GatewayProcess::spawn(&cfg_path, &url, b.dir.path().join("serve-final.log")).await;
    let events = api_events(&http, &url, &b.keys.auditor).await;

    let mut outcomes: HashMap<String, Vec<&Value>> = HashMap::new();
    let mut intents_by_target: HashMap<Target, Vec<&Value>> = HashMap::new();
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
                assert!(
                    intent_rids.insert(e["request_id"].as_str().unwrap().to_string()),
                    "two intents for one request: {e}"
                );
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
    for rid in outcomes.keys() {
        assert!(intent_rids.contains(rid), "outcome {rid} without intent");
    }
    let intents_without_outcome = intent_rids
        .iter()
        .filter(|r| !outcomes.contains_key(*r))
        .count();

    // (c) The restarted gateway continues the chain: one more action, kill, verify again.
    let (host, id) = all_targets[total].clone();
    let a = gateway::post_action(
        &http,
        &format!("{}/logoff", Demo::session_url(&url, &host, id)),
        &b.keys.operator,
        None,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{:?}\n{}", a.body, gw.log_text());
    assert_eq!(a.body["outcome"], "done");
    drop(gw);
    verify_ok(&cfg_path, "after the final restart").await;
    verified += 1;
    assert!(kills >= 5, "only {kills} SIGKILLs");
    let cfg = b.config(&format!("127.0.0.1:{port}"), None, None);
    let stored = gateway::store_events(&cfg).await;
    let map = gateway::by_request(&stored);
    let (i, o) = map.get(&a.request_id).expect("post-restart action audited");
    assert_eq!((i.len(), o.len()), (1, 1));
    assert_eq!(i[0].chain, o[0].chain);
    assert!(i[0].seq < o[0].seq);
    assert_eq!(
        o[0].seq,
        i64::try_from(stored.iter().filter(|e| e.chain == o[0].chain).count()).unwrap(),
        "seq gap after restarts"
    );

    let elapsed = t_start.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "crash loop took {elapsed:?}, over its 60 s budget"
    );
    eprintln!(
        "crash figures: {} | kills={kills} sent={sent} acknowledged={} cut_off={cut_off} \
         emulator_logged_off={} logoff_calls={logoff_calls} intents={intents} outcomes={} \
         intents_without_outcome={intents_without_outcome} verify_ok={verified} events={} \
         elapsed={elapsed:?}",
        figures.join("; "),
        acks.len(),
        logged_off.len(),
        outcomes.len(),
        events.len(),
    );
}
