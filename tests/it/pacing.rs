//! Pacing (issue 12, part 8): the gateway waits for ARM's tokens instead of being refused.
//! Gateway ↔ real AVD adapter ↔ ARM emulator with its token buckets on, over loopback; the
//! emulator counts the 429s it answered, so a gateway that did not pace shows up there.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp};
use serde_json::{Value, json};
use sessiongate::{
    config::{Config, ProviderConfig},
    emulator::arm::{ArmOp, ThrottleSettings},
    upstream::pace::{ArmPacing, BucketShape},
};
use std::time::{Duration, Instant};

fn shape(size: u32, refill_per_sec: u32) -> BucketShape {
    BucketShape {
        size,
        refill_per_sec,
    }
}

/// Reads plentiful on both sides; deletes as given (gateway side).
fn gateway_pacing(c: &mut Config, deletes: BucketShape, honour: bool) {
    c.pacing.arm = ArmPacing {
        reads: shape(10_000, 10_000),
        deletes,
        honour_remaining_headers: honour,
        ..ArmPacing::default()
    };
}

fn emulator_buckets(app: &TestApp, delete_capacity: u32, delete_refill_per_sec: u32) {
    app.arm().set_throttling(Some(ThrottleSettings {
        read_capacity: 10_000,
        read_refill_per_sec: 10_000,
        delete_capacity,
        delete_refill_per_sec,
        ..ThrottleSettings::default()
    }));
}

/// Adds `n` sessions spread over the demo ARM pool's hosts; returns bulk targets.
fn seed(app: &TestApp, prefix: &str, n: usize) -> Vec<Value> {
    let arm = app.arm();
    let hosts = arm.hosts(ARM_POOL);
    (0..n)
        .map(|i| {
            let host = &hosts[i % hosts.len()];
            let id = arm
                .add_session(ARM_POOL, host, &format!("{prefix}{i}@contoso.com"))
                .expect("add session");
            json!({"host": host, "id": id.to_string()})
        })
        .collect()
}

