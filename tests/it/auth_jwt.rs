//! Bearer JWT authentication against the in-tree test OIDC issuer over loopback HTTPS.

use crate::support::oidc_config;
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sessiongate::auth::{
    AuthConfig, AuthError, AuthMethod, Authenticator, GrantConfig, OidcConfig, Permission, Role,
    apikey,
};
use sessiongate::domain::PoolName;
use sessiongate::emulator::oidc::TestIssuer;
use std::time::Duration;

const AUD: &str = "api://sessiongate";

struct Fixture {
    issuer: TestIssuer,
    _ca: tempfile::NamedTempFile,
    cfg: AuthConfig,
}

async fn fixture(tune: impl FnOnce(&mut OidcConfig)) -> Fixture {
    let issuer = TestIssuer::start().await.unwrap();
    let (mut o, ca) = oidc_config(&issuer, &[AUD, "00000000-1111-2222-3333-444444444444"]);
    tune(&mut o);
    let cfg = AuthConfig {
        oidc: Some(o),
        ..Default::default()
    };
    Fixture {
        issuer,
        _ca: ca,
        cfg,
    }
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    h
}

fn with_roles(mut c: Value, roles: &[&str]) -> Value {
    c["roles"] = json!(roles);
    c
}

fn invalid_containing(
    r: Result<sessiongate::auth::Principal, (AuthError, sessiongate::auth::Presented)>,
    needle: &str,
) {
    match r {
        Err((AuthError::Invalid(m), p)) => {
            assert!(m.contains(needle), "'{m}' should contain '{needle}'");
            assert_eq!(p.method.as_deref(), Some("jwt"));
        }
        other => panic!("expected Invalid containing '{needle}', got {other:?}"),
    }
}

fn pool(s: &str) -> PoolName {
    PoolName::parse(s).unwrap()
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_authenticate() {
    let f = fixture(|_| {}).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    assert!(auth.oidc_enabled());
    let claims = with_roles(f.issuer.claims(AUD), &["Operator"]);
    let oid = claims["oid"].as_str().unwrap().to_string();

    let t = f.issuer.mint(&claims).unwrap();
    let p = auth.authenticate(&bearer(&t)).await.unwrap();
    assert_eq!(p.id, oid);
    assert_eq!(p.display.as_deref(), Some("jane@contoso.com"));
    assert_eq!(p.method, AuthMethod::Jwt);
    assert!(p.has(Permission::SessionsAct, Some(&pool("hp1"))));
    assert!(!p.has(Permission::SessionsAdmin, Some(&pool("hp1"))));

    let t = f.issuer.mint_with(Algorithm::ES256, None, &claims).unwrap();
    let p = auth.authenticate(&bearer(&t)).await.unwrap();
    assert_eq!(p.id, oid);

    // The second configured audience (the client id form of v2 tokens) is accepted too.
    let mut c2 = claims.clone();
    c2["aud"] = json!("00000000-1111-2222-3333-444444444444");
    auth.authenticate(&bearer(&f.issuer.mint(&c2).unwrap()))
        .await
        .unwrap();

    // Without oid, sub is the id; lower-case scheme accepted.
    let mut c3 = claims.clone();
    c3.as_object_mut().unwrap().remove("oid");
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("bearer {}", f.issuer.mint(&c3).unwrap())).unwrap(),
    );
    assert_eq!(auth.authenticate(&h).await.unwrap().id, "test-subject");
}

