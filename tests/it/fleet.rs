//! Fleet routes (issue 12): bulk on a pool, whole host, one user everywhere — over loopback
//! against the in-tree emulators, counting upstream calls there.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use serde_json::{Value, json};
use sessiongate::{
    config::ProviderConfig,
    emulator::{
        arm::ArmOp,
        winrm::{EmuSession, HostMode},
    },
};

const PROTECTED_UPN: &str = "admin.kim@contoso.com";
const SERVICE_UPN: &str = "svc-sessiongate@contoso.com";

fn bulk_url(app: &TestApp, action: &str) -> String {
    format!("{}/hostpools/{AVD_POOL}/sessions/{action}", app.url)
}

fn host_url(app: &TestApp, host: &str, action: &str) -> String {
    format!(
        "{}/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{action}",
        app.url
    )
}

async fn ok_json(r: reqwest::Response) -> Value {
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 200, "{v}");
    v
}

/// The audit events of one request.
async fn events_of(app: &TestApp, rid: &str) -> Vec<Value> {
    let v: Value = app
        .get(
            &app.keys.auditor,
            &format!("/audit?request_id={rid}&limit=1000"),
        )
        .await
        .json()
        .await
        .unwrap();
    v["events"].as_array().unwrap().clone()
}

fn outcomes(v: &Value) -> Vec<(String, String)> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let code = r["error"]["code"].as_str().unwrap_or("").to_string();
            (r["outcome"].as_str().unwrap().to_string(), code)
        })
        .collect()
}

