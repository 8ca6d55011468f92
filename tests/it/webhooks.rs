//! The webhook receiver (issue 13) over loopback against the demo emulators: each source kind
//! accepted with a valid signature, key or token and refused (401, audited, nothing in the
//! answer or the audit but a reason code) with a wrong, missing or expired one; rotation;
//! duplicates (also concurrent, also after a restart, also through another replica on
//! PostgreSQL) answered with the first answer and acted on once (counted in the ARM
//! emulator); guards and mapping errors; targets outside the source's scopes or the pool's
//! inventory refused before anything is called; the write-back state of a delivery's job.
//! Run: `cargo nextest run --test it webhooks::`

use crate::fleet_jobs::{ended, wait_job};
use crate::support::app::{ARM_POOL, AVD_POOL, InProc, TestApp, problem};
use crate::support::header;
use serde_json::{Value, json};
use sessiongate::{
    config::Config,
    emulator::arm::ArmOp,
    service::WriteBackResult,
    webhooks::signature::{hub_sign, standard_sign},
};
use std::path::Path;

const GEN_OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const GEN_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const JIRA_SECRET: &str = "jira-admin-webhook-secret";
const JIRA_KEY: &str = "automation-key-0123456789";
const SN_KEY: &str = "servicenow-key-0123456789";
const SN_HMAC: &str = "servicenow-hmac-secret";
const ENTRA_APP: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

fn key_of(secret: &str) -> Vec<u8> {
    sessiongate::webhooks::signature::decode_standard_secret(secret).expect("whsec secret")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).expect("write secret");
    p.display().to_string()
}

/// Three sources, one of each kind, with their secrets in files under `dir`.
fn webhooks_toml(dir: &Path) -> String {
    let gen_old = write(dir, "gen-old", GEN_OLD);
    let gen_new = write(dir, "gen-new", GEN_NEW);
    let jira = write(dir, "jira", JIRA_SECRET);
    let sn = write(dir, "sn-hmac", SN_HMAC);
    let jira_hash = sessiongate::auth::apikey::hash_key(JIRA_KEY);
    let sn_hash = sessiongate::auth::apikey::hash_key(SN_KEY);
    format!(
        r#"
[[sources]]
name = "gen"
kind = "generic"
secrets = [{{ file = {gen_old:?} }}, {{ file = {gen_new:?} }}]
roles = ["operator"]
pools = ["{AVD_POOL}"]
[sources.mapping]
action = "/action"
user = "/user"
ticket = "/ticket"
reason = {{ value = "service desk request" }}
allowed_actions = ["logoff", "disconnect"]

[[sources]]
name = "jira"
kind = "jira"
secrets = [{{ file = {jira:?} }}]
api_key_header = "X-Automation-Key"
api_key_hashes = ["{jira_hash}"]
roles = ["operator"]
[sources.mapping]
user = "/issue/fields/reporter/emailAddress"
ticket = "/issue/key"
ticket_id = "/issue/id"
action = "/action"
allowed_actions = ["logoff"]
require = [{{ pointer = "/approval", equals = "approved" }}]

[[sources]]
name = "sn"
kind = "servicenow"
api_key_header = "X-Sessiongate-Key"
api_key_hashes = ["{sn_hash}"]
entra = {{ allowed_app_ids = ["{ENTRA_APP}"] }}
hmac = {{ header = "X-SN-Signature", secrets = [{{ file = {sn:?} }}] }}
delivery_id = "/delivery"
roles = ["operator"]
pools = ["{AVD_POOL}", "rds-demo"]
[sources.mapping]
pool = "/pool"
host = "/host"
session_id = "/session"
ticket = "/number"
ticket_id = "/sys_id"
"#
    )
}

fn add_webhooks(c: &mut Config, dir: &Path) {
    c.webhooks = toml::from_str(&webhooks_toml(dir)).expect("webhooks config");
}

