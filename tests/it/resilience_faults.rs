//! Upstream faults at ~20 %: many logoffs, disconnects and messages through the gateway against
//! the ARM emulator and the WVD classic broker while both inject every fault kind of
//! [`FaultSettings`] — 5xx before and after acting, dropped connections before and after
//! acting, 429 with `Retry-After`, slow answers beyond the pool's 1 s timeout. Asserted:
//! (a) every caller gets a defined answer in time: success, or problem+json with a code from
//!     `docs/api.md` — never a 500, never a hang or a cut connection;
//! (b) no message is ever delivered twice (each target gets one message action);
//! (c) every acknowledged action has its intent and outcome, and `audit verify` passes;
//! (d) every effect the emulators show (session logged off, disconnected, message delivered)
//!     has an intent for that target.
//! Run: `cargo nextest run --test it resilience_faults:: --no-capture` (prints `fault figures:`).

use crate::support::app::{ARM_POOL, AVD_POOL, Demo, InProc};
use crate::support::gateway::{self, by_request, cli_verify, store_events};
use serde_json::json;
use sessiongate::emulator::{arm::ArmOp, common::FaultSettings};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const CLASSIC_POOL: &str = "classic-demo";
const CLASSIC_HP: &str = "classic-hp1";
const CLIENTS: usize = 12;
/// The gateway's whole-request bound in this test (the demo's is 30 s).
const REQUEST_TIMEOUT_SECS: u64 = 10;

/// ~20 % of upstream requests hit one fault, every kind represented.
fn faults() -> FaultSettings {
    FaultSettings {
        latency_ms: 0,
        error_rate: 0.04,
        drop_rate: 0.04,
        throttle_rate: 0.03,
        drop_after_rate: 0.03,
        error_after_rate: 0.03,
        slow_rate: 0.03,
        slow_ms: 1300,
    }
}

/// The stable codes of `docs/api.md`'s table.
fn documented_codes() -> HashSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    let codes: HashSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert!(codes.len() > 20, "code table not found: {codes:?}");
    codes
}

#[derive(Debug, Clone)]
struct Job {
    pool: &'static str,
    host: String,
    id: u32,
    action: &'static str,
}

#[derive(Debug)]
struct Seen {
    job: Job,
    status: u16,
    request_id: String,
    code: Option<String>,
    outcome: Option<String>,
}