#[tokio::test]
async fn bulk_answers_each_target_in_order_with_its_own_audited_events() {
    let app = TestApp::start().await;
    let arm = app.arm();
    let sessions = arm.sessions(ARM_POOL);
    let host = sessions[0].host.clone();
    let (a, b) = (&sessions[0], &sessions[1]);
    // A session that has already ended (no such id on the host).
    let gone = 4000;
    assert!(!arm.sessions(ARM_POOL).iter().any(|s| s.id == gone));
    let protected = arm.add_session(ARM_POOL, &host, PROTECTED_UPN).unwrap();
    let service = arm.add_session(ARM_POOL, &host, SERVICE_UPN).unwrap();
    let body = json!({"reason": "bulk test", "ticket": "INC7", "targets": [
        {"host": a.host, "id": a.id},
        {"host": host, "id": gone.to_string()},
        {"host": b.host, "id": b.id, "expected_user": "someone.else@contoso.com"},
        {"host": host, "id": protected},
        {"host": host, "id": service},
        {"host": "nohost.contoso.test", "id": 2},
        {"host": host, "id": "not-an-id"},
    ]});
    let r = app
        .post(&app.keys.operator, &bulk_url(&app, "logoff"), Some(body))
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v = ok_json(r).await;
    let got = outcomes(&v);
    let want = [
        ("done", ""),
        ("already_gone", ""),
        ("refused", "user_mismatch"),
        ("refused", "session_protected"),
        ("refused", "session_protected"),
        ("failed", "host_not_found"),
        ("failed", "invalid_session_id"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(o, c)| (o.to_string(), c.to_string()))
            .collect::<Vec<_>>(),
        "{v}"
    );
    assert_eq!(
        v["summary"],
        json!({"done": 1, "already_gone": 1, "would_do": 0, "refused": 3, "failed": 2})
    );
    let res = v["results"].as_array().unwrap();
    assert_eq!(res[0]["target"]["session_id"], a.id);
    assert_eq!(res[0]["user"], a.user.as_str());
    assert_eq!(res[5]["target"]["host"], "nohost.contoso.test");
    assert_eq!(res[5]["audited"], false);
    assert_eq!(res[3]["audited"], true);
    // Exactly one logoff reached ARM; the refused sessions are still there.
    assert_eq!(arm.calls(ArmOp::Logoff), 1);
    let left: Vec<u32> = arm
        .sessions(ARM_POOL)
        .iter()
        .filter(|s| s.host == host)
        .map(|s| s.id)
        .collect();
    assert!(left.contains(&protected) && left.contains(&service));
    assert!(
        !arm.sessions(ARM_POOL)
            .iter()
            .any(|s| s.id == a.id && s.host == a.host)
    );

    // Every audited item has its own intent and outcome, linked by the batch id; the call's
    // own request record carries it too.
    let batch = v["batch_id"].as_str().unwrap();
    let evs = events_of(&app, &rid).await;
    let of = |kind: &str| -> Vec<&Value> { evs.iter().filter(|e| e["kind"] == kind).collect() };
    assert_eq!(of("intent").len(), 5, "{evs:?}");
    assert_eq!(of("outcome").len(), 5, "{evs:?}");
    for e in of("intent").into_iter().chain(of("outcome")) {
        assert_eq!(e["params"]["batch_id"], batch, "{e}");
        assert_eq!(e["params"]["ticket"], "INC7", "{e}");
    }
    let req = of("request");
    assert_eq!(req.len(), 1, "{evs:?}");
    assert_eq!(req[0]["params"]["batch_id"], batch);
    let refused: Vec<&str> = of("outcome")
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .map(|e| e["error_code"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
}

#[tokio::test]
async fn bulk_dry_run_resolves_targets_and_sends_nothing_upstream() {
    let app = TestApp::start().await;
    let arm = app.arm();
    let s = arm.sessions(ARM_POOL);
    let before = s.len();
    let body = json!({"dry_run": true, "targets": [
        {"host": s[0].host, "id": s[0].id}, {"host": s[1].host, "id": s[1].id}]});
    for action in ["logoff", "disconnect"] {
        let v = ok_json(
            app.post(
                &app.keys.operator,
                &bulk_url(&app, action),
                Some(body.clone()),
            )
            .await,
        )
        .await;
        assert_eq!(v["summary"]["would_do"], 2, "{v}");
        for (r, want) in v["results"].as_array().unwrap().iter().zip(&s) {
            assert_eq!(r["outcome"], "would_do");
            assert_eq!(r["dry_run"], true);
            assert_eq!(r["target"]["host"], want.host.as_str());
            assert_eq!(r["user"], want.user.as_str());
            assert!(r["state"].is_string(), "{r}");
        }
    }
    let v = ok_json(
        app.post(
            &app.keys.operator,
            &bulk_url(&app, "message"),
            Some(json!({"title": "t", "body": "b", "dry_run": true,
                "targets": [{"host": s[0].host, "id": s[0].id}]})),
        )
        .await,
    )
    .await;
    assert_eq!(v["summary"]["would_do"], 1, "{v}");
    for op in [ArmOp::Logoff, ArmOp::Disconnect, ArmOp::SendMessage] {
        assert_eq!(arm.calls(op), 0, "{op:?}");
    }
    assert_eq!(arm.sessions(ARM_POOL).len(), before);
    assert!(arm.messages().is_empty());
}

#[tokio::test]
async fn bulk_refuses_bad_calls_as_a_whole() {
    let app = TestApp::start_with(|c| c.fleet.max_targets = 2).await;
    let s = app.arm().sessions(ARM_POOL);
    let t = |i: usize| json!({"host": s[i].host, "id": s[i].id});
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "logoff"),
            Some(json!({"targets": [t(0), t(1), t(2)]})),
        )
        .await;
    problem(r, 422, "too_many_targets").await;
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "logoff"),
            Some(json!({"targets": []})),
        )
        .await;
    problem(r, 422, "invalid_body").await;
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "message"),
            Some(json!({"targets": [t(0)], "title": "only a title"})),
        )
        .await;
    problem(r, 422, "invalid_body").await;
    let r = app
        .post(
            &app.keys.operator,
            &bulk_url(&app, "reboot"),
            Some(json!({"targets": [t(0)]})),
        )
        .await;
    problem(r, 404, "route_not_found").await;
    let r = app
        .post(
            &app.keys.operator,
            &format!("{}/hostpools/nope/sessions/logoff", app.url),
            Some(json!({"targets": [t(0)]})),
        )
        .await;
    problem(r, 404, "pool_not_found").await;
    // A reader may not act in the pool: the call is refused as a whole, and audited.
    let r = app
        .post(
            &app.keys.reader,
            &bulk_url(&app, "logoff"),
            Some(json!({"targets": [t(0)]})),
        )
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    problem(r, 403, "forbidden").await;
    let evs = events_of(&app, &rid).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["outcome"], "denied");
    // The message reaches every target.
    let v = ok_json(
        app.post(
            &app.keys.operator,
            &bulk_url(&app, "message"),
            Some(json!({"targets": [t(0), t(1)], "title": "Maintenance", "body": "at noon"})),
        )
        .await,
    )
    .await;
    assert_eq!(v["summary"]["done"], 2, "{v}");
    assert_eq!(app.arm().messages().len(), 2);
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);
}

