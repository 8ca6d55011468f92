//! The write-back runner (issue 13 part 5) end to end over loopback: a delivery from each
//! source kind logs a session off at the ARM emulator, and when its job ends the result is
//! written to the emulated ServiceNow incident (work note), the emulated Jira issue (ADF
//! comment) or a generic callback (signed with Standard Webhooks); `GET /jobs/{id}` and the
//! audit log show each attempt. A duplicate delivery writes nothing new. A throttled attempt is
//! tried again after its `Retry-After`; a missing ticket fails at once; an instance that stays
//! throttled is given up after `write_back_attempts`; a 5xx answering the write itself (it may
//! have been written) is never sent again.
//! Run: `cargo nextest run --test it webhooks_writeback::`

use crate::fleet_jobs::{ended, wait_job};
use crate::support::app::{ARM_POOL, AVD_POOL, TestApp};
use crate::support::ticketing::{Receiver, jira, servicenow};
use crate::webhooks::{accepted, events_of, post_raw, sn_headers};
use serde_json::{Value, json};
use sessiongate::{
    emulator::arm::ArmOp,
    webhooks::signature::{decode_standard_secret, hub_sign, standard_sign, standard_verify},
};
use std::path::Path;
use std::time::Duration;

const SN_KEY: &str = "servicenow-key-0123456789";
const JIRA_SECRET: &str = "jira-admin-webhook-secret";
const GEN_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CALLBACK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    p.display().to_string()
}

/// The mapping every source here uses: one session named in the body.
const MAPPING: &str = r#"pool = "/pool"
host = "/host"
session_id = "/session""#;

fn sn_source(
    dir: &Path,
    sn: &sessiongate::emulator::servicenow::ServiceNowInfo,
    ca: &Path,
) -> String {
    let password = file(dir, "sn-password", &sn.password);
    let hash = sessiongate::auth::apikey::hash_key(SN_KEY);
    format!(
        r#"
[[sources]]
name = "snwb"
kind = "servicenow"
api_key_header = "X-Sessiongate-Key"
api_key_hashes = ["{hash}"]
delivery_id = "/delivery"
roles = ["operator"]
[sources.mapping]
{MAPPING}
ticket = "/number"
ticket_id = "/sys_id"
[sources.write_back]
kind = "servicenow"
instance_url = "{url}"
ca_bundle = {ca:?}
max_retries = 0
retry_budget_secs = 1
auth = {{ kind = "basic", user = "{user}", password_file = {password:?} }}
"#,
        url = sn.instance_url,
        user = sn.user,
    )
}

/// A session of `user` on the first ARM host.
fn session(app: &TestApp, user: &str) -> (String, u32) {
    let arm = app.arm();
    let host = arm.hosts(ARM_POOL)[0].clone();
    let id = arm.add_session(ARM_POOL, &host, user).unwrap();
    (host, id)
}