#[tokio::test]
async fn forged_signature_is_refused() {
    let f = fixture(|_| {}).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let t = f
        .issuer
        .forge_unknown_key(&with_roles(f.issuer.claims(AUD), &["Admin"]))
        .unwrap();
    invalid_containing(auth.authenticate(&bearer(&t)).await, "signature");

    // Tampering with the payload of a genuine token breaks its signature too.
    let good = f.issuer.mint(&f.issuer.claims(AUD)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&e.decode(parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["Admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        e.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    invalid_containing(auth.authenticate(&bearer(&tampered)).await, "signature");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = fixture(|_| {}).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let t = f
        .issuer
        .forge_alg_none(&with_roles(f.issuer.claims(AUD), &["Admin"]))
        .unwrap();
    assert!(t.ends_with('.'));
    invalid_containing(auth.authenticate(&bearer(&t)).await, "algorithm");
}

#[tokio::test]
async fn hmac_confusion_and_other_algorithms_are_refused() {
    let f = fixture(|_| {}).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let claims = with_roles(f.issuer.claims(AUD), &["Admin"]);
    let t = f.issuer.forge_hmac_confusion(&claims).unwrap();
    invalid_containing(auth.authenticate(&bearer(&t)).await, "algorithm");
    for alg in [
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS384,
        Algorithm::PS256,
    ] {
        let t = f.issuer.mint_with(alg, None, &claims).unwrap();
        invalid_containing(auth.authenticate(&bearer(&t)).await, "algorithm");
    }
    // ES256 header on the RSA key's kid: algorithm/key mismatch.
    let t = f
        .issuer
        .mint_with(Algorithm::ES256, Some(&f.issuer.rsa_kid()), &claims)
        .unwrap();
    invalid_containing(auth.authenticate(&bearer(&t)).await, "does not match");
}

#[tokio::test]
async fn wrong_issuer_and_wrong_audience_are_refused() {
    let f = fixture(|_| {}).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let mut c = f.issuer.claims(AUD);
    c["iss"] = json!("https://login.microsoftonline.com/other-tenant/v2.0");
    invalid_containing(
        auth.authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
            .await,
        "issuer",
    );
    let mut c = f.issuer.claims("api://someone-else");
    c["aud"] = json!("api://someone-else");
    invalid_containing(
        auth.authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
            .await,
        "audience",
    );
    let mut c = f.issuer.claims(AUD);
    c.as_object_mut().unwrap().remove("aud");
    invalid_containing(
        auth.authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
            .await,
        "aud",
    );
}

#[tokio::test]
async fn expiry_not_before_and_clock_skew() {
    let f = fixture(|o| o.clock_skew_secs = 60).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let mut c = f.issuer.claims(AUD);
    c["exp"] = json!(now - 120);
    let r = auth
        .authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
        .await;
    assert!(matches!(r, Err((AuthError::Expired, _))), "{r:?}");

    let mut c = f.issuer.claims(AUD);
    c["nbf"] = json!(now + 300);
    invalid_containing(
        auth.authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
            .await,
        "not valid yet",
    );

    // Within the skew either way: accepted.
    let mut c = f.issuer.claims(AUD);
    c["exp"] = json!(now - 20);
    c["nbf"] = json!(now + 20);
    auth.authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
        .await
        .unwrap();

    // No exp at all: refused.
    let mut c = f.issuer.claims(AUD);
    c.as_object_mut().unwrap().remove("exp");
    invalid_containing(
        auth.authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
            .await,
        "exp",
    );
}

#[tokio::test]
async fn key_rotation_is_picked_up_without_restart() {
    let f = fixture(|o| o.min_refetch_interval_secs = 0).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let claims = f.issuer.claims(AUD);
    let old = f.issuer.mint(&claims).unwrap();
    auth.authenticate(&bearer(&old)).await.unwrap();
    let old_kid = f.issuer.rsa_kid();

    let new_kid = f.issuer.rotate().unwrap();
    assert_ne!(old_kid, new_kid);
    let fetches = f.issuer.jwks_fetches();
    let new = f.issuer.mint(&claims).unwrap();
    auth.authenticate(&bearer(&new)).await.unwrap();
    assert_eq!(
        f.issuer.jwks_fetches(),
        fetches + 1,
        "one refetch for the new kid"
    );
    let es = f.issuer.mint_with(Algorithm::ES256, None, &claims).unwrap();
    auth.authenticate(&bearer(&es)).await.unwrap();

    // The old key left the JWKS: its tokens no longer verify.
    invalid_containing(auth.authenticate(&bearer(&old)).await, "unknown");
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let f = fixture(|o| o.min_refetch_interval_secs = 30).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let start_fetches = f.issuer.jwks_fetches();
    assert_eq!(start_fetches, 1);
    let claims = f.issuer.claims(AUD);
    for i in 0..5 {
        let t = f
            .issuer
            .mint_with(Algorithm::RS256, Some(&format!("bogus-{i}")), &claims)
            .unwrap();
        invalid_containing(auth.authenticate(&bearer(&t)).await, "unknown");
    }
    assert_eq!(f.issuer.jwks_fetches(), start_fetches + 1);

    // Within the interval a genuinely rotated key is not fetched yet...
    f.issuer.rotate().unwrap();
    let t = f.issuer.mint(&claims).unwrap();
    invalid_containing(auth.authenticate(&bearer(&t)).await, "unknown");
    assert_eq!(f.issuer.jwks_fetches(), start_fetches + 1);
}

#[tokio::test]
async fn periodic_refresh_picks_up_new_keys() {
    let f = fixture(|o| {
        o.refresh_secs = 1;
        o.min_refetch_interval_secs = 3600;
    })
    .await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let claims = f.issuer.claims(AUD);
    // Use up the unknown-kid refetch so only the periodic refresh can help.
    let t = f
        .issuer
        .mint_with(Algorithm::RS256, Some("bogus"), &claims)
        .unwrap();
    assert!(auth.authenticate(&bearer(&t)).await.is_err());
    f.issuer.rotate().unwrap();
    let t = f.issuer.mint(&claims).unwrap();
    assert!(auth.authenticate(&bearer(&t)).await.is_err());
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if auth.authenticate(&bearer(&t)).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "the periodic refresh should have loaded the rotated key"
    );
}

#[tokio::test]
async fn failed_refresh_keeps_previous_keys() {
    let f = fixture(|o| o.min_refetch_interval_secs = 0).await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let claims = f.issuer.claims(AUD);
    f.issuer.set_keys_failing(true);
    let t = f
        .issuer
        .mint_with(Algorithm::RS256, Some("bogus"), &claims)
        .unwrap();
    assert!(auth.authenticate(&bearer(&t)).await.is_err());
    assert!(f.issuer.jwks_fetches() >= 2);
    auth.authenticate(&bearer(&f.issuer.mint(&claims).unwrap()))
        .await
        .unwrap();
}

#[tokio::test]
async fn roles_and_groups_map_to_grants() {
    let f = fixture(|o| {
        o.role_map.clear();
        o.role_map.insert(
            "SessionGate.Operator".into(),
            vec![GrantConfig {
                role: Role::Operator,
                pools: vec!["hp-finance".into()],
            }],
        );
        o.role_map.insert(
            "6f1c2c1e-0000-4000-8000-000000000001".into(),
            vec![
                GrantConfig {
                    role: Role::Reader,
                    pools: vec!["*".into()],
                },
                GrantConfig {
                    role: Role::Auditor,
                    pools: vec!["*".into()],
                },
            ],
        );
    })
    .await;
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let mut c = f.issuer.claims(AUD);
    c["roles"] = json!(["sessiongate.operator", "Unmapped"]);
    c["groups"] = json!(["6F1C2C1E-0000-4000-8000-000000000001", "other-group"]);
    let p = auth
        .authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
        .await
        .unwrap();
    let fin = pool("hp-finance");
    let hr = pool("hp-hr");
    assert!(p.has(Permission::SessionsAct, Some(&fin)));
    assert!(!p.has(Permission::SessionsAct, Some(&hr)));
    assert!(p.has(Permission::SessionsRead, Some(&hr)));
    assert!(p.has(Permission::AuditRead, None));
    assert!(!p.has(Permission::SessionsAdmin, Some(&fin)));
    assert_eq!(p.role_names(), vec!["auditor", "operator", "reader"]);

    // A valid token with no mapped role authenticates but holds nothing: pools are hidden.
    let c = f.issuer.claims(AUD);
    let p = auth
        .authenticate(&bearer(&f.issuer.mint(&c).unwrap()))
        .await
        .unwrap();
    assert!(p.grants.is_empty());
    let d = p.check(Permission::SessionsRead, &fin, true).unwrap_err();
    assert!(d.not_found);
}

#[tokio::test]
async fn credential_selection_and_presented_hints() {
    let key = apikey::generate_key();
    let mut f = fixture(|_| {}).await;
    f.cfg.api_keys = vec![apikey::ApiKeyConfig {
        id: "ticketing".into(),
        hash: apikey::hash_key(&key),
        roles: vec![Role::Operator],
        pools: vec!["*".into()],
        expires_at: None,
        display: None,
    }];
    let auth = Authenticator::new(&f.cfg).await.unwrap();

    // API key as a bearer value and in X-API-Key.
    assert_eq!(
        auth.authenticate(&bearer(&key)).await.unwrap().id,
        "apikey:ticketing"
    );
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_str(&key).unwrap());
    let p = auth.authenticate(&h).await.unwrap();
    assert_eq!(p.method, AuthMethod::ApiKey);
    let pr = Authenticator::presented(&h);
    assert_eq!(pr.method.as_deref(), Some("api_key"));
    assert_eq!(pr.hint.as_deref(), Some(&key[..6]));

    // A wrong key: the hint is the first 6 characters, never the key.
    let wrong = apikey::generate_key();
    let (e, pr) = auth.authenticate(&bearer(&wrong)).await.unwrap_err();
    assert!(matches!(e, AuthError::Invalid(_)));
    assert_eq!(pr.method.as_deref(), Some("api_key"));
    assert_eq!(pr.hint.as_deref(), Some(&wrong[..6]));

    // An opaque non-JWT bearer value is treated as an API key.
    let (_, pr) = auth
        .authenticate(&bearer("opaque-value"))
        .await
        .unwrap_err();
    assert_eq!(pr.method.as_deref(), Some("api_key"));

    // A JWT's hint names kid and iss, and holds no signature.
    let t = f.issuer.forge_unknown_key(&f.issuer.claims(AUD)).unwrap();
    let (_, pr) = auth.authenticate(&bearer(&t)).await.unwrap_err();
    let hint = pr.hint.unwrap();
    assert!(
        hint.contains(&format!("kid={}", f.issuer.rsa_kid())),
        "{hint}"
    );
    assert!(
        hint.contains(&format!("iss={}", f.issuer.issuer())),
        "{hint}"
    );
    assert!(!hint.contains(t.rsplit('.').next().unwrap()));

    // Nothing, two credentials, another scheme.
    let (e, _) = auth.authenticate(&HeaderMap::new()).await.unwrap_err();
    assert_eq!(e, AuthError::Missing);
    assert_eq!(auth.www_authenticate(&e), r#"Bearer realm="sessiongate""#);
    let mut h = bearer(&key);
    h.insert("x-api-key", HeaderValue::from_str(&key).unwrap());
    assert!(matches!(
        auth.authenticate(&h).await,
        Err((AuthError::Invalid(_), _))
    ));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
    );
    let (e, pr) = auth.authenticate(&h).await.unwrap_err();
    assert!(matches!(e, AuthError::Invalid(_)));
    assert_eq!(pr.method.as_deref(), Some("basic"));
    let w = auth.www_authenticate(&e);
    assert!(
        w.starts_with(r#"Bearer realm="sessiongate", error="invalid_token", error_description=""#),
        "{w}"
    );
    assert_eq!(
        auth.www_authenticate(&AuthError::Expired),
        r#"Bearer realm="sessiongate", error="invalid_token", error_description="The credentials expired""#
    );
}

#[tokio::test]
async fn jwt_refused_when_oidc_is_not_configured() {
    let f = fixture(|_| {}).await;
    let auth = Authenticator::new(&AuthConfig::default()).await.unwrap();
    assert!(!auth.oidc_enabled());
    let t = f.issuer.mint(&f.issuer.claims(AUD)).unwrap();
    invalid_containing(
        auth.authenticate(&bearer(&t)).await,
        "OIDC is not configured",
    );
}

#[tokio::test]
async fn start_errors_name_the_key() {
    // No CA bundle: the emulator's certificate is not trusted.
    let f = fixture(|o| o.ca_bundle = None).await;
    let e = Authenticator::new(&f.cfg).await.unwrap_err();
    assert!(e.contains("auth.oidc.discovery_url"), "{e}");

    // Missing CA file.
    let f = fixture(|o| o.ca_bundle = Some("/nonexistent/ca.pem".into())).await;
    let e = Authenticator::new(&f.cfg).await.unwrap_err();
    assert!(e.contains("auth.oidc.ca_bundle"), "{e}");

    // Discovery names another issuer than configured (explicit discovery URL).
    let mut f = fixture(|_| {}).await;
    let disc = f.issuer.discovery_url();
    if let Some(o) = f.cfg.oidc.as_mut() {
        o.issuer = "https://login.example/other/v2.0".into();
        o.discovery_url = Some(disc);
    }
    let e = Authenticator::new(&f.cfg).await.unwrap_err();
    assert!(e.contains("auth.oidc.issuer"), "{e}");

    // JWKS unavailable at start.
    let f = fixture(|_| {}).await;
    f.issuer.set_keys_failing(true);
    let e = Authenticator::new(&f.cfg).await.unwrap_err();
    assert!(e.contains("jwks_uri"), "{e}");
}

/// Timing, not a pass/fail check: `cargo nextest run --test it --run-ignored only
/// --no-capture auth_jwt::measure_verify_latency`.
#[tokio::test]
#[ignore]
async fn measure_verify_latency() {
    let key = apikey::generate_key();
    let mut f = fixture(|_| {}).await;
    f.cfg.api_keys = (0..50)
        .map(|i| apikey::ApiKeyConfig {
            id: format!("k{i}"),
            hash: apikey::hash_key(&if i == 49 {
                key.clone()
            } else {
                apikey::generate_key()
            }),
            roles: vec![Role::Operator],
            pools: vec!["*".into()],
            expires_at: None,
            display: None,
        })
        .collect();
    let auth = Authenticator::new(&f.cfg).await.unwrap();
    let claims = with_roles(f.issuer.claims(AUD), &["Operator"]);
    let n = 500u32;
    for (name, h) in [
        ("RS256", bearer(&f.issuer.mint(&claims).unwrap())),
        (
            "ES256",
            bearer(&f.issuer.mint_with(Algorithm::ES256, None, &claims).unwrap()),
        ),
        ("api key (50 configured)", bearer(&key)),
    ] {
        auth.authenticate(&h).await.unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            auth.authenticate(&h).await.unwrap();
        }
        println!("{name}: {:?} per authentication", t0.elapsed() / n);
    }
}
