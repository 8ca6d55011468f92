//! Durable jobs over loopback (SQLite): `?async=true` and the sync limit answer 202 with a job
//! that runs to completion; `GET /jobs` filters and pages; cancel leaves items not started
//! untouched upstream (counted in the ARM emulator); who may see and cancel a job.
//! Run: `cargo nextest run --test it fleet_jobs::`

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use crate::support::header;
use serde_json::{Value, json};
use sessiongate::emulator::{arm::ArmOp, common::FaultSettings};
use std::time::{Duration, Instant};

const ENDED: [&str; 4] = ["succeeded", "completed_with_errors", "failed", "cancelled"];

/// `n` fresh sessions on the demo ARM pool, as bulk targets.
pub fn seed(app: &TestApp, prefix: &str, n: usize) -> Vec<Value> {
    let arm = app.arm();
    let hosts = arm.hosts(ARM_POOL);
    (0..n)
        .map(|i| {
            let host = hosts[i % hosts.len()].clone();
            let id = arm
                .add_session(ARM_POOL, &host, &format!("{prefix}{i}@contoso.com"))
                .expect("add session");
            json!({"host": host, "id": id.to_string()})
        })
        .collect()
}

pub fn bulk_url(app: &TestApp, action: &str, query: &str) -> String {
    format!("{}/hostpools/{AVD_POOL}/sessions/{action}{query}", app.url)
}