async fn start(dir: &tempfile::TempDir) -> TestApp {
    let p = dir.path().to_path_buf();
    TestApp::start_with(move |c| add_webhooks(c, &p)).await
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A Standard Webhooks delivery signed with `secret` at `ts`.
async fn send_generic(
    app: &TestApp,
    secret: &str,
    id: &str,
    ts: i64,
    body: &Value,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = standard_sign(&key_of(secret), id, ts, &bytes);
    app.http
        .post(format!("{}/webhooks/gen", app.url))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn post_raw(
    app: &TestApp,
    source: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut r = app
        .http
        .post(format!("{}/webhooks/{source}", app.url))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).send().await.unwrap()
}

/// The audit events of one request.
pub(crate) async fn events_of(app: &TestApp, rid: &str) -> Vec<Value> {
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

pub(crate) async fn accepted(r: reqwest::Response) -> (Value, String) {
    let st = r.status().as_u16();
    let rid = header(&r, "x-request-id").unwrap_or_default();
    let loc = header(&r, "location");
    let v: Value = r.json().await.unwrap();
    assert_eq!(st, 202, "{v}");
    assert_eq!(loc.as_deref(), v["location"].as_str(), "{v}");
    assert_eq!(
        v["location"],
        format!("/jobs/{}", v["job_id"].as_str().unwrap())
    );
    (v, rid)
}

/// A 401 and its audit record: the reason code, the source and the delivery id, and nothing
/// of the secret, the signature or the token.
async fn refused_401(app: &TestApp, r: reqwest::Response, reason: &str, secret_bits: &[&str]) {
    let rid = header(&r, "x-request-id").unwrap();
    let p = problem(r, 401, "webhook_unauthenticated").await;
    assert_eq!(p["reason"], reason, "{p}");
    let evs = events_of(app, &rid).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let ev = &evs[0];
    assert_eq!(ev["error_code"], "webhook_unauthenticated", "{ev}");
    assert_eq!(ev["params"]["reason"], reason, "{ev}");
    assert!(ev["params"]["webhook_source"].is_string(), "{ev}");
    assert_eq!(ev["outcome"], "unauthenticated", "{ev}");
    let text = ev.to_string();
    for s in secret_bits {
        assert!(!text.contains(s), "{s} leaked into {text}");
    }
}

#[tokio::test]
async fn generic_deliveries_signed_rotated_deduplicated_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir).await;
    let arm = app.arm();
    let host = arm.hosts(ARM_POOL)[0].clone();
    arm.add_session(ARM_POOL, &host, "wh.gen@contoso.com")
        .unwrap();
    let before = arm.calls(ArmOp::Logoff);
    let body = json!({"action": "logoff", "user": "wh.gen@contoso.com", "ticket": "INC0012345"});

    // Signed with the newer secret of the two.
    let r = send_generic(&app, GEN_NEW, "msg_gen_1", now(), &body).await;
    let (first, rid) = accepted(r).await;
    assert_eq!(first["delivery_id"], "msg_gen_1");
    let job_id = first["job_id"].as_str().unwrap().to_string();
    let job = wait_job(&app, &app.keys.auditor, &job_id, ended).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["created_by"], "webhook:gen");
    assert_eq!(job["write_back"]["state"], "none", "{job}");
    assert_eq!(job["write_back"]["delivery_id"], "msg_gen_1", "{job}");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 1);
    // The item's audit events carry the source, the delivery id and the ticket.
    let evs = events_of(&app, &rid).await;
    let outcome = evs
        .iter()
        .find(|e| e["kind"] == "outcome")
        .unwrap_or_else(|| panic!("{evs:?}"));
    assert_eq!(outcome["params"]["webhook_source"], "gen", "{outcome}");
    assert_eq!(outcome["params"]["delivery_id"], "msg_gen_1", "{outcome}");
    assert_eq!(outcome["params"]["ticket"], "INC0012345", "{outcome}");
    assert_eq!(outcome["actor"]["id"], "webhook:gen", "{outcome}");

    // The same delivery again (a sender's retry, even much later within the tolerance): the
    // first answer, nothing done again.
    let r = send_generic(&app, GEN_NEW, "msg_gen_1", now(), &body).await;
    assert_eq!(header(&r, "webhook-replayed").as_deref(), Some("true"));
    let (again, _) = accepted(r).await;
    assert_eq!(again, first);
    assert_eq!(arm.calls(ArmOp::Logoff), before + 1);

    // Rotation: the older secret still signs; the user has no session left: 200, empty.
    let r = send_generic(&app, GEN_OLD, "msg_gen_2", now(), &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"], json!([]), "{v}");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 1);

    // Refusals: wrong secret, no signature, a timestamp out of tolerance (also a captured
    // delivery replayed later), a changed body.
    let wrong = "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGw=";
    let r = send_generic(&app, wrong, "msg_gen_3", now(), &body).await;
    refused_401(&app, r, "signature_mismatch", &[wrong, "v1,"]).await;
    let bytes = serde_json::to_vec(&body).unwrap();
    let r = post_raw(
        &app,
        "gen",
        &[
            ("webhook-id", "msg_gen_4".into()),
            ("webhook-timestamp", now().to_string()),
        ],
        bytes.clone(),
    )
    .await;
    refused_401(&app, r, "signature_missing", &[]).await;
    let old = now() - 301;
    let r = send_generic(&app, GEN_NEW, "msg_gen_5", old, &body).await;
    refused_401(&app, r, "timestamp_out_of_tolerance", &[GEN_NEW]).await;
    let sig = standard_sign(&key_of(GEN_NEW), "msg_gen_6", now(), &bytes);
    let r = post_raw(
        &app,
        "gen",
        &[
            ("webhook-id", "msg_gen_6".into()),
            ("webhook-timestamp", now().to_string()),
            ("webhook-signature", sig.clone()),
        ],
        serde_json::to_vec(&json!({"action": "logoff", "user": "other@contoso.com"})).unwrap(),
    )
    .await;
    refused_401(&app, r, "signature_mismatch", &[&sig]).await;
    // A refused delivery is not recorded: the genuine one with that id still runs.
    let r = send_generic(&app, GEN_NEW, "msg_gen_3", now(), &body).await;
    assert_eq!(r.status(), 200);

    // Unknown source, oversize body (before any signature check).
    let r = post_raw(&app, "nope", &[], b"{}".to_vec()).await;
    problem(r, 404, "webhook_source_not_found").await;
    let big = vec![b' '; 70 * 1024];
    let r = post_raw(&app, "gen", &[], big).await;
    problem(r, 413, "payload_too_large").await;
    // Guards: an action the source may not ask for; a mapping error.
    let r = send_generic(
        &app,
        GEN_NEW,
        "msg_gen_7",
        now(),
        &json!({"action": "lock", "user": "wh.gen@contoso.com"}),
    )
    .await;
    let p = problem(r, 422, "webhook_guard_refused").await;
    assert_eq!(p["guard"], "allowed_actions");
    let r = send_generic(
        &app,
        GEN_NEW,
        "msg_gen_8",
        now(),
        &json!({"action": "logoff"}),
    )
    .await;
    let p = problem(r, 422, "webhook_mapping_failed").await;
    assert_eq!(p["field"], "user");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_get_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir).await;
    let arm = app.arm();
    let hosts = arm.hosts(ARM_POOL);
    for h in hosts.iter().take(2) {
        arm.add_session(ARM_POOL, h, "wh.conc@contoso.com").unwrap();
    }
    let before = arm.calls(ArmOp::Logoff);
    let body = json!({"action": "logoff", "user": "wh.conc@contoso.com"});
    let ts = now();
    let sends = (0..6).map(|_| send_generic(&app, GEN_NEW, "msg_conc", ts, &body));
    let answers = futures::future::join_all(sends).await;
    let mut jobs = Vec::new();
    for r in answers {
        let (v, _) = accepted(r).await;
        jobs.push(v["job_id"].as_str().unwrap().to_string());
    }
    jobs.dedup();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = wait_job(&app, &app.keys.auditor, &jobs[0], ended).await;
    assert_eq!(job["counts"]["done"], 2, "{job}");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);
}

