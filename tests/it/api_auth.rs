//! The auth layer end to end over loopback HTTP: gateway ↔ real AVD adapter ↔ ARM emulator,
//! with API keys and Entra-style OIDC tokens from the in-tree test issuer.
//!
//! Roles × routes, OIDC (role mapping, forgeries, expiry, audience, key rotation, the audit
//! record of every 401), protected sessions, the action rate limit and CORS.

use crate::support::app::{ARM_POOL, AVD_POOL, TestApp, problem};
use crate::support::{header, oidc_config};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sessiongate::{
    auth::{OidcConfig, Role, apikey},
    config::Config,
    emulator::{arm::ArmOp, oidc::TestIssuer},
};
use std::collections::BTreeMap;

const AUD: &str = "api://sessiongate";
const PORTAL: &str = "https://portal.contoso.com";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A freshly generated API key and its config block.
fn extra_key(id: &str, roles: Vec<Role>, pools: &[&str]) -> (String, apikey::ApiKeyConfig) {
    let key = apikey::generate_key();
    let cfg = apikey::ApiKeyConfig {
        id: id.into(),
        hash: apikey::hash_key(&key),
        roles,
        pools: pools.iter().map(|p| p.to_string()).collect(),
        expires_at: None,
        display: None,
    };
    (key, cfg)
}

fn request_id(r: &reqwest::Response) -> String {
    header(r, "x-request-id").expect("x-request-id on every answer")
}

/// Every audit event recorded for one request id (read with the auditor key).
async fn audit_for(app: &TestApp, rid: &str) -> Vec<Value> {
    let r = app
        .get(&app.keys.auditor, &format!("/audit?request_id={rid}"))
        .await;
    assert_eq!(r.status(), 200, "auditor reads the audit log");
    let v: Value = r.json().await.unwrap();
    v["events"].as_array().unwrap().clone()
}

/// The single `request`-kind event of a non-action call.
async fn request_event(app: &TestApp, rid: &str) -> Value {
    let evs = audit_for(app, rid).await;
    let reqs: Vec<&Value> = evs.iter().filter(|e| e["kind"] == "request").collect();
    assert_eq!(reqs.len(), 1, "one request record for {rid}: {evs:?}");
    reqs[0].clone()
}

/// Session on the first emulated host for `upn`; returns (host, id).
fn new_session(app: &TestApp, upn: &str) -> (String, u32) {
    let host = app.arm().hosts(ARM_POOL)[0].clone();
    let id = app
        .arm()
        .add_session(ARM_POOL, &host, upn)
        .expect("session added");
    (host, id)
}

fn session_state(app: &TestApp, host: &str, id: u32) -> Option<String> {
    app.arm()
        .sessions(ARM_POOL)
        .into_iter()
        .find(|s| s.host == host && s.id == id)
        .map(|s| s.state)
}

// ---------------------------------------------------------------------------------------------
// 1. Roles × routes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Ok,
    /// 403 `forbidden` naming the missing permission.
    Forbidden(&'static str),
    /// 404 `pool_not_found`: the pool is outside the caller's scope.
    PoolNotFound,
    /// 401 `unauthenticated`.
    Unauthenticated,
}

/// What one principal may do, per route family.
struct Profile {
    name: &'static str,
    /// `None`: no credentials at all.
    cred: Option<String>,
    /// Whether `GET /hostpools` lists the AVD pool.
    lists_pool: bool,
    read: Want,
    act: Want,
    audit: Want,
    openapi: Want,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    ListPools,
    Hosts,
    Sessions,
    HostSessions,
    GetSession,
    Message,
    Disconnect,
    Logoff,
    Audit,
    OpenApi,
}

const ROUTES: [Route; 10] = [
    Route::ListPools,
    Route::Hosts,
    Route::Sessions,
    Route::HostSessions,
    Route::GetSession,
    Route::Message,
    Route::Disconnect,
    Route::Logoff,
    Route::Audit,
    Route::OpenApi,
];

impl Route {
    fn is_action(self) -> bool {
        matches!(self, Route::Message | Route::Disconnect | Route::Logoff)
    }
}

