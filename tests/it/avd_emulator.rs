//! Wire-level tests of the ARM emulator (raw HTTPS, no adapter): what an official Azure SDK
//! would see.

use crate::support::avd::{Env, opts, start};
use serde_json::Value;
use sessiongate::emulator::arm::{ArmOp, NameStyle, ThrottleSettings};

async fn get(
    env: &Env,
    url: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = env.raw_client().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

#[tokio::test]
async fn auth_is_checked_on_every_call() {
    let env = start(opts(1, 1, 10)).await;
    let url = format!(
        "{}/sessionHosts?api-version=2024-04-03",
        env.pool_url("hp1")
    );
    let (s, h, v) = get(&env, &url, None).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "AuthenticationFailed");
    let www = h.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(www.starts_with("Bearer authorization_uri="), "{www}");
    let (s, _, v) = get(&env, &url, Some("emu.not-a-token")).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    let tok = env.raw_token().await;
    let (s, h, _) = get(&env, &url, Some(&tok)).await;
    assert_eq!(s, 200);
    assert!(h.contains_key("x-ms-request-id"));
    assert!(h.contains_key("x-ms-correlation-request-id"));
    env.state.revoke_tokens();
    let (s, _, v) = get(&env, &url, Some(&tok)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
}

#[tokio::test]
async fn api_version_is_required_and_checked() {
    let env = start(opts(1, 1, 10)).await;
    let tok = env.raw_token().await;
    let base = format!("{}/userSessions", env.pool_url("hp1"));
    let (s, _, v) = get(&env, &base, Some(&tok)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("MissingApiVersionParameter"))
    );
    let (s, _, v) = get(&env, &format!("{base}?api-version=2019-01-01"), Some(&tok)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("InvalidApiVersionParameter"))
    );
    for ver in [
        "2021-07-12",
        "2022-09-09",
        "2023-09-05",
        "2024-04-03",
        "2025-10-10",
    ] {
        let (s, _, _) = get(&env, &format!("{base}?api-version={ver}"), Some(&tok)).await;
        assert_eq!(s, 200, "{ver}");
    }
}

#[tokio::test]
async fn paths_are_case_insensitive_and_404s_are_arm_shaped() {
    let env = start(opts(2, 1, 10)).await;
    let tok = env.raw_token().await;
    let i = env.emu.info();
    let host = env.state.hosts("hp1")[0].clone();
    let lower = format!(
        "{}/subscriptions/{}/resourcegroups/{}/providers/microsoft.desktopvirtualization/hostpools/HP1/sessionhosts/{}/usersessions?api-version=2025-10-10",
        i.base_url,
        i.subscription,
        i.resource_group.to_uppercase(),
        host.to_uppercase()
    );
    let (s, _, v) = get(&env, &lower, Some(&tok)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"].as_array().unwrap().len(), 1);

    let cases = [
        (
            format!(
                "{}/subscriptions/nope/resourceGroups/{}/providers/Microsoft.DesktopVirtualization/hostPools/hp1/sessionHosts?api-version=2025-10-10",
                i.base_url, i.resource_group
            ),
            404,
            "SubscriptionNotFound",
        ),
        (
            format!(
                "{}/subscriptions/{}/resourceGroups/nope/providers/Microsoft.DesktopVirtualization/hostPools/hp1/sessionHosts?api-version=2025-10-10",
                i.base_url, i.subscription
            ),
            404,
            "ResourceGroupNotFound",
        ),
        (
            format!(
                "{}/sessionHosts?api-version=2025-10-10",
                env.pool_url("nope")
            ),
            404,
            "ParentResourceNotFound",
        ),
        (
            format!(
                "{}/sessionHosts/nope.contoso.com?api-version=2025-10-10",
                env.pool_url("hp1")
            ),
            404,
            "ResourceNotFound",
        ),
        (
            format!(
                "{}/sessionHosts/{host}/userSessions/99?api-version=2025-10-10",
                env.pool_url("hp1")
            ),
            404,
            "404",
        ),
    ];
    for (url, status, code) in cases {
        let (s, _, v) = get(&env, &url, Some(&tok)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{url}"
        );
    }
    let (_, _, v) = get(
        &env,
        &format!(
            "{}/sessionHosts/{host}/userSessions/99?api-version=2025-10-10",
            env.pool_url("hp1")
        ),
        Some(&tok),
    )
    .await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("ActivityId: ") && msg.ends_with("Error: User session ID not found"),
        "{msg}"
    );
}