fn jira_body(user: &str, approval: &str) -> Value {
    json!({"webhookEvent": "jira:issue_updated", "action": "logoff", "approval": approval,
        "issue": {"id": "10042", "key": "ITSM-42", "fields": {"reporter": {"emailAddress": user}}}})
}

#[tokio::test]
async fn jira_admin_webhooks_and_automation_keys() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir).await;
    let arm = app.arm();
    let host = arm.hosts(ARM_POOL)[0].clone();
    arm.add_session(ARM_POOL, &host, "wh.jira1@contoso.com")
        .unwrap();
    arm.add_session(ARM_POOL, &host, "wh.jira2@contoso.com")
        .unwrap();
    let before = arm.calls(ArmOp::Logoff);
    let signed = |id: &str, body: &Value| {
        let bytes = serde_json::to_vec(body).unwrap();
        let headers = vec![
            ("X-Hub-Signature", hub_sign(JIRA_SECRET.as_bytes(), &bytes)),
            ("X-Atlassian-Webhook-Identifier", id.to_string()),
        ];
        (headers, bytes)
    };
    // An admin webhook signed with the secret.
    let (h, b) = signed("jira-1", &jira_body("wh.jira1@contoso.com", "approved"));
    let (v, _) = accepted(post_raw(&app, "jira", &h, b).await).await;
    let job = wait_job(
        &app,
        &app.keys.auditor,
        v["job_id"].as_str().unwrap(),
        ended,
    )
    .await;
    assert_eq!(job["counts"]["done"], 1, "{job}");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 1);
    // An Automation rule with its API key header (no signature).
    let b = serde_json::to_vec(&jira_body("wh.jira2@contoso.com", "approved")).unwrap();
    let h = vec![
        ("X-Automation-Key", JIRA_KEY.to_string()),
        ("X-Atlassian-Webhook-Identifier", "jira-2".to_string()),
    ];
    let (v, _) = accepted(post_raw(&app, "jira", &h, b.clone()).await).await;
    wait_job(
        &app,
        &app.keys.auditor,
        v["job_id"].as_str().unwrap(),
        ended,
    )
    .await;
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);
    // Refused: a wrong key, a wrong signature, nothing at all.
    let h = vec![
        ("X-Automation-Key", "wrong-key".to_string()),
        ("X-Atlassian-Webhook-Identifier", "jira-3".to_string()),
    ];
    refused_401(
        &app,
        post_raw(&app, "jira", &h, b.clone()).await,
        "api_key_invalid",
        &["wrong-key"],
    )
    .await;
    let h = vec![
        ("X-Hub-Signature", hub_sign(b"not the secret", &b)),
        ("X-Atlassian-Webhook-Identifier", "jira-3".to_string()),
    ];
    refused_401(
        &app,
        post_raw(&app, "jira", &h, b.clone()).await,
        "signature_mismatch",
        &["sha256="],
    )
    .await;
    let h = vec![("X-Atlassian-Webhook-Identifier", "jira-3".to_string())];
    refused_401(
        &app,
        post_raw(&app, "jira", &h, b.clone()).await,
        "signature_missing",
        &[],
    )
    .await;
    // A guard: the approval is not there yet. The refusal is the delivery's first answer: Jira's
    // retry of it gets the same 422 (never a second evaluation).
    let (h, b) = signed("jira-4", &jira_body("wh.jira2@contoso.com", "waiting"));
    let r = post_raw(&app, "jira", &h, b.clone()).await;
    let rid = header(&r, "x-request-id").unwrap();
    let p = problem(r, 422, "webhook_guard_refused").await;
    assert_eq!(p["guard"], "require[0]");
    let ev = &events_of(&app, &rid).await[0];
    assert_eq!(ev["error_code"], "webhook_guard_refused", "{ev}");
    assert_eq!(ev["params"]["delivery_id"], "jira-4", "{ev}");
    assert_eq!(ev["actor"]["id"], "webhook:jira", "{ev}");
    let r = post_raw(&app, "jira", &h, b).await;
    assert_eq!(header(&r, "webhook-replayed").as_deref(), Some("true"));
    assert_eq!(r.status(), 422);
    let p2: Value = r.json().await.unwrap();
    assert_eq!(p2, p, "the stored first answer");
    // A body that is not JSON (signed, so it is authenticated first).
    let (h, _) = signed("jira-5", &json!({}));
    let raw = b"not json".to_vec();
    let h: Vec<(&str, String)> = h
        .into_iter()
        .map(|(k, v)| {
            if k == "X-Hub-Signature" {
                (k, hub_sign(JIRA_SECRET.as_bytes(), &raw))
            } else {
                (k, v)
            }
        })
        .collect();
    let p = problem(
        post_raw(&app, "jira", &h, raw).await,
        422,
        "webhook_mapping_failed",
    )
    .await;
    assert_eq!(p["field"], "body");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);
}

