//! The ticket write-back client against the ServiceNow and Jira emulators and a loopback
//! callback receiver: each kind writes the job id and every item; a ServiceNow number is
//! looked up first; a 429 with `Retry-After: 1` is waited out once; permanent failures are not
//! retried and carry their code and the system's message; the callback's signature verifies.

use crate::support::{
    TlsFiles,
    ticketing::{Receiver, jira, servicenow},
};
use sessiongate::config::Key;
use sessiongate::ticketing::{
    TicketRef, WriteBack, WriteBackConfig, WriteBackItem, WriteBackReport, write_back,
};
use sessiongate::webhooks::signature::{decode_standard_secret, standard_verify};
use std::time::{Duration, Instant};

fn report() -> WriteBackReport {
    let at = time::OffsetDateTime::now_utc();
    WriteBackReport {
        job_id: format!("job-{}", uuid::Uuid::new_v4().simple()),
        action: Some("logoff".into()),
        state: "partial".into(),
        items: vec![
            WriteBackItem {
                host: "rdsh-01.contoso.com".into(),
                session: Some(2),
                user: Some("alice@contoso.com".into()),
                outcome: "succeeded".into(),
                at,
                error_code: None,
            },
            WriteBackItem {
                host: "rdsh-02.contoso.com".into(),
                session: Some(5),
                user: Some("alice@contoso.com".into()),
                outcome: "failed".into(),
                at,
                error_code: Some("host_unreachable".into()),
            },
        ],
    }
}

/// Every line a reader must find: the job id and one line per item.
fn assert_shows(text: &str, r: &WriteBackReport) {
    assert!(text.contains(&r.job_id), "{text}");
    assert!(
        text.contains("rdsh-01.contoso.com session 2 (alice@contoso.com): succeeded"),
        "{text}"
    );
    assert!(
        text.contains(
            "rdsh-02.contoso.com session 5 (alice@contoso.com): failed [host_unreachable]"
        ),
        "{text}"
    );
}

/// Writes `secret` to a file in `tls.dir` and builds the client from `toml` (where `{secret}`
/// is the file's path and `{ca}` the CA bundle).
fn client(tls: &TlsFiles, toml_text: &str, secret: &str) -> WriteBack {
    let f = tls
        .dir
        .path()
        .join(format!("secret-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&f, format!("{secret}\n")).unwrap();
    let text = toml_text
        .replace("{secret}", &f.display().to_string())
        .replace("{ca}", &tls.ca_path.display().to_string());
    let cfg: WriteBackConfig = toml::from_str(&text).unwrap();
    WriteBack::new(&cfg, &Key::root("write_back")).unwrap()
}

fn sn_basic(url: &str, user: &str, extra: &str) -> String {
    format!(
        "kind = \"servicenow\"\ninstance_url = \"{url}\"\nca_bundle = \"{{ca}}\"\n{extra}\nauth = {{ kind = \"basic\", user = \"{user}\", password_file = \"{{secret}}\" }}\n"
    )
}

#[tokio::test]
async fn servicenow_write_back_appends_a_work_note_by_sys_id() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let wb = client(
        &tls,
        &sn_basic(&info.instance_url, &info.user, ""),
        &info.password,
    );
    let sys_id = info.incidents["INC0010001"].clone();
    let r = report();
    let receipt = write_back(
        &wb,
        &TicketRef {
            sys_id: Some(sys_id.clone()),
            ..Default::default()
        },
        &r,
    )
    .await
    .unwrap();
    assert_eq!(receipt.kind, "servicenow");
    assert_eq!(receipt.target, sys_id);
    let j = emu.state().journal(&sys_id);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].field, "work_notes");
    assert_eq!(j[0].author, info.user);
    assert_shows(&j[0].value, &r);
    let calls = emu.state().calls();
    assert_eq!(calls.len(), 1, "no lookup with a sys_id");
    assert_eq!(calls[0].method, "PATCH");
}