#[tokio::test]
async fn pages_with_absolute_next_links_in_both_name_styles() {
    let env = start(opts(3, 2, 2)).await;
    let tok = env.raw_token().await;
    for style in [NameStyle::Real, NameStyle::Spec] {
        env.state.set_name_style(style);
        let mut url = format!(
            "{}/userSessions?api-version=2025-10-10",
            env.pool_url("hp1")
        );
        let mut names = Vec::new();
        let mut pages = 0;
        loop {
            let (s, _, v) = get(&env, &url, Some(&tok)).await;
            assert_eq!(s, 200);
            pages += 1;
            for item in v["value"].as_array().unwrap() {
                names.push(item["name"].as_str().unwrap().to_string());
                let id = item["id"].as_str().unwrap();
                match style {
                    NameStyle::Real => {
                        assert!(
                            id.contains("/resourcegroups/") && id.contains("/usersessions/"),
                            "{id}"
                        );
                        assert_eq!(
                            item["type"],
                            "Microsoft.DesktopVirtualization/hostpools/sessionhosts/usersessions"
                        );
                    }
                    NameStyle::Spec => {
                        assert!(
                            id.contains("/resourceGroups/") && id.contains("/userSessions/"),
                            "{id}"
                        );
                    }
                }
            }
            match v.get("nextLink").and_then(Value::as_str) {
                Some(l) => {
                    assert!(l.starts_with(&env.emu.info().base_url), "{l}");
                    assert!(l.contains("$skiptoken="), "{l}");
                    url = l.to_string();
                }
                None => break,
            }
        }
        assert_eq!((pages, names.len()), (3, 6));
        match style {
            NameStyle::Real => assert!(
                names[0].starts_with("hp1/sh-hp1-0.contoso.com/"),
                "{names:?}"
            ),
            NameStyle::Spec => assert_eq!(names[0], "2"),
        }
    }
}