pub(crate) fn sn_headers(
    body: &[u8],
    key: Option<&str>,
    hmac: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let Some(k) = key {
        h.push(("X-Sessiongate-Key", k.to_string()));
    }
    if let Some(s) = hmac {
        h.push(("X-SN-Signature", hub_sign(s.as_bytes(), body)));
    }
    h
}

#[tokio::test]
async fn servicenow_key_or_token_with_hmac_and_targets_outside_scope() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = start(&dir).await;
    let arm = app.arm();
    let host = arm.hosts(ARM_POOL)[0].clone();
    let id = arm
        .add_session(ARM_POOL, &host, "wh.sn@contoso.com")
        .unwrap();
    let before = arm.calls(ArmOp::Logoff);
    let body = |delivery: &str, pool: &str, host: &str, session: u32| {
        serde_json::to_vec(&json!({"delivery": delivery, "number": "INC0099", "sys_id": "9d385017c611228701d22104cc95c371",
            "pool": pool, "host": host, "session": session}))
        .unwrap()
    };
    // API key + HMAC: one session.
    let b = body("sn-1", AVD_POOL, &host, id);
    let (v, _) = accepted(
        post_raw(
            &app,
            "sn",
            &sn_headers(&b, Some(SN_KEY), Some(SN_HMAC)),
            b.clone(),
        )
        .await,
    )
    .await;
    let job = wait_job(
        &app,
        &app.keys.auditor,
        v["job_id"].as_str().unwrap(),
        ended,
    )
    .await;
    assert_eq!(job["counts"]["done"], 1, "{job}");
    assert_eq!(arm.calls(ArmOp::Logoff), before + 1);
    // The HMAC is required on top of the key.
    refused_401(
        &app,
        post_raw(&app, "sn", &sn_headers(&b, Some(SN_KEY), None), b.clone()).await,
        "signature_missing",
        &[SN_KEY],
    )
    .await;
    refused_401(
        &app,
        post_raw(
            &app,
            "sn",
            &sn_headers(&b, Some(SN_KEY), Some("other")),
            b.clone(),
        )
        .await,
        "signature_mismatch",
        &[SN_KEY],
    )
    .await;
    refused_401(
        &app,
        post_raw(&app, "sn", &sn_headers(&b, None, Some(SN_HMAC)), b.clone()).await,
        "credentials_missing",
        &[],
    )
    .await;
    // An Entra ID token of the listed application, and one of another application.
    let oidc = &app.backends.oidc;
    let mut claims = oidc.claims(sessiongate::demo::DEMO_AUDIENCE);
    claims["azp"] = ENTRA_APP.into();
    let good = oidc.mint(&claims).unwrap();
    claims["azp"] = "ffffffff-0000-4000-8000-000000000000".into();
    let other = oidc.mint(&claims).unwrap();
    let id2 = arm
        .add_session(ARM_POOL, &host, "wh.sn2@contoso.com")
        .unwrap();
    let b = body("sn-2", AVD_POOL, &host, id2);
    let mut h = sn_headers(&b, None, Some(SN_HMAC));
    h.push(("Authorization", format!("Bearer {good}")));
    let (v, _) = accepted(post_raw(&app, "sn", &h, b.clone()).await).await;
    wait_job(
        &app,
        &app.keys.auditor,
        v["job_id"].as_str().unwrap(),
        ended,
    )
    .await;
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);
    let b3 = body("sn-3", AVD_POOL, &host, id2);
    let mut h = sn_headers(&b3, None, Some(SN_HMAC));
    h.push(("Authorization", format!("Bearer {other}")));
    refused_401(
        &app,
        post_raw(&app, "sn", &h, b3).await,
        "token_invalid",
        &[&other],
    )
    .await;
    // A pool outside the source's scopes, a host outside an on-prem pool's inventory (a cloud
    // pool's host is addressed inside its configured host pool), a malformed target: refused
    // before anything is called.
    let listed = arm.calls(ArmOp::ListPoolSessions);
    for (delivery, pool, host, code) in [
        ("sn-4", "classic-demo", host.as_str(), "pool_not_found"),
        ("sn-5", "rds-demo", "evil.example.com", "host_not_found"),
        ("sn-6", "no such pool!", "x", "webhook_mapping_failed"),
    ] {
        let b = body(delivery, pool, host, id);
        let st = if code == "webhook_mapping_failed" {
            422
        } else {
            404
        };
        problem(
            post_raw(&app, "sn", &sn_headers(&b, Some(SN_KEY), Some(SN_HMAC)), b).await,
            st,
            code,
        )
        .await;
    }
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);
    assert_eq!(arm.calls(ArmOp::ListPoolSessions), listed);

    // The write-back hook: the ended job's delivery becomes pending, a retry keeps it pending,
    // success records it; `GET /jobs/{id}` shows it.
    let gw = app.gateway();
    assert_eq!(gw.pending_write_backs(10).await.unwrap(), vec![]);
    assert!(
        gw.record_write_back(
            "sn",
            "sn-1",
            &WriteBackResult::Retry("429 from the instance".into())
        )
        .await
        .unwrap()
    );
    let pending = gw.pending_write_backs(10).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].delivery_id, "sn-1");
    assert_eq!(
        pending[0].ticket_id.as_deref(),
        Some("9d385017c611228701d22104cc95c371")
    );
    assert_eq!(pending[0].ticket.as_deref(), Some("INC0099"));
    assert!(
        gw.record_write_back(
            "sn",
            "sn-1",
            &WriteBackResult::Done("work note added".into())
        )
        .await
        .unwrap()
    );
    assert_eq!(gw.pending_write_backs(10).await.unwrap(), vec![]);
    assert!(
        !gw.record_write_back("sn", "unknown", &WriteBackResult::Done(String::new()))
            .await
            .unwrap()
    );
    let job_id = pending[0].job_id.clone();
    let j: Value = app
        .get(&app.keys.auditor, &format!("/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(j["write_back"]["state"], "done", "{j}");
    assert_eq!(j["write_back"]["attempts"], 2, "{j}");
    assert_eq!(j["write_back"]["detail"], "work note added", "{j}");

    // Dedup survives a restart: the same data dir, a new process; the duplicate of sn-1 gets
    // its first answer, nothing is called.
    app.stop().await;
    let mut again = InProc::start(&app.config).await;
    let b = body("sn-1", AVD_POOL, &host, id);
    let r = app
        .http
        .post(format!("{}/webhooks/sn", again.url))
        .header("X-Sessiongate-Key", SN_KEY)
        .header("X-SN-Signature", hub_sign(SN_HMAC.as_bytes(), &b))
        .body(b)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "webhook-replayed").as_deref(), Some("true"));
    let v2: Value = r.json().await.unwrap();
    assert_eq!(v2["job_id"], job_id.as_str());
    assert_eq!(arm.calls(ArmOp::Logoff), before + 2);
    again.stop().await;
}

