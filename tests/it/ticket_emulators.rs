//! Contract tests of the ServiceNow and Jira emulators over loopback HTTPS: authentication
//! refused with each system's error body, the Table API's query, fields, limit and journal
//! fields, OAuth, the rate limits' 429 headers, ADF validation and comment paging, and the
//! webhooks each system sends.

use crate::support::{
    client_trusting,
    ticketing::{Receiver, jira, servicenow},
};
use serde_json::{Value, json};
use sessiongate::emulator::{
    jira::{AdminWebhook, WriteLimit},
    servicenow::{NotifyOptions, RateLimit},
};
use sessiongate::webhooks::signature::hub_verify;

const SN_ERROR_KEYS: [&str; 2] = ["error", "status"];

fn assert_sn_error(v: &Value, message: &str) {
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, SN_ERROR_KEYS, "{v}");
    assert_eq!(v["status"], "failure");
    assert_eq!(v["error"]["message"], message, "{v}");
    assert!(v["error"].get("detail").is_some(), "{v}");
}

#[tokio::test]
async fn servicenow_refuses_missing_and_wrong_credentials_with_its_error_body() {
    let (emu, tls) = servicenow().await;
    let http = client_trusting(tls.tls.ca_pem());
    let url = format!("{}/api/now/table/incident", emu.base_url());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_sn_error(&r.json().await.unwrap(), "User Not Authenticated");
    let r = http
        .get(&url)
        .basic_auth(&emu.info().user, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_sn_error(&r.json().await.unwrap(), "User is not authenticated");
    let r = http.get(&url).bearer_auth("forged").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let calls = emu.state().calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.user.is_none() && c.status == 401));
}

#[tokio::test]
async fn servicenow_table_api_reads_with_query_fields_and_limit() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let http = client_trusting(tls.tls.ca_pem());
    let get = |path: String| {
        http.get(format!("{}{path}", emu.base_url()))
            .basic_auth(&info.user, Some(&info.password))
            .send()
    };
    let sys_id = info.incidents["INC0010002"].clone();
    assert_eq!(sys_id.len(), 32);
    for v in ["", "/v2"] {
        let r = get(format!(
            "/api/now{v}/table/incident?sysparm_query=number=INC0010002^active=true&sysparm_fields=sys_id,number&sysparm_limit=1"
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({"result": [{"number": "INC0010002", "sys_id": sys_id}]})
        );
    }
    // All incidents, limited; the total is in X-Total-Count.
    let r = get("/api/now/table/incident?sysparm_limit=2".into())
        .await
        .unwrap();
    assert_eq!(
        crate::support::header(&r, "x-total-count").as_deref(),
        Some("3")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["result"][0]["caller_id"]["value"]
            .as_str()
            .unwrap()
            .len(),
        32
    );
    // One record; unknown record, unknown table.
    let r = get(format!("/api/now/table/incident/{sys_id}"))
        .await
        .unwrap();
    let one: Value = r.json().await.unwrap();
    assert_eq!(one["result"]["number"], "INC0010002");
    assert_eq!(one["result"]["approval"], "approved");
    let r = get(format!("/api/now/table/incident/{}", "0".repeat(32)))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_sn_error(&r.json().await.unwrap(), "No Record found");
    let r = get("/api/now/table/u_nope".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_sn_error(&r.json().await.unwrap(), "Invalid table u_nope");
    // A term the emulator cannot read matches nothing (glide.invalid_query.returns_no_rows).
    let r = get("/api/now/table/incident?sysparm_query=numberINC".into())
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["result"], json!([]));
}