async fn send(
    app: &TestApp,
    cred: Option<&str>,
    route: Route,
    host: &str,
    id: u32,
) -> reqwest::Response {
    let session = app.session_url(AVD_POOL, host, id);
    let (post, url, body) = match route {
        Route::ListPools => (false, format!("{}/hostpools", app.url), None),
        Route::Hosts => (
            false,
            format!("{}/hostpools/{AVD_POOL}/sessionhosts", app.url),
            None,
        ),
        Route::Sessions => (
            false,
            format!("{}/hostpools/{AVD_POOL}/sessions", app.url),
            None,
        ),
        Route::HostSessions => (
            false,
            format!(
                "{}/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions",
                app.url
            ),
            None,
        ),
        Route::GetSession => (false, session, None),
        Route::Message => (
            true,
            format!("{session}/message"),
            Some(json!({"title": "Maintenance", "body": "matrix"})),
        ),
        Route::Disconnect => (true, format!("{session}/disconnect"), None),
        Route::Logoff => (true, format!("{session}/logoff"), None),
        Route::Audit => (false, format!("{}/audit?limit=5", app.url), None),
        Route::OpenApi => (false, format!("{}/openapi.yaml", app.url), None),
    };
    let mut rb = if post {
        app.http.post(url)
    } else {
        app.http.get(url)
    };
    if let Some(c) = cred {
        rb = rb.bearer_auth(c);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    rb.send().await.expect("request")
}

/// Runs every route for `p` against a fresh session of its own and checks status, code,
/// upstream effects (none for denied actions) and the audit record of denials.
async fn run_profile(app: &TestApp, p: &Profile) {
    let upn = format!("matrix-{}@contoso.com", p.name);
    let (host, id) = new_session(app, &upn);
    let cred = p.cred.as_deref();
    for route in ROUTES {
        let want = match route {
            Route::ListPools => {
                if p.cred.is_none() {
                    Want::Unauthenticated
                } else {
                    Want::Ok
                }
            }
            Route::Hosts | Route::Sessions | Route::HostSessions | Route::GetSession => p.read,
            Route::Message | Route::Disconnect | Route::Logoff => p.act,
            Route::Audit => p.audit,
            Route::OpenApi => p.openapi,
        };
        let calls_before = app.arm().all_calls();
        let messages_before = app.arm().messages().len();
        let r = send(app, cred, route, &host, id).await;
        let rid = request_id(&r);
        let ctx = format!("{} {route:?}", p.name);
        match want {
            Want::Ok => {
                assert_eq!(r.status(), 200, "{ctx}");
                match route {
                    Route::ListPools => {
                        let v: Value = r.json().await.unwrap();
                        let listed = v["pools"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x["name"] == AVD_POOL);
                        assert_eq!(listed, p.lists_pool, "{ctx}: {v}");
                    }
                    Route::Hosts => {
                        let v: Value = r.json().await.unwrap();
                        assert!(!v["hosts"].as_array().unwrap().is_empty(), "{ctx}");
                    }
                    Route::Sessions | Route::HostSessions => {
                        let v: Value = r.json().await.unwrap();
                        assert!(
                            v["sessions"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|s| s["id"] == id && s["user"] == upn.as_str()),
                            "{ctx}: own session listed"
                        );
                    }
                    Route::GetSession => {
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["user"], upn.as_str(), "{ctx}");
                    }
                    Route::Message | Route::Disconnect | Route::Logoff => {
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["outcome"], "done", "{ctx}: {v}");
                        assert_eq!(v["user"], upn.as_str(), "{ctx}");
                    }
                    Route::Audit => {
                        let v: Value = r.json().await.unwrap();
                        assert!(v["events"].is_array(), "{ctx}");
                    }
                    Route::OpenApi => {
                        let t = r.text().await.unwrap();
                        assert!(t.starts_with("openapi:"), "{ctx}");
                    }
                }
                // Upstream effects of allowed actions.
                match route {
                    Route::Message => {
                        let m = app.arm().messages();
                        assert_eq!(m.len(), messages_before + 1, "{ctx}");
                        assert_eq!(m.last().unwrap().user, upn, "{ctx}");
                    }
                    Route::Disconnect => {
                        assert_eq!(
                            session_state(app, &host, id).as_deref(),
                            Some("Disconnected"),
                            "{ctx}"
                        );
                    }
                    Route::Logoff => {
                        assert_eq!(session_state(app, &host, id), None, "{ctx}: logged off");
                    }
                    _ => {}
                }
            }
            Want::Forbidden(perm) => {
                let b = problem(r, 403, "forbidden").await;
                assert_eq!(b["missing_permission"], perm, "{ctx}: {b}");
                let ev = request_event(app, &rid).await;
                assert_eq!(ev["outcome"], "denied", "{ctx}: {ev}");
                assert_eq!(ev["error_code"], "forbidden", "{ctx}");
                assert_eq!(ev["http_status"], 403, "{ctx}");
            }
            Want::PoolNotFound => {
                let b = problem(r, 404, "pool_not_found").await;
                // Indistinguishable from a pool that does not exist.
                let r2 = send_unknown_pool(app, cred, route).await;
                let b2 = problem(r2, 404, "pool_not_found").await;
                assert_eq!(b["title"], b2["title"], "{ctx}");
                assert_eq!(
                    b["detail"].as_str().unwrap().replace(AVD_POOL, "X"),
                    b2["detail"].as_str().unwrap().replace("no-such-pool", "X"),
                    "{ctx}: same wording as for a missing pool"
                );
            }
            Want::Unauthenticated => {
                let www = header(&r, "www-authenticate").expect("WWW-Authenticate on 401");
                assert_eq!(www, r#"Bearer realm="sessiongate""#, "{ctx}");
                problem(r, 401, "unauthenticated").await;
            }
        }
        if route.is_action() && want != Want::Ok {
            // A refused action never reaches the backend: not a read, not a write.
            assert_eq!(
                app.arm().all_calls(),
                calls_before,
                "{ctx}: emulator saw no call"
            );
            assert_eq!(app.arm().messages().len(), messages_before, "{ctx}");
            assert_eq!(
                session_state(app, &host, id).as_deref(),
                Some("Active"),
                "{ctx}: session untouched"
            );
        }
    }
}