fn insert_after(text: &mut String, line: &str, add: &str) {
    let at = text
        .find(line)
        .unwrap_or_else(|| panic!("{line} not in config"))
        + line.len();
    text.insert_str(at, add);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_upstream_faults_give_defined_answers_and_lose_nothing() {
    let t0 = Instant::now();
    let b = Demo::start_unthrottled().await;
    let arm = b.arm();
    let classic = b.backends.classic.state();
    classic.set_throttling(None);

    // Targets: 120 ARM sessions, 80 classic ones; actions rotate logoff/disconnect/message.
    let actions = ["logoff", "disconnect", "message"];
    let mut jobs: Vec<Job> = b
        .seed("fault", 120)
        .into_iter()
        .enumerate()
        .map(|(i, (host, id))| Job {
            pool: AVD_POOL,
            host,
            id,
            action: actions[i % 3],
        })
        .collect();
    let chosts = classic.hosts(CLASSIC_HP);
    for i in 0..80 {
        let host = chosts[i % chosts.len()].clone();
        let id = classic
            .add_session(CLASSIC_HP, &host, &format!("cfault{i}@contoso.com"))
            .expect("classic session");
        jobs.push(Job {
            pool: CLASSIC_POOL,
            host,
            id,
            action: actions[i % 3],
        });
    }

    // The demo config with a 1 s upstream timeout (slow answers exceed it) and a 10 s bound.
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let mut text = b.config_text(&listen, None, None);
    text = text.replace(
        "request_timeout_secs = 30",
        &format!("request_timeout_secs = {REQUEST_TIMEOUT_SECS}"),
    );
    insert_after(&mut text, "host_pool = \"hp-demo\"", "\ntimeout_secs = 1");
    insert_after(
        &mut text,
        "host_pool = \"classic-hp1\"",
        "\ntimeout_secs = 1",
    );
    let cfg_path = b.dir.path().join("faults.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let cfg = sessiongate::config::Config::from_toml_with_env(&text, std::iter::empty())
        .expect("config parses");
    cfg.validate().expect("valid config");
    let mut gw = InProc::start(&cfg).await;

    arm.set_faults(faults());
    classic.faults().set(faults());
    let arm_calls_before = arm.all_calls();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS + 3))
        .build()
        .unwrap();
    let queue = Arc::new(Mutex::new(jobs.clone()));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (http, queue, seen) = (http.clone(), queue.clone(), seen.clone());
        let (url, key) = (gw.url.clone(), b.keys.operator.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(job) = queue.lock().unwrap().pop() else {
                    return;
                };
                let u = format!(
                    "{url}/hostpools/{}/sessionhosts/{}/sessions/{}/{}",
                    job.pool, job.host, job.id, job.action
                );
                let body = (job.action == "message")
                    .then(|| json!({"title": "Maintenance", "body": format!("to {}", job.id)}));
                let started = Instant::now();
                let a = gateway::post_action(&http, &u, &key, body)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{job:?}: no answer after {:?}: {e:?}", started.elapsed())
                    });
                let (code, outcome) = if a.status == 200 {
                    (None, a.body["outcome"].as_str().map(str::to_string))
                } else {
                    assert!(
                        a.content_type.starts_with("application/problem+json"),
                        "{job:?}: {} {}",
                        a.status,
                        a.body
                    );
                    (a.body["code"].as_str().map(str::to_string), None)
                };
                seen.lock().unwrap().push(Seen {
                    job,
                    status: a.status,
                    request_id: a.request_id,
                    code,
                    outcome,
                });
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    // Let slow requests the gateway gave up on finish upstream, then stop injecting.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let injected = (arm.faults().injected(), classic.faults().injected());
    arm.set_faults(FaultSettings::default());
    classic.faults().set(FaultSettings::default());
    gw.stop().await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), jobs.len());

    // (a) Defined answers only.
    let codes = documented_codes();
    let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
    for s in &seen {
        assert_ne!(s.status, 500, "{s:?}");
        let key = match (&s.outcome, &s.code) {
            (Some(o), _) => {
                assert!(
                    ["done", "already_gone"].contains(&o.as_str()),
                    "{s:?}: unexpected outcome"
                );
                format!("200 {o}")
            }
            (None, Some(c)) => {
                assert!(codes.contains(c), "{s:?}: `{c}` is not in docs/api.md");
                format!("{} {c}", s.status)
            }
            (None, None) => panic!("{s:?}: neither an outcome nor a code"),
        };
        *by_answer.entry(key).or_default() += 1;
    }
    let mut ok_by_pool_action: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in &seen {
        let e = ok_by_pool_action
            .entry(format!("{} {}", s.job.pool, s.job.action))
            .or_default();
        e.1 += 1;
        if s.status == 200 {
            e.0 += 1;
        }
    }
    let ok = seen.iter().filter(|s| s.status == 200).count();
    assert!(ok * 2 > seen.len(), "most actions succeed: {by_answer:?}");
    assert!(
        ok < seen.len(),
        "some faults reached a caller: {by_answer:?}"
    );

    // (b) No message delivered twice.
    let mut delivered: HashMap<(String, String, u32), usize> = HashMap::new();
    for m in arm.messages() {
        *delivered
            .entry((AVD_POOL.into(), m.host, m.session_id))
            .or_default() += 1;
    }
    for m in classic.messages() {
        *delivered
            .entry((CLASSIC_POOL.into(), m.host, m.session_id))
            .or_default() += 1;
    }
    for (t, n) in &delivered {
        assert_eq!(*n, 1, "message delivered {n} times to {t:?}");
    }

    // (c) Audit: every acknowledged action has intent + outcome; the chain verifies.
    let (code, out) = cli_verify(&cfg_path).await;
    assert_eq!(code, 0, "audit verify:\n{out}");
    let events = store_events(&cfg).await;
    let map = by_request(&events);
    for s in seen.iter().filter(|s| s.status == 200) {
        let (i, o) = map
            .get(&s.request_id)
            .unwrap_or_else(|| panic!("{s:?}: not audited"));
        assert_eq!((i.len(), o.len()), (1, 1), "{s:?}");
        assert_eq!(Some(&o[0].event.outcome), s.outcome.as_ref(), "{s:?}");
    }
    let mut intents: HashSet<(String, String, u32, String)> = HashSet::new();
    for (i, _) in map.values() {
        for e in i {
            let t = &e.event.target;
            intents.insert((
                t.pool.clone().unwrap_or_default(),
                t.host.clone().unwrap_or_default(),
                t.session_id.unwrap_or_default(),
                e.event.action.clone(),
            ));
        }
    }
    let intent_count: usize = map.values().map(|(i, _)| i.len()).sum();
    let has_intent = |pool: &str, host: &str, id: u32, action: &str| -> bool {
        intents.contains(&(pool.to_string(), host.to_string(), id, action.to_string()))
    };

    // (d) Every effect upstream was announced by an intent for that target and action.
    for (pool, host, id) in delivered.keys() {
        assert!(has_intent(pool, host, *id, "message"), "{pool}/{host}/{id}");
    }
    let arm_left: HashMap<(String, u32), String> = arm
        .sessions(ARM_POOL)
        .into_iter()
        .map(|s| ((s.host, s.id), s.state))
        .collect();
    let mut effects = delivered.len();
    for j in &jobs {
        let (gone, disconnected) = if j.pool == AVD_POOL {
            let st = arm_left.get(&(j.host.clone(), j.id));
            (st.is_none(), st.is_some_and(|s| s == "Disconnected"))
        } else {
            let st = classic.session_state(CLASSIC_HP, &j.host, j.id);
            (
                st.is_none(),
                st.as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("Disconnected")),
            )
        };
        if gone {
            effects += 1;
            assert!(
                has_intent(j.pool, &j.host, j.id, "logoff"),
                "{j:?} gone without intent"
            );
        }
        if disconnected {
            effects += 1;
            assert!(
                has_intent(j.pool, &j.host, j.id, "disconnect"),
                "{j:?} disconnected without intent"
            );
        }
    }
    let arm_calls: BTreeMap<&str, u64> = arm
        .all_calls()
        .into_iter()
        .map(|(k, v)| (k, v - arm_calls_before.get(k).copied().unwrap_or(0)))
        .collect();
    for op in [ArmOp::Logoff, ArmOp::Disconnect, ArmOp::SendMessage] {
        assert!(arm_calls[op.as_str()] > 0, "{op:?} reached the emulator");
    }
    // Every kind was injected (about 14 expected per kind over both emulators).
    for k in sessiongate::emulator::common::FAULT_KINDS {
        assert!(
            injected.0[k] + injected.1[k] > 0,
            "no `{k}` fault was injected: {injected:?}"
        );
    }
    let elapsed = t0.elapsed();
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    eprintln!(
        "fault figures: actions={} answers={by_answer:?} ok/sent={ok_by_pool_action:?} \
         injected arm={:?} classic={:?} effects_upstream={effects} \
         messages_delivered={} duplicate_messages=0 intents={intent_count} \
         arm_calls={arm_calls:?} classic_action_calls={} verify=ok elapsed={elapsed:?}",
        seen.len(),
        injected.0,
        injected.1,
        delivered.len(),
        ["logoff-user", "disconnect-user", "send-message-user"]
            .iter()
            .map(|k| classic.calls(k))
            .sum::<u64>(),
    );
}