#[tokio::test]
async fn a_fleet_call_is_rate_checked_once_not_per_item() {
    let app = TestApp::start_with(|c| {
        c.auth.rate_limit.actions_per_minute = 1;
        c.auth.rate_limit.burst = 2;
    })
    .await;
    let s = app.arm().sessions(ARM_POOL);
    let targets: Vec<Value> = s
        .iter()
        .take(5)
        .map(|x| json!({"host": x.host, "id": x.id}))
        .collect();
    let body = json!({"dry_run": true, "targets": targets});
    for _ in 0..2 {
        let v = ok_json(
            app.post(
                &app.keys.operator,
                &bulk_url(&app, "logoff"),
                Some(body.clone()),
            )
            .await,
        )
        .await;
        assert_eq!(v["summary"]["would_do"], 5, "{v}");
    }
    let r = app
        .post(&app.keys.operator, &bulk_url(&app, "logoff"), Some(body))
        .await;
    problem(r, 429, "rate_limited").await;
}

#[tokio::test]
async fn whole_host_by_ids_and_all_skips_protected_and_never_touches_the_gateway() {
    let app = TestApp::start().await;
    let arm = app.arm();
    let host = arm.sessions(ARM_POOL)[0].host.clone();
    let protected = arm.add_session(ARM_POOL, &host, PROTECTED_UPN).unwrap();
    let service = arm.add_session(ARM_POOL, &host, SERVICE_UPN).unwrap();
    let on_host = |arm: &sessiongate::emulator::arm::ArmState| -> Vec<(u32, String)> {
        arm.sessions(ARM_POOL)
            .into_iter()
            .filter(|s| s.host == host)
            .map(|s| (s.id, s.user))
            .collect()
    };
    let plain: Vec<u32> = on_host(&arm)
        .into_iter()
        .filter(|(_, u)| u != PROTECTED_UPN && u != SERVICE_UPN)
        .map(|(i, _)| i)
        .collect();
    assert!(plain.len() >= 2, "{plain:?}");

    // A reader may not act on the host at all.
    let r = app
        .post(
            &app.keys.reader,
            &host_url(&app, &host, "disconnect"),
            Some(json!({"ids": [plain[0]]})),
        )
        .await;
    problem(r, 403, "forbidden").await;
    // ids: an operator disconnects two sessions; a bad id is answered in its place.
    let v = ok_json(
        app.post(
            &app.keys.operator,
            &host_url(&app, &host, "disconnect"),
            Some(json!({"ids": [plain[0], plain[1].to_string(), "x"]})),
        )
        .await,
    )
    .await;
    assert_eq!(
        outcomes(&v),
        [
            ("done".into(), "".into()),
            ("done".into(), "".into()),
            ("failed".into(), "invalid_session_id".into())
        ]
    );
    assert_eq!(arm.calls(ArmOp::Disconnect), 2);

    // all: needs admin (a denial, audited).
    let r = app
        .post(
            &app.keys.operator,
            &host_url(&app, &host, "logoff"),
            Some(json!({"all": true})),
        )
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    problem(r, 403, "forbidden").await;
    let evs = events_of(&app, &rid).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["outcome"], "denied");
    assert_eq!(arm.calls(ArmOp::Logoff), 0);
    // Neither ids nor all, or both: refused.
    for b in [
        json!({}),
        json!({"ids": [1], "all": true}),
        json!({"all": false}),
    ] {
        let r = app
            .post(&app.keys.admin, &host_url(&app, &host, "logoff"), Some(b))
            .await;
        problem(r, 422, "invalid_body").await;
    }

    // all, as admin: protected skipped and reported, the gateway's account refused, the rest done.
    let total = on_host(&arm).len();
    let v = ok_json(
        app.post(
            &app.keys.admin,
            &host_url(&app, &host, "logoff"),
            Some(json!({"all": true, "reason": "host drain"})),
        )
        .await,
    )
    .await;
    assert_eq!(v["results"].as_array().unwrap().len(), total, "{v}");
    assert_eq!(v["summary"]["done"], total - 2, "{v}");
    assert_eq!(v["summary"]["refused"], 2, "{v}");
    for r in v["results"].as_array().unwrap() {
        let id = r["target"]["session_id"].as_u64().unwrap() as u32;
        if id == protected || id == service {
            assert_eq!(r["outcome"], "refused", "{r}");
            assert_eq!(r["error"]["code"], "session_protected", "{r}");
        }
    }
    let left: Vec<u32> = on_host(&arm).into_iter().map(|(i, _)| i).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&protected) && left.contains(&service));

    // include_protected, as admin: the protected session goes; the gateway's never does.
    let v = ok_json(
        app.post(
            &app.keys.admin,
            &host_url(&app, &host, "logoff"),
            Some(json!({"all": true, "include_protected": true})),
        )
        .await,
    )
    .await;
    assert_eq!(v["summary"]["done"], 1, "{v}");
    assert_eq!(v["summary"]["refused"], 1, "{v}");
    let left: Vec<u32> = on_host(&arm).into_iter().map(|(i, _)| i).collect();
    assert_eq!(left, [service]);

    // include_protected means nothing to an operator: the pipeline still refuses.
    let p2 = arm.add_session(ARM_POOL, &host, PROTECTED_UPN).unwrap();
    let v = ok_json(
        app.post(
            &app.keys.operator,
            &host_url(&app, &host, "logoff"),
            Some(json!({"ids": [p2], "include_protected": true})),
        )
        .await,
    )
    .await;
    assert_eq!(
        outcomes(&v),
        [("refused".into(), "session_protected".into())]
    );

    // message: title and body required; unknown host 404.
    let r = app
        .post(
            &app.keys.admin,
            &host_url(&app, &host, "message"),
            Some(json!({"ids": [p2]})),
        )
        .await;
    problem(r, 422, "invalid_body").await;
    let v = ok_json(
        app.post(
            &app.keys.admin,
            &host_url(&app, &host, "message"),
            Some(json!({"all": true, "title": "t", "body": "b"})),
        )
        .await,
    )
    .await;
    assert_eq!(v["summary"]["done"], 2, "{v}");
    let r = app
        .post(
            &app.keys.admin,
            &host_url(&app, "nohost.contoso.test", "logoff"),
            Some(json!({"all": true})),
        )
        .await;
    problem(r, 404, "host_not_found").await;
}