async fn send_unknown_pool(app: &TestApp, cred: Option<&str>, route: Route) -> reqwest::Response {
    let (host, id) = ("sh-0.contoso.com", 1);
    let base = format!(
        "{}/hostpools/no-such-pool/sessionhosts/{host}/sessions/{id}",
        app.url
    );
    let (post, url) = match route {
        Route::Hosts => (
            false,
            format!("{}/hostpools/no-such-pool/sessionhosts", app.url),
        ),
        Route::Sessions => (
            false,
            format!("{}/hostpools/no-such-pool/sessions", app.url),
        ),
        Route::HostSessions => (
            false,
            format!(
                "{}/hostpools/no-such-pool/sessionhosts/{host}/sessions",
                app.url
            ),
        ),
        Route::GetSession => (false, base),
        Route::Message => (true, format!("{base}/message")),
        Route::Disconnect => (true, format!("{base}/disconnect")),
        Route::Logoff => (true, format!("{base}/logoff")),
        other => panic!("{other:?} has no pool"),
    };
    let mut rb = if post {
        app.http.post(url)
    } else {
        app.http.get(url)
    };
    if let Some(c) = cred {
        rb = rb.bearer_auth(c);
    }
    if matches!(route, Route::Message) {
        rb = rb.json(&json!({"title": "t", "body": "b"}));
    }
    rb.send().await.expect("request")
}

#[tokio::test]
async fn roles_by_routes_matrix_with_api_keys() {
    let (other_op, other_op_cfg) =
        extra_key("other-pool-operator", vec![Role::Operator], &["hp-other"]);
    let (other_aud, other_aud_cfg) =
        extra_key("other-pool-auditor", vec![Role::Auditor], &["hp-other"]);
    let (multi, multi_cfg) = extra_key(
        "reader-and-auditor",
        vec![Role::Reader, Role::Auditor],
        &["*"],
    );
    let app = TestApp::start_with(move |c| {
        c.auth.api_keys.push(other_op_cfg);
        c.auth.api_keys.push(other_aud_cfg);
        c.auth.api_keys.push(multi_cfg);
    })
    .await;
    let k = &app.keys;
    let act = Want::Forbidden("sessions.act");
    let read = Want::Forbidden("sessions.read");
    let audit = Want::Forbidden("audit.read");
    let profiles = [
        Profile {
            name: "reader",
            cred: Some(k.reader.clone()),
            lists_pool: true,
            read: Want::Ok,
            act,
            audit,
            openapi: Want::Ok,
        },
        Profile {
            name: "operator",
            cred: Some(k.operator.clone()),
            lists_pool: true,
            read: Want::Ok,
            act: Want::Ok,
            audit,
            openapi: Want::Ok,
        },
        Profile {
            name: "admin",
            cred: Some(k.admin.clone()),
            lists_pool: true,
            read: Want::Ok,
            act: Want::Ok,
            // An admin does not read the audit log unless it also holds the auditor role.
            audit,
            openapi: Want::Ok,
        },
        Profile {
            name: "auditor",
            cred: Some(k.auditor.clone()),
            // The auditor's grant covers every pool, so it sees the pool exists (403, not
            // 404, on the pool's routes) and the listing agrees with that.
            lists_pool: true,
            read,
            act,
            audit: Want::Ok,
            openapi: Want::Ok,
        },
        Profile {
            name: "reader-auditor",
            cred: Some(multi),
            lists_pool: true,
            read: Want::Ok,
            act,
            audit: Want::Ok,
            openapi: Want::Ok,
        },
        Profile {
            name: "other-pool-operator",
            cred: Some(other_op),
            lists_pool: false,
            read: Want::PoolNotFound,
            act: Want::PoolNotFound,
            audit,
            openapi: Want::Ok,
        },
        Profile {
            // audit.read is not pool-scoped: an auditor scoped to another pool still reads it.
            name: "other-pool-auditor",
            cred: Some(other_aud),
            lists_pool: false,
            read: Want::PoolNotFound,
            act: Want::PoolNotFound,
            audit: Want::Ok,
            openapi: Want::Ok,
        },
        Profile {
            name: "anonymous",
            cred: None,
            lists_pool: false,
            read: Want::Unauthenticated,
            act: Want::Unauthenticated,
            audit: Want::Unauthenticated,
            // `[docs] public` is on by default (the document holds no secrets); with it off,
            // ops_docs tests that the document needs a credential.
            openapi: Want::Ok,
        },
    ];
    for p in &profiles {
        run_profile(&app, p).await;
    }
    // Only the operator and the admin acted: one message, disconnect and logoff each.
    assert_eq!(app.arm().calls(ArmOp::SendMessage), 2);
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 2);
    assert_eq!(app.arm().calls(ArmOp::Logoff), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. Entra ID / OIDC
// ---------------------------------------------------------------------------------------------

struct OidcApp {
    app: TestApp,
    issuer: TestIssuer,
    _ca: tempfile::NamedTempFile,
}

async fn oidc_app(tune: impl FnOnce(&mut OidcConfig)) -> OidcApp {
    let issuer = TestIssuer::start().await.expect("test issuer");
    let (mut o, ca) = oidc_config(&issuer, &[AUD]);
    tune(&mut o);
    let app = TestApp::start_with(move |c: &mut Config| c.auth.oidc = Some(o)).await;
    OidcApp {
        app,
        issuer,
        _ca: ca,
    }
}

impl OidcApp {
    fn token(&self, roles: &[&str], edit: impl FnOnce(&mut Value)) -> String {
        let mut c = self.issuer.claims(AUD);
        c["roles"] = json!(roles);
        edit(&mut c);
        self.issuer.mint(&c).unwrap()
    }
}

#[tokio::test]
async fn oidc_app_roles_map_to_grants() {
    let o = oidc_app(|_| {}).await;
    let app = &o.app;

    // Reader: reads, may not act.
    let reader = o.token(&["Reader"], |c| {
        c["preferred_username"] = json!("rita.reader@contoso.com");
    });
    let (host, id) = new_session(app, "target.user@contoso.com");
    let r = app
        .get(&reader, &format!("/hostpools/{AVD_POOL}/sessions"))
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .post(
            &reader,
            &format!("{}/logoff", app.session_url(AVD_POOL, &host, id)),
            None,
        )
        .await;
    let b = problem(r, 403, "forbidden").await;
    assert_eq!(b["missing_permission"], "sessions.act");
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);

    // Operator (role value matched case-insensitively; ES256 accepted too): acts, and the
    // audit names the token's oid and the jwt method.
    let oid = uuid::Uuid::new_v4().to_string();
    let mut claims = o.issuer.claims(AUD);
    claims["roles"] = json!(["operator"]);
    claims["oid"] = json!(oid);
    claims["preferred_username"] = json!("otto.operator@contoso.com");
    let operator = o.issuer.mint_with(Algorithm::ES256, None, &claims).unwrap();
    let r = app
        .post(
            &operator,
            &format!("{}/disconnect", app.session_url(AVD_POOL, &host, id)),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    assert_eq!(
        session_state(app, &host, id).as_deref(),
        Some("Disconnected")
    );
    let evs = audit_for(app, &rid).await;
    let outcome = evs
        .iter()
        .find(|e| e["kind"] == "outcome")
        .expect("outcome");
    assert_eq!(outcome["outcome"], "done");
    assert_eq!(outcome["actor"]["id"], oid.as_str());
    assert_eq!(outcome["actor"]["auth_method"], "jwt");
    assert_eq!(outcome["actor"]["display"], "otto.operator@contoso.com");
    assert_eq!(outcome["actor"]["roles"], json!(["operator"]));
    let text = serde_json::to_string(&evs).unwrap();
    assert!(!text.contains(&operator), "the token is never audited");

    // Auditor role reads the audit log.
    let auditor = o.token(&["Auditor"], |_| {});
    assert_eq!(app.get(&auditor, "/audit?limit=1").await.status(), 200);
    problem(app.get(&reader, "/audit").await, 403, "forbidden").await;

    // No mapped role: authenticated, but sees no pool (404 as for an unknown pool).
    let nobody = o.token(&["Something.Else"], |_| {});
    let r = app.get(&nobody, "/hostpools").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["pools"].as_array().unwrap().is_empty(), "{v}");
    problem(
        app.get(&nobody, &format!("/hostpools/{AVD_POOL}/sessions"))
            .await,
        404,
        "pool_not_found",
    )
    .await;
    problem(
        app.post(
            &nobody,
            &format!("{}/logoff", app.session_url(AVD_POOL, &host, id)),
            None,
        )
        .await,
        404,
        "pool_not_found",
    )
    .await;
    assert_eq!(app.arm().calls(ArmOp::Logoff), 0);

    // API keys keep working beside OIDC.
    assert_eq!(app.get(&app.keys.reader, "/hostpools").await.status(), 200);
}

