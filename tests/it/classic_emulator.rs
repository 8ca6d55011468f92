//! The WVD classic broker emulator's wire contract, checked with a plain HTTP client.

use crate::support::classic::{Env, POOL};
use crate::support::client_credentials_token;
use sessiongate::emulator::wvd_classic::{ClassicEmulatorOptions, RDINFRA_RESOURCE};

const SH1: &str = "classic-hp1-sh1.contoso.com";

#[tokio::test]
async fn unauthenticated_discovery_answers_the_wara_challenge() {
    let env = Env::default().await;
    let info = env.emu.info();
    let http = env.http();
    let r = http
        .get(format!("{}/RdsManagement/V1", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let hint = r
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        hint.starts_with("MS-WARA-CLAIMS hint=\"Authority="),
        "{hint}"
    );
    // The community SDK splits on ';' and expects exactly five parts.
    let parts: Vec<&str> = hint.split(';').collect();
    assert_eq!(parts.len(), 5, "{hint}");
    let authority = parts[0].replace("MS-WARA-CLAIMS hint=\"Authority=", "");
    assert_eq!(
        authority,
        format!("{}/{}", info.authority_host, info.aad_tenant)
    );
    assert!(parts[1].starts_with("Client="));
    assert!(parts[2].starts_with("Redirect="));
    assert_eq!(parts[3], format!("Resource={RDINFRA_RESOURCE}"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "UnauthorizedAccess");

    // The advertised authority hosts the token endpoint.
    let token = &client_credentials_token(
        &http,
        &format!("{authority}/oauth2/v2.0/token"),
        &info.client_id,
        &info.client_secret,
        &format!("{RDINFRA_RESOURCE}/.default"),
    )
    .await;
    let r = http
        .get(format!("{}/RdsManagement/V1", env.base()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Any broker route without a token gets the same challenge.
    let r = http
        .get(format!("{}/Sessions", env.pool_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn lists_are_bare_arrays_paged_by_an_absolute_next_header() {
    let env = Env::start(ClassicEmulatorOptions {
        hosts_per_pool: 3,
        sessions_per_host: 2,
        ..ClassicEmulatorOptions::default()
    })
    .await;
    let http = env.http();
    let token = env.token().await;
    let mut url = format!(
        "{}/Sessions?PageSize=2&SortField=UserPrincipalName&IsDescending=False&InitialSkip=0",
        env.pool_url()
    );
    assert!(url.contains("/TenantGroups/Default%20Tenant%20Group/"));
    let mut users = Vec::new();
    let mut pages = 0;
    loop {
        let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        pages += 1;
        let next = r
            .headers()
            .get("next")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<serde_json::Value> = r.json().await.unwrap();
        assert!(page.len() <= 2);
        for s in &page {
            assert_eq!(s["tenantGroupName"], "Default Tenant Group");
            assert_eq!(s["hostPoolName"], POOL);
            assert!(s["sessionId"].is_u64());
            assert!(s["sessionState"].is_string());
            users.push(s["userPrincipalName"].as_str().unwrap().to_string());
        }
        match next {
            Some(n) => {
                assert!(n.starts_with("https://"), "absolute: {n}");
                assert!(n.contains("InitialSkip="));
                url = n;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(users.len(), 6);
    let mut sorted = users.clone();
    sorted.sort();
    assert_eq!(users, sorted, "sorted by UserPrincipalName");

    // Descending order and skip are honoured.
    let r: Vec<serde_json::Value> = http
        .get(format!(
            "{}/Sessions?PageSize=1000&SortField=UserPrincipalName&IsDescending=True&InitialSkip=1",
            env.pool_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(r[0]["userPrincipalName"], sorted[4].as_str());
}

#[tokio::test]
async fn errors_carry_the_symbolic_code_in_message() {
    let env = Env::default().await;
    let http = env.http();
    let token = env.token().await;
    let r = http
        .get(format!(
            "{}/RdsManagement/V1/TenantGroups/Default%20Tenant%20Group/Tenants/contoso/HostPools/nope/Sessions",
            env.base()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["message"], "HostPoolNotFound");
    assert!(b["error"]["target"].as_str().unwrap().contains("nope"));
    assert!(b["error"]["details"].is_array());

    let r = http
        .post(format!(
            "{}/SessionHosts/{SH1}/Sessions/99/actions/logoff-user?Force=False",
            env.pool_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["message"], "SessionHostLogoffSessionIdNotExist");

    env.state().throttle_next(1, 7);
    let r = http
        .get(format!("{}/SessionHosts", env.pool_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["message"], "RequestThrottled");
}

#[tokio::test]
async fn drain_mode_is_a_patch_of_allow_new_session() {
    let env = Env::default().await;
    let http = env.http();
    let token = env.token().await;
    let url = format!("{}/SessionHosts/{SH1}", env.pool_url());
    let r = http
        .patch(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"allowNewSession": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(env.state().allow_new_session(POOL, SH1), Some(false));
    let h: serde_json::Value = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["allowNewSession"], false);
    assert_eq!(h["sessions"], 2);
    let hosts = env.provider().list_hosts().await.unwrap();
    assert!(hosts.iter().find(|h| h.name == SH1).unwrap().drain);
}

#[tokio::test]
async fn info_names_both_tenants_distinctly() {
    let env = Env::default().await;
    let v = serde_json::to_value(env.emu.info()).unwrap();
    assert_eq!(v["kind"], "wvd-classic");
    assert_eq!(v["rds_tenant"], "contoso");
    assert!(v["aad_tenant"].as_str().unwrap().len() == 36);
    assert_eq!(v["tenant_group"], "Default Tenant Group");
    assert!(
        v["broker_url"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    assert!(
        v["token_url"]
            .as_str()
            .unwrap()
            .ends_with("/oauth2/v2.0/token")
    );
    assert_eq!(v["hosts"][POOL].as_array().unwrap().len(), 2);
    // One JSON line.
    assert!(
        !serde_json::to_string(&env.emu.info())
            .unwrap()
            .contains('\n')
    );
}