/// On PostgreSQL the deliveries are shared by replicas: a delivery through one replica and its
/// duplicate through the other get one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_replicas_on_postgres() {
    use crate::support::app::Demo;
    use crate::support::pg::PgDb;
    use crate::support::ticketing::Receiver;
    let Some(db) = PgDb::create("webhook_t").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start_unthrottled().await;
    let arm = demo.arm();
    demo.seed("wh.pg", 6);
    // Both replicas write the results back to one callback receiver, which takes 1.2 s to
    // answer: longer than a runner's poll, so the other replica sees each write-back pending
    // while it is being written (only the claim keeps it from writing it too).
    let receiver = Receiver::start_slow(&[], std::time::Duration::from_millis(1200)).await;
    let cb = write(dir.path(), "callback", GEN_OLD);
    let write_back: sessiongate::ticketing::WriteBackConfig = toml::from_str(&format!(
        "kind = \"callback\"\nurl = \"{}\"\nsecret_file = {cb:?}\n",
        receiver.url
    ))
    .unwrap();
    let mut cfg_a = demo.config("127.0.0.1:0", Some(&db.url), Some("gw-a"));
    let mut cfg_b = demo.config("127.0.0.1:0", Some(&db.url), Some("gw-b"));
    for c in [&mut cfg_a, &mut cfg_b] {
        add_webhooks(c, dir.path());
        c.webhooks.sources[0].write_back = Some(write_back.clone());
    }
    let (mut a, mut b) = tokio::join!(InProc::start(&cfg_a), InProc::start(&cfg_b));
    let before = arm.calls(ArmOp::Logoff);
    let http = reqwest::Client::new();
    let ts = now();
    let send = |base: String, i: usize| {
        let body = serde_json::to_vec(
            &json!({"action": "logoff", "user": format!("wh.pg{i}@contoso.com")}),
        )
        .unwrap();
        let id = format!("msg_pg{i}");
        let sig = standard_sign(&key_of(GEN_NEW), &id, ts, &body);
        http.post(format!("{base}/webhooks/gen"))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
    };
    // The same delivery through both replicas at once: one job, one logoff.
    let (r1, r2) = tokio::join!(send(a.url.clone(), 0), send(b.url.clone(), 0));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!((r1.status().as_u16(), r2.status().as_u16()), (202, 202));
    let (v1, v2): (Value, Value) = (r1.json().await.unwrap(), r2.json().await.unwrap());
    assert_eq!(v1["job_id"], v2["job_id"]);
    // Five more deliveries, alternating replicas.
    let mut jobs = vec![v1["job_id"].as_str().unwrap().to_string()];
    for i in 1..6 {
        let base = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let r = send(base, i).await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let v: Value = r.json().await.unwrap();
        jobs.push(v["job_id"].as_str().unwrap().to_string());
    }
    // The jobs run on either replica; each result is written back exactly once although both
    // replicas' runners look for pending write-backs.
    let t0 = std::time::Instant::now();
    while arm.calls(ArmOp::Logoff) < before + 6 || receiver.received().len() < 6 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "jobs or write-backs did not run: {} logoffs, {} write-backs",
            arm.calls(ArmOp::Logoff) - before,
            receiver.received().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_eq!(arm.calls(ArmOp::Logoff), before + 6);
    let mut written: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            r.json()["data"]["report"]["job_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    written.sort();
    jobs.sort();
    assert_eq!(written, jobs, "each job's result once");
    a.stop().await;
    b.stop().await;
    drop(db);
}