#[tokio::test]
async fn roles_by_routes_matrix_with_oidc_tokens() {
    let o = oidc_app(|_| {}).await;
    let tok = |roles: &[&str]| o.token(roles, |_| {});
    let act = Want::Forbidden("sessions.act");
    let audit = Want::Forbidden("audit.read");
    let profiles = [
        Profile {
            name: "jwt-reader",
            cred: Some(tok(&["Reader"])),
            lists_pool: true,
            read: Want::Ok,
            act,
            audit,
            openapi: Want::Ok,
        },
        Profile {
            name: "jwt-operator",
            cred: Some(tok(&["Operator"])),
            lists_pool: true,
            read: Want::Ok,
            act: Want::Ok,
            audit,
            openapi: Want::Ok,
        },
        Profile {
            name: "jwt-admin",
            cred: Some(tok(&["Admin"])),
            lists_pool: true,
            read: Want::Ok,
            act: Want::Ok,
            audit,
            openapi: Want::Ok,
        },
        Profile {
            name: "jwt-auditor",
            cred: Some(tok(&["Auditor"])),
            lists_pool: true,
            read: Want::Forbidden("sessions.read"),
            act,
            audit: Want::Ok,
            openapi: Want::Ok,
        },
        Profile {
            // Authenticated, but no role maps to a grant: no pool exists for it.
            name: "jwt-unscoped",
            cred: Some(tok(&[])),
            lists_pool: false,
            read: Want::PoolNotFound,
            act: Want::PoolNotFound,
            audit,
            openapi: Want::Ok,
        },
    ];
    for p in &profiles {
        run_profile(&o.app, p).await;
    }
    assert_eq!(o.app.arm().calls(ArmOp::SendMessage), 2);
    assert_eq!(o.app.arm().calls(ArmOp::Disconnect), 2);
    assert_eq!(o.app.arm().calls(ArmOp::Logoff), 2);
}

