//! Two gateway instances (replicas `gw-a`, `gw-b`) sharing one PostgreSQL audit database, in
//! front of one ARM emulator: concurrent actions through both, including both racing for the
//! same sessions; then both chains verify (library and `sessiongate audit verify`) and every
//! action has its intent and outcome on the chain of the instance that ran it.
//! Server: postgres://postgres@127.0.0.1:5432/test (or `SESSIONGATE_TEST_PG_URL`); a fresh
//! database per test, dropped afterwards. Unreachable: a failure naming what to install (see `support::prereq`).
//! Run: `cargo nextest run --test it gateway_postgres::`

use crate::support::app::{Demo, InProc};
use crate::support::gateway::{self, Answer, by_request, cli_verify, post_action};
use crate::support::pg::PgDb;
use futures::StreamExt;
use serde_json::json;
use sessiongate::{
    audit::{AuditStore, EventKind},
    emulator::arm::ArmOp,
};
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

const PER_GATEWAY_TARGETS: usize = 60;
const CONTESTED: usize = 20;
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_postgres_and_both_chains_verify() {
    let Some(db) = PgDb::create("gw_t").await else {
        return;
    };
    let t_start = Instant::now();
    let b = Demo::start_unthrottled().await;
    let own = b.seed("pg", 2 * PER_GATEWAY_TARGETS);
    let contested = b.seed("race", CONTESTED);
    let arm = b.arm();

    let cfg_a = b.config("127.0.0.1:0", Some(&db.url), Some("gw-a"));
    let cfg_b = b.config("127.0.0.1:0", Some(&db.url), Some("gw-b"));
    let (mut ga, mut gb) = tokio::join!(InProc::start(&cfg_a), InProc::start(&cfg_b));
    assert_eq!(ga.gateway.audit().chain().as_deref(), Some("gw-a"));
    assert_eq!(gb.gateway.audit().chain().as_deref(), Some("gw-b"));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let key = b.keys.operator.clone();

    // Job: (replica, base url, action, target, body).
    let mut jobs = Vec::new();
    for (i, (host, id)) in own.iter().enumerate() {
        let (replica, base) = if i % 2 == 0 {
            ("gw-a", ga.url.clone())
        } else {
            ("gw-b", gb.url.clone())
        };
        let (action, body) = match (i / 2) % 3 {
            0 => ("logoff", None),
            1 => (
                "disconnect",
                Some(json!({"reason": "pg test", "ticket": "INC42"})),
            ),
            _ => (
                "message",
                Some(json!({"title": "Maintenance", "body": format!("notice {i}")})),
            ),
        };
        jobs.push((replica, base, action, (host.clone(), *id), body));
    }
    // Both replicas log off the same sessions at once.
    for (host, id) in &contested {
        jobs.push(("gw-a", ga.url.clone(), "logoff", (host.clone(), *id), None));
        jobs.push(("gw-b", gb.url.clone(), "logoff", (host.clone(), *id), None));
    }
    let n_jobs = jobs.len();
    let t_burst = Instant::now();
    let answers: Vec<(&str, &str, (String, u32), Answer)> = futures::stream::iter(jobs)
        .map(|(replica, base, action, (host, id), body)| {
            let http = http.clone();
            let key = key.clone();
            async move {
                let u = format!("{}/{action}", Demo::session_url(&base, &host, id));
                let a = post_action(&http, &u, &key, body).await.expect("answer");
                (replica, action, (host, id), a)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let burst = t_burst.elapsed();

    let mut outcomes_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, action, t, a) in &answers {
        assert_eq!(a.status, 200, "{action} {t:?}: {:?}", a.body);
        *outcomes_seen
            .entry(a.body["outcome"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Each contested session was logged off exactly once; the other replica saw it gone.
    let mut contested_done: HashMap<(String, u32), usize> = HashMap::new();
    for (_, _, t, a) in answers.iter().filter(|(_, _, t, _)| contested.contains(t)) {
        let o = a.body["outcome"].as_str().unwrap();
        assert!(o == "done" || o == "already_gone", "{o}");
        if o == "done" {
            *contested_done.entry(t.clone()).or_default() += 1;
        }
    }
    for t in &contested {
        assert_eq!(
            contested_done.get(t).copied().unwrap_or(0),
            1,
            "{t:?}: not exactly one done"
        );
        assert!(
            !arm.sessions("hp-demo")
                .iter()
                .any(|s| (&s.host, s.id) == (&t.0, t.1))
        );
    }
    assert_eq!(
        arm.calls(ArmOp::Disconnect) as usize,
        PER_GATEWAY_TARGETS * 2 / 3
    );
    assert_eq!(
        arm.calls(ArmOp::SendMessage) as usize,
        PER_GATEWAY_TARGETS * 2 / 3
    );

    // The shared store is readable through either replica.
    let via_a = gateway::api_events(&http, &ga.url, &b.keys.auditor).await;
    assert!(
        via_a.iter().any(|e| e["chain"] == "gw-b") && via_a.iter().any(|e| e["chain"] == "gw-a"),
        "GET /audit on gw-a does not show both chains"
    );

    ga.stop().await;
    gb.stop().await;

    // Every action: one intent and one outcome, both on the chain of the replica that ran
    // it, intent first, outcome matching what the client was told.
    let events = gateway::store_events(&cfg_a).await;
    let map = by_request(&events);
    for (replica, action, t, a) in &answers {
        let (i, o) = map
            .get(&a.request_id)
            .unwrap_or_else(|| panic!("{action} {t:?} ({}) not audited", a.request_id));
        assert_eq!((i.len(), o.len()), (1, 1), "{}", a.request_id);
        for e in [&i[0], &o[0]] {
            assert_eq!(e.chain, *replica);
            assert_eq!(e.event.action, *action);
            assert_eq!(e.event.target.host.as_deref(), Some(t.0.as_str()));
            assert_eq!(e.event.target.session_id, Some(t.1));
        }
        assert_eq!(i[0].event.outcome, "pending");
        assert!(i[0].seq < o[0].seq);
        assert_eq!(o[0].event.outcome, a.body["outcome"].as_str().unwrap());
        assert_eq!(a.body["audit_event_id"].as_str(), Some(o[0].id.as_str()));
    }
    let actions = events
        .iter()
        .filter(|e| e.event.kind == Some(EventKind::Intent))
        .count();
    assert_eq!(actions, n_jobs, "an intent without a client answer");

    // Both chains verify, gap-free from seq 1.
    let store = sessiongate::audit::open_read_only(&cfg_a.audit, &cfg_a.server.data_dir)
        .await
        .unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.ok, "{report:#?}");
    let chains: BTreeMap<&str, (u64, i64)> = report
        .chains
        .iter()
        .map(|c| (c.chain.as_str(), (c.events, c.head_seq)))
        .collect();
    for replica in ["gw-a", "gw-b"] {
        let n = events.iter().filter(|e| e.chain == replica).count() as u64;
        let (checked, head) = chains
            .get(replica)
            .copied()
            .unwrap_or_else(|| panic!("{replica} missing from {report:#?}"));
        assert_eq!(checked, n, "{replica}");
        assert_eq!(head, i64::try_from(n).unwrap(), "{replica}: seq gap");
    }
    assert_eq!(report.events_checked as usize, events.len());

    // And through the binary, with a config file pointing at the same database.
    let cfg_path = b.dir.path().join("pg.toml");
    std::fs::write(
        &cfg_path,
        b.config_text("127.0.0.1:0", Some(&db.url), Some("gw-a")),
    )
    .unwrap();
    let (code, out) = cli_verify(&cfg_path).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain gw-a: ok") && out.contains("chain gw-b: ok"),
        "{out}"
    );

    eprintln!(
        "postgres figures: {n_jobs} actions through 2 replicas ({CONCURRENCY} concurrent) in \
         {burst:?} ({:.0}/s), outcomes {outcomes_seen:?}, events={}, chains={chains:?}, \
         total {:?}",
        n_jobs as f64 / burst.as_secs_f64(),
        events.len(),
        t_start.elapsed()
    );
}