fn target(host: &str, id: u32) -> Value {
    json!({"pool": AVD_POOL, "host": host, "session": id})
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

async fn send_sn(app: &TestApp, body: &Value) -> reqwest::Response {
    let b = serde_json::to_vec(body).unwrap();
    post_raw(app, "snwb", &sn_headers(&b, Some(SN_KEY), None), b).await
}

/// Waits until the job's write-back is no longer pending, and returns the job.
async fn written(app: &TestApp, job_id: &str) -> Value {
    wait_job(app, &app.keys.auditor, job_id, |j| {
        ended(j) && j["write_back"]["state"] != "pending"
    })
    .await
}

/// Delivers a logoff of a fresh session of `user` for ServiceNow record (`number`, `sys_id`)
/// as delivery `delivery`; returns the job once its write-back is no longer pending, and the
/// delivery's request id.
async fn deliver_sn(
    app: &TestApp,
    user: &str,
    delivery: &str,
    number: &str,
    sys_id: &str,
) -> (Value, String) {
    let (host, id) = session(app, user);
    let body = with(
        target(&host, id),
        json!({"delivery": delivery, "number": number, "sys_id": sys_id}),
    );
    let (v, rid) = accepted(send_sn(app, &body).await).await;
    (written(app, v["job_id"].as_str().unwrap()).await, rid)
}

/// The job's write-back: its state, attempts, and that its detail contains `detail`.
fn assert_write_back(j: &Value, state: &str, attempts: u32, detail: &str) {
    assert_eq!(j["write_back"]["state"], state, "{j}");
    assert_eq!(j["write_back"]["attempts"], attempts, "{j}");
    assert!(
        j["write_back"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(detail),
        "{j}"
    );
}

/// The `webhook.write_back` audit events of one delivery, oldest first.
async fn write_back_events(app: &TestApp, delivery: &str) -> Vec<Value> {
    let v: Value = app
        .get(
            &app.keys.auditor,
            "/audit?action=webhook.write_back&limit=1000",
        )
        .await
        .json()
        .await
        .unwrap();
    let mut evs: Vec<Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["params"]["delivery_id"] == delivery)
        .cloned()
        .collect();
    evs.sort_by_key(|e| e["seq"].as_i64().unwrap_or(0));
    evs
}

#[tokio::test]
async fn each_kind_of_ticket_gets_the_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let (sn, sn_tls) = servicenow().await;
    let (jr, jira_tls) = jira().await;
    let receiver = Receiver::start(&[]).await;
    let sn_info = sn.info();
    let jira_info = jr.info();
    let p = dir.path().to_path_buf();
    let toml_text = format!(
        r#"{sn_src}
[[sources]]
name = "jirawb"
kind = "jira"
secrets = [{{ file = {jira_secret:?} }}]
roles = ["operator"]
[sources.mapping]
{MAPPING}
ticket = "/issue/key"
[sources.write_back]
kind = "jira"
site_url = "{site}"
ca_bundle = {jira_ca:?}
email = "{email}"
api_token_file = {token:?}

[[sources]]
name = "genwb"
kind = "generic"
secrets = [{{ file = {gen:?} }}]
roles = ["operator"]
[sources.mapping]
{MAPPING}
ticket = "/ticket"
[sources.write_back]
kind = "callback"
url = "{callback}"
secret_file = {cb:?}
"#,
        sn_src = sn_source(&p, &sn_info, &sn_tls.ca_path),
        jira_secret = file(&p, "jira-secret", JIRA_SECRET),
        site = jira_info.site_url,
        jira_ca = jira_tls.ca_path,
        email = jira_info.email,
        token = file(&p, "jira-token", &jira_info.api_token),
        gen = file(&p, "gen-secret", GEN_SECRET),
        callback = receiver.url,
        cb = file(&p, "callback-secret", CALLBACK_SECRET),
    );
    let app = TestApp::start_with(move |c| {
        c.webhooks = toml::from_str(&toml_text).expect("webhooks config");
    })
    .await;
    let arm = app.arm();
    let logoffs = arm.calls(ArmOp::Logoff);

    // ServiceNow, by sys_id: a work note naming the job and the session.
    let incident = sn_info.incidents["INC0010001"].clone();
    let (host, id) = session(&app, "wb.sn@contoso.com");
    let body = with(
        target(&host, id),
        json!({"delivery": "wb-sn-1", "number": "INC0010001", "sys_id": incident}),
    );
    let (v, _) = accepted(send_sn(&app, &body).await).await;
    let job_id = v["job_id"].as_str().unwrap().to_string();
    let j = written(&app, &job_id).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["write_back"]["state"], "done", "{j}");
    assert_eq!(j["write_back"]["attempts"], 1, "{j}");
    let notes = sn.state().journal(&incident);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].field, "work_notes");
    assert!(notes[0].value.contains(&job_id), "{}", notes[0].value);
    let line = format!("{host} session {id} (wb.sn@contoso.com): done");
    assert!(notes[0].value.contains(&line), "{}", notes[0].value);
    let evs = write_back_events(&app, "wb-sn-1").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["outcome"], "done");
    assert_eq!(evs[0]["actor"]["id"], "system");
    assert_eq!(evs[0]["params"]["job_id"], job_id.as_str());
    assert_eq!(evs[0]["params"]["ticket"], "INC0010001");

    // Jira admin webhook: an ADF comment on the issue.
    let (host2, id2) = session(&app, "wb.jira@contoso.com");
    let key = jira_info.issues[0].clone();
    let b = serde_json::to_vec(&with(target(&host2, id2), json!({"issue": {"key": key}}))).unwrap();
    let h = [
        ("X-Hub-Signature", hub_sign(JIRA_SECRET.as_bytes(), &b)),
        ("X-Atlassian-Webhook-Identifier", "wb-jira-1".to_string()),
    ];
    let (v, _) = accepted(post_raw(&app, "jirawb", &h, b.clone()).await).await;
    let jira_job = v["job_id"].as_str().unwrap().to_string();
    let j = written(&app, &jira_job).await;
    assert_eq!(j["write_back"]["state"], "done", "{j}");
    let comments = jr.state().comments(&key);
    assert_eq!(comments.len(), 1, "{comments:?}");
    let adf = comments[0].body.to_string();
    assert!(adf.contains(&jira_job), "{adf}");
    assert!(adf.contains(&format!("{host2} session {id2}")), "{adf}");

    // Generic: the callback gets the report, signed with the callback secret.
    let (host3, id3) = session(&app, "wb.gen@contoso.com");
    let b = serde_json::to_vec(&with(target(&host3, id3), json!({"ticket": "REQ-9"}))).unwrap();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let key_bytes = decode_standard_secret(GEN_SECRET).unwrap();
    let h = [
        ("webhook-id", "wb-gen-1".to_string()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            standard_sign(&key_bytes, "wb-gen-1", ts, &b),
        ),
    ];
    let (v, _) = accepted(post_raw(&app, "genwb", &h, b).await).await;
    let gen_job = v["job_id"].as_str().unwrap().to_string();
    let j = written(&app, &gen_job).await;
    assert_eq!(j["write_back"]["state"], "done", "{j}");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    standard_verify(
        &[decode_standard_secret(CALLBACK_SECRET).unwrap()],
        got[0].header("webhook-id"),
        got[0].header("webhook-timestamp"),
        got[0].header("webhook-signature"),
        &got[0].body,
        time::OffsetDateTime::now_utc().unix_timestamp(),
        300,
    )
    .expect("the callback is signed with the callback secret");
    let report = got[0].json();
    assert_eq!(
        report["data"]["report"]["job_id"],
        gen_job.as_str(),
        "{report}"
    );
    assert_eq!(report["data"]["ticket"]["number"], "REQ-9", "{report}");
    assert_eq!(arm.calls(ArmOp::Logoff), logoffs + 3);

    // A duplicate of the ServiceNow delivery: the same job, no second logoff, no second note.
    let (again, _) = accepted(send_sn(&app, &body).await).await;
    assert_eq!(again["job_id"], job_id.as_str());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sn.state().journal(&incident).len(), 1);
    assert_eq!(write_back_events(&app, "wb-sn-1").await.len(), 1);
    assert_eq!(arm.calls(ArmOp::Logoff), logoffs + 3);
    assert_eq!(jr.state().comments(&key).len(), 1);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn throttled_write_backs_are_retried_and_permanent_failures_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (sn, sn_tls) = servicenow().await;
    let info = sn.info();
    let toml_text = sn_source(dir.path(), &info, &sn_tls.ca_path);
    let app = TestApp::start_with(move |c| {
        c.webhooks = toml::from_str(&toml_text).expect("webhooks config");
        c.webhooks.write_back_retry_secs = 1;
        c.webhooks.write_back_attempts = 2;
    })
    .await;
    let incident = info.incidents["INC0010001"].clone();

    // 429 asking for 2 s, beyond the target's retry budget (1 s): the attempt ends
    // `ticket_throttled`, the runner tries again after the Retry-After (longer than
    // write_back_retry_secs = 1) and the note is written once.
    sn.state().fail_next(1, 429, 2);
    let (j, _) = deliver_sn(
        &app,
        "wb.retry@contoso.com",
        "wb-retry",
        "INC0010001",
        &incident,
    )
    .await;
    assert_write_back(&j, "done", 2, "written to servicenow");
    let waited = time::OffsetDateTime::parse(
        j["write_back"]["updated"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
        - time::OffsetDateTime::parse(
            j["finished"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    assert!(
        waited >= time::Duration::seconds(2),
        "retried after {waited}"
    );
    assert_eq!(sn.state().journal(&incident).len(), 1);
    let evs = write_back_events(&app, "wb-retry").await;
    let outcomes: Vec<&str> = evs.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["pending", "done"], "{evs:?}");
    assert!(
        evs[0]["params"]["detail"]
            .as_str()
            .unwrap()
            .contains("ticket_throttled"),
        "{evs:?}"
    );

    // A record that does not exist: failed at the first attempt, with the system's code.
    let missing = "0123456789abcdef0123456789abcdef";
    let (j, _) = deliver_sn(
        &app,
        "wb.missing@contoso.com",
        "wb-missing",
        "INC0999999",
        missing,
    )
    .await;
    assert_eq!(j["state"], "succeeded", "the logoff itself worked: {j}");
    assert_write_back(&j, "failed", 1, "ticket_not_found");
    let evs = write_back_events(&app, "wb-missing").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["error_code"], "write_back_failed");

    // Still throttled at the second attempt: given up after write_back_attempts (2).
    sn.state().fail_next(2, 429, 2);
    let (j, _) = deliver_sn(
        &app,
        "wb.busy@contoso.com",
        "wb-busy",
        "INC0010001",
        &incident,
    )
    .await;
    assert_write_back(&j, "failed", 2, "gave up after 2 attempts");
    // A 503 answering the PATCH itself: it may have been written, so it is never sent again.
    sn.state().fail_next(1, 503, 0);
    let (j, rid) = deliver_sn(
        &app,
        "wb.down@contoso.com",
        "wb-down",
        "INC0010001",
        &incident,
    )
    .await;
    assert_write_back(&j, "failed", 1, "may have been made");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sn.state().journal(&incident).len(),
        1,
        "nothing more written"
    );
    // The delivery's own audit events name the source and the delivery.
    let evs = events_of(&app, &rid).await;
    assert!(
        evs.iter().any(|e| e["params"]["delivery_id"] == "wb-down"),
        "{evs:?}"
    );
}