/// `sessiongate webhook sign`: the published Standard Webhooks vector with `--kind`, and a
/// configured jira source's headers (which the receiver accepts, see above) with `--config`.
#[test]
fn webhook_sign_prints_the_headers_to_send() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_sessiongate");
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "s", GEN_OLD);
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let run = |args: &[&str]| {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&[
        "webhook",
        "sign",
        "--source",
        "any",
        "--kind",
        "generic",
        "--secret-file",
        &secret,
        "--id",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        "--timestamp",
        "1649367553",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "webhook-id: msg_27UH4WbU6Z5A5EzD8u03UvzRbpk\nwebhook-timestamp: 1649367553\n\
         webhook-signature: v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=\n"
    );
    // From a config: the source's kind and headers.
    let cfg = dir.path().join("c.toml");
    let mut text = String::new();
    for line in webhooks_toml(dir.path()).lines() {
        text.push_str(
            &line
                .replace("[[sources]]", "[[webhooks.sources]]")
                .replace("[sources.mapping]", "[webhooks.sources.mapping]"),
        );
        text.push('\n');
    }
    std::fs::write(&cfg, text).unwrap();
    let jira = write(dir.path(), "j", JIRA_SECRET);
    let cfg_s = cfg.display().to_string();
    let out = run(&[
        "webhook",
        "sign",
        "--source",
        "jira",
        "--config",
        &cfg_s,
        "--secret-file",
        &jira,
        "--id",
        "jira-9",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "jira");
    assert_eq!(
        v["headers"]["X-Hub-Signature"],
        hub_sign(JIRA_SECRET.as_bytes(), body)
    );
    assert_eq!(v["headers"]["x-atlassian-webhook-identifier"], "jira-9");
    let out = run(&[
        "webhook",
        "sign",
        "--source",
        "nope",
        "--config",
        &cfg_s,
        "--secret-file",
        &jira,
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// The deliveries' statements on PostgreSQL's SQL: the first answer with its job, the
/// write-back queue (only once the job has ended), an attempt recorded, the prune.
#[tokio::test]
async fn delivery_rows_and_write_back_queue_on_postgres() {
    use crate::support::pg::PgDb;
    use sessiongate::audit::{
        sql::Db,
        work::{AnswerTable, DeliveryDone, NewItem, NewJob, WorkStore},
    };
    let Some(db) = PgDb::create("webhook_rows").await else {
        return;
    };
    // Open (and migrate) the store once through the gateway's own start-up.
    let demo = crate::support::app::Demo::start_unthrottled().await;
    let cfg = demo.config("127.0.0.1:0", Some(&db.url), Some("gw-r"));
    let mut gw = InProc::start(&cfg).await;
    gw.stop().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let w = WorkStore::new(Db::Postgres(pool.clone()));
    w.insert_job(&NewJob {
        id: "job-1".into(),
        kind: "webhook.logoff".into(),
        created_by: "webhook:sn".into(),
        context: "{}".into(),
        created_us: 10,
        items: vec![NewItem {
            request: "null".into(),
            answered: Some(("done".into(), "{}".into())),
        }],
    })
    .await
    .unwrap();
    let t = AnswerTable::Webhooks;
    assert!(
        w.answer_insert(t, "sn", "d-1", "delivery", 20)
            .await
            .unwrap()
    );
    assert!(
        !w.answer_insert(t, "sn", "d-1", "delivery", 21)
            .await
            .unwrap()
    );
    w.delivery_complete(&DeliveryDone {
        source: "sn",
        delivery_id: "d-1",
        created_us: 20,
        status: 202,
        headers: "[]",
        body: b"{}",
        job_id: Some("job-1"),
        ticket: Some("INC1"),
        ticket_id: Some("abc"),
        write_back: "pending",
        now_us: 22,
    })
    .await
    .unwrap();
    let row = w.answer_get(t, "sn", "d-1").await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.status), ("done", Some(202)));
    // The job is still queued: nothing to write back yet.
    assert!(w.pending_write_backs(10, 100).await.unwrap().is_empty());
    let claimed = w.claim("r1", i64::MAX / 2, 30).await.unwrap().unwrap();
    assert_eq!(claimed.id, "job-1");
    assert!(w.finish_job("job-1", "r1", "succeeded", 40).await.unwrap());
    let pending = w.pending_write_backs(10, 100).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].ticket_id.as_deref(), Some("abc"));
    // Claims: one runner at a time; the other's record is refused; a retry delay hides the
    // delivery until it is over; an expired claim can be taken over.
    let claim = |owner: &'static str, until: i64, now: i64| {
        w.claim_write_back("sn", "d-1", owner, until, now)
    };
    assert_eq!(claim("r1", 200, 100).await.unwrap(), Some(0));
    assert_eq!(claim("r2", 300, 150).await.unwrap(), None);
    assert!(w.pending_write_backs(10, 150).await.unwrap().is_empty());
    assert!(
        !w.record_write_back_by("sn", "d-1", Some("r2"), "done", None, 160, None)
            .await
            .unwrap()
    );
    assert!(
        w.record_write_back_by(
            "sn",
            "d-1",
            Some("r1"),
            "pending",
            Some("429"),
            170,
            Some(400)
        )
        .await
        .unwrap()
    );
    assert!(w.pending_write_backs(10, 399).await.unwrap().is_empty());
    assert_eq!(claim("r2", 900, 399).await.unwrap(), None);
    assert_eq!(w.pending_write_backs(10, 401).await.unwrap().len(), 1);
    assert_eq!(
        claim("r2", 900, 401).await.unwrap(),
        Some(1),
        "r1's recorded attempt counts"
    );
    // r2 dies holding it: after its claim ends, r1 takes it over.
    assert_eq!(claim("r1", 2000, 901).await.unwrap(), Some(1));
    assert!(
        w.record_write_back("sn", "d-1", "failed", Some("403 ACL"), 50)
            .await
            .unwrap()
    );
    assert!(w.pending_write_backs(10, 100).await.unwrap().is_empty());
    let d = w.delivery_of_job("job-1").await.unwrap().unwrap();
    assert_eq!(
        (d.write_back.as_str(), d.write_back_attempts),
        ("failed", 2)
    );
    assert_eq!(w.answer_prune(t, 21).await.unwrap(), 1);
    assert!(w.delivery("sn", "d-1").await.unwrap().is_none());
    pool.close().await;
    drop(db);
}
