//! API keys, scope checks (404 versus 403), protected sessions, rate limiting and CORS.

use axum::{Router, routing::get};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use sessiongate::auth::{
    AuthConfig, AuthError, Authenticator, CorsConfig, Grant, PoolScope, Principal,
    ProtectedSessions, Protection, RateLimitConfig, RateLimiter, Role, apikey, cors_layer,
};
use sessiongate::auth::{AuthMethod, Permission};
use sessiongate::domain::PoolName;
use std::time::Duration;

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).unwrap()
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    h
}

#[tokio::test]
async fn api_keys_coexist_expire_and_carry_their_scope() {
    let old = apikey::generate_key();
    let new = apikey::generate_key();
    let scoped = apikey::generate_key();
    let past = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let future = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let toml = format!(
        r#"
        [[api_keys]]
        id = "ticketing-2025"
        hash = "{}"
        roles = ["operator"]
        expires_at = "{}"

        [[api_keys]]
        id = "ticketing-2026"
        hash = "{}"
        roles = ["operator"]
        expires_at = "{}"

        [[api_keys]]
        id = "finance-bot"
        hash = "{}"
        roles = ["reader"]
        pools = ["hp-finance"]
        display = "Finance bot"
        "#,
        apikey::hash_key(&old),
        past.format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        apikey::hash_key(&new),
        future
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        apikey::hash_key(&scoped),
    );
    let cfg: AuthConfig = toml::from_str(&toml).unwrap();
    let auth = Authenticator::new(&cfg).await.unwrap();

    let (e, pr) = auth.authenticate(&bearer(&old)).await.unwrap_err();
    assert_eq!(e, AuthError::Expired);
    assert_eq!(e.code(), "credentials_expired");
    assert_eq!(pr.hint.as_deref(), Some(&old[..6]));

    let p = auth.authenticate(&bearer(&new)).await.unwrap();
    assert_eq!(p.id, "apikey:ticketing-2026");
    assert_eq!(p.method, AuthMethod::ApiKey);
    assert!(p.check(Permission::SessionsAct, &pool("any"), true).is_ok());

    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_str(&scoped).unwrap());
    let p = auth.authenticate(&h).await.unwrap();
    assert_eq!(p.display.as_deref(), Some("Finance bot"));
    assert!(
        p.check(Permission::SessionsRead, &pool("hp-finance"), true)
            .is_ok()
    );
    let d = p
        .check(Permission::SessionsAct, &pool("hp-finance"), true)
        .unwrap_err();
    assert!(!d.not_found, "a pool the key can see answers 403");
    assert_eq!(d.missing, Permission::SessionsAct);
    let d = p
        .check(Permission::SessionsRead, &pool("hp-hr"), true)
        .unwrap_err();
    assert!(d.not_found, "a pool outside the key's scope answers 404");
}

#[tokio::test]
async fn bad_api_key_config_is_refused_at_start_naming_the_key() {
    let cfg: AuthConfig = toml::from_str(
        r#"
        [[api_keys]]
        id = "a"
        hash = "sha256:1234"
        roles = ["reader"]
        "#,
    )
    .unwrap();
    let e = Authenticator::new(&cfg).await.unwrap_err();
    assert!(e.contains("auth.api_keys[0].hash"), "{e}");
}

fn principal(grants: Vec<(Role, &[&str])>) -> Principal {
    Principal {
        id: "u1".into(),
        display: None,
        method: AuthMethod::Jwt,
        upn: None,
        grants: grants
            .into_iter()
            .map(|(role, pools)| Grant {
                role,
                pools: PoolScope::Pools(pools.iter().map(|s| s.to_string()).collect()),
            })
            .collect(),
    }
}

#[test]
fn check_returns_404_without_any_grant_and_403_with_some() {
    let p = principal(vec![
        (Role::Operator, &["hp-finance"]),
        (Role::Reader, &["hp-hr"]),
        (Role::Auditor, &["*"]),
    ]);
    let (fin, hr, ops) = (pool("hp-finance"), pool("hp-hr"), pool("hp-ops"));

    assert!(p.check(Permission::SessionsAct, &fin, true).is_ok());
    assert!(p.check(Permission::SessionsRead, &hr, true).is_ok());

    // Sees the pool (reader), lacks the permission: 403 naming it.
    let d = p.check(Permission::SessionsAct, &hr, true).unwrap_err();
    assert!(!d.not_found);
    assert_eq!(d.missing, Permission::SessionsAct);
    assert_eq!(d.pool, hr);
    assert!(d.to_string().contains("sessions.act"), "{d}");
    let d = p.check(Permission::SessionsAdmin, &fin, true).unwrap_err();
    assert!(!d.not_found);

    // The auditor grant covers every pool, so even hp-ops is "seen": 403, not 404.
    let d = p.check(Permission::SessionsRead, &ops, true).unwrap_err();
    assert!(!d.not_found);

    // Without that grant, hp-ops is outside the scope: 404, unless hiding is off.
    let p = principal(vec![(Role::Operator, &["hp-finance"])]);
    let d = p.check(Permission::SessionsRead, &ops, true).unwrap_err();
    assert!(d.not_found);
    let d = p.check(Permission::SessionsRead, &ops, false).unwrap_err();
    assert!(!d.not_found);
    assert!(p.sees_pool(&fin) && !p.sees_pool(&ops));

    // Nothing at all: everything is hidden.
    let p = principal(vec![]);
    assert!(
        p.check(Permission::SessionsRead, &fin, true)
            .unwrap_err()
            .not_found
    );
}