#[tokio::test]
async fn tokens_are_refused_when_oidc_is_not_configured() {
    let issuer = TestIssuer::start().await.unwrap();
    let app = TestApp::start().await;
    let mut c = issuer.claims(AUD);
    c["roles"] = json!(["Admin"]);
    let t = issuer.mint(&c).unwrap();
    bad_token(&app, &t, "invalid_credentials").await;
}

#[tokio::test]
async fn oidc_role_map_scopes_grants_to_pools() {
    let o = oidc_app(|c| {
        let mut m = BTreeMap::new();
        m.insert(
            "Operator.Demo".to_string(),
            vec![sessiongate::auth::GrantConfig {
                role: Role::Operator,
                pools: vec![AVD_POOL.into()],
            }],
        );
        m.insert(
            "Operator.Finance".to_string(),
            vec![sessiongate::auth::GrantConfig {
                role: Role::Operator,
                pools: vec!["hp-finance".into()],
            }],
        );
        c.role_map = m;
    })
    .await;
    let app = &o.app;
    let (host, id) = new_session(app, "scoped.target@contoso.com");
    let url = format!("{}/disconnect", app.session_url(AVD_POOL, &host, id));

    let finance = o.token(&["Operator.Finance"], |_| {});
    problem(app.post(&finance, &url, None).await, 404, "pool_not_found").await;
    // The default role names mean nothing once role_map is set.
    let plain = o.token(&["Operator"], |_| {});
    problem(app.post(&plain, &url, None).await, 404, "pool_not_found").await;
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 0);

    let demo = o.token(&["Operator.Demo"], |_| {});
    assert_eq!(app.post(&demo, &url, None).await.status(), 200);
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 1);
}

/// A 401 answer for a bad token: status, code, `WWW-Authenticate` with `invalid_token`.
async fn bad_token(app: &TestApp, token: &str, code: &str) -> String {
    let r = app.get(token, "/hostpools").await;
    let rid = request_id(&r);
    let www = header(&r, "www-authenticate").expect("WWW-Authenticate on 401");
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains(r#"error="invalid_token""#), "{code}: {www}");
    assert!(www.contains(r#"realm="sessiongate""#), "{www}");
    assert!(!www.contains(token), "challenge never echoes the token");
    let b = problem(r, 401, code).await;
    assert!(
        !b.to_string().contains(token),
        "problem body never echoes the token"
    );
    rid
}

#[tokio::test]
async fn oidc_bad_tokens_are_401_and_audited_without_the_token() {
    let o = oidc_app(|_| {}).await;
    let app = &o.app;
    let iss = o.issuer.issuer().to_string();
    let mut good = o.issuer.claims(AUD);
    good["roles"] = json!(["Operator"]);
    // The good token works, so the failures below are about the token and nothing else.
    let ok = o.issuer.mint(&good).unwrap();
    assert_eq!(app.get(&ok, "/hostpools").await.status(), 200);

    let mut expired = good.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("api://someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://login.microsoftonline.com/evil/v2.0");
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now + 3600);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            o.issuer.forge_unknown_key(&good).unwrap(),
            "invalid_credentials",
        ),
        (
            "alg none",
            o.issuer.forge_alg_none(&good).unwrap(),
            "invalid_credentials",
        ),
        (
            "hmac confusion",
            o.issuer.forge_hmac_confusion(&good).unwrap(),
            "invalid_credentials",
        ),
        (
            "expired",
            o.issuer.mint(&expired).unwrap(),
            "credentials_expired",
        ),
        (
            "wrong audience",
            o.issuer.mint(&wrong_aud).unwrap(),
            "invalid_credentials",
        ),
        (
            "wrong issuer",
            o.issuer.mint(&wrong_iss).unwrap(),
            "invalid_credentials",
        ),
        (
            "not yet valid",
            o.issuer.mint(&not_yet).unwrap(),
            "invalid_credentials",
        ),
        (
            "tampered payload",
            {
                // Re-sign nothing: swap in a payload granting Admin, keep the signature.
                let mut adm = good.clone();
                adm["roles"] = json!(["Admin"]);
                let other = o.issuer.mint(&adm).unwrap();
                let parts: Vec<&str> = ok.split('.').collect();
                let p2: Vec<&str> = other.split('.').collect();
                format!("{}.{}.{}", parts[0], p2[1], parts[2])
            },
            "invalid_credentials",
        ),
    ];
    let mut rids = Vec::new();
    for (name, tok, code) in &cases {
        let rid = bad_token(app, tok, code).await;
        rids.push((name, tok, code, rid));
    }
    // An expired token's challenge says so.
    let r = app.get(&cases[3].1, "/hostpools").await;
    let www = header(&r, "www-authenticate").unwrap();
    assert!(www.to_lowercase().contains("expired"), "{www}");

    // A wrong API key: 401 invalid_credentials, the key never audited either.
    let wrong_key = apikey::generate_key();
    let wrong_key_rid = {
        let r = app.get(&wrong_key, "/hostpools").await;
        let rid = request_id(&r);
        problem(r, 401, "invalid_credentials").await;
        rid
    };

    let r = app
        .get(
            &app.keys.auditor,
            "/audit?outcome=unauthenticated&limit=1000",
        )
        .await;
    assert_eq!(r.status(), 200);
    let raw = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    let evs = v["events"].as_array().unwrap();
    for (name, tok, code, rid) in &rids {
        let ev = evs
            .iter()
            .find(|e| e["request_id"] == rid.as_str())
            .unwrap_or_else(|| panic!("{name}: 401 audited"));
        assert_eq!(ev["outcome"], "unauthenticated", "{name}");
        assert_eq!(ev["http_status"], 401, "{name}");
        assert_eq!(ev["error_code"], **code, "{name}");
        assert_eq!(ev["params"]["auth_error"], **code, "{name}");
        assert_eq!(ev["actor"]["id"], "anonymous", "{name}");
        assert_eq!(
            ev["actor"]["auth_method"], "jwt",
            "{name}: method presented"
        );
        let hint = ev["actor"]["display"].as_str().unwrap_or_default();
        assert!(hint.contains("kid="), "{name}: hint names the kid: {ev}");
        if *name != &"wrong issuer" {
            assert!(
                hint.contains(&format!("iss={iss}")),
                "{name}: hint names the issuer: {ev}"
            );
        }
        // Never the token, nor its signature.
        assert!(
            !raw.contains(tok.as_str()),
            "{name}: token in the audit log"
        );
        let sig = tok.rsplit('.').next().unwrap();
        if sig.len() > 8 {
            assert!(!raw.contains(sig), "{name}: signature in the audit log");
        }
    }
    let ev = evs
        .iter()
        .find(|e| e["request_id"] == wrong_key_rid.as_str())
        .expect("wrong key audited");
    assert_eq!(ev["actor"]["auth_method"], "api_key");
    assert_eq!(ev["error_code"], "invalid_credentials");
    let hint = ev["actor"]["display"].as_str().unwrap_or_default();
    assert!(wrong_key.starts_with(hint) && hint.len() <= 6, "{hint}");
    assert!(!raw.contains(&wrong_key), "API key in the audit log");
    // The good token was not audited as a 401, and does not appear anywhere either.
    assert!(!raw.contains(&ok));
}