#[tokio::test]
async fn servicenow_write_back_looks_up_the_sys_id_by_number() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let wb = client(
        &tls,
        &sn_basic(&info.instance_url, &info.user, "field = \"comments\""),
        &info.password,
    );
    let r = report();
    let receipt = wb
        .write_back(
            &TicketRef {
                number: Some("INC0010003".into()),
                ..Default::default()
            },
            &r,
        )
        .await
        .unwrap();
    let sys_id = info.incidents["INC0010003"].clone();
    assert_eq!(receipt.target, sys_id);
    let calls = emu.state().calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].method, "GET");
    assert_eq!(calls[0].path, "/api/now/table/incident");
    let q = calls[0].query.clone().unwrap();
    assert!(q.contains("sysparm_query=number%3DINC0010003"), "{q}");
    assert!(q.contains("sysparm_limit=1"), "{q}");
    assert_eq!(calls[1].method, "PATCH");
    assert_eq!(calls[1].path, format!("/api/now/table/incident/{sys_id}"));
    let j = emu.state().journal(&sys_id);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].field, "comments");
    assert_shows(&j[0].value, &r);

    // An unknown number: ticket_not_found, nothing written.
    let e = wb
        .write_back(
            &TicketRef {
                number: Some("INC0099999".into()),
                ..Default::default()
            },
            &r,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_not_found");
    assert!(e.message.contains("INC0099999"), "{e}");
    // A number that would change the query is refused before anything is sent.
    let before = emu.state().calls().len();
    let e = wb
        .write_back(
            &TicketRef {
                number: Some("INC0010001^ORnumber=INC0010002".into()),
                ..Default::default()
            },
            &r,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_reference_invalid");
    assert_eq!(emu.state().calls().len(), before);
}

#[tokio::test]
async fn servicenow_write_back_with_oauth_fetches_a_token_once() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let wb = client(
        &tls,
        &format!(
            "kind = \"servicenow\"\ninstance_url = \"{}\"\nca_bundle = \"{{ca}}\"\nauth = {{ kind = \"oauth\", client_id = \"{}\", client_secret_file = \"{{secret}}\" }}\n",
            info.instance_url, info.client_id
        ),
        &info.client_secret,
    );
    let sys_id = info.incidents["INC0010002"].clone();
    for _ in 0..2 {
        wb.write_back(
            &TicketRef {
                sys_id: Some(sys_id.clone()),
                ..Default::default()
            },
            &report(),
        )
        .await
        .unwrap();
    }
    let calls = emu.state().calls();
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths.iter().filter(|p| **p == "/oauth_token.do").count(),
        1,
        "{paths:?}"
    );
    assert_eq!(emu.state().journal(&sys_id).len(), 2);

    // A refused client secret: ticket_auth_failed with the endpoint's error code, no secret.
    let bad = client(
        &tls,
        &format!(
            "kind = \"servicenow\"\ninstance_url = \"{}\"\nca_bundle = \"{{ca}}\"\nauth = {{ kind = \"oauth\", client_id = \"{}\", client_secret_file = \"{{secret}}\" }}\n",
            info.instance_url, info.client_id
        ),
        "wrong-client-secret",
    );
    let e = bad
        .write_back(
            &TicketRef {
                sys_id: Some(sys_id.clone()),
                ..Default::default()
            },
            &report(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_auth_failed");
    assert!(e.message.contains("access_denied"), "{e}");
    assert!(!e.message.contains("wrong-client-secret"));
    assert_eq!(emu.state().journal(&sys_id).len(), 2);
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_once() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let wb = client(
        &tls,
        &sn_basic(&info.instance_url, &info.user, ""),
        &info.password,
    );
    let sys_id = info.incidents["INC0010001"].clone();
    emu.state().fail_next(1, 429, 1);
    let started = Instant::now();
    wb.write_back(
        &TicketRef {
            sys_id: Some(sys_id.clone()),
            ..Default::default()
        },
        &report(),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited Retry-After"
    );
    let calls = emu.state().calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert!(calls[1].at.duration_since(calls[0].at) >= Duration::from_millis(950));
    assert_eq!(
        emu.state().journal(&sys_id).len(),
        1,
        "written exactly once"
    );
}

#[tokio::test]
async fn permanent_failures_are_not_retried_and_carry_the_systems_message() {
    let (emu, tls) = servicenow().await;
    let info = emu.info();
    let wb = client(
        &tls,
        &sn_basic(&info.instance_url, &info.user, ""),
        &info.password,
    );
    let sys_id = info.incidents["INC0010001"].clone();
    let t = TicketRef {
        sys_id: Some(sys_id.clone()),
        ..Default::default()
    };
    emu.state().fail_next(1, 403, 0);
    let e = wb.write_back(&t, &report()).await.unwrap_err();
    assert_eq!(e.code(), "ticket_forbidden");
    assert_eq!(e.status, Some(403));
    assert!(e.message.contains("ACL Exception Update Failed"), "{e}");
    assert_eq!(emu.state().calls().len(), 1, "not retried");

    let e = wb
        .write_back(
            &TicketRef {
                sys_id: Some("0".repeat(32)),
                ..Default::default()
            },
            &report(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_not_found");
    assert_eq!(e.status, Some(404));
    assert!(e.message.contains("No Record found"), "{e}");
    assert_eq!(emu.state().calls().len(), 2, "not retried");

    // Wrong password: ticket_auth_failed, and the password is nowhere in the error.
    let bad = client(
        &tls,
        &sn_basic(&info.instance_url, &info.user, ""),
        "not-the-password",
    );
    let e = bad.write_back(&t, &report()).await.unwrap_err();
    assert_eq!(e.code(), "ticket_auth_failed");
    assert!(e.message.contains("User is not authenticated"), "{e}");
    assert!(!format!("{e:?} {bad:?}").contains("not-the-password"));
    assert!(emu.state().journal(&sys_id).is_empty());
}

#[tokio::test]
async fn an_unreachable_system_is_reported_as_such() {
    let tls = TlsFiles::generate();
    let port = crate::support::free_port();
    let wb = client(
        &tls,
        &format!(
            "kind = \"jira\"\nsite_url = \"https://127.0.0.1:{port}\"\nca_bundle = \"{{ca}}\"\nemail = \"a@contoso.com\"\napi_token_file = \"{{secret}}\"\nmax_retries = 1\nretry_budget_secs = 5\n"
        ),
        "t",
    );
    let e = wb
        .write_back(
            &TicketRef {
                key: Some("HELP-1".into()),
                ..Default::default()
            },
            &report(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_unreachable", "{e}");
}

fn jira_toml(site: &str, email: &str, extra: &str) -> String {
    format!(
        "kind = \"jira\"\nsite_url = \"{site}\"\nca_bundle = \"{{ca}}\"\nemail = \"{email}\"\napi_token_file = \"{{secret}}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn jira_write_back_posts_an_adf_comment_or_a_service_desk_note() {
    let (emu, tls) = jira().await;
    let info = emu.info();
    let wb = client(
        &tls,
        &jira_toml(&info.site_url, &info.email, ""),
        &info.api_token,
    );
    let r = report();
    let receipt = wb
        .write_back(
            &TicketRef {
                key: Some("HELP-1".into()),
                ..Default::default()
            },
            &r,
        )
        .await
        .unwrap();
    assert_eq!(receipt.kind, "jira");
    assert_eq!(receipt.target, "HELP-1");
    assert_eq!(receipt.status, 201);
    let c = emu.state().comments("HELP-1");
    assert_eq!(c.len(), 1);
    assert_eq!(receipt.id.as_deref(), Some(c[0].id.as_str()));
    assert_eq!(c[0].via, "api");
    assert!(!c[0].public, "an internal note by default");
    assert_eq!(c[0].body["content"][0]["type"], "heading");
    assert_eq!(c[0].body["content"][2]["type"], "bulletList");
    assert_eq!(
        c[0].body["content"][2]["content"].as_array().unwrap().len(),
        2,
        "one list item per job item"
    );
    assert_shows(&c[0].text, &r);

    let sd = client(
        &tls,
        &jira_toml(
            &info.site_url,
            &info.email,
            "mode = \"servicedesk\"\npublic = true",
        ),
        &info.api_token,
    );
    sd.write_back(
        &TicketRef {
            number: Some("HELP-2".into()),
            ..Default::default()
        },
        &r,
    )
    .await
    .unwrap();
    let c = emu.state().comments("HELP-2");
    assert_eq!(c[0].via, "servicedesk");
    assert!(c[0].public);
    assert_shows(&c[0].text, &r);

    // Unknown issue and bad token: their codes, Jira's message, one call each.
    let before = emu.state().calls().len();
    let e = wb
        .write_back(
            &TicketRef {
                key: Some("HELP-404".into()),
                ..Default::default()
            },
            &r,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_not_found");
    assert!(e.message.contains("Issue does not exist"), "{e}");
    let bad = client(
        &tls,
        &jira_toml(&info.site_url, &info.email, ""),
        "wrong-token",
    );
    let e = bad
        .write_back(
            &TicketRef {
                key: Some("HELP-1".into()),
                ..Default::default()
            },
            &r,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ticket_auth_failed");
    assert!(e.message.contains("Client must be authenticated"), "{e}");
    assert_eq!(emu.state().calls().len(), before + 2);
}

#[tokio::test]
async fn jira_writes_to_one_issue_are_serialized_and_wait_out_the_write_limit() {
    let (emu, tls) = jira().await;
    let info = emu.info();
    let wb = std::sync::Arc::new(client(
        &tls,
        &jira_toml(&info.site_url, &info.email, ""),
        &info.api_token,
    ));
    emu.state()
        .set_write_limit(Some(sessiongate::emulator::jira::WriteLimit {
            limit: 1,
            window_secs: 1,
        }));
    let started = Instant::now();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let wb = wb.clone();
            tokio::spawn(async move {
                wb.write_back(
                    &TicketRef {
                        key: Some("HELP-3".into()),
                        ..Default::default()
                    },
                    &report(),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    let statuses: Vec<u16> = emu.state().calls().iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [201, 429, 201],
        "the second write waited Retry-After once"
    );
    assert_eq!(emu.state().comments("HELP-3").len(), 2);

    // Serialized: with 300 ms per answer, three writes to one issue take three turns.
    emu.state().set_write_limit(None);
    emu.state()
        .set_faults(sessiongate::emulator::common::FaultSettings {
            latency_ms: 300,
            ..Default::default()
        });
    let started = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let wb = wb.clone();
            tokio::spawn(async move {
                wb.write_back(
                    &TicketRef {
                        key: Some("HELP-2".into()),
                        ..Default::default()
                    },
                    &report(),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emu.state().comments("HELP-2").len(), 3);
}

#[tokio::test]
async fn callback_write_back_is_signed_with_standard_webhooks() {
    let tls = TlsFiles::generate();
    let rx = Receiver::start(&[503, 200]).await;
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let wb = client(
        &tls,
        &format!(
            "kind = \"callback\"\nurl = \"{}\"\nsecret_file = \"{{secret}}\"\n",
            rx.url
        ),
        secret,
    );
    let r = report();
    let t = TicketRef {
        number: Some("INC0010001".into()),
        ..Default::default()
    };
    let receipt = wb.write_back(&t, &r).await.unwrap();
    assert_eq!(receipt.kind, "callback");
    assert_eq!(receipt.status, 200);
    let got = rx.received();
    assert_eq!(got.len(), 2, "the 503 was retried");
    let key = decode_standard_secret(secret).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for g in &got {
        assert_eq!(g.header("webhook-id"), Some(receipt.target.as_str()));
        standard_verify(
            std::slice::from_ref(&key),
            g.header("webhook-id"),
            g.header("webhook-timestamp"),
            g.header("webhook-signature"),
            &g.body,
            now,
            300,
        )
        .unwrap();
    }
    let body = got[1].json();
    assert_eq!(body["type"], "sessiongate.job.finished");
    assert_eq!(body["data"]["ticket"]["number"], "INC0010001");
    assert_eq!(body["data"]["report"]["job_id"], r.job_id.as_str());
    assert_eq!(
        body["data"]["report"]["items"][1]["error_code"],
        "host_unreachable"
    );

    // A secret that is not whsec_/base64 is refused when the client is built, by its key.
    let f = tls.dir.path().join("not-whsec");
    std::fs::write(&f, "not base64 !!").unwrap();
    let cfg: WriteBackConfig = toml::from_str(&format!(
        "kind = \"callback\"\nurl = \"{}\"\nsecret_file = \"{}\"\n",
        rx.url,
        f.display()
    ))
    .unwrap();
    let e = WriteBack::new(&cfg, &Key::root("write_back")).unwrap_err();
    assert_eq!(e.key, "write_back.secret_file");

    // A wrong key does not verify.
    let other = decode_standard_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(
        standard_verify(
            &[other],
            got[1].header("webhook-id"),
            got[1].header("webhook-timestamp"),
            got[1].header("webhook-signature"),
            &got[1].body,
            now,
            300,
        )
        .is_err()
    );
    // 410 Gone: a permanent refusal, not retried.
    let gone = Receiver::start(&[410]).await;
    let wb = client(
        &tls,
        &format!(
            "kind = \"callback\"\nurl = \"{}\"\nsecret_file = \"{{secret}}\"\n",
            gone.url
        ),
        secret,
    );
    let e = wb.write_back(&t, &r).await.unwrap_err();
    assert_eq!(e.code(), "ticket_rejected");
    assert_eq!(e.status, Some(410));
    assert_eq!(gone.received().len(), 1);
}

#[tokio::test]
async fn a_rotated_credential_is_read_again_after_a_401() {
    let (emu, tls) = jira().await;
    let info = emu.info();
    let token_file = tls.dir.path().join("jira-token");
    std::fs::write(&token_file, "the-old-token\n").unwrap();
    let cfg: WriteBackConfig = toml::from_str(&format!(
        "kind = \"jira\"\nsite_url = \"{}\"\nca_bundle = \"{}\"\nemail = \"{}\"\napi_token_file = \"{}\"\n",
        info.site_url,
        tls.ca_path.display(),
        info.email,
        token_file.display()
    ))
    .unwrap();
    let wb = WriteBack::new(&cfg, &Key::root("write_back")).unwrap();
    let t = TicketRef {
        key: Some("HELP-1".into()),
        ..Default::default()
    };
    // Unchanged file: one 401, not repeated.
    let e = wb.write_back(&t, &report()).await.unwrap_err();
    assert_eq!(e.code(), "ticket_auth_failed");
    assert_eq!(emu.state().calls().len(), 1);
    // The operator rotates the token in the file: the next write-back reads it after its 401.
    std::fs::write(&token_file, format!("{}\n", info.api_token)).unwrap();
    wb.write_back(&t, &report()).await.unwrap();
    let statuses: Vec<u16> = emu.state().calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [401, 401, 201]);
    assert_eq!(emu.state().comments("HELP-1").len(), 1);
}