#[tokio::test]
async fn servicenow_journal_fields_append_entries() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let http = client_trusting(tls.tls.ca_pem());
    let sys_id = info.incidents["INC0010001"].clone();
    let url = format!("{}/api/now/table/incident/{sys_id}", emu.base_url());
    let patch = |body: Value| {
        http.patch(&url)
            .basic_auth(&info.user, Some(&info.password))
            .json(&body)
            .send()
    };
    let r = patch(json!({"work_notes": "first note", "state": "2"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["result"]["work_notes"], "",
        "journal fields read back empty"
    );
    assert_eq!(v["result"]["state"], "2");
    assert_eq!(v["result"]["sys_updated_by"], info.user.as_str());
    patch(json!({"work_notes": "second note"})).await.unwrap();
    let r = http
        .put(&url)
        .basic_auth(&info.user, Some(&info.password))
        .header("X-no-response-body", "true")
        .json(&json!({"comments": "for the caller"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty(), "X-no-response-body");
    let j = emu.state().journal(&sys_id);
    let got: Vec<(&str, &str)> = j
        .iter()
        .map(|e| (e.field.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("work_notes", "first note"),
            ("work_notes", "second note"),
            ("comments", "for the caller")
        ]
    );
    assert!(j.iter().all(|e| e.author == info.user && !e.at.is_empty()));
    // The entries are rows of sys_journal_field, readable through the Table API.
    let r = http
        .get(format!(
            "{}/api/now/table/sys_journal_field?sysparm_query=element_id={sys_id}^element=work_notes",
            emu.base_url()
        ))
        .basic_auth(&info.user, Some(&info.password))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["result"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A body that is not JSON.
    let r = http
        .patch(&url)
        .basic_auth(&info.user, Some(&info.password))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_sn_error(&r.json().await.unwrap(), "Exception while reading request");
    assert_eq!(emu.state().journal(&sys_id).len(), 3);
}

#[tokio::test]
async fn servicenow_oauth_issues_bearer_tokens_for_both_grants() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let http = client_trusting(tls.tls.ca_pem());
    let token = |form: Vec<(&'static str, String)>| http.post(&info.token_url).form(&form).send();
    let r = token(vec![
        ("grant_type", "password".into()),
        ("client_id", info.client_id.clone()),
        ("client_secret", info.client_secret.clone()),
        ("username", info.user.clone()),
        ("password", info.password.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 1799);
    assert!(v["refresh_token"].is_string());
    let r = token(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", info.client_id.clone()),
        ("client_secret", info.client_secret.clone()),
    ])
    .await
    .unwrap();
    let v: Value = r.json().await.unwrap();
    let access = v["access_token"].as_str().unwrap().to_string();
    let r = http
        .get(format!(
            "{}/api/now/table/incident?sysparm_limit=1",
            emu.base_url()
        ))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = token(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", info.client_id.clone()),
        ("client_secret", "wrong".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error_description": "access_denied", "error": "server_error"})
    );
}

#[tokio::test]
async fn servicenow_rate_limit_answers_429_with_its_headers() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    emu.state().set_rate_limit(Some(RateLimit {
        limit: 2,
        window_secs: 3600,
    }));
    let http = client_trusting(tls.tls.ca_pem());
    let url = format!("{}/api/now/table/incident?sysparm_limit=1", emu.base_url());
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            http.get(&url)
                .basic_auth(&info.user, Some(&info.password))
                .send()
                .await
                .unwrap(),
        );
    }
    let r = last.unwrap();
    assert_eq!(r.status(), 429);
    let h = |n: &str| crate::support::header(&r, n).unwrap_or_else(|| panic!("{n}"));
    let retry: u64 = h("retry-after").parse().unwrap();
    assert!((3000..=3600).contains(&retry), "{retry}");
    assert_eq!(h("x-ratelimit-limit"), "2");
    let reset: i64 = h("x-ratelimit-reset").parse().unwrap();
    assert!(reset > time::OffsetDateTime::now_utc().unix_timestamp());
    assert!(!h("x-ratelimit-rule").is_empty());
    assert_sn_error(&r.json().await.unwrap(), "Rate limit exceeded");
    // Injected failures: the next call 403 (an ACL), then normal again.
    emu.state().set_rate_limit(None);
    emu.state().fail_next(1, 403, 0);
    let r = http
        .get(&url)
        .basic_auth(&info.user, Some(&info.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(&url)
        .basic_auth(&info.user, Some(&info.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn servicenow_sends_the_business_rule_webhook() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let rx = Receiver::start(&[]).await;
    let http = client_trusting(tls.tls.ca_pem());
    let r = http
        .post(format!("{}/_emulator/notify/INC0010001", emu.base_url()))
        .json(&json!({
            "url": rx.url,
            "api_key_header": "X-API-Key",
            "api_key": "sg_test_key",
            "hmac_secret": "shared-secret",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["status"], 202);
    let got = rx.received();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.header("x-api-key"), Some("sg_test_key"));
    assert_eq!(d.header("user-agent"), Some("ServiceNow/1.0"));
    hub_verify(
        &[b"shared-secret".to_vec()],
        d.header("x-servicenow-signature"),
        &d.body,
    )
    .unwrap();
    let body = d.json();
    assert_eq!(body["number"], "INC0010001");
    assert_eq!(body["sys_id"], info.incidents["INC0010001"].as_str());
    assert_eq!(body["caller_upn"], "alice@contoso.com");
    assert_eq!(body["requested_action"], "logoff");
    assert_eq!(body["approval"], "approved");
    assert_eq!(
        d.header("x-servicenow-delivery"),
        body["delivery_id"].as_str()
    );

    // In-process, with a bearer token and a chosen delivery id (a duplicate delivery).
    let o = emu
        .state()
        .notify(
            "INC0010002",
            &NotifyOptions {
                url: rx.url.clone(),
                bearer_token: Some("tok".into()),
                delivery_id: Some("dup-1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(o.delivery_id, "dup-1");
    assert_eq!(rx.received()[1].header("authorization"), Some("Bearer tok"));
    // Never anywhere but loopback.
    let err = emu
        .state()
        .notify(
            "INC0010001",
            &NotifyOptions {
                url: "https://example.com/hook".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.contains("loopback"), "{err}");
}

fn jira_error_keys(v: &Value) {
    assert!(v["errorMessages"].is_array(), "{v}");
    assert!(v["errors"].is_object(), "{v}");
}

#[tokio::test]
async fn jira_refuses_bad_credentials_and_unknown_issues() {
    let (emu, tls) = jira().await;
    let info = emu.info();
    let http = client_trusting(tls.tls.ca_pem());
    let url = format!("{}/rest/api/3/issue/HELP-1", emu.base_url());
    for r in [
        http.get(&url).send().await.unwrap(),
        http.get(&url)
            .basic_auth(&info.email, Some("wrong"))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        jira_error_keys(&v);
        assert_eq!(
            v["errorMessages"][0],
            "Client must be authenticated to access this resource."
        );
    }
    let r = http
        .get(&url)
        .basic_auth(&info.email, Some(&info.api_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["key"], "HELP-1");
    assert_eq!(v["fields"]["reporter"]["emailAddress"], "alice@contoso.com");
    let r = http
        .post(format!(
            "{}/rest/api/3/issue/HELP-99/comment",
            emu.base_url()
        ))
        .basic_auth(&info.email, Some(&info.api_token))
        .json(&json!({"body": {"type": "doc", "version": 1, "content": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    jira_error_keys(&v);
    assert_eq!(
        v["errorMessages"][0],
        "Issue does not exist or you do not have permission to see it."
    );
    let r = http
        .post(format!(
            "{}/rest/servicedeskapi/request/HELP-99/comment",
            emu.base_url()
        ))
        .basic_auth(&info.email, Some(&info.api_token))
        .json(&json!({"body": "x", "public": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["errorMessage"].is_string());
}

#[tokio::test]
async fn jira_comments_are_adf_validated_and_paged() {
    let (emu, tls) = jira().await;
    let info = emu.info();
    let http = client_trusting(tls.tls.ca_pem());
    let url = format!("{}/rest/api/3/issue/HELP-2/comment", emu.base_url());
    let post = |body: Value| {
        http.post(&url)
            .basic_auth(&info.email, Some(&info.api_token))
            .json(&body)
            .send()
    };
    for bad in [
        json!({"body": "plain text is API v2"}),
        json!({"body": {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text"}]}]}}),
        json!({"body": {"type": "doc", "version": 1, "content": [{"type": "bulletList", "content": [{"type": "paragraph"}]}]}}),
        json!({"body": {"type": "doc", "content": []}}),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"errorMessages": [], "errors": {"comment": "Comment body is not valid!"}}),
            "{bad}"
        );
    }
    assert!(emu.state().comments("HELP-2").is_empty());
    for i in 0..5 {
        let r = post(json!({"body": {"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": format!("note {i}")}, {"type": "hardBreak"}, {"type": "text", "text": "more"}]},
            {"type": "bulletList", "content": [{"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "item"}]}]}]},
            {"type": "codeBlock", "content": [{"type": "text", "text": "code"}]}
        ]}}))
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["author"]["emailAddress"], info.email.as_str());
        assert!(v["id"].is_string());
    }
    let r = http
        .get(format!("{url}?startAt=2&maxResults=2"))
        .basic_auth(&info.email, Some(&info.api_token))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["startAt"], 2);
    assert_eq!(v["maxResults"], 2);
    assert_eq!(v["total"], 5);
    let texts: Vec<&str> = v["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["body"]["content"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(texts, ["note 2", "note 3"]);
    let r = http
        .get(format!("{url}?startAt=-1"))
        .basic_auth(&info.email, Some(&info.api_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        emu.state().comments("HELP-2")[0].text,
        "note 0\nmore\nitem\ncode\n"
    );
}

#[tokio::test]
async fn jira_service_desk_comments_and_the_write_limit() {
    let (emu, tls) = jira().await;
    let info = emu.info();
    let http = client_trusting(tls.tls.ca_pem());
    let url = format!(
        "{}/rest/servicedeskapi/request/HELP-3/comment",
        emu.base_url()
    );
    let r = http
        .post(&url)
        .basic_auth(&info.email, Some(&info.api_token))
        .json(&json!({"body": "internal line 1\nline 2", "public": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["public"], false);
    assert_eq!(v["body"], "internal line 1\nline 2");
    let c = &emu.state().comments("HELP-3")[0];
    assert!(!c.public);
    assert_eq!(c.via, "servicedesk");
    let r = http
        .post(&url)
        .basic_auth(&info.email, Some(&info.api_token))
        .json(&json!({"body": "", "public": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    emu.state().set_write_limit(Some(WriteLimit {
        limit: 1,
        window_secs: 30,
    }));
    let send = || {
        http.post(&url)
            .basic_auth(&info.email, Some(&info.api_token))
            .json(&json!({"body": "x", "public": false}))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 201);
    let r = send().await.unwrap();
    assert_eq!(r.status(), 429);
    let h = |n: &str| crate::support::header(&r, n).unwrap_or_else(|| panic!("{n}"));
    let retry: u64 = h("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry));
    assert_eq!(h("ratelimit-reason"), "jira-per-issue-on-write");
    let reset = time::OffsetDateTime::parse(
        &h("x-ratelimit-reset"),
        &time::format_description::well_known::Iso8601::DEFAULT,
    )
    .unwrap();
    assert!(reset > time::OffsetDateTime::now_utc());
    // Another issue has its own limit.
    let r = http
        .post(format!(
            "{}/rest/servicedeskapi/request/HELP-1/comment",
            emu.base_url()
        ))
        .basic_auth(&info.email, Some(&info.api_token))
        .json(&json!({"body": "x", "public": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn jira_admin_webhook_is_signed_and_retried_with_one_identifier() {
    let (emu, tls) = jira().await;
    emu.state().set_status("HELP-1", "Approved");
    let rx = Receiver::start(&[503, 200]).await;
    let d = emu
        .state()
        .send_admin_webhook(
            "HELP-1",
            &AdminWebhook {
                url: rx.url.clone(),
                secret: Some("jira-secret".into()),
                max_retries: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(d.statuses, [503, 200]);
    let got = rx.received();
    assert_eq!(got.len(), 2);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.header("x-atlassian-webhook-identifier"),
            Some(d.identifier.as_str())
        );
        assert_eq!(
            g.header("x-atlassian-webhook-retry"),
            (i > 0).then_some("1")
        );
        hub_verify(
            &[b"jira-secret".to_vec()],
            g.header("x-hub-signature"),
            &g.body,
        )
        .unwrap();
    }
    let body = got[0].json();
    assert_eq!(body["webhookEvent"], "jira:issue_updated");
    assert_eq!(body["issue"]["key"], "HELP-1");
    assert_eq!(body["issue"]["fields"]["status"]["name"], "Approved");
    assert_eq!(
        body["issue"]["fields"]["reporter"]["emailAddress"],
        "alice@contoso.com"
    );
    assert_eq!(body["changelog"]["items"][0]["toString"], "Approved");
    assert!(body["timestamp"].as_i64().unwrap() > 1_700_000_000_000);

    // Automation "Send web request": the rule's headers and body, unsigned.
    let (status, _) = emu
        .state()
        .send_automation(
            "HELP-2",
            &rx.url,
            &[("X-API-Key".into(), "sg_key".into())],
            r#"{"issue":"{{issue.key}}","upn":"{{issue.reporter.emailAddress}}","action":"{{issue.customfield_10100}}"}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 202);
    let a = &rx.received()[2];
    assert_eq!(a.header("x-api-key"), Some("sg_key"));
    assert!(a.header("x-hub-signature").is_none());
    assert_eq!(
        a.json(),
        json!({"issue": "HELP-2", "upn": "bob@contoso.com", "action": "logoff"})
    );

    // The same over the emulator's own routes (what the demo's curl lines use).
    let http = client_trusting(tls.tls.ca_pem());
    let r = http
        .post(format!("{}/_emulator/webhook/HELP-3", emu.base_url()))
        .json(&json!({"url": rx.url, "secret": "jira-secret", "identifier": "fixed-id"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["identifier"], "fixed-id");
    assert_eq!(v["statuses"], json!([202]));
    let w = &rx.received()[3];
    assert_eq!(w.header("x-atlassian-webhook-identifier"), Some("fixed-id"));
    hub_verify(
        &[b"jira-secret".to_vec()],
        w.header("x-hub-signature"),
        &w.body,
    )
    .unwrap();
    let r = http
        .post(format!("{}/_emulator/automation/HELP-3", emu.base_url()))
        .json(&json!({"url": rx.url, "headers": {"Authorization": "Bearer t"}, "body": "{\"k\":\"{{issue.key}}\"}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], 202);
    assert_eq!(rx.received()[4].json(), json!({"k": "HELP-3"}));
    let r = http
        .post(format!("{}/_emulator/webhook/HELP-3", emu.base_url()))
        .json(&json!({"url": "https://example.com/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