const RDS: &str = "rds-demo";
const RDS_HOSTS: [&str; 3] = [
    "rdsh-01.contoso.test",
    "rdsh-02.contoso.test",
    "rdsh-03.contoso.test",
];

#[tokio::test]
async fn one_user_everywhere_lists_and_acts_across_pools_with_unreachable_listed() {
    let app = TestApp::start_with(|c| {
        for p in &mut c.pools {
            if p.name.as_str() == RDS
                && let ProviderConfig::Rds(r) = &mut p.provider
            {
                // Suffixes match case-insensitively.
                r.upn_domains.clear();
                r.upn_domains.insert("Contoso.COM".into(), "CONTOSO".into());
            }
        }
    })
    .await;
    let upn = "dana.fleet@contoso.com";
    let arm = app.arm();
    let avd_host = arm.sessions(ARM_POOL)[0].host.clone();
    let avd_id = arm.add_session(ARM_POOL, &avd_host, upn).unwrap();
    let classic = app.backends.classic.state();
    let classic_host = classic.hosts(crate::support::classic::POOL)[0].clone();
    let classic_id = classic
        .add_session(crate::support::classic::POOL, &classic_host, upn)
        .unwrap();
    let rds = app.backends.rds.state();
    rds.add_session(
        RDS_HOSTS[0],
        77,
        EmuSession::user("dana.fleet", "CONTOSO", false),
    );
    // Someone else with the same name in another domain is not matched.
    rds.add_session(
        RDS_HOSTS[1],
        78,
        EmuSession::user("dana.fleet", "FABRIKAM", true),
    );
    rds.set_mode(
        RDS_HOSTS[2],
        HostMode {
            force_win32: Some(1722),
            ..HostMode::default()
        },
    );

    let v = ok_json(
        app.get(
            &app.keys.reader,
            &format!("/users/{}/sessions", upn.to_uppercase()),
        )
        .await,
    )
    .await;
    let found: Vec<(String, u64)> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["pool"].as_str().unwrap().to_string(),
                s["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(found.contains(&(AVD_POOL.into(), avd_id as u64)), "{v}");
    assert!(
        found.contains(&("classic-demo".into(), classic_id as u64)),
        "{v}"
    );
    assert!(found.contains(&(RDS.into(), 77)), "{v}");
    assert_eq!(found.len(), 3, "{v}");
    let on_prem = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pool"] == RDS)
        .unwrap();
    assert_eq!(on_prem["ad_user"], "CONTOSO\\dana.fleet");
    assert_eq!(on_prem["upn"], upn.to_uppercase());
    assert_eq!(
        v["unreachable"],
        json!([{"pool": RDS, "host": RDS_HOSTS[2], "code": "host_unreachable",
                "detail": v["unreachable"][0]["detail"]}])
    );

    // Dry run: the blast radius, nothing upstream.
    let url = format!("{}/users/{upn}/logoff", app.url);
    let v = ok_json(
        app.post(&app.keys.operator, &url, Some(json!({"dry_run": true})))
            .await,
    )
    .await;
    assert_eq!(v["summary"]["would_do"], 3, "{v}");
    assert_eq!(v["unreachable"].as_array().unwrap().len(), 1, "{v}");
    for r in v["results"].as_array().unwrap() {
        assert!(r["state"].is_string() && r["user"].is_string(), "{r}");
    }
    assert_eq!(arm.calls(ArmOp::Logoff), 0);
    assert_eq!(classic.calls("logoff-user"), 0);
    assert!(rds.sessions(RDS_HOSTS[0]).contains_key(&77));

    // For real: every session of the user goes, one result each, all with one batch id.
    let r = app
        .post(&app.keys.operator, &url, Some(json!({"reason": "leaver"})))
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v = ok_json(r).await;
    assert_eq!(v["summary"]["done"], 3, "{v}");
    assert_eq!(arm.calls(ArmOp::Logoff), 1);
    assert_eq!(classic.calls("logoff-user"), 1);
    assert!(!rds.sessions(RDS_HOSTS[0]).contains_key(&77));
    assert!(rds.sessions(RDS_HOSTS[1]).contains_key(&78));
    let evs = events_of(&app, &rid).await;
    let batch = v["batch_id"].as_str().unwrap();
    let items: Vec<&Value> = evs.iter().filter(|e| e["kind"] != "request").collect();
    assert_eq!(items.len(), 6, "{evs:?}");
    assert!(items.iter().all(|e| e["params"]["batch_id"] == batch));

    // Nothing left: an empty answer, not an error.
    let v = ok_json(app.post(&app.keys.operator, &url, None).await).await;
    assert_eq!(v["results"], json!([]), "{v}");
    // A reader may read everywhere but act nowhere; an auditor may not even read.
    let r = app.post(&app.keys.reader, &url, None).await;
    problem(r, 403, "forbidden").await;
    let r = app
        .get(&app.keys.auditor, &format!("/users/{upn}/sessions"))
        .await;
    problem(r, 403, "forbidden").await;
    let r = app.get(&app.keys.reader, "/users/not-a-upn/sessions").await;
    problem(r, 400, "invalid_path").await;
}

#[tokio::test]
async fn a_pool_that_cannot_be_asked_is_listed_not_fatal() {
    let app = TestApp::start().await;
    let upn = "erin.fleet@contoso.com";
    let arm = app.arm();
    let host = arm.sessions(ARM_POOL)[0].host.clone();
    arm.add_session(ARM_POOL, &host, upn).unwrap();
    // The classic broker answers 503 for a while: its pool is unreachable, AVD still answers.
    app.backends.classic.state().fail_next(1000);
    let v = ok_json(
        app.get(&app.keys.reader, &format!("/users/{upn}/sessions"))
            .await,
    )
    .await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    let u = v["unreachable"].as_array().unwrap();
    assert!(
        u.iter()
            .any(|x| x["pool"] == "classic-demo" && x.get("host").is_none()),
        "{v}"
    );
}

const AUD: &str = "api://sessiongate";

/// A gateway that also takes tokens of the in-tree issuer, self-service on or off.
async fn token_app(
    self_service: bool,
) -> (
    TestApp,
    sessiongate::emulator::oidc::TestIssuer,
    tempfile::NamedTempFile,
) {
    let issuer = sessiongate::emulator::oidc::TestIssuer::start()
        .await
        .expect("test issuer");
    let (o, ca) = crate::support::oidc_config(&issuer, &[AUD]);
    let app = TestApp::start_with(move |c| {
        c.auth.oidc = Some(o);
        c.auth.self_service = self_service;
    })
    .await;
    (app, issuer, ca)
}

/// A token with no role at all, naming `upn`.
fn user_token(issuer: &sessiongate::emulator::oidc::TestIssuer, upn: &str) -> String {
    let mut c = issuer.claims(AUD);
    c["preferred_username"] = json!(upn);
    issuer.mint(&c).unwrap()
}

#[tokio::test]
async fn self_service_acts_on_the_callers_own_sessions_only() {
    let (app, issuer, _ca) = token_app(true).await;
    let arm = app.arm();
    let host = arm.sessions(ARM_POOL)[0].host.clone();
    let me = "sam.self@contoso.com";
    let mine = [
        arm.add_session(ARM_POOL, &host, me).unwrap(),
        arm.add_session(ARM_POOL, &host, me).unwrap(),
    ];
    let before = arm.sessions(ARM_POOL).len();
    let token = user_token(&issuer, me);

    let v = ok_json(app.get(&token, "/me/sessions").await).await;
    let ids: Vec<u64> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{v}");
    assert!(mine.iter().all(|m| ids.contains(&(*m as u64))), "{v}");
    assert_eq!(v["upn"], me);
    // No role: the pool routes stay closed to this caller.
    let r = app
        .get(&token, &format!("/hostpools/{AVD_POOL}/sessions"))
        .await;
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());

    let url = format!("{}/me/sessions/disconnect", app.url);
    let v = ok_json(app.post(&token, &url, Some(json!({"dry_run": true}))).await).await;
    assert_eq!(v["summary"]["would_do"], 2, "{v}");
    assert_eq!(arm.calls(ArmOp::Disconnect), 0);
    let r = app
        .post(&token, &url, Some(json!({"reason": "stuck"})))
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v = ok_json(r).await;
    assert_eq!(v["summary"]["done"], 2, "{v}");
    assert_eq!(arm.calls(ArmOp::Disconnect), 2);
    let evs = events_of(&app, &rid).await;
    let items: Vec<&Value> = evs.iter().filter(|e| e["kind"] != "request").collect();
    assert_eq!(items.len(), 4, "{evs:?}");
    for e in &items {
        assert_eq!(e["actor"]["auth_method"], "jwt", "{e}");
        assert_eq!(e["target"]["user"], me, "{e}");
    }
    let v = ok_json(
        app.post(&token, &format!("{}/me/sessions/logoff", app.url), None)
            .await,
    )
    .await;
    assert_eq!(v["summary"]["done"], 2, "{v}");
    assert_eq!(arm.sessions(ARM_POOL).len(), before - 2);

    // Lock is not a self-service action; an API key names no user.
    let r = app
        .post(&token, &format!("{}/me/sessions/lock", app.url), None)
        .await;
    problem(r, 404, "route_not_found").await;
    let r = app.get(&app.keys.admin, "/me/sessions").await;
    problem(r, 403, "self_service_needs_token").await;

    // A protected user may not log itself off through sessiongate.
    let boss = arm.add_session(ARM_POOL, &host, PROTECTED_UPN).unwrap();
    let token = user_token(&issuer, PROTECTED_UPN);
    let v = ok_json(
        app.post(&token, &format!("{}/me/sessions/logoff", app.url), None)
            .await,
    )
    .await;
    assert_eq!(
        outcomes(&v),
        [("refused".into(), "session_protected".into())]
    );
    assert!(
        arm.sessions(ARM_POOL)
            .iter()
            .any(|s| s.id == boss && s.host == host)
    );
}