async fn bulk_logoff(app: &TestApp, targets: Vec<Value>) -> Value {
    let r = app
        .post(
            &app.keys.operator,
            &format!("{}/hostpools/{AVD_POOL}/sessions/logoff", app.url),
            Some(json!({"targets": targets, "reason": "pacing test"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("bulk json")
}

/// A burst three times the bucket goes through at the bucket's pace: every item done, no 429
/// answered by the emulator, and the run takes about (burst - bucket) / refill.
#[tokio::test]
async fn a_burst_larger_than_the_bucket_is_paced_with_no_429_and_no_failed_item() {
    let app = TestApp::start_with(|c| gateway_pacing(c, shape(20, 20), true)).await;
    emulator_buckets(&app, 20, 20);
    let targets = seed(&app, "burst", 60);
    let started = Instant::now();
    let v = bulk_logoff(&app, targets).await;
    let took = started.elapsed();
    assert_eq!(v["summary"]["done"], 60, "{}", v["summary"]);
    assert_eq!(v["summary"]["failed"], 0, "{}", v["summary"]);
    assert_eq!(
        app.arm().throttled_answers(),
        0,
        "the gateway never ran dry"
    );
    assert_eq!(app.arm().calls(ArmOp::Logoff), 60);
    // (60 - 20) / 20 = 2 s at best: the gateway did wait for tokens.
    assert!(took >= Duration::from_millis(1_800), "{took:?}");
}

/// The emulator's bucket is smaller than the gateway believes (as when another client spends
/// the same subscription's tokens): believing `x-ms-ratelimit-remaining-subscription-deletes`
/// avoids every 429; ignoring it (the control) runs into them.
#[tokio::test]
async fn the_remaining_headers_are_believed_over_the_local_count() {
    for honour in [true, false] {
        let app = TestApp::start_with(|c| {
            gateway_pacing(c, shape(50, 5), honour);
            c.fleet.pool_concurrency = 1;
        })
        .await;
        emulator_buckets(&app, 4, 5);
        let targets = seed(&app, "hdr", 12);
        let v = bulk_logoff(&app, targets).await;
        assert_eq!(v["summary"]["done"], 12, "{}", v["summary"]);
        assert_eq!(v["summary"]["failed"], 0, "{}", v["summary"]);
        let throttled = app.arm().throttled_answers();
        if honour {
            assert_eq!(throttled, 0, "paced by the remaining-headers");
        } else {
            assert!(
                throttled > 0,
                "the control must run into the smaller bucket"
            );
        }
    }
}

/// A token that cannot come within the call's retry budget is not waited for: the item fails
/// at once with `upstream_throttled`, the others are done, nothing is refused upstream.
#[tokio::test]
async fn waiting_for_a_token_respects_the_deadline() {
    let app = TestApp::start_with(|c| {
        gateway_pacing(c, shape(1, 1), true);
        for p in &mut c.pools {
            if let ProviderConfig::Avd(a) = &mut p.provider {
                a.retry_budget_secs = 1;
            }
        }
    })
    .await;
    app.arm().set_throttling(None);
    let targets = seed(&app, "late", 5);
    let started = Instant::now();
    let v = bulk_logoff(&app, targets).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let failed = v["summary"]["failed"].as_u64().unwrap();
    let done = v["summary"]["done"].as_u64().unwrap();
    assert!(done >= 1 && failed >= 3, "{}", v["summary"]);
    for r in v["results"].as_array().unwrap() {
        if r["outcome"] == "failed" {
            assert_eq!(r["error"]["code"], "upstream_throttled", "{r}");
        }
    }
    assert_eq!(app.arm().calls(ArmOp::Logoff), done);
}

/// A pool may override `[pacing.arm]`; two pools sharing a subscription and credential must
/// agree on the buckets they share, and the error names the key.
#[tokio::test]
async fn pools_sharing_buckets_must_agree_and_the_error_names_the_key() {
    let app = TestApp::start().await;
    let mut c = app.config.clone();
    let avd = c
        .pools
        .iter()
        .find(|p| matches!(p.provider, ProviderConfig::Avd(_)))
        .cloned()
        .expect("an AVD pool");
    let mut twin = avd.clone();
    twin.name = sessiongate::domain::PoolName::parse("avd-twin").expect("pool name");
    if let ProviderConfig::Avd(a) = &mut twin.provider {
        a.pacing.deletes = Some(shape(5, 5));
    }
    c.pools.push(twin);
    let e = c.validate().expect_err("disagreeing pools").to_string();
    assert!(e.contains("pools[avd-twin].pacing"), "{e}");
    if let Some(ProviderConfig::Avd(a)) = c.pools.last_mut().map(|p| &mut p.provider) {
        a.pacing.deletes = None;
    }
    c.validate().expect("agreeing pools share their buckets");
    let bad = Config::from_toml_with_env(
        "[pacing.arm.writes]\nsize = 0\nrefill_per_sec = 1\n",
        std::iter::empty(),
    )
    .expect("parses");
    let e = bad.validate().expect_err("size 0").to_string();
    assert!(e.contains("pacing.arm.writes.size"), "{e}");
}

/// `fleet.pool_concurrency` bounds the logoffs in flight on one pool: with each taking 150 ms
/// at the emulator, a bulk call of 12 never has more than 3 at once, and does use the 3.
#[tokio::test]
async fn pool_concurrency_bounds_the_items_in_flight() {
    let app = TestApp::start_with(|c| {
        c.fleet.pool_concurrency = 3;
    })
    .await;
    app.arm().set_throttling(None);
    app.arm().set_delete_delay(150);
    let targets = seed(&app, "conc", 12);
    let t0 = std::time::Instant::now();
    let v = bulk_logoff(&app, targets).await;
    let took = t0.elapsed();
    assert_eq!(v["summary"]["done"], 12, "{}", v["summary"]);
    assert_eq!(
        app.arm().peak_deletes_in_flight(),
        3,
        "at most 3 at once, and 3 used"
    );
    // 12 logoffs of 150 ms, 3 at a time: at least 4 rounds.
    assert!(took >= std::time::Duration::from_millis(600), "{took:?}");
}