/// Polls `GET /jobs/{id}` until `done(job)` holds (generous bound: a loaded 2-core machine).
pub async fn wait_job(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let r = app.get(key, &format!("/jobs/{id}?limit=1000")).await;
        assert_eq!(r.status(), 200);
        let j: Value = r.json().await.unwrap();
        if done(&j) {
            return j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job did not get there: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ended(j: &Value) -> bool {
    ENDED.contains(&j["state"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn async_bulk_answers_202_and_runs_to_completion() {
    let app = TestApp::start().await;
    let targets = seed(&app, "job", 5);
    let before = app.arm().calls(ArmOp::Logoff);
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "logoff", "?async=true"),
            Some(json!({"targets": targets, "reason": "job test"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let loc = header(&r, "location").expect("Location");
    let j: Value = r.json().await.unwrap();
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(loc, format!("/jobs/{id}"));
    assert_eq!(j["kind"], "pool.logoff");
    assert_eq!(j["counts"]["total"], 5);
    assert!(j["created"].is_string());

    let j = wait_job(&app, &app.keys.operator, &id, ended).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["counts"]["done"], 5, "{j}");
    assert_eq!(j["counts"]["pending"], 0);
    assert!(j["started"].is_string() && j["finished"].is_string(), "{j}");
    let items = j["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    for (i, (it, t)) in items.iter().zip(&targets).enumerate() {
        assert_eq!(it["index"], i);
        assert_eq!(it["state"], "finished");
        assert_eq!(it["target"]["host"], t["host"]);
        assert_eq!(it["result"]["outcome"], "done", "{it}");
    }
    assert_eq!(app.arm().calls(ArmOp::Logoff) - before, 5);

    // Each item was audited with the job id as its batch id.
    let a: Value = app
        .get(&app.keys.auditor, "/audit?outcome=pending&limit=100")
        .await
        .json()
        .await
        .unwrap();
    let linked = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["params"]["batch_id"] == id.as_str())
        .count();
    assert_eq!(linked, 5, "{a}");

    // Who sees it: creator, admin, auditor; a reader gets 404 (not revealed).
    for k in [&app.keys.admin, &app.keys.auditor] {
        assert_eq!(app.get(k, &format!("/jobs/{id}")).await.status(), 200);
    }
    problem(
        app.get(&app.keys.reader, &format!("/jobs/{id}")).await,
        404,
        "job_not_found",
    )
    .await;
    // Items page by cursor.
    let p1: Value = app
        .get(&app.keys.operator, &format!("/jobs/{id}?limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let c = p1["next_cursor"].as_str().expect("next cursor");
    let p2: Value = app
        .get(
            &app.keys.operator,
            &format!("/jobs/{id}?limit=10&cursor={c}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p2["items"][0]["index"], 2);
    assert!(p2.get("next_cursor").is_none());
    // A finished job cannot be cancelled; an unknown one is 404; a bad id 400.
    let url = format!("{}/jobs/{id}/cancel", app.url);
    problem(
        app.post(&app.keys.operator, &url, None).await,
        409,
        "job_finished",
    )
    .await;
    let url = format!("{}/jobs/{}/cancel", app.url, uuid::Uuid::now_v7());
    problem(
        app.post(&app.keys.operator, &url, None).await,
        404,
        "job_not_found",
    )
    .await;
    problem(
        app.get(&app.keys.operator, "/jobs/not-a-uuid").await,
        400,
        "invalid_path",
    )
    .await;
}

#[tokio::test]
async fn more_targets_than_the_sync_limit_run_as_a_job_and_bad_targets_keep_their_place() {
    let app = TestApp::start_with(|c| c.fleet.sync_limit = 2).await;
    let mut targets = seed(&app, "lim", 2);
    targets.insert(1, json!({"host": "no such host!", "id": "1"}));
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "disconnect", ""),
            Some(json!({"targets": targets})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let j: Value = r.json().await.unwrap();
    let id = j["id"].as_str().unwrap().to_string();
    let j = wait_job(&app, &app.keys.operator, &id, ended).await;
    assert_eq!(j["state"], "completed_with_errors", "{j}");
    assert_eq!(j["counts"]["done"], 2);
    assert_eq!(j["counts"]["failed"], 1);
    assert_eq!(
        j["items"][1]["result"]["error"]["code"], "invalid_host_name",
        "{j}"
    );
    // At or under the limit: answered at once.
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "disconnect", "?async=false"),
            Some(json!({"targets": &targets[..2]})),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn job_list_filters_and_pages_newest_first() {
    let app = TestApp::start().await;
    let t = seed(&app, "list", 1);
    let mut mine = Vec::new();
    for action in ["logoff", "disconnect", "disconnect"] {
        let r = app
            .post(
                &app.keys.operator,
                &bulk_url(&app, action, "?async=true"),
                Some(json!({"targets": t, "dry_run": true})),
            )
            .await;
        assert_eq!(r.status(), 202);
        let j: Value = r.json().await.unwrap();
        mine.push(j["id"].as_str().unwrap().to_string());
    }
    let r = app
        .post(
            &app.keys.admin,
            &bulk_url(&app, "logoff", "?async=true"),
            Some(json!({"targets": t, "dry_run": true})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let admins: Value = r.json().await.unwrap();
    for id in &mine {
        wait_job(&app, &app.keys.operator, id, ended).await;
    }
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The operator sees its own, newest first.
    let l: Value = app
        .get(&app.keys.operator, "/jobs")
        .await
        .json()
        .await
        .unwrap();
    let mut want = mine.clone();
    want.reverse();
    assert_eq!(ids(&l), want);
    // Admin and auditor see all four; created_by filters.
    for k in [&app.keys.admin, &app.keys.auditor] {
        let l: Value = app.get(k, "/jobs").await.json().await.unwrap();
        assert_eq!(ids(&l).len(), 4, "{l}");
    }
    let creator = admins["created_by"].as_str().unwrap();
    let l: Value = app
        .get(&app.keys.admin, &format!("/jobs?created_by={creator}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&l), vec![admins["id"].as_str().unwrap().to_string()]);
    // Another's jobs are not listed to the operator even when asked for.
    let l: Value = app
        .get(&app.keys.operator, &format!("/jobs?created_by={creator}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(ids(&l).is_empty());
    // kind and state filters.
    let l: Value = app
        .get(
            &app.keys.operator,
            "/jobs?kind=pool.disconnect&state=succeeded",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&l), vec![mine[2].clone(), mine[1].clone()]);
    // Paging.
    let p1: Value = app
        .get(&app.keys.operator, "/jobs?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&p1), vec![mine[2].clone(), mine[1].clone()]);
    let c = p1["next_cursor"].as_str().expect("cursor");
    let p2: Value = app
        .get(&app.keys.operator, &format!("/jobs?limit=2&cursor={c}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&p2), vec![mine[0].clone()]);
    assert!(p2.get("next_cursor").is_none());
    // Bad input.
    for q in [
        "/jobs?nope=1",
        "/jobs?state=done",
        "/jobs?limit=0",
        "/jobs?cursor=x",
    ] {
        problem(app.get(&app.keys.operator, q).await, 400, "invalid_query").await;
    }
}

#[tokio::test]
async fn cancel_stops_items_not_started_and_counts_upstream_calls() {
    let app = TestApp::start_with(|c| c.jobs.concurrency = 1).await;
    let targets = seed(&app, "cancel", 8);
    let arm = app.arm();
    arm.set_faults(FaultSettings {
        latency_ms: 150,
        ..Default::default()
    });
    let before = arm.calls(ArmOp::Logoff);
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "logoff", "?async=true"),
            Some(json!({"targets": targets})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_job(&app, &app.keys.operator, &id, |j| {
        j["counts"]["done"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    // An auditor sees but may not cancel; a reader does not see it.
    let url = format!("{}/jobs/{id}/cancel", app.url);
    problem(
        app.post(&app.keys.auditor, &url, None).await,
        403,
        "forbidden",
    )
    .await;
    problem(
        app.post(&app.keys.reader, &url, None).await,
        404,
        "job_not_found",
    )
    .await;
    let r = app.post(&app.keys.operator, &url, None).await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["cancel_requested"], true);
    let j = wait_job(&app, &app.keys.operator, &id, ended).await;
    arm.set_faults(FaultSettings::default());
    assert_eq!(j["state"], "cancelled", "{j}");
    let n = &j["counts"];
    let ran = n["done"].as_u64().unwrap() + n["already_gone"].as_u64().unwrap();
    assert!(ran >= 1 && n["cancelled"].as_u64().unwrap() >= 1, "{j}");
    assert_eq!(ran + n["cancelled"].as_u64().unwrap(), 8, "{j}");
    // Upstream saw exactly the items that ran; the cancelled ones' sessions still exist.
    assert_eq!(arm.calls(ArmOp::Logoff) - before, ran, "{j}");
    let left: Vec<(String, u32)> = arm
        .sessions(ARM_POOL)
        .into_iter()
        .map(|s| (s.host, s.id))
        .collect();
    for it in j["items"].as_array().unwrap() {
        let t = (
            it["target"]["host"].as_str().unwrap().to_string(),
            it["target"]["session_id"].as_u64().unwrap() as u32,
        );
        match it["state"].as_str().unwrap() {
            "cancelled" => {
                assert!(left.contains(&t), "{it}");
                assert!(it.get("result").is_none(), "{it}");
            }
            "finished" => assert!(!left.contains(&t), "{it}"),
            other => panic!("item state {other}: {it}"),
        }
    }
    // Cancelling again: the job has ended.
    problem(
        app.post(&app.keys.operator, &url, None).await,
        409,
        "job_finished",
    )
    .await;
}

/// The user-everywhere and whole-host routes run as jobs too (`?async=true`): the job's kind
/// names the route, its items are the sessions found, and each is logged off upstream once. A
/// user with no session is answered at once (200, no job).
#[tokio::test]
async fn user_and_host_calls_run_as_jobs_with_async() {
    let app = TestApp::start().await;
    let arm = app.arm();
    let hosts = arm.hosts(ARM_POOL);
    for h in hosts.iter().take(2) {
        arm.add_session(ARM_POOL, h, "everywhere@contoso.com")
            .expect("add session");
    }
    let before = arm.calls(ArmOp::Logoff);
    let r = app
        .post(
            &app.keys.operator,
            &format!("{}/users/everywhere@contoso.com/logoff?async=true", app.url),
            Some(json!({"reason": "leaver"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["kind"], "user.logoff", "{j}");
    assert_eq!(j["counts"]["total"], 2, "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    let j = wait_job(&app, &app.keys.operator, &id, ended).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["counts"]["done"], 2, "{j}");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);

    // Nobody to act on: answered at once, no job.
    let r = app
        .post(
            &app.keys.operator,
            &format!("{}/users/nobody@contoso.com/logoff?async=true", app.url),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 0, "{v}");

    // Whole host, by ids, as a job.
    let host = hosts[0].clone();
    let a = arm.add_session(ARM_POOL, &host, "h1@contoso.com").unwrap();
    let b = arm.add_session(ARM_POOL, &host, "h2@contoso.com").unwrap();
    let r = app
        .post(
            &app.keys.operator,
            &format!(
                "{}/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/disconnect?async=true",
                app.url
            ),
            Some(json!({"ids": [a.to_string(), b.to_string()]})),
        )
        .await;
    assert_eq!(r.status(), 202);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["kind"], "host.disconnect", "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    let j = wait_job(&app, &app.keys.operator, &id, ended).await;
    assert_eq!(j["counts"]["done"], 2, "{j}");

    // Jobs by state in the metrics: the two jobs this process ran, none running now.
    let m = app
        .get(&app.keys.auditor, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l == "sessiongate_jobs_finished_total{state=\"succeeded\"} 2"),
        "{m}"
    );
    assert!(m.lines().any(|l| l == "sessiongate_jobs_running 0"), "{m}");
}