#[tokio::test]
async fn self_service_is_off_by_default() {
    let (app, issuer, _ca) = token_app(false).await;
    let token = user_token(&issuer, "sam.self@contoso.com");
    let r = app.get(&token, "/me/sessions").await;
    problem(r, 404, "self_service_disabled").await;
    let r = app
        .post(&token, &format!("{}/me/sessions/logoff", app.url), None)
        .await;
    problem(r, 404, "self_service_disabled").await;
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);
}

/// Whole-host logoff on a MultiPoint pool: the items that pass their checks go upstream in ONE
/// `Close-WmsSession -SessionId a,b,c` (after one listing for the resolves), each item still
/// audited on its own; a protected (administrator's) session is refused and not sent; a dry
/// run sends no close at all.
#[tokio::test]
async fn whole_host_logoff_on_multipoint_is_one_remote_close() {
    use sessiongate::demo::MPS_HOST;
    use sessiongate::providers::winrm::scripts::Template;
    const MPS: &str = "multipoint-demo";
    let app = TestApp::start().await;
    let st = app.backends.multipoint.state();
    for (id, name) in [(31, "mp.ann"), (32, "mp.bob"), (33, "mp.cid")] {
        st.add_session(MPS_HOST, id, EmuSession::user(name, "MPS01", true));
    }
    let mut adm = EmuSession::user("mp.admin", "MPS01", true);
    adm.admin = true;
    st.add_session(MPS_HOST, 34, adm);
    let url = format!(
        "{}/hostpools/{MPS}/sessionhosts/{MPS_HOST}/sessions/logoff",
        app.url
    );
    let count = |t: Template| {
        st.scripts()
            .iter()
            .filter(|s| s.host.eq_ignore_ascii_case(MPS_HOST) && s.template == Some(t))
            .count()
    };

    // Dry run: the blast radius, and nothing closed.
    let closes = count(Template::MpClose);
    let v = ok_json(
        app.post(
            &app.keys.operator,
            &url,
            Some(json!({"ids": [31, 32, 33, 34], "dry_run": true})),
        )
        .await,
    )
    .await;
    assert_eq!(
        v["summary"],
        json!({"done": 0, "already_gone": 0, "would_do": 3, "refused": 1, "failed": 0}),
        "{v}"
    );
    assert_eq!(v["results"][1]["user"], "MPS01\\mp.bob", "{v}");
    assert_eq!(count(Template::MpClose), closes);
    assert!(
        [31, 32, 33, 34]
            .iter()
            .all(|i| st.sessions(MPS_HOST).contains_key(i))
    );

    // For real: three ids in one remote close, the administrator's session refused, not sent.
    let lists = count(Template::MpList);
    let r = app
        .post(
            &app.keys.operator,
            &url,
            Some(json!({"ids": [31, 34, 32, 33], "reason": "host drain", "ticket": "INC12"})),
        )
        .await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v = ok_json(r).await;
    assert_eq!(
        outcomes(&v),
        [
            ("done".into(), "".into()),
            ("refused".into(), "session_protected".into()),
            ("done".into(), "".into()),
            ("done".into(), "".into()),
        ],
        "{v}"
    );
    assert_eq!(count(Template::MpClose), closes + 1, "one remote close");
    assert_eq!(
        count(Template::MpList),
        lists + 1,
        "one listing for the resolves"
    );
    let sent: Vec<_> = st
        .scripts()
        .into_iter()
        .filter(|s| s.template == Some(Template::MpClose))
        .collect();
    assert_eq!(sent.last().unwrap().slots["IDS"], "31,32,33");
    let left = st.sessions(MPS_HOST);
    assert!(left.contains_key(&34) && ![31, 32, 33].iter().any(|i| left.contains_key(i)));

    // Each item: its own intent and outcome with the batch id, the outcome naming its intent.
    let batch = v["batch_id"].as_str().unwrap();
    let evs = events_of(&app, &rid).await;
    let of = |kind: &str| -> Vec<&Value> { evs.iter().filter(|e| e["kind"] == kind).collect() };
    let (intents, outs) = (of("intent"), of("outcome"));
    assert_eq!((intents.len(), outs.len()), (4, 4), "{evs:?}");
    for e in intents.iter().chain(outs.iter()) {
        assert_eq!(e["params"]["batch_id"], batch, "{e}");
        assert_eq!(e["params"]["ticket"], "INC12", "{e}");
    }
    for id in [31, 32, 33, 34] {
        let i = intents
            .iter()
            .find(|e| e["target"]["session_id"] == id)
            .unwrap_or_else(|| panic!("intent of {id}: {evs:?}"));
        let o = outs
            .iter()
            .find(|e| e["target"]["session_id"] == id)
            .unwrap_or_else(|| panic!("outcome of {id}: {evs:?}"));
        assert_eq!(o["params"]["intent_id"], i["id"], "{o}");
        let want = if id == 34 { "refused" } else { "done" };
        assert_eq!(o["outcome"], want, "{o}");
    }
}