#[tokio::test]
async fn session_ids_are_reused_after_logoff() {
    let env = start(opts(1, 3, 10)).await;
    let tok = env.raw_token().await;
    let host = env.state.hosts("hp1")[0].clone();
    let ids: Vec<u32> = env.state.sessions("hp1").iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![2, 3, 4]);
    let url = format!(
        "{}/sessionHosts/{host}/userSessions/3?api-version=2025-10-10",
        env.pool_url("hp1")
    );
    let resp = env
        .raw_client()
        .delete(&url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = env
        .raw_client()
        .delete(&url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let new_id = env
        .state
        .add_session("hp1", &host, "mallory@contoso.com")
        .unwrap();
    assert_eq!(new_id, 3);
    let (s, _, v) = get(&env, &url, Some(&tok)).await;
    assert_eq!(s, 200);
    assert_eq!(v["properties"]["userPrincipalName"], "mallory@contoso.com");
    assert_eq!(env.state.calls(ArmOp::Logoff), 2);
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_and_headers() {
    let env = start(opts(1, 1, 10)).await;
    env.state.set_throttling(Some(ThrottleSettings {
        read_capacity: 2,
        read_refill_per_sec: 1,
        ..Default::default()
    }));
    let tok = env.raw_token().await;
    let url = format!(
        "{}/sessionHosts?api-version=2025-10-10",
        env.pool_url("hp1")
    );
    let (s, h, _) = get(&env, &url, Some(&tok)).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-ms-ratelimit-remaining-subscription-reads"], "1");
    let _ = get(&env, &url, Some(&tok)).await;
    let (s, h, v) = get(&env, &url, Some(&tok)).await;
    assert_eq!(s, 429);
    assert_eq!(v["error"]["code"], "SubscriptionRequestsThrottled");
    assert_eq!(h["retry-after"], "1");
    env.state.set_throttling(None);
    let (s, _, _) = get(&env, &url, Some(&tok)).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn filter_and_patch_host() {
    let env = start(opts(2, 2, 10)).await;
    let tok = env.raw_token().await;
    let host = env.state.hosts("hp1")[1].clone();
    env.state
        .add_session("hp1", &host, "o'brien@contoso.com")
        .unwrap();
    let filter = "userPrincipalName eq 'O''Brien@contoso.com' and sessionState eq 'Active'";
    let url = format!(
        "{}/userSessions?api-version=2025-10-10&$filter={}",
        env.pool_url("hp1"),
        urlencode(filter)
    );
    let (s, _, v) = get(&env, &url, Some(&tok)).await;
    assert_eq!(s, 200, "{v}");
    let vals = v["value"].as_array().unwrap();
    assert_eq!(vals.len(), 1);
    assert_eq!(
        vals[0]["properties"]["userPrincipalName"],
        "o'brien@contoso.com"
    );
    let bad = format!(
        "{}/userSessions?api-version=2025-10-10&$filter={}",
        env.pool_url("hp1"),
        urlencode("userPrincipalName eq 'x")
    );
    let (s, _, _) = get(&env, &bad, Some(&tok)).await;
    assert_eq!(s, 400);

    let url = format!(
        "{}/sessionHosts/{host}?api-version=2025-10-10",
        env.pool_url("hp1")
    );
    let resp = env
        .raw_client()
        .patch(&url)
        .bearer_auth(&tok)
        .json(&serde_json::json!({"properties": {"allowNewSession": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["properties"]["allowNewSession"], false);
    assert_eq!(
        env.state.host_allows_new_sessions("hp1", &host),
        Some(false)
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn oidc_discovery_points_at_the_token_endpoint() {
    let env = start(opts(1, 1, 10)).await;
    let i = env.emu.info();
    let url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        i.base_url, i.tenant
    );
    let (s, _, v) = get(&env, &url, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["token_endpoint"].as_str(), Some(i.token_url.as_str()));
    let (s, _, v) = get(
        &env,
        &format!("{}/common/discovery/instance?api-version=1.1", i.base_url),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        v["tenant_discovery_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/v2.0/.well-known/openid-configuration")
    );
    let (s, _, _) = get(
        &env,
        &format!(
            "{}/other-tenant/v2.0/.well-known/openid-configuration",
            i.base_url
        ),
        None,
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn page_size_descending_and_initial_skip() {
    let env = start(opts(2, 3, 100)).await;
    env.state.set_name_style(NameStyle::Spec);
    let tok = env.raw_token().await;
    let host = env.state.hosts("hp1")[0].clone();
    let base = format!(
        "{}/sessionHosts/{host}/userSessions?api-version=2024-04-03",
        env.pool_url("hp1")
    );
    let names = |v: &Value| -> Vec<String> {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, _, v) = get(
        &env,
        &format!("{base}&pageSize=2&isDescending=true"),
        Some(&tok),
    )
    .await;
    assert_eq!(names(&v), vec!["4", "3"]);
    let next = v["nextLink"].as_str().unwrap().to_string();
    assert!(
        next.contains("pageSize=2") && next.contains("isDescending=true"),
        "{next}"
    );
    let (_, _, v) = get(&env, &next, Some(&tok)).await;
    assert_eq!(names(&v), vec!["2"]);
    assert!(v.get("nextLink").is_none());
    let (_, _, v) = get(&env, &format!("{base}&initialSkip=1"), Some(&tok)).await;
    assert_eq!(names(&v), vec!["3", "4"]);
}

#[tokio::test]
async fn tokens_for_the_standard_arm_audiences_work_on_the_arm_routes() {
    let env = start(opts(1, 2, 10)).await;
    let hosts = format!(
        "{}/sessionHosts?api-version=2025-10-10",
        env.pool_url("hp1")
    );
    let host = env.state.hosts("hp1")[0].clone();
    let session = format!(
        "{}/sessionHosts/{host}/userSessions/2?api-version=2025-10-10",
        env.pool_url("hp1")
    );
    for scope in [
        "https://management.azure.com/.default",
        "https://management.core.windows.net/.default",
        // Entra ID ignores a trailing slash on the resource.
        "https://management.azure.com//.default",
    ] {
        let tok = env.raw_token_for(scope).await.unwrap();
        let (s, _, v) = get(&env, &hosts, Some(&tok)).await;
        assert_eq!(s, 200, "{scope}: {v}");
        assert_eq!(v["value"].as_array().map(Vec::len), Some(1), "{scope}");
        let (s, _, v) = get(&env, &session, Some(&tok)).await;
        assert_eq!(s, 200, "{scope}: {v}");
        let resp = env
            .raw_client()
            .delete(&session)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{scope}: logoff");
        env.state.add_session("hp1", &host, "back@contoso.com");
    }
    assert_eq!(env.state.calls(ArmOp::Logoff), 3);

    // The issuer may grant other audiences; the ARM routes still refuse them.
    env.state.allow_scope("https://graph.example/.default");
    let other = env
        .raw_token_for("https://graph.example/.default")
        .await
        .unwrap();
    let (s, _, v) = get(&env, &hosts, Some(&other)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    // And audiences nobody allowed get no token at all.
    let e = env
        .raw_token_for("https://vault.azure.net/.default")
        .await
        .unwrap_err();
    assert_eq!(e["error"], "invalid_scope");
}