#[test]
fn protected_user_patterns_from_config() {
    let cfg: AuthConfig = toml::from_str(
        r#"
        service_accounts = ["svc-*@contoso.com", 'CONTOSO\svc_backup']
        [protected]
        users = ["adm-*@contoso.com", '*\Administrator', "breakglass", "ceo@contoso.com"]
        groups = ["Tier0 Admins"]
        "#,
    )
    .unwrap();
    cfg.validate().unwrap();
    let ps = ProtectedSessions::new(&cfg.protected, &cfg.service_accounts).unwrap();
    let cases: &[(Option<&str>, Option<&str>, Protection)] = &[
        (Some("adm-jdoe@contoso.com"), None, Protection::Protected),
        (Some("ADM-JDOE@CONTOSO.COM"), None, Protection::Protected),
        (Some("adm-jdoe@fabrikam.com"), None, Protection::None),
        (
            Some("jdoe@contoso.com"),
            Some("CONTOSO\\jdoe"),
            Protection::None,
        ),
        (None, Some("CONTOSO\\Administrator"), Protection::Protected),
        (None, Some("ws01\\administrator"), Protection::Protected),
        // quser reports no domain: the down-level pattern matches on the account (fail safe).
        (None, Some("Administrator"), Protection::Protected),
        (None, Some("Administrators"), Protection::None),
        (Some("breakglass@contoso.com"), None, Protection::Protected),
        (None, Some("CONTOSO\\BreakGlass"), Protection::Protected),
        (Some("CEO@contoso.com"), None, Protection::Protected),
        (
            Some("svc-sql@contoso.com"),
            None,
            Protection::ServiceAccount,
        ),
        (
            None,
            Some("contoso\\SVC_Backup"),
            Protection::ServiceAccount,
        ),
        (None, Some("fabrikam\\svc_backup"), Protection::None),
        (None, None, Protection::None),
    ];
    for (upn, ad, want) in cases {
        assert_eq!(ps.classify(*upn, *ad), *want, "upn={upn:?} ad={ad:?}");
    }
    // Groups apply only where a provider reports them.
    assert_eq!(
        ps.classify(Some("jdoe@contoso.com"), None),
        Protection::None
    );
    assert_eq!(
        ps.classify_with_groups(Some("jdoe@contoso.com"), None, &["tier0 admins"]),
        Protection::Protected
    );
    // A service account stays untouchable even if also a protected user.
    assert_eq!(
        ps.classify_with_groups(Some("svc-sql@contoso.com"), None, &["Tier0 Admins"]),
        Protection::ServiceAccount
    );
}

#[test]
fn rate_limiter_per_principal() {
    let rl = RateLimiter::new(&RateLimitConfig {
        actions_per_minute: 60,
        burst: 3,
    });
    for _ in 0..3 {
        rl.check("alice").unwrap();
    }
    let wait = rl.check("alice").unwrap_err();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    rl.check("bob").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    rl.check("alice").unwrap();
    assert!(rl.check("alice").is_err());

    // Bounded map: never more principals than the bound.
    let rl = RateLimiter::with_max_principals(
        &RateLimitConfig {
            actions_per_minute: 6,
            burst: 1,
        },
        100,
    );
    for i in 0..1000 {
        rl.check(&format!("p{i}")).unwrap();
    }
    assert!(rl.tracked() <= 100);
}

async fn serve(router: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(l, router).await.unwrap();
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn cors_preflight_allows_only_configured_origins() {
    assert!(cors_layer(&CorsConfig::default()).is_none());
    let layer = cors_layer(&CorsConfig {
        allowed_origins: vec!["https://portal.contoso.com".into()],
    })
    .unwrap();
    let app = Router::new()
        .route("/v1/pools", get(|| async { "[]" }).post(|| async { "ok" }))
        .layer(layer);
    let base = serve(app).await;
    let c = reqwest::Client::new();

    let r = c
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/pools"))
        .header("origin", "https://portal.contoso.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-request-id",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://portal.contoso.com"
    );
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("GET") && methods.contains("POST"));
    assert!(!methods.contains("DELETE"));
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for want in ["authorization", "content-type", "x-api-key", "x-request-id"] {
        assert!(allowed.contains(want), "{allowed}");
    }
    assert!(h.get("access-control-allow-credentials").is_none());

    let r = c
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/pools"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Simple request from the allowed origin: x-request-id is exposed.
    let r = c
        .get(format!("{base}/v1/pools"))
        .header("origin", "https://portal.contoso.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://portal.contoso.com"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
    let r = c
        .get(format!("{base}/v1/pools"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