#[tokio::test]
async fn oidc_key_rotation_is_picked_up_without_restart() {
    let o = oidc_app(|_| {}).await;
    let app = &o.app;
    let before = o.token(&["Reader"], |_| {});
    assert_eq!(app.get(&before, "/hostpools").await.status(), 200);
    let fetches = o.issuer.jwks_fetches();
    let old_kid = o.issuer.rsa_kid();

    let new_kid = o.issuer.rotate().unwrap();
    assert_ne!(new_kid, old_kid);
    let after = o.token(&["Reader"], |_| {});
    assert!(after != before);
    // A token signed with the new key is accepted by the running gateway: the unknown kid
    // makes it re-read the JWKS once.
    let r = app
        .get(&after, &format!("/hostpools/{AVD_POOL}/sessionhosts"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(o.issuer.jwks_fetches() > fetches, "JWKS re-read");
    // ES256 with the rotated EC key too (same refresh).
    let mut c = o.issuer.claims(AUD);
    c["roles"] = json!(["Reader"]);
    let es = o.issuer.mint_with(Algorithm::ES256, None, &c).unwrap();
    assert_eq!(app.get(&es, "/hostpools").await.status(), 200);
    // The retired key's tokens are refused now (and do not trigger a refetch storm).
    let fetches = o.issuer.jwks_fetches();
    for _ in 0..5 {
        bad_token(app, &before, "invalid_credentials").await;
    }
    assert!(
        o.issuer.jwks_fetches() <= fetches + 1,
        "unknown kids do not hammer the JWKS"
    );
    assert_eq!(app.get(&after, "/hostpools").await.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// 3. Protected sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn protected_sessions_need_admin_and_service_accounts_nobody() {
    let app = TestApp::start().await;
    let (host, jane) = new_session(&app, "admin-jane@contoso.com");
    let (_, svc) = new_session(&app, "svc-sessiongate@contoso.com");
    let jane_url = app.session_url(AVD_POOL, &host, jane);
    let svc_url = app.session_url(AVD_POOL, &host, svc);

    // Operator: refused for logoff and disconnect, nothing upstream, audited as `refused`.
    for action in ["logoff", "disconnect"] {
        let calls = app.arm().all_calls();
        let r = app
            .post(
                &app.keys.operator,
                &format!("{jane_url}/{action}"),
                Some(if action == "logoff" {
                    json!({"force": true, "ticket": "INC7"})
                } else {
                    json!({"ticket": "INC7"})
                }),
            )
            .await;
        let rid = request_id(&r);
        let b = problem(r, 403, "session_protected").await;
        assert_eq!(b["missing_permission"], "sessions.admin", "{action}: {b}");
        for op in [ArmOp::Logoff, ArmOp::Disconnect, ArmOp::SendMessage] {
            assert_eq!(
                app.arm().calls(op),
                calls.get(op.as_str()).copied().unwrap_or(0),
                "{action}: no write upstream"
            );
        }
        assert_eq!(
            session_state(&app, &host, jane).as_deref(),
            Some("Active"),
            "{action}"
        );
        let evs = audit_for(&app, &rid).await;
        let outcome = evs
            .iter()
            .find(|e| e["kind"] == "outcome")
            .expect("refusal has an outcome record");
        assert_eq!(outcome["outcome"], "refused", "{action}");
        assert_eq!(outcome["error_code"], "session_protected", "{action}");
        assert_eq!(outcome["target"]["user"], "admin-jane@contoso.com");
        assert_eq!(outcome["actor"]["id"], "apikey:demo-operator");
        assert_eq!(outcome["params"]["ticket"], "INC7");
        assert!(evs.iter().any(|e| e["kind"] == "intent"), "{action}");
    }
    // Dry run is refused the same way (the protection check comes first).
    problem(
        app.post(
            &app.keys.operator,
            &format!("{jane_url}/logoff"),
            Some(json!({"dry_run": true})),
        )
        .await,
        403,
        "session_protected",
    )
    .await;

    // Messaging a protected user is allowed for an operator.
    let r = app
        .post(
            &app.keys.operator,
            &format!("{jane_url}/message"),
            Some(json!({"title": "Heads up", "body": "Maintenance at 18:00"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let m = app.arm().messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].user, "admin-jane@contoso.com");

    // The admin may log the protected user off.
    let r = app
        .post(&app.keys.admin, &format!("{jane_url}/logoff"), None)
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done");
    assert_eq!(v["user"], "admin-jane@contoso.com");
    assert_eq!(session_state(&app, &host, jane), None);
    assert_eq!(app.arm().calls(ArmOp::Logoff), 1);

    // The service account: nobody, not even the admin, with or without force.
    for (key, who) in [(&app.keys.admin, "admin"), (&app.keys.operator, "operator")] {
        for action in ["logoff", "disconnect"] {
            let r = app
                .post(
                    key,
                    &format!("{svc_url}/{action}"),
                    (action == "logoff").then(|| json!({"force": true})),
                )
                .await;
            let rid = request_id(&r);
            let b = problem(r, 403, "session_protected").await;
            assert!(
                b["missing_permission"].is_null(),
                "{who} {action}: no role would help: {b}"
            );
            let evs = audit_for(&app, &rid).await;
            let outcome = evs.iter().find(|e| e["kind"] == "outcome").unwrap();
            assert_eq!(outcome["outcome"], "refused");
        }
    }
    assert_eq!(app.arm().calls(ArmOp::Logoff), 1);
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 0);
    assert_eq!(session_state(&app, &host, svc).as_deref(), Some("Active"));

    // Protection is case-insensitive on the UPN.
    let (_, shout) = new_session(&app, "ADMIN-BOB@CONTOSO.COM");
    problem(
        app.post(
            &app.keys.operator,
            &format!("{}/logoff", app.session_url(AVD_POOL, &host, shout)),
            None,
        )
        .await,
        403,
        "session_protected",
    )
    .await;
    // The down-level pattern `*\Administrator` protects by the AD name, whatever the UPN.
    let (_, adm) = new_session(&app, "Administrator@fabrikam.com");
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{adm}"),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(
        v["ad_user"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .ends_with("\\administrator"),
        "{v}"
    );
    problem(
        app.post(
            &app.keys.operator,
            &format!("{}/disconnect", app.session_url(AVD_POOL, &host, adm)),
            None,
        )
        .await,
        403,
        "session_protected",
    )
    .await;
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 0);
    // An ordinary user next to them is not protected.
    let (_, plain) = new_session(&app, "jane@contoso.com");
    assert_eq!(
        app.post(
            &app.keys.operator,
            &format!("{}/logoff", app.session_url(AVD_POOL, &host, plain)),
            None,
        )
        .await
        .status(),
        200
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn actions_are_rate_limited_per_principal_reads_are_not() {
    let app = TestApp::start_with(|c| {
        c.auth.rate_limit.actions_per_minute = 2;
        c.auth.rate_limit.burst = 2;
    })
    .await;
    let (host, id) = new_session(&app, "busy.user@contoso.com");
    let url = format!("{}/disconnect", app.session_url(AVD_POOL, &host, id));
    for _ in 0..2 {
        assert_eq!(app.post(&app.keys.operator, &url, None).await.status(), 200);
    }
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 2);
    let calls = app.arm().all_calls();

    let r = app.post(&app.keys.operator, &url, None).await;
    let rid = request_id(&r);
    let retry: u64 = header(&r, "retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After in seconds");
    // 2/min refills one action every 30 s.
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    problem(r, 429, "rate_limited").await;
    assert_eq!(
        app.arm().all_calls(),
        calls,
        "a limited action reaches nothing"
    );

    // Other action routes share the bucket; dry runs count too.
    for body in [None, Some(json!({"dry_run": true}))] {
        let r = app
            .post(
                &app.keys.operator,
                &format!("{}/logoff", app.session_url(AVD_POOL, &host, id)),
                body,
            )
            .await;
        problem(r, 429, "rate_limited").await;
    }
    assert_eq!(
        session_state(&app, &host, id).as_deref(),
        Some("Disconnected")
    );

    // The 429 is audited.
    let ev = request_event(&app, &rid).await;
    assert_eq!(ev["http_status"], 429);
    assert_eq!(ev["error_code"], "rate_limited");
    assert_eq!(ev["actor"]["id"], "apikey:demo-operator");
    assert_eq!(ev["action"], "disconnect");

    // Reads by the limited principal are not limited.
    for path in [
        "/hostpools".to_string(),
        format!("/hostpools/{AVD_POOL}/sessions"),
        format!("/hostpools/{AVD_POOL}/sessionhosts/{host}/sessions/{id}"),
    ] {
        for _ in 0..5 {
            assert_eq!(app.get(&app.keys.operator, &path).await.status(), 200);
        }
    }
    // Another principal has its own bucket.
    assert_eq!(app.post(&app.keys.admin, &url, None).await.status(), 200);
    assert_eq!(app.arm().calls(ArmOp::Disconnect), 3);
}

// ---------------------------------------------------------------------------------------------
// 5. CORS
// ---------------------------------------------------------------------------------------------

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    let (host, id, _) = app.avd_target();
    app.http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/logoff", app.session_url(AVD_POOL, &host, id)),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn has_cors(r: &reqwest::Response) -> bool {
    r.headers()
        .keys()
        .any(|k| k.as_str().starts_with("access-control-allow-"))
}

#[tokio::test]
async fn cors_answers_only_the_configured_origin() {
    let app = TestApp::start_with(|c| {
        c.auth.cors.allowed_origins = vec![PORTAL.into()];
    })
    .await;

    let r = preflight(&app, PORTAL).await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(PORTAL)
    );
    let methods = header(&r, "access-control-allow-methods")
        .unwrap()
        .to_uppercase();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let hdrs = header(&r, "access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    for h in ["authorization", "content-type", "x-api-key", "x-request-id"] {
        assert!(hdrs.contains(h), "{h} in {hdrs}");
    }
    assert!(header(&r, "access-control-max-age").is_some());
    assert!(
        header(&r, "access-control-allow-credentials").is_none(),
        "credentials mode is never enabled"
    );

    for other in [
        "https://evil.example",
        "https://portal.contoso.com.evil.example",
        "http://portal.contoso.com",
        "https://portal.contoso.com:8443",
        "null",
    ] {
        let r = preflight(&app, other).await;
        assert!(
            header(&r, "access-control-allow-origin").is_none(),
            "{other} must not be allowed"
        );
        // tower-http still lists the allowed methods/headers on any preflight; without
        // Access-Control-Allow-Origin the browser refuses, which is what matters.
        assert!(
            header(&r, "access-control-allow-credentials").is_none(),
            "{other}"
        );
        assert!(
            header(&r, "access-control-expose-headers").is_none(),
            "{other}"
        );
    }

    // A real cross-origin call from the portal: the origin is echoed, the request id exposed.
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .header("origin", PORTAL)
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(PORTAL)
    );
    assert!(
        header(&r, "access-control-expose-headers")
            .unwrap_or_default()
            .to_lowercase()
            .contains("x-request-id")
    );
    // CORS is not authentication: without a key the portal still gets 401.
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .header("origin", PORTAL)
        .send()
        .await
        .unwrap();
    // ...which its script may read (the origin is echoed on errors too).
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(PORTAL)
    );
    problem(r, 401, "unauthenticated").await;
    // From another origin the call is answered (CORS is for browsers), without CORS headers.
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .header("origin", "https://evil.example")
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert!(!has_cors(&r));

    // No Origin: unaffected, no CORS headers.
    let r = app.get(&app.keys.reader, "/hostpools").await;
    assert_eq!(r.status(), 200);
    assert!(!has_cors(&r));
    let (host, id, _) = app.avd_target();
    let r = app
        .post(
            &app.keys.operator,
            &format!("{}/disconnect", app.session_url(AVD_POOL, &host, id)),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(!has_cors(&r));
}

#[tokio::test]
async fn without_cors_config_no_cors_headers() {
    let app = TestApp::start().await;
    let r = preflight(&app, PORTAL).await;
    assert!(
        !has_cors(&r),
        "no CORS headers when no origin is configured"
    );
    let r = app
        .http
        .get(format!("{}/hostpools", app.url))
        .header("origin", PORTAL)
        .bearer_auth(&app.keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!has_cors(&r));
}

#[tokio::test]
async fn audit_read_refuses_unknown_query_parameters() {
    let app = TestApp::start().await;
    // A misspelt filter must not silently return everything unfiltered.
    for q in ["actr=x", "limit=5&pool=a&colour=red", "request-id=x"] {
        let r = app.get(&app.keys.auditor, &format!("/audit?{q}")).await;
        let body = problem(r, 400, "invalid_query").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("unknown field"),
            "{body}"
        );
    }
    let r = app.get(&app.keys.auditor, "/audit?actor=x&limit=5").await;
    assert_eq!(r.status(), 200);
}
